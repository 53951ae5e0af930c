//! Builds the CNI success result of ADD in the format of the caller's
//! `cniVersion` (0.3.x/0.4.0 carry `ips[].version`; 1.1.0 adds `mtu`).
//! A dual-stack pod lists its IPv4 address first, then its IPv6 one; an
//! IPv6-only pod lists its IPv6 address alone.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Map, Value};

use crate::config::Dns;

/// What ADD set up, in plain data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub host_ifname: String,
    pub host_mac: String,
    pub pod_ifname: String,
    pub pod_mac: String,
    pub sandbox: String,
    pub mtu: u32,
    /// The IPv4 address; `None` on an IPv6-only node.
    pub ipv4: Option<Attached4>,
    /// The IPv6 address of a dual-stack or IPv6-only pod.
    pub ipv6: Option<Attached6>,
}

/// One family's address of an attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family<N, A> {
    /// Pod address with the node subnet's prefix length.
    pub address: N,
    /// The node's gateway, the pod's default route.
    pub gateway: A,
}

pub type Attached4 = Family<Ipv4Net, Ipv4Addr>;
pub type Attached6 = Family<Ipv6Net, Ipv6Addr>;

/// Formats a hardware address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_legacy(version: &str) -> bool {
    version.starts_with("0.")
}

/// The ADD result. A `prev` result (chained plugins) is kept and ours is
/// appended, with interface indexes shifted past the previous interfaces.
pub fn build(version: &str, a: &Attached, dns: &Dns, prev: Option<&Value>) -> Value {
    let prev = prev.and_then(Value::as_object);
    let list = |key: &str| -> Vec<Value> {
        prev.and_then(|p| p.get(key))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut interfaces = list("interfaces");
    let mut ips = list("ips");
    let mut routes = list("routes");
    let base = interfaces.len();

    let mut host = json!({"name": a.host_ifname, "mac": a.host_mac});
    let mut pod = json!({"name": a.pod_ifname, "mac": a.pod_mac, "sandbox": a.sandbox});
    if version == "1.1.0" {
        host["mtu"] = json!(a.mtu);
        pod["mtu"] = json!(a.mtu);
    }
    interfaces.push(host);
    interfaces.push(pod);

    let families = [
        a.ipv4.map(|f| {
            (
                f.address.to_string(),
                f.gateway.to_string(),
                "4",
                "0.0.0.0/0",
            )
        }),
        a.ipv6
            .map(|f| (f.address.to_string(), f.gateway.to_string(), "6", "::/0")),
    ];
    for (address, gateway, family, default) in families.into_iter().flatten() {
        let mut ip = json!({
            "address": address,
            "gateway": gateway,
            "interface": base + 1,
        });
        if is_legacy(version) {
            ip["version"] = json!(family);
        }
        ips.push(ip);
        routes.push(json!({"dst": default, "gw": gateway}));
    }

    let mut out = Map::new();
    out.insert("cniVersion".into(), json!(version));
    out.insert("interfaces".into(), Value::Array(interfaces));
    out.insert("ips".into(), Value::Array(ips));
    out.insert("routes".into(), Value::Array(routes));
    let prev_dns = prev.and_then(|p| p.get("dns")).filter(|d| !d.is_null());
    if !dns.is_empty() {
        out.insert("dns".into(), json!(dns));
    } else if let Some(d) = prev_dns {
        out.insert("dns".into(), d.clone());
    } else {
        out.insert("dns".into(), json!({}));
    }
    Value::Object(out)
}

/// The VERSION answer.
pub fn version_info(version: &str) -> Value {
    json!({
        "cniVersion": version,
        "supportedVersions": crate::config::SUPPORTED_VERSIONS,
    })
}

/// Pulls our pod addresses out of a previous result: the `ips` entries whose
/// interface is named `ifname` in a `sandbox`, sorted (IPv4 first). `None`
/// when the result has no such interface; unparsable addresses are skipped.
pub fn prev_addresses(prev: &Value, ifname: &str) -> Option<Vec<IpNet>> {
    let ifaces = prev.get("interfaces")?.as_array()?;
    let idx = ifaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname) && i.get("sandbox").is_some()
    })?;
    let mut out: Vec<IpNet> = prev
        .get("ips")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|ip| ip.get("interface").and_then(Value::as_u64) == Some(idx as u64))
        .filter_map(|ip| ip.get("address")?.as_str()?.parse().ok())
        .collect();
    out.sort();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Attached {
        Attached {
            host_ifname: "veth0123456789a".into(),
            host_mac: "aa:bb:cc:dd:ee:01".into(),
            pod_ifname: "eth0".into(),
            pod_mac: "aa:bb:cc:dd:ee:02".into(),
            sandbox: "/run/netns/p1".into(),
            mtu: 1450,
            ipv4: Some(Family {
                address: "10.244.3.5/24".parse().unwrap(),
                gateway: "10.244.3.1".parse().unwrap(),
            }),
            ipv6: None,
        }
    }

    fn dual() -> Attached {
        Attached {
            ipv6: Some(Attached6 {
                address: "fd00:10:244:3::5/64".parse().unwrap(),
                gateway: "fd00:10:244:3::1".parse().unwrap(),
            }),
            ..sample()
        }
    }

    fn v6_only() -> Attached {
        Attached {
            ipv4: None,
            ..dual()
        }
    }

    #[test]
    fn ipv6_only_lists_its_ipv6_address_alone_in_every_version() {
        for v in crate::config::SUPPORTED_VERSIONS {
            let r = build(v, &v6_only(), &Dns::default(), None);
            let ips = r["ips"].as_array().unwrap();
            assert_eq!(ips.len(), 1, "{v}: {r}");
            assert_eq!(ips[0]["address"], "fd00:10:244:3::5/64");
            assert_eq!(ips[0]["gateway"], "fd00:10:244:3::1");
            assert_eq!(ips[0]["interface"], 1);
            assert_eq!(ips[0].get("version").is_some(), v.starts_with("0."), "{v}");
            if v.starts_with("0.") {
                assert_eq!(ips[0]["version"], "6");
            }
            assert_eq!(
                r["routes"],
                json!([{"dst": "::/0", "gw": "fd00:10:244:3::1"}])
            );
            assert_eq!(
                prev_addresses(&r, "eth0").unwrap(),
                vec!["fd00:10:244:3::5/64".parse::<IpNet>().unwrap()]
            );
        }
    }

    #[test]
    fn dual_stack_lists_ipv4_then_ipv6() {
        let r = build("1.1.0", &dual(), &Dns::default(), None);
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2);
        assert_eq!(ips[0]["address"], "10.244.3.5/24");
        assert_eq!(ips[1]["address"], "fd00:10:244:3::5/64");
        assert_eq!(ips[1]["gateway"], "fd00:10:244:3::1");
        assert_eq!(ips[1]["interface"], 1);
        assert!(ips[1].get("version").is_none());
        let routes = r["routes"].as_array().unwrap();
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0]["dst"], "0.0.0.0/0");
        assert_eq!(routes[1], json!({"dst": "::/0", "gw": "fd00:10:244:3::1"}));
        assert_eq!(
            prev_addresses(&r, "eth0").unwrap(),
            vec![
                "10.244.3.5/24".parse::<IpNet>().unwrap(),
                "fd00:10:244:3::5/64".parse().unwrap()
            ]
        );
    }

    #[test]
    fn dual_stack_legacy_versions_tag_each_family() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let r = build(v, &dual(), &Dns::default(), None);
            assert_eq!(r["ips"][0]["version"], "4", "{v}");
            assert_eq!(r["ips"][1]["version"], "6", "{v}");
            assert_eq!(r["routes"][1]["dst"], "::/0", "{v}");
        }
        // An IPv4-only pod has no IPv6 entries at all.
        let r = build("0.4.0", &sample(), &Dns::default(), None);
        assert_eq!(r["ips"].as_array().unwrap().len(), 1);
        assert_eq!(r["routes"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn dual_stack_after_prev_result_shifts_both_entries() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "lo", "sandbox": "/run/netns/p1"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}],
        });
        let r = build("1.1.0", &dual(), &Dns::default(), Some(&prev));
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["ips"][2]["interface"], 2);
        assert_eq!(r["ips"][2]["address"], "fd00:10:244:3::5/64");
        assert_eq!(prev_addresses(&r, "eth0").unwrap().len(), 2);
        assert_eq!(
            prev_addresses(&r, "lo").unwrap(),
            vec!["127.0.0.1/8".parse::<IpNet>().unwrap()]
        );
    }

    #[test]
    fn result_1_1_0() {
        let dns = Dns {
            nameservers: vec!["10.96.0.10".into()],
            ..Dns::default()
        };
        let r = build("1.1.0", &sample(), &dns, None);
        assert_eq!(r["cniVersion"], "1.1.0");
        assert_eq!(r["interfaces"][0]["name"], "veth0123456789a");
        assert_eq!(r["interfaces"][0]["mac"], "aa:bb:cc:dd:ee:01");
        assert!(r["interfaces"][0].get("sandbox").is_none());
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/p1");
        assert_eq!(r["interfaces"][1]["mtu"], 1450);
        assert_eq!(r["ips"][0]["address"], "10.244.3.5/24");
        assert_eq!(r["ips"][0]["gateway"], "10.244.3.1");
        assert_eq!(r["ips"][0]["interface"], 1);
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["routes"][0]["gw"], "10.244.3.1");
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
    }

    #[test]
    fn result_1_0_0_has_no_mtu() {
        let r = build("1.0.0", &sample(), &Dns::default(), None);
        assert!(r["interfaces"][1].get("mtu").is_none());
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["dns"], json!({}));
    }

    #[test]
    fn legacy_results_carry_ip_version() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let r = build(v, &sample(), &Dns::default(), None);
            assert_eq!(r["cniVersion"], v);
            assert_eq!(r["ips"][0]["version"], "4");
            assert!(r["interfaces"][1].get("mtu").is_none());
        }
    }

    #[test]
    fn prev_result_is_kept_and_indexes_shift() {
        let prev = json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "lo", "sandbox": "/run/netns/p1"}],
            "ips": [{"address": "127.0.0.1/8", "interface": 0}],
            "dns": {"nameservers": ["1.1.1.1"]}
        });
        let r = build("1.1.0", &sample(), &Dns::default(), Some(&prev));
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["dns"]["nameservers"][0], "1.1.1.1");
        assert_eq!(
            prev_addresses(&r, "eth0").unwrap(),
            vec!["10.244.3.5/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(prev_addresses(&r, "eth1"), None);
    }

    #[test]
    fn version_lists_all() {
        let v = version_info("0.4.0");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(
            v["supportedVersions"],
            json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
        );
        assert_eq!(format_mac(&[0x0a, 0x58, 0, 1, 2, 255]), "0a:58:00:01:02:ff");
    }
}
