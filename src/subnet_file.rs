//! The subnet file (`/run/twill/subnet.env`): the agent's only message to
//! the CNI plugin. Written atomically (temp file + rename) so the plugin
//! never reads half a file; read back at start to keep the same subnet.

use std::io::Write;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
// The format and the gateway rule are the plugin's too: they live in the
// contract crate, and stay reachable here for the agent.
pub use twill_contract::subnet_file::{NodeSubnet, ParseError, SubnetEnv};
pub use twill_contract::{gateway6_of, gateway_of};

#[derive(Debug, thiserror::Error)]
pub enum SubnetFileError {
    #[error("cannot write subnet file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the file atomically: a temp file in the same directory, fsync,
/// rename over the old one.
pub fn write(path: &Path, env: &SubnetEnv) -> Result<(), SubnetFileError> {
    write_text(path, &env.render())
}

/// [`write()`] for an IPv6-only node: IPv6 keys only.
pub fn write_ipv6_only(
    path: &Path,
    env: &twill_contract::Ipv6OnlySubnetEnv,
) -> Result<(), SubnetFileError> {
    write_text(path, &env.render())
}

/// Writes `text` to `path` atomically.
fn write_text(path: &Path, text: &str) -> Result<(), SubnetFileError> {
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
        f.write_all(text.as_bytes())?;
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

/// The subnets recorded in an existing subnet file, either form (an IPv4 or
/// dual-stack node's: its IPv4 subnet; an IPv6-only node's: its IPv6
/// subnet), to ask for the same again after a restart. A missing or
/// unreadable file is no preference.
pub fn read_previous_preferred(path: &Path) -> subnet_allocator::Preferred {
    std::fs::read_to_string(path)
        .map(|t| parse_previous_preferred(&t))
        .unwrap_or_default()
}

/// [`read_previous_preferred`] of a file's text.
pub fn parse_previous_preferred(text: &str) -> subnet_allocator::Preferred {
    use twill_contract::NodeSubnets;
    match NodeSubnets::parse(text) {
        Ok(NodeSubnets::Ipv4(n)) => subnet_allocator::Preferred {
            v4: Some(n.subnet()),
            v6: None,
        },
        Ok(NodeSubnets::Ipv6Only { ipv6, .. }) => subnet_allocator::Preferred {
            v4: None,
            v6: Some(ipv6.subnet()),
        },
        Err(_) => subnet_allocator::Preferred::default(),
    }
}

/// The node subnet of a subnet file's text; `None` when the file does not
/// parse, since a preference is only a hint.
pub fn parse_previous_subnet(text: &str) -> Option<Ipv4Net> {
    NodeSubnet::parse(text).ok().map(|s| s.subnet())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv::parse("TWILL_NETWORK=10.244.0.0/16\nTWILL_SUBNET=10.244.3.1/24\n").unwrap()
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
