//! The expressions of twill's rules: what the rules are (pod to pod
//! returns, the rest but multicast is masqueraded), and their nf_tables
//! attributes both ways, so that rules the kernel lists back compare with
//! the rules twill would write.

use std::net::IpAddr;

use ipnet::IpNet;

use super::attr::{attr, attrs, be_u32, data_value, string, Attrs, Malformed, NLA_F_NESTED};

/// `NFT_REG_1`, the one data register the rules use; `NFT_REG_VERDICT` is 0.
const REG_1: u32 = 1;
const REG_VERDICT: u32 = 0;
/// `NFT_PAYLOAD_NETWORK_HEADER`.
pub const BASE_NETWORK: u32 = 1;
/// `NFT_RETURN`.
pub const VERDICT_RETURN: i32 = -5;
/// `NF_NAT_RANGE_PROTO_RANDOM_FULLY`.
pub const MASQ_RANDOM_FULLY: u32 = 0x10;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;

/// `NFT_CMP_EQ` / `NFT_CMP_NEQ`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Neq,
}

impl CmpOp {
    fn code(self) -> u32 {
        match self {
            CmpOp::Eq => 0,
            CmpOp::Neq => 1,
        }
    }
}

/// One expression of a rule, as twill writes it and as the kernel lists it
/// back (registers left out: every rule uses `NFT_REG_1` only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    Bitwise {
        mask: Vec<u8>,
        xor: Vec<u8>,
    },
    Cmp {
        op: u32,
        data: Vec<u8>,
    },
    Counter,
    Masq {
        flags: u32,
    },
    Verdict(i32),
    /// An expression twill never writes, by its name.
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Saddr,
    Daddr,
}

/// `ip saddr`/`ip daddr`/`ip6 ...` compared with `net`, the way nft itself
/// encodes a prefix (so that `nft list` shows it as one): a whole-byte
/// prefix loads just its bytes and compares them; any other loads the whole
/// address and masks it first.
fn prefix_match(field: Field, op: CmpOp, net: IpNet) -> Vec<Expr> {
    let (offset, addr): (u32, Vec<u8>) = match (net.network(), field) {
        (IpAddr::V4(a), Field::Saddr) => (12, a.octets().to_vec()),
        (IpAddr::V4(a), Field::Daddr) => (16, a.octets().to_vec()),
        (IpAddr::V6(a), Field::Saddr) => (8, a.octets().to_vec()),
        (IpAddr::V6(a), Field::Daddr) => (24, a.octets().to_vec()),
    };
    let bits = usize::from(net.prefix_len());
    let whole_bytes = bits % 8 == 0 && bits > 0;
    let len = if whole_bytes { bits / 8 } else { addr.len() };
    let mut exprs = vec![Expr::Payload {
        base: BASE_NETWORK,
        offset,
        len: len as u32,
    }];
    let mask: Vec<u8> = (0..len)
        .map(|i| {
            let left = bits.saturating_sub(i * 8).min(8);
            // `left` is 0..=8; a u16 shift keeps 8 in range.
            (0xff00u16 >> left) as u8
        })
        .collect();
    if !whole_bytes {
        exprs.push(Expr::Bitwise {
            mask: mask.clone(),
            xor: vec![0; len],
        });
    }
    let data = addr[..len].iter().zip(&mask).map(|(a, m)| a & m).collect();
    exprs.push(Expr::Cmp {
        op: op.code(),
        data,
    });
    exprs
}

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

fn encode_expr(a: &mut Attrs, e: &Expr) {
    let (name, data): (&str, Attrs) = match e {
        Expr::Payload { base, offset, len } => {
            let mut d = Attrs::default();
            d.u32(1, REG_1).u32(2, *base).u32(3, *offset).u32(4, *len);
            ("payload", d)
        }
        Expr::Bitwise { mask, xor } => {
            let mut d = Attrs::default();
            d.u32(1, REG_1)
                .u32(2, REG_1)
                .u32(3, mask.len() as u32)
                .data(4, mask)
                .data(5, xor);
            ("bitwise", d)
        }
        Expr::Cmp { op, data } => {
            let mut d = Attrs::default();
            d.u32(1, REG_1).u32(2, *op).data(3, data);
            ("cmp", d)
        }
        Expr::Counter => {
            let mut d = Attrs::default();
            d.u64(1, 0).u64(2, 0);
            ("counter", d)
        }
        Expr::Masq { flags } => {
            let mut d = Attrs::default();
            if *flags != 0 {
                d.u32(1, *flags);
            }
            ("masq", d)
        }
        Expr::Verdict(code) => {
            let mut d = Attrs::default();
            d.u32(1, REG_VERDICT).nested(2, |v| {
                v.nested(DATA_VERDICT, |c| {
                    c.u32(VERDICT_CODE, *code as u32);
                });
            });
            ("immediate", d)
        }
        Expr::Other(name) => (name.as_str(), Attrs::default()),
    };
    a.nested(LIST_ELEM, |el| {
        el.str(EXPR_NAME, name);
        el.put(EXPR_DATA | NLA_F_NESTED, &data.0);
    });
}

fn decode_expr(elem: &[u8]) -> Result<Expr, Malformed> {
    let a = attrs(elem)?;
    let name = string(attr(&a, EXPR_NAME)).ok_or(Malformed("expression without a name"))?;
    let d = attrs(attr(&a, EXPR_DATA).unwrap_or_default())?;
    let get = |ty| be_u32(attr(&d, ty)).ok_or(Malformed("expression attribute missing"));
    Ok(match name {
        "payload" => Expr::Payload {
            base: get(2)?,
            offset: get(3)?,
            len: get(4)?,
        },
        "bitwise" => Expr::Bitwise {
            mask: data_value(attr(&d, 4))?,
            xor: data_value(attr(&d, 5))?,
        },
        "cmp" => Expr::Cmp {
            op: get(2)?,
            data: data_value(attr(&d, 3))?,
        },
        "counter" => Expr::Counter,
        "masq" => Expr::Masq {
            flags: be_u32(attr(&d, 1)).unwrap_or(0),
        },
        "immediate" if get(1)? == REG_VERDICT => {
            let data = attrs(attr(&d, 2).ok_or(Malformed("immediate without data"))?)?;
            let verdict = attrs(attr(&data, DATA_VERDICT).ok_or(Malformed("not a verdict"))?)?;
            Expr::Verdict(
                be_u32(attr(&verdict, VERDICT_CODE)).ok_or(Malformed("no verdict code"))? as i32,
            )
        }
        other => Expr::Other(other.to_string()),
    })
}

/// Writes `exprs` as the elements of an expression list.
pub fn encode_list(list: &mut Attrs, exprs: &[Expr]) {
    for e in exprs {
        encode_expr(list, e);
    }
}

/// The expressions of an expression list the kernel sent.
pub fn decode_list(list: &[u8]) -> Result<Vec<Expr>, Malformed> {
    attrs(list)?
        .into_iter()
        .filter(|(t, _)| *t == LIST_ELEM)
        .map(|(_, e)| decode_expr(e))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_slash_16_loads_two_bytes_and_compares_them() {
        assert_eq!(
            prefix_match(Field::Saddr, CmpOp::Eq, net("10.244.0.0/16")),
            vec![
                Expr::Payload {
                    base: BASE_NETWORK,
                    offset: 12,
                    len: 2
                },
                Expr::Cmp {
                    op: 0,
                    data: vec![10, 244]
                },
            ]
        );
    }

    #[test]
    fn a_partial_prefix_loads_the_whole_address_and_masks_it() {
        assert_eq!(
            prefix_match(Field::Daddr, CmpOp::Neq, net("224.0.0.0/4")),
            vec![
                Expr::Payload {
                    base: BASE_NETWORK,
                    offset: 16,
                    len: 4
                },
                Expr::Bitwise {
                    mask: vec![0xf0, 0, 0, 0],
                    xor: vec![0; 4]
                },
                Expr::Cmp {
                    op: 1,
                    data: vec![0xe0, 0, 0, 0]
                },
            ]
        );
        // 10.240.0.0/12 given as 10.244.0.0/12: the host bits are masked off.
        let m = prefix_match(Field::Saddr, CmpOp::Eq, net("10.244.0.0/12"));
        assert_eq!(
            m[1],
            Expr::Bitwise {
                mask: vec![0xff, 0xf0, 0, 0],
                xor: vec![0; 4]
            }
        );
        assert_eq!(
            m[2],
            Expr::Cmp {
                op: 0,
                data: vec![10, 0xf0, 0, 0]
            }
        );
    }

    #[test]
    fn ipv6_addresses_sit_at_their_own_offsets() {
        let m = prefix_match(Field::Daddr, CmpOp::Eq, net("fd00:10:244::/48"));
        assert_eq!(
            m[0],
            Expr::Payload {
                base: BASE_NETWORK,
                offset: 24,
                len: 6
            }
        );
        assert_eq!(
            m[1],
            Expr::Cmp {
                op: 0,
                data: vec![0xfd, 0, 0, 0x10, 0x02, 0x44]
            }
        );
        let s = prefix_match(Field::Saddr, CmpOp::Eq, net("fd00::/8"));
        assert_eq!(
            s[0],
            Expr::Payload {
                base: BASE_NETWORK,
                offset: 8,
                len: 1
            }
        );
    }

    #[test]
    fn a_slash_0_masks_the_whole_address() {
        let m = prefix_match(Field::Saddr, CmpOp::Eq, net("0.0.0.0/0"));
        assert_eq!(
            m,
            vec![
                Expr::Payload {
                    base: BASE_NETWORK,
                    offset: 12,
                    len: 4
                },
                Expr::Bitwise {
                    mask: vec![0; 4],
                    xor: vec![0; 4]
                },
                Expr::Cmp {
                    op: 0,
                    data: vec![0; 4]
                },
            ]
        );
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

    #[test]
    fn a_foreign_expression_reads_back_as_other() {
        let exprs = vec![Expr::Other("log".into()), Expr::Counter];
        let mut list = Attrs::default();
        encode_list(&mut list, &exprs);
        assert_eq!(decode_list(&list.0).unwrap(), exprs);
    }
}
