//! The one prerequisite gate of every crate's tests that need more than
//! cargo: root, tools on `PATH`, built workspace binaries, named conditions.
//! Something missing fails the test under `CI=true` and otherwise skips it
//! loudly, naming every missing piece.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bins;
use crate::error::{HarnessError, Result};

/// What every namespace cluster ([`crate::Cluster`]) runs.
pub const CLUSTER_TOOLS: &[&str] = &["ip", "etcd", "etcdctl", "ping"];

/// Searched after `PATH`: a non-login root shell may lack the sbin dirs.
const FALLBACK_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// Finds the executable `name` in `PATH` or the usual sbin and bin dirs; a
/// name with a `/` is taken as a path and only checked.
pub fn which(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_in(
        name,
        std::env::split_paths(&path).chain(FALLBACK_DIRS.map(PathBuf::from)),
    )
}

/// The first `dir/name` of `dirs` that is an executable file.
pub fn find_in(name: &str, dirs: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True when the environment says missing prerequisites must fail tests.
pub fn ci_strict() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// What a test needs. Build it, then [`Prereqs::require`] at the top of the
/// test: `false` means return at once (skipped, not passed).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct Prereqs {
    root: bool,
    tools: Vec<String>,
    built: Vec<String>,
    conditions: Vec<(String, bool)>,
    hint: Option<String>,
}

impl Prereqs {
    /// Needs nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Needs effective uid 0.
    pub fn root(mut self) -> Self {
        self.root = true;
        self
    }

    /// Needs each of `tools` on `PATH` (or at that path, for a name with a
    /// `/`); see [`which`].
    pub fn tools(mut self, tools: &[&str]) -> Self {
        self.tools.extend(tools.iter().map(|t| (*t).to_owned()));
        self
    }

    /// Needs each of the workspace binaries `names` built (see
    /// [`bins::binary`]).
    pub fn built(mut self, names: &[&str]) -> Self {
        self.built.extend(names.iter().map(|n| (*n).to_owned()));
        self
    }

    /// Needs `what`, which the caller found to be `ok` or not (e.g. a static
    /// busybox).
    pub fn condition(mut self, what: impl Into<String>, ok: bool) -> Self {
        self.conditions.push((what.into(), ok));
        self
    }

    /// How to get what is missing, added to the message.
    pub fn hint(mut self, how: impl Into<String>) -> Self {
        self.hint = Some(how.into());
        self
    }

    /// Every missing piece, described; empty when all is there.
    pub fn missing(&self) -> Vec<String> {
        let mut missing = Vec::new();
        if self.root && !nix::unistd::geteuid().is_root() {
            missing.push(String::from("root (run as uid 0)"));
        }
        for t in &self.tools {
            if which(t).is_some() {
                continue;
            }
            missing.push(if t.contains('/') {
                format!("executable `{t}`")
            } else {
                format!("`{t}` on PATH")
            });
        }
        for b in &self.built {
            if let Err(e) = bins::binary(b) {
                missing.push(e.to_string());
            }
        }
        for (what, ok) in &self.conditions {
            if !ok {
                missing.push(what.clone());
            }
        }
        missing
    }

    /// Ok when nothing is missing, else an error naming every missing piece
    /// (for the demo and tools, which stop instead of skipping).
    pub fn check(&self) -> Result<()> {
        let missing = self.missing();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(HarnessError::Prereq(describe(
                &missing,
                self.hint.as_deref(),
            )))
        }
    }

    /// The gate: `true` means go ahead. When something is missing this
    /// panics under `CI=true` and otherwise prints a loud SKIP to stderr (not
    /// captured by libtest) and returns `false`; the test must then return at once (it did not pass,
    /// it did not run).
    pub fn require(&self) -> bool {
        let missing = self.missing();
        match verdict(&test_name(), &missing, self.hint.as_deref(), ci_strict()) {
            Verdict::Run => true,
            Verdict::Fail(msg) => panic!("{msg}"),
            Verdict::Skip(msg) => {
                // Straight to the stderr handle, not `eprintln!`: libtest
                // captures the macro's output of a passing test, and cargo
                // reports a skipped test as passing.
                let _ = writeln!(std::io::stderr(), "\n*** {msg} ***\n");
                false
            }
        }
    }
}

/// The gate of a test that needs root and `tools`: [`Prereqs::require`].
pub fn require(tools: &[&str]) -> bool {
    Prereqs::new().root().tools(tools).require()
}

/// Gate of a namespace-cluster test: root and [`CLUSTER_TOOLS`].
pub fn require_cluster() -> bool {
    require(CLUSTER_TOOLS)
}

/// What [`Prereqs::require`] does with a list of missing pieces.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Run,
    Skip(String),
    Fail(String),
}

fn verdict(test: &str, missing: &[String], hint: Option<&str>, ci: bool) -> Verdict {
    if missing.is_empty() {
        return Verdict::Run;
    }
    let what = describe(missing, hint);
    if ci {
        Verdict::Fail(format!("CI=true and {test} cannot run: {what}"))
    } else {
        Verdict::Skip(format!(
            "SKIP: {test}: {what}. SKIPPED (NOT PASSED): this test did not run; \
             set CI=true to make this a failure (scripts/test.sh does)"
        ))
    }
}

fn describe(missing: &[String], hint: Option<&str>) -> String {
    let mut s = format!("missing {}", missing.join(", "));
    if let Some(h) = hint {
        s.push_str(&format!(" ({h})"));
    }
    s
}

/// libtest names each test's thread after the test.
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map_or_else(|| String::from("this test"), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(dir: &Path, name: &str, mode: u32) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn path_search_finds_only_executable_files_in_order() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        file(a.path(), "tool", 0o644);
        file(b.path(), "tool", 0o755);
        file(a.path(), "other", 0o700);
        std::fs::create_dir(b.path().join("adir")).unwrap();
        let dirs = || [a.path().to_owned(), b.path().to_owned()];

        assert_eq!(find_in("tool", dirs()), Some(b.path().join("tool")));
        assert_eq!(find_in("other", dirs()), Some(a.path().join("other")));
        assert_eq!(find_in("adir", dirs()), None);
        assert_eq!(find_in("absent", dirs()), None);
    }

    #[test]
    fn a_name_with_a_slash_is_a_path() {
        let d = tempfile::tempdir().unwrap();
        file(d.path(), "fake-etcd", 0o755);
        let p = d.path().join("fake-etcd");
        assert_eq!(which(p.to_str().unwrap()), Some(p.clone()));
        assert_eq!(which(d.path().join("nope").to_str().unwrap()), None);
    }

    #[test]
    fn missing_lists_every_absent_piece() {
        let d = tempfile::tempdir().unwrap();
        file(d.path(), "present", 0o755);
        let present = d.path().join("present");
        let p = Prereqs::new()
            .tools(&[
                "no-such-twill-tool",
                present.to_str().unwrap(),
                "/no/such/etcd",
            ])
            .built(&["no-such-twill-binary"])
            .condition("a static busybox at /bin/busybox", false)
            .condition("something that is there", true);
        let m = p.missing();
        assert_eq!(m.len(), 4, "{m:?}");
        assert_eq!(m[0], "`no-such-twill-tool` on PATH");
        assert_eq!(m[1], "executable `/no/such/etcd`");
        assert!(m[2].contains("no-such-twill-binary"), "{m:?}");
        assert!(m[2].contains("cargo build --workspace"), "{m:?}");
        assert_eq!(m[3], "a static busybox at /bin/busybox");
        assert!(Prereqs::new()
            .tools(&[present.to_str().unwrap()])
            .missing()
            .is_empty());
    }

    #[test]
    fn check_names_every_missing_piece_and_the_hint() {
        let e = Prereqs::new()
            .tools(&["no-such-a", "no-such-b"])
            .hint("apt install ab")
            .check()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`no-such-a` on PATH, `no-such-b` on PATH"),
            "{e}"
        );
        assert!(e.contains("(apt install ab)"), "{e}");
        assert!(Prereqs::new().check().is_ok());
    }

    #[test]
    fn verdict_runs_skips_loudly_or_fails_under_ci() {
        let missing = vec![
            String::from("root (run as uid 0)"),
            String::from("`ip` on PATH"),
        ];
        assert_eq!(verdict("t", &[], None, true), Verdict::Run);
        assert_eq!(verdict("t", &[], None, false), Verdict::Run);
        let Verdict::Fail(f) = verdict("my_test", &missing, None, true) else {
            panic!("CI=true must fail");
        };
        assert_eq!(
            f,
            "CI=true and my_test cannot run: missing root (run as uid 0), `ip` on PATH"
        );
        let Verdict::Skip(s) = verdict("my_test", &missing, Some("hint"), false) else {
            panic!("without CI a missing piece skips");
        };
        assert!(
            s.starts_with("SKIP: my_test: missing root (run as uid 0), `ip` on PATH (hint)."),
            "{s}"
        );
        assert!(s.contains("SKIPPED (NOT PASSED)"), "{s}");
    }

    #[test]
    fn the_test_name_comes_from_the_test_thread() {
        assert!(test_name().ends_with("the_test_name_comes_from_the_test_thread"));
    }
}
