//! etcd v3 lease store: `<prefix>/config` and `<prefix>/subnets/<key>`,
//! each lease key bound to an etcd lease so a dead node's subnet frees itself.
//! [`client`] reaches etcd, [`schema`] says what is stored, [`watch`] streams it.

mod client;
mod schema;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, GetOptions, KeyValue, Txn, WatchOptions};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    check_deletable, ttl_secs, LeaseRequest, LeaseSnapshot, LeaseStore, LeaseWatch, StoreError,
};
use crate::config::NetworkConfig;
use crate::lease::{Lease, LeaseAttrs};
use client::{Conn, Retry};
use schema::{Granted, Keys};

pub use client::EtcdOptions;
pub use schema::DEFAULT_PREFIX;

/// Attempts for the read-compare-write of a rewrite before declaring
/// someone else the owner.
const UPDATE_TRIES: u32 = 3;

/// [`LeaseStore`] on etcd v3.
pub struct EtcdStore {
    conn: Conn,
    keys: Keys,
    /// The network of the last config read, used to drop leases that cannot
    /// belong to it.
    network: Arc<Mutex<Option<Ipv4Net>>>,
    /// The etcd cluster ID of the last list: another one on the same
    /// endpoints is a new cluster, which knows none of our revisions.
    cluster: Arc<Mutex<Option<u64>>>,
}

impl EtcdStore {
    /// Connects, authenticates (if a username is given) and checks that
    /// etcd answers, so a wrong CA, a refused client certificate or a bad
    /// password is reported here with its cause instead of at the first
    /// call. TLS is used for `https://` endpoints and whenever TLS files
    /// are given.
    pub async fn connect(opts: EtcdOptions) -> Result<Self, StoreError> {
        let conn = Conn::open(&opts).await?;
        let store = EtcdStore {
            conn,
            keys: Keys::new(&opts.prefix),
            network: Arc::new(Mutex::new(None)),
            cluster: Arc::new(Mutex::new(None)),
        };
        // Without a user nothing has been sent yet (the channel connects
        // lazily): one read proves the endpoints, TLS and permissions work.
        let key = store.config_key();
        store
            .conn
            .call("connect", Retry::Idempotent, move |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(store)
    }

    pub fn config_key(&self) -> String {
        self.keys.config()
    }

    /// Full key of an IPv4-only lease.
    pub fn lease_key(&self, subnet: Ipv4Net) -> String {
        self.keys.lease(subnet)
    }

    /// Full key of a lease, with the IPv6 part when `ipv6_subnet` is set.
    pub fn lease_key_with_ipv6(&self, subnet: Ipv4Net, ipv6_subnet: Option<Ipv6Net>) -> String {
        self.keys.lease_with_ipv6(subnet, ipv6_subnet)
    }

    /// Writes the network config (setup, tests, `demo.sh`).
    pub async fn put_network_config(&self, cfg: &NetworkConfig) -> Result<(), StoreError> {
        let (key, value) = (self.config_key(), cfg.to_json());
        self.conn
            .call("put config", Retry::Idempotent, |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await?;
        Ok(())
    }

    /// The underlying client (a clone sharing the store's channel), for
    /// tools and tests.
    pub fn client(&self) -> Client {
        self.conn.current().1
    }

    fn known_network(&self) -> Option<Ipv4Net> {
        self.network.lock().ok().and_then(|g| *g)
    }

    async fn grant(&self, ttl: Duration) -> Result<Granted, StoreError> {
        let secs = ttl_secs(ttl);
        if secs == 0 {
            return Ok(None);
        }
        let r = self
            .conn
            .call("lease grant", Retry::Idempotent, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(Some((r.id(), r.ttl())))
    }

    /// Best effort: an unrevoked lease just expires after its TTL.
    async fn revoke_quietly(&self, id: i64) {
        let r = self
            .conn
            .call("lease revoke", Retry::Idempotent, |mut c| async move {
                c.lease_revoke(id).await
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(lease_id = id, error = %e, "could not revoke etcd lease");
        }
    }

    /// Revokes the fresh lease of a write that did not happen (or may
    /// have: revoking deletes the key then, so no ghost lease survives an
    /// ambiguous failure).
    async fn revoke_granted(&self, granted: Granted) {
        if let Some((id, _)) = granted {
            self.revoke_quietly(id).await;
        }
    }

    /// Revokes the lease `old` a key was bound to before it moved to
    /// `granted`.
    async fn revoke_replaced(&self, old: i64, granted: Granted) {
        if old != 0 && Some(old) != granted.map(|g| g.0) {
            self.revoke_quietly(old).await;
        }
    }

    async fn get_key(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut r = self
            .conn
            .call("get", Retry::Idempotent, |mut c| {
                let key = key.to_string();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(r.take_kvs().into_iter().next())
    }

    /// Runs a compare-and-swap `txn` as `op`; whether it applied. The fresh
    /// lease `granted` is revoked unless it did.
    async fn txn(&self, op: &str, txn: Txn, granted: Granted) -> Result<bool, StoreError> {
        let r = self
            .conn
            .call(op, Retry::OnlyUnsent, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        let applied = matches!(&r, Ok(r) if r.succeeded());
        if !applied {
            self.revoke_granted(granted).await;
        }
        r.map(|_| applied)
    }

    async fn put_if(
        &self,
        key: &str,
        cmp: impl Into<Vec<Compare>>,
        attrs: &LeaseAttrs,
        granted: Granted,
    ) -> Result<bool, StoreError> {
        self.txn("txn", schema::put_if(key, cmp, attrs, granted), granted)
            .await
    }
}

impl LeaseStore for EtcdStore {
    async fn get_network_config(&self) -> Result<NetworkConfig, StoreError> {
        let key = self.config_key();
        let kv = self
            .get_key(&key)
            .await?
            .ok_or(StoreError::NoConfig { key: key.clone() })?;
        let cfg = NetworkConfig::parse(kv.value())
            .map_err(|source| StoreError::BadConfig { key, source })?;
        if let Ok(mut g) = self.network.lock() {
            *g = Some(cfg.network);
        }
        Ok(cfg)
    }

    async fn list_leases(&self) -> Result<LeaseSnapshot, StoreError> {
        let prefix = self.keys.subnets();
        let mut r = self
            .conn
            .call("list leases", Retry::Idempotent, |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = r.header().map_or(0, |h| h.revision());
        if let (Some(h), Ok(mut known)) = (r.header(), self.cluster.lock()) {
            if known.is_some_and(|id| id != h.cluster_id()) {
                tracing::warn!(old = ?known.map(|id| format!("{id:x}")), new = %format!("{:x}", h.cluster_id()), "etcd cluster ID changed");
            }
            *known = Some(h.cluster_id());
        }
        let network = self.known_network();
        let kvs = r.take_kvs();
        let entries = kvs.iter().filter_map(|kv| {
            let name = schema::name_of(&prefix, kv)?;
            Some((name, kv.value(), kv.lease(), None))
        });
        Ok(LeaseSnapshot::decode(entries, revision, network))
    }

    async fn create_lease_with_ipv6(&self, req: LeaseRequest<'_>) -> Result<Lease, StoreError> {
        let granted = self.grant(req.ttl).await?;
        let cmp = if req.is_ipv6_only() {
            // Its own key only: every IPv6-only key starts `0.0.0.0-0&`.
            let key = self.lease_key_with_ipv6(req.subnet, req.ipv6_subnet);
            vec![schema::absent(&key)]
        } else {
            schema::free_under_every_form(&self.lease_key(req.subnet)).to_vec()
        };
        let key = self.lease_key_with_ipv6(req.subnet, req.ipv6_subnet);
        if !self.put_if(&key, cmp, req.attrs, granted).await? {
            return Err(StoreError::AlreadyTaken(req.subnet));
        }
        Ok(schema::written(
            req.subnet,
            req.ipv6_subnet,
            req.attrs,
            granted,
        ))
    }

    async fn rewrite_lease(&self, own: &Lease, to: LeaseRequest<'_>) -> Result<Lease, StoreError> {
        to.rewrites(own)?;
        if to.ipv6_subnet == own.ipv6_subnet {
            self.update_in_place(own, to).await
        } else {
            self.rekey(own, to).await
        }
    }

    async fn reconnect(&self) -> Result<(), StoreError> {
        self.conn.reconnect().await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let subnet = lease.subnet;
        let key = self.lease_key_with_ipv6(subnet, lease.ipv6_subnet);
        let Some(id) = lease.lease_id else {
            // No expiry: only check the key is still ours.
            return match self.get_key(&key).await? {
                Some(kv) if kv.lease() == 0 => Ok(lease.clone()),
                _ => Err(StoreError::LeaseGone(subnet)),
            };
        };
        let kept = self
            .conn
            .call("lease keepalive", Retry::Idempotent, |mut c| async move {
                // The keeper and stream are dropped at once: one round trip
                // is all a renewal needs.
                c.lease_keep_alive(id).await.map(|_| ())
            })
            .await;
        match kept {
            // etcd answers TTL 0 for an unknown lease, which the client
            // reports as this error.
            Err(StoreError::Etcd { source, .. })
                if matches!(*source, etcd_client::Error::LeaseKeepAliveError(_)) =>
            {
                return Err(StoreError::LeaseGone(subnet))
            }
            Err(e) => return Err(e),
            Ok(()) => {}
        }
        let ttl = self
            .conn
            .call("lease ttl", Retry::Idempotent, |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await?
            .ttl();
        if ttl <= 0 {
            return Err(StoreError::LeaseGone(subnet));
        }
        match self.get_key(&key).await? {
            Some(kv) if kv.lease() == id => Ok(Lease {
                ttl_remaining: schema::secs(ttl),
                ..lease.clone()
            }),
            _ => Err(StoreError::LeaseGone(subnet)),
        }
    }

    async fn delete_lease(&self, subnet: Ipv4Net) -> Result<(), StoreError> {
        check_deletable(subnet)?;
        let txn = schema::delete_every_form(&self.lease_key(subnet));
        let r = self
            .conn
            .call("delete lease", Retry::Idempotent, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        for id in schema::deleted_leases(&r) {
            self.revoke_quietly(id).await;
        }
        Ok(())
    }

    async fn watch_leases(&self, after_revision: i64) -> Result<LeaseWatch, StoreError> {
        self.check_not_reset(after_revision).await?;
        let prefix = self.keys.subnets();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after_revision.saturating_add(1));
        let (watcher, stream) = self
            .conn
            .call("watch", Retry::Idempotent, |mut c| {
                let (prefix, opts) = (prefix.clone(), opts.clone());
                async move { c.watch(prefix, Some(opts)).await }
            })
            .await?;
        let w = watch::EtcdWatch::new(
            watcher,
            stream,
            prefix,
            self.known_network(),
            &self.conn.peer,
        );
        Ok(LeaseWatch::from_state(w, |mut w| async move {
            (w.next_batch().await, w)
        }))
    }
}

impl EtcdStore {
    /// etcd accepts a watch from a revision it has not reached yet and
    /// then reports nothing, so before watching after `after_revision` one
    /// read checks that etcd is still the cluster the revision came from
    /// and has not gone back in time.
    async fn check_not_reset(&self, after_revision: i64) -> Result<(), StoreError> {
        let key = self.config_key();
        let r = self
            .conn
            .call("get", Retry::Idempotent, |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        let Some(h) = r.header() else {
            return Ok(());
        };
        let known = self.cluster.lock().ok().and_then(|g| *g);
        if let Some(id) = known.filter(|id| *id != h.cluster_id()) {
            return Err(StoreError::Reset {
                reason: format!(
                    "etcd cluster ID changed from {id:x} to {:x}",
                    h.cluster_id()
                ),
            });
        }
        if h.revision() < after_revision {
            return Err(StoreError::Reset {
                reason: format!(
                    "etcd revision went back from {after_revision} to {}",
                    h.revision()
                ),
            });
        }
        Ok(())
    }

    /// Re-puts our lease under its own key, bound to a fresh etcd lease:
    /// a compare-and-put against the value we read, retried a few times.
    async fn update_in_place(
        &self,
        lease: &Lease,
        to: LeaseRequest<'_>,
    ) -> Result<Lease, StoreError> {
        let LeaseRequest {
            subnet, attrs, ttl, ..
        } = to;
        let key = self.lease_key_with_ipv6(subnet, lease.ipv6_subnet);
        for _ in 0..UPDATE_TRIES {
            let Some(current) = self.get_key(&key).await? else {
                // Our key vanished (expired); take it again if still free.
                return match self.create_lease_with_ipv6(to).await {
                    Err(StoreError::AlreadyTaken(s)) => Err(StoreError::NotOwner(s)),
                    other => other,
                };
            };
            if !schema::owned_by(&current, lease) {
                return Err(StoreError::NotOwner(subnet));
            }
            // etcd cannot change a lease's TTL: bind the key to a fresh lease.
            let granted = self.grant(ttl).await?;
            let cmp = schema::unchanged(&key, current.mod_revision());
            if self.put_if(&key, [cmp], attrs, granted).await? {
                self.revoke_replaced(current.lease(), granted).await;
                return Ok(schema::written(subnet, lease.ipv6_subnet, attrs, granted));
            }
        }
        Err(StoreError::NotOwner(subnet))
    }

    /// Moves our lease to the key of `to` in one transaction.
    async fn rekey(&self, lease: &Lease, to: LeaseRequest<'_>) -> Result<Lease, StoreError> {
        let LeaseRequest {
            subnet,
            ipv6_subnet,
            attrs,
            ttl,
        } = to;
        let old_key = self.lease_key_with_ipv6(subnet, lease.ipv6_subnet);
        let new_key = self.lease_key_with_ipv6(subnet, ipv6_subnet);
        for _ in 0..UPDATE_TRIES {
            let Some(current) = self.get_key(&old_key).await? else {
                // The old key is gone already: a plain create of the new one.
                return self.create_lease_with_ipv6(to).await;
            };
            if !schema::owned_by(&current, lease) {
                return Err(StoreError::NotOwner(subnet));
            }
            let granted = self.grant(ttl).await?;
            let txn = schema::rekey(&old_key, current.mod_revision(), &new_key, attrs, granted);
            if self.txn("rekey txn", txn, granted).await? {
                self.revoke_replaced(current.lease(), granted).await;
                return Ok(schema::written(subnet, ipv6_subnet, attrs, granted));
            }
            if self.get_key(&new_key).await?.is_some() {
                return Err(StoreError::AlreadyTaken(subnet));
            }
        }
        Err(StoreError::NotOwner(subnet))
    }
}
