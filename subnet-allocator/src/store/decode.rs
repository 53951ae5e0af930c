//! Stored entries (key name and JSON value) as leases and watch events;
//! malformed ones skipped with one warning per key and value.

use super::*;

/// A stored lease entry (its key name below the subnets prefix and its JSON
/// value) as a lease, or `None`, logged, if the key or the value is
/// malformed or the subnet lies outside `network`.
pub(crate) fn decode_lease(
    key: &str,
    value: &[u8],
    lease_id: i64,
    ttl_remaining: Option<Duration>,
    network: Option<Ipv4Net>,
) -> Option<Lease> {
    let Some((subnet, ipv6_subnet)) = parse_lease_key(key) else {
        warn_once(key, value, "skipping lease with malformed key", "");
        return None;
    };
    if let Some(net) = network {
        if !net.contains(&subnet) {
            let why = format!("network {net}");
            warn_once(key, value, "skipping lease outside the network", &why);
            return None;
        }
    }
    match LeaseAttrs::parse(value) {
        Ok(attrs) => Some(Lease {
            subnet,
            ipv6_subnet,
            attrs,
            lease_id: (lease_id != 0).then_some(lease_id),
            ttl_remaining,
        }),
        Err(e) => {
            let why = e.to_string();
            warn_once(key, value, "skipping lease with malformed value", &why);
            None
        }
    }
}

/// Logs a skipped entry once per key and value for the life of the
/// process: every list and relist meets the same junk again, and 550 junk
/// keys must not make 1,100 lines per restart.
/// Whether it logged.
pub(super) fn warn_once(key: &str, value: &[u8], what: &str, detail: &str) -> bool {
    use std::collections::HashSet;
    use std::hash::{Hash, Hasher};
    use std::sync::{Mutex, OnceLock, PoisonError};
    static SEEN: OnceLock<Mutex<HashSet<u64>>> = OnceLock::new();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (key, value, what).hash(&mut h);
    let mut seen = SEEN
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    // Bounded: a store churning through junk forever logs it again rather
    // than growing without end.
    if seen.len() >= 65_536 {
        seen.clear();
    }
    let first = seen.insert(h.finish());
    if first {
        tracing::warn!(key, detail, "{what}");
    }
    first
}

/// One stored change (key name below the subnets prefix; `None` value for
/// a deletion) as a watch event. A well-formed key whose new value is
/// unreadable no longer holds a usable lease, as a list would skip it:
/// [`LeaseEvent::Unusable`] with its subnet, so its holder notices and
/// writes its value back.
pub(crate) fn decode_change(
    key: &str,
    value: Option<&[u8]>,
    lease_id: i64,
    network: Option<Ipv4Net>,
) -> Option<LeaseEvent> {
    match value {
        Some(v) => match decode_lease(key, v, lease_id, None, network) {
            Some(l) => Some(LeaseEvent::Added(l)),
            None => Some(LeaseEvent::Unusable {
                key: key.to_string(),
                // An IPv6-only key names no IPv4 subnet of its own.
                subnet: parse_lease_key(key)
                    .filter(|(v4, v6)| !is_ipv6_only(*v4, *v6))
                    .map(|(v4, _)| v4)
                    .filter(|v4| network.is_none_or(|n| n.contains(v4))),
                gone: false,
            }),
        },
        None => match parse_lease_key(key) {
            Some((v4, Some(v6))) if is_ipv6_only(v4, Some(v6)) => {
                Some(LeaseEvent::RemovedIpv6Only(v6))
            }
            Some((v4, _)) => Some(LeaseEvent::Removed(v4)),
            None => Some(LeaseEvent::Unusable {
                key: key.to_string(),
                subnet: None,
                gone: true,
            }),
        },
    }
}
