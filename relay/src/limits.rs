//! Per-source-address rate limits: token buckets keyed by IP address (IPv6 by /64, since one
//! home connection owns a whole /64). Pure: the clock is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// A bucket's shape: `burst` requests at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Bucket size.
    pub burst: f64,
}

/// The relay's limits per source address.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// New TCP connections.
    pub connections: Rate,
    /// Computer-ID lookups by clients.
    pub lookups: Rate,
    /// Failures: unknown or offline IDs, bad tickets, bad machine proofs. When these run
    /// out, every lookup from the address is refused until they refill, which caps how fast
    /// a stranger can probe which computer IDs exist.
    pub failures: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connections: Rate {
                per_sec: 20.0,
                burst: 100.0,
            },
            lookups: Rate {
                per_sec: 2.0,
                burst: 60.0,
            },
            failures: Rate {
                per_sec: 0.2,
                burst: 20.0,
            },
        }
    }
}

impl Limits {
    /// Limits so high they never apply (for benchmarks and load tests on one address).
    pub fn unlimited() -> Self {
        let r = Rate {
            per_sec: 1e9,
            burst: 1e9,
        };
        Self {
            connections: r,
            lookups: r,
            failures: r,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Most addresses tracked at once; beyond it, addresses with full buckets are forgotten.
const MAX_TRACKED: usize = 100_000;

/// Token buckets for one kind of request.
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The key an address is counted under: itself for IPv4, its /64 for IPv6.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl RateLimiter {
    /// A limiter with `rate`.
    pub fn new(rate: Rate) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn with_bucket<T>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_TRACKED {
            let rate = self.rate;
            buckets.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * rate.per_sec
                    < rate.burst
            });
            if buckets.len() >= MAX_TRACKED {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(source_key(ip)).or_insert(Bucket {
            tokens: self.rate.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate.per_sec).min(self.rate.burst);
        bucket.last = now;
        f(bucket)
    }

    /// Takes one token for `ip`; false when none is left.
    pub fn take(&self, ip: IpAddr, now: Instant) -> bool {
        self.with_bucket(ip, now, |b| {
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                true
            } else {
                false
            }
        })
    }

    /// Whether `ip` has a token left, without taking it.
    pub fn has_token(&self, ip: IpAddr, now: Instant) -> bool {
        self.with_bucket(ip, now, |b| b.tokens >= 1.0)
    }
}

/// All of the relay's limiters.
#[derive(Debug)]
pub struct Limiters {
    /// New connections.
    pub connections: RateLimiter,
    /// Lookups.
    pub lookups: RateLimiter,
    /// Failures.
    pub failures: RateLimiter,
}

impl Limiters {
    /// Limiters for `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            connections: RateLimiter::new(limits.connections),
            lookups: RateLimiter::new(limits.lookups),
            failures: RateLimiter::new(limits.failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::new(Rate {
            per_sec: 2.0,
            burst: 3.0,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        assert!(l.take(ip, t0) && l.take(ip, t0) && l.take(ip, t0));
        assert!(!l.take(ip, t0));
        assert!(!l.has_token(ip, t0 + Duration::from_millis(400)));
        assert!(l.take(ip, t0 + Duration::from_millis(500)));
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.take(other, t0), "addresses are counted separately");
    }

    #[test]
    fn ipv6_addresses_in_one_slash_64_share_a_bucket() {
        let l = RateLimiter::new(Rate {
            per_sec: 0.0,
            burst: 1.0,
        });
        let t0 = Instant::now();
        assert!(l.take("2001:db8:1:2::1".parse().unwrap(), t0));
        assert!(!l.take("2001:db8:1:2::ffff".parse().unwrap(), t0));
        assert!(l.take("2001:db8:1:3::1".parse().unwrap(), t0));
        assert_eq!(
            source_key("::ffff:192.0.2.9".parse().unwrap()),
            "192.0.2.9".parse::<IpAddr>().unwrap()
        );
    }
}
