//! The agent's lease map: loaded from a list, changed by watch events.
//! Leases of the IPv6-only form (`0.0.0.0-0&<v6>-<len>`) all share the IPv4
//! part `0.0.0.0/0`, so they have a map of their own, keyed by their IPv6
//! subnet.

use subnet_allocator::{Lease, LeaseEvent, LeaseSnapshot, LeaseStore};

use super::v6only::key6;
use super::Agent;
use crate::datapath::Datapath;

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// Every lease held, either kind.
    pub(super) fn lease_count(&self) -> usize {
        self.leases.len() + self.leases6.len()
    }

    /// Puts a lease in its map; a lease of the IPv6-only form goes in the
    /// map of them.
    pub(super) fn insert_lease(&mut self, l: Lease) {
        match key6(&l) {
            Some(s6) => {
                self.seen6.insert(s6, l.clone());
                self.leases6.insert(s6, l);
            }
            None => {
                self.seen.insert(l.subnet, l.clone());
                self.leases.insert(l.subnet, l);
            }
        }
    }

    /// Our own entry in the lease map.
    pub(super) fn own_entry_mut(&mut self) -> Option<&mut Lease> {
        let own = &self.lease.lease;
        match key6(own) {
            Some(s6) => self.leases6.get_mut(&s6),
            None => self.leases.get_mut(&own.subnet),
        }
    }

    pub(super) fn load(&mut self, snap: LeaseSnapshot) {
        let revision = snap.revision;
        self.unusable = snap
            .unusable
            .into_iter()
            .map(|k| {
                let subnet = subnet_allocator::parse_lease_key(&k).map(|(v4, _)| v4);
                (k, subnet)
            })
            .collect();
        self.leases.clear();
        self.leases6.clear();
        self.delta = None;
        self.delta6 = None;
        for l in snap.leases {
            self.insert_lease(l);
        }
        self.opts.telemetry.leases.set(self.lease_count() as i64);
        tracing::info!(leases = self.lease_count(), revision, "loaded lease map");
    }

    pub(super) fn apply_events(&mut self, events: Vec<LeaseEvent>) {
        for ev in events {
            match ev {
                LeaseEvent::Added(l) if l.is_ipv6_only() => {
                    tracing::info!(subnet6 = ?l.ipv6_subnet, public_ipv6 = ?l.attrs.public_ipv6, "lease added or changed");
                    let key = l.key_name();
                    self.unusable.retain(|k, _| *k != key);
                    self.touched6.extend(key6(&l));
                    self.insert_lease(l);
                }
                LeaseEvent::Added(l) => {
                    tracing::info!(subnet = %l.subnet, public_ip = %l.attrs.public_ip, "lease added or changed");
                    self.unusable.retain(|_, s| *s != Some(l.subnet));
                    self.touched.insert(l.subnet);
                    self.insert_lease(l);
                }
                LeaseEvent::Removed(s) => {
                    self.unusable.retain(|_, u| *u != Some(s));
                    self.touched.insert(s);
                    if let Some(old) = self.leases.remove(&s) {
                        tracing::info!(subnet = %s, public_ip = %old.attrs.public_ip, "lease removed");
                    }
                }
                LeaseEvent::RemovedIpv6Only(s6) => {
                    self.unusable.retain(|k, _| {
                        subnet_allocator::parse_lease_key(k).map(|(_, v6)| v6) != Some(Some(s6))
                    });
                    self.touched6.insert(s6);
                    if let Some(old) = self.leases6.remove(&s6) {
                        tracing::info!(subnet6 = %s6, public_ipv6 = ?old.attrs.public_ipv6, "lease removed");
                    }
                }
                LeaseEvent::Unusable {
                    key, gone: true, ..
                } => {
                    self.unusable.remove(&key);
                }
                LeaseEvent::Unusable { key, subnet, .. } => {
                    if let Some((v4, Some(s6))) = subnet_allocator::parse_lease_key(&key) {
                        if v4 == twill_contract::lease_key::V6_ONLY_V4 {
                            self.touched6.insert(s6);
                            if let Some(old) = self.leases6.remove(&s6) {
                                tracing::warn!(key, subnet6 = %s6, public_ipv6 = ?old.attrs.public_ipv6, "lease now holds an unusable value");
                            }
                            self.unusable.insert(key, None);
                            continue;
                        }
                    }
                    self.touched.extend(subnet);
                    if let Some(old) = subnet.and_then(|s| self.leases.remove(&s)) {
                        tracing::warn!(key, subnet = %old.subnet, public_ip = %old.attrs.public_ip, "lease now holds an unusable value");
                    }
                    self.unusable.insert(key, subnet);
                }
            }
        }
    }
}
