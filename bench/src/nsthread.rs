//! Running work inside a network namespace from a dedicated thread: `setns`
//! moves only the calling thread, so the work (and every child process it
//! spawns, which inherits the thread's namespace) gets a fresh thread that
//! dies afterwards and never serves anything else.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Runs `f` on a new thread that first joins the network namespace at
/// `ns_path` (e.g. `/run/netns/<name>`), and returns its result.
pub fn in_netns<T, F>(ns_path: &Path, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let path = ns_path.to_path_buf();
    let handle = std::thread::spawn(move || -> anyhow::Result<T> {
        enter(&path)?;
        f()
    });
    handle
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", ns_path.display()))?
}

/// Moves the calling thread into the network namespace at `path`. Only call
/// this on a thread made for the purpose.
pub fn enter(path: &Path) -> anyhow::Result<()> {
    let f = File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot open netns {}: {e}", path.display()))?;
    setns(&f, CloneFlags::CLONE_NEWNET)
        .map_err(|e| anyhow::anyhow!("setns into {} failed: {e}", path.display()))
}
