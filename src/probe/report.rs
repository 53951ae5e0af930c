//! How the prober's findings reach the outside: the gauges
//! `twill_peer_reachable`, `twill_peer_mtu_ok` and `twill_peer_rtt_seconds`
//! (labels `public_ip` and `subnet`; a departed peer's series are removed),
//! and the JSON behind `GET /peers`.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::UNIX_EPOCH;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::state::PeerState;
use super::Target;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub public_ip: String,
    pub subnet: String,
}

impl From<&Target> for PeerLabels {
    fn from(t: &Target) -> Self {
        PeerLabels {
            public_ip: t.public_ip.to_string(),
            subnet: t.subnet.to_string(),
        }
    }
}

/// One peer in `/peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerReport {
    pub subnet: String,
    pub public_ip: String,
    /// `null` until the first verdict.
    pub reachable: Option<bool>,
    /// Whether a packet of the pod MTU with don't-fragment gets through;
    /// `false` while unreachable, `null` until the first verdict.
    pub mtu_ok: Option<bool>,
    /// Round-trip time of the last answered small probe.
    pub rtt_seconds: Option<f64>,
    /// Unix time of the last answered small probe.
    pub last_success: Option<f64>,
    /// Why the last failed probe failed.
    pub last_failure: Option<String>,
    /// Probe rounds this peer took part in.
    pub rounds: u64,
}

/// The body of `/peers`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PeersView {
    /// Whether the prober runs (it needs a raw ICMP socket).
    pub probing: bool,
    pub interval_seconds: f64,
    /// Size of the full-size probe: the pod MTU.
    pub mtu: u32,
    /// Most peers probed per interval.
    pub per_round: usize,
    pub peers: Vec<PeerReport>,
}

impl From<&PeerState> for PeerReport {
    fn from(p: &PeerState) -> Self {
        PeerReport {
            subnet: p.target.subnet.to_string(),
            public_ip: p.target.public_ip.to_string(),
            reachable: p.reachable,
            mtu_ok: p.mtu_ok_now(),
            rtt_seconds: p.rtt.map(|d| d.as_secs_f64()),
            last_success: p
                .last_success
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64()),
            last_failure: p.last_failure.clone(),
            rounds: p.rounds,
        }
    }
}

/// The per-peer gauges and the `/peers` view, shared by the prober and
/// the HTTP endpoint.
#[derive(Debug, Default)]
pub struct PeerHealth {
    reachable: Family<PeerLabels, Gauge>,
    mtu_ok: Family<PeerLabels, Gauge>,
    rtt: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    view: Mutex<PeersView>,
}

impl PeerHealth {
    /// Registers the gauges under `registry`'s prefix (`twill_`).
    pub fn register(registry: &mut Registry) -> Self {
        let h = PeerHealth::default();
        registry.register(
            "peer_reachable",
            "1 while small probes through the overlay reach the peer, 0 when lost",
            h.reachable.clone(),
        );
        registry.register(
            "peer_mtu_ok",
            "1 while probes of the pod MTU with don't-fragment reach the peer, 0 otherwise",
            h.mtu_ok.clone(),
        );
        registry.register(
            "peer_rtt_seconds",
            "Round-trip time of the last answered probe to the peer",
            h.rtt.clone(),
        );
        h
    }

    /// Sets the gauges of `peers` (those with a verdict).
    pub fn set_gauges<'a>(&self, peers: impl IntoIterator<Item = &'a PeerState>) {
        for p in peers {
            let l = PeerLabels::from(&p.target);
            if let Some(r) = p.reachable {
                self.reachable.get_or_create(&l).set(i64::from(r));
            }
            if let Some(m) = p.mtu_ok_now() {
                self.mtu_ok.get_or_create(&l).set(i64::from(m));
            }
            if let Some(rtt) = p.rtt {
                self.rtt.get_or_create(&l).set(rtt.as_secs_f64());
            }
        }
    }

    /// Replaces the `/peers` view with `view` listing `peers`.
    pub fn set_view(&self, peers: &[PeerState], mut view: PeersView) {
        view.peers = peers.iter().map(PeerReport::from).collect();
        if let Ok(mut v) = self.view.lock() {
            *v = view;
        }
    }

    /// Removes a departed peer's series.
    pub fn forget(&self, t: &Target) {
        let l = PeerLabels::from(t);
        self.reachable.remove(&l);
        self.mtu_ok.remove(&l);
        self.rtt.remove(&l);
    }

    /// The `/peers` body.
    pub fn json(&self) -> String {
        let view = self.view.lock().map(|v| v.clone()).unwrap_or_default();
        serde_json::to_string(&view).unwrap_or_else(|_| "{}".into())
    }
}
