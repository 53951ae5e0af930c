//! The underlay as the kernel has it: a snapshot of the links, their IPv4
//! addresses and the route that picks the interface (read for
//! `agent::underlay::choose`), and a multicast subscription to link and
//! IPv4 address events, classified by plain functions.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::RouteAttribute;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::RouteMessageBuilder;

use super::devices::address_net;
use super::{nl, Kernel, KernelError, Result};
use crate::agent::underlay::{LinkAddrs, Snapshot};

/// A link or address event that may move the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnderlayEvent {
    /// A link was created, changed (up, down, renamed, MTU) or deleted.
    Link { index: u32, name: Option<String> },
    /// An address (either family) was added to or removed from link
    /// `index`.
    Address { index: u32 },
    /// The kernel dropped events (ENOBUFS): look again.
    Lost,
}

/// Classifies one message of the link and IPv4 address groups.
pub fn classify_underlay_event(msg: &NetlinkMessage<RouteNetlinkMessage>) -> Option<UnderlayEvent> {
    match &msg.payload {
        NetlinkPayload::Overrun(_) => Some(UnderlayEvent::Lost),
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
        | NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
            Some(UnderlayEvent::Link {
                index: l.header.index,
                name: l.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }),
            })
        }
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(a))
        | NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(a)) => {
            Some(UnderlayEvent::Address {
                index: a.header.index,
            })
        }
        _ => None,
    }
}

/// Subscribes to link and address events (both families) in this
/// namespace.
pub fn underlay_events() -> Result<
    futures::channel::mpsc::UnboundedReceiver<(
        NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
> {
    let (conn, _handle, messages) = rtnetlink::new_multicast_connection(&[
        rtnetlink::MulticastGroup::Link,
        rtnetlink::MulticastGroup::Ipv4Ifaddr,
        rtnetlink::MulticastGroup::Ipv6Ifaddr,
    ])
    .map_err(KernelError::Connect)?;
    tokio::spawn(conn);
    Ok(messages)
}

/// Groups IPv4 addresses by their link, in the kernel's order.
type ByLink = BTreeMap<u32, (Vec<Ipv4Net>, Vec<Ipv6Net>)>;

/// Each link's IPv4 and IPv6 addresses, in the kernel's order.
fn addresses_by_link(msgs: &[AddressMessage]) -> ByLink {
    let mut by = ByLink::new();
    for m in msgs {
        let e = by.entry(m.header.index).or_default();
        match address_net(m) {
            Some(IpNet::V4(n)) => e.0.push(n),
            Some(IpNet::V6(n)) => e.1.push(n),
            None => {}
        }
    }
    by
}

impl Kernel {
    /// The links with their IPv4 addresses, and the output interface of the
    /// route to `can_reach` (or, with `default_route`, of the default
    /// route).
    pub async fn underlay_snapshot(
        &self,
        can_reach: Option<Ipv4Addr>,
        default_route: bool,
    ) -> Result<Snapshot> {
        let links = self.links().await?;
        let addrs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list addresses"))?;
        let mut by_link = addresses_by_link(&addrs);
        let route_oif = match (can_reach, default_route) {
            (Some(dst), _) => self.route_oif(dst).await?,
            (None, true) => super::devices::default_oif(&self.ipv4_routes().await?),
            (None, false) => None,
        };
        // A node without IPv6 (disabled in the kernel) has no IPv6 route to
        // list: that is no default route, not an error.
        let route6_oif = match default_route {
            true => match self.ipv6_routes().await {
                Ok(routes) => super::devices::default_oif(&routes),
                Err(_) => None,
            },
            false => None,
        };
        Ok(Snapshot {
            links: links
                .into_iter()
                .map(|link| {
                    let (v4, v6) = by_link.remove(&link.index).unwrap_or_default();
                    LinkAddrs { link, v4, v6 }
                })
                .collect(),
            route_oif,
            route6_oif,
        })
    }

    /// The output interface of the route the kernel picks to `dst`; `None`
    /// when it has none (unreachable).
    async fn route_oif(&self, dst: Ipv4Addr) -> Result<Option<u32>> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, 32)
            .build();
        let found = self.handle.route().get(msg).execute().try_next().await;
        match found {
            Ok(Some(r)) => Ok(r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            })),
            Ok(None) => Ok(None),
            // ENETUNREACH, EHOSTUNREACH and friends: no route.
            Err(rtnetlink::Error::NetlinkError(_)) => Ok(None),
            Err(e) => Err(nl(format!("route to {dst}"))(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{NetlinkHeader, NLMSG_OVERRUN, NLM_F_REQUEST};
    use rtnetlink::packet_route::address::AddressAttribute;
    use rtnetlink::packet_route::link::LinkMessage;
    use rtnetlink::packet_route::AddressFamily;

    fn event(m: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::from(m)
    }

    fn addr(index: u32, ip: [u8; 4], len: u8) -> AddressMessage {
        let mut a = AddressMessage::default();
        a.header.family = AddressFamily::Inet;
        a.header.index = index;
        a.header.prefix_len = len;
        a.attributes
            .push(AddressAttribute::Local(Ipv4Addr::from(ip).into()));
        a
    }

    #[test]
    fn links_and_addresses_are_events_with_their_index() {
        let mut l = LinkMessage::default();
        l.header.index = 7;
        l.attributes.push(LinkAttribute::IfName("eth0".into()));
        let want = UnderlayEvent::Link {
            index: 7,
            name: Some("eth0".into()),
        };
        assert_eq!(
            classify_underlay_event(&event(RouteNetlinkMessage::NewLink(l.clone()))),
            Some(want.clone())
        );
        assert_eq!(
            classify_underlay_event(&event(RouteNetlinkMessage::DelLink(l))),
            Some(want)
        );
        for m in [
            RouteNetlinkMessage::NewAddress(addr(7, [192, 0, 2, 1], 24)),
            RouteNetlinkMessage::DelAddress(addr(7, [192, 0, 2, 1], 24)),
        ] {
            assert_eq!(
                classify_underlay_event(&event(m)),
                Some(UnderlayEvent::Address { index: 7 })
            );
        }
    }

    #[test]
    fn overrun_is_lost_and_the_rest_ignored() {
        let mut hdr = NetlinkHeader::default();
        hdr.message_type = NLMSG_OVERRUN;
        hdr.flags = NLM_F_REQUEST;
        let msg = NetlinkMessage::new(hdr, NetlinkPayload::Overrun(Vec::new()));
        assert_eq!(classify_underlay_event(&msg), Some(UnderlayEvent::Lost));
        let get = event(RouteNetlinkMessage::GetLink(LinkMessage::default()));
        assert_eq!(classify_underlay_event(&get), None);
    }

    #[test]
    fn addresses_are_grouped_by_link_in_order() {
        let mut v6 = AddressMessage::default();
        v6.header.family = AddressFamily::Inet6;
        v6.header.index = 2;
        v6.header.prefix_len = 64;
        v6.attributes.push(AddressAttribute::Address(
            "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap().into(),
        ));
        let by = addresses_by_link(&[
            addr(2, [192, 0, 2, 1], 24),
            v6,
            addr(3, [198, 18, 0, 1], 15),
            addr(2, [192, 0, 2, 9], 24),
        ]);
        let nets = |v: &[&str]| -> Vec<Ipv4Net> { v.iter().map(|s| s.parse().unwrap()).collect() };
        assert_eq!(by[&2].0, nets(&["192.0.2.1/24", "192.0.2.9/24"]));
        assert_eq!(by[&3].0, nets(&["198.18.0.1/15"]));
        assert_eq!(by[&2].1, vec!["2001:db8::1/64".parse::<Ipv6Net>().unwrap()]);
        assert!(by[&3].1.is_empty());
    }
}
