//! twill node agent (`twilld`): leases this node's pod subnet, writes the
//! subnet file for the CNI plugin, and keeps the bridge, VXLAN device and
//! per-node routes, neighbours and FDB entries in step with etcd.

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod guard;
pub mod health;
pub mod install;
pub mod kernel;
pub mod masq;
pub mod notify;
pub mod probe;
pub mod reconcile;
pub mod subnet_file;
pub mod telemetry;
pub mod wireguard;
