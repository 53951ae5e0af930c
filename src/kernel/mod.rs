//! The agent's only door to the kernel: builds the bridge and VXLAN device,
//! reads back routes, neighbours and FDB entries of the VXLAN device, and
//! applies reconcile operations. rtnetlink only, never the `ip` command.
//!
//! `devices` creates and repairs the devices (`vxlan` holds the pure
//! VXLAN device comparisons), `state` reads the kernel's
//! entries back, `ops` turns reconcile operations into netlink messages and
//! `events` watches links. Each keeps its parsing and message building in
//! plain functions, so the netlink I/O is all that needs root to test.

mod devices;
mod events;
mod ops;
mod state;
mod sysctl;
mod underlay;
mod vxlan;

use ipnet::IpNet;
use rtnetlink::Handle;

pub(crate) use devices::underlay_problem;
pub use devices::{cleanup, unusable_underlay_address, LinkInfoView, Underlay, VxlanSpec};
pub use events::{classify_link_event, link_events, LinkSignal};
pub use ops::op_message;
pub use state::state_from_dump;
pub use sysctl::{enable_forwarding, IPV4_FORWARD, IPV6_FORWARD};
pub use underlay::{classify_underlay_event, underlay_events, UnderlayEvent};
pub use vxlan::{vxlan_conflict, vxlan_incompatibility, vxlan_link_message};

/// Route protocol number that marks twill's routes, so that routes someone
/// else put on the VXLAN device are never mistaken for ours.
pub const TWILL_RTPROTO: u8 = 77;

const EEXIST: i32 = libc::EEXIST;
const ENOENT: i32 = libc::ENOENT;
const ESRCH: i32 = libc::ESRCH;
const ENODEV: i32 = libc::ENODEV;

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open a netlink socket")]
    Connect(#[source] std::io::Error),
    /// The kernel's reason (the errno's text) is part of the message: the
    /// logs print errors with `{}` only, where the failing object alone
    /// does not say why. `source` stays for callers that want the errno.
    #[error("{what}: {}", detail(source))]
    Netlink {
        what: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("interface {0} does not exist")]
    NoSuchLink(String),
    #[error("interface {0} has no IPv4 address; pass --public-ip")]
    NoAddress(String),
    #[error("no --iface given and no IPv4 default route to pick the underlay interface from")]
    NoDefaultRoute,
    /// `--iface`, `--iface-regex` and `--iface-can-reach` (listed) found
    /// no interface.
    #[error("no interface matches {0}")]
    NoUnderlayMatch(String),
    #[error("route to {dst}: {reason}")]
    Route { dst: IpNet, reason: String },
    /// Configuration, not trouble: the agent refuses to start.
    #[error("--iface {iface}: {why}; other nodes cannot reach this node there: pick the interface that faces them with --iface (or its address with --public-ip)")]
    UnusableUnderlay { iface: String, why: String },
    /// Another VXLAN device holds the VNI and port twill's device needs:
    /// the kernel would refuse to create ours. Configuration, not trouble.
    #[error("vxlan device {device} already uses VNI {vni} and UDP port {port}, which {ours} needs: delete it (ip link del {device}; a leftover of flannel or of an older twill) or set another Backend.VNI or Backend.Port in the network config")]
    VxlanConflict {
        device: String,
        vni: u32,
        port: u16,
        ours: String,
    },
    #[error("sysctl {key}: {source}; pass --no-set-forwarding to leave forwarding to the node's own configuration")]
    Sysctl {
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("no vxlan device for a vxlan entry (host-gw mode)")]
    NoVxlan,
    #[error(
        "interface {name} exists but is a {kind}, not a {want}; remove it or pick another name"
    )]
    WrongKind {
        name: String,
        kind: String,
        want: &'static str,
    },
    #[error(transparent)]
    Wireguard(#[from] crate::wireguard::WgError),
    /// A bridge with neither an IPv4 nor an IPv6 gateway: a plan bug.
    #[error("bridge {0} has no gateway address to be given")]
    NoBridgeGateway(String),
    #[error("no --iface given and no IPv6 default route to pick the underlay interface of this IPv6-only node from")]
    NoDefaultRoute6,
    #[error("interface {0} has no global IPv6 address, which a node of an IPv6-only cluster needs; give it one or pass --public-ipv6")]
    NoAddress6(String),
}

type Result<T> = std::result::Result<T, KernelError>;

/// The reason of a failed request: the errno's text when the kernel
/// answered with one ("File exists (os error 17)"), else rtnetlink's text.
fn detail(e: &rtnetlink::Error) -> String {
    match errno(e) {
        Some(n) if n > 0 => std::io::Error::from_raw_os_error(n).to_string(),
        _ => e.to_string(),
    }
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Netlink { what, source }
}

/// The errno of a netlink error reply, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The devices twill's entries live on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DevIndex {
    /// The VXLAN device; `None` in host-gw mode.
    pub vxlan: Option<u32>,
    /// The VXLAN device over the IPv6 underlay, when there is one.
    pub vxlan6: Option<u32>,
    pub underlay: u32,
    /// The WireGuard tunnel device, in wireguard mode.
    pub wireguard: Option<u32>,
}

/// A netlink handle in the namespace the agent runs in.
#[derive(Clone)]
pub struct Kernel {
    handle: Handle,
}

impl Kernel {
    /// Opens the netlink socket and drives it on the current tokio runtime.
    pub fn connect() -> Result<Kernel> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(KernelError::Connect)?;
        tokio::spawn(conn);
        Ok(Kernel { handle })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;
    use std::num::NonZeroI32;

    fn kernel_error(code: i32) -> rtnetlink::Error {
        let mut m = ErrorMessage::default();
        m.code = NonZeroI32::new(-code);
        rtnetlink::Error::NetlinkError(m)
    }

    #[test]
    fn errno_reads_the_negated_code_of_an_error_reply() {
        assert_eq!(errno(&kernel_error(libc::EEXIST)), Some(libc::EEXIST));
        assert_eq!(errno(&rtnetlink::Error::RequestFailed), None);
    }

    #[test]
    fn netlink_error_names_the_object_and_the_errno() {
        let e = nl("create vxlan device twill.1")(kernel_error(libc::EEXIST));
        assert_eq!(
            e.to_string(),
            "create vxlan device twill.1: File exists (os error 17)"
        );
        let e = nl("list links")(rtnetlink::Error::RequestFailed);
        assert_eq!(e.to_string(), "list links: A netlink request failed");
    }
}

/// Devices and literals the tests of every part share.
#[cfg(test)]
mod fixtures {
    use std::net::IpAddr;

    use ipnet::IpNet;

    use super::DevIndex;

    pub const VXLAN: u32 = 10;
    pub const VXLAN6: u32 = 11;
    pub const UNDERLAY: u32 = 2;
    /// Dual-stack vxlan mode: both tunnels.
    pub const DEV: DevIndex = DevIndex {
        vxlan: Some(VXLAN),
        vxlan6: Some(VXLAN6),
        underlay: UNDERLAY,
        wireguard: None,
    };
    /// host-gw mode: no tunnel.
    pub const HOST_GW: DevIndex = DevIndex {
        vxlan: None,
        vxlan6: None,
        underlay: UNDERLAY,
        wireguard: None,
    };

    pub fn ip(s: &str) -> IpAddr {
        s.parse().expect("literal")
    }

    pub fn net(s: &str) -> IpNet {
        s.parse().expect("literal")
    }
}
