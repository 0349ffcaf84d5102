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
    /// Short fingerprint of its public key (hex).
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
    /// Several devices match a short prefix.
    #[error("{0:?} matches several devices; give more of the fingerprint")]
    Ambiguous(String),
}

impl Devices {
    /// The status of a device as it connects, recording it as pending if new. `name` is
    /// shortened and cleaned: it comes from the peer.
    pub fn on_connect(&mut self, public_key: &[u8], name: &str, now: u64) -> DeviceStatus {
        let fingerprint = telework_protocol::proof::key_fingerprint(public_key);
        if let Some(d) = self
            .devices
            .iter_mut()
            .find(|d| d.fingerprint == fingerprint)
        {
            d.last_seen = now;
            return d.status;
        }
        let pending = self
            .devices
            .iter()
            .filter(|d| d.status == DeviceStatus::Pending)
            .count();
        if pending >= MAX_PENDING {
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
            fingerprint,
            public_key: hex::encode(public_key),
            name,
            first_seen: now,
            last_seen: now,
            status: DeviceStatus::Pending,
        });
        DeviceStatus::Pending
    }

    fn find(&mut self, prefix: &str) -> Result<&mut Device, DeviceError> {
        let prefix = prefix.trim().to_ascii_lowercase();
        let mut matches = self
            .devices
            .iter_mut()
            .filter(|d| !prefix.is_empty() && d.fingerprint.starts_with(&prefix));
        let first = matches
            .next()
            .ok_or_else(|| DeviceError::NotFound(prefix.clone()))?;
        if matches.next().is_some() {
            return Err(DeviceError::Ambiguous(prefix));
        }
        Ok(first)
    }

    /// Approves the device whose fingerprint starts with `prefix`.
    ///
    /// # Errors
    /// [`DeviceError`] when none or several match.
    pub fn set_status(
        &mut self,
        prefix: &str,
        status: DeviceStatus,
    ) -> Result<Device, DeviceError> {
        let d = self.find(prefix)?;
        d.status = status;
        Ok(d.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_devices_wait_then_are_approved_or_revoked() {
        let mut devices = Devices::default();
        assert_eq!(
            devices.on_connect(&[1; 32], "home-pc", 10),
            DeviceStatus::Pending
        );
        let fp = devices.devices[0].fingerprint.clone();
        devices
            .set_status(&fp[..6], DeviceStatus::Approved)
            .unwrap();
        assert_eq!(
            devices.on_connect(&[1; 32], "home-pc", 20),
            DeviceStatus::Approved
        );
        devices.set_status(&fp, DeviceStatus::Revoked).unwrap();
        assert_eq!(
            devices.on_connect(&[1; 32], "home-pc", 30),
            DeviceStatus::Revoked
        );
        assert_eq!(devices.devices[0].last_seen, 30);
        assert!(matches!(
            devices.set_status("zz", DeviceStatus::Approved),
            Err(DeviceError::NotFound(_))
        ));
    }

    #[test]
    fn pending_list_is_bounded_and_names_are_cleaned() {
        let mut devices = Devices::default();
        for i in 0..(MAX_PENDING as u32 + 10) {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            devices.on_connect(&key, "evil\u{1b}[2Jname", u64::from(i));
        }
        assert_eq!(devices.devices.len(), MAX_PENDING);
        assert!(devices.devices.iter().all(|d| !d.name.contains('\u{1b}')));
        let text = toml::to_string(&devices).unwrap();
        assert_eq!(toml::from_str::<Devices>(&text).unwrap(), devices);
    }
}
