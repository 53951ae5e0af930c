//! Root stress tests through the real binary: 100 concurrent ADDs and DELs,
//! and plugins SIGKILLed mid-ADD whose leftovers DEL and GC must clean.
//! Needs root and `ip`; fails under `CI=true` without them.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use common::{all_at_once, attach_env, distinct_ips, netns, spawn_cni, veths, Netns, Rig};
use serde_json::{json, Value};

const PODS: usize = 100;

#[test]
fn hundred_concurrent_adds_then_dels() {
    let Some(rig) = Rig::new() else { return };
    let pods: Vec<Netns> = (0..PODS).map(|i| netns(&format!("p{i}"))).collect();
    let (host, s) = (&rig.host, &rig.s);
    let cid = |i: usize| format!("stress{i}");

    let results: Vec<(bool, Value)> = all_at_once(PODS, |i| {
        rig.call("ADD", &cid(i), &pods[i].path(), &rig.conf)
    });
    let ips = distinct_ips(&results);
    for ip in &ips {
        assert!(
            ip.starts_with("10.244.3.")
                && !["10.244.3.0", "10.244.3.1", "10.244.3.255"].contains(&ip.as_str()),
            "{ip}"
        );
    }
    assert_eq!(s.reservations().len(), PODS, "{:?}", s.reservations());
    assert_eq!(veths(host).len(), PODS);

    // Every pod answers: from the host (the bridge) and from a neighbour pod.
    let unreachable: Vec<String> = all_at_once(10, |t| {
        (t..PODS)
            .step_by(10)
            .filter(|&i| !host.ping_once(&ips[i], 2) || !pods[(i + 1) % PODS].ping_once(&ips[i], 2))
            .map(|i| ips[i].clone())
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    assert!(unreachable.is_empty(), "unreachable pods: {unreachable:?}");

    let dels: Vec<(bool, Value)> = all_at_once(PODS, |i| {
        rig.call("DEL", &cid(i), &pods[i].path(), &rig.conf)
    });
    for (i, (ok, out)) in dels.iter().enumerate() {
        assert!(ok, "DEL {i}: {out}");
    }
    rig.assert_empty("after DELs");
    for pod in &pods {
        assert!(
            !pod.link_names().unwrap().contains(&"eth0".to_string()),
            "{}",
            pod.name()
        );
    }
}

/// SIGKILLs an ADD after `delay`; returns whether it finished first.
fn killed_add(host: &Netns, pod: &Netns, cid: &str, conf: &[u8], delay: Duration) -> bool {
    use std::io::Write;
    let path = pod.path();
    let mut child = spawn_cni(host, &attach_env("ADD", cid, &path, "eth0"));
    let _ = child.stdin.take().unwrap().write_all(conf);
    std::thread::sleep(delay);
    let finished = child.try_wait().unwrap().is_some();
    let _ = child.kill();
    let _ = child.wait();
    finished
}

#[test]
fn adds_killed_midway_are_cleaned_by_del_and_gc() {
    let Some(rig) = Rig::new() else { return };
    let pod = netns("pod");
    let (host, s) = (&rig.host, &rig.s);
    let path = pod.path();

    // Kill points sweep the whole ADD (a few ms to tens of ms here); which
    // step each kill lands in is up to the scheduler, so every outcome,
    // from "nothing yet" to "fully added", must be cleanable by DEL.
    let (mut finished, mut partial) = (0, 0);
    for step in 0..32u64 {
        let cid = format!("kill{step}");
        let done = killed_add(
            host,
            &pod,
            &cid,
            &rig.conf,
            Duration::from_micros(step * 400),
        );
        let before = rig.leftovers(&pod);
        if done {
            finished += 1;
        } else if !before.is_clean() {
            partial += 1;
        }
        let (ok, out) = rig.call("DEL", &cid, &path, &rig.conf);
        assert!(ok, "DEL after kill at step {step} ({before:?}): {out}");
        rig.assert_clean(&pod, &format!("step {step} (before DEL: {before:?})"));
    }
    eprintln!("of 32 kills: {finished} came after ADD finished, {partial} left a partial ADD");

    // The same, but nobody calls DEL: GC with an empty valid list cleans up.
    for step in 0..8u64 {
        // One pod namespace per killed ADD: eth0 must not collide.
        let p = netns(&format!("gc{step}"));
        killed_add(
            host,
            &p,
            &format!("gckill{step}"),
            &rig.conf,
            Duration::from_micros(step * 4000),
        );
        rig.gc(json!([]));
        rig.assert_clean(&p, &format!("GC step {step}"));
    }

    // The states a kill can leave but timing may not have hit: a temp file
    // from a plugin killed between write and link, a reservation without
    // any veth, and a stale cursor temp file.
    let store = s.store_dir();
    std::fs::create_dir_all(&store).unwrap();
    let plant = || {
        std::fs::write(store.join(".reserve-4242-dead-eth0"), "dead\neth0").unwrap();
        std::fs::write(store.join(".last_reserved_ip.tmp"), "10.244.3.9").unwrap();
        std::fs::write(store.join("10.244.3.9"), "dead\neth0").unwrap();
    };
    plant();
    rig.del("dead", &path);
    assert!(
        s.reservations().is_empty(),
        "DEL left {:?}",
        s.reservations()
    );
    plant();
    rig.gc(json!([]));
    assert!(
        s.reservations().is_empty(),
        "GC left {:?}",
        s.reservations()
    );

    // The store still works after all that.
    rig.add("after", &path);
    rig.del("after", &path);
    rig.assert_clean(&pod, "after");
}
