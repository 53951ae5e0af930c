//! Reads the node's subnet file written by the agent (`TWILL_*` keys, or
//! flannel's `FLANNEL_*` keys).

use std::io::ErrorKind;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::error::Error;

/// MTU used when the subnet file does not name one.
pub const DEFAULT_MTU: u32 = 1500;

/// What the plugin needs to know about this node's share of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubnet {
    /// The whole cluster network, if the file names it.
    pub network: Option<Ipv4Net>,
    /// Gateway address with the node subnet's prefix length (e.g. 10.244.3.1/24).
    pub gateway_net: Ipv4Net,
    pub mtu: u32,
    pub ipmasq: bool,
}

impl NodeSubnet {
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway_net.addr()
    }

    /// The node subnet itself (10.244.3.0/24).
    pub fn subnet(&self) -> Ipv4Net {
        self.gateway_net.trunc()
    }
}

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
    parse(&text).map_err(|reason| Error::InvalidSubnetFile {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the `KEY=VALUE` text; `TWILL_*` wins over `FLANNEL_*`.
pub fn parse(text: &str) -> Result<NodeSubnet, String> {
    let mut twill = std::collections::HashMap::new();
    let mut flannel = std::collections::HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((k, v)) = line.split_once('=') else {
            return Err(format!("line {line:?} is not KEY=VALUE"));
        };
        let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
        if let Some(key) = k.trim().strip_prefix("TWILL_") {
            twill.insert(key.to_string(), v);
        } else if let Some(key) = k.trim().strip_prefix("FLANNEL_") {
            flannel.insert(key.to_string(), v);
        }
    }
    let get = |key: &str| twill.get(key).or_else(|| flannel.get(key));

    let subnet_s = get("SUBNET").ok_or("TWILL_SUBNET (or FLANNEL_SUBNET) is missing")?;
    let gateway_net: Ipv4Net = subnet_s
        .parse()
        .map_err(|e| format!("SUBNET {subnet_s:?}: {e}"))?;
    if gateway_net.prefix_len() > 30 {
        return Err(format!("SUBNET {subnet_s:?} is too small for pods"));
    }
    let gw = gateway_net.addr();
    if gw == gateway_net.network() || gw == gateway_net.broadcast() {
        return Err(format!(
            "SUBNET {subnet_s:?} must be the gateway address, not the network or broadcast"
        ));
    }
    let network = get("NETWORK")
        .map(|s| {
            s.parse::<Ipv4Net>()
                .map_err(|e| format!("NETWORK {s:?}: {e}"))
        })
        .transpose()?;
    let mtu = match get("MTU") {
        None => DEFAULT_MTU,
        Some(s) => match s.parse::<u32>() {
            Ok(m) if (68..=65535).contains(&m) => m,
            _ => return Err(format!("MTU {s:?} is not an integer in 68..=65535")),
        },
    };
    let ipmasq = match get("IPMASQ").map(String::as_str) {
        None | Some("false") | Some("0") | Some("") => false,
        Some("true") | Some("1") => true,
        Some(s) => return Err(format!("IPMASQ {s:?} is not a boolean")),
    };
    Ok(NodeSubnet {
        network,
        gateway_net,
        mtu,
        ipmasq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twill_names() {
        let s = parse(
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(s.subnet().to_string(), "10.244.3.0/24");
        assert_eq!(s.network.unwrap().to_string(), "10.244.0.0/16");
        assert_eq!(s.mtu, 1450);
        assert!(!s.ipmasq);
    }

    #[test]
    fn flannel_names_and_precedence() {
        let s = parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 7, 1));
        assert_eq!(s.mtu, 1400);
        assert!(s.ipmasq);
        let s = parse("FLANNEL_SUBNET=10.244.7.1/24\nTWILL_SUBNET=10.244.9.1/24\n").unwrap();
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 244, 9, 1));
        assert_eq!(s.mtu, DEFAULT_MTU);
    }

    #[test]
    fn bad_files_are_rejected() {
        for text in [
            "",
            "TWILL_NETWORK=10.244.0.0/16\n",
            "TWILL_SUBNET=banana\n",
            "TWILL_SUBNET=10.244.3.0/24\n",
            "TWILL_SUBNET=10.244.3.255/24\n",
            "TWILL_SUBNET=10.244.3.1/31\n",
            "TWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=9\n",
            "TWILL_SUBNET=10.244.3.1/24\nTWILL_IPMASQ=maybe\n",
            "garbage line\n",
        ] {
            assert!(parse(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn missing_file_is_try_again_later() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&dir.path().join("subnet.env")).unwrap_err();
        assert_eq!(e.code(), 11);
    }
}
