//! nf_tables netlink messages and replies, without I/O. The layouts are the
//! kernel's UAPI (`linux/netfilter/nf_tables.h`, `nfnetlink.h`); numbers are
//! big-endian inside nf_tables attributes and native in netlink headers.

use crate::attr::{ne_u16, ne_u32, Attrs, Malformed};

/// `NFNL_SUBSYS_NFTABLES`: the high byte of every nf_tables message type.
pub const SUBSYS_NFTABLES: u16 = 10;
pub const BATCH_BEGIN: u16 = 0x10;
pub const BATCH_END: u16 = 0x11;

pub const MSG_NEWTABLE: u16 = 0;
pub const MSG_GETTABLE: u16 = 1;
pub const MSG_DELTABLE: u16 = 2;
pub const MSG_NEWCHAIN: u16 = 3;
pub const MSG_GETCHAIN: u16 = 4;
pub const MSG_DELCHAIN: u16 = 5;
pub const MSG_NEWRULE: u16 = 6;
pub const MSG_GETRULE: u16 = 7;
/// With only table and chain: flushes the chain.
pub const MSG_DELRULE: u16 = 8;
pub const MSG_NEWSET: u16 = 9;
pub const MSG_NEWSETELEM: u16 = 12;
pub const MSG_GETSETELEM: u16 = 13;
pub const MSG_DELSETELEM: u16 = 14;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;

// nf_tables attribute numbers (`NFTA_TABLE_*`, `NFTA_CHAIN_*`, ...).
pub const TABLE_NAME: u16 = 1;
pub const CHAIN_TABLE: u16 = 1;
pub const CHAIN_NAME: u16 = 3;
pub const CHAIN_HOOK: u16 = 4;
pub const CHAIN_POLICY: u16 = 5;
pub const CHAIN_TYPE: u16 = 7;
pub const HOOK_HOOKNUM: u16 = 1;
pub const HOOK_PRIORITY: u16 = 2;
pub const RULE_TABLE: u16 = 1;
pub const RULE_CHAIN: u16 = 2;
pub const RULE_EXPRESSIONS: u16 = 4;
pub const RULE_USERDATA: u16 = 7;
/// `NF_ACCEPT`, as a chain's policy.
pub const NF_ACCEPT: u32 = 1;

/// Netlink messages being written, numbered from `first_seq`.
pub struct Messages {
    buf: Vec<u8>,
    next_seq: u32,
    /// The sequence number of every message that asked for an ack, and what
    /// it did, to name the message the kernel refused.
    acked: Vec<(u32, String)>,
}

impl Messages {
    pub fn new(first_seq: u32) -> Self {
        Messages {
            buf: Vec::new(),
            next_seq: first_seq,
            acked: Vec::new(),
        }
    }

    /// Appends one message (`family` is the nfgenmsg's `NFPROTO_*`).
    pub fn push(&mut self, ty: u16, flags: u16, family: u8, res_id: u16, attrs: Attrs) -> u32 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        let len = 16 + 4 + attrs.0.len();
        self.buf.extend_from_slice(&(len as u32).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: family, NFNETLINK_V0, res_id (big-endian).
        self.buf.push(family);
        self.buf.push(0);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.buf.extend_from_slice(&attrs.0);
        seq
    }

    /// Appends nf_tables command `cmd`, asking for an ack; `what` names it.
    pub fn nft(&mut self, cmd: u16, flags: u16, family: u8, attrs: Attrs, what: String) -> u32 {
        let seq = self.push(
            (SUBSYS_NFTABLES << 8) | cmd,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            family,
            0,
            attrs,
        );
        self.acked.push((seq, what));
        seq
    }

    /// Appends a dump request of `cmd` (answered by data, then done).
    pub fn dump(&mut self, cmd: u16, family: u8, attrs: Attrs) -> u32 {
        self.push(
            (SUBSYS_NFTABLES << 8) | cmd,
            NLM_F_REQUEST | NLM_F_DUMP,
            family,
            0,
            attrs,
        )
    }

    /// Opens a transaction: the kernel applies every message up to
    /// [`Messages::end_batch`], or none of them.
    pub fn begin_batch(&mut self) {
        self.push(
            BATCH_BEGIN,
            NLM_F_REQUEST,
            0,
            SUBSYS_NFTABLES,
            Attrs::default(),
        );
    }

    pub fn end_batch(&mut self) {
        self.push(
            BATCH_END,
            NLM_F_REQUEST,
            0,
            SUBSYS_NFTABLES,
            Attrs::default(),
        );
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The sequence number after the last message's.
    pub fn next_seq(&self) -> u32 {
        self.next_seq
    }

    /// Every message that asked for an ack, with what it did.
    pub fn acked(&self) -> &[(u32, String)] {
        &self.acked
    }
}

/// One netlink message of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// An nf_tables message: its command and its attributes (after the
    /// nfgenmsg header).
    Data { seq: u32, cmd: u16, attrs: Vec<u8> },
    /// `NLMSG_ERROR` with 0: the ack of `seq`.
    Ack { seq: u32 },
    /// `NLMSG_ERROR` with an errno (positive).
    Error { seq: u32, errno: i32 },
    /// `NLMSG_DONE`: the end of a dump.
    Done { seq: u32 },
    /// A message of another type (`NLMSG_NOOP`, ...).
    Other { seq: u32 },
}

/// Splits one datagram from the kernel into its messages.
pub fn parse_replies(mut buf: &[u8]) -> Result<Vec<Reply>, Malformed> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = ne_u32(buf, 0).ok_or(Malformed("short header"))? as usize;
        if len < 16 || len > buf.len() {
            return Err(Malformed("message length out of range"));
        }
        let ty = ne_u16(buf, 4).ok_or(Malformed("short header"))?;
        let seq = ne_u32(buf, 8).ok_or(Malformed("short header"))?;
        let body = &buf[16..len];
        out.push(match ty {
            NLMSG_ERROR => {
                let code = ne_u32(body, 0).ok_or(Malformed("short error message"))? as i32;
                if code == 0 {
                    Reply::Ack { seq }
                } else {
                    Reply::Error {
                        seq,
                        errno: code.saturating_neg(),
                    }
                }
            }
            NLMSG_DONE => Reply::Done { seq },
            t if t >> 8 == SUBSYS_NFTABLES => Reply::Data {
                seq,
                cmd: t & 0xff,
                attrs: body.get(4..).ok_or(Malformed("short nfgenmsg"))?.to_vec(),
            },
            _ => Reply::Other { seq },
        });
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}
