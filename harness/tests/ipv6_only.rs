//! IPv6-only clusters (`EnableIPv4: false`) on an IPv6-only underlay, end
//! to end: no IPv4 address in any namespace (underlay, hosts, pods; not
//! even loopback's), etcd on `[2001:db8::fe]`, flannel's IPv6-only leases
//! (`0.0.0.0-0&<v6>-<len>`), the subnet file with IPv6 keys only, pods with
//! an IPv6 address only from the real CNI plugin; with VXLAN (`twill6.1`,
//! MTU underlay - 70) and with host-gw (routes via the peers' PublicIPv6).
//! Each backend: 3 hosts x 2 pods all pairs, a 4th host joins, an agent
//! restarted under 10 ms pings loses nothing, a lease deleted from etcd
//! takes its entries off the other hosts.
//!
//! Needs root, `ip`, `bridge`, `etcd`, `etcdctl`, `ping` and the workspace
//! binaries; under `CI=true` a missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::time::Duration;

use ipnet::Ipv6Net;
use twill_harness::cluster::{
    IPV6_ONLY_HOST_GW_CONFIG, IPV6_ONLY_VXLAN_CONFIG, UNDERLAY_IP6, VXLAN6_DEV,
};
use twill_harness::datapath6::wait_leases_held6;
use twill_harness::pinger::Pinger;
use twill_harness::wait::wait_for;
use twill_harness::{require_cluster, Cluster};

/// The underlay's MTU (veth default) and what VXLAN over IPv6 leaves of it.
const UNDERLAY_MTU: u64 = 1500;
const VXLAN6_OVERHEAD: u64 = 70;
const PODS_PER_HOST: usize = 2;
const PING_DEADLINE: Duration = Duration::from_secs(5);
/// How long the VXLAN entries may take to follow the leases.
const VXLAN_ENTRIES: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Backend {
    Vxlan,
    HostGw,
}

impl Backend {
    fn config(self) -> &'static str {
        match self {
            Backend::Vxlan => IPV6_ONLY_VXLAN_CONFIG,
            Backend::HostGw => IPV6_ONLY_HOST_GW_CONFIG,
        }
    }
    fn lease_type(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::HostGw => "host-gw",
        }
    }
}

#[test]
fn ipv6_only_vxlan_cluster_end_to_end() {
    if !require_cluster() {
        return;
    }
    scenario(Backend::Vxlan);
}

#[test]
fn ipv6_only_host_gw_cluster_end_to_end() {
    if !require_cluster() {
        return;
    }
    scenario(Backend::HostGw);
}

/// DirectRouting over an IPv6-only underlay: h1 and h2 share the underlay
/// prefix `2001:db8::/64` and route to each other via their `PublicIPv6`;
/// h3, on the same wire but in `2001:db8:0:1::/64`, is reached through
/// `twill6.1`. Pods on all three reach each other.
#[test]
fn ipv6_only_direct_routing_routes_on_link_peers_directly() {
    if !require_cluster() {
        return;
    }
    let config = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let mut c = Cluster::builder()
        .ipv6_only(true)
        .network_config(config)
        .hosts(2)
        .build()
        .unwrap();
    let h3_net: Ipv6Net = "2001:db8:0:1::3/64".parse().unwrap();
    let h3 = c.add_host_at(h3_net, "ul0").unwrap();
    // One wire, two prefixes: each side (etcd's namespace too) reaches the
    // other prefix on-link.
    c.underlay()
        .ip(["-6", "route", "add", "2001:db8:0:1::/64", "dev", "ul0"])
        .unwrap();
    for (h, other) in [
        ("h1", "2001:db8:0:1::/64"),
        ("h2", "2001:db8:0:1::/64"),
        (h3.as_str(), "2001:db8::/64"),
    ] {
        c.host(h)
            .unwrap()
            .ns()
            .ip(["-6", "route", "add", other, "dev", "eth0"])
            .unwrap();
    }
    c.start_agents().unwrap();
    c.wait_leases6(3).unwrap();
    let s = |h: &str| c.wait_subnet6(h).unwrap();
    let ip6 = |h: &str| c.host(h).unwrap().ipv6().unwrap();
    let want = |from: &str| -> BTreeMap<Ipv6Net, (String, Ipv6Addr)> {
        let mut m = BTreeMap::new();
        for to in ["h1", "h2", h3.as_str()].into_iter().filter(|t| *t != from) {
            let on_link = from != h3 && to != h3;
            let via = match on_link {
                true => ("eth0".to_owned(), ip6(to)),
                false => (VXLAN6_DEV.to_owned(), s(to).network()),
            };
            m.insert(s(to), via);
        }
        m
    };
    for h in ["h1", "h2", h3.as_str()] {
        let want = want(h);
        wait_for(
            &format!("{h}'s DirectRouting routes"),
            Duration::from_secs(30),
            || {
                let got: BTreeMap<Ipv6Net, (String, Ipv6Addr)> = c
                    .routes6(h)?
                    .into_iter()
                    .filter_map(|r| Some((r.dst, (r.dev, r.gateway?))))
                    .collect();
                Ok((got == want).then_some(()))
            },
            || format!("want {want:?}; routes {:?}", c.routes6(h)),
        )
        .unwrap();
    }
    add_pods(&mut c, &["h1", "h2", h3.as_str()]);
    assert_no_ipv4(&c, "with a host on another prefix");
    assert_all_pairs(&c, "DirectRouting, 3 hosts x 2 pods");
}

fn scenario(backend: Backend) {
    let mut c = Cluster::builder()
        .ipv6_only(true)
        .network_config(backend.config())
        .hosts(3)
        .build()
        .unwrap();
    assert!(c.is_ipv6_only());
    assert_eq!(
        c.etcd().endpoint(),
        format!("http://[{UNDERLAY_IP6}]:2379"),
        "etcd must listen on the underlay's IPv6 address"
    );
    assert_no_ipv4(&c, "before the agents start");

    c.start_agents().unwrap();
    c.wait_converged6().unwrap();
    for h in ["h1", "h2", "h3"] {
        check_node(&c, h, backend);
    }
    check_leases(&c, backend, 3);

    add_pods(&mut c, &["h1", "h2", "h3"]);
    assert_no_ipv4(&c, "with 3 hosts and their pods");
    assert_all_pairs(&c, "3 hosts x 2 pods");

    // A 4th host joins: every host routes to it, its pods reach everyone.
    let h4 = c.add_host().unwrap();
    c.start_agent(&h4).unwrap();
    c.wait_converged6().unwrap();
    check_node(&c, &h4, backend);
    check_leases(&c, backend, 4);
    add_pods(&mut c, &[&h4]);
    assert_no_ipv4(&c, "after the 4th host joined");
    assert_all_pairs(&c, "4 hosts x 2 pods");

    restart_under_pings(&mut c);
    lease_deleted(&mut c, backend, &h4);
}

/// No namespace of the cluster has an IPv4 address, loopback included.
fn assert_no_ipv4(c: &Cluster, when: &str) {
    let found: Vec<(String, Vec<String>)> = c
        .ipv4_addresses_everywhere()
        .unwrap()
        .into_iter()
        .filter(|(_, addrs)| !addrs.is_empty())
        .collect();
    assert!(found.is_empty(), "IPv4 addresses {when}: {found:?}");
}

fn add_pods(c: &mut Cluster, hosts: &[&str]) {
    for h in hosts {
        let s6 = c.subnet6_of(h).unwrap();
        for i in 1..=PODS_PER_HOST {
            let name = format!("{h}p{i}");
            let ip6 = c.add_pod6(h, &name).unwrap();
            assert!(s6.contains(&ip6), "{name} got {ip6}, not in {h}'s {s6}");
            let pod = c.pod(&name).unwrap();
            assert_eq!(
                pod.cidr(),
                twill_contract::lease_key::V6_ONLY_V4,
                "{name} got an IPv4 address from the CNI plugin"
            );
            // Its default route is IPv6, through the node's gateway.
            let routes = pod.ns().ip(["-6", "route", "show", "default"]).unwrap();
            assert!(
                routes.contains(&format!("via {}", gateway6(s6))),
                "{name}: {routes}"
            );
        }
    }
}

fn assert_all_pairs(c: &Cluster, what: &str) {
    let failed = c.failed_pairs(PING_DEADLINE);
    assert!(
        failed.is_empty(),
        "{what}: IPv6 pings failed: {failed:?}\n{}",
        c.diagnostics()
    );
}

/// The node's gateway in its subnet (`<subnet>::1`), as the plugin and the
/// agent give it.
fn gateway6(s6: Ipv6Net) -> Ipv6Addr {
    twill_contract::gateway6_of(s6)
}

/// The node's own state: subnet file of IPv6 keys only, the devices and
/// the kernel entries of the backend toward every other lease.
fn check_node(c: &Cluster, host: &str, backend: Backend) {
    let h = c.host(host).unwrap();
    let file = std::fs::read_to_string(h.subnet_file_path()).unwrap();
    for key in ["TWILL_NETWORK=", "TWILL_SUBNET="] {
        assert!(!file.contains(key), "{host}: {key} in {file}");
    }
    assert!(
        file.contains("TWILL_IPV6_NETWORK=fd00:10:244::/48"),
        "{host}: {file}"
    );
    let mtu = match backend {
        Backend::Vxlan => UNDERLAY_MTU - VXLAN6_OVERHEAD,
        Backend::HostGw => UNDERLAY_MTU,
    };
    assert!(file.contains(&format!("TWILL_MTU={mtu}")), "{host}: {file}");

    let links = h.ns().link_names().unwrap();
    assert!(
        !links.iter().any(|l| l == "twill.1"),
        "{host} has an IPv4 VTEP: {links:?}"
    );
    match backend {
        Backend::Vxlan => {
            let link: serde_json::Value =
                serde_json::from_str(&h.ns().ip(["-d", "-j", "link", "show", VXLAN6_DEV]).unwrap())
                    .unwrap();
            assert_eq!(link[0]["mtu"], mtu, "{host}: {link}");
        }
        Backend::HostGw => assert!(
            !links.iter().any(|l| l.starts_with("twill6.")),
            "{host}: host-gw made a VTEP: {links:?}"
        ),
    }
    // wait_converged6 has matched the routes to the leases; the VXLAN
    // entries behind them must be there too.
    if backend == Backend::Vxlan {
        wait_leases_held6(c, host, VXLAN_ENTRIES, "converged").unwrap();
    }
}

/// The leases: flannel's IPv6-only key, `PublicIP` 0.0.0.0, the host's
/// IPv6 underlay address, one per host, each inside the cluster network.
fn check_leases(c: &Cluster, backend: Backend, n: usize) {
    let leases = c.wait_leases6(n).unwrap();
    let network6: Ipv6Net = "fd00:10:244::/48".parse().unwrap();
    let keys = c.lease_keys().unwrap();
    for (s6, lease) in &leases {
        assert!(network6.contains(s6) && s6.prefix_len() == 64, "{s6}");
        assert!(
            keys.contains(&c.lease_key6(*s6)),
            "no key {} in {keys:?}",
            c.lease_key6(*s6)
        );
        assert!(lease.public_ip.is_unspecified(), "{s6}: {lease:?}");
        assert_eq!(lease.backend_type.as_deref(), Some(backend.lease_type()));
        let ip6 = lease.public_ipv6.unwrap();
        let host = c
            .hosts()
            .iter()
            .find(|h| h.ipv6() == Some(ip6))
            .unwrap_or_else(|| panic!("{s6}: PublicIPv6 {ip6} is no host's"));
        assert_eq!(c.subnet6_of(host.name()).unwrap(), *s6, "{lease:?}");
        if backend == Backend::Vxlan {
            let mac = lease
                .backend_v6_data
                .as_ref()
                .and_then(|b| b.vtep_mac.clone());
            assert!(mac.is_some(), "{s6}: no IPv6 VTEP MAC: {lease:?}");
        }
    }
    assert_eq!(keys.len(), n, "{keys:?}");
}

/// h1's agent stopped and started while a pod on h1 pings one on h2 every
/// 10 ms: nothing lost, the same subnet and routes after.
fn restart_under_pings(c: &mut Cluster) {
    let target = c.pod_ip6("h2p1").unwrap();
    let before = c.subnet6_of("h1").unwrap();
    let ping = Pinger::start(c.pod("h1p1").unwrap().ns(), target, 800, 10).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let status = c.stop_agent("h1").unwrap();
    assert!(status.success(), "twilld on h1 exited with {status}");
    c.start_agent("h1").unwrap();
    c.wait_converged6().unwrap();
    let summary = ping.finish().unwrap();
    assert_eq!(summary.transmitted, 800, "ping ended early: {summary:?}");
    assert_eq!(
        summary.lost(),
        0,
        "packets lost across the restart: {summary:?}\n{}",
        c.agent_log_tail("h1")
    );
    assert_eq!(c.subnet6_of("h1").unwrap(), before, "subnet changed");
    assert_all_pairs(c, "after the restart");
}

/// `host`'s agent stopped (so it cannot write its lease back) and its lease
/// deleted from etcd: the others drop its route (and VXLAN entries) and
/// its pods become unreachable; the others still reach each other.
fn lease_deleted(c: &mut Cluster, backend: Backend, host: &str) {
    let s6 = c.subnet6_of(host).unwrap();
    let ip6 = c.host(host).unwrap().ipv6().unwrap();
    let status = c.stop_agent(host).unwrap();
    assert!(status.success(), "twilld on {host} exited with {status}");
    // The stopped agent left its lease (and the others their entries).
    assert!(c.leases6().unwrap().contains_key(&s6));
    let others: Vec<String> = c
        .hosts()
        .iter()
        .map(|h| h.name().to_owned())
        .filter(|h| h != host)
        .collect();
    let far = c.pod_ip6(&format!("{host}p1")).unwrap();
    assert!(c.ping("h1p1", far), "h1p1 -> {far} before the deletion");

    assert_eq!(c.etcd().del(&c.lease_key6(s6)).unwrap(), 1);
    for h in &others {
        // The expected routes follow etcd, which no longer has the lease.
        let routes = c.wait_routes6(h).unwrap();
        assert!(
            routes.iter().all(|r| r.dst != s6 && r.gateway != Some(ip6)),
            "{h} still routes to {s6}: {routes:?}"
        );
        if backend == Backend::Vxlan {
            // Exactly the remaining leases' entries: none for s6 or ip6.
            wait_leases_held6(c, h, VXLAN_ENTRIES, "a lease deleted").unwrap();
        }
    }
    assert!(
        !c.ping_within("h1p1", far, Duration::from_secs(2)),
        "h1p1 still reaches {far} with {host}'s lease gone"
    );
    // The pods of the remaining hosts still reach each other.
    let names: Vec<String> = c
        .pods()
        .iter()
        .filter(|p| p.host() != host)
        .map(|p| p.name().to_owned())
        .collect();
    for from in &names {
        for to in names.iter().filter(|t| *t != from) {
            let ip = c.pod_ip6(to).unwrap();
            assert!(c.ping(from, ip), "{from} -> {to} ({ip}) after the deletion");
        }
    }
}
