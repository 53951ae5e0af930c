//! The cluster network config (`<prefix>/config`): flannel's JSON form,
//! parsed into validated, defaulted plain data.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Default VXLAN network identifier (flannel's).
pub const DEFAULT_VNI: u32 = 1;
/// Default VXLAN UDP port (the Linux kernel's, also flannel's).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Subnets longer than this leave too few pod addresses to be useful.
pub const MAX_SUBNET_LEN: u8 = 30;
const MAX_VNI: u32 = (1 << 24) - 1;

/// Errors of [`NetworkConfig::parse`]; each names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("network config field Network is missing")]
    MissingNetwork,
    #[error("network config field {field}: {value:?} is not {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("network config field SubnetLen {subnet_len} must be longer than the Network prefix /{network_len} and at most /{max}")]
    SubnetLen {
        subnet_len: u8,
        network_len: u8,
        max: u8,
    },
    #[error("network config field {field} {subnet} is not inside Network {network}")]
    OutsideNetwork {
        field: &'static str,
        subnet: Ipv4Addr,
        network: Ipv4Net,
    },
    #[error("network config field {field} {addr} is not aligned to SubnetLen /{subnet_len}")]
    Unaligned {
        field: &'static str,
        addr: Ipv4Addr,
        subnet_len: u8,
    },
    #[error("network config SubnetMin {min} is after SubnetMax {max}")]
    MinAfterMax { min: Ipv4Addr, max: Ipv4Addr },
    #[error(
        "network config field Backend.Type {0:?} is unknown (expected \"vxlan\" or \"host-gw\")"
    )]
    UnknownBackend(String),
    #[error("network config field Backend.VNI {0} does not fit in 24 bits")]
    Vni(u32),
}

/// The data-path backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendType {
    #[default]
    Vxlan,
    HostGw,
}

impl BackendType {
    /// The name used in JSON (config `Backend.Type`, lease `BackendType`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::Vxlan => "vxlan",
            BackendType::HostGw => "host-gw",
        }
    }
}

impl fmt::Display for BackendType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendType {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vxlan" => Ok(BackendType::Vxlan),
            "host-gw" => Ok(BackendType::HostGw),
            other => Err(ConfigError::UnknownBackend(other.to_string())),
        }
    }
}

/// `Backend` section of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    pub kind: BackendType,
    pub vni: u32,
    pub port: u16,
    pub mtu: Option<u32>,
    pub direct_routing: bool,
    pub gbp: bool,
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig {
            kind: BackendType::Vxlan,
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            mtu: None,
            direct_routing: false,
            gbp: false,
        }
    }
}

/// The validated cluster network config. `subnet_min`/`subnet_max` carry
/// `subnet_len` as their prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Net,
    pub subnet_max: Ipv4Net,
    pub backend: BackendConfig,
}

// Raw JSON shape: strings stay strings so that errors can name the field and
// quote the bad value instead of serde's generic message.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    network: Option<String>,
    subnet_len: Option<u8>,
    subnet_min: Option<String>,
    subnet_max: Option<String>,
    backend: Option<RawBackend>,
}

#[derive(Deserialize)]
struct RawBackend {
    #[serde(rename = "Type")]
    kind: Option<String>,
    #[serde(rename = "VNI")]
    vni: Option<u32>,
    #[serde(rename = "Port")]
    port: Option<u16>,
    #[serde(rename = "MTU")]
    mtu: Option<u32>,
    #[serde(rename = "DirectRouting")]
    direct_routing: Option<bool>,
    #[serde(rename = "GBP")]
    gbp: Option<bool>,
}

fn to_u32(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

fn subnet_size(len: u8) -> u64 {
    1u64 << (32 - u32::from(len))
}

impl NetworkConfig {
    /// Parses and validates flannel's config JSON, filling in defaults.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(bytes)?;
        let net_str = raw.network.ok_or(ConfigError::MissingNetwork)?;
        let network = Ipv4Net::from_str(net_str.trim()).map_err(|_| ConfigError::Invalid {
            field: "Network",
            value: net_str.clone(),
            expected: "an IPv4 network like 10.244.0.0/16",
        })?;
        if network != network.trunc() {
            return Err(ConfigError::Invalid {
                field: "Network",
                value: net_str,
                expected: "a network address (host bits must be zero)",
            });
        }
        let network_len = network.prefix_len();
        // flannel's default: a /24 per node, or half the network if it is
        // itself a /24 or smaller.
        let subnet_len = raw.subnet_len.unwrap_or(if network_len < 24 {
            24
        } else {
            network_len.saturating_add(1)
        });
        if subnet_len <= network_len || subnet_len > MAX_SUBNET_LEN {
            return Err(ConfigError::SubnetLen {
                subnet_len,
                network_len,
                max: MAX_SUBNET_LEN,
            });
        }
        let size = subnet_size(subnet_len);
        let net_start = u64::from(to_u32(network.network()));
        let net_end = u64::from(to_u32(network.broadcast()));
        let default_min = net_start + size;
        let default_max = net_end + 1 - size;

        let subnet_min = match raw.subnet_min {
            Some(s) => parse_bound("SubnetMin", &s, network, subnet_len)?,
            None => addr_net(default_min, subnet_len),
        };
        let subnet_max = match raw.subnet_max {
            Some(s) => parse_bound("SubnetMax", &s, network, subnet_len)?,
            None => addr_net(default_max, subnet_len),
        };
        if subnet_min.network() > subnet_max.network() {
            return Err(ConfigError::MinAfterMax {
                min: subnet_min.network(),
                max: subnet_max.network(),
            });
        }

        let backend = match raw.backend {
            None => BackendConfig::default(),
            Some(b) => {
                let kind = match b.kind {
                    Some(t) => t.parse()?,
                    None => BackendType::Vxlan,
                };
                let vni = b.vni.unwrap_or(DEFAULT_VNI);
                if vni > MAX_VNI {
                    return Err(ConfigError::Vni(vni));
                }
                // flannel treats Port 0 as "use the default".
                let port = match b.port {
                    None | Some(0) => DEFAULT_VXLAN_PORT,
                    Some(p) => p,
                };
                BackendConfig {
                    kind,
                    vni,
                    port,
                    mtu: b.mtu.filter(|m| *m != 0),
                    direct_routing: b.direct_routing.unwrap_or(false),
                    gbp: b.gbp.unwrap_or(false),
                }
            }
        };
        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
        })
    }

    /// Serializes in flannel's form (SubnetMin/Max as bare addresses).
    pub fn to_json(&self) -> String {
        let mut backend = Map::new();
        backend.insert("Type".into(), json!(self.backend.kind.as_str()));
        backend.insert("VNI".into(), json!(self.backend.vni));
        backend.insert("Port".into(), json!(self.backend.port));
        if let Some(mtu) = self.backend.mtu {
            backend.insert("MTU".into(), json!(mtu));
        }
        if self.backend.direct_routing {
            backend.insert("DirectRouting".into(), json!(true));
        }
        if self.backend.gbp {
            backend.insert("GBP".into(), json!(true));
        }
        json!({
            "Network": self.network.to_string(),
            "SubnetLen": self.subnet_len,
            "SubnetMin": self.subnet_min.network().to_string(),
            "SubnetMax": self.subnet_max.network().to_string(),
            "Backend": Value::Object(backend),
        })
        .to_string()
    }

    /// Number of subnets in `[subnet_min, subnet_max]`.
    pub fn subnet_count(&self) -> u32 {
        let span = u64::from(to_u32(self.subnet_max.network()))
            - u64::from(to_u32(self.subnet_min.network()));
        // At most 2^30 subnets (a /0 split into /30s), so this always fits.
        u32::try_from(span / subnet_size(self.subnet_len) + 1).unwrap_or(u32::MAX)
    }

    /// True if `subnet` is one of this config's allocatable subnets: right
    /// length, aligned, inside `[subnet_min, subnet_max]`.
    pub fn is_allocatable(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet == subnet.trunc()
            && subnet.network() >= self.subnet_min.network()
            && subnet.network() <= self.subnet_max.network()
    }

    /// True if `subnet` has the config's length and lies inside `network`
    /// (possibly outside `[subnet_min, subnet_max]`, e.g. after a config
    /// change); used to decide whether a lease is usable at all.
    pub fn is_member(&self, subnet: Ipv4Net) -> bool {
        subnet.prefix_len() == self.subnet_len
            && subnet == subnet.trunc()
            && self.network.contains(&subnet)
    }
}

fn addr_net(addr: u64, len: u8) -> Ipv4Net {
    // Callers pass addresses derived from an Ipv4Net, so both fit.
    let a = Ipv4Addr::from(u32::try_from(addr).unwrap_or(u32::MAX));
    Ipv4Net::new(a, len).unwrap_or_default()
}

/// SubnetMin/SubnetMax: flannel writes a bare address; also accept
/// `addr/len` when `len` matches SubnetLen.
fn parse_bound(
    field: &'static str,
    s: &str,
    network: Ipv4Net,
    subnet_len: u8,
) -> Result<Ipv4Net, ConfigError> {
    let s = s.trim();
    let addr = if let Some((a, len)) = s.split_once('/') {
        if len.parse::<u8>().ok() != Some(subnet_len) {
            return Err(ConfigError::Invalid {
                field,
                value: s.to_string(),
                expected: "an IPv4 address with the SubnetLen prefix",
            });
        }
        a
    } else {
        s
    };
    let addr: Ipv4Addr = addr.parse().map_err(|_| ConfigError::Invalid {
        field,
        value: s.to_string(),
        expected: "an IPv4 address",
    })?;
    if !network.contains(&addr) {
        return Err(ConfigError::OutsideNetwork {
            field,
            subnet: addr,
            network,
        });
    }
    let net = Ipv4Net::new(addr, subnet_len).map_err(|_| ConfigError::SubnetLen {
        subnet_len,
        network_len: network.prefix_len(),
        max: MAX_SUBNET_LEN,
    })?;
    if net.trunc() != net {
        return Err(ConfigError::Unaligned {
            field,
            addr,
            subnet_len,
        });
    }
    Ok(net)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn defaults_for_a_slash16() {
        let c = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(c.network, net("10.244.0.0/16"));
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, net("10.244.1.0/24"));
        assert_eq!(c.subnet_max, net("10.244.255.0/24"));
        assert_eq!(c.backend, BackendConfig::default());
        assert_eq!(c.backend.kind, BackendType::Vxlan);
        assert_eq!(c.backend.vni, 1);
        assert_eq!(c.backend.port, 8472);
        assert_eq!(c.subnet_count(), 255);
    }

    #[test]
    fn small_network_defaults_to_half() {
        let c = NetworkConfig::parse(br#"{"Network":"10.244.0.0/24"}"#).unwrap();
        assert_eq!(c.subnet_len, 25);
        assert_eq!(c.subnet_min, net("10.244.0.128/25"));
        assert_eq!(c.subnet_max, net("10.244.0.128/25"));
        assert_eq!(c.subnet_count(), 1);
    }

    #[test]
    fn full_flannel_config() {
        let c = NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetLen":26,"SubnetMin":"10.244.1.0","SubnetMax":"10.244.2.192",
                 "Backend":{"Type":"host-gw","VNI":7,"Port":4789,"MTU":1400,"DirectRouting":true,"GBP":true},
                 "EnableIPv6":false}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_len, 26);
        assert_eq!(c.subnet_min, net("10.244.1.0/26"));
        assert_eq!(c.subnet_max, net("10.244.2.192/26"));
        assert_eq!(c.subnet_count(), 8);
        assert_eq!(
            c.backend,
            BackendConfig {
                kind: BackendType::HostGw,
                vni: 7,
                port: 4789,
                mtu: Some(1400),
                direct_routing: true,
                gbp: true
            }
        );
    }

    #[test]
    fn to_json_round_trips() {
        for input in [
            r#"{"Network":"10.244.0.0/16"}"#.to_string(),
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.1.0.0","SubnetMax":"10.2.0.0","Backend":{"Type":"host-gw","MTU":1450,"GBP":true}}"#.to_string(),
        ] {
            let c = NetworkConfig::parse(input.as_bytes()).unwrap();
            let again = NetworkConfig::parse(c.to_json().as_bytes()).unwrap();
            assert_eq!(c, again, "{}", c.to_json());
        }
        let c = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap();
        let v: Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(v["SubnetMin"], "10.244.1.0");
        assert_eq!(v["Backend"]["Type"], "vxlan");
    }

    #[test]
    fn bound_with_prefix_is_accepted() {
        let c = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.5.0/24"}"#)
            .unwrap();
        assert_eq!(c.subnet_min, net("10.244.5.0/24"));
    }

    fn err(json: &str) -> ConfigError {
        NetworkConfig::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn validation_errors_name_the_field() {
        assert!(matches!(err("not json"), ConfigError::Json(_)));
        assert!(matches!(err("{}"), ConfigError::MissingNetwork));
        let e = err(r#"{"Network":"fd00::/64"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    field: "Network",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("Network"));
        let e = err(r#"{"Network":"10.244.1.0/16"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    field: "Network",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":"10.244.0.0/16","SubnetLen":16}"#);
        assert!(
            matches!(e, ConfigError::SubnetLen { subnet_len: 16, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("SubnetLen"));
        let e = err(r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#);
        assert!(
            matches!(e, ConfigError::SubnetLen { subnet_len: 31, .. }),
            "{e}"
        );
        let e = err(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#);
        assert!(
            matches!(
                e,
                ConfigError::OutsideNetwork {
                    field: "SubnetMin",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.7"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Unaligned {
                    field: "SubnetMax",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(r#"{"Network":"10.244.0.0/16","SubnetMax":"banana"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    field: "SubnetMax",
                    ..
                }
            ),
            "{e}"
        );
        let e =
            err(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#);
        assert!(matches!(e, ConfigError::MinAfterMax { .. }), "{e}");
        let e = err(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#);
        assert!(
            matches!(e, ConfigError::UnknownBackend(ref t) if t == "udp"),
            "{e}"
        );
        assert!(e.to_string().contains("Backend.Type"));
        let e = err(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#);
        assert!(matches!(e, ConfigError::Vni(16777216)), "{e}");
    }
}
