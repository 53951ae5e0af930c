//! A watch batch's per-peer state outside the kernel tables, by the peers
//! that changed (`DeltaOf::peers`, see `reconcile::delta::hooks`): the
//! tunnel's members that came and went are written in place, the prober's
//! targets are edited in place in the watch channel's value, and only the
//! changed WireGuard peers get UAPI `set` lines. The full pass rebuilds
//! each whole (and the resync reads the tables and the device back), so
//! drift is repaired as before.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;
use subnet_allocator::LeaseStore;
use twill_nft::guard::Peers;

use super::DeltaPath;
use crate::agent::wireguard::log_changes;
use crate::agent::Agent;
use crate::datapath::Datapath;
use crate::kernel::DevIndex;
use crate::reconcile::delta::hooks::{edit_targets, Hooked, MemberChange, WgParams, WgPeers};
use crate::reconcile::delta::{PeerChangeOf, V4};
use crate::reconcile::{KernelState, Local};

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// The delta path a full pass leaves (on an IPv4 or dual-stack node):
    /// its peers, their members and, in WireGuard mode, their peers.
    pub(in crate::agent) fn delta_path(
        &self,
        local: Local,
        programmed: KernelState,
        dev: DevIndex,
    ) -> DeltaPath {
        let mut path = DeltaPath::new(local, &self.leases, programmed, dev);
        path.wg = self.plan.wireguard.as_ref().map(|spec| {
            let params = WgParams {
                port: spec.listen_port,
                keepalive: spec.keepalive,
                ipv6_underlay: spec.ipv6_underlay,
            };
            WgPeers::new(params, &path.peers, &self.leases)
        });
        path
    }

    /// Follows a batch's changed peers in the tunnel's members and the
    /// probe targets; `all` gives the members of every node, for when the
    /// members written are not known (a failed write, other settings).
    pub(in crate::agent) async fn follow_peers<F: Hooked>(
        &mut self,
        path: &mut DeltaPath<F>,
        changes: &[PeerChangeOf<F>],
        all: fn(&[F::Node]) -> Peers,
    ) {
        let change = path.members.update::<F>(changes);
        let peers = &path.peers;
        self.guard_delta(&change, || all(&peers.nodes().cloned().collect::<Vec<_>>()))
            .await;
        let mtu = self.plan.pod_mtu;
        let local = path.peers.local();
        self.peers.send_if_modified(|set| {
            let mtu_changed = set.mtu != mtu;
            set.mtu = mtu;
            edit_targets::<F>(local, &mut set.targets, changes) | mtu_changed
        });
    }

    /// Writes the members that came and went in place when the members
    /// written are those `change` starts from (same settings), else the
    /// whole set as [`Self::ensure_guard_peers`] does.
    async fn guard_delta(&mut self, change: &MemberChange, all: impl FnOnce() -> Peers) {
        let settings = self.guard_settings();
        match self.guard_applied.take() {
            Some((was, mut members)) if was == settings => {
                if change.is_empty() {
                    self.guard_applied = Some((was, members));
                    return;
                }
                change.apply_to(&mut members);
                match self.dp.update_guard(&change.added, &change.removed).await {
                    Ok(_) => {
                        tracing::debug!(
                            added4 = change.added.v4.len(),
                            added6 = change.added.v6.len(),
                            removed4 = change.removed.v4.len(),
                            removed6 = change.removed.v6.len(),
                            "tunnel members updated"
                        );
                        self.guard_applied = Some((was, members));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot update the tunnel members in place; replacing the table");
                        self.write_guard((was, members), false, None).await;
                    }
                }
            }
            other => {
                self.guard_applied = other;
                self.ensure_guard_peers(all()).await;
            }
        }
    }

    /// The WireGuard peers of the leases at `subnets` (a batch's touched
    /// leases and changed peers), by UAPI `set` lines for those only;
    /// returns (changes made, changes that failed).
    pub(super) async fn wireguard_delta(
        &mut self,
        path: &mut DeltaPath<V4>,
        subnets: BTreeSet<Ipv4Net>,
    ) -> (usize, usize) {
        let (Some(spec), Some(wg)) = (self.plan.wireguard.clone(), path.wg.as_mut()) else {
            return (0, 0);
        };
        let changes = wg.update(&path.peers, &self.leases, subnets.iter().copied());
        if changes.is_empty() {
            return (0, 0);
        }
        match self.dp.change_peers(&spec, &changes).await {
            Ok(()) => {
                log_changes(&changes, || subnets.iter().filter_map(|s| self.seen.get(s)));
                (changes.len(), 0)
            }
            Err(e) => {
                // The device is unknown now: the next pass is a full sync.
                tracing::warn!(error = %e, "cannot bring the wireguard peers in step");
                (changes.len(), 1)
            }
        }
    }
}
