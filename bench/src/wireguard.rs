//! The wireguard backend's cost: iperf3 TCP pod to pod through the
//! userspace WireGuard tunnel against VXLAN and the bare underlay, in the
//! same run, and what the agent and its WireGuard helper take (RSS, CPU)
//! while the tunnel carries that traffic.

use std::time::{Duration, Instant};

use twill_harness::pinger::Pinger;

use crate::datapath::{pod_to_pod, two_host_cluster, underlay};
use crate::footprint::{clk_tck, sample};
use crate::results::BenchOutput;

#[derive(Debug, Clone)]
pub struct WireguardOpts {
    pub seconds: u32,
    pub reps: usize,
}

/// The wireguard cluster's network config (same network as the others).
pub const WIREGUARD_CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"wireguard"}}"#;

/// The PIDs of `twilld` (the agent) and of its WireGuard helper
/// (`twilld wireguard-device`) in namespace `ns`.
fn pids(ns: &str) -> anyhow::Result<(i32, i32)> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()?;
    let (mut agent, mut helper) = (None, None);
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.contains("twilld") {
            continue;
        }
        if cmdline.contains("wireguard-device") {
            helper = Some(pid.parse()?);
        } else {
            agent = Some(pid.parse()?);
        }
    }
    match (agent, helper) {
        (Some(a), Some(h)) => Ok((a, h)),
        _ => anyhow::bail!("no twilld and WireGuard helper in netns {ns}"),
    }
}

pub fn run(opts: &WireguardOpts) -> anyhow::Result<BenchOutput> {
    let mut out = BenchOutput::new(
        "wireguard",
        "7. WireGuard: throughput and cost of the encrypted backend",
        "Two clusters of two hosts each on the veth/bridge underlay, one with the VXLAN \
         backend and one with the wireguard backend, one pod per host. iperf3 TCP for the \
         given seconds, 1 and 4 streams: host h1 -> host h2 over the bare underlay, pod -> pod \
         over VXLAN, pod -> pod through the userspace WireGuard tunnel (boringtun's protocol \
         core, ChaCha20-Poly1305 in software, one thread per node's helper), one after the \
         other per repetition. CPU is utime+stime of the receiving node's and the sending \
         node's processes over the wireguard runs only, in % of one core; RSS after the runs. \
         What limits it: both nodes' encryption, decryption and the TUN and UDP copies run in \
         two single-threaded helpers on 2 cores shared with iperf3 and the kernel's veth and \
         bridge work (and with other people's builds). Last, the agent on the receiving node \
         is restarted (SIGTERM, start) under 10 ms pings pod to pod: the goal is no loss.",
    );
    let (vx, vx_b) = two_host_cluster(None, "VXLAN")?;
    let (mut wg, wg_b) = two_host_cluster(Some(WIREGUARD_CONFIG), "WireGuard")?;
    let tck = clk_tck();
    let h1 = pids(wg.host("h1")?.ns().name())?;
    let h2 = pids(wg.host("h2")?.ns().name())?;
    let procs = [
        ("twilld", h1.0),
        ("twilld", h2.0),
        ("helper", h1.1),
        ("helper", h2.1),
    ];
    let cpu = |pid| sample(pid, tck).map(|s| s.cpu_s);
    let mut wg_time = Duration::ZERO;
    let mut cpu_used = [0.0f64; 4];
    for _ in 0..opts.reps {
        for streams in [1u32, 4] {
            let ul = underlay(&mut out, &vx, streams, opts.seconds)?;
            let v = pod_to_pod(&vx, vx_b, streams, opts.seconds)?;
            out.push(
                &format!("vxlan pod-to-pod, {streams} stream(s)"),
                "Gbit/s",
                v,
            );
            let before: Vec<f64> = procs
                .iter()
                .map(|(_, p)| cpu(*p))
                .collect::<Result<_, _>>()?;
            let start = Instant::now();
            let w = pod_to_pod(&wg, wg_b, streams, opts.seconds)?;
            wg_time += start.elapsed();
            for (i, (_, p)) in procs.iter().enumerate() {
                cpu_used[i] += cpu(*p)? - before[i];
            }
            out.push(
                &format!("wireguard pod-to-pod, {streams} stream(s)"),
                "Gbit/s",
                w,
            );
            out.push(
                &format!("ratio wireguard/vxlan, {streams} stream(s)"),
                "x",
                w / v,
            );
            out.push(
                &format!("ratio wireguard/underlay, {streams} stream(s)"),
                "x",
                w / ul,
            );
        }
    }
    let secs = wg_time.as_secs_f64().max(f64::EPSILON);
    let agents = (cpu_used[0] + cpu_used[1]) / 2.0;
    let helpers = (cpu_used[2] + cpu_used[3]) / 2.0;
    out.push(
        "twilld CPU per node during wireguard iperf3",
        "% of a core",
        100.0 * agents / secs,
    );
    out.push(
        "WireGuard helper CPU per node during wireguard iperf3",
        "% of a core",
        100.0 * helpers / secs,
    );
    for (what, pid) in [("twilld", h1.0), ("WireGuard helper", h1.1)] {
        out.push(
            &format!("{what} RSS (h1, after the runs)"),
            "MiB",
            sample(pid, tck)?.rss_mib,
        );
    }
    // An agent restart (SIGTERM, start) on the receiving node under 10 ms
    // pings from the other node's pod: the tunnel lives in the helper.
    for _ in 0..opts.reps {
        let pinger = Pinger::start(wg.pod("a")?.ns(), wg_b, 300, 10)?;
        std::thread::sleep(Duration::from_millis(500));
        wg.stop_agent("h2")?;
        wg.start_agent("h2")?;
        let summary = pinger.finish()?;
        out.push(
            "pings lost across an agent restart (10 ms interval)",
            "packets",
            f64::from(summary.lost()),
        );
    }
    Ok(out)
}
