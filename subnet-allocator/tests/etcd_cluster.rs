//! `EtcdStore` on a real 3-member etcd cluster on 127.0.0.1 (random ports,
//! data dirs in a temp dir, SIGKILLed on drop) while members die and come
//! back: calls keep working with one member down, fail retryably (never
//! hang) with all down, and the same store works again after a restart;
//! a watch resumed from the last seen revision loses no event. Needs
//! `/usr/bin/etcd`: missing, it fails under `CI=true`, else prints a loud
//! notice and returns.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{have_etcd, Member, PATIENCE};
use ipnet::Ipv4Net;
use subnet_allocator::{
    EtcdOptions, EtcdStore, Lease, LeaseAttrs, LeaseEvent, LeaseStore, LeaseWatch, NetworkConfig,
    StoreError, VxlanData,
};

struct Cluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let mut members: Vec<Member> = (0..3)
            .map(|i| Member::new(dir.path(), &format!("m{i}"), "http", Vec::new()))
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        for m in &mut members {
            m.add_args([
                format!("--initial-cluster={initial}"),
                "--initial-cluster-state=new".into(),
                "--initial-cluster-token=twill-test".into(),
            ]);
            m.start();
        }
        for m in &mut members {
            m.wait_ready();
        }
        Cluster { members, _dir: dir }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }
}

fn attrs(i: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: Ipv4Addr::new(192, 0, 2, i),
        backend_type: "vxlan".into(),
        backend_data: Some(VxlanData {
            vni: 1,
            vtep_mac: format!("02:00:00:00:00:{i:02x}"),
        }),
        public_ipv6: None,
        backend_v6_data: None,
        node_name: None,
        public_key: None,
    }
}

fn subnet(i: u8) -> Ipv4Net {
    format!("10.244.{i}.0/24").parse().unwrap()
}

const TTL: Duration = Duration::from_secs(60);

/// A watch consumer that, like the agent, re-watches from the last revision
/// it saw whenever the watch errors or ends.
struct Follower {
    watch: Option<LeaseWatch>,
    last: i64,
    seen: Vec<LeaseEvent>,
    errors: usize,
}

impl Follower {
    /// Reads until `want` events in total have arrived.
    async fn until(&mut self, store: &EtcdStore, want: usize) {
        let end = tokio::time::Instant::now() + PATIENCE;
        while self.seen.len() < want {
            assert!(
                tokio::time::Instant::now() < end,
                "watch stalled at {:?}",
                self.seen
            );
            let w = match &mut self.watch {
                Some(w) => w,
                None => match store.watch_leases(self.last).await {
                    Ok(w) => self.watch.insert(w),
                    Err(e) => {
                        assert!(e.is_retryable(), "{e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            match tokio::time::timeout(PATIENCE, w.next()).await.unwrap() {
                Ok(Some((events, rev))) => {
                    assert!(
                        rev > self.last,
                        "revision went back: {rev} after {}",
                        self.last
                    );
                    self.last = rev;
                    self.seen.extend(events);
                }
                Ok(None) => self.watch = None,
                Err(e) => {
                    assert!(e.is_retryable(), "watch error must be retryable: {e}");
                    self.errors += 1;
                    self.watch = None;
                }
            }
        }
        assert_eq!(self.seen.len(), want, "more events than changes made");
    }
}

/// The change events `create` and `delete` produce, for comparison.
fn added(l: &Lease) -> LeaseEvent {
    LeaseEvent::Added(Lease {
        ttl_remaining: None,
        ..l.clone()
    })
}

/// Repeats `f` until it succeeds, as a caller riding out an election would.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let end = tokio::time::Instant::now() + PATIENCE;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(e.is_retryable(), "{what}: non-retryable error {e}");
                assert!(
                    tokio::time::Instant::now() < end,
                    "{what} never recovered: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_member_loss_and_full_restart() {
    if !have_etcd(&[]) {
        return;
    }
    let mut cluster = Cluster::start();
    let store = EtcdStore::connect(EtcdOptions {
        endpoints: cluster.endpoints(),
        prefix: "/twill-test/network".into(),
        ..EtcdOptions::default()
    })
    .await
    .unwrap();
    let cfg = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap();
    store.put_network_config(&cfg).await.unwrap();
    store.get_network_config().await.unwrap();

    let mut expected = Vec::new();
    let snap = store.list_leases().await.unwrap();
    let mut follower = Follower {
        watch: Some(store.watch_leases(snap.revision).await.unwrap()),
        last: snap.revision,
        seen: Vec::new(),
        errors: 0,
    };
    let mine = store.create_lease(subnet(1), &attrs(1), TTL).await.unwrap();
    expected.push(added(&mine));
    follower.until(&store, expected.len()).await;

    // Each member in turn dies (whichever the channel uses, one of them is
    // it): everything keeps working with the two left, no retry by hand.
    for i in 0..3u8 {
        cluster.members[usize::from(i)].kill();
        let n = 10 + i;
        let l = store.create_lease(subnet(n), &attrs(n), TTL).await.unwrap();
        expected.push(added(&l));
        store.renew_lease(&mine).await.unwrap();
        let snap = store.list_leases().await.unwrap();
        let live: Vec<Ipv4Net> = snap.leases.iter().map(|l| l.subnet).collect();
        assert_eq!(live, vec![subnet(1), l.subnet]);
        store.delete_lease(l.subnet).await.unwrap();
        expected.push(LeaseEvent::Removed(l.subnet));
        follower.until(&store, expected.len()).await;
        cluster.members[usize::from(i)].start();
        cluster.members[usize::from(i)].wait_ready();
    }
    eprintln!("watch errors while members died: {}", follower.errors);

    // A short lease to see expiry across the outage.
    let short = store
        .create_lease(subnet(2), &attrs(2), Duration::from_secs(2))
        .await
        .unwrap();
    expected.push(added(&short));
    follower.until(&store, expected.len()).await;

    // All down: calls fail retryably within their bound instead of hanging.
    for m in &mut cluster.members {
        m.kill();
    }
    let guard = |what: &'static str, r: Result<(), StoreError>| {
        let e = r.expect_err(what);
        assert!(e.is_retryable(), "{what}: {e}");
        eprintln!("{what} with all members down: {e}");
    };
    let r = tokio::time::timeout(PATIENCE, store.list_leases())
        .await
        .unwrap();
    guard("list", r.map(|_| ()));
    let r = tokio::time::timeout(PATIENCE, store.renew_lease(&mine))
        .await
        .unwrap();
    guard("renew", r.map(|_| ()));
    let r = tokio::time::timeout(PATIENCE, store.create_lease(subnet(3), &attrs(3), TTL))
        .await
        .unwrap();
    guard("create", r.map(|_| ()));
    let r = tokio::time::timeout(PATIENCE, follower.watch.as_mut().unwrap().next())
        .await
        .unwrap();
    guard("watch", r.map(|_| ()));
    follower.watch = None;

    // Back on the same data dirs: the same store works again.
    for m in &mut cluster.members {
        m.start();
    }
    for m in &mut cluster.members {
        m.wait_ready();
    }
    eventually("list after restart", || store.list_leases()).await;
    let renewed = eventually("renew after restart", || store.renew_lease(&mine)).await;
    assert_eq!(renewed.lease_id, mine.lease_id);
    let after = store.create_lease(subnet(4), &attrs(4), TTL).await.unwrap();
    expected.push(added(&after));
    // The short lease expires (its TTL restarts with the new leader; it is
    // not renewed here): renewing it afterwards says the lease is gone.
    let end = tokio::time::Instant::now() + PATIENCE;
    while eventually("list", || store.list_leases())
        .await
        .leases
        .iter()
        .any(|l| l.subnet == short.subnet)
    {
        assert!(tokio::time::Instant::now() < end, "2 s lease never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let e = store.renew_lease(&short).await.unwrap_err();
    assert!(
        matches!(e, StoreError::LeaseGone(s) if s == short.subnet),
        "{e}"
    );
    expected.push(LeaseEvent::Removed(short.subnet));
    follower.until(&store, expected.len()).await;
    assert_eq!(follower.seen, expected, "watch lost or reordered events");

    let snap = store.list_leases().await.unwrap();
    let subnets: Vec<Ipv4Net> = snap.leases.iter().map(|l| l.subnet).collect();
    assert_eq!(subnets, vec![subnet(1), subnet(4)]);
}
