//! An IPv6-only node's underlay, found in a real namespace with no IPv4
//! address at all (step 1 of docs/design.md's "IPv6-only clusters"): the
//! kernel's snapshot carries the links' IPv6 addresses and the IPv6
//! default route, and `choose_ipv6` picks from it. The agent does not run
//! IPv6-only yet (it refuses `EnableIPv4: false`); this is the part of the
//! underlay choice that is done.

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

#[test]
fn an_ipv6_only_node_finds_its_underlay_by_default_route_name_or_address() {
    if !gate() {
        return;
    }
    let ns = Netns::unique("u6").unwrap();
    let peer = Netns::unique("u6p").unwrap();
    for (dev, p) in [("eth0", "p0"), ("eth1", "p1")] {
        ns.ip(["link", "add", dev, "type", "veth", "peer", "name", p])
            .unwrap();
        ns.ip(["link", "set", p, "netns", peer.name()]).unwrap();
        peer.ip(["link", "set", p, "up"]).unwrap();
    }
    for (dev, addr) in [("eth0", "2001:db8::1/64"), ("eth1", "2001:db8:1::1/64")] {
        ns.ip(["-6", "addr", "add", addr, "dev", dev, "nodad"])
            .unwrap();
        ns.ip(["link", "set", dev, "up"]).unwrap();
    }
    // No IPv4 address in the namespace but loopback's.
    let v4 = ns.ip(["-4", "-o", "addr", "show"]).unwrap();
    let v4: Vec<&str> = v4.lines().filter(|l| !l.contains(" lo ")).collect();
    assert!(v4.is_empty(), "{v4:?}");

    // No IPv6 default route yet: the default choice has nothing to go by.
    let e = choose_in(&ns, UnderlaySelect::default(), None).unwrap_err();
    assert!(matches!(e, KernelError::NoDefaultRoute), "{e}");

    ns.ip([
        "-6",
        "route",
        "add",
        "default",
        "via",
        "2001:db8::fe",
        "dev",
        "eth0",
    ])
    .unwrap();
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
        matches!(&e, KernelError::NoAddress(n) if n == "eth1"),
        "{e}"
    );
}
