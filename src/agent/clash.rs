//! A peer whose VTEP MAC is this node's own. The kernel drops VXLAN frames
//! whose inner source MAC is its own device's, so the two nodes cannot talk
//! although every route, neighbour and FDB entry is in place. twill's own
//! rule never gives two nodes one MAC (`Mac::for_vtep`, `Mac::for_vtep6`),
//! but a lease written by another agent (flannel's device takes a random
//! MAC) or by hand can. Said once per peer and MAC, at every full pass.

use subnet_allocator::LeaseStore;

use super::Agent;
use crate::datapath::Datapath;
use crate::reconcile::ipv6_only::RemoteNode6;
use crate::reconcile::{Mac, Path, RemoteNode};

/// The peers among `nodes` that use `ours4` (on the IPv4 tunnel) or
/// `ours6` (on the IPv6 one) as their VTEP MAC, named by subnet.
pub fn clashes(ours4: Option<Mac>, ours6: Option<Mac>, nodes: &[RemoteNode]) -> Vec<(String, Mac)> {
    let mut out = Vec::new();
    for n in nodes {
        if let (Path::Vxlan(m), Some(o)) = (n.path, ours4) {
            if m == o {
                out.push((n.subnet.to_string(), m));
            }
        }
        if let (Some(m), Some(o)) = (n.vtep6, ours6) {
            if m == o {
                out.push((n.subnet.to_string(), m));
            }
        }
    }
    out
}

/// [`clashes`] of an IPv6-only node's peers.
pub fn clashes6(ours6: Option<Mac>, nodes: &[RemoteNode6]) -> Vec<(String, Mac)> {
    nodes
        .iter()
        .filter_map(|n| match (n.path, ours6) {
            (Path::Vxlan(m), Some(o)) if m == o => Some((n.subnet6.to_string(), m)),
            _ => None,
        })
        .collect()
}

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// Our VTEP MACs: on the IPv4 tunnel and on the IPv6 one.
    pub(super) fn own_macs(&self) -> (Option<Mac>, Option<Mac>) {
        let mac = |v: &Option<crate::kernel::VxlanSpec>| v.as_ref().map(|v| v.mac);
        (mac(&self.plan.vxlan), mac(&self.plan.vxlan6))
    }

    /// Says once about each peer of `clashes`.
    pub(super) fn warn_mac_clashes(&mut self, clashes: Vec<(String, Mac)>) {
        for (subnet, mac) in clashes {
            let msg = format!("lease {subnet} uses this node's own VTEP MAC {mac}: the kernel drops VXLAN frames from it, so this node and that one cannot reach each other; give one of the two VTEPs another MAC (a lease written by another agent or by hand?)");
            if self.warned.insert(msg.clone()) {
                tracing::error!(subnet, %mac, "{msg}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    #[test]
    fn a_peer_with_our_mac_on_either_tunnel_is_named() {
        let ours4 = Mac([0x0e, 1, 192, 0, 2, 1]);
        let ours6 = Mac::for_vtep6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 1);
        let node = |s: &str, m4: Mac, m6: Option<Mac>| RemoteNode {
            subnet: s.parse().unwrap(),
            subnet6: None,
            public_ip: "192.0.2.9".parse().unwrap(),
            public_ipv6: None,
            path: Path::Vxlan(m4),
            vtep6: m6,
        };
        let other = Mac([0x0e, 1, 192, 0, 2, 9]);
        let nodes = [
            node("10.244.1.0/24", other, None),
            node("10.244.2.0/24", ours4, None),
            node("10.244.3.0/24", other, Some(ours6)),
        ];
        assert_eq!(
            clashes(Some(ours4), Some(ours6), &nodes),
            vec![
                ("10.244.2.0/24".to_string(), ours4),
                ("10.244.3.0/24".to_string(), ours6)
            ]
        );
        assert!(
            clashes(None, None, &nodes).is_empty(),
            "host-gw has no VTEP"
        );
    }
}
