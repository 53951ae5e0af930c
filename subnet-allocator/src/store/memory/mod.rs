//! In-memory lease store with etcd's semantics (revisions, store leases
//! with TTLs on tokio's clock, create-if-absent, ordered watches,
//! compaction), plus the fault injection tests need: outages, compaction,
//! expiry, another node's writes, and a count of every call made.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipnet::Ipv4Net;
use tokio::sync::watch;
use tokio::time::Instant;

use super::etcd::DEFAULT_PREFIX;
use super::{
    check_deletable, decode_change, LeaseEvent, LeaseRequest, LeaseSnapshot, LeaseStore,
    LeaseWatch, StoreError, WatchBatch,
};
use crate::config::NetworkConfig;
use crate::lease::Lease;
use state::State;

mod state;

/// What `StoreError::Unreachable` names as the endpoint of this store.
const ENDPOINT: &str = "memory";

/// [`LeaseStore`] in memory. Clones share one state, as two handles on one
/// etcd cluster do; changes made through the fault-injection methods are
/// neither counted nor refused while the store is down.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every change, so waiting watches look again.
    changed: watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("MemoryStore")
            .field("up", &s.up)
            .field("revision", &s.revision)
            .field("keys", &s.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn unreachable(op: &str) -> StoreError {
    StoreError::Unreachable {
        op: op.to_string(),
        endpoints: ENDPOINT.to_string(),
        reason: "the in-memory store is set unavailable".to_string(),
    }
}

impl MemoryStore {
    /// An empty store, up, without network config.
    pub fn new() -> Self {
        MemoryStore {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new()),
                changed: watch::channel(0).0,
            }),
        }
    }

    /// An empty store holding `cfg` as its network config.
    pub fn with_config(cfg: NetworkConfig) -> Self {
        let store = MemoryStore::new();
        store.set_config(&cfg);
        store
    }

    /// The key [`StoreError::NoConfig`] and [`StoreError::BadConfig`] name.
    pub fn config_key(&self) -> String {
        format!("{DEFAULT_PREFIX}/config")
    }

    /// Replaces the network config.
    pub fn set_config(&self, cfg: &NetworkConfig) {
        self.set_raw_config(&cfg.to_json());
    }

    /// Stores `raw` verbatim as the network config, valid or not.
    pub fn set_raw_config(&self, raw: &str) {
        self.inspect(|s| {
            s.revision += 1;
            s.config = Some(raw.as_bytes().to_vec());
        });
    }

    /// Takes the store down (`false`) or brings it back. While down every
    /// call fails with [`StoreError::Unreachable`], and so does every open
    /// watch, for good (a broken etcd stream): watch again once it is up.
    pub fn set_available(&self, up: bool) {
        self.inspect(|s| s.up = up);
        // Waiting watches must notice the outage.
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Loses every key, the config, the store leases and the history, as a
    /// wiped data directory under the same endpoints does: revisions start
    /// over (they go back in time), open watches break, and a watch from a
    /// revision this store has not reached reports [`StoreError::Reset`].
    /// Call counters are kept.
    pub fn wipe(&self) {
        self.inspect(State::wipe);
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// Makes every call wait for an answer (`true`) until it is given again
    /// (`false`), as calls to an etcd that stopped answering do until their
    /// timeout. Open watches keep delivering.
    pub fn set_silent(&self, silent: bool) {
        self.inspect(|s| s.silent = silent);
        self.shared.changed.send_modify(|n| *n += 1);
    }

    /// How many calls are waiting for an answer now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Forgets history up to the current revision: a watch opened after
    /// this from an older revision reports [`StoreError::Compacted`] (with
    /// the current revision) on its first `next()`, as etcd does. Open
    /// watches are unaffected.
    pub fn compact(&self) {
        self.inspect(|s| s.compacted = s.revision);
    }

    /// Revokes the store lease holding `subnet` (under any key form), as
    /// when its TTL runs out: the key goes (watchers see `Removed`) and
    /// renewing it reports `LeaseGone`. A key without a store lease is
    /// deleted.
    pub fn expire(&self, subnet: Ipv4Net) {
        self.inspect(|s| {
            for key in s.keys_of(subnet) {
                match s.keys.get(&key).map(|e| e.lease_id) {
                    Some(0) => {
                        s.revision += 1;
                        s.delete(&key);
                    }
                    Some(id) => s.revoke(id),
                    None => {}
                }
            }
        });
    }

    /// [`MemoryStore::expire`] of the one key named `key` (below the
    /// subnets prefix): how an IPv6-only lease, whose IPv4 part every such
    /// lease shares, is expired.
    pub fn expire_key(&self, key: &str) {
        self.inspect(|s| match s.keys.get(key).map(|e| e.lease_id) {
            Some(0) => {
                s.revision += 1;
                s.delete(key);
            }
            Some(id) => s.revoke(id),
            None => {}
        });
    }

    /// Writes `lease` unconditionally under its key, as another node (or
    /// etcdctl) would, bound to a new store lease of `lease.ttl_remaining`
    /// (none: no expiry); watchers see it as `Added`. Returns the lease as
    /// stored, with its new store lease id.
    pub fn put_lease_raw(&self, lease: Lease) -> Lease {
        self.inspect(|s| {
            s.revision += 1;
            let ttl = lease.ttl_remaining.unwrap_or(Duration::ZERO);
            s.put_lease(lease.subnet, lease.ipv6_subnet, &lease.attrs, ttl)
        })
    }

    /// Writes `value` verbatim under the key name `key` (below the subnets
    /// prefix), without a store lease: for malformed entries.
    pub fn put_raw(&self, key: &str, value: &str) {
        self.inspect(|s| {
            s.revision += 1;
            s.put(key, value.to_string(), 0);
        });
    }

    /// The valid leases stored now, by subnet, with their time left.
    pub fn leases(&self) -> Vec<Lease> {
        self.inspect(|s| {
            let network = s.network();
            let now = Instant::now();
            let mut out: Vec<Lease> = s
                .keys
                .iter()
                .filter_map(|(k, e)| {
                    let mut l = s.decode(k, e, network)?;
                    l.ttl_remaining = s.grants.get(&e.lease_id).map(|g| g.expires - now);
                    Some(l)
                })
                .collect();
            out.sort_by_key(|l| l.subnet);
            out
        })
    }

    /// Every stored entry as it is: key name to (value, store lease id).
    pub fn raw_entries(&self) -> BTreeMap<String, (String, i64)> {
        self.inspect(|s| {
            s.keys
                .iter()
                .map(|(k, e)| (k.clone(), (e.value.clone(), e.lease_id)))
                .collect()
        })
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        self.inspect(|s| s.revision)
    }

    /// How often the [`LeaseStore`] method `method` (e.g. `"renew_lease"`,
    /// `"watch_leases"`) was called, refused calls included.
    pub fn calls(&self, method: &str) -> usize {
        self.lock().calls.get(method).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take every other handle down.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state after expiring leases, and wakes watches if
    /// the revision moved.
    fn inspect<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let (out, moved) = {
            let mut s = self.lock();
            let before = s.revision;
            s.expire(Instant::now());
            let out = f(&mut s);
            (out, s.revision != before)
        };
        if moved {
            self.shared.changed.send_modify(|n| *n += 1);
        }
        out
    }

    /// One [`LeaseStore`] call: counted, held while silent, refused while
    /// down.
    async fn call<T>(
        &self,
        method: &'static str,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.inspect(|s| *s.calls.entry(method).or_default() += 1);
        self.answer().await;
        self.inspect(|s| {
            if !s.up {
                return Err(unreachable(method));
            }
            f(s)
        })
    }

    /// Returns once the store answers calls.
    async fn answer(&self) {
        let mut changed = self.shared.changed.subscribe();
        if !self.lock().silent {
            return;
        }
        /// Counts the call as waiting, also when it is dropped meanwhile.
        struct Waiting<'a>(&'a MemoryStore);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.inspect(|s| s.waiting -= 1);
            }
        }
        self.inspect(|s| s.waiting += 1);
        let _waiting = Waiting(self);
        while self.lock().silent {
            if changed.changed().await.is_err() {
                return;
            }
        }
    }
}

impl LeaseStore for MemoryStore {
    async fn get_network_config(&self) -> Result<NetworkConfig, StoreError> {
        let key = self.config_key();
        let raw = self
            .call("get_network_config", |s| Ok(s.config.clone()))
            .await?;
        let raw = raw.ok_or(StoreError::NoConfig { key: key.clone() })?;
        NetworkConfig::parse(&raw).map_err(|source| StoreError::BadConfig { key, source })
    }

    async fn list_leases(&self) -> Result<LeaseSnapshot, StoreError> {
        self.call("list_leases", |s| Ok(s.snapshot())).await
    }

    async fn create_lease_with_ipv6(&self, req: LeaseRequest<'_>) -> Result<Lease, StoreError> {
        self.call("create_lease_with_ipv6", |s| s.create(req)).await
    }

    async fn rewrite_lease(&self, own: &Lease, to: LeaseRequest<'_>) -> Result<Lease, StoreError> {
        to.rewrites(own)?;
        self.call("rewrite_lease", |s| s.rewrite(own, to)).await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, StoreError> {
        self.call("renew_lease", |s| s.renew(lease)).await
    }

    async fn delete_lease(&self, subnet: Ipv4Net) -> Result<(), StoreError> {
        self.call("delete_lease", |s| {
            check_deletable(subnet)?;
            s.delete_subnet(subnet);
            Ok(())
        })
        .await
    }

    async fn watch_leases(&self, after_revision: i64) -> Result<LeaseWatch, StoreError> {
        let (compacted, network, generation) = self
            .call("watch_leases", |s| {
                if after_revision > s.revision {
                    return Err(StoreError::Reset {
                        reason: format!(
                            "revision went back from {after_revision} to {}",
                            s.revision
                        ),
                    });
                }
                let compacted = (after_revision < s.compacted).then_some(s.compacted);
                Ok((compacted, s.network(), s.generation))
            })
            .await?;
        let w = MemoryWatch {
            store: self.clone(),
            changed: self.shared.changed.subscribe(),
            after: after_revision,
            compacted,
            network,
            generation,
            broken: false,
        };
        Ok(LeaseWatch::from_state(w, |mut w| async move {
            (w.next_batch().await, w)
        }))
    }
}

struct MemoryWatch {
    store: MemoryStore,
    changed: watch::Receiver<u64>,
    after: i64,
    /// Reported by every `next()`: etcd cancels such a watch.
    compacted: Option<i64>,
    network: Option<Ipv4Net>,
    /// Set by an outage: the stream stays broken, like etcd's.
    /// The store incarnation the watch was opened on.
    generation: u64,
    broken: bool,
}

impl MemoryWatch {
    async fn next_batch(&mut self) -> WatchBatch {
        if let Some(compact_revision) = self.compacted {
            return Err(StoreError::Compacted { compact_revision });
        }
        loop {
            if self.broken {
                return Err(unreachable("watch_leases"));
            }
            // Marked seen before looking, so a change after the look wakes us.
            self.changed.borrow_and_update();
            let after = self.after;
            let network = self.network;
            let generation = self.generation;
            let (batch, wake) = self.store.inspect(|s| {
                // A wiped store ends every stream, as a restarted etcd does.
                if !s.up || s.generation != generation {
                    return (None, None);
                }
                let start = s.history.partition_point(|c| c.revision <= after);
                let batch: Vec<LeaseEvent> = s.history[start..]
                    .iter()
                    .filter_map(|c| {
                        let value = c.value.as_deref().map(str::as_bytes);
                        decode_change(&c.key, value, c.lease_id, network)
                    })
                    .collect();
                // Skipped malformed entries still move the watcher on.
                let last = s.history.last().map_or(after, |c| c.revision.max(after));
                (Some((batch, last)), s.next_expiry())
            });
            let Some((batch, last)) = batch else {
                self.broken = true;
                return Err(unreachable("watch_leases"));
            };
            self.after = last;
            if !batch.is_empty() {
                return Ok(Some((batch, last)));
            }
            let expiry = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.changed.changed() => {
                    if r.is_err() {
                        return Ok(None);
                    }
                }
                () = expiry => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use std::net::Ipv4Addr;

    const TTL: Duration = Duration::from_secs(60);

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn attrs(i: u8) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::new(192, 0, 2, i),
            backend_type: "host-gw".into(),
            backend_data: None,
            public_ipv6: None,
            backend_v6_data: None,
            node_name: None,
            public_key: None,
        }
    }

    fn store() -> MemoryStore {
        MemoryStore::with_config(NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap())
    }

    /// A store holding one lease, of `subnet`, for the node `192.0.2.<i>`.
    async fn store_with(subnet: &str, i: u8) -> (MemoryStore, Lease) {
        let s = store();
        let l = s.create_lease(net(subnet), &attrs(i), TTL).await.unwrap();
        (s, l)
    }

    async fn next(w: &mut LeaseWatch) -> WatchBatch {
        tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("watch stalled")
    }

    #[tokio::test]
    async fn an_outage_refuses_every_call_and_breaks_open_watches() {
        let (s, l) = store_with("10.244.1.0/24", 1).await;
        let mut w = s.watch_leases(s.revision()).await.unwrap();
        let waiting = tokio::spawn(async move { (next(&mut w).await, w) });
        tokio::task::yield_now().await;
        s.set_available(false);
        let (r, mut w) = waiting.await.unwrap();
        assert!(matches!(r, Err(StoreError::Unreachable { .. })), "{r:?}");

        assert!(matches!(
            s.get_network_config().await,
            Err(StoreError::Unreachable { .. })
        ));
        assert!(s.list_leases().await.is_err());
        let e = s.renew_lease(&l).await.unwrap_err();
        assert!(e.is_retryable() && !e.is_final(), "{e}");
        assert!(s.watch_leases(0).await.is_err());
        assert_eq!(s.calls("renew_lease"), 1);
        assert_eq!(s.calls("watch_leases"), 2);

        s.set_available(true);
        // The broken stream stays broken; a new watch resumes losslessly.
        assert!(next(&mut w).await.is_err());
        let rev = s.revision();
        s.delete_lease(l.subnet).await.unwrap();
        let mut w = s.watch_leases(rev).await.unwrap();
        let (ev, _) = next(&mut w).await.unwrap().unwrap();
        assert_eq!(ev, vec![LeaseEvent::Removed(l.subnet)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_store_holds_calls_until_it_answers() {
        let (s, l) = store_with("10.244.1.0/24", 1).await;
        let mut w = s.watch_leases(s.revision()).await.unwrap();
        s.set_silent(true);
        let renewing = tokio::spawn({
            let s = s.clone();
            let l = l.clone();
            async move { s.renew_lease(&l).await }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!renewing.is_finished(), "no answer while silent");
        assert_eq!((s.waiting(), s.calls("renew_lease")), (1, 1));
        // A call given up on (a client timeout) stops waiting.
        let given_up = tokio::time::timeout(Duration::from_secs(1), s.list_leases()).await;
        assert!(given_up.is_err());
        assert_eq!(s.waiting(), 1);
        // Open watches still deliver.
        s.put_lease_raw(Lease {
            subnet: net("10.244.2.0/24"),
            ipv6_subnet: None,
            attrs: attrs(2),
            lease_id: None,
            ttl_remaining: None,
        });
        // (The first lease's expiry comes first: an hour passed.)
        let mut seen = Vec::new();
        while !seen
            .iter()
            .any(|e| matches!(e, LeaseEvent::Added(x) if x.subnet == net("10.244.2.0/24")))
        {
            let (ev, _) = next(&mut w).await.unwrap().unwrap();
            seen.extend(ev);
        }
        assert_eq!(seen[0], LeaseEvent::Removed(l.subnet));
        s.set_silent(false);
        let renewed = renewing.await.unwrap();
        assert!(renewed.is_err(), "the lease ran out while etcd was silent");
        assert_eq!(s.waiting(), 0);
        assert!(s.list_leases().await.is_ok());
    }

    #[tokio::test]
    async fn compaction_fails_new_watches_from_before_it_only() {
        let s = store();
        let old = s.revision();
        let mut open = s.watch_leases(old).await.unwrap();
        s.create_lease(net("10.244.1.0/24"), &attrs(1), TTL)
            .await
            .unwrap();
        s.compact();
        let now = s.revision();
        let mut stale = s.watch_leases(old).await.unwrap();
        let e = next(&mut stale).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Compacted { compact_revision } if compact_revision == now),
            "{e}"
        );
        assert!(matches!(
            next(&mut stale).await,
            Err(StoreError::Compacted { .. })
        ));
        // The watch opened before the compaction still gets everything.
        let (ev, rev) = next(&mut open).await.unwrap().unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(rev, now);
        // From the current revision on, nothing is missing.
        let mut fresh = s.watch_leases(now).await.unwrap();
        s.delete_lease(net("10.244.1.0/24")).await.unwrap();
        let (ev, _) = next(&mut fresh).await.unwrap().unwrap();
        assert_eq!(ev, vec![LeaseEvent::Removed(net("10.244.1.0/24"))]);
    }

    #[tokio::test]
    async fn expire_removes_the_key_and_renew_reports_gone() {
        let (s, l) = store_with("10.244.2.0/24", 2).await;
        let mut w = s.watch_leases(s.revision()).await.unwrap();
        s.expire(l.subnet);
        let (ev, _) = next(&mut w).await.unwrap().unwrap();
        assert_eq!(ev, vec![LeaseEvent::Removed(l.subnet)]);
        let e = s.renew_lease(&l).await.unwrap_err();
        assert!(
            matches!(e, StoreError::LeaseGone(n) if n == l.subnet),
            "{e}"
        );
        assert!(s.leases().is_empty());
        // Free again: the same node gets the same subnet back.
        let again = s
            .rewrite_lease(&l, LeaseRequest::same_key(&l, &attrs(2), TTL))
            .await
            .unwrap();
        assert_eq!(again.subnet, l.subnet);
        assert_ne!(again.lease_id, l.lease_id);
    }

    #[tokio::test(start_paused = true)]
    async fn ttls_run_on_tokio_time_and_watchers_see_the_expiry() {
        let s = store();
        let l = s
            .create_lease(net("10.244.3.0/24"), &attrs(3), Duration::from_secs(10))
            .await
            .unwrap();
        let mut w = s.watch_leases(s.revision()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        s.renew_lease(&l).await.unwrap();
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert_eq!(s.leases().len(), 1);
        // Nobody touches the store: the watch itself notices the expiry.
        let (ev, _) = next(&mut w).await.unwrap().unwrap();
        assert_eq!(ev, vec![LeaseEvent::Removed(l.subnet)]);
        assert!(s.renew_lease(&l).await.is_err());
    }

    #[tokio::test]
    async fn another_nodes_write_is_seen_and_takes_the_subnet() {
        let (s, mine) = store_with("10.244.4.0/24", 4).await;
        let mut w = s.watch_leases(s.revision()).await.unwrap();
        let theirs = s.put_lease_raw(Lease {
            attrs: attrs(5),
            ttl_remaining: Some(TTL),
            ..mine.clone()
        });
        assert_ne!(theirs.lease_id, mine.lease_id);
        let (ev, _) = next(&mut w).await.unwrap().unwrap();
        assert_eq!(
            ev,
            vec![LeaseEvent::Added(Lease {
                ttl_remaining: None,
                ..theirs.clone()
            })]
        );
        let e = s.renew_lease(&mine).await.unwrap_err();
        assert!(matches!(e, StoreError::LeaseGone(_)), "{e}");
        let e = s
            .rewrite_lease(&mine, LeaseRequest::same_key(&mine, &attrs(4), TTL))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::NotOwner(_)), "{e}");
        assert_eq!(s.leases()[0].attrs, attrs(5));
        assert_eq!(s.calls("rewrite_lease"), 1);
        assert_eq!(s.calls("create_lease_with_ipv6"), 1);
    }

    #[tokio::test]
    async fn malformed_entries_are_skipped_or_removed_and_advance_the_watch() {
        let s = store();
        let rev = s.revision();
        let mut w = s.watch_leases(rev).await.unwrap();
        s.put_raw("10.244.9.0-24", "{garbage");
        s.put_raw("not-a-subnet", &attrs(1).to_json());
        s.create_lease(net("10.244.1.0/24"), &attrs(1), TTL)
            .await
            .unwrap();
        let (ev, last) = next(&mut w).await.unwrap().unwrap();
        // The unreadable value leaves its subnet without a lease; the
        // malformed key names none.
        assert_eq!(ev.len(), 3, "{ev:?}");
        assert!(
            matches!(&ev[0], LeaseEvent::Unusable { subnet: Some(s), gone: false, .. } if *s == net("10.244.9.0/24"))
        );
        assert!(matches!(&ev[1], LeaseEvent::Unusable { subnet: None, .. }));
        assert!(matches!(&ev[2], LeaseEvent::Added(l) if l.subnet == net("10.244.1.0/24")));
        assert_eq!(last, s.revision());
        let snap = s.list_leases().await.unwrap();
        assert_eq!(snap.leases.len(), 1);
        assert_eq!(snap.unusable, ["10.244.9.0-24", "not-a-subnet"]);
        assert_eq!(s.raw_entries().len(), 3);
    }

    #[tokio::test]
    async fn clones_share_one_state() {
        let a = MemoryStore::new();
        let b = a.clone();
        let e = b.get_network_config().await.unwrap_err();
        assert!(matches!(e, StoreError::NoConfig { .. }), "{e}");
        a.set_config(&NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap());
        assert!(b.get_network_config().await.is_ok());
        a.set_available(false);
        assert!(b.list_leases().await.is_err());
        assert_eq!(a.calls("list_leases"), 1);
    }
    #[tokio::test]
    async fn a_wipe_breaks_watches_and_older_revisions_report_a_reset() {
        let (s, _) = store_with("10.244.1.0/24", 1).await;
        let old = s.revision();
        let mut w = s.watch_leases(old).await.unwrap();
        s.wipe();
        assert!(matches!(
            next(&mut w).await,
            Err(StoreError::Unreachable { .. })
        ));
        assert!(s.leases().is_empty());
        assert!(matches!(
            s.get_network_config().await,
            Err(StoreError::NoConfig { .. })
        ));
        assert!(s.revision() < old, "revisions start over");
        let Err(e) = s.watch_leases(old).await else {
            panic!("a watch from a revision the store never reached");
        };
        assert!(
            matches!(&e, StoreError::Reset { reason } if reason.contains("went back")),
            "{e}"
        );
        assert!(!e.is_final());
        // From the new store's own revisions all is well.
        assert!(s.watch_leases(s.revision()).await.is_ok());
        assert_eq!(s.calls("watch_leases"), 3, "counters survive the wipe");
    }
}
