//! ICMPv6 echo probes, the IPv6 twin of `icmp.rs`: the packets (built and
//! parsed here, pure) and the raw ICMPv6 socket they go out on. The IPv6
//! header is ours (`IPV6_HDRINCL`), as the IPv4 one is: every probe carries
//! the source address pod traffic uses, and the kernel never fragments it:
//! a full-size probe bigger than the outgoing device's MTU, or than the
//! route's (a path MTU the kernel has cached), is refused (EMSGSIZE). The
//! kernel does not fill in the ICMPv6 checksum of a packet with our own
//! header, so it is computed here, over RFC 8200's pseudo-header.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, Protocol};

use super::icmp::{checksum, fill_echo, EchoReply, RawSocket, ICMP_HEADER, MAX_PROBE};

/// The IPv6 header (no extension headers).
pub const IP6_HEADER: usize = 40;
/// The smallest probe: headers and a 16-byte payload.
pub const SMALL_PROBE6: usize = IP6_HEADER + ICMP_HEADER + 16;

const ECHO_REQUEST6: u8 = 128;
const ECHO_REPLY6: u8 = 129;
const HOP_LIMIT: u8 = 64;
const PROTO_ICMPV6: u8 = 58;

/// The ICMPv6 checksum of `icmp` sent from `src` to `dst` (RFC 8200 8.1:
/// the pseudo-header holds both addresses, the upper-layer length and the
/// next header value).
pub fn checksum6(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(40 + icmp.len());
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
    data.extend_from_slice(&[0, 0, 0, PROTO_ICMPV6]);
    data.extend_from_slice(icmp);
    checksum(&data)
}

/// An ICMPv6 echo request of `size` bytes in all (IPv6 header included,
/// clamped to `SMALL_PROBE6..=MAX_PROBE`) from `src` to `dst`.
pub fn build_echo6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, size: usize) -> Vec<u8> {
    let size = size.clamp(SMALL_PROBE6, MAX_PROBE);
    let mut p = vec![0u8; size];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&((size - IP6_HEADER) as u16).to_be_bytes());
    p[6] = PROTO_ICMPV6;
    p[7] = HOP_LIMIT;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    let icmp = &mut p[IP6_HEADER..];
    fill_echo(icmp, ECHO_REQUEST6, id, seq);
    let sum = checksum6(src, dst, icmp);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The echo reply in `icmp`, an ICMPv6 message from `from` as a raw ICMPv6
/// socket hands it over (without the IPv6 header), or `None` for anything
/// else (other ICMPv6 types, such as neighbour discovery, or truncated
/// messages).
pub fn parse_reply6(from: Ipv6Addr, icmp: &[u8]) -> Option<EchoReply> {
    if icmp.len() < ICMP_HEADER || icmp[0] != ECHO_REPLY6 || icmp[1] != 0 {
        return None;
    }
    Some(EchoReply {
        from: from.into(),
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        len: icmp.len() + IP6_HEADER,
    })
}

/// The raw ICMPv6 socket (needs CAP_NET_RAW): our IPv6 header going
/// out, the ICMPv6 message alone coming in.
pub struct EchoSocket6(RawSocket);

impl EchoSocket6 {
    pub fn open() -> std::io::Result<Self> {
        RawSocket::open(Domain::IPV6, Protocol::ICMPV6).map(EchoSocket6)
    }

    /// Sends one packet built by [`build_echo6`]; the kernel refuses one
    /// bigger than the route's MTU (EMSGSIZE) rather than fragmenting it.
    pub fn send(&self, dst: Ipv6Addr, packet: &[u8]) -> std::io::Result<()> {
        self.0.send(SocketAddrV6::new(dst, 0, 0, 0).into(), packet)
    }

    /// The next echo reply addressed to anyone on this host; other ICMPv6
    /// messages are skipped.
    pub async fn recv(&mut self) -> std::io::Result<EchoReply> {
        let parse = |from: SocketAddr, icmp: &[u8]| match from {
            SocketAddr::V6(from) => parse_reply6(*from.ip(), icmp),
            SocketAddr::V4(_) => None,
        };
        self.0.recv(parse).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn an_echo_request_has_the_size_asked_addresses_and_a_valid_checksum() {
        let (src, dst) = (a("fd00:10:244:1::"), a("fd00:10:244:2::"));
        let p = build_echo6(src, dst, 7, 9, 1430);
        assert_eq!(p.len(), 1430);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), 1430 - 40);
        assert_eq!((p[6], p[7]), (PROTO_ICMPV6, HOP_LIMIT));
        assert_eq!(&p[8..24], &src.octets());
        assert_eq!(&p[24..40], &dst.octets());
        let icmp = &p[IP6_HEADER..];
        assert_eq!((icmp[0], icmp[1]), (ECHO_REQUEST6, 0));
        assert_eq!(u16::from_be_bytes([icmp[4], icmp[5]]), 7);
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), 9);
        // A message holding its own checksum sums to zero, with the
        // pseudo-header of these addresses only.
        assert_eq!(checksum6(src, dst, icmp), 0);
        assert_ne!(checksum6(src, a("fd00:10:244:3::"), icmp), 0);
    }

    #[test]
    fn the_checksum_matches_a_known_packet() {
        // An echo request (id 0x1234, seq 1, 4 payload bytes) from fe80::1
        // to fe80::2; 0xd2e1 was computed apart from this code (a Python
        // one's-complement sum over the pseudo-header and the message).
        let mut icmp = vec![128, 0, 0, 0, 0x12, 0x34, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        let sum = checksum6(a("fe80::1"), a("fe80::2"), &icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(checksum6(a("fe80::1"), a("fe80::2"), &icmp), 0);
        assert_eq!(sum, 0xd2e1, "{sum:#x}");
    }

    #[test]
    fn sizes_are_clamped() {
        let x = a("fd00::");
        assert_eq!(build_echo6(x, x, 1, 1, 0).len(), SMALL_PROBE6);
        assert_eq!(build_echo6(x, x, 1, 1, 1 << 20).len(), MAX_PROBE);
    }

    #[test]
    fn replies_are_parsed_and_everything_else_skipped() {
        let req = build_echo6(a("fd00:10:244:1::"), a("fd00:10:244:2::"), 0xbeef, 513, 100);
        let mut reply = req[IP6_HEADER..].to_vec();
        assert_eq!(
            parse_reply6(a("fd00:10:244:2::"), &reply),
            None,
            "a request"
        );
        reply[0] = ECHO_REPLY6;
        assert_eq!(
            parse_reply6(a("fd00:10:244:2::"), &reply),
            Some(EchoReply {
                from: a("fd00:10:244:2::").into(),
                id: 0xbeef,
                seq: 513,
                len: 100,
            })
        );
        assert_eq!(parse_reply6(a("fd00::"), &reply[..7]), None);
        // Neighbour advertisement.
        reply[0] = 136;
        assert_eq!(parse_reply6(a("fd00::"), &reply), None);
        reply[0] = ECHO_REPLY6;
        reply[1] = 1;
        assert_eq!(parse_reply6(a("fd00::"), &reply), None);
    }
}
