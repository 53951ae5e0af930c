//! The one network namespace guard of every crate's root tests, the bench
//! and the demo: per-run unique names, created on `new`, their processes
//! killed and the namespace deleted on drop (also when a test panics).

use std::ffi::OsStr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::{self, ip, ChildGuard};
use crate::error::Result;

/// Prefix every test namespace name starts with; `scripts/test.sh` looks
/// for leftovers with it (`tw<pid hex>x<n>-`).
pub const TEST_PREFIX: &str = "tw";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A prefix unique to this process and call, e.g. `tw1f3ax0`: the pid keeps
/// concurrent test binaries apart, the counter concurrent tests in one. A
/// run can set its own leading part in `TWILL_TEST_NS_PREFIX` (1 to 6
/// lowercase letters or digits) so that its leak check sees only its own
/// namespaces on a machine where other runs make namespaces too.
pub fn run_prefix() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let lead = std::env::var("TWILL_TEST_NS_PREFIX")
        .ok()
        .filter(|p| valid_lead(p))
        .unwrap_or_else(|| TEST_PREFIX.to_owned());
    format!("{lead}{:x}x{n}", std::process::id())
}

fn valid_lead(p: &str) -> bool {
    (1..=6).contains(&p.len())
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// A network namespace this process created and owns.
#[derive(Debug)]
pub struct Netns {
    name: String,
    pids: Mutex<Vec<i32>>,
}

impl Netns {
    /// `ip netns add <name>` and bring `lo` up.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        cmd::run_ok(&mut ip(["netns", "add", &name]))?;
        // From here on the guard exists, so a failure below still deletes it.
        let ns = Netns {
            name,
            pids: Mutex::new(Vec::new()),
        };
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `<run prefix>-<role>` (see [`run_prefix`]): the name of a namespace
    /// that `scripts/test.sh`'s leak check looks for.
    pub fn unique(role: &str) -> Result<Self> {
        Self::new(format!("{}-{role}", run_prefix()))
    }

    /// The namespace's name (as in `/run/netns/<name>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its path, the `CNI_NETNS` of a pod.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Registers a process to be killed (SIGKILL) before the namespace goes.
    pub fn register_pid(&self, pid: i32) {
        if let Ok(mut p) = self.pids.lock() {
            p.push(pid);
        }
    }

    /// A `Command` running `program args..` inside this namespace.
    pub fn command<I, S>(&self, program: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = ip(["netns", "exec", &self.name, program]);
        c.args(args);
        c
    }

    /// Starts `cmd` (one running inside this namespace) in the background,
    /// its PID registered so the namespace's teardown kills it too.
    pub(crate) fn spawn(&self, cmd: &mut Command) -> Result<ChildGuard> {
        let child = cmd::spawn(cmd)?;
        self.register_pid(child.pid());
        Ok(child)
    }

    /// Runs `argv` inside the namespace; a non-zero exit is returned, not an
    /// error.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<Output> {
        let (prog, rest) = split(argv);
        cmd::run(&mut self.command(&prog, rest))
    }

    /// Runs `argv` inside the namespace and returns stdout; fails on a
    /// non-zero exit.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String> {
        let (prog, rest) = split(argv);
        cmd::run_ok(&mut self.command(&prog, rest))
    }

    /// `ip -n <ns> <args..>`, failing on a non-zero exit.
    pub fn ip<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cmd::run_ok(&mut self.ip_command(args))
    }

    /// `ip -n <ns> <args..>` for a test that expects it may fail: whether it
    /// exited 0, and its stdout (empty when it could not run).
    pub fn try_ip<I, S>(&self, args: I) -> (bool, String)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        match cmd::run(&mut self.ip_command(args)) {
            Ok(out) => (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            ),
            Err(_) => (false, String::new()),
        }
    }

    fn ip_command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = ip(["-n", &self.name]);
        c.args(args);
        c
    }

    /// The names of the links in the namespace (`eth0`, not `eth0@if7`).
    pub fn link_names(&self) -> Result<Vec<String>> {
        let out = self.ip(["-o", "link", "show"])?;
        Ok(out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect())
    }

    /// Whether one ping to `ip` from inside the namespace is answered within
    /// `wait_secs`. Each call is a fresh process: a new ICMP id, so a new
    /// conntrack entry.
    pub fn ping_once(&self, ip: &str, wait_secs: u32) -> bool {
        self.exec(&["ping", "-n", "-q", "-c1", &format!("-W{wait_secs}"), ip])
            .is_ok_and(|o| o.status.success())
    }
}

fn split<S: AsRef<OsStr>>(argv: &[S]) -> (String, &[S]) {
    match argv.split_first() {
        Some((p, rest)) => (p.as_ref().to_string_lossy().into_owned(), rest),
        None => (String::from("true"), argv),
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let registered = self.pids.lock().map(|p| p.clone()).unwrap_or_default();
        // Anything still running in the namespace was started by us into a
        // namespace we created: kill it, or the netns would stay alive.
        let inside = cmd::run_ok(&mut ip(["netns", "pids", &self.name]))
            .map(|s| {
                s.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for pid in registered.iter().chain(inside.iter()) {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        if let Err(e) = cmd::run_ok(&mut ip(["netns", "del", &self.name])) {
            eprintln!("twill-harness: cannot delete netns {}: {e}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_leads_must_be_short_lowercase_alphanumerics() {
        assert!(valid_lead("t3fa2"));
        assert!(!valid_lead(""));
        assert!(!valid_lead("toolongx"));
        assert!(!valid_lead("Tw"));
        assert!(!valid_lead("t-1"));
    }
}
