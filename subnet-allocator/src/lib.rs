//! twill subnet allocator: the cluster network config, per-node subnet
//! leases, the pure allocation rule, the lease stores (etcd, file, memory)
//! and the one retry policy for store calls.

pub mod alloc;
pub mod config;
pub mod lease;
pub mod retry;
pub mod store;

pub use alloc::{allocate, allocate_ipv6_only, check_public_ip, AllocError, Allocation};
pub use config::{BackendConfig, BackendType, ConfigError, Ipv6Config, NetworkConfig};
pub use lease::{
    lease_key_name, parse_lease_key, parse_subnet_key, subnet_key, Lease, LeaseAttrs, LeaseError,
    VxlanData,
};
pub use retry::{retry, Backoff};
pub use store::{
    acquire_lease, acquire_lease_preferring, EtcdOptions, EtcdStore, FileStore, LeaseEvent,
    LeaseRequest, LeaseSnapshot, LeaseStore, LeaseWatch, MemoryStore, Preferred, StoreError,
    WatchBatch,
};
