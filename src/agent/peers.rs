//! The agent's side of peer probing: after each reconcile pass it hands the
//! prober (src/probe) the remote nodes as probe targets. Only a changed
//! list wakes the prober.

use subnet_allocator::LeaseStore;

use super::Agent;
use crate::datapath::Datapath;
use crate::probe::{publish, targets6, targets_all, PeerSet};
use crate::reconcile::ipv6_only::RemoteNode6;
use crate::reconcile::RemoteNode;

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// Follows the peers to probe; the value changes after reconcile
    /// passes that change them.
    pub fn peers(&self) -> tokio::sync::watch::Receiver<PeerSet> {
        self.peers.subscribe()
    }

    pub(super) fn publish_peers(&self, nodes: &[RemoteNode]) {
        // Dual-stack: each peer's IPv6 pod path too, as a second target.
        let own6 = self.cfg.ipv6.as_ref().and(self.lease.lease.ipv6_subnet);
        let targets = targets_all(self.lease.lease.subnet, own6, nodes);
        publish(
            &self.peers,
            PeerSet {
                mtu: self.plan.pod_mtu,
                targets,
            },
        );
    }

    /// The probe targets of an IPv6-only node (ICMPv6 through the IPv6
    /// tunnel, or gateway to gateway on direct routes).
    pub(super) fn publish_peers6(&self, own6: ipnet::Ipv6Net, nodes: &[RemoteNode6]) {
        let targets = targets6(own6, nodes);
        publish(
            &self.peers,
            PeerSet {
                mtu: self.plan.pod_mtu,
                targets,
            },
        );
    }
}
