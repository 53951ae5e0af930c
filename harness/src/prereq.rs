//! Checks what the netns tests need (root, `ip`, `etcd`, `etcdctl`, `ping`)
//! and turns a missing piece into a failure under `CI=true` or a loud skip.

use std::path::{Path, PathBuf};

use crate::error::{HarnessError, Result};

const TOOLS: &[&str] = &["ip", "etcd", "etcdctl", "ping"];

/// Finds `name` in `$PATH` (or the usual sbin dirs, which a non-login root
/// shell may lack).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Ok when every prerequisite is present, else an error listing all that
/// are missing.
pub fn check_prereqs() -> Result<()> {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push(String::from("root (run as uid 0)"));
    }
    for t in TOOLS {
        if which(t).is_none() {
            missing.push(format!("`{t}` binary in PATH"));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(HarnessError::Prereq(missing.join(", ")))
    }
}

/// True when the environment says missing prerequisites must fail tests.
pub fn ci_strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Gate for every netns test: `true` means go ahead. When something is
/// missing this panics under `CI=true` and otherwise prints a loud SKIP and
/// returns `false` (the test must return early; it did not pass, it did not
/// run).
pub fn require_prereqs() -> bool {
    match check_prereqs() {
        Ok(()) => true,
        Err(e) if ci_strict() => panic!("CI=true and {e}"),
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED (NOT PASSED): {e}. This netns test did not run; \
                 run as root with etcd installed (scripts/test.sh). ***\n"
            );
            false
        }
    }
}
