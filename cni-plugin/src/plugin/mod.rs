//! The CNI verbs: each one turns validated inputs into IPAM and netlink
//! effects, undoing what ADD created when a later step fails.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;

use crate::config::{self, Command, Env, NetConf};
use crate::error::Error;
use crate::ipam::{Ipam, Request};
use crate::kernel::{self, host_veth_name, Batch};
use crate::netlink::Socket;
use crate::result::{self, Attached, Family};
use crate::subnet::{self, Node};

mod check;

use check::cmd_check;

/// Link deletions GC sends per netlink round trip.
const GC_BATCH: usize = 64;

/// The result of one plugin call, ready for `main` to print.
#[derive(Debug)]
pub struct Outcome {
    /// Version to stamp on an error object.
    pub cni_version: String,
    /// `Some(json)` to print on success, `None` for verbs with no output.
    pub result: Result<Option<Value>, Error>,
}

/// Runs one CNI call given the environment lookup and the stdin bytes.
pub fn run(get_env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let sniffed = config::sniff_version(stdin);
    let cni_version = sniffed
        .clone()
        .filter(|v| config::SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| config::DEFAULT_VERSION.to_string());
    let result = dispatch(get_env, stdin, sniffed);
    Outcome {
        cni_version,
        result,
    }
}

fn dispatch(
    get_env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    sniffed: Option<String>,
) -> Result<Option<Value>, Error> {
    let env = config::parse_env(get_env)?;
    if env.command == Command::Version {
        let v = sniffed.unwrap_or_else(|| config::DEFAULT_VERSION.to_string());
        return Ok(Some(result::version_info(&v)));
    }
    let conf = config::parse_netconf(stdin)?;
    match env.command {
        Command::Add => cmd_add(&env, &conf).map(Some),
        Command::Del => cmd_del(&env, &conf).map(|()| None),
        Command::Check => cmd_check(&env, &conf).map(|()| None),
        Command::Status => cmd_status(&conf).map(|()| None),
        Command::Gc => cmd_gc(&conf).map(|()| None),
        Command::Version => Err(Error::Internal {
            reason: "VERSION handled above".into(),
        }),
    }
}

/// Container id and ifname, which `parse_env` guarantees for ADD/DEL/CHECK.
fn attachment(env: &Env) -> Result<(&str, &str), Error> {
    let cid = env
        .container_id
        .as_deref()
        .ok_or_else(|| Error::env("CNI_CONTAINERID", "is not set"))?;
    let ifname = env
        .ifname
        .as_deref()
        .ok_or_else(|| Error::env("CNI_IFNAME", "is not set"))?;
    Ok((cid, ifname))
}

/// At most one address per family out of `ips`; `source` names where they
/// came from for the error.
fn split_families(
    ips: &[IpAddr],
    source: &str,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), Error> {
    let mut v4 = None;
    let mut v6 = None;
    for ip in ips {
        let dup = match ip {
            IpAddr::V4(a) => v4.replace(*a).is_some(),
            IpAddr::V6(a) => v6.replace(*a).is_some(),
        };
        if dup {
            return Err(Error::config(
                source,
                "at most one address per family (IPv4, IPv6) is supported",
            ));
        }
    }
    Ok((v4, v6))
}

/// Merges one family's static request from `runtimeConfig.ips` and
/// `CNI_ARGS` `IP=`: either may name it, both must then agree.
fn merge<T: PartialEq>(runtime: Option<T>, args: Option<T>) -> Result<Option<T>, Error> {
    match (runtime, args) {
        (Some(r), Some(a)) if r != a => Err(Error::config(
            "runtimeConfig.ips",
            "disagrees with IP= in CNI_ARGS",
        )),
        (r, a) => Ok(r.or(a)),
    }
}

/// The addresses ADD must reserve: IPv4 unless the node is IPv6-only, IPv6
/// on a dual-stack or IPv6-only node, each static when the runtime asked
/// for one.
fn address_requests(env: &Env, conf: &NetConf, node: &Node) -> Result<Vec<Request>, Error> {
    let (rt4, rt6) = split_families(&conf.runtime_ips, "runtimeConfig.ips")?;
    let (arg4, arg6) = split_families(&env.args.ips, "CNI_ARGS")?;
    let want4 = merge(rt4, arg4)?;
    let want6 = merge(rt6, arg6)?;
    let mut requests = Vec::new();
    match (node.v4, want4) {
        (Some(v4), want4) => requests.push(Request {
            gateway_net: IpNet::V4(v4),
            requested: want4.map(IpAddr::V4),
        }),
        (None, Some(ip)) => {
            return Err(Error::AddressUnavailable {
                ip: IpAddr::V4(ip),
                reason: "the node is IPv6-only (no TWILL_SUBNET in the subnet file)".into(),
            })
        }
        (None, None) => {}
    }
    match (&node.ipv6, want6) {
        (Some(v6), want6) => requests.push(Request {
            gateway_net: IpNet::V6(v6.gateway_net),
            requested: want6.map(IpAddr::V6),
        }),
        (None, Some(ip)) => {
            return Err(Error::AddressUnavailable {
                ip: IpAddr::V6(ip),
                reason: "the node has no IPv6 subnet (no TWILL_IPV6_SUBNET in the subnet file)"
                    .into(),
            })
        }
        (None, None) => {}
    }
    Ok(requests)
}

/// The pod's addresses as reserved, with the node subnets' prefix lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PodAddresses {
    v4: Option<Ipv4Net>,
    v6: Option<Ipv6Net>,
}

impl PodAddresses {
    /// Pairs reserved addresses with the node's subnets. Fails unless there
    /// is exactly one address of each family the node has.
    fn of(ips: &[IpAddr], node: &Node) -> Result<Self, String> {
        let (v4, v6) = split_families(ips, "reservations").map_err(|e| e.to_string())?;
        let v4 = match (node.v4, v4) {
            (Some(n), Some(a)) => Some(Ipv4Net::new(a, n.prefix_len()).map_err(|e| e.to_string())?),
            (Some(_), None) => return Err("no IPv4 address".into()),
            (None, Some(a)) => return Err(format!("IPv4 address {a} on an IPv6-only node")),
            (None, None) => None,
        };
        let v6 = match (&node.ipv6, v6) {
            (Some(n), Some(a)) => {
                Some(Ipv6Net::new(a, n.gateway_net.prefix_len()).map_err(|e| e.to_string())?)
            }
            (Some(_), None) => return Err("no IPv6 address on a dual-stack node".into()),
            (None, Some(a)) => return Err(format!("IPv6 address {a} on an IPv4-only node")),
            (None, None) => None,
        };
        Ok(PodAddresses { v4, v6 })
    }

    fn all(&self) -> Vec<IpNet> {
        let mut v: Vec<IpNet> = self.v4.map(IpNet::V4).into_iter().collect();
        v.extend(self.v6.map(IpNet::V6));
        v
    }
}

/// What ADD and CHECK read first, in this order: the attachment
/// (container ID, interface name), the pod's namespace path, the node's
/// subnet file and the pod MTU.
fn pod<'a>(
    env: &'a Env,
    conf: &NetConf,
) -> Result<(&'a str, &'a str, &'a std::path::Path, Node, u32), Error> {
    let (cid, ifname) = attachment(env)?;
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::env("CNI_NETNS", "is not set"))?;
    let node = subnet::load(&conf.subnet_file)?;
    let mtu = conf.mtu.unwrap_or(node.mtu);
    Ok((cid, ifname, netns_path, node, mtu))
}

fn cmd_add(env: &Env, conf: &NetConf) -> Result<Value, Error> {
    let (cid, ifname, netns_path, node, mtu) = pod(env, conf)?;
    let requests = address_requests(env, conf, &node)?;
    let ns = kernel::open_netns(netns_path)?;
    let mut host = kernel::socket()?;
    let mut pod = kernel::socket_in(&ns)?;

    if kernel::index_of(&pod, ifname)?.is_some() {
        return Err(Error::InterfaceExists {
            ifname: ifname.to_string(),
            netns: netns_path.to_path_buf(),
        });
    }
    let bridge = kernel::brief(&host, &conf.bridge)?;
    if bridge.is_some() {
        check_bridge_agrees(conf, &node)?;
    }

    let ipam = Ipam::open(&conf.data_dir, &conf.name)?;
    let ips = ipam.allocate_all(&requests, cid, ifname)?;
    let host_ifname = host_veth_name(cid, ifname);
    let outcome = PodAddresses::of(&ips, &node)
        .map_err(|reason| Error::Internal { reason })
        .and_then(|addrs| {
            let links = Links {
                host: &mut host,
                pod: &mut pod,
                ns: &ns,
                bridge,
                host_ifname: &host_ifname,
                ifname,
            };
            setup(conf, &node, links, addrs, mtu).map(|macs| (addrs, macs))
        });
    match outcome {
        Ok((addrs, (host_mac, pod_mac))) => {
            let attached = Attached {
                host_ifname,
                host_mac: result::format_mac(&host_mac),
                pod_ifname: ifname.to_string(),
                pod_mac: result::format_mac(&pod_mac),
                sandbox: netns_path.display().to_string(),
                mtu,
                ipv4: addrs
                    .v4
                    .zip(node.gateway4())
                    .map(|(address, gateway)| Family { address, gateway }),
                ipv6: addrs.v6.zip(node.ipv6).map(|(address, n)| Family {
                    address,
                    gateway: n.gateway(),
                }),
            };
            Ok(result::build(
                &conf.cni_version,
                &attached,
                &conf.dns,
                conf.prev_result.as_ref(),
            ))
        }
        Err(e) => {
            // Deleting the host end takes the pod end with it.
            let _ = kernel::delete_link(&mut host, &host_ifname);
            for ip in ips {
                let _ = ipam.release_ip(ip, cid, ifname);
            }
            Err(e)
        }
    }
}

/// The bridge's gateway address is the agent's, made from its lease: when
/// it is the subnet file's gateway with another prefix length, the file
/// does not describe the node's lease (a /25 written for a /24 lease would
/// add a second gateway address that the agent then deletes).
fn check_bridge_agrees(conf: &NetConf, node: &Node) -> Result<(), Error> {
    // An IPv6-only node has no IPv4 gateway to compare.
    let Some(gateway_net) = node.v4 else {
        return Ok(());
    };
    match kernel::primary_ipv4(&conf.bridge)? {
        Some(have)
            if have.addr() == gateway_net.addr()
                && have.prefix_len() != gateway_net.prefix_len() =>
        {
            Err(Error::InvalidSubnetFile {
                path: conf.subnet_file.clone(),
                reason: format!(
                    "TWILL_SUBNET {} has prefix /{}, but the node's lease is /{} (bridge {} has {have})",
                    gateway_net,
                    gateway_net.prefix_len(),
                    have.prefix_len(),
                    conf.bridge
                ),
            })
        }
        _ => Ok(()),
    }
}

/// The netlink side of one ADD: a socket per namespace, the bridge as
/// looked up, and the names of the two veth ends.
struct Links<'a> {
    host: &'a mut Socket,
    pod: &'a mut Socket,
    ns: &'a std::fs::File,
    bridge: Option<kernel::Brief>,
    host_ifname: &'a str,
    ifname: &'a str,
}

/// Bridge, veth, pod config, in two round trips: gateway addresses + veth;
/// then the bridge port's hairpin and the pod end's addresses, link and
/// routes, on their two sockets at once. Links are looked up by ioctl. Returns (host
/// MAC, pod MAC).
fn setup(
    conf: &NetConf,
    node: &Node,
    l: Links<'_>,
    addrs: PodAddresses,
    mtu: u32,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let v4 = addrs.v4.zip(node.gateway4());
    let v6 = addrs.v6.zip(node.ipv6.map(|n| n.gateway()));
    let host_mac = kernel::random_mac();
    let pod_mac = kernel::random_mac();
    // The bridge carries the node's MTU whatever this pod's is.
    let bridge_index = kernel::ensure_bridge(
        l.host,
        l.bridge,
        &conf.bridge,
        node.bridge_gateway(),
        node.ipv6.is_some(),
        node.mtu,
    )?;

    let mut b = Batch::new();
    for net in node.gateway_nets() {
        b.push(
            format!("add {net} to bridge {}", conf.bridge),
            kernel::add_address(bridge_index, net),
        );
    }
    let veth = kernel::Veth {
        host_ifname: l.host_ifname,
        host_mac: &host_mac,
        pod_ifname: l.ifname,
        pod_mac: &pod_mac,
        pod_ns: l.ns,
        mtu,
        bridge_index,
    };
    b.push(
        format!("create veth {} <-> {}", l.host_ifname, l.ifname),
        kernel::create_veth(veth),
    );
    if mtu != node.mtu {
        // A bridge whose MTU nobody set follows the smallest of its ports,
        // so this pod's port would change it for every pod on the node. Set
        // in the same write, the node's MTU comes back at once and, set
        // explicitly, the kernel stops following the ports.
        b.push(
            format!("set bridge {} mtu {}", conf.bridge, node.mtu),
            kernel::set_mtu(bridge_index, node.mtu),
        );
    }
    b.run(l.host)?;
    let missing = |end: &str| Error::Internal {
        reason: format!("veth end {end} missing right after creation"),
    };
    let host_index =
        kernel::index_of(l.host, l.host_ifname)?.ok_or_else(|| missing(l.host_ifname))?;
    let pod_index = kernel::index_of(l.pod, l.ifname)?.ok_or_else(|| missing(l.ifname))?;

    let hairpin = if conf.hairpin_mode {
        let mut b = Batch::new();
        b.push(
            format!("set hairpin on {}", l.host_ifname),
            kernel::set_hairpin(host_index),
        );
        Some(b.send(l.host)?)
    } else {
        None
    };
    if v6.is_some() {
        kernel::within(l.ns, || kernel::ensure_ipv6_enabled(l.ifname))?;
    }
    let mut b = Batch::new();
    kernel::configure_pod(&mut b, l.ifname, pod_index, v4, v6);
    b.run(l.pod)?;
    if let Some(h) = hairpin {
        h.wait(l.host)?;
    }
    crate::guard::add(
        host_index,
        &pod_mac,
        addrs.v4.map(|n| n.addr()),
        addrs.v6.map(|n| n.addr()),
        &conf.allowed_source_prefixes,
    )?;
    Ok((host_mac, pod_mac))
}

fn cmd_del(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let (cid, ifname) = attachment(env)?;
    // The veth goes before the address is free again, so the pod has lost
    // connectivity by then. Deleting the host end removes the pod end in the
    // same kernel operation, without entering the pod namespace; only when
    // there is no host end is the pod side looked at (a missing or unusable
    // namespace just means it is gone).
    let host_ifname = host_veth_name(cid, ifname);
    let mut port = None;
    let host = kernel::socket().and_then(|mut h| {
        port = kernel::index_of(&h, &host_ifname).ok().flatten();
        let deleted = kernel::delete_link(&mut h, &host_ifname);
        if !matches!(deleted, Ok(true)) {
            if let Some(Err(e)) = env.netns.as_deref().map(|path| del_pod_side(path, ifname)) {
                tracing::warn!(
                    container_id = cid,
                    ifname,
                    error = %e,
                    "DEL: could not remove the pod side"
                );
            }
        }
        deleted
    });
    // A pod's entries left behind are harmless (their port is gone) and
    // go with the next DEL on this node: they fail no teardown.
    if let Err(e) = crate::guard::remove(port) {
        tracing::warn!(container_id = cid, ifname, error = %e, "DEL: isolation entries stay");
    }
    let ipam = Ipam::existing(&conf.data_dir, &conf.name).release(cid, ifname);
    host?;
    ipam?;
    Ok(())
}

/// Deletes `ifname` inside the namespace at `path`; a namespace that cannot
/// be opened counts as gone.
fn del_pod_side(path: &std::path::Path, ifname: &str) -> Result<(), Error> {
    let Ok(ns) = kernel::open_netns(path) else {
        return Ok(());
    };
    let mut pod = kernel::socket_in(&ns)?;
    kernel::delete_link(&mut pod, ifname).map(|_| ())
}

fn cmd_status(conf: &NetConf) -> Result<(), Error> {
    let unavailable = |reason: String| Error::NotAvailable { reason };
    let node = subnet::load(&conf.subnet_file).map_err(|e| unavailable(e.to_string()))?;
    let ipam = Ipam::open(&conf.data_dir, &conf.name).map_err(|e| unavailable(e.to_string()))?;
    // Every ADD writes a temp file and links it: on a read-only or full
    // file system all of them would fail.
    ipam.probe_writable()
        .map_err(|e| unavailable(format!("the address store cannot be written: {e}")))?;
    for gateway_net in node.gateway_nets() {
        let free = ipam
            .free_count(gateway_net)
            .map_err(|e| unavailable(e.to_string()))?;
        if free == 0 {
            return Err(unavailable(format!(
                "node subnet {} has no free address",
                gateway_net.trunc()
            )));
        }
    }
    Ok(())
}

fn cmd_gc(conf: &NetConf) -> Result<(), Error> {
    let valid = conf.valid_attachments.as_deref().ok_or_else(|| {
        Error::config(
            "cni.dev/valid-attachments",
            "is required for GC (an empty list releases everything)",
        )
    })?;
    let keep = config::attachment_set(valid);
    let ipam = Ipam::open(&conf.data_dir, &conf.name)?;
    let (released, mut errors) = ipam.gc(&keep)?;
    let names: Vec<String> = released
        .iter()
        .map(|r| host_veth_name(&r.container_id, &r.ifname))
        .collect();
    // Deletes go in batches: every answer waits in the socket's receive
    // buffer until the batch is read back.
    let link_errors = kernel::socket().and_then(|mut h| {
        let mut errs = Vec::new();
        for chunk in names.chunks(GC_BATCH) {
            let mut b = Batch::new();
            for name in chunk {
                b.push(format!("delete link {name}"), kernel::delete_link_req(name));
            }
            for (op, answer) in b.send(&mut h)?.answers(&mut h)? {
                if let Err(e) = kernel::deleted(&op, answer) {
                    errs.push(e);
                }
            }
        }
        Ok(errs)
    });
    match link_errors {
        Ok(errs) => errors.extend(errs),
        Err(e) => errors.push(e),
    }
    // The isolation entries of the ports just deleted, and of any other
    // port gone without a DEL.
    if let Err(e) = crate::guard::remove(None) {
        errors.push(e);
    }
    // The first error is the call's result; the others only reach the log.
    for e in errors.iter().skip(1) {
        tracing::warn!(error = %e, "GC: further failure");
    }
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn call(env: &[(&str, &str)], stdin: &str) -> Outcome {
        let m: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        run(|k| m.get(k).cloned(), stdin.as_bytes())
    }

    #[test]
    fn arbitrary_stdin_never_panics_or_succeeds() {
        use rand::{Rng, SeedableRng};
        let env = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/none"),
            ("CNI_IFNAME", "eth0"),
        ];
        let m: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let valid = br#"{"cniVersion":"1.1.0","name":"n","type":"twill","mtu":1400}"#;
        // Every strict prefix of a valid config is invalid JSON.
        for cut in 0..valid.len() {
            let o = run(|k| m.get(k).cloned(), &valid[..cut]);
            assert_eq!(o.result.unwrap_err().code(), 6, "prefix {cut}");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let len = rng.gen_range(0..64);
            let input: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let o = run(|k| m.get(k).cloned(), &input);
            let code = o.result.unwrap_err().code();
            assert!([1, 6, 7].contains(&code), "{input:?} -> {code}");
        }
    }

    #[test]
    fn version_echoes_input_version() {
        let o = call(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(o.result.unwrap().unwrap()["cniVersion"], "0.4.0");
        let o = call(&[("CNI_COMMAND", "VERSION")], "");
        assert_eq!(o.result.unwrap().unwrap()["cniVersion"], "1.1.0");
    }

    #[test]
    fn errors_use_callers_version() {
        let o = call(
            &[("CNI_COMMAND", "ADD")],
            r#"{"cniVersion":"0.3.1","name":"n","type":"twill"}"#,
        );
        assert_eq!(o.cni_version, "0.3.1");
        assert_eq!(o.result.unwrap_err().code(), 4);
        let o = call(
            &[("CNI_COMMAND", "STATUS")],
            r#"{"cniVersion":"1.1.0","name":"n","type":"twill","subnetFile":"/nonexistent/twill/subnet.env"}"#,
        );
        assert_eq!(o.result.unwrap_err().code(), 50);
    }

    /// A temp dir holding a subnet file with `subnet_env` and the IPAM store
    /// of network "n", and the config of "n" using both.
    struct Store {
        dir: tempfile::TempDir,
        conf: String,
        ipam: Ipam,
    }

    impl Store {
        fn new(subnet_env: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("subnet.env"), subnet_env).unwrap();
            let data = dir.path().join("ipam");
            let conf = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"twill","subnetFile":"{}","dataDir":"{}"}}"#,
                dir.path().join("subnet.env").display(),
                data.display()
            );
            let ipam = Ipam::open(&data, "n").unwrap();
            Store { dir, conf, ipam }
        }

        fn status(&self) -> Result<Option<Value>, Error> {
            call(&[("CNI_COMMAND", "STATUS")], &self.conf).result
        }
    }

    #[test]
    fn status_and_gc_on_a_store() {
        let st = Store::new("TWILL_SUBNET=10.244.3.1/30\n");
        let (conf, ipam) = (&st.conf, &st.ipam);
        let status = || st.status();
        assert!(status().unwrap().is_none());
        // A /30 has one pod address (.2): once taken, STATUS says unavailable.
        ipam.allocate("10.244.3.1/30".parse().unwrap(), "gone", "eth0", None)
            .unwrap();
        assert_eq!(status().unwrap_err().code(), 50);
        // GC without the list is refused before touching anything. (GC with
        // a list deletes host veths, so it is covered by the netns test.)
        assert_eq!(
            call(&[("CNI_COMMAND", "GC")], conf)
                .result
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(ipam.list().unwrap().len(), 1);
        ipam.release("gone", "eth0").unwrap();
        assert!(status().unwrap().is_none());
    }

    fn node(text: &str) -> Node {
        Node::parse(text).unwrap()
    }

    const DUAL: &str = "TWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n";
    const V6_ONLY: &str =
        "TWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n";

    fn requests(args: &str, runtime: &str, node_text: &str) -> Result<Vec<Request>, Error> {
        let mut pairs = vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ];
        if !args.is_empty() {
            pairs.push(("CNI_ARGS", args));
        }
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = config::parse_env(|k| m.get(k).cloned()).unwrap();
        let conf = config::parse_netconf(
            format!(r#"{{"cniVersion":"1.1.0","name":"n","type":"twill","runtimeConfig":{{"ips":[{runtime}]}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        address_requests(&env, &conf, &node(node_text))
    }

    #[test]
    fn address_requests_per_family() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        // IPv4-only node: one dynamic request.
        let r = requests("", "", "TWILL_SUBNET=10.244.3.1/24\n").unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].requested, None);
        // Dual-stack: v4 then v6, both dynamic.
        let r = requests("", "", DUAL).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].gateway_net.to_string(), "fd00:10:244:3::1/64");
        // Static v6 from CNI_ARGS list, static v4 from runtimeConfig.
        let r = requests("IP=fd00:10:244:3::9", r#""10.244.3.9/24""#, DUAL).unwrap();
        assert_eq!(r[0].requested, ip("10.244.3.9"));
        assert_eq!(r[1].requested, ip("fd00:10:244:3::9"));
        let r = requests("IP=10.244.3.7,fd00:10:244:3::7", "", DUAL).unwrap();
        assert_eq!(r[0].requested, ip("10.244.3.7"));
        assert_eq!(r[1].requested, ip("fd00:10:244:3::7"));
        // Both sources agreeing is fine, disagreeing is a config error.
        let r = requests("IP=fd00:10:244:3::7", r#""fd00:10:244:3::7/64""#, DUAL).unwrap();
        assert_eq!(r[1].requested, ip("fd00:10:244:3::7"));
        let e = requests("IP=fd00:10:244:3::7", r#""fd00:10:244:3::8""#, DUAL).unwrap_err();
        assert_eq!(e.code(), 7);
        // Two of one family.
        let e = requests("IP=fd00::7,fd00::8", "", DUAL).unwrap_err();
        assert!(e.to_string().contains("CNI_ARGS"), "{e}");
        let e = requests("", r#""10.244.3.7","10.244.3.8""#, DUAL).unwrap_err();
        assert!(e.to_string().contains("runtimeConfig.ips"), "{e}");
        // A v6 address on an IPv4-only node is unusable (102).
        let e = requests("IP=fd00:10:244:3::7", "", "TWILL_SUBNET=10.244.3.1/24\n").unwrap_err();
        assert_eq!(e.code(), 102);
    }

    #[test]
    fn pod_addresses_pair_families_with_node_subnets() {
        let n = node(DUAL);
        let ips: Vec<IpAddr> = vec![
            "10.244.3.5".parse().unwrap(),
            "fd00:10:244:3::5".parse().unwrap(),
        ];
        let p = PodAddresses::of(&ips, &n).unwrap();
        assert_eq!(p.v4.unwrap().to_string(), "10.244.3.5/24");
        assert_eq!(p.v6.unwrap().to_string(), "fd00:10:244:3::5/64");
        assert_eq!(p.all().len(), 2);
        assert!(PodAddresses::of(&ips[..1], &n).is_err());
        assert!(PodAddresses::of(&ips, &node("TWILL_SUBNET=10.244.3.1/24\n")).is_err());
        // IPv6-only: the IPv6 address alone; an IPv4 one is refused.
        let n6 = node(V6_ONLY);
        let p = PodAddresses::of(&ips[1..], &n6).unwrap();
        assert_eq!(
            (p.v4, p.v6),
            (None, Some("fd00:10:244:3::5/64".parse().unwrap()))
        );
        assert_eq!(p.all().len(), 1);
        let e = PodAddresses::of(&ips, &n6).unwrap_err();
        assert!(e.contains("IPv6-only"), "{e}");
        assert!(PodAddresses::of(&[], &n6).is_err());
    }

    #[test]
    fn ipv6_only_node_requests_ipv6_alone() {
        let r = requests("", "", V6_ONLY).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].gateway_net.to_string(), "fd00:10:244:3::1/64");
        let r = requests("IP=fd00:10:244:3::9", "", V6_ONLY).unwrap();
        assert_eq!(r[0].requested, Some("fd00:10:244:3::9".parse().unwrap()));
        // An IPv4 address asked of an IPv6-only node is unusable (102).
        let e = requests("IP=10.244.3.7", "", V6_ONLY).unwrap_err();
        assert_eq!(e.code(), 102);
        assert!(e.to_string().contains("IPv6-only"), "{e}");
    }

    #[test]
    fn status_fails_when_the_v6_subnet_is_full() {
        // /126: two v6 pod addresses.
        let st = Store::new("TWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_SUBNET=fd00::1/126\n");
        let (sf, ipam) = (st.dir.path().join("subnet.env"), &st.ipam);
        let status = || st.status();
        assert!(status().unwrap().is_none());
        let gw6: IpNet = "fd00::1/126".parse().unwrap();
        ipam.allocate(gw6, "a", "eth0", None).unwrap();
        assert!(status().unwrap().is_none());
        ipam.allocate(gw6, "b", "eth0", None).unwrap();
        let e = status().unwrap_err();
        assert_eq!(e.code(), 50);
        assert!(e.to_string().contains("fd00::/126"), "{e}");
        ipam.release("a", "eth0").unwrap();
        assert!(status().unwrap().is_none());
        // A malformed v6 key makes STATUS fail too.
        std::fs::write(
            &sf,
            "TWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_SUBNET=fd00::/126\n",
        )
        .unwrap();
        let e = status().unwrap_err();
        assert_eq!(e.code(), 50);
        assert!(e.to_string().contains("TWILL_IPV6_SUBNET"), "{e}");
    }
}
