//! Client devices an office PC knows: approved, waiting for approval, or revoked. Kept in
//! the data dir; IT staff manage it with `telework-agent devices`.

use serde::{Deserialize, Serialize};

/// Most devices waiting for approval; older pending entries make room for new ones, so a
/// stranger with the password cannot grow the file without bound.
pub const MAX_PENDING: usize = 50;

/// Where a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    /// Connected once with the right password; waits for IT staff.
    Pending,
    /// May connect.
    Approved,
    /// May not connect.
    Revoked,
}

/// One device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// Fingerprint of its public key (hex; 128 bits for devices recorded since version 3).
    pub fingerprint: String,
    /// Its Ed25519 public key (hex).
    pub public_key: String,
    /// The name it gave (its host name).
    pub name: String,
    /// Unix seconds it was first seen.
    pub first_seen: u64,
    /// Unix seconds it last connected (or tried).
    pub last_seen: u64,
    /// Where it stands.
    pub status: DeviceStatus,
}

/// The device list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// Every known device.
    #[serde(default, rename = "device")]
    pub devices: Vec<Device>,
}

/// Why `approve` or `revoke` did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// No device matches.
    #[error("no device matches {0:?} (see 'telework-agent devices list')")]
    NotFound(String),
    /// Several devices match.
    #[error("{0:?} matches several devices; give more of the fingerprint")]
    Ambiguous(String),
    /// Fewer than 128 bits of fingerprint.
    #[error(
        "{0:?} is too short: give the device's whole fingerprint ({MIN_FINGERPRINT_HEX} hex digits, \
         as the employee's telework or 'telework-agent devices list' shows it)"
    )]
    TooShort(String),
}

/// Most devices on the list when approval is not required: each successful login from a new
/// device adds one.
pub const MAX_DEVICES: usize = 1000;

/// How often a known device's last login is written down, at most (seconds).
pub const LAST_SEEN_GRANULARITY: u64 = 3600;

/// Hex digits of fingerprint IT staff must give to approve or revoke a device: 128 bits, so
/// nobody can plant a device whose fingerprint merely starts like the employee's.
pub const MIN_FINGERPRINT_HEX: usize = 32;

impl Devices {
    fn by_key(&self, public_key: &[u8]) -> Option<&Device> {
        let key = hex::encode(public_key);
        self.devices.iter().find(|d| d.public_key == key)
    }

    /// Where the device with `public_key` stands, if it is on the list (matched on the full
    /// key, never on a fingerprint).
    pub fn status(&self, public_key: &[u8]) -> Option<DeviceStatus> {
        self.by_key(public_key).map(|d| d.status)
    }

    /// Records a device that passed every other check of a login, and returns where it
    /// stands. A new device waits for approval when `approval_required`, and is otherwise
    /// recorded as approved (so IT staff see it and can revoke it). `name` is shortened and
    /// cleaned: it comes from the peer.
    pub fn admit(
        &mut self,
        public_key: &[u8],
        name: &str,
        now: u64,
        approval_required: bool,
    ) -> DeviceStatus {
        self.admit_changed(public_key, name, now, approval_required)
            .0
    }

    /// As [`Devices::admit`], and whether the list changed (a known device's last login is
    /// noted at most once an hour, so its logins do not rewrite the file each time).
    pub fn admit_changed(
        &mut self,
        public_key: &[u8],
        name: &str,
        now: u64,
        approval_required: bool,
    ) -> (DeviceStatus, bool) {
        let key = hex::encode(public_key);
        if let Some(d) = self.devices.iter_mut().find(|d| d.public_key == key) {
            let stale = now.saturating_sub(d.last_seen) >= LAST_SEEN_GRANULARITY;
            if stale {
                d.last_seen = now;
            }
            return (d.status, stale);
        }
        let status = if approval_required {
            DeviceStatus::Pending
        } else {
            DeviceStatus::Approved
        };
        let pending = self
            .devices
            .iter()
            .filter(|d| d.status == DeviceStatus::Pending)
            .count();
        if status == DeviceStatus::Approved && self.devices.len() >= MAX_DEVICES {
            // Approval is not required, so an approved entry only says who connected; the
            // least recently seen makes room (revoked entries are never dropped).
            if let Some(oldest) = self
                .devices
                .iter()
                .enumerate()
                .filter(|(_, d)| d.status == DeviceStatus::Approved)
                .min_by_key(|(_, d)| d.last_seen)
                .map(|(i, _)| i)
            {
                self.devices.remove(oldest);
            }
        }
        if status == DeviceStatus::Pending && pending >= MAX_PENDING {
            if let Some(oldest) = self
                .devices
                .iter()
                .enumerate()
                .filter(|(_, d)| d.status == DeviceStatus::Pending)
                .min_by_key(|(_, d)| d.last_seen)
                .map(|(i, _)| i)
            {
                self.devices.remove(oldest);
            }
        }
        let name: String = name.chars().filter(|c| !c.is_control()).take(64).collect();
        self.devices.push(Device {
            fingerprint: telework_protocol::proof::key_fingerprint(public_key),
            public_key: key,
            name,
            first_seen: now,
            last_seen: now,
            status,
        });
        (status, true)
    }

    fn find(&mut self, fingerprint: &str) -> Result<&mut Device, DeviceError> {
        let wanted: String = fingerprint
            .chars()
            .filter(|c| !matches!(c, ' ' | ':' | '-'))
            .collect::<String>()
            .to_ascii_lowercase();
        if wanted.len() < MIN_FINGERPRINT_HEX || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(DeviceError::TooShort(fingerprint.trim().to_owned()));
        }
        let full = |d: &Device| {
            hex::decode(&d.public_key)
                .map(|k| telework_protocol::proof::key_fingerprint(&k))
                .unwrap_or_default()
        };
        let mut matches = self
            .devices
            .iter_mut()
            .filter(|d| full(d).starts_with(&wanted) || d.public_key == wanted);
        let first = matches
            .next()
            .ok_or_else(|| DeviceError::NotFound(wanted.clone()))?;
        if matches.next().is_some() {
            return Err(DeviceError::Ambiguous(wanted));
        }
        Ok(first)
    }

    /// Sets the status of the device whose fingerprint (at least 128 bits of it) is given.
    ///
    /// # Errors
    /// [`DeviceError`] when it is too short, or none or several match.
    pub fn set_status(
        &mut self,
        fingerprint: &str,
        status: DeviceStatus,
    ) -> Result<Device, DeviceError> {
        let d = self.find(fingerprint)?;
        d.status = status;
        Ok(d.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use telework_protocol::proof::key_fingerprint;

    #[test]
    fn new_devices_wait_then_are_approved_or_revoked() {
        let mut devices = Devices::default();
        assert_eq!(devices.status(&[1; 32]), None);
        assert_eq!(
            devices.admit(&[1; 32], "home-pc", 10, true),
            DeviceStatus::Pending
        );
        let fp = key_fingerprint(&[1; 32]);
        assert_eq!(fp.len(), MIN_FINGERPRINT_HEX);
        devices.set_status(&fp, DeviceStatus::Approved).unwrap();
        assert_eq!(devices.status(&[1; 32]), Some(DeviceStatus::Approved));
        assert_eq!(
            devices.admit(&[1; 32], "home-pc", 20, true),
            DeviceStatus::Approved
        );
        devices.set_status(&fp, DeviceStatus::Revoked).unwrap();
        assert_eq!(
            devices.admit_changed(&[1; 32], "home-pc", 30, false),
            (DeviceStatus::Revoked, false)
        );
        assert_eq!(
            devices.devices[0].last_seen, 10,
            "noted at most once an hour"
        );
        assert_eq!(
            devices.admit_changed(&[1; 32], "home-pc", 10 + LAST_SEEN_GRANULARITY, false),
            (DeviceStatus::Revoked, true)
        );
        assert_eq!(devices.devices[0].last_seen, 10 + LAST_SEEN_GRANULARITY);
        assert!(matches!(
            devices.set_status(&"0".repeat(32), DeviceStatus::Approved),
            Err(DeviceError::NotFound(_))
        ));
        // Without approval required, a device that logged in is recorded as approved, so IT
        // staff see it and can revoke it.
        assert_eq!(
            devices.admit(&[2; 32], "laptop", 40, false),
            DeviceStatus::Approved
        );
    }

    #[test]
    fn approval_needs_128_bits_and_matches_the_full_key() {
        let mut devices = Devices::default();
        devices.admit(&[1; 32], "home-pc", 10, true);
        let fp = key_fingerprint(&[1; 32]);
        for short in [&fp[..6], &fp[..16], &fp[..31]] {
            assert!(
                matches!(
                    devices.set_status(short, DeviceStatus::Approved),
                    Err(DeviceError::TooShort(_))
                ),
                "{short}"
            );
        }
        let spaced: String = fp
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        devices
            .set_status(&spaced.to_uppercase(), DeviceStatus::Approved)
            .unwrap();
        // A stored fingerprint that does not belong to the stored key changes nothing: the
        // key is what counts.
        devices.devices[0].fingerprint = "ffff".into();
        assert_eq!(devices.status(&[1; 32]), Some(DeviceStatus::Approved));
        assert_eq!(devices.status(&[3; 32]), None);
    }

    #[test]
    fn pending_list_is_bounded_and_names_are_cleaned() {
        let mut devices = Devices::default();
        for i in 0..(MAX_PENDING as u32 + 10) {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            devices.admit(&key, "evil\u{1b}[2Jname", u64::from(i), true);
        }
        assert_eq!(devices.devices.len(), MAX_PENDING);
        assert!(devices.devices.iter().all(|d| !d.name.contains('\u{1b}')));
        let mut open = Devices::default();
        open.admit(&[0xee; 32], "revoked", 0, false);
        open.set_status(&key_fingerprint(&[0xee; 32]), DeviceStatus::Revoked)
            .unwrap();
        for i in 1..(MAX_DEVICES as u32 + 10) {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            open.admit(&key, "laptop", u64::from(i), false);
        }
        assert_eq!(open.devices.len(), MAX_DEVICES);
        assert_eq!(open.status(&[0xee; 32]), Some(DeviceStatus::Revoked));
        let text = toml::to_string(&devices).unwrap();
        assert_eq!(toml::from_str::<Devices>(&text).unwrap(), devices);
    }
}
