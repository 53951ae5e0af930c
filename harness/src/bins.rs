//! Locates the workspace binaries under test (`twilld`, `twill`) in the
//! cargo target dir, or in `TWILL_BIN_DIR`.

use std::path::PathBuf;

use crate::error::{HarnessError, Result};

/// Env var overriding where the binaries are looked for.
pub const BIN_DIR_ENV: &str = "TWILL_BIN_DIR";

/// The directory holding the workspace binaries: `TWILL_BIN_DIR`, else the
/// target dir derived from the running executable (tests run from
/// `target/<profile>/deps/`, binaries from `target/<profile>/`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(BIN_DIR_ENV) {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe().map_err(|source| HarnessError::Io {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let mut dir = exe
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Path of binary `name` in [`bin_dir`], or an error telling how to build it.
pub fn binary(name: &str) -> Result<PathBuf> {
    let p = bin_dir()?.join(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(HarnessError::MissingBinary { path: p })
    }
}

/// The agent binary.
pub fn twilld() -> Result<PathBuf> {
    binary("twilld")
}

/// The CNI plugin binary.
pub fn cni_plugin() -> Result<PathBuf> {
    binary("twill")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binary_says_how_to_build_it() {
        let e = binary("no-such-twill-binary").unwrap_err().to_string();
        assert!(e.contains("no-such-twill-binary"), "{e}");
        assert!(e.contains("cargo build --workspace"), "{e}");
    }

    #[test]
    fn bin_dir_is_not_the_deps_dir() {
        let d = bin_dir().unwrap();
        assert_ne!(d.file_name().and_then(|n| n.to_str()), Some("deps"));
    }
}
