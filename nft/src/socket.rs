//! The one place that talks to nf_tables: a blocking `NETLINK_NETFILTER`
//! socket that sends prepared messages and collects the replies. What a
//! request waits for is decided by [`Exchange`], which is pure.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::io;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::TimeVal;

use crate::attr::Malformed;
use crate::wire::{parse_replies, Messages, Reply};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot open an nftables netlink socket: {0}")]
    Open(#[source] io::Error),
    #[error("nftables netlink: {0}")]
    Io(#[source] io::Error),
    #[error("no answer from nftables netlink within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Malformed(#[from] Malformed),
}

impl NftError {
    /// Whether the kernel has no nf_tables netlink at all.
    pub fn unsupported(&self) -> bool {
        matches!(self, NftError::Open(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT))
    }
}

/// How long one reply may take; the kernel answers at once, so this only
/// bounds a wedged socket.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Larger than any datagram the kernel sends for twill's small tables.
const RECV_BUF: usize = 256 * 1024;

/// The replies of one request, as they come in.
#[derive(Debug)]
pub struct Exchange {
    /// Sequence numbers still waiting for their ack (or error).
    pending: BTreeSet<u32>,
    /// The sequence number of a dump still waiting for its end.
    dump: Option<u32>,
    /// What each sequence number did, to name a refused message.
    names: Vec<(u32, String)>,
    /// nf_tables messages received: (command, attributes).
    pub data: Vec<(u16, Vec<u8>)>,
    /// The first refusal: what, errno.
    pub refused: Option<(String, i32)>,
}

impl Exchange {
    /// Waits for the ack of every message of `m` that asked for one.
    pub fn acks(m: &Messages) -> Self {
        Exchange {
            pending: m.acked().iter().map(|(s, _)| *s).collect(),
            dump: None,
            names: m.acked().to_vec(),
            data: Vec::new(),
            refused: None,
        }
    }

    /// Waits for the end of the dump `seq`, which did `what`.
    pub fn dump(seq: u32, what: String) -> Self {
        Exchange {
            pending: BTreeSet::new(),
            dump: Some(seq),
            names: vec![(seq, what)],
            data: Vec::new(),
            refused: None,
        }
    }

    fn ours(&self, seq: u32) -> bool {
        self.pending.contains(&seq) || self.dump == Some(seq)
    }

    /// Takes in one datagram's replies; `true` once nothing more is due.
    /// Replies to other sequence numbers (a stale socket) are ignored.
    pub fn feed(&mut self, replies: Vec<Reply>) -> bool {
        for r in replies {
            match r {
                Reply::Data { seq, cmd, attrs } if self.ours(seq) => self.data.push((cmd, attrs)),
                Reply::Ack { seq } => {
                    self.pending.remove(&seq);
                }
                Reply::Error { seq, errno } if self.ours(seq) => {
                    let what = self
                        .names
                        .iter()
                        .find(|(s, _)| *s == seq)
                        .map(|(_, w)| w.clone())
                        .unwrap_or_default();
                    // The kernel aborts the whole transaction on the first
                    // refusal; the later errors only follow from it.
                    self.refused.get_or_insert((what, errno));
                    return true;
                }
                Reply::Done { seq } if self.dump == Some(seq) => self.dump = None,
                _ => {}
            }
        }
        self.pending.is_empty() && self.dump.is_none()
    }
}

/// An nftables netlink socket in the caller's network namespace. Every
/// request on it gets sequence numbers of its own, so a late reply to an
/// earlier one can never pass for an answer.
pub struct NftSocket {
    sock: Socket,
    next_seq: Cell<u32>,
}

impl NftSocket {
    pub fn open() -> Result<Self, NftError> {
        let mut s = Socket::new(NETLINK_NETFILTER).map_err(NftError::Open)?;
        s.bind_auto().map_err(NftError::Open)?;
        let timeout = TimeVal::new(REPLY_TIMEOUT.as_secs() as i64, 0);
        setsockopt(&s, ReceiveTimeout, &timeout).map_err(|e| NftError::Open(io::Error::from(e)))?;
        Ok(NftSocket {
            sock: s,
            next_seq: Cell::new(1),
        })
    }

    /// The first sequence number for the next request.
    pub fn next_seq(&self) -> u32 {
        self.next_seq.get()
    }

    /// Sends `m` and reads replies until `ex` has all it waits for.
    pub fn exchange(&self, m: &Messages, mut ex: Exchange) -> Result<Exchange, NftError> {
        self.next_seq.set(m.next_seq());
        let sent = self.sock.send(m.bytes(), 0).map_err(NftError::Io)?;
        if sent != m.bytes().len() {
            return Err(NftError::Io(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", m.bytes().len()),
            )));
        }
        let mut buf: Vec<u8> = Vec::with_capacity(RECV_BUF);
        loop {
            buf.clear();
            let n = match self.sock.recv(&mut buf, 0) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(NftError::Timeout(REPLY_TIMEOUT))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NftError::Io(e)),
            };
            if n > buf.len() {
                return Err(NftError::Io(io::Error::other(format!(
                    "reply of {n} bytes truncated to {}",
                    buf.len()
                ))));
            }
            if ex.feed(parse_replies(&buf)?) {
                return Ok(ex);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::attr::Attrs;
    use crate::wire::MSG_NEWCHAIN;

    /// A batch of three named commands, numbered from 1.
    fn replace(_: &[ipnet::IpNet], first: u32) -> Messages {
        let mut m = Messages::new(first);
        m.begin_batch();
        m.nft(0, 0, 2, Attrs::default(), "adding table ip twill".into());
        let chain = "adding chain ip twill postrouting".to_string();
        m.nft(MSG_NEWCHAIN, 0, 2, Attrs::default(), chain);
        m.nft(6, 0, 2, Attrs::default(), "adding rule 1".into());
        m.end_batch();
        m
    }

    #[test]
    fn a_batch_is_done_when_every_command_is_acked() {
        let m = replace(&["10.244.0.0/16".parse().unwrap()], 1);
        let seqs: Vec<u32> = m.acked().iter().map(|(s, _)| *s).collect();
        let mut ex = Exchange::acks(&m);
        let (last, first) = seqs.split_last().unwrap();
        assert!(!ex.feed(first.iter().map(|&seq| Reply::Ack { seq }).collect()));
        // A stray reply from another request changes nothing.
        assert!(!ex.feed(vec![Reply::Error { seq: 999, errno: 1 }]));
        assert!(ex.feed(vec![Reply::Ack { seq: *last }]));
        assert!(ex.refused.is_none());
    }

    #[test]
    fn the_first_refusal_names_its_message_and_ends_the_exchange() {
        let m = replace(&["10.244.0.0/16".parse().unwrap()], 1);
        let chain = m
            .acked()
            .iter()
            .find(|(_, w)| w.starts_with("adding chain"))
            .unwrap()
            .0;
        let mut ex = Exchange::acks(&m);
        assert!(ex.feed(vec![
            Reply::Ack { seq: 1 },
            Reply::Error {
                seq: chain,
                errno: 95
            },
            Reply::Error {
                seq: chain + 1,
                errno: 2
            },
        ]));
        assert_eq!(
            ex.refused,
            Some(("adding chain ip twill postrouting".into(), 95))
        );
    }

    #[test]
    fn a_dump_collects_its_data_until_done() {
        let mut ex = Exchange::dump(4, "listing".into());
        assert!(!ex.feed(vec![
            Reply::Data {
                seq: 4,
                cmd: 6,
                attrs: vec![1]
            },
            Reply::Data {
                seq: 3,
                cmd: 6,
                attrs: vec![2]
            },
        ]));
        assert!(ex.feed(vec![Reply::Done { seq: 4 }]));
        assert_eq!(ex.data, vec![(6, vec![1])]);
    }
}
