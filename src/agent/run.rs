//! The agent's loop: one `select!` over the stop signal, the store calls in
//! flight, the lease watch, link events and the timers of the named states;
//! each event goes through its state's step function and the action it
//! returns is performed here.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use std::future::Future;
use subnet_allocator::{
    acquire_lease_preferring, Lease, LeaseEvent, LeaseRequest, LeaseSnapshot, LeaseStore,
    LeaseWatch, Preferred, StoreError,
};
use tokio::time::Instant;

use super::lifecycle::{
    loses_own, LeaseAction, LeaseInput, LeasePhase, Trigger, WatchAction, WatchInput, WatchPhase,
};
use super::{Agent, AgentError};
use crate::datapath::Datapath;
use crate::kernel::{LinkSignal, UnderlayEvent};

/// At most this many watch batches already waiting are folded into one
/// pass.
const QUEUED_BATCHES: usize = 1024;

/// What the watch's store call in flight answers.
enum WatchReply {
    Opened(Result<LeaseWatch, StoreError>),
    Listed(Result<LeaseSnapshot, StoreError>),
}

/// The store calls the loop may have in flight: at most one for the lease
/// and one for the watch, polled by the loop instead of awaited, so that
/// repairs go on while etcd is slow or away.
#[derive(Default)]
struct InFlight {
    lease: Option<BoxFuture<'static, Result<Lease, StoreError>>>,
    watch: Option<BoxFuture<'static, WatchReply>>,
}

/// Resolves with `f`'s output, or never when there is no `f`.
async fn maybe<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Resolves at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_batch(
    w: &mut Option<LeaseWatch>,
) -> Result<Option<(Vec<LeaseEvent>, i64)>, StoreError> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}

async fn next_underlay_event(
    events: &mut Option<BoxStream<'static, UnderlayEvent>>,
) -> Option<UnderlayEvent> {
    match events {
        Some(e) => e.next().await,
        None => std::future::pending().await,
    }
}

async fn next_signal(links: &mut Option<BoxStream<'static, LinkSignal>>) -> Option<LinkSignal> {
    match links {
        Some(l) => l.next().await,
        None => std::future::pending().await,
    }
}

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    fn renew_call(&self) -> BoxFuture<'static, Result<Lease, StoreError>> {
        let store = self.store.clone();
        let lease = self.lease.lease.clone();
        Box::pin(async move { store.renew_lease(&lease).await })
    }

    /// The same subnet if it is still free, otherwise a new one.
    /// Our own key written again (recreated, or reclaimed from garbage);
    /// only when another node holds the subnet now, a lease anew.
    fn reacquire_call(&self) -> BoxFuture<'static, Result<Lease, StoreError>> {
        let store = self.store.clone();
        let cfg = self.cfg.clone();
        let attrs = self.plan.attrs.clone();
        let public_ip = self.underlay.ip;
        let own = self.lease.lease.clone();
        let ttl = self.opts.lease_ttl;
        Box::pin(async move {
            let (to, preferred) = if own.is_ipv6_only() {
                let to = LeaseRequest::same_key(&own, &attrs, ttl);
                (
                    to,
                    Preferred {
                        v4: None,
                        v6: own.ipv6_subnet,
                    },
                )
            } else {
                let to =
                    LeaseRequest::new(own.subnet, cfg.ipv6_subnet_for(own.subnet), &attrs, ttl);
                (
                    to,
                    Preferred {
                        v4: Some(own.subnet),
                        v6: None,
                    },
                )
            };
            match store.rewrite_lease(&own, to).await {
                Err(StoreError::NotOwner(_) | StoreError::AlreadyTaken(_)) => {
                    acquire_lease_preferring(&*store, &cfg, public_ip, &attrs, preferred, ttl).await
                }
                other => other,
            }
        })
    }

    fn open_call(&self) -> BoxFuture<'static, WatchReply> {
        let store = self.store.clone();
        let revision = self.watch.revision;
        tracing::debug!(revision, "watching leases");
        Box::pin(async move { WatchReply::Opened(store.watch_leases(revision).await) })
    }

    fn list_call(&self) -> BoxFuture<'static, WatchReply> {
        let store = self.store.clone();
        Box::pin(async move { WatchReply::Listed(store.list_leases().await) })
    }

    /// Advances the lease and performs what its step asks for.
    async fn on_lease(&mut self, input: LeaseInput, calls: &mut InFlight) {
        let old = self.lease.lease.subnet;
        let old6 = self.lease.lease.ipv6_subnet;
        let failure = match &input {
            LeaseInput::Renewed(Err(e)) | LeaseInput::Reacquired(Err(e)) => Some(e.to_string()),
            _ => None,
        };
        let was_held = self.lease.is_held();
        match self.lease.step(input, Instant::now()) {
            LeaseAction::Nothing => {}
            LeaseAction::Renew => calls.lease = Some(self.renew_call()),
            LeaseAction::Reacquire => {
                if was_held {
                    tracing::warn!(subnet = %old, subnet6 = ?old6, "our lease expired, was revoked, removed or taken in etcd; re-acquiring");
                }
                // Replaces a renewal in flight: its answer is moot now.
                calls.lease = Some(self.reacquire_call());
            }
            LeaseAction::Renewed => {
                self.opts.telemetry.lease_renewals.inc();
                tracing::debug!(subnet = %self.lease.lease.subnet, "renewed lease");
            }
            LeaseAction::RenewFailed => {
                self.opts.telemetry.count_etcd_error("renew");
                let retry_in = self.lease.deadline().map(|d| d - Instant::now());
                tracing::warn!(
                    error = failure.as_deref().unwrap_or("?"),
                    ?retry_in,
                    "renewing the lease failed"
                );
            }
            LeaseAction::Publish { moved } => {
                let lease = self.lease.lease.clone();
                if moved {
                    tracing::error!(old = %old, new = %lease.subnet, public_ip = %self.underlay.ip,
                        old6 = ?old6, new6 = ?lease.ipv6_subnet, public_ipv6 = ?lease.attrs.public_ipv6,
                        "our subnet now belongs to another node; moved to a new subnet: pods on the old subnet must be restarted");
                } else {
                    tracing::info!(subnet = %old, subnet6 = ?old6, "re-acquired our lease");
                }
                self.insert_lease(lease);
                if let Err(e) = self.publish().await {
                    self.lease.step(LeaseInput::PublishFailed, Instant::now());
                    self.lease_retry_log(&e.to_string());
                }
                self.pending.request(Trigger::WatchBatch, Instant::now());
            }
            LeaseAction::ReacquireFailed => {
                self.opts.telemetry.count_etcd_error("re-acquire");
                self.lease_retry_log(failure.as_deref().unwrap_or("?"));
            }
        }
    }

    fn lease_retry_log(&self, error: &str) {
        let retry_in = self.lease.deadline().map(|d| d - Instant::now());
        tracing::error!(error, subnet = %self.lease.lease.subnet, public_ip = %self.underlay.ip,
            subnet6 = ?self.lease.lease.ipv6_subnet, ?retry_in,
            "cannot re-acquire a lease; the data path stays as it is meanwhile");
    }

    /// Advances the watch and performs what its step asks for.
    async fn on_watch(&mut self, input: WatchInput, calls: &mut InFlight) {
        let failure = match &input {
            WatchInput::Opened(Err(e)) | WatchInput::Failed(e) | WatchInput::Listed(Err(e)) => {
                Some(e.to_string())
            }
            WatchInput::Ended => Some("the store closed the stream".to_string()),
            _ => None,
        };
        let compacted = matches!(
            &input,
            WatchInput::Opened(Err(StoreError::Compacted { .. }))
                | WatchInput::Failed(StoreError::Compacted { .. })
        );
        let reset = matches!(
            &input,
            WatchInput::Opened(Err(StoreError::Reset { .. }))
                | WatchInput::Failed(StoreError::Reset { .. })
        );
        match self.watch.step(input, Instant::now()) {
            WatchAction::Nothing | WatchAction::Apply | WatchAction::LoadAndOpen => {}
            WatchAction::Reconnected => {
                tracing::info!(
                    revision = self.watch.revision,
                    "reconnected to etcd; watching leases again"
                );
            }
            WatchAction::Open => {
                if let Some(why) = failure {
                    tracing::warn!(error = why, "lease watch ended; re-watching");
                }
                calls.watch = Some(self.open_call());
            }
            WatchAction::List => {
                if reset {
                    tracing::error!(error = failure.as_deref().unwrap_or("?"), subnet = %self.lease.lease.subnet,
                        "etcd lost or rolled back its data; relisting and writing this node's lease again");
                    self.set_resetting(true);
                } else if compacted {
                    tracing::warn!(
                        revision = self.watch.revision,
                        "watch revision compacted; relisting"
                    );
                }
                calls.watch = Some(self.list_call());
            }
            WatchAction::Retry { relist } => {
                let retry_in = self.watch.deadline().map(|d| d - Instant::now());
                let error = failure.as_deref().unwrap_or("?");
                if relist {
                    tracing::warn!(error, ?retry_in, "relisting leases failed");
                } else {
                    self.opts.telemetry.count_etcd_error("watch");
                    tracing::warn!(error, ?retry_in, "lease watch failed");
                }
            }
        }
    }

    async fn on_watch_reply(
        &mut self,
        reply: WatchReply,
        stream: &mut Option<LeaseWatch>,
        calls: &mut InFlight,
    ) {
        match reply {
            WatchReply::Opened(Ok(w)) => {
                self.on_watch(WatchInput::Opened(Ok(())), calls).await;
                if self.watch.phase == WatchPhase::Watching {
                    *stream = Some(w);
                }
            }
            WatchReply::Opened(Err(e)) => self.on_watch(WatchInput::Opened(Err(e)), calls).await,
            WatchReply::Listed(Ok(snap)) => {
                let revision = snap.revision;
                self.on_watch(WatchInput::Listed(Ok(revision)), calls).await;
                if self.watch.phase == WatchPhase::Opening {
                    // Our lease must be in any complete list: when it is not
                    // (etcd lost it, or it expired while we were not
                    // watching), write it again at once.
                    let own = self.lease.lease.clone();
                    let listed = snap.leases.iter().any(|l| super::v6only::is_own(l, &own));
                    self.load(snap);
                    if !listed {
                        tracing::warn!(subnet = %own.subnet, "our lease is missing from the lease list");
                        self.on_lease(LeaseInput::LostInWatch, calls).await;
                    }
                    if let Err(e) = self.reconcile(Trigger::Resync).await {
                        tracing::warn!(error = %e, "reconcile failed");
                    }
                    calls.watch = Some(self.open_call());
                }
            }
            WatchReply::Listed(Err(e)) => self.on_watch(WatchInput::Listed(Err(e)), calls).await,
        }
    }

    async fn on_batch(
        &mut self,
        next: Result<Option<(Vec<LeaseEvent>, i64)>, StoreError>,
        stream: &mut Option<LeaseWatch>,
        calls: &mut InFlight,
    ) {
        let (events, revision) = match next {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                *stream = None;
                return self.on_watch(WatchInput::Ended, calls).await;
            }
            Err(e) => {
                *stream = None;
                return self.on_watch(WatchInput::Failed(e), calls).await;
            }
        };
        if self
            .watch
            .step(WatchInput::Batch { revision }, Instant::now())
            != WatchAction::Apply
        {
            return;
        }
        let lost = loses_own(&events, &self.lease.lease);
        self.apply_events(events);
        if lost {
            self.on_lease(LeaseInput::LostInWatch, calls).await;
        }
        self.pending.request(Trigger::WatchBatch, Instant::now());
    }

    /// Writes our lease again, same subnet, with the public IP the
    /// underlay has now; replaces a re-acquire in flight, which carries the
    /// old one.
    fn rewrite_own_lease(&mut self, calls: &mut InFlight) {
        tracing::info!(subnet = %self.lease.lease.subnet, public_ip = %self.underlay.ip,
            subnet6 = ?self.lease.lease.ipv6_subnet, public_ipv6 = ?self.plan.attrs.public_ipv6,
            "writing our lease again with the new public IP");
        let action = self.lease.step(LeaseInput::LostInWatch, Instant::now());
        if action == LeaseAction::Reacquire || self.lease.phase == LeasePhase::Reacquiring {
            // Our connections to etcd came from the old address: they are
            // dead, but keep-alive would take many seconds to say so.
            let store = self.store.clone();
            let rewrite = self.reacquire_call();
            calls.lease = Some(Box::pin(async move {
                if let Err(e) = store.reconnect().await {
                    tracing::warn!(error = %e, "cannot reconnect to etcd from the new address");
                }
                rewrite.await
            }));
        }
    }

    async fn run_pass(&mut self, trigger: Trigger) {
        // Nothing to build on while the underlay is missing; a pass that
        // an underlay event raced looks at the underlay first.
        if !self.underlay_ready(trigger == Trigger::Resync).await {
            return;
        }
        if let Err(e) = self.reconcile(trigger).await {
            tracing::warn!(error = %e, trigger = trigger.name(), "reconcile failed");
        }
        if trigger == Trigger::Resync {
            self.ensure_masq().await;
            self.check_guard().await;
        }
    }

    /// Runs until `stop` fires. The data path is left in place on exit;
    /// store calls in flight are dropped.
    pub async fn run(
        mut self,
        mut stop: impl Future<Output = ()> + Unpin,
    ) -> Result<(), AgentError> {
        let mut calls = InFlight {
            lease: None,
            watch: Some(self.open_call()),
        };
        let mut stream: Option<LeaseWatch> = None;
        let mut resync = tokio::time::interval(self.opts.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut links = match self.dp.link_signals(self.devices().names()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch link events; relying on the periodic resync");
                None
            }
        };
        let mut underlay_events = match self.dp.underlay_events() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the underlay's link and address events; relying on the periodic resync");
                None
            }
        };
        loop {
            if self.follow.take_rewrite() {
                self.rewrite_own_lease(&mut calls);
            }
            self.settle();
            self.publish_status();
            let lease_due = self.lease.deadline();
            let watch_due = self.watch.deadline();
            let pass_due = self.pending.due();
            tokio::select! {
                _ = &mut stop => {
                    tracing::info!(lease = self.lease.phase.name(), watch = self.watch.phase.name(), "stopping; data path left in place");
                    return Ok(());
                }
                r = maybe(&mut calls.lease) => {
                    calls.lease = None;
                    let input = match self.lease.phase {
                        LeasePhase::Reacquiring => LeaseInput::Reacquired(r),
                        _ => LeaseInput::Renewed(r),
                    };
                    self.on_lease(input, &mut calls).await;
                }
                _ = until(lease_due) => self.on_lease(LeaseInput::Due, &mut calls).await,
                reply = maybe(&mut calls.watch) => {
                    calls.watch = None;
                    self.on_watch_reply(reply, &mut stream, &mut calls).await;
                }
                next = next_batch(&mut stream) => {
                    self.on_batch(next, &mut stream, &mut calls).await;
                    // Batches that queued up meanwhile join this pass (a
                    // bounded number, so that a flood still lets the loop
                    // stop, renew and repair in between).
                    for _ in 0..QUEUED_BATCHES {
                        let Some(more) = stream.as_mut().and_then(|w| w.next().now_or_never()) else {
                            break;
                        };
                        self.on_batch(more, &mut stream, &mut calls).await;
                    }
                }
                _ = until(watch_due) => self.on_watch(WatchInput::Due, &mut calls).await,
                signal = next_signal(&mut links) => match signal {
                    None => {
                        tracing::warn!("link event socket closed; relying on the periodic resync");
                        links = None;
                    }
                    Some(LinkSignal::Lost) => {
                        self.opts.telemetry.netlink_events_lost.inc();
                        tracing::warn!("netlink link events were lost; full resync");
                        self.pending.request(Trigger::EventsLost, Instant::now());
                    }
                    Some(_) => self.pending.request(Trigger::LinkEvent, Instant::now()),
                },
                ev = next_underlay_event(&mut underlay_events) => match ev {
                    Some(ev) => self.on_underlay_event(ev),
                    None => {
                        tracing::warn!("underlay event socket closed; relying on the periodic resync");
                        underlay_events = None;
                    }
                },
                _ = until(self.follow.due) => self.on_underlay_due().await,
                _ = until(pass_due) => {
                    if let Some(trigger) = self.pending.take() {
                        self.run_pass(trigger).await;
                    }
                }
                _ = resync.tick() => {
                    self.pending.take();
                    self.run_pass(Trigger::Resync).await;
                }
            }
        }
    }
}
