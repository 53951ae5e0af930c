//! Rule expressions as twill writes them and as the kernel lists them back,
//! with their nf_tables attributes both ways, so that rules read back
//! compare with the rules twill would write.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::attr::{attr, attrs, be_u32, data_value, string, Attrs, Malformed, NLA_F_NESTED};

/// `NFT_REG_1`, the one data register the rules use; `NFT_REG_VERDICT` is 0.
const REG_1: u32 = 1;
const REG_VERDICT: u32 = 0;
/// `NFT_REG32_00`: the first 32-bit register; concatenations are loaded
/// field by field from here, each field padded to whole registers.
pub const REG32_00: u32 = 8;
/// `NFT_PAYLOAD_LL_HEADER` / `NFT_PAYLOAD_NETWORK_HEADER` /
/// `NFT_PAYLOAD_TRANSPORT_HEADER`.
pub const BASE_LL: u32 = 0;
pub const BASE_NETWORK: u32 = 1;
pub const BASE_TRANSPORT: u32 = 2;
/// `NF_DROP` / `NF_ACCEPT`.
pub const VERDICT_DROP: i32 = 0;
pub const VERDICT_ACCEPT: i32 = 1;
/// `NFT_LOOKUP_F_INV`: the lookup matches when the key is not in the set.
const LOOKUP_F_INV: u32 = 1;
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
    pub fn code(self) -> u32 {
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
    /// A payload loaded into register `reg` (not `NFT_REG_1`), a field of
    /// a concatenation.
    PayloadTo {
        reg: u32,
        base: u32,
        offset: u32,
        len: u32,
    },
    /// `meta <key>` loaded into register `reg`.
    Meta {
        reg: u32,
        key: u32,
    },
    /// A lookup of register `reg` in the named set; `inv` matches a miss.
    Lookup {
        reg: u32,
        set: String,
        inv: bool,
    },
    Masq {
        flags: u32,
    },
    Verdict(i32),
    /// An expression twill never writes, by its name.
    Other(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Saddr,
    Daddr,
}

/// `ip saddr`/`ip daddr`/`ip6 ...` compared with `net`, the way nft itself
/// encodes a prefix (so that `nft list` shows it as one): a whole-byte
/// prefix loads just its bytes and compares them; any other loads the whole
/// address and masks it first.
pub fn prefix_match(field: Field, op: CmpOp, net: IpNet) -> Vec<Expr> {
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
        Expr::PayloadTo {
            reg,
            base,
            offset,
            len,
        } => {
            let mut d = Attrs::default();
            d.u32(1, *reg).u32(2, *base).u32(3, *offset).u32(4, *len);
            ("payload", d)
        }
        Expr::Meta { reg, key } => {
            let mut d = Attrs::default();
            d.u32(1, *reg).u32(2, *key);
            ("meta", d)
        }
        Expr::Lookup { reg, set, inv } => {
            let mut d = Attrs::default();
            d.str(1, set).u32(2, *reg);
            if *inv {
                d.u32(5, LOOKUP_F_INV);
            }
            ("lookup", d)
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
        "payload" if get(1)? == REG_1 => Expr::Payload {
            base: get(2)?,
            offset: get(3)?,
            len: get(4)?,
        },
        "payload" => Expr::PayloadTo {
            reg: get(1)?,
            base: get(2)?,
            offset: get(3)?,
            len: get(4)?,
        },
        "meta" => Expr::Meta {
            reg: get(1)?,
            key: get(2)?,
        },
        "lookup" => Expr::Lookup {
            reg: get(2)?,
            set: string(attr(&d, 1))
                .ok_or(Malformed("lookup without a set"))?
                .to_string(),
            inv: be_u32(attr(&d, 5)).unwrap_or(0) & LOOKUP_F_INV != 0,
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

/// The packets counted by the first counter of an expression list.
pub fn counted_packets(list: &[u8]) -> Result<Option<u64>, Malformed> {
    for (t, elem) in attrs(list)? {
        if t != LIST_ELEM {
            continue;
        }
        let a = attrs(elem)?;
        if string(attr(&a, EXPR_NAME)) == Some("counter") {
            let d = attrs(attr(&a, EXPR_DATA).unwrap_or_default())?;
            let packets = attr(&d, 2)
                .and_then(|v| <[u8; 8]>::try_from(v).ok())
                .map(u64::from_be_bytes);
            return Ok(packets);
        }
    }
    Ok(None)
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
    fn a_foreign_expression_reads_back_as_other() {
        let exprs = vec![Expr::Other("log".into()), Expr::Counter];
        let mut list = Attrs::default();
        encode_list(&mut list, &exprs);
        assert_eq!(decode_list(&list.0).unwrap(), exprs);
        assert_eq!(counted_packets(&list.0).unwrap(), Some(0));
    }

    #[test]
    fn concatenation_fields_and_lookups_read_back() {
        let exprs = vec![
            Expr::Meta {
                reg: REG32_00,
                key: 4,
            },
            Expr::PayloadTo {
                reg: REG32_00 + 1,
                base: BASE_LL,
                offset: 6,
                len: 6,
            },
            Expr::Lookup {
                reg: REG32_00,
                set: "pods4".into(),
                inv: true,
            },
            Expr::Verdict(VERDICT_DROP),
        ];
        let mut list = Attrs::default();
        encode_list(&mut list, &exprs);
        assert_eq!(decode_list(&list.0).unwrap(), exprs);
        assert_eq!(counted_packets(&list.0).unwrap(), None);
    }
}
