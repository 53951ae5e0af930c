//! Reads a host's VXLAN data path back (`ip -j route/neigh`, `bridge -j
//! fdb`) and says what it should be, so healing tests can compare the
//! kernel against the leases of the peers.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::cluster::{Cluster, VXLAN_DEV};
use crate::error::{HarnessError, Result};
use crate::netns::Netns;

/// The route protocol number twill marks its routes with.
pub const TWILL_RTPROTO: u8 = 77;

fn perr(what: &str, reason: impl ToString) -> HarnessError {
    HarnessError::Parse {
        what: what.to_owned(),
        reason: reason.to_string(),
    }
}

fn json_list(what: &str, text: &str) -> Result<Vec<Value>> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(text).map_err(|e| perr(what, e))
}

/// One route through the VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub gateway: Option<Ipv4Addr>,
    /// As `ip` prints it: a name (`static`, `kernel`) or a number.
    pub protocol: String,
    pub onlink: bool,
}

/// One neighbour on the VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighEntry {
    pub mac: Option<String>,
    pub permanent: bool,
}

/// Everything on the VXLAN device that twill could own, as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanState {
    pub routes: BTreeMap<Ipv4Net, RouteEntry>,
    pub neighbours: BTreeMap<Ipv4Addr, NeighEntry>,
    /// (lowercase MAC, remote underlay IP) of FDB entries with a `dst`.
    pub fdb: BTreeSet<(String, Ipv4Addr)>,
}

/// The part of the data path twill owns: routes with protocol 77, permanent
/// neighbours, FDB entries with a remote destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    /// destination -> gateway
    pub routes: BTreeMap<Ipv4Net, Ipv4Addr>,
    /// neighbour IP -> lowercase MAC
    pub neighbours: BTreeMap<Ipv4Addr, String>,
    pub fdb: BTreeSet<(String, Ipv4Addr)>,
}

impl fmt::Display for Owned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "routes {:?}, neighbours {:?}, fdb {:?}",
            self.routes, self.neighbours, self.fdb
        )
    }
}

/// A remote node as the data path of the others must show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    /// Lowercase VTEP MAC.
    pub mac: String,
}

impl Owned {
    /// What a node must hold for these peers: route `<subnet> via
    /// <subnet>.0`, permanent neighbour `<subnet>.0 -> mac`, FDB `mac dst ip`.
    pub fn for_peers<'a>(peers: impl IntoIterator<Item = &'a Peer>) -> Owned {
        let mut o = Owned::default();
        for p in peers {
            o.routes.insert(p.subnet, p.subnet.network());
            o.neighbours.insert(p.subnet.network(), p.mac.clone());
            o.fdb.insert((p.mac.clone(), p.public_ip));
        }
        o
    }
}

fn protocol_of(v: &Value) -> String {
    match v.get("protocol") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        // `ip` leaves the protocol out for `boot`.
        _ => String::from("boot"),
    }
}

fn dst_net(s: &str) -> Result<Ipv4Net> {
    if s.contains('/') {
        s.parse().map_err(|e| perr(&format!("route dst {s}"), e))
    } else {
        format!("{s}/32")
            .parse()
            .map_err(|e| perr(&format!("route dst {s}"), e))
    }
}

/// Parses the three `-j` outputs of one device.
pub fn parse_vxlan_state(routes: &str, neigh: &str, fdb: &str) -> Result<VxlanState> {
    let mut st = VxlanState::default();
    for r in json_list("ip -j route", routes)? {
        let Some(dst) = r.get("dst").and_then(Value::as_str) else {
            continue;
        };
        if dst == "default" {
            continue;
        }
        let gateway = match r.get("gateway").and_then(Value::as_str) {
            Some(g) => Some(g.parse().map_err(|e| perr("route gateway", e))?),
            None => None,
        };
        let onlink = r
            .get("flags")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("onlink")));
        st.routes.insert(
            dst_net(dst)?,
            RouteEntry {
                gateway,
                protocol: protocol_of(&r),
                onlink,
            },
        );
    }
    for n in json_list("ip -j neigh", neigh)? {
        let Some(dst) = n.get("dst").and_then(Value::as_str) else {
            continue;
        };
        let Ok(ip) = dst.parse::<Ipv4Addr>() else {
            continue;
        };
        let permanent = n
            .get("state")
            .and_then(Value::as_array)
            .is_some_and(|s| s.iter().any(|x| x.as_str() == Some("PERMANENT")));
        st.neighbours.insert(
            ip,
            NeighEntry {
                mac: n
                    .get("lladdr")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase),
                permanent,
            },
        );
    }
    for e in json_list("bridge -j fdb", fdb)? {
        let (Some(mac), Some(dst)) = (
            e.get("mac").and_then(Value::as_str),
            e.get("dst").and_then(Value::as_str),
        ) else {
            continue;
        };
        if let Ok(ip) = dst.parse::<Ipv4Addr>() {
            st.fdb.insert((mac.to_ascii_lowercase(), ip));
        }
    }
    Ok(st)
}

impl VxlanState {
    /// Reads `dev` in `ns`.
    pub fn read(ns: &Netns, dev: &str) -> Result<VxlanState> {
        let routes = ns.ip(["-j", "route", "show", "dev", dev])?;
        let neigh = ns.ip(["-j", "neigh", "show", "dev", dev])?;
        let fdb = ns.exec_ok(&["bridge", "-j", "fdb", "show", "dev", dev])?;
        parse_vxlan_state(&routes, &neigh, &fdb)
    }

    /// Only what twill owns (see [`Owned`]).
    pub fn owned(&self) -> Owned {
        let proto = TWILL_RTPROTO.to_string();
        Owned {
            routes: self
                .routes
                .iter()
                .filter(|(_, r)| r.protocol == proto)
                .filter_map(|(d, r)| r.gateway.map(|g| (*d, g)))
                .collect(),
            neighbours: self
                .neighbours
                .iter()
                .filter(|(_, n)| n.permanent)
                .filter_map(|(ip, n)| n.mac.clone().map(|m| (*ip, m)))
                .collect(),
            fdb: self.fdb.clone(),
        }
    }
}

/// `host` as its peers must see it: subnet from its subnet file, public IP
/// and VTEP MAC from its lease in etcd (which must carry its own IP).
pub fn peer(c: &Cluster, host: &str) -> Result<Peer> {
    let subnet = c.subnet_file(host)?.node_subnet();
    let ip = c.host(host)?.ip();
    let lease = c.lease(subnet)?.ok_or_else(|| {
        perr(
            &format!("lease of {host}"),
            format!("no lease for {subnet}"),
        )
    })?;
    if lease.public_ip != ip {
        return Err(perr(
            &format!("lease of {host}"),
            format!("{subnet} is held by {}, not {ip}", lease.public_ip),
        ));
    }
    let mac = lease
        .vtep_mac()
        .ok_or_else(|| perr(&format!("lease of {host}"), "no VtepMAC"))?;
    Ok(Peer {
        subnet,
        public_ip: ip,
        mac,
    })
}

/// The lower link of device `dev` in `ns` as `ip -d -j` shows it: a JSON
/// string of its name when the index it holds is a link that exists, else
/// the bare index.
pub fn lower_link(ns: &Netns, dev: &str) -> Result<String> {
    let out = ns.ip(["-d", "-j", "link", "show", dev])?;
    let v: Value =
        serde_json::from_str(&out).map_err(|e| perr(&format!("ip -j link show {dev}"), e))?;
    Ok(v[0]["linkinfo"]["info_data"]["link"].to_string())
}

/// Agent log lines of a netlink call that changes something: `applied
/// op=...` from the reconcile, and the device fixes of the kernel module.
pub const CHANGE_MARKERS: &[&str] = &[
    "applied",
    "creating bridge",
    "creating vxlan device",
    "recreating",
    "fixing vxlan device state",
    "fixing bridge MTU",
    "adding address",
    "removing stale address",
];

/// The agent log lines of `log` that record a netlink change.
pub fn change_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| CHANGE_MARKERS.iter().any(|m| l.contains(m)))
        .collect()
}

/// Reads what twill owns on `host`'s VXLAN device.
pub fn owned(c: &Cluster, host: &str) -> Result<Owned> {
    VxlanState::read(c.host(host)?.ns(), VXLAN_DEV).map(|s| s.owned())
}

/// Waits until `host`'s VXLAN device holds exactly the entries for `peers`
/// (nothing missing, nothing extra); the timeout error names what was
/// awaited (`why`), what the device held last, and the agent's log tail.
pub fn wait_owned(
    c: &Cluster,
    host: &str,
    peers: &[&Peer],
    deadline: std::time::Duration,
    why: &str,
) -> Result<()> {
    let want = Owned::for_peers(peers.iter().copied());
    crate::wait::wait_for(
        &format!("{host}'s {VXLAN_DEV} to hold exactly [{want}] ({why})"),
        deadline,
        || {
            let have = owned(c, host)?;
            if have == want {
                Ok(Some(()))
            } else {
                Err(HarnessError::Parse {
                    what: format!("data path of {host}"),
                    reason: format!("have [{have}]"),
                })
            }
        },
        || format!("\n{}", c.agent_log_tail(host)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ip_and_bridge_json() {
        let st = parse_vxlan_state(
            r#"[{"dst":"10.244.2.0/24","gateway":"10.244.2.0","protocol":"77","flags":["onlink"]},
               {"dst":"10.99.0.0/24","protocol":"static","scope":"link","flags":[]}]"#,
            r#"[{"dst":"10.244.2.0","lladdr":"AA:bb:cc:00:00:02","state":["PERMANENT"]},
               {"dst":"10.244.3.0","lladdr":"aa:bb:cc:00:00:03","state":["REACHABLE"]}]"#,
            r#"[{"mac":"aa:bb:cc:00:00:02","dst":"192.0.2.2","flags":["self"],"state":"permanent"},
               {"mac":"aa:bb:cc:00:00:09","flags":["self"],"state":"permanent"}]"#,
        )
        .unwrap();
        assert_eq!(st.routes.len(), 2);
        let own = st.owned();
        let s2: Ipv4Net = "10.244.2.0/24".parse().unwrap();
        let peer = Peer {
            subnet: s2,
            public_ip: Ipv4Addr::new(192, 0, 2, 2),
            mac: "aa:bb:cc:00:00:02".into(),
        };
        assert_eq!(own, Owned::for_peers([&peer]));
        assert!(parse_vxlan_state("", "", "").unwrap().routes.is_empty());
        assert!(parse_vxlan_state("[{", "", "").is_err());
    }
}
