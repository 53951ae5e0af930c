//! The cluster on an etcd that demands TLS client certificates: agents
//! given the CA, a client certificate and key get leases and their pods
//! reach each other across hosts; an agent without a client certificate is
//! refused, says why in its log, keeps retrying and gets no lease.
//!
//! Needs root, `ip`, `etcd`, `etcdctl`, `ping`, `openssl` and the workspace
//! binaries (`cargo build --workspace`); under `CI=true` a missing
//! prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use twill_harness::cluster::{DEFAULT_NETWORK_CONFIG, ETCD_PREFIX};
use twill_harness::parse::parse_lease_key;
use twill_harness::tls::{AgentProcess, TlsEtcd, TlsFiles};
use twill_harness::wait::{wait_for, DEFAULT_TIMEOUT};
use twill_harness::{Cluster, Prereqs, CLUSTER_TOOLS};

fn tls_args(etcd: &TlsEtcd, files: &TlsFiles, client_cert: bool) -> Vec<String> {
    let mut a = vec![
        "--etcd-endpoints".to_owned(),
        etcd.endpoint().to_owned(),
        "--etcd-prefix".to_owned(),
        ETCD_PREFIX.to_owned(),
        "--etcd-cafile".to_owned(),
        files.ca().to_string_lossy().into_owned(),
    ];
    if client_cert {
        a.extend([
            "--etcd-certfile".to_owned(),
            files.client_cert().to_string_lossy().into_owned(),
            "--etcd-keyfile".to_owned(),
            files.client_key().to_string_lossy().into_owned(),
        ]);
    }
    a
}

fn tls_leases(etcd: &TlsEtcd) -> BTreeSet<Ipv4Net> {
    etcd.get_prefix(&format!("{ETCD_PREFIX}/subnets/"))
        .unwrap()
        .iter()
        .map(|(k, _)| parse_lease_key(k).unwrap())
        .collect()
}

#[test]
fn client_cert_agents_get_leases_and_connect_pods_and_certless_agent_is_refused() {
    if !Prereqs::new()
        .root()
        .tools(CLUSTER_TOOLS)
        .tools(&["openssl"])
        .require()
    {
        return;
    }
    // Drop order is the reverse of this: agents, then etcd, then cluster.
    let mut cluster = Cluster::builder().hosts(3).build().unwrap();
    let (files, etcd) = TlsEtcd::beside(&cluster).unwrap();
    etcd.put(&format!("{ETCD_PREFIX}/config"), DEFAULT_NETWORK_CONFIG)
        .unwrap();

    let with_cert = tls_args(&etcd, &files, true);
    let _a1 = AgentProcess::start(cluster.host("h1").unwrap(), &with_cert).unwrap();
    let _a2 = AgentProcess::start(cluster.host("h2").unwrap(), &with_cert).unwrap();
    let mut a3 =
        AgentProcess::start(cluster.host("h3").unwrap(), &tls_args(&etcd, &files, false)).unwrap();

    let s1 = cluster.wait_subnet_file("h1").unwrap().node_subnet();
    let s2 = cluster.wait_subnet_file("h2").unwrap().node_subnet();
    assert_ne!(s1, s2);
    cluster.wait_routes("h1", &[s2].into()).unwrap();
    cluster.wait_routes("h2", &[s1].into()).unwrap();
    // The leases are in the TLS etcd, none in the cluster's plain one.
    assert_eq!(tls_leases(&etcd), [s1, s2].into());
    assert!(cluster.leases().unwrap().is_empty());

    let p1 = cluster.add_pod("h1", "p1").unwrap();
    let p2 = cluster.add_pod("h2", "p2").unwrap();
    assert!(
        cluster.ping("p1", p2),
        "p1 -> p2 ({p2})\n{}",
        cluster.diagnostics()
    );
    assert!(
        cluster.ping("p2", p1),
        "p2 -> p1 ({p1})\n{}",
        cluster.diagnostics()
    );

    // h3 offered no client certificate: its log must say the etcd
    // connection failed and why.
    let refusal = wait_for(
        "h3's agent to log why etcd refused it",
        DEFAULT_TIMEOUT,
        || {
            let log = cluster.agent_log("h3")?;
            Ok(log
                .lines()
                // Debug lines of the TLS stack mention tls too: take the
                // agent's own warning.
                .find(|l| l.contains("WARN") && l.contains("cannot reach etcd"))
                .map(str::to_owned))
        },
        || cluster.agent_log_tail("h3"),
    )
    .unwrap();
    eprintln!("h3 refused as expected: {refusal}");
    assert!(
        refusal.contains(&etcd.endpoint().to_string())
            && refusal.to_lowercase().contains("client certificate"),
        "the log does not say which etcd refused and why: {refusal}"
    );
    // Still running (it retries), and by now it has tried more than once.
    wait_for(
        "h3's agent to retry",
        DEFAULT_TIMEOUT,
        || {
            let log = cluster.agent_log("h3")?;
            let tries = log
                .lines()
                .filter(|l| l.contains("WARN") && l.contains("cannot reach etcd, retrying"))
                .count();
            Ok((tries >= 2).then_some(()))
        },
        || cluster.agent_log_tail("h3"),
    )
    .unwrap();
    assert!(
        a3.running(),
        "h3's agent gave up:\n{}",
        cluster.agent_log_tail("h3")
    );
    assert!(
        !cluster.host("h3").unwrap().subnet_file_path().exists(),
        "h3 wrote a subnet file without a lease"
    );
    assert_eq!(tls_leases(&etcd), [s1, s2].into(), "h3 got a lease");
}
