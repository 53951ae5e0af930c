//! Convergence: N hosts run `twilld`, a new host joins (and later leaves);
//! how long until every other host has the route, neighbour and FDB entry
//! for it (or has dropped them), measured from the lease write seen on an
//! etcd watch, and until a pod on host 1 pings a pod on the new host.
//!
//! Kernel changes are observed with `ip monitor` / `bridge monitor` in each
//! host namespace and timestamped on arrival, so polling adds no delay.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use twill_harness::cluster::{Cluster, ETCD_PREFIX, VXLAN_DEV};
use twill_harness::parse::base64_decode;

use crate::results::{BenchOutput, Target};
use crate::stats::{ms, quantile};

#[derive(Debug, Clone)]
pub struct ConvergeOpts {
    pub sizes: Vec<usize>,
    pub reps: usize,
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Etcd,
    /// `ip monitor route neigh` of host index i.
    Ip(usize),
    /// `bridge monitor fdb` of host index i.
    Fdb(usize),
}

#[derive(Debug, Clone)]
struct Line {
    src: Source,
    at: Instant,
    text: String,
}

/// A lease change seen on the etcd watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseChange {
    pub subnet: Ipv4Net,
    pub deleted: bool,
    pub public_ip: Option<Ipv4Addr>,
    pub vtep_mac: Option<String>,
}

/// Parses one line of `etcdctl watch -w json` into the lease changes it
/// carries (PUT has no `type`, DELETE is type 1).
pub fn parse_watch_line(line: &str) -> Vec<LeaseChange> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return Vec::new();
    };
    let events = v
        .get("Events")
        .or_else(|| v.get("events"))
        .and_then(|e| e.as_array())
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for ev in events {
        let deleted = ev
            .get("type")
            .is_some_and(|t| t.as_i64() == Some(1) || t.as_str() == Some("DELETE"));
        let kv = ev.get("kv");
        let field = |name: &str| {
            kv.and_then(|k| k.get(name))
                .and_then(|s| s.as_str())
                .and_then(|s| base64_decode(s).ok())
        };
        let Some(key) = field("key").and_then(|k| String::from_utf8(k).ok()) else {
            continue;
        };
        let Some(subnet) = key
            .rsplit('/')
            .next()
            .and_then(subnet_allocator::parse_subnet_key)
        else {
            continue;
        };
        let attrs = field("value").and_then(|v| subnet_allocator::LeaseAttrs::parse(&v).ok());
        out.push(LeaseChange {
            subnet,
            deleted,
            public_ip: attrs.as_ref().map(|a| a.public_ip),
            vtep_mac: attrs.and_then(|a| a.backend_data).map(|d| d.vtep_mac),
        });
    }
    out
}

/// What one host must show (or stop showing) for a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Route,
    Neighbour,
    Fdb,
}

/// Which entry for (`subnet`, `mac`, `public_ip`) a monitor line adds
/// (`deleted == false`) or removes (`true`), if any.
pub fn match_monitor_line(
    line: &str,
    subnet: Ipv4Net,
    mac: &str,
    public_ip: Ipv4Addr,
) -> Option<(Entry, bool)> {
    let (deleted, rest) = match line.strip_prefix("Deleted ") {
        Some(r) => (true, r),
        None => (false, line),
    };
    let on_dev = rest.contains(&format!("dev {VXLAN_DEV}"));
    if !on_dev {
        return None;
    }
    if rest.starts_with(&format!("{subnet} ")) {
        return Some((Entry::Route, deleted));
    }
    if rest.starts_with(&format!("{} dev ", subnet.network())) {
        return Some((Entry::Neighbour, deleted));
    }
    if rest
        .to_ascii_lowercase()
        .starts_with(&format!("{} ", mac.to_ascii_lowercase()))
        && rest.contains(&format!("dst {public_ip}"))
    {
        return Some((Entry::Fdb, deleted));
    }
    None
}

/// The monitor processes and their merged line stream; killed on drop.
struct Monitors {
    children: Vec<Child>,
    rx: Receiver<Line>,
}

impl Drop for Monitors {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_reader(mut cmd: Command, src: Source, tx: &Sender<Line>) -> anyhow::Result<Child> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("monitor has no stdout"))?;
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(text) = line else { break };
            let at = Instant::now();
            if tx.send(Line { src, at, text }).is_err() {
                break;
            }
        }
    });
    Ok(child)
}

fn start_monitors(c: &Cluster, hosts: &[usize]) -> anyhow::Result<Monitors> {
    let (tx, rx) = channel();
    let mut mons = Monitors {
        children: Vec::new(),
        rx,
    };
    let mut w = c.underlay().command(
        "etcdctl",
        [
            "--endpoints=http://127.0.0.1:2379",
            "watch",
            "--prefix",
            &format!("{ETCD_PREFIX}/subnets/"),
            "-w",
            "json",
        ],
    );
    w.env("ETCDCTL_API", "3");
    mons.children.push(spawn_reader(w, Source::Etcd, &tx)?);
    for &i in hosts {
        let ns = c.hosts()[i].ns().name().to_owned();
        let mut ipm = Command::new("ip");
        ipm.args(["-n", &ns, "monitor", "route", "neigh"]);
        mons.children.push(spawn_reader(ipm, Source::Ip(i), &tx)?);
        let mut br = Command::new("bridge");
        br.args(["-n", &ns, "monitor", "fdb"]);
        mons.children.push(spawn_reader(br, Source::Fdb(i), &tx)?);
    }
    // Give the monitors time to subscribe before anything changes.
    std::thread::sleep(Duration::from_millis(500));
    while mons.rx.try_recv().is_ok() {}
    Ok(mons)
}

/// Result of waiting for one join or leave.
struct Observed {
    lease_at: Instant,
    change: LeaseChange,
    /// Per other host: when its last of the three entries changed.
    host_done: Vec<Instant>,
}

/// Waits for the lease change of `public_ip` (`deleted` or not), then for
/// every host in `hosts` to add/remove all three entries.
fn observe(
    mons: &Monitors,
    hosts: &[usize],
    public_ip: Ipv4Addr,
    known: Option<&LeaseChange>,
    deleted: bool,
    timeout: Duration,
) -> anyhow::Result<Observed> {
    let deadline = Instant::now() + timeout;
    let mut lines: Vec<Line> = Vec::new();
    let mut lease: Option<(Instant, LeaseChange)> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = mons.rx.recv_timeout(left).map_err(|_| {
            anyhow::anyhow!(
                "timed out after {timeout:?} waiting for {} of {public_ip} to converge (lease seen: {})",
                if deleted { "leave" } else { "join" },
                lease.is_some()
            )
        })?;
        if line.src == Source::Etcd {
            for ch in parse_watch_line(&line.text) {
                let ours = if deleted {
                    known.is_some_and(|k| k.subnet == ch.subnet)
                } else {
                    ch.public_ip == Some(public_ip)
                };
                if ours && ch.deleted == deleted && lease.is_none() {
                    let full = match known {
                        Some(k) if deleted => k.clone(),
                        _ => ch,
                    };
                    lease = Some((line.at, full));
                }
            }
        } else {
            lines.push(line);
        }
        let Some((lease_at, change)) = &lease else {
            continue;
        };
        let Some(mac) = change.vtep_mac.as_deref() else {
            anyhow::bail!("lease {} has no VTEP MAC", change.subnet);
        };
        let mut done = Vec::new();
        for &h in hosts {
            let mut seen = [None, None, None];
            for l in lines
                .iter()
                .filter(|l| matches!(l.src, Source::Ip(i) | Source::Fdb(i) if i == h))
            {
                if let Some((e, del)) = match_monitor_line(&l.text, change.subnet, mac, public_ip) {
                    if del == deleted {
                        seen[e as usize] = Some(l.at);
                    }
                }
            }
            match seen {
                [Some(a), Some(b), Some(c)] => done.push(a.max(b).max(c)),
                _ => break,
            }
        }
        if done.len() == hosts.len() {
            return Ok(Observed {
                lease_at: *lease_at,
                change: change.clone(),
                host_done: done,
            });
        }
    }
}

/// The row of the pooled p99 of a join (`leave == false`) or a leave at
/// size `n`.
fn p99_figure(n: usize, leave: bool) -> String {
    if leave {
        format!("N={n} leave: lease deleted -> host cleaned, p99 over reps x hosts")
    } else {
        format!("N={n} join: lease -> host programmed, p99 over reps x hosts")
    }
}

pub fn run(opts: &ConvergeOpts) -> anyhow::Result<BenchOutput> {
    let mut out = BenchOutput::new(
        "converge",
        "2. Convergence: a host joins / leaves",
        "N hosts running twilld (--resync-interval 3600, so only the watch path counts) and a \
         new host N+1. Join: twilld started on the new host; lease write = arrival of its PUT \
         on an `etcdctl watch` in the underlay; a host is programmed when `ip monitor` / \
         `bridge monitor` in its namespace have shown the route, the neighbour and the FDB entry. \
         Ping = from twilld start until a pod on h1 pings a fresh pod on the new host (includes \
         the CNI ADD). Leave: twilld stopped, lease deleted with etcdctl; until every host \
         removed all three. The p99 rows pool every (repetition, host) sample of one size \
         (nearest rank, one value, so min = median = max); the target is judged on the join \
         p99 at the largest N.",
    );
    for &n in &opts.sizes {
        let setup = Instant::now();
        let mut c = Cluster::builder().hosts(n).resync_interval(3600).build()?;
        c.start_agents()?;
        c.wait_converged()?;
        let setup_secs = setup.elapsed().as_secs_f64();
        c.add_pod("h1", "src")?;
        let new = c.add_host()?;
        let new_ip = c.host(&new)?.ip();
        let others: Vec<usize> = (0..n).collect();
        let mut all_join = Vec::new();
        let mut all_leave = Vec::new();
        for rep in 0..opts.reps {
            let mons = start_monitors(&c, &others)?;
            let t0 = Instant::now();
            c.start_agent(&new)?;
            let joined = observe(&mons, &others, new_ip, None, false, Duration::from_secs(30))
                .map_err(|e| anyhow::anyhow!("{e}\n{}", c.agent_log_tail(&new)))?;
            let per_host: Vec<f64> = joined
                .host_done
                .iter()
                .map(|t| ms(*t - joined.lease_at))
                .collect();
            all_join.extend_from_slice(&per_host);
            out.push(
                &format!("N={n} join: twilld start -> lease written"),
                "ms",
                ms(joined.lease_at - t0),
            );
            out.push(
                &format!("N={n} join: lease -> host programmed, p50 over hosts"),
                "ms",
                quantile(&per_host, 0.5).unwrap_or(f64::NAN),
            );
            out.push(
                &format!("N={n} join: lease -> all hosts programmed (max)"),
                "ms",
                quantile(&per_host, 1.0).unwrap_or(f64::NAN),
            );
            let pod = format!("dst{rep}");
            c.wait_subnet_file(&new)?;
            let pod_ip = c.add_pod(&new, &pod)?;
            c.ns_of("src")?;
            let pinged = c
                .ping_poll(
                    "src",
                    pod_ip,
                    Duration::from_secs(20),
                    Duration::from_millis(5),
                )
                .ok_or_else(|| anyhow::anyhow!("pod src never reached {pod_ip}"))?;
            out.push(
                &format!("N={n} join: twilld start -> pod on h1 pings pod on new host"),
                "ms",
                ms(pinged - t0),
            );
            c.del_pod(&pod)?;

            c.stop_agent(&new)?;
            let key = Cluster::lease_key(joined.change.subnet);
            let deleted = c.etcd().del(&key)?;
            anyhow::ensure!(deleted == 1, "lease {key} was not in etcd");
            let left = observe(
                &mons,
                &others,
                new_ip,
                Some(&joined.change),
                true,
                Duration::from_secs(30),
            )?;
            let per_host: Vec<f64> = left
                .host_done
                .iter()
                .map(|t| ms(*t - left.lease_at))
                .collect();
            all_leave.extend_from_slice(&per_host);
            out.push(
                &format!("N={n} leave: lease deleted -> all hosts cleaned (max)"),
                "ms",
                quantile(&per_host, 1.0).unwrap_or(f64::NAN),
            );
            drop(mons);
        }
        out.samples(
            "Convergence (lease -> host programmed)",
            &format!("join N={n}"),
            &all_join,
        );
        out.samples(
            "Convergence (lease -> host programmed)",
            &format!("leave N={n}"),
            &all_leave,
        );
        // One figure over the whole size: every (rep, host) sample pooled.
        out.push(
            &p99_figure(n, false),
            "ms",
            quantile(&all_join, 0.99).unwrap_or(f64::NAN),
        );
        out.push(
            &p99_figure(n, true),
            "ms",
            quantile(&all_leave, 0.99).unwrap_or(f64::NAN),
        );
        out.notes.push(format!(
            "N={n}: setup (namespaces, etcd, {n} agents, converged) took {:.1} s; p99 rows pool {} reps x {n} hosts = {} samples each",
            setup_secs,
            opts.reps,
            all_join.len()
        ));
    }
    if let Some(&max_n) = opts.sizes.iter().max() {
        out.set_target(&p99_figure(max_n, false), "ms", Target::below(100.0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_json_put_and_delete() {
        // PUT of /twill/network/subnets/10.244.5.0-24 with a vxlan value.
        let key = "L3R3aWxsL25ldHdvcmsvc3VibmV0cy8xMC4yNDQuNS4wLTI0";
        let val = "eyJQdWJsaWNJUCI6IjE5Mi4wLjIuNCIsIkJhY2tlbmRUeXBlIjoidnhsYW4iLCJCYWNrZW5kRGF0YSI6eyJWTkkiOjEsIlZ0ZXBNQUMiOiIwYTpiYjpjYzpkZDplZTpmZiJ9fQ==";
        let put = format!(
            r#"{{"Header":{{"revision":7}},"Events":[{{"kv":{{"key":"{key}","value":"{val}"}}}}]}}"#
        );
        let ch = parse_watch_line(&put);
        assert_eq!(ch.len(), 1);
        assert_eq!(ch[0].subnet, "10.244.5.0/24".parse::<Ipv4Net>().unwrap());
        assert!(!ch[0].deleted);
        assert_eq!(ch[0].public_ip, Some(Ipv4Addr::new(192, 0, 2, 4)));
        assert_eq!(ch[0].vtep_mac.as_deref(), Some("0a:bb:cc:dd:ee:ff"));
        let del = format!(r#"{{"Events":[{{"type":1,"kv":{{"key":"{key}"}}}}]}}"#);
        let ch = parse_watch_line(&del);
        assert!(ch[0].deleted && ch[0].public_ip.is_none());
        assert!(parse_watch_line("not json").is_empty());
    }

    #[test]
    fn monitor_lines_are_classified() {
        let s: Ipv4Net = "10.244.5.0/24".parse().unwrap();
        let ip = Ipv4Addr::new(192, 0, 2, 4);
        let mac = "0a:bb:cc:dd:ee:ff";
        let m = |l: &str| match_monitor_line(l, s, mac, ip);
        assert_eq!(
            m("10.244.5.0/24 via 10.244.5.0 dev twill.1 onlink"),
            Some((Entry::Route, false))
        );
        assert_eq!(
            m("Deleted 10.244.5.0/24 via 10.244.5.0 dev twill.1 onlink"),
            Some((Entry::Route, true))
        );
        assert_eq!(
            m("10.244.5.0 dev twill.1 lladdr 0a:bb:cc:dd:ee:ff PERMANENT"),
            Some((Entry::Neighbour, false))
        );
        assert_eq!(
            m("0a:bb:cc:dd:ee:ff dev twill.1 dst 192.0.2.4 self permanent"),
            Some((Entry::Fdb, false))
        );
        assert_eq!(m("10.244.50.0/24 via 10.244.50.0 dev twill.1 onlink"), None);
        assert_eq!(m("10.244.5.0/24 dev eth0"), None);
        assert_eq!(
            m("0a:bb:cc:dd:ee:ff dev twill.1 dst 192.0.2.9 self permanent"),
            None
        );
    }
}
