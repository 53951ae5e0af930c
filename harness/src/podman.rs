//! Containers of the node image run with podman, the way the kubelet runs
//! the DaemonSet's (the arguments come from [`crate::daemonset`]): one run
//! to completion (an init container) or one in the background whose output
//! goes to a log file, stopped with SIGTERM, and removed on drop, also when
//! a test fails.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use crate::cmd::{self, ChildGuard};
use crate::error::{HarnessError, Result};

/// Extra time a stopped container gets beyond its grace period before the
/// wait for it ends in an error.
const STOP_SLACK: Duration = Duration::from_secs(15);

fn podman<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new("podman");
    c.args(args);
    c
}

/// Whether podman's (root's) storage holds `image`.
pub fn image_exists(image: &str) -> bool {
    cmd::run(&mut podman(["image", "exists", image])).is_ok_and(|o| o.status.success())
}

/// Highest `nproc` limit given to a container: runc here fails to set the
/// caller's own hard limit (96365) but sets this (the CNI podman test's).
const NPROC_CAP: u64 = 32768;

/// Hard limit `name` (`Max open files`) of this process, from
/// `/proc/self/limits`; `None` when unlimited or unreadable.
fn own_hard_limit(name: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let rest = text.lines().find_map(|l| l.strip_prefix(name))?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `--ulimit` arguments within this machine's hard limits. podman's
/// defaults (nofile 1048576) exceed them and runc then refuses to start
/// any container; a Kubernetes node's runtime sets its own.
pub fn ulimit_args() -> Vec<String> {
    let nofile = own_hard_limit("Max open files").unwrap_or(1024);
    let nproc = own_hard_limit("Max processes").map_or(NPROC_CAP, |n| n.min(NPROC_CAP));
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

/// `podman run --rm <args>` to its end: exit status and output.
pub fn run_to_completion(args: &[String]) -> Result<Output> {
    let mut c = podman(["run", "--rm"]);
    c.args(ulimit_args());
    c.args(args);
    cmd::run(&mut c)
}

/// A container started by [`Container::start`].
#[derive(Debug)]
pub struct Container {
    name: String,
    log: PathBuf,
    /// The foreground `podman run`: it exits with the container.
    run: Option<ChildGuard>,
}

impl Container {
    /// `podman run --rm <args>` in the background (`args` must name the
    /// container `name`), its output appended to `log`.
    pub fn start(name: &str, args: &[String], log: &Path) -> Result<Container> {
        let mut c = podman(["run", "--rm"]);
        c.args(ulimit_args());
        c.args(args);
        cmd::append_output_to(&mut c, log)?;
        let run = cmd::spawn(&mut c)?;
        Ok(Container {
            name: name.to_owned(),
            log: log.to_owned(),
            run: Some(run),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The last lines of its log, labelled, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- log of container {} ({}) ---\n{}",
            self.name,
            self.log.display(),
            cmd::tail(&self.log, lines)
        )
    }

    /// Whether `podman run` still runs (the container has not ended).
    pub fn running(&mut self) -> bool {
        self.run.as_mut().is_some_and(ChildGuard::running)
    }

    /// The PID of the container's first process, as the host sees it.
    pub fn pid(&self) -> Result<i32> {
        let out = cmd::run_ok(&mut podman([
            "inspect",
            "--format",
            "{{.State.Pid}}",
            &self.name,
        ]))?;
        out.trim()
            .parse::<i32>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| HarnessError::Parse {
                what: format!("pid of container {}", self.name),
                reason: format!("{out:?}"),
            })
    }

    /// `podman stop -t <grace>` (SIGTERM, SIGKILL after the grace period,
    /// as the kubelet does) and the container's exit status.
    pub fn stop(mut self, grace_secs: u64) -> Result<ExitStatus> {
        let grace = grace_secs.to_string();
        cmd::run_ok(&mut podman(["stop", "-t", &grace, &self.name]))?;
        let mut run = self.run.take().ok_or_else(|| HarnessError::Unknown {
            kind: "running container",
            name: self.name.clone(),
        })?;
        let deadline = Duration::from_secs(grace_secs) + STOP_SLACK;
        let start = Instant::now();
        loop {
            match run.try_wait() {
                Ok(Some(status)) => return Ok(status),
                Ok(None) if start.elapsed() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(None) => {
                    return Err(HarnessError::Timeout {
                        what: format!("podman run of {} to end after podman stop", self.name),
                        waited: deadline,
                        last: "still running".into(),
                        detail: format!("\n{}", self.log_tail(20)),
                    })
                }
                Err(source) => {
                    return Err(HarnessError::Spawn {
                        cmd: format!("podman run of {}", self.name),
                        source,
                    })
                }
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // Removes a container that still runs (a failed test); a no-op for
        // one that ended, which --rm removed.
        let _ = cmd::run(&mut podman([
            "rm", "--force", "--ignore", "--time", "0", &self.name,
        ]));
        // Reaps `podman run`, which ends with the container.
        self.run.take();
    }
}

/// Peak memory of the cgroup of process `pid` (a container's): cgroup v1
/// `memory.max_usage_in_bytes` or v2 `memory.peak`, both counting what the
/// kubelet's limit counts; else the process's own peak RSS (`VmHWM`).
pub fn memory_peak(pid: i32) -> Result<u64> {
    let read = |p: PathBuf| -> Result<String> {
        std::fs::read_to_string(&p).map_err(|source| HarnessError::Io { path: p, source })
    };
    let cgroups = read(PathBuf::from(format!("/proc/{pid}/cgroup")))?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(path)) = (controllers, path) else {
            continue;
        };
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes")
        } else if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.peak")
        } else {
            continue;
        };
        if let Ok(v) = read(PathBuf::from(&file)) {
            if let Ok(n) = v.trim().parse() {
                return Ok(n);
            }
        }
    }
    process_peak_rss(pid)
}

/// Peak resident set of process `pid` alone (`VmHWM`), in bytes.
pub fn process_peak_rss(pid: i32) -> Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status =
        std::fs::read_to_string(&path).map_err(|source| HarnessError::Io { path, source })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| HarnessError::Parse {
            what: format!("peak rss of pid {pid}"),
            reason: "no VmHWM line".into(),
        })
}

/// CPU time (user + system) the cgroup of `pid` has used so far, in
/// microseconds: cgroup v1 `cpuacct.usage` or v2 `cpu.stat` `usage_usec`.
pub fn cpu_usage_usec(pid: i32) -> Result<u64> {
    let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let cgroups =
        std::fs::read_to_string(&path).map_err(|source| HarnessError::Io { path, source })?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, cg) = (parts.next(), parts.next(), parts.next());
        let (Some(controllers), Some(cg)) = (controllers, cg) else {
            continue;
        };
        if controllers.split(',').any(|c| c == "cpuacct") {
            let f = format!("/sys/fs/cgroup/cpuacct{cg}/cpuacct.usage");
            if let Some(ns) = std::fs::read_to_string(&f)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                return Ok(ns / 1000);
            }
        } else if controllers.is_empty() {
            let f = format!("/sys/fs/cgroup{cg}/cpu.stat");
            if let Some(us) = std::fs::read_to_string(&f).ok().and_then(|v| {
                v.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|n| n.trim().parse().ok())
            }) {
                return Ok(us);
            }
        }
    }
    Err(HarnessError::Parse {
        what: format!("cpu usage of pid {pid}"),
        reason: "no cpuacct or cgroup v2 cpu.stat".into(),
    })
}

/// An image's root filesystem mounted read-only for inspection
/// (`podman image mount`, root only); unmounted on drop.
#[derive(Debug)]
pub struct ImageMount {
    image: String,
    root: PathBuf,
}

impl ImageMount {
    /// Mounts `image`.
    pub fn new(image: &str) -> Result<ImageMount> {
        let out = cmd::run_ok(&mut podman(["image", "mount", image]))?;
        Ok(ImageMount {
            image: image.to_owned(),
            root: PathBuf::from(out.trim()),
        })
    }

    /// Where its root filesystem is.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        let _ = cmd::run(&mut podman(["image", "unmount", &self.image]));
    }
}
