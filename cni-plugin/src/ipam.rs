//! Built-in host-local IPAM: one file per reserved address under
//! `<dataDir>/<network>/`, created atomically (write a temp file, then
//! `link(2)` it, which fails if the name exists), with a `flock`ed `lock` file
//! serialising allocations across plugin processes and a `last_reserved_ip`
//! cursor so allocation continues after the last handed-out address.
//!
//! Temp files are only ever created and removed while the lock is held, so
//! any temp file seen under the lock belongs to a plugin that died mid-ADD:
//! DEL and GC remove them.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

use crate::error::Error;

const LOCK_FILE: &str = "lock";
const CURSOR_FILE: &str = "last_reserved_ip";
/// Prefix of the per-allocation temp file that is linked under the IP name.
const RESERVE_TMP_PREFIX: &str = ".reserve-";

/// One reserved address and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
}

/// Address store of one network on this node.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
}

/// The usable host range of a node subnet, gateway excluded separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: u32,
    pub last: u32,
    pub gateway: u32,
}

impl Range {
    pub fn of(gateway_net: Ipv4Net) -> Self {
        let net = u32::from(gateway_net.network());
        let bcast = u32::from(gateway_net.broadcast());
        Range {
            first: net.saturating_add(1),
            last: bcast.saturating_sub(1),
            gateway: u32::from(gateway_net.addr()),
        }
    }

    /// Number of addresses pods may get.
    pub fn capacity(&self) -> u64 {
        let span = u64::from(self.last) + 1 - u64::from(self.first);
        if (self.first..=self.last).contains(&self.gateway) {
            span - 1
        } else {
            span
        }
    }

    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= self.first && n <= self.last && n != self.gateway
    }

    /// Every usable address once, starting right after `cursor` and wrapping.
    pub fn candidates_after(&self, cursor: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> {
        let Range {
            first,
            last,
            gateway,
        } = *self;
        let start = match cursor.map(u32::from) {
            Some(c) if c >= first && c < last => c + 1,
            _ => first,
        };
        let span = u64::from(last) + 1 - u64::from(first);
        (0..span)
            .map(move |i| {
                let off = (u64::from(start - first) + i) % span;
                // off < span <= 2^32 so this fits.
                first + off as u32
            })
            .filter(move |n| *n != gateway)
            .map(Ipv4Addr::from)
    }
}

impl Ipam {
    /// Opens (creating if needed) the store of `network` under `data_dir`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, Error> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| Error::ipam(&dir, e))?;
        Ok(Ipam { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Flock<File>, Error> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::ipam(&path, e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::ipam(&path, std::io::Error::from(errno)))
    }

    fn read_cursor(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join(CURSOR_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn write_cursor(&self, ip: Ipv4Addr) -> Result<(), Error> {
        let path = self.dir.join(CURSOR_FILE);
        let tmp = self.dir.join(format!(".{CURSOR_FILE}.tmp"));
        fs::write(&tmp, ip.to_string()).map_err(|e| Error::ipam(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::ipam(&path, e))
    }

    /// Reserves an address of the node subnet for `(container_id, ifname)`:
    /// `requested` if given, else the next free one after the cursor.
    pub fn allocate(
        &self,
        gateway_net: Ipv4Net,
        container_id: &str,
        ifname: &str,
        requested: Option<Ipv4Addr>,
    ) -> Result<Ipv4Addr, Error> {
        let range = Range::of(gateway_net);
        if let Some(ip) = requested {
            if !range.is_usable(ip) {
                return Err(Error::AddressUnavailable {
                    ip,
                    reason: format!(
                        "not a usable pod address of node subnet {}",
                        gateway_net.trunc()
                    ),
                });
            }
        }
        let _lock = self.lock()?;
        // The content is written once to a private temp file and then linked
        // under each candidate name: link() is atomic and never overwrites.
        // Named by PID only: a container ID may be as long as a file name.
        let tmp = self
            .dir
            .join(format!("{RESERVE_TMP_PREFIX}{}", std::process::id()));
        let mut f = File::create(&tmp).map_err(|e| Error::ipam(&tmp, e))?;
        let body = format!("{container_id}\n{ifname}");
        let written = f
            .write_all(body.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::ipam(&tmp, e));
        drop(f);
        let outcome =
            written.and_then(|()| self.link_first_free(&tmp, range, requested, gateway_net));
        let _ = fs::remove_file(&tmp);
        let ip = outcome?;
        if requested.is_none() {
            if let Err(e) = self.write_cursor(ip) {
                let _ = fs::remove_file(self.dir.join(ip.to_string()));
                return Err(e);
            }
        }
        Ok(ip)
    }

    fn link_first_free(
        &self,
        tmp: &Path,
        range: Range,
        requested: Option<Ipv4Addr>,
        gateway_net: Ipv4Net,
    ) -> Result<Ipv4Addr, Error> {
        if let Some(ip) = requested {
            let path = self.dir.join(ip.to_string());
            return match fs::hard_link(tmp, &path) {
                Ok(()) => Ok(ip),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(Error::AddressUnavailable {
                    ip,
                    reason: "already reserved".into(),
                }),
                Err(e) => Err(Error::ipam(&path, e)),
            };
        }
        for ip in range.candidates_after(self.read_cursor()) {
            let path = self.dir.join(ip.to_string());
            match fs::hard_link(tmp, &path) {
                Ok(()) => return Ok(ip),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::ipam(&path, e)),
            }
        }
        Err(Error::SubnetExhausted {
            subnet: gateway_net.trunc().to_string(),
        })
    }

    /// All reservations, in no particular order; unreadable entries skipped.
    pub fn list(&self) -> Result<Vec<Reservation>, Error> {
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::ipam(&self.dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::ipam(&self.dir, e))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) else {
                continue;
            };
            let Ok(body) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let mut lines = body.lines();
            let container_id = lines.next().unwrap_or_default().trim().to_string();
            let ifname = lines.next().unwrap_or_default().trim().to_string();
            out.push(Reservation {
                ip,
                container_id,
                ifname,
            });
        }
        Ok(out)
    }

    /// The address reserved for `(container_id, ifname)`, if any.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Option<Ipv4Addr>, Error> {
        Ok(self
            .list()?
            .into_iter()
            .find(|r| r.container_id == container_id && r.ifname == ifname)
            .map(|r| r.ip))
    }

    /// Releases every address of `(container_id, ifname)`; none is fine.
    /// Also removes temp files left by plugins killed mid-allocation.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, Error> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        for r in self.list()? {
            if r.container_id == container_id && r.ifname == ifname {
                self.remove(r.ip)?;
                released.push(r.ip);
            }
        }
        match self.sweep_stale_temp_files().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(released),
        }
    }

    /// Removes every temp file of the store. Only sound with the lock held:
    /// then no live plugin owns one. Keeps going past failures.
    fn sweep_stale_temp_files(&self) -> Vec<Error> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => return vec![Error::ipam(&self.dir, e)],
        };
        let cursor_tmp = format!(".{CURSOR_FILE}.tmp");
        let mut errors = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with(RESERVE_TMP_PREFIX) || name == cursor_tmp) {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => errors.push(Error::ipam(entry.path(), e)),
            }
        }
        errors
    }

    /// Releases `ip` only if `(container_id, ifname)` still owns it; used to
    /// undo a failed ADD without touching anything else.
    pub fn release_ip(&self, ip: Ipv4Addr, container_id: &str, ifname: &str) -> Result<(), Error> {
        let _lock = self.lock()?;
        let path = self.dir.join(ip.to_string());
        let body = match fs::read_to_string(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::ipam(&path, e)),
        };
        if body == format!("{container_id}\n{ifname}") {
            self.remove(ip)?;
        }
        Ok(())
    }

    fn remove(&self, ip: Ipv4Addr) -> Result<(), Error> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::ipam(&path, e)),
        }
    }

    /// Releases every reservation whose owner is not in `keep`. Keeps going
    /// past failures; returns what was released and what failed.
    pub fn gc(
        &self,
        keep: &HashSet<(String, String)>,
    ) -> Result<(Vec<Reservation>, Vec<Error>), Error> {
        let _lock = self.lock()?;
        let mut released = Vec::new();
        let mut errors = Vec::new();
        for r in self.list()? {
            if keep.contains(&(r.container_id.clone(), r.ifname.clone())) {
                continue;
            }
            match self.remove(r.ip) {
                Ok(()) => released.push(r),
                Err(e) => errors.push(e),
            }
        }
        errors.extend(self.sweep_stale_temp_files());
        Ok((released, errors))
    }

    /// How many usable addresses of the subnet are not reserved.
    pub fn free_count(&self, gateway_net: Ipv4Net) -> Result<u64, Error> {
        let range = Range::of(gateway_net);
        let used = self
            .list()?
            .iter()
            .filter(|r| range.is_usable(r.ip))
            .count() as u64;
        Ok(range.capacity().saturating_sub(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn range_skips_network_gateway_broadcast() {
        let r = Range::of(net("10.244.3.1/29"));
        let all: Vec<_> = r.candidates_after(None).collect();
        let want: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 244, 3, i)).collect();
        assert_eq!(all, want);
        assert_eq!(r.capacity(), 5);
        // After .5 comes .6, then wrap to .2 (skipping .1, the gateway).
        let after: Vec<_> = r.candidates_after(Some(ip("10.244.3.5"))).collect();
        assert_eq!(after[0], ip("10.244.3.6"));
        assert_eq!(after[1], ip("10.244.3.2"));
        assert_eq!(after.len(), 5);
        // A gateway that is not .1 is skipped too.
        let r = Range::of(net("10.244.3.4/29"));
        assert!(!r.candidates_after(None).any(|a| a == ip("10.244.3.4")));
        assert!(!r.is_usable(ip("10.244.3.0")) && !r.is_usable(ip("10.244.3.7")));
    }

    #[test]
    fn allocation_follows_cursor_and_exhausts() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "net").unwrap();
        let gw = net("10.244.3.1/29");
        let a = ipam.allocate(gw, "c1", "eth0", None).unwrap();
        let b = ipam.allocate(gw, "c2", "eth0", None).unwrap();
        assert_eq!((a, b), (ip("10.244.3.2"), ip("10.244.3.3")));
        let body = fs::read_to_string(dir.path().join("net/10.244.3.2")).unwrap();
        assert_eq!(body, "c1\neth0");
        // Releasing a does not make the next allocation reuse it: the cursor
        // moves on first.
        assert_eq!(ipam.release("c1", "eth0").unwrap(), vec![a]);
        let c = ipam.allocate(gw, "c3", "eth0", None).unwrap();
        assert_eq!(c, ip("10.244.3.4"));
        ipam.allocate(gw, "c4", "eth0", None).unwrap();
        ipam.allocate(gw, "c5", "eth0", None).unwrap();
        // Wraps around to the freed .2.
        assert_eq!(ipam.allocate(gw, "c6", "eth0", None).unwrap(), a);
        let e = ipam.allocate(gw, "c7", "eth0", None).unwrap_err();
        assert_eq!(e.code(), 100);
        assert_eq!(ipam.free_count(gw).unwrap(), 0);
        assert_eq!(ipam.find("c3", "eth0").unwrap(), Some(c));
        assert_eq!(ipam.find("c3", "eth1").unwrap(), None);
        // No temp files left behind.
        let names: Vec<String> = fs::read_dir(ipam.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".reserve")),
            "{names:?}"
        );
    }

    #[test]
    fn release_of_unknown_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "net").unwrap();
        assert!(ipam.release("nope", "eth0").unwrap().is_empty());
        let gw = net("10.244.3.1/24");
        let a = ipam.allocate(gw, "c1", "eth0", None).unwrap();
        ipam.release_ip(a, "other", "eth0").unwrap();
        assert_eq!(ipam.find("c1", "eth0").unwrap(), Some(a));
        ipam.release_ip(a, "c1", "eth0").unwrap();
        assert_eq!(ipam.find("c1", "eth0").unwrap(), None);
    }

    #[test]
    fn release_and_gc_remove_temp_files_of_dead_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "net").unwrap();
        let gw = net("10.244.3.1/24");
        let a = ipam.allocate(gw, "live", "eth0", None).unwrap();
        // What a plugin killed between writing and linking leaves behind.
        let stale = [".reserve-4242-dead-eth0", ".last_reserved_ip.tmp"];
        let temps = || stale.iter().filter(|n| ipam.dir().join(n).exists()).count();
        for name in stale {
            fs::write(ipam.dir().join(name), "dead\neth0").unwrap();
        }
        assert_eq!(temps(), 2);
        assert!(ipam.release("dead", "eth0").unwrap().is_empty());
        assert_eq!(temps(), 0);
        assert_eq!(ipam.find("live", "eth0").unwrap(), Some(a));

        for name in stale {
            fs::write(ipam.dir().join(name), "dead\neth0").unwrap();
        }
        let keep: HashSet<_> = [("live".to_string(), "eth0".to_string())].into();
        let (released, errors) = ipam.gc(&keep).unwrap();
        assert!(released.is_empty() && errors.is_empty());
        assert_eq!(temps(), 0);
        assert_eq!(ipam.find("live", "eth0").unwrap(), Some(a));
    }

    #[test]
    fn static_requests() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "net").unwrap();
        let gw = net("10.244.3.1/24");
        assert_eq!(
            ipam.allocate(gw, "c1", "eth0", Some(ip("10.244.3.50")))
                .unwrap(),
            ip("10.244.3.50")
        );
        for bad in [
            "10.244.3.50",
            "10.244.3.1",
            "10.244.3.0",
            "10.244.3.255",
            "10.244.4.5",
        ] {
            let e = ipam.allocate(gw, "c2", "eth0", Some(ip(bad))).unwrap_err();
            assert_eq!(e.code(), 102, "{bad}");
        }
        // A static request does not move the cursor.
        assert_eq!(
            ipam.allocate(gw, "c3", "eth0", None).unwrap(),
            ip("10.244.3.2")
        );
    }

    #[test]
    fn gc_keeps_only_valid_attachments() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "net").unwrap();
        let gw = net("10.244.3.1/24");
        let keep_ip = ipam.allocate(gw, "keep", "eth0", None).unwrap();
        ipam.allocate(gw, "keep", "eth1", None).unwrap();
        ipam.allocate(gw, "gone", "eth0", None).unwrap();
        let keep: HashSet<_> = [("keep".to_string(), "eth0".to_string())].into();
        let (released, errors) = ipam.gc(&keep).unwrap();
        assert!(errors.is_empty());
        let mut owners: Vec<_> = released
            .iter()
            .map(|r| (r.container_id.as_str(), r.ifname.as_str()))
            .collect();
        owners.sort();
        assert_eq!(owners, vec![("gone", "eth0"), ("keep", "eth1")]);
        let left = ipam.list().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].ip, keep_ip);
    }

    #[test]
    fn concurrent_allocations_are_distinct() {
        let dir = tempfile::tempdir().unwrap();
        let data = Arc::new(dir.path().to_path_buf());
        let gw = net("10.244.3.1/24");
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let data = Arc::clone(&data);
                std::thread::spawn(move || {
                    // Each thread opens its own store and lock fd, as separate
                    // plugin processes would.
                    let ipam = Ipam::open(&data, "net").unwrap();
                    (0..10)
                        .map(|i| {
                            ipam.allocate(gw, &format!("c{t}-{i}"), "eth0", None)
                                .unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Ipv4Addr> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), 160);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 160, "duplicate addresses handed out");
        let range = Range::of(gw);
        assert!(all.iter().all(|a| range.is_usable(*a)));
        let ipam = Ipam::open(&data, "net").unwrap();
        assert_eq!(ipam.list().unwrap().len(), 160);
        assert_eq!(ipam.free_count(gw).unwrap(), 253 - 160);
    }
}
