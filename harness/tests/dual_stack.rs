//! Dual-stack end to end: an IPv4 + IPv6 cluster network, leases carrying
//! both subnets (flannel's `v4&v6` key form), IPv6 routes and neighbours
//! through the same VXLAN tunnel, pods with both families from the CNI
//! plugin, and IPv6 pod-to-pod pings across hosts.
//!
//! Needs root, `ip`, `etcd`, `etcdctl`, `ping` and the workspace binaries;
//! under `CI=true` a missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv6Net;
use twill_harness::netns::Netns;
use twill_harness::{require_cluster, Cluster};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;

/// The global IPv6 address of `eth0` in a pod namespace.
fn pod_ipv6(ns: &Netns) -> Ipv6Addr {
    let out = ns
        .ip(["-j", "-6", "addr", "show", "dev", "eth0", "scope", "global"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let addr = v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a["local"].as_str())
        .unwrap_or_else(|| panic!("no global IPv6 address on the pod's eth0: {out}"));
    addr.parse().unwrap()
}

/// The node's IPv6 subnet from its subnet file.
fn node_subnet6(c: &Cluster, host: &str) -> Ipv6Net {
    let file = c.subnet_file(host).unwrap();
    file.node_subnet6()
        .unwrap_or_else(|| panic!("no TWILL_IPV6_SUBNET in the subnet file of {host}: {file:?}"))
}

fn ping6_within(ns: &Netns, ip: Ipv6Addr, deadline: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let ok = ns
            .exec(&["ping", "-6", "-c1", "-W1", &ip.to_string()])
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return true;
        }
    }
    false
}

#[test]
fn ipv6_pods_reach_each_other_across_hosts() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(3)
        .network_config(CONFIG)
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();

    // Every node has a distinct /64 inside the IPv6 network, published in its
    // subnet file and in its etcd key (flannel's "v4&v6" key form).
    let network6: Ipv6Net = "fd00:10:244::/48".parse().unwrap();
    let mut subnets6 = Vec::new();
    for h in ["h1", "h2", "h3"] {
        let s6 = node_subnet6(&c, h);
        assert!(network6.contains(&s6), "{h}: {s6} outside {network6}");
        assert_eq!(s6.prefix_len(), 64);
        subnets6.push(s6);
    }
    let mut dedup = subnets6.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), 3, "IPv6 subnets not distinct: {subnets6:?}");
    let keys = c.lease_keys().unwrap();
    for s6 in &subnets6 {
        let part = format!("&{}-64", s6.network());
        assert!(
            keys.iter().any(|k| k.ends_with(&part)),
            "no lease key ends with {part}: {keys:?}"
        );
    }

    // Each host routes the others' IPv6 subnets through twill.1.
    for (i, h) in ["h1", "h2", "h3"].iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let routes = c
                .host(h)
                .unwrap()
                .ns()
                .ip(["-6", "route", "show", "proto", "77"])
                .unwrap();
            let missing: Vec<_> = subnets6
                .iter()
                .enumerate()
                .filter(|(j, s6)| {
                    *j != i && !routes.contains(&format!("{s6} via {} dev twill.1", s6.network()))
                })
                .map(|(_, s6)| *s6)
                .collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{h} lacks IPv6 routes for {missing:?}:\n{routes}\n{}",
                c.agent_log_tail(h)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // Pods get both families, and IPv6 flows pod to pod across hosts.
    let mut pods = Vec::new();
    for (h, p) in [("h1", "p1"), ("h2", "p2"), ("h3", "p3")] {
        c.add_pod(h, p).unwrap();
        let ip6 = pod_ipv6(c.pod(p).unwrap().ns());
        let s6 = node_subnet6(&c, h);
        assert!(s6.contains(&ip6), "{p} got {ip6}, not in {h}'s {s6}");
        pods.push((p, ip6));
    }
    let mut failed = Vec::new();
    for (from, _) in &pods {
        for (to, ip6) in &pods {
            if from == to {
                continue;
            }
            if !ping6_within(c.pod(from).unwrap().ns(), *ip6, Duration::from_secs(5)) {
                failed.push(format!("{from} -> {to} ({ip6})"));
            }
        }
    }
    assert!(failed.is_empty(), "IPv6 pings failed: {failed:?}");
}

#[test]
fn ipv6_rides_an_ipv6_underlay_tunnel_when_hosts_have_ipv6() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(2)
        .network_config(CONFIG)
        .build()
        .unwrap();
    // An IPv6 underlay beside the IPv4 one (documentation prefix, inside the
    // test's namespaces only).
    c.add_ipv6_underlay(&["h1", "h2"]).unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();

    // The lease publishes the IPv6 underlay address and the IPv6 VTEP.
    let values: Vec<serde_json::Value> = c
        .store_get_prefix(&format!("{}/subnets/", c.etcd_prefix()))
        .unwrap()
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).unwrap())
        .collect();
    assert_eq!(values.len(), 2);
    for v in &values {
        assert!(
            v["PublicIPv6"]
                .as_str()
                .is_some_and(|s| s.starts_with("2001:db8:1::")),
            "{v}"
        );
        assert!(v["BackendV6Data"]["VtepMAC"].is_string(), "{v}");
    }

    // h1 reaches h2's IPv6 subnet through twill6.1, with MTU underlay - 70.
    let s6_2 = node_subnet6(&c, "h2");
    let h1 = c.host("h1").unwrap().ns();
    let want = format!("{s6_2} via {} dev twill6.1", s6_2.network());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let routes = h1.ip(["-6", "route", "show", "proto", "77"]).unwrap();
        if routes.contains(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "h1 lacks `{want}`:\n{routes}\n{}",
            c.agent_log_tail("h1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let link: serde_json::Value =
        serde_json::from_str(&h1.ip(["-d", "-j", "link", "show", "twill6.1"]).unwrap()).unwrap();
    assert_eq!(link[0]["mtu"], 1430, "{link}");
    let fdb = c
        .host("h1")
        .unwrap()
        .ns()
        .exec(&["bridge", "fdb", "show", "dev", "twill6.1"])
        .unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
    assert!(fdb.contains("dst 2001:db8:1::2"), "{fdb}");
    let env = std::fs::read_to_string(c.host("h1").unwrap().subnet_file_path()).unwrap();
    assert!(env.contains("TWILL_MTU=1430"), "{env}");

    c.add_pod("h1", "p1").unwrap();
    c.add_pod("h2", "p2").unwrap();
    let ip2 = pod_ipv6(c.pod("p2").unwrap().ns());
    let ip1 = pod_ipv6(c.pod("p1").unwrap().ns());
    assert!(
        ping6_within(c.pod("p1").unwrap().ns(), ip2, Duration::from_secs(5)),
        "p1 -> {ip2}"
    );
    assert!(
        ping6_within(c.pod("p2").unwrap().ns(), ip1, Duration::from_secs(5)),
        "p2 -> {ip1}"
    );
}

#[test]
fn ipv6_pod_traffic_leaving_the_cluster_is_masqueraded() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(1)
        .network_config(CONFIG)
        .agent_args(["--ip-masq"])
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    // "The internet" behind h1 over IPv6 (documentation prefix, inside the
    // test's namespaces only); it has no route back to the pod network.
    // Kept alive (and removed on drop) for the whole test.
    let _inet = c
        .attach_outside("h1", "inet6", "2001:db8:ff::1/64", "2001:db8:ff::2/64")
        .unwrap();
    let h1 = c.host("h1").unwrap().ns();

    let env = std::fs::read_to_string(c.host("h1").unwrap().subnet_file_path()).unwrap();
    assert!(env.contains("TWILL_IPMASQ=true"), "{env}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let table = h1.exec(&["nft", "list", "table", "ip6", "twill"]).unwrap();
        let text = String::from_utf8_lossy(&table.stdout).into_owned();
        if table.status.success() && text.contains("masquerade") {
            assert!(text.contains("ip6 saddr fd00:10:244::/48"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ip6 twill table on h1:\n{text}\n{}",
            c.agent_log_tail("h1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Only a masqueraded packet can come back: the far side knows no route
    // to fd00:10:244::/48.
    c.add_pod("h1", "p1").unwrap();
    let h1 = c.host("h1").unwrap().ns();
    let p1 = c.pod("p1").unwrap().ns();
    assert!(
        ping6_within(
            p1,
            "2001:db8:ff::2".parse().unwrap(),
            Duration::from_secs(5)
        ),
        "pod -> outside over IPv6 failed\n{}",
        c.agent_log_tail("h1")
    );
    // And without the rules it cannot: the test above depends on them.
    h1.exec(&["nft", "delete", "table", "ip6", "twill"])
        .unwrap();
    h1.exec(&["conntrack", "-F"]).ok();
    let out = p1
        .exec(&["ping", "-6", "-c1", "-W1", "2001:db8:ff::2"])
        .unwrap();
    // The agent may already have put the table back (resync every 2 s);
    // only a reply with the table still gone proves anything.
    let back = h1
        .exec(&["nft", "list", "table", "ip6", "twill"])
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !back {
        assert!(!out.status.success(), "ping worked without masquerading");
    }
}
