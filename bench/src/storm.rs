//! Convergence under a join storm: N hosts start `twilld` at once against
//! one etcd; how long until every host has a route to every other, and how
//! much CPU each agent (and etcd) spent getting there. A quadratic agent
//! (a full kernel dump and diff per watch batch) shows as CPU per joining
//! peer growing with N.
//!
//! Hosts sit on 198.18.0.0/15 (one L2 segment, room for hundreds) with a
//! /32 route to etcd on the underlay bridge; subnets are /26 so that 500
//! fit in 10.244.0.0/16. A host's routes are read from
//! `/proc/<agent pid>/net/route` (the agent's namespace), so watching
//! hundreds of hosts spawns no process.

use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use twill_harness::cluster::{Cluster, IFNAME, UNDERLAY_IP, VXLAN_DEV};

use crate::footprint::{clk_tck, parse_cpu_ticks};
use crate::results::{BenchOutput, Target};
use crate::stats::{median, quantile};

#[derive(Debug, Clone)]
pub struct StormOpts {
    pub sizes: Vec<usize>,
    /// Give up on a size after this long (the hosts not converged by then
    /// are counted).
    pub timeout: Duration,
}

const NETWORK_CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":26,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;
/// The underlay bridge's address on the hosts' segment.
const BRIDGE_ADDR: &str = "198.19.255.254/15";
/// Long enough that no lease is renewed during a run.
const LEASE_TTL_SECS: u64 = 3600;

/// Host `i` (1-based) on 198.18.0.0/15.
pub fn host_addr(i: usize) -> anyhow::Result<Ipv4Net> {
    let i = u32::try_from(i)?;
    anyhow::ensure!((1..65_000).contains(&i), "host index {i} out of range");
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i);
    Ok(Ipv4Net::new(ip, 15)?)
}

/// How many routes via the VXLAN device `/proc/net/route` text lists.
pub fn vxlan_routes(text: &str) -> usize {
    text.lines()
        .skip(1)
        .filter(|l| l.split_whitespace().next() == Some(VXLAN_DEV))
        .count()
}

/// CPU seconds of `pid`, if it is alive: the sum of its threads' run time
/// in nanoseconds (`/proc/<pid>/task/*/schedstat`), or utime + stime in
/// clock ticks when that is larger (it also counts threads that exited).
fn cpu_secs(pid: i32, tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)? as f64 / tck;
    let threads: f64 = std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| schedstat_ns(&s))
        .map(|ns| ns as f64 / 1e9)
        .sum();
    Some(ticks.max(threads))
}

/// The time on CPU in nanoseconds from a `schedstat` line.
pub fn schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

fn figure(n: usize, what: &str) -> String {
    format!("N={n} storm: {what}")
}

const ALL_CONVERGED: &str = "all hosts have every route";
const PER_PEER: &str = "agent CPU per joining peer, median";

pub fn run(opts: &StormOpts) -> anyhow::Result<BenchOutput> {
    let mut out = BenchOutput::new(
        "storm",
        "2b. Convergence: a join storm",
        "N hosts (namespaces on one 198.18.0.0/15 segment, /26 subnets, lease TTL 1 h, \
         --resync-interval 3600, --no-probe: probes would need N x N ARP entries in the \
         neighbour table all namespaces share) start twilld at once against one etcd. Converged: the \
         host's namespace has a route via the VXLAN device to every other host \
         (/proc/<twilld pid>/net/route, polled every 100 ms). Agent CPU: the host's twilld's \
         CPU time (its threads' /proc schedstat) when its host converged; per joining peer = that / (N - 1). \
         etcd CPU: from the start of the agents until all converged. Targets (issue 20): \
         500 hosts converge in under 60 s; CPU per joining peer flat (within 1.5x) from \
         the smallest to the largest N.",
    );
    for &n in &opts.sizes {
        storm(&mut out, n, opts.timeout)?;
    }
    if opts.sizes.contains(&500) {
        out.set_target(&figure(500, ALL_CONVERGED), "s", Target::below(60.0));
    }
    let (lo, hi) = (opts.sizes.iter().min(), opts.sizes.iter().max());
    if let (Some(&lo), Some(&hi)) = (lo, hi) {
        let per = |n| {
            out.rows
                .iter()
                .find(|r| r.figure == figure(n, PER_PEER))
                .and_then(|r| r.runs.first().copied())
        };
        if let (true, Some(a), Some(b)) = (lo < hi, per(lo), per(hi)) {
            let name = format!("storm: CPU per joining peer, N={hi} / N={lo}");
            out.push(&name, "x", b / a);
            out.set_target(&name, "x", Target::below(1.5));
        }
    }
    Ok(out)
}

fn storm(out: &mut BenchOutput, n: usize, timeout: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(n >= 2, "a storm needs at least 2 hosts");
    let tck = clk_tck();
    let setup = Instant::now();
    let mut c = Cluster::builder()
        .hosts(0)
        .network_config(NETWORK_CONFIG)
        .resync_interval(3600)
        .lease_ttl(LEASE_TTL_SECS)
        // The control plane is measured. Probes would make every host
        // resolve every other's underlay address: N x N ARP entries in the
        // one neighbour table all namespaces share (1024 by default), which
        // overflows at N=500 and cuts hosts off from etcd.
        .agent_args(["--no-probe"])
        .build()?;
    c.underlay()
        .ip(["addr", "add", BRIDGE_ADDR, "dev", "ul0"])?;
    let etcd_route = format!("{UNDERLAY_IP}/32");
    let mut hosts = Vec::with_capacity(n);
    for i in 1..=n {
        let h = c.add_host_at(host_addr(i)?, "ul0")?;
        c.host(&h)?
            .ns()
            .ip(["route", "add", &etcd_route, "dev", IFNAME])?;
        hosts.push(h);
    }
    let setup_secs = setup.elapsed().as_secs_f64();

    let etcd_pid = c.etcd().pid();
    let etcd_cpu0 = cpu_secs(etcd_pid, tck).unwrap_or(f64::NAN);
    let t0 = Instant::now();
    c.start_agents()?;
    let pids: Vec<i32> = hosts
        .iter()
        .map(|h| {
            c.agent_pid(h)
                .ok_or_else(|| anyhow::anyhow!("no agent on {h}"))
        })
        .collect::<anyhow::Result<_>>()?;
    // Per host: when it converged and its agent's CPU then.
    let mut done: Vec<Option<(f64, f64)>> = vec![None; n];
    let mut left = n;
    while left > 0 && t0.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(100));
        for (i, pid) in pids.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            let routes = std::fs::read_to_string(format!("/proc/{pid}/net/route"))
                .map(|t| vxlan_routes(&t))
                .unwrap_or(0);
            if routes >= n - 1 {
                let at = t0.elapsed().as_secs_f64();
                done[i] = Some((at, cpu_secs(*pid, tck).unwrap_or(f64::NAN)));
                left -= 1;
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let etcd_cpu = cpu_secs(etcd_pid, tck).unwrap_or(f64::NAN) - etcd_cpu0;
    let all_cpu: f64 = pids.iter().filter_map(|p| cpu_secs(*p, tck)).sum();
    let times: Vec<f64> = done.iter().flatten().map(|d| d.0).collect();
    let cpus: Vec<f64> = done.iter().flatten().map(|d| d.1).collect();
    out.push(&figure(n, "hosts converged"), "count", times.len() as f64);
    if left == 0 {
        out.push(&figure(n, ALL_CONVERGED), "s", wall);
    } else {
        out.notes.push(format!(
            "N={n}: {left} of {n} hosts had not converged after {:.0} s",
            timeout.as_secs_f64()
        ));
    }
    let p50 = quantile(&times, 0.5).unwrap_or(f64::NAN);
    out.push(&figure(n, "host has every route, p50 over hosts"), "s", p50);
    let cpu_med = median(&cpus).unwrap_or(f64::NAN);
    out.push(
        &figure(n, "agent CPU until converged, median"),
        "s",
        cpu_med,
    );
    out.push(
        &figure(n, "agent CPU until converged, max"),
        "s",
        quantile(&cpus, 1.0).unwrap_or(f64::NAN),
    );
    out.push(
        &figure(n, PER_PEER),
        "ms",
        cpu_med * 1000.0 / (n - 1) as f64,
    );
    out.push(&figure(n, "all agents' CPU (at the end)"), "s", all_cpu);
    out.push(&figure(n, "etcd CPU during the storm"), "s", etcd_cpu);
    out.notes.push(format!(
        "N={n}: setup ({n} host namespaces and etcd) took {setup_secs:.1} s"
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_get_distinct_addresses_on_one_segment() {
        assert_eq!(host_addr(1).unwrap().to_string(), "198.18.0.1/15");
        assert_eq!(host_addr(500).unwrap().to_string(), "198.18.1.244/15");
        let seg: Ipv4Net = BRIDGE_ADDR.parse().unwrap();
        assert!(seg.contains(&host_addr(1000).unwrap().addr()));
        assert!(host_addr(0).is_err());
    }

    #[test]
    fn only_routes_via_the_vxlan_device_count() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth0\t000012C6\t00000000\t0001\t0\t0\t0\t0000FEFF\n\
                    twill.1\t0001F40A\t0001F40A\t0007\t0\t0\t0\t00FFFFFF\n\
                    twill.1\t4001F40A\t4001F40A\t0007\t0\t0\t0\tC0FFFFFF\n\
                    twill0\t0000F40A\t00000000\t0001\t0\t0\t0\tC0FFFFFF\n";
        assert_eq!(vxlan_routes(text), 2);
        assert_eq!(vxlan_routes(""), 0);
    }

    #[test]
    fn schedstat_gives_nanoseconds_on_cpu() {
        assert_eq!(schedstat_ns("123456789 2000 17\n"), Some(123_456_789));
        assert_eq!(schedstat_ns(""), None);
    }
}
