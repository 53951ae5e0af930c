//! ip-masq: pod traffic leaving the cluster network is masqueraded to the
//! node's address; pod-to-pod traffic and traffic from outside to pods are
//! not. The rules live in an nftables table of their own (`ip twill`),
//! replaced as a whole in one nft transaction (add, delete, recreate), so a
//! restart never leaves a moment without rules. Driven through the
//! `nftables` crate (`nft -j`).

use ipnet::Ipv4Net;
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

fn prefix_match(field: &str, op: &str, net: Ipv4Net) -> Value {
    json!({"match": {
        "op": op,
        "left": {"payload": {"protocol": "ip", "field": field}},
        "right": {"prefix": {"addr": net.network().to_string(), "len": net.prefix_len()}},
    }})
}

/// The rules for `network`, as nftables JSON commands without the table
/// replace around them.
fn rules(network: Ipv4Net) -> Vec<Value> {
    let multicast: Ipv4Net =
        Ipv4Net::new(std::net::Ipv4Addr::new(224, 0, 0, 0), 4).unwrap_or(network);
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

/// One nft transaction that replaces the whole table: `add` makes the
/// `delete` safe when the table is missing, and nft applies all or nothing.
pub fn ruleset(network: Ipv4Net) -> Value {
    let table = json!({"family": "ip", "name": TABLE});
    let mut cmds = vec![
        json!({"add": {"table": table}}),
        json!({"delete": {"table": table}}),
        json!({"add": {"table": table}}),
        json!({"add": {"chain": {
            "family": "ip", "table": TABLE, "name": CHAIN,
            "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"
        }}}),
    ];
    for expr in rules(network) {
        cmds.push(json!({"add": {"rule": {
            "family": "ip", "table": TABLE, "chain": CHAIN, "expr": expr
        }}}));
    }
    json!({"nftables": cmds})
}

/// Removing the table: the add makes it a no-op when it does not exist.
pub fn removal() -> Value {
    let table = json!({"family": "ip", "name": TABLE});
    json!({"nftables": [
        {"add": {"table": table}},
        {"delete": {"table": table}},
    ]})
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
pub async fn apply(network: Ipv4Net) -> Result<(), MasqError> {
    nft(ruleset(network).to_string()).await
}

/// True when the table is there with all our rules (checked each resync).
pub async fn in_place(network: Ipv4Net) -> bool {
    let want = rules(network).len();
    let listing = tokio::task::spawn_blocking(|| {
        nftables::helper::get_current_ruleset_raw(None::<&str>, ["list", "table", "ip", TABLE])
    })
    .await;
    matches!(listing, Ok(Ok(text)) if rule_count(&text) == Some(want))
}

/// Removes twill's table (cleanup). A node without `nft` has no table.
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
    fn ruleset_replaces_the_table_in_one_transaction() {
        let v = ruleset("10.244.0.0/16".parse().unwrap());
        let cmds = v["nftables"].as_array().unwrap();
        assert!(cmds[0]["add"]["table"].is_object());
        assert!(cmds[1]["delete"]["table"].is_object());
        assert!(cmds[2]["add"]["table"].is_object());
        assert_eq!(cmds[3]["add"]["chain"]["hook"], "postrouting");
        assert_eq!(cmds.len(), 6);
        let pod_to_pod = &cmds[4]["add"]["rule"]["expr"];
        assert_eq!(
            pod_to_pod[0]["match"]["right"]["prefix"]["addr"],
            "10.244.0.0"
        );
        assert_eq!(pod_to_pod[0]["match"]["right"]["prefix"]["len"], 16);
        assert_eq!(pod_to_pod[1]["match"]["left"]["payload"]["field"], "daddr");
        assert!(pod_to_pod[2].get("return").is_some());
        let out = &cmds[5]["add"]["rule"]["expr"];
        assert_eq!(out[1]["match"]["op"], "!=");
        assert_eq!(out[1]["match"]["right"]["prefix"]["addr"], "224.0.0.0");
        assert!(out[3].get("masquerade").is_some());
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
