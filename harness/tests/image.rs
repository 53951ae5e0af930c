//! Issue 19: the node image run the way `deploy/kube-twill.yml` runs it.
//! The DaemonSet is parsed, not restated: its init container and agent
//! container run with podman from the image `image:` names (built by
//! `scripts/image.sh`), inside two test hosts' namespaces as their host
//! network, with the manifest's privileges, capabilities, memory limit,
//! mounts (temp dirs standing for the host paths, the etcd Secret as files)
//! and environment, against an etcd that demands TLS client certificates.
//! Checked: install-cni puts the static plugin and the conflist on the
//! "host"; each agent leases a subnet and programs its node; pods made
//! through the installed plugin on the two nodes ping each other;
//! `/healthz` and `/readyz` answer on the probes' port at the node's
//! address; `--ip-masq` hides pods from the outside; SIGTERM leaves the
//! data path in place and a restart loses no ping; the agent stays below
//! its memory limit (its footprint is printed). And the image holds the
//! two binaries and what they load, nothing else.
//!
//! Needs root, `podman`, `ip`, `nft`, `bash`, `timeout`, `openssl`, `etcd`,
//! `etcdctl`, `ping` and the image (`scripts/image.sh`); under `CI=true` a
//! missing prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ipnet::Ipv4Net;
use twill_harness::cluster::{ETCD_PREFIX, IFNAME, UNDERLAY_IP, VXLAN_DEV};
use twill_harness::daemonset::{self, ContainerSpec, NodeStandIns, PodSpec, Volume};
use twill_harness::parse::{self, SubnetFile};
use twill_harness::podman::{self, Container};
use twill_harness::probe::{http_get, EchoCounters, FreshFlowPinger};
use twill_harness::tls::TlsEtcd;
use twill_harness::wait::wait_for;
use twill_harness::{cmd, Cluster, Netns, Prereqs, CLUSTER_TOOLS};

/// Starting a container, a TLS handshake and a lease: generous on a shared
/// machine, far below "never".
const START: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(20);
/// Where the CNI runtime looks for plugins and configs on a node.
const CNI_BIN_DIR: &str = "/opt/cni/bin";
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// The plugin's default IPAM root on a node (its `dataDir`).
const IPAM_DIR: &str = "/var/lib/twill";
/// The keys a user puts into the etcd Secret (docs/deploy.md).
const SECRET_KEYS: [&str; 4] = ["etcd-endpoints", "ca.crt", "tls.crt", "tls.key"];

fn manifest() -> (Vec<serde_yaml::Value>, PodSpec) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kube-twill.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = daemonset::documents(&text).unwrap();
    let pod = daemonset::pod_spec(&docs).unwrap();
    (docs, pod)
}

/// The gate: root, podman, `tools` (and a cluster's when any are named),
/// and `image` built.
fn require_image(image: &str, tools: &[&str]) -> bool {
    let mut p = Prereqs::new().root().tools(&["podman"]).tools(tools);
    if !tools.is_empty() {
        p = p.tools(CLUSTER_TOOLS);
    }
    p.condition(
        format!("image {image} in podman's storage"),
        podman::image_exists(image),
    )
    .hint("scripts/image.sh builds the image")
    .require()
}

/// The one main container (the agent).
fn agent_spec(pod: &PodSpec) -> &ContainerSpec {
    assert_eq!(pod.containers.len(), 1, "expected one main container");
    &pod.containers[0]
}

/// Whether the ELF file at `path` has no program interpreter (is static).
fn is_static_elf(path: &Path) -> bool {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is not ELF", path.display());
    assert_eq!(b[4], 2, "{} is not 64-bit", path.display());
    let u = |o: usize, n: usize| -> u64 {
        let mut v = 0u64;
        for i in (0..n).rev() {
            v = v << 8 | u64::from(b[o + i]);
        }
        v
    };
    let (phoff, phentsize, phnum) = (u(0x20, 8) as usize, u(0x36, 2) as usize, u(0x38, 2));
    // PT_INTERP = 3
    !(0..phnum as usize).any(|i| u(phoff + i * phentsize, 4) == 3)
}

fn output_text(o: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One node: a cluster host, the directories standing for its paths, and
/// its running agent container.
struct Node {
    host: String,
    ip: Ipv4Addr,
    root: PathBuf,
    stand_ins: NodeStandIns,
    container_name: String,
    agent: Option<Container>,
}

impl Node {
    fn new(
        c: &Cluster,
        host: &str,
        pod: &PodSpec,
        objects: &BTreeMap<(String, String), BTreeMap<String, String>>,
    ) -> Node {
        let h = c.host(host).unwrap();
        let root = c.dir().join(format!("node-{host}"));
        let mut s = NodeStandIns {
            netns_path: h.ns().path(),
            objects: objects.clone(),
            node_name: h.name().to_owned(),
            ..NodeStandIns::default()
        };
        for (vname, vol) in &pod.volumes {
            match vol {
                Volume::HostPath(p) => {
                    let d = root.join(p.trim_start_matches('/'));
                    std::fs::create_dir_all(&d).unwrap();
                    s.host_paths.insert(p.clone(), d);
                }
                Volume::Secret { name, items, mode } => {
                    let d = root.join("secrets").join(vname);
                    std::fs::create_dir_all(&d).unwrap();
                    let data = &objects[&("Secret".to_owned(), name.clone())];
                    for (key, file) in items {
                        let f = d.join(file);
                        std::fs::write(&f, &data[key]).unwrap();
                        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(*mode))
                            .unwrap();
                    }
                    s.secret_dirs.insert(vname.clone(), d);
                }
            }
        }
        // A node has a default route; the agent's default underlay is the
        // interface it goes through.
        h.ns()
            .ip([
                "route",
                "add",
                "default",
                "via",
                &UNDERLAY_IP.to_string(),
                "dev",
                IFNAME,
            ])
            .unwrap();
        Node {
            host: host.to_owned(),
            ip: h.ip(),
            container_name: format!("{}-{host}-agent", c.prefix()),
            root,
            stand_ins: s,
            agent: None,
        }
    }

    fn host_path(&self, p: &str) -> PathBuf {
        self.stand_ins
            .host_paths
            .get(p)
            .cloned()
            .unwrap_or_else(|| panic!("the manifest mounts no host path {p}"))
    }

    fn run_init_containers(&self, c: &Cluster, pod: &PodSpec) {
        for (i, init) in pod.init_containers.iter().enumerate() {
            let name = format!("{}-{}-init{i}", c.prefix(), self.host);
            let args = init.podman_args(pod, &self.stand_ins, &name).unwrap();
            let out = podman::run_to_completion(&args).unwrap();
            assert!(
                out.status.success(),
                "init container {} on {} failed: {}",
                init.name,
                self.host,
                output_text(&out)
            );
        }
    }

    fn start_agent(&mut self, pod: &PodSpec) {
        assert!(self.agent.is_none(), "agent of {} already runs", self.host);
        let args = agent_spec(pod)
            .podman_args(pod, &self.stand_ins, &self.container_name)
            .unwrap();
        let log = self.root.join("agent.log");
        self.agent = Some(Container::start(&self.container_name, &args, &log).unwrap());
    }

    fn agent(&self) -> &Container {
        self.agent.as_ref().unwrap()
    }

    fn log_tail(&self) -> String {
        self.agent
            .as_ref()
            .map_or_else(|| String::from("(no agent running)"), |a| a.log_tail(40))
    }

    fn subnet_file_path(&self, pod: &PodSpec) -> PathBuf {
        let spec = agent_spec(pod);
        let in_container = spec
            .resolved_env(&self.stand_ins)
            .unwrap()
            .into_iter()
            .find(|(k, _)| k == "TWILL_SUBNET_FILE")
            .map(|(_, v)| v)
            .expect("the agent container sets no TWILL_SUBNET_FILE");
        spec.host_side(pod, &self.stand_ins, &in_container).unwrap()
    }

    fn wait_subnet_file(&self, pod: &PodSpec) -> SubnetFile {
        let path = self.subnet_file_path(pod);
        wait_for(
            &format!("subnet file of {} at {}", self.host, path.display()),
            START,
            || {
                let text = std::fs::read_to_string(&path).map_err(|source| {
                    twill_harness::HarnessError::Io {
                        path: path.clone(),
                        source,
                    }
                })?;
                parse::parse_subnet_file(&text).map(Some)
            },
            || self.log_tail(),
        )
        .unwrap()
    }

    fn stop_agent(&mut self, pod: &PodSpec) -> std::process::ExitStatus {
        let agent = self.agent.take().unwrap();
        agent.stop(pod.termination_grace_secs).unwrap()
    }
}

/// GET `path` on `port` at the node's own address, as the kubelet probes a
/// hostNetwork pod; waits for 200.
fn wait_http_ok(c: &Cluster, node: &Node, port: u16, path: &str) -> String {
    let ns = c.host(&node.host).unwrap().ns();
    wait_for(
        &format!("{path} on {}:{port} to answer 200", node.ip),
        START,
        || {
            let r = http_get(ns, node.ip, port, path)?;
            Ok((r.status == 200).then_some(r.body))
        },
        || node.log_tail(),
    )
    .unwrap()
}

fn vxlan_routes(c: &Cluster, host: &str) -> Vec<Ipv4Net> {
    let out = c
        .host(host)
        .unwrap()
        .ns()
        .ip(["-j", "route", "show", "dev", VXLAN_DEV])
        .unwrap();
    parse::parse_routes(&out)
        .unwrap()
        .into_iter()
        .map(|r| r.dst)
        .collect()
}

fn wait_routes(c: &Cluster, node: &Node, want: Ipv4Net) {
    wait_for(
        &format!("route on {} to {want} via {VXLAN_DEV}", node.host),
        SETTLE,
        || Ok((vxlan_routes(c, &node.host) == [want]).then_some(())),
        || node.log_tail(),
    )
    .unwrap();
}

/// A pod on `node` made by the plugin install-cni put on the node, with
/// the installed conflist's twill entry; only the node paths the plugin
/// reads by default (subnet file, IPAM dir) point at their stand-ins.
fn add_pod(c: &Cluster, pod: &PodSpec, node: &Node, name: &str) -> (Netns, Ipv4Addr) {
    let conflist: serde_json::Value = serde_json::from_slice(
        &std::fs::read(node.host_path(CNI_CONF_DIR).join("10-twill.conflist")).unwrap(),
    )
    .unwrap();
    let mut conf = conflist["plugins"][0].clone();
    assert_eq!(conf["type"], "twill", "{conflist}");
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    conf["subnetFile"] = node.subnet_file_path(pod).to_string_lossy().into();
    conf["dataDir"] = node
        .root
        .join(IPAM_DIR.trim_start_matches('/'))
        .join("ipam")
        .to_string_lossy()
        .into();
    let ns = Netns::new(format!("{}-{name}", c.prefix())).unwrap();
    let plugin = node.host_path(CNI_BIN_DIR).join("twill");
    let mut cmdline = c
        .host(&node.host)
        .unwrap()
        .ns()
        .command(&plugin.to_string_lossy(), std::iter::empty::<&str>());
    cmdline
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", format!("{}-{name}", c.prefix()))
        .env("CNI_NETNS", ns.path())
        .env("CNI_IFNAME", IFNAME)
        .env("CNI_PATH", node.host_path(CNI_BIN_DIR));
    let out = cmd::run_with_stdin(&mut cmdline, Some(conf.to_string().as_bytes())).unwrap();
    assert!(
        out.status.success(),
        "ADD of {name} on {}: {}",
        node.host,
        output_text(&out)
    );
    let ip = parse::parse_cni_result_ip(&String::from_utf8_lossy(&out.stdout)).unwrap();
    (ns, ip.addr())
}

fn wait_ping(from: &Netns, to: Ipv4Addr, why: &str) {
    wait_for(
        &format!("{} to ping {to} ({why})", from.name()),
        SETTLE,
        || Ok(from.ping_once(&to.to_string(), 1).then_some(())),
        String::new,
    )
    .unwrap();
}

fn host32(ip: Ipv4Addr) -> Ipv4Net {
    Ipv4Net::new(ip, 32).unwrap()
}

#[test]
fn the_daemonset_runs_from_the_image_on_two_nodes() {
    let (docs, pod) = manifest();
    let agent = agent_spec(&pod).clone();
    let image = agent.image.clone();
    for c in &pod.init_containers {
        assert_eq!(
            c.image, image,
            "init container {} runs another image",
            c.name
        );
    }
    if !require_image(&image, &["nft", "bash", "timeout", "openssl"]) {
        return;
    }

    // Underlay, two hosts, and an etcd that wants client certificates.
    let c = Cluster::builder().hosts(2).build().unwrap();
    let (files, etcd) = TlsEtcd::beside(&c).unwrap();

    // What the user fills in: the Secret's keys, with this etcd's values.
    let template = daemonset::object_data(&docs, "Secret", "twill-etcd").unwrap();
    let mut keys: Vec<&str> = template.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want_keys = SECRET_KEYS.to_vec();
    want_keys.sort_unstable();
    assert_eq!(
        keys, want_keys,
        "the Secret's keys changed: update docs and this test"
    );
    let read = |p: PathBuf| std::fs::read_to_string(p).unwrap();
    let secret: BTreeMap<String, String> = [
        ("etcd-endpoints", etcd.endpoint().to_owned()),
        ("ca.crt", read(files.ca())),
        ("tls.crt", read(files.client_cert())),
        ("tls.key", read(files.client_key())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut objects = BTreeMap::new();
    objects.insert(("Secret".to_owned(), "twill-etcd".to_owned()), secret);
    for d in &docs {
        if d["kind"].as_str() == Some("ConfigMap") {
            let name = d["metadata"]["name"].as_str().unwrap().to_owned();
            let data = daemonset::object_data(&docs, "ConfigMap", &name).unwrap();
            objects.insert(("ConfigMap".to_owned(), name), data);
        }
    }
    // The network config as the manifest's ConfigMap has it, under the
    // prefix the agent container is given.
    let cm = &objects[&("ConfigMap".to_owned(), "twill-config".to_owned())];
    let mut nodes: Vec<Node> = ["h1", "h2"]
        .iter()
        .map(|h| Node::new(&c, h, &pod, &objects))
        .collect();
    let env: BTreeMap<String, String> = agent
        .resolved_env(&nodes[0].stand_ins)
        .unwrap()
        .into_iter()
        .collect();
    let prefix = env
        .get("TWILL_ETCD_PREFIX")
        .cloned()
        .unwrap_or_else(|| ETCD_PREFIX.to_owned());
    etcd.put(&format!("{prefix}/config"), &cm["net-conf.json"])
        .unwrap();

    // 1. install-cni: the static plugin and the conflist on the "host".
    let want_conflist: serde_json::Value = serde_json::from_str(&cm["cni-conf.json"]).unwrap();
    let image_plugin = {
        let m = podman::ImageMount::new(&image).unwrap();
        std::fs::read(m.root().join("usr/local/bin/twill")).unwrap()
    };
    for n in &nodes {
        n.run_init_containers(&c, &pod);
        let plugin = n.host_path(CNI_BIN_DIR).join("twill");
        assert!(
            std::fs::read(&plugin).unwrap() == image_plugin,
            "the plugin on {} is not the image's",
            n.host
        );
        let mode = std::fs::metadata(&plugin).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755, "plugin mode {mode:o} on {}", n.host);
        assert!(
            is_static_elf(&plugin),
            "the installed plugin on {} is dynamically linked",
            n.host
        );
        let got: serde_json::Value = serde_json::from_slice(
            &std::fs::read(n.host_path(CNI_CONF_DIR).join("10-twill.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(got, want_conflist, "installed conflist on {}", n.host);
        // The copy runs on the host, outside the image.
        let mut v = c
            .host(&n.host)
            .unwrap()
            .ns()
            .command(&plugin.to_string_lossy(), std::iter::empty::<&str>());
        v.env("CNI_COMMAND", "VERSION");
        let out = cmd::run_with_stdin(&mut v, Some(br#"{"cniVersion":"1.1.0"}"#)).unwrap();
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1.1.0"),
            "installed plugin VERSION on {}: {}",
            n.host,
            output_text(&out)
        );
    }

    // 2. The agents lease a subnet each and program their nodes.
    for n in &mut nodes {
        n.start_agent(&pod);
    }
    let files: Vec<SubnetFile> = nodes.iter().map(|n| n.wait_subnet_file(&pod)).collect();
    let subnets: Vec<Ipv4Net> = files.iter().map(SubnetFile::node_subnet).collect();
    assert_ne!(subnets[0], subnets[1], "two nodes got one subnet");
    let leases: BTreeMap<Ipv4Net, Ipv4Addr> = etcd
        .get_prefix(&format!("{prefix}/subnets/"))
        .unwrap()
        .into_iter()
        .map(|(k, v)| {
            (
                parse::parse_lease_key(&k).unwrap(),
                parse::parse_lease(&k, &v).unwrap().public_ip,
            )
        })
        .collect();
    for (n, s) in nodes.iter().zip(&subnets) {
        assert_eq!(
            leases.get(s),
            Some(&n.ip),
            "lease of {s} does not name {}'s address: {leases:?}",
            n.host
        );
    }
    wait_routes(&c, &nodes[0], subnets[1]);
    wait_routes(&c, &nodes[1], subnets[0]);

    // 3. Health on the probes' port, at the node's address.
    let ready = agent.readiness.clone().expect("no readiness probe");
    let live = agent.liveness.clone().expect("no liveness probe");
    for n in &nodes {
        wait_http_ok(&c, n, ready.port, &ready.path);
        wait_http_ok(&c, n, live.port, &live.path);
    }

    // 4. Pods through the installed plugin reach each other across nodes.
    let (p1, ip1) = add_pod(&c, &pod, &nodes[0], "p1");
    let (p2, ip2) = add_pod(&c, &pod, &nodes[1], "p2");
    assert!(subnets[0].contains(&ip1) && subnets[1].contains(&ip2));
    wait_ping(&p1, ip2, "pod to pod across nodes");
    wait_ping(&p2, ip1, "pod to pod across nodes");

    // 5. ip-masq from inside the image: the outside has no route back to
    // the pod network, so only a masqueraded ping gets an answer.
    for f in &files {
        assert!(f.ipmasq, "the manifest's agent runs without ip-masq: {f:?}");
    }
    let h1 = c.host("h1").unwrap().ns();
    let table = h1.exec(&["nft", "list", "table", "ip", "twill"]).unwrap();
    assert!(
        table.status.success(),
        "no ip-masq table on h1\n{}",
        nodes[0].log_tail()
    );
    let inet = c
        .attach_outside("h1", "inet", "198.18.0.1/30", "198.18.0.2/30")
        .unwrap();
    let (outside, h1_outer) = (Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
    let pod_net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
    let counts = EchoCounters::install(&inet, &[host32(h1_outer), pod_net]).unwrap();
    wait_ping(&p1, outside, "masqueraded to the outside");
    assert!(counts.packets(host32(h1_outer)).unwrap() > 0);
    assert_eq!(
        counts.packets(pod_net).unwrap(),
        0,
        "a pod address reached the outside"
    );

    // 6. The footprint, against the manifest's resources.
    let pid = nodes[0].agent().pid().unwrap();
    let cpu0 = podman::cpu_usage_usec(pid).unwrap();
    let idle = Duration::from_secs(10);
    std::thread::sleep(idle);
    let cpu1 = podman::cpu_usage_usec(pid).unwrap();
    let peak = podman::memory_peak(pid).unwrap();
    let rss = podman::process_peak_rss(pid).unwrap();
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    eprintln!(
        "footprint of the agent container on h1: memory peak {:.1} MiB (twilld's own peak rss \
         {:.1} MiB; request {:?}, limit {:?}), cpu {} ms over {} s of steady state",
        mib(peak),
        mib(rss),
        agent.memory_request,
        agent.memory_limit,
        (cpu1 - cpu0) / 1000,
        idle.as_secs()
    );
    if let Some(limit) = agent.memory_limit {
        assert!(peak < limit, "memory peak {peak} reaches the limit {limit}");
    }

    // 7. SIGTERM leaves the data path; a restart loses no ping.
    let pinger = FreshFlowPinger::start(&p1, ip2, 20).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let status = nodes[0].stop_agent(&pod);
    assert!(
        status.success(),
        "the agent on h1 exited with {status} on SIGTERM"
    );
    assert_eq!(
        vxlan_routes(&c, "h1"),
        [subnets[1]],
        "SIGTERM took h1's route"
    );
    assert!(
        h1.exec(&["nft", "list", "table", "ip", "twill"])
            .unwrap()
            .status
            .success(),
        "SIGTERM took the ip-masq table"
    );
    assert_eq!(
        nodes[0].wait_subnet_file(&pod),
        files[0],
        "subnet file changed at stop"
    );
    assert!(
        p1.ping_once(&ip2.to_string(), 2),
        "p1 -> p2 with no agent on h1"
    );
    nodes[0].start_agent(&pod);
    wait_http_ok(&c, &nodes[0], ready.port, &ready.path);
    // A resync of the new agent inside the window as well.
    std::thread::sleep(Duration::from_secs(3));
    let summary = pinger.finish().unwrap();
    // At least 10 sent: the loop ran through the restart, not beside it.
    assert!(
        summary.transmitted >= 10 && summary.lost() == 0,
        "pings lost across the restart (or too few sent): {summary:?}\n{}",
        nodes[0].log_tail()
    );
    assert_eq!(
        nodes[0].wait_subnet_file(&pod).node_subnet(),
        subnets[0],
        "the restarted agent took another subnet"
    );

    for n in &mut nodes {
        let status = n.stop_agent(&pod);
        assert!(status.success(), "agent on {} exited with {status}", n.host);
    }
}

/// Every file and symlink under `dir`, relative to `root`.
fn files_under(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.is_dir() {
            files_under(root, &e.path(), out);
        } else {
            out.push((e.path().strip_prefix(root).unwrap().to_owned(), meta));
        }
    }
}

/// Files the image may hold besides shared libraries (no `nft`: masquerade
/// and the isolation tables go over netlink).
const IMAGE_FILES: [&str; 3] = [
    "usr/local/bin/twilld",
    "usr/local/bin/twill",
    "etc/ld.so.cache",
];

#[test]
fn the_image_holds_the_binaries_and_what_they_load_only() {
    let (_, pod) = manifest();
    let image = agent_spec(&pod).image.clone();
    if !require_image(&image, &[]) {
        return;
    }
    let m = podman::ImageMount::new(&image).unwrap();
    let mut files = Vec::new();
    files_under(m.root(), m.root(), &mut files);
    let is_lib_dir = |p: &Path| ["lib", "lib64", "usr/lib"].iter().any(|d| p.starts_with(d));
    let unexpected: Vec<&PathBuf> = files
        .iter()
        .map(|(p, _)| p)
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            let shared_lib = is_lib_dir(p) && name.contains(".so");
            let loader_conf = p.starts_with("etc/ld.so.conf.d") && name.ends_with(".conf");
            !(shared_lib || loader_conf || IMAGE_FILES.iter().any(|f| p.as_path() == Path::new(f)))
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "the image holds more: {unexpected:?}"
    );
    for f in IMAGE_FILES {
        assert!(
            files.iter().any(|(p, _)| p == Path::new(f)),
            "the image lacks {f}"
        );
    }
    let plugin = m.root().join("usr/local/bin/twill");
    assert!(is_static_elf(&plugin), "the image's plugin is dynamic");
    assert!(!is_static_elf(&m.root().join("usr/local/bin/twilld")));
    let size: u64 = files.iter().map(|(_, meta)| meta.len()).sum();
    eprintln!(
        "image {image}: {} files, {:.1} MiB",
        files.len(),
        size as f64 / f64::from(1 << 20)
    );
}
