//! `twilld`: parse the flags, set up logging, run the agent. Everything
//! else lives in the `twill` library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use subnet_allocator::{EtcdOptions, EtcdStore, LeaseStore};
use tracing_subscriber::EnvFilter;
use twill::agent::{Agent, AgentConfig};
use twill::cli::{Args, Command, LogFormat};

fn init_logging(args: &Args) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "--log-level: {:?} is not a valid level or filter",
            args.log_level
        )
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
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

async fn status(args: &Args, json: bool) -> anyhow::Result<()> {
    let store = EtcdStore::connect(etcd_options(args))
        .await
        .context("connecting to etcd")?;
    let snap = store.list_leases().await.context("listing leases")?;
    let mut rows = Vec::new();
    for l in &snap.leases {
        // The list does not carry TTLs; ask etcd per lease for the status view.
        let ttl = match l.lease_id {
            Some(id) => lease_ttl(&store, id).await,
            None => None,
        };
        rows.push((l, ttl));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(l, ttl)| {
                serde_json::json!({
                    "subnet": l.subnet.to_string(),
                    "publicIP": l.attrs.public_ip.to_string(),
                    "backendType": l.attrs.backend_type,
                    "vtepMAC": l.attrs.backend_data.as_ref().map(|d| d.vtep_mac.clone()),
                    "ttlSeconds": ttl.map(|t| t.as_secs()),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<16} {:<10} {:<18} TTL",
        "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC"
    );
    for (l, ttl) in rows {
        let mac = l
            .attrs
            .backend_data
            .as_ref()
            .map(|d| d.vtep_mac.as_str())
            .unwrap_or("-");
        let ttl = ttl
            .map(|t| format!("{}s", t.as_secs()))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<16} {:<10} {:<18} {}",
            l.subnet.to_string(),
            l.attrs.public_ip.to_string(),
            l.attrs.backend_type,
            mac,
            ttl
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
    if let Err(e) = twill::masq::remove().await {
        errors.push(format!("removing the ip-masq table: {e}"));
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
        Some(Command::Status { json }) => return status(&args, *json).await,
        Some(Command::Cleanup) => return cleanup(&args).await,
        Some(Command::InstallCni(a)) => {
            let (bin, conf) = twill::install::install_cni(a)?;
            println!("installed {} and {}", bin.display(), conf.display());
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
            Err(e) => {
                tracing::warn!(error = %e, endpoints = ?args.etcd_endpoints, "cannot reach etcd, retrying in 2s");
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    _ = &mut stop => return Ok(()),
                }
            }
        }
    };
    let opts = AgentConfig {
        iface: args.iface.clone(),
        public_ip: args.public_ip,
        node_name: args.node_name.clone().or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        }),
        subnet_file: args.subnet_file.clone(),
        lease_ttl: args.lease_ttl(),
        resync_interval: args.resync_interval(),
        bridge: args.bridge.clone(),
        telemetry,
        ip_masq: args.ip_masq,
    };
    let datapath = twill::datapath::NetlinkDatapath::connect().context("opening netlink")?;
    let agent = match Agent::start(store, datapath, opts, &mut stop).await {
        Ok(a) => a,
        Err(twill::agent::AgentError::Interrupted) => return Ok(()),
        Err(e) => return Err(e).context("starting the agent"),
    };
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

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("twilld: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = init_logging(&args) {
        eprintln!("twilld: {e:#}");
        return ExitCode::from(2);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("twilld: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = error_chain(&e);
            tracing::error!("{msg}");
            eprintln!("twilld: {msg}");
            ExitCode::FAILURE
        }
    }
}
