//! What the client keeps per user: its device key and the office PCs' pinned identity keys
//! (trust on first use), in the user's config directory.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telework_protocol::private_file::{check_private_dir, create_private_dir, write_private};
use telework_protocol::proof::MachineKey;
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

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KnownAgents {
    /// Relay (`host:port`) → computer ID → hex of the agent's identity key. Two relays may
    /// each have an office PC with the same ID; their pins never clash.
    #[serde(default)]
    relays: BTreeMap<String, BTreeMap<String, String>>,
    /// Pins from earlier versions, by computer ID alone; used for any relay until the next
    /// successful login moves them under its relay.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
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

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
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

    /// The identity key pinned for computer `id` on `relay`, if any.
    ///
    /// # Errors
    /// If the pin file is unreadable or damaged (never silently treated as "nothing
    /// pinned").
    pub fn pinned(&self, relay: &str, id: &ComputerId) -> io::Result<Option<Vec<u8>>> {
        let known = self.known()?;
        let hex_key = known
            .relays
            .get(relay)
            .and_then(|ids| ids.get(id.as_str()))
            .or_else(|| known.agents.get(id.as_str()));
        hex_key
            .map(|k| {
                hex::decode(k).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "{}: the pin for {id} is not hex",
                            self.dir.join(KNOWN_AGENTS_FILE).display()
                        ),
                    )
                })
            })
            .transpose()
    }

    /// Pins `key` for computer `id` on `relay`.
    ///
    /// # Errors
    /// If the pin file cannot be written.
    pub fn pin(&self, relay: &str, id: &ComputerId, key: &[u8]) -> io::Result<()> {
        let mut known = self.known()?;
        known.agents.remove(id.as_str());
        known
            .relays
            .entry(relay.to_owned())
            .or_default()
            .insert(id.as_str().to_owned(), hex::encode(key));
        self.save_known(&known)
    }

    /// Forgets the pins for `id`, on every relay (after IT staff confirm the office PC was
    /// reinstalled or its key rotated). Returns whether there was one.
    ///
    /// # Errors
    /// If the pin file cannot be read or written.
    pub fn forget(&self, id: &ComputerId) -> io::Result<bool> {
        let mut known = self.known()?;
        let mut had = known.agents.remove(id.as_str()).is_some();
        for ids in known.relays.values_mut() {
            had |= ids.remove(id.as_str()).is_some();
        }
        known.relays.retain(|_, ids| !ids.is_empty());
        self.save_known(&known)?;
        Ok(had)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_per_relay_and_forgotten_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::open(dir.path()).unwrap();
        let id: ComputerId = "pc-1".parse().unwrap();
        assert_eq!(p.pinned("relay-a:443", &id).unwrap(), None);
        p.pin("relay-a:443", &id, &[1; 32]).unwrap();
        p.pin("relay-b:443", &id, &[2; 32]).unwrap();
        assert_eq!(p.pinned("relay-a:443", &id).unwrap(), Some(vec![1; 32]));
        assert_eq!(p.pinned("relay-b:443", &id).unwrap(), Some(vec![2; 32]));
        assert_eq!(p.pinned("relay-c:443", &id).unwrap(), None);
        assert!(p.forget(&id).unwrap());
        assert_eq!(p.pinned("relay-a:443", &id).unwrap(), None);
        assert_eq!(p.pinned("relay-b:443", &id).unwrap(), None);
        assert!(!p.forget(&id).unwrap());
    }

    #[test]
    fn pins_from_earlier_versions_apply_until_moved_under_a_relay() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(KNOWN_AGENTS_FILE),
            format!("[agents]\npc-1 = \"{}\"\n", hex::encode([7; 32])),
        )
        .unwrap();
        let p = Profile::open(dir.path()).unwrap();
        let id: ComputerId = "pc-1".parse().unwrap();
        assert_eq!(p.pinned("relay-a:443", &id).unwrap(), Some(vec![7; 32]));
        p.pin("relay-a:443", &id, &[7; 32]).unwrap();
        assert_eq!(p.pinned("relay-b:443", &id).unwrap(), None);
        assert_eq!(p.pinned("relay-a:443", &id).unwrap(), Some(vec![7; 32]));
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
        assert!(p.pinned("relay:443", &"pc".parse().unwrap()).is_err());
    }
}
