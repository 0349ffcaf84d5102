//! Changing the office PC's device list from two processes at once: the daemon records each
//! connecting device, and `telework-agent devices approve/revoke` changes one. Each reads,
//! changes and writes back the whole `devices.toml`; without a lock between them, one could
//! write back a list read before the other's change, and a revoked device would return.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use crate::devices::Devices;
use crate::state::{DataDir, StateError, DEVICES_FILE};

const DEVICES_LOCK_FILE: &str = "devices.lock";

/// How long a change to the device list waits for another process's change to finish. Each
/// holds the lock for one read and one write; a wait this long means that process is stuck.
pub(crate) const DEVICES_LOCK_WAIT: Duration = Duration::from_secs(2);
const LOCK_RETRY: Duration = Duration::from_millis(10);

/// The device list read under its lock (see [`DataDir::lock_devices`]); the lock is released
/// when this is saved or dropped.
pub struct LockedDevices<'a> {
    devices: Devices,
    data: &'a DataDir,
    _lock: File,
}

impl LockedDevices<'_> {
    /// Writes the list back, then releases the lock.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save(self) -> Result<(), StateError> {
        self.data.write_toml(DEVICES_FILE, &self.devices)
    }
}

impl Deref for LockedDevices<'_> {
    type Target = Devices;

    fn deref(&self) -> &Devices {
        &self.devices
    }
}

impl DerefMut for LockedDevices<'_> {
    fn deref_mut(&mut self) -> &mut Devices {
        &mut self.devices
    }
}

impl DataDir {
    /// The device list, locked against other processes until it is saved or dropped: the
    /// daemon recording a connection and a `telework-agent devices` command approving or
    /// revoking a device each read, change and write the whole file, and without the lock one
    /// could write back a list read before the other's change (a revoked device would return).
    ///
    /// # Errors
    /// [`StateError::Busy`] if another process holds the lock for over 2 s; otherwise as
    /// [`DataDir::devices`].
    pub fn lock_devices(&self) -> Result<LockedDevices<'_>, StateError> {
        self.lock_devices_within(DEVICES_LOCK_WAIT)
    }

    fn lock_devices_within(&self, wait: Duration) -> Result<LockedDevices<'_>, StateError> {
        let lock = self.lock(DEVICES_LOCK_FILE, wait)?;
        Ok(LockedDevices {
            devices: self.devices()?,
            data: self,
            _lock: lock,
        })
    }

    /// Takes an exclusive lock on the file `name`, retrying until `wait` has passed (never
    /// blocking for longer: a login waits on it, on the daemon's blocking pool).
    pub(crate) fn lock(&self, name: &str, wait: Duration) -> Result<File, StateError> {
        let path = self.path(name);
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let cannot =
            |e: io::Error| io::Error::new(e.kind(), format!("cannot lock {}: {e}", path.display()));
        let file = options.open(&path).map_err(cannot)?;
        let deadline = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(file),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(LOCK_RETRY);
                }
                Err(TryLockError::WouldBlock) => return Err(StateError::Busy(path)),
                Err(TryLockError::Error(e)) => return Err(StateError::Io(cannot(e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_list_change_waits_for_another_and_keeps_both() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let other = {
            let data = data.clone();
            std::thread::spawn(move || {
                // Another process (say `devices approve`) reads the list, then is slow to
                // write it back.
                let mut devices = data.lock_devices().unwrap();
                locked_tx.send(()).unwrap();
                devices.admit(&[1; 32], "first", 5, true);
                std::thread::sleep(Duration::from_millis(300));
                devices.save().unwrap();
            })
        };
        locked_rx.recv().unwrap();
        // A generous wait: a slow fsync on a busy machine must not turn this into `Busy`.
        let mut devices = data.lock_devices_within(Duration::from_secs(30)).unwrap();
        devices.admit(&[2; 32], "second", 6, true);
        devices.save().unwrap();
        other.join().unwrap();

        let names: Vec<String> = data
            .devices()
            .unwrap()
            .devices
            .into_iter()
            .map(|d| d.name)
            .collect();
        assert_eq!(names, ["first", "second"], "one change overwrote the other");
    }

    #[test]
    fn a_device_list_lock_held_too_long_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::open(dir.path()).unwrap();
        let _stuck = data.lock_devices().unwrap();
        let started = Instant::now();
        let err = data
            .lock_devices_within(Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(err, StateError::Busy(_)), "{err:?}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("devices.lock"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(
            err.to_string()
                .contains("devices.lock is held by another telework-agent process"),
            "{err}"
        );
    }
}
