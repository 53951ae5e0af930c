//! `twilld install-cni`: what the DaemonSet's init container runs. Copies
//! the plugin binary (and, with `--portmap auto`, the reference `portmap`
//! plugin from where a distribution installs it) and writes the conflist,
//! each atomically (temp file in the target directory, then rename), so a
//! runtime never sees half a file. Every twilld flag the plugin must agree
//! with (`--bridge`, `--subnet-file`) goes into the conflist.

use std::io::Write;
use std::path::{Path, PathBuf};

use twill_contract::defaults;

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
    #[error("--subnet-file: {0:?} must be an absolute path (the runtime runs the plugin from its own directory)")]
    SubnetFile(PathBuf),
    #[error("cannot copy portmap from {path}")]
    Portmap {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The twilld settings the plugin must share with the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginKeys {
    /// twilld's `--bridge`.
    pub bridge: String,
    /// twilld's `--subnet-file`.
    pub subnet_file: PathBuf,
}

impl Default for PluginKeys {
    fn default() -> Self {
        PluginKeys {
            bridge: defaults::BRIDGE.to_string(),
            subnet_file: PathBuf::from(defaults::SUBNET_FILE),
        }
    }
}

/// What [`install_cni`] did.
#[derive(Debug)]
pub struct Installed {
    pub plugin: PathBuf,
    pub conflist: PathBuf,
    /// Where `portmap` was copied to, if it was.
    pub portmap_copied: Option<PathBuf>,
    /// What the operator should know (printed on stderr).
    pub warnings: Vec<String>,
}

/// The conflist twill installs with the default bridge and subnet file.
pub fn conflist(network_name: &str, portmap: bool) -> serde_json::Value {
    conflist_with(network_name, portmap, &PluginKeys::default())
}

/// The conflist twill installs: the twill plugin, optionally chained with
/// the reference portmap plugin for hostPort. `bridge` and `subnetFile` are
/// written when they differ from the plugin's defaults, so the default
/// conflist stays the short one.
pub fn conflist_with(network_name: &str, portmap: bool, keys: &PluginKeys) -> serde_json::Value {
    let mut twill = serde_json::json!({ "type": "twill" });
    if keys.bridge != defaults::BRIDGE {
        twill["bridge"] = keys.bridge.clone().into();
    }
    if keys.subnet_file != Path::new(defaults::SUBNET_FILE) {
        twill["subnetFile"] = keys.subnet_file.to_string_lossy().into_owned().into();
    }
    let mut plugins = vec![twill];
    if portmap {
        plugins.push(serde_json::json!({
            "type": "portmap",
            "capabilities": { "portMappings": true },
            "snat": true
        }));
    }
    serde_json::json!({
        "cniVersion": CNI_VERSION,
        "name": network_name,
        "plugins": plugins,
    })
}

/// The conflist's version: the newest that podman 4.3's libcni (Debian 12)
/// still reads; the plugin speaks it and every older one.
pub const CNI_VERSION: &str = "1.0.0";

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

/// Where `portmap` is: in `bin_dir` (`Some(None)`), in one of `from`
/// (`Some(Some(path))`), or nowhere (`None`).
fn find_portmap(bin_dir: &Path, from: &[PathBuf]) -> Option<Option<PathBuf>> {
    if bin_dir.join("portmap").is_file() {
        return Some(None);
    }
    from.iter()
        .map(|d| d.join("portmap"))
        .find(|p| p.is_file())
        .map(Some)
}

/// Installs the plugin and the conflist; returns what it wrote.
pub fn install_cni(args: &InstallCniArgs, keys: &PluginKeys) -> Result<Installed, InstallError> {
    if !valid_network_name(&args.network_name) {
        return Err(InstallError::Name(args.network_name.clone()));
    }
    if args.conf_name.contains('/') || !args.conf_name.ends_with(".conflist") {
        return Err(InstallError::ConfName(args.conf_name.clone()));
    }
    if !keys.subnet_file.is_absolute() {
        return Err(InstallError::SubnetFile(keys.subnet_file.clone()));
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
    let mut warnings = Vec::new();
    let mut portmap_copied = None;
    let found = find_portmap(&args.bin_dir, &args.portmap_from);
    let portmap = match (args.portmap, found) {
        (Portmap::No, _) => false,
        (Portmap::Auto, None) => false,
        (_, Some(None)) => true,
        (Portmap::Auto, Some(Some(src))) => {
            // The runtime looks for plugins in the bin dir only.
            let dst = args.bin_dir.join("portmap");
            let bytes = std::fs::read(&src).map_err(|source| InstallError::Portmap {
                path: src.clone(),
                source,
            })?;
            write_atomic(&dst, &bytes, 0o755)?;
            portmap_copied = Some(dst);
            true
        }
        (Portmap::Yes, Some(Some(src))) => {
            warnings.push(format!(
                "--portmap yes: portmap is not in {} but in {}: hostPort pods fail until it is copied there (--portmap auto copies it)",
                args.bin_dir.display(),
                src.display()
            ));
            true
        }
        (Portmap::Yes, None) => {
            warnings.push(format!(
                "--portmap yes: portmap is not in {} (nor in {}): hostPort pods fail until it is installed (Debian: containernetworking-plugins)",
                args.bin_dir.display(),
                args.portmap_from
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            true
        }
    };
    let conf = args.conf_dir.join(&args.conf_name);
    let text = serde_json::to_string_pretty(&conflist_with(&args.network_name, portmap, keys))
        .unwrap_or_default();
    write_atomic(&conf, text.as_bytes(), 0o644)?;
    Ok(Installed {
        plugin: bin,
        conflist: conf,
        portmap_copied,
        warnings,
    })
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
            portmap_from: vec![dir.join("usr-lib-cni")],
        }
    }

    fn install(a: &InstallCniArgs) -> Result<Installed, InstallError> {
        install_cni(a, &PluginKeys::default())
    }

    fn read_conf(i: &Installed) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&i.conflist).unwrap()).unwrap()
    }

    #[test]
    fn installs_binary_and_conflist() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("twill-src");
        std::fs::write(&plugin, b"\x7fELF fake plugin").unwrap();
        let done = install(&args(dir.path(), plugin, Portmap::Auto)).unwrap();
        let (bin, conf) = (&done.plugin, &done.conflist);
        assert!(done.warnings.is_empty(), "{:?}", done.warnings);
        assert_eq!(std::fs::read(bin).unwrap(), b"\x7fELF fake plugin");
        assert_eq!(
            std::fs::metadata(bin).unwrap().permissions().mode() & 0o777,
            0o755
        );
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(conf).unwrap()).unwrap();
        assert_eq!(v["name"], "twill");
        // Default bridge and subnet file: the plugin's defaults, not written.
        assert_eq!(v["plugins"][0], serde_json::json!({"type": "twill"}));
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
        let err = install(&args(dir.path(), missing, Portmap::No)).unwrap_err();
        assert!(err.to_string().contains("no-such-plugin"), "{err}");
        let mut a = args(dir.path(), dir.path().join("x"), Portmap::No);
        a.network_name = "bad name".into();
        assert!(install(&a)
            .unwrap_err()
            .to_string()
            .contains("--network-name"));
        a.network_name = "twill".into();
        a.conf_name = "../evil".into();
        assert!(install(&a).unwrap_err().to_string().contains("--conf-name"));
        a.conf_name = "10-twill.conflist".into();
        let relative = PluginKeys {
            subnet_file: "run/twill/subnet.env".into(),
            ..PluginKeys::default()
        };
        assert!(install_cni(&a, &relative)
            .unwrap_err()
            .to_string()
            .contains("--subnet-file"));
        assert!(!dir.path().join("bin").exists());
        assert!(!dir.path().join("net.d").exists());
    }

    #[test]
    fn bridge_and_subnet_file_go_into_the_conflist() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("twill-src");
        std::fs::write(&plugin, b"plugin").unwrap();
        let keys = PluginKeys {
            bridge: "br-pods".into(),
            subnet_file: "/run/other/subnet.env".into(),
        };
        let done = install_cni(&args(dir.path(), plugin, Portmap::No), &keys).unwrap();
        let v = read_conf(&done);
        assert_eq!(v["plugins"][0]["type"], "twill");
        assert_eq!(v["plugins"][0]["bridge"], "br-pods");
        assert_eq!(v["plugins"][0]["subnetFile"], "/run/other/subnet.env");
        assert_eq!(v["cniVersion"], CNI_VERSION);
    }

    #[test]
    fn portmap_auto_copies_it_from_where_a_distribution_installs_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("twill-src");
        std::fs::write(&plugin, b"plugin").unwrap();
        let lib = dir.path().join("usr-lib-cni");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("portmap"), b"portmap binary").unwrap();
        let done = install(&args(dir.path(), plugin.clone(), Portmap::Auto)).unwrap();
        let copied = dir.path().join("bin/portmap");
        assert_eq!(done.portmap_copied.as_deref(), Some(copied.as_path()));
        assert_eq!(std::fs::read(&copied).unwrap(), b"portmap binary");
        assert_eq!(
            std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(read_conf(&done)["plugins"][1]["type"], "portmap");
        // Once in the bin dir, a second run finds it there and copies nothing.
        let again = install(&args(dir.path(), plugin, Portmap::Auto)).unwrap();
        assert_eq!(again.portmap_copied, None);
        assert_eq!(read_conf(&again)["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn portmap_yes_warns_when_portmap_is_not_in_the_bin_dir() {
        let dir = tempfile::tempdir().unwrap();
        let plugin = dir.path().join("twill-src");
        std::fs::write(&plugin, b"plugin").unwrap();
        // Nowhere.
        let done = install(&args(dir.path(), plugin.clone(), Portmap::Yes)).unwrap();
        assert_eq!(done.warnings.len(), 1, "{:?}", done.warnings);
        assert!(done.warnings[0].contains("not in"), "{:?}", done.warnings);
        assert_eq!(read_conf(&done)["plugins"][1]["type"], "portmap");
        // Only in /usr/lib/cni: the warning says where and what copies it.
        let lib = dir.path().join("usr-lib-cni");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("portmap"), b"portmap").unwrap();
        let done = install(&args(dir.path(), plugin.clone(), Portmap::Yes)).unwrap();
        assert!(
            done.warnings[0].contains("usr-lib-cni") && done.warnings[0].contains("auto"),
            "{:?}",
            done.warnings
        );
        // In the bin dir: no warning.
        std::fs::write(dir.path().join("bin/portmap"), b"portmap").unwrap();
        let done = install(&args(dir.path(), plugin, Portmap::Yes)).unwrap();
        assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    }
}
