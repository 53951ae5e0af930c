//! The pod's entries in the isolation table `bridge twill-guard` (see
//! `twill_nft::guard`): its port, MAC and addresses go in at ADD, in one
//! nf_tables transaction over netlink (no process spawned), and come out
//! at DEL, together with the entries of ports that no longer exist.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use twill_nft::guard::{self as g, PodPort};
use twill_nft::wire::Messages;
use twill_nft::{Exchange, NftSocket};

use crate::error::Error;

fn failed(op: &str, reason: impl std::fmt::Display) -> Error {
    Error::Guard {
        op: op.to_string(),
        reason: reason.to_string(),
    }
}

fn send(s: &NftSocket, op: &str, m: &Messages) -> Result<(), Error> {
    let ex = s
        .exchange(m, Exchange::acks(m))
        .map_err(|e| failed(op, e))?;
    match ex.refused {
        None => Ok(()),
        Some((what, errno)) => Err(failed(
            op,
            format!("{what}: {}", std::io::Error::from_raw_os_error(errno)),
        )),
    }
}

/// Adds the pod on host port `ifindex` with `mac` and its addresses.
pub fn add(
    ifindex: u32,
    mac: &[u8],
    v4: Option<Ipv4Addr>,
    v6: Option<Ipv6Addr>,
    extra: &[IpNet],
) -> Result<(), Error> {
    let op = "adding the pod's port, MAC and addresses";
    let mac: [u8; 6] = mac
        .try_into()
        .map_err(|_| failed(op, "MAC is not 6 bytes"))?;
    let pod = PodPort {
        ifindex,
        mac,
        v4,
        v6,
        extra: extra.to_vec(),
    };
    let s = NftSocket::open().map_err(|e| failed(op, e))?;
    send(&s, op, &g::add_pod(&pod, s.next_seq()))
}

/// Whether a link with index `ifindex` exists in this namespace.
fn link_exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null()
}

/// Removes the entries of port `ifindex` (when known) and of every port
/// that no longer exists (a pod whose veth went without a DEL). Nothing
/// to remove, or no table, is no error.
pub fn remove(ifindex: Option<u32>) -> Result<(), Error> {
    let op = "removing the pod's entries";
    let s = match NftSocket::open() {
        Ok(s) => s,
        Err(e) if e.unsupported() => return Ok(()),
        Err(e) => return Err(failed(op, e)),
    };
    let mut gone = Vec::new();
    for set in g::POD_SETS {
        let seq = s.next_seq();
        let ex = s
            .exchange(
                &g::dump_elements(g::BRIDGE, set, seq),
                Exchange::dump(seq, format!("listing set {set}")),
            )
            .map_err(|e| failed(op, e))?;
        if ex.refused.is_some() {
            // No table or set: nothing of this pod's is there.
            continue;
        }
        for (_, msg) in &ex.data {
            for e in g::listed_elements(msg).map_err(|e| failed(op, e))? {
                let Some(port) = e.key.get(..4).and_then(|b| <[u8; 4]>::try_from(b).ok()) else {
                    continue;
                };
                let port = u32::from_ne_bytes(port);
                if Some(port) == ifindex || !link_exists(port) {
                    gone.push((set, e));
                }
            }
        }
    }
    if gone.is_empty() {
        return Ok(());
    }
    send(&s, op, &g::remove_elements(&gone, s.next_seq()))
}
