//! The agent's side of the userspace device: starts the helper process
//! (`twilld wireguard-device`) when its socket does not answer, talks UAPI
//! to it, and keeps it alive with a heartbeat while this agent runs. The
//! helper is started in its own process group and is not stopped when the
//! agent stops: a restarted agent finds it by its socket, with its peers
//! and sessions, and pod traffic never stopped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::uapi::{self, DeviceStatus, PeerChange};
use super::{WgDevice, WgError, WgSpec};

/// The helper exits after this long without a word from an agent.
pub const GRACE: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(5);
const TIMEOUT: Duration = Duration::from_secs(3);

/// Makes an I/O error about the device at `socket` doing `what`.
fn io_error(socket: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> WgError {
    let socket = socket.to_path_buf();
    move |source| WgError::Io {
        socket,
        what,
        source,
    }
}

/// One UAPI request on a fresh connection; the answer's text.
pub async fn request(socket: &Path, text: &str) -> Result<String, WgError> {
    let io = |what| io_error(socket, what);
    let exchange = async {
        let mut s = UnixStream::connect(socket).await.map_err(io("connect"))?;
        s.write_all(text.as_bytes()).await.map_err(io("write"))?;
        s.shutdown().await.map_err(io("write"))?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.map_err(io("read"))?;
        Ok(answer)
    };
    match tokio::time::timeout(TIMEOUT, exchange).await {
        Ok(r) => r,
        Err(_) => Err(io("answer")(std::io::ErrorKind::TimedOut.into())),
    }
}

/// `get=1` on `socket`.
pub async fn get(socket: &Path) -> Result<DeviceStatus, WgError> {
    Ok(uapi::parse_get(&request(socket, "get=1\n\n").await?)?)
}

/// `set=1` on `socket`.
pub async fn set(socket: &Path, text: &str) -> Result<(), WgError> {
    Ok(uapi::parse_errno(&request(socket, text).await?)?)
}

/// The userspace device, run by a helper process.
pub struct Userspace {
    exe: Option<PathBuf>,
    heartbeat: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Default for Userspace {
    fn default() -> Self {
        Userspace {
            exe: std::env::current_exe().ok(),
            heartbeat: Mutex::new(None),
        }
    }
}

impl Userspace {
    fn spawn(&self, spec: &WgSpec) -> Result<(), WgError> {
        let exe = self.exe.as_ref().ok_or_else(|| {
            WgError::Helper("cannot find twilld's own binary to start the helper".into())
        })?;
        let socket = spec.socket();
        let io = |what| io_error(&socket, what);
        std::fs::create_dir_all(&spec.dir).map_err(io("create its directory"))?;
        let log_path = spec.dir.join(format!("{}.log", spec.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io("open the helper's log"))?;
        let log2 = log.try_clone().map_err(io("open the helper's log"))?;
        let mut child = std::process::Command::new(exe)
            .arg("wireguard-device")
            .arg("--ifname")
            .arg(&spec.name)
            .arg("--socket")
            .arg(&socket)
            .arg("--grace-seconds")
            .arg(GRACE.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a signal to the agent's group (a
            // terminal's ^C, a supervisor stopping the agent) leaves it.
            .process_group(0)
            .spawn()
            .map_err(io("start the helper"))?;
        tracing::info!(pid = child.id(), device = %spec.name, log = %log_path.display(), "started the userspace WireGuard helper");
        // Reaped if it ends while this agent runs.
        std::thread::spawn(move || {
            let status = child.wait();
            tracing::warn!(?status, "the userspace WireGuard helper exited");
        });
        Ok(())
    }

    fn start_heartbeat(&self, socket: PathBuf) {
        let Ok(mut hb) = self.heartbeat.lock() else {
            return;
        };
        if hb.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        *hb = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                if let Err(e) = get(&socket).await {
                    tracing::debug!(error = %e, "WireGuard helper heartbeat");
                }
            }
        }));
    }
}

impl WgDevice for Userspace {
    async fn ensure(&self, spec: &WgSpec) -> Result<(), WgError> {
        let socket = spec.socket();
        let status = match get(&socket).await {
            Ok(s) => s,
            Err(first) => {
                tracing::info!(error = %first, "no userspace WireGuard helper answers: starting one");
                self.spawn(spec)?;
                let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    match get(&socket).await {
                        Ok(s) => break s,
                        Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
                        Err(_) => {}
                    }
                }
            }
        };
        self.start_heartbeat(socket.clone());
        let key = (status.private_key != Some(spec.key.0)).then_some(&spec.key.0);
        let port = (status.listen_port != spec.listen_port).then_some(spec.listen_port);
        if key.is_some() || port.is_some() {
            if key.is_some() {
                tracing::info!(public_key = %spec.key.public(), "giving the WireGuard device this node's key");
            }
            set(&socket, &uapi::format_set(key, port, &[])).await?;
        }
        Ok(())
    }

    async fn status(&self, spec: &WgSpec) -> Result<DeviceStatus, WgError> {
        get(&spec.socket()).await
    }

    async fn change(&self, spec: &WgSpec, changes: &[PeerChange]) -> Result<(), WgError> {
        if changes.is_empty() {
            return Ok(());
        }
        set(&spec.socket(), &uapi::format_set(None, None, changes)).await
    }
}
