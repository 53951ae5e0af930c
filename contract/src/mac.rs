//! MAC addresses and the rules that derive them: the bridge MAC the agent
//! and the plugin both set, and the VTEP MACs other nodes learn from leases.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// A MAC address, as the kernel and the lease JSON know it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
    pub fn parse(s: &str) -> Option<Mac> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next()?;
            // from_str_radix alone would take a sign ("+a").
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            *byte = u8::from_str_radix(part, 16).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(Mac(out))
    }

    /// Takes the first six bytes of a netlink attribute, if there are six.
    pub fn from_slice(bytes: &[u8]) -> Option<Mac> {
        let arr: [u8; 6] = bytes.get(..6)?.try_into().ok()?;
        Some(Mac(arr))
    }

    /// A stable, locally administered unicast MAC for the VTEP of a node, so
    /// that recreating the device keeps the address the other nodes know.
    pub fn for_vtep(public_ip: Ipv4Addr, vni: u32) -> Mac {
        let ip = public_ip.octets();
        // 0x0e: locally administered, unicast. The VNI's low byte keeps two
        // VTEPs of one node on different VNIs apart.
        Mac([0x0e, (vni & 0xff) as u8, ip[0], ip[1], ip[2], ip[3]])
    }

    /// The same for the VTEP on the IPv6 underlay: the address folded into
    /// four bytes, and a second byte that keeps it apart from `for_vtep`.
    pub fn for_vtep6(public_ipv6: Ipv6Addr, vni: u32) -> Mac {
        let o = public_ipv6.octets();
        let mut folded = [0u8; 4];
        for (i, b) in o.iter().enumerate() {
            folded[i % 4] ^= b;
        }
        Mac([
            0x0e,
            0x80 | (vni & 0x7f) as u8,
            folded[0],
            folded[1],
            folded[2],
            folded[3],
        ])
    }

    /// A stable MAC for a node's bridge, derived from its gateway address:
    /// locally administered `0a:58` + the address. The agent and the plugin
    /// both set it, so whichever creates the bridge, it is the same, and the
    /// bridge never falls back to 00:00:.. when its last port leaves.
    pub fn for_bridge(gateway: Ipv4Addr) -> Mac {
        let ip = gateway.octets();
        Mac([0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]])
    }

    /// The bridge MAC of an IPv6-only node, from its IPv6 gateway: `0a:58`
    /// and the gateway's last four bytes (the node subnet's host part,
    /// enough to stay stable; it only needs to be unique on the bridge).
    pub fn for_bridge6(gateway: Ipv6Addr) -> Mac {
        let o = gateway.octets();
        Mac([0x0a, 0x58, o[12], o[13], o[14], o[15]])
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn mac_parse_and_display_round_trip() {
        let m = Mac::parse("0E:01:c0:00:02:0a").unwrap();
        assert_eq!(m.to_string(), "0e:01:c0:00:02:0a");
        assert_eq!(Mac::parse("0e:01:c0:00:02"), None);
        assert_eq!(Mac::parse("0e:01:c0:00:02:0a:0b"), None);
        assert_eq!(Mac::parse("0e:01:c0:00:02:zz"), None);
        assert_eq!(Mac::parse("0e:1:c0:00:02:0a"), None);
        assert_eq!(Mac::parse("+e:01:c0:00:02:0a"), None);
        assert_eq!(Mac::parse(""), None);
        assert_eq!(Mac::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn vtep_mac_is_unicast_local_and_stable() {
        let a = Mac::for_vtep(ip("192.0.2.7"), 1);
        assert_eq!(a, Mac::for_vtep(ip("192.0.2.7"), 1));
        assert_ne!(a, Mac::for_vtep(ip("192.0.2.8"), 1));
        assert_eq!(a.0[0] & 1, 0, "unicast");
        assert_eq!(a.0[0] & 2, 2, "locally administered");
    }

    #[test]
    fn vtep6_mac_is_unicast_local_and_differs_from_the_ipv4_one() {
        let m = Mac::for_vtep6("2001:db8::7".parse().unwrap(), 1);
        assert_eq!(m.0[0] & 1, 0);
        assert_eq!(m.0[0] & 2, 2);
        assert_ne!(m, Mac::for_vtep6("2001:db8::8".parse().unwrap(), 1));
        assert_ne!(m, Mac::for_vtep(ip("192.0.2.7"), 1));
    }

    #[test]
    fn bridge_mac_is_0a58_and_the_gateway() {
        let m = Mac::for_bridge(ip("10.244.3.1"));
        assert_eq!(m.0, [0x0a, 0x58, 10, 244, 3, 1]);
        assert_eq!(m.to_string(), "0a:58:0a:f4:03:01");
        assert_eq!(m.0[0] & 0x01, 0, "unicast");
        assert_eq!(m.0[0] & 0x02, 0x02, "locally administered");
        assert_ne!(m, Mac::for_bridge(ip("10.244.4.1")));
        assert!(!m.is_zero());
        assert!(Mac([0; 6]).is_zero());
    }
}
