//! Reads the node's subnet file written by the agent (`TWILL_*` keys, or
//! flannel's `FLANNEL_*` keys), including the optional IPv6 pair
//! `*_IPV6_NETWORK` / `*_IPV6_SUBNET` of a dual-stack node, or those alone on
//! an IPv6-only node. The format is the agent's too: it lives in the
//! contract crate; this module adds the file read.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
pub use twill_contract::subnet_file::{
    NodeSubnet, NodeSubnet6, NodeSubnets, ParseError, DEFAULT_MTU,
};

/// The node's subnets as the plugin uses them: IPv4 and optionally IPv6
/// (dual-stack), or IPv6 alone (an IPv6-only node).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// IPv4 gateway address with the node subnet's prefix length; `None`
    /// on an IPv6-only node.
    pub v4: Option<Ipv4Net>,
    pub ipv6: Option<NodeSubnet6>,
    pub mtu: u32,
}

impl Node {
    pub fn parse(text: &str) -> Result<Node, ParseError> {
        Ok(match NodeSubnets::parse(text)? {
            NodeSubnets::Ipv4(n) => Node {
                v4: Some(n.gateway_net),
                ipv6: n.ipv6,
                mtu: n.mtu,
            },
            NodeSubnets::Ipv6Only { ipv6, mtu, .. } => Node {
                v4: None,
                ipv6: Some(ipv6),
                mtu,
            },
        })
    }

    pub fn gateway4(&self) -> Option<Ipv4Addr> {
        self.v4.map(|n| n.addr())
    }

    /// The gateway the bridge MAC is derived from: the IPv4 one, else the
    /// IPv6 one (the agent's rule). Every parsed node has one of the two.
    pub fn bridge_gateway(&self) -> IpAddr {
        match (self.gateway4(), self.ipv6) {
            (Some(g), _) => g.into(),
            (None, Some(n)) => n.gateway().into(),
            (None, None) => Ipv4Addr::UNSPECIFIED.into(),
        }
    }

    /// Gateway addresses with their subnets' prefixes, IPv4 first.
    pub fn gateway_nets(&self) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = self.v4.map(IpNet::V4).into_iter().collect();
        v.extend(self.ipv6.map(|n| IpNet::V6(n.gateway_net)));
        v
    }

    /// The pod's default gateways, IPv4 first.
    pub fn gateways(&self) -> Vec<IpAddr> {
        self.gateway_nets().iter().map(IpNet::addr).collect()
    }
}

use crate::error::Error;
use crate::ipam::read_regular;

/// Longest subnet file read: the agent's is about 150 bytes.
const MAX_BYTES: u64 = 64 * 1024;

/// Reads and parses `path`; a missing file is "try again later" (code 11).
/// The file is opened non-blocking and must be a regular file, so a FIFO in
/// its place fails the call instead of hanging it.
pub fn load(path: &Path) -> Result<Node, Error> {
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
    Node::parse(&text).map_err(|e| invalid(e.to_string()))
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
    fn an_ipv6_only_file_is_a_node_without_ipv4() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        let text = "TWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\nTWILL_MTU=1430\n";
        std::fs::write(&path, text).unwrap();
        let n = load(&path).unwrap();
        assert_eq!(n.v4, None);
        assert_eq!(n.mtu, 1430);
        let gw: IpAddr = "fd00:10:244:3::1".parse().unwrap();
        assert_eq!(n.gateways(), vec![gw]);
        assert_eq!(n.bridge_gateway(), gw);
        // Dual stack: IPv4 first, the bridge MAC from the IPv4 gateway.
        std::fs::write(&path, format!("{V4}TWILL_IPV6_SUBNET=fd00::1/64\n")).unwrap();
        let n = load(&path).unwrap();
        let gw4: IpAddr = "10.244.3.1".parse().unwrap();
        assert_eq!(
            n.gateways(),
            vec![gw4, "fd00::1".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(n.bridge_gateway(), gw4);
    }

    #[test]
    fn missing_file_is_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&dir.path().join("subnet.env")).unwrap_err();
        assert_eq!(e.code(), 11);
    }
}
