//! The node agent's life: lease a subnet, publish it in the subnet file,
//! build the devices, then keep the kernel converged to the lease map on
//! every watch batch, link event and resync tick, renewing the lease as it
//! goes. Its state is named in [`lifecycle`]; the kernel and the store come
//! in through the [`Datapath`] and [`LeaseStore`] traits. etcd trouble is
//! retried on a schedule and never tears the data path down or stops repairs.

pub mod lifecycle;
pub mod plan;
mod run;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use subnet_allocator::{
    acquire_lease, retry, Backoff, Lease, LeaseEvent, LeaseStore, NetworkConfig, StoreError,
};
use tokio::time::Instant;

use crate::datapath::{Datapath, DeviceSpec};
use crate::kernel::{KernelError, Underlay};
use crate::reconcile::{desired_state, diff, remote_nodes, Local, NodeIndex};
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
}

/// Where the agent stands, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub subnet: Ipv4Net,
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
    /// Every lease seen since start, also after it went away, so that log
    /// lines about removing a node's entries can still name the node.
    seen: BTreeMap<Ipv4Net, Lease>,
    warned: HashSet<String>,
    passes: u64,
    /// Recovering from etcd losing or rolling back its data.
    resetting: bool,
    status: tokio::sync::watch::Sender<AgentStatus>,
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

fn warn_forwarding_off() {
    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
        tracing::warn!("net.ipv4.ip_forward is 0 on this node: pod traffic to other nodes will not be forwarded; enable it (sysctl -w net.ipv4.ip_forward=1)");
    }
}

fn warn_forwarding6_off() {
    if std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
        .is_ok_and(|v| v.trim() == "0")
    {
        tracing::warn!("net.ipv6.conf.all.forwarding is 0 on this node: IPv6 pod traffic to other nodes will not be forwarded");
    }
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
        tracing::info!(network = %cfg.network, subnet_len = cfg.subnet_len, backend = %cfg.backend.kind.as_str(), vni = cfg.backend.vni, "network config");

        let underlay = dp.underlay(opts.iface.as_deref(), opts.public_ip).await?;
        warn_forwarding_off();
        let public_ipv6 = match cfg.ipv6 {
            Some(_) => {
                warn_forwarding6_off();
                dp.global_ipv6(underlay.index).await?
            }
            None => None,
        };
        let mut plan = Plan::new(&cfg, &underlay, public_ipv6)?;
        plan.attrs.node_name = opts.node_name.clone();
        let mtu = plan.vxlan.as_ref().map_or(plan.pod_mtu, |v| v.mtu);
        let vtep_mac = plan.vxlan.as_ref().map(|v| v.mac.to_string());
        tracing::info!(iface = %underlay.name, public_ip = %underlay.ip, mtu, vtep_mac, "underlay");
        if let Some(v6) = &plan.vxlan6 {
            tracing::info!(public_ipv6 = %v6.local, mtu = v6.mtu, vtep_mac = %v6.mac, "IPv6 underlay tunnel");
        }

        let preferred = subnet_file::read_previous_subnet(&opts.subnet_file);
        let lease = retrying("acquiring a subnet lease", &t, stop, || {
            acquire_lease(
                &*store,
                &cfg,
                underlay.ip,
                &plan.attrs,
                preferred,
                opts.lease_ttl,
            )
        })
        .await?;
        tracing::info!(subnet = %lease.subnet, public_ip = %underlay.ip, "acquired lease");
        t.set_lease_held(true);

        let now = Instant::now();
        let (status, _) = tokio::sync::watch::channel(AgentStatus {
            subnet: lease.subnet,
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
            seen: BTreeMap::new(),
            warned: HashSet::new(),
            passes: 0,
            resetting: false,
            status,
        };
        agent.publish().await?;
        agent.ensure_masq().await;
        let snapshot = retrying("listing leases", &t, stop, || agent.store.list_leases()).await?;
        agent.watch = WatchState::after(snapshot.revision);
        agent.load(snapshot.leases, snapshot.revision);
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
            lease: self.lease.phase.name(),
            watch: self.watch.phase.name(),
            revision: self.watch.revision,
            leases: self.leases.len(),
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
        let env = self.plan.subnet_env(&self.cfg, self.opts.ip_masq, lease);
        self.dp.ensure_devices(&self.devices()).await?;
        subnet_file::write(&self.opts.subnet_file, &env)?;
        self.opts.telemetry.set_subnet_file_written(true);
        tracing::info!(path = %self.opts.subnet_file.display(), subnet = %env.subnet, "wrote subnet file");
        Ok(())
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
        match self.dp.ensure_masq(&networks).await {
            Ok(false) => {}
            Ok(true) => {
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
        tracing::info!(leases = self.leases.len(), revision, "loaded lease map");
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
        let index = self.dp.ensure_devices(&self.devices()).await?;
        let leases: Vec<Lease> = self.leases.values().cloned().collect();
        let local = Local {
            network: self.cfg.network,
            subnet: self.lease.lease.subnet,
            subnet6: self.cfg.ipv6.as_ref().and(self.lease.lease.ipv6_subnet),
            v6_tunnel: self.plan.vxlan6.is_some(),
            underlay: self.plan.underlay_net,
            mode: self.plan.mode,
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
        let actual = self.dp.read_state(&index).await?;
        let ops = diff(&desired, &actual);
        let mut failed = 0;
        // Built only when there is something to log about.
        let index_of_nodes = (!ops.is_empty()).then(|| NodeIndex::new(self.seen.values()));
        for op in &ops {
            let res = self.dp.apply(&index, op).await;
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

    fn apply_events(&mut self, events: Vec<LeaseEvent>) {
        for ev in events {
            match ev {
                LeaseEvent::Added(l) => {
                    tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "lease added or changed");
                    self.seen.insert(l.subnet, l.clone());
                    self.leases.insert(l.subnet, l);
                }
                LeaseEvent::Removed(s) => {
                    if let Some(old) = self.leases.remove(&s) {
                        tracing::info!(subnet = %s, public_ip = %old.attrs.public_ip, "lease removed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
