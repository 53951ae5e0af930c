//! Control-plane scale, no kernel: fake leases in a real etcd on loopback;
//! full-sync cost (list + `remote_nodes` + `desired_state` + `diff` against an
//! empty kernel) and per-event cost (watch event -> lease map -> diff) at
//! growing node counts, and a race of agents acquiring leases at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt, TryStreamExt};
use ipnet::Ipv4Net;
use subnet_allocator::{
    acquire_lease, EtcdOptions, EtcdStore, Lease, LeaseAttrs, LeaseEvent, LeaseStore,
    NetworkConfig, VxlanData,
};
use twill::guard::tunnel_peers;
use twill::probe::targets;
use twill::reconcile::delta::hooks::{edit_targets, Members};
use twill::reconcile::delta::{PeerSet, V4};
use twill::reconcile::{desired_state, diff, remote_nodes, KernelState, Local, Mode, Op};

use crate::localetcd::LocalEtcd;
use crate::results::{BenchOutput, Target};
use crate::stats::{median, ms, quantile};

/// Fake node `i`: public IP in 198.18.0.0/15, a unique locally administered
/// VTEP MAC.
pub fn fake_attrs(i: u32) -> LeaseAttrs {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i);
    let b = i.to_be_bytes();
    LeaseAttrs {
        public_ip: ip,
        public_ipv6: None,
        backend_type: "vxlan".to_owned(),
        backend_data: Some(VxlanData {
            vni: 1,
            vtep_mac: format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3]),
        }),
        backend_v6_data: None,
        node_name: None,
        public_key: None,
    }
}

/// The `i`-th subnet of length `len` in `network` (`i = 0` is the first).
pub fn nth_subnet(network: Ipv4Net, len: u8, i: u32) -> anyhow::Result<Ipv4Net> {
    let size = 1u32
        .checked_shl(u32::from(32 - len))
        .ok_or_else(|| anyhow::anyhow!("bad subnet length {len}"))?;
    let base = u32::from(network.network());
    let addr = i
        .checked_mul(size)
        .and_then(|o| base.checked_add(o))
        .ok_or_else(|| anyhow::anyhow!("subnet {i} of {network} overflows"))?;
    Ok(Ipv4Net::new(Ipv4Addr::from(addr), len)?)
}

/// A fake lease for node `i` (subnet `i`, attrs [`fake_attrs`]).
pub fn fake_lease(network: Ipv4Net, len: u8, i: u32) -> anyhow::Result<Lease> {
    Ok(Lease {
        subnet: nth_subnet(network, len, i)?,
        ipv6_subnet: None,
        attrs: fake_attrs(i),
        lease_id: None,
        ttl_remaining: None,
    })
}

/// Writes fake leases `from..to` into `store`, 64 at a time.
pub async fn write_fake_leases(
    store: &EtcdStore,
    cfg: &NetworkConfig,
    from: u32,
    to: u32,
) -> anyhow::Result<()> {
    stream::iter(from..to)
        .map(|i| async move {
            let l = fake_lease(cfg.network, cfg.subnet_len, i)?;
            store
                .create_lease(l.subnet, &l.attrs, Duration::ZERO)
                .await
                .map_err(|e| anyhow::anyhow!("writing fake lease {}: {e}", l.subnet))?;
            anyhow::Ok(())
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

async fn connect(endpoint: &str, prefix: &str) -> anyhow::Result<EtcdStore> {
    EtcdStore::connect(EtcdOptions {
        endpoints: vec![endpoint.to_owned()],
        prefix: prefix.to_owned(),
        ..EtcdOptions::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("connecting to etcd {endpoint}: {e}"))
}

/// A store under `prefix` holding a VXLAN network config of 10.244.0.0/16
/// with subnets of `subnet_len`, and that config.
async fn configured(
    endpoint: &str,
    prefix: &str,
    subnet_len: u8,
) -> anyhow::Result<(EtcdStore, NetworkConfig)> {
    let store = connect(endpoint, prefix).await?;
    let cfg = NetworkConfig::parse(
        format!(
            r#"{{"Network":"10.244.0.0/16","SubnetLen":{subnet_len},"Backend":{{"Type":"vxlan","VNI":1}}}}"#
        )
        .as_bytes(),
    )?;
    store.put_network_config(&cfg).await?;
    Ok((store, cfg))
}

/// Options of the scale benchmark.
#[derive(Debug, Clone)]
pub struct ScaleOpts {
    pub sizes: Vec<u32>,
    pub reps: usize,
    /// Joins (and as many leaves) per size for the per-event cost.
    pub events: u32,
    pub race_agents: u32,
}

/// The local node everything is diffed for: subnet 0 of the network.
const LOCAL_INDEX: u32 = 0;

/// The reconcile view of a local node (vxlan, no direct routing).
pub fn local_view(network: Ipv4Net, subnet: Ipv4Net, public_ip: Ipv4Addr) -> Local {
    Local {
        network,
        subnet,
        subnet6: None,
        underlay: Ipv4Net::new(public_ip, 32).unwrap_or_else(|_| Ipv4Net::from(public_ip)),
        mode: Mode::Vxlan {
            direct_routing: false,
        },
        v6_tunnel: false,
    }
}

pub fn run(opts: &ScaleOpts) -> anyhow::Result<BenchOutput> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let etcd = LocalEtcd::start()?;
    rt.block_on(run_async(opts, &etcd.endpoint()))
}

async fn run_async(opts: &ScaleOpts, endpoint: &str) -> anyhow::Result<BenchOutput> {
    let mut out = BenchOutput::new(
        "scale",
        "5. Control-plane scale (etcd on loopback, no kernel)",
        "Fake vxlan leases for N nodes in a real etcd 3.4 (/29 subnets of 10.244.0.0/16). \
         Full sync = list_leases + remote_nodes + desired_state + diff against an empty \
         KernelState. Per event = put/delete one lease -> watch event received -> lease map \
         updated -> the agent's per-peer delta (PeerSet::update: the ops for the touched \
         peer, what the agent applies without reading the kernel; its cost should not grow \
         with N). Peer hooks = what else follows a changed peer on each event: the tunnel's \
         members and the probe targets, rebuilt from every node and compared whole (before \
         the per-peer hooks) or updated from the changed peers (now). Race = N agents, each with its own \
         etcd connection, calling acquire_lease at once on a /16 with /24 subnets.",
    );
    for &n in &opts.sizes {
        let prefix = format!("/twill-bench-{n}/network");
        let (store, _) = configured(endpoint, &prefix, 29).await?;
        let cfg = store.get_network_config().await?;
        let t = Instant::now();
        // Subnet 0 is the local node; fake nodes are 1..=n.
        write_fake_leases(&store, &cfg, 1, n + 1).await?;
        out.notes.push(format!(
            "writing {n} leases with 64 concurrent create_lease calls took {:.0} ms",
            ms(t.elapsed())
        ));
        let local = fake_lease(cfg.network, cfg.subnet_len, LOCAL_INDEX)?;
        let (local_subnet, local_ip) = (local.subnet, local.attrs.public_ip);

        for _ in 0..opts.reps {
            let t0 = Instant::now();
            let snap = store.list_leases().await?;
            let t1 = Instant::now();
            let (nodes, _) = remote_nodes(
                &local_view(cfg.network, local_subnet, local_ip),
                &snap.leases,
            );
            let desired = desired_state(&nodes);
            let ops = diff(&desired, &KernelState::default());
            let t2 = Instant::now();
            anyhow::ensure!(
                nodes.len() == n as usize && ops.len() == 3 * n as usize,
                "full sync at {n} nodes saw {} nodes and {} ops, expected {n} and {}",
                nodes.len(),
                ops.len(),
                3 * n
            );
            out.push(&format!("full sync, {n} nodes: total"), "ms", ms(t2 - t0));
            out.push(&format!("full sync, {n} nodes: list"), "ms", ms(t1 - t0));
            out.push(
                &format!("full sync, {n} nodes: compute (remote_nodes+desired+diff)"),
                "ms",
                ms(t2 - t1),
            );
            out.push(
                &format!("full sync, {n} nodes: total per node"),
                "us",
                ms(t2 - t0) * 1000.0 / f64::from(n),
            );
            out.push(
                &format!("full sync, {n} nodes: compute per node"),
                "us",
                ms(t2 - t1) * 1000.0 / f64::from(n),
            );
        }

        for _ in 0..opts.reps {
            let (rtt, compute, hooks) =
                events(&store, &cfg, n, opts.events, local_subnet, local_ip).await?;
            out.push(
                &format!("per event, {n} nodes: put -> watch event (p50)"),
                "ms",
                median(&rtt).unwrap_or(f64::NAN),
            );
            out.push(
                &format!("per event, {n} nodes: event -> diff done (p50)"),
                "ms",
                median(&compute).unwrap_or(f64::NAN),
            );
            out.push(
                &format!("per event, {n} nodes: event -> diff done (max)"),
                "ms",
                quantile(&compute, 1.0).unwrap_or(f64::NAN),
            );
            out.samples("scale", &format!("event->diff, {n} nodes"), &compute);
            out.push(
                &format!("per event, {n} nodes: peer hooks, whole rebuild (p50)"),
                "ms",
                median(&hooks.whole).unwrap_or(f64::NAN),
            );
            out.push(
                &format!("per event, {n} nodes: peer hooks, per changed peer (p50)"),
                "ms",
                median(&hooks.delta).unwrap_or(f64::NAN),
            );
            out.push(
                &format!("per event, {n} nodes: peer hooks, per changed peer (max)"),
                "ms",
                quantile(&hooks.delta, 1.0).unwrap_or(f64::NAN),
            );
        }
    }
    linearity_notes(&mut out, &opts.sizes);

    for rep in 0..opts.reps {
        let (secs, distinct, failed) = race(endpoint, rep, opts.race_agents).await?;
        let n = opts.race_agents;
        out.push(
            &format!("race: {n} agents acquire_lease at once, total"),
            "ms",
            secs * 1000.0,
        );
        out.push(
            &format!("race: distinct subnets of {n}"),
            "count",
            distinct as f64,
        );
        out.push("race: agents that failed", "count", failed as f64);
    }
    let n = opts.race_agents;
    out.set_target(
        &format!("race: distinct subnets of {n}"),
        "count",
        Target::at_least(f64::from(n)),
    );
    out.set_target("race: agents that failed", "count", Target::below(1.0));
    Ok(out)
}

/// Per event, the time the peer hooks took (ms) both ways.
#[derive(Default)]
struct HookTimes {
    /// Rebuilt from every node and compared whole, as the agent did before
    /// it followed the changed peers.
    whole: Vec<f64>,
    /// From the batch's changed peers.
    delta: Vec<f64>,
}

/// `events` joins then `events` leaves; per event the etcd round trip (put
/// or delete until the watch delivers it), the agent's compute time, and
/// the peer hooks' (the tunnel's members and the probe targets) both ways.
async fn events(
    store: &EtcdStore,
    cfg: &NetworkConfig,
    n: u32,
    events: u32,
    local_subnet: Ipv4Net,
    local_ip: Ipv4Addr,
) -> anyhow::Result<(Vec<f64>, Vec<f64>, HookTimes)> {
    let snap = store.list_leases().await?;
    let mut map: BTreeMap<Ipv4Net, Lease> =
        snap.leases.into_iter().map(|l| (l.subnet, l)).collect();
    let mut watch = store.watch_leases(snap.revision).await?;
    // The agent's per-peer delta, from a kernel that holds the full desired
    // state (what its last full pass left).
    let local = local_view(cfg.network, local_subnet, local_ip);
    let leases: Vec<Lease> = map.values().cloned().collect();
    let programmed = desired_state(&remote_nodes(&local, &leases).0);
    let mut peers = PeerSet::new(local, &map, programmed);
    let (mut rtt, mut compute) = (Vec::new(), Vec::new());
    // The hooks' state as the last full pass left it: members written, and
    // targets published, both ways.
    let nodes: Vec<_> = peers.nodes().cloned().collect();
    let mut members = Members::new::<V4>(&nodes);
    let (mut written, mut list) = (tunnel_peers(&nodes), targets(local_subnet, &nodes));
    let (mut whole_written, mut whole_list) = (written.clone(), list.clone());
    let mut hooks = HookTimes::default();
    let extra: Vec<Lease> = (0..events)
        .map(|k| fake_lease(cfg.network, cfg.subnet_len, n + 1 + k))
        .collect::<anyhow::Result<_>>()?;
    for (join, lease) in extra
        .iter()
        .map(|l| (true, l))
        .chain(extra.iter().map(|l| (false, l)))
    {
        let t0 = Instant::now();
        if join {
            store
                .create_lease(lease.subnet, &lease.attrs, Duration::ZERO)
                .await?;
        } else {
            store.delete_lease(lease.subnet).await?;
        }
        let (batch, _) = watch
            .next()
            .await?
            .ok_or_else(|| anyhow::anyhow!("etcd closed the lease watch"))?;
        let t1 = Instant::now();
        let mut touched = Vec::new();
        for ev in batch {
            match ev {
                LeaseEvent::Added(l) => {
                    touched.push(l.subnet);
                    map.insert(l.subnet, l);
                }
                LeaseEvent::Removed(s) => {
                    touched.push(s);
                    map.remove(&s);
                }
                // The bench's leases are IPv4 ones.
                LeaseEvent::RemovedIpv6Only(_) | LeaseEvent::Unusable { .. } => {}
            }
        }
        let delta = peers.update(&map, touched);
        let ops: Vec<Op> = delta.ops.iter().map(|(_, op)| op.clone()).collect();
        for op in &ops {
            peers.record(op);
        }
        let t2 = Instant::now();
        // The hooks from the changed peers: the members that came and went
        // applied to those written, the targets edited in place.
        let change = members.update::<V4>(&delta.peers);
        change.apply_to(&mut written);
        let edited = edit_targets::<V4>(&local, &mut list, &delta.peers);
        let t3 = Instant::now();
        // The same rebuilt whole: every node cloned, members and targets
        // made from all and compared with those in place.
        let nodes: Vec<_> = peers.nodes().cloned().collect();
        let want = tunnel_peers(&nodes);
        let (added, removed) = (want.minus(&whole_written), whole_written.minus(&want));
        let new_list = targets(local_subnet, &nodes);
        let republished = new_list != whole_list;
        whole_written = want;
        whole_list = new_list;
        let t4 = Instant::now();
        anyhow::ensure!(
            change.added == added
                && change.removed == removed
                && written == whole_written
                && list == whole_list
                && edited == republished,
            "the per-peer hooks differ from their whole rebuild after a {}",
            if join { "join" } else { "leave" }
        );
        hooks.delta.push(ms(t3 - t2));
        hooks.whole.push(ms(t4 - t3));
        anyhow::ensure!(
            ops.len() == 3,
            "one {} gave {} ops, expected 3",
            if join { "join" } else { "leave" },
            ops.len()
        );
        rtt.push(ms(t1 - t0));
        compute.push(ms(t2 - t1));
    }
    Ok((rtt, compute, hooks))
}

/// Whether cost per node stays flat from the smallest to the largest size.
fn linearity_notes(out: &mut BenchOutput, sizes: &[u32]) {
    let (Some(&lo), Some(&hi)) = (sizes.iter().min(), sizes.iter().max()) else {
        return;
    };
    if lo == hi {
        return;
    }
    let event = |n: u32| {
        let fig = format!("per event, {n} nodes: event -> diff done (p50)");
        out.rows
            .iter()
            .find(|r| r.figure == fig)
            .and_then(|r| median(&r.runs))
    };
    if let (Some(a), Some(b)) = (event(lo), event(hi)) {
        out.notes.push(format!(
            "per-event compute (the per-peer delta): {a:.3} ms at {lo} nodes, {b:.3} ms at {hi} nodes ({:.2}x for {:.0}x the nodes)",
            b / a,
            f64::from(hi) / f64::from(lo)
        ));
    }
    let per_node = |out: &BenchOutput, fig: &str, n: u32| {
        out.rows
            .iter()
            .find(|r| r.figure == fig)
            .and_then(|r| median(&r.runs))
            .map(|v| v / f64::from(n))
    };
    for (what, fig) in [
        ("full sync total", "full sync, {n} nodes: total"),
        (
            "full sync compute",
            "full sync, {n} nodes: compute (remote_nodes+desired+diff)",
        ),
    ] {
        let a = per_node(out, &fig.replace("{n}", &lo.to_string()), lo);
        let b = per_node(out, &fig.replace("{n}", &hi.to_string()), hi);
        if let (Some(a), Some(b)) = (a, b) {
            let mut sorted = sizes.to_vec();
            sorted.sort_unstable();
            let curve: Vec<String> = sorted
                .iter()
                .filter_map(|&n| {
                    per_node(out, &fig.replace("{n}", &n.to_string()), n)
                        .map(|v| format!("{n}: {:.2} us", v * 1000.0))
                })
                .collect();
            out.notes.push(format!(
                "{what}: cost per node (median) {}; at {hi} nodes {:.2}x that at {lo} nodes: {}",
                curve.join(", "),
                b / a,
                linearity_verdict(b / a)
            ));
        }
    }
}

/// How a growth of the cost per node from the smallest to the largest size
/// reads. `sort` and the BTreeMaps make the compute n log n, about 1.2x
/// per node from 1k to 5k; quadratic would be 5x.
pub fn linearity_verdict(growth: f64) -> &'static str {
    if growth < 1.5 {
        "linear (cost per node flat)"
    } else {
        "worse than linear"
    }
}

/// `agents` tasks, each with its own connection, acquire a lease at once.
/// Returns (seconds, distinct subnets, failed agents).
async fn race(endpoint: &str, rep: usize, agents: u32) -> anyhow::Result<(f64, usize, usize)> {
    let prefix = format!("/twill-bench-race-{rep}/network");
    let (admin, cfg) = configured(endpoint, &prefix, 24).await?;
    let mut stores = Vec::new();
    for _ in 0..agents {
        stores.push(Arc::new(connect(endpoint, &prefix).await?));
    }
    let cfg = Arc::new(cfg);
    let barrier = Arc::new(tokio::sync::Barrier::new(agents as usize + 1));
    let mut tasks = Vec::new();
    for (i, store) in stores.into_iter().enumerate() {
        let (cfg, barrier) = (cfg.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let attrs = fake_attrs(i as u32);
            barrier.wait().await;
            acquire_lease(
                store.as_ref(),
                &cfg,
                attrs.public_ip,
                &attrs,
                None,
                Duration::from_secs(600),
            )
            .await
        }));
    }
    barrier.wait().await;
    let t0 = Instant::now();
    let mut subnets = BTreeSet::new();
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(lease)) => {
                subnets.insert(lease.subnet);
            }
            _ => failed += 1,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    // The store's view must agree: one key per winner.
    let listed = admin.list_leases().await?.leases.len();
    anyhow::ensure!(
        listed == subnets.len(),
        "race left {listed} leases in etcd but {} agents got distinct subnets",
        subnets.len()
    );
    Ok((secs, subnets.len(), failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linearity_verdicts() {
        assert_eq!(linearity_verdict(1.2), "linear (cost per node flat)");
        assert_eq!(linearity_verdict(4.0), "worse than linear");
    }

    #[test]
    fn fake_nodes_are_distinct_and_valid() {
        let net: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let a = fake_lease(net, 29, 1).unwrap();
        let b = fake_lease(net, 29, 5000).unwrap();
        assert_eq!(a.subnet, "10.244.0.8/29".parse::<Ipv4Net>().unwrap());
        assert_ne!(a.attrs.public_ip, b.attrs.public_ip);
        assert!("198.18.0.0/15"
            .parse::<Ipv4Net>()
            .unwrap()
            .contains(&b.attrs.public_ip));
        // The JSON the benchmark writes must parse as a valid vxlan lease.
        let back = LeaseAttrs::parse(b.attrs.to_json().as_bytes()).unwrap();
        assert_eq!(back, b.attrs);
    }
}
