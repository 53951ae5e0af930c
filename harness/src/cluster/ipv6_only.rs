//! IPv6-only clusters on an IPv6-only underlay (`EnableIPv4: false`): the
//! underlay namespace and every host have no IPv4 address at all, not even
//! loopback's `127.0.0.1`; `ul0` is `2001:db8::fe`, host `hN` is
//! `2001:db8::<N>` (hex), etcd listens on `http://[2001:db8::fe]:2379`.
//! Leases are keyed `0.0.0.0-0&<v6>-<len>` (flannel's form), so they are
//! read back by their IPv6 subnet here, not by the IPv4 one every lease of
//! such a cluster shares.

use twill_contract::lease_key::V6_ONLY_V4;
use twill_contract::NodeSubnets;

use super::*;
use crate::parse::Route6;

/// Address of the underlay bridge `ul0` on an IPv6-only underlay, where
/// etcd listens.
pub const UNDERLAY_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
/// Prefix length of the IPv6-only underlay.
pub const UNDERLAY6_PREFIX_LEN: u8 = 64;
/// The network config of an IPv6-only VXLAN cluster (VNI 1).
pub const IPV6_ONLY_VXLAN_CONFIG: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}"#;
/// The network config of an IPv6-only host-gw cluster.
pub const IPV6_ONLY_HOST_GW_CONFIG: &str = r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"host-gw"}}"#;
/// The VXLAN device of VNI 1 over an IPv6 underlay.
pub const VXLAN6_DEV: &str = "twill6.1";
/// The route protocol number of the routes the agent owns.
pub const ROUTE_PROTO: &str = "77";

/// Host `n`'s underlay address on an IPv6-only underlay.
pub(super) fn host_addr(n: usize) -> Ipv6Net {
    let last = u16::try_from(n).unwrap_or(u16::MAX);
    Ipv6Net::new(
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last),
        UNDERLAY6_PREFIX_LEN,
    )
    .unwrap_or_else(|_| unreachable!("64 is a valid IPv6 prefix length"))
}

/// Removes every IPv4 address of `ns` (loopback's `127.0.0.1` is the only
/// one a new namespace has).
pub(super) fn strip_ipv4(ns: &Netns) -> Result<()> {
    ns.ip(["-4", "addr", "flush", "dev", "lo"]).map(drop)
}

/// The underlay namespace of an IPv6-only underlay: no IPv4, `ul0` at
/// [`UNDERLAY_IP6`].
pub(super) fn underlay_only_ipv6(underlay: &Netns) -> Result<()> {
    strip_ipv4(underlay)?;
    let addr = format!("{UNDERLAY_IP6}/{UNDERLAY6_PREFIX_LEN}");
    underlay
        .ip(["-6", "addr", "add", &addr, "dev", "ul0", "nodad"])
        .map(drop)
}

/// Every IPv4 address in `ns`, as `<dev> <addr>/<len>` (`ip -4 -o addr`).
pub fn ipv4_addresses(ns: &Netns) -> Result<Vec<String>> {
    let out = ns.ip(["-4", "-o", "addr", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let inet = f.iter().position(|w| *w == "inet")?;
            Some(format!("{} {}", f.get(1)?, f.get(inet + 1)?))
        })
        .collect())
}

impl ClusterBuilder {
    /// An IPv6-only cluster on an IPv6-only underlay (see the module
    /// docs). The network config becomes [`IPV6_ONLY_VXLAN_CONFIG`] unless
    /// [`ClusterBuilder::network_config`] gave another one (e.g.
    /// [`IPV6_ONLY_HOST_GW_CONFIG`]). Single-member etcd only.
    pub fn ipv6_only(mut self, yes: bool) -> Self {
        self.ipv6_only = yes;
        self
    }

    /// The config written to etcd and the check of the etcd layout, for
    /// [`ClusterBuilder::build`].
    pub(super) fn ipv6_only_config(&self) -> Result<String> {
        if !self.ipv6_only {
            return Ok(self.network_config.clone());
        }
        if self.etcd_members != 1 {
            return Err(HarnessError::Parse {
                what: "etcd member count".into(),
                reason: "an IPv6-only underlay has a single-member etcd".into(),
            });
        }
        Ok(if self.network_config == DEFAULT_NETWORK_CONFIG {
            IPV6_ONLY_VXLAN_CONFIG.to_owned()
        } else {
            self.network_config.clone()
        })
    }
}

impl Cluster {
    /// Whether this cluster was built with [`ClusterBuilder::ipv6_only`].
    pub fn is_ipv6_only(&self) -> bool {
        self.ipv6_only
    }

    /// Every namespace that must have no IPv4 address in an IPv6-only
    /// cluster (underlay, hosts, pods) with the IPv4 addresses it has.
    pub fn ipv4_addresses_everywhere(&self) -> Result<Vec<(String, Vec<String>)>> {
        std::iter::once(&self.underlay)
            .chain(self.hosts.iter().map(|h| &h.ns))
            .chain(self.pods.iter().map(|p| &p.ns))
            .map(|ns| Ok((ns.name().to_owned(), ipv4_addresses(ns)?)))
            .collect()
    }

    /// Creates pod `name` on `host` like [`Cluster::add_pod`]; returns its
    /// IPv6 address (an error when the CNI result had none). In an
    /// IPv6-only cluster the pod's namespace has no IPv4 address either.
    pub fn add_pod6(&mut self, host: &str, name: &str) -> Result<Ipv6Addr> {
        let pod = self.create_pod(host, name)?;
        pod.ip6().ok_or_else(|| HarnessError::Parse {
            what: format!("CNI result of pod {name}"),
            reason: "no IPv6 address".into(),
        })
    }

    /// The IPv6 address of pod `name`.
    pub fn pod_ip6(&self, name: &str) -> Result<Ipv6Addr> {
        self.pod(name)?.ip6().ok_or_else(|| HarnessError::Parse {
            what: format!("pod {name}"),
            reason: "has no IPv6 address".into(),
        })
    }

    /// The address to reach pod `p` at: its IPv6 one in an IPv6-only
    /// cluster, else its IPv4 one.
    pub fn pod_addr(&self, p: &Pod) -> IpAddr {
        match (self.ipv6_only, p.ip6()) {
            (true, Some(ip6)) => ip6.into(),
            _ => p.ip().into(),
        }
    }

    /// Pings every pod from every other (at [`Cluster::pod_addr`]), each
    /// pair retried up to `deadline`; the pairs that failed, as
    /// `from -> to (addr)`.
    pub fn failed_pairs(&self, deadline: Duration) -> Vec<String> {
        let mut failed = Vec::new();
        for from in &self.pods {
            for to in self.pods.iter().filter(|p| p.name != from.name) {
                let addr = self.pod_addr(to);
                if !self.ping_within(&from.name, addr, deadline) {
                    failed.push(format!("{} -> {} ({addr})", from.name, to.name));
                }
            }
        }
        failed
    }

    /// The node's IPv6 subnet (host bits cleared) from `host`'s subnet file,
    /// of either form (IPv6-only or dual-stack).
    pub fn subnet6_of(&self, host: &str) -> Result<Ipv6Net> {
        let path = self.host(host)?.subnet_file_path();
        let text = std::fs::read_to_string(&path).map_err(|source| HarnessError::Io {
            path: path.clone(),
            source,
        })?;
        let file = NodeSubnets::parse(&text).map_err(|e| HarnessError::Parse {
            what: format!("subnet file {}", path.display()),
            reason: e.to_string(),
        })?;
        file.ipv6()
            .map(|v6| v6.subnet())
            .ok_or_else(|| HarnessError::Parse {
                what: format!("subnet file {}", path.display()),
                reason: "no TWILL_IPV6_SUBNET".into(),
            })
    }

    /// Waits until `host`'s agent has written a subnet file with an IPv6
    /// subnet; returns that subnet.
    pub fn wait_subnet6(&self, host: &str) -> Result<Ipv6Net> {
        self.host(host)?;
        wait_for(
            &format!("IPv6 subnet file of {host}"),
            DEFAULT_TIMEOUT,
            || self.subnet6_of(host).map(Some),
            || format!("\n{}", self.agent_log_tail(host)),
        )
    }

    /// The etcd key of the IPv6-only lease of `subnet6` (flannel's
    /// `0.0.0.0-0&<v6>-<len>`).
    pub fn lease_key6(&self, subnet6: Ipv6Net) -> String {
        format!(
            "{}/subnets/{}",
            self.etcd_prefix,
            twill_contract::lease_key_name(V6_ONLY_V4, Some(subnet6))
        )
    }

    /// All leases with an IPv6 subnet in the etcd the agents use, by that
    /// subnet.
    pub fn leases6(&self) -> Result<BTreeMap<Ipv6Net, Lease>> {
        let mut out = BTreeMap::new();
        for (k, v) in self.store_get_prefix(&format!("{}/subnets/", self.etcd_prefix))? {
            let name = k.rsplit('/').next().unwrap_or(&k);
            let (_, v6) =
                twill_contract::parse_lease_key(name).ok_or_else(|| HarnessError::Parse {
                    what: format!("lease key {k}"),
                    reason: "not a lease key".into(),
                })?;
            if let Some(v6) = v6 {
                out.insert(v6, parse::parse_lease(&k, &v)?);
            }
        }
        Ok(out)
    }

    /// Waits until etcd holds exactly `n` leases with an IPv6 subnet.
    pub fn wait_leases6(&self, n: usize) -> Result<BTreeMap<Ipv6Net, Lease>> {
        wait_for(
            &format!("{n} IPv6 leases in etcd"),
            DEFAULT_TIMEOUT,
            || {
                let l = self.leases6()?;
                Ok((l.len() == n).then_some(l))
            },
            || format!("\n{}", self.diagnostics()),
        )
    }

    /// The IPv6 routes the agent owns in `host` (`ip -j -6 route show
    /// proto 77`).
    pub fn routes6(&self, host: &str) -> Result<Vec<Route6>> {
        let out = self
            .host(host)?
            .ns
            .ip(["-j", "-6", "route", "show", "proto", ROUTE_PROTO])?;
        parse::parse_routes6(&out)
    }

    /// The IPv6 routes `host` must have for the leases in etcd: one to each
    /// other lease's subnet; VXLAN: `via <subnet>:: dev twill6.<VNI>`,
    /// host-gw: `via <its PublicIPv6> dev eth0`.
    pub fn expected_routes6(&self, host: &str) -> Result<BTreeMap<Ipv6Net, (String, Ipv6Addr)>> {
        let own = self.subnet6_of(host).ok();
        let mut want = BTreeMap::new();
        for (s6, lease) in self.leases6()? {
            if Some(s6) == own {
                continue;
            }
            let via = if lease.backend_type.as_deref() == Some("host-gw") {
                let ip6 = lease.public_ipv6.ok_or_else(|| HarnessError::Parse {
                    what: format!("lease of {s6}"),
                    reason: "host-gw lease without PublicIPv6".into(),
                })?;
                (IFNAME.to_owned(), ip6)
            } else {
                let vni = lease
                    .backend_v6_data
                    .as_ref()
                    .and_then(|b| b.vni)
                    .unwrap_or(1);
                (format!("twill6.{vni}"), s6.network())
            };
            want.insert(s6, via);
        }
        Ok(want)
    }

    /// Waits until `host`'s IPv6 routes are exactly
    /// [`Cluster::expected_routes6`].
    pub fn wait_routes6(&self, host: &str) -> Result<Vec<Route6>> {
        wait_for(
            &format!("IPv6 routes of {host} to match the leases"),
            DEFAULT_TIMEOUT,
            || {
                let want = self.expected_routes6(host)?;
                let routes = self.routes6(host)?;
                let got: BTreeMap<Ipv6Net, (String, Ipv6Addr)> = routes
                    .iter()
                    .filter_map(|r| Some((r.dst, (r.dev.clone(), r.gateway?))))
                    .collect();
                if got == want && routes.len() == want.len() {
                    Ok(Some(routes))
                } else {
                    Err(HarnessError::Parse {
                        what: format!("IPv6 routes of {host}"),
                        reason: format!("have {routes:?}, want {want:?}"),
                    })
                }
            },
            || format!("\n{}", self.agent_log_tail(host)),
        )
    }

    /// [`Cluster::wait_converged`] of an IPv6-only cluster: every host with
    /// a running agent has its IPv6 subnet and a route to every other
    /// lease's subnet, and nothing else.
    pub fn wait_converged6(&self) -> Result<()> {
        let running: Vec<String> = self.agents.keys().cloned().collect();
        for h in &running {
            self.wait_subnet6(h)?;
        }
        self.wait_leases6_at_least(running.len())?;
        for h in &running {
            self.wait_routes6(h)?;
        }
        Ok(())
    }

    fn wait_leases6_at_least(&self, n: usize) -> Result<()> {
        wait_for(
            &format!("at least {n} IPv6 leases in etcd"),
            DEFAULT_TIMEOUT,
            || Ok((self.leases6()?.len() >= n).then_some(())),
            || format!("\n{}", self.diagnostics()),
        )
    }
}
