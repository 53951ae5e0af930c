//! Subnet leases: the store key of a subnet and the lease value, both in
//! flannel's exact format so twill and flannel can read each other's data.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Deserialize;
use serde_json::{json, Value};

use twill_contract::Mac;

// The key format is shared with the harness: it lives in the contract crate.
pub use twill_contract::lease_key::{
    lease_key_name, parse_lease_key, parse_subnet_key, subnet_key,
};

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
    #[error("lease field PublicIPv6 {0:?} is not an IPv6 address")]
    PublicIpv6(String),
    #[error("lease field BackendV6Data is malformed for backend type vxlan")]
    BadVxlanV6Data,
    #[error("lease field BackendV6Data.VtepMAC {0:?} is not a MAC address")]
    VtepMacV6(String),
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
    /// The node's IPv6 underlay address on dual-stack clusters.
    pub public_ipv6: Option<Ipv6Addr>,
    /// `"vxlan"`, `"host-gw"`, or whatever another flannel backend wrote.
    pub backend_type: String,
    /// Present for `vxlan` leases; other backends' data is not interpreted.
    pub backend_data: Option<VxlanData>,
    /// The IPv6 VXLAN device's data of a dual-stack `vxlan` lease.
    pub backend_v6_data: Option<VxlanData>,
    /// The name of the node holding the lease (twill's addition, absent in
    /// flannel's and older twill's values): two nodes that claim one public
    /// IP are told apart by it.
    pub node_name: Option<String>,
    /// A `wireguard` lease's public key (base64, `BackendData.PublicKey` as
    /// flannel's wireguard backend writes it); `None` for other backends.
    pub public_key: Option<String>,
}

/// A subnet lease as read from or written to a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub subnet: Ipv4Net,
    /// The node's IPv6 subnet on dual-stack clusters; part of the store key.
    pub ipv6_subnet: Option<Ipv6Net>,
    pub attrs: LeaseAttrs,
    /// The store's lease handle (etcd lease id); `None` for a key without
    /// expiry.
    pub lease_id: Option<i64>,
    /// Time left when the store last told us; `None` if not known (listing
    /// does not fetch per-lease TTLs).
    pub ttl_remaining: Option<Duration>,
}

impl Lease {
    /// An IPv6-only lease: no IPv4 subnet (flannel's empty `0.0.0.0/0`),
    /// an IPv6 one; its key is `0.0.0.0-0&<v6>-<len>`.
    pub fn is_ipv6_only(&self) -> bool {
        twill_contract::lease_key::is_ipv6_only(self.subnet, self.ipv6_subnet)
    }

    /// The store key suffix this lease lives under.
    pub fn key_name(&self) -> String {
        lease_key_name(self.subnet, self.ipv6_subnet)
    }
}

#[derive(Deserialize)]
struct RawAttrs {
    #[serde(rename = "PublicIP")]
    public_ip: String,
    #[serde(rename = "BackendType", default)]
    backend_type: String,
    #[serde(rename = "BackendData", default)]
    backend_data: Option<Value>,
    #[serde(rename = "PublicIPv6", default)]
    public_ipv6: Option<String>,
    #[serde(rename = "BackendV6Data", default)]
    backend_v6_data: Option<Value>,
    #[serde(rename = "NodeName", default)]
    node_name: Option<String>,
}

#[derive(Deserialize)]
struct RawWireguard {
    #[serde(rename = "PublicKey", default)]
    public_key: Option<String>,
}

#[derive(Deserialize)]
struct RawVxlan {
    #[serde(rename = "VNI", default)]
    vni: u32,
    #[serde(rename = "VtepMAC")]
    vtep_mac: String,
}

/// Normalizes a MAC to lowercase colon form, or `None` if it is not one;
/// the agent reads it back with the same [`Mac`].
pub fn normalize_mac(s: &str) -> Option<String> {
    Mac::parse(s).map(|m| m.to_string())
}

impl LeaseAttrs {
    /// flannel's form: `PublicIPv6` and `BackendData` are `null` when
    /// absent, `BackendV6Data` is left out when absent (as flannel does for
    /// IPv4-only leases).
    pub fn to_json(&self) -> String {
        let vxlan = |d: &Option<VxlanData>| match d {
            Some(d) => json!({"VNI": d.vni, "VtepMAC": d.vtep_mac}),
            None => Value::Null,
        };
        let ipv6 = match self.public_ipv6 {
            Some(a) => Value::String(a.to_string()),
            None => Value::Null,
        };
        let v6_data = match &self.backend_v6_data {
            Some(_) => format!(r#","BackendV6Data":{}"#, vxlan(&self.backend_v6_data)),
            None => String::new(),
        };
        // A wireguard lease's BackendData is its public key, as flannel's.
        let data = match &self.public_key {
            Some(k) if self.backend_data.is_none() => json!({ "PublicKey": k }),
            _ => vxlan(&self.backend_data),
        };
        let node = match &self.node_name {
            Some(n) => format!(r#","NodeName":{}"#, Value::String(n.clone())),
            None => String::new(),
        };
        // Built by hand so the field order matches flannel's output byte for
        // byte; flannel ignores the fields it does not know (NodeName).
        format!(
            r#"{{"PublicIP":{},"PublicIPv6":{},"BackendType":{},"BackendData":{}{}{}}}"#,
            Value::String(self.public_ip.to_string()),
            ipv6,
            Value::String(self.backend_type.clone()),
            data,
            v6_data,
            node
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
        let public_ipv6 = match raw.public_ipv6 {
            // An empty string is read as absent, like null.
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(s.parse().map_err(|_| LeaseError::PublicIpv6(s.clone()))?),
        };
        // A wireguard lease without a usable key still parses: the agents
        // skip it (and say why) rather than treat the entry as unusable.
        let public_key = match &raw.backend_data {
            Some(v) if raw.backend_type == "wireguard" => RawWireguard::deserialize(v)
                .ok()
                .and_then(|w| w.public_key)
                .filter(|k| !k.is_empty()),
            _ => None,
        };
        // Only a vxlan lease's IPv6 data is interpreted; absent or null is
        // an IPv4-only lease.
        let backend_v6_data = match raw.backend_v6_data.filter(|v| !v.is_null()) {
            Some(v) if raw.backend_type == "vxlan" => {
                let d: RawVxlan =
                    serde_json::from_value(v).map_err(|_| LeaseError::BadVxlanV6Data)?;
                let vtep_mac =
                    normalize_mac(&d.vtep_mac).ok_or(LeaseError::VtepMacV6(d.vtep_mac))?;
                Some(VxlanData {
                    vni: d.vni,
                    vtep_mac,
                })
            }
            _ => None,
        };
        // An IPv6-only node (PublicIP 0.0.0.0, flannel's empty address)
        // has no IPv4 VTEP: its vxlan lease carries BackendV6Data only.
        let v6_only = public_ip.is_unspecified() && backend_v6_data.is_some();
        let v4_data = raw.backend_data.filter(|v| !v.is_null());
        let backend_data = if raw.backend_type == "vxlan" && !(v6_only && v4_data.is_none()) {
            let v = v4_data.ok_or(LeaseError::MissingVxlanData)?;
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
            public_ipv6,
            backend_type: raw.backend_type,
            backend_data,
            backend_v6_data,
            node_name: raw.node_name.filter(|n| !n.is_empty()),
            public_key,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FLANNEL_SAMPLE: &str = r#"{"PublicIP":"192.0.2.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#;

    #[test]
    fn flannel_sample_parses_and_serializes_identically() {
        let a = LeaseAttrs::parse(FLANNEL_SAMPLE.as_bytes()).unwrap();
        assert_eq!(
            a,
            LeaseAttrs {
                public_ip: "192.0.2.3".parse().unwrap(),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: Some(VxlanData {
                    vni: 1,
                    vtep_mac: "aa:bb:cc:dd:ee:ff".into()
                }),
                backend_v6_data: None,
                node_name: None,
                public_key: None,
            }
        );
        assert_eq!(a.to_json(), FLANNEL_SAMPLE);
    }

    #[test]
    fn host_gw_round_trip_and_foreign_backend_data() {
        let a = LeaseAttrs {
            public_ip: "198.18.0.9".parse().unwrap(),
            public_ipv6: None,
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
            node_name: None,
            public_key: None,
        };
        assert!(a.to_json().contains(r#""BackendData":null"#));
        assert_eq!(LeaseAttrs::parse(a.to_json().as_bytes()).unwrap(), a);
        let w = LeaseAttrs::parse(
            br#"{"PublicIP":"192.0.2.7","BackendType":"wireguard","BackendData":{"PublicKey":"abc"}}"#,
        )
        .unwrap();
        assert_eq!(w.backend_type, "wireguard");
        assert_eq!(w.backend_data, None);
        assert_eq!(w.public_key.as_deref(), Some("abc"));
        assert!(w.to_json().contains(r#""BackendData":{"PublicKey":"abc"}"#));
        assert_eq!(LeaseAttrs::parse(w.to_json().as_bytes()).unwrap(), w);
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

    /// A dual-stack vxlan lease as flannel (>= v0.22, etcd registry) writes
    /// it: its Go `LeaseAttrs` field order, IPv6 VTEP data in
    /// `BackendV6Data` (its key is in the contract crate's tests).
    const FLANNEL_DUAL_SAMPLE: &str = r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"ce:35:60:a1:2f:07"}}"#;

    #[test]
    fn flannel_dual_stack_sample_parses_and_serializes_identically() {
        let a = LeaseAttrs::parse(FLANNEL_DUAL_SAMPLE.as_bytes()).unwrap();
        assert_eq!(
            a,
            LeaseAttrs {
                public_ip: "192.168.64.3".parse().unwrap(),
                public_ipv6: Some("fd00::3".parse().unwrap()),
                backend_type: "vxlan".into(),
                backend_data: Some(VxlanData {
                    vni: 1,
                    vtep_mac: "c6:d2:32:6f:8f:44".into()
                }),
                backend_v6_data: Some(VxlanData {
                    vni: 1,
                    vtep_mac: "ce:35:60:a1:2f:07".into()
                }),
                node_name: None,
                public_key: None,
            }
        );
        assert_eq!(a.to_json(), FLANNEL_DUAL_SAMPLE);
    }

    #[test]
    fn json_round_trip_with_and_without_ipv6() {
        let v4_only = LeaseAttrs::parse(FLANNEL_SAMPLE.as_bytes()).unwrap();
        assert!(!v4_only.to_json().contains("BackendV6Data"));
        assert_eq!(v4_only.to_json(), FLANNEL_SAMPLE);
        // Public IPv6 without IPv6 VTEP data (host-gw dual stack).
        let hg = LeaseAttrs {
            public_ip: "198.18.0.9".parse().unwrap(),
            public_ipv6: Some("2001:db8::9".parse().unwrap()),
            backend_type: "host-gw".into(),
            backend_data: None,
            backend_v6_data: None,
            node_name: None,
            public_key: None,
        };
        assert_eq!(
            hg.to_json(),
            r#"{"PublicIP":"198.18.0.9","PublicIPv6":"2001:db8::9","BackendType":"host-gw","BackendData":null}"#
        );
        assert_eq!(LeaseAttrs::parse(hg.to_json().as_bytes()).unwrap(), hg);
        let mut dual = v4_only.clone();
        dual.public_ipv6 = Some("fd00::1".parse().unwrap());
        dual.backend_v6_data = Some(VxlanData {
            vni: 1,
            vtep_mac: "02:00:00:00:00:06".into(),
        });
        assert_eq!(LeaseAttrs::parse(dual.to_json().as_bytes()).unwrap(), dual);
        // null / empty / absent IPv6 fields all mean "IPv4 only".
        for v in [
            r#"{"PublicIP":"192.0.2.3","PublicIPv6":"","BackendType":"host-gw","BackendV6Data":null}"#,
            r#"{"PublicIP":"192.0.2.3","BackendType":"host-gw"}"#,
        ] {
            let a = LeaseAttrs::parse(v.as_bytes()).unwrap();
            assert_eq!((a.public_ipv6, a.backend_v6_data), (None, None), "{v}");
        }
    }

    #[test]
    fn malformed_ipv6_values_are_errors() {
        assert!(matches!(
            LeaseAttrs::parse(br#"{"PublicIP":"192.0.2.3","PublicIPv6":"192.0.2.3","BackendType":"host-gw"}"#),
            Err(LeaseError::PublicIpv6(ref s)) if s == "192.0.2.3"
        ));
        let e = LeaseAttrs::parse(
            br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":{"VNI":1}}"#,
        )
        .unwrap_err();
        assert!(matches!(e, LeaseError::BadVxlanV6Data), "{e}");
        assert!(e.to_string().contains("BackendV6Data"));
        let e = LeaseAttrs::parse(
            br#"{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},"BackendV6Data":{"VNI":1,"VtepMAC":"nope"}}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, LeaseError::VtepMacV6(ref m) if m == "nope"),
            "{e}"
        );
    }
    /// An IPv6-only node's value as flannel writes it: the empty IPv4
    /// address, no IPv4 backend data, the IPv6 VTEP in BackendV6Data.
    const FLANNEL_V6_ONLY: &str = r#"{"PublicIP":"0.0.0.0","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":null,"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}"#;

    #[test]
    fn ipv6_only_value_parses_and_serializes_identically() {
        let a = LeaseAttrs::parse(FLANNEL_V6_ONLY.as_bytes()).unwrap();
        assert_eq!(a.public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(a.public_ipv6, Some("2001:db8::3".parse().unwrap()));
        assert_eq!(a.backend_data, None);
        assert_eq!(
            a.backend_v6_data.as_ref().unwrap().vtep_mac,
            "aa:bb:cc:dd:ee:01"
        );
        assert_eq!(a.to_json(), FLANNEL_V6_ONLY);
        // BackendData left out altogether reads the same.
        let no_v4 = FLANNEL_V6_ONLY.replace(r#""BackendData":null,"#, "");
        assert_eq!(LeaseAttrs::parse(no_v4.as_bytes()).unwrap(), a);
        let l = Lease {
            subnet: twill_contract::lease_key::V6_ONLY_V4,
            ipv6_subnet: Some("fd00:10:244:1::/64".parse().unwrap()),
            attrs: a,
            lease_id: None,
            ttl_remaining: None,
        };
        assert!(l.is_ipv6_only());
        assert_eq!(l.key_name(), "0.0.0.0-0&fd00:10:244:1::-64");
    }

    #[test]
    fn a_vxlan_lease_without_ipv4_data_must_be_ipv6_only() {
        // A node with an IPv4 address still needs BackendData.
        let v = FLANNEL_V6_ONLY.replace("0.0.0.0", "192.0.2.3");
        assert!(matches!(
            LeaseAttrs::parse(v.as_bytes()),
            Err(LeaseError::MissingVxlanData)
        ));
        // No VTEP at all is an error too.
        let v = FLANNEL_V6_ONLY.replace(
            r#","BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}"#,
            "",
        );
        assert!(matches!(
            LeaseAttrs::parse(v.as_bytes()),
            Err(LeaseError::MissingVxlanData)
        ));
    }

    #[test]
    fn node_name_is_written_only_when_known_and_read_back() {
        let mut a = LeaseAttrs::parse(FLANNEL_SAMPLE.as_bytes()).unwrap();
        assert_eq!(a.node_name, None);
        assert_eq!(a.to_json(), FLANNEL_SAMPLE, "flannel's bytes unchanged");
        a.node_name = Some("node-1".into());
        let json = a.to_json();
        assert!(json.ends_with(r#","NodeName":"node-1"}"#), "{json}");
        assert_eq!(LeaseAttrs::parse(json.as_bytes()).unwrap(), a);
        // An empty name is no name.
        let empty = json.replace("node-1", "");
        assert_eq!(LeaseAttrs::parse(empty.as_bytes()).unwrap().node_name, None);
    }
}
