//! twill-harness, the cluster-in-namespaces harness: builds real
//! multi-host twill clusters out of network namespaces on one machine
//! (underlay bridge, hosts, etcd, agents, pods). It is the library of the
//! end-to-end tests (`harness/tests/`), the bench (`twill-bench`) and the
//! demo (`twill-demo`), and the test kit of every crate's root tests: the
//! prerequisite gate ([`prereq`]) and the namespace guard ([`Netns`]).

// Unit tests unwrap freely; library code never does.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod bins;
pub mod capture;
pub mod cluster;
pub mod cmd;
pub mod daemonset;
pub mod datapath;
pub mod datapath6;
pub mod error;
pub mod etcd;
pub mod etcd_cluster;
pub mod netns;
pub mod parse;
pub mod pinger;
pub mod podman;
pub mod prereq;
pub mod probe;
pub mod routed;
pub mod tls;
pub mod wait;

pub use cluster::{Cluster, ClusterBuilder, Host, Pod};
pub use error::{HarnessError, Result};
pub use etcd::Etcd;
pub use etcd_cluster::EtcdCluster;
pub use netns::{run_prefix, Netns};
pub use prereq::{require, require_cluster, Prereqs, CLUSTER_TOOLS};
