//! A routed underlay for the backend tests: a second segment (bridge `ul1`,
//! 198.18.1.0/24) next to `ul0` in the underlay namespace, which forwards
//! between the two, so some hosts are on one L2 segment and others are one
//! router hop away. Also reads back the routes twill owns (`proto 77`) on any
//! device, which the VXLAN-only readers of `datapath` do not cover.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::cluster::{Cluster, UNDERLAY_IP};
use crate::datapath::TWILL_RTPROTO;
use crate::error::{HarnessError, Result};
use crate::netns::Netns;

/// The first underlay segment, the harness's own (`ul0`).
pub const SEGMENT_A: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, 0), 24);
/// The second underlay segment (`ul1`).
pub const SEGMENT_B: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 1, 0), 24);
/// The underlay namespace's address on segment B: hosts there route via it.
pub const ROUTER_B_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 254);
/// The bridge of segment B in the underlay namespace.
pub const BRIDGE_B: &str = "ul1";
/// The bridge of segment A in the underlay namespace.
pub const BRIDGE_A: &str = "ul0";

fn perr(what: impl Into<String>, reason: impl ToString) -> HarnessError {
    HarnessError::Parse {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Builds a cluster from `builder` (its host count is ignored) with
/// `on_a` hosts on segment A followed by `on_b` hosts on segment B; agents
/// are not started. Hosts are `h1..` in that order; a host on B gets
/// `198.18.1.<its number>`.
pub fn build(builder: crate::ClusterBuilder, on_a: usize, on_b: usize) -> Result<Cluster> {
    let mut c = builder.hosts(0).build()?;
    add_segment_b(&c)?;
    for _ in 0..on_a {
        add_host_on_a(&mut c)?;
    }
    for _ in 0..on_b {
        add_host_on_b(&mut c)?;
    }
    Ok(c)
}

/// Creates bridge `ul1` with [`ROUTER_B_IP`] in the underlay namespace and
/// turns on forwarding there (a namespace-local sysctl), making that
/// namespace the router between the segments.
pub fn add_segment_b(c: &Cluster) -> Result<()> {
    let ul = c.underlay();
    ul.ip(["link", "add", BRIDGE_B, "type", "bridge"])?;
    ul.ip([
        "addr",
        "add",
        &format!("{ROUTER_B_IP}/{}", SEGMENT_B.prefix_len()),
        "dev",
        BRIDGE_B,
    ])?;
    ul.ip(["link", "set", BRIDGE_B, "up"])?;
    ul.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

/// Adds a host on segment A (`192.0.2.<n>`) with a route to segment B via
/// the router. Returns its name.
pub fn add_host_on_a(c: &mut Cluster) -> Result<String> {
    let name = c.add_host()?;
    c.host(&name)?.ns().ip([
        "route",
        "add",
        &SEGMENT_B.to_string(),
        "via",
        &UNDERLAY_IP.to_string(),
    ])?;
    Ok(name)
}

/// Adds a host on segment B (`198.18.1.<n>`) with a default route via the
/// router (etcd on 192.0.2.254 is reached through it). Returns its name.
pub fn add_host_on_b(c: &mut Cluster) -> Result<String> {
    let n = c.hosts().len() + 1;
    let octet = u8::try_from(n)
        .ok()
        .filter(|o| *o < 254)
        .ok_or_else(|| perr("segment B host address", format!("no octet for host {n}")))?;
    let addr = Ipv4Net::new(Ipv4Addr::new(198, 18, 1, octet), SEGMENT_B.prefix_len())
        .map_err(|e| perr("segment B host address", e))?;
    let name = c.add_host_at(addr, BRIDGE_B)?;
    c.host(&name)?
        .ns()
        .ip(["route", "add", "default", "via", &ROUTER_B_IP.to_string()])?;
    Ok(name)
}

/// A route twill owns, as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRoute {
    pub gateway: Option<Ipv4Addr>,
    pub dev: String,
    pub onlink: bool,
}

/// Parses `ip -j route show proto 77` (any device) into destination ->
/// route. `ip` leaves the protocol out of the JSON when filtering by it, so
/// the filter is the caller's; a protocol that is present must be twill's.
pub fn parse_owned_routes(json: &str) -> Result<BTreeMap<Ipv4Net, OwnedRoute>> {
    let mut out = BTreeMap::new();
    if json.trim().is_empty() {
        return Ok(out);
    }
    let list: Vec<Value> = serde_json::from_str(json).map_err(|e| perr("ip -j route", e))?;
    for r in list {
        let dst = r
            .get("dst")
            .and_then(Value::as_str)
            .ok_or_else(|| perr("ip -j route", format!("route without dst: {r}")))?;
        let dst: Ipv4Net = if dst.contains('/') {
            dst.parse()
        } else {
            format!("{dst}/32").parse()
        }
        .map_err(|e| perr(format!("route dst {dst}"), e))?;
        let proto = match r.get("protocol") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        if proto.is_some_and(|p| p != TWILL_RTPROTO.to_string()) {
            return Err(perr(
                format!("route {dst}"),
                format!("protocol is not {TWILL_RTPROTO}: {r}"),
            ));
        }
        let gateway = match r.get("gateway").and_then(Value::as_str) {
            Some(g) => Some(
                g.parse()
                    .map_err(|e| perr(format!("gateway of {dst}"), e))?,
            ),
            None => None,
        };
        let dev = r
            .get("dev")
            .and_then(Value::as_str)
            .ok_or_else(|| perr(format!("route {dst}"), "no dev"))?
            .to_owned();
        let onlink = r
            .get("flags")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some("onlink")));
        out.insert(
            dst,
            OwnedRoute {
                gateway,
                dev,
                onlink,
            },
        );
    }
    Ok(out)
}

/// The routes with protocol 77 in `ns`'s main table, on any device.
pub fn owned_routes(ns: &Netns) -> Result<BTreeMap<Ipv4Net, OwnedRoute>> {
    let proto = TWILL_RTPROTO.to_string();
    parse_owned_routes(&ns.ip(["-j", "route", "show", "proto", &proto])?)
}

/// Names of the links in `ns`.
pub fn link_names(ns: &Netns) -> Result<Vec<String>> {
    let json = ns.ip(["-j", "link", "show"])?;
    let list: Vec<Value> = serde_json::from_str(&json).map_err(|e| perr("ip -j link", e))?;
    Ok(list
        .iter()
        .filter_map(|l| l.get("ifname").and_then(Value::as_str))
        .map(str::to_owned)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_underlay_and_vxlan_routes() {
        let r = parse_owned_routes(
            r#"[{"dst":"10.244.7.0/24","gateway":"192.0.2.2","dev":"eth0","flags":[]},
               {"dst":"10.244.9.0/24","gateway":"10.244.9.0","dev":"twill.1","protocol":"77","flags":["onlink"]}]"#,
        )
        .unwrap();
        let a: Ipv4Net = "10.244.7.0/24".parse().unwrap();
        let b: Ipv4Net = "10.244.9.0/24".parse().unwrap();
        assert_eq!(
            r[&a],
            OwnedRoute {
                gateway: Some(Ipv4Addr::new(192, 0, 2, 2)),
                dev: "eth0".into(),
                onlink: false
            }
        );
        assert!(r[&b].onlink);
        assert_eq!(r[&b].dev, "twill.1");
        assert!(parse_owned_routes("").unwrap().is_empty());
    }

    #[test]
    fn rejects_foreign_protocol_and_garbage() {
        assert!(parse_owned_routes(
            r#"[{"dst":"10.244.7.0/24","dev":"eth0","protocol":"static"}]"#
        )
        .is_err());
        assert!(parse_owned_routes(r#"[{"dev":"eth0"}]"#).is_err());
        assert!(parse_owned_routes("[{").is_err());
    }

    #[test]
    fn segments_do_not_overlap() {
        assert!(!SEGMENT_A.contains(&SEGMENT_B.network()));
        assert!(SEGMENT_B.contains(&ROUTER_B_IP));
    }
}
