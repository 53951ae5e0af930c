//! A watch batch changes the per-peer state beside the kernel tables by
//! the changed peers only: the tunnel's members that came and went (no
//! whole-set write), the probe targets edited in place, the WireGuard
//! peers by UAPI `set` lines for the changed peers (no read of the
//! device). The full pass that follows finds nothing left to change: the
//! delta-kept state is what it computes.

use super::wireguard::{wg_attrs, wg_config};
use super::*;
use crate::guard::tunnel_peers;
use crate::probe::{targets, Target};
use crate::reconcile::{remote_nodes, Local, Mode};
use crate::wireguard::key::PrivateKey;
use crate::wireguard::uapi::PeerChange;
use twill_nft::guard::Peers;

fn ips(ips: &[&str]) -> Peers {
    Peers {
        v4: ips.iter().map(|a| a.parse().unwrap()).collect(),
        v6: Default::default(),
    }
}

fn members(rig: &Rig) -> Peers {
    rig.dp.lock().guard.last().unwrap().0.clone()
}

fn probe_targets(rig: &Rig) -> Vec<Target> {
    rig.probe.borrow().targets.clone()
}

/// What the full pass computes from the store's leases: the members and
/// the probe targets of a vxlan node at 192.0.2.10.
fn full(rig: &Rig) -> (Peers, Vec<Target>) {
    let subnet = rig.status.borrow().subnet;
    let local = Local {
        network: net("10.244.0.0/16"),
        subnet,
        subnet6: None,
        underlay: "192.0.2.10/24".parse().unwrap(),
        mode: Mode::Vxlan {
            direct_routing: false,
        },
        v6_tunnel: false,
    };
    let (nodes, _) = remote_nodes(&local, &rig.store.leases());
    (tunnel_peers(&nodes), targets(subnet, &nodes))
}

/// A resync's full pass (kernel read back, lease map walked) after the
/// deltas: it writes no member, hands the prober no new targets and
/// changes no WireGuard peer.
async fn the_full_pass_changes_nothing(rig: &mut Rig) {
    let (guard, wg) = {
        let k = rig.dp.lock();
        (k.guard.len(), k.wg_calls.len())
    };
    rig.probe.mark_unchanged();
    let passes = rig.status.borrow().passes;
    tokio::time::sleep(RESYNC + Duration::from_secs(1)).await;
    rig.wait("the resync ran", |s| s.passes > passes).await;
    let k = rig.dp.lock();
    assert!(
        k.guard[guard..].iter().all(|(_, check)| *check),
        "only the resync's check, no member write: {:?}",
        &k.guard[guard..]
    );
    assert!(
        k.wg_calls[wg..].iter().all(|(_, c)| c.is_empty()),
        "{:?}",
        &k.wg_calls[wg..]
    );
    assert!(!rig.probe.has_changed().unwrap(), "the same targets");
}

#[tokio::test(start_paused = true)]
async fn a_batch_touching_one_peer_changes_only_its_member_and_target() {
    let store = MemoryStore::with_config(config());
    for (s, host) in [
        ("10.244.5.0/24", 21),
        ("10.244.6.0/24", 22),
        ("10.244.7.0/24", 23),
    ] {
        peer(&store, s, host).await;
    }
    let mut rig = Rig::start(store).await;
    rig.wait("the first resync ran", |s| s.passes >= 2).await;
    assert_eq!(
        members(&rig),
        ips(&["192.0.2.21", "192.0.2.22", "192.0.2.23"])
    );
    let (writes, updates, reads) = {
        let k = rig.dp.lock();
        (k.guard_writes, k.guard_updates.len(), k.reads)
    };
    let before = probe_targets(&rig);
    assert_eq!(before.len(), 3);

    // 10.244.6.0/24 moves to 192.0.2.32.
    let mut moved = rig
        .store
        .leases()
        .into_iter()
        .find(|l| l.subnet == net("10.244.6.0/24"))
        .unwrap();
    moved.attrs = peer_attrs(32);
    rig.store.put_lease_raw(moved);
    rig.until("the moved peer is a member", |r| {
        members(r).v4.contains(&Ipv4Addr::new(192, 0, 2, 32))
    })
    .await;
    {
        let k = rig.dp.lock();
        assert_eq!(k.guard_writes, writes, "no whole-set write");
        assert_eq!(k.reads, reads, "no kernel read");
        assert_eq!(
            k.guard_updates[updates..],
            [(ips(&["192.0.2.32"]), ips(&["192.0.2.22"]))],
            "the one member that came and the one that went"
        );
    }
    rig.until("the prober sees the moved peer", |r| {
        probe_targets(r) != before
    })
    .await;
    let after = probe_targets(&rig);
    assert_eq!(after.len(), 3);
    let differ: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b)
        .map(|(_, b)| (b.subnet, b.public_ip))
        .collect();
    assert_eq!(
        differ,
        [(
            "10.244.6.0/24".parse::<IpNet>().unwrap(),
            "192.0.2.32".parse().unwrap()
        )]
    );
    assert_eq!((members(&rig), after), full(&rig));
    the_full_pass_changes_nothing(&mut rig).await;
    rig.stop().await;
}

/// A tiny deterministic generator (the test must not depend on luck).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(start_paused = true)]
async fn after_any_batches_the_delta_kept_members_and_targets_are_the_full_passs() {
    let mut rig = Rig::fresh().await;
    rig.wait("the first resync ran", |s| s.passes >= 2).await;
    let (writes, reads) = {
        let k = rig.dp.lock();
        (k.guard_writes, k.reads)
    };
    // Overlapping subnets (a /22 over four /24s) and shared public IPs
    // (hence shared VTEP MACs): conflicts that come and go with others.
    let subnets = [
        "10.244.1.0/24",
        "10.244.2.0/24",
        "10.244.3.0/24",
        "10.244.4.0/24",
        "10.244.5.0/24",
        "10.244.6.0/24",
        "10.244.4.0/22",
        "10.244.9.0/24",
    ];
    let mut rng = Lcg(20);
    let mut updates = 0;
    for round in 0..40 {
        for _ in 0..=rng.next(3) {
            let s = net(subnets[rng.next(subnets.len() as u64) as usize]);
            if rng.next(4) == 0 {
                let _ = rig.store.delete_lease(s).await;
            } else {
                let host = 21 + rng.next(6) as u8;
                rig.store.put_lease_raw(Lease {
                    subnet: s,
                    ipv6_subnet: None,
                    attrs: peer_attrs(host),
                    lease_id: None,
                    ttl_remaining: None,
                });
            }
        }
        rig.until(&format!("round {round}: the deltas caught up"), |r| {
            let (m, t) = full(r);
            members(r) == m && probe_targets(r) == t
        })
        .await;
        updates = rig.dp.lock().guard_updates.len();
    }
    {
        let k = rig.dp.lock();
        assert_eq!(k.guard_writes, writes, "members only ever updated in place");
        assert_eq!(k.reads, reads, "no full pass ran");
    }
    assert!(updates > 10, "the batches did change members: {updates}");
    the_full_pass_changes_nothing(&mut rig).await;
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_member_update_refused_rewrites_the_table_whole() {
    let mut rig = Rig::with_peer().await;
    rig.wait("the first resync ran", |s| s.passes >= 2).await;
    let writes = rig.dp.lock().guard_writes;
    rig.dp.lock().fail_guard_update = true;
    peer(&rig.store, "10.244.6.0/24", 22).await;
    rig.until("the new peer is routed", |r| {
        r.dp.has_route("10.244.6.0/24")
    })
    .await;
    {
        let k = rig.dp.lock();
        assert_eq!(k.guard_writes, writes + 1);
        let (peers, check) = k.guard.last().unwrap();
        assert_eq!(*peers, ips(&["192.0.2.21", "192.0.2.22"]));
        assert!(!check);
    }
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_wireguard_batch_sets_only_the_changed_peer() {
    let store = MemoryStore::with_config(wg_config());
    let keys: Vec<_> = (0..3).map(|_| PrivateKey::generate().public()).collect();
    let mut leases = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let s = net(&format!("10.244.{}.0/24", 5 + i));
        leases.push(
            store
                .create_lease(s, &wg_attrs(21 + i as u8, *k), Duration::ZERO)
                .await
                .unwrap(),
        );
    }
    let mut rig = Rig::start(store).await;
    rig.wait("the first resync ran", |s| s.passes >= 2).await;
    assert_eq!(rig.dp.lock().wg_peers.len(), 3);
    let calls = rig.dp.lock().wg_calls.len();
    let members_before = members(&rig);

    // One node changes its key: that peer goes, the new key comes; the
    // node (subnet, address) is the same, so no member or target moves.
    let new_key = PrivateKey::generate().public();
    let mut rekeyed = leases[1].clone();
    rekeyed.attrs = wg_attrs(22, new_key);
    rig.store.put_lease_raw(rekeyed);
    rig.until("the new key is a peer", |r| {
        r.dp.lock().wg_peers.contains_key(&new_key)
    })
    .await;
    let set = rig.dp.lock().wg_peers[&new_key].clone();
    assert_eq!(
        rig.dp.lock().wg_calls[calls..],
        [(
            false,
            vec![PeerChange::Remove(keys[1]), PeerChange::Set(set)]
        )],
        "the changed peer's lines only, the device not read"
    );
    assert_eq!(members(&rig), members_before);

    // Another moves to a new address: its peer is set with the new
    // endpoint, its member replaced.
    let calls = rig.dp.lock().wg_calls.len();
    let mut moved = leases[2].clone();
    moved.attrs = wg_attrs(33, keys[2]);
    rig.store.put_lease_raw(moved);
    rig.until("the moved peer's endpoint follows", |r| {
        r.dp.lock().wg_peers[&keys[2]].endpoint == Some("192.0.2.33:51999".parse().unwrap())
    })
    .await;
    {
        let k = rig.dp.lock();
        let set = k.wg_peers[&keys[2]].clone();
        assert_eq!(k.wg_calls[calls..], [(false, vec![PeerChange::Set(set)])]);
        assert_eq!(k.wg_peers.len(), 3);
    }
    assert_eq!(
        members(&rig),
        ips(&["192.0.2.21", "192.0.2.22", "192.0.2.33"])
    );
    the_full_pass_changes_nothing(&mut rig).await;
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_ipv6_only_batch_changes_only_its_member_and_target() {
    use super::ipv6_only::{config6, peer6, run, settle, v6dp};
    let store = MemoryStore::with_config(config6("vxlan"));
    for (s6, host) in [("fd00:10:244:21::/64", 0x21), ("fd00:10:244:22::/64", 0x22)] {
        peer6(&store, s6, host);
    }
    let dp = v6dp();
    let (r, _dir) = start_on(store.clone(), dp.clone(), |_| {}).await;
    let agent = r.expect("an IPv6-only node starts");
    let mut status = agent.status();
    let probe = agent.peers();
    let (tx, task) = run(agent);
    let first = tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.passes >= 2));
    assert!(first.await.is_ok(), "the first resync never ran");
    let (writes, updates) = {
        let k = dp.lock();
        (k.guard_writes, k.guard_updates.len())
    };
    let v6 = |a: &str| Peers {
        v4: Default::default(),
        v6: [a.parse().unwrap()].into(),
    };
    let subnets = |p: &tokio::sync::watch::Receiver<crate::probe::PeerSet>| -> Vec<String> {
        p.borrow()
            .targets
            .iter()
            .map(|t| t.subnet.to_string())
            .collect()
    };
    assert_eq!(
        subnets(&probe),
        ["fd00:10:244:21::/64", "fd00:10:244:22::/64"]
    );
    peer6(&store, "fd00:10:244:23::/64", 0x23);
    settle(&dp, "the joining node is a member", |k| {
        k.guard_updates.len() > updates
    })
    .await;
    store.expire_key("0.0.0.0-0&fd00:10:244:21::-64");
    settle(&dp, "the departed node is no member", |k| {
        k.guard_updates.len() > updates + 1
    })
    .await;
    {
        let k = dp.lock();
        assert_eq!(k.guard_writes, writes, "no whole-set write");
        assert_eq!(
            k.guard_updates[updates..],
            [
                (v6("2001:db8::23"), Peers::default()),
                (Peers::default(), v6("2001:db8::21"))
            ]
        );
        assert_eq!(
            k.guard.last().unwrap().0,
            Peers {
                v4: Default::default(),
                v6: [
                    "2001:db8::22".parse().unwrap(),
                    "2001:db8::23".parse().unwrap()
                ]
                .into(),
            }
        );
    }
    assert_eq!(
        subnets(&probe),
        ["fd00:10:244:22::/64", "fd00:10:244:23::/64"]
    );
    let _ = tx.send(());
    assert!(task.await.unwrap().is_ok());
}
