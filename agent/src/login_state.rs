//! What a login reads and changes on disk: the wrong-password count, the last one-time code
//! used, the device list.
//!
//! The agent runs on one thread, and that thread also carries every open session's desktop
//! bytes. So the file work a login does runs on tokio's blocking pool instead: waiting up to
//! 2 s for the device-list lock (held by a `telework-agent devices` command), or an fsync on
//! a slow office disk, would otherwise freeze every open session for as long.

use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use crate::devices::DeviceStatus;
use crate::lockout::{self, Lockout};
use crate::state::StateError;
use crate::totp::TotpSecret;
use crate::{unix_now, Agent};

impl Agent {
    fn lockout(&self) -> MutexGuard<'_, Lockout> {
        self.lockout.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lockout_begin(&self) -> Result<(), lockout::Refused> {
        self.lockout().begin(unix_now())
    }

    /// Counts a wrong password or code and saves the count. Returns the tries left, or how
    /// long the lockout lasts.
    pub(crate) async fn lockout_fail(&self) -> Result<u32, Duration> {
        let result = self.lockout().fail(unix_now());
        self.save_lockout().await;
        result
    }

    pub(crate) async fn lockout_succeed(&self) {
        let changed = self.lockout().succeed();
        // Most logins change nothing; skip the write (and its fsync) then.
        if changed {
            self.save_lockout().await;
        }
    }

    pub(crate) fn lockout_abandon(&self) {
        self.lockout().abandon();
    }

    /// Saves the wrong-password state as it is when the write runs. Writes run one at a time,
    /// so the file never ends up older than memory, however the blocking pool orders them.
    async fn save_lockout(&self) {
        let data = self.data.clone();
        let lockout = self.lockout.clone();
        let writes = self.state_writes.clone();
        let saved = off_runtime(move || {
            let _in_order = writes.lock().unwrap_or_else(PoisonError::into_inner);
            let now = lockout
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            data.save_lockout(&now)
        })
        .await;
        if let Err(e) = saved {
            tracing::warn!(%e, "cannot save the wrong-password state");
        }
    }

    /// Checks a one-time code; each code works once, across restarts too. The step is taken in
    /// memory before the write, so a second login with the same code is refused even while the
    /// first one's write is under way.
    ///
    /// # Errors
    /// If an accepted code's time step cannot be saved: the caller refuses the login rather
    /// than let the code work again after a restart.
    pub(crate) async fn check_totp(
        &self,
        secret: &TotpSecret,
        code: &str,
    ) -> Result<bool, StateError> {
        {
            let mut last = self
                .totp_last_step
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match secret.verify(code, unix_now(), *last) {
                Some(step) => *last = Some(step),
                None => return Ok(false),
            }
        }
        let data = self.data.clone();
        let last = self.totp_last_step.clone();
        let writes = self.state_writes.clone();
        off_runtime(move || {
            let _in_order = writes.lock().unwrap_or_else(PoisonError::into_inner);
            // Steps only grow, so the latest is what must be on disk.
            match *last.lock().unwrap_or_else(PoisonError::into_inner) {
                Some(step) => data.save_totp_last_step(step),
                None => Ok(()),
            }
        })
        .await?;
        Ok(true)
    }

    /// Where a connecting device stands, recording new ones as pending.
    ///
    /// # Errors
    /// If the device list cannot be read (the caller refuses the login), or
    /// [`StateError::Busy`] if another process holds it too long.
    pub(crate) async fn device_status(
        &self,
        public_key: &[u8],
        name: &str,
    ) -> Result<DeviceStatus, StateError> {
        let data = self.data.clone();
        let (public_key, name) = (public_key.to_vec(), name.to_owned());
        off_runtime(move || {
            let mut devices = data.lock_devices()?;
            let status = devices.on_connect(&public_key, &name, unix_now());
            if let Err(e) = devices.save() {
                tracing::warn!(%e, "cannot save the device list");
            }
            Ok(status)
        })
        .await
    }
}

/// Runs `work` on tokio's blocking pool.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StateError> + Send + 'static,
) -> Result<T, StateError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down and never ran it.
        Err(_) => Err(StateError::Io(std::io::Error::other(
            "the agent is shutting down",
        ))),
    }
}
