//! The agent in wireguard mode: its key in its lease, and the tunnel's
//! peers following the lease map (a node joins, changes its key, leaves).

use super::*;
use crate::wireguard::key::{Key, PrivateKey};

pub(super) fn wg_config() -> NetworkConfig {
    NetworkConfig::parse(
        br#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":51999}}"#,
    )
    .unwrap()
}

pub(super) fn wg_attrs(host: u8, key: Key) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::new(192, 0, 2, host),
        public_ipv6: None,
        backend_type: "wireguard".into(),
        backend_data: None,
        backend_v6_data: None,
        node_name: None,
        public_key: Some(key.to_base64()),
    }
}

fn peer_keys(rig: &Rig) -> Vec<Key> {
    rig.dp.lock().wg_peers.keys().copied().collect()
}

#[tokio::test(start_paused = true)]
async fn wireguard_peers_follow_the_lease_map() {
    let store = MemoryStore::with_config(wg_config());
    let (k5, k6, k7) = (
        PrivateKey::generate().public(),
        PrivateKey::generate().public(),
        PrivateKey::generate().public(),
    );
    let l5 = store
        .create_lease(net("10.244.5.0/24"), &wg_attrs(21, k5), Duration::ZERO)
        .await
        .unwrap();
    store
        .create_lease(net("10.244.6.0/24"), &wg_attrs(22, k6), Duration::ZERO)
        .await
        .unwrap();
    let mut rig = Rig::start(store.clone()).await;

    // Our lease carries our public key, the plan the tunnel.
    let subnet = rig.status.borrow().subnet;
    let ours = store
        .leases()
        .into_iter()
        .find(|l| l.subnet == subnet)
        .unwrap();
    assert_eq!(ours.attrs.backend_type, "wireguard");
    let our_key = Key::from_base64(ours.attrs.public_key.as_deref().unwrap()).unwrap();
    let spec = rig.dp.lock().devices.clone().unwrap().wireguard.unwrap();
    assert_eq!(spec.key.public(), our_key);
    assert_eq!((spec.listen_port, spec.mtu), (51999, 1440));

    // One peer per other node, with its endpoint and subnet, and a route
    // through the tunnel.
    rig.until("both peers are set", |r| peer_keys(r).len() == 2)
        .await;
    {
        let k = rig.dp.lock();
        let p5 = &k.wg_peers[&k5];
        assert_eq!(p5.endpoint, Some("192.0.2.21:51999".parse().unwrap()));
        assert_eq!(
            p5.allowed_ips,
            vec!["10.244.5.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            k.state
                .routes
                .get(&"10.244.6.0/24".parse::<IpNet>().unwrap())
                .map(|t| t.dev),
            Some(Dev::Wireguard)
        );
    }

    // A node changes its key: the peer follows.
    let mut moved = l5.clone();
    moved.attrs = wg_attrs(21, k7);
    store.put_lease_raw(moved);
    rig.until("the new key replaces the old", |r| {
        let keys = peer_keys(r);
        keys.contains(&k7) && !keys.contains(&k5)
    })
    .await;

    // A node leaves: its peer and route go.
    store.expire(net("10.244.6.0/24"));
    rig.until("the departed node's peer is gone", |r| {
        peer_keys(r) == vec![k7]
    })
    .await;
    assert!(!rig.dp.has_route("10.244.6.0/24"));

    // A lease without a key is skipped, not made a peer.
    let mut keyless = wg_attrs(23, k6);
    keyless.public_key = None;
    store
        .create_lease(net("10.244.8.0/24"), &keyless, Duration::ZERO)
        .await
        .unwrap();
    rig.until("the keyless lease is counted as skipped", |r| {
        r.telemetry.skipped_leases.get() >= 1
    })
    .await;
    assert_eq!(peer_keys(&rig), vec![k7]);
    rig.stop().await;
}
