//! Issue 17, the refusals that need a node: the real `twilld` in a host
//! namespace with a real etcd stops with exit code 2 and names the cause
//! (a leftover VXLAN device holding our VNI and port, a loopback underlay,
//! a network config field of the wrong type) before it leases a subnet or
//! creates a device. And what the agent keeps true on its node: IP
//! forwarding turned on in its namespace (left alone with
//! `--no-set-forwarding`), the pod bridge's MTU put back.
//!
//! Needs root, `ip`, `etcd`, `etcdctl` and the workspace binaries; under
//! `CI=true` a missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use twill_harness::cluster::{BRIDGE_DEV, IFNAME};
use twill_harness::wait::wait_for;
use twill_harness::{require_cluster, Cluster};

/// Deadline for a refusal: it comes after one etcd read, so seconds; a
/// twilld that retried instead would run on and be killed here.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(30);

/// `twilld` on `host` with the cluster's etcd and `extra` flags, stdout and
/// stderr into `log`.
fn twilld(c: &Cluster, host: &str, log: &std::path::Path, extra: &[&str]) -> Command {
    let h = c.host(host).unwrap();
    let bin = twill_harness::bins::twilld().unwrap();
    let mut args: Vec<String> = vec![
        "--etcd-endpoints".into(),
        c.etcd_endpoints(),
        "--etcd-prefix".into(),
        c.etcd_prefix().into(),
        "--subnet-file".into(),
        h.subnet_file_path().to_string_lossy().into_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut cmd = h.ns().command(&bin.to_string_lossy(), args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TWILL_") {
            cmd.env_remove(k);
        }
    }
    let out = std::fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    cmd
}

/// Runs `cmd` until it exits; kills it and fails at the deadline.
fn run_to_exit(mut cmd: Command, log: &std::path::Path) -> (ExitStatus, String) {
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > REFUSAL_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "twilld still running after {REFUSAL_DEADLINE:?}, not refused:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, std::fs::read_to_string(log).unwrap())
}

/// The lease keys in etcd.
fn leases(c: &Cluster) -> Vec<String> {
    c.etcd()
        .get_prefix(&format!("{}/subnets/", c.etcd_prefix()))
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

/// Checks that `host` was refused: exit 2, every one of `names` in the
/// output, no lease, no twill device, no subnet file.
fn assert_refused_untouched(
    c: &Cluster,
    host: &str,
    (status, out): (ExitStatus, String),
    names: &[&str],
) {
    assert_eq!(status.code(), Some(2), "exit status {status:?}:\n{out}");
    for n in names {
        assert!(out.contains(n), "{n:?} not named:\n{out}");
    }
    assert!(leases(c).is_empty(), "a lease was taken: {:?}", leases(c));
    let links = c.host(host).unwrap().ns().link_names().unwrap();
    assert!(
        !links
            .iter()
            .any(|l| l == BRIDGE_DEV || l.starts_with("twill.")),
        "a device was created: {links:?}"
    );
    assert!(
        !c.host(host).unwrap().subnet_file_path().exists(),
        "a subnet file was written"
    );
}

#[test]
fn a_leftover_vxlan_device_on_our_vni_and_port_is_refused_before_the_lease() {
    if !require_cluster() {
        return;
    }
    let c = Cluster::builder().hosts(1).build().unwrap();
    let h1 = c.host("h1").unwrap();
    let ip = h1.ip().to_string();
    // What flannel leaves behind: the default config's VNI 1 on port 8472.
    h1.ns()
        .ip([
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "8472",
            "local",
            &ip,
            "dev",
            IFNAME,
            "nolearning",
        ])
        .unwrap();
    let log = c.dir().join("h1-refused.log");
    let run = run_to_exit(twilld(&c, "h1", &log, &["--iface", IFNAME]), &log);
    assert_refused_untouched(
        &c,
        "h1",
        run,
        &["flannel.1", "VNI 1", "8472", "ip link del flannel.1"],
    );
    // The operator's fix: with the device gone, the same command starts.
    h1.ns().ip(["link", "del", "flannel.1"]).unwrap();
    let mut agent = twilld(&c, "h1", &log, &["--iface", IFNAME])
        .spawn()
        .unwrap();
    let started = wait_for(
        "a lease after the leftover device was removed",
        Duration::from_secs(30),
        || Ok((!leases(&c).is_empty()).then_some(())),
        || std::fs::read_to_string(&log).unwrap_or_default(),
    );
    let _ = agent.kill();
    let _ = agent.wait();
    started.unwrap();
}

#[test]
fn a_loopback_underlay_is_refused() {
    if !require_cluster() {
        return;
    }
    let c = Cluster::builder().hosts(1).build().unwrap();
    c.host("h1")
        .unwrap()
        .ns()
        .ip(["link", "set", "lo", "up"])
        .unwrap();
    let log = c.dir().join("h1-lo.log");
    let run = run_to_exit(twilld(&c, "h1", &log, &["--iface", "lo"]), &log);
    assert_refused_untouched(&c, "h1", run, &["--iface lo", "loopback"]);
}

#[test]
fn a_config_field_of_the_wrong_type_is_refused_by_name() {
    if !require_cluster() {
        return;
    }
    let c = Cluster::builder()
        .hosts(1)
        .network_config(
            r#"{"Network":"10.244.0.0/16","SubnetLen":"24","Backend":{"Type":"vxlan"}}"#,
        )
        .build()
        .unwrap();
    let log = c.dir().join("h1-config.log");
    let run = run_to_exit(twilld(&c, "h1", &log, &["--iface", IFNAME]), &log);
    let out = run.1.clone();
    assert_refused_untouched(&c, "h1", run, &["SubnetLen"]);
    assert!(!out.contains("line 1 column"), "{out}");
}

/// A sysctl inside `host`'s namespace.
fn sysctl(c: &Cluster, host: &str, key: &str) -> String {
    c.host(host)
        .unwrap()
        .ns()
        .exec_ok(&["sysctl", "-n", key])
        .unwrap()
        .trim()
        .to_string()
}

const DUAL_STACK: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;

#[test]
fn forwarding_is_turned_on_in_the_node_namespace_unless_told_not_to() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(2)
        .network_config(DUAL_STACK)
        .build()
        .unwrap();
    // The harness turns forwarding on in its hosts; undo that, in the hosts'
    // namespaces only.
    for h in ["h1", "h2"] {
        let ns = c.host(h).unwrap().ns();
        ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
            .unwrap();
        ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0"])
            .unwrap();
    }
    c.start_agent("h1").unwrap();
    c.wait_subnet_file("h1").unwrap();
    assert_eq!(sysctl(&c, "h1", "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&c, "h1", "net.ipv6.conf.all.forwarding"), "1");
    let log = c.agent_log("h1").unwrap();
    assert!(
        log.contains("enabled IP forwarding") && log.contains("net.ipv4.ip_forward"),
        "not logged:\n{log}"
    );

    let log = c.dir().join("h2-no-forwarding.log");
    let mut agent = twilld(&c, "h2", &log, &["--iface", IFNAME, "--no-set-forwarding"])
        .spawn()
        .unwrap();
    let started = c.wait_subnet_file("h2");
    let v4 = sysctl(&c, "h2", "net.ipv4.ip_forward");
    let v6 = sysctl(&c, "h2", "net.ipv6.conf.all.forwarding");
    let _ = agent.kill();
    let _ = agent.wait();
    started.unwrap();
    assert_eq!(
        (v4.as_str(), v6.as_str()),
        ("0", "0"),
        "--no-set-forwarding"
    );
}

#[test]
fn a_lowered_bridge_mtu_is_put_back() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(1)
        .resync_interval(2)
        .build()
        .unwrap();
    c.start_agent("h1").unwrap();
    let file = c.wait_subnet_file("h1").unwrap();
    let ns = c.host("h1").unwrap().ns();
    let mtu = |ns: &twill_harness::Netns| -> Option<u32> {
        let out = ns.ip(["-j", "link", "show", BRIDGE_DEV]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&out).ok()?;
        v[0]["mtu"].as_u64().and_then(|m| u32::try_from(m).ok())
    };
    let want = file.mtu;
    wait_for(
        "the bridge at the pod MTU",
        Duration::from_secs(30),
        || Ok((mtu(ns) == Some(want)).then_some(())),
        || format!("bridge MTU {:?}", mtu(ns)),
    )
    .unwrap();
    ns.ip(["link", "set", BRIDGE_DEV, "mtu", "1280"]).unwrap();
    wait_for(
        "the bridge MTU put back",
        Duration::from_secs(30),
        || Ok((mtu(ns) == Some(want)).then_some(())),
        || format!("bridge MTU {:?}\n{}", mtu(ns), c.agent_log_tail("h1")),
    )
    .unwrap();
    let log = c.agent_log("h1").unwrap();
    assert!(log.contains("fixing bridge MTU"), "{log}");
}

/// Issue 17 item 7: the log says what happened. The `underlay` line shows
/// the underlay's MTU (the harness's veths: 1500), not the tunnel's; a
/// subnet taken back from the subnet file after the lease was lost is
/// `reused=true`.
#[test]
fn log_fields_show_the_underlay_mtu_and_a_subnet_reused_from_the_file() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder().hosts(1).build().unwrap();
    c.start_agent("h1").unwrap();
    let before = c.wait_subnet_file("h1").unwrap();
    let log = c.agent_log("h1").unwrap();
    let underlay = log
        .lines()
        .find(|l| l.contains(" underlay "))
        .unwrap_or_else(|| panic!("no underlay line:\n{log}"));
    assert!(
        underlay.contains("mtu=1500") && underlay.contains("tunnel_mtu=1450"),
        "{underlay}"
    );

    c.stop_agent("h1").unwrap();
    let prefix = format!("{}/subnets/", c.etcd_prefix());
    for (key, _) in c.etcd().get_prefix(&prefix).unwrap() {
        c.etcd().del(&key).unwrap();
    }
    c.start_agent("h1").unwrap();
    let log = wait_for(
        "a second lease acquired",
        Duration::from_secs(30),
        || {
            let log = c.agent_log("h1")?;
            Ok((log.matches("acquired subnet lease").count() >= 2).then_some(log))
        },
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    let line = log
        .lines()
        .filter(|l| l.contains("acquired subnet lease"))
        .nth(1)
        .unwrap();
    let subnet = before.subnet.trunc().to_string();
    assert!(line.contains(&format!("subnet={subnet}")), "{line}");
    assert!(
        line.contains("reused=true") && line.contains("from=\"subnet file\""),
        "{line}"
    );
}
