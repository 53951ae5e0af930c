//! The rules of both tables, as expressions: what a pod port may send
//! (bridge) and what the tunnel accepts (inet).

use super::*;

fn cmp(op: CmpOp, data: &[u8]) -> Expr {
    Expr::Cmp {
        op: op.code(),
        data: data.to_vec(),
    }
}

fn meta_is(key: u32, value: u8) -> [Expr; 2] {
    [Expr::Meta { reg: R0, key }, cmp(CmpOp::Eq, &[value])]
}

/// `NFT_REG_1`: where single values go and concatenations start. The
/// kernel lists the 32-bit register at that place as `NFT_REG_1`, so rules
/// are written the way they read back.
const R0: u32 = 1;

/// A payload loaded into the `n`th 32-bit register of a concatenation.
fn load(n: u32, base: u32, offset: u32, len: u32) -> Expr {
    if n == 0 {
        Expr::Payload { base, offset, len }
    } else {
        Expr::PayloadTo {
            reg: REG32_00 + n,
            base,
            offset,
            len,
        }
    }
}

/// `drop` after a counter.
fn counted_drop() -> [Expr; 2] {
    [Expr::Counter, Expr::Verdict(VERDICT_DROP)]
}

/// What the agent's tables depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The cluster's networks: VXLAN from a pod to inside them is pod
    /// traffic (it reaches the tunnel only through the node's own address,
    /// which the tunnel filter covers), to anywhere else it is dropped.
    pub network: Ipv4Net,
    pub network6: Option<Ipv6Net>,
    /// The VXLAN port; `None` without a tunnel (host-gw).
    pub vxlan_port: Option<u16>,
    /// Whether VXLAN is accepted from members only (`--no-tunnel-filter`
    /// turns it off).
    pub tunnel_filter: bool,
}

/// Frames a pod port brought in, their ether type loaded.
fn pod_port_ether_type() -> Vec<Expr> {
    vec![
        Expr::Meta {
            reg: R0,
            key: META_IIF,
        },
        Expr::Lookup {
            reg: R0,
            set: PORTS.into(),
            inv: false,
        },
        Expr::Payload {
            base: BASE_LL,
            offset: 12,
            len: 2,
        },
    ]
}

/// Frames a pod port brought in, of ether type `ty`.
fn from_pod(ty: u16) -> Vec<Expr> {
    let mut e = pod_port_ether_type();
    e.push(cmp(CmpOp::Eq, &ty.to_be_bytes()));
    e
}

/// The key `port . mac . <addr>` loaded from the frame (the MAC and the
/// address at the given offsets), looked up in `set`; matches a miss.
fn not_the_pods(mac: (u32, u32), addr: (u32, u32, u32), set: &str) -> Vec<Expr> {
    vec![
        Expr::Meta {
            reg: R0,
            key: META_IIF,
        },
        load(1, mac.0, mac.1, 6),
        load(3, addr.0, addr.1, addr.2),
        Expr::Lookup {
            reg: R0,
            set: set.into(),
            inv: true,
        },
    ]
}

fn rule(filter: &'static str, parts: &[&[Expr]]) -> Rule {
    Rule {
        filter,
        exprs: parts.concat(),
    }
}

const ETH_IP: u16 = 0x0800;
const ETH_ARP: u16 = 0x0806;
const ETH_IP6: u16 = 0x86dd;
const UDP: u8 = 17;
const ICMPV6: u8 = 58;
const ETHER_SADDR: (u32, u32) = (BASE_LL, 6);

fn link_local() -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
    ))
}

/// The rules of the bridge table's chain, in order.
pub fn bridge_rules(s: &Settings) -> Vec<Rule> {
    let udp = meta_is(META_L4PROTO, UDP);
    let icmp6 = meta_is(META_L4PROTO, ICMPV6);
    let sport = |p: u16| {
        [
            load(0, BASE_TRANSPORT, 0, 2),
            cmp(CmpOp::Eq, &p.to_be_bytes()),
        ]
    };
    let dport = |p: u16| {
        [
            load(0, BASE_TRANSPORT, 2, 2),
            cmp(CmpOp::Eq, &p.to_be_bytes()),
        ]
    };
    let icmp_type = |t: u8| [load(0, BASE_TRANSPORT, 0, 1), cmp(CmpOp::Eq, &[t])];
    let drop = counted_drop();
    let (ip4, arp, ip6) = (from_pod(ETH_IP), from_pod(ETH_ARP), from_pod(ETH_IP6));
    // Not one of the pod's extra prefixes either (`port . saddr`).
    let not_extra = |offset: u32, len: u32, set: &str| {
        [
            Expr::Meta {
                reg: R0,
                key: META_IIF,
            },
            load(1, BASE_NETWORK, offset, len),
            Expr::Lookup {
                reg: R0,
                set: set.into(),
                inv: true,
            },
        ]
    };
    let mut r = vec![
        rule(
            "source",
            &[
                &ip4,
                &not_the_pods(ETHER_SADDR, (BASE_NETWORK, 12, 4), PODS4),
                &not_extra(12, 4, EXTRA4),
                &drop,
            ],
        ),
        // The frame's sender and ARP's both: the pod's MAC and address.
        rule(
            "arp",
            &[
                &arp,
                &not_the_pods(ETHER_SADDR, (BASE_NETWORK, 14, 4), PODS4),
                &drop,
            ],
        ),
        rule(
            "arp",
            &[
                &arp,
                &not_the_pods((BASE_NETWORK, 8), (BASE_NETWORK, 14, 4), PODS4),
                &drop,
            ],
        ),
        rule("dhcp_server", &[&ip4, &udp, &sport(67), &drop]),
    ];
    if let Some(port) = s.vxlan_port {
        let outside = prefix_match(Field::Daddr, CmpOp::Neq, IpNet::V4(s.network));
        r.push(rule(
            "pod_vxlan",
            &[&ip4, &udp, &dport(port), &outside, &drop],
        ));
    }
    // IPv6: the pod's own address, or link-local / unspecified (neighbour
    // discovery, DAD) from the pod's own MAC.
    let not_ll = prefix_match(Field::Saddr, CmpOp::Neq, link_local());
    let not_unspecified = [
        Expr::Payload {
            base: BASE_NETWORK,
            offset: 8,
            len: 16,
        },
        cmp(CmpOp::Neq, &[0; 16]),
    ];
    let pods6 = not_the_pods(ETHER_SADDR, (BASE_NETWORK, 8, 16), PODS6);
    let extra6 = not_extra(8, 16, EXTRA6);
    r.push(rule(
        "source",
        &[&ip6, &not_ll, &not_unspecified, &pods6, &extra6, &drop],
    ));
    let mac_only = [
        Expr::Meta {
            reg: R0,
            key: META_IIF,
        },
        load(1, BASE_LL, 6, 6),
        Expr::Lookup {
            reg: R0,
            set: MACS.into(),
            inv: true,
        },
    ];
    r.push(rule("source", &[&ip6, &mac_only, &drop]));
    r.push(rule(
        "router_advert",
        &[&ip6, &icmp6, &icmp_type(134), &drop],
    ));
    r.push(rule(
        "router_advert",
        &[&ip6, &icmp6, &icmp_type(137), &drop],
    ));
    // A neighbour advertisement's target: the pod's own address.
    let target_not_ll = {
        let mut e = vec![
            load(0, BASE_TRANSPORT, 8, 16),
            Expr::Bitwise {
                mask: [&[0xff, 0xc0][..], &[0; 14]].concat(),
                xor: vec![0; 16],
            },
        ];
        e.push(cmp(CmpOp::Neq, &[&[0xfe, 0x80][..], &[0; 14]].concat()));
        e
    };
    let target = not_the_pods(ETHER_SADDR, (BASE_TRANSPORT, 8, 16), PODS6);
    r.push(rule(
        "nd",
        &[
            &ip6,
            &icmp6,
            &icmp_type(136),
            &target_not_ll,
            &target,
            &drop,
        ],
    ));
    r.push(rule("dhcp_server", &[&ip6, &udp, &sport(547), &drop]));
    if let (Some(port), Some(net6)) = (s.vxlan_port, s.network6) {
        let outside = prefix_match(Field::Daddr, CmpOp::Neq, IpNet::V6(net6));
        r.push(rule(
            "pod_vxlan",
            &[&ip6, &udp, &dport(port), &outside, &drop],
        ));
    }
    // Anything else (VLAN tags, other protocols) from a pod port.
    let mut other = pod_port_ether_type();
    for ty in [ETH_IP, ETH_ARP, ETH_IP6] {
        other.push(cmp(CmpOp::Neq, &ty.to_be_bytes()));
    }
    r.push(rule("ether_type", &[&other, &drop]));
    r
}

/// The rules of the inet table's chain (none without a tunnel or with the
/// tunnel filter off).
pub fn inet_rules(s: &Settings) -> Vec<Rule> {
    let Some(port) = s.vxlan_port.filter(|_| s.tunnel_filter) else {
        return Vec::new();
    };
    let dport = [
        load(0, BASE_TRANSPORT, 2, 2),
        cmp(CmpOp::Eq, &port.to_be_bytes()),
    ];
    let udp = meta_is(META_L4PROTO, UDP);
    let drop = counted_drop();
    let from = |offset: u32, len: u32, set: &str| {
        [
            load(0, BASE_NETWORK, offset, len),
            Expr::Lookup {
                reg: R0,
                set: set.into(),
                inv: true,
            },
        ]
    };
    vec![
        rule(
            "tunnel",
            &[
                &meta_is(META_NFPROTO, 2),
                &udp,
                &dport,
                &from(12, 4, PEERS4),
                &drop,
            ],
        ),
        rule(
            "tunnel",
            &[
                &meta_is(META_NFPROTO, 10),
                &udp,
                &dport,
                &from(8, 16, PEERS6),
                &drop,
            ],
        ),
    ]
}
