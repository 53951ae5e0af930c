//! The DaemonSet of a Kubernetes manifest (`deploy/kube-twill.yml`) read as
//! what a container runtime needs to run its containers the same way:
//! image, command and args, environment (Secret and ConfigMap references
//! resolved against values the caller supplies), mounts and their volumes,
//! privileges, probes and the memory limit; and the `podman run` arguments
//! that reproduce one container with the host paths mapped to stand-ins.
//! Pure: the test that runs the image parses the manifest instead of
//! restating it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml::Value;

use crate::error::{HarnessError, Result};

fn bad(what: impl Into<String>, reason: impl Into<String>) -> HarnessError {
    HarnessError::Parse {
        what: what.into(),
        reason: reason.into(),
    }
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    Value(String),
    SecretKey {
        name: String,
        key: String,
    },
    ConfigMapKey {
        name: String,
        key: String,
    },
    /// `fieldRef` `spec.nodeName`: the node's name.
    NodeName,
}

/// A volume of the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// A directory of the node (`hostPath.path`).
    HostPath(String),
    /// Keys of a Secret as files: (key, file name) and the files' mode.
    Secret {
        name: String,
        items: Vec<(String, String)>,
        mode: u32,
    },
}

/// A `volumeMounts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
}

/// An `httpGet` probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
}

/// One container (init or main) of the pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, EnvSource)>,
    pub mounts: Vec<Mount>,
    pub privileged: bool,
    pub allow_privilege_escalation: bool,
    pub read_only_root: bool,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub liveness: Option<HttpProbe>,
    pub readiness: Option<HttpProbe>,
    /// `resources.limits.memory` in bytes.
    pub memory_limit: Option<u64>,
    /// `resources.requests.memory` in bytes.
    pub memory_request: Option<u64>,
}

/// The DaemonSet's pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub host_network: bool,
    pub termination_grace_secs: u64,
    pub init_containers: Vec<ContainerSpec>,
    pub containers: Vec<ContainerSpec>,
    pub volumes: BTreeMap<String, Volume>,
}

/// The documents of a multi-document YAML text, empty ones left out.
pub fn documents(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(text) {
        let v = Value::deserialize(d).map_err(|e| bad("manifest yaml", e.to_string()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    get(v, path).and_then(Value::as_str)
}

fn seq<'a>(v: &'a Value, path: &[&str]) -> Vec<&'a Value> {
    get(v, path)
        .and_then(Value::as_sequence)
        .map(|s| s.iter().collect())
        .unwrap_or_default()
}

fn strings(what: &str, v: &Value, path: &[&str]) -> Result<Vec<String>> {
    seq(v, path)
        .into_iter()
        .map(|s| match s {
            Value::String(s) => Ok(s.clone()),
            other => Err(bad(what, format!("{path:?} holds {other:?}, not a string"))),
        })
        .collect()
}

/// The `data` (ConfigMap) or `stringData` (Secret) of object `kind/name`.
pub fn object_data(docs: &[Value], kind: &str, name: &str) -> Result<BTreeMap<String, String>> {
    let doc = docs
        .iter()
        .find(|d| {
            str_at(d, &["kind"]) == Some(kind) && str_at(d, &["metadata", "name"]) == Some(name)
        })
        .ok_or_else(|| bad("manifest", format!("no {kind} {name}")))?;
    let field = if kind == "Secret" {
        "stringData"
    } else {
        "data"
    };
    Ok(get(doc, &[field])
        .and_then(Value::as_mapping)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default())
}

/// Kubernetes memory quantities: `64Mi`, `1Gi`, `500M`, `1000`.
pub fn parse_memory(q: &str) -> Result<u64> {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| q.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((q, 1));
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| bad("memory quantity", format!("{q:?}")))
}

fn probe(c: &Value, which: &str, what: &str) -> Result<Option<HttpProbe>> {
    let Some(g) = get(c, &[which, "httpGet"]) else {
        return Ok(None);
    };
    let path = str_at(g, &["path"]).unwrap_or("/").to_owned();
    let port = get(g, &["port"])
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| bad(what, format!("{which} has no numeric port")))?;
    Ok(Some(HttpProbe { path, port }))
}

fn memory(c: &Value, path: &[&str]) -> Result<Option<u64>> {
    str_at(c, path).map(parse_memory).transpose()
}

fn container(c: &Value) -> Result<ContainerSpec> {
    let name = str_at(c, &["name"])
        .ok_or_else(|| bad("container", "no name"))?
        .to_owned();
    let what = format!("container {name}");
    let image = str_at(c, &["image"])
        .ok_or_else(|| bad(&what, "no image"))?
        .to_owned();
    let mut env = Vec::new();
    for e in seq(c, &["env"]) {
        let var = str_at(e, &["name"])
            .ok_or_else(|| bad(&what, "env entry without a name"))?
            .to_owned();
        let src = if let Some(v) = str_at(e, &["value"]) {
            EnvSource::Value(v.to_owned())
        } else if let Some(r) = get(e, &["valueFrom", "secretKeyRef"]) {
            EnvSource::SecretKey {
                name: str_at(r, &["name"]).unwrap_or_default().to_owned(),
                key: str_at(r, &["key"]).unwrap_or_default().to_owned(),
            }
        } else if let Some(r) = get(e, &["valueFrom", "configMapKeyRef"]) {
            EnvSource::ConfigMapKey {
                name: str_at(r, &["name"]).unwrap_or_default().to_owned(),
                key: str_at(r, &["key"]).unwrap_or_default().to_owned(),
            }
        } else if str_at(e, &["valueFrom", "fieldRef", "fieldPath"]) == Some("spec.nodeName") {
            EnvSource::NodeName
        } else {
            return Err(bad(
                &what,
                format!("env {var} has no value this harness knows"),
            ));
        };
        env.push((var, src));
    }
    if !seq(c, &["envFrom"]).is_empty() {
        return Err(bad(&what, "envFrom is not supported here"));
    }
    let mounts = seq(c, &["volumeMounts"])
        .into_iter()
        .map(|m| {
            Ok(Mount {
                volume: str_at(m, &["name"])
                    .ok_or_else(|| bad(&what, "mount without a volume name"))?
                    .to_owned(),
                path: str_at(m, &["mountPath"])
                    .ok_or_else(|| bad(&what, "mount without a mountPath"))?
                    .to_owned(),
                read_only: get(m, &["readOnly"])
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            })
        })
        .collect::<Result<_>>()?;
    let sc = |k: &str| get(c, &["securityContext", k]).and_then(Value::as_bool);
    Ok(ContainerSpec {
        command: strings(&what, c, &["command"])?,
        args: strings(&what, c, &["args"])?,
        env,
        mounts,
        privileged: sc("privileged").unwrap_or(false),
        // Kubernetes' default is true.
        allow_privilege_escalation: sc("allowPrivilegeEscalation").unwrap_or(true),
        read_only_root: sc("readOnlyRootFilesystem").unwrap_or(false),
        cap_drop: strings(&what, c, &["securityContext", "capabilities", "drop"])?,
        cap_add: strings(&what, c, &["securityContext", "capabilities", "add"])?,
        liveness: probe(c, "livenessProbe", &what)?,
        readiness: probe(c, "readinessProbe", &what)?,
        memory_limit: memory(c, &["resources", "limits", "memory"])?,
        memory_request: memory(c, &["resources", "requests", "memory"])?,
        name,
        image,
    })
}

/// A file mode as Kubernetes reads it: YAML 1.1 takes `0400` as octal
/// (256), which serde_yaml (YAML 1.2) leaves a string.
fn file_mode(v: &Value) -> Option<u32> {
    match v {
        Value::Number(n) => n.as_u64().and_then(|m| u32::try_from(m).ok()),
        Value::String(s) => {
            let digits = s.strip_prefix("0o").or_else(|| s.strip_prefix('0'))?;
            u32::from_str_radix(digits, 8).ok()
        }
        _ => None,
    }
}

fn volume(v: &Value) -> Result<(String, Volume)> {
    let name = str_at(v, &["name"])
        .ok_or_else(|| bad("volume", "no name"))?
        .to_owned();
    let vol = if let Some(p) = str_at(v, &["hostPath", "path"]) {
        Volume::HostPath(p.to_owned())
    } else if let Some(s) = get(v, &["secret"]) {
        let items = seq(s, &["items"])
            .into_iter()
            .map(|i| {
                Some((
                    str_at(i, &["key"])?.to_owned(),
                    str_at(i, &["path"])?.to_owned(),
                ))
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| bad(format!("volume {name}"), "secret item without key or path"))?;
        if items.is_empty() {
            return Err(bad(format!("volume {name}"), "secret without items"));
        }
        Volume::Secret {
            name: str_at(s, &["secretName"]).unwrap_or_default().to_owned(),
            items,
            mode: get(s, &["defaultMode"])
                .map(|m| {
                    file_mode(m)
                        .ok_or_else(|| bad(format!("volume {name}"), format!("defaultMode {m:?}")))
                })
                .transpose()?
                // Kubernetes' default.
                .unwrap_or(0o644),
        }
    } else {
        return Err(bad(format!("volume {name}"), "neither hostPath nor secret"));
    };
    Ok((name, vol))
}

/// The pod template of the one DaemonSet in `docs`.
pub fn pod_spec(docs: &[Value]) -> Result<PodSpec> {
    let ds: Vec<&Value> = docs
        .iter()
        .filter(|d| str_at(d, &["kind"]) == Some("DaemonSet"))
        .collect();
    let [ds] = ds.as_slice() else {
        return Err(bad("manifest", format!("{} DaemonSets, not one", ds.len())));
    };
    let spec =
        get(ds, &["spec", "template", "spec"]).ok_or_else(|| bad("DaemonSet", "no pod spec"))?;
    let containers = |k: &str| -> Result<Vec<ContainerSpec>> {
        seq(spec, &[k]).into_iter().map(container).collect()
    };
    Ok(PodSpec {
        host_network: get(spec, &["hostNetwork"])
            .and_then(Value::as_bool)
            .unwrap_or(false),
        termination_grace_secs: get(spec, &["terminationGracePeriodSeconds"])
            .and_then(Value::as_u64)
            .unwrap_or(30),
        init_containers: containers("initContainers")?,
        containers: containers("containers")?,
        volumes: seq(spec, &["volumes"])
            .into_iter()
            .map(volume)
            .collect::<Result<_>>()?,
    })
}

impl PodSpec {
    /// The init or main container `name`.
    pub fn container(&self, name: &str) -> Result<&ContainerSpec> {
        self.init_containers
            .iter()
            .chain(&self.containers)
            .find(|c| c.name == name)
            .ok_or_else(|| bad("DaemonSet", format!("no container {name}")))
    }
}

/// What stands in for the node when a container runs: the namespace that
/// is its host network, a directory for every `hostPath`, a directory
/// holding every Secret volume's files, and the values of the Secrets and
/// ConfigMaps the environment refers to.
#[derive(Debug, Clone, Default)]
pub struct NodeStandIns {
    /// `/run/netns/<name>` of the node's namespace.
    pub netns_path: String,
    /// `hostPath.path` -> the directory standing for it.
    pub host_paths: BTreeMap<String, PathBuf>,
    /// Secret volume name -> the directory holding its files.
    pub secret_dirs: BTreeMap<String, PathBuf>,
    /// (kind `Secret`/`ConfigMap`, name) -> key -> value.
    pub objects: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// What `spec.nodeName` is on this node.
    pub node_name: String,
}

impl NodeStandIns {
    fn lookup(&self, kind: &str, name: &str, key: &str) -> Result<&str> {
        self.objects
            .get(&(kind.to_owned(), name.to_owned()))
            .and_then(|o| o.get(key))
            .map(String::as_str)
            .ok_or_else(|| {
                bad(
                    "environment",
                    format!("no value for {kind} {name} key {key}"),
                )
            })
    }
}

impl ContainerSpec {
    /// The environment with every reference resolved.
    pub fn resolved_env(&self, node: &NodeStandIns) -> Result<Vec<(String, String)>> {
        self.env
            .iter()
            .map(|(k, src)| {
                let v = match src {
                    EnvSource::Value(v) => v.clone(),
                    EnvSource::SecretKey { name, key } => {
                        node.lookup("Secret", name, key)?.to_owned()
                    }
                    EnvSource::ConfigMapKey { name, key } => {
                        node.lookup("ConfigMap", name, key)?.to_owned()
                    }
                    EnvSource::NodeName => node.node_name.clone(),
                };
                Ok((k.clone(), v))
            })
            .collect()
    }

    /// Where `container_path` (a file or directory under one of this
    /// container's hostPath mounts) is on the stand-in node.
    pub fn host_side(
        &self,
        pod: &PodSpec,
        node: &NodeStandIns,
        container_path: &str,
    ) -> Result<PathBuf> {
        let what = format!("container {}", self.name);
        let (m, rest) = self
            .mounts
            .iter()
            .filter_map(|m| {
                let rest = std::path::Path::new(container_path)
                    .strip_prefix(&m.path)
                    .ok()?;
                Some((m, rest))
            })
            // The deepest mount wins, as in the container.
            .max_by_key(|(m, _)| m.path.len())
            .ok_or_else(|| bad(&what, format!("{container_path} is on no mount")))?;
        match pod.volumes.get(&m.volume) {
            Some(Volume::HostPath(p)) => node
                .host_paths
                .get(p)
                .map(|d| d.join(rest))
                .ok_or_else(|| bad(&what, format!("no stand-in for host path {p}"))),
            _ => Err(bad(
                &what,
                format!("{container_path} is not on a hostPath volume"),
            )),
        }
    }

    /// `podman run` arguments (after `run`) that run this container as the
    /// kubelet would on the node `node` stands for: the pod's host network
    /// (a namespace), its privileges and capabilities, no privilege
    /// escalation, the memory limit, every mount with the stand-in for its
    /// volume, the resolved environment, `command` as the entrypoint and
    /// `args` after the image. Not covered: CPU shares, probes (the caller
    /// probes), the seccomp profile (podman's default, which is stricter
    /// than Kubernetes' default of none).
    pub fn podman_args(
        &self,
        pod: &PodSpec,
        node: &NodeStandIns,
        container_name: &str,
    ) -> Result<Vec<String>> {
        let what = format!("container {}", self.name);
        let mut a: Vec<String> = vec!["--name".into(), container_name.into()];
        if pod.host_network {
            a.push(format!("--network=ns:{}", node.netns_path));
        } else {
            return Err(bad(&what, "only hostNetwork pods are supported here"));
        }
        if self.privileged {
            a.push("--privileged".into());
        }
        if !self.allow_privilege_escalation {
            a.push("--security-opt=no-new-privileges".into());
        }
        if self.read_only_root {
            // Without podman's own tmpfs on /run and /tmp: the kubelet
            // adds none.
            a.push("--read-only".into());
            a.push("--read-only-tmpfs=false".into());
        }
        for c in &self.cap_drop {
            a.push(format!("--cap-drop={}", c.to_ascii_lowercase()));
        }
        for c in &self.cap_add {
            a.push(format!("--cap-add={}", c.to_ascii_lowercase()));
        }
        if let Some(m) = self.memory_limit {
            a.push(format!("--memory={m}"));
        }
        for m in &self.mounts {
            let vol = pod
                .volumes
                .get(&m.volume)
                .ok_or_else(|| bad(&what, format!("mount of unknown volume {}", m.volume)))?;
            let (src, ro) = match vol {
                Volume::HostPath(p) => (
                    node.host_paths
                        .get(p)
                        .ok_or_else(|| bad(&what, format!("no stand-in for host path {p}")))?,
                    m.read_only,
                ),
                // Kubernetes mounts Secrets read-only whatever the mount says.
                Volume::Secret { .. } => (
                    node.secret_dirs
                        .get(&m.volume)
                        .ok_or_else(|| bad(&what, format!("no files for volume {}", m.volume)))?,
                    true,
                ),
            };
            let mut spec = format!("--volume={}:{}", src.display(), m.path);
            if ro {
                spec.push_str(":ro");
            }
            a.push(spec);
        }
        for (k, v) in self.resolved_env(node)? {
            a.push(format!("--env={k}={v}"));
        }
        let (entry, cmd_rest) = match self.command.split_first() {
            Some((e, rest)) => (Some(e), rest),
            None => (None, &[][..]),
        };
        if let Some(e) = entry {
            a.push(format!("--entrypoint={e}"));
        }
        a.push(self.image.clone());
        a.extend(cmd_rest.iter().cloned());
        a.extend(self.args.iter().cloned());
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
---
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {endpoints: "https://192.0.2.10:2379", ca.crt: "PEM"}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds}
spec:
  template:
    spec:
      hostNetwork: true
      terminationGracePeriodSeconds: 20
      initContainers:
        - name: init
          image: localhost/x:1
          command: ["/bin/x", "sub"]
          args: ["--dir", "/host/d"]
          securityContext:
            privileged: false
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: ["ALL"]}
          volumeMounts:
            - {name: d, mountPath: /host/d}
      containers:
        - name: main
          image: localhost/x:1
          args: ["--flag"]
          env:
            - {name: A, value: "1"}
            - name: B
              valueFrom: {secretKeyRef: {name: creds, key: endpoints}}
          securityContext:
            capabilities: {drop: ["ALL"], add: ["NET_ADMIN"]}
          resources:
            requests: {memory: 32Mi}
            limits: {memory: 64Mi}
          readinessProbe: {httpGet: {path: /readyz, port: 10271}}
          volumeMounts:
            - {name: d, mountPath: /d, readOnly: true}
            - {name: tls, mountPath: /tls}
      volumes:
        - {name: d, hostPath: {path: /var/d}}
        - name: tls
          secret: {secretName: creds, defaultMode: 0400, items: [{key: ca.crt, path: ca.crt}]}
"#;

    fn node() -> NodeStandIns {
        let docs = documents(MANIFEST).unwrap();
        NodeStandIns {
            netns_path: "/run/netns/n1".into(),
            host_paths: [("/var/d".to_owned(), PathBuf::from("/tmp/d"))].into(),
            secret_dirs: [("tls".to_owned(), PathBuf::from("/tmp/tls"))].into(),
            objects: [(
                ("Secret".to_owned(), "creds".to_owned()),
                object_data(&docs, "Secret", "creds").unwrap(),
            )]
            .into(),
            node_name: "n1".into(),
        }
    }

    #[test]
    fn reads_containers_volumes_and_limits() {
        let pod = pod_spec(&documents(MANIFEST).unwrap()).unwrap();
        assert!(pod.host_network);
        assert_eq!(pod.termination_grace_secs, 20);
        let main = pod.container("main").unwrap();
        assert_eq!(main.memory_limit, Some(64 << 20));
        assert_eq!(main.memory_request, Some(32 << 20));
        assert_eq!(
            main.readiness,
            Some(HttpProbe {
                path: "/readyz".into(),
                port: 10271
            })
        );
        assert!(main.allow_privilege_escalation, "kubernetes' default");
        assert_eq!(
            pod.volumes["tls"],
            Volume::Secret {
                name: "creds".into(),
                items: vec![("ca.crt".into(), "ca.crt".into())],
                mode: 0o400
            }
        );
        assert!(pod.container("nope").is_err());
    }

    #[test]
    fn podman_args_follow_the_manifest() {
        let pod = pod_spec(&documents(MANIFEST).unwrap()).unwrap();
        let n = node();
        let init = pod
            .container("init")
            .unwrap()
            .podman_args(&pod, &n, "c1")
            .unwrap();
        assert_eq!(
            init,
            [
                "--name",
                "c1",
                "--network=ns:/run/netns/n1",
                "--security-opt=no-new-privileges",
                "--read-only",
                "--read-only-tmpfs=false",
                "--cap-drop=all",
                "--volume=/tmp/d:/host/d",
                "--entrypoint=/bin/x",
                "localhost/x:1",
                "sub",
                "--dir",
                "/host/d",
            ]
        );
        let main = pod
            .container("main")
            .unwrap()
            .podman_args(&pod, &n, "c2")
            .unwrap();
        assert_eq!(
            main,
            [
                "--name",
                "c2",
                "--network=ns:/run/netns/n1",
                "--cap-drop=all",
                "--cap-add=net_admin",
                "--memory=67108864",
                "--volume=/tmp/d:/d:ro",
                "--volume=/tmp/tls:/tls:ro",
                "--env=A=1",
                "--env=B=https://192.0.2.10:2379",
                "localhost/x:1",
                "--flag",
            ]
        );
    }

    #[test]
    fn a_missing_stand_in_or_value_is_named() {
        let pod = pod_spec(&documents(MANIFEST).unwrap()).unwrap();
        let mut n = node();
        n.host_paths.clear();
        let e = pod
            .container("init")
            .unwrap()
            .podman_args(&pod, &n, "c")
            .unwrap_err();
        assert!(e.to_string().contains("/var/d"), "{e}");
        let mut n = node();
        n.objects.clear();
        let e = pod
            .container("main")
            .unwrap()
            .podman_args(&pod, &n, "c")
            .unwrap_err();
        assert!(e.to_string().contains("creds key endpoints"), "{e}");
    }

    #[test]
    fn host_side_follows_the_deepest_host_path_mount() {
        let pod = pod_spec(&documents(MANIFEST).unwrap()).unwrap();
        let n = node();
        let main = pod.container("main").unwrap();
        assert_eq!(
            main.host_side(&pod, &n, "/d/sub/file").unwrap(),
            PathBuf::from("/tmp/d/sub/file")
        );
        assert!(main.host_side(&pod, &n, "/tls/ca.crt").is_err(), "a secret");
        assert!(main.host_side(&pod, &n, "/elsewhere").is_err());
    }

    #[test]
    fn memory_quantities() {
        assert_eq!(parse_memory("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_memory("1Gi").unwrap(), 1 << 30);
        assert_eq!(parse_memory("500M").unwrap(), 500_000_000);
        assert_eq!(parse_memory("1000").unwrap(), 1000);
        assert!(parse_memory("lots").is_err());
        assert!(parse_memory("99999999999Ti").is_err());
    }
}
