//! What the client keeps per user: its device key and the office PCs' pinned identity keys
//! (trust on first use), in the user's config directory.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telework_protocol::private_file::{check_private_dir, create_private_dir, write_private};
use telework_protocol::proof::{key_fingerprint, MachineKey};
use telework_protocol::ComputerId;

const DEVICE_KEY_FILE: &str = "device-key.pk8";
const KNOWN_AGENTS_FILE: &str = "known_agents.toml";

/// The user's config directory: `$TELEWORK_CONFIG_DIR`, else `%APPDATA%\telework` on Windows,
/// else `$XDG_CONFIG_HOME/telework`, else `~/.config/telework`.
pub fn default_config_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("TELEWORK_CONFIG_DIR") {
        return Some(dir.into());
    }
    if cfg!(windows) {
        return std::env::var_os("APPDATA").map(|d| PathBuf::from(d).join("telework"));
    }
    if let Some(xdg) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(xdg).join("telework"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config").join("telework"))
}

/// A user's profile directory.
#[derive(Debug, Clone)]
pub struct Profile {
    dir: PathBuf,
}

/// How a presented agent key compares with the pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinCheck {
    /// Never connected to this computer ID before: pin after a successful login.
    FirstUse,
    /// The key matches the pin.
    Matches,
    /// The key differs from the pin.
    Changed {
        /// Fingerprint of the pinned key.
        pinned: String,
        /// Fingerprint of the presented key.
        presented: String,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnownAgents {
    /// Computer ID → hex of the agent's static public key.
    #[serde(default)]
    agents: BTreeMap<String, String>,
}

impl Profile {
    /// Opens (creating, owner-only) a profile directory.
    ///
    /// # Errors
    /// If it cannot be created, or if other users can write to it (see
    /// [`check_private_dir`]).
    pub fn open(dir: &Path) -> io::Result<Self> {
        create_private_dir(dir)?;
        check_private_dir(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The device key, created on first use.
    ///
    /// # Errors
    /// If the key file is damaged or cannot be written.
    pub fn device_key(&self) -> io::Result<MachineKey> {
        let path = self.dir.join(DEVICE_KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => MachineKey::from_pkcs8(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = MachineKey::generate().map_err(io::Error::other)?;
                write_private(&path, key.pkcs8())?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    fn known(&self) -> io::Result<KnownAgents> {
        let path = self.dir.join(KNOWN_AGENTS_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(KnownAgents::default()),
            Err(e) => Err(e),
        }
    }

    fn save_known(&self, known: &KnownAgents) -> io::Result<()> {
        let text = toml::to_string(known).map_err(io::Error::other)?;
        write_private(&self.dir.join(KNOWN_AGENTS_FILE), text.as_bytes())
    }

    /// Compares `key` with the pin for `id`.
    ///
    /// # Errors
    /// If the pin file is unreadable (never silently treated as "first use").
    pub fn check_pin(&self, id: &ComputerId, key: &[u8]) -> io::Result<PinCheck> {
        let known = self.known()?;
        Ok(match known.agents.get(id.as_str()) {
            None => PinCheck::FirstUse,
            Some(pinned) if *pinned == hex::encode(key) => PinCheck::Matches,
            Some(pinned) => PinCheck::Changed {
                pinned: hex::decode(pinned)
                    .map(|k| key_fingerprint(&k))
                    .unwrap_or_else(|_| pinned.clone()),
                presented: key_fingerprint(key),
            },
        })
    }

    /// Pins `key` for `id`.
    ///
    /// # Errors
    /// If the pin file cannot be written.
    pub fn pin(&self, id: &ComputerId, key: &[u8]) -> io::Result<()> {
        let mut known = self.known()?;
        known
            .agents
            .insert(id.as_str().to_owned(), hex::encode(key));
        self.save_known(&known)
    }

    /// Forgets the pin for `id` (after IT staff confirm the office PC was reinstalled).
    /// Returns whether there was one.
    ///
    /// # Errors
    /// If the pin file cannot be read or written.
    pub fn forget(&self, id: &ComputerId) -> io::Result<bool> {
        let mut known = self.known()?;
        let had = known.agents.remove(id.as_str()).is_some();
        self.save_known(&known)?;
        Ok(had)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_on_first_use_then_mismatch_then_forget() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::open(dir.path()).unwrap();
        let id: ComputerId = "pc-1".parse().unwrap();
        assert_eq!(p.check_pin(&id, &[1; 32]).unwrap(), PinCheck::FirstUse);
        p.pin(&id, &[1; 32]).unwrap();
        assert_eq!(p.check_pin(&id, &[1; 32]).unwrap(), PinCheck::Matches);
        assert!(matches!(
            p.check_pin(&id, &[2; 32]).unwrap(),
            PinCheck::Changed { .. }
        ));
        assert!(p.forget(&id).unwrap());
        assert_eq!(p.check_pin(&id, &[2; 32]).unwrap(), PinCheck::FirstUse);
    }

    #[test]
    fn device_key_is_stable_and_damaged_pins_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::open(dir.path()).unwrap();
        assert_eq!(
            p.device_key().unwrap().public_key(),
            p.device_key().unwrap().public_key()
        );
        std::fs::write(dir.path().join(KNOWN_AGENTS_FILE), "agents = 7").unwrap();
        assert!(p.check_pin(&"pc".parse().unwrap(), &[1; 32]).is_err());
    }
}
