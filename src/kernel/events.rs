//! Link events: a multicast subscription to link changes, and the pure
//! classification of each message against the names of twill's devices.

use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::{KernelError, Result};

/// What a link event means for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkSignal {
    /// One of the watched devices was created, changed or deleted.
    Changed,
    /// The kernel dropped events (ENOBUFS): state is unknown, resync.
    Lost,
    /// Nothing that concerns twill.
    Ignore,
}

/// Subscribes to link events in this namespace, so a deleted or changed
/// device is repaired at once rather than at the next resync.
pub fn link_events() -> Result<
    futures::channel::mpsc::UnboundedReceiver<(
        NetlinkMessage<RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
> {
    let (conn, _handle, messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .map_err(KernelError::Connect)?;
    tokio::spawn(conn);
    Ok(messages)
}

/// Classifies one link event against the names of twill's devices.
pub fn classify_link_event(
    msg: &NetlinkMessage<RouteNetlinkMessage>,
    names: &[&str],
) -> LinkSignal {
    match &msg.payload {
        NetlinkPayload::Overrun(_) => LinkSignal::Lost,
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l))
        | NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
            let named = l
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::IfName(n) if names.contains(&n.as_str())));
            if named {
                LinkSignal::Changed
            } else {
                LinkSignal::Ignore
            }
        }
        _ => LinkSignal::Ignore,
    }
}
