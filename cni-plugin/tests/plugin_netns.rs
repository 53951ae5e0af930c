//! Root integration test: runs the built `twill` binary exactly as a runtime
//! does (env + stdin) inside a test-made "host" namespace against test-made
//! pod namespaces. Needs root and `ip`; fails under `CI=true` without them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::Command;

use common::{
    all_at_once, attach_env, cni, distinct_ips, fails_with, host_veth, netns, result_ip, succeeds,
    veths, Netns, Rig,
};
use serde_json::json;

#[test]
fn add_ping_check_del_gc() {
    let Some(rig) = Rig::new() else { return };
    let pod1 = netns("pod1");
    let pod2 = netns("pod2");
    let (host, s) = (&rig.host, &rig.s);
    let (p1, p2) = (pod1.path(), pod2.path());

    let r1 = rig.add("c1", &p1);
    let r2 = rig.add("c2", &p2);

    for (r, sandbox) in [(&r1, &p1), (&r2, &p2)] {
        assert_eq!(r["cniVersion"], "1.1.0");
        assert_eq!(r["interfaces"][0]["name"].as_str().unwrap().len(), 15);
        assert_eq!(r["interfaces"][1]["name"], "eth0");
        assert_eq!(r["interfaces"][1]["sandbox"], sandbox.as_str());
        assert_eq!(r["interfaces"][1]["mtu"], 1450);
        assert_eq!(r["interfaces"][1]["mac"].as_str().unwrap().len(), 17);
        assert_eq!(r["ips"][0]["gateway"], "10.244.3.1");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert_eq!(r["routes"][0]["gw"], "10.244.3.1");
        let addr = r["ips"][0]["address"].as_str().unwrap();
        assert!(
            addr.starts_with("10.244.3.") && addr.ends_with("/24"),
            "{addr}"
        );
    }
    let (ip1, ip2) = (result_ip(&r1), result_ip(&r2));
    assert_ne!(ip1, ip2);
    assert!(!["10.244.3.0", "10.244.3.1", "10.244.3.255"].contains(&ip1.as_str()));

    // The kernel agrees with the result.
    let (_, link) = pod1.try_ip(["-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    let host_veth1 = host_veth(&r1);
    let (_, hl) = host.try_ip(["-o", "link", "show", &host_veth1]);
    assert!(
        hl.contains("master twill0") && hl.contains("mtu 1450"),
        "{hl}"
    );
    let (_, br) = host.try_ip(["-o", "link", "show", "twill0"]);
    assert!(
        br.contains("0a:58:0a:f4:03:01"),
        "bridge MAC not fixed: {br}"
    );
    let (_, route) = pod1.try_ip(["route", "show", "default"]);
    assert!(route.contains("via 10.244.3.1"), "{route}");

    let ping = Command::new("ip")
        .args(["netns", "exec", pod1.name(), "ping", "-c1", "-W1", &ip2])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "pod1 -> pod2 ping failed: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // CHECK against the ADD result passes; against a wrong prevResult fails.
    succeeds(rig.check("c1", &p1, &r1), "CHECK");
    rig.check_rejects_prev_result("c1", &p1, &r2);

    succeeds(rig.global("STATUS", &rig.conf), "STATUS");

    // Both pods are in the isolation table's set, by port, MAC and address.
    let pods4 = || {
        let out = host
            .exec_ok(&["nft", "list", "set", "bridge", "twill-guard", "pods4"])
            .unwrap();
        (out.contains(&ip1), out.contains(&ip2))
    };
    assert_eq!(pods4(), (true, true));

    // DEL twice, both succeed; pod1's veth and address are gone.
    for _ in 0..2 {
        rig.del("c1", &p1);
    }
    assert_eq!(pods4(), (false, true), "DEL left pod1's entry");
    assert!(!pod1.link_names().unwrap().contains(&"eth0".to_string()));
    assert!(!host.link_names().unwrap().contains(&host_veth1));
    assert_eq!(s.reservations(), vec![ip2.clone()]);

    // DEL of a container never added, with its netns gone, succeeds.
    rig.del("never", "/run/netns/twcni-does-not-exist");

    // The bridge keeps its MAC after its ports are gone.
    let pod2_veth = host_veth(&r2);
    // GC with pod2 not in the valid list releases it and removes its veth.
    rig.gc(json!([{"containerID": "other", "ifname": "eth0"}]));
    assert!(s.reservations().is_empty(), "{:?}", s.reservations());
    assert!(!host.link_names().unwrap().contains(&pod2_veth));
    assert_eq!(pods4(), (false, false), "GC left pod2's entry");
    let (_, br) = host.try_ip(["-o", "link", "show", "twill0"]);
    assert!(
        br.contains("0a:58:0a:f4:03:01"),
        "bridge lost its MAC: {br}"
    );

    // A fresh ADD after the bridge emptied works again.
    rig.add("c3", &p1);
    rig.del("c3", &p1);
    assert!(veths(host).is_empty());
}

#[test]
fn errors_have_codes_and_leave_nothing() {
    let Some(rig) = Rig::new() else { return };
    let pod = netns("pod");
    let (host, s) = (&rig.host, &rig.s);
    let p = pod.path();

    fails_with(rig.call("ADD", "c1", &p, b"{not json\xff"), 6);
    rig.assert_clean(&pod, "bad stdin");

    let mut env = attach_env("ADD", "c1", &p, "eth0");
    env.retain(|(k, _)| *k != "CNI_IFNAME");
    let out = fails_with(cni(host, &env, &rig.conf), 4);
    assert!(
        out["details"].as_str().unwrap().contains("CNI_IFNAME"),
        "{out}"
    );
    rig.assert_clean(&pod, "missing CNI_IFNAME");

    // The spec's container id rule: alphanumeric first, then [A-Za-z0-9_.-].
    for bad in ["-c1", "_c1", ".c1", "c 1", "c/1", "c:1"] {
        let out = fails_with(rig.call("ADD", bad, &p, &rig.conf), 4);
        assert!(
            out["details"].as_str().unwrap().contains("CNI_CONTAINERID"),
            "{out}"
        );
        rig.assert_clean(&pod, bad);
    }

    let missing = rig.conf_with(json!({"subnetFile": s.dir.path().join("nope.env")}));
    fails_with(rig.call("ADD", "c1", &p, &missing), 11);
    rig.assert_clean(&pod, "missing subnet file");

    fails_with(rig.global("STATUS", &missing), 50);

    // Failure after the address was reserved and the veth created: the
    // "bridge" is really a veth, so enslaving fails and ADD must undo.
    let (ok, _) = host.try_ip([
        "link", "add", "notbr", "type", "veth", "peer", "name", "notbrp",
    ]);
    assert!(ok);
    let bad_bridge = rig.conf_with(json!({"bridge": "notbr"}));
    let (ok, out) = rig.call("ADD", "c1", &p, &bad_bridge);
    assert!(!ok, "{out}");
    assert!(out["code"].as_u64().unwrap() >= 100, "{out}");
    rig.assert_clean(&pod, "failed enslave");

    // An interface that already exists in the pod is an error and the
    // existing attachment stays intact.
    let r = rig.add("c1", &p);
    let before = s.reservations();
    fails_with(rig.call("ADD", "c9", &p, &rig.conf), 105);
    assert_eq!(s.reservations(), before);
    assert_eq!(veths(host).len(), 1);

    // A second interface of the same container gets its own address.
    let r2 = succeeds(
        cni(host, &attach_env("ADD", "c1", &p, "net1"), &rig.conf),
        "ADD net1",
    );
    assert_ne!(r["ips"][0]["address"], r2["ips"][0]["address"]);
    for ifname in ["eth0", "net1"] {
        succeeds(
            cni(host, &attach_env("DEL", "c1", &p, ifname), &rig.conf),
            ifname,
        );
    }
    rig.assert_clean(&pod, "after DEL of both interfaces");

    // Static address via CNI_ARGS, and one outside the subnet is refused.
    let r = succeeds(
        rig.add_args(
            "c2",
            &p,
            "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.3.77",
            &rig.conf,
        ),
        "static ADD",
    );
    assert_eq!(r["ips"][0]["address"], "10.244.3.77/24");
    rig.del("c2", &p);
    fails_with(rig.add_args("c2", &p, "IP=10.244.9.9", &rig.conf), 102);
    rig.assert_clean(&pod, "static address outside subnet");

    // Legacy result format.
    let legacy = rig.conf_with(json!({"cniVersion": "0.4.0"}));
    let r = rig.add_with("c3", &p, &legacy);
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    rig.del_with("c3", &p, &legacy);
    rig.assert_clean(&pod, "legacy");

    let v = succeeds(
        rig.global("VERSION", br#"{"cniVersion":"1.0.0"}"#),
        "VERSION",
    );
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    let Some(rig) = Rig::new() else { return };
    let pods: Vec<Netns> = (0..6).map(|i| netns(&format!("cp{i}"))).collect();
    let cid = |i: usize| format!("cc{i}");
    // All ADDs race, including on creating the bridge.
    let results = all_at_once(pods.len(), |i| {
        rig.call("ADD", &cid(i), &pods[i].path(), &rig.conf)
    });
    distinct_ips(&results);
    assert_eq!(rig.s.reservations().len(), pods.len());
    assert_eq!(veths(&rig.host).len(), pods.len());
    for (i, pod) in pods.iter().enumerate() {
        rig.del(&cid(i), &pod.path());
    }
    rig.assert_empty("after DEL");
}

/// What ADD sets at veth creation (host MAC, bridge, up, hairpin) is what
/// the kernel shows; DEL still cleans the pod side when the host end is gone.
#[test]
fn veth_attributes_hairpin_and_del_fallback() {
    let Some(rig) = Rig::new() else { return };
    let pod = netns("pod");
    let host = &rig.host;
    let p = pod.path();
    let conf = rig.conf_with(json!({"hairpinMode": true}));
    let r = rig.add_with("h1", &p, &conf);
    let veth = host_veth(&r);
    let (ok, detail) = host.try_ip(["-d", "link", "show", &veth]);
    assert!(ok, "{veth} missing");
    let mac = r["interfaces"][0]["mac"].as_str().unwrap();
    assert!(detail.contains(&format!("link/ether {mac}")), "{detail}");
    assert!(detail.contains("master twill0"), "{detail}");
    assert!(detail.contains(",UP"), "{detail}");
    assert!(detail.contains("hairpin on"), "{detail}");
    let (_, pod_link) = pod.try_ip(["link", "show", "eth0"]);
    assert!(pod_link.contains(",UP"), "{pod_link}");
    let pod_mac = r["interfaces"][1]["mac"].as_str().unwrap();
    assert!(
        pod_link.contains(&format!("link/ether {pod_mac}")),
        "{pod_link}"
    );
    // One queue each way on both ends, stated at creation (a veth left to
    // the default gets a queue per CPU, cut back under the RTNL lock).
    let (_, pod_detail) = pod.try_ip(["-d", "link", "show", "eth0"]);
    for d in [&detail, &pod_detail] {
        assert!(d.contains("numtxqueues 1 numrxqueues 1"), "{d}");
    }

    // hairpinMode false (the default is true) leaves the port's kernel
    // default: off.
    let pod2 = netns("pod2");
    let plain = rig.conf_with(json!({"hairpinMode": false}));
    let r2 = rig.add_with("h2", &pod2.path(), &plain);
    let (_, detail2) = host.try_ip(["-d", "link", "show", &host_veth(&r2)]);
    assert!(detail2.contains("hairpin off"), "{detail2}");

    // The host end is gone (deleted by hand, taking the pod end) and the pod
    // has some other eth0: DEL removes it from the pod side and succeeds.
    assert!(host.try_ip(["link", "del", &veth]).0);
    assert!(
        pod.try_ip(["link", "add", "eth0", "type", "veth", "peer", "name", "x0"])
            .0
    );
    rig.del_with("h1", &p, &conf);
    let names = pod.link_names().unwrap();
    assert!(!names.iter().any(|n| n == "eth0"), "{names:?}");
    rig.del_with("h2", &pod2.path(), &plain);
    rig.assert_empty("after DEL");
}
