//! criterion micro-benchmarks of the pure cores: subnet allocation with 1k
//! and 5k existing leases, and the reconcile diff (plus the op -> lease
//! lookup the agent logs with) at 1k and 5k nodes.

use std::net::Ipv4Addr;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::rngs::StdRng;
use rand::SeedableRng;
use subnet_allocator::{allocate, Lease, NetworkConfig};
use twill::reconcile::{desired_state, diff, remote_nodes, KernelState, Local, NodeIndex};
use twill_bench::scale::{fake_lease, local_view};

fn config() -> NetworkConfig {
    // /29 subnets of a /16: 8192 slots, room for 5k leases plus free ones.
    match NetworkConfig::parse(
        br#"{"Network":"10.244.0.0/16","SubnetLen":29,"Backend":{"Type":"vxlan"}}"#,
    ) {
        Ok(c) => c,
        Err(e) => panic!("benchmark network config: {e}"),
    }
}

fn leases(cfg: &NetworkConfig, n: u32) -> Vec<Lease> {
    (1..=n)
        .map(|i| match fake_lease(cfg.network, cfg.subnet_len, i) {
            Ok(l) => l,
            Err(e) => panic!("fake lease {i}: {e}"),
        })
        .collect()
}

/// The benchmarking node itself (fake lease 0), as the agent sees itself.
fn local(cfg: &NetworkConfig) -> Local {
    match fake_lease(cfg.network, cfg.subnet_len, 0) {
        Ok(l) => local_view(cfg.network, l.subnet, l.attrs.public_ip),
        Err(e) => panic!("local lease: {e}"),
    }
}

fn bench_allocate(c: &mut Criterion) {
    let cfg = config();
    let mut g = c.benchmark_group("allocate");
    for n in [1000u32, 5000] {
        let existing = leases(&cfg, n);
        let mut rng = StdRng::seed_from_u64(7);
        // A public IP no fake lease has: a fresh node picking a free subnet.
        let ip = Ipv4Addr::new(192, 0, 2, 200);
        g.bench_with_input(BenchmarkId::new("new node", n), &existing, |b, ex| {
            b.iter(|| allocate(black_box(&cfg), black_box(ex), ip, None, &mut rng))
        });
    }
    g.finish();
}

fn bench_diff(c: &mut Criterion) {
    let cfg = config();
    let mut g = c.benchmark_group("reconcile");
    for n in [1000u32, 5000] {
        let all = leases(&cfg, n);
        let me = local(&cfg);
        let (nodes, _) = remote_nodes(&me, &all);
        let desired = desired_state(&nodes);
        // One node joined since the kernel was last programmed.
        let (fewer, _) = remote_nodes(&me, &all[1..]);
        let actual = desired_state(&fewer);
        g.bench_with_input(BenchmarkId::new("diff, one node joined", n), &n, |b, _| {
            b.iter(|| diff(black_box(&desired), black_box(&actual)))
        });
        g.bench_with_input(BenchmarkId::new("diff vs empty kernel", n), &n, |b, _| {
            b.iter(|| diff(black_box(&desired), black_box(&KernelState::default())))
        });
        g.bench_with_input(
            BenchmarkId::new("remote_nodes + desired_state", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let (nodes, _) = remote_nodes(&me, black_box(&all));
                    desired_state(&nodes)
                })
            },
        );
    }
    g.finish();
}

/// The agent names the node of every op it applies (for its log line)
/// through a `NodeIndex` built once per pass: index build plus one lookup
/// per op of a full sync, which must stay linear in n.
fn bench_op_node(c: &mut Criterion) {
    let cfg = config();
    let mut g = c.benchmark_group("agent");
    g.sample_size(10)
        .sampling_mode(criterion::SamplingMode::Flat);
    for n in [500u32, 1000, 2000] {
        let all = leases(&cfg, n);
        let (nodes, _) = remote_nodes(&local(&cfg), &all);
        let ops = diff(&desired_state(&nodes), &KernelState::default());
        g.bench_with_input(
            BenchmarkId::new("op_node for every op of a full sync", n),
            &n,
            |b, _| {
                b.iter(|| {
                    let idx = NodeIndex::new(black_box(&all));
                    ops.iter().filter(|op| idx.find(op).is_some()).count()
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench_allocate, bench_diff, bench_op_node);
criterion_main!(benches);
