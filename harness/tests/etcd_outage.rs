//! Issue 4, etcd trouble: agents on a 3-member etcd cluster keep the data
//! path through the loss of one member and of all of them, keep retrying,
//! and after etcd comes back they renew their leases and learn new nodes.
//!
//! Needs root, `ip`, `bridge`, `etcd`, `etcdctl`, `ping` and the workspace
//! binaries (`cargo build --workspace`); under `CI=true` a missing
//! prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv4Addr;
use std::time::Duration;

use twill_harness::datapath::{self, Peer};
use twill_harness::pinger::Pinger;
use twill_harness::wait::wait_for;
use twill_harness::{require_cluster, Cluster, EtcdCluster, HarnessError};

const TTL: u64 = 10;
const DEADLINE: Duration = Duration::from_secs(20);

fn expect(c: &Cluster, host: &str, peers: &[&Peer], why: &str) {
    datapath::wait_owned(c, host, peers, DEADLINE, why).unwrap();
}

/// Every pod pings every other pod 100 times at 10 ms; returns the runs
/// that lost packets.
fn lossy_pairs(c: &Cluster) -> Vec<String> {
    let pods: Vec<(String, Ipv4Addr)> = c
        .pods()
        .iter()
        .map(|p| (p.name().to_owned(), p.ip()))
        .collect();
    let mut runs = Vec::new();
    for (from, _) in &pods {
        for (to, ip) in &pods {
            if from != to {
                let ns = c.pod(from).unwrap().ns();
                runs.push((format!("{from} -> {to}"), Pinger::start(ns, *ip, 100, 10)));
            }
        }
    }
    runs.into_iter()
        .filter_map(|(what, p)| match p.and_then(|p| p.finish()) {
            Ok(s) if s.lost() == 0 && s.transmitted == 100 => None,
            Ok(s) => Some(format!("{what}: {s:?}")),
            Err(e) => Some(format!("{what}: {e}")),
        })
        .collect()
}

/// Seconds left on the etcd lease attached to `key`.
fn ttl_left(ec: &EtcdCluster, key: &str) -> twill_harness::Result<i64> {
    let bad = |what: &str, out: &str| HarnessError::Parse {
        what: what.to_owned(),
        reason: out.to_owned(),
    };
    let out = ec.ctl(&["get", key, "-w", "json"])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| bad("get", &e.to_string()))?;
    let id = v["kvs"][0]["lease"]
        .as_u64()
        .ok_or_else(|| bad(&format!("lease id of {key}"), &out))?;
    let out = ec.ctl(&["lease", "timetolive", &format!("{id:x}"), "-w", "json"])?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| bad("timetolive", &e.to_string()))?;
    v["ttl"]
        .as_i64()
        .ok_or_else(|| bad(&format!("ttl of lease {id:x}"), &out))
}

/// Waits until the TTL left on `key`'s lease goes up: only a renewal does
/// that.
fn wait_renewed(c: &Cluster, key: &str) {
    let ec = c.etcd_cluster().unwrap();
    let mut lowest = i64::MAX;
    wait_for(
        &format!("lease of {key} to be renewed"),
        Duration::from_secs(2 * TTL + 5),
        || {
            let t = ttl_left(ec, key)?;
            if t > lowest {
                return Ok(Some(()));
            }
            lowest = lowest.min(t);
            Ok(None)
        },
        || format!("\n{}", c.diagnostics()),
    )
    .unwrap();
}

#[test]
fn agents_ride_out_losing_one_and_all_etcd_members() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(2)
        .etcd_members(3)
        .lease_ttl(TTL)
        .resync_interval(2)
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    c.add_pod("h1", "p1").unwrap();
    c.add_pod("h2", "p2").unwrap();

    // One member gone, the first endpoint every agent was given.
    c.etcd_cluster_mut().unwrap().kill(0).unwrap();
    let lost = lossy_pairs(&c);
    assert!(lost.is_empty(), "with one etcd member down: {lost:#?}");
    let h3 = c.add_host().unwrap();
    c.start_agent(&h3).unwrap();
    c.wait_converged().unwrap();
    c.add_pod(&h3, "p3").unwrap();
    let p = ["h1", "h2", "h3"].map(|h| datapath::peer(&c, h).unwrap());

    // All members gone.
    let offsets: Vec<usize> = ["h1", "h2", "h3"]
        .iter()
        .map(|h| c.agent_log(h).unwrap().len())
        .collect();
    c.etcd_cluster_mut().unwrap().kill(1).unwrap();
    c.etcd_cluster_mut().unwrap().kill(2).unwrap();
    let lost = lossy_pairs(&c);
    assert!(lost.is_empty(), "with etcd down: {lost:#?}");
    // Long enough for every agent to try its lease renewal (TTL/3) and fail.
    std::thread::sleep(Duration::from_secs(TTL / 3 + 2));
    expect(&c, "h1", &[&p[1], &p[2]], "etcd down");
    expect(&c, "h2", &[&p[0], &p[2]], "etcd down");
    expect(&c, "h3", &[&p[0], &p[1]], "etcd down");
    for (h, off) in ["h1", "h2", "h3"].iter().zip(&offsets) {
        assert!(
            c.agent_running(h),
            "agent on {h} died\n{}",
            c.agent_log_tail(h)
        );
        let log = c.agent_log(h).unwrap();
        let retries: Vec<&str> = log[*off..]
            .lines()
            .filter(|l| l.contains("WARN") && (l.contains("retry") || l.contains("failed")))
            .collect();
        assert!(
            !retries.is_empty(),
            "agent on {h} logged no etcd failure while etcd was down:\n{}",
            &log[*off..]
        );
    }
    let lost = lossy_pairs(&c);
    assert!(lost.is_empty(), "with etcd down a while: {lost:#?}");

    // etcd back.
    for i in 0..3 {
        c.etcd_cluster_mut().unwrap().restart(i).unwrap();
    }
    c.etcd_cluster().unwrap().wait_healthy().unwrap();
    for q in &p {
        wait_renewed(&c, &Cluster::lease_key(q.subnet));
    }
    let h4 = c.add_host().unwrap();
    c.start_agent(&h4).unwrap();
    c.wait_converged().unwrap();
    c.add_pod(&h4, "p4").unwrap();
    let p4 = datapath::peer(&c, &h4).unwrap();
    expect(&c, "h1", &[&p[1], &p[2], &p4], "h4 joined after the outage");
    expect(&c, "h2", &[&p[0], &p[2], &p4], "h4 joined after the outage");
    expect(&c, "h3", &[&p[0], &p[1], &p4], "h4 joined after the outage");
    let lost = lossy_pairs(&c);
    assert!(lost.is_empty(), "after etcd came back: {lost:#?}");
}
