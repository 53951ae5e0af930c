//! Per-peer overlay health: every interval the agent pings a sample of the
//! other nodes through the data path pods use, with a small probe
//! (reachability, round-trip time) and a full-size one at the pod MTU with
//! don't-fragment (an MTU blackhole shows as such, not as "unreachable").
//!
//! In vxlan mode a probe goes from this node's VTEP address (`<subnet>.0`
//! on `twill.<VNI>`) to the peer's: the same device, route, neighbour and
//! FDB entries as pod traffic, in both directions, and it is answered by the
//! peer's kernel, also while its agent is stopped. On a direct route
//! (host-gw, or vxlan with DirectRouting) it goes from this node's bridge
//! gateway (`<subnet>.1`) to the peer's.
//!
//! In an IPv6-only cluster ([`targets6`]) the same with ICMPv6: from this
//! node's `twill6.<VNI>` address (`<subnet6>::`) to the peer's through the
//! tunnel, from bridge gateway to bridge gateway (`<subnet6>::1`) on a
//! direct route. One prober handles both families; its ICMPv6 socket is
//! opened at the first IPv6 probe. In a dual-stack cluster each peer is
//! also a second, IPv6 target: its IPv6 pod path ([`targets_dual6`]).
//!
//! Cost: at most [`MAX_PEERS_PER_ROUND`] peers (targets) per interval,
//! two packets each (and their replies), spread over the interval in
//! [`SLOTS`] slots; peers beyond that are probed in rotation, so each one
//! at least every
//! `ceil(peers / MAX_PEERS_PER_ROUND)` intervals (plus one for the
//! suspects that go first). A peer whose last probe went unanswered is
//! probed again at once, ahead of the rotation.
//!
//! The agent publishes the peer list ([`PeerSet`]) after each reconcile
//! pass; the prober runs as its own task and never touches the agent.

pub mod client;
mod dual;
mod icmp;
mod icmp6;
mod report;
mod state;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::reconcile::ipv6_only::RemoteNode6;
use crate::reconcile::{Path, RemoteNode};
use crate::telemetry::Telemetry;
pub use dual::targets_dual6;
pub use icmp::{build_echo, parse_reply, EchoReply, EchoSocket};
pub use icmp6::{build_echo6, checksum6, parse_reply6, EchoSocket6};
pub use report::{PeerHealth, PeerLabels, PeerReport, PeersView};
pub use state::{pick, PeerState, Round, Transition, MISSES_TO_FAIL};

/// Most peers probed per interval (two packets each).
pub const MAX_PEERS_PER_ROUND: usize = 256;
/// `--probe-interval`'s default, in seconds.
pub const DEFAULT_INTERVAL_SECS: u64 = 5;

/// One peer to probe: which node, and the addresses its probes use. The
/// addresses are of one family: IPv4 (ICMP) or IPv6 (ICMPv6) probes.
/// Ordered by subnet first (lists of targets are sorted that way), then the
/// rest, so that a list has one order even when two peers share a subnet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The node's pod subnet: IPv4, or IPv6 in an IPv6-only cluster.
    pub subnet: IpNet,
    pub public_ip: IpAddr,
    /// Ours, as pod traffic to this peer leaves.
    pub src: IpAddr,
    /// The peer's kernel answers here.
    pub dst: IpAddr,
}

/// What the agent hands the prober after each reconcile pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSet {
    /// The pod MTU: the size of the full-size probe.
    pub mtu: u32,
    /// Sorted by subnet.
    pub targets: Vec<Target>,
}

/// Hands the prober `set` through `tx`, waking it only when the set
/// changed; returns whether it did. The agent's publishing of IPv4 peers
/// ([`targets`]) and of an IPv6-only cluster's ([`targets6`]) alike.
pub fn publish(tx: &watch::Sender<PeerSet>, set: PeerSet) -> bool {
    tx.send_if_modified(|s| {
        let changed = *s != set;
        *s = set;
        changed
    })
}

/// The probe targets for the remote nodes of a node leasing `own`: through
/// the tunnel VTEP to VTEP, on a direct route gateway to gateway.
pub fn targets(own: Ipv4Net, nodes: &[RemoteNode]) -> Vec<Target> {
    let gateway = crate::subnet_file::gateway_of;
    let mut out: Vec<Target> = nodes
        .iter()
        .map(|n| {
            let (src, dst) = match n.path {
                Path::Vxlan(_) => (own.network(), n.vtep_ip()),
                // Through the WireGuard tunnel, bridge gateway to gateway:
                // both are on the pod path and answered by the kernels.
                Path::Direct | Path::Wireguard => (gateway(own), gateway(n.subnet)),
            };
            Target {
                subnet: n.subnet.into(),
                public_ip: n.public_ip.into(),
                src: src.into(),
                dst: dst.into(),
            }
        })
        .collect();
    out.sort();
    out
}

/// Every probe target of an IPv4 or dual-stack node leasing `own` (and
/// `own6` in a dual-stack cluster): each peer's IPv4 path, then each
/// dual-stack peer's IPv6 pod path, so the list stays sorted by subnet.
pub fn targets_all(own: Ipv4Net, own6: Option<Ipv6Net>, nodes: &[RemoteNode]) -> Vec<Target> {
    let mut t = targets(own, nodes);
    t.extend(targets_dual6(own6, nodes));
    t
}

/// The probe targets for the remote nodes of an IPv6-only cluster's node
/// leasing `own6`: through the tunnel from our `twill6.<VNI>` address to
/// the peer's (both `<subnet6>::`, the address the peer's route goes via),
/// on a direct route bridge gateway to bridge gateway (`<subnet6>::1`).
pub fn targets6(own6: Ipv6Net, nodes: &[RemoteNode6]) -> Vec<Target> {
    let gateway = crate::subnet_file::gateway6_of;
    let mut out: Vec<Target> = nodes
        .iter()
        .map(|n| {
            let (src, dst): (Ipv6Addr, Ipv6Addr) = match n.path {
                Path::Vxlan(_) => (own6.network(), n.subnet6.network()),
                // remote_nodes6 never gives Wireguard; were it to, the
                // tunnel would carry the gateways as it does for IPv4.
                Path::Direct | Path::Wireguard => (gateway(own6), gateway(n.subnet6)),
            };
            Target {
                subnet: n.subnet6.into(),
                public_ip: n.public_ipv6.into(),
                src: src.into(),
                dst: dst.into(),
            }
        })
        .collect();
    out.sort();
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Small,
    Big,
}

/// A round in progress for one peer: the slot it was sent in, and what
/// came back so far.
#[derive(Debug, Default)]
struct Pending {
    slot: usize,
    small: Option<Result<Duration, String>>,
    big: Option<Result<(), String>>,
}

/// The probing task: owns the raw socket and every peer's state.
///
/// An interval is cut in [`SLOTS`] slots; each slot concludes the probes
/// sent in that slot one interval before (each probe has a whole interval
/// to be answered) and sends the next ones, at most
/// `MAX_PEERS_PER_ROUND / SLOTS` peers, so that a round's packets are
/// spread over the interval instead of leaving in one burst.
pub struct Prober<T = EchoSockets> {
    sock: T,
    interval: Duration,
    telemetry: Arc<Telemetry>,
    id: u16,
    seq: u16,
    mtu: u32,
    peers: Vec<PeerState>,
    cursor: usize,
    slot: usize,
    /// Probes in flight by sequence number: peer, kind, when sent, slot.
    inflight: HashMap<u16, (IpNet, Kind, Instant, usize)>,
    round: HashMap<IpNet, Pending>,
}

/// Slots an interval is cut in.
pub const SLOTS: usize = 8;

/// Where probes go out and replies come in: the raw sockets, or a fake in
/// unit tests.
pub trait Transport: Send + 'static {
    /// Sends one packet built by [`build_probe`] towards `dst`.
    fn send(&mut self, dst: IpAddr, packet: &[u8]) -> std::io::Result<()>;
    /// The next echo reply, of either family.
    fn recv(&mut self) -> impl std::future::Future<Output = std::io::Result<EchoReply>> + Send;
}

/// An echo request of `size` bytes in all (IP header included) from `src`
/// to `dst`: ICMP with don't-fragment for IPv4, ICMPv6 for IPv6; `None`
/// when the two are of different families.
pub fn build_probe(src: IpAddr, dst: IpAddr, id: u16, seq: u16, size: usize) -> Option<Vec<u8>> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some(build_echo(s, d, id, seq, size)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Some(build_echo6(s, d, id, seq, size)),
        _ => None,
    }
}

/// The size of the small probe towards `dst`, headers included.
fn small_probe(dst: IpAddr) -> usize {
    match dst {
        IpAddr::V4(_) => icmp::SMALL_PROBE,
        IpAddr::V6(_) => icmp6::SMALL_PROBE6,
    }
}

/// The raw sockets: the ICMP one, opened at start (without it there is
/// no probing), and the ICMPv6 one, opened at the first IPv6 probe.
pub struct EchoSockets {
    v4: EchoSocket,
    v6: Option<EchoSocket6>,
}

impl EchoSockets {
    /// Opens the raw ICMP socket (needs CAP_NET_RAW).
    pub fn open() -> std::io::Result<Self> {
        Ok(EchoSockets {
            v4: EchoSocket::open()?,
            v6: None,
        })
    }
}

impl Transport for EchoSockets {
    fn send(&mut self, dst: IpAddr, packet: &[u8]) -> std::io::Result<()> {
        match dst {
            IpAddr::V4(d) => self.v4.send(d, packet),
            IpAddr::V6(d) => {
                let v6 = match &mut self.v6 {
                    Some(s) => s,
                    None => self.v6.insert(EchoSocket6::open().map_err(|e| {
                        std::io::Error::new(e.kind(), format!("opening the raw ICMPv6 socket: {e}"))
                    })?),
                };
                v6.send(d, packet)
            }
        }
    }

    async fn recv(&mut self) -> std::io::Result<EchoReply> {
        // Both reads are cancel-safe: the prober drops this future at
        // every tick.
        match &mut self.v6 {
            Some(v6) => tokio::select! {
                r = self.v4.recv() => r,
                r = v6.recv() => r,
            },
            None => self.v4.recv().await,
        }
    }
}

impl Prober<EchoSockets> {
    /// Opens the raw ICMP socket (needs CAP_NET_RAW); the ICMPv6 one is
    /// opened when the first IPv6 probe leaves.
    pub fn open(interval: Duration, telemetry: Arc<Telemetry>) -> std::io::Result<Self> {
        Ok(Prober::with_transport(
            EchoSockets::open()?,
            interval,
            telemetry,
        ))
    }
}

impl<T: Transport> Prober<T> {
    /// A prober sending through `sock`.
    pub fn with_transport(sock: T, interval: Duration, telemetry: Arc<Telemetry>) -> Self {
        Prober {
            sock,
            interval,
            telemetry,
            id: rand::random(),
            seq: 0,
            mtu: 0,
            peers: Vec::new(),
            cursor: 0,
            slot: 0,
            inflight: HashMap::new(),
            round: HashMap::new(),
        }
    }

    /// Probes until the agent drops its end of `peers`.
    pub async fn run(mut self, mut peers: watch::Receiver<PeerSet>) {
        let set = peers.borrow_and_update().clone();
        self.set_peers(set);
        let mut tick = tokio::time::interval(self.interval / SLOTS as u32);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.slot = (self.slot + 1) % SLOTS;
                    self.conclude();
                    self.start_slot();
                }
                r = self.sock.recv() => match r {
                    Ok(reply) => self.on_reply(reply),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading probe replies failed");
                        tokio::time::sleep(self.interval).await;
                    }
                },
                changed = peers.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let set = peers.borrow_and_update().clone();
                    self.set_peers(set);
                }
            }
        }
    }

    /// Takes a new peer list: known peers keep their state, departed ones
    /// lose their series.
    fn set_peers(&mut self, set: PeerSet) {
        self.mtu = set.mtu;
        let mut old: HashMap<IpNet, PeerState> =
            self.peers.drain(..).map(|p| (p.target.subnet, p)).collect();
        for t in set.targets {
            let state = match old.remove(&t.subnet) {
                Some(p) if p.target == t => p,
                Some(p) => {
                    self.telemetry.peer_health.forget(&p.target);
                    self.round.remove(&t.subnet);
                    PeerState::new(t)
                }
                None => PeerState::new(t),
            };
            self.peers.push(state);
        }
        for (s, p) in old {
            tracing::debug!(subnet = %s, public_ip = %p.target.public_ip, "no longer probing a departed peer");
            self.telemetry.peer_health.forget(&p.target);
            self.round.remove(&s);
        }
        self.telemetry.peer_health.set_gauges(&self.peers);
        self.publish_view();
    }

    fn publish_view(&self) {
        let view = PeersView {
            probing: true,
            interval_seconds: self.interval.as_secs_f64(),
            mtu: self.mtu,
            per_round: MAX_PEERS_PER_ROUND,
            peers: Vec::new(),
        };
        self.telemetry.peer_health.set_view(&self.peers, view);
    }

    fn send(&mut self, i: usize, kind: Kind) -> Result<(), String> {
        let t = &self.peers[i].target;
        let size = match kind {
            Kind::Small => small_probe(t.dst),
            Kind::Big => self.mtu as usize,
        };
        self.seq = self.seq.wrapping_add(1);
        let Some(packet) = build_probe(t.src, t.dst, self.id, self.seq, size) else {
            return Err(format!(
                "cannot probe {} from {}: not one address family",
                t.dst, t.src
            ));
        };
        match self.sock.send(t.dst, &packet) {
            Ok(()) => {
                self.inflight
                    .insert(self.seq, (t.subnet, kind, Instant::now(), self.slot));
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => Err(format!(
                "the {size}-byte probe with don't-fragment is larger than this node's route MTU ({e})"
            )),
            Err(e) => Err(format!("sending the {size}-byte probe failed: {e}")),
        }
    }

    fn start_slot(&mut self) {
        let round = &self.round;
        let (batch, next) = pick(&self.peers, self.cursor, MAX_PEERS_PER_ROUND / SLOTS, |p| {
            round.contains_key(&p.target.subnet)
        });
        self.cursor = next;
        for i in batch {
            let subnet = self.peers[i].target.subnet;
            let mut pending = Pending {
                slot: self.slot,
                ..Pending::default()
            };
            if let Err(e) = self.send(i, Kind::Small) {
                pending.small = Some(Err(e));
            }
            if self.mtu > 0 {
                if let Err(e) = self.send(i, Kind::Big) {
                    pending.big = Some(Err(e));
                }
            } else {
                pending.big = Some(Ok(()));
            }
            self.round.insert(subnet, pending);
        }
    }

    fn on_reply(&mut self, r: EchoReply) {
        if r.id != self.id {
            return;
        }
        let Some((subnet, kind, sent, _)) = self.inflight.remove(&r.seq) else {
            return;
        };
        let Some(pending) = self.round.get_mut(&subnet) else {
            return;
        };
        match kind {
            Kind::Small => pending.small = Some(Ok(sent.elapsed())),
            Kind::Big => pending.big = Some(Ok(())),
        }
    }

    /// Ends the rounds sent in this slot one interval ago: unanswered
    /// probes count as lost; logs the transitions and publishes.
    fn conclude(&mut self) {
        let slot = self.slot;
        self.inflight.retain(|_, v| v.3 != slot);
        let now = SystemTime::now();
        let waited = self.interval;
        let mtu = self.mtu;
        let mut concluded = Vec::new();
        let mut changed = false;
        for (i, p) in self.peers.iter_mut().enumerate() {
            let subnet = p.target.subnet;
            if self.round.get(&subnet).is_none_or(|r| r.slot != slot) {
                continue;
            }
            let Some(pending) = self.round.remove(&subnet) else {
                continue;
            };
            let round = Round {
                small: pending
                    .small
                    .unwrap_or_else(|| Err(format!("no reply within {waited:?}"))),
                big: pending.big.unwrap_or_else(|| {
                    Err(format!(
                        "no reply to the {mtu}-byte probe with don't-fragment within {waited:?}"
                    ))
                }),
            };
            let transitions = p.record(round, now);
            log_transitions(p, &transitions, mtu);
            changed |= !transitions.is_empty();
            concluded.push(i);
        }
        let health = &self.telemetry.peer_health;
        health.set_gauges(concluded.iter().map(|&i| &self.peers[i]));
        // The whole view once an interval, and at once on a transition.
        if changed || slot == 0 {
            self.publish_view();
        }
    }
}

/// One WARN line per transition, naming the peer.
fn log_transitions(p: &PeerState, transitions: &[Transition], mtu: u32) {
    let (subnet, public_ip) = (p.target.subnet, p.target.public_ip);
    let why = p.last_failure.as_deref().unwrap_or("");
    for tr in transitions {
        match *tr {
            Transition::Lost => {
                tracing::warn!(%subnet, %public_ip, error = why, "peer lost: probes through the overlay go unanswered")
            }
            Transition::Back => {
                tracing::warn!(%subnet, %public_ip, rtt = ?p.rtt, "peer back: probes through the overlay are answered again")
            }
            Transition::MtuTooSmall => {
                tracing::warn!(%subnet, %public_ip, mtu, error = why, "MTU too small on the path to peer: full-size packets are lost, small ones pass")
            }
            Transition::MtuFine => {
                tracing::warn!(%subnet, %public_ip, mtu, "MTU fine again on the path to peer: full-size packets pass")
            }
        }
    }
}

#[cfg(test)]
mod tests;
