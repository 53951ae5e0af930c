//! A blocking rtnetlink socket that sends several requests in one write and
//! then reads all their answers.
//!
//! One plugin call makes a handful of netlink requests, most of which do not
//! depend on the answer of the one before. The kernel handles the messages of
//! one write in order and answers each (a reply and/or an ACK), carrying on
//! after a failed one, so a batch costs one round trip instead of one per
//! request. No runtime and no thread: the call blocks on `recv`.

use std::io;

use rtnetlink::packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLMSG_DONE, NLMSG_ERROR,
    NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket as RawSocket};

/// Largest datagram read at once; dumps of a pod namespace fit easily.
const RECV_BUF: usize = 64 * 1024;
/// Extended ACK attribute carrying the kernel's error message.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// How long a read waits for the kernel: it answers at once, so reaching
/// this means something is badly wrong, and the call fails instead of
/// hanging the runtime.
const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Length of a netlink message header.
const HEADER_LEN: usize = 16;

/// What went wrong with one request, or with the socket.
#[derive(Debug, thiserror::Error)]
pub enum NlError {
    /// The kernel refused the request with an errno (and maybe a reason).
    #[error("{}{}", io::Error::from_raw_os_error(*.errno), .message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel { errno: i32, message: Option<String> },
    /// The socket itself failed.
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// An answer that does not parse.
    #[error("undecodable netlink answer: {0}")]
    Decode(String),
}

impl NlError {
    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NlError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// The link/address/route named does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENODEV) | Some(libc::ENOENT))
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

/// One request: a message and its flags beyond `NLM_F_REQUEST`.
#[derive(Debug, Clone)]
pub struct Request {
    msg: RouteNetlinkMessage,
    flags: u16,
}

impl Request {
    /// A plain request, acknowledged (GET of one object, DEL, change).
    pub fn ack(msg: RouteNetlinkMessage) -> Self {
        Request {
            msg,
            flags: NLM_F_ACK,
        }
    }

    /// Creates an object that must not exist yet.
    pub fn create(msg: RouteNetlinkMessage) -> Self {
        Request {
            msg,
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        }
    }

    /// Creates an object or replaces the one there.
    pub fn replace(msg: RouteNetlinkMessage) -> Self {
        Request {
            msg,
            flags: NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        }
    }

    /// A dump: ends with `NLMSG_DONE` instead of an ACK.
    pub fn dump(msg: RouteNetlinkMessage) -> Self {
        Request {
            msg,
            flags: NLM_F_DUMP,
        }
    }
}

/// The answer to one request: the messages it returned.
pub type Answer = Result<Vec<RouteNetlinkMessage>, NlError>;

/// Requests written but not read back yet.
#[derive(Debug)]
#[must_use = "the answers must be collected"]
pub struct Pending {
    first_seq: u32,
    count: usize,
}

/// A blocking `NETLINK_ROUTE` socket of the namespace it was opened in.
pub struct Socket {
    sock: RawSocket,
    seq: u32,
    buf: Vec<u8>,
    timeout: std::time::Duration,
}

impl std::os::fd::AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace. Unbound
    /// and unconnected: the first send binds it, and sends without an
    /// address go to the kernel.
    pub fn open() -> Result<Self, NlError> {
        let sock = RawSocket::new(NETLINK_ROUTE)?;
        // ACKs without a copy of the request, with the kernel's reason.
        sock.set_cap_ack(true)?;
        sock.set_ext_ack(true)?;
        let mut s = Socket {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
            timeout: RECV_TIMEOUT,
        };
        s.set_timeout(RECV_TIMEOUT)?;
        Ok(s)
    }

    /// How long a read waits before the call fails (`SO_RCVTIMEO`).
    pub fn set_timeout(&mut self, t: std::time::Duration) -> io::Result<()> {
        set_recv_timeout(&self.sock, t)?;
        self.timeout = t;
        Ok(())
    }

    /// Writes all `reqs` in one datagram.
    pub fn send(&mut self, reqs: Vec<Request>) -> Result<Pending, NlError> {
        let first_seq = self.seq.wrapping_add(1);
        let count = reqs.len();
        let mut out = Vec::new();
        for r in reqs {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = NLM_F_REQUEST | r.flags;
            header.sequence_number = self.seq;
            let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(r.msg));
            msg.finalize();
            let start = out.len();
            out.resize(start + msg.buffer_len(), 0);
            msg.serialize(&mut out[start..]);
        }
        if count > 0 {
            self.sock.send(&out, 0)?;
        }
        Ok(Pending { first_seq, count })
    }

    /// Reads until every request of `p` is answered; answers in request
    /// order. `Err` only when the socket fails; a refused request is an
    /// `Err` in its own slot.
    pub fn collect(&mut self, p: Pending) -> Result<Vec<Answer>, NlError> {
        let mut replies: Vec<Vec<RouteNetlinkMessage>> = vec![Vec::new(); p.count];
        let mut done: Vec<Option<Result<(), NlError>>> = (0..p.count).map(|_| None).collect();
        let mut open = p.count;
        while open > 0 {
            self.buf.clear();
            let timeout = self.timeout;
            self.sock.recv(&mut self.buf, 0).map_err(|e| {
                if e.kind() == io::ErrorKind::WouldBlock {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no answer from the kernel within {timeout:?}"),
                    )
                } else {
                    e
                }
            })?;
            let mut off = 0;
            while off + HEADER_LEN <= self.buf.len() {
                let frame = &self.buf[off..];
                let nb = NetlinkBuffer::new_checked(frame)
                    .map_err(|e| NlError::Decode(e.to_string()))?;
                let len = nb.length() as usize;
                if len < HEADER_LEN || len > frame.len() {
                    return Err(NlError::Decode(format!("bad message length {len}")));
                }
                let (seq, kind, flags) = (nb.sequence_number(), nb.message_type(), nb.flags());
                let msg = &frame[..len];
                off += (len + 3) & !3;
                let Some(i) = seq
                    .checked_sub(p.first_seq)
                    .map(|i| i as usize)
                    .filter(|i| *i < p.count)
                else {
                    continue; // not ours (an earlier batch's straggler)
                };
                if done[i].is_some() {
                    continue;
                }
                let finished = match kind {
                    NLMSG_ERROR => Some(error_answer(msg, flags)),
                    NLMSG_DONE => Some(Ok(())),
                    _ => {
                        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(msg) {
                            Ok(m) => {
                                if let NetlinkPayload::InnerMessage(m) = m.payload {
                                    replies[i].push(m);
                                }
                                None
                            }
                            // Keep reading until this request's ACK arrives.
                            Err(e) => Some(Err(NlError::Decode(e.to_string()))),
                        }
                    }
                };
                if let Some(f) = finished {
                    done[i] = Some(f);
                    open -= 1;
                }
            }
        }
        Ok(done
            .into_iter()
            .zip(replies)
            .map(|(d, r)| match d {
                Some(Ok(())) => Ok(r),
                Some(Err(e)) => Err(e),
                None => Err(NlError::Decode("no answer".into())),
            })
            .collect())
    }

    /// Sends `reqs` and waits for their answers.
    pub fn call(&mut self, reqs: Vec<Request>) -> Result<Vec<Answer>, NlError> {
        let p = self.send(reqs)?;
        self.collect(p)
    }

    /// One request, one answer.
    pub fn one(&mut self, req: Request) -> Answer {
        self.call(vec![req])?
            .pop()
            .unwrap_or_else(|| Err(NlError::Decode("no answer".into())))
    }
}

/// `SO_RCVTIMEO` on `sock`: a `recv` that waits longer fails with EAGAIN.
fn set_recv_timeout(sock: &RawSocket, t: std::time::Duration) -> io::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
    let tv = nix::sys::time::TimeVal::new(
        libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        libc::suseconds_t::from(t.subsec_micros()),
    );
    setsockopt(sock, ReceiveTimeout, &tv).map_err(io::Error::from)
}

/// An `NLMSG_ERROR` message: an ACK (code 0) or a refusal with the errno
/// and, with extended ACKs, the kernel's message.
fn error_answer(msg: &[u8], flags: u16) -> Result<(), NlError> {
    let body = &msg[HEADER_LEN.min(msg.len())..];
    let Some(code) = body.get(..4) else {
        return Err(NlError::Decode("short error message".into()));
    };
    let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
    if code == 0 {
        return Ok(());
    }
    let message = if flags & NLM_F_ACK_TLVS != 0 {
        // With NETLINK_CAP_ACK only the request's header follows the code.
        body.get(4 + HEADER_LEN..).and_then(ext_ack_message)
    } else {
        None
    };
    Err(NlError::Kernel {
        errno: -code,
        message,
    })
}

/// The `NLMSGERR_ATTR_MSG` string of extended ACK attributes.
fn ext_ack_message(mut tlvs: &[u8]) -> Option<String> {
    while tlvs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([tlvs[0], tlvs[1]]));
        let kind = u16::from_ne_bytes([tlvs[2], tlvs[3]]);
        if len < 4 || len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &tlvs[4..len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        tlvs = tlvs.get((len + 3) & !3..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_frame(code: i32, tlvs: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        m.extend(code.to_ne_bytes());
        m.extend([0u8; HEADER_LEN]);
        m.extend(tlvs);
        m
    }

    #[test]
    fn ack_and_refusal_with_reason() {
        assert!(error_answer(&error_frame(0, &[]), 0).is_ok());
        let text = b"Nexthop has invalid gateway\0";
        let mut tlv = Vec::new();
        tlv.extend(((4 + text.len()) as u16).to_ne_bytes());
        tlv.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        tlv.extend(text);
        let e = error_answer(&error_frame(-libc::EINVAL, &tlv), NLM_F_ACK_TLVS).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(e.to_string().contains("Nexthop has invalid gateway"), "{e}");
        let e = error_answer(&error_frame(-libc::ENODEV, &[]), 0).unwrap_err();
        assert!(e.is_not_found());
    }

    #[test]
    fn a_read_without_answer_times_out() {
        let mut s = Socket::open().unwrap();
        s.set_timeout(std::time::Duration::from_millis(20)).unwrap();
        // Nothing was sent, so nothing will come.
        let p = Pending {
            first_seq: 1,
            count: 1,
        };
        let e = s.collect(p).err().unwrap();
        assert!(
            e.to_string()
                .contains("no answer from the kernel within 20ms"),
            "{e}"
        );
    }

    #[test]
    fn truncated_error_and_tlvs_do_not_panic() {
        assert!(error_answer(&[0u8; 10], 0).is_err());
        assert_eq!(ext_ack_message(&[200, 0, 1, 0]), None);
        assert_eq!(ext_ack_message(&[1, 0]), None);
    }
}
