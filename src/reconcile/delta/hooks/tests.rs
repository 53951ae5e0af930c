//! The delta-kept members, targets and WireGuard peers against their whole
//! rebuild from every accepted node, after every batch of random events.

use proptest::prelude::*;

use super::super::tests::{apply_of, arb_batch, arb_lease, arb_local, local, EvOf};
use super::super::tests6;
use super::*;
use crate::reconcile::{KernelState, Mode};
use crate::wireguard::peers::diff_peers;

/// The full pass's accepted nodes.
fn full<F: Family>(l: &F::Local, leases: &BTreeMap<F::Key, Lease>) -> Vec<F::Node> {
    let all: Vec<Lease> = leases.values().cloned().collect();
    F::remote(l, &all).0
}

/// Starts from `start`, applies each batch through the set and the hooks,
/// and checks after each that the members (and what came and went), the
/// probe targets and whether they changed are what rebuilding them from
/// every node gives.
fn hooks_follow_the_full_rebuild<F: Hooked>(
    l: F::Local,
    start: Vec<Lease>,
    batches: &[Vec<EvOf<F::Key>>],
    members_of: fn(&[F::Node]) -> Peers,
    targets_of: fn(&F::Local, &[F::Node]) -> Vec<Target>,
) -> Result<(), TestCaseError> {
    let mut leases: BTreeMap<F::Key, Lease> =
        start.into_iter().map(|l| (F::key_of(&l), l)).collect();
    let mut set = PeerSetOf::<F>::new(l.clone(), &leases, KernelState::default());
    let nodes = full::<F>(&l, &leases);
    let mut members = Members::new::<F>(set.nodes());
    let mut written = members_of(&nodes);
    prop_assert_eq!(members.peers(), written.clone());
    let mut list = targets_of(&l, &nodes);
    for batch in batches {
        let touched = apply_of::<F>(&mut leases, batch);
        let delta = set.update(&leases, touched);
        let nodes = full::<F>(&l, &leases);
        let want = members_of(&nodes);
        let change = members.update::<F>(&delta.peers);
        prop_assert_eq!(&change.added, &want.minus(&written));
        prop_assert_eq!(&change.removed, &written.minus(&want));
        change.apply_to(&mut written);
        prop_assert_eq!(&written, &want);
        prop_assert_eq!(members.peers(), want);
        let want = targets_of(&l, &nodes);
        let differs = list != want;
        prop_assert_eq!(edit_targets::<F>(&l, &mut list, &delta.peers), differs);
        prop_assert_eq!(&list, &want);
    }
    Ok(())
}

const PARAMS: WgParams = WgParams {
    port: 51820,
    keepalive: 25,
    ipv6_underlay: true,
};

/// A wireguard lease: `k` picks one of three keys (shared by several
/// leases at times), none, or one that is not a key.
fn wg_lease(mut l: Lease, k: u8) -> Lease {
    l.attrs.backend_type = "wireguard".into();
    l.attrs.backend_data = None;
    l.attrs.public_key = match k {
        0..=2 => Some(Key([k + 1; 32]).to_base64()),
        3 => None,
        _ => Some("not a key".into()),
    };
    l
}

fn arb_wg_lease() -> impl Strategy<Value = Lease> {
    (arb_lease(), 0u8..5).prop_map(|(l, k)| wg_lease(l, k))
}

fn arb_wg_batch() -> impl Strategy<Value = Vec<EvOf<Ipv4Net>>> {
    prop::collection::vec(
        prop_oneof![
            3 => arb_wg_lease().prop_map(EvOf::Put),
            1 => arb_lease().prop_map(|l| EvOf::Del(l.subnet)),
        ],
        1..4,
    )
}

/// The device as the full sync leaves it, and the delta's changes applied
/// to another: both the same after each batch, and the delta's changes
/// exactly the full sync's.
fn wg_follows_the_full_sync(
    v6: bool,
    start: Vec<Lease>,
    batches: &[Vec<EvOf<Ipv4Net>>],
) -> Result<(), TestCaseError> {
    let l = local(Mode::Wireguard, v6, false);
    let mut leases: BTreeMap<Ipv4Net, Lease> = start.into_iter().map(|l| (l.subnet, l)).collect();
    let mut set = PeerSet::new(l, &leases, KernelState::default());
    let mut wg = WgPeers::new(PARAMS, &set, &leases);
    let desired = |leases: &BTreeMap<Ipv4Net, Lease>| {
        let p = PARAMS;
        desired_peers(
            &full::<V4>(&l, leases),
            leases,
            p.port,
            p.keepalive,
            p.ipv6_underlay,
        )
    };
    let mut device = desired(&leases);
    prop_assert_eq!(&wg.desired(), &device);
    for batch in batches {
        let touched = apply_of::<V4>(&mut leases, batch);
        let delta = set.update(&leases, touched.clone());
        let subnets = touched
            .into_iter()
            .chain(delta.peers.iter().map(|p| p.subnet));
        let changes = wg.update(&set, &leases, subnets);
        let want = desired(&leases);
        let actual: Vec<PeerConfig> = device.values().cloned().collect();
        prop_assert_eq!(&changes, &diff_peers(&want, &actual));
        for c in changes {
            match c {
                PeerChange::Remove(k) => device.remove(&k),
                PeerChange::Set(p) => device.insert(p.public_key, p),
            };
        }
        prop_assert_eq!(&device, &want);
        prop_assert_eq!(&wg.desired(), &want);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn members_and_targets_follow_the_full_rebuild(
        l in arb_local(),
        start in prop::collection::vec(arb_lease(), 0..6),
        batches in prop::collection::vec(arb_batch(), 1..8),
    ) {
        hooks_follow_the_full_rebuild::<V4>(l, start, &batches, tunnel_peers, |l, n| {
            targets_all(l.subnet, l.subnet6, n)
        })?;
    }

    #[test]
    fn ipv6_only_members_and_targets_follow_the_full_rebuild(
        start in prop::collection::vec(tests6::arb_lease(), 0..6),
        batches in prop::collection::vec(tests6::arb_batch(), 1..8),
        vxlan in any::<bool>(),
    ) {
        let mode = if vxlan { Mode::Vxlan { direct_routing: false } } else { Mode::HostGw };
        hooks_follow_the_full_rebuild::<V6>(tests6::local(mode), start, &batches, tunnel_peers6, |l, n| {
            targets6(l.subnet6, n)
        })?;
    }

    #[test]
    fn wireguard_peers_follow_the_full_sync(
        v6 in any::<bool>(),
        start in prop::collection::vec(arb_wg_lease(), 0..6),
        batches in prop::collection::vec(arb_wg_batch(), 1..8),
    ) {
        wg_follows_the_full_sync(v6, start, &batches)?;
    }
}

/// Two leases sharing a public IP: the member stays until both are gone.
#[test]
fn a_member_shared_by_two_nodes_goes_with_the_last() {
    let l = local(Mode::HostGw, false, false);
    let lease = |s: &str| {
        let mut x = super::super::tests::lease(s, std::net::Ipv4Addr::new(192, 0, 2, 9), "");
        x.attrs.backend_type = "host-gw".into();
        x.attrs.backend_data = None;
        x
    };
    let (a, b) = (lease("10.244.2.0/24"), lease("10.244.3.0/24"));
    let mut leases: BTreeMap<Ipv4Net, Lease> =
        [(a.subnet, a.clone()), (b.subnet, b.clone())].into();
    let mut set = PeerSet::new(l, &leases, KernelState::default());
    assert_eq!(set.nodes().count(), 2);
    let mut members = Members::new::<V4>(set.nodes());
    assert_eq!(members.peers().v4.len(), 1);
    leases.remove(&a.subnet);
    let d = set.update(&leases, [a.subnet]);
    assert_eq!(d.peers.len(), 1);
    assert!(members.update::<V4>(&d.peers).is_empty(), "b still uses it");
    leases.remove(&b.subnet);
    let d = set.update(&leases, [b.subnet]);
    let change = members.update::<V4>(&d.peers);
    assert_eq!(change.removed.v4.len(), 1);
    assert!(change.added.is_empty());
    assert_eq!(members.peers(), Peers::default());
}
