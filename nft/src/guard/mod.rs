//! twill's isolation tables ("the guard"), as nf_tables messages:
//!
//! - `inet twill-guard`, owned by the agent: the tunnel filter. VXLAN (UDP
//!   to the tunnel port) is accepted only from the public IPs of current
//!   leases, the sets `peers4` and `peers6`.
//! - `bridge twill-guard`: the pod ports' checks. The agent writes the
//!   chain and its rules; the CNI plugin adds each pod's port, MAC and
//!   addresses to the sets at ADD and takes them out at DEL. A frame from a
//!   pod port must carry the pod's own MAC and source address (also in ARP
//!   and in neighbour advertisements); router advertisements, redirects,
//!   DHCP and DHCPv6 server replies, VXLAN out of the cluster network and
//!   other ether types are dropped. A port that is not in `ports` is not
//!   checked: a table lost and rebuilt empty fails open, never cuts pods off.
//!
//! Every dropping rule counts, and carries its filter's name as its comment
//! (nft's userdata layout), which is how counters are read back.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::attr::{attr, attrs, string, Attrs, Malformed, DATA_VALUE};
use crate::expr::{
    counted_packets, decode_list, encode_list, prefix_match, CmpOp, Expr, Field, BASE_LL,
    BASE_NETWORK, BASE_TRANSPORT, REG32_00, VERDICT_DROP,
};
use crate::wire::{
    Messages, MSG_DELRULE, MSG_DELSETELEM, MSG_DELTABLE, MSG_GETRULE, MSG_GETSETELEM, MSG_NEWCHAIN,
    MSG_NEWRULE, MSG_NEWSET, MSG_NEWSETELEM, MSG_NEWTABLE, NLM_F_APPEND, NLM_F_CREATE,
};
use crate::wire::{
    CHAIN_HOOK, CHAIN_NAME, CHAIN_POLICY, CHAIN_TABLE, CHAIN_TYPE, HOOK_HOOKNUM, HOOK_PRIORITY,
    NF_ACCEPT, RULE_CHAIN, RULE_EXPRESSIONS, RULE_TABLE, RULE_USERDATA, TABLE_NAME,
};

/// The table's name in both families.
mod read;
mod rules;

pub use read::{dump_elements, dump_rules, listed_elements, listed_rule, rules_match, Listed};
pub use rules::{bridge_rules, inet_rules, Settings};

pub const TABLE: &str = "twill-guard";
/// `NFPROTO_INET` / `NFPROTO_BRIDGE`.
pub const INET: u8 = 1;
pub const BRIDGE: u8 = 7;
/// The chains: the bridge's prerouting (every frame a port brings in) and
/// the inet input (what the node itself receives, VXLAN included).
pub const BRIDGE_CHAIN: &str = "prerouting";
pub const INET_CHAIN: &str = "input";

pub const PORTS: &str = "ports";
pub const PODS4: &str = "pods4";
pub const PODS6: &str = "pods6";
pub const MACS: &str = "macs";
/// Extra source prefixes a pod may send from (`allowedSourcePrefixes`):
/// `port . prefix`, intervals.
pub const EXTRA4: &str = "extra4";
pub const EXTRA6: &str = "extra6";
pub const PEERS4: &str = "peers4";
pub const PEERS6: &str = "peers6";

/// The filters, by the name their counters carry.
pub const FILTERS: [&str; 8] = [
    "tunnel",
    "source",
    "arp",
    "nd",
    "router_advert",
    "dhcp_server",
    "pod_vxlan",
    "ether_type",
];

// nf_tables attribute numbers.
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_KEY_TYPE: u16 = 4;
const SET_FLAGS: u16 = 3;
const SET_KEY_LEN: u16 = 5;
const SET_DESC: u16 = 9;
const SET_DESC_CONCAT: u16 = 2;
const SET_FIELD_LEN: u16 = 1;
/// `NFT_SET_INTERVAL | NFT_SET_CONCAT`: a set of ranges of concatenations.
const SET_INTERVAL_CONCAT: u32 = 0x4 | 0x80;
const SET_ID: u16 = 10;
const SET_USERDATA: u16 = 13;
/// nft's set userdata saying the key is in host byte order (an interface
/// index): `NFTNL_UDATA_SET_KEYBYTEORDER`, 4 bytes, `BYTEORDER_HOST_ENDIAN`.
/// Only for `nft list` to print the ports as numbers.
fn host_order_key() -> Vec<u8> {
    [&[0u8, 4][..], &1u32.to_ne_bytes()].concat()
}
const ELEMS_TABLE: u16 = 1;
const ELEMS_SET: u16 = 2;
const ELEMS_ELEMENTS: u16 = 3;
const LIST_ELEM: u16 = 1;
const ELEM_KEY: u16 = 1;
const ELEM_KEY_END: u16 = 10;
/// nft's comment in rule userdata: type 0, then length, then the text.
const UDATA_COMMENT: u8 = 0;
/// `NF_BR_PRE_ROUTING` / `NF_INET_LOCAL_IN`.
const HOOK_BR_PREROUTING: u32 = 0;
const HOOK_INPUT: u32 = 1;

// `meta` keys.
const META_IIF: u32 = 4;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;

// nft's data types, for `nft list` (concatenations: 6 bits per field).
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_ETHERADDR: u32 = 9;
const TYPE_IFINDEX: u32 = 20;

const fn concat(a: u32, b: u32) -> u32 {
    (a << 6) | b
}

struct SetSpec {
    name: &'static str,
    key_type: u32,
    key_len: u32,
    /// The field lengths of a set of ranges; empty for a hash set.
    ranges: &'static [u32],
}

const BRIDGE_SETS: [SetSpec; 6] = [
    SetSpec {
        name: PORTS,
        key_type: TYPE_IFINDEX,
        key_len: 4,
        ranges: &[],
    },
    SetSpec {
        name: MACS,
        key_type: concat(TYPE_IFINDEX, TYPE_ETHERADDR),
        key_len: 12,
        ranges: &[],
    },
    SetSpec {
        name: PODS4,
        key_type: concat(concat(TYPE_IFINDEX, TYPE_ETHERADDR), TYPE_IPADDR),
        key_len: 16,
        ranges: &[],
    },
    SetSpec {
        name: PODS6,
        key_type: concat(concat(TYPE_IFINDEX, TYPE_ETHERADDR), TYPE_IP6ADDR),
        key_len: 28,
        ranges: &[],
    },
    SetSpec {
        name: EXTRA4,
        key_type: concat(TYPE_IFINDEX, TYPE_IPADDR),
        key_len: 8,
        ranges: &[4, 4],
    },
    SetSpec {
        name: EXTRA6,
        key_type: concat(TYPE_IFINDEX, TYPE_IP6ADDR),
        key_len: 20,
        ranges: &[4, 16],
    },
];

const INET_SETS: [SetSpec; 2] = [
    SetSpec {
        name: PEERS4,
        key_type: TYPE_IPADDR,
        key_len: 4,
        ranges: &[],
    },
    SetSpec {
        name: PEERS6,
        key_type: TYPE_IP6ADDR,
        key_len: 16,
        ranges: &[],
    },
];

fn family_name(family: u8) -> &'static str {
    if family == BRIDGE {
        "bridge"
    } else {
        "inet"
    }
}

fn table_attrs() -> Attrs {
    let mut a = Attrs::default();
    a.str(TABLE_NAME, TABLE);
    a
}

fn new_table(m: &mut Messages, family: u8) {
    let what = format!("adding table {} {TABLE}", family_name(family));
    m.nft(MSG_NEWTABLE, NLM_F_CREATE, family, table_attrs(), what);
}

fn new_sets(m: &mut Messages, family: u8, sets: &[SetSpec]) {
    for (i, s) in sets.iter().enumerate() {
        let mut a = Attrs::default();
        a.str(SET_TABLE, TABLE)
            .str(SET_NAME, s.name)
            .u32(SET_KEY_TYPE, s.key_type)
            .u32(SET_KEY_LEN, s.key_len)
            .u32(SET_ID, i as u32 + 1);
        if s.key_type == TYPE_IFINDEX {
            a.put(SET_USERDATA, &host_order_key());
        }
        if !s.ranges.is_empty() {
            a.u32(SET_FLAGS, SET_INTERVAL_CONCAT).nested(SET_DESC, |d| {
                d.nested(SET_DESC_CONCAT, |c| {
                    for len in s.ranges {
                        c.nested(LIST_ELEM, |f| {
                            f.u32(SET_FIELD_LEN, *len);
                        });
                    }
                });
            });
        }
        let what = format!("adding set {} {TABLE} {}", family_name(family), s.name);
        m.nft(MSG_NEWSET, NLM_F_CREATE, family, a, what);
    }
}

/// One element of a set: its key, and for a range the key it ends at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Element {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
}

impl Element {
    pub fn key(key: Vec<u8>) -> Self {
        Element { key, key_end: None }
    }
}

/// Elements `keys` added to (`MSG_NEWSETELEM`) or deleted from a set.
fn set_elements(m: &mut Messages, cmd: u16, family: u8, set: &str, keys: &[Element]) {
    if keys.is_empty() {
        return;
    }
    let mut a = Attrs::default();
    a.str(ELEMS_TABLE, TABLE)
        .str(ELEMS_SET, set)
        .nested(ELEMS_ELEMENTS, |list| {
            for k in keys {
                list.nested(LIST_ELEM, |e| {
                    e.data(ELEM_KEY, &k.key);
                    if let Some(end) = &k.key_end {
                        e.data(ELEM_KEY_END, end);
                    }
                });
            }
        });
    let verb = if cmd == MSG_NEWSETELEM {
        "adding"
    } else {
        "deleting"
    };
    let what = format!(
        "{verb} {} element(s) of set {} {TABLE} {set}",
        keys.len(),
        family_name(family)
    );
    m.nft(cmd, NLM_F_CREATE, family, a, what);
}

fn base_chain(m: &mut Messages, family: u8, name: &str, hook: u32, priority: i32) {
    let mut chain = Attrs::default();
    chain
        .str(CHAIN_TABLE, TABLE)
        .str(CHAIN_NAME, name)
        .nested(CHAIN_HOOK, |h| {
            h.u32(HOOK_HOOKNUM, hook)
                .u32(HOOK_PRIORITY, priority as u32);
        })
        .u32(CHAIN_POLICY, NF_ACCEPT)
        .str(CHAIN_TYPE, "filter");
    let what = format!("adding chain {} {TABLE} {name}", family_name(family));
    m.nft(MSG_NEWCHAIN, NLM_F_CREATE, family, chain, what);
}

/// One rule: the filter it counts for, and its expressions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub filter: &'static str,
    pub exprs: Vec<Expr>,
}

fn userdata(filter: &str) -> Vec<u8> {
    let mut u = vec![UDATA_COMMENT, (filter.len() + 1) as u8];
    u.extend_from_slice(filter.as_bytes());
    u.push(0);
    u
}

fn add_rules(m: &mut Messages, family: u8, chain: &str, rules: &[Rule]) {
    for (i, r) in rules.iter().enumerate() {
        let mut a = Attrs::default();
        a.str(RULE_TABLE, TABLE)
            .str(RULE_CHAIN, chain)
            .nested(RULE_EXPRESSIONS, |list| encode_list(list, &r.exprs))
            .put(RULE_USERDATA, &userdata(r.filter));
        let what = format!(
            "adding rule {} ({}) of {} {TABLE} {chain}",
            i + 1,
            r.filter,
            family_name(family)
        );
        m.nft(MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, a, what);
    }
}

/// The members the tunnel accepts: the public IPs of current leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    pub v4: std::collections::BTreeSet<Ipv4Addr>,
    pub v6: std::collections::BTreeSet<Ipv6Addr>,
}

impl Peers {
    pub fn keys4(&self) -> Vec<Element> {
        self.v4
            .iter()
            .map(|a| Element::key(a.octets().to_vec()))
            .collect()
    }

    pub fn keys6(&self) -> Vec<Element> {
        self.v6
            .iter()
            .map(|a| Element::key(a.octets().to_vec()))
            .collect()
    }
}

/// The batch that adds `added` to the tunnel's member sets and takes
/// `removed` out of them, leaving the rest of the table as it is: the cost
/// of one peer joining or leaving does not grow with the cluster. Each
/// removed element is added first, so that one already gone is no error;
/// a missing table or set fails the batch (the caller then replaces the
/// table as a whole).
pub fn update_peers(added: &Peers, removed: &Peers, first_seq: u32) -> Messages {
    let mut m = Messages::new(first_seq);
    m.begin_batch();
    set_elements(&mut m, MSG_NEWSETELEM, INET, PEERS4, &added.keys4());
    set_elements(&mut m, MSG_NEWSETELEM, INET, PEERS6, &added.keys6());
    for (set, keys) in [(PEERS4, removed.keys4()), (PEERS6, removed.keys6())] {
        set_elements(&mut m, MSG_NEWSETELEM, INET, set, &keys);
        set_elements(&mut m, MSG_DELSETELEM, INET, set, &keys);
    }
    m.end_batch();
    m
}

impl Peers {
    /// What is in `self` and not in `other`.
    pub fn minus(&self, other: &Peers) -> Peers {
        Peers {
            v4: self.v4.difference(&other.v4).copied().collect(),
            v6: self.v6.difference(&other.v6).copied().collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// The batch that replaces the inet table (sets with their elements, chain,
/// rules) as a whole.
pub fn replace_inet(s: &Settings, peers: &Peers, first_seq: u32) -> Messages {
    let mut m = Messages::new(first_seq);
    m.begin_batch();
    new_table(&mut m, INET);
    let what = format!("deleting table inet {TABLE}");
    m.nft(MSG_DELTABLE, 0, INET, table_attrs(), what);
    new_table(&mut m, INET);
    new_sets(&mut m, INET, &INET_SETS);
    set_elements(&mut m, MSG_NEWSETELEM, INET, PEERS4, &peers.keys4());
    set_elements(&mut m, MSG_NEWSETELEM, INET, PEERS6, &peers.keys6());
    base_chain(&mut m, INET, INET_CHAIN, HOOK_INPUT, -150);
    add_rules(&mut m, INET, INET_CHAIN, &inet_rules(s));
    m.end_batch();
    m
}

/// The batch that (re)writes the bridge table's chain and rules, keeping
/// the sets and the pods' elements in them, and puts `elements` back
/// (those of pods whose table was deleted as a whole).
pub fn refresh_bridge(
    s: &Settings,
    elements: &[(&'static str, Element)],
    first_seq: u32,
) -> Messages {
    let mut m = Messages::new(first_seq);
    m.begin_batch();
    new_table(&mut m, BRIDGE);
    new_sets(&mut m, BRIDGE, &BRIDGE_SETS);
    for (set, e) in elements {
        set_elements(&mut m, MSG_NEWSETELEM, BRIDGE, set, std::slice::from_ref(e));
    }
    base_chain(&mut m, BRIDGE, BRIDGE_CHAIN, HOOK_BR_PREROUTING, -300);
    let mut flush = Attrs::default();
    flush.str(RULE_TABLE, TABLE).str(RULE_CHAIN, BRIDGE_CHAIN);
    let what = format!("flushing chain bridge {TABLE} {BRIDGE_CHAIN}");
    m.nft(MSG_DELRULE, 0, BRIDGE, flush, what);
    add_rules(&mut m, BRIDGE, BRIDGE_CHAIN, &bridge_rules(s));
    m.end_batch();
    m
}

/// The batch that deletes both tables (each added first, so that a table
/// already gone is no error).
pub fn removal(first_seq: u32) -> Messages {
    let mut m = Messages::new(first_seq);
    m.begin_batch();
    for family in [INET, BRIDGE] {
        new_table(&mut m, family);
        let what = format!("deleting table {} {TABLE}", family_name(family));
        m.nft(MSG_DELTABLE, 0, family, table_attrs(), what);
    }
    m.end_batch();
    m
}

/// A pod's attachment as the bridge checks it: the host end of its veth,
/// the MAC of its end, its addresses, and the extra prefixes it may send
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodPort {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
    pub extra: Vec<IpNet>,
}

impl PodPort {
    fn port_mac(&self) -> Vec<u8> {
        let mut k = self.ifindex.to_ne_bytes().to_vec();
        k.extend_from_slice(&self.mac);
        k.extend_from_slice(&[0, 0]);
        k
    }

    /// The set elements of this pod: (set, element).
    pub fn elements(&self) -> Vec<(&'static str, Element)> {
        let port = self.ifindex.to_ne_bytes().to_vec();
        let mut out = vec![
            (PORTS, Element::key(port.clone())),
            (MACS, Element::key(self.port_mac())),
        ];
        if let Some(a) = self.v4 {
            let key = [self.port_mac(), a.octets().to_vec()].concat();
            out.push((PODS4, Element::key(key)));
        }
        if let Some(a) = self.v6 {
            let key = [self.port_mac(), a.octets().to_vec()].concat();
            out.push((PODS6, Element::key(key)));
        }
        for net in &self.extra {
            let (set, first, last) = match net {
                IpNet::V4(n) => (
                    EXTRA4,
                    n.network().octets().to_vec(),
                    n.broadcast().octets().to_vec(),
                ),
                IpNet::V6(n) => (
                    EXTRA6,
                    n.network().octets().to_vec(),
                    n.broadcast().octets().to_vec(),
                ),
            };
            out.push((
                set,
                Element {
                    key: [port.clone(), first].concat(),
                    key_end: Some([port.clone(), last].concat()),
                },
            ));
        }
        out
    }
}

/// The batch the CNI plugin sends at ADD: the table and its sets when they
/// are not there yet (the agent adds the rules), then the pod's elements.
pub fn add_pod(pod: &PodPort, first_seq: u32) -> Messages {
    let mut m = Messages::new(first_seq);
    m.begin_batch();
    new_table(&mut m, BRIDGE);
    new_sets(&mut m, BRIDGE, &BRIDGE_SETS);
    for (set, e) in pod.elements() {
        set_elements(&mut m, MSG_NEWSETELEM, BRIDGE, set, &[e]);
    }
    m.end_batch();
    m
}

/// The batch that deletes elements, `(set, element)`: each is added first,
/// so that one already gone is no error.
pub fn remove_elements(elements: &[(&'static str, Element)], first_seq: u32) -> Messages {
    let mut m = Messages::new(first_seq);
    m.begin_batch();
    new_table(&mut m, BRIDGE);
    new_sets(&mut m, BRIDGE, &BRIDGE_SETS);
    for (set, e) in elements {
        let one = std::slice::from_ref(e);
        set_elements(&mut m, MSG_NEWSETELEM, BRIDGE, set, one);
        set_elements(&mut m, MSG_DELSETELEM, BRIDGE, set, one);
    }
    m.end_batch();
    m
}

/// The sets of the bridge table that hold pod elements, keyed by port first.
pub const POD_SETS: [&str; 6] = [PORTS, MACS, PODS4, PODS6, EXTRA4, EXTRA6];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::attr::{ne_u16, ne_u32};
    use crate::wire::SUBSYS_NFTABLES;

    fn settings() -> Settings {
        Settings {
            network: "10.244.0.0/16".parse().unwrap(),
            network6: Some("fd00:10:244::/48".parse().unwrap()),
            vxlan_port: Some(8472),
            tunnel_filter: true,
        }
    }

    /// The nf_tables messages of `m`: (command, family, attributes).
    fn commands(m: &Messages) -> Vec<(u16, u8, Vec<u8>)> {
        let mut b = m.bytes();
        let mut out = Vec::new();
        while !b.is_empty() {
            let len = ne_u32(b, 0).unwrap() as usize;
            let ty = ne_u16(b, 4).unwrap();
            if ty >> 8 == SUBSYS_NFTABLES {
                out.push((ty & 0xff, b[16], b[20..len].to_vec()));
            }
            b = &b[len..];
        }
        out
    }

    #[test]
    fn rules_read_back_with_their_filter_names() {
        let s = settings();
        for (m, family, want) in [
            (refresh_bridge(&s, &[], 1), BRIDGE, bridge_rules(&s)),
            (replace_inet(&s, &Peers::default(), 1), INET, inet_rules(&s)),
        ] {
            let listed: Vec<Listed> = commands(&m)
                .into_iter()
                .filter(|(c, f, _)| *c == MSG_NEWRULE && *f == family)
                .map(|(_, _, a)| listed_rule(&a).unwrap().unwrap())
                .collect();
            let chain = if family == BRIDGE {
                BRIDGE_CHAIN
            } else {
                INET_CHAIN
            };
            assert!(rules_match(&listed, chain, &want));
            assert!(listed.iter().all(|l| l.packets == Some(0)));
            assert!(listed
                .iter()
                .all(|l| FILTERS.contains(&l.filter.as_deref().unwrap())));
            assert!(!rules_match(&listed[1..], chain, &want));
        }
    }

    #[test]
    fn a_changed_member_set_is_written_as_the_peers_that_came_and_went() {
        let peers = |v4: &[u8]| Peers {
            v4: v4.iter().map(|h| Ipv4Addr::new(192, 0, 2, *h)).collect(),
            v6: Default::default(),
        };
        let (was, now) = (peers(&[1, 2, 3]), peers(&[2, 3, 4]));
        let (added, removed) = (now.minus(&was), was.minus(&now));
        assert_eq!(added, peers(&[4]));
        assert_eq!(removed, peers(&[1]));
        assert!(now.minus(&now).is_empty());
        // One element added, one added then deleted (no error when gone);
        // no table, set, chain or rule touched, nothing else sent.
        let cmds: Vec<u16> = commands(&update_peers(&added, &removed, 1))
            .iter()
            .map(|c| c.0)
            .collect();
        assert_eq!(cmds, [MSG_NEWSETELEM, MSG_NEWSETELEM, MSG_DELSETELEM]);
    }

    #[test]
    fn the_tunnel_filter_is_off_without_a_tunnel_or_on_request() {
        let mut s = settings();
        s.tunnel_filter = false;
        assert!(inet_rules(&s).is_empty());
        s.tunnel_filter = true;
        s.vxlan_port = None;
        assert!(inet_rules(&s).is_empty());
        assert!(!bridge_rules(&s).iter().any(|r| r.filter == "pod_vxlan"));
    }

    #[test]
    fn pod_elements_are_port_mac_address_keys() {
        let pod = PodPort {
            ifindex: 7,
            mac: [2, 0, 0, 0, 0, 9],
            v4: Some(Ipv4Addr::new(10, 244, 1, 5)),
            v6: None,
            extra: vec!["192.168.8.0/22".parse().unwrap()],
        };
        let e = pod.elements();
        assert_eq!(e.len(), 4);
        assert_eq!(e[0], (PORTS, Element::key(7u32.to_ne_bytes().to_vec())));
        let mut want = 7u32.to_ne_bytes().to_vec();
        want.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0, 0, 10, 244, 1, 5]);
        assert_eq!(e[2], (PODS4, Element::key(want)));
        let port = 7u32.to_ne_bytes();
        let extra = Element {
            key: [&port[..], &[192, 168, 8, 0]].concat(),
            key_end: Some([&port[..], &[192, 168, 11, 255]].concat()),
        };
        assert_eq!(e[3], (EXTRA4, extra));
        // Added as one transaction: table, the sets, four element lists.
        let m = add_pod(&pod, 1);
        let cmds: Vec<u16> = commands(&m).iter().map(|c| c.0).collect();
        assert_eq!(cmds.iter().filter(|&&c| c == MSG_NEWSETELEM).count(), 4);
        assert_eq!(cmds.iter().filter(|&&c| c == MSG_NEWSET).count(), 6);
        let listed: Vec<Element> = commands(&m)
            .into_iter()
            .filter(|c| c.0 == MSG_NEWSETELEM)
            .flat_map(|c| listed_elements(&c.2).unwrap())
            .collect();
        assert_eq!(listed, e.into_iter().map(|(_, k)| k).collect::<Vec<_>>());
    }
}
