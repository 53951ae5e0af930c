//! The README's "Running a node by hand", run as written on two nodes made
//! of network namespaces, with a real etcd: every shell command of the
//! section's `sh` blocks, in order, changed only where namespaces need it
//! (see [`Node::adapt`]), ending with pods on the two nodes pinging each
//! other. When the README changes, this test says whether it still works.
//! Needs root, `ip`, `etcd`, `etcdctl` and the workspace binaries; under
//! `CI=true` a missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use twill_harness::{bins, require_cluster, Cluster, Netns};

const README: &str = include_str!("../../README.md");
const SECTION: &str = "## Running a node by hand";

/// The logical shell commands of the section's `sh` blocks, in order: a
/// line ending in `\` or `|` continues on the next.
fn section_commands() -> Vec<String> {
    let start = README
        .find(SECTION)
        .expect("README has no hand-run section");
    let rest = &README[start + SECTION.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    let mut out = Vec::new();
    let mut in_sh = false;
    let mut cur = String::new();
    for line in section.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t == "```sh";
            continue;
        }
        if !in_sh || t.is_empty() || t.starts_with('#') {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else if t.ends_with('|') {
            cur.push_str(t);
            cur.push(' ');
        } else {
            cur.push_str(t);
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

/// One node of the README: a harness host plus the root file system paths
/// the README uses, moved under the host's own directory.
struct Node<'a> {
    name: String,
    /// The harness host's namespace: the README's node.
    ns: &'a Netns,
    root: PathBuf,
    /// The pod namespace the README calls `pod1`, made by the test.
    pod: Netns,
    agent: Option<Child>,
}

impl Node<'_> {
    fn path(&self, p: &str) -> String {
        self.root
            .join(p.trim_start_matches('/'))
            .display()
            .to_string()
    }

    fn subnet_file(&self) -> String {
        self.path("/run/twill/subnet.env")
    }

    /// `cmd` as it runs in this node's namespace: the README's absolute
    /// paths under the node's root (nodes share one file system), the
    /// build outputs where cargo put them, `pod1` the test's pod namespace,
    /// and what twilld and the plugin default to (the subnet file, the bin
    /// and conf dirs, the IPAM store) named explicitly.
    fn adapt(&self, cmd: &str, peer_pod_ip: Option<&str>) -> String {
        let mut c = cmd.to_string();
        for p in ["/usr/local/bin", "/opt/cni/bin", "/etc/cni/net.d"] {
            c = c.replace(p, &self.path(p));
        }
        c = c
            .replace(
                "target/release/twilld",
                &bins::twilld().unwrap().display().to_string(),
            )
            .replace(
                "target/cni/twill",
                &bins::cni_plugin().unwrap().display().to_string(),
            )
            .replace("/run/netns/pod1", &self.pod.path())
            .replace(" pod1 ", &format!(" {} ", self.pod.name()));
        if let Some(ip) = peer_pod_ip {
            c = c.replace("10.244.7.2", ip);
        }
        if c.starts_with("twilld install-cni") {
            c.push_str(&format!(
                " --bin-dir {} --conf-dir {} --portmap-from {} --subnet-file {}",
                self.path("/opt/cni/bin"),
                self.path("/etc/cni/net.d"),
                self.path("/usr/lib/cni"),
                self.subnet_file()
            ));
        } else if c.starts_with("twilld --") {
            c.push_str(&format!(" --subnet-file {}", self.subnet_file()));
        }
        // The plugin's config names the node's subnet file and store.
        c.replace(
            r#""type":"twill"}"#,
            &format!(
                r#""type":"twill","subnetFile":"{}","dataDir":"{}"}}"#,
                self.subnet_file(),
                self.path("/var/lib/twill/ipam")
            ),
        )
    }

    fn shell(&self, cmd: &str) -> Command {
        let path = format!(
            "{}:{}",
            self.path("/usr/local/bin"),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = self.ns.command("sh", ["-c", cmd]);
        c.env("PATH", path);
        c
    }

    /// Runs `cmd` to completion; returns stdout, panics on failure.
    fn run(&self, cmd: &str) -> String {
        let out = self.shell(cmd).output().unwrap();
        assert!(
            out.status.success(),
            "{}: `{cmd}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the agent command in the background, logging to a file.
    fn start_agent(&mut self, cmd: &str) {
        let log = std::fs::File::create(self.root.join("twilld.log")).unwrap();
        let child = self
            .shell(&format!("exec {cmd}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.ns.register_pid(child.id() as i32);
        self.agent = Some(child);
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.root.join("twilld.log")).unwrap_or_default()
    }
}

impl Drop for Node<'_> {
    fn drop(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `f` became true within a minute.
fn eventually(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !f() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    true
}

/// The pod address in a plugin ADD result.
fn pod_ip(result: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(result)
        .unwrap_or_else(|e| panic!("ADD printed no JSON ({e}): {result}"));
    let addr = v["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    addr.split('/').next().unwrap().to_string()
}

#[test]
fn readme_hand_run_section_works_on_two_nodes() {
    if !require_cluster() {
        return;
    }
    let cmds = section_commands();
    // What the section must keep saying, so a newcomer can follow it.
    for want in [
        "cargo build --release -p twill",
        "scripts/build-cni.sh",
        "sysctl -w net.ipv4.ip_forward=1",
        "etcdctl --endpoints http://192.0.2.254:2379 put",
        "twilld --etcd-endpoints http://192.0.2.254:2379",
        "twilld install-cni",
        "twilld status",
        "ping",
    ] {
        assert!(
            cmds.iter().any(|c| c.contains(want)),
            "the README's hand-run section lost `{want}`: {cmds:#?}"
        );
    }

    // Two nodes on one underlay with etcd at 192.0.2.254, as the README
    // assumes; the harness starts no agent and the README writes the
    // network config itself, so it goes in empty.
    let c = Cluster::builder()
        .hosts(2)
        .network_config("{}")
        .build()
        .unwrap();
    // The harness turns forwarding on in its hosts; the README's nodes
    // start as a fresh machine does, with it off.
    for h in c.hosts() {
        h.ns()
            .exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
            .unwrap();
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = c
        .hosts()
        .iter()
        .map(|h| {
            let root = tmp.path().join(h.name());
            std::fs::create_dir_all(&root).unwrap();
            Node {
                name: h.name().to_string(),
                ns: h.ns(),
                root,
                pod: Netns::unique(&format!("pod1{}", h.name())).unwrap(),
                agent: None,
            }
        })
        .collect();

    let mut pod_ips: Vec<String> = Vec::new();
    for cmd in &cmds {
        if cmd.starts_with("cargo build") || cmd.starts_with("scripts/build-cni.sh") {
            // Built before the test: the harness' prerequisites.
            continue;
        }
        if cmd.starts_with("etcdctl") {
            // "Once, from any machine".
            nodes[0].run(&nodes[0].adapt(cmd, None));
            continue;
        }
        if cmd.starts_with("ip netns add pod1") {
            // Made by the test under its per-run name (see Node::adapt).
            continue;
        }
        if cmd.starts_with("ip netns exec pod1") {
            // From the first node's pod to the other node's.
            // The agents program each other's routes within moments of
            // the leases; a person typing is slower than that, a test not.
            let c0 = nodes[0].adapt(cmd, Some(&pod_ips[1]));
            assert!(
                eventually(|| nodes[0].shell(&c0).output().unwrap().status.success()),
                "`{c0}` never got through; agent logs: {} / {}",
                nodes[0].agent_log(),
                nodes[1].agent_log()
            );
            continue;
        }
        for node in nodes.iter_mut() {
            let adapted = node.adapt(cmd, None);
            if cmd.starts_with("twilld --") {
                node.start_agent(&adapted);
                let file = PathBuf::from(node.subnet_file());
                assert!(
                    eventually(|| file.exists()),
                    "no subnet file from {}'s agent; its log: {}",
                    node.name,
                    node.agent_log()
                );
                continue;
            }
            if cmd.starts_with("twilld status") {
                let out = node.run(&adapted);
                // Both nodes' leases.
                for h in c.hosts() {
                    assert!(out.contains(&h.ip().to_string()), "{out}");
                }
                continue;
            }
            let out = node.run(&adapted);
            if cmd.contains("CNI_COMMAND=ADD") {
                pod_ips.push(pod_ip(&out));
            }
        }
    }
    assert_eq!(pod_ips.len(), 2, "the section made no pod on each node");
    // And back, to be sure both directions work.
    let back = nodes[1].run(&format!(
        "ip netns exec {} ping -c 3 -W 2 {}",
        nodes[1].pod.name(),
        pod_ips[0]
    ));
    assert!(back.contains(" 0% packet loss"), "{back}");
    // The README's install-cni wrote a conflist the plugin agrees with.
    let conflist = Path::new(&nodes[0].path("/etc/cni/net.d")).join("10-twill.conflist");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&conflist).unwrap()).unwrap();
    assert_eq!(v["plugins"][0]["subnetFile"], nodes[0].subnet_file());
    drop(nodes);
}
