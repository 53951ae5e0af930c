//! Issue 15, the repairs of an IPv6-only node (`EnableIPv4: false`, an
//! IPv6-only underlay, no IPv4 address anywhere), each as the IPv4 tests
//! check it (healing.rs, lease_loss.rs, underlay.rs, features.rs,
//! isolation.rs): hand-deleted routes, neighbours and FDB entries come
//! back, a ghost node's go, foreign routes stay; `twill6.1` and `twill0`
//! deleted, downed or changed are rebuilt; a lease deleted or revoked under
//! a running agent is written back with the same IPv6 subnet and
//! PublicIPv6, and one taken by another node moves the node, loudly; a
//! killed node is forgotten after its lease TTL; garbage leases are
//! skipped; a NIC deleted and re-added, and a node renumbered, are
//! followed (the lease names the new address, the peers re-point at it);
//! a link flap changes nothing (or, when the kernel flushed the address,
//! is waited out), and in host-gw mode puts back the routes the kernel
//! dropped; a restarted agent changes nothing that is right;
//! a node whose lease is gone can no longer send into the tunnel;
//! `--ip-masq` hides pods behind the node's IPv6 address toward the
//! outside only; SIGTERM keeps the data path and `cleanup` removes it;
//! `twilld status` shows each lease by its IPv6 subnet and PublicIPv6.
//! Each on 2 hosts with a pod each, whose pings both ways are the positive
//! control before anything is broken. Peer probes of IPv6-only peers are
//! peer_health.rs's.
//!
//! Needs root, `ip`, `bridge`, `nft`, `bash`, `timeout`, `etcd`, `etcdctl`,
//! `ping` and the workspace binaries; under `CI=true` a missing prerequisite
//! fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use ipnet::Ipv6Net;
use twill_contract::gateway6_of;
use twill_harness::cluster::{BRIDGE_DEV, IFNAME, IPV6_ONLY_HOST_GW_CONFIG, VXLAN6_DEV};
use twill_harness::datapath::{change_lines, lower_link};
use twill_harness::datapath6::{peer6, wait_leases_held6, wait_owned6, Peer6};
use twill_harness::pinger::Pinger;
use twill_harness::probe::{
    nft_table, parse_guard_drops, twilld_cleanup, twilld_status, wait_readyz, EchoCounters,
};
use twill_harness::wait::wait_for;
use twill_harness::{Cluster, ClusterBuilder, Prereqs, CLUSTER_TOOLS};

const RESYNC_SECS: u64 = 2;
/// Generous: the machine is shared; a repair that does not happen takes
/// forever, not 30 s.
const HEAL: Duration = Duration::from_secs(30);
const HEALTH_PORT: u16 = 10256;
/// The underlay MTU (veth default) less VXLAN over IPv6.
const VXLAN6_MTU: u64 = 1500 - 70;

fn require_prereqs() -> bool {
    Prereqs::new()
        .root()
        .tools(CLUSTER_TOOLS)
        .tools(&["bridge", "nft", "bash", "timeout"])
        .require()
}

/// `/readyz` of the agents: on `::1`, as the hosts have no IPv4 loopback.
fn health_addr() -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, HEALTH_PORT))
}

/// Two converged IPv6-only hosts (agents with `extra` flags, `/readyz` on
/// [`health_addr`]), pod p1 on h1 and p2 on h2 each reaching the other:
/// the positive control of every test here. Returns p1's and p2's address.
fn two_hosts(extra: &[&str]) -> (Cluster, Ipv6Addr, Ipv6Addr) {
    two_hosts_of(builder(extra))
}

/// The builder of [`two_hosts`], for a test to add to.
fn builder(extra: &[&str]) -> ClusterBuilder {
    let health = health_addr().to_string();
    Cluster::builder()
        .ipv6_only(true)
        .hosts(2)
        .resync_interval(RESYNC_SECS)
        .agent_args(
            ["--healthz-addr", health.as_str()]
                .into_iter()
                .chain(extra.iter().copied()),
        )
}

/// [`two_hosts`] of the cluster `b` builds.
fn two_hosts_of(b: ClusterBuilder) -> (Cluster, Ipv6Addr, Ipv6Addr) {
    let mut c = b.build().unwrap();
    c.start_agents().unwrap();
    c.wait_converged6().unwrap();
    let ip1 = c.add_pod6("h1", "p1").unwrap();
    let ip2 = c.add_pod6("h2", "p2").unwrap();
    both_ways(&c, ip1, ip2, "control: converged");
    (c, ip1, ip2)
}

fn both_ways(c: &Cluster, ip1: Ipv6Addr, ip2: Ipv6Addr, why: &str) {
    for (from, to) in [("p1", ip2), ("p2", ip1)] {
        assert!(
            c.ping_within(from, to, HEAL),
            "{from} -> {to} {why}\n{}\n{}",
            c.agent_log_tail("h1"),
            c.agent_log_tail("h2")
        );
    }
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

fn wait_ready(c: &Cluster, host: &str, what: &str, want: impl Fn(u16, &str) -> bool) {
    wait_readyz(c, host, health_addr(), what, HEAL, want).unwrap();
}

/// Each host's entries for the other are exactly its lease's.
fn both_hold_each_other(c: &Cluster, why: &str) -> (Peer6, Peer6) {
    let (p1, p2) = (peer6(c, "h1").unwrap(), peer6(c, "h2").unwrap());
    wait_owned6(c, "h1", &[&p2], HEAL, why).unwrap();
    wait_owned6(c, "h2", &[&p1], HEAL, why).unwrap();
    (p1, p2)
}

/// `twill6.1` of `host`: (MTU, MAC, up).
fn vtep(c: &Cluster, host: &str) -> twill_harness::Result<(u64, String, bool)> {
    let out = c.host(host)?.ns().ip(["-j", "link", "show", VXLAN6_DEV])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| twill_harness::HarnessError::Parse {
            what: format!("ip -j link show {VXLAN6_DEV}"),
            reason: e.to_string(),
        })?;
    let up = v[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    Ok((
        v[0]["mtu"].as_u64().unwrap_or(0),
        v[0]["address"].as_str().unwrap_or("").to_ascii_lowercase(),
        up,
    ))
}

#[test]
fn drifted_routes_neighbours_and_fdb_are_repaired_and_foreign_routes_spared() {
    if !require_prereqs() {
        return;
    }
    let (c, ip1, ip2) = two_hosts(&[]);
    let (p1, p2) = both_hold_each_other(&c, "converged");
    let ns = c.host("h1").unwrap().ns();
    let (s2, vtep2) = (p2.subnet.to_string(), p2.subnet.network().to_string());

    // Damage: twill's three entries for h2 go; each command fails unless
    // the entry was there, so the damage is real.
    ns.ip(["-6", "route", "del", &s2, "dev", VXLAN6_DEV, "proto", "77"])
        .unwrap();
    ns.ip(["-6", "neigh", "del", &vtep2, "dev", VXLAN6_DEV])
        .unwrap();
    ns.exec_ok(&[
        "bridge",
        "fdb",
        "del",
        &p2.mac,
        "dev",
        VXLAN6_DEV,
        "dst",
        &p2.public_ip.to_string(),
        "self",
    ])
    .unwrap();
    // Foreign routes on the device, one inside the cluster network: not
    // protocol 77, so not twill's to remove.
    let foreign = ["fd00:99::/64", "fd00:10:244:fa00::/64"];
    for f in foreign {
        ns.ip([
            "-6", "route", "add", f, "dev", VXLAN6_DEV, "proto", "static",
        ])
        .unwrap();
    }
    // Entries of twill's kind for a node that has no lease: stale.
    let ghost: Ipv6Net = "fd00:10:244:fb01::/64".parse().unwrap();
    assert!(
        ghost != p1.subnet && ghost != p2.subnet,
        "{ghost} is leased"
    );
    let (ghost_vtep, ghost_mac) = (ghost.network().to_string(), "02:00:00:00:fb:01");
    ns.exec_ok(&[
        "bridge",
        "fdb",
        "add",
        ghost_mac,
        "dev",
        VXLAN6_DEV,
        "dst",
        "2001:db8::99",
        "self",
        "permanent",
    ])
    .unwrap();
    ns.ip([
        "-6",
        "neigh",
        "add",
        &ghost_vtep,
        "lladdr",
        ghost_mac,
        "dev",
        VXLAN6_DEV,
        "nud",
        "permanent",
    ])
    .unwrap();
    ns.ip([
        "-6",
        "route",
        "add",
        &ghost.to_string(),
        "via",
        &ghost_vtep,
        "dev",
        VXLAN6_DEV,
        "onlink",
        "proto",
        "77",
    ])
    .unwrap();
    wait_owned6(
        &c,
        "h1",
        &[&p2],
        HEAL,
        "h2's entries restored, the ghost's removed",
    )
    .unwrap();
    // The ghost's entries are gone, so a pass ran after the foreign routes
    // came: they survived it.
    let spared = ns
        .ip(["-6", "route", "show", "dev", VXLAN6_DEV, "proto", "static"])
        .unwrap();
    for f in foreign {
        assert!(spared.contains(f), "foreign route {f} removed: {spared}");
    }
    both_ways(&c, ip1, ip2, "after h2's entries on h1 were deleted");

    // A neighbour pointing at the wrong MAC is put right.
    ns.ip([
        "-6",
        "neigh",
        "replace",
        &vtep2,
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        VXLAN6_DEV,
        "nud",
        "permanent",
    ])
    .unwrap();
    wait_owned6(&c, "h1", &[&p2], HEAL, "neighbour MAC restored").unwrap();
    both_ways(&c, ip1, ip2, "after the neighbour MAC was put right");
    wait_owned6(&c, "h2", &[&p1], HEAL, "h2 untouched").unwrap();
}

/// `host`'s devices as the agent keeps them: `twill6.1` up with the
/// lease's MAC and the IPv6 VXLAN MTU; `twill0` up with the gateway.
fn devices_ok(c: &Cluster, host: &str, me: &Peer6) -> twill_harness::Result<Option<()>> {
    let (mtu, mac, up) = vtep(c, host)?;
    let ns = c.host(host)?.ns();
    let bridge = ns.ip(["-j", "-6", "addr", "show", "dev", BRIDGE_DEV])?;
    let bridge_up = ns.ip(["-o", "link", "show", BRIDGE_DEV])?.contains(",UP");
    let gateway = format!("\"{}\"", gateway6_of(me.subnet));
    let ok = up && mtu == VXLAN6_MTU && mac == me.mac && bridge_up && bridge.contains(&gateway);
    Ok(ok.then_some(()))
}

#[test]
fn deleted_downed_or_changed_devices_are_rebuilt() {
    if !require_prereqs() {
        return;
    }
    let (c, ip1, ip2) = two_hosts(&[]);
    let (p1, p2) = both_hold_each_other(&c, "converged");
    let ns = c.host("h1").unwrap().ns();
    // The bridge last: the pods' veths stay off it once it is gone.
    let damage: [(&str, &[&str]); 4] = [
        ("vxlan device deleted", &["link", "del", VXLAN6_DEV]),
        ("vxlan device down", &["link", "set", VXLAN6_DEV, "down"]),
        (
            "vxlan MTU changed",
            &["link", "set", VXLAN6_DEV, "mtu", "1400"],
        ),
        ("bridge deleted", &["link", "del", BRIDGE_DEV]),
    ];
    for (why, args) in damage {
        ns.ip(args).unwrap();
        wait_for(
            &format!("h1's devices repaired ({why})"),
            HEAL,
            || devices_ok(&c, "h1", &p1),
            || c.agent_log_tail("h1"),
        )
        .unwrap();
        wait_owned6(&c, "h1", &[&p2], HEAL, why).unwrap();
        for (from, to) in [("h2", &p1), ("h1", &p2)] {
            let gw = gateway6_of(to.subnet);
            assert!(
                c.ping(from, gw),
                "{from} -> {gw} after {why}\n{}",
                c.agent_log_tail("h1")
            );
        }
        if why != "bridge deleted" {
            both_ways(&c, ip1, ip2, why);
        }
    }
    assert_eq!(peer6(&c, "h1").unwrap(), p1, "h1's lease changed");
    assert_eq!(c.leases6().unwrap().len(), 2);
}

#[test]
fn a_deleted_or_revoked_own_lease_is_written_back_with_the_same_subnet_and_address() {
    if !require_prereqs() {
        return;
    }
    let (mut c, ip1, ip2) = two_hosts(&[]);
    let (p1, _) = both_hold_each_other(&c, "converged");
    assert_eq!(Some(p1.public_ip), c.host("h1").unwrap().ipv6());

    let key = c.lease_key6(p1.subnet);
    let before = etcd_lease_id(&c, &key).expect("h1's lease has an etcd lease");
    assert_eq!(c.etcd().del(&key).unwrap(), 1);
    back_the_same(&mut c, &p1, 1, "after its key was deleted");
    both_ways(&c, ip1, ip2, "after h1's lease was deleted");

    // Its etcd lease revoked (the key goes with it): back under a new one.
    let id = etcd_lease_id(&c, &key).expect("h1's lease has an etcd lease");
    assert_ne!(
        id, before,
        "written back under the etcd lease of the old key"
    );
    c.etcd()
        .ctl(&["lease", "revoke", &format!("{id:x}")])
        .unwrap();
    back_the_same(&mut c, &p1, 2, "after its etcd lease was revoked");
    assert_ne!(etcd_lease_id(&c, &key), Some(id), "the revoked etcd lease");
    both_ways(&c, ip1, ip2, "after h1's etcd lease was revoked");
}

/// The etcd lease `key` is attached to, when it exists and has one.
fn etcd_lease_id(c: &Cluster, key: &str) -> Option<i64> {
    let out = c.etcd().ctl(&["get", key, "-w", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["kvs"][0]["lease"].as_i64()
}

/// Waits until h1's lease is back in etcd and checks it is `p1` (same IPv6
/// subnet, PublicIPv6 and MAC), the only other lease being h2's, the agent
/// still running and saying it took it back for the `n`th time, and h2
/// holding h1's entries.
fn back_the_same(c: &mut Cluster, p1: &Peer6, n: usize, why: &str) {
    wait_for(
        &format!("h1's lease to be back ({why})"),
        HEAL,
        || Ok(c.leases6()?.contains_key(&p1.subnet).then_some(())),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    assert_eq!(&peer6(c, "h1").unwrap(), p1, "not the same lease {why}");
    assert_eq!(c.subnet6_of("h1").unwrap(), p1.subnet);
    assert_eq!(c.leases6().unwrap().len(), 2, "no second lease {why}");
    assert!(
        c.agent_running("h1"),
        "h1's agent exited {why}\n{}",
        c.agent_log_tail("h1")
    );
    let log = c.agent_log("h1").unwrap();
    assert_eq!(count(&log, "re-acquired our lease"), n, "{why}\n{log}");
    both_hold_each_other(c, why);
}

#[test]
fn a_nic_deleted_and_added_back_heals_with_the_same_subnet() {
    if !require_prereqs() {
        return;
    }
    let (c, ip1, ip2) = two_hosts(&[]);
    wait_ready(&c, "h1", "ready", |s, _| s == 200);
    let (p1, _) = both_hold_each_other(&c, "converged");
    let h1 = c.host("h1").unwrap();
    let addr = Ipv6Net::new(p1.public_ip, 64).unwrap();

    h1.ns().ip(["link", "del", IFNAME]).unwrap();
    wait_ready(&c, "h1", "says the underlay is gone", |s, b| {
        s == 503 && b.contains("underlay interface gone")
    });
    assert!(
        !c.ping_within("p1", ip2, Duration::from_secs(2)),
        "no path while the NIC is away"
    );

    // Back, as after a driver reload: same name and address, new index.
    c.plug_nic(h1.ns(), IFNAME, "h1", addr, "ul0").unwrap();
    both_ways(&c, ip1, ip2, "after the NIC came back");
    wait_ready(&c, "h1", "ready again", |s, _| s == 200);
    assert_eq!(
        lower_link(h1.ns(), VXLAN6_DEV).unwrap(),
        format!("\"{IFNAME}\""),
        "{VXLAN6_DEV} rides the new {IFNAME}"
    );
    assert_eq!(c.subnet6_of("h1").unwrap(), p1.subnet, "same subnet");
    assert_eq!(peer6(&c, "h1").unwrap(), p1, "same lease");
    assert_eq!(c.leases6().unwrap().len(), 2, "no second lease");
    both_hold_each_other(&c, "after the NIC came back");
    let log = c.agent_log("h1").unwrap();
    assert_eq!(count(&log, "underlay interface gone"), 1, "{log}");
    assert_eq!(count(&log, "underlay interface is back"), 1, "{log}");
    assert_eq!(
        count(&log, "writing our lease again"),
        0,
        "same address: no etcd write\n{log}"
    );
}

#[test]
fn a_renumbered_node_rewrites_its_lease_and_the_peers_follow() {
    if !require_prereqs() {
        return;
    }
    let (mut c, ip1, ip2) = two_hosts(&[]);
    let (p1, _) = both_hold_each_other(&c, "converged");
    let new_ip: Ipv6Addr = "2001:db8::65".parse().unwrap();
    let ns = c.host("h1").unwrap().ns();

    // Renumbered: the old address goes, the new one comes.
    let old = Ipv6Net::new(p1.public_ip, 64).unwrap().to_string();
    ns.ip(["-6", "addr", "del", &old, "dev", IFNAME]).unwrap();
    ns.ip([
        "-6",
        "addr",
        "add",
        "2001:db8::65/64",
        "dev",
        IFNAME,
        "nodad",
    ])
    .unwrap();

    wait_for(
        "h1's lease to name 2001:db8::65",
        HEAL,
        || {
            Ok(c.leases6()?
                .get(&p1.subnet)
                .filter(|l| l.public_ipv6 == Some(new_ip))
                .map(drop))
        },
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    let leases = c.leases6().unwrap();
    assert_eq!(leases.len(), 2, "rewritten in place: {leases:?}");
    assert_eq!(c.subnet6_of("h1").unwrap(), p1.subnet, "same subnet");
    // The VTEP's MAC derives from its address: the lease carries the new
    // one, which h1's rebuilt twill6.1 has.
    let moved = peer6(&c, "h1").unwrap();
    assert_eq!((moved.subnet, moved.public_ip), (p1.subnet, new_ip));
    assert_eq!(vtep(&c, "h1").unwrap().1, moved.mac, "{moved:?}");
    // h2's FDB entry for h1 follows the new address; the old one is gone.
    wait_owned6(&c, "h2", &[&moved], HEAL, "h1 renumbered").unwrap();
    both_ways(&c, ip1, ip2, "after h1 was renumbered");
    assert!(c.agent_running("h1"), "no restart");
    let log = c.agent_log("h1").unwrap();
    let rewrites = count(&log, "writing our lease again");
    assert!(
        (1..=2).contains(&rewrites),
        "bounded etcd writes: {rewrites}\n{log}"
    );
}

/// The listing of table `<family> twill` on `host`, if it exists.
fn masq_table(c: &Cluster, host: &str, family: &str) -> Option<String> {
    nft_table(c.host(host).unwrap().ns(), family, "twill").unwrap()
}

#[test]
fn ip_masq_hides_pods_behind_the_node_toward_the_outside_only() {
    if !require_prereqs() {
        return;
    }
    let (mut c, ip1, ip2) = two_hosts(&["--ip-masq"]);
    for h in ["h1", "h2"] {
        let file = std::fs::read_to_string(c.host(h).unwrap().subnet_file_path()).unwrap();
        assert!(file.contains("TWILL_IPMASQ=true"), "{h}: {file}");
        let table = masq_table(&c, h, "ip6").unwrap_or_else(|| panic!("{h}: no ip6 twill"));
        for want in [
            "ip6 saddr fd00:10:244::/48 ip6 daddr fd00:10:244::/48 return",
            "masquerade fully-random",
        ] {
            assert!(table.contains(want), "{h}: no {want:?} in\n{table}");
        }
        assert!(
            masq_table(&c, h, "ip").is_none(),
            "{h}: an IPv4 table in an IPv6-only cluster"
        );
    }

    // The "internet": one veth to h1, no route back to the pod network.
    let inet = c
        .attach_outside("h1", "inet", "2001:db8:ff::1/64", "2001:db8:ff::2/64")
        .unwrap();
    let outside: Ipv6Addr = "2001:db8:ff::2".parse().unwrap();
    let node = Ipv6Net::new("2001:db8:ff::1".parse().unwrap(), 128).unwrap();
    let pod_net: Ipv6Net = "fd00:10:244::/48".parse().unwrap();
    let counts = EchoCounters::install(&inet, &[node, pod_net]).unwrap();
    // The reply can only come back when the source was rewritten.
    assert!(
        c.ping("p1", outside),
        "p1 cannot reach the outside\n{}",
        c.agent_log_tail("h1")
    );
    assert!(counts.packets(node).unwrap() > 0, "nothing from the node");
    assert_eq!(counts.packets(pod_net).unwrap(), 0, "a pod address leaked");

    // Pod to pod across hosts: the receiver sees the sender's own address.
    let from_p2 = Ipv6Net::new(ip2, 128).unwrap();
    let any: Ipv6Net = "::/0".parse().unwrap();
    let p1_counts = EchoCounters::install(c.pod("p1").unwrap().ns(), &[from_p2, any]).unwrap();
    assert!(c.ping("p2", ip1), "p2 -> p1");
    let seen = p1_counts.packets(from_p2).unwrap();
    assert!(seen > 0, "p1 saw no echo request from {ip2}");
    assert_eq!(
        p1_counts.packets(any).unwrap(),
        seen,
        "p1 got echo requests from an address other than p2's: masqueraded"
    );

    // Positive control: with the agent stopped and its table deleted, the
    // same ping arrives from the pod's own address (and gets no answer).
    c.stop_agent("h1").unwrap();
    c.host("h1")
        .unwrap()
        .ns()
        .exec_ok(&["nft", "delete", "table", "ip6", "twill"])
        .unwrap();
    let counts = EchoCounters::install(&inet, &[node, pod_net]).unwrap();
    assert!(
        !c.pod("p1").unwrap().ns().ping_once(&outside.to_string(), 1),
        "p1 reached the outside without masquerading"
    );
    assert!(counts.packets(pod_net).unwrap() > 0, "not from {ip1}");
    assert_eq!(counts.packets(node).unwrap(), 0, "still masqueraded");

    // A start puts the table back.
    c.start_agent("h1").unwrap();
    wait_for(
        "h1's agent to install table ip6 twill again",
        HEAL,
        || Ok(masq_table(&c, "h1", "ip6").map(drop)),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    assert!(c.ping_within("p1", outside, HEAL), "p1 -> outside again");
}

#[test]
fn status_shows_each_lease_by_its_ipv6_subnet_and_address() {
    if !require_prereqs() {
        return;
    }
    let (c, _, _) = two_hosts(&[]);
    let peers: BTreeMap<Ipv6Net, Peer6> = ["h1", "h2"]
        .iter()
        .map(|h| peer6(&c, h).unwrap())
        .map(|p| (p.subnet, p))
        .collect();
    let ep = c.etcd_endpoints();
    let ns = c.host("h1").unwrap().ns();
    let args = ["--etcd-endpoints", &ep, "--etcd-prefix", c.etcd_prefix()];

    let out = twilld_status(ns, &[], &args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows = BTreeMap::new();
    for l in text.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f.len(), 5, "row {l:?} of\n{text}");
        let subnet: Ipv6Net = f[0]
            .parse()
            .unwrap_or_else(|e| panic!("{l:?}: {e}\n{text}"));
        let ip: Ipv6Addr = f[1]
            .parse()
            .unwrap_or_else(|e| panic!("{l:?}: {e}\n{text}"));
        assert_eq!(f[2], "vxlan", "{text}");
        rows.insert(
            subnet,
            Peer6 {
                subnet,
                public_ip: ip,
                mac: f[3].to_ascii_lowercase(),
            },
        );
    }
    assert_eq!(rows, peers, "{text}");

    let out = twilld_status(ns, &[], &[&args[..], &["--json"]].concat()).unwrap();
    assert!(
        out.status.success(),
        "status --json failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    for row in rows {
        let subnet: Ipv6Net = row["ipv6Subnet"].as_str().unwrap().parse().unwrap();
        let p = &peers[&subnet];
        assert_eq!(row["publicIPv6"], p.public_ip.to_string(), "{row}");
        assert_eq!(
            row["vtepMACv6"].as_str().map(str::to_ascii_lowercase),
            Some(p.mac.clone()),
            "{row}"
        );
        assert_eq!(row["backendType"], "vxlan", "{row}");
    }
}

/// The packets `host`'s isolation table `inet twill-guard` dropped as
/// tunnel traffic from non-members.
fn tunnel_drops(c: &Cluster, host: &str) -> u64 {
    let ns = c.host(host).unwrap().ns();
    let out = ns
        .exec_ok(&["nft", "-j", "list", "table", "inet", "twill-guard"])
        .unwrap();
    parse_guard_drops(&out, "tunnel").unwrap()
}

#[test]
fn a_node_whose_lease_is_gone_can_no_longer_send_into_the_tunnel() {
    if !require_prereqs() {
        return;
    }
    let (mut c, ip1, ip2) = two_hosts(&[]);
    let (_, p2) = both_hold_each_other(&c, "converged");
    let from_p2 = Ipv6Net::new(ip2, 128).unwrap();
    // Positive control: p1 hears p2's echo requests through the tunnel.
    let heard = EchoCounters::install(c.pod("p1").unwrap().ns(), &[from_p2]).unwrap();
    assert!(c.ping("p2", ip1), "p2 -> p1");
    assert!(heard.packets(from_p2).unwrap() > 0, "p1 heard nothing");

    // h2 stops (its data path stays, so it still sends into the tunnel)
    // and its lease goes: h1 takes it out of the tunnel's members.
    let status = c.stop_agent("h2").unwrap();
    assert!(status.success(), "twilld on h2 exited with {status}");
    assert_eq!(c.etcd().del(&c.lease_key6(p2.subnet)).unwrap(), 1);
    wait_owned6(&c, "h1", &[], HEAL, "h2's lease deleted").unwrap();
    let dropped = tunnel_drops(&c, "h1");
    let heard = EchoCounters::install(c.pod("p1").unwrap().ns(), &[from_p2]).unwrap();
    assert!(
        !c.ping_within("p2", ip1, Duration::from_secs(2)),
        "p2 -> p1 with h2's lease gone"
    );
    assert_eq!(
        heard.packets(from_p2).unwrap(),
        0,
        "a non-member's VXLAN reached p1"
    );
    assert!(
        tunnel_drops(&c, "h1") > dropped,
        "h1's tunnel filter dropped nothing\n{}",
        c.agent_log_tail("h1")
    );

    // h2 back: a member again, heard again.
    c.start_agent("h2").unwrap();
    c.wait_converged6().unwrap();
    both_hold_each_other(&c, "h2 back");
    let heard = EchoCounters::install(c.pod("p1").unwrap().ns(), &[from_p2]).unwrap();
    both_ways(&c, ip1, ip2, "after h2 came back");
    assert!(
        heard.packets(from_p2).unwrap() > 0,
        "p1 heard nothing after"
    );
}

#[test]
fn an_own_subnet_taken_by_another_node_moves_us_to_a_new_one_loudly() {
    if !require_prereqs() {
        return;
    }
    let (mut c, _, ip2) = two_hosts(&[]);
    let (p1, _) = both_hold_each_other(&c, "converged");
    // Another node (not running here) claims h1's subnet, in the form
    // flannel and twill write IPv6-only leases.
    let claimer: Ipv6Addr = "2001:db8::63".parse().unwrap();
    c.etcd()
        .put(
            &c.lease_key6(p1.subnet),
            &format!(
                r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{claimer}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"0e:81:00:00:00:63"}}}}"#
            ),
        )
        .unwrap();
    let new = wait_for(
        "h1 to move to a new IPv6 subnet",
        HEAL,
        || {
            let s = c.subnet6_of("h1")?;
            Ok((s != p1.subnet).then_some(s))
        },
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    let leases = c.wait_leases6(3).unwrap();
    assert_eq!(leases[&new].public_ipv6, Some(p1.public_ip), "{leases:?}");
    assert_eq!(leases[&p1.subnet].public_ipv6, Some(claimer), "{leases:?}");
    let log = c.agent_log("h1").unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("now belongs to another node")),
        "the move was not said loudly:\n{log}"
    );
    assert!(c.agent_running("h1"));
    // h2 routes the new subnet to h1 and the claimed one to the claimer.
    c.wait_routes6("h2").unwrap();
    wait_leases_held6(&c, "h2", HEAL, "h1 moved").unwrap();
    // A pod made after the move gets an address of the new subnet and
    // reaches h2's.
    let ip3 = c.add_pod6("h1", "p3").unwrap();
    assert!(new.contains(&ip3), "p3 got {ip3}, not in {new}");
    assert!(
        c.ping_within("p3", ip2, HEAL),
        "p3 -> p2\n{}",
        c.agent_log_tail("h1")
    );
    assert!(c.ping("p2", ip3), "p2 -> p3");
}

#[test]
fn a_killed_node_is_forgotten_within_its_lease_ttl() {
    if !require_prereqs() {
        return;
    }
    const TTL: u64 = 10;
    let (mut c, _, _) = two_hosts_of(builder(&[]).lease_ttl(TTL));
    let (p1, _) = both_hold_each_other(&c, "converged");
    // SIGKILL: h2 can neither release its lease nor touch anything.
    c.kill_agent("h2").unwrap();
    // TTL + one resync, plus slack for etcd's expiry sweep on a busy machine.
    let deadline = Duration::from_secs(TTL + RESYNC_SECS + 8);
    wait_owned6(&c, "h1", &[], deadline, "h2's lease expired").unwrap();
    let routes = c.routes6("h1").unwrap();
    assert!(routes.is_empty(), "h1 still routes: {routes:?}");
    // h1's own lease was renewed meanwhile (its TTL passed too).
    let leases = c.leases6().unwrap();
    assert_eq!(
        leases.keys().collect::<Vec<_>>(),
        [&p1.subnet],
        "{leases:?}"
    );
}

#[test]
fn garbage_ipv6_only_leases_are_ignored() {
    if !require_prereqs() {
        return;
    }
    let (mut c, _, ip2) = two_hosts(&[]);
    let (p1, p2) = both_hold_each_other(&c, "converged");
    let lease = |ip6: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"{ip6}","BackendType":"vxlan","BackendV6Data":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    let half = format!("0.0.0.0-0&{}-80", p1.subnet.network());
    let garbage: Vec<(&str, String)> = vec![
        ("0.0.0.0-0&fd00:10:244:fc00::-64", "this is not json {".into()),
        // Outside fd00:10:244::/48.
        (
            "0.0.0.0-0&fd00:99::-64",
            lease("2001:db8::c9", "0e:81:00:00:00:c9"),
        ),
        // A part of h1's live subnet, for another address.
        (
            &half,
            lease("2001:db8::ca", "0e:81:00:00:00:ca"),
        ),
        (
            "0.0.0.0-0&fd00:10:244:fc02::-64",
            lease("2001:db8::cb", "not-a-mac"),
        ),
        (
            "0.0.0.0-0&fd00:10:244:fc03::-64",
            lease("banana", "0e:81:00:00:00:cc"),
        ),
        // An IPv4 lease, of no use to an IPv6-only cluster.
        (
            "10.244.5.0-24",
            r#"{"PublicIP":"192.0.2.5","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:01:c0:00:02:05"}}"#.into(),
        ),
    ];
    for (k, v) in &garbage {
        let key = format!("{}/subnets/{k}", c.etcd_prefix());
        c.etcd().put(&key, v).unwrap();
    }
    // 3 s of pings span more than one resync after the garbage came.
    let summary = Pinger::start(c.pod("p1").unwrap().ns(), ip2, 300, 10)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(summary.lost(), 0, "p1 -> p2 lost packets: {summary:?}");
    for h in ["h1", "h2"] {
        assert!(c.agent_running(h), "{h} died\n{}", c.agent_log_tail(h));
    }
    // Exactly the real peers' entries and routes: nothing of the garbage.
    wait_owned6(&c, "h1", &[&p2], HEAL, "garbage ignored").unwrap();
    wait_owned6(&c, "h2", &[&p1], HEAL, "garbage ignored").unwrap();
    for (h, peer) in [("h1", &p2), ("h2", &p1)] {
        let all = c.host(h).unwrap().ns().ip(["-6", "route", "show"]).unwrap();
        for bad in ["fd00:99::", "fd00:10:244:fc0", "/80"] {
            assert!(!all.contains(bad), "{h} routes {bad}: {all}");
        }
        let routes = c.routes6(h).unwrap();
        assert!(
            routes.len() == 1 && routes[0].dst == peer.subnet,
            "{h}: {routes:?}"
        );
        let v4 = c.host(h).unwrap().ns().ip(["-4", "route", "show"]).unwrap();
        assert!(v4.trim().is_empty(), "{h} has IPv4 routes: {v4}");
    }
}

#[test]
fn sigterm_keeps_the_data_path_and_cleanup_removes_it() {
    if !require_prereqs() {
        return;
    }
    let (mut c, _, _) = two_hosts(&["--ip-masq"]);
    let (p1, p2) = both_hold_each_other(&c, "converged");
    let status = c.stop_agent("h1").unwrap();
    assert!(status.success(), "twilld on h1 exited with {status}");
    wait_owned6(&c, "h1", &[&p2], HEAL, "left in place by SIGTERM").unwrap();
    let gw1 = gateway6_of(p1.subnet);
    assert!(c.ping("h2", gw1), "h2 -> h1's bridge after SIGTERM");
    let ns = c.host("h1").unwrap().ns();
    for (family, table) in [("ip6", "twill"), ("inet", "twill-guard")] {
        assert!(
            nft_table(ns, family, table).unwrap().is_some(),
            "SIGTERM removed table {family} {table}"
        );
    }

    let subnet_file = c.host("h1").unwrap().subnet_file_path();
    twilld_cleanup(&c, "h1", &[]).unwrap();
    let links = ns.link_names().unwrap();
    assert!(
        !links
            .iter()
            .any(|l| l == BRIDGE_DEV || l.starts_with("twill6.")),
        "twill devices left: {links:?}"
    );
    assert!(links.iter().any(|l| l == IFNAME), "eth0 went: {links:?}");
    let proto77 = ns.ip(["-6", "route", "show", "proto", "77"]).unwrap();
    assert!(proto77.trim().is_empty(), "twill routes left: {proto77}");
    let tables = ns.exec_ok(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("twill"), "tables left: {tables}");
    assert!(!subnet_file.exists(), "subnet file left");
    assert!(
        !c.ping_within("h2", gw1, Duration::from_secs(2)),
        "h1's bridge still answers"
    );
}

#[test]
fn a_restarted_agent_changes_nothing_that_is_right() {
    if !require_prereqs() {
        return;
    }
    let (mut c, ip1, ip2) = two_hosts(&["--ip-masq"]);
    let (p1, p2) = both_hold_each_other(&c, "converged");
    let file = std::fs::read_to_string(c.host("h1").unwrap().subnet_file_path()).unwrap();
    let status = c.stop_agent("h1").unwrap();
    assert!(status.success(), "twilld on h1 exited with {status}");
    let offset = c.agent_log("h1").unwrap().len();
    c.start_agent("h1").unwrap();
    wait_for(
        "the restarted agent on h1 to load the lease map",
        HEAL,
        || {
            Ok(c.agent_log("h1")?
                .get(offset..)
                .is_some_and(|l| l.contains("loaded lease map"))
                .then_some(()))
        },
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    // A resync or two of the new agent as well.
    std::thread::sleep(Duration::from_secs(2 * RESYNC_SECS + 1));
    let log = c.agent_log("h1").unwrap();
    let new_run = &log[offset..];
    assert!(c.agent_running("h1"), "restarted agent died\n{new_run}");
    let changes = change_lines(new_run);
    assert!(
        changes.is_empty(),
        "the restarted agent changed a correct data path:\n{}",
        changes.join("\n")
    );
    for said in ["installed ip-masq rules", "wrote the isolation table"] {
        assert_eq!(count(new_run, said), 0, "{said}:\n{new_run}");
    }
    assert!(
        new_run.contains("reused=true"),
        "lease not reused:\n{new_run}"
    );
    assert_eq!(peer6(&c, "h1").unwrap(), p1, "lease changed");
    assert_eq!(
        std::fs::read_to_string(c.host("h1").unwrap().subnet_file_path()).unwrap(),
        file,
        "subnet file changed"
    );
    wait_owned6(&c, "h1", &[&p2], HEAL, "after the restart").unwrap();
    both_ways(&c, ip1, ip2, "after the restart");
}

/// `ip link set eth0 down; up` on `host`, with the pings dead between.
fn flap(c: &Cluster, host: &str, ip2: Ipv6Addr) {
    let ns = c.host(host).unwrap().ns();
    ns.ip(["link", "set", IFNAME, "down"]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !c.ping_within("p1", ip2, Duration::from_secs(1)),
        "the flap is real"
    );
    ns.ip(["link", "set", IFNAME, "up"]).unwrap();
}

#[test]
fn a_link_flap_changes_nothing_that_was_right_and_a_flushed_address_is_waited_for() {
    if !require_prereqs() {
        return;
    }
    let (c, ip1, ip2) = two_hosts(&[]);
    let (p1, p2) = both_hold_each_other(&c, "converged");
    wait_ready(&c, "h1", "ready", |s, _| s == 200);
    let ns = c.host("h1").unwrap().ns();
    let keep = format!("net.ipv6.conf.{IFNAME}.keep_addr_on_down");

    // The address kept across the flap (keep_addr_on_down=1).
    ns.exec_ok(&["sysctl", "-q", "-w", &format!("{keep}=1")])
        .unwrap();
    let before = change_lines(&c.agent_log("h1").unwrap()).len();
    flap(&c, "h1", ip2);
    both_ways(&c, ip1, ip2, "after the flap");
    wait_owned6(&c, "h1", &[&p2], HEAL, "after the flap").unwrap();
    // Two resyncs more: still nothing to change.
    std::thread::sleep(Duration::from_secs(2 * RESYNC_SECS + 1));
    let log = c.agent_log("h1").unwrap();
    let changes = change_lines(&log);
    assert_eq!(
        changes[before..],
        [] as [&str; 0],
        "churn after a flap:\n{log}"
    );
    assert_eq!(peer6(&c, "h1").unwrap(), p1, "lease changed");
    assert_eq!(count(&log, "underlay changed"), 0, "{log}");
    assert_eq!(count(&log, "underlay interface gone"), 0, "{log}");

    // The kernel's default (keep_addr_on_down=0): the flap flushes the
    // global address; the agent waits for it, unready, until the network's
    // configuration puts it back (as SLAAC or DHCPv6 would).
    ns.exec_ok(&["sysctl", "-q", "-w", &format!("{keep}=0")])
        .unwrap();
    flap(&c, "h1", ip2);
    wait_ready(&c, "h1", "says the underlay has no address", |s, b| {
        s == 503 && b.contains("underlay interface gone or without an address")
    });
    let addr = Ipv6Net::new(p1.public_ip, 64).unwrap().to_string();
    ns.ip(["-6", "addr", "add", &addr, "dev", IFNAME, "nodad"])
        .unwrap();
    both_ways(&c, ip1, ip2, "after the address came back");
    wait_ready(&c, "h1", "ready again", |s, _| s == 200);
    assert_eq!(peer6(&c, "h1").unwrap(), p1, "lease changed");
    wait_owned6(&c, "h2", &[&p1], HEAL, "h1's address back").unwrap();
    let log = c.agent_log("h1").unwrap();
    assert_eq!(count(&log, "underlay interface is back"), 1, "{log}");
    assert_eq!(
        count(&log, "writing our lease again"),
        0,
        "same address: no etcd write\n{log}"
    );
}

#[test]
fn a_link_flap_in_host_gw_mode_restores_the_routes_the_kernel_dropped() {
    if !require_prereqs() {
        return;
    }
    let (c, ip1, ip2) = two_hosts_of(
        builder(&[])
            .network_config(IPV6_ONLY_HOST_GW_CONFIG)
            // No resync within the test: the link events alone must heal.
            .resync_interval(3600),
    );
    let ns = c.host("h1").unwrap().ns();
    ns.exec_ok(&[
        "sysctl",
        "-q",
        "-w",
        &format!("net.ipv6.conf.{IFNAME}.keep_addr_on_down=1"),
    ])
    .unwrap();
    let routes = c.wait_routes6("h1").unwrap();
    assert_eq!(routes.len(), 1, "h1 routes h2's subnet via h2: {routes:?}");
    assert_eq!(routes[0].dev, IFNAME, "{routes:?}");

    ns.ip(["link", "set", IFNAME, "down"]).unwrap();
    wait_for(
        "the kernel to drop h1's routes through the downed eth0",
        HEAL,
        || Ok(c.routes6("h1")?.is_empty().then_some(())),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    ns.ip(["link", "set", IFNAME, "up"]).unwrap();
    wait_for(
        "h1's routes to be back",
        HEAL,
        || Ok((c.routes6("h1")? == routes).then_some(())),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    both_ways(&c, ip1, ip2, "after the flap");
}
