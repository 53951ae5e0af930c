//! Root integration test of IPv6-only pods: with a subnet file of IPv6 keys
//! only (an IPv6-only node's, flannel's form), the real `twill` binary gives
//! every pod an IPv6 address alone, with its default route, DAD off, in the
//! result format of every supported CNI version; pods reach each other over
//! IPv6; CHECK, STATUS, DEL and GC work as for IPv4. No IPv4 address is
//! configured anywhere. Needs root and `ip`; fails under `CI=true` without.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::{
    addr_of, assert_pod_ipv6, fails_with, netns, ping6, pods_with_ipv6_off, succeeds, Rig,
};
use serde_json::json;

const GW6: &str = "fd00:10:244:3::1";
const V6_ONLY_FILE: &str = "TWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\nTWILL_MTU=1430\nTWILL_IPMASQ=false\n";

#[test]
fn ipv6_only_add_ping6_check_status_del_gc() {
    let Some(rig) = Rig::with_subnet_file(V6_ONLY_FILE) else {
        return;
    };
    let host = &rig.host;
    let (pod1, pod2) = pods_with_ipv6_off(host, "v6pod");
    let (p1, p2) = (pod1.path(), pod2.path());

    let r1 = rig.add("c1", &p1);
    let r2 = rig.add("c2", &p2);
    for r in [&r1, &r2] {
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 1, "IPv6 alone: {r}");
        let a = ips[0]["address"].as_str().unwrap();
        assert!(a.starts_with("fd00:10:244:3:") && a.ends_with("/64"), "{r}");
        assert_eq!(ips[0]["gateway"], GW6);
        assert_eq!(ips[0]["interface"], 1);
        assert_eq!(r["routes"], json!([{"dst": "::/0", "gw": GW6}]));
        assert_eq!(r["interfaces"][1]["mtu"], 1430);
    }
    let (a1, a2) = (addr_of(&r1, true), addr_of(&r2, true));
    assert_ne!(a1, a2);

    // The kernel agrees: IPv6 on, the address usable at once (no DAD), the
    // default route via the gateway, and no IPv4 address anywhere.
    for (pod, addr) in [(&pod1, &a1), (&pod2, &a2)] {
        assert_pod_ipv6(pod, addr, GW6);
        let (_, v4) = pod.try_ip(["-4", "-o", "addr", "show", "scope", "global"]);
        assert!(v4.trim().is_empty(), "an IPv4 address in the pod: {v4}");
        let (_, v4r) = pod.try_ip(["-4", "route", "show"]);
        assert!(v4r.trim().is_empty(), "an IPv4 route in the pod: {v4r}");
    }
    let (_, br) = host.try_ip([
        "-6", "-o", "addr", "show", "dev", "twill0", "scope", "global",
    ]);
    assert!(
        br.contains(&format!("{GW6}/64")) && !br.contains("tentative"),
        "{br}"
    );
    let (_, br4) = host.try_ip(["-4", "-o", "addr", "show", "dev", "twill0"]);
    assert!(
        br4.trim().is_empty(),
        "an IPv4 address on the bridge: {br4}"
    );
    // The bridge MAC follows the IPv6 gateway (the agent's rule).
    let (_, link) = host.try_ip(["-o", "link", "show", "twill0"]);
    assert!(link.contains("link/ether 0a:58:00:00:00:01"), "{link}");

    // Positive control first, then the real checks: pod to pod, to gateway.
    let (ok, out) = ping6(&pod2, GW6);
    assert!(ok, "pod2 -> gateway ping -6 failed: {out}");
    let (ok, out) = ping6(&pod1, &a2);
    assert!(ok, "pod1 -> pod2 ping -6 failed: {out}");

    // CHECK passes, then fails without the default route.
    succeeds(rig.check("c1", &p1, &r1), "CHECK");
    let (ok, _) = pod1.try_ip(["-6", "route", "del", "default"]);
    assert!(ok);
    let out = fails_with(rig.check("c1", &p1, &r1), 106);
    assert!(out["details"].as_str().unwrap().contains(GW6), "{out}");
    // A prevResult with an IPv4 address that was never reserved fails.
    let mut with_v4 = r2.clone();
    with_v4["ips"]
        .as_array_mut()
        .unwrap()
        .insert(0, json!({"address": "10.244.3.5/24", "interface": 1}));
    rig.check_rejects_prev_result("c2", &p2, &with_v4);

    succeeds(rig.global("STATUS", &rig.conf), "STATUS");

    // An IPv4 address asked of an IPv6-only node: 102, nothing kept.
    let pod3 = netns("v6pod3");
    let p3 = pod3.path();
    let before = rig.s.reservations();
    let out = fails_with(rig.add_args("c3", &p3, "IP=10.244.3.7", &rig.conf), 102);
    assert!(
        out["details"].as_str().unwrap().contains("IPv6-only"),
        "{out}"
    );
    assert_eq!(rig.s.reservations(), before);

    // A static IPv6 address, in every supported result version.
    for (i, v) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let conf = rig.conf_with(json!({"cniVersion": v}));
        let cid = format!("s{i}");
        let want = format!("fd00:10:244:3::7{i}");
        let r = succeeds(
            rig.add_args(&cid, &p3, &format!("IP={want}"), &conf),
            "static ADD",
        );
        assert_eq!(r["cniVersion"], *v);
        assert_eq!(r["ips"].as_array().unwrap().len(), 1, "{r}");
        assert_eq!(r["ips"][0]["address"], format!("{want}/64"));
        assert_eq!(
            r["ips"][0].get("version").is_some(),
            v.starts_with("0."),
            "{r}"
        );
        let (ok, out) = ping6(&pod2, &want);
        assert!(ok, "pod2 -> static {want} failed: {out}");
        rig.del_with(&cid, &p3, &conf);
    }

    // DEL releases pod1's address only; GC with nothing valid, the rest.
    rig.del("c1", &p1);
    assert_eq!(rig.s.reservations(), vec![a2.clone()]);
    rig.gc(json!([]));
    rig.assert_empty("after GC");
}
