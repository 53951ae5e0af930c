//! Built-in host-local IPAM: one file per reserved address under
//! `<dataDir>/<network>/` (named by the address, IPv4 or IPv6), created
//! atomically (write a temp file, then `link(2)` it, which fails if the name
//! exists), with a `flock`ed `lock` file serialising allocations across plugin
//! processes and one cursor per family (`last_reserved_ip`,
//! `last_reserved_ip.6`) so allocation continues after the last handed-out
//! address: the walk from the cursor stops at the first free name, so even a
//! /64 is never scanned.
//!
//! Temp files are only ever created and removed while the lock is held, so
//! any temp file seen under the lock belongs to a plugin that died mid-ADD:
//! DEL and GC remove them.
//!
//! Every file of the store is opened non-blocking and without following a
//! symlink ([`open_in_store`]), so nothing in the directory (a FIFO named
//! like an address, a directory, a symlink) can make a call block, least of
//! all while it holds the lock. An entry named like an address that is not a
//! reservation this plugin wrote (not a regular file, or not UTF-8) still
//! occupies its address, is ignored by DEL and CHECK, and is removed by GC.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use nix::fcntl::{Flock, FlockArg};

use crate::error::Error;

mod files;
use files::{open_in_store, read_small, remove_any};
pub use files::{open_regular, read_regular};

const LOCK_FILE: &str = "lock";
const CURSOR_FILE: &str = "last_reserved_ip";
const CURSOR_FILE_V6: &str = "last_reserved_ip.6";
/// Width of a cursor file: the longest IPv6 address text.
const CURSOR_WIDTH: usize = 39;
/// Prefix of the per-allocation temp file that is linked under the IP name.
const RESERVE_TMP_PREFIX: &str = ".reserve-";
/// One reserved address and its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub ip: IpAddr,
    pub container_id: String,
    pub ifname: String,
}

/// An entry of the store named like an address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    /// A reservation this plugin wrote.
    Owned(Reservation),
    /// Anything else under an address' name (a directory, a FIFO, a
    /// symlink, a file that is not UTF-8): it keeps its address from being
    /// handed out, only GC removes it.
    Foreign { ip: IpAddr, path: PathBuf },
}

/// One address wanted by an ADD: from the node subnet `gateway_net`
/// (gateway address / subnet length), `requested` if set, else the next
/// free one after the family's cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub gateway_net: IpNet,
    pub requested: Option<IpAddr>,
}

/// Address store of one network on this node.
#[derive(Debug, Clone)]
pub struct Ipam {
    dir: PathBuf,
}

/// The usable host range of a node subnet as integers, gateway excluded
/// separately. IPv4 loses the network and broadcast addresses; IPv6 has no
/// broadcast and loses only the subnet-router anycast (the all-zero host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub first: u128,
    pub last: u128,
    pub gateway: u128,
    pub v6: bool,
}

fn to_num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Range {
    pub fn of(gateway_net: IpNet) -> Self {
        let net = to_num(gateway_net.network());
        let top = to_num(gateway_net.broadcast());
        let v6 = matches!(gateway_net, IpNet::V6(_));
        Range {
            first: net.saturating_add(1),
            last: if v6 { top } else { top.saturating_sub(1) },
            gateway: to_num(gateway_net.addr()),
            v6,
        }
    }

    fn addr_at(self, n: u128) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::from(n))
        } else {
            // Range::of only builds IPv4 ranges from u32 values.
            IpAddr::V4(Ipv4Addr::from(n as u32))
        }
    }

    /// Number of addresses from `first` to `last`, 0 if the range is empty.
    /// Cannot overflow: `last - first < u128::MAX` because `first >= 1`.
    fn span(&self) -> u128 {
        if self.last >= self.first {
            self.last - self.first + 1
        } else {
            0
        }
    }

    /// Number of addresses pods may get.
    pub fn capacity(&self) -> u128 {
        let span = self.span();
        if (self.first..=self.last).contains(&self.gateway) {
            span - 1
        } else {
            span
        }
    }

    pub fn is_usable(&self, ip: IpAddr) -> bool {
        if ip.is_ipv6() != self.v6 {
            return false;
        }
        let n = to_num(ip);
        n >= self.first && n <= self.last && n != self.gateway
    }

    /// Every usable address once, starting right after `cursor` and wrapping.
    /// Lazy: callers stop at the first free one.
    pub fn candidates_after(&self, cursor: Option<IpAddr>) -> impl Iterator<Item = IpAddr> {
        let range = *self;
        let Range {
            first,
            last,
            gateway,
            v6,
        } = range;
        let span = range.span();
        let start = match cursor {
            Some(c) if c.is_ipv6() == v6 && to_num(c) >= first && to_num(c) < last => to_num(c) + 1,
            _ => first,
        };
        let start_off = start - first;
        (0..span)
            .map(move |i| {
                // (start_off + i) mod span without overflowing near 2^128.
                let off = if i < span - start_off {
                    start_off + i
                } else {
                    i - (span - start_off)
                };
                first + off
            })
            .filter(move |n| *n != gateway)
            .map(move |n| range.addr_at(n))
    }
}

fn cursor_file(v6: bool) -> &'static str {
    if v6 {
        CURSOR_FILE_V6
    } else {
        CURSOR_FILE
    }
}

/// The temp file an older plugin wrote the cursor to before renaming it;
/// only swept now.
fn cursor_tmp(v6: bool) -> String {
    format!(".{}.tmp", cursor_file(v6))
}

impl Ipam {
    /// Opens (creating if needed) the store of `network` under `data_dir`.
    pub fn open(data_dir: &Path, network: &str) -> Result<Self, Error> {
        let dir = data_dir.join(network);
        fs::create_dir_all(&dir).map_err(|e| Error::ipam(&dir, e))?;
        Ok(Ipam { dir })
    }

    /// The store of `network` under `data_dir` without creating anything:
    /// for DEL, which must finish on a read-only or missing store.
    pub fn existing(data_dir: &Path, network: &str) -> Self {
        Ipam {
            dir: data_dir.join(network),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens `name` in the store for writing, creating it, keeping content.
    fn open_keep(&self, name: &str) -> Result<(File, PathBuf), Error> {
        let path = self.dir.join(name);
        open_in_store(
            &path,
            OpenOptions::new().create(true).truncate(false).write(true),
        )
        .map(|f| (f, path.clone()))
        .map_err(|e| Error::ipam(&path, e))
    }

    fn lock(&self) -> Result<Flock<File>, Error> {
        let (file, path) = self.open_keep(LOCK_FILE)?;
        Self::flock(file, &path)
    }

    fn flock(file: File, path: &Path) -> Result<Flock<File>, Error> {
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| Error::ipam(path, std::io::Error::from(errno)))
    }

    /// The lock for DEL: on a store that cannot be written, an existing
    /// lock file is locked through a read-only descriptor, and without one
    /// (nor a way to make it) nobody can change the store, so none is
    /// needed.
    fn lock_for_release(&self) -> Result<Option<Flock<File>>, Error> {
        match self.lock() {
            Ok(l) => Ok(Some(l)),
            Err(Error::Ipam { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EROFS) | Some(libc::EACCES) | Some(libc::EPERM)
                ) || source.kind() == ErrorKind::NotFound =>
            {
                let path = self.dir.join(LOCK_FILE);
                match open_in_store(&path, OpenOptions::new().read(true)) {
                    Ok(f) => Self::flock(f, &path).map(Some),
                    Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::ipam(&path, e)),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn read_cursor(&self, v6: bool) -> Option<IpAddr> {
        let bytes = read_small(&self.dir.join(cursor_file(v6))).ok()?;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
    }

    /// Writes the cursor in place, padded to the longest address text so
    /// it always covers the previous value: no temp file and no rename, as
    /// ext4 flushes a file renamed over another one (hundreds of µs per ADD
    /// here). A torn or lost write only costs the hint: an unparsable
    /// cursor makes the next walk start at the beginning of the range, so
    /// a cursor that cannot be written at all (a directory or FIFO in its
    /// place) is logged, not an error.
    fn write_cursor(&self, ip: IpAddr) -> Result<(), Error> {
        let (f, path) = self.open_keep(cursor_file(ip.is_ipv6()))?;
        let text = format!("{ip:<width$}", width = CURSOR_WIDTH);
        f.write_all_at(text.as_bytes(), 0)
            .map_err(|e| Error::ipam(&path, e))
    }

    /// Reserves one address of the node subnet for `(container_id, ifname)`:
    /// `requested` if given, else the next free one after the cursor.
    pub fn allocate(
        &self,
        gateway_net: IpNet,
        container_id: &str,
        ifname: &str,
        requested: Option<IpAddr>,
    ) -> Result<IpAddr, Error> {
        let ips = self.allocate_all(
            &[Request {
                gateway_net,
                requested,
            }],
            container_id,
            ifname,
        )?;
        ips.into_iter().next().ok_or_else(|| Error::Internal {
            reason: "allocation returned no address".into(),
        })
    }

    /// Reserves one address per request for `(container_id, ifname)`, all or
    /// nothing: if any request fails (exhausted, taken, unusable), the
    /// addresses already linked for the others are removed again. Returns
    /// the addresses in request order.
    pub fn allocate_all(
        &self,
        requests: &[Request],
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<IpAddr>, Error> {
        for r in requests {
            if let Some(ip) = r.requested {
                if !Range::of(r.gateway_net).is_usable(ip) {
                    return Err(Error::AddressUnavailable {
                        ip,
                        reason: format!(
                            "not a usable pod address of node subnet {}",
                            r.gateway_net.trunc()
                        ),
                    });
                }
            }
        }
        let _lock = self.lock()?;
        // The content is written once to a private temp file and then linked
        // under each candidate name: link() is atomic and never overwrites.
        // Named by PID only: a container ID may be as long as a file name.
        let tmp = self
            .dir
            .join(format!("{RESERVE_TMP_PREFIX}{}", std::process::id()));
        // No fsync: it cost 1.5-3.5 ms per ADD here, most of a call. A
        // process crash loses nothing (the page cache survives it); a power
        // loss takes every pod namespace with it, so a reservation that did
        // not reach the disk belonged to a dead pod anyway, and one that
        // reached it empty is an owner-less name that only GC releases.
        let mut f = self.create_temp(&tmp)?;
        let body = format!("{container_id}\n{ifname}");
        let written = f
            .write_all(body.as_bytes())
            .map_err(|e| Error::ipam(&tmp, e));
        drop(f);
        let mut linked = Vec::with_capacity(requests.len());
        let outcome = written.and_then(|()| {
            for r in requests {
                linked.push(self.link_first_free(&tmp, r)?);
            }
            // Only dynamic picks move their family's cursor.
            for (r, ip) in requests.iter().zip(&linked) {
                if r.requested.is_none() {
                    if let Err(e) = self.write_cursor(*ip) {
                        tracing::warn!(error = %e, "cannot move the allocation cursor");
                    }
                }
            }
            Ok(())
        });
        let _ = fs::remove_file(&tmp);
        if let Err(e) = outcome {
            for ip in &linked {
                let _ = fs::remove_file(self.dir.join(ip.to_string()));
            }
            return Err(e);
        }
        Ok(linked)
    }

    /// Creates the temp file `tmp` afresh. Only called with the lock held,
    /// so one already there is a dead plugin's (same PID) and goes first.
    fn create_temp(&self, tmp: &Path) -> Result<File, Error> {
        let _ = fs::remove_file(tmp);
        open_in_store(tmp, OpenOptions::new().write(true).create_new(true))
            .map_err(|e| Error::ipam(tmp, e))
    }

    /// Whether an ADD could write here now: takes the lock and creates,
    /// writes and removes a temp file, as ADD does before it links a
    /// reservation. Fails on a read-only or full file system.
    pub fn probe_writable(&self) -> Result<(), Error> {
        let _lock = self.lock()?;
        let tmp = self
            .dir
            .join(format!("{RESERVE_TMP_PREFIX}{}", std::process::id()));
        let written = self.create_temp(&tmp).and_then(|mut f| {
            f.write_all(&[b'x'; CURSOR_WIDTH])
                .and_then(|()| f.flush())
                .map_err(|e| Error::ipam(&tmp, e))
        });
        let removed = fs::remove_file(&tmp).map_err(|e| Error::ipam(&tmp, e));
        written.and(removed)
    }

    fn link_first_free(&self, tmp: &Path, r: &Request) -> Result<IpAddr, Error> {
        if let Some(ip) = r.requested {
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
        let range = Range::of(r.gateway_net);
        for ip in range.candidates_after(self.read_cursor(range.v6)) {
            let path = self.dir.join(ip.to_string());
            match fs::hard_link(tmp, &path) {
                Ok(()) => return Ok(ip),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(Error::ipam(&path, e)),
            }
        }
        Err(Error::SubnetExhausted {
            subnet: r.gateway_net.trunc().to_string(),
        })
    }

    /// Every entry named like an address, in no particular order. Reads
    /// never block (see [`open_in_store`]).
    fn entries(&self) -> Result<Vec<Entry>, Error> {
        let entries = fs::read_dir(&self.dir).map_err(|e| Error::ipam(&self.dir, e))?;
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::ipam(&self.dir, e))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            let path = entry.path();
            let body = match read_small(&path) {
                // Removed since the directory was read: not an entry.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(_) => None,
                Ok(bytes) => String::from_utf8(bytes).ok(),
            };
            out.push(match body {
                Some(body) => {
                    let mut lines = body.lines();
                    let container_id = lines.next().unwrap_or_default().trim().to_string();
                    let ifname = lines.next().unwrap_or_default().trim().to_string();
                    Entry::Owned(Reservation {
                        ip,
                        container_id,
                        ifname,
                    })
                }
                None => Entry::Foreign { ip, path },
            });
        }
        Ok(out)
    }

    /// All reservations this plugin wrote, in no particular order.
    pub fn list(&self) -> Result<Vec<Reservation>, Error> {
        Ok(self
            .entries()?
            .into_iter()
            .filter_map(|e| match e {
                Entry::Owned(r) => Some(r),
                Entry::Foreign { .. } => None,
            })
            .collect())
    }

    /// The addresses reserved for `(container_id, ifname)`, IPv4 first.
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let mut ips: Vec<IpAddr> = self
            .list()?
            .into_iter()
            .filter(|r| r.container_id == container_id && r.ifname == ifname)
            .map(|r| r.ip)
            .collect();
        ips.sort();
        Ok(ips)
    }

    /// Releases every address of `(container_id, ifname)`; none is fine,
    /// also on a store that is missing or cannot be written (a runtime must
    /// be able to finish teardown). Also removes temp files left by plugins
    /// killed mid-allocation; failing that is only logged.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, Error> {
        let _lock = self.lock_for_release()?;
        let list = match self.list() {
            Ok(l) => l,
            // No store at all: nothing is held.
            Err(Error::Ipam { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let mut released = Vec::new();
        for r in list {
            if r.container_id == container_id && r.ifname == ifname {
                self.remove(r.ip)?;
                released.push(r.ip);
            }
        }
        released.sort();
        for e in self.sweep_stale_temp_files() {
            tracing::warn!(error = %e, "DEL: cannot remove a stale temp file");
        }
        Ok(released)
    }

    /// Removes every temp file of the store. Only sound with the lock held:
    /// then no live plugin owns one. Keeps going past failures.
    fn sweep_stale_temp_files(&self) -> Vec<Error> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) => return vec![Error::ipam(&self.dir, e)],
        };
        let cursor_tmps = [cursor_tmp(false), cursor_tmp(true)];
        let mut errors = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with(RESERVE_TMP_PREFIX) || cursor_tmps.iter().any(|t| t == name)) {
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
    pub fn release_ip(&self, ip: IpAddr, container_id: &str, ifname: &str) -> Result<(), Error> {
        let _lock = self.lock()?;
        let path = self.dir.join(ip.to_string());
        let body = match read_small(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::ipam(&path, e)),
        };
        if body == format!("{container_id}\n{ifname}").as_bytes() {
            self.remove(ip)?;
        }
        Ok(())
    }

    fn remove(&self, ip: IpAddr) -> Result<(), Error> {
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
        for entry in self.entries()? {
            let r = match entry {
                Entry::Owned(r) => r,
                Entry::Foreign { ip, path } => {
                    tracing::info!(%ip, path = %path.display(), "GC: removing an entry this plugin did not write");
                    if let Err(e) = remove_any(&path) {
                        errors.push(Error::ipam(&path, e));
                    }
                    continue;
                }
            };
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
    pub fn free_count(&self, gateway_net: IpNet) -> Result<u128, Error> {
        let range = Range::of(gateway_net);
        let used = self
            .entries()?
            .iter()
            .filter(|e| {
                range.is_usable(match e {
                    Entry::Owned(r) => r.ip,
                    Entry::Foreign { ip, .. } => *ip,
                })
            })
            .count() as u128;
        Ok(range.capacity().saturating_sub(used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// A fresh store of network "net" in a temp dir that lives as long as
    /// the returned guard.
    fn store() -> (tempfile::TempDir, Ipam) {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), "net").unwrap();
        (dir, ipam)
    }

    fn req(gateway_net: IpNet, requested: Option<IpAddr>) -> Request {
        Request {
            gateway_net,
            requested,
        }
    }

    fn v4v6(v4: &str, v6: &str) -> [Request; 2] {
        [req(net(v4), None), req(net(v6), None)]
    }

    /// No reservation temp file is left in the store.
    fn assert_no_temp_files(ipam: &Ipam) {
        let names: Vec<String> = fs::read_dir(ipam.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with(".reserve")),
            "{names:?}"
        );
    }

    /// `threads` threads at once, each with its own store and lock fd (as
    /// separate plugin processes would have) on network "net" of `data`,
    /// each reserving `reqs` for `per_thread` containers. Asserts that no
    /// address was handed out twice; returns them all, sorted.
    fn allocate_concurrently(
        data: &Path,
        threads: usize,
        per_thread: usize,
        reqs: &[Request],
    ) -> Vec<IpAddr> {
        let mut all: Vec<IpAddr> = std::thread::scope(|sc| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    sc.spawn(move || {
                        let ipam = Ipam::open(data, "net").unwrap();
                        (0..per_thread)
                            .flat_map(|i| {
                                ipam.allocate_all(reqs, &format!("c{t}-{i}"), "eth0")
                                    .unwrap()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let want = threads * per_thread * reqs.len();
        assert_eq!(all.len(), want);
        all.sort();
        all.dedup();
        assert_eq!(all.len(), want, "duplicate addresses handed out");
        all
    }

    #[test]
    fn range_skips_network_gateway_broadcast() {
        let r = Range::of(net("10.244.3.1/29"));
        let all: Vec<_> = r.candidates_after(None).collect();
        let want: Vec<IpAddr> = (2..=6)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 244, 3, i)))
            .collect();
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
        let (dir, ipam) = store();
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
        assert_eq!(ipam.find("c3", "eth0").unwrap(), vec![c]);
        assert!(ipam.find("c3", "eth1").unwrap().is_empty());
        assert_no_temp_files(&ipam);
    }

    #[test]
    fn release_of_unknown_is_empty() {
        let (_dir, ipam) = store();
        assert!(ipam.release("nope", "eth0").unwrap().is_empty());
        let gw = net("10.244.3.1/24");
        let a = ipam.allocate(gw, "c1", "eth0", None).unwrap();
        ipam.release_ip(a, "other", "eth0").unwrap();
        assert_eq!(ipam.find("c1", "eth0").unwrap(), vec![a]);
        ipam.release_ip(a, "c1", "eth0").unwrap();
        assert!(ipam.find("c1", "eth0").unwrap().is_empty());
    }

    #[test]
    fn release_and_gc_remove_temp_files_of_dead_plugins() {
        let (_dir, ipam) = store();
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
        assert_eq!(ipam.find("live", "eth0").unwrap(), vec![a]);

        for name in stale {
            fs::write(ipam.dir().join(name), "dead\neth0").unwrap();
        }
        let keep: HashSet<_> = [("live".to_string(), "eth0".to_string())].into();
        let (released, errors) = ipam.gc(&keep).unwrap();
        assert!(released.is_empty() && errors.is_empty());
        assert_eq!(temps(), 0);
        assert_eq!(ipam.find("live", "eth0").unwrap(), vec![a]);
    }

    #[test]
    fn static_requests() {
        let (_dir, ipam) = store();
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
        let (_dir, ipam) = store();
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
        let (dir, ipam) = store();
        let gw = net("10.244.3.1/24");
        let all = allocate_concurrently(dir.path(), 16, 10, &[req(gw, None)]);
        assert_eq!(all.len(), 160);
        let range = Range::of(gw);
        assert!(all.iter().all(|a| range.is_usable(*a)));
        assert_eq!(ipam.list().unwrap().len(), 160);
        assert_eq!(ipam.free_count(gw).unwrap(), 253 - 160);
    }

    #[test]
    fn v6_range_skips_anycast_and_gateway_and_keeps_last() {
        let r = Range::of(net("fd00:10:244:3::1/125"));
        let all: Vec<_> = r.candidates_after(None).collect();
        let want: Vec<IpAddr> = (2..=7)
            .map(|i| ip(&format!("fd00:10:244:3::{i}")))
            .collect();
        assert_eq!(all, want);
        assert_eq!(r.capacity(), 6);
        assert!(!r.is_usable(ip("fd00:10:244:3::")));
        assert!(!r.is_usable(ip("fd00:10:244:3::1")));
        assert!(!r.is_usable(ip("fd00:10:244:3::8")));
        assert!(!r.is_usable(ip("10.244.3.2")), "other family");
        // A gateway in the middle is skipped, the wrap goes back to ::1.
        let r = Range::of(net("fd00::4/125"));
        let after: Vec<_> = r.candidates_after(Some(ip("fd00::6"))).collect();
        assert_eq!(after[..3], [ip("fd00::7"), ip("fd00::1"), ip("fd00::2")]);
        assert_eq!(after.len(), 6);
        assert!(!after.contains(&ip("fd00::4")));
        // An IPv4 cursor means nothing to an IPv6 range.
        assert_eq!(
            r.candidates_after(Some(ip("10.0.0.6"))).next(),
            Some(ip("fd00::1"))
        );
        // A /64 has 2^64 - 2 pod addresses and its walk is lazy.
        let r = Range::of(net("fd00:10:244:3::1/64"));
        assert_eq!(r.capacity(), (1u128 << 64) - 2);
        let last = ip("fd00:10:244:3:ffff:ffff:ffff:ffff");
        let mut it = r.candidates_after(Some(last));
        assert_eq!(it.next(), Some(ip("fd00:10:244:3::2")));
        // At the very top of the address space nothing overflows.
        let r = Range::of(net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff9/125"));
        let all: Vec<_> = r
            .candidates_after(Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")))
            .collect();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0], ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert_eq!(all[1], ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffa"));
    }

    #[test]
    fn cursor_is_rewritten_in_place_and_a_bad_one_restarts_the_walk() {
        let (_dir, ipam) = store();
        let cursor = ipam.dir().join("last_reserved_ip");
        // An older plugin's unpadded cursor, longer than the next value.
        fs::write(&cursor, "10.244.3.200").unwrap();
        let a = ipam
            .allocate(net("10.244.3.1/24"), "c1", "eth0", None)
            .unwrap();
        assert_eq!(a, ip("10.244.3.201"));
        ipam.write_cursor(ip("10.244.3.9")).unwrap();
        assert_eq!(
            fs::read_to_string(&cursor).unwrap().trim_end(),
            "10.244.3.9"
        );
        let b = ipam
            .allocate(net("10.244.3.1/24"), "c2", "eth0", None)
            .unwrap();
        assert_eq!(b, ip("10.244.3.10"));
        // A torn cursor is only a lost hint.
        fs::write(&cursor, "10.24\0garbage").unwrap();
        let c = ipam
            .allocate(net("10.244.3.1/24"), "c3", "eth0", None)
            .unwrap();
        assert_eq!(c, ip("10.244.3.2"));
        assert_eq!(
            fs::read_to_string(&cursor).unwrap().trim_end(),
            "10.244.3.2"
        );
    }

    #[test]
    fn dual_stack_allocation_has_a_cursor_per_family() {
        let (_dir, ipam) = store();
        let reqs = v4v6("10.244.3.1/24", "fd00:10:244:3::1/64");
        let a = ipam.allocate_all(&reqs, "c1", "eth0").unwrap();
        assert_eq!(a, vec![ip("10.244.3.2"), ip("fd00:10:244:3::2")]);
        let b = ipam.allocate_all(&reqs, "c2", "eth0").unwrap();
        assert_eq!(b, vec![ip("10.244.3.3"), ip("fd00:10:244:3::3")]);
        // The reservation file is named by the address' display form.
        let body = fs::read_to_string(ipam.dir().join("fd00:10:244:3::3")).unwrap();
        assert_eq!(body, "c2\neth0");
        let cursor6 = fs::read_to_string(ipam.dir().join("last_reserved_ip.6")).unwrap();
        assert_eq!(cursor6.trim_end(), "fd00:10:244:3::3");
        let cursor4 = fs::read_to_string(ipam.dir().join("last_reserved_ip")).unwrap();
        assert_eq!(cursor4.trim_end(), "10.244.3.3");
        // Only the v4 family moves when only v4 is asked for.
        ipam.allocate(net("10.244.3.1/24"), "c3", "eth0", None)
            .unwrap();
        let c = ipam.allocate_all(&reqs, "c4", "eth0").unwrap();
        assert_eq!(c, vec![ip("10.244.3.5"), ip("fd00:10:244:3::4")]);
        // Release frees both families, the cursor does not go back.
        assert_eq!(
            ipam.release("c1", "eth0").unwrap(),
            vec![ip("10.244.3.2"), ip("fd00:10:244:3::2")]
        );
        let d = ipam.allocate_all(&reqs, "c5", "eth0").unwrap();
        assert_eq!(d[1], ip("fd00:10:244:3::5"));
        assert_eq!(
            ipam.find("c5", "eth0").unwrap(),
            vec![ip("10.244.3.6"), ip("fd00:10:244:3::5")]
        );
        assert_eq!(
            ipam.free_count(net("fd00:10:244:3::1/64")).unwrap(),
            (1u128 << 64) - 2 - 3
        );
    }

    #[test]
    fn tiny_v6_subnet_exhausts_and_wraps() {
        let (_dir, ipam) = store();
        let gw6 = net("fd00:10:244:3::1/125");
        let got: Vec<IpAddr> = (0..6)
            .map(|i| ipam.allocate(gw6, &format!("c{i}"), "eth0", None).unwrap())
            .collect();
        assert!(!got.contains(&ip("fd00:10:244:3::")));
        assert!(!got.contains(&ip("fd00:10:244:3::1")));
        assert_eq!(got.last(), Some(&ip("fd00:10:244:3::7")));
        let e = ipam.allocate(gw6, "c9", "eth0", None).unwrap_err();
        assert_eq!(e.code(), 100);
        assert!(e.to_string().contains("fd00:10:244:3::/125"), "{e}");
        assert_eq!(ipam.free_count(gw6).unwrap(), 0);
        // After the last address the walk wraps to the freed ::3.
        ipam.release("c1", "eth0").unwrap();
        assert_eq!(
            ipam.allocate(gw6, "c10", "eth0", None).unwrap(),
            ip("fd00:10:244:3::3")
        );
    }

    #[test]
    fn exhaustion_of_either_family_reserves_nothing() {
        let (_dir, ipam) = store();
        // v6 /126 has two pod addresses, v4 /24 plenty.
        let reqs = v4v6("10.244.3.1/24", "fd00::1/126");
        ipam.allocate_all(&reqs, "c1", "eth0").unwrap();
        ipam.allocate_all(&reqs, "c2", "eth0").unwrap();
        let before = ipam.list().unwrap().len();
        let e = ipam.allocate_all(&reqs, "c3", "eth0").unwrap_err();
        assert_eq!(e.code(), 100);
        assert_eq!(ipam.list().unwrap().len(), before);
        assert!(ipam.find("c3", "eth0").unwrap().is_empty());
        // And the other way round: v4 /30 (one pod address) is full.
        let (_dir, ipam) = store();
        let reqs = v4v6("10.244.3.1/30", "fd00::1/64");
        ipam.allocate_all(&reqs, "c1", "eth0").unwrap();
        let e = ipam.allocate_all(&reqs, "c2", "eth0").unwrap_err();
        assert_eq!(e.code(), 100);
        assert!(ipam.find("c2", "eth0").unwrap().is_empty());
        assert_eq!(ipam.list().unwrap().len(), 2);
        assert_no_temp_files(&ipam);
    }

    #[test]
    fn static_v6_requests() {
        let (_dir, ipam) = store();
        let gw4 = net("10.244.3.1/24");
        let gw6 = net("fd00:10:244:3::1/64");
        let reqs = [req(gw4, None), req(gw6, Some(ip("fd00:10:244:3::beef")))];
        let got = ipam.allocate_all(&reqs, "c1", "eth0").unwrap();
        assert_eq!(got, vec![ip("10.244.3.2"), ip("fd00:10:244:3::beef")]);
        // Taken, anycast, gateway, other subnet, other family: 102 and the
        // dynamic v4 part of the same call is not kept.
        for bad in [
            "fd00:10:244:3::beef",
            "fd00:10:244:3::",
            "fd00:10:244:3::1",
            "fd00:10:244:4::5",
            "10.244.3.9",
        ] {
            let reqs = [req(gw4, None), req(gw6, Some(ip(bad)))];
            let e = ipam.allocate_all(&reqs, "c2", "eth0").unwrap_err();
            assert_eq!(e.code(), 102, "{bad}");
            assert!(ipam.find("c2", "eth0").unwrap().is_empty(), "{bad}");
        }
        // The static v6 pick did not move the v6 cursor.
        assert_eq!(
            ipam.allocate(gw6, "c3", "eth0", None).unwrap(),
            ip("fd00:10:244:3::2")
        );
    }

    #[test]
    fn concurrent_dual_stack_allocations_are_distinct() {
        let (dir, ipam) = store();
        let reqs = v4v6("10.244.3.1/24", "fd00:10:244:3::1/64");
        let all = allocate_concurrently(dir.path(), 8, 10, &reqs);
        assert_eq!(all.len(), 160);
        assert_eq!(all.iter().filter(|a| a.is_ipv6()).count(), 80);
        // The cursor walk hands out a dense prefix: ::2 ..= ::81.
        let v6: Vec<u128> = all
            .iter()
            .filter(|a| a.is_ipv6())
            .map(|a| to_num(*a))
            .collect();
        let base = to_num(ip("fd00:10:244:3::"));
        assert_eq!(v6, (2..82).map(|i| base + i).collect::<Vec<_>>());
        assert_eq!(ipam.list().unwrap().len(), 160);
        // GC of everything releases both families.
        let (released, errors) = ipam.gc(&HashSet::new()).unwrap();
        assert!(errors.is_empty());
        assert_eq!(released.len(), 160);
        assert!(ipam.list().unwrap().is_empty());
    }
}
