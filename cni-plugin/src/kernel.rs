//! Netlink effects: bridge, veth pair, addresses and routes, in the host
//! namespace or in a pod namespace.
//!
//! `setns` moves only the calling thread, so every batch of netlink work runs
//! on a fresh `std::thread` that enters the namespace first and only then
//! builds its own runtime and netlink socket (the socket belongs to the
//! namespace it was created in). The thread ends with the batch, so no thread
//! of the process is ever left inside a pod namespace. The same holds for
//! `/proc/sys/net`: it shows the network namespace of the thread that opens
//! the file, so per-interface IPv6 sysctls are written from that thread too.

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkBridgePort, LinkMessageBuilder, LinkUnspec, LinkVeth,
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

/// Runs `f` with a netlink handle of the namespace `netns` (or of the
/// caller's namespace when `None`) on a dedicated thread.
pub fn with_handle<T, F, Fut>(netns: Option<&File>, f: F) -> Result<T, Error>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: Future<Output = Result<T, Error>>,
{
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            if let Some(ns) = netns {
                setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| Error::Internal {
                    reason: format!("setns into pod namespace: {e}"),
                })?;
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::Internal {
                    reason: format!("tokio runtime: {e}"),
                })?;
            rt.block_on(async move {
                let (conn, handle, _) =
                    rtnetlink::new_connection().map_err(|e| Error::Internal {
                        reason: format!("netlink socket: {e}"),
                    })?;
                tokio::spawn(conn);
                f(handle).await
            })
        });
        worker.join().unwrap_or_else(|_| {
            Err(Error::Internal {
                reason: "netlink worker thread panicked".into(),
            })
        })
    })
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
}

impl LinkInfo {
    fn from_msg(m: &LinkMessage) -> Self {
        let mut info = LinkInfo {
            index: m.header.index,
            mac: Vec::new(),
            mtu: None,
            controller: None,
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
pub async fn delete_link(h: &Handle, name: &str) -> Result<bool, Error> {
    let Some(link) = link_by_name(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(link.index).execute().await {
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
    let mut change = LinkUnspec::new_with_index(link.index).up();
    if link.mac.iter().all(|b| *b == 0) {
        change = change.address(mac);
    }
    h.link()
        .change(change.build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("set bridge {name} up"), e))?;
    let what = format!("bridge {name}");
    add_address(h, link.index, IpNet::V4(gateway_net), &what).await?;
    if let Some(gw6) = gateway_net6 {
        ensure_ipv6_enabled(name)?;
        add_address(h, link.index, IpNet::V6(gw6), &what).await?;
    }
    Ok(link.index)
}

/// Creates a veth pair whose peer is born inside the namespace `pod_ns`
/// already named `pod_ifname`, both ends with `mtu`. Returns the host index.
pub async fn create_veth(
    h: &Handle,
    host_ifname: &str,
    pod_ifname: &str,
    pod_ns: &File,
    mtu: u32,
) -> Result<u32, Error> {
    let peer = LinkUnspec::new_with_name(pod_ifname)
        .mtu(mtu)
        .setns_by_fd(pod_ns.as_raw_fd())
        .build();
    let msg = LinkMessageBuilder::<LinkVeth>::new_with_info_kind(InfoKind::Veth)
        .name(host_ifname)
        .mtu(mtu)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("create veth {host_ifname} <-> {pod_ifname}"), e))?;
    link_by_name(h, host_ifname)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| Error::Internal {
            reason: format!("veth {host_ifname} vanished right after creation"),
        })
}

/// Enslaves the host end to the bridge, sets hairpin mode, brings it up.
pub async fn attach_to_bridge(
    h: &Handle,
    host_index: u32,
    bridge_index: u32,
    hairpin: bool,
) -> Result<(), Error> {
    h.link()
        .change(
            LinkUnspec::new_with_index(host_index)
                .controller(bridge_index)
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("attach link {host_index} to bridge"), e))?;
    h.link()
        .set_port(LinkBridgePort::new(host_index).hairpin(hairpin).build())
        .execute()
        .await
        .map_err(|e| Error::netlink(format!("set hairpin on link {host_index}"), e))
}

/// Inside the pod namespace (called on the thread that entered it):
/// addresses, up, default routes. Returns the MAC.
pub async fn configure_pod(
    h: &Handle,
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
        ensure_ipv6_enabled(ifname)?;
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
