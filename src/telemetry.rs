//! What the agent tells the outside: Prometheus metrics for `/metrics` and
//! the readiness flags behind `/readyz`. Shared between the agent loop and
//! the HTTP endpoint through an `Arc`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EtcdLabels {
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FilterLabels {
    pub filter: String,
}

/// The agent's metrics and readiness state.
pub struct Telemetry {
    registry: Registry,
    pub leases: Gauge,
    pub reconcile_runs: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_seconds: Histogram,
    pub netlink_ops: Family<OpLabels, Counter>,
    pub etcd_errors: Family<EtcdLabels, Counter>,
    pub lease_renewals: Counter,
    pub store_resets: Counter,
    pub skipped_leases: Gauge,
    pub last_converged: Gauge<f64, AtomicU64>,
    lease_held: AtomicBool,
    subnet_file_written: AtomicBool,
    converged: AtomicBool,
    masq_failed: AtomicBool,
    store_reset: AtomicBool,
    underlay_missing: AtomicBool,
    public_ip_mismatch: AtomicBool,
    /// Per-peer overlay health (`twill_peer_*`, `/peers`), from src/probe.
    pub peer_health: crate::probe::PeerHealth,
    /// Passes that applied watch events as a per-peer delta, without
    /// reading the kernel back (a subset of `reconcile_runs`).
    pub delta_passes: Counter,
    /// Times the kernel dropped netlink events (ENOBUFS): each one causes a
    /// full resync.
    pub netlink_events_lost: Counter,
    /// Packets the isolation filters dropped, by filter.
    pub guard_drops: Family<FilterLabels, Counter>,
    /// The kernel's counts as last read, to add only what is new.
    guard_seen: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("not_ready", &self.not_ready_reason())
            .finish_non_exhaustive()
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("twill");
        let leases = Gauge::default();
        registry.register("leases", "Subnet leases known from etcd", leases.clone());
        let reconcile_runs = Counter::default();
        registry.register(
            "reconcile_runs",
            "Reconcile passes run",
            reconcile_runs.clone(),
        );
        let reconcile_errors = Counter::default();
        registry.register(
            "reconcile_errors",
            "Reconcile passes that did not converge",
            reconcile_errors.clone(),
        );
        let reconcile_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile pass (read kernel, diff, apply)",
            reconcile_seconds.clone(),
        );
        let netlink_ops = Family::<OpLabels, Counter>::default();
        registry.register(
            "netlink_operations",
            "Netlink changes issued, by kind and result",
            netlink_ops.clone(),
        );
        let etcd_errors = Family::<EtcdLabels, Counter>::default();
        registry.register(
            "etcd_errors",
            "Failed etcd calls, by call",
            etcd_errors.clone(),
        );
        let store_resets = Counter::default();
        registry.register(
            "store_resets",
            "Times etcd was found to have lost or rolled back its data",
            store_resets.clone(),
        );
        let lease_renewals = Counter::default();
        registry.register(
            "lease_renewals",
            "Successful lease renewals",
            lease_renewals.clone(),
        );
        let skipped_leases = Gauge::default();
        registry.register(
            "skipped_leases",
            "Leases left out of the data path as malformed or conflicting",
            skipped_leases.clone(),
        );
        let last_converged = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "last_convergence_timestamp_seconds",
            "Unix time of the last reconcile that left the kernel converged",
            last_converged.clone(),
        );
        let peer_health = crate::probe::PeerHealth::register(&mut registry);
        let delta_passes = Counter::default();
        registry.register(
            "reconcile_delta_runs",
            "Reconcile passes that applied lease events per peer, without reading the kernel",
            delta_passes.clone(),
        );
        let netlink_events_lost = Counter::default();
        registry.register(
            "netlink_events_lost",
            "Times the kernel dropped netlink events (ENOBUFS); each causes a full resync",
            netlink_events_lost.clone(),
        );
        let guard_drops = Family::<FilterLabels, Counter>::default();
        registry.register(
            "guard_dropped_packets",
            "Packets dropped by the isolation filters (tunnel members, pod source checks), by filter",
            guard_drops.clone(),
        );
        for filter in twill_nft::guard::FILTERS {
            let _ = guard_drops
                .get_or_create(&FilterLabels {
                    filter: filter.to_string(),
                })
                .get();
        }
        Telemetry {
            registry,
            leases,
            reconcile_runs,
            reconcile_errors,
            reconcile_seconds,
            netlink_ops,
            etcd_errors,
            lease_renewals,
            store_resets,
            skipped_leases,
            last_converged,
            lease_held: AtomicBool::new(false),
            subnet_file_written: AtomicBool::new(false),
            converged: AtomicBool::new(false),
            masq_failed: AtomicBool::new(false),
            store_reset: AtomicBool::new(false),
            underlay_missing: AtomicBool::new(false),
            public_ip_mismatch: AtomicBool::new(false),
            peer_health,
            delta_passes,
            netlink_events_lost,
            guard_drops,
            guard_seen: Default::default(),
        }
    }

    /// Takes in a filter's drop count as the kernel has it: the counter
    /// grows by what is new (all of it after the kernel's count restarted,
    /// with a table rebuilt).
    pub fn record_guard_drops(&self, filter: &str, packets: u64) {
        let mut seen = self
            .guard_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = seen.insert(filter.to_string(), packets).unwrap_or(0);
        let new = if packets >= before {
            packets - before
        } else {
            packets
        };
        self.guard_drops
            .get_or_create(&FilterLabels {
                filter: filter.to_string(),
            })
            .inc_by(new);
    }

    pub fn count_op(&self, op: &str, ok: bool) {
        self.netlink_ops
            .get_or_create(&OpLabels {
                op: op.to_string(),
                result: if ok { "ok" } else { "error" }.to_string(),
            })
            .inc();
    }

    pub fn count_etcd_error(&self, call: &str) {
        self.etcd_errors
            .get_or_create(&EtcdLabels {
                call: call.to_string(),
            })
            .inc();
    }

    pub fn set_lease_held(&self, v: bool) {
        self.lease_held.store(v, Ordering::Relaxed);
    }

    /// Set while the agent recovers from etcd losing or rolling back its
    /// data, until this node's lease is back and the watch resumed.
    pub fn set_store_reset(&self, v: bool) {
        self.store_reset.store(v, Ordering::Relaxed);
    }

    pub fn set_subnet_file_written(&self, v: bool) {
        self.subnet_file_written.store(v, Ordering::Relaxed);
    }

    /// Records the outcome of a reconcile pass.
    pub fn set_converged(&self, v: bool) {
        self.converged.store(v, Ordering::Relaxed);
        if v {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.last_converged.set(now);
        }
    }

    /// Records whether `--ip-masq`'s rules could be installed.
    pub fn set_masq_failed(&self, v: bool) {
        self.masq_failed.store(v, Ordering::Relaxed);
    }

    /// Set while the underlay interface is gone or has no address.
    pub fn set_underlay_missing(&self, v: bool) {
        self.underlay_missing.store(v, Ordering::Relaxed);
    }

    /// Set while the underlay interface does not hold `--public-ip`.
    pub fn set_public_ip_mismatch(&self, v: bool) {
        self.public_ip_mismatch.store(v, Ordering::Relaxed);
    }

    /// `None` when ready, else what is missing.
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if !self.lease_held.load(Ordering::Relaxed) {
            Some("no subnet lease yet")
        } else if self.store_reset.load(Ordering::Relaxed) {
            Some("etcd lost or rolled back its data: re-creating this node's lease")
        } else if self.underlay_missing.load(Ordering::Relaxed) {
            Some("underlay interface gone or without an address: waiting for it (see the log)")
        } else if self.public_ip_mismatch.load(Ordering::Relaxed) {
            Some("the underlay interface no longer holds --public-ip (see the log)")
        } else if !self.subnet_file_written.load(Ordering::Relaxed) {
            Some("subnet file not written")
        } else if self.masq_failed.load(Ordering::Relaxed) {
            Some("ip-masq rules cannot be installed (see the log)")
        } else if !self.converged.load(Ordering::Relaxed) {
            Some("data path not converged")
        } else {
            None
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_lease_file_and_convergence_in_that_order() {
        let t = Telemetry::new();
        assert_eq!(t.not_ready_reason(), Some("no subnet lease yet"));
        t.set_lease_held(true);
        assert_eq!(t.not_ready_reason(), Some("subnet file not written"));
        t.set_subnet_file_written(true);
        assert_eq!(t.not_ready_reason(), Some("data path not converged"));
        t.set_converged(true);
        assert_eq!(t.not_ready_reason(), None);
        t.set_converged(false);
        assert!(t.not_ready_reason().is_some());
    }

    #[test]
    fn a_missing_underlay_or_a_lost_public_ip_makes_the_node_unready() {
        let t = Telemetry::new();
        t.set_lease_held(true);
        t.set_subnet_file_written(true);
        t.set_converged(true);
        assert_eq!(t.not_ready_reason(), None);
        t.set_public_ip_mismatch(true);
        assert!(t
            .not_ready_reason()
            .is_some_and(|w| w.contains("--public-ip")));
        // The missing interface says more, and comes first.
        t.set_underlay_missing(true);
        assert!(t
            .not_ready_reason()
            .is_some_and(|w| w.starts_with("underlay interface gone")));
        t.set_underlay_missing(false);
        t.set_public_ip_mismatch(false);
        assert_eq!(t.not_ready_reason(), None);
    }

    #[test]
    fn guard_drops_grow_by_what_the_kernel_counted_since() {
        let t = Telemetry::new();
        let before = t.encode();
        assert!(
            before.contains("twill_guard_dropped_packets_total{filter=\"tunnel\"} 0"),
            "{before}"
        );
        t.record_guard_drops("tunnel", 5);
        t.record_guard_drops("tunnel", 7);
        // The table was rebuilt: its count started again.
        t.record_guard_drops("tunnel", 2);
        let text = t.encode();
        assert!(
            text.contains("twill_guard_dropped_packets_total{filter=\"tunnel\"} 9"),
            "{text}"
        );
    }

    #[test]
    fn failed_ip_masq_rules_make_the_node_unready() {
        let t = Telemetry::new();
        t.set_lease_held(true);
        t.set_subnet_file_written(true);
        t.set_converged(true);
        t.set_masq_failed(true);
        assert_eq!(
            t.not_ready_reason(),
            Some("ip-masq rules cannot be installed (see the log)")
        );
        t.set_masq_failed(false);
        assert_eq!(t.not_ready_reason(), None);
    }

    #[test]
    fn metrics_are_exposed_in_text_format() {
        let t = Telemetry::new();
        t.leases.set(3);
        t.count_op("set route", true);
        t.count_op("set route", true);
        t.count_etcd_error("watch");
        t.reconcile_seconds.observe(0.002);
        let text = t.encode();
        assert!(text.contains("twill_leases 3"), "{text}");
        assert!(
            text.contains("twill_netlink_operations_total{op=\"set route\",result=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("twill_etcd_errors_total{call=\"watch\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("twill_reconcile_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
