//! `twilld install-cni`: what the DaemonSet's init container runs. Copies
//! the plugin binary and writes the conflist, each atomically (temp file in
//! the target directory, then rename), so a runtime never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cli::{InstallCniArgs, Portmap};

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("plugin binary {0} not found (pass --plugin)")]
    NoPlugin(PathBuf),
    #[error("cannot write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--network-name: {0:?} is not a valid CNI network name")]
    Name(String),
    #[error("--conf-name: {0:?} must be a plain file name ending in .conflist")]
    ConfName(String),
}

/// The conflist twill installs: the twill plugin, optionally chained with
/// the reference portmap plugin for hostPort.
pub fn conflist(network_name: &str, portmap: bool) -> serde_json::Value {
    let mut plugins = vec![serde_json::json!({ "type": "twill" })];
    if portmap {
        plugins.push(serde_json::json!({
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true
        }));
    }
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": network_name,
        "plugins": plugins,
    })
}

fn valid_network_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Writes `bytes` to `path` through a temp file in the same directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// Installs the plugin and the conflist; returns the two paths written.
pub fn install_cni(args: &InstallCniArgs) -> Result<(PathBuf, PathBuf), InstallError> {
    if !valid_network_name(&args.network_name) {
        return Err(InstallError::Name(args.network_name.clone()));
    }
    if args.conf_name.contains('/') || !args.conf_name.ends_with(".conflist") {
        return Err(InstallError::ConfName(args.conf_name.clone()));
    }
    let plugin = match &args.plugin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("twill")))
            .unwrap_or_else(|| PathBuf::from("twill")),
    };
    let bytes = std::fs::read(&plugin).map_err(|_| InstallError::NoPlugin(plugin.clone()))?;
    let bin = args.bin_dir.join("twill");
    write_atomic(&bin, &bytes, 0o755)?;
    let portmap = match args.portmap {
        Portmap::Yes => true,
        Portmap::No => false,
        Portmap::Auto => args.bin_dir.join("portmap").exists(),
    };
    let conf = args.conf_dir.join(&args.conf_name);
    let text =
        serde_json::to_string_pretty(&conflist(&args.network_name, portmap)).unwrap_or_default();
    write_atomic(&conf, text.as_bytes(), 0o644)?;
    Ok((bin, conf))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path, plugin: PathBuf, portmap: Portmap) -> InstallCniArgs {
        InstallCniArgs {
            bin_dir: dir.join("bin"),
            conf_dir: dir.join("net.d"),
            plugin: Some(plugin),
            conf_name: "10-twill.conflist".into(),
            network_name: "twill".into(),
            portmap,
        }
    }

    #[test]
    fn installs_binary_and_conflist() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("twill-src");
        std::fs::write(&plugin, b"\x7fELF fake plugin").unwrap();
        let (bin, conf) = install_cni(&args(dir.path(), plugin, Portmap::Auto)).unwrap();
        assert_eq!(std::fs::read(&bin).unwrap(), b"\x7fELF fake plugin");
        assert_eq!(
            std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&conf).unwrap()).unwrap();
        assert_eq!(v["name"], "twill");
        assert_eq!(v["plugins"][0]["type"], "twill");
        // No portmap binary present: auto leaves it out.
        assert_eq!(v["plugins"].as_array().unwrap().len(), 1);
        // Nothing but the two files (no temp files left).
        assert_eq!(
            std::fs::read_dir(dir.path().join("bin")).unwrap().count(),
            1
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("net.d")).unwrap().count(),
            1
        );
    }

    #[test]
    fn portmap_yes_chains_it() {
        let v = conflist("twill", true);
        assert_eq!(v["plugins"][1]["type"], "portmap");
        assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    }

    #[test]
    fn bad_input_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-plugin");
        let err = install_cni(&args(dir.path(), missing, Portmap::No)).unwrap_err();
        assert!(err.to_string().contains("no-such-plugin"), "{err}");
        let mut a = args(dir.path(), dir.path().join("x"), Portmap::No);
        a.network_name = "bad name".into();
        assert!(install_cni(&a)
            .unwrap_err()
            .to_string()
            .contains("--network-name"));
        a.network_name = "twill".into();
        a.conf_name = "../evil".into();
        assert!(install_cni(&a)
            .unwrap_err()
            .to_string()
            .contains("--conf-name"));
        assert!(!dir.path().join("bin").exists());
        assert!(!dir.path().join("net.d").exists());
    }
}
