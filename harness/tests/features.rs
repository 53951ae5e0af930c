//! Issue 5, part B: the agent's features end to end: ip-masq (pods reach the
//! outside as the node, pod-to-pod and inbound traffic keep their source,
//! restart keeps the rules, cleanup removes them), flannel compatibility
//! (flannel's etcd prefix and lease format, a hand-built flannel node in the
//! same VXLAN), health and metrics over HTTP, and the `status` subcommand.
//!
//! Need root, `ip`, `bridge`, `nft`, `bash`, `timeout`, `etcd`, `etcdctl`,
//! `ping` and the workspace binaries (`cargo build --workspace`); under
//! `CI=true` a missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use ipnet::Ipv4Net;
use twill_harness::cluster::VXLAN_DEV;
use twill_harness::datapath::{self, Peer};
use twill_harness::probe::{self, http_get, metric_values, EchoCounters, FreshFlowPinger};
use twill_harness::wait::wait_for;
use twill_harness::{bins, Cluster, Netns, Prereqs, CLUSTER_TOOLS};

/// Resync interval of every agent here.
const RESYNC_SECS: u64 = 2;
/// Deadline for anything the agent must do within a resync or two.
const SETTLE: Duration = Duration::from_secs(15);

/// Tools used here beyond what every netns test needs.
const EXTRA_TOOLS: &[&str] = &["nft", "bridge", "bash", "timeout"];

/// The cluster's tools plus [`EXTRA_TOOLS`], as root; `false` means
/// skipped (loudly), and under `CI=true` a missing piece fails instead.
fn require_prereqs() -> bool {
    Prereqs::new()
        .root()
        .tools(CLUSTER_TOOLS)
        .tools(EXTRA_TOOLS)
        .require()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).unwrap()
}

fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Whether table `ip twill` exists in `ns`.
fn masq_table(ns: &Netns) -> bool {
    probe::nft_table(ns, "ip", "twill").is_ok_and(|t| t.is_some())
}

/// Waits until the log of `host` after byte `offset` says the lease map is
/// loaded (the restarted agent is past its start-up reconcile).
fn wait_loaded(c: &Cluster, host: &str, offset: usize) {
    wait_for(
        &format!("restarted agent on {host} to load the lease map"),
        Duration::from_secs(20),
        || {
            Ok(c.agent_log(host)?
                .get(offset..)
                .is_some_and(|l| l.contains("loaded lease map"))
                .then_some(()))
        },
        || c.agent_log_tail(host),
    )
    .unwrap();
}

#[test]
fn ip_masq_hides_pods_from_the_outside_only_and_survives_restarts() {
    if !require_prereqs() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(2)
        .resync_interval(RESYNC_SECS)
        .agent_args(["--ip-masq"])
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    let ip1 = c.add_pod("h1", "p1").unwrap();
    let ip2 = c.add_pod("h2", "p2").unwrap();
    for h in ["h1", "h2"] {
        assert!(
            c.subnet_file(h).unwrap().ipmasq,
            "{h}'s subnet file lacks TWILL_IPMASQ=true"
        );
    }

    // The "internet": one veth to h1, and no route back to the pod network.
    let inet = c
        .attach_outside("h1", "inet", "198.18.0.1/30", "198.18.0.2/30")
        .unwrap();
    let outside = Ipv4Addr::new(198, 18, 0, 2);
    let h1_outer = Ipv4Addr::new(198, 18, 0, 1);
    let pod_net = net("10.244.0.0/16");
    let inet_counts = EchoCounters::install(&inet, &[host32(h1_outer), pod_net]).unwrap();

    // Out: the reply can only come back when the source was rewritten.
    assert!(
        c.ping("p1", outside),
        "p1 cannot reach the outside\n{}",
        c.agent_log_tail("h1")
    );
    assert!(inet_counts.packets(host32(h1_outer)).unwrap() > 0);
    assert_eq!(
        inet_counts.packets(pod_net).unwrap(),
        0,
        "a pod address leaked to the outside"
    );

    // Pod to pod across hosts: the receiver sees the sender's own address.
    let p1_counts =
        EchoCounters::install(c.pod("p1").unwrap().ns(), &[host32(ip2), net("0.0.0.0/0")]).unwrap();
    assert!(c.ping("p2", ip1), "p2 -> p1");
    let from_p2 = p1_counts.packets(host32(ip2)).unwrap();
    assert!(from_p2 > 0, "p1 saw no echo request from {ip2}");
    assert_eq!(
        p1_counts.packets(net("0.0.0.0/0")).unwrap(),
        from_p2,
        "p1 got echo requests from an address other than p2's: masqueraded"
    );

    // Without the table (agent stopped, table deleted by hand) a new flow
    // dies: the checks below do depend on the rules.
    c.stop_agent("h1").unwrap();
    let h1 = c.host("h1").unwrap().ns();
    assert!(masq_table(h1), "SIGTERM removed the ip-masq table");
    h1.exec_ok(&["nft", "delete", "table", "ip", "twill"])
        .unwrap();
    assert!(
        !c.pod("p1").unwrap().ns().ping_once(&outside.to_string(), 1),
        "p1 reached the outside without masquerading"
    );
    let offset = c.agent_log("h1").unwrap().len();
    c.start_agent("h1").unwrap();
    wait_loaded(&c, "h1", offset);
    let h1 = c.host("h1").unwrap().ns();
    assert!(
        masq_table(h1),
        "a starting agent did not install the table\n{}",
        c.agent_log_tail("h1")
    );
    assert!(c.ping("p1", outside), "p1 -> outside after the reinstall");

    // Restart: rules stay in place throughout, no new flow is lost.
    let pinger = FreshFlowPinger::start(c.pod("p1").unwrap().ns(), outside, 20).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let status = c.stop_agent("h1").unwrap();
    assert!(status.success(), "twilld on h1 exited with {status}");
    assert!(masq_table(c.host("h1").unwrap().ns()), "table gone at stop");
    let offset = c.agent_log("h1").unwrap().len();
    c.start_agent("h1").unwrap();
    assert!(
        masq_table(c.host("h1").unwrap().ns()),
        "table gone at restart"
    );
    wait_loaded(&c, "h1", offset);
    // A resync or two of the new agent inside the window as well.
    std::thread::sleep(Duration::from_secs(RESYNC_SECS * 2));
    assert!(
        masq_table(c.host("h1").unwrap().ns()),
        "table gone after restart"
    );
    let new_run = c.agent_log("h1").unwrap()[offset..].to_owned();
    assert!(
        !new_run.contains("installed ip-masq rules"),
        "the restarted agent replaced rules that were right:\n{new_run}"
    );
    let summary = pinger.finish().unwrap();
    assert!(
        summary.transmitted >= 10,
        "ping loop barely ran: {summary:?}"
    );
    assert_eq!(
        summary.lost(),
        0,
        "new flows lost across the restart: {summary:?}\n{}",
        c.agent_log_tail("h1")
    );

    // In: the outside reaches a pod by its address and is not rewritten.
    inet.ip(["route", "add", "10.244.0.0/16", "via", "198.18.0.1"])
        .unwrap();
    // Replaces p1's counters of the pod-to-pod check.
    let p1_in = EchoCounters::install(c.pod("p1").unwrap().ns(), &[host32(outside)]).unwrap();
    let reached = wait_for(
        "the outside to reach p1",
        Duration::from_secs(5),
        || Ok(inet.ping_once(&ip1.to_string(), 1).then_some(())),
        String::new,
    );
    assert!(reached.is_ok(), "outside -> p1 ({ip1})");
    assert!(
        p1_in.packets(host32(outside)).unwrap() > 0,
        "p1 did not see the outside's own address 198.18.0.2"
    );

    // cleanup removes the table (after the agent stopped).
    c.stop_agent("h1").unwrap();
    let h1_file = c.host("h1").unwrap().subnet_file_path();
    let twilld = bins::twilld().unwrap();
    let h1 = c.host("h1").unwrap().ns();
    assert!(masq_table(h1), "table missing before cleanup");
    let out = h1
        .exec(&[
            twilld.to_str().unwrap(),
            "cleanup",
            "--subnet-file",
            h1_file.to_str().unwrap(),
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "twilld cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!masq_table(h1), "cleanup left the ip-masq table");
    assert!(!h1_file.exists(), "cleanup left the subnet file");
    assert!(
        masq_table(c.host("h2").unwrap().ns()),
        "h2's table went too"
    );
}

/// flannel's etcd prefix and a typical flannel network config.
const FLANNEL_PREFIX: &str = "/coreos.com/network";
const FLANNEL_CONFIG: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
/// The simulated flannel node's VTEP MAC (locally administered, fixed).
const FLANNEL_MAC: &str = "0e:00:00:c8:00:01";

/// Waits until what twill owns on `host`'s VXLAN device is exactly the
/// entries for `peers`.
fn expect_peers(c: &Cluster, host: &str, peers: &[&Peer]) {
    datapath::wait_owned(c, host, peers, SETTLE, "converged").unwrap();
}

/// The MAC address of `dev` in `ns`, lowercase.
fn link_mac(ns: &Netns, dev: &str) -> String {
    let out = ns.ip(["-j", "link", "show", dev]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["address"].as_str().unwrap().to_ascii_lowercase()
}

/// The entries flanneld programs on its node for a remote lease.
fn flannel_add_peer(ns: &Netns, p: &Peer) {
    let vtep = p.subnet.network().to_string();
    ns.ip([
        "neigh",
        "replace",
        &vtep,
        "lladdr",
        &p.mac,
        "dev",
        "flannel.1",
        "nud",
        "permanent",
    ])
    .unwrap();
    ns.exec_ok(&[
        "bridge",
        "fdb",
        "replace",
        &p.mac,
        "dev",
        "flannel.1",
        "dst",
        &p.public_ip.to_string(),
        "self",
        "permanent",
    ])
    .unwrap();
    ns.ip([
        "route",
        "replace",
        &p.subnet.to_string(),
        "via",
        &vtep,
        "dev",
        "flannel.1",
        "onlink",
    ])
    .unwrap();
}

#[test]
fn twill_nodes_speak_flannel_leases_and_reach_a_flannel_node() {
    if !require_prereqs() {
        return;
    }
    // h3 stays without twilld: it is set up by hand as flanneld would.
    let mut c = Cluster::builder()
        .hosts(3)
        .resync_interval(RESYNC_SECS)
        .etcd_prefix(FLANNEL_PREFIX)
        .network_config(FLANNEL_CONFIG)
        .build()
        .unwrap();
    let f_ip = c.host("h3").unwrap().ip();
    let f_subnet = net("10.244.200.0/24");
    let f_vtep = f_subnet.network();
    let fl = c.host("h3").unwrap().ns();
    fl.ip([
        "link",
        "add",
        "flannel.1",
        "address",
        FLANNEL_MAC,
        "mtu",
        "1450",
        "type",
        "vxlan",
        "id",
        "1",
        "local",
        &f_ip.to_string(),
        "dev",
        "eth0",
        "dstport",
        "8472",
        "nolearning",
    ])
    .unwrap();
    fl.ip(["addr", "add", &format!("{f_vtep}/32"), "dev", "flannel.1"])
        .unwrap();
    fl.ip(["link", "set", "flannel.1", "up"]).unwrap();
    fl.ip(["link", "add", "cni0", "type", "bridge"]).unwrap();
    fl.ip([
        "addr",
        "add",
        &format!("{}/24", gateway(f_subnet)),
        "dev",
        "cni0",
    ])
    .unwrap();
    fl.ip(["link", "set", "cni0", "up"]).unwrap();
    // flanneld's lease: its documented value, on an etcd lease (TTL 24h).
    let grant = c.etcd().ctl(&["lease", "grant", "86400"]).unwrap();
    let lease_id = grant.split_whitespace().nth(1).unwrap().to_owned();
    let f_value = format!(
        r#"{{"PublicIP":"{f_ip}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{FLANNEL_MAC}"}}}}"#
    );
    c.etcd()
        .ctl(&[
            "put",
            &format!("--lease={lease_id}"),
            &c.lease_key_in(f_subnet),
            &f_value,
        ])
        .unwrap();

    c.start_agent("h1").unwrap();
    c.start_agent("h2").unwrap();
    c.wait_leases(3).unwrap();
    for h in ["h1", "h2"] {
        c.wait_subnet_file(h).unwrap();
    }
    let p1 = datapath::peer(&c, "h1").unwrap();
    let p2 = datapath::peer(&c, "h2").unwrap();
    let pf = Peer {
        subnet: f_subnet,
        public_ip: f_ip,
        mac: FLANNEL_MAC.to_owned(),
    };
    expect_peers(&c, "h1", &[&p2, &pf]);
    expect_peers(&c, "h2", &[&p1, &pf]);

    // twill's own leases are flannel's JSON, key for key (plus NodeName).
    for (h, p) in [("h1", &p1), ("h2", &p2)] {
        let key = c.lease_key_in(p.subnet);
        let raw = c
            .store_get_prefix(&key)
            .unwrap()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no lease at {key}"));
        let mut got: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        // twill adds one field of its own after flannel's, the node's name
        // (two nodes claiming one public IP are told apart by it); flannel's
        // JSON decoder ignores fields it does not know.
        let node = got.as_object_mut().and_then(|o| o.remove("NodeName"));
        assert!(
            node.as_ref().is_some_and(|n| n.is_string()),
            "lease of {h} names no node: {raw:?}"
        );
        let mac = link_mac(c.host(h).unwrap().ns(), VXLAN_DEV);
        let want = serde_json::json!({
            "PublicIP": c.host(h).unwrap().ip().to_string(),
            "PublicIPv6": null,
            "BackendType": "vxlan",
            "BackendData": {"VNI": 1, "VtepMAC": mac},
        });
        assert_eq!(got, want, "lease of {h} at {key} is not flannel's form");
    }

    let fl = c.host("h3").unwrap().ns();
    flannel_add_peer(fl, &p1);
    flannel_add_peer(fl, &p2);
    let ip1 = c.add_pod("h1", "p1").unwrap();
    let ip2 = c.add_pod("h2", "p2").unwrap();
    for from in ["p1", "p2"] {
        assert!(
            c.ping(from, gateway(f_subnet)),
            "{from} -> flannel node's cni0 {}",
            gateway(f_subnet)
        );
    }
    for (to, ip) in [("p1", ip1), ("p2", ip2)] {
        assert!(c.ping("h3", ip), "flannel node -> {to} ({ip})");
    }
}

/// A process started by a test; SIGKILLed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const HEALTH_PORT: u16 = 10256;

fn get(
    c: &Cluster,
    host: &str,
    path: &str,
) -> twill_harness::Result<twill_harness::probe::HttpResponse> {
    http_get(c.ns_of(host)?, Ipv4Addr::LOCALHOST, HEALTH_PORT, path)
}

/// The single value of an unlabelled metric.
fn metric(text: &str, name: &str) -> f64 {
    match metric_values(text, name).as_slice() {
        [v] => *v,
        other => panic!("{name}: expected one sample, got {other:?} in\n{text}"),
    }
}

#[test]
fn health_readiness_and_metrics_are_served() {
    if !require_prereqs() {
        return;
    }
    let addr = format!("127.0.0.1:{HEALTH_PORT}");
    let mut c = Cluster::builder()
        .hosts(2)
        .resync_interval(RESYNC_SECS)
        .agent_args(["--healthz-addr", &addr])
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    for h in ["h1", "h2"] {
        let r = wait_for(
            &format!("/readyz of {h} to answer 200"),
            SETTLE,
            || {
                let r = get(&c, h, "/readyz")?;
                Ok((r.status == 200).then_some(r))
            },
            || c.agent_log_tail(h),
        )
        .unwrap();
        assert_eq!(r.body.trim(), "ok");
        assert_eq!(get(&c, h, "/healthz").unwrap().status, 200);
        assert_eq!(get(&c, h, "/no-such-page").unwrap().status, 404);
        let m = get(&c, h, "/metrics").unwrap();
        assert_eq!(m.status, 200);
        let text = &m.body;
        assert_eq!(metric(text, "twill_leases"), 2.0, "{h}: leases");
        assert!(metric(text, "twill_reconcile_runs_total") >= 1.0, "{text}");
        // Every host had at least a route, a neighbour and an FDB entry to add.
        let ops: f64 = metric_values(text, "twill_netlink_operations_total")
            .iter()
            .sum();
        assert!(ops >= 3.0, "{h}: netlink operations {ops}\n{text}");
        // A Unix time, not 0: the agent did converge (2020-09 or later).
        assert!(
            metric(text, "twill_last_convergence_timestamp_seconds") > 1.6e9,
            "{text}"
        );
    }

    // Readiness is not a constant: an agent that cannot reach etcd is live
    // but not ready.
    let h3 = c.add_host().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("twilld.log")).unwrap();
    let twilld = bins::twilld().unwrap();
    let ns = c.host(&h3).unwrap().ns();
    let child = ns
        .command(
            twilld.to_str().unwrap(),
            [
                "--etcd-endpoints",
                "http://192.0.2.254:2999",
                "--iface",
                "eth0",
                "--subnet-file",
                dir.path().join("subnet.env").to_str().unwrap(),
                "--healthz-addr",
                &addr,
            ],
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    ns.register_pid(child.id() as i32);
    let _agent = Proc(child);
    wait_for(
        &format!("/healthz of the etcd-less agent on {h3}"),
        SETTLE,
        || Ok((get(&c, &h3, "/healthz")?.status == 200).then_some(())),
        || cmd_tail(&dir.path().join("twilld.log")),
    )
    .unwrap();
    let r = get(&c, &h3, "/readyz").unwrap();
    assert_eq!(r.status, 503, "ready without etcd: {r:?}");
    assert!(!r.body.trim().is_empty(), "503 without a reason");
}

fn cmd_tail(p: &std::path::Path) -> String {
    twill_harness::cmd::tail(p, 20)
}

/// Runs `twilld <global..> status <sub..>` in `host` (see
/// [`probe::twilld_status`]).
fn status(c: &Cluster, host: &str, global: &[&str], sub: &[&str]) -> std::process::Output {
    probe::twilld_status(c.host(host).unwrap().ns(), global, sub).unwrap()
}

#[test]
fn status_prints_every_lease_and_fails_cleanly_without_etcd() {
    if !require_prereqs() {
        return;
    }
    const TTL: u64 = 300;
    let mut c = Cluster::builder()
        .hosts(3)
        .resync_interval(RESYNC_SECS)
        .lease_ttl(TTL)
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    let leases = c.wait_leases(3).unwrap();
    let ep = c.etcd_endpoints();
    let base = [
        "--etcd-endpoints",
        ep.as_str(),
        "--etcd-prefix",
        c.etcd_prefix(),
    ];

    let out = status(&c, "h1", &base, &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(
        header.contains("SUBNET") && header.contains("TTL"),
        "{text}"
    );
    let mut rows = BTreeMap::new();
    for l in lines.filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 5, "row {l:?} of\n{text}");
        let ttl: u64 = f[4].strip_suffix('s').unwrap().parse().unwrap();
        rows.insert(
            net(f[0]),
            (
                f[1].parse::<Ipv4Addr>().unwrap(),
                f[3].to_ascii_lowercase(),
                ttl,
            ),
        );
    }
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        leases.keys().collect::<Vec<_>>(),
        "{text}"
    );
    for (s, l) in &leases {
        let (ip, mac, ttl) = &rows[s];
        assert_eq!(*ip, l.public_ip, "{s}: {text}");
        assert_eq!(Some(mac.clone()), l.vtep_mac(), "{s}: {text}");
        assert!(*ttl > 0 && *ttl <= TTL, "{s}: TTL {ttl}\n{text}");
    }

    let out = status(&c, "h1", &base, &["--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let subnets: BTreeSet<Ipv4Net> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| net(e["subnet"].as_str().unwrap()))
        .collect();
    assert_eq!(subnets, leases.keys().copied().collect(), "{v}");
    for e in v.as_array().unwrap() {
        let l = &leases[&net(e["subnet"].as_str().unwrap())];
        assert_eq!(e["publicIP"], l.public_ip.to_string(), "{e}");
        assert_eq!(
            e["vtepMAC"].as_str().map(str::to_ascii_lowercase),
            l.vtep_mac()
        );
    }

    // Nothing listens on port 2999 (refused); port 2998 is dropped silently
    // on h2, so the connect gets no answer at all.
    c.host("h2")
        .unwrap()
        .ns()
        .exec_ok(&[
            "nft",
            "add table ip twdrop; add chain ip twdrop out { type filter hook output priority 0; }; \
             add rule ip twdrop out ip daddr 192.0.2.254 tcp dport 2998 drop",
        ])
        .unwrap();
    for port in [2999, 2998] {
        let bad = format!("http://192.0.2.254:{port}");
        let out = status(&c, "h2", &["--etcd-endpoints", &bad], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(124), "status hung on {bad}");
        assert!(!out.status.success(), "status succeeded against {bad}");
        assert!(err.contains("etcd"), "error does not name etcd: {err}");
    }
}

/// The form the docs and the brief use: `twilld status --etcd-endpoints ..`,
/// flags after the subcommand (as `cleanup --subnet-file ..` allows).
#[test]
fn status_takes_its_etcd_flags_after_the_subcommand() {
    if !require_prereqs() {
        return;
    }
    let mut c = Cluster::builder().hosts(1).build().unwrap();
    c.start_agents().unwrap();
    let subnet = c.wait_subnet_file("h1").unwrap().node_subnet();
    let ep = c.etcd_endpoints();
    let out = status(
        &c,
        "h1",
        &[],
        &["--etcd-endpoints", &ep, "--etcd-prefix", c.etcd_prefix()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "`twilld status --etcd-endpoints ..` refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&subnet.to_string()), "{text}");
}
