//! `MemoryStore`: the same `LeaseStore` contract as etcd and the file store
//! (`memory_contract::*`), so tests built on it see etcd's behaviour.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use subnet_allocator::{MemoryStore, NetworkConfig};

use common::contract::Harness;

struct MemoryHarness {
    store: MemoryStore,
}

impl Harness for MemoryHarness {
    type Store = MemoryStore;
    const LIST_REPORTS_TTL: bool = false;

    async fn start() -> Option<Self> {
        Some(MemoryHarness {
            store: MemoryStore::new(),
        })
    }

    fn store(&self) -> &MemoryStore {
        &self.store
    }

    async fn another_node(&self) -> MemoryStore {
        self.store.clone()
    }

    async fn put_config(&self, cfg: &NetworkConfig) {
        self.store.set_config(cfg);
    }

    async fn put_raw_config(&self, raw: &str) {
        self.store.set_raw_config(raw);
    }

    fn config_key(&self) -> String {
        self.store.config_key()
    }

    async fn stored_leases(&self) -> BTreeMap<String, (String, i64)> {
        self.store.raw_entries()
    }

    async fn compact_history(&self) -> Option<i64> {
        self.store.compact();
        Some(self.store.revision())
    }
}

lease_store_contract!(memory_contract, MemoryHarness);
