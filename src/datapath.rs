//! The seam between the agent and the node's data path: what the agent asks
//! of the kernel (find the underlay, check before start that the devices can
//! be made, turn forwarding on, ensure the devices, read and change twill's
//! entries, keep the masquerade rules, report link events), as one
//! trait. [`NetlinkDatapath`] is the real one; tests use a recording fake.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr};

use futures::stream::BoxStream;
use futures::StreamExt;
use ipnet::{Ipv4Net, Ipv6Net};

use crate::agent::plan::Plan;
use crate::agent::underlay::{choose, Found, UnderlaySelect};
use crate::agent::underlay6::{choose_ipv6, Found6};
use crate::kernel::{
    classify_link_event, classify_underlay_event, link_events, underlay_events, DevIndex, Kernel,
    KernelError, LinkSignal, Underlay, UnderlayEvent, VxlanSpec,
};
use crate::masq::{MasqError, Networks};
use crate::reconcile::Mac;
use crate::reconcile::{KernelState, Op};
use crate::wireguard::peers::{diff_peers, PeerMap};
use crate::wireguard::uapi::PeerChange;
use crate::wireguard::userspace::Userspace;
use crate::wireguard::{WgDevice, WgSpec};

/// Every device twill keeps on a node and the addresses they carry, as the
/// plan and the lease imply (see `agent::plan::Plan::devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The pod bridge, its gateway address (`<subnet>.1/len`; `None` on an
    /// IPv6-only node, whose bridge has the IPv6 gateway only) and MTU.
    pub bridge: String,
    pub gateway: Option<Ipv4Net>,
    pub mtu: u32,
    /// The bridge's IPv6 gateway address and the cluster's IPv6 network, in
    /// a dual-stack cluster.
    pub gateway6: Option<(Ipv6Net, Ipv6Net)>,
    /// The VXLAN device and its VTEP address (`<subnet>.0/32`); `None` in
    /// host-gw mode.
    pub vxlan: Option<(VxlanSpec, Ipv4Net)>,
    /// The VXLAN device over the IPv6 underlay, when this node has one.
    pub vxlan6: Option<VxlanSpec>,
    /// The IPv6 VTEP address (`<subnet6>::/128`) and the IPv6 network; it
    /// lives on `vxlan6` when there is one, else on `vxlan`.
    pub vtep6: Option<(Ipv6Net, Ipv6Net)>,
    pub underlay_index: u32,
    /// The WireGuard device, in wireguard mode.
    pub wireguard: Option<WgSpec>,
}

impl DeviceSpec {
    /// The names of the devices twill keeps: link events on them trigger a
    /// repair.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![self.bridge.clone()];
        names.extend(self.vxlan.iter().map(|(v, _)| v.name.clone()));
        names.extend(self.vxlan6.iter().map(|v| v.name.clone()));
        names.extend(self.wireguard.iter().map(|w| w.name.clone()));
        names
    }
}

/// The node's data path as the agent drives it. Each call is idempotent:
/// asking twice for the same state changes nothing the second time.
pub trait Datapath: Send + Sync {
    /// The underlay interface: `iface` by name, else the one holding
    /// `public_ip`, else the one of the IPv4 default route.
    fn underlay(
        &self,
        iface: Option<&str>,
        public_ip: Option<Ipv4Addr>,
    ) -> impl Future<Output = Result<Underlay, KernelError>> + Send;
    /// A global IPv6 address of the underlay interface, if it has one.
    fn global_ipv6(
        &self,
        underlay_index: u32,
    ) -> impl Future<Output = Result<Option<Ipv6Addr>, KernelError>> + Send;
    /// Checks, before any lease is taken or device made, that the plan's
    /// devices can be made on this node; an error here is a refusal to
    /// start (say, another VXLAN device already holds the VNI and port).
    fn preflight(&self, plan: &Plan) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// Turns on IPv4 forwarding, and IPv6 forwarding when `ipv6`, in the
    /// node's namespace; returns each sysctl and whether it had to be
    /// turned on.
    fn enable_forwarding(
        &self,
        ipv6: bool,
    ) -> impl Future<Output = Result<Vec<(&'static str, bool)>, KernelError>> + Send;
    /// Creates or repairs every device in `spec`; returns their indexes.
    fn ensure_devices(
        &self,
        spec: &DeviceSpec,
    ) -> impl Future<Output = Result<DevIndex, KernelError>> + Send;
    /// twill's routes, neighbours and FDB entries as the kernel has them.
    fn read_state(
        &self,
        dev: &DevIndex,
    ) -> impl Future<Output = Result<KernelState, KernelError>> + Send;
    /// Applies one change.
    fn apply(
        &self,
        dev: &DevIndex,
        op: &Op,
    ) -> impl Future<Output = Result<(), KernelError>> + Send;
    /// Makes the masquerade rules for `networks` be in place; `Ok(true)`
    /// when they had to be (re)installed.
    fn ensure_masq(
        &self,
        networks: &Networks,
    ) -> impl Future<Output = Result<bool, MasqError>> + Send;
    /// Removes twill's masquerade tables; `Ok(true)` when there were any.
    fn remove_masq(&self) -> impl Future<Output = Result<bool, MasqError>> + Send;
    /// Makes the isolation tables be as `settings` and `peers` say (see
    /// [`crate::guard::ensure`]); `was`, the members in place now (written
    /// with the same settings), lets it send only the difference. Data
    /// paths without nftables have none.
    fn ensure_guard(
        &self,
        _settings: &twill_nft::guard::Settings,
        _peers: &twill_nft::guard::Peers,
        _check: bool,
        _known: &crate::guard::PodEntries,
        _was: Option<twill_nft::guard::Peers>,
    ) -> impl Future<Output = Result<crate::guard::GuardReport, crate::guard::GuardError>> + Send
    {
        async { Ok(crate::guard::GuardReport::default()) }
    }
    /// Events on the devices named `names` (and lost events), from now on.
    fn link_signals(
        &self,
        names: Vec<String>,
    ) -> Result<BoxStream<'static, LinkSignal>, KernelError>;
    /// The underlay `select` and `public_ip` pick now (see
    /// `agent::underlay::choose`). By default, the first `--iface` only.
    fn select_underlay(
        &self,
        select: &UnderlaySelect,
        public_ip: Option<Ipv4Addr>,
    ) -> impl Future<Output = Result<Found, KernelError>> + Send {
        async move {
            let iface = select.ifaces.first().map(String::as_str);
            let underlay = self.underlay(iface, public_ip).await?;
            Ok(Found {
                underlay,
                on_iface: true,
            })
        }
    }
    /// An IPv6-only node's underlay, `select` and `public_ipv6` pick now
    /// (see `agent::underlay6::choose_ipv6`). By default, the first
    /// `--iface` and its global IPv6 address (or `public_ipv6`), as a /128.
    fn select_underlay6(
        &self,
        select: &UnderlaySelect,
        public_ipv6: Option<Ipv6Addr>,
    ) -> impl Future<Output = Result<Found6, KernelError>> + Send {
        async move {
            let iface = select.ifaces.first().map(String::as_str);
            let u = self.underlay(iface, None).await?;
            let ip = match public_ipv6 {
                Some(ip) => ip,
                None => self
                    .global_ipv6(u.index)
                    .await?
                    .ok_or_else(|| KernelError::NoAddress6(u.name.clone()))?,
            };
            Ok(Found6 {
                name: u.name,
                index: u.index,
                mtu: u.mtu,
                net: Ipv6Net::from(ip),
                on_iface: true,
            })
        }
    }
    /// Link and IPv4 address events of every interface, from now on; by
    /// default none.
    fn underlay_events(&self) -> Result<BoxStream<'static, UnderlayEvent>, KernelError> {
        Ok(futures::stream::pending().boxed())
    }
    /// Brings the WireGuard device's peers to `desired`; returns the
    /// changes it made. Without a WireGuard device there is nothing to do.
    fn sync_peers(
        &self,
        _spec: &WgSpec,
        _desired: &PeerMap,
    ) -> impl Future<Output = Result<Vec<PeerChange>, KernelError>> + Send {
        async { Ok(Vec::new()) }
    }
    /// Adds `added` to the tunnel's members and takes `removed` out, in
    /// place (see [`crate::guard::update`]): a watch batch's members that
    /// came and went. An error leaves the caller to rewrite the table.
    fn update_guard(
        &self,
        _added: &twill_nft::guard::Peers,
        _removed: &twill_nft::guard::Peers,
    ) -> impl Future<Output = Result<crate::guard::GuardReport, crate::guard::GuardError>> + Send
    {
        async { Ok(crate::guard::GuardReport::default()) }
    }
    /// Makes `changes` on the WireGuard device without reading it first (a
    /// watch batch's peers; [`Self::sync_peers`] repairs drift).
    fn change_peers(
        &self,
        _spec: &WgSpec,
        _changes: &[PeerChange],
    ) -> impl Future<Output = Result<(), KernelError>> + Send {
        async { Ok(()) }
    }
}

/// The real data path: rtnetlink for devices and entries, nf_tables
/// netlink for masquerading.
pub struct NetlinkDatapath {
    kernel: Kernel,
    wireguard: Userspace,
}

impl NetlinkDatapath {
    /// Opens a netlink socket in the current network namespace.
    pub fn connect() -> Result<Self, KernelError> {
        Ok(NetlinkDatapath {
            kernel: Kernel::connect()?,
            wireguard: Userspace::default(),
        })
    }
}

impl Datapath for NetlinkDatapath {
    async fn underlay(
        &self,
        iface: Option<&str>,
        public_ip: Option<Ipv4Addr>,
    ) -> Result<Underlay, KernelError> {
        self.kernel.underlay(iface, public_ip).await
    }

    async fn global_ipv6(&self, underlay_index: u32) -> Result<Option<Ipv6Addr>, KernelError> {
        self.kernel.global_ipv6(underlay_index).await
    }

    async fn preflight(&self, plan: &Plan) -> Result<(), KernelError> {
        let tunnels: Vec<&VxlanSpec> = plan.vxlan.iter().chain(plan.vxlan6.iter()).collect();
        self.kernel.preflight(&tunnels).await
    }

    async fn enable_forwarding(
        &self,
        ipv6: bool,
    ) -> Result<Vec<(&'static str, bool)>, KernelError> {
        crate::kernel::enable_forwarding(ipv6)
    }

    async fn ensure_devices(&self, spec: &DeviceSpec) -> Result<DevIndex, KernelError> {
        let k = &self.kernel;
        // The bridge's MAC comes from its IPv4 gateway, or on an IPv6-only
        // node from its IPv6 one (as the CNI plugin's does).
        let mac = match (spec.gateway, spec.gateway6) {
            (Some(gw), _) => Mac::for_bridge(gw.addr()),
            (None, Some((gw6, _))) => Mac::for_bridge6(gw6.addr()),
            (None, None) => return Err(KernelError::NoBridgeGateway(spec.bridge.clone())),
        };
        let bridge = k
            .ensure_bridge(&spec.bridge, mac, spec.gateway, spec.mtu)
            .await?;
        if let Some((gw6, network6)) = spec.gateway6 {
            k.ensure_address6(bridge, gw6, network6, &spec.bridge)
                .await?;
        }
        let vxlan = match &spec.vxlan {
            Some((v, vtep)) => Some(k.ensure_vxlan(v, Some(*vtep)).await?),
            None => None,
        };
        let vxlan6 = match &spec.vxlan6 {
            Some(v6) => Some(k.ensure_vxlan(v6, None).await?),
            None => None,
        };
        if let Some((vtep6, network6)) = spec.vtep6 {
            let on = match (vxlan6, &spec.vxlan6, vxlan, &spec.vxlan) {
                (Some(i6), Some(v6), _, _) => Some((i6, v6.name.as_str())),
                (_, _, Some(i), Some((v, _))) => Some((i, v.name.as_str())),
                _ => None,
            };
            if let Some((index, name)) = on {
                k.ensure_address6(index, vtep6, network6, name).await?;
            }
        }
        let wireguard = match &spec.wireguard {
            Some(w) => {
                self.wireguard.ensure(w).await?;
                Some(k.ensure_tun(&w.name, w.mtu).await?)
            }
            None => None,
        };
        Ok(DevIndex {
            vxlan,
            vxlan6,
            underlay: spec.underlay_index,
            wireguard,
        })
    }

    async fn read_state(&self, dev: &DevIndex) -> Result<KernelState, KernelError> {
        self.kernel.read_state(dev).await
    }

    async fn apply(&self, dev: &DevIndex, op: &Op) -> Result<(), KernelError> {
        self.kernel.apply(dev, op).await
    }

    async fn ensure_masq(&self, networks: &Networks) -> Result<bool, MasqError> {
        match crate::masq::in_place(networks).await {
            Ok(true) => return Ok(false),
            Ok(false) => {}
            // Installing tells whether nf_tables works at all; its error is
            // the one to report.
            Err(e) => tracing::debug!(error = %e, "cannot read the ip-masq rules back"),
        }
        crate::masq::apply(networks).await.map(|()| true)
    }

    async fn remove_masq(&self) -> Result<bool, MasqError> {
        crate::masq::remove().await
    }

    async fn ensure_guard(
        &self,
        settings: &twill_nft::guard::Settings,
        peers: &twill_nft::guard::Peers,
        check: bool,
        known: &crate::guard::PodEntries,
        was: Option<twill_nft::guard::Peers>,
    ) -> Result<crate::guard::GuardReport, crate::guard::GuardError> {
        crate::guard::ensure(settings, peers, check, known, was).await
    }

    async fn sync_peers(
        &self,
        spec: &WgSpec,
        desired: &PeerMap,
    ) -> Result<Vec<PeerChange>, KernelError> {
        let status = self.wireguard.status(spec).await?;
        let actual: Vec<_> = status.peers.into_iter().map(|p| p.config).collect();
        let changes = diff_peers(desired, &actual);
        self.wireguard.change(spec, &changes).await?;
        Ok(changes)
    }

    async fn update_guard(
        &self,
        added: &twill_nft::guard::Peers,
        removed: &twill_nft::guard::Peers,
    ) -> Result<crate::guard::GuardReport, crate::guard::GuardError> {
        crate::guard::update(added, removed).await
    }

    async fn change_peers(&self, spec: &WgSpec, changes: &[PeerChange]) -> Result<(), KernelError> {
        Ok(self.wireguard.change(spec, changes).await?)
    }

    fn link_signals(
        &self,
        names: Vec<String>,
    ) -> Result<BoxStream<'static, LinkSignal>, KernelError> {
        let events = link_events()?;
        Ok(events
            .filter_map(move |(msg, _)| {
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let signal = classify_link_event(&msg, &refs);
                std::future::ready((signal != LinkSignal::Ignore).then_some(signal))
            })
            .boxed())
    }

    async fn select_underlay(
        &self,
        select: &UnderlaySelect,
        public_ip: Option<Ipv4Addr>,
    ) -> Result<Found, KernelError> {
        let snap = self
            .kernel
            .underlay_snapshot(select.can_reach, select.by_default_route())
            .await?;
        choose(select, public_ip, &snap)
    }

    async fn select_underlay6(
        &self,
        select: &UnderlaySelect,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Result<Found6, KernelError> {
        let snap = self
            .kernel
            .underlay_snapshot(None, select.by_default_route())
            .await?;
        choose_ipv6(select, public_ipv6, &snap)
    }

    fn underlay_events(&self) -> Result<BoxStream<'static, UnderlayEvent>, KernelError> {
        Ok(underlay_events()?
            .filter_map(|(msg, _)| std::future::ready(classify_underlay_event(&msg)))
            .boxed())
    }
}
