//! Link lookups by `SIOCGIF*` ioctl: index, flags, MAC and primary IPv4
//! address, far cheaper per ADD than a netlink dump.

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use ipnet::Ipv4Net;

use crate::error::Error;
use crate::netlink::{NlError, Socket};

/// What the `SIOCGIF*` ioctls tell about the link `name` in the namespace
/// of `sock`: far cheaper than a `RTM_GETLINK`, whose answer carries every
/// statistic and setting of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Brief {
    pub index: u32,
    pub up: bool,
    pub mac: [u8; 6],
}

/// An `ifreq` naming `name` (at most 15 bytes, checked by the config).
fn ifreq(name: &str) -> Result<libc::ifreq, Error> {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() || name.bytes().any(|b| b == 0) {
        return Err(Error::Internal {
            reason: format!("interface name {name:?} does not fit IFNAMSIZ"),
        });
    }
    for (d, b) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = b as libc::c_char;
    }
    Ok(req)
}

/// One `SIOCGIF*` ioctl on `fd`; `Ok(None)` if there is no such link.
fn if_ioctl(
    fd: &impl AsRawFd,
    name: &str,
    op: libc::c_ulong,
) -> Result<Option<libc::ifreq>, Error> {
    let mut req = ifreq(name)?;
    // SAFETY: `req` is a valid ifreq that outlives the call; the SIOCGIF*
    // requests used here only write inside it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), op as _, &mut req as *mut libc::ifreq) };
    if rc == 0 {
        return Ok(Some(req));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODEV) => Ok(None),
        _ => Err(Error::netlink(
            format!("ioctl {op:#x} on {name}"),
            NlError::Io(e),
        )),
    }
}

/// The primary IPv4 address of the link `name` in the calling thread's
/// namespace and its prefix length (`SIOCGIFADDR`, `SIOCGIFNETMASK`, which
/// only an `AF_INET` socket answers); `None` without a link or an address.
pub fn primary_ipv4(name: &str) -> Result<Option<Ipv4Net>, Error> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned
    // at once, so it is closed on every path.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::netlink(
            "open an inet socket",
            NlError::Io(std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let v4 = |op| match if_ioctl(&sock, name, op) {
        Ok(Some(r)) => {
            // SAFETY: both requests fill in a sockaddr_in, which the
            // sockaddr member holds.
            let sa = unsafe { r.ifr_ifru.ifru_addr };
            let mut b = [0u8; 4];
            for (d, s) in b.iter_mut().zip(&sa.sa_data[2..6]) {
                *d = *s as u8;
            }
            Ok(Some(Ipv4Addr::from(b)))
        }
        Ok(None) => Ok(None),
        Err(Error::Netlink {
            source: NlError::Io(e),
            ..
        }) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(None),
        Err(e) => Err(e),
    };
    let (Some(addr), Some(mask)) = (v4(libc::SIOCGIFADDR)?, v4(libc::SIOCGIFNETMASK)?) else {
        return Ok(None);
    };
    let len = u32::from(mask).leading_ones() as u8;
    Ok(Ipv4Net::new(addr, len).ok())
}

/// Index of the link `name` in the namespace of `sock`, if there is one.
pub fn index_of(sock: &Socket, name: &str) -> Result<Option<u32>, Error> {
    Ok(if_ioctl(sock, name, libc::SIOCGIFINDEX)?.map(|r| {
        // SAFETY: SIOCGIFINDEX filled in the ifindex member.
        let i = unsafe { r.ifr_ifru.ifru_ifindex };
        u32::try_from(i).unwrap_or_default()
    }))
}

/// Index, up flag and MAC of the link `name` in the namespace of `sock`.
pub fn brief(sock: &Socket, name: &str) -> Result<Option<Brief>, Error> {
    let Some(index) = index_of(sock, name)? else {
        return Ok(None);
    };
    let (Some(flags), Some(hw)) = (
        if_ioctl(sock, name, libc::SIOCGIFFLAGS)?,
        if_ioctl(sock, name, libc::SIOCGIFHWADDR)?,
    ) else {
        return Ok(None);
    };
    // SAFETY: SIOCGIFFLAGS filled in the flags member, SIOCGIFHWADDR the
    // hwaddr one.
    let (flags, hw) = unsafe { (flags.ifr_ifru.ifru_flags, hw.ifr_ifru.ifru_hwaddr) };
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(hw.sa_data) {
        *m = b as u8;
    }
    Ok(Some(Brief {
        index,
        up: i32::from(flags) & libc::IFF_UP != 0,
        mac,
    }))
}
