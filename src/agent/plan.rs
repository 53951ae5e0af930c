//! The pure plan step: from the network config and the underlay, what this
//! node's data path is (mode, tunnel devices, pod MTU) and what its lease
//! says about it; from the plan and a lease, the devices to keep.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use subnet_allocator::{BackendType, Lease, LeaseAttrs, NetworkConfig, VxlanData};

use crate::datapath::DeviceSpec;
use crate::kernel::{Underlay, VxlanSpec};
use crate::reconcile::{Mac, Mode};
use crate::subnet_file::{gateway6_of, gateway_of, SubnetEnv};
use crate::wireguard::{WgSpec, WIREGUARD6_OVERHEAD, WIREGUARD_OVERHEAD};

/// VXLAN over an IPv4 underlay costs 50 bytes per packet.
pub const VXLAN_OVERHEAD: u32 = 50;
/// VXLAN over an IPv6 underlay costs 70.
pub const VXLAN6_OVERHEAD: u32 = 70;

/// Why no data path can be planned on this underlay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("underlay {iface} has MTU {mtu}, too small for {what} (a pod MTU of at least {floor} is needed)")]
pub struct PlanError {
    pub iface: String,
    pub mtu: u32,
    pub what: &'static str,
    pub floor: u32,
}

/// What the node's data path is, before any lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mode: Mode,
    /// The tunnel over the IPv4 underlay; `None` in host-gw mode.
    pub vxlan: Option<VxlanSpec>,
    /// The tunnel over the IPv6 underlay, when the cluster has IPv6 and
    /// this node an IPv6 underlay address (vxlan mode only).
    pub vxlan6: Option<VxlanSpec>,
    /// MTU for pods: the smallest MTU of the paths their packets take.
    pub pod_mtu: u32,
    /// What this node's lease says about it.
    pub attrs: LeaseAttrs,
    /// The underlay subnet this node's public IP sits in (host-gw and
    /// DirectRouting reach the nodes on it directly).
    pub underlay_net: Ipv4Net,
    pub underlay_index: u32,
    /// The WireGuard device, in wireguard mode: set by the agent once it
    /// has the node's key (`WgSpec::load`), `None` before and otherwise.
    pub wireguard: Option<WgSpec>,
}

/// The one MTU rule: a configured MTU wins; otherwise the underlay's MTU
/// less what the encapsulation over that underlay family costs. Either way
/// it must leave at least the family's minimum (576 for IPv4, 1280 for
/// IPv6) for pod packets.
pub fn tunnel_mtu(
    configured: Option<u32>,
    underlay: &Underlay,
    overhead: u32,
    floor: u32,
    what: &'static str,
) -> Result<u32, PlanError> {
    let err = || PlanError {
        iface: underlay.name.clone(),
        mtu: underlay.mtu,
        what,
        floor,
    };
    match configured {
        Some(m) => Ok(m),
        None => underlay
            .mtu
            .checked_sub(overhead)
            .filter(|m| *m >= floor)
            .ok_or_else(err),
    }
}

/// The VXLAN device of `cfg`'s backend named `name`, on `underlay` from
/// `local`.
pub(super) fn vxlan_spec(
    cfg: &NetworkConfig,
    underlay: &Underlay,
    name: String,
    local: IpAddr,
    mtu: u32,
    mac: Mac,
) -> VxlanSpec {
    VxlanSpec {
        name,
        vni: cfg.backend.vni,
        port: cfg.backend.port,
        local,
        underlay_index: underlay.index,
        mtu,
        mac,
        gbp: cfg.backend.gbp,
    }
}

impl Plan {
    /// Plans the data path for `cfg` on `underlay` (with `public_ipv6`, the
    /// underlay's global IPv6 address, when it has one).
    pub fn new(
        cfg: &NetworkConfig,
        underlay: &Underlay,
        public_ipv6: Option<Ipv6Addr>,
    ) -> Result<Plan, PlanError> {
        let backend = &cfg.backend;
        let mode = match backend.kind {
            BackendType::Vxlan => Mode::Vxlan {
                direct_routing: backend.direct_routing,
            },
            BackendType::HostGw => Mode::HostGw,
            BackendType::Wireguard => Mode::Wireguard,
        };
        // IPv6 underlay addresses matter only in an IPv6 cluster.
        let public_ipv6 = public_ipv6.filter(|_| cfg.ipv6.is_some());
        let spec = |name: String, local: IpAddr, mtu: u32, mac: Mac| {
            vxlan_spec(cfg, underlay, name, local, mtu, mac)
        };
        let (vxlan, vxlan6, pod_mtu) = match mode {
            Mode::HostGw => (
                None,
                None,
                tunnel_mtu(backend.mtu, underlay, 0, 576, "pods")?,
            ),
            // One tunnel for both families; with an IPv6 underlay address
            // (peers that have one too are reached there) the IPv6 cost.
            Mode::Wireguard => (
                None,
                None,
                match public_ipv6 {
                    Some(_) => tunnel_mtu(
                        backend.mtu,
                        underlay,
                        WIREGUARD6_OVERHEAD,
                        1280,
                        "WireGuard over IPv6",
                    )?,
                    None => {
                        tunnel_mtu(backend.mtu, underlay, WIREGUARD_OVERHEAD, 576, "WireGuard")?
                    }
                },
            ),
            Mode::Vxlan { .. } => {
                let mtu = tunnel_mtu(backend.mtu, underlay, VXLAN_OVERHEAD, 576, "VXLAN")?;
                let v4 = spec(
                    format!("twill.{}", backend.vni),
                    underlay.ip.into(),
                    mtu,
                    Mac::for_vtep(underlay.ip, backend.vni),
                );
                // With an IPv6 underlay address, IPv6 pod traffic gets its
                // own tunnel over the IPv6 underlay (as flannel's
                // flannel-v6 device), published as BackendV6Data; peers
                // without one reach us through the IPv4 tunnel.
                let v6 = match public_ipv6 {
                    Some(ip6) => Some(spec(
                        format!("twill6.{}", backend.vni),
                        ip6.into(),
                        tunnel_mtu(
                            backend.mtu,
                            underlay,
                            VXLAN6_OVERHEAD,
                            1280,
                            "VXLAN over IPv6",
                        )?,
                        Mac::for_vtep6(ip6, backend.vni),
                    )),
                    None => None,
                };
                let pod_mtu = v6.as_ref().map_or(mtu, |v6| v6.mtu.min(mtu));
                (Some(v4), v6, pod_mtu)
            }
        };
        let vxlan_data = |v: &VxlanSpec| VxlanData {
            vni: backend.vni,
            vtep_mac: v.mac.to_string(),
        };
        let attrs = LeaseAttrs {
            public_ip: underlay.ip,
            public_ipv6,
            backend_type: backend.kind.as_str().into(),
            backend_data: vxlan.as_ref().map(vxlan_data),
            backend_v6_data: vxlan6.as_ref().map(vxlan_data),
            node_name: None,
            public_key: None,
        };
        Ok(Plan {
            mode,
            vxlan,
            vxlan6,
            pod_mtu,
            attrs,
            underlay_net: underlay.net,
            underlay_index: underlay.index,
            wireguard: None,
        })
    }

    /// The devices and addresses that carry `lease` on this node.
    pub fn devices(&self, cfg: &NetworkConfig, bridge: &str, lease: &Lease) -> DeviceSpec {
        let subnet = lease.subnet;
        let v6 = cfg.ipv6.as_ref().map(|c| c.network).zip(lease.ipv6_subnet);
        let gateway6 = v6.map(|(network6, s6)| {
            (
                Ipv6Net::new(gateway6_of(s6), s6.prefix_len()).unwrap_or(s6),
                network6,
            )
        });
        let vtep = Ipv4Net::new(subnet.network(), 32).unwrap_or(subnet);
        let vtep6 = match self.vxlan.as_ref().or(self.vxlan6.as_ref()) {
            Some(_) => {
                v6.map(|(network6, s6)| (Ipv6Net::new(s6.network(), 128).unwrap_or(s6), network6))
            }
            None => None,
        };
        DeviceSpec {
            bridge: bridge.to_string(),
            // An IPv6-only lease has no IPv4 subnet (0.0.0.0/0).
            gateway: (!lease.is_ipv6_only())
                .then(|| Ipv4Net::new(gateway_of(subnet), subnet.prefix_len()).unwrap_or(subnet)),
            mtu: self.pod_mtu,
            gateway6,
            vxlan: self.vxlan.clone().map(|v| (v, vtep)),
            vxlan6: self.vxlan6.clone(),
            vtep6,
            underlay_index: self.underlay_index,
            wireguard: self.wireguard.clone(),
        }
    }

    /// What the subnet file says for `lease`.
    pub fn subnet_env(&self, cfg: &NetworkConfig, ip_masq: bool, lease: &Lease) -> SubnetEnv {
        SubnetEnv {
            network: cfg.network,
            subnet: lease.subnet,
            mtu: self.pod_mtu,
            ip_masq,
            ipv6: cfg
                .ipv6
                .as_ref()
                .zip(lease.ipv6_subnet)
                .map(|(c, s6)| (c.network, s6)),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    pub(in crate::agent) fn underlay(mtu: u32) -> Underlay {
        Underlay {
            name: "eth0".into(),
            index: 7,
            mtu,
            ip: Ipv4Addr::new(192, 0, 2, 10),
            net: "192.0.2.10/24".parse().unwrap(),
        }
    }

    fn config(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json.as_bytes()).unwrap()
    }

    const VXLAN: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;
    const DUAL: &str = r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"vxlan"}}"#;
    const HOST_GW: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#;

    fn ip6() -> Ipv6Addr {
        "2001:db8::10".parse().unwrap()
    }

    fn lease(cfg: &NetworkConfig, plan: &Plan, subnet: &str) -> Lease {
        let subnet: Ipv4Net = subnet.parse().unwrap();
        Lease {
            subnet,
            ipv6_subnet: cfg.ipv6_subnet_for(subnet),
            attrs: plan.attrs.clone(),
            lease_id: Some(1),
            ttl_remaining: None,
        }
    }

    #[test]
    fn vxlan_over_ipv4_costs_50_bytes() {
        let cfg = config(VXLAN);
        let plan = Plan::new(&cfg, &underlay(1500), None).unwrap();
        assert_eq!(
            plan.mode,
            Mode::Vxlan {
                direct_routing: false
            }
        );
        let v = plan.vxlan.as_ref().unwrap();
        assert_eq!(
            (v.name.as_str(), v.vni, v.port, v.mtu),
            ("twill.1", 1, 8472, 1450)
        );
        assert_eq!(v.local, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)));
        assert_eq!(v.underlay_index, 7);
        assert_eq!(v.mac, Mac::for_vtep(Ipv4Addr::new(192, 0, 2, 10), 1));
        assert_eq!(plan.vxlan6, None);
        assert_eq!(plan.pod_mtu, 1450);
    }

    #[test]
    fn lease_attrs_carry_the_vtep() {
        let cfg = config(VXLAN);
        let plan = Plan::new(&cfg, &underlay(1500), None).unwrap();
        assert_eq!(plan.attrs.backend_type, "vxlan");
        assert_eq!(plan.attrs.public_ip, Ipv4Addr::new(192, 0, 2, 10));
        let data = plan.attrs.backend_data.as_ref().unwrap();
        assert_eq!(data.vni, 1);
        assert_eq!(data.vtep_mac, plan.vxlan.as_ref().unwrap().mac.to_string());
        assert_eq!(plan.attrs.backend_v6_data, None);
        assert_eq!(plan.attrs.public_ipv6, None);
    }

    #[test]
    fn host_gw_has_no_tunnel_and_the_full_mtu() {
        let cfg = config(HOST_GW);
        let plan = Plan::new(&cfg, &underlay(1500), Some(ip6())).unwrap();
        assert_eq!(plan.mode, Mode::HostGw);
        assert_eq!(plan.vxlan, None);
        assert_eq!(plan.vxlan6, None);
        assert_eq!(plan.pod_mtu, 1500);
        assert_eq!(plan.attrs.backend_type, "host-gw");
        assert_eq!(plan.attrs.backend_data, None);
        // Not an IPv6 cluster: the underlay's IPv6 address is not published.
        assert_eq!(plan.attrs.public_ipv6, None);
        let l = lease(&cfg, &plan, "10.244.3.0/24");
        let dev = plan.devices(&cfg, "twill0", &l);
        assert_eq!(dev.vxlan, None);
        assert_eq!(dev.vtep6, None);
        assert_eq!(dev.names(), vec!["twill0".to_string()]);
    }

    #[test]
    fn ipv6_underlay_gets_its_own_tunnel_and_the_smaller_mtu_wins() {
        let cfg = config(DUAL);
        let plan = Plan::new(&cfg, &underlay(1500), Some(ip6())).unwrap();
        let v6 = plan.vxlan6.as_ref().unwrap();
        assert_eq!((v6.name.as_str(), v6.mtu), ("twill6.1", 1430));
        assert_eq!(v6.local, IpAddr::V6(ip6()));
        assert_eq!(v6.mac, Mac::for_vtep6(ip6(), 1));
        assert_eq!(plan.vxlan.as_ref().unwrap().mtu, 1450);
        assert_eq!(plan.pod_mtu, 1430);
        assert_eq!(plan.attrs.public_ipv6, Some(ip6()));
        assert_eq!(
            plan.attrs.backend_v6_data.as_ref().unwrap().vtep_mac,
            v6.mac.to_string()
        );
    }

    #[test]
    fn dual_stack_without_ipv6_underlay_rides_the_ipv4_tunnel() {
        let cfg = config(DUAL);
        let plan = Plan::new(&cfg, &underlay(1500), None).unwrap();
        assert_eq!(plan.vxlan6, None);
        assert_eq!(plan.pod_mtu, 1450);
        let l = lease(&cfg, &plan, "10.244.3.0/24");
        let dev = plan.devices(&cfg, "twill0", &l);
        let s6 = l.ipv6_subnet.unwrap();
        let network6: Ipv6Net = "fd00:10:244::/48".parse().unwrap();
        assert_eq!(
            dev.gateway6,
            Some((Ipv6Net::new(gateway6_of(s6), 64).unwrap(), network6))
        );
        assert_eq!(
            dev.vtep6,
            Some((Ipv6Net::new(s6.network(), 128).unwrap(), network6))
        );
        assert_eq!(
            dev.names(),
            vec!["twill0".to_string(), "twill.1".to_string()]
        );
    }

    #[test]
    fn wireguard_costs_60_bytes_over_ipv4_and_80_over_ipv6() {
        let wg = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#);
        let plan = Plan::new(&wg, &underlay(1500), Some(ip6())).unwrap();
        assert_eq!(plan.mode, Mode::Wireguard);
        assert_eq!((plan.vxlan.is_none(), plan.vxlan6.is_none()), (true, true));
        // Not an IPv6 cluster: the IPv6 underlay is not used.
        assert_eq!(plan.pod_mtu, 1440);
        assert_eq!(plan.attrs.backend_type, "wireguard");
        let dual = config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"wireguard"}}"#,
        );
        assert_eq!(
            Plan::new(&dual, &underlay(1500), None).unwrap().pod_mtu,
            1440
        );
        assert_eq!(
            Plan::new(&dual, &underlay(1500), Some(ip6()))
                .unwrap()
                .pod_mtu,
            1420
        );
        let err = Plan::new(&dual, &underlay(1350), Some(ip6())).unwrap_err();
        assert_eq!(err.floor, 1280);
    }

    #[test]
    fn a_configured_mtu_wins() {
        let cfg = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":1300}}"#);
        let plan = Plan::new(&cfg, &underlay(9000), None).unwrap();
        assert_eq!(plan.pod_mtu, 1300);
        assert_eq!(plan.vxlan.unwrap().mtu, 1300);
    }

    #[test]
    fn too_small_an_underlay_is_refused_naming_it() {
        let cfg = config(VXLAN);
        let err = Plan::new(&cfg, &underlay(600), None).unwrap_err();
        assert_eq!((err.iface.as_str(), err.mtu, err.floor), ("eth0", 600, 576));
        assert!(err.to_string().contains("eth0"), "{err}");
        // 1300 - 70 leaves less than IPv6's 1280 for the IPv6 tunnel.
        let cfg = config(DUAL);
        let err = Plan::new(&cfg, &underlay(1300), Some(ip6())).unwrap_err();
        assert_eq!(err.floor, 1280);
        // An MTU below the minimum even for host-gw.
        let err = Plan::new(&config(HOST_GW), &underlay(500), None).unwrap_err();
        assert_eq!(err.mtu, 500);
    }

    #[test]
    fn devices_follow_the_lease() {
        let cfg = config(VXLAN);
        let plan = Plan::new(&cfg, &underlay(1500), None).unwrap();
        let l = lease(&cfg, &plan, "10.244.3.0/24");
        let dev = plan.devices(&cfg, "twill0", &l);
        assert_eq!(
            dev.gateway,
            Some("10.244.3.1/24".parse::<Ipv4Net>().unwrap())
        );
        assert_eq!(dev.mtu, 1450);
        let (spec, vtep) = dev.vxlan.as_ref().unwrap();
        assert_eq!(spec, plan.vxlan.as_ref().unwrap());
        assert_eq!(*vtep, "10.244.3.0/32".parse::<Ipv4Net>().unwrap());
        assert_eq!(dev.gateway6, None);
        assert_eq!(dev.underlay_index, 7);
        let env = plan.subnet_env(&cfg, true, &l);
        assert_eq!((env.subnet, env.mtu, env.ip_masq), (l.subnet, 1450, true));
        assert_eq!(env.ipv6, None);
    }
}
