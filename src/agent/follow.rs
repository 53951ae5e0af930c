//! The agent follows its underlay at run time: link and address events
//! that concern it (see `underlay::concerns`) arm a look, debounced so that
//! a burst costs one; the look finds the underlay again and, when it moved
//! (a NIC re-added under a new index, a new address, another MTU), plans
//! the data path again on it and rebuilds the devices, keeping the subnet.
//! A new public IP is written into our lease (the loop does that, see
//! `run.rs`). While the interface is missing the agent says so once, is
//! unready and waits; with `--public-ip` an interface that no longer holds
//! it is reported, not followed.

use std::time::Duration;

use subnet_allocator::LeaseStore;
use tokio::time::Instant;

use super::lifecycle::Trigger;
use super::underlay::{self, Change, Found, UnderlaySelect};
use super::{Agent, AgentConfig};
use crate::datapath::Datapath;
use crate::kernel::{KernelError, UnderlayEvent};

/// How long events are gathered before the underlay is looked at: a NIC
/// coming back brings a link, an up and an address event within
/// milliseconds, and one look covers them all.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Where following the underlay stands.
#[derive(Debug, Default)]
pub struct Follow {
    pub select: UnderlaySelect,
    /// When to look at the underlay again; `None` when nothing asked.
    pub due: Option<Instant>,
    /// The underlay is missing; the message said once, so far.
    missing: Option<String>,
    /// `--public-ip` is no longer on the underlay interface.
    mismatch: bool,
    /// The public IP changed: the loop must write our lease again.
    rewrite: bool,
    /// The last error of a look that failed otherwise, said once.
    failed: Option<String>,
}

impl Follow {
    /// The operator's choice: every `--iface`, `--iface-regex` and
    /// `--iface-can-reach` (an `iface` alone counts as one `--iface`).
    pub fn new(opts: &AgentConfig) -> Follow {
        let mut select = opts.underlay_select.clone();
        if select.ifaces.is_empty() {
            select.ifaces.extend(opts.iface.clone());
        }
        Follow {
            select,
            ..Default::default()
        }
    }

    /// The underlay the agent starts on: `--public-ip` off its interface
    /// from the start is how the node is set up (a NAT), not news.
    pub fn started_on(&mut self, found: &Found) {
        self.mismatch = !found.on_iface;
    }

    /// Whether the underlay is missing now.
    pub fn is_missing(&self) -> bool {
        self.missing.is_some()
    }

    /// Whether the lease must be written again with the new public IP;
    /// asks once.
    pub fn take_rewrite(&mut self) -> bool {
        std::mem::take(&mut self.rewrite)
    }
}

impl<S: LeaseStore + 'static, D: Datapath> Agent<S, D> {
    /// An event from the link and address groups: arms a look when it
    /// may move the underlay.
    pub(super) fn on_underlay_event(&mut self, ev: UnderlayEvent) {
        let current = (!self.follow.is_missing()).then_some(self.underlay.index);
        if underlay::concerns(&self.follow.select, current, &ev) {
            tracing::debug!(event = ?ev, "underlay event");
            let at = Instant::now() + SETTLE;
            self.follow.due = Some(self.follow.due.map_or(at, |d| d.min(at)));
        }
    }

    /// Looks at the underlay now, on a resync or when a look is armed;
    /// true when it is there to build on.
    pub(super) async fn underlay_ready(&mut self, resync: bool) -> bool {
        if resync || self.follow.due.is_some() {
            self.check_underlay().await;
        }
        !self.follow.is_missing()
    }

    /// Finds the underlay again and follows it where it went.
    pub(super) async fn check_underlay(&mut self) {
        self.follow.due = None;
        let found = super::v6only::locate(
            &self.dp,
            &self.cfg,
            &self.follow.select,
            self.opts.public_ip,
            self.opts.public_ipv6,
        )
        .await;
        let (found, net6) = match found {
            Ok(l) => (l.found, l.net6),
            Err(e) if underlay::is_missing(&e) => return self.underlay_missing(&e),
            Err(e) => {
                let msg = e.to_string();
                if self.follow.failed.as_ref() != Some(&msg) {
                    tracing::warn!(
                        error = msg,
                        "cannot find the underlay; keeping the data path as it is"
                    );
                    self.follow.failed = Some(msg);
                }
                return;
            }
        };
        self.follow.failed = None;
        let was_missing = self.follow.missing.take().is_some();
        if was_missing {
            self.opts.telemetry.set_underlay_missing(false);
            tracing::info!(iface = %found.underlay.name, index = found.underlay.index, public_ip = %found.underlay.ip, "underlay interface is back");
        }
        self.check_public_ip(&found);
        let public_ipv6 = match net6 {
            Some(n) => Some(n.addr()),
            None => self.underlay_ipv6(&found.underlay).await,
        };
        let mut change = Change::between(&self.underlay, &found.underlay);
        change.address6 = public_ipv6 != self.plan.attrs.public_ipv6 || net6 != self.underlay6;
        if change.any() {
            // The devices (and their indexes) change: watch batches wait
            // for the full pass that reads them back.
            self.delta = None;
            self.delta6 = None;
            self.replan(found, change, public_ipv6, net6).await;
        }
    }

    /// The look an underlay event armed; then a pass, as a flap may have
    /// cost routes through the underlay (the kernel drops them with the
    /// link): it puts back what is missing and changes nothing that is
    /// right.
    pub(super) async fn on_underlay_due(&mut self) {
        self.check_underlay().await;
        if !self.follow.is_missing() {
            self.pending.request(Trigger::LinkEvent, Instant::now());
        }
    }

    fn underlay_missing(&mut self, e: &KernelError) {
        let msg = e.to_string();
        if self.follow.missing.as_ref() != Some(&msg) {
            if self.follow.missing.is_none() {
                tracing::warn!(error = msg, iface = %self.underlay.name, "underlay interface gone or without an address; waiting for it (the data path to other nodes is down meanwhile)");
            } else {
                tracing::info!(error = msg, "still waiting for the underlay interface");
            }
            self.follow.missing = Some(msg);
        }
        self.opts.telemetry.set_underlay_missing(true);
    }

    /// With `--public-ip`: says once when the interface stops or starts
    /// holding it again.
    fn check_public_ip(&mut self, found: &Found) {
        let ip = match (self.opts.public_ip, self.opts.public_ipv6) {
            (Some(ip), _) => std::net::IpAddr::from(ip),
            (None, Some(ip6)) if self.cfg.is_ipv6_only() => ip6.into(),
            _ => return,
        };
        let mismatch = !found.on_iface;
        if mismatch != self.follow.mismatch {
            if mismatch {
                tracing::error!(public_ip = %ip, iface = %found.underlay.name, "the underlay interface no longer holds --public-ip; other nodes may not reach this node: fix the address or the flag (not followed, as --public-ip was given)");
            } else {
                tracing::info!(public_ip = %ip, iface = %found.underlay.name, "the underlay interface holds --public-ip again");
            }
            self.follow.mismatch = mismatch;
            self.opts.telemetry.set_public_ip_mismatch(mismatch);
        }
    }

    /// The underlay's global IPv6 address in a dual-stack cluster (what
    /// the plan has when it cannot be read), else `None`.
    async fn underlay_ipv6(
        &self,
        underlay: &crate::kernel::Underlay,
    ) -> Option<std::net::Ipv6Addr> {
        self.cfg.ipv6.as_ref()?;
        if let Some(ip) = self.opts.public_ipv6 {
            return Some(ip);
        }
        match self.dp.global_ipv6(underlay.index).await {
            Ok(ip) => ip,
            Err(e) => {
                tracing::warn!(error = %e, iface = %underlay.name, "cannot read the underlay's IPv6 address");
                self.plan.attrs.public_ipv6
            }
        }
    }

    /// Plans the data path on the underlay found (with `public_ipv6`) and
    /// rebuilds the devices; the subnet stays. A new public IP arms the
    /// lease rewrite.
    async fn replan(
        &mut self,
        found: Found,
        change: Change,
        public_ipv6: Option<std::net::Ipv6Addr>,
        net6: Option<ipnet::Ipv6Net>,
    ) {
        let new = found.underlay;
        let mut plan = match super::v6only::make_plan(&self.cfg, &new, public_ipv6) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot plan the data path on the new underlay; keeping the old one");
                return;
            }
        };
        plan.attrs.node_name = self.plan.attrs.node_name.clone();
        let old = std::mem::replace(&mut self.underlay, new);
        let old_public_ipv6 = self.plan.attrs.public_ipv6;
        self.underlay6 = net6;
        tracing::info!(iface = %self.underlay.name, index = self.underlay.index, public_ip = %self.underlay.ip, ?public_ipv6, mtu = self.underlay.mtu,
            old_iface = %old.name, old_index = old.index, old_public_ip = %old.ip, ?old_public_ipv6, link = change.link, address = change.address, address6 = change.address6,
            "underlay changed; rebuilding the data path on it, same subnet");
        self.follow.rewrite = plan.attrs != self.plan.attrs;
        self.plan = plan;
        if self.follow.rewrite {
            // Our entry in the lease map says what the lease is about to:
            // with the old public IP it would pass for another node's
            // claim on our subnet until the watch brings the rewrite.
            let attrs = self.plan.attrs.clone();
            if let Some(own) = self.own_entry_mut() {
                own.attrs = attrs;
            }
        }
        if let Err(e) = self.publish().await {
            tracing::warn!(error = %e, "rebuilding the devices on the new underlay failed; retried on the next pass");
        }
        self.ensure_masq().await;
    }
}
