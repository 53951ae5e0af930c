//! The isolation tables ("the guard", see `twill_nft::guard` for what they
//! are): the agent keeps the tunnel filter's members equal to the lease map
//! in every reconcile pass, checks both tables on each resync (restoring
//! what was flushed or edited by hand), and reads their drop counters.

use std::collections::BTreeMap;
use std::io;

use twill_nft::guard::{self as g, Listed, Peers, Settings};
use twill_nft::{Exchange, NftError, NftSocket};

use crate::reconcile::RemoteNode;

const ENOENT: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error("the kernel refused {what}: {source}")]
    Refused {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("nftables netlink ran in a task that failed: {0}")]
    Join(String),
}

fn refused((what, errno): (String, i32)) -> GuardError {
    GuardError::Refused {
        what,
        source: io::Error::from_raw_os_error(errno),
    }
}

/// The tunnel's members: the public IPs of the remote nodes in the lease
/// map (IPv4, and IPv6 where a node has an IPv6 underlay address). A pure
/// function of the nodes, so a per-peer delta can reuse it.
pub fn tunnel_peers(nodes: &[RemoteNode]) -> Peers {
    let mut p = Peers::default();
    for n in nodes {
        p.v4.insert(n.public_ip);
        if let Some(a) = n.public_ipv6 {
            p.v6.insert(a);
        }
    }
    p
}

/// The tunnel's members of an IPv6-only node: the other nodes' IPv6
/// underlay addresses.
pub fn tunnel_peers6(nodes: &[crate::reconcile::ipv6_only::RemoteNode6]) -> Peers {
    let mut p = Peers::default();
    p.v6.extend(nodes.iter().map(|n| n.public_ipv6));
    p
}

/// The pods' entries of the bridge table as last read: put back when the
/// table was deleted as a whole (`nft flush ruleset`), so that running pods
/// stay checked.
pub type PodEntries = Vec<(&'static str, g::Element)>;

/// What one look at the tables found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuardReport {
    /// Which tables had to be (re)written: "inet", "bridge".
    pub rewritten: Vec<&'static str>,
    /// Packets dropped so far, by filter (summed over its rules).
    pub drops: BTreeMap<String, u64>,
    /// The pods' entries now in the bridge table (read when checking).
    pub pods: PodEntries,
}

fn send(s: &NftSocket, m: &twill_nft::wire::Messages) -> Result<(), GuardError> {
    let ex = s.exchange(m, Exchange::acks(m))?;
    ex.refused.map_or(Ok(()), |r| Err(refused(r)))
}

/// A dump; a table that is not there lists nothing.
fn dump(
    s: &NftSocket,
    m: &twill_nft::wire::Messages,
    seq: u32,
) -> Result<Vec<Vec<u8>>, GuardError> {
    let ex = s.exchange(m, Exchange::dump(seq, format!("listing {}", g::TABLE)))?;
    match ex.refused {
        None => Ok(ex.data.into_iter().map(|(_, a)| a).collect()),
        Some((_, ENOENT)) => Ok(Vec::new()),
        Some(r) => Err(refused(r)),
    }
}

fn listed_rules(s: &NftSocket, family: u8) -> Result<Vec<Listed>, GuardError> {
    let seq = s.next_seq();
    let mut out = Vec::new();
    for msg in dump(s, &g::dump_rules(family, seq), seq)? {
        out.extend(g::listed_rule(&msg).map_err(NftError::from)?);
    }
    Ok(out)
}

fn elements(s: &NftSocket, family: u8, set: &str) -> Result<Vec<g::Element>, GuardError> {
    let seq = s.next_seq();
    let mut keys = Vec::new();
    for msg in dump(s, &g::dump_elements(family, set, seq), seq)? {
        keys.extend(g::listed_elements(&msg).map_err(NftError::from)?);
    }
    keys.sort();
    Ok(keys)
}

fn peers_in_place(s: &NftSocket, peers: &Peers) -> Result<bool, GuardError> {
    Ok(elements(s, g::INET, g::PEERS4)? == peers.keys4()
        && elements(s, g::INET, g::PEERS6)? == peers.keys6())
}

fn count(drops: &mut BTreeMap<String, u64>, listed: &[Listed]) {
    for l in listed {
        if let (Some(f), Some(p)) = (&l.filter, l.packets) {
            *drops.entry(f.clone()).or_default() += p;
        }
    }
}

fn pod_entries(s: &NftSocket) -> Result<PodEntries, GuardError> {
    let mut out = Vec::new();
    for set in g::POD_SETS {
        for e in elements(s, g::BRIDGE, set)? {
            out.push((set, e));
        }
    }
    Ok(out)
}

/// Makes both tables be as `settings` and `peers` say. With `check`, reads
/// them back first and rewrites only what differs (and reports the
/// counters); without, writes the tunnel's members: as the peers that came
/// and went when `was` holds those in place (written with the same
/// settings), else by replacing the tunnel filter's table. `known` are the
/// pods' entries as last read: put back when the bridge table has none left.
pub fn ensure_blocking(
    settings: &Settings,
    peers: &Peers,
    check: bool,
    known: &PodEntries,
    was: Option<&Peers>,
) -> Result<GuardReport, GuardError> {
    let s = NftSocket::open()?;
    let mut report = GuardReport::default();
    if !check {
        if let Some(was_peers) = was {
            // Only the members changed: the peers that came and went.
            let (added, removed) = (peers.minus(was_peers), was_peers.minus(peers));
            if added.is_empty() && removed.is_empty() {
                return Ok(report);
            }
            match send(&s, &g::update_peers(&added, &removed, s.next_seq())) {
                Ok(()) => {
                    report.rewritten.push("inet");
                    return Ok(report);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot update the tunnel members in place; replacing the table");
                }
            }
        }
        send(&s, &g::replace_inet(settings, peers, s.next_seq()))?;
        report.rewritten.push("inet");
        return Ok(report);
    }
    let inet = listed_rules(&s, g::INET)?;
    if g::rules_match(&inet, g::INET_CHAIN, &g::inet_rules(settings)) && peers_in_place(&s, peers)?
    {
        count(&mut report.drops, &inet);
    } else {
        send(&s, &g::replace_inet(settings, peers, s.next_seq()))?;
        report.rewritten.push("inet");
    }
    let bridge = listed_rules(&s, g::BRIDGE)?;
    report.pods = pod_entries(&s)?;
    if g::rules_match(&bridge, g::BRIDGE_CHAIN, &g::bridge_rules(settings)) {
        count(&mut report.drops, &bridge);
    } else {
        let lost = report.pods.is_empty();
        let restore: &[(&'static str, g::Element)] = if lost { known } else { &[] };
        send(&s, &g::refresh_bridge(settings, restore, s.next_seq()))?;
        report.rewritten.push("bridge");
        if lost {
            report.pods = known.clone();
        }
    }
    Ok(report)
}

/// [`ensure_blocking`] on the blocking pool.
pub async fn ensure(
    settings: &Settings,
    peers: &Peers,
    check: bool,
    known: &PodEntries,
    was: Option<Peers>,
) -> Result<GuardReport, GuardError> {
    let (settings, peers, known) = (settings.clone(), peers.clone(), known.clone());
    tokio::task::spawn_blocking(move || {
        ensure_blocking(&settings, &peers, check, &known, was.as_ref())
    })
    .await
    .map_err(|e| GuardError::Join(e.to_string()))?
}

/// Adds `added` to the tunnel's member sets and takes `removed` out of
/// them, leaving the rest of both tables as they are (a watch batch's
/// members that came and went: the cost does not grow with the cluster).
/// Fails when the table or its sets are not there; the caller then
/// replaces the table.
pub async fn update(added: &Peers, removed: &Peers) -> Result<GuardReport, GuardError> {
    let (added, removed) = (added.clone(), removed.clone());
    tokio::task::spawn_blocking(move || {
        let s = NftSocket::open()?;
        send(&s, &g::update_peers(&added, &removed, s.next_seq()))?;
        Ok(GuardReport {
            rewritten: vec!["inet"],
            ..GuardReport::default()
        })
    })
    .await
    .map_err(|e| GuardError::Join(e.to_string()))?
}

/// Removes both tables (`twilld --uninstall`); a kernel without nf_tables
/// netlink has none.
pub async fn remove() -> Result<(), GuardError> {
    let r = tokio::task::spawn_blocking(|| {
        let s = NftSocket::open()?;
        send(&s, &g::removal(s.next_seq()))
    })
    .await
    .map_err(|e| GuardError::Join(e.to_string()))?;
    match r {
        Err(GuardError::Nft(e)) if e.unsupported() => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::reconcile::Path;

    fn node(ip: &str, ip6: Option<&str>) -> RemoteNode {
        RemoteNode {
            subnet: "10.244.1.0/24".parse().unwrap(),
            subnet6: None,
            public_ip: ip.parse().unwrap(),
            public_ipv6: ip6.map(|a| a.parse().unwrap()),
            path: Path::Direct,
            vtep6: None,
        }
    }

    #[test]
    fn the_members_are_the_remote_nodes_public_ips() {
        let p = tunnel_peers(&[
            node("192.0.2.3", Some("2001:db8::3")),
            node("192.0.2.2", None),
        ]);
        assert_eq!(
            p.v4.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["192.0.2.2", "192.0.2.3"]
        );
        assert_eq!(p.v6.len(), 1);
        assert_eq!(tunnel_peers(&[]), Peers::default());
    }
}
