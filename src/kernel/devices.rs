//! The devices twill owns or rides on: finds the underlay, creates and
//! repairs the pod bridge and the VXLAN device, keeps their addresses, and
//! removes them all on `cleanup`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVxlan};

use super::{errno, nl, Kernel, KernelError, Result, EEXIST, ENODEV};
use crate::reconcile::Mac;

/// The underlay interface the VXLAN traffic leaves by.
#[derive(Debug, Clone)]
pub struct Underlay {
    pub name: String,
    pub index: u32,
    pub mtu: u32,
    pub ip: Ipv4Addr,
    /// The public IP with the prefix of the underlay subnet it sits in (a
    /// /32 when the address is not configured on the interface).
    pub net: Ipv4Net,
}

/// What the VXLAN device must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    /// The underlay address the tunnel is sourced from (either family).
    pub local: IpAddr,
    pub underlay_index: u32,
    pub mtu: u32,
    pub mac: Mac,
    pub gbp: bool,
}

/// The attributes of an existing link that twill cares about.
#[derive(Debug, Clone, Default)]
pub struct LinkInfoView {
    pub index: u32,
    pub name: String,
    pub kind: Option<String>,
    pub mtu: Option<u32>,
    pub mac: Option<Mac>,
    pub up: bool,
    pub vxlan_id: Option<u32>,
    pub vxlan_local: Option<IpAddr>,
    pub vxlan_link: Option<u32>,
    pub vxlan_port: Option<u16>,
    pub vxlan_learning: Option<bool>,
    pub vxlan_gbp: bool,
}

impl LinkInfoView {
    /// Reads the view out of a link message from a dump or an event.
    pub fn from_message(msg: &LinkMessage) -> Self {
        let mut v = LinkInfoView {
            index: msg.header.index,
            up: msg.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => v.name = n.clone(),
                LinkAttribute::Mtu(m) => v.mtu = Some(*m),
                LinkAttribute::Address(a) => v.mac = Mac::from_slice(a),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(k) => v.kind = Some(kind_name(k)),
                            LinkInfo::Data(InfoData::Vxlan(vx)) => {
                                for a in vx {
                                    match a {
                                        InfoVxlan::Id(id) => v.vxlan_id = Some(*id),
                                        InfoVxlan::Local(ip) => v.vxlan_local = Some((*ip).into()),
                                        InfoVxlan::Local6(ip) => v.vxlan_local = Some((*ip).into()),
                                        InfoVxlan::Link(l) => v.vxlan_link = Some(*l),
                                        InfoVxlan::Port(p) => v.vxlan_port = Some(*p),
                                        InfoVxlan::Learning(l) => v.vxlan_learning = Some(*l),
                                        InfoVxlan::Gbp => v.vxlan_gbp = true,
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        v
    }
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Vxlan => "vxlan".into(),
        InfoKind::Veth => "veth".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Why an existing VXLAN device cannot be fixed in place and must be
/// recreated (flannel's `vxlanLinksIncompat`): these attributes are fixed at
/// creation. `None` when it is compatible.
pub fn vxlan_incompatibility(have: &LinkInfoView, want: &VxlanSpec) -> Option<String> {
    if have.kind.as_deref() != Some("vxlan") {
        return Some(format!("kind {:?}", have.kind));
    }
    if have.vxlan_id != Some(want.vni) {
        return Some(format!("VNI {:?} != {}", have.vxlan_id, want.vni));
    }
    if have.vxlan_local != Some(want.local) {
        return Some(format!("local {:?} != {}", have.vxlan_local, want.local));
    }
    if have.vxlan_link != Some(want.underlay_index) {
        return Some(format!(
            "underlay index {:?} != {}",
            have.vxlan_link, want.underlay_index
        ));
    }
    if have.vxlan_port != Some(want.port) {
        return Some(format!("port {:?} != {}", have.vxlan_port, want.port));
    }
    if have.vxlan_learning != Some(false) {
        return Some("learning is on".into());
    }
    if have.vxlan_gbp != want.gbp {
        return Some(format!("gbp {} != {}", have.vxlan_gbp, want.gbp));
    }
    None
}

/// The message that creates the VXLAN device of `spec`, up, learning off.
pub fn vxlan_link_message(spec: &VxlanSpec) -> LinkMessage {
    let mut b = LinkVxlan::new(&spec.name, spec.vni)
        .dev(spec.underlay_index)
        .port(spec.port)
        .learning(false)
        .mtu(spec.mtu)
        .address(spec.mac.0.to_vec())
        .up();
    b = match spec.local {
        IpAddr::V4(ip) => b.local(ip),
        IpAddr::V6(ip) => b.local6(ip),
    };
    if spec.gbp {
        b = b.gbp();
    }
    b.build()
}

/// The address an address message puts on its interface, with its prefix.
/// For IPv4 the local address counts (it differs from IFA_ADDRESS only on
/// point-to-point links).
fn address_net(m: &AddressMessage) -> Option<IpNet> {
    let pick = |local: bool| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    let addr = match m.header.family {
        AddressFamily::Inet => pick(true).or_else(|| pick(false)),
        AddressFamily::Inet6 => pick(false),
        _ => None,
    };
    addr.and_then(|ip| IpNet::new(ip, m.header.prefix_len).ok())
}

/// The output interface of the first default route in the main table.
fn default_oif(routes: &[RouteMessage]) -> Option<u32> {
    routes.iter().find_map(|r| {
        if r.header.destination_prefix_length != 0 || r.header.table != RouteHeader::RT_TABLE_MAIN {
            return None;
        }
        r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Oif(i) => Some(*i),
            _ => None,
        })
    })
}

/// Whether `cleanup` removes this link: the pod bridge, and the VXLAN
/// devices by twill's naming (`twill.<VNI>`, `twill6.<VNI>`).
fn is_twill_device(link: &LinkInfoView, bridge: &str) -> bool {
    (link.name == bridge && link.kind.as_deref() == Some("bridge"))
        || ((link.name.starts_with("twill.") || link.name.starts_with("twill6."))
            && link.kind.as_deref() == Some("vxlan"))
}

impl Kernel {
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfoView>> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match links.try_next().await {
            Ok(Some(msg)) => Ok(Some(LinkInfoView::from_message(&msg))),
            Ok(None) => Ok(None),
            Err(e) if matches!(errno(&e), Some(ENODEV)) => Ok(None),
            Err(e) => Err(nl(format!("get link {name}"))(e)),
        }
    }

    /// Every address on `index`, both families, as (message, net).
    async fn addresses(&self, index: u32) -> Result<Vec<(AddressMessage, IpNet)>> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(nl(format!("list addresses of ifindex {index}")))?;
        Ok(msgs
            .into_iter()
            .filter(|m| m.header.index == index)
            .filter_map(|m| address_net(&m).map(|net| (m, net)))
            .collect())
    }

    async fn ipv4_addresses(&self, index: u32) -> Result<Vec<(AddressMessage, Ipv4Net)>> {
        Ok(self
            .addresses(index)
            .await?
            .into_iter()
            .filter_map(|(m, n)| match n {
                IpNet::V4(v4) => Some((m, v4)),
                IpNet::V6(_) => None,
            })
            .collect())
    }

    /// Finds the underlay: `iface` or the interface of the default route,
    /// its MTU, and `public_ip` or its first IPv4 address.
    pub async fn underlay(
        &self,
        iface: Option<&str>,
        public_ip: Option<Ipv4Addr>,
    ) -> Result<Underlay> {
        let link = match iface {
            Some(name) => self
                .link(name)
                .await?
                .ok_or_else(|| KernelError::NoSuchLink(name.to_string()))?,
            None => {
                let index =
                    default_oif(&self.ipv4_routes().await?).ok_or(KernelError::NoDefaultRoute)?;
                let mut links = self.handle.link().get().match_index(index).execute();
                let msg = links
                    .try_next()
                    .await
                    .map_err(nl(format!("get link {index}")))?
                    .ok_or_else(|| KernelError::NoSuchLink(index.to_string()))?;
                LinkInfoView::from_message(&msg)
            }
        };
        let addrs: Vec<Ipv4Net> = self
            .ipv4_addresses(link.index)
            .await?
            .into_iter()
            .map(|(_, n)| n)
            .collect();
        let net = match public_ip {
            Some(ip) => addrs
                .iter()
                .find(|n| n.addr() == ip)
                .copied()
                .unwrap_or_else(|| Ipv4Net::from(ip)),
            None => *addrs
                .first()
                .ok_or_else(|| KernelError::NoAddress(link.name.clone()))?,
        };
        Ok(Underlay {
            mtu: link.mtu.unwrap_or(1500),
            name: link.name,
            index: link.index,
            ip: net.addr(),
            net,
        })
    }

    async fn set_link(&self, index: u32, mtu: Option<u32>, what: &str) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index).up();
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(nl(format!("set {what} up")))
    }

    /// Makes `index` carry `want`, and removes every other address of its
    /// family that `stale` says belongs to twill (an old subnet's). IPv6
    /// addresses are added without duplicate address detection, so they are
    /// usable at once.
    async fn ensure_address(
        &self,
        index: u32,
        want: IpNet,
        stale: impl Fn(&IpNet) -> bool,
        what: &str,
    ) -> Result<()> {
        use rtnetlink::packet_route::address::AddressHeaderFlags;
        let mut have_it = false;
        for (msg, net) in self.addresses(index).await? {
            if net == want {
                have_it = true;
            } else if net.addr().is_ipv4() == want.addr().is_ipv4() && stale(&net) {
                tracing::info!(device = what, address = %net, "removing stale address");
                self.handle
                    .address()
                    .del(msg)
                    .execute()
                    .await
                    .map_err(nl(format!("delete address {net} from {what}")))?;
            }
        }
        if !have_it {
            tracing::info!(device = what, address = %want, "adding address");
            let mut req = self
                .handle
                .address()
                .add(index, want.addr(), want.prefix_len());
            if want.addr().is_ipv6() {
                req.message_mut().header.flags = AddressHeaderFlags::Nodad;
            }
            match req.execute().await {
                Err(e) if errno(&e) != Some(EEXIST) => {
                    return Err(nl(format!("add address {want} to {what}"))(e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes `index` carry exactly one IPv4 address, `want`: the right one is
    /// kept untouched, any other IPv4 address (an old subnet's) is removed.
    pub async fn ensure_only_address(&self, index: u32, want: Ipv4Net, what: &str) -> Result<()> {
        self.ensure_address(index, want.into(), |_| true, what)
            .await
    }

    /// Makes `index` carry the IPv6 address `want` and no other address from
    /// `within` (an old subnet's). Link-local and foreign addresses stay.
    pub async fn ensure_address6(
        &self,
        index: u32,
        want: ipnet::Ipv6Net,
        within: ipnet::Ipv6Net,
        what: &str,
    ) -> Result<()> {
        self.ensure_address(
            index,
            want.into(),
            |n| matches!(n.addr(), IpAddr::V6(ip) if within.contains(&ip)),
            what,
        )
        .await
    }

    /// The first global IPv6 address of `index`, if any.
    pub async fn global_ipv6(&self, index: u32) -> Result<Option<Ipv6Addr>> {
        Ok(self
            .addresses(index)
            .await?
            .into_iter()
            .find_map(|(_, n)| match n.addr() {
                IpAddr::V6(ip) if (ip.segments()[0] & 0xffc0) != 0xfe80 && !ip.is_loopback() => {
                    Some(ip)
                }
                _ => None,
            }))
    }

    /// Creates the pod bridge if missing (with a fixed MAC, so it never falls
    /// back to 00:00:00:00:00:00 when its last port goes), puts the gateway
    /// address on it and brings it up.
    pub async fn ensure_bridge(&self, name: &str, gateway: Ipv4Net, mtu: u32) -> Result<u32> {
        let link = match self.link(name).await? {
            Some(l) => l,
            None => {
                tracing::info!(bridge = name, "creating bridge");
                let msg = LinkBridge::new(name)
                    .address(Mac::for_bridge(gateway.addr()).0.to_vec())
                    .mtu(mtu)
                    .build();
                match self.handle.link().add(msg).execute().await {
                    Err(e) if errno(&e) != Some(EEXIST) => {
                        return Err(nl(format!("create bridge {name}"))(e))
                    }
                    _ => {}
                }
                self.link(name)
                    .await?
                    .ok_or_else(|| KernelError::NoSuchLink(name.to_string()))?
            }
        };
        if link.kind.as_deref() != Some("bridge") {
            return Err(KernelError::WrongKind {
                name: name.to_string(),
                kind: link.kind.unwrap_or_else(|| "device".into()),
                want: "bridge",
            });
        }
        if !link.up {
            self.set_link(link.index, None, name).await?;
        }
        self.ensure_only_address(link.index, gateway, name).await?;
        Ok(link.index)
    }

    /// Creates the VXLAN device, or fixes it in place, or recreates it when an
    /// attribute fixed at creation differs. Returns its index.
    pub async fn ensure_vxlan(&self, spec: &VxlanSpec, address: Option<Ipv4Net>) -> Result<u32> {
        let existing = self.link(&spec.name).await?;
        let index = match existing {
            Some(have) => match vxlan_incompatibility(&have, spec) {
                None => {
                    if !have.up || have.mtu != Some(spec.mtu) {
                        tracing::info!(device = %spec.name, mtu = spec.mtu, "fixing vxlan device state");
                        self.set_link(have.index, Some(spec.mtu), &spec.name)
                            .await?;
                    }
                    if have.mac != Some(spec.mac) {
                        self.handle
                            .link()
                            .set(
                                LinkUnspec::new_with_index(have.index)
                                    .address(spec.mac.0.to_vec())
                                    .build(),
                            )
                            .execute()
                            .await
                            .map_err(nl(format!("set MAC of {}", spec.name)))?;
                    }
                    have.index
                }
                Some(why) => {
                    tracing::warn!(device = %spec.name, reason = %why, "vxlan device incompatible, recreating");
                    self.handle
                        .link()
                        .del(have.index)
                        .execute()
                        .await
                        .map_err(nl(format!("delete {}", spec.name)))?;
                    self.create_vxlan(spec).await?
                }
            },
            None => self.create_vxlan(spec).await?,
        };
        if let Some(address) = address {
            self.ensure_only_address(index, address, &spec.name).await?;
        }
        Ok(index)
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<u32> {
        tracing::info!(device = %spec.name, vni = spec.vni, local = %spec.local, "creating vxlan device");
        self.handle
            .link()
            .add(vxlan_link_message(spec))
            .execute()
            .await
            .map_err(nl(format!("create vxlan device {}", spec.name)))?;
        let link = self
            .link(&spec.name)
            .await?
            .ok_or_else(|| KernelError::NoSuchLink(spec.name.clone()))?;
        Ok(link.index)
    }
}

/// Removes every device twill made on this node: the pod bridge and every
/// VXLAN device named `twill.<VNI>` or `twill6.<VNI>` (their routes, neighbours and FDB
/// entries go with them). Errors are collected and the rest still removed.
pub async fn cleanup(kernel: &Kernel, bridge: &str) -> Vec<KernelError> {
    let mut errors = Vec::new();
    let links: Vec<LinkMessage> = match kernel.handle.link().get().execute().try_collect().await {
        Ok(l) => l,
        Err(e) => return vec![nl("list links")(e)],
    };
    for msg in links {
        let link = LinkInfoView::from_message(&msg);
        if !is_twill_device(&link, bridge) {
            continue;
        }
        tracing::info!(device = %link.name, "deleting");
        if let Err(e) = kernel.handle.link().del(link.index).execute().await {
            if errno(&e) != Some(ENODEV) {
                errors.push(nl(format!("delete {}", link.name))(e));
            }
        }
    }
    errors
}
