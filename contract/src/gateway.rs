//! The gateway rule: a node subnet's gateway (the bridge address, and the
//! pods' default route) is its first host address.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// The gateway (bridge) address of a node's IPv4 subnet: `<net>.1`.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// The IPv6 gateway (bridge) address of a node's IPv6 subnet: `<net>::1`.
pub fn gateway6_of(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()).saturating_add(1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn gateway_is_the_first_host() {
        assert_eq!(
            gateway_of("10.244.3.0/24".parse().unwrap()),
            Ipv4Addr::new(10, 244, 3, 1)
        );
        // Host bits of the argument do not matter.
        assert_eq!(
            gateway_of("10.244.3.77/24".parse().unwrap()),
            Ipv4Addr::new(10, 244, 3, 1)
        );
        assert_eq!(
            gateway_of("10.244.0.128/25".parse().unwrap()),
            Ipv4Addr::new(10, 244, 0, 129)
        );
        assert_eq!(
            gateway6_of("fd00:10:244:3::/64".parse().unwrap()),
            "fd00:10:244:3::1".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            gateway6_of("fd00::4/126".parse().unwrap()),
            "fd00::5".parse::<Ipv6Addr>().unwrap()
        );
    }
}
