//! Peer probing's cost (issue 13): `twilld` CPU with probing at its default
//! interval against the same agent with probing held off
//! (`--probe-interval 300`: one round at start, none in the window), idle at
//! 3 nodes and with 1,000 simulated peers that answer.
//!
//! The simulated peers are fake vxlan leases whose VTEP addresses
//! (`<subnet>.0`) and public IPs live in the underlay namespace, on a VXLAN
//! device there: h1's probes go through its real tunnel, are decapsulated,
//! answered by the underlay namespace's kernel and come back encapsulated,
//! as from 1,000 nodes.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use twill_harness::probe::http_get;
use twill_harness::Cluster;

use crate::footprint::{clk_tck, sample, twilld_pid, wait_routes, write_leases_around};
use crate::results::{BenchOutput, Target};

#[derive(Debug, Clone)]
pub struct ProbeOpts {
    pub peers: u32,
    pub reps: usize,
    /// How long each CPU figure is measured.
    pub window: Duration,
}

const HEALTH_PORT: u16 = 10271;
const OFF: &[&str] = &["--probe-interval", "300"];
const DEFAULT: &[&str] = &[];

/// CPU of h1's agent over `window`, in % of a core.
fn cpu_pct(c: &Cluster, window: Duration) -> anyhow::Result<f64> {
    let tck = clk_tck();
    let pid = twilld_pid(c.host("h1")?.ns().name())?;
    let a = sample(pid, tck)?;
    let t = Instant::now();
    std::thread::sleep(window);
    let b = sample(pid, tck)?;
    Ok((b.cpu_s - a.cpu_s) / t.elapsed().as_secs_f64() * 100.0)
}

/// Restarts h1's agent with `args`, lets it settle, measures its CPU.
fn restart_and_measure(c: &mut Cluster, args: &[&str], window: Duration) -> anyhow::Result<f64> {
    c.stop_agent("h1")?;
    c.start_agent_with("h1", args)?;
    std::thread::sleep(Duration::from_secs(4));
    cpu_pct(c, window)
}

/// Makes the fake leases answer probes: their public IPs and VTEP
/// addresses on a VXLAN device in the underlay namespace (whose ingress
/// takes frames to any MAC as its own), and the way back to h1's subnet
/// through it.
fn answer_as_peers(c: &Cluster) -> anyhow::Result<()> {
    let leases = c.leases()?;
    let own = c.subnet_of("h1")?;
    let h1 = c.host("h1")?.ip();
    let h1_mac = leases
        .get(&own)
        .and_then(|l| l.vtep_mac())
        .ok_or_else(|| anyhow::anyhow!("h1's lease has no VTEP MAC"))?;
    let mut batch = String::from(
        "link add sim0 type vxlan id 1 dstport 8472 nolearning\nlink set sim0 promisc on up\n",
    );
    for (subnet, l) in leases.iter().filter(|(s, _)| **s != own) {
        batch.push_str(&format!("addr add {}/32 dev ul0\n", l.public_ip));
        batch.push_str(&format!("addr add {}/32 dev sim0\n", subnet.network()));
    }
    batch.push_str(&format!(
        "route add {own} via {} dev sim0 onlink\nneigh add {} lladdr {h1_mac} dev sim0 nud permanent\n",
        own.network(),
        own.network()
    ));
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("sim.batch");
    std::fs::write(&file, batch)?;
    let ul = c.underlay();
    ul.exec_ok(&["ip", "-batch", &file.to_string_lossy()])?;
    // Frames to the fake VTEP MACs are the host's (not another host's) for
    // IP; and the replies leave by sim0, not by where the probes came in.
    let rules = dir.path().join("sim.nft");
    std::fs::write(
        &rules,
        "table netdev hpsim {\n chain in {\n  type filter hook ingress device \"sim0\" priority 0; policy accept;\n  meta pkttype set host\n }\n}\n",
    )?;
    ul.exec_ok(&["nft", "-f", &rules.to_string_lossy()])?;
    for dev in ["all", "default", "sim0", "ul0"] {
        ul.exec_ok(&[
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv4.conf.{dev}.rp_filter=0"),
        ])?;
    }
    ul.exec_ok(&[
        "bridge",
        "fdb",
        "append",
        &h1_mac,
        "dev",
        "sim0",
        "dst",
        &h1.to_string(),
    ])?;
    // h1 reaches the fake public IPs through the underlay namespace.
    c.host("h1")?.ns().exec_ok(&[
        "ip",
        "route",
        "add",
        "198.18.0.0/15",
        "via",
        &twill_harness::cluster::UNDERLAY_IP.to_string(),
    ])?;
    Ok(())
}

pub fn run(opts: &ProbeOpts) -> anyhow::Result<BenchOutput> {
    let n = opts.peers;
    let secs = opts.window.as_secs();
    let mut out = BenchOutput::new(
        "probe",
        "4b. Peer probing",
        &format!(
            "twilld CPU (utime+stime from /proc over a {secs} s window) of h1 with peer probing at \
             the default interval (5 s, at most 256 peers a round) and held off (--probe-interval \
             300), idle at 3 nodes, and with {n} simulated peers: fake vxlan leases whose VTEP \
             addresses answer from a VXLAN device in the underlay namespace, through h1's real \
             tunnel. The agent is restarted between the two settings; the data path stays. \
             Peers reachable and lost are counted in the last /peers view of the window \
             (published once an interval)."
        ),
    );
    for _ in 0..opts.reps {
        let mut c = Cluster::builder().hosts(3).resync_interval(3600).build()?;
        c.start_agents()?;
        c.wait_converged()?;
        let on = restart_and_measure(&mut c, DEFAULT, opts.window)?;
        let off = restart_and_measure(&mut c, OFF, opts.window)?;
        out.push("twilld CPU idle at 3 nodes, probing", "% of a core", on);
        out.push(
            "twilld CPU idle at 3 nodes, probing off",
            "% of a core",
            off,
        );
        drop(c);

        let mut c = Cluster::builder()
            .hosts(1)
            .resync_interval(3600)
            .agent_args(["--healthz-addr", &format!("127.0.0.1:{HEALTH_PORT}")])
            .network_config(
                r#"{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#,
            )
            .build()?;
        c.start_agent_with("h1", OFF)?;
        let own = c.wait_subnet_file("h1")?.node_subnet();
        write_leases_around(&c, own, n)?;
        wait_routes(&c, n)?;
        answer_as_peers(&c)?;
        let off = restart_and_measure(&mut c, OFF, opts.window)?;
        let on = restart_and_measure(&mut c, DEFAULT, opts.window)?;
        let (reachable, lost) = peer_counts(&c)?;
        let rss = sample(twilld_pid(c.host("h1")?.ns().name())?, clk_tck())?.rss_mib;
        out.push(
            &format!("twilld CPU with {n} peers, probing"),
            "% of a core",
            on,
        );
        out.push(
            &format!("twilld CPU with {n} peers, probing off"),
            "% of a core",
            off,
        );
        out.push(
            &format!("simulated peers reachable after the window (of {n})"),
            "peers",
            reachable as f64,
        );
        out.push(
            "simulated peers lost after the window",
            "peers",
            lost as f64,
        );
        out.push(&format!("twilld RSS with {n} peers, probing"), "MiB", rss);
    }
    out.set_target(
        &format!("twilld CPU with {n} peers, probing"),
        "% of a core",
        Target::below(1.0),
    );
    out.set_target(
        &format!("twilld RSS with {n} peers, probing"),
        "MiB",
        Target::below(15.0),
    );
    Ok(out)
}

/// Peers h1's agent reports reachable and lost in `/peers`: proof that
/// the simulated peers answer.
fn peer_counts(c: &Cluster) -> anyhow::Result<(usize, usize)> {
    let r = http_get(c.ns_of("h1")?, Ipv4Addr::LOCALHOST, HEALTH_PORT, "/peers")?;
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    let count = |want: bool| {
        peers
            .iter()
            .filter(|p| p["reachable"].as_bool() == Some(want))
            .count()
    };
    Ok((count(true), count(false)))
}
