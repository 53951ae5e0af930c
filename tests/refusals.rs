//! Operator mistakes that twilld refuses at start, through the real binary:
//! exit code 2, the flag named on stderr, nothing retried. None of these
//! needs root or etcd: each refusal comes before twilld talks to either
//! (the ones that need etcd or a namespace are in
//! `harness/tests/refusals.rs`). Also: a closed stderr pipe is no panic.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Read;
use std::process::{Command, Stdio};

const TWILLD: &str = env!("CARGO_BIN_EXE_twilld");

/// A twilld command with no `TWILL_*` from the caller's environment, a
/// subnet file in `dir`, and an etcd address nothing listens on: a
/// refusal must come without etcd.
fn twilld(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(TWILLD);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("TWILL_") {
            c.env_remove(k);
        }
    }
    c.args(["--subnet-file", dir.join("subnet.env").to_str().unwrap()]);
    c.args(args);
    c.stdin(Stdio::null());
    c
}

/// Runs `args` to the end; returns the exit code and stderr. Every case
/// here must end by itself: one that retried instead would hang the test,
/// which is the failure.
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = twilld(dir.path(), args).output().unwrap();
    assert!(
        !dir.path().join("subnet.env").exists(),
        "{args:?} wrote a subnet file"
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_refused(args: &[&str], names: &[&str]) {
    let (code, stderr) = refused(args);
    assert_eq!(code, Some(2), "{args:?}: exit {code:?}, stderr:\n{stderr}");
    for n in names {
        assert!(
            stderr.contains(n),
            "{args:?}: {n:?} not named in:\n{stderr}"
        );
    }
}

#[test]
fn a_log_level_that_is_no_level_is_refused() {
    assert_refused(&["--log-level", "warning"], &["--log-level", "warning"]);
    assert_refused(&["--log-level", "info,twill=loud"], &["--log-level"]);
}

#[test]
fn a_loopback_or_link_local_public_ip_is_refused() {
    assert_refused(&["--public-ip", "127.0.0.1"], &["--public-ip", "loopback"]);
    assert_refused(
        &["--public-ip", "169.254.10.1"],
        &["--public-ip", "link-local"],
    );
    assert_refused(
        &["--public-ipv6", "fe80::1"],
        &["--public-ipv6", "link-local"],
    );
}

#[test]
fn tls_files_with_an_http_endpoint_are_refused() {
    assert_refused(
        &[
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--etcd-cafile",
            "/nonexistent/ca.pem",
        ],
        &["--etcd-cafile", "http://127.0.0.1:1", "https://"],
    );
}

#[test]
fn a_missing_or_non_pem_tls_file_is_refused_naming_its_flag() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "this is not a certificate\n").unwrap();
    let good = dir.path().join("ca.pem");
    std::fs::write(
        &good,
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let https = ["--etcd-endpoints", "https://127.0.0.1:1"];
    let missing = missing.to_str().unwrap();
    let garbage = garbage.to_str().unwrap();
    let good = good.to_str().unwrap();

    let mut args = https.to_vec();
    args.extend(["--etcd-cafile", missing]);
    assert_refused(&args, &["--etcd-cafile", missing]);

    let mut args = https.to_vec();
    args.extend(["--etcd-cafile", garbage]);
    assert_refused(&args, &["--etcd-cafile", garbage, "PEM"]);

    let mut args = https.to_vec();
    args.extend([
        "--etcd-cafile",
        good,
        "--etcd-certfile",
        good,
        "--etcd-keyfile",
        garbage,
    ]);
    assert_refused(&args, &["--etcd-keyfile", garbage]);
}

/// A pipe whose reading end is already closed, as after `| head -1` took
/// its line: every write to the returned end fails with EPIPE.
fn closed_pipe() -> std::os::fd::OwnedFd {
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    write
}

/// `twilld ... 2>&1 | head -1` on a refusal: the error is still reported by
/// the exit code 2, not replaced by a panic's 101.
#[test]
fn a_closed_stderr_pipe_does_not_change_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("missing-ca.pem");
    let status = twilld(
        dir.path(),
        &[
            "--log-level",
            "trace",
            "--etcd-endpoints",
            "https://127.0.0.1:1",
            "--etcd-cafile",
            ca.to_str().unwrap(),
        ],
    )
    .stdout(Stdio::from(closed_pipe()))
    .stderr(Stdio::from(closed_pipe()))
    .status()
    .unwrap();
    assert_eq!(status.code(), Some(2), "{status:?}");
}

/// The sum of `twill_etcd_errors_total` on `/metrics` at `port`, or `None`
/// while it does not answer.
fn etcd_errors(port: u16) -> Option<f64> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(
        body.lines()
            .filter(|l| l.starts_with("twill_etcd_errors_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

/// A running agent whose stderr reader went away keeps running: it logs a
/// warning per failed etcd call (nothing listens at the endpoint), and
/// each of those writes meets the closed pipe.
#[test]
fn a_closed_stderr_pipe_does_not_kill_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let mut child = twilld(
        dir.path(),
        &[
            "--etcd-endpoints",
            "http://127.0.0.1:1",
            "--healthz-addr",
            &addr,
        ],
    )
    .stdout(Stdio::from(closed_pipe()))
    .stderr(Stdio::from(closed_pipe()))
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = None;
    let outcome = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Err(format!("twilld exited with {status:?}"));
        }
        last = etcd_errors(port).or(last);
        // Each counted failure is followed by its log line: three of them
        // have met the closed pipe once the fourth is counted.
        if last.is_some_and(|n| n >= 4.0) {
            break Ok(());
        }
        if std::time::Instant::now() > deadline {
            break Err(format!("fewer than 4 etcd errors counted; last {last:?}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    outcome.unwrap();
    assert!(still_running, "twilld ended after writing to a closed pipe");
}

#[test]
fn a_probe_interval_out_of_range_is_refused() {
    assert_refused(
        &["--probe-interval", "0"],
        &["--probe-interval", "1 to 300"],
    );
    assert_refused(&["--probe-interval", "301"], &["--probe-interval"]);
    let mut c = twilld(tempfile::tempdir().unwrap().path(), &[]);
    c.env("TWILL_PROBE_INTERVAL", "0");
    let out = c.output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--probe-interval"));
}
