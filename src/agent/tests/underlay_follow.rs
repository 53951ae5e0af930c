//! Following the underlay (issue 14): the NIC gone and back under a new
//! index, the node renumbered, `--public-ip` no longer on the interface,
//! and bursts of events costing one look.

use super::*;

impl FakeDatapath {
    fn underlay_event(&self, ev: UnderlayEvent) {
        let k = self.lock();
        k.underlay_events
            .as_ref()
            .unwrap()
            .unbounded_send(ev)
            .unwrap();
    }

    /// The index the devices are planned on, the VXLAN device's lower link
    /// and local address.
    fn vxlan_underlay(&self) -> Option<(u32, u32, std::net::IpAddr)> {
        let k = self.lock();
        let d = k.devices.as_ref()?;
        let (v, _) = d.vxlan.as_ref()?;
        Some((d.underlay_index, v.underlay_index, v.local))
    }
}

fn eth0_event(index: u32) -> UnderlayEvent {
    UnderlayEvent::Link {
        index,
        name: Some("eth0".into()),
    }
}

/// Every lease in the store as (subnet, public IP, VTEP MAC).
fn lease_rows(store: &MemoryStore) -> Vec<(Ipv4Net, Ipv4Addr, Option<String>)> {
    let mut rows: Vec<_> = store
        .leases()
        .into_iter()
        .map(|l| {
            let mac = l.attrs.backend_data.map(|d| d.vtep_mac);
            (l.subnet, l.attrs.public_ip, mac)
        })
        .collect();
    rows.sort();
    rows
}

fn reason(rig: &Rig) -> Option<&'static str> {
    rig.telemetry.not_ready_reason()
}

#[tokio::test(start_paused = true)]
async fn a_nic_gone_and_back_is_rebuilt_on_its_new_index_with_the_same_subnet() {
    let mut rig = Rig::with_peer().await;
    let subnet = rig.status.borrow().subnet;
    let leases = lease_rows(&rig.store);
    rig.until("ready", |r| reason(r).is_none()).await;

    // The NIC goes, and the VXLAN device with it.
    rig.dp.lock().underlay_gone = true;
    rig.dp.wipe();
    rig.dp.underlay_event(eth0_event(2));
    rig.dp.signal(LinkSignal::Changed);
    rig.until("unready, saying why", |r| {
        reason(r).is_some_and(|w| w.contains("underlay interface gone"))
    })
    .await;
    // While it is gone, nothing is built on it, whatever comes by.
    let passes = rig.status.borrow().passes;
    for i in 0..5 {
        rig.dp
            .underlay_event(UnderlayEvent::Address { index: 20 + i });
        rig.dp.signal(LinkSignal::Changed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(rig.status.borrow().passes, passes, "no pass while missing");
    assert!(!rig.dp.has_route("10.244.5.0/24"));

    // Back, as a re-added NIC is: same name and address, a new index.
    {
        let mut k = rig.dp.lock();
        k.underlay_gone = false;
        k.underlay_moved = Some(Underlay {
            index: 7,
            ..underlay()
        });
    }
    rig.dp.underlay_event(eth0_event(7));
    rig.until("the devices are planned on the new index", |r| {
        r.dp.vxlan_underlay() == Some((7, 7, OUR_IP.into()))
    })
    .await;
    rig.until("the peer's entries are back", |r| {
        r.dp.has_route("10.244.5.0/24")
    })
    .await;
    rig.until("ready again", |r| reason(r).is_none()).await;
    assert_eq!(rig.status.borrow().subnet, subnet, "same subnet");
    assert_eq!(rig.subnet_in_file(), Some(subnet));
    // Same address: nothing to tell the other nodes.
    assert_eq!(lease_rows(&rig.store), leases, "leases untouched");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_renumbered_node_rewrites_its_lease_and_keeps_its_subnet() {
    let mut rig = Rig::with_peer().await;
    let subnet = rig.status.borrow().subnet;
    let new_ip = Ipv4Addr::new(192, 0, 2, 50);
    rig.dp.lock().underlay_moved = Some(Underlay {
        ip: new_ip,
        net: "192.0.2.50/24".parse().unwrap(),
        ..underlay()
    });
    rig.dp.underlay_event(UnderlayEvent::Address { index: 2 });
    rig.until("the VXLAN device sources from the new address", |r| {
        r.dp.vxlan_underlay() == Some((2, 2, new_ip.into()))
    })
    .await;
    let mac = Mac::for_vtep(new_ip, 1).to_string();
    let peer_row = (
        net("10.244.5.0/24"),
        Ipv4Addr::new(192, 0, 2, 21),
        Some(Mac::for_vtep(Ipv4Addr::new(192, 0, 2, 21), 1).to_string()),
    );
    rig.until("our lease names the new address", |r| {
        lease_rows(&r.store).contains(&(subnet, new_ip, Some(mac.clone())))
    })
    .await;
    let s = rig.wait("held again", |s| s.lease == "held").await;
    assert_eq!(s.subnet, subnet, "same subnet");
    // One lease for us, rewritten in place; the peer's untouched.
    let mut want = vec![(subnet, new_ip, Some(mac)), peer_row];
    want.sort();
    assert_eq!(lease_rows(&rig.store), want);
    rig.until("ready", |r| reason(r).is_none()).await;
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn with_public_ip_given_a_mismatch_is_reported_not_followed() {
    let store = MemoryStore::with_config(config());
    let mut rig = Rig::start_configured(store, |_| {}, |o| o.public_ip = Some(OUR_IP)).await;
    rig.until("ready", |r| reason(r).is_none()).await;
    let leases = lease_rows(&rig.store);
    // The interface is renumbered under the flag's feet.
    {
        let mut k = rig.dp.lock();
        k.public_ip_off_iface = true;
        k.underlay_moved = Some(Underlay {
            ip: Ipv4Addr::new(192, 0, 2, 50),
            ..underlay()
        });
    }
    rig.dp.underlay_event(UnderlayEvent::Address { index: 2 });
    rig.until("unready, naming the flag", |r| {
        reason(r).is_some_and(|w| w.contains("--public-ip"))
    })
    .await;
    assert_eq!(
        lease_rows(&rig.store),
        leases,
        "the lease keeps the flag's IP"
    );
    assert_eq!(rig.dp.vxlan_underlay(), Some((2, 2, OUR_IP.into())));
    // The address comes back: ready again.
    rig.dp.lock().public_ip_off_iface = false;
    rig.dp.underlay_event(UnderlayEvent::Address { index: 2 });
    rig.until("ready again", |r| reason(r).is_none()).await;
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_underlay_events_costs_one_look_and_others_none() {
    let rig = Rig::fresh().await;
    // Whatever the start asked for is done.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let selects = rig.dp.lock().selects;
    let passes = rig.status.borrow().passes;
    let applied = rig.dp.lock().applied.len();
    // A pod's veth and its address: not the underlay's business.
    rig.dp.underlay_event(UnderlayEvent::Link {
        index: 9,
        name: Some("veth1234".into()),
    });
    rig.dp.underlay_event(UnderlayEvent::Address { index: 9 });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.dp.lock().selects, selects, "no look for other links");
    assert_eq!(
        rig.status.borrow().passes,
        passes,
        "no pass for other links"
    );
    // A flap: down, up, address events; nothing moved.
    for _ in 0..20 {
        rig.dp.underlay_event(eth0_event(2));
        rig.dp.underlay_event(UnderlayEvent::Address { index: 2 });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rig.dp.lock().selects, selects + 1, "one look for the burst");
    // Nothing moved: one pass, which finds everything right.
    assert_eq!(rig.status.borrow().passes, passes + 1, "one pass");
    assert_eq!(rig.dp.lock().applied.len(), applied, "nothing changed");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_new_ipv6_underlay_address_moves_the_ipv6_tunnel_and_the_lease() {
    let dual = NetworkConfig::parse(
        br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let store = MemoryStore::with_config(dual);
    let old: std::net::Ipv6Addr = "2001:db8::10".parse().unwrap();
    let new: std::net::Ipv6Addr = "2001:db8::50".parse().unwrap();
    let dp = FakeDatapath::default();
    dp.lock().ipv6 = Some(old);
    let (agent, _dir) = start_on(store.clone(), dp.clone(), |_| {}).await;
    let agent = agent.unwrap();
    let subnet = agent.lease().subnet;
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(Box::pin(async move {
        let _ = rx.await;
    })));
    let tunnel6 = |dp: &FakeDatapath| {
        let k = dp.lock();
        k.devices
            .as_ref()
            .and_then(|d| d.vxlan6.as_ref().map(|v| v.local))
    };
    let lease6 = |store: &MemoryStore| {
        store
            .leases()
            .iter()
            .find(|l| l.subnet == subnet)
            .and_then(|l| l.attrs.public_ipv6)
    };
    assert_eq!(tunnel6(&dp), Some(old.into()));
    assert_eq!(lease6(&store), Some(old));

    // Only the IPv6 address changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    dp.lock().ipv6 = Some(new);
    dp.underlay_event(UnderlayEvent::Address { index: 2 });
    for _ in 0..2000 {
        if tunnel6(&dp) == Some(new.into()) && lease6(&store) == Some(new) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(tunnel6(&dp), Some(new.into()), "the IPv6 tunnel follows");
    assert_eq!(lease6(&store), Some(new), "the lease follows");
    let ours: Vec<_> = store
        .leases()
        .into_iter()
        .filter(|l| l.subnet == subnet)
        .collect();
    assert_eq!(ours.len(), 1, "same subnet, one lease");
    assert_eq!(ours[0].attrs.public_ip, OUR_IP, "IPv4 address kept");
    let _ = tx.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_renumbering_during_an_etcd_outage_rebuilds_at_once_and_reaches_the_lease_later() {
    let mut rig = Rig::with_peer().await;
    let subnet = rig.status.borrow().subnet;
    let new_ip = Ipv4Addr::new(192, 0, 2, 50);
    rig.store.set_available(false);
    rig.dp.lock().underlay_moved = Some(Underlay {
        ip: new_ip,
        net: "192.0.2.50/24".parse().unwrap(),
        ..underlay()
    });
    rig.dp.underlay_event(UnderlayEvent::Address { index: 2 });
    // The data path does not wait for etcd.
    rig.until("the VXLAN device sources from the new address", |r| {
        r.dp.vxlan_underlay() == Some((2, 2, new_ip.into()))
    })
    .await;
    assert!(rig.dp.has_route("10.244.5.0/24"), "peers still routed");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(
        lease_rows(&rig.store).iter().any(|r| r.1 == OUR_IP),
        "etcd is down: the old lease stays"
    );
    rig.store.set_available(true);
    rig.until("our lease names the new address", |r| {
        lease_rows(&r.store)
            .iter()
            .any(|row| row.0 == subnet && row.1 == new_ip)
    })
    .await;
    let s = rig.wait("held", |s| s.lease == "held").await;
    assert_eq!(s.subnet, subnet, "same subnet");
    assert_eq!(lease_rows(&rig.store).len(), 2, "no second lease");
    rig.stop().await;
}
