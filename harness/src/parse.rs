//! Pure parsers for what the harness reads back: subnet files, lease keys
//! and values, `etcdctl -w json` output, `ip -j route` output, CNI results.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use twill_contract::{NodeSubnet, SubnetEnv};

use crate::error::{HarnessError, Result};

fn perr(what: impl Into<String>, reason: impl ToString) -> HarnessError {
    HarnessError::Parse {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// The agent's subnet file (`TWILL_*` lines), parsed by the contract crate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetFile {
    /// `TWILL_NETWORK`, the whole cluster network.
    pub network: Ipv4Net,
    /// `TWILL_SUBNET`: gateway address with the node subnet's prefix length.
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ipmasq: bool,
    /// `TWILL_IPV6_SUBNET` of a dual-stack node: gateway address with the
    /// node's IPv6 subnet's prefix length.
    pub subnet6: Option<Ipv6Net>,
}

impl SubnetFile {
    /// The node's subnet with host bits cleared (`10.244.3.0/24`).
    pub fn node_subnet(&self) -> Ipv4Net {
        self.subnet.trunc()
    }

    /// The node's IPv6 subnet with host bits cleared, when dual-stack.
    pub fn node_subnet6(&self) -> Option<Ipv6Net> {
        self.subnet6.map(|s| s.trunc())
    }
}

/// Parses the subnet file as the plugin does, and also insists on the
/// cluster networks, which the agent always writes.
pub fn parse_subnet_file(text: &str) -> Result<SubnetFile> {
    let node = NodeSubnet::parse(text).map_err(|e| perr("subnet file", e))?;
    // Keeps the written gateway, not a derived one, so tests can check it.
    let env = SubnetEnv::try_from(node.clone()).map_err(|e| perr("subnet file", e))?;
    Ok(SubnetFile {
        network: env.network,
        subnet: node.gateway_net,
        mtu: node.mtu,
        ipmasq: node.ipmasq,
        subnet6: node.ipv6.map(|v6| v6.gateway_net),
    })
}

/// Backend part of a lease value.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BackendData {
    #[serde(rename = "VNI", default)]
    pub vni: Option<u32>,
    #[serde(rename = "VtepMAC", default)]
    pub vtep_mac: Option<String>,
}

/// A lease value as stored at `<prefix>/subnets/<a.b.c.d>-<len>`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Lease {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "BackendType", default)]
    pub backend_type: Option<String>,
    #[serde(rename = "BackendData", default)]
    pub backend_data: Option<BackendData>,
    /// The node's IPv6 underlay address (dual-stack with an IPv6 underlay,
    /// or IPv6-only).
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    /// The IPv6 VTEP (`twill6.<VNI>`) of a VXLAN lease over IPv6.
    #[serde(rename = "BackendV6Data", default)]
    pub backend_v6_data: Option<BackendData>,
}

impl Lease {
    /// The VTEP MAC, lowercased, when the backend recorded one.
    pub fn vtep_mac(&self) -> Option<String> {
        self.backend_data
            .as_ref()
            .and_then(|b| b.vtep_mac.as_ref())
            .map(|m| m.to_ascii_lowercase())
    }
}

/// Parses a lease value.
pub fn parse_lease(key: &str, value: &[u8]) -> Result<Lease> {
    serde_json::from_slice(value).map_err(|e| perr(format!("lease value of {key}"), e))
}

/// `.../subnets/10.244.3.0-24`, or dual-stack
/// `.../subnets/10.244.3.0-24&fd00:10:244:3::-64`, -> `10.244.3.0/24`.
pub fn parse_lease_key(key: &str) -> Result<Ipv4Net> {
    // The IPv6 half has no '/', so the last '/' ends the prefix.
    let last = key.rsplit('/').next().unwrap_or(key);
    twill_contract::parse_lease_key(last)
        .map(|(v4, _)| v4)
        .ok_or_else(|| {
            perr(
                format!("lease key {key}"),
                "not <a.b.c.d>-<len> or <a.b.c.d>-<len>&<ipv6>-<len>",
            )
        })
}

/// Decodes standard base64 (with or without padding), as `etcdctl -w json`
/// prints keys and values.
pub fn base64_decode(s: &str) -> Result<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = s.trim().trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in bytes {
        let v = val(c).ok_or_else(|| perr("base64", format!("bad character {:?}", c as char)))?;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct EtcdGet {
    #[serde(default)]
    kvs: Vec<EtcdKv>,
}

#[derive(Deserialize)]
struct EtcdKv {
    key: String,
    #[serde(default)]
    value: String,
}

/// Parses `etcdctl get -w json` output into (key, value) pairs.
pub fn parse_etcdctl_get(json: &str) -> Result<Vec<(String, Vec<u8>)>> {
    let g: EtcdGet = serde_json::from_str(json).map_err(|e| perr("etcdctl json output", e))?;
    g.kvs
        .into_iter()
        .map(|kv| {
            let key =
                String::from_utf8(base64_decode(&kv.key)?).map_err(|e| perr("etcd key", e))?;
            Ok((key, base64_decode(&kv.value)?))
        })
        .collect()
}

/// One IPv6 route as `ip -j -6 route show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route6 {
    pub dst: Ipv6Net,
    pub gateway: Option<Ipv6Addr>,
    pub dev: String,
    pub onlink: bool,
}

/// Parses `ip -j -6 route show ...` output (empty output = no routes).
pub fn parse_routes6(json: &str) -> Result<Vec<Route6>> {
    raw_routes(json)?
        .into_iter()
        .map(|r| {
            Ok(Route6 {
                dst: r.dst(128)?,
                onlink: r.onlink(),
                gateway: r.gateway,
                dev: r.dev,
            })
        })
        .collect()
}

/// One route as `ip -j route show` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub onlink: bool,
}

#[derive(Deserialize)]
struct RawRoute<A> {
    dst: String,
    #[serde(default = "Option::default")]
    gateway: Option<A>,
    #[serde(default)]
    dev: String,
    #[serde(default)]
    flags: Vec<String>,
}

impl<A> RawRoute<A> {
    /// The destination; `ip` prints host routes (`host_len`) without a
    /// prefix length.
    fn dst<N>(&self, host_len: u8) -> Result<N>
    where
        N: std::str::FromStr,
        N::Err: std::fmt::Display,
    {
        let d = &self.dst;
        if d.contains('/') {
            d.parse()
        } else {
            format!("{d}/{host_len}").parse()
        }
        .map_err(|e| perr(format!("route dst {d}"), e))
    }

    fn onlink(&self) -> bool {
        self.flags.iter().any(|f| f == "onlink")
    }
}

/// `ip -j route` output of either family, gateways as `A`.
fn raw_routes<A: serde::de::DeserializeOwned>(json: &str) -> Result<Vec<RawRoute<A>>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json).map_err(|e| perr("ip -j route", e))
}

/// Parses `ip -j route show ...` output (empty output = no routes).
pub fn parse_routes(json: &str) -> Result<Vec<Route>> {
    raw_routes::<Ipv4Addr>(json)?
        .into_iter()
        .map(|r| {
            Ok(Route {
                dst: r.dst(32)?,
                gateway: r.gateway,
                onlink: r.onlink(),
            })
        })
        .collect()
}

/// The first IPv4 address of a CNI ADD result (`ips[0].address`).
pub fn parse_cni_result_ip(json: &str) -> Result<Ipv4Net> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| perr("cni result", e))?;
    let addr = v
        .get("ips")
        .and_then(|ips| ips.get(0))
        .and_then(|ip| ip.get("address"))
        .and_then(|a| a.as_str())
        .ok_or_else(|| perr("cni result", format!("no ips[0].address in {json}")))?;
    addr.parse()
        .map_err(|e| perr(format!("cni result address {addr}"), e))
}

/// The IPv4 and the IPv6 address of a CNI ADD result (the first of each
/// family in `ips`), each `None` when the result has none.
pub fn parse_cni_result_ips(json: &str) -> Result<(Option<Ipv4Net>, Option<Ipv6Net>)> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| perr("cni result", e))?;
    let ips = v
        .get("ips")
        .and_then(|ips| ips.as_array())
        .ok_or_else(|| perr("cni result", format!("no ips in {json}")))?;
    let (mut v4, mut v6) = (None, None);
    for ip in ips {
        let addr = ip.get("address").and_then(|a| a.as_str()).ok_or_else(|| {
            perr(
                "cni result",
                format!("an ips entry without address in {json}"),
            )
        })?;
        let bad = |e: ipnet::AddrParseError| perr(format!("cni result address {addr}"), e);
        if addr.contains(':') {
            v6 = v6.or(Some(addr.parse().map_err(bad)?));
        } else {
            v4 = v4.or(Some(addr.parse().map_err(bad)?));
        }
    }
    if v4.is_none() && v6.is_none() {
        return Err(perr("cni result", format!("no address in {json}")));
    }
    Ok((v4, v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_file_round_trip() {
        let f = parse_subnet_file(
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=false\n",
        )
        .unwrap();
        assert_eq!(f.network, "10.244.0.0/16".parse::<Ipv4Net>().unwrap());
        assert_eq!(f.subnet.addr(), Ipv4Addr::new(10, 244, 3, 1));
        assert_eq!(f.node_subnet(), "10.244.3.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(f.mtu, 1450);
        assert!(!f.ipmasq);
        assert_eq!(f.node_subnet6(), None);
        let f = parse_subnet_file(
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=true\nTWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n",
        )
        .unwrap();
        assert!(f.ipmasq);
        assert_eq!(
            f.node_subnet6(),
            Some("fd00:10:244:3::/64".parse::<Ipv6Net>().unwrap())
        );
    }

    #[test]
    fn subnet_file_missing_key_is_named() {
        let e = parse_subnet_file("TWILL_NETWORK=10.244.0.0/16\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("TWILL_SUBNET"), "{e}");
    }

    #[test]
    fn lease_key_and_value() {
        assert_eq!(
            parse_lease_key("/twill/network/subnets/10.244.7.0-24").unwrap(),
            "10.244.7.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert!(parse_lease_key("/twill/network/subnets/garbage").is_err());
        assert_eq!(
            parse_lease_key("/twill/network/subnets/10.244.7.0-24&fd00:10:244:7::-64").unwrap(),
            "10.244.7.0/24".parse::<Ipv4Net>().unwrap()
        );
        let l = parse_lease(
            "k",
            br#"{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"AA:bb:cc:dd:ee:01"}}"#,
        )
        .unwrap();
        assert_eq!(l.public_ip, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(l.vtep_mac().as_deref(), Some("aa:bb:cc:dd:ee:01"));
        assert!(parse_lease("k", b"{not json").is_err());
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert!(base64_decode("Zm9v!").is_err());
    }

    #[test]
    fn etcdctl_json_is_decoded() {
        // key "/a", value "{}" as etcdctl 3.4 prints them.
        let out = r#"{"header":{"revision":5},"kvs":[{"key":"L2E=","create_revision":2,"mod_revision":2,"version":1,"value":"e30="}],"count":1}"#;
        assert_eq!(
            parse_etcdctl_get(out).unwrap(),
            vec![("/a".to_string(), b"{}".to_vec())]
        );
        assert!(parse_etcdctl_get(r#"{"header":{}}"#).unwrap().is_empty());
    }

    #[test]
    fn routes_from_ip_json() {
        let r = parse_routes(
            r#"[{"dst":"10.244.2.0/24","gateway":"10.244.2.0","flags":["onlink"]},{"dst":"10.244.9.9","flags":[]}]"#,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].dst, "10.244.2.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(r[0].gateway, Some(Ipv4Addr::new(10, 244, 2, 0)));
        assert!(r[0].onlink);
        assert_eq!(r[1].dst.prefix_len(), 32);
        assert!(!r[1].onlink);
        assert!(parse_routes("").unwrap().is_empty());
    }

    #[test]
    fn cni_result_address() {
        let ip = parse_cni_result_ip(
            r#"{"cniVersion":"1.1.0","ips":[{"address":"10.244.3.2/24","gateway":"10.244.3.1"}]}"#,
        )
        .unwrap();
        assert_eq!(ip.addr(), Ipv4Addr::new(10, 244, 3, 2));
        assert!(parse_cni_result_ip(r#"{"code":7,"msg":"x"}"#).is_err());
    }

    #[test]
    fn cni_result_addresses_of_each_family() {
        let (v4, v6) = parse_cni_result_ips(
            r#"{"ips":[{"address":"fd00:10:244:3::2/64","gateway":"fd00:10:244:3::1"}]}"#,
        )
        .unwrap();
        assert_eq!(v4, None);
        assert_eq!(v6, Some("fd00:10:244:3::2/64".parse().unwrap()));
        let (v4, v6) = parse_cni_result_ips(
            r#"{"ips":[{"address":"10.244.3.2/24"},{"address":"fd00:10:244:3::2/64"}]}"#,
        )
        .unwrap();
        assert_eq!(v4, Some("10.244.3.2/24".parse().unwrap()));
        assert!(v6.is_some());
        assert!(parse_cni_result_ips(r#"{"ips":[]}"#).is_err());
        assert!(parse_cni_result_ips(r#"{"code":7,"msg":"x"}"#).is_err());
        assert!(parse_cni_result_ips(r#"{"ips":[{"address":"fd00::zz/64"}]}"#).is_err());
    }

    #[test]
    fn ipv6_routes_from_ip_json() {
        let r = parse_routes6(
            r#"[{"dst":"fd00:10:244:2::/64","gateway":"fd00:10:244:2::","dev":"twill6.1","protocol":"77","flags":["onlink"]},{"dst":"fd00:10:244:3::/64","gateway":"2001:db8::3","dev":"eth0","flags":[]}]"#,
        )
        .unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].dst, "fd00:10:244:2::/64".parse::<Ipv6Net>().unwrap());
        assert_eq!(r[0].dev, "twill6.1");
        assert!(r[0].onlink);
        assert_eq!(r[1].gateway, Some("2001:db8::3".parse().unwrap()));
        assert!(parse_routes6("").unwrap().is_empty());
    }
}
