//! What the prober knows about each peer, and the pure rules that turn
//! probe outcomes into that knowledge: a peer is lost after
//! [`MISSES_TO_FAIL`] unanswered small probes in a row and back after one
//! answer; its MTU is too small after as many unanswered full-size probes
//! while small ones are answered. Also which peers a round probes.

use std::time::{Duration, SystemTime};

use super::Target;

/// Unanswered probes in a row that make a verdict: one lost packet is
/// noise, two in a row a broken path. With a peer probed every interval,
/// a failure shows within three intervals.
pub const MISSES_TO_FAIL: u32 = 2;

/// What one round found for one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// The small probe: its round-trip time, or why it failed.
    pub small: Result<Duration, String>,
    /// The full-size probe at the pod MTU with don't-fragment.
    pub big: Result<(), String>,
}

/// A change worth one WARN line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Lost,
    Back,
    MtuTooSmall,
    MtuFine,
}

/// One peer's health as far as probes tell.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerState {
    pub target: Target,
    /// `None` until a verdict.
    pub reachable: Option<bool>,
    /// Whether full-size probes pass; `None` until a verdict.
    pub mtu_ok: Option<bool>,
    misses: u32,
    big_misses: u32,
    /// Round-trip time of the last answered small probe.
    pub rtt: Option<Duration>,
    pub last_success: Option<SystemTime>,
    pub last_failure: Option<String>,
    /// Rounds this peer took part in.
    pub rounds: u64,
}

impl PeerState {
    pub fn new(target: Target) -> Self {
        PeerState {
            target,
            reachable: None,
            mtu_ok: None,
            misses: 0,
            big_misses: 0,
            rtt: None,
            last_success: None,
            last_failure: None,
            rounds: 0,
        }
    }

    /// Whether the last round left doubt (a miss without a verdict yet):
    /// such a peer is probed again next round, before the rotation.
    pub fn suspect(&self) -> bool {
        (self.misses > 0 && self.reachable != Some(false))
            || (self.big_misses > 0 && self.mtu_ok != Some(false))
    }

    /// Whether full-size packets get through now: `false` while the peer is
    /// unreachable, whatever the last full-size verdict was.
    pub fn mtu_ok_now(&self) -> Option<bool> {
        match self.reachable {
            Some(false) => Some(false),
            _ => self.mtu_ok,
        }
    }

    /// Takes one round's outcome; returns the transitions it made.
    pub fn record(&mut self, round: Round, now: SystemTime) -> Vec<Transition> {
        let mut out = Vec::new();
        self.rounds += 1;
        match round.small {
            Ok(rtt) => {
                self.misses = 0;
                self.rtt = Some(rtt);
                self.last_success = Some(now);
                if self.reachable == Some(false) {
                    out.push(Transition::Back);
                }
                self.reachable = Some(true);
            }
            Err(why) => {
                self.misses += 1;
                self.last_failure = Some(why);
                if self.misses >= MISSES_TO_FAIL && self.reachable != Some(false) {
                    self.reachable = Some(false);
                    out.push(Transition::Lost);
                }
                // Without small answers the full-size probe says nothing.
                return out;
            }
        }
        match round.big {
            Ok(()) => {
                self.big_misses = 0;
                if self.mtu_ok == Some(false) {
                    out.push(Transition::MtuFine);
                }
                self.mtu_ok = Some(true);
            }
            Err(why) => {
                self.big_misses += 1;
                self.last_failure = Some(why);
                if self.big_misses >= MISSES_TO_FAIL && self.mtu_ok != Some(false) {
                    self.mtu_ok = Some(false);
                    out.push(Transition::MtuTooSmall);
                }
            }
        }
        out
    }
}

/// The peers (indices into `peers`) one round probes: the suspects first,
/// then the rotation from `cursor` on, at most `cap` in all, none that is
/// `busy` (probes in flight). Returns them and the cursor for the next
/// round. Every peer is probed at least once every
/// `ceil(len / (cap - suspects))` rounds.
pub fn pick(
    peers: &[PeerState],
    cursor: usize,
    cap: usize,
    busy: impl Fn(&PeerState) -> bool,
) -> (Vec<usize>, usize) {
    let len = peers.len();
    if len == 0 || cap == 0 {
        return (Vec::new(), cursor);
    }
    let mut chosen: Vec<usize> = (0..len)
        .filter(|&i| peers[i].suspect() && !busy(&peers[i]))
        .take(cap)
        .collect();
    let mut taken: Vec<bool> = peers.iter().map(&busy).collect();
    for &i in &chosen {
        taken[i] = true;
    }
    let mut next = cursor % len;
    let mut looked = 0;
    while chosen.len() < cap && looked < len {
        if !taken[next] {
            taken[next] = true;
            chosen.push(next);
        }
        next = (next + 1) % len;
        looked += 1;
    }
    (chosen, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn peer(i: u8) -> PeerState {
        PeerState::new(Target {
            subnet: format!("10.244.{i}.0/24").parse().unwrap(),
            public_ip: Ipv4Addr::new(192, 0, 2, i).into(),
            src: Ipv4Addr::new(10, 244, 0, 0).into(),
            dst: Ipv4Addr::new(10, 244, i, 0).into(),
        })
    }

    const T: SystemTime = SystemTime::UNIX_EPOCH;

    fn ok() -> Round {
        Round {
            small: Ok(Duration::from_millis(1)),
            big: Ok(()),
        }
    }
    fn lost() -> Round {
        Round {
            small: Err("no reply".into()),
            big: Err("no reply".into()),
        }
    }
    fn blackhole() -> Round {
        Round {
            small: Ok(Duration::from_millis(1)),
            big: Err("no reply to the full-size probe".into()),
        }
    }

    #[test]
    fn a_peer_is_lost_after_two_misses_and_back_after_one_answer_each_said_once() {
        let mut p = peer(1);
        assert_eq!(p.record(ok(), T), vec![]);
        assert_eq!((p.reachable, p.mtu_ok), (Some(true), Some(true)));
        assert_eq!(p.record(lost(), T), vec![], "one miss is noise");
        assert!(p.suspect());
        assert_eq!(p.reachable, Some(true));
        assert_eq!(p.record(lost(), T), vec![Transition::Lost]);
        assert_eq!(p.record(lost(), T), vec![], "said once");
        assert_eq!(p.mtu_ok_now(), Some(false));
        assert!(!p.suspect());
        assert_eq!(p.last_failure.as_deref(), Some("no reply"));
        assert_eq!(p.record(ok(), T), vec![Transition::Back]);
        assert_eq!(p.record(ok(), T), vec![]);
        assert_eq!(p.mtu_ok_now(), Some(true));
        assert_eq!(p.rounds, 6);
    }

    #[test]
    fn an_mtu_blackhole_is_not_unreachable() {
        let mut p = peer(1);
        p.record(ok(), T);
        assert_eq!(p.record(blackhole(), T), vec![]);
        assert_eq!(p.record(blackhole(), T), vec![Transition::MtuTooSmall]);
        assert_eq!(p.record(blackhole(), T), vec![]);
        assert_eq!((p.reachable, p.mtu_ok_now()), (Some(true), Some(false)));
        assert_eq!(p.record(ok(), T), vec![Transition::MtuFine]);
    }

    #[test]
    fn a_peer_never_answering_is_lost_from_the_start() {
        let mut p = peer(1);
        assert_eq!(p.record(lost(), T), vec![]);
        assert_eq!(p.reachable, None);
        assert_eq!(p.record(lost(), T), vec![Transition::Lost]);
        assert_eq!(p.record(ok(), T), vec![Transition::Back]);
    }

    #[test]
    fn every_peer_is_picked_within_the_documented_rounds() {
        let peers: Vec<PeerState> = (0..10).map(peer).collect();
        let mut seen = [0u32; 10];
        let mut cursor = 0;
        for _ in 0..3 {
            let (batch, next) = pick(&peers, cursor, 4, |_| false);
            assert!(batch.len() <= 4);
            for i in batch {
                seen[i] += 1;
            }
            cursor = next;
        }
        // ceil(10 / 4) = 3 rounds cover everyone.
        assert!(seen.iter().all(|&n| n >= 1), "{seen:?}");
        let (all, _) = pick(&peers, 7, 64, |_| false);
        assert_eq!(all.len(), 10, "a cap above the peer count takes all once");
    }

    #[test]
    fn suspects_come_first() {
        let mut peers: Vec<PeerState> = (0..10).map(peer).collect();
        peers[9].record(lost(), T);
        let (batch, next) = pick(&peers, 0, 3, |_| false);
        assert_eq!(batch, vec![9, 0, 1]);
        assert_eq!(next, 2);
        assert_eq!(pick(&[], 5, 3, |_| false), (vec![], 5));
    }

    #[test]
    fn peers_with_probes_in_flight_are_left_out() {
        let mut peers: Vec<PeerState> = (0..4).map(peer).collect();
        peers[1].record(lost(), T);
        let second: std::net::IpAddr = Ipv4Addr::new(10, 244, 1, 0).into();
        let busy = |p: &PeerState| p.target.subnet.addr() <= second;
        let (batch, next) = pick(&peers, 0, 8, busy);
        assert_eq!(batch, vec![2, 3], "busy suspects wait too");
        assert_eq!(next, 0);
    }
}
