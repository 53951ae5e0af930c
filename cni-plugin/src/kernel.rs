//! Netlink effects: bridge, veth pair, addresses and routes, in the host
//! namespace or in a pod namespace.
//!
//! One plugin call opens at most one netlink socket per namespace
//! ([`Socket`], blocking, no runtime). A socket belongs to the namespace it
//! was created in, so the pod-namespace socket is opened after `setns` into
//! the pod and the thread then returns to its own namespace at once
//! ([`within`]); every request then runs from the host namespace. The same
//! holds for `/proc/sys/net`: it shows the network namespace of the thread
//! that opens the file, so per-interface IPv6 sysctls of the pod are written
//! inside [`within`] too.
//!
//! Requests that do not need each other's answers are built here as
//! [`Request`]s and sent together by the caller in one [`Batch`].

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{
    AddressMessageBuilder, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::error::Error;
use crate::netlink::{Answer, NlError, Pending, Request, Socket};

mod ioctl;
pub use ioctl::{brief, index_of, primary_ipv4, Brief};

/// Opens a namespace file (e.g. `/run/netns/pod1`).
pub fn open_netns(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|e| Error::Netns {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Runs `f` with the calling thread inside the network namespace `netns`,
/// then moves the thread back to the namespace it came from. If the way
/// back fails the call fails, before the caller can act in the wrong place.
pub fn within<T>(netns: &File, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    let home = File::open("/proc/thread-self/ns/net").map_err(|e| Error::Internal {
        reason: format!("open own network namespace: {e}"),
    })?;
    setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Internal {
        reason: format!("setns into pod namespace: {e}"),
    })?;
    let out = f();
    setns(&home, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Internal {
        reason: format!("setns back from pod namespace: {e}"),
    })?;
    out
}

fn socket_error(e: NlError) -> Error {
    Error::netlink("open socket", e)
}

/// A netlink socket in the calling thread's namespace.
pub fn socket() -> Result<Socket, Error> {
    Socket::open().map_err(socket_error)
}

/// A netlink socket in namespace `netns`.
pub fn socket_in(netns: &File) -> Result<Socket, Error> {
    within(netns, socket)
}

/// Requests sent together, each with the operation named in its error.
#[derive(Default)]
pub struct Batch {
    reqs: Vec<Request>,
    ops: Vec<String>,
}

/// A batch written to its socket, answers not read yet.
#[must_use = "the answers must be collected"]
pub struct Sent {
    pending: Pending,
    ops: Vec<String>,
}

impl Batch {
    pub fn new() -> Self {
        Batch::default()
    }

    pub fn push(&mut self, op: impl Into<String>, req: Request) -> &mut Self {
        self.reqs.push(req);
        self.ops.push(op.into());
        self
    }

    pub fn send(self, s: &mut Socket) -> Result<Sent, Error> {
        let pending = s
            .send(self.reqs)
            .map_err(|e| Error::netlink(self.ops.join(", "), e))?;
        Ok(Sent {
            pending,
            ops: self.ops,
        })
    }

    /// Sends and waits; the first refused request is the error.
    pub fn run(self, s: &mut Socket) -> Result<Vec<Vec<RouteNetlinkMessage>>, Error> {
        self.send(s)?.wait(s)
    }
}

impl Sent {
    /// Every answer, refused ones included, with their operation names.
    pub fn answers(self, s: &mut Socket) -> Result<Vec<(String, Answer)>, Error> {
        let answers = s
            .collect(self.pending)
            .map_err(|e| Error::netlink(self.ops.join(", "), e))?;
        Ok(self.ops.into_iter().zip(answers).collect())
    }

    /// The link in the answer to a batch of one [`get_link`].
    pub fn link(self, s: &mut Socket) -> Result<Option<LinkInfo>, Error> {
        let (op, answer) = self.answers(s)?.pop().ok_or_else(|| Error::Internal {
            reason: "netlink batch without an answer".into(),
        })?;
        link_of(&op, answer)
    }

    /// The replies; the first refused request is the error.
    pub fn wait(self, s: &mut Socket) -> Result<Vec<Vec<RouteNetlinkMessage>>, Error> {
        self.answers(s)?
            .into_iter()
            .map(|(op, a)| a.map_err(|e| Error::netlink(op, e)))
            .collect()
    }
}

/// A link's identity as the plugin needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub mac: Vec<u8>,
    pub mtu: Option<u32>,
    pub controller: Option<u32>,
    pub up: bool,
}

impl LinkInfo {
    pub fn of(m: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: m.header.index,
            mac: Vec::new(),
            mtu: None,
            controller: None,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::Address(b) => info.mac = b.clone(),
                LinkAttribute::Mtu(v) => info.mtu = Some(*v),
                LinkAttribute::Controller(c) => info.controller = Some(*c),
                _ => {}
            }
        }
        info
    }
}

/// GET of the link called `name`.
pub fn get_link(name: &str) -> Request {
    Request::ack(RouteNetlinkMessage::GetLink(
        LinkUnspec::new_with_name(name).build(),
    ))
}

/// The link in the answer to [`get_link`]; `None` if there is none.
pub fn link_of(op: &str, answer: Answer) -> Result<Option<LinkInfo>, Error> {
    match answer {
        Ok(msgs) => Ok(msgs.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(LinkInfo::of(l)),
            _ => None,
        })),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(Error::netlink(op, e)),
    }
}

/// A batch of one [`get_link`] of `name`.
pub fn lookup(name: &str) -> Batch {
    let mut b = Batch::new();
    b.push(format!("get link {name}"), get_link(name));
    b
}

/// The link called `name`, or `None` if there is none.
pub fn link_by_name(s: &mut Socket, name: &str) -> Result<Option<LinkInfo>, Error> {
    lookup(name).send(s)?.link(s)
}

/// DEL of the link called `name`: the kernel resolves the name, so no
/// lookup comes first.
pub fn delete_link_req(name: &str) -> Request {
    Request::ack(RouteNetlinkMessage::DelLink(
        LinkUnspec::new_with_name(name).build(),
    ))
}

/// Whether the answer to [`delete_link_req`] deleted something;
/// `Ok(false)` if the link was already gone.
pub fn deleted(op: &str, answer: Answer) -> Result<bool, Error> {
    match answer {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(Error::netlink(op, e)),
    }
}

/// Deletes the link called `name`; `Ok(false)` if it was already gone.
pub fn delete_link(s: &mut Socket, name: &str) -> Result<bool, Error> {
    deleted(&format!("delete link {name}"), s.one(delete_link_req(name)))
}

/// The fixed bridge MAC, so the bridge never falls back to 00:00:.. when
/// its last port leaves; the agent's rule, so it does not matter which of
/// the two creates the bridge.
/// The IPv4 gateway's rule, or on an IPv6-only node the IPv6 gateway's.
pub fn bridge_mac(gateway: IpAddr) -> Vec<u8> {
    match gateway {
        IpAddr::V4(g) => twill_contract::Mac::for_bridge(g).0.to_vec(),
        IpAddr::V6(g) => twill_contract::Mac::for_bridge6(g).0.to_vec(),
    }
}

/// Makes sure IPv6 is not disabled on `ifname` in the calling thread's
/// network namespace: an interface with `disable_ipv6=1` refuses IPv6
/// addresses. Only writes when needed.
pub fn ensure_ipv6_enabled(ifname: &str) -> Result<(), Error> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"));
    let sysctl = |source| Error::Sysctl {
        path: path.clone(),
        source,
    };
    let current = std::fs::read_to_string(&path).map_err(sysctl)?;
    if current.trim() != "0" {
        std::fs::write(&path, "0").map_err(sysctl)?;
    }
    Ok(())
}

/// Adds (or replaces) an address; IPv6 ones with `IFA_F_NODAD` so they are
/// usable at once instead of after duplicate address detection: the IPAM
/// store already guarantees uniqueness in the node subnet.
pub fn add_address(index: u32, addr: IpNet) -> Request {
    let msg = match addr {
        IpNet::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(index)
            .address(a.addr(), a.prefix_len())
            .build(),
        IpNet::V6(a) => {
            let mut msg = AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a.addr(), a.prefix_len())
                .build();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            msg
        }
    };
    Request::replace(RouteNetlinkMessage::NewAddress(msg))
}

/// Sets the MTU of link `index`.
pub fn set_mtu(index: u32, mtu: u32) -> Request {
    Request::ack(RouteNetlinkMessage::NewLink(
        LinkUnspec::new_with_index(index).mtu(mtu).build(),
    ))
}

/// Brings link `index` up.
pub fn set_up(index: u32) -> Request {
    Request::ack(RouteNetlinkMessage::NewLink(
        LinkUnspec::new_with_index(index).up().build(),
    ))
}

/// Makes sure the bridge `existing` (the [`brief`] of `name`) exists, is up and has its MAC, creating it (fixed MAC, MTU) if
/// missing, and that IPv6 is enabled on it when `v6`. Returns its index.
/// The gateway addresses are left to the caller ([`add_address`]), to be
/// batched with the veth.
pub fn ensure_bridge(
    s: &mut Socket,
    existing: Option<Brief>,
    name: &str,
    gateway: IpAddr,
    v6: bool,
    mtu: u32,
) -> Result<u32, Error> {
    let mac = bridge_mac(gateway);
    let link = match existing {
        Some(l) => l,
        None => {
            let msg = LinkBridge::new(name).address(mac.clone()).mtu(mtu).build();
            match s.one(Request::create(RouteNetlinkMessage::NewLink(msg))) {
                Ok(_) => {}
                // Another ADD created it between our lookup and create.
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(Error::netlink(format!("create bridge {name}"), e)),
            }
            brief(s, name)?.ok_or_else(|| Error::Internal {
                reason: format!("bridge {name} vanished right after creation"),
            })?
        }
    };
    let mac_lost = link.mac.iter().all(|b| *b == 0);
    // Already up with a MAC on every ADD but the first: skip the request.
    if !link.up || mac_lost {
        let mut change = LinkUnspec::new_with_index(link.index).up();
        if mac_lost {
            change = change.address(mac);
        }
        s.one(Request::ack(RouteNetlinkMessage::NewLink(change.build())))
            .map_err(|e| Error::netlink(format!("set bridge {name} up"), e))?;
    }
    if v6 {
        ensure_ipv6_enabled(name)?;
    }
    Ok(link.index)
}

/// A random locally administered unicast MAC, as the kernel would pick
/// for a veth end; chosen here so ADD need not read the link back for it.
pub fn random_mac() -> Vec<u8> {
    let mut mac: [u8; 6] = rand::random();
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac.to_vec()
}

/// The veth pair ADD wants, created by one request.
#[derive(Debug, Clone, Copy)]
pub struct Veth<'a> {
    pub host_ifname: &'a str,
    pub host_mac: &'a [u8],
    pub pod_ifname: &'a str,
    pub pod_mac: &'a [u8],
    pub pod_ns: &'a File,
    pub mtu: u32,
    pub bridge_index: u32,
}

/// Creates a veth pair in one request, everything set at creation: the peer
/// is born inside the pod namespace already named, with its MAC; both ends
/// get the MTU, the host end gets its MAC, is enslaved to the bridge and
/// comes up.
///
/// Both ends get one TX and one RX queue, stated in the request. A veth
/// left to the default is allocated a queue per CPU and then cut down to
/// one active queue, and each cut waits for an RCU grace period while
/// holding the RTNL lock: two waits per ADD that stall every other netlink
/// user of the host, and under parallel ADDs the most of their latency. The
/// stated count gives the same one active queue without the wait (only
/// `ethtool -L` can no longer raise it later).
pub fn create_veth(v: Veth<'_>) -> Request {
    // The peer cannot come up in this request: the kernel answers ENOTCONN.
    let peer = LinkUnspec::new_with_name(v.pod_ifname)
        .mtu(v.mtu)
        .address(v.pod_mac.to_vec())
        .setns_by_fd(v.pod_ns.as_raw_fd())
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(v.host_ifname)
        .mtu(v.mtu)
        .address(v.host_mac.to_vec())
        .controller(v.bridge_index)
        .up()
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
        .append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    Request::create(RouteNetlinkMessage::NewLink(msg))
}

/// Turns hairpin mode on for the bridge port `index` (a new port has it off).
pub fn set_hairpin(index: u32) -> Request {
    Request::ack(RouteNetlinkMessage::NewLink(
        LinkBridgePort::new(index).hairpin(true).build(),
    ))
}

/// Default route via `gateway` out of link `index`.
pub fn default_route(index: u32, gateway: IpAddr) -> Request {
    let msg = match gateway {
        IpAddr::V4(gw) => RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build(),
        IpAddr::V6(gw) => RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build(),
    };
    Request::replace(RouteNetlinkMessage::NewRoute(msg))
}

/// The pod end's configuration, in the order the kernel must see it:
/// addresses, up, default routes.
pub fn configure_pod(
    b: &mut Batch,
    ifname: &str,
    index: u32,
    v4: Option<(Ipv4Net, Ipv4Addr)>,
    v6: Option<(Ipv6Net, Ipv6Addr)>,
) {
    if let Some((address, _)) = v4 {
        b.push(
            format!("add {address} to {ifname}"),
            add_address(index, IpNet::V4(address)),
        );
    }
    if let Some((address6, _)) = v6 {
        b.push(
            format!("add {address6} to {ifname}"),
            add_address(index, IpNet::V6(address6)),
        );
    }
    b.push(format!("set {ifname} up"), set_up(index));
    if let Some((_, gateway)) = v4 {
        b.push(
            format!("add default route via {gateway} on {ifname}"),
            default_route(index, IpAddr::V4(gateway)),
        );
    }
    if let Some((_, gateway6)) = v6 {
        b.push(
            format!("add default route via {gateway6} on {ifname}"),
            default_route(index, IpAddr::V6(gateway6)),
        );
    }
}

/// Addresses of both families (with prefix length) on link `index`.
pub fn addresses(s: &mut Socket, index: u32) -> Result<Vec<IpNet>, Error> {
    let dump = Request::dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()));
    let msgs = s
        .one(dump)
        .map_err(|e| Error::netlink(format!("list addresses of link {index}"), e))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(m) = m else {
            continue;
        };
        if m.header.index != index {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a {
                if let Ok(net) = IpNet::new(*ip, m.header.prefix_len) {
                    out.push(net);
                }
            }
        }
    }
    Ok(out)
}

/// Gateways of default routes of both families leaving through link `index`.
pub fn default_gateways(s: &mut Socket, index: u32) -> Result<Vec<IpAddr>, Error> {
    let mut out = Vec::new();
    for dump in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        let msgs = s
            .one(Request::dump(RouteNetlinkMessage::GetRoute(dump)))
            .map_err(|e| Error::netlink("list routes", e))?;
        for m in &msgs {
            if let RouteNetlinkMessage::NewRoute(m) = m {
                default_gateway_of(m, index, &mut out);
            }
        }
    }
    Ok(out)
}

fn default_gateway_of(m: &RouteMessage, index: u32, out: &mut Vec<IpAddr>) {
    if m.header.destination_prefix_length != 0 {
        return;
    }
    let oif = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    if oif != Some(index) {
        return;
    }
    for a in &m.attributes {
        match a {
            RouteAttribute::Gateway(RouteAddress::Inet(gw)) => out.push(IpAddr::V4(*gw)),
            RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => out.push(IpAddr::V6(*gw)),
            _ => {}
        }
    }
}

/// Host-side veth name: `veth` + 11 hex digits of a stable hash of
/// container id and ifname (15 bytes, the kernel limit).
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    // FNV-1a: stable across Rust versions, unlike DefaultHasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in container_id.bytes().chain([0u8]).chain(ifname.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("veth{:011x}", h & 0xfff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_short_stable_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a.len(), 15);
        assert!(a.starts_with("veth"));
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        // The separator keeps ("ab","ceth0") apart from ("abc","eth0").
        assert_ne!(a, host_veth_name("ab", "ceth0"));
    }

    #[test]
    fn bridge_mac_is_local_unicast() {
        let m = bridge_mac(Ipv4Addr::new(10, 244, 3, 1).into());
        assert_eq!(m, vec![0x0a, 0x58, 10, 244, 3, 1]);
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        let m = bridge_mac(
            "fd00:10:244:3::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .into(),
        );
        assert_eq!(m, vec![0x0a, 0x58, 0, 0, 0, 1]);
    }
}
