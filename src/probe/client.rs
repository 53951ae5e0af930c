//! The other end of `/peers`: `twilld status --agent ADDR` reads the local
//! agent's view of each peer and shows it as a column.

use std::net::SocketAddr;

use ipnet::{Ipv4Net, Ipv6Net};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::PeersView;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("asking {addr} for /peers: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("asking {addr} for /peers: no answer within {0:?}", TIMEOUT)]
    Timeout { addr: SocketAddr },
    #[error("{addr} answered /peers with {status:?}")]
    Status { addr: SocketAddr, status: String },
    #[error("{addr} answered /peers with JSON that is not a peer list: {source}")]
    Json {
        addr: SocketAddr,
        source: serde_json::Error,
    },
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET /peers` from an agent's health address.
pub async fn fetch(addr: SocketAddr) -> Result<PeersView, FetchError> {
    let io = |source| FetchError::Io { addr, source };
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        s.write_all(b"GET /peers HTTP/1.1\r\nhost: twilld\r\nconnection: close\r\n\r\n")
            .await
            .map_err(io)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(io)?;
        Ok::<_, FetchError>(raw)
    };
    let raw = tokio::time::timeout(TIMEOUT, get)
        .await
        .map_err(|_| FetchError::Timeout { addr })??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.lines().next().unwrap_or("").to_string();
    if !status.contains(" 200 ") {
        return Err(FetchError::Status { addr, status });
    }
    serde_json::from_str(body).map_err(|source| FetchError::Json { addr, source })
}

/// The subnet a lease's node is reported under in `/peers`, from the
/// lease's `(subnet, ipv6_subnet)`: its IPv6 subnet when the lease is
/// IPv6-only (its IPv4 part is `0.0.0.0/0`), else its IPv4 subnet.
pub fn peer_key((subnet, ipv6_subnet): (Ipv4Net, Option<Ipv6Net>)) -> String {
    match ipv6_subnet.filter(|_| twill_contract::lease_key::is_ipv6_only(subnet, ipv6_subnet)) {
        Some(s6) => s6.to_string(),
        None => subnet.to_string(),
    }
}

/// The subnet a dual-stack lease's IPv6 pod path (its second target) is
/// reported under in `/peers`: its IPv6 subnet; `None` for a lease without
/// one and for an IPv6-only lease (whose only target is that subnet, see
/// [`peer_key`]).
pub fn peer_key6((subnet, ipv6_subnet): (Ipv4Net, Option<Ipv6Net>)) -> Option<String> {
    ipv6_subnet
        .filter(|_| !twill_contract::lease_key::is_ipv6_only(subnet, ipv6_subnet))
        .map(|s6| s6.to_string())
}

/// The `PROBE` column of a lease's row in `twilld status`: the
/// [`column()`] of its target; for a dual-stack lease followed by the
/// verdict on its IPv6 pod path: `ok 0.4ms, v6 UNREACHABLE`.
pub fn row_column(view: &PeersView, lease: (Ipv4Net, Option<Ipv6Net>)) -> String {
    let first = column(view, &peer_key(lease));
    match peer_key6(lease) {
        Some(s6) => format!("{first}, v6 {}", column(view, &s6)),
        None => first,
    }
}

/// The status column for one peer: `ok 0.4ms`, `UNREACHABLE`,
/// `MTU-BLACKHOLE`, `probing` before a verdict, `-` when the agent does not
/// know the peer.
pub fn column(view: &PeersView, subnet: &str) -> String {
    let Some(p) = view.peers.iter().find(|p| p.subnet == subnet) else {
        return "-".into();
    };
    match (p.reachable, p.mtu_ok) {
        (None, _) => "probing".into(),
        (Some(false), _) => "UNREACHABLE".into(),
        (Some(true), Some(false)) => "MTU-BLACKHOLE".into(),
        (Some(true), _) => match p.rtt_seconds {
            Some(rtt) => format!("ok {:.1}ms", rtt * 1000.0),
            None => "ok".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::super::PeerReport;
    use super::*;

    fn report(subnet: &str, reachable: Option<bool>, mtu_ok: Option<bool>) -> PeerReport {
        PeerReport {
            subnet: subnet.into(),
            public_ip: "192.0.2.2".into(),
            reachable,
            mtu_ok,
            rtt_seconds: Some(0.00042),
            last_success: None,
            last_failure: None,
            rounds: 3,
        }
    }

    #[test]
    fn the_column_says_what_is_wrong() {
        let view = PeersView {
            peers: vec![
                report("10.244.1.0/24", Some(true), Some(true)),
                report("10.244.2.0/24", Some(false), Some(false)),
                report("10.244.3.0/24", Some(true), Some(false)),
                report("10.244.4.0/24", None, None),
            ],
            ..Default::default()
        };
        assert_eq!(column(&view, "10.244.1.0/24"), "ok 0.4ms");
        assert_eq!(column(&view, "10.244.2.0/24"), "UNREACHABLE");
        assert_eq!(column(&view, "10.244.3.0/24"), "MTU-BLACKHOLE");
        assert_eq!(column(&view, "10.244.4.0/24"), "probing");
        assert_eq!(column(&view, "10.244.5.0/24"), "-");
    }

    #[test]
    fn an_ipv6_only_lease_is_looked_up_by_its_ipv6_subnet() {
        let lease =
            |v4: &str, v6: Option<&str>| (v4.parse().unwrap(), v6.map(|s| s.parse().unwrap()));
        let v6_only = lease("0.0.0.0/0", Some("fd00:10:244:2::/64"));
        assert_eq!(peer_key(v6_only), "fd00:10:244:2::/64");
        let dual = lease("10.244.2.0/24", Some("fd00:10:244:2::/64"));
        assert_eq!(peer_key(dual), "10.244.2.0/24");
        assert_eq!(peer_key(lease("10.244.3.0/24", None)), "10.244.3.0/24");
        let view = PeersView {
            peers: vec![report("fd00:10:244:2::/64", Some(true), Some(false))],
            ..Default::default()
        };
        assert_eq!(column(&view, &peer_key(v6_only)), "MTU-BLACKHOLE");
    }

    #[test]
    fn a_dual_stack_lease_shows_both_verdicts() {
        let lease =
            |v4: &str, v6: Option<&str>| (v4.parse().unwrap(), v6.map(|s| s.parse().unwrap()));
        let dual = lease("10.244.2.0/24", Some("fd00:10:244:2::/64"));
        assert_eq!(peer_key6(dual).as_deref(), Some("fd00:10:244:2::/64"));
        assert_eq!(peer_key6(lease("10.244.3.0/24", None)), None);
        let v6_only = lease("0.0.0.0/0", Some("fd00:10:244:4::/64"));
        assert_eq!(peer_key6(v6_only), None, "one target, under peer_key");
        let view = PeersView {
            peers: vec![
                report("10.244.2.0/24", Some(true), Some(true)),
                report("fd00:10:244:2::/64", Some(false), Some(false)),
                report("10.244.3.0/24", Some(true), Some(false)),
                report("fd00:10:244:4::/64", Some(true), Some(true)),
            ],
            ..Default::default()
        };
        assert_eq!(row_column(&view, dual), "ok 0.4ms, v6 UNREACHABLE");
        assert_eq!(
            row_column(&view, lease("10.244.3.0/24", None)),
            "MTU-BLACKHOLE"
        );
        assert_eq!(row_column(&view, v6_only), "ok 0.4ms");
        // A dual-stack lease whose IPv6 path the agent does not probe (it
        // is not dual-stack itself, or has no IPv6 route to it).
        let other = lease("10.244.5.0/24", Some("fd00:10:244:5::/64"));
        assert_eq!(row_column(&view, other), "-, v6 -");
    }

    #[tokio::test]
    async fn peers_are_fetched_over_http() {
        let t = std::sync::Arc::new(crate::telemetry::Telemetry::new());
        let addr = crate::health::serve("127.0.0.1:0".parse().unwrap(), t)
            .await
            .unwrap();
        let view = fetch(addr).await.unwrap();
        assert!(!view.probing, "no prober runs here");
        assert!(view.peers.is_empty());
    }
}
