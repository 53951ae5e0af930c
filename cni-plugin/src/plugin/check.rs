//! CHECK: the pod's reservation, prevResult, interface, addresses, routes
//! and bridge port are what ADD made.

use super::*;

fn check_failed(what: impl Into<String>) -> Error {
    Error::Check { what: what.into() }
}

pub(super) fn cmd_check(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let (cid, ifname, netns_path, node, mtu) = pod(env, conf)?;
    let ipam = Ipam::open(&conf.data_dir, &conf.name)?;
    let reserved = ipam.find(cid, ifname)?;
    if reserved.is_empty() {
        return Err(check_failed(format!(
            "no address reserved for {cid}/{ifname}"
        )));
    }
    let want = PodAddresses::of(&reserved, &node)
        .map_err(|r| check_failed(format!("reservations of {cid}/{ifname}: {r}")))?;
    let want_all = want.all();
    if let Some(prev) = &conf.prev_result {
        match result::prev_addresses(prev, ifname) {
            Some(p) if p == want_all => {}
            Some(p) if p.is_empty() => {
                return Err(check_failed(format!(
                    "prevResult has no address for {ifname}"
                )))
            }
            Some(p) => {
                return Err(check_failed(format!(
                    "prevResult says {p:?} for {ifname} but {want_all:?} is reserved"
                )))
            }
            None => {
                return Err(check_failed(format!(
                    "prevResult has no interface {ifname}"
                )))
            }
        }
    }

    let ns = kernel::open_netns(netns_path)?;
    let gateways = node.gateways();
    let mut pod = kernel::socket_in(&ns)?;
    let link = kernel::link_by_name(&mut pod, ifname)?
        .ok_or_else(|| check_failed(format!("interface {ifname} missing in pod namespace")))?;
    if link.mtu.is_some_and(|m| m != mtu) {
        return Err(check_failed(format!(
            "{ifname} has mtu {:?}, want {mtu}",
            link.mtu
        )));
    }
    let addrs = kernel::addresses(&mut pod, link.index)?;
    for w in &want_all {
        if !addrs.contains(w) {
            return Err(check_failed(format!(
                "{ifname} lacks address {w} (has {addrs:?})"
            )));
        }
    }
    let gws = kernel::default_gateways(&mut pod, link.index)?;
    for gw in &gateways {
        if !gws.contains(gw) {
            return Err(check_failed(format!(
                "no default route via {gw} on {ifname}"
            )));
        }
    }

    let host_ifname = host_veth_name(cid, ifname);
    let bridge = &conf.bridge;
    let mut host = kernel::socket()?;
    let bridge_lookup = kernel::lookup(bridge).send(&mut host)?;
    let veth_lookup = kernel::lookup(&host_ifname).send(&mut host)?;
    let br = bridge_lookup
        .link(&mut host)?
        .ok_or_else(|| check_failed(format!("bridge {bridge} missing")))?;
    let veth = veth_lookup
        .link(&mut host)?
        .ok_or_else(|| check_failed(format!("host veth {host_ifname} missing")))?;
    if veth.controller != Some(br.index) {
        return Err(check_failed(format!(
            "host veth {host_ifname} is not on bridge {bridge}"
        )));
    }
    Ok(())
}
