//! The prober's unit tests: targets, and the task itself on tokio's
//! paused clock against a fake network.

use super::*;
use crate::reconcile::Mac;
use std::net::Ipv4Addr;

fn node(i: u8, path: Path) -> RemoteNode {
    RemoteNode {
        subnet: format!("10.244.{i}.0/24").parse().unwrap(),
        subnet6: None,
        public_ip: Ipv4Addr::new(192, 0, 2, i),
        public_ipv6: None,
        path,
        vtep6: None,
    }
}

use std::collections::HashSet;
use std::sync::Mutex;
use tokio::sync::mpsc;

/// What a fake peer answers: small probes, full-size ones.
type Answers = Arc<Mutex<HashMap<IpAddr, (bool, bool)>>>;

/// A network where each destination answers as `answers` says, at once.
struct FakeNet {
    answers: Answers,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    tx: mpsc::UnboundedSender<EchoReply>,
    rx: mpsc::UnboundedReceiver<EchoReply>,
}

impl Transport for FakeNet {
    fn send(&mut self, dst: IpAddr, packet: &[u8]) -> std::io::Result<()> {
        self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (small, big) = self
            .answers
            .lock()
            .unwrap()
            .get(&dst)
            .copied()
            .unwrap_or_default();
        let full = packet.len() > small_probe(dst);
        if (full && big) || (!full && small) {
            let header = match dst {
                IpAddr::V4(_) => icmp::IP_HEADER,
                IpAddr::V6(_) => icmp6::IP6_HEADER,
            };
            let icmp = &packet[header..];
            let _ = self.tx.send(EchoReply {
                from: dst,
                id: u16::from_be_bytes([icmp[4], icmp[5]]),
                seq: u16::from_be_bytes([icmp[6], icmp[7]]),
                len: packet.len(),
            });
        }
        Ok(())
    }
    async fn recv(&mut self) -> std::io::Result<EchoReply> {
        match self.rx.recv().await {
            Some(r) => Ok(r),
            None => std::future::pending().await,
        }
    }
}

fn peer_set(n: u8) -> PeerSet {
    let own: Ipv4Net = "10.244.0.0/24".parse().unwrap();
    let nodes: Vec<RemoteNode> = (1..=n)
        .map(|i| node(i, Path::Vxlan(Mac([0x0a, 0, 0, 0, 0, i]))))
        .collect();
    PeerSet {
        mtu: 1450,
        targets: targets(own, &nodes),
    }
}

fn view(t: &Telemetry) -> PeersView {
    serde_json::from_str(&t.peer_health.json()).unwrap()
}

fn health(v: &PeersView, i: u8) -> (Option<bool>, Option<bool>) {
    let p = v
        .peers
        .iter()
        .find(|p| p.subnet == format!("10.244.{i}.0/24"))
        .unwrap();
    (p.reachable, p.mtu_ok)
}

fn vtep(i: u8) -> IpAddr {
    Ipv4Addr::new(10, 244, i, 0).into()
}

/// On tokio's paused clock: verdicts within 3 intervals of a change,
/// an MTU blackhole told apart from a lost peer, and the others
/// untouched.
#[tokio::test(start_paused = true)]
async fn verdicts_come_within_three_intervals_and_only_for_the_broken_peer() {
    let interval = Duration::from_secs(5);
    let answers: Answers = Arc::new(Mutex::new(HashMap::new()));
    for i in 1..=3 {
        answers.lock().unwrap().insert(vtep(i), (true, true));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let t = Arc::new(Telemetry::new());
    let net = FakeNet {
        answers: answers.clone(),
        sent: Default::default(),
        tx,
        rx,
    };
    let (peers_tx, peers_rx) = watch::channel(peer_set(3));
    let task = tokio::spawn(Prober::with_transport(net, interval, t.clone()).run(peers_rx));

    tokio::time::sleep(interval * 3).await;
    let v = view(&t);
    assert!(v.probing);
    for i in 1..=3 {
        assert_eq!(health(&v, i), (Some(true), Some(true)), "{v:?}");
    }

    // Peer 2 goes silent, peer 3 drops full-size packets.
    answers.lock().unwrap().insert(vtep(2), (false, false));
    answers.lock().unwrap().insert(vtep(3), (true, false));
    tokio::time::sleep(interval * 3).await;
    let v = view(&t);
    assert_eq!(health(&v, 1), (Some(true), Some(true)));
    assert_eq!(health(&v, 2), (Some(false), Some(false)));
    assert_eq!(health(&v, 3), (Some(true), Some(false)));
    let metrics = t.encode();
    assert!(
        metrics
            .contains("twill_peer_reachable{public_ip=\"192.0.2.2\",subnet=\"10.244.2.0/24\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("twill_peer_mtu_ok{public_ip=\"192.0.2.3\",subnet=\"10.244.3.0/24\"} 0"),
        "{metrics}"
    );

    // Fixed: back within 3 intervals.
    answers.lock().unwrap().insert(vtep(2), (true, true));
    answers.lock().unwrap().insert(vtep(3), (true, true));
    tokio::time::sleep(interval * 3).await;
    let v = view(&t);
    for i in 1..=3 {
        assert_eq!(health(&v, i), (Some(true), Some(true)), "{v:?}");
    }

    // A departed peer leaves the view and the metrics.
    peers_tx.send(peer_set(2)).unwrap();
    tokio::time::sleep(interval).await;
    let v = view(&t);
    assert_eq!(v.peers.len(), 2);
    assert!(!t.encode().contains("10.244.3.0/24"));
    drop(peers_tx);
    task.await.unwrap();
}

/// With more peers than a round takes, every peer still gets a verdict
/// within the documented number of intervals.
#[tokio::test(start_paused = true)]
async fn a_rotation_reaches_every_peer() {
    let interval = Duration::from_secs(5);
    let n: u16 = 600;
    let answers: Answers = Arc::new(Mutex::new(HashMap::new()));
    let own: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let targets: Vec<Target> = (1..=n)
        .map(|i| {
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 0)) + u32::from(i) * 4);
            answers.lock().unwrap().insert(ip.into(), (true, true));
            Target {
                subnet: Ipv4Net::new(ip, 30).unwrap().into(),
                public_ip: Ipv4Addr::new(192, 0, 2, 1).into(),
                src: own.network().into(),
                dst: ip.into(),
            }
        })
        .collect();
    let (tx, rx) = mpsc::unbounded_channel();
    let t = Arc::new(Telemetry::new());
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let net = FakeNet {
        answers,
        sent: sent.clone(),
        tx,
        rx,
    };
    let (_peers_tx, peers_rx) = watch::channel(PeerSet { mtu: 1450, targets });
    tokio::spawn(Prober::with_transport(net, interval, t.clone()).run(peers_rx));
    // The cap: one interval sends at most 256 peers' two probes.
    tokio::time::sleep(interval - Duration::from_millis(1)).await;
    let first = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(first > 0 && first <= 2 * MAX_PEERS_PER_ROUND, "{first}");
    // ceil(600 / 256) = 3 rounds, one more for the last answers and
    // one for the view, published once an interval.
    tokio::time::sleep(interval * 4).await;
    let v = view(&t);
    let known: HashSet<&str> = v
        .peers
        .iter()
        .filter(|p| p.reachable == Some(true))
        .map(|p| p.subnet.as_str())
        .collect();
    assert_eq!(known.len(), usize::from(n));
}

#[test]
fn targets_go_vtep_to_vtep_through_the_tunnel_and_gateway_to_gateway_on_direct_routes() {
    let own: Ipv4Net = "10.244.1.0/24".parse().unwrap();
    let mac = Mac([0x0a, 0, 0, 0, 0, 3]);
    let t = targets(own, &[node(3, Path::Vxlan(mac)), node(2, Path::Direct)]);
    assert_eq!(
        t,
        vec![
            target("10.244.2.0/24", "192.0.2.2", "10.244.1.1", "10.244.2.1"),
            target("10.244.3.0/24", "192.0.2.3", "10.244.1.0", "10.244.3.0"),
        ]
    );
}

/// A target from its four parts' text.
pub(super) fn target(subnet: &str, public_ip: &str, src: &str, dst: &str) -> Target {
    Target {
        subnet: subnet.parse().unwrap(),
        public_ip: public_ip.parse().unwrap(),
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
    }
}

fn node6(i: u8, path: Path) -> RemoteNode6 {
    RemoteNode6 {
        subnet6: format!("fd00:10:244:{i}::/64").parse().unwrap(),
        public_ipv6: format!("2001:db8::{i}").parse().unwrap(),
        path,
    }
}

fn ip6(s: &str) -> IpAddr {
    s.parse::<Ipv6Addr>().unwrap().into()
}

#[test]
fn ipv6_only_targets_go_vtep_to_vtep_through_the_tunnel_and_gateway_to_gateway_on_direct_routes() {
    let own: Ipv6Net = "fd00:10:244:1::/64".parse().unwrap();
    let mac = Mac([0x0a, 0, 0, 0, 0, 3]);
    let t = targets6(own, &[node6(3, Path::Vxlan(mac)), node6(2, Path::Direct)]);
    assert_eq!(
        t,
        vec![
            target(
                "fd00:10:244:2::/64",
                "2001:db8::2",
                "fd00:10:244:1::1",
                "fd00:10:244:2::1"
            ),
            target(
                "fd00:10:244:3::/64",
                "2001:db8::3",
                "fd00:10:244:1::",
                "fd00:10:244:3::"
            ),
        ]
    );
    // The same addresses the data path gives the devices and routes: the
    // VTEP address `desired_state6` routes via, the gateway the subnet
    // file names.
    let state = crate::reconcile::ipv6_only::desired_state6(&[node6(3, Path::Vxlan(mac))]);
    let route = state.routes.values().next().unwrap();
    assert_eq!(route.gateway, t[1].dst, "{state:?}");
    assert_eq!(IpAddr::from(crate::subnet_file::gateway6_of(own)), t[0].src);
    // Labels: the IPv6 subnet and public address, as strings.
    let l = PeerLabels::from(&t[1]);
    assert_eq!(
        (l.subnet.as_str(), l.public_ip.as_str()),
        ("fd00:10:244:3::/64", "2001:db8::3")
    );
}

#[test]
fn probes_of_mixed_families_are_refused_not_sent() {
    let v4: IpAddr = Ipv4Addr::new(10, 244, 1, 0).into();
    assert!(build_probe(v4, ip6("fd00::"), 1, 1, 100).is_none());
    let p = build_probe(ip6("fd00:1::"), ip6("fd00:2::"), 1, 1, 100).unwrap();
    assert_eq!((p.len(), p[0] >> 4), (100, 6));
    let p = build_probe(v4, v4, 1, 1, 100).unwrap();
    assert_eq!((p.len(), p[0] >> 4), (100, 4));
}

/// IPv6 peers on the paused clock: ICMPv6 probes of the pod MTU, the same
/// verdicts and series as for IPv4, labelled with the IPv6 subnet.
#[tokio::test(start_paused = true)]
async fn ipv6_peers_get_the_same_verdicts() {
    let interval = Duration::from_secs(5);
    let own: Ipv6Net = "fd00:10:244:1::/64".parse().unwrap();
    let nodes: Vec<RemoteNode6> = (2..=3)
        .map(|i| node6(i, Path::Vxlan(Mac([0x0a, 0, 0, 0, 0, i]))))
        .collect();
    let answers: Answers = Arc::new(Mutex::new(HashMap::new()));
    for i in 2..=3 {
        let dst = ip6(&format!("fd00:10:244:{i}::"));
        answers.lock().unwrap().insert(dst, (true, true));
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let t = Arc::new(Telemetry::new());
    let net = FakeNet {
        answers: answers.clone(),
        sent: Default::default(),
        tx,
        rx,
    };
    let set = PeerSet {
        mtu: 1430,
        targets: targets6(own, &nodes),
    };
    let (_peers_tx, peers_rx) = watch::channel(set);
    tokio::spawn(Prober::with_transport(net, interval, t.clone()).run(peers_rx));
    tokio::time::sleep(interval * 3).await;
    let state = |v: &PeersView, i: u8| {
        let p = v
            .peers
            .iter()
            .find(|p| p.subnet == format!("fd00:10:244:{i}::/64"))
            .unwrap();
        (p.reachable, p.mtu_ok)
    };
    let v = view(&t);
    assert_eq!(state(&v, 2), (Some(true), Some(true)), "{v:?}");
    assert_eq!(state(&v, 3), (Some(true), Some(true)), "{v:?}");

    answers
        .lock()
        .unwrap()
        .insert(ip6("fd00:10:244:3::"), (true, false));
    tokio::time::sleep(interval * 3).await;
    let v = view(&t);
    assert_eq!(state(&v, 2), (Some(true), Some(true)), "{v:?}");
    assert_eq!(state(&v, 3), (Some(true), Some(false)), "{v:?}");
    let metrics = t.encode();
    assert!(
        metrics.contains(
            "twill_peer_mtu_ok{public_ip=\"2001:db8::3\",subnet=\"fd00:10:244:3::/64\"} 0"
        ),
        "{metrics}"
    );
}

#[test]
fn publishing_wakes_the_prober_only_on_a_change() {
    let (tx, mut rx) = watch::channel(PeerSet::default());
    rx.borrow_and_update();
    let own: Ipv6Net = "fd00:10:244:1::/64".parse().unwrap();
    let set = PeerSet {
        mtu: 1430,
        targets: targets6(own, &[node6(2, Path::Direct)]),
    };
    assert!(publish(&tx, set.clone()));
    assert!(rx.has_changed().unwrap());
    rx.borrow_and_update();
    assert!(!publish(&tx, set.clone()), "the same set again");
    assert!(!rx.has_changed().unwrap());
    assert!(publish(&tx, PeerSet { mtu: 1400, ..set }));
}
