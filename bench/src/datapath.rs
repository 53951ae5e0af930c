//! Data path: iperf3 TCP throughput pod-to-pod across hosts over VXLAN and
//! over host-gw routes, and host-to-host over the bare underlay, interleaved
//! in one run.

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use twill_harness::{Cluster, Netns};

use crate::results::{BenchOutput, Target};

#[derive(Debug, Clone)]
pub struct DatapathOpts {
    pub seconds: u32,
    pub reps: usize,
}

/// An iperf3 server, killed by PID on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PORT: &str = "5201";

/// Received bits/s from `iperf3 -J` client output.
pub fn parse_iperf_bps(json: &str) -> anyhow::Result<f64> {
    let v: serde_json::Value = serde_json::from_str(json)?;
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        anyhow::bail!("iperf3: {e}");
    }
    v.pointer("/end/sum_received/bits_per_second")
        .and_then(|b| b.as_f64())
        .ok_or_else(|| anyhow::anyhow!("iperf3 output has no end.sum_received.bits_per_second"))
}

pub(crate) fn measure(
    server_ns: &Netns,
    server_ip: Ipv4Addr,
    client_ns: &Netns,
    streams: u32,
    seconds: u32,
) -> anyhow::Result<f64> {
    let ip = server_ip.to_string();
    let child = server_ns
        .command("iperf3", ["-s", "-1", "-B", &ip, "-p", PORT])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    server_ns.register_pid(child.id() as i32);
    let _server = Server(child);
    std::thread::sleep(Duration::from_millis(300));
    let (p, t) = (streams.to_string(), seconds.to_string());
    let out = client_ns.exec(&["iperf3", "-c", &ip, "-p", PORT, "-t", &t, "-P", &p, "-J"])?;
    let bps = parse_iperf_bps(&String::from_utf8_lossy(&out.stdout))?;
    Ok(bps / 1e9)
}

/// The network config of the host-gw cluster (same network and subnet size
/// as the VXLAN one, so only the backend differs).
pub const HOST_GW_CONFIG: &str =
    r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#;

/// A two-host cluster with agents running, converged, one pod per host
/// (`a` on h1, `b` on h2) that reach each other. Returns the cluster and
/// pod b's IP.
pub(crate) fn two_host_cluster(
    config: Option<&str>,
    what: &str,
) -> anyhow::Result<(Cluster, Ipv4Addr)> {
    let mut builder = Cluster::builder().hosts(2);
    if let Some(cfg) = config {
        builder = builder.network_config(cfg);
    }
    let mut c = builder.build()?;
    c.start_agents()?;
    // `wait_converged` only knows VXLAN routes; subnet files are what
    // every backend writes, and the ping below proves the routes.
    for h in ["h1", "h2"] {
        c.wait_subnet_file(h)?;
    }
    c.add_pod("h1", "a")?;
    let b = c.add_pod("h2", "b")?;
    anyhow::ensure!(
        c.ping_within("a", b, Duration::from_secs(20)),
        "pod a cannot reach pod b over {what}\n{}",
        c.diagnostics()
    );
    Ok((c, b))
}

/// Pushes a throughput figure and its ratio to the underlay.
/// iperf3 from pod `a` to pod `b` (at `b_ip`) of a two-host cluster.
pub(crate) fn pod_to_pod(
    c: &Cluster,
    b_ip: Ipv4Addr,
    streams: u32,
    seconds: u32,
) -> anyhow::Result<f64> {
    measure(c.pod("b")?.ns(), b_ip, c.pod("a")?.ns(), streams, seconds)
}

/// iperf3 from host h1 to host h2 over the bare underlay, recorded as
/// the run's underlay figure.
pub(crate) fn underlay(
    out: &mut BenchOutput,
    c: &Cluster,
    streams: u32,
    seconds: u32,
) -> anyhow::Result<f64> {
    let h2 = c.host("h2")?;
    let ul = measure(h2.ns(), h2.ip(), c.host("h1")?.ns(), streams, seconds)?;
    out.push(
        &format!("underlay host-to-host, {streams} stream(s)"),
        "Gbit/s",
        ul,
    );
    Ok(ul)
}

fn push_path(out: &mut BenchOutput, path: &str, streams: u32, gbps: f64, underlay: f64) {
    out.push(
        &format!("{path} pod-to-pod, {streams} stream(s)"),
        "Gbit/s",
        gbps,
    );
    out.push(
        &format!("ratio {path}/underlay, {streams} stream(s)"),
        "x",
        gbps / underlay,
    );
}

pub fn run(opts: &DatapathOpts) -> anyhow::Result<BenchOutput> {
    let mut out = BenchOutput::new(
        "datapath",
        "3. Data path: iperf3 TCP, VXLAN and host-gw vs bare underlay",
        "Two clusters of two hosts each on the veth/bridge underlay, one with the VXLAN \
         backend and one with host-gw, one pod per host. iperf3 TCP for the given seconds, \
         1 and 4 streams: host h1 -> host h2 over the bare underlay, pod h1 -> pod h2 over \
         twill's VXLAN, pod h1 -> pod h2 over host-gw routes, interleaved in the same run \
         (one after the other per repetition, never at once). Ratio = pod-to-pod / underlay \
         of the same repetition. Everything is on one machine: the 'wire' is veth + bridge, so \
         absolute figures are CPU-bound.",
    );
    let (vx, vx_b) = two_host_cluster(None, "VXLAN")?;
    let (gw, gw_b) = two_host_cluster(Some(HOST_GW_CONFIG), "host-gw")?;
    for _ in 0..opts.reps {
        for streams in [1u32, 4] {
            let ul = underlay(&mut out, &vx, streams, opts.seconds)?;
            let v = pod_to_pod(&vx, vx_b, streams, opts.seconds)?;
            push_path(&mut out, "vxlan", streams, v, ul);
            let g = pod_to_pod(&gw, gw_b, streams, opts.seconds)?;
            push_path(&mut out, "host-gw", streams, g, ul);
        }
    }
    for streams in [1u32, 4] {
        out.set_target(
            &format!("ratio vxlan/underlay, {streams} stream(s)"),
            "x",
            Target::at_least(0.9),
        );
        out.set_target(
            &format!("ratio host-gw/underlay, {streams} stream(s)"),
            "x",
            Target::at_least(0.97),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iperf_json() {
        let ok = r#"{"end":{"sum_received":{"bits_per_second":9.5e9}}}"#;
        assert_eq!(parse_iperf_bps(ok).unwrap(), 9.5e9);
        assert!(parse_iperf_bps(r#"{"error":"unable to connect"}"#).is_err());
        assert!(parse_iperf_bps("{}").is_err());
    }
}
