//! Running external commands (`ip`, `etcdctl`, `ping`, the CNI plugin) with
//! captured output, background processes killed on drop, and reading log
//! tails for failure reports.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};

use crate::error::{HarnessError, Result};

/// Renders a command line for error messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with captured stdout/stderr; a non-zero exit is
/// not an error here (see [`run_ok`]).
pub fn run(cmd: &mut Command) -> Result<Output> {
    run_with_stdin(cmd, None)
}

/// Like [`run`], feeding `stdin` to the process when given.
pub fn run_with_stdin(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Output> {
    let desc = describe(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
        cmd: desc.clone(),
        source,
    })?;
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A child that exits without reading stdin gives EPIPE: its exit
        // status and stderr below tell the real story, so ignore it here.
        let _ = pipe.write_all(data);
    }
    child
        .wait_with_output()
        .map_err(|source| HarnessError::Spawn { cmd: desc, source })
}

/// Runs `cmd` and fails unless it exits 0; returns stdout.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = run(cmd)?;
    check(cmd, out)
}

/// Turns a finished command's output into stdout, or an error carrying both
/// streams when it exited non-zero.
pub fn check(cmd: &Command, out: Output) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(HarnessError::Command {
            cmd: describe(cmd),
            status: out.status.to_string(),
            stdout: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// Sends `cmd`'s stdout and stderr to the end of `log` (created when missing,
/// never truncated, so restarts keep their history) and gives it no stdin.
pub(crate) fn append_output_to(cmd: &mut Command, log: &Path) -> Result<()> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| HarnessError::Io {
                path: log.to_path_buf(),
                source,
            })
    };
    cmd.stdin(Stdio::null()).stdout(open()?).stderr(open()?);
    Ok(())
}

/// Starts `cmd` in the background; see [`ChildGuard`].
pub(crate) fn spawn(cmd: &mut Command) -> Result<ChildGuard> {
    let desc = describe(cmd);
    match cmd.spawn() {
        Ok(child) => Ok(ChildGuard {
            pid: child.id(),
            desc,
            child: Some(child),
        }),
        Err(source) => Err(HarnessError::Spawn { cmd: desc, source }),
    }
}

/// A background process the harness started: SIGKILLed and reaped when
/// dropped, so none outlives the test that started it, passing or failing.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    pid: u32,
    desc: String,
    /// Taken only by [`ChildGuard::wait_with_output`], which consumes the
    /// guard: every other method sees it.
    child: Option<Child>,
}

impl ChildGuard {
    /// Its PID.
    pub(crate) fn pid(&self) -> i32 {
        self.pid as i32
    }

    fn child(&mut self) -> std::io::Result<&mut Child> {
        let desc = &self.desc;
        self.child
            .as_mut()
            .ok_or_else(|| std::io::Error::other(format!("{desc} was already collected")))
    }

    /// Its exit status once it has exited (reaping it), `None` while it runs.
    pub(crate) fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child()?.try_wait()
    }

    /// Kills it now (SIGKILL) and reaps it; a no-op once it was.
    pub(crate) fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A no-op for a process already reaped, whose PID may belong to
            // someone else by now.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it is still running.
    pub(crate) fn running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// Waits for it to end and collects what it wrote to the pipes it was
    /// spawned with.
    pub(crate) fn wait_with_output(mut self) -> Result<Output> {
        let Some(child) = self.child.take() else {
            return Err(HarnessError::Unknown {
                kind: "running process",
                name: self.desc.clone(),
            });
        };
        child
            .wait_with_output()
            .map_err(|source| HarnessError::Spawn {
                cmd: self.desc.clone(),
                source,
            })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Builds `ip <args..>`.
pub fn ip<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Command::new("ip");
    c.args(args);
    c
}

/// The last `lines` lines of a (log) file, or a note saying why it could not
/// be read; meant for failure messages, so it never fails itself.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}
