//! Watch batches applied through the per-peer delta
//! ([`crate::reconcile::delta`]): the operations for the peers the events
//! touched, without reading the kernel back or walking every lease. The
//! full pass (read the kernel, diff, apply) stays for the start, the resync
//! tick, link events and lost netlink events; it rebuilds this state from
//! what it read, so drift is still repaired within one resync.

use std::collections::BTreeMap;

use subnet_allocator::{Lease, LeaseStore};

use super::Agent;
use crate::datapath::Datapath;
use crate::kernel::{DevIndex, KernelError};
use crate::reconcile::delta::{Family, PeerSetOf, V4};
use crate::reconcile::KernelState;

/// What a watch batch is applied with: every peer's standing and entries,
/// what the kernel holds, and the devices' indexes, all from the last full
/// pass and the deltas since.
#[derive(Debug)]
pub(super) struct DeltaPath<F: Family = V4> {
    pub(super) peers: PeerSetOf<F>,
    pub(super) dev: DevIndex,
}

impl<F: Family> DeltaPath<F> {
    /// From a full pass: `programmed` is the kernel as it read it, with the
    /// pass's successful operations applied.
    pub(super) fn new(
        local: F::Local,
        leases: &BTreeMap<F::Key, Lease>,
        programmed: KernelState,
        dev: DevIndex,
    ) -> Self {
        DeltaPath {
            peers: PeerSetOf::new(local, leases, programmed),
            dev,
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
        // WireGuard key): the per-peer state below is checked on any (a
        // changed peer always comes from one).
        let any_event = !touched.is_empty();
        let delta = path.peers.update(&self.leases, touched);
        let skipped = path.peers.skipped_count() + self.unusable.len();
        self.opts.telemetry.skipped_leases.set(skipped as i64);
        self.opts.telemetry.leases.set(self.leases.len() as i64);
        self.warn_skipped(&delta.skipped);
        let (mut wg_ops, mut failed) = (0, 0);
        if any_event {
            // What else is keyed by the peer follows the same peers: the
            // tunnel's members (before the routes, so that a joining node's
            // VXLAN is accepted by the time its route is there) and the
            // prober's targets. Each is written only when it changed.
            let nodes: Vec<_> = path.peers.nodes().cloned().collect();
            self.ensure_guard(&nodes).await;
            self.publish_peers(&nodes);
            // A WireGuard peer before its route, so that the route never
            // leads into a tunnel without the peer.
            (wg_ops, failed) = self.sync_wireguard(&nodes).await;
        }
        for (peer, op) in &delta.ops {
            let res = self.dp.apply(&path.dev, op).await;
            if self.applied(op, self.seen.get(peer), res) {
                path.peers.record(op);
            } else {
                failed += 1;
            }
        }
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
