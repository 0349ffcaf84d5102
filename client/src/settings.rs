//! What an employee sets once and then never types again: which relay, how to trust it,
//! which proxy, and the computer IDs used lately (never passwords). Kept in
//! `settings.toml` in the profile directory, owner-only.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use telework_net::connect::RelayAddr;
use telework_net::relay_profile::RelayProfile;
use telework_net::tls::RelayTrust;
use telework_protocol::private_file::write_private;
use telework_protocol::{CertFingerprint, ComputerId};

use crate::profile::Profile;

const SETTINGS_FILE: &str = "settings.toml";
/// The private CA, copied into the profile so the setting survives the original file.
const RELAY_CA_FILE: &str = "relay-ca.pem";
/// How many computer IDs are remembered, most recent first.
pub const RECENT_IDS: usize = 8;

/// The saved settings, checked when read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The relay, if one is set.
    pub relay: Option<SavedRelay>,
    /// The HTTP proxy (`http://…`) or `none`, as the employee gave it; it may hold a password,
    /// so it is never printed whole.
    pub proxy: Option<String>,
    /// Computer IDs used lately, most recent first.
    pub recent: Vec<ComputerId>,
}

/// A saved relay and how to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRelay {
    /// `host:port`.
    pub addr: RelayAddr,
    /// How its certificate is checked.
    pub trust: SavedTrust,
}

/// How a saved relay's certificate is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavedTrust {
    /// Against the system's roots.
    SystemRoots,
    /// Pinned to this fingerprint (a self-signed relay).
    Fingerprint(CertFingerprint),
    /// Against the private CA copied into the profile.
    Ca(PathBuf),
}

impl SavedRelay {
    /// The trust to dial with.
    ///
    /// # Errors
    /// If the saved CA file can no longer be read.
    pub fn trust(&self) -> Result<RelayTrust, telework_net::tls::TlsConfigError> {
        match &self.trust {
            SavedTrust::SystemRoots => Ok(RelayTrust::SystemRoots),
            SavedTrust::Fingerprint(fp) => Ok(RelayTrust::Fingerprint(*fp)),
            SavedTrust::Ca(path) => RelayTrust::ca_file(path),
        }
    }
}

/// The file's layout: plain strings, checked into [`Settings`] on reading.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relay_fingerprint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    relay_ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    proxy: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    recent: Vec<String>,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

impl Profile {
    /// The saved settings (all empty when nothing was saved yet).
    ///
    /// # Errors
    /// If the file cannot be read or a value in it is damaged: never silently ignored, so a
    /// broken pin is not replaced by weaker trust.
    pub fn settings(&self) -> io::Result<Settings> {
        let path = self.dir().join(SETTINGS_FILE);
        let file: SettingsFile = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| invalid(&path, e.message()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => SettingsFile::default(),
            Err(e) => return Err(e),
        };
        let relay = match file.relay {
            None => None,
            Some(addr) => {
                let addr = addr
                    .parse()
                    .map_err(|e| invalid(&path, format_args!("relay: {e}")))?;
                let trust = match (file.relay_fingerprint, file.relay_ca) {
                    (Some(fp), _) => SavedTrust::Fingerprint(
                        fp.parse()
                            .map_err(|e| invalid(&path, format_args!("relay_fingerprint: {e}")))?,
                    ),
                    (None, Some(ca)) => SavedTrust::Ca(ca),
                    (None, None) => SavedTrust::SystemRoots,
                };
                Some(SavedRelay { addr, trust })
            }
        };
        let recent = file
            .recent
            .iter()
            .filter_map(|id| id.parse().ok())
            .take(RECENT_IDS)
            .collect();
        Ok(Settings {
            relay,
            proxy: file.proxy,
            recent,
        })
    }

    /// Saves `settings`.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save_settings(&self, settings: &Settings) -> io::Result<()> {
        let (relay, relay_fingerprint, relay_ca) = match &settings.relay {
            None => (None, None, None),
            Some(saved) => {
                let (fp, ca) = match &saved.trust {
                    SavedTrust::SystemRoots => (None, None),
                    SavedTrust::Fingerprint(fp) => (Some(fp.to_string()), None),
                    SavedTrust::Ca(path) => (None, Some(path.clone())),
                };
                (Some(saved.addr.to_string()), fp, ca)
            }
        };
        let file = SettingsFile {
            relay,
            relay_fingerprint,
            relay_ca,
            proxy: settings.proxy.clone(),
            recent: settings.recent.iter().map(ToString::to_string).collect(),
        };
        let text = toml::to_string(&file).map_err(io::Error::other)?;
        write_private(&self.dir().join(SETTINGS_FILE), text.as_bytes())
    }

    /// Saves `addr` as the relay, trusted as `trust`; a CA file is checked and copied into
    /// the profile. The proxy and recent IDs are kept.
    ///
    /// # Errors
    /// If the CA file is not a readable PEM certificate, or the settings cannot be written.
    pub fn set_relay(&self, addr: RelayAddr, trust: RelayTrustSetting) -> io::Result<Settings> {
        let trust = match trust {
            RelayTrustSetting::SystemRoots => SavedTrust::SystemRoots,
            RelayTrustSetting::Fingerprint(fp) => SavedTrust::Fingerprint(fp),
            RelayTrustSetting::CaFile(source) => {
                RelayTrust::ca_file(&source).map_err(|e| io::Error::other(e.to_string()))?;
                let pem = std::fs::read(&source)?;
                let copy = self.dir().join(RELAY_CA_FILE);
                write_private(&copy, &pem)?;
                SavedTrust::Ca(copy)
            }
        };
        let mut settings = self.settings()?;
        settings.relay = Some(SavedRelay { addr, trust });
        self.save_settings(&settings)?;
        Ok(settings)
    }

    /// Saves the relay from an operator's `tw-relay:` line.
    ///
    /// # Errors
    /// As [`Profile::set_relay`].
    pub fn import(&self, profile: RelayProfile) -> io::Result<Settings> {
        let trust = match profile.fingerprint {
            Some(fp) => RelayTrustSetting::Fingerprint(fp),
            None => RelayTrustSetting::SystemRoots,
        };
        self.set_relay(profile.relay, trust)
    }

    /// Puts `id` first among the recent computer IDs.
    ///
    /// # Errors
    /// If the settings cannot be read or written.
    pub fn remember(&self, id: &ComputerId) -> io::Result<()> {
        let mut settings = self.settings()?;
        settings.recent.retain(|known| known != id);
        settings.recent.insert(0, id.clone());
        settings.recent.truncate(RECENT_IDS);
        self.save_settings(&settings)
    }
}

/// How `telework config set relay` was told to trust the relay.
#[derive(Debug, Clone)]
pub enum RelayTrustSetting {
    /// The system's roots (a relay with a public certificate).
    SystemRoots,
    /// A pinned fingerprint.
    Fingerprint(CertFingerprint),
    /// A private CA's PEM file, copied into the profile.
    CaFile(PathBuf),
}

/// `proxy` with any password replaced, for showing.
pub fn proxy_for_display(proxy: &str) -> String {
    use telework_net::proxy::ProxySetting;
    match proxy.parse::<ProxySetting>() {
        Ok(ProxySetting::Direct) => "none (direct, ignoring HTTPS_PROXY)".to_owned(),
        Ok(ProxySetting::Via(url)) => format!("http://{url}"),
        Err(_) => "(not a valid proxy setting)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> (tempfile::TempDir, Profile) {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::open(dir.path()).unwrap();
        (dir, p)
    }

    #[test]
    fn relay_and_recent_ids_round_trip() {
        let (_dir, p) = profile();
        assert_eq!(p.settings().unwrap(), Settings::default());
        let line: RelayProfile =
            "tw-relay:relay.example.com:443/q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s"
                .parse()
                .unwrap();
        p.import(line).unwrap();
        for id in ["pc-1", "pc-2", "pc-1"] {
            p.remember(&id.parse().unwrap()).unwrap();
        }
        let s = p.settings().unwrap();
        let relay = s.relay.unwrap();
        assert_eq!(relay.addr.to_string(), "relay.example.com:443");
        assert_eq!(
            relay.trust,
            SavedTrust::Fingerprint(CertFingerprint([0xab; 32]))
        );
        let recent: Vec<_> = s.recent.iter().map(ToString::to_string).collect();
        assert_eq!(recent, ["pc-1", "pc-2"]);
    }

    #[test]
    fn recent_ids_are_bounded() {
        let (_dir, p) = profile();
        for n in 0..20 {
            p.remember(&format!("pc-{n}").parse().unwrap()).unwrap();
        }
        let s = p.settings().unwrap();
        assert_eq!(s.recent.len(), RECENT_IDS);
        assert_eq!(s.recent[0].to_string(), "pc-19");
    }

    #[test]
    fn a_damaged_pin_is_an_error_not_weaker_trust() {
        let (dir, p) = profile();
        std::fs::write(
            dir.path().join(SETTINGS_FILE),
            "relay = \"relay.example.com:443\"\nrelay_fingerprint = \"sha256:abcd\"\n",
        )
        .unwrap();
        let e = p.settings().unwrap_err().to_string();
        assert!(e.contains("relay_fingerprint"), "{e}");
    }

    #[test]
    fn a_new_relay_replaces_the_old_pin() {
        let (_dir, p) = profile();
        p.set_relay(
            "a.example.com:443".parse().unwrap(),
            RelayTrustSetting::Fingerprint(CertFingerprint([1; 32])),
        )
        .unwrap();
        let s = p
            .set_relay(
                "b.example.com:443".parse().unwrap(),
                RelayTrustSetting::SystemRoots,
            )
            .unwrap();
        assert_eq!(s.relay.unwrap().trust, SavedTrust::SystemRoots);
    }
}
