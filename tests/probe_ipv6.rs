//! Peer probes of an IPv6-only cluster (`EnableIPv4: false`, issue 15) in
//! real namespaces without IPv4: two nodes joined by a veth carrying only
//! IPv6 addresses, each with the data path twill builds for it
//! (`Plan::ipv6_only`, `ensure_devices`, `remote_nodes6`/`desired_state6`
//! applied), and the prober running in the first one with the targets of
//! `targets6`, vxlan (`twill6.<VNI>` address to address) and host-gw
//! (bridge gateway to bridge gateway). The path is broken the way real ones
//! break: nft drops the ICMPv6 echo requests in the peer's namespace, the
//! MTU of the peer's underlay port shrinks; each time the verdict comes,
//! and goes once the path is repaired; a smaller MTU on the route makes the
//! full-size probe refused, never fragmented. Needs root, `ip`, `nft` and
//! `ping`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv6Net;
use subnet_allocator::{Lease, NetworkConfig};
use tokio::sync::watch;
use twill::agent::plan::Plan;
use twill::agent::underlay::UnderlaySelect;
use twill::agent::underlay6::choose_ipv6;
use twill::datapath::{Datapath, NetlinkDatapath};
use twill::kernel::{Kernel, Underlay};
use twill::probe::{client, PeerReport, PeerSet, PeersView, Prober};
use twill::reconcile::ipv6_only::{desired_state6, remote_nodes6, Local6, RemoteNode6};
use twill::reconcile::{diff, Mac};
use twill::telemetry::Telemetry;
use twill_harness::capture::in_netns;
use twill_harness::wait::wait_for;
use twill_harness::{Netns, Prereqs};

/// The cluster's config with `backend` (the `Backend` object).
fn config(backend: &str) -> String {
    format!(
        r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{backend}}}"#
    )
}
const VXLAN: &str = r#"{"Type":"vxlan"}"#;
const HOST_GW: &str = r#"{"Type":"host-gw"}"#;
/// The probe interval: verdicts come within 3 of them.
const INTERVAL: Duration = Duration::from_secs(1);
/// Generous, for a loaded machine: waits poll until the condition holds.
const WAIT: Duration = Duration::from_secs(40);
/// The table of the breaks, in the peer's namespace.
const BREAK_TABLE: &str = "twprobe6";

/// One node: its namespace, IPv6 subnet and underlay address.
struct Node {
    ns: Netns,
    subnet6: Ipv6Net,
    ip6: Ipv6Addr,
}

fn lease6(subnet6: Ipv6Net, attrs: subnet_allocator::LeaseAttrs) -> Lease {
    Lease {
        subnet: "0.0.0.0/0".parse().unwrap(),
        ipv6_subnet: Some(subnet6),
        attrs,
        lease_id: Some(1),
        ttl_remaining: None,
    }
}

/// Builds `me`'s data path towards `peer` inside `me`'s namespace, as the
/// agent of an IPv6-only node would: the plan for its underlay (eth0), the
/// devices for its lease, the IPv6 entries for the peer's lease (whose
/// attributes are those the peer's plan publishes). Returns the plan's pod
/// MTU and the remote nodes.
fn data_path(me: &Node, peer: &Node, backend: &str) -> (u32, Vec<RemoteNode6>) {
    let (subnet6, peer_subnet6, peer_ip6) = (me.subnet6, peer.subnet6, peer.ip6);
    let config = config(backend);
    in_netns(&me.ns.path(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let r: Result<_, Box<dyn std::error::Error + Send + Sync>> = rt.block_on(async {
            let cfg = NetworkConfig::parse(config.as_bytes())?;
            let dp = NetlinkDatapath::connect()?;
            let snap = Kernel::connect()?.underlay_snapshot(None, false).await?;
            let found = choose_ipv6(&UnderlaySelect::named(Some("eth0")), None, &snap)?;
            let underlay = Underlay {
                name: found.name.clone(),
                index: found.index,
                mtu: found.mtu,
                ip: std::net::Ipv4Addr::UNSPECIFIED,
                net: "0.0.0.0/32".parse()?,
            };
            let plan = Plan::ipv6_only(&cfg, &underlay, found.ip())?;
            let own = lease6(subnet6, plan.attrs.clone());
            let dev = dp
                .ensure_devices(&plan.devices(&cfg, "twill0", &own))
                .await?;
            let mut peer_attrs = plan.attrs.clone();
            peer_attrs.public_ipv6 = Some(peer_ip6);
            if let Some(d) = peer_attrs.backend_v6_data.as_mut() {
                d.vtep_mac = Mac::for_vtep6(peer_ip6, d.vni).to_string();
            }
            let local = Local6 {
                network6: "fd00:10:244::/48".parse()?,
                subnet6,
                underlay6: found.net,
                mode: plan.mode,
            };
            let leases = [own, lease6(peer_subnet6, peer_attrs)];
            let (nodes, skipped) = remote_nodes6(&local, &leases);
            assert!(skipped.is_empty(), "{skipped:?}");
            for op in diff(&desired_state6(&nodes), &dp.read_state(&dev).await?) {
                dp.apply(&dev, &op).await?;
            }
            Ok((plan.pod_mtu, nodes))
        });
        r.map_err(std::io::Error::other)
    })
    .unwrap()
}

/// Two IPv6-only nodes on one veth, each with its data path for `backend`.
fn two_nodes(backend: &str) -> (Node, Node, u32, Vec<RemoteNode6>) {
    let a = Node {
        ns: Netns::unique("pa").unwrap(),
        subnet6: "fd00:10:244:1::/64".parse().unwrap(),
        ip6: "2001:db8:5::1".parse().unwrap(),
    };
    let b = Node {
        ns: Netns::unique("pb").unwrap(),
        subnet6: "fd00:10:244:2::/64".parse().unwrap(),
        ip6: "2001:db8:5::2".parse().unwrap(),
    };
    a.ns.ip([
        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
    ])
    .unwrap();
    a.ns.ip(["link", "set", "peer0", "netns", b.ns.name()])
        .unwrap();
    b.ns.ip(["link", "set", "peer0", "name", "eth0"]).unwrap();
    for n in [&a, &b] {
        let addr = format!("{}/64", n.ip6);
        n.ns.ip(["-6", "addr", "add", &addr, "dev", "eth0", "nodad"])
            .unwrap();
        n.ns.ip(["link", "set", "eth0", "up"]).unwrap();
    }
    let (mtu, nodes) = data_path(&a, &b, backend);
    data_path(&b, &a, backend);
    (a, b, mtu, nodes)
}

/// The prober, in `ns` on a thread of its own, until `peers`'s sender is
/// dropped.
fn start_prober(
    ns: &Netns,
    telemetry: Arc<Telemetry>,
    peers: watch::Receiver<PeerSet>,
) -> std::thread::JoinHandle<twill_harness::Result<()>> {
    let path = ns.path();
    std::thread::spawn(move || {
        in_netns(&path, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                Prober::open(INTERVAL, telemetry)?.run(peers).await;
                Ok::<_, std::io::Error>(())
            })
        })
    })
}

fn view(t: &Telemetry) -> PeersView {
    serde_json::from_str(&t.peer_health.json()).unwrap()
}

/// Waits until the peer `subnet`'s report satisfies `ok`.
fn wait_peer(t: &Telemetry, subnet: &str, what: &str, ok: impl Fn(&PeerReport) -> bool) {
    wait_for(
        what,
        WAIT,
        || {
            Ok(view(t)
                .peers
                .into_iter()
                .find(|p| p.subnet == subnet && ok(p)))
        },
        || format!("{:?}", view(t)),
    )
    .unwrap();
}

fn nft(ns: &Netns, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = ns.command("nft", args);
    let out = match stdin {
        Some(text) => {
            use std::io::Write;
            cmd.stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = cmd.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            child.wait_with_output().unwrap()
        }
        None => cmd.output().unwrap(),
    };
    assert!(
        out.status.success(),
        "nft {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The packets counted by the rule commented `name` in the peer's table.
fn counted(ns: &Netns, name: &str) -> u64 {
    let rules = nft(ns, &["list", "table", "inet", BREAK_TABLE], None);
    let line = rules
        .lines()
        .find(|l| l.contains(&format!("comment \"{name}\"")))
        .unwrap_or_else(|| panic!("no rule {name} in {rules}"));
    let after = line.split("packets ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

/// Two nodes with the data path of `backend`, and node a's peer set: one
/// target, probed from `src` to `dst`, at the pod MTU `mtu`.
fn one_peer(backend: &str, mtu: u32, src: &str, dst: &str) -> (Node, Node, PeerSet) {
    let (a, b, pod_mtu, nodes) = two_nodes(backend);
    assert_eq!(pod_mtu, mtu, "{backend}");
    let targets = twill::probe::targets6(a.subnet6, &nodes);
    assert_eq!(targets.len(), 1);
    assert_eq!(targets[0].src, src.parse::<Ipv6Addr>().unwrap());
    assert_eq!(targets[0].dst, dst.parse::<Ipv6Addr>().unwrap());
    (a, b, PeerSet { mtu, targets })
}

/// Starts probing `set` from `a` and waits for the positive control: the
/// peer `subnet` answered, with a round-trip time, full-size probes too.
fn probe_until_healthy(
    a: &Node,
    set: PeerSet,
    subnet: &str,
) -> (
    Arc<Telemetry>,
    watch::Sender<PeerSet>,
    std::thread::JoinHandle<twill_harness::Result<()>>,
) {
    let t = Arc::new(Telemetry::new());
    let (tx, rx) = watch::channel(set);
    let prober = start_prober(&a.ns, t.clone(), rx);
    wait_peer(&t, subnet, "peer reachable with mtu_ok", |p| {
        p.reachable == Some(true) && p.mtu_ok == Some(true) && p.rtt_seconds.is_some()
    });
    (t, tx, prober)
}

#[test]
fn icmpv6_probes_find_a_lost_peer_and_an_mtu_blackhole_and_see_both_repaired() {
    if !Prereqs::new()
        .root()
        .tools(&["ip", "nft", "ping"])
        .require()
    {
        return;
    }
    // VXLAN over IPv6 on a 1500-byte underlay: 1430.
    let (a, b, set) = one_peer(VXLAN, 1430, "fd00:10:244:1::", "fd00:10:244:2::");
    let subnet = "fd00:10:244:2::/64";

    // Counters in the peer: full-size echo requests (payload 1430 - 40)
    // arriving whole, not in fragments, and the small ones.
    nft(
        &b.ns,
        &["-f", "-"],
        Some(&format!(
            "table inet {BREAK_TABLE} {{
  chain input {{
    type filter hook input priority 0;
    ip6 length 1390 icmpv6 type echo-request counter comment \"big\"
    ip6 length 24 icmpv6 type echo-request counter comment \"small\"
    exthdr frag exists counter comment \"fragments\"
  }}
}}"
        )),
    );

    // Positive control: answered, with a round-trip time, full-size too.
    let (t, tx, prober) = probe_until_healthy(&a, set, subnet);
    assert!(counted(&b.ns, "big") > 0, "full-size probes arrive whole");
    assert!(counted(&b.ns, "small") > 0);
    let metrics = t.encode();
    let series = format!("{{public_ip=\"{}\",subnet=\"{subnet}\"}}", b.ip6);
    assert!(
        metrics.contains(&format!("twill_peer_reachable{series} 1")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("twill_peer_mtu_ok{series} 1")),
        "{metrics}"
    );
    assert!(
        client::column(&view(&t), subnet).starts_with("ok "),
        "{:?}",
        view(&t)
    );

    // The peer's kernel stops answering: lost, and said why.
    nft(
        &b.ns,
        &[
            "add",
            "rule",
            "inet",
            BREAK_TABLE,
            "input",
            "icmpv6",
            "type",
            "echo-request",
            "counter",
            "drop",
            "comment",
            "\"drop\"",
        ],
        None,
    );
    wait_peer(&t, subnet, "peer unreachable", |p| {
        p.reachable == Some(false) && p.mtu_ok == Some(false)
    });
    assert!(counted(&b.ns, "drop") > 0, "the probes reached the drop");
    let v = view(&t);
    let failure = v.peers[0].last_failure.clone().unwrap_or_default();
    assert!(failure.contains("no reply"), "{failure}");
    assert_eq!(client::column(&v, subnet), "UNREACHABLE");
    assert!(t
        .encode()
        .contains(&format!("twill_peer_reachable{series} 0")));

    // Repaired: back.
    let handle = nft(
        &b.ns,
        &["-a", "list", "chain", "inet", BREAK_TABLE, "input"],
        None,
    );
    let drop_handle = handle
        .lines()
        .find(|l| l.contains("comment \"drop\""))
        .and_then(|l| l.split("# handle ").nth(1))
        .unwrap()
        .trim()
        .to_string();
    nft(
        &b.ns,
        &[
            "delete",
            "rule",
            "inet",
            BREAK_TABLE,
            "input",
            "handle",
            &drop_handle,
        ],
        None,
    );
    wait_peer(&t, subnet, "peer back", |p| {
        p.reachable == Some(true) && p.mtu_ok == Some(true)
    });

    // The peer's underlay port shrinks below the tunnel's packets: small
    // probes pass, full-size ones are lost, an MTU blackhole and not a lost
    // peer.
    b.ns.ip(["link", "set", "eth0", "mtu", "1400"]).unwrap();
    wait_peer(&t, subnet, "MTU too small, peer reachable", |p| {
        p.reachable == Some(true) && p.mtu_ok == Some(false)
    });
    assert_eq!(client::column(&view(&t), subnet), "MTU-BLACKHOLE");
    assert!(t.encode().contains(&format!("twill_peer_mtu_ok{series} 0")));

    b.ns.ip(["link", "set", "eth0", "mtu", "1500"]).unwrap();
    wait_peer(&t, subnet, "MTU fine again", |p| {
        p.reachable == Some(true) && p.mtu_ok == Some(true)
    });

    // A smaller MTU on this node's route to the peer (what a "packet too
    // big" leaves cached): the full-size probe is refused, never sent in
    // fragments.
    let route = a.ns.ip(["-6", "route", "show", subnet]).unwrap();
    let route: Vec<&str> = route.split_whitespace().collect();
    assert!(route.contains(&"twill6.1"), "{route:?}");
    let with_mtu = |mtu: Option<&str>| {
        let mut args = vec!["-6", "route", "replace"];
        args.extend(route.iter().copied());
        args.extend(mtu.map(|m| ["mtu", m]).into_iter().flatten());
        a.ns.ip(args).unwrap();
    };
    with_mtu(Some("1300"));
    wait_peer(&t, subnet, "MTU too small on the route", |p| {
        p.reachable == Some(true) && p.mtu_ok == Some(false)
    });
    assert_eq!(counted(&b.ns, "fragments"), 0, "no probe was fragmented");
    let failure = view(&t).peers[0].last_failure.clone().unwrap_or_default();
    assert!(
        failure.contains("larger than this node's route MTU"),
        "{failure}"
    );
    with_mtu(None);
    wait_peer(&t, subnet, "MTU fine again after the route's", |p| {
        p.reachable == Some(true) && p.mtu_ok == Some(true)
    });
    assert_eq!(counted(&b.ns, "fragments"), 0);
    // Control: the counter sees fragments. A 2000-byte ping without
    // don't-fragment leaves in two.
    let ping =
        a.ns.exec(&[
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "10",
            "-s",
            "2000",
            "-I",
            "fd00:10:244:1::",
            "fd00:10:244:2::",
        ])
        .unwrap();
    assert!(ping.status.success(), "{ping:?}");
    assert!(
        counted(&b.ns, "fragments") >= 2,
        "the fragment counter counts"
    );

    drop(tx);
    prober.join().unwrap().unwrap();
}

/// host-gw: probes go from bridge gateway to bridge gateway (`<subnet6>::1`)
/// over the plain IPv6 route via the peer's public address.
#[test]
fn host_gw_ipv6_peers_are_probed_gateway_to_gateway() {
    if !Prereqs::new().root().tools(&["ip", "nft"]).require() {
        return;
    }
    // host-gw: the underlay's MTU.
    let (a, b, set) = one_peer(HOST_GW, 1500, "fd00:10:244:1::1", "fd00:10:244:2::1");
    let subnet = "fd00:10:244:2::/64";
    let r6 = a.ns.ip(["-6", "route", "show", subnet]).unwrap();
    assert!(r6.contains(&format!("via {} dev eth0", b.ip6)), "{r6}");

    let (t, tx, prober) = probe_until_healthy(&a, set, subnet);

    nft(
        &b.ns,
        &["-f", "-"],
        Some(&format!(
            "table inet {BREAK_TABLE} {{
  chain input {{
    type filter hook input priority 0;
    ip6 daddr fd00:10:244:2::1 icmpv6 type echo-request counter drop comment \"drop\"
  }}
}}"
        )),
    );
    wait_peer(&t, subnet, "peer unreachable", |p| {
        p.reachable == Some(false)
    });
    assert!(counted(&b.ns, "drop") > 0, "the probes reached the drop");
    nft(&b.ns, &["delete", "table", "inet", BREAK_TABLE], None);
    wait_peer(&t, subnet, "peer back", |p| {
        p.reachable == Some(true) && p.mtu_ok == Some(true)
    });

    drop(tx);
    prober.join().unwrap().unwrap();
}
