//! The underlay of an IPv6-only node (step 1 of docs/design.md's "IPv6-only
//! clusters"): the interface `--iface` / `--iface-regex` names (by name or
//! IPv6 address), else the one of the IPv6 default route, and its address
//! `--public-ipv6`, else its first global IPv6 address. Pure, like
//! [`super::underlay::choose`], from the same snapshot.
//!
//! The agent finds an IPv6-only node's underlay with it, at start and
//! when following the underlay (`Datapath::select_underlay6`).

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;

use super::underlay::{select_link, Snapshot, UnderlaySelect};
use crate::kernel::KernelError;

/// Why `ip` cannot be a node's IPv6 underlay address, if it cannot: other
/// nodes could not reach it there.
pub fn unusable_underlay_address6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if is_link_local(ip) {
        Some("link-local")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("IPv4-mapped")
    } else {
        None
    }
}

/// fe80::/10.
fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The IPv6 underlay found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found6 {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    /// The public IPv6 address with the prefix of the underlay subnet it
    /// sits in (a /128 when the address is not configured on the link).
    pub net: Ipv6Net,
    /// Whether the interface holds the public address.
    pub on_iface: bool,
}

impl Found6 {
    pub fn ip(&self) -> Ipv6Addr {
        self.net.addr()
    }
}

/// Picks an IPv6-only node's underlay: the interface `select` names (or
/// the IPv6 default route's) and `public_ipv6`, or its first global IPv6
/// address. Errors as [`super::underlay::choose`]'s: no match, no address
/// (`NoAddress`, which the agent waits out), an unusable one.
pub fn choose_ipv6(
    select: &UnderlaySelect,
    public_ipv6: Option<Ipv6Addr>,
    snap: &Snapshot,
) -> Result<Found6, KernelError> {
    let link = select_link(select, snap, true)?;
    let unusable = |why: String| KernelError::UnusableUnderlay {
        iface: link.link.name.clone(),
        why,
    };
    if link.link.loopback {
        return Err(unusable(format!(
            "{} is the loopback interface",
            link.link.name
        )));
    }
    let (net, on_iface) = match public_ipv6 {
        Some(ip) => match link.v6.iter().find(|n| n.addr() == ip) {
            Some(n) => (*n, true),
            None => (Ipv6Net::from(ip), false),
        },
        None => (
            *link
                .v6
                .iter()
                .find(|n| unusable_underlay_address6(n.addr()).is_none())
                .ok_or_else(|| KernelError::NoAddress6(link.link.name.clone()))?,
            true,
        ),
    };
    if let Some(kind) = unusable_underlay_address6(net.addr()) {
        return Err(unusable(format!("its address {} is {kind}", net.addr())));
    }
    Ok(Found6 {
        name: link.link.name.clone(),
        index: link.link.index,
        mtu: link.link.mtu.unwrap_or(1500),
        net,
        on_iface,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::underlay::LinkAddrs;

    use crate::agent::underlay::tests::select as select3;

    fn link(index: u32, name: &str, v6: &[&str]) -> LinkAddrs {
        LinkAddrs {
            v6: v6.iter().map(|s| s.parse().unwrap()).collect(),
            ..crate::agent::underlay::tests::link(index, name, &[])
        }
    }

    /// No IPv4 anywhere: lo at ::1, eth0 with a link-local then
    /// 2001:db8::1, eth1 with 2001:db8:1::1 and ::2, ens5 link-local only.
    fn node(route6_oif: Option<u32>) -> Snapshot {
        Snapshot {
            links: vec![
                link(1, "lo", &["::1/128"]),
                link(2, "eth0", &["fe80::1/64", "2001:db8::1/64"]),
                link(3, "eth1", &["2001:db8:1::1/64", "2001:db8:1::2/64"]),
                link(4, "ens5", &["fe80::4/64"]),
            ],
            route_oif: None,
            route6_oif,
        }
    }

    fn select(ifaces: &[&str], regexes: &[&str]) -> UnderlaySelect {
        select3(ifaces, regexes, None)
    }

    fn chosen(s: &UnderlaySelect, snap: &Snapshot) -> (String, String) {
        let f = choose_ipv6(s, None, snap).unwrap();
        (f.name.clone(), f.ip().to_string())
    }

    fn pair(a: &str, b: &str) -> (String, String) {
        (a.into(), b.into())
    }

    #[test]
    fn without_flags_the_ipv6_default_route_picks_its_first_global_address() {
        let s = UnderlaySelect::default();
        assert_eq!(chosen(&s, &node(Some(2))), pair("eth0", "2001:db8::1"));
        let f = choose_ipv6(&s, None, &node(Some(2))).unwrap();
        assert_eq!((f.index, f.mtu, f.on_iface), (2, 1500, true));
        assert_eq!(f.net.prefix_len(), 64);
        let e = choose_ipv6(&s, None, &node(None)).unwrap_err();
        assert!(matches!(e, KernelError::NoDefaultRoute6), "{e}");
        assert!(e.to_string().contains("IPv6 default route"), "{e}");
        // Missing, not misconfigured: the agent waits for it.
        assert!(super::super::underlay::is_missing(&e));
    }

    #[test]
    fn iface_by_name_or_ipv6_address_and_regex_on_ipv6_addresses() {
        let snap = node(Some(2));
        assert_eq!(
            chosen(&select(&["eth9", "eth1"], &[]), &snap),
            pair("eth1", "2001:db8:1::1")
        );
        assert_eq!(chosen(&select(&["2001:db8:1::2"], &[]), &snap).0, "eth1");
        assert_eq!(chosen(&select(&[], &["^2001:db8:1:"]), &snap).0, "eth1");
        assert!(matches!(
            choose_ipv6(&select(&["eth9"], &[]), None, &snap),
            Err(KernelError::NoSuchLink(n)) if n == "eth9"
        ));
    }

    #[test]
    fn public_ipv6_picks_the_address_on_or_off_the_interface() {
        let snap = node(Some(3));
        let s = UnderlaySelect::default();
        let on: Ipv6Addr = "2001:db8:1::2".parse().unwrap();
        let f = choose_ipv6(&s, Some(on), &snap).unwrap();
        assert_eq!((f.ip(), f.net.prefix_len(), f.on_iface), (on, 64, true));
        let off: Ipv6Addr = "2001:db8:9::9".parse().unwrap();
        let f = choose_ipv6(&s, Some(off), &snap).unwrap();
        assert_eq!((f.ip(), f.net.prefix_len(), f.on_iface), (off, 128, false));
    }

    #[test]
    fn a_link_with_only_link_local_addresses_has_no_address_yet() {
        let e = choose_ipv6(&select(&["ens5"], &[]), None, &node(None)).unwrap_err();
        assert!(
            matches!(&e, KernelError::NoAddress6(n) if n == "ens5"),
            "{e}"
        );
        assert!(super::super::underlay::is_missing(&e));
    }

    #[test]
    fn unusable_addresses_and_loopback_are_refused_naming_them() {
        let snap = node(Some(2));
        let ll: Ipv6Addr = "fe80::1".parse().unwrap();
        let e = choose_ipv6(&UnderlaySelect::default(), Some(ll), &snap).unwrap_err();
        assert!(e.to_string().contains("link-local"), "{e}");
        let e = choose_ipv6(&select(&["lo"], &[]), None, &snap).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        for (ip, kind) in [
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("ff02::1", "multicast"),
            ("::ffff:192.0.2.1", "IPv4-mapped"),
        ] {
            assert_eq!(
                unusable_underlay_address6(ip.parse().unwrap()),
                Some(kind),
                "{ip}"
            );
        }
        assert_eq!(
            unusable_underlay_address6("2001:db8::1".parse().unwrap()),
            None
        );
    }

    #[test]
    fn the_ipv4_choice_ignores_ipv6_addresses() {
        // The same --iface given as an IPv6 address finds nothing for an
        // IPv4 underlay, as before.
        let e =
            super::super::underlay::choose(&select(&["2001:db8::1"], &[]), None, &node(Some(2)))
                .unwrap_err();
        assert!(matches!(e, KernelError::NoSuchLink(_)), "{e}");
    }
}
