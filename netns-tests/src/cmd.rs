//! Running external commands (`ip`, `etcdctl`, `ping`, the CNI plugin) with
//! captured output, and reading log tails for failure reports.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

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
