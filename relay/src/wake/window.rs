//! One wake per office PC per [`WAKE_WINDOW`]: wake requests come from clients that cannot
//! log in (the PC is asleep), so nothing else stops a stranger from asking again and again.
//! Pure: the clock is passed in.

use std::time::{Duration, Instant};

use hashlink::LruCache;
use telework_protocol::ComputerId;

/// The relay asks an office PC's wakers at most once in this time.
pub const WAKE_WINDOW: Duration = Duration::from_secs(30);

/// Most PCs remembered; beyond it the least recently woken is forgotten (it was woken at
/// least this many requests ago, which at the address limits takes far longer than
/// [`WAKE_WINDOW`]).
const MAX_TRACKED: usize = 100_000;

/// When each PC was last woken.
pub struct WakeWindow {
    last: LruCache<ComputerId, Instant>,
}

impl Default for WakeWindow {
    fn default() -> Self {
        Self {
            last: LruCache::new(MAX_TRACKED),
        }
    }
}

impl WakeWindow {
    /// Whether `id` may be woken now (and if so, counts it).
    ///
    /// # Errors
    /// The time left in its window, when it was woken less than [`WAKE_WINDOW`] ago.
    pub fn take(&mut self, id: &ComputerId, now: Instant) -> Result<(), Duration> {
        if let Some(at) = self.last.get(id) {
            let since = now.saturating_duration_since(*at);
            if since < WAKE_WINDOW {
                return Err(WAKE_WINDOW - since);
            }
        }
        self.last.insert(id.clone(), now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wake_per_pc_per_window() {
        let mut w = WakeWindow::default();
        let (a, b): (ComputerId, ComputerId) = ("pc-a".parse().unwrap(), "pc-b".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(w.take(&a, t0), Ok(()));
        assert_eq!(w.take(&b, t0), Ok(()));
        assert_eq!(
            w.take(&a, t0 + Duration::from_secs(12)),
            Err(Duration::from_secs(18))
        );
        assert_eq!(w.take(&a, t0 + WAKE_WINDOW), Ok(()));
        assert!(w
            .take(&a, t0 + WAKE_WINDOW + Duration::from_secs(1))
            .is_err());
    }
}
