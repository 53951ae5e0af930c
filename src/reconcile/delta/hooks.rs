//! The per-peer state outside the kernel's tables, kept by delta as
//! [`DeltaOf::peers`](super::DeltaOf) names the peers that changed: the
//! tunnel's members (the isolation table's allow-set), the prober's
//! targets and the WireGuard peers. A watch batch then costs work for the
//! changed peers only (a few map lookups each), where rebuilding each from
//! every accepted node cost O(all peers) per event. Each is built whole
//! from [`PeerSetOf::nodes`] when the agent's full pass builds the set, so
//! a resync still repairs any drift; the tests check that after any
//! sequence of batches the delta-kept state equals the whole rebuild.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::Ipv4Net;
use subnet_allocator::Lease;
use twill_nft::guard::Peers;

use super::{Family, PeerChangeOf, PeerSet, PeerSetOf, V4, V6};
use crate::guard::{tunnel_peers, tunnel_peers6};
use crate::probe::{targets6, targets_all, Target};
use crate::wireguard::key::Key;
use crate::wireguard::peers::{desired_peers, PeerMap};
use crate::wireguard::uapi::{PeerChange, PeerConfig};

/// What a kind of peer contributes to the per-peer state, one node at a
/// time (through the same functions the whole rebuild uses).
pub trait Hooked: Family {
    /// The tunnel's members `node` asks for.
    fn members(node: &Self::Node) -> Peers;
    /// The probe targets of `node`, seen from `local`.
    fn targets(local: &Self::Local, node: &Self::Node) -> Vec<Target>;
}

impl Hooked for V4 {
    fn members(node: &Self::Node) -> Peers {
        tunnel_peers(std::slice::from_ref(node))
    }
    /// A dual-stack peer's IPv6 pod path is a second target, as
    /// `Agent::publish_peers` makes it.
    fn targets(local: &Self::Local, node: &Self::Node) -> Vec<Target> {
        targets_all(local.subnet, local.subnet6, std::slice::from_ref(node))
    }
}

impl Hooked for V6 {
    fn members(node: &Self::Node) -> Peers {
        tunnel_peers6(std::slice::from_ref(node))
    }
    fn targets(local: &Self::Local, node: &Self::Node) -> Vec<Target> {
        targets6(local.subnet6, std::slice::from_ref(node))
    }
}

/// The tunnel's members, each with how many accepted nodes ask for it (two
/// leases may share a public IP: the member goes when the last one does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    v4: BTreeMap<Ipv4Addr, u32>,
    v6: BTreeMap<Ipv6Addr, u32>,
}

/// The members that came and went in one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberChange {
    pub added: Peers,
    pub removed: Peers,
}

impl MemberChange {
    pub fn is_empty(&self) -> bool {
        self.added == Peers::default() && self.removed == Peers::default()
    }

    /// Applies the change to `peers` (the members written so far).
    pub fn apply_to(&self, peers: &mut Peers) {
        for a in &self.removed.v4 {
            peers.v4.remove(a);
        }
        for a in &self.removed.v6 {
            peers.v6.remove(a);
        }
        peers.v4.extend(&self.added.v4);
        peers.v6.extend(&self.added.v6);
    }
}

/// Counts `key` up or down; notes in `was` whether it was a member before
/// the batch, the first time the batch touches it.
fn bump<K: Ord + Copy>(map: &mut BTreeMap<K, u32>, was: &mut BTreeMap<K, bool>, key: K, up: bool) {
    was.entry(key).or_insert_with(|| map.contains_key(&key));
    if up {
        *map.entry(key).or_default() += 1;
    } else if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

/// The keys of `was` that are members now and were not, and the other way
/// round.
fn came_and_went<K: Ord + Copy>(
    map: &BTreeMap<K, u32>,
    was: BTreeMap<K, bool>,
) -> (BTreeSet<K>, BTreeSet<K>) {
    let (mut added, mut removed) = (BTreeSet::new(), BTreeSet::new());
    for (k, before) in was {
        match (before, map.contains_key(&k)) {
            (false, true) => added.insert(k),
            (true, false) => removed.insert(k),
            _ => false,
        };
    }
    (added, removed)
}

impl Members {
    /// The members of every node in `nodes` (the full pass's rebuild).
    pub fn new<'a, F: Hooked>(nodes: impl IntoIterator<Item = &'a F::Node>) -> Self
    where
        F::Node: 'a,
    {
        let mut m = Members::default();
        let (mut w4, mut w6) = (BTreeMap::new(), BTreeMap::new());
        for n in nodes {
            m.count(&F::members(n), true, &mut w4, &mut w6);
        }
        m
    }

    fn count(
        &mut self,
        p: &Peers,
        up: bool,
        w4: &mut BTreeMap<Ipv4Addr, bool>,
        w6: &mut BTreeMap<Ipv6Addr, bool>,
    ) {
        for a in &p.v4 {
            bump(&mut self.v4, w4, *a, up);
        }
        for a in &p.v6 {
            bump(&mut self.v6, w6, *a, up);
        }
    }

    /// The members as a set (O(members): for a rebuild and the tests).
    pub fn peers(&self) -> Peers {
        Peers {
            v4: self.v4.keys().copied().collect(),
            v6: self.v6.keys().copied().collect(),
        }
    }

    /// Follows `changes` (each peer's node before and after the batch) and
    /// returns the members that came and went.
    pub fn update<F: Hooked>(&mut self, changes: &[PeerChangeOf<F>]) -> MemberChange {
        let (mut w4, mut w6) = (BTreeMap::new(), BTreeMap::new());
        for c in changes {
            if let Some(n) = &c.before {
                self.count(&F::members(n), false, &mut w4, &mut w6);
            }
            if let Some(n) = &c.after {
                self.count(&F::members(n), true, &mut w4, &mut w6);
            }
        }
        let (a4, r4) = came_and_went(&self.v4, w4);
        let (a6, r6) = came_and_went(&self.v6, w6);
        MemberChange {
            added: Peers { v4: a4, v6: a6 },
            removed: Peers { v4: r4, v6: r6 },
        }
    }
}

/// Brings `list` (the probe targets of the nodes before `changes`, sorted
/// as [`targets_all`] sorts them) to those after, in place: each
/// changed peer's old targets out, its new ones in at their place. Returns
/// whether the list changed. O(changed peers × log(targets)) lookups, plus
/// the shift of the vector's tail on an insert or removal.
pub fn edit_targets<F: Hooked>(
    local: &F::Local,
    list: &mut Vec<Target>,
    changes: &[PeerChangeOf<F>],
) -> bool {
    let mut changed = false;
    for c in changes {
        let old = c.before.as_ref().map(|n| F::targets(local, n));
        let new = c.after.as_ref().map(|n| F::targets(local, n));
        if old == new {
            continue;
        }
        for t in old.into_iter().flatten() {
            if let Ok(i) = list.binary_search(&t) {
                list.remove(i);
                changed = true;
            }
        }
        for t in new.into_iter().flatten() {
            let at = list.partition_point(|x| *x <= t);
            list.insert(at, t);
            changed = true;
        }
    }
    changed
}

/// How the WireGuard peers are made from the nodes (the device's listen
/// port, keepalive, and whether endpoints may be IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WgParams {
    pub port: u16,
    pub keepalive: u16,
    pub ipv6_underlay: bool,
}

/// The WireGuard peers the tunnel should have, kept per node: each
/// accepted node's peer, and for each key the nodes asking for it (the
/// first by subnet has it, as in [`desired_peers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeers {
    params: WgParams,
    by_subnet: BTreeMap<Ipv4Net, PeerConfig>,
    by_key: BTreeMap<Key, BTreeSet<Ipv4Net>>,
}

impl WgPeers {
    /// The peers of every accepted node of `set` (the full pass's rebuild).
    pub fn new(params: WgParams, set: &PeerSet, leases: &BTreeMap<Ipv4Net, Lease>) -> Self {
        let mut wg = WgPeers {
            params,
            by_subnet: BTreeMap::new(),
            by_key: BTreeMap::new(),
        };
        for n in set.nodes() {
            if let Some(p) = wg.peer_of(n, leases) {
                wg.by_key.entry(p.public_key).or_default().insert(n.subnet);
                wg.by_subnet.insert(n.subnet, p);
            }
        }
        wg
    }

    /// `node`'s peer on its own ([`desired_peers`] of that one node).
    fn peer_of(
        &self,
        node: &crate::reconcile::RemoteNode,
        leases: &BTreeMap<Ipv4Net, Lease>,
    ) -> Option<PeerConfig> {
        let p = self.params;
        desired_peers(
            std::slice::from_ref(node),
            leases,
            p.port,
            p.keepalive,
            p.ipv6_underlay,
        )
        .into_values()
        .next()
    }

    /// The peer that holds `key` now.
    fn holder(&self, key: &Key) -> Option<&PeerConfig> {
        let first = self.by_key.get(key)?.first()?;
        self.by_subnet.get(first)
    }

    /// The peers the device should have (O(peers): for the tests).
    pub fn desired(&self) -> PeerMap {
        self.by_key
            .keys()
            .filter_map(|k| Some((*k, self.holder(k)?.clone())))
            .collect()
    }

    /// Re-decides the peers of the leases at `subnets` (those a batch
    /// touched, and those whose node changed: a lease event can change the
    /// key, which the node does not show) against `set` after the batch;
    /// returns the UAPI changes, removals first then sets in key order (as
    /// [`crate::wireguard::peers::diff_peers`] orders them).
    pub fn update(
        &mut self,
        set: &PeerSet,
        leases: &BTreeMap<Ipv4Net, Lease>,
        subnets: impl IntoIterator<Item = Ipv4Net>,
    ) -> Vec<PeerChange> {
        // Each key touched, with the peer that held it before the batch.
        let mut keys: BTreeMap<Key, Option<PeerConfig>> = BTreeMap::new();
        for subnet in subnets {
            let new = set.node(&subnet).and_then(|n| self.peer_of(n, leases));
            let old = self.by_subnet.get(&subnet);
            if old == new.as_ref() {
                continue;
            }
            for k in old
                .iter()
                .map(|p| p.public_key)
                .chain(new.iter().map(|p| p.public_key))
            {
                let held = self.holder(&k).cloned();
                keys.entry(k).or_insert(held);
            }
            if let Some(old) = self.by_subnet.remove(&subnet) {
                if let Some(s) = self.by_key.get_mut(&old.public_key) {
                    s.remove(&subnet);
                    if s.is_empty() {
                        self.by_key.remove(&old.public_key);
                    }
                }
            }
            if let Some(new) = new {
                self.by_key
                    .entry(new.public_key)
                    .or_default()
                    .insert(subnet);
                self.by_subnet.insert(subnet, new);
            }
        }
        let mut removes = Vec::new();
        let mut sets = Vec::new();
        for (k, before) in keys {
            match (before, self.holder(&k)) {
                (Some(_), None) => removes.push(PeerChange::Remove(k)),
                (before, Some(now)) if before.as_ref() != Some(now) => {
                    sets.push(PeerChange::Set(now.clone()))
                }
                _ => {}
            }
        }
        removes.extend(sets);
        removes
    }

    /// The node whose peer holds `key`, for the logs.
    pub fn subnet_of(&self, key: &Key) -> Option<Ipv4Net> {
        self.by_key.get(key)?.first().copied()
    }
}

impl<F: Family> PeerSetOf<F> {
    /// The accepted node at `key`, if any.
    pub fn node(&self, key: &F::Key) -> Option<&F::Node> {
        self.standing.get(key)?.as_ref().ok()
    }
}

#[cfg(test)]
mod tests;
