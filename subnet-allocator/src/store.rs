//! The lease store: the `LeaseStore` trait the agent talks to, its errors,
//! and `acquire_lease`, the race-safe loop of list, allocate, create.
//! Implementations: [`EtcdStore`] (clusters), [`FileStore`] (single node)
//! and [`MemoryStore`] (tests, with fault injection).

mod decode;
mod etcd;
mod file;
mod memory;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use futures::stream::{BoxStream, Stream, StreamExt};
use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;

use crate::alloc::{allocate, allocate_ipv6_only, check_public_ip, AllocError, Allocation};
use crate::config::{ConfigError, NetworkConfig};
use crate::lease::{lease_key_name, parse_lease_key, Lease, LeaseAttrs};
use twill_contract::lease_key::{is_ipv6_only, V6_ONLY_V4};

pub(crate) use decode::{decode_change, decode_lease};
pub use etcd::{EtcdOptions, EtcdStore};
pub use file::FileStore;
pub use memory::MemoryStore;

/// How many lost races [`acquire_lease`] tolerates before giving up.
pub const ACQUIRE_TRIES: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Transport or server error; safe to retry.
    #[error("etcd {op} failed: {source}")]
    Etcd {
        op: String,
        #[source]
        source: Box<etcd_client::Error>,
    },
    /// The store did not answer in time; safe to retry.
    #[error("etcd {op} timed out after {timeout:?}")]
    Timeout { op: String, timeout: Duration },
    #[error("subnet {0} is already leased")]
    AlreadyTaken(Ipv4Net),
    /// `delete_lease(0.0.0.0/0)`: every IPv6-only lease has that IPv4
    /// part, so it names none of them; delete such a lease by its key.
    #[error("delete_lease(0.0.0.0/0) names no lease: IPv6-only leases are told apart by their IPv6 subnet only")]
    NoIpv4Subnet,
    #[error("subnet {0} is now held by another node")]
    NotOwner(Ipv4Net),
    #[error("lease for subnet {0} is gone (expired, revoked or deleted)")]
    LeaseGone(Ipv4Net),
    /// The watch start revision was compacted away: relist, then watch from
    /// the list's revision.
    #[error("watch start revision is compacted (oldest available revision {compact_revision})")]
    Compacted { compact_revision: i64 },
    #[error("watch canceled by the store: {reason}")]
    WatchCanceled { reason: String },
    /// The store lost its data or went back in time (a wiped data
    /// directory, an older snapshot restored): relist, and write our own
    /// lease again if it is gone.
    #[error("the store lost or rolled back its data: {reason}")]
    Reset { reason: String },
    #[error("network config {key} not found")]
    NoConfig { key: String },
    #[error("network config {key} is invalid: {source}")]
    BadConfig {
        key: String,
        #[source]
        source: ConfigError,
    },
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error("gave up acquiring a subnet after losing {tries} races to other nodes")]
    TooManyConflicts { tries: u32 },
    #[error("file store i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("file store {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// A CA, certificate or key file could not be read or holds no PEM data.
    #[error("etcd TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No endpoint could be reached (refused, TLS handshake rejected,
    /// connection lost); safe to retry. `reason` is the whole cause chain.
    #[error("etcd {op} failed: cannot reach etcd at {endpoints}: {reason}")]
    Unreachable {
        op: String,
        endpoints: String,
        reason: String,
    },
    /// etcd rejected the username/password (or the user lacks permission).
    #[error("etcd {op}: authentication as user {user:?} failed: {reason}")]
    Auth {
        op: String,
        user: String,
        reason: String,
    },
    #[error("invalid etcd options: {0}")]
    Options(String),
}

/// One change to the set of leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseEvent {
    /// Created or modified.
    Added(Lease),
    Removed(Ipv4Net),
    /// An IPv6-only lease (key `0.0.0.0-0&<v6>-<len>`) was removed: every
    /// such lease has the IPv4 part `0.0.0.0/0`, so it is named by its
    /// IPv6 subnet.
    RemovedIpv6Only(Ipv6Net),
    /// An entry that holds no usable lease (a malformed key or value, a
    /// subnet outside the network) was written, or (`gone`) such an entry
    /// with a malformed key was deleted. When its key names a subnet, that
    /// subnet holds no usable lease now: its holder writes its value back,
    /// the others forget it.
    Unusable {
        key: String,
        subnet: Option<Ipv4Net>,
        gone: bool,
    },
}

/// All leases at one store revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseSnapshot {
    pub leases: Vec<Lease>,
    pub revision: i64,
    /// The keys (below the subnets prefix) of the entries that hold no
    /// usable lease, skipped from `leases`.
    pub unusable: Vec<String>,
}

impl LeaseSnapshot {
    /// Decodes stored entries (key name, value, store lease id, time left)
    /// into the leases and the keys of the unusable ones.
    pub(crate) fn decode<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a [u8], i64, Option<Duration>)>,
        revision: i64,
        network: Option<Ipv4Net>,
    ) -> Self {
        let mut leases = Vec::new();
        let mut unusable = Vec::new();
        for (key, value, lease_id, ttl) in entries {
            match decode_lease(key, value, lease_id, ttl, network) {
                Some(l) => leases.push(l),
                None => unusable.push(key.to_string()),
            }
        }
        LeaseSnapshot {
            leases,
            revision,
            unusable,
        }
    }
}

/// Storage of the network config and the subnet leases.
pub trait LeaseStore: Send + Sync {
    fn get_network_config(&self) -> impl Future<Output = Result<NetworkConfig, StoreError>> + Send;
    fn list_leases(&self) -> impl Future<Output = Result<LeaseSnapshot, StoreError>> + Send;
    /// Create-if-absent of an IPv4-only lease (key `10.244.3.0-24`);
    /// `Err(StoreError::AlreadyTaken(subnet))` if the key exists.
    fn create_lease(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send {
        self.create_lease_with_ipv6(LeaseRequest::new(subnet, None, attrs, ttl))
    }
    /// Create-if-absent under [`LeaseRequest::key_name`], provided no key
    /// form holds the IPv4 subnet; `Err(StoreError::AlreadyTaken(subnet))`
    /// otherwise. Uniqueness rests on the key, so callers must derive
    /// `ipv6_subnet` from the config ([`NetworkConfig::ipv6_subnet_for`]),
    /// as [`acquire_lease`] does, for every node to use the same key for one
    /// IPv4 subnet.
    fn create_lease_with_ipv6(
        &self,
        req: LeaseRequest<'_>,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Writes our own lease `own` again as `to`, whose subnet is the lease's
    /// (`NotOwner(to.subnet)` otherwise): new attrs and a fresh TTL. Under
    /// the same key ([`LeaseRequest::same_key`]) it is re-put, and
    /// recreated if it vanished; under another key (the config gained or
    /// lost IPv6) it moves atomically: watchers see the old key's removal
    /// before the new key's creation, and `AlreadyTaken` if the new key
    /// exists. `NotOwner` if another node's value is under the old key.
    /// "Ours" means same store lease id or same public IP as `own`.
    fn rewrite_lease(
        &self,
        own: &Lease,
        to: LeaseRequest<'_>,
    ) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Extend the TTL; `LeaseGone(subnet)` if the lease expired, was revoked
    /// or the key was deleted or taken over.
    fn renew_lease(&self, lease: &Lease) -> impl Future<Output = Result<Lease, StoreError>> + Send;
    /// Opens new connections to the store in place of the current ones,
    /// which this node's address change may have killed silently. Calls
    /// after it use the new ones. Stores without connections do nothing.
    fn reconnect(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
    /// Deletes the lease of `subnet`, whichever key form (with or without
    /// an IPv6 part) it is stored under. `NoIpv4Subnet` for `0.0.0.0/0`
    /// ([`V6_ONLY_V4`]), the IPv4 part of every IPv6-only lease.
    fn delete_lease(&self, subnet: Ipv4Net) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Events strictly after `after_revision`.
    fn watch_leases(
        &self,
        after_revision: i64,
    ) -> impl Future<Output = Result<LeaseWatch, StoreError>> + Send;
}

/// One write of a lease: its key (the IPv4 subnet and, in a dual-stack
/// cluster, the IPv6 subnet paired with it), its value and how long it
/// lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRequest<'a> {
    pub subnet: Ipv4Net,
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: &'a LeaseAttrs,
    pub ttl: Duration,
}

impl<'a> LeaseRequest<'a> {
    pub fn new(
        subnet: Ipv4Net,
        ipv6_subnet: Option<Ipv6Net>,
        attrs: &'a LeaseAttrs,
        ttl: Duration,
    ) -> Self {
        LeaseRequest {
            subnet,
            ipv6_subnet,
            attrs,
            ttl,
        }
    }

    /// `lease`'s own key, with `attrs` and a fresh `ttl`.
    pub fn same_key(lease: &Lease, attrs: &'a LeaseAttrs, ttl: Duration) -> Self {
        LeaseRequest::new(lease.subnet, lease.ipv6_subnet, attrs, ttl)
    }

    /// Refuses a rewrite of `lease` into another IPv4 subnet: a subnet is
    /// only ever taken by a create, which checks every key form.
    pub fn rewrites(&self, lease: &Lease) -> Result<(), StoreError> {
        if self.subnet == lease.subnet {
            Ok(())
        } else {
            Err(StoreError::NotOwner(self.subnet))
        }
    }

    /// The key name below the subnets prefix.
    /// A request for an IPv6-only lease (no IPv4 subnet).
    pub fn is_ipv6_only(&self) -> bool {
        is_ipv6_only(self.subnet, self.ipv6_subnet)
    }

    pub fn key_name(&self) -> String {
        crate::lease::lease_key_name(self.subnet, self.ipv6_subnet)
    }
}

/// One answer of a watch: the next batch and the revision it reaches,
/// `None` when the stream ended.
pub type WatchBatch = Result<Option<(Vec<LeaseEvent>, i64)>, StoreError>;

/// A stream of lease event batches, in store order, none lost.
pub struct LeaseWatch {
    inner: BoxStream<'static, WatchBatch>,
}

impl LeaseWatch {
    /// Wraps any store's stream of batches (each item what
    /// [`LeaseWatch::next`] returns), so stores outside this crate can
    /// implement [`LeaseStore`] too.
    pub fn new(batches: impl Stream<Item = WatchBatch> + Send + 'static) -> Self {
        LeaseWatch {
            inner: batches.boxed(),
        }
    }

    /// A watch whose batches come from `next_batch` on `state`, called
    /// once per [`LeaseWatch::next`].
    pub(crate) fn from_state<W, F, Fut>(state: W, mut next_batch: F) -> Self
    where
        W: Send + 'static,
        F: FnMut(W) -> Fut + Send + 'static,
        Fut: Future<Output = (WatchBatch, W)> + Send + 'static,
    {
        LeaseWatch::new(futures::stream::unfold(state, move |w| {
            let batch = next_batch(w);
            async move { Some(batch.await) }
        }))
    }

    /// The next non-empty batch and the store revision it brings the
    /// watcher up to (watch again from there to resume). `Ok(None)` when the
    /// store closed the stream; `Err(Compacted)` means relist.
    pub async fn next(&mut self) -> Result<Option<(Vec<LeaseEvent>, i64)>, StoreError> {
        self.inner.next().await.unwrap_or(Ok(None))
    }
}

/// Seconds for a store TTL: rounded up so a lease never lives shorter than
/// asked; 0 means "no expiry".
/// Refuses `delete_lease(0.0.0.0/0)`: it would delete every IPv6-only
/// lease at once.
pub(crate) fn check_deletable(subnet: Ipv4Net) -> Result<(), StoreError> {
    if subnet == V6_ONLY_V4 {
        return Err(StoreError::NoIpv4Subnet);
    }
    Ok(())
}

pub(crate) fn ttl_secs(ttl: Duration) -> i64 {
    let s = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(s).unwrap_or(i64::MAX)
}

/// Whether the stored lease key `key` holds what a lease of `(subnet,
/// ipv6_subnet)` would take: for an IPv4 subnet, either key form of it
/// (`10.244.3.0-24` or `10.244.3.0-24&<any v6>`: two keys must never share
/// an IPv4 subnet); for an IPv6-only lease (IPv4 part `0.0.0.0-0`, shared by
/// all of them) its own key, which is unique by its IPv6 part.
pub(crate) fn holds(key: &str, subnet: Ipv4Net, ipv6_subnet: Option<Ipv6Net>) -> bool {
    if is_ipv6_only(subnet, ipv6_subnet) {
        return key == lease_key_name(subnet, ipv6_subnet);
    }
    let plain = lease_key_name(subnet, None);
    key == plain
        || key
            .strip_prefix(plain.as_str())
            .is_some_and(|r| r.starts_with('&'))
}

/// Whether the entry under `key` (its JSON `value`, bound to the store lease
/// `value_lease`, 0 for none) is `own`'s to write again: bound to its store
/// lease; or written for its public IP by the same node (when both name
/// their node, the names agree: two nodes never share a lease through a
/// shared address); or unreadable, because garbage on a node's own key is
/// the node's to overwrite, never a reason to give up its subnet.
pub(crate) fn owns(key: &str, own: &Lease, value: &[u8], value_lease: i64) -> bool {
    if own.lease_id.is_some_and(|id| id == value_lease) {
        return true;
    }
    match LeaseAttrs::parse(value) {
        Ok(a) => {
            same_public_address(&a, &own.attrs)
                && match (&a.node_name, &own.attrs.node_name) {
                    (Some(theirs), Some(ours)) => theirs == ours,
                    _ => true,
                }
        }
        Err(e) => {
            tracing::warn!(key, error = %e, "our lease key holds an unreadable value; writing ours over it");
            true
        }
    }
}

/// Same node address: the public IP, or for IPv6-only nodes (whose public
/// IP is `0.0.0.0`, the same on every one of them) the public IPv6.
pub(crate) fn same_public_address(a: &LeaseAttrs, b: &LeaseAttrs) -> bool {
    if a.public_ip.is_unspecified() || b.public_ip.is_unspecified() {
        a.public_ip == b.public_ip && a.public_ipv6.is_some() && a.public_ipv6 == b.public_ipv6
    } else {
        a.public_ip == b.public_ip
    }
}

/// Where an acquired subnet came from: this node's lease still in the
/// store, the subnet file of an earlier run (the lease itself was gone), or
/// a new pick. Both of the first two are the node keeping its subnet.
fn lease_source(choice: &Allocation, preferred: Preferred) -> &'static str {
    match choice {
        Allocation::Reuse(_) => "lease",
        Allocation::New(s) if preferred.v4 == Some(*s) => "subnet file",
        Allocation::NewIpv6(s) if preferred.v6 == Some(*s) => "subnet file",
        Allocation::New(_) | Allocation::NewIpv6(_) => "new",
    }
}

/// The subnets of this node's subnet file, tried first when free.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preferred {
    pub v4: Option<Ipv4Net>,
    /// Used in IPv6-only clusters only.
    pub v6: Option<Ipv6Net>,
}

/// Gets this node a subnet lease: list, [`allocate`], then reuse (refresh
/// attrs and TTL of our old lease) or create. A lost race (another node took
/// the subnet between list and create) starts over; after
/// [`ACQUIRE_TRIES`] lost races it gives up with `TooManyConflicts`.
pub async fn acquire_lease<S: LeaseStore>(
    store: &S,
    cfg: &NetworkConfig,
    public_ip: Ipv4Addr,
    attrs: &LeaseAttrs,
    preferred: Option<Ipv4Net>,
    ttl: Duration,
) -> Result<Lease, StoreError> {
    let preferred = Preferred {
        v4: preferred,
        v6: None,
    };
    acquire_lease_preferring(store, cfg, public_ip, attrs, preferred, ttl).await
}

/// [`acquire_lease`] with the IPv6 subnet of the subnet file too: in an
/// IPv6-only cluster ([`NetworkConfig::is_ipv6_only`]) the node is told by
/// `attrs.public_ipv6` and gets an IPv6-only lease
/// ([`allocate_ipv6_only`](crate::alloc::allocate_ipv6_only)).
pub async fn acquire_lease_preferring<S: LeaseStore>(
    store: &S,
    cfg: &NetworkConfig,
    public_ip: Ipv4Addr,
    attrs: &LeaseAttrs,
    preferred: Preferred,
    ttl: Duration,
) -> Result<Lease, StoreError> {
    let mut preferred = preferred;
    for attempt in 1..=ACQUIRE_TRIES {
        let snapshot = store.list_leases().await?;
        let choice = if cfg.is_ipv6_only() {
            let rng = &mut rand::thread_rng();
            allocate_ipv6_only(cfg, &snapshot.leases, attrs, preferred.v6, rng)?
        } else {
            check_public_ip(&snapshot.leases, public_ip, attrs.node_name.as_deref())?;
            let rng = &mut rand::thread_rng();
            allocate(cfg, &snapshot.leases, public_ip, preferred.v4, rng)?
        };
        let result = match &choice {
            Allocation::Reuse(old) => {
                let want6 = if old.is_ipv6_only() {
                    old.ipv6_subnet
                } else {
                    cfg.ipv6_subnet_for(old.subnet)
                };
                if old.ipv6_subnet != want6 {
                    // IPv6 was switched on or off, or another writer paired
                    // differently: move to the key this config implies.
                    tracing::info!(subnet = %old.subnet, old_ipv6 = ?old.ipv6_subnet, new_ipv6 = ?want6, "re-keying own lease for the current IPv6 config");
                }
                let to = LeaseRequest::new(old.subnet, want6, attrs, ttl);
                store.rewrite_lease(old, to).await
            }
            Allocation::New(subnet) => {
                let v6 = cfg.ipv6_subnet_for(*subnet);
                let req = LeaseRequest::new(*subnet, v6, attrs, ttl);
                store.create_lease_with_ipv6(req).await
            }
            Allocation::NewIpv6(v6) => {
                let req = LeaseRequest::new(V6_ONLY_V4, Some(*v6), attrs, ttl);
                store.create_lease_with_ipv6(req).await
            }
        };
        match result {
            Ok(lease) => {
                let from = lease_source(&choice, preferred);
                tracing::info!(subnet = %lease.subnet, ipv6_subnet = ?lease.ipv6_subnet, reused = from != "new", from, "acquired subnet lease");
                return Ok(lease);
            }
            Err(StoreError::AlreadyTaken(s)) | Err(StoreError::NotOwner(s)) => {
                tracing::info!(subnet = %s, attempt, "lost the race for a subnet, picking again");
                if preferred.v4 == Some(s) {
                    preferred.v4 = None;
                }
                if matches!(choice, Allocation::NewIpv6(v6) if preferred.v6 == Some(v6)) {
                    preferred.v6 = None;
                }
                // Random back-off so the losers of one race do not all
                // list and pick again in lockstep.
                let ms = rand::thread_rng().gen_range(0..=25 * u64::from(attempt));
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::TooManyConflicts {
        tries: ACQUIRE_TRIES,
    })
}

#[cfg(test)]
mod tests {
    use super::decode::warn_once;
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Compile-time check: the agent spawns these on tokio for any store.
    #[allow(dead_code)]
    fn futures_are_send<S: LeaseStore>(s: &S, cfg: &NetworkConfig, attrs: &LeaseAttrs) {
        let ip = Ipv4Addr::LOCALHOST;
        assert_send(&acquire_lease(s, cfg, ip, attrs, None, Duration::ZERO));
        assert_send(&s.list_leases());
        assert_send(&s.watch_leases(0));
    }

    #[test]
    fn lease_watch_is_send() {
        fn is_send<T: Send>() {}
        is_send::<LeaseWatch>();
        is_send::<EtcdStore>();
        is_send::<FileStore>();
        is_send::<MemoryStore>();
    }

    fn v4(v4: Option<Ipv4Net>) -> Preferred {
        Preferred { v4, v6: None }
    }

    #[test]
    fn a_subnet_from_the_subnet_file_counts_as_reused() {
        let v6: Ipv6Net = "fd00::/64".parse().unwrap();
        let p6 = Preferred {
            v4: None,
            v6: Some(v6),
        };
        assert_eq!(lease_source(&Allocation::NewIpv6(v6), p6), "subnet file");
        assert_eq!(lease_source(&Allocation::NewIpv6(v6), v4(None)), "new");
        let s: Ipv4Net = "10.244.3.0/24".parse().expect("literal");
        let other: Ipv4Net = "10.244.4.0/24".parse().expect("literal");
        assert_eq!(
            lease_source(&Allocation::New(s), v4(Some(s))),
            "subnet file"
        );
        assert_eq!(lease_source(&Allocation::New(s), v4(Some(other))), "new");
        assert_eq!(lease_source(&Allocation::New(s), v4(None)), "new");
        let old = Lease {
            subnet: s,
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::new(192, 0, 2, 1),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: None,
                backend_v6_data: None,
                node_name: None,
                public_key: None,
            },
            lease_id: None,
            ttl_remaining: None,
        };
        assert_eq!(lease_source(&Allocation::Reuse(old), v4(None)), "lease");
    }

    #[test]
    fn ttl_rounds_up() {
        assert_eq!(ttl_secs(Duration::ZERO), 0);
        assert_eq!(ttl_secs(Duration::from_millis(1)), 1);
        assert_eq!(ttl_secs(Duration::from_secs(2)), 2);
        assert_eq!(ttl_secs(Duration::from_millis(2500)), 3);
    }
    fn own() -> Lease {
        Lease {
            subnet: "10.244.3.0/24".parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: Ipv4Addr::new(192, 0, 2, 3),
                public_ipv6: None,
                backend_type: "host-gw".into(),
                backend_data: None,
                backend_v6_data: None,
                node_name: Some("a".into()),
                public_key: None,
            },
            lease_id: Some(7),
            ttl_remaining: None,
        }
    }

    #[test]
    fn ownership_of_a_key_by_store_lease_node_or_garbage() {
        let own = own();
        let value = |ip: &str, node: Option<&str>| {
            let mut a = own.attrs.clone();
            a.public_ip = ip.parse().unwrap();
            a.node_name = node.map(String::from);
            a.to_json()
        };
        let k = "10.244.3.0-24";
        // Bound to our store lease: ours whatever it says.
        assert!(owns(k, &own, value("192.0.2.9", Some("x")).as_bytes(), 7));
        // Our address, written by us or by a node that names none.
        assert!(owns(k, &own, value("192.0.2.3", Some("a")).as_bytes(), 0));
        assert!(owns(k, &own, value("192.0.2.3", None).as_bytes(), 0));
        // Our address claimed by another named node, or another address.
        assert!(!owns(k, &own, value("192.0.2.3", Some("b")).as_bytes(), 0));
        assert!(!owns(k, &own, value("192.0.2.9", Some("a")).as_bytes(), 0));
        // Garbage on our key is ours to overwrite.
        assert!(owns(k, &own, b"{not json", 0));
        assert!(owns(k, &own, br#"{"PublicIP":"banana"}"#, 0));
    }

    #[test]
    fn an_unreadable_new_value_leaves_the_subnet_without_a_lease() {
        let net = Some("10.244.0.0/16".parse().unwrap());
        let subnet: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let unusable = |key: &str, subnet, gone| LeaseEvent::Unusable {
            key: key.into(),
            subnet,
            gone,
        };
        assert_eq!(
            decode_change("10.244.3.0-24", Some(b"garbage"), 0, net),
            Some(unusable("10.244.3.0-24", Some(subnet), false))
        );
        let good = own().attrs.to_json();
        assert!(matches!(
            decode_change("10.244.3.0-24", Some(good.as_bytes()), 0, net),
            Some(LeaseEvent::Added(l)) if l.subnet == subnet
        ));
        // Malformed keys and subnets outside the network name no subnet of
        // ours; deleting a malformed key says it is gone.
        assert_eq!(
            decode_change("banana", Some(b"garbage"), 0, net),
            Some(unusable("banana", None, false))
        );
        assert_eq!(
            decode_change("10.9.3.0-24", Some(good.as_bytes()), 0, net),
            Some(unusable("10.9.3.0-24", None, false))
        );
        assert_eq!(
            decode_change("banana", None, 0, net),
            Some(unusable("banana", None, true))
        );
        assert_eq!(
            decode_change("10.244.3.0-24", None, 0, net),
            Some(LeaseEvent::Removed(subnet))
        );
        // IPv6-only keys: the removal names the IPv6 subnet; an unusable
        // value names no IPv4 subnet (all of them share 0.0.0.0/0).
        let v6only = "0.0.0.0-0&fd00:10:244:1::-64";
        assert_eq!(
            decode_change(v6only, None, 0, None),
            Some(LeaseEvent::RemovedIpv6Only(
                "fd00:10:244:1::/64".parse().unwrap()
            ))
        );
        assert_eq!(
            decode_change(v6only, Some(b"garbage"), 0, None),
            Some(unusable(v6only, None, false))
        );
    }

    #[test]
    fn ipv6_only_keys_hold_only_themselves() {
        let v6: Ipv6Net = "fd00:10:244:1::/64".parse().unwrap();
        let other: Ipv6Net = "fd00:10:244:2::/64".parse().unwrap();
        let key = lease_key_name(V6_ONLY_V4, Some(v6));
        assert!(holds(&key, V6_ONLY_V4, Some(v6)));
        assert!(!holds(&key, V6_ONLY_V4, Some(other)));
        // IPv4 subnets: both key forms, and nothing else.
        let s: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert!(holds("10.244.3.0-24", s, None));
        assert!(holds("10.244.3.0-24&fd00::-64", s, Some(other)));
        assert!(!holds("10.244.3.0-240", s, None));
        assert!(!holds(&key, s, None));
        assert!(matches!(
            check_deletable(V6_ONLY_V4),
            Err(StoreError::NoIpv4Subnet)
        ));
        assert!(check_deletable(s).is_ok());
    }

    #[test]
    fn ipv6_only_nodes_are_told_apart_by_public_ipv6() {
        let mut own = own();
        own.subnet = V6_ONLY_V4;
        own.ipv6_subnet = Some("fd00:10:244:1::/64".parse().unwrap());
        own.attrs.public_ip = Ipv4Addr::UNSPECIFIED;
        own.attrs.public_ipv6 = Some("2001:db8::1".parse().unwrap());
        let mut theirs = own.attrs.clone();
        theirs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        let key = own.key_name();
        assert!(!owns(&key, &own, theirs.to_json().as_bytes(), 0));
        assert!(owns(&key, &own, own.attrs.to_json().as_bytes(), 0));
        // Neither has a public IPv6: not the same node.
        let mut none = own.attrs.clone();
        none.public_ipv6 = None;
        assert!(!same_public_address(&none, &none));
    }

    #[test]
    fn each_junk_entry_is_logged_once() {
        let what = "skipping lease with malformed value";
        assert!(warn_once("10.244.77.0-24", b"junk-a", what, ""));
        assert!(
            !warn_once("10.244.77.0-24", b"junk-a", what, ""),
            "again at the next list"
        );
        assert!(
            warn_once("10.244.77.0-24", b"junk-b", what, ""),
            "new junk is news"
        );
        assert!(warn_once("10.244.78.0-24", b"junk-a", what, ""));
    }
}
