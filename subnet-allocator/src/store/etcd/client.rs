//! The connection to etcd: options, TLS files, login, and [`Conn::call`],
//! the one per-call retry loop, with the one classification of etcd errors
//! ([`Failure`]) into [`StoreError`]s.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use tokio::time::Instant;

use super::schema::DEFAULT_PREFIX;
use crate::retry::Backoff;
use crate::store::StoreError;

/// Upper bound for one unary etcd call, so a hung server cannot hang the agent.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for establishing one connection (TCP + TLS) to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The per-call policy: short, since the balancer only needs to pick
/// another endpoint; the caller's [`crate::retry`] covers longer outages.
fn call_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_millis(800))
}

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

/// What a failed etcd call means: the one classification of etcd errors.
/// [`Failure::error`] turns it into the [`StoreError`] callers see, so
/// `NotSent`/`Transport` are `Unreachable` (retryable), `Auth` and
/// `TokenExpired` are `Auth` (final) and `Other` is `Etcd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
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
pub(super) enum Retry {
    /// Reads, keepalives, grants, revokes, unconditional deletes: repeating
    /// is harmless (a repeated grant only leaves a lease that expires).
    Idempotent,
    /// Compare-and-swap writes: only retried when the request surely was not
    /// sent, since a repeat could see our own first write as a conflict.
    OnlyUnsent,
}

/// Who we talk to, for error messages.
#[derive(Debug, Clone)]
pub(super) struct Peer {
    endpoints: String,
    user: Option<String>,
    /// Added to transport errors when the setup suggests a likely cause.
    hint: Option<&'static str>,
}

impl Failure {
    pub(super) fn of(e: &etcd_client::Error) -> Failure {
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

    /// Whether [`Conn::call`] sends the request again at once.
    fn may_repeat(self, retry: Retry) -> bool {
        match self {
            Failure::NotSent => true,
            Failure::Transport => retry == Retry::Idempotent,
            Failure::TokenExpired | Failure::Auth | Failure::Other => false,
        }
    }

    /// The error callers see for `e`, a failure of `op` against `peer`.
    pub(super) fn error(self, op: &str, e: etcd_client::Error, peer: &Peer) -> StoreError {
        match self {
            Failure::NotSent | Failure::Transport => StoreError::Unreachable {
                op: op.to_string(),
                endpoints: peer.endpoints.clone(),
                reason: explain(cause_chain(&e), self, peer.hint),
            },
            Failure::Auth | Failure::TokenExpired => StoreError::Auth {
                op: op.to_string(),
                user: peer.user.clone().unwrap_or_default(),
                reason: cause_chain(&e),
            },
            Failure::Other => StoreError::Etcd {
                op: op.to_string(),
                source: Box::new(e),
            },
        }
    }

    /// The error a broken stream (a watch) reports for `e`. Nothing is
    /// final here: the caller watches again, through [`Conn::call`], which
    /// logs in again if the token expired.
    pub(super) fn stream_error(self, op: &str, e: etcd_client::Error, peer: &Peer) -> StoreError {
        match self {
            // A member died or the stream was cut: the caller watches again
            // from the last revision it saw, losing nothing.
            Failure::NotSent | Failure::Transport => StoreError::Unreachable {
                op: op.to_string(),
                endpoints: peer.endpoints.clone(),
                reason: cause_chain(&e),
            },
            Failure::TokenExpired | Failure::Auth | Failure::Other => StoreError::Etcd {
                op: op.to_string(),
                source: Box::new(e),
            },
        }
    }
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

/// Why [`attempts`] stopped.
enum Stop {
    TimedOut,
    Failed(etcd_client::Error, Failure),
}

/// The one per-call retry loop: runs `f` until `deadline`, and repeats it
/// after a short back-off while the failure allows (`retry`) and
/// `2 * endpoints + 2` attempts are not used up, so that every member of
/// a cluster gets a chance.
async fn attempts<T, F, Fut>(
    op: &str,
    endpoints: usize,
    retry: Retry,
    deadline: Instant,
    mut f: F,
) -> Result<T, Stop>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let max_attempts = 2 * endpoints + 2;
    let mut backoff = call_backoff();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let e = match tokio::time::timeout_at(deadline, f()).await {
            Err(_) => return Err(Stop::TimedOut),
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
        };
        let failure = Failure::of(&e);
        let wait = backoff.next();
        if !failure.may_repeat(retry)
            || attempt >= max_attempts
            || Instant::now() + wait >= deadline
        {
            return Err(Stop::Failed(e, failure));
        }
        tracing::debug!(op, attempt, error = %cause_chain(&e), "etcd call failed, retrying");
        tokio::time::sleep(wait).await;
    }
}

/// A new client; with a user this sends the authenticate call, repeated
/// while the chosen endpoint is unreachable (another may answer).
async fn login(
    endpoints: &[String],
    co: &ConnectOptions,
    peer: &Peer,
) -> Result<Client, StoreError> {
    let deadline = Instant::now() + OP_TIMEOUT;
    let connect = || Client::connect(endpoints, Some(co.clone()));
    match attempts(
        "connect",
        endpoints.len(),
        Retry::Idempotent,
        deadline,
        connect,
    )
    .await
    {
        Ok(c) => Ok(c),
        Err(Stop::TimedOut) => Err(StoreError::Timeout {
            op: "connect".into(),
            timeout: OP_TIMEOUT,
        }),
        Err(Stop::Failed(e, failure)) => Err(failure.error("connect", e, peer)),
    }
}

/// A logged-in client that logs in again when etcd forgets the token.
pub(super) struct Conn {
    /// With a login generation. Replaced as a whole when the auth token has to be renewed; clones
    /// share one channel, so handing out a clone per call is cheap.
    client: RwLock<(u64, Client)>,
    endpoints: Vec<String>,
    /// Kept (with the credentials) to authenticate again when etcd forgets
    /// our token: simple tokens expire after `--auth-token-ttl` and die
    /// with a restart of the cluster.
    connect_opts: ConnectOptions,
    pub(super) peer: Peer,
    /// Serialises re-authentication so a burst of calls with a dead token
    /// logs in once.
    reauth: tokio::sync::Mutex<()>,
}

impl Conn {
    /// Checks the options, reads the TLS files and logs in (if a username
    /// is given). Without a user nothing is sent yet: the channel connects
    /// lazily.
    pub(super) async fn open(opts: &EtcdOptions) -> Result<Conn, StoreError> {
        if opts.endpoints.is_empty() {
            return Err(StoreError::Options("no etcd endpoints".into()));
        }
        let mut co = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let tls = tls_options(opts)?;
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
        let user = match (&opts.username, &opts.password) {
            (Some(u), Some(p)) => {
                co = co.with_user(u.clone(), p.clone());
                Some(u.clone())
            }
            (None, None) => None,
            _ => {
                return Err(StoreError::Options(
                    "etcd username and password must be given together".into(),
                ))
            }
        };
        let endpoints = opts.endpoints.clone();
        let peer = Peer {
            endpoints: endpoints.join(","),
            user,
            hint,
        };
        let client = login(&endpoints, &co, &peer).await?;
        Ok(Conn {
            client: RwLock::new((0, client)),
            endpoints,
            connect_opts: co,
            peer,
            reauth: tokio::sync::Mutex::new(()),
        })
    }

    /// The login generation and a clone of the current client (clones
    /// share one channel).
    pub(super) fn current(&self) -> (u64, Client) {
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
        tracing::info!(user = ?self.peer.user, "etcd auth token expired; logging in again");
        self.replace_client(op, stale).await
    }

    /// A new channel (and login) in place of the current one, whose
    /// connections may be dead without knowing it: after this node's
    /// address changed, they would be found so only by keep-alive.
    pub(super) async fn reconnect(&self) -> Result<(), StoreError> {
        let _one = self.reauth.lock().await;
        let stale = self.current().0;
        self.replace_client("reconnect", stale).await
    }

    /// Logs in anew and makes the result generation `stale + 1`.
    async fn replace_client(&self, op: &str, stale: u64) -> Result<(), StoreError> {
        let fresh = tokio::time::timeout(
            OP_TIMEOUT,
            login(&self.endpoints, &self.connect_opts, &self.peer),
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

    /// Runs one etcd call with the [`OP_TIMEOUT`] bound, riding over the
    /// loss of a member: tonic's balanced channel does not skip a dead
    /// endpoint, it hands its connect error to whichever call picked it, so
    /// such calls are repeated (the balancer picks again) with a short
    /// back-off. An expired auth token triggers one new login.
    pub(super) async fn call<T, F, Fut>(
        &self,
        op: &str,
        retry: Retry,
        mut f: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = Instant::now() + OP_TIMEOUT;
        // The login generation of the client the last attempt used.
        let used = AtomicU64::new(0);
        let mut relogged = false;
        loop {
            let attempt = || {
                let (generation, client) = self.current();
                used.store(generation, Ordering::Relaxed);
                f(client)
            };
            match attempts(op, self.endpoints.len(), retry, deadline, attempt).await {
                Ok(v) => return Ok(v),
                Err(Stop::TimedOut) => {
                    return Err(StoreError::Timeout {
                        op: op.to_string(),
                        timeout: OP_TIMEOUT,
                    })
                }
                Err(Stop::Failed(_, Failure::TokenExpired))
                    if !relogged && self.peer.user.is_some() =>
                {
                    relogged = true;
                    self.reauthenticate(op, used.load(Ordering::Relaxed))
                        .await?;
                }
                Err(Stop::Failed(e, failure)) => return Err(failure.error(op, e, &self.peer)),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    fn peer() -> Peer {
        Peer {
            endpoints: "https://127.0.0.1:2379".into(),
            user: Some("twill".into()),
            hint: Some("no client certificate was offered"),
        }
    }

    #[test]
    fn classification_and_store_errors_agree() {
        use tonic::Code;
        let cases = [
            (
                status(Code::Unavailable, "etcdserver: no leader"),
                Failure::NotSent,
            ),
            (
                status(Code::Unavailable, "connection reset"),
                Failure::Transport,
            ),
            (
                status(Code::Unauthenticated, "etcdserver: invalid auth token"),
                Failure::TokenExpired,
            ),
            (
                status(
                    Code::InvalidArgument,
                    "etcdserver: authentication failed, invalid user ID or password",
                ),
                Failure::Auth,
            ),
            (
                status(Code::PermissionDenied, "etcdserver: permission denied"),
                Failure::Auth,
            ),
            (
                status(Code::NotFound, "etcdserver: requested lease not found"),
                Failure::Other,
            ),
            (
                etcd_client::Error::LeaseKeepAliveError("lease expired or revoked".into()),
                Failure::Other,
            ),
        ];
        for (e, want) in cases {
            let name = e.to_string();
            let failure = Failure::of(&e);
            assert_eq!(failure, want, "{name}");
            let err = failure.error("get", e, &peer());
            match failure {
                // Transport trouble: the caller's retry keeps trying.
                Failure::NotSent | Failure::Transport => {
                    assert!(matches!(err, StoreError::Unreachable { .. }), "{err}");
                    assert!(err.is_retryable() && !err.is_final(), "{err}");
                }
                // Credentials do not fix themselves.
                Failure::Auth | Failure::TokenExpired => {
                    assert!(matches!(err, StoreError::Auth { .. }), "{err}");
                    assert!(err.is_final(), "{err}");
                }
                Failure::Other => {
                    assert!(matches!(err, StoreError::Etcd { .. }), "{err}");
                    assert!(!err.is_final(), "{err}");
                }
            }
        }
    }

    #[test]
    fn only_unsent_writes_are_repeated_after_transport_trouble() {
        assert!(Failure::NotSent.may_repeat(Retry::OnlyUnsent));
        assert!(Failure::Transport.may_repeat(Retry::Idempotent));
        assert!(!Failure::Transport.may_repeat(Retry::OnlyUnsent));
        for f in [Failure::TokenExpired, Failure::Auth, Failure::Other] {
            assert!(!f.may_repeat(Retry::Idempotent), "{f:?}");
        }
    }

    #[test]
    fn the_hint_is_added_to_transport_errors_only() {
        let e = status(tonic::Code::Unavailable, "connection closed");
        let err = Failure::Transport.error("get", e, &peer());
        assert!(err.to_string().contains("no client certificate"), "{err}");
        let e = status(
            tonic::Code::Unavailable,
            "invalid peer certificate: UnknownIssuer",
        );
        let err = Failure::Transport.error("get", e, &peer());
        assert!(!err.to_string().contains("no client certificate"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_repeat_transport_failures_with_the_call_backoff() {
        let start = Instant::now();
        let mut n = 0;
        let r = attempts("get", 1, Retry::Idempotent, start + OP_TIMEOUT, || {
            n += 1;
            let k = n;
            async move {
                if k < 3 {
                    Err(status(tonic::Code::Unavailable, "connection reset"))
                } else {
                    Ok(k)
                }
            }
        })
        .await;
        assert!(matches!(r, Ok(3)));
        assert_eq!(start.elapsed(), Duration::from_millis(150));

        // A compare-and-swap that may have been applied is not sent again.
        let mut n = 0;
        let r: Result<(), Stop> = attempts("txn", 1, Retry::OnlyUnsent, start + OP_TIMEOUT, || {
            n += 1;
            async { Err(status(tonic::Code::Unavailable, "connection reset")) }
        })
        .await;
        assert!(matches!(r, Err(Stop::Failed(_, Failure::Transport))));
        assert_eq!(n, 1);

        // At most 2 * endpoints + 2 attempts.
        let mut n = 0;
        let r: Result<(), Stop> =
            attempts("get", 3, Retry::Idempotent, start + OP_TIMEOUT * 10, || {
                n += 1;
                async { Err(status(tonic::Code::Unavailable, "etcdserver: no leader")) }
            })
            .await;
        assert!(matches!(r, Err(Stop::Failed(_, Failure::NotSent))));
        assert_eq!(n, 8);
    }
}
