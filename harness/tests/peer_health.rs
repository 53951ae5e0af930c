//! Issue 13, the data path knows when it is broken: each agent probes every
//! peer through the overlay (small and full-size probes, `--probe-interval`
//! 1 s here) and says which peers are broken in `/peers`, the
//! `twill_peer_*` gauges, `twilld status --agent` and one WARN line per
//! transition. The underlay is broken the way real networks break: nft drop
//! rules in the underlay namespace's bridge, a shrunken MTU on one underlay
//! port, a node's namespace deleted. Each test checks that the failure is
//! detected, that the other peers stay healthy, and that it recovers after
//! the fix. In a dual-stack cluster each peer is two targets, its IPv4 and
//! its IPv6 pod path, and a break of the IPv6 one (VXLAN over IPv6
//! dropped, large IPv6 packets dropped) shows on that target alone. Timing
//! is not asserted (the machine is shared): waits poll with generous
//! deadlines.
//!
//! Need root, `ip`, `etcd`, `etcdctl`, `ping`, `nft`, `bash`, `timeout` and
//! the workspace binaries (`cargo build --workspace`); under `CI=true` a
//! missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_harness::probe::{http_get, metric_values};
use twill_harness::wait::wait_for;
use twill_harness::{bins, Cluster, Prereqs, CLUSTER_TOOLS};

const EXTRA_TOOLS: &[&str] = &["nft", "bash", "timeout"];
const HEALTH_PORT: u16 = 10271;
/// Detection takes 2 to 3 probe intervals (1 s); the deadline is for a
/// loaded machine, not a target.
const DEADLINE: Duration = Duration::from_secs(40);
/// The nftables table of the breaks, in the underlay namespace.
const BREAK_TABLE: &str = "hpbreak";

fn require_prereqs() -> bool {
    Prereqs::new()
        .root()
        .tools(CLUSTER_TOOLS)
        .tools(EXTRA_TOOLS)
        .require()
}

/// Three converged hosts probing each other every second, each serving
/// `/peers` and `/metrics` on its own loopback; every peer seen healthy.
fn three_hosts() -> Cluster {
    three_hosts_with(twill_harness::cluster::DEFAULT_NETWORK_CONFIG)
}

/// [`three_hosts`] with another network config.
fn three_hosts_with(network_config: &str) -> Cluster {
    start_probing(three_hosts_built(network_config))
}

/// Three hosts with `network_config`, built, their agents not started.
fn three_hosts_built(network_config: &str) -> Cluster {
    let addr = format!("127.0.0.1:{HEALTH_PORT}");
    Cluster::builder()
        .hosts(3)
        .network_config(network_config)
        .resync_interval(2)
        .agent_args(["--healthz-addr", &addr, "--probe-interval", "1"])
        .build()
        .unwrap()
}

/// Starts `c`'s agents and waits for every peer healthy.
fn start_probing(mut c: Cluster) -> Cluster {
    c.start_agents().unwrap();
    // Every peer answering through the data path is convergence enough
    // (and works for both backends).
    for from in ["h1", "h2", "h3"] {
        for to in ["h1", "h2", "h3"] {
            if from != to {
                wait_peer(&c, from, to, Health::Fine, "every peer healthy at start");
            }
        }
    }
    c
}

/// Three converged hosts of an IPv6-only cluster on an IPv6-only underlay,
/// probing each other every second over ICMPv6; every peer seen healthy.
fn three_ipv6_only_hosts() -> Cluster {
    let addr = format!("[::1]:{HEALTH_PORT}");
    let mut c = Cluster::builder()
        .ipv6_only(true)
        .hosts(3)
        .resync_interval(2)
        .agent_args(["--healthz-addr", &addr, "--probe-interval", "1"])
        .build()
        .unwrap();
    c.start_agents().unwrap();
    for from in ["h1", "h2", "h3"] {
        for to in ["h1", "h2", "h3"] {
            if from != to {
                wait_peer(&c, from, to, Health::Fine, "every peer healthy at start");
            }
        }
    }
    c
}

/// Where a host's agent serves: loopback, of the only family there is.
fn loopback(c: &Cluster) -> IpAddr {
    match c.is_ipv6_only() {
        true => Ipv6Addr::LOCALHOST.into(),
        false => Ipv4Addr::LOCALHOST.into(),
    }
}

/// How the agents name `host`: its subnet and public address (the IPv6
/// ones in an IPv6-only cluster).
fn labels(c: &Cluster, host: &str) -> twill_harness::Result<(String, String)> {
    let h = c.host(host)?;
    Ok(match (c.is_ipv6_only(), h.ipv6()) {
        (true, Some(ip6)) => (c.subnet6_of(host)?.to_string(), ip6.to_string()),
        _ => (c.subnet_of(host)?.to_string(), h.ip().to_string()),
    })
}

fn get(c: &Cluster, host: &str, path: &str) -> twill_harness::Result<String> {
    let r = http_get(c.ns_of(host)?, loopback(c), HEALTH_PORT, path)?;
    if r.status != 200 {
        return Err(twill_harness::HarnessError::Parse {
            what: format!("GET {path} on {host}"),
            reason: format!("status {}", r.status),
        });
    }
    Ok(r.body)
}

/// `to`'s entry in `from`'s `/peers`, if listed.
fn peer_entry(c: &Cluster, from: &str, to: &str) -> twill_harness::Result<Option<Value>> {
    let (subnet, _) = labels(c, to)?;
    entry(c, from, &subnet)
}

/// The entry for `subnet` in `from`'s `/peers`, if listed.
fn entry(c: &Cluster, from: &str, subnet: &str) -> twill_harness::Result<Option<Value>> {
    let body = get(c, from, "/peers")?;
    let v: Value = serde_json::from_str(&body).map_err(|e| twill_harness::HarnessError::Parse {
        what: "/peers".into(),
        reason: format!("{e}: {body}"),
    })?;
    Ok(v["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["subnet"] == subnet))
        .cloned())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Health {
    Fine,
    Lost,
    MtuBlackhole,
}

fn health_of(p: &Value) -> Option<Health> {
    match (p["reachable"].as_bool(), p["mtu_ok"].as_bool()) {
        (Some(true), Some(true)) => Some(Health::Fine),
        (Some(false), _) => Some(Health::Lost),
        (Some(true), Some(false)) => Some(Health::MtuBlackhole),
        _ => None,
    }
}

/// Waits until `from` sees `to` as `want`; returns `to`'s entry.
fn wait_peer(c: &Cluster, from: &str, to: &str, want: Health, why: &str) -> Value {
    // Its subnet is read again each time: a starting agent has no subnet
    // file yet.
    wait_subnet(c, from, to, || Ok(labels(c, to)?.0), want, why)
}

/// Waits until `from` sees the target `subnet` as `want`; returns its
/// entry.
fn wait_entry(c: &Cluster, from: &str, subnet: &str, want: Health, why: &str) -> Value {
    wait_subnet(c, from, subnet, || Ok(subnet.to_string()), want, why)
}

/// Waits until `from` sees the target `subnet()` (`what`) as `want`.
fn wait_subnet(
    c: &Cluster,
    from: &str,
    what: &str,
    subnet: impl Fn() -> twill_harness::Result<String>,
    want: Health,
    why: &str,
) -> Value {
    wait_for(
        &format!("{from} to see {what} as {want:?} ({why})"),
        DEADLINE,
        || {
            let p = entry(c, from, &subnet()?)?;
            Ok(p.filter(|p| health_of(p) == Some(want)))
        },
        || {
            format!(
                "/peers of {from}: {:?}\n{}",
                get(c, from, "/peers"),
                c.agent_log_tail(from)
            )
        },
    )
    .unwrap()
}

/// The value of `name` for `to` in `from`'s `/metrics`, if it has one.
fn gauge(c: &Cluster, from: &str, name: &str, to: &str) -> Option<f64> {
    let (subnet, public_ip) = labels(c, to).unwrap();
    series(c, from, name, &subnet, &public_ip)
}

/// The value of `name` labelled `subnet` and `public_ip` in `from`'s
/// `/metrics`, if it has one.
fn series(c: &Cluster, from: &str, name: &str, subnet: &str, public_ip: &str) -> Option<f64> {
    let text = get(c, from, "/metrics").unwrap();
    let series = format!("{name}{{public_ip=\"{public_ip}\",subnet=\"{subnet}\"}}");
    match metric_values(&text, &series).as_slice() {
        [] => None,
        [v] => Some(*v),
        more => panic!("{series}: several samples {more:?}"),
    }
}

/// Lines of `host`'s log that contain `what` and name `peer`'s subnet.
fn log_lines(c: &Cluster, host: &str, what: &str, peer: &str) -> usize {
    let (subnet, _) = labels(c, peer).unwrap();
    log_lines_of(c, host, what, &subnet)
}

/// Lines of `host`'s log that contain `what` and name `subnet`.
fn log_lines_of(c: &Cluster, host: &str, what: &str, subnet: &str) -> usize {
    c.agent_log(host)
        .unwrap()
        .lines()
        .filter(|l| l.contains(what) && l.contains(subnet))
        .count()
}

/// Drops VXLAN (UDP 8472) between the underlay addresses in the underlay
/// bridge, from `a` to `b` and, when `both`, back.
fn block_vxlan(c: &Cluster, a: &str, b: &str, both: bool) {
    let ((_, ia), (_, ib)) = (labels(c, a).unwrap(), labels(c, b).unwrap());
    let ip = if c.is_ipv6_only() { "ip6" } else { "ip" };
    let mut rules = vec![format!(
        "{ip} saddr {ia} {ip} daddr {ib} udp dport 8472 drop"
    )];
    if both {
        rules.push(format!(
            "{ip} saddr {ib} {ip} daddr {ia} udp dport 8472 drop"
        ));
    }
    drop_in_underlay(c, &rules);
}

/// Adds `rules` (nft rule statements) to a forward chain of the underlay
/// bridge.
fn drop_in_underlay(c: &Cluster, rules: &[String]) {
    let mut text = format!(
        "table bridge {BREAK_TABLE} {{\n chain breaks {{\n  type filter hook forward priority 0; policy accept;\n"
    );
    for r in rules {
        text.push_str(&format!("  {r}\n"));
    }
    text.push_str(" }\n}\n");
    nft(c, &["-f", "-"], Some(&text));
}

fn unblock(c: &Cluster) {
    nft(c, &["delete", "table", "bridge", BREAK_TABLE], None);
}

fn nft(c: &Cluster, args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut cmd = c.underlay().command("nft", args);
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Each of `pairs` seen healthy by both ends.
fn unaffected(c: &Cluster, pairs: &[(&str, &str)]) {
    for (a, b) in pairs {
        for (from, to) in [(a, b), (b, a)] {
            let p = wait_peer(c, from, to, Health::Fine, "unaffected by the break");
            assert!(p["rtt_seconds"].as_f64().unwrap() > 0.0, "{p}");
            assert_eq!(gauge(c, from, "twill_peer_reachable", to), Some(1.0));
            assert_eq!(gauge(c, from, "twill_peer_mtu_ok", to), Some(1.0));
        }
    }
}

#[test]
fn vxlan_blocked_both_ways_is_detected_on_both_ends_and_recovers() {
    if !require_prereqs() {
        return;
    }
    blocked_both_ways(three_hosts());
}

/// The same in an IPv6-only cluster: ICMPv6 probes through `twill6.1`,
/// VXLAN over IPv6 dropped in the underlay bridge.
#[test]
fn ipv6_only_vxlan_blocked_both_ways_is_detected_on_both_ends_and_recovers() {
    if !require_prereqs() {
        return;
    }
    blocked_both_ways(three_ipv6_only_hosts());
}

fn blocked_both_ways(c: Cluster) {
    block_vxlan(&c, "h1", "h2", true);
    let broken = Instant::now();
    for (from, to) in [("h1", "h2"), ("h2", "h1")] {
        let p = wait_peer(&c, from, to, Health::Lost, "VXLAN dropped both ways");
        // Reported, not asserted (the machine is shared).
        eprintln!(
            "{from} saw {to} lost {:?} after the break (probe interval 1 s)",
            broken.elapsed()
        );
        assert!(
            p["last_failure"].as_str().unwrap().contains("no reply"),
            "{p}"
        );
        assert_eq!(gauge(&c, from, "twill_peer_reachable", to), Some(0.0));
        assert_eq!(gauge(&c, from, "twill_peer_mtu_ok", to), Some(0.0));
    }
    unaffected(&c, &[("h1", "h3"), ("h2", "h3")]);
    // /readyz keeps meaning this node's own data path: still ready.
    let ready = http_get(c.ns_of("h1").unwrap(), loopback(&c), HEALTH_PORT, "/readyz").unwrap();
    assert_eq!(ready.status, 200, "{ready:?}");
    // twilld status shows the agent's view as a column.
    let status = status_with_agent(&c, "h1");
    let row = |h: &str| status_row(&c, &status, h);
    assert!(status.lines().next().unwrap().contains("PROBE"), "{status}");
    assert!(row("h2").ends_with("UNREACHABLE"), "{status}");
    assert!(row("h3").contains("  ok "), "{status}");

    unblock(&c);
    let fixed = Instant::now();
    for (from, to) in [("h1", "h2"), ("h2", "h1")] {
        wait_peer(&c, from, to, Health::Fine, "VXLAN let through again");
        eprintln!(
            "{from} saw {to} back {:?} after the fix (probe interval 1 s)",
            fixed.elapsed()
        );
        assert_eq!(gauge(&c, from, "twill_peer_reachable", to), Some(1.0));
        // One WARN per transition, not one per probe.
        assert_eq!(log_lines(&c, from, "peer lost", to), 1);
        assert_eq!(log_lines(&c, from, "peer back", to), 1);
    }
}

/// Drops the IPv6 packets matching `what` (nft) between h1's and h2's IPv6
/// underlay addresses, both ways, in the underlay bridge.
fn drop_ipv6_between_h1_and_h2(c: &Cluster, what: &str) {
    let (a, b) = (underlay6("h1"), underlay6("h2"));
    drop_in_underlay(
        c,
        &[
            format!("ip6 saddr {a} ip6 daddr {b} {what} drop"),
            format!("ip6 saddr {b} ip6 daddr {a} {what} drop"),
        ],
    );
}

/// Waits until h1 and h2 see each other's IPv6 path as `want` (`why`),
/// and checks that their IPv4 path is fine; returns (from, to, the IPv6
/// entry) both ways.
fn ipv6_path_alone(
    c: &Cluster,
    want: Health,
    why: &str,
) -> Vec<(&'static str, &'static str, Value)> {
    let mut out = Vec::new();
    for (from, to) in [("h1", "h2"), ("h2", "h1")] {
        let s6 = c.subnet6_of(to).unwrap().to_string();
        let p = wait_entry(c, from, &s6, want, why);
        // The IPv4 path to the same peer is fine all along.
        let p4 = peer_entry(c, from, to).unwrap().unwrap();
        assert_eq!(health_of(&p4), Some(Health::Fine), "{p4}");
        out.push((from, to, p));
    }
    out
}

/// `host`'s row in `status` (the output of [`status_with_agent`]).
fn status_row(c: &Cluster, status: &str, host: &str) -> String {
    let (subnet, _) = labels(c, host).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(&subnet))
        .unwrap_or_else(|| panic!("no row for {host} in\n{status}"))
        .to_string()
}

/// `twilld status --agent` run on `host` against its own agent.
fn status_with_agent(c: &Cluster, host: &str) -> String {
    status_with_agent_and(c, host, &[])
}

/// [`status_with_agent`] with more flags (`--json`).
fn status_with_agent_and(c: &Cluster, host: &str, more: &[&str]) -> String {
    let twilld = bins::twilld().unwrap();
    let agent = std::net::SocketAddr::new(loopback(c), HEALTH_PORT).to_string();
    let endpoints = c.etcd_endpoints();
    let mut args = vec![
        twilld.to_str().unwrap(),
        "status",
        "--agent",
        &agent,
        "--etcd-endpoints",
        &endpoints,
    ];
    args.extend_from_slice(more);
    c.ns_of(host).unwrap().exec_ok(&args).unwrap()
}

#[test]
fn vxlan_blocked_one_way_is_detected_on_both_ends_and_recovers() {
    if !require_prereqs() {
        return;
    }
    let c = three_hosts();
    // h1 -> h2 only: h1's probes are lost, and so are h2's replies to h1
    // (a one-way break shows at both ends, as a round trip needs both).
    block_vxlan(&c, "h1", "h2", false);
    wait_peer(&c, "h1", "h2", Health::Lost, "VXLAN h1 -> h2 dropped");
    wait_peer(&c, "h2", "h1", Health::Lost, "VXLAN h1 -> h2 dropped");
    unaffected(&c, &[("h1", "h3"), ("h2", "h3")]);
    unblock(&c);
    wait_peer(&c, "h1", "h2", Health::Fine, "VXLAN let through again");
    wait_peer(&c, "h2", "h1", Health::Fine, "VXLAN let through again");
}

#[test]
fn an_mtu_blackhole_shows_as_mtu_not_as_unreachable_and_recovers() {
    if !require_prereqs() {
        return;
    }
    mtu_blackhole(three_hosts());
}

/// The same in an IPv6-only cluster: the full-size ICMPv6 probe through
/// `twill6.1` no longer fits h2's port.
#[test]
fn ipv6_only_mtu_blackhole_shows_as_mtu_not_as_unreachable_and_recovers() {
    if !require_prereqs() {
        return;
    }
    mtu_blackhole(three_ipv6_only_hosts());
}

fn mtu_blackhole(c: Cluster) {
    // h2's port on the underlay bridge takes no full-size frame any more,
    // either way; small packets pass.
    c.underlay()
        .ip(["link", "set", "h2", "mtu", "1400"])
        .unwrap();
    for (from, to) in [("h1", "h2"), ("h3", "h2"), ("h2", "h1")] {
        let p = wait_peer(&c, from, to, Health::MtuBlackhole, "h2's port MTU 1400");
        assert!(
            p["last_failure"]
                .as_str()
                .unwrap()
                .contains("don't-fragment"),
            "{p}"
        );
        assert_eq!(gauge(&c, from, "twill_peer_reachable", to), Some(1.0));
        assert_eq!(gauge(&c, from, "twill_peer_mtu_ok", to), Some(0.0));
    }
    unaffected(&c, &[("h1", "h3")]);
    c.underlay()
        .ip(["link", "set", "h2", "mtu", "1500"])
        .unwrap();
    // Over IPv6 the hosts got "packet too big" and cache the smaller path
    // MTU (for net.ipv6.route.mtu_expires, 10 min): the operator's flush
    // after the fix, as docs/troubleshooting.md says.
    if c.is_ipv6_only() {
        for h in ["h1", "h2", "h3"] {
            c.host(h)
                .unwrap()
                .ns()
                .ip(["-6", "route", "flush", "cache"])
                .unwrap();
        }
    }
    for (from, to) in [("h1", "h2"), ("h3", "h2"), ("h2", "h1")] {
        wait_peer(&c, from, to, Health::Fine, "h2's port MTU back to 1500");
        assert_eq!(log_lines(&c, from, "MTU too small", to), 1);
        assert_eq!(log_lines(&c, from, "MTU fine again", to), 1);
        assert_eq!(log_lines(&c, from, "peer lost", to), 0, "not unreachable");
    }
}

#[test]
fn a_stopped_agent_stays_reachable_and_a_deleted_node_is_lost_then_forgotten() {
    if !require_prereqs() {
        return;
    }
    let mut c = three_hosts();

    // h2's agent stops; its kernel still forwards and answers.
    c.stop_agent("h2").unwrap();
    let rounds = |c: &Cluster| {
        peer_entry(c, "h1", "h2").unwrap().unwrap()["rounds"]
            .as_u64()
            .unwrap()
    };
    let before = rounds(&c);
    let start = Instant::now();
    // Five more rounds, each one still answered.
    while rounds(&c) < before + 5 {
        let p = peer_entry(&c, "h1", "h2").unwrap().unwrap();
        assert_eq!(health_of(&p), Some(Health::Fine), "agent stopped: {p}");
        assert!(start.elapsed() < DEADLINE, "h1 stopped probing h2: {p}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let p = peer_entry(&c, "h1", "h2").unwrap().unwrap();
    assert_eq!(health_of(&p), Some(Health::Fine), "{p}");
    assert_eq!(log_lines(&c, "h1", "peer lost", "h2"), 0);
    c.start_agent("h2").unwrap();

    // h3 is gone: its namespace deleted (its agent first, which holds it).
    let h3_ns = c.ns_of("h3").unwrap().name().to_string();
    c.kill_agent("h3").unwrap();
    twill_harness::cmd::run_ok(&mut twill_harness::cmd::ip(["netns", "del", &h3_ns])).unwrap();
    for from in ["h1", "h2"] {
        wait_peer(&c, from, "h3", Health::Lost, "h3's namespace deleted");
        assert_eq!(gauge(&c, from, "twill_peer_reachable", "h3"), Some(0.0));
    }
    unaffected(&c, &[("h1", "h2")]);

    // The fix for a node that is gone for good: its lease is removed, and
    // the peer leaves /peers and /metrics.
    let subnet = c.subnet_of("h3").unwrap();
    assert_eq!(c.etcd().del(&c.lease_key_in(subnet)).unwrap(), 1);
    for from in ["h1", "h2"] {
        wait_for(
            &format!("{from} to forget h3"),
            DEADLINE,
            || Ok(peer_entry(&c, from, "h3")?.is_none().then_some(())),
            || c.agent_log_tail(from),
        )
        .unwrap();
        assert_eq!(gauge(&c, from, "twill_peer_reachable", "h3"), None);
        assert_eq!(gauge(&c, from, "twill_peer_mtu_ok", "h3"), None);
        assert_eq!(gauge(&c, from, "twill_peer_rtt_seconds", "h3"), None);
    }
    unaffected(&c, &[("h1", "h2")]);
}

#[test]
fn host_gw_peers_are_probed_gateway_to_gateway() {
    if !require_prereqs() {
        return;
    }
    let c = three_hosts_with(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#,
    );
    // host-gw routes pod packets unencapsulated: dropping h1's pod subnet
    // to h2's on the underlay breaks that path only.
    let (s1, s2) = (c.subnet_of("h1").unwrap(), c.subnet_of("h2").unwrap());
    drop_in_underlay(&c, &[format!("ip saddr {s1} ip daddr {s2} drop")]);
    wait_peer(&c, "h1", "h2", Health::Lost, "pod traffic h1 -> h2 dropped");
    wait_peer(&c, "h2", "h1", Health::Lost, "pod traffic h1 -> h2 dropped");
    unaffected(&c, &[("h1", "h3"), ("h2", "h3")]);
    unblock(&c);
    wait_peer(
        &c,
        "h1",
        "h2",
        Health::Fine,
        "pod traffic let through again",
    );
    wait_peer(
        &c,
        "h2",
        "h1",
        Health::Fine,
        "pod traffic let through again",
    );
}

/// A dual-stack vxlan cluster: with an IPv6 underlay on every host, IPv6
/// pod traffic rides `twill6.1` over it, IPv4 `twill.1` over the IPv4 one.
const DUAL_STACK: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;

/// The IPv6 underlay address `Cluster::add_ipv6_underlay` gives `host`
/// (hosts added in the order h1, h2, h3).
fn underlay6(host: &str) -> String {
    format!("2001:db8:1::{}", host.trim_start_matches('h'))
}

/// Dual stack: each peer is probed twice, on its IPv4 pod path and on its
/// IPv6 one, each with its own `/peers` entry, series and verdict. VXLAN
/// over IPv6 dropped between h1 and h2 breaks their IPv6 path only: that
/// target is lost, their IPv4 one stays fine (as do h3's both), `twilld
/// status` shows the two verdicts in one row; all is back after the fix.
/// Then the same for an MTU blackhole on the IPv6 underlay only.
#[test]
fn dual_stack_peers_are_probed_on_both_paths_and_a_broken_ipv6_tunnel_shows_alone() {
    if !require_prereqs() {
        return;
    }
    let c = three_hosts_built(DUAL_STACK);
    c.add_ipv6_underlay(&["h1", "h2", "h3"]).unwrap();
    // Every IPv4 path healthy.
    let c = start_probing(c);
    let s6 = |h: &str| c.subnet6_of(h).unwrap().to_string();
    let hosts = ["h1", "h2", "h3"];
    for from in hosts {
        for to in hosts.into_iter().filter(|&to| to != from) {
            wait_entry(&c, from, &s6(to), Health::Fine, "IPv6 path at start");
            // Labelled with the address the IPv6 path goes to: the peer's
            // IPv6 underlay address (the path is twill6.1).
            let up = series(&c, from, "twill_peer_reachable", &s6(to), &underlay6(to));
            assert_eq!(up, Some(1.0), "{from} -> {to}");
        }
        let peers: Value = serde_json::from_str(&get(&c, from, "/peers").unwrap()).unwrap();
        assert_eq!(peers["peers"].as_array().unwrap().len(), 4, "{peers}");
    }
    let route = format!(
        "{} via {} dev twill6.1",
        s6("h2"),
        s6("h2").replace("/64", "")
    );
    let routes = c.ns_of("h1").unwrap().ip(["-6", "route"]).unwrap();
    assert!(routes.contains(&route), "h1 lacks `{route}`:\n{routes}");

    drop_ipv6_between_h1_and_h2(&c, "udp dport 8472");
    let why = "VXLAN over IPv6 dropped both ways";
    for (from, to, p) in ipv6_path_alone(&c, Health::Lost, why) {
        assert!(
            p["last_failure"].as_str().unwrap().contains("no reply"),
            "{p}"
        );
        let gauge6 = |name| series(&c, from, name, &s6(to), &underlay6(to));
        assert_eq!(gauge6("twill_peer_reachable"), Some(0.0));
        assert_eq!(gauge6("twill_peer_mtu_ok"), Some(0.0));
        assert_eq!(gauge(&c, from, "twill_peer_reachable", to), Some(1.0));
    }
    unaffected(&c, &[("h1", "h2"), ("h1", "h3"), ("h2", "h3")]);
    for (from, to) in [("h1", "h3"), ("h3", "h1"), ("h2", "h3"), ("h3", "h2")] {
        wait_entry(&c, from, &s6(to), Health::Fine, "unaffected by the break");
    }
    // One row per lease, both verdicts in its PROBE column.
    let status = status_with_agent(&c, "h1");
    let row = |h: &str| status_row(&c, &status, h);
    assert!(
        row("h2").contains("  ok ") && row("h2").ends_with(", v6 UNREACHABLE"),
        "{status}"
    );
    assert!(
        row("h3").contains("  ok ") && row("h3").contains(", v6 ok "),
        "{status}"
    );
    // --json: the IPv6 path's verdict as probe6, beside probe.
    let json: Value = serde_json::from_str(&status_with_agent_and(&c, "h1", &["--json"])).unwrap();
    let h2 = c.subnet_of("h2").unwrap().to_string();
    let row2 = json
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["subnet"] == h2.as_str())
        .unwrap();
    assert!(row2["probe"].as_str().unwrap().starts_with("ok "), "{row2}");
    assert_eq!(row2["probe6"], "UNREACHABLE", "{row2}");

    unblock(&c);
    for (from, to) in [("h1", "h2"), ("h2", "h1")] {
        wait_entry(&c, from, &s6(to), Health::Fine, "VXLAN over IPv6 back");
        // One WARN per transition, naming the IPv6 subnet; none for IPv4.
        assert_eq!(log_lines_of(&c, from, "peer lost", &s6(to)), 1);
        assert_eq!(log_lines_of(&c, from, "peer back", &s6(to)), 1);
        assert_eq!(log_lines(&c, from, "peer lost", to), 0, "IPv4 path");
    }
    let status = status_with_agent(&c, "h1");
    assert!(
        status_row(&c, &status, "h2").contains(", v6 ok "),
        "{status}"
    );

    // An MTU blackhole on the IPv6 underlay alone: large IPv6 packets
    // between h1 and h2 silently dropped (no "packet too big"), small ones
    // and all IPv4 pass. The full-size probe through twill6.1 is an outer
    // IPv6 payload of the pod MTU + 30 bytes; the small one about 100.
    drop_ipv6_between_h1_and_h2(&c, "ip6 length > 1000");
    let why = "large IPv6 packets dropped";
    for (_, _, p) in ipv6_path_alone(&c, Health::MtuBlackhole, why) {
        let failure = p["last_failure"].as_str().unwrap();
        assert!(failure.contains("don't-fragment"), "{p}");
    }
    let status = status_with_agent(&c, "h1");
    assert!(
        status_row(&c, &status, "h2").ends_with(", v6 MTU-BLACKHOLE"),
        "{status}"
    );
    unblock(&c);
    for (from, to) in [("h1", "h2"), ("h2", "h1")] {
        wait_entry(&c, from, &s6(to), Health::Fine, "large IPv6 packets pass");
        assert_eq!(log_lines_of(&c, from, "MTU too small", &s6(to)), 1);
        assert_eq!(log_lines_of(&c, from, "MTU too small", &s6("h3")), 0);
        assert_eq!(log_lines(&c, from, "MTU too small", to), 0, "IPv4 path");
    }
}

/// Dual-stack host-gw over both underlays: the IPv6 path is a direct route
/// via the peer's `PublicIPv6`, probed bridge gateway to bridge gateway
/// (`<subnet6>::1`) and labelled with that address. IPv6 pod traffic from
/// h1's subnet to h2's dropped on the underlay breaks that path alone.
#[test]
fn dual_stack_host_gw_peers_are_probed_on_both_paths_gateway_to_gateway() {
    if !require_prereqs() {
        return;
    }
    let c = three_hosts_built(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}"#,
    );
    c.add_ipv6_underlay(&["h1", "h2", "h3"]).unwrap();
    let c = start_probing(c);
    let s6 = |h: &str| c.subnet6_of(h).unwrap().to_string();
    for (from, to) in [("h1", "h2"), ("h2", "h1"), ("h1", "h3")] {
        wait_entry(&c, from, &s6(to), Health::Fine, "IPv6 path at start");
        let up = series(&c, from, "twill_peer_reachable", &s6(to), &underlay6(to));
        assert_eq!(up, Some(1.0), "{from} -> {to}");
    }
    let (s1, s2) = (s6("h1"), s6("h2"));
    drop_in_underlay(&c, &[format!("ip6 saddr {s1} ip6 daddr {s2} drop")]);
    ipv6_path_alone(&c, Health::Lost, "IPv6 pod traffic h1 -> h2 dropped");
    wait_entry(&c, "h1", &s6("h3"), Health::Fine, "unaffected");
    unblock(&c);
    for (from, to) in [("h1", "h2"), ("h2", "h1")] {
        wait_entry(&c, from, &s6(to), Health::Fine, "let through again");
    }
}

/// Dual-stack wireguard: the IPv6 path goes through `twill-wg` like the
/// IPv4 one, probed bridge gateway to bridge gateway and labelled with the
/// peer's `PublicIP` (as its IPv4 target is); both seen healthy.
#[test]
fn dual_stack_wireguard_peers_are_probed_on_both_paths() {
    if !require_prereqs() {
        return;
    }
    let c = three_hosts_built(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"wireguard"}}"#,
    );
    let c = start_probing(c);
    for (from, to) in [("h1", "h2"), ("h2", "h3"), ("h3", "h1")] {
        let s6 = c.subnet6_of(to).unwrap().to_string();
        wait_entry(&c, from, &s6, Health::Fine, "IPv6 path through twill-wg");
        let public_ip = c.host(to).unwrap().ip().to_string();
        let up = series(&c, from, "twill_peer_reachable", &s6, &public_ip);
        assert_eq!(up, Some(1.0), "{from} -> {to}");
    }
}
