//! Netlink attributes, written and read: the type-length-value encoding
//! nf_tables messages carry (lengths and types in host order, values as
//! nf_tables defines them, mostly big-endian).

/// The flag of an attribute that holds attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
/// The type bits of an attribute's type field (without its flags).
pub const NLA_TYPE_MASK: u16 = 0x3fff;
/// `NFTA_DATA_VALUE`: the value inside an nf_tables data attribute.
pub const DATA_VALUE: u16 = 1;

/// Netlink attributes being written.
#[derive(Default)]
pub struct Attrs(pub Vec<u8>);

impl Attrs {
    pub fn put(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    pub fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    pub fn u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(ty, &b)
    }

    pub fn nested(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::default();
        f(&mut inner);
        self.put(ty | NLA_F_NESTED, &inner.0)
    }

    pub fn data(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        self.nested(ty, |a| {
            a.put(DATA_VALUE, value);
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed nftables netlink reply: {0}")]
pub struct Malformed(pub &'static str);

pub fn ne_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

pub fn ne_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The attributes in `buf`, as (type without flags, value).
pub fn attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, Malformed> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(ne_u16(buf, 0).ok_or(Malformed("short attribute"))?);
        let ty = ne_u16(buf, 2).ok_or(Malformed("short attribute"))? & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(Malformed("attribute length out of range"));
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
    }
    Ok(out)
}

pub fn attr<'a>(list: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    list.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

pub fn be_u32(v: Option<&[u8]>) -> Option<u32> {
    Some(u32::from_be_bytes(v?.try_into().ok()?))
}

pub fn string(v: Option<&[u8]>) -> Option<&str> {
    let v = v?;
    std::str::from_utf8(v.strip_suffix(&[0]).unwrap_or(v)).ok()
}

pub fn data_value(v: Option<&[u8]>) -> Result<Vec<u8>, Malformed> {
    let inner = attrs(v.ok_or(Malformed("expression without its data"))?)?;
    attr(&inner, DATA_VALUE)
        .map(<[u8]>::to_vec)
        .ok_or(Malformed("data without a value"))
}
