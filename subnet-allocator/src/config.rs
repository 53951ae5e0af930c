//! The cluster network config (`<prefix>/config`): flannel's JSON form,
//! parsed into validated, defaulted plain data.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use serde_json::{json, Map, Value};

mod fold;
mod ipv6;
use fold::fold_keys;
use ipv6::parse_ipv6;

/// Default VXLAN network identifier (flannel's).
pub const DEFAULT_VNI: u32 = 1;
/// Default VXLAN UDP port (the Linux kernel's, also flannel's).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Default WireGuard UDP port (WireGuard's and flannel's).
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
/// Subnets longer than this leave too few pod addresses to be useful.
pub const MAX_SUBNET_LEN: u8 = 30;
/// Default IPv6 per-node subnet length (flannel's): SLAAC-sized.
pub const DEFAULT_IPV6_SUBNET_LEN: u8 = 64;
/// Longest IPv6 per-node subnet: room for a gateway and one pod, like
/// flannel's limit.
pub const MAX_IPV6_SUBNET_LEN: u8 = 126;
const MAX_VNI: u32 = (1 << 24) - 1;

/// Errors of [`NetworkConfig::parse`]; each names the offending field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("network config is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Valid JSON, but a field of the wrong type (`"SubnetLen":"24"`).
    #[error("network config field {field}: {reason}")]
    FieldType { field: String, reason: String },
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
        "network config field Backend.Type {0:?} is unknown (expected \"vxlan\", \"host-gw\" or \"wireguard\")"
    )]
    UnknownBackend(String),
    #[error("network config field Backend.ListenPort 0 is not a UDP port (1-65535; leave it out for {DEFAULT_WIREGUARD_PORT})")]
    ListenPort,
    #[error("network config field Backend.VNI {0} does not fit in 24 bits")]
    Vni(u32),
    #[error("network config fields EnableIPv4 and EnableIPv6 are both false: no address family is enabled")]
    NoFamily,
    #[error("network config field {0} is given twice (JSON keys are matched case-insensitively, like flannel)")]
    DuplicateField(String),
    #[error("network config field IPv6Network is missing (required when EnableIPv6 is true)")]
    MissingIpv6Network,
    #[error("network config field IPv6SubnetLen {subnet_len} must be longer than the IPv6Network prefix /{network_len} and at most /{max}")]
    Ipv6SubnetLen {
        subnet_len: u8,
        network_len: u8,
        max: u8,
    },
    #[error("network config field {field} {addr} is not inside IPv6Network {network}")]
    Ipv6OutsideNetwork {
        field: &'static str,
        addr: Ipv6Addr,
        network: Ipv6Net,
    },
    #[error("network config field {field} {addr} is not aligned to IPv6SubnetLen /{subnet_len}")]
    Ipv6Unaligned {
        field: &'static str,
        addr: Ipv6Addr,
        subnet_len: u8,
    },
    #[error("network config IPv6SubnetMin {min} is after IPv6SubnetMax {max}")]
    Ipv6MinAfterMax { min: Ipv6Addr, max: Ipv6Addr },
    #[error("network config fields IPv6Network {network} / IPv6SubnetLen {subnet_len}: the IPv6 range holds {available} subnets but the IPv4 range [SubnetMin, SubnetMax] has {needed}; every IPv4 subnet needs its IPv6 partner")]
    Ipv6TooSmall {
        network: Ipv6Net,
        subnet_len: u8,
        available: u128,
        needed: u32,
    },
}

/// The data-path backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendType {
    #[default]
    Vxlan,
    HostGw,
    /// Encrypted: a WireGuard tunnel to every other node.
    Wireguard,
}

impl BackendType {
    /// The name used in JSON (config `Backend.Type`, lease `BackendType`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendType::Vxlan => "vxlan",
            BackendType::HostGw => "host-gw",
            BackendType::Wireguard => "wireguard",
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
            "wireguard" => Ok(BackendType::Wireguard),
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
    /// `wireguard`: the UDP port every node's tunnel listens on.
    pub listen_port: u16,
    /// `wireguard`: seconds between keepalives to each peer (0: none).
    pub persistent_keepalive: u16,
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
            listen_port: DEFAULT_WIREGUARD_PORT,
            persistent_keepalive: 0,
        }
    }
}

/// The IPv6 half of a dual-stack config (flannel's `IPv6*` fields).
/// `subnet_min`/`subnet_max` carry `subnet_len` as their prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipv6Config {
    pub network: Ipv6Net,
    pub subnet_len: u8,
    pub subnet_min: Ipv6Net,
    pub subnet_max: Ipv6Net,
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
    /// `Some` iff `EnableIPv6` is true: the cluster is dual-stack, or
    /// IPv6-only when `enable_ipv4` is false.
    pub ipv6: Option<Ipv6Config>,
    /// `EnableIPv4`. When false (an IPv6-only cluster; `ipv6` is then
    /// `Some`), `network`, `subnet_min` and `subnet_max` are the unspecified
    /// `0.0.0.0/0` and `subnet_len` is 0, flannel's empty IPv4 network:
    /// they hold no subnet and must not be used, see
    /// [`NetworkConfig::is_ipv6_only`].
    pub enable_ipv4: bool,
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
    #[serde(rename = "EnableIPv4")]
    enable_ipv4: Option<bool>,
    #[serde(rename = "EnableIPv6")]
    enable_ipv6: Option<bool>,
    #[serde(rename = "IPv6Network")]
    ipv6_network: Option<String>,
    #[serde(rename = "IPv6SubnetLen")]
    ipv6_subnet_len: Option<u8>,
    #[serde(rename = "IPv6SubnetMin")]
    ipv6_subnet_min: Option<String>,
    #[serde(rename = "IPv6SubnetMax")]
    ipv6_subnet_max: Option<String>,
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
    #[serde(rename = "ListenPort")]
    listen_port: Option<u16>,
    #[serde(rename = "PersistentKeepaliveInterval")]
    persistent_keepalive: Option<u16>,
}

/// The raw config; a type error names its field by its JSON path
/// (`SubnetLen`, `Backend.VNI`) rather than by line and column.
fn parse_raw(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
    // Syntax errors first, so that they keep serde's position.
    let value: Value = serde_json::from_slice(bytes)?;
    let value = fold_keys(value)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        let reason = e.into_inner().to_string();
        if field == "." || field.starts_with('[') {
            // The document itself is the wrong type (an array, a string):
            // serde's reason would name an internal struct.
            ConfigError::FieldType {
                field: "(top level)".into(),
                reason: "must be a JSON object".into(),
            }
        } else {
            ConfigError::FieldType { field, reason }
        }
    })
}

/// The `Backend` section, defaulted and checked.
fn parse_backend(raw: Option<RawBackend>) -> Result<BackendConfig, ConfigError> {
    let Some(b) = raw else {
        return Ok(BackendConfig::default());
    };
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
    let listen_port = match b.listen_port {
        None => DEFAULT_WIREGUARD_PORT,
        Some(0) => return Err(ConfigError::ListenPort),
        Some(p) => p,
    };
    Ok(BackendConfig {
        kind,
        vni,
        port,
        mtu: b.mtu.filter(|m| *m != 0),
        direct_routing: b.direct_routing.unwrap_or(false),
        gbp: b.gbp.unwrap_or(false),
        listen_port,
        persistent_keepalive: b.persistent_keepalive.unwrap_or(0),
    })
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
        let raw = parse_raw(bytes)?;
        if raw.enable_ipv4 == Some(false) {
            return Self::parse_ipv6_only(raw);
        }
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

        let backend = parse_backend(raw.backend)?;
        let mut cfg = NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            backend,
            ipv6: None,
            enable_ipv4: true,
        };
        if raw.enable_ipv6.unwrap_or(false) {
            cfg.ipv6 = Some(parse_ipv6(
                raw.ipv6_network,
                raw.ipv6_subnet_len,
                raw.ipv6_subnet_min,
                raw.ipv6_subnet_max,
                cfg.subnet_count(),
            )?);
        }
        Ok(cfg)
    }

    /// `EnableIPv4: false`: an IPv6-only cluster. flannel ignores the IPv4
    /// fields then, and so does this; `IPv6Network` is required.
    fn parse_ipv6_only(raw: RawConfig) -> Result<Self, ConfigError> {
        if !raw.enable_ipv6.unwrap_or(false) {
            return Err(ConfigError::NoFamily);
        }
        let backend = parse_backend(raw.backend)?;
        let ipv6 = parse_ipv6(
            raw.ipv6_network,
            raw.ipv6_subnet_len,
            raw.ipv6_subnet_min,
            raw.ipv6_subnet_max,
            1,
        )?;
        Ok(NetworkConfig {
            network: Ipv4Net::default(),
            subnet_len: 0,
            subnet_min: Ipv4Net::default(),
            subnet_max: Ipv4Net::default(),
            backend,
            ipv6: Some(ipv6),
            enable_ipv4: false,
        })
    }

    /// An IPv6-only cluster (`EnableIPv4: false`): leases hold an IPv6
    /// subnet only, under flannel's key `0.0.0.0-0&<v6>-<len>`.
    pub fn is_ipv6_only(&self) -> bool {
        !self.enable_ipv4
    }

    /// The IPv6 subnet paired with the IPv4 subnet `v4`: the one with the
    /// same index in `[IPv6SubnetMin..]` as `v4` has in `[SubnetMin..]`.
    /// Being a pure function of the config, distinct IPv4 subnets always get
    /// distinct IPv6 subnets and every node computes the same pairs, so the
    /// etcd key (which holds both) stays unique per IPv4 subnet. `None` when
    /// IPv6 is off or `v4` is not allocatable.
    pub fn ipv6_subnet_for(&self, v4: Ipv4Net) -> Option<Ipv6Net> {
        let v6 = self.ipv6.as_ref()?;
        if !self.is_allocatable(v4) {
            return None;
        }
        let idx = (u64::from(to_u32(v4.network())) - u64::from(to_u32(self.subnet_min.network())))
            / subnet_size(self.subnet_len);
        v6.nth_subnet(u128::from(idx))
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
        if self.backend.kind == BackendType::Wireguard {
            backend.insert("ListenPort".into(), json!(self.backend.listen_port));
            backend.insert(
                "PersistentKeepaliveInterval".into(),
                json!(self.backend.persistent_keepalive),
            );
        }
        if self.is_ipv6_only() {
            let mut out = json!({"EnableIPv4": false, "Backend": Value::Object(backend)});
            if let Value::Object(m) = &mut out {
                self.ipv6_json(m);
            }
            return out.to_string();
        }
        let mut out = json!({
            "Network": self.network.to_string(),
            "SubnetLen": self.subnet_len,
            "SubnetMin": self.subnet_min.network().to_string(),
            "SubnetMax": self.subnet_max.network().to_string(),
            "Backend": Value::Object(backend),
        });
        if let Value::Object(m) = &mut out {
            self.ipv6_json(m);
        }
        out.to_string()
    }

    /// The `EnableIPv6` and `IPv6*` fields, when IPv6 is on.
    fn ipv6_json(&self, m: &mut Map<String, Value>) {
        if let Some(v6) = &self.ipv6 {
            m.insert("EnableIPv6".into(), json!(true));
            m.insert("IPv6Network".into(), json!(v6.network.to_string()));
            m.insert("IPv6SubnetLen".into(), json!(v6.subnet_len));
            m.insert(
                "IPv6SubnetMin".into(),
                json!(v6.subnet_min.network().to_string()),
            );
            m.insert(
                "IPv6SubnetMax".into(),
                json!(v6.subnet_max.network().to_string()),
            );
        }
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
        self.enable_ipv4
            && subnet.prefix_len() == self.subnet_len
            && subnet == subnet.trunc()
            && subnet.network() >= self.subnet_min.network()
            && subnet.network() <= self.subnet_max.network()
    }

    /// True if `subnet` has the config's length and lies inside `network`
    /// (possibly outside `[subnet_min, subnet_max]`, e.g. after a config
    /// change); used to decide whether a lease is usable at all.
    pub fn is_member(&self, subnet: Ipv4Net) -> bool {
        self.enable_ipv4
            && subnet.prefix_len() == self.subnet_len
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
                gbp: true,
                listen_port: DEFAULT_WIREGUARD_PORT,
                persistent_keepalive: 0,
            }
        );
    }

    #[test]
    fn wireguard_backend_with_flannels_field_names() {
        let c = NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":51999,"PersistentKeepaliveInterval":25}}"#,
        )
        .unwrap();
        assert_eq!(c.backend.kind, BackendType::Wireguard);
        assert_eq!(c.backend.listen_port, 51999);
        assert_eq!(c.backend.persistent_keepalive, 25);
        assert_eq!(NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c);
        let d =
            NetworkConfig::parse(br#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#)
                .unwrap();
        assert_eq!(
            (d.backend.listen_port, d.backend.persistent_keepalive),
            (51820, 0)
        );
        // Bad values are refused naming the field.
        for (bad, field) in [
            (r#"{"ListenPort":0}"#, "Backend.ListenPort"),
            (r#"{"ListenPort":70000}"#, "Backend.ListenPort"),
            (r#"{"ListenPort":"x"}"#, "Backend.ListenPort"),
            (
                r#"{"PersistentKeepaliveInterval":-1}"#,
                "Backend.PersistentKeepaliveInterval",
            ),
        ] {
            let json = format!(
                r#"{{"Network":"10.244.0.0/16","Backend":{{"Type":"wireguard",{}}}}}"#,
                &bad[1..bad.len() - 1]
            );
            let err = NetworkConfig::parse(json.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{bad}: {err}");
        }
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
        // Type errors name the field, not a line and column.
        for (json, field) in [
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#,
                "SubnetLen",
            ),
            (r#"{"Network":10}"#, "Network"),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}"#,
                "Backend.VNI",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Port":70000}}"#,
                "Backend.Port",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":"yes"}"#,
                "EnableIPv6",
            ),
        ] {
            let e = err(json);
            let msg = e.to_string();
            assert!(
                matches!(&e, ConfigError::FieldType { field: f, .. } if f == field),
                "{json}: {msg}"
            );
            assert!(msg.contains(&format!("field {field}:")), "{msg}");
            assert!(!msg.contains("line 1"), "{msg}");
        }
        for json in ["[1]", "\"x\"", "7"] {
            let msg = err(json).to_string();
            assert!(msg.contains("(top level): must be a JSON object"), "{msg}");
        }
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

    const DUAL: &str =
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#;

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_off_by_default_and_when_disabled() {
        for j in [
            r#"{"Network":"10.244.0.0/16"}"#,
            r#"{"Network":"10.244.0.0/16","EnableIPv4":true,"EnableIPv6":false,"IPv6Network":"fd00::/48"}"#,
        ] {
            let c = NetworkConfig::parse(j.as_bytes()).unwrap();
            assert_eq!(c.ipv6, None, "{j}");
            assert_eq!(c.ipv6_subnet_for(net("10.244.1.0/24")), None);
        }
    }

    #[test]
    fn ipv6_defaults() {
        let c = NetworkConfig::parse(DUAL.as_bytes()).unwrap();
        let v6 = c.ipv6.clone().unwrap();
        assert_eq!(v6.network, net6("fd00:10:244::/48"));
        assert_eq!(v6.subnet_len, 64);
        // Like flannel: the first subnet is skipped, the last one is used.
        assert_eq!(v6.subnet_min, net6("fd00:10:244:1::/64"));
        assert_eq!(v6.subnet_max, net6("fd00:10:244:ffff::/64"));
        assert_eq!(v6.subnet_count(), 65535);
    }

    #[test]
    fn ipv6_explicit_fields() {
        let c = NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.11.0",
                 "EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":120,
                 "IPv6SubnetMin":"fd00:10:244::200","IPv6SubnetMax":"fd00:10:244::300/120"}"#,
        )
        .unwrap();
        let v6 = c.ipv6.clone().unwrap();
        assert_eq!(v6.subnet_len, 120);
        assert_eq!(v6.subnet_min, net6("fd00:10:244::200/120"));
        assert_eq!(v6.subnet_max, net6("fd00:10:244::300/120"));
        assert_eq!(v6.subnet_count(), 2);
        assert_eq!(
            c.ipv6_subnet_for(net("10.244.10.0/24")),
            Some(net6("fd00:10:244::200/120"))
        );
        assert_eq!(
            c.ipv6_subnet_for(net("10.244.11.0/24")),
            Some(net6("fd00:10:244::300/120"))
        );
    }

    #[test]
    fn ipv6_to_json_round_trips() {
        let c = NetworkConfig::parse(DUAL.as_bytes()).unwrap();
        let j = c.to_json();
        let v: Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["EnableIPv6"], true);
        assert_eq!(v["IPv6Network"], "fd00:10:244::/48");
        assert_eq!(v["IPv6SubnetLen"], 64);
        assert_eq!(v["IPv6SubnetMin"], "fd00:10:244:1::");
        assert_eq!(NetworkConfig::parse(j.as_bytes()).unwrap(), c);
        // An IPv4-only config writes no IPv6 field at all.
        let c4 = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert!(!c4.to_json().contains("IPv6"), "{}", c4.to_json());
    }

    #[test]
    fn pairing_rule_first_last_and_distinct() {
        let c = NetworkConfig::parse(DUAL.as_bytes()).unwrap();
        assert_eq!(
            c.ipv6_subnet_for(net("10.244.1.0/24")),
            Some(net6("fd00:10:244:1::/64"))
        );
        assert_eq!(
            c.ipv6_subnet_for(net("10.244.2.0/24")),
            Some(net6("fd00:10:244:2::/64"))
        );
        assert_eq!(
            c.ipv6_subnet_for(net("10.244.255.0/24")),
            Some(net6("fd00:10:244:ff::/64"))
        );
        // Not allocatable: below SubnetMin, wrong length, unaligned, outside.
        for s in ["10.244.0.0/24", "10.244.1.0/25", "10.245.1.0/24"] {
            assert_eq!(c.ipv6_subnet_for(net(s)), None, "{s}");
        }
        assert_eq!(
            c.ipv6_subnet_for(Ipv4Net::new("10.244.1.5".parse().unwrap(), 24).unwrap()),
            None
        );
        // Every allocatable IPv4 subnet gets its own IPv6 subnet, inside the
        // IPv6 range and of the configured length.
        let v6 = c.ipv6.clone().unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 1..=255u8 {
            let s = c.ipv6_subnet_for(net(&format!("10.244.{i}.0/24"))).unwrap();
            assert_eq!(s.prefix_len(), 64);
            assert!(
                s.network() >= v6.subnet_min.network() && s.network() <= v6.subnet_max.network()
            );
            assert!(seen.insert(s), "{s} paired twice");
        }
    }

    #[test]
    fn pairing_uses_the_exact_ipv6_range_end() {
        // 4 IPv4 subnets, exactly 4 IPv6 subnets: the last pairs with the last.
        let c = NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.4.0",
                 "EnableIPv6":true,"IPv6Network":"fd00::/62","IPv6SubnetMin":"fd00::"}"#,
        )
        .unwrap();
        assert_eq!(c.ipv6.as_ref().unwrap().subnet_count(), 4);
        assert_eq!(
            c.ipv6_subnet_for(net("10.244.1.0/24")),
            Some(net6("fd00::/64"))
        );
        assert_eq!(
            c.ipv6_subnet_for(net("10.244.4.0/24")),
            Some(net6("fd00:0:0:3::/64"))
        );
    }

    /// The issue's config, and flannel's spellings of it (Go matches JSON
    /// keys case-insensitively; k3s writes `EnableIPv4` and friends, other
    /// tools `enableIPv4`), and a Network flannel ignores when IPv4 is off.
    #[test]
    fn ipv6_only_is_accepted_in_every_flannel_spelling() {
        let want = NetworkConfig::parse(
            br#"{"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/48", "IPv6SubnetLen": 64}"#,
        )
        .unwrap();
        assert!(want.is_ipv6_only());
        assert!(!want.enable_ipv4);
        let v6 = want.ipv6.clone().unwrap();
        assert_eq!(v6.network, "fd00:10:244::/48".parse::<Ipv6Net>().unwrap());
        assert_eq!(v6.subnet_len, 64);
        assert_eq!(v6.subnet_min, net6("fd00:10:244:1::/64"));
        assert_eq!(v6.subnet_max, net6("fd00:10:244:ffff::/64"));
        assert_eq!(want.network, Ipv4Net::default());
        assert!(!want.is_allocatable(Ipv4Net::default()));
        assert!(!want.is_member(Ipv4Net::default()));
        assert_eq!(want.ipv6_subnet_for(Ipv4Net::default()), None);
        for spelling in [
            r#"{"enableIPv4":false,"enableIPv6":true,"ipv6Network":"fd00:10:244::/48","ipv6SubnetLen":64}"#,
            r#"{"ENABLEIPV4":false,"enableipv6":true,"IPv6network":"fd00:10:244::/48"}"#,
            r#"{"Network":"10.244.0.0/16","EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
        ] {
            assert_eq!(
                NetworkConfig::parse(spelling.as_bytes()).unwrap(),
                want,
                "{spelling}"
            );
        }
        // The serialized form parses back to the same config.
        let json = want.to_json();
        assert!(json.contains(r#""EnableIPv4":false"#), "{json}");
        assert!(!json.contains(r#""SubnetMin""#), "{json}");
        assert_eq!(NetworkConfig::parse(json.as_bytes()).unwrap(), want);
        // Backend lower-case too.
        let c = NetworkConfig::parse(
            br#"{"enableIPv4":false,"enableIPv6":true,"ipv6Network":"fd00::/48","backend":{"type":"host-gw"}}"#,
        )
        .unwrap();
        assert_eq!(c.backend.kind, BackendType::HostGw);
    }

    #[test]
    fn ipv6_errors_name_the_field() {
        let e = err(r#"{"EnableIPv4":false,"IPv6Network":"fd00::/48"}"#);
        assert!(matches!(e, ConfigError::NoFamily), "{e}");
        assert!(e.to_string().contains("EnableIPv4 and EnableIPv6"), "{e}");
        let e = err(r#"{"EnableIPv4":false,"EnableIPv6":true}"#);
        assert!(matches!(e, ConfigError::MissingIpv6Network), "{e}");
        let e = err(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetLen":40}"#,
        );
        assert!(e.to_string().contains("IPv6SubnetLen 40"), "{e}");
        let e = err(r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"10.0.0.0/8"}"#);
        assert!(e.to_string().contains("field IPv6Network"), "{e}");
        let e = err(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/48","Backend":{"Type":"udp"}}"#,
        );
        assert!(e.to_string().contains("Backend.Type"), "{e}");

        let e = err(r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#);
        assert!(matches!(e, ConfigError::MissingIpv6Network), "{e}");
        assert!(e.to_string().contains("IPv6Network"));

        for bad in ["10.0.0.0/8", "banana", "fd00::1/48"] {
            let e = err(&format!(
                r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"{bad}"}}"#
            ));
            assert!(
                matches!(
                    e,
                    ConfigError::Invalid {
                        field: "IPv6Network",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
            assert!(e.to_string().contains("IPv6Network"));
        }

        for (network, len) in [("fd00::/48", 48), ("fd00::/48", 127), ("fd00::/48", 40)] {
            let e = err(&format!(
                r#"{{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"{network}","IPv6SubnetLen":{len}}}"#
            ));
            assert!(
                matches!(e, ConfigError::Ipv6SubnetLen { subnet_len, .. } if subnet_len == len),
                "{e}"
            );
            assert!(e.to_string().contains("IPv6SubnetLen"));
        }
        // The default /64 does not fit in a /64 network.
        let e = err(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/64"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Ipv6SubnetLen {
                    subnet_len: 64,
                    network_len: 64,
                    ..
                }
            ),
            "{e}"
        );

        let e = err(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::"}"#,
        );
        assert!(
            matches!(
                e,
                ConfigError::Ipv6OutsideNetwork {
                    field: "IPv6SubnetMin",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("IPv6SubnetMin"));
        let e = err(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00:0:0:5::1"}"#,
        );
        assert!(
            matches!(
                e,
                ConfigError::Ipv6Unaligned {
                    field: "IPv6SubnetMax",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("IPv6SubnetMax"));
        let e = err(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00::/60"}"#,
        );
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    field: "IPv6SubnetMax",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"nope"}"#,
        );
        assert!(
            matches!(
                e,
                ConfigError::Invalid {
                    field: "IPv6SubnetMin",
                    ..
                }
            ),
            "{e}"
        );
        let e = err(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd00:0:0:9::","IPv6SubnetMax":"fd00:0:0:3::"}"#,
        );
        assert!(matches!(e, ConfigError::Ipv6MinAfterMax { .. }), "{e}");
        assert!(e.to_string().contains("IPv6SubnetMin"));

        // 255 IPv4 subnets but only 3 IPv6 subnets (a /62 minus the first).
        let e = err(r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/62"}"#);
        assert!(
            matches!(
                e,
                ConfigError::Ipv6TooSmall {
                    available: 3,
                    needed: 255,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("IPv6SubnetLen") && e.to_string().contains("IPv6Network"));
        // ...and enough with a smaller IPv4 range.
        NetworkConfig::parse(
            br#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.0","EnableIPv6":true,"IPv6Network":"fd00::/62"}"#,
        )
        .unwrap();
    }
}
