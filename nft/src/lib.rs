//! nf_tables spoken over raw netlink, without the `nft` binary or libnftnl:
//! the node image has neither, and the CNI plugin must not spawn a process
//! per call. `attr` is the attribute encoding, `expr` the rule expressions,
//! `wire` the messages and the kernel's replies, all pure; `socket` is the
//! one place that talks to the kernel. `guard` says what twill's isolation
//! tables are (sets, rules, elements), for the agent and the plugin alike.

pub mod attr;
pub mod expr;
pub mod guard;
pub mod socket;
pub mod wire;

pub use socket::{Exchange, NftError, NftSocket};
