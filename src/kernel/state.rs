//! Reads back what twill owns in the kernel: the netlink dumps of routes,
//! neighbours and FDB entries, and `state_from_dump`, the pure step that
//! turns those messages into a `KernelState` for the diff.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::IpNet;
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::RouteMessageBuilder;

use super::{nl, DevIndex, Kernel, Result, TWILL_RTPROTO};
use crate::reconcile::{Dev, KernelState, Mac, RouteTarget};

/// Turns dumped messages into the state twill owns: routes of protocol
/// `TWILL_RTPROTO` in the main table through the VXLAN devices or the
/// underlay, permanent neighbours of the VXLAN devices, and their FDB
/// entries with a remote destination. Everything else is left out. Later
/// messages win over earlier ones for the same key, as in the kernel's
/// own order of a dump.
pub fn state_from_dump(
    dev: &DevIndex,
    routes: &[RouteMessage],
    neighbours: &[NeighbourMessage],
    fdb: &[NeighbourMessage],
) -> KernelState {
    let mut state = KernelState::default();
    add_routes(&mut state, dev, routes);
    add_neighbours(&mut state, dev, neighbours);
    add_fdb(&mut state, dev, fdb);
    state
}

/// Parts of [`state_from_dump`], so that [`Kernel::read_state`] can drop
/// each dump once it is read: with thousands of peers the three dumps
/// together would otherwise be held at once, and the allocator keeps that
/// peak as resident memory.
fn add_routes(state: &mut KernelState, dev: &DevIndex, routes: &[RouteMessage]) {
    for (net, target) in routes.iter().filter_map(|r| twill_route(dev, r)) {
        state.routes.insert(net, target);
    }
}

fn add_neighbours(state: &mut KernelState, dev: &DevIndex, neighbours: &[NeighbourMessage]) {
    for (key, mac) in neighbours.iter().filter_map(|n| tunnel_neighbour(dev, n)) {
        state.neighbours.insert(key, mac);
    }
}

fn add_fdb(state: &mut KernelState, dev: &DevIndex, fdb: &[NeighbourMessage]) {
    for (key, dst) in fdb.iter().filter_map(|n| tunnel_fdb(dev, n)) {
        state.fdb.entry(key).or_default().insert(dst);
    }
}

/// The route as twill's, if it is one: our protocol, main table, leaving
/// by one of our devices, with a destination and a gateway. A cached clone
/// (`RTM_F_CLONED`: the kernel's path MTU exception under one of our
/// routes, which inherits its protocol) is the kernel's, not ours: deleting
/// it would fight the kernel on every pass.
fn twill_route(dev: &DevIndex, r: &RouteMessage) -> Option<(IpNet, RouteTarget)> {
    if r.header.table != RouteHeader::RT_TABLE_MAIN
        || r.header.protocol != RouteProtocol::Other(TWILL_RTPROTO)
        || r.header.flags.contains(RouteFlags::Cloned)
    {
        return None;
    }
    let mut oif = None;
    let mut dst: Option<IpAddr> = None;
    let mut gw: Option<IpAddr> = None;
    for a in &r.attributes {
        match a {
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = Some((*ip).into()),
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => dst = Some((*ip).into()),
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gw = Some((*ip).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(ip)) => gw = Some((*ip).into()),
            _ => {}
        }
    }
    let on = match oif? {
        i if Some(i) == dev.vxlan => Dev::Vxlan,
        i if Some(i) == dev.vxlan6 => Dev::Vxlan6,
        i if i == dev.underlay => Dev::Underlay,
        i if Some(i) == dev.wireguard => Dev::Wireguard,
        _ => return None,
    };
    let net = IpNet::new(dst?, r.header.destination_prefix_length).ok()?;
    Some((
        net,
        RouteTarget {
            gateway: gw?,
            dev: on,
        },
    ))
}

/// Which VXLAN device `index` is, if it is one of ours.
fn tunnel_dev(dev: &DevIndex, index: u32) -> Option<Dev> {
    match (dev.vxlan, dev.vxlan6) {
        (Some(v), _) if v == index => Some(Dev::Vxlan),
        (_, Some(v6)) if v6 == index => Some(Dev::Vxlan6),
        _ => None,
    }
}

/// A permanent neighbour (IP -> MAC) on one of our VXLAN devices.
fn tunnel_neighbour(dev: &DevIndex, n: &NeighbourMessage) -> Option<((Dev, IpAddr), Mac)> {
    let on = tunnel_dev(dev, n.header.ifindex)?;
    if n.header.state != NeighbourState::Permanent {
        return None;
    }
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => {
                ip = Some(IpAddr::from(*d))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => {
                ip = Some(IpAddr::from(*d))
            }
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            _ => {}
        }
    }
    Some(((on, ip?), mac?))
}

/// An FDB entry (MAC -> remote underlay IP) on one of our VXLAN devices.
/// The bridge family's `NDA_DST` arrives as raw bytes: 4 for IPv4, 16 for
/// IPv6.
fn tunnel_fdb(dev: &DevIndex, n: &NeighbourMessage) -> Option<((Dev, Mac), IpAddr)> {
    let on = tunnel_dev(dev, n.header.ifindex)?;
    let mut dst: Option<IpAddr> = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = <[u8; 4]>::try_from(b.as_slice())
                    .map(IpAddr::from)
                    .or_else(|_| <[u8; 16]>::try_from(b.as_slice()).map(IpAddr::from))
                    .ok()
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet(d)) => dst = Some((*d).into()),
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(d)) => dst = Some((*d).into()),
            NeighbourAttribute::LinkLayerAddress(l) => mac = Mac::from_slice(l),
            _ => {}
        }
    }
    Some(((on, mac?), dst?))
}

impl Kernel {
    /// Reads what twill owns: its routes (through the VXLAN device or the
    /// underlay), the VXLAN device's permanent neighbours and its FDB entries
    /// with a remote destination.
    pub async fn read_state(&self, dev: &DevIndex) -> Result<KernelState> {
        let mut state = KernelState::default();
        add_routes(&mut state, dev, &self.ipv4_routes().await?);
        add_routes(&mut state, dev, &self.ipv6_routes().await?);
        // In host-gw mode there is no tunnel device to hold neighbours or
        // FDB entries: skip two dumps per pass.
        if dev.vxlan.is_none() && dev.vxlan6.is_none() {
            return Ok(state);
        }
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let neighbours = self.neighbours(family, "list neighbours").await?;
            add_neighbours(&mut state, dev, &neighbours);
        }
        let fdb = self.neighbours(AddressFamily::Bridge, "list fdb").await?;
        add_fdb(&mut state, dev, &fdb);
        Ok(state)
    }

    async fn neighbours(
        &self,
        family: AddressFamily,
        what: &'static str,
    ) -> Result<Vec<NeighbourMessage>> {
        self.handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await
            .map_err(nl(what))
    }

    pub(super) async fn ipv4_routes(&self) -> Result<Vec<RouteMessage>> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("list IPv4 routes"))
    }

    pub(super) async fn ipv6_routes(&self) -> Result<Vec<RouteMessage>> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("list IPv6 routes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::neighbour::NeighbourFlags;
    use std::collections::{BTreeMap, BTreeSet};

    use crate::kernel::fixtures::{ip, net, DEV, HOST_GW, UNDERLAY, VXLAN, VXLAN6};

    const MAC_A: Mac = Mac([0x0e, 1, 192, 0, 2, 2]);
    const MAC_B: Mac = Mac([0x0e, 0x81, 1, 2, 3, 4]);

    /// A route as the kernel dumps it: main table, twill's protocol.
    fn route(dst: &str, gw: Option<&str>, oif: u32) -> RouteMessage {
        let dst = net(dst);
        let mut r = RouteMessage::default();
        r.header.address_family = match dst {
            IpNet::V4(_) => AddressFamily::Inet,
            IpNet::V6(_) => AddressFamily::Inet6,
        };
        r.header.destination_prefix_length = dst.prefix_len();
        r.header.table = RouteHeader::RT_TABLE_MAIN;
        r.header.protocol = RouteProtocol::Other(TWILL_RTPROTO);
        r.attributes.push(RouteAttribute::Table(254));
        r.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst.addr())));
        if let Some(gw) = gw {
            r.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(ip(gw))));
        }
        r.attributes.push(RouteAttribute::Oif(oif));
        r
    }

    fn onlink(mut r: RouteMessage) -> RouteMessage {
        r.header.flags = RouteFlags::Onlink;
        r
    }

    fn neighbour(ifindex: u32, dst: &str, mac: Mac, state: NeighbourState) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        let dst = ip(dst);
        n.header.family = match dst {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        n.header.ifindex = ifindex;
        n.header.state = state;
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(dst)));
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        n
    }

    /// An FDB entry as the bridge-family dump carries it: `NDA_DST` as raw
    /// bytes, NTF_SELF set.
    fn fdb(ifindex: u32, mac: Mac, dst: Option<&[u8]>) -> NeighbourMessage {
        let mut n = NeighbourMessage::default();
        n.header.family = AddressFamily::Bridge;
        n.header.ifindex = ifindex;
        n.header.state = NeighbourState::Permanent;
        n.header.flags = NeighbourFlags::Own;
        n.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
        if let Some(dst) = dst {
            n.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
                    dst.to_vec(),
                )));
        }
        n
    }

    /// The route map of a state, from (destination, gateway, device).
    fn routes_of(entries: &[(&str, &str, Dev)]) -> BTreeMap<IpNet, RouteTarget> {
        entries
            .iter()
            .map(|(dst, gateway, dev)| {
                (
                    net(dst),
                    RouteTarget {
                        gateway: ip(gateway),
                        dev: *dev,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn onlink_vxlan_route_and_underlay_route_are_ours() {
        let routes = [
            onlink(route("10.244.2.0/24", Some("10.244.2.0"), VXLAN)),
            route("10.244.3.0/24", Some("192.0.2.3"), UNDERLAY),
        ];
        assert_eq!(
            state_from_dump(&DEV, &routes, &[], &[]).routes,
            routes_of(&[
                ("10.244.2.0/24", "10.244.2.0", Dev::Vxlan),
                ("10.244.3.0/24", "192.0.2.3", Dev::Underlay),
            ])
        );
    }

    #[test]
    fn routes_of_other_protocols_tables_or_devices_are_not_ours() {
        let mut kernel_route = route("10.244.4.0/24", Some("10.244.4.0"), VXLAN);
        kernel_route.header.protocol = RouteProtocol::Kernel;
        let mut static_route = route("10.244.5.0/24", Some("10.244.5.0"), VXLAN);
        static_route.header.protocol = RouteProtocol::Static;
        let mut other_table = route("10.244.6.0/24", Some("10.244.6.0"), VXLAN);
        other_table.header.table = 100;
        let other_dev = route("10.244.7.0/24", Some("10.244.7.0"), 42);
        let no_oif = {
            let mut r = route("10.244.8.0/24", Some("10.244.8.0"), VXLAN);
            r.attributes
                .retain(|a| !matches!(a, RouteAttribute::Oif(_)));
            r
        };
        let routes = [kernel_route, static_route, other_table, other_dev, no_oif];
        assert_eq!(state_from_dump(&DEV, &routes, &[], &[]).routes.len(), 0);
    }

    #[test]
    fn route_without_gateway_is_not_ours() {
        // twill only ever installs routes via a next hop; a device route
        // with our protocol number is someone else's doing.
        let routes = [route("10.244.2.0/24", None, VXLAN)];
        assert!(state_from_dump(&DEV, &routes, &[], &[]).routes.is_empty());
    }

    #[test]
    fn ipv6_routes_on_either_tunnel_and_the_underlay() {
        let routes = [
            // Inside the IPv4 tunnel when the remote has no IPv6 underlay.
            onlink(route("fd00:10:244:2::/64", Some("fd00:10:244:2::"), VXLAN)),
            onlink(route("fd00:10:244:3::/64", Some("fd00:10:244:3::"), VXLAN6)),
            route("fd00:10:244:4::/64", Some("2001:db8::4"), UNDERLAY),
        ];
        assert_eq!(
            state_from_dump(&DEV, &routes, &[], &[]).routes,
            routes_of(&[
                ("fd00:10:244:2::/64", "fd00:10:244:2::", Dev::Vxlan),
                ("fd00:10:244:3::/64", "fd00:10:244:3::", Dev::Vxlan6),
                ("fd00:10:244:4::/64", "2001:db8::4", Dev::Underlay),
            ])
        );
    }

    #[test]
    fn a_path_mtu_exception_under_our_route_is_the_kernels() {
        // IPv6 dumps a cached clone (RTM_F_CLONED) of the route to the
        // peer's VTEP after a Packet Too Big; it carries our protocol.
        let mut cached = onlink(route(
            "fd00:10:244:3::/128",
            Some("fd00:10:244:3::"),
            VXLAN6,
        ));
        cached.header.flags |= RouteFlags::Cloned;
        let routes = [
            onlink(route("fd00:10:244:3::/64", Some("fd00:10:244:3::"), VXLAN6)),
            cached,
        ];
        assert_eq!(
            state_from_dump(&DEV, &routes, &[], &[]).routes,
            routes_of(&[("fd00:10:244:3::/64", "fd00:10:244:3::", Dev::Vxlan6)])
        );
    }

    #[test]
    fn host_gw_devices_see_only_underlay_routes() {
        let routes = [
            route("10.244.2.0/24", Some("192.0.2.2"), UNDERLAY),
            onlink(route("10.244.3.0/24", Some("10.244.3.0"), VXLAN)),
        ];
        let neighs = [neighbour(
            VXLAN,
            "10.244.3.0",
            MAC_A,
            NeighbourState::Permanent,
        )];
        let s = state_from_dump(&HOST_GW, &routes, &neighs, &[]);
        assert_eq!(s.routes.keys().collect::<Vec<_>>(), [&net("10.244.2.0/24")]);
        assert!(s.neighbours.is_empty());
    }

    #[test]
    fn permanent_neighbours_of_the_tunnels_are_ours() {
        let neighs = [
            neighbour(VXLAN, "10.244.2.0", MAC_A, NeighbourState::Permanent),
            neighbour(VXLAN6, "fd00:10:244:3::", MAC_B, NeighbourState::Permanent),
            // Learnt or resolving entries belong to the kernel.
            neighbour(VXLAN, "10.244.4.0", MAC_A, NeighbourState::Reachable),
            neighbour(VXLAN, "10.244.5.0", MAC_A, NeighbourState::Stale),
            // Entries on other devices are not ours.
            neighbour(UNDERLAY, "192.0.2.9", MAC_A, NeighbourState::Permanent),
            neighbour(42, "10.244.6.0", MAC_A, NeighbourState::Permanent),
        ];
        let s = state_from_dump(&DEV, &[], &neighs, &[]);
        assert_eq!(s.neighbours.len(), 2);
        assert_eq!(
            s.neighbours.get(&(Dev::Vxlan, ip("10.244.2.0"))),
            Some(&MAC_A)
        );
        assert_eq!(
            s.neighbours.get(&(Dev::Vxlan6, ip("fd00:10:244:3::"))),
            Some(&MAC_B)
        );
    }

    #[test]
    fn neighbour_without_lladdr_is_skipped() {
        let mut n = neighbour(VXLAN, "10.244.2.0", MAC_A, NeighbourState::Permanent);
        n.attributes
            .retain(|a| !matches!(a, NeighbourAttribute::LinkLayerAddress(_)));
        assert!(state_from_dump(&DEV, &[], &[n], &[]).neighbours.is_empty());
    }

    #[test]
    fn fdb_destination_as_raw_bytes_of_either_family() {
        let v6: Ipv6Addr = "2001:db8::3".parse().expect("literal");
        let entries = [
            fdb(VXLAN, MAC_A, Some(&[192, 0, 2, 2])),
            // One MAC towards two remote VTEPs: both are kept.
            fdb(VXLAN, MAC_A, Some(&[192, 0, 2, 3])),
            fdb(VXLAN6, MAC_B, Some(&v6.octets())),
        ];
        let s = state_from_dump(&DEV, &[], &[], &entries);
        assert_eq!(s.fdb.len(), 2);
        assert_eq!(
            s.fdb.get(&(Dev::Vxlan, MAC_A)),
            Some(&BTreeSet::from([ip("192.0.2.2"), ip("192.0.2.3")]))
        );
        assert_eq!(
            s.fdb.get(&(Dev::Vxlan6, MAC_B)),
            Some(&BTreeSet::from([IpAddr::V6(v6)]))
        );
    }

    #[test]
    fn fdb_destination_as_typed_address_is_read_too() {
        let mut n = fdb(VXLAN, MAC_A, None);
        n.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip(
                "192.0.2.7",
            ))));
        let s = state_from_dump(&DEV, &[], &[], &[n]);
        assert_eq!(
            s.fdb.get(&(Dev::Vxlan, MAC_A)),
            Some(&BTreeSet::from([ip("192.0.2.7")]))
        );
    }

    #[test]
    fn fdb_without_remote_or_on_other_devices_is_skipped() {
        let entries = [
            // The device's own MAC and bridge-port entries have no NDA_DST.
            fdb(VXLAN, MAC_A, None),
            // A destination of neither 4 nor 16 bytes is no address.
            fdb(VXLAN, MAC_B, Some(&[1, 2, 3])),
            fdb(UNDERLAY, MAC_A, Some(&[192, 0, 2, 2])),
            fdb(42, MAC_A, Some(&[192, 0, 2, 2])),
        ];
        assert!(state_from_dump(&DEV, &[], &[], &entries).fdb.is_empty());
    }

    #[test]
    fn full_dump_parses_into_the_state_reconcile_builds() {
        let routes = [onlink(route("10.244.2.0/24", Some("10.244.2.0"), VXLAN))];
        let neighs = [neighbour(
            VXLAN,
            "10.244.2.0",
            MAC_A,
            NeighbourState::Permanent,
        )];
        let entries = [fdb(VXLAN, MAC_A, Some(&[192, 0, 2, 2]))];
        let want = KernelState {
            routes: routes_of(&[("10.244.2.0/24", "10.244.2.0", Dev::Vxlan)]),
            neighbours: BTreeMap::from([((Dev::Vxlan, ip("10.244.2.0")), MAC_A)]),
            fdb: BTreeMap::from([((Dev::Vxlan, MAC_A), BTreeSet::from([ip("192.0.2.2")]))]),
        };
        assert_eq!(state_from_dump(&DEV, &routes, &neighs, &entries), want);
    }
}
