//! Reads the node's subnet file written by the agent (`TWILL_*` keys, or
//! flannel's `FLANNEL_*` keys), including the optional IPv6 pair
//! `*_IPV6_NETWORK` / `*_IPV6_SUBNET` of a dual-stack node.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnet::{Ipv4Net, Ipv6Net};

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
    /// The node's IPv6 share, `None` on an IPv4-only node.
    pub ipv6: Option<NodeSubnet6>,
}

/// The IPv6 half of a dual-stack node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeSubnet6 {
    /// The whole cluster IPv6 network, if the file names it.
    pub network: Option<Ipv6Net>,
    /// Gateway address with the node subnet's prefix length
    /// (e.g. fd00:10:244:3::1/64).
    pub gateway_net: Ipv6Net,
}

impl NodeSubnet6 {
    pub fn gateway(&self) -> Ipv6Addr {
        self.gateway_net.addr()
    }

    /// The node subnet itself (fd00:10:244:3::/64).
    pub fn subnet(&self) -> Ipv6Net {
        self.gateway_net.trunc()
    }
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

/// Parses the `KEY=VALUE` text; `TWILL_*` wins over `FLANNEL_*`. Error
/// messages name the key as written in the file.
pub fn parse(text: &str) -> Result<NodeSubnet, String> {
    let mut twill = HashMap::new();
    let mut flannel = HashMap::new();
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
    // (full key name for messages, value)
    let get = |key: &str| -> Option<(String, &String)> {
        twill
            .get(key)
            .map(|v| (format!("TWILL_{key}"), v))
            .or_else(|| flannel.get(key).map(|v| (format!("FLANNEL_{key}"), v)))
    };

    let (subnet_k, subnet_s) =
        get("SUBNET").ok_or("TWILL_SUBNET (or FLANNEL_SUBNET) is missing")?;
    let gateway_net: Ipv4Net = subnet_s
        .parse()
        .map_err(|e| format!("{subnet_k} {subnet_s:?}: {e}"))?;
    if gateway_net.prefix_len() > 30 {
        return Err(format!("{subnet_k} {subnet_s:?} is too small for pods"));
    }
    let gw = gateway_net.addr();
    if gw == gateway_net.network() || gw == gateway_net.broadcast() {
        return Err(format!(
            "{subnet_k} {subnet_s:?} must be the gateway address, not the network or broadcast"
        ));
    }
    let network = get("NETWORK")
        .map(|(k, s)| s.parse::<Ipv4Net>().map_err(|e| format!("{k} {s:?}: {e}")))
        .transpose()?;
    let mtu = match get("MTU") {
        None => DEFAULT_MTU,
        Some((k, s)) => match s.parse::<u32>() {
            Ok(m) if (68..=65535).contains(&m) => m,
            _ => return Err(format!("{k} {s:?} is not an integer in 68..=65535")),
        },
    };
    let ipmasq = match get("IPMASQ") {
        None => false,
        Some((k, s)) => match s.as_str() {
            "false" | "0" | "" => false,
            "true" | "1" => true,
            _ => return Err(format!("{k} {s:?} is not a boolean")),
        },
    };
    // An empty value counts as absent: a template that renders an unset
    // variable must not turn an IPv4-only node into a broken one.
    let get6 = |key: &str| get(key).filter(|(_, v)| !v.is_empty());
    let ipv6 = parse_ipv6(get6("IPV6_NETWORK"), get6("IPV6_SUBNET"))?;
    Ok(NodeSubnet {
        network,
        gateway_net,
        mtu,
        ipmasq,
        ipv6,
    })
}

/// Smallest IPv6 node subnet: a /126 still has two pod addresses after the
/// subnet-router anycast and the gateway.
const MAX_IPV6_PREFIX: u8 = 126;

fn parse_ipv6(
    network: Option<(String, &String)>,
    subnet: Option<(String, &String)>,
) -> Result<Option<NodeSubnet6>, String> {
    let network = network
        .map(|(k, s)| {
            s.parse::<Ipv6Net>()
                .map(|n| (k.clone(), n))
                .map_err(|e| format!("{k} {s:?}: {e}"))
        })
        .transpose()?;
    let Some((subnet_k, subnet_s)) = subnet else {
        return match network {
            None => Ok(None),
            Some((k, _)) => Err(format!(
                "{k} is set but TWILL_IPV6_SUBNET (or FLANNEL_IPV6_SUBNET) is missing"
            )),
        };
    };
    let gateway_net: Ipv6Net = subnet_s
        .parse()
        .map_err(|e| format!("{subnet_k} {subnet_s:?}: {e}"))?;
    if gateway_net.prefix_len() > MAX_IPV6_PREFIX {
        return Err(format!(
            "{subnet_k} {subnet_s:?} is too small for pods (longest prefix is /{MAX_IPV6_PREFIX})"
        ));
    }
    if gateway_net.addr() == gateway_net.network() {
        return Err(format!(
            "{subnet_k} {subnet_s:?} must be the gateway address, not the subnet-router anycast address"
        ));
    }
    if let Some((k, n)) = &network {
        if !n.contains(&gateway_net.trunc()) {
            return Err(format!("{subnet_k} {subnet_s:?} is not inside {k} {n}"));
        }
    }
    Ok(Some(NodeSubnet6 {
        network: network.map(|(_, n)| n),
        gateway_net,
    }))
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

    const V4: &str = "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\n";

    #[test]
    fn ipv4_only_file_has_no_ipv6() {
        assert_eq!(parse(V4).unwrap().ipv6, None);
        // Empty values are absent, not malformed.
        let s = parse(&format!("{V4}TWILL_IPV6_NETWORK=\nTWILL_IPV6_SUBNET=\n")).unwrap();
        assert_eq!(s.ipv6, None);
    }

    #[test]
    fn dual_stack_twill_and_flannel_names() {
        let s = parse(&format!(
            "{V4}TWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
        ))
        .unwrap();
        let v6 = s.ipv6.unwrap();
        assert_eq!(
            v6.gateway(),
            "fd00:10:244:3::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(v6.subnet().to_string(), "fd00:10:244:3::/64");
        assert_eq!(v6.network.unwrap().to_string(), "fd00:10:244::/48");
        // Without a network, and flannel's names; TWILL_ wins per key.
        let s = parse(&format!("{V4}FLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\n")).unwrap();
        let v6 = s.ipv6.unwrap();
        assert_eq!(v6.subnet().to_string(), "fd00:10:244:7::/64");
        assert_eq!(v6.network, None);
        let s = parse(&format!(
            "{V4}FLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\nTWILL_IPV6_SUBNET=fd00:10:244:9::1/64\n"
        ))
        .unwrap();
        assert_eq!(s.ipv6.unwrap().subnet().to_string(), "fd00:10:244:9::/64");
        // A gateway that is not ::1 and a tiny subnet are fine.
        let s = parse(&format!("{V4}TWILL_IPV6_SUBNET=fd00::5/126\n")).unwrap();
        assert_eq!(s.ipv6.unwrap().gateway_net.prefix_len(), 126);
    }

    #[test]
    fn malformed_ipv6_keys_are_named() {
        for (extra, key) in [
            ("TWILL_IPV6_SUBNET=banana", "TWILL_IPV6_SUBNET"),
            ("TWILL_IPV6_SUBNET=10.244.3.1/24", "TWILL_IPV6_SUBNET"),
            ("FLANNEL_IPV6_SUBNET=fd00::1", "FLANNEL_IPV6_SUBNET"),
            ("TWILL_IPV6_SUBNET=fd00:10:244:3::/64", "TWILL_IPV6_SUBNET"),
            ("TWILL_IPV6_SUBNET=fd00::1/127", "TWILL_IPV6_SUBNET"),
            ("TWILL_IPV6_SUBNET=fd00::2/128", "TWILL_IPV6_SUBNET"),
            (
                "TWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:99::1/64",
                "TWILL_IPV6_SUBNET",
            ),
            (
                "TWILL_IPV6_NETWORK=nope\nTWILL_IPV6_SUBNET=fd00::1/64",
                "TWILL_IPV6_NETWORK",
            ),
            ("FLANNEL_IPV6_NETWORK=fd00::/48", "FLANNEL_IPV6_NETWORK"),
        ] {
            let e = parse(&format!("{V4}{extra}\n")).unwrap_err();
            assert!(e.contains(key), "{extra:?}: {e:?} should name {key}");
        }
        // Through load(): code 101 with the key in the details.
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
