//! Netlink effects: bridge, veth pair, addresses and routes, in the host
//! namespace or in a pod namespace.
//!
//! One plugin call builds one current-thread runtime ([`Netlink`]) and opens
//! at most one netlink socket per namespace on it. A socket belongs to the
//! namespace it was created in, and `setns` moves only the calling thread, so
//! the pod-namespace socket is opened on a short-lived thread that enters the
//! namespace, opens it and ends: no thread of the process is ever left inside
//! a pod namespace, and all requests then run on the caller's thread. The
//! same holds for `/proc/sys/net`: it shows the network namespace of the
//! thread that opens the file, so per-interface IPv6 sysctls of the pod are
//! written from such a thread too ([`in_netns`]).

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkDelRequest, LinkMessageBuilder, LinkUnspec, LinkVeth,
    RouteMessageBuilder,
};

use crate::error::Error;

/// Opens a namespace file (e.g. `/run/netns/pod1`).
pub fn open_netns(path: &Path) -> Result<File, Error> {
    File::open(path).map_err(|e| Error::Netns {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Runs `f` on a dedicated thread that first enters the namespace `netns`,
/// for the few things that only work from inside it (sysctls, sockets). The
/// thread ends with `f`, taking the namespace switch with it.
pub fn in_netns<T, F>(netns: &File, f: F) -> Result<T, Error>
where
    T: Send,
    F: FnOnce() -> Result<T, Error> + Send,
{
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            setns(netns, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Internal {
                reason: format!("setns into pod namespace: {e}"),
            })?;
            f()
        });
        worker.join().unwrap_or_else(|_| {
            Err(Error::Internal {
                reason: "pod namespace worker thread panicked".into(),
            })
        })
    })
}

/// The runtime of one plugin call: netlink requests of every namespace run
/// on it, on the calling thread.
pub struct Netlink {
    rt: tokio::runtime::Runtime,
}

fn socket_error(e: std::io::Error) -> Error {
    Error::Internal {
        reason: format!("netlink socket: {e}"),
    }
}

impl Netlink {
    pub fn new() -> Result<Self, Error> {
        // Timers and the fs driver are never used: enabling only I/O keeps
        // the runtime start to an epoll instance and an eventfd.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::Internal {
                reason: format!("tokio runtime: {e}"),
            })?;
        Ok(Netlink { rt })
    }

    /// A handle on a new socket in the calling thread's namespace.
    pub fn here(&self) -> Result<Handle, Error> {
        let _entered = self.rt.enter();
        let (conn, handle, _) = rtnetlink::new_connection().map_err(socket_error)?;
        self.rt.spawn(conn);
        Ok(handle)
    }

    /// A handle on a new socket in namespace `netns`. Only the socket's
    /// creation happens in there (see the module doc); the connection is
    /// registered with this runtime and driven from the calling thread.
    pub fn in_netns(&self, netns: &File) -> Result<Handle, Error> {
        let rt = self.rt.handle().clone();
        let conn = in_netns(netns, move || {
            let _entered = rt.enter();
            rtnetlink::new_connection().map_err(socket_error)
        })?;
        let (conn, handle, _) = conn;
        self.rt.spawn(conn);
        Ok(handle)
    }

    /// Runs `f` to completion on the calling thread.
    pub fn run<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

fn errno_of(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(-m.raw_code()),
        _ => None,
    }
}

fn is_not_found(e: &rtnetlink::Error) -> bool {
    matches!(errno_of(e), Some(libc::ENODEV) | Some(libc::ENOENT))
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    errno_of(e) == Some(libc::EEXIST)
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
    fn from_msg(m: &LinkMessage) -> Self {
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

/// The link called `name`, or `None` if there is none.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkInfo>, Error> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(Some(m)) => Ok(Some(LinkInfo::from_msg(&m))),
        Ok(None) => Ok(None),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(Error::netlink(format!("get link {name}"), e)),
    }
}

/// Deletes the link called `name`; `Ok(false)` if it was already gone.
/// One request by name: the kernel resolves it, so no lookup comes first.
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, Error> {
    let msg = LinkUnspec::new_with_name(name).build();
    match LinkDelRequest::new_with_message(h.clone(), msg)
        .execute()
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(Error::netlink(format!("delete link {name}"), e)),
    }
}

/// The fixed bridge MAC: locally administered `0a:58` + the gateway address,
/// so the bridge never falls back to 00:00:.. when its last port leaves.
pub fn bridge_mac(gateway: Ipv4Addr) -> Vec<u8> {
    let o = gateway.octets();
    vec![0x0a, 0x58, o[0], o[1], o[2], o[3]]
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
pub async fn add_address(h: &Handle, index: u32, addr: IpNet, what: &str) -> Result<(), Error> {
    let mut req = h
        .address()
        .add(index, addr.addr(), addr.prefix_len())
        .replace();
    if addr.addr().is_ipv6() {
        let msg = req.message_mut();
        msg.header.flags |= AddressHeaderFlags::Nodad;
        msg.attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute()
        .await
        .map_err(|e| Error::netlink(format!("add {addr} to {what}"), e))
}

/// Creates the bridge if missing (fixed MAC, MTU), puts the gateway
/// address(es) on it and brings it up. Returns its index.
pub async fn ensure_bridge(
    h: &Handle,
    name: &str,
    gateway_net: Ipv4Net,
    gateway_net6: Option<Ipv6Net>,
    mtu: u32,
) -> Result<u32, Error> {
    let mac = bridge_mac(gateway_net.addr());
    let link = match link_by_name(h, name).await? {
        Some(l) => l,
        None => {
            let msg = LinkBridge::new(name).address(mac.clone()).mtu(mtu).build();
            match h.link().add(msg).execute().await {
                Ok(()) => {}
                // Another ADD created it between our lookup and create.
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(Error::netlink(format!("create bridge {name}"), e)),
            }
            link_by_name(h, name)
                .await?
                .ok_or_else(|| Error::Internal {
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
        h.link()
            .change(change.build())
            .execute()
            .await
            .map_err(|e| Error::netlink(format!("set bridge {name} up"), e))?;
    }
    let what = format!("bridge {name}");
    add_address(h, link.index, IpNet::V4(gateway_net), &what).await?;
    if let Some(gw6) = gateway_net6 {
        ensure_ipv6_enabled(name)?;
        add_address(h, link.index, IpNet::V6(gw6), &what).await?;
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
    pub pod_ns: &'a File,
    pub mtu: u32,
    pub bridge_index: u32,
}

/// Creates a veth pair in one request, everything set at creation: the peer
/// is born inside the pod namespace already named, both ends get the MTU,
/// the host end gets its MAC, is enslaved to the bridge and comes up.
pub async fn create_veth(h: &Handle, v: Veth<'_>) -> Result<(), Error> {
    // The peer cannot come up in this request: the kernel answers ENOTCONN.
    let peer = LinkUnspec::new_with_name(v.pod_ifname)
        .mtu(v.mtu)
        .setns_by_fd(v.pod_ns.as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(v.host_ifname)
        .mtu(v.mtu)
        .address(v.host_mac.to_vec())
        .controller(v.bridge_index)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link().add(msg).execute().await.map_err(|e| {
        Error::netlink(
            format!("create veth {} <-> {}", v.host_ifname, v.pod_ifname),
            e,
        )
    })
}

/// Turns hairpin mode on for the bridge port `name` (a new port has it off).
pub async fn set_hairpin(h: &Handle, name: &str) -> Result<(), Error> {
    let index = link_by_name(h, name)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| Error::Internal {
            reason: format!("veth {name} vanished right after creation"),
        })?;
    h.link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("set hairpin on {name}"), e))
}

/// With a handle of the pod namespace: addresses, up, default routes on
/// the pod end. `pod_ns` is only entered for the IPv6 sysctl. Returns the
/// MAC.
pub async fn configure_pod(
    h: &Handle,
    pod_ns: &File,
    ifname: &str,
    address: Ipv4Net,
    gateway: Ipv4Addr,
    v6: Option<(Ipv6Net, Ipv6Addr)>,
) -> Result<Vec<u8>, Error> {
    let link = link_by_name(h, ifname)
        .await?
        .ok_or_else(|| Error::Internal {
            reason: format!("{ifname} missing in pod namespace after creation"),
        })?;
    add_address(h, link.index, IpNet::V4(address), ifname).await?;
    if let Some((address6, _)) = v6 {
        in_netns(pod_ns, || ensure_ipv6_enabled(ifname))?;
        add_address(h, link.index, IpNet::V6(address6), ifname).await?;
    }
    h.link()
        .change(LinkUnspec::new_with_index(link.index).up().build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("set {ifname} up"), e))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gateway)
        .output_interface(link.index)
        .build();
    h.route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("add default route via {gateway} on {ifname}"), e))?;
    if let Some((_, gateway6)) = v6 {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .gateway(gateway6)
            .output_interface(link.index)
            .build();
        h.route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                Error::netlink(format!("add default route via {gateway6} on {ifname}"), e)
            })?;
    }
    Ok(link.mac)
}

/// Addresses of both families (with prefix length) on link `index`.
pub async fn addresses(h: &Handle, index: u32) -> Result<Vec<IpNet>, Error> {
    let mut stream = h.address().get().set_link_index_filter(index).execute();
    let mut out = Vec::new();
    while let Some(m) = stream
        .try_next()
        .await
        .map_err(|e| Error::netlink(format!("list addresses of link {index}"), e))?
    {
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
pub async fn default_gateways(h: &Handle, index: u32) -> Result<Vec<IpAddr>, Error> {
    let mut out = Vec::new();
    for dump in [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ] {
        default_gateways_in(h, dump, index, &mut out).await?;
    }
    Ok(out)
}

async fn default_gateways_in(
    h: &Handle,
    dump: rtnetlink::packet_route::route::RouteMessage,
    index: u32,
    out: &mut Vec<IpAddr>,
) -> Result<(), Error> {
    let mut stream = h.route().get(dump).execute();
    while let Some(m) = stream
        .try_next()
        .await
        .map_err(|e| Error::netlink("list routes", e))?
    {
        if m.header.destination_prefix_length != 0 {
            continue;
        }
        let oif = m.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        });
        if oif != Some(index) {
            continue;
        }
        for a in &m.attributes {
            match a {
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => out.push(IpAddr::V4(*gw)),
                RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => out.push(IpAddr::V6(*gw)),
                _ => {}
            }
        }
    }
    Ok(())
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
        let m = bridge_mac(Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(m, vec![0x0a, 0x58, 10, 244, 3, 1]);
        assert_eq!(m[0] & 0x01, 0, "unicast");
        assert_eq!(m[0] & 0x02, 0x02, "locally administered");
    }
}
