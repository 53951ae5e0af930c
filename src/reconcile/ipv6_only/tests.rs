use super::*;
use crate::reconcile::RouteTarget;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};
use subnet_allocator::{LeaseAttrs, VxlanData};

const VXLAN: Mode = Mode::Vxlan {
    direct_routing: false,
};

fn net(s: &str) -> Ipv6Net {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// Us: fd00:10:244:1::/64 at 2001:db8::1 on 2001:db8::/64.
fn local(mode: Mode) -> Local6 {
    Local6 {
        network6: net("fd00:10:244::/48"),
        subnet6: net("fd00:10:244:1::/64"),
        underlay6: net("2001:db8::1/64"),
        mode,
    }
}

/// An IPv6-only lease as flannel writes it: `0.0.0.0/0`, PublicIP
/// 0.0.0.0, BackendV6Data only.
fn lease(s6: &str, public_ipv6: &str, mac: &str) -> Lease {
    Lease {
        subnet: "0.0.0.0/0".parse().unwrap(),
        ipv6_subnet: Some(net(s6)),
        attrs: LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(ip(public_ipv6)),
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: Some(VxlanData {
                vni: 1,
                vtep_mac: mac.into(),
            }),
            node_name: None,
            public_key: None,
        },
        lease_id: Some(1),
        ttl_remaining: None,
    }
}

fn mac(s: &str) -> Mac {
    Mac::parse(s).unwrap()
}

#[test]
fn three_nodes_are_known_by_their_ipv6_subnets_and_get_ipv6_entries_only() {
    let leases = [
        lease("fd00:10:244:1::/64", "2001:db8::1", "02:00:00:00:00:01"),
        lease("fd00:10:244:3::/64", "2001:db8:9::3", "02:00:00:00:00:03"),
        lease("fd00:10:244:2::/64", "2001:db8::2", "02:00:00:00:00:02"),
    ];
    let (nodes, skipped) = remote_nodes6(&local(VXLAN), &leases);
    assert_eq!(skipped, vec![]);
    // Ours is left out; the two others, sorted, though both share the IPv4
    // part 0.0.0.0/0.
    let subnets: Vec<_> = nodes.iter().map(|n| n.subnet6).collect();
    assert_eq!(
        subnets,
        vec![net("fd00:10:244:2::/64"), net("fd00:10:244:3::/64")]
    );
    let state = desired_state6(&nodes);
    assert_eq!(state.routes.len(), 2);
    assert!(state.routes.keys().all(|d| matches!(d, IpNet::V6(_))));
    assert!(state.neighbours.keys().all(|(_, a)| a.is_ipv6()));
    assert_eq!(
        state.routes[&IpNet::from(net("fd00:10:244:3::/64"))],
        RouteTarget {
            gateway: IpAddr::from(ip("fd00:10:244:3::")),
            dev: Dev::Vxlan6
        }
    );
    assert_eq!(
        state.neighbours[&(Dev::Vxlan6, IpAddr::from(ip("fd00:10:244:3::")))],
        mac("02:00:00:00:00:03")
    );
    assert_eq!(
        state.fdb[&(Dev::Vxlan6, mac("02:00:00:00:00:03"))],
        [IpAddr::from(ip("2001:db8:9::3"))].into_iter().collect()
    );
}

#[test]
fn host_gw_and_direct_routing_route_via_public_ipv6_on_the_segment() {
    let leases = [
        lease("fd00:10:244:2::/64", "2001:db8::2", "02:00:00:00:00:02"),
        lease("fd00:10:244:3::/64", "2001:db8:9::3", "02:00:00:00:00:03"),
    ];
    let (nodes, skipped) = remote_nodes6(&local(Mode::HostGw), &leases);
    assert_eq!(
        skipped,
        vec![Skip6::NotOnLink(
            net("fd00:10:244:3::/64"),
            ip("2001:db8:9::3")
        )]
    );
    let state = desired_state6(&nodes);
    assert_eq!(
        state.routes[&IpNet::from(net("fd00:10:244:2::/64"))],
        RouteTarget {
            gateway: IpAddr::from(ip("2001:db8::2")),
            dev: Dev::Underlay
        }
    );
    assert!(state.neighbours.is_empty() && state.fdb.is_empty());
    // DirectRouting: on the segment direct, off it through the tunnel.
    let dr = Mode::Vxlan {
        direct_routing: true,
    };
    let (nodes, skipped) = remote_nodes6(&local(dr), &leases);
    assert!(skipped.is_empty(), "{skipped:?}");
    let paths: Vec<_> = nodes.iter().map(|n| n.path).collect();
    assert_eq!(
        paths,
        vec![Path::Direct, Path::Vxlan(mac("02:00:00:00:00:03"))]
    );
}

#[test]
fn unusable_leases_are_skipped_naming_why() {
    let mut dual = lease("fd00:10:244:4::/64", "2001:db8::4", "02:00:00:00:00:04");
    dual.subnet = "10.244.4.0/24".parse().unwrap();
    let mut no_ip6 = lease("fd00:10:244:5::/64", "2001:db8::5", "02:00:00:00:00:05");
    no_ip6.attrs.public_ipv6 = None;
    let link_local = lease("fd00:10:244:6::/64", "fe80::6", "02:00:00:00:00:06");
    let mut no_vtep = lease("fd00:10:244:7::/64", "2001:db8::7", "02:00:00:00:00:07");
    no_vtep.attrs.backend_v6_data = None;
    let leases = [
        dual,
        no_ip6,
        link_local,
        no_vtep,
        lease("fd00:99::/64", "2001:db8::8", "02:00:00:00:00:08"),
        lease("fd00:10:244:1::/64", "2001:db8::9", "02:00:00:00:00:09"),
        lease("fd00:10:244:a::/64", "2001:db8::a", "02:00:00:00:00:0a"),
        // Reuses the MAC of the one before.
        lease("fd00:10:244:b::/64", "2001:db8::b", "02:00:00:00:00:0a"),
        // Multicast MAC.
        lease("fd00:10:244:c::/64", "2001:db8::c", "03:00:00:00:00:0c"),
    ];
    let (nodes, skipped) = remote_nodes6(&local(VXLAN), &leases);
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].subnet6, net("fd00:10:244:a::/64"));
    assert_eq!(
        skipped,
        vec![
            Skip6::NotIpv6Only("10.244.4.0-24&fd00:10:244:4::-64".into()),
            Skip6::ClaimsOurSubnet(net("fd00:10:244:1::/64"), ip("2001:db8::9")),
            Skip6::NoPublicIpv6(net("fd00:10:244:5::/64")),
            Skip6::NoPublicIpv6(net("fd00:10:244:6::/64")),
            Skip6::NoVtep(net("fd00:10:244:7::/64")),
            Skip6::Conflict(net("fd00:10:244:b::/64")),
            Skip6::NoVtep(net("fd00:10:244:c::/64")),
            Skip6::OutsideNetwork(net("fd00:99::/64")),
        ]
    );
    for s in &skipped {
        assert!(s.to_string().starts_with("lease "), "{s}");
    }
}

#[test]
fn wireguard_leases_are_not_used() {
    let leases = [lease(
        "fd00:10:244:2::/64",
        "2001:db8::2",
        "02:00:00:00:00:02",
    )];
    let (nodes, skipped) = remote_nodes6(&local(Mode::Wireguard), &leases);
    assert!(nodes.is_empty());
    assert_eq!(skipped, vec![Skip6::Unsupported(net("fd00:10:244:2::/64"))]);
}
