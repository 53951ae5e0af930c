//! IP forwarding of the node's network namespace: pods reach other nodes
//! only through the node's forwarding, so the agent turns it on at start
//! (unless told not to). `/proc/sys/net` shows the sysctls of the namespace
//! of the process that opens it, so this touches only the agent's own.

use std::path::Path;

use super::{KernelError, Result};

/// The IPv4 forwarding switch.
pub const IPV4_FORWARD: &str = "net.ipv4.ip_forward";
/// The IPv6 one (`all` also sets every interface's).
pub const IPV6_FORWARD: &str = "net.ipv6.conf.all.forwarding";

/// The file of a sysctl under `root` (`/proc/sys` on a real node).
fn sysctl_path(root: &Path, key: &str) -> std::path::PathBuf {
    root.join(key.replace('.', "/"))
}

/// Turns forwarding on in the sysctls below `root`: IPv4, and IPv6 when
/// `ipv6`. Returns each key and whether it had to be turned on; a sysctl that
/// is already 1 is not written (a read-only `/proc/sys` with forwarding on
/// is fine).
pub fn enable_forwarding_in(root: &Path, ipv6: bool) -> Result<Vec<(&'static str, bool)>> {
    let mut keys = vec![IPV4_FORWARD];
    if ipv6 {
        keys.push(IPV6_FORWARD);
    }
    let mut out = Vec::new();
    for key in keys {
        let path = sysctl_path(root, key);
        let err = |source| KernelError::Sysctl { key, source };
        let now = std::fs::read_to_string(&path).map_err(err)?;
        let off = now.trim() != "1";
        if off {
            std::fs::write(&path, b"1").map_err(err)?;
        }
        out.push((key, off));
    }
    Ok(out)
}

/// `enable_forwarding_in` on the real `/proc/sys`.
pub fn enable_forwarding(ipv6: bool) -> Result<Vec<(&'static str, bool)>> {
    enable_forwarding_in(Path::new("/proc/sys"), ipv6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_proc(v4: &str, v6: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let p4 = sysctl_path(dir.path(), IPV4_FORWARD);
        let p6 = sysctl_path(dir.path(), IPV6_FORWARD);
        for (p, v) in [(p4, v4), (p6, v6)] {
            std::fs::create_dir_all(p.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(p, v).expect("write");
        }
        dir
    }

    fn read(dir: &tempfile::TempDir, key: &str) -> String {
        std::fs::read_to_string(sysctl_path(dir.path(), key)).expect("read")
    }

    #[test]
    fn forwarding_off_is_turned_on_and_reported() {
        let dir = fake_proc("0\n", "0\n");
        let got = enable_forwarding_in(dir.path(), false).expect("enable");
        assert_eq!(got, vec![(IPV4_FORWARD, true)]);
        assert_eq!(read(&dir, IPV4_FORWARD).trim(), "1");
        // IPv6 only in a cluster with IPv6.
        assert_eq!(read(&dir, IPV6_FORWARD).trim(), "0");
        let got = enable_forwarding_in(dir.path(), true).expect("enable");
        assert_eq!(got, vec![(IPV4_FORWARD, false), (IPV6_FORWARD, true)]);
        assert_eq!(read(&dir, IPV6_FORWARD).trim(), "1");
    }

    #[test]
    fn forwarding_already_on_is_not_written() {
        let dir = fake_proc("1\n", "1\n");
        let got = enable_forwarding_in(dir.path(), true).expect("enable");
        assert_eq!(got, vec![(IPV4_FORWARD, false), (IPV6_FORWARD, false)]);
        // Untouched: a write would have left "1" without the newline (and
        // would fail on a read-only /proc/sys).
        assert_eq!(read(&dir, IPV4_FORWARD), "1\n");
        assert_eq!(read(&dir, IPV6_FORWARD), "1\n");
    }

    #[test]
    fn a_missing_sysctl_names_the_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = enable_forwarding_in(dir.path(), false).expect_err("no file");
        assert!(e.to_string().contains(IPV4_FORWARD), "{e}");
    }
}
