//! twill CNI plugin library: config parsing, built-in IPAM, netlink effects
//! and the CNI verbs. The `twill` binary is a thin wrapper around [`run`].

pub mod config;
pub mod error;
pub mod guard;
pub mod ipam;
pub mod kernel;
pub mod netlink;
pub mod plugin;
pub mod result;
pub mod subnet;

pub use error::Error;
pub use plugin::{run, Outcome};
