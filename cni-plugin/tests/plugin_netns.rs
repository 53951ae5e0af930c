//! Root integration test: runs the built `twill` binary exactly as a runtime
//! does (env + stdin) inside a test-made "host" namespace against test-made
//! pod namespaces. Needs root and `ip`; fails under `CI=true` without them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::Command;

use common::{attach_env, bytes, cni, prerequisites, veths, Netns, Setup};
use serde_json::{json, Value};

#[test]
fn add_ping_check_del_gc() {
    if !prerequisites() {
        return;
    }
    let host = Netns::new("host");
    let pod1 = Netns::new("pod1");
    let pod2 = Netns::new("pod2");
    let s = Setup::new();
    let conf = bytes(&s.conf(json!({})));
    let (p1, p2) = (pod1.path(), pod2.path());

    let (ok, r1) = cni(&host, &attach_env("ADD", "c1", &p1, "eth0"), &conf);
    assert!(ok, "ADD pod1: {r1}");
    let (ok, r2) = cni(&host, &attach_env("ADD", "c2", &p2, "eth0"), &conf);
    assert!(ok, "ADD pod2: {r2}");

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
    let ip1 = r1["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let ip2 = r2["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(ip1, ip2);
    assert!(!["10.244.3.0", "10.244.3.1", "10.244.3.255"].contains(&ip1.as_str()));

    // The kernel agrees with the result.
    let (_, link) = pod1.ip(&["-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1450"), "{link}");
    let host_veth = r1["interfaces"][0]["name"].as_str().unwrap().to_string();
    let (_, hl) = host.ip(&["-o", "link", "show", &host_veth]);
    assert!(
        hl.contains("master twill0") && hl.contains("mtu 1450"),
        "{hl}"
    );
    let (_, br) = host.ip(&["-o", "link", "show", "twill0"]);
    assert!(
        br.contains("0a:58:0a:f4:03:01"),
        "bridge MAC not fixed: {br}"
    );
    let (_, route) = pod1.ip(&["route", "show", "default"]);
    assert!(route.contains("via 10.244.3.1"), "{route}");

    let ping = Command::new("ip")
        .args(["netns", "exec", &pod1.name, "ping", "-c1", "-W1", &ip2])
        .output()
        .unwrap();
    assert!(
        ping.status.success(),
        "pod1 -> pod2 ping failed: {}",
        String::from_utf8_lossy(&ping.stdout)
    );

    // CHECK against the ADD result passes; against a wrong prevResult fails.
    let check_conf = bytes(&s.conf(json!({"prevResult": r1})));
    let (ok, out) = cni(&host, &attach_env("CHECK", "c1", &p1, "eth0"), &check_conf);
    assert!(ok, "CHECK: {out}");
    let (ok, out) = cni(
        &host,
        &attach_env("CHECK", "c1", &p1, "eth0"),
        &bytes(&s.conf(json!({"prevResult": r2}))),
    );
    assert!(!ok);
    assert!(
        out["details"].as_str().unwrap().contains("prevResult"),
        "{out}"
    );

    let (ok, _) = cni(&host, &[("CNI_COMMAND", "STATUS")], &conf);
    assert!(ok);

    // DEL twice, both succeed; pod1's veth and address are gone.
    for _ in 0..2 {
        let (ok, out) = cni(&host, &attach_env("DEL", "c1", &p1, "eth0"), &conf);
        assert!(ok, "DEL: {out}");
        assert_eq!(out, Value::Null, "DEL prints nothing");
    }
    assert!(!pod1.link_names().contains(&"eth0".to_string()));
    assert!(!host.link_names().contains(&host_veth));
    assert_eq!(s.reservations(), vec![ip2.clone()]);

    // DEL of a container never added, with its netns gone, succeeds.
    let (ok, out) = cni(
        &host,
        &attach_env("DEL", "never", "/run/netns/twcni-does-not-exist", "eth0"),
        &conf,
    );
    assert!(ok, "{out}");

    // The bridge keeps its MAC after its ports are gone.
    let pod2_veth = r2["interfaces"][0]["name"].as_str().unwrap().to_string();
    // GC with pod2 not in the valid list releases it and removes its veth.
    let gc_conf = bytes(
        &s.conf(json!({"cni.dev/valid-attachments": [{"containerID": "other", "ifname": "eth0"}]})),
    );
    let (ok, out) = cni(&host, &[("CNI_COMMAND", "GC")], &gc_conf);
    assert!(ok, "GC: {out}");
    assert!(s.reservations().is_empty(), "{:?}", s.reservations());
    assert!(!host.link_names().contains(&pod2_veth));
    let (_, br) = host.ip(&["-o", "link", "show", "twill0"]);
    assert!(
        br.contains("0a:58:0a:f4:03:01"),
        "bridge lost its MAC: {br}"
    );

    // A fresh ADD after the bridge emptied works again.
    let (ok, r3) = cni(&host, &attach_env("ADD", "c3", &p1, "eth0"), &conf);
    assert!(ok, "re-ADD: {r3}");
    let (ok, _) = cni(&host, &attach_env("DEL", "c3", &p1, "eth0"), &conf);
    assert!(ok);
    assert!(veths(&host).is_empty());
}

#[test]
fn errors_have_codes_and_leave_nothing() {
    if !prerequisites() {
        return;
    }
    let host = Netns::new("host");
    let pod = Netns::new("pod");
    let s = Setup::new();
    let conf = bytes(&s.conf(json!({})));
    let p = pod.path();

    let assert_clean = |what: &str| {
        assert!(
            s.reservations().is_empty(),
            "{what}: reservations {:?}",
            s.reservations()
        );
        assert!(
            veths(&host).is_empty(),
            "{what}: host veths {:?}",
            veths(&host)
        );
        assert!(
            !pod.link_names().contains(&"eth0".to_string()),
            "{what}: eth0 in pod"
        );
    };

    let (ok, out) = cni(
        &host,
        &attach_env("ADD", "c1", &p, "eth0"),
        b"{not json\xff",
    );
    assert!(!ok);
    assert_eq!(out["code"], 6, "{out}");
    assert_clean("bad stdin");

    let mut env = attach_env("ADD", "c1", &p, "eth0");
    env.retain(|(k, _)| *k != "CNI_IFNAME");
    let (ok, out) = cni(&host, &env, &conf);
    assert!(!ok);
    assert_eq!(out["code"], 4);
    assert!(
        out["details"].as_str().unwrap().contains("CNI_IFNAME"),
        "{out}"
    );
    assert_clean("missing CNI_IFNAME");

    let missing = bytes(&s.conf(json!({"subnetFile": s.dir.path().join("nope.env")})));
    let (ok, out) = cni(&host, &attach_env("ADD", "c1", &p, "eth0"), &missing);
    assert!(!ok);
    assert_eq!(out["code"], 11, "{out}");
    assert_clean("missing subnet file");

    let (ok, out) = cni(&host, &[("CNI_COMMAND", "STATUS")], &missing);
    assert!(!ok);
    assert_eq!(out["code"], 50, "{out}");

    // Failure after the address was reserved and the veth created: the
    // "bridge" is really a veth, so enslaving fails and ADD must undo.
    let (ok, _) = host.ip(&[
        "link", "add", "notbr", "type", "veth", "peer", "name", "notbrp",
    ]);
    assert!(ok);
    let bad_bridge = bytes(&s.conf(json!({"bridge": "notbr"})));
    let (ok, out) = cni(&host, &attach_env("ADD", "c1", &p, "eth0"), &bad_bridge);
    assert!(!ok, "{out}");
    assert!(out["code"].as_u64().unwrap() >= 100, "{out}");
    assert_clean("failed enslave");

    // An interface that already exists in the pod is an error and the
    // existing attachment stays intact.
    let (ok, r) = cni(&host, &attach_env("ADD", "c1", &p, "eth0"), &conf);
    assert!(ok, "{r}");
    let before = s.reservations();
    let (ok, out) = cni(&host, &attach_env("ADD", "c9", &p, "eth0"), &conf);
    assert!(!ok);
    assert_eq!(out["code"], 105, "{out}");
    assert_eq!(s.reservations(), before);
    assert_eq!(veths(&host).len(), 1);

    // A second interface of the same container gets its own address.
    let (ok, r2) = cni(&host, &attach_env("ADD", "c1", &p, "net1"), &conf);
    assert!(ok, "{r2}");
    assert_ne!(r["ips"][0]["address"], r2["ips"][0]["address"]);
    for ifname in ["eth0", "net1"] {
        let (ok, out) = cni(&host, &attach_env("DEL", "c1", &p, ifname), &conf);
        assert!(ok, "{out}");
    }
    assert_clean("after DEL of both interfaces");

    // Static address via CNI_ARGS, and one outside the subnet is refused.
    let mut env = attach_env("ADD", "c2", &p, "eth0");
    env.push(("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.244.3.77"));
    let (ok, r) = cni(&host, &env, &conf);
    assert!(ok, "{r}");
    assert_eq!(r["ips"][0]["address"], "10.244.3.77/24");
    let (ok, _) = cni(&host, &attach_env("DEL", "c2", &p, "eth0"), &conf);
    assert!(ok);
    let mut env = attach_env("ADD", "c2", &p, "eth0");
    env.push(("CNI_ARGS", "IP=10.244.9.9"));
    let (ok, out) = cni(&host, &env, &conf);
    assert!(!ok);
    assert_eq!(out["code"], 102, "{out}");
    assert_clean("static address outside subnet");

    // Legacy result format.
    let legacy = bytes(&s.conf(json!({"cniVersion": "0.4.0"})));
    let (ok, r) = cni(&host, &attach_env("ADD", "c3", &p, "eth0"), &legacy);
    assert!(ok, "{r}");
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4");
    let (ok, _) = cni(&host, &attach_env("DEL", "c3", &p, "eth0"), &legacy);
    assert!(ok);
    assert_clean("legacy");

    let (ok, v) = cni(
        &host,
        &[("CNI_COMMAND", "VERSION")],
        br#"{"cniVersion":"1.0.0"}"#,
    );
    assert!(ok);
    assert_eq!(v["cniVersion"], "1.0.0");
    assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    if !prerequisites() {
        return;
    }
    let host = Netns::new("host");
    let pods: Vec<Netns> = (0..6).map(|i| Netns::new(&format!("cp{i}"))).collect();
    let s = Setup::new();
    let conf = bytes(&s.conf(json!({})));
    // All ADDs race, including on creating the bridge.
    let results: Vec<(bool, Value)> = std::thread::scope(|sc| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, pod)| {
                let (host, conf) = (&host, &conf);
                sc.spawn(move || {
                    let cid = format!("cc{i}");
                    let path = pod.path();
                    cni(host, &attach_env("ADD", &cid, &path, "eth0"), conf)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs: Vec<String> = results
        .iter()
        .map(|(ok, r)| {
            assert!(ok, "{r}");
            r["ips"][0]["address"].as_str().unwrap().to_string()
        })
        .collect();
    addrs.sort();
    addrs.dedup();
    assert_eq!(addrs.len(), pods.len(), "duplicate addresses: {addrs:?}");
    assert_eq!(s.reservations().len(), pods.len());
    assert_eq!(veths(&host).len(), pods.len());
    for (i, pod) in pods.iter().enumerate() {
        let cid = format!("cc{i}");
        let (ok, out) = cni(&host, &attach_env("DEL", &cid, &pod.path(), "eth0"), &conf);
        assert!(ok, "{out}");
    }
    assert!(s.reservations().is_empty());
    assert!(veths(&host).is_empty());
}

/// What ADD sets at veth creation (host MAC, bridge, up, hairpin) is what
/// the kernel shows; DEL still cleans the pod side when the host end is gone.
#[test]
fn veth_attributes_hairpin_and_del_fallback() {
    if !prerequisites() {
        return;
    }
    let host = Netns::new("host");
    let pod = Netns::new("pod");
    let s = Setup::new();
    let p = pod.path();
    let conf = bytes(&s.conf(json!({"hairpinMode": true})));
    let (ok, r) = cni(&host, &attach_env("ADD", "h1", &p, "eth0"), &conf);
    assert!(ok, "ADD: {r}");
    let veth = r["interfaces"][0]["name"].as_str().unwrap().to_string();
    let (ok, detail) = host.ip(&["-d", "link", "show", &veth]);
    assert!(ok, "{veth} missing");
    let mac = r["interfaces"][0]["mac"].as_str().unwrap();
    assert!(detail.contains(&format!("link/ether {mac}")), "{detail}");
    assert!(detail.contains("master twill0"), "{detail}");
    assert!(detail.contains(",UP"), "{detail}");
    assert!(detail.contains("hairpin on"), "{detail}");
    let (_, pod_link) = pod.ip(&["link", "show", "eth0"]);
    assert!(pod_link.contains(",UP"), "{pod_link}");
    let pod_mac = r["interfaces"][1]["mac"].as_str().unwrap();
    assert!(
        pod_link.contains(&format!("link/ether {pod_mac}")),
        "{pod_link}"
    );
    // One queue each way on both ends, stated at creation (a veth left to
    // the default gets a queue per CPU, cut back under the RTNL lock).
    let (_, pod_detail) = pod.ip(&["-d", "link", "show", "eth0"]);
    for d in [&detail, &pod_detail] {
        assert!(d.contains("numtxqueues 1 numrxqueues 1"), "{d}");
    }

    // hairpinMode false (the default is true) leaves the port's kernel
    // default: off.
    let pod2 = Netns::new("pod2");
    let plain = bytes(&s.conf(json!({"hairpinMode": false})));
    let (ok, r2) = cni(
        &host,
        &attach_env("ADD", "h2", &pod2.path(), "eth0"),
        &plain,
    );
    assert!(ok, "ADD: {r2}");
    let veth2 = r2["interfaces"][0]["name"].as_str().unwrap();
    let (_, detail2) = host.ip(&["-d", "link", "show", veth2]);
    assert!(detail2.contains("hairpin off"), "{detail2}");

    // The host end is gone (deleted by hand, taking the pod end) and the pod
    // has some other eth0: DEL removes it from the pod side and succeeds.
    assert!(host.ip(&["link", "del", &veth]).0);
    assert!(
        pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "x0"])
            .0
    );
    let (ok, out) = cni(&host, &attach_env("DEL", "h1", &p, "eth0"), &conf);
    assert!(ok, "DEL: {out}");
    let names = pod.link_names();
    assert!(!names.iter().any(|n| n == "eth0"), "{names:?}");
    let (ok, out) = cni(
        &host,
        &attach_env("DEL", "h2", &pod2.path(), "eth0"),
        &plain,
    );
    assert!(ok, "DEL: {out}");
    assert!(veths(&host).is_empty(), "{:?}", veths(&host));
    assert!(s.reservations().is_empty(), "{:?}", s.reservations());
}
