//! The pure allocation rule: given the config, the leases that exist and
//! this node's identity, which subnet should the node hold.

use std::net::Ipv4Addr;

use ipnet::{Ipv4Net, Ipv6Net};
use rand::Rng;

use crate::config::NetworkConfig;
use crate::lease::Lease;

mod ipv6_only;
pub use ipv6_only::allocate_ipv6_only;

/// What the node should do.
// Made once per lease acquisition: boxing the lease buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// This node (same public IP) already holds this lease: keep it.
    Reuse(Lease),
    /// Try to create a lease for this free subnet.
    New(Ipv4Net),
    /// IPv6-only cluster: try to create an IPv6-only lease (key
    /// `0.0.0.0-0&<v6>-<len>`) for this free IPv6 subnet.
    NewIpv6(Ipv6Net),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error(
        "no free subnet left in {min}..={max} of network {network} ({count} subnets, all leased)"
    )]
    Exhausted {
        network: Ipv4Net,
        min: Ipv4Net,
        max: Ipv4Net,
        count: u32,
    },
    #[error(
        "no free IPv6 subnet left in {min}..={max} of IPv6Network {network} ({count} subnets, all leased)"
    )]
    Ipv6Exhausted {
        network: Ipv6Net,
        min: Ipv6Net,
        max: Ipv6Net,
        count: u128,
    },
    #[error("this node has no public IPv6 address, which an IPv6-only cluster (EnableIPv4 false) needs: give the underlay interface a global IPv6 address or pass --public-ipv6")]
    NoPublicIpv6,
    #[error(
        "public IPv6 {public_ipv6} is already used by node {node:?} (its lease {subnet}): two nodes cannot share a public IP; give this node its own address (--public-ipv6, --iface), or delete that lease if node {node:?} is gone"
    )]
    PublicIpv6InUse {
        public_ipv6: std::net::Ipv6Addr,
        subnet: Ipv6Net,
        node: String,
    },
    #[error(
        "public IP {public_ip} is already used by node {node:?} (its lease {subnet}): two nodes cannot share a public IP; give this node its own address (--public-ip, --iface), or delete that lease if node {node:?} is gone"
    )]
    PublicIpInUse {
        public_ip: Ipv4Addr,
        subnet: Ipv4Net,
        node: String,
    },
}

/// Refuses a node whose public IP another named node already leases: both
/// would reuse one lease, share one subnet and one VTEP MAC, and revoke
/// each other's store lease on every renewal. Leases without a node name
/// (flannel's, older twill's) and nodes without one are not told apart.
pub fn check_public_ip(
    existing: &[Lease],
    public_ip: Ipv4Addr,
    node: Option<&str>,
) -> Result<(), AllocError> {
    let Some(node) = node else {
        return Ok(());
    };
    match existing.iter().find(|l| {
        l.attrs.public_ip == public_ip && l.attrs.node_name.as_deref().is_some_and(|n| n != node)
    }) {
        Some(l) => Err(AllocError::PublicIpInUse {
            public_ip,
            subnet: l.subnet,
            node: l.attrs.node_name.clone().unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

/// Chooses the node's subnet. Rules, in order:
/// 1. a lease already held by `public_ip` (and still a member of the
///    network) is reused;
/// 2. `preferred` (the subnet from the node's subnet file) if allocatable
///    and free;
/// 3. a uniformly random free subnet in `[subnet_min, subnet_max]`, random so
///    that nodes joining at once rarely collide.
///
/// On a dual-stack config the IPv6 subnet follows the IPv4 one
/// ([`NetworkConfig::ipv6_subnet_for`]); a subnet whose IPv6 partner is
/// already held by another lease (data written by someone else) counts as
/// taken, so no two leases get the same IPv6 subnet from us. An own lease is
/// then only reused if it is allocatable and its partner is free.
pub fn allocate<R: Rng>(
    cfg: &NetworkConfig,
    existing: &[Lease],
    public_ip: Ipv4Addr,
    preferred: Option<Ipv4Net>,
    rng: &mut R,
) -> Result<Allocation, AllocError> {
    // Lowest subnet first so that a node with several stale leases always
    // picks the same one.
    if let Some(own) = existing
        .iter()
        .filter(|l| l.attrs.public_ip == public_ip && cfg.is_member(l.subnet))
        .filter(|l| cfg.ipv6.is_none() || v6_partner_free(cfg, existing, l.subnet, Some(l)))
        .min_by_key(|l| l.subnet.network())
    {
        return Ok(Allocation::Reuse(own.clone()));
    }

    if let Some(p) = preferred {
        if cfg.is_allocatable(p)
            && !existing.iter().any(|l| overlaps(l.subnet, p))
            && (cfg.ipv6.is_none() || v6_partner_free(cfg, existing, p, None))
        {
            return Ok(Allocation::New(p));
        }
    }

    let taken = taken_intervals(cfg, existing);
    let count = u64::from(cfg.subnet_count());
    let Some(idx) = pick_free(&taken, count, rng) else {
        return Err(AllocError::Exhausted {
            network: cfg.network,
            min: cfg.subnet_min,
            max: cfg.subnet_max,
            count: cfg.subnet_count(),
        });
    };
    Ok(Allocation::New(index_to_subnet(cfg, idx)))
}

/// A uniformly random index in `0..count` outside the sorted, merged,
/// inclusive intervals `taken`; `None` if all are taken.
fn pick_free<R: Rng>(taken: &[(u64, u64)], count: u64, rng: &mut R) -> Option<u64> {
    let used: u64 = taken.iter().map(|(a, b)| b - a + 1).sum();
    let free = count.checked_sub(used).filter(|f| *f > 0)?;
    // The rank-th free index, skipping the merged taken intervals.
    let mut idx = rng.gen_range(0..free);
    for (a, b) in taken {
        if idx >= *a {
            idx += b - a + 1;
        } else {
            break;
        }
    }
    Some(idx)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn overlaps6(a: Ipv6Net, b: Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// True if `v4` has an IPv6 partner and no lease other than `except` holds
/// an IPv6 subnet overlapping it.
fn v6_partner_free(
    cfg: &NetworkConfig,
    existing: &[Lease],
    v4: Ipv4Net,
    except: Option<&Lease>,
) -> bool {
    let Some(v6) = cfg.ipv6_subnet_for(v4) else {
        return false;
    };
    !existing.iter().any(|o| {
        !except.is_some_and(|e| std::ptr::eq(e, o))
            && o.ipv6_subnet.is_some_and(|s| overlaps6(s, v6))
    })
}

fn size(cfg: &NetworkConfig) -> u64 {
    1u64 << (32 - u32::from(cfg.subnet_len))
}

fn index_to_subnet(cfg: &NetworkConfig, idx: u64) -> Ipv4Net {
    let start = u64::from(u32::from(cfg.subnet_min.network())) + idx * size(cfg);
    let addr = Ipv4Addr::from(u32::try_from(start).unwrap_or(u32::MAX));
    Ipv4Net::new(addr, cfg.subnet_len).unwrap_or(cfg.subnet_min)
}

/// Candidate indices covered by existing leases, as sorted, merged,
/// inclusive intervals. Leases of any length count, so a stray /16 lease
/// blocks every /24 inside it.
fn taken_intervals(cfg: &NetworkConfig, existing: &[Lease]) -> Vec<(u64, u64)> {
    let min = u64::from(u32::from(cfg.subnet_min.network()));
    let count = u64::from(cfg.subnet_count());
    let last_end = min + count * size(cfg) - 1;
    let mut iv: Vec<(u64, u64)> = existing
        .iter()
        .filter_map(|l| {
            let s = u64::from(u32::from(l.subnet.network()));
            let e = u64::from(u32::from(l.subnet.broadcast()));
            if e < min || s > last_end {
                return None;
            }
            let a = s.max(min);
            let b = e.min(last_end);
            Some(((a - min) / size(cfg), (b - min) / size(cfg)))
        })
        .collect();
    iv.extend(taken_by_v6(cfg, existing, count));
    merge(iv)
}

/// Sorted and merged (touching or overlapping intervals joined).
fn merge(mut iv: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    iv.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(iv.len());
    for (a, b) in iv {
        match merged.last_mut() {
            Some(last) if a <= last.1 + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Candidate indices whose IPv6 partner is covered by an existing lease's
/// IPv6 subnet (any length), as inclusive intervals.
fn taken_by_v6(cfg: &NetworkConfig, existing: &[Lease], count: u64) -> Vec<(u64, u64)> {
    let Some(v6) = &cfg.ipv6 else {
        return Vec::new();
    };
    let shift = 128 - u32::from(v6.subnet_len);
    let min = u128::from(v6.subnet_min.network());
    // Config validation guarantees the IPv6 range holds `count` subnets,
    // so this stays at or below the end of IPv6SubnetMax.
    let last_end = min + (u128::from(count.saturating_sub(1)) << shift) + ((1u128 << shift) - 1);
    existing
        .iter()
        .filter_map(|l| {
            let s6 = l.ipv6_subnet?;
            let s = u128::from(s6.network());
            let e = u128::from(s6.broadcast());
            if e < min || s > last_end {
                return None;
            }
            let a = (s.max(min) - min) >> shift;
            let b = (e.min(last_end) - min) >> shift;
            // Both are < count, which fits in u64.
            Some((
                u64::try_from(a).unwrap_or(u64::MAX),
                u64::try_from(b).unwrap_or(u64::MAX),
            ))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lease::LeaseAttrs;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json.as_bytes()).unwrap()
    }

    fn lease(subnet: &str, ip: &str) -> Lease {
        Lease {
            subnet: subnet.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs {
                public_ip: ip.parse().unwrap(),
                public_ipv6: None,
                backend_type: "host-gw".into(),
                backend_data: None,
                backend_v6_data: None,
                node_name: None,
                public_key: None,
            },
            lease_id: Some(7),
            ttl_remaining: None,
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn reuses_own_lease_before_preferred() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let existing = vec![
            lease("10.244.7.0/24", "192.0.2.1"),
            lease("10.244.9.0/24", "192.0.2.2"),
        ];
        let mut rng = StdRng::seed_from_u64(1);
        let a = allocate(
            &c,
            &existing,
            ip("192.0.2.2"),
            Some(net("10.244.3.0/24")),
            &mut rng,
        )
        .unwrap();
        assert_eq!(a, Allocation::Reuse(existing[1].clone()));
    }

    #[test]
    fn own_lease_outside_network_is_not_reused() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let existing = vec![lease("10.99.7.0/24", "192.0.2.1")];
        let mut rng = StdRng::seed_from_u64(1);
        let a = allocate(&c, &existing, ip("192.0.2.1"), None, &mut rng).unwrap();
        assert!(
            matches!(a, Allocation::New(n) if c.is_allocatable(n)),
            "{a:?}"
        );
    }

    #[test]
    fn preferred_used_when_free_and_valid() {
        let c = cfg(r#"{"Network":"10.244.0.0/16"}"#);
        let existing = vec![lease("10.244.7.0/24", "192.0.2.1")];
        let mut rng = StdRng::seed_from_u64(2);
        let a = allocate(
            &c,
            &existing,
            ip("192.0.2.5"),
            Some(net("10.244.3.0/24")),
            &mut rng,
        )
        .unwrap();
        assert_eq!(a, Allocation::New(net("10.244.3.0/24")));
    }

    #[test]
    fn preferred_ignored_when_taken_or_invalid() {
        let c = cfg(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.20.0"}"#,
        );
        let existing = vec![lease("10.244.12.0/24", "192.0.2.1")];
        for p in [
            "10.244.12.0/24", // taken
            "10.244.5.0/24",  // below SubnetMin
            "10.244.21.0/24", // above SubnetMax
            "10.244.12.0/25", // wrong length
            "10.245.12.0/24", // other network
        ] {
            let mut rng = StdRng::seed_from_u64(3);
            let a = allocate(&c, &existing, ip("192.0.2.5"), Some(net(p)), &mut rng).unwrap();
            match a {
                Allocation::New(n) => {
                    assert_ne!(n, net(p));
                    assert!(c.is_allocatable(n));
                    assert_ne!(n, net("10.244.12.0/24"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn random_choice_covers_all_free_and_never_taken_or_out_of_bounds() {
        let c = cfg(
            r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.10.0","SubnetMax":"10.244.19.0"}"#,
        );
        let existing = vec![
            lease("10.244.10.0/24", "192.0.2.1"),
            lease("10.244.13.0/24", "192.0.2.2"),
            lease("10.244.14.0/24", "192.0.2.3"),
            lease("10.244.19.0/24", "192.0.2.4"),
            // A foreign, larger lease blocks what it covers.
            lease("10.244.16.0/23", "192.0.2.6"),
        ];
        let expected: HashSet<Ipv4Net> = [
            "10.244.11.0/24",
            "10.244.12.0/24",
            "10.244.15.0/24",
            "10.244.18.0/24",
        ]
        .iter()
        .map(|s| net(s))
        .collect();
        let mut seen = HashSet::new();
        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..400 {
            match allocate(&c, &existing, ip("192.0.2.9"), None, &mut rng).unwrap() {
                Allocation::New(n) => {
                    assert!(expected.contains(&n), "picked {n}");
                    seen.insert(n);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, expected, "every free subnet must be reachable");
    }

    #[test]
    fn exhaustion() {
        let c =
            cfg(r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.3.0"}"#);
        let existing = vec![
            lease("10.244.1.0/24", "192.0.2.1"),
            lease("10.244.2.0/24", "192.0.2.2"),
            lease("10.244.3.0/24", "192.0.2.3"),
        ];
        let mut rng = StdRng::seed_from_u64(5);
        let e = allocate(
            &c,
            &existing,
            ip("192.0.2.9"),
            Some(net("10.244.2.0/24")),
            &mut rng,
        )
        .unwrap_err();
        assert!(matches!(e, AllocError::Exhausted { count: 3, .. }));
        // ...but the holder of one of them still gets its own back.
        let a = allocate(&c, &existing, ip("192.0.2.3"), None, &mut rng).unwrap();
        assert_eq!(a, Allocation::Reuse(existing[2].clone()));
    }

    #[test]
    fn filling_the_network_one_by_one_yields_each_subnet_once() {
        let c = cfg(r#"{"Network":"10.244.0.0/20"}"#);
        let mut existing = Vec::new();
        let mut rng = StdRng::seed_from_u64(6);
        for i in 0..c.subnet_count() {
            let me = Ipv4Addr::from(u32::from(ip("198.18.0.0")) + i);
            match allocate(&c, &existing, me, None, &mut rng).unwrap() {
                Allocation::New(n) => {
                    assert!(c.is_allocatable(n));
                    assert!(!existing.iter().any(|l: &Lease| l.subnet == n));
                    existing.push(lease(&n.to_string(), &me.to_string()));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(existing.len(), 15);
        assert!(allocate(&c, &existing, ip("198.18.1.0"), None, &mut rng).is_err());
    }

    fn with_v6(mut l: Lease, v6: &str) -> Lease {
        l.ipv6_subnet = Some(v6.parse().unwrap());
        l
    }

    const DUAL_SMALL: &str = r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.0","SubnetMax":"10.244.4.0","EnableIPv6":true,"IPv6Network":"fd00::/48"}"#;

    #[test]
    fn foreign_ipv6_subnet_blocks_its_ipv4_partner() {
        let c = cfg(DUAL_SMALL);
        // A lease written by someone else pairs 10.244.1.0 with the IPv6
        // subnet our rule gives 10.244.3.0 (fd00:0:0:3::/64).
        let existing = vec![with_v6(
            lease("10.244.1.0/24", "192.0.2.1"),
            "fd00:0:0:3::/64",
        )];
        let expected: HashSet<Ipv4Net> = ["10.244.2.0/24", "10.244.4.0/24"]
            .iter()
            .map(|s| net(s))
            .collect();
        let mut seen = HashSet::new();
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            match allocate(&c, &existing, ip("192.0.2.9"), None, &mut rng).unwrap() {
                Allocation::New(n) => {
                    assert!(expected.contains(&n), "picked {n}");
                    seen.insert(n);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, expected);
        // The preferred subnet is skipped too when its partner is taken.
        let a = allocate(
            &c,
            &existing,
            ip("192.0.2.9"),
            Some(net("10.244.3.0/24")),
            &mut rng,
        )
        .unwrap();
        assert_ne!(a, Allocation::New(net("10.244.3.0/24")));
        // A larger foreign IPv6 subnet blocks every partner inside it.
        let wide = vec![with_v6(lease("10.99.0.0/24", "192.0.2.1"), "fd00::/62")];
        let a = allocate(&c, &wide, ip("192.0.2.9"), None, &mut rng).unwrap();
        assert_eq!(a, Allocation::New(net("10.244.4.0/24")));
    }

    #[test]
    fn dual_stack_fill_gives_distinct_ipv6_subnets() {
        let c = cfg(DUAL_SMALL);
        let mut existing: Vec<Lease> = Vec::new();
        let mut rng = StdRng::seed_from_u64(8);
        for i in 1..=4u8 {
            let me = format!("192.0.2.{i}");
            match allocate(&c, &existing, ip(&me), None, &mut rng).unwrap() {
                Allocation::New(n) => {
                    let v6 = c.ipv6_subnet_for(n).unwrap();
                    assert!(!existing.iter().any(|l| l.ipv6_subnet == Some(v6)));
                    existing.push(with_v6(lease(&n.to_string(), &me), &v6.to_string()));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            allocate(&c, &existing, ip("192.0.2.99"), None, &mut rng),
            Err(AllocError::Exhausted { count: 4, .. })
        ));
    }

    #[test]
    fn dual_stack_reuse_rules() {
        let c = cfg(DUAL_SMALL);
        let mut rng = StdRng::seed_from_u64(9);
        // An own IPv4-only lease is reused (the store re-keys it).
        let old = lease("10.244.2.0/24", "192.0.2.1");
        let a = allocate(
            &c,
            std::slice::from_ref(&old),
            ip("192.0.2.1"),
            None,
            &mut rng,
        )
        .unwrap();
        assert_eq!(a, Allocation::Reuse(old.clone()));
        // Not when its IPv6 partner is held by another lease...
        let other = with_v6(lease("10.244.1.0/24", "192.0.2.5"), "fd00:0:0:2::/64");
        let a = allocate(&c, &[old.clone(), other], ip("192.0.2.1"), None, &mut rng).unwrap();
        assert!(
            matches!(a, Allocation::New(n) if n == net("10.244.3.0/24") || n == net("10.244.4.0/24")),
            "{a:?}"
        );
        // ...nor when it is a member of the network but outside the range,
        // since it would have no IPv6 partner.
        let outside = lease("10.244.9.0/24", "192.0.2.1");
        let a = allocate(&c, &[outside], ip("192.0.2.1"), None, &mut rng).unwrap();
        assert!(
            matches!(a, Allocation::New(n) if c.is_allocatable(n)),
            "{a:?}"
        );
        // Its own (paired) IPv6 subnet does not block the own lease.
        let own = with_v6(lease("10.244.2.0/24", "192.0.2.1"), "fd00:0:0:2::/64");
        let a = allocate(
            &c,
            std::slice::from_ref(&own),
            ip("192.0.2.1"),
            None,
            &mut rng,
        )
        .unwrap();
        assert_eq!(a, Allocation::Reuse(own));
    }
    fn named(subnet: &str, ip: &str, node: Option<&str>) -> Lease {
        let mut l = lease(subnet, ip);
        l.attrs.node_name = node.map(String::from);
        l
    }

    #[test]
    fn a_public_ip_leased_by_another_named_node_is_refused() {
        let existing = vec![
            named("10.244.1.0/24", "192.0.2.1", Some("a")),
            named("10.244.2.0/24", "192.0.2.2", None),
        ];
        let e = check_public_ip(&existing, ip("192.0.2.1"), Some("b")).unwrap_err();
        assert_eq!(
            e,
            AllocError::PublicIpInUse {
                public_ip: ip("192.0.2.1"),
                subnet: net("10.244.1.0/24"),
                node: "a".into()
            }
        );
        let msg = e.to_string();
        assert!(
            msg.contains("192.0.2.1") && msg.contains("10.244.1.0/24") && msg.contains("\"a\""),
            "{msg}"
        );
        // The same node (a restart), another address, or a side without a
        // name (flannel's leases, older agents) passes.
        assert_eq!(
            check_public_ip(&existing, ip("192.0.2.1"), Some("a")),
            Ok(())
        );
        assert_eq!(
            check_public_ip(&existing, ip("192.0.2.9"), Some("b")),
            Ok(())
        );
        assert_eq!(
            check_public_ip(&existing, ip("192.0.2.2"), Some("b")),
            Ok(())
        );
        assert_eq!(check_public_ip(&existing, ip("192.0.2.1"), None), Ok(()));
    }
}
