//! Reconcile operations as netlink requests: `op_message` builds the exact
//! message an `Op` needs (pure), `Kernel::apply` sends it and judges the
//! kernel's answer.

use std::net::IpAddr;

use futures::StreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{RouteMessage, RouteProtocol, RouteType};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::RouteMessageBuilder;

use super::{errno, nl, DevIndex, Kernel, KernelError, Result, ENOENT, ESRCH, TWILL_RTPROTO};
use crate::reconcile::{Dev, Op, RouteTarget};

/// Flags of a request that creates an entry or replaces the one there.
const SET: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE;
/// Flags of a delete request.
const DEL: u16 = NLM_F_REQUEST | NLM_F_ACK;

fn no_wireguard() -> KernelError {
    KernelError::NoSuchLink(crate::wireguard::DEVICE_NAME.into())
}

/// The netlink request that carries out `op` on the devices of `dev`, with
/// the header flags it is sent with. Sets replace what is there, so
/// applying an op twice changes nothing.
pub fn op_message(dev: &DevIndex, op: &Op) -> Result<NetlinkMessage<RouteNetlinkMessage>> {
    let tunnel = |d: &Dev| match d {
        Dev::Vxlan => dev.vxlan.ok_or(KernelError::NoVxlan),
        Dev::Vxlan6 => dev.vxlan6.ok_or(KernelError::NoVxlan),
        Dev::Underlay => Ok(dev.underlay),
        Dev::Wireguard => dev.wireguard.ok_or_else(no_wireguard),
    };
    let (inner, flags) = match op {
        Op::SetRoute { dst, target } => (
            RouteNetlinkMessage::NewRoute(route_message(dev, *dst, Some(target))?),
            SET,
        ),
        Op::DelRoute { dst } => (
            RouteNetlinkMessage::DelRoute(route_message(dev, *dst, None)?),
            DEL,
        ),
        Op::SetNeighbour { dev: d, ip, mac } => {
            let mut m = neighbour_header(family_of(ip), tunnel(d)?);
            m.header.state = NeighbourState::Permanent;
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::from(*ip)));
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
            (RouteNetlinkMessage::NewNeighbour(m), SET)
        }
        Op::DelNeighbour { dev: d, ip } => {
            let mut m = NeighbourMessage::default();
            m.header.family = family_of(ip);
            m.header.ifindex = tunnel(d)?;
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::from(*ip)));
            (RouteNetlinkMessage::DelNeighbour(m), DEL)
        }
        Op::AddFdb { dev: d, mac, dst } => {
            // NTF_SELF: the entry belongs to the VXLAN device's own FDB, not
            // to a bridge the device might be a port of.
            let mut m = neighbour_header(AddressFamily::Bridge, tunnel(d)?);
            m.header.state = NeighbourState::Permanent;
            m.header.flags = NeighbourFlags::Own;
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                    *dst,
                )));
            (RouteNetlinkMessage::NewNeighbour(m), SET)
        }
        Op::DelFdb { dev: d, mac, dst } => {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            m.header.ifindex = tunnel(d)?;
            m.header.flags = NeighbourFlags::Own;
            m.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.0.to_vec()));
            m.attributes
                .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                    *dst,
                )));
            (RouteNetlinkMessage::DelNeighbour(m), DEL)
        }
    };
    let mut msg = NetlinkMessage::from(inner);
    msg.header.flags = flags;
    Ok(msg)
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The header rtnetlink's neighbour add request starts from.
fn neighbour_header(family: AddressFamily, ifindex: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = ifindex;
    m.header.kind = RouteType::Unspec;
    m
}

/// A route message for `dst`; with a target it is the full route to
/// install, without one it matches twill's route to `dst` on any device.
fn route_message(dev: &DevIndex, dst: IpNet, target: Option<&RouteTarget>) -> Result<RouteMessage> {
    let oif = match target.map(|t| t.dev) {
        Some(Dev::Vxlan) => Some((dev.vxlan.ok_or(KernelError::NoVxlan)?, true)),
        Some(Dev::Vxlan6) => Some((dev.vxlan6.ok_or(KernelError::NoVxlan)?, true)),
        Some(Dev::Underlay) => Some((dev.underlay, false)),
        Some(Dev::Wireguard) => Some((dev.wireguard.ok_or_else(no_wireguard)?, true)),
        None => None,
    };
    // The builder refuses an IPv4 gateway for an IPv6 prefix (reconcile
    // never asks for one) and turns an IPv6 gateway of an IPv4 prefix into
    // RTA_VIA.
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .map_err(|e| KernelError::Route {
            dst,
            reason: e.to_string(),
        })?
        .protocol(RouteProtocol::Other(TWILL_RTPROTO));
    if let Some(t) = target {
        b = b.gateway(t.gateway).map_err(|e| KernelError::Route {
            dst,
            reason: e.to_string(),
        })?;
    }
    if let Some((index, onlink)) = oif {
        b = b.output_interface(index);
        if onlink {
            b = b.onlink();
        }
    }
    Ok(b.build())
}

/// Whether a failed `op` is done anyway: deleting what is already gone
/// (another actor, or a race with the kernel, got there first).
fn gone_is_done(op: &Op, errno: Option<i32>) -> bool {
    matches!(
        op,
        Op::DelRoute { .. } | Op::DelNeighbour { .. } | Op::DelFdb { .. }
    ) && matches!(errno, Some(ENOENT) | Some(ESRCH))
}

impl Kernel {
    /// Applies one reconcile operation. Deleting what is already gone counts
    /// as done.
    pub async fn apply(&self, dev: &DevIndex, op: &Op) -> Result<()> {
        match self.request(op_message(dev, op)?).await {
            Ok(()) => Ok(()),
            Err(e) if gone_is_done(op, errno(&e)) => Ok(()),
            Err(e) => Err(nl(op.to_string())(e)),
        }
    }

    /// Sends one request and waits for the kernel's acknowledgement, the
    /// way rtnetlink's own add and delete requests do.
    async fn request(
        &self,
        msg: NetlinkMessage<RouteNetlinkMessage>,
    ) -> std::result::Result<(), rtnetlink::Error> {
        let mut handle = self.handle.clone();
        let mut response = handle.request(msg)?;
        while let Some(reply) = response.next().await {
            if let NetlinkPayload::Error(e) = reply.payload {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteScope;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader};

    use crate::kernel::fixtures::{ip, net, DEV, HOST_GW, UNDERLAY, VXLAN, VXLAN6};
    use crate::reconcile::Mac;

    const MAC: Mac = Mac([0x0e, 1, 192, 0, 2, 2]);

    fn gateway(addr: &str) -> RouteAttribute {
        RouteAttribute::Gateway(RouteAddress::from(ip(addr)))
    }

    fn build(dev: &DevIndex, op: &Op) -> NetlinkMessage<RouteNetlinkMessage> {
        match op_message(dev, op) {
            Ok(m) => m,
            Err(e) => panic!("{op}: {e}"),
        }
    }

    fn new_route(msg: &NetlinkMessage<RouteNetlinkMessage>) -> &RouteMessage {
        match &msg.payload {
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => r,
            other => panic!("not a new route: {other:?}"),
        }
    }

    fn neighbour(msg: &NetlinkMessage<RouteNetlinkMessage>, new: bool) -> &NeighbourMessage {
        match (&msg.payload, new) {
            (NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)), true)
            | (NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)), false) => n,
            (other, _) => panic!("not the neighbour message wanted: {other:?}"),
        }
    }

    fn set_route(dst: &str, gateway: &str, dev: Dev) -> Op {
        Op::SetRoute {
            dst: net(dst),
            target: RouteTarget {
                gateway: ip(gateway),
                dev,
            },
        }
    }

    #[test]
    fn set_route_through_the_tunnel_is_an_onlink_replace() {
        let msg = build(&DEV, &set_route("10.244.2.0/24", "10.244.2.0", Dev::Vxlan));
        assert_eq!(
            msg.header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
        );
        let r = new_route(&msg);
        assert_eq!(r.header.address_family, AddressFamily::Inet);
        assert_eq!(r.header.destination_prefix_length, 24);
        assert_eq!(r.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(r.header.protocol, RouteProtocol::Other(77));
        assert_eq!(r.header.scope, RouteScope::Universe);
        assert_eq!(r.header.kind, RouteType::Unicast);
        assert_eq!(r.header.flags, RouteFlags::Onlink);
        assert_eq!(
            r.attributes,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet("10.244.2.0".parse().expect("ip"))),
                RouteAttribute::Gateway(RouteAddress::Inet("10.244.2.0".parse().expect("ip"))),
                RouteAttribute::Oif(VXLAN),
            ]
        );
    }

    #[test]
    fn set_route_on_the_underlay_is_not_onlink() {
        let msg = build(
            &DEV,
            &set_route("10.244.3.0/24", "192.0.2.3", Dev::Underlay),
        );
        let r = new_route(&msg);
        assert!(!r.header.flags.contains(RouteFlags::Onlink));
        assert!(r.attributes.contains(&RouteAttribute::Oif(UNDERLAY)));
        assert!(r.attributes.contains(&gateway("192.0.2.3")));
    }

    #[test]
    fn set_ipv6_route_through_the_ipv6_tunnel() {
        let msg = build(
            &DEV,
            &set_route("fd00:10:244:3::/64", "fd00:10:244:3::", Dev::Vxlan6),
        );
        let r = new_route(&msg);
        assert_eq!(r.header.address_family, AddressFamily::Inet6);
        assert_eq!(r.header.destination_prefix_length, 64);
        assert_eq!(r.header.protocol, RouteProtocol::Other(TWILL_RTPROTO));
        assert_eq!(r.header.flags, RouteFlags::Onlink);
        assert!(r.attributes.contains(&RouteAttribute::Oif(VXLAN6)));
        assert!(r.attributes.contains(&gateway("fd00:10:244:3::")));
    }

    #[test]
    fn tunnel_entries_without_the_tunnel_are_refused() {
        let ops = [
            set_route("10.244.2.0/24", "10.244.2.0", Dev::Vxlan),
            set_route("fd00:10:244:3::/64", "fd00:10:244:3::", Dev::Vxlan6),
            Op::SetNeighbour {
                dev: Dev::Vxlan,
                ip: ip("10.244.2.0"),
                mac: MAC,
            },
            Op::DelFdb {
                dev: Dev::Vxlan,
                mac: MAC,
                dst: ip("192.0.2.2"),
            },
        ];
        for op in ops {
            assert!(
                matches!(op_message(&HOST_GW, &op), Err(KernelError::NoVxlan)),
                "{op}"
            );
        }
        let no_v6 = DevIndex {
            vxlan6: None,
            ..DEV
        };
        let op = Op::AddFdb {
            dev: Dev::Vxlan6,
            mac: MAC,
            dst: ip("2001:db8::3"),
        };
        assert!(matches!(op_message(&no_v6, &op), Err(KernelError::NoVxlan)));
    }

    #[test]
    fn ipv4_gateway_for_an_ipv6_route_is_refused() {
        let op = set_route("fd00:10:244:3::/64", "192.0.2.3", Dev::Underlay);
        match op_message(&DEV, &op) {
            Err(KernelError::Route { dst, .. }) => assert_eq!(dst, net("fd00:10:244:3::/64")),
            other => panic!("want a route error, got {other:?}"),
        }
    }

    #[test]
    fn ipv6_gateway_for_an_ipv4_route_becomes_via() {
        use rtnetlink::packet_route::route::RouteVia;
        let msg = build(&DEV, &set_route("10.244.2.0/24", "fd00::1", Dev::Underlay));
        let r = new_route(&msg);
        assert!(r.attributes.contains(&RouteAttribute::Via(RouteVia::Inet6(
            "fd00::1".parse().expect("ip")
        ))));
        assert!(!r
            .attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Gateway(_))));
    }

    #[test]
    fn del_route_matches_ours_on_any_device() {
        let msg = build(
            &DEV,
            &Op::DelRoute {
                dst: net("10.244.2.0/24"),
            },
        );
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) = &msg.payload else {
            panic!("not a route delete: {:?}", msg.payload);
        };
        assert_eq!(r.header.protocol, RouteProtocol::Other(TWILL_RTPROTO));
        assert_eq!(r.header.table, RouteHeader::RT_TABLE_MAIN);
        assert_eq!(r.header.destination_prefix_length, 24);
        assert_eq!(
            r.attributes,
            vec![RouteAttribute::Destination(RouteAddress::Inet(
                "10.244.2.0".parse().expect("ip")
            ))]
        );
        // host-gw deletes the same way: no device needed.
        assert!(op_message(
            &HOST_GW,
            &Op::DelRoute {
                dst: net("10.244.2.0/24")
            }
        )
        .is_ok());
    }

    #[test]
    fn set_neighbour_is_a_permanent_replace() {
        for (d, index, addr, family) in [
            (Dev::Vxlan, VXLAN, "10.244.2.0", AddressFamily::Inet),
            (Dev::Vxlan6, VXLAN6, "fd00:10:244:3::", AddressFamily::Inet6),
        ] {
            let msg = build(
                &DEV,
                &Op::SetNeighbour {
                    dev: d,
                    ip: ip(addr),
                    mac: MAC,
                },
            );
            assert_eq!(
                msg.header.flags,
                NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
            );
            let n = neighbour(&msg, true);
            assert_eq!(n.header.family, family);
            assert_eq!(n.header.ifindex, index);
            assert_eq!(n.header.state, NeighbourState::Permanent);
            assert_eq!(n.header.flags, NeighbourFlags::empty());
            assert_eq!(
                n.attributes,
                vec![
                    NeighbourAttribute::Destination(NeighbourAddress::from(ip(addr))),
                    NeighbourAttribute::LinkLayerAddress(MAC.0.to_vec()),
                ]
            );
        }
    }

    #[test]
    fn del_neighbour_names_device_and_address() {
        let msg = build(
            &DEV,
            &Op::DelNeighbour {
                dev: Dev::Vxlan6,
                ip: ip("fd00:10:244:3::"),
            },
        );
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        let n = neighbour(&msg, false);
        assert_eq!(n.header.family, AddressFamily::Inet6);
        assert_eq!(n.header.ifindex, VXLAN6);
        assert_eq!(
            n.attributes,
            vec![NeighbourAttribute::Destination(NeighbourAddress::from(ip(
                "fd00:10:244:3::"
            )))]
        );
    }

    #[test]
    fn add_fdb_is_a_permanent_self_entry_with_a_remote() {
        let msg = build(
            &DEV,
            &Op::AddFdb {
                dev: Dev::Vxlan,
                mac: MAC,
                dst: ip("192.0.2.2"),
            },
        );
        assert_eq!(
            msg.header.flags,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE
        );
        let n = neighbour(&msg, true);
        assert_eq!(n.header.family, AddressFamily::Bridge);
        assert_eq!(n.header.ifindex, VXLAN);
        assert_eq!(n.header.state, NeighbourState::Permanent);
        assert_eq!(n.header.flags, NeighbourFlags::Own);
        assert_eq!(
            n.attributes,
            vec![
                NeighbourAttribute::LinkLayerAddress(MAC.0.to_vec()),
                NeighbourAttribute::Destination(NeighbourAddress::from(ip("192.0.2.2"))),
            ]
        );
    }

    #[test]
    fn del_fdb_names_mac_and_remote_on_the_ipv6_tunnel() {
        let msg = build(
            &DEV,
            &Op::DelFdb {
                dev: Dev::Vxlan6,
                mac: MAC,
                dst: ip("2001:db8::3"),
            },
        );
        assert_eq!(msg.header.flags, NLM_F_REQUEST | NLM_F_ACK);
        let n = neighbour(&msg, false);
        assert_eq!(n.header.family, AddressFamily::Bridge);
        assert_eq!(n.header.ifindex, VXLAN6);
        assert_eq!(n.header.flags, NeighbourFlags::Own);
        assert_eq!(
            n.attributes,
            vec![
                NeighbourAttribute::LinkLayerAddress(MAC.0.to_vec()),
                NeighbourAttribute::Destination(NeighbourAddress::from(ip("2001:db8::3"))),
            ]
        );
    }

    /// `msg` as the kernel would receive it: serialized and parsed back.
    fn over_the_wire(
        mut msg: NetlinkMessage<RouteNetlinkMessage>,
    ) -> NetlinkMessage<RouteNetlinkMessage> {
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf)
            .unwrap_or_else(|e| panic!("cannot parse back {msg:?}: {e}"));
        let mut again = vec![0u8; back.buffer_len()];
        back.serialize(&mut again);
        assert_eq!(again, buf, "{msg:?} does not survive the wire");
        back
    }

    #[test]
    fn every_built_message_survives_the_wire() {
        // An attribute the encoder cannot emit would otherwise only show up
        // as EINVAL from a real kernel.
        let ops = [
            set_route("10.244.2.0/24", "10.244.2.0", Dev::Vxlan),
            set_route("fd00:10:244:3::/64", "2001:db8::3", Dev::Underlay),
            Op::DelRoute {
                dst: net("10.244.2.0/24"),
            },
            Op::SetNeighbour {
                dev: Dev::Vxlan,
                ip: ip("10.244.2.0"),
                mac: MAC,
            },
            Op::DelNeighbour {
                dev: Dev::Vxlan,
                ip: ip("10.244.2.0"),
            },
            Op::AddFdb {
                dev: Dev::Vxlan,
                mac: MAC,
                dst: ip("192.0.2.2"),
            },
            Op::DelFdb {
                dev: Dev::Vxlan6,
                mac: MAC,
                dst: ip("2001:db8::3"),
            },
        ];
        for op in ops {
            let back = over_the_wire(build(&DEV, &op));
            assert_eq!(back.header.flags, build(&DEV, &op).header.flags, "{op}");
        }
    }

    #[test]
    fn what_the_ops_write_reads_back_as_the_same_state() {
        // The kernel echoes these entries in its dumps; if the parser did
        // not recognise them, every pass would add them again.
        use crate::kernel::state_from_dump;
        use crate::reconcile::KernelState;
        let mut want = KernelState::default();
        want.routes.insert(
            net("10.244.2.0/24"),
            RouteTarget {
                gateway: ip("10.244.2.0"),
                dev: Dev::Vxlan,
            },
        );
        want.routes.insert(
            net("fd00:10:244:4::/64"),
            RouteTarget {
                gateway: ip("2001:db8::4"),
                dev: Dev::Underlay,
            },
        );
        want.neighbours.insert((Dev::Vxlan, ip("10.244.2.0")), MAC);
        want.neighbours
            .insert((Dev::Vxlan6, ip("fd00:10:244:3::")), MAC);
        want.fdb
            .entry((Dev::Vxlan, MAC))
            .or_default()
            .insert(ip("192.0.2.2"));
        want.fdb
            .entry((Dev::Vxlan6, MAC))
            .or_default()
            .insert(ip("2001:db8::3"));
        let mut ops = Vec::new();
        for (dst, target) in &want.routes {
            ops.push(Op::SetRoute {
                dst: *dst,
                target: *target,
            });
        }
        for ((dev, ip), mac) in &want.neighbours {
            ops.push(Op::SetNeighbour {
                dev: *dev,
                ip: *ip,
                mac: *mac,
            });
        }
        for ((dev, mac), dsts) in &want.fdb {
            for dst in dsts {
                ops.push(Op::AddFdb {
                    dev: *dev,
                    mac: *mac,
                    dst: *dst,
                });
            }
        }
        let (mut routes, mut neighs, mut fdb) = (Vec::new(), Vec::new(), Vec::new());
        for op in &ops {
            match over_the_wire(build(&DEV, op)).payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => routes.push(r),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n))
                    if n.header.family == AddressFamily::Bridge =>
                {
                    fdb.push(n)
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => {
                    neighs.push(n)
                }
                other => panic!("{op}: unexpected {other:?}"),
            }
        }
        assert_eq!(state_from_dump(&DEV, &routes, &neighs, &fdb), want);
    }

    #[test]
    fn only_deletes_of_missing_entries_count_as_done() {
        let del = Op::DelNeighbour {
            dev: Dev::Vxlan,
            ip: ip("10.244.2.0"),
        };
        let set = set_route("10.244.2.0/24", "10.244.2.0", Dev::Vxlan);
        assert!(gone_is_done(&del, Some(libc::ENOENT)));
        assert!(gone_is_done(
            &Op::DelRoute {
                dst: net("10.244.2.0/24")
            },
            Some(libc::ESRCH)
        ));
        assert!(gone_is_done(
            &Op::DelFdb {
                dev: Dev::Vxlan,
                mac: MAC,
                dst: ip("192.0.2.2")
            },
            Some(libc::ENOENT)
        ));
        assert!(!gone_is_done(&del, Some(libc::EPERM)));
        assert!(!gone_is_done(&del, None));
        assert!(!gone_is_done(&set, Some(libc::ENOENT)));
    }
}
