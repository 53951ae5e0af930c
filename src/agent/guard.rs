//! The agent's side of the isolation tables: the tunnel's members follow
//! the lease map in every reconcile pass; each resync reads both tables
//! back, restores them when flushed or edited, and publishes the drop
//! counters.

use twill_nft::guard::{Peers, Settings};

use super::Agent;
use crate::datapath::Datapath;
use crate::guard::tunnel_peers;
use crate::reconcile::RemoteNode;

impl<S, D: Datapath> Agent<S, D> {
    pub(super) fn guard_settings(&self) -> Settings {
        Settings {
            network: self.cfg.network,
            network6: self.cfg.ipv6.as_ref().map(|v| v.network),
            // An IPv6-only node has only the tunnel over IPv6.
            vxlan_port: self
                .plan
                .vxlan
                .as_ref()
                .or(self.plan.vxlan6.as_ref())
                .map(|v| v.port),
            tunnel_filter: self.opts.tunnel_filter,
        }
    }

    /// Writes the tunnel's members when they (or the settings) changed
    /// since the last write; the first time, checks both tables.
    pub(super) async fn ensure_guard(&mut self, nodes: &[RemoteNode]) {
        self.ensure_guard_peers(tunnel_peers(nodes)).await
    }

    /// [`Self::ensure_guard`] with the members given.
    pub(super) async fn ensure_guard_peers(&mut self, members: Peers) {
        let want = (self.guard_settings(), members);
        match self.guard_applied.take() {
            Some(applied) if applied == want => self.guard_applied = Some(applied),
            // Same settings: only the members that came and went.
            Some((settings, was)) if settings == want.0 => {
                self.write_guard(want, false, Some(was)).await
            }
            Some(_) => self.write_guard(want, false, None).await,
            None => self.write_guard(want, true, None).await,
        }
    }

    /// The resync's look at the tables.
    pub(super) async fn check_guard(&mut self) {
        let want = match &self.guard_applied {
            Some((_, peers)) => (self.guard_settings(), peers.clone()),
            None => (self.guard_settings(), Peers::default()),
        };
        self.write_guard(want, true, None).await;
    }

    pub(super) async fn write_guard(
        &mut self,
        want: (Settings, Peers),
        check: bool,
        was: Option<Peers>,
    ) {
        let (settings, peers) = &want;
        match self
            .dp
            .ensure_guard(settings, peers, check, &self.guard_pods, was)
            .await
        {
            Ok(report) => {
                if check {
                    self.guard_pods = report.pods;
                }
                for table in &report.rewritten {
                    if check {
                        tracing::info!(
                            table,
                            pods = self.guard_pods.len(),
                            "wrote the isolation table (missing or not as twill writes it)"
                        );
                    } else {
                        tracing::debug!(
                            table,
                            peers4 = peers.v4.len(),
                            peers6 = peers.v6.len(),
                            "tunnel members written"
                        );
                    }
                }
                for (filter, packets) in &report.drops {
                    self.opts.telemetry.record_guard_drops(filter, *packets);
                }
                self.guard_applied = Some(want);
            }
            Err(e) => {
                // Retried by the next pass (nothing recorded as applied).
                tracing::warn!(error = %e, "cannot write the isolation tables");
                self.guard_applied = None;
            }
        }
    }
}
