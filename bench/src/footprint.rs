//! Footprint: `twilld` resident memory and CPU time at idle and with 1,000
//! fake leases in etcd, and the size of the release binaries.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use subnet_allocator::{EtcdOptions, EtcdStore, LeaseStore};
use twill_harness::Cluster;

use crate::nsthread;
use crate::results::{BenchOutput, Target};
use crate::scale::write_fake_leases;

#[derive(Debug, Clone)]
pub struct FootprintOpts {
    pub leases: u32,
    pub reps: usize,
    pub bin_dir: PathBuf,
    /// The CNI plugin binary as shipped.
    pub cni_bin: PathBuf,
}

/// `VmRSS` in KiB from `/proc/<pid>/status` text.
pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// utime + stime in clock ticks from `/proc/<pid>/stat` text.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

pub(crate) struct Sample {
    pub(crate) rss_mib: f64,
    pub(crate) cpu_s: f64,
}

pub(crate) fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub(crate) fn sample(pid: i32, tck: f64) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rss = parse_vmrss_kib(&status).ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))?;
    let ticks = parse_cpu_ticks(&stat).ok_or_else(|| anyhow::anyhow!("bad stat for pid {pid}"))?;
    Ok(Sample {
        rss_mib: rss as f64 / 1024.0,
        cpu_s: ticks as f64 / tck,
    })
}

/// The pid of the process named `twilld` in namespace `ns` (the harness
/// starts it through `ip netns exec`, which may or may not exec in place).
fn twilld_pid(ns: &str) -> anyhow::Result<i32> {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns])
        .output()?;
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "twilld" {
            return Ok(pid.parse()?);
        }
    }
    anyhow::bail!("no twilld process in netns {ns}")
}

fn route_count(c: &Cluster) -> usize {
    c.routes("h1").map(|r| r.len()).unwrap_or(0)
}

fn file_mib(p: &Path) -> anyhow::Result<f64> {
    let len = std::fs::metadata(p)
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
        .len();
    Ok(len as f64 / (1024.0 * 1024.0))
}

pub fn run(opts: &FootprintOpts) -> anyhow::Result<BenchOutput> {
    let n = opts.leases;
    let mut out = BenchOutput::new(
        "footprint",
        "4. Footprint",
        "One host running twilld (network 10.244.0.0/16, /26 subnets). VmRSS and utime+stime \
         of the twilld process from /proc after 3 s idle, then after writing fake vxlan leases \
         (public IPs in 198.18.0.0/15) into etcd and waiting until the agent has programmed a \
         route for each and 3 s more. Binary sizes of the release build.",
    );
    let tck = clk_tck();
    for _ in 0..opts.reps {
        let mut c = Cluster::builder()
            .hosts(1)
            .resync_interval(3600)
            .network_config(
                r#"{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#,
            )
            .build()?;
        c.start_agents()?;
        let own = c.wait_subnet_file("h1")?.node_subnet();
        std::thread::sleep(Duration::from_secs(3));
        let pid = twilld_pid(c.host("h1")?.ns().name())?;
        let idle = sample(pid, tck)?;
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(5));
        let idle2 = sample(pid, tck)?;
        let idle_cpu_pct = (idle2.cpu_s - idle.cpu_s) / t.elapsed().as_secs_f64() * 100.0;

        // Written from a thread inside the underlay namespace, where etcd's
        // loopback listener is.
        let ul = PathBuf::from(c.underlay().path());
        let t0 = Instant::now();
        nsthread::in_netns(&ul, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let store = EtcdStore::connect(EtcdOptions {
                    endpoints: vec!["http://127.0.0.1:2379".to_owned()],
                    prefix: twill_harness::cluster::ETCD_PREFIX.to_owned(),
                    ..EtcdOptions::default()
                })
                .await?;
                let cfg = store.get_network_config().await?;
                // Fake nodes take subnets 0..=n, minus the agent's own.
                let own_idx = (u32::from(own.network()) - u32::from(cfg.network.network()))
                    >> (32 - u32::from(cfg.subnet_len));
                if own_idx < n {
                    write_fake_leases(&store, &cfg, 0, own_idx).await?;
                    write_fake_leases(&store, &cfg, own_idx + 1, n + 1).await?;
                } else {
                    write_fake_leases(&store, &cfg, 0, n).await?;
                }
                anyhow::Ok(())
            })
        })?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while route_count(&c) < n as usize {
            anyhow::ensure!(
                Instant::now() < deadline,
                "agent programmed only {} of {n} routes in 120 s\n{}",
                route_count(&c),
                c.agent_log_tail("h1")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let programmed = t0.elapsed();
        std::thread::sleep(Duration::from_secs(3));
        let loaded = sample(pid, tck)?;
        out.push("twilld RSS, idle (no other node)", "MiB", idle.rss_mib);
        out.push(
            "twilld CPU while idle (5 s window)",
            "% of a core",
            idle_cpu_pct,
        );
        out.push(
            &format!("twilld RSS with {n} leases"),
            "MiB",
            loaded.rss_mib,
        );
        out.push(
            &format!("twilld CPU time to take in {n} leases"),
            "s",
            loaded.cpu_s - idle2.cpu_s,
        );
        out.push(
            &format!("write {n} leases -> {n} routes programmed"),
            "s",
            programmed.as_secs_f64(),
        );
        out.push("twilld CPU time total since start", "s", loaded.cpu_s);
        drop(c);
    }
    out.set_target(
        &format!("twilld RSS with {n} leases"),
        "MiB",
        Target::below(15.0),
    );
    out.push(
        "twill CNI binary size (release, static)",
        "MiB",
        file_mib(&opts.cni_bin)?,
    );
    out.push(
        "twilld binary size (release)",
        "MiB",
        file_mib(&opts.bin_dir.join("twilld"))?,
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsers() {
        assert_eq!(
            parse_vmrss_kib("Name:\ttwilld\nVmRSS:\t   8120 kB\n"),
            Some(8120)
        );
        assert_eq!(parse_vmrss_kib("Name:\tx\n"), None);
        let stat = "42 (tw illd) S 1 42 42 0 -1 4194560 100 0 0 0 17 5 0 0 20 0 4 0";
        assert_eq!(parse_cpu_ticks(stat), Some(22));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }
}
