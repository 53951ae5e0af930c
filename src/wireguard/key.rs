//! The node's WireGuard key pair: made on first start, kept in a file
//! (base64 private key and a newline, as `wg genkey` writes it; mode 0600),
//! read back on every later start. Rotation is deleting the file and
//! restarting: the new public key goes into the lease and the peers follow.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use boringtun::x25519::{PublicKey, StaticSecret};
use rand::RngCore;

use super::WgError;

/// A Curve25519 key (public or private) as WireGuard writes it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub [u8; 32]);

impl Key {
    pub fn to_base64(self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn from_base64(s: &str) -> Option<Key> {
        let bytes = STANDARD.decode(s.trim()).ok()?;
        Some(Key(bytes.try_into().ok()?))
    }

    /// Lowercase hex, the UAPI's form.
    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Key> {
        let s = s.trim();
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Key(out))
    }
}

/// Public keys print as base64 (what leases and logs show).
impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_base64())
    }
}

/// A private key; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey(pub Key);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public())
    }
}

impl PrivateKey {
    pub fn generate() -> PrivateKey {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        // Clamped as `wg genkey` does (x25519 clamps again on use).
        b[0] &= 248;
        b[31] = (b[31] & 127) | 64;
        PrivateKey(Key(b))
    }

    pub fn secret(&self) -> StaticSecret {
        StaticSecret::from(self.0 .0)
    }

    pub fn public(&self) -> Key {
        Key(PublicKey::from(&self.secret()).to_bytes())
    }
}

/// Reads the key at `path`, or makes one there (mode 0600, written to a
/// temporary file and renamed, so a crash never leaves half a key). Returns
/// the key and whether it was made now. A file that holds no key is an
/// error naming it (not silently replaced: peers know the old key).
pub fn load_or_create(path: &Path) -> Result<(PrivateKey, bool), WgError> {
    let err = |reason: String| WgError::Key {
        path: path.to_path_buf(),
        reason,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = Key::from_base64(&text)
                .ok_or_else(|| err("does not hold a base64 WireGuard private key".into()))?;
            let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(|e| err(format!("cannot make it mode 0600: {e}")))?;
                tracing::warn!(path = %path.display(), "the WireGuard key file was readable by others: made it mode 0600");
            }
            Ok((PrivateKey(key), false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            }
            let key = PrivateKey::generate();
            let tmp = path.with_extension("tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| err(format!("cannot create {}: {e}", tmp.display())))?;
            writeln!(f, "{}", key.0.to_base64())
                .and_then(|()| f.sync_all())
                .map_err(|e| err(format!("cannot write {}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
            Ok((key, true))
        }
        Err(e) => Err(err(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/wireguard.key");
        let (k1, made) = load_or_create(&path).unwrap();
        assert!(made);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (k2, made) = load_or_create(&path).unwrap();
        assert!(!made);
        assert_eq!(k1, k2);
        // Rotation: delete the file, a new key comes.
        std::fs::remove_file(&path).unwrap();
        let (k3, made) = load_or_create(&path).unwrap();
        assert!(made);
        assert_ne!(k3.public(), k1.public());
    }

    #[test]
    fn a_file_without_a_key_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        std::fs::write(&path, "not a key\n").unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("wireguard.key"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not a key\n");
    }

    #[test]
    fn a_readable_key_file_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wireguard.key");
        let k = PrivateKey::generate();
        std::fs::write(&path, k.0.to_base64()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create(&path).unwrap().0, k);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn keys_round_trip_through_base64_and_hex() {
        let k = PrivateKey::generate().public();
        assert_eq!(Key::from_base64(&k.to_base64()), Some(k));
        assert_eq!(Key::from_hex(&k.to_hex()), Some(k));
        assert_eq!(Key::from_base64("abc"), None);
        assert_eq!(Key::from_hex("zz"), None);
        let p = PrivateKey::generate();
        assert!(!format!("{p:?}").contains(&p.0.to_base64()));
    }
}
