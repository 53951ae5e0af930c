//! Dual-stack clusters: the IPv6 pod path of each peer, probed as a second
//! target beside the IPv4 one ([`super::targets`]). IPv6 pod traffic to a
//! peer may take another way than IPv4 (the IPv6 tunnel over the IPv6
//! underlay), which can break on its own (VXLAN over IPv6 dropped, an IPv6
//! MTU blackhole); its target has its own labels (the IPv6 subnet, the
//! address that path goes to), so `/peers`, the gauges and `twilld status`
//! tell the two apart.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::Ipv6Net;

use super::Target;
use crate::reconcile::{Path, RemoteNode};

/// The second probe targets of a dual-stack node leasing `own6`: the IPv6
/// pod path of each remote node that has one, which [`super::targets`] does not
/// probe. It leaves as IPv6 pod traffic to the peer leaves
/// (`desired_state`): through the IPv6 tunnel (`twill6.<VNI>`, labelled
/// with the peer's `PublicIPv6`) when both ends have one, else inside the
/// IPv4 tunnel (labelled with its `PublicIP`), from our `<own6>::` to the
/// peer's `<subnet6>::`; on a direct route over the IPv6 underlay, and
/// through WireGuard, bridge gateway to gateway (`<subnet6>::1`). A node
/// without an IPv6 subnet (or `own6` `None`: not dual-stack), or on a
/// direct route without a `PublicIPv6` (no IPv6 route), gives none.
pub fn targets_dual6(own6: Option<Ipv6Net>, nodes: &[RemoteNode]) -> Vec<Target> {
    let Some(own6) = own6 else {
        return Vec::new();
    };
    let gateway = crate::subnet_file::gateway6_of;
    let mut out: Vec<Target> = nodes
        .iter()
        .filter_map(|n| {
            let s6 = n.subnet6?;
            let (src, dst, public_ip): (Ipv6Addr, Ipv6Addr, IpAddr) = match n.path {
                Path::Vxlan(_) => {
                    let public_ip = match (n.vtep6, n.public_ipv6) {
                        (Some(_), Some(ip6)) => ip6.into(),
                        _ => n.public_ip.into(),
                    };
                    (own6.network(), s6.network(), public_ip)
                }
                Path::Direct => (gateway(own6), gateway(s6), n.public_ipv6?.into()),
                Path::Wireguard => (gateway(own6), gateway(s6), n.public_ip.into()),
            };
            Some(Target {
                subnet: s6.into(),
                public_ip,
                src: src.into(),
                dst: dst.into(),
            })
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::tests::target;
    use crate::reconcile::{desired_state, Dev, Mac};
    use ipnet::IpNet;
    use std::net::Ipv4Addr;

    const MAC: Mac = Mac([0x0a, 0, 0, 0, 0, 9]);
    const MAC6: Mac = Mac([0x0a, 0, 0, 0, 6, 9]);

    fn own6() -> Option<Ipv6Net> {
        Some("fd00:10:244:1::/64".parse().unwrap())
    }

    /// Node `i` of a dual-stack cluster, with an IPv6 underlay address
    /// when `ipv6_underlay`, and the IPv6 tunnel's MAC when `vtep6`.
    fn node(i: u8, path: Path, ipv6_underlay: bool, vtep6: bool) -> RemoteNode {
        RemoteNode {
            subnet: format!("10.244.{i}.0/24").parse().unwrap(),
            subnet6: Some(format!("fd00:10:244:{i}::/64").parse().unwrap()),
            public_ip: Ipv4Addr::new(192, 0, 2, i),
            public_ipv6: ipv6_underlay.then(|| format!("2001:db8:1::{i}").parse().unwrap()),
            path,
            vtep6: vtep6.then_some(MAC6),
        }
    }

    /// The route IPv6 pod traffic to `n` takes, as the agent writes it.
    fn route6(n: &RemoteNode) -> Option<(IpAddr, Dev)> {
        let state = desired_state(std::slice::from_ref(n));
        let dst = IpNet::from(n.subnet6?);
        state.routes.get(&dst).map(|r| (r.gateway, r.dev))
    }

    #[test]
    fn through_the_ipv6_tunnel_vtep_to_vtep_labelled_with_the_ipv6_underlay_address() {
        let n = node(3, Path::Vxlan(MAC), true, true);
        let t = targets_dual6(own6(), std::slice::from_ref(&n));
        assert_eq!(
            t,
            vec![target(
                "fd00:10:244:3::/64",
                "2001:db8:1::3",
                "fd00:10:244:1::",
                "fd00:10:244:3::"
            )]
        );
        // The probe goes where pod traffic goes: via the peer's VTEP
        // address on twill6.<VNI>.
        assert_eq!(route6(&n), Some((t[0].dst, Dev::Vxlan6)));
    }

    #[test]
    fn inside_the_ipv4_tunnel_vtep_to_vtep_labelled_with_the_ipv4_underlay_address() {
        // No IPv6 tunnel between the two (one end lacks an IPv6 underlay
        // address, or this node has no twill6): IPv6 rides twill.<VNI>.
        for n in [
            node(3, Path::Vxlan(MAC), false, false),
            node(3, Path::Vxlan(MAC), true, false),
        ] {
            let t = targets_dual6(own6(), std::slice::from_ref(&n));
            assert_eq!(
                t,
                vec![target(
                    "fd00:10:244:3::/64",
                    "192.0.2.3",
                    "fd00:10:244:1::",
                    "fd00:10:244:3::"
                )],
                "{n:?}"
            );
            assert_eq!(route6(&n), Some((t[0].dst, Dev::Vxlan)), "{n:?}");
        }
    }

    #[test]
    fn on_a_direct_route_gateway_to_gateway_over_the_ipv6_underlay() {
        let n = node(2, Path::Direct, true, false);
        let t = targets_dual6(own6(), std::slice::from_ref(&n));
        assert_eq!(
            t,
            vec![target(
                "fd00:10:244:2::/64",
                "2001:db8:1::2",
                "fd00:10:244:1::1",
                "fd00:10:244:2::1"
            )]
        );
        assert_eq!(
            route6(&n),
            Some(("2001:db8:1::2".parse().unwrap(), Dev::Underlay))
        );
        // Without an IPv6 underlay address there is no IPv6 route, and
        // nothing to probe.
        let n = node(2, Path::Direct, false, false);
        assert_eq!(route6(&n), None);
        assert_eq!(targets_dual6(own6(), &[n]), vec![]);
    }

    #[test]
    fn through_wireguard_gateway_to_gateway() {
        let n = node(4, Path::Wireguard, true, false);
        let t = targets_dual6(own6(), std::slice::from_ref(&n));
        assert_eq!(
            t,
            vec![target(
                "fd00:10:244:4::/64",
                "192.0.2.4",
                "fd00:10:244:1::1",
                "fd00:10:244:4::1"
            )]
        );
        assert_eq!(route6(&n).map(|(_, dev)| dev), Some(Dev::Wireguard));
    }

    #[test]
    fn single_stack_nodes_give_none_and_the_rest_come_sorted_after_the_ipv4_ones() {
        // Not dual-stack here: nothing, whatever the nodes hold.
        let n = node(2, Path::Vxlan(MAC), true, true);
        assert_eq!(targets_dual6(None, std::slice::from_ref(&n)), vec![]);
        // A peer without an IPv6 subnet (an IPv4-only lease) gives none.
        let v4only = RemoteNode {
            subnet6: None,
            ..node(5, Path::Vxlan(MAC), true, true)
        };
        assert_eq!(targets_dual6(own6(), &[v4only]), vec![]);
        // Two targets per dual-stack peer, every IPv6 one after every IPv4
        // one: appended to `targets`, the list stays sorted by subnet.
        let nodes = [
            node(3, Path::Vxlan(MAC), true, true),
            node(2, Path::Direct, true, false),
        ];
        let mut all = super::super::targets("10.244.1.0/24".parse().unwrap(), &nodes);
        all.extend(targets_dual6(own6(), &nodes));
        let subnets: Vec<String> = all.iter().map(|t| t.subnet.to_string()).collect();
        assert_eq!(
            subnets,
            [
                "10.244.2.0/24",
                "10.244.3.0/24",
                "fd00:10:244:2::/64",
                "fd00:10:244:3::/64"
            ]
        );
        assert!(all.windows(2).all(|w| w[0].subnet < w[1].subnet));
    }
}
