//! The `wireguard` backend: pod traffic between nodes goes through an
//! encrypted WireGuard tunnel to each node instead of plain VXLAN.
//!
//! - [`key`]: the node's key pair, kept in a file (mode 0600).
//! - [`peers`]: the peers the tunnel should have, a pure function of the
//!   lease map, and the changes that bring the device there.
//! - [`uapi`]: the WireGuard userspace API (text over a unix socket).
//! - [`device`]: the userspace device (TUN + UDP + boringtun's protocol
//!   core), run by a helper process the agent starts.
//! - [`userspace`]: the agent's side of that helper, behind [`WgDevice`],
//!   the seam where a kernel WireGuard device would plug in.

pub mod device;
pub mod key;
pub mod peers;
pub mod uapi;
pub mod userspace;

use std::future::Future;
use std::path::{Path, PathBuf};

use subnet_allocator::NetworkConfig;

use key::PrivateKey;
use uapi::{DeviceStatus, PeerChange};

/// The tunnel interface's name (flannel's is `flannel-wg`).
pub const DEVICE_NAME: &str = "twill-wg";
/// WireGuard over IPv4 costs 60 bytes per packet (IPv4 20, UDP 8,
/// WireGuard 32); over IPv6, 80.
pub const WIREGUARD_OVERHEAD: u32 = 60;
pub const WIREGUARD6_OVERHEAD: u32 = 80;
/// The key file's name in `--wireguard-dir`.
pub const KEY_FILE: &str = "wireguard.key";

#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// Configuration: the agent refuses to start.
    #[error("WireGuard key file {}: {reason} (--wireguard-dir)", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("WireGuard device: {0}")]
    Helper(String),
    #[error("WireGuard device {socket}: {what}: {source}", socket = socket.display())]
    Io {
        socket: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Uapi(#[from] uapi::UapiError),
}

/// What the agent wants of the tunnel device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgSpec {
    pub name: String,
    pub listen_port: u16,
    pub mtu: u32,
    pub keepalive: u16,
    pub key: PrivateKey,
    /// Holds the key file, the device's UAPI socket and its log.
    pub dir: PathBuf,
    /// Peers are reached over the IPv6 underlay when both ends have one.
    pub ipv6_underlay: bool,
}

impl WgSpec {
    /// Reads (or makes) the node's key in `dir` and says what the device
    /// is; `mtu` is the plan's.
    pub fn load(
        cfg: &NetworkConfig,
        mtu: u32,
        dir: &Path,
        ipv6_underlay: bool,
    ) -> Result<WgSpec, WgError> {
        let path = dir.join(KEY_FILE);
        let (key, made) = key::load_or_create(&path)?;
        if made {
            tracing::info!(path = %path.display(), public_key = %key.public(), "made a new WireGuard key pair");
        } else {
            tracing::info!(path = %path.display(), public_key = %key.public(), "WireGuard key pair");
        }
        Ok(WgSpec {
            name: DEVICE_NAME.to_string(),
            listen_port: cfg.backend.listen_port,
            mtu,
            keepalive: cfg.backend.persistent_keepalive,
            key,
            dir: dir.to_path_buf(),
            ipv6_underlay,
        })
    }

    /// The device's UAPI socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(format!("{}.sock", self.name))
    }
}

/// The WireGuard device as the agent drives it: today the userspace helper
/// ([`userspace::Userspace`]); a kernel device (`ip link add type
/// wireguard`, configured over generic netlink) would be a second
/// implementation, chosen where the kernel has the module.
pub trait WgDevice: Send + Sync {
    /// Makes the device exist, carry our private key and listen on our
    /// port (starting it when it is not running). Idempotent.
    fn ensure(&self, spec: &WgSpec) -> impl Future<Output = Result<(), WgError>> + Send;
    /// The device's peers and counters.
    fn status(&self, spec: &WgSpec) -> impl Future<Output = Result<DeviceStatus, WgError>> + Send;
    /// Applies peer changes, in order.
    fn change(
        &self,
        spec: &WgSpec,
        changes: &[PeerChange],
    ) -> impl Future<Output = Result<(), WgError>> + Send;
}
