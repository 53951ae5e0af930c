//! Watch batches go through the per-peer delta, without reading the kernel;
//! the resync, link events and lost events still read it and repair drift.

use super::*;

/// An agent beside one peer (10.244.5.0/24) whose first resync tick ran:
/// from here on only events cause passes.
async fn settled() -> Rig {
    let mut rig = Rig::with_peer().await;
    rig.wait("the first resync ran", |s| s.passes >= 2).await;
    rig
}

/// `10.244.<i>.0/24`, or another free /24 when that one is our own.
fn free(rig: &Rig, i: u8) -> String {
    let ours = rig.status.borrow().subnet;
    let s = format!("10.244.{i}.0/24");
    if net(&s) == ours {
        format!("10.244.{}.0/24", i.wrapping_add(100))
    } else {
        s
    }
}

fn kinds(ops: &[Op]) -> Vec<&'static str> {
    ops.iter().map(Op::kind).collect()
}

#[tokio::test(start_paused = true)]
async fn a_watch_batch_is_applied_without_reading_the_kernel() {
    let mut rig = settled().await;
    let (reads, ensures, applied) = {
        let k = rig.dp.lock();
        (k.reads, k.ensure_calls, k.applied.len())
    };
    let deltas = rig.telemetry.delta_passes.get();
    let six = free(&rig, 6);
    peer(&rig.store, &six, 22).await;
    rig.until("the new peer is routed", |r| r.dp.has_route(&six))
        .await;
    rig.store.delete_lease(net("10.244.5.0/24")).await.unwrap();
    rig.until("the gone peer is unrouted", |r| {
        !r.dp.has_route("10.244.5.0/24")
    })
    .await;
    {
        let k = rig.dp.lock();
        assert_eq!(k.reads, reads, "no kernel dump for a watch batch");
        assert_eq!(k.ensure_calls, ensures, "no device check either");
        assert_eq!(
            kinds(&k.applied[applied..]),
            [
                "add_fdb",
                "set_neighbour",
                "set_route",
                "del_route",
                "del_neighbour",
                "del_fdb"
            ],
            "exactly the two peers' entries"
        );
        assert_eq!(k.state.routes.len(), 1);
    }
    assert_eq!(rig.telemetry.delta_passes.get(), deltas + 2);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_resync_still_reads_the_kernel_and_repairs_drift() {
    let mut rig = settled().await;
    let stray: IpNet = "10.244.99.0/24".parse().unwrap();
    let reads = {
        let mut k = rig.dp.lock();
        // Drift behind the agent's back: a route gone, a stray one added.
        let gone: IpNet = "10.244.5.0/24".parse().unwrap();
        let target = k.state.routes.remove(&gone).unwrap();
        k.state.routes.insert(stray, target);
        k.reads
    };
    let six = free(&rig, 6);
    peer(&rig.store, &six, 22).await;
    rig.until("the new peer is routed", |r| r.dp.has_route(&six))
        .await;
    // The delta touched only the new peer: the drift is still there.
    assert!(!rig.dp.has_route("10.244.5.0/24"));
    assert!(rig.dp.lock().state.routes.contains_key(&stray));
    assert_eq!(rig.dp.lock().reads, reads);
    tokio::time::sleep(RESYNC + Duration::from_secs(1)).await;
    rig.until("the resync repaired the drift", |r| {
        r.dp.has_route("10.244.5.0/24") && !r.dp.lock().state.routes.contains_key(&stray)
    })
    .await;
    let reads = rig.dp.lock().reads;
    assert!(reads > 0);
    // And batches after it go through the delta again.
    let seven = free(&rig, 7);
    peer(&rig.store, &seven, 23).await;
    rig.until("the next peer is routed", |r| r.dp.has_route(&seven))
        .await;
    assert_eq!(rig.dp.lock().reads, reads);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_delta_op_the_next_batch_reads_the_kernel() {
    let mut rig = settled().await;
    let reads = rig.dp.lock().reads;
    rig.dp.lock().fail_applies = 1;
    let (six, seven) = (free(&rig, 6), free(&rig, 7));
    peer(&rig.store, &six, 22).await;
    rig.until("the delta ran and failed an op", |r| {
        r.dp.lock().fail_applies == 0
    })
    .await;
    // The FDB entry failed (the first op); the rest went in.
    let mac = Mac::for_vtep(Ipv4Addr::new(192, 0, 2, 22), 1);
    assert!(!rig.dp.lock().state.fdb.contains_key(&(Dev::Vxlan, mac)));
    assert_eq!(rig.dp.lock().reads, reads);
    peer(&rig.store, &seven, 23).await;
    rig.until("both peers are routed", |r| {
        r.dp.has_route(&six) && r.dp.has_route(&seven)
    })
    .await;
    assert_eq!(rig.dp.lock().reads, reads + 1, "one full pass");
    assert!(rig.dp.lock().state.fdb.contains_key(&(Dev::Vxlan, mac)));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn lost_netlink_events_are_counted_and_cause_a_full_pass() {
    let mut rig = settled().await;
    let reads = rig.dp.lock().reads;
    assert_eq!(rig.telemetry.netlink_events_lost.get(), 0);
    rig.dp.signal(LinkSignal::Lost);
    rig.until("a full pass ran", |r| r.dp.lock().reads > reads)
        .await;
    assert_eq!(rig.telemetry.netlink_events_lost.get(), 1);
    assert!(rig
        .telemetry
        .encode()
        .contains("twill_netlink_events_lost_total 1"));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn leases_written_together_cost_one_pass() {
    let mut rig = settled().await;
    let deltas = rig.telemetry.delta_passes.get();
    let passes = rig.status.borrow().passes;
    // Written without the agent running in between, so they are all
    // waiting when it next looks. (The in-memory watch hands them over as
    // one batch; batches etcd delivers separately are drained in `run`.)
    let nets: Vec<String> = (30..35).map(|i| free(&rig, i)).collect();
    for (net, host) in nets.iter().zip(30..) {
        peer(&rig.store, net, host).await;
    }
    rig.until("all five are routed", |r| {
        nets.iter().all(|n| r.dp.has_route(n))
    })
    .await;
    assert_eq!(rig.telemetry.delta_passes.get(), deltas + 1);
    assert_eq!(rig.status.borrow().passes, passes + 1);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn after_a_full_pass_with_failures_the_next_batch_is_full_too() {
    let mut rig = Rig::fresh().await;
    rig.wait("the first resync ran", |s| s.passes >= 2).await;
    // A link event's full pass fails to put back a wiped peer...
    let five = free(&rig, 5);
    peer(&rig.store, &five, 21).await;
    rig.until("the peer is routed", |r| r.dp.has_route(&five))
        .await;
    rig.dp.wipe();
    rig.dp.lock().fail_applies = 3;
    rig.dp.signal(LinkSignal::Changed);
    rig.until("the full pass failed", |r| r.dp.lock().fail_applies == 0)
        .await;
    assert!(!rig.dp.has_route(&five));
    assert!(rig.telemetry.not_ready_reason().is_some());
    // ...so the next watch batch reads the kernel and retries it.
    let reads = rig.dp.lock().reads;
    let six = free(&rig, 6);
    peer(&rig.store, &six, 22).await;
    rig.until("both peers are routed", |r| {
        r.dp.has_route(&five) && r.dp.has_route(&six)
    })
    .await;
    assert_eq!(rig.dp.lock().reads, reads + 1);
    assert_eq!(rig.telemetry.not_ready_reason(), None);
    rig.stop().await;
}
