//! The WireGuard cross-platform userspace API (the text protocol `wg` and
//! wireguard-go speak on a unix socket): `get=1` reads the device, `set=1`
//! changes it; each request and answer ends with an empty line, answers
//! with `errno=N`. twill speaks the subset it needs, in both directions:
//! the helper process serves it, the agent is its client.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use super::key::Key;

/// One peer as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub public_key: Key,
    pub endpoint: Option<SocketAddr>,
    /// Sorted (the order does not matter to WireGuard).
    pub allowed_ips: Vec<IpNet>,
    /// Seconds; 0 is off.
    pub keepalive: u16,
}

/// One peer as the device reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub config: PeerConfig,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Since the last completed handshake, if there was one.
    pub since_handshake: Option<Duration>,
}

/// The device as `get=1` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    pub private_key: Option<Key>,
    pub listen_port: u16,
    pub peers: Vec<PeerStatus>,
    /// twill's addition: datagrams to the port that were dropped because
    /// they did not authenticate (forged, replayed, from an unknown key).
    pub rejected_packets: u64,
}

/// One change to a peer, as `set=1` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerChange {
    Remove(Key),
    /// Creates or updates the peer; its allowed IPs are replaced.
    Set(PeerConfig),
}

impl PeerChange {
    pub fn key(&self) -> Key {
        match self {
            PeerChange::Remove(k) => *k,
            PeerChange::Set(p) => p.public_key,
        }
    }
}

/// A `set=1` request: device fields first, then peers.
pub fn format_set(
    private_key: Option<&Key>,
    listen_port: Option<u16>,
    peers: &[PeerChange],
) -> String {
    let mut s = String::from("set=1\n");
    if let Some(k) = private_key {
        s.push_str(&format!("private_key={}\n", k.to_hex()));
    }
    if let Some(p) = listen_port {
        s.push_str(&format!("listen_port={p}\n"));
    }
    for change in peers {
        s.push_str(&format!("public_key={}\n", change.key().to_hex()));
        match change {
            PeerChange::Remove(_) => s.push_str("remove=true\n"),
            PeerChange::Set(p) => {
                if let Some(e) = p.endpoint {
                    s.push_str(&format!("endpoint={e}\n"));
                }
                s.push_str(&format!("persistent_keepalive_interval={}\n", p.keepalive));
                s.push_str("replace_allowed_ips=true\n");
                for ip in &p.allowed_ips {
                    s.push_str(&format!("allowed_ip={ip}\n"));
                }
            }
        }
    }
    s.push('\n');
    s
}

/// Why a UAPI text could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("WireGuard UAPI: {0}")]
pub struct UapiError(pub String);

/// The `key=value` lines of a request or answer, without the empty line.
pub fn lines(text: &str) -> Result<Vec<(&str, &str)>, UapiError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .ok_or_else(|| UapiError(format!("line {l:?} is not key=value")))
        })
        .collect()
}

fn parse_key(v: &str) -> Result<Key, UapiError> {
    Key::from_hex(v).ok_or_else(|| UapiError(format!("{v:?} is not a hex key")))
}

fn parse_num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, UapiError> {
    v.parse()
        .map_err(|_| UapiError(format!("{k}={v:?} is not a number")))
}

/// Reads a `get=1` answer (`errno=0` included).
pub fn parse_get(text: &str) -> Result<DeviceStatus, UapiError> {
    let mut dev = DeviceStatus::default();
    let mut errno = None;
    for (k, v) in lines(text)? {
        let peer = dev.peers.last_mut();
        match (k, peer) {
            ("errno", _) => errno = Some(parse_num::<i64>(k, v)?),
            ("private_key", _) => dev.private_key = Some(parse_key(v)?),
            ("listen_port", _) => dev.listen_port = parse_num(k, v)?,
            ("twill_rejected_packets", _) => dev.rejected_packets = parse_num(k, v)?,
            ("public_key", _) => dev.peers.push(PeerStatus {
                config: PeerConfig {
                    public_key: parse_key(v)?,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    keepalive: 0,
                },
                rx_bytes: 0,
                tx_bytes: 0,
                since_handshake: None,
            }),
            ("endpoint", Some(p)) => p.config.endpoint = Some(parse_num(k, v)?),
            ("allowed_ip", Some(p)) => {
                p.config.allowed_ips.push(parse_num(k, v)?);
                p.config.allowed_ips.sort();
            }
            ("persistent_keepalive_interval", Some(p)) => p.config.keepalive = parse_num(k, v)?,
            ("rx_bytes", Some(p)) => p.rx_bytes = parse_num(k, v)?,
            ("tx_bytes", Some(p)) => p.tx_bytes = parse_num(k, v)?,
            // twill's helper reports the age of the last handshake (the
            // standard key is a wall-clock time).
            ("twill_handshake_age_ms", Some(p)) => {
                p.since_handshake = Some(Duration::from_millis(parse_num(k, v)?))
            }
            _ => {}
        }
    }
    match errno {
        Some(0) => Ok(dev),
        Some(n) => Err(UapiError(format!("the device answered errno={n}"))),
        None => Err(UapiError("the answer has no errno line".into())),
    }
}

/// The errno of a `set=1` answer.
pub fn parse_errno(text: &str) -> Result<(), UapiError> {
    for (k, v) in lines(text)? {
        if k == "errno" {
            return match parse_num::<i64>(k, v)? {
                0 => Ok(()),
                n => Err(UapiError(format!("the device answered errno={n}"))),
            };
        }
    }
    Err(UapiError("the answer has no errno line".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key([b; 32])
    }

    #[test]
    fn set_lists_device_fields_then_each_peer() {
        let p = PeerConfig {
            public_key: key(2),
            endpoint: Some("192.0.2.2:51820".parse().unwrap()),
            allowed_ips: vec![
                "10.244.2.0/24".parse().unwrap(),
                "fd00:1:2::/64".parse().unwrap(),
            ],
            keepalive: 25,
        };
        let s = format_set(
            Some(&key(1)),
            Some(51820),
            &[PeerChange::Set(p), PeerChange::Remove(key(3))],
        );
        let want = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\npublic_key={}\nendpoint=192.0.2.2:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.244.2.0/24\nallowed_ip=fd00:1:2::/64\npublic_key={}\nremove=true\n\n",
            key(1).to_hex(),
            key(2).to_hex(),
            key(3).to_hex()
        );
        assert_eq!(s, want);
    }

    #[test]
    fn get_answer_parses_into_peers() {
        let text = format!(
            "private_key={}\nlisten_port=51820\ntwill_rejected_packets=4\npublic_key={}\nendpoint=[2001:db8::2]:51820\nallowed_ip=fd00:1:2::/64\nallowed_ip=10.244.2.0/24\npersistent_keepalive_interval=0\nrx_bytes=10\ntx_bytes=20\ntwill_handshake_age_ms=1500\nprotocol_version=1\nerrno=0\n\n",
            key(1).to_hex(),
            key(2).to_hex()
        );
        let d = parse_get(&text).unwrap();
        assert_eq!(d.private_key, Some(key(1)));
        assert_eq!((d.listen_port, d.rejected_packets), (51820, 4));
        assert_eq!(d.peers.len(), 1);
        let p = &d.peers[0];
        assert_eq!(
            p.config.endpoint,
            Some("[2001:db8::2]:51820".parse().unwrap())
        );
        assert_eq!(
            p.config.allowed_ips,
            vec![
                "10.244.2.0/24".parse::<IpNet>().unwrap(),
                "fd00:1:2::/64".parse().unwrap()
            ]
        );
        assert_eq!((p.rx_bytes, p.tx_bytes), (10, 20));
        assert_eq!(p.since_handshake, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn errors_are_reported() {
        assert!(parse_get("errno=22\n\n").is_err());
        assert!(parse_get("listen_port=1\n\n").is_err());
        assert!(parse_get("listen_port\nerrno=0\n").is_err());
        assert!(parse_errno("errno=0\n\n").is_ok());
        assert!(parse_errno("errno=-22\n\n").is_err());
    }
}
