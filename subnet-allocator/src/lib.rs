//! twill subnet allocator: the cluster network config, per-node subnet
//! leases, the pure allocation rule, and the lease stores (etcd, file).

pub mod alloc;
pub mod config;
pub mod lease;
pub mod store;

pub use alloc::{allocate, AllocError, Allocation};
pub use config::{BackendConfig, BackendType, ConfigError, NetworkConfig};
pub use lease::{parse_subnet_key, subnet_key, Lease, LeaseAttrs, LeaseError, VxlanData};
pub use store::{
    acquire_lease, EtcdOptions, EtcdStore, FileStore, LeaseEvent, LeaseSnapshot, LeaseStore,
    LeaseWatch, StoreError,
};
