//! Root integration test: the real `twill` binary against faulty inputs
//! that are not the config: inconsistent subnet files, a FIFO as the subnet
//! file, entries in the IPAM store the plugin did not write (a FIFO, a
//! directory, a non-UTF-8 file, a symlink, all named like an address), a
//! read-only or full store, and a pod MTU other than the node's. Every call
//! runs with a deadline, so a call that would block fails the test instead
//! of hanging the suite.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    attach_env, fails_with, netns, outcome, spawn_cni_after, succeeds, veths, Netns, Rig, SUBNET_V4,
};
use serde_json::{json, Value};

/// Far more than any call takes; only a blocked call reaches it.
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs the plugin in `host` like a runtime, after the shell commands
/// `prelude` (run in the call's own mount namespace, which `ip netns exec`
/// makes), and kills it at [`DEADLINE`]: a blocked call is a failure.
fn bounded(host: &Netns, prelude: &str, env: &[(&str, &str)], stdin: &[u8]) -> (bool, Value) {
    let mut child = spawn_cni_after(host, Some(prelude), env);
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{:?} blocked for {DEADLINE:?}",
                env.iter().find(|(k, _)| *k == "CNI_COMMAND")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    outcome(child.wait_with_output().unwrap())
}

fn call(rig: &Rig, cmd: &str, cid: &str, netns: &str, conf: &[u8]) -> (bool, Value) {
    bounded(&rig.host, "", &attach_env(cmd, cid, netns, "eth0"), conf)
}

fn global(rig: &Rig, prelude: &str, cmd: &str, conf: &[u8]) -> (bool, Value) {
    bounded(&rig.host, prelude, &[("CNI_COMMAND", cmd)], conf)
}

fn mkfifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Nothing was created: no bridge, no veth, no reservation, no pod eth0.
#[track_caller]
fn nothing_created(rig: &Rig, pod: &Netns, what: &str) {
    let links = rig.host.link_names().unwrap();
    assert!(!links.iter().any(|l| l == "twill0"), "{what}: bridge made");
    rig.assert_clean(pod, what);
}

#[test]
fn inconsistent_subnet_files_are_refused_naming_file_and_field() {
    let Some(rig) = Rig::new() else { return };
    let pod = netns("pod");
    let p = pod.path();
    let file = rig.s.dir.path().join("subnet.env");
    for (text, field) in [
        // Outside the network: its gateway would be put on the bridge.
        (
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.99.3.1/24\n",
            "TWILL_SUBNET",
        ),
        // Prefixes no lease of the network has.
        (
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.0.0.1/8\n",
            "TWILL_SUBNET",
        ),
        (
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.0.1/16\n",
            "TWILL_SUBNET",
        ),
        // Truncated: caught by the plugin, not by netlink.
        (
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/2\n",
            "TWILL_SUBNET",
        ),
        // A gateway that is not the subnet's first address.
        (
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.9/24\n",
            "TWILL_SUBNET",
        ),
        // The IPv6 pair.
        (
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:99:244:3::1/64\n",
            "TWILL_IPV6_SUBNET",
        ),
        (
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244::1/48\n",
            "TWILL_IPV6_SUBNET",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = fails_with(call(&rig, "ADD", "c1", &p, &rig.conf), 101);
        let details = out["details"].as_str().unwrap();
        assert!(
            details.contains(&file.display().to_string()) && details.contains(field),
            "{text:?}: {details}"
        );
        nothing_created(&rig, &pod, text);
        // STATUS agrees: no ADD can work.
        fails_with(global(&rig, "", "STATUS", &rig.conf), 50);
    }

    // A prefix a lease of the network could have, but not this node's: the
    // agent's bridge carries the lease's gateway as a /24.
    assert!(
        rig.host
            .try_ip(["link", "add", "twill0", "type", "bridge"])
            .0
    );
    assert!(
        rig.host
            .try_ip(["addr", "add", "10.244.3.1/24", "dev", "twill0"])
            .0
    );
    std::fs::write(
        &file,
        "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/25\n",
    )
    .unwrap();
    let out = fails_with(call(&rig, "ADD", "c1", &p, &rig.conf), 101);
    let details = out["details"].as_str().unwrap();
    assert!(
        details.contains("TWILL_SUBNET") && details.contains("/24"),
        "{details}"
    );
    rig.assert_clean(&pod, "/25 for a /24 lease");
    let (_, addrs) = rig.host.try_ip(["-o", "addr", "show", "dev", "twill0"]);
    assert!(!addrs.contains("/25"), "{addrs}");
    assert!(rig.host.try_ip(["link", "del", "twill0"]).0);

    // A FIFO in place of the subnet file: no reader would ever write it.
    std::fs::remove_file(&file).unwrap();
    mkfifo(&file);
    let out = fails_with(call(&rig, "ADD", "c1", &p, &rig.conf), 101);
    assert!(
        out["details"]
            .as_str()
            .unwrap()
            .contains("not a regular file"),
        "{out}"
    );
    nothing_created(&rig, &pod, "FIFO subnet file");
    fails_with(global(&rig, "", "STATUS", &rig.conf), 50);

    // Positive control: the agent's file works in the same rig.
    std::fs::remove_file(&file).unwrap();
    std::fs::write(&file, SUBNET_V4).unwrap();
    succeeds(call(&rig, "ADD", "c1", &p, &rig.conf), "ADD");
    succeeds(call(&rig, "DEL", "c1", &p, &rig.conf), "DEL");
}

#[test]
fn foreign_store_entries_never_block_and_gc_releases_them() {
    let Some(rig) = Rig::new() else { return };
    let pod = netns("pod");
    let p = pod.path();
    let store = rig.s.store_dir();
    std::fs::create_dir_all(&store).unwrap();
    // .2 a FIFO, .3 a directory (with a file in it), .4 not UTF-8, .5 a
    // symlink to a FIFO, and a FIFO as the cursor.
    mkfifo(&store.join("10.244.3.2"));
    std::fs::create_dir(store.join("10.244.3.3")).unwrap();
    std::fs::write(store.join("10.244.3.3/x"), "x").unwrap();
    std::fs::write(store.join("10.244.3.4"), b"\xff\xfe\n\x80").unwrap();
    let target = rig.s.dir.path().join("elsewhere.fifo");
    mkfifo(&target);
    std::os::unix::fs::symlink(&target, store.join("10.244.3.5")).unwrap();
    mkfifo(&store.join("last_reserved_ip"));
    let foreign = ["10.244.3.2", "10.244.3.3", "10.244.3.4", "10.244.3.5"];

    // ADD neither blocks nor takes an occupied address.
    let r = succeeds(call(&rig, "ADD", "c1", &p, &rig.conf), "ADD");
    assert_eq!(r["ips"][0]["address"], "10.244.3.6/24", "{r}");
    // STATUS and CHECK read the store too.
    succeeds(global(&rig, "", "STATUS", &rig.conf), "STATUS");
    let check = rig.conf_with(json!({ "prevResult": r }));
    succeeds(call(&rig, "CHECK", "c1", &p, &check), "CHECK");
    // DEL of something else and of c1: no block, the foreign entries stay.
    succeeds(call(&rig, "DEL", "other", &p, &rig.conf), "DEL other");
    succeeds(call(&rig, "DEL", "c1", &p, &rig.conf), "DEL c1");
    let left = names(&store);
    for f in foreign {
        assert!(left.contains(&f.to_string()), "DEL removed {f}: {left:?}");
    }
    assert!(!left.contains(&"10.244.3.6".to_string()), "{left:?}");

    // GC releases them all; the FIFO the symlink pointed at is untouched.
    let gc = rig.conf_with(json!({ "cni.dev/valid-attachments": [] }));
    succeeds(global(&rig, "", "GC", &gc), "GC");
    let left = names(&store);
    for f in foreign {
        assert!(!left.contains(&f.to_string()), "GC left {f}: {left:?}");
    }
    assert!(target.exists());
    // The addresses are free again.
    let r = succeeds(
        bounded(
            &rig.host,
            "",
            &{
                let mut e = attach_env("ADD", "c2", &p, "eth0");
                e.push(("CNI_ARGS", "IP=10.244.3.2"));
                e
            },
            &rig.conf,
        ),
        "ADD .2",
    );
    assert_eq!(r["ips"][0]["address"], "10.244.3.2/24");
    succeeds(call(&rig, "DEL", "c2", &p, &rig.conf), "DEL c2");
    assert!(veths(&rig.host).is_empty());
}

/// `mount` commands that turn the data dir into a read-only bind mount of
/// itself, in the call's own mount namespace.
fn read_only(dir: &Path) -> String {
    let d = dir.display();
    format!("mount --bind '{d}' '{d}'; mount -o remount,bind,ro '{d}' '{d}'")
}

#[test]
fn status_fails_on_a_read_only_or_full_store_and_del_still_finishes() {
    let Some(rig) = Rig::new() else { return };
    if !twill_harness::require(&["mount", "dd"]) {
        return;
    }
    let pod = netns("pod");
    let p = pod.path();
    let data = rig.s.data_dir();

    // Positive control: a writable store is available.
    succeeds(global(&rig, "", "STATUS", &rig.conf), "STATUS");
    let held = succeeds(call(&rig, "ADD", "held", &p, &rig.conf), "ADD");

    // Read-only: STATUS is 50, ADD fails, DEL of a container holding
    // nothing succeeds, DEL of one holding an address cannot.
    let ro = read_only(&data);
    let out = fails_with(global(&rig, &ro, "STATUS", &rig.conf), 50);
    assert_details(&out, "cannot be written");
    let pod2 = netns("pod2");
    let (ok, _) = bounded(
        &rig.host,
        &ro,
        &attach_env("ADD", "new", &pod2.path(), "eth0"),
        &rig.conf,
    );
    assert!(!ok, "ADD on a read-only store succeeded");
    succeeds(
        bounded(
            &rig.host,
            &ro,
            &attach_env("DEL", "nothing", &pod2.path(), "eth0"),
            &rig.conf,
        ),
        "DEL of nothing on a read-only store",
    );
    fails_with(
        bounded(
            &rig.host,
            &ro,
            &attach_env("DEL", "held", &p, "eth0"),
            &rig.conf,
        ),
        5,
    );
    assert_eq!(rig.s.reservations(), vec![common::result_ip(&held)]);
    succeeds(call(&rig, "DEL", "held", &p, &rig.conf), "DEL held");

    // A read-only file system without the store at all: DEL still finishes.
    let empty = rig.s.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let conf_empty = rig.conf_with(json!({ "dataDir": empty.join("ipam") }));
    succeeds(
        bounded(
            &rig.host,
            &read_only(&empty),
            &attach_env("DEL", "x", &p, "eth0"),
            &conf_empty,
        ),
        "DEL on a read-only file system without a store",
    );

    // Full: a small tmpfs filled to the last block.
    let full = rig.s.dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    let f = full.display();
    let fill = format!(
        "mount -t tmpfs -o size=256k none '{f}'; dd if=/dev/zero of='{f}/fill' bs=4k 2>/dev/null || true"
    );
    let conf_full = rig.conf_with(json!({ "dataDir": full.join("ipam") }));
    let out = fails_with(global(&rig, &fill, "STATUS", &conf_full), 50);
    assert_details(&out, "cannot be written");
    // Positive control: the same tmpfs unfilled is available.
    let unfilled = format!("mount -t tmpfs -o size=256k none '{f}'");
    succeeds(global(&rig, &unfilled, "STATUS", &conf_full), "STATUS");
}

#[test]
fn a_pod_mtu_changes_only_that_pods_interfaces() {
    let Some(rig) = Rig::new() else { return };
    let host = &rig.host;
    let mtu_of = |ns: &Netns, dev: &str| -> String {
        let (ok, out) = ns.try_ip(["-o", "link", "show", dev]);
        assert!(ok, "{dev}: {out}");
        out.split_whitespace()
            .skip_while(|w| *w != "mtu")
            .nth(1)
            .unwrap()
            .to_string()
    };
    // Positive control: a bridge created with an MTU, as the agent does,
    // follows a smaller port down.
    assert!(
        host.try_ip(["link", "add", "ctl0", "mtu", "1450", "type", "bridge"])
            .0
    );
    assert!(
        host.try_ip([
            "link", "add", "ctlv", "mtu", "1400", "master", "ctl0", "type", "veth", "peer", "name",
            "ctlp"
        ])
        .0
    );
    assert_eq!(
        mtu_of(host, "ctl0"),
        "1400",
        "the kernel no longer does this"
    );

    // The bridge as the agent makes it; then pods with and without `mtu`.
    assert!(
        host.try_ip(["link", "add", "twill0", "mtu", "1450", "type", "bridge"])
            .0
    );
    let pods: Vec<Netns> = (0..3).map(|i| netns(&format!("m{i}"))).collect();
    let small = rig.conf_with(json!({ "mtu": 1400 }));
    let big = rig.conf_with(json!({ "mtu": 9000 }));
    let confs = [&small, &rig.conf, &big];
    for (i, (pod, conf)) in pods.iter().zip(confs).enumerate() {
        succeeds(
            call(&rig, "ADD", &format!("m{i}"), &pod.path(), conf),
            "ADD",
        );
        assert_eq!(mtu_of(host, "twill0"), "1450", "after pod {i}");
    }
    assert_eq!(mtu_of(&pods[0], "eth0"), "1400");
    assert_eq!(mtu_of(&pods[1], "eth0"), "1450");
    assert_eq!(mtu_of(&pods[2], "eth0"), "9000");

    // A bridge the plugin creates itself gets the node's MTU, not the pod's.
    assert!(host.try_ip(["link", "del", "twill0"]).0);
    let pod = netns("m9");
    succeeds(call(&rig, "ADD", "m9", &pod.path(), &small), "ADD");
    assert_eq!(mtu_of(host, "twill0"), "1450");
    assert_eq!(mtu_of(&pod, "eth0"), "1400");
}

/// The CNI error `out` explains itself with `what`.
fn assert_details(out: &Value, what: &str) {
    let details = out["details"].as_str().unwrap_or_default();
    assert!(details.contains(what), "{out}");
}
