//! Data path: iperf3 TCP throughput pod-to-pod across hosts over VXLAN and
//! host-to-host over the bare underlay, interleaved in one run.

use std::net::Ipv4Addr;
use std::process::{Child, Stdio};
use std::time::Duration;

use netns_tests::{Cluster, Netns};

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

fn measure(
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

pub fn run(opts: &DatapathOpts) -> anyhow::Result<BenchOutput> {
    let mut out = BenchOutput::new(
        "datapath",
        "3. Data path: iperf3 TCP, VXLAN vs bare underlay",
        "Two hosts on the veth/bridge underlay, one pod on each. iperf3 TCP for the given \
         seconds, 1 and 4 streams, pod h1 -> pod h2 over twill's VXLAN and host h1 -> host h2 \
         over the underlay, interleaved in the same run. Ratio = VXLAN / underlay. Everything \
         is on one machine: the 'wire' is veth + bridge, so absolute figures are CPU-bound.",
    );
    let mut c = Cluster::builder().hosts(2).build()?;
    c.start_agents()?;
    c.wait_converged()?;
    let a = c.add_pod("h1", "a")?;
    let b = c.add_pod("h2", "b")?;
    let _ = a;
    anyhow::ensure!(c.ping("a", b), "pod a cannot reach pod b over VXLAN");
    let h2_ip = c.host("h2")?.ip();
    for _ in 0..opts.reps {
        for streams in [1u32, 4] {
            let ul = measure(
                c.host("h2")?.ns(),
                h2_ip,
                c.host("h1")?.ns(),
                streams,
                opts.seconds,
            )?;
            let vx = measure(c.pod("b")?.ns(), b, c.pod("a")?.ns(), streams, opts.seconds)?;
            out.push(
                &format!("underlay host-to-host, {streams} stream(s)"),
                "Gbit/s",
                ul,
            );
            out.push(
                &format!("vxlan pod-to-pod, {streams} stream(s)"),
                "Gbit/s",
                vx,
            );
            out.push(
                &format!("ratio vxlan/underlay, {streams} stream(s)"),
                "x",
                vx / ul,
            );
        }
    }
    for streams in [1u32, 4] {
        out.set_target(
            &format!("ratio vxlan/underlay, {streams} stream(s)"),
            "x",
            Target::at_least(0.9),
        );
        let r = out.row(
            &format!("host-gw pod-to-pod, {streams} stream(s)"),
            "Gbit/s",
        );
        r.not_implemented = true;
    }
    out.notes
        .push("host-gw backend: not implemented in twilld yet, so not measured".to_owned());
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
