//! What a login reads and changes on disk: the wrong-password count, the last one-time code
//! used, the device list.
//!
//! The agent runs on one thread, and that thread also carries every open session's desktop
//! bytes. So the file work a login does runs on tokio's blocking pool instead: waiting up to
//! 2 s for the device-list lock (held by a `telework-agent devices` command), or an fsync on
//! a slow office disk, would otherwise freeze every open session for as long.

use std::sync::{Arc, PoisonError};

use telework_protocol::e2e::messages::Refusal;

use crate::access::Access;
use crate::devices::DeviceStatus;
use crate::lockout::{Attempt, Lockout};
use crate::state::StateError;
use crate::totp::TotpSecret;
use crate::{unix_now, Agent};

impl Agent {
    /// Starts a login attempt from a device that has proven its key: counts it as a failure
    /// on disk, under the budget of a known device or the shared one, before anything that
    /// depends on the password record is sent.
    ///
    /// # Errors
    /// The refusal to send: locked out, or the attempt could not be recorded (fail closed: an
    /// attempt that cannot be counted is not answered).
    pub(crate) async fn attempt_begin(&self, device_key: &[u8]) -> Result<Attempt, Refusal> {
        let data = self.data.clone();
        let writes = self.state_writes.clone();
        let key = device_key.to_vec();
        let begun = off_runtime(move || {
            let _in_order = writes.lock().unwrap_or_else(PoisonError::into_inner);
            data.update_lockout(|l| l.begin(&key, unix_now()))
        })
        .await;
        match begun {
            Ok(Ok(attempt)) => Ok(attempt),
            Ok(Err(locked)) => Err(Refusal::LockedOut {
                retry_after_secs: locked.as_secs().max(1),
            }),
            Err(StateError::Busy(path)) => {
                tracing::warn!(path = %path.display(), "the wrong-password state is locked by another process; refusing a login for now");
                Err(Refusal::Busy)
            }
            Err(e) => {
                tracing::warn!(%e, "cannot record a login attempt; refusing logins until it can be recorded");
                Err(Refusal::Misconfigured)
            }
        }
    }

    /// A login succeeded: gives its attempt back and remembers the device, so it has a
    /// failure budget of its own from now on. If that cannot be saved the attempt stays
    /// counted, which only errs on the safe side.
    pub(crate) async fn attempt_succeeded(&self, attempt: Attempt, device_key: &[u8]) {
        let key = device_key.to_vec();
        self.end_attempt(move |l| l.succeed(&attempt, &key, unix_now()))
            .await;
    }

    /// The password (and code) of an attempt proved right but the login was refused for
    /// another reason: gives the attempt back (see [`crate::lockout::Lockout::give_back`]).
    pub(crate) async fn attempt_given_back(&self, attempt: Attempt) {
        self.end_attempt(move |l| l.give_back(&attempt)).await;
    }

    async fn end_attempt(&self, change: impl FnOnce(&mut Lockout) + Send + 'static) {
        let data = self.data.clone();
        let writes = self.state_writes.clone();
        let saved = off_runtime(move || {
            let _in_order = writes.lock().unwrap_or_else(PoisonError::into_inner);
            data.update_lockout(change)
        })
        .await;
        if let Err(e) = saved {
            tracing::warn!(%e, "cannot save a successful login in the wrong-password state");
        }
    }

    /// The settings that decide who may stay logged in, as they are on disk now (read again
    /// only when a file changed).
    pub(crate) async fn access(&self) -> Result<Arc<Access>, StateError> {
        if let Some(access) = self.access_cache.if_unchanged(&self.data) {
            return Ok(access);
        }
        let data = self.data.clone();
        let cache = self.access_cache.clone();
        off_runtime(move || cache.current(&data)).await
    }

    /// Checks a one-time code at `now` (seconds since the Unix epoch); each code works once, across restarts too. The step is taken in
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
        now: u64,
    ) -> Result<bool, StateError> {
        {
            let mut last = self
                .totp_last_step
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match secret.verify(code, now, *last) {
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

    /// Where a device stands on the list now, without recording it.
    ///
    /// # Errors
    /// If the device list cannot be read (the caller refuses the login).
    pub(crate) async fn device_status(
        &self,
        public_key: &[u8],
    ) -> Result<Option<DeviceStatus>, StateError> {
        let data = self.data.clone();
        let public_key = public_key.to_vec();
        off_runtime(move || Ok(data.devices()?.status(&public_key))).await
    }

    /// Records a device that passed every other check of a login, and returns where it
    /// stands (see [`crate::devices::Devices::admit`]).
    ///
    /// # Errors
    /// If the device list cannot be read or written (the caller refuses the login), or
    /// [`StateError::Busy`] if another process holds it too long.
    pub(crate) async fn admit_device(
        &self,
        public_key: &[u8],
        name: &str,
        approval_required: bool,
    ) -> Result<DeviceStatus, StateError> {
        let data = self.data.clone();
        let (public_key, name) = (public_key.to_vec(), name.to_owned());
        off_runtime(move || {
            let mut devices = data.lock_devices()?;
            let (status, changed) =
                devices.admit_changed(&public_key, &name, unix_now(), approval_required);
            if changed {
                devices.save()?;
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
