//! The node agent's life: lease a subnet, publish it in the subnet file,
//! build the devices, then keep the kernel converged to the lease map on
//! every watch batch, link event and resync tick, renewing the lease as it
//! goes. Its state is named in [`lifecycle`]; the kernel and the store come
//! in through the [`Datapath`] and [`LeaseStore`] traits. etcd trouble is
//! retried on a schedule and never tears the data path down or stops repairs.

mod clash;
mod delta;
mod follow;
mod guard;
mod leases;
pub mod lifecycle;
mod masq;
mod peers;
pub mod plan;
pub mod plan6;
mod run;
pub mod underlay;
pub mod underlay6;
mod v6only;
mod wireguard;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use subnet_allocator::{
    acquire_lease_preferring, retry, Backoff, Lease, LeaseStore, NetworkConfig, StoreError,
};
use tokio::time::Instant;

use crate::datapath::{Datapath, DeviceSpec};
use crate::kernel::{KernelError, Underlay};
use crate::reconcile::{desired_state, diff, remote_nodes, Local, NodeIndex, Op, Skip};
use crate::subnet_file::{self, SubnetFileError};
use crate::telemetry::Telemetry;
use lifecycle::{LeaseState, Pending, Trigger, WatchState};
use plan::{Plan, PlanError};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    SubnetFile(#[from] SubnetFileError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("stopped before the node had a lease")]
    Interrupted,
    /// An IPv6-only node that cannot be planned (an MTU too small, or a
    /// backend without an IPv6-only form).
    #[error(transparent)]
    Plan6(#[from] plan6::Ipv6OnlyPlanError),
}

/// Whether a store error is the operator's configuration refused (the
/// network config, the etcd options, credentials and TLS files), not
/// trouble that passes.
pub fn is_config_store_error(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::BadConfig { .. }
            | StoreError::TlsFile { .. }
            | StoreError::Options(_)
            | StoreError::Auth { .. }
    )
}

impl AgentError {
    /// Whether this is the operator's configuration refused (the network
    /// config, the etcd credentials and TLS files, the underlay, a device in
    /// the way): final, the process exits 2 rather than retrying.
    pub fn is_config(&self) -> bool {
        match self {
            AgentError::Store(e) => is_config_store_error(e),
            AgentError::Kernel(e) => matches!(
                e,
                KernelError::UnusableUnderlay { .. }
                    | KernelError::VxlanConflict { .. }
                    | KernelError::Wireguard(crate::wireguard::WgError::Key { .. })
            ),
            AgentError::Plan(_) | AgentError::Plan6(_) => true,
            AgentError::SubnetFile(_) | AgentError::Interrupted => false,
        }
    }
}

/// Everything the agent needs from the command line.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub iface: Option<String>,
    pub public_ip: Option<Ipv4Addr>,
    /// Written into the lease: a second node with our public IP is refused.
    pub node_name: Option<String>,
    pub subnet_file: PathBuf,
    pub lease_ttl: Duration,
    pub resync_interval: Duration,
    pub bridge: String,
    pub telemetry: Arc<Telemetry>,
    pub ip_masq: bool,
    /// Turn IP forwarding on at start (off with `--no-set-forwarding`).
    pub set_forwarding: bool,
    /// Every `--iface`, `--iface-regex` and `--iface-can-reach`; when it
    /// lists no `--iface`, `iface` counts as one.
    pub underlay_select: underlay::UnderlaySelect,
    /// Accept VXLAN from members only (off with `--no-tunnel-filter`).
    pub tunnel_filter: bool,
    /// wireguard backend: where the key file, the device's socket and its
    /// log live (`--wireguard-dir`).
    pub wireguard_dir: PathBuf,
    /// `--public-ipv6`: the node's IPv6 underlay address, instead of the
    /// interface's first global one.
    pub public_ipv6: Option<std::net::Ipv6Addr>,
}

/// Where the agent stands, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// `0.0.0.0/0` on an IPv6-only node (see `subnet6`).
    pub subnet: Ipv4Net,
    /// The node's IPv6 subnet, if it has one.
    pub subnet6: Option<ipnet::Ipv6Net>,
    pub lease: &'static str,
    pub watch: &'static str,
    /// The store revision the lease map is complete up to.
    pub revision: i64,
    pub leases: usize,
    /// Reconcile passes run since start.
    pub passes: u64,
}

pub struct Agent<S, D> {
    store: Arc<S>,
    dp: D,
    cfg: NetworkConfig,
    opts: AgentConfig,
    plan: Plan,
    underlay: Underlay,
    lease: LeaseState,
    watch: WatchState,
    pending: Pending,
    leases: BTreeMap<Ipv4Net, Lease>,
    /// The leases of the IPv6-only form (`0.0.0.0-0&<v6>-<len>`), by their
    /// IPv6 subnet: they all share the IPv4 part `0.0.0.0/0`.
    leases6: BTreeMap<ipnet::Ipv6Net, Lease>,
    /// Every lease seen since start, also after it went away, so that log
    /// lines about removing a node's entries can still name the node.
    seen: BTreeMap<Ipv4Net, Lease>,
    seen6: BTreeMap<ipnet::Ipv6Net, Lease>,
    /// An IPv6-only node's public IPv6 address with its underlay prefix.
    underlay6: Option<ipnet::Ipv6Net>,
    warned: HashSet<String>,
    /// Entries that hold no usable lease (malformed key or value, outside
    /// the network), by key, with the subnet their key names: counted as
    /// skipped leases.
    unusable: BTreeMap<String, Option<Ipv4Net>>,
    passes: u64,
    /// Recovering from etcd losing or rolling back its data.
    resetting: bool,
    status: tokio::sync::watch::Sender<AgentStatus>,
    /// Whether the masquerade rules are in place, as the subnet file says;
    /// `None` before the first attempt.
    masq_installed: Option<bool>,
    /// Following the underlay interface and its address.
    follow: follow::Follow,
    /// The remote nodes as probe targets, for the prober (src/probe).
    peers: tokio::sync::watch::Sender<crate::probe::PeerSet>,
    /// The per-peer state watch batches are applied through, built by the
    /// last full pass; `None` until then or after an operation failed.
    delta: Option<delta::DeltaPath>,
    /// The subnets lease events touched since the last pass.
    touched: BTreeSet<Ipv4Net>,
    /// The same for an IPv6-only node's peers, keyed by IPv6 subnet.
    delta6: Option<delta::DeltaPath<crate::reconcile::delta::V6>>,
    touched6: BTreeSet<ipnet::Ipv6Net>,
    /// The isolation tables as last written: settings and members.
    guard_applied: Option<(twill_nft::guard::Settings, twill_nft::guard::Peers)>,
    /// The pods' entries of the bridge table as last read.
    guard_pods: crate::guard::PodEntries,
}

/// Retries a store call until it succeeds, fails for good, or `stop` fires.
async fn retrying<T, F, Fut>(
    what: &str,
    telemetry: &Telemetry,
    stop: &mut (impl Future<Output = ()> + Unpin),
    f: F,
) -> Result<T, AgentError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let on_retry = |e: &StoreError, wait: Duration| {
        telemetry.count_etcd_error(what);
        tracing::warn!(error = %e, retry_in = ?wait, "{what} failed");
    };
    tokio::select! {
        r = retry(Backoff::standard(), on_retry, f) => Ok(r?),
        _ = &mut *stop => Err(AgentError::Interrupted),
    }
}

/// Turns forwarding on (unless `--no-set-forwarding`) and says what it did:
/// without it pods cannot reach other nodes.
async fn set_forwarding(
    dp: &impl Datapath,
    opts: &AgentConfig,
    ipv6: bool,
) -> Result<(), AgentError> {
    if !opts.set_forwarding {
        tracing::info!("leaving IP forwarding as it is (--no-set-forwarding)");
        return Ok(());
    }
    for (sysctl, changed) in dp.enable_forwarding(ipv6).await? {
        if changed {
            tracing::info!(sysctl, "enabled IP forwarding");
        } else {
            tracing::info!(sysctl, "IP forwarding already on");
        }
    }
    Ok(())
}

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// Reads the network config, finds the underlay, leases a subnet, writes
    /// the subnet file and builds the devices. Retries etcd until it answers.
    pub async fn start(
        store: S,
        dp: D,
        opts: AgentConfig,
        stop: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Self, AgentError> {
        let store = Arc::new(store);
        let t = opts.telemetry.clone();
        let cfg = retrying("reading the network config", &t, stop, || {
            store.get_network_config()
        })
        .await?;
        match cfg.ipv6.as_ref().filter(|_| cfg.is_ipv6_only()) {
            Some(v6) => {
                tracing::info!(network6 = %v6.network, subnet_len6 = v6.subnet_len, backend = %cfg.backend.kind.as_str(), vni = cfg.backend.vni, "network config (IPv6-only)")
            }
            None => {
                tracing::info!(network = %cfg.network, subnet_len = cfg.subnet_len, backend = %cfg.backend.kind.as_str(), vni = cfg.backend.vni, "network config")
            }
        }
        let mut follow = follow::Follow::new(&opts);
        let located =
            v6only::locate(&dp, &cfg, &follow.select, opts.public_ip, opts.public_ipv6).await?;
        follow.started_on(&located.found);
        let underlay = located.found.underlay;
        let underlay6 = located.net6;
        let public_ipv6 = match (underlay6, cfg.ipv6.is_some(), opts.public_ipv6) {
            (Some(n), _, _) => Some(n.addr()),
            (None, true, Some(ip)) => Some(ip),
            (None, true, None) => dp.global_ipv6(underlay.index).await?,
            (None, false, _) => None,
        };
        let mut plan = v6only::make_plan(&cfg, &underlay, public_ipv6)?;
        plan.attrs.node_name = opts.node_name.clone();
        wireguard::prepare(&cfg, &mut plan, &opts.wireguard_dir)?;
        let vtep_mac = plan.vxlan.as_ref().map(|v| v.mac.to_string());
        let tunnel_mtu = plan.vxlan.as_ref().map(|v| v.mtu);
        tracing::info!(iface = %underlay.name, public_ip = %underlay.ip, ?public_ipv6, mtu = underlay.mtu, tunnel_mtu, pod_mtu = plan.pod_mtu, vtep_mac, "underlay");
        // Refusals come before the lease: a node that cannot build its
        // devices must leave nothing behind in etcd or in the kernel.
        dp.preflight(&plan).await?;
        set_forwarding(&dp, &opts, cfg.ipv6.is_some()).await?;
        if let Some(v6) = &plan.vxlan6 {
            tracing::info!(public_ipv6 = %v6.local, mtu = v6.mtu, vtep_mac = %v6.mac, "IPv6 underlay tunnel");
        }

        let preferred = subnet_file::read_previous_preferred(&opts.subnet_file);
        let lease = retrying("acquiring a subnet lease", &t, stop, || {
            acquire_lease_preferring(
                &*store,
                &cfg,
                underlay.ip,
                &plan.attrs,
                preferred,
                opts.lease_ttl,
            )
        })
        .await?;
        tracing::info!(subnet = %lease.subnet, subnet6 = ?lease.ipv6_subnet, public_ip = %underlay.ip, ?public_ipv6, "acquired lease");
        t.set_lease_held(true);

        let now = Instant::now();
        let (status, _) = tokio::sync::watch::channel(AgentStatus {
            subnet: lease.subnet,
            subnet6: lease.ipv6_subnet,
            lease: "held",
            watch: "opening",
            revision: 0,
            leases: 0,
            passes: 0,
        });
        let mut agent = Agent {
            lease: LeaseState::held(lease, opts.lease_ttl, now),
            watch: WatchState::after(0),
            pending: Pending::default(),
            store,
            dp,
            cfg,
            opts,
            plan,
            underlay,
            leases: BTreeMap::new(),
            leases6: BTreeMap::new(),
            seen: BTreeMap::new(),
            seen6: BTreeMap::new(),
            underlay6,
            warned: HashSet::new(),
            unusable: BTreeMap::new(),
            passes: 0,
            resetting: false,
            status,
            masq_installed: None,
            follow,
            peers: tokio::sync::watch::channel(Default::default()).0,
            delta: None,
            touched: BTreeSet::new(),
            delta6: None,
            touched6: BTreeSet::new(),
            guard_applied: None,
            guard_pods: Vec::new(),
        };
        // Before the subnet file is written, so that it tells the truth.
        agent.ensure_masq().await;
        agent.publish().await?;
        let snapshot = retrying("listing leases", &t, stop, || agent.store.list_leases()).await?;
        agent.watch = WatchState::after(snapshot.revision);
        agent.load(snapshot);
        if let Err(e) = agent.reconcile(Trigger::Resync).await {
            tracing::warn!(error = %e, "first reconcile incomplete, will retry");
        }
        Ok(agent)
    }

    pub fn lease(&self) -> &Lease {
        &self.lease.lease
    }

    /// Follows where the agent stands; the value changes as `run` goes.
    pub fn status(&self) -> tokio::sync::watch::Receiver<AgentStatus> {
        self.status.subscribe()
    }

    fn set_resetting(&mut self, v: bool) {
        if v {
            self.opts.telemetry.store_resets.inc();
        }
        self.resetting = v;
        self.opts.telemetry.set_store_reset(v);
    }

    /// Ends a reset once our lease is held again and the watch is back.
    fn settle(&mut self) {
        if self.resetting
            && matches!(self.lease.phase, lifecycle::LeasePhase::Held { .. })
            && self.watch.phase == lifecycle::WatchPhase::Watching
        {
            tracing::info!(subnet = %self.lease.lease.subnet, revision = self.watch.revision, "recovered from etcd's data loss: our lease is back and the watch resumed");
            self.set_resetting(false);
        }
    }

    fn publish_status(&self) {
        let now = AgentStatus {
            subnet: self.lease.lease.subnet,
            subnet6: self.lease.lease.ipv6_subnet,
            lease: self.lease.phase.name(),
            watch: self.watch.phase.name(),
            revision: self.watch.revision,
            leases: self.lease_count(),
            passes: self.passes,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != now;
            *s = now;
            changed
        });
    }

    fn devices(&self) -> DeviceSpec {
        self.plan
            .devices(&self.cfg, &self.opts.bridge, &self.lease.lease)
    }

    /// Writes the subnet file and makes the devices carry the lease's
    /// addresses: done at start and whenever the lease's subnet changes.
    async fn publish(&mut self) -> Result<(), AgentError> {
        let lease = &self.lease.lease;
        if let Some(env6) = self.plan.subnet_env6(&self.cfg, self.masq_claim(), lease) {
            self.dp.ensure_devices(&self.devices()).await?;
            subnet_file::write_ipv6_only(&self.opts.subnet_file, &env6)?;
            self.opts.telemetry.set_subnet_file_written(true);
            tracing::info!(path = %self.opts.subnet_file.display(), subnet6 = %env6.subnet6, "wrote subnet file");
            return Ok(());
        }
        let env = self.plan.subnet_env(&self.cfg, self.masq_claim(), lease);
        self.dp.ensure_devices(&self.devices()).await?;
        subnet_file::write(&self.opts.subnet_file, &env)?;
        self.opts.telemetry.set_subnet_file_written(true);
        tracing::info!(path = %self.opts.subnet_file.display(), subnet = %env.subnet, "wrote subnet file");
        Ok(())
    }

    /// Reads the kernel, diffs it against the lease map and applies the
    /// difference. Errors of single operations are logged and the rest still
    /// applied; the next resync retries what failed.
    pub async fn reconcile(&mut self, trigger: Trigger) -> Result<usize, KernelError> {
        let t = self.opts.telemetry.clone();
        let started = std::time::Instant::now();
        t.reconcile_runs.inc();
        self.passes += 1;
        tracing::debug!(trigger = trigger.name(), "reconcile");
        let result = match trigger {
            Trigger::WatchBatch => match self.reconcile_delta().await {
                Some(r) => r,
                None => self.reconcile_once().await,
            },
            _ => self.reconcile_once().await,
        };
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
        if self.cfg.is_ipv6_only() {
            return self.reconcile_once6().await;
        }
        // Rebuilt below from what the kernel holds now.
        self.delta = None;
        self.touched.clear();
        let index = self.dp.ensure_devices(&self.devices()).await?;
        let leases: Vec<Lease> = self.leases.values().cloned().collect();
        let local = self.local();
        let (nodes, skipped) = remote_nodes(&local, &leases);
        self.publish_peers(&nodes);
        let skipped_total = skipped.len() + self.unusable.len();
        self.opts.telemetry.skipped_leases.set(skipped_total as i64);
        self.opts.telemetry.leases.set(self.leases.len() as i64);
        self.warn_skipped(&skipped);
        let (ours4, ours6) = self.own_macs();
        self.warn_mac_clashes(clash::clashes(ours4, ours6, &nodes));
        // Members first: a joining node's VXLAN is accepted by the time its
        // route is there.
        self.ensure_guard(&nodes).await;
        let desired = desired_state(&nodes);
        let mut actual = self.dp.read_state(&index).await?;
        let ops = diff(&desired, &actual);
        // Built only when there is something to log about.
        let index_of_nodes = (!ops.is_empty()).then(|| NodeIndex::new(self.seen.values()));
        let named: Vec<_> = ops
            .iter()
            .map(|op| (op, index_of_nodes.as_ref().and_then(|idx| idx.find(op))))
            .collect();
        let (accepted, failed) = self.apply_ops(&index, named).await;
        accepted.into_iter().for_each(|op| actual.apply_op(op));
        let (wg_ops, wg_failed) = self.sync_wireguard(&nodes).await;
        let (total, failed) = (ops.len() + wg_ops, failed + wg_failed);
        if failed > 0 {
            // Not converged: the next watch batch retries with a full pass.
            tracing::warn!(failed, total, "reconcile incomplete");
        } else {
            self.delta = Some(self.delta_path(local, actual, index));
        }
        Ok((total, failed))
    }

    /// Where this node sits, as the lease map is read against.
    fn local(&self) -> Local {
        Local {
            network: self.cfg.network,
            subnet: self.lease.lease.subnet,
            subnet6: self.cfg.ipv6.as_ref().and(self.lease.lease.ipv6_subnet),
            v6_tunnel: self.plan.vxlan6.is_some(),
            underlay: self.plan.underlay_net,
            mode: self.plan.mode,
        }
    }

    /// Warns once about each lease left out (per reason).
    fn warn_skipped<'a>(&mut self, skipped: impl IntoIterator<Item = &'a Skip>) {
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
    }

    /// Applies `ops` in order, each with the node it is for (for the log);
    /// a failed one does not stop the rest. Returns the operations the
    /// kernel accepted, in order, and how many failed.
    async fn apply_ops<'a>(
        &self,
        dev: &crate::kernel::DevIndex,
        ops: Vec<(&'a Op, Option<&'a Lease>)>,
    ) -> (Vec<&'a Op>, usize) {
        let (mut accepted, mut failed) = (Vec::new(), 0);
        for (op, node) in ops {
            let res = self.dp.apply(dev, op).await;
            if self.applied(op, node, res) {
                accepted.push(op);
            } else {
                failed += 1;
            }
        }
        (accepted, failed)
    }

    /// Counts and logs one operation's result, naming the node it is for;
    /// true when it succeeded.
    fn applied(&self, op: &Op, node: Option<&Lease>, res: Result<(), KernelError>) -> bool {
        self.opts.telemetry.count_op(op.kind(), res.is_ok());
        let (subnet, public_ip) = node
            .map(|l| match (l.ipv6_subnet, l.attrs.public_ipv6) {
                // An IPv6-only node: its IPv4 part says nothing.
                (Some(s6), Some(ip6)) if l.is_ipv6_only() => (s6.to_string(), ip6.to_string()),
                _ => (l.subnet.to_string(), l.attrs.public_ip.to_string()),
            })
            .unwrap_or_else(|| ("?".into(), "?".into()));
        match res {
            Ok(()) => {
                tracing::info!(op = %op, subnet, public_ip, "applied");
                true
            }
            Err(e) => {
                tracing::warn!(op = %op, subnet, public_ip, error = %e, "netlink operation failed");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
