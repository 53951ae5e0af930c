//! An IPv6-only network config (`EnableIPv4: false`) reaches the agent:
//! refused at start as the operator's configuration, naming the field,
//! before anything is leased or built.

use super::*;

#[tokio::test(start_paused = true)]
async fn an_ipv6_only_config_is_refused_before_anything_is_made() {
    let store = MemoryStore::new();
    store.set_raw_config(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48"}"#,
    );
    let dp = FakeDatapath::default();
    let (r, dir) = start_on(store.clone(), dp.clone(), |_| {}).await;
    let e = r.err().expect("refused");
    assert!(matches!(e, AgentError::Ipv6OnlyUnsupported), "{e}");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("EnableIPv4"), "{e}");
    assert!(store.leases().is_empty());
    let k = dp.lock();
    assert_eq!(k.ensure_calls, 0);
    assert!(k.forwarding.is_empty());
    assert!(!dir.path().join("subnet.env").exists());
}

#[tokio::test(start_paused = true)]
async fn public_ipv6_wins_over_the_interfaces_address_in_a_dual_stack_cluster() {
    let dual = NetworkConfig::parse(
        br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let flag: std::net::Ipv6Addr = "2001:db8:5::5".parse().unwrap();
    let dp = FakeDatapath::default();
    dp.lock().ipv6 = Some("2001:db8::21".parse().unwrap());
    let store = MemoryStore::with_config(dual);
    let (r, _dir) = start_on(store.clone(), dp.clone(), |o| o.public_ipv6 = Some(flag)).await;
    assert!(r.is_ok(), "{:?}", r.err());
    let leases = store.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].attrs.public_ipv6, Some(flag));
    let k = dp.lock();
    let v6 = k.devices.as_ref().and_then(|d| d.vxlan6.as_ref());
    assert_eq!(v6.map(|v| v.local), Some(flag.into()));
}
