//! Reads the node's subnet file written by the agent (`TWILL_*` keys, or
//! flannel's `FLANNEL_*` keys), including the optional IPv6 pair
//! `*_IPV6_NETWORK` / `*_IPV6_SUBNET` of a dual-stack node. The format is the
//! agent's too: it lives in the contract crate; this module adds the file read.

use std::io::ErrorKind;
use std::path::Path;

pub use twill_contract::subnet_file::{NodeSubnet, NodeSubnet6, ParseError, DEFAULT_MTU};

use crate::error::Error;

/// Reads and parses `path`; a missing file is "try again later" (code 11).
pub fn load(path: &Path) -> Result<NodeSubnet, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::SubnetFileMissing {
            path: path.to_path_buf(),
        },
        _ => Error::InvalidSubnetFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    NodeSubnet::parse(&text).map_err(|e| Error::InvalidSubnetFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const V4: &str = "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\n";

    #[test]
    fn malformed_ipv6_keys_are_named() {
        // Through load(): code 101 with the key in the details. The parse
        // itself is tested in the contract crate.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        std::fs::write(&path, format!("{V4}TWILL_IPV6_SUBNET=fd00::zz/64\n")).unwrap();
        let e = load(&path).unwrap_err();
        assert_eq!(e.code(), 101);
        assert!(e.to_string().contains("TWILL_IPV6_SUBNET"), "{e}");
    }

    #[test]
    fn missing_file_is_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&dir.path().join("subnet.env")).unwrap_err();
        assert_eq!(e.code(), 11);
    }
}
