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

    /// The same for the VTEP on the IPv6 underlay. Two VTEPs must never
    /// share a MAC: the kernel drops VXLAN frames whose inner source is its
    /// own device's MAC, so such a pair of nodes cannot talk. An IPv6
    /// address has 128 bits and a MAC 46 free ones, so it is laid out as:
    /// the address's last four bytes, XORed with a hash of the rest and the
    /// VNI (nodes of one subnet share the rest, so those four bytes tell
    /// them apart without fail), and seven more bits of that hash in the
    /// second byte, whose top bit keeps it apart from `for_vtep` (VNIs below
    /// 128). (An XOR fold of the whole address, the earlier rule, gave
    /// `2001:db8::2` and `2001:db8:0:1::3` one MAC.)
    pub fn for_vtep6(public_ipv6: Ipv6Addr, vni: u32) -> Mac {
        let o = public_ipv6.octets();
        let h = fnv1a64(o[..12].iter().chain(vni.to_be_bytes().iter())).to_be_bytes();
        Mac([
            0x0e,
            0x80 | (h[4] & 0x7f),
            o[12] ^ h[0],
            o[13] ^ h[1],
            o[14] ^ h[2],
            o[15] ^ h[3],
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

/// FNV-1a, 64 bits: stable across releases and platforms (a VTEP MAC must
/// survive upgrades), unlike the standard library's hasher.
fn fnv1a64<'a>(bytes: impl Iterator<Item = &'a u8>) -> u64 {
    bytes.fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
    fn vtep6_macs_of_many_nodes_never_collide() {
        use std::collections::HashSet;
        let mut seen = HashSet::new();
        // 64 subnets of 256 nodes each (same interface IDs in every
        // subnet, which a fold of the address confused), two VNIs.
        for vni in [1, 2] {
            for subnet in 0..64u16 {
                for host in 1..=256u16 {
                    let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, subnet, 0, 0, 0, host);
                    let m = Mac::for_vtep6(ip, vni);
                    assert!(seen.insert(m), "{ip} vni {vni}: {m} taken");
                    assert_eq!(m.0[1] & 0x80, 0x80, "apart from for_vtep");
                }
            }
        }
        // The pair that broke a DirectRouting cluster.
        assert_ne!(
            Mac::for_vtep6("2001:db8::2".parse().unwrap(), 1),
            Mac::for_vtep6("2001:db8:0:1::3".parse().unwrap(), 1)
        );
        // Pinned (computed apart, in Python): a change of the rule changes
        // every IPv6 VTEP MAC in every lease at the next start.
        assert_eq!(
            Mac::for_vtep6("2001:db8::7".parse().unwrap(), 1).to_string(),
            "0e:a3:f9:71:61:b0"
        );
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
