//! A real etcd (Debian's `/usr/bin/etcd`) running inside a test namespace,
//! with `etcdctl` helpers; killed by PID on drop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd::{self, ip, ChildGuard};
use crate::error::{HarnessError, Result};
use crate::parse;
use crate::wait::wait_for;

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// One etcd member's command line: the parts every harness etcd shares.
pub(crate) struct EtcdArgs<'a> {
    pub ns: &'a str,
    pub name: &'a str,
    pub data_dir: &'a Path,
    pub listen_client_urls: &'a str,
    pub advertise_client_url: &'a str,
    pub peer_url: &'a str,
    pub initial_cluster: &'a str,
    /// Appended to (not truncating) the log, so restarts keep their history.
    pub log: &'a Path,
}

/// `ip netns exec <ns> etcd ...` with stdout and stderr appended to the log
/// and no `ETCD_*` settings inherited from the caller's environment. Callers
/// add their own flags before spawning.
pub(crate) fn etcd_command(a: &EtcdArgs<'_>) -> Result<Command> {
    let mut c = ip(["netns", "exec", a.ns, "etcd"]);
    c.arg("--name")
        .arg(a.name)
        .arg("--data-dir")
        .arg(a.data_dir)
        .arg("--listen-client-urls")
        .arg(a.listen_client_urls)
        .arg("--advertise-client-urls")
        .arg(a.advertise_client_url)
        .arg("--listen-peer-urls")
        .arg(a.peer_url)
        .arg("--initial-advertise-peer-urls")
        .arg(a.peer_url)
        .arg("--initial-cluster")
        .arg(a.initial_cluster);
    cmd::append_output_to(&mut c, a.log)?;
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD_") {
            c.env_remove(k);
        }
    }
    Ok(c)
}

/// `http://<ip>:<port>`, with the brackets an IPv6 address needs.
fn url(ip: IpAddr, port: u16) -> String {
    format!("http://{}", SocketAddr::new(ip, port))
}

/// The loopback address of `ip`'s family.
fn loopback(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
    }
}

/// An etcd server inside namespace `ns`, listening on `listen_ip` and the
/// namespace's loopback of the same family (`127.0.0.1`, or `::1` for an
/// IPv6 `listen_ip`, so an IPv6-only namespace needs no IPv4 address).
#[derive(Debug)]
pub struct Etcd {
    ns: String,
    listen_ip: IpAddr,
    child: ChildGuard,
    log: PathBuf,
}

impl Etcd {
    /// Starts etcd in `ns` with its data dir and log under `dir`, and waits
    /// until it reports healthy. Ports are fixed: each namespace has its own.
    pub fn start(
        ns: &str,
        listen_ip: impl Into<IpAddr>,
        dir: &Path,
        own_pgrp: bool,
    ) -> Result<Self> {
        let listen_ip = listen_ip.into();
        let data = dir.join("etcd-data");
        let log = dir.join("etcd.log");
        let client = format!(
            "{},{}",
            url(listen_ip, CLIENT_PORT),
            url(loopback(listen_ip), CLIENT_PORT)
        );
        let peer = url(loopback(listen_ip), PEER_PORT);
        let mut c = etcd_command(&EtcdArgs {
            ns,
            name: "twilltest",
            data_dir: &data,
            listen_client_urls: &client,
            advertise_client_url: &url(listen_ip, CLIENT_PORT),
            peer_url: &peer,
            initial_cluster: &format!("twilltest={peer}"),
            log: &log,
        })?;
        if own_pgrp {
            c.process_group(0);
        }
        let child = cmd::spawn(&mut c)?;
        let etcd = Etcd {
            ns: ns.to_owned(),
            listen_ip,
            child,
            log,
        };
        etcd.wait_healthy(Duration::from_secs(20))?;
        Ok(etcd)
    }

    /// Replaces this etcd by a new, empty one on the same addresses, as a
    /// wiped data directory (or an older snapshot restored) does: a new
    /// cluster ID, revisions starting over, no keys. `dir` and `own_pgrp`
    /// as given to [`Etcd::start`].
    pub fn wipe(&mut self, dir: &Path, own_pgrp: bool) -> Result<()> {
        self.child.kill();
        let data = dir.join("etcd-data");
        std::fs::remove_dir_all(&data).map_err(|source| HarnessError::Io {
            path: data.clone(),
            source,
        })?;
        *self = Etcd::start(&self.ns, self.listen_ip, dir, own_pgrp)?;
        Ok(())
    }

    /// Client URL reachable from other namespaces on the underlay.
    pub fn endpoint(&self) -> String {
        url(self.listen_ip, CLIENT_PORT)
    }

    /// Its PID (that of the etcd process itself: `ip netns exec` execs).
    pub fn pid(&self) -> i32 {
        self.child.pid()
    }

    /// Path of etcd's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        wait_for(
            "etcd to become healthy",
            timeout,
            || {
                let out = self.ctl(&["endpoint", "health"])?;
                Ok(Some(out))
            },
            || format!("\netcd log tail:\n{}", cmd::tail(&self.log, 30)),
        )
        .map(|_| ())
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut c = ip(["netns", "exec", &self.ns, "etcdctl"]);
        c.env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints={}",
                url(loopback(self.listen_ip), CLIENT_PORT)
            ))
            .arg("--command-timeout=5s")
            .args(args);
        c
    }

    /// Runs `etcdctl <args..>` against this etcd; returns stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        cmd::run_ok(&mut self.ctl_command(args))
    }

    /// Puts `value` at `key` (value piped via stdin, so any bytes are fine).
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        let mut c = self.ctl_command(&["put", key]);
        let out = cmd::run_with_stdin(&mut c, Some(value.as_bytes()))?;
        cmd::check(&c, out).map(|_| ())
    }

    /// Value at `key`, `None` when absent.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let out = self.ctl(&["get", key, "-w", "json"])?;
        Ok(parse::parse_etcdctl_get(&out)?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v))
    }

    /// All (key, value) pairs under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let out = self.ctl(&["get", "--prefix", prefix, "-w", "json"])?;
        parse::parse_etcdctl_get(&out)
    }

    /// Deletes `key`; returns how many keys were deleted.
    pub fn del(&self, key: &str) -> Result<u64> {
        let out = self.ctl(&["del", key])?;
        out.trim().parse().map_err(|e| HarnessError::Parse {
            what: format!("etcdctl del {key} output {out:?}"),
            reason: format!("{e}"),
        })
    }
}
