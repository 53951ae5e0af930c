//! Issue 16: the wireguard backend end to end. Pods on different hosts reach
//! each other through the userspace WireGuard tunnel; an eavesdropper on
//! the underlay (an AF_PACKET capture in its namespace) never sees a pod's
//! payload, only UDP to the WireGuard port, while the same capture does see
//! the payload sent in clear; frames forged or replayed by a non-node on
//! the underlay are dropped; peers follow the lease map (a host joins, a
//! lease is deleted, a peer removed by hand comes back, a rotated key is
//! followed); an agent restart under 10 ms pings loses nothing; dual-stack
//! pods over an IPv6 underlay.
//!
//! Need root, `ip`, `bridge`, `etcd`, `etcdctl`, `ping` and the workspace
//! binaries (`cargo build --workspace`); under `CI=true` a missing
//! prerequisite fails the test.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde_json::Value;
use twill_harness::capture::{send_udp, Capture, Frame, IpPacket};
use twill_harness::pinger::Pinger;
use twill_harness::wait::{wait_for, DEFAULT_TIMEOUT};
use twill_harness::{require_cluster, Cluster, HarnessError, Netns};

const RESYNC_SECS: u64 = 2;
const PORT: u16 = 51820;
const DEV: &str = "twill-wg";
const CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"wireguard","ListenPort":51820}}"#;
const DUAL_CONFIG: &str = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"wireguard"}}"#;
/// What the pods send: `ping -p` fills each echo's payload with it.
const MARKER: &[u8] = b"TWILLMARKER16B!!";

fn marker_hex() -> String {
    MARKER.iter().map(|b| format!("{b:02x}")).collect()
}

/// Base64 (standard alphabet) to lowercase hex: leases carry keys in
/// base64, the UAPI in hex.
fn b64_to_hex(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = String::new();
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push_str(&format!("{:02x}", (bits >> n) & 0xff));
        }
    }
    out
}

/// One UAPI request to `host`'s tunnel device; the answer.
fn uapi(c: &Cluster, host: &str, req: &str) -> String {
    let sock = c
        .host(host)
        .unwrap()
        .wireguard_dir()
        .join(format!("{DEV}.sock"));
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.contains("errno=0"), "{req:?} answered {out:?}");
    out
}

#[derive(Debug, Default)]
struct WgPeer {
    endpoint: Option<String>,
    allowed: Vec<String>,
    rx_bytes: u64,
}

#[derive(Debug, Default)]
struct WgState {
    /// By public key (hex).
    peers: BTreeMap<String, WgPeer>,
    rejected: u64,
}

fn wg_state(c: &Cluster, host: &str) -> WgState {
    let mut st = WgState::default();
    let mut cur: Option<String> = None;
    for line in uapi(c, host, "get=1\n\n").lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k {
            "twill_rejected_packets" => st.rejected = v.parse().unwrap(),
            "public_key" => {
                st.peers.insert(v.to_owned(), WgPeer::default());
                cur = Some(v.to_owned());
            }
            _ => {
                let Some(p) = cur.as_ref().and_then(|c| st.peers.get_mut(c)) else {
                    continue;
                };
                match k {
                    "endpoint" => p.endpoint = Some(v.to_owned()),
                    "allowed_ip" => p.allowed.push(v.to_owned()),
                    "rx_bytes" => p.rx_bytes = v.parse().unwrap(),
                    _ => {}
                }
            }
        }
    }
    st
}

/// The leases' values by subnet, as JSON.
fn lease_values(c: &Cluster) -> BTreeMap<String, Value> {
    c.store_get_prefix(&format!("{}/subnets/", c.etcd_prefix()))
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, serde_json::from_slice(&v).unwrap()))
        .collect()
}

/// `host`'s public key (hex) as its lease says.
fn lease_key_hex(c: &Cluster, host: &str) -> String {
    let ip = c.host(host).unwrap().ip().to_string();
    let v = lease_values(c)
        .into_values()
        .find(|v| v["PublicIP"] == ip.as_str())
        .unwrap_or_else(|| panic!("no lease of {host}"));
    assert_eq!(v["BackendType"], "wireguard", "{v}");
    b64_to_hex(v["BackendData"]["PublicKey"].as_str().unwrap())
}

/// Waits until `host`'s device has exactly the peers `want` (hex keys).
fn wait_peers(c: &Cluster, host: &str, want: &[String]) {
    let mut want: Vec<String> = want.to_vec();
    want.sort();
    wait_for(
        &format!("{host}'s wireguard peers to be exactly {want:?}"),
        DEFAULT_TIMEOUT,
        || {
            let have: Vec<String> = wg_state(c, host).peers.into_keys().collect();
            if have == want {
                Ok(Some(()))
            } else {
                Err(HarnessError::Parse {
                    what: format!("peers of {host}"),
                    reason: format!("have {have:?}"),
                })
            }
        },
        || format!("\n{}", c.agent_log_tail(host)),
    )
    .unwrap();
}

/// One pod per host (`p<host>`); returns (name, ip).
fn pod_per_host(c: &mut Cluster, hosts: &[String]) -> Vec<(String, Ipv4Addr)> {
    hosts
        .iter()
        .map(|h| {
            c.wait_subnet_file(h).unwrap();
            let name = format!("p{h}");
            let ip = c.add_pod(h, &name).unwrap();
            (name, ip)
        })
        .collect()
}

fn assert_all_reachable(c: &Cluster, pods: &[(String, Ipv4Addr)], when: &str) {
    let mut failed = Vec::new();
    for (from, _) in pods {
        for (to, ip) in pods {
            if from != to && !c.ping_within(from, *ip, Duration::from_secs(10)) {
                failed.push(format!("{from} -> {to} ({ip})"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{when}: unreachable: {failed:#?}\n{}",
        c.diagnostics()
    );
}

/// Three pings carrying the marker from `ns` to `ip`; whether all were
/// answered.
fn ping_marker(ns: &Netns, ip: IpAddr) -> bool {
    let family = if ip.is_ipv6() { "-6" } else { "-4" };
    let (hex, ip) = (marker_hex(), ip.to_string());
    let argv = [
        "ping", family, "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", "-p", &hex, &ip,
    ];
    ns.exec(&argv).is_ok_and(|o| o.status.success())
}

fn marker_pings(ns: &Netns, ip: &str) {
    assert!(ping_marker(ns, ip.parse().unwrap()), "marker pings to {ip}");
}

/// The PID of the userspace WireGuard helper in `ns`.
fn helper_pid(ns: &Netns) -> u32 {
    let out = std::process::Command::new("ip")
        .args(["netns", "pids", ns.name()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("wireguard-device"))
        })
        .unwrap_or_else(|| panic!("no wireguard-device process in {}", ns.name()))
}

/// The RX packet count of `dev` in `ns`.
fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let out = ns.ip(["-j", "-s", "link", "show", dev]).unwrap();
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

fn link_mtu(ns: &Netns, dev: &str) -> u64 {
    let out = ns.ip(["-j", "link", "show", dev]).unwrap();
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    v[0]["mtu"].as_u64().unwrap()
}

/// A namespace on the underlay bridge that is no node: an eavesdropper's
/// or attacker's machine on the shared L2.
fn non_node(c: &Cluster, addr: &str) -> Netns {
    let ns = Netns::new(format!("{}-evil", c.prefix())).unwrap();
    let ul = c.underlay();
    ul.ip([
        "link",
        "add",
        "evil0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        ns.name(),
    ])
    .unwrap();
    ul.ip(["link", "set", "evil0", "master", "ul0", "up"])
        .unwrap();
    ns.ip(["addr", "add", addr, "dev", "eth0"]).unwrap();
    ns.ip(["link", "set", "eth0", "up"]).unwrap();
    ns
}

fn is_wireguard(f: &Frame) -> bool {
    f.udp()
        .is_some_and(|u| u.src.port() == PORT || u.dst.port() == PORT)
}

/// IPv6 traffic of the link itself: ICMPv6 (neighbour discovery), and
/// anything from the unspecified or a link-local address or to a multicast
/// group (MLD reports).
fn is_link_control(ip: &IpPacket<'_>) -> bool {
    match (ip.src, ip.dst) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            ip.proto == 58
                || src.is_unspecified()
                || src.segments()[0] & 0xffc0 == 0xfe80
                || dst.is_multicast()
        }
        _ => false,
    }
}

/// etcd client traffic (TCP to or from 2379) is not pod traffic.
fn is_etcd(f: &Frame) -> bool {
    f.ip().is_some_and(|ip| {
        ip.proto == 6
            && ip.payload.len() >= 4
            && (u16::from_be_bytes([ip.payload[0], ip.payload[1]]) == 2379
                || u16::from_be_bytes([ip.payload[2], ip.payload[3]]) == 2379)
    })
}

#[test]
fn wireguard_encrypts_pod_traffic_and_follows_the_lease_map() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(3)
        .network_config(CONFIG)
        .resync_interval(RESYNC_SECS)
        .build()
        .unwrap();
    c.start_agents().unwrap();
    let hosts: Vec<String> = c.hosts().iter().map(|h| h.name().to_owned()).collect();
    let pods = pod_per_host(&mut c, &hosts);

    // 1. All pairs reach each other through the tunnel.
    assert_all_reachable(&c, &pods, "3 wireguard hosts");
    let keys: BTreeMap<String, String> = hosts
        .iter()
        .map(|h| (h.clone(), lease_key_hex(&c, h)))
        .collect();
    for h in &hosts {
        let others: Vec<String> = hosts
            .iter()
            .filter(|o| *o != h)
            .map(|o| keys[o].clone())
            .collect();
        wait_peers(&c, h, &others);
        let host = c.host(h).unwrap();
        let key_file = host.wireguard_dir().join("wireguard.key");
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key_file.display());
        // MTU: the underlay's 1500 less 60, on the device and for pods.
        assert_eq!(link_mtu(host.ns(), DEV), 1440, "{h}");
        assert_eq!(c.subnet_file(h).unwrap().mtu, 1440, "{h}");
        let routes = host.ns().ip(["route", "show", "proto", "77"]).unwrap();
        for o in hosts.iter().filter(|o| *o != h) {
            let s = c.subnet_of(o).unwrap();
            assert!(
                routes.contains(&format!("{s} via {} dev {DEV}", s.network())),
                "{h} has no route to {o}'s {s} through {DEV}:\n{routes}"
            );
        }
    }
    let st = wg_state(&c, "h1");
    let p2 = &st.peers[&keys["h2"]];
    assert_eq!(
        p2.endpoint.as_deref(),
        Some(format!("{}:{PORT}", c.host("h2").unwrap().ip()).as_str())
    );
    assert_eq!(p2.allowed, vec![c.subnet_of("h2").unwrap().to_string()]);

    // 2. The eavesdropper: pod traffic with the marker, captured on the
    // underlay, shows neither the marker nor anything but WireGuard's UDP.
    let cap = Capture::start(c.underlay()).unwrap();
    for (i, (from, _)) in pods.iter().enumerate() {
        let (_, to) = &pods[(i + 1) % pods.len()];
        marker_pings(c.ns_of(from).unwrap(), &to.to_string());
    }
    let frames = cap.stop().unwrap();
    let with_marker = frames.iter().filter(|f| f.contains(MARKER)).count();
    let wireguard = frames.iter().filter(|f| is_wireguard(f)).count();
    // Besides WireGuard: etcd's client traffic and the link's own IPv6
    // chatter (neighbour discovery, MLD), neither pod traffic.
    let others: Vec<String> = frames
        .iter()
        .filter(|f| !is_wireguard(f) && !is_etcd(f))
        .filter_map(|f| f.ip())
        .filter(|ip| !is_link_control(ip))
        .map(|ip| format!("{} -> {} proto {}", ip.src, ip.dst, ip.proto))
        .collect();
    println!(
        "capture of pod traffic: {} frames, {wireguard} WireGuard UDP, {with_marker} with the marker, other IP: {others:?}",
        frames.len()
    );
    assert!(
        wireguard >= 2 * 3 * 3,
        "too few WireGuard frames: {wireguard}"
    );
    assert_eq!(with_marker, 0, "the marker crossed the underlay in clear");
    assert!(
        others.is_empty(),
        "non-WireGuard traffic on the underlay: {others:?}"
    );

    // Positive control: the same capture sees the marker sent in clear
    // between two hosts' public addresses.
    let cap = Capture::start(c.underlay()).unwrap();
    marker_pings(
        c.host("h1").unwrap().ns(),
        &c.host("h2").unwrap().ip().to_string(),
    );
    let control = cap.stop().unwrap();
    let seen = control.iter().filter(|f| f.contains(MARKER)).count();
    println!("positive control: {seen} frames with the marker in clear");
    assert!(seen >= 3, "the capture did not see the cleartext marker");

    // 3. A non-node on the underlay forges and replays frames to h1's
    // port: nothing reaches h1's pods, every one is rejected.
    let h1_ip = c.host("h1").unwrap().ip();
    let h1_ep = SocketAddr::new(h1_ip.into(), PORT);
    // A real transport-data message to h1 (type 4), from the capture.
    let data = frames
        .iter()
        .filter_map(|f| f.udp())
        .find(|u| u.dst == h1_ep && u.payload.len() > 32 && u.payload[0] == 4)
        .map(|u| u.payload.to_vec())
        .expect("no transport data message to h1 in the capture");
    let mut tampered = data.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let mut init = vec![0u8; 148];
    init[0] = 1;
    for (i, b) in init.iter_mut().enumerate().skip(4) {
        *b = (i * 7) as u8;
    }
    let evil = non_node(&c, "192.0.2.250/24");
    let h1_ns = c.host("h1").unwrap().ns();
    let before = wg_state(&c, "h1").rejected;
    let rx_before = rx_packets(h1_ns, DEV);
    for forged in [tampered, data, init, b"garbage".to_vec()] {
        send_udp(&evil, h1_ep, forged).unwrap();
    }
    wait_for(
        "h1 to reject the 4 forged datagrams",
        DEFAULT_TIMEOUT,
        || {
            let now = wg_state(&c, "h1").rejected;
            if now >= before + 4 {
                Ok(Some(now))
            } else {
                Err(HarnessError::Parse {
                    what: "rejected".into(),
                    reason: format!("{now} (was {before})"),
                })
            }
        },
        String::new,
    )
    .unwrap();
    assert_eq!(
        rx_packets(h1_ns, DEV),
        rx_before,
        "a forged datagram reached h1's tunnel device"
    );
    // The listener still takes legitimate traffic.
    let rx_h2_before = wg_state(&c, "h1").peers[&keys["h2"]].rx_bytes;
    assert!(c.ping_within("ph2", pods[0].1, Duration::from_secs(10)));
    assert!(wg_state(&c, "h1").peers[&keys["h2"]].rx_bytes > rx_h2_before);
    drop(evil);

    // 4. Drift: a peer removed by hand is put back on the next pass.
    uapi(
        &c,
        "h1",
        &format!("set=1\npublic_key={}\nremove=true\n\n", keys["h2"]),
    );
    assert!(!wg_state(&c, "h1").peers.contains_key(&keys["h2"]));
    wait_peers(&c, "h1", &[keys["h2"].clone(), keys["h3"].clone()]);
    assert!(c.ping_within("ph1", pods[1].1, Duration::from_secs(10)));

    // 4b. The helper killed: its TUN device and routes go with it; the
    // agent starts a new one and puts keys, peers and routes back.
    let helper = helper_pid(c.host("h1").unwrap().ns());
    let killed = std::process::Command::new("kill")
        .args(["-9", &helper.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(
        c.ping_within("ph2", pods[0].1, Duration::from_secs(30)),
        "h1's tunnel did not come back after its helper was killed\n{}",
        c.diagnostics()
    );
    assert_ne!(helper_pid(c.host("h1").unwrap().ns()), helper);
    wait_peers(&c, "h1", &[keys["h2"].clone(), keys["h3"].clone()]);

    // 5. An agent restart under 10 ms pings: the tunnel lives in the
    // helper, so nothing should be lost.
    let pinger = Pinger::start(c.ns_of("ph2").unwrap(), pods[0].1, 400, 10).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c.stop_agent("h1").unwrap();
    c.start_agent("h1").unwrap();
    let summary = pinger.finish().unwrap();
    println!(
        "agent restart under 10 ms pings: {} sent, {} lost",
        summary.transmitted,
        summary.lost()
    );
    assert!(
        summary.lost() <= 2,
        "lost {} of {} pings across an agent restart\n{}",
        summary.lost(),
        summary.transmitted,
        c.diagnostics()
    );
    wait_peers(&c, "h1", &[keys["h2"].clone(), keys["h3"].clone()]);

    // 6. Key rotation: h3's key file deleted, h3 restarted: a new key in
    // its lease, and the others follow.
    c.stop_agent("h3").unwrap();
    std::fs::remove_file(c.host("h3").unwrap().wireguard_dir().join("wireguard.key")).unwrap();
    c.start_agent("h3").unwrap();
    let new3 = wait_for(
        "h3's lease to carry a new key",
        DEFAULT_TIMEOUT,
        || {
            let k = lease_key_hex(&c, "h3");
            if k != keys["h3"] {
                Ok(Some(k))
            } else {
                Err(HarnessError::Parse {
                    what: "h3's key".into(),
                    reason: "unchanged".into(),
                })
            }
        },
        || c.agent_log_tail("h3"),
    )
    .unwrap();
    wait_peers(&c, "h1", &[keys["h2"].clone(), new3.clone()]);
    wait_peers(&c, "h2", &[keys["h1"].clone(), new3.clone()]);
    assert_all_reachable(&c, &pods, "after h3's key rotation");

    // 7. A fourth host joins.
    let h4 = c.add_host().unwrap();
    c.start_agent(&h4).unwrap();
    let mut pods4 = pods.clone();
    pods4.extend(pod_per_host(&mut c, std::slice::from_ref(&h4)));
    assert_all_reachable(&c, &pods4, "after a 4th host joined");
    let key4 = lease_key_hex(&c, &h4);
    wait_peers(&c, "h1", &[keys["h2"].clone(), new3.clone(), key4.clone()]);

    // 8. Its lease deleted (the agent stopped first, or it would take it
    // back): every other host drops the peer and the route.
    c.stop_agent(&h4).unwrap();
    let s4: Ipv4Net = c.subnet_of(&h4).unwrap();
    let key_name = lease_values(&c)
        .into_iter()
        .find(|(_, v)| v["PublicIP"] == c.host(&h4).unwrap().ip().to_string().as_str())
        .map(|(k, _)| k)
        .unwrap();
    c.etcd().del(&key_name).unwrap();
    for h in ["h1", "h2"] {
        let others: Vec<String> = [("h1", &keys["h1"]), ("h2", &keys["h2"]), ("h3", &new3)]
            .into_iter()
            .filter(|(n, _)| *n != h)
            .map(|(_, k)| k.clone())
            .collect();
        wait_peers(&c, h, &others);
        let routes = c
            .host(h)
            .unwrap()
            .ns()
            .ip(["route", "show", "proto", "77"])
            .unwrap();
        assert!(
            !routes.contains(&s4.to_string()),
            "{h} still routes {s4}:\n{routes}"
        );
    }
}

#[test]
fn wireguard_dual_stack_over_an_ipv6_underlay() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(2)
        .network_config(DUAL_CONFIG)
        .resync_interval(RESYNC_SECS)
        .build()
        .unwrap();
    c.add_ipv6_underlay(&["h1", "h2"]).unwrap();
    c.start_agents().unwrap();
    let hosts = vec!["h1".to_owned(), "h2".to_owned()];
    let pods = pod_per_host(&mut c, &hosts);
    assert_all_reachable(&c, &pods, "dual-stack wireguard, IPv4");
    // The peer is reached over the IPv6 underlay, with both pod subnets.
    let k2 = lease_key_hex(&c, "h2");
    wait_peers(&c, "h1", std::slice::from_ref(&k2));
    let st = wg_state(&c, "h1");
    let p = &st.peers[&k2];
    assert_eq!(
        p.endpoint.as_deref(),
        Some("[2001:db8:1::2]:51820"),
        "{p:?}"
    );
    let s6 = c.subnet_file("h2").unwrap().node_subnet6().unwrap();
    assert!(p.allowed.contains(&s6.to_string()), "{p:?}");
    // MTU: 1500 less 80 over an IPv6 underlay.
    assert_eq!(link_mtu(c.host("h1").unwrap().ns(), DEV), 1420);
    assert_eq!(c.subnet_file("h1").unwrap().mtu, 1420);

    // IPv6 pod to pod, with the marker: the capture sees WireGuard over
    // IPv6 and no marker.
    let pod2_v6 = pod_ipv6(c.ns_of("ph2").unwrap());
    let cap = Capture::start(c.underlay()).unwrap();
    let ok = (0..20).any(|_| ping_marker(c.ns_of("ph1").unwrap(), pod2_v6.into()));
    let frames = cap.stop().unwrap();
    assert!(
        ok,
        "IPv6 pod ph1 cannot reach ph2 at {pod2_v6}\n{}",
        c.diagnostics()
    );
    let v6_wireguard = frames
        .iter()
        .filter_map(|f| f.udp())
        .filter(|u| {
            u.dst.port() == PORT
                && u.dst.ip() == IpAddr::V6("2001:db8:1::2".parse::<Ipv6Addr>().unwrap())
        })
        .count();
    assert!(v6_wireguard > 0, "no WireGuard over the IPv6 underlay");
    assert_eq!(frames.iter().filter(|f| f.contains(MARKER)).count(), 0);
}

/// The global IPv6 address of `eth0` in a pod namespace.
fn pod_ipv6(ns: &Netns) -> Ipv6Addr {
    let out = ns
        .ip(["-j", "-6", "addr", "show", "dev", "eth0", "scope", "global"])
        .unwrap();
    let v: Vec<Value> = serde_json::from_str(&out).unwrap();
    v[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|a| a["local"].as_str())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_key_file_without_a_key_is_refused_before_the_lease() {
    if !require_cluster() {
        return;
    }
    let mut c = Cluster::builder()
        .hosts(1)
        .network_config(CONFIG)
        .build()
        .unwrap();
    let dir = c.host("h1").unwrap().wireguard_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("wireguard.key");
    std::fs::write(&key_file, "not a key\n").unwrap();
    c.start_agent("h1").unwrap();
    wait_for(
        "h1's agent to stop",
        DEFAULT_TIMEOUT,
        || Ok((!c.agent_running("h1")).then_some(())),
        String::new,
    )
    .unwrap();
    let log = c.agent_log("h1").unwrap();
    assert!(
        log.contains("wireguard.key: does not hold a base64 WireGuard private key"),
        "the refusal does not name the key file:\n{log}"
    );
    // Nothing changed: no lease taken, the file left as it was.
    assert!(lease_values(&c).is_empty(), "{:?}", lease_values(&c));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), "not a key\n");
}
