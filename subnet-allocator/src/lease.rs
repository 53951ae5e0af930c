//! Subnet leases: the store key of a subnet and the lease value, both in
//! flannel's exact format so twill and flannel can read each other's data.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{json, Value};

/// Errors of [`LeaseAttrs::parse`].
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease value is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("lease field PublicIP {0:?} is not an IPv4 address")]
    PublicIp(String),
    #[error("lease field BackendData is missing or malformed for backend type vxlan")]
    MissingVxlanData,
    #[error("lease field BackendData.VtepMAC {0:?} is not a MAC address")]
    VtepMac(String),
}

/// VXLAN backend data of a lease: what other nodes need to reach this
/// node's VTEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanData {
    pub vni: u32,
    /// Lowercase `aa:bb:cc:dd:ee:ff`.
    pub vtep_mac: String,
}

/// The value stored under a subnet key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseAttrs {
    pub public_ip: Ipv4Addr,
    /// `"vxlan"`, `"host-gw"`, or whatever another flannel backend wrote.
    pub backend_type: String,
    /// Present for `vxlan` leases; other backends' data is not interpreted.
    pub backend_data: Option<VxlanData>,
}

/// A subnet lease as read from or written to a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    pub attrs: LeaseAttrs,
    /// The store's lease handle (etcd lease id); `None` for a key without
    /// expiry.
    pub lease_id: Option<i64>,
    /// Time left when the store last told us; `None` if not known (listing
    /// does not fetch per-lease TTLs).
    pub ttl_remaining: Option<Duration>,
}

/// Store key suffix for a subnet: `10.244.3.0-24`.
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// Inverse of [`subnet_key`]. Accepts flannel's dual-stack form
/// `10.244.3.0-24&fd00::-64` (keeps the IPv4 part). Rejects keys with host
/// bits set, since no allocator writes those.
pub fn parse_subnet_key(s: &str) -> Option<Ipv4Net> {
    let v4 = s.split('&').next()?;
    let (addr, len) = v4.split_once('-')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let net = Ipv4Net::new(addr, len.parse().ok()?).ok()?;
    (net == net.trunc()).then_some(net)
}

#[derive(Deserialize)]
struct RawAttrs {
    #[serde(rename = "PublicIP")]
    public_ip: String,
    #[serde(rename = "BackendType", default)]
    backend_type: String,
    #[serde(rename = "BackendData", default)]
    backend_data: Option<Value>,
}

#[derive(Deserialize)]
struct RawVxlan {
    #[serde(rename = "VNI", default)]
    vni: u32,
    #[serde(rename = "VtepMAC")]
    vtep_mac: String,
}

/// Normalizes a MAC to lowercase colon form, or `None` if it is not one.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6
        || !parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(s.to_ascii_lowercase())
}

impl LeaseAttrs {
    /// flannel's form, `PublicIPv6` always `null`, `BackendData` `null` when
    /// absent.
    pub fn to_json(&self) -> String {
        let data = match &self.backend_data {
            Some(d) => json!({"VNI": d.vni, "VtepMAC": d.vtep_mac}),
            None => Value::Null,
        };
        // Built by hand so the field order matches flannel's output byte for byte.
        format!(
            r#"{{"PublicIP":{},"PublicIPv6":null,"BackendType":{},"BackendData":{}}}"#,
            Value::String(self.public_ip.to_string()),
            Value::String(self.backend_type.clone()),
            data
        )
    }

    /// Parses a lease value. A `vxlan` lease must carry valid VXLAN data;
    /// other backends' data is ignored.
    pub fn parse(bytes: &[u8]) -> Result<Self, LeaseError> {
        let raw: RawAttrs = serde_json::from_slice(bytes)?;
        let public_ip: Ipv4Addr = raw
            .public_ip
            .parse()
            .map_err(|_| LeaseError::PublicIp(raw.public_ip.clone()))?;
        let backend_data = if raw.backend_type == "vxlan" {
            let v = raw
                .backend_data
                .filter(|v| !v.is_null())
                .ok_or(LeaseError::MissingVxlanData)?;
            let d: RawVxlan =
                serde_json::from_value(v).map_err(|_| LeaseError::MissingVxlanData)?;
            let vtep_mac = normalize_mac(&d.vtep_mac).ok_or(LeaseError::VtepMac(d.vtep_mac))?;
            Some(VxlanData {
                vni: d.vni,
                vtep_mac,
            })
        } else {
            None
        };
        Ok(LeaseAttrs {
            public_ip,
            backend_type: raw.backend_type,
            backend_data,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FLANNEL_SAMPLE: &str = r#"{"PublicIP":"192.0.2.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#;

    #[test]
    fn key_round_trip() {
        for s in [
            "10.244.3.0/24",
            "10.244.0.128/25",
            "0.0.0.0/0",
            "192.0.2.4/30",
        ] {
            let n: Ipv4Net = s.parse().unwrap();
            assert_eq!(parse_subnet_key(&subnet_key(n)), Some(n), "{s}");
        }
        assert_eq!(
            subnet_key("10.244.3.0/24".parse().unwrap()),
            "10.244.3.0-24"
        );
    }

    #[test]
    fn key_dual_stack_and_garbage() {
        assert_eq!(
            parse_subnet_key("10.244.3.0-24&fd00::-64"),
            Some("10.244.3.0/24".parse().unwrap())
        );
        for bad in [
            "",
            "10.244.3.0",
            "10.244.3.0-",
            "10.244.3.0-33",
            "10.244.3.5-24",
            "x-24",
            "10.244.3.0-+4",
            "10.244.3.0/24",
            "fd00::-64",
        ] {
            assert_eq!(parse_subnet_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn flannel_sample_parses_and_serializes_identically() {
        let a = LeaseAttrs::parse(FLANNEL_SAMPLE.as_bytes()).unwrap();
        assert_eq!(
            a,
            LeaseAttrs {
                public_ip: "192.0.2.3".parse().unwrap(),
                backend_type: "vxlan".into(),
                backend_data: Some(VxlanData {
                    vni: 1,
                    vtep_mac: "aa:bb:cc:dd:ee:ff".into()
                }),
            }
        );
        assert_eq!(a.to_json(), FLANNEL_SAMPLE);
    }

    #[test]
    fn host_gw_round_trip_and_foreign_backend_data() {
        let a = LeaseAttrs {
            public_ip: "198.18.0.9".parse().unwrap(),
            backend_type: "host-gw".into(),
            backend_data: None,
        };
        assert!(a.to_json().contains(r#""BackendData":null"#));
        assert_eq!(LeaseAttrs::parse(a.to_json().as_bytes()).unwrap(), a);
        let w = LeaseAttrs::parse(
            br#"{"PublicIP":"192.0.2.7","BackendType":"wireguard","BackendData":{"PublicKey":"abc"}}"#,
        )
        .unwrap();
        assert_eq!(w.backend_type, "wireguard");
        assert_eq!(w.backend_data, None);
    }

    #[test]
    fn mac_is_normalized() {
        let a = LeaseAttrs::parse(
            br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"AA:BB:CC:DD:EE:0F"}}"#,
        )
        .unwrap();
        assert_eq!(a.backend_data.unwrap().vtep_mac, "aa:bb:cc:dd:ee:0f");
    }

    #[test]
    fn malformed_values_are_errors() {
        assert!(matches!(LeaseAttrs::parse(b"{"), Err(LeaseError::Json(_))));
        assert!(matches!(LeaseAttrs::parse(b"{}"), Err(LeaseError::Json(_))));
        assert!(matches!(
            LeaseAttrs::parse(br#"{"PublicIP":"fd00::1","BackendType":"host-gw"}"#),
            Err(LeaseError::PublicIp(_))
        ));
        assert!(matches!(
            LeaseAttrs::parse(
                br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":null}"#
            ),
            Err(LeaseError::MissingVxlanData)
        ));
        assert!(matches!(
            LeaseAttrs::parse(br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"zz"}}"#),
            Err(LeaseError::VtepMac(_))
        ));
    }
}
