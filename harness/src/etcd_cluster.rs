//! A multi-member etcd cluster inside a test namespace (one member per
//! address on the underlay bridge), with members that can be killed and
//! brought back on their data dir; every member is killed by PID on drop.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cmd::{self, ip, ChildGuard};
use crate::error::{HarnessError, Result};
use crate::etcd::{etcd_command, EtcdArgs};
use crate::netns::Netns;
use crate::parse;
use crate::wait::wait_for;

const CLIENT_PORT: u16 = 2379;
const PEER_PORT: u16 = 2380;
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Member {
    name: String,
    ip: Ipv4Addr,
    data: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl Member {
    fn endpoint(&self) -> String {
        format!("http://{}:{CLIENT_PORT}", self.ip)
    }

    fn peer(&self) -> String {
        format!("http://{}:{PEER_PORT}", self.ip)
    }

    /// SIGKILLs and reaps the process (dropping its guard does).
    fn stop(&mut self) {
        self.child = None;
    }
}

/// etcd members named `m1..mN` on `ips` in namespace `ns`; the addresses
/// must already be configured there (see [`EtcdCluster::start`]).
#[derive(Debug)]
pub struct EtcdCluster {
    ns: String,
    initial_cluster: String,
    members: Vec<Member>,
    own_pgrp: bool,
}

impl EtcdCluster {
    /// Adds `ips` to `bridge` in `ns`, starts one member per address (data
    /// dirs and logs under `dir`) and waits until every member is healthy.
    pub fn start(
        ns: &Netns,
        bridge: &str,
        ips: &[Ipv4Addr],
        dir: &Path,
        own_pgrp: bool,
    ) -> Result<Self> {
        for a in ips {
            ns.ip(["addr", "add", &format!("{a}/24"), "dev", bridge])?;
        }
        let members: Vec<Member> = ips
            .iter()
            .enumerate()
            .map(|(i, a)| Member {
                name: format!("m{}", i + 1),
                ip: *a,
                data: dir.join(format!("etcd-m{}", i + 1)),
                log: dir.join(format!("etcd-m{}.log", i + 1)),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer()))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            ns: ns.name().to_owned(),
            initial_cluster,
            members,
            own_pgrp,
        };
        // All members must be up before any of them can elect a leader.
        for i in 0..c.members.len() {
            c.spawn(i)?;
        }
        for i in 0..c.members.len() {
            c.wait_member_healthy(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let m = self.member(i)?;
        let mut c = etcd_command(&EtcdArgs {
            ns: &self.ns,
            name: &m.name,
            data_dir: &m.data,
            listen_client_urls: &m.endpoint(),
            advertise_client_url: &m.endpoint(),
            peer_url: &m.peer(),
            initial_cluster: &self.initial_cluster,
            log: &m.log,
        })?;
        c.arg("--initial-cluster-token").arg(&self.ns);
        if self.own_pgrp {
            c.process_group(0);
        }
        let child = cmd::spawn(&mut c)?;
        if let Some(m) = self.members.get_mut(i) {
            m.child = Some(child);
        }
        Ok(())
    }

    fn member(&self, i: usize) -> Result<&Member> {
        self.members.get(i).ok_or_else(|| HarnessError::Unknown {
            kind: "etcd member",
            name: format!("#{i}"),
        })
    }

    fn wait_member_healthy(&self, i: usize) -> Result<()> {
        let m = self.member(i)?;
        let ep = m.endpoint();
        wait_for(
            &format!("etcd member {} ({ep}) to become healthy", m.name),
            HEALTHY_TIMEOUT,
            || cmd::run_ok(&mut self.ctl_command(&ep, &["endpoint", "health"])).map(Some),
            || format!("\netcd log tail:\n{}", cmd::tail(&m.log, 30)),
        )
        .map(|_| ())
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether the cluster has no members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Client URLs of all members (running or not), as agents get them.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// Log file of member `i`.
    pub fn log_path(&self, i: usize) -> Result<&Path> {
        self.member(i).map(|m| m.log.as_path())
    }

    /// PID of member `i`, `None` while it is killed.
    pub fn pid(&self, i: usize) -> Option<i32> {
        self.members
            .get(i)
            .and_then(|m| m.child.as_ref())
            .map(ChildGuard::pid)
    }

    /// SIGKILLs member `i` (its data dir stays for [`EtcdCluster::restart`]).
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.member(i)?;
        if let Some(m) = self.members.get_mut(i) {
            m.stop();
        }
        Ok(())
    }

    /// Starts member `i` again on its data dir. Does not wait: a lone member
    /// cannot become healthy until a quorum is back (see
    /// [`EtcdCluster::wait_healthy`]).
    pub fn restart(&mut self, i: usize) -> Result<()> {
        if self.member(i)?.child.is_some() {
            return Err(HarnessError::Exists {
                kind: "running etcd member",
                name: format!("m{}", i + 1),
            });
        }
        self.spawn(i)
    }

    /// Waits until every running member reports healthy.
    pub fn wait_healthy(&self) -> Result<()> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_some() {
                self.wait_member_healthy(i)?;
            }
        }
        Ok(())
    }

    fn ctl_command(&self, endpoints: &str, args: &[&str]) -> Command {
        let mut c = ip(["netns", "exec", &self.ns, "etcdctl"]);
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoints}"))
            .arg("--command-timeout=5s")
            .args(args);
        c
    }

    fn running_endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(Member::endpoint)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `etcdctl <args..>` against the running members; returns stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        cmd::run_ok(&mut self.ctl_command(&self.running_endpoints(), args))
    }

    /// Puts `value` at `key` (piped via stdin, so any bytes are fine).
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        let mut c = self.ctl_command(&self.running_endpoints(), &["put", key]);
        let out = cmd::run_with_stdin(&mut c, Some(value.as_bytes()))?;
        cmd::check(&c, out).map(|_| ())
    }

    /// All (key, value) pairs under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let out = self.ctl(&["get", "--prefix", prefix, "-w", "json"])?;
        parse::parse_etcdctl_get(&out)
    }

    /// Log tails of every member, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        self.members
            .iter()
            .map(|m| format!("--- etcd {} log ---\n{}", m.name, cmd::tail(&m.log, lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
