//! Wrong-password throttling on the office PC: a pure policy with the clock passed in (Unix
//! seconds), saved in the data dir (`lockout.toml`) so a restart does not reset it.
//!
//! Five tries, then a lockout that doubles each time (1 min, 2 min, 4 min, … capped at one
//! hour) until a login succeeds.
//!
//! An attempt is counted as a failure **when it starts**, before the agent answers anything
//! that depends on the password record, and given back only when the login succeeds. So an
//! attempt that ends any other way (the relay drops it, the client vanishes, the agent is
//! stopped or killed) stays counted, across restarts, and parallel attempts gain nothing.
//!
//! There are separate budgets: one shared by everybody, and one for each device that has
//! logged in successfully before (it proves its device key before the password step).
//! Strangers who know the computer ID can use up the shared budget, but never lock out the
//! employee's known devices.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Wrong passwords (or one-time codes) allowed before a lockout.
pub const FREE_TRIES: u32 = 5;
/// The first lockout.
pub const FIRST_LOCKOUT: Duration = Duration::from_secs(60);
/// The longest lockout.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(3600);
/// Most known devices with budgets of their own; the one whose last success is oldest makes
/// room for a new one.
pub const MAX_KNOWN_DEVICES: usize = 200;

/// One failure budget: failures since the last success, and the lockout they caused.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Attempts since the last success that did not succeed (including those under way).
    #[serde(default)]
    pub failures: u32,
    /// Lockouts since the last success.
    #[serde(default)]
    pub lockouts: u32,
    /// Unix seconds the current lockout ends.
    pub locked_until: Option<u64>,
}

impl Budget {
    /// How long the budget is still locked at `now`, if it is.
    pub fn locked_for(&self, now: u64) -> Option<Duration> {
        self.locked_until
            .filter(|until| now < *until)
            .map(|until| Duration::from_secs(until - now))
    }

    /// Counts an attempt as failed from the start. Returns what the client is told if it does
    /// fail: the tries left, or the lockout it started.
    fn charge(&mut self, now: u64) -> Result<Outcome, Duration> {
        if let Some(left) = self.locked_for(now) {
            return Err(left);
        }
        self.failures = self.failures.saturating_add(1);
        let into_round = self.failures % FREE_TRIES;
        if into_round != 0 {
            return Ok(Outcome::TriesLeft(FREE_TRIES - into_round));
        }
        let lock = FIRST_LOCKOUT
            .saturating_mul(1u32 << self.lockouts.min(16))
            .min(MAX_LOCKOUT);
        self.lockouts = self.lockouts.saturating_add(1);
        self.locked_until = Some(now + lock.as_secs());
        Ok(Outcome::LockedOut(lock))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }

    /// Takes back one attempt that proved right; if it was the one that started the current
    /// lockout, the lockout is lifted too.
    fn give_back(&mut self, if_failed: Outcome) {
        self.failures = self.failures.saturating_sub(1);
        if let Outcome::LockedOut(_) = if_failed {
            self.lockouts = self.lockouts.saturating_sub(1);
            self.locked_until = None;
        }
    }
}

/// What a client is told if its attempt fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// This many tries are left before a lockout.
    TriesLeft(u32),
    /// This failure started a lockout this long.
    LockedOut(Duration),
}

/// A device that has logged in successfully, with its own budget.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnownDevice {
    /// Unix seconds of its last successful login.
    pub last_success: u64,
    /// Its own failures and lockout.
    #[serde(default)]
    pub budget: Budget,
}

/// Which budget an attempt is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charged {
    /// The budget everybody shares.
    Shared,
    /// A known device's own budget (hex of its public key).
    Device(String),
}

/// An attempt under way: already counted as a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The budget it was charged to.
    pub charged: Charged,
    /// What the client is told if it fails.
    pub if_failed: Outcome,
}

/// The wrong-password state of one office PC.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockout {
    /// The shared budget (top-level keys, as files from earlier versions have them).
    #[serde(default)]
    failures: u32,
    #[serde(default)]
    lockouts: u32,
    locked_until: Option<u64>,
    /// Known devices by the hex of their full public key.
    #[serde(default, rename = "device")]
    devices: BTreeMap<String, KnownDevice>,
}

impl Lockout {
    /// The shared budget.
    pub fn shared(&self) -> Budget {
        Budget {
            failures: self.failures,
            lockouts: self.lockouts,
            locked_until: self.locked_until,
        }
    }

    fn set_shared(&mut self, budget: Budget) {
        self.failures = budget.failures;
        self.lockouts = budget.lockouts;
        self.locked_until = budget.locked_until;
    }

    /// A known device's budget.
    pub fn device(&self, public_key: &[u8]) -> Option<&KnownDevice> {
        self.devices.get(&hex::encode(public_key))
    }

    /// Number of known devices.
    pub fn known_devices(&self) -> usize {
        self.devices.len()
    }

    /// Starts an attempt from the device with `public_key` (already proven) at Unix time
    /// `now`, counting it as failed until [`Lockout::succeed`]. Save the state before
    /// answering the attempt.
    ///
    /// # Errors
    /// How long the budget it would be charged to is locked.
    pub fn begin(&mut self, public_key: &[u8], now: u64) -> Result<Attempt, Duration> {
        let key = hex::encode(public_key);
        if let Some(device) = self.devices.get_mut(&key) {
            let if_failed = device.budget.charge(now)?;
            return Ok(Attempt {
                charged: Charged::Device(key),
                if_failed,
            });
        }
        let mut shared = self.shared();
        let if_failed = shared.charge(now)?;
        self.set_shared(shared);
        Ok(Attempt {
            charged: Charged::Shared,
            if_failed,
        })
    }

    /// A login succeeded: its attempt is given back (a known device's budget starts over; on
    /// the shared budget only this attempt is taken back) and its device becomes known, with a
    /// budget of its own from now on.
    pub fn succeed(&mut self, attempt: &Attempt, public_key: &[u8], now: u64) {
        self.give_back(attempt);
        let key = hex::encode(public_key);
        if !self.devices.contains_key(&key) && self.devices.len() >= MAX_KNOWN_DEVICES {
            let oldest = self
                .devices
                .iter()
                .min_by_key(|(_, d)| d.last_success)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.devices.remove(&oldest);
            }
        }
        let device = self.devices.entry(key).or_default();
        device.last_success = now;
    }

    /// The password (and code) of an attempt proved right, but the login was refused for
    /// another reason (a device waiting for approval, settings the agent cannot read): the
    /// attempt is given back as a success would, without making the device known.
    pub fn give_back(&mut self, attempt: &Attempt) {
        match &attempt.charged {
            // Everybody shares this budget: only this attempt is given back, so an employee's
            // success never wipes out a stranger's failures (or the attempts still under way).
            Charged::Shared => {
                let mut shared = self.shared();
                shared.give_back(attempt.if_failed);
                self.set_shared(shared);
            }
            // Only this device could have failed on its own budget: it starts over.
            Charged::Device(key) => {
                if let Some(d) = self.devices.get_mut(key) {
                    d.budget.clear();
                }
            }
        }
    }

    /// Clears every failure and lockout (`telework-agent unlock`); known devices stay known.
    /// Returns how many failures were cleared.
    pub fn unlock(&mut self) -> u32 {
        let mut cleared = self.failures;
        self.set_shared(Budget::default());
        for d in self.devices.values_mut() {
            cleared += d.budget.failures;
            d.budget.clear();
        }
        cleared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;
    const STRANGER: &[u8] = &[1; 32];
    const EMPLOYEE: &[u8] = &[2; 32];

    #[test]
    fn five_failures_lock_for_a_minute_then_doubling() {
        let mut l = Lockout::default();
        for left in (0..FREE_TRIES).rev() {
            let a = l.begin(STRANGER, T0).unwrap();
            if left == 0 {
                assert_eq!(a.if_failed, Outcome::LockedOut(FIRST_LOCKOUT));
            } else {
                assert_eq!(a.if_failed, Outcome::TriesLeft(left));
            }
        }
        assert_eq!(l.shared().failures, FREE_TRIES);
        assert_eq!(l.begin(STRANGER, T0 + 59), Err(Duration::from_secs(1)));
        let t1 = T0 + 60;
        for _ in 0..FREE_TRIES - 1 {
            l.begin(STRANGER, t1).unwrap();
        }
        let a = l.begin(STRANGER, t1).unwrap();
        assert_eq!(a.if_failed, Outcome::LockedOut(2 * FIRST_LOCKOUT));
        assert_eq!(l.begin(STRANGER, t1 + 119), Err(Duration::from_secs(1)));
        l.begin(STRANGER, t1 + 120).unwrap();
    }

    #[test]
    fn attempts_count_when_they_start_and_success_gives_them_back() {
        let mut l = Lockout::default();
        // Five parallel attempts that never finish: the sixth is refused.
        let attempts: Vec<_> = (0..FREE_TRIES)
            .map(|_| l.begin(STRANGER, T0).unwrap())
            .collect();
        assert!(l.begin(STRANGER, T0).is_err());
        // The one that started the lockout succeeding lifts it and takes back only itself.
        l.succeed(&attempts[4], EMPLOYEE, T0);
        assert_eq!(l.shared().failures, FREE_TRIES - 1);
        assert_eq!(l.shared().locked_for(T0), None);
        let a = l.begin(STRANGER, T0).unwrap();
        assert_eq!(a.if_failed, Outcome::LockedOut(FIRST_LOCKOUT));
        // Another one succeeding takes back only itself: the strangers' failures stay.
        let mut l = Lockout::default();
        let mine = l.begin(EMPLOYEE, T0).unwrap();
        l.begin(STRANGER, T0).unwrap();
        l.begin(STRANGER, T0).unwrap();
        l.succeed(&mine, EMPLOYEE, T0);
        assert_eq!(l.shared().failures, 2);
    }

    #[test]
    fn strangers_never_lock_out_a_known_device() {
        let mut l = Lockout::default();
        let first = l.begin(EMPLOYEE, T0).unwrap();
        assert_eq!(first.charged, Charged::Shared);
        l.succeed(&first, EMPLOYEE, T0);
        for _ in 0..FREE_TRIES {
            l.begin(STRANGER, T0).unwrap();
        }
        assert!(
            l.begin(STRANGER, T0 + 1).is_err(),
            "strangers are locked out"
        );
        let employee = l.begin(EMPLOYEE, T0 + 1).unwrap();
        assert_eq!(employee.charged, Charged::Device(hex::encode(EMPLOYEE)));
        // The known device's own failures lock only the known device.
        let mut l2 = l.clone();
        for _ in 0..FREE_TRIES - 1 {
            l2.begin(EMPLOYEE, T0 + 1).unwrap();
        }
        assert!(l2.begin(EMPLOYEE, T0 + 2).is_err());
        // Its success does not clear the strangers' lockout.
        l.succeed(&employee, EMPLOYEE, T0 + 1);
        assert!(l.begin(STRANGER, T0 + 2).is_err());
    }

    #[test]
    fn known_devices_are_bounded() {
        let mut l = Lockout::default();
        for i in 0..(MAX_KNOWN_DEVICES as u64 + 5) {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&i.to_be_bytes());
            let a = l.begin(&key, T0 + i).unwrap();
            l.succeed(&a, &key, T0 + i);
        }
        assert_eq!(l.known_devices(), MAX_KNOWN_DEVICES);
        assert!(l.device(&[0; 32]).is_none(), "the oldest made room");
    }

    #[test]
    fn lockout_is_capped() {
        let mut now = T0;
        let mut l = Lockout::default();
        let mut last = Duration::ZERO;
        for _ in 0..20 * FREE_TRIES {
            if let Outcome::LockedOut(lock) = l.begin(STRANGER, now).unwrap().if_failed {
                last = lock;
                now += lock.as_secs();
            }
        }
        assert_eq!(last, MAX_LOCKOUT);
    }

    #[test]
    fn saved_state_survives_a_restart_and_unlock_clears_it() {
        let mut l = Lockout::default();
        let a = l.begin(EMPLOYEE, T0).unwrap();
        l.succeed(&a, EMPLOYEE, T0);
        for _ in 0..FREE_TRIES {
            l.begin(STRANGER, T0).unwrap();
        }
        let saved = toml::to_string(&l).unwrap();
        let mut restored: Lockout = toml::from_str(&saved).unwrap();
        assert_eq!(restored, l);
        assert_eq!(
            restored.begin(STRANGER, T0 + 30),
            Err(Duration::from_secs(30))
        );
        assert_eq!(restored.unlock(), FREE_TRIES);
        restored.begin(STRANGER, T0 + 30).unwrap();
        assert!(restored.device(EMPLOYEE).is_some());
    }

    #[test]
    fn files_from_earlier_versions_still_load() {
        let old: Lockout =
            toml::from_str("failures = 2\nlockouts = 1\nlocked_until = 1700000100\n").unwrap();
        assert_eq!(old.shared().failures, 2);
        assert_eq!(old.shared().locked_for(T0), Some(Duration::from_secs(100)));
    }
}
