//! Checks how the harness drives a CNI plugin, against a stand-in shell
//! plugin (tests/fixtures/fake-twill-cni.sh): run inside the host's
//! namespace, standard CNI env, config on stdin, result parsed, DEL sent.
//! Independent of the real `twill` plugin.
//!
//! Needs root, `ip`, `etcd`, `etcdctl`, `ping`; under `CI=true` a missing
//! prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv4Addr;
use std::path::Path;

use twill_harness::{require_cluster, Cluster};

#[test]
fn harness_invokes_the_plugin_in_the_host_namespace_per_cni_contract() {
    if !require_cluster() {
        return;
    }
    let bins = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-twill-cni.sh");
    std::fs::copy(&fixture, bins.path().join("twill")).unwrap();
    let calls = bins.path().join("calls.log");

    let mut c = Cluster::builder()
        .hosts(1)
        .bin_dir(bins.path())
        .build()
        .unwrap();
    let h = c.host("h1").unwrap();
    std::fs::write(
        h.subnet_file_path(),
        "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.9.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=false\n",
    )
    .unwrap();
    for args in [
        &["link", "add", "twill0", "type", "bridge"][..],
        &["addr", "add", "10.244.9.1/24", "dev", "twill0"],
        &["link", "set", "twill0", "up"],
    ] {
        h.ns().ip(args).unwrap();
    }
    let host_ns_id = h.ns().exec_ok(&["readlink", "/proc/self/ns/net"]).unwrap();
    let subnet_file = h.subnet_file_path();
    let ipam_dir = h.ipam_dir();

    let a = c.add_pod("h1", "pa").unwrap();
    let b = c.add_pod("h1", "pb").unwrap();
    assert_eq!(a, Ipv4Addr::new(10, 244, 9, 2));
    assert_eq!(b, Ipv4Addr::new(10, 244, 9, 3));
    assert!(
        c.ping("pa", b),
        "pod a -> pod b through the hand-made bridge"
    );
    let pa_ns = c.pod("pa").unwrap().ns().path();
    c.del_pod("pa").unwrap();

    let log = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 9, "3 calls x 3 lines: {log}");
    for call in lines.chunks(3) {
        assert_eq!(
            call[0],
            format!("ns={}", host_ns_id.trim()),
            "not run in h1's netns"
        );
        assert!(call[1].contains("ifname=eth0"), "{}", call[1]);
        assert!(
            call[1].contains(&format!("path={}", bins.path().display())),
            "{}",
            call[1]
        );
        let cfg: serde_json::Value =
            serde_json::from_str(call[2].trim_start_matches("cfg=")).unwrap();
        assert_eq!(cfg["cniVersion"], "1.1.0");
        assert_eq!(cfg["type"], "twill");
        assert_eq!(cfg["subnetFile"], subnet_file.to_str().unwrap());
        assert_eq!(cfg["dataDir"], ipam_dir.to_str().unwrap());
    }
    assert!(lines[1].starts_with("cmd=ADD id=") && lines[1].contains("-pa "));
    assert!(lines[7].starts_with("cmd=DEL") && lines[7].contains(&format!("netns={pa_ns} ")));
}
