//! The node agent's life: lease a subnet, publish it in the subnet file,
//! build the devices, then keep the kernel converged to the lease map on
//! every watch event and every resync tick, renewing the lease as it goes.
//! etcd trouble is retried with backoff and never tears the data path down.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use subnet_allocator::{
    acquire_lease, Lease, LeaseAttrs, LeaseEvent, LeaseStore, LeaseWatch, NetworkConfig,
    StoreError, VxlanData,
};
use tokio::time::{sleep, Instant};

use crate::kernel::{
    classify_link_event, link_events, DevIndex, Kernel, KernelError, LinkSignal, Underlay,
    VxlanSpec,
};
use crate::reconcile::{desired_state, diff, remote_nodes, Local, Mac, Mode, NodeIndex};
use crate::subnet_file::{self, gateway6_of, gateway_of, SubnetEnv, SubnetFileError};
use crate::telemetry::Telemetry;

/// VXLAN over an IPv4 underlay costs 50 bytes per packet.
pub const VXLAN_OVERHEAD: u32 = 50;
/// How long a watch event waits for more before the reconcile pass runs.
const EVENT_BATCH_WINDOW: Duration = Duration::from_millis(10);

/// VXLAN over an IPv6 underlay costs 70.
pub const VXLAN6_OVERHEAD: u32 = 70;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    SubnetFile(#[from] SubnetFileError),
    #[error("underlay {iface} has MTU {mtu}, too small for VXLAN")]
    Mtu { iface: String, mtu: u32 },
    #[error("stopped before the node had a lease")]
    Interrupted,
}

/// Everything the agent needs from the command line.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub iface: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    pub resync_interval: Duration,
    pub bridge: String,
    pub telemetry: Arc<Telemetry>,
    pub ip_masq: bool,
}

/// Doubling backoff between retries of etcd calls, 0.5 s to 30 s.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(500))
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
        d
    }
    fn reset(&mut self) {
        self.0 = Duration::from_millis(500);
    }
}

/// Retries `f` on store errors until it succeeds or `stop` fires. Errors
/// `fatal` says are final are returned at once.
async fn retry<T, F, Fut>(
    what: &str,
    telemetry: &Telemetry,
    stop: &mut (impl Future<Output = ()> + Unpin),
    fatal: impl Fn(&StoreError) -> bool,
    mut f: F,
) -> Result<T, AgentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if fatal(&e) => return Err(e.into()),
            Err(e) => {
                telemetry.count_etcd_error(what);
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, "{what} failed");
                tokio::select! {
                    _ = sleep(wait) => {}
                    _ = &mut *stop => return Err(AgentError::Interrupted),
                }
            }
        }
    }
}

/// Errors that no retry of an acquire can fix.
fn fatal_for_acquire(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::Alloc(_)
            | StoreError::BadConfig { .. }
            | StoreError::TlsFile { .. }
            | StoreError::Auth { .. }
            | StoreError::Options(_)
    )
}

pub struct Agent<S> {
    store: S,
    mode: Mode,
    cfg: NetworkConfig,
    opts: AgentConfig,
    kernel: Kernel,
    underlay: Underlay,
    vxlan: VxlanSpec,
    /// The tunnel over the IPv6 underlay, when this node has one.
    vxlan6: Option<VxlanSpec>,
    /// MTU for pods: the smallest of the tunnels' MTUs.
    pod_mtu: u32,
    lease: Lease,
    leases: BTreeMap<Ipv4Net, Lease>,
    /// Every lease seen since start, also after it went away, so that log
    /// lines about removing a node's entries can still name the node.
    seen: BTreeMap<Ipv4Net, Lease>,
    revision: i64,
    warned: HashSet<String>,
}

impl<S: LeaseStore> Agent<S> {
    /// Reads the network config, finds the underlay, leases a subnet, writes
    /// the subnet file and builds the devices. Retries etcd until it answers.
    pub async fn start(
        store: S,
        opts: AgentConfig,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Self, AgentError> {
        let cfg = retry(
            "reading the network config",
            &opts.telemetry,
            stop,
            |e| !e.is_retryable() && !matches!(e, StoreError::NoConfig { .. }),
            || store.get_network_config(),
        )
        .await?;
        let mode = match cfg.backend.kind {
            subnet_allocator::BackendType::Vxlan => Mode::Vxlan {
                direct_routing: cfg.backend.direct_routing,
            },
            subnet_allocator::BackendType::HostGw => Mode::HostGw,
        };
        tracing::info!(network = %cfg.network, subnet_len = cfg.subnet_len, backend = %cfg.backend.kind.as_str(), vni = cfg.backend.vni, "network config");

        let kernel = Kernel::connect()?;
        let underlay = kernel
            .underlay(opts.iface.as_deref(), opts.public_ip)
            .await?;
        let overhead = if mode == Mode::HostGw {
            0
        } else {
            VXLAN_OVERHEAD
        };
        let mtu = match cfg.backend.mtu {
            Some(m) => m,
            None => underlay
                .mtu
                .checked_sub(overhead)
                .filter(|m| *m >= 576)
                .ok_or(AgentError::Mtu {
                    iface: underlay.name.clone(),
                    mtu: underlay.mtu,
                })?,
        };
        let vxlan = VxlanSpec {
            name: format!("twill.{}", cfg.backend.vni),
            vni: cfg.backend.vni,
            port: cfg.backend.port,
            local: underlay.ip.into(),
            underlay_index: underlay.index,
            mtu,
            mac: Mac::for_vtep(underlay.ip, cfg.backend.vni),
            gbp: cfg.backend.gbp,
        };
        tracing::info!(iface = %underlay.name, public_ip = %underlay.ip, mtu, vtep_mac = %vxlan.mac, "underlay");
        if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
            tracing::warn!("net.ipv4.ip_forward is 0 on this node: pod traffic to other nodes will not be forwarded; enable it (sysctl -w net.ipv4.ip_forward=1)");
        }

        let public_ipv6 = match cfg.ipv6 {
            Some(_) => {
                if std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
                    .is_ok_and(|v| v.trim() == "0")
                {
                    tracing::warn!("net.ipv6.conf.all.forwarding is 0 on this node: IPv6 pod traffic to other nodes will not be forwarded");
                }
                kernel.global_ipv6(underlay.index).await?
            }
            None => None,
        };
        // With an IPv6 underlay address, IPv6 pod traffic gets its own tunnel
        // over the IPv6 underlay (as flannel's flannel-v6 device), published
        // as BackendV6Data; peers without one reach us through the IPv4 tunnel.
        let vxlan6 = match (mode, public_ipv6) {
            (Mode::Vxlan { .. }, Some(ip6)) => Some(VxlanSpec {
                name: format!("twill6.{}", cfg.backend.vni),
                vni: cfg.backend.vni,
                port: cfg.backend.port,
                local: ip6.into(),
                underlay_index: underlay.index,
                mtu: match cfg.backend.mtu {
                    Some(m) => m,
                    None => underlay
                        .mtu
                        .checked_sub(VXLAN6_OVERHEAD)
                        .filter(|m| *m >= 1280)
                        .ok_or(AgentError::Mtu {
                            iface: underlay.name.clone(),
                            mtu: underlay.mtu,
                        })?,
                },
                mac: Mac::for_vtep6(ip6, cfg.backend.vni),
                gbp: cfg.backend.gbp,
            }),
            _ => None,
        };
        if let Some(v6) = &vxlan6 {
            tracing::info!(public_ipv6 = %v6.local, mtu = v6.mtu, vtep_mac = %v6.mac, "IPv6 underlay tunnel");
        }
        let pod_mtu = vxlan6
            .as_ref()
            .map_or(vxlan.mtu, |v6| v6.mtu.min(vxlan.mtu));
        let attrs = match mode {
            Mode::HostGw => LeaseAttrs {
                public_ip: underlay.ip,
                public_ipv6,
                backend_type: "host-gw".into(),
                backend_data: None,
                backend_v6_data: None,
            },
            Mode::Vxlan { .. } => LeaseAttrs {
                public_ip: underlay.ip,
                public_ipv6,
                backend_type: "vxlan".into(),
                backend_data: Some(VxlanData {
                    vni: cfg.backend.vni,
                    vtep_mac: vxlan.mac.to_string(),
                }),
                backend_v6_data: vxlan6.as_ref().map(|v6| VxlanData {
                    vni: cfg.backend.vni,
                    vtep_mac: v6.mac.to_string(),
                }),
            },
        };
        let preferred = subnet_file::read_previous_subnet(&opts.subnet_file);
        let lease = retry(
            "acquiring a subnet lease",
            &opts.telemetry,
            stop,
            fatal_for_acquire,
            || acquire_lease(&store, &cfg, underlay.ip, &attrs, preferred, opts.lease_ttl),
        )
        .await?;
        tracing::info!(subnet = %lease.subnet, public_ip = %underlay.ip, "acquired lease");
        opts.telemetry.set_lease_held(true);

        let mut agent = Agent {
            store,
            mode,
            cfg,
            opts,
            kernel,
            underlay,
            vxlan6,
            pod_mtu,
            vxlan,
            lease,
            leases: BTreeMap::new(),
            seen: BTreeMap::new(),
            revision: 0,
            warned: HashSet::new(),
        };
        agent.publish().await?;
        agent.ensure_masq().await;
        let snapshot = retry(
            "listing leases",
            &agent.opts.telemetry,
            stop,
            |_| false,
            || agent.store.list_leases(),
        )
        .await?;
        agent.load(snapshot.leases, snapshot.revision);
        if let Err(e) = agent.reconcile().await {
            tracing::warn!(error = %e, "first reconcile incomplete, will retry");
        }
        Ok(agent)
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Writes the subnet file and makes the devices carry the lease's
    /// addresses: done at start and whenever the lease's subnet changes.
    async fn publish(&mut self) -> Result<(), AgentError> {
        let subnet = self.lease.subnet;
        let env = SubnetEnv {
            network: self.cfg.network,
            subnet,
            mtu: self.pod_mtu,
            ip_masq: self.opts.ip_masq,
            ipv6: self
                .cfg
                .ipv6
                .as_ref()
                .zip(self.lease.ipv6_subnet)
                .map(|(c, s6)| (c.network, s6)),
        };
        self.ensure_devices().await?;
        subnet_file::write(&self.opts.subnet_file, &env)?;
        self.opts.telemetry.set_subnet_file_written(true);
        tracing::info!(path = %self.opts.subnet_file.display(), subnet = %subnet, "wrote subnet file");
        Ok(())
    }

    async fn ensure_devices(&mut self) -> Result<DevIndex, KernelError> {
        let subnet = self.lease.subnet;
        let gw = Ipv4Net::new(gateway_of(subnet), subnet.prefix_len()).unwrap_or(subnet);
        let bridge = self
            .kernel
            .ensure_bridge(&self.opts.bridge, gw, self.pod_mtu)
            .await?;
        let v6 = self
            .cfg
            .ipv6
            .as_ref()
            .map(|c| c.network)
            .zip(self.lease.ipv6_subnet);
        if let Some((network6, s6)) = v6 {
            let gw6 = ipnet::Ipv6Net::new(gateway6_of(s6), s6.prefix_len()).unwrap_or(s6);
            self.kernel
                .ensure_address6(bridge, gw6, network6, &self.opts.bridge)
                .await?;
        }
        let (vxlan, vxlan6) = match self.mode {
            Mode::HostGw => (None, None),
            Mode::Vxlan { .. } => {
                let vtep = Ipv4Net::new(subnet.network(), 32).unwrap_or(subnet);
                let index = self.kernel.ensure_vxlan(&self.vxlan, Some(vtep)).await?;
                let index6 = match &self.vxlan6 {
                    Some(spec6) => Some(self.kernel.ensure_vxlan(spec6, None).await?),
                    None => None,
                };
                // The IPv6 VTEP address lives on the device IPv6 peers use.
                if let Some((network6, s6)) = v6 {
                    let vtep6 = ipnet::Ipv6Net::new(s6.network(), 128).unwrap_or(s6);
                    let (on, name) = match (index6, &self.vxlan6) {
                        (Some(i6), Some(spec6)) => (i6, spec6.name.as_str()),
                        _ => (index, self.vxlan.name.as_str()),
                    };
                    self.kernel
                        .ensure_address6(on, vtep6, network6, name)
                        .await?;
                }
                (Some(index), index6)
            }
        };
        Ok(DevIndex {
            vxlan,
            vxlan6,
            underlay: self.underlay.index,
        })
    }

    /// Keeps the masquerade rules in place when `--ip-masq` is on: replaced
    /// atomically when missing or incomplete, left alone when right.
    async fn ensure_masq(&self) {
        if !self.opts.ip_masq {
            return;
        }
        let networks = crate::masq::Networks {
            v4: self.cfg.network,
            v6: self.cfg.ipv6.as_ref().map(|c| c.network),
        };
        if crate::masq::in_place(&networks).await {
            return;
        }
        match crate::masq::apply(&networks).await {
            Ok(()) => {
                tracing::info!(network = %self.cfg.network, network6 = ?networks.v6, "installed ip-masq rules")
            }
            Err(e) => tracing::warn!(error = %e, "cannot install ip-masq rules"),
        }
    }

    fn load(&mut self, leases: Vec<Lease>, revision: i64) {
        self.leases = leases.into_iter().map(|l| (l.subnet, l)).collect();
        for (s, l) in &self.leases {
            self.seen.insert(*s, l.clone());
        }
        self.opts.telemetry.leases.set(self.leases.len() as i64);
        self.revision = revision;
        tracing::info!(leases = self.leases.len(), revision, "loaded lease map");
    }

    /// Reads the kernel, diffs it against the lease map and applies the
    /// difference. Errors of single operations are logged and the rest still
    /// applied; the next resync retries what failed.
    pub async fn reconcile(&mut self) -> Result<usize, KernelError> {
        let t = self.opts.telemetry.clone();
        let started = std::time::Instant::now();
        t.reconcile_runs.inc();
        let result = self.reconcile_once().await;
        t.reconcile_seconds.observe(started.elapsed().as_secs_f64());
        let converged = matches!(result, Ok((_, 0)));
        t.set_converged(converged);
        if !converged {
            t.reconcile_errors.inc();
        }
        result.map(|(ops, _)| ops)
    }

    /// One pass; returns (operations issued, operations that failed).
    async fn reconcile_once(&mut self) -> Result<(usize, usize), KernelError> {
        let index = self.ensure_devices().await?;
        let leases: Vec<Lease> = self.leases.values().cloned().collect();
        let local = Local {
            network: self.cfg.network,
            subnet: self.lease.subnet,
            subnet6: self.cfg.ipv6.as_ref().and(self.lease.ipv6_subnet),
            v6_tunnel: self.vxlan6.is_some(),
            underlay: self.underlay.net,
            mode: self.mode,
        };
        let (nodes, skipped) = remote_nodes(&local, &leases);
        self.opts.telemetry.skipped_leases.set(skipped.len() as i64);
        self.opts.telemetry.leases.set(self.leases.len() as i64);
        for s in skipped {
            let msg = s.to_string();
            if self.warned.insert(msg.clone()) {
                let public_ip = self
                    .leases
                    .get(&s.subnet())
                    .map(|l| l.attrs.public_ip.to_string())
                    .unwrap_or_else(|| "?".into());
                tracing::warn!(subnet = %s.subnet(), public_ip, "skipping lease: {msg}");
            }
        }
        let desired = desired_state(&nodes);
        let actual = self.kernel.read_state(&index).await?;
        let ops = diff(&desired, &actual);
        let mut failed = 0;
        // Built only when there is something to log about.
        let index_of_nodes = (!ops.is_empty()).then(|| NodeIndex::new(self.seen.values()));
        for op in &ops {
            let res = self.kernel.apply(&index, op).await;
            self.opts.telemetry.count_op(op.kind(), res.is_ok());
            let (subnet, public_ip) = index_of_nodes
                .as_ref()
                .and_then(|idx| idx.find(op))
                .map(|l| (l.subnet.to_string(), l.attrs.public_ip.to_string()))
                .unwrap_or_else(|| ("?".into(), "?".into()));
            match res {
                Ok(()) => tracing::info!(op = %op, subnet, public_ip, "applied"),
                Err(e) => {
                    failed += 1;
                    tracing::warn!(op = %op, subnet, public_ip, error = %e, "netlink operation failed");
                }
            }
        }
        if failed > 0 {
            tracing::warn!(failed, total = ops.len(), "reconcile incomplete");
        }
        Ok((ops.len(), failed))
    }

    fn apply_events(&mut self, events: Vec<LeaseEvent>) -> bool {
        let mut lost_own = false;
        for ev in events {
            match ev {
                LeaseEvent::Added(l) => {
                    if l.subnet == self.lease.subnet && l.attrs.public_ip != self.underlay.ip {
                        lost_own = true;
                    }
                    tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "lease added or changed");
                    self.seen.insert(l.subnet, l.clone());
                    self.leases.insert(l.subnet, l);
                }
                LeaseEvent::Removed(s) => {
                    if s == self.lease.subnet {
                        lost_own = true;
                    }
                    if let Some(old) = self.leases.remove(&s) {
                        tracing::info!(subnet = %s, public_ip = %old.attrs.public_ip, "lease removed");
                    }
                }
            }
        }
        lost_own
    }

    /// Re-acquires a lease after ours expired or was deleted: the same
    /// subnet if it is still free, otherwise a new one, said loudly.
    async fn reacquire(
        &mut self,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<(), AgentError> {
        let old = self.lease.subnet;
        let attrs = self.lease.attrs.clone();
        let lease = retry(
            "re-acquiring the subnet lease",
            &self.opts.telemetry,
            stop,
            fatal_for_acquire,
            || {
                acquire_lease(
                    &self.store,
                    &self.cfg,
                    self.underlay.ip,
                    &attrs,
                    Some(old),
                    self.opts.lease_ttl,
                )
            },
        )
        .await?;
        if lease.subnet != old {
            tracing::error!(old = %old, new = %lease.subnet, public_ip = %self.underlay.ip,
                "our subnet now belongs to another node; moved to a new subnet: pods on the old subnet must be restarted");
        } else {
            tracing::info!(subnet = %old, "re-acquired our lease");
        }
        self.lease = lease.clone();
        self.leases.insert(lease.subnet, lease);
        self.publish().await?;
        Ok(())
    }

    /// Runs until `stop` fires. The data path is left in place on exit.
    pub async fn run(
        mut self,
        mut stop: impl Future<Output = ()> + Unpin,
    ) -> Result<(), AgentError> {
        let mut watch: Option<LeaseWatch> = None;
        let mut watch_backoff = Backoff::new();
        let mut rewatch_at = Instant::now();
        let mut resync = tokio::time::interval(self.opts.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let renew_every = self.opts.lease_ttl / 3;
        let mut renew_at = Instant::now() + renew_every;
        // Watch batches that arrive close together (many nodes joining at
        // once) are folded into one reconcile pass a moment later.
        let mut reconcile_due: Option<Instant> = None;
        // Set when re-acquiring the lease failed: retried at `renew_at`
        // instead of a renewal, while the data path stays as it is.
        let mut must_reacquire = false;
        let mut links = match link_events() {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch link events; relying on the periodic resync");
                None
            }
        };

        loop {
            if watch.is_none() && Instant::now() >= rewatch_at {
                match self.store.watch_leases(self.revision).await {
                    Ok(w) => {
                        tracing::debug!(revision = self.revision, "watching leases");
                        watch = Some(w);
                    }
                    Err(e) => {
                        self.on_watch_error(e, &mut watch_backoff, &mut rewatch_at)
                            .await;
                    }
                }
            }
            let wait_watch = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => {
                        tokio::time::sleep_until(rewatch_at).await;
                        Ok(Some((Vec::new(), -1)))
                    }
                }
            };
            let next_link = async {
                match links.as_mut() {
                    Some(rx) => futures::StreamExt::next(rx).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stop => {
                    tracing::info!("stopping; data path left in place");
                    return Ok(());
                }
                ev = wait_watch => match ev {
                    Ok(Some((_, -1))) => {}
                    Ok(Some((events, revision))) => {
                        watch_backoff.reset();
                        if revision > self.revision {
                            self.revision = revision;
                        }
                        let lost_own = self.apply_events(events);
                        if lost_own {
                            tracing::warn!(subnet = %self.lease.subnet, "our lease was removed or taken in etcd");
                            renew_at = self.reacquire_or_retry(&mut stop, renew_every, &mut must_reacquire).await?;
                        }
                        reconcile_due.get_or_insert(Instant::now() + EVENT_BATCH_WINDOW);
                    }
                    Ok(None) => {
                        tracing::warn!("lease watch ended; re-watching");
                        watch = None;
                    }
                    Err(e) => {
                        watch = None;
                        self.on_watch_error(e, &mut watch_backoff, &mut rewatch_at).await;
                    }
                },
                link = next_link => match link {
                    None => {
                        tracing::warn!("link event socket closed; relying on the periodic resync");
                        links = None;
                    }
                    Some((msg, _)) => {
                        let mut names = vec![self.opts.bridge.as_str()];
                        if self.mode != Mode::HostGw {
                            names.push(self.vxlan.name.as_str());
                        }
                        if let Some(v6) = &self.vxlan6 {
                            names.push(v6.name.as_str());
                        }
                        let signal = classify_link_event(&msg, &names);
                        if signal != LinkSignal::Ignore {
                            if signal == LinkSignal::Lost {
                                tracing::warn!("netlink link events were lost; full resync");
                            }
                            // One repair for a burst of events.
                            sleep(Duration::from_millis(20)).await;
                            if let Some(rx) = links.as_mut() {
                                while rx.try_recv().is_ok() {}
                            }
                            if let Err(e) = self.reconcile().await {
                                tracing::warn!(error = %e, "reconcile after link event failed");
                            }
                        }
                    }
                },
                _ = tokio::time::sleep_until(reconcile_due.unwrap_or(renew_at)), if reconcile_due.is_some() => {
                    reconcile_due = None;
                    if let Err(e) = self.reconcile().await {
                        tracing::warn!(error = %e, "reconcile failed");
                    }
                }
                _ = resync.tick() => {
                    reconcile_due = None;
                    if let Err(e) = self.reconcile().await {
                        tracing::warn!(error = %e, "resync failed");
                    }
                    self.ensure_masq().await;
                }
                _ = tokio::time::sleep_until(renew_at), if must_reacquire => {
                    renew_at = self.reacquire_or_retry(&mut stop, renew_every, &mut must_reacquire).await?;
                }
                _ = tokio::time::sleep_until(renew_at), if !must_reacquire => {
                    match self.store.renew_lease(&self.lease).await {
                        Ok(l) => {
                            self.opts.telemetry.lease_renewals.inc();
                            tracing::debug!(subnet = %l.subnet, "renewed lease");
                            self.lease = l;
                            renew_at = Instant::now() + renew_every;
                        }
                        Err(StoreError::LeaseGone(_)) => {
                            tracing::warn!(subnet = %self.lease.subnet, "our lease expired or was revoked");
                            renew_at = self.reacquire_or_retry(&mut stop, renew_every, &mut must_reacquire).await?;
                        }
                        Err(e) => {
                            self.opts.telemetry.count_etcd_error("renew");
                            let wait = (renew_every / 10).clamp(Duration::from_secs(1), Duration::from_secs(10));
                            tracing::warn!(error = %e, retry_in = ?wait, "renewing the lease failed");
                            renew_at = Instant::now() + wait;
                        }
                    }
                }
            }
        }
    }

    /// Re-acquires the lease; when that fails (no free subnet, devices or
    /// subnet file cannot be written) it says so and schedules another try
    /// instead of ending the agent. Returns when to renew or retry next.
    async fn reacquire_or_retry(
        &mut self,
        stop: &mut (impl Future<Output = ()> + Unpin),
        renew_every: Duration,
        must_reacquire: &mut bool,
    ) -> Result<Instant, AgentError> {
        match self.reacquire(stop).await {
            Ok(()) => {
                *must_reacquire = false;
                Ok(Instant::now() + renew_every)
            }
            Err(AgentError::Interrupted) => Err(AgentError::Interrupted),
            Err(e) => {
                *must_reacquire = true;
                let wait = Duration::from_secs(5);
                tracing::error!(error = %e, subnet = %self.lease.subnet, public_ip = %self.underlay.ip, retry_in = ?wait,
                    "cannot re-acquire a lease; the data path stays as it is meanwhile");
                Ok(Instant::now() + wait)
            }
        }
    }

    /// A compacted watch start means events are gone: relist and reconcile.
    /// Any other error: retry the watch later from the same revision.
    async fn on_watch_error(
        &mut self,
        e: StoreError,
        backoff: &mut Backoff,
        rewatch_at: &mut Instant,
    ) {
        match e {
            StoreError::Compacted { .. } => {
                tracing::warn!(
                    revision = self.revision,
                    "watch revision compacted; relisting"
                );
                match self.store.list_leases().await {
                    Ok(snap) => {
                        self.load(snap.leases, snap.revision);
                        if let Err(e) = self.reconcile().await {
                            tracing::warn!(error = %e, "reconcile failed");
                        }
                        *rewatch_at = Instant::now();
                    }
                    Err(e) => {
                        let wait = backoff.next();
                        tracing::warn!(error = %e, retry_in = ?wait, "relisting leases failed");
                        *rewatch_at = Instant::now() + wait;
                    }
                }
            }
            e => {
                self.opts.telemetry.count_etcd_error("watch");
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, "lease watch failed");
                *rewatch_at = Instant::now() + wait;
            }
        }
    }
}
