//! Watch batches applied through the per-peer delta
//! ([`crate::reconcile::delta`]): the operations for the peers the events
//! touched, without reading the kernel back or walking every lease. The
//! full pass (read the kernel, diff, apply) stays for the start, the resync
//! tick, link events and lost netlink events; it rebuilds this state from
//! what it read, so drift is still repaired within one resync. The state
//! beside the kernel's tables (the tunnel's members, the probe targets, the
//! WireGuard peers) follows the changed peers too ([`hooks`]).

mod hooks;

use std::collections::BTreeMap;

use subnet_allocator::{Lease, LeaseStore};

use super::Agent;
use crate::datapath::Datapath;
use crate::guard::tunnel_peers;
use crate::kernel::{DevIndex, KernelError};
use crate::reconcile::delta::hooks::{Hooked, Members, WgPeers};
use crate::reconcile::delta::{PeerSetOf, V4};
use crate::reconcile::KernelState;

/// What a watch batch is applied with: every peer's standing and entries,
/// what the kernel holds, and the devices' indexes, all from the last full
/// pass and the deltas since.
#[derive(Debug)]
pub(super) struct DeltaPath<F: Hooked = V4> {
    pub(super) peers: PeerSetOf<F>,
    pub(super) dev: DevIndex,
    /// The tunnel's members the accepted nodes ask for, counted.
    pub(super) members: Members,
    /// The WireGuard peers, in WireGuard mode.
    pub(super) wg: Option<WgPeers>,
}

impl<F: Hooked> DeltaPath<F> {
    /// From a full pass: `programmed` is the kernel as it read it, with the
    /// pass's successful operations applied.
    pub(super) fn new(
        local: F::Local,
        leases: &BTreeMap<F::Key, Lease>,
        programmed: KernelState,
        dev: DevIndex,
    ) -> Self {
        let peers = PeerSetOf::new(local, leases, programmed);
        DeltaPath {
            members: Members::new::<F>(peers.nodes()),
            peers,
            dev,
            wg: None,
        }
    }
}

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// Applies the lease events since the last pass as a delta; `None` when
    /// a full pass is needed instead (none ran yet, an operation failed
    /// since, or this node's own subnet changed).
    pub(super) async fn reconcile_delta(&mut self) -> Option<Result<(usize, usize), KernelError>> {
        if self.cfg.is_ipv6_only() {
            return self.reconcile_delta6().await;
        }
        let local = self.local();
        let mut path = self.delta.take().filter(|p| *p.peers.local() == local)?;
        let touched = std::mem::take(&mut self.touched);
        // A lease event can change what a peer's node does not show (a
        // WireGuard key): the WireGuard peers follow the touched leases as
        // well as the changed peers.
        let any_event = !touched.is_empty();
        let mut wg_subnets = match path.wg {
            Some(_) => touched.clone(),
            None => Default::default(),
        };
        let delta = path.peers.update(&self.leases, touched);
        let skipped = path.peers.skipped_count() + self.unusable.len();
        self.opts.telemetry.skipped_leases.set(skipped as i64);
        self.opts.telemetry.leases.set(self.leases.len() as i64);
        self.warn_skipped(&delta.skipped);
        let (mut wg_ops, mut failed) = (0, 0);
        if any_event {
            // What else is keyed by the peer follows the changed peers: the
            // tunnel's members (before the routes, so that a joining node's
            // VXLAN is accepted by the time its route is there) and the
            // prober's targets, each written only when it changed.
            self.follow_peers(&mut path, &delta.peers, tunnel_peers)
                .await;
            // A WireGuard peer before its route, so that the route never
            // leads into a tunnel without the peer.
            if path.wg.is_some() {
                wg_subnets.extend(delta.peers.iter().map(|p| p.subnet));
                (wg_ops, failed) = self.wireguard_delta(&mut path, wg_subnets).await;
            }
        }
        let named: Vec<_> = delta
            .ops
            .iter()
            .map(|(peer, op)| (op, self.seen.get(peer)))
            .collect();
        let (accepted, op_failed) = self.apply_ops(&path.dev, named).await;
        accepted.into_iter().for_each(|op| path.peers.record(op));
        failed += op_failed;
        let total = delta.ops.len() + wg_ops;
        if failed > 0 {
            // What the kernel holds is unknown now: the next pass reads it.
            tracing::warn!(
                failed,
                total,
                "reconcile incomplete; the next pass is a full one"
            );
        } else {
            self.delta = Some(path);
        }
        self.opts.telemetry.delta_passes.inc();
        Some(Ok((total, failed)))
    }
}
