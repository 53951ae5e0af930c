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
