//! The agent's wireguard hooks: the node's key at start, the tunnel's
//! peers on every reconcile pass (the same level-triggered pass as the
//! routes: a peer removed by hand, a changed key or a departed node is put
//! right on the next one).

use std::path::Path;

use subnet_allocator::{BackendType, Lease, LeaseStore, NetworkConfig};

use super::plan::Plan;
use super::{Agent, AgentError};
use crate::datapath::Datapath;
use crate::kernel::KernelError;
use crate::reconcile::RemoteNode;
use crate::wireguard::peers::desired_peers;
use crate::wireguard::uapi::PeerChange;
use crate::wireguard::WgSpec;

/// In wireguard mode, reads or makes the node's key (in `dir`), puts its
/// public half in the lease attributes and the device in the plan.
pub(super) fn prepare(cfg: &NetworkConfig, plan: &mut Plan, dir: &Path) -> Result<(), AgentError> {
    if cfg.backend.kind != BackendType::Wireguard {
        return Ok(());
    }
    let ipv6_underlay = plan.attrs.public_ipv6.is_some();
    let spec = WgSpec::load(cfg, plan.pod_mtu, dir, ipv6_underlay).map_err(KernelError::from)?;
    plan.attrs.public_key = Some(spec.key.public().to_base64());
    tracing::info!(device = %spec.name, listen_port = spec.listen_port, mtu = spec.mtu, "wireguard tunnel");
    plan.wireguard = Some(spec);
    Ok(())
}

/// Logs each change made to the tunnel's peers, naming the node whose
/// lease (the first of `leases` with its key) asked for it.
pub(super) fn log_changes<'a, I: Iterator<Item = &'a Lease>>(
    changes: &[PeerChange],
    leases: impl Fn() -> I,
) {
    for c in changes {
        let key = c.key().to_base64();
        let node = leases().find(|l| l.attrs.public_key.as_deref() == Some(key.as_str()));
        let subnet = node
            .map(|l| l.subnet.to_string())
            .unwrap_or_else(|| "?".into());
        let public_ip = node
            .map(|l| l.attrs.public_ip.to_string())
            .unwrap_or_else(|| "?".into());
        match c {
            PeerChange::Remove(k) => {
                tracing::info!(public_key = %k, subnet, public_ip, "removed wireguard peer")
            }
            PeerChange::Set(p) => {
                tracing::info!(public_key = %p.public_key, endpoint = ?p.endpoint, allowed_ips = ?p.allowed_ips, subnet, public_ip, "set wireguard peer")
            }
        }
    }
}

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// Brings the tunnel's peers to what `nodes` (this pass's accepted
    /// remote nodes) say; returns (changes made, changes that failed).
    pub(super) async fn sync_wireguard(&mut self, nodes: &[RemoteNode]) -> (usize, usize) {
        let Some(spec) = self.plan.wireguard.clone() else {
            return (0, 0);
        };
        let desired = desired_peers(
            nodes,
            &self.leases,
            spec.listen_port,
            spec.keepalive,
            spec.ipv6_underlay,
        );
        match self.dp.sync_peers(&spec, &desired).await {
            Ok(changes) => {
                log_changes(&changes, || self.seen.values());
                (changes.len(), 0)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot bring the wireguard peers in step");
                (1, 1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_key_file_is_a_configuration_error() {
        let e = AgentError::Kernel(KernelError::Wireguard(crate::wireguard::WgError::Key {
            path: "/var/lib/twill/wireguard.key".into(),
            reason: "does not hold a base64 WireGuard private key".into(),
        }));
        assert!(e.is_config(), "exits 2, not retried");
        assert!(e.to_string().contains("--wireguard-dir"), "{e}");
        let helper = AgentError::Kernel(KernelError::Wireguard(crate::wireguard::WgError::Helper(
            "gone".into(),
        )));
        assert!(!helper.is_config(), "trouble that passes: retried");
    }
}
