//! The real binary never panics, whatever arrives on stdin: random bytes,
//! truncated, huge and deeply nested JSON, for every verb. Each run must
//! print one CNI error object (integer `code`, `msg`) and exit non-zero, or
//! succeed for VERSION. Needs no root: every input is checked with the
//! library first to be an invalid config, and valid-looking ones point at a
//! missing subnet file and netns, so no call can reach the kernel.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Write;
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use serde_json::Value;

/// As `common::bin`: `TWILL_CNI_BIN` (the static build) or cargo's.
fn bin() -> String {
    std::env::var("TWILL_CNI_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_twill").to_string())
}

const VERBS: &[&str] = &["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "BOGUS"];

struct Run {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn run(verb: &str, stdin: &[u8], extra_env: &[(&str, &str)]) -> Run {
    let dir = std::env::temp_dir();
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", "fuzz")
        .env("CNI_NETNS", "/run/netns/twcni-fuzz-does-not-exist")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    // The plugin may answer (and exit) before reading everything: a broken
    // pipe here is fine, the output is what is judged.
    let writer = {
        let stdin = stdin.to_vec();
        std::thread::spawn(move || {
            let _ = input.write_all(&stdin);
        })
    };
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The contract for one run on an input that is not a usable config.
fn assert_cni_answer(verb: &str, what: &str, r: &Run) {
    assert!(
        !r.stderr.contains("panicked"),
        "{verb} {what}: panic: {}",
        r.stderr
    );
    assert!(
        r.status.code().is_some(),
        "{verb} {what}: killed by a signal: {:?}",
        r.status
    );
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{verb} {what}: stdout is not one JSON value ({e}): {:?}",
            r.stdout
        )
    });
    if verb == "VERSION" {
        assert!(r.status.success(), "{verb} {what}: {v}");
        assert!(v["supportedVersions"].is_array(), "{verb} {what}: {v}");
        return;
    }
    assert!(!r.status.success(), "{verb} {what}: succeeded: {v}");
    let code = v["code"].as_u64();
    assert!(
        code.is_some_and(|c| c >= 1),
        "{verb} {what}: no error code: {v}"
    );
    assert!(v["msg"].is_string(), "{verb} {what}: no msg: {v}");
    assert!(
        v["cniVersion"].is_string(),
        "{verb} {what}: no cniVersion: {v}"
    );
}

/// A config that parses, so the verbs get past decoding; it names a subnet
/// file and data dir that do not exist.
fn valid_conf() -> String {
    r#"{"cniVersion":"1.0.0","name":"fuzz","type":"twill","subnetFile":"/nonexistent/twcni-fuzz/subnet.env","dataDir":"/nonexistent/twcni-fuzz/ipam","mtu":1400}"#.to_string()
}

fn inputs() -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x7e11);
    let mut v: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..120 {
        let len = rng.gen_range(0..200);
        v.push((
            format!("random #{i}"),
            (0..len).map(|_| rng.gen()).collect(),
        ));
    }
    // Random printable JSON-ish soup hits more parser paths than raw bytes.
    let alphabet = br#"{}[]":,0123456789.eE+-truefalsnul \cniVersion"#;
    for i in 0..80 {
        let len = rng.gen_range(1..120);
        v.push((
            format!("json soup #{i}"),
            (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect(),
        ));
    }
    let valid = valid_conf();
    for cut in (0..valid.len()).step_by(7) {
        v.push((
            format!("truncated at {cut}"),
            valid.as_bytes()[..cut].to_vec(),
        ));
    }
    for depth in [200, 5_000, 100_000] {
        let nested = format!(
            r#"{{"cniVersion":"1.0.0","name":"fuzz","type":"twill","x":{}{}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        v.push((format!("nested arrays {depth}"), nested.into_bytes()));
        let objects = format!("{}{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
        v.push((format!("nested objects {depth}"), objects.into_bytes()));
    }
    let huge = "x".repeat(8 << 20);
    v.push((
        "8 MiB name".into(),
        format!(r#"{{"cniVersion":"1.0.0","name":"{huge}","type":"twill"}}"#).into_bytes(),
    ));
    v.push(("8 MiB garbage".into(), huge.clone().into_bytes()));
    v.push((
        "8 MiB cniVersion".into(),
        format!(r#"{{"cniVersion":"{huge}","name":"n","type":"twill"}}"#).into_bytes(),
    ));
    for (what, bad) in [
        ("mtu string", r#""mtu":"1400""#),
        ("mtu huge", r#""mtu":1e300"#),
        ("mtu negative", r#""mtu":-1"#),
        ("dns wrong type", r#""dns":{"nameservers":"x"}"#),
        ("prevResult array", r#""prevResult":[]"#),
        ("ips not array", r#""runtimeConfig":{"ips":"10.244.3.9"}"#),
        ("ips bad addr", r#""runtimeConfig":{"ips":["300.1.1.1"]}"#),
        (
            "attachments bad",
            r#""cni.dev/valid-attachments":[{"containerID":1}]"#,
        ),
        ("bridge too long", r#""bridge":"abcdefghijklmnopq""#),
        ("name path", r#""name":"../../etc""#),
        ("version unknown", r#""cniVersion":"9.9.9""#),
        ("invalid utf8 name", "\"name\":\"\u{fffd}\""),
    ] {
        let mut conf = valid.clone();
        conf.truncate(conf.len() - 1);
        conf.push(',');
        conf.push_str(bad);
        conf.push('}');
        v.push((what.to_string(), conf.into_bytes()));
    }
    v.push(("bare number".into(), b"1".to_vec()));
    v.push(("null".into(), b"null".to_vec()));
    v.push(("empty".into(), Vec::new()));
    v.push(("nul bytes".into(), vec![0; 4096]));
    v.push((
        "invalid utf8".into(),
        b"{\"cniVersion\":\"\xff\xfe\"}".to_vec(),
    ));
    v
}

#[test]
fn binary_answers_every_stdin_with_a_cni_error() {
    let mut runs = 0;
    for (i, (what, input)) in inputs().iter().enumerate() {
        // Anything the library accepts as a config is not garbage; the
        // inputs above are built so that none is.
        assert!(
            twill_cni::config::parse_netconf(input).is_err(),
            "{what} parses as a config"
        );
        // Each input against two verbs, rotating, keeps the run count sane.
        for verb in [VERBS[i % VERBS.len()], VERBS[(i + 3) % VERBS.len()]] {
            assert_cni_answer(verb, what, &run(verb, input, &[]));
            runs += 1;
        }
    }
    assert!(runs >= 300, "only {runs} runs");
}

#[test]
fn bad_environment_with_a_valid_config_is_an_error() {
    let conf = valid_conf();
    let long = "y".repeat(100_000);
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("no command", vec![("CNI_COMMAND", "")]),
        ("lowercase command", vec![("CNI_COMMAND", "add")]),
        (
            "ifname too long",
            vec![("CNI_IFNAME", "eth0123456789abcdef")],
        ),
        ("ifname slash", vec![("CNI_IFNAME", "a/b")]),
        ("containerid path", vec![("CNI_CONTAINERID", "../../x")]),
        ("containerid huge", vec![("CNI_CONTAINERID", &long)]),
        ("args garbage", vec![("CNI_ARGS", "=;;==;x")]),
        ("args unknown", vec![("CNI_ARGS", "FOO=bar")]),
        ("args bad ip", vec![("CNI_ARGS", "IP=10.244.3")]),
        ("netns missing", vec![("CNI_NETNS", "")]),
        ("netns huge", vec![("CNI_NETNS", &long)]),
    ];
    for (what, env) in &cases {
        // ADD and CHECK fail before any effect: the subnet file is missing.
        for verb in ["ADD", "CHECK", "STATUS"] {
            // `env` is applied last, so it may override CNI_COMMAND too.
            assert_cni_answer(verb, what, &run(verb, conf.as_bytes(), env));
        }
    }
}

#[test]
fn version_with_the_dummy_env_of_runtimes() {
    // libcni (podman, containerd) probes VERSION with placeholder values.
    for stdin in [&br#"{"cniVersion":"1.0.0"}"#[..], b"", b"{}"] {
        let r = run(
            "VERSION",
            stdin,
            &[
                ("CNI_CONTAINERID", "dummy"),
                ("CNI_NETNS", "dummy"),
                ("CNI_IFNAME", "dummy"),
                ("CNI_PATH", "dummy"),
            ],
        );
        assert!(r.status.success(), "{}{}", r.stdout, r.stderr);
        let v: Value = serde_json::from_str(r.stdout.trim()).unwrap();
        let supported: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert!(
            supported.contains(&"1.0.0") && supported.contains(&"0.3.1"),
            "{v}"
        );
    }
}
