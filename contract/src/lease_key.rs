//! The store key of a lease, in flannel's exact format so twill and flannel
//! can read each other's leases: `10.244.3.0-24`, or dual-stack
//! `10.244.3.0-24&fd00:10:244:3::-64`, or IPv6-only
//! `0.0.0.0-0&fd00:10:244:3::-64`.
//!
//! An IPv6-only lease has no IPv4 subnet; flannel (`MakeSubnetKey` with an
//! empty `ip.IP4Net`) writes the empty network `0.0.0.0-0` in its place, and
//! its `ParseSubnetKey` needs that IPv4 part: a bare `fd00::-64` key is
//! skipped by flannel as "not a subnet". twill does the same: an IPv6-only
//! lease is held as IPv4 subnet [`V6_ONLY_V4`] (`0.0.0.0/0`) plus its IPv6
//! subnet, and its key is unique by the IPv6 part.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// The IPv4 subnet of an IPv6-only lease: flannel's empty `IP4Net`.
pub const V6_ONLY_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::UNSPECIFIED, 0);

/// Whether a lease of these subnets is IPv6-only (no IPv4 subnet).
pub fn is_ipv6_only(v4: Ipv4Net, v6: Option<Ipv6Net>) -> bool {
    v4 == V6_ONLY_V4 && v6.is_some()
}

/// Store key suffix for a subnet: `10.244.3.0-24`.
pub fn subnet_key(subnet: Ipv4Net) -> String {
    format!("{}-{}", subnet.network(), subnet.prefix_len())
}

/// Store key suffix for a lease: `10.244.3.0-24`, or flannel's dual-stack
/// form `10.244.3.0-24&fd00:10:244:3::-64`.
pub fn lease_key_name(v4: Ipv4Net, v6: Option<Ipv6Net>) -> String {
    match v6 {
        None => subnet_key(v4),
        Some(v6) => format!("{}&{}-{}", subnet_key(v4), v6.network(), v6.prefix_len()),
    }
}

/// Inverse of [`lease_key_name`]. Only the canonical spelling is accepted
/// (what `lease_key_name` writes for the parsed subnets), because renewing
/// or deleting a lease rebuilds its key from the subnets.
pub fn parse_lease_key(s: &str) -> Option<(Ipv4Net, Option<Ipv6Net>)> {
    let (v4_part, v6_part) = match s.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let v4 = parse_subnet_key(v4_part)?;
    let v6 = match v6_part {
        None => None,
        Some(p) => {
            let (addr, len) = p.rsplit_once('-')?;
            let addr: Ipv6Addr = addr.parse().ok()?;
            if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let net = Ipv6Net::new(addr, len.parse().ok()?).ok()?;
            if net != net.trunc() {
                return None;
            }
            Some(net)
        }
    };
    (lease_key_name(v4, v6) == s).then_some((v4, v6))
}

/// Inverse of [`subnet_key`]. Accepts flannel's dual-stack form
/// `10.244.3.0-24&fd00::-64` (keeps the IPv4 part). Rejects keys with host
/// bits set, since no allocator writes those.
pub fn parse_subnet_key(s: &str) -> Option<Ipv4Net> {
    let v4 = s.split('&').next()?;
    let (addr, len) = v4.split_once('-')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let net = Ipv4Net::new(addr, len.parse().ok()?).ok()?;
    (net == net.trunc()).then_some(net)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip() {
        for s in [
            "10.244.3.0/24",
            "10.244.0.128/25",
            "0.0.0.0/0",
            "192.0.2.4/30",
        ] {
            let n: Ipv4Net = s.parse().unwrap();
            assert_eq!(parse_subnet_key(&subnet_key(n)), Some(n), "{s}");
        }
        assert_eq!(
            subnet_key("10.244.3.0/24".parse().unwrap()),
            "10.244.3.0-24"
        );
    }

    #[test]
    fn key_dual_stack_and_garbage() {
        assert_eq!(
            parse_subnet_key("10.244.3.0-24&fd00::-64"),
            Some("10.244.3.0/24".parse().unwrap())
        );
        for bad in [
            "",
            "10.244.3.0",
            "10.244.3.0-",
            "10.244.3.0-33",
            "10.244.3.5-24",
            "x-24",
            "10.244.3.0-+4",
            "10.244.3.0/24",
            "fd00::-64",
        ] {
            assert_eq!(parse_subnet_key(bad), None, "{bad:?}");
        }
    }

    /// The key of a dual-stack lease as flannel (>= v0.22, etcd registry)
    /// writes it: `<v4>-<len>&<v6>-<len>`.
    const FLANNEL_DUAL_KEY: &str = "10.5.52.0-24&fc00:0:0:34::-64";

    #[test]
    fn lease_key_round_trip_both_forms() {
        let v4: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        let v6: Ipv6Net = "fd00:10:244:3::/64".parse().unwrap();
        assert_eq!(lease_key_name(v4, None), "10.244.3.0-24");
        assert_eq!(
            lease_key_name(v4, Some(v6)),
            "10.244.3.0-24&fd00:10:244:3::-64"
        );
        for (a, b) in [
            ("10.244.3.0/24", None),
            ("10.244.3.0/24", Some("fd00:10:244:3::/64")),
            ("10.244.0.128/25", Some("fd00::/120")),
            ("0.0.0.0/0", Some("::/0")),
            ("192.0.2.4/30", Some("2001:db8:0:1::/64")),
        ] {
            let v4: Ipv4Net = a.parse().unwrap();
            let v6: Option<Ipv6Net> = b.map(|b| b.parse().unwrap());
            let k = lease_key_name(v4, v6);
            assert_eq!(parse_lease_key(&k), Some((v4, v6)), "{k}");
            // The old IPv4 parser still reads the IPv4 part of both forms.
            assert_eq!(parse_subnet_key(&k), Some(v4), "{k}");
        }
        assert_eq!(
            parse_lease_key(FLANNEL_DUAL_KEY),
            Some((
                "10.5.52.0/24".parse().unwrap(),
                Some("fc00:0:0:34::/64".parse().unwrap())
            ))
        );
    }

    /// flannel's key of an IPv6-only lease (etcd registry, `EnableIPv4:
    /// false`): `MakeSubnetKey(ip.IP4Net{}, sn6)`.
    const FLANNEL_V6_ONLY_KEY: &str = "0.0.0.0-0&fd00:10:244:1::-64";

    #[test]
    fn ipv6_only_key_is_flannels() {
        let v6: Ipv6Net = "fd00:10:244:1::/64".parse().unwrap();
        assert_eq!(lease_key_name(V6_ONLY_V4, Some(v6)), FLANNEL_V6_ONLY_KEY);
        assert_eq!(
            parse_lease_key(FLANNEL_V6_ONLY_KEY),
            Some((V6_ONLY_V4, Some(v6)))
        );
        assert!(is_ipv6_only(V6_ONLY_V4, Some(v6)));
        assert!(!is_ipv6_only(V6_ONLY_V4, None));
        assert!(!is_ipv6_only("10.244.3.0/24".parse().unwrap(), Some(v6)));
        // A bare IPv6 key is not flannel's form (flannel skips it too).
        assert_eq!(parse_lease_key("fd00:10:244:1::-64"), None);
    }

    #[test]
    fn lease_key_garbage() {
        for bad in [
            "",
            "10.244.3.0-24&",
            "10.244.3.0-24&fd00::",
            "10.244.3.0-24&fd00::-",
            "10.244.3.0-24&fd00::-129",
            "10.244.3.0-24&fd00::1-64",
            "10.244.3.0-24&10.0.0.0-8",
            "10.244.3.0-24&fd00::-64&fd01::-64",
            "10.244.3.0-24&fd00::-+4",
            "10.244.3.5-24&fd00::-64",
            "fd00::-64",
            "10.244.3.0-24&fd00::/64",
            // Non-canonical spellings: the key could not be rebuilt.
            "10.244.3.0-24&FD00::-64",
            "10.244.3.0-24&fd00:0::-64",
            "10.244.3.0-24&fd00::-064",
            "10.244.3.0-024",
        ] {
            assert_eq!(parse_lease_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lease_key_rejects_garbage_of_every_kind() {
        for bad in [
            "banana",
            "10.244.3.0-24 ",
            " 10.244.3.0-24",
            "10.244.3.0-24\n",
            "subnets/10.244.3.0-24",
            "10.244.3.0-24&",
            "&fd00::-64",
            "10.244.3.0--24",
            "-24",
        ] {
            assert_eq!(parse_lease_key(bad), None, "{bad:?}");
        }
    }
}
