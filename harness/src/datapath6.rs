//! The VXLAN data path of an IPv6-only node (`twill6.<VNI>`) read back and
//! compared with what the peers' leases ask for: the IPv6 counterpart of
//! [`crate::datapath`], for the tests of IPv6-only clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv6Addr;
use std::time::Duration;

use ipnet::Ipv6Net;
use serde_json::Value;

use crate::cluster::{Cluster, VXLAN6_DEV};
use crate::datapath::TWILL_RTPROTO;
use crate::error::{HarnessError, Result};
use crate::netns::Netns;
use crate::parse::{parse_routes6, Lease};

fn perr(what: &str, reason: impl ToString) -> HarnessError {
    HarnessError::Parse {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

/// A remote IPv6-only node as the others' data path must show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer6 {
    pub subnet: Ipv6Net,
    pub public_ip: Ipv6Addr,
    /// Lowercase VTEP MAC of its `twill6.<VNI>`.
    pub mac: String,
}

/// What twill owns on an IPv6 VXLAN device: routes of protocol 77,
/// permanent neighbours, FDB entries with a remote destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned6 {
    /// destination -> gateway
    pub routes: BTreeMap<Ipv6Net, Ipv6Addr>,
    /// neighbour IP -> lowercase MAC
    pub neighbours: BTreeMap<Ipv6Addr, String>,
    /// (lowercase MAC, remote underlay IPv6)
    pub fdb: BTreeSet<(String, Ipv6Addr)>,
}

impl fmt::Display for Owned6 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "routes {:?}, neighbours {:?}, fdb {:?}",
            self.routes, self.neighbours, self.fdb
        )
    }
}

fn json_list(what: &str, text: &str) -> Result<Vec<Value>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| perr(what, e))
}

/// The lowercase `(key, value)` string pair of each entry of `list` that
/// has both.
fn pairs<'a>(
    list: &'a [Value],
    key: &'a str,
    value: &'a str,
) -> impl Iterator<Item = (&'a str, String)> + 'a {
    list.iter().filter_map(move |e| {
        Some((
            e.get(key)?.as_str()?,
            e.get(value)?.as_str()?.to_ascii_lowercase(),
        ))
    })
}

impl Owned6 {
    /// What a node must hold for these peers: route `<subnet> via
    /// <subnet>::`, permanent neighbour `<subnet>:: -> mac`, FDB `mac dst
    /// <PublicIPv6>`.
    pub fn for_peers<'a>(peers: impl IntoIterator<Item = &'a Peer6>) -> Owned6 {
        let mut o = Owned6::default();
        for p in peers {
            o.routes.insert(p.subnet, p.subnet.network());
            o.neighbours.insert(p.subnet.network(), p.mac.clone());
            o.fdb.insert((p.mac.clone(), p.public_ip));
        }
        o
    }

    /// Parses `ip -j -6 route show proto 77`, `ip -j -6 neigh show nud
    /// permanent` and `bridge -j fdb show` of one device.
    pub fn parse(routes: &str, neigh: &str, fdb: &str) -> Result<Owned6> {
        let mut o = Owned6::default();
        for r in parse_routes6(routes)? {
            if let Some(g) = r.gateway {
                o.routes.insert(r.dst, g);
            }
        }
        let neigh = json_list("ip -j -6 neigh", neigh)?;
        for (dst, mac) in pairs(&neigh, "dst", "lladdr") {
            let ip = dst.parse().map_err(|e| perr("neighbour address", e))?;
            o.neighbours.insert(ip, mac);
        }
        let fdb = json_list("bridge -j fdb", fdb)?;
        for (mac, dst) in pairs(&fdb, "mac", "dst") {
            // IPv4 destinations are not an IPv6 VTEP's.
            if let Ok(ip) = dst.parse::<Ipv6Addr>() {
                o.fdb.insert((mac.to_ascii_lowercase(), ip));
            }
        }
        Ok(o)
    }

    /// Reads what twill owns on `dev` in `ns`.
    pub fn read(ns: &Netns, dev: &str) -> Result<Owned6> {
        let proto = TWILL_RTPROTO.to_string();
        let routes = ns.ip(["-j", "-6", "route", "show", "dev", dev, "proto", &proto])?;
        let neigh = ns.ip(["-j", "-6", "neigh", "show", "dev", dev, "nud", "permanent"])?;
        let fdb = ns.exec_ok(&["bridge", "-j", "fdb", "show", "dev", dev])?;
        Owned6::parse(&routes, &neigh, &fdb)
    }
}

/// The peer of the IPv6-only lease of `subnet`.
fn peer_of(subnet: Ipv6Net, lease: Lease) -> Result<Peer6> {
    let what = format!("IPv6 lease of {subnet}");
    Ok(Peer6 {
        subnet,
        public_ip: lease
            .public_ipv6
            .ok_or_else(|| perr(&what, "no PublicIPv6"))?,
        mac: lease
            .backend_v6_data
            .and_then(|b| b.vtep_mac)
            .ok_or_else(|| perr(&what, "no IPv6 VtepMAC"))?
            .to_ascii_lowercase(),
    })
}

/// `host` as its peers must see it: IPv6 subnet from its subnet file,
/// PublicIPv6 and IPv6 VTEP MAC from its lease in etcd.
pub fn peer6(c: &Cluster, host: &str) -> Result<Peer6> {
    let subnet = c.subnet6_of(host)?;
    let lease = c.leases6()?.remove(&subnet).ok_or_else(|| {
        perr(
            &format!("IPv6 lease of {host}"),
            format!("no lease for {subnet}"),
        )
    })?;
    peer_of(subnet, lease)
}

/// Every other IPv6-only lease in etcd, as `host` must see it.
pub fn peers6_of(c: &Cluster, host: &str) -> Result<Vec<Peer6>> {
    let own = c.subnet6_of(host)?;
    c.leases6()?
        .into_iter()
        .filter(|(s, _)| *s != own)
        .map(|(s, l)| peer_of(s, l))
        .collect()
}

/// Waits until `host`'s [`VXLAN6_DEV`] holds exactly the entries for
/// `peers` (nothing missing, nothing extra); the timeout error names `why`,
/// what the device held last and the agent's log tail.
pub fn wait_owned6(
    c: &Cluster,
    host: &str,
    peers: &[&Peer6],
    deadline: Duration,
    why: &str,
) -> Result<()> {
    let want = Owned6::for_peers(peers.iter().copied());
    crate::wait::wait_for(
        &format!("{host}'s {VXLAN6_DEV} to hold exactly [{want}] ({why})"),
        deadline,
        || {
            let have = Owned6::read(c.host(host)?.ns(), VXLAN6_DEV)?;
            if have == want {
                Ok(Some(()))
            } else {
                Err(perr(
                    &format!("data path of {host}"),
                    format!("have [{have}]"),
                ))
            }
        },
        || format!("\n{}", c.agent_log_tail(host)),
    )
}

/// [`wait_owned6`] for every other IPv6-only lease in etcd now (see
/// [`peers6_of`]): `host` holds exactly their entries.
pub fn wait_leases_held6(c: &Cluster, host: &str, deadline: Duration, why: &str) -> Result<()> {
    let peers = peers6_of(c, host)?;
    wait_owned6(c, host, &peers.iter().collect::<Vec<_>>(), deadline, why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv6_routes_neighbours_and_fdb() {
        let routes = r#"[{"dst":"fd00:10:244:5::/64","gateway":"fd00:10:244:5::","dev":"twill6.1","protocol":"77","flags":["onlink"]}]"#;
        let neigh = r#"[{"dst":"fd00:10:244:5::","dev":"twill6.1","lladdr":"0E:AA:00:00:00:01","state":["PERMANENT"]}]"#;
        let fdb = r#"[{"mac":"0e:aa:00:00:00:01","dev":"twill6.1","dst":"2001:db8::2","flags":[],"state":"permanent"},{"mac":"0e:aa:00:00:00:02","dev":"twill6.1","state":"permanent"},{"mac":"0e:aa:00:00:00:03","dev":"twill6.1","dst":"192.0.2.3"}]"#;
        let got = Owned6::parse(routes, neigh, fdb).unwrap();
        let peer = Peer6 {
            subnet: "fd00:10:244:5::/64".parse().unwrap(),
            public_ip: "2001:db8::2".parse().unwrap(),
            mac: "0e:aa:00:00:00:01".into(),
        };
        assert_eq!(got, Owned6::for_peers([&peer]));
        assert_eq!(Owned6::parse("", "", "").unwrap(), Owned6::default());
        assert!(Owned6::parse("", "not json", "").is_err());
    }
}
