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
    let (mut conn, _handle, messages) =
        rtnetlink::new_multicast_connection(&[rtnetlink::MulticastGroup::Link])
            .map_err(KernelError::Connect)?;
    size_for_storms(netlink_sys::AsyncSocket::socket_mut(conn.socket_mut()));
    tokio::spawn(conn);
    Ok(messages)
}

/// The receive buffer of the event socket: room for a storm of events
/// (hundreds of devices changing at once) before the kernel drops any.
pub const EVENT_RCVBUF: usize = 8 << 20;

/// Gives the event socket [`EVENT_RCVBUF`] bytes of receive buffer: with
/// SO_RCVBUFFORCE (CAP_NET_ADMIN) past `net.core.rmem_max`, else SO_RCVBUF
/// up to it. Events lost anyway (ENOBUFS) still mean a full resync.
fn size_for_storms(sock: &netlink_sys::Socket) {
    use nix::sys::socket::{setsockopt, sockopt};
    let forced = setsockopt(sock, sockopt::RcvBufForce, &EVENT_RCVBUF);
    if let Err(e) = forced {
        tracing::debug!(error = %e, "SO_RCVBUFFORCE refused; asking SO_RCVBUF");
        if let Err(e) = sock.set_rx_buf_sz(EVENT_RCVBUF) {
            tracing::warn!(error = %e, "cannot size the link event socket's buffer");
        }
    }
    match sock.get_rx_buf_sz() {
        Ok(size) => tracing::debug!(size, "link event socket receive buffer"),
        Err(e) => tracing::debug!(error = %e, "cannot read the link event socket's buffer size"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::{DoneMessage, NetlinkHeader, NLMSG_OVERRUN};
    use rtnetlink::packet_route::address::AddressMessage;
    use rtnetlink::packet_route::link::LinkMessage;

    const NAMES: &[&str] = &["twill0", "twill.1", "twill6.1"];

    fn link(name: Option<&str>) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.header.index = 9;
        l.attributes.push(LinkAttribute::Mtu(1450));
        if let Some(name) = name {
            l.attributes.push(LinkAttribute::IfName(name.into()));
        }
        l
    }

    fn event(m: RouteNetlinkMessage) -> NetlinkMessage<RouteNetlinkMessage> {
        NetlinkMessage::from(m)
    }

    #[test]
    fn new_or_deleted_watched_link_is_a_change() {
        for name in NAMES {
            let new = event(RouteNetlinkMessage::NewLink(link(Some(name))));
            let del = event(RouteNetlinkMessage::DelLink(link(Some(name))));
            assert_eq!(classify_link_event(&new, NAMES), LinkSignal::Changed);
            assert_eq!(classify_link_event(&del, NAMES), LinkSignal::Changed);
        }
    }

    #[test]
    fn other_links_are_ignored() {
        for l in [link(Some("eth0")), link(Some("twill.2")), link(None)] {
            let new = event(RouteNetlinkMessage::NewLink(l.clone()));
            let del = event(RouteNetlinkMessage::DelLink(l));
            assert_eq!(classify_link_event(&new, NAMES), LinkSignal::Ignore);
            assert_eq!(classify_link_event(&del, NAMES), LinkSignal::Ignore);
        }
        // Nothing watched: nothing concerns twill.
        let new = event(RouteNetlinkMessage::NewLink(link(Some("twill0"))));
        assert_eq!(classify_link_event(&new, &[]), LinkSignal::Ignore);
    }

    #[test]
    fn the_event_socket_gets_room_for_a_storm() {
        let sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).unwrap();
        let before = sock.get_rx_buf_sz().unwrap();
        size_for_storms(&sock);
        // The kernel reports twice what was asked (bookkeeping overhead).
        // Without CAP_NET_ADMIN SO_RCVBUF is capped by rmem_max.
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let want = if nix::unistd::geteuid().is_root() {
            EVENT_RCVBUF
        } else {
            EVENT_RCVBUF.min(rmem_max)
        };
        let after = sock.get_rx_buf_sz().unwrap();
        assert!(
            after >= want && after >= before,
            "{before} -> {after}, want {want}"
        );
    }

    #[test]
    fn overrun_means_events_were_lost() {
        // What netlink-proto hands over when the socket's recv fails with
        // ENOBUFS.
        let mut hdr = NetlinkHeader::default();
        hdr.message_type = NLMSG_OVERRUN;
        let msg = NetlinkMessage::new(hdr, NetlinkPayload::Overrun(Vec::new()));
        assert_eq!(classify_link_event(&msg, NAMES), LinkSignal::Lost);
    }

    #[test]
    fn other_message_types_are_ignored() {
        let addr = event(RouteNetlinkMessage::NewAddress(AddressMessage::default()));
        assert_eq!(classify_link_event(&addr, NAMES), LinkSignal::Ignore);
        let get = event(RouteNetlinkMessage::GetLink(link(Some("twill0"))));
        assert_eq!(classify_link_event(&get, NAMES), LinkSignal::Ignore);
        let done = NetlinkMessage::<RouteNetlinkMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Done(DoneMessage::default()),
        );
        assert_eq!(classify_link_event(&done, NAMES), LinkSignal::Ignore);
        let noop = NetlinkMessage::<RouteNetlinkMessage>::new(
            NetlinkHeader::default(),
            NetlinkPayload::Noop,
        );
        assert_eq!(classify_link_event(&noop, NAMES), LinkSignal::Ignore);
    }
}
