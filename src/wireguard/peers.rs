//! The peers the tunnel should have, as a pure function of the lease map
//! (so that a per-lease delta path can reuse it), and the UAPI changes that
//! take the device from what it has to that.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};
use subnet_allocator::Lease;

use super::key::Key;
use super::uapi::{PeerChange, PeerConfig};
use crate::reconcile::{Path, RemoteNode};

/// Keyed by public key: one peer per node.
pub type PeerMap = BTreeMap<Key, PeerConfig>;

/// Why a wireguard lease is left out.
pub fn lease_key(lease: &Lease) -> Option<Key> {
    (lease.attrs.backend_type == "wireguard")
        .then_some(lease.attrs.public_key.as_deref())
        .flatten()
        .and_then(Key::from_base64)
}

/// One peer per remote node that `remote_nodes` accepted on the wireguard
/// path: its key from its lease, its endpoint (its IPv6 underlay address
/// when both ends have one, else its IPv4 one) on `port`, its pod subnets
/// as allowed IPs. A key already taken by another node (two nodes sharing
/// a key file) keeps the first node by subnet order and skips the other.
pub fn desired_peers(
    nodes: &[RemoteNode],
    leases: &BTreeMap<Ipv4Net, Lease>,
    port: u16,
    keepalive: u16,
    ipv6_underlay: bool,
) -> PeerMap {
    let mut peers = PeerMap::new();
    for node in nodes.iter().filter(|n| n.path == Path::Wireguard) {
        let Some(key) = leases.get(&node.subnet).and_then(lease_key) else {
            continue;
        };
        if peers.contains_key(&key) {
            continue;
        }
        let ip: IpAddr = match node.public_ipv6 {
            Some(ip6) if ipv6_underlay => ip6.into(),
            _ => node.public_ip.into(),
        };
        let mut allowed_ips: Vec<IpNet> = vec![node.subnet.into()];
        allowed_ips.extend(node.subnet6.map(IpNet::from));
        allowed_ips.sort();
        peers.insert(
            key,
            PeerConfig {
                public_key: key,
                endpoint: Some(SocketAddr::new(ip, port)),
                allowed_ips,
                keepalive,
            },
        );
    }
    peers
}

/// The changes that make `actual` equal `desired`: a peer the device has
/// but should not is removed; one that is missing or differs in endpoint,
/// allowed IPs or keepalive is set whole. Peers already right are left
/// alone (their sessions stay up).
pub fn diff_peers(desired: &PeerMap, actual: &[PeerConfig]) -> Vec<PeerChange> {
    let have: BTreeMap<Key, &PeerConfig> = actual.iter().map(|p| (p.public_key, p)).collect();
    let mut changes: Vec<PeerChange> = have
        .keys()
        .filter(|k| !desired.contains_key(k))
        .map(|k| PeerChange::Remove(*k))
        .collect();
    for (k, want) in desired {
        let same = have.get(k).is_some_and(|h| {
            let mut ips = h.allowed_ips.clone();
            ips.sort();
            h.endpoint == want.endpoint && ips == want.allowed_ips && h.keepalive == want.keepalive
        });
        if !same {
            changes.push(PeerChange::Set(want.clone()));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::key::PrivateKey;
    use subnet_allocator::LeaseAttrs;

    fn lease(subnet: &str, ip: &str, ip6: Option<&str>, key: Option<Key>) -> Lease {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        Lease {
            subnet,
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: ip6.map(|s| s.parse().unwrap()),
                backend_type: "wireguard".into(),
                backend_data: None,
                backend_v6_data: None,
                node_name: None,
                public_key: key.map(|k| k.to_base64()),
            },
            lease_id: None,
            ttl_remaining: None,
        }
    }

    fn node(l: &Lease, subnet6: Option<&str>) -> RemoteNode {
        RemoteNode {
            subnet: l.subnet,
            subnet6: subnet6.map(|s| s.parse().unwrap()),
            public_ip: l.attrs.public_ip,
            public_ipv6: l.attrs.public_ipv6,
            path: Path::Wireguard,
            vtep6: None,
        }
    }

    fn map(ls: &[Lease]) -> BTreeMap<Ipv4Net, Lease> {
        ls.iter().map(|l| (l.subnet, l.clone())).collect()
    }

    #[test]
    fn one_peer_per_node_with_its_subnets_and_endpoint() {
        let (ka, kb) = (
            PrivateKey::generate().public(),
            PrivateKey::generate().public(),
        );
        let a = lease("10.244.2.0/24", "192.0.2.2", Some("2001:db8::2"), Some(ka));
        let b = lease("10.244.3.0/24", "192.0.2.3", None, Some(kb));
        let nodes = [node(&a, Some("fd00:1:2::/64")), node(&b, None)];
        let peers = desired_peers(&nodes, &map(&[a.clone(), b.clone()]), 51820, 25, false);
        assert_eq!(peers.len(), 2);
        let pa = &peers[&ka];
        assert_eq!(pa.endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(
            pa.allowed_ips,
            vec![
                "10.244.2.0/24".parse::<IpNet>().unwrap(),
                "fd00:1:2::/64".parse().unwrap()
            ]
        );
        assert_eq!(pa.keepalive, 25);
        // With an IPv6 underlay here, a node that has one is reached there.
        let peers6 = desired_peers(&nodes, &map(&[a, b]), 51820, 0, true);
        assert_eq!(
            peers6[&ka].endpoint,
            Some("[2001:db8::2]:51820".parse().unwrap())
        );
        assert_eq!(
            peers6[&kb].endpoint,
            Some("192.0.2.3:51820".parse().unwrap())
        );
    }

    #[test]
    fn leases_without_a_key_or_sharing_one_are_left_out() {
        let k = PrivateKey::generate().public();
        let a = lease("10.244.2.0/24", "192.0.2.2", None, Some(k));
        let dup = lease("10.244.3.0/24", "192.0.2.3", None, Some(k));
        let none = lease("10.244.4.0/24", "192.0.2.4", None, None);
        let mut bad = lease("10.244.5.0/24", "192.0.2.5", None, None);
        bad.attrs.public_key = Some("not base64!".into());
        let all = [a.clone(), dup.clone(), none.clone(), bad.clone()];
        let nodes: Vec<RemoteNode> = all.iter().map(|l| node(l, None)).collect();
        let peers = desired_peers(&nodes, &map(&all), 51820, 0, false);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[&k].endpoint, Some("192.0.2.2:51820".parse().unwrap()));
        assert_eq!(lease_key(&none), None);
        assert_eq!(lease_key(&bad), None);
    }

    #[test]
    fn diff_removes_strays_and_repairs_changed_peers_only() {
        let (ka, kb, kc) = (
            PrivateKey::generate().public(),
            PrivateKey::generate().public(),
            PrivateKey::generate().public(),
        );
        let a = lease("10.244.2.0/24", "192.0.2.2", None, Some(ka));
        let b = lease("10.244.3.0/24", "192.0.2.3", None, Some(kb));
        let nodes = [node(&a, None), node(&b, None)];
        let desired = desired_peers(&nodes, &map(&[a, b]), 51820, 0, false);
        // In step: nothing to do.
        let actual: Vec<PeerConfig> = desired.values().cloned().collect();
        assert!(diff_peers(&desired, &actual).is_empty());
        // A stray peer (a departed node), a missing one (removed by hand)
        // and one whose endpoint moved.
        let mut moved = desired[&ka].clone();
        moved.endpoint = Some("192.0.2.99:51820".parse().unwrap());
        let stray = PeerConfig {
            public_key: kc,
            endpoint: None,
            allowed_ips: vec![],
            keepalive: 0,
        };
        let changes = diff_peers(&desired, &[moved, stray]);
        // Removals first, then the peers to set in key order.
        let mut sets = vec![desired[&ka].clone(), desired[&kb].clone()];
        sets.sort_by_key(|p| p.public_key);
        let mut want = vec![PeerChange::Remove(kc)];
        want.extend(sets.into_iter().map(PeerChange::Set));
        assert_eq!(changes, want);
    }
}
