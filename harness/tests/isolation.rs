//! Isolation end to end: attack packets crafted for real (raw frames sent
//! through an `AF_PACKET` socket) from a namespace on the underlay that is
//! not a node, and from a pod. Each listener (nft counters on the target's
//! `eth0` ingress, before anything else sees the frame) first hears a
//! legitimate copy (the positive control), then nothing of the attacks;
//! the node's own drop counters and `/metrics` say what was dropped.
//! Afterwards, legitimate traffic still flows.
//!
//! Needs root, `ip`, `etcd`, `etcdctl`, `ping`, `nft`, `bash`, `timeout`,
//! `python3` (the raw-socket sender, standard library only) and the
//! workspace binaries; under `CI=true` a missing prerequisite fails.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use twill_harness::probe::{http_get, metric_values, parse_guard_drops, parse_nft_counter};
use twill_harness::wait::wait_for;
use twill_harness::{Cluster, Netns, Prereqs, CLUSTER_TOOLS};

const CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;
const VXLAN_PORT: u16 = 8472;
const METRICS_PORT: u16 = 10271;
const WAIT: Duration = Duration::from_secs(30);

fn require_prereqs() -> bool {
    Prereqs::new()
        .root()
        .tools(CLUSTER_TOOLS)
        .tools(&["nft", "bash", "timeout", "python3"])
        .built(&["twilld", "twill"])
        .require()
}

/// Sends the frame given in hex on the interface given, three times (an
/// `AF_PACKET` socket: what is written is what leaves, headers and all).
const SENDER: &str = "import socket,sys\n\
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
s.bind((sys.argv[1],0))\n\
f=bytes.fromhex(sys.argv[2])\n\
for _ in range(3): s.send(f)\n";

/// Runs `argv` in the namespace named `ns` (by name, so that nothing holds
/// a borrow of the cluster while agents start and stop); stdout.
fn exec(ns: &str, argv: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns])
        .args(argv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{argv:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn send(ns: &str, dev: &str, frame: &[u8]) {
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    exec(ns, &["python3", "-c", SENDER, dev, &hex]);
}

/// Frames, built by hand.
mod frame {
    use std::net::{Ipv4Addr, Ipv6Addr};

    pub type Mac = [u8; 6];
    pub const BROADCAST: Mac = [0xff; 6];

    fn sum(data: &[u8], mut acc: u32) -> u32 {
        for c in data.chunks(2) {
            acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        acc
    }

    fn fold(mut acc: u32) -> [u8; 2] {
        while acc > 0xffff {
            acc = (acc & 0xffff) + (acc >> 16);
        }
        (!(acc as u16)).to_be_bytes()
    }

    pub fn eth(dst: Mac, src: Mac, ty: u16, payload: &[u8]) -> Vec<u8> {
        [&dst[..], &src[..], &ty.to_be_bytes(), payload].concat()
    }

    pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
        let len = (20 + payload.len()) as u16;
        let mut h = vec![0x45, 0];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        let c = fold(sum(&h, 0));
        h[10..12].copy_from_slice(&c);
        [h, payload.to_vec()].concat()
    }

    /// A UDP header (checksum left 0) and its data.
    fn udp(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        let len = (8 + data.len()) as u16;
        [
            &sport.to_be_bytes()[..],
            &dport.to_be_bytes(),
            &len.to_be_bytes(),
            &[0, 0],
            data,
        ]
        .concat()
    }

    /// UDP in IPv4 (no checksum, which IPv4 allows).
    pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        ipv4(src, dst, 17, &udp(sport, dport, data))
    }

    /// An IPv6 packet with upper-layer `next` whose checksum sits at
    /// `csum_at` in `l4` (computed over the pseudo-header).
    fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
        let len = l4.len() as u16;
        let mut pseudo = [&src.octets()[..], &dst.octets()].concat();
        pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, next]);
        let c = fold(sum(&l4, sum(&pseudo, 0)));
        l4[csum_at..csum_at + 2].copy_from_slice(&c);
        let mut h = vec![0x60, 0, 0, 0];
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(&[next, 255]);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        [h, l4].concat()
    }

    pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        ipv6(src, dst, 17, udp(sport, dport, data), 6)
    }

    pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, body: &[u8]) -> Vec<u8> {
        ipv6(src, dst, 58, [&[ty, 0, 0, 0][..], body].concat(), 2)
    }

    /// An unsolicited neighbour advertisement (override) for `target`.
    pub fn na(src: Ipv6Addr, target: Ipv6Addr, mac: Mac) -> Vec<u8> {
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        let body = [&[0x20, 0, 0, 0][..], &target.octets(), &[2, 1], &mac].concat();
        icmp6(src, all_nodes, 136, &body)
    }

    /// A router advertisement (lifetime 1800 s, no options).
    pub fn ra(src: Ipv6Addr) -> Vec<u8> {
        let all_nodes: Ipv6Addr = "ff02::1".parse().unwrap();
        icmp6(
            src,
            all_nodes,
            134,
            &[64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0],
        )
    }

    /// A gratuitous ARP reply: `ip` is at `mac`.
    pub fn garp(mac: Mac, ip: Ipv4Addr) -> Vec<u8> {
        [
            &[0, 1, 8, 0, 6, 4, 0, 2][..],
            &mac,
            &ip.octets(),
            &BROADCAST,
            &ip.octets(),
        ]
        .concat()
    }

    pub fn vxlan(vni: u32, inner: &[u8]) -> Vec<u8> {
        let v = (vni << 8).to_be_bytes();
        [&[0x08, 0, 0, 0][..], &v, inner].concat()
    }
}

use frame::Mac;

fn mac_of(ns: &Netns, dev: &str) -> Mac {
    let out = ns.ip(["-j", "link", "show", "dev", dev]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let s = v[0]["address"].as_str().unwrap();
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    b.try_into().unwrap()
}

fn mac_str(m: Mac) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The first link of `kind` in `ns` (the VXLAN device, the pod bridge).
fn link_of_kind(ns: &Netns, kind: &str) -> String {
    let out = ns.ip(["-j", "link", "show", "type", kind]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["ifname"].as_str().unwrap().to_string()
}

fn global_ipv6(ns: &Netns, dev: &str) -> Ipv6Addr {
    let out = ns
        .ip(["-j", "-6", "addr", "show", "dev", dev, "scope", "global"])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"][0]["local"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Named nft counters on `eth0`'s ingress in `ns`: each counts the frames
/// its match selects, before the namespace's stack sees them.
struct Listener {
    ns: String,
}

impl Listener {
    fn install(ns: &Netns, counters: &[(&str, String)]) -> Self {
        let mut script = String::from(
            "add table netdev hiprobe\ndelete table netdev hiprobe\ntable netdev hiprobe {\n",
        );
        for (name, _) in counters {
            script.push_str(&format!(" counter {name} {{ }}\n"));
        }
        script.push_str(
            " chain ing {\n  type filter hook ingress device eth0 priority 0; policy accept;\n",
        );
        for (name, m) in counters {
            script.push_str(&format!("  {m} counter name {name}\n"));
        }
        script.push_str(" }\n}\n");
        let path = std::env::temp_dir().join(format!("{}.nft", ns.name()));
        std::fs::write(&path, script).unwrap();
        ns.exec_ok(&["nft", "-f", path.to_str().unwrap()]).unwrap();
        let _ = std::fs::remove_file(&path);
        Listener {
            ns: ns.name().to_string(),
        }
    }

    fn count(&self, name: &str) -> u64 {
        let out = exec(
            &self.ns,
            &["nft", "-j", "list", "counter", "netdev", "hiprobe", name],
        );
        parse_nft_counter(&out).unwrap()
    }

    /// Sends with `send` (three frames a time) until counter `name` has
    /// moved: the listener hears.
    fn hears(&self, name: &str, mut send: impl FnMut()) {
        let before = self.count(name);
        wait_for(
            &format!("{} hearing {name}", self.ns),
            WAIT,
            || {
                send();
                std::thread::sleep(Duration::from_millis(200));
                Ok((self.count(name) > before).then_some(()))
            },
            || format!("counter {name} stayed at {before}"),
        )
        .unwrap();
    }
}

/// The packets a guard rule of `filter` in `host` dropped, as nft lists
/// them (summed over its rules).
fn kernel_drops(host: &str, family: &str, filter: &str) -> u64 {
    let out = exec(host, &["nft", "-j", "list", "table", family, "twill-guard"]);
    parse_guard_drops(&out, filter).unwrap()
}

/// How many rules the bridge table's chain has in `host`.
fn kernel_rules(host: &str) -> usize {
    let out = exec(
        host,
        &["nft", "-j", "list", "table", "bridge", "twill-guard"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("rule").is_some())
        .count()
}

fn metric(host: &Netns, filter: &str) -> f64 {
    let r = http_get(host, Ipv4Addr::LOCALHOST, METRICS_PORT, "/metrics").unwrap();
    let name = "twill_guard_dropped_packets_total";
    let line: String = r
        .body
        .lines()
        .filter(|l| l.contains(&format!("filter=\"{filter}\"")))
        .collect::<Vec<_>>()
        .join("\n");
    metric_values(&line, name).into_iter().sum()
}

fn wait_metric(host: &Netns, filter: &str) {
    wait_for(
        &format!("/metrics counting {filter} drops"),
        WAIT,
        || Ok((metric(host, filter) > 0.0).then_some(())),
        String::new,
    )
    .unwrap();
}

/// A VXLAN frame from `sender` (its eth0 MAC and `src` address) to host
/// `to`, carrying a UDP packet from pod address `inner_src` to `inner_dst`
/// port `dport`, addressed to `to`'s VTEP.
struct Tunnel {
    to_ip: Ipv4Addr,
    to_mac: Mac,
    vtep_mac: Mac,
}

impl Tunnel {
    fn frame(
        &self,
        from_mac: Mac,
        src: Ipv4Addr,
        inner_src: Ipv4Addr,
        inner_dst: Ipv4Addr,
        dport: u16,
    ) -> Vec<u8> {
        let inner_ip = frame::udp4(inner_src, inner_dst, 40000, dport, b"twill-isolation");
        let inner = frame::eth(self.vtep_mac, [0x0e, 0, 0, 0, 0, 1], 0x0800, &inner_ip);
        let outer = frame::udp4(src, self.to_ip, 41000, VXLAN_PORT, &frame::vxlan(1, &inner));
        frame::eth(self.to_mac, from_mac, 0x0800, &outer)
    }
}

/// A forged frame from a pod: what it forges, the listener that must not
/// hear it, that listener's counter, the frame.
type Attack<'a> = (&'a str, &'a Listener, &'a str, Vec<u8>);

/// Sends every attack from pod `from` on node `node`. The legitimate frames
/// of `controls` (each heard on its listener's counter `c9100`) are heard
/// after the attacks, so the listeners were listening all along; the
/// attack counters stayed at zero and the bridge table dropped each.
fn none_arrive(from: &Netns, attacks: &[Attack], controls: &[(&Listener, &Vec<u8>)], node: &Netns) {
    for (_, _, _, f) in attacks {
        send(from.name(), "eth0", f);
    }
    for (l, f) in controls {
        l.hears("c9100", || send(from.name(), "eth0", f));
    }
    for (what, l, name, _) in attacks {
        assert_eq!(l.count(name), 0, "a pod sent from {what}");
    }
    assert!(kernel_drops(node.name(), "bridge", "source") >= 3 * attacks.len() as u64);
}

/// [`Tunnel`] over the IPv6 underlay.
struct Tunnel6 {
    to_ip: Ipv6Addr,
    to_mac: Mac,
    vtep_mac: Mac,
}

impl Tunnel6 {
    fn frame(
        &self,
        from_mac: Mac,
        src: Ipv6Addr,
        inner_src: Ipv6Addr,
        inner_dst: Ipv6Addr,
        dport: u16,
    ) -> Vec<u8> {
        let inner_ip = frame::udp6(inner_src, inner_dst, 40000, dport, b"twill-isolation");
        let inner = frame::eth(self.vtep_mac, [0x0e, 0, 0, 0, 0, 1], 0x86dd, &inner_ip);
        let outer = frame::udp6(src, self.to_ip, 41000, VXLAN_PORT, &frame::vxlan(1, &inner));
        frame::eth(self.to_mac, from_mac, 0x86dd, &outer)
    }
}

#[test]
fn the_tunnel_accepts_vxlan_only_from_current_members() {
    if !require_prereqs() {
        return;
    }
    // h1 and h2 are nodes; h3 sits on the same underlay without an agent.
    let mut c = Cluster::builder()
        .hosts(3)
        .resync_interval(1)
        .agent_args(["--healthz-addr", "127.0.0.1:10271"])
        .build()
        .unwrap();
    c.start_agent("h1").unwrap();
    c.start_agent("h2").unwrap();
    c.wait_leases(2).unwrap();
    c.add_pod("h1", "p1").unwrap();
    c.add_pod("h2", "p2").unwrap();
    let (p1_ip, p2_ip) = (c.pod_ip("p1").unwrap(), c.pod_ip("p2").unwrap());
    assert!(c.ping_within("p1", p2_ip, WAIT), "p1 -> p2");
    let name = |h: &str| c.host(h).unwrap().ns().name().to_string();
    let (h1, h2, h3) = (name("h1"), name("h2"), name("h3"));
    let ip = |h: &str| c.host(h).unwrap().ip();
    let (h1_ip, h3_ip) = (ip("h1"), ip("h3"));
    let h2_ns = c.host("h2").unwrap().ns();
    let t = Tunnel {
        to_ip: ip("h2"),
        to_mac: mac_of(h2_ns, "eth0"),
        vtep_mac: mac_of(h2_ns, &link_of_kind(h2_ns, "vxlan")),
    };
    let h1_mac = mac_of(c.host("h1").unwrap().ns(), "eth0");
    let from_h1 = t.frame(h1_mac, h1_ip, p1_ip, p2_ip, 9001);
    // Port 9003 is the attack's, 9001 the later control's.
    let probe_h1 = t.frame(h1_mac, h1_ip, p1_ip, p2_ip, 9003);
    let from_h3 = t.frame(
        mac_of(c.host("h3").unwrap().ns(), "eth0"),
        h3_ip,
        p1_ip,
        p2_ip,
        9003,
    );
    let listen = Listener::install(
        c.pod("p2").unwrap().ns(),
        &[
            ("c9001", "udp dport 9001".into()),
            ("c9003", "udp dport 9003".into()),
        ],
    );

    // Positive control: a member's frame reaches the pod.
    listen.hears("c9003", || send(&h1, "eth0", &probe_h1));
    // Forged from a host that is not a member: dropped and counted.
    let before = listen.count("c9003");
    let dropped = kernel_drops(&h2, "inet", "tunnel");
    send(&h3, "eth0", &from_h3);
    assert!(
        kernel_drops(&h2, "inet", "tunnel") >= dropped + 3,
        "h2 did not count the forged frames"
    );
    wait_metric(c.host("h2").unwrap().ns(), "tunnel");
    // The pod heard none of them, also by the time a member's frames sent
    // after them arrived.
    listen.hears("c9001", || send(&h1, "eth0", &from_h1));
    assert_eq!(listen.count("c9003"), before, "a forged frame arrived");

    // h3 joins: a member from the pass that programs its route on.
    c.start_agent("h3").unwrap();
    c.wait_leases(3).unwrap();
    listen.hears("c9003", || send(&h3, "eth0", &from_h3));

    // Members flushed by hand are restored by the next resync.
    exec(
        &h2,
        &["nft", "flush", "set", "inet", "twill-guard", "peers4"],
    );
    let members = || {
        exec(
            &h2,
            &["nft", "list", "set", "inet", "twill-guard", "peers4"],
        )
    };
    wait_for(
        "h2 restoring its members",
        WAIT,
        || {
            let out = members();
            Ok(
                (out.contains(&h1_ip.to_string()) && out.contains(&h3_ip.to_string()))
                    .then_some(()),
            )
        },
        members,
    )
    .unwrap();

    // h3 leaves (agent stopped, lease deleted): its frames are dropped again.
    c.stop_agent("h3").unwrap();
    let s3 = c.subnet_of("h3").unwrap();
    c.etcd().del(&c.lease_key_in(s3)).unwrap();
    wait_for(
        "h2 dropping the departed member",
        WAIT,
        || Ok((!members().contains(&h3_ip.to_string())).then_some(())),
        members,
    )
    .unwrap();
    let dropped = kernel_drops(&h2, "inet", "tunnel");
    let before = listen.count("c9003");
    send(&h3, "eth0", &from_h3);
    assert!(kernel_drops(&h2, "inet", "tunnel") >= dropped + 3);
    listen.hears("c9001", || send(&h1, "eth0", &from_h1));
    assert_eq!(
        listen.count("c9003"),
        before,
        "a departed member's frame arrived"
    );

    // With --no-tunnel-filter, h2 decapsulates from anyone again (the
    // opt-out for unusual underlays).
    c.stop_agent("h2").unwrap();
    c.start_agent_with("h2", &["--no-tunnel-filter"]).unwrap();
    listen.hears("c9003", || send(&h3, "eth0", &from_h3));

    // Legitimate traffic still flows both ways.
    assert!(c.ping_within("p1", p2_ip, WAIT), "p1 -> p2 after");
    assert!(c.ping_within("p2", p1_ip, WAIT), "p2 -> p1 after");
    assert!(
        c.host("h1").unwrap().ns().ping_once(&p2_ip.to_string(), 5),
        "h1 -> p2 after"
    );
}

#[test]
fn a_pod_cannot_forge_hijack_or_reach_the_tunnel() {
    if !require_prereqs() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(2)
        .network_config(CONFIG)
        .resync_interval(1)
        .agent_args(["--ip-masq", "--healthz-addr", "127.0.0.1:10271"])
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_converged().unwrap();
    // The attacker pa, a victim pv and a bystander pw on h1; pr on h2.
    for (host, pod) in [("h1", "pa"), ("h1", "pv"), ("h1", "pw"), ("h2", "pr")] {
        c.add_pod(host, pod).unwrap();
    }
    let ip = |p: &str| c.pod_ip(p).unwrap();
    let ns = |p: &str| c.pod(p).unwrap().ns();
    let h1 = c.host("h1").unwrap().ns();
    assert!(c.ping_within("pa", ip("pr"), WAIT), "pa -> pr");
    assert!(c.ping_within("pa", ip("pv"), WAIT), "pa -> pv");
    assert!(h1.ping_once(&ip("pv").to_string(), 5), "h1 -> pv");
    let (pa, pv, pw, pr) = (ns("pa"), ns("pv"), ns("pw"), ns("pr"));
    let (pa_mac, pv_mac) = (mac_of(pa, "eth0"), mac_of(pv, "eth0"));
    let bridge = link_of_kind(h1, "bridge");
    let gw_mac = mac_of(h1, &bridge);
    let (pa6, pv6, pr6) = (
        global_ipv6(pa, "eth0"),
        global_ipv6(pv, "eth0"),
        global_ipv6(pr, "eth0"),
    );
    // A link-local source (pods may have none configured: the guard allows
    // any from the pod's own MAC).
    let pa_ll: Ipv6Addr = "fe80::a".parse().unwrap();

    // Source addresses: ports 91xx to pr (routed), 92xx to pv (bridged).
    let on_h1: ipnet::Ipv4Net = c.subnet_of("h1").unwrap();
    let unassigned = Ipv4Addr::from(u32::from(on_h1.network()) + 200);
    let outside: Ipv4Addr = "198.18.0.9".parse().unwrap();
    let udp = |dst_mac: Mac, src_mac: Mac, src: Ipv4Addr, dst: Ipv4Addr, port: u16| {
        frame::eth(
            dst_mac,
            src_mac,
            0x0800,
            &frame::udp4(src, dst, 40000, port, b"x"),
        )
    };
    let udp6 = |dst_mac: Mac, src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, port: u16| {
        frame::eth(
            dst_mac,
            src_mac,
            0x86dd,
            &frame::udp6(src, dst, 40000, port, b"x"),
        )
    };
    let mut counters: Vec<(&str, String)> = Vec::new();
    for p in [
        "c9100", "c9101", "c9102", "c9103", "c9104", "c9105", "c9106", "c9107", "c9108", "c9109",
        "c9110", "c9111",
    ] {
        counters.push((p, format!("udp dport {}", &p[1..])));
    }
    let listen_pr = Listener::install(pr, &counters);
    let listen_pv = Listener::install(pv, &counters);

    // Positive controls: pa's own address and MAC, routed and bridged, both families.
    let own_r = udp(gw_mac, pa_mac, ip("pa"), ip("pr"), 9100);
    listen_pr.hears("c9100", || send(pa.name(), "eth0", &own_r));
    let own_b = udp(pv_mac, pa_mac, ip("pa"), ip("pv"), 9100);
    listen_pv.hears("c9100", || send(pa.name(), "eth0", &own_b));
    let own6 = udp6(gw_mac, pa_mac, pa6, pr6, 9106);
    listen_pr.hears("c9106", || send(pa.name(), "eth0", &own6));

    let attacks: Vec<Attack> = vec![
        (
            "another pod's IP on the node",
            &listen_pr,
            "c9101",
            udp(gw_mac, pa_mac, ip("pv"), ip("pr"), 9101),
        ),
        (
            "a remote pod's IP",
            &listen_pv,
            "c9102",
            udp(pv_mac, pa_mac, ip("pr"), ip("pv"), 9102),
        ),
        (
            "an unassigned IP of the node subnet",
            &listen_pr,
            "c9103",
            udp(gw_mac, pa_mac, unassigned, ip("pr"), 9103),
        ),
        (
            "an address outside the cluster",
            &listen_pv,
            "c9104",
            udp(pv_mac, pa_mac, outside, ip("pv"), 9104),
        ),
        (
            "its own IP with another pod's MAC",
            &listen_pr,
            "c9105",
            udp(gw_mac, pv_mac, ip("pa"), ip("pr"), 9105),
        ),
        (
            "another pod's IPv6 address",
            &listen_pr,
            "c9107",
            udp6(gw_mac, pa_mac, pv6, pr6, 9107),
        ),
        (
            "another pod's IPv6 address, bridged",
            &listen_pv,
            "c9107",
            udp6(pv_mac, pa_mac, pr6, pv6, 9107),
        ),
    ];
    none_arrive(
        pa,
        &attacks,
        &[(&listen_pr, &own_r), (&listen_pv, &own_b)],
        h1,
    );
    wait_metric(h1, "source");

    // The bridge table deleted as a whole (`nft flush ruleset`): the next
    // resync puts it back with the running pods' entries, and pa is
    // checked again.
    h1.exec_ok(&["nft", "delete", "table", "bridge", "twill-guard"])
        .unwrap();
    let pods4 = || {
        h1.exec_ok(&["nft", "list", "set", "bridge", "twill-guard", "pods4"])
            .unwrap_or_default()
    };
    wait_for(
        "h1 restoring its bridge table with the pods",
        WAIT,
        || Ok(pods4().contains(&ip("pa").to_string()).then_some(())),
        pods4,
    )
    .unwrap();
    wait_for(
        "h1 restoring its bridge rules",
        WAIT,
        || Ok((kernel_rules(h1.name()) > 0).then_some(())),
        String::new,
    )
    .unwrap();
    send(
        pa.name(),
        "eth0",
        &udp(gw_mac, pa_mac, ip("pv"), ip("pr"), 9111),
    );
    listen_pr.hears("c9100", || send(pa.name(), "eth0", &own_r));
    assert_eq!(listen_pr.count("c9111"), 0, "spoofed after the restore");

    // The opt-out: a pod whose config names extra prefixes may send from
    // them, and still from nothing else.
    let po = Netns::new(format!("{}-po", c.prefix())).unwrap();
    let h1_host = c.host("h1").unwrap();
    let conf = serde_json::json!({
        "cniVersion": "1.1.0", "name": "twill", "type": "twill",
        "subnetFile": h1_host.subnet_file_path(), "dataDir": h1_host.ipam_dir(),
        "allowedSourcePrefixes": ["198.18.5.0/24"],
    })
    .to_string();
    let cid = format!("{}-po", c.prefix());
    let cni = |verb: &str| {
        let out = c
            .cni_raw("h1", verb, &cid, &po.path(), Some(&conf))
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{verb}: {stdout}");
    };
    cni("ADD");
    let po_mac = mac_of(&po, "eth0");
    let allowed = udp(
        gw_mac,
        po_mac,
        "198.18.5.7".parse().unwrap(),
        ip("pr"),
        9108,
    );
    listen_pr.hears("c9108", || send(po.name(), "eth0", &allowed));
    send(
        po.name(),
        "eth0",
        &udp(
            gw_mac,
            po_mac,
            "198.18.6.7".parse().unwrap(),
            ip("pr"),
            9109,
        ),
    );
    listen_pr.hears("c9108", || send(po.name(), "eth0", &allowed));
    assert_eq!(
        listen_pr.count("c9109"),
        0,
        "a source outside the extra prefixes"
    );
    cni("DEL");
    let extra = h1
        .exec_ok(&["nft", "list", "set", "bridge", "twill-guard", "extra4"])
        .unwrap();
    assert!(
        !extra.contains("198.18.5.0"),
        "DEL left the pod's prefix: {extra}"
    );

    // Hijack: gratuitous ARP and unsolicited NA claiming pv's addresses,
    // with pa's MAC and with pv's. The bystander pw hears pa's own first.
    let listen_pw = Listener::install(
        pw,
        &[
            ("arp_pa", format!("arp saddr ip {}", ip("pa"))),
            ("arp_pv", format!("arp saddr ip {}", ip("pv"))),
            (
                "na_pa",
                format!(
                    "icmpv6 type nd-neighbor-advert @th,64,128 0x{:032x}",
                    u128::from(pa6)
                ),
            ),
            (
                "na_pv",
                format!(
                    "icmpv6 type nd-neighbor-advert @th,64,128 0x{:032x}",
                    u128::from(pv6)
                ),
            ),
            ("ra", "icmpv6 type nd-router-advert".into()),
            ("dhcp", "udp dport 68".into()),
            ("dhcp6", "udp dport 546".into()),
        ],
    );
    let garp_own = frame::eth(
        frame::BROADCAST,
        pa_mac,
        0x0806,
        &frame::garp(pa_mac, ip("pa")),
    );
    listen_pw.hears("arp_pa", || send(pa.name(), "eth0", &garp_own));
    let na_own = frame::eth(
        [0x33, 0x33, 0, 0, 0, 1],
        pa_mac,
        0x86dd,
        &frame::na(pa_ll, pa6, pa_mac),
    );
    listen_pw.hears("na_pa", || send(pa.name(), "eth0", &na_own));
    let neigh_before = h1
        .ip(["neigh", "show", &ip("pv").to_string(), "dev", &bridge])
        .unwrap();
    assert!(neigh_before.contains(&mac_str(pv_mac)), "{neigh_before}");
    for mac in [pa_mac, pv_mac] {
        send(
            pa.name(),
            "eth0",
            &frame::eth(frame::BROADCAST, mac, 0x0806, &frame::garp(mac, ip("pv"))),
        );
        send(
            pa.name(),
            "eth0",
            &frame::eth(
                [0x33, 0x33, 0, 0, 0, 1],
                mac,
                0x86dd,
                &frame::na(pa_ll, pv6, mac),
            ),
        );
    }
    // Router advertisements, DHCP and DHCPv6 server replies.
    send(
        pa.name(),
        "eth0",
        &frame::eth([0x33, 0x33, 0, 0, 0, 1], pa_mac, 0x86dd, &frame::ra(pa_ll)),
    );
    let dhcp = frame::eth(
        frame::BROADCAST,
        pa_mac,
        0x0800,
        &frame::udp4(ip("pa"), Ipv4Addr::BROADCAST, 67, 68, b"offer"),
    );
    send(pa.name(), "eth0", &dhcp);
    let dhcp6 = frame::eth(
        [0x33, 0x33, 0, 0, 0, 1],
        pa_mac,
        0x86dd,
        &frame::udp6(pa_ll, "ff02::1".parse().unwrap(), 547, 546, b"advertise"),
    );
    send(pa.name(), "eth0", &dhcp6);
    listen_pw.hears("arp_pa", || send(pa.name(), "eth0", &garp_own));
    for name in ["arp_pv", "na_pv", "ra", "dhcp", "dhcp6"] {
        assert_eq!(listen_pw.count(name), 0, "pw heard {name}");
    }
    let neigh_after = h1
        .ip(["neigh", "show", &ip("pv").to_string(), "dev", &bridge])
        .unwrap();
    assert!(neigh_after.contains(&mac_str(pv_mac)), "{neigh_after}");
    assert!(
        h1.ping_once(&ip("pv").to_string(), 5),
        "h1 -> pv after the hijack attempts"
    );
    assert!(
        c.ping_within("pw", ip("pv"), WAIT),
        "pw -> pv after the hijack attempts"
    );
    wait_metric(h1, "arp");
    wait_metric(h1, "router_advert");
    wait_metric(h1, "dhcp_server");

    // VXLAN from a pod to another node's tunnel (masqueraded to h1's own
    // address by --ip-masq, a member): dropped on h1. The control is h1's
    // own frame, which pr hears.
    let h2 = c.host("h2").unwrap().ns();
    let t = Tunnel {
        to_ip: c.host("h2").unwrap().ip(),
        to_mac: mac_of(h2, "eth0"),
        vtep_mac: mac_of(h2, &link_of_kind(h2, "vxlan")),
    };
    let h1_ip = c.host("h1").unwrap().ip();
    let legit = t.frame(mac_of(h1, "eth0"), h1_ip, ip("pa"), ip("pr"), 9104);
    // The attack's port, 9110, hears h1's own frame first.
    let probe = t.frame(mac_of(h1, "eth0"), h1_ip, ip("pa"), ip("pr"), 9110);
    listen_pr.hears("c9110", || send(h1.name(), "eth0", &probe));
    let before = listen_pr.count("c9110");
    let dropped = kernel_drops(h1.name(), "bridge", "pod_vxlan");
    let inner = frame::vxlan(
        1,
        &frame::eth(
            t.vtep_mac,
            pa_mac,
            0x0800,
            &frame::udp4(ip("pa"), ip("pr"), 40000, 9110, b"x"),
        ),
    );
    let from_pod = frame::eth(
        gw_mac,
        pa_mac,
        0x0800,
        &frame::udp4(ip("pa"), t.to_ip, 41000, VXLAN_PORT, &inner),
    );
    send(pa.name(), "eth0", &from_pod);
    listen_pr.hears("c9104", || send(h1.name(), "eth0", &legit));
    assert_eq!(
        listen_pr.count("c9110"),
        before,
        "a pod's VXLAN frame arrived"
    );
    assert!(
        kernel_drops(h1.name(), "bridge", "pod_vxlan") >= dropped + 3,
        "pod VXLAN not dropped on h1"
    );
    // The same through a real UDP socket in the pod (the kernel's own
    // headers; masqueraded if it left).
    let _ = pa.exec(&[
        "bash",
        "-c",
        &format!("echo x > /dev/udp/{}/{VXLAN_PORT}", t.to_ip),
    ]);
    assert!(kernel_drops(h1.name(), "bridge", "pod_vxlan") >= dropped + 4);
    wait_metric(h1, "pod_vxlan");

    // Legitimate traffic in every direction still flows.
    assert!(c.ping_within("pa", ip("pv"), WAIT), "pa -> pv");
    assert!(c.ping_within("pa", ip("pr"), WAIT), "pa -> pr");
    assert!(c.ping_within("pr", ip("pa"), WAIT), "pr -> pa");
    assert!(h1.ping_once(&ip("pa").to_string(), 5), "h1 -> pa");
    assert!(pa.ping_once(&h1_ip.to_string(), 5), "pa -> h1");
    let ping6 = |from: &Netns, to: Ipv6Addr| {
        from.exec(&["ping", "-6", "-c1", "-W2", &to.to_string()])
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    assert!(ping6(pa, pr6), "pa -> pr over IPv6");
    assert!(ping6(pa, pv6), "pa -> pv over IPv6");
}

#[test]
fn the_ipv6_tunnel_accepts_vxlan_only_from_members() {
    if !require_prereqs() {
        return;
    }
    // Dual stack over an IPv6 underlay as well; h3 has an IPv6 underlay
    // address but no agent.
    let mut c = Cluster::builder()
        .hosts(3)
        .network_config(CONFIG)
        .build()
        .unwrap();
    c.add_ipv6_underlay(&["h1", "h2", "h3"]).unwrap();
    c.start_agent("h1").unwrap();
    c.start_agent("h2").unwrap();
    c.wait_leases(2).unwrap();
    c.add_pod("h1", "p1").unwrap();
    c.add_pod("h2", "p2").unwrap();
    let underlay6 = ["2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::3"].map(|a| a.parse().unwrap());
    only_members_over_ipv6(&c, underlay6);
}

/// The same in an IPv6-only cluster on an IPv6-only underlay (no IPv4
/// address anywhere): the tunnel's members are the `PublicIPv6` of the
/// IPv6-only leases.
#[test]
fn the_ipv6_only_tunnel_accepts_vxlan_only_from_members() {
    if !require_prereqs() {
        return;
    }
    let mut c = Cluster::builder().ipv6_only(true).hosts(3).build().unwrap();
    c.start_agent("h1").unwrap();
    c.start_agent("h2").unwrap();
    c.wait_leases6(2).unwrap();
    c.add_pod6("h1", "p1").unwrap();
    c.add_pod6("h2", "p2").unwrap();
    let underlay6 = ["h1", "h2", "h3"].map(|h| c.host(h).unwrap().ipv6().unwrap());
    only_members_over_ipv6(&c, underlay6);
}

/// h1 and h2 run agents with pods p1 and p2, h3 none; `[h1, h2, h3]` are
/// their IPv6 underlay addresses. A forged VXLAN frame from h3 to h2 is
/// dropped; the same frame from a member arrives (the positive control).
fn only_members_over_ipv6(c: &Cluster, [h1_6, h2_6, h3_6]: [Ipv6Addr; 3]) {
    let (p1, p2) = (c.pod("p1").unwrap().ns(), c.pod("p2").unwrap().ns());
    let (p1_6, p2_6) = (global_ipv6(p1, "eth0"), global_ipv6(p2, "eth0"));
    let ns = |h: &str| c.host(h).unwrap().ns();
    wait_for(
        "h2's IPv6 tunnel",
        WAIT,
        || {
            Ok(ns("h2")
                .try_ip(["link", "show", "twill6.1"])
                .0
                .then_some(()))
        },
        String::new,
    )
    .unwrap();
    let t = Tunnel6 {
        to_ip: h2_6,
        to_mac: mac_of(ns("h2"), "eth0"),
        vtep_mac: mac_of(ns("h2"), "twill6.1"),
    };
    let frame_from =
        |h: &str, src: Ipv6Addr, port: u16| t.frame(mac_of(ns(h), "eth0"), src, p1_6, p2_6, port);
    // Port 9004 is the attack's, 9002 the later control's.
    let (from_h1, probe_h1, from_h3) = (
        frame_from("h1", h1_6, 9002),
        frame_from("h1", h1_6, 9004),
        frame_from("h3", h3_6, 9004),
    );
    let listen = Listener::install(
        p2,
        &[
            ("c9002", "udp dport 9002".into()),
            ("c9004", "udp dport 9004".into()),
        ],
    );
    let (h1, h2, h3) = (ns("h1").name(), ns("h2").name(), ns("h3").name());

    // Positive control: a member's frame over the IPv6 underlay arrives.
    listen.hears("c9004", || send(h1, "eth0", &probe_h1));
    let before = listen.count("c9004");
    let dropped = kernel_drops(h2, "inet", "tunnel");
    send(h3, "eth0", &from_h3);
    assert!(
        kernel_drops(h2, "inet", "tunnel") >= dropped + 3,
        "h2 did not drop the forged IPv6 frames"
    );
    listen.hears("c9002", || send(h1, "eth0", &from_h1));
    assert_eq!(listen.count("c9004"), before, "a forged frame arrived");
    let ping6 = p1
        .exec(&["ping", "-6", "-c1", "-W2", &p2_6.to_string()])
        .unwrap();
    assert!(ping6.status.success(), "p1 -> p2 over IPv6 after");
}

/// A pod of an IPv6-only cluster (an IPv6 address only, no IPv4 in any
/// namespace) against its neighbours: forged sources, routed and bridged,
/// its own address from another pod's MAC, NA claiming another pod's
/// address, router advertisements, DHCPv6 server replies, and VXLAN over
/// IPv6 to another node's tunnel. Each listener hears the pod's own frames
/// first (the positive control) and again after the attacks.
#[test]
fn an_ipv6_only_pod_cannot_forge_hijack_or_reach_the_tunnel() {
    if !require_prereqs() {
        return;
    }
    let mut c = Cluster::builder()
        .ipv6_only(true)
        .hosts(2)
        .resync_interval(1)
        .build()
        .unwrap();
    c.start_agents().unwrap();
    c.wait_leases6(2).unwrap();
    for (host, pod) in [("h1", "pa"), ("h1", "pv"), ("h1", "pw"), ("h2", "pr")] {
        c.add_pod6(host, pod).unwrap();
    }
    c.wait_converged().unwrap();
    let ip = |p: &str| c.pod_ip6(p).unwrap();
    let ns = |p: &str| c.pod(p).unwrap().ns();
    let h1 = c.host("h1").unwrap().ns();
    assert!(c.ping_within("pa", ip("pr"), WAIT), "pa -> pr");
    assert!(c.ping_within("pa", ip("pv"), WAIT), "pa -> pv");
    let (pa, pv, pw, pr) = (ns("pa"), ns("pv"), ns("pw"), ns("pr"));
    let (pa_mac, pv_mac) = (mac_of(pa, "eth0"), mac_of(pv, "eth0"));
    let bridge = link_of_kind(h1, "bridge");
    let gw_mac = mac_of(h1, &bridge);
    let pa_ll: Ipv6Addr = "fe80::a".parse().unwrap();
    let on_h1 = c.subnet6_of("h1").unwrap();
    let unassigned = Ipv6Addr::from(u128::from(on_h1.network()) + 200);
    let outside: Ipv6Addr = "2001:db8:ff::9".parse().unwrap();
    let udp6 = |dst_mac: Mac, src_mac: Mac, src: Ipv6Addr, dst: Ipv6Addr, port: u16| {
        frame::eth(
            dst_mac,
            src_mac,
            0x86dd,
            &frame::udp6(src, dst, 40000, port, b"x"),
        )
    };
    let ports = [
        "c9100", "c9101", "c9102", "c9103", "c9104", "c9105", "c9110",
    ];
    let counters: Vec<(&str, String)> = ports
        .iter()
        .map(|p| (*p, format!("udp dport {}", &p[1..])))
        .collect();
    let listen_pr = Listener::install(pr, &counters);
    let listen_pv = Listener::install(pv, &counters);
    let own_r = udp6(gw_mac, pa_mac, ip("pa"), ip("pr"), 9100);
    listen_pr.hears("c9100", || send(pa.name(), "eth0", &own_r));
    let own_b = udp6(pv_mac, pa_mac, ip("pa"), ip("pv"), 9100);
    listen_pv.hears("c9100", || send(pa.name(), "eth0", &own_b));

    let attacks: Vec<Attack> = vec![
        (
            "another pod's address on the node",
            &listen_pr,
            "c9101",
            udp6(gw_mac, pa_mac, ip("pv"), ip("pr"), 9101),
        ),
        (
            "a remote pod's address, bridged",
            &listen_pv,
            "c9102",
            udp6(pv_mac, pa_mac, ip("pr"), ip("pv"), 9102),
        ),
        (
            "an unassigned address of the node subnet",
            &listen_pr,
            "c9103",
            udp6(gw_mac, pa_mac, unassigned, ip("pr"), 9103),
        ),
        (
            "an address outside the cluster",
            &listen_pv,
            "c9104",
            udp6(pv_mac, pa_mac, outside, ip("pv"), 9104),
        ),
        (
            "its own address with another pod's MAC",
            &listen_pr,
            "c9105",
            udp6(gw_mac, pv_mac, ip("pa"), ip("pr"), 9105),
        ),
    ];
    none_arrive(
        pa,
        &attacks,
        &[(&listen_pr, &own_r), (&listen_pv, &own_b)],
        h1,
    );

    // Hijack: unsolicited NA claiming pv's address, with pa's MAC and
    // with pv's; RA and DHCPv6 server replies. pw hears pa's own NA first.
    let na = |target: Ipv6Addr| {
        format!(
            "icmpv6 type nd-neighbor-advert @th,64,128 0x{:032x}",
            u128::from(target)
        )
    };
    let listen_pw = Listener::install(
        pw,
        &[
            ("na_pa", na(ip("pa"))),
            ("na_pv", na(ip("pv"))),
            ("ra", "icmpv6 type nd-router-advert".into()),
            ("dhcp6", "udp dport 546".into()),
        ],
    );
    let all_nodes = [0x33, 0x33, 0, 0, 0, 1];
    let na_own = frame::eth(
        all_nodes,
        pa_mac,
        0x86dd,
        &frame::na(pa_ll, ip("pa"), pa_mac),
    );
    listen_pw.hears("na_pa", || send(pa.name(), "eth0", &na_own));
    for mac in [pa_mac, pv_mac] {
        let claim = frame::eth(all_nodes, mac, 0x86dd, &frame::na(pa_ll, ip("pv"), mac));
        send(pa.name(), "eth0", &claim);
    }
    send(
        pa.name(),
        "eth0",
        &frame::eth(all_nodes, pa_mac, 0x86dd, &frame::ra(pa_ll)),
    );
    let dhcp6 = frame::udp6(pa_ll, "ff02::1".parse().unwrap(), 547, 546, b"advertise");
    send(
        pa.name(),
        "eth0",
        &frame::eth(all_nodes, pa_mac, 0x86dd, &dhcp6),
    );
    listen_pw.hears("na_pa", || send(pa.name(), "eth0", &na_own));
    for name in ["na_pv", "ra", "dhcp6"] {
        assert_eq!(listen_pw.count(name), 0, "pw heard {name}");
    }
    assert!(
        c.ping_within("pw", ip("pv"), WAIT),
        "pw -> pv after the hijack attempts"
    );

    // VXLAN over IPv6 from the pod to h2's tunnel: dropped on h1. The
    // control is h1's own frame on the same port, which pr hears.
    let h2 = c.host("h2").unwrap().ns();
    let t = Tunnel6 {
        to_ip: c.host("h2").unwrap().ipv6().unwrap(),
        to_mac: mac_of(h2, "eth0"),
        vtep_mac: mac_of(h2, "twill6.1"),
    };
    let h1_6 = c.host("h1").unwrap().ipv6().unwrap();
    let probe = t.frame(mac_of(h1, "eth0"), h1_6, ip("pa"), ip("pr"), 9110);
    listen_pr.hears("c9110", || send(h1.name(), "eth0", &probe));
    let before = listen_pr.count("c9110");
    let dropped = kernel_drops(h1.name(), "bridge", "pod_vxlan");
    let inner = frame::vxlan(
        1,
        &frame::eth(
            t.vtep_mac,
            pa_mac,
            0x86dd,
            &frame::udp6(ip("pa"), ip("pr"), 40000, 9110, b"x"),
        ),
    );
    let from_pod = frame::eth(
        gw_mac,
        pa_mac,
        0x86dd,
        &frame::udp6(ip("pa"), t.to_ip, 41000, VXLAN_PORT, &inner),
    );
    send(pa.name(), "eth0", &from_pod);
    listen_pr.hears("c9100", || send(pa.name(), "eth0", &own_r));
    assert_eq!(
        listen_pr.count("c9110"),
        before,
        "a pod's VXLAN frame arrived"
    );
    assert!(
        kernel_drops(h1.name(), "bridge", "pod_vxlan") >= dropped + 3,
        "pod VXLAN over IPv6 not dropped on h1"
    );

    // Legitimate traffic in every direction still flows.
    assert!(c.ping_within("pa", ip("pv"), WAIT), "pa -> pv");
    assert!(c.ping_within("pa", ip("pr"), WAIT), "pa -> pr");
    assert!(c.ping_within("pr", ip("pa"), WAIT), "pr -> pa");
}
