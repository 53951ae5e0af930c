//! The userspace WireGuard device: a TUN interface, one UDP socket and a
//! `boringtun` protocol state ([`Tunn`]) per peer. It runs in a helper
//! process (`twilld wireguard-device`) that the agent starts and configures
//! over the UAPI socket; the helper outlives agent restarts, so pod traffic
//! keeps flowing while twilld is down, and exits on its own when no agent
//! has spoken to it for a grace period (a node whose agent is gone for good
//! does not keep a stale tunnel).
//!
//! The cryptography and the protocol's state machine (handshakes, timers,
//! replay windows, cookies) are boringtun's; this file moves packets between
//! the TUN device, the socket and the right peer, and serves the UAPI.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::device::tun::TunSocket;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UdpSocket, UnixListener, UnixStream};

use super::key::Key;
use super::uapi;
use super::WgError;

/// How the helper is started (`twilld wireguard-device`).
#[derive(Debug, Clone)]
pub struct HelperOptions {
    pub ifname: String,
    pub socket: PathBuf,
    /// Exit after this long without a request on the socket.
    pub grace: Duration,
}

/// Large enough for a 64 KiB packet plus WireGuard's 32 bytes.
const BUF: usize = 65_536 + 64;
const TICK: Duration = Duration::from_millis(250);
/// Receive and send buffer of the UDP socket (wireguard-go asks for 7 MiB).
const SOCKET_BUFFER: usize = 4 << 20;

struct Peer {
    tunn: Tunn,
    endpoint: Option<SocketAddr>,
    allowed: Vec<IpNet>,
    keepalive: u16,
    index: u32,
}

impl Peer {
    fn allows(&self, ip: IpAddr) -> bool {
        self.allowed.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Default)]
struct Device {
    key: Option<(StaticSecret, PublicKey, Key)>,
    port: u16,
    udp: Option<Arc<UdpSocket>>,
    peers: BTreeMap<Key, Peer>,
    by_index: HashMap<u32, Key>,
    next_index: u32,
    rejected: u64,
}

/// The socket is bound to `[::]`: IPv4 peers are reached and heard as
/// IPv4-mapped addresses; both directions speak plain IPv4 outside.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

fn mapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    }
}

fn send(udp: &UdpSocket, b: &[u8], to: SocketAddr) {
    // A full socket buffer drops the packet, as a kernel tunnel would.
    if let Err(e) = udp.try_send_to(b, mapped(to)) {
        tracing::trace!(error = %e, %to, "send failed");
    }
}

impl Device {
    fn new_tunn(&self, key: Key, keepalive: u16, index: u32) -> Option<Tunn> {
        let (secret, _, _) = self.key.as_ref()?;
        Some(Tunn::new(
            secret.clone(),
            PublicKey::from(key.0),
            None,
            (keepalive > 0).then_some(keepalive),
            index,
            None,
        ))
    }

    fn alloc_index(&mut self) -> u32 {
        // 24 bits: boringtun puts a per-session counter in the low 8.
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if !self.by_index.contains_key(&self.next_index) {
                return self.next_index;
            }
        }
    }

    /// The peer whose allowed IPs hold `dst`, the longest prefix winning.
    fn route(&self, dst: IpAddr) -> Option<Key> {
        self.peers
            .iter()
            .flat_map(|(k, p)| p.allowed.iter().map(move |n| (n, k)))
            .filter(|(n, _)| n.contains(&dst))
            .max_by_key(|(n, _)| n.prefix_len())
            .map(|(_, k)| *k)
    }

    /// A packet the kernel routed into the TUN device: encrypt and send.
    fn outbound(&mut self, pkt: &[u8], out: &mut [u8]) {
        let Some(udp) = self.udp.clone() else { return };
        let Some(key) = Tunn::dst_address(pkt).and_then(|d| self.route(d)) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let Some(endpoint) = peer.endpoint else {
            return;
        };
        if let TunnResult::WriteToNetwork(b) = peer.tunn.encapsulate(pkt, out) {
            send(&udp, b, endpoint);
        }
    }

    /// A datagram on the port: find its peer, let boringtun authenticate
    /// and decrypt it, hand the packet to the kernel if the peer may send
    /// from its source address. Anything else is counted and dropped.
    fn inbound(&mut self, data: &[u8], from: SocketAddr, tun: &TunSocket, out: &mut [u8]) {
        let Some(udp) = self.udp.clone() else { return };
        let key = match (&self.key, Tunn::parse_incoming_packet(data)) {
            (Some((secret, public, _)), Ok(Packet::HandshakeInit(p))) => {
                parse_handshake_anon(secret, public, &p)
                    .ok()
                    .map(|h| Key(h.peer_static_public))
            }
            (_, Ok(Packet::HandshakeResponse(p))) => {
                self.by_index.get(&(p.receiver_idx >> 8)).copied()
            }
            (_, Ok(Packet::PacketCookieReply(p))) => {
                self.by_index.get(&(p.receiver_idx >> 8)).copied()
            }
            (_, Ok(Packet::PacketData(p))) => self.by_index.get(&(p.receiver_idx >> 8)).copied(),
            _ => None,
        };
        let Some(peer) = key.and_then(|k| self.peers.get_mut(&k)) else {
            self.rejected += 1;
            tracing::debug!(%from, "dropped a datagram from no known peer");
            return;
        };
        let ok = match peer.tunn.decapsulate(Some(from.ip()), data, out) {
            TunnResult::Done => true,
            TunnResult::Err(e) => {
                tracing::debug!(%from, error = ?e, "dropped a datagram that did not authenticate");
                false
            }
            TunnResult::WriteToNetwork(b) => {
                send(&udp, b, from);
                // Packets queued while the handshake was under way.
                while let TunnResult::WriteToNetwork(b) = peer.tunn.decapsulate(None, &[], out) {
                    send(&udp, b, from);
                }
                true
            }
            TunnResult::WriteToTunnelV4(b, src) => {
                let ok = peer.allows(src.into());
                if ok {
                    tun.write4(b);
                }
                ok
            }
            TunnResult::WriteToTunnelV6(b, src) => {
                let ok = peer.allows(src.into());
                if ok {
                    tun.write6(b);
                }
                ok
            }
        };
        if ok {
            // Roaming, as WireGuard does: answer where the peer is.
            peer.endpoint = Some(from);
        } else {
            self.rejected += 1;
        }
    }

    fn timers(&mut self, out: &mut [u8]) {
        let Some(udp) = self.udp.clone() else { return };
        for peer in self.peers.values_mut() {
            if let TunnResult::WriteToNetwork(b) = peer.tunn.update_timers(out) {
                if let Some(e) = peer.endpoint {
                    send(&udp, b, e);
                }
            }
        }
    }

    fn bind(&mut self, port: u16) -> io::Result<()> {
        if self.udp.is_some() && self.port == port {
            return Ok(());
        }
        let std = std::net::UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))?;
        std.set_nonblocking(true)?;
        // A burst of TCP windows must not overflow the socket while the
        // helper waits for a core (the kernel's default is ~200 KiB; the
        // forced variants pass net.core.[rw]mem_max, as root may).
        use nix::sys::socket::{setsockopt, sockopt};
        if setsockopt(&std, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&std, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        if setsockopt(&std, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
            let _ = setsockopt(&std, sockopt::SndBuf, &SOCKET_BUFFER);
        }
        self.udp = Some(Arc::new(UdpSocket::from_std(std)?));
        self.port = port;
        tracing::info!(port, "listening");
        Ok(())
    }

    fn set_key(&mut self, key: Key) {
        if self.key.as_ref().is_some_and(|(_, _, k)| *k == key) {
            return;
        }
        let secret = StaticSecret::from(key.0);
        let public = PublicKey::from(&secret);
        tracing::info!(public_key = %Key(public.to_bytes()), "private key set");
        self.key = Some((secret, public, key));
        // Every session was with the old key.
        let peers: Vec<(Key, u16, u32)> = self
            .peers
            .iter()
            .map(|(k, p)| (*k, p.keepalive, p.index))
            .collect();
        for (k, ka, idx) in peers {
            if let Some(t) = self.new_tunn(k, ka, idx) {
                if let Some(p) = self.peers.get_mut(&k) {
                    p.tunn = t;
                }
            }
        }
    }

    /// Applies a `set=1` request; the errno to answer.
    fn set(&mut self, req: &str) -> i32 {
        let lines = match uapi::lines(req) {
            Ok(l) => l,
            Err(_) => return libc::EINVAL,
        };
        let mut current: Option<Key> = None;
        for (k, v) in lines.into_iter().skip(1) {
            let r: Result<(), i32> = (|| {
                let peer = |d: &mut Device| current.and_then(|c| d.peers.get_mut(&c).map(|_| c));
                match k {
                    "private_key" => self.set_key(Key::from_hex(v).ok_or(libc::EINVAL)?),
                    "listen_port" => {
                        let port = v.parse().map_err(|_| libc::EINVAL)?;
                        self.bind(port).map_err(|e| {
                            tracing::warn!(port, error = %e, "cannot bind the port");
                            e.raw_os_error().unwrap_or(libc::EIO)
                        })?
                    }
                    "replace_peers" => {
                        self.peers.clear();
                        self.by_index.clear();
                    }
                    "public_key" => {
                        let key = Key::from_hex(v).ok_or(libc::EINVAL)?;
                        if !self.peers.contains_key(&key) {
                            let index = self.alloc_index();
                            let tunn = self.new_tunn(key, 0, index).ok_or(libc::EINVAL)?;
                            self.peers.insert(
                                key,
                                Peer {
                                    tunn,
                                    endpoint: None,
                                    allowed: Vec::new(),
                                    keepalive: 0,
                                    index,
                                },
                            );
                            self.by_index.insert(index, key);
                            tracing::info!(public_key = %key, "peer added");
                        }
                        current = Some(key);
                    }
                    "remove" if v == "true" => {
                        let key = peer(self).ok_or(libc::EINVAL)?;
                        if let Some(p) = self.peers.remove(&key) {
                            self.by_index.remove(&p.index);
                            tracing::info!(public_key = %key, "peer removed");
                        }
                        current = None;
                    }
                    "endpoint" => {
                        let key = peer(self).ok_or(libc::EINVAL)?;
                        let e: SocketAddr = v.parse().map_err(|_| libc::EINVAL)?;
                        if let Some(p) = self.peers.get_mut(&key) {
                            p.endpoint = Some(canonical(e));
                        }
                    }
                    "persistent_keepalive_interval" => {
                        let key = peer(self).ok_or(libc::EINVAL)?;
                        let ka: u16 = v.parse().map_err(|_| libc::EINVAL)?;
                        let index = self.peers.get(&key).map(|p| p.index).ok_or(libc::EINVAL)?;
                        if self.peers.get(&key).is_some_and(|p| p.keepalive != ka) {
                            let tunn = self.new_tunn(key, ka, index).ok_or(libc::EINVAL)?;
                            if let Some(p) = self.peers.get_mut(&key) {
                                p.tunn = tunn;
                                p.keepalive = ka;
                            }
                        }
                    }
                    "replace_allowed_ips" => {
                        let key = peer(self).ok_or(libc::EINVAL)?;
                        if let Some(p) = self.peers.get_mut(&key) {
                            p.allowed.clear();
                        }
                    }
                    "allowed_ip" => {
                        let key = peer(self).ok_or(libc::EINVAL)?;
                        let n: IpNet = v.parse().map_err(|_| libc::EINVAL)?;
                        if let Some(p) = self.peers.get_mut(&key) {
                            if !p.allowed.contains(&n) {
                                p.allowed.push(n);
                            }
                        }
                    }
                    "protocol_version" | "update_only" | "fwmark" | "preshared_key" => {}
                    _ => return Err(libc::EINVAL),
                }
                Ok(())
            })();
            if let Err(errno) = r {
                tracing::warn!(line = %format!("{k}={}", if k == "private_key" { "(hidden)" } else { v }), errno, "refused a UAPI line");
                return errno;
            }
        }
        0
    }

    fn get(&self) -> String {
        let mut s = String::new();
        if let Some((_, _, k)) = &self.key {
            s.push_str(&format!("private_key={}\n", k.to_hex()));
        }
        s.push_str(&format!("listen_port={}\n", self.port));
        s.push_str(&format!("twill_rejected_packets={}\n", self.rejected));
        let now = std::time::SystemTime::now();
        for (k, p) in &self.peers {
            s.push_str(&format!("public_key={}\n", k.to_hex()));
            if let Some(e) = p.endpoint {
                s.push_str(&format!("endpoint={e}\n"));
            }
            for n in &p.allowed {
                s.push_str(&format!("allowed_ip={n}\n"));
            }
            s.push_str(&format!("persistent_keepalive_interval={}\n", p.keepalive));
            let (since, tx, rx, _, _) = p.tunn.stats();
            s.push_str(&format!("rx_bytes={rx}\ntx_bytes={tx}\n"));
            if let Some(age) = since {
                let at = now.checked_sub(age).unwrap_or(now);
                let t = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                s.push_str(&format!(
                    "last_handshake_time_sec={}\nlast_handshake_time_nsec={}\ntwill_handshake_age_ms={}\n",
                    t.as_secs(),
                    t.subsec_nanos(),
                    age.as_millis()
                ));
            }
        }
        s.push_str("protocol_version=1\nerrno=0\n\n");
        s
    }

    /// The answer to one UAPI request.
    fn answer(&mut self, req: &str) -> String {
        match req.lines().next() {
            Some("get=1") => self.get(),
            Some("set=1") => format!("errno={}\n\n", self.set(req)),
            _ => format!("errno={}\n\n", libc::EINVAL),
        }
    }
}

/// A UAPI request and where its answer goes.
type Request = (String, tokio::sync::oneshot::Sender<String>);

/// Serves the requests of one connection, one at a time, until it closes or
/// stalls; the device answers them in its own loop, so a slow client never
/// holds up packets.
async fn connection(stream: UnixStream, device: tokio::sync::mpsc::Sender<Request>) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut req = String::new();
        let read = async {
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).await? == 0 {
                    return Ok::<bool, io::Error>(false);
                }
                if line == "\n" {
                    return Ok(true);
                }
                req.push_str(&line);
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Ok(Ok(true)) => {}
            _ => return,
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        if device.send((req, tx)).await.is_err() {
            return;
        }
        let Ok(answer) = rx.await else { return };
        if w.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Runs the device until no agent has spoken to it for `grace`.
pub async fn serve(opts: HelperOptions) -> Result<(), WgError> {
    let helper = |what: &str, e: &dyn std::fmt::Debug| WgError::Helper(format!("{what}: {e:?}"));
    let tun = TunSocket::new(&opts.ifname)
        .and_then(|t| t.set_non_blocking())
        .map_err(|e| helper(&format!("cannot open TUN device {}", opts.ifname), &e))?;
    // `register` would be the undeprecated way, but it is `unsafe` (the
    // crate forbids that); the fd is owned by the TunSocket moved in here and
    // closed only when the AsyncFd drops it, the soundness `register` asks.
    #[allow(deprecated)]
    let tun = AsyncFd::new(tun).map_err(|e| helper("cannot poll the TUN device", &e))?;
    let _ = std::fs::remove_file(&opts.socket);
    let listener = UnixListener::bind(&opts.socket)
        .map_err(|e| helper(&format!("cannot listen on {}", opts.socket.display()), &e))?;
    std::fs::set_permissions(&opts.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| helper("cannot make the socket mode 0600", &e))?;
    tracing::info!(ifname = %opts.ifname, socket = %opts.socket.display(), "userspace WireGuard device up");
    let mut dev = Device::default();
    let mut rbuf = vec![0u8; BUF];
    let mut out = vec![0u8; BUF];
    let mut tick = tokio::time::interval(TICK);
    let mut contact = Instant::now();
    let (req_tx, mut req_rx) = tokio::sync::mpsc::channel::<Request>(16);
    loop {
        let udp = dev.udp.clone();
        let udp_ready = async {
            match &udp {
                Some(u) => u.readable().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            g = tun.readable() => {
                let mut g = g.map_err(|e| helper("TUN device", &e))?;
                loop {
                    match g.get_inner().read(&mut rbuf) {
                        Ok(pkt) => dev.outbound(pkt, &mut out),
                        Err(boringtun::device::Error::IfaceRead(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                            g.clear_ready();
                            break;
                        }
                        // The device is gone (deleted by hand or by
                        // `twilld cleanup`): the agent starts a new helper.
                        Err(e) => {
                            let _ = std::fs::remove_file(&opts.socket);
                            return Err(helper("reading the TUN device", &e));
                        }
                    }
                }
            }
            r = udp_ready => {
                if r.is_ok() {
                    if let Some(u) = &udp {
                        while let Ok((n, from)) = u.try_recv_from(&mut rbuf) {
                            dev.inbound(&rbuf[..n], canonical(from), tun.get_ref(), &mut out);
                        }
                    }
                }
            }
            _ = tick.tick() => {
                dev.timers(&mut out);
                if contact.elapsed() > opts.grace {
                    tracing::warn!(grace = ?opts.grace, "no agent spoke to the device for the grace period: exiting");
                    let _ = std::fs::remove_file(&opts.socket);
                    return Ok(());
                }
            }
            c = listener.accept() => {
                if let Ok((s, _)) = c {
                    tokio::spawn(connection(s, req_tx.clone()));
                }
            }
            Some((req, reply)) = req_rx.recv() => {
                contact = Instant::now();
                let _ = reply.send(dev.answer(&req));
            }
        }
    }
}
