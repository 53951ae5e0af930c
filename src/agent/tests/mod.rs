//! The agent's lifecycle, end to end but without root: the real agent loop
//! against the in-memory lease store and a recording fake of the data path.
//! Time is tokio's paused clock, so TTLs and backoffs pass instantly.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use subnet_allocator::{
    Lease, LeaseAttrs, LeaseStore, MemoryStore, NetworkConfig, StoreError, VxlanData,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use crate::datapath::{Datapath, DeviceSpec};
use crate::kernel::{DevIndex, KernelError, LinkSignal, Underlay, UnderlayEvent};
use crate::masq::{MasqError, Networks};
use crate::reconcile::{Dev, KernelState, Mac, Op};

mod delta;
mod dpeers;

const OUR_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TTL: Duration = Duration::from_secs(60);
const RESYNC: Duration = Duration::from_secs(3600);

/// What the fake kernel holds and what it was asked to do.
#[derive(Default)]
struct FakeKernel {
    state: KernelState,
    devices: Option<DeviceSpec>,
    ensure_calls: usize,
    applied: Vec<Op>,
    /// The next this many `apply` calls fail.
    fail_applies: usize,
    masq: Vec<Networks>,
    /// While set, `ensure_masq` fails as a kernel without nf_tables would.
    fail_masq: bool,
    /// The tables `ensure_masq` installed and `remove_masq` has not removed.
    masq_tables: bool,
    masq_removals: usize,
    /// `enable_forwarding` calls, by their `ipv6` argument.
    forwarding: Vec<bool>,
    /// The device `preflight` reports as holding our VNI and port.
    conflict: Option<String>,
    /// The bridge MTU as the kernel has it: set by `ensure_devices`, lowered
    /// by hand (or by a pod's port) in tests.
    bridge_mtu: Option<u32>,
    links: Option<futures::channel::mpsc::UnboundedSender<LinkSignal>>,
    /// The underlay as `select_underlay` finds it: gone, or moved away
    /// from `underlay()` (another index or address), and whether it holds
    /// `--public-ip`.
    underlay_gone: bool,
    underlay_moved: Option<Underlay>,
    public_ip_off_iface: bool,
    /// `select_underlay` calls.
    selects: usize,
    underlay_events: Option<futures::channel::mpsc::UnboundedSender<UnderlayEvent>>,
    /// The underlay's global IPv6 address.
    ipv6: Option<std::net::Ipv6Addr>,
    /// `read_state` calls: full dumps of the kernel.
    reads: usize,
    /// `ensure_guard` calls: (tunnel members, whether it checked).
    guard: Vec<(twill_nft::guard::Peers, bool)>,
    /// The WireGuard peers `sync_peers` was last asked for.
    wg_peers: crate::wireguard::peers::PeerMap,
    /// `update_guard` calls: (members added, members removed). Each also
    /// goes into `guard` as the members it leaves, unchecked.
    guard_updates: Vec<(twill_nft::guard::Peers, twill_nft::guard::Peers)>,
    /// `ensure_guard` calls alone (whole member sets).
    guard_writes: usize,
    /// While set, `update_guard` fails (the agent then rewrites the table).
    fail_guard_update: bool,
    /// `sync_peers` (true: the device read back) and `change_peers` (false)
    /// calls, with the changes each made.
    wg_calls: Vec<(bool, Vec<crate::wireguard::uapi::PeerChange>)>,
}

/// A data path that keeps twill's entries in memory and records every call.
#[derive(Clone, Default)]
struct FakeDatapath(Arc<Mutex<FakeKernel>>);

impl FakeDatapath {
    fn lock(&self) -> MutexGuard<'_, FakeKernel> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn routes(&self) -> Vec<IpNet> {
        self.lock().state.routes.keys().copied().collect()
    }

    fn has_route(&self, subnet: &str) -> bool {
        let net: IpNet = subnet.parse().unwrap();
        self.lock().state.routes.contains_key(&net)
    }

    fn signal(&self, s: LinkSignal) {
        let k = self.lock();
        k.links.as_ref().unwrap().unbounded_send(s).unwrap();
    }

    /// Loses every entry, as when the VXLAN device is deleted.
    fn wipe(&self) {
        self.lock().state = KernelState::default();
    }

    fn gateway(&self) -> Option<Ipv4Net> {
        self.lock().devices.as_ref().and_then(|d| d.gateway)
    }
}

fn underlay() -> Underlay {
    Underlay {
        name: "eth0".into(),
        index: 2,
        mtu: 1500,
        ip: OUR_IP,
        net: "192.0.2.10/24".parse().unwrap(),
    }
}

impl Datapath for FakeDatapath {
    async fn underlay(
        &self,
        _iface: Option<&str>,
        _public_ip: Option<Ipv4Addr>,
    ) -> Result<Underlay, KernelError> {
        Ok(underlay())
    }

    async fn global_ipv6(&self, _index: u32) -> Result<Option<std::net::Ipv6Addr>, KernelError> {
        Ok(self.lock().ipv6)
    }

    async fn preflight(&self, plan: &Plan) -> Result<(), KernelError> {
        let k = self.lock();
        match (&k.conflict, &plan.vxlan) {
            (Some(device), Some(v)) => Err(KernelError::VxlanConflict {
                device: device.clone(),
                vni: v.vni,
                port: v.port,
                ours: v.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    async fn enable_forwarding(
        &self,
        ipv6: bool,
    ) -> Result<Vec<(&'static str, bool)>, KernelError> {
        self.lock().forwarding.push(ipv6);
        let mut keys = vec![(crate::kernel::IPV4_FORWARD, true)];
        if ipv6 {
            keys.push((crate::kernel::IPV6_FORWARD, true));
        }
        Ok(keys)
    }

    async fn ensure_devices(&self, spec: &DeviceSpec) -> Result<DevIndex, KernelError> {
        let mut k = self.lock();
        k.ensure_calls += 1;
        k.bridge_mtu = Some(spec.mtu);
        k.devices = Some(spec.clone());
        Ok(DevIndex {
            vxlan: spec.vxlan.as_ref().map(|_| 10),
            vxlan6: spec.vxlan6.as_ref().map(|_| 11),
            underlay: spec.underlay_index,
            wireguard: None,
        })
    }

    async fn read_state(&self, _dev: &DevIndex) -> Result<KernelState, KernelError> {
        let mut k = self.lock();
        k.reads += 1;
        Ok(k.state.clone())
    }

    async fn apply(&self, _dev: &DevIndex, op: &Op) -> Result<(), KernelError> {
        let mut k = self.lock();
        k.applied.push(op.clone());
        if k.fail_applies > 0 {
            k.fail_applies -= 1;
            return Err(KernelError::NoSuchLink(format!("injected failure of {op}")));
        }
        k.state.apply_op(op);
        Ok(())
    }

    async fn ensure_masq(&self, networks: &Networks) -> Result<bool, MasqError> {
        let mut k = self.lock();
        if k.fail_masq {
            return Err(MasqError::Nft(twill_nft::NftError::Open(
                std::io::Error::from_raw_os_error(libc::EPROTONOSUPPORT),
            )));
        }
        let changed = k.masq.last() != Some(networks) || !k.masq_tables;
        k.masq.push(*networks);
        k.masq_tables = true;
        Ok(changed)
    }

    async fn remove_masq(&self) -> Result<bool, MasqError> {
        let mut k = self.lock();
        k.masq_removals += 1;
        Ok(std::mem::take(&mut k.masq_tables))
    }

    async fn ensure_guard(
        &self,
        _settings: &twill_nft::guard::Settings,
        peers: &twill_nft::guard::Peers,
        check: bool,
        _known: &crate::guard::PodEntries,
        _was: Option<twill_nft::guard::Peers>,
    ) -> Result<crate::guard::GuardReport, crate::guard::GuardError> {
        let mut k = self.lock();
        k.guard.push((peers.clone(), check));
        k.guard_writes += 1;
        Ok(crate::guard::GuardReport::default())
    }

    async fn update_guard(
        &self,
        added: &twill_nft::guard::Peers,
        removed: &twill_nft::guard::Peers,
    ) -> Result<crate::guard::GuardReport, crate::guard::GuardError> {
        let mut k = self.lock();
        if k.fail_guard_update {
            return Err(crate::guard::GuardError::Join(
                "no tunnel member set".into(),
            ));
        }
        let mut members = k.guard.last().map(|(p, _)| p.clone()).unwrap_or_default();
        members.v4.retain(|a| !removed.v4.contains(a));
        members.v6.retain(|a| !removed.v6.contains(a));
        members.v4.extend(&added.v4);
        members.v6.extend(&added.v6);
        k.guard.push((members, false));
        k.guard_updates.push((added.clone(), removed.clone()));
        Ok(crate::guard::GuardReport::default())
    }

    fn link_signals(
        &self,
        _names: Vec<String>,
    ) -> Result<BoxStream<'static, LinkSignal>, KernelError> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.lock().links = Some(tx);
        Ok(rx.boxed())
    }

    async fn select_underlay(
        &self,
        _select: &underlay::UnderlaySelect,
        public_ip: Option<Ipv4Addr>,
    ) -> Result<underlay::Found, KernelError> {
        let mut k = self.lock();
        k.selects += 1;
        if k.underlay_gone {
            return Err(KernelError::NoSuchLink("eth0".into()));
        }
        let mut u = k.underlay_moved.clone().unwrap_or_else(underlay);
        if let Some(ip) = public_ip {
            u.ip = ip;
        }
        Ok(underlay::Found {
            underlay: u,
            on_iface: !k.public_ip_off_iface,
        })
    }

    fn underlay_events(&self) -> Result<BoxStream<'static, UnderlayEvent>, KernelError> {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        self.lock().underlay_events = Some(tx);
        Ok(rx.boxed())
    }

    async fn sync_peers(
        &self,
        _spec: &crate::wireguard::WgSpec,
        desired: &crate::wireguard::peers::PeerMap,
    ) -> Result<Vec<crate::wireguard::uapi::PeerChange>, KernelError> {
        let mut k = self.lock();
        let actual: Vec<_> = k.wg_peers.values().cloned().collect();
        let changes = crate::wireguard::peers::diff_peers(desired, &actual);
        k.wg_peers = desired.clone();
        k.wg_calls.push((true, changes.clone()));
        Ok(changes)
    }

    async fn change_peers(
        &self,
        _spec: &crate::wireguard::WgSpec,
        changes: &[crate::wireguard::uapi::PeerChange],
    ) -> Result<(), KernelError> {
        use crate::wireguard::uapi::PeerChange;
        let mut k = self.lock();
        for c in changes {
            match c {
                PeerChange::Remove(key) => k.wg_peers.remove(key),
                PeerChange::Set(p) => k.wg_peers.insert(p.public_key, p.clone()),
            };
        }
        k.wg_calls.push((false, changes.to_vec()));
        Ok(())
    }
}

/// The agent picks its own subnet from 10.244.100.0 up: below that, the
/// tests' peers (10.244.1.0 .. 10.244.99.0) never meet it by chance.
fn config() -> NetworkConfig {
    NetworkConfig::parse(
        br#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.100.0","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap()
}

/// The lease another node (`192.0.2.<host>`) holds.
fn peer_attrs(host: u8) -> LeaseAttrs {
    let ip = Ipv4Addr::new(192, 0, 2, host);
    LeaseAttrs {
        public_ip: ip,
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(VxlanData {
            vni: 1,
            vtep_mac: Mac::for_vtep(ip, 1).to_string(),
        }),
        backend_v6_data: None,
        node_name: None,
        public_key: None,
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

/// An agent under test: its store, data path, subnet file, status and stop.
struct Rig {
    store: MemoryStore,
    dp: FakeDatapath,
    _dir: tempfile::TempDir,
    subnet_file: PathBuf,
    telemetry: Arc<Telemetry>,
    status: tokio::sync::watch::Receiver<AgentStatus>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AgentError>>>,
    /// The probe targets the agent hands the prober.
    probe: tokio::sync::watch::Receiver<crate::probe::PeerSet>,
}

fn opts(dir: &std::path::Path, telemetry: Arc<Telemetry>) -> AgentConfig {
    AgentConfig {
        iface: None,
        public_ip: None,
        node_name: Some("node-a".into()),
        subnet_file: dir.join("subnet.env"),
        lease_ttl: TTL,
        resync_interval: RESYNC,
        bridge: "twill0".into(),
        telemetry,
        ip_masq: true,
        set_forwarding: true,
        underlay_select: Default::default(),
        tunnel_filter: true,
        wireguard_dir: dir.join("wireguard"),
        public_ipv6: None,
    }
}

impl Rig {
    /// An agent running on an empty store.
    async fn fresh() -> Rig {
        Rig::start(MemoryStore::with_config(config())).await
    }

    /// An agent running beside one peer, 10.244.5.0/24 at 192.0.2.21.
    async fn with_peer() -> Rig {
        let store = MemoryStore::with_config(config());
        peer(&store, "10.244.5.0/24", 21).await;
        Rig::start(store).await
    }

    /// Starts an agent on `store` and runs it.
    async fn start(store: MemoryStore) -> Rig {
        Rig::start_with(store, |_| {}).await
    }

    async fn start_with(store: MemoryStore, prepare: impl FnOnce(&std::path::Path)) -> Rig {
        Rig::start_configured(store, prepare, |_| {}).await
    }

    /// Starts an agent on `store` after `prepare` ran on its directory,
    /// with its options changed by `change`.
    async fn start_configured(
        store: MemoryStore,
        prepare: impl FnOnce(&std::path::Path),
        change: impl FnOnce(&mut AgentConfig),
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let telemetry = Arc::new(Telemetry::new());
        let dp = FakeDatapath::default();
        let mut opts = opts(dir.path(), telemetry.clone());
        change(&mut opts);
        let never = std::future::pending::<()>();
        let mut never = std::pin::pin!(never);
        let agent = Agent::start(store.clone(), dp.clone(), opts, &mut never)
            .await
            .unwrap();
        let status = agent.status();
        let probe = agent.peers();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(Box::pin(async move {
            let _ = rx.await;
        })));
        let mut rig = Rig {
            store,
            dp,
            subnet_file: dir.path().join("subnet.env"),
            _dir: dir,
            telemetry,
            status,
            stop: Some(tx),
            task: Some(task),
            probe,
        };
        rig.wait("the watch is open", |s| s.watch == "watching")
            .await;
        rig
    }

    /// Waits (in paused time, so timers fire at once) until `cond` holds.
    async fn wait(&mut self, what: &str, cond: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let r = tokio::time::timeout(Duration::from_secs(600), self.status.wait_for(&cond))
            .await
            .map(|r| r.map(|s| s.clone()));
        match r {
            Ok(Ok(s)) => s,
            _ => panic!(
                "agent never reached: {what}; last status {:?}",
                *self.status.borrow()
            ),
        }
    }

    /// Waits until a condition outside the status holds, checking after
    /// every step the agent takes.
    async fn until(&mut self, what: &str, cond: impl Fn(&Rig) -> bool) {
        for _ in 0..2000 {
            if cond(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never true: {what}; status {:?}", *self.status.borrow());
    }

    fn subnet_in_file(&self) -> Option<Ipv4Net> {
        crate::subnet_file::read_previous_subnet(&self.subnet_file)
    }

    /// Stops the agent and checks it ended cleanly and promptly.
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().unwrap();
        let r = tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("agent did not stop within a second")
            .unwrap();
        assert!(r.is_ok(), "agent ended with {r:?}");
    }
}

/// Another node's lease, without expiry: these tests let hours pass.
async fn peer(store: &MemoryStore, subnet: &str, host: u8) -> Lease {
    store
        .create_lease(net(subnet), &peer_attrs(host), Duration::ZERO)
        .await
        .unwrap()
}

mod wireguard;

#[tokio::test(start_paused = true)]
async fn start_programs_peers_and_publishes_the_subnet() {
    let rig = Rig::with_peer().await;
    let subnet = rig.status.borrow().subnet;
    assert_eq!(rig.subnet_in_file(), Some(subnet));
    assert_eq!(
        rig.dp.gateway(),
        Some(Ipv4Net::new(crate::subnet_file::gateway_of(subnet), 24).unwrap())
    );
    assert!(rig.dp.has_route("10.244.5.0/24"), "{:?}", rig.dp.routes());
    {
        let k = rig.dp.lock();
        let mac = Mac::for_vtep(Ipv4Addr::new(192, 0, 2, 21), 1);
        let vtep_ip = "10.244.5.0".parse().unwrap();
        assert_eq!(k.state.neighbours.get(&(Dev::Vxlan, vtep_ip)), Some(&mac));
        assert!(k.state.fdb.contains_key(&(Dev::Vxlan, mac)));
        // Checked at start and on every resync, always for the cluster network.
        let v4: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert!(!k.masq.is_empty());
        assert!(k.masq.iter().all(|n| n.v4 == Some(v4) && n.v6.is_none()));
    }
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn start_reuses_the_lease_of_our_public_ip() {
    let store = MemoryStore::with_config(config());
    // Ours from an earlier life, with a VTEP MAC that is no longer right.
    let mut ours = Plan::new(&config(), &underlay(), None).unwrap().attrs;
    // Written before leases named their node: reused, and named now.
    let mut fresh = ours.clone();
    fresh.node_name = Some("node-a".into());
    if let Some(d) = ours.backend_data.as_mut() {
        d.vtep_mac = "0a:00:00:00:00:01".into();
    }
    let held = store
        .create_lease(net("10.244.77.0/24"), &ours, TTL)
        .await
        .unwrap();
    let rig = Rig::start(store).await;
    assert_eq!(rig.status.borrow().subnet, held.subnet);
    assert_eq!(rig.subnet_in_file(), Some(held.subnet));
    // Reused with today's attributes, not a second lease.
    let leases = rig.store.leases();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].attrs, fresh);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn start_prefers_the_subnet_in_the_subnet_file() {
    let store = MemoryStore::with_config(config());
    let rig = Rig::start_with(store, |dir| {
        std::fs::write(
            dir.join("subnet.env"),
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.142.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=true\n",
        )
        .unwrap();
    })
    .await;
    assert_eq!(rig.status.borrow().subnet, net("10.244.142.0/24"));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn watch_batches_add_and_remove_peers() {
    let mut rig = Rig::fresh().await;
    peer(&rig.store, "10.244.6.0/24", 22).await;
    rig.until("the new peer is routed", |r| {
        r.dp.has_route("10.244.6.0/24")
    })
    .await;
    rig.store.delete_lease(net("10.244.6.0/24")).await.unwrap();
    rig.until("the gone peer is unrouted", |r| {
        !r.dp.has_route("10.244.6.0/24")
    })
    .await;
    {
        let k = rig.dp.lock();
        assert!(k.state.neighbours.is_empty() && k.state.fdb.is_empty());
    }
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn tunnel_members_follow_the_lease_map_and_resyncs_check_them() {
    let mut rig = Rig::with_peer().await;
    let members = |r: &Rig| -> Vec<String> {
        let k = r.dp.lock();
        let (peers, _) = k.guard.last().unwrap();
        peers.v4.iter().map(|a| a.to_string()).collect()
    };
    // The first pass checks the tables and writes the peer.
    assert!(rig.dp.lock().guard[0].1, "the first write does not check");
    assert_eq!(members(&rig), ["192.0.2.21"]);
    // A joining node is a member by the pass that routes it.
    peer(&rig.store, "10.244.6.0/24", 22).await;
    rig.until("the new peer is routed", |r| {
        r.dp.has_route("10.244.6.0/24")
    })
    .await;
    assert_eq!(members(&rig), ["192.0.2.21", "192.0.2.22"]);
    // A departed one leaves.
    rig.store.delete_lease(net("10.244.6.0/24")).await.unwrap();
    rig.until("the gone peer is unrouted", |r| {
        !r.dp.has_route("10.244.6.0/24")
    })
    .await;
    assert_eq!(members(&rig), ["192.0.2.21"]);
    // Unchanged passes write nothing; each resync checks.
    let before = rig.dp.lock().guard.len();
    tokio::time::sleep(RESYNC * 3 + Duration::from_secs(1)).await;
    let later: Vec<bool> = rig.dp.lock().guard[before..]
        .iter()
        .map(|(_, check)| *check)
        .collect();
    assert!(later.len() >= 3 && later.iter().all(|c| *c), "{later:?}");
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn lost_lease_comes_back_as_the_same_subnet() {
    let mut rig = Rig::fresh().await;
    let subnet = rig.status.borrow().subnet;
    let renewals = rig.store.calls("create_lease_with_ipv6") + rig.store.calls("rewrite_lease");
    rig.store.expire(subnet);
    rig.until("our lease is back in the store", |r| {
        r.store
            .leases()
            .iter()
            .any(|l| l.subnet == subnet && l.attrs.public_ip == OUR_IP)
    })
    .await;
    let s = rig
        .wait("the lease is held again", |s| s.lease == "held")
        .await;
    assert_eq!(s.subnet, subnet);
    assert_eq!(rig.subnet_in_file(), Some(subnet));
    assert!(
        rig.store.calls("create_lease_with_ipv6") + rig.store.calls("rewrite_lease") > renewals,
        "the lease was written again"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn lost_lease_taken_by_another_node_moves_to_a_new_subnet() {
    let mut rig = Rig::with_peer().await;
    let old = rig.status.borrow().subnet;
    // The key goes and another node takes the subnet before we can.
    rig.store.expire(old);
    rig.store.put_lease_raw(Lease {
        subnet: old,
        ipv6_subnet: None,
        attrs: peer_attrs(23),
        lease_id: None,
        ttl_remaining: Some(TTL),
    });
    let s = rig
        .wait("a new subnet is held", |s| {
            s.subnet != old && s.lease == "held"
        })
        .await;
    assert_eq!(
        rig.subnet_in_file(),
        Some(s.subnet),
        "subnet file rewritten"
    );
    assert_eq!(
        rig.dp.gateway(),
        Some(Ipv4Net::new(crate::subnet_file::gateway_of(s.subnet), 24).unwrap()),
        "bridge moved to the new gateway"
    );
    // The node that took our old subnet is now a peer like any other.
    rig.until("the old subnet is routed to its new holder", |r| {
        r.dp.has_route(&old.to_string())
    })
    .await;
    assert!(rig.dp.has_route("10.244.5.0/24"));
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn renewal_keeps_the_lease_alive() {
    let mut rig = Rig::fresh().await;
    let subnet = rig.status.borrow().subnet;
    // Three TTLs pass: without renewals the lease would have expired.
    tokio::time::sleep(TTL * 3).await;
    assert!(
        rig.store.calls("renew_lease") >= 6,
        "renewed every third of the TTL"
    );
    assert!(rig.store.leases().iter().any(|l| l.subnet == subnet));
    assert_eq!(rig.wait("held", |s| s.lease == "held").await.subnet, subnet);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn compacted_watch_is_relisted_and_converges() {
    let mut rig = Rig::fresh().await;
    // etcd goes away: the watch breaks and is retried with backoff.
    rig.store.set_available(false);
    rig.wait("the watch waits to retry", |s| s.watch == "rewatch")
        .await;
    // Meanwhile a node joins, one leaves, and history is compacted.
    let before = rig.store.revision();
    rig.store.put_lease_raw(Lease {
        subnet: net("10.244.8.0/24"),
        ipv6_subnet: None,
        attrs: peer_attrs(24),
        lease_id: None,
        ttl_remaining: Some(TTL),
    });
    rig.store.compact();
    assert!(rig.store.revision() > before);
    rig.store.set_available(true);
    rig.until("the peer seen only through the relist is routed", |r| {
        r.dp.has_route("10.244.8.0/24")
    })
    .await;
    let s = rig.wait("watching again", |s| s.watch == "watching").await;
    assert!(rig.store.calls("list_leases") >= 2, "relisted");
    assert!(s.revision >= rig.store.revision() - 1);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn failed_op_is_retried_on_the_next_resync() {
    let mut rig = Rig::fresh().await;
    rig.dp.lock().fail_applies = 3;
    let errors = rig.telemetry.reconcile_errors.get();
    peer(&rig.store, "10.244.9.0/24", 25).await;
    rig.until("the pass ran and failed its ops", |r| {
        r.dp.lock().applied.len() >= 3
    })
    .await;
    assert!(!rig.dp.has_route("10.244.9.0/24"));
    assert!(rig.telemetry.reconcile_errors.get() > errors);
    let passes = rig.status.borrow().passes;
    // Nothing else happens until the resync tick repairs it.
    tokio::time::sleep(RESYNC + Duration::from_secs(1)).await;
    assert!(
        rig.dp.has_route("10.244.9.0/24"),
        "passes {} -> {}, applied {:?}",
        passes,
        rig.status.borrow().passes,
        rig.dp.lock().applied
    );
    assert!(rig.status.borrow().passes > passes);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn link_event_is_repaired_without_waiting_for_the_resync() {
    let mut rig = Rig::with_peer().await;
    let ensures = rig.dp.lock().ensure_calls;
    rig.dp.wipe();
    rig.dp.signal(LinkSignal::Changed);
    rig.until("the lost entries are back", |r| {
        r.dp.has_route("10.244.5.0/24")
    })
    .await;
    assert!(rig.dp.lock().ensure_calls > ensures, "devices re-ensured");
    // Lost events force a pass as well.
    rig.dp.wipe();
    rig.dp.signal(LinkSignal::Lost);
    rig.until("repaired after lost events", |r| {
        r.dp.has_route("10.244.5.0/24")
    })
    .await;
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_link_events_costs_one_pass() {
    let mut rig = Rig::fresh().await;
    let passes = rig.status.borrow().passes;
    for _ in 0..50 {
        rig.dp.signal(LinkSignal::Changed);
    }
    let s = rig.wait("a pass ran", |s| s.passes > passes).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        rig.status.borrow().passes,
        s.passes,
        "one pass for the burst"
    );
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn repairs_keep_running_while_a_reacquire_hangs() {
    let mut rig = Rig::with_peer().await;
    let subnet = rig.status.borrow().subnet;
    // etcd stops answering; then our lease vanishes.
    rig.store.set_silent(true);
    rig.store.expire(subnet);
    rig.wait("re-acquiring", |s| s.lease == "reacquiring").await;
    rig.until("the re-acquire is stuck in the store", |r| {
        r.store.waiting() > 0
    })
    .await;
    // A device is lost meanwhile: repaired all the same.
    rig.dp.wipe();
    rig.dp.signal(LinkSignal::Changed);
    rig.until("repaired during the re-acquire", |r| {
        r.dp.has_route("10.244.5.0/24")
    })
    .await;
    assert_eq!(rig.status.borrow().lease, "reacquiring");
    // etcd answers again: the same subnet is ours again.
    rig.store.set_silent(false);
    let s = rig.wait("held again", |s| s.lease == "held").await;
    assert_eq!(s.subnet, subnet);
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn reacquire_failing_while_etcd_is_down_is_retried_on_a_schedule() {
    let mut rig = Rig::fresh().await;
    let subnet = rig.status.borrow().subnet;
    rig.store.expire(subnet);
    rig.store.set_available(false);
    // Whether the watch or the renewal notices first, the agent ends up
    // trying to re-acquire against a store that refuses.
    tokio::time::sleep(TTL).await;
    let s = rig.status.borrow().clone();
    assert!(
        matches!(s.lease, "lost" | "reacquiring" | "held" | "renewing"),
        "{s:?}"
    );
    let tries = rig.store.calls("list_leases");
    tokio::time::sleep(TTL).await;
    assert!(rig.store.calls("list_leases") + rig.store.calls("renew_lease") > tries);
    rig.store.set_available(true);
    let s = rig
        .wait("held again", |s| s.lease == "held" && s.watch == "watching")
        .await;
    assert_eq!(s.subnet, subnet);
    rig.until("our lease is in the store again", |r| {
        r.store.leases().iter().any(|l| l.subnet == subnet)
    })
    .await;
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stops_promptly_in_every_state() {
    // Held and watching.
    let rig = Rig::start(MemoryStore::with_config(config())).await;
    rig.stop().await;

    // Renewing, with the renewal hanging.
    let mut rig = Rig::start(MemoryStore::with_config(config())).await;
    rig.store.set_silent(true);
    rig.wait("renewing", |s| s.lease == "renewing").await;
    rig.stop().await;

    // Re-acquiring, with the re-acquire hanging.
    let mut rig = Rig::start(MemoryStore::with_config(config())).await;
    let subnet = rig.status.borrow().subnet;
    rig.store.set_silent(true);
    rig.store.expire(subnet);
    rig.wait("reacquiring", |s| s.lease == "reacquiring").await;
    rig.stop().await;

    // Lost, waiting to retry, and the watch waiting to re-watch.
    let mut rig = Rig::start(MemoryStore::with_config(config())).await;
    let subnet = rig.status.borrow().subnet;
    rig.store.expire(subnet);
    rig.store.set_available(false);
    rig.wait("lost and rewatch", |s| {
        s.lease == "lost" || s.watch == "rewatch"
    })
    .await;
    rig.stop().await;

    // Relisting, with the list hanging.
    let mut rig = Rig::start(MemoryStore::with_config(config())).await;
    rig.store.set_available(false);
    rig.wait("rewatch", |s| s.watch == "rewatch").await;
    rig.store.compact();
    rig.store.set_silent(true);
    rig.store.set_available(true);
    tokio::time::sleep(Duration::from_secs(60)).await;
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn start_waits_for_the_network_config_and_can_be_stopped() {
    let store = MemoryStore::new();
    let dir = tempfile::tempdir().unwrap();
    let agent_opts = opts(dir.path(), Arc::new(Telemetry::new()));
    let (tx, rx) = oneshot::channel::<()>();
    let mut stop = Box::pin(async move {
        let _ = rx.await;
    });
    let writer = store.clone();
    let started = tokio::spawn(async move {
        Agent::start(writer, FakeDatapath::default(), agent_opts, &mut stop)
            .await
            .map(|a| a.lease().subnet)
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!started.is_finished(), "no config yet: still waiting");
    assert!(store.calls("get_network_config") >= 2, "retried");
    store.set_config(&config());
    let subnet = started.await.unwrap().unwrap();
    assert!(net("10.244.0.0/16").contains(&subnet));

    // Stopped while still waiting: a clean Interrupted, nothing leased.
    let store = MemoryStore::new();
    let dir = tempfile::tempdir().unwrap();
    let agent_opts = opts(dir.path(), Arc::new(Telemetry::new()));
    let mut stop = Box::pin(tokio::time::sleep(Duration::from_secs(3)));
    let r = Agent::start(
        store.clone(),
        FakeDatapath::default(),
        agent_opts,
        &mut stop,
    )
    .await;
    assert!(matches!(r, Err(AgentError::Interrupted)), "{:?}", r.err());
    assert!(store.leases().is_empty());
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn a_bad_config_is_refused_at_start() {
    let store = MemoryStore::new();
    store.set_raw_config(r#"{"Network":"10.244.0.0/33"}"#);
    let dir = tempfile::tempdir().unwrap();
    let agent_opts = opts(dir.path(), Arc::new(Telemetry::new()));
    let mut never = std::pin::pin!(std::future::pending::<()>());
    let r = Agent::start(store, FakeDatapath::default(), agent_opts, &mut never).await;
    match r {
        Err(AgentError::Store(e @ StoreError::BadConfig { .. })) => {
            assert!(e.to_string().contains("config"), "{e}")
        }
        other => panic!("expected a bad-config error, got {:?}", other.err()),
    }
}

#[test]
fn fake_kernel_round_trips_every_op() {
    // The fake must apply ops the way the diff expects, or the lifecycle
    // tests above would converge for the wrong reason.
    let dp = FakeDatapath::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let dev = DevIndex {
        vxlan: Some(10),
        vxlan6: None,
        underlay: 2,
        wireguard: None,
    };
    let leases = vec![Lease {
        subnet: net("10.244.5.0/24"),
        ipv6_subnet: None,
        attrs: peer_attrs(21),
        lease_id: None,
        ttl_remaining: None,
    }];
    let local = Local {
        network: net("10.244.0.0/16"),
        subnet: net("10.244.1.0/24"),
        subnet6: None,
        underlay: "192.0.2.10/24".parse().unwrap(),
        mode: crate::reconcile::Mode::Vxlan {
            direct_routing: false,
        },
        v6_tunnel: false,
    };
    let desired = desired_state(&remote_nodes(&local, &leases).0);
    rt.block_on(async {
        for op in diff(&desired, &dp.read_state(&dev).await.unwrap()) {
            dp.apply(&dev, &op).await.unwrap();
        }
        assert_eq!(dp.read_state(&dev).await.unwrap(), desired);
        for op in diff(&KernelState::default(), &desired) {
            dp.apply(&dev, &op).await.unwrap();
        }
        assert_eq!(dp.read_state(&dev).await.unwrap(), KernelState::default());
    });
}

/// An agent on `dp` with `--ip-masq` as given, running until the returned
/// sender fires; also its subnet file's directory and its telemetry.
async fn run_masq_agent(
    store: MemoryStore,
    dp: FakeDatapath,
    ip_masq: bool,
) -> (
    tempfile::TempDir,
    Arc<Telemetry>,
    oneshot::Sender<()>,
    JoinHandle<Result<(), AgentError>>,
) {
    let dir = tempfile::tempdir().unwrap();
    let telemetry = Arc::new(Telemetry::new());
    let agent_opts = AgentConfig {
        ip_masq,
        ..opts(dir.path(), telemetry.clone())
    };
    let mut never = std::pin::pin!(std::future::pending::<()>());
    let agent = Agent::start(store, dp, agent_opts, &mut never)
        .await
        .unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(agent.run(Box::pin(async move {
        let _ = rx.await;
    })));
    (dir, telemetry, tx, task)
}

fn ipmasq_line(dir: &tempfile::TempDir) -> String {
    let text = std::fs::read_to_string(dir.path().join("subnet.env")).unwrap();
    text.lines()
        .find(|l| l.starts_with("TWILL_IPMASQ="))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(start_paused = true)]
async fn masquerade_that_cannot_be_installed_is_unready_and_not_claimed() {
    let store = MemoryStore::with_config(config());
    let dp = FakeDatapath::default();
    dp.lock().fail_masq = true;
    let (dir, telemetry, stop, task) = run_masq_agent(store, dp.clone(), true).await;
    assert_eq!(ipmasq_line(&dir), "TWILL_IPMASQ=false");
    assert_eq!(
        telemetry.not_ready_reason(),
        Some("ip-masq rules cannot be installed (see the log)")
    );

    // Positive control: once nf_tables works, the next resync installs the
    // rules, the file claims them and the node is ready.
    dp.lock().fail_masq = false;
    tokio::time::sleep(RESYNC + Duration::from_secs(1)).await;
    for _ in 0..2000 {
        if ipmasq_line(&dir) == "TWILL_IPMASQ=true" && telemetry.not_ready_reason().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ipmasq_line(&dir), "TWILL_IPMASQ=true");
    assert_eq!(telemetry.not_ready_reason(), None);
    assert!(dp.lock().masq_tables);

    // And when they break again, both follow.
    dp.lock().fail_masq = true;
    tokio::time::sleep(RESYNC + Duration::from_secs(1)).await;
    for _ in 0..2000 {
        if ipmasq_line(&dir) == "TWILL_IPMASQ=false" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(ipmasq_line(&dir), "TWILL_IPMASQ=false");
    assert!(telemetry.not_ready_reason().is_some());
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_start_without_ip_masq_removes_the_tables_of_an_earlier_run() {
    let store = MemoryStore::with_config(config());
    let dp = FakeDatapath::default();
    // With the flag: tables installed, nothing removed.
    let (dir, telemetry, stop, task) = run_masq_agent(store.clone(), dp.clone(), true).await;
    assert_eq!(ipmasq_line(&dir), "TWILL_IPMASQ=true");
    assert_eq!(telemetry.not_ready_reason(), None);
    assert!(dp.lock().masq_tables);
    assert_eq!(dp.lock().masq_removals, 0);
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    // Restarted without it: the tables go, once.
    let (dir, telemetry, stop, task) = run_masq_agent(store, dp.clone(), false).await;
    assert!(
        !dp.lock().masq_tables,
        "the tables of the earlier run stayed"
    );
    assert_eq!(dp.lock().masq_removals, 1);
    assert_eq!(ipmasq_line(&dir), "TWILL_IPMASQ=false");
    assert_eq!(telemetry.not_ready_reason(), None);
    tokio::time::sleep(RESYNC * 2 + Duration::from_secs(1)).await;
    assert_eq!(dp.lock().masq_removals, 1, "removed again at a resync");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

/// Starts an agent on `dp` with `opts` changed by `change`; returns the
/// outcome of the start and the subnet file's path.
async fn start_on(
    store: MemoryStore,
    dp: FakeDatapath,
    change: impl FnOnce(&mut AgentConfig),
) -> (
    Result<Agent<MemoryStore, FakeDatapath>, AgentError>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), Arc::new(Telemetry::new()));
    change(&mut o);
    let mut never = std::pin::pin!(std::future::pending::<()>());
    (Agent::start(store, dp, o, &mut never).await, dir)
}

#[tokio::test(start_paused = true)]
async fn a_device_holding_our_vni_is_refused_before_anything_is_made() {
    let store = MemoryStore::with_config(config());
    let dp = FakeDatapath::default();
    dp.lock().conflict = Some("flannel.1".into());
    let (r, dir) = start_on(store.clone(), dp.clone(), |_| {}).await;
    let e = r.err().expect("refused");
    assert!(e.is_config(), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("flannel.1") && msg.contains("ip link del flannel.1"),
        "{msg}"
    );
    // Nothing leased, no device made, no sysctl written, no subnet file.
    assert!(store.leases().is_empty());
    let k = dp.lock();
    assert_eq!(k.ensure_calls, 0);
    assert!(k.forwarding.is_empty());
    assert!(!dir.path().join("subnet.env").exists());
}

#[tokio::test(start_paused = true)]
async fn forwarding_is_turned_on_at_start_unless_told_not_to() {
    let dp = FakeDatapath::default();
    let (r, _dir) = start_on(MemoryStore::with_config(config()), dp.clone(), |_| {}).await;
    assert!(r.is_ok());
    assert_eq!(dp.lock().forwarding, vec![false], "IPv4 only");

    let dual = NetworkConfig::parse(
        br#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let dp = FakeDatapath::default();
    let (r, _dir) = start_on(MemoryStore::with_config(dual), dp.clone(), |_| {}).await;
    assert!(r.is_ok(), "{:?}", r.err());
    assert_eq!(dp.lock().forwarding, vec![true], "IPv6 as well");

    let dp = FakeDatapath::default();
    let (r, _dir) = start_on(MemoryStore::with_config(config()), dp.clone(), |o| {
        o.set_forwarding = false
    })
    .await;
    assert!(r.is_ok());
    assert!(dp.lock().forwarding.is_empty(), "--no-set-forwarding");
}

#[tokio::test(start_paused = true)]
async fn a_lowered_bridge_mtu_is_put_back() {
    let mut rig = Rig::fresh().await;
    // VXLAN over a 1500 underlay: pods get 1450, and so does the bridge.
    assert_eq!(rig.dp.lock().bridge_mtu, Some(1450));
    // A pod's port (or a hand) lowers it; the next pass restores it.
    rig.dp.lock().bridge_mtu = Some(1400);
    rig.dp.signal(LinkSignal::Changed);
    rig.until("the bridge MTU is back", |r| {
        r.dp.lock().bridge_mtu == Some(1450)
    })
    .await;
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn etcd_losing_its_data_is_detected_and_our_lease_written_again() {
    let mut rig = Rig::with_peer().await;
    let subnet = rig.status.borrow().subnet;
    let before = rig.status.borrow().revision;
    // A new, empty etcd on the same endpoints: revisions start over.
    rig.store.wipe();
    rig.until("our lease is in the new store", |r| {
        r.store
            .leases()
            .iter()
            .any(|l| l.subnet == subnet && l.attrs.public_ip == OUR_IP)
    })
    .await;
    let s = rig
        .wait("held and watching again", |s| {
            s.lease == "held" && s.watch == "watching"
        })
        .await;
    assert_eq!(s.subnet, subnet, "same subnet, never renumbered");
    assert!(s.revision < before, "watching the new store's revisions");
    assert_eq!(rig.telemetry.store_resets.get(), 1);
    assert_eq!(rig.telemetry.not_ready_reason(), None);
    assert_eq!(rig.subnet_in_file(), Some(subnet));
    // The peer is gone with the data: its entries go too.
    rig.until("the vanished peer is unrouted", |r| {
        !r.dp.has_route("10.244.5.0/24")
    })
    .await;
    // The watch follows the new store: a node joining now is programmed.
    peer(&rig.store, "10.244.6.0/24", 22).await;
    rig.until("a node joining after the wipe is routed", |r| {
        r.dp.has_route("10.244.6.0/24")
    })
    .await;
    rig.stop().await;
}

#[test]
fn readiness_says_so_while_recovering_from_a_reset() {
    let t = Telemetry::new();
    t.set_lease_held(true);
    t.set_subnet_file_written(true);
    t.set_converged(true);
    assert_eq!(t.not_ready_reason(), None);
    t.set_store_reset(true);
    assert!(t
        .not_ready_reason()
        .is_some_and(|r| r.contains("etcd lost")));
    t.set_store_reset(false);
    assert_eq!(t.not_ready_reason(), None);
}

#[tokio::test(start_paused = true)]
async fn garbage_on_our_key_is_overwritten_and_the_subnet_kept() {
    let mut rig = Rig::fresh().await;
    let subnet = rig.status.borrow().subnet;
    let key = subnet_allocator::subnet_key(subnet);
    rig.store.put_raw(&key, "{not json");
    rig.until("our value is back under our key", |r| {
        r.store.raw_entries().get(&key).is_some_and(|(v, _)| {
            LeaseAttrs::parse(v.as_bytes()).is_ok_and(|a| a.public_ip == OUR_IP)
        })
    })
    .await;
    let s = rig.wait("held", |s| s.lease == "held").await;
    assert_eq!(s.subnet, subnet, "never renumbered for garbage");
    assert_eq!(rig.subnet_in_file(), Some(subnet));
    assert_eq!(rig.store.leases().len(), 1, "{:?}", rig.store.raw_entries());
    rig.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_second_node_with_our_public_ip_is_refused_and_the_first_unaffected() {
    let store = MemoryStore::with_config(config());
    let mut first = Rig::start(store.clone()).await;
    let held = first.store.leases();
    assert_eq!(held.len(), 1);
    // Another machine, misconfigured with the same --public-ip.
    let dir = tempfile::tempdir().unwrap();
    let mut second = opts(dir.path(), Arc::new(Telemetry::new()));
    second.node_name = Some("node-b".into());
    let mut never = std::pin::pin!(std::future::pending::<()>());
    let r = Agent::start(store.clone(), FakeDatapath::default(), second, &mut never).await;
    let e = match r {
        Err(AgentError::Store(e)) => e,
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a second node with our public IP started"),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("192.0.2.10")
            && msg.contains(&held[0].subnet.to_string())
            && msg.contains("node-a"),
        "{msg}"
    );
    assert!(!dir.path().join("subnet.env").exists(), "nothing published");
    // The first node's lease is untouched and still renews.
    assert_eq!(store.leases()[0].lease_id, held[0].lease_id);
    let renewals = store.calls("renew_lease");
    tokio::time::sleep(TTL).await;
    assert!(store.calls("renew_lease") > renewals);
    assert_eq!(store.leases().len(), 1);
    let s = first.wait("held", |s| s.lease == "held").await;
    assert_eq!(s.subnet, held[0].subnet);
    first.stop().await;
}

#[tokio::test(start_paused = true)]
async fn unusable_entries_are_counted_as_skipped_leases() {
    let store = MemoryStore::with_config(config());
    store.put_raw("10.244.9.0-24", "{garbage");
    store.put_raw("not-a-subnet", "{}");
    let mut rig = Rig::start(store).await;
    let skipped = |r: &Rig| r.telemetry.skipped_leases.get();
    assert_eq!(skipped(&rig), 2, "two junk entries at start");
    // Junk arriving through the watch counts too, and leaves with its key.
    rig.store.put_raw("10.244.8.0-24", "[1,2]");
    rig.until("the new junk is counted", |r| skipped(r) == 3)
        .await;
    // Its holder writes a good value over it.
    rig.store.put_lease_raw(Lease {
        subnet: net("10.244.8.0/24"),
        ipv6_subnet: None,
        attrs: peer_attrs(28),
        lease_id: None,
        ttl_remaining: None,
    });
    rig.until("the subnet now holds a lease", |r| {
        skipped(r) == 2 && r.dp.has_route("10.244.8.0/24")
    })
    .await;
    // A well-formed lease that becomes junk is forgotten and counted.
    rig.store.put_raw("10.244.8.0-24", "junk");
    rig.until("the junked lease is unrouted and counted", |r| {
        skipped(r) == 3 && !r.dp.has_route("10.244.8.0/24")
    })
    .await;
    rig.store.delete_lease(net("10.244.9.0/24")).await.unwrap();
    rig.until("deleted junk is no longer counted", |r| skipped(r) == 2)
        .await;
    rig.stop().await;
}

mod dual_probe;
mod ipv6_only;
mod underlay_follow;
