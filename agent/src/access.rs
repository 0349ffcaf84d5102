//! Whether an open session may go on: the device, the password and the one-time-code policy
//! it logged in under are checked again at every resume and every few seconds, so revoking a
//! device, changing the password or turning one-time codes on ends that PC's open sessions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ring::digest;
use telework_protocol::e2e::messages::EndReason;

use crate::devices::{DeviceStatus, Devices};
use crate::policy::Policy;
use crate::sessions::Grant;
use crate::state::{DataDir, StateError, DEVICES_FILE, PASSWORD_FILE, POLICY_FILE, TOTP_FILE};

/// How often the agent checks open sessions against the settings on disk. A change ends the
/// sessions it affects within this (plus a write's time), well inside 5 s.
pub const RECHECK_EVERY: Duration = Duration::from_secs(2);

/// SHA-256, for comparing a record or secret with the one a session logged in under.
pub fn digest_of(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// The settings that decide who may be logged in, as they are on disk now.
pub struct Access {
    password: Option<[u8; 32]>,
    totp: Option<[u8; 32]>,
    devices: Devices,
    policy: Policy,
}

impl Access {
    /// Reads the settings.
    ///
    /// # Errors
    /// If a file is damaged or unreadable; callers end sessions then (fail closed).
    pub fn read(data: &DataDir) -> Result<Self, StateError> {
        Ok(Self {
            password: data.password()?.map(|r| digest_of(r.to_bytes())),
            totp: data.totp()?.map(|t| digest_of(t.as_bytes())),
            devices: data.devices()?,
            policy: data.policy()?,
        })
    }

    /// The access policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Whether a session that logged in under `grant` may go on.
    ///
    /// # Errors
    /// Why it must end.
    pub fn check(&self, grant: &Grant) -> Result<(), EndReason> {
        if self.password != Some(grant.password) {
            return Err(EndReason::PasswordChanged);
        }
        let status = self.devices.status(&grant.device_key);
        if status == Some(DeviceStatus::Revoked) {
            return Err(EndReason::DeviceRevoked);
        }
        if self.policy.require_approved_devices && status != Some(DeviceStatus::Approved) {
            return Err(EndReason::PolicyChanged);
        }
        if self.totp.is_some() && self.totp != grant.totp {
            return Err(EndReason::PolicyChanged);
        }
        Ok(())
    }
}

/// Which version of each settings file [`Access`] was read from: its inode, length and
/// modification time (`None` for a missing file). Every write replaces a file by renaming a
/// new one over it, so any change gives a new inode.
type Stamp = [Option<(u64, u64, i128)>; 4];

/// The settings behind [`Access`], read again only when one of their files changed: every
/// new tunnel checks them, and reading and parsing four files each time would cost more than
/// the tunnel itself.
#[derive(Default)]
pub struct AccessCache {
    last: Mutex<Option<(Stamp, Arc<Access>)>>,
}

impl AccessCache {
    /// The settings as they are on disk now.
    ///
    /// # Errors
    /// As [`Access::read`].
    pub fn current(&self, data: &DataDir) -> Result<Arc<Access>, StateError> {
        let stamp = stamp(data)?;
        if let Some(access) = self.unchanged(&stamp) {
            return Ok(access);
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let access = Arc::new(Access::read(data)?);
        // Cached under the stamp taken before reading: a change during the read shows as a
        // new stamp next time, so nothing stale is kept.
        *last = Some((stamp, access.clone()));
        Ok(access)
    }

    /// The cached settings if none of their files changed since they were read: four
    /// `stat` calls, cheap enough for the runtime thread. `None` means "read them"
    /// ([`AccessCache::current`], on the blocking pool).
    pub fn if_unchanged(&self, data: &DataDir) -> Option<Arc<Access>> {
        self.unchanged(&stamp(data).ok()?)
    }

    fn unchanged(&self, stamp: &Stamp) -> Option<Arc<Access>> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|(seen, _)| seen == stamp)
            .map(|(_, access)| access.clone())
    }
}

fn stamp(data: &DataDir) -> Result<Stamp, StateError> {
    let mut out = [None; 4];
    for (slot, name) in out
        .iter_mut()
        .zip([PASSWORD_FILE, TOTP_FILE, DEVICES_FILE, POLICY_FILE])
    {
        *slot = match std::fs::metadata(data.path(name)) {
            Ok(m) => Some(file_version(&m)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StateError::Io(e)),
        };
    }
    Ok(out)
}

#[cfg(unix)]
fn file_version(m: &std::fs::Metadata) -> (u64, u64, i128) {
    use std::os::unix::fs::MetadataExt;
    (
        m.ino(),
        m.len(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    )
}

#[cfg(not(unix))]
fn file_version(m: &std::fs::Metadata) -> (u64, u64, i128) {
    let modified = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    (0, m.len(), modified)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The grant a login for `device_key` would get under `access`.
    fn grant_under(access: &Access, device_key: &[u8]) -> Option<Grant> {
        Some(Grant {
            device_key: device_key.to_vec(),
            password: access.password?,
            totp: access.totp,
        })
    }

    fn access() -> Access {
        Access {
            password: Some([1; 32]),
            totp: None,
            devices: Devices::default(),
            policy: Policy::default(),
        }
    }

    #[test]
    fn the_cache_sees_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let cache = AccessCache::default();
        assert!(grant_under(&cache.current(&data).unwrap(), &[9; 32]).is_none());
        let record = telework_protocol::e2e::pake::PasswordRecord::create(b"first one").unwrap();
        data.save_password(&record).unwrap();
        let first = cache.current(&data).unwrap();
        let grant = grant_under(&first, &[9; 32]).unwrap();
        assert!(
            Arc::ptr_eq(&first, &cache.current(&data).unwrap()),
            "unchanged: no re-read"
        );
        let mut devices = data.lock_devices().unwrap();
        devices.admit(&[9; 32], "home", 1, false);
        let fp = telework_protocol::proof::key_fingerprint(&[9; 32]);
        devices.set_status(&fp, DeviceStatus::Revoked).unwrap();
        devices.save().unwrap();
        assert_eq!(
            cache.current(&data).unwrap().check(&grant),
            Err(EndReason::DeviceRevoked)
        );
        data.save_password(&record.change_password(b"second one").unwrap())
            .unwrap();
        assert_eq!(
            cache.current(&data).unwrap().check(&grant),
            Err(EndReason::PasswordChanged)
        );
    }

    #[test]
    fn each_change_ends_the_session_for_its_reason() {
        let a = access();
        let grant = grant_under(&a, &[9; 32]).unwrap();
        assert_eq!(a.check(&grant), Ok(()));

        let mut changed = access();
        changed.password = Some([2; 32]);
        assert_eq!(changed.check(&grant), Err(EndReason::PasswordChanged));
        changed.password = None;
        assert_eq!(changed.check(&grant), Err(EndReason::PasswordChanged));

        let mut revoked = access();
        revoked.devices.admit(&[9; 32], "home", 1, false);
        assert_eq!(revoked.check(&grant), Ok(()));
        let fp = telework_protocol::proof::key_fingerprint(&[9; 32]);
        revoked
            .devices
            .set_status(&fp, DeviceStatus::Revoked)
            .unwrap();
        assert_eq!(revoked.check(&grant), Err(EndReason::DeviceRevoked));

        let mut totp_on = access();
        totp_on.totp = Some([3; 32]);
        assert_eq!(totp_on.check(&grant), Err(EndReason::PolicyChanged));
        // A session that logged in with that code goes on; one with an older secret ends.
        let with_code = grant_under(&totp_on, &[9; 32]).unwrap();
        assert_eq!(totp_on.check(&with_code), Ok(()));
        let mut new_secret = access();
        new_secret.totp = Some([4; 32]);
        assert_eq!(new_secret.check(&with_code), Err(EndReason::PolicyChanged));
        // Turning codes off ends nothing.
        assert_eq!(access().check(&with_code), Ok(()));

        let mut approval = access();
        approval.policy.require_approved_devices = true;
        assert_eq!(approval.check(&grant), Err(EndReason::PolicyChanged));
    }
}
