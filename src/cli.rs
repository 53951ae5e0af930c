//! `twilld` command line: flannel-style flag names, each also settable from
//! the environment as `TWILL_<FLAG>`. Validation that clap cannot express
//! lives in `Args::validate`, so a bad value is refused before anything runs.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use twill_contract::defaults;

use crate::agent::underlay::UnderlaySelect;

pub use crate::kernel::unusable_underlay_address;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Parser)]
#[command(
    name = "twilld",
    version,
    about = "twill node agent: leases this node's pod subnet in etcd and keeps the VXLAN data path in step with every other node"
)]
pub struct Args {
    /// etcd client URLs, comma separated
    #[arg(
        long,
        env = "TWILL_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379",
        global = true
    )]
    pub etcd_endpoints: Vec<String>,

    /// etcd key prefix holding `config` and `subnets/`
    #[arg(
        long,
        env = "TWILL_ETCD_PREFIX",
        default_value = defaults::ETCD_PREFIX,
        global = true
    )]
    pub etcd_prefix: String,

    /// CA bundle to verify etcd's server certificate
    #[arg(long, env = "TWILL_ETCD_CAFILE", global = true)]
    pub etcd_cafile: Option<PathBuf>,

    /// client certificate for etcd
    #[arg(long, env = "TWILL_ETCD_CERTFILE", global = true)]
    pub etcd_certfile: Option<PathBuf>,

    /// client key for etcd
    #[arg(long, env = "TWILL_ETCD_KEYFILE", global = true)]
    pub etcd_keyfile: Option<PathBuf>,

    /// etcd user name (etcd auth)
    #[arg(long, env = "TWILL_ETCD_USERNAME", global = true)]
    pub etcd_username: Option<String>,

    /// etcd password (etcd auth); prefer the environment variable over the flag
    #[arg(
        long,
        env = "TWILL_ETCD_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    pub etcd_password: Option<String>,

    /// underlay interface, by name or by an IPv4 address it holds; may be
    /// given more than once (comma-separated in the variable): the first
    /// that exists wins (default: the interface of the default route)
    #[arg(long, env = "TWILL_IFACE", value_delimiter = ',')]
    pub iface: Vec<String>,

    /// pick the underlay interface whose name or IPv4 address matches this
    /// regular expression, when no --iface matches; may be given more than
    /// once, tried in order
    #[arg(long, env = "TWILL_IFACE_REGEX")]
    pub iface_regex: Vec<String>,

    /// pick the underlay interface of the route to this address, when no
    /// --iface or --iface-regex matches
    #[arg(long, env = "TWILL_IFACE_CAN_REACH")]
    pub iface_can_reach: Option<Ipv4Addr>,

    /// this node's address on the underlay (default: first IPv4 address of --iface)
    #[arg(long, env = "TWILL_PUBLIC_IP")]
    pub public_ip: Option<Ipv4Addr>,

    /// this node's IPv6 address on the underlay, for IPv6 pod traffic
    /// (default: first global IPv6 address of the underlay interface)
    #[arg(long, env = "TWILL_PUBLIC_IPV6")]
    pub public_ipv6: Option<std::net::Ipv6Addr>,

    /// this node's name, written into its lease so that two nodes claiming
    /// one public IP are refused (the manifest sets it from spec.nodeName,
    /// the systemd unit to the host name); it must not change when the
    /// agent restarts. Without it the node is not told apart from another
    /// one claiming its public IP
    #[arg(long, env = "TWILL_NODE_NAME")]
    pub node_name: Option<String>,

    /// where to write the node's subnet for the CNI plugin (install-cni
    /// writes it into the conflist as the plugin's `subnetFile`)
    #[arg(
        long,
        env = "TWILL_SUBNET_FILE",
        default_value = defaults::SUBNET_FILE,
        global = true
    )]
    pub subnet_file: PathBuf,

    /// TTL of the node's subnet lease in seconds; renewed well before it ends
    #[arg(long, env = "TWILL_LEASE_TTL", default_value_t = 86400)]
    pub lease_ttl: u64,

    /// seconds between full reconciles of the kernel against the lease map
    #[arg(long, env = "TWILL_RESYNC_INTERVAL", default_value_t = 10)]
    pub resync_interval: u64,

    /// masquerade pod traffic that leaves the cluster network (nftables table `ip twill`)
    #[arg(long, env = "TWILL_IP_MASQ")]
    pub ip_masq: bool,

    /// accept VXLAN from any source, not only from the public IPs of current
    /// leases (for underlays where members send from other addresses)
    #[arg(long, env = "TWILL_NO_TUNNEL_FILTER")]
    pub no_tunnel_filter: bool,

    /// leave net.ipv4.ip_forward and net.ipv6.conf.all.forwarding alone
    /// (by default twilld turns them on at start: pods cannot reach other
    /// nodes without forwarding)
    #[arg(long, env = "TWILL_NO_SET_FORWARDING")]
    pub no_set_forwarding: bool,

    /// serve /healthz, /readyz and /metrics on this address (e.g. 127.0.0.1:10271)
    #[arg(long, env = "TWILL_HEALTHZ_ADDR")]
    pub healthz_addr: Option<SocketAddr>,

    /// name of the pod bridge (install-cni writes it into the conflist as
    /// the plugin's `bridge`)
    #[arg(long, env = "TWILL_BRIDGE", default_value = defaults::BRIDGE, global = true)]
    pub bridge: String,

    /// log output format
    #[arg(
        long,
        env = "TWILL_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// log level or tracing filter (e.g. info, debug, twill=debug)
    #[arg(long, env = "TWILL_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,

    /// wireguard backend: the directory of the node's key file
    /// (`wireguard.key`, mode 0600), the tunnel's UAPI socket and its
    /// helper's log. Delete the key file and restart to rotate the key
    #[arg(long, env = "TWILL_WIREGUARD_DIR", default_value = "/var/lib/twill")]
    pub wireguard_dir: PathBuf,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// seconds between rounds of peer probes through the overlay (at most
    /// 256 peers a round, in rotation; see docs/configuration.md)
    #[arg(long, env = "TWILL_PROBE_INTERVAL", default_value_t = crate::probe::DEFAULT_INTERVAL_SECS)]
    pub probe_interval: u64,

    /// do not probe peers through the overlay (/peers and the twill_peer_*
    /// gauges stay empty)
    #[arg(long, env = "TWILL_NO_PROBE")]
    pub no_probe: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// print the cluster's leases (subnet, public IP, VTEP MAC, TTL left)
    Status {
        /// print JSON instead of a table
        #[arg(long)]
        json: bool,
        /// the --healthz-addr of this node's agent: adds its view of each
        /// peer (from /peers) as a column
        #[arg(long, value_name = "ADDR")]
        agent: Option<SocketAddr>,
    },
    /// remove everything twill made on this node (bridge, VXLAN devices
    /// with their routes, neighbours and FDB entries, the subnet file)
    Cleanup,
    /// install the CNI plugin binary and a conflist for the node's runtime
    InstallCni(InstallCniArgs),
    /// run the userspace WireGuard device (started by the agent itself in
    /// wireguard mode; not for use by hand)
    #[command(hide = true)]
    WireguardDevice(WireguardDeviceArgs),
}

#[derive(Debug, clap::Args)]
pub struct WireguardDeviceArgs {
    /// the TUN interface to create
    #[arg(long)]
    pub ifname: String,
    /// the UAPI socket to serve
    #[arg(long)]
    pub socket: PathBuf,
    /// exit after this many seconds without a request from an agent
    #[arg(long, default_value_t = 30)]
    pub grace_seconds: u64,
}

#[derive(Debug, clap::Args)]
pub struct InstallCniArgs {
    /// where container runtimes look for CNI plugin binaries
    #[arg(long, default_value = defaults::CNI_BIN_DIR)]
    pub bin_dir: PathBuf,
    /// where container runtimes look for CNI network configs
    #[arg(long, default_value = defaults::CNI_CONF_DIR)]
    pub conf_dir: PathBuf,
    /// the plugin binary to install (default: `twill` beside this twilld)
    #[arg(long)]
    pub plugin: Option<PathBuf>,
    /// file name of the conflist
    #[arg(long, default_value = "10-twill.conflist")]
    pub conf_name: String,
    /// CNI network name
    #[arg(long, default_value = "twill")]
    pub network_name: String,
    /// chain the reference `portmap` plugin for hostPort (yes, no, or auto:
    /// only when `portmap` is in --bin-dir or one of --portmap-from, from
    /// where it is copied into --bin-dir)
    #[arg(long, value_enum, default_value = "auto")]
    pub portmap: Portmap,
    /// where else `--portmap auto` looks for `portmap`, comma separated
    /// (Debian's containernetworking-plugins installs it in /usr/lib/cni)
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "/usr/lib/cni,/usr/libexec/cni"
    )]
    pub portmap_from: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Portmap {
    Yes,
    No,
    Auto,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("--etcd-endpoints: {0:?} is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("--etcd-endpoints: no endpoint given")]
    NoEndpoint,
    #[error("--etcd-prefix: {0:?} must start with '/' and must not end with '/'")]
    Prefix(String),
    #[error("--lease-ttl: {0} s is out of range (10 to 31536000)")]
    LeaseTtl(u64),
    #[error("--resync-interval: {0} s is out of range (1 to 3600)")]
    Resync(u64),
    #[error(
        "--bridge: {0:?} is not a valid interface name (1 to 15 characters, no '/' or whitespace)"
    )]
    Bridge(String),
    #[error("--etcd-certfile and --etcd-keyfile go together")]
    CertKeyPair,
    #[error("--etcd-username and --etcd-password go together")]
    UserPassword,
    #[error("{flag} is given but --etcd-endpoints has the plain http:// endpoint {endpoint:?}; TLS needs https://")]
    TlsOverHttp {
        flag: &'static str,
        endpoint: String,
    },
    #[error("--public-ip: {ip} is a {kind} address; other nodes cannot reach this node there")]
    PublicIp { ip: Ipv4Addr, kind: &'static str },
    #[error("--public-ipv6: {ip} is a {kind} address; other nodes cannot reach this node there")]
    PublicIpv6 {
        ip: std::net::Ipv6Addr,
        kind: &'static str,
    },
    #[error("--log-level: {directive:?} in {value:?} is not a level (off, error, warn, info, debug, trace) or a filter directive such as twill=debug")]
    LogLevel { value: String, directive: String },
    /// The flag, the pattern and why it does not compile.
    #[error("{0}")]
    IfaceRegex(String),
    #[error("--iface: {0:?} is not an interface name or an IPv4 address")]
    Iface(String),
    #[error("--probe-interval: {0} s is out of range (1 to 300)")]
    ProbeInterval(u64),
}

/// Checks a `--log-level` value. `EnvFilter` takes any bare word as a
/// target name, so `warning` would be accepted as "everything from target
/// `warning`" and the agent would log nothing: a directive without `=` must
/// be a level here. Returns the offending directive.
pub fn check_log_level(value: &str) -> Result<(), String> {
    use tracing_subscriber::filter::{Directive, LevelFilter};
    if value.trim().is_empty() {
        return Err(value.to_string());
    }
    for d in value.split(',').map(str::trim) {
        if d.is_empty() {
            continue;
        }
        let ok = if d.contains('=') || d.contains('[') {
            d.parse::<Directive>().is_ok()
        } else {
            d.parse::<LevelFilter>().is_ok()
        };
        if !ok {
            return Err(d.to_string());
        }
    }
    Ok(())
}

/// Linux interface name rules (IFNAMSIZ and dev_valid_name).
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
}

impl Args {
    pub fn validate(&self) -> Result<(), ArgsError> {
        if self.etcd_endpoints.is_empty() {
            return Err(ArgsError::NoEndpoint);
        }
        for e in &self.etcd_endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"));
            if rest.is_none_or(|r| r.is_empty()) {
                return Err(ArgsError::Endpoint(e.clone()));
            }
        }
        if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.ends_with('/') {
            return Err(ArgsError::Prefix(self.etcd_prefix.clone()));
        }
        if !(10..=31_536_000).contains(&self.lease_ttl) {
            return Err(ArgsError::LeaseTtl(self.lease_ttl));
        }
        if !(1..=3600).contains(&self.resync_interval) {
            return Err(ArgsError::Resync(self.resync_interval));
        }
        if !valid_ifname(&self.bridge) {
            return Err(ArgsError::Bridge(self.bridge.clone()));
        }
        if self.etcd_certfile.is_some() != self.etcd_keyfile.is_some() {
            return Err(ArgsError::CertKeyPair);
        }
        if self.etcd_username.is_some() != self.etcd_password.is_some() {
            return Err(ArgsError::UserPassword);
        }
        let tls_flag = [
            ("--etcd-cafile", &self.etcd_cafile),
            ("--etcd-certfile", &self.etcd_certfile),
            ("--etcd-keyfile", &self.etcd_keyfile),
        ]
        .into_iter()
        .find_map(|(flag, f)| f.as_ref().map(|_| flag));
        if let Some(flag) = tls_flag {
            if let Some(e) = self
                .etcd_endpoints
                .iter()
                .find(|e| e.starts_with("http://"))
            {
                return Err(ArgsError::TlsOverHttp {
                    flag,
                    endpoint: e.clone(),
                });
            }
        }
        if let Some(ip) = self.public_ip {
            if let Some(kind) = unusable_underlay_address(ip) {
                return Err(ArgsError::PublicIp { ip, kind });
            }
        }
        if let Some(ip) = self.public_ipv6 {
            if let Some(kind) = crate::agent::underlay6::unusable_underlay_address6(ip) {
                return Err(ArgsError::PublicIpv6 { ip, kind });
            }
        }
        if let Some(bad) = self
            .iface
            .iter()
            .find(|i| i.parse::<Ipv4Addr>().is_err() && !valid_ifname(i))
        {
            return Err(ArgsError::Iface(bad.clone()));
        }
        UnderlaySelect::compile(&self.iface_regex).map_err(ArgsError::IfaceRegex)?;
        if let Err(directive) = check_log_level(&self.log_level) {
            return Err(ArgsError::LogLevel {
                value: self.log_level.clone(),
                directive,
            });
        }
        if !(1..=300).contains(&self.probe_interval) {
            return Err(ArgsError::ProbeInterval(self.probe_interval));
        }
        Ok(())
    }

    /// How the underlay interface is picked: every --iface,
    /// --iface-regex and --iface-can-reach (`validate` checked the
    /// patterns; one that does not compile is left out).
    pub fn underlay_select(&self) -> UnderlaySelect {
        UnderlaySelect {
            ifaces: self.iface.clone(),
            regexes: UnderlaySelect::compile(&self.iface_regex).unwrap_or_default(),
            can_reach: self.iface_can_reach,
        }
    }

    pub fn probe_interval(&self) -> Duration {
        Duration::from_secs(self.probe_interval)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease_ttl)
    }

    pub fn resync_interval(&self) -> Duration {
        Duration::from_secs(self.resync_interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Args {
        let mut v = vec!["twilld"];
        v.extend_from_slice(args);
        Args::try_parse_from(v).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        let a = parse(&[]);
        assert_eq!(a.etcd_prefix, "/twill/network");
        assert_eq!(a.lease_ttl, 86400);
        assert_eq!(a.subnet_file, PathBuf::from("/run/twill/subnet.env"));
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn endpoints_split_on_commas() {
        let a = parse(&[
            "--etcd-endpoints",
            "http://192.0.2.1:2379,https://192.0.2.2:2379",
        ]);
        assert_eq!(a.etcd_endpoints.len(), 2);
        assert_eq!(a.validate(), Ok(()));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let cases: Vec<(Vec<&str>, &str)> = vec![
            (
                vec!["--etcd-endpoints", "192.0.2.1:2379"],
                "--etcd-endpoints",
            ),
            (vec!["--etcd-prefix", "twill"], "--etcd-prefix"),
            (vec!["--etcd-prefix", "/twill/"], "--etcd-prefix"),
            (vec!["--lease-ttl", "5"], "--lease-ttl"),
            (vec!["--resync-interval", "0"], "--resync-interval"),
            (vec!["--bridge", "a-name-that-is-too-long"], "--bridge"),
            (vec!["--etcd-certfile", "/x.pem"], "--etcd-keyfile"),
            (vec!["--etcd-username", "root"], "--etcd-password"),
            (
                vec![
                    "--etcd-cafile",
                    "/ca.pem",
                    "--etcd-endpoints",
                    "http://192.0.2.1:2379",
                ],
                "--etcd-cafile",
            ),
            (
                vec![
                    "--etcd-certfile",
                    "/c.pem",
                    "--etcd-keyfile",
                    "/k.pem",
                    "--etcd-endpoints",
                    "https://192.0.2.1:2379,http://192.0.2.2:2379",
                ],
                "--etcd-certfile",
            ),
            (vec!["--public-ip", "127.0.0.1"], "--public-ip"),
            (vec!["--public-ip", "169.254.1.1"], "--public-ip"),
            (vec!["--public-ip", "0.0.0.0"], "--public-ip"),
            (vec!["--public-ipv6", "fe80::1"], "--public-ipv6"),
            (vec!["--public-ipv6", "::1"], "--public-ipv6"),
            (vec!["--public-ipv6", "::"], "--public-ipv6"),
            (vec!["--public-ipv6", "ff02::1"], "--public-ipv6"),
            (vec!["--log-level", "warning"], "--log-level"),
            (vec!["--log-level", "info,verbose"], "--log-level"),
            (vec!["--log-level", ""], "--log-level"),
            (vec!["--log-level", "twill=loud"], "--log-level"),
            (vec!["--probe-interval", "0"], "--probe-interval"),
            (vec!["--probe-interval", "301"], "--probe-interval"),
        ];
        for (args, flag) in cases {
            let err = parse(&args).validate().unwrap_err().to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }

    #[test]
    fn tls_over_https_and_good_log_levels_are_accepted() {
        let a = parse(&[
            "--etcd-cafile",
            "/ca.pem",
            "--etcd-endpoints",
            "https://192.0.2.1:2379",
        ]);
        assert_eq!(a.validate(), Ok(()));
        for level in [
            "info",
            "WARN",
            "off",
            "trace",
            "info,twill=debug,subnet_allocator=debug",
            "twill::agent=trace",
            "warn,twill[reconcile]=debug",
        ] {
            assert_eq!(check_log_level(level), Ok(()), "{level}");
        }
    }

    #[test]
    fn the_log_level_error_names_the_bad_directive() {
        let err = parse(&["--log-level", "info,warning"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"warning\""), "{err}");
    }

    #[test]
    fn underlay_addresses_other_nodes_can_reach_are_usable() {
        assert_eq!(unusable_underlay_address(Ipv4Addr::new(192, 0, 2, 1)), None);
        assert_eq!(unusable_underlay_address(Ipv4Addr::new(10, 0, 0, 1)), None);
        assert_eq!(
            unusable_underlay_address(Ipv4Addr::new(127, 3, 0, 1)),
            Some("loopback")
        );
        assert_eq!(
            unusable_underlay_address(Ipv4Addr::new(169, 254, 0, 9)),
            Some("link-local")
        );
    }

    #[test]
    fn probing_is_on_unless_told_not_to() {
        assert!(!parse(&[]).no_probe);
        assert!(parse(&["--no-probe"]).no_probe);
    }

    #[test]
    fn forwarding_is_set_unless_told_not_to() {
        assert!(!parse(&[]).no_set_forwarding);
        assert!(parse(&["--no-set-forwarding"]).no_set_forwarding);
        assert!(!parse(&[]).no_tunnel_filter);
        assert!(parse(&["--no-tunnel-filter"]).no_tunnel_filter);
    }

    #[test]
    fn cleanup_takes_bridge_and_subnet_file_after_the_subcommand() {
        let a = parse(&["cleanup", "--bridge", "br9", "--subnet-file", "/tmp/x.env"]);
        assert!(matches!(a.command, Some(Command::Cleanup)));
        assert_eq!(a.bridge, "br9");
        assert_eq!(a.subnet_file, PathBuf::from("/tmp/x.env"));
    }

    #[test]
    fn status_takes_etcd_flags_after_the_subcommand() {
        let a = parse(&[
            "status",
            "--json",
            "--etcd-endpoints",
            "http://192.0.2.254:2379",
            "--etcd-prefix",
            "/coreos.com/network",
            "--log-level",
            "warn",
        ]);
        assert!(matches!(
            a.command,
            Some(Command::Status {
                json: true,
                agent: None
            })
        ));
        assert_eq!(
            a.etcd_endpoints,
            vec!["http://192.0.2.254:2379".to_string()]
        );
        assert_eq!(a.etcd_prefix, "/coreos.com/network");
        assert_eq!(a.log_level, "warn");
    }

    #[test]
    fn unparseable_values_are_refused_by_clap() {
        assert!(Args::try_parse_from(["twilld", "--public-ip", "not-an-ip"]).is_err());
        assert!(Args::try_parse_from(["twilld", "--lease-ttl", "-1"]).is_err());
        assert!(Args::try_parse_from(["twilld", "--log-format", "xml"]).is_err());
    }

    #[test]
    fn underlay_flags_repeat_and_are_checked() {
        let a = parse(&[
            "--iface",
            "eth1",
            "--iface",
            "192.0.2.9",
            "--iface-regex",
            "^en",
            "--iface-regex",
            r"^198\.18\.",
            "--iface-can-reach",
            "192.0.2.254",
        ]);
        assert_eq!(a.validate(), Ok(()));
        let s = a.underlay_select();
        assert_eq!(s.ifaces, ["eth1", "192.0.2.9"]);
        let patterns: Vec<&str> = s.regexes.iter().map(|r| r.as_str()).collect();
        assert_eq!(patterns, ["^en", r"^198\.18\."]);
        assert_eq!(s.can_reach, Some(Ipv4Addr::new(192, 0, 2, 254)));
        // A pattern that does not compile, an interface name that cannot
        // be one: refused, naming the flag.
        let e = parse(&["--iface-regex", "^en(["]).validate().unwrap_err();
        assert!(
            e.to_string().starts_with("--iface-regex \"^en([\": "),
            "{e}"
        );
        let e = parse(&["--iface", "eth 0"]).validate().unwrap_err();
        assert_eq!(e, ArgsError::Iface("eth 0".into()));
        assert!(e.to_string().starts_with("--iface: "), "{e}");
        assert!(Args::try_parse_from(["twilld", "--iface-can-reach", "eth0"]).is_err());
    }
}
