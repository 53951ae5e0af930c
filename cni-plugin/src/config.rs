//! Parsing and validation of the CNI inputs: the network config JSON on stdin,
//! the `CNI_*` environment variables and `CNI_ARGS`. Pure functions over bytes
//! and string maps so every error path is unit-tested without root.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Map, Value};

use crate::error::Error;

/// CNI spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// Version used when nothing else is known (e.g. undecodable stdin).
pub const DEFAULT_VERSION: &str = "1.1.0";

// Shared with the agent and its installer, so they live in the contract crate.
pub use twill_contract::defaults::{
    BRIDGE as DEFAULT_BRIDGE, IPAM_DATA_DIR as DEFAULT_DATA_DIR, SUBNET_FILE as DEFAULT_SUBNET_FILE,
};
/// Longest file name the kernel accepts.
const NAME_MAX: usize = 255;

/// The CNI verb from `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(Error::env(
                    "CNI_COMMAND",
                    format!("unknown command {other:?}"),
                ))
            }
        })
    }
}

/// DNS settings passed through to the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// One attachment as named by GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The validated network config.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    pub subnet_file: PathBuf,
    pub data_dir: PathBuf,
    pub bridge: String,
    pub mtu: Option<u32>,
    pub hairpin_mode: bool,
    pub dns: Dns,
    pub prev_result: Option<Value>,
    /// Static addresses asked for via `runtimeConfig.ips` (CIDR or plain),
    /// at most one per family is honoured.
    pub runtime_ips: Vec<IpAddr>,
    /// `None` when the key is absent (GC then must not release anything).
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Prefixes a pod may send from besides its own addresses
    /// (`allowedSourcePrefixes`): the opt-out of the source checks for pods
    /// that route or proxy for others.
    pub allowed_source_prefixes: Vec<IpNet>,
}

/// Best-effort extraction of `cniVersion` so that even an error about the
/// rest of the config is reported in the caller's version.
pub fn sniff_version(stdin: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(stdin).ok()?;
    let s = v.get("cniVersion")?.as_str()?;
    Some(s.to_string())
}

fn get_str<'a>(m: &'a Map<String, Value>, field: &str) -> Result<Option<&'a str>, Error> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::config(field, "must be a string")),
    }
}

fn require_str<'a>(m: &'a Map<String, Value>, field: &str) -> Result<&'a str, Error> {
    match get_str(m, field)? {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Error::config(field, "is required")),
    }
}

/// Interface name rules of the kernel (IFNAMSIZ) and the CNI spec.
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("{name:?} is longer than 15 bytes"));
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid interface name"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(format!("{name:?} contains '/', ':' or whitespace"));
    }
    Ok(())
}

/// Names used as directory or file names: `[A-Za-z0-9_.-]`, not `.`/`..`.
fn validate_safe_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not allowed"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '_', '.' and '-'"
        ));
    }
    Ok(())
}

/// The spec's rule for a container id: it starts with a letter or a digit,
/// then letters, digits, `_`, `.` and `-` (so it is also a safe file name).
fn validate_container_id(id: &str) -> Result<(), String> {
    if !id.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{id:?} must start with a letter or a digit"));
    }
    validate_safe_name(id)
}

fn parse_ip_maybe_cidr(s: &str) -> Option<IpAddr> {
    let addr = s.split('/').next().unwrap_or(s);
    addr.parse().ok()
}

/// Parses and validates the network config read from stdin.
pub fn parse_netconf(stdin: &[u8]) -> Result<NetConf, Error> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| Error::Decode {
        reason: e.to_string(),
    })?;
    let Value::Object(m) = value else {
        return Err(Error::Decode {
            reason: "network config is not a JSON object".into(),
        });
    };

    let cni_version = require_str(&m, "cniVersion")?.to_string();
    check_version(&cni_version)?;
    let name = require_str(&m, "name")?.to_string();
    validate_safe_name(&name).map_err(|r| Error::config("name", r))?;
    // The name is the IPAM store's directory name.
    if name.len() > NAME_MAX {
        return Err(Error::config(
            "name",
            format!("is longer than {NAME_MAX} bytes"),
        ));
    }
    let plugin_type = require_str(&m, "type")?.to_string();

    let subnet_file = get_str(&m, "subnetFile")?
        .unwrap_or(DEFAULT_SUBNET_FILE)
        .into();
    let data_dir = get_str(&m, "dataDir")?.unwrap_or(DEFAULT_DATA_DIR).into();
    let bridge = get_str(&m, "bridge")?.unwrap_or(DEFAULT_BRIDGE).to_string();
    validate_ifname(&bridge).map_err(|r| Error::config("bridge", r))?;

    let mtu = match m.get("mtu") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(n) if (68..=65535).contains(&n) => Some(n as u32),
            _ => return Err(Error::config("mtu", "must be an integer in 68..=65535")),
        },
    };
    let hairpin_mode = match m.get("hairpinMode") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(Error::config("hairpinMode", "must be a boolean")),
    };
    let dns = match m.get("dns") {
        None | Some(Value::Null) => Dns::default(),
        Some(v) => {
            serde_json::from_value(v.clone()).map_err(|e| Error::config("dns", e.to_string()))?
        }
    };
    let prev_result = match m.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(_) => return Err(Error::config("prevResult", "must be an object")),
    };
    let runtime_ips = parse_runtime_ips(m.get("runtimeConfig"))?;
    let allowed_source_prefixes = parse_prefixes(m.get("allowedSourcePrefixes"))?;

    let valid_attachments = ["cni.dev/valid-attachments", "cni.dev/attachments"]
        .iter()
        .find_map(|key| m.get(*key).map(|v| (*key, v)))
        .map(|(key, v)| {
            serde_json::from_value::<Vec<Attachment>>(v.clone())
                .map_err(|e| Error::config(key, e.to_string()))
        })
        .transpose()?;

    Ok(NetConf {
        cni_version,
        name,
        plugin_type,
        subnet_file,
        data_dir,
        bridge,
        mtu,
        hairpin_mode,
        dns,
        prev_result,
        runtime_ips,
        valid_attachments,
        allowed_source_prefixes,
    })
}

/// `allowedSourcePrefixes`: a list of CIDR strings, either family.
fn parse_prefixes(v: Option<&Value>) -> Result<Vec<IpNet>, Error> {
    const KEY: &str = "allowedSourcePrefixes";
    let list = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(Error::config(KEY, "must be a list of CIDR strings")),
    };
    list.iter()
        .map(|p| {
            let s = p
                .as_str()
                .ok_or_else(|| Error::config(KEY, format!("{p} is not a CIDR string")))?;
            s.parse::<IpNet>()
                .map(|n| n.trunc())
                .map_err(|_| Error::config(KEY, format!("{s:?} is not a CIDR prefix")))
        })
        .collect()
}

fn parse_runtime_ips(rc: Option<&Value>) -> Result<Vec<IpAddr>, Error> {
    let Some(rc) = rc else { return Ok(Vec::new()) };
    let Value::Object(rc) = rc else {
        return Err(Error::config("runtimeConfig", "must be an object"));
    };
    let Some(ips) = rc.get("ips") else {
        return Ok(Vec::new());
    };
    let Value::Array(ips) = ips else {
        return Err(Error::config("runtimeConfig.ips", "must be an array"));
    };
    ips.iter()
        .map(|v| {
            v.as_str().and_then(parse_ip_maybe_cidr).ok_or_else(|| {
                Error::config("runtimeConfig.ips", format!("{v} is not an IP address"))
            })
        })
        .collect()
}

/// Fails with code 1 unless `version` is one we speak.
pub fn check_version(version: &str) -> Result<(), Error> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(Error::IncompatibleVersion {
            version: version.to_string(),
            supported: SUPPORTED_VERSIONS.join(", "),
        })
    }
}

/// The `CNI_*` environment of one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    pub args: CniArgs,
    pub path: Option<String>,
}

/// Known keys of `CNI_ARGS`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    /// `IP=`: one address or a comma-separated list (one per family).
    pub ips: Vec<IpAddr>,
    pub ignore_unknown: bool,
    pub extra: BTreeMap<String, String>,
}

/// Keys that Kubernetes runtimes send and we accept without `IgnoreUnknown`.
const KNOWN_ARGS: &[&str] = &[
    "IP",
    "IgnoreUnknown",
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

/// Parses `CNI_ARGS` (`K=V;K2=V2`).
pub fn parse_cni_args(s: &str) -> Result<CniArgs, Error> {
    let mut args = CniArgs::default();
    let mut unknown = Vec::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(Error::env("CNI_ARGS", format!("{pair:?} is not KEY=VALUE")));
        };
        match k {
            "IP" => {
                args.ips = v
                    .split(',')
                    .map(|one| {
                        parse_ip_maybe_cidr(one.trim()).ok_or_else(|| {
                            Error::env(
                                "CNI_ARGS",
                                format!("IP={v:?}: {one:?} is not an IP address"),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            "IgnoreUnknown" => {
                args.ignore_unknown = matches!(v.to_ascii_lowercase().as_str(), "1" | "true");
            }
            _ => {
                if !KNOWN_ARGS.contains(&k) {
                    unknown.push(k.to_string());
                }
                args.extra.insert(k.to_string(), v.to_string());
            }
        }
    }
    if !unknown.is_empty() && !args.ignore_unknown {
        return Err(Error::env(
            "CNI_ARGS",
            format!("unknown keys {unknown:?} (set IgnoreUnknown=1 to ignore)"),
        ));
    }
    Ok(args)
}

/// Reads the environment through `get` and checks what `CNI_COMMAND` needs.
pub fn parse_env(get: impl Fn(&str) -> Option<String>) -> Result<Env, Error> {
    let get = |k: &str| get(k).filter(|v| !v.is_empty());
    let command = Command::parse(
        &get("CNI_COMMAND").ok_or_else(|| Error::env("CNI_COMMAND", "is not set"))?,
    )?;
    let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
    let needs_netns = matches!(command, Command::Add | Command::Check);

    let container_id = get("CNI_CONTAINERID");
    if needs_attachment {
        let id = container_id
            .as_deref()
            .ok_or_else(|| Error::env("CNI_CONTAINERID", "is not set"))?;
        validate_container_id(id).map_err(|r| Error::env("CNI_CONTAINERID", r))?;
    }
    let ifname = get("CNI_IFNAME");
    if needs_attachment {
        let name = ifname
            .as_deref()
            .ok_or_else(|| Error::env("CNI_IFNAME", "is not set"))?;
        validate_ifname(name).map_err(|r| Error::env("CNI_IFNAME", r))?;
    }
    let netns = get("CNI_NETNS").map(PathBuf::from);
    if needs_netns && netns.is_none() {
        return Err(Error::env("CNI_NETNS", "is not set"));
    }
    // DEL ignores CNI_ARGS: a teardown must not fail over an argument it
    // would not use anyway.
    let args = match get("CNI_ARGS") {
        Some(s) if needs_netns => parse_cni_args(&s)?,
        _ => CniArgs::default(),
    };
    Ok(Env {
        command,
        container_id,
        netns,
        ifname,
        args,
        path: get("CNI_PATH"),
    })
}

/// The set of `(containerID, ifname)` GC must keep.
pub fn attachment_set(list: &[Attachment]) -> HashSet<(String, String)> {
    list.iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    fn env_of(pairs: &[(&str, &str)]) -> Result<Env, Error> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_env(|k| m.get(k).cloned())
    }

    const MIN: &str = r#"{"cniVersion":"1.1.0","name":"twillnet","type":"twill"}"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse_netconf(MIN.as_bytes()).unwrap();
        assert_eq!(c.subnet_file, PathBuf::from(DEFAULT_SUBNET_FILE));
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.bridge, "twill0");
        assert!(c.hairpin_mode);
        assert_eq!(c.mtu, None);
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn full_config_is_read() {
        let c = parse_netconf(
            br#"{"cniVersion":"0.4.0","name":"n","type":"twill","subnetFile":"/x/s.env",
            "dataDir":"/d","bridge":"br9","mtu":1400,"hairpinMode":false,
            "dns":{"nameservers":["10.96.0.10"],"search":["svc"]},
            "runtimeConfig":{"ips":["10.244.3.9/24","fd00:10:244:3::9/64"]},
            "cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, "0.4.0");
        assert_eq!(c.bridge, "br9");
        assert_eq!(c.mtu, Some(1400));
        assert!(!c.hairpin_mode);
        assert_eq!(c.dns.nameservers, vec!["10.96.0.10"]);
        assert_eq!(
            c.runtime_ips,
            vec![
                IpAddr::V4(Ipv4Addr::new(10, 244, 3, 9)),
                "fd00:10:244:3::9".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "c1");
    }

    #[test]
    fn bad_bytes_are_decode_errors() {
        for input in [&b""[..], b"{", b"\xff\xfe", b"[1,2]", b"null", b"\"x\""] {
            let e = parse_netconf(input).unwrap_err();
            assert_eq!(e.code(), 6, "{input:?} -> {e}");
        }
    }

    #[test]
    fn invalid_fields_name_the_field() {
        let cases = [
            (r#"{"cniVersion":"1.1.0","type":"twill"}"#, "name"),
            (
                r#"{"cniVersion":"1.1.0","name":"a/b","type":"twill"}"#,
                "name",
            ),
            (r#"{"cniVersion":"1.1.0","name":"n"}"#, "type"),
            (r#"{"name":"n","type":"twill"}"#, "cniVersion"),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"twill","mtu":20}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"twill","mtu":"x"}"#,
                "mtu",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"twill","bridge":"waytoolongbridgename"}"#,
                "bridge",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"twill","hairpinMode":"yes"}"#,
                "hairpinMode",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"twill","dataDir":5}"#,
                "dataDir",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"twill","runtimeConfig":{"ips":["x"]}}"#,
                "runtimeConfig.ips",
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"n","type":"twill","prevResult":3}"#,
                "prevResult",
            ),
        ];
        for (input, field) in cases {
            match parse_netconf(input.as_bytes()) {
                Err(e @ Error::InvalidConfig { .. }) => {
                    assert_eq!(e.code(), 7);
                    assert!(e.to_string().contains(field), "{e} should name {field}");
                }
                other => panic!("{input}: expected invalid config, got {other:?}"),
            }
        }
        let name = |n: usize| {
            format!(
                r#"{{"cniVersion":"1.1.0","name":"{}","type":"twill"}}"#,
                "n".repeat(n)
            )
        };
        assert!(parse_netconf(name(255).as_bytes()).is_ok());
        let e = parse_netconf(name(256).as_bytes()).unwrap_err();
        assert!(e.to_string().contains("name"), "{e}");
    }

    #[test]
    fn unsupported_version_is_code_1() {
        let e = parse_netconf(br#"{"cniVersion":"0.2.0","name":"n","type":"twill"}"#).unwrap_err();
        assert_eq!(e.code(), 1);
        assert_eq!(
            sniff_version(br#"{"cniVersion":"0.2.0"}"#).as_deref(),
            Some("0.2.0")
        );
        assert_eq!(sniff_version(b"garbage"), None);
    }

    #[test]
    fn env_add_requires_attachment_variables() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        let env = env_of(&full).unwrap();
        assert_eq!(env.command, Command::Add);
        assert_eq!(env.ifname.as_deref(), Some("eth0"));
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_COMMAND"] {
            let pairs: Vec<_> = full
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            match env_of(&pairs) {
                Err(e @ Error::InvalidEnv { .. }) => {
                    assert_eq!(e.code(), 4);
                    assert!(e.to_string().contains(missing), "{e}");
                }
                other => panic!("without {missing}: {other:?}"),
            }
        }
    }

    #[test]
    fn env_del_needs_no_netns_and_version_needs_nothing() {
        let env = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap();
        assert_eq!(env.netns, None);
        assert_eq!(
            env_of(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        assert_eq!(
            env_of(&[("CNI_COMMAND", "GC")]).unwrap().command,
            Command::Gc
        );
        assert_eq!(env_of(&[("CNI_COMMAND", "BOGUS")]).unwrap_err().code(), 4);
    }

    #[test]
    fn allowed_source_prefixes_are_cidrs_of_either_family() {
        let c = parse_netconf(
            br#"{"cniVersion":"1.1.0","name":"n","type":"twill","allowedSourcePrefixes":["192.168.9.1/24","fd00:99::/64"]}"#,
        )
        .unwrap();
        assert_eq!(
            c.allowed_source_prefixes,
            vec![
                "192.168.9.0/24".parse::<IpNet>().unwrap(),
                "fd00:99::/64".parse().unwrap()
            ]
        );
        for bad in [
            r#""10.0.0.0/8""#,
            r#"["10.0.0.0"]"#,
            "[7]",
            r#"["10.0.0.0/33"]"#,
        ] {
            let conf = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"twill","allowedSourcePrefixes":{bad}}}"#
            );
            let e = parse_netconf(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code(), 7, "{bad}");
            assert!(
                e.to_string().contains("allowedSourcePrefixes"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn env_rejects_bad_names() {
        let e = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0/x"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("CNI_IFNAME"));
        let e = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "../etc"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("CNI_CONTAINERID"));
        for bad in ["-abc", "_abc", ".abc", "a b", "a/b", "ä"] {
            let e = env_of(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", bad),
                ("CNI_IFNAME", "eth0"),
                ("CNI_NETNS", "/var/run/netns/x"),
            ])
            .unwrap_err();
            assert_eq!(e.code(), 4, "{bad:?}");
            assert!(e.to_string().contains("CNI_CONTAINERID"), "{e}");
        }
        for good in ["a", "0-x_y.z", "Z9"] {
            let env = env_of(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", good),
                ("CNI_IFNAME", "eth0"),
            ]);
            assert!(env.is_ok(), "{good:?}");
        }
    }

    #[test]
    fn cni_args_parse() {
        let a = parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=p;FOO=bar;IP=10.244.3.7").unwrap();
        assert_eq!(a.ips, vec![IpAddr::V4(Ipv4Addr::new(10, 244, 3, 7))]);
        let both = parse_cni_args("IP=10.244.3.7/24,fd00:10:244:3::7").unwrap();
        assert_eq!(
            both.ips,
            vec![
                "10.244.3.7".parse::<IpAddr>().unwrap(),
                "fd00:10:244:3::7".parse::<IpAddr>().unwrap()
            ]
        );
        assert_eq!(parse_cni_args("IP=10.244.3.7,nope").unwrap_err().code(), 4);
        assert_eq!(parse_cni_args("IP=10.244.3.7,").unwrap_err().code(), 4);
        assert_eq!(a.extra.get("FOO").map(String::as_str), Some("bar"));
        assert!(parse_cni_args("K8S_POD_NAME=p;K8S_POD_NAMESPACE=ns").is_ok());
        let e = parse_cni_args("FOO=bar").unwrap_err();
        assert!(e.to_string().contains("FOO"));
        assert_eq!(parse_cni_args("IP=nope").unwrap_err().code(), 4);
        assert_eq!(parse_cni_args("novalue").unwrap_err().code(), 4);
    }
}
