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
//! A table `ip twill` that another process owns (nft's `flags owner`) makes
//! the install fail for real: the node is unready, the subnet file says
//! `TWILL_IPMASQ=false`, until the owner goes and a resync installs the
//! rules.
//!
//! Needs root, `ip`, `etcd`, `etcdctl`, `ping`, `sh`, `bash`, `timeout` and
//! `nft` (for the test's own checks, counters and the owned table) and the workspace binaries (`cargo build
//! -p twill -p cni-plugin`); under `CI=true` a missing prerequisite fails
//! the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use twill_harness::probe::{http_get, nft_table, EchoCounters};
use twill_harness::wait::wait_for;
use twill_harness::{bins, Cluster, ClusterBuilder, Netns, Prereqs, CLUSTER_TOOLS};

fn require_prereqs() -> bool {
    Prereqs::new()
        .root()
        .tools(CLUSTER_TOOLS)
        .tools(&["nft", "sh", "bash", "timeout"])
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

    /// A one-host cluster of `b` that runs this stand-in, resyncing every
    /// 2 s, with `--ip-masq` on until [`StandIn::set_ip_masq`] says not.
    fn cluster(&self, b: ClusterBuilder) -> Cluster {
        self.set_ip_masq(true);
        b.hosts(1)
            .resync_interval(2)
            .bin_dir(self.dir.path())
            .build()
            .unwrap()
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

/// Asserts that `nft list table <family> twill` in `ns` shows every line
/// of `wants`: what the agent wrote over netlink is what nft reads.
fn assert_table(ns: &Netns, family: &str, wants: &[&str]) {
    let table = twill_table(ns, family).unwrap_or_else(|| panic!("no table {family} twill"));
    for want in wants {
        assert!(table.contains(want), "missing {want:?} in\n{table}");
    }
}

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).unwrap()
}

/// `nft list table <family> twill` in `ns`, if the table exists.
fn twill_table(ns: &Netns, family: &str) -> Option<String> {
    nft_table(ns, family, "twill").unwrap()
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

    let mut c = stand_in.cluster(Cluster::builder());
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

    let h1 = c.host("h1").unwrap().ns();
    assert_table(
        h1,
        "ip",
        &[
            "type nat hook postrouting priority srcnat; policy accept;",
            "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
            "ip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 counter",
            "masquerade fully-random",
        ],
    );
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

/// A dual-stack network config: both families get a table.
const DUAL_STACK: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;

/// Restarts the agent on `host` and returns its log from the restart on,
/// once it wrote its subnet file (after it dealt with the masquerade).
fn restart(c: &mut Cluster, host: &str) -> String {
    let status = c.stop_agent(host).unwrap();
    assert!(status.success(), "twilld on {host} exited with {status}");
    let offset = c.agent_log(host).unwrap().len();
    c.start_agent(host).unwrap();
    wait_for(
        &format!("the restarted agent on {host} to write its subnet file"),
        Duration::from_secs(20),
        || {
            let log = c.agent_log(host)?;
            Ok(log
                .get(offset..)
                .filter(|l| l.contains("wrote subnet file"))
                .map(str::to_owned))
        },
        || c.agent_log_tail(host),
    )
    .unwrap()
}

#[test]
fn dual_stack_tables_read_back_as_in_place_and_go_without_the_flag() {
    if !require_prereqs() {
        return;
    }
    let stand_in = StandIn::new();
    let mut c = stand_in.cluster(Cluster::builder().network_config(DUAL_STACK));
    c.start_agents().unwrap();
    let file = c.wait_subnet_file("h1").unwrap();
    assert!(file.ipmasq, "{}", c.agent_log_tail("h1"));
    let h1 = c.host("h1").unwrap().ns();
    assert_table(
        h1,
        "ip6",
        &[
            "ip6 saddr fd00:10:244::/48 ip6 daddr fd00:10:244::/48 return",
            "ip6 saddr fd00:10:244::/48 ip6 daddr != ff00::/8 counter",
            "masquerade fully-random",
        ],
    );
    assert!(twill_table(h1, "ip").is_some(), "no table ip twill");

    // Both tables read back as right: a restart installs nothing.
    let run = restart(&mut c, "h1");
    assert!(!run.contains("installed ip-masq rules"), "{run}");

    // Positive control: with one family's table gone, the restart sees it.
    c.host("h1")
        .unwrap()
        .ns()
        .exec_ok(&["nft", "delete", "table", "ip6", "twill"])
        .unwrap();
    let run = restart(&mut c, "h1");
    assert!(run.contains("installed ip-masq rules"), "{run}");
    assert!(twill_table(c.host("h1").unwrap().ns(), "ip6").is_some());

    // Without the flag both tables go.
    stand_in.set_ip_masq(false);
    let run = restart(&mut c, "h1");
    assert!(run.contains("removed the ip-masq tables"), "{run}");
    let h1 = c.host("h1").unwrap().ns();
    assert!(twill_table(h1, "ip").is_none(), "table ip twill stayed");
    assert!(twill_table(h1, "ip6").is_none(), "table ip6 twill stayed");
    assert!(!c.subnet_file("h1").unwrap().ipmasq);
}

/// An `nft -i` session in a namespace holding a table with `flags owner`:
/// only its socket may change the table, which goes when the session ends.
struct OwnedTable(std::process::Child);

impl OwnedTable {
    fn hold(ns: &Netns, family: &str) -> OwnedTable {
        use std::io::Write;
        let mut child = ns
            .command("nft", ["-i"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        ns.register_pid(child.id() as i32);
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "add table {family} twill {{ flags owner; }}").unwrap();
        stdin.flush().unwrap();
        let owned = OwnedTable(child);
        wait_for(
            "the owned table to exist",
            Duration::from_secs(10),
            || {
                Ok(twill_table(ns, family)
                    .filter(|t| t.contains("owner"))
                    .map(|_| ()))
            },
            String::new,
        )
        .unwrap();
        owned
    }

    /// Ends the session (EOF on its input), which removes the table.
    fn release(mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

impl Drop for OwnedTable {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const HEALTH_PORT: u16 = 9481;

#[test]
fn masquerade_that_cannot_be_installed_makes_the_node_unready_until_it_can() {
    if !require_prereqs() {
        return;
    }
    let stand_in = StandIn::new();
    let addr = format!("127.0.0.1:{HEALTH_PORT}");
    let mut c = stand_in.cluster(Cluster::builder().agent_args(["--healthz-addr", &addr]));
    let owner = OwnedTable::hold(c.host("h1").unwrap().ns(), "ip");
    c.start_agents().unwrap();
    let readyz = |c: &Cluster| {
        http_get(
            c.host("h1")?.ns(),
            Ipv4Addr::LOCALHOST,
            HEALTH_PORT,
            "/readyz",
        )
    };

    let file = c.wait_subnet_file("h1").unwrap();
    assert!(!file.ipmasq, "the subnet file claims ip-masq without rules");
    let r = wait_for(
        "/readyz to answer at all",
        Duration::from_secs(20),
        || Ok(readyz(&c).ok()),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("ip-masq"), "{}", r.body);
    let log = c.agent_log("h1").unwrap();
    assert!(log.contains("cannot install ip-masq rules"), "{log}");
    assert!(log.contains("Operation not permitted"), "{log}");

    // Positive control: once the owner is gone a resync installs the rules,
    // the file claims them and the node is ready.
    owner.release();
    wait_for(
        "the subnet file to say TWILL_IPMASQ=true",
        Duration::from_secs(20),
        || Ok(c.subnet_file("h1").is_ok_and(|f| f.ipmasq).then_some(())),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    let table = twill_table(c.host("h1").unwrap().ns(), "ip").expect("no table");
    assert!(table.contains("masquerade"), "{table}");
    wait_for(
        "/readyz to answer 200",
        Duration::from_secs(20),
        || Ok((readyz(&c)?.status == 200).then_some(())),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
}
