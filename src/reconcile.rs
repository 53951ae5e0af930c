//! The pure core of the agent: what the kernel should hold for a lease map
//! (`desired_state`) and the netlink operations that take the kernel from
//! what it holds to that (`diff`). No I/O here: the applier lives in `kernel`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use subnet_allocator::Lease;

pub mod delta;
pub mod ipv6_only;

// The MAC rules (bridge, VTEP) are shared with the CNI plugin.
pub use twill_contract::Mac;

/// How this node reaches the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every other node through the VXLAN device; with `direct_routing`,
    /// nodes on the same underlay subnet get a plain route instead.
    Vxlan { direct_routing: bool },
    /// Plain routes via each node's public IP: all nodes on one L2 segment.
    HostGw,
    /// Every other node through the WireGuard tunnel (encrypted).
    Wireguard,
}

/// How packets reach one remote node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Encapsulated to this VTEP.
    Vxlan(Mac),
    /// Routed straight to the node's public IP on the underlay.
    Direct,
    /// Through the WireGuard tunnel; the peer is the node's lease's key.
    Wireguard,
}

/// One other node, as the data path needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteNode {
    pub subnet: Ipv4Net,
    /// The node's IPv6 pod subnet, when the cluster is dual-stack.
    pub subnet6: Option<Ipv6Net>,
    pub public_ip: Ipv4Addr,
    /// The node's IPv6 underlay address (host-gw / direct routes for IPv6).
    pub public_ipv6: Option<Ipv6Addr>,
    pub path: Path,
    /// The MAC of the node's IPv6-underlay VTEP, when both ends have one:
    /// IPv6 pod traffic then goes through the IPv6 tunnel to `public_ipv6`.
    pub vtep6: Option<Mac>,
}

impl RemoteNode {
    /// The address of the remote VTEP inside the pod network (`<subnet>.0`).
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.subnet.network()
    }
}

/// Which device a route leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dev {
    /// The VXLAN device over the IPv4 underlay (`twill.<VNI>`).
    Vxlan,
    /// The VXLAN device over the IPv6 underlay (`twill6.<VNI>`).
    Vxlan6,
    Underlay,
    /// The WireGuard tunnel device (`twill-wg`).
    Wireguard,
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dev::Vxlan => "vxlan",
            Dev::Vxlan6 => "vxlan6",
            Dev::Underlay => "underlay",
            Dev::Wireguard => "wireguard",
        })
    }
}

/// A route twill owns: next hop and device (VXLAN routes are onlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTarget {
    pub gateway: IpAddr,
    pub dev: Dev,
}

/// Why a lease was left out of the desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Not inside the cluster network.
    OutsideNetwork(Ipv4Net),
    /// Overlaps our own subnet but is held by another public IP.
    ClaimsOurSubnet(Ipv4Net, Ipv4Addr),
    /// Not a vxlan lease, or no backend data / VTEP MAC we can use.
    NoVtep(Ipv4Net),
    /// Another lease already covers this subnet or uses this VTEP MAC.
    Conflict(Ipv4Net),
    /// host-gw needs the node on our underlay subnet (one L2 segment).
    NotOnLink(Ipv4Net, Ipv4Addr),
    /// Not a wireguard lease, or no usable public key in it.
    NoPublicKey(Ipv4Net),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::OutsideNetwork(s) => write!(f, "lease {s} is outside the cluster network"),
            Skip::ClaimsOurSubnet(s, ip) => {
                write!(f, "lease {s} of {ip} overlaps this node's subnet")
            }
            Skip::NoVtep(s) => write!(f, "lease {s} has no usable vxlan backend data"),
            Skip::Conflict(s) => {
                write!(f, "lease {s} overlaps another lease or reuses its VTEP MAC")
            }
            Skip::NotOnLink(s, ip) => write!(
                f,
                "lease {s}: host-gw needs {ip} on this node's underlay subnet (same L2 segment)"
            ),
            Skip::NoPublicKey(s) => {
                write!(f, "lease {s} has no usable wireguard PublicKey")
            }
        }
    }
}

/// What the twill devices should hold: keyed so that a lookup is cheap and
/// iteration order is stable (deterministic op order in tests and logs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelState {
    /// Route destination -> next hop and device.
    pub routes: BTreeMap<IpNet, RouteTarget>,
    /// Neighbour IP (either family) on the VXLAN device -> MAC.
    pub neighbours: BTreeMap<(Dev, IpAddr), Mac>,
    /// FDB on a VXLAN device: (device, MAC) -> remote underlay IPs.
    pub fdb: BTreeMap<(Dev, Mac), BTreeSet<IpAddr>>,
}

impl KernelState {
    /// What reaches `dst` through the tunnel `dev`: an onlink route via the
    /// remote VTEP address `vtep`, its neighbour entry (`mac`), and the FDB
    /// entry sending `mac` to the remote underlay address `remote`.
    pub(crate) fn tunnel(&mut self, dev: Dev, dst: IpNet, vtep: IpAddr, mac: Mac, remote: IpAddr) {
        self.routes.insert(dst, RouteTarget { gateway: vtep, dev });
        self.neighbours.insert((dev, vtep), mac);
        self.fdb.entry((dev, mac)).or_default().insert(remote);
    }

    /// A plain route to `dst` via the node's underlay address `via`.
    pub(crate) fn direct(&mut self, dst: IpNet, via: IpAddr) {
        self.routes.insert(
            dst,
            RouteTarget {
                gateway: via,
                dev: Dev::Underlay,
            },
        );
    }
}

/// Where this node sits: what `remote_nodes` needs besides the leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// The cluster network.
    pub network: Ipv4Net,
    /// This node's subnet.
    pub subnet: Ipv4Net,
    /// This node's IPv6 subnet: IPv6 entries are kept only when it is set.
    pub subnet6: Option<Ipv6Net>,
    /// This node's public IP with the underlay prefix (the L2 segment).
    pub underlay: Ipv4Net,
    pub mode: Mode,
    /// This node has a VXLAN device over the IPv6 underlay.
    pub v6_tunnel: bool,
}

/// Why a lease gives no path to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoPath {
    /// host-gw, and the node is not on our underlay segment.
    NotOnLink,
    /// vxlan, and no usable VTEP MAC.
    NoVtep,
    /// wireguard, and no usable peer.
    NoWireguard,
}

/// How this node (in `mode`) reaches a node: directly when it is `on_link`
/// (host-gw, DirectRouting), else through the tunnel to its VTEP (`vtep`)
/// or its WireGuard peer (`wireguard`: whether it has a usable one).
pub(crate) fn choose_path(
    mode: Mode,
    on_link: bool,
    vtep: impl FnOnce() -> Option<Mac>,
    wireguard: impl FnOnce() -> bool,
) -> Result<Path, NoPath> {
    match mode {
        Mode::HostGw if on_link => Ok(Path::Direct),
        Mode::HostGw => Err(NoPath::NotOnLink),
        Mode::Vxlan {
            direct_routing: true,
        } if on_link => Ok(Path::Direct),
        Mode::Vxlan { .. } => vtep().map(Path::Vxlan).ok_or(NoPath::NoVtep),
        Mode::Wireguard if wireguard() => Ok(Path::Wireguard),
        Mode::Wireguard => Err(NoPath::NoWireguard),
    }
}

/// The VTEP MAC in `data` (a vxlan lease's `BackendData` or
/// `BackendV6Data`), when it is a usable one: unicast, not zero.
pub(crate) fn usable_vtep(
    lease: &Lease,
    data: Option<&subnet_allocator::VxlanData>,
) -> Option<Mac> {
    data.filter(|_| lease.attrs.backend_type == "vxlan")
        .and_then(|d| Mac::parse(&d.vtep_mac))
        .filter(|m| !m.is_zero() && m.0[0] & 1 == 0)
}

/// Builds the desired remote-node list from all leases. The local node's own
/// lease and every lease that cannot be used are left out and reported.
pub fn remote_nodes(local: &Local, leases: &[Lease]) -> (Vec<RemoteNode>, Vec<Skip>) {
    let mut nodes: Vec<RemoteNode> = Vec::new();
    let mut macs: std::collections::HashSet<Mac> = std::collections::HashSet::new();
    let mut skipped = Vec::new();
    let mut sorted: Vec<&Lease> = leases.iter().collect();
    sorted.sort_by_key(|l| l.subnet);
    let local_subnet = local.subnet;
    let local_public_ip = local.underlay.addr();
    for lease in sorted {
        let subnet = lease.subnet;
        let public_ip = lease.attrs.public_ip;
        if subnet == local_subnet && public_ip == local_public_ip {
            continue;
        }
        if !local.network.contains(&subnet) {
            skipped.push(Skip::OutsideNetwork(subnet));
            continue;
        }
        if subnet.contains(&local_subnet) || local_subnet.contains(&subnet) {
            skipped.push(Skip::ClaimsOurSubnet(subnet, public_ip));
            continue;
        }
        let on_link = local.underlay.contains(&public_ip) && public_ip != local_public_ip;
        let path = choose_path(
            local.mode,
            on_link,
            || usable_vtep(lease, lease.attrs.backend_data.as_ref()),
            || crate::wireguard::peers::lease_key(lease).is_some(),
        );
        let path = match path {
            Ok(p) => p,
            Err(NoPath::NotOnLink) => {
                skipped.push(Skip::NotOnLink(subnet, public_ip));
                continue;
            }
            Err(NoPath::NoVtep) => {
                skipped.push(Skip::NoVtep(subnet));
                continue;
            }
            Err(NoPath::NoWireguard) => {
                skipped.push(Skip::NoPublicKey(subnet));
                continue;
            }
        };
        // Leases come sorted by (address, prefix) and accepted ones are
        // disjoint, so the only accepted node this one can overlap is the
        // last one: a linear pass instead of comparing against every node.
        let overlaps = nodes
            .last()
            .is_some_and(|n| n.subnet.contains(&subnet) || subnet.contains(&n.subnet));
        let mac_taken = matches!(path, Path::Vxlan(m) if macs.contains(&m));
        if overlaps || mac_taken {
            skipped.push(Skip::Conflict(subnet));
            continue;
        }
        if let Path::Vxlan(m) = path {
            macs.insert(m);
        }
        // IPv6 rides along on the same path when both ends have it; a v6
        // subnet overlapping ours is dropped (the v4 part still works).
        let subnet6 = match (local.subnet6, lease.ipv6_subnet) {
            (Some(mine), Some(theirs)) if !mine.contains(&theirs) && !theirs.contains(&mine) => {
                Some(theirs)
            }
            _ => None,
        };
        let vtep6 = if local.v6_tunnel && subnet6.is_some() && lease.attrs.public_ipv6.is_some() {
            usable_vtep(lease, lease.attrs.backend_v6_data.as_ref())
        } else {
            None
        };
        nodes.push(RemoteNode {
            subnet,
            subnet6,
            public_ip,
            public_ipv6: lease.attrs.public_ipv6,
            path,
            vtep6,
        });
    }
    (nodes, skipped)
}

/// The kernel state that reaches these remote nodes.
pub fn desired_state(nodes: &[RemoteNode]) -> KernelState {
    let mut state = KernelState::default();
    for node in nodes {
        match node.path {
            Path::Vxlan(mac) => {
                state.tunnel(
                    Dev::Vxlan,
                    node.subnet.into(),
                    node.vtep_ip().into(),
                    mac,
                    node.public_ip.into(),
                );
                if let Some(s6) = node.subnet6 {
                    // Over the IPv6 underlay when both ends have a tunnel
                    // there; else inside the IPv4 tunnel, where the remote
                    // VTEP answers to `<v6 subnet>::` with its IPv4-tunnel MAC.
                    let (dev, vmac, dst) = match (node.vtep6, node.public_ipv6) {
                        (Some(m6), Some(ip6)) => (Dev::Vxlan6, m6, IpAddr::from(ip6)),
                        _ => (Dev::Vxlan, mac, IpAddr::from(node.public_ip)),
                    };
                    state.tunnel(dev, s6.into(), s6.network().into(), vmac, dst);
                }
            }
            Path::Wireguard => {
                // Onlink via the remote subnet's first address, so that the
                // route has a gateway like every route twill owns.
                for (dst, gateway) in [(
                    IpNet::from(node.subnet),
                    IpAddr::from(node.subnet.network()),
                )]
                .into_iter()
                .chain(node.subnet6.map(|s6| (s6.into(), s6.network().into())))
                {
                    state.routes.insert(
                        dst,
                        RouteTarget {
                            gateway,
                            dev: Dev::Wireguard,
                        },
                    );
                }
            }
            Path::Direct => {
                state.direct(node.subnet.into(), node.public_ip.into());
                if let (Some(s6), Some(ip6)) = (node.subnet6, node.public_ipv6) {
                    state.direct(s6.into(), ip6.into());
                }
            }
        }
    }
    state
}

/// One netlink change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DelRoute { dst: IpNet },
    DelNeighbour { dev: Dev, ip: IpAddr },
    DelFdb { dev: Dev, mac: Mac, dst: IpAddr },
    AddFdb { dev: Dev, mac: Mac, dst: IpAddr },
    SetNeighbour { dev: Dev, ip: IpAddr, mac: Mac },
    SetRoute { dst: IpNet, target: RouteTarget },
}

impl Op {
    /// A short stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::DelRoute { .. } => "del_route",
            Op::DelNeighbour { .. } => "del_neighbour",
            Op::DelFdb { .. } => "del_fdb",
            Op::AddFdb { .. } => "add_fdb",
            Op::SetNeighbour { .. } => "set_neighbour",
            Op::SetRoute { .. } => "set_route",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::DelRoute { dst } => write!(f, "delete route {dst}"),
            Op::DelNeighbour { dev, ip } => write!(f, "delete neighbour {ip} ({dev})"),
            Op::DelFdb { dev, mac, dst } => write!(f, "delete fdb {mac} dst {dst} ({dev})"),
            Op::AddFdb { dev, mac, dst } => write!(f, "add fdb {mac} dst {dst} ({dev})"),
            Op::SetNeighbour { dev, ip, mac } => {
                write!(f, "set neighbour {ip} lladdr {mac} ({dev})")
            }
            Op::SetRoute { dst, target } => match target.dev {
                Dev::Underlay => write!(f, "set route {dst} via {} (underlay)", target.gateway),
                dev => write!(f, "set route {dst} via {} onlink ({dev})", target.gateway),
            },
        }
    }
}

impl Skip {
    /// The subnet of the skipped lease.
    pub fn subnet(&self) -> Ipv4Net {
        match self {
            Skip::OutsideNetwork(s)
            | Skip::ClaimsOurSubnet(s, _)
            | Skip::NoVtep(s)
            | Skip::Conflict(s)
            | Skip::NotOnLink(s, _)
            | Skip::NoPublicKey(s) => *s,
        }
    }
}

/// Finds the node an operation is about among leases (current or recently
/// gone), for logs that name every node by subnet and public IP. Built once
/// per reconcile pass that has operations, then each lookup is logarithmic.
pub struct NodeIndex<'a> {
    by_subnet: BTreeMap<Ipv4Net, &'a Lease>,
    by_subnet6: BTreeMap<Ipv6Net, &'a Lease>,
    by_mac: std::collections::HashMap<Mac, &'a Lease>,
    by_ip: std::collections::HashMap<IpAddr, &'a Lease>,
}

impl<'a> NodeIndex<'a> {
    pub fn new(leases: impl IntoIterator<Item = &'a Lease>) -> Self {
        let mut idx = NodeIndex {
            by_subnet: BTreeMap::new(),
            by_subnet6: BTreeMap::new(),
            by_mac: std::collections::HashMap::new(),
            by_ip: std::collections::HashMap::new(),
        };
        for l in leases {
            idx.by_subnet.insert(l.subnet, l);
            if let Some(s6) = l.ipv6_subnet {
                idx.by_subnet6.insert(s6, l);
            }
            for d in [
                l.attrs.backend_data.as_ref(),
                l.attrs.backend_v6_data.as_ref(),
            ]
            .into_iter()
            .flatten()
            {
                if let Some(m) = Mac::parse(&d.vtep_mac) {
                    idx.by_mac.insert(m, l);
                }
            }
            idx.by_ip.insert(l.attrs.public_ip.into(), l);
            if let Some(ip6) = l.attrs.public_ipv6 {
                idx.by_ip.insert(ip6.into(), l);
            }
        }
        idx
    }

    /// The lease whose subnet holds `ip`: the last subnet starting at or
    /// before it (leases do not overlap), if it contains it.
    fn covering(&self, ip: IpAddr) -> Option<&'a Lease> {
        match ip {
            IpAddr::V4(v4) => self
                .by_subnet
                .range(..=Ipv4Net::from(v4))
                .next_back()
                .filter(|(s, _)| s.contains(&v4))
                .map(|(_, l)| *l),
            IpAddr::V6(v6) => self
                .by_subnet6
                .range(..=Ipv6Net::from(v6))
                .next_back()
                .filter(|(s, _)| s.contains(&v6))
                .map(|(_, l)| *l),
        }
    }

    pub fn find(&self, op: &Op) -> Option<&'a Lease> {
        match op {
            Op::DelRoute { dst } | Op::SetRoute { dst, .. } => self.covering(dst.network()),
            Op::DelNeighbour { ip, .. } | Op::SetNeighbour { ip, .. } => self.covering(*ip),
            Op::DelFdb { mac, dst, .. } | Op::AddFdb { mac, dst, .. } => self
                .by_mac
                .get(mac)
                .or_else(|| self.by_ip.get(dst))
                .copied(),
        }
    }
}

/// The operations that turn `actual` into `desired`, and nothing else: an
/// entry already right is never touched. Removals come first (routes before
/// the neighbours and FDB entries they use), then additions in the reverse
/// order (FDB and neighbour before the route that needs them), so that a
/// route never points at a VTEP the kernel cannot reach yet.
pub fn diff(desired: &KernelState, actual: &KernelState) -> Vec<Op> {
    let mut ops = Vec::new();
    for dst in actual.routes.keys() {
        if !desired.routes.contains_key(dst) {
            ops.push(Op::DelRoute { dst: *dst });
        }
    }
    for &(dev, ip) in actual.neighbours.keys() {
        if !desired.neighbours.contains_key(&(dev, ip)) {
            ops.push(Op::DelNeighbour { dev, ip });
        }
    }
    for (&(dev, mac), dsts) in &actual.fdb {
        let wanted = desired.fdb.get(&(dev, mac));
        for dst in dsts {
            if !wanted.is_some_and(|w| w.contains(dst)) {
                ops.push(Op::DelFdb {
                    dev,
                    mac,
                    dst: *dst,
                });
            }
        }
    }
    for (&(dev, mac), dsts) in &desired.fdb {
        let have = actual.fdb.get(&(dev, mac));
        for dst in dsts {
            if !have.is_some_and(|h| h.contains(dst)) {
                ops.push(Op::AddFdb {
                    dev,
                    mac,
                    dst: *dst,
                });
            }
        }
    }
    for (&(dev, ip), mac) in &desired.neighbours {
        if actual.neighbours.get(&(dev, ip)) != Some(mac) {
            ops.push(Op::SetNeighbour { dev, ip, mac: *mac });
        }
    }
    for (dst, target) in &desired.routes {
        // An IPv4 route replace matches on destination, so it also moves a
        // route between devices.
        if actual.routes.get(dst) != Some(target) {
            ops.push(Op::SetRoute {
                dst: *dst,
                target: *target,
            });
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use subnet_allocator::{LeaseAttrs, VxlanData};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    /// A route-map key (either family).
    fn k(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    /// A neighbour-map key (either family).
    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    /// A neighbour key on the IPv4 tunnel.
    fn nv(s: &str) -> (Dev, IpAddr) {
        (Dev::Vxlan, a(s))
    }
    /// An FDB key on the IPv4 tunnel.
    fn fv(m: &str) -> (Dev, Mac) {
        (Dev::Vxlan, Mac::parse(m).unwrap())
    }

    fn lease(subnet: &str, public_ip: &str, mac: &str) -> Lease {
        Lease {
            subnet: net(subnet),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip(public_ip),
                public_ipv6: None,
                backend_type: "vxlan".into(),
                backend_data: Some(VxlanData {
                    vni: 1,
                    vtep_mac: mac.into(),
                }),
                backend_v6_data: None,
                node_name: None,
                public_key: None,
            },
            lease_id: None,
            ttl_remaining: None,
        }
    }

    const NETWORK: &str = "10.244.0.0/16";
    const LOCAL: &str = "10.244.1.0/24";

    fn local(mode: Mode) -> Local {
        Local {
            network: net(NETWORK),
            subnet: net(LOCAL),
            subnet6: None,
            underlay: net("192.0.2.1/24"),
            mode,
            v6_tunnel: false,
        }
    }

    fn nodes(leases: &[Lease]) -> (Vec<RemoteNode>, Vec<Skip>) {
        remote_nodes(
            &local(Mode::Vxlan {
                direct_routing: false,
            }),
            leases,
        )
    }

    fn vx(gw: &str) -> RouteTarget {
        RouteTarget {
            gateway: ip(gw).into(),
            dev: Dev::Vxlan,
        }
    }

    #[test]
    fn own_lease_is_left_out() {
        let (n, s) = nodes(&[
            lease(LOCAL, "192.0.2.1", "0e:01:c0:00:02:01"),
            lease("10.244.2.0/24", "192.0.2.2", "0e:01:c0:00:02:02"),
        ]);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].subnet, net("10.244.2.0/24"));
        assert!(s.is_empty());
    }

    #[test]
    fn unusable_leases_are_skipped_with_a_reason() {
        let mut hostgw = lease("10.244.5.0/24", "192.0.2.5", "0e:01:c0:00:02:05");
        hostgw.attrs.backend_type = "host-gw".into();
        let mut nodata = lease("10.244.6.0/24", "192.0.2.6", "0e:01:c0:00:02:06");
        nodata.attrs.backend_data = None;
        let (n, s) = nodes(&[
            lease("10.245.0.0/24", "192.0.2.9", "0e:01:c0:00:02:09"),
            lease(LOCAL, "192.0.2.3", "0e:01:c0:00:02:03"),
            lease("10.244.4.0/24", "192.0.2.4", "not-a-mac"),
            lease("10.244.7.0/24", "192.0.2.7", "01:00:5e:00:00:01"),
            lease("10.244.8.0/24", "192.0.2.8", "00:00:00:00:00:00"),
            hostgw,
            nodata,
        ]);
        assert!(n.is_empty(), "{n:?}");
        assert_eq!(
            s,
            vec![
                Skip::ClaimsOurSubnet(net(LOCAL), ip("192.0.2.3")),
                Skip::NoVtep(net("10.244.4.0/24")),
                Skip::NoVtep(net("10.244.5.0/24")),
                Skip::NoVtep(net("10.244.6.0/24")),
                Skip::NoVtep(net("10.244.7.0/24")),
                Skip::NoVtep(net("10.244.8.0/24")),
                Skip::OutsideNetwork(net("10.245.0.0/24")),
            ]
        );
    }

    #[test]
    fn overlapping_or_duplicate_mac_leases_keep_the_first() {
        let (n, s) = nodes(&[
            lease("10.244.2.0/24", "192.0.2.2", "0e:01:c0:00:02:02"),
            lease("10.244.2.0/23", "192.0.2.3", "0e:01:c0:00:02:03"),
            lease("10.244.9.0/24", "192.0.2.9", "0e:01:c0:00:02:03"),
        ]);
        // Sorted by subnet: 10.244.2.0/23 comes first and wins the overlap.
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].subnet, net("10.244.2.0/23"));
        assert_eq!(
            s,
            vec![
                Skip::Conflict(net("10.244.2.0/24")),
                Skip::Conflict(net("10.244.9.0/24"))
            ]
        );
    }

    fn two_nodes() -> KernelState {
        let (n, _) = nodes(&[
            lease("10.244.2.0/24", "192.0.2.2", "0e:01:c0:00:02:02"),
            lease("10.244.3.0/24", "192.0.2.3", "0e:01:c0:00:02:03"),
        ]);
        desired_state(&n)
    }

    #[test]
    fn desired_state_has_route_neighbour_and_fdb_per_node() {
        let d = two_nodes();
        assert_eq!(d.routes.get(&k("10.244.2.0/24")), Some(&vx("10.244.2.0")));
        assert_eq!(
            d.neighbours.get(&nv("10.244.3.0")),
            Some(&Mac::parse("0e:01:c0:00:02:03").unwrap())
        );
        let fdb = d.fdb.get(&fv("0e:01:c0:00:02:02")).unwrap();
        assert_eq!(
            fdb.iter().copied().collect::<Vec<_>>(),
            vec![a("192.0.2.2")]
        );
        assert_eq!(d.routes.len(), 2);
        assert_eq!(d.neighbours.len(), 2);
        assert_eq!(d.fdb.len(), 2);
    }

    #[test]
    fn empty_kernel_gets_everything_fdb_and_neighbour_before_route() {
        let d = two_nodes();
        let ops = diff(&d, &KernelState::default());
        assert_eq!(ops.len(), 6);
        let pos = |pred: &dyn Fn(&Op) -> bool| ops.iter().position(pred).unwrap();
        let route = pos(&|o| matches!(o, Op::SetRoute { dst, .. } if *dst == k("10.244.2.0/24")));
        let neigh = pos(&|o| matches!(o, Op::SetNeighbour { ip: i, .. } if *i == a("10.244.2.0")));
        let fdb = pos(&|o| matches!(o, Op::AddFdb { dst, .. } if *dst == a("192.0.2.2")));
        assert!(fdb < route && neigh < route);
    }

    #[test]
    fn converged_kernel_gets_no_ops() {
        let d = two_nodes();
        assert_eq!(diff(&d, &d.clone()), vec![]);
    }

    #[test]
    fn stale_entries_are_removed_routes_first() {
        let actual = two_nodes();
        let ops = diff(&KernelState::default(), &actual);
        assert_eq!(ops.len(), 6);
        assert!(matches!(ops[0], Op::DelRoute { .. }));
        assert!(matches!(ops[1], Op::DelRoute { .. }));
        assert!(ops[2..4]
            .iter()
            .all(|o| matches!(o, Op::DelNeighbour { .. })));
        assert!(ops[4..].iter().all(|o| matches!(o, Op::DelFdb { .. })));
    }

    #[test]
    fn changed_mac_and_ip_are_fixed_in_place() {
        let desired = two_nodes();
        let mut actual = desired.clone();
        let old = Mac::parse("0e:01:c0:00:02:02").unwrap();
        let wrong = Mac::parse("0e:01:c0:00:02:99").unwrap();
        actual.neighbours.insert(nv("10.244.2.0"), wrong);
        let key = (Dev::Vxlan, old);
        actual.fdb.get_mut(&key).unwrap().clear();
        actual.fdb.get_mut(&key).unwrap().insert(a("192.0.2.99"));
        actual.routes.insert(k("10.244.3.0/24"), vx("10.244.3.7"));
        let ops = diff(&desired, &actual);
        assert_eq!(
            ops,
            vec![
                Op::DelFdb {
                    dev: Dev::Vxlan,
                    mac: old,
                    dst: a("192.0.2.99")
                },
                Op::AddFdb {
                    dev: Dev::Vxlan,
                    mac: old,
                    dst: a("192.0.2.2")
                },
                Op::SetNeighbour {
                    dev: Dev::Vxlan,
                    ip: a("10.244.2.0"),
                    mac: old
                },
                Op::SetRoute {
                    dst: k("10.244.3.0/24"),
                    target: vx("10.244.3.0")
                },
            ]
        );
    }

    #[test]
    fn applying_the_diff_converges() {
        // Model the applier on plain data: applying ops to `actual` must make
        // it equal to `desired`, and the next diff must be empty.
        let desired = two_nodes();
        let mut actual = KernelState::default();
        actual.routes.insert(k("10.244.9.0/24"), vx("10.244.9.0"));
        actual
            .neighbours
            .insert(nv("10.244.9.0"), Mac::parse("0e:01:c0:00:02:09").unwrap());
        actual
            .fdb
            .entry(fv("0e:01:c0:00:02:09"))
            .or_default()
            .insert(a("192.0.2.9"));
        for op in diff(&desired, &actual) {
            match op {
                Op::DelRoute { dst } => {
                    actual.routes.remove(&dst);
                }
                Op::DelNeighbour { dev, ip } => {
                    actual.neighbours.remove(&(dev, ip));
                }
                Op::DelFdb { dev, mac, dst } => {
                    let set = actual.fdb.get_mut(&(dev, mac)).unwrap();
                    set.remove(&dst);
                    if set.is_empty() {
                        actual.fdb.remove(&(dev, mac));
                    }
                }
                Op::AddFdb { dev, mac, dst } => {
                    actual.fdb.entry((dev, mac)).or_default().insert(dst);
                }
                Op::SetNeighbour { dev, ip, mac } => {
                    actual.neighbours.insert((dev, ip), mac);
                }
                Op::SetRoute { dst, target } => {
                    actual.routes.insert(dst, target);
                }
            }
        }
        assert_eq!(actual, desired);
        assert!(diff(&desired, &actual).is_empty());
    }

    fn direct(gw: &str) -> RouteTarget {
        RouteTarget {
            gateway: ip(gw).into(),
            dev: Dev::Underlay,
        }
    }

    #[test]
    fn a_contained_lease_after_a_rejected_one_is_still_a_conflict() {
        // /16 accepted; the /24s inside it are rejected, however many.
        let (n, s) = remote_nodes(
            &Local {
                network: net("10.0.0.0/8"),
                subnet: net(LOCAL),
                subnet6: None,
                underlay: net("192.0.2.1/24"),
                mode: Mode::Vxlan {
                    direct_routing: false,
                },
                v6_tunnel: false,
            },
            &[
                lease("10.9.0.0/16", "192.0.2.2", "0e:01:c0:00:02:02"),
                lease("10.9.1.0/24", "192.0.2.3", "0e:01:c0:00:02:03"),
                lease("10.9.2.0/24", "192.0.2.4", "0e:01:c0:00:02:04"),
                lease("10.10.0.0/24", "192.0.2.5", "0e:01:c0:00:02:05"),
            ],
        );
        assert_eq!(
            n.iter().map(|x| x.subnet).collect::<Vec<_>>(),
            vec![net("10.9.0.0/16"), net("10.10.0.0/24")]
        );
        assert_eq!(
            s,
            vec![
                Skip::Conflict(net("10.9.1.0/24")),
                Skip::Conflict(net("10.9.2.0/24"))
            ]
        );
    }

    #[test]
    fn host_gw_routes_via_public_ip_and_skips_off_link_nodes() {
        let mut hg = lease("10.244.4.0/24", "192.0.2.4", "0e:01:c0:00:02:04");
        hg.attrs.backend_type = "host-gw".into();
        hg.attrs.backend_data = None;
        let (n, s) = remote_nodes(
            &local(Mode::HostGw),
            &[
                lease("10.244.2.0/24", "192.0.2.2", "0e:01:c0:00:02:02"),
                lease("10.244.3.0/24", "198.18.0.3", "0e:01:c0:00:02:03"),
                hg,
            ],
        );
        assert_eq!(
            s,
            vec![Skip::NotOnLink(net("10.244.3.0/24"), ip("198.18.0.3"))]
        );
        let d = desired_state(&n);
        assert_eq!(
            d.routes.get(&k("10.244.2.0/24")),
            Some(&direct("192.0.2.2"))
        );
        assert_eq!(
            d.routes.get(&k("10.244.4.0/24")),
            Some(&direct("192.0.2.4"))
        );
        assert_eq!(d.routes.len(), 2);
        assert!(d.neighbours.is_empty() && d.fdb.is_empty());
    }

    #[test]
    fn direct_routing_picks_direct_on_link_and_vxlan_elsewhere() {
        let (n, s) = remote_nodes(
            &local(Mode::Vxlan {
                direct_routing: true,
            }),
            &[
                lease("10.244.2.0/24", "192.0.2.2", "0e:01:c0:00:02:02"),
                lease("10.244.3.0/24", "198.18.0.3", "0e:01:c0:00:02:03"),
            ],
        );
        assert!(s.is_empty());
        let d = desired_state(&n);
        assert_eq!(
            d.routes.get(&k("10.244.2.0/24")),
            Some(&direct("192.0.2.2"))
        );
        assert_eq!(d.routes.get(&k("10.244.3.0/24")), Some(&vx("10.244.3.0")));
        assert_eq!(d.neighbours.len(), 1);
        assert_eq!(d.fdb.len(), 1);
    }

    #[test]
    fn a_route_moving_between_devices_is_replaced_in_place() {
        let mut actual = KernelState::default();
        actual.routes.insert(k("10.244.2.0/24"), vx("10.244.2.0"));
        let mut desired = KernelState::default();
        desired
            .routes
            .insert(k("10.244.2.0/24"), direct("192.0.2.2"));
        assert_eq!(
            diff(&desired, &actual),
            vec![Op::SetRoute {
                dst: k("10.244.2.0/24"),
                target: direct("192.0.2.2")
            }]
        );
    }

    #[test]
    fn dual_stack_adds_ipv6_routes_and_neighbours_on_the_same_vtep() {
        let mut l2 = lease("10.244.2.0/24", "192.0.2.2", "0e:01:c0:00:02:02");
        l2.ipv6_subnet = Some("fd00:10:244:2::/64".parse().unwrap());
        // A v6 subnet equal to ours is dropped; its v4 part still works.
        let mut l3 = lease("10.244.3.0/24", "192.0.2.3", "0e:01:c0:00:02:03");
        l3.ipv6_subnet = Some("fd00:10:244:1::/64".parse().unwrap());
        let mut me = local(Mode::Vxlan {
            direct_routing: false,
        });
        me.subnet6 = Some("fd00:10:244:1::/64".parse().unwrap());
        let (n, s) = remote_nodes(&me, &[l2.clone(), l3]);
        assert!(s.is_empty());
        let d = desired_state(&n);
        assert_eq!(
            d.routes.get(&k("fd00:10:244:2::/64")),
            Some(&RouteTarget {
                gateway: a("fd00:10:244:2::"),
                dev: Dev::Vxlan
            })
        );
        assert_eq!(
            d.neighbours.get(&nv("fd00:10:244:2::")),
            Some(&Mac::parse("0e:01:c0:00:02:02").unwrap())
        );
        assert_eq!(d.routes.len(), 3, "{:?}", d.routes);
        assert_eq!(
            d.fdb.len(),
            2,
            "one FDB entry per VTEP serves both families"
        );

        // Without IPv6 on this node no IPv6 entry appears at all.
        let (n, _) = nodes(&[l2]);
        let d = desired_state(&n);
        assert!(d.routes.keys().all(|r| matches!(r, IpNet::V4(_))));
        assert!(d.neighbours.keys().all(|(_, ip)| ip.is_ipv4()));
    }

    #[test]
    fn host_gw_ipv6_routes_need_the_peers_ipv6_address() {
        let mut with = lease("10.244.2.0/24", "192.0.2.2", "0e:01:c0:00:02:02");
        with.ipv6_subnet = Some("fd00:10:244:2::/64".parse().unwrap());
        with.attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        let mut without = lease("10.244.3.0/24", "192.0.2.3", "0e:01:c0:00:02:03");
        without.ipv6_subnet = Some("fd00:10:244:3::/64".parse().unwrap());
        let mut me = local(Mode::HostGw);
        me.subnet6 = Some("fd00:10:244:1::/64".parse().unwrap());
        let (n, _) = remote_nodes(&me, &[with, without]);
        let d = desired_state(&n);
        assert_eq!(
            d.routes.get(&k("fd00:10:244:2::/64")),
            Some(&RouteTarget {
                gateway: a("2001:db8::2"),
                dev: Dev::Underlay
            })
        );
        assert!(!d.routes.contains_key(&k("fd00:10:244:3::/64")));
        assert_eq!(d.routes.len(), 3);
    }

    #[test]
    fn ipv6_goes_through_the_ipv6_tunnel_when_both_ends_have_one() {
        let mut both = lease("10.244.2.0/24", "192.0.2.2", "0e:01:c0:00:02:02");
        both.ipv6_subnet = Some("fd00:10:244:2::/64".parse().unwrap());
        both.attrs.public_ipv6 = Some("2001:db8::2".parse().unwrap());
        both.attrs.backend_v6_data = Some(VxlanData {
            vni: 1,
            vtep_mac: "0e:81:00:00:00:02".into(),
        });
        // No IPv6 underlay on this peer: its IPv6 rides the IPv4 tunnel.
        let mut v4only = lease("10.244.3.0/24", "192.0.2.3", "0e:01:c0:00:02:03");
        v4only.ipv6_subnet = Some("fd00:10:244:3::/64".parse().unwrap());
        let mut me = local(Mode::Vxlan {
            direct_routing: false,
        });
        me.subnet6 = Some("fd00:10:244:1::/64".parse().unwrap());
        me.v6_tunnel = true;
        let (n, _) = remote_nodes(&me, &[both.clone(), v4only.clone()]);
        let d = desired_state(&n);
        assert_eq!(
            d.routes.get(&k("fd00:10:244:2::/64")),
            Some(&RouteTarget {
                gateway: a("fd00:10:244:2::"),
                dev: Dev::Vxlan6
            })
        );
        let m6 = Mac::parse("0e:81:00:00:00:02").unwrap();
        assert_eq!(
            d.neighbours.get(&(Dev::Vxlan6, a("fd00:10:244:2::"))),
            Some(&m6)
        );
        assert_eq!(
            d.fdb
                .get(&(Dev::Vxlan6, m6))
                .map(|s| s.iter().copied().collect::<Vec<_>>()),
            Some(vec![a("2001:db8::2")])
        );
        assert_eq!(
            d.routes.get(&k("fd00:10:244:3::/64")).map(|r| r.dev),
            Some(Dev::Vxlan)
        );
        // Without a local IPv6 tunnel everything IPv6 rides the IPv4 one.
        me.v6_tunnel = false;
        let (n, _) = remote_nodes(&me, &[both, v4only]);
        let d = desired_state(&n);
        assert!(d.routes.values().all(|r| r.dev == Dev::Vxlan));
        assert!(d.fdb.keys().all(|(dev, _)| *dev == Dev::Vxlan));
    }

    #[test]
    fn op_node_finds_the_lease_an_operation_is_about() {
        let l2 = lease("10.244.2.0/24", "192.0.2.2", "0e:01:c0:00:02:02");
        let l3 = lease("10.244.3.0/24", "192.0.2.3", "0e:01:c0:00:02:03");
        let all = [l2.clone(), l3.clone()];
        let op = Op::SetRoute {
            dst: k("10.244.3.0/24"),
            target: vx("10.244.3.0"),
        };
        let idx = NodeIndex::new(&all);
        assert_eq!(idx.find(&op), Some(&l3));
        let op = Op::DelNeighbour {
            dev: Dev::Vxlan,
            ip: a("10.244.2.0"),
        };
        assert_eq!(idx.find(&op), Some(&l2));
        let op = Op::DelFdb {
            dev: Dev::Vxlan,
            mac: Mac::parse("0e:01:c0:00:02:03").unwrap(),
            dst: a("192.0.2.99"),
        };
        assert_eq!(idx.find(&op), Some(&l3));
        let op = Op::DelFdb {
            dev: Dev::Vxlan,
            mac: Mac::parse("0e:01:c0:00:02:77").unwrap(),
            dst: a("192.0.2.2"),
        };
        assert_eq!(
            idx.find(&op),
            Some(&l2),
            "by public IP when the MAC is unknown"
        );
        let op = Op::DelRoute {
            dst: k("10.244.9.0/24"),
        };
        assert_eq!(idx.find(&op), None);
        let op = Op::DelRoute {
            dst: k("10.244.1.0/24"),
        };
        assert_eq!(idx.find(&op), None, "a gap between leases is no node");
    }
}
