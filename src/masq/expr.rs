//! The expressions of twill's rules: what the rules are (pod to pod
//! returns, the rest but multicast is masqueraded), and their nf_tables
//! attributes both ways, so that rules the kernel lists back compare with
//! the rules twill would write.

use ipnet::IpNet;

pub use twill_nft::expr::{decode_list, encode_list, Expr};
use twill_nft::expr::{prefix_match, CmpOp, Field, MASQ_RANDOM_FULLY, VERDICT_RETURN};

/// The rules of the table for `network`, in order: pod to pod anywhere in
/// the cluster keeps its address; pod to the outside world (multicast
/// excepted) leaves with the node's address.
pub fn rules(network: IpNet) -> Vec<Vec<Expr>> {
    let multicast: IpNet = match network {
        IpNet::V4(_) => IpNet::V4(ipnet::Ipv4Net::new_assert([224, 0, 0, 0].into(), 4)),
        IpNet::V6(_) => IpNet::V6(ipnet::Ipv6Net::new_assert(
            [0xff00, 0, 0, 0, 0, 0, 0, 0].into(),
            8,
        )),
    };
    let mut pod_to_pod = prefix_match(Field::Saddr, CmpOp::Eq, network);
    pod_to_pod.extend(prefix_match(Field::Daddr, CmpOp::Eq, network));
    pod_to_pod.push(Expr::Verdict(VERDICT_RETURN));
    let mut outside = prefix_match(Field::Saddr, CmpOp::Eq, network);
    outside.extend(prefix_match(Field::Daddr, CmpOp::Neq, multicast));
    outside.push(Expr::Counter);
    outside.push(Expr::Masq {
        flags: MASQ_RANDOM_FULLY,
    });
    vec![pod_to_pod, outside]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn pod_to_pod_returns_and_the_rest_is_masqueraded_but_multicast() {
        let r = rules(net("10.244.0.0/16"));
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].last(), Some(&Expr::Verdict(VERDICT_RETURN)));
        // saddr in the network, daddr in the network.
        assert!(matches!(r[0][0], Expr::Payload { offset: 12, .. }));
        assert!(matches!(r[0][2], Expr::Payload { offset: 16, .. }));
        assert_eq!(
            &r[1][r[1].len() - 2..],
            &[
                Expr::Counter,
                Expr::Masq {
                    flags: MASQ_RANDOM_FULLY
                }
            ]
        );
        assert!(r[1].contains(&Expr::Cmp {
            op: 1,
            data: vec![0xe0, 0, 0, 0]
        }));
        let r6 = rules(net("fd00:10:244::/48"));
        assert!(r6[1].contains(&Expr::Cmp {
            op: 1,
            data: vec![0xff]
        }));
    }
}
