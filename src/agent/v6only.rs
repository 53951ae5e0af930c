//! The node of an IPv6-only cluster (`EnableIPv4: false`): what differs
//! from an IPv4 or dual-stack node, and nothing else. The underlay is found
//! by its IPv6 address (`underlay6::choose_ipv6`) and carried in the
//! agent's [`Underlay`] with no IPv4 address (`0.0.0.0/32`); every lease
//! shares the IPv4 part `0.0.0.0/0`, so the agent keeps these leases in a
//! map of their own, keyed by the IPv6 subnet (their key); and a pass reads
//! them with `reconcile::ipv6_only`, which never produces an IPv4 entry.
//! Watch batches go through the per-peer delta (`reconcile::delta::PeerSet6`)
//! as they do on other nodes.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use subnet_allocator::{Lease, LeaseStore, NetworkConfig};

use super::delta::DeltaPath;
use super::plan::Plan;
use super::underlay::{Found, UnderlaySelect};
use super::underlay6::Found6;
use super::{Agent, AgentError};
use crate::datapath::Datapath;
use crate::guard::tunnel_peers6;
use crate::kernel::{KernelError, Underlay};
use crate::reconcile::ipv6_only::{desired_state6, remote_nodes6, Local6, Skip6};
use crate::reconcile::{diff, NodeIndex};

/// The underlay found, of either kind of node.
#[derive(Debug, Clone)]
pub struct Located {
    pub found: Found,
    /// An IPv6-only node's public IPv6 address with its underlay prefix.
    pub net6: Option<Ipv6Net>,
}

/// The [`Found`] of an IPv6-only node's underlay: no IPv4 address.
pub fn found_of(f: &Found6) -> Found {
    Found {
        underlay: Underlay {
            name: f.name.clone(),
            index: f.index,
            mtu: f.mtu,
            ip: Ipv4Addr::UNSPECIFIED,
            net: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 32).unwrap_or_default(),
        },
        on_iface: f.on_iface,
    }
}

/// Finds the underlay: by its IPv6 address in an IPv6-only cluster, else
/// by its IPv4 one.
pub async fn locate(
    dp: &impl Datapath,
    cfg: &NetworkConfig,
    select: &UnderlaySelect,
    public_ip: Option<Ipv4Addr>,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Located, KernelError> {
    if cfg.is_ipv6_only() {
        let f6 = dp.select_underlay6(select, public_ipv6).await?;
        return Ok(Located {
            found: found_of(&f6),
            net6: Some(f6.net),
        });
    }
    Ok(Located {
        found: dp.select_underlay(select, public_ip).await?,
        net6: None,
    })
}

/// The plan of either kind of node.
pub fn make_plan(
    cfg: &NetworkConfig,
    underlay: &Underlay,
    public_ipv6: Option<Ipv6Addr>,
) -> Result<Plan, AgentError> {
    if !cfg.is_ipv6_only() {
        return Ok(Plan::new(cfg, underlay, public_ipv6)?);
    }
    let ip6 = public_ipv6.ok_or_else(|| KernelError::NoAddress6(underlay.name.clone()))?;
    Ok(Plan::ipv6_only(cfg, underlay, ip6)?)
}

/// Whether `a` is the lease `own` (same key, same node).
pub fn is_own(a: &Lease, own: &Lease) -> bool {
    a.key_name() == own.key_name()
        && a.attrs.public_ip == own.attrs.public_ip
        && (!own.is_ipv6_only() || a.attrs.public_ipv6 == own.attrs.public_ipv6)
}

/// Where an IPv6-only lease goes in the agent's map of them.
pub fn key6(l: &Lease) -> Option<Ipv6Net> {
    l.ipv6_subnet.filter(|_| l.is_ipv6_only())
}

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// Where this IPv6-only node sits; `None` on any other node.
    fn local6(&self) -> Option<Local6> {
        Some(Local6 {
            network6: self.cfg.ipv6.as_ref()?.network,
            subnet6: key6(&self.lease.lease)?,
            underlay6: self.underlay6?,
            mode: self.plan.mode,
        })
    }

    /// The full pass of an IPv6-only node: as `reconcile_once`, with the
    /// IPv6-only leases read by `reconcile::ipv6_only`. Returns (operations
    /// issued, operations that failed).
    pub(super) async fn reconcile_once6(&mut self) -> Result<(usize, usize), KernelError> {
        // Rebuilt below from what the kernel holds now.
        self.delta6 = None;
        self.touched6.clear();
        let index = self.dp.ensure_devices(&self.devices()).await?;
        let Some(local) = self.local6() else {
            return Err(KernelError::NoAddress6(self.underlay.name.clone()));
        };
        // Leases of another form are reported as such, not dropped unsaid.
        let leases: Vec<Lease> = self
            .leases6
            .values()
            .chain(self.leases.values())
            .cloned()
            .collect();
        let (nodes, skipped) = remote_nodes6(&local, &leases);
        self.publish_peers6(local.subnet6, &nodes);
        let t = self.opts.telemetry.clone();
        t.skipped_leases
            .set((skipped.len() + self.unusable.len()) as i64);
        t.leases.set(self.lease_count() as i64);
        self.warn_skipped6(&skipped);
        let ours6 = self.own_macs().1;
        self.warn_mac_clashes(super::clash::clashes6(ours6, &nodes));
        self.ensure_guard_peers(tunnel_peers6(&nodes)).await;
        let desired = desired_state6(&nodes);
        let mut actual = self.dp.read_state(&index).await?;
        let ops = diff(&desired, &actual);
        let seen = (!ops.is_empty()).then(|| NodeIndex::new(self.seen6.values()));
        let named: Vec<_> = ops
            .iter()
            .map(|op| (op, seen.as_ref().and_then(|idx| idx.find(op))))
            .collect();
        let (accepted, failed) = self.apply_ops(&index, named).await;
        accepted.into_iter().for_each(|op| actual.apply_op(op));
        if failed > 0 {
            // Not converged: the next watch batch retries with a full pass.
            tracing::warn!(failed, total = ops.len(), "reconcile incomplete");
        } else {
            self.delta6 = Some(DeltaPath::new(local, &self.leases6, actual, index));
        }
        Ok((ops.len(), failed))
    }

    /// [`Self::reconcile_delta`] of an IPv6-only node: the operations for
    /// the peers the events touched, through the same per-peer state.
    pub(super) async fn reconcile_delta6(&mut self) -> Option<Result<(usize, usize), KernelError>> {
        let local = self.local6()?;
        let mut path = self.delta6.take().filter(|p| *p.peers.local() == local)?;
        let touched = std::mem::take(&mut self.touched6);
        let any_event = !touched.is_empty();
        let delta = path.peers.update(&self.leases6, touched);
        let t = self.opts.telemetry.clone();
        t.skipped_leases
            .set((path.peers.skipped_count() + self.unusable.len()) as i64);
        t.leases.set(self.lease_count() as i64);
        self.warn_skipped6(&delta.skipped);
        if any_event {
            // The tunnel's members before the routes, as in the full pass;
            // both they and the probe targets by the changed peers only.
            self.follow_peers(&mut path, &delta.peers, tunnel_peers6)
                .await;
        }
        let named: Vec<_> = delta
            .ops
            .iter()
            .map(|(peer, op)| (op, self.seen6.get(peer)))
            .collect();
        let (accepted, failed) = self.apply_ops(&path.dev, named).await;
        accepted.into_iter().for_each(|op| path.peers.record(op));
        if failed > 0 {
            tracing::warn!(
                failed,
                total = delta.ops.len(),
                "reconcile incomplete; the next pass is a full one"
            );
        } else {
            self.delta6 = Some(path);
        }
        t.delta_passes.inc();
        Some(Ok((delta.ops.len(), failed)))
    }

    /// Warns once about each IPv6-only lease left out (per reason).
    fn warn_skipped6(&mut self, skipped: &[Skip6]) {
        for s in skipped {
            let msg = s.to_string();
            if self.warned.insert(msg.clone()) {
                tracing::warn!("skipping lease: {msg}");
            }
        }
    }
}
