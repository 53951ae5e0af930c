//! The other nodes of an IPv6-only cluster (`EnableIPv4: false`), and the
//! kernel state that reaches them: the pure part of step 4 of
//! docs/design.md's "IPv6-only clusters". Every lease there shares the IPv4
//! part `0.0.0.0/0`, so a node is known by its IPv6 subnet (the lease's own
//! key, `0.0.0.0-0&<v6>-<len>`), never by an IPv4 one; no IPv4 entry is
//! ever produced. vxlan: an onlink route via `<v6 subnet>::` on
//! `twill6.<VNI>`, its neighbour and FDB entry (to `PublicIPv6`); host-gw
//! and DirectRouting: a route via `PublicIPv6` on the underlay.
//!
//! The agent's full pass of an IPv6-only node (`agent::v6only`) runs it.

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use subnet_allocator::Lease;

use super::{choose_path, usable_vtep, Dev, KernelState, Mac, Mode, NoPath, Path};
use crate::agent::underlay6::unusable_underlay_address6;

/// Where this IPv6-only node sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local6 {
    /// The cluster's IPv6 network.
    pub network6: Ipv6Net,
    /// This node's IPv6 subnet.
    pub subnet6: Ipv6Net,
    /// This node's public IPv6 address with the underlay prefix (the L2
    /// segment host-gw and DirectRouting reach directly).
    pub underlay6: Ipv6Net,
    pub mode: Mode,
}

/// One other node of an IPv6-only cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteNode6 {
    pub subnet6: Ipv6Net,
    pub public_ipv6: Ipv6Addr,
    /// `Path::Vxlan` holds the MAC of its `twill6.<VNI>` VTEP.
    pub path: Path,
}

/// Why a lease of an IPv6-only cluster was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip6 {
    /// Not of the IPv6-only form (an IPv4 subnet, or no IPv6 one); the
    /// lease's key.
    NotIpv6Only(String),
    /// No `PublicIPv6`, or one other nodes cannot reach.
    NoPublicIpv6(Ipv6Net),
    OutsideNetwork(Ipv6Net),
    ClaimsOurSubnet(Ipv6Net, Ipv6Addr),
    /// Not a vxlan lease, or no `BackendV6Data` VTEP MAC we can use.
    NoVtep(Ipv6Net),
    /// Overlaps an accepted lease or reuses its VTEP MAC.
    Conflict(Ipv6Net),
    /// host-gw needs the node on our IPv6 underlay subnet.
    NotOnLink(Ipv6Net, Ipv6Addr),
    /// The wireguard backend has no IPv6-only form (refused at plan).
    Unsupported(Ipv6Net),
}

impl fmt::Display for Skip6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip6::NotIpv6Only(k) => {
                write!(f, "lease {k} is not IPv6-only in an IPv6-only cluster")
            }
            Skip6::NoPublicIpv6(s) => write!(f, "lease {s} has no usable PublicIPv6"),
            Skip6::OutsideNetwork(s) => {
                write!(f, "lease {s} is outside the cluster's IPv6 network")
            }
            Skip6::ClaimsOurSubnet(s, ip) => {
                write!(f, "lease {s} of {ip} overlaps this node's subnet")
            }
            Skip6::NoVtep(s) => write!(f, "lease {s} has no usable vxlan BackendV6Data"),
            Skip6::Conflict(s) => {
                write!(f, "lease {s} overlaps another lease or reuses its VTEP MAC")
            }
            Skip6::NotOnLink(s, ip) => write!(
                f,
                "lease {s}: host-gw needs {ip} on this node's underlay subnet (same L2 segment)"
            ),
            Skip6::Unsupported(s) => {
                write!(
                    f,
                    "lease {s}: wireguard is not supported in an IPv6-only cluster"
                )
            }
        }
    }
}

/// The other nodes, from every lease; this node's own lease and every
/// unusable one are left out and reported.
pub fn remote_nodes6(local: &Local6, leases: &[Lease]) -> (Vec<RemoteNode6>, Vec<Skip6>) {
    let mut nodes: Vec<RemoteNode6> = Vec::new();
    let mut macs: HashSet<Mac> = HashSet::new();
    let mut skipped = Vec::new();
    let mut sorted: Vec<(Ipv6Net, &Lease)> = Vec::new();
    for lease in leases {
        match lease.ipv6_subnet.filter(|_| lease.is_ipv6_only()) {
            Some(s6) => sorted.push((s6, lease)),
            None => skipped.push(Skip6::NotIpv6Only(lease.key_name())),
        }
    }
    sorted.sort_by_key(|(s6, _)| *s6);
    let local_ip = local.underlay6.addr();
    for (s6, lease) in sorted {
        let Some(ip6) = lease
            .attrs
            .public_ipv6
            .filter(|ip| unusable_underlay_address6(*ip).is_none())
        else {
            skipped.push(Skip6::NoPublicIpv6(s6));
            continue;
        };
        if s6 == local.subnet6 && ip6 == local_ip {
            continue;
        }
        if !local.network6.contains(&s6) {
            skipped.push(Skip6::OutsideNetwork(s6));
            continue;
        }
        if s6.contains(&local.subnet6) || local.subnet6.contains(&s6) {
            skipped.push(Skip6::ClaimsOurSubnet(s6, ip6));
            continue;
        }
        let on_link = local.underlay6.contains(&ip6) && ip6 != local_ip;
        let path = choose_path(
            local.mode,
            on_link,
            || usable_vtep(lease, lease.attrs.backend_v6_data.as_ref()),
            // The wireguard backend has no IPv6-only form.
            || false,
        );
        let path = match path {
            Ok(p) => p,
            Err(NoPath::NotOnLink) => {
                skipped.push(Skip6::NotOnLink(s6, ip6));
                continue;
            }
            Err(NoPath::NoVtep) => {
                skipped.push(Skip6::NoVtep(s6));
                continue;
            }
            Err(NoPath::NoWireguard) => {
                skipped.push(Skip6::Unsupported(s6));
                continue;
            }
        };
        // Sorted and disjoint: only the last accepted node can overlap.
        let overlaps = nodes
            .last()
            .is_some_and(|n| n.subnet6.contains(&s6) || s6.contains(&n.subnet6));
        let mac_taken = matches!(path, Path::Vxlan(m) if macs.contains(&m));
        if overlaps || mac_taken {
            skipped.push(Skip6::Conflict(s6));
            continue;
        }
        if let Path::Vxlan(m) = path {
            macs.insert(m);
        }
        nodes.push(RemoteNode6 {
            subnet6: s6,
            public_ipv6: ip6,
            path,
        });
    }
    (nodes, skipped)
}

/// The kernel state that reaches these nodes: IPv6 entries only.
pub fn desired_state6(nodes: &[RemoteNode6]) -> KernelState {
    let mut state = KernelState::default();
    for n in nodes {
        match n.path {
            Path::Vxlan(mac) => state.tunnel(
                Dev::Vxlan6,
                n.subnet6.into(),
                n.subnet6.network().into(),
                mac,
                n.public_ipv6.into(),
            ),
            Path::Direct => state.direct(n.subnet6.into(), n.public_ipv6.into()),
            // Never accepted by remote_nodes6.
            Path::Wireguard => {}
        }
    }
    state
}

#[cfg(test)]
mod tests;
