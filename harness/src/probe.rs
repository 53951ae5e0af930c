//! Probes the feature tests look through from inside a namespace: a plain
//! HTTP GET over bash's `/dev/tcp` (so no curl is needed), Prometheus text
//! lookups, nftables packet counters keyed on the source address, and a
//! ping loop that opens a new flow per packet (so NAT rules are needed for
//! every packet, not only for the first of a conntrack entry).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::cmd::{self, ChildGuard};
use crate::error::{HarnessError, Result};
use crate::netns::Netns;
use crate::pinger::{parse_ping_summary, spawn_piped, PingSummary};
use crate::wait::wait_for;

/// Seconds an HTTP probe may take before `timeout` ends it.
const HTTP_TIMEOUT_SECS: u32 = 10;
/// The nftables table the counters live in (never `twill`: that is the
/// agent's).
pub const PROBE_TABLE: &str = "twprobe";

fn perr(what: impl Into<String>, reason: impl ToString) -> HarnessError {
    HarnessError::Parse {
        what: what.into(),
        reason: reason.to_string(),
    }
}

/// Status code and body of an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// Splits a raw HTTP/1.x response into status code and body.
pub fn parse_http_response(raw: &str) -> Result<HttpResponse> {
    let bad = |reason: &str| perr("http response", format!("{reason} in {raw:?}"));
    let status_line = raw.lines().next().ok_or_else(|| bad("empty response"))?;
    let mut parts = status_line.split_whitespace();
    let proto = parts.next().unwrap_or("");
    if !proto.starts_with("HTTP/") {
        return Err(bad("no HTTP status line"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status code"))?;
    let body = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .map(|(_, b)| b.to_owned())
        .ok_or_else(|| bad("no end of headers"))?;
    Ok(HttpResponse { status, body })
}

/// `GET path` on `ip:port` from inside `ns`, with bash's `/dev/tcp`.
/// `ip` of either family (an IPv6-only namespace has only `::1`).
pub fn http_get(ns: &Netns, ip: impl Into<IpAddr>, port: u16, path: &str) -> Result<HttpResponse> {
    let ip = ip.into();
    // The path goes in as "$1", never into the script text.
    let script = format!(
        "exec 3<>/dev/tcp/{ip}/{port} || exit 7; printf 'GET %s HTTP/1.0\\r\\n\\r\\n' \"$1\" >&3; cat <&3"
    );
    let secs = HTTP_TIMEOUT_SECS.to_string();
    let out = ns.exec_ok(&["timeout", &secs, "bash", "-c", &script, "probe", path])?;
    parse_http_response(&out)
}

/// `GET /readyz` from `host`'s namespace at `at`: status and trimmed body.
pub fn readyz(c: &Cluster, host: &str, at: SocketAddr) -> Result<(u16, String)> {
    let r = http_get(c.ns_of(host)?, at.ip(), at.port(), "/readyz")?;
    Ok((r.status, r.body.trim().to_owned()))
}

/// Waits up to `deadline` until `host`'s [`readyz`] at `at` is what `want`
/// accepts (`what` says what, for the timeout error, with the agent's log).
pub fn wait_readyz(
    c: &Cluster,
    host: &str,
    at: SocketAddr,
    what: &str,
    deadline: Duration,
    want: impl Fn(u16, &str) -> bool,
) -> Result<()> {
    wait_for(
        &format!("/readyz of {host}: {what}"),
        deadline,
        || {
            let (status, body) = readyz(c, host, at)?;
            Ok(want(status, &body).then_some(()))
        },
        || c.agent_log_tail(host),
    )
}

/// Runs `twilld <global..> status <sub..>` in `ns`, bounded by `timeout
/// 60`.
pub fn twilld_status(ns: &Netns, global: &[&str], sub: &[&str]) -> Result<Output> {
    let twilld = crate::bins::twilld()?;
    let twilld = twilld.to_string_lossy();
    let mut argv = vec!["timeout", "60", twilld.as_ref()];
    argv.extend_from_slice(global);
    argv.push("status");
    argv.extend_from_slice(sub);
    ns.exec(&argv)
}

/// Runs `twilld --subnet-file <host's subnet file> cleanup <extra..>` in
/// `host`'s namespace (never the default `/run/twill` path: that is the
/// machine's); an error, with its output, unless it succeeds.
pub fn twilld_cleanup(c: &Cluster, host: &str, extra: &[&str]) -> Result<()> {
    let twilld = crate::bins::twilld()?;
    let h = c.host(host)?;
    let file = h.subnet_file_path();
    let mut argv = vec![
        twilld.to_string_lossy().into_owned(),
        "--subnet-file".into(),
        file.to_string_lossy().into_owned(),
        "cleanup".into(),
    ];
    argv.extend(extra.iter().map(|a| a.to_string()));
    h.ns().exec_ok(&argv).map(drop)
}

/// `nft list table <family> <name>` in `ns`: the listing, or `None` when
/// there is no such table.
pub fn nft_table(ns: &Netns, family: &str, name: &str) -> Result<Option<String>> {
    let out = ns.exec(&["nft", "list", "table", family, name])?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// The packets the rules of the agent's isolation table commented
/// `filter` dropped (summed over those rules), from `nft -j list table
/// <family> twill-guard`.
pub fn parse_guard_drops(json: &str, filter: &str) -> Result<u64> {
    let v: Value = serde_json::from_str(json).map_err(|e| perr("nft guard table listing", e))?;
    let items = v
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| perr("nft guard table listing", format!("no nftables in {json}")))?;
    Ok(items
        .iter()
        .filter_map(|i| i.get("rule"))
        .filter(|r| r["comment"] == filter)
        .filter_map(|r| r["expr"].as_array())
        .flatten()
        .filter_map(|e| e.get("counter")?.get("packets")?.as_u64())
        .sum())
}

/// Values of the samples of metric `name` in a Prometheus/OpenMetrics text
/// (any labels); comments and other metrics are left out.
pub fn metric_values(text: &str, name: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let rest = if rest.starts_with('{') {
                &rest[rest.find('}')? + 1..]
            } else if rest.starts_with(' ') {
                rest
            } else {
                return None;
            };
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Packet count of a named counter in a `nft -j list counter` output.
pub fn parse_nft_counter(json: &str) -> Result<u64> {
    let v: Value = serde_json::from_str(json).map_err(|e| perr("nft counter listing", e))?;
    v.get("nftables")
        .and_then(Value::as_array)
        .and_then(|items| {
            items
                .iter()
                .find_map(|i| i.get("counter")?.get("packets")?.as_u64())
        })
        .ok_or_else(|| perr("nft counter listing", format!("no packets in {json}")))
}

/// nftables counters in a namespace of ours, one per source network (of
/// either family), that count ICMP (ICMPv6) echo requests arriving for
/// local delivery (`input` hook).
#[derive(Debug)]
pub struct EchoCounters<'a> {
    ns: &'a Netns,
    sources: Vec<IpNet>,
}

impl<'a> EchoCounters<'a> {
    /// Installs table [`PROBE_TABLE`] in `ns` with a counter per source,
    /// replacing the counters of an earlier `install` in `ns`. Overlapping
    /// sources each count their packets.
    pub fn install<N: Into<IpNet> + Copy>(ns: &'a Netns, sources: &[N]) -> Result<Self> {
        let sources: Vec<IpNet> = sources.iter().map(|s| (*s).into()).collect();
        // One transaction: the add makes the delete safe on a first install;
        // counters are declared before the rules that name them.
        let mut script = format!(
            "add table inet {PROBE_TABLE}\ndelete table inet {PROBE_TABLE}\ntable inet {PROBE_TABLE} {{\n"
        );
        for i in 0..sources.len() {
            script.push_str(&format!(" counter c{i} {{ }}\n"));
        }
        script.push_str(" chain input {\n  type filter hook input priority 0; policy accept;\n");
        for (i, s) in sources.iter().enumerate() {
            let rule = match s {
                IpNet::V4(_) => "ip saddr {s} icmp type echo-request",
                IpNet::V6(_) => "ip6 saddr {s} icmpv6 type echo-request",
            };
            let rule = rule.replace("{s}", &s.to_string());
            script.push_str(&format!("  {rule} counter name c{i}\n"));
        }
        script.push_str(" }\n}\n");
        let mut c = ns.command("nft", ["-f", "-"]);
        let out = cmd::run_with_stdin(&mut c, Some(script.as_bytes()))?;
        cmd::check(&c, out)?;
        Ok(EchoCounters { ns, sources })
    }

    /// Echo requests seen so far from `source` (one given to `install`).
    pub fn packets(&self, source: impl Into<IpNet>) -> Result<u64> {
        let source = source.into();
        let i = self
            .sources
            .iter()
            .position(|s| *s == source)
            .ok_or_else(|| HarnessError::Unknown {
                kind: "counted source",
                name: source.to_string(),
            })?;
        let out = self.ns.exec_ok(&[
            "nft",
            "-j",
            "list",
            "counter",
            "inet",
            PROBE_TABLE,
            &format!("c{i}"),
        ])?;
        parse_nft_counter(&out)
    }
}

/// A background loop of one-packet pings, each its own process and so its
/// own ICMP id and conntrack entry, until [`FreshFlowPinger::finish`].
/// Dropping it unfinished kills it.
#[derive(Debug)]
pub struct FreshFlowPinger {
    // Before the dir: the loop goes first.
    child: ChildGuard,
    stop_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl FreshFlowPinger {
    /// Starts pinging `target` from `ns`, one packet each `gap_ms` plus the
    /// round trip.
    pub fn start(ns: &Netns, target: Ipv4Addr, gap_ms: u32) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("twprobe-")
            .tempdir()
            .map_err(|source| HarnessError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let stop_file = dir.path().join("stop");
        let gap = format!("{}.{:03}", gap_ms / 1000, gap_ms % 1000);
        // Same summary line as ping's, so the pinger's parser reads it.
        let script = "n=0; ok=0; while [ ! -e \"$1\" ]; do n=$((n+1)); \
             if ping -n -q -c1 -W1 \"$2\" >/dev/null 2>&1; then ok=$((ok+1)); fi; \
             sleep \"$3\"; done; echo \"$n packets transmitted, $ok received\"";
        let c = ns.command(
            "bash",
            [
                "-c",
                script,
                "fresh-ping",
                &stop_file.to_string_lossy(),
                &target.to_string(),
                &gap,
            ],
        );
        Ok(FreshFlowPinger {
            child: spawn_piped(ns, c)?,
            stop_file,
            _dir: dir,
        })
    }

    /// Ends the loop after its current ping and returns the counts.
    pub fn finish(self) -> Result<PingSummary> {
        std::fs::write(&self.stop_file, b"").map_err(|source| HarnessError::Io {
            path: self.stop_file.clone(),
            source,
        })?;
        let out = self.child.wait_with_output()?;
        parse_ping_summary(&String::from_utf8_lossy(&out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_response_status_and_body() {
        let r = parse_http_response(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 20\r\n\r\nno subnet lease yet\n",
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "no subnet lease yet\n");
        assert!(parse_http_response("").is_err());
        assert!(parse_http_response("garbage\r\n\r\n").is_err());
        assert!(parse_http_response("HTTP/1.1 200 OK\r\nx: y").is_err());
    }

    #[test]
    fn metric_values_match_whole_names_with_and_without_labels() {
        let text = "# HELP twill_leases Subnet leases\n# TYPE twill_leases gauge\n\
                    twill_leases 3\ntwill_leases_extra 9\n\
                    twill_netlink_operations_total{op=\"set route\",result=\"ok\"} 2\n\
                    twill_netlink_operations_total{op=\"del neigh\",result=\"ok\"} 5\n";
        assert_eq!(metric_values(text, "twill_leases"), vec![3.0]);
        assert_eq!(
            metric_values(text, "twill_netlink_operations_total"),
            vec![2.0, 5.0]
        );
        assert!(metric_values(text, "twill_reconcile_runs_total").is_empty());
    }

    #[test]
    fn guard_drops_sum_the_counters_of_the_rules_of_one_filter() {
        let j = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"inet","name":"twill-guard"}},
            {"rule":{"comment":"tunnel","expr":[{"match":{}},{"counter":{"packets":3,"bytes":9}},{"drop":null}]}},
            {"rule":{"comment":"tunnel","expr":[{"counter":{"packets":2,"bytes":9}}]}},
            {"rule":{"comment":"source","expr":[{"counter":{"packets":7,"bytes":9}}]}}]}"#;
        assert_eq!(parse_guard_drops(j, "tunnel").unwrap(), 5);
        assert_eq!(parse_guard_drops(j, "pod_vxlan").unwrap(), 0);
        assert!(parse_guard_drops("nope", "tunnel").is_err());
    }

    #[test]
    fn nft_counter_packets() {
        let j = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},{"counter":{"family":"ip","name":"c0","table":"twprobe","handle":3,"packets":7,"bytes":588}}]}"#;
        assert_eq!(parse_nft_counter(j).unwrap(), 7);
        assert!(parse_nft_counter(r#"{"nftables":[]}"#).is_err());
        assert!(parse_nft_counter("nope").is_err());
    }
}
