//! The lease map's effect on the kernel, kept per peer so that a lease
//! event costs work for that peer only, not a pass over every node.
//!
//! [`PeerSet`] holds, for every lease, its standing (a usable remote node,
//! or why it is skipped), the kernel entries each accepted node needs, and
//! what the agent believes the kernel holds (`programmed`: the state read at
//! the last full pass, plus every operation applied since). After a batch of
//! lease events, [`PeerSet::update`] re-decides only the peers the events
//! touched (and the few whose conflict standing depends on them) and returns
//! the operations for the entries they own: exactly what [`super::diff`]
//! would yield against `programmed`, in the same order, without reading the
//! kernel or walking all leases.
//!
//! Standing is decided by [`super::remote_nodes`] on the single lease, so
//! the rules stay in one place; only the conflict rule, which depends on
//! other leases, is applied here: walking leases by subnet, a node is a
//! conflict when the last accepted node before it overlaps it or an
//! accepted node before it uses its VTEP MAC. A change of one peer can
//! change that answer only for the leases its subnet contains and for those
//! after it that share its MAC; those are re-decided too, in subnet order.
//! (That relies on subnets without host bits, which lease keys guarantee:
//! `parse_subnet_key` refuses any other.)
//!
//! The same holds for an IPv6-only cluster's peers (`reconcile::ipv6_only`,
//! keyed by their IPv6 subnet): the set is generic over the [`Family`] of
//! keys, nodes and skips, [`PeerSet`] for IPv4 keys, [`PeerSet6`] for IPv6.
//!
//! # Extension point: other per-peer state
//!
//! [`Delta::peers`] lists every peer whose [`RemoteNode`] appeared, went or
//! changed, with the node before and after. State keyed by peer that lives
//! outside the route/neighbour/FDB tables (an isolation allow-set element, a
//! health-probe target, a WireGuard peer) follows the same deltas: consume
//! `Delta::peers` after [`PeerSet::update`] (add `after`, remove `before`),
//! and rebuild from [`PeerSet::nodes`] on a full pass, so that a resync
//! repairs it like it repairs the routes. [`hooks`] does so for the
//! tunnel's members, the probe targets and the WireGuard peers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use std::fmt::Debug;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use subnet_allocator::Lease;

pub mod hooks;

use super::ipv6_only::{desired_state6, remote_nodes6, Local6, RemoteNode6, Skip6};
use super::{
    desired_state, remote_nodes, Dev, KernelState, Local, Mac, Op, Path, RemoteNode, Skip,
};

/// What the set needs to know of one kind of peers: how a lease stands on
/// its own, and the keys (subnets) the conflict rule walks.
pub trait Family: Debug + Clone + PartialEq + Eq {
    type Key: Copy + Ord + Debug + std::hash::Hash;
    type Local: Clone + PartialEq + Debug;
    type Node: Clone + PartialEq + Eq + Debug;
    type Skip: Clone + PartialEq + Eq + Debug;
    /// Where `lease` goes in a map of leases of this kind.
    fn key_of(lease: &Lease) -> Self::Key;
    /// The full pass's decision: the remote nodes and the skipped leases.
    fn remote(local: &Self::Local, leases: &[Lease]) -> (Vec<Self::Node>, Vec<Self::Skip>);
    /// The kernel entries `nodes` need.
    fn entries(nodes: &[Self::Node]) -> KernelState;
    fn path(node: &Self::Node) -> Path;
    fn conflict(key: Self::Key) -> Self::Skip;
    fn overlaps(a: Self::Key, b: Self::Key) -> bool;
    /// The last key inside `key` (its last address, host-length).
    fn last(key: Self::Key) -> Self::Key;
}

/// The nodes of IPv4 and dual-stack clusters, keyed by the IPv4 subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4;

/// The nodes of IPv6-only clusters, keyed by the IPv6 subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V6;

/// The standing of `lease` on its own (no conflict rule); `None` for our
/// own lease.
fn alone<F: Family>(local: &F::Local, lease: &Lease) -> Option<Standing<F>> {
    let (mut nodes, mut skipped) = F::remote(local, std::slice::from_ref(lease));
    match (nodes.pop(), skipped.pop()) {
        (Some(n), _) => Some(Ok(n)),
        (None, Some(s)) => Some(Err(s)),
        (None, None) => None,
    }
}

impl Family for V4 {
    type Key = Ipv4Net;
    type Local = Local;
    type Node = RemoteNode;
    type Skip = Skip;
    fn key_of(lease: &Lease) -> Ipv4Net {
        lease.subnet
    }
    fn remote(local: &Local, leases: &[Lease]) -> (Vec<RemoteNode>, Vec<Skip>) {
        remote_nodes(local, leases)
    }
    fn entries(nodes: &[RemoteNode]) -> KernelState {
        desired_state(nodes)
    }
    fn path(node: &RemoteNode) -> Path {
        node.path
    }
    fn conflict(key: Ipv4Net) -> Skip {
        Skip::Conflict(key)
    }
    fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
        a.contains(&b) || b.contains(&a)
    }
    fn last(key: Ipv4Net) -> Ipv4Net {
        Ipv4Net::new(key.broadcast(), 32).unwrap_or(key)
    }
}

impl Family for V6 {
    type Key = Ipv6Net;
    type Local = Local6;
    type Node = RemoteNode6;
    type Skip = Skip6;
    /// An IPv6-only lease by its IPv6 subnet (`remote_nodes6` skips a
    /// lease of another form; its key here is then its IPv6 subnet or
    /// `::/0`).
    fn key_of(lease: &Lease) -> Ipv6Net {
        lease.ipv6_subnet.unwrap_or_default()
    }
    fn remote(local: &Local6, leases: &[Lease]) -> (Vec<RemoteNode6>, Vec<Skip6>) {
        remote_nodes6(local, leases)
    }
    fn entries(nodes: &[RemoteNode6]) -> KernelState {
        desired_state6(nodes)
    }
    fn path(node: &RemoteNode6) -> Path {
        node.path
    }
    fn conflict(key: Ipv6Net) -> Skip6 {
        Skip6::Conflict(key)
    }
    fn overlaps(a: Ipv6Net, b: Ipv6Net) -> bool {
        a.contains(&b) || b.contains(&a)
    }
    fn last(key: Ipv6Net) -> Ipv6Net {
        Ipv6Net::new(key.broadcast(), 128).unwrap_or(key)
    }
}

/// One peer whose remote node changed: `None` when it was (or is now) not a
/// usable node (absent, our own lease, or skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChangeOf<F: Family> {
    pub subnet: F::Key,
    pub before: Option<F::Node>,
    pub after: Option<F::Node>,
}

/// What one batch of lease events changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaOf<F: Family> {
    /// The kernel operations, each with the peer whose change asked for it
    /// (for logs), in [`super::diff`]'s order.
    pub ops: Vec<(F::Key, Op)>,
    /// The peers whose remote node appeared, went or changed.
    pub peers: Vec<PeerChangeOf<F>>,
    /// Leases newly skipped, or skipped for another reason than before.
    pub skipped: Vec<F::Skip>,
}

impl<F: Family> Default for DeltaOf<F> {
    fn default() -> Self {
        DeltaOf {
            ops: Vec::new(),
            peers: Vec::new(),
            skipped: Vec::new(),
        }
    }
}

pub type PeerChange = PeerChangeOf<V4>;
pub type Delta = DeltaOf<V4>;
/// The peers of IPv4 and dual-stack clusters.
pub type PeerSet = PeerSetOf<V4>;
/// The peers of IPv6-only clusters.
pub type PeerSet6 = PeerSetOf<V6>;

/// A lease's standing among the others.
type Standing<F> = Result<<F as Family>::Node, <F as Family>::Skip>;

/// Every peer's standing and kernel entries, and what the kernel holds.
#[derive(Debug, Clone)]
pub struct PeerSetOf<F: Family> {
    local: F::Local,
    /// The standing of every lease but our own.
    standing: BTreeMap<F::Key, Standing<F>>,
    /// How many of those are skipped.
    skipped: usize,
    /// The accepted nodes' subnets, for the overlap rule.
    accepted: BTreeSet<F::Key>,
    /// VTEP MAC -> the accepted node that uses it.
    accepted_mac: HashMap<Mac, F::Key>,
    /// VTEP MAC -> every lease that would use it if it were accepted, and
    /// the other way round.
    wants_mac: HashMap<Mac, BTreeSet<F::Key>>,
    wants: BTreeMap<F::Key, Mac>,
    /// The desired entries, each with the peers that ask for it. When two
    /// peers ask for the same route or neighbour the one with the greater
    /// subnet wins, as in [`desired_state`] (the later insert).
    routes: BTreeMap<IpNet, BTreeMap<F::Key, super::RouteTarget>>,
    neighbours: BTreeMap<(Dev, IpAddr), BTreeMap<F::Key, Mac>>,
    fdb: BTreeMap<(Dev, Mac, IpAddr), BTreeSet<F::Key>>,
    programmed: KernelState,
}

/// The desired entries one peer's change touched, with that peer.
struct Touched<K> {
    routes: BTreeMap<IpNet, K>,
    neighbours: BTreeMap<(Dev, IpAddr), K>,
    fdb: BTreeMap<(Dev, Mac, IpAddr), K>,
}

impl<K> Default for Touched<K> {
    fn default() -> Self {
        Touched {
            routes: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            fdb: BTreeMap::new(),
        }
    }
}

fn vxlan_mac<F: Family>(s: &Standing<F>) -> Option<Mac> {
    match s.as_ref().map(F::path) {
        Ok(Path::Vxlan(m)) => Some(m),
        _ => None,
    }
}

impl<F: Family> PeerSetOf<F> {
    /// The standing of every lease in `leases`, with `programmed` what the
    /// kernel holds now (read at a full pass, with its operations applied).
    pub fn new(local: F::Local, leases: &BTreeMap<F::Key, Lease>, programmed: KernelState) -> Self {
        let mut set = PeerSetOf {
            local,
            standing: BTreeMap::new(),
            skipped: 0,
            accepted: BTreeSet::new(),
            accepted_mac: HashMap::new(),
            wants_mac: HashMap::new(),
            wants: BTreeMap::new(),
            routes: BTreeMap::new(),
            neighbours: BTreeMap::new(),
            fdb: BTreeMap::new(),
            programmed,
        };
        set.update(leases, leases.keys().copied());
        set
    }

    /// Where this node stood when the set was built: a set built for
    /// another local subnet or mode is rebuilt, not updated.
    pub fn local(&self) -> &F::Local {
        &self.local
    }

    /// The accepted remote nodes, by subnet.
    pub fn nodes(&self) -> impl Iterator<Item = &F::Node> {
        self.standing.values().filter_map(|s| s.as_ref().ok())
    }

    /// The leases left out, with why.
    pub fn skipped(&self) -> impl Iterator<Item = &F::Skip> {
        self.standing.values().filter_map(|s| s.as_ref().err())
    }

    /// How many leases are left out (without walking them).
    pub fn skipped_count(&self) -> usize {
        self.skipped
    }

    /// What the desired state is: the union of every accepted node's
    /// entries (equal to `desired_state` of `remote_nodes` of all leases).
    pub fn desired(&self) -> KernelState {
        let mut d = KernelState::default();
        for (k, owners) in &self.routes {
            if let Some((_, t)) = owners.last_key_value() {
                d.routes.insert(*k, *t);
            }
        }
        for (k, owners) in &self.neighbours {
            if let Some((_, m)) = owners.last_key_value() {
                d.neighbours.insert(*k, *m);
            }
        }
        for &(dev, mac, dst) in self.fdb.keys() {
            d.fdb.entry((dev, mac)).or_default().insert(dst);
        }
        d
    }

    /// What the agent believes the kernel holds.
    pub fn programmed(&self) -> &KernelState {
        &self.programmed
    }

    /// Records an operation the kernel accepted.
    pub fn record(&mut self, op: &Op) {
        self.programmed.apply_op(op);
    }

    /// Re-decides the leases at `touched` (present in `leases` or gone from
    /// it) and every lease whose standing depends on theirs, and returns the
    /// operations that bring their entries from `programmed` to desired.
    /// The caller applies them and [`record`](Self::record)s each success.
    pub fn update(
        &mut self,
        leases: &BTreeMap<F::Key, Lease>,
        touched: impl IntoIterator<Item = F::Key>,
    ) -> DeltaOf<F> {
        let mut work: BTreeSet<F::Key> = touched.into_iter().collect();
        let mut delta = DeltaOf::default();
        let mut keys = Touched::default();
        // In subnet order: a lease's standing depends only on those before
        // it, which are final by the time it is taken.
        while let Some(subnet) = work.pop_first() {
            let alone = leases.get(&subnet).and_then(|l| alone::<F>(&self.local, l));
            self.want(subnet, alone.as_ref().and_then(vxlan_mac::<F>));
            let now = alone.map(|a| self.decide(subnet, a));
            let before = self.standing.get(&subnet).cloned();
            if now == before {
                continue;
            }
            let old_node = before.clone().and_then(Result::ok);
            let new_node = now.clone().and_then(Result::ok);
            if let Some(Err(skip)) = &now {
                if before.as_ref().and_then(|b| b.as_ref().err()) != Some(skip) {
                    delta.skipped.push(skip.clone());
                }
            }
            let was_skipped = matches!(before, Some(Err(_)));
            let is_skipped = matches!(now, Some(Err(_)));
            self.skipped = self.skipped + usize::from(is_skipped) - usize::from(was_skipped);
            match &now {
                Some(s) => self.standing.insert(subnet, s.clone()),
                None => self.standing.remove(&subnet),
            };
            if old_node == new_node {
                continue;
            }
            // The leases whose conflict standing may follow this one's.
            for n in old_node.iter().chain(new_node.iter()) {
                work.extend(
                    leases
                        .range(subnet..=F::last(subnet))
                        .map(|(s, _)| *s)
                        .filter(|s| *s != subnet),
                );
                if let Path::Vxlan(m) = F::path(n) {
                    if let Some(set) = self.wants_mac.get(&m) {
                        work.extend(set.range(subnet..).filter(|s| **s != subnet));
                    }
                }
            }
            if let Some(n) = &old_node {
                self.accepted.remove(&subnet);
                if let Path::Vxlan(m) = F::path(n) {
                    if self.accepted_mac.get(&m) == Some(&subnet) {
                        self.accepted_mac.remove(&m);
                    }
                }
                self.entries(subnet, n, false, &mut keys);
            }
            if let Some(n) = &new_node {
                self.accepted.insert(subnet);
                if let Path::Vxlan(m) = F::path(n) {
                    self.accepted_mac.insert(m, subnet);
                }
                self.entries(subnet, n, true, &mut keys);
            }
            delta.peers.push(PeerChangeOf {
                subnet,
                before: old_node,
                after: new_node,
            });
        }
        delta.ops = self.ops(&keys);
        delta
    }

    /// Notes the VTEP MAC the lease at `subnet` would use, if any.
    fn want(&mut self, subnet: F::Key, mac: Option<Mac>) {
        let old = match mac {
            Some(m) => self.wants.insert(subnet, m),
            None => self.wants.remove(&subnet),
        };
        if old == mac {
            return;
        }
        if let Some(m) = old {
            if let Some(set) = self.wants_mac.get_mut(&m) {
                set.remove(&subnet);
                if set.is_empty() {
                    self.wants_mac.remove(&m);
                }
            }
        }
        if let Some(m) = mac {
            self.wants_mac.entry(m).or_default().insert(subnet);
        }
    }

    /// The standing of the lease at `subnet`, `alone` its standing on its
    /// own, given every decision before it.
    fn decide(&self, subnet: F::Key, alone: Standing<F>) -> Standing<F> {
        let node = alone?;
        let overlaps = self
            .accepted
            .range(..subnet)
            .next_back()
            .is_some_and(|n| F::overlaps(*n, subnet));
        let mac_taken = matches!(F::path(&node), Path::Vxlan(m)
            if self.accepted_mac.get(&m).is_some_and(|owner| *owner < subnet));
        if overlaps || mac_taken {
            return Err(F::conflict(subnet));
        }
        Ok(node)
    }

    /// Adds (or removes) the entries `node` asks for.
    fn entries(&mut self, peer: F::Key, node: &F::Node, add: bool, keys: &mut Touched<F::Key>) {
        let mine = F::entries(std::slice::from_ref(node));
        for (dst, target) in mine.routes {
            keys.routes.insert(dst, peer);
            owned(&mut self.routes, dst, peer, add.then_some(target));
        }
        for (key, mac) in mine.neighbours {
            keys.neighbours.insert(key, peer);
            owned(&mut self.neighbours, key, peer, add.then_some(mac));
        }
        for ((dev, mac), dsts) in mine.fdb {
            for dst in dsts {
                let key = (dev, mac, dst);
                keys.fdb.insert(key, peer);
                let owners = self.fdb.entry(key).or_default();
                if add {
                    owners.insert(peer);
                } else {
                    owners.remove(&peer);
                    if owners.is_empty() {
                        self.fdb.remove(&key);
                    }
                }
            }
        }
    }

    /// `diff(desired, programmed)` restricted to the touched entries.
    fn ops(&self, keys: &Touched<F::Key>) -> Vec<(F::Key, Op)> {
        let p = &self.programmed;
        let route = |k: &IpNet| {
            self.routes
                .get(k)
                .and_then(|o| o.last_key_value())
                .map(|(_, t)| *t)
        };
        let neighbour = |k: &(Dev, IpAddr)| {
            self.neighbours
                .get(k)
                .and_then(|o| o.last_key_value())
                .map(|(_, m)| *m)
        };
        let has_fdb = |(dev, mac, dst): &(Dev, Mac, IpAddr)| {
            p.fdb.get(&(*dev, *mac)).is_some_and(|s| s.contains(dst))
        };
        let mut ops = Vec::new();
        for (dst, peer) in &keys.routes {
            if p.routes.contains_key(dst) && route(dst).is_none() {
                ops.push((*peer, Op::DelRoute { dst: *dst }));
            }
        }
        for (&(dev, ip), peer) in &keys.neighbours {
            if p.neighbours.contains_key(&(dev, ip)) && neighbour(&(dev, ip)).is_none() {
                ops.push((*peer, Op::DelNeighbour { dev, ip }));
            }
        }
        for (key @ &(dev, mac, dst), peer) in &keys.fdb {
            if has_fdb(key) && !self.fdb.contains_key(key) {
                ops.push((*peer, Op::DelFdb { dev, mac, dst }));
            }
        }
        for (key @ &(dev, mac, dst), peer) in &keys.fdb {
            if !has_fdb(key) && self.fdb.contains_key(key) {
                ops.push((*peer, Op::AddFdb { dev, mac, dst }));
            }
        }
        for (&(dev, ip), peer) in &keys.neighbours {
            if let Some(mac) = neighbour(&(dev, ip)) {
                if p.neighbours.get(&(dev, ip)) != Some(&mac) {
                    ops.push((*peer, Op::SetNeighbour { dev, ip, mac }));
                }
            }
        }
        for (dst, peer) in &keys.routes {
            if let Some(target) = route(dst) {
                if p.routes.get(dst) != Some(&target) {
                    ops.push((*peer, Op::SetRoute { dst: *dst, target }));
                }
            }
        }
        ops
    }
}

/// Sets (`Some`) or drops (`None`) `peer`'s claim on `key`.
fn owned<K: Ord, P: Ord, V>(map: &mut BTreeMap<K, BTreeMap<P, V>>, key: K, peer: P, v: Option<V>) {
    match v {
        Some(v) => {
            map.entry(key).or_default().insert(peer, v);
        }
        None => {
            if let Some(owners) = map.get_mut(&key) {
                owners.remove(&peer);
                if owners.is_empty() {
                    map.remove(&key);
                }
            }
        }
    }
}

impl KernelState {
    /// What the kernel holds after `op` succeeds.
    pub fn apply_op(&mut self, op: &Op) {
        match *op {
            Op::DelRoute { dst } => {
                self.routes.remove(&dst);
            }
            Op::SetRoute { dst, target } => {
                self.routes.insert(dst, target);
            }
            Op::DelNeighbour { dev, ip } => {
                self.neighbours.remove(&(dev, ip));
            }
            Op::SetNeighbour { dev, ip, mac } => {
                self.neighbours.insert((dev, ip), mac);
            }
            Op::AddFdb { dev, mac, dst } => {
                self.fdb.entry((dev, mac)).or_default().insert(dst);
            }
            Op::DelFdb { dev, mac, dst } => {
                if let Some(set) = self.fdb.get_mut(&(dev, mac)) {
                    set.remove(&dst);
                    if set.is_empty() {
                        self.fdb.remove(&(dev, mac));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
#[cfg(test)]
mod tests6;
