//! etcd disasters under running agents: etcd losing its data (a wiped data
//! directory, standing also for an older snapshot restored), garbage on a
//! node's own lease key, and a second node claiming a node's public IP. The
//! agents detect each one, keep their subnets and data path, and a node that
//! would share an address is refused with an error naming the other lease.
//!
//! Needs root, `ip`, `etcd`, `etcdctl`, `ping` and the workspace binaries;
//! under `CI=true` a missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use twill_harness::wait::wait_for;
use twill_harness::{require_cluster, Cluster};

/// Recovery must take seconds, not the default TTL's 8 hours.
const DEADLINE: Duration = Duration::from_secs(30);

fn wait_lease(c: &Cluster, subnet: Ipv4Net, ip: Ipv4Addr, host: &str, why: &str) {
    wait_for(
        &format!("lease {subnet} held by {ip} ({why})"),
        DEADLINE,
        || Ok(c.lease(subnet)?.filter(|l| l.public_ip == ip).map(|_| ())),
        || c.agent_log_tail(host),
    )
    .unwrap();
}

fn assert_pings(c: &mut Cluster, from: &str, to: Ipv4Addr, what: &str) {
    assert!(
        c.ping_within(from, to, Duration::from_secs(10)),
        "{from} -> {to} broken {what}\n{}",
        c.diagnostics()
    );
}

#[test]
fn agents_recover_from_etcd_losing_its_data_within_seconds() {
    if !require_cluster() {
        return;
    }
    // Default lease TTL (24 h): without detection, nothing would happen for
    // 8 hours.
    let mut c = Cluster::with_pods(2).unwrap();
    let (ip1, ip2) = (c.pod_ip("p1").unwrap(), c.pod_ip("p2").unwrap());
    let (s1, s2) = (c.subnet_of("h1").unwrap(), c.subnet_of("h2").unwrap());
    let (a1, a2) = (c.host("h1").unwrap().ip(), c.host("h2").unwrap().ip());

    c.wipe_etcd().unwrap();
    // Agents write leases back, never the config: its absence shows the
    // data is really gone.
    let config = format!("{}/config", c.etcd_prefix());
    assert_eq!(
        c.etcd().get(&config).unwrap(),
        None,
        "the new etcd is empty"
    );
    // Each agent writes its own lease again, with its own subnet.
    wait_lease(&c, s1, a1, "h1", "after the wipe");
    wait_lease(&c, s2, a2, "h2", "after the wipe");
    for h in ["h1", "h2"] {
        let log = c.agent_log(h).unwrap();
        assert!(
            log.contains("etcd lost or rolled back its data"),
            "{h} did not say so\n{}",
            c.agent_log_tail(h)
        );
        assert!(c.agent_running(h), "{h} exited\n{}", c.agent_log_tail(h));
    }
    assert_eq!(c.subnet_of("h1").unwrap(), s1);
    assert_eq!(c.subnet_of("h2").unwrap(), s2);
    assert_pings(&mut c, "p1", ip2, "after the wipe");

    // The operator restores the config; a node joining now must get a
    // subnet of its own and be programmed on the old nodes, which watch
    // the new etcd's revisions.
    c.etcd()
        .put(
            &config,
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
    let h3 = c.add_host().unwrap();
    c.start_agent(&h3).unwrap();
    let s3 = c.wait_subnet_file(&h3).unwrap().subnet.trunc();
    assert!(s3 != s1 && s3 != s2, "{h3} got a subnet in use: {s3}");
    c.wait_converged().unwrap();
    let ip3 = c.add_pod(&h3, "p3").unwrap();
    assert_pings(
        &mut c,
        "p3",
        ip1,
        "from the node that joined after the wipe",
    );
    assert_pings(&mut c, "p2", ip3, "to the new node");
}

#[test]
fn garbage_on_a_nodes_own_key_is_overwritten_and_the_node_keeps_its_subnet() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::with_pods(2).unwrap();
    let (s1, ip2) = (c.subnet_of("h1").unwrap(), c.pod_ip("p2").unwrap());
    let a1 = c.host("h1").unwrap().ip();
    let key = c.lease_key_in(s1);
    c.etcd().put(&key, "{garbage").unwrap();
    wait_lease(&c, s1, a1, "h1", "after garbage on its key");
    assert_eq!(c.subnet_of("h1").unwrap(), s1, "renumbered for garbage");
    assert_eq!(c.leases().unwrap().len(), 2, "no second lease");
    let log = c.agent_log("h1").unwrap();
    assert!(
        log.contains("unreadable value") && log.contains(&Cluster::lease_key(s1)),
        "the log must name the key\n{}",
        c.agent_log_tail("h1")
    );
    assert!(
        !log.contains("belongs to another node"),
        "false claim in the log\n{}",
        c.agent_log_tail("h1")
    );
    assert_pings(&mut c, "p1", ip2, "after garbage on h1's key");
}

#[test]
fn a_second_node_with_the_same_public_ip_is_refused_and_the_first_unaffected() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::with_pods(2).unwrap();
    let (s1, ip2) = (c.subnet_of("h1").unwrap(), c.pod_ip("p2").unwrap());
    let a1 = c.host("h1").unwrap().ip();
    let before = c.store_get_prefix(&c.lease_key_in(s1)).unwrap();
    // A cloned or misconfigured machine claiming h1's address.
    let h3 = c.add_host().unwrap();
    let a1s = a1.to_string();
    c.start_agent_with(&h3, &["--public-ip", &a1s, "--node-name", "intruder"])
        .unwrap();
    let give_up = std::time::Instant::now() + DEADLINE;
    while c.agent_running(&h3) {
        assert!(
            std::time::Instant::now() < give_up,
            "the intruder's agent runs on\n{}",
            c.agent_log_tail(&h3)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = c.agent_log(&h3).unwrap();
    assert!(
        log.contains(&format!("public IP {a1} is already used")) && log.contains(&s1.to_string()),
        "the refusal must name the address and the other lease\n{log}"
    );
    assert!(
        c.subnet_file(&h3).is_err(),
        "the intruder published a subnet"
    );
    // h1's lease is exactly as it was (value and etcd lease), h1 still works.
    assert_eq!(c.store_get_prefix(&c.lease_key_in(s1)).unwrap(), before);
    assert_eq!(c.leases().unwrap().len(), 2);
    assert!(c.agent_running("h1"));
    assert_pings(&mut c, "p1", ip2, "after the intruder was refused");
}
