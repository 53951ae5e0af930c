//! The etcd schema: key names below the prefix, lease values to and from
//! key/values and watch events, and the transactions that keep one subnet
//! to one node.

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, DeleteOptions, Event, EventType, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::lease::{lease_key_name, subnet_key, Lease, LeaseAttrs};
use crate::store::{decode_change, LeaseEvent};

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = twill_contract::defaults::ETCD_PREFIX;

/// A store lease as granted: `(id, TTL seconds)`; `None` for no expiry.
pub(super) type Granted = Option<(i64, i64)>;

/// The key names of one prefix.
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    pub(super) fn config(&self) -> String {
        format!("{}/config", self.prefix)
    }

    pub(super) fn subnets(&self) -> String {
        format!("{}/subnets/", self.prefix)
    }

    /// Full key of an IPv4-only lease.
    pub(super) fn lease(&self, subnet: Ipv4Net) -> String {
        format!("{}{}", self.subnets(), subnet_key(subnet))
    }

    /// Full key of a lease, with the IPv6 part when `ipv6_subnet` is set.
    pub(super) fn lease_with_ipv6(&self, subnet: Ipv4Net, ipv6_subnet: Option<Ipv6Net>) -> String {
        format!("{}{}", self.subnets(), lease_key_name(subnet, ipv6_subnet))
    }
}

pub(super) fn secs(ttl: i64) -> Option<Duration> {
    u64::try_from(ttl).ok().map(Duration::from_secs)
}

/// The lease a successful write of `attrs` under a store lease `granted`
/// leaves.
pub(super) fn written(
    subnet: Ipv4Net,
    ipv6_subnet: Option<Ipv6Net>,
    attrs: &LeaseAttrs,
    granted: Granted,
) -> Lease {
    Lease {
        subnet,
        ipv6_subnet,
        attrs: attrs.clone(),
        lease_id: granted.map(|g| g.0),
        ttl_remaining: granted.and_then(|g| secs(g.1)),
    }
}

/// A stored key's name below the subnets prefix; `None` (logged) for a key
/// that is not UTF-8 or not below the prefix.
pub(super) fn name_of<'a>(subnets_prefix: &str, kv: &'a KeyValue) -> Option<&'a str> {
    let name = std::str::from_utf8(kv.key())
        .ok()
        .and_then(|k| k.strip_prefix(subnets_prefix));
    if name.is_none() {
        let key = String::from_utf8_lossy(kv.key());
        tracing::warn!(key = %key, "skipping lease with malformed key");
    }
    name
}

/// A watch event as a lease event, or `None` (logged) if malformed.
pub(super) fn decode_event(
    subnets_prefix: &str,
    ev: &Event,
    network: Option<Ipv4Net>,
) -> Option<LeaseEvent> {
    let kv = ev.kv()?;
    let key = String::from_utf8_lossy(kv.key());
    let Some(name) = key.strip_prefix(subnets_prefix) else {
        tracing::warn!(key = %key, "skipping change of malformed key");
        return None;
    };
    let value = (ev.event_type() == EventType::Put).then(|| kv.value());
    decode_change(name, value, kv.lease(), network)
}

/// Whether `current` (the entry under our key) is ours to write again.
pub(super) fn owned_by(current: &KeyValue, lease: &Lease) -> bool {
    let key = String::from_utf8_lossy(current.key());
    crate::store::owns(&key, lease, current.value(), current.lease())
}

/// The subnet is free only if no lease holds it under any key form:
/// neither the IPv4-only key `plain` nor `<plain>&<any v6>` (in a
/// mixed-version upgrade both forms are written, and two keys must never
/// share an IPv4 subnet).
pub(super) fn free_under_every_form(plain: &str) -> [Compare; 2] {
    [
        absent(plain),
        Compare::create_revision(format!("{plain}&"), CompareOp::Equal, 0).with_prefix(),
    ]
}

/// No key `key`.
pub(super) fn absent(key: &str) -> Compare {
    Compare::create_revision(key, CompareOp::Equal, 0)
}

/// Unchanged since `mod_revision`.
pub(super) fn unchanged(key: &str, mod_revision: i64) -> Compare {
    Compare::mod_revision(key, CompareOp::Equal, mod_revision)
}

fn put_op(key: &str, attrs: &LeaseAttrs, granted: Granted) -> TxnOp {
    let put = PutOptions::new().with_lease(granted.map_or(0, |l| l.0));
    TxnOp::put(key, attrs.to_json(), Some(put))
}

/// Writes `attrs` under `key` bound to `granted` if `cmp` holds.
pub(super) fn put_if(
    key: &str,
    cmp: impl Into<Vec<Compare>>,
    attrs: &LeaseAttrs,
    granted: Granted,
) -> Txn {
    Txn::new().when(cmp).and_then([put_op(key, attrs, granted)])
}

/// Moves a lease from `old_key` (unchanged since `mod_revision`) to a
/// free `new_key`.
pub(super) fn rekey(
    old_key: &str,
    mod_revision: i64,
    new_key: &str,
    attrs: &LeaseAttrs,
    granted: Granted,
) -> Txn {
    // Delete first: etcd reports a txn's events in op order, so a watcher
    // never sees the new key and then a removal of the same IPv4 subnet.
    Txn::new()
        .when([unchanged(old_key, mod_revision), absent(new_key)])
        .and_then([
            TxnOp::delete(old_key, None),
            put_op(new_key, attrs, granted),
        ])
}

/// Deletes the IPv4-only key `plain` and every dual-stack key
/// `<plain>&...` of one subnet; `&` never starts anything else after a
/// complete key.
pub(super) fn delete_every_form(plain: &str) -> Txn {
    Txn::new().and_then([
        TxnOp::delete(plain, Some(DeleteOptions::new().with_prev_key())),
        TxnOp::delete(
            format!("{plain}&"),
            Some(DeleteOptions::new().with_prefix().with_prev_key()),
        ),
    ])
}

/// The store leases the keys deleted by `r` were bound to.
pub(super) fn deleted_leases(r: &TxnResponse) -> Vec<i64> {
    let mut ids = Vec::new();
    for op in r.op_responses() {
        if let TxnOpResponse::Delete(d) = op {
            ids.extend(d.prev_kvs().iter().map(KeyValue::lease));
        }
    }
    ids.retain(|id| *id != 0);
    ids
}
