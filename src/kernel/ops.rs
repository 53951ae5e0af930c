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

/// The netlink request that carries out `op` on the devices of `dev`, with
/// the header flags it is sent with. Sets replace what is there, so
/// applying an op twice changes nothing.
pub fn op_message(dev: &DevIndex, op: &Op) -> Result<NetlinkMessage<RouteNetlinkMessage>> {
    let tunnel = |d: &Dev| match d {
        Dev::Vxlan => dev.vxlan.ok_or(KernelError::NoVxlan),
        Dev::Vxlan6 => dev.vxlan6.ok_or(KernelError::NoVxlan),
        Dev::Underlay => Ok(dev.underlay),
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
        None => None,
    };
    // The builder refuses a prefix or gateway of the wrong family.
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
