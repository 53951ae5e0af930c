//! The IPv6 half of a dual-stack network config: its fields validated and
//! defaulted, and the arithmetic of its subnet range.

use std::net::Ipv6Addr;
use std::str::FromStr;

use ipnet::Ipv6Net;

use super::{ConfigError, Ipv6Config, DEFAULT_IPV6_SUBNET_LEN, MAX_IPV6_SUBNET_LEN};

impl Ipv6Config {
    /// Number of subnets in `[subnet_min, subnet_max]`.
    pub fn subnet_count(&self) -> u128 {
        let span =
            u128::from(self.subnet_min.network()).abs_diff(u128::from(self.subnet_max.network()));
        (span >> (128 - u32::from(self.subnet_len))).saturating_add(1)
    }

    /// The `idx`-th subnet from `subnet_min`, if inside `subnet_max`.
    pub fn nth_subnet(&self, idx: u128) -> Option<Ipv6Net> {
        if idx >= self.subnet_count() {
            return None;
        }
        // subnet_len >= 1, so the shift is < 128.
        let start = u128::from(self.subnet_min.network())
            .checked_add(idx.checked_mul(1u128 << (128 - u32::from(self.subnet_len)))?)?;
        Ipv6Net::new(Ipv6Addr::from(start), self.subnet_len).ok()
    }
}

/// Validates and defaults the IPv6 fields; `v4_count` is how many IPv4
/// subnets need a partner.
pub(super) fn parse_ipv6(
    network: Option<String>,
    subnet_len: Option<u8>,
    min: Option<String>,
    max: Option<String>,
    v4_count: u32,
) -> Result<Ipv6Config, ConfigError> {
    let net_str = network.ok_or(ConfigError::MissingIpv6Network)?;
    let network = Ipv6Net::from_str(net_str.trim()).map_err(|_| ConfigError::Invalid {
        field: "IPv6Network",
        value: net_str.clone(),
        expected: "an IPv6 network like fd00:10:244::/48",
    })?;
    if network != network.trunc() {
        return Err(ConfigError::Invalid {
            field: "IPv6Network",
            value: net_str,
            expected: "a network address (host bits must be zero)",
        });
    }
    let network_len = network.prefix_len();
    let subnet_len = subnet_len.unwrap_or(DEFAULT_IPV6_SUBNET_LEN);
    if subnet_len <= network_len || subnet_len > MAX_IPV6_SUBNET_LEN {
        return Err(ConfigError::Ipv6SubnetLen {
            subnet_len,
            network_len,
            max: MAX_IPV6_SUBNET_LEN,
        });
    }
    let shift = 128 - u32::from(subnet_len);
    let size = 1u128 << shift;
    let net_start = u128::from(network.network());
    let net_end = u128::from(network.broadcast());
    // Like flannel: skip the first subnet, whose all-zero address would
    // clash with the network address.
    let v6net = |a: u128| Ipv6Net::new(Ipv6Addr::from(a), subnet_len).unwrap_or_default();
    let subnet_min = match min {
        Some(s) => parse_ipv6_bound("IPv6SubnetMin", &s, network, subnet_len)?,
        None => v6net(net_start + size),
    };
    let subnet_max = match max {
        Some(s) => parse_ipv6_bound("IPv6SubnetMax", &s, network, subnet_len)?,
        None => v6net(net_end - (size - 1)),
    };
    if subnet_min.network() > subnet_max.network() {
        return Err(ConfigError::Ipv6MinAfterMax {
            min: subnet_min.network(),
            max: subnet_max.network(),
        });
    }
    let cfg = Ipv6Config {
        network,
        subnet_len,
        subnet_min,
        subnet_max,
    };
    if cfg.subnet_count() < u128::from(v4_count) {
        return Err(ConfigError::Ipv6TooSmall {
            network,
            subnet_len,
            available: cfg.subnet_count(),
            needed: v4_count,
        });
    }
    Ok(cfg)
}

/// IPv6SubnetMin/IPv6SubnetMax: a bare address, or `addr/len` with `len`
/// equal to IPv6SubnetLen.
fn parse_ipv6_bound(
    field: &'static str,
    s: &str,
    network: Ipv6Net,
    subnet_len: u8,
) -> Result<Ipv6Net, ConfigError> {
    let s = s.trim();
    let addr = match s.split_once('/') {
        Some((a, len)) if len.parse::<u8>().ok() == Some(subnet_len) => a,
        Some(_) => {
            return Err(ConfigError::Invalid {
                field,
                value: s.to_string(),
                expected: "an IPv6 address with the IPv6SubnetLen prefix",
            })
        }
        None => s,
    };
    let addr: Ipv6Addr = addr.parse().map_err(|_| ConfigError::Invalid {
        field,
        value: s.to_string(),
        expected: "an IPv6 address",
    })?;
    if !network.contains(&addr) {
        return Err(ConfigError::Ipv6OutsideNetwork {
            field,
            addr,
            network,
        });
    }
    let net = Ipv6Net::new(addr, subnet_len).map_err(|_| ConfigError::Ipv6SubnetLen {
        subnet_len,
        network_len: network.prefix_len(),
        max: MAX_IPV6_SUBNET_LEN,
    })?;
    if net.trunc() != net {
        return Err(ConfigError::Ipv6Unaligned {
            field,
            addr,
            subnet_len,
        });
    }
    Ok(net)
}
