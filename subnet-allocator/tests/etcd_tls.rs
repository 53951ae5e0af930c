//! `EtcdStore` against a real etcd that demands TLS client certificates, and
//! one with username/password auth. Certificates are made per test in a temp
//! dir by the netns harness's [`TlsFiles`] (with the `openssl` command).
//! Needs `/usr/bin/etcd`, `etcdctl` and `openssl`: missing, the tests fail
//! under `CI=true`, else print a loud notice and return.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use common::contract::{vxlan, BASIC_CFG, TTL};
use common::{etcdctl, have_etcd, Member, PATIENCE};
use etcd_client::{Client, ConnectOptions};
use subnet_allocator::{EtcdOptions, EtcdStore, LeaseStore, NetworkConfig, StoreError};
use twill_harness::tls::TlsFiles;

struct TlsEtcd {
    member: Member,
    /// The CA, server and client certificates the etcd is set up with.
    certs: TlsFiles,
    /// A CA (of another name) that did not sign the server certificate.
    other_ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsEtcd {
    fn opts(&self, ca: Option<PathBuf>, client_cert: bool) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![self.member.client_url.clone()],
            prefix: "/twill-test/network".into(),
            ca_file: ca,
            cert_file: client_cert.then(|| self.certs.client_cert()),
            key_file: client_cert.then(|| self.certs.client_key()),
            ..EtcdOptions::default()
        }
    }
}

/// etcd on https://127.0.0.1:<random> requiring a client cert signed by the
/// CA of `certs`; also makes the unrelated `other_ca`.
fn start_tls_etcd() -> Option<TlsEtcd> {
    if !have_etcd(&["openssl"]) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = TlsFiles::generate(&d.join("certs"), Ipv4Addr::LOCALHOST).unwrap();
    let other_ca = TlsFiles::generate_ca(&d.join("other"), "other-ca").unwrap();
    let mut member = Member::new(d, "tls", "https", certs.etcd_server_flags());
    let peer = member.peer_url.clone();
    member.add_args([format!("--initial-cluster=tls={peer}")]);
    member.start();
    member.wait_ready();
    Some(TlsEtcd {
        member,
        certs,
        other_ca,
        _dir: dir,
    })
}

/// Connecting must end, with an error, well before the test's patience.
async fn connect_err(opts: EtcdOptions) -> StoreError {
    match tokio::time::timeout(PATIENCE, EtcdStore::connect(opts))
        .await
        .expect("connect hung instead of failing")
    {
        Ok(_) => panic!("connect succeeded but must be refused"),
        Err(e) => {
            eprintln!("refused as expected: {e}");
            e
        }
    }
}

/// Exercises the store end to end: config, create, list, renew, watch.
async fn store_works(store: &EtcdStore) {
    let cfg = NetworkConfig::parse(BASIC_CFG.as_bytes()).unwrap();
    store.put_network_config(&cfg).await.unwrap();
    assert_eq!(store.get_network_config().await.unwrap(), cfg);
    let start = store.list_leases().await.unwrap().revision;
    let mut w = store.watch_leases(start).await.unwrap();
    let l = store
        .create_lease("10.244.1.0/24".parse().unwrap(), &vxlan(1, 1), TTL)
        .await
        .unwrap();
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 1);
    store.renew_lease(&l).await.unwrap();
    let (events, _) = tokio::time::timeout(PATIENCE, w.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
}

#[tokio::test]
async fn tls_with_client_cert_works_and_wrong_setups_are_refused() {
    let Some(etcd) = start_tls_etcd() else {
        return;
    };
    let store = EtcdStore::connect(etcd.opts(Some(etcd.certs.ca()), true))
        .await
        .unwrap();
    store_works(&store).await;

    // The server demands a client certificate.
    let e = connect_err(etcd.opts(Some(etcd.certs.ca()), false)).await;
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert!(e.is_retryable());
    let msg = e.to_string().to_lowercase();
    assert!(msg.contains("certificate"), "error does not say why: {e}");
    assert!(
        msg.contains(&etcd.member.client_url),
        "error does not say where: {e}"
    );

    // A CA that did not sign the server certificate.
    let e = connect_err(etcd.opts(Some(etcd.other_ca.clone()), true)).await;
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    let msg = e.to_string().to_lowercase();
    assert!(
        msg.contains("certificate") && msg.contains("issuer"),
        "error does not say why: {e}"
    );

    // Plain http to a TLS port does not work either (and does not hang).
    let mut plain = etcd.opts(None, false);
    plain.endpoints = vec![etcd.member.client_url.replace("https://", "http://")];
    let e = connect_err(plain).await;
    assert!(e.is_retryable(), "{e}");
}

#[tokio::test]
async fn tls_file_problems_are_named() {
    if !have_etcd(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let opts = EtcdOptions {
        endpoints: vec!["https://127.0.0.1:1".into()],
        ca_file: Some(missing.clone()),
        ..EtcdOptions::default()
    };
    match EtcdStore::connect(opts).await {
        Err(StoreError::TlsFile { ref path, .. }) if *path == missing => {}
        Err(e) => panic!("expected TlsFile for {}, got {e}", missing.display()),
        Ok(_) => panic!("connect with a missing CA file succeeded"),
    }
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let opts = EtcdOptions {
        endpoints: vec!["https://127.0.0.1:1".into()],
        ca_file: Some(garbage.clone()),
        ..EtcdOptions::default()
    };
    let e = EtcdStore::connect(opts).await.err().unwrap();
    assert!(e.to_string().contains("garbage.pem"), "{e}");
    assert!(!e.is_retryable());

    // TLS files with an http:// endpoint would silently not be used.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
    let opts = EtcdOptions {
        endpoints: vec!["http://127.0.0.1:1".into()],
        ca_file: Some(ca),
        ..EtcdOptions::default()
    };
    let e = EtcdStore::connect(opts).await.err().unwrap();
    assert!(matches!(e, StoreError::Options(_)), "{e}");
    assert!(e.to_string().contains("http://127.0.0.1:1"), "{e}");
}

#[tokio::test]
async fn username_password_auth() {
    if !have_etcd(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A 2 s token TTL lets the test see the store log in again by itself.
    let mut member = Member::new(
        dir.path(),
        "auth",
        "http",
        vec!["--auth-token-ttl=2".into()],
    );
    let peer = member.peer_url.clone();
    member.add_args([format!("--initial-cluster=auth={peer}")]);
    member.start();
    member.wait_ready();
    let ep = member.client_url.clone();
    etcdctl(&ep, &[], &["user", "add", "root:pw"]);
    etcdctl(&ep, &[], &["auth", "enable"]);

    let opts = |user: Option<&str>, pw: Option<&str>| EtcdOptions {
        endpoints: vec![ep.clone()],
        prefix: "/twill-test/network".into(),
        username: user.map(str::to_string),
        password: pw.map(str::to_string),
        ..EtcdOptions::default()
    };
    let store = EtcdStore::connect(opts(Some("root"), Some("pw")))
        .await
        .unwrap();
    store_works(&store).await;

    let e = connect_err(opts(Some("root"), Some("wrong"))).await;
    assert!(
        matches!(e, StoreError::Auth { ref user, .. } if user == "root"),
        "{e}"
    );
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("authentication failed"), "{e}");

    let e = connect_err(opts(None, None)).await;
    assert!(matches!(e, StoreError::Auth { .. }), "{e}");

    // Let both tokens expire: a raw client now fails, the store logs in
    // again and carries on.
    let mut raw = Client::connect([&ep], Some(ConnectOptions::new().with_user("root", "pw")))
        .await
        .unwrap();
    raw.get("x", None).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let raw_err = raw.get("x", None).await.unwrap_err();
    assert!(
        raw_err.to_string().contains("invalid auth token"),
        "{raw_err}"
    );
    assert_eq!(store.list_leases().await.unwrap().leases.len(), 1);
}
