//! The agent's logs as an operator reads them: with `--log-format json`
//! every line is one JSON object, and every line about another node (its
//! lease, each netlink change for it) names that node's subnet and public
//! IP. Needs root, `ip`, `etcd`, `etcdctl` and the workspace binaries;
//! under `CI=true` a missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use twill_harness::{require_cluster, Cluster};

#[test]
fn json_logs_name_the_node_of_every_change() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(2)
        .agent_args(["--log-format", "json"])
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    let leases = c.leases().unwrap();
    let h2 = c.host("h2").unwrap().ip();
    let (h2_subnet, _) = leases
        .iter()
        .find(|(_, l)| l.public_ip == h2)
        .unwrap_or_else(|| panic!("no lease for h2 ({h2}): {leases:?}"));

    // Delete h2's route on h1 by hand so that a change is logged for sure.
    let h1 = c.host("h1").unwrap().ns();
    h1.ip(["route", "del", &h2_subnet.to_string()]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = c.agent_log("h1").unwrap();
        let restored = h1
            .ip(["route", "show", &h2_subnet.to_string()])
            .map(|r| r.contains("proto 77"))
            .unwrap_or(false);
        if restored && text.matches("\"applied\"").count() >= 4 {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "route not restored:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };

    let mut applied = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let fields = &v["fields"];
        let message = fields["message"].as_str().unwrap_or_default();
        if message == "applied" || message == "lease added or changed" {
            // Each line names a real node: a subnet and the public IP that
            // holds it in etcd (h1 itself only ever appears in lease lines).
            let subnet: ipnet::Ipv4Net = fields["subnet"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no subnet in: {line}"));
            let lease = leases
                .get(&subnet)
                .unwrap_or_else(|| panic!("{subnet} is no lease: {line}"));
            assert_eq!(fields["public_ip"], lease.public_ip.to_string(), "{line}");
            if message == "applied" {
                applied += 1;
                assert_eq!(
                    subnet, *h2_subnet,
                    "h1 changed entries for {subnet}: {line}"
                );
            }
        }
    }
    // Route, neighbour and FDB entry at start, and the route again.
    assert!(applied >= 4, "only {applied} applied lines:\n{text}");
}
