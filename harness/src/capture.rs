//! Looking at the wire: an AF_PACKET capture inside a namespace (what an
//! eavesdropper on the underlay sees), the IP and UDP headers of what it
//! caught, and sending a datagram from inside a namespace (what an attacker
//! there can send). Each runs on a thread of its own that enters the
//! namespace, so the test process stays where it is.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    recv, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

use crate::error::{HarnessError, Result};
use crate::netns::Netns;

/// One captured link-layer frame (Ethernet).
#[derive(Debug, Clone)]
pub struct Frame(pub Vec<u8>);

/// The IP header of a frame and what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPacket<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (17 UDP, 6 TCP, 1 ICMP, 58 ICMPv6).
    pub proto: u8,
    pub payload: &'a [u8],
}

/// A UDP datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp<'a> {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: &'a [u8],
}

impl Frame {
    /// The IPv4 or IPv6 packet in the frame (no extension headers), if any.
    pub fn ip(&self) -> Option<IpPacket<'_>> {
        let b = &self.0;
        let ethertype = u16::from_be_bytes([*b.get(12)?, *b.get(13)?]);
        let p = b.get(14..)?;
        match ethertype {
            0x0800 => {
                let ihl = usize::from(p.first()? & 0x0f) * 4;
                let total = usize::from(u16::from_be_bytes([*p.get(2)?, *p.get(3)?]));
                let src: [u8; 4] = p.get(12..16)?.try_into().ok()?;
                let dst: [u8; 4] = p.get(16..20)?.try_into().ok()?;
                Some(IpPacket {
                    src: Ipv4Addr::from(src).into(),
                    dst: Ipv4Addr::from(dst).into(),
                    proto: *p.get(9)?,
                    payload: p.get(ihl..total.min(p.len()))?,
                })
            }
            0x86dd => {
                let len = usize::from(u16::from_be_bytes([*p.get(4)?, *p.get(5)?]));
                let src: [u8; 16] = p.get(8..24)?.try_into().ok()?;
                let dst: [u8; 16] = p.get(24..40)?.try_into().ok()?;
                Some(IpPacket {
                    src: Ipv6Addr::from(src).into(),
                    dst: Ipv6Addr::from(dst).into(),
                    proto: *p.get(6)?,
                    payload: p.get(40..(40 + len).min(p.len()))?,
                })
            }
            _ => None,
        }
    }

    /// The UDP datagram in the frame, if it is one.
    pub fn udp(&self) -> Option<Udp<'_>> {
        let ip = self.ip().filter(|ip| ip.proto == 17)?;
        let u = ip.payload;
        let sport = u16::from_be_bytes([*u.first()?, *u.get(1)?]);
        let dport = u16::from_be_bytes([*u.get(2)?, *u.get(3)?]);
        Some(Udp {
            src: SocketAddr::new(ip.src, sport),
            dst: SocketAddr::new(ip.dst, dport),
            payload: u.get(8..)?,
        })
    }

    /// Whether `needle` appears anywhere in the frame.
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.0.windows(needle.len()).any(|w| w == needle)
    }
}

fn enter(ns_path: &str) -> Result<()> {
    let f = File::open(ns_path).map_err(|source| HarnessError::Io {
        path: ns_path.into(),
        source,
    })?;
    setns(&f, CloneFlags::CLONE_NEWNET).map_err(|e| HarnessError::Io {
        path: ns_path.into(),
        source: e.into(),
    })
}

/// Runs `f` on a thread inside the namespace at `ns_path`.
pub fn in_netns<T: Send + 'static>(
    ns_path: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    let path = ns_path.to_owned();
    std::thread::spawn(move || {
        enter(&path)?;
        f().map_err(|source| HarnessError::Io {
            path: path.clone().into(),
            source,
        })
    })
    .join()
    .unwrap_or_else(|_| {
        Err(HarnessError::Parse {
            what: "namespace thread".into(),
            reason: "panicked".into(),
        })
    })
}

/// Sends `payload` to `to` over UDP from inside `ns`.
pub fn send_udp(ns: &Netns, to: SocketAddr, payload: Vec<u8>) -> Result<()> {
    in_netns(&ns.path(), move || {
        let any: SocketAddr = match to {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let s = UdpSocket::bind(any)?;
        s.send_to(&payload, to).map(|_| ())
    })
}

/// A capture of every frame on every interface of a namespace (a bridge
/// and its ports each show a frame once), running until [`Capture::stop`].
pub struct Capture {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<Vec<Frame>>>,
}

impl Capture {
    /// Starts capturing in `ns`; returns once the socket is open, so that
    /// what is sent afterwards is seen.
    pub fn start(ns: &Netns) -> Result<Capture> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let path = ns.path();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let open = || -> Result<_> {
                enter(&path)?;
                let io = |e: nix::Error| HarnessError::Io {
                    path: path.clone().into(),
                    source: e.into(),
                };
                let fd = socket(
                    AddressFamily::Packet,
                    SockType::Raw,
                    SockFlag::empty(),
                    SockProtocol::EthAll,
                )
                .map_err(io)?;
                setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(0, 100_000)).map_err(io)?;
                Ok(fd)
            };
            let fd = match open() {
                Ok(fd) => {
                    let _ = ready_tx.send(Ok(()));
                    fd
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return Ok(Vec::new());
                }
            };
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 65_536];
            use std::os::fd::AsRawFd;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(n) = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    frames.push(Frame(buf[..n].to_vec()));
                }
            }
            Ok(frames)
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Capture { stop, thread }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HarnessError::Parse {
                what: "AF_PACKET capture".into(),
                reason: "the capture thread did not start".into(),
            }),
        }
    }

    /// Stops the capture and returns what it saw.
    pub fn stop(self) -> Result<Vec<Frame>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_else(|_| {
            Err(HarnessError::Parse {
                what: "AF_PACKET capture".into(),
                reason: "the capture thread panicked".into(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame.
    fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, data: &[u8]) -> Frame {
        let mut f = vec![0u8; 12];
        f.extend([0x08, 0x00]);
        let total = (20 + 8 + data.len()) as u16;
        f.extend([
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ]);
        f.extend(src);
        f.extend(dst);
        f.extend(sport.to_be_bytes());
        f.extend(dport.to_be_bytes());
        f.extend(((8 + data.len()) as u16).to_be_bytes());
        f.extend([0, 0]);
        f.extend(data);
        Frame(f)
    }

    #[test]
    fn udp_in_an_ipv4_frame_is_read() {
        let f = udp4([192, 0, 2, 1], [192, 0, 2, 2], 40000, 51820, b"hello");
        let u = f.udp().unwrap();
        assert_eq!(u.src, "192.0.2.1:40000".parse().unwrap());
        assert_eq!(u.dst, "192.0.2.2:51820".parse().unwrap());
        assert_eq!(u.payload, b"hello");
        assert!(f.contains(b"ell"));
        assert!(!f.contains(b"xyz"));
        assert_eq!(Frame(vec![0; 10]).ip(), None);
    }
}
