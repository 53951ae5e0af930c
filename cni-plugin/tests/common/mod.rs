//! Helpers shared by the root integration tests: the harness's per-run
//! namespaces and prerequisite gate, a subnet file + IPAM dir, and running
//! the real `twill` binary the way a runtime does (env + stdin).

#![allow(dead_code)] // each test crate uses a different subset
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

/// The plugin under test: `TWILL_CNI_BIN` when set (scripts/test.sh points
/// it at the static build that ships, target/cni/twill), else cargo's.
pub fn bin() -> String {
    std::env::var("TWILL_CNI_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_twill").to_string())
}

pub use twill_harness::Netns;

/// A namespace `<per-run prefix>-<role>`, as scripts/test.sh's leak check
/// expects, deleted on drop.
pub fn netns(role: &str) -> Netns {
    Netns::unique(role).unwrap()
}

/// Root, `ip` and `nft` (the tests read the isolation table back): `false`
/// (a loud skip) or, under `CI=true`, a panic when one is missing.
pub fn prerequisites() -> bool {
    twill_harness::require(&["ip", "nft"])
}

/// A subnet file + data dir for one test.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

pub const NET_NAME: &str = "twilltest";

pub const SUBNET_V4: &str =
    "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=false\n";

impl Setup {
    pub fn new() -> Self {
        Self::with_subnet_file(SUBNET_V4)
    }

    /// A setup whose subnet file has exactly `text`.
    pub fn with_subnet_file(text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("subnet.env"), text).unwrap();
        Setup { dir }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    pub fn store_dir(&self) -> PathBuf {
        self.data_dir().join(NET_NAME)
    }

    pub fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0",
            "name": NET_NAME,
            "type": "twill",
            "subnetFile": self.dir.path().join("subnet.env"),
            "dataDir": self.data_dir(),
            "bridge": "twill0",
        });
        if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
            c.extend(extra);
        }
        c
    }

    /// Reservation and temp file names in the network's store.
    pub fn reservations(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.store_dir()) else {
            return Vec::new();
        };
        let mut v: Vec<String> = rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| {
                n.parse::<std::net::IpAddr>().is_ok()
                    || n.starts_with(".reserve")
                    || n.ends_with(".tmp")
            })
            .collect();
        v.sort();
        v
    }
}

/// Runs the plugin in `host` like a runtime; returns (exit ok, stdout JSON).
pub fn cni(host: &Netns, env: &[(&str, &str)], stdin: &[u8]) -> (bool, Value) {
    let mut child = spawn_cni(host, env);
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    outcome(child.wait_with_output().unwrap())
}

/// What a finished plugin call said: (exit ok, stdout JSON); the reason
/// of a failure goes to the test's output.
pub fn outcome(out: std::process::Output) -> (bool, Value) {
    let text = String::from_utf8_lossy(&out.stdout);
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text:?}"))
    };
    if !out.status.success() {
        eprintln!(
            "plugin failed: {v} / {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (out.status.success(), v)
}

/// Starts the plugin in `host` with piped stdio; the child's PID is the
/// plugin's own (`ip netns exec` execs without forking).
pub fn spawn_cni(host: &Netns, env: &[(&str, &str)]) -> std::process::Child {
    spawn_cni_after(host, None, env)
}

/// [`spawn_cni`], after the shell commands `prelude` when there are some
/// (run in the call's own mount namespace, which `ip netns exec` makes;
/// the shell then execs the plugin, which keeps its PID).
pub fn spawn_cni_after(
    host: &Netns,
    prelude: Option<&str>,
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host.name()]);
    if let Some(prelude) = prelude {
        let script = format!("set -e; {prelude}\nexec \"$0\"");
        cmd.args(["sh", "-c", &script]);
    }
    cmd.arg(bin())
        .env_remove("CNI_COMMAND")
        .env_remove("CNI_CONTAINERID")
        .env_remove("CNI_NETNS")
        .env_remove("CNI_IFNAME")
        .env_remove("CNI_ARGS")
        .env("CNI_PATH", "/opt/cni/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

pub fn attach_env<'a>(
    cmd: &'a str,
    cid: &'a str,
    netns: &'a str,
    ifname: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", cid),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", ifname),
    ]
}

pub fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

pub fn veths(host: &Netns) -> Vec<String> {
    host.link_names()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("veth"))
        .collect()
}

/// The address without prefix length of the first `ips` entry of a result.
pub fn result_ip(r: &Value) -> String {
    r["ips"][0]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// The host-side veth of an ADD result (its first interface).
pub fn host_veth(r: &Value) -> String {
    r["interfaces"][0]["name"].as_str().unwrap().to_string()
}

/// Asserts that a plugin run succeeded; returns its output.
#[track_caller]
pub fn succeeds((ok, out): (bool, Value), what: &str) -> Value {
    assert!(ok, "{what}: {out}");
    out
}

/// Asserts that a plugin run failed with CNI error `code`; returns the error.
#[track_caller]
pub fn fails_with((ok, out): (bool, Value), code: u64) -> Value {
    assert!(!ok, "succeeded, expected error {code}: {out}");
    assert_eq!(out["code"], code, "{out}");
    out
}

/// Asserts that every ADD of `results` succeeded and that no address was
/// handed out twice; returns the addresses (as `result_ip`) in order.
#[track_caller]
pub fn distinct_ips(results: &[(bool, Value)]) -> Vec<String> {
    let mut ips = Vec::with_capacity(results.len());
    for (i, (ok, r)) in results.iter().enumerate() {
        assert!(ok, "ADD {i}: {r}");
        ips.push(result_ip(r));
    }
    let distinct: HashSet<&String> = ips.iter().collect();
    assert_eq!(
        distinct.len(),
        ips.len(),
        "duplicate addresses handed out: {ips:?}"
    );
    ips
}

/// Runs `f(i)` for every `i in 0..n`, each on its own thread, all at once.
pub fn all_at_once<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = std::sync::Barrier::new(n);
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (f, barrier) = (&f, &barrier);
                sc.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// What an attachment left behind: store files, host veths, the pod's eth0.
#[derive(Debug, Default)]
pub struct Leftovers {
    pub files: Vec<String>,
    pub veths: Vec<String>,
    pub pod_eth0: bool,
}

impl Leftovers {
    pub fn is_clean(&self) -> bool {
        self.files.is_empty() && self.veths.is_empty() && !self.pod_eth0
    }
}

/// One root test's host namespace and store, and the plugin config (`conf`,
/// no extra keys) most of its calls use.
pub struct Rig {
    pub host: Netns,
    pub s: Setup,
    pub conf: Vec<u8>,
}

impl Rig {
    /// With the IPv4-only subnet file; `None` when the test is to be skipped
    /// (see `prerequisites`).
    pub fn new() -> Option<Self> {
        Self::with_subnet_file(SUBNET_V4)
    }

    /// With a subnet file of exactly `text`; `None` as for `new`.
    pub fn with_subnet_file(text: &str) -> Option<Self> {
        if !prerequisites() {
            return None;
        }
        let host = netns("host");
        let s = Setup::with_subnet_file(text);
        let conf = bytes(&s.conf(json!({})));
        Some(Rig { host, s, conf })
    }

    /// The plugin config with the keys of `extra` added or replaced.
    pub fn conf_with(&self, extra: Value) -> Vec<u8> {
        bytes(&self.s.conf(extra))
    }

    /// Runs `cmd` (ADD, CHECK, DEL) for container `cid`'s eth0 in `netns`.
    pub fn call(&self, cmd: &str, cid: &str, netns: &str, conf: &[u8]) -> (bool, Value) {
        cni(&self.host, &attach_env(cmd, cid, netns, "eth0"), conf)
    }

    /// Runs a command that names no attachment (STATUS, GC, VERSION).
    pub fn global(&self, cmd: &str, stdin: &[u8]) -> (bool, Value) {
        cni(&self.host, &[("CNI_COMMAND", cmd)], stdin)
    }

    /// ADD with `CNI_ARGS` set to `cni_args`.
    pub fn add_args(&self, cid: &str, netns: &str, cni_args: &str, conf: &[u8]) -> (bool, Value) {
        let mut env = attach_env("ADD", cid, netns, "eth0");
        env.push(("CNI_ARGS", cni_args));
        cni(&self.host, &env, conf)
    }

    /// A successful ADD with `conf`; returns the result.
    #[track_caller]
    pub fn add_with(&self, cid: &str, netns: &str, conf: &[u8]) -> Value {
        succeeds(self.call("ADD", cid, netns, conf), &format!("ADD {cid}"))
    }

    /// A successful ADD with `self.conf`; returns the result.
    #[track_caller]
    pub fn add(&self, cid: &str, netns: &str) -> Value {
        self.add_with(cid, netns, &self.conf)
    }

    /// A successful DEL with `conf`, which prints nothing.
    #[track_caller]
    pub fn del_with(&self, cid: &str, netns: &str, conf: &[u8]) {
        let out = succeeds(self.call("DEL", cid, netns, conf), &format!("DEL {cid}"));
        assert_eq!(out, Value::Null, "DEL prints nothing");
    }

    /// A successful DEL with `self.conf`.
    #[track_caller]
    pub fn del(&self, cid: &str, netns: &str) {
        self.del_with(cid, netns, &self.conf)
    }

    /// CHECK of `cid`'s eth0 in `netns` with `prev` as prevResult.
    pub fn check(&self, cid: &str, netns: &str, prev: &Value) -> (bool, Value) {
        let conf = self.conf_with(json!({ "prevResult": prev }));
        self.call("CHECK", cid, netns, &conf)
    }

    /// CHECK against a prevResult that is not what the attachment has fails,
    /// saying so.
    #[track_caller]
    pub fn check_rejects_prev_result(&self, cid: &str, netns: &str, wrong: &Value) {
        let (ok, out) = self.check(cid, netns, wrong);
        assert!(!ok, "CHECK passed with a wrong prevResult: {out}");
        assert!(
            out["details"].as_str().unwrap().contains("prevResult"),
            "{out}"
        );
    }

    /// A successful GC that keeps only the attachments `valid` lists.
    #[track_caller]
    pub fn gc(&self, valid: Value) {
        let conf = self.conf_with(json!({ "cni.dev/valid-attachments": valid }));
        succeeds(self.global("GC", &conf), "GC");
    }

    /// What is left in the store, on the host and in `pod`.
    pub fn leftovers(&self, pod: &Netns) -> Leftovers {
        Leftovers {
            files: self.s.reservations(),
            veths: veths(&self.host),
            pod_eth0: pod.link_names().unwrap().contains(&"eth0".to_string()),
        }
    }

    /// Asserts that nothing is left in the store, on the host or in `pod`.
    #[track_caller]
    pub fn assert_clean(&self, pod: &Netns, what: &str) {
        let left = self.leftovers(pod);
        assert!(left.is_clean(), "{what}: left {left:?}");
    }

    /// Asserts that nothing is left in the store or on the host.
    #[track_caller]
    pub fn assert_empty(&self, what: &str) {
        let files = self.s.reservations();
        assert!(files.is_empty(), "{what}: store has {files:?}");
        let veths = veths(&self.host);
        assert!(veths.is_empty(), "{what}: host veths {veths:?}");
    }
}

/// The address (no prefix) of the `ips` entry of family `v6`.
pub fn addr_of(r: &Value, v6: bool) -> String {
    r["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ip| ip["address"].as_str().unwrap())
        .find(|a| a.contains(':') == v6)
        .unwrap_or_else(|| panic!("no {} address in {r}", if v6 { "v6" } else { "v4" }))
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

pub fn ping6(from: &Netns, to: &str) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", from.name(), "ping", "-6", "-c1", "-W1", to])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub fn sysctl(ns: &Netns, key_value: &str) {
    let st = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sysctl", "-qw", key_value])
        .status()
        .unwrap();
    assert!(st.success(), "sysctl {key_value} in {}", ns.name());
}

pub fn read_sysctl(ns: &Netns, key: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "sysctl", "-n", key])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Two pod namespaces (`<role>1`, `<role>2`). New interfaces in them and in
/// `host` start with IPv6 disabled: the plugin must turn it on for the
/// bridge and the pod interface, from the thread inside the namespace.
pub fn pods_with_ipv6_off(host: &Netns, role: &str) -> (Netns, Netns) {
    let pod1 = netns(&format!("{role}1"));
    let pod2 = netns(&format!("{role}2"));
    for ns in [host, &pod1, &pod2] {
        sysctl(ns, "net.ipv6.conf.default.disable_ipv6=1");
    }
    (pod1, pod2)
}

/// The kernel agrees with an IPv6 ADD: IPv6 on for eth0, `addr/64` on it
/// and usable at once (no DAD), the default route via `gw6`.
pub fn assert_pod_ipv6(pod: &Netns, addr: &str, gw6: &str) {
    assert_eq!(read_sysctl(pod, "net.ipv6.conf.eth0.disable_ipv6"), "0");
    let (_, a) = pod.try_ip(["-6", "-o", "addr", "show", "dev", "eth0", "scope", "global"]);
    assert!(a.contains(&format!("{addr}/64")), "{a}");
    assert!(!a.contains("tentative"), "NODAD not honoured: {a}");
    let (_, route) = pod.try_ip(["-6", "route", "show", "default"]);
    assert!(route.contains(&format!("via {gw6}")), "{route}");
}
