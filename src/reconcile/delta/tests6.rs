//! The delta path of an IPv6-only cluster's peers ([`PeerSet6`]) against
//! the full diff of `reconcile::ipv6_only`: every batch of events must yield
//! exactly the operations `diff(desired_state6(remote_nodes6(all)), kernel)`
//! yields, with the same nodes accepted and the same leases skipped.

use std::net::Ipv6Addr;

use proptest::prelude::*;
use subnet_allocator::{LeaseAttrs, VxlanData};
use twill_contract::lease_key::V6_ONLY_V4;

use super::tests::{apply_of, same_as_full, EvOf};
use super::*;
use crate::reconcile::{diff, Mode};

type Leases = BTreeMap<Ipv6Net, Lease>;

type Ev = EvOf<Ipv6Net>;

const OUR_SUBNET: &str = "fd00:10:244:9::/64";
const OUR_HOST: u16 = 0x99;

pub(super) fn local(mode: Mode) -> Local6 {
    Local6 {
        network6: "fd00:10:244::/48".parse().unwrap(),
        subnet6: OUR_SUBNET.parse().unwrap(),
        underlay6: format!("2001:db8::{OUR_HOST:x}/64").parse().unwrap(),
        mode,
    }
}

/// An IPv6-only lease of `s6` at `2001:db8::<host>` (or `2001:db8:1::<host>`
/// off our link, or no `PublicIPv6` at all), VTEP MAC number `m` (0: none).
fn lease6(s6: &str, host: u16, off: bool, public: bool, m: u8, backend: &str) -> Lease {
    let ip6 = Ipv6Addr::new(0x2001, 0xdb8, u16::from(off), 0, 0, 0, 0, host);
    Lease {
        subnet: V6_ONLY_V4,
        ipv6_subnet: Some(s6.parse().unwrap()),
        attrs: LeaseAttrs {
            public_ip: std::net::Ipv4Addr::UNSPECIFIED,
            public_ipv6: public.then_some(ip6),
            backend_type: backend.into(),
            backend_data: None,
            backend_v6_data: (m > 0).then(|| VxlanData {
                vni: 1,
                vtep_mac: format!("0e:81:20:01:0d:{m:02x}"),
            }),
            node_name: None,
            public_key: None,
        },
        lease_id: None,
        ttl_remaining: None,
    }
}

fn key(l: &Lease) -> Ipv6Net {
    V6::key_of(l)
}

fn full_desired(local: &Local6, leases: &Leases) -> KernelState {
    let all: Vec<Lease> = leases.values().cloned().collect();
    desired_state6(&remote_nodes6(local, &all).0)
}

#[test]
fn a_new_ipv6_only_lease_adds_its_entries_on_the_ipv6_tunnel_only() {
    let l = local(Mode::Vxlan {
        direct_routing: false,
    });
    let mut leases = Leases::new();
    let mut set = PeerSet6::new(l, &leases, KernelState::default());
    let peer = lease6("fd00:10:244:1::/64", 2, false, true, 2, "vxlan");
    let touched = apply_of::<V6>(&mut leases, &[Ev::Put(peer)]);
    let delta = set.update(&leases, touched);
    let ops: Vec<Op> = delta.ops.iter().map(|(_, op)| op.clone()).collect();
    assert_eq!(
        ops,
        diff(&full_desired(&l, &leases), &KernelState::default())
    );
    assert_eq!(ops.len(), 3, "{ops:?}");
    assert!(delta
        .ops
        .iter()
        .all(|(k, _)| k.to_string() == "fd00:10:244:1::/64"));
    assert!(
        ops.iter().all(|op| !op.to_string().contains("(vxlan)")),
        "{ops:?}"
    );
    assert_eq!(delta.peers.len(), 1);
}

pub(super) fn arb_lease() -> impl Strategy<Value = Lease> {
    (
        prop::sample::select(vec![
            "fd00:10:244::/64",
            "fd00:10:244:1::/64",
            "fd00:10:244:2::/64",
            "fd00:10:244:2::/63",
            "fd00:10:244:3::/64",
            "fd00:10:244:4::/62",
            "fd00:10:244:5::/64",
            OUR_SUBNET,
            "fd00:10:245::/64",
        ]),
        prop::sample::select(vec![1u16, 2, 3, 4, OUR_HOST]),
        any::<bool>(),
        prop::sample::select(vec![true, true, true, false]),
        prop::sample::select(vec![2u8, 3, 4, 5, 6, 0]),
        prop::sample::select(vec!["vxlan", "host-gw"]),
    )
        .prop_map(|(s6, host, off, public, m, backend)| lease6(s6, host, off, public, m, backend))
}

pub(super) fn arb_batch() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        prop_oneof![
            3 => arb_lease().prop_map(Ev::Put),
            1 => arb_lease().prop_map(|l| Ev::Del(key(&l))),
        ],
        1..4,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn delta6_and_full_diff_reach_the_same_kernel(
        mode in prop::sample::select(vec![
            Mode::HostGw,
            Mode::Vxlan { direct_routing: false },
            Mode::Vxlan { direct_routing: true },
        ]),
        start in prop::collection::vec(arb_lease(), 0..6),
        batches in prop::collection::vec(arb_batch(), 1..8),
    ) {
        same_as_full::<V6>(local(mode), start, &batches)?;
    }
}
