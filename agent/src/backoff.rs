//! Reconnect back-off: 0.5 s doubling to 4 s, with full jitter, so a relay restart is not met
//! by every agent at the same instant and every agent is back within 5 s of the relay; after a
//! minute of failures, doubling on to 30 s, so a relay that stays down is not hammered.

use std::time::Duration;

/// First delay ceiling.
pub const INITIAL: Duration = Duration::from_millis(500);
/// Largest delay ceiling in the first minute of trying.
pub const SOON: Duration = Duration::from_secs(4);
/// Largest delay ceiling.
pub const MAX: Duration = Duration::from_secs(30);
/// Attempts at up to [`SOON`] before the ceiling grows on (0.5 + 1 + 2 + 4 × 14 s ceilings:
/// about a minute).
const SOON_ATTEMPTS: u32 = 17;

/// Exponential back-off with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            ceiling: INITIAL,
            attempts: 0,
        }
    }
}

impl Backoff {
    /// The next delay: uniform in `[0, ceiling]`, with `ceiling` doubling up to [`MAX`].
    /// `unit` is a random number in `[0, 1)` (passed in so tests are deterministic).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let delay = self.ceiling.mul_f64(unit.clamp(0.0, 1.0));
        self.attempts += 1;
        let cap = if self.attempts < SOON_ATTEMPTS {
            SOON
        } else {
            MAX
        };
        self.ceiling = (self.ceiling * 2).min(cap);
        delay
    }

    /// After a successful connection: start again from the initial delay.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_4_s_for_a_minute_then_to_30_s_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let ceilings: Vec<Duration> = (0..30).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(ceilings[0], Duration::from_millis(500));
        assert_eq!(ceilings[1], Duration::from_secs(1));
        assert_eq!(ceilings[3], SOON);
        let first_minute: Duration = ceilings[..SOON_ATTEMPTS as usize].iter().sum();
        assert!(first_minute >= Duration::from_secs(55), "{first_minute:?}");
        assert!(ceilings[..SOON_ATTEMPTS as usize]
            .iter()
            .all(|c| *c <= SOON));
        assert_eq!(ceilings[29], MAX);
        assert_eq!(b.next_delay(0.5), MAX / 2);
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        b.reset();
        assert_eq!(b.next_delay(1.0), INITIAL);
    }
}
