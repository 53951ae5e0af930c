//! Tests of the harness itself, without the agent: underlay connectivity,
//! etcd reachability, teardown (also on panic), and driving the CNI plugin
//! against a hand-written subnet file and a hand-made bridge.
//!
//! Need root, `ip`, `etcd`, `etcdctl`, `ping`; under `CI=true` a missing
//! prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use twill_harness::cluster::{namespaces_with_prefix, ETCD_PREFIX, UNDERLAY_IP};
use twill_harness::{require_cluster, Cluster};

#[test]
fn hosts_reach_each_other_and_etcd_over_the_underlay() {
    if !require_cluster() {
        return;
    }
    let c = Cluster::builder().hosts(3).build().unwrap();
    for from in c.hosts() {
        assert!(
            c.ping(from.name(), UNDERLAY_IP),
            "{} -> underlay",
            from.name()
        );
        for to in c.hosts() {
            assert!(
                c.ping(from.name(), to.ip()),
                "{} -> {}",
                from.name(),
                to.ip()
            );
        }
    }
    // Nothing outside the test network answers: no default route in a host.
    assert!(!c.ping_within("h1", Ipv4Addr::new(198, 18, 0, 1), Default::default()));

    // etcd as the agents see it: from a host namespace, over the underlay.
    let out = c
        .ns_of("h2")
        .unwrap()
        .exec_ok(&[
            "env",
            "ETCDCTL_API=3",
            "etcdctl",
            "--endpoints",
            &c.etcd().endpoint(),
            "get",
            "--print-value-only",
            &format!("{ETCD_PREFIX}/config"),
        ])
        .unwrap();
    let cfg: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(cfg["Network"], "10.244.0.0/16");
    assert_eq!(cfg["Backend"]["Type"], "vxlan");
}

#[test]
fn etcd_helpers_round_trip() {
    if !require_cluster() {
        return;
    }
    let c = Cluster::builder().hosts(0).build().unwrap();
    let e = c.etcd();
    let k1 = format!("{ETCD_PREFIX}/subnets/10.244.5.0-24");
    let k2 = format!("{ETCD_PREFIX}/subnets/10.244.6.0-24");
    e.put(&k1, r#"{"PublicIP":"192.0.2.5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:05"}}"#).unwrap();
    e.put(&k2, r#"{"PublicIP":"192.0.2.6"}"#).unwrap();
    assert!(e.get(&k1).unwrap().is_some());
    assert_eq!(e.get("/nope").unwrap(), None);
    let leases = c.leases().unwrap();
    assert_eq!(leases.len(), 2);
    let s5: Ipv4Net = "10.244.5.0/24".parse().unwrap();
    assert_eq!(leases[&s5].public_ip, Ipv4Addr::new(192, 0, 2, 5));
    assert_eq!(leases[&s5].vtep_mac().as_deref(), Some("02:00:00:00:00:05"));
    assert_eq!(Cluster::lease_key(s5), k1);
    assert_eq!(e.del(&k1).unwrap(), 1);
    assert_eq!(e.del(&k1).unwrap(), 0);
    assert_eq!(c.leases().unwrap().len(), 1);
}

#[test]
fn namespaces_are_removed_on_drop_and_on_panic() {
    if !require_cluster() {
        return;
    }
    let c = Cluster::builder().hosts(2).build().unwrap();
    let prefix = c.prefix().to_owned();
    // underlay + 2 hosts
    assert_eq!(
        namespaces_with_prefix(&format!("{prefix}-")).unwrap().len(),
        3
    );
    let etcd_pid = c.etcd().pid();
    drop(c);
    assert!(namespaces_with_prefix(&format!("{prefix}-"))
        .unwrap()
        .is_empty());
    assert!(
        !std::path::Path::new(&format!("/proc/{etcd_pid}")).exists(),
        "etcd {etcd_pid} still running"
    );

    let panicked_prefix = std::sync::Mutex::new(String::new());
    let r = std::panic::catch_unwind(|| {
        let c = Cluster::builder().hosts(1).build().unwrap();
        *panicked_prefix.lock().unwrap() = c.prefix().to_owned();
        panic!("deliberate panic with a live cluster");
    });
    assert!(r.is_err());
    let p = panicked_prefix.into_inner().unwrap();
    assert!(!p.is_empty());
    assert!(namespaces_with_prefix(&format!("{p}-")).unwrap().is_empty());
}

/// The CNI plugin, driven exactly as the cluster tests drive it, on a node
/// prepared by hand (no agent): subnet file + bridge `twill0`.
#[test]
fn cni_plugin_wires_pods_to_a_hand_made_bridge() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder().hosts(1).build().unwrap();
    let h = c.host("h1").unwrap();
    std::fs::write(
        h.subnet_file_path(),
        "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.7.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=false\n",
    )
    .unwrap();
    let ns = h.ns();
    ns.ip(["link", "add", "twill0", "type", "bridge"]).unwrap();
    ns.ip(["addr", "add", "10.244.7.1/24", "dev", "twill0"])
        .unwrap();
    ns.ip(["link", "set", "twill0", "up"]).unwrap();

    let subnet: Ipv4Net = "10.244.7.0/24".parse().unwrap();
    let a = c.add_pod("h1", "pa").unwrap();
    let b = c.add_pod("h1", "pb").unwrap();
    assert!(subnet.contains(&a), "{a} not in {subnet}");
    assert!(subnet.contains(&b), "{b} not in {subnet}");
    assert_ne!(a, b);
    assert_ne!(a, Ipv4Addr::new(10, 244, 7, 1), "pod got the gateway");
    assert_eq!(c.pod("pa").unwrap().cidr().prefix_len(), 24);

    assert!(c.ping("h1", a), "host -> pod a");
    assert!(c.ping("pa", b), "pod a -> pod b");
    assert!(
        c.ping("pb", Ipv4Addr::new(10, 244, 7, 1)),
        "pod b -> gateway"
    );

    c.del_pod("pa").unwrap();
    assert!(c.pod("pa").is_err());
    assert!(
        !c.ping_within("h1", a, Default::default()),
        "deleted pod still answers"
    );
    assert!(c.ping("h1", b), "other pod lost by DEL");
}
