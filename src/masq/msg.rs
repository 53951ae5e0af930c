//! nf_tables netlink messages, built and parsed without I/O: the batch that
//! replaces twill's tables, the requests that read them back, and the
//! decoding of the kernel's replies. The layouts are the kernel's UAPI
//! (`linux/netfilter/nf_tables.h`, `linux/netfilter/nfnetlink.h`); numbers
//! are big-endian inside nf_tables attributes and native in netlink headers.

use ipnet::IpNet;

use super::attr::{attr, attrs, be_u32, string, Attrs, Malformed};
#[cfg(test)]
use super::attr::{ne_u16, ne_u32};
use super::expr::{decode_list, encode_list, rules, Expr};

pub use twill_nft::wire::Messages;
#[cfg(test)]
use twill_nft::wire::{parse_replies, Reply};
#[cfg(test)]
use twill_nft::wire::{
    BATCH_BEGIN, BATCH_END, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
    SUBSYS_NFTABLES,
};
use twill_nft::wire::{
    CHAIN_HOOK, CHAIN_NAME, CHAIN_POLICY, CHAIN_TABLE, CHAIN_TYPE, HOOK_HOOKNUM, HOOK_PRIORITY,
    NF_ACCEPT, RULE_CHAIN, RULE_EXPRESSIONS, RULE_TABLE, TABLE_NAME,
};
use twill_nft::wire::{
    MSG_DELTABLE, MSG_GETCHAIN, MSG_GETRULE, MSG_GETTABLE, MSG_NEWCHAIN, MSG_NEWRULE, MSG_NEWTABLE,
    NLM_F_APPEND, NLM_F_CREATE,
};

/// `NF_INET_POST_ROUTING`.
const HOOK_POSTROUTING: u32 = 4;
/// The priority nft calls `srcnat`.
const PRIO_SRCNAT: i32 = 100;

/// The nftables table twill owns, in each family it uses.
pub const TABLE: &str = "twill";
/// Its one chain, a nat base chain on the postrouting hook.
pub const CHAIN: &str = "postrouting";
const CHAIN_KIND: &str = "nat";

/// An nftables address family twill keeps a table in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Ip,
    Ip6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ip, Family::Ip6];

    /// `NFPROTO_IPV4` / `NFPROTO_IPV6`.
    fn proto(self) -> u8 {
        match self {
            Family::Ip => 2,
            Family::Ip6 => 10,
        }
    }

    /// The name nft uses (`ip twill`, `ip6 twill`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
        }
    }

    pub fn of(net: IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::Ip,
            IpNet::V6(_) => Family::Ip6,
        }
    }
}

fn table_attrs() -> Attrs {
    let mut a = Attrs::default();
    a.str(TABLE_NAME, TABLE);
    a
}

/// One transaction: the kernel applies every message between begin and end,
/// or none of them.
pub struct Batch(Messages);

impl Batch {
    pub fn new(first_seq: u32) -> Self {
        let mut m = Messages::new(first_seq);
        m.begin_batch();
        Batch(m)
    }

    /// Adds `family`'s table, or nothing when it exists.
    fn new_table(&mut self, family: Family) {
        let what = format!("adding table {} {TABLE}", family.name());
        self.0.nft(
            MSG_NEWTABLE,
            NLM_F_CREATE,
            family.proto(),
            table_attrs(),
            what,
        );
    }

    /// Deletes `family`'s table whether or not it exists: adding a table
    /// that exists is no error, so add then delete always succeeds.
    pub fn clear_table(&mut self, family: Family) {
        let f = family.name();
        self.new_table(family);
        self.0.nft(
            MSG_DELTABLE,
            0,
            family.proto(),
            table_attrs(),
            format!("deleting table {f} {TABLE}"),
        );
    }

    /// Adds the table for `network`, its chain and its rules.
    pub fn add_table(&mut self, network: IpNet) {
        let family = Family::of(network);
        let f = family.name();
        self.new_table(family);
        let mut chain = Attrs::default();
        chain
            .str(CHAIN_TABLE, TABLE)
            .str(CHAIN_NAME, CHAIN)
            .nested(CHAIN_HOOK, |h| {
                h.u32(HOOK_HOOKNUM, HOOK_POSTROUTING)
                    .u32(HOOK_PRIORITY, PRIO_SRCNAT as u32);
            })
            .u32(CHAIN_POLICY, NF_ACCEPT)
            .str(CHAIN_TYPE, CHAIN_KIND);
        self.0.nft(
            MSG_NEWCHAIN,
            NLM_F_CREATE,
            family.proto(),
            chain,
            format!("adding chain {f} {TABLE} {CHAIN}"),
        );
        for (i, rule) in rules(network).iter().enumerate() {
            let mut a = Attrs::default();
            a.str(RULE_TABLE, TABLE)
                .str(RULE_CHAIN, CHAIN)
                .nested(RULE_EXPRESSIONS, |list| encode_list(list, rule));
            self.0.nft(
                MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                family.proto(),
                a,
                format!("adding rule {} of {f} {TABLE} {CHAIN}", i + 1),
            );
        }
    }

    pub fn finish(mut self) -> Messages {
        self.0.end_batch();
        self.0
    }
}

/// The batch that replaces both families' tables with those for
/// `networks`: a table of a family no longer in use goes too.
pub fn replace(networks: &[IpNet], first_seq: u32) -> Messages {
    let mut b = Batch::new(first_seq);
    for f in Family::ALL {
        b.clear_table(f);
    }
    for net in networks {
        b.add_table(*net);
    }
    b.finish()
}

/// The batch that deletes the tables of `families`.
pub fn removal(families: &[Family], first_seq: u32) -> Messages {
    let mut b = Batch::new(first_seq);
    for f in families {
        b.clear_table(*f);
    }
    b.finish()
}

/// One request `cmd` that asks for an ack, numbered `seq`.
fn request(cmd: u16, family: Family, attrs: Attrs, what: String, seq: u32) -> Messages {
    let mut m = Messages::new(seq);
    m.nft(cmd, 0, family.proto(), attrs, what);
    m
}

/// Asks for `family`'s table (answered with the table or `ENOENT`).
pub fn get_table(family: Family, seq: u32) -> Messages {
    let what = format!("reading table {} {TABLE}", family.name());
    request(MSG_GETTABLE, family, table_attrs(), what, seq)
}

/// Asks for the chain of `family`'s table.
pub fn get_chain(family: Family, seq: u32) -> Messages {
    let mut a = Attrs::default();
    a.str(CHAIN_TABLE, TABLE).str(CHAIN_NAME, CHAIN);
    let what = format!("reading chain {} {TABLE} {CHAIN}", family.name());
    request(MSG_GETCHAIN, family, a, what, seq)
}

/// Asks for every rule of the chain of `family`'s table (a dump).
pub fn dump_rules(family: Family, seq: u32) -> Messages {
    let mut a = Attrs::default();
    a.str(RULE_TABLE, TABLE).str(RULE_CHAIN, CHAIN);
    let mut m = Messages::new(seq);
    m.dump(MSG_GETRULE, family.proto(), a);
    m
}

/// The expressions of a rule the kernel listed (`NFT_MSG_NEWRULE` attributes).
pub fn decode_rule(rule: &[u8]) -> Result<Vec<Expr>, Malformed> {
    let a = attrs(rule)?;
    attr(&a, RULE_EXPRESSIONS).map_or(Ok(Vec::new()), decode_list)
}

/// The expressions of a rule the kernel listed, if it is in twill's table
/// and chain (a kernel that ignores the dump's filter lists others too).
pub fn our_rule(rule: &[u8]) -> Result<Option<Vec<Expr>>, Malformed> {
    let a = attrs(rule)?;
    if string(attr(&a, RULE_TABLE)) != Some(TABLE) || string(attr(&a, RULE_CHAIN)) != Some(CHAIN) {
        return Ok(None);
    }
    decode_rule(rule).map(Some)
}

/// Whether a chain the kernel listed (`NFT_MSG_NEWCHAIN` attributes) is a
/// nat chain on the postrouting hook, as twill makes it.
pub fn is_our_chain(chain: &[u8]) -> Result<bool, Malformed> {
    let a = attrs(chain)?;
    let hook = match attr(&a, CHAIN_HOOK) {
        Some(h) => attrs(h)?,
        None => return Ok(false),
    };
    Ok(string(attr(&a, CHAIN_NAME)) == Some(CHAIN)
        && string(attr(&a, CHAIN_TYPE)) == Some(CHAIN_KIND)
        && be_u32(attr(&hook, HOOK_HOOKNUM)) == Some(HOOK_POSTROUTING))
}

/// Whether a reply's command is a rule (what a rule dump lists).
pub fn is_rule(cmd: u16) -> bool {
    cmd == MSG_NEWRULE
}

/// Whether a reply's command is a chain (what a chain request answers).
pub fn is_chain(cmd: u16) -> bool {
    cmd == MSG_NEWCHAIN
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// The messages of `m`: (type, flags, seq, family, attributes).
    fn split(m: &Messages) -> Vec<(u16, u16, u32, u8, Vec<u8>)> {
        let mut b = m.bytes();
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = ne_u32(b, 0).unwrap() as usize;
            assert_eq!(len % 4, 0, "message length not aligned");
            out.push((
                ne_u16(b, 4).unwrap(),
                ne_u16(b, 6).unwrap(),
                ne_u32(b, 8).unwrap(),
                b[16],
                b[20..len].to_vec(),
            ));
            b = &b[len..];
        }
        out
    }

    #[test]
    fn the_replacing_batch_clears_both_families_then_builds_in_one_transaction() {
        let m = replace(&[net("10.244.0.0/16")], 7);
        let msgs = split(&m);
        let types: Vec<u16> = msgs.iter().map(|x| x.0).collect();
        let nft = |c: u16| (SUBSYS_NFTABLES << 8) | c;
        assert_eq!(
            types,
            vec![
                BATCH_BEGIN,
                nft(MSG_NEWTABLE),
                nft(MSG_DELTABLE),
                nft(MSG_NEWTABLE),
                nft(MSG_DELTABLE),
                nft(MSG_NEWTABLE),
                nft(MSG_NEWCHAIN),
                nft(MSG_NEWRULE),
                nft(MSG_NEWRULE),
                BATCH_END,
            ]
        );
        let families: Vec<u8> = msgs.iter().map(|x| x.3).collect();
        assert_eq!(families, vec![0, 2, 2, 10, 10, 2, 2, 2, 2, 0]);
        let seqs: Vec<u32> = msgs.iter().map(|x| x.2).collect();
        assert_eq!(seqs, (7..17).collect::<Vec<_>>());
        // Begin and end carry the subsystem and ask for no ack; every
        // command asks for one and is named.
        assert_eq!(msgs[0].1, NLM_F_REQUEST);
        assert_eq!(&m.bytes()[18..20], &SUBSYS_NFTABLES.to_be_bytes());
        assert!(msgs[1..9].iter().all(|x| x.1 & NLM_F_ACK != 0));
        assert_eq!(m.acked().len(), 8);
        assert_eq!(m.acked()[5].1, "adding chain ip twill postrouting");
        assert_eq!(msgs[7].1 & NLM_F_APPEND, NLM_F_APPEND);
        // The chain: table, name, hook postrouting at priority 100, nat.
        let chain = &msgs[6].4;
        assert!(is_our_chain(chain).unwrap());
        let a = attrs(chain).unwrap();
        let hook = attrs(attr(&a, CHAIN_HOOK).unwrap()).unwrap();
        assert_eq!(be_u32(attr(&hook, HOOK_PRIORITY)), Some(100));
        assert_eq!(be_u32(attr(&a, CHAIN_POLICY)), Some(NF_ACCEPT));
        assert_eq!(string(attr(&a, CHAIN_TABLE)), Some("twill"));
    }

    #[test]
    fn rules_read_back_as_they_were_written() {
        for network in ["10.244.0.0/16", "10.96.0.0/12", "fd00:10:244::/48"] {
            let n = net(network);
            let m = replace(&[n], 1);
            let written: Vec<Vec<Expr>> = split(&m)
                .iter()
                .filter(|x| x.0 == (SUBSYS_NFTABLES << 8) | MSG_NEWRULE)
                .map(|x| our_rule(&x.4).unwrap().unwrap())
                .collect();
            assert_eq!(written, rules(n), "{network}");
        }
    }

    #[test]
    fn dual_stack_builds_both_tables() {
        let m = replace(&[net("10.244.0.0/16"), net("fd00:10:244::/48")], 1);
        let msgs = split(&m);
        let rules6: Vec<_> = msgs
            .iter()
            .filter(|x| x.0 == (SUBSYS_NFTABLES << 8) | MSG_NEWRULE && x.3 == 10)
            .collect();
        assert_eq!(rules6.len(), 2);
        assert_eq!(
            decode_rule(&rules6[1].4).unwrap(),
            rules(net("fd00:10:244::/48"))[1]
        );
    }

    #[test]
    fn removal_clears_only_the_families_given() {
        let m = removal(&[Family::Ip6], 1);
        let msgs = split(&m);
        assert_eq!(msgs.len(), 4);
        assert!(msgs[1..3].iter().all(|x| x.3 == 10));
        assert_eq!(msgs[2].0, (SUBSYS_NFTABLES << 8) | MSG_DELTABLE);
    }

    #[test]
    fn requests_name_table_and_chain() {
        let m = dump_rules(Family::Ip, 3);
        let msgs = split(&m);
        assert_eq!(msgs[0].1, NLM_F_REQUEST | NLM_F_DUMP);
        let a = attrs(&msgs[0].4).unwrap();
        assert_eq!(string(attr(&a, RULE_TABLE)), Some("twill"));
        assert_eq!(string(attr(&a, RULE_CHAIN)), Some("postrouting"));
        let g = get_chain(Family::Ip6, 4);
        assert_eq!(split(&g)[0].3, 10);
        assert_eq!(g.acked()[0].0, 4);
        let t = get_table(Family::Ip, 5);
        assert_eq!(t.acked()[0].1, "reading table ip twill");
    }

    /// A kernel reply: header, then `body`.
    fn reply(ty: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(body);
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }

    fn error_body(code: i32) -> Vec<u8> {
        let mut b = code.to_ne_bytes().to_vec();
        b.extend_from_slice(&[0; 16]);
        b
    }

    #[test]
    fn replies_split_into_acks_errors_data_and_done() {
        let mut dgram = reply(NLMSG_ERROR, 5, &error_body(0));
        dgram.extend(reply(NLMSG_ERROR, 6, &error_body(-2)));
        let mut rule = vec![2, 0, 0, 0];
        let mut a = Attrs::default();
        a.str(RULE_TABLE, "twill");
        rule.extend_from_slice(&a.0);
        dgram.extend(reply((SUBSYS_NFTABLES << 8) | MSG_NEWRULE, 7, &rule));
        dgram.extend(reply(NLMSG_DONE, 7, &[0; 4]));
        let r = parse_replies(&dgram).unwrap();
        assert_eq!(r[0], Reply::Ack { seq: 5 });
        assert_eq!(r[1], Reply::Error { seq: 6, errno: 2 });
        assert!(
            matches!(&r[2], Reply::Data { seq: 7, cmd, attrs } if is_rule(*cmd) && attrs == &a.0)
        );
        assert_eq!(r[3], Reply::Done { seq: 7 });
    }

    #[test]
    fn truncated_replies_are_errors_not_panics() {
        let dgram = reply(NLMSG_ERROR, 5, &error_body(0));
        for cut in 1..dgram.len() {
            let _ = parse_replies(&dgram[..cut]);
        }
        let mut bad = dgram.clone();
        bad[0] = 200;
        assert!(parse_replies(&bad).is_err());
        assert!(decode_rule(&[8, 0, 4, 0, 1]).is_err());
        assert!(decode_rule(&[255, 0, 4, 0]).is_err());
    }

    #[test]
    fn rules_of_other_chains_are_not_ours() {
        let mut a = Attrs::default();
        a.str(RULE_TABLE, TABLE).str(RULE_CHAIN, "input");
        assert_eq!(our_rule(&a.0).unwrap(), None);
        let mut b = Attrs::default();
        b.str(RULE_TABLE, "nat").str(RULE_CHAIN, CHAIN);
        assert_eq!(our_rule(&b.0).unwrap(), None);
    }

    #[test]
    fn a_chain_on_another_hook_is_not_ours() {
        let mut a = Attrs::default();
        a.str(CHAIN_NAME, CHAIN)
            .str(CHAIN_TYPE, "nat")
            .nested(CHAIN_HOOK, |h| {
                h.u32(HOOK_HOOKNUM, 0);
            });
        assert!(!is_our_chain(&a.0).unwrap());
        let mut regular = Attrs::default();
        regular.str(CHAIN_NAME, CHAIN);
        assert!(!is_our_chain(&regular.0).unwrap());
    }
}
