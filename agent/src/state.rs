//! What the agent keeps in its data dir: its settings, its machine key, and the password
//! record. Secrets are written owner-only.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telework_protocol::e2e::pake::PasswordRecord;
use telework_protocol::net::connect::RelayAddr;
use telework_protocol::net::tls::RelayTrust;
use telework_protocol::private_file::{create_private_dir, write_private};
use telework_protocol::proof::MachineKey;
use telework_protocol::{CertFingerprint, ComputerId};

const SETTINGS_FILE: &str = "agent.toml";
const KEY_FILE: &str = "machine-key.pk8";
const PASSWORD_FILE: &str = "password.opaque";

/// The agent's settings file (`agent.toml`), written by `register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// The computer ID this machine registered as.
    pub computer_id: ComputerId,
    /// The relay, `host:port`.
    pub relay: String,
    /// Pinned relay certificate fingerprint, if the relay is self-signed.
    pub relay_fingerprint: Option<String>,
    /// Pinned CA file, if the relay uses a private CA.
    pub relay_ca: Option<PathBuf>,
}

/// A data-dir problem, said precisely.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The machine is not registered yet.
    #[error("this office PC is not registered yet: run 'telework-agent register' first ({0} is missing)")]
    NotRegistered(PathBuf),
    /// A file is damaged.
    #[error("{path} is damaged: {detail}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// The agent's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Opens (creating, owner-only) a data directory.
    ///
    /// # Errors
    /// If it cannot be created.
    pub fn open(root: &Path) -> Result<Self, StateError> {
        create_private_dir(root)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Loads the machine key, creating it on first use.
    ///
    /// # Errors
    /// If the key file is damaged or cannot be written.
    pub fn machine_key(&self) -> Result<MachineKey, StateError> {
        let path = self.path(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => MachineKey::from_pkcs8(&bytes).map_err(|e| StateError::Damaged {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = MachineKey::generate().map_err(|e| StateError::Damaged {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
                write_private(&path, key.pkcs8())?;
                Ok(key)
            }
            Err(e) => Err(StateError::Io(io::Error::new(
                e.kind(),
                format!("cannot read {}: {e}", path.display()),
            ))),
        }
    }

    /// Loads the settings written by `register`.
    ///
    /// # Errors
    /// [`StateError::NotRegistered`] when there are none yet.
    pub fn settings(&self) -> Result<AgentSettings, StateError> {
        let path = self.path(SETTINGS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotRegistered(path))
            }
            Err(e) => return Err(StateError::Io(e)),
        };
        toml::from_str(&text).map_err(|e| StateError::Damaged {
            path,
            detail: e.to_string(),
        })
    }

    /// Saves the settings.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save_settings(&self, settings: &AgentSettings) -> Result<(), StateError> {
        let text = toml::to_string(settings).map_err(|e| StateError::Damaged {
            path: self.path(SETTINGS_FILE),
            detail: e.to_string(),
        })?;
        write_private(&self.path(SETTINGS_FILE), text.as_bytes())?;
        Ok(())
    }

    /// Stores a new password record, replacing any old one.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save_password(&self, record: &PasswordRecord) -> Result<(), StateError> {
        write_private(&self.path(PASSWORD_FILE), record.to_bytes())?;
        Ok(())
    }

    /// The current password record, or `None` if no password has been set. Read on every
    /// login, so `set-password` takes effect without restarting the agent.
    ///
    /// # Errors
    /// If the file exists but is damaged.
    pub fn password(&self) -> Result<Option<PasswordRecord>, StateError> {
        let path = self.path(PASSWORD_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                PasswordRecord::from_bytes(&bytes)
                    .map(Some)
                    .map_err(|e| StateError::Damaged {
                        path,
                        detail: e.to_string(),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::Io(e)),
        }
    }
}

impl AgentSettings {
    /// The relay address.
    ///
    /// # Errors
    /// If the stored address is not `host:port`.
    pub fn relay_addr(&self) -> Result<RelayAddr, StateError> {
        self.relay
            .parse()
            .map_err(
                |e: telework_protocol::net::connect::BadRelayAddr| StateError::Damaged {
                    path: SETTINGS_FILE.into(),
                    detail: format!("relay: {e}"),
                },
            )
    }

    /// How to trust the relay: the pinned fingerprint, the pinned CA, or the system roots.
    ///
    /// # Errors
    /// If the stored pin is malformed or the CA file unreadable.
    pub fn relay_trust(&self) -> Result<RelayTrust, StateError> {
        if let Some(fp) = &self.relay_fingerprint {
            let fp: CertFingerprint =
                fp.parse()
                    .map_err(|e: telework_protocol::fingerprint::BadFingerprint| {
                        StateError::Damaged {
                            path: SETTINGS_FILE.into(),
                            detail: format!("relay_fingerprint: {e}"),
                        }
                    })?;
            return Ok(RelayTrust::Fingerprint(fp));
        }
        if let Some(ca) = &self.relay_ca {
            return RelayTrust::ca_file(ca).map_err(|e| StateError::Damaged {
                path: ca.clone(),
                detail: e.to_string(),
            });
        }
        Ok(RelayTrust::SystemRoots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(&dir.path().join("agent")).unwrap();
        let k1 = data.machine_key().unwrap();
        let k2 = data.machine_key().unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("agent").join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn settings_round_trip_and_missing_means_not_registered() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert!(matches!(data.settings(), Err(StateError::NotRegistered(_))));
        let s = AgentSettings {
            computer_id: "pc-1".parse().unwrap(),
            relay: "127.0.0.1:4433".into(),
            relay_fingerprint: Some(CertFingerprint([1; 32]).to_string()),
            relay_ca: None,
        };
        data.save_settings(&s).unwrap();
        assert_eq!(data.settings().unwrap(), s);
        assert!(matches!(
            s.relay_trust().unwrap(),
            RelayTrust::Fingerprint(_)
        ));
        std::fs::write(dir.path().join(SETTINGS_FILE), "computer_id = 5").unwrap();
        assert!(matches!(data.settings(), Err(StateError::Damaged { .. })));
    }

    #[test]
    fn password_record_is_stored_without_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert!(data.password().unwrap().is_none());
        data.save_password(&PasswordRecord::create(b"hunter2hunter2").unwrap())
            .unwrap();
        assert!(data.password().unwrap().is_some());
        let raw = std::fs::read(dir.path().join(PASSWORD_FILE)).unwrap();
        assert!(!raw.windows(14).any(|w| w == b"hunter2hunter2"));
    }
}
