//! `twill-bench`: runs one benchmark per subcommand and saves its output as
//! JSON; `report` combines the saved outputs into RESULTS.md and the chart.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use twill_bench::{
    cni, converge, datapath, footprint, microbench, probe, report, results::BenchOutput, scale,
    storm, wireguard,
};

/// Benchmark order in the report.
const ALL: [&str; 9] = [
    "cni",
    "converge",
    "storm",
    "datapath",
    "footprint",
    "probe",
    "scale",
    "micro",
    "wireguard",
];

#[derive(Parser)]
#[command(about = "twill benchmarks (root: creates network namespaces)")]
struct Cli {
    /// Fewer repetitions and sizes.
    #[arg(long, global = true)]
    quick: bool,
    /// Where the JSON outputs go.
    #[arg(long, global = true, default_value = "target/bench-results")]
    out: PathBuf,
    /// Directory of the release binaries (twill, twilld).
    #[arg(
        long,
        global = true,
        env = "TWILL_BIN_DIR",
        default_value = "target/release"
    )]
    bin_dir: PathBuf,
    /// The CNI plugin as shipped (`scripts/build-cni.sh`: static, non-PIE);
    /// defaults to `twill` in --bin-dir.
    #[arg(long, global = true, env = "TWILL_CNI_BIN")]
    cni_bin: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// CNI ADD/DEL latency, twill vs bridge + host-local.
    Cni,
    /// Convergence when a host joins and leaves.
    Converge {
        /// Cluster sizes instead of the default ones (comma-separated).
        #[arg(long, env = "TWILL_CONVERGE_SIZES", value_delimiter = ',')]
        sizes: Vec<usize>,
    },
    /// Convergence when N hosts start their agents at once.
    Storm {
        /// Host counts (comma-separated); default 100,250,500 (100 with
        /// --quick).
        #[arg(long, env = "TWILL_STORM_SIZES", value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Seconds to wait for one size to converge.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// iperf3 throughput, VXLAN and host-gw vs underlay.
    Datapath,
    /// twilld RSS / CPU, binary sizes.
    Footprint,
    /// Control-plane scale on a loopback etcd.
    Scale,
    /// twilld CPU of peer probing: 3 nodes idle, 1,000 simulated peers.
    Probe,
    /// iperf3 throughput through the WireGuard tunnel vs VXLAN and the
    /// underlay; the agent's and its helper's CPU and RSS.
    Wireguard,
    /// Saves the criterion micro-benchmark results (run `cargo bench -p
    /// twill-bench --bench micro` first) as a benchmark output.
    Micro {
        #[arg(long, default_value = "target/criterion")]
        criterion_dir: PathBuf,
        /// Ignore results older than this file (left from an older run).
        #[arg(long)]
        newer_than: Option<PathBuf>,
    },
    /// Writes RESULTS.md and the chart from the saved outputs.
    Report {
        #[arg(long, default_value = "bench/RESULTS.md")]
        markdown: PathBuf,
        #[arg(long, default_value = "bench/latency.svg")]
        chart: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let reps = |quick: usize, full: usize| if cli.quick { quick } else { full };
    let cni_bin = cli
        .cni_bin
        .clone()
        .unwrap_or_else(|| cli.bin_dir.join("twill"));
    // The harness looks for the binaries here.
    std::env::set_var(twill_harness::bins::BIN_DIR_ENV, &cli.bin_dir);
    let out: BenchOutput = match &cli.cmd {
        Cmd::Cni => cni::run(&cni::CniOpts {
            twill_bin: cni_bin,
            pods: 100,
            workers: 8,
            reps: reps(2, 3),
        })?,
        Cmd::Converge { sizes } => converge::run(&converge::ConvergeOpts {
            sizes: match (sizes.is_empty(), cli.quick) {
                (false, _) => sizes.clone(),
                (true, true) => vec![3, 10],
                (true, false) => vec![3, 10, 25],
            },
            reps: reps(3, 5),
        })?,
        Cmd::Storm { sizes, timeout } => storm::run(&storm::StormOpts {
            sizes: match (sizes.is_empty(), cli.quick) {
                (false, _) => sizes.clone(),
                (true, true) => vec![100],
                (true, false) => vec![100, 250, 500],
            },
            timeout: std::time::Duration::from_secs(*timeout),
        })?,
        Cmd::Datapath => datapath::run(&datapath::DatapathOpts {
            seconds: 5,
            reps: reps(1, 3),
        })?,
        Cmd::Footprint => footprint::run(&footprint::FootprintOpts {
            leases: 1000,
            reps: reps(1, 3),
            bin_dir: cli.bin_dir.clone(),
            cni_bin,
        })?,
        Cmd::Wireguard => wireguard::run(&wireguard::WireguardOpts {
            seconds: 5,
            reps: reps(1, 3),
        })?,
        Cmd::Scale => scale::run(&scale::ScaleOpts {
            sizes: vec![1000, 2000, 5000],
            reps: reps(3, 5),
            events: reps(10, 20) as u32,
            race_agents: 250,
        })?,
        Cmd::Probe => probe::run(&probe::ProbeOpts {
            peers: 1000,
            reps: reps(1, 3),
            window: std::time::Duration::from_secs(10),
        })?,
        Cmd::Micro {
            criterion_dir,
            newer_than,
        } => {
            let since = match newer_than {
                Some(p) => Some(
                    std::fs::metadata(p)
                        .and_then(|m| m.modified())
                        .with_context(|| format!("reading the time of {}", p.display()))?,
                ),
                None => None,
            };
            microbench::collect(criterion_dir, &microbench::GROUPS, since)?
        }
        Cmd::Report { markdown, chart } => {
            let mode = if cli.quick {
                "quick (fewer repetitions and sizes)"
            } else {
                "full"
            };
            let table = report::write(&cli.out, &ALL, &PathBuf::from("."), markdown, chart, mode)?;
            print!("{table}");
            println!("wrote {} and {}", markdown.display(), chart.display());
            return Ok(());
        }
    };
    out.save(&cli.out)
        .with_context(|| format!("saving {} results", out.name))?;
    print!("{}", out.table());
    Ok(())
}
