//! `EtcdStore` against a real etcd started by each test on 127.0.0.1 with
//! random ports and a temporary data dir. Needs `/usr/bin/etcd`: missing, it
//! fails under `CI=true`, else the test prints a loud notice and returns.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use etcd_client::Client;
use ipnet::Ipv4Net;
use subnet_allocator::{
    acquire_lease, AllocError, EtcdOptions, EtcdStore, LeaseAttrs, LeaseEvent, LeaseStore,
    LeaseWatch, NetworkConfig, StoreError, VxlanData,
};

const ETCD: &str = "/usr/bin/etcd";
/// Guard against a hang, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);

struct Etcd {
    child: Child,
    endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts etcd, or returns `None` (after a loud message) when the binary is
/// missing outside CI.
async fn start_etcd() -> Option<Etcd> {
    if !Path::new(ETCD).exists() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{ETCD} is missing and CI=true: etcd integration tests cannot run");
        }
        eprintln!("\n!!!!! SKIPPED: {ETCD} not found; etcd integration test did NOT run !!!!!\n");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cp, pp) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{cp}");
    let peer_url = format!("http://127.0.0.1:{pp}");
    let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
    let child = Command::new(ETCD)
        .arg("--name=t")
        .arg(format!("--data-dir={}", dir.path().join("data").display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=t={peer_url}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let mut etcd = Etcd {
        child,
        endpoint: client_url,
        _dir: dir,
    };
    for _ in 0..200 {
        if let Some(status) = etcd.child.try_wait().unwrap() {
            let log =
                std::fs::read_to_string(etcd._dir.path().join("etcd.log")).unwrap_or_default();
            panic!("etcd exited early ({status}):\n{log}");
        }
        if let Ok(mut c) = Client::connect([&etcd.endpoint], None).await {
            if c.status().await.is_ok() {
                return Some(etcd);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("etcd at {} never answered", etcd.endpoint);
}

fn opts(etcd: &Etcd) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: "/twill-test/network".into(),
        ..EtcdOptions::default()
    }
}

async fn store_with_config(etcd: &Etcd, cfg_json: &str) -> (EtcdStore, NetworkConfig) {
    let store = EtcdStore::connect(opts(etcd)).await.unwrap();
    let cfg = NetworkConfig::parse(cfg_json.as_bytes()).unwrap();
    store.put_network_config(&cfg).await.unwrap();
    let read = store.get_network_config().await.unwrap();
    assert_eq!(read, cfg);
    (store, cfg)
}

fn attrs(ip: Ipv4Addr, mac_last: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: ip,
        backend_type: "vxlan".into(),
        backend_data: Some(VxlanData {
            vni: 1,
            vtep_mac: format!("02:00:00:00:00:{mac_last:02x}"),
        }),
        public_ipv6: None,
        backend_v6_data: None,
    }
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, i)
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

const TTL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn config_missing_and_malformed() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let store = EtcdStore::connect(opts(&etcd)).await.unwrap();
    assert!(matches!(
        store.get_network_config().await,
        Err(StoreError::NoConfig { ref key }) if key == "/twill-test/network/config"
    ));
    let mut c = Client::connect([&etcd.endpoint], None).await.unwrap();
    c.put(
        "/twill-test/network/config",
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#,
        None,
    )
    .await
    .unwrap();
    assert!(matches!(
        store.get_network_config().await,
        Err(StoreError::BadConfig { .. })
    ));
}

#[tokio::test]
async fn create_then_conflict() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let (store, _) = store_with_config(&etcd, r#"{"Network":"10.244.0.0/16"}"#).await;
    let s = net("10.244.7.0/24");
    let l = store.create_lease(s, &attrs(ip(1), 1), TTL).await.unwrap();
    assert_eq!(l.subnet, s);
    assert!(l.lease_id.is_some());
    let e = store
        .create_lease(s, &attrs(ip(2), 2), TTL)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AlreadyTaken(t) if t == s), "{e}");

    // The first writer's value is the one stored, in flannel's format.
    let mut c = Client::connect([&etcd.endpoint], None).await.unwrap();
    let r = c
        .get("/twill-test/network/subnets/10.244.7.0-24", None)
        .await
        .unwrap();
    let kv = &r.kvs()[0];
    assert_eq!(kv.value(), attrs(ip(1), 1).to_json().as_bytes());
    assert_eq!(Some(kv.lease()), l.lease_id);

    let snap = store.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 1);
    assert_eq!(snap.leases[0].attrs, attrs(ip(1), 1));
    assert_eq!(snap.leases[0].lease_id, l.lease_id);
    assert!(snap.revision > 0);

    store.delete_lease(s).await.unwrap();
    assert!(store.list_leases().await.unwrap().leases.is_empty());
    // Free again after deletion.
    store.create_lease(s, &attrs(ip(2), 2), TTL).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acquires_never_share_a_subnet() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    // Exactly 20 subnets for 20 nodes: every node must win one, none twice.
    let (store, cfg) = store_with_config(
        &etcd,
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.20.0"}"#,
    )
    .await;
    assert_eq!(cfg.subnet_count(), 20);
    let mut tasks = Vec::new();
    for i in 1..=20u8 {
        // One store (one client) per node, like separate agents.
        let store = EtcdStore::connect(opts(&etcd)).await.unwrap();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            acquire_lease(&store, &cfg, ip(i), &attrs(ip(i), i), None, TTL).await
        }));
    }
    let mut got = HashSet::new();
    for t in tasks {
        let l = tokio::time::timeout(PATIENCE, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(cfg.is_allocatable(l.subnet), "{}", l.subnet);
        assert!(got.insert(l.subnet), "subnet {} handed out twice", l.subnet);
    }
    let snap = store.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 20);
    let ips: HashSet<Ipv4Addr> = snap.leases.iter().map(|l| l.attrs.public_ip).collect();
    assert_eq!(ips.len(), 20);

    let e = acquire_lease(&store, &cfg, ip(99), &attrs(ip(99), 99), None, TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Alloc(AllocError::Exhausted { .. })),
        "{e}"
    );
}

#[tokio::test]
async fn acquire_reuses_own_lease_and_updates_attrs() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let (store, cfg) = store_with_config(&etcd, r#"{"Network":"10.244.0.0/16"}"#).await;
    let first = acquire_lease(
        &store,
        &cfg,
        ip(1),
        &attrs(ip(1), 1),
        Some(net("10.244.42.0/24")),
        TTL,
    )
    .await
    .unwrap();
    assert_eq!(first.subnet, net("10.244.42.0/24"));
    // Restart with a new VTEP MAC: same subnet, new value.
    let second = acquire_lease(&store, &cfg, ip(1), &attrs(ip(1), 0xee), None, TTL)
        .await
        .unwrap();
    assert_eq!(second.subnet, first.subnet);
    assert_eq!(second.attrs, attrs(ip(1), 0xee));
    let snap = store.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 1);
    assert_eq!(snap.leases[0].attrs, attrs(ip(1), 0xee));
    assert_eq!(snap.leases[0].lease_id, second.lease_id);
    // The old etcd lease is no longer what keeps the key alive.
    assert_ne!(second.lease_id, first.lease_id);
    store.renew_lease(&second).await.unwrap();

    // Another node cannot take it over through update_lease.
    let e = store
        .update_lease(
            &subnet_allocator::Lease {
                attrs: attrs(ip(2), 2),
                lease_id: None,
                ..second.clone()
            },
            &attrs(ip(2), 2),
            TTL,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::NotOwner(s) if s == first.subnet),
        "{e}"
    );
    // A preferred subnet that is taken is ignored.
    let other = acquire_lease(
        &store,
        &cfg,
        ip(2),
        &attrs(ip(2), 2),
        Some(first.subnet),
        TTL,
    )
    .await
    .unwrap();
    assert_ne!(other.subnet, first.subnet);
}

#[tokio::test]
async fn renew_extends_and_detects_loss() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let (store, _) = store_with_config(&etcd, r#"{"Network":"10.244.0.0/16"}"#).await;
    let l = store
        .create_lease(net("10.244.3.0/24"), &attrs(ip(3), 3), TTL)
        .await
        .unwrap();
    let r = store.renew_lease(&l).await.unwrap();
    assert_eq!(r.subnet, l.subnet);
    assert_eq!(r.lease_id, l.lease_id);
    let left = r.ttl_remaining.unwrap();
    assert!(left > Duration::ZERO && left <= TTL, "{left:?}");

    // Key deleted under us.
    store.delete_lease(l.subnet).await.unwrap();
    let e = store.renew_lease(&l).await.unwrap_err();
    assert!(
        matches!(e, StoreError::LeaseGone(s) if s == l.subnet),
        "{e}"
    );

    // Lease revoked under us.
    let l2 = store
        .create_lease(net("10.244.4.0/24"), &attrs(ip(4), 4), TTL)
        .await
        .unwrap();
    let mut c = Client::connect([&etcd.endpoint], None).await.unwrap();
    c.lease_revoke(l2.lease_id.unwrap()).await.unwrap();
    let e = store.renew_lease(&l2).await.unwrap_err();
    assert!(
        matches!(e, StoreError::LeaseGone(s) if s == l2.subnet),
        "{e}"
    );

    // Key taken over by another lease (e.g. recreated by another node).
    let l3 = store
        .create_lease(net("10.244.5.0/24"), &attrs(ip(5), 5), TTL)
        .await
        .unwrap();
    let other = c.lease_grant(60, None).await.unwrap().id();
    c.put(
        "/twill-test/network/subnets/10.244.5.0-24",
        attrs(ip(6), 6).to_json(),
        Some(etcd_client::PutOptions::new().with_lease(other)),
    )
    .await
    .unwrap();
    let e = store.renew_lease(&l3).await.unwrap_err();
    assert!(matches!(e, StoreError::LeaseGone(_)), "{e}");
}

#[tokio::test]
async fn short_ttl_expires_and_renew_reports_gone() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let (store, _) = store_with_config(&etcd, r#"{"Network":"10.244.0.0/16"}"#).await;
    let l = store
        .create_lease(
            net("10.244.9.0/24"),
            &attrs(ip(9), 9),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 1);
    let mut gone = false;
    for _ in 0..300 {
        if store.list_leases().await.unwrap().leases.is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "lease with a 2 s TTL never expired");
    let e = store.renew_lease(&l).await.unwrap_err();
    assert!(
        matches!(e, StoreError::LeaseGone(s) if s == l.subnet),
        "{e}"
    );
}

#[tokio::test]
async fn list_and_watch_skip_malformed_entries() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let (store, _) = store_with_config(&etcd, r#"{"Network":"10.244.0.0/16"}"#).await;
    let start = store.list_leases().await.unwrap().revision;
    let mut w = store.watch_leases(start).await.unwrap();
    let mut c = Client::connect([&etcd.endpoint], None).await.unwrap();
    let p = "/twill-test/network/subnets/";
    c.put(format!("{p}10.244.5.0-24"), "{not json", None)
        .await
        .unwrap();
    c.put(format!("{p}banana"), attrs(ip(1), 1).to_json(), None)
        .await
        .unwrap();
    c.put(format!("{p}10.244.6.5-24"), attrs(ip(1), 1).to_json(), None)
        .await
        .unwrap();
    c.put(format!("{p}10.99.0.0-24"), attrs(ip(1), 1).to_json(), None)
        .await
        .unwrap();
    c.put(
        format!("{p}10.244.7.0-24"),
        r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan"}"#,
        None,
    )
    .await
    .unwrap();
    c.put(
        format!("{p}10.244.8.0-24&fd00::-64"),
        attrs(ip(8), 8).to_json(),
        None,
    )
    .await
    .unwrap();
    let snap = store.list_leases().await.unwrap();
    let subnets: Vec<Ipv4Net> = snap.leases.iter().map(|l| l.subnet).collect();
    assert_eq!(subnets, vec![net("10.244.8.0/24")]);
    assert_eq!(snap.leases[0].attrs, attrs(ip(8), 8));

    // The watch saw all six puts, but only the valid one comes through.
    let (events, rev) = tokio::time::timeout(PATIENCE, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(matches!(&events[0], LeaseEvent::Added(l) if l.subnet == net("10.244.8.0/24")));
    assert_eq!(rev, snap.revision);
}

/// Collects events until `n` have arrived.
async fn collect(w: &mut LeaseWatch, n: usize) -> (Vec<LeaseEvent>, i64) {
    let mut all = Vec::new();
    let mut last = 0;
    while all.len() < n {
        let (ev, rev) = tokio::time::timeout(PATIENCE, w.next())
            .await
            .expect("watch stalled")
            .unwrap()
            .expect("watch closed");
        assert!(rev > last, "revisions must increase: {rev} after {last}");
        last = rev;
        all.extend(ev);
    }
    (all, last)
}

#[tokio::test]
async fn watch_sees_every_change_in_order() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let (store, _) = store_with_config(&etcd, r#"{"Network":"10.244.0.0/16"}"#).await;
    let snap = store.list_leases().await.unwrap();
    // A change between the list and the watch start must not be lost.
    let a = store
        .create_lease(net("10.244.1.0/24"), &attrs(ip(1), 1), TTL)
        .await
        .unwrap();
    let mut w = store.watch_leases(snap.revision).await.unwrap();
    let b = store
        .create_lease(net("10.244.2.0/24"), &attrs(ip(2), 2), TTL)
        .await
        .unwrap();
    store.delete_lease(a.subnet).await.unwrap();
    let b2 = store
        .update_lease(&b, &attrs(ip(2), 0x22), TTL)
        .await
        .unwrap();
    // Many nodes joining close together: nothing may be lost.
    for i in 10..40u8 {
        store
            .create_lease(net(&format!("10.244.{i}.0/24")), &attrs(ip(i), i), TTL)
            .await
            .unwrap();
    }
    let (events, last) = collect(&mut w, 34).await;
    assert_eq!(events.len(), 34);
    assert_eq!(
        events[0],
        LeaseEvent::Added(subnet_allocator::Lease {
            ttl_remaining: None,
            ..a.clone()
        })
    );
    assert_eq!(
        events[1],
        LeaseEvent::Added(subnet_allocator::Lease {
            ttl_remaining: None,
            ..b.clone()
        })
    );
    assert_eq!(events[2], LeaseEvent::Removed(a.subnet));
    assert_eq!(
        events[3],
        LeaseEvent::Added(subnet_allocator::Lease {
            ttl_remaining: None,
            ..b2.clone()
        })
    );
    for (k, i) in (10..40u8).enumerate() {
        match &events[4 + k] {
            LeaseEvent::Added(l) => assert_eq!(l.subnet, net(&format!("10.244.{i}.0/24"))),
            other => panic!("{other:?}"),
        }
    }
    // Resuming from the last revision yields only later changes.
    let mut w2 = store.watch_leases(last).await.unwrap();
    store.delete_lease(b.subnet).await.unwrap();
    let (events, _) = collect(&mut w2, 1).await;
    assert_eq!(events, vec![LeaseEvent::Removed(b.subnet)]);
}

#[tokio::test]
async fn watch_from_compacted_revision_reports_compacted() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let (store, _) = store_with_config(&etcd, r#"{"Network":"10.244.0.0/16"}"#).await;
    let old = store.list_leases().await.unwrap().revision;
    for i in 1..5u8 {
        store
            .create_lease(net(&format!("10.244.{i}.0/24")), &attrs(ip(i), i), TTL)
            .await
            .unwrap();
    }
    let now = store.list_leases().await.unwrap().revision;
    let mut c = Client::connect([&etcd.endpoint], None).await.unwrap();
    c.compact(now, None).await.unwrap();
    let err = match store.watch_leases(old).await {
        Err(e) => e,
        Ok(mut w) => tokio::time::timeout(PATIENCE, w.next())
            .await
            .unwrap()
            .expect_err("watch from a compacted revision must fail"),
    };
    match err {
        StoreError::Compacted { compact_revision } => assert_eq!(compact_revision, now),
        other => panic!("expected Compacted, got {other}"),
    }
    // Relisting and watching from the list's revision works.
    let snap = store.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 4);
    let mut w = store.watch_leases(snap.revision).await.unwrap();
    store.delete_lease(net("10.244.1.0/24")).await.unwrap();
    let (events, _) = collect(&mut w, 1).await;
    assert_eq!(events, vec![LeaseEvent::Removed(net("10.244.1.0/24"))]);
}

const DUAL_CFG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#;

fn dual_attrs(i: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ipv6: Some(format!("fd00:198::{i}").parse().unwrap()),
        backend_v6_data: Some(VxlanData {
            vni: 1,
            vtep_mac: format!("02:00:00:00:06:{i:02x}"),
        }),
        ..attrs(ip(i), i)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dual_stack_leases_are_acquired_listed_watched_renewed_and_deleted() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let (store, cfg) = store_with_config(&etcd, DUAL_CFG).await;
    assert!(cfg.ipv6.is_some());
    let start = store.list_leases().await.unwrap().revision;
    let mut w = store.watch_leases(start).await.unwrap();

    // Two nodes race for the only two subnets.
    let mut tasks = Vec::new();
    for i in 1..=2u8 {
        let node = EtcdStore::connect(opts(&etcd)).await.unwrap();
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            acquire_lease(&node, &cfg, ip(i), &dual_attrs(i), None, TTL).await
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        let l = tokio::time::timeout(PATIENCE, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(l.ipv6_subnet, cfg.ipv6_subnet_for(l.subnet), "{l:?}");
        got.push(l);
    }
    assert_ne!(got[0].subnet, got[1].subnet);
    assert_ne!(got[0].ipv6_subnet, got[1].ipv6_subnet);

    // Stored under flannel's dual-stack key, with flannel's value.
    let mut c = Client::connect([&etcd.endpoint], None).await.unwrap();
    for l in &got {
        let key = format!(
            "/twill-test/network/subnets/{}",
            subnet_allocator::lease_key_name(l.subnet, l.ipv6_subnet)
        );
        assert!(key.contains('&'), "{key}");
        let r = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(r.kvs().len(), 1, "{key} missing");
        assert_eq!(r.kvs()[0].value(), l.attrs.to_json().as_bytes());
        assert!(l.attrs.to_json().contains("BackendV6Data"));
    }

    let mut snap = store.list_leases().await.unwrap();
    snap.leases.sort_by_key(|l| l.subnet);
    got.sort_by_key(|l| l.subnet);
    let strip = |l: &subnet_allocator::Lease| subnet_allocator::Lease {
        ttl_remaining: None,
        ..l.clone()
    };
    assert_eq!(
        snap.leases,
        got.iter().map(strip).collect::<Vec<_>>(),
        "listing must carry the IPv6 subnets and attrs"
    );
    let (mut events, _) = collect(&mut w, 2).await;
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

    // Renew finds the dual-stack key; a second acquire reuses it.
    let r = store.renew_lease(&got[0]).await.unwrap();
    assert_eq!(r.ipv6_subnet, got[0].ipv6_subnet);
    let again = acquire_lease(
        &store,
        &cfg,
        got[0].attrs.public_ip,
        &got[0].attrs,
        None,
        TTL,
    )
    .await
    .unwrap();
    assert_eq!(
        (again.subnet, again.ipv6_subnet),
        (got[0].subnet, got[0].ipv6_subnet)
    );

    // delete_lease by IPv4 subnet removes the dual-stack key; watchers get
    // the removal keyed by the IPv4 subnet.
    let mut w = store
        .watch_leases(store.list_leases().await.unwrap().revision)
        .await
        .unwrap();
    store.delete_lease(got[1].subnet).await.unwrap();
    let (events, _) = collect(&mut w, 1).await;
    assert_eq!(events, vec![LeaseEvent::Removed(got[1].subnet)]);
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 1);
}

#[tokio::test]
async fn ipv4_only_lease_is_rekeyed_when_ipv6_is_enabled() {
    let Some(etcd) = start_etcd().await else {
        return;
    };
    let (store, v4cfg) = store_with_config(&etcd, r#"{"Network":"10.244.0.0/16"}"#).await;
    let old = acquire_lease(&store, &v4cfg, ip(1), &attrs(ip(1), 1), None, TTL)
        .await
        .unwrap();
    assert_eq!(old.ipv6_subnet, None);
    let dual = NetworkConfig::parse(
        br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
    )
    .unwrap();
    store.put_network_config(&dual).await.unwrap();
    let snap = store.list_leases().await.unwrap();
    let mut w = store.watch_leases(snap.revision).await.unwrap();
    let new = acquire_lease(&store, &dual, ip(1), &dual_attrs(1), None, TTL)
        .await
        .unwrap();
    assert_eq!(new.subnet, old.subnet, "the node keeps its IPv4 subnet");
    assert_eq!(new.ipv6_subnet, dual.ipv6_subnet_for(old.subnet));
    assert!(new.ipv6_subnet.is_some());
    let snap = store.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 1, "old key must be gone: {snap:?}");
    assert_eq!(snap.leases[0].ipv6_subnet, new.ipv6_subnet);
    // Removal of the old key first, then the new one: a watcher applying
    // events in order ends up with the lease.
    let (events, _) = collect(&mut w, 2).await;
    assert_eq!(
        events,
        vec![
            LeaseEvent::Removed(old.subnet),
            LeaseEvent::Added(subnet_allocator::Lease {
                ttl_remaining: None,
                ..new.clone()
            }),
        ]
    );
    store.renew_lease(&new).await.unwrap();
    // The old etcd lease was revoked with the move.
    assert!(matches!(
        store.renew_lease(&old).await,
        Err(StoreError::LeaseGone(_))
    ));
}
