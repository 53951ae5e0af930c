//! `twilld`: parse the flags, set up logging, run the agent. Everything
//! else lives in the `twill` library.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use subnet_allocator::{EtcdOptions, EtcdStore, LeaseStore, StoreError};
use tracing_subscriber::EnvFilter;
use twill::agent::{Agent, AgentConfig, AgentError};
use twill::cli::{Args, Command, LogFormat};

/// Exit status of a refused configuration (a bad flag, TLS file, network
/// config or underlay): final, never retried.
const EXIT_CONFIG: u8 = 2;

/// A writer whose writes never fail for a reader that went away: with
/// `twilld 2>&1 | head -1` the pipe closes after one line, and losing the
/// log lines must not cost the agent (tracing's writer would otherwise
/// report the failure on stderr, which panics on the same closed pipe).
struct IgnoreClosedPipe<W>(W);

impl<W: Write> Write for IgnoreClosedPipe<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(buf.len()),
            r => r,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            r => r,
        }
    }
}

fn stderr() -> IgnoreClosedPipe<std::io::Stderr> {
    IgnoreClosedPipe(std::io::stderr())
}

/// `eprintln!` that cannot panic: it panics when stderr is a closed pipe.
fn say(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(stderr(), "twilld: {msg}");
}

fn init_logging(args: &Args) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "--log-level: {:?} is not a valid level or filter",
            args.log_level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(stderr)
        // A failed write is reported with eprintln!, which panics when the
        // failure was a closed stderr.
        .log_internal_errors(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn etcd_options(args: &Args) -> EtcdOptions {
    EtcdOptions {
        endpoints: args.etcd_endpoints.clone(),
        prefix: args.etcd_prefix.clone(),
        ca_file: args.etcd_cafile.clone(),
        cert_file: args.etcd_certfile.clone(),
        key_file: args.etcd_keyfile.clone(),
        username: args.etcd_username.clone(),
        password: args.etcd_password.clone(),
    }
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal(
) -> anyhow::Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(Box::pin(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("got SIGTERM"),
            _ = int.recv() => tracing::info!("got SIGINT"),
        }
    }))
}

/// Seconds left on an etcd lease, if etcd still knows it.
async fn lease_ttl(store: &EtcdStore, id: i64) -> Option<std::time::Duration> {
    let mut client = store.client().clone();
    let resp = client.lease_time_to_live(id, None).await.ok()?;
    u64::try_from(resp.ttl())
        .ok()
        .map(std::time::Duration::from_secs)
}

/// A lease's subnet, public address and VTEP MAC as `status` shows them:
/// an IPv6-only lease (whose IPv4 part is `0.0.0.0/0`) by its IPv6 ones.
fn shown(l: &subnet_allocator::Lease) -> (String, String, &str) {
    let (subnet, ip, data) = match (l.ipv6_subnet, l.attrs.public_ipv6) {
        (Some(s6), Some(ip6)) if l.is_ipv6_only() => (
            s6.to_string(),
            ip6.to_string(),
            l.attrs.backend_v6_data.as_ref(),
        ),
        _ => (
            l.subnet.to_string(),
            l.attrs.public_ip.to_string(),
            l.attrs.backend_data.as_ref(),
        ),
    };
    (subnet, ip, data.map(|d| d.vtep_mac.as_str()).unwrap_or("-"))
}

async fn status(args: &Args, json: bool, agent: Option<SocketAddr>) -> anyhow::Result<()> {
    let store = EtcdStore::connect(etcd_options(args))
        .await
        .context("connecting to etcd")?;
    let mut leases = store.list_leases().await.context("listing leases")?.leases;
    // By address, not by key text (where 10.244.10.0 sorts before 10.244.2.0).
    leases.sort_by_key(|l| (l.subnet, l.ipv6_subnet));
    let mut rows = Vec::new();
    for l in &leases {
        // The list does not carry TTLs; ask etcd per lease for the status view.
        let ttl = match l.lease_id {
            Some(id) => lease_ttl(&store, id).await,
            None => None,
        };
        rows.push((l, ttl));
    }
    // The local agent's view of each peer, when asked for.
    let peers = match agent {
        Some(addr) => Some(twill::probe::client::fetch(addr).await?),
        None => None,
    };
    let probe_of = |l: &subnet_allocator::Lease| {
        peers.as_ref().map(|v| {
            twill::probe::client::column(
                v,
                &twill::probe::client::peer_key((l.subnet, l.ipv6_subnet)),
            )
        })
    };
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(l, ttl)| {
                let mut row = serde_json::json!({
                    "subnet": l.subnet.to_string(),
                    "publicIP": l.attrs.public_ip.to_string(),
                    "backendType": l.attrs.backend_type,
                    "vtepMAC": l.attrs.backend_data.as_ref().map(|d| d.vtep_mac.clone()),
                    "ttlSeconds": ttl.map(|t| t.as_secs()),
                });
                if let Some(s6) = l.ipv6_subnet {
                    row["ipv6Subnet"] = s6.to_string().into();
                    row["publicIPv6"] = l.attrs.public_ipv6.map(|a| a.to_string()).into();
                    row["vtepMACv6"] = l
                        .attrs
                        .backend_v6_data
                        .as_ref()
                        .map(|d| d.vtep_mac.clone())
                        .into();
                }
                if let Some(p) = probe_of(l) {
                    row["probe"] = p.into();
                }
                // A dual-stack lease's IPv6 pod path, probed on its own.
                let key6 = twill::probe::client::peer_key6((l.subnet, l.ipv6_subnet));
                if let (Some(v), Some(s6)) = (peers.as_ref(), key6) {
                    row["probe6"] = twill::probe::client::column(v, &s6).into();
                }
                row
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    // The probe column, when asked for, after a TTL column padded for it.
    let with_probe = |ttl: &str, probe: Option<String>| match probe {
        Some(p) => format!("{ttl:<8}  {p}"),
        None => ttl.to_string(),
    };
    println!(
        "{:<20} {:<16} {:<10} {:<18} {}",
        "SUBNET",
        "PUBLIC IP",
        "BACKEND",
        "VTEP MAC",
        with_probe("TTL", peers.as_ref().map(|_| "PROBE".to_string()))
    );
    for (l, ttl) in rows {
        let (subnet, public_ip, mac) = shown(l);
        let ttl = ttl
            .map(|t| format!("{}s", t.as_secs()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<16} {:<10} {:<18} {}",
            subnet,
            public_ip,
            l.attrs.backend_type,
            mac,
            with_probe(
                &ttl,
                peers
                    .as_ref()
                    .map(|v| twill::probe::client::row_column(v, (l.subnet, l.ipv6_subnet)))
            )
        );
    }
    Ok(())
}

async fn cleanup(args: &Args) -> anyhow::Result<()> {
    let kernel = twill::kernel::Kernel::connect().context("opening netlink")?;
    let mut errors: Vec<String> = twill::kernel::cleanup(&kernel, &args.bridge)
        .await
        .iter()
        .map(|e| e.to_string())
        .collect();
    match twill::masq::remove().await {
        Ok(true) => tracing::info!("removed the ip-masq tables"),
        Ok(false) => {}
        Err(e) => errors.push(format!("removing the ip-masq tables: {e}")),
    }
    if let Err(e) = twill::guard::remove().await {
        errors.push(format!("removing the isolation tables: {e}"));
    }
    match std::fs::remove_file(&args.subnet_file) {
        Ok(()) => tracing::info!(path = %args.subnet_file.display(), "removed subnet file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %args.subnet_file.display(), error = %e, "cannot remove subnet file")
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        tracing::error!("{e}");
    }
    anyhow::bail!("cleanup left {} error(s)", errors.len())
}

async fn run(args: Args) -> anyhow::Result<()> {
    match &args.command {
        Some(Command::Status { json, agent }) => return status(&args, *json, *agent).await,
        Some(Command::Cleanup) => return cleanup(&args).await,
        Some(Command::WireguardDevice(a)) => {
            let opts = twill::wireguard::device::HelperOptions {
                ifname: a.ifname.clone(),
                socket: a.socket.clone(),
                grace: std::time::Duration::from_secs(a.grace_seconds),
            };
            return Ok(twill::wireguard::device::serve(opts).await?);
        }
        Some(Command::InstallCni(a)) => {
            let keys = twill::install::PluginKeys {
                bridge: args.bridge.clone(),
                subnet_file: args.subnet_file.clone(),
            };
            let done = twill::install::install_cni(a, &keys)?;
            for w in &done.warnings {
                tracing::warn!("{w}");
            }
            if let Some(p) = &done.portmap_copied {
                println!("installed {}", p.display());
            }
            println!(
                "installed {} and {}",
                done.plugin.display(),
                done.conflist.display()
            );
            return Ok(());
        }
        None => {}
    }
    let telemetry = std::sync::Arc::new(twill::telemetry::Telemetry::new());
    if let Some(addr) = args.healthz_addr {
        let bound = twill::health::serve(addr, telemetry.clone())
            .await
            .with_context(|| format!("--healthz-addr: cannot listen on {addr}"))?;
        tracing::info!(addr = %bound, "serving /healthz");
    }
    let mut stop = shutdown_signal()?;
    let store = loop {
        match EtcdStore::connect(etcd_options(&args)).await {
            Ok(s) => break s,
            Err(e) if e.is_final() => {
                telemetry.count_etcd_error("connecting to etcd");
                let flag = etcd_flag_of(&args, &e);
                return Err(anyhow::Error::new(e).context(flag));
            }
            Err(e) => {
                telemetry.count_etcd_error("connecting to etcd");
                tracing::warn!(error = %e, endpoints = ?args.etcd_endpoints, "cannot reach etcd, retrying in 2s");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = &mut stop => return Ok(()),
                }
            }
        }
    };
    let opts = AgentConfig {
        iface: args.iface.first().cloned(),
        public_ip: args.public_ip,
        node_name: args.node_name.clone().filter(|n| !n.is_empty()),
        subnet_file: args.subnet_file.clone(),
        lease_ttl: args.lease_ttl(),
        resync_interval: args.resync_interval(),
        bridge: args.bridge.clone(),
        telemetry: telemetry.clone(),
        ip_masq: args.ip_masq,
        set_forwarding: !args.no_set_forwarding,
        underlay_select: args.underlay_select(),
        tunnel_filter: !args.no_tunnel_filter,
        wireguard_dir: args.wireguard_dir.clone(),
        public_ipv6: args.public_ipv6,
    };
    let datapath = twill::datapath::NetlinkDatapath::connect().context("opening netlink")?;
    let agent = match Agent::start(store, datapath, opts, &mut stop).await {
        Ok(a) => a,
        Err(twill::agent::AgentError::Interrupted) => return Ok(()),
        Err(e) => return Err(e).context("starting the agent"),
    };
    spawn_prober(&args, &agent, &telemetry);
    match twill::notify::notify("READY=1") {
        Ok(true) => tracing::info!("told systemd READY=1"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot notify systemd"),
    }
    match agent.run(stop).await {
        // SIGTERM while retrying etcd is a clean stop too.
        Ok(()) | Err(twill::agent::AgentError::Interrupted) => Ok(()),
        Err(e) => Err(e).context("agent stopped with an error"),
    }
}

/// Starts probing the peers through the overlay (src/probe). Without a
/// raw ICMP socket (no CAP_NET_RAW) the agent runs on without it.
fn spawn_prober<S, D>(
    args: &Args,
    agent: &Agent<S, D>,
    telemetry: &std::sync::Arc<twill::telemetry::Telemetry>,
) where
    S: subnet_allocator::LeaseStore + 'static,
    D: twill::datapath::Datapath,
{
    if args.no_probe {
        tracing::info!("peer probing is off (--no-probe): /peers and twill_peer_* stay empty");
        return;
    }
    match twill::probe::Prober::open(args.probe_interval(), telemetry.clone()) {
        Ok(p) => {
            tracing::info!(interval = ?args.probe_interval(), per_round = twill::probe::MAX_PEERS_PER_ROUND, "probing peers through the overlay");
            tokio::spawn(p.run(agent.peers()));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot open a raw ICMP socket: peer probing is off (/peers and twill_peer_* stay empty)")
        }
    }
}

/// The flag behind a final etcd connection error, to name it.
fn etcd_flag_of(args: &Args, e: &StoreError) -> &'static str {
    match e {
        StoreError::TlsFile { path, .. } => [
            ("--etcd-cafile", &args.etcd_cafile),
            ("--etcd-certfile", &args.etcd_certfile),
            ("--etcd-keyfile", &args.etcd_keyfile),
        ]
        .into_iter()
        .find(|(_, f)| f.as_deref() == Some(path.as_path()))
        .map_or("etcd TLS file", |(flag, _)| flag),
        StoreError::Auth { .. } => "--etcd-username/--etcd-password",
        _ => "--etcd-endpoints",
    }
}

/// 2 for a refused configuration, 1 for anything else.
fn exit_code(e: &anyhow::Error) -> u8 {
    let config = e.chain().any(|c| {
        c.downcast_ref::<AgentError>()
            .is_some_and(AgentError::is_config)
            || c.downcast_ref::<StoreError>()
                .is_some_and(twill::agent::is_config_store_error)
    });
    if config {
        EXIT_CONFIG
    } else {
        1
    }
}

/// The error and its causes on one line, each cause once: some library
/// errors already quote their source in their own message.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// The last line of a failed run, in the log format asked for: with
/// `--log-format json` a JSON object like every other line (through the
/// installed logger when it lets errors through, else a logger of its own),
/// with text a plain line.
fn fatal(format: LogFormat, msg: &str) {
    match format {
        LogFormat::Text => say(format_args!("{msg}")),
        LogFormat::Json if tracing::enabled!(tracing::Level::ERROR) => {
            tracing::error!("{msg}")
        }
        LogFormat::Json => {
            let own = tracing_subscriber::fmt()
                .json()
                .with_writer(stderr)
                .log_internal_errors(false)
                .finish();
            tracing::subscriber::with_default(own, || tracing::error!("{msg}"));
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        fatal(args.log_format, &e.to_string());
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Err(e) = init_logging(&args) {
        fatal(args.log_format, &format!("{e:#}"));
        return ExitCode::from(EXIT_CONFIG);
    }
    // The WireGuard helper is one loop moving packets: on one thread, the
    // I/O driver wakes it without a hand-off between threads.
    let mut builder = match args.command {
        Some(Command::WireguardDevice(_)) => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            fatal(args.log_format, &format!("cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let args_format = args.log_format;
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = error_chain(&e);
            if args_format == LogFormat::Text {
                // The log line, and a last one without log decoration.
                tracing::error!("{msg}");
            }
            fatal(args_format, &msg);
            ExitCode::from(exit_code(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader is gone.
    struct ClosedPipe;

    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }

    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::StorageFull.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_swallows_the_line() {
        let mut w = IgnoreClosedPipe(ClosedPipe);
        assert!(writeln!(w, "a log line").is_ok());
        assert!(w.flush().is_ok());
        // Other errors still reach tracing, which drops them quietly.
        assert!(IgnoreClosedPipe(Full).write(b"x").is_err());
    }

    #[test]
    fn configuration_errors_exit_2() {
        let kernel = AgentError::Kernel(twill::kernel::KernelError::VxlanConflict {
            device: "flannel.1".into(),
            vni: 1,
            port: 8472,
            ours: "twill.1".into(),
        });
        assert_eq!(
            exit_code(&anyhow::Error::new(kernel).context("starting the agent")),
            EXIT_CONFIG
        );
        let tls = StoreError::TlsFile {
            path: "/etc/twill/ca.pem".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(exit_code(&anyhow::Error::new(tls)), EXIT_CONFIG);
        let down = AgentError::Store(StoreError::LeaseGone("10.244.1.0/24".parse().unwrap()));
        assert_eq!(exit_code(&anyhow::Error::new(down)), 1);
    }

    #[test]
    fn a_tls_file_error_names_its_flag() {
        let args = Args::parse_from([
            "twilld",
            "--etcd-cafile",
            "/ca.pem",
            "--etcd-certfile",
            "/c.pem",
            "--etcd-keyfile",
            "/k.pem",
        ]);
        let e = |p: &str| StoreError::TlsFile {
            path: p.into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(etcd_flag_of(&args, &e("/ca.pem")), "--etcd-cafile");
        assert_eq!(etcd_flag_of(&args, &e("/c.pem")), "--etcd-certfile");
        assert_eq!(etcd_flag_of(&args, &e("/k.pem")), "--etcd-keyfile");
    }
}
