//! The allocation rule of an IPv6-only cluster (`EnableIPv4: false`): a
//! node holds an IPv6 subnet only, under flannel's key
//! `0.0.0.0-0&<v6>-<len>`. Every IPv6-only lease has the same IPv4 part and
//! the same `PublicIP` (`0.0.0.0`), so the node is told by its `PublicIPv6`
//! and the lease by its IPv6 subnet.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use rand::Rng;

use super::{merge, overlaps6, pick_free, taken_by_v6, AllocError, Allocation};
use crate::config::{Ipv6Config, NetworkConfig};
use crate::lease::{Lease, LeaseAttrs};

/// Chooses an IPv6-only node's subnet, by the rules of
/// [`allocate`](super::allocate) with the IPv6 subnet and `PublicIPv6` in
/// place of the IPv4 ones:
/// 1. an IPv6-only lease already held by `attrs.public_ipv6` (and still a
///    member of `IPv6Network` with `IPv6SubnetLen`) is reused, lowest first;
/// 2. `preferred` (from the node's subnet file) if allocatable and free;
/// 3. a uniformly random free subnet in `[IPv6SubnetMin, IPv6SubnetMax]`.
///
/// A subnet overlapped by any lease's IPv6 subnet (dual-stack ones too)
/// is taken. `NoPublicIpv6` without a public IPv6; `PublicIpv6InUse` if
/// another named node's lease has this node's public IPv6.
pub fn allocate_ipv6_only<R: Rng>(
    cfg: &NetworkConfig,
    existing: &[Lease],
    attrs: &LeaseAttrs,
    preferred: Option<Ipv6Net>,
    rng: &mut R,
) -> Result<Allocation, AllocError> {
    let Some(v6) = cfg.ipv6.as_ref().filter(|_| cfg.is_ipv6_only()) else {
        // Callers only come here for an IPv6-only config, which always has
        // its IPv6 half.
        return Err(AllocError::NoPublicIpv6);
    };
    let public_ipv6 = attrs.public_ipv6.ok_or(AllocError::NoPublicIpv6)?;
    check_public_ipv6(existing, public_ipv6, attrs.node_name.as_deref())?;
    if let Some(own) = existing
        .iter()
        .filter(|l| l.is_ipv6_only() && l.attrs.public_ipv6 == Some(public_ipv6))
        .filter(|l| l.ipv6_subnet.is_some_and(|s| is_member(v6, s)))
        .min_by_key(|l| l.ipv6_subnet.map(|s| s.network()))
    {
        return Ok(Allocation::Reuse(own.clone()));
    }
    let free = |s: Ipv6Net| {
        !existing
            .iter()
            .any(|l| l.ipv6_subnet.is_some_and(|o| overlaps6(o, s)))
    };
    if let Some(p) = preferred.filter(|p| is_allocatable(v6, *p) && free(*p)) {
        return Ok(Allocation::NewIpv6(p));
    }
    // Indices past u64 are never reached: a range that large is never full.
    let count = u64::try_from(v6.subnet_count()).unwrap_or(u64::MAX);
    let taken = merge(taken_by_v6(cfg, existing, count));
    pick_free(&taken, count, rng)
        .and_then(|idx| v6.nth_subnet(u128::from(idx)))
        .map(Allocation::NewIpv6)
        .ok_or(AllocError::Ipv6Exhausted {
            network: v6.network,
            min: v6.subnet_min,
            max: v6.subnet_max,
            count: v6.subnet_count(),
        })
}

/// Like [`check_public_ip`](super::check_public_ip), by `PublicIPv6`.
fn check_public_ipv6(
    existing: &[Lease],
    public_ipv6: Ipv6Addr,
    node: Option<&str>,
) -> Result<(), AllocError> {
    let Some(node) = node else {
        return Ok(());
    };
    match existing.iter().find(|l| {
        l.attrs.public_ipv6 == Some(public_ipv6)
            && l.attrs.node_name.as_deref().is_some_and(|n| n != node)
    }) {
        Some(l) => Err(AllocError::PublicIpv6InUse {
            public_ipv6,
            subnet: l.ipv6_subnet.unwrap_or_default(),
            node: l.attrs.node_name.clone().unwrap_or_default(),
        }),
        None => Ok(()),
    }
}

/// Right length, aligned, inside `IPv6Network`.
fn is_member(v6: &Ipv6Config, s: Ipv6Net) -> bool {
    s.prefix_len() == v6.subnet_len && s == s.trunc() && v6.network.contains(&s)
}

/// A member inside `[IPv6SubnetMin, IPv6SubnetMax]`.
fn is_allocatable(v6: &Ipv6Config, s: Ipv6Net) -> bool {
    is_member(v6, s)
        && s.network() >= v6.subnet_min.network()
        && s.network() <= v6.subnet_max.network()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lease::VxlanData;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashSet;
    use std::net::Ipv4Addr;
    use twill_contract::lease_key::V6_ONLY_V4;

    fn cfg(json: &str) -> NetworkConfig {
        NetworkConfig::parse(json.as_bytes()).unwrap()
    }

    const V6_ONLY: &str =
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#;

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    fn attrs(host: u16, node: Option<&str>) -> LeaseAttrs {
        LeaseAttrs {
            public_ip: Ipv4Addr::UNSPECIFIED,
            public_ipv6: Some(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host)),
            backend_type: "vxlan".into(),
            backend_data: None,
            backend_v6_data: Some(VxlanData {
                vni: 1,
                vtep_mac: format!("02:00:00:00:00:{host:02x}"),
            }),
            node_name: node.map(str::to_string),
            public_key: None,
        }
    }

    fn lease(v6: &str, host: u16, node: Option<&str>) -> Lease {
        Lease {
            subnet: V6_ONLY_V4,
            ipv6_subnet: Some(net6(v6)),
            attrs: attrs(host, node),
            lease_id: None,
            ttl_remaining: None,
        }
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(6)
    }

    #[test]
    fn own_lease_is_reused_by_public_ipv6() {
        let c = cfg(V6_ONLY);
        let existing = [
            lease("fd00:10:244:7::/64", 1, None),
            lease("fd00:10:244:3::/64", 2, None),
            lease("fd00:10:244:5::/64", 2, None),
        ];
        let got = allocate_ipv6_only(&c, &existing, &attrs(2, None), None, &mut rng()).unwrap();
        assert_eq!(got, Allocation::Reuse(existing[1].clone()));
        // A lease of another length (the config changed) is not reused.
        let stale = [lease("fd00:10:244:3::/80", 2, None)];
        let got = allocate_ipv6_only(&c, &stale, &attrs(2, None), None, &mut rng()).unwrap();
        assert!(
            matches!(got, Allocation::NewIpv6(s) if s.prefix_len() == 64),
            "{got:?}"
        );
    }

    #[test]
    fn preferred_then_random_free_subnets_never_collide() {
        let c = cfg(V6_ONLY);
        let mut existing = vec![lease("fd00:10:244:2::/64", 1, None)];
        // Preferred and free: taken as is.
        let p = net6("fd00:10:244:9::/64");
        let got = allocate_ipv6_only(&c, &existing, &attrs(5, None), Some(p), &mut rng());
        assert_eq!(got, Ok(Allocation::NewIpv6(p)));
        // Preferred but held (by a dual-stack lease too): a random one.
        existing.push(Lease {
            subnet: "10.244.9.0/24".parse().unwrap(),
            ..lease("fd00:10:244:9::/64", 9, None)
        });
        let got = allocate_ipv6_only(&c, &existing, &attrs(5, None), Some(p), &mut rng());
        assert!(
            matches!(got, Ok(Allocation::NewIpv6(s)) if s != p),
            "{got:?}"
        );
        // Unaligned or outside the range: ignored.
        for bad in [
            "fd00:10:244:9::1/64",
            "fd00:10:245:1::/64",
            "fd00:10:244::/64",
        ] {
            let got = allocate_ipv6_only(&c, &[], &attrs(5, None), Some(net6(bad)), &mut rng());
            assert!(
                matches!(got, Ok(Allocation::NewIpv6(s)) if s.to_string() != bad),
                "{bad}"
            );
        }
        // A small range, filled up one by one, never hands out a subnet twice.
        let c = cfg(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/60","IPv6SubnetLen":64}"#,
        );
        let mut held: Vec<Lease> = Vec::new();
        let mut seen = HashSet::new();
        let mut r = rng();
        for host in 1..=15u16 {
            let Allocation::NewIpv6(s) =
                allocate_ipv6_only(&c, &held, &attrs(host, None), None, &mut r).unwrap()
            else {
                panic!("not new")
            };
            assert!(seen.insert(s), "{s} twice");
            assert!(is_allocatable(c.ipv6.as_ref().unwrap(), s), "{s}");
            held.push(lease(&s.to_string(), host, None));
        }
        let e = allocate_ipv6_only(&c, &held, &attrs(99, None), None, &mut r).unwrap_err();
        assert!(
            matches!(e, AllocError::Ipv6Exhausted { count: 15, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("IPv6Network fd00::/60"), "{e}");
    }

    #[test]
    fn needs_a_public_ipv6_of_its_own() {
        let c = cfg(V6_ONLY);
        let mut a = attrs(1, Some("n1"));
        a.public_ipv6 = None;
        let e = allocate_ipv6_only(&c, &[], &a, None, &mut rng()).unwrap_err();
        assert_eq!(e, AllocError::NoPublicIpv6);
        assert!(e.to_string().contains("--public-ipv6"), "{e}");
        let other = [lease("fd00:10:244:4::/64", 1, Some("n2"))];
        let e =
            allocate_ipv6_only(&c, &other, &attrs(1, Some("n1")), None, &mut rng()).unwrap_err();
        assert!(matches!(e, AllocError::PublicIpv6InUse { .. }), "{e}");
        assert!(e.to_string().contains("2001:db8::1"), "{e}");
        // Same node name: its own lease, reused.
        let got = allocate_ipv6_only(&c, &other, &attrs(1, Some("n2")), None, &mut rng()).unwrap();
        assert_eq!(got, Allocation::Reuse(other[0].clone()));
    }
}
