//! The attribute encoding, shared with the guard tables and the CNI plugin.

pub use twill_nft::attr::*;
