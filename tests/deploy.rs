//! Offline checks of what `deploy/` ships: the Kubernetes manifest (every
//! reference resolves, every flag and `TWILL_*` variable is one the built
//! `twilld` really has, the values pass its own validation), the systemd
//! unit and env file, and `twilld install-cni` run through the real binary
//! the way the DaemonSet's init container runs it. Needs no root, no etcd
//! and no cluster; `kubectl` and `systemd-analyze` are used when present.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use serde::Deserialize;
use serde_yaml::Value;
use subnet_allocator::{BackendType, NetworkConfig};
use twill_harness::Prereqs;

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");
const IMAGE_BIN: &str = "/usr/local/bin/twilld";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    let p = repo_file(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
}

// ---------------------------------------------------------------- twilld --help

/// Flags and `TWILL_*` variables the built binary knows, from its `--help`.
struct HelpSurface {
    flags: BTreeSet<String>,
    env: BTreeSet<String>,
}

fn help_surface(subcommand: Option<&str>) -> HelpSurface {
    let mut c = Command::new(TWILLD);
    if let Some(s) = subcommand {
        c.arg(s);
    }
    c.arg("--help");
    // clap prints current env values next to the names; keep them out.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TWILL_") {
            c.env_remove(k);
        }
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "twilld --help failed: {out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut flags = BTreeSet::new();
    let mut env = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim_start();
        // Option lines start with the flag; descriptions may mention others.
        if let Some(rest) = line.strip_prefix("--").or_else(|| {
            line.strip_prefix("-")
                .and_then(|l| l.split_once(", --").map(|(_, r)| r))
        }) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            flags.insert(format!("--{name}"));
        }
        let mut rest = line;
        while let Some(i) = rest.find("[env: ") {
            rest = &rest[i + 6..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            env.insert(name);
        }
    }
    HelpSurface { flags, env }
}

#[test]
fn help_parsing_finds_the_known_surface() {
    // Guards the other tests against passing because nothing was parsed.
    let top = help_surface(None);
    for f in [
        "--etcd-endpoints",
        "--etcd-cafile",
        "--healthz-addr",
        "--help",
    ] {
        assert!(top.flags.contains(f), "{f} not in {:?}", top.flags);
    }
    for e in [
        "TWILL_ETCD_ENDPOINTS",
        "TWILL_ETCD_KEYFILE",
        "TWILL_LOG_LEVEL",
    ] {
        assert!(top.env.contains(e), "{e} not in {:?}", top.env);
    }
    assert!(!top.flags.contains("--no-such-flag"));
    let install = help_surface(Some("install-cni"));
    for f in ["--bin-dir", "--conf-dir", "--plugin", "--portmap"] {
        assert!(install.flags.contains(f), "{f} not in {:?}", install.flags);
    }
}

/// `TWILL_ETCD_CAFILE` -> `--etcd-cafile`: the naming rule twilld follows.
fn env_to_flag(name: &str) -> String {
    let stem = name.strip_prefix("TWILL_").unwrap_or(name);
    format!("--{}", stem.to_ascii_lowercase().replace('_', "-"))
}

/// Parses `vars` as twilld would see them (as flags, so the test's own
/// environment cannot interfere) and runs twilld's validation.
fn twilld_accepts(what: &str, vars: &BTreeMap<String, String>, extra_args: &[String]) {
    let mut argv = vec!["twilld".to_owned()];
    argv.extend(extra_args.iter().cloned());
    for (k, v) in vars {
        // A boolean variable (`true`/`false`) is a flag without a value.
        match v.as_str() {
            "true" => argv.push(env_to_flag(k)),
            "false" => {}
            _ => argv.extend([env_to_flag(k), v.clone()]),
        }
    }
    let args = twill::cli::Args::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{what}: twilld refuses {argv:?}: {e}"));
    if let Err(e) = args.validate() {
        panic!("{what}: twilld refuses {argv:?}: {e}");
    }
}

// ---------------------------------------------------------------- the manifest

fn manifest() -> Vec<Value> {
    let text = read("deploy/kube-twill.yml");
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        // A leading `---` after the header comment opens an empty document.
        .filter(|v| !v.is_null())
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| s(d, &["kind"]) == Some(kind) && s(d, &["metadata", "name"]) == Some(name))
}

fn daemonset(docs: &[Value]) -> &Value {
    let ds: Vec<&Value> = docs
        .iter()
        .filter(|d| s(d, &["kind"]) == Some("DaemonSet"))
        .collect();
    assert_eq!(ds.len(), 1, "expected exactly one DaemonSet");
    ds[0]
}

fn pod_spec(docs: &[Value]) -> &Value {
    get(daemonset(docs), &["spec", "template", "spec"]).expect("DaemonSet has no pod spec")
}

fn container<'a>(docs: &'a [Value], list: &str, name: &str) -> &'a Value {
    seq(pod_spec(docs), &[list])
        .into_iter()
        .find(|c| s(c, &["name"]) == Some(name))
        .unwrap_or_else(|| panic!("no {list} entry named {name}"))
}

fn all_containers(docs: &[Value]) -> Vec<&Value> {
    let spec = pod_spec(docs);
    let mut v = seq(spec, &["initContainers"]);
    v.extend(seq(spec, &["containers"]));
    v
}

/// Keys a ConfigMap or Secret provides.
fn keys_of(doc: &Value) -> BTreeSet<String> {
    ["data", "stringData", "binaryData"]
        .iter()
        .filter_map(|f| doc.get(*f).and_then(Value::as_mapping))
        .flat_map(|m| m.keys().filter_map(|k| k.as_str().map(str::to_owned)))
        .collect()
}

fn configmap_value(docs: &[Value], name: &str, key: &str) -> String {
    let cm = find(docs, "ConfigMap", name).unwrap_or_else(|| panic!("no ConfigMap {name}"));
    s(cm, &["data", key])
        .unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"))
        .to_owned()
}

fn secret_value(docs: &[Value], name: &str, key: &str) -> String {
    let sec = find(docs, "Secret", name).unwrap_or_else(|| panic!("no Secret {name}"));
    s(sec, &["stringData", key])
        .unwrap_or_else(|| panic!("Secret {name} has no stringData key {key}"))
        .to_owned()
}

#[test]
fn every_document_is_a_named_object_in_the_twill_namespace() {
    let docs = manifest();
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| s(d, &["kind"])).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Secret",
        "DaemonSet",
    ] {
        assert!(kinds.contains(k), "manifest has no {k}");
    }
    let ns = find(&docs, "Namespace", "kube-twill").expect("no Namespace kube-twill");
    assert_eq!(s(ns, &["apiVersion"]), Some("v1"));
    for d in &docs {
        let what = format!("{d:?}");
        assert!(s(d, &["apiVersion"]).is_some(), "no apiVersion: {what}");
        assert!(s(d, &["kind"]).is_some(), "no kind: {what}");
        assert!(s(d, &["metadata", "name"]).is_some(), "no name: {what}");
        if s(d, &["kind"]) != Some("Namespace") {
            assert_eq!(
                s(d, &["metadata", "namespace"]),
                Some("kube-twill"),
                "{what}"
            );
        }
    }
    let ds = daemonset(&docs);
    assert_eq!(s(ds, &["apiVersion"]), Some("apps/v1"));
    let selector = get(ds, &["spec", "selector", "matchLabels"])
        .and_then(Value::as_mapping)
        .expect("DaemonSet has no selector");
    let labels = get(ds, &["spec", "template", "metadata", "labels"])
        .and_then(Value::as_mapping)
        .expect("pod template has no labels");
    for (k, v) in selector {
        assert_eq!(labels.get(k), Some(v), "selector {k:?} does not match");
    }
    let sa = s(pod_spec(&docs), &["serviceAccountName"]).expect("no serviceAccountName");
    assert!(
        find(&docs, "ServiceAccount", sa).is_some(),
        "no ServiceAccount {sa}"
    );
}

#[test]
fn every_configmap_and_secret_reference_resolves() {
    let docs = manifest();
    let provided = |kind: &str, name: &str| -> BTreeSet<String> {
        keys_of(find(&docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name}")))
    };
    let mut checked = 0;
    for c in all_containers(&docs) {
        let cname = s(c, &["name"]).unwrap_or("?");
        for e in seq(c, &["env"]) {
            for (field, kind) in [("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")] {
                if let Some(r) = get(e, &["valueFrom", field]) {
                    let name = s(r, &["name"]).unwrap();
                    let key = s(r, &["key"]).unwrap();
                    assert!(
                        provided(kind, name).contains(key),
                        "{cname}: env {:?} wants {kind} {name} key {key}",
                        s(e, &["name"])
                    );
                    checked += 1;
                }
            }
        }
        for e in seq(c, &["envFrom"]) {
            for (field, kind) in [("configMapRef", "ConfigMap"), ("secretRef", "Secret")] {
                if let Some(name) = s(e, &[field, "name"]) {
                    assert!(
                        find(&docs, kind, name).is_some(),
                        "{cname}: no {kind} {name}"
                    );
                    checked += 1;
                }
            }
        }
    }
    for v in seq(pod_spec(&docs), &["volumes"]) {
        for (field, name_key, kind) in [
            ("configMap", "name", "ConfigMap"),
            ("secret", "secretName", "Secret"),
        ] {
            if let Some(src) = v.get(field) {
                let name = s(src, &[name_key]).unwrap();
                let keys = provided(kind, name);
                for item in seq(src, &["items"]) {
                    let key = s(item, &["key"]).unwrap();
                    assert!(keys.contains(key), "volume wants {kind} {name} key {key}");
                    checked += 1;
                }
            }
        }
    }
    // Endpoint from the Secret, TLS files from the Secret volume.
    assert!(checked >= 4, "only {checked} references found");
}

#[test]
fn every_volume_mount_has_a_volume_and_every_volume_is_used() {
    let docs = manifest();
    let volumes: BTreeSet<&str> = seq(pod_spec(&docs), &["volumes"])
        .into_iter()
        .map(|v| s(v, &["name"]).unwrap())
        .collect();
    let mut used = BTreeSet::new();
    for c in all_containers(&docs) {
        for m in seq(c, &["volumeMounts"]) {
            let name = s(m, &["name"]).unwrap();
            assert!(
                volumes.contains(name),
                "{:?} mounts {name}: no such volume",
                s(c, &["name"])
            );
            assert!(s(m, &["mountPath"]).is_some_and(|p| p.starts_with('/')));
            used.insert(name);
        }
    }
    assert_eq!(used, volumes, "volumes nobody mounts");
}

/// The mount that holds `path` in container `c`, if any.
fn mount_for<'a>(c: &'a Value, path: &str) -> Option<&'a Value> {
    seq(c, &["volumeMounts"])
        .into_iter()
        .filter(|m| s(m, &["mountPath"]).is_some_and(|mp| Path::new(path).starts_with(mp)))
        .max_by_key(|m| s(m, &["mountPath"]).map_or(0, str::len))
}

/// `name=value` of every env entry; values from a Secret or ConfigMap are
/// looked up in the manifest.
fn resolved_env(docs: &[Value], c: &Value) -> BTreeMap<String, String> {
    seq(c, &["env"])
        .into_iter()
        .map(|e| {
            let name = s(e, &["name"]).unwrap().to_owned();
            let value = if let Some(v) = s(e, &["value"]) {
                v.to_owned()
            } else if let Some(r) = get(e, &["valueFrom", "secretKeyRef"]) {
                secret_value(docs, s(r, &["name"]).unwrap(), s(r, &["key"]).unwrap())
            } else if let Some(r) = get(e, &["valueFrom", "configMapKeyRef"]) {
                configmap_value(docs, s(r, &["name"]).unwrap(), s(r, &["key"]).unwrap())
            } else if s(e, &["valueFrom", "fieldRef", "fieldPath"]) == Some("spec.nodeName") {
                // What the kubelet fills in: a node name.
                "node-1".to_owned()
            } else {
                panic!("env {name}: no value this test understands");
            };
            (name, value)
        })
        .collect()
}

fn flags_in(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.split('=').next().unwrap().to_owned())
        .collect()
}

fn strings(v: Vec<&Value>) -> Vec<String> {
    v.into_iter()
        .map(|a| a.as_str().expect("args must be strings").to_owned())
        .collect()
}

#[test]
fn containers_run_twilld_with_real_flags_and_valid_values() {
    let docs = manifest();
    let top = help_surface(None);
    let install = help_surface(Some("install-cni"));

    let init = container(&docs, "initContainers", "install-cni");
    assert_eq!(strings(seq(init, &["command"])), vec![IMAGE_BIN]);
    let init_args = strings(seq(init, &["args"]));
    assert_eq!(init_args.first().map(String::as_str), Some("install-cni"));
    for f in flags_in(&init_args) {
        assert!(install.flags.contains(&f), "install-cni has no flag {f}");
    }
    let value_of = |flag: &str| {
        let i = init_args.iter().position(|a| a == flag);
        i.and_then(|i| init_args.get(i + 1)).map(String::as_str)
    };
    assert_eq!(value_of("--bin-dir"), Some("/host/opt/cni/bin"));
    assert_eq!(value_of("--conf-dir"), Some("/host/etc/cni/net.d"));
    assert_eq!(value_of("--portmap"), Some("yes"));
    for dir in ["/host/opt/cni/bin", "/host/etc/cni/net.d"] {
        let m = mount_for(init, dir).unwrap_or_else(|| panic!("{dir} is not mounted"));
        assert_ne!(get(m, &["readOnly"]).and_then(Value::as_bool), Some(true));
    }

    let main = container(&docs, "containers", "twilld");
    assert_eq!(strings(seq(main, &["command"])), vec![IMAGE_BIN]);
    let main_args = strings(seq(main, &["args"]));
    for f in flags_in(&main_args) {
        assert!(top.flags.contains(&f), "twilld has no flag {f}");
    }
    let env = resolved_env(&docs, main);
    for name in env.keys() {
        assert!(
            !name.starts_with("TWILL_") || top.env.contains(name),
            "twilld has no variable {name}"
        );
    }
    for needed in [
        "TWILL_ETCD_ENDPOINTS",
        "TWILL_ETCD_CAFILE",
        "TWILL_ETCD_CERTFILE",
        "TWILL_ETCD_KEYFILE",
        "TWILL_HEALTHZ_ADDR",
        "TWILL_SUBNET_FILE",
    ] {
        assert!(env.contains_key(needed), "twilld container lacks {needed}");
    }
    let twill_env: BTreeMap<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with("TWILL_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    twilld_accepts("DaemonSet twilld container", &twill_env, &main_args);

    // The TLS files and the subnet file are where the mounts put them.
    for var in [
        "TWILL_ETCD_CAFILE",
        "TWILL_ETCD_CERTFILE",
        "TWILL_ETCD_KEYFILE",
    ] {
        let path = &env[var];
        let m = mount_for(main, path).unwrap_or_else(|| panic!("{var}={path} is not mounted"));
        let vol = seq(pod_spec(&docs), &["volumes"])
            .into_iter()
            .find(|v| s(v, &["name"]) == s(m, &["name"]))
            .unwrap();
        let item = Path::new(path)
            .strip_prefix(s(m, &["mountPath"]).unwrap())
            .unwrap();
        let items: Vec<&str> = seq(vol, &["secret", "items"])
            .into_iter()
            .filter_map(|i| s(i, &["path"]))
            .collect();
        assert!(
            items.contains(&item.to_str().unwrap()),
            "{var}={path}: the volume has only {items:?}"
        );
    }
    let subnet = mount_for(main, &env["TWILL_SUBNET_FILE"]).expect("subnet file not mounted");
    let subnet_vol = seq(pod_spec(&docs), &["volumes"])
        .into_iter()
        .find(|v| s(v, &["name"]) == s(subnet, &["name"]))
        .unwrap();
    // The CNI plugin reads it on the host, at its default subnetFile path.
    assert_eq!(s(subnet_vol, &["hostPath", "path"]), Some("/run/twill"));
    assert_eq!(env["TWILL_SUBNET_FILE"], "/run/twill/subnet.env");
}

#[test]
fn pod_is_host_network_node_critical_and_least_privileged() {
    let docs = manifest();
    let spec = pod_spec(&docs);
    assert_eq!(get(spec, &["hostNetwork"]), Some(&Value::Bool(true)));
    // Cluster DNS runs in pods, which have no network before twill runs.
    assert_eq!(s(spec, &["dnsPolicy"]), Some("Default"));
    assert_eq!(
        s(spec, &["priorityClassName"]),
        Some("system-node-critical")
    );
    // One toleration with only `operator: Exists` tolerates every taint.
    assert!(
        seq(spec, &["tolerations"]).into_iter().any(|t| {
            s(t, &["operator"]) == Some("Exists")
                && t.get("key").is_none()
                && t.get("effect").is_none()
        }),
        "no catch-all toleration"
    );
    for c in all_containers(&docs) {
        let name = s(c, &["name"]).unwrap();
        assert_eq!(
            get(c, &["securityContext", "privileged"]),
            Some(&Value::Bool(false)),
            "{name} must say privileged: false"
        );
        assert_eq!(
            get(c, &["securityContext", "allowPrivilegeEscalation"]),
            Some(&Value::Bool(false)),
            "{name}"
        );
        assert_eq!(
            get(c, &["securityContext", "readOnlyRootFilesystem"]),
            Some(&Value::Bool(true)),
            "{name}"
        );
    }
    let main = container(&docs, "containers", "twilld");
    let caps: BTreeSet<String> = strings(seq(main, &["securityContext", "capabilities", "add"]))
        .into_iter()
        .collect();
    let want: BTreeSet<String> = ["NET_ADMIN", "NET_RAW"].map(String::from).into();
    assert_eq!(caps, want);
    // What harness/tests/image.rs measured (it checks the peak against the
    // limit on every run).
    assert_eq!(s(main, &["resources", "requests", "cpu"]), Some("10m"));
    assert_eq!(s(main, &["resources", "requests", "memory"]), Some("16Mi"));
    assert_eq!(s(main, &["resources", "limits", "memory"]), Some("64Mi"));
}

/// What `scripts/image.sh` tags by default.
fn built_image() -> String {
    format!("localhost/twill:{}", env!("CARGO_PKG_VERSION"))
}

#[test]
fn every_container_runs_the_image_scripts_image_sh_builds() {
    let docs = manifest();
    let want = built_image();
    for c in all_containers(&docs) {
        assert_eq!(
            s(c, &["image"]),
            Some(want.as_str()),
            "{:?}: scripts/image.sh builds {want}",
            s(c, &["name"])
        );
        // A locally loaded image must not be pulled.
        assert_eq!(s(c, &["imagePullPolicy"]), Some("IfNotPresent"));
    }
    let script = read("scripts/image.sh");
    assert!(
        script.contains("tag=${1:-localhost/twill:$version}"),
        "scripts/image.sh no longer tags localhost/twill:<version>"
    );
}

/// The sources of the Dockerfile's `ADD` and `COPY` lines.
fn dockerfile_sources(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("ADD ").or_else(|| l.strip_prefix("COPY ")))
        .flat_map(|rest| {
            let words: Vec<&str> = rest.split_whitespace().collect();
            // The last word is the destination.
            words[..words.len().saturating_sub(1)]
                .iter()
                .map(|w| (*w).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() {
    let dockerfile = read("deploy/Dockerfile");
    let ignore = read(".dockerignore");
    let rules: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(
        rules.first(),
        Some(&"*"),
        ".dockerignore must exclude everything first"
    );
    let allowed: BTreeSet<String> = rules[1..]
        .iter()
        .map(|r| {
            r.strip_prefix('!')
                .unwrap_or_else(|| panic!(".dockerignore rule {r:?} is not an exception"))
                .to_owned()
        })
        .collect();
    let sources: BTreeSet<String> = dockerfile_sources(&dockerfile).into_iter().collect();
    assert!(sources.contains("target/release/twilld"), "{sources:?}");
    assert!(sources.contains("target/cni/twill"), "{sources:?}");
    assert_eq!(
        sources, allowed,
        "Dockerfile sources vs .dockerignore exceptions"
    );
    // No base image: nothing to pull.
    let from: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.strip_prefix("FROM "))
        .collect();
    assert_eq!(from, ["scratch"]);
    // scripts/image.sh reads the root filesystem's packages from here.
    for arg in ["ARG ROOTFS_SUITE=", "ARG ROOTFS_PACKAGES="] {
        assert!(dockerfile.contains(arg), "deploy/Dockerfile lacks {arg}");
    }
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/twilld\"]"));
}

#[test]
fn probes_hit_the_port_twilld_listens_on() {
    let docs = manifest();
    let main = container(&docs, "containers", "twilld");
    let env = resolved_env(&docs, main);
    let addr: std::net::SocketAddr = env["TWILL_HEALTHZ_ADDR"].parse().unwrap();
    // kubelet probes a hostNetwork pod at the node's address, not loopback.
    assert!(
        addr.ip().is_unspecified(),
        "{addr}: kubelet cannot reach it"
    );
    assert_ne!(addr.port(), 10256, "10256 is kube-proxy's healthz port");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = get(main, &[probe, "httpGet"]).unwrap_or_else(|| panic!("no {probe}"));
        assert_eq!(s(get, &["path"]), Some(path), "{probe}");
        let port = get.get("port").and_then(Value::as_u64);
        assert_eq!(port, Some(u64::from(addr.port())), "{probe} port");
    }
}

#[test]
fn configmap_carries_a_valid_network_config_and_the_installed_conflist() {
    let docs = manifest();
    let net = configmap_value(&docs, "twill-config", "net-conf.json");
    let cfg = NetworkConfig::parse(net.as_bytes()).unwrap();
    assert_eq!(cfg.network, "10.244.0.0/16".parse().unwrap());
    assert_eq!(cfg.subnet_len, 24);
    assert_eq!(cfg.backend.kind, BackendType::Vxlan);
    assert_eq!((cfg.backend.vni, cfg.backend.port), (1, 8472));

    let cni: serde_json::Value =
        serde_json::from_str(&configmap_value(&docs, "twill-config", "cni-conf.json")).unwrap();
    let types: Vec<&str> = cni["plugins"]
        .as_array()
        .expect("cni-conf.json has no plugins list")
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["twill", "portmap"]);
    assert_eq!(cni["plugins"][1]["capabilities"]["portMappings"], true);
    // The init container installs exactly this (it runs --portmap yes).
    assert_eq!(cni, twill::install::conflist("twill", true));
}

#[test]
fn kubectl_parses_every_object_when_installed() {
    let Some(kubectl) = tool(
        "kubectl",
        "scripts/install-deps.sh installs kubernetes-client",
    ) else {
        return;
    };
    // `apply --dry-run=client` still asks an API server for discovery; a
    // local annotate decodes every object without any server.
    let kubeconfig = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(kubectl)
        .env("KUBECONFIG", kubeconfig.path())
        .args(["annotate", "--local", "-o", "name", "-f"])
        .arg(repo_file("deploy/kube-twill.yml"))
        .arg("twill.dev/checked=true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let objects: Vec<&str> = stdout.lines().collect();
    assert_eq!(objects.len(), manifest().len(), "{objects:?}");
    assert!(objects.contains(&"daemonset.apps/twill"), "{objects:?}");
}

/// The path of `name`, through the harness's gate: `None` (a loud skip, or
/// a panic under `CI=true`) when it is not installed.
fn tool(name: &str, hint: &str) -> Option<PathBuf> {
    if !Prereqs::new().tools(&[name]).hint(hint).require() {
        return None;
    }
    twill_harness::prereq::which(name)
}

// ---------------------------------------------------------------- systemd

/// `[Section] -> key -> values` (a key may repeat).
fn parse_unit(text: &str) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {line:?}"));
        assert!(!section.is_empty(), "{line:?} before any section");
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_owned())
            .or_default()
            .push(v.trim().to_owned());
    }
    out
}

#[test]
fn systemd_unit_runs_twilld_as_a_notify_service() {
    let unit = parse_unit(&read("deploy/twilld.service"));
    let svc = &unit["Service"];
    let one = |k: &str| -> &str {
        let v = svc.get(k).unwrap_or_else(|| panic!("[Service] has no {k}"));
        assert_eq!(v.len(), 1, "{k} given {} times", v.len());
        &v[0]
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("ExecStart"), IMAGE_BIN);
    assert_eq!(one("EnvironmentFile"), "-/etc/twill/twilld.env");
    assert_eq!(one("Restart"), "always");
    // The subnet file must survive a restart: that is how the node keeps
    // its subnet.
    assert_eq!(one("RuntimeDirectory"), "twill");
    assert_eq!(one("RuntimeDirectoryPreserve"), "yes");
    let caps = one("CapabilityBoundingSet");
    assert!(caps.contains("CAP_NET_ADMIN"), "{caps}");
    assert!(
        unit["Install"]["WantedBy"].contains(&"multi-user.target".to_owned()),
        "not enabled for boot"
    );
    assert!(unit["Unit"]["After"]
        .iter()
        .any(|a| a.contains("network-online.target")));
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(analyze) = tool("systemd-analyze", "Debian package systemd") else {
        return;
    };
    // verify insists that ExecStart exists: point it at the built binary.
    let dir = tempfile::tempdir().unwrap();
    let text = read("deploy/twilld.service");
    let exec = format!("ExecStart={IMAGE_BIN}");
    assert!(text.contains(&exec));
    let unit = dir.path().join("twilld.service");
    std::fs::write(&unit, text.replace(&exec, &format!("ExecStart={TWILLD}"))).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings (exit 0): read them.
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("twilld.service"))
        .collect();
    assert!(out.status.success(), "systemd-analyze verify: {stderr}");
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify: {complaints:#?}"
    );
}

/// `KEY=VALUE` lines of an env file; commented-out examples (`#TWILL_X=`)
/// too when `commented` is set.
fn env_file(text: &str, commented: bool) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter_map(|l| match l.strip_prefix('#') {
            Some(rest) if commented => Some(rest.trim()),
            Some(_) => None,
            None => Some(l),
        })
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn env_file_sets_only_real_variables_with_valid_values() {
    let text = read("deploy/twilld.env");
    let top = help_surface(None);
    let active = env_file(&text, false);
    let all = env_file(&text, true);
    assert!(active.contains_key("TWILL_ETCD_ENDPOINTS"), "{active:?}");
    assert!(all.len() > active.len(), "no commented-out examples parsed");
    for name in all.keys() {
        assert!(
            name.starts_with("TWILL_"),
            "{name} is not a twilld variable"
        );
        assert!(top.env.contains(name), "twilld has no variable {name}");
    }
    twilld_accepts("deploy/twilld.env", &active, &[]);
    // Uncommenting every example must give a valid setup too.
    twilld_accepts("deploy/twilld.env with examples", &all, &[]);
}

// ---------------------------------------------------------------- install-cni

/// The plugin to install: the built one when the workspace was built, else a
/// stand-in (install-cni copies bytes; what they are does not matter to it).
fn plugin_source(dir: &Path) -> PathBuf {
    let built = Path::new(TWILLD).with_file_name("twill");
    if built.is_file() {
        return built;
    }
    eprintln!(
        "NOTE: {} not built (cargo build --workspace); installing a stand-in",
        built.display()
    );
    let p = dir.join("twill-standin");
    std::fs::write(&p, b"\x7fELF stand-in for the twill CNI plugin").unwrap();
    p
}

/// Runs the init container's args with `/host` mapped to `root`.
fn run_init_container(docs: &[Value], root: &Path, plugin: &Path) -> std::process::Output {
    let init = container(docs, "initContainers", "install-cni");
    let args: Vec<String> = strings(seq(init, &["args"]))
        .into_iter()
        .map(|a| match a.strip_prefix("/host/") {
            Some(rest) => root.join(rest).to_string_lossy().into_owned(),
            None => a,
        })
        .collect();
    Command::new(TWILLD)
        .args(&args)
        .arg("--plugin")
        .arg(plugin)
        .output()
        .unwrap()
}

fn dir_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn install_cni_through_the_binary_writes_plugin_and_conflist() {
    let docs = manifest();
    let tmp = tempfile::tempdir().unwrap();
    let plugin = plugin_source(tmp.path());
    let root = tmp.path().join("host");
    let want_cni: serde_json::Value =
        serde_json::from_str(&configmap_value(&docs, "twill-config", "cni-conf.json")).unwrap();

    // Twice: a re-run (pod restart) must give the same two files.
    for run in 0..2 {
        let out = run_init_container(&docs, &root, &plugin);
        assert!(
            out.status.success(),
            "run {run}: install-cni failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let bin = root.join("opt/cni/bin/twill");
        let conf = root.join("etc/cni/net.d/10-twill.conflist");
        assert_eq!(
            std::fs::read(&bin).unwrap(),
            std::fs::read(&plugin).unwrap()
        );
        let mode = std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "plugin mode {mode:o}");
        let got: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
        assert_eq!(
            got, want_cni,
            "installed conflist differs from the ConfigMap's"
        );
        // No temp files left behind for a runtime to trip over.
        assert_eq!(
            dir_names(&root.join("opt/cni/bin")),
            ["twill".to_owned()].into()
        );
        assert_eq!(
            dir_names(&root.join("etc/cni/net.d")),
            ["10-twill.conflist".to_owned()].into()
        );
    }
}

#[test]
fn install_cni_with_a_missing_plugin_fails_and_writes_nothing() {
    let docs = manifest();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("host");
    let missing = tmp.path().join("no-such-plugin");
    let out = run_init_container(&docs, &root, &missing);
    assert!(
        !out.status.success(),
        "install-cni succeeded without a plugin"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no-such-plugin"),
        "error does not name the file: {stderr}"
    );
    assert!(!root.join("etc/cni/net.d/10-twill.conflist").exists());
    assert!(!root.join("opt/cni/bin/twill").exists());
}
