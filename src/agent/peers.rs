//! The agent's side of peer probing: after each reconcile pass it hands the
//! prober (src/probe) the remote nodes as probe targets. Only a changed
//! list wakes the prober.

use subnet_allocator::LeaseStore;

use super::Agent;
use crate::datapath::Datapath;
use crate::probe::{targets, PeerSet};
use crate::reconcile::ipv6_only::RemoteNode6;
use crate::reconcile::RemoteNode;

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// Follows the peers to probe; the value changes after reconcile
    /// passes that change them.
    pub fn peers(&self) -> tokio::sync::watch::Receiver<PeerSet> {
        self.peers.subscribe()
    }

    pub(super) fn publish_peers(&self, nodes: &[RemoteNode]) {
        let now = PeerSet {
            mtu: self.plan.pod_mtu,
            targets: targets(self.lease.lease.subnet, nodes),
        };
        self.peers.send_if_modified(|s| {
            let changed = *s != now;
            *s = now;
            changed
        });
    }

    /// The probe targets of an IPv6-only node.
    pub(super) fn publish_peers6(&self, _own6: ipnet::Ipv6Net, _nodes: &[RemoteNode6]) {
        // IPv6 probes: see src/probe (not yet).
        self.peers.send_if_modified(|s| {
            let changed = !s.targets.is_empty();
            s.targets.clear();
            changed
        });
    }
}
