//! `EtcdStore` against a real etcd that demands TLS client certificates, and
//! one with username/password auth. Certificates are made per test by the
//! `openssl` command in a temp dir. Needs `/usr/bin/etcd`, `etcdctl` and
//! `openssl`: missing, the tests fail under `CI=true`, else print a loud
//! notice and return.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{etcdctl, have_etcd, Member, PATIENCE};
use etcd_client::{Client, ConnectOptions};
use subnet_allocator::{
    EtcdOptions, EtcdStore, LeaseAttrs, LeaseStore, NetworkConfig, StoreError, VxlanData,
};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>.pem`, `<name>.key`).
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf certificate `<name>.pem` / `<name>.key` signed by CA `ca`.
fn make_leaf(dir: &Path, ca: &str, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

struct TlsEtcd {
    member: Member,
    dir: tempfile::TempDir,
}

impl TlsEtcd {
    fn path(&self, f: &str) -> PathBuf {
        self.dir.path().join(f)
    }

    fn opts(&self, ca: Option<&str>, client: Option<&str>) -> EtcdOptions {
        EtcdOptions {
            endpoints: vec![self.member.client_url.clone()],
            prefix: "/twill-test/network".into(),
            ca_file: ca.map(|c| self.path(&format!("{c}.pem"))),
            cert_file: client.map(|c| self.path(&format!("{c}.pem"))),
            key_file: client.map(|c| self.path(&format!("{c}.key"))),
            ..EtcdOptions::default()
        }
    }
}

/// etcd on https://127.0.0.1:<random> requiring a client cert signed by
/// `ca`; also makes `client` (signed by `ca`) and an unrelated `other-ca`.
fn start_tls_etcd() -> Option<TlsEtcd> {
    if !have_etcd(&["openssl"]) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_ca(d, "ca");
    make_ca(d, "other-ca");
    make_leaf(
        d,
        "ca",
        "server",
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth,clientAuth\n",
    );
    make_leaf(
        d,
        "ca",
        "client",
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=clientAuth\n",
    );
    let mut member = Member::new(
        d,
        "tls",
        "https",
        vec![
            format!("--cert-file={}", d.join("server.pem").display()),
            format!("--key-file={}", d.join("server.key").display()),
            format!("--trusted-ca-file={}", d.join("ca.pem").display()),
            "--client-cert-auth".into(),
        ],
    );
    let peer = member.peer_url.clone();
    member.add_args([format!("--initial-cluster=tls={peer}")]);
    member.start();
    member.wait_ready();
    Some(TlsEtcd { member, dir })
}

fn attrs(i: u8) -> LeaseAttrs {
    LeaseAttrs {
        public_ip: std::net::Ipv4Addr::new(192, 0, 2, i),
        backend_type: "vxlan".into(),
        backend_data: Some(VxlanData {
            vni: 1,
            vtep_mac: format!("02:00:00:00:00:{i:02x}"),
        }),
        public_ipv6: None,
        backend_v6_data: None,
    }
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
    let cfg = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap();
    store.put_network_config(&cfg).await.unwrap();
    assert_eq!(store.get_network_config().await.unwrap(), cfg);
    let start = store.list_leases().await.unwrap().revision;
    let mut w = store.watch_leases(start).await.unwrap();
    let l = store
        .create_lease(
            "10.244.1.0/24".parse().unwrap(),
            &attrs(1),
            Duration::from_secs(60),
        )
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
    let store = EtcdStore::connect(etcd.opts(Some("ca"), Some("client")))
        .await
        .unwrap();
    store_works(&store).await;

    // The server demands a client certificate.
    let e = connect_err(etcd.opts(Some("ca"), None)).await;
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    assert!(e.is_retryable());
    let msg = e.to_string().to_lowercase();
    assert!(msg.contains("certificate"), "error does not say why: {e}");
    assert!(
        msg.contains(&etcd.member.client_url),
        "error does not say where: {e}"
    );

    // A CA that did not sign the server certificate.
    let e = connect_err(etcd.opts(Some("other-ca"), Some("client"))).await;
    assert!(matches!(e, StoreError::Unreachable { .. }), "{e}");
    let msg = e.to_string().to_lowercase();
    assert!(
        msg.contains("certificate") && msg.contains("issuer"),
        "error does not say why: {e}"
    );

    // Plain http to a TLS port does not work either (and does not hang).
    let mut plain = etcd.opts(None, None);
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
