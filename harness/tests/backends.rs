//! Issue 5, part A: the backends end to end. host-gw routes pods via the
//! peers' public IPs with no encapsulation and refuses nodes off its L2
//! segment; VXLAN DirectRouting routes same-segment peers directly and the
//! others through the tunnel across a router; the VXLAN options (VNI, port,
//! MTU, GBP) reach the device and the subnet file.
//!
//! Need root, `ip`, `bridge`, `etcd`, `etcdctl`, `ping` and the workspace
//! binaries (`cargo build --workspace`); under `CI=true` a missing
//! prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use twill_harness::cluster::{IFNAME, VXLAN_DEV};
use twill_harness::datapath::{self, Owned, Peer};
use twill_harness::routed::{self, OwnedRoute, SEGMENT_A};
use twill_harness::wait::{wait_for, DEFAULT_TIMEOUT};
use twill_harness::{require_cluster, Cluster, HarnessError};

const RESYNC_SECS: u64 = 2;

const HOST_GW_CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;
const DIRECT_ROUTING_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472,"DirectRouting":true}}"#;
const VXLAN_OPTIONS_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":42,"Port":4789,"MTU":1400,"GBP":true}}"#;

/// A node as the tests see it: its host name, subnet and public IP.
#[derive(Debug, Clone)]
struct Node {
    host: String,
    subnet: Ipv4Net,
    ip: Ipv4Addr,
}

fn nodes(c: &Cluster) -> Vec<Node> {
    c.hosts()
        .iter()
        .map(|h| Node {
            host: h.name().to_owned(),
            subnet: c.wait_subnet_file(h.name()).unwrap().node_subnet(),
            ip: h.ip(),
        })
        .collect()
}

/// Waits until the `proto 77` routes of `host` are exactly `want`.
fn wait_owned_routes(c: &Cluster, host: &str, want: &BTreeMap<Ipv4Net, OwnedRoute>) {
    let ns = c.host(host).unwrap().ns();
    wait_for(
        &format!("{host}'s proto 77 routes to be exactly {want:?}"),
        DEFAULT_TIMEOUT,
        || {
            let have = routed::owned_routes(ns)?;
            if have == *want {
                Ok(Some(()))
            } else {
                Err(HarnessError::Parse {
                    what: format!("routes of {host}"),
                    reason: format!("have {have:?}"),
                })
            }
        },
        || format!("\n{}", c.agent_log_tail(host)),
    )
    .unwrap();
}

fn via_underlay(peer: &Node) -> (Ipv4Net, OwnedRoute) {
    (
        peer.subnet,
        OwnedRoute {
            gateway: Some(peer.ip),
            dev: IFNAME.to_owned(),
            onlink: false,
        },
    )
}

fn via_vxlan(peer: &Node, dev: &str) -> (Ipv4Net, OwnedRoute) {
    (
        peer.subnet,
        OwnedRoute {
            gateway: Some(peer.subnet.network()),
            dev: dev.to_owned(),
            onlink: true,
        },
    )
}

/// One pod per host (`p<host>`); returns (name, ip).
fn pod_per_host(c: &mut Cluster) -> Vec<(String, Ipv4Addr)> {
    let hosts: Vec<String> = c.hosts().iter().map(|h| h.name().to_owned()).collect();
    hosts
        .iter()
        .map(|h| {
            let name = format!("p{h}");
            let ip = c.add_pod(h, &name).unwrap();
            (name, ip)
        })
        .collect()
}

/// Every pod pings every other pod; returns the pairs that failed. After a
/// first failure the deadline shrinks so a broken path fails in seconds.
fn unreachable_pairs(c: &Cluster, pods: &[(String, Ipv4Addr)]) -> Vec<String> {
    let mut failed = Vec::new();
    for (from, _) in pods {
        for (to, ip) in pods {
            if from == to {
                continue;
            }
            let deadline = Duration::from_secs(if failed.is_empty() { 5 } else { 1 });
            if !c.ping_within(from, *ip, deadline) {
                failed.push(format!("{from} -> {to} ({ip})"));
            }
        }
    }
    failed
}

fn assert_all_reachable(c: &Cluster, pods: &[(String, Ipv4Addr)], when: &str) {
    let failed = unreachable_pairs(c, pods);
    assert!(
        failed.is_empty(),
        "{when}: unreachable: {failed:#?}\n{}",
        c.diagnostics()
    );
}

/// A /24 of the cluster network that no node holds.
fn free_subnet(taken: &BTreeSet<Ipv4Net>) -> Ipv4Net {
    (1..=254u8)
        .rev()
        .map(|x| Ipv4Net::new(Ipv4Addr::new(10, 244, x, 0), 24).unwrap())
        .find(|s| !taken.contains(s))
        .unwrap()
}

#[test]
fn host_gw_routes_via_peers_and_skips_nodes_off_the_segment() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(3)
        .network_config(HOST_GW_CONFIG)
        .resync_interval(RESYNC_SECS)
        .build()
        .unwrap();
    c.start_agents().unwrap();
    let all = nodes(&c);
    let expected: BTreeMap<String, BTreeMap<Ipv4Net, OwnedRoute>> = all
        .iter()
        .map(|n| {
            let routes = all
                .iter()
                .filter(|p| p.host != n.host)
                .map(via_underlay)
                .collect();
            (n.host.clone(), routes)
        })
        .collect();
    for (host, want) in &expected {
        wait_owned_routes(&c, host, want);
    }
    let leases = c.wait_leases(all.len()).unwrap();
    for n in &all {
        let lease = &leases[&n.subnet];
        assert_eq!(lease.public_ip, n.ip, "lease of {}: {lease:?}", n.host);
        assert_eq!(
            lease.backend_type.as_deref(),
            Some("host-gw"),
            "lease of {}: {lease:?}",
            n.host
        );
        let ns = c.host(&n.host).unwrap().ns();
        let links = routed::link_names(ns).unwrap();
        let tunnels: Vec<&String> = links.iter().filter(|l| l.starts_with("twill.")).collect();
        assert!(
            tunnels.is_empty(),
            "host-gw made tunnel devices on {}: {tunnels:?}",
            n.host
        );
        let eth0: Vec<Value> =
            serde_json::from_str(&ns.ip(["-j", "link", "show", IFNAME]).unwrap()).unwrap();
        let underlay_mtu = eth0[0]["mtu"].as_u64().unwrap();
        assert_eq!(underlay_mtu, 1500, "harness underlay MTU changed");
        let mtu = c.subnet_file(&n.host).unwrap().mtu;
        assert_eq!(
            u64::from(mtu),
            underlay_mtu,
            "subnet file MTU of {} (host-gw has no encapsulation overhead)",
            n.host
        );
    }
    let pods = pod_per_host(&mut c);
    assert_all_reachable(&c, &pods, "host-gw");

    // A node that is not on this L2 segment: a host-gw route to it could
    // never work, so every agent must skip it and say why.
    let taken: BTreeSet<Ipv4Net> = all.iter().map(|n| n.subnet).collect();
    let ghost = free_subnet(&taken);
    let ghost_ip = "198.18.0.9";
    c.etcd()
        .put(
            &c.lease_key_in(ghost),
            &format!(
                r#"{{"PublicIP":"{ghost_ip}","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}}"#
            ),
        )
        .unwrap();
    for n in &all {
        wait_for(
            &format!(
                "{}'s log to say why the lease of {ghost} is skipped",
                n.host
            ),
            DEFAULT_TIMEOUT,
            || {
                let log = c.agent_log(&n.host)?;
                Ok(log.lines().any(|l| {
                    l.contains(&ghost.to_string())
                        && l.contains(&format!("host-gw needs {ghost_ip}"))
                        && l.contains("same L2 segment")
                }))
                .map(|ok| ok.then_some(()))
            },
            || format!("\n{}", c.agent_log_tail(&n.host)),
        )
        .unwrap();
    }
    // The skip was logged by a reconcile that saw the ghost lease: the
    // routes it left must still be exactly the real peers'.
    for (host, want) in &expected {
        let have = routed::owned_routes(c.host(host).unwrap().ns()).unwrap();
        assert_eq!(
            &have,
            want,
            "{host} after the off-segment lease\n{}",
            c.agent_log_tail(host)
        );
    }
    for n in &all {
        assert!(
            c.agent_running(&n.host),
            "agent of {} died on the off-segment lease\n{}",
            n.host,
            c.agent_log_tail(&n.host)
        );
    }
    assert_all_reachable(&c, &pods, "host-gw after the off-segment lease");
}

#[test]
fn direct_routing_routes_same_segment_peers_directly_and_tunnels_the_rest() {
    if !require_cluster() {
        return;
    }
    let builder = Cluster::builder()
        .network_config(DIRECT_ROUTING_CONFIG)
        .resync_interval(RESYNC_SECS);
    // h1, h2 on 192.0.2.0/24; h3, h4 on 198.18.1.0/24, behind the router.
    let mut c = routed::build(builder, 2, 2).unwrap();
    c.start_agents().unwrap();
    let all = nodes(&c);
    c.wait_leases(all.len()).unwrap();
    let peers: BTreeMap<String, Peer> = all
        .iter()
        .map(|n| (n.host.clone(), datapath::peer(&c, &n.host).unwrap()))
        .collect();
    let segment = |n: &Node| SEGMENT_A.contains(&n.ip);
    assert_eq!(
        all.iter().filter(|n| segment(n)).count(),
        2,
        "topology: {all:?}"
    );
    for n in &all {
        let others = all.iter().filter(|p| p.host != n.host);
        let (same, across): (Vec<&Node>, Vec<&Node>) =
            others.partition(|p| segment(p) == segment(n));
        let want: BTreeMap<Ipv4Net, OwnedRoute> = same
            .iter()
            .map(|p| via_underlay(p))
            .chain(across.iter().map(|p| via_vxlan(p, VXLAN_DEV)))
            .collect();
        wait_owned_routes(&c, &n.host, &want);
        // Neighbour and FDB entries exactly for the tunnelled peers: a
        // direct peer needs none.
        let tunnelled = Owned::for_peers(across.iter().map(|p| &peers[&p.host]));
        let have = datapath::owned(&c, &n.host).unwrap();
        assert_eq!(
            have,
            tunnelled,
            "{}'s {VXLAN_DEV} entries\n{}",
            n.host,
            c.agent_log_tail(&n.host)
        );
    }
    let pods = pod_per_host(&mut c);
    assert_all_reachable(&c, &pods, "DirectRouting across two segments");
}

#[test]
fn vxlan_options_reach_the_device_and_the_subnet_file() {
    if !require_cluster() {
        return;
    }
    let dev = "twill.42";
    let mut c = Cluster::builder()
        .hosts(2)
        .network_config(VXLAN_OPTIONS_CONFIG)
        .resync_interval(RESYNC_SECS)
        .build()
        .unwrap();
    c.start_agents().unwrap();
    let all = nodes(&c);
    for n in &all {
        let ns = c.host(&n.host).unwrap().ns();
        let json = wait_for(
            &format!("{dev} on {}", n.host),
            DEFAULT_TIMEOUT,
            || ns.ip(["-d", "-j", "link", "show", dev]).map(Some),
            || format!("\n{}", c.agent_log_tail(&n.host)),
        )
        .unwrap();
        let links: Vec<Value> = serde_json::from_str(&json).unwrap();
        let link = &links[0];
        let info = &link["linkinfo"];
        let data = &info["info_data"];
        assert_eq!(info["info_kind"], "vxlan", "{}: {link}", n.host);
        assert_eq!(data["id"], 42, "{}: vni of {dev}: {link}", n.host);
        assert_eq!(data["port"], 4789, "{}: dstport of {dev}: {link}", n.host);
        assert_eq!(link["mtu"], 1400, "{}: mtu of {dev}: {link}", n.host);
        assert_eq!(data["gbp"], true, "{}: gbp on {dev}: {link}", n.host);
        assert_eq!(
            data["local"],
            n.ip.to_string(),
            "{}: local of {dev}: {link}",
            n.host
        );
        let links = routed::link_names(ns).unwrap();
        assert!(
            !links.iter().any(|l| l == VXLAN_DEV),
            "{} still has {VXLAN_DEV} with VNI 42 configured: {links:?}",
            n.host
        );
        assert_eq!(c.subnet_file(&n.host).unwrap().mtu, 1400, "{}", n.host);
        let want: BTreeMap<Ipv4Net, OwnedRoute> = all
            .iter()
            .filter(|p| p.host != n.host)
            .map(|p| via_vxlan(p, dev))
            .collect();
        wait_owned_routes(&c, &n.host, &want);
    }
    let pods = pod_per_host(&mut c);
    assert_all_reachable(&c, &pods, "VNI 42 / port 4789 / GBP");
}
