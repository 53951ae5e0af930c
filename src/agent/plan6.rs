//! The plan of an IPv6-only cluster's node (`EnableIPv4: false`): step 2 of
//! docs/design.md's "IPv6-only clusters". No IPv4 VTEP; in vxlan mode one
//! tunnel over the IPv6 underlay (`twill6.<VNI>`, MTU underlay − 70); in
//! host-gw mode none. The lease says `PublicIP` `0.0.0.0` (flannel's form
//! for a node without IPv4), `PublicIPv6`, and `BackendV6Data` only.
//!
//! The agent plans with it when the config is IPv6-only
//! (`agent::v6only::make_plan`).

use std::net::{Ipv4Addr, Ipv6Addr};

use subnet_allocator::{BackendType, Lease, LeaseAttrs, NetworkConfig, VxlanData};
use twill_contract::Ipv6OnlySubnetEnv;

use super::plan::{tunnel_mtu, vxlan_spec, Plan, PlanError, VXLAN6_OVERHEAD};
use crate::kernel::Underlay;
use crate::reconcile::{Mac, Mode};

/// IPv6's minimum link MTU: what pod packets must be allowed at least.
const IPV6_MIN_MTU: u32 = 1280;

/// Why an IPv6-only node cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ipv6OnlyPlanError {
    #[error(transparent)]
    Mtu(#[from] PlanError),
    /// The WireGuard backend has no IPv6-only form yet.
    #[error("Backend.Type wireguard is not supported in an IPv6-only cluster (EnableIPv4: false)")]
    Wireguard,
}

impl Plan {
    /// Plans the data path of an IPv6-only cluster's node for `cfg` on
    /// `underlay`, whose global IPv6 address is `public_ipv6`.
    pub fn ipv6_only(
        cfg: &NetworkConfig,
        underlay: &Underlay,
        public_ipv6: Ipv6Addr,
    ) -> Result<Plan, Ipv6OnlyPlanError> {
        let backend = &cfg.backend;
        let (mode, vxlan6, pod_mtu) = match backend.kind {
            BackendType::Wireguard => return Err(Ipv6OnlyPlanError::Wireguard),
            BackendType::HostGw => (
                Mode::HostGw,
                None,
                tunnel_mtu(backend.mtu, underlay, 0, IPV6_MIN_MTU, "pods")?,
            ),
            BackendType::Vxlan => {
                let mtu = tunnel_mtu(
                    backend.mtu,
                    underlay,
                    VXLAN6_OVERHEAD,
                    IPV6_MIN_MTU,
                    "VXLAN over IPv6",
                )?;
                let spec = vxlan_spec(
                    cfg,
                    underlay,
                    format!("twill6.{}", backend.vni),
                    public_ipv6.into(),
                    mtu,
                    Mac::for_vtep6(public_ipv6, backend.vni),
                );
                (
                    Mode::Vxlan {
                        direct_routing: backend.direct_routing,
                    },
                    Some(spec),
                    mtu,
                )
            }
        };
        let attrs = LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(public_ipv6),
            backend_type: backend.kind.as_str().into(),
            backend_data: None,
            backend_v6_data: vxlan6.as_ref().map(|v| VxlanData {
                vni: backend.vni,
                vtep_mac: v.mac.to_string(),
            }),
            node_name: None,
            public_key: None,
        };
        Ok(Plan {
            mode,
            vxlan: None,
            vxlan6,
            pod_mtu,
            attrs,
            underlay_net: underlay.net,
            underlay_index: underlay.index,
            wireguard: None,
        })
    }

    /// What an IPv6-only node's subnet file says for `lease`; `None` when
    /// the config or the lease is not IPv6-only.
    pub fn subnet_env6(
        &self,
        cfg: &NetworkConfig,
        ip_masq: bool,
        lease: &Lease,
    ) -> Option<Ipv6OnlySubnetEnv> {
        let network6 = cfg.ipv6.as_ref().filter(|_| cfg.is_ipv6_only())?.network;
        let subnet6 = lease.ipv6_subnet.filter(|_| lease.is_ipv6_only())?;
        Some(Ipv6OnlySubnetEnv {
            network6,
            subnet6,
            mtu: self.pod_mtu,
            ip_masq,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    /// eth0 (index 7) without an IPv4 address.
    fn underlay(mtu: u32) -> Underlay {
        Underlay {
            ip: Ipv4Addr::UNSPECIFIED,
            net: "0.0.0.0/32".parse().unwrap(),
            ..crate::agent::plan::tests::underlay(mtu)
        }
    }

    fn config(backend: &str) -> NetworkConfig {
        let json = format!(
            r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{backend}}}"#
        );
        NetworkConfig::parse(json.as_bytes()).unwrap()
    }

    fn ip6() -> Ipv6Addr {
        "2001:db8::10".parse().unwrap()
    }

    #[test]
    fn vxlan_has_only_the_ipv6_tunnel_at_underlay_minus_70() {
        let cfg = config(r#"{"Type":"vxlan"}"#);
        let plan = Plan::ipv6_only(&cfg, &underlay(1500), ip6()).unwrap();
        assert_eq!(
            plan.mode,
            Mode::Vxlan {
                direct_routing: false
            }
        );
        assert_eq!(plan.vxlan, None);
        let v6 = plan.vxlan6.as_ref().unwrap();
        assert_eq!(
            (v6.name.as_str(), v6.vni, v6.port, v6.mtu, v6.underlay_index),
            ("twill6.1", 1, 8472, 1430, 7)
        );
        assert_eq!(v6.local, IpAddr::V6(ip6()));
        assert_eq!(v6.mac, Mac::for_vtep6(ip6(), 1));
        assert_eq!(plan.pod_mtu, 1430);
    }

    #[test]
    fn the_lease_has_flannels_ipv6_only_attrs() {
        let cfg = config(r#"{"Type":"vxlan","VNI":4}"#);
        let plan = Plan::ipv6_only(&cfg, &underlay(1500), ip6()).unwrap();
        let a = &plan.attrs;
        assert_eq!(a.public_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(a.public_ipv6, Some(ip6()));
        assert_eq!(a.backend_type, "vxlan");
        assert_eq!(a.backend_data, None);
        let d = a.backend_v6_data.as_ref().unwrap();
        assert_eq!(d.vni, 4);
        assert_eq!(d.vtep_mac, Mac::for_vtep6(ip6(), 4).to_string());
        // What goes to etcd: flannel's field names, PublicIP 0.0.0.0.
        let json: serde_json::Value = serde_json::from_str(&a.to_json()).unwrap();
        assert_eq!(json["PublicIP"], "0.0.0.0");
        assert_eq!(json["PublicIPv6"], "2001:db8::10");
        assert!(json["BackendData"].is_null(), "{json}");
        assert_eq!(json["BackendV6Data"]["VNI"], 4);
    }

    #[test]
    fn direct_routing_keeps_the_tunnel_for_nodes_off_the_segment() {
        let cfg = config(r#"{"Type":"vxlan","DirectRouting":true}"#);
        let plan = Plan::ipv6_only(&cfg, &underlay(1500), ip6()).unwrap();
        assert_eq!(
            plan.mode,
            Mode::Vxlan {
                direct_routing: true
            }
        );
        assert!(plan.vxlan6.is_some());
    }

    #[test]
    fn host_gw_has_no_tunnel_and_the_full_mtu() {
        let cfg = config(r#"{"Type":"host-gw"}"#);
        let plan = Plan::ipv6_only(&cfg, &underlay(1500), ip6()).unwrap();
        assert_eq!(plan.mode, Mode::HostGw);
        assert_eq!((plan.vxlan.is_none(), plan.vxlan6.is_none()), (true, true));
        assert_eq!(plan.pod_mtu, 1500);
        assert_eq!(plan.attrs.public_ipv6, Some(ip6()));
        assert_eq!(plan.attrs.backend_v6_data, None);
    }

    #[test]
    fn below_ipv6s_minimum_is_refused_naming_the_underlay() {
        let cfg = config(r#"{"Type":"vxlan"}"#);
        // 1340 - 70 = 1270 < 1280.
        let err = Plan::ipv6_only(&cfg, &underlay(1340), ip6()).unwrap_err();
        let Ipv6OnlyPlanError::Mtu(e) = &err else {
            panic!("{err}")
        };
        assert_eq!((e.iface.as_str(), e.mtu, e.floor), ("eth0", 1340, 1280));
        assert!(err.to_string().contains("eth0"), "{err}");
        assert!(Plan::ipv6_only(&cfg, &underlay(1350), ip6()).is_ok());
        // host-gw: the underlay itself below 1280.
        let hgw = config(r#"{"Type":"host-gw"}"#);
        assert!(Plan::ipv6_only(&hgw, &underlay(1279), ip6()).is_err());
        // A configured MTU wins, as in every mode.
        let cfg = config(r#"{"Type":"vxlan","MTU":1300}"#);
        let plan = Plan::ipv6_only(&cfg, &underlay(9000), ip6()).unwrap();
        assert_eq!((plan.pod_mtu, plan.vxlan6.unwrap().mtu), (1300, 1300));
    }

    #[test]
    fn the_subnet_file_has_ipv6_keys_only_and_is_read_back_as_a_preference() {
        let cfg = config(r#"{"Type":"vxlan"}"#);
        let plan = Plan::ipv6_only(&cfg, &underlay(1500), ip6()).unwrap();
        let lease = Lease {
            subnet: "0.0.0.0/0".parse().unwrap(),
            ipv6_subnet: Some("fd00:10:244:3::/64".parse().unwrap()),
            attrs: plan.attrs.clone(),
            lease_id: Some(1),
            ttl_remaining: None,
        };
        let env = plan.subnet_env6(&cfg, true, &lease).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("subnet.env");
        crate::subnet_file::write_ipv6_only(&path, &env).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "TWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\nTWILL_MTU=1430\nTWILL_IPMASQ=true\n"
        );
        let p = crate::subnet_file::read_previous_preferred(&path);
        assert_eq!((p.v4, p.v6), (None, lease.ipv6_subnet));
        // Not an IPv6-only lease or config: no such file.
        let mut dual = lease.clone();
        dual.subnet = "10.244.3.0/24".parse().unwrap();
        assert_eq!(plan.subnet_env6(&cfg, true, &dual), None);
        let v4 = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(plan.subnet_env6(&v4, true, &lease), None);
        // An IPv4 node's file gives its IPv4 subnet; garbage, nothing.
        let p = crate::subnet_file::parse_previous_preferred(
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.7.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=false\n",
        );
        assert_eq!((p.v4, p.v6), (Some("10.244.7.0/24".parse().unwrap()), None));
        let p = crate::subnet_file::parse_previous_preferred("junk");
        assert_eq!((p.v4, p.v6), (None, None));
    }

    #[test]
    fn wireguard_is_refused_naming_the_field() {
        let cfg = config(r#"{"Type":"wireguard"}"#);
        let err = Plan::ipv6_only(&cfg, &underlay(1500), ip6()).unwrap_err();
        assert_eq!(err, Ipv6OnlyPlanError::Wireguard);
        assert!(err.to_string().contains("Backend.Type"), "{err}");
    }
}
