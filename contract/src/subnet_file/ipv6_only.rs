//! The subnet file of an IPv6-only node: IPv6 keys only, as flannel's
//! `WriteSubnetFile` writes them with `EnableIPv4: false`:
//!
//! ```text
//! TWILL_IPV6_NETWORK=fd00:10:244::/48
//! TWILL_IPV6_SUBNET=fd00:10:244:3::1/64
//! TWILL_MTU=1430
//! TWILL_IPMASQ=false
//! ```

use ipnet::Ipv6Net;

use super::{Keys, NodeSubnet, NodeSubnet6, ParseError};
use crate::gateway::gateway6_of;

/// What the agent of an IPv6-only node writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6OnlySubnetEnv {
    pub network6: Ipv6Net,
    /// The node subnet itself (fd00:10:244:3::/64); the file carries its
    /// gateway.
    pub subnet6: Ipv6Net,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl Ipv6OnlySubnetEnv {
    pub fn render(&self) -> String {
        format!(
            "TWILL_IPV6_NETWORK={}\nTWILL_IPV6_SUBNET={}/{}\nTWILL_MTU={}\nTWILL_IPMASQ={}\n",
            self.network6,
            gateway6_of(self.subnet6),
            self.subnet6.prefix_len(),
            self.mtu,
            self.ip_masq
        )
    }

    /// Parses a file that must be an IPv6-only node's and name the cluster
    /// network too (what [`render`](Self::render) writes).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        match NodeSubnets::parse(text)? {
            NodeSubnets::Ipv6Only { ipv6, mtu, ipmasq } => Ok(Ipv6OnlySubnetEnv {
                network6: ipv6.network.ok_or(ParseError::Missing {
                    key: "IPV6_NETWORK",
                })?,
                subnet6: ipv6.subnet(),
                mtu,
                ip_masq: ipmasq,
            }),
            NodeSubnets::Ipv4(n) => Err(ParseError::Invalid {
                key: "TWILL_SUBNET".into(),
                value: n.gateway_net.to_string(),
                reason: "is set in what must be an IPv6-only node's file".into(),
            }),
        }
    }
}

/// A subnet file as a reader (the CNI plugin) takes it: an IPv4 or
/// dual-stack node's, or an IPv6-only node's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSubnets {
    /// `*_SUBNET` is set: [`NodeSubnet::parse`]'s rules.
    Ipv4(NodeSubnet),
    /// No IPv4 keys, `*_IPV6_SUBNET` set.
    Ipv6Only {
        ipv6: NodeSubnet6,
        mtu: u32,
        ipmasq: bool,
    },
}

impl NodeSubnets {
    /// Parses either form. A file without `*_SUBNET` is an IPv6-only
    /// node's, which needs `*_IPV6_SUBNET` (else `Missing SUBNET`, the
    /// error an IPv4 reader gives) and no `*_NETWORK` (`Unpaired`).
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let keys = Keys::read(text)?;
        let set = |key: &str| keys.get(key).filter(|(_, v)| !v.is_empty());
        if set("SUBNET").is_some() || set("IPV6_SUBNET").is_none() {
            return NodeSubnet::parse(text).map(NodeSubnets::Ipv4);
        }
        if let Some((key, _)) = set("NETWORK") {
            return Err(ParseError::Unpaired {
                key,
                missing: "SUBNET",
            });
        }
        let (mtu, ipmasq) = keys.mtu_and_masq()?;
        let ipv6 = keys.ipv6()?.ok_or(ParseError::Missing { key: "SUBNET" })?;
        Ok(NodeSubnets::Ipv6Only { ipv6, mtu, ipmasq })
    }

    pub fn mtu(&self) -> u32 {
        match self {
            NodeSubnets::Ipv4(n) => n.mtu,
            NodeSubnets::Ipv6Only { mtu, .. } => *mtu,
        }
    }

    /// The node's IPv6 share, if any.
    pub fn ipv6(&self) -> Option<NodeSubnet6> {
        match self {
            NodeSubnets::Ipv4(n) => n.ipv6,
            NodeSubnets::Ipv6Only { ipv6, .. } => Some(*ipv6),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn env() -> Ipv6OnlySubnetEnv {
        Ipv6OnlySubnetEnv {
            network6: "fd00:10:244::/48".parse().unwrap(),
            subnet6: "fd00:10:244:3::/64".parse().unwrap(),
            mtu: 1430,
            ip_masq: false,
        }
    }

    #[test]
    fn renders_ipv6_keys_only() {
        assert_eq!(
            env().render(),
            "TWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\nTWILL_MTU=1430\nTWILL_IPMASQ=false\n"
        );
    }

    #[test]
    fn render_then_parse_round_trips() {
        let small = Ipv6OnlySubnetEnv {
            subnet6: "fd00:10:244::4/126".parse().unwrap(),
            ip_masq: true,
            ..env()
        };
        for e in [env(), small] {
            let text = e.render();
            assert_eq!(Ipv6OnlySubnetEnv::parse(&text), Ok(e.clone()), "{text}");
            match NodeSubnets::parse(&text).unwrap() {
                NodeSubnets::Ipv6Only { ipv6, mtu, ipmasq } => {
                    assert_eq!(ipv6.subnet(), e.subnet6);
                    assert_eq!(ipv6.gateway(), gateway6_of(e.subnet6));
                    assert_eq!((mtu, ipmasq), (e.mtu, e.ip_masq));
                }
                other => panic!("{other:?}"),
            }
            // An IPv4 reader refuses it, naming the key it lacks.
            assert_eq!(
                NodeSubnet::parse(&text),
                Err(ParseError::Missing { key: "SUBNET" })
            );
        }
    }

    #[test]
    fn a_flannel_written_ipv6_only_file_parses() {
        // flannel's WriteSubnetFile with EnableIPv4 false.
        let text = "FLANNEL_IPV6_NETWORK=fd00:10:244::/48\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n";
        let e = Ipv6OnlySubnetEnv::parse(text).unwrap();
        assert_eq!(e.subnet6, "fd00:10:244:7::/64".parse::<Ipv6Net>().unwrap());
        assert!(e.ip_masq);
        assert_eq!(e.mtu, 1430);
    }

    #[test]
    fn both_forms_read_and_bad_ones_name_the_key() {
        let dual = "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n";
        let n = NodeSubnets::parse(dual).unwrap();
        assert!(matches!(n, NodeSubnets::Ipv4(_)), "{n:?}");
        assert!(n.ipv6().is_some());
        let e = Ipv6OnlySubnetEnv::parse(dual).unwrap_err();
        assert!(e.to_string().contains("TWILL_SUBNET"), "{e}");
        // Neither subnet: the IPv4 reader's error.
        assert_eq!(
            NodeSubnets::parse("TWILL_MTU=1400\n"),
            Err(ParseError::Missing { key: "SUBNET" })
        );
        // An IPv4 network without its subnet.
        let e = NodeSubnets::parse(
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("TWILL_NETWORK is set but TWILL_SUBNET"),
            "{e}"
        );
        // The IPv6 rules still apply: gateway, inside the network, MTU.
        for (text, key) in [
            (
                "TWILL_IPV6_SUBNET=fd00:10:244:3::2/64\n",
                "TWILL_IPV6_SUBNET",
            ),
            (
                "TWILL_IPV6_NETWORK=fd00:99::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n",
                "TWILL_IPV6_SUBNET",
            ),
            (
                "TWILL_IPV6_SUBNET=fd00:10:244:3::1/64\nTWILL_MTU=9\n",
                "TWILL_MTU",
            ),
        ] {
            let e = NodeSubnets::parse(text).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        // Without IPV6_NETWORK a reader still gets the node's subnet; the
        // writer's form needs it.
        let text = "TWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n";
        assert!(NodeSubnets::parse(text).is_ok());
        assert_eq!(
            Ipv6OnlySubnetEnv::parse(text),
            Err(ParseError::Missing {
                key: "IPV6_NETWORK"
            })
        );
    }
}
