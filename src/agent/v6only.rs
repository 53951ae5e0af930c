//! The node of an IPv6-only cluster (`EnableIPv4: false`): what differs
//! from an IPv4 or dual-stack node, and nothing else. The underlay is found
//! by its IPv6 address (`underlay6::choose_ipv6`) and carried in the
//! agent's [`Underlay`] with no IPv4 address (`0.0.0.0/32`); every lease
//! shares the IPv4 part `0.0.0.0/0`, so the agent keeps these leases in a
//! map of their own, keyed by the IPv6 subnet (their key); and a pass reads
//! them with `reconcile::ipv6_only`, which never produces an IPv4 entry.
//! Watch batches run full passes (the per-peer delta path is keyed by the
//! IPv4 subnet).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use subnet_allocator::{Lease, LeaseStore, NetworkConfig};

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
    let ip6 = public_ipv6.ok_or_else(|| KernelError::NoAddress(underlay.name.clone()))?;
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
        self.delta = None;
        self.touched.clear();
        let index = self.dp.ensure_devices(&self.devices()).await?;
        let Some(local) = self.local6() else {
            return Err(KernelError::NoAddress(self.underlay.name.clone()));
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
        self.ensure_guard_peers(tunnel_peers6(&nodes)).await;
        let desired = desired_state6(&nodes);
        let mut actual = self.dp.read_state(&index).await?;
        let ops = diff(&desired, &actual);
        let mut failed = 0;
        let seen = (!ops.is_empty()).then(|| NodeIndex::new(self.seen6.values()));
        for op in &ops {
            let res = self.dp.apply(&index, op).await;
            let node = seen.as_ref().and_then(|idx| idx.find(op));
            if self.applied(op, node, res) {
                actual.apply_op(op);
            } else {
                failed += 1;
            }
        }
        if failed > 0 {
            tracing::warn!(failed, total = ops.len(), "reconcile incomplete");
        }
        Ok((ops.len(), failed))
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
