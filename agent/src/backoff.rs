//! Reconnect back-off: 0.5 s doubling to 30 s, with full jitter, so a relay restart is not
//! met by every agent at the same instant.

use std::time::Duration;

/// First delay ceiling.
pub const INITIAL: Duration = Duration::from_millis(500);
/// Largest delay ceiling.
pub const MAX: Duration = Duration::from_secs(30);

/// Exponential back-off with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { ceiling: INITIAL }
    }
}

impl Backoff {
    /// The next delay: uniform in `[0, ceiling]`, with `ceiling` doubling up to [`MAX`].
    /// `unit` is a random number in `[0, 1)` (passed in so tests are deterministic).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let delay = self.ceiling.mul_f64(unit.clamp(0.0, 1.0));
        self.ceiling = (self.ceiling * 2).min(MAX);
        delay
    }

    /// After a successful connection: start again from the initial delay.
    pub fn reset(&mut self) {
        self.ceiling = INITIAL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let ceilings: Vec<Duration> = (0..10).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(ceilings[0], Duration::from_millis(500));
        assert_eq!(ceilings[1], Duration::from_secs(1));
        assert_eq!(ceilings[9], MAX);
        assert_eq!(b.next_delay(0.5), MAX / 2);
        assert_eq!(b.next_delay(0.0), Duration::ZERO);
        b.reset();
        assert_eq!(b.next_delay(1.0), INITIAL);
    }
}
