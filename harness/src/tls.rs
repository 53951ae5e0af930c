//! etcd with TLS client-certificate auth for the harness: a throwaway CA,
//! server and client certificates made with `openssl`, an etcd demanding
//! client certificates inside a test namespace, and `twilld` processes
//! started with whatever etcd flags a test wants.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::bins;
use crate::cluster::{Cluster, Host, UNDERLAY_IP};
use crate::cmd::{self, ip, ChildGuard};
use crate::error::{HarnessError, Result};
use crate::etcd::{etcd_command, EtcdArgs};
use crate::netns::Netns;
use crate::parse;
use crate::wait::wait_for;

/// Certificates and keys in one directory: `ca.pem`, `server.pem` /
/// `server.key` (SAN = the etcd's IP), `client.pem` / `client.key`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    dir: PathBuf,
}

impl TlsFiles {
    /// Makes a CA and a server and a client certificate signed by it in
    /// `dir` (created if needed). The server certificate is valid for
    /// `server_ip` only.
    pub fn generate(dir: &Path, server_ip: Ipv4Addr) -> Result<Self> {
        let files = Self::with_ca(dir, "twill-test-ca")?;
        files.leaf(
            "server",
            &format!(
                "subjectAltName=IP:{server_ip}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\n"
            ),
        )?;
        files.leaf(
            "client",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )?;
        Ok(files)
    }

    /// Makes only a CA, `ca.pem` / `ca.key` with subject `CN=<cn>`, in `dir`
    /// (created if needed) and returns the path of its certificate: a CA
    /// that signed nothing, for a client that trusts the wrong one. Its `cn`
    /// must differ from the right CA's (`twill-test-ca`), or TLS takes it
    /// for the issuer and reports a bad signature, not an unknown issuer.
    pub fn generate_ca(dir: &Path, cn: &str) -> Result<PathBuf> {
        Ok(Self::with_ca(dir, cn)?.ca())
    }

    /// The files in `dir` (created if needed), so far only a new CA with
    /// subject `CN=<cn>`.
    fn with_ca(dir: &Path, cn: &str) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|source| HarnessError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let files = TlsFiles {
            dir: dir.to_path_buf(),
        };
        files.openssl(&[
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
            &format!("/CN={cn}"),
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        Ok(files)
    }

    fn openssl(&self, args: &[&str]) -> Result<()> {
        let mut c = Command::new("openssl");
        c.current_dir(&self.dir).args(args);
        cmd::run_ok(&mut c).map(|_| ())
    }

    /// `<name>.pem` / `<name>.key` signed by the CA, with extensions `ext`.
    fn leaf(&self, name: &str, ext: &str) -> Result<()> {
        let ext_file = self.dir.join(format!("{name}.ext"));
        std::fs::write(&ext_file, ext).map_err(|source| HarnessError::Io {
            path: ext_file,
            source,
        })?;
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &format!("/CN=twill-test-{name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.pem"),
            "-extfile",
            &format!("{name}.ext"),
        ])
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// etcd's server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    /// etcd's server key.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// A client certificate etcd accepts.
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.pem")
    }
    /// Its key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// The flags that make etcd serve clients with the server certificate
    /// and accept only those presenting a certificate signed by the CA.
    pub fn etcd_server_flags(&self) -> Vec<String> {
        vec![
            format!("--cert-file={}", self.server_cert().display()),
            format!("--key-file={}", self.server_key().display()),
            format!("--trusted-ca-file={}", self.ca().display()),
            "--client-cert-auth".to_owned(),
        ]
    }
}

/// Client port of [`TlsEtcd::beside`]: the plain etcd has 2379.
pub const BESIDE_CLIENT_PORT: u16 = 2479;
/// Peer port of [`TlsEtcd::beside`]: the plain etcd has 2380.
pub const BESIDE_PEER_PORT: u16 = 2480;

/// An etcd that serves clients only over TLS and only with a client
/// certificate signed by the test CA (`--client-cert-auth`); killed by PID
/// on drop. Ports are parameters so it can run beside the cluster's plain
/// etcd in the same namespace.
#[derive(Debug)]
pub struct TlsEtcd {
    ns: String,
    endpoint: String,
    files: TlsFiles,
    /// Held for its drop, which kills etcd.
    _child: ChildGuard,
    log: PathBuf,
}

impl TlsEtcd {
    /// Starts etcd in `ns` listening for clients on
    /// `https://<listen_ip>:<client_port>` (peers on plain loopback
    /// `peer_port`), data and log under `dir`; waits until it is healthy.
    pub fn start(
        ns: &Netns,
        listen_ip: Ipv4Addr,
        client_port: u16,
        peer_port: u16,
        dir: &Path,
        files: &TlsFiles,
    ) -> Result<Self> {
        let log = dir.join("etcd-tls.log");
        let endpoint = format!("https://{listen_ip}:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut c = etcd_command(&EtcdArgs {
            ns: ns.name(),
            name: "twilltls",
            data_dir: &dir.join("etcd-tls-data"),
            listen_client_urls: &endpoint,
            advertise_client_url: &endpoint,
            peer_url: &peer,
            initial_cluster: &format!("twilltls={peer}"),
            log: &log,
        })?;
        c.args(files.etcd_server_flags());
        let child = ns.spawn(&mut c)?;
        let etcd = TlsEtcd {
            ns: ns.name().to_owned(),
            endpoint,
            files: files.clone(),
            _child: child,
            log,
        };
        wait_for(
            "TLS etcd to become healthy",
            Duration::from_secs(20),
            || etcd.ctl(&["endpoint", "health"]).map(Some),
            || format!("\netcd log tail:\n{}", cmd::tail(&etcd.log, 30)),
        )?;
        Ok(etcd)
    }

    /// A CA and certificates in `<cluster dir>/tls`, and an etcd demanding
    /// them on the underlay address, beside the cluster's plain etcd
    /// ([`BESIDE_CLIENT_PORT`], [`BESIDE_PEER_PORT`]).
    pub fn beside(cluster: &Cluster) -> Result<(TlsFiles, TlsEtcd)> {
        let dir = cluster.dir().join("tls");
        let files = TlsFiles::generate(&dir, UNDERLAY_IP)?;
        let etcd = TlsEtcd::start(
            cluster.underlay(),
            UNDERLAY_IP,
            BESIDE_CLIENT_PORT,
            BESIDE_PEER_PORT,
            &dir,
            &files,
        )?;
        Ok((files, etcd))
    }

    /// The https:// client URL.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Path of etcd's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Runs `etcdctl <args..>` with the client certificate; returns stdout.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        let mut c = ip(["netns", "exec", &self.ns, "etcdctl"]);
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoint))
            .arg(format!("--cacert={}", self.files.ca().display()))
            .arg(format!("--cert={}", self.files.client_cert().display()))
            .arg(format!("--key={}", self.files.client_key().display()))
            .arg("--command-timeout=5s")
            .args(args);
        cmd::run_ok(&mut c)
    }

    /// Puts `value` at `key`.
    pub fn put(&self, key: &str, value: &str) -> Result<()> {
        self.ctl(&["put", key, value]).map(|_| ())
    }

    /// All (key, value) pairs under `prefix`.
    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let out = self.ctl(&["get", "--prefix", prefix, "-w", "json"])?;
        parse::parse_etcdctl_get(&out)
    }
}

/// A `twilld` the test started itself (not through [`crate::Cluster`]), so
/// it can be given any etcd flags; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct AgentProcess {
    child: ChildGuard,
}

impl AgentProcess {
    /// Starts `twilld` in `host`'s namespace with the cluster's usual
    /// per-host settings (underlay `eth0`, the host's subnet file, 2 s
    /// resync, debug log appended to the host's agent log) plus `etcd_args`.
    pub fn start(host: &Host, etcd_args: &[String]) -> Result<Self> {
        let bin = bins::twilld()?;
        let mut args: Vec<String> = vec![
            "--resync-interval".into(),
            "2".into(),
            "--log-level".into(),
            "debug".into(),
        ];
        args.extend(etcd_args.iter().cloned());
        let mut c = host.agent_command(&bin, args)?;
        Ok(AgentProcess {
            child: host.ns().spawn(&mut c)?,
        })
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.running()
    }
}
