//! ICMP echo probes: the packets (built and parsed here, pure) and the raw
//! socket they go out on. The IP header is ours (`IP_HDRINCL`), so every
//! probe carries don't-fragment and the source address pod traffic uses,
//! whatever path MTU the kernel has cached: a full-size probe that does not
//! fit is dropped or refused, never fragmented.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Protocol, Socket, Type};

/// IPv4 header without options, and the ICMP echo header.
pub const IP_HEADER: usize = 20;
pub const ICMP_HEADER: usize = 8;
/// The smallest probe: headers and a 16-byte payload.
pub const SMALL_PROBE: usize = IP_HEADER + ICMP_HEADER + 16;
/// Biggest packet `build_echo` makes (the largest IPv4 packet).
pub const MAX_PROBE: usize = 65_535;

const RECV_BUFFER: usize = 1 << 20;
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const DONT_FRAGMENT: u16 = 0x4000;
const TTL: u8 = 64;
const PROTO_ICMP: u8 = 1;

/// The internet checksum (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request of `size` bytes in all (IP header included, clamped to
/// `SMALL_PROBE..=MAX_PROBE`) from `src` to `dst`, don't-fragment set.
pub fn build_echo(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, size: usize) -> Vec<u8> {
    let size = size.clamp(SMALL_PROBE, MAX_PROBE);
    let mut p = vec![0u8; size];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[6..8].copy_from_slice(&DONT_FRAGMENT.to_be_bytes());
    p[8] = TTL;
    p[9] = PROTO_ICMP;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..IP_HEADER]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let icmp = &mut p[IP_HEADER..];
    fill_echo(icmp, ECHO_REQUEST, id, seq);
    let sum = checksum(icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// Writes an echo message's type, identifier, sequence number and payload
/// into `icmp` (zeroed, checksum left to the caller): ICMP and ICMPv6
/// echoes share this layout.
pub(super) fn fill_echo(icmp: &mut [u8], kind: u8, id: u16, seq: u16) {
    icmp[0] = kind;
    icmp[4..6].copy_from_slice(&id.to_be_bytes());
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in icmp[ICMP_HEADER..].iter_mut().enumerate() {
        *b = i as u8;
    }
}

/// An echo reply, of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoReply {
    pub from: IpAddr,
    pub id: u16,
    pub seq: u16,
    /// The whole packet's length, IP header included.
    pub len: usize,
}

/// The echo reply in `packet`, or `None` for anything else (other ICMP
/// types, truncated or mangled packets).
pub fn parse_reply(packet: &[u8]) -> Option<EchoReply> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(first & 0x0f) * 4;
    if ihl < IP_HEADER || packet.get(9) != Some(&PROTO_ICMP) {
        return None;
    }
    let icmp = packet.get(ihl..)?;
    if icmp.len() < ICMP_HEADER || icmp[0] != ECHO_REPLY || icmp[1] != 0 {
        return None;
    }
    let from = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    Some(EchoReply {
        from: from.into(),
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        len: packet.len(),
    })
}

/// A raw socket (needs CAP_NET_RAW) with our own IP header, registered
/// with tokio. It is held as a tokio `UdpSocket`, the safe way to register
/// a datagram descriptor: `sendto` and `recvfrom` work alike on a raw
/// socket (the port is ignored). Both families' echo sockets are one.
pub(super) struct RawSocket {
    sock: tokio::net::UdpSocket,
    buf: Vec<u8>,
}

impl RawSocket {
    /// Opens a raw socket of `domain` for `protocol`, our header included.
    pub(super) fn open(domain: Domain, protocol: Protocol) -> std::io::Result<Self> {
        let s = Socket::new(domain, Type::RAW, Some(protocol))?;
        if domain == Domain::IPV6 {
            s.set_header_included_v6(true)?;
        } else {
            s.set_header_included_v4(true)?;
        }
        s.set_nonblocking(true)?;
        // Room for a slot's replies (the kernel caps it at rmem_max).
        s.set_recv_buffer_size(RECV_BUFFER)?;
        Ok(RawSocket {
            sock: tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(s))?,
            buf: vec![0u8; MAX_PROBE],
        })
    }

    /// Sends one packet; the kernel refuses one bigger than the route's
    /// MTU (EMSGSIZE) rather than fragmenting it.
    pub(super) fn send(&self, to: SocketAddr, packet: &[u8]) -> std::io::Result<()> {
        match self.sock.try_send_to(packet, to) {
            Ok(_) => Ok(()),
            // A full socket buffer: this probe is lost, like on the wire.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The next packet `parse` makes something of, from anyone; others are
    /// skipped. Cancel-safe.
    pub(super) async fn recv<R>(
        &mut self,
        parse: impl Fn(SocketAddr, &[u8]) -> Option<R>,
    ) -> std::io::Result<R> {
        loop {
            let (n, from) = self.sock.recv_from(&mut self.buf).await?;
            if let Some(r) = parse(from, &self.buf[..n]) {
                return Ok(r);
            }
        }
    }
}

/// The raw ICMP socket (IP header first, in both directions).
pub struct EchoSocket(RawSocket);

impl EchoSocket {
    pub fn open() -> std::io::Result<Self> {
        RawSocket::open(Domain::IPV4, Protocol::ICMPV4).map(EchoSocket)
    }

    /// Sends one packet built by [`build_echo`]; the kernel refuses one
    /// bigger than the route's MTU (EMSGSIZE) rather than fragmenting it.
    pub fn send(&self, dst: Ipv4Addr, packet: &[u8]) -> std::io::Result<()> {
        self.0.send(SocketAddrV4::new(dst, 0).into(), packet)
    }

    /// The next echo reply addressed to anyone on this host; other ICMP
    /// packets are skipped.
    pub async fn recv(&mut self) -> std::io::Result<EchoReply> {
        self.0.recv(|_, packet| parse_reply(packet)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_reply(mut p: Vec<u8>) -> Vec<u8> {
        // What the remote kernel sends back: addresses swapped, type 0.
        let (src, dst) = (p[12..16].to_vec(), p[16..20].to_vec());
        p[12..16].copy_from_slice(&dst);
        p[16..20].copy_from_slice(&src);
        p[IP_HEADER] = ECHO_REPLY;
        p
    }

    #[test]
    fn an_echo_request_has_df_the_size_asked_and_valid_checksums() {
        let p = build_echo(
            Ipv4Addr::new(10, 244, 1, 0),
            Ipv4Addr::new(10, 244, 2, 0),
            7,
            9,
            1450,
        );
        assert_eq!(p.len(), 1450);
        assert_eq!(u16::from_be_bytes([p[2], p[3]]), 1450);
        assert_eq!(
            u16::from_be_bytes([p[6], p[7]]) & DONT_FRAGMENT,
            DONT_FRAGMENT
        );
        // A buffer holding its own checksum sums to zero.
        assert_eq!(checksum(&p[..IP_HEADER]), 0);
        assert_eq!(checksum(&p[IP_HEADER..]), 0);
        assert_eq!(&p[12..16], &[10, 244, 1, 0]);
        assert_eq!(&p[16..20], &[10, 244, 2, 0]);
        assert_eq!(p[IP_HEADER], ECHO_REQUEST);
    }

    #[test]
    fn sizes_are_clamped() {
        let a = Ipv4Addr::new(10, 244, 1, 0);
        assert_eq!(build_echo(a, a, 1, 1, 0).len(), SMALL_PROBE);
        assert_eq!(build_echo(a, a, 1, 1, 1 << 20).len(), MAX_PROBE);
    }

    #[test]
    fn replies_are_parsed_and_everything_else_skipped() {
        let req = build_echo(
            Ipv4Addr::new(10, 244, 1, 0),
            Ipv4Addr::new(10, 244, 2, 0),
            0xbeef,
            513,
            100,
        );
        assert_eq!(parse_reply(&req), None, "a request is not a reply");
        let r = parse_reply(&as_reply(req.clone())).unwrap();
        assert_eq!(
            r,
            EchoReply {
                from: Ipv4Addr::new(10, 244, 2, 0).into(),
                id: 0xbeef,
                seq: 513,
                len: 100
            }
        );
        assert_eq!(parse_reply(&[]), None);
        assert_eq!(parse_reply(&as_reply(req.clone())[..24]), None);
        let mut v6 = as_reply(req.clone());
        v6[0] = 0x65;
        assert_eq!(parse_reply(&v6), None);
        let mut udp = as_reply(req);
        udp[9] = 17;
        assert_eq!(parse_reply(&udp), None);
    }
}
