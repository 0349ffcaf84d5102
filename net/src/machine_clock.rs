//! Time as the handshake machines see it: the Unix time when a handshake starts, advanced by
//! a monotonic clock, so a wall-clock step mid-handshake cannot move a deadline.

use std::time::Duration;

/// A handshake's clock.
pub struct MachineClock {
    base_unix: Duration,
    base: tokio::time::Instant,
}

impl MachineClock {
    /// Starts the clock now.
    pub fn start() -> Self {
        Self {
            base_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            base: tokio::time::Instant::now(),
        }
    }

    /// Now, as the time since the Unix epoch the machines take.
    pub fn now(&self) -> Duration {
        self.base_unix + self.base.elapsed()
    }

    /// The instant a machine's deadline `at` (time since the Unix epoch) falls on.
    pub fn instant(&self, at: Duration) -> tokio::time::Instant {
        self.base + at.saturating_sub(self.base_unix)
    }
}
