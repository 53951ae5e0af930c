//! The subnet file (`/run/twill/subnet.env`): the agent's only message to
//! the CNI plugin. Written atomically (temp file + rename) so the plugin
//! never reads half a file; read back at start to keep the same subnet.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};

#[derive(Debug, thiserror::Error)]
pub enum SubnetFileError {
    #[error("cannot write subnet file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What the agent tells the CNI plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetEnv {
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
    pub mtu: u32,
    pub ip_masq: bool,
    /// The cluster's and this node's IPv6 networks, when dual-stack.
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
}

impl SubnetEnv {
    /// The gateway (bridge) address of the node subnet: its first host.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.subnet)
    }

    pub fn render(&self) -> String {
        let mut out = format!(
            "TWILL_NETWORK={}\nTWILL_SUBNET={}/{}\nTWILL_MTU={}\nTWILL_IPMASQ={}\n",
            self.network,
            self.gateway(),
            self.subnet.prefix_len(),
            self.mtu,
            self.ip_masq
        );
        if let Some((network6, subnet6)) = self.ipv6 {
            out.push_str(&format!(
                "TWILL_IPV6_NETWORK={network6}\nTWILL_IPV6_SUBNET={}/{}\n",
                gateway6_of(subnet6),
                subnet6.prefix_len()
            ));
        }
        out
    }
}

/// The IPv6 gateway (bridge) address of a node's IPv6 subnet: `<net>::1`.
pub fn gateway6_of(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()).saturating_add(1))
}

pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// Writes the file atomically: a temp file in the same directory, fsync,
/// rename over the old one.
pub fn write(path: &Path, env: &SubnetEnv) -> Result<(), SubnetFileError> {
    let err = |source| SubnetFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "subnet.env".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(env.render().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The node subnet recorded in an existing subnet file (twill's or
/// flannel's key), to ask for the same subnet again after a restart. A
/// missing or unreadable file is simply no preference.
pub fn read_previous_subnet(path: &Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_previous_subnet(&text)
}

pub fn parse_previous_subnet(text: &str) -> Option<Ipv4Net> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        if k.trim() != "TWILL_SUBNET" && k.trim() != "FLANNEL_SUBNET" {
            return None;
        }
        let net: Ipv4Net = v.trim().parse().ok()?;
        Some(net.trunc())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            mtu: 1450,
            ip_masq: false,
            ipv6: None,
        }
    }

    #[test]
    fn dual_stack_adds_the_ipv6_keys() {
        let mut e = env();
        e.ipv6 = Some((
            "fd00:10:244::/48".parse().unwrap(),
            "fd00:10:244:3::/64".parse().unwrap(),
        ));
        assert!(e.render().ends_with(
            "TWILL_IPMASQ=false\nTWILL_IPV6_NETWORK=fd00:10:244::/48\nTWILL_IPV6_SUBNET=fd00:10:244:3::1/64\n"
        ));
    }

    #[test]
    fn renders_the_documented_keys() {
        assert_eq!(
            env().render(),
            "TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\nTWILL_MTU=1450\nTWILL_IPMASQ=false\n"
        );
    }

    #[test]
    fn write_then_read_back_the_subnet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/twill/subnet.env");
        write(&path, &env()).unwrap();
        assert_eq!(
            read_previous_subnet(&path),
            Some("10.244.3.0/24".parse().unwrap())
        );
        // No temp file left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn previous_subnet_accepts_flannel_and_ignores_garbage() {
        assert_eq!(
            parse_previous_subnet("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"),
            Some("10.244.7.0/24".parse().unwrap())
        );
        assert_eq!(parse_previous_subnet("TWILL_SUBNET=banana\n"), None);
        assert_eq!(parse_previous_subnet(""), None);
        assert_eq!(
            read_previous_subnet(Path::new("/nonexistent/twill/subnet.env")),
            None
        );
    }
}
