//! The parts of an IPv6-only node (`EnableIPv4: false`) that are done, in
//! real namespaces without IPv4 (steps 1, 2, 4 and 5 of docs/design.md's
//! "IPv6-only clusters", below the agent): the underlay found from the
//! kernel's snapshot (IPv6 addresses, IPv6 default route) by `choose_ipv6`;
//! the devices of `Plan::ipv6_only` (bridge with the IPv6 gateway only,
//! `twill6.<VNI>`, no `twill.<VNI>`) with the IPv6 entries of
//! `remote_nodes6`/`desired_state6` applied; ip-masq with the IPv6 table
//! only. The agent runs them (harness/tests/ipv6_only.rs is the cluster
//! test); this file checks each part on its own against a real kernel.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv6Addr;

use twill::agent::underlay::UnderlaySelect;
use twill::agent::underlay6::choose_ipv6;
use twill::kernel::{Kernel, KernelError};
use twill_harness::capture::in_netns;
use twill_harness::{Netns, Prereqs};

fn gate() -> bool {
    Prereqs::new().root().tools(&["ip"]).require()
}

/// Runs `choose_ipv6` on the snapshot read inside `ns`.
fn choose_in(
    ns: &Netns,
    select: UnderlaySelect,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<twill::agent::underlay6::Found6, KernelError> {
    in_netns(&ns.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(async {
            let k = Kernel::connect()?;
            let snap = k
                .underlay_snapshot(select.can_reach, select.by_default_route())
                .await?;
            choose_ipv6(&select, public_ipv6, &snap)
        }))
    })
    .unwrap()
}

/// A namespace (`role`) whose links are veths named by `links`, each with
/// only the IPv6 address given and up (their peers, up, in the second
/// namespace returned).
fn v6_only_node(role: &str, links: &[(&str, &str)]) -> (Netns, Netns) {
    let ns = Netns::unique(role).unwrap();
    let peer = Netns::unique(&format!("{role}p")).unwrap();
    for (i, (dev, addr)) in links.iter().enumerate() {
        let p = format!("p{i}");
        ns.ip(["link", "add", dev, "type", "veth", "peer", "name", &p])
            .unwrap();
        ns.ip(["link", "set", &p, "netns", peer.name()]).unwrap();
        peer.ip(["link", "set", &p, "up"]).unwrap();
        ns.ip(["-6", "addr", "add", addr, "dev", dev, "nodad"])
            .unwrap();
        ns.ip(["link", "set", dev, "up"]).unwrap();
    }
    (ns, peer)
}

/// An IPv6 default route out of `eth0`.
fn default_route6(ns: &Netns) {
    let via = ["-6", "route", "add", "default", "via", "2001:db8::fe"];
    ns.ip(via.iter().chain(&["dev", "eth0"])).unwrap();
}

#[test]
fn an_ipv6_only_node_finds_its_underlay_by_default_route_name_or_address() {
    if !gate() {
        return;
    }
    let (ns, _peer) = v6_only_node(
        "u6",
        &[("eth0", "2001:db8::1/64"), ("eth1", "2001:db8:1::1/64")],
    );
    // No IPv4 address in the namespace but loopback's.
    let v4 = ns.ip(["-4", "-o", "addr", "show"]).unwrap();
    let v4: Vec<&str> = v4.lines().filter(|l| !l.contains(" lo ")).collect();
    assert!(v4.is_empty(), "{v4:?}");

    // No IPv6 default route yet: the default choice has nothing to go by.
    let e = choose_in(&ns, UnderlaySelect::default(), None).unwrap_err();
    assert!(matches!(e, KernelError::NoDefaultRoute6), "{e}");

    default_route6(&ns);
    let f = choose_in(&ns, UnderlaySelect::default(), None).unwrap();
    assert_eq!(f.name, "eth0");
    assert_eq!(f.net, "2001:db8::1/64".parse().unwrap());
    assert!(f.on_iface);

    // --iface by name, then by IPv6 address.
    let f = choose_in(&ns, UnderlaySelect::named(Some("eth1")), None).unwrap();
    assert_eq!(
        (f.name.as_str(), f.ip()),
        ("eth1", "2001:db8:1::1".parse().unwrap())
    );
    let by_addr = UnderlaySelect {
        ifaces: vec!["2001:db8:1::1".into()],
        ..Default::default()
    };
    assert_eq!(choose_in(&ns, by_addr, None).unwrap().name, "eth1");

    // --public-ipv6 on the interface, and off it (NAT): kept as given.
    let on: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let f = choose_in(&ns, UnderlaySelect::default(), Some(on)).unwrap();
    assert_eq!((f.ip(), f.on_iface), (on, true));
    let off: Ipv6Addr = "2001:db8:77::1".parse().unwrap();
    let f = choose_in(&ns, UnderlaySelect::default(), Some(off)).unwrap();
    assert_eq!((f.ip(), f.on_iface, f.net.prefix_len()), (off, false, 128));

    // The global address gone: only the link-local one is left, which is
    // no underlay address; the agent would wait.
    ns.ip(["-6", "addr", "del", "2001:db8:1::1/64", "dev", "eth1"])
        .unwrap();
    ns.ip(["-6", "addr", "add", "fe80::99/64", "dev", "eth1", "nodad"])
        .unwrap();
    let e = choose_in(&ns, UnderlaySelect::named(Some("eth1")), None).unwrap_err();
    assert!(
        matches!(&e, KernelError::NoAddress6(n) if n == "eth1"),
        "{e}"
    );
}

/// A v6-only lease of `s6` as the plan publishes it.
fn lease6(s6: &str, attrs: subnet_allocator::LeaseAttrs) -> subnet_allocator::Lease {
    subnet_allocator::Lease {
        subnet: "0.0.0.0/0".parse().unwrap(),
        ipv6_subnet: Some(s6.parse().unwrap()),
        attrs,
        lease_id: Some(1),
        ttl_remaining: None,
    }
}

#[test]
fn an_ipv6_only_node_gets_its_devices_and_ipv6_entries_only() {
    use twill::agent::plan::Plan;
    use twill::datapath::{Datapath, NetlinkDatapath};
    use twill::reconcile::ipv6_only::{desired_state6, remote_nodes6, Local6};
    use twill::reconcile::{diff, Mac, Mode};

    if !gate() {
        return;
    }
    let (ns, _peer) = v6_only_node("d6", &[("eth0", "2001:db8::1/64")]);
    default_route6(&ns);

    let cfg = subnet_allocator::NetworkConfig::parse(
        br#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let (desired, after) = in_netns(&ns.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let r: Result<_, Box<dyn std::error::Error + Send + Sync>> = rt.block_on(async {
            let dp = NetlinkDatapath::connect()?;
            let k = Kernel::connect()?;
            let snap = k.underlay_snapshot(None, true).await?;
            let found = choose_ipv6(&UnderlaySelect::default(), None, &snap)?;
            let underlay = twill::kernel::Underlay {
                name: found.name.clone(),
                index: found.index,
                mtu: found.mtu,
                ip: std::net::Ipv4Addr::UNSPECIFIED,
                net: "0.0.0.0/32".parse()?,
            };
            let plan = Plan::ipv6_only(&cfg, &underlay, found.ip())?;
            let own = lease6("fd00:10:244:5::/64", plan.attrs.clone());
            let spec = plan.devices(&cfg, "twill0", &own);
            let dev = dp.ensure_devices(&spec).await?;
            let mut peer_attrs = plan.attrs.clone();
            let peer_ip: Ipv6Addr = "2001:db8:9::7".parse()?;
            peer_attrs.public_ipv6 = Some(peer_ip);
            let peer_mac = Mac::for_vtep6(peer_ip, 1);
            if let Some(d) = peer_attrs.backend_v6_data.as_mut() {
                d.vtep_mac = peer_mac.to_string();
            }
            let local = Local6 {
                network6: "fd00:10:244::/48".parse()?,
                subnet6: "fd00:10:244:5::/64".parse()?,
                underlay6: found.net,
                mode: plan.mode,
            };
            assert_eq!(
                plan.mode,
                Mode::Vxlan {
                    direct_routing: false
                }
            );
            let leases = [own, lease6("fd00:10:244:7::/64", peer_attrs)];
            let (nodes, skipped) = remote_nodes6(&local, &leases);
            assert!(skipped.is_empty(), "{skipped:?}");
            let desired = desired_state6(&nodes);
            for op in diff(&desired, &dp.read_state(&dev).await?) {
                dp.apply(&dev, &op).await?;
            }
            let after = dp.read_state(&dev).await?;
            Ok((desired, after))
        });
        r.map_err(std::io::Error::other)
    })
    .unwrap();
    // What was applied is what the kernel holds, and diff finds nothing.
    assert_eq!(diff(&desired, &after), vec![]);
    assert_eq!(desired.routes.len(), 1);

    // The devices, seen by ip: no IPv4 anywhere on them, no twill.1.
    let links = ns.link_names().unwrap();
    assert!(links.contains(&"twill6.1".to_string()), "{links:?}");
    assert!(!links.contains(&"twill.1".to_string()), "{links:?}");
    let br = ns.ip(["addr", "show", "dev", "twill0"]).unwrap();
    assert!(br.contains("inet6 fd00:10:244:5::1/64"), "{br}");
    assert!(!br.contains("inet "), "{br}");
    let gw6: Ipv6Addr = "fd00:10:244:5::1".parse().unwrap();
    let mac = twill::reconcile::Mac::for_bridge6(gw6).to_string();
    assert!(br.contains(&format!("link/ether {mac}")), "{br}");
    let vx = ns.ip(["-d", "addr", "show", "dev", "twill6.1"]).unwrap();
    assert!(vx.contains("mtu 1430"), "{vx}");
    assert!(vx.contains("local 2001:db8::1"), "{vx}");
    assert!(vx.contains("inet6 fd00:10:244:5::/128"), "{vx}");
    assert!(!vx.contains("inet "), "{vx}");
    let r6 = ns.ip(["-6", "route", "show", "dev", "twill6.1"]).unwrap();
    assert!(
        r6.contains("fd00:10:244:7::/64 via fd00:10:244:7::"),
        "{r6}"
    );
    let fdb = ns
        .exec_ok(&["bridge", "fdb", "show", "dev", "twill6.1"])
        .unwrap();
    assert!(fdb.contains("dst 2001:db8:9::7"), "{fdb}");
    let r4 = ns.ip(["-4", "route", "show"]).unwrap();
    assert!(r4.trim().is_empty(), "{r4}");
}

#[test]
fn ip_masq_of_an_ipv6_only_cluster_has_the_ipv6_table_only() {
    use twill::masq::{apply, in_place, Networks};

    if !Prereqs::new().root().tools(&["ip", "nft"]).require() {
        return;
    }
    let ns = Netns::unique("m6").unwrap();
    let dual = Networks {
        v4: Some("10.244.0.0/16".parse().unwrap()),
        v6: Some("fd00:10:244::/48".parse().unwrap()),
    };
    let v6_only = Networks { v4: None, ..dual };
    let (before, after, dual_after) = in_netns(&ns.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let r: Result<_, twill::masq::MasqError> = rt.block_on(async {
            // A dual-stack run left both tables; the IPv6-only one keeps
            // only its own.
            apply(&dual).await?;
            let before = in_place(&v6_only).await?;
            apply(&v6_only).await?;
            Ok((before, in_place(&v6_only).await?, in_place(&dual).await?))
        });
        r.map_err(std::io::Error::other)
    })
    .unwrap();
    assert!(!before, "the IPv4 table counts as not in place");
    assert!(after, "the IPv6 table in place, and no IPv4 one");
    assert!(!dual_after);
    let tables = ns.exec_ok(&["nft", "list", "tables"]).unwrap();
    assert!(tables.contains("table ip6 "), "{tables}");
    assert!(!tables.contains("table ip "), "{tables}");
    let rules = ns.exec_ok(&["nft", "list", "ruleset"]).unwrap();
    assert!(rules.contains("fd00:10:244::/48"), "{rules}");
}
