//! End-to-end tests on a real cluster of namespaces: etcd, `twilld` on every
//! host, pods added through the `twill` CNI plugin.
//!
//! Need root, `ip`, `etcd`, `etcdctl`, `ping` and the workspace binaries
//! (`cargo build --workspace`); under `CI=true` a missing prerequisite
//! fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use twill_harness::cluster::{BRIDGE_DEV, VXLAN_DEV};
use twill_harness::{require_cluster, Cluster};

/// A cluster with `hosts` hosts, all agents running and routes converged.
fn converged(hosts: usize) -> Cluster {
    let mut c = Cluster::builder().hosts(hosts).build().unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    c
}

/// Pings every target from every source; returns the pairs that failed.
/// After the first failure the per-ping deadline shrinks so a broken data
/// path fails the test in seconds, not minutes.
fn unreachable(c: &Cluster, from: &[String], to: &[(String, Ipv4Addr)]) -> Vec<String> {
    let mut failed = Vec::new();
    for f in from {
        for (name, ip) in to {
            if f == name {
                continue;
            }
            let deadline = if failed.is_empty() {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(1)
            };
            if !c.ping_within(f, *ip, deadline) {
                failed.push(format!("{f} -> {name} ({ip})"));
            }
        }
    }
    failed
}

fn pod_targets(c: &Cluster) -> Vec<(String, Ipv4Addr)> {
    c.pods()
        .iter()
        .map(|p| (p.name().to_owned(), p.ip()))
        .collect()
}

fn pod_names(c: &Cluster) -> Vec<String> {
    c.pods().iter().map(|p| p.name().to_owned()).collect()
}

fn host_names(c: &Cluster) -> Vec<String> {
    c.hosts().iter().map(|h| h.name().to_owned()).collect()
}

#[test]
fn every_pod_and_host_reaches_every_pod() {
    if !require_cluster() {
        return;
    }
    let mut c = converged(3);
    for h in 1..=3 {
        for p in 1..=2 {
            let ip = c.add_pod(&format!("h{h}"), &format!("p{h}{p}")).unwrap();
            let subnet = c.subnet_file(&format!("h{h}")).unwrap().node_subnet();
            assert!(
                subnet.contains(&ip),
                "pod p{h}{p} got {ip} outside {subnet}"
            );
        }
    }
    let targets = pod_targets(&c);
    let mut failed = unreachable(&c, &pod_names(&c), &targets);
    failed.extend(unreachable(&c, &host_names(&c), &targets));
    assert!(
        failed.is_empty(),
        "unreachable: {failed:#?}\n{}",
        c.diagnostics()
    );
}

#[test]
fn a_host_joining_later_becomes_reachable() {
    if !require_cluster() {
        return;
    }
    let mut c = converged(3);
    for h in 1..=3 {
        c.add_pod(&format!("h{h}"), &format!("p{h}")).unwrap();
    }
    let h4 = c.add_host().unwrap();
    c.start_agent(&h4).unwrap();
    c.wait_converged().unwrap();
    let ip4 = c.add_pod(&h4, "p4").unwrap();

    let old_pods: Vec<String> = vec!["p1".into(), "p2".into(), "p3".into()];
    let mut failed = unreachable(&c, &old_pods, &[("p4".into(), ip4)]);
    failed.extend(unreachable(&c, &["p4".into()], &pod_targets(&c)));
    failed.extend(unreachable(&c, &host_names(&c), &[("p4".into(), ip4)]));
    assert!(
        failed.is_empty(),
        "unreachable: {failed:#?}\n{}",
        c.diagnostics()
    );
}

#[test]
fn deleting_a_lease_removes_its_route_neighbour_and_fdb_entry() {
    if !require_cluster() {
        return;
    }
    let mut c = converged(3);
    let s: Vec<Ipv4Net> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| c.subnet_file(h).unwrap().node_subnet())
        .collect();
    let leases = c.wait_leases(3).unwrap();
    let mac3 = leases[&s[2]].vtep_mac().expect("lease of h3 has a VtepMAC");

    // Stopped first, so it cannot re-create the lease we delete.
    let status = c.stop_agent("h3").unwrap();
    assert!(status.success(), "twilld on h3 exited with {status}");
    // The agent may or may not drop its lease on exit; either way it must
    // be gone now and the others must follow.
    c.etcd().del(&Cluster::lease_key(s[2])).unwrap();
    assert!(!c.leases().unwrap().contains_key(&s[2]));

    for (host, other) in [("h1", s[1]), ("h2", s[0])] {
        c.wait_routes(host, &BTreeSet::from([other])).unwrap();
        let ns = c.ns_of(host).unwrap();
        let gone = format!("\"{}\"", s[2].network());
        let fdb_gone = format!("\"{mac3}\"");
        twill_harness::wait::wait_for(
            &format!("neighbour {gone} and fdb {fdb_gone} gone from {host}"),
            twill_harness::wait::DEFAULT_TIMEOUT,
            || {
                let neigh = ns.ip(["-j", "neigh", "show", "dev", VXLAN_DEV])?;
                let fdb = ns.exec_ok(&["bridge", "-j", "fdb", "show", "dev", VXLAN_DEV])?;
                Ok(
                    (!neigh.contains(&gone) && !fdb.to_ascii_lowercase().contains(&fdb_gone))
                        .then_some(()),
                )
            },
            || c.agent_log_tail(host),
        )
        .unwrap();
    }
}

#[test]
fn each_host_has_a_distinct_subnet_matching_its_lease() {
    if !require_cluster() {
        return;
    }
    let c = converged(3);
    let network: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let leases = c.wait_leases(3).unwrap();
    let mut seen = BTreeSet::new();
    for h in c.hosts() {
        let sf = c.subnet_file(h.name()).unwrap();
        let subnet = sf.node_subnet();
        assert_eq!(sf.network, network, "{}", h.name());
        assert_eq!(subnet.prefix_len(), 24, "{}", h.name());
        assert!(network.contains(&subnet), "{subnet} outside {network}");
        assert_eq!(
            sf.subnet.addr(),
            Ipv4Addr::from(u32::from(subnet.network()) + 1),
            "TWILL_SUBNET of {} is not the .1 gateway",
            h.name()
        );
        assert_eq!(sf.mtu, 1450, "{}", h.name());
        assert!(seen.insert(subnet), "subnet {subnet} handed out twice");

        let lease = leases
            .get(&subnet)
            .unwrap_or_else(|| panic!("no lease for {subnet} of {}: {leases:?}", h.name()));
        assert_eq!(lease.public_ip, h.ip(), "PublicIP of {subnet}");
        assert_eq!(lease.backend_type.as_deref(), Some("vxlan"));
        let link: serde_json::Value =
            serde_json::from_str(&h.ns().ip(["-j", "link", "show", VXLAN_DEV]).unwrap()).unwrap();
        assert_eq!(
            lease.vtep_mac(),
            link[0]["address"].as_str().map(str::to_ascii_lowercase),
            "VtepMAC of {subnet} is not {}'s {VXLAN_DEV} address",
            h.name()
        );
        let addrs = h
            .ns()
            .ip(["-j", "addr", "show", "dev", BRIDGE_DEV])
            .unwrap();
        assert!(
            addrs.contains(&format!("\"{}\"", sf.subnet.addr())),
            "{BRIDGE_DEV} of {} lacks {}: {addrs}",
            h.name(),
            sf.subnet
        );
    }
    assert_eq!(leases.len(), 3, "stray leases: {leases:?}");
}
