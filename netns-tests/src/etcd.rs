//! A real etcd (Debian's `/usr/bin/etcd`) running inside a test namespace,
//! with `etcdctl` helpers; killed by PID on drop.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{self, ip};
use crate::error::{HarnessError, Result};
use crate::parse;
use crate::wait::wait_for;

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;

/// An etcd server inside namespace `ns`, listening on `listen_ip` and the
/// namespace's loopback.
#[derive(Debug)]
pub struct Etcd {
    ns: String,
    listen_ip: Ipv4Addr,
    child: Child,
    log: PathBuf,
}

impl Etcd {
    /// Starts etcd in `ns` with its data dir and log under `dir`, and waits
    /// until it reports healthy. Ports are fixed: each namespace has its own.
    pub fn start(ns: &str, listen_ip: Ipv4Addr, dir: &Path, own_pgrp: bool) -> Result<Self> {
        let data = dir.join("etcd-data");
        let log = dir.join("etcd.log");
        let logf = File::create(&log).map_err(|source| HarnessError::Io {
            path: log.clone(),
            source,
        })?;
        let logf2 = logf.try_clone().map_err(|source| HarnessError::Io {
            path: log.clone(),
            source,
        })?;
        let client = format!("http://{listen_ip}:{CLIENT_PORT},http://127.0.0.1:{CLIENT_PORT}");
        let peer = format!("http://127.0.0.1:{PEER_PORT}");
        let mut c = ip(["netns", "exec", ns, "etcd"]);
        c.arg("--name")
            .arg("twilltest")
            .arg("--data-dir")
            .arg(&data)
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(format!("http://{listen_ip}:{CLIENT_PORT}"))
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("twilltest={peer}"))
            .stdin(Stdio::null())
            .stdout(logf)
            .stderr(logf2);
        // etcd would also read ETCD_* settings from the caller's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                c.env_remove(k);
            }
        }
        if own_pgrp {
            c.process_group(0);
        }
        let desc = cmd::describe(&c);
        let child = c
            .spawn()
            .map_err(|source| HarnessError::Spawn { cmd: desc, source })?;
        let etcd = Etcd {
            ns: ns.to_owned(),
            listen_ip,
            child,
            log,
        };
        etcd.wait_healthy(Duration::from_secs(20))?;
        Ok(etcd)
    }

    /// Client URL reachable from other namespaces on the underlay.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.listen_ip)
    }

    /// Its PID (that of the etcd process itself: `ip netns exec` execs).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
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
            .arg(format!("--endpoints=http://127.0.0.1:{CLIENT_PORT}"))
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

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
