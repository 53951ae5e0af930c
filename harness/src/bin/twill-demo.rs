//! twill-demo: brings up etcd, 3 hosts running `twilld` and 2 pods per host
//! in namespaces, prints the leases and a pod-to-pod ping matrix, and tears
//! it all down (also on Ctrl-C / SIGTERM). `--keep` keeps it up until then.
//! `--ipv6-only` builds an IPv6-only cluster (`EnableIPv4: false`) on an
//! IPv6-only underlay instead: no IPv4 address in any namespace.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{SigSet, Signal};
use twill_harness::cluster::namespaces_with_prefix;
use twill_harness::{Cluster, Prereqs, CLUSTER_TOOLS};

/// Fixed so `scripts/demo.sh --down` can find leftovers.
const PREFIX: &str = "twdemo";
const HOSTS: usize = 3;
const PODS_PER_HOST: usize = 2;

static STOP: AtomicBool = AtomicBool::new(false);

fn usage() -> &'static str {
    "usage: twill-demo [--keep] [--ipv6-only]\n  --keep       leave the cluster running until Ctrl-C\n  --ipv6-only  an IPv6-only cluster on an IPv6-only underlay (2001:db8::/64, pods in fd00:10:244::/48)"
}

fn main() -> ExitCode {
    let (mut keep, mut ipv6_only) = (false, false);
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--keep" => keep = true,
            "--ipv6-only" => ipv6_only = true,
            "-h" | "--help" => {
                println!("{}", usage());
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("twill-demo: unknown argument {other:?}\n{}", usage());
                return ExitCode::from(2);
            }
        }
    }
    // Blocked here, before any thread exists, so every thread inherits the
    // mask and only the waiter below sees them; std resets the mask for
    // the children it spawns, so etcd and twilld still get SIGTERM.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(e) = signals.thread_block() {
        eprintln!("twill-demo: cannot block signals: {e}");
        return ExitCode::from(2);
    }
    std::thread::spawn(move || {
        if let Ok(sig) = signals.wait() {
            eprintln!("\ntwill-demo: got {sig}, tearing down...");
            STOP.store(true, Ordering::SeqCst);
        }
    });
    match run(keep, ipv6_only) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("twill-demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn interrupted() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Returns whether every ping succeeded. The cluster is torn down when it
/// goes out of scope, whichever way this returns.
fn run(keep: bool, ipv6_only: bool) -> Result<bool> {
    Prereqs::new()
        .root()
        .tools(CLUSTER_TOOLS)
        .built(&["twilld", "twill"])
        .hint("scripts/demo.sh installs and builds them")
        .check()?;
    let leftovers = namespaces_with_prefix(&format!("{PREFIX}-"))?;
    if !leftovers.is_empty() {
        bail!("demo namespaces already exist ({leftovers:?}): another demo is running, or run `scripts/demo.sh --down`");
    }
    let kind = if ipv6_only { "IPv6-only " } else { "" };
    println!("building {kind}underlay, etcd and {HOSTS} hosts...");
    let mut c = Cluster::builder()
        .prefix(PREFIX)
        .hosts(HOSTS)
        .ipv6_only(ipv6_only)
        .own_process_group(true)
        .build()
        .context("building the cluster")?;
    interrupted()?;
    println!("starting twilld on every host...");
    c.start_agents()?;
    c.wait_converged()
        .context("waiting for the agents to converge")?;
    interrupted()?;
    for h in 1..=HOSTS {
        for p in 1..=PODS_PER_HOST {
            let (host, pod) = (format!("h{h}"), format!("h{h}p{p}"));
            c.add_pod(&host, &pod)
                .with_context(|| format!("adding pod {pod} on {host}"))?;
            interrupted()?;
        }
    }

    println!("\nnamespaces (enter with `ip netns exec <name> bash`):");
    println!(
        "  {:<14} underlay bridge ul0, etcd at {}",
        c.underlay().name(),
        c.etcd().endpoint()
    );
    for h in c.hosts() {
        let ip = h
            .ipv6()
            .map_or_else(|| h.ip().to_string(), |ip6| ip6.to_string());
        println!("  {:<14} host {} ({ip})", h.ns().name(), h.name());
    }
    for p in c.pods() {
        println!(
            "  {:<14} pod {} on {} ({})",
            p.ns().name(),
            p.name(),
            p.host(),
            c.pod_addr(p)
        );
    }

    if ipv6_only {
        let v4: Vec<String> = c
            .ipv4_addresses_everywhere()?
            .into_iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(ns, a)| format!("{ns}: {}", a.join(", ")))
            .collect();
        if v4.is_empty() {
            println!("  (no IPv4 address in any of them, loopback included)");
        } else {
            bail!("IPv4 addresses in an IPv6-only cluster: {v4:?}");
        }
        print_leases6(&c)?;
    } else {
        print_leases(&c)?;
    }
    let all_ok = print_ping_matrix(&c)?;
    if !all_ok {
        eprintln!("{}", c.diagnostics());
    }

    if keep {
        println!(
            "cluster is up (logs in {}); press Ctrl-C to tear it down",
            c.dir().display()
        );
        while !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    println!("tearing down...");
    Ok(all_ok)
}

fn print_leases(c: &Cluster) -> Result<()> {
    println!("\nleases in etcd:");
    println!(
        "  {:<5} {:<16} {:<12} VtepMAC",
        "host", "subnet", "PublicIP"
    );
    for (subnet, lease) in c.leases()? {
        let host = c
            .hosts()
            .iter()
            .find(|h| h.ip() == lease.public_ip)
            .map_or("?", |h| h.name());
        println!(
            "  {:<5} {:<16} {:<12} {}",
            host,
            subnet.to_string(),
            lease.public_ip.to_string(),
            lease.vtep_mac().unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

/// The leases of an IPv6-only cluster, by IPv6 subnet (they all share the
/// IPv4 part `0.0.0.0-0` of their key).
fn print_leases6(c: &Cluster) -> Result<()> {
    println!("\nleases in etcd (IPv6-only: key 0.0.0.0-0&<subnet>):");
    println!(
        "  {:<5} {:<22} {:<14} VtepMAC",
        "host", "IPv6 subnet", "PublicIPv6"
    );
    for (subnet, lease) in c.leases6()? {
        let host = c
            .hosts()
            .iter()
            .find(|h| h.ipv6().is_some() && h.ipv6() == lease.public_ipv6)
            .map_or("?", |h| h.name());
        let vtep = lease.backend_v6_data.and_then(|b| b.vtep_mac);
        println!(
            "  {:<5} {:<22} {:<14} {}",
            host,
            subnet.to_string(),
            lease
                .public_ipv6
                .map_or_else(|| "-".into(), |ip| ip.to_string()),
            vtep.unwrap_or_else(|| "-".into())
        );
    }
    Ok(())
}

/// Prints who reaches whom; whether every ping succeeded.
fn print_ping_matrix(c: &Cluster) -> Result<bool> {
    println!("\nping matrix (row pings column):");
    let pods: Vec<(String, std::net::IpAddr)> = c
        .pods()
        .iter()
        .map(|p| (p.name().to_owned(), c.pod_addr(p)))
        .collect();
    print!("  {:<6}", "");
    for (n, _) in &pods {
        print!(" {n:<6}");
    }
    println!();
    let mut all_ok = true;
    for (from, _) in &pods {
        print!("  {from:<6}");
        for (to, ip) in &pods {
            interrupted()?;
            let cell = if from == to {
                "-"
            } else if c.ping_within(from, *ip, Duration::from_secs(3)) {
                "ok"
            } else {
                all_ok = false;
                "FAIL"
            };
            print!(" {cell:<6}");
        }
        println!();
    }
    println!(
        "\n{}",
        if all_ok {
            "all pods reach each other"
        } else {
            "SOME PINGS FAILED"
        }
    );
    Ok(all_ok)
}
