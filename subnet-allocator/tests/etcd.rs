//! `EtcdStore` against a real etcd started by each test on 127.0.0.1 with
//! random ports and a temporary data dir: the `LeaseStore` contract
//! (`etcd_contract::*`), and what only etcd can do to a lease (revoke it,
//! write foreign or malformed keys). Needs `/usr/bin/etcd` and `etcdctl`:
//! missing, the tests fail under `CI=true`, else print a loud notice and
//! return.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use common::contract::{assert_gone, configure, net, vxlan, Harness, BASIC_CFG, TTL};
use common::{have_etcd, Member};
use etcd_client::{Client, GetOptions, PutOptions};
use ipnet::{Ipv4Net, Ipv6Net};
use subnet_allocator::{
    acquire_lease_preferring, EtcdOptions, EtcdStore, LeaseAttrs, LeaseEvent, LeaseStore,
    NetworkConfig, Preferred,
};

const PREFIX: &str = "/twill-test/network";

struct EtcdHarness {
    // Before the data dir: the process goes first.
    member: Member,
    store: EtcdStore,
    _dir: tempfile::TempDir,
}

impl EtcdHarness {
    /// Started, with the basic network config.
    async fn configured() -> Option<Self> {
        let h = Self::start().await?;
        configure(&h, BASIC_CFG).await;
        Some(h)
    }

    async fn client(&self) -> Client {
        Client::connect([&self.member.client_url], None)
            .await
            .unwrap()
    }
}

fn opts(endpoint: &str) -> EtcdOptions {
    EtcdOptions {
        endpoints: vec![endpoint.to_string()],
        prefix: PREFIX.into(),
        ..EtcdOptions::default()
    }
}

impl Harness for EtcdHarness {
    type Store = EtcdStore;
    // Listing does not fetch per-lease TTLs.
    const LIST_REPORTS_TTL: bool = false;

    async fn start() -> Option<Self> {
        if !have_etcd(&[]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut member = Member::new(dir.path(), "t", "http", Vec::new());
        let peer = member.peer_url.clone();
        member.add_args([format!("--initial-cluster=t={peer}")]);
        member.start();
        member.wait_ready();
        let store = EtcdStore::connect(opts(&member.client_url)).await.unwrap();
        Some(EtcdHarness {
            member,
            store,
            _dir: dir,
        })
    }

    fn store(&self) -> &EtcdStore {
        &self.store
    }

    /// One store (one client) per node, like separate agents.
    async fn another_node(&self) -> EtcdStore {
        EtcdStore::connect(opts(&self.member.client_url))
            .await
            .unwrap()
    }

    async fn put_config(&self, cfg: &NetworkConfig) {
        self.store.put_network_config(cfg).await.unwrap();
    }

    async fn put_raw_config(&self, raw: &str) {
        let mut c = self.client().await;
        c.put(self.config_key(), raw, None).await.unwrap();
    }

    fn config_key(&self) -> String {
        format!("{PREFIX}/config")
    }

    async fn stored_leases(&self) -> BTreeMap<String, (String, i64)> {
        let prefix = format!("{PREFIX}/subnets/");
        let mut c = self.client().await;
        let r = c
            .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .unwrap();
        r.kvs()
            .iter()
            .map(|kv| {
                let key = kv.key_str().unwrap().strip_prefix(&prefix).unwrap();
                let value = kv.value_str().unwrap().to_string();
                (key.to_string(), (value, kv.lease()))
            })
            .collect()
    }

    async fn compact_history(&self) -> Option<i64> {
        let now = self.store.list_leases().await.unwrap().revision;
        self.client().await.compact(now, None).await.unwrap();
        Some(now)
    }
}

lease_store_contract!(etcd_contract, EtcdHarness);

#[tokio::test]
async fn renew_detects_revoked_and_taken_over_leases() {
    let Some(h) = EtcdHarness::configured().await else {
        return;
    };
    let store = &h.store;
    let mut c = h.client().await;

    // Lease revoked under us.
    let revoked = store
        .create_lease(net("10.244.4.0/24"), &vxlan(4, 4), TTL)
        .await
        .unwrap();
    c.lease_revoke(revoked.lease_id.unwrap()).await.unwrap();
    assert_gone(store, &revoked).await;

    // Key taken over by another lease (e.g. recreated by another node).
    let taken = store
        .create_lease(net("10.244.5.0/24"), &vxlan(5, 5), TTL)
        .await
        .unwrap();
    let other = c.lease_grant(60, None).await.unwrap().id();
    c.put(
        format!("{PREFIX}/subnets/10.244.5.0-24"),
        vxlan(6, 6).to_json(),
        Some(PutOptions::new().with_lease(other)),
    )
    .await
    .unwrap();
    assert_gone(store, &taken).await;
}

#[tokio::test]
async fn list_and_watch_report_malformed_entries_as_unusable() {
    let Some(h) = EtcdHarness::configured().await else {
        return;
    };
    let store = &h.store;
    let start = store.list_leases().await.unwrap().revision;
    let mut w = store.watch_leases(start).await.unwrap();
    let mut c = h.client().await;
    let valid = vxlan(1, 1).to_json();
    let entries = [
        ("10.244.5.0-24", "{not json"),
        ("banana", valid.as_str()),
        // Host bits set.
        ("10.244.6.5-24", valid.as_str()),
        // Outside the network.
        ("10.99.0.0-24", valid.as_str()),
        // vxlan without its backend data.
        (
            "10.244.7.0-24",
            r#"{"PublicIP":"192.0.2.1","BackendType":"vxlan"}"#,
        ),
    ];
    for (key, value) in entries {
        c.put(format!("{PREFIX}/subnets/{key}"), value, None)
            .await
            .unwrap();
    }
    c.put(
        format!("{PREFIX}/subnets/10.244.8.0-24&fd00::-64"),
        vxlan(8, 8).to_json(),
        None,
    )
    .await
    .unwrap();
    let snap = store.list_leases().await.unwrap();
    let subnets: Vec<Ipv4Net> = snap.leases.iter().map(|l| l.subnet).collect();
    assert_eq!(subnets, vec![net("10.244.8.0/24")]);
    assert_eq!(snap.leases[0].attrs, vxlan(8, 8));
    // The five junk entries are reported as unusable, by key.
    assert_eq!(
        snap.unusable,
        [
            "10.244.5.0-24",
            "10.244.6.5-24",
            "10.244.7.0-24",
            "10.99.0.0-24",
            "banana"
        ]
    );

    // The watch sees all six puts: the junk as unusable entries, naming the
    // subnet only where the key names one of the network's, then the lease.
    let mut events = Vec::new();
    let mut rev = 0;
    while !events.iter().any(|e| matches!(e, LeaseEvent::Added(_))) {
        let (batch, r) = tokio::time::timeout(common::PATIENCE, w.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        events.extend(batch);
        rev = r;
    }
    let unusable: Vec<(&str, Option<Ipv4Net>)> = events
        .iter()
        .filter_map(|e| match e {
            LeaseEvent::Unusable {
                key,
                subnet,
                gone: false,
            } => Some((key.as_str(), *subnet)),
            _ => None,
        })
        .collect();
    assert_eq!(
        unusable,
        [
            ("10.244.5.0-24", Some(net("10.244.5.0/24"))),
            ("banana", None),
            ("10.244.6.5-24", None),
            ("10.99.0.0-24", None),
            ("10.244.7.0-24", Some(net("10.244.7.0/24"))),
        ],
        "{events:?}"
    );
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(matches!(&events[5], LeaseEvent::Added(l) if l.subnet == net("10.244.8.0/24")));
    assert_eq!(rev, snap.revision);
}

/// A mixed cluster: leases written byte for byte as flannel writes an
/// IPv6-only node's (`0.0.0.0-0&<v6>-<len>`, `PublicIP` `0.0.0.0`,
/// `BackendData` null) are read as IPv6-only leases, their subnets are
/// avoided, and twill's own lease is written in the same form. A bare
/// `<v6>-<len>` key (which flannel's ParseSubnetKey skips) is unusable here
/// too.
#[tokio::test]
async fn flannel_written_ipv6_only_leases_are_read_and_avoided() {
    let Some(h) = EtcdHarness::start().await else {
        return;
    };
    // A /61 in /64s: 7 subnets (the first is skipped).
    let cfg = configure(
        &h,
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/61","IPv6SubnetLen":64}"#,
    )
    .await;
    let mut c = h.client().await;
    let flannel_value = |i: u8| {
        format!(
            r#"{{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::{i}","BackendType":"vxlan","BackendData":null,"BackendV6Data":{{"VNI":1,"VtepMAC":"7a:00:00:00:00:{i:02x}"}}}}"#
        )
    };
    let theirs: Vec<Ipv6Net> = (1..=5)
        .map(|i| format!("fd00:10:244:{i}::/64").parse().unwrap())
        .collect();
    for (i, s) in theirs.iter().enumerate() {
        let key = format!("{PREFIX}/subnets/0.0.0.0-0&{}-64", s.network());
        c.put(key, flannel_value(i as u8 + 1), None).await.unwrap();
    }
    c.put(
        format!("{PREFIX}/subnets/fd00:10:244:6::-64"),
        flannel_value(6),
        None,
    )
    .await
    .unwrap();

    let snap = h.store.list_leases().await.unwrap();
    let mut got: Vec<Ipv6Net> = snap.leases.iter().filter_map(|l| l.ipv6_subnet).collect();
    got.sort();
    assert_eq!(got, theirs);
    assert!(snap.leases.iter().all(|l| l.is_ipv6_only()));
    assert_eq!(snap.leases[0].attrs.backend_data, None);
    assert_eq!(snap.unusable, ["fd00:10:244:6::-64"]);

    // Two twill nodes share what is left: fd00:10:244:6:: and :7::, the
    // first only because the bare key holds nothing.
    let mut mine = Vec::new();
    for i in 7..=8u8 {
        let a = LeaseAttrs {
            public_ip: std::net::Ipv4Addr::UNSPECIFIED,
            backend_data: None,
            ..common::contract::dual(i)
        };
        let l =
            acquire_lease_preferring(&h.store, &cfg, a.public_ip, &a, Preferred::default(), TTL)
                .await
                .unwrap();
        mine.push(l.ipv6_subnet.unwrap());
    }
    mine.sort();
    assert_eq!(
        mine,
        ["fd00:10:244:6::/64", "fd00:10:244:7::/64"]
            .map(|s| s.parse::<Ipv6Net>().unwrap())
            .to_vec()
    );
    let stored = h.stored_leases().await;
    for s in &mine {
        let key = format!("0.0.0.0-0&{}-64", s.network());
        let (value, _) = stored
            .get(&key)
            .unwrap_or_else(|| panic!("{key}: {stored:?}"));
        assert!(
            value.starts_with(r#"{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:198::"#),
            "{value}"
        );
    }
    // The range is full now.
    let a = LeaseAttrs {
        public_ip: std::net::Ipv4Addr::UNSPECIFIED,
        backend_data: None,
        ..common::contract::dual(9)
    };
    let e = acquire_lease_preferring(&h.store, &cfg, a.public_ip, &a, Preferred::default(), TTL)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no free IPv6 subnet"), "{e}");
}
