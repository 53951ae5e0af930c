//! Pods made through the real CNI plugin, and pings between them.

use super::*;

impl Cluster {
    fn cni_config(&self, host: &Host) -> String {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "twill",
            "type": "twill",
            "subnetFile": host.subnet_file_path(),
            "dataDir": host.ipam_dir(),
        })
        .to_string()
    }

    /// Invokes the CNI plugin inside `host`'s namespace with `command` for a
    /// pod namespace, the given container id and the standard config (or
    /// `config` when given). Returns the raw output: exit status and
    /// stdout are the CNI result or error.
    pub fn cni_raw(
        &self,
        host: &str,
        command: &str,
        container_id: &str,
        netns_path: &str,
        config: Option<&str>,
    ) -> Result<Output> {
        let bin = self.binary("twill")?;
        let bin_dir = self.bin_dir()?;
        let h = self.host(host)?;
        let config = config.map_or_else(|| self.cni_config(h), str::to_owned);
        let mut c =
            h.ns.command(&bin.to_string_lossy(), std::iter::empty::<&str>());
        c.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", container_id)
            .env("CNI_NETNS", netns_path)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", bin_dir);
        cmd::run_with_stdin(&mut c, Some(config.as_bytes()))
    }

    /// Creates pod `name` on `host`: a namespace plus a CNI ADD. Returns its
    /// IP (`0.0.0.0` for an IPv6-only pod: see [`Cluster::add_pod6`]). On
    /// failure the pod namespace is removed again.
    pub fn add_pod(&mut self, host: &str, name: &str) -> Result<Ipv4Addr> {
        self.create_pod(host, name).map(Pod::ip)
    }

    /// [`Cluster::add_pod`], returning the pod.
    pub(super) fn create_pod(&mut self, host: &str, name: &str) -> Result<&Pod> {
        if self.pod(name).is_ok() || self.host(name).is_ok() {
            return Err(HarnessError::Exists {
                kind: "pod or host",
                name: name.to_owned(),
            });
        }
        self.host(host)?;
        let ns = Netns::new(format!("{}-{name}", self.prefix))?;
        if self.ipv6_only {
            ipv6_only::strip_ipv4(&ns)?;
        }
        let container_id = format!("{}-{name}", self.prefix);
        let out = self.cni_raw(host, "ADD", &container_id, &ns.path(), None)?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(HarnessError::Cni {
                command: "ADD".into(),
                pod: name.to_owned(),
                status: out.status.to_string(),
                output: format!(
                    "stdout: {} stderr: {}",
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let (addr, addr6) = parse::parse_cni_result_ips(&stdout)?;
        self.pods.push(Pod {
            name: name.to_owned(),
            host: host.to_owned(),
            ns,
            // An IPv6-only pod's IPv4 side is the contract's empty network,
            // as an IPv6-only lease's is.
            addr: addr.unwrap_or(twill_contract::lease_key::V6_ONLY_V4),
            container_id,
            addr6,
        });
        let i = self.pods.len() - 1;
        Ok(&self.pods[i])
    }

    /// CNI DEL of pod `name`, then removes its namespace.
    pub fn del_pod(&mut self, name: &str) -> Result<()> {
        let idx = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .ok_or_else(|| HarnessError::Unknown {
                kind: "pod",
                name: name.to_owned(),
            })?;
        let pod = &self.pods[idx];
        let out = self.cni_raw(&pod.host, "DEL", &pod.container_id, &pod.ns.path(), None)?;
        let pod = self.pods.remove(idx);
        if out.status.success() {
            Ok(())
        } else {
            Err(HarnessError::Cni {
                command: "DEL".into(),
                pod: pod.name.clone(),
                status: out.status.to_string(),
                output: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            })
        }
    }

    /// Whether a host or pod named `from` can ping `ip` (either family),
    /// retrying for up to 5 s (ARP/FDB may still be settling).
    pub fn ping(&self, from: &str, ip: impl Into<IpAddr>) -> bool {
        self.ping_within(from, ip, Duration::from_secs(5))
    }

    /// [`Cluster::ping`] with an explicit deadline.
    pub fn ping_within(&self, from: &str, ip: impl Into<IpAddr>, deadline: Duration) -> bool {
        self.ping_poll(from, ip, deadline, Duration::from_millis(200))
            .is_some()
    }

    /// Pings `ip` once (`ping -c1 -W1`) from the host or pod `from`, every
    /// `interval` until it answers: the time of the answer, or `None` once
    /// `deadline` has passed (or `from` is unknown).
    pub fn ping_poll(
        &self,
        from: &str,
        ip: impl Into<IpAddr>,
        deadline: Duration,
        interval: Duration,
    ) -> Option<Instant> {
        let ip = ip.into();
        let ns = self.ns_of(from).ok()?;
        let start = Instant::now();
        loop {
            if ns.ping_once(&ip.to_string(), 1) {
                return Some(Instant::now());
            }
            if start.elapsed() >= deadline {
                return None;
            }
            std::thread::sleep(interval);
        }
    }
}
