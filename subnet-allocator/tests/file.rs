//! `FileStore` in a temporary directory: the `LeaseStore` contract
//! (`file_contract::*`), and what only a file store has (hand-edited or torn
//! state files).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::contract::{configure, host_gw, net, Harness, BASIC_CFG, TTL};
use ipnet::Ipv4Net;
use subnet_allocator::{FileStore, LeaseStore, NetworkConfig, StoreError};

struct FileHarness {
    dir: tempfile::TempDir,
    store: FileStore,
}

impl FileHarness {
    fn state_path(&self) -> PathBuf {
        self.dir.path().join("leases.json")
    }

    fn read_state(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.state_path()).unwrap()).unwrap()
    }
}

impl Harness for FileHarness {
    type Store = FileStore;
    const LIST_REPORTS_TTL: bool = true;

    async fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(dir.path()).unwrap();
        Some(FileHarness { dir, store })
    }

    fn store(&self) -> &FileStore {
        &self.store
    }

    async fn another_node(&self) -> FileStore {
        FileStore::open(self.dir.path()).unwrap()
    }

    async fn put_config(&self, cfg: &NetworkConfig) {
        self.store.put_network_config(cfg).unwrap();
    }

    async fn put_raw_config(&self, raw: &str) {
        std::fs::write(self.store.config_path(), raw).unwrap();
    }

    fn config_key(&self) -> String {
        self.store.config_path().display().to_string()
    }

    async fn stored_leases(&self) -> BTreeMap<String, (String, i64)> {
        let state = self.read_state();
        state["leases"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, r)| {
                let value = r["value"].as_str().unwrap().to_string();
                (k.clone(), (value, r["lease_id"].as_i64().unwrap()))
            })
            .collect()
    }

    /// Pushes every revision so far out of the bounded event log.
    async fn compact_history(&self) -> Option<i64> {
        let s = net("10.244.250.0/24");
        for _ in 0..510 {
            self.store
                .create_lease(s, &host_gw(250), TTL)
                .await
                .unwrap();
            self.store.delete_lease(s).await.unwrap();
        }
        None
    }
}

lease_store_contract!(file_contract, FileHarness);

#[tokio::test]
async fn malformed_entries_are_skipped() {
    let h = FileHarness::start().await.unwrap();
    configure(&h, BASIC_CFG).await;
    for (s, i) in [("10.244.1.0/24", 1), ("10.244.2.0/24", 2)] {
        h.store
            .create_lease(net(s), &host_gw(i), TTL)
            .await
            .unwrap();
    }
    // Hand-edit the state: break one value, add a bad key.
    let mut state = h.read_state();
    let leases = state["leases"].as_object_mut().unwrap();
    leases["10.244.2.0-24"]["value"] = "{garbage".into();
    let mut bad = leases["10.244.1.0-24"].clone();
    bad["value"] = host_gw(3).to_json().into();
    leases.insert("not-a-subnet".into(), bad);
    std::fs::write(h.state_path(), serde_json::to_vec(&state).unwrap()).unwrap();
    let snap = h.store.list_leases().await.unwrap();
    let subnets: Vec<Ipv4Net> = snap.leases.iter().map(|l| l.subnet).collect();
    assert_eq!(subnets, vec![net("10.244.1.0/24")]);

    std::fs::write(h.state_path(), b"{torn").unwrap();
    let e = h.store.list_leases().await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
}
