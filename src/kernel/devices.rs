//! The devices twill owns or rides on: finds the underlay, creates and
//! repairs the pod bridge and the VXLAN device, keeps their addresses, and
//! removes them all on `cleanup`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoData, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{LinkBridge, LinkUnspec};

use super::vxlan::{kind_name, vxlan_conflict, vxlan_incompatibility, vxlan_link_message};
use super::{errno, nl, Kernel, KernelError, Result, EEXIST, ENODEV};
use crate::agent::underlay::{choose, UnderlaySelect};
use crate::reconcile::Mac;

/// Why `ip` cannot be a node's underlay address, if it cannot: the other
/// nodes would point their tunnels at themselves or at nothing.
pub fn unusable_underlay_address(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast or broadcast")
    } else {
        None
    }
}

/// Why `link` with `ip` cannot carry the tunnels, if it cannot.
pub(crate) fn underlay_problem(link: &LinkInfoView, ip: Ipv4Addr) -> Option<String> {
    if link.loopback {
        return Some(format!("{} is the loopback interface", link.name));
    }
    unusable_underlay_address(ip).map(|kind| format!("its address {ip} is {kind}"))
}

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
    pub loopback: bool,
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
            loopback: msg.header.flags.contains(LinkFlags::Loopback),
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

/// The address an address message puts on its interface, with its prefix.
/// For IPv4 the local address counts (it differs from IFA_ADDRESS only on
/// point-to-point links).
pub(super) fn address_net(m: &AddressMessage) -> Option<IpNet> {
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
pub(super) fn default_oif(routes: &[RouteMessage]) -> Option<u32> {
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
        // The WireGuard helper exits when its TUN device goes.
        || (link.name == crate::wireguard::DEVICE_NAME && link.kind.as_deref() == Some("tun"))
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

    /// Finds the underlay: `iface` or the interface of the default route,
    /// its MTU, and `public_ip` or its first IPv4 address.
    pub async fn underlay(
        &self,
        iface: Option<&str>,
        public_ip: Option<Ipv4Addr>,
    ) -> Result<Underlay> {
        let select = UnderlaySelect::named(iface);
        let snap = self.underlay_snapshot(None, iface.is_none()).await?;
        choose(&select, public_ip, &snap).map(|f| f.underlay)
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

    /// Every link of the namespace.
    pub(super) async fn links(&self) -> Result<Vec<LinkInfoView>> {
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list links"))?;
        Ok(msgs.iter().map(LinkInfoView::from_message).collect())
    }

    /// Checks, before anything is leased or created, that the VXLAN devices
    /// of `tunnels` can be made: no other device holds their VNI and port.
    pub async fn preflight(&self, tunnels: &[&VxlanSpec]) -> Result<()> {
        if tunnels.is_empty() {
            return Ok(());
        }
        let links = self.links().await?;
        for want in tunnels {
            if let Some(other) = vxlan_conflict(&links, want) {
                return Err(KernelError::VxlanConflict {
                    device: other.name.clone(),
                    vni: want.vni,
                    port: want.port,
                    ours: want.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Creates the pod bridge if missing (with a fixed MAC, so it never falls
    /// back to 00:00:00:00:00:00 when its last port goes), puts the gateway
    /// address on it, gives it the pod MTU and brings it up. The MTU is put
    /// back like any other state: a port with a smaller MTU, or a hand,
    /// must not leave the bridge lower than its pods.
    pub async fn ensure_bridge(
        &self,
        name: &str,
        mac: Mac,
        gateway: Option<Ipv4Net>,
        mtu: u32,
    ) -> Result<u32> {
        let link = match self.link(name).await? {
            Some(l) => l,
            None => {
                tracing::info!(bridge = name, "creating bridge");
                let msg = LinkBridge::new(name)
                    .address(mac.0.to_vec())
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
        if link.mtu != Some(mtu) {
            tracing::info!(bridge = name, mtu, was = ?link.mtu, "fixing bridge MTU");
            self.set_link(link.index, Some(mtu), name).await?;
        } else if !link.up {
            self.set_link(link.index, None, name).await?;
        }
        if let Some(gateway) = gateway {
            self.ensure_only_address(link.index, gateway, name).await?;
        }
        Ok(link.index)
    }

    /// Gives the TUN device `name` (made by the WireGuard helper) its MTU
    /// and brings it up; returns its index.
    pub async fn ensure_tun(&self, name: &str, mtu: u32) -> Result<u32> {
        let link = self
            .link(name)
            .await?
            .ok_or_else(|| KernelError::NoSuchLink(name.to_string()))?;
        if link.mtu != Some(mtu) {
            tracing::info!(device = name, mtu, was = ?link.mtu, "setting the tunnel MTU");
            self.set_link(link.index, Some(mtu), name).await?;
        } else if !link.up {
            self.set_link(link.index, None, name).await?;
        }
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

/// Removes every device twill made on this node: the pod bridge, every
/// VXLAN device named `twill.<VNI>` or `twill6.<VNI>` and the WireGuard
/// tunnel `twill-wg` (their routes, neighbours and FDB entries go with
/// them). Errors are collected and the rest still removed.
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

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::link::InfoKind;
    use rtnetlink::packet_route::route::RouteAddress;

    const MAC: Mac = Mac([0x0e, 0x01, 192, 0, 2, 1]);

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "twill.1".into(),
            vni: 1,
            port: 8472,
            local: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            underlay_index: 2,
            mtu: 1450,
            mac: MAC,
            gbp: false,
        }
    }

    /// A link message as the kernel dumps a VXLAN device, with `vxlan`
    /// as its VXLAN attributes.
    fn vxlan_link(index: u32, name: &str, vxlan: Vec<InfoVxlan>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        m.attributes.push(LinkAttribute::IfName(name.into()));
        m.attributes.push(LinkAttribute::Mtu(1450));
        m.attributes.push(LinkAttribute::Address(MAC.0.to_vec()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vxlan)),
        ]));
        m
    }

    /// The attributes of a device made from `spec()`.
    fn matching() -> Vec<InfoVxlan> {
        vec![
            InfoVxlan::Id(1),
            InfoVxlan::Link(2),
            InfoVxlan::Local(Ipv4Addr::new(192, 0, 2, 1)),
            InfoVxlan::Learning(false),
            InfoVxlan::Port(8472),
        ]
    }

    /// `matching()` with the attribute of the same kind as `a` swapped in.
    fn with(a: InfoVxlan) -> LinkInfoView {
        let mut attrs: Vec<InfoVxlan> = matching()
            .into_iter()
            .filter(|x| std::mem::discriminant(x) != std::mem::discriminant(&a))
            .collect();
        attrs.push(a);
        LinkInfoView::from_message(&vxlan_link(7, "twill.1", attrs))
    }

    #[test]
    fn link_view_reads_header_and_vxlan_attributes() {
        let v = LinkInfoView::from_message(&vxlan_link(7, "twill.1", matching()));
        assert_eq!(v.index, 7);
        assert_eq!(v.name, "twill.1");
        assert!(v.up);
        assert_eq!(v.kind.as_deref(), Some("vxlan"));
        assert_eq!(v.mtu, Some(1450));
        assert_eq!(v.mac, Some(MAC));
        assert_eq!(v.vxlan_id, Some(1));
        assert_eq!(v.vxlan_link, Some(2));
        assert_eq!(v.vxlan_port, Some(8472));
        assert_eq!(v.vxlan_learning, Some(false));
        assert_eq!(v.vxlan_local, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert!(!v.vxlan_gbp);
    }

    #[test]
    fn a_leftover_device_with_our_vni_and_port_conflicts() {
        let flannel = LinkInfoView::from_message(&vxlan_link(9, "flannel.1", matching()));
        let own = LinkInfoView::from_message(&vxlan_link(7, "twill.1", matching()));
        let links = vec![own.clone(), flannel];
        assert_eq!(
            vxlan_conflict(&links, &spec()).map(|l| l.name.as_str()),
            Some("flannel.1")
        );
        // Our own device is ensure_vxlan's to fix, never a conflict.
        assert!(vxlan_conflict(&[own], &spec()).is_none());
    }

    #[test]
    fn another_vni_port_family_or_kind_does_not_conflict() {
        // Another device, with `with`'s attributes.
        let other = |attr: InfoVxlan| LinkInfoView {
            name: "flannel.1".into(),
            ..with(attr)
        };
        for l in [
            other(InfoVxlan::Id(2)),
            other(InfoVxlan::Port(4789)),
            other(InfoVxlan::Local6("fd00::1".parse().expect("literal"))),
        ] {
            assert!(
                vxlan_conflict(std::slice::from_ref(&l), &spec()).is_none(),
                "{l:?}"
            );
        }
        let mut bridge = other(InfoVxlan::Id(1));
        bridge.kind = Some("bridge".into());
        assert!(vxlan_conflict(&[bridge], &spec()).is_none());
        // Without a local address a device is an IPv4 one: it conflicts.
        let no_local = LinkInfoView::from_message(&vxlan_link(
            9,
            "flannel.1",
            vec![InfoVxlan::Id(1), InfoVxlan::Port(8472)],
        ));
        assert!(vxlan_conflict(&[no_local], &spec()).is_some());
    }

    #[test]
    fn loopback_and_link_local_underlays_are_refused() {
        let eth0 = LinkInfoView {
            name: "eth0".into(),
            ..Default::default()
        };
        assert_eq!(underlay_problem(&eth0, Ipv4Addr::new(192, 0, 2, 1)), None);
        assert!(underlay_problem(&eth0, Ipv4Addr::new(127, 0, 0, 1))
            .is_some_and(|w| w.contains("127.0.0.1 is loopback")));
        assert!(underlay_problem(&eth0, Ipv4Addr::new(169, 254, 3, 4))
            .is_some_and(|w| w.contains("link-local")));
        let lo = LinkInfoView {
            name: "lo".into(),
            loopback: true,
            ..Default::default()
        };
        // Even with a routable --public-ip, lo carries nothing to other nodes.
        assert!(underlay_problem(&lo, Ipv4Addr::new(192, 0, 2, 1))
            .is_some_and(|w| w.contains("lo is the loopback interface")));
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up | LinkFlags::Loopback;
        assert!(LinkInfoView::from_message(&m).loopback);
    }

    #[test]
    fn link_view_of_a_down_bridge() {
        let mut m = LinkMessage::default();
        m.header.index = 4;
        m.attributes.push(LinkAttribute::IfName("twill0".into()));
        m.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                InfoKind::Bridge,
            )]));
        let v = LinkInfoView::from_message(&m);
        assert!(!v.up);
        assert_eq!(v.kind.as_deref(), Some("bridge"));
        assert_eq!(v.vxlan_id, None);
        assert_eq!(v.mtu, None);
    }

    #[test]
    fn matching_vxlan_device_is_compatible() {
        let v = LinkInfoView::from_message(&vxlan_link(7, "twill.1", matching()));
        assert_eq!(vxlan_incompatibility(&v, &spec()), None);
    }

    #[test]
    fn mtu_mac_and_state_are_not_incompatibilities() {
        // These are fixed in place by ensure_vxlan, never by recreating.
        let mut v = LinkInfoView::from_message(&vxlan_link(7, "twill.1", matching()));
        v.up = false;
        v.mtu = Some(9000);
        v.mac = Some(Mac([2, 0, 0, 0, 0, 1]));
        assert_eq!(vxlan_incompatibility(&v, &spec()), None);
    }

    #[test]
    fn other_vni_is_incompatible() {
        assert_eq!(
            vxlan_incompatibility(&with(InfoVxlan::Id(2)), &spec()).as_deref(),
            Some("VNI Some(2) != 1")
        );
    }

    #[test]
    fn other_port_is_incompatible() {
        assert_eq!(
            vxlan_incompatibility(&with(InfoVxlan::Port(4789)), &spec()).as_deref(),
            Some("port Some(4789) != 8472")
        );
    }

    #[test]
    fn other_local_address_is_incompatible() {
        let have = with(InfoVxlan::Local(Ipv4Addr::new(192, 0, 2, 9)));
        assert_eq!(
            vxlan_incompatibility(&have, &spec()).as_deref(),
            Some("local Some(192.0.2.9) != 192.0.2.1")
        );
    }

    #[test]
    fn other_underlay_index_is_incompatible() {
        assert_eq!(
            vxlan_incompatibility(&with(InfoVxlan::Link(3)), &spec()).as_deref(),
            Some("underlay index Some(3) != 2")
        );
    }

    #[test]
    fn learning_on_or_unknown_is_incompatible() {
        assert_eq!(
            vxlan_incompatibility(&with(InfoVxlan::Learning(true)), &spec()).as_deref(),
            Some("learning is on")
        );
        let mut v = with(InfoVxlan::Learning(false));
        v.vxlan_learning = None;
        assert_eq!(
            vxlan_incompatibility(&v, &spec()).as_deref(),
            Some("learning is on")
        );
    }

    #[test]
    fn gbp_must_match_both_ways() {
        let mut attrs = matching();
        attrs.push(InfoVxlan::Gbp);
        let gbp = LinkInfoView::from_message(&vxlan_link(7, "twill.1", attrs));
        assert_eq!(
            vxlan_incompatibility(&gbp, &spec()).as_deref(),
            Some("gbp true != false")
        );
        let want_gbp = VxlanSpec {
            gbp: true,
            ..spec()
        };
        assert_eq!(vxlan_incompatibility(&gbp, &want_gbp), None);
        let plain = LinkInfoView::from_message(&vxlan_link(7, "twill.1", matching()));
        assert_eq!(
            vxlan_incompatibility(&plain, &want_gbp).as_deref(),
            Some("gbp false != true")
        );
    }

    #[test]
    fn device_of_another_kind_is_incompatible() {
        let mut v = LinkInfoView::from_message(&vxlan_link(7, "twill.1", matching()));
        v.kind = Some("bridge".into());
        assert_eq!(
            vxlan_incompatibility(&v, &spec()).as_deref(),
            Some("kind Some(\"bridge\")")
        );
    }

    #[test]
    fn ipv6_local_is_compared_as_an_address() {
        let local6: Ipv6Addr = "fd00::1".parse().expect("literal");
        let want = VxlanSpec {
            local: local6.into(),
            ..spec()
        };
        assert_eq!(
            vxlan_incompatibility(&with(InfoVxlan::Local6(local6)), &want),
            None
        );
        // An IPv4 local never matches an IPv6 spec.
        assert!(
            vxlan_incompatibility(&with(InfoVxlan::Local(Ipv4Addr::new(192, 0, 2, 1))), &want)
                .is_some_and(|why| why.starts_with("local"))
        );
    }

    #[test]
    fn created_vxlan_device_is_compatible_with_its_spec() {
        // What create_vxlan asks for must be what ensure_vxlan later accepts,
        // or every restart would recreate the device.
        for want in [
            spec(),
            VxlanSpec {
                gbp: true,
                ..spec()
            },
            VxlanSpec {
                local: "fd00::1".parse::<Ipv6Addr>().expect("literal").into(),
                ..spec()
            },
        ] {
            let msg = vxlan_link_message(&want);
            let v = LinkInfoView::from_message(&msg);
            assert_eq!(v.name, "twill.1");
            assert!(v.up);
            assert_eq!(v.mtu, Some(1450));
            assert_eq!(v.mac, Some(MAC));
            assert_eq!(vxlan_incompatibility(&v, &want), None, "{want:?}");
        }
    }

    fn address(family: AddressFamily, prefix: u8, attrs: Vec<AddressAttribute>) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.family = family;
        m.header.prefix_len = prefix;
        m.header.index = 2;
        m.attributes = attrs;
        m
    }

    #[test]
    fn ipv4_address_prefers_the_local_address() {
        // On a point-to-point link IFA_ADDRESS is the peer's.
        let m = address(
            AddressFamily::Inet,
            32,
            vec![
                AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))),
                AddressAttribute::Local(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            ],
        );
        assert_eq!(
            address_net(&m),
            Some("10.0.0.1/32".parse().expect("literal"))
        );
        let m = address(
            AddressFamily::Inet,
            24,
            vec![AddressAttribute::Address(IpAddr::V4(Ipv4Addr::new(
                192, 0, 2, 1,
            )))],
        );
        assert_eq!(
            address_net(&m),
            Some("192.0.2.1/24".parse().expect("literal"))
        );
    }

    #[test]
    fn ipv6_address_uses_ifa_address_and_other_families_none() {
        let ip: IpAddr = "fd00::5".parse().expect("literal");
        let m = address(
            AddressFamily::Inet6,
            64,
            vec![AddressAttribute::Address(ip)],
        );
        assert_eq!(
            address_net(&m),
            Some("fd00::5/64".parse().expect("literal"))
        );
        let m = address(AddressFamily::Inet6, 64, vec![AddressAttribute::Local(ip)]);
        assert_eq!(address_net(&m), None);
        let m = address(
            AddressFamily::Bridge,
            64,
            vec![AddressAttribute::Address(ip)],
        );
        assert_eq!(address_net(&m), None);
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let m = address(AddressFamily::Inet, 33, vec![AddressAttribute::Local(v4)]);
        assert_eq!(address_net(&m), None, "prefix out of range");
    }

    fn route(prefix: u8, table: u8, oif: u32) -> RouteMessage {
        let mut r = RouteMessage::default();
        r.header.address_family = AddressFamily::Inet;
        r.header.destination_prefix_length = prefix;
        r.header.table = table;
        if prefix > 0 {
            r.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    Ipv4Addr::new(10, 0, 0, 0),
                )));
        }
        r.attributes.push(RouteAttribute::Oif(oif));
        r
    }

    #[test]
    fn default_route_interface_is_from_the_main_table() {
        let routes = [
            route(8, RouteHeader::RT_TABLE_MAIN, 3),
            route(0, 100, 4),
            route(0, RouteHeader::RT_TABLE_MAIN, 5),
            route(0, RouteHeader::RT_TABLE_MAIN, 6),
        ];
        assert_eq!(default_oif(&routes), Some(5));
        assert_eq!(default_oif(&routes[..2]), None);
    }

    #[test]
    fn cleanup_takes_only_twill_devices() {
        let view = |name: &str, kind: &str| LinkInfoView {
            name: name.into(),
            kind: Some(kind.into()),
            ..Default::default()
        };
        assert!(is_twill_device(&view("twill0", "bridge"), "twill0"));
        assert!(is_twill_device(&view("twill.1", "vxlan"), "twill0"));
        assert!(is_twill_device(&view("twill6.1", "vxlan"), "twill0"));
        assert!(!is_twill_device(&view("twill0", "veth"), "twill0"));
        assert!(!is_twill_device(&view("cni0", "bridge"), "twill0"));
        assert!(!is_twill_device(&view("twill.1", "bridge"), "twill0"));
        assert!(!is_twill_device(&view("vxlan.1", "vxlan"), "twill0"));
    }
}
