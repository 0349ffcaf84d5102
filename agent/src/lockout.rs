//! Wrong-password throttling on the office PC: a pure policy with the clock passed in (Unix
//! seconds), saved in the data dir so a restart does not reset it.
//!
//! Five tries, then a lockout that doubles each time (1 min, 2 min, 4 min, … capped at one
//! hour) until a login succeeds. Attempts in flight count against the free tries, so an
//! attacker cannot run many guesses in parallel before the first failure is recorded.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Wrong passwords (or one-time codes) allowed before a lockout.
pub const FREE_TRIES: u32 = 5;
/// The first lockout.
pub const FIRST_LOCKOUT: Duration = Duration::from_secs(60);
/// The longest lockout.
pub const MAX_LOCKOUT: Duration = Duration::from_secs(3600);

/// Why an attempt may not start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Locked out for this long.
    LockedOut(Duration),
    /// Too many attempts already in flight; try again in a moment.
    Busy,
}

/// Failure counter and lockout state for one machine.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lockout {
    failures: u32,
    lockouts: u32,
    /// Unix seconds the current lockout ends.
    locked_until: Option<u64>,
    #[serde(skip)]
    in_flight: u32,
}

impl Lockout {
    /// Starts an attempt at Unix time `now`; call [`Lockout::fail`], [`Lockout::succeed`] or
    /// [`Lockout::abandon`] when it ends.
    ///
    /// # Errors
    /// [`Refused`] when locked out or when every remaining try is already in flight.
    pub fn begin(&mut self, now: u64) -> Result<(), Refused> {
        if let Some(until) = self.locked_until {
            if now < until {
                return Err(Refused::LockedOut(Duration::from_secs(until - now)));
            }
            self.locked_until = None;
        }
        if self.failures + self.in_flight >= FREE_TRIES {
            return Err(Refused::Busy);
        }
        self.in_flight += 1;
        Ok(())
    }

    /// Records a wrong password or code. Returns the tries left, or the lockout that starts.
    pub fn fail(&mut self, now: u64) -> Result<u32, Duration> {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.failures += 1;
        if self.failures < FREE_TRIES {
            return Ok(FREE_TRIES - self.failures);
        }
        let lock = FIRST_LOCKOUT
            .saturating_mul(1u32 << self.lockouts.min(16))
            .min(MAX_LOCKOUT);
        self.lockouts += 1;
        self.failures = 0;
        self.locked_until = Some(now + lock.as_secs());
        Err(lock)
    }

    /// Records a full success: the counters start over.
    /// Returns whether the saved state changed (so an unchanged state need not be written).
    pub fn succeed(&mut self) -> bool {
        self.in_flight = self.in_flight.saturating_sub(1);
        let changed = self.failures != 0 || self.lockouts != 0;
        self.failures = 0;
        self.lockouts = 0;
        changed
    }

    /// Ends an attempt that was neither right nor wrong (for example a device not yet
    /// approved after a right password).
    pub fn abandon(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000;

    #[test]
    fn five_failures_lock_for_a_minute_then_doubling() {
        let mut l = Lockout::default();
        for left in (0..FREE_TRIES).rev() {
            l.begin(T0).unwrap();
            match l.fail(T0) {
                Ok(n) => assert_eq!(n, left),
                Err(lock) => {
                    assert_eq!(left, 0);
                    assert_eq!(lock, FIRST_LOCKOUT);
                }
            }
        }
        assert_eq!(
            l.begin(T0 + 59),
            Err(Refused::LockedOut(Duration::from_secs(1)))
        );
        let t1 = T0 + 60;
        for _ in 0..FREE_TRIES - 1 {
            l.begin(t1).unwrap();
            assert!(l.fail(t1).is_ok());
        }
        l.begin(t1).unwrap();
        assert_eq!(l.fail(t1), Err(2 * FIRST_LOCKOUT));
        assert_eq!(
            l.begin(t1 + 119),
            Err(Refused::LockedOut(Duration::from_secs(1)))
        );
        l.begin(t1 + 120).unwrap();
    }

    #[test]
    fn success_resets_and_parallel_attempts_are_bounded() {
        let mut l = Lockout::default();
        for _ in 0..FREE_TRIES {
            l.begin(T0).unwrap();
        }
        assert_eq!(l.begin(T0), Err(Refused::Busy));
        l.succeed();
        l.begin(T0).unwrap();
        l.abandon();
        let mut l = Lockout::default();
        l.begin(T0).unwrap();
        l.fail(T0).unwrap();
        l.begin(T0).unwrap();
        l.succeed();
        l.begin(T0).unwrap();
        assert_eq!(l.fail(T0), Ok(FREE_TRIES - 1));
    }

    #[test]
    fn lockout_is_capped() {
        let mut now = T0;
        let mut l = Lockout::default();
        let mut last = Duration::ZERO;
        for _ in 0..20 {
            for _ in 0..FREE_TRIES {
                l.begin(now).unwrap();
                if let Err(lock) = l.fail(now) {
                    last = lock;
                    now += lock.as_secs();
                }
            }
        }
        assert_eq!(last, MAX_LOCKOUT);
    }

    #[test]
    fn saved_state_survives_a_restart() {
        let mut l = Lockout::default();
        for _ in 0..FREE_TRIES {
            l.begin(T0).unwrap();
            let _ = l.fail(T0);
        }
        l.in_flight = 3;
        let saved = toml::to_string(&l).unwrap();
        let mut restored: Lockout = toml::from_str(&saved).unwrap();
        assert_eq!(
            restored.in_flight, 0,
            "attempts in flight died with the old process"
        );
        assert_eq!(
            restored.begin(T0 + 30),
            Err(Refused::LockedOut(Duration::from_secs(30)))
        );
        restored.begin(T0 + 60).unwrap();
    }
}
