//! The `LeaseStore` contract, written once and run against every store: each
//! store's test file implements [`Harness`] and invokes
//! [`lease_store_contract!`](crate::lease_store_contract), which makes one
//! `#[tokio::test]` per behaviour, named `<store>_contract::<behaviour>`.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use subnet_allocator::{
    acquire_lease, acquire_lease_preferring, lease_key_name, subnet_key, AllocError, Lease,
    LeaseAttrs, LeaseEvent, LeaseRequest, LeaseStore, LeaseWatch, NetworkConfig, Preferred,
    StoreError, VxlanData,
};

use super::PATIENCE;

pub const TTL: Duration = Duration::from_secs(60);
/// Long enough for any store's minimum TTL, short enough to wait out.
pub const SHORT_TTL: Duration = Duration::from_secs(2);

pub const BASIC_CFG: &str = r#"{"Network":"10.244.0.0/16"}"#;
/// Exactly 20 subnets.
pub const TWENTY_CFG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.20.0"}"#;
pub const TWO_CFG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0"}"#;
/// [`TWO_CFG`] with IPv6.
pub const DUAL_CFG: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.0","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#;

/// An IPv6-only cluster (the issue's config), a /60 split in /64s: 15
/// subnets.
pub const V6_ONLY_CFG: &str =
    r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/60","IPv6SubnetLen":64}"#;

/// One store under test, and the ways to reach behind its API that the
/// contract needs (raw config, stored entries, compaction).
pub trait Harness: Sized {
    type Store: LeaseStore + 'static;
    /// Whether `list_leases` fills in `ttl_remaining`.
    const LIST_REPORTS_TTL: bool;

    /// A fresh, empty store without network config; `None` when what it
    /// needs is missing outside CI (the skip is announced loudly by then).
    async fn start() -> Option<Self>;
    fn store(&self) -> &Self::Store;
    /// Another handle on the same data, as a second agent (or this one
    /// after a restart) opens it.
    async fn another_node(&self) -> Self::Store;
    async fn put_config(&self, cfg: &NetworkConfig);
    /// Stores `raw` verbatim as the network config, valid or not.
    async fn put_raw_config(&self, raw: &str);
    /// The key `StoreError::NoConfig` names.
    fn config_key(&self) -> String;
    /// The lease entries as stored: key name (`10.244.3.0-24`, or with an
    /// `&<ipv6>` part) to (value, store lease id).
    async fn stored_leases(&self) -> BTreeMap<String, (String, i64)>;
    /// Makes every revision so far unavailable to new watches. Returns the
    /// compact revision the store must then report, where it is known.
    async fn compact_history(&self) -> Option<i64>;
}

/// One `#[tokio::test]` per contract item, in a module `$module`, for the
/// [`Harness`] `$harness` (a type in the invoking module).
#[macro_export]
macro_rules! lease_store_contract {
    ($module:ident, $harness:ident) => {
        $crate::lease_store_contract!(@tests $module, $harness;
            current_thread:
                config_missing_malformed_and_round_trip,
                create_conflict_list_and_delete,
                a_subnet_held_under_one_key_form_is_taken_for_the_other,
                acquire_reuses_own_lease_and_updates_attrs,
                renew_extends_ttl_and_detects_deletion,
                short_ttl_expires_and_renew_reports_gone,
                watch_sees_every_change_in_order,
                watch_from_compacted_revision_reports_compacted,
                ipv4_only_lease_is_rekeyed_when_ipv6_is_enabled;
            multi_thread:
                concurrent_acquires_never_share_a_subnet,
                dual_stack_leases_are_acquired_listed_watched_renewed_and_deleted,
                dual_stack_lease_is_rekeyed_when_ipv6_is_disabled,
                ipv6_only_leases_are_acquired_listed_watched_renewed_and_expire
        );
    };
    (@tests $module:ident, $harness:ident;
        current_thread: $($single:ident),+;
        multi_thread: $($multi:ident),+) => {
        mod $module {
            use super::$harness;
            use $crate::common::contract::{self, Harness};

            $(
                #[tokio::test]
                async fn $single() {
                    if let Some(h) = <$harness as Harness>::start().await {
                        contract::$single(&h).await;
                    }
                }
            )+
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $multi() {
                    if let Some(h) = <$harness as Harness>::start().await {
                        contract::$multi(&h).await;
                    }
                }
            )+
        }
    };
}

pub fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, i)
}

pub fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// Attrs without backend data.
pub fn host_gw(i: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: ip(i),
        backend_type: "host-gw".into(),
        backend_data: None,
        public_ipv6: None,
        backend_v6_data: None,
        node_name: None,
        public_key: None,
    }
}

pub fn vxlan(i: u8, mac_last: u8) -> LeaseAttrs {
    LeaseAttrs {
        backend_type: "vxlan".into(),
        backend_data: Some(VxlanData {
            vni: 1,
            vtep_mac: format!("02:00:00:00:00:{mac_last:02x}"),
        }),
        ..host_gw(i)
    }
}

pub fn dual(i: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ipv6: Some(format!("fd00:198::{i}").parse().unwrap()),
        backend_v6_data: Some(VxlanData {
            vni: 1,
            vtep_mac: format!("02:00:00:00:06:{i:02x}"),
        }),
        ..vxlan(i, i)
    }
}

/// An IPv6-only node's attrs: no IPv4 address, an IPv6 VTEP only.
pub fn v6_only(i: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::UNSPECIFIED,
        backend_data: None,
        ..dual(i)
    }
}

/// A lease as events carry it: without a TTL.
pub fn strip(l: &Lease) -> Lease {
    Lease {
        ttl_remaining: None,
        ..l.clone()
    }
}

fn by_subnet(e: &LeaseEvent) -> Ipv4Net {
    match e {
        LeaseEvent::Added(l) => l.subnet,
        LeaseEvent::Removed(s) => *s,
        LeaseEvent::RemovedIpv6Only(s) => panic!("unexpected IPv6-only removal {s}"),
        LeaseEvent::Unusable { key, .. } => panic!("unexpected unusable entry {key}"),
    }
}

/// Puts `cfg_json` as the network config and checks it reads back.
pub async fn configure<H: Harness>(h: &H, cfg_json: &str) -> NetworkConfig {
    let cfg = NetworkConfig::parse(cfg_json.as_bytes()).unwrap();
    h.put_config(&cfg).await;
    assert_eq!(h.store().get_network_config().await.unwrap(), cfg);
    cfg
}

/// The leases listed, sorted by subnet, after checking that the TTL is
/// reported exactly when the store says it does.
pub async fn list_sorted<H: Harness>(h: &H) -> Vec<Lease> {
    let mut leases = h.store().list_leases().await.unwrap().leases;
    for l in &leases {
        assert_eq!(l.ttl_remaining.is_some(), H::LIST_REPORTS_TTL, "{l:?}");
    }
    leases.sort_by_key(|l| l.subnet);
    leases
}

/// Collects events until `n` have arrived; revisions must increase.
pub async fn collect(w: &mut LeaseWatch, n: usize) -> (Vec<LeaseEvent>, i64) {
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

/// A watch from the store's current revision.
pub async fn watch_from_now(store: &impl LeaseStore) -> LeaseWatch {
    let rev = store.list_leases().await.unwrap().revision;
    store.watch_leases(rev).await.unwrap()
}

pub async fn assert_gone(store: &impl LeaseStore, lease: &Lease) {
    let e = store.renew_lease(lease).await.unwrap_err();
    assert!(
        matches!(e, StoreError::LeaseGone(s) if s == lease.subnet),
        "{e}"
    );
}

/// A lease moved to another key shows as the old key's removal, then the
/// new key: a watcher applying events in order ends up with the lease.
pub async fn assert_rekey_events(w: &mut LeaseWatch, moved: &Lease) {
    let (events, _) = collect(w, 2).await;
    assert_eq!(
        events,
        vec![
            LeaseEvent::Removed(moved.subnet),
            LeaseEvent::Added(strip(moved))
        ]
    );
}

/// Each of `nodes` acquires a lease at the same time through its own store
/// handle; returns the leases in the order of `nodes`.
pub async fn acquire_on_nodes<H: Harness>(
    h: &H,
    cfg: &NetworkConfig,
    nodes: Vec<LeaseAttrs>,
) -> Vec<Lease> {
    let mut tasks = Vec::new();
    for attrs in nodes {
        let store = h.another_node().await;
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            acquire_lease(&store, &cfg, attrs.public_ip, &attrs, None, TTL).await
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        let l = tokio::time::timeout(PATIENCE, t)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(cfg.is_allocatable(l.subnet), "{}", l.subnet);
        assert_eq!(l.ipv6_subnet, cfg.ipv6_subnet_for(l.subnet), "{l:?}");
        got.push(l);
    }
    got
}

pub async fn config_missing_malformed_and_round_trip<H: Harness>(h: &H) {
    let e = h.store().get_network_config().await.unwrap_err();
    assert!(
        matches!(e, StoreError::NoConfig { ref key } if *key == h.config_key()),
        "{e}"
    );
    // Valid JSON, invalid config: a subnet larger than the network, and a
    // backend twill does not have.
    for raw in [
        r#"{"Network":"10.244.0.0/16","SubnetLen":8}"#,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#,
    ] {
        h.put_raw_config(raw).await;
        let e = h.store().get_network_config().await.unwrap_err();
        assert!(matches!(e, StoreError::BadConfig { .. }), "{raw}: {e}");
    }
    configure(h, BASIC_CFG).await;
}

pub async fn create_conflict_list_and_delete<H: Harness>(h: &H) {
    configure(h, BASIC_CFG).await;
    let store = h.store();
    let s = net("10.244.7.0/24");
    let l = store.create_lease(s, &host_gw(1), TTL).await.unwrap();
    assert_eq!(l.subnet, s);
    assert!(l.lease_id.is_some());
    let e = store.create_lease(s, &vxlan(2, 2), TTL).await.unwrap_err();
    assert!(matches!(e, StoreError::AlreadyTaken(t) if t == s), "{e}");

    // The first writer's value is the one stored, in flannel's format.
    let stored = h.stored_leases().await;
    assert_eq!(
        stored.get("10.244.7.0-24"),
        Some(&(host_gw(1).to_json(), l.lease_id.unwrap())),
        "{stored:?}"
    );

    // Another handle (another node, or this one after a restart) sees it
    // and can delete it.
    let other = h.another_node().await;
    let snap = other.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 1);
    assert_eq!(snap.leases[0].attrs, host_gw(1));
    assert_eq!(snap.leases[0].lease_id, l.lease_id);
    assert!(snap.revision > 0);
    other.delete_lease(s).await.unwrap();
    assert!(store.list_leases().await.unwrap().leases.is_empty());
    // Free again after deletion.
    store.create_lease(s, &vxlan(2, 2), TTL).await.unwrap();
}

pub async fn a_subnet_held_under_one_key_form_is_taken_for_the_other<H: Harness>(h: &H) {
    // In a mixed-version upgrade an IPv4-only agent writes `<v4>` and a
    // dual-stack one `<v4>&<v6>`: the two must never share an IPv4 subnet.
    configure(h, BASIC_CFG).await;
    let store = h.store();
    let v6 = |s: &str| Some(s.parse::<ipnet::Ipv6Net>().unwrap());
    let (a, b) = (net("10.244.7.0/24"), net("10.244.8.0/24"));
    store
        .create_lease_with_ipv6(LeaseRequest::new(a, None, &host_gw(1), TTL))
        .await
        .unwrap();
    let e = store
        .create_lease_with_ipv6(LeaseRequest::new(
            a,
            v6("fd00:10:244:7::/64"),
            &host_gw(2),
            TTL,
        ))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::AlreadyTaken(t) if t == a), "{e}");
    store
        .create_lease_with_ipv6(LeaseRequest::new(
            b,
            v6("fd00:10:244:8::/64"),
            &host_gw(3),
            TTL,
        ))
        .await
        .unwrap();
    for other in [None, v6("fd00:10:244:99::/64")] {
        let e = store
            .create_lease_with_ipv6(LeaseRequest::new(b, other, &host_gw(4), TTL))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::AlreadyTaken(t) if t == b), "{e}");
    }
    let stored = h.stored_leases().await;
    let keys: Vec<&String> = stored.keys().collect();
    assert_eq!(
        keys,
        ["10.244.7.0-24", "10.244.8.0-24&fd00:10:244:8::-64"],
        "{stored:?}"
    );
    // Other subnets stay free.
    store
        .create_lease_with_ipv6(LeaseRequest::new(
            net("10.244.70.0/24"),
            None,
            &host_gw(5),
            TTL,
        ))
        .await
        .unwrap();
}

pub async fn concurrent_acquires_never_share_a_subnet<H: Harness>(h: &H) {
    // Exactly 20 subnets for 20 nodes: every node must win one, none twice.
    let cfg = configure(h, TWENTY_CFG).await;
    assert_eq!(cfg.subnet_count(), 20);
    let got = acquire_on_nodes(h, &cfg, (1..=20).map(|i| vxlan(i, i)).collect()).await;
    let mut subnets = HashSet::new();
    for l in &got {
        assert!(
            subnets.insert(l.subnet),
            "subnet {} handed out twice",
            l.subnet
        );
    }
    let snap = h.store().list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 20);
    let ips: HashSet<Ipv4Addr> = snap.leases.iter().map(|l| l.attrs.public_ip).collect();
    assert_eq!(ips.len(), 20);

    let e = acquire_lease(h.store(), &cfg, ip(99), &vxlan(99, 99), None, TTL)
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Alloc(AllocError::Exhausted { .. })),
        "{e}"
    );
}

pub async fn acquire_reuses_own_lease_and_updates_attrs<H: Harness>(h: &H) {
    let cfg = configure(h, BASIC_CFG).await;
    let store = h.store();
    let preferred = net("10.244.42.0/24");
    let first = acquire_lease(store, &cfg, ip(1), &host_gw(1), Some(preferred), TTL)
        .await
        .unwrap();
    assert_eq!(first.subnet, preferred);
    // Restart with another backend: same subnet, new value.
    let newer = vxlan(1, 0xee);
    let second = acquire_lease(store, &cfg, ip(1), &newer, None, TTL)
        .await
        .unwrap();
    assert_eq!(second.subnet, first.subnet);
    assert_eq!(second.attrs, newer);
    let snap = store.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 1);
    assert_eq!(snap.leases[0].attrs, newer);
    assert_eq!(snap.leases[0].lease_id, second.lease_id);
    // The old store lease is no longer what keeps the key alive, so the
    // superseded handle cannot be renewed.
    assert_ne!(second.lease_id, first.lease_id);
    store.renew_lease(&second).await.unwrap();
    assert_gone(store, &first).await;

    // Another node cannot take it over through rewrite_lease.
    let intruder = Lease {
        attrs: vxlan(2, 2),
        lease_id: None,
        ..second.clone()
    };
    let e = store
        .rewrite_lease(
            &intruder,
            LeaseRequest::same_key(&intruder, &vxlan(2, 2), TTL),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::NotOwner(s) if s == first.subnet),
        "{e}"
    );
    // A preferred subnet that is taken is ignored.
    let other = acquire_lease(store, &cfg, ip(2), &vxlan(2, 2), Some(first.subnet), TTL)
        .await
        .unwrap();
    assert_ne!(other.subnet, first.subnet);
}

pub async fn renew_extends_ttl_and_detects_deletion<H: Harness>(h: &H) {
    configure(h, BASIC_CFG).await;
    let store = h.store();
    let l = store
        .create_lease(net("10.244.3.0/24"), &vxlan(3, 3), TTL)
        .await
        .unwrap();
    let r = store.renew_lease(&l).await.unwrap();
    assert_eq!(r.subnet, l.subnet);
    assert_eq!(r.lease_id, l.lease_id);
    let left = r.ttl_remaining.unwrap();
    assert!(left > Duration::ZERO && left <= TTL, "{left:?}");

    // Key deleted under us.
    store.delete_lease(l.subnet).await.unwrap();
    assert_gone(store, &l).await;
}

pub async fn short_ttl_expires_and_renew_reports_gone<H: Harness>(h: &H) {
    configure(h, BASIC_CFG).await;
    let store = h.store();
    let keep = store
        .create_lease(net("10.244.1.0/24"), &host_gw(1), TTL)
        .await
        .unwrap();
    let short = store
        .create_lease(net("10.244.9.0/24"), &vxlan(9, 9), SHORT_TTL)
        .await
        .unwrap();
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 2);
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
    assert!(gone, "lease with a {SHORT_TTL:?} TTL never expired");
    assert_gone(store, &short).await;
    store.renew_lease(&keep).await.unwrap();
}

pub async fn watch_sees_every_change_in_order<H: Harness>(h: &H) {
    configure(h, BASIC_CFG).await;
    let store = h.store();
    let snap = store.list_leases().await.unwrap();
    // A change between the list and the watch start must not be lost.
    let a = store
        .create_lease(net("10.244.1.0/24"), &vxlan(1, 1), TTL)
        .await
        .unwrap();
    let mut w = store.watch_leases(snap.revision).await.unwrap();
    let b = store
        .create_lease(net("10.244.2.0/24"), &host_gw(2), TTL)
        .await
        .unwrap();
    store.delete_lease(a.subnet).await.unwrap();
    let b2 = store
        .rewrite_lease(&b, LeaseRequest::same_key(&b, &vxlan(2, 0x22), TTL))
        .await
        .unwrap();
    // Many nodes joining close together: nothing may be lost.
    let joined: Vec<Ipv4Net> = (10..40u8)
        .map(|i| net(&format!("10.244.{i}.0/24")))
        .collect();
    for (s, i) in joined.iter().zip(10u8..) {
        store.create_lease(*s, &vxlan(i, i), TTL).await.unwrap();
    }
    let (events, last) = collect(&mut w, 34).await;
    assert_eq!(events.len(), 34);
    assert_eq!(
        events[..4],
        [
            LeaseEvent::Added(strip(&a)),
            LeaseEvent::Added(strip(&b)),
            LeaseEvent::Removed(a.subnet),
            LeaseEvent::Added(strip(&b2)),
        ]
    );
    for (e, s) in events[4..].iter().zip(&joined) {
        assert!(matches!(e, LeaseEvent::Added(l) if l.subnet == *s), "{e:?}");
    }
    // Resuming from the last revision yields only later changes.
    let mut w2 = store.watch_leases(last).await.unwrap();
    store.delete_lease(b.subnet).await.unwrap();
    let (events, _) = collect(&mut w2, 1).await;
    assert_eq!(events, vec![LeaseEvent::Removed(b.subnet)]);
}

pub async fn watch_from_compacted_revision_reports_compacted<H: Harness>(h: &H) {
    configure(h, BASIC_CFG).await;
    let store = h.store();
    let old = store.list_leases().await.unwrap().revision;
    for i in 1..5u8 {
        store
            .create_lease(net(&format!("10.244.{i}.0/24")), &vxlan(i, i), TTL)
            .await
            .unwrap();
    }
    let expected = h.compact_history().await;
    let mut stale = store.watch_leases(old).await.unwrap();
    let e = tokio::time::timeout(PATIENCE, stale.next())
        .await
        .unwrap()
        .expect_err("watch from a compacted revision must fail");
    let StoreError::Compacted { compact_revision } = e else {
        panic!("expected Compacted, got {e}");
    };
    assert!(compact_revision > old, "{compact_revision} <= {old}");
    if let Some(expected) = expected {
        assert_eq!(compact_revision, expected);
    }
    // Relisting and watching from the list's revision works.
    let snap = store.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 4);
    let mut w = store.watch_leases(snap.revision).await.unwrap();
    store.delete_lease(net("10.244.1.0/24")).await.unwrap();
    let (events, _) = collect(&mut w, 1).await;
    assert_eq!(events, vec![LeaseEvent::Removed(net("10.244.1.0/24"))]);
}

pub async fn dual_stack_leases_are_acquired_listed_watched_renewed_and_deleted<H: Harness>(h: &H) {
    let cfg = configure(h, DUAL_CFG).await;
    assert!(cfg.ipv6.is_some());
    let store = h.store();
    let mut w = watch_from_now(store).await;

    // Two nodes race for the only two subnets.
    let mut got = acquire_on_nodes(h, &cfg, vec![dual(1), dual(2)]).await;
    got.sort_by_key(|l| l.subnet);
    assert_ne!(got[0].subnet, got[1].subnet);
    assert!(got[0].ipv6_subnet.is_some());
    assert_ne!(got[0].ipv6_subnet, got[1].ipv6_subnet);

    // Stored under flannel's dual-stack key, with flannel's value.
    let stored = h.stored_leases().await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    for l in &got {
        let key = lease_key_name(l.subnet, l.ipv6_subnet);
        assert!(key.contains('&'), "{key}");
        assert_eq!(
            stored.get(&key),
            Some(&(l.attrs.to_json(), l.lease_id.unwrap())),
            "{key}"
        );
        assert!(l.attrs.to_json().contains("BackendV6Data"));
    }

    let listed = list_sorted(h).await;
    assert_eq!(
        listed.iter().map(strip).collect::<Vec<_>>(),
        got.iter().map(strip).collect::<Vec<_>>(),
        "listing must carry the IPv6 subnets and attrs"
    );
    let (mut events, _) = collect(&mut w, 2).await;
    events.sort_by_key(by_subnet);
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
        store,
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
    let mut w = watch_from_now(store).await;
    store.delete_lease(got[1].subnet).await.unwrap();
    let (events, _) = collect(&mut w, 1).await;
    assert_eq!(events, vec![LeaseEvent::Removed(got[1].subnet)]);
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 1);
}

pub async fn ipv4_only_lease_is_rekeyed_when_ipv6_is_enabled<H: Harness>(h: &H) {
    let v4cfg = configure(h, BASIC_CFG).await;
    let store = h.store();
    let old = acquire_lease(store, &v4cfg, ip(1), &vxlan(1, 1), None, TTL)
        .await
        .unwrap();
    assert_eq!(old.ipv6_subnet, None);
    let dual_cfg = configure(
        h,
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
    )
    .await;
    let mut w = watch_from_now(store).await;
    let new = acquire_lease(store, &dual_cfg, ip(1), &dual(1), None, TTL)
        .await
        .unwrap();
    assert_eq!(new.subnet, old.subnet, "the node keeps its IPv4 subnet");
    assert_eq!(new.ipv6_subnet, dual_cfg.ipv6_subnet_for(old.subnet));
    assert!(new.ipv6_subnet.is_some());
    let snap = store.list_leases().await.unwrap();
    assert_eq!(snap.leases.len(), 1, "old key must be gone: {snap:?}");
    assert_eq!(snap.leases[0].ipv6_subnet, new.ipv6_subnet);
    assert_rekey_events(&mut w, &new).await;
    store.renew_lease(&new).await.unwrap();
    // The old store lease went with the move.
    assert_gone(store, &old).await;
}

pub async fn dual_stack_lease_is_rekeyed_when_ipv6_is_disabled<H: Harness>(h: &H) {
    let dual_cfg = configure(h, DUAL_CFG).await;
    let store = h.store();
    let mut got = acquire_on_nodes(h, &dual_cfg, vec![dual(1), dual(2)]).await;
    assert!(got.iter().all(|l| l.ipv6_subnet.is_some()), "{got:?}");
    let other = got.pop().unwrap();
    let mine = got.pop().unwrap();

    // IPv6 switched off: the node keeps its subnet under the IPv4-only key.
    let v4cfg = configure(h, TWO_CFG).await;
    let mut w = watch_from_now(store).await;
    let moved = acquire_lease(store, &v4cfg, ip(1), &host_gw(1), None, TTL)
        .await
        .unwrap();
    assert_eq!((moved.subnet, moved.ipv6_subnet), (mine.subnet, None));
    assert_rekey_events(&mut w, &moved).await;
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 2);
    let stored = h.stored_leases().await;
    assert_eq!(
        stored.get(&subnet_key(moved.subnet)),
        Some(&(host_gw(1).to_json(), moved.lease_id.unwrap())),
        "{stored:?}"
    );
    store.renew_lease(&moved).await.unwrap();
    assert_gone(store, &mine).await;

    // delete_lease by IPv4 subnet finds the other node's dual-stack key too.
    store.delete_lease(other.subnet).await.unwrap();
    let left = store.list_leases().await.unwrap().leases;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].subnet, moved.subnet);
}

pub async fn ipv6_only_leases_are_acquired_listed_watched_renewed_and_expire<H: Harness>(h: &H) {
    let cfg = configure(h, V6_ONLY_CFG).await;
    assert!(cfg.is_ipv6_only());
    let store = h.store();
    let mut w = watch_from_now(store).await;

    // Three nodes race; each gets its own IPv6 subnet (all three keys share
    // the IPv4 part 0.0.0.0-0, so uniqueness rests on the IPv6 part).
    let mut tasks = Vec::new();
    for i in 1..=3 {
        let store = h.another_node().await;
        let cfg = cfg.clone();
        tasks.push(tokio::spawn(async move {
            let a = v6_only(i);
            acquire_lease_preferring(&store, &cfg, a.public_ip, &a, Preferred::default(), TTL).await
        }));
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(
            tokio::time::timeout(PATIENCE, t)
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    got.sort_by_key(|l| l.ipv6_subnet);
    let v6s: HashSet<Ipv6Net> = got.iter().filter_map(|l| l.ipv6_subnet).collect();
    assert_eq!(v6s.len(), 3, "{got:?}");
    let range = cfg.ipv6.as_ref().unwrap();
    for l in &got {
        assert!(l.is_ipv6_only(), "{l:?}");
        let v6 = l.ipv6_subnet.unwrap();
        assert_eq!(v6.prefix_len(), 64);
        assert!(v6 >= range.subnet_min && v6 <= range.subnet_max, "{v6}");
    }

    // Stored under flannel's IPv6-only key with flannel's value.
    let stored = h.stored_leases().await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    for l in &got {
        let key = format!("0.0.0.0-0&{}-64", l.ipv6_subnet.unwrap().network());
        let (value, _) = stored
            .get(&key)
            .unwrap_or_else(|| panic!("{key} in {stored:?}"));
        assert_eq!(value, &l.attrs.to_json());
        assert!(
            value.starts_with(r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198::"#),
            "{value}"
        );
        assert!(
            value.contains(r#""BackendData":null,"BackendV6Data":{"VNI":1"#),
            "{value}"
        );
    }
    let mut listed = list_sorted(h).await;
    listed.sort_by_key(|l| l.ipv6_subnet);
    assert_eq!(
        listed.iter().map(strip).collect::<Vec<_>>(),
        got.iter().map(strip).collect::<Vec<_>>()
    );
    let (mut events, _) = collect(&mut w, 3).await;
    events.sort_by_key(|e| match e {
        LeaseEvent::Added(l) => l.ipv6_subnet,
        other => panic!("unexpected {other:?}"),
    });
    assert_eq!(
        events,
        got.iter()
            .map(|l| LeaseEvent::Added(strip(l)))
            .collect::<Vec<_>>()
    );

    // Renewal and a restart find the node's own key (by its public IPv6,
    // although all three have PublicIP 0.0.0.0); a subnet file's subnet
    // that another node holds is not taken.
    let r = store.renew_lease(&got[1]).await.unwrap();
    assert_eq!(r.ipv6_subnet, got[1].ipv6_subnet);
    let a = &got[1].attrs;
    let prefer_other = Preferred {
        v4: None,
        v6: got[0].ipv6_subnet,
    };
    let again = acquire_lease_preferring(store, &cfg, a.public_ip, a, prefer_other, TTL)
        .await
        .unwrap();
    assert_eq!(again.ipv6_subnet, got[1].ipv6_subnet);
    assert_eq!(h.stored_leases().await.len(), 3);

    // A 4th node prefers the subnet of its file, free: it gets it.
    let free6 = (1..=15)
        .filter_map(|i| range.nth_subnet(i))
        .find(|s| !v6s.contains(s))
        .unwrap();
    let a4 = v6_only(4);
    let prefer = Preferred {
        v4: None,
        v6: Some(free6),
    };
    let mut w = watch_from_now(store).await;
    let fourth = acquire_lease_preferring(store, &cfg, a4.public_ip, &a4, prefer, SHORT_TTL)
        .await
        .unwrap();
    assert_eq!(fourth.ipv6_subnet, Some(free6));

    // delete_lease cannot name an IPv6-only lease: refused, nothing gone.
    let e = store.delete_lease(fourth.subnet).await.unwrap_err();
    assert!(matches!(e, StoreError::NoIpv4Subnet), "{e}");
    assert_eq!(h.stored_leases().await.len(), 4);

    // Its expiry is seen as the removal of that IPv6 subnet alone.
    let (events, _) = collect(&mut w, 1).await;
    assert!(matches!(&events[0], LeaseEvent::Added(l) if l.ipv6_subnet == Some(free6)));
    let (events, _) = collect(&mut w, 1).await;
    assert_eq!(events, vec![LeaseEvent::RemovedIpv6Only(free6)]);
    assert!(matches!(
        store.renew_lease(&fourth).await,
        Err(StoreError::LeaseGone(_))
    ));
    assert_eq!(h.stored_leases().await.len(), 3);
}
