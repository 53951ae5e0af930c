//! Where the underlay is now: from the operator's choice (`--iface`,
//! `--iface-regex`, `--iface-can-reach`, `--public-ip`) and a snapshot of
//! the node's links, addresses and the route that matters, which interface
//! carries the tunnels and from which address; and which link and address
//! events may change that answer. Pure: the snapshot is read by
//! `kernel::Kernel::underlay_snapshot`, the events classified by
//! `kernel::classify_underlay_event`.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use regex::Regex;

use crate::kernel::{underlay_problem, KernelError, LinkInfoView, Underlay, UnderlayEvent};

/// How the operator picks the underlay interface, as flannel does. With
/// none of the three, the interface of the IPv4 default route.
#[derive(Debug, Clone, Default)]
pub struct UnderlaySelect {
    /// `--iface`, in order: a name, or an IPv4 address the interface
    /// holds. The first that matches wins.
    pub ifaces: Vec<String>,
    /// `--iface-regex`, in order, tried after `ifaces`: matched against
    /// each interface's name and its IPv4 addresses.
    pub regexes: Vec<Regex>,
    /// `--iface-can-reach`: the interface of the route to this address,
    /// tried last.
    pub can_reach: Option<Ipv4Addr>,
}

impl UnderlaySelect {
    /// `--iface name`, or nothing.
    pub fn named(iface: Option<&str>) -> Self {
        UnderlaySelect {
            ifaces: iface.map(str::to_string).into_iter().collect(),
            ..Default::default()
        }
    }

    /// Compiles `--iface-regex` patterns; the error names the flag and the
    /// pattern.
    pub fn compile(patterns: &[String]) -> Result<Vec<Regex>, String> {
        patterns
            .iter()
            .map(|p| Regex::new(p).map_err(|e| format!("--iface-regex {p:?}: {e}")))
            .collect()
    }

    /// Whether the default route picks the interface.
    pub fn by_default_route(&self) -> bool {
        self.ifaces.is_empty() && self.regexes.is_empty() && self.can_reach.is_none()
    }

    /// The flags given, for error messages: `--iface eth1, --iface-regex ^en`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self.ifaces.iter().map(|i| format!("--iface {i}")).collect();
        parts.extend(
            self.regexes
                .iter()
                .map(|r| format!("--iface-regex {}", r.as_str())),
        );
        parts.extend(self.can_reach.map(|a| format!("--iface-can-reach {a}")));
        parts.join(", ")
    }

    /// Whether a link called `name` is one the selection names (by name or
    /// pattern): its coming or going may change the choice.
    fn names(&self, name: &str) -> bool {
        self.ifaces.iter().any(|i| i == name) || self.regexes.iter().any(|r| r.is_match(name))
    }
}

/// One link of the node with its addresses, in the kernel's order.
#[derive(Debug, Clone, Default)]
pub struct LinkAddrs {
    pub link: LinkInfoView,
    pub v4: Vec<Ipv4Net>,
    /// Its IPv6 addresses (link-local ones too; an IPv6-only node's
    /// underlay is chosen from these, `super::underlay6`).
    pub v6: Vec<Ipv6Net>,
}

impl LinkAddrs {
    /// Whether the link holds `ip`, in the family `v6` says.
    fn holds(&self, ip: IpAddr, v6: bool) -> bool {
        match ip {
            IpAddr::V4(ip) if !v6 => self.v4.iter().any(|n| n.addr() == ip),
            IpAddr::V6(ip) if v6 => self.v6.iter().any(|n| n.addr() == ip),
            _ => false,
        }
    }

    /// Its addresses of the family `v6` says, as text (for `--iface-regex`).
    fn addresses(&self, v6: bool) -> Vec<String> {
        if v6 {
            self.v6.iter().map(|n| n.addr().to_string()).collect()
        } else {
            self.v4.iter().map(|n| n.addr().to_string()).collect()
        }
    }
}

/// What the choice is made from.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub links: Vec<LinkAddrs>,
    /// The output interface of the route to `--iface-can-reach`, or of the
    /// default route when no flag picks the interface.
    pub route_oif: Option<u32>,
    /// The output interface of the IPv6 default route, when no flag picks
    /// the interface (an IPv6-only node's default).
    pub route6_oif: Option<u32>,
}

/// The underlay found.
#[derive(Debug, Clone)]
pub struct Found {
    pub underlay: Underlay,
    /// Whether the interface holds the public IP (always, unless
    /// `--public-ip` names an address it does not have).
    pub on_iface: bool,
}

/// Picks the underlay: the interface `select` names (or the default
/// route's) and `public_ip`, or its first IPv4 address. Errors name what
/// is missing: no match for the flags, no address, an unusable one.
pub fn choose(
    select: &UnderlaySelect,
    public_ip: Option<Ipv4Addr>,
    snap: &Snapshot,
) -> Result<Found, KernelError> {
    let link = select_link(select, snap, false)?;
    let (net, on_iface) = match public_ip {
        Some(ip) => match link.v4.iter().find(|n| n.addr() == ip) {
            Some(n) => (*n, true),
            None => (Ipv4Net::from(ip), false),
        },
        None => (
            *link
                .v4
                .first()
                .ok_or_else(|| KernelError::NoAddress(link.link.name.clone()))?,
            true,
        ),
    };
    if let Some(why) = underlay_problem(&link.link, net.addr()) {
        return Err(KernelError::UnusableUnderlay {
            iface: link.link.name.clone(),
            why,
        });
    }
    Ok(Found {
        underlay: Underlay {
            name: link.link.name.clone(),
            index: link.link.index,
            mtu: link.link.mtu.unwrap_or(1500),
            ip: net.addr(),
            net,
        },
        on_iface,
    })
}

/// The link `select` names (or the default route's): by `--iface` (a name,
/// or an address of the family `v6` says), `--iface-regex` (on names and
/// those addresses), then `--iface-can-reach` (IPv4 only: not with `v6`).
pub(super) fn select_link<'a>(
    select: &UnderlaySelect,
    snap: &'a Snapshot,
    v6: bool,
) -> Result<&'a LinkAddrs, KernelError> {
    let by_index = |i: u32| snap.links.iter().find(|l| l.link.index == i);
    if select.by_default_route() {
        let oif = match v6 {
            true => snap.route6_oif.ok_or(KernelError::NoDefaultRoute6)?,
            false => snap.route_oif.ok_or(KernelError::NoDefaultRoute)?,
        };
        return by_index(oif).ok_or_else(|| KernelError::NoSuchLink(oif.to_string()));
    }
    let by_iface = select
        .ifaces
        .iter()
        .find_map(|want| match want.parse::<IpAddr>() {
            Ok(ip) => snap.links.iter().find(|l| l.holds(ip, v6)),
            Err(_) => snap.links.iter().find(|l| l.link.name == *want),
        });
    let by_regex = || {
        select.regexes.iter().find_map(|r| {
            snap.links
                .iter()
                .find(|l| r.is_match(&l.link.name) || l.addresses(v6).iter().any(|a| r.is_match(a)))
        })
    };
    let by_route = || {
        select
            .can_reach
            .filter(|_| !v6)
            .and(snap.route_oif)
            .and_then(by_index)
    };
    match by_iface.or_else(by_regex).or_else(by_route) {
        Some(l) => Ok(l),
        // One plain --iface keeps its plain message.
        None if select.ifaces.len() == 1
            && select.regexes.is_empty()
            && select.can_reach.is_none() =>
        {
            Err(KernelError::NoSuchLink(select.ifaces[0].clone()))
        }
        None => Err(KernelError::NoUnderlayMatch(select.describe())),
    }
}

/// Whether the underlay is missing rather than misconfigured: the
/// interface is gone or has no address yet. The agent waits for it.
pub fn is_missing(e: &KernelError) -> bool {
    matches!(
        e,
        KernelError::NoSuchLink(_)
            | KernelError::NoAddress(_)
            | KernelError::NoAddress6(_)
            | KernelError::NoUnderlayMatch(_)
            | KernelError::NoDefaultRoute
            | KernelError::NoDefaultRoute6
    )
}

/// Whether `ev` may change where the underlay is, given the interface in
/// use (`None` while it is missing): anything on that interface, any link
/// the selection names, and anything at all while the underlay is missing
/// or after events were lost.
pub fn concerns(select: &UnderlaySelect, current: Option<u32>, ev: &UnderlayEvent) -> bool {
    match (ev, current) {
        (UnderlayEvent::Lost, _) | (_, None) => true,
        (UnderlayEvent::Link { index, name }, Some(cur)) => {
            *index == cur || name.as_deref().is_some_and(|n| select.names(n))
        }
        (UnderlayEvent::Address { index }, Some(cur)) => *index == cur,
    }
}

/// What changed between the underlay in use and the one found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// Another interface (a NIC re-added gets a new index) or another MTU:
    /// the devices are planned again.
    pub link: bool,
    /// Another public IP: the lease and the VXLAN device follow.
    pub address: bool,
    /// Another global IPv6 address in a dual-stack cluster (set by the
    /// caller, who reads it): the lease and the IPv6 tunnel follow.
    pub address6: bool,
}

impl Change {
    pub fn between(old: &Underlay, new: &Underlay) -> Change {
        Change {
            link: old.index != new.index || old.mtu != new.mtu || old.name != new.name,
            address: old.ip != new.ip || old.net != new.net,
            address6: false,
        }
    }

    pub fn any(&self) -> bool {
        self.link || self.address || self.address6
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::agent) fn link(index: u32, name: &str, v4: &[&str]) -> LinkAddrs {
        LinkAddrs {
            link: LinkInfoView {
                index,
                name: name.into(),
                mtu: Some(1500),
                up: true,
                loopback: index == 1,
                ..Default::default()
            },
            v4: v4.iter().map(|s| s.parse().unwrap()).collect(),
            v6: Vec::new(),
        }
    }

    /// lo, eth0 at 192.0.2.1, eth1 at 198.18.0.1, ens5 without address.
    fn node(route_oif: Option<u32>) -> Snapshot {
        Snapshot {
            links: vec![
                link(1, "lo", &["127.0.0.1/8"]),
                link(2, "eth0", &["192.0.2.1/24"]),
                link(3, "eth1", &["198.18.0.1/15", "198.18.0.2/15"]),
                link(4, "ens5", &[]),
            ],
            route_oif,
            route6_oif: None,
        }
    }

    pub(in crate::agent) fn select(
        ifaces: &[&str],
        regexes: &[&str],
        can_reach: Option<&str>,
    ) -> UnderlaySelect {
        let patterns: Vec<String> = regexes.iter().map(|s| s.to_string()).collect();
        UnderlaySelect {
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            regexes: UnderlaySelect::compile(&patterns).unwrap(),
            can_reach: can_reach.map(|a| a.parse().unwrap()),
        }
    }

    fn chosen(s: &UnderlaySelect, snap: &Snapshot) -> (String, Ipv4Addr) {
        let f = choose(s, None, snap).unwrap();
        (f.underlay.name, f.underlay.ip)
    }

    #[test]
    fn without_flags_the_default_route_picks() {
        let s = UnderlaySelect::default();
        assert_eq!(chosen(&s, &node(Some(3))).0, "eth1");
        assert!(matches!(
            choose(&s, None, &node(None)),
            Err(KernelError::NoDefaultRoute)
        ));
    }

    #[test]
    fn the_first_iface_that_matches_wins() {
        let snap = node(Some(2));
        assert_eq!(
            chosen(&select(&["eth9", "eth1", "eth0"], &[], None), &snap).0,
            "eth1"
        );
        // An address names the interface that holds it.
        assert_eq!(chosen(&select(&["198.18.0.2"], &[], None), &snap).0, "eth1");
        // The first IPv4 address is the public IP.
        assert_eq!(
            chosen(&select(&["eth1"], &[], None), &snap).1,
            Ipv4Addr::new(198, 18, 0, 1)
        );
    }

    #[test]
    fn iface_regex_matches_names_or_addresses_after_iface() {
        let snap = node(Some(2));
        assert_eq!(chosen(&select(&[], &["^eth1$"], None), &snap).0, "eth1");
        assert_eq!(
            chosen(&select(&[], &[r"^198\.18\."], None), &snap).0,
            "eth1"
        );
        // Patterns in order: the first with a match wins.
        assert_eq!(
            chosen(&select(&[], &["^wl", "^eth"], None), &snap).0,
            "eth0"
        );
        // --iface before --iface-regex.
        assert_eq!(
            chosen(&select(&["eth1"], &["^eth0$"], None), &snap).0,
            "eth1"
        );
        // ... and a missing --iface falls through to the pattern.
        assert_eq!(
            chosen(&select(&["eth7"], &["^eth0$"], None), &snap).0,
            "eth0"
        );
    }

    #[test]
    fn iface_can_reach_takes_the_interface_of_the_route() {
        let s = select(&[], &[], Some("198.18.7.7"));
        assert_eq!(chosen(&s, &node(Some(3))).0, "eth1");
        // No route: nothing matches, and the error names the flag.
        let e = choose(&s, None, &node(None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no interface matches --iface-can-reach 198.18.7.7"
        );
        assert!(is_missing(&e));
    }

    #[test]
    fn nothing_matching_names_every_flag() {
        let s = select(&["eth8", "eth9"], &["^wl"], None);
        let e = choose(&s, None, &node(Some(2))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "no interface matches --iface eth8, --iface eth9, --iface-regex ^wl"
        );
        // One plain --iface: the interface is named as before.
        let e = choose(&select(&["eth9"], &[], None), None, &node(Some(2))).unwrap_err();
        assert_eq!(e.to_string(), "interface eth9 does not exist");
    }

    #[test]
    fn an_interface_without_address_is_missing_unless_public_ip_is_given() {
        let snap = node(Some(2));
        let s = select(&["ens5"], &[], None);
        let e = choose(&s, None, &snap).unwrap_err();
        assert!(
            matches!(e, KernelError::NoAddress(ref n) if n == "ens5"),
            "{e}"
        );
        assert!(is_missing(&e));
        let ip = Ipv4Addr::new(192, 0, 2, 77);
        let f = choose(&s, Some(ip), &snap).unwrap();
        assert_eq!(f.underlay.ip, ip);
        assert_eq!(f.underlay.net, Ipv4Net::from(ip));
        assert!(!f.on_iface);
        // On the interface: its prefix counts.
        let f = choose(
            &select(&["eth1"], &[], None),
            Some(Ipv4Addr::new(198, 18, 0, 2)),
            &snap,
        )
        .unwrap();
        assert!(f.on_iface);
        assert_eq!(f.underlay.net, "198.18.0.2/15".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn loopback_is_refused_not_waited_for() {
        let e = choose(&select(&["lo"], &[], None), None, &node(None)).unwrap_err();
        assert!(matches!(e, KernelError::UnusableUnderlay { .. }), "{e}");
        assert!(!is_missing(&e));
    }

    #[test]
    fn events_that_concern_the_underlay() {
        let s = select(&["eth0"], &["^ens"], None);
        let link = |index, name: &str| UnderlayEvent::Link {
            index,
            name: Some(name.into()),
        };
        // The interface in use, by index, links or addresses.
        assert!(concerns(&s, Some(2), &link(2, "eth0")));
        assert!(concerns(&s, Some(2), &UnderlayEvent::Address { index: 2 }));
        // A link the selection names, even under another index.
        assert!(concerns(&s, Some(2), &link(9, "eth0")));
        assert!(concerns(&s, Some(2), &link(9, "ens7")));
        // Pods' veths and other addresses: no.
        assert!(!concerns(&s, Some(2), &link(9, "veth1234")));
        assert!(!concerns(&s, Some(2), &UnderlayEvent::Address { index: 9 }));
        // While missing, or after lost events: everything.
        assert!(concerns(&s, None, &link(9, "veth1234")));
        assert!(concerns(&s, None, &UnderlayEvent::Address { index: 9 }));
        assert!(concerns(&s, Some(2), &UnderlayEvent::Lost));
    }

    #[test]
    fn changes_tell_link_from_address() {
        let snap = node(Some(2));
        let old = choose(&select(&["eth0"], &[], None), None, &snap)
            .unwrap()
            .underlay;
        let mut readded = old.clone();
        readded.index = 12;
        assert_eq!(
            Change::between(&old, &readded),
            Change {
                link: true,
                ..Default::default()
            }
        );
        let mut renumbered = old.clone();
        renumbered.ip = Ipv4Addr::new(192, 0, 2, 50);
        assert_eq!(
            Change::between(&old, &renumbered),
            Change {
                address: true,
                ..Default::default()
            }
        );
        assert!(!Change::between(&old, &old.clone()).any());
    }
}
