//! etcd v3 lease store: `<prefix>/config` and `<prefix>/subnets/<key>`,
//! each lease key bound to an etcd lease so a dead node's subnet frees itself.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    PutOptions, Txn, TxnOp, WatchOptions, WatchStream, Watcher,
};
use ipnet::Ipv4Net;

use super::{ttl_secs, LeaseEvent, LeaseSnapshot, LeaseStore, LeaseWatch, StoreError, WatchInner};
use crate::config::NetworkConfig;
use crate::lease::{parse_subnet_key, subnet_key, Lease, LeaseAttrs};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/twill/network";
/// Upper bound for one unary etcd call, so a hung server cannot hang the agent.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts for the read-compare-write of `update_lease` before declaring
/// someone else the owner.
const UPDATE_TRIES: u32 = 3;

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: DEFAULT_PREFIX.to_string(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password: None,
        }
    }
}

/// [`LeaseStore`] on etcd v3.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    /// The network of the last config read, used to drop leases that cannot
    /// belong to it.
    network: Arc<Mutex<Option<Ipv4Net>>>,
}

fn etcd_err(op: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> StoreError {
    let op = op.into();
    move |source| StoreError::Etcd {
        op,
        source: Box::new(source),
    }
}

async fn timed<T>(
    op: &str,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(r) => r.map_err(etcd_err(op)),
        Err(_) => Err(StoreError::Timeout {
            op: op.to_string(),
            timeout: OP_TIMEOUT,
        }),
    }
}

impl EtcdStore {
    /// Connects (and authenticates, if a username is given). TLS is not
    /// compiled in: giving TLS files is an error rather than a silent
    /// plaintext connection.
    pub async fn connect(opts: EtcdOptions) -> Result<Self, StoreError> {
        if let Some(p) = opts
            .ca_file
            .iter()
            .chain(&opts.cert_file)
            .chain(&opts.key_file)
            .next()
        {
            return Err(StoreError::TlsUnsupported(p.clone()));
        }
        if opts.endpoints.is_empty() {
            return Err(StoreError::Options("no etcd endpoints".into()));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        match (opts.username, opts.password) {
            (Some(u), Some(p)) => co = co.with_user(u, p),
            (None, None) => {}
            _ => {
                return Err(StoreError::Options(
                    "etcd username and password must be given together".into(),
                ))
            }
        }
        let client = timed("connect", Client::connect(&opts.endpoints, Some(co))).await?;
        let prefix = opts.prefix.trim_end_matches('/').to_string();
        Ok(EtcdStore {
            client,
            prefix,
            network: Arc::new(Mutex::new(None)),
        })
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    pub fn lease_key(&self, subnet: Ipv4Net) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet))
    }

    /// Writes the network config (setup, tests, `demo.sh`).
    pub async fn put_network_config(&self, cfg: &NetworkConfig) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        timed("put config", kv.put(self.config_key(), cfg.to_json(), None)).await?;
        Ok(())
    }

    /// The underlying client, for tools and tests.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn known_network(&self) -> Option<Ipv4Net> {
        self.network.lock().ok().and_then(|g| *g)
    }

    async fn grant(&self, ttl: Duration) -> Result<Option<(i64, i64)>, StoreError> {
        let secs = ttl_secs(ttl);
        if secs == 0 {
            return Ok(None);
        }
        let mut lc = self.client.lease_client();
        let r = timed("lease grant", lc.grant(secs, None)).await?;
        Ok(Some((r.id(), r.ttl())))
    }

    /// Best effort: an unrevoked lease just expires after its TTL.
    async fn revoke_quietly(&self, id: i64) {
        let mut lc = self.client.lease_client();
        if let Err(e) = timed("lease revoke", lc.revoke(id)).await {
            tracing::debug!(lease_id = id, error = %e, "could not revoke etcd lease");
        }
    }

    async fn get_key(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut kv = self.client.kv_client();
        let mut r = timed("get", kv.get(key, None)).await?;
        Ok(r.take_kvs().into_iter().next())
    }

    async fn put_if(
        &self,
        key: &str,
        cmp: Compare,
        attrs: &LeaseAttrs,
        lease: Option<(i64, i64)>,
    ) -> Result<bool, StoreError> {
        let put = PutOptions::new().with_lease(lease.map_or(0, |l| l.0));
        let txn = Txn::new()
            .when([cmp])
            .and_then([TxnOp::put(key, attrs.to_json(), Some(put))]);
        let mut kv = self.client.kv_client();
        match timed("txn", kv.txn(txn)).await {
            Ok(r) => {
                if !r.succeeded() {
                    if let Some((id, _)) = lease {
                        self.revoke_quietly(id).await;
                    }
                }
                Ok(r.succeeded())
            }
            Err(e) => {
                // The txn may or may not have applied; revoking our fresh
                // lease deletes the key in the first case, so no ghost
                // lease survives an ambiguous failure.
                if let Some((id, _)) = lease {
                    self.revoke_quietly(id).await;
                }
                Err(e)
            }
        }
    }
}

fn secs(ttl: i64) -> Option<Duration> {
    u64::try_from(ttl).ok().map(Duration::from_secs)
}

/// A stored key/value as a lease, or `None` (logged) if it is malformed or
/// outside the known network.
fn decode(subnets_prefix: &str, kv: &KeyValue, network: Option<Ipv4Net>) -> Option<Lease> {
    let key = String::from_utf8_lossy(kv.key());
    let subnet = match key.strip_prefix(subnets_prefix).and_then(parse_subnet_key) {
        Some(s) => s,
        None => {
            tracing::warn!(key = %key, "skipping lease with malformed key");
            return None;
        }
    };
    if let Some(net) = network {
        if !net.contains(&subnet) {
            tracing::warn!(key = %key, network = %net, "skipping lease outside the network");
            return None;
        }
    }
    match LeaseAttrs::parse(kv.value()) {
        Ok(attrs) => Some(Lease {
            subnet,
            attrs,
            lease_id: (kv.lease() != 0).then_some(kv.lease()),
            ttl_remaining: None,
        }),
        Err(e) => {
            tracing::warn!(key = %key, error = %e, "skipping lease with malformed value");
            None
        }
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
        let prefix = self.subnets_prefix();
        let mut kv = self.client.kv_client();
        let mut r = timed(
            "list leases",
            kv.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let revision = r.header().map_or(0, |h| h.revision());
        let network = self.known_network();
        let leases = r
            .take_kvs()
            .iter()
            .filter_map(|kv| decode(&prefix, kv, network))
            .collect();
        Ok(LeaseSnapshot { leases, revision })
    }

    async fn create_lease(
        &self,
        subnet: Ipv4Net,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let key = self.lease_key(subnet);
        let lease = self.grant(ttl).await?;
        let cmp = Compare::create_revision(key.as_str(), CompareOp::Equal, 0);
        if !self.put_if(&key, cmp, attrs, lease).await? {
            return Err(StoreError::AlreadyTaken(subnet));
        }
        Ok(Lease {
            subnet,
            attrs: attrs.clone(),
            lease_id: lease.map(|l| l.0),
            ttl_remaining: lease.and_then(|l| secs(l.1)),
        })
    }

    async fn update_lease(
        &self,
        lease: &Lease,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let subnet = lease.subnet;
        let key = self.lease_key(subnet);
        for _ in 0..UPDATE_TRIES {
            let Some(current) = self.get_key(&key).await? else {
                // Our key vanished (expired); take it again if still free.
                return match self.create_lease(subnet, attrs, ttl).await {
                    Err(StoreError::AlreadyTaken(s)) => Err(StoreError::NotOwner(s)),
                    other => other,
                };
            };
            let same_lease = lease.lease_id.is_some_and(|id| id == current.lease());
            let same_node = LeaseAttrs::parse(current.value())
                .is_ok_and(|a| a.public_ip == lease.attrs.public_ip);
            if !same_lease && !same_node {
                return Err(StoreError::NotOwner(subnet));
            }
            // etcd cannot change a lease's TTL: bind the key to a fresh lease.
            let granted = self.grant(ttl).await?;
            let cmp = Compare::mod_revision(key.as_str(), CompareOp::Equal, current.mod_revision());
            if self.put_if(&key, cmp, attrs, granted).await? {
                let old = current.lease();
                if old != 0 && Some(old) != granted.map(|g| g.0) {
                    self.revoke_quietly(old).await;
                }
                return Ok(Lease {
                    subnet,
                    attrs: attrs.clone(),
                    lease_id: granted.map(|g| g.0),
                    ttl_remaining: granted.and_then(|g| secs(g.1)),
                });
            }
        }
        Err(StoreError::NotOwner(subnet))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<Lease, StoreError> {
        let subnet = lease.subnet;
        let key = self.lease_key(subnet);
        let Some(id) = lease.lease_id else {
            // No expiry: only check the key is still ours.
            return match self.get_key(&key).await? {
                Some(kv) if kv.lease() == 0 => Ok(lease.clone()),
                _ => Err(StoreError::LeaseGone(subnet)),
            };
        };
        let mut lc = self.client.lease_client();
        match tokio::time::timeout(OP_TIMEOUT, lc.keep_alive(id)).await {
            Err(_) => {
                return Err(StoreError::Timeout {
                    op: "lease keepalive".into(),
                    timeout: OP_TIMEOUT,
                })
            }
            // etcd answers TTL 0 for an unknown lease, which the client
            // reports as this error.
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => {
                return Err(StoreError::LeaseGone(subnet))
            }
            Ok(Err(e)) => return Err(etcd_err("lease keepalive")(e)),
            Ok(Ok(_)) => {}
        }
        let ttl = timed("lease ttl", lc.time_to_live(id, None)).await?.ttl();
        if ttl <= 0 {
            return Err(StoreError::LeaseGone(subnet));
        }
        match self.get_key(&key).await? {
            Some(kv) if kv.lease() == id => Ok(Lease {
                ttl_remaining: secs(ttl),
                ..lease.clone()
            }),
            _ => Err(StoreError::LeaseGone(subnet)),
        }
    }

    async fn delete_lease(&self, subnet: Ipv4Net) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let mut r = timed(
            "delete lease",
            kv.delete(
                self.lease_key(subnet),
                Some(DeleteOptions::new().with_prev_key()),
            ),
        )
        .await?;
        for prev in r.take_prev_kvs() {
            if prev.lease() != 0 {
                self.revoke_quietly(prev.lease()).await;
            }
        }
        Ok(())
    }

    async fn watch_leases(&self, after_revision: i64) -> Result<LeaseWatch, StoreError> {
        let prefix = self.subnets_prefix();
        let mut wc = self.client.watch_client();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after_revision.saturating_add(1));
        let (watcher, stream) = timed("watch", wc.watch(prefix.as_str(), Some(opts))).await?;
        Ok(LeaseWatch {
            inner: WatchInner::Etcd(Box::new(EtcdWatch {
                _watcher: watcher,
                stream,
                prefix,
                network: self.known_network(),
            })),
        })
    }
}

pub(crate) struct EtcdWatch {
    // Dropping the watcher closes the request side of the stream.
    _watcher: Watcher,
    stream: WatchStream,
    prefix: String,
    network: Option<Ipv4Net>,
}

impl EtcdWatch {
    pub(crate) async fn next(&mut self) -> Result<Option<(Vec<LeaseEvent>, i64)>, StoreError> {
        loop {
            let Some(resp) = self.stream.message().await.map_err(etcd_err("watch"))? else {
                return Ok(None);
            };
            if resp.compact_revision() > 0 {
                return Err(StoreError::Compacted {
                    compact_revision: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Err(StoreError::WatchCanceled {
                    reason: resp.cancel_reason().to_string(),
                });
            }
            let mut revision = resp.header().map_or(0, |h| h.revision());
            let mut events = Vec::with_capacity(resp.events().len());
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                // The last event's revision, not the header's: the header
                // may be ahead of events still to come in later fragments.
                revision = kv.mod_revision();
                match ev.event_type() {
                    EventType::Put => {
                        if let Some(l) = decode(&self.prefix, kv, self.network) {
                            events.push(LeaseEvent::Added(l));
                        }
                    }
                    EventType::Delete => {
                        let key = String::from_utf8_lossy(kv.key());
                        match key
                            .strip_prefix(self.prefix.as_str())
                            .and_then(parse_subnet_key)
                        {
                            Some(s) => events.push(LeaseEvent::Removed(s)),
                            None => tracing::warn!(key = %key, "skipping delete of malformed key"),
                        }
                    }
                }
            }
            if !events.is_empty() {
                return Ok(Some((events, revision)));
            }
        }
    }
}
