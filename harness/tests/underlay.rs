//! Issue 14, the data path follows the underlay: a node's NIC deleted and
//! added back, its address changed, its link flapped, all healed by the
//! running agent, same subnet, no restart; and the underlay interface
//! picked by `--iface-regex` or `--iface-can-reach` on a node with two NICs
//! whose default route leads the wrong way.
//!
//! Need root, `ip`, `bridge`, `etcd`, `etcdctl`, `ping` and the workspace
//! binaries (`cargo build --workspace`); under `CI=true` a missing
//! prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::Ipv4Net;
use twill_harness::cluster::{DEFAULT_NETWORK_CONFIG, IFNAME, VXLAN_DEV};
use twill_harness::datapath::{self, change_lines, Peer};
use twill_harness::probe;
use twill_harness::routed;
use twill_harness::wait::wait_for;
use twill_harness::{require_cluster, Cluster};

const RESYNC_SECS: u64 = 2;
/// Generous: the machine is shared; a heal that does not happen takes
/// forever, not 30 s.
const HEAL: Duration = Duration::from_secs(30);
const HEALTH_PORT: u16 = 10256;

/// Two converged hosts serving `/readyz`, pod p1 on h1 and p2 on h2, each
/// reaching the other (the positive control of every heal below).
fn two_hosts_with_pods() -> (Cluster, Ipv4Addr, Ipv4Addr) {
    two_hosts_with_pods_on(DEFAULT_NETWORK_CONFIG, RESYNC_SECS)
}

/// [`two_hosts_with_pods`] with the network config `config` and resyncs
/// `resync` seconds apart.
fn two_hosts_with_pods_on(config: &str, resync: u64) -> (Cluster, Ipv4Addr, Ipv4Addr) {
    let addr = format!("127.0.0.1:{HEALTH_PORT}");
    let mut c = Cluster::builder()
        .network_config(config)
        .hosts(2)
        .resync_interval(resync)
        .agent_args(["--healthz-addr", &addr])
        .build()
        .unwrap();
    c.start_agents().unwrap();
    for h in ["h1", "h2"] {
        c.wait_subnet_file(h).unwrap();
    }
    let ip1 = c.add_pod("h1", "p1").unwrap();
    let ip2 = c.add_pod("h2", "p2").unwrap();
    assert!(c.ping_within("p1", ip2, HEAL), "control: p1 reaches p2");
    assert!(c.ping("p2", ip1), "control: p2 reaches p1");
    (c, ip1, ip2)
}

fn wait_readyz(c: &Cluster, host: &str, what: &str, want: impl Fn(u16, &str) -> bool) {
    let at = SocketAddr::from((Ipv4Addr::LOCALHOST, HEALTH_PORT));
    probe::wait_readyz(c, host, at, what, HEAL, want).unwrap();
}

fn both_ways(c: &Cluster, ip1: Ipv4Addr, ip2: Ipv4Addr, why: &str) {
    assert!(
        c.ping_within("p1", ip2, HEAL),
        "p1 -> p2 {why}\n{}",
        c.agent_log_tail("h1")
    );
    assert!(
        c.ping_within("p2", ip1, HEAL),
        "p2 -> p1 {why}\n{}",
        c.agent_log_tail("h1")
    );
}

fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// The lower link of `host`'s VXLAN device (see [`datapath::lower_link`]).
fn vxlan_lower(c: &Cluster, host: &str) -> String {
    datapath::lower_link(c.host(host).unwrap().ns(), VXLAN_DEV).unwrap()
}

#[test]
fn a_nic_deleted_and_added_back_heals_with_the_same_subnet() {
    if !require_cluster() {
        return;
    }
    let (mut c, ip1, ip2) = two_hosts_with_pods();
    wait_readyz(&c, "h1", "ready", |s, _| s == 200);
    let subnet = c.subnet_file("h1").unwrap().node_subnet();
    let h1 = c.host("h1").unwrap();
    let h1_ip = h1.ip();
    let addr: Ipv4Net = format!("{h1_ip}/24").parse().unwrap();

    // The NIC goes (its underlay end with it): the VXLAN device goes too.
    h1.ns().ip(["link", "del", IFNAME]).unwrap();
    wait_readyz(&c, "h1", "says the underlay is gone", |s, b| {
        s == 503 && b.contains("underlay interface gone")
    });
    assert!(
        !c.ping_within("p1", ip2, Duration::from_secs(2)),
        "no path while the NIC is away"
    );

    // Back, as after a driver reload: same name and address, new index.
    c.plug_nic(c.host("h1").unwrap().ns(), IFNAME, "h1", addr, "ul0")
        .unwrap();
    both_ways(&c, ip1, ip2, "after the NIC came back");
    wait_readyz(&c, "h1", "ready again", |s, _| s == 200);
    assert_eq!(
        vxlan_lower(&c, "h1"),
        format!("\"{IFNAME}\""),
        "{VXLAN_DEV} rides the new {IFNAME}"
    );

    assert_eq!(
        c.subnet_file("h1").unwrap().node_subnet(),
        subnet,
        "same subnet"
    );
    let lease = c.lease(subnet).unwrap().expect("h1's lease");
    assert_eq!(lease.public_ip, h1_ip);
    assert_eq!(c.leases().unwrap().len(), 2, "no second lease");
    let log = c.agent_log("h1").unwrap();
    assert!(c.agent_running("h1"), "no restart");
    assert_eq!(
        count(&log, "underlay interface gone"),
        1,
        "said once:\n{log}"
    );
    assert_eq!(
        count(&log, "underlay interface is back"),
        1,
        "said once:\n{log}"
    );
    assert_eq!(
        count(&log, "writing our lease again"),
        0,
        "same address: no etcd write"
    );
}

#[test]
fn a_changed_address_is_written_to_the_lease_and_peers_follow() {
    if !require_cluster() {
        return;
    }
    let (mut c, ip1, ip2) = two_hosts_with_pods();
    let subnet = c.subnet_file("h1").unwrap().node_subnet();
    let h1 = c.host("h1").unwrap();
    let old: Ipv4Net = format!("{}/24", h1.ip()).parse().unwrap();
    let new_ip = Ipv4Addr::new(192, 0, 2, 101);

    // Renumbered, as by DHCP: the old address goes, the new one comes.
    h1.ns()
        .ip(["addr", "del", &old.to_string(), "dev", IFNAME])
        .unwrap();
    h1.ns()
        .ip(["addr", "add", "192.0.2.101/24", "dev", IFNAME])
        .unwrap();

    let lease = wait_for(
        "h1's lease to name 192.0.2.101",
        HEAL,
        || Ok(c.lease(subnet)?.filter(|l| l.public_ip == new_ip)),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    assert_eq!(
        c.leases().unwrap().len(),
        2,
        "rewritten in place, no second lease"
    );
    assert_eq!(
        c.subnet_file("h1").unwrap().node_subnet(),
        subnet,
        "same subnet"
    );
    // h2 re-points its entries for h1 at the new address and VTEP MAC.
    let peer = Peer {
        subnet,
        public_ip: new_ip,
        mac: lease.vtep_mac().unwrap(),
    };
    datapath::wait_owned(&c, "h2", &[&peer], HEAL, "h1 renumbered").unwrap();
    both_ways(&c, ip1, ip2, "after h1 was renumbered");
    let log = c.agent_log("h1").unwrap();
    assert!(c.agent_running("h1"), "no restart");
    let rewrites = count(&log, "writing our lease again");
    assert!(
        (1..=2).contains(&rewrites),
        "bounded etcd writes: {rewrites}\n{log}"
    );
}

#[test]
fn a_link_flap_changes_nothing_that_was_right() {
    if !require_cluster() {
        return;
    }
    let (c, ip1, ip2) = two_hosts_with_pods();
    let h1 = c.host("h1").unwrap();
    let subnet = c.subnet_file("h1").unwrap().node_subnet();
    let lease = c.lease(subnet).unwrap();
    let h2_peer = datapath::peer(&c, "h2").unwrap();
    let before = change_lines(&c.agent_log("h1").unwrap()).len();

    h1.ns().ip(["link", "set", IFNAME, "down"]).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !c.ping_within("p1", ip2, Duration::from_secs(1)),
        "the flap is real"
    );
    h1.ns().ip(["link", "set", IFNAME, "up"]).unwrap();
    both_ways(&c, ip1, ip2, "after the flap");
    datapath::wait_owned(&c, "h1", &[&h2_peer], HEAL, "after the flap").unwrap();
    // Two resyncs more: still nothing to change.
    std::thread::sleep(Duration::from_secs(2 * RESYNC_SECS + 1));
    let log = c.agent_log("h1").unwrap();
    let changes = change_lines(&log);
    assert_eq!(
        changes[before..],
        [] as [&str; 0],
        "churn after a flap:\n{log}"
    );
    assert_eq!(c.lease(subnet).unwrap(), lease, "lease untouched");
    assert_eq!(count(&log, "underlay changed"), 0);
}

#[test]
fn a_link_flap_in_host_gw_mode_restores_the_routes_the_kernel_dropped() {
    if !require_cluster() {
        return;
    }
    let (c, ip1, ip2) = two_hosts_with_pods_on(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#,
        // No resync within the test: the link events alone must heal.
        3600,
    );
    let ns = c.host("h1").unwrap().ns();
    let routes = routed::owned_routes(ns).unwrap();
    assert_eq!(routes.len(), 1, "h1 routes h2's subnet via h2: {routes:?}");

    ns.ip(["link", "set", IFNAME, "down"]).unwrap();
    wait_for(
        "the kernel to drop h1's routes through the downed eth0",
        HEAL,
        || Ok(routed::owned_routes(ns)?.is_empty().then_some(())),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    let before = change_lines(&c.agent_log("h1").unwrap()).len();
    ns.ip(["link", "set", IFNAME, "up"]).unwrap();
    wait_for(
        "h1's routes to be back",
        HEAL,
        || Ok((routed::owned_routes(ns)? == routes).then_some(())),
        || c.agent_log_tail("h1"),
    )
    .unwrap();
    both_ways(&c, ip1, ip2, "after the flap");
    // A while later: what was put back is all that changed.
    std::thread::sleep(Duration::from_secs(3));
    let log = c.agent_log("h1").unwrap();
    let changes = change_lines(&log)[before..].to_vec();
    assert!(
        !changes.is_empty() && changes.iter().all(|l| l.contains("set route")),
        "only the dropped route put back: {changes:#?}\n{log}"
    );
}

/// Gives `host` a second NIC `eth1` at `198.18.0.<octet>/24` on a second
/// underlay segment, and makes it the default route: picked by default,
/// the wrong interface for the tunnels.
fn second_nic_with_the_default_route(c: &Cluster, host: &str, octet: u8) {
    let h = c.host(host).unwrap();
    let addr: Ipv4Net = format!("198.18.0.{octet}/24").parse().unwrap();
    c.plug_nic(h.ns(), "eth1", &format!("{host}b"), addr, "ul1")
        .unwrap();
    h.ns()
        .ip([
            "route",
            "add",
            "default",
            "via",
            "198.18.0.254",
            "dev",
            "eth1",
        ])
        .unwrap();
}

#[test]
fn iface_regex_and_iface_can_reach_pick_the_interface() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(3)
        .resync_interval(RESYNC_SECS)
        .build()
        .unwrap();
    let ul = c.underlay();
    ul.ip(["link", "add", "ul1", "type", "bridge"]).unwrap();
    ul.ip(["addr", "add", "198.18.0.254/24", "dev", "ul1"])
        .unwrap();
    ul.ip(["link", "set", "ul1", "up"]).unwrap();
    for (h, octet) in [("h1", 1), ("h2", 2), ("h3", 3)] {
        second_nic_with_the_default_route(&c, h, octet);
    }

    // A pattern on addresses (the first pattern matches nothing), and the
    // interface of the route to the etcd address.
    c.start_agent_with(
        "h1",
        &["--iface-regex", "^wlan", "--iface-regex", r"^192\.0\.2\."],
    )
    .unwrap();
    c.start_agent_with("h2", &["--iface-can-reach", "192.0.2.254"])
        .unwrap();
    let leases = c.wait_leases(2).unwrap();
    let ips: Vec<Ipv4Addr> = leases.values().map(|l| l.public_ip).collect();
    assert_eq!(
        ips.iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)].into(),
        "eth0's addresses, not eth1's (the default route's)"
    );
    c.wait_converged().unwrap();
    let ip1 = c.add_pod("h1", "p1").unwrap();
    let ip2 = c.add_pod("h2", "p2").unwrap();
    both_ways(&c, ip1, ip2, "over the picked interfaces");

    // h1's NIC is replaced by one of another name with its address: the
    // pattern on addresses picks it, and the data path moves onto it.
    let h1 = c.host("h1").unwrap();
    h1.ns().ip(["link", "del", IFNAME]).unwrap();
    let addr: Ipv4Net = "192.0.2.1/24".parse().unwrap();
    c.plug_nic(h1.ns(), "ens9", "h1", addr, "ul0").unwrap();
    both_ways(&c, ip1, ip2, "after h1's NIC was replaced by ens9");
    assert_eq!(vxlan_lower(&c, "h1"), "\"ens9\"", "{VXLAN_DEV} rides ens9");

    // Nothing matches: refused, naming the flag.
    c.start_agent_with("h3", &["--iface-regex", "^wlan"])
        .unwrap();
    let start = std::time::Instant::now();
    while c.agent_running("h3") {
        assert!(
            start.elapsed() < HEAL,
            "h3's agent still runs\n{}",
            c.agent_log_tail("h3")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = c.agent_log("h3").unwrap();
    assert!(
        log.contains("no interface matches --iface-regex ^wlan"),
        "{log}"
    );
}

#[test]
fn with_public_ip_given_a_renumbering_is_reported_not_followed() {
    if !require_cluster() {
        return;
    }
    let addr = format!("127.0.0.1:{HEALTH_PORT}");
    let mut c = Cluster::builder()
        .hosts(1)
        .resync_interval(RESYNC_SECS)
        .agent_args(["--healthz-addr", &addr])
        .build()
        .unwrap();
    c.start_agent_with("h1", &["--public-ip", "192.0.2.1"])
        .unwrap();
    let subnet = c.wait_subnet_file("h1").unwrap().node_subnet();
    wait_readyz(&c, "h1", "ready", |s, _| s == 200);
    let lease = c.lease(subnet).unwrap();

    let ns = c.host("h1").unwrap().ns();
    ns.ip(["addr", "del", "192.0.2.1/24", "dev", IFNAME])
        .unwrap();
    ns.ip(["addr", "add", "192.0.2.101/24", "dev", IFNAME])
        .unwrap();
    wait_readyz(&c, "h1", "names --public-ip", |s, b| {
        s == 503 && b.contains("no longer holds --public-ip")
    });
    assert_eq!(
        c.lease(subnet).unwrap(),
        lease,
        "the lease keeps the flag's IP"
    );

    // The address comes back: ready again, said once each way.
    ns.ip(["addr", "add", "192.0.2.1/24", "dev", IFNAME])
        .unwrap();
    wait_readyz(&c, "h1", "ready again", |s, _| s == 200);
    let log = c.agent_log("h1").unwrap();
    assert_eq!(count(&log, "no longer holds --public-ip"), 1, "{log}");
    assert_eq!(count(&log, "holds --public-ip again"), 1, "{log}");
    assert_eq!(count(&log, "writing our lease again"), 0, "{log}");
}
