//! Embedded single-node lease store: `<dir>/config` (network config JSON)
//! and `<dir>/leases.json` (leases, revision counter, recent event log),
//! rewritten atomically under an exclusive `flock` on `<dir>/lock`. TTLs are
//! absolute expiry timestamps, enforced on every access; watches poll.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::{Ipv4Net, Ipv6Net};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{
    check_deletable, decode_change, holds, owns, ttl_secs, LeaseEvent, LeaseRequest, LeaseSnapshot,
    LeaseStore, LeaseWatch, StoreError, WatchBatch,
};
use crate::config::NetworkConfig;
use crate::lease::{lease_key_name, Lease, LeaseAttrs};

/// Events kept for watchers; a watcher further behind gets `Compacted`.
const EVENT_LOG_LEN: usize = 1000;
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// [`LeaseStore`] in a local directory.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    revision: i64,
    next_lease_id: i64,
    /// Revisions up to and including this one are no longer in `events`.
    compacted: i64,
    leases: BTreeMap<String, Record>,
    events: Vec<EventRecord>,
    /// Set by any change that must be saved.
    #[serde(skip)]
    dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    value: String,
    lease_id: i64,
    ttl_secs: i64,
    /// Unix milliseconds; `None` never expires.
    expires_ms: Option<u64>,
    mod_revision: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EventRecord {
    revision: i64,
    key: String,
    /// `None` for a deletion.
    value: Option<String>,
    lease_id: i64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn expiry(ttl_secs: i64) -> u64 {
    now_ms().saturating_add(u64::try_from(ttl_secs).unwrap_or(0).saturating_mul(1000))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Write to a temp file in the same directory, fsync, rename: readers see
/// the old or the new file, never a torn one.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(data).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

impl State {
    fn record_event(&mut self, key: &str, value: Option<String>, lease_id: i64) {
        self.events.push(EventRecord {
            revision: self.revision,
            key: key.to_string(),
            value,
            lease_id,
        });
        if self.events.len() > EVENT_LOG_LEN {
            let drop = self.events.len() - EVENT_LOG_LEN;
            self.compacted = self.events[drop - 1].revision;
            self.events.drain(..drop);
        }
    }

    fn put(&mut self, key: &str, value: String, lease_id: i64, ttl: i64) {
        self.revision += 1;
        self.dirty = true;
        let expires_ms = (ttl > 0).then(|| expiry(ttl));
        self.leases.insert(
            key.to_string(),
            Record {
                value: value.clone(),
                lease_id,
                ttl_secs: ttl,
                expires_ms,
                mod_revision: self.revision,
            },
        );
        self.record_event(key, Some(value), lease_id);
    }

    fn delete(&mut self, key: &str) -> bool {
        if self.leases.remove(key).is_none() {
            return false;
        }
        self.revision += 1;
        self.dirty = true;
        self.record_event(key, None, 0);
        true
    }

    fn expire(&mut self, now: u64) {
        let dead: Vec<String> = self
            .leases
            .iter()
            .filter(|(_, r)| r.expires_ms.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for k in dead {
            self.delete(&k);
        }
    }

    fn new_lease_id(&mut self, ttl: i64) -> i64 {
        if ttl == 0 {
            return 0;
        }
        self.next_lease_id += 1;
        self.next_lease_id
    }

    /// Stores `attrs` for `(subnet, ipv6_subnet)` under a new store lease of
    /// `ttl`, and returns the lease as stored.
    fn put_lease(
        &mut self,
        subnet: Ipv4Net,
        ipv6_subnet: Option<Ipv6Net>,
        attrs: LeaseAttrs,
        ttl: Duration,
    ) -> Lease {
        let key = lease_key_name(subnet, ipv6_subnet);
        let ttl = ttl_secs(ttl);
        let id = self.new_lease_id(ttl);
        self.put(&key, attrs.to_json(), id, ttl);
        Lease {
            subnet,
            ipv6_subnet,
            ttl_remaining: self.remaining(&key),
            attrs,
            lease_id: (id != 0).then_some(id),
        }
    }

    fn remaining(&self, key: &str) -> Option<Duration> {
        let r = self.leases.get(key)?;
        r.expires_ms
            .map(|e| Duration::from_millis(e.saturating_sub(now_ms())))
    }
}

/// "Ours": same store lease id, or same public IP as `lease`.
fn owned_by(key: &str, cur: &Record, lease: &Lease) -> bool {
    owns(key, lease, cur.value.as_bytes(), cur.lease_id)
}

impl FileStore {
    /// Opens (creating if needed) the store directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let store = FileStore {
            dir: dir.to_path_buf(),
        };
        // Fail now, not on first use, if the state is unreadable.
        store.locked(|_| Ok(()))?;
        Ok(store)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config")
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    /// Writes the network config file.
    pub fn put_network_config(&self, cfg: &NetworkConfig) -> Result<(), StoreError> {
        write_atomic(&self.config_path(), cfg.to_json().as_bytes())
    }

    /// Runs `f` on the state under the lock, after expiring leases; saves
    /// the state if anything changed.
    fn locked<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let lock_path = self.dir.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let _guard = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| {
            StoreError::Io {
                path: lock_path.clone(),
                source: errno.into(),
            }
        })?;
        let path = self.state_path();
        let mut state: State = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        state.expire(now_ms());
        let out = f(&mut state)?;
        if state.dirty {
            let data = serde_json::to_vec(&state).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?;
            write_atomic(&path, &data)?;
        }
        Ok(out)
    }

    /// [`Self::locked`] off the async runtime: flock and fsync block.
    async fn with_state<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.locked(f))
            .await
            .map_err(|e| StoreError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })?
    }
}

impl LeaseStore for FileStore {
    async fn get_network_config(&self) -> Result<NetworkConfig, StoreError> {
        let path = self.config_path();
        let key = path.display().to_string();
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoConfig { key })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        NetworkConfig::parse(&bytes).map_err(|source| StoreError::BadConfig { key, source })
    }

    async fn list_leases(&self) -> Result<LeaseSnapshot, StoreError> {
        self.with_state(|s| {
            let entries = s
                .leases
                .iter()
                .map(|(k, r)| (k.as_str(), r.value.as_bytes(), r.lease_id, s.remaining(k)));
            Ok(LeaseSnapshot::decode(entries, s.revision, None))
        })
        .await
    }

    async fn create_lease_with_ipv6(&self, req: LeaseRequest<'_>) -> Result<Lease, StoreError> {
        let (subnet, ipv6_subnet, ttl) = (req.subnet, req.ipv6_subnet, req.ttl);
        let attrs = req.attrs.clone();
        self.with_state(move |s| {
            // Taken under any key form: IPv4-only or `<v4>&<any v6>`, or
            // the exact key of an IPv6-only lease.
            if s.leases.keys().any(|k| holds(k, subnet, ipv6_subnet)) {
                return Err(StoreError::AlreadyTaken(subnet));
            }
            Ok(s.put_lease(subnet, ipv6_subnet, attrs, ttl))
        })
        .await
    }

    async fn rewrite_lease(&self, own: &Lease, to: LeaseRequest<'_>) -> Result<Lease, StoreError> {
        to.rewrites(own)?;
        let (ipv6_subnet, ttl) = (to.ipv6_subnet, to.ttl);
        let own = own.clone();
        let attrs = to.attrs.clone();
        self.with_state(move |s| {
            let old_key = own.key_name();
            let new_key = lease_key_name(own.subnet, ipv6_subnet);
            if let Some(cur) = s.leases.get(&old_key) {
                if !owned_by(&old_key, cur, &own) {
                    return Err(StoreError::NotOwner(own.subnet));
                }
            }
            if old_key != new_key {
                if s.leases.contains_key(&new_key) {
                    return Err(StoreError::AlreadyTaken(own.subnet));
                }
                // Removal first, like the etcd store's transaction.
                s.delete(&old_key);
            }
            Ok(s.put_lease(own.subnet, ipv6_subnet, attrs, ttl))
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let lease = lease.clone();
        self.with_state(move |s| {
            let key = lease.key_name();
            let Some(cur) = s.leases.get_mut(&key) else {
                return Err(StoreError::LeaseGone(lease.subnet));
            };
            if cur.lease_id != lease.lease_id.unwrap_or(0) {
                return Err(StoreError::LeaseGone(lease.subnet));
            }
            if cur.ttl_secs > 0 {
                // Like an etcd keepalive: no new revision, no event.
                cur.expires_ms = Some(expiry(cur.ttl_secs));
                s.dirty = true;
            }
            Ok(Lease {
                ttl_remaining: s.remaining(&key),
                ..lease
            })
        })
        .await
    }

    async fn delete_lease(&self, subnet: Ipv4Net) -> Result<(), StoreError> {
        self.with_state(move |s| {
            check_deletable(subnet)?;
            let keys: Vec<String> = s
                .leases
                .keys()
                .filter(|k| holds(k, subnet, None))
                .cloned()
                .collect();
            for k in keys {
                s.delete(&k);
            }
            Ok(())
        })
        .await
    }

    async fn watch_leases(&self, after_revision: i64) -> Result<LeaseWatch, StoreError> {
        let w = FileWatch {
            store: self.clone(),
            after: after_revision,
        };
        Ok(LeaseWatch::from_state(w, |mut w| async move {
            (w.poll_events().await, w)
        }))
    }
}

struct FileWatch {
    store: FileStore,
    after: i64,
}

impl FileWatch {
    async fn poll_events(&mut self) -> WatchBatch {
        loop {
            let after = self.after;
            let batch = self
                .store
                .with_state(move |s| {
                    if after < s.compacted {
                        return Err(StoreError::Compacted {
                            compact_revision: s.compacted + 1,
                        });
                    }
                    Ok(s.events
                        .iter()
                        .filter(|e| e.revision > after)
                        .cloned()
                        .collect::<Vec<_>>())
                })
                .await?;
            if let Some(last) = batch.last() {
                self.after = last.revision;
                let events: Vec<LeaseEvent> = batch
                    .iter()
                    .filter_map(|e| {
                        decode_change(
                            &e.key,
                            e.value.as_deref().map(str::as_bytes),
                            e.lease_id,
                            None,
                        )
                    })
                    .collect();
                if !events.is_empty() {
                    return Ok(Some((events, self.after)));
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}
