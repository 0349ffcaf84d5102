//! What the agent keeps in its data dir: its settings, its machine key, and the password
//! record. Secrets are written owner-only.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telework_net::connect::RelayAddr;
use telework_net::proxy::{ProxyConfigError, ProxySetting};
use telework_net::tls::RelayTrust;
use telework_net::transport::TransportChoice;
use telework_protocol::e2e::pake::PasswordRecord;
use telework_protocol::private_file::{check_private_dir, create_private_dir, write_private};
use telework_protocol::proof::MachineKey;
use telework_protocol::{CertFingerprint, ComputerId};

use crate::devices::Devices;
use crate::lockout::Lockout;
use crate::policy::Policy;
use crate::totp::TotpSecret;

const SETTINGS_FILE: &str = "agent.toml";
const KEY_FILE: &str = "machine-key.pk8";
pub(crate) const PASSWORD_FILE: &str = "password.opaque";
pub(crate) const POLICY_FILE: &str = "policy.toml";
pub(crate) const DEVICES_FILE: &str = "devices.toml";
pub(crate) const TOTP_FILE: &str = "totp.secret";
const TOTP_LAST_STEP_FILE: &str = "totp-last-step";
const LOCKOUT_FILE: &str = "lockout.toml";
const LOCKOUT_LOCK_FILE: &str = "lockout.lock";

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
    /// Which transports to reach the relay on: `auto` (QUIC, falling back to TLS/TCP), `quic`
    /// or `tcp`.
    #[serde(default)]
    pub transport: TransportChoice,
    /// The HTTP proxy to reach the relay through, `http://[user:password@]host:port`, or
    /// `none` to ignore `HTTPS_PROXY` and the like; unset means "as the environment says".
    /// (The file is owner-only, so a proxy password here is as safe as the machine key.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
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
    /// Another process has held a lock for too long.
    #[error("{0} is held by another telework-agent process; try again in a moment")]
    Busy(PathBuf),
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
    /// If it cannot be created, or if other users can write to it (see
    /// [`check_private_dir`]).
    pub fn open(root: &Path) -> Result<Self, StateError> {
        create_private_dir(root)?;
        check_private_dir(root)?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
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
        self.read_parsed(PASSWORD_FILE, |bytes| {
            PasswordRecord::from_bytes(bytes).map_err(|e| e.to_string())
        })
    }
}

impl DataDir {
    /// Reads and parses one file of the data dir: `None` when it does not exist, an error
    /// naming the file when it cannot be read or parsed.
    fn read_parsed<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&[u8]) -> Result<T, String>,
    ) -> Result<Option<T>, StateError> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(bytes) => parse(&bytes)
                .map(Some)
                .map_err(|detail| StateError::Damaged { path, detail }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::Io(e)),
        }
    }

    pub(crate) fn read_toml<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, StateError> {
        let parsed = self.read_parsed(name, |bytes| {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            toml::from_str(text).map_err(|e| e.to_string())
        })?;
        Ok(parsed.unwrap_or_default())
    }

    pub(crate) fn write_toml<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        let text = toml::to_string(value).map_err(|e| StateError::Damaged {
            path: self.path(name),
            detail: e.to_string(),
        })?;
        write_private(&self.path(name), text.as_bytes())?;
        Ok(())
    }

    /// The access policy (all off when the file is missing).
    ///
    /// # Errors
    /// If the file is damaged.
    pub fn policy(&self) -> Result<Policy, StateError> {
        self.read_toml(POLICY_FILE)
    }

    /// Saves the access policy.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save_policy(&self, policy: &Policy) -> Result<(), StateError> {
        self.write_toml(POLICY_FILE, policy)
    }

    /// The device list.
    ///
    /// # Errors
    /// If the file is damaged.
    pub fn devices(&self) -> Result<Devices, StateError> {
        self.read_toml(DEVICES_FILE)
    }

    /// The saved wrong-password state.
    ///
    /// # Errors
    /// If the file is damaged.
    pub fn lockout(&self) -> Result<Lockout, StateError> {
        self.read_toml(LOCKOUT_FILE)
    }

    /// Saves the wrong-password state.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save_lockout(&self, lockout: &Lockout) -> Result<(), StateError> {
        self.write_toml(LOCKOUT_FILE, lockout)
    }

    /// Reads, changes and saves the wrong-password state under a lock shared with other
    /// processes (the daemon counts attempts, `telework-agent unlock` clears them), so neither
    /// writes back a state read before the other's change.
    ///
    /// # Errors
    /// [`StateError::Busy`] if another process holds the lock for over 2 s; otherwise if the
    /// file cannot be read or written. The change is lost then: callers that count an attempt
    /// refuse the login.
    pub fn update_lockout<T>(
        &self,
        change: impl FnOnce(&mut Lockout) -> T,
    ) -> Result<T, StateError> {
        let _lock = self.lock(LOCKOUT_LOCK_FILE, crate::locked_devices::DEVICES_LOCK_WAIT)?;
        let mut lockout = self.lockout()?;
        let out = change(&mut lockout);
        self.save_lockout(&lockout)?;
        Ok(out)
    }

    /// The TOTP secret, if a second factor is enabled.
    ///
    /// # Errors
    /// If the file is damaged.
    pub fn totp(&self) -> Result<Option<TotpSecret>, StateError> {
        self.read_parsed(TOTP_FILE, |bytes| {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            TotpSecret::from_base32(text).map_err(|e| e.to_string())
        })
    }

    /// Enables the second factor with `secret`, or disables it with `None`. Either way the
    /// record of the last code used goes: it belongs to the old secret.
    ///
    /// # Errors
    /// If the file cannot be written or removed.
    pub fn save_totp(&self, secret: Option<&TotpSecret>) -> Result<(), StateError> {
        let path = self.path(TOTP_FILE);
        match secret {
            Some(s) => write_private(&path, s.to_base32().as_bytes())?,
            None => self.remove(TOTP_FILE)?,
        }
        self.remove(TOTP_LAST_STEP_FILE)
    }

    /// The time step of the last one-time code accepted, if any: kept on disk so that a code
    /// used just before a restart cannot be used again just after it.
    ///
    /// # Errors
    /// If the file is damaged.
    pub fn totp_last_step(&self) -> Result<Option<u64>, StateError> {
        self.read_parsed(TOTP_LAST_STEP_FILE, |bytes| {
            let text = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
            text.trim()
                .parse()
                .map_err(|e| format!("not a time step: {e}"))
        })
    }

    /// Records the time step of a one-time code just accepted.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save_totp_last_step(&self, step: u64) -> Result<(), StateError> {
        write_private(&self.path(TOTP_LAST_STEP_FILE), step.to_string().as_bytes())?;
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), StateError> {
        match std::fs::remove_file(self.path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
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
        self.relay.parse().map_err(
            |e: telework_net::connect::BadRelayAddr| StateError::Damaged {
                path: SETTINGS_FILE.into(),
                detail: format!("relay: {e}"),
            },
        )
    }

    /// The saved proxy setting, if any.
    ///
    /// # Errors
    /// [`ProxyConfigError::Settings`] if it is not a proxy address or `none`.
    pub fn proxy_setting(&self) -> Result<Option<ProxySetting>, ProxyConfigError> {
        self.proxy
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(ProxyConfigError::Settings)
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
    fn the_last_one_time_code_step_is_kept_until_the_secret_changes() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        assert_eq!(data.totp_last_step().unwrap(), None);
        data.save_totp(Some(&TotpSecret::generate())).unwrap();
        data.save_totp_last_step(58_000_000).unwrap();
        let again = DataDir::open(dir.path()).unwrap();
        assert_eq!(again.totp_last_step().unwrap(), Some(58_000_000));

        data.save_totp(Some(&TotpSecret::generate())).unwrap();
        assert_eq!(
            again.totp_last_step().unwrap(),
            None,
            "a new secret starts afresh"
        );
        data.save_totp_last_step(58_000_001).unwrap();
        data.save_totp(None).unwrap();
        assert_eq!(again.totp_last_step().unwrap(), None);

        std::fs::write(dir.path().join("totp-last-step"), "soon").unwrap();
        let err = again.totp_last_step().unwrap_err();
        assert!(
            err.to_string()
                .contains("totp-last-step is damaged: not a time step"),
            "{err}"
        );
    }

    #[test]
    fn lockout_policy_devices_and_totp_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let mut l = data.lockout().unwrap();
        for _ in 0..crate::lockout::FREE_TRIES {
            l.begin(&[1; 32], 1000).unwrap();
        }
        data.save_lockout(&l).unwrap();
        let again = DataDir::open(dir.path()).unwrap();
        assert!(
            again.lockout().unwrap().begin(&[1; 32], 1030).is_err(),
            "still locked after a restart"
        );

        let policy = Policy {
            require_approved_devices: true,
            idle_timeout_secs: Some(60),
            max_session_secs: None,
        };
        data.save_policy(&policy).unwrap();
        assert_eq!(again.policy().unwrap(), policy);

        let mut devices = data.lock_devices().unwrap();
        devices.admit(&[1; 32], "home", 5, true);
        let expected = devices.clone();
        devices.save().unwrap();
        assert_eq!(again.devices().unwrap(), expected);

        assert!(data.totp().unwrap().is_none());
        let secret = TotpSecret::generate();
        data.save_totp(Some(&secret)).unwrap();
        assert_eq!(
            again.totp().unwrap().unwrap().to_base32(),
            secret.to_base32()
        );
        data.save_totp(None).unwrap();
        assert!(again.totp().unwrap().is_none());
    }

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
            transport: Default::default(),
            proxy: None,
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
