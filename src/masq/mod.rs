//! ip-masq: pod traffic leaving the cluster network is masqueraded to the
//! node's address; pod-to-pod traffic and traffic from outside to pods are
//! not. The rules live in nftables tables of their own (`ip twill`, and
//! `ip6 twill` in a dual-stack cluster), replaced as a whole in one
//! nf_tables transaction (add, delete, recreate), so a restart never leaves
//! a moment without rules.
//!
//! twill speaks nf_tables netlink itself: the node image has no `nft`
//! binary, and the C bindings (libnftnl) would add shared libraries to it.
//! `expr` says what the rules are, `msg` builds the messages and parses the
//! replies (over `attr`, the attribute encoding), all pure; `socket` is the
//! one place that talks to the kernel.

mod attr;
mod expr;
mod msg;

use std::io;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use msg::{Family, TABLE};
use twill_nft::{Exchange, NftError, NftSocket};

const ENOENT: i32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    /// The socket, a timeout or a malformed answer (as the guard's errors).
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

/// A reply the rules are read from that does not parse.
impl From<attr::Malformed> for MasqError {
    fn from(m: attr::Malformed) -> Self {
        MasqError::Nft(m.into())
    }
}

impl MasqError {
    fn refused((what, errno): (String, i32)) -> Self {
        MasqError::Refused {
            what,
            source: io::Error::from_raw_os_error(errno),
        }
    }
}

/// The networks twill masquerades for: the cluster's IPv4 network (none in
/// an IPv6-only cluster) and, in a dual-stack or IPv6-only cluster, its
/// IPv6 network. A family without a network has no table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Networks {
    pub v4: Option<Ipv4Net>,
    pub v6: Option<Ipv6Net>,
}

impl Networks {
    /// The cluster network of `family`, when twill keeps a table there.
    fn of(&self, family: Family) -> Option<IpNet> {
        match family {
            Family::Ip => self.v4.map(IpNet::V4),
            Family::Ip6 => self.v6.map(IpNet::V6),
        }
    }

    fn all(&self) -> Vec<IpNet> {
        Family::ALL.iter().filter_map(|f| self.of(*f)).collect()
    }
}

/// Runs `f` with a fresh socket on the blocking pool: sockets are opened in
/// the agent's own namespace, and the calls block only for the kernel's
/// immediate answer.
async fn with_socket<T: Send + 'static>(
    f: impl FnOnce(&NftSocket) -> Result<T, MasqError> + Send + 'static,
) -> Result<T, MasqError> {
    tokio::task::spawn_blocking(move || f(&NftSocket::open()?))
        .await
        .map_err(|e| MasqError::Join(e.to_string()))?
}

/// Installs (or atomically replaces) the masquerade rules.
pub async fn apply(networks: &Networks) -> Result<(), MasqError> {
    let nets = networks.all();
    with_socket(move |s| {
        let m = msg::replace(&nets, s.next_seq());
        let ex = s.exchange(&m, Exchange::acks(&m))?;
        ex.refused.map_or(Ok(()), |r| Err(MasqError::refused(r)))
    })
    .await
}

/// Whether `family`'s table exists.
fn table_exists(s: &NftSocket, family: Family) -> Result<bool, MasqError> {
    let m = msg::get_table(family, s.next_seq());
    match s.exchange(&m, Exchange::acks(&m))?.refused {
        None => Ok(true),
        Some((_, ENOENT)) => Ok(false),
        Some(r) => Err(MasqError::refused(r)),
    }
}

/// Whether `family`'s table holds exactly the chain and rules twill writes
/// for `network`.
fn table_in_place(s: &NftSocket, family: Family, network: IpNet) -> Result<bool, MasqError> {
    let m = msg::get_chain(family, s.next_seq());
    let ex = s.exchange(&m, Exchange::acks(&m))?;
    match ex.refused {
        None => {}
        Some((_, ENOENT)) => return Ok(false),
        Some(r) => return Err(MasqError::refused(r)),
    }
    let mut ours = false;
    for (cmd, attrs) in &ex.data {
        ours |= msg::is_chain(*cmd) && msg::is_our_chain(attrs)?;
    }
    if !ours {
        return Ok(false);
    }
    let seq = s.next_seq();
    let m = msg::dump_rules(family, seq);
    let what = format!("listing the rules of {} {TABLE}", family.name());
    let ex = s.exchange(&m, Exchange::dump(seq, what))?;
    match ex.refused {
        None => {}
        Some((_, ENOENT)) => return Ok(false),
        Some(r) => return Err(MasqError::refused(r)),
    }
    let mut listed = Vec::new();
    for (cmd, attrs) in &ex.data {
        if msg::is_rule(*cmd) {
            if let Some(rule) = msg::our_rule(attrs)? {
                listed.push(rule);
            }
        }
    }
    Ok(listed == expr::rules(network))
}

/// True when every table twill needs is there with exactly its rules, and
/// no table of a family out of use is left (checked each resync).
pub async fn in_place(networks: &Networks) -> Result<bool, MasqError> {
    let networks = *networks;
    with_socket(move |s| {
        for family in Family::ALL {
            let right = match networks.of(family) {
                Some(net) => table_in_place(s, family, net)?,
                None => !table_exists(s, family)?,
            };
            if !right {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
}

/// Removes twill's tables; `Ok(true)` when there were any. A kernel without
/// nf_tables netlink has none.
pub async fn remove() -> Result<bool, MasqError> {
    let r = with_socket(|s| {
        let mut present = Vec::new();
        for family in Family::ALL {
            if table_exists(s, family)? {
                present.push(family);
            }
        }
        if present.is_empty() {
            return Ok(false);
        }
        let m = msg::removal(&present, s.next_seq());
        let ex = s.exchange(&m, Exchange::acks(&m))?;
        ex.refused.map_or(Ok(true), |r| Err(MasqError::refused(r)))
    })
    .await;
    match r {
        Err(MasqError::Nft(e)) if e.unsupported() => Ok(false),
        other => other,
    }
}
