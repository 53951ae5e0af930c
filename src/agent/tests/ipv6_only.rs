//! An IPv6-only cluster's node (`EnableIPv4: false`) through the agent's
//! lifecycle: a lease of flannel's IPv6-only form, the subnet file with
//! IPv6 keys only, the tunnel over IPv6 alone, peers that all share the
//! IPv4 part `0.0.0.0/0` told apart by their IPv6 subnet, loss and
//! rewrite of our own lease; and the refusals that remain.

use super::*;
use ipnet::Ipv6Net;
use subnet_allocator::LeaseRequest;
use twill_contract::lease_key::V6_ONLY_V4;

const OUR_IP6: &str = "2001:db8::10";

pub(super) fn config6(backend: &str) -> NetworkConfig {
    NetworkConfig::parse(
        format!(r#"{{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{{"Type":"{backend}"}}}}"#).as_bytes(),
    )
    .unwrap()
}

pub(super) fn v6dp() -> FakeDatapath {
    let dp = FakeDatapath::default();
    dp.lock().ipv6 = Some(OUR_IP6.parse().unwrap());
    dp
}

/// Another IPv6-only node's lease: `s6` at `2001:db8::<host>`.
pub(super) fn peer6(store: &MemoryStore, s6: &str, host: u16) -> Lease {
    let ip6 = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, host);
    let attrs = LeaseAttrs {
        public_ip: Ipv4Addr::UNSPECIFIED,
        public_ipv6: Some(ip6),
        backend_type: "vxlan".into(),
        backend_data: None,
        backend_v6_data: Some(VxlanData {
            vni: 1,
            vtep_mac: Mac::for_vtep6(ip6, 1).to_string(),
        }),
        node_name: Some(format!("node-{host}")),
        public_key: None,
    };
    let s6: Ipv6Net = s6.parse().unwrap();
    store.put_lease_raw(Lease {
        subnet: V6_ONLY_V4,
        ipv6_subnet: Some(s6),
        attrs,
        ttl_remaining: None,
        lease_id: None,
    })
}

/// Runs `agent` until the returned sender fires.
pub(super) fn run(
    agent: Agent<MemoryStore, FakeDatapath>,
) -> (oneshot::Sender<()>, JoinHandle<Result<(), AgentError>>) {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(Box::pin(async move {
        let _ = rx.await;
    })));
    (tx, task)
}

pub(super) async fn settle(dp: &FakeDatapath, what: &str, cond: impl Fn(&FakeKernel) -> bool) {
    for _ in 0..2000 {
        if cond(&dp.lock()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never true: {what}; routes {:?}", dp.routes());
}

fn route6(k: &FakeKernel, s6: &str) -> bool {
    let s6: IpNet = s6.parse().unwrap();
    k.state.routes.contains_key(&s6)
}

#[tokio::test(start_paused = true)]
async fn an_ipv6_only_node_leases_builds_and_follows_its_peers() {
    let store = MemoryStore::with_config(config6("vxlan"));
    peer6(&store, "fd00:10:244:21::/64", 0x21);
    peer6(&store, "fd00:10:244:22::/64", 0x22);
    let dp = v6dp();
    let (r, dir) = start_on(store.clone(), dp.clone(), |_| {}).await;
    let agent = r.expect("an IPv6-only node starts");
    let own = agent.lease().clone();
    // flannel's form: no IPv4 subnet, PublicIP 0.0.0.0, BackendV6Data only.
    assert!(own.is_ipv6_only(), "{own:?}");
    assert_eq!(own.attrs.public_ip, Ipv4Addr::UNSPECIFIED);
    assert_eq!(own.attrs.public_ipv6, Some(OUR_IP6.parse().unwrap()));
    assert!(own.attrs.backend_data.is_none());
    assert!(own.attrs.backend_v6_data.is_some());
    let s6 = own.ipv6_subnet.unwrap();
    let file = std::fs::read_to_string(dir.path().join("subnet.env")).unwrap();
    assert!(
        file.contains(&format!("TWILL_IPV6_SUBNET={}/64", gateway6(s6))),
        "{file}"
    );
    assert!(
        !file.contains("TWILL_SUBNET=") && !file.contains("TWILL_NETWORK="),
        "{file}"
    );
    {
        let k = dp.lock();
        let d = k.devices.as_ref().unwrap();
        assert!(d.vxlan.is_none(), "no IPv4 tunnel: {d:?}");
        let v6 = d.vxlan6.as_ref().expect("the tunnel over IPv6");
        assert_eq!(v6.mtu, 1500 - 70);
        assert_eq!(d.gateway, None, "no IPv4 gateway on the bridge");
        // Both peers, although their leases share 0.0.0.0/0.
        assert!(
            route6(&k, "fd00:10:244:21::/64") && route6(&k, "fd00:10:244:22::/64"),
            "{:?}",
            k.state.routes
        );
        assert!(
            k.state.routes.keys().all(|r| matches!(r, IpNet::V6(_))),
            "only IPv6 entries: {:?}",
            k.state.routes
        );
        assert!(k.state.fdb.keys().all(|(dev, _)| *dev == Dev::Vxlan6));
        let members = &k.guard.last().unwrap().0;
        assert!(members.v4.is_empty());
        assert_eq!(members.v6.len(), 2);
    }
    let mut status = agent.status();
    let (tx, task) = run(agent);
    // The first resync tick's full pass, then watch batches only.
    let first = tokio::time::timeout(Duration::from_secs(60), status.wait_for(|s| s.passes >= 2));
    assert!(first.await.is_ok(), "the first resync never ran");
    let reads = dp.lock().reads;
    // A third node joins, one leaves: only its entries go.
    peer6(&store, "fd00:10:244:23::/64", 0x23);
    settle(&dp, "the joining node is routed", |k| {
        route6(k, "fd00:10:244:23::/64")
    })
    .await;
    store.expire_key("0.0.0.0-0&fd00:10:244:21::-64");
    settle(&dp, "the departed node's route is gone", |k| {
        !route6(k, "fd00:10:244:21::/64")
    })
    .await;
    assert_eq!(
        dp.lock().reads,
        reads,
        "watch batches went through the delta, without a kernel dump"
    );
    {
        let k = dp.lock();
        assert!(route6(&k, "fd00:10:244:22::/64") && route6(&k, "fd00:10:244:23::/64"));
        assert_eq!(k.guard.last().unwrap().0.v6.len(), 2);
    }
    assert_eq!(status.borrow().subnet6, Some(s6));
    assert_eq!(status.borrow().leases, 3, "ours and two peers");
    // Our own lease deleted: written again, same IPv6 subnet.
    store.expire_key(&own.key_name());
    settle(&dp, "", |_| true).await;
    let mut tries = 0;
    while !store
        .leases()
        .iter()
        .any(|l| l.ipv6_subnet == Some(s6) && l.attrs.public_ipv6 == own.attrs.public_ipv6)
    {
        tries += 1;
        assert!(
            tries < 2000,
            "our lease never came back: {:?}",
            store.leases()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(store.leases().len(), 3);
    let _ = tx.send(());
    assert!(task.await.unwrap().is_ok());
}

fn gateway6(s6: Ipv6Net) -> std::net::Ipv6Addr {
    crate::subnet_file::gateway6_of(s6)
}

/// A peer lease carrying our own VTEP MAC (written by another agent or by
/// hand): the kernel would drop its frames; the agent says so.
#[tokio::test(start_paused = true)]
async fn a_peer_with_our_vtep_mac_is_reported() {
    let store = MemoryStore::with_config(config6("vxlan"));
    let mut clash = peer6(&store, "fd00:10:244:21::/64", 0x21);
    let ours = Mac::for_vtep6(OUR_IP6.parse().unwrap(), 1);
    if let Some(d) = clash.attrs.backend_v6_data.as_mut() {
        d.vtep_mac = ours.to_string();
    }
    store.put_lease_raw(clash);
    peer6(&store, "fd00:10:244:22::/64", 0x22);
    let (r, _dir) = start_on(store.clone(), v6dp(), |_| {}).await;
    let agent = r.unwrap();
    let said: Vec<&String> = agent
        .warned
        .iter()
        .filter(|m| m.contains("own VTEP MAC"))
        .collect();
    assert_eq!(said.len(), 1, "{:?}", agent.warned);
    assert!(said[0].contains("fd00:10:244:21::/64"), "{said:?}");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_ipv6_only_node_keeps_its_subnet() {
    let store = MemoryStore::with_config(config6("vxlan"));
    let dp = v6dp();
    let (r, dir) = start_on(store.clone(), dp.clone(), |_| {}).await;
    let first = r.unwrap().lease().clone();
    // The lease gone too (etcd lost it): the subnet file still says.
    store.expire_key(&first.key_name());
    let telemetry = Arc::new(Telemetry::new());
    let mut o = opts(dir.path(), telemetry);
    o.node_name = Some("node-a".into());
    let mut never = std::pin::pin!(std::future::pending::<()>());
    let again = Agent::start(store.clone(), dp, o, &mut never)
        .await
        .unwrap();
    assert_eq!(again.lease().ipv6_subnet, first.ipv6_subnet);
    assert!(again.lease().is_ipv6_only());
}

#[tokio::test(start_paused = true)]
async fn host_gw_reaches_ipv6_only_peers_via_their_public_ipv6() {
    let store = MemoryStore::with_config(config6("host-gw"));
    let dp = v6dp();
    // On our /64, as host-gw needs.
    let (r, _dir) = start_on(store.clone(), dp.clone(), |o| {
        o.public_ipv6 = Some(OUR_IP6.parse().unwrap())
    })
    .await;
    let agent = r.unwrap();
    assert!(agent.lease().attrs.backend_v6_data.is_none());
    let k = dp.lock();
    assert!(k.devices.as_ref().unwrap().vxlan6.is_none());
    drop(k);
    drop(agent);
}

#[tokio::test(start_paused = true)]
async fn wireguard_in_an_ipv6_only_cluster_is_refused_before_anything_is_made() {
    let store = MemoryStore::with_config(config6("wireguard"));
    let dp = v6dp();
    let (r, dir) = start_on(store.clone(), dp.clone(), |_| {}).await;
    let e = r.err().expect("refused");
    assert!(matches!(e, AgentError::Plan6(_)), "{e}");
    assert!(e.is_config(), "{e}");
    assert!(e.to_string().contains("wireguard"), "{e}");
    assert!(store.leases().is_empty());
    assert_eq!(dp.lock().ensure_calls, 0);
    assert!(!dir.path().join("subnet.env").exists());
}

#[tokio::test(start_paused = true)]
async fn an_ipv6_only_node_without_an_ipv6_address_is_refused() {
    let store = MemoryStore::with_config(config6("vxlan"));
    let dp = FakeDatapath::default();
    let (r, _dir) = start_on(store.clone(), dp.clone(), |_| {}).await;
    let e = r.err().expect("refused");
    assert!(e.to_string().contains("eth0"), "{e}");
    assert!(store.leases().is_empty());
}

#[test]
fn a_lease_request_of_the_ipv6_only_form_keeps_its_key() {
    let attrs = peer_attrs(5);
    let s6: Ipv6Net = "fd00:10:244:5::/64".parse().unwrap();
    let r = LeaseRequest::new(V6_ONLY_V4, Some(s6), &attrs, TTL);
    assert_eq!(r.key_name(), "0.0.0.0-0&fd00:10:244:5::-64");
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
