//! The CNI verbs: each one turns validated inputs into IPAM and netlink
//! effects, undoing what ADD created when a later step fails.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::config::{self, Command, Env, NetConf};
use crate::error::Error;
use crate::ipam::Ipam;
use crate::kernel::{self, host_veth_name};
use crate::result::{self, Attached};
use crate::subnet::{self, NodeSubnet};

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

fn requested_ip(env: &Env, conf: &NetConf) -> Result<Option<Ipv4Addr>, Error> {
    match (conf.runtime_ips.as_slice(), env.args.ip) {
        ([], ip) => Ok(ip),
        ([one], None) => Ok(Some(*one)),
        ([one], Some(arg)) if *one == arg => Ok(Some(arg)),
        ([_], Some(_)) => Err(Error::config(
            "runtimeConfig.ips",
            "disagrees with IP= in CNI_ARGS",
        )),
        _ => Err(Error::config(
            "runtimeConfig.ips",
            "at most one IPv4 address is supported",
        )),
    }
}

fn cmd_add(env: &Env, conf: &NetConf) -> Result<Value, Error> {
    let (cid, ifname) = attachment(env)?;
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::env("CNI_NETNS", "is not set"))?;
    let node = subnet::load(&conf.subnet_file)?;
    let mtu = conf.mtu.unwrap_or(node.mtu);
    let requested = requested_ip(env, conf)?;
    let ns = kernel::open_netns(netns_path)?;

    let taken = kernel::with_handle(Some(&ns), |h| async move {
        kernel::link_by_name(&h, ifname).await
    })?;
    if taken.is_some() {
        return Err(Error::InterfaceExists {
            ifname: ifname.to_string(),
            netns: netns_path.to_path_buf(),
        });
    }

    let ipam = Ipam::open(&conf.data_dir, &conf.name)?;
    let ip = ipam.allocate(node.gateway_net, cid, ifname, requested)?;
    let host_ifname = host_veth_name(cid, ifname);
    match setup(conf, &node, &ns, &host_ifname, ifname, ip, mtu) {
        Ok((host_mac, pod_mac)) => {
            let attached = Attached {
                host_ifname,
                host_mac: result::format_mac(&host_mac),
                pod_ifname: ifname.to_string(),
                pod_mac: result::format_mac(&pod_mac),
                sandbox: netns_path.display().to_string(),
                mtu,
                address: Ipv4Net::new(ip, node.gateway_net.prefix_len()).map_err(|e| {
                    Error::Internal {
                        reason: e.to_string(),
                    }
                })?,
                gateway: node.gateway(),
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
            let _ = kernel::with_handle(None, |h| {
                let name = host_ifname.clone();
                async move { kernel::delete_link(&h, &name).await }
            });
            let _ = ipam.release_ip(ip, cid, ifname);
            Err(e)
        }
    }
}

/// Bridge, veth, pod config. Returns (host MAC, pod MAC).
fn setup(
    conf: &NetConf,
    node: &NodeSubnet,
    ns: &std::fs::File,
    host_ifname: &str,
    ifname: &str,
    ip: Ipv4Addr,
    mtu: u32,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let gateway_net = node.gateway_net;
    let host_mac = kernel::with_handle(None, |h| async move {
        let bridge = kernel::ensure_bridge(&h, &conf.bridge, gateway_net, mtu).await?;
        let index = kernel::create_veth(&h, host_ifname, ifname, ns, mtu).await?;
        kernel::attach_to_bridge(&h, index, bridge, conf.hairpin_mode).await?;
        let link = kernel::link_by_name(&h, host_ifname).await?;
        Ok(link.map(|l| l.mac).unwrap_or_default())
    })?;
    let address = Ipv4Net::new(ip, gateway_net.prefix_len()).map_err(|e| Error::Internal {
        reason: e.to_string(),
    })?;
    let gateway = node.gateway();
    let pod_mac = kernel::with_handle(Some(ns), |h| async move {
        kernel::configure_pod(&h, ifname, address, gateway).await
    })?;
    Ok((host_mac, pod_mac))
}

fn cmd_del(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let (cid, ifname) = attachment(env)?;
    // The pod end first, so the pod loses connectivity before its address is
    // free again. A missing or unusable namespace just means it is gone.
    if let Some(path) = env.netns.as_deref() {
        if let Ok(ns) = kernel::open_netns(path) {
            if let Err(e) = kernel::with_handle(Some(&ns), |h| async move {
                kernel::delete_link(&h, ifname).await
            }) {
                eprintln!("twill: DEL {cid}/{ifname}: pod side: {e}");
            }
        }
    }
    let host_ifname = host_veth_name(cid, ifname);
    let host = kernel::with_handle(None, |h| {
        let name = host_ifname.clone();
        async move { kernel::delete_link(&h, &name).await }
    });
    let ipam = Ipam::open(&conf.data_dir, &conf.name).and_then(|i| i.release(cid, ifname));
    host?;
    ipam?;
    Ok(())
}

fn check_failed(what: impl Into<String>) -> Error {
    Error::Check { what: what.into() }
}

fn cmd_check(env: &Env, conf: &NetConf) -> Result<(), Error> {
    let (cid, ifname) = attachment(env)?;
    let netns_path = env
        .netns
        .as_deref()
        .ok_or_else(|| Error::env("CNI_NETNS", "is not set"))?;
    let node = subnet::load(&conf.subnet_file)?;
    let mtu = conf.mtu.unwrap_or(node.mtu);
    let ipam = Ipam::open(&conf.data_dir, &conf.name)?;
    let ip = ipam
        .find(cid, ifname)?
        .ok_or_else(|| check_failed(format!("no address reserved for {cid}/{ifname}")))?;
    let want = Ipv4Net::new(ip, node.gateway_net.prefix_len()).map_err(|e| Error::Internal {
        reason: e.to_string(),
    })?;
    if let Some(prev) = &conf.prev_result {
        match result::prev_address(prev, ifname) {
            Some(p) if p == want => {}
            Some(p) => {
                return Err(check_failed(format!(
                    "prevResult says {p} for {ifname} but {want} is reserved"
                )))
            }
            None => {
                return Err(check_failed(format!(
                    "prevResult has no address for {ifname}"
                )))
            }
        }
    }

    let ns = kernel::open_netns(netns_path)?;
    let gateway = node.gateway();
    kernel::with_handle(Some(&ns), |h| async move {
        let link = kernel::link_by_name(&h, ifname)
            .await?
            .ok_or_else(|| check_failed(format!("interface {ifname} missing in pod namespace")))?;
        if link.mtu.is_some_and(|m| m != mtu) {
            return Err(check_failed(format!(
                "{ifname} has mtu {:?}, want {mtu}",
                link.mtu
            )));
        }
        let addrs = kernel::ipv4_addresses(&h, link.index).await?;
        if !addrs.contains(&want) {
            return Err(check_failed(format!(
                "{ifname} lacks address {want} (has {addrs:?})"
            )));
        }
        let gws = kernel::default_gateways(&h, link.index).await?;
        if !gws.contains(&gateway) {
            return Err(check_failed(format!(
                "no default route via {gateway} on {ifname}"
            )));
        }
        Ok(())
    })?;

    let host_ifname = host_veth_name(cid, ifname);
    let bridge = conf.bridge.clone();
    kernel::with_handle(None, |h| async move {
        let br = kernel::link_by_name(&h, &bridge)
            .await?
            .ok_or_else(|| check_failed(format!("bridge {bridge} missing")))?;
        let host = kernel::link_by_name(&h, &host_ifname)
            .await?
            .ok_or_else(|| check_failed(format!("host veth {host_ifname} missing")))?;
        if host.controller != Some(br.index) {
            return Err(check_failed(format!(
                "host veth {host_ifname} is not on bridge {bridge}"
            )));
        }
        Ok(())
    })
}

fn cmd_status(conf: &NetConf) -> Result<(), Error> {
    let node = subnet::load(&conf.subnet_file).map_err(|e| Error::NotAvailable {
        reason: e.to_string(),
    })?;
    let free = Ipam::open(&conf.data_dir, &conf.name)
        .and_then(|i| i.free_count(node.gateway_net))
        .map_err(|e| Error::NotAvailable {
            reason: e.to_string(),
        })?;
    if free == 0 {
        return Err(Error::NotAvailable {
            reason: format!("node subnet {} has no free address", node.subnet()),
        });
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
    let link_errors = kernel::with_handle(None, |h| async move {
        let mut errs = Vec::new();
        for name in &names {
            if let Err(e) = kernel::delete_link(&h, name).await {
                errs.push(e);
            }
        }
        Ok(errs)
    });
    match link_errors {
        Ok(errs) => errors.extend(errs),
        Err(e) => errors.push(e),
    }
    for e in errors.iter().skip(1) {
        eprintln!("twill: GC: {e}");
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

    #[test]
    fn status_and_gc_on_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let sf = dir.path().join("subnet.env");
        std::fs::write(&sf, "TWILL_SUBNET=10.244.3.1/30\n").unwrap();
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"twill","subnetFile":"{}","dataDir":"{}"}}"#,
            sf.display(),
            dir.path().join("ipam").display()
        );
        let status = || call(&[("CNI_COMMAND", "STATUS")], &conf).result;
        assert!(status().unwrap().is_none());
        // A /30 has one pod address (.2): once taken, STATUS says unavailable.
        let ipam = Ipam::open(&dir.path().join("ipam"), "n").unwrap();
        ipam.allocate("10.244.3.1/30".parse().unwrap(), "gone", "eth0", None)
            .unwrap();
        assert_eq!(status().unwrap_err().code(), 50);
        // GC without the list is refused before touching anything. (GC with
        // a list deletes host veths, so it is covered by the netns test.)
        assert_eq!(
            call(&[("CNI_COMMAND", "GC")], &conf)
                .result
                .unwrap_err()
                .code(),
            7
        );
        assert_eq!(ipam.list().unwrap().len(), 1);
        ipam.release("gone", "eth0").unwrap();
        assert!(status().unwrap().is_none());
    }
}
