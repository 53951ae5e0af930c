//! ip-masq: pod traffic leaving the cluster network is masqueraded to the
//! node's address; pod-to-pod traffic and traffic from outside to pods are
//! not. The rules live in nftables tables of their own (`ip twill`, and
//! `ip6 twill` in a dual-stack cluster), replaced as a whole in one nft
//! transaction (add, delete, recreate), so a restart never leaves a moment
//! without rules. Driven through the
//! `nftables` crate (`nft -j`).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::{json, Value};

/// The nftables table twill owns.
pub const TABLE: &str = "twill";
const CHAIN: &str = "postrouting";

#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("nft: {0}")]
    Nft(#[from] nftables::helper::NftablesError),
    #[error("nft ran in a task that failed: {0}")]
    Join(String),
}

fn prefix_match(field: &str, op: &str, net: IpNet) -> Value {
    let protocol = match net {
        IpNet::V4(_) => "ip",
        IpNet::V6(_) => "ip6",
    };
    json!({"match": {
        "op": op,
        "left": {"payload": {"protocol": protocol, "field": field}},
        "right": {"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}},
    }})
}

/// The networks twill masquerades for: the cluster's IPv4 network and, in a
/// dual-stack cluster, its IPv6 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Networks {
    pub v4: Ipv4Net,
    pub v6: Option<Ipv6Net>,
}

impl Networks {
    /// (nft family, cluster network) for every table twill keeps.
    fn tables(&self) -> Vec<(&'static str, IpNet)> {
        let mut t = vec![("ip", IpNet::V4(self.v4))];
        if let Some(v6) = self.v6 {
            t.push(("ip6", IpNet::V6(v6)));
        }
        t
    }
}

/// The rules for `network`, as nftables JSON statements lists.
fn rules(network: IpNet) -> Vec<Value> {
    // Multicast keeps its source: 224.0.0.0/4, ff00::/8.
    let multicast: IpNet = match network {
        IpNet::V4(_) => Ipv4Net::new(std::net::Ipv4Addr::new(224, 0, 0, 0), 4)
            .map(IpNet::V4)
            .unwrap_or(network),
        IpNet::V6(_) => Ipv6Net::new(std::net::Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8)
            .map(IpNet::V6)
            .unwrap_or(network),
    };
    vec![
        // Pod to pod, anywhere in the cluster: keep the pod's address.
        json!([
            prefix_match("saddr", "==", network),
            prefix_match("daddr", "==", network),
            {"return": null}
        ]),
        // Pod to the outside world (not multicast): the node's address.
        json!([
            prefix_match("saddr", "==", network),
            prefix_match("daddr", "!=", multicast),
            {"counter": null},
            {"masquerade": {"flags": ["fully-random"]}}
        ]),
    ]
}

/// `add` then `delete` of both families' tables: clears them whether or not
/// they exist (a table of a family no longer in use goes too).
fn clear_tables() -> Vec<Value> {
    let mut cmds = Vec::new();
    for family in ["ip", "ip6"] {
        let table = json!({"family": family, "name": TABLE});
        cmds.push(json!({"add": {"table": table}}));
        cmds.push(json!({"delete": {"table": table}}));
    }
    cmds
}

/// One nft transaction that replaces the tables; nft applies all or nothing.
pub fn ruleset(networks: &Networks) -> Value {
    let mut cmds = clear_tables();
    for (family, network) in networks.tables() {
        cmds.push(json!({"add": {"table": {"family": family, "name": TABLE}}}));
        cmds.push(json!({"add": {"chain": {
            "family": family, "table": TABLE, "name": CHAIN,
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"
        }}}));
        for expr in rules(network) {
            cmds.push(json!({"add": {"rule": {
                "family": family, "table": TABLE, "chain": CHAIN, "expr": expr
            }}}));
        }
    }
    json!({ "nftables": cmds })
}

/// Removing twill's tables (cleanup).
pub fn removal() -> Value {
    json!({ "nftables": clear_tables() })
}

/// How many rules of ours a `nft -j list table` output holds, if it is our
/// table with our chain.
pub fn rule_count(listing: &str) -> Option<usize> {
    let v: Value = serde_json::from_str(listing).ok()?;
    let items = v.get("nftables")?.as_array()?;
    let has_chain = items.iter().any(|i| {
        i.get("chain").is_some_and(|c| {
            c.get("name") == Some(&json!(CHAIN)) && c.get("hook") == Some(&json!("postrouting"))
        })
    });
    if !has_chain {
        return None;
    }
    Some(items.iter().filter(|i| i.get("rule").is_some()).count())
}

async fn nft(payload: String) -> Result<(), MasqError> {
    tokio::task::spawn_blocking(move || {
        nftables::helper::apply_ruleset_raw(&payload, None::<&str>, std::iter::empty::<&str>())
            .map(|_| ())
    })
    .await
    .map_err(|e| MasqError::Join(e.to_string()))?
    .map_err(MasqError::from)
}

/// Installs (or atomically replaces) the masquerade rules.
pub async fn apply(networks: &Networks) -> Result<(), MasqError> {
    nft(ruleset(networks).to_string()).await
}

/// True when every table is there with all our rules (checked each resync).
pub async fn in_place(networks: &Networks) -> bool {
    for (family, network) in networks.tables() {
        let want = rules(network).len();
        let listing = tokio::task::spawn_blocking(move || {
            nftables::helper::get_current_ruleset_raw(
                None::<&str>,
                ["list", "table", family, TABLE],
            )
        })
        .await;
        if !matches!(listing, Ok(Ok(text)) if rule_count(&text) == Some(want)) {
            return false;
        }
    }
    true
}

/// Removes twill's tables (cleanup). A node without `nft` has no table.
pub async fn remove() -> Result<(), MasqError> {
    match nft(removal().to_string()).await {
        Err(MasqError::Nft(nftables::helper::NftablesError::NftExecution { inner, .. }))
            if inner.kind() == std::io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_replaces_the_tables_in_one_transaction() {
        let v = ruleset(&Networks {
            v4: "10.244.0.0/16".parse().unwrap(),
            v6: None,
        });
        let cmds = v["nftables"].as_array().unwrap();
        // Both families' tables are cleared first (an ip6 table of an
        // earlier dual-stack run goes too), then the ip table is rebuilt.
        assert_eq!(cmds[0]["add"]["table"]["family"], "ip");
        assert_eq!(cmds[1]["delete"]["table"]["family"], "ip");
        assert_eq!(cmds[3]["delete"]["table"]["family"], "ip6");
        assert_eq!(cmds[4]["add"]["table"]["family"], "ip");
        assert_eq!(cmds[5]["add"]["chain"]["hook"], "postrouting");
        assert_eq!(cmds.len(), 8);
        let pod_to_pod = &cmds[6]["add"]["rule"]["expr"];
        assert_eq!(
            pod_to_pod[0]["match"]["right"]["prefix"]["addr"],
            "10.244.0.0"
        );
        assert_eq!(pod_to_pod[0]["match"]["right"]["prefix"]["len"], 16);
        assert_eq!(pod_to_pod[1]["match"]["left"]["payload"]["field"], "daddr");
        assert!(pod_to_pod[2].get("return").is_some());
        let out = &cmds[7]["add"]["rule"]["expr"];
        assert_eq!(out[1]["match"]["op"], "!=");
        assert_eq!(out[1]["match"]["right"]["prefix"]["addr"], "224.0.0.0");
        assert!(out[3].get("masquerade").is_some());
    }

    #[test]
    fn dual_stack_adds_an_ip6_table_with_the_same_rules() {
        let v = ruleset(&Networks {
            v4: "10.244.0.0/16".parse().unwrap(),
            v6: Some("fd00:10:244::/48".parse().unwrap()),
        });
        let cmds = v["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 12);
        let v6_rules: Vec<&Value> = cmds
            .iter()
            .filter(|c| c["add"]["rule"]["family"] == "ip6")
            .collect();
        assert_eq!(v6_rules.len(), 2);
        let out = &v6_rules[1]["add"]["rule"]["expr"];
        assert_eq!(out[0]["match"]["left"]["payload"]["protocol"], "ip6");
        assert_eq!(out[0]["match"]["right"]["prefix"]["addr"], "fd00:10:244::");
        assert_eq!(out[1]["match"]["right"]["prefix"]["addr"], "ff00::");
        assert!(out[3].get("masquerade").is_some());
    }

    #[test]
    fn removal_clears_both_families() {
        let v = removal();
        let cmds = v["nftables"].as_array().unwrap();
        assert_eq!(cmds.len(), 4);
        assert_eq!(cmds[3]["delete"]["table"]["family"], "ip6");
    }

    #[test]
    fn rule_count_reads_an_nft_listing() {
        let listing = r#"{"nftables":[{"metainfo":{}},{"table":{"family":"ip","name":"twill","handle":1}},
            {"chain":{"family":"ip","table":"twill","name":"postrouting","handle":1,"type":"nat","hook":"postrouting","prio":100,"policy":"accept"}},
            {"rule":{"family":"ip","table":"twill","chain":"postrouting","handle":2,"expr":[]}},
            {"rule":{"family":"ip","table":"twill","chain":"postrouting","handle":3,"expr":[]}}]}"#;
        assert_eq!(rule_count(listing), Some(2));
        assert_eq!(rule_count(r#"{"nftables":[{"metainfo":{}}]}"#), None);
        assert_eq!(rule_count("not json"), None);
    }
}
