//! Reads the node's subnet file written by the agent (`TWILL_*` keys, or
//! flannel's `FLANNEL_*` keys), including the optional IPv6 pair
//! `*_IPV6_NETWORK` / `*_IPV6_SUBNET` of a dual-stack node. The format is the
//! agent's too: it lives in the contract crate; this module adds the file read.

use std::io::ErrorKind;
use std::path::Path;

pub use twill_contract::subnet_file::{NodeSubnet, NodeSubnet6, ParseError, DEFAULT_MTU};

use crate::error::Error;
use crate::ipam::read_regular;

/// Longest subnet file read: the agent's is about 150 bytes.
const MAX_BYTES: u64 = 64 * 1024;

/// Reads and parses `path`; a missing file is "try again later" (code 11).
/// The file is opened non-blocking and must be a regular file, so a FIFO in
/// its place fails the call instead of hanging it.
pub fn load(path: &Path) -> Result<NodeSubnet, Error> {
    let invalid = |reason: String| Error::InvalidSubnetFile {
        path: path.to_path_buf(),
        reason,
    };
    // Followed if a symlink: a node may point it at flannel's file.
    let text = read_regular(path, MAX_BYTES, true).map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::SubnetFileMissing {
            path: path.to_path_buf(),
        },
        _ => invalid(e.to_string()),
    })?;
    let text = String::from_utf8(text).map_err(|_| invalid("is not UTF-8 text".into()))?;
    NodeSubnet::parse(&text).map_err(|e| invalid(e.to_string()))
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
