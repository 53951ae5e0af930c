//! What `twilld` prints as an operator reads it: with `--log-format json`
//! every stderr line of a failed run is JSON, the last (fatal) one too; and
//! `twilld status` lists leases in numeric subnet order. The JSON tests need
//! nothing; the status test needs root, `ip`, `etcd` and `etcdctl` (a real
//! etcd in a test namespace), and fails under `CI=true` without them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

/// Runs twilld with `args` and no `TWILL_*` from the caller; returns (exit
/// code, stderr lines).
fn twilld(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut c = Command::new(TWILLD);
    for (k, _) in std::env::vars() {
        if k.starts_with("TWILL_") {
            c.env_remove(k);
        }
    }
    let out = c.args(args).output().unwrap();
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    (out.status.code(), lines)
}

#[track_caller]
fn all_json(lines: &[String], needle: &str) {
    assert!(!lines.is_empty(), "nothing on stderr");
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
        assert!(v.is_object(), "{l}");
    }
    let last: serde_json::Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR", "{last}");
    let msg = last["fields"]["message"].as_str().unwrap();
    assert!(msg.contains(needle), "{msg:?} should say {needle:?}");
}

#[test]
fn json_logs_stay_json_including_the_fatal_line() {
    // Refused at start, before logging is set up (exit 2).
    let (code, lines) = twilld(&["--log-format", "json", "--lease-ttl", "1"]);
    assert_eq!(code, Some(2));
    all_json(&lines, "--lease-ttl");
    // Failing at run time: `status` against an etcd that is not there.
    let endpoint = ["--etcd-endpoints", "http://127.0.0.1:9"];
    let mut args = vec!["--log-format", "json", "status"];
    args.extend(endpoint);
    let (code, lines) = twilld(&args);
    assert_eq!(code, Some(1));
    all_json(&lines, "etcd");
    // Even with errors filtered out of the log, the last line is there.
    args.extend(["--log-level", "off"]);
    let (_, lines) = twilld(&args);
    all_json(&lines, "etcd");
    // Positive control: the text format's fatal line is not JSON.
    let mut text = vec!["status"];
    text.extend(endpoint);
    let (code, lines) = twilld(&text);
    assert_eq!(code, Some(1));
    let last = lines.last().unwrap();
    assert!(last.starts_with("twilld: "), "{last}");
    assert!(serde_json::from_str::<serde_json::Value>(last).is_err());
}

#[test]
fn status_sorts_subnets_numerically() {
    if !twill_harness::require_cluster() {
        return;
    }
    let c = twill_harness::Cluster::builder().hosts(0).build().unwrap();
    // As key text these sort 1, 10, 2, 9; by address 1, 2, 9, 10.
    let value = r#"{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:01:c0:00:02:09"}}"#;
    for third in [10, 2, 9, 1] {
        c.etcd()
            .put(
                &format!("/twill/network/subnets/10.244.{third}.0-24"),
                value,
            )
            .unwrap();
    }
    let out = c
        .underlay()
        .exec_ok(&[TWILLD, "status", "--etcd-endpoints", &c.etcd_endpoints()])
        .unwrap();
    let subnets: Vec<&str> = out
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        subnets,
        [
            "10.244.1.0/24",
            "10.244.2.0/24",
            "10.244.9.0/24",
            "10.244.10.0/24"
        ],
        "{out}"
    );
}
