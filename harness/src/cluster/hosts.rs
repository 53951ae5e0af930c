//! Hosts and their NICs on the underlay, and namespaces standing for the
//! world outside the cluster.

use super::*;

impl Cluster {
    /// Adds host `h<N+1>` at `192.0.2.<N+1>` (on an IPv6-only underlay:
    /// at `2001:db8::<N+1>`, see [`ClusterBuilder::ipv6_only`]): namespace,
    /// veth `eth0` whose peer is on the underlay bridge, forwarding on (as
    /// on any k8s node). Its agent is not started. Returns the host's name.
    pub fn add_host(&mut self) -> Result<String> {
        if self.hosts.len() >= MAX_HOSTS {
            return Err(HarnessError::Exists {
                kind: "host slot",
                name: format!("h{} (max {MAX_HOSTS})", self.hosts.len() + 1),
            });
        }
        if self.ipv6_only {
            let addr = ipv6_only::host_addr(self.hosts.len() + 1);
            return self.add_host_with(addr.into(), "ul0");
        }
        let octet = u8::try_from(self.hosts.len() + 1).unwrap_or(u8::MAX);
        let addr =
            Ipv4Net::new(Ipv4Addr::new(192, 0, 2, octet), 24).map_err(|e| HarnessError::Parse {
                what: "host address".into(),
                reason: e.to_string(),
            })?;
        self.add_host_at(addr, "ul0")
    }

    /// Like [`Cluster::add_host`], but `eth0` gets `addr` and its peer joins
    /// `bridge` in the underlay namespace, which the caller has created (a
    /// second underlay segment, see `routed`). Routes to other segments are
    /// the caller's to add.
    /// An IPv6 `addr` makes a host with no IPv4 address at all, not even on
    /// `lo`.
    pub fn add_host_at(&mut self, addr: impl Into<IpNet>, bridge: &str) -> Result<String> {
        self.add_host_with(addr.into(), bridge)
    }

    fn add_host_with(&mut self, addr: IpNet, bridge: &str) -> Result<String> {
        let i = self.hosts.len() + 1;
        if i > MAX_HOSTS_AT {
            return Err(HarnessError::Exists {
                kind: "host slot",
                name: format!("h{i} (max {MAX_HOSTS_AT})"),
            });
        }
        let name = format!("h{i}");
        let (ip, ip6) = match addr {
            IpNet::V4(a) => (a.addr(), None),
            IpNet::V6(a) => (Ipv4Addr::UNSPECIFIED, Some(a.addr())),
        };
        let dir = self.dir.path().join(&name);
        std::fs::create_dir_all(&dir).map_err(|source| HarnessError::Io {
            path: dir.clone(),
            source,
        })?;
        let ns = Netns::new(format!("{}-{name}", self.prefix))?;
        if ip6.is_some() {
            ipv6_only::strip_ipv4(&ns)?;
        }
        self.plug_nic(&ns, IFNAME, &name, addr, bridge)?;
        ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        ns.exec_ok(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        self.hosts.push(Host {
            name,
            ns,
            ip,
            dir,
            ip6,
        });
        Ok(self.hosts[i - 1].name.clone())
    }

    /// Gives `ns` a NIC `ifname` with `addr`, up: a veth whose peer `peer`
    /// joins `bridge` in the underlay namespace. Created inside `ns` with
    /// the peer placed straight in the underlay one: nothing ever touches
    /// the root namespace. Also how a test puts back a NIC it deleted.
    /// An IPv6 `addr` skips duplicate address detection.
    pub fn plug_nic(
        &self,
        ns: &Netns,
        ifname: &str,
        peer: &str,
        addr: impl Into<IpNet>,
        bridge: &str,
    ) -> Result<()> {
        let addr = addr.into();
        ns.ip([
            "link",
            "add",
            ifname,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            self.underlay.name(),
        ])?;
        add_addr(ns, ifname, &addr.to_string())?;
        ns.ip(["link", "set", ifname, "up"])?;
        self.underlay
            .ip(["link", "set", peer, "master", bridge, "up"])?;
        Ok(())
    }

    /// A namespace standing for the world outside the cluster, named
    /// `<prefix>-<name>` and wired to `host` by one veth: `inet0` on the host
    /// with `host_addr`, `eth0` outside with `outside_addr` (CIDR strings of
    /// either family; IPv6 ones skip duplicate address detection). It has no
    /// route to the pod network. Removed when the returned guard drops.
    pub fn attach_outside(
        &self,
        host: &str,
        name: &str,
        host_addr: &str,
        outside_addr: &str,
    ) -> Result<Netns> {
        let outside = Netns::new(format!("{}-{name}", self.prefix))?;
        let h = self.host(host)?.ns();
        h.ip([
            "link",
            "add",
            "inet0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            outside.name(),
        ])?;
        for (ns, dev, addr) in [(h, "inet0", host_addr), (&outside, "eth0", outside_addr)] {
            add_addr(ns, dev, addr)?;
            ns.ip(["link", "set", dev, "up"])?;
        }
        Ok(outside)
    }

    /// An IPv6 underlay beside the IPv4 one: each host gets
    /// `2001:db8:1::<n>/64` on `eth0` (n = 1, 2, ... in `hosts` order;
    /// documentation prefix, no duplicate address detection).
    pub fn add_ipv6_underlay(&self, hosts: &[&str]) -> Result<()> {
        for (i, h) in hosts.iter().enumerate() {
            let addr = format!("2001:db8:1::{}/64", i + 1);
            self.host(h)?
                .ns()
                .ip(["-6", "addr", "add", &addr, "dev", IFNAME, "nodad"])?;
        }
        Ok(())
    }
}

/// `ip addr add <addr> dev <dev>` in `ns`, without duplicate address
/// detection for an IPv6 `addr` (a CIDR string of either family).
fn add_addr(ns: &Netns, dev: &str, addr: &str) -> Result<()> {
    let mut args = vec!["addr", "add", addr, "dev", dev];
    if addr.contains(':') {
        args.push("nodad");
    }
    ns.ip(args).map(drop)
}
