//! CNI latency: ADD and DEL of the `twill` plugin against the reference
//! `bridge` + `host-local` plugins, serial and with parallel workers, in one
//! host namespace with pre-created pod namespaces (not timed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use twill_harness::{run_prefix, Netns};

use crate::nsthread;
use crate::results::{BenchOutput, Target};
use crate::stats::{ms, quantile};

/// Where Debian's containernetworking-plugins live.
pub const REF_CNI_PATH: &str = "/usr/lib/cni";
const SUBNET: &str = "10.244.50.0/24";

#[derive(Debug, Clone)]
pub struct CniOpts {
    pub twill_bin: PathBuf,
    pub pods: usize,
    pub workers: usize,
    pub reps: usize,
}

/// One plugin under test: binary, CNI_PATH and network config.
#[derive(Debug, Clone)]
struct Plugin {
    label: &'static str,
    bin: PathBuf,
    cni_path: String,
    config: String,
}

fn plugins(twill_bin: &Path, dir: &Path) -> anyhow::Result<Vec<Plugin>> {
    let subnet_file = dir.join("subnet.env");
    let env = twill::subnet_file::SubnetEnv {
        network: "10.244.0.0/16".parse()?,
        subnet: SUBNET.parse()?,
        mtu: 1450,
        ip_masq: false,
        ipv6: None,
    };
    std::fs::write(&subnet_file, env.render())?;
    let twill = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench-twill",
        "type": "twill",
        "bridge": "twill0",
        "subnetFile": subnet_file,
        "dataDir": dir.join("twill-ipam"),
    });
    // 1.0.0: the newest version Debian's bridge plugin supports.
    let reference = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "bench-ref",
        "type": "bridge",
        "bridge": "cni-ref0",
        "isGateway": true,
        "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": dir.join("ref-ipam")},
    });
    let twill_dir = twill_bin
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(vec![
        Plugin {
            label: "twill",
            bin: twill_bin.to_path_buf(),
            cni_path: twill_dir,
            config: twill.to_string(),
        },
        Plugin {
            label: "bridge+host-local",
            bin: PathBuf::from(REF_CNI_PATH).join("bridge"),
            cni_path: REF_CNI_PATH.to_owned(),
            config: reference.to_string(),
        },
    ])
}

/// Runs one CNI command; the caller's thread must already be in the host
/// namespace (the child inherits it). Returns the wall time in ms.
fn invoke(p: &Plugin, command: &str, id: &str, netns: &str) -> anyhow::Result<f64> {
    let t0 = Instant::now();
    let mut child = Command::new(&p.bin)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", &p.cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", p.bin.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(p.config.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let took = ms(t0.elapsed());
    anyhow::ensure!(
        out.status.success(),
        "{} {command} for {id} failed ({}): {} {}",
        p.label,
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(took)
}

/// ADD for every pod, then DEL for every pod, with `workers` threads in the
/// host namespace taking pods from a shared counter. Returns (add, del) ms.
fn batch(
    host: &Path,
    p: &Plugin,
    pods: &[String],
    workers: usize,
    tag: &str,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut res = (Vec::new(), Vec::new());
    for command in ["ADD", "DEL"] {
        let next = Arc::new(AtomicUsize::new(0));
        let pods = Arc::new(pods.to_vec());
        let mut handles = Vec::new();
        for _ in 0..workers {
            let (next, pods, p, host) = (next.clone(), pods.clone(), p.clone(), host.to_path_buf());
            let tag = tag.to_owned();
            handles.push(std::thread::spawn(move || -> anyhow::Result<Vec<f64>> {
                nsthread::enter(&host)?;
                let mut times = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(ns) = pods.get(i) else { break };
                    times.push(invoke(&p, command, &format!("{tag}-{i}"), ns)?);
                }
                Ok(times)
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("cni worker panicked"))??,
            );
        }
        if command == "ADD" {
            res.0 = all;
        } else {
            res.1 = all;
        }
    }
    Ok(res)
}

pub fn run(opts: &CniOpts) -> anyhow::Result<BenchOutput> {
    let mut out = BenchOutput::new(
        "cni",
        "1. CNI latency: twill vs bridge + host-local",
        "One host namespace with a hand-written subnet file (10.244.50.0/24 for both, \
         bridges twill0 and cni-ref0), pod namespaces pre-created. Per run and mode: \
         ADD for every pod, then DEL for every pod; wall time from spawning the plugin \
         to its exit, plugins started directly from a thread in the host namespace \
         (no `ip netns exec` in the timing). cniVersion 1.0.0 for both (the newest the \
         Debian bridge plugin supports). twill is the plugin as shipped (static, \
         non-PIE: scripts/build-cni.sh). Ratio = reference p50 / twill p50; the \
         target is on ADD. DEL has none: both plugins wait for the kernel's veth \
         teardown (RCU grace periods), which is most of a DEL.",
    );
    anyhow::ensure!(
        opts.twill_bin.is_file(),
        "twill CNI binary {} not found: run scripts/build-cni.sh",
        opts.twill_bin.display()
    );
    let prefix = run_prefix();
    let dir = tempfile::Builder::new()
        .prefix(&format!("{prefix}-cni-"))
        .tempdir()?;
    let host = Netns::new(format!("{prefix}-cnihost"))?;
    let host_path = PathBuf::from(host.path());
    let mut pod_ns = Vec::new();
    for i in 0..opts.pods {
        pod_ns.push(Netns::new(format!("{prefix}-p{i}"))?);
    }
    let pod_paths: Vec<String> = pod_ns.iter().map(|n| n.path()).collect();
    let plugins = plugins(&opts.twill_bin, dir.path())?;
    for rep in 0..opts.reps {
        for (mode, workers) in [("serial", 1), ("parallel", opts.workers)] {
            let mut p50 = Vec::new();
            for p in &plugins {
                let tag = format!("{}-{rep}-{mode}", p.label.replace('+', "-"));
                let (add, del) = batch(&host_path, p, &pod_paths, workers, &tag)?;
                let label = if mode == "serial" {
                    format!("{} {mode}", p.label)
                } else {
                    format!("{} {mode} x{workers}", p.label)
                };
                for (verb, v) in [("ADD", &add), ("DEL", &del)] {
                    for (q, name) in [(0.5, "p50"), (0.9, "p90"), (1.0, "max")] {
                        out.push(
                            &format!("{label} {verb} {name}"),
                            "ms",
                            quantile(v, q).unwrap_or(f64::NAN),
                        );
                    }
                    out.samples(&format!("CNI {verb}"), &label, v);
                }
                p50.push((
                    quantile(&add, 0.5).unwrap_or(f64::NAN),
                    quantile(&del, 0.5).unwrap_or(f64::NAN),
                ));
            }
            if let [tw, rf] = p50[..] {
                let w = if mode == "serial" {
                    String::new()
                } else {
                    format!(" x{workers}")
                };
                out.push(
                    &format!("ratio ref/twill ADD p50, {mode}{w}"),
                    "x",
                    rf.0 / tw.0,
                );
                out.push(
                    &format!("ratio ref/twill DEL p50, {mode}{w}"),
                    "x",
                    rf.1 / tw.1,
                );
            }
        }
    }
    let targets: Vec<String> = out
        .rows
        .iter()
        .filter(|r| r.figure.starts_with("ratio ref/twill ADD"))
        .map(|r| r.figure.clone())
        .collect();
    for f in targets {
        out.set_target(&f, "x", Target::at_least(5.0));
    }
    // Pod namespaces first, then the host (Netns drop deletes them).
    drop(pod_ns);
    drop(host);
    Ok(out)
}
