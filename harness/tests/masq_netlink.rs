//! ip-masq through nf_tables netlink, with no `nft` binary on the agent's
//! `PATH` (the node image has none): pods reach an outside namespace with
//! the node's address, and a restart without `--ip-masq` removes the tables,
//! after which the same ping arrives with the pod's own address.
//!
//! The agent runs through a stand-in `twilld` (a shell script in the
//! cluster's `bin_dir`) that empties `PATH`, refuses to start if `nft` can
//! still be found, and adds `--ip-masq` while a flag file exists, so that
//! one cluster can restart its agent with and without the flag.
//!
//! Needs root, `ip`, `etcd`, `etcdctl`, `ping`, `sh` and `nft` (for the
//! test's own checks and counters) and the workspace binaries (`cargo build
//! -p twill -p cni-plugin`); under `CI=true` a missing prerequisite fails
//! the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use twill_harness::probe::EchoCounters;
use twill_harness::wait::wait_for;
use twill_harness::{bins, Cluster, Netns, Prereqs, CLUSTER_TOOLS};

fn require_prereqs() -> bool {
    Prereqs::new()
        .root()
        .tools(CLUSTER_TOOLS)
        .tools(&["nft", "sh"])
        .built(&["twilld", "twill"])
        .require()
}

/// A bin dir whose `twilld` runs the real one with an empty `PATH`, and
/// with `--ip-masq` while `<dir>/ip-masq` exists; `twill` is the real plugin.
struct StandIn {
    dir: tempfile::TempDir,
    empty_path: PathBuf,
}

impl StandIn {
    fn new() -> StandIn {
        let dir = tempfile::tempdir().unwrap();
        let empty_path = dir.path().join("empty-path");
        std::fs::create_dir(&empty_path).unwrap();
        let flag = dir.path().join("ip-masq");
        let script = format!(
            "#!/bin/sh\n\
             PATH={empty}\n\
             export PATH\n\
             if command -v nft >/dev/null 2>&1; then echo 'stand-in: nft is still on PATH' >&2; exit 97; fi\n\
             if [ -e {flag} ]; then set -- \"$@\" --ip-masq; fi\n\
             exec {real} \"$@\"\n",
            empty = empty_path.display(),
            flag = flag.display(),
            real = bins::twilld().unwrap().display(),
        );
        let twilld = dir.path().join("twilld");
        std::fs::write(&twilld, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&twilld, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink(bins::cni_plugin().unwrap(), dir.path().join("twill")).unwrap();
        StandIn { dir, empty_path }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn set_ip_masq(&self, on: bool) {
        let flag = self.dir.path().join("ip-masq");
        if on {
            std::fs::write(flag, "").unwrap();
        } else {
            std::fs::remove_file(flag).unwrap();
        }
    }
}

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).unwrap()
}

/// `nft list table <family> twill` in `ns`, if the table exists.
fn twill_table(ns: &Netns, family: &str) -> Option<String> {
    let out = ns.exec(&["nft", "list", "table", family, "twill"]).unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn ip_masq_without_nft_on_path_and_a_restart_without_the_flag_removes_it() {
    if !require_prereqs() {
        return;
    }
    let stand_in = StandIn::new();
    // The hiding works: `nft` is found with the test's PATH, not with the
    // agent's.
    let found = |path: &Path| {
        std::process::Command::new("/bin/sh")
            .args(["-c", "command -v nft"])
            .env("PATH", path)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(found(Path::new(&std::env::var_os("PATH").unwrap())));
    assert!(!found(&stand_in.empty_path));

    stand_in.set_ip_masq(true);
    let mut c = Cluster::builder()
        .hosts(1)
        .resync_interval(2)
        .bin_dir(stand_in.path())
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    let ip1 = c.add_pod("h1", "p1").unwrap();
    assert!(
        c.subnet_file("h1").unwrap().ipmasq,
        "subnet file lacks TWILL_IPMASQ=true\n{}",
        c.agent_log_tail("h1")
    );
    let log = c.agent_log("h1").unwrap();
    assert!(log.contains("installed ip-masq rules"), "{log}");
    assert!(!log.contains("nft is still on PATH"), "{log}");

    // What the agent wrote over netlink is what nft reads as our rules.
    let h1 = c.host("h1").unwrap().ns();
    let table = twill_table(h1, "ip").expect("no table ip twill on h1");
    for want in [
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
        "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 counter",
        "masquerade fully-random",
    ] {
        assert!(table.contains(want), "missing {want:?} in\n{table}");
    }
    assert!(
        twill_table(h1, "ip6").is_none(),
        "an ip6 table in an IPv4 cluster"
    );

    // The "internet": one veth to h1, no route back to the pod network.
    let inet = c
        .attach_outside("h1", "inet", "198.18.0.1/30", "198.18.0.2/30")
        .unwrap();
    let outside = Ipv4Addr::new(198, 18, 0, 2);
    let node = host32(Ipv4Addr::new(198, 18, 0, 1));
    let pod = host32(ip1);
    let counts = EchoCounters::install(&inet, &[node, pod]).unwrap();
    assert!(
        c.ping("p1", outside),
        "p1 cannot reach the outside\n{}",
        c.agent_log_tail("h1")
    );
    assert!(counts.packets(node).unwrap() > 0, "nothing from the node");
    assert_eq!(counts.packets(pod).unwrap(), 0, "the pod address leaked");

    // Restart without --ip-masq: the tables go, the file stops claiming it.
    c.stop_agent("h1").unwrap();
    assert!(
        twill_table(c.host("h1").unwrap().ns(), "ip").is_some(),
        "SIGTERM removed the table"
    );
    stand_in.set_ip_masq(false);
    let offset = c.agent_log("h1").unwrap().len();
    c.start_agent("h1").unwrap();
    // The agent removes the tables before it writes the subnet file.
    wait_for(
        "the restarted agent to write TWILL_IPMASQ=false",
        Duration::from_secs(20),
        || Ok(c.subnet_file("h1").is_ok_and(|f| !f.ipmasq).then_some(())),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    assert!(
        twill_table(c.host("h1").unwrap().ns(), "ip").is_none(),
        "a start without --ip-masq kept the table\n{}",
        c.agent_log_tail("h1")
    );
    let new_run = c.agent_log("h1").unwrap()[offset..].to_owned();
    assert!(new_run.contains("removed the ip-masq tables"), "{new_run}");

    // Positive control: the same ping now arrives with the pod's address
    // (and gets no answer, as the outside has no route back).
    let counts = EchoCounters::install(&inet, &[node, pod]).unwrap();
    let _ = c.pod("p1").unwrap().ns().ping_once(&outside.to_string(), 1);
    assert!(
        counts.packets(pod).unwrap() > 0,
        "the unmasqueraded ping did not arrive from {ip1}"
    );
    assert_eq!(counts.packets(node).unwrap(), 0, "still masqueraded");
}
