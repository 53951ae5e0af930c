//! The delta path against the full diff: every event must yield exactly the
//! operations `diff(desired_state(remote_nodes(all)), kernel)` yields.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use proptest::prelude::*;
use subnet_allocator::{LeaseAttrs, VxlanData};

use super::*;
use crate::reconcile::{diff, Mode};

type Leases = BTreeMap<Ipv4Net, Lease>;

/// A change to the lease map as a watch reports it.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // test events, a handful at a time
pub(super) enum EvOf<K> {
    Put(Lease),
    Del(K),
}

type Ev = EvOf<Ipv4Net>;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn mac(last: u8) -> String {
    format!("0e:01:c0:00:02:{last:02x}")
}

/// A vxlan lease of `192.0.2.<host>` (or `198.18.0.<host>` off link).
pub(super) fn lease(subnet: &str, ip: Ipv4Addr, vtep: &str) -> Lease {
    Lease {
        subnet: net(subnet),
        ipv6_subnet: None,
        attrs: LeaseAttrs {
            public_ip: ip,
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(VxlanData {
                vni: 1,
                vtep_mac: vtep.into(),
            }),
            backend_v6_data: None,
            node_name: None,
            public_key: None,
        },
        lease_id: None,
        ttl_remaining: None,
    }
}

fn on_link(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, host)
}

fn dual(mut l: Lease, n: u16, v6_underlay: bool) -> Lease {
    l.ipv6_subnet =
        Some(Ipv6Net::new(Ipv6Addr::new(0xfd00, 0x10, 0x244, n, 0, 0, 0, 0), 64).unwrap());
    if v6_underlay {
        l.attrs.public_ipv6 = Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n));
        l.attrs.backend_v6_data = Some(VxlanData {
            vni: 1,
            vtep_mac: format!("0e:81:00:00:00:{:02x}", n & 0xff),
        });
    }
    l
}

pub(super) fn local(mode: Mode, v6: bool, v6_tunnel: bool) -> Local {
    Local {
        network: net("10.244.0.0/16"),
        subnet: net("10.244.1.0/24"),
        subnet6: v6.then(|| "fd00:10:244:1::/64".parse().unwrap()),
        underlay: net("192.0.2.1/24"),
        mode,
        v6_tunnel,
    }
}

fn vxlan() -> Local {
    local(
        Mode::Vxlan {
            direct_routing: false,
        },
        false,
        false,
    )
}

fn full_desired(local: &Local, leases: &Leases) -> KernelState {
    full_desired_of::<V4>(local, leases)
}

fn full_desired_of<F: Family>(local: &F::Local, leases: &BTreeMap<F::Key, Lease>) -> KernelState {
    let all: Vec<Lease> = leases.values().cloned().collect();
    F::entries(&F::remote(local, &all).0)
}

fn apply(leases: &mut Leases, events: &[Ev]) -> BTreeSet<Ipv4Net> {
    apply_of::<V4>(leases, events)
}

pub(super) fn apply_of<F: Family>(
    leases: &mut BTreeMap<F::Key, Lease>,
    events: &[EvOf<F::Key>],
) -> BTreeSet<F::Key> {
    let mut touched = BTreeSet::new();
    for ev in events {
        match ev {
            EvOf::Put(l) => {
                touched.insert(F::key_of(l));
                leases.insert(F::key_of(l), l.clone());
            }
            EvOf::Del(s) => {
                touched.insert(*s);
                leases.remove(s);
            }
        }
    }
    touched
}

/// Starts converged on `start`, applies each batch both ways, and checks
/// after each that the delta's operations are the full diff's, that both
/// reach the same kernel, and that the set accepts and skips what the full
/// pass does.
pub(super) fn same_as_full<F: Family>(
    l: F::Local,
    start: Vec<Lease>,
    batches: &[Vec<EvOf<F::Key>>],
) -> Result<(), TestCaseError> {
    let mut leases: BTreeMap<F::Key, Lease> =
        start.into_iter().map(|l| (F::key_of(&l), l)).collect();
    let mut by_full = full_desired_of::<F>(&l, &leases);
    let mut set = PeerSetOf::<F>::new(l.clone(), &leases, by_full.clone());
    let mut by_delta = by_full.clone();
    for batch in batches {
        let touched = apply_of::<F>(&mut leases, batch);
        let delta = set.update(&leases, touched);
        let full_ops = diff(&full_desired_of::<F>(&l, &leases), &by_full);
        let ops: Vec<Op> = delta.ops.into_iter().map(|(_, op)| op).collect();
        prop_assert_eq!(&ops, &full_ops);
        for op in &ops {
            by_delta.apply_op(op);
            set.record(op);
        }
        for op in &full_ops {
            by_full.apply_op(op);
        }
        prop_assert_eq!(&by_delta, &by_full);
        prop_assert_eq!(&by_delta, &full_desired_of::<F>(&l, &leases));
        let all: Vec<Lease> = leases.values().cloned().collect();
        let (nodes, skipped) = F::remote(&l, &all);
        prop_assert_eq!(set.nodes().cloned().collect::<Vec<_>>(), nodes);
        prop_assert_eq!(set.skipped_count(), skipped.len());
        prop_assert_eq!(set.skipped().cloned().collect::<Vec<_>>(), skipped);
    }
    Ok(())
}

/// Starts converged on `before`, applies `events` both ways, checks the
/// delta's operations are the full diff's, and returns them.
fn check(local: Local, before: &[Lease], events: &[Ev]) -> Vec<Op> {
    let mut leases: Leases = before.iter().map(|l| (l.subnet, l.clone())).collect();
    let kernel = full_desired(&local, &leases);
    let mut set = PeerSet::new(local, &leases, kernel.clone());
    assert_eq!(set.desired(), kernel);
    let touched = apply(&mut leases, events);
    let delta = set.update(&leases, touched);
    let ops: Vec<Op> = delta.ops.iter().map(|(_, op)| op.clone()).collect();
    let want = full_desired(&local, &leases);
    assert_eq!(
        ops,
        diff(&want, &kernel),
        "delta vs full diff for {events:?}"
    );
    assert_eq!(set.desired(), want);
    for op in &ops {
        set.record(op);
    }
    assert_eq!(set.programmed(), &want);
    ops
}

fn two() -> Vec<Lease> {
    vec![
        lease("10.244.2.0/24", on_link(2), &mac(2)),
        lease("10.244.3.0/24", on_link(3), &mac(3)),
    ]
}

#[test]
fn a_new_lease_adds_its_fdb_neighbour_and_route_only() {
    let ops = check(
        vxlan(),
        &two(),
        &[Ev::Put(lease("10.244.4.0/24", on_link(4), &mac(4)))],
    );
    let kinds: Vec<_> = ops.iter().map(Op::kind).collect();
    assert_eq!(kinds, ["add_fdb", "set_neighbour", "set_route"]);
}

#[test]
fn a_removed_lease_removes_its_entries_only() {
    let ops = check(vxlan(), &two(), &[Ev::Del(net("10.244.3.0/24"))]);
    let kinds: Vec<_> = ops.iter().map(Op::kind).collect();
    assert_eq!(kinds, ["del_route", "del_neighbour", "del_fdb"]);
}

#[test]
fn a_lease_moving_to_another_public_ip_moves_its_fdb_entry() {
    let ops = check(
        vxlan(),
        &two(),
        &[Ev::Put(lease("10.244.3.0/24", on_link(33), &mac(3)))],
    );
    let kinds: Vec<_> = ops.iter().map(Op::kind).collect();
    assert_eq!(kinds, ["del_fdb", "add_fdb"]);
}

#[test]
fn a_lease_with_a_new_mac_gets_a_new_neighbour_and_fdb_entry() {
    let ops = check(
        vxlan(),
        &two(),
        &[Ev::Put(lease("10.244.3.0/24", on_link(3), &mac(0x33)))],
    );
    let kinds: Vec<_> = ops.iter().map(Op::kind).collect();
    assert_eq!(kinds, ["del_fdb", "add_fdb", "set_neighbour"]);
}

#[test]
fn deleted_and_re_added_in_one_batch_is_no_change() {
    let l = two()[1].clone();
    let ops = check(vxlan(), &two(), &[Ev::Del(l.subnet), Ev::Put(l)]);
    assert!(ops.is_empty(), "{ops:?}");
}

#[test]
fn deleted_and_re_added_in_two_batches_is_undone_and_redone() {
    let l = two()[1].clone();
    assert_eq!(check(vxlan(), &two(), &[Ev::Del(l.subnet)]).len(), 3);
    assert_eq!(check(vxlan(), &two()[..1], &[Ev::Put(l)]).len(), 3);
}

#[test]
fn a_wider_lease_hides_the_leases_it_covers_and_shows_them_when_gone() {
    let wide = lease("10.244.2.0/23", on_link(9), &mac(9));
    let ops = check(vxlan(), &two(), &[Ev::Put(wide.clone())]);
    // 10.244.2.0/23 sorts first: both /24s inside it lose, it wins.
    assert!(ops.contains(&Op::DelRoute {
        dst: net("10.244.3.0/24").into()
    }));
    let mut with = two();
    with.push(wide.clone());
    let ops = check(vxlan(), &with, &[Ev::Del(wide.subnet)]);
    assert!(ops.contains(&Op::SetRoute {
        dst: net("10.244.3.0/24").into(),
        target: crate::reconcile::RouteTarget {
            gateway: net("10.244.3.0/24").network().into(),
            dev: Dev::Vxlan,
        }
    }));
}

#[test]
fn a_lower_subnet_with_the_same_mac_takes_it_over() {
    // 10.244.0.0/24 sorts before 10.244.3.0/24: it wins the MAC.
    let ops = check(
        vxlan(),
        &two(),
        &[Ev::Put(lease("10.244.0.0/24", on_link(30), &mac(3)))],
    );
    assert!(ops.contains(&Op::DelRoute {
        dst: net("10.244.3.0/24").into()
    }));
    // And gives it back when it goes, or takes another MAC.
    let mut with = two();
    with.push(lease("10.244.0.0/24", on_link(30), &mac(3)));
    check(vxlan(), &with, &[Ev::Del(net("10.244.0.0/24"))]);
    check(
        vxlan(),
        &with,
        &[Ev::Put(lease("10.244.0.0/24", on_link(30), &mac(0x30)))],
    );
}

#[test]
fn a_chain_of_conflicts_is_followed() {
    // .0 holds MAC 3 so .3 loses; .3 losing lets .3.128/25 in? No: it is
    // inside .3/24 only while .3 is accepted. Removing .0 flips both.
    let before = vec![
        lease("10.244.0.0/24", on_link(30), &mac(3)),
        lease("10.244.3.0/24", on_link(3), &mac(3)),
        lease("10.244.3.128/25", on_link(4), &mac(4)),
        lease("10.244.5.0/24", on_link(5), &mac(4)),
    ];
    check(vxlan(), &before, &[Ev::Del(net("10.244.0.0/24"))]);
    check(
        vxlan(),
        &before,
        &[Ev::Put(lease("10.244.0.0/24", on_link(30), &mac(7)))],
    );
}

#[test]
fn our_own_lease_and_unusable_ones_change_nothing() {
    let own = lease("10.244.1.0/24", on_link(1), &mac(1));
    assert!(check(vxlan(), &two(), &[Ev::Put(own)]).is_empty());
    let outside = lease("10.245.0.0/24", on_link(8), &mac(8));
    assert!(check(vxlan(), &two(), &[Ev::Put(outside)]).is_empty());
    let mut no_vtep = two()[1].clone();
    no_vtep.attrs.backend_data = None;
    assert_eq!(check(vxlan(), &two(), &[Ev::Put(no_vtep)]).len(), 3);
}

#[test]
fn host_gw_and_direct_routing_follow_a_lease_on_and_off_link() {
    let off = lease("10.244.3.0/24", Ipv4Addr::new(198, 18, 0, 3), &mac(3));
    for mode in [
        Mode::HostGw,
        Mode::Vxlan {
            direct_routing: true,
        },
    ] {
        let l = local(mode, false, false);
        check(l, &two(), &[Ev::Put(off.clone())]);
        let mut with = two();
        with[1] = off.clone();
        check(l, &with, &[Ev::Put(two()[1].clone())]);
        check(l, &two(), &[Ev::Del(net("10.244.2.0/24"))]);
    }
}

#[test]
fn dual_stack_over_both_tunnels() {
    for (v6_tunnel, v6_underlay) in [(false, false), (false, true), (true, true), (true, false)] {
        let l = local(
            Mode::Vxlan {
                direct_routing: false,
            },
            true,
            v6_tunnel,
        );
        let before = vec![
            dual(two()[0].clone(), 2, v6_underlay),
            dual(two()[1].clone(), 3, v6_underlay),
        ];
        let new = dual(lease("10.244.4.0/24", on_link(4), &mac(4)), 4, v6_underlay);
        let ops = check(l, &before, &[Ev::Put(new)]);
        assert_eq!(ops.len(), if v6_tunnel && v6_underlay { 6 } else { 5 });
        check(l, &before, &[Ev::Del(net("10.244.2.0/24"))]);
        // Moving the IPv6 underlay address only.
        let moved = dual(two()[1].clone(), 0x33, v6_underlay);
        let mut moved = moved;
        moved.ipv6_subnet = before[1].ipv6_subnet;
        check(l, &before, &[Ev::Put(moved)]);
        // Two peers claiming one IPv6 subnet: the greater IPv4 subnet wins.
        let clash = dual(lease("10.244.5.0/24", on_link(5), &mac(5)), 3, v6_underlay);
        check(l, &before, &[Ev::Put(clash)]);
    }
}

#[test]
fn peer_changes_name_what_appeared_went_and_changed() {
    let mut leases: Leases = two().into_iter().map(|l| (l.subnet, l)).collect();
    let mut set = PeerSet::new(vxlan(), &leases, full_desired(&vxlan(), &leases));
    let events = [
        Ev::Put(lease("10.244.4.0/24", on_link(4), &mac(4))),
        Ev::Del(net("10.244.2.0/24")),
        Ev::Put(lease("10.244.3.0/24", on_link(33), &mac(3))),
    ];
    let touched = apply(&mut leases, &events);
    let d = set.update(&leases, touched);
    let summary: Vec<_> = d
        .peers
        .iter()
        .map(|c| {
            (
                c.subnet,
                c.before.as_ref().map(|n| n.public_ip),
                c.after.as_ref().map(|n| n.public_ip),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (net("10.244.2.0/24"), Some(on_link(2)), None),
            (net("10.244.3.0/24"), Some(on_link(3)), Some(on_link(33))),
            (net("10.244.4.0/24"), None, Some(on_link(4))),
        ]
    );
    assert_eq!(set.nodes().count(), 2);
}

// The property: random event sequences applied through the delta path onto
// one simulated kernel and through the full diff onto another leave both
// kernels equal after every batch, and each batch's operations are the ones
// the full diff yields.

pub(super) fn arb_lease() -> impl Strategy<Value = Lease> {
    (
        prop::sample::select(vec![
            "10.244.0.0/24",
            "10.244.1.0/24",
            "10.244.2.0/24",
            "10.244.2.0/23",
            "10.244.3.0/24",
            "10.244.3.128/25",
            "10.244.4.0/22",
            "10.244.5.0/24",
            "10.244.6.0/24",
            "10.245.0.0/24",
        ]),
        prop::sample::select(vec![1u8, 2, 3, 4, 5]),
        any::<bool>(),
        prop::sample::select(vec![2u8, 3, 4, 5, 6, 0]),
        prop::option::of((prop::sample::select(vec![2u16, 3, 4, 1]), any::<bool>())),
        prop::sample::select(vec!["vxlan", "host-gw"]),
    )
        .prop_map(|(subnet, host, off, m, v6, backend)| {
            let ip = if off {
                Ipv4Addr::new(198, 18, 0, host)
            } else {
                on_link(host)
            };
            let vtep = if m == 0 {
                "00:00:00:00:00:00".into()
            } else {
                mac(m)
            };
            let mut l = lease(subnet, ip, &vtep);
            l.attrs.backend_type = backend.into();
            match v6 {
                Some((n, underlay)) => dual(l, n, underlay),
                None => l,
            }
        })
}

pub(super) fn arb_batch() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(
        prop_oneof![
            3 => arb_lease().prop_map(Ev::Put),
            1 => arb_lease().prop_map(|l| Ev::Del(l.subnet)),
        ],
        1..4,
    )
}

pub(super) fn arb_local() -> impl Strategy<Value = Local> {
    (
        prop::sample::select(vec![
            Mode::HostGw,
            Mode::Vxlan {
                direct_routing: false,
            },
            Mode::Vxlan {
                direct_routing: true,
            },
        ]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mode, v6, tunnel)| local(mode, v6, v6 && tunnel))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn delta_and_full_diff_reach_the_same_kernel(
        l in arb_local(),
        start in prop::collection::vec(arb_lease(), 0..6),
        batches in prop::collection::vec(arb_batch(), 1..8),
    ) {
        same_as_full::<V4>(l, start, &batches)?;
    }
}
