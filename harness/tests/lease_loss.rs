//! A running agent that loses its lease in etcd (key deleted, etcd lease
//! revoked, or its subnet taken by another node) must not exit: it takes
//! the same subnet back when it is free, and only when another node holds it
//! moves to a new subnet, says so loudly and republishes everything. The
//! data path keeps working throughout.
//!
//! Needs root, `ip`, `etcd`, `etcdctl`, `ping` and the workspace binaries;
//! under `CI=true` a missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use twill_harness::wait::wait_for;
use twill_harness::{require_cluster, Cluster};

const DEADLINE: Duration = Duration::from_secs(20);

/// The converged 2-host cluster, a pod on each host, and h1's subnet.
fn setup() -> (Cluster, Ipv4Net, Ipv4Addr) {
    let c = Cluster::with_pods(2).unwrap();
    let (s1, ip2) = (c.subnet_of("h1").unwrap(), c.pod_ip("p2").unwrap());
    (c, s1, ip2)
}

/// Waits until etcd holds a lease for `subnet` owned by `ip`.
fn wait_lease(c: &Cluster, subnet: Ipv4Net, ip: Ipv4Addr, why: &str) {
    wait_for(
        &format!("lease {subnet} held by {ip} ({why})"),
        DEADLINE,
        || Ok(c.lease(subnet)?.filter(|l| l.public_ip == ip).map(|_| ())),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
}

/// The agent is alive and pods on the two hosts still reach each other.
fn still_working(c: &mut Cluster, ip2: Ipv4Addr) {
    assert!(
        c.agent_running("h1"),
        "h1's agent exited\n{}",
        c.agent_log_tail("h1")
    );
    assert!(
        c.ping_within("p1", ip2, Duration::from_secs(10)),
        "p1 -> p2 ({ip2}) broken\n{}",
        c.agent_log_tail("h1")
    );
}

#[test]
fn a_deleted_lease_is_taken_back_with_the_same_subnet() {
    if !require_cluster() {
        return;
    }
    let (mut c, s1, ip2) = setup();
    let h1 = c.host("h1").unwrap().ip();
    let removed = c.etcd().del(&c.lease_key_in(s1)).unwrap();
    assert_eq!(removed, 1);
    wait_lease(&c, s1, h1, "after its key was deleted");
    assert_eq!(c.subnet_file("h1").unwrap().subnet.trunc(), s1);
    still_working(&mut c, ip2);
    assert!(c.agent_log("h1").unwrap().contains("re-acquired our lease"));
}

#[test]
fn a_revoked_lease_is_taken_back_with_the_same_subnet() {
    if !require_cluster() {
        return;
    }
    let (mut c, s1, ip2) = setup();
    let h1 = c.host("h1").unwrap().ip();
    let key = c.lease_key_in(s1);
    let out = c.etcd().ctl(&["get", &key, "-w", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let id = v["kvs"][0]["lease"]
        .as_i64()
        .unwrap_or_else(|| panic!("no etcd lease on {key}: {out}"));
    c.etcd()
        .ctl(&["lease", "revoke", &format!("{id:x}")])
        .unwrap();
    wait_lease(&c, s1, h1, "after its etcd lease was revoked");
    // A new etcd lease, not the revoked one.
    let out = c.etcd().ctl(&["get", &key, "-w", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_ne!(v["kvs"][0]["lease"].as_i64(), Some(id), "{out}");
    assert_eq!(c.subnet_file("h1").unwrap().subnet.trunc(), s1);
    still_working(&mut c, ip2);
}

#[test]
fn a_subnet_taken_by_another_node_moves_us_to_a_new_one_loudly() {
    if !require_cluster() {
        return;
    }
    let (mut c, s1, _) = setup();
    let h1 = c.host("h1").unwrap().ip();
    // Another node (not running here) claims h1's subnet.
    c.etcd()
        .put(
            &c.lease_key_in(s1),
            r#"{"PublicIP":"192.0.2.99","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:01:c0:00:02:63"}}"#,
        )
        .unwrap();
    let new = wait_for(
        "h1 to move to a new subnet",
        DEADLINE,
        || {
            let s = c.subnet_file("h1")?.subnet.trunc();
            Ok((s != s1).then_some(s))
        },
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    wait_lease(&c, new, h1, "its new subnet");
    let log = c.agent_log("h1").unwrap();
    assert!(
        log.contains("ERROR") && log.contains("now belongs to another node"),
        "the move was not said loudly:\n{}",
        c.agent_log_tail("h1")
    );
    assert!(c.agent_running("h1"));
    // h2 now routes the new subnet to h1, and the claimed one to the claimer.
    let expected: BTreeSet<Ipv4Net> = [new, s1].into_iter().collect();
    c.wait_routes("h2", &expected).unwrap();
    // Pods made after the move get addresses from the new subnet and reach h2.
    let ip = c.add_pod("h1", "p3").unwrap();
    assert!(new.contains(&ip), "p3 got {ip}, not in {new}");
    let ip2 = c.pod("p2").unwrap().ip();
    assert!(
        c.ping_within("p3", ip2, Duration::from_secs(10)),
        "p3 -> p2 broken\n{}",
        c.agent_log_tail("h1")
    );
}
