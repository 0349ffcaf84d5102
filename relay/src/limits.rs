//! Rate limits on unauthenticated work: token buckets keyed by source address, plus a global
//! budget for failures. Pure: the clock is passed in.
//!
//! # Keys
//!
//! An IPv4 address is one key. An IPv6 address is counted under three prefixes at once, since
//! one home connection owns at least a /64 and often a /56 or /48: its /64 gets the base
//! budget, its /56 four times it and its /48 sixteen times it (a /56 holds 256 /64s and a /48
//! 65,536, so a customer who rotates through their /64s gains at most 4x or 16x, not 256x). A
//! request must find a token in every one of its buckets, and spends one from each.
//!
//! # Global failure budget
//!
//! Failures (unknown or offline computer IDs, bad tickets, bad machine proofs, failed logins)
//! also spend from one relay-wide bucket, so a botnet spread over many /48s cannot probe for
//! computer IDs at its combined per-address rate. While that bucket is empty, only sources
//! that have not failed for [`QUIET_AFTER_FAILURE`] may look IDs up: employees who never
//! mistyped an ID keep connecting (an attacker cannot lock everybody out by spending the
//! budget), while each attacking source (IPv4 address, or IPv6 /48) gets at most one more try
//! per quiet period. Operators set its rate with `global_failures_per_sec` (see
//! [`crate::config::Settings`]).
//!
//! # Memory
//!
//! Each level keeps at most [`MAX_TRACKED`] buckets and forgets the least recently used one
//! when a new key arrives (O(1) per insert). A forgotten bucket starts full again, so a flood
//! of fresh /64s can only reset other /64s' buckets; their /56, /48 and the global bucket
//! still hold.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LruCache;

/// A bucket's shape: `burst` requests at once, refilled at `per_sec`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Tokens added per second.
    pub per_sec: f64,
    /// Bucket size.
    pub burst: f64,
}

impl Rate {
    fn times(self, k: f64) -> Self {
        Self {
            per_sec: self.per_sec * k,
            burst: self.burst * k,
        }
    }
}

/// The relay's limits: per source address (an IPv4 address or an IPv6 /64; see the module
/// doc for /56 and /48), and one global budget.
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
    /// Failures from all addresses together. When it runs out, only sources without a recent
    /// failure may look IDs up (see the module doc).
    pub global_failures: Rate,
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
            // Five a second steady (18,000 an hour across the whole internet), a minute's
            // worth at once: ample for employees mistyping IDs or finding their PC off, far
            // below what enumerating host-name-like IDs needs.
            global_failures: Rate {
                per_sec: 5.0,
                burst: 300.0,
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
            global_failures: r,
        }
    }
}

/// While the global failure budget is empty, a source that failed within this long is refused.
pub const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Most keys tracked per prefix level; beyond it the least recently used is forgotten.
pub const MAX_TRACKED: usize = 100_000;

/// How many keys an address is counted under (IPv6: /64, /56, /48; IPv4: one).
const LEVELS: usize = 3;

/// IPv6 prefix lengths, and how many times the base budget each gets.
const V6_LEVELS: [(u32, f64); LEVELS] = [(64, 1.0), (56, 4.0), (48, 16.0)];

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
    /// When a token was last spent.
    spent: Option<Instant>,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            last: now,
            spent: None,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(rate.burst);
        self.last = now;
    }

    fn spend(&mut self, now: Instant) {
        self.tokens = (self.tokens - 1.0).max(0.0);
        self.spent = Some(now);
    }
}

/// The keys an address is counted under: itself for IPv4 (also IPv4-mapped IPv6), its /64,
/// /56 and /48 for IPv6.
pub fn source_keys(ip: IpAddr) -> [Option<IpAddr>; LEVELS] {
    match ip {
        IpAddr::V4(_) => [Some(ip), None, None],
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => [Some(IpAddr::V4(v4)), None, None],
            None => V6_LEVELS.map(|(len, _)| {
                let mask = u128::MAX << (128 - len);
                Some(IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)))
            }),
        },
    }
}

/// The narrowest key an address is counted under: itself for IPv4, its /64 for IPv6.
pub fn source_key(ip: IpAddr) -> IpAddr {
    source_keys(ip)[0].unwrap_or(ip)
}

/// Token buckets for one kind of request, at every prefix level.
#[derive(Debug)]
pub struct RateLimiter {
    rates: [Rate; LEVELS],
    levels: Mutex<[LruCache<IpAddr, Bucket>; LEVELS]>,
}

/// `cache`'s bucket for `key`, created full if new, marked recently used and refilled.
fn bucket(
    cache: &mut LruCache<IpAddr, Bucket>,
    key: IpAddr,
    rate: Rate,
    now: Instant,
) -> Option<&mut Bucket> {
    if cache.get_mut(&key).is_none() {
        // Evicts the least recently used key when the level is full.
        cache.insert(key, Bucket::full(rate, now));
    }
    let b = cache.peek_mut(&key)?;
    b.refill(rate, now);
    Some(b)
}

impl RateLimiter {
    /// A limiter with `rate` per IPv4 address or IPv6 /64 (and 4x per /56, 16x per /48).
    pub fn new(rate: Rate) -> Self {
        Self::with_capacity(rate, MAX_TRACKED)
    }

    /// As [`RateLimiter::new`], remembering at most `capacity` keys per level (at least 1).
    pub fn with_capacity(rate: Rate, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            rates: V6_LEVELS.map(|(_, k)| rate.times(k)),
            levels: Mutex::new(std::array::from_fn(|_| LruCache::new(capacity))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [LruCache<IpAddr, Bucket>; LEVELS]> {
        self.levels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refills `ip`'s buckets; whether each has a token; then `spend` on all of them if
    /// `spend_if` says so given that answer.
    fn visit(&self, ip: IpAddr, now: Instant, spend_if: impl Fn(bool) -> bool) -> bool {
        let keys = source_keys(ip);
        let mut levels = self.lock();
        let mut ok = true;
        for (i, key) in keys.iter().enumerate() {
            if let Some(b) = key.and_then(|k| bucket(&mut levels[i], k, self.rates[i], now)) {
                ok &= b.tokens >= 1.0;
            }
        }
        if spend_if(ok) {
            for (i, key) in keys.iter().enumerate() {
                if let Some(b) = key.and_then(|k| levels[i].peek_mut(&k)) {
                    b.spend(now);
                }
            }
        }
        ok
    }

    /// Takes one token from each of `ip`'s buckets; false (and nothing taken) when one is
    /// empty.
    pub fn take(&self, ip: IpAddr, now: Instant) -> bool {
        self.visit(ip, now, |ok| ok)
    }

    /// Takes a token from each of `ip`'s buckets that has one, even if another has none
    /// (something that already happened, such as a failure, is always counted).
    pub fn charge(&self, ip: IpAddr, now: Instant) {
        self.visit(ip, now, |_| true);
    }

    /// Gives back a token taken by [`RateLimiter::take`] for work that turned out to be
    /// legitimate (a connection that authenticated, a lookup that paired), so that one busy
    /// address (an office behind NAT, a carrier-grade NAT) is held back only by what fails.
    pub fn refund(&self, ip: IpAddr, now: Instant) {
        let keys = source_keys(ip);
        let mut levels = self.lock();
        for (i, key) in keys.iter().enumerate() {
            if let Some(b) = key.and_then(|k| bucket(&mut levels[i], k, self.rates[i], now)) {
                b.tokens = (b.tokens + 1.0).min(self.rates[i].burst);
            }
        }
    }

    /// Whether each of `ip`'s buckets has a token, without taking any.
    pub fn has_token(&self, ip: IpAddr, now: Instant) -> bool {
        self.visit(ip, now, |_| false)
    }

    /// Whether none of `ip`'s buckets has spent a token within `quiet` before `now`.
    pub fn quiet(&self, ip: IpAddr, now: Instant, quiet: Duration) -> bool {
        let levels = self.lock();
        source_keys(ip).iter().enumerate().all(|(i, key)| {
            key.and_then(|k| levels[i].peek(&k))
                .and_then(|b| b.spent)
                .is_none_or(|t| now.saturating_duration_since(t) >= quiet)
        })
    }

    /// How many keys each level remembers now (/64 or IPv4, /56, /48).
    pub fn tracked(&self) -> [usize; LEVELS] {
        let levels = self.lock();
        std::array::from_fn(|i| levels[i].len())
    }
}

/// Failures: per source (as [`RateLimiter`]) and across all sources.
#[derive(Debug)]
pub struct FailureLimiter {
    per_source: RateLimiter,
    global_rate: Rate,
    global: Mutex<Bucket>,
}

impl FailureLimiter {
    /// A limiter with `per_source` per address and `global` across all of them.
    pub fn new(per_source: Rate, global: Rate) -> Self {
        Self::with_capacity(per_source, global, MAX_TRACKED)
    }

    /// As [`FailureLimiter::new`], remembering at most `capacity` keys per level.
    pub fn with_capacity(per_source: Rate, global: Rate, capacity: usize) -> Self {
        Self {
            per_source: RateLimiter::with_capacity(per_source, capacity),
            global_rate: global,
            global: Mutex::new(Bucket::full(global, Instant::now())),
        }
    }

    fn global(&self, now: Instant) -> std::sync::MutexGuard<'_, Bucket> {
        let mut g = self.global.lock().unwrap_or_else(|e| e.into_inner());
        g.refill(self.global_rate, now);
        g
    }

    /// Whether `ip` may still do work that can fail: it has failures left at every prefix
    /// level, and either the global budget has some left or `ip` has been quiet for
    /// [`QUIET_AFTER_FAILURE`].
    pub fn has_token(&self, ip: IpAddr, now: Instant) -> bool {
        self.per_source.has_token(ip, now)
            && (self.global(now).tokens >= 1.0
                || self.per_source.quiet(ip, now, QUIET_AFTER_FAILURE))
    }

    /// Counts a failure from `ip`, per source and globally.
    pub fn take(&self, ip: IpAddr, now: Instant) {
        self.per_source.charge(ip, now);
        self.global(now).spend(now);
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
    pub failures: FailureLimiter,
}

impl Limiters {
    /// Limiters for `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            connections: RateLimiter::new(limits.connections),
            lookups: RateLimiter::new(limits.lookups),
            failures: FailureLimiter::new(limits.failures, limits.global_failures),
        }
    }
}

/// New tunnels inside one client connection: limited per connection, not per address, once
/// the connection has paired (see `client_conn`). Above what one session opens (5,300–5,800 a
/// second sustained, measured on 2 cores), so only a client hammering its office PC meets it;
/// each costs the office PC one cheap refused resumption.
pub const TUNNELS_PER_CONNECTION: Rate = Rate {
    per_sec: 10_000.0,
    burst: 10_000.0,
};

/// One connection's own bucket (no address, no lock: one task owns it).
#[derive(Debug)]
pub struct ConnectionRate {
    rate: Rate,
    bucket: Bucket,
}

impl ConnectionRate {
    /// A full bucket of `rate`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate,
            bucket: Bucket::full(rate, now),
        }
    }

    /// Takes a token; false when there is none.
    pub fn take(&mut self, now: Instant) -> bool {
        self.bucket.refill(self.rate, now);
        if self.bucket.tokens < 1.0 {
            return false;
        }
        self.bucket.spend(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const ONE: Rate = Rate {
        per_sec: 0.0,
        burst: 1.0,
    };

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::new(Rate {
            per_sec: 2.0,
            burst: 3.0,
        });
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        assert!(l.take(a, t0) && l.take(a, t0) && l.take(a, t0));
        assert!(!l.take(a, t0));
        assert!(!l.has_token(a, t0 + Duration::from_millis(400)));
        assert!(l.take(a, t0 + Duration::from_millis(500)));
        assert!(
            l.take(ip("192.0.2.2"), t0),
            "addresses are counted separately"
        );
    }

    #[test]
    fn ipv6_addresses_in_one_slash_64_share_a_bucket() {
        let l = RateLimiter::new(ONE);
        let t0 = Instant::now();
        assert!(l.take(ip("2001:db8:1:2::1"), t0));
        assert!(!l.take(ip("2001:db8:1:2::ffff"), t0));
        assert!(l.take(ip("2001:db8:1:3::1"), t0));
        assert_eq!(source_key(ip("::ffff:192.0.2.9")), ip("192.0.2.9"));
        assert_eq!(
            source_keys(ip("2001:db8:aaaa:bbcc::1")),
            [
                Some(ip("2001:db8:aaaa:bbcc::")),
                Some(ip("2001:db8:aaaa:bb00::")),
                Some(ip("2001:db8:aaaa::"))
            ]
        );
    }

    #[test]
    fn different_slash_64s_in_one_slash_56_share_its_budget_and_slash_48s_theirs() {
        let l = RateLimiter::new(ONE);
        let t0 = Instant::now();
        // The /56 2001:db8:1:100::/56 holds 4 tokens: four of its /64s get one each...
        for n in 0..4 {
            assert!(
                l.take(ip(&format!("2001:db8:1:1{n:02x}::1")), t0),
                "/64 {n}"
            );
        }
        // ...and a fifth /64 in it is refused though its own bucket is full.
        assert!(!l.has_token(ip("2001:db8:1:1ff::1"), t0));
        assert!(!l.take(ip("2001:db8:1:1ff::1"), t0));
        // The refusal took nothing: the /48 has 16 - 4 = 12 left for its other /56s.
        for n in 0..12 {
            let s = 2 + n / 4;
            let a = ip(&format!("2001:db8:1:{s:x}{:02x}::1", n % 4));
            assert!(l.take(a, t0), "/64 {a}");
        }
        assert!(!l.take(ip("2001:db8:1:f00::1"), t0), "the /48 is spent");
        assert!(l.take(ip("2001:db8:2::1"), t0), "another /48 is not");
    }

    fn per_source() -> Rate {
        Rate {
            per_sec: 0.0,
            burst: 20.0,
        }
    }

    #[test]
    fn the_global_budget_caps_failures_across_many_slash_48s() {
        let global = Rate {
            per_sec: 0.0,
            burst: 10.0,
        };
        let l = FailureLimiter::new(per_source(), global);
        let t0 = Instant::now();
        // Forty /48s (and forty IPv4 addresses) each try five failures, round-robin: alone,
        // each has budget for twenty.
        let sources: Vec<IpAddr> = (0..40)
            .flat_map(|n| {
                [
                    ip(&format!("2001:db8:{n:x}::1")),
                    ip(&format!("198.51.100.{n}")),
                ]
            })
            .collect();
        let mut allowed = 0;
        for _ in 0..5 {
            for &s in &sources {
                if l.has_token(s, t0) {
                    l.take(s, t0);
                    allowed += 1;
                }
            }
        }
        // Ten from the global budget; then each source still quiet gets one, and a source
        // that has failed gets nothing more.
        assert_eq!(allowed, sources.len(), "one failure per source, no more");
        let spent = sources[0];
        assert!(!l.has_token(spent, t0 + QUIET_AFTER_FAILURE / 2));
        // Another /64 in a spent /48 is refused too.
        assert!(!l.has_token(ip("2001:db8:0:ffff::1"), t0));
        // A source that never failed is served while the budget is spent: nobody is locked
        // out by others' failures.
        assert!(l.has_token(ip("2001:db8:ffff::1"), t0));
        assert!(l.has_token(ip("203.0.113.7"), t0));
        // After a quiet period, a spent source may try once more.
        let later = t0 + QUIET_AFTER_FAILURE;
        assert!(l.has_token(spent, later));
        l.take(spent, later);
        assert!(!l.has_token(spent, later));
    }

    #[test]
    fn the_global_budget_refills() {
        let global = Rate {
            per_sec: 1.0,
            burst: 2.0,
        };
        let l = FailureLimiter::new(per_source(), global);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        l.take(a, t0);
        l.take(a, t0);
        assert!(!l.has_token(a, t0));
        assert!(l.has_token(a, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn filling_beyond_capacity_forgets_the_least_recently_used() {
        let l = RateLimiter::with_capacity(ONE, 3);
        let t0 = Instant::now();
        let [a, b, c, d] = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"].map(ip);
        for x in [a, b, c] {
            assert!(l.take(x, t0));
        }
        // Using `a` again makes `b` the least recently used.
        assert!(!l.take(a, t0));
        assert!(l.take(d, t0));
        assert_eq!(l.tracked(), [3, 0, 0]);
        assert!(!l.take(a, t0), "a recent key is kept");
        assert!(!l.take(c, t0), "a recent key is kept");
        assert!(!l.take(d, t0), "the newest key is kept");
        assert!(l.take(b, t0), "the oldest was forgotten, so it starts full");
        assert_eq!(l.tracked(), [3, 0, 0]);
        // IPv6 levels are bounded the same way.
        for n in 0..10 {
            l.take(ip(&format!("2001:db8:{n:x}::1")), t0);
        }
        assert_eq!(l.tracked(), [3, 3, 3]);
    }

    #[test]
    fn a_refund_gives_back_what_legitimate_work_took_and_no_more() {
        let limiter = RateLimiter::new(Rate {
            per_sec: 0.0,
            burst: 2.0,
        });
        let now = Instant::now();
        let a = ip("192.0.2.1");
        assert!(limiter.take(a, now));
        assert!(limiter.take(a, now));
        assert!(!limiter.take(a, now), "burst spent");
        limiter.refund(a, now);
        assert!(limiter.take(a, now), "a refunded token is usable again");
        limiter.refund(a, now);
        limiter.refund(a, now);
        limiter.refund(a, now);
        assert!(limiter.take(a, now));
        assert!(limiter.take(a, now));
        assert!(
            !limiter.take(a, now),
            "refunds never raise the bucket past its burst"
        );
    }

    #[test]
    fn a_connection_has_its_own_tunnel_budget() {
        let rate = Rate {
            per_sec: 10.0,
            burst: 3.0,
        };
        let now = Instant::now();
        let mut one = ConnectionRate::new(rate, now);
        let mut other = ConnectionRate::new(rate, now);
        assert!((0..3).all(|_| one.take(now)));
        assert!(!one.take(now), "burst spent");
        assert!(other.take(now), "another connection is not charged");
        assert!(
            one.take(now + Duration::from_millis(100)),
            "refilled at the rate"
        );
        assert!(!one.take(now + Duration::from_millis(100)));
    }
}
