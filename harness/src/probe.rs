//! Probes the feature tests look through from inside a namespace: a plain
//! HTTP GET over bash's `/dev/tcp` (so no curl is needed), Prometheus text
//! lookups, nftables packet counters keyed on the source address, and a
//! ping loop that opens a new flow per packet (so NAT rules are needed for
//! every packet, not only for the first of a conntrack entry).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::cmd::{self, ChildGuard};
use crate::error::{HarnessError, Result};
use crate::netns::Netns;
use crate::pinger::{parse_ping_summary, spawn_piped, PingSummary};

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

/// nftables counters in a namespace of ours, one per source network, that
/// count ICMP echo requests arriving for local delivery (`input` hook).
#[derive(Debug)]
pub struct EchoCounters<'a> {
    ns: &'a Netns,
    sources: Vec<Ipv4Net>,
}

impl<'a> EchoCounters<'a> {
    /// Installs table [`PROBE_TABLE`] in `ns` with a counter per source,
    /// replacing the counters of an earlier `install` in `ns`. Overlapping
    /// sources each count their packets.
    pub fn install(ns: &'a Netns, sources: &[Ipv4Net]) -> Result<Self> {
        // One transaction: the add makes the delete safe on a first install;
        // counters are declared before the rules that name them.
        let mut script = format!(
            "add table ip {PROBE_TABLE}\ndelete table ip {PROBE_TABLE}\ntable ip {PROBE_TABLE} {{\n"
        );
        for i in 0..sources.len() {
            script.push_str(&format!(" counter c{i} {{ }}\n"));
        }
        script.push_str(" chain input {\n  type filter hook input priority 0; policy accept;\n");
        for (i, s) in sources.iter().enumerate() {
            script.push_str(&format!(
                "  ip saddr {s} icmp type echo-request counter name c{i}\n"
            ));
        }
        script.push_str(" }\n}\n");
        let mut c = ns.command("nft", ["-f", "-"]);
        let out = cmd::run_with_stdin(&mut c, Some(script.as_bytes()))?;
        cmd::check(&c, out)?;
        Ok(EchoCounters {
            ns,
            sources: sources.to_vec(),
        })
    }

    /// Echo requests seen so far from `source` (one given to `install`).
    pub fn packets(&self, source: Ipv4Net) -> Result<u64> {
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
            "ip",
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
    fn nft_counter_packets() {
        let j = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},{"counter":{"family":"ip","name":"c0","table":"twprobe","handle":3,"packets":7,"bytes":588}}]}"#;
        assert_eq!(parse_nft_counter(j).unwrap(), 7);
        assert!(parse_nft_counter(r#"{"nftables":[]}"#).is_err());
        assert!(parse_nft_counter("nope").is_err());
    }
}
