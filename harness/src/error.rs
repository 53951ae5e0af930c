//! The harness's error type: every failure names the command, file, host or
//! condition it was about, so a failing end-to-end test explains itself.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the harness can fail with.
#[derive(thiserror::Error)]
pub enum HarnessError {
    #[error("missing test prerequisites: {0}")]
    Prereq(String),
    #[error("cannot spawn `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("command `{cmd}` failed ({status}): stdout: {stdout:?} stderr: {stderr:?}")]
    Command {
        cmd: String,
        status: String,
        stdout: String,
        stderr: String,
    },
    #[error("timed out after {}s waiting for {what}; last observation: {last}{detail}", waited.as_secs())]
    Timeout {
        what: String,
        waited: Duration,
        last: String,
        detail: String,
    },
    #[error("binary {} not found (run cargo build --workspace first, or set TWILL_BIN_DIR)", path.display())]
    MissingBinary { path: PathBuf },
    #[error("cannot parse {what}: {reason}")]
    Parse { what: String, reason: String },
    #[error("unknown {kind} {name:?}")]
    Unknown { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists")]
    Exists { kind: &'static str, name: String },
    #[error("cni {command} of pod {pod} failed ({status}): {output}")]
    Cni {
        command: String,
        pod: String,
        status: String,
        output: String,
    },
    #[error("i/o on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("signal {signal} to pid {pid} failed: {source}")]
    Signal {
        pid: i32,
        signal: String,
        source: nix::Error,
    },
}

/// Shorthand used across the harness.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

// Tests `unwrap()` these: Debug prints the Display text so multi-line log
// tails in the message stay readable instead of showing escaped `\n`s.
impl std::fmt::Debug for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}
