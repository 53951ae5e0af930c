//! Micro-benchmarks of the pure hot path of every ADD: parsing the network
//! config and the environment, and building the result JSON.

#![allow(clippy::unwrap_used)] // constant inputs

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use twill_cni::config::{parse_env, parse_netconf, Dns};
use twill_cni::result::{build, Attached, Family};

const MINIMAL: &[u8] = br#"{"cniVersion":"1.1.0","name":"twill","type":"twill"}"#;

/// A config as a runtime sends it: all keys, runtimeConfig and a prevResult.
const FULL: &[u8] = br#"{
  "cniVersion": "1.1.0", "name": "twill", "type": "twill",
  "subnetFile": "/run/twill/subnet.env", "dataDir": "/var/lib/twill/ipam",
  "bridge": "twill0", "mtu": 1450, "hairpinMode": true,
  "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local", "svc.cluster.local"]},
  "runtimeConfig": {"ips": ["10.244.3.17/24"]},
  "prevResult": {"cniVersion": "1.1.0",
    "interfaces": [{"name": "lo", "sandbox": "/run/netns/p"}],
    "ips": [], "routes": []}
}"#;

fn attached() -> Attached {
    Attached {
        host_ifname: "veth0123456789a".into(),
        host_mac: "0a:58:0a:f4:03:11".into(),
        pod_ifname: "eth0".into(),
        pod_mac: "0a:58:0a:f4:03:12".into(),
        sandbox: "/run/netns/cni-1234".into(),
        mtu: 1450,
        ipv4: Some(Family {
            address: "10.244.3.17/24".parse().unwrap(),
            gateway: "10.244.3.1".parse().unwrap(),
        }),
        ipv6: None,
    }
}

fn benches(c: &mut Criterion) {
    c.bench_function("parse_netconf/minimal", |b| {
        b.iter(|| parse_netconf(black_box(MINIMAL)))
    });
    c.bench_function("parse_netconf/full", |b| {
        b.iter(|| parse_netconf(black_box(FULL)))
    });

    let env: HashMap<&str, String> = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "4f6a0c1e9b7d"),
        ("CNI_NETNS", "/run/netns/cni-1234"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0",
        ),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.to_string()))
    .collect();
    c.bench_function("parse_env/add", |b| {
        b.iter(|| parse_env(|k| black_box(&env).get(k).cloned()))
    });

    let a = attached();
    let dns = Dns {
        nameservers: vec!["10.96.0.10".into()],
        ..Dns::default()
    };
    let prev: serde_json::Value = serde_json::json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "lo", "sandbox": "/run/netns/p"}],
        "ips": [], "routes": []
    });
    for version in ["1.1.0", "0.3.1"] {
        c.bench_function(&format!("build_result/{version}"), |b| {
            b.iter(|| build(black_box(version), black_box(&a), &dns, None))
        });
    }
    c.bench_function("build_result/chained_to_string", |b| {
        b.iter(|| build("1.1.0", black_box(&a), &dns, Some(&prev)).to_string())
    });
}

criterion_group!(parse_result, benches);
criterion_main!(parse_result);
