//! What a running cluster holds, read back for assertions: subnet files,
//! leases in etcd, routes, and waits until they converge.

use super::*;

impl Cluster {
    /// Reads `host`'s subnet file now.
    pub fn subnet_file(&self, host: &str) -> Result<SubnetFile> {
        let path = self.host(host)?.subnet_file_path();
        let text = std::fs::read_to_string(&path).map_err(|source| HarnessError::Io {
            path: path.clone(),
            source,
        })?;
        parse::parse_subnet_file(&text)
    }

    /// Waits until `host`'s agent has written a complete subnet file.
    pub fn wait_subnet_file(&self, host: &str) -> Result<SubnetFile> {
        self.host(host)?;
        wait_for(
            &format!("subnet file of {host}"),
            DEFAULT_TIMEOUT,
            || self.subnet_file(host).map(Some),
            || format!("\n{}", self.agent_log_tail(host)),
        )
    }

    /// The etcd key prefix this cluster's config and leases live under.
    pub fn etcd_prefix(&self) -> &str {
        &self.etcd_prefix
    }

    /// The etcd key of the lease for `subnet` under this cluster's prefix.
    pub fn lease_key_in(&self, subnet: Ipv4Net) -> String {
        format!(
            "{}/subnets/{}",
            self.etcd_prefix,
            twill_contract::subnet_key(subnet)
        )
    }

    /// The etcd key of the lease for `subnet` under the default prefix.
    pub fn lease_key(subnet: Ipv4Net) -> String {
        format!(
            "{ETCD_PREFIX}/subnets/{}",
            twill_contract::subnet_key(subnet)
        )
    }

    /// All (key, value) pairs under `prefix` in the etcd the agents use.
    pub fn store_get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        match &self.etcd_cluster {
            Some(ec) => ec.get_prefix(prefix),
            None => self.etcd.get_prefix(prefix),
        }
    }

    /// The keys of all leases in the etcd the agents use.
    pub fn lease_keys(&self) -> Result<Vec<String>> {
        Ok(self
            .store_get_prefix(&format!("{}/subnets/", self.etcd_prefix))?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    /// The lease of `subnet`, `None` when there is none; unlike
    /// [`Cluster::leases`] this works with garbage under other keys.
    pub fn lease(&self, subnet: Ipv4Net) -> Result<Option<Lease>> {
        let key = self.lease_key_in(subnet);
        self.store_get_prefix(&key)?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(k, v)| parse::parse_lease(&k, &v))
            .transpose()
    }

    /// All leases in the etcd the agents use, by subnet.
    pub fn leases(&self) -> Result<BTreeMap<Ipv4Net, Lease>> {
        self.store_get_prefix(&format!("{}/subnets/", self.etcd_prefix))?
            .into_iter()
            .map(|(k, v)| Ok((parse::parse_lease_key(&k)?, parse::parse_lease(&k, &v)?)))
            .collect()
    }

    /// Waits until etcd holds exactly `n` leases.
    pub fn wait_leases(&self, n: usize) -> Result<BTreeMap<Ipv4Net, Lease>> {
        wait_for(
            &format!("{n} leases in etcd"),
            DEFAULT_TIMEOUT,
            || {
                let l = self.leases()?;
                Ok((l.len() == n).then_some(l))
            },
            || format!("\n{}", self.diagnostics()),
        )
    }

    /// Routes via the VXLAN device in `host` (`ip -j route show dev twill.1`).
    pub fn routes(&self, host: &str) -> Result<Vec<Route>> {
        let h = self.host(host)?;
        let out = h.ns.ip(["-j", "route", "show", "dev", VXLAN_DEV])?;
        parse::parse_routes(&out)
    }

    /// Waits until `host`'s VXLAN routes go to exactly `expected`, each via
    /// `<subnet>.0 onlink` as the agent's contract says.
    pub fn wait_routes(&self, host: &str, expected: &BTreeSet<Ipv4Net>) -> Result<Vec<Route>> {
        wait_for(
            &format!("routes of {host} via {VXLAN_DEV} to be exactly {expected:?}"),
            DEFAULT_TIMEOUT,
            || {
                let routes = self.routes(host)?;
                let got: BTreeSet<Ipv4Net> = routes.iter().map(|r| r.dst).collect();
                let shaped = routes
                    .iter()
                    .all(|r| r.onlink && r.gateway == Some(r.dst.network()));
                if got == *expected && shaped {
                    Ok(Some(routes))
                } else {
                    Err(HarnessError::Parse {
                        what: format!("routes of {host}"),
                        reason: format!("have {routes:?}"),
                    })
                }
            },
            || format!("\n{}", self.agent_log_tail(host)),
        )
    }

    /// Waits until every host with a running agent has a route to every
    /// other such host's subnet (and nothing else); in an IPv6-only
    /// cluster, [`Cluster::wait_converged6`].
    pub fn wait_converged(&self) -> Result<()> {
        if self.ipv6_only {
            return self.wait_converged6();
        }
        let subnets: BTreeMap<String, Ipv4Net> = self
            .agents
            .keys()
            .map(|h| Ok((h.clone(), self.wait_subnet_file(h)?.node_subnet())))
            .collect::<Result<_>>()?;
        for host in subnets.keys() {
            let others = subnets
                .iter()
                .filter(|(h, _)| *h != host)
                .map(|(_, s)| *s)
                .collect();
            self.wait_routes(host, &others)?;
        }
        Ok(())
    }
}
