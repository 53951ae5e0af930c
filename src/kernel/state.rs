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
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol,
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
    for (net, target) in routes.iter().filter_map(|r| twill_route(dev, r)) {
        state.routes.insert(net, target);
    }
    for (key, mac) in neighbours.iter().filter_map(|n| tunnel_neighbour(dev, n)) {
        state.neighbours.insert(key, mac);
    }
    for (key, dst) in fdb.iter().filter_map(|n| tunnel_fdb(dev, n)) {
        state.fdb.entry(key).or_default().insert(dst);
    }
    state
}

/// The route as twill's, if it is one: our protocol, main table, leaving
/// by one of our devices, with a destination and a gateway.
fn twill_route(dev: &DevIndex, r: &RouteMessage) -> Option<(IpNet, RouteTarget)> {
    if r.header.table != RouteHeader::RT_TABLE_MAIN
        || r.header.protocol != RouteProtocol::Other(TWILL_RTPROTO)
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
        let mut routes = self.ipv4_routes().await?;
        routes.extend(self.ipv6_routes().await?);
        // In host-gw mode there is no tunnel device to hold neighbours or
        // FDB entries: skip two dumps per pass.
        if dev.vxlan.is_none() && dev.vxlan6.is_none() {
            return Ok(state_from_dump(dev, &routes, &[], &[]));
        }
        let mut neighbours = self
            .neighbours(AddressFamily::Inet, "list neighbours")
            .await?;
        neighbours.extend(
            self.neighbours(AddressFamily::Inet6, "list neighbours")
                .await?,
        );
        let fdb = self.neighbours(AddressFamily::Bridge, "list fdb").await?;
        Ok(state_from_dump(dev, &routes, &neighbours, &fdb))
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

    async fn ipv6_routes(&self) -> Result<Vec<RouteMessage>> {
        self.handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("list IPv6 routes"))
    }
}
