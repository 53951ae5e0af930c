//! `FileStore` in a temporary directory: the same contract as the etcd
//! store (create-if-absent, races, renew, expiry, watch order, compaction).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use subnet_allocator::{
    acquire_lease, AllocError, FileStore, LeaseAttrs, LeaseEvent, LeaseStore, LeaseWatch,
    NetworkConfig, StoreError,
};

const TTL: Duration = Duration::from_secs(60);
/// Guard against a hang, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);

fn attrs(i: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::new(198, 18, 0, i),
        backend_type: "host-gw".into(),
        backend_data: None,
        public_ipv6: None,
        backend_v6_data: None,
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn setup(cfg_json: &str) -> (tempfile::TempDir, FileStore, NetworkConfig) {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let cfg = NetworkConfig::parse(cfg_json.as_bytes()).unwrap();
    store.put_network_config(&cfg).unwrap();
    (dir, store, cfg)
}

#[tokio::test]
async fn config_round_trip_and_missing() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    assert!(matches!(
        store.get_network_config().await,
        Err(StoreError::NoConfig { .. })
    ));
    std::fs::write(
        store.config_path(),
        r#"{"Network":"10.244.0.0/16","SubnetLen":8}"#,
    )
    .unwrap();
    assert!(matches!(
        store.get_network_config().await,
        Err(StoreError::BadConfig { .. })
    ));
    let cfg = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap();
    store.put_network_config(&cfg).unwrap();
    assert_eq!(store.get_network_config().await.unwrap(), cfg);
}

#[tokio::test]
async fn create_conflict_delete_and_persistence() {
    let (dir, store, _) = setup(r#"{"Network":"10.244.0.0/16"}"#);
    let s = net("10.244.3.0/24");
    let l = store.create_lease(s, &attrs(1), TTL).await.unwrap();
    assert!(l.lease_id.is_some());
    assert!(matches!(
        store.create_lease(s, &attrs(2), TTL).await,
        Err(StoreError::AlreadyTaken(t)) if t == s
    ));
    // Another handle on the same directory (e.g. after a restart) sees it.
    let again = FileStore::open(dir.path()).unwrap();
    let snap = again.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 1);
    assert_eq!(snap.leases[0].attrs, attrs(1));
    assert_eq!(snap.leases[0].lease_id, l.lease_id);
    again.delete_lease(s).await.unwrap();
    assert!(store.list_leases().await.unwrap().leases.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acquires_never_share_a_subnet() {
    let (dir, store, cfg) =
        setup(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.20.0"}"#);
    let mut tasks = Vec::new();
    for i in 1..=20u8 {
        let store = FileStore::open(dir.path()).unwrap();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            acquire_lease(&store, &cfg, attrs(i).public_ip, &attrs(i), None, TTL).await
        }));
    }
    let mut got = HashSet::new();
    for t in tasks {
        let l = tokio::time::timeout(PATIENCE, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(cfg.is_allocatable(l.subnet));
        assert!(got.insert(l.subnet), "subnet {} handed out twice", l.subnet);
    }
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 20);
    let e = acquire_lease(&store, &cfg, attrs(99).public_ip, &attrs(99), None, TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Alloc(AllocError::Exhausted { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn reuse_update_and_not_owner() {
    let (_dir, store, cfg) = setup(r#"{"Network":"10.244.0.0/16"}"#);
    let first = acquire_lease(&store, &cfg, attrs(1).public_ip, &attrs(1), None, TTL)
        .await
        .unwrap();
    let newer = LeaseAttrs {
        backend_type: "vxlan".into(),
        backend_data: Some(subnet_allocator::VxlanData {
            vni: 1,
            vtep_mac: "02:00:00:00:00:01".into(),
        }),
        ..attrs(1)
    };
    let second = acquire_lease(&store, &cfg, attrs(1).public_ip, &newer, None, TTL)
        .await
        .unwrap();
    assert_eq!(second.subnet, first.subnet);
    assert_eq!(store.list_leases().await.unwrap().leases[0].attrs, newer);
    let intruder = subnet_allocator::Lease {
        attrs: attrs(2),
        lease_id: None,
        ..second.clone()
    };
    assert!(matches!(
        store.update_lease(&intruder, &attrs(2), TTL).await,
        Err(StoreError::NotOwner(_))
    ));
    // The superseded lease handle is no longer valid for renewal.
    assert!(matches!(
        store.renew_lease(&first).await,
        Err(StoreError::LeaseGone(_))
    ));
    store.renew_lease(&second).await.unwrap();
}

#[tokio::test]
async fn expiry_and_renew() {
    let (_dir, store, _) = setup(r#"{"Network":"10.244.0.0/16"}"#);
    let keep = store
        .create_lease(net("10.244.1.0/24"), &attrs(1), TTL)
        .await
        .unwrap();
    let short = store
        .create_lease(net("10.244.2.0/24"), &attrs(2), Duration::from_secs(1))
        .await
        .unwrap();
    let r = store.renew_lease(&keep).await.unwrap();
    assert!(r.ttl_remaining.unwrap() > Duration::ZERO);
    let mut gone = false;
    for _ in 0..300 {
        let snap = store.list_leases().await.unwrap();
        if snap.leases.iter().all(|l| l.subnet != short.subnet) {
            assert!(snap.leases.iter().any(|l| l.subnet == keep.subnet));
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "1 s lease never expired");
    assert!(matches!(
        store.renew_lease(&short).await,
        Err(StoreError::LeaseGone(s)) if s == short.subnet
    ));
}

#[tokio::test]
async fn malformed_entries_are_skipped() {
    let (dir, store, _) = setup(r#"{"Network":"10.244.0.0/16"}"#);
    store
        .create_lease(net("10.244.1.0/24"), &attrs(1), TTL)
        .await
        .unwrap();
    store
        .create_lease(net("10.244.2.0/24"), &attrs(2), TTL)
        .await
        .unwrap();
    // Hand-edit the state: break one value, add a bad key.
    let path = dir.path().join("leases.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let leases = v["leases"].as_object_mut().unwrap();
    leases["10.244.2.0-24"]["value"] = "{garbage".into();
    let mut bad = leases["10.244.1.0-24"].clone();
    bad["value"] = attrs(3).to_json().into();
    leases.insert("not-a-subnet".into(), bad);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let snap = store.list_leases().await.unwrap();
    let subnets: Vec<Ipv4Net> = snap.leases.iter().map(|l| l.subnet).collect();
    assert_eq!(subnets, vec![net("10.244.1.0/24")]);

    std::fs::write(&path, b"{torn").unwrap();
    assert!(matches!(
        store.list_leases().await,
        Err(StoreError::Corrupt { .. })
    ));
}

async fn collect(w: &mut LeaseWatch, n: usize) -> Vec<LeaseEvent> {
    let mut all = Vec::new();
    while all.len() < n {
        let (ev, _) = tokio::time::timeout(PATIENCE, w.next())
            .await
            .expect("watch stalled")
            .unwrap()
            .expect("watch closed");
        all.extend(ev);
    }
    all
}

#[tokio::test]
async fn watch_in_order_and_compaction() {
    let (_dir, store, _) = setup(r#"{"Network":"10.244.0.0/16"}"#);
    let snap = store.list_leases().await.unwrap();
    let a = store
        .create_lease(net("10.244.1.0/24"), &attrs(1), TTL)
        .await
        .unwrap();
    let mut w = store.watch_leases(snap.revision).await.unwrap();
    let b = store
        .create_lease(net("10.244.2.0/24"), &attrs(2), TTL)
        .await
        .unwrap();
    store.delete_lease(a.subnet).await.unwrap();
    let events = collect(&mut w, 3).await;
    let strip = |l: &subnet_allocator::Lease| subnet_allocator::Lease {
        ttl_remaining: None,
        ..l.clone()
    };
    assert_eq!(
        events,
        vec![
            LeaseEvent::Added(strip(&a)),
            LeaseEvent::Added(strip(&b)),
            LeaseEvent::Removed(a.subnet),
        ]
    );

    // Push the old revision out of the bounded event log.
    let old = store.list_leases().await.unwrap().revision;
    for _ in 0..510 {
        store
            .create_lease(net("10.244.9.0/24"), &attrs(9), TTL)
            .await
            .unwrap();
        store.delete_lease(net("10.244.9.0/24")).await.unwrap();
    }
    let mut stale = store.watch_leases(old).await.unwrap();
    let e = tokio::time::timeout(PATIENCE, stale.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Compacted { compact_revision } if compact_revision > old),
        "{e}"
    );
}

fn dual_attrs(i: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ipv6: Some(format!("fd00:198::{i}").parse().unwrap()),
        ..attrs(i)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_stack_leases_acquire_list_watch_rekey_delete() {
    let (dir, store, cfg) = setup(
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
    );
    let start = store.list_leases().await.unwrap().revision;
    let mut w = store.watch_leases(start).await.unwrap();
    let mut tasks = Vec::new();
    for i in 1..=2u8 {
        let node = FileStore::open(dir.path()).unwrap();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            acquire_lease(&node, &cfg, attrs(i).public_ip, &dual_attrs(i), None, TTL).await
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        let l = tokio::time::timeout(PATIENCE, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(l.ipv6_subnet, cfg.ipv6_subnet_for(l.subnet));
        assert!(l.ipv6_subnet.is_some());
        got.push(l);
    }
    got.sort_by_key(|l| l.subnet);
    assert_ne!(got[0].ipv6_subnet, got[1].ipv6_subnet);
    let strip = |l: &subnet_allocator::Lease| subnet_allocator::Lease {
        ttl_remaining: None,
        ..l.clone()
    };
    let mut listed: Vec<_> = store
        .list_leases()
        .await
        .unwrap()
        .leases
        .iter()
        .map(strip)
        .collect();
    listed.sort_by_key(|l| l.subnet);
    assert_eq!(listed, got.iter().map(strip).collect::<Vec<_>>());
    let keys: Vec<String> = {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("leases.json")).unwrap())
                .unwrap();
        v["leases"].as_object().unwrap().keys().cloned().collect()
    };
    assert!(keys.iter().all(|k| k.contains('&')), "{keys:?}");
    let mut events = collect(&mut w, 2).await;
    events.sort_by_key(|e| match e {
        LeaseEvent::Added(l) => l.subnet,
        LeaseEvent::Removed(s) => *s,
    });
    assert_eq!(
        events,
        got.iter()
            .map(|l| LeaseEvent::Added(strip(l)))
            .collect::<Vec<_>>()
    );
    store.renew_lease(&got[0]).await.unwrap();

    // IPv6 switched off: the node keeps its subnet under the IPv4-only key.
    let v4cfg = NetworkConfig::parse(
        br#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0"}"#,
    )
    .unwrap();
    let mut w = store
        .watch_leases(store.list_leases().await.unwrap().revision)
        .await
        .unwrap();
    let moved = acquire_lease(&store, &v4cfg, attrs(1).public_ip, &attrs(1), None, TTL)
        .await
        .unwrap();
    let mine = got
        .iter()
        .find(|l| l.attrs.public_ip == attrs(1).public_ip)
        .unwrap();
    assert_eq!((moved.subnet, moved.ipv6_subnet), (mine.subnet, None));
    assert_eq!(
        collect(&mut w, 2).await,
        vec![
            LeaseEvent::Removed(mine.subnet),
            LeaseEvent::Added(strip(&moved))
        ]
    );
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 2);

    // delete_lease by IPv4 subnet finds the dual-stack key too.
    let other = got
        .iter()
        .find(|l| l.attrs.public_ip == attrs(2).public_ip)
        .unwrap();
    store.delete_lease(other.subnet).await.unwrap();
    let left = store.list_leases().await.unwrap().leases;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].subnet, moved.subnet);
}
