//! The agent's side of `--ip-masq`: the masquerade tables kept in place,
//! and what the subnet file says about them.

use subnet_allocator::LeaseStore;

use super::Agent;
use crate::datapath::Datapath;
use crate::subnet_file;

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// What the subnet file says about masquerading: on only when the
    /// rules are in place.
    pub(super) fn masq_claim(&self) -> bool {
        self.opts.ip_masq && self.masq_installed == Some(true)
    }

    /// Keeps the masquerade rules in place when `--ip-masq` is on: replaced
    /// atomically when missing or incomplete, left alone when right. When
    /// they cannot be installed the node is unready and the subnet file says
    /// so; when they come back, both follow. Without the flag, a first call
    /// removes the tables an earlier run with it left.
    pub(super) async fn ensure_masq(&mut self) {
        if !self.opts.ip_masq {
            if self.masq_installed.is_none() {
                self.masq_installed = Some(false);
                match self.dp.remove_masq().await {
                    Ok(true) => tracing::info!(
                        "removed the ip-masq tables of an earlier run (--ip-masq is off)"
                    ),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot remove the ip-masq tables of an earlier run")
                    }
                }
            }
            return;
        }
        let networks = crate::masq::Networks {
            v4: (!self.cfg.is_ipv6_only()).then_some(self.cfg.network),
            v6: self.cfg.ipv6.as_ref().map(|c| c.network),
        };
        let installed = match self.dp.ensure_masq(&networks).await {
            Ok(false) => true,
            Ok(true) => {
                tracing::info!(network = %self.cfg.network, network6 = ?networks.v6, "installed ip-masq rules");
                true
            }
            Err(e) => {
                if self.masq_installed != Some(false) {
                    tracing::warn!(error = %e, "cannot install ip-masq rules: the node stays unready and the subnet file says TWILL_IPMASQ=false");
                } else {
                    tracing::debug!(error = %e, "still cannot install ip-masq rules");
                }
                false
            }
        };
        self.opts.telemetry.set_masq_failed(!installed);
        let before = self.masq_installed.replace(installed);
        if before.is_some() && before != Some(installed) {
            let env = self
                .plan
                .subnet_env(&self.cfg, installed, &self.lease.lease);
            match subnet_file::write(&self.opts.subnet_file, &env) {
                Ok(()) => {
                    tracing::info!(path = %self.opts.subnet_file.display(), ip_masq = installed, "rewrote subnet file")
                }
                Err(e) => {
                    // The file still says the old state: retried next resync.
                    self.masq_installed = before;
                    tracing::warn!(error = %e, "cannot rewrite the subnet file");
                }
            }
        }
    }
}
