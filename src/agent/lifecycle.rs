//! The agent's lifecycle as named state: the node's lease, the lease watch,
//! and the pending reconcile pass. Each is a plain value advanced by one
//! `step` function that returns what to do next; the agent's loop performs
//! those actions and feeds their results back. No I/O here: time comes in
//! as `now`.

use std::time::Duration;

use subnet_allocator::{Backoff, Lease, LeaseEvent, StoreError};
use tokio::time::Instant;

/// Where the node's lease stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeasePhase {
    /// Held; the next renewal is due at `renew_at`.
    Held { renew_at: Instant },
    /// A renewal is in flight.
    Renewing,
    /// Expired, revoked, deleted or taken: a re-acquire is due at
    /// `retry_at`. The data path stays as it is meanwhile.
    Lost { retry_at: Instant },
    /// A re-acquire is in flight.
    Reacquiring,
}

impl LeasePhase {
    /// A short name for logs and status.
    pub fn name(&self) -> &'static str {
        match self {
            LeasePhase::Held { .. } => "held",
            LeasePhase::Renewing => "renewing",
            LeasePhase::Lost { .. } => "lost",
            LeasePhase::Reacquiring => "reacquiring",
        }
    }
}

/// What happened to the lease.
#[derive(Debug)]
pub enum LeaseInput {
    /// The phase's deadline passed.
    Due,
    /// The renewal in flight answered.
    Renewed(Result<Lease, StoreError>),
    /// The re-acquire in flight answered.
    Reacquired(Result<Lease, StoreError>),
    /// The watch showed our key removed or held by another node.
    LostInWatch,
    /// A re-acquired lease could not be published (devices or subnet file).
    PublishFailed,
}

/// What the agent must do for the lease.
#[derive(Debug, PartialEq, Eq)]
pub enum LeaseAction {
    Nothing,
    /// Start renewing `LeaseState::lease`.
    Renew,
    /// Start re-acquiring, preferring `LeaseState::lease`'s subnet.
    Reacquire,
    /// A renewal succeeded.
    Renewed,
    /// A renewal failed for a reason other than the lease being gone; it is
    /// retried at the new deadline.
    RenewFailed,
    /// A (re-acquired) lease must be published: subnet file, devices and
    /// the lease map. `moved` when it is not the subnet we had.
    Publish {
        moved: bool,
    },
    /// Re-acquiring failed; retried at the new deadline.
    ReacquireFailed,
}

/// The node's lease and where it stands.
#[derive(Debug)]
pub struct LeaseState {
    pub lease: Lease,
    pub phase: LeasePhase,
    renew_every: Duration,
    /// Between failed renewals: a tenth of the renewal period, 1 s to 10 s,
    /// so several tries fit before the lease runs out.
    renew_backoff: Backoff,
    /// Between failed re-acquires: the store's standard policy.
    reacquire_backoff: Backoff,
}

/// Wait after a re-acquire that failed for good (no free subnet, the
/// devices or the subnet file could not be written): an operator has to act,
/// so try again at a steady pace.
pub const REACQUIRE_FINAL_RETRY: Duration = Duration::from_secs(5);

impl LeaseState {
    /// A lease just acquired: renewed a third of `ttl` from `now`.
    pub fn held(lease: Lease, ttl: Duration, now: Instant) -> Self {
        let renew_every = ttl / 3;
        let wait = (renew_every / 10).clamp(Duration::from_secs(1), Duration::from_secs(10));
        LeaseState {
            lease,
            phase: LeasePhase::Held {
                renew_at: now + renew_every,
            },
            renew_every,
            renew_backoff: Backoff::new(wait, wait),
            reacquire_backoff: Backoff::standard(),
        }
    }

    /// When the phase needs attention without any input; `None` while a
    /// call is in flight.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            LeasePhase::Held { renew_at } => Some(renew_at),
            LeasePhase::Lost { retry_at } => Some(retry_at),
            LeasePhase::Renewing | LeasePhase::Reacquiring => None,
        }
    }

    /// True while the store holds our lease as far as we know.
    pub fn is_held(&self) -> bool {
        matches!(self.phase, LeasePhase::Held { .. } | LeasePhase::Renewing)
    }

    fn lose(&mut self) -> LeaseAction {
        self.phase = LeasePhase::Reacquiring;
        LeaseAction::Reacquire
    }

    /// The one place where the lease changes phase.
    pub fn step(&mut self, input: LeaseInput, now: Instant) -> LeaseAction {
        use LeaseInput as I;
        use LeasePhase as P;
        match (self.phase, input) {
            (P::Held { .. }, I::Due) => {
                self.phase = P::Renewing;
                LeaseAction::Renew
            }
            (P::Lost { .. }, I::Due) => self.lose(),
            (P::Renewing, I::Renewed(Ok(lease))) => {
                self.lease = lease;
                self.renew_backoff.reset();
                self.phase = P::Held {
                    renew_at: now + self.renew_every,
                };
                LeaseAction::Renewed
            }
            (P::Renewing, I::Renewed(Err(StoreError::LeaseGone(_)))) => self.lose(),
            (P::Renewing, I::Renewed(Err(_))) => {
                self.phase = P::Held {
                    renew_at: now + self.renew_backoff.next(),
                };
                LeaseAction::RenewFailed
            }
            // Already re-acquiring or about to: nothing new to learn.
            (P::Lost { .. } | P::Reacquiring, I::LostInWatch) => LeaseAction::Nothing,
            // A renewal in flight is dropped by the caller: its answer can
            // only say what the watch already did.
            (P::Held { .. } | P::Renewing, I::LostInWatch) => self.lose(),
            (P::Reacquiring, I::Reacquired(Ok(lease))) => {
                // By key: every IPv6-only lease has the IPv4 part 0.0.0.0/0,
                // so the IPv6 subnet tells whether such a node moved.
                let moved = lease.key_name() != self.lease.key_name();
                self.lease = lease;
                self.reacquire_backoff.reset();
                self.renew_backoff.reset();
                self.phase = P::Held {
                    renew_at: now + self.renew_every,
                };
                LeaseAction::Publish { moved }
            }
            (P::Reacquiring, I::Reacquired(Err(e))) => {
                let wait = if e.is_final() {
                    REACQUIRE_FINAL_RETRY
                } else {
                    self.reacquire_backoff.next()
                };
                self.phase = P::Lost {
                    retry_at: now + wait,
                };
                LeaseAction::ReacquireFailed
            }
            (_, I::PublishFailed) => {
                self.phase = P::Lost {
                    retry_at: now + REACQUIRE_FINAL_RETRY,
                };
                LeaseAction::ReacquireFailed
            }
            // Answers that arrive in another phase are stale (the call was
            // dropped when the phase changed); deadlines are only armed in
            // the phases that have one.
            (_, I::Due | I::Renewed(_) | I::Reacquired(_)) => LeaseAction::Nothing,
        }
    }
}

/// Where the lease watch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchPhase {
    /// Opening a watch from `WatchState::revision` (call in flight).
    Opening,
    /// Receiving events after `WatchState::revision`.
    Watching,
    /// The watch failed or ended: open it again from the same revision at
    /// `at`. No event is lost: the store replays everything after it.
    Rewatch { at: Instant },
    /// Listing all leases (call in flight), after the watch revision was
    /// compacted away.
    Relisting,
    /// The relist failed: list again at `at`.
    Relist { at: Instant },
}

impl WatchPhase {
    /// A short name for logs and status.
    pub fn name(&self) -> &'static str {
        match self {
            WatchPhase::Opening => "opening",
            WatchPhase::Watching => "watching",
            WatchPhase::Rewatch { .. } => "rewatch",
            WatchPhase::Relisting => "relisting",
            WatchPhase::Relist { .. } => "relist",
        }
    }
}

/// What happened to the watch.
#[derive(Debug)]
pub enum WatchInput {
    /// The phase's deadline passed.
    Due,
    /// The watch open answered (the stream itself stays with the caller).
    Opened(Result<(), StoreError>),
    /// The stream delivered a batch up to `revision`.
    Batch { revision: i64 },
    /// The store closed the stream.
    Ended,
    /// The stream failed.
    Failed(StoreError),
    /// The relist answered with the leases at `revision`.
    Listed(Result<i64, StoreError>),
}

/// What the agent must do for the watch.
#[derive(Debug, PartialEq, Eq)]
pub enum WatchAction {
    Nothing,
    /// Open a watch after `WatchState::revision`.
    Open,
    /// List all leases.
    List,
    /// Load the listed leases (they replace the lease map), then open a
    /// watch after the list's revision.
    LoadAndOpen,
    /// Apply the batch's events.
    Apply,
    /// The watch is open again after failures: the store is back.
    Reconnected,
    /// Opening the watch (or, with `relist`, listing) failed: retried at
    /// the new deadline.
    Retry {
        relist: bool,
    },
}

/// The lease watch: the revision everything up to which is in the lease
/// map, and where the watch stands.
#[derive(Debug)]
pub struct WatchState {
    pub revision: i64,
    pub phase: WatchPhase,
    backoff: Backoff,
    /// Something failed since the watch was last open.
    troubled: bool,
}

impl WatchState {
    /// A watch to open after `revision` (the revision of the initial list).
    pub fn after(revision: i64) -> Self {
        WatchState {
            revision,
            phase: WatchPhase::Opening,
            backoff: Backoff::standard(),
            troubled: false,
        }
    }

    /// When the phase needs attention without any input.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            WatchPhase::Rewatch { at } | WatchPhase::Relist { at } => Some(at),
            _ => None,
        }
    }

    fn failed(&mut self, e: &StoreError, now: Instant) -> WatchAction {
        self.troubled = true;
        if matches!(e, StoreError::Compacted { .. } | StoreError::Reset { .. }) {
            self.phase = WatchPhase::Relisting;
            return WatchAction::List;
        }
        self.phase = WatchPhase::Rewatch {
            at: now + self.backoff.next(),
        };
        WatchAction::Retry { relist: false }
    }

    /// The one place where the watch changes phase.
    pub fn step(&mut self, input: WatchInput, now: Instant) -> WatchAction {
        use WatchInput as I;
        use WatchPhase as P;
        match (self.phase, input) {
            (P::Rewatch { .. }, I::Due) => {
                self.phase = P::Opening;
                WatchAction::Open
            }
            (P::Relist { .. }, I::Due) => {
                self.phase = P::Relisting;
                WatchAction::List
            }
            (P::Opening, I::Opened(Ok(()))) => {
                self.phase = P::Watching;
                // A store that answers again starts the next outage's
                // backoff from the beginning.
                self.backoff.reset();
                if std::mem::take(&mut self.troubled) {
                    WatchAction::Reconnected
                } else {
                    WatchAction::Nothing
                }
            }
            (P::Opening, I::Opened(Err(e))) | (P::Watching, I::Failed(e)) => self.failed(&e, now),
            (P::Watching, I::Batch { revision }) => {
                self.backoff.reset();
                self.revision = self.revision.max(revision);
                WatchAction::Apply
            }
            (P::Watching, I::Ended) => {
                self.phase = P::Opening;
                WatchAction::Open
            }
            (P::Relisting, I::Listed(Ok(revision))) => {
                self.revision = revision;
                self.phase = P::Opening;
                WatchAction::LoadAndOpen
            }
            (P::Relisting, I::Listed(Err(_))) => {
                self.troubled = true;
                self.phase = P::Relist {
                    at: now + self.backoff.next(),
                };
                WatchAction::Retry { relist: true }
            }
            _ => WatchAction::Nothing,
        }
    }
}

/// Why a reconcile pass runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// Lease events arrived: applied at once, per peer; events that arrive
    /// during a pass join the next one.
    WatchBatch,
    /// One of twill's devices changed or went away.
    LinkEvent,
    /// The kernel dropped link events: state unknown.
    EventsLost,
    /// The periodic resync (also restores the masquerade rules).
    Resync,
}

impl Trigger {
    /// How long a trigger waits for others before the pass runs, so that a
    /// burst (a device flapping) costs one pass. Lease events wait for
    /// nothing: a pass per batch costs only the peers it touches, and the
    /// batches that queue up during a pass join the next one.
    pub fn window(self) -> Duration {
        match self {
            Trigger::WatchBatch => Duration::ZERO,
            Trigger::LinkEvent | Trigger::EventsLost => Duration::from_millis(20),
            Trigger::Resync => Duration::ZERO,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Trigger::WatchBatch => "watch",
            Trigger::LinkEvent => "link",
            Trigger::EventsLost => "events-lost",
            Trigger::Resync => "resync",
        }
    }
}

/// The next reconcile pass, if one is wanted: when, and for which reasons.
#[derive(Debug, Default)]
pub struct Pending {
    due: Option<Instant>,
    /// The strongest reason so far (a resync covers everything).
    trigger: Option<Trigger>,
}

impl Pending {
    /// Asks for a pass: it runs at the earliest of the asked times.
    pub fn request(&mut self, trigger: Trigger, now: Instant) {
        let at = now + trigger.window();
        self.due = Some(self.due.map_or(at, |d| d.min(at)));
        self.trigger = self.trigger.max(Some(trigger));
    }

    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Takes the pending pass's trigger, leaving nothing pending.
    pub fn take(&mut self) -> Option<Trigger> {
        self.due = None;
        self.trigger.take()
    }
}

/// Whether `events` remove our lease or show it held by another node.
pub fn loses_own(events: &[LeaseEvent], own: &Lease) -> bool {
    // Every IPv6-only lease has the IPv4 part 0.0.0.0/0 and the PublicIP
    // 0.0.0.0: such a lease is ours by its key and its PublicIPv6.
    let v6only = own.is_ipv6_only();
    events.iter().any(|ev| match ev {
        LeaseEvent::Added(l) if v6only => {
            l.key_name() == own.key_name() && l.attrs.public_ipv6 != own.attrs.public_ipv6
        }
        LeaseEvent::Added(l) => l.subnet == own.subnet && l.attrs.public_ip != own.attrs.public_ip,
        LeaseEvent::Removed(s) => !v6only && *s == own.subnet,
        LeaseEvent::RemovedIpv6Only(s6) => v6only && own.ipv6_subnet == Some(*s6),
        LeaseEvent::Unusable {
            key, gone: false, ..
        } if v6only => *key == own.key_name(),
        LeaseEvent::Unusable { subnet, gone, .. } => !gone && *subnet == Some(own.subnet),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::Ipv4Net;
    use subnet_allocator::LeaseAttrs;

    fn lease(subnet: &str, ip: [u8; 4]) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.into(),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: None,
                backend_v6_data: None,
                node_name: None,
                public_key: None,
            },
            lease_id: Some(1),
            ttl_remaining: None,
        }
    }

    fn unreachable() -> StoreError {
        StoreError::Unreachable {
            op: "renew".into(),
            endpoints: "http://127.0.0.1:1".into(),
            reason: "connection refused".into(),
        }
    }

    const TTL: Duration = Duration::from_secs(30);

    #[test]
    fn held_lease_renews_a_third_into_its_ttl() {
        let t0 = Instant::now();
        let mut s = LeaseState::held(lease("10.244.1.0/24", [192, 0, 2, 1]), TTL, t0);
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(s.step(LeaseInput::Due, t0), LeaseAction::Renew);
        assert_eq!(s.phase, LeasePhase::Renewing);
        assert_eq!(s.deadline(), None);
        let renewed = lease("10.244.1.0/24", [192, 0, 2, 1]);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(
            s.step(LeaseInput::Renewed(Ok(renewed)), t1),
            LeaseAction::Renewed
        );
        assert_eq!(s.deadline(), Some(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn failed_renewal_retries_within_the_ttl() {
        let t0 = Instant::now();
        let mut s = LeaseState::held(lease("10.244.1.0/24", [192, 0, 2, 1]), TTL, t0);
        s.step(LeaseInput::Due, t0);
        assert_eq!(
            s.step(LeaseInput::Renewed(Err(unreachable())), t0),
            LeaseAction::RenewFailed
        );
        // A tenth of the 10 s renewal period, at least a second.
        assert_eq!(
            s.phase,
            LeasePhase::Held {
                renew_at: t0 + Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn gone_lease_is_reacquired_at_once() {
        let t0 = Instant::now();
        let mut s = LeaseState::held(lease("10.244.1.0/24", [192, 0, 2, 1]), TTL, t0);
        s.step(LeaseInput::Due, t0);
        let gone = StoreError::LeaseGone("10.244.1.0/24".parse().unwrap());
        assert_eq!(
            s.step(LeaseInput::Renewed(Err(gone)), t0),
            LeaseAction::Reacquire
        );
        assert_eq!(s.phase, LeasePhase::Reacquiring);
        assert!(!s.is_held());
    }

    #[test]
    fn reacquire_of_the_same_subnet_publishes_without_moving() {
        let t0 = Instant::now();
        let mut s = LeaseState::held(lease("10.244.1.0/24", [192, 0, 2, 1]), TTL, t0);
        assert_eq!(s.step(LeaseInput::LostInWatch, t0), LeaseAction::Reacquire);
        // A second loss report while re-acquiring changes nothing.
        assert_eq!(s.step(LeaseInput::LostInWatch, t0), LeaseAction::Nothing);
        let back = lease("10.244.1.0/24", [192, 0, 2, 1]);
        assert_eq!(
            s.step(LeaseInput::Reacquired(Ok(back)), t0),
            LeaseAction::Publish { moved: false }
        );
        assert!(s.is_held());
    }

    #[test]
    fn reacquire_of_another_subnet_says_moved() {
        let t0 = Instant::now();
        let mut s = LeaseState::held(lease("10.244.1.0/24", [192, 0, 2, 1]), TTL, t0);
        s.step(LeaseInput::LostInWatch, t0);
        let other = lease("10.244.9.0/24", [192, 0, 2, 1]);
        assert_eq!(
            s.step(LeaseInput::Reacquired(Ok(other)), t0),
            LeaseAction::Publish { moved: true }
        );
        assert_eq!(s.lease.subnet, "10.244.9.0/24".parse::<Ipv4Net>().unwrap());
    }

    #[test]
    fn reacquire_of_another_ipv6_only_subnet_says_moved() {
        let t0 = Instant::now();
        let v6only = |s6: &str| Lease {
            ipv6_subnet: Some(s6.parse().unwrap()),
            ..lease("0.0.0.0/0", [0, 0, 0, 0])
        };
        let mut s = LeaseState::held(v6only("fd00:10:244:1::/64"), TTL, t0);
        s.step(LeaseInput::LostInWatch, t0);
        assert_eq!(
            s.step(LeaseInput::Reacquired(Ok(v6only("fd00:10:244:1::/64"))), t0),
            LeaseAction::Publish { moved: false }
        );
        s.step(LeaseInput::LostInWatch, t0);
        assert_eq!(
            s.step(LeaseInput::Reacquired(Ok(v6only("fd00:10:244:9::/64"))), t0),
            LeaseAction::Publish { moved: true }
        );
    }

    #[test]
    fn failed_reacquire_is_scheduled_not_repeated_inline() {
        let t0 = Instant::now();
        let mut s = LeaseState::held(lease("10.244.1.0/24", [192, 0, 2, 1]), TTL, t0);
        s.step(LeaseInput::LostInWatch, t0);
        assert_eq!(
            s.step(LeaseInput::Reacquired(Err(unreachable())), t0),
            LeaseAction::ReacquireFailed
        );
        assert_eq!(
            s.phase,
            LeasePhase::Lost {
                retry_at: t0 + Duration::from_millis(500)
            }
        );
        // The transient backoff doubles.
        assert_eq!(s.step(LeaseInput::Due, t0), LeaseAction::Reacquire);
        s.step(LeaseInput::Reacquired(Err(unreachable())), t0);
        assert_eq!(
            s.phase,
            LeasePhase::Lost {
                retry_at: t0 + Duration::from_secs(1)
            }
        );
        // A final error waits the steady retry instead.
        s.step(LeaseInput::Due, t0);
        let full = StoreError::Alloc(subnet_allocator::AllocError::Exhausted {
            network: "10.244.0.0/16".parse().unwrap(),
            min: "10.244.0.0/24".parse().unwrap(),
            max: "10.244.255.0/24".parse().unwrap(),
            count: 256,
        });
        s.step(LeaseInput::Reacquired(Err(full)), t0);
        assert_eq!(
            s.phase,
            LeasePhase::Lost {
                retry_at: t0 + REACQUIRE_FINAL_RETRY
            }
        );
        // A stale renewal answer does not resurrect the lease.
        let stale = lease("10.244.1.0/24", [192, 0, 2, 1]);
        assert_eq!(
            s.step(LeaseInput::Renewed(Ok(stale)), t0),
            LeaseAction::Nothing
        );
        assert!(!s.is_held());
    }

    #[test]
    fn failed_publish_schedules_another_reacquire() {
        let t0 = Instant::now();
        let mut s = LeaseState::held(lease("10.244.1.0/24", [192, 0, 2, 1]), TTL, t0);
        s.step(LeaseInput::LostInWatch, t0);
        s.step(
            LeaseInput::Reacquired(Ok(lease("10.244.1.0/24", [192, 0, 2, 1]))),
            t0,
        );
        assert_eq!(
            s.step(LeaseInput::PublishFailed, t0),
            LeaseAction::ReacquireFailed
        );
        assert_eq!(s.deadline(), Some(t0 + REACQUIRE_FINAL_RETRY));
    }

    #[test]
    fn watch_batches_advance_the_revision() {
        let t0 = Instant::now();
        let mut w = WatchState::after(7);
        assert_eq!(w.step(WatchInput::Opened(Ok(())), t0), WatchAction::Nothing);
        assert_eq!(w.phase, WatchPhase::Watching);
        assert_eq!(
            w.step(WatchInput::Batch { revision: 9 }, t0),
            WatchAction::Apply
        );
        assert_eq!(w.revision, 9);
        // Never backwards.
        w.step(WatchInput::Batch { revision: 8 }, t0);
        assert_eq!(w.revision, 9);
    }

    #[test]
    fn watch_errors_rewatch_from_the_same_revision_with_backoff() {
        let t0 = Instant::now();
        let mut w = WatchState::after(7);
        w.step(WatchInput::Opened(Ok(())), t0);
        assert_eq!(
            w.step(WatchInput::Failed(unreachable()), t0),
            WatchAction::Retry { relist: false }
        );
        assert_eq!(
            w.phase,
            WatchPhase::Rewatch {
                at: t0 + Duration::from_millis(500)
            }
        );
        assert_eq!(w.step(WatchInput::Due, t0), WatchAction::Open);
        w.step(WatchInput::Opened(Err(unreachable())), t0);
        assert_eq!(
            w.phase,
            WatchPhase::Rewatch {
                at: t0 + Duration::from_secs(1)
            }
        );
        assert_eq!(w.revision, 7);
        // A stream the store closed is opened again at once.
        w.step(WatchInput::Due, t0);
        w.step(WatchInput::Opened(Ok(())), t0);
        assert_eq!(w.step(WatchInput::Ended, t0), WatchAction::Open);
        assert_eq!(w.phase, WatchPhase::Opening);
    }

    #[test]
    fn compaction_relists_then_watches_from_the_list() {
        let t0 = Instant::now();
        let mut w = WatchState::after(7);
        let compacted = StoreError::Compacted {
            compact_revision: 20,
        };
        assert_eq!(
            w.step(WatchInput::Opened(Err(compacted)), t0),
            WatchAction::List
        );
        assert_eq!(w.phase, WatchPhase::Relisting);
        assert_eq!(
            w.step(WatchInput::Listed(Err(unreachable())), t0),
            WatchAction::Retry { relist: true }
        );
        assert_eq!(w.deadline(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(w.step(WatchInput::Due, t0), WatchAction::List);
        assert_eq!(
            w.step(WatchInput::Listed(Ok(25)), t0),
            WatchAction::LoadAndOpen
        );
        assert_eq!((w.revision, w.phase), (25, WatchPhase::Opening));
        // A compaction seen on an open stream relists too.
        w.step(WatchInput::Opened(Ok(())), t0);
        let compacted = StoreError::Compacted {
            compact_revision: 30,
        };
        assert_eq!(w.step(WatchInput::Failed(compacted), t0), WatchAction::List);
    }

    #[test]
    fn pending_pass_runs_once_for_a_burst_and_keeps_the_strongest_reason() {
        let t0 = Instant::now();
        let mut p = Pending::default();
        assert_eq!(p.due(), None);
        p.request(Trigger::LinkEvent, t0);
        p.request(Trigger::WatchBatch, t0 + Duration::from_millis(5));
        // The earliest asked time wins: 5 ms (a batch is applied at once),
        // not 20 ms (link).
        assert_eq!(p.due(), Some(t0 + Duration::from_millis(5)));
        assert_eq!(p.take(), Some(Trigger::LinkEvent));
        assert_eq!((p.due(), p.take()), (None, None));
        p.request(Trigger::WatchBatch, t0);
        p.request(Trigger::Resync, t0);
        assert_eq!(p.due(), Some(t0));
        assert_eq!(p.take(), Some(Trigger::Resync));
    }

    #[test]
    fn own_lease_is_lost_when_removed_or_taken() {
        let own = lease("10.244.1.0/24", [192, 0, 2, 1]);
        let ours_again = LeaseEvent::Added(own.clone());
        assert!(!loses_own(&[ours_again], &own));
        let taken = LeaseEvent::Added(lease("10.244.1.0/24", [192, 0, 2, 2]));
        assert!(loses_own(&[taken], &own));
        assert!(loses_own(&[LeaseEvent::Removed(own.subnet)], &own));
        let garbage = LeaseEvent::Unusable {
            key: "10.244.1.0-24".into(),
            subnet: Some(own.subnet),
            gone: false,
        };
        assert!(loses_own(&[garbage], &own));
        let other = LeaseEvent::Removed("10.244.2.0/24".parse().unwrap());
        assert!(!loses_own(&[other], &own));
    }

    #[test]
    fn reopening_after_an_outage_says_so_and_starts_the_backoff_over() {
        let t0 = Instant::now();
        let mut w = WatchState::after(7);
        assert_eq!(w.step(WatchInput::Opened(Ok(())), t0), WatchAction::Nothing);
        // An outage: three failed opens, the backoff grows to 2 s.
        w.step(WatchInput::Failed(unreachable()), t0);
        for _ in 0..2 {
            w.step(WatchInput::Due, t0);
            w.step(WatchInput::Opened(Err(unreachable())), t0);
        }
        assert_eq!(w.deadline(), Some(t0 + Duration::from_secs(2)));
        w.step(WatchInput::Due, t0);
        assert_eq!(
            w.step(WatchInput::Opened(Ok(())), t0),
            WatchAction::Reconnected
        );
        // The next outage's first retry is quick again.
        w.step(WatchInput::Failed(unreachable()), t0);
        assert_eq!(w.deadline(), Some(t0 + Duration::from_millis(500)));
        w.step(WatchInput::Due, t0);
        assert_eq!(
            w.step(WatchInput::Opened(Ok(())), t0),
            WatchAction::Reconnected
        );
        // A stream that just ended is no outage.
        assert_eq!(w.step(WatchInput::Ended, t0), WatchAction::Open);
        assert_eq!(w.step(WatchInput::Opened(Ok(())), t0), WatchAction::Nothing);
    }

    #[test]
    fn a_reset_store_is_relisted_like_a_compaction() {
        let t0 = Instant::now();
        let mut w = WatchState::after(700);
        let reset = StoreError::Reset {
            reason: "etcd revision went back from 700 to 3".into(),
        };
        assert_eq!(
            w.step(WatchInput::Opened(Err(reset)), t0),
            WatchAction::List
        );
        assert_eq!(
            w.step(WatchInput::Listed(Ok(3)), t0),
            WatchAction::LoadAndOpen
        );
        assert_eq!(w.revision, 3, "watching the new store's revisions");
    }
}
