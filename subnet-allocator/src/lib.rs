//! twill subnet allocator: the cluster network config, per-node subnet
//! leases, the pure allocation rule, and the lease stores (etcd, file).

pub mod alloc;
pub mod config;
pub mod lease;
pub mod store;

pub use alloc::{allocate, AllocError, Allocation};
pub use config::{BackendConfig, BackendType, ConfigError, Ipv6Config, NetworkConfig};
pub use lease::{
    lease_key_name, parse_lease_key, parse_subnet_key, subnet_key, Lease, LeaseAttrs, LeaseError,
    VxlanData,
};
pub use store::{
    acquire_lease, EtcdOptions, EtcdStore, FileStore, LeaseEvent, LeaseSnapshot, LeaseStore,
    LeaseWatch, StoreError,
};
