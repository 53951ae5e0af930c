//! Root integration test of dual-stack pods: with `TWILL_IPV6_SUBNET` in the
//! subnet file, the real `twill` binary gives every pod an IPv4 and an IPv6
//! address, pods reach each other over IPv6, CHECK sees both families and
//! DEL/GC release both. Needs root and `ip`; fails under `CI=true` without.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::{
    addr_of, assert_pod_ipv6, bytes, fails_with, netns, ping6, pods_with_ipv6_off, read_sysctl,
    succeeds, veths, Netns, Rig, Setup, SUBNET_V4,
};
use serde_json::json;

const GW6: &str = "fd00:10:244:3::1";

fn dual_stack_file(v6_subnet: &str) -> String {
    format!("{SUBNET_V4}TWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET={v6_subnet}\n")
}

#[test]
fn dual_stack_add_ping6_check_del_gc() {
    let Some(rig) = Rig::with_subnet_file(&dual_stack_file(&format!("{GW6}/64"))) else {
        return;
    };
    let (host, s) = (&rig.host, &rig.s);
    let (pod1, pod2) = pods_with_ipv6_off(host, "pod");
    let (p1, p2) = (pod1.path(), pod2.path());

    let r1 = rig.add("c1", &p1);
    let r2 = rig.add("c2", &p2);

    for r in [&r1, &r2] {
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "{r}");
        assert!(
            !ips[0]["address"].as_str().unwrap().contains(':'),
            "v4 first: {r}"
        );
        assert!(ips[1]["address"]
            .as_str()
            .unwrap()
            .starts_with("fd00:10:244:3:"));
        assert!(ips[1]["address"].as_str().unwrap().ends_with("/64"));
        assert_eq!(ips[1]["gateway"], GW6);
        assert_eq!(ips[1]["interface"], 1);
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["routes"][1], json!({"dst": "::/0", "gw": GW6}));
    }
    let (v6a, v6b) = (addr_of(&r1, true), addr_of(&r2, true));
    assert_ne!(v6a, v6b);
    for a in [&v6a, &v6b] {
        assert!(a != "fd00:10:244:3::" && a != GW6, "{a}");
    }

    // The kernel agrees: IPv6 enabled, address not tentative, default route.
    for (pod, addr) in [(&pod1, &v6a), (&pod2, &v6b)] {
        assert_pod_ipv6(pod, addr, GW6);
    }
    assert_eq!(read_sysctl(host, "net.ipv6.conf.twill0.disable_ipv6"), "0");
    let (_, br) = host.try_ip([
        "-6", "-o", "addr", "show", "dev", "twill0", "scope", "global",
    ]);
    assert!(br.contains(&format!("{GW6}/64")), "{br}");
    assert!(!br.contains("tentative"), "{br}");

    // Pod to pod and pod to gateway over IPv6; IPv4 still works.
    let (ok, out) = ping6(&pod1, &v6b);
    assert!(ok, "pod1 -> pod2 ping -6 failed: {out}");
    let (ok, out) = ping6(&pod2, GW6);
    assert!(ok, "pod2 -> gateway ping -6 failed: {out}");
    assert!(pod1.ping_once(&addr_of(&r2, false), 2), "pod1 -> pod2 IPv4");

    // CHECK sees both families; a missing v6 default route fails it.
    succeeds(rig.check("c1", &p1, &r1), "CHECK");
    let (ok, _) = pod1.try_ip(["-6", "route", "del", "default"]);
    assert!(ok);
    let out = fails_with(rig.check("c1", &p1, &r1), 106);
    assert!(out["details"].as_str().unwrap().contains(GW6), "{out}");
    // A prevResult that lacks the v6 address fails too.
    let mut v4_only = r1.clone();
    v4_only["ips"].as_array_mut().unwrap().truncate(1);
    rig.check_rejects_prev_result("c1", &p1, &v4_only);

    succeeds(rig.global("STATUS", &rig.conf), "STATUS");

    // DEL releases both of pod1's addresses, only them.
    rig.del("c1", &p1);
    let mut want = vec![addr_of(&r2, false), v6b.clone()];
    want.sort();
    assert_eq!(s.reservations(), want);

    // Static addresses of both families via CNI_ARGS, legacy result format.
    let legacy = rig.conf_with(json!({"cniVersion": "0.4.0"}));
    let r3 = succeeds(
        rig.add_args("c3", &p1, "IP=10.244.3.77,fd00:10:244:3::77", &legacy),
        "static ADD",
    );
    assert_eq!(r3["ips"][0]["address"], "10.244.3.77/24");
    assert_eq!(r3["ips"][0]["version"], "4");
    assert_eq!(r3["ips"][1]["address"], "fd00:10:244:3::77/64");
    assert_eq!(r3["ips"][1]["version"], "6");
    let (ok, out) = ping6(&pod2, "fd00:10:244:3::77");
    assert!(ok, "pod2 -> static v6 failed: {out}");

    // GC with nothing valid releases everything, both families.
    rig.gc(json!([]));
    rig.assert_empty("after GC");
}

#[test]
fn v6_exhaustion_and_bad_v6_input_leave_nothing() {
    // A /126 has two IPv6 pod addresses (::2, ::3): the third pod must fail
    // although IPv4 has room, and keep no IPv4 reservation either.
    let Some(rig) = Rig::with_subnet_file(&dual_stack_file("fd00:10:244:3::1/126")) else {
        return;
    };
    let pods: Vec<Netns> = (0..3).map(|i| netns(&format!("x{i}"))).collect();
    let s = &rig.s;
    for (i, pod) in pods.iter().take(2).enumerate() {
        rig.add(&format!("c{i}"), &pod.path());
    }
    let before = s.reservations();
    assert_eq!(before.len(), 4, "{before:?}");
    let p3 = pods[2].path();
    fails_with(rig.call("ADD", "c2", &p3, &rig.conf), 100);
    assert_eq!(s.reservations(), before);
    assert_eq!(veths(&rig.host).len(), 2);
    assert!(!pods[2].link_names().unwrap().contains(&"eth0".to_string()));

    fails_with(rig.global("STATUS", &rig.conf), 50);

    // A static v6 address outside the v6 subnet: 102, nothing kept.
    rig.del("c1", &pods[1].path());
    fails_with(
        rig.add_args("c2", &p3, "IP=fd00:10:244:9::5", &rig.conf),
        102,
    );
    assert_eq!(s.reservations().len(), 2);

    // A malformed v6 key: 101 naming it.
    let bad = Setup::with_subnet_file(&format!(
        "{SUBNET_V4}TWILL_IPV6_SUBNET=fd00:10:244:3::zz/64\n"
    ));
    let out = fails_with(
        rig.call("ADD", "c2", &p3, &bytes(&bad.conf(json!({})))),
        101,
    );
    assert!(
        out["details"]
            .as_str()
            .unwrap()
            .contains("TWILL_IPV6_SUBNET"),
        "{out}"
    );
    assert!(bad.reservations().is_empty());

    rig.del("c0", &pods[0].path());
    rig.assert_empty("after DEL");
}
