//! A fast `ping` running in the background inside a namespace while a test
//! disturbs the cluster, and the parse of its summary: how many packets
//! went out and how many came back.

use std::net::IpAddr;
use std::process::{Command, Stdio};

use crate::cmd::ChildGuard;
use crate::error::{HarnessError, Result};
use crate::netns::Netns;

/// Sent and received counts of a finished ping run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingSummary {
    pub transmitted: u32,
    pub received: u32,
}

impl PingSummary {
    /// Packets that got no reply.
    pub fn lost(&self) -> u32 {
        self.transmitted.saturating_sub(self.received)
    }
}

/// Parses ping's `N packets transmitted, M received, ...` line.
pub fn parse_ping_summary(out: &str) -> Result<PingSummary> {
    let bad = |reason: &str| HarnessError::Parse {
        what: "ping summary".into(),
        reason: format!("{reason} in {out:?}"),
    };
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| bad("no 'packets transmitted' line"))?;
    let mut nums = line
        .split(',')
        .map(|part| part.split_whitespace().next().and_then(|n| n.parse().ok()));
    let transmitted = nums
        .next()
        .flatten()
        .ok_or_else(|| bad("no transmitted count"))?;
    let received = nums
        .next()
        .flatten()
        .ok_or_else(|| bad("no received count"))?;
    Ok(PingSummary {
        transmitted,
        received,
    })
}

/// A ping started with [`Pinger::start`]; collect it with [`Pinger::finish`].
/// Dropping it unfinished kills it.
#[derive(Debug)]
pub struct Pinger {
    child: ChildGuard,
}

impl Pinger {
    /// Starts `ping -c count -i interval_ms/1000 target` inside `ns`
    /// (intervals below 200 ms need root, which the netns tests have);
    /// `target` of either family.
    pub fn start(
        ns: &Netns,
        target: impl Into<IpAddr>,
        count: u32,
        interval_ms: u32,
    ) -> Result<Pinger> {
        let interval = format!("{}.{:03}", interval_ms / 1000, interval_ms % 1000);
        let c = ns.command(
            "ping",
            [
                "-n",
                "-q",
                "-c",
                &count.to_string(),
                "-i",
                &interval,
                "-W",
                "1",
                &target.into().to_string(),
            ],
        );
        Ok(Pinger {
            child: spawn_piped(ns, c)?,
        })
    }

    /// Waits for the ping to end and returns its counts (a run with losses
    /// exits non-zero; that is reported in the counts, not as an error).
    pub fn finish(self) -> Result<PingSummary> {
        let out = self.child.wait_with_output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        parse_ping_summary(&text)
    }
}

/// Starts `c` (a command inside `ns`, like the ping loops of this module and
/// `probe`) in the background with its stdout and stderr piped, for
/// [`ChildGuard::wait_with_output`].
pub(crate) fn spawn_piped(ns: &Netns, mut c: Command) -> Result<ChildGuard> {
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    ns.spawn(&mut c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts() {
        let s = parse_ping_summary(
            "PING 10.244.1.2 (10.244.1.2) 56(84) bytes of data.\n\n--- 10.244.1.2 ping statistics ---\n500 packets transmitted, 497 received, 0.6% packet loss, time 5012ms\n",
        )
        .unwrap();
        assert_eq!(
            s,
            PingSummary {
                transmitted: 500,
                received: 497
            }
        );
        assert_eq!(s.lost(), 3);
        let e = parse_ping_summary(
            "3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2ms",
        )
        .unwrap();
        assert_eq!(e.lost(), 3);
        assert!(parse_ping_summary("ping: unknown host").is_err());
    }
}
