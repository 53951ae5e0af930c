//! etcd v3 lease store: `<prefix>/config` and `<prefix>/subnets/<key>`,
//! each lease key bound to an etcd lease so a dead node's subnet frees itself.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions,
    Identity, KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions, WatchStream, Watcher,
};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    decode_lease, ttl_secs, LeaseEvent, LeaseSnapshot, LeaseStore, LeaseWatch, StoreError,
    WatchBatch,
};
use crate::config::NetworkConfig;
use crate::lease::{lease_key_name, parse_lease_key, subnet_key, Lease, LeaseAttrs};

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

/// Bound for establishing one connection (TCP + TLS) to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// [`LeaseStore`] on etcd v3.
pub struct EtcdStore {
    /// With a login generation. Replaced as a whole when the auth token has to be renewed; clones
    /// share one channel, so handing out a clone per call is cheap.
    client: RwLock<(u64, Client)>,
    endpoints: Vec<String>,
    /// Kept (with the credentials) to authenticate again when etcd forgets
    /// our token: simple tokens expire after `--auth-token-ttl` and die
    /// with a restart of the cluster.
    connect_opts: ConnectOptions,
    user: Option<String>,
    /// Added to transport errors when the setup suggests a likely cause.
    hint: Option<&'static str>,
    /// Serialises re-authentication so a burst of calls with a dead token
    /// logs in once.
    reauth: tokio::sync::Mutex<()>,
    prefix: String,
    /// The network of the last config read, used to drop leases that cannot
    /// belong to it.
    network: Arc<Mutex<Option<Ipv4Net>>>,
}

/// How a failed call should be handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The request never left: nothing reached etcd, any call may be retried.
    NotSent,
    /// Transport trouble after the request may have been sent.
    Transport,
    /// etcd no longer knows our auth token: log in again, then retry.
    TokenExpired,
    /// Wrong credentials or missing permission.
    Auth,
    /// Any other answer from etcd.
    Other,
}

/// Whether a call may be repeated after its request may have reached etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Reads, keepalives, grants, revokes, unconditional deletes: repeating
    /// is harmless (a repeated grant only leaves a lease that expires).
    Idempotent,
    /// Compare-and-swap writes: only retried when the request surely was not
    /// sent, since a repeat could see our own first write as a conflict.
    OnlyUnsent,
}

/// Every message in an error's cause chain, outermost first, without
/// repeats (tonic and hyper often repeat their source's text).
fn cause_chain(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let mut parts: Vec<String> = Vec::new();
    let mut push = |m: String| {
        if !m.is_empty() && !parts.iter().any(|p| p.contains(&m)) {
            parts.push(m);
        }
    };
    // `etcd_client::Error` has no `source()`: walk its payload by hand.
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::TransportError(t) => {
            push(format!("transport error: {t}"));
            t.source()
        }
        etcd_client::Error::GRpcStatus(s) => {
            push(format!("{:?}: {}", s.code(), s.message()));
            s.source()
        }
        other => {
            push(other.to_string());
            None
        }
    };
    while let Some(err) = next {
        push(err.to_string());
        next = err.source();
    }
    parts.join(": ")
}

fn sources(e: &etcd_client::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    use std::error::Error as _;
    let mut out = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::TransportError(t) => Some(t),
        etcd_client::Error::GRpcStatus(s) => s.source(),
        _ => None,
    };
    while let Some(err) = next {
        out.push(err);
        next = err.source();
    }
    out
}

/// Reads a PEM file, naming it in the error.
fn read_pem(path: &Path) -> Result<Vec<u8>, StoreError> {
    let bytes = std::fs::read(path).map_err(|source| StoreError::TlsFile {
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(StoreError::TlsFile {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no PEM block found"),
        });
    }
    Ok(bytes)
}

/// TLS settings from the CA / client cert / key files, or `None` when no
/// file is given and no endpoint asks for `https://`.
fn tls_options(opts: &EtcdOptions) -> Result<Option<TlsOptions>, StoreError> {
    let https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
    if opts.ca_file.is_none() && opts.cert_file.is_none() && opts.key_file.is_none() && !https {
        return Ok(None);
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &opts.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read_pem(ca)?));
    }
    match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
        }
        (None, None) => {}
        (Some(_), None) | (None, Some(_)) => {
            return Err(StoreError::Options(
                "etcd client certificate and key files must be given together".into(),
            ))
        }
    }
    Ok(Some(tls))
}

/// A new client; with a user this sends the authenticate call, repeated
/// while the chosen endpoint is unreachable (another may answer).
async fn login(
    endpoints: &[String],
    co: &ConnectOptions,
    user: Option<&str>,
    hint: Option<&'static str>,
) -> Result<Client, StoreError> {
    let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let fut = Client::connect(endpoints, Some(co.clone()));
        let e = match tokio::time::timeout_at(deadline, fut).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => e,
            Err(_) => {
                return Err(StoreError::Timeout {
                    op: "connect".into(),
                    timeout: OP_TIMEOUT,
                })
            }
        };
        let failure = classify(&e);
        let reason = explain(cause_chain(&e), failure, hint);
        let transient = matches!(failure, Failure::NotSent | Failure::Transport);
        if transient
            && attempt < 2 * endpoints.len() + 2
            && tokio::time::Instant::now() + backoff < deadline
        {
            tracing::debug!(attempt, error = %reason, "etcd login failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(800));
            continue;
        }
        return Err(match failure {
            Failure::Auth | Failure::TokenExpired => StoreError::Auth {
                op: "connect".into(),
                user: user.unwrap_or_default().to_string(),
                reason,
            },
            Failure::NotSent | Failure::Transport => StoreError::Unreachable {
                op: "connect".into(),
                endpoints: endpoints.join(","),
                reason,
            },
            Failure::Other => StoreError::Etcd {
                op: "connect".into(),
                source: Box::new(e),
            },
        });
    }
}

/// `reason`, plus `hint` when the failure happened after TCP connected and
/// the reason does not already name a certificate problem.
fn explain(reason: String, failure: Failure, hint: Option<&str>) -> String {
    match hint {
        Some(h) if failure == Failure::Transport && !reason.contains("certificate") => {
            format!("{reason} ({h})")
        }
        _ => reason,
    }
}

fn classify(e: &etcd_client::Error) -> Failure {
    use etcd_client::Error as E;
    let refused = sources(e).iter().any(|s| {
        s.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            )
        }) || {
            // hyper-util's connect error is private; its text is stable.
            let m = s.to_string();
            m.starts_with("tcp connect error") || m.starts_with("error trying to connect")
        }
    });
    if refused {
        return Failure::NotSent;
    }
    if let E::GRpcStatus(s) = e {
        // etcd refuses proposals while it has no leader: nothing applied.
        if s.code() == tonic::Code::Unavailable && s.message().contains("no leader") {
            return Failure::NotSent;
        }
    }
    match e {
        E::TransportError(_) | E::IoError(_) => Failure::Transport,
        E::GRpcStatus(s) => {
            use tonic::Code;
            let msg = s.message();
            match s.code() {
                Code::Unauthenticated if msg.contains("invalid auth token") => {
                    Failure::TokenExpired
                }
                Code::Unauthenticated | Code::PermissionDenied => Failure::Auth,
                Code::InvalidArgument
                    if msg.contains("authentication failed")
                        || msg.contains("user name is empty") =>
                {
                    Failure::Auth
                }
                Code::FailedPrecondition if msg.contains("authentication is not enabled") => {
                    Failure::Auth
                }
                Code::Unavailable
                | Code::Unknown
                | Code::Internal
                | Code::Cancelled
                | Code::DeadlineExceeded
                | Code::Aborted => Failure::Transport,
                _ => Failure::Other,
            }
        }
        _ => Failure::Other,
    }
}

impl EtcdStore {
    /// Connects, authenticates (if a username is given) and checks that
    /// etcd answers, so a wrong CA, a refused client certificate or a bad
    /// password is reported here with its cause instead of at the first
    /// call. TLS is used for `https://` endpoints and whenever TLS files
    /// are given.
    pub async fn connect(opts: EtcdOptions) -> Result<Self, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Options("no etcd endpoints".into()));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let tls = tls_options(&opts)?;
        // With TLS 1.3 the server rejects a missing client certificate
        // after the client considers the handshake done, so the client
        // often sees only "connection closed": say what is likely.
        let hint = (tls.is_some() && opts.cert_file.is_none()).then_some(
            "no client certificate was offered; an etcd started with \
             --client-cert-auth closes such connections",
        );
        if let Some(tls) = tls {
            if let Some(e) = opts.endpoints.iter().find(|e| e.starts_with("http://")) {
                return Err(StoreError::Options(format!(
                    "etcd TLS files are given but endpoint {e} is plain http://; use https://"
                )));
            }
            co = co.with_tls(tls);
        }
        let user = match (opts.username, opts.password) {
            (Some(u), Some(p)) => {
                co = co.with_user(u.clone(), p);
                Some(u)
            }
            (None, None) => None,
            _ => {
                return Err(StoreError::Options(
                    "etcd username and password must be given together".into(),
                ))
            }
        };
        let endpoints = opts.endpoints;
        let client = login(&endpoints, &co, user.as_deref(), hint).await?;
        let store = EtcdStore {
            client: RwLock::new((0, client)),
            endpoints,
            connect_opts: co,
            hint,
            user,
            reauth: tokio::sync::Mutex::new(()),
            prefix: opts.prefix.trim_end_matches('/').to_string(),
            network: Arc::new(Mutex::new(None)),
        };
        // Without a user nothing has been sent yet (the channel connects
        // lazily): one read proves the endpoints, TLS and permissions work.
        let key = store.config_key();
        store
            .call("connect", Retry::Idempotent, move |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(store)
    }

    /// The login generation and a clone of the current client (clones
    /// share one channel).
    fn current(&self) -> (u64, Client) {
        match self.client.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Logs in again, unless another call already did since generation
    /// `stale` was handed out.
    async fn reauthenticate(&self, op: &str, stale: u64) -> Result<(), StoreError> {
        let _one = self.reauth.lock().await;
        if self.current().0 != stale {
            return Ok(());
        }
        tracing::info!(user = ?self.user, "etcd auth token expired; logging in again");
        let fresh = tokio::time::timeout(
            OP_TIMEOUT,
            login(
                &self.endpoints,
                &self.connect_opts,
                self.user.as_deref(),
                self.hint,
            ),
        )
        .await
        .map_err(|_| StoreError::Timeout {
            op: format!("{op} (login)"),
            timeout: OP_TIMEOUT,
        })??;
        let next = (stale + 1, fresh);
        match self.client.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    fn error(&self, op: &str, e: etcd_client::Error, failure: Failure) -> StoreError {
        match failure {
            Failure::NotSent | Failure::Transport => StoreError::Unreachable {
                op: op.to_string(),
                endpoints: self.endpoints.join(","),
                reason: explain(cause_chain(&e), failure, self.hint),
            },
            Failure::Auth | Failure::TokenExpired => StoreError::Auth {
                op: op.to_string(),
                user: self.user.clone().unwrap_or_default(),
                reason: cause_chain(&e),
            },
            Failure::Other => StoreError::Etcd {
                op: op.to_string(),
                source: Box::new(e),
            },
        }
    }

    /// Runs one etcd call with the [`OP_TIMEOUT`] bound, riding over the
    /// loss of a member: tonic's balanced channel does not skip a dead
    /// endpoint, it hands its connect error to whichever call picked it, so
    /// such calls are repeated (the balancer picks again) with a short
    /// back-off. An expired auth token triggers one new login.
    async fn call<T, F, Fut>(&self, op: &str, retry: Retry, mut f: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + OP_TIMEOUT;
        let timeout = || StoreError::Timeout {
            op: op.to_string(),
            timeout: OP_TIMEOUT,
        };
        let max_attempts = 2 * self.endpoints.len() + 2;
        let mut backoff = Duration::from_millis(50);
        let mut relogged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (generation, client) = self.current();
            let e = match tokio::time::timeout_at(deadline, f(client)).await {
                Err(_) => return Err(timeout()),
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
            };
            let failure = classify(&e);
            let again = match failure {
                Failure::TokenExpired if !relogged && self.user.is_some() => {
                    relogged = true;
                    self.reauthenticate(op, generation).await?;
                    continue;
                }
                Failure::NotSent => true,
                Failure::Transport => retry == Retry::Idempotent,
                _ => false,
            };
            if !again
                || attempt >= max_attempts
                || tokio::time::Instant::now() + backoff >= deadline
            {
                return Err(self.error(op, e, failure));
            }
            tracing::debug!(op, attempt, error = %cause_chain(&e), "etcd call failed, retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(800));
        }
    }

    pub fn config_key(&self) -> String {
        format!("{}/config", self.prefix)
    }

    fn subnets_prefix(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// Full key of an IPv4-only lease.
    pub fn lease_key(&self, subnet: Ipv4Net) -> String {
        format!("{}{}", self.subnets_prefix(), subnet_key(subnet))
    }

    /// Full key of a lease, with the IPv6 part when `ipv6_subnet` is set.
    pub fn lease_key_with_ipv6(&self, subnet: Ipv4Net, ipv6_subnet: Option<Ipv6Net>) -> String {
        format!(
            "{}{}",
            self.subnets_prefix(),
            lease_key_name(subnet, ipv6_subnet)
        )
    }

    /// Writes the network config (setup, tests, `demo.sh`).
    pub async fn put_network_config(&self, cfg: &NetworkConfig) -> Result<(), StoreError> {
        let (key, value) = (self.config_key(), cfg.to_json());
        self.call("put config", Retry::Idempotent, |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await?;
        Ok(())
    }

    /// The underlying client (a clone sharing the store's channel), for
    /// tools and tests.
    pub fn client(&self) -> Client {
        self.current().1
    }

    fn known_network(&self) -> Option<Ipv4Net> {
        self.network.lock().ok().and_then(|g| *g)
    }

    async fn grant(&self, ttl: Duration) -> Result<Option<(i64, i64)>, StoreError> {
        let secs = ttl_secs(ttl);
        if secs == 0 {
            return Ok(None);
        }
        let r = self
            .call("lease grant", Retry::Idempotent, |mut c| async move {
                c.lease_grant(secs, None).await
            })
            .await?;
        Ok(Some((r.id(), r.ttl())))
    }

    /// Best effort: an unrevoked lease just expires after its TTL.
    async fn revoke_quietly(&self, id: i64) {
        let r = self
            .call("lease revoke", Retry::Idempotent, |mut c| async move {
                c.lease_revoke(id).await
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(lease_id = id, error = %e, "could not revoke etcd lease");
        }
    }

    async fn get_key(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut r = self
            .call("get", Retry::Idempotent, |mut c| {
                let key = key.to_string();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(r.take_kvs().into_iter().next())
    }

    async fn put_if(
        &self,
        key: &str,
        cmp: impl Into<Vec<Compare>>,
        attrs: &LeaseAttrs,
        lease: Option<(i64, i64)>,
    ) -> Result<bool, StoreError> {
        let put = PutOptions::new().with_lease(lease.map_or(0, |l| l.0));
        let txn = Txn::new()
            .when(cmp)
            .and_then([TxnOp::put(key, attrs.to_json(), Some(put))]);
        let r = self
            .call("txn", Retry::OnlyUnsent, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        match r {
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
    let Some(name) = key.strip_prefix(subnets_prefix) else {
        tracing::warn!(key = %key, "skipping lease with malformed key");
        return None;
    };
    decode_lease(name, kv.value(), kv.lease(), None, network)
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
        let mut r = self
            .call("list leases", Retry::Idempotent, |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
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

    async fn create_lease_with_ipv6(
        &self,
        subnet: Ipv4Net,
        ipv6_subnet: Option<Ipv6Net>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let key = self.lease_key_with_ipv6(subnet, ipv6_subnet);
        let lease = self.grant(ttl).await?;
        // The subnet is free only if no lease holds it under any key form:
        // neither the IPv4-only key nor `<v4>&<any v6>` (in a mixed-version
        // upgrade both forms are written, and two keys must never share an
        // IPv4 subnet).
        let plain = self.lease_key(subnet);
        let cmp = [
            Compare::create_revision(plain.as_str(), CompareOp::Equal, 0),
            Compare::create_revision(format!("{plain}&"), CompareOp::Equal, 0).with_prefix(),
        ];
        if !self.put_if(&key, cmp, attrs, lease).await? {
            return Err(StoreError::AlreadyTaken(subnet));
        }
        Ok(Lease {
            subnet,
            ipv6_subnet,
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
        let key = self.lease_key_with_ipv6(subnet, lease.ipv6_subnet);
        for _ in 0..UPDATE_TRIES {
            let Some(current) = self.get_key(&key).await? else {
                // Our key vanished (expired); take it again if still free.
                return match self
                    .create_lease_with_ipv6(subnet, lease.ipv6_subnet, attrs, ttl)
                    .await
                {
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
            if self.put_if(&key, [cmp], attrs, granted).await? {
                let old = current.lease();
                if old != 0 && Some(old) != granted.map(|g| g.0) {
                    self.revoke_quietly(old).await;
                }
                return Ok(Lease {
                    subnet,
                    ipv6_subnet: lease.ipv6_subnet,
                    attrs: attrs.clone(),
                    lease_id: granted.map(|g| g.0),
                    ttl_remaining: granted.and_then(|g| secs(g.1)),
                });
            }
        }
        Err(StoreError::NotOwner(subnet))
    }

    async fn rekey_lease(
        &self,
        lease: &Lease,
        ipv6_subnet: Option<Ipv6Net>,
        attrs: &LeaseAttrs,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let subnet = lease.subnet;
        let old_key = self.lease_key_with_ipv6(subnet, lease.ipv6_subnet);
        let new_key = self.lease_key_with_ipv6(subnet, ipv6_subnet);
        if old_key == new_key {
            return self.update_lease(lease, attrs, ttl).await;
        }
        for _ in 0..UPDATE_TRIES {
            let Some(current) = self.get_key(&old_key).await? else {
                // The old key is gone already: a plain create of the new one.
                return self
                    .create_lease_with_ipv6(subnet, ipv6_subnet, attrs, ttl)
                    .await;
            };
            let same_lease = lease.lease_id.is_some_and(|id| id == current.lease());
            let same_node = LeaseAttrs::parse(current.value())
                .is_ok_and(|a| a.public_ip == lease.attrs.public_ip);
            if !same_lease && !same_node {
                return Err(StoreError::NotOwner(subnet));
            }
            let granted = self.grant(ttl).await?;
            let put = PutOptions::new().with_lease(granted.map_or(0, |l| l.0));
            // Delete first: etcd reports a txn's events in op order, so a
            // watcher never sees the new key and then a removal of the same
            // IPv4 subnet.
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(
                        old_key.as_str(),
                        CompareOp::Equal,
                        current.mod_revision(),
                    ),
                    Compare::create_revision(new_key.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::delete(old_key.as_str(), None),
                    TxnOp::put(new_key.as_str(), attrs.to_json(), Some(put)),
                ]);
            let r = self
                .call("rekey txn", Retry::OnlyUnsent, |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await;
            let ok = match r {
                Ok(r) => r.succeeded(),
                Err(e) => {
                    if let Some((id, _)) = granted {
                        self.revoke_quietly(id).await;
                    }
                    return Err(e);
                }
            };
            if ok {
                let old = current.lease();
                if old != 0 && Some(old) != granted.map(|g| g.0) {
                    self.revoke_quietly(old).await;
                }
                return Ok(Lease {
                    subnet,
                    ipv6_subnet,
                    attrs: attrs.clone(),
                    lease_id: granted.map(|g| g.0),
                    ttl_remaining: granted.and_then(|g| secs(g.1)),
                });
            }
            if let Some((id, _)) = granted {
                self.revoke_quietly(id).await;
            }
            if self.get_key(&new_key).await?.is_some() {
                return Err(StoreError::AlreadyTaken(subnet));
            }
        }
        Err(StoreError::NotOwner(subnet))
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
                ttl_remaining: secs(ttl),
                ..lease.clone()
            }),
            _ => Err(StoreError::LeaseGone(subnet)),
        }
    }

    async fn delete_lease(&self, subnet: Ipv4Net) -> Result<(), StoreError> {
        let key = self.lease_key(subnet);
        // The IPv4-only key and every dual-stack key `<key>&...` of this
        // subnet; `&` never starts anything else after a complete key.
        let txn = Txn::new().and_then([
            TxnOp::delete(key.as_str(), Some(DeleteOptions::new().with_prev_key())),
            TxnOp::delete(
                format!("{key}&"),
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            ),
        ]);
        let r = self
            .call("delete lease", Retry::Idempotent, |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let mut leases = Vec::new();
        for op in r.op_responses() {
            if let etcd_client::TxnOpResponse::Delete(d) = op {
                leases.extend(d.prev_kvs().iter().map(KeyValue::lease));
            }
        }
        for id in leases.into_iter().filter(|id| *id != 0) {
            self.revoke_quietly(id).await;
        }
        Ok(())
    }

    async fn watch_leases(&self, after_revision: i64) -> Result<LeaseWatch, StoreError> {
        let prefix = self.subnets_prefix();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(after_revision.saturating_add(1));
        let (watcher, stream) = self
            .call("watch", Retry::Idempotent, |mut c| {
                let (prefix, opts) = (prefix.clone(), opts.clone());
                async move { c.watch(prefix, Some(opts)).await }
            })
            .await?;
        Ok(LeaseWatch::new(EtcdWatch {
            _watcher: watcher,
            stream,
            prefix,
            network: self.known_network(),
            endpoints: self.endpoints.join(","),
        }))
    }
}

struct EtcdWatch {
    // Dropping the watcher closes the request side of the stream.
    _watcher: Watcher,
    stream: WatchStream,
    prefix: String,
    network: Option<Ipv4Net>,
    endpoints: String,
}

impl super::WatchStream for EtcdWatch {
    fn next(&mut self) -> std::pin::Pin<Box<dyn Future<Output = WatchBatch> + Send + '_>> {
        Box::pin(self.next_batch())
    }
}

impl EtcdWatch {
    async fn next_batch(&mut self) -> WatchBatch {
        loop {
            let msg = self
                .stream
                .message()
                .await
                .map_err(|e| match classify(&e) {
                    // A member died or the stream was cut: the caller watches
                    // again from the last revision it saw, losing nothing.
                    Failure::NotSent | Failure::Transport => StoreError::Unreachable {
                        op: "watch".into(),
                        endpoints: self.endpoints.clone(),
                        reason: cause_chain(&e),
                    },
                    _ => StoreError::Etcd {
                        op: "watch".into(),
                        source: Box::new(e),
                    },
                })?;
            let Some(resp) = msg else {
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
                            .and_then(parse_lease_key)
                        {
                            Some((s, _)) => events.push(LeaseEvent::Removed(s)),
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
