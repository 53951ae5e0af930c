//! The subnet file (`/run/twill/subnet.env`), the agent's only message to the
//! CNI plugin: its one renderer ([`SubnetEnv::render`]) and its one parser
//! ([`NodeSubnet::parse`]), which also reads flannel's `FLANNEL_*` files.
//!
//! Keys (each also as `FLANNEL_<key>`; `TWILL_` wins per key):
//! `TWILL_NETWORK` (cluster network), `TWILL_SUBNET` (gateway address with
//! the node subnet's prefix length), `TWILL_MTU`, `TWILL_IPMASQ`, and on a
//! dual-stack node `TWILL_IPV6_NETWORK` and `TWILL_IPV6_SUBNET`. An
//! IPv6-only node's file has the IPv6 keys, `TWILL_MTU` and `TWILL_IPMASQ`
//! only ([`Ipv6OnlySubnetEnv`]); [`NodeSubnets::parse`] reads both forms.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::gateway::{gateway6_of, gateway_of};

mod ipv6_only;
pub use ipv6_only::{Ipv6OnlySubnetEnv, NodeSubnets};

/// MTU used when the subnet file does not name one.
pub const DEFAULT_MTU: u32 = 1500;

/// Smallest IPv6 node subnet: a /126 still has two pod addresses after the
/// subnet-router anycast and the gateway.
const MAX_IPV6_PREFIX: u8 = 126;

/// Smallest IPv4 node subnet: a /30 still has one pod address after the
/// gateway (the network config's `SubnetLen` is at most 30 too).
const MAX_IPV4_PREFIX: u8 = 30;

/// Why a subnet file was refused. Every message names the key as written in
/// the file (or the line number), since that is what an operator greps for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("subnet file line {line} {text:?} is not KEY=VALUE")]
    NotKeyValue { line: usize, text: String },
    #[error("TWILL_{key} (or FLANNEL_{key}) is missing")]
    Missing { key: &'static str },
    #[error("{key} is set but TWILL_{missing} (or FLANNEL_{missing}) is missing")]
    Unpaired { key: String, missing: &'static str },
    #[error("{key} {value:?} {reason}")]
    Invalid {
        key: String,
        value: String,
        reason: String,
    },
}

/// What the agent writes: a complete subnet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    /// The node subnet itself (10.244.3.0/24); the file carries its gateway.
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ip_masq: bool,
    /// The cluster's and this node's IPv6 networks, when dual-stack.
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
}

impl SubnetEnv {
    /// The gateway (bridge) address of the node subnet: its first host.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.subnet)
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "TWILL_NETWORK={}\nTWILL_SUBNET={}/{}\nTWILL_MTU={}\nTWILL_IPMASQ={}\n",
            self.network,
            self.gateway(),
            self.subnet.prefix_len(),
            self.mtu,
            self.ip_masq
        );
        if let Some((network6, subnet6)) = self.ipv6 {
            out.push_str(&format!(
                "TWILL_IPV6_NETWORK={network6}\nTWILL_IPV6_SUBNET={}/{}\n",
                gateway6_of(subnet6),
                subnet6.prefix_len()
            ));
        }
        out
    }

    /// Parses a file that must name the cluster networks too (what
    /// [`render`](Self::render) writes); [`NodeSubnet::parse`] does the work.
    pub fn parse(text: &str) -> Result<SubnetEnv, ParseError> {
        SubnetEnv::try_from(NodeSubnet::parse(text)?)
    }
}

impl TryFrom<NodeSubnet> for SubnetEnv {
    type Error = ParseError;

    /// Fails when the file leaves out a cluster network, which readers like
    /// the plugin can do without.
    fn try_from(n: NodeSubnet) -> Result<Self, ParseError> {
        let network = n.network.ok_or(ParseError::Missing { key: "NETWORK" })?;
        let ipv6 = match n.ipv6 {
            None => None,
            Some(v6) => Some((
                v6.network.ok_or(ParseError::Missing {
                    key: "IPV6_NETWORK",
                })?,
                v6.subnet(),
            )),
        };
        Ok(SubnetEnv {
            network,
            subnet: n.subnet(),
            mtu: n.mtu,
            ip_masq: n.ipmasq,
            ipv6,
        })
    }
}

/// What a subnet file tells a reader about this node's share of the
/// network; only `*_SUBNET` is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSubnet {
    /// The whole cluster network, if the file names it.
    pub network: Option<Ipv4Net>,
    /// Gateway address with the node subnet's prefix length (e.g. 10.244.3.1/24).
    pub gateway_net: Ipv4Net,
    /// [`DEFAULT_MTU`] when the file names none.
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

/// A key's full name as written in the file, and its value.
type Entry<'a> = (String, &'a str);

/// A subnet file's keys, by their name after `TWILL_` / `FLANNEL_`.
struct Keys<'a> {
    twill: HashMap<&'a str, &'a str>,
    flannel: HashMap<&'a str, &'a str>,
}

impl<'a> Keys<'a> {
    fn read(text: &'a str) -> Result<Self, ParseError> {
        let mut keys = Keys {
            twill: HashMap::new(),
            flannel: HashMap::new(),
        };
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                return Err(ParseError::NotKeyValue {
                    line: i + 1,
                    text: line.to_string(),
                });
            };
            let v = v.trim().trim_matches('"').trim_matches('\'');
            if let Some(key) = k.trim().strip_prefix("TWILL_") {
                keys.twill.insert(key, v);
            } else if let Some(key) = k.trim().strip_prefix("FLANNEL_") {
                keys.flannel.insert(key, v);
            }
        }
        Ok(keys)
    }

    /// `key`'s entry, `TWILL_` first.
    fn get(&self, key: &str) -> Option<Entry<'a>> {
        self.twill
            .get(key)
            .map(|v| (format!("TWILL_{key}"), *v))
            .or_else(|| {
                self.flannel
                    .get(key)
                    .map(|v| (format!("FLANNEL_{key}"), *v))
            })
    }

    /// `MTU` ([`DEFAULT_MTU`] if absent) and `IPMASQ` (false if absent).
    fn mtu_and_masq(&self) -> Result<(u32, bool), ParseError> {
        let mtu = match self.get("MTU") {
            None => DEFAULT_MTU,
            Some((k, s)) => match s.parse::<u32>() {
                Ok(m) if (68..=65535).contains(&m) => m,
                _ => return Err(invalid(&k, s, "is not an integer in 68..=65535")),
            },
        };
        let ipmasq = match self.get("IPMASQ") {
            None => false,
            Some((k, s)) => match s {
                "false" | "0" | "" => false,
                "true" | "1" => true,
                _ => return Err(invalid(&k, s, "is not a boolean")),
            },
        };
        Ok((mtu, ipmasq))
    }

    /// The IPv6 pair. An empty value counts as absent: a template that
    /// renders an unset variable must not turn an IPv4-only node into a
    /// broken one.
    fn ipv6(&self) -> Result<Option<NodeSubnet6>, ParseError> {
        let get6 = |key: &str| self.get(key).filter(|(_, v)| !v.is_empty());
        parse_ipv6(get6("IPV6_NETWORK"), get6("IPV6_SUBNET"))
    }
}

fn invalid(key: &str, value: &str, reason: impl ToString) -> ParseError {
    ParseError::Invalid {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn malformed(key: &str, value: &str, e: impl std::fmt::Display) -> ParseError {
    invalid(key, value, format!("is malformed: {e}"))
}

/// A gateway address with its subnet's prefix (`10.244.3.1/24`), of either
/// family, whose subnet leaves room for pods: at most a `/max`.
fn gateway_net<N>(key: &str, value: &str, max: u8) -> Result<N, ParseError>
where
    N: std::str::FromStr<Err = ipnet::AddrParseError> + Into<IpNet> + Copy,
{
    let net: N = value.parse().map_err(|e| malformed(key, value, e))?;
    if net.into().prefix_len() > max {
        return Err(invalid(
            key,
            value,
            format!("is too small for pods (longest prefix is /{max})"),
        ));
    }
    Ok(net)
}

impl NodeSubnet {
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway_net.addr()
    }

    /// The node subnet itself (10.244.3.0/24).
    pub fn subnet(&self) -> Ipv4Net {
        self.gateway_net.trunc()
    }

    /// Parses the `KEY=VALUE` text (shell `export ` and quotes allowed,
    /// comments and unknown keys ignored); `TWILL_*` wins over `FLANNEL_*`.
    pub fn parse(text: &str) -> Result<NodeSubnet, ParseError> {
        let keys = Keys::read(text)?;
        let get = |key: &str| keys.get(key);

        let (subnet_k, subnet_s) = get("SUBNET").ok_or(ParseError::Missing { key: "SUBNET" })?;
        let gateway_net: Ipv4Net = gateway_net(&subnet_k, subnet_s, MAX_IPV4_PREFIX)?;
        let gw = gateway_net.addr();
        if gw == gateway_net.network() || gw == gateway_net.broadcast() {
            return Err(invalid(
                &subnet_k,
                subnet_s,
                "must be the gateway address, not the network or broadcast",
            ));
        }
        let want = gateway_of(gateway_net.trunc());
        if gw != want {
            return Err(invalid(
                &subnet_k,
                subnet_s,
                format!("must carry the subnet's gateway, its first address {want}"),
            ));
        }
        let network = get("NETWORK")
            .map(|(k, s)| {
                let n = s.parse::<Ipv4Net>().map_err(|e| malformed(&k, s, e))?;
                if n.addr() != n.network() {
                    return Err(invalid(&k, s, "has host bits set"));
                }
                Ok((k, n))
            })
            .transpose()?;
        if let Some((k, n)) = &network {
            let subnet = IpNet::from(gateway_net.trunc());
            inside(&subnet_k, subnet_s, subnet, k, (*n).into())?;
        }
        let network = network.map(|(_, n)| n);
        let (mtu, ipmasq) = keys.mtu_and_masq()?;
        let ipv6 = keys.ipv6()?;
        Ok(NodeSubnet {
            network,
            gateway_net,
            mtu,
            ipmasq,
            ipv6,
        })
    }
}

/// A node subnet must be one of the cluster network's lease-sized pieces:
/// inside it and strictly longer (a lease is never the whole network). What
/// the agent leases satisfies this for any `SubnetLen` the network config
/// accepts, so a file that does not was written or edited by something else.
fn inside(
    key: &str,
    value: &str,
    subnet: IpNet,
    net_key: &str,
    network: IpNet,
) -> Result<(), ParseError> {
    if !network.contains(&subnet) {
        return Err(invalid(
            key,
            value,
            format!("is not inside {net_key} {network}"),
        ));
    }
    if subnet.prefix_len() <= network.prefix_len() {
        return Err(invalid(
            key,
            value,
            format!(
                "has prefix /{}, which is no node lease of {net_key} {network} (leases are longer than /{})",
                subnet.prefix_len(),
                network.prefix_len()
            ),
        ));
    }
    Ok(())
}

fn parse_ipv6(
    network: Option<Entry<'_>>,
    subnet: Option<Entry<'_>>,
) -> Result<Option<NodeSubnet6>, ParseError> {
    let network = network
        .map(|(k, s)| {
            s.parse::<Ipv6Net>()
                .map(|n| (k.clone(), n))
                .map_err(|e| malformed(&k, s, e))
        })
        .transpose()?;
    let Some((subnet_k, subnet_s)) = subnet else {
        return match network {
            None => Ok(None),
            Some((key, _)) => Err(ParseError::Unpaired {
                key,
                missing: "IPV6_SUBNET",
            }),
        };
    };
    let gateway_net: Ipv6Net = gateway_net(&subnet_k, subnet_s, MAX_IPV6_PREFIX)?;
    if gateway_net.addr() == gateway_net.network() {
        return Err(invalid(
            &subnet_k,
            subnet_s,
            "must be the gateway address, not the subnet-router anycast address",
        ));
    }
    let want = gateway6_of(gateway_net.trunc());
    if gateway_net.addr() != want {
        return Err(invalid(
            &subnet_k,
            subnet_s,
            format!("must carry the subnet's gateway, its first address {want}"),
        ));
    }
    if let Some((k, n)) = &network {
        if n.addr() != n.network() {
            return Err(invalid(k, &n.to_string(), "has host bits set"));
        }
        let subnet = IpNet::from(gateway_net.trunc());
        inside(&subnet_k, subnet_s, subnet, k, (*n).into())?;
    }
    Ok(Some(NodeSubnet6 {
        network: network.map(|(_, n)| n),
        gateway_net,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeSubnet, ParseError> {
        NodeSubnet::parse(text)
    }

    fn env() -> SubnetEnv {
        SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            mtu: 1450,
            ip_masq: false,
            ipv6: None,
        }
    }

    fn dual() -> SubnetEnv {
        SubnetEnv {
            ipv6: Some((
                "fd00:10:244::/48".parse().unwrap(),
                "fd00:10:244:3::/64".parse().unwrap(),
            )),
            ..env()
        }
    }

    // Render (moved from the agent's subnet_file).

    #[test]
    fn dual_stack_adds_the_ipv6_keys() {
        assert!(dual().render().ends_with(
            "TWILL_IPMASQ=false\nTWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
        ));
    }

    #[test]
    fn renders_the_documented_keys() {
        assert_eq!(
            env().render(),
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=false\n"
        );
    }

    // Round trips.

    #[test]
    fn render_then_parse_gives_the_same_env() {
        let masq = SubnetEnv {
            ip_masq: true,
            mtu: 1400,
            ..env()
        };
        let dual_masq = SubnetEnv {
            ip_masq: true,
            ..dual()
        };
        let small = SubnetEnv {
            subnet: "10.244.0.128/25".parse().unwrap(),
            ipv6: Some((
                "fd00::/112".parse().unwrap(),
                "fd00::4/126".parse().unwrap(),
            )),
            ..env()
        };
        for e in [env(), masq, dual(), dual_masq, small] {
            let text = e.render();
            assert_eq!(SubnetEnv::parse(&text), Ok(e.clone()), "{text}");
            // The reader's view of the same file.
            let n = NodeSubnet::parse(&text).unwrap();
            assert_eq!(n.subnet(), e.subnet);
            assert_eq!(n.gateway(), e.gateway());
            assert_eq!(n.network, Some(e.network));
            assert_eq!((n.mtu, n.ipmasq), (e.mtu, e.ip_masq));
            assert_eq!(
                n.ipv6.map(|v6| (v6.network, v6.subnet())),
                e.ipv6.map(|(n6, s6)| (Some(n6), s6))
            );
        }
    }

    #[test]
    fn a_flannel_written_file_parses() {
        // What flanneld writes to /run/flannel/subnet.env (dual-stack).
        let text = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/48\nFLANNEL_IPV6_SUBNET=fd00:10:244:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";
        let e = SubnetEnv::parse(text).unwrap();
        assert_eq!(
            e,
            SubnetEnv {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.7.0/24".parse().unwrap(),
                mtu: 1450,
                ip_masq: true,
                ipv6: Some((
                    "fd00:10:244::/48".parse().unwrap(),
                    "fd00:10:244:7::/64".parse().unwrap()
                )),
            }
        );
    }

    #[test]
    fn agent_form_needs_the_cluster_networks() {
        let e = SubnetEnv::parse("TWILL_SUBNET=10.244.3.1/24\n").unwrap_err();
        assert_eq!(e, ParseError::Missing { key: "NETWORK" });
        assert!(e.to_string().contains("TWILL_NETWORK"), "{e}");
        let e = SubnetEnv::parse(
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_SUBNET=fd00::1/64\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("TWILL_IPV6_NETWORK"), "{e}");
    }

    #[test]
    fn malformed_lines_name_the_key_or_line() {
        for (text, needle) in [
            ("TWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=big\n", "TWILL_MTU"),
            (
                "FLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=big\n",
                "FLANNEL_MTU",
            ),
            (
                "TWILL_SUBNET=10.244.3.1/24\nTWILL_NETWORK=x\n",
                "TWILL_NETWORK",
            ),
            ("TWILL_SUBNET=10.244.3.1\n", "TWILL_SUBNET"),
            ("TWILL_MTU=1450\n", "TWILL_SUBNET"),
            ("# comment\n\nTWILL_SUBNET=10.244.3.1/24\njunk\n", "line 4"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e:?} should name {needle}");
        }
    }

    #[test]
    fn shell_syntax_is_tolerated() {
        let s = parse(
            "# written by hand\nexport TWILL_SUBNET=\"10.244.3.1/24\"\nTWILL_MTU='1400'\nOTHER=1\n",
        )
        .unwrap();
        assert_eq!(s.subnet().to_string(), "10.244.3.0/24");
        assert_eq!(s.mtu, 1400);
        assert_eq!(s.network, None);
    }

    // Parse (moved from the plugin's subnet module).

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
    fn inconsistent_files_name_the_key_and_why() {
        for (text, key, why) in [
            // Outside the network.
            (
                "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.99.3.1/24\n",
                "TWILL_SUBNET",
                "not inside TWILL_NETWORK",
            ),
            // Prefixes no lease of the network can have.
            (
                "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.0.0.1/8\n",
                "TWILL_SUBNET",
                "not inside",
            ),
            (
                "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.0.1/16\n",
                "TWILL_SUBNET",
                "no node lease",
            ),
            // A truncated prefix: caught here, not by netlink.
            (
                "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/2\n",
                "TWILL_SUBNET",
                "gateway",
            ),
            // A gateway that is not the first address.
            (
                "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.7/24\n",
                "TWILL_SUBNET",
                "10.244.3.1",
            ),
            (
                "TWILL_NETWORK=10.244.0.1/16\nTWILL_SUBNET=10.244.3.1/24\n",
                "TWILL_NETWORK",
                "host bits",
            ),
            // The IPv6 pair.
            (
                "TWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244::1/48\n",
                "TWILL_IPV6_SUBNET",
                "no node lease",
            ),
            (
                "TWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_SUBNET=fd00:10:244:3::9/64\n",
                "TWILL_IPV6_SUBNET",
                "fd00:10:244:3::1",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains(why),
                "{text:?}: {e:?} should name {key} and say {why:?}"
            );
        }
        // /2 without a network: the gateway rule still refuses it (its first
        // address is 0.0.0.1).
        let e = parse("TWILL_SUBNET=10.244.3.1/2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("0.0.0.1"), "{e}");
        // Positive control: a /25 of a /16 and a /30 are leases.
        parse("TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.129/25\n").unwrap();
        parse("TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.5/30\n").unwrap();
    }

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
            let e = parse(&format!("{V4}{extra}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{extra:?}: {e:?} should name {key}");
        }
    }
}
