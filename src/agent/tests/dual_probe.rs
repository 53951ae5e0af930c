//! The agent of a dual-stack node hands the prober two targets per
//! dual-stack peer: its IPv4 pod path and its IPv6 one (through the IPv6
//! tunnel when both ends have an IPv6 underlay address, else inside the
//! IPv4 one), at start, on watch events (the delta path) and when a peer
//! leaves.

use super::*;
use crate::probe::{PeerSet, Target};
use ipnet::Ipv6Net;
use std::net::{IpAddr, Ipv6Addr};
use subnet_allocator::LeaseRequest;

const DUAL: &[u8] = br#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"vxlan"}}"#;

/// A dual-stack peer's lease at `10.244.<host>.0/24` and
/// `fd00:10:244:f0<host>::/64` (below `SubnetMin`, outside the IPv6
/// subnets paired with ours: never the agent's), at `192.0.2.<host>`,
/// with an IPv6 underlay address `2001:db8::<host>` and its IPv6 VTEP
/// when `ipv6`.
async fn dual_peer(store: &MemoryStore, host: u8, ipv6: bool) {
    let mut attrs = peer_attrs(host);
    if ipv6 {
        let ip6: Ipv6Addr = format!("2001:db8::{host}").parse().unwrap();
        attrs.public_ipv6 = Some(ip6);
        attrs.backend_v6_data = Some(VxlanData {
            vni: 1,
            vtep_mac: Mac::for_vtep6(ip6, 1).to_string(),
        });
    }
    let req = LeaseRequest::new(
        net(&format!("10.244.{host}.0/24")),
        Some(subnet6(host)),
        &attrs,
        Duration::ZERO,
    );
    store.create_lease_with_ipv6(req).await.unwrap();
}

/// Waits (paused time) until the published set has `n` targets.
async fn targets(peers: &mut tokio::sync::watch::Receiver<PeerSet>, n: usize) -> Vec<Target> {
    for _ in 0..2000 {
        if peers.borrow().targets.len() == n {
            return peers.borrow().targets.clone();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never {n} targets: {:?}", *peers.borrow());
}

fn subnet6(host: u8) -> Ipv6Net {
    format!("fd00:10:244:f0{host:02}::/64").parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_dual_stack_peer_is_two_targets_at_start_on_events_and_until_it_leaves() {
    let cfg = NetworkConfig::parse(DUAL).unwrap();
    let store = MemoryStore::with_config(cfg.clone());
    dual_peer(&store, 5, true).await;
    let dp = FakeDatapath::default();
    dp.lock().ipv6 = Some("2001:db8::10".parse().unwrap());
    let (agent, _dir) = start_on(store.clone(), dp.clone(), |_| {}).await;
    let agent = agent.unwrap();
    let own = agent.lease().subnet;
    let own6 = agent.lease().ipv6_subnet.unwrap();
    let mut peers = agent.peers();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(Box::pin(async move {
        let _ = rx.await;
    })));

    // Both ends have an IPv6 underlay: the IPv6 target goes through
    // twill6.1, labelled with the peer's PublicIPv6.
    let t = targets(&mut peers, 2).await;
    let s6_5 = subnet6(5);
    assert_eq!(t[0].subnet, IpNet::from(net("10.244.5.0/24")));
    assert_eq!(
        (t[0].public_ip, t[0].src, t[0].dst),
        (ip("192.0.2.5"), own.network().into(), ip("10.244.5.0"))
    );
    assert_eq!(t[1].subnet, IpNet::from(s6_5));
    assert_eq!(
        (t[1].public_ip, t[1].src, t[1].dst),
        (
            ip("2001:db8::5"),
            own6.network().into(),
            s6_5.network().into()
        )
    );

    // A peer without an IPv6 underlay joins (a watch event): its IPv6 pod
    // path rides twill.1, labelled with its PublicIP.
    dual_peer(&store, 6, false).await;
    let t = targets(&mut peers, 4).await;
    let s6_6 = subnet6(6);
    let subnets: Vec<IpNet> = t.iter().map(|t| t.subnet).collect();
    assert_eq!(
        subnets,
        vec![
            net("10.244.5.0/24").into(),
            net("10.244.6.0/24").into(),
            s6_5.into(),
            s6_6.into()
        ]
    );
    assert_eq!(
        (t[3].public_ip, t[3].dst),
        (ip("192.0.2.6"), s6_6.network().into())
    );

    // The first one leaves: both its targets go.
    store.delete_lease(net("10.244.5.0/24")).await.unwrap();
    let t = targets(&mut peers, 2).await;
    let subnets: Vec<IpNet> = t.iter().map(|t| t.subnet).collect();
    assert_eq!(subnets, vec![net("10.244.6.0/24").into(), s6_6.into()]);
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}
