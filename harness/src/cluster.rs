//! The multi-host cluster made of namespaces: an underlay namespace with
//! bridge `ul0` and etcd, hosts `h1..hN` wired to it by veth pairs, agents
//! (`twilld`) and pods (via the `twill` CNI plugin) on the hosts. Everything
//! is torn down on drop, also when a test panics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::bins;
use crate::cmd::{self, ip, ChildGuard};
use crate::error::{HarnessError, Result};
use crate::etcd::Etcd;
use crate::etcd_cluster::EtcdCluster;
use crate::netns::{run_prefix, Netns};
use crate::parse::{self, Lease, Route, SubnetFile};
use crate::wait::{wait_for, DEFAULT_TIMEOUT};

mod agents;
mod hosts;
mod ipv6_only;
mod pods;
mod state;

pub use ipv6_only::{
    ipv4_addresses, IPV6_ONLY_HOST_GW_CONFIG, IPV6_ONLY_VXLAN_CONFIG, UNDERLAY6_PREFIX_LEN,
    UNDERLAY_IP6, VXLAN6_DEV,
};

/// Address of the underlay bridge `ul0`, where etcd listens.
pub const UNDERLAY_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
/// The etcd prefix the agents use: their default.
pub const ETCD_PREFIX: &str = twill_contract::defaults::ETCD_PREFIX;
/// The network config written to `<prefix>/config` unless overridden.
pub const DEFAULT_NETWORK_CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;
/// Name of the VXLAN device the agent creates (VNI 1).
pub const VXLAN_DEV: &str = "twill.1";
/// Name of the node bridge the agent creates: its default.
pub const BRIDGE_DEV: &str = twill_contract::defaults::BRIDGE;
/// Interface name of a pod's / host's link.
pub const IFNAME: &str = "eth0";
/// Most members a multi-member etcd may have (`192.0.2.251..=253`).
pub const MAX_ETCD_MEMBERS: usize = 3;
const FIRST_ETCD_MEMBER_OCTET: u8 = 251;

const MAX_HOSTS: usize = 250;
/// Hosts [`Cluster::add_host_at`] takes when the caller gives the addresses
/// (the join-storm benchmark puts hundreds on 198.18.0.0/15).
const MAX_HOSTS_AT: usize = 1000;
const LOG_TAIL_LINES: usize = 40;

/// Configures and builds a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    hosts: usize,
    prefix: Option<String>,
    network_config: String,
    resync_interval: u64,
    own_process_group: bool,
    bin_dir: Option<PathBuf>,
    lease_ttl: Option<u64>,
    etcd_members: usize,
    etcd_prefix: String,
    agent_args: Vec<String>,
    ipv6_only: bool,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            hosts: 3,
            prefix: None,
            network_config: DEFAULT_NETWORK_CONFIG.to_owned(),
            resync_interval: 2,
            own_process_group: false,
            bin_dir: None,
            lease_ttl: None,
            etcd_members: 1,
            etcd_prefix: ETCD_PREFIX.to_owned(),
            agent_args: Vec::new(),
            ipv6_only: false,
        }
    }
}

impl ClusterBuilder {
    /// Number of hosts created up front (more can join with
    /// [`Cluster::add_host`]).
    pub fn hosts(mut self, n: usize) -> Self {
        self.hosts = n;
        self
    }

    /// A fixed namespace prefix instead of the per-run unique one (the demo
    /// uses `twdemo`).
    pub fn prefix(mut self, p: impl Into<String>) -> Self {
        self.prefix = Some(p.into());
        self
    }

    /// The JSON written to `<prefix>/config`.
    pub fn network_config(mut self, json: impl Into<String>) -> Self {
        self.network_config = json.into();
        self
    }

    /// `--resync-interval` passed to the agents (short, so tests converge
    /// fast even if a watch event is missed).
    pub fn resync_interval(mut self, secs: u64) -> Self {
        self.resync_interval = secs;
        self
    }

    /// Starts etcd and agents in their own process group so a terminal's
    /// Ctrl-C reaches only the harness, which then tears down in order.
    /// Off for tests: there a killed test process should take them along.
    pub fn own_process_group(mut self, yes: bool) -> Self {
        self.own_process_group = yes;
        self
    }

    /// Where `twilld` and `twill` are taken from, instead of
    /// [`bins::bin_dir`] (lets a test substitute stand-ins).
    pub fn bin_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = Some(dir.into());
        self
    }

    /// `--lease-ttl` passed to the agents (default: the agent's own).
    pub fn lease_ttl(mut self, secs: u64) -> Self {
        self.lease_ttl = Some(secs);
        self
    }

    /// The etcd key prefix the config is written under and the agents use
    /// (`--etcd-prefix`); e.g. flannel's `/coreos.com/network`.
    pub fn etcd_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.etcd_prefix = prefix.into();
        self
    }

    /// Extra flags appended to every agent's command line (e.g. `--ip-masq`).
    pub fn agent_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.agent_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// With `n > 1` (at most [`MAX_ETCD_MEMBERS`]) the agents use an
    /// `n`-member etcd cluster on `192.0.2.251..` in the underlay namespace
    /// (see [`Cluster::etcd_cluster`]) instead of the single etcd.
    pub fn etcd_members(mut self, n: usize) -> Self {
        self.etcd_members = n;
        self
    }

    /// Builds underlay, etcd (with the network config) and the hosts.
    pub fn build(self) -> Result<Cluster> {
        if self.etcd_members == 0 || self.etcd_members > MAX_ETCD_MEMBERS {
            return Err(HarnessError::Parse {
                what: "etcd member count".into(),
                reason: format!("{} is not in 1..={MAX_ETCD_MEMBERS}", self.etcd_members),
            });
        }
        let network_config = self.ipv6_only_config()?;
        let prefix = self.prefix.clone().unwrap_or_else(run_prefix);
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .map_err(|source| HarnessError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let underlay = Netns::new(format!("{prefix}-ul"))?;
        underlay.ip(["link", "add", "ul0", "type", "bridge"])?;
        let etcd_ip: IpAddr = if self.ipv6_only {
            ipv6_only::underlay_only_ipv6(&underlay)?;
            UNDERLAY_IP6.into()
        } else {
            underlay.ip(["addr", "add", &format!("{UNDERLAY_IP}/24"), "dev", "ul0"])?;
            UNDERLAY_IP.into()
        };
        underlay.ip(["link", "set", "ul0", "up"])?;
        let etcd = Etcd::start(underlay.name(), etcd_ip, dir.path(), self.own_process_group)?;
        etcd.put(&format!("{}/config", self.etcd_prefix), &network_config)?;
        let etcd_cluster = if self.etcd_members > 1 {
            let ips: Vec<Ipv4Addr> = (0..self.etcd_members as u8)
                .map(|i| Ipv4Addr::new(192, 0, 2, FIRST_ETCD_MEMBER_OCTET + i))
                .collect();
            let ec =
                EtcdCluster::start(&underlay, "ul0", &ips, dir.path(), self.own_process_group)?;
            ec.put(
                &format!("{}/config", self.etcd_prefix),
                &self.network_config,
            )?;
            Some(ec)
        } else {
            None
        };
        let mut cluster = Cluster {
            pods: Vec::new(),
            agents: BTreeMap::new(),
            hosts: Vec::new(),
            etcd_cluster,
            etcd,
            underlay,
            prefix,
            resync_interval: self.resync_interval,
            lease_ttl: self.lease_ttl,
            etcd_prefix: self.etcd_prefix.clone(),
            agent_args: self.agent_args.clone(),
            own_process_group: self.own_process_group,
            bin_dir: self.bin_dir,
            dir,
            ipv6_only: self.ipv6_only,
        };
        for _ in 0..self.hosts {
            cluster.add_host()?;
        }
        Ok(cluster)
    }
}

/// A simulated node: a namespace with `eth0` on the underlay.
#[derive(Debug)]
pub struct Host {
    name: String,
    ns: Netns,
    ip: Ipv4Addr,
    dir: PathBuf,
    ip6: Option<Ipv6Addr>,
}

impl Host {
    /// Logical name (`h1`, `h2`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
    /// Its underlay (public) address; `0.0.0.0` on an IPv6-only underlay
    /// (see [`Host::ipv6`]).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    /// Its IPv6 underlay address on an IPv6-only underlay
    /// ([`ClusterBuilder::ipv6_only`]).
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        self.ip6
    }
    /// Where its agent writes the subnet file.
    pub fn subnet_file_path(&self) -> PathBuf {
        self.dir.join("subnet.env")
    }
    /// The CNI plugin's IPAM data dir on this host.
    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }
    /// Its agent's `--wireguard-dir` (key file, tunnel socket and log).
    pub fn wireguard_dir(&self) -> PathBuf {
        self.dir.join("wireguard")
    }
    /// The agent's log file (stdout + stderr, appended across restarts).
    pub fn agent_log_path(&self) -> PathBuf {
        self.dir.join("twilld.log")
    }

    /// Agent binary `bin` inside this host's namespace with its per-host
    /// flags (`--iface eth0 --subnet-file <subnet file>`, without the
    /// `--iface` when `args` pick the interface) and then `args`;
    /// output appended to the agent log, no `TWILL_*` settings inherited
    /// from the caller's environment.
    pub(crate) fn agent_command(&self, bin: &Path, args: Vec<String>) -> Result<Command> {
        let mut all = vec![
            "--subnet-file".to_owned(),
            self.subnet_file_path().to_string_lossy().into_owned(),
            "--wireguard-dir".to_owned(),
            self.wireguard_dir().to_string_lossy().into_owned(),
        ];
        // `--iface eth0` unless the test picks the interface itself.
        let picks = ["--iface", "--iface-regex", "--iface-can-reach"];
        if !args.iter().any(|a| picks.contains(&a.as_str())) {
            all.splice(0..0, ["--iface".to_owned(), IFNAME.to_owned()]);
        }
        all.extend(args);
        let mut c = self.ns.command(&bin.to_string_lossy(), all);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("TWILL_") {
                c.env_remove(k);
            }
        }
        cmd::append_output_to(&mut c, &self.agent_log_path())?;
        Ok(c)
    }
}

/// A pod: its own namespace, wired to a host by the CNI plugin.
#[derive(Debug)]
pub struct Pod {
    name: String,
    host: String,
    ns: Netns,
    addr: Ipv4Net,
    container_id: String,
    addr6: Option<Ipv6Net>,
}

impl Pod {
    /// Logical name given to [`Cluster::add_pod`].
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The host it runs on.
    pub fn host(&self) -> &str {
        &self.host
    }
    /// Its namespace.
    pub fn ns(&self) -> &Netns {
        &self.ns
    }
    /// Its IP; `0.0.0.0` for an IPv6-only pod (see [`Pod::ip6`]).
    pub fn ip(&self) -> Ipv4Addr {
        self.addr.addr()
    }
    /// Its IPv6 address, when the CNI result gave one (dual-stack or
    /// IPv6-only cluster).
    pub fn ip6(&self) -> Option<Ipv6Addr> {
        self.addr6.map(|a| a.addr())
    }
    /// Its IP with prefix length, as the CNI result gave it.
    pub fn cidr(&self) -> Ipv4Net {
        self.addr
    }
}

/// A running cluster. Field order is teardown order: pods, agents, hosts,
/// etcd cluster, etcd, underlay, temp dir.
#[derive(Debug)]
pub struct Cluster {
    pods: Vec<Pod>,
    agents: BTreeMap<String, ChildGuard>,
    hosts: Vec<Host>,
    etcd_cluster: Option<EtcdCluster>,
    etcd: Etcd,
    underlay: Netns,
    prefix: String,
    resync_interval: u64,
    lease_ttl: Option<u64>,
    etcd_prefix: String,
    agent_args: Vec<String>,
    own_process_group: bool,
    bin_dir: Option<PathBuf>,
    dir: tempfile::TempDir,
    ipv6_only: bool,
}

impl Cluster {
    /// Starts configuring a cluster (3 hosts by default).
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// `hosts` hosts (`h1`, `h2`, ...) with their agents converged and one
    /// pod on each (`p1` on `h1`, ...): the start of most end-to-end tests.
    pub fn with_pods(hosts: usize) -> Result<Cluster> {
        let mut c = Cluster::builder().hosts(hosts).build()?;
        c.start_agents()?;
        c.wait_converged()?;
        for i in 1..=hosts {
            c.add_pod(&format!("h{i}"), &format!("p{i}"))?;
        }
        Ok(c)
    }

    /// The IPv4 subnet `host`'s agent published.
    pub fn subnet_of(&self, host: &str) -> Result<Ipv4Net> {
        Ok(self.subnet_file(host)?.subnet.trunc())
    }

    /// The address of pod `name`.
    pub fn pod_ip(&self, name: &str) -> Result<Ipv4Addr> {
        Ok(self.pod(name)?.ip())
    }

    fn bin_dir(&self) -> Result<PathBuf> {
        self.bin_dir.clone().map_or_else(bins::bin_dir, Ok)
    }

    fn binary(&self, name: &str) -> Result<PathBuf> {
        let p = self.bin_dir()?.join(name);
        if p.is_file() {
            Ok(p)
        } else {
            Err(HarnessError::MissingBinary { path: p })
        }
    }

    /// The namespace prefix of this cluster.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The temp dir holding etcd data, subnet files, IPAM dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The single etcd server. With [`ClusterBuilder::etcd_members`] > 1
    /// the agents do not use it: see [`Cluster::etcd_cluster`].
    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// Wipes the single-member etcd under the running agents (see
    /// [`Etcd::wipe`]); the network config is gone too.
    pub fn wipe_etcd(&mut self) -> Result<()> {
        let dir = self.dir().to_path_buf();
        self.etcd.wipe(&dir, self.own_process_group)
    }

    /// The multi-member etcd the agents use, when built with
    /// [`ClusterBuilder::etcd_members`] > 1.
    pub fn etcd_cluster(&self) -> Option<&EtcdCluster> {
        self.etcd_cluster.as_ref()
    }

    /// Mutable access to the multi-member etcd (to kill and restart members).
    pub fn etcd_cluster_mut(&mut self) -> Option<&mut EtcdCluster> {
        self.etcd_cluster.as_mut()
    }

    /// The etcd endpoints the agents are given, comma separated.
    pub fn etcd_endpoints(&self) -> String {
        match &self.etcd_cluster {
            Some(ec) => ec.endpoints().join(","),
            None => self.etcd.endpoint(),
        }
    }

    /// The underlay namespace (bridge `ul0`, etcd).
    pub fn underlay(&self) -> &Netns {
        &self.underlay
    }

    /// All hosts, in join order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// All pods, in creation order.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Host by name.
    pub fn host(&self, name: &str) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| HarnessError::Unknown {
                kind: "host",
                name: name.to_owned(),
            })
    }

    /// Pod by name.
    pub fn pod(&self, name: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| HarnessError::Unknown {
                kind: "pod",
                name: name.to_owned(),
            })
    }

    /// The namespace of a host or a pod, by name.
    pub fn ns_of(&self, name: &str) -> Result<&Netns> {
        if let Ok(h) = self.host(name) {
            return Ok(&h.ns);
        }
        self.pod(name).map(|p| &p.ns)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "twill-harness: cluster {} torn down after a failure; agent logs:\n{}\n--- etcd log ---\n{}",
                self.prefix,
                self.diagnostics(),
                cmd::tail(self.etcd.log_path(), 15)
            );
            if let Some(ec) = &self.etcd_cluster {
                eprintln!("{}", ec.log_tails(15));
            }
        }
        // Fields drop next, in declaration order: pods, agents, hosts, etcd,
        // underlay, temp dir.
    }
}

/// Lists namespaces whose name starts with `prefix` (for leak checks).
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    let out = cmd::run_ok(&mut ip(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}
