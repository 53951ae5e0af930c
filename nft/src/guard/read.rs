//! Reading the tables back: set elements and rules as a dump lists them,
//! and whether the listed rules are the ones twill writes.

use super::*;

/// Asks for the elements of `set` (a dump).
pub fn dump_elements(family: u8, set: &str, seq: u32) -> Messages {
    let mut a = Attrs::default();
    a.str(ELEMS_TABLE, TABLE).str(ELEMS_SET, set);
    let mut m = Messages::new(seq);
    m.dump(MSG_GETSETELEM, family, a);
    m
}

/// The elements a set dump listed (`NFT_MSG_NEWSETELEM`).
pub fn listed_elements(msg: &[u8]) -> Result<Vec<Element>, Malformed> {
    let a = attrs(msg)?;
    let Some(list) = attr(&a, ELEMS_ELEMENTS) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (t, elem) in attrs(list)? {
        if t != LIST_ELEM {
            continue;
        }
        let e = attrs(elem)?;
        let value = |ty| -> Result<Option<Vec<u8>>, Malformed> {
            let Some(data) = attr(&e, ty) else {
                return Ok(None);
            };
            let d = attrs(data)?;
            let v = attr(&d, DATA_VALUE).ok_or(Malformed("key without a value"))?;
            Ok(Some(v.to_vec()))
        };
        out.push(Element {
            key: value(ELEM_KEY)?.ok_or(Malformed("element without a key"))?,
            key_end: value(ELEM_KEY_END)?,
        });
    }
    Ok(out)
}

/// Asks for every rule of `family`'s table (a dump).
pub fn dump_rules(family: u8, seq: u32) -> Messages {
    let mut a = Attrs::default();
    a.str(RULE_TABLE, TABLE);
    let mut m = Messages::new(seq);
    m.dump(MSG_GETRULE, family, a);
    m
}

/// A rule the kernel listed: its chain, its filter (comment), its
/// expressions and what its counter counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub chain: String,
    pub filter: Option<String>,
    pub exprs: Vec<Expr>,
    pub packets: Option<u64>,
}

/// Decodes a listed rule (`NFT_MSG_NEWRULE`); `None` for another table's.
pub fn listed_rule(msg: &[u8]) -> Result<Option<Listed>, Malformed> {
    let a = attrs(msg)?;
    if string(attr(&a, RULE_TABLE)) != Some(TABLE) {
        return Ok(None);
    }
    let list = attr(&a, RULE_EXPRESSIONS).unwrap_or_default();
    let filter = attr(&a, RULE_USERDATA).and_then(|u| {
        let (&ty, rest) = u.split_first()?;
        let (&len, text) = rest.split_first()?;
        (ty == UDATA_COMMENT)
            .then(|| string(text.get(..usize::from(len))))
            .flatten()
            .map(str::to_string)
    });
    Ok(Some(Listed {
        chain: string(attr(&a, RULE_CHAIN)).unwrap_or_default().to_string(),
        filter,
        exprs: decode_list(list)?,
        packets: counted_packets(list)?,
    }))
}

/// Whether rules listed in `chain` are exactly `want`, in order.
pub fn rules_match(listed: &[Listed], chain: &str, want: &[Rule]) -> bool {
    let ours: Vec<&Listed> = listed.iter().filter(|l| l.chain == chain).collect();
    ours.len() == want.len()
        && ours
            .iter()
            .zip(want)
            .all(|(l, w)| l.filter.as_deref() == Some(w.filter) && l.exprs == w.exprs)
}
