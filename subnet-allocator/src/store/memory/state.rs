//! The in-memory store's state and etcd's rules on it: one revision per
//! transaction, store leases that take their keys with them, create-if-absent
//! under every key form, ownership by store lease or public IP.

use std::collections::BTreeMap;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use tokio::time::Instant;

use crate::config::NetworkConfig;
use crate::lease::{lease_key_name, Lease, LeaseAttrs};
use crate::store::{decode_lease, holds, owns, ttl_secs, LeaseRequest, LeaseSnapshot, StoreError};

pub(super) struct State {
    /// Which incarnation of the store this is: a wipe makes a new one, as
    /// a new etcd cluster on the same endpoints.
    pub(super) generation: u64,
    pub(super) up: bool,
    /// Calls get no answer until this is cleared.
    pub(super) silent: bool,
    /// Calls waiting for an answer while silent.
    pub(super) waiting: usize,
    pub(super) config: Option<Vec<u8>>,
    pub(super) revision: i64,
    /// Watches from before this revision get `Compacted` (0: none).
    pub(super) compacted: i64,
    next_lease_id: i64,
    /// Key name below the subnets prefix (`10.244.3.0-24`, maybe with an
    /// `&<ipv6>` part) to entry.
    pub(super) keys: BTreeMap<String, Entry>,
    /// Store leases (etcd's), by id.
    pub(super) grants: BTreeMap<i64, Grant>,
    /// Every change ever, in revision order; compaction only hides it from
    /// new watches, so an open watch loses nothing.
    pub(super) history: Vec<Change>,
    pub(super) calls: BTreeMap<&'static str, usize>,
}

pub(super) struct Entry {
    pub(super) value: String,
    /// 0: bound to no store lease, never expires.
    pub(super) lease_id: i64,
}

pub(super) struct Grant {
    pub(super) ttl_secs: i64,
    pub(super) expires: Instant,
}

pub(super) struct Change {
    pub(super) revision: i64,
    pub(super) key: String,
    /// `None` for a deletion.
    pub(super) value: Option<String>,
    pub(super) lease_id: i64,
}

impl State {
    /// Empty and up; etcd's revisions start at 1.
    pub(super) fn new() -> State {
        State {
            generation: 0,
            up: true,
            silent: false,
            waiting: 0,
            config: None,
            revision: 1,
            compacted: 0,
            next_lease_id: 0,
            keys: BTreeMap::new(),
            grants: BTreeMap::new(),
            history: Vec::new(),
            calls: BTreeMap::new(),
        }
    }

    /// A new, empty incarnation that keeps only the call counters.
    pub(super) fn wipe(&mut self) {
        let calls = std::mem::take(&mut self.calls);
        *self = State {
            generation: self.generation + 1,
            calls,
            ..State::new()
        };
    }

    /// A write of `key`; callers bump `revision` once per transaction.
    pub(super) fn put(&mut self, key: &str, value: String, lease_id: i64) {
        self.keys.insert(
            key.to_string(),
            Entry {
                value: value.clone(),
                lease_id,
            },
        );
        self.history.push(Change {
            revision: self.revision,
            key: key.to_string(),
            value: Some(value),
            lease_id,
        });
    }

    pub(super) fn delete(&mut self, key: &str) -> bool {
        if self.keys.remove(key).is_none() {
            return false;
        }
        self.history.push(Change {
            revision: self.revision,
            key: key.to_string(),
            value: None,
            lease_id: 0,
        });
        true
    }

    /// A store lease of `ttl`: `(id, seconds)`, or `None` for no expiry.
    pub(super) fn grant(&mut self, ttl: Duration) -> Option<(i64, i64)> {
        let secs = ttl_secs(ttl);
        if secs == 0 {
            return None;
        }
        self.next_lease_id += 1;
        let id = self.next_lease_id;
        let expires = Instant::now() + Duration::from_secs(secs.unsigned_abs());
        self.grants.insert(
            id,
            Grant {
                ttl_secs: secs,
                expires,
            },
        );
        Some((id, secs))
    }

    /// Like etcd's revoke: the lease and, in one revision, every key bound
    /// to it.
    pub(super) fn revoke(&mut self, id: i64) {
        if self.grants.remove(&id).is_none() {
            return;
        }
        let bound: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, e)| e.lease_id == id)
            .map(|(k, _)| k.clone())
            .collect();
        if !bound.is_empty() {
            self.revision += 1;
            for k in bound {
                self.delete(&k);
            }
        }
    }

    pub(super) fn expire(&mut self, now: Instant) {
        let dead: Vec<i64> = self
            .grants
            .iter()
            .filter(|(_, g)| g.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.revoke(id);
        }
    }

    pub(super) fn next_expiry(&self) -> Option<Instant> {
        self.grants.values().map(|g| g.expires).min()
    }

    /// The IPv4-only key and every dual-stack key of `subnet` that exist.
    pub(super) fn keys_of(&self, subnet: Ipv4Net) -> Vec<String> {
        self.keys
            .keys()
            .filter(|k| holds(k, subnet, None))
            .cloned()
            .collect()
    }

    pub(super) fn network(&self) -> Option<Ipv4Net> {
        let raw = self.config.as_deref()?;
        NetworkConfig::parse(raw).ok().map(|c| c.network)
    }

    /// "Ours", as the etcd store decides it: same store lease id, or the
    /// same public IP in the stored value.
    pub(super) fn owned_by(&self, key: &str, lease: &Lease) -> Option<bool> {
        let e = self.keys.get(key)?;
        Some(owns(key, lease, e.value.as_bytes(), e.lease_id))
    }

    /// Writes `attrs` under `(subnet, ipv6_subnet)` bound to a new store
    /// lease of `ttl`, in the current revision; the lease as etcd's store
    /// returns it.
    pub(super) fn put_lease(
        &mut self,
        subnet: Ipv4Net,
        ipv6_subnet: Option<Ipv6Net>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Lease {
        let granted = self.grant(ttl);
        let key = lease_key_name(subnet, ipv6_subnet);
        self.put(&key, attrs.to_json(), granted.map_or(0, |g| g.0));
        Lease {
            subnet,
            ipv6_subnet,
            attrs: attrs.clone(),
            lease_id: granted.map(|g| g.0),
            ttl_remaining: granted.map(|g| Duration::from_secs(g.1.unsigned_abs())),
        }
    }

    /// Every valid lease, at the current revision.
    pub(super) fn snapshot(&self) -> LeaseSnapshot {
        let entries = self
            .keys
            .iter()
            .map(|(k, e)| (k.as_str(), e.value.as_bytes(), e.lease_id, None));
        LeaseSnapshot::decode(entries, self.revision, self.network())
    }

    pub(super) fn create(&mut self, req: LeaseRequest<'_>) -> Result<Lease, StoreError> {
        // Free only if no key holds it (any key form of the IPv4 subnet, the
        // exact key of an IPv6-only lease), as in etcd's txn.
        if self
            .keys
            .keys()
            .any(|k| holds(k, req.subnet, req.ipv6_subnet))
        {
            return Err(StoreError::AlreadyTaken(req.subnet));
        }
        self.revision += 1;
        Ok(self.put_lease(req.subnet, req.ipv6_subnet, req.attrs, req.ttl))
    }

    /// Re-binds our key to a fresh store lease and revokes the old one,
    /// like the etcd store's compare-and-put.
    fn update(&mut self, lease: &Lease, to: LeaseRequest<'_>) -> Result<Lease, StoreError> {
        let LeaseRequest { attrs, ttl, .. } = to;
        let key = lease.key_name();
        match self.owned_by(&key, lease) {
            None => {
                // Our key vanished (expired); take it again if still free.
                return match self.create(to) {
                    Err(StoreError::AlreadyTaken(s)) => Err(StoreError::NotOwner(s)),
                    other => other,
                };
            }
            Some(false) => return Err(StoreError::NotOwner(lease.subnet)),
            Some(true) => {}
        }
        let old = self.keys.get(&key).map_or(0, |e| e.lease_id);
        self.revision += 1;
        let new = self.put_lease(lease.subnet, lease.ipv6_subnet, attrs, ttl);
        if old != 0 {
            self.revoke(old);
        }
        Ok(new)
    }

    /// Our key re-put in place, or moved to the key of `to`.
    pub(super) fn rewrite(
        &mut self,
        lease: &Lease,
        to: LeaseRequest<'_>,
    ) -> Result<Lease, StoreError> {
        let LeaseRequest {
            ipv6_subnet,
            attrs,
            ttl,
            ..
        } = to;
        let old_key = lease.key_name();
        let new_key = to.key_name();
        if old_key == new_key {
            return self.update(lease, to);
        }
        match self.owned_by(&old_key, lease) {
            None => return self.create(to),
            Some(false) => return Err(StoreError::NotOwner(lease.subnet)),
            Some(true) => {}
        }
        if self.keys.contains_key(&new_key) {
            return Err(StoreError::AlreadyTaken(lease.subnet));
        }
        let old = self.keys.get(&old_key).map_or(0, |e| e.lease_id);
        // One transaction: the removal first, then the new key, in one
        // revision, as etcd reports the etcd store's txn.
        self.revision += 1;
        self.delete(&old_key);
        let new = self.put_lease(lease.subnet, ipv6_subnet, attrs, ttl);
        if old != 0 {
            self.revoke(old);
        }
        Ok(new)
    }

    pub(super) fn renew(&mut self, lease: &Lease) -> Result<Lease, StoreError> {
        let gone = || StoreError::LeaseGone(lease.subnet);
        let key = lease.key_name();
        let Some(id) = lease.lease_id else {
            return match self.keys.get(&key) {
                Some(e) if e.lease_id == 0 => Ok(lease.clone()),
                _ => Err(gone()),
            };
        };
        // A keepalive: no new revision, no event.
        let grant = self.grants.get_mut(&id).ok_or_else(gone)?;
        grant.expires = Instant::now() + Duration::from_secs(grant.ttl_secs.unsigned_abs());
        let ttl = grant.ttl_secs;
        match self.keys.get(&key) {
            Some(e) if e.lease_id == id => Ok(Lease {
                ttl_remaining: Some(Duration::from_secs(ttl.unsigned_abs())),
                ..lease.clone()
            }),
            _ => Err(gone()),
        }
    }

    pub(super) fn delete_subnet(&mut self, subnet: Ipv4Net) {
        let keys = self.keys_of(subnet);
        if keys.is_empty() {
            return;
        }
        self.revision += 1;
        let mut ids = Vec::new();
        for k in keys {
            if let Some(e) = self.keys.get(&k) {
                ids.push(e.lease_id);
            }
            self.delete(&k);
        }
        for id in ids.into_iter().filter(|id| *id != 0) {
            self.revoke(id);
        }
    }

    pub(super) fn decode(&self, key: &str, e: &Entry, network: Option<Ipv4Net>) -> Option<Lease> {
        decode_lease(key, e.value.as_bytes(), e.lease_id, None, network)
    }
}
