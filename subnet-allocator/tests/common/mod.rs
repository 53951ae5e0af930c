//! Helpers shared by the integration tests: real etcd processes on
//! 127.0.0.1 with random ports, killed (SIGKILL) on drop, restartable on the
//! same data dir (a missing `etcd` binary fails under `CI=true`); and the
//! `LeaseStore` contract every store is tested against ([`contract`]).
#![allow(dead_code, clippy::unwrap_used)]

pub mod contract;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
/// Guard against a hang, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// True when the etcd binaries and `extra` tools are there (no root
/// needed); the harness's gate: missing, it panics under `CI=true`, else
/// prints a loud SKIP so the skip is never mistaken for a pass.
pub fn have_etcd(extra: &[&str]) -> bool {
    twill_harness::Prereqs::new()
        .tools(&[ETCD, ETCDCTL])
        .tools(extra)
        .hint("Debian: etcd-server etcd-client")
        .require()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One etcd member process. Killed with SIGKILL on drop.
pub struct Member {
    pub name: String,
    pub client_url: String,
    pub peer_url: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// "ready" lines in the log before the current start.
    ready_before: usize,
}

impl Member {
    /// `scheme` is `http` or `https`; `extra` are added flags (TLS, cluster).
    pub fn new(dir: &Path, name: &str, scheme: &str, extra: Vec<String>) -> Member {
        let (cp, pp) = (free_port(), free_port());
        let client_url = format!("{scheme}://127.0.0.1:{cp}");
        let peer_url = format!("http://127.0.0.1:{pp}");
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", dir.join(format!("{name}.data")).display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            // Fast elections keep the cluster test short.
            "--heartbeat-interval=50".into(),
            "--election-timeout=500".into(),
        ];
        args.extend(extra);
        Member {
            name: name.to_string(),
            client_url,
            peer_url,
            args,
            log: dir.join(format!("{name}.log")),
            child: None,
            ready_before: 0,
        }
    }

    pub fn add_args(&mut self, more: impl IntoIterator<Item = String>) {
        self.args.extend(more);
    }

    /// Starts (or restarts, on the same data dir) the process; the log is
    /// appended so a restart keeps the history.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.name);
        self.ready_before = self.ready_count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(ETCD)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    /// SIGKILL, like a crash: no graceful leave.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ready_count(&self) -> usize {
        self.log_text()
            .matches("ready to serve client requests")
            .count()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until this start of the member says it serves clients (etcd
    /// logs this once it has joined the cluster and published itself).
    pub fn wait_ready(&mut self) {
        let end = Instant::now() + PATIENCE;
        while Instant::now() < end {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "etcd {} exited early ({status}):\n{}",
                    self.name,
                    self.log_text()
                );
            }
            if self.ready_count() > self.ready_before {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "etcd {} never became ready:\n{}",
            self.name,
            self.log_text()
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs etcdctl against `endpoint` with extra flags; panics with its output
/// on failure.
pub fn etcdctl(endpoint: &str, flags: &[&str], args: &[&str]) -> String {
    let out = Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--dial-timeout=5s")
        .arg("--command-timeout=10s")
        .args(flags)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
