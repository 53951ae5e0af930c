//! Issue 4, the agent that heals itself: hand-made damage to routes,
//! neighbours, FDB entries and devices is repaired within a resync, foreign
//! entries are spared, a restart changes nothing and loses no packet, a dead
//! node is forgotten after its lease TTL, garbage in etcd is ignored, and
//! SIGTERM keeps the data path while `twilld cleanup` removes it.
//!
//! Need root, `ip`, `bridge`, `etcd`, `etcdctl`, `ping` and the workspace
//! binaries (`cargo build --workspace`); under `CI=true` a missing
//! prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use twill_harness::cluster::{BRIDGE_DEV, ETCD_PREFIX, VXLAN_DEV};
use twill_harness::datapath::{self, change_lines, Peer, VxlanState};
use twill_harness::pinger::Pinger;
use twill_harness::wait::wait_for;
use twill_harness::{require_cluster, Cluster, ClusterBuilder};

/// Resync interval of every agent here.
const RESYNC_SECS: u64 = 2;
/// Deadline for a repair that must happen within one resync: generous, as
/// the machine is shared, but far below what a missing repair would take
/// (forever).
const HEAL_DEADLINE: Duration = Duration::from_secs(15);

fn builder(hosts: usize) -> ClusterBuilder {
    Cluster::builder().hosts(hosts).resync_interval(RESYNC_SECS)
}

fn converged(b: ClusterBuilder) -> Cluster {
    let mut c = b.build().unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    c
}

/// Two converged hosts that lease below 10.244.200.0, so that no lease key a
/// test writes above it can collide with a real node's subnet, with pod p1
/// on h1 and p2 on h2. Returns the cluster and p2's address.
fn two_hosts_below_200() -> (Cluster, std::net::Ipv4Addr) {
    let mut c = converged(builder(2).network_config(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"SubnetMax":"10.244.199.0","Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#,
    ));
    c.add_pod("h1", "p1").unwrap();
    let ip2 = c.add_pod("h2", "p2").unwrap();
    (c, ip2)
}

/// What `host` must own: an entry for every peer in `peers`.
fn expect(c: &Cluster, host: &str, peers: &[&Peer], deadline: Duration, why: &str) {
    datapath::wait_owned(c, host, peers, deadline, why).unwrap();
}

fn peers(c: &Cluster, hosts: &[&str]) -> Vec<Peer> {
    hosts
        .iter()
        .map(|h| datapath::peer(c, h).unwrap())
        .collect()
}

fn gateway(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

#[test]
fn reconcile_restores_entries_removes_stale_ones_and_spares_foreign_routes() {
    if !require_cluster() {
        return;
    }
    let c = converged(builder(2));
    let p = peers(&c, &["h1", "h2"]);
    let (p1, p2) = (&p[0], &p[1]);
    expect(&c, "h1", &[p2], HEAL_DEADLINE, "converged");
    let ns = c.host("h1").unwrap().ns();
    let vtep2 = p2.subnet.network().to_string();

    // Damage: twill's three entries for h2 go away.
    ns.ip(["route", "del", &p2.subnet.to_string(), "dev", VXLAN_DEV])
        .unwrap();
    ns.ip(["neigh", "del", &vtep2, "dev", VXLAN_DEV]).unwrap();
    ns.exec_ok(&[
        "bridge",
        "fdb",
        "del",
        &p2.mac,
        "dev",
        VXLAN_DEV,
        "dst",
        &p2.public_ip.to_string(),
        "self",
    ])
    .unwrap();
    // Foreign routes on the VXLAN device, one even inside the cluster
    // network: not protocol 77, so not twill's to remove.
    let foreign: Vec<Ipv4Net> = vec![
        "10.99.0.0/24".parse().unwrap(),
        "10.244.250.0/24".parse().unwrap(),
    ];
    for f in &foreign {
        ns.ip([
            "route",
            "add",
            &f.to_string(),
            "dev",
            VXLAN_DEV,
            "proto",
            "static",
        ])
        .unwrap();
    }
    // Entries of twill's kind for a node that has no lease: stale.
    let (ghost_net, ghost_mac, ghost_ip) = ("10.244.251.0", "02:00:00:00:fb:01", "192.0.2.99");
    ns.exec_ok(&[
        "bridge",
        "fdb",
        "add",
        ghost_mac,
        "dev",
        VXLAN_DEV,
        "dst",
        ghost_ip,
        "self",
        "permanent",
    ])
    .unwrap();
    ns.ip([
        "neigh",
        "add",
        ghost_net,
        "lladdr",
        ghost_mac,
        "dev",
        VXLAN_DEV,
        "nud",
        "permanent",
    ])
    .unwrap();
    ns.ip([
        "route",
        "add",
        "10.244.251.0/24",
        "via",
        ghost_net,
        "dev",
        VXLAN_DEV,
        "onlink",
        "proto",
        "77",
    ])
    .unwrap();
    expect(
        &c,
        "h1",
        &[p2],
        HEAL_DEADLINE,
        "h2's entries restored, the ghost node's removed",
    );
    // The ghost entries are gone, so a reconcile ran after the foreign
    // routes were added: they survived it.
    let st = VxlanState::read(ns, VXLAN_DEV).unwrap();
    for f in &foreign {
        let r = st.routes.get(f);
        assert!(
            r.is_some_and(|r| r.protocol == "static"),
            "foreign route {f} was touched: {r:?}; routes: {:?}\n{}",
            st.routes,
            c.agent_log_tail("h1")
        );
    }

    // A neighbour pointing at the wrong MAC is put right.
    ns.ip([
        "neigh",
        "replace",
        &vtep2,
        "lladdr",
        "02:00:00:00:00:99",
        "dev",
        VXLAN_DEV,
        "nud",
        "permanent",
    ])
    .unwrap();
    expect(&c, "h1", &[p2], HEAL_DEADLINE, "neighbour MAC restored");
    assert!(c.ping("h1", gateway(p2.subnet)), "h1 -> h2's bridge");
    expect(&c, "h2", &[p1], HEAL_DEADLINE, "h2 untouched");
}

/// Devices of `host` as the agent must keep them: VXLAN device up with the
/// lease's MAC and MTU 1450, bridge up with the gateway address.
fn devices_ok(c: &Cluster, host: &Peer, name: &str) -> twill_harness::Result<Option<()>> {
    let ns = c.host(name)?.ns();
    let link = |dev: &str| -> twill_harness::Result<serde_json::Value> {
        let out = ns.ip(["-j", "link", "show", dev])?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| twill_harness::HarnessError::Parse {
                what: format!("ip -j link show {dev}"),
                reason: e.to_string(),
            })?;
        Ok(v[0].clone())
    };
    let up = |v: &serde_json::Value| {
        v["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP"))
    };
    let vx = link(VXLAN_DEV)?;
    let br = link(BRIDGE_DEV)?;
    let addrs = ns.ip(["-j", "addr", "show", "dev", BRIDGE_DEV])?;
    let ok = up(&vx)
        && vx["mtu"] == 1450
        && vx["address"].as_str() == Some(host.mac.as_str())
        && up(&br)
        && addrs.contains(&format!("\"{}\"", gateway(host.subnet)));
    Ok(ok.then_some(()))
}

fn wait_devices(c: &Cluster, me: &Peer, name: &str, why: &str) {
    wait_for(
        &format!("devices of {name} repaired ({why})"),
        HEAL_DEADLINE,
        || devices_ok(c, me, name),
        || format!("\n{}", c.agent_log_tail(name)),
    )
    .unwrap();
}

#[test]
fn deleted_downed_or_changed_devices_are_rebuilt() {
    if !require_cluster() {
        return;
    }
    let c = converged(builder(2));
    let p = peers(&c, &["h1", "h2"]);
    let (p1, p2) = (&p[0], &p[1]);
    wait_devices(&c, p1, "h1", "converged");
    let ns = c.host("h1").unwrap().ns();
    let damage: [(&str, &[&str]); 4] = [
        ("vxlan device deleted", &["link", "del", VXLAN_DEV]),
        ("vxlan device down", &["link", "set", VXLAN_DEV, "down"]),
        (
            "vxlan MTU changed",
            &["link", "set", VXLAN_DEV, "mtu", "1400"],
        ),
        ("bridge deleted", &["link", "del", BRIDGE_DEV]),
    ];
    for (why, args) in damage {
        ns.ip(args).unwrap();
        wait_devices(&c, p1, "h1", why);
        expect(&c, "h1", &[p2], HEAL_DEADLINE, why);
        assert!(
            c.ping("h2", gateway(p1.subnet)),
            "h2 -> h1's bridge after {why}\n{}",
            c.agent_log_tail("h1")
        );
        assert!(
            c.ping("h1", gateway(p2.subnet)),
            "h1 -> h2's bridge after {why}\n{}",
            c.agent_log_tail("h1")
        );
    }
}

#[test]
fn restarting_an_agent_loses_no_packet_and_changes_nothing() {
    if !require_cluster() {
        return;
    }
    let (mut c, ip2) = two_hosts_below_200();
    assert!(c.ping("p1", ip2), "p1 -> p2 before the restart");
    let before = c.subnet_file("h1").unwrap();
    let me = datapath::peer(&c, "h1").unwrap();

    // 800 packets, one per 10 ms: the restart falls well inside the run.
    let ping = Pinger::start(c.pod("p1").unwrap().ns(), ip2, 800, 10).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let status = c.stop_agent("h1").unwrap();
    assert!(status.success(), "twilld on h1 exited with {status}");
    let offset = c.agent_log("h1").unwrap().len();
    c.start_agent("h1").unwrap();
    wait_for(
        "restarted agent on h1 to load the lease map",
        Duration::from_secs(20),
        || {
            Ok(c.agent_log("h1")?[offset..]
                .contains("loaded lease map")
                .then_some(()))
        },
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    let summary = ping.finish().unwrap();

    let log = c.agent_log("h1").unwrap();
    let new_run = &log[offset..];
    assert_eq!(summary.transmitted, 800, "ping ended early: {summary:?}");
    assert_eq!(
        summary.lost(),
        0,
        "packets lost across the restart: {summary:?}\n{new_run}"
    );
    assert_eq!(
        c.subnet_file("h1").unwrap(),
        before,
        "subnet file changed by the restart"
    );
    assert_eq!(
        datapath::peer(&c, "h1").unwrap(),
        me,
        "lease changed by the restart"
    );
    assert!(c.agent_running("h1"), "restarted agent died\n{new_run}");
    let changes = change_lines(new_run);
    assert!(
        changes.is_empty(),
        "the restarted agent changed a correct data path:\n{}",
        changes.join("\n")
    );
}

#[test]
fn a_killed_node_is_forgotten_within_its_lease_ttl_and_a_resync() {
    if !require_cluster() {
        return;
    }
    const TTL: u64 = 10;
    let mut c = converged(builder(3).lease_ttl(TTL));
    let p = peers(&c, &["h1", "h2", "h3"]);
    for (h, others) in [("h1", [&p[1], &p[2]]), ("h2", [&p[0], &p[2]])] {
        expect(&c, h, &others, HEAL_DEADLINE, "converged");
    }
    // SIGKILL: h3 cannot release its lease or touch anything on the way out.
    c.kill_agent("h3").unwrap();
    let killed = Instant::now();
    // TTL + one resync, plus slack for etcd's expiry sweep on a busy machine.
    let deadline = Duration::from_secs(TTL + RESYNC_SECS + 8);
    expect(&c, "h1", &[&p[1]], deadline, "h3's lease expired");
    let rest = deadline.saturating_sub(killed.elapsed());
    expect(&c, "h2", &[&p[0]], rest, "h3's lease expired");
    assert!(
        !c.leases().unwrap().contains_key(&p[2].subnet),
        "h3's lease still in etcd"
    );
    // The survivors' own leases were renewed meanwhile (TTL passed).
    let leases = c.leases().unwrap();
    for q in &p[..2] {
        assert_eq!(
            leases.get(&q.subnet).map(|l| l.public_ip),
            Some(q.public_ip),
            "lease of {} lost: {leases:?}",
            q.public_ip
        );
    }
}

#[test]
fn garbage_leases_are_ignored_and_a_later_join_still_works() {
    if !require_cluster() {
        return;
    }
    let (mut c, ip2) = two_hosts_below_200();
    let p = peers(&c, &["h1", "h2"]);
    let lease = |ip: &str, mac: &str| {
        format!(
            r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#
        )
    };
    let s1 = p[0].subnet.network();
    let garbage: Vec<(String, String)> = vec![
        ("10.244.200.0-24".into(), "this is not json {".into()),
        (
            "not-a-subnet".into(),
            lease("192.0.2.201", "02:00:00:00:c9:01"),
        ),
        // Outside 10.244.0.0/16.
        (
            "10.99.0.0-24".into(),
            lease("192.0.2.202", "02:00:00:00:c9:02"),
        ),
        // Half of h1's live subnet, for another public IP.
        (
            format!("{s1}-25"),
            lease("192.0.2.203", "02:00:00:00:c9:03"),
        ),
        ("10.244.201.0-24".into(), lease("192.0.2.204", "not-a-mac")),
        // Multicast MAC: no VTEP has one.
        (
            "10.244.202.0-24".into(),
            lease("192.0.2.205", "01:00:5e:00:00:01"),
        ),
        (
            "10.244.203.0-24".into(),
            r#"{"PublicIP":"banana","BackendType":"vxlan"}"#.into(),
        ),
    ];
    for (k, v) in &garbage {
        c.etcd()
            .put(&format!("{ETCD_PREFIX}/subnets/{k}"), v)
            .unwrap();
    }
    // 3 s of pings span more than one resync after the garbage arrived.
    let summary = Pinger::start(c.pod("p1").unwrap().ns(), ip2, 300, 10)
        .unwrap()
        .finish()
        .unwrap();
    assert_eq!(summary.lost(), 0, "p1 -> p2 lost packets: {summary:?}");
    for h in ["h1", "h2"] {
        assert!(
            c.agent_running(h),
            "agent on {h} died\n{}",
            c.agent_log_tail(h)
        );
    }
    // Exact equality: no entry for any garbage lease, and h1's subnet still
    // goes to h1's VTEP MAC and IP.
    expect(&c, "h1", &[&p[1]], HEAL_DEADLINE, "garbage ignored");
    expect(&c, "h2", &[&p[0]], HEAL_DEADLINE, "garbage ignored");
    for h in ["h1", "h2"] {
        let all = c.host(h).unwrap().ns().ip(["-j", "route", "show"]).unwrap();
        for bad in [
            "10.244.200.0",
            "10.244.201.0",
            "10.244.202.0",
            "10.244.203.0",
            "10.99.0.0",
        ] {
            assert!(!all.contains(bad), "{h} has a route for {bad}: {all}");
        }
        assert!(
            !all.contains(&format!("\"{s1}/25\"")),
            "{h} routes half of h1's subnet: {all}"
        );
    }

    let h3 = c.add_host().unwrap();
    c.start_agent(&h3).unwrap();
    c.wait_converged().unwrap();
    let ip3 = c.add_pod(&h3, "p3").unwrap();
    let p = peers(&c, &["h1", "h2", "h3"]);
    expect(&c, "h1", &[&p[1], &p[2]], HEAL_DEADLINE, "h3 joined");
    expect(&c, "h2", &[&p[0], &p[2]], HEAL_DEADLINE, "h3 joined");
    expect(&c, "h3", &[&p[0], &p[1]], HEAL_DEADLINE, "h3 joined");
    assert!(c.ping("p1", ip3), "p1 -> p3");
    assert!(c.ping("p3", ip2), "p3 -> p2");
}

#[test]
fn sigterm_keeps_the_data_path_and_cleanup_removes_it() {
    if !require_cluster() {
        return;
    }
    let mut c = converged(builder(2));
    let p = peers(&c, &["h1", "h2"]);
    let status = c.stop_agent("h1").unwrap();
    assert!(status.success(), "twilld on h1 exited with {status}");
    let ns = c.host("h1").unwrap().ns();
    for dev in [BRIDGE_DEV, VXLAN_DEV] {
        ns.ip(["link", "show", dev])
            .unwrap_or_else(|e| panic!("{dev} gone after SIGTERM: {e}"));
    }
    expect(
        &c,
        "h1",
        &[&p[1]],
        HEAL_DEADLINE,
        "left in place by SIGTERM",
    );
    assert!(c.ping("h2", gateway(p[0].subnet)), "h2 -> h1's bridge");

    twill_harness::probe::twilld_cleanup(&c, "h1", &["--bridge", BRIDGE_DEV]).unwrap();
    let links = ns.ip(["-j", "link", "show"]).unwrap();
    let links: serde_json::Value = serde_json::from_str(&links).unwrap();
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| *n == BRIDGE_DEV || n.starts_with("twill.")),
        "twill devices left after cleanup: {names:?}"
    );
    assert!(names.contains(&"eth0"), "cleanup removed eth0: {names:?}");
    let routes = ns.ip(["route", "show"]).unwrap();
    assert!(
        !routes.contains("10.244."),
        "pod network routes left after cleanup:\n{routes}"
    );
    let proto77 = ns.ip(["route", "show", "proto", "77"]).unwrap();
    assert!(proto77.trim().is_empty(), "twill routes left: {proto77}");
}
