//! The decisions of one direction of one flow: whether a datagram is lost, and when a datagram
//! or a chunk of a TCP stream leaves. Pure and seeded, so the same sequence of packets gets the
//! same decisions in every run; the sockets are in `udp.rs` and `tcp.rs`.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::Impairment;

/// The segment size the TCP model draws losses for: a full-size segment on an Ethernet path
/// (1,500-byte MTU less 52 bytes of IP and TCP headers with timestamps).
pub const MSS: usize = 1448;

/// Linux's smallest retransmission timeout (`TCP_RTO_MIN`).
pub const MIN_RTO: Duration = Duration::from_millis(200);

/// The constant of Mathis et al.'s rate for TCP under random loss, `sqrt(3/2)`, for a
/// receiver that acknowledges every segment.
const MATHIS_C: f64 = 1.22;

/// Duplicate acknowledgements a TCP sender waits for before it retransmits without a timeout.
const DUP_ACK_THRESHOLD: usize = 3;

/// One direction of one flow (a UDP mapping or a TCP connection).
pub struct Link {
    impairment: Impairment,
    /// The round trip of the path, both directions' delays: how long recovery takes.
    round_trip: Duration,
    /// Loss draws: one per datagram, or one per segment of a stream, in order.
    loss: StdRng,
    /// Jitter draws: one per datagram or chunk. Apart from the loss draws, so the segments a
    /// stream loses do not depend on how its bytes were split into reads.
    jitter: StdRng,
    /// When the last datagram or chunk leaves: nothing overtakes it.
    last: Option<Instant>,
}

/// What the TCP model did with one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkFate {
    /// When the chunk leaves.
    pub departure: Instant,
    /// Segments of the chunk that were lost (and held it back).
    pub lost_segments: u32,
    /// How long the chunk was held for a retransmission beyond its delay (zero if none).
    pub held: Duration,
}

impl Link {
    /// A link with `impairment`, on a path whose round trip is `round_trip`, whose draws come
    /// from `seed`.
    pub fn new(impairment: Impairment, round_trip: Duration, seed: u64) -> Self {
        Self {
            impairment,
            round_trip,
            loss: StdRng::seed_from_u64(seed),
            jitter: StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15),
            last: None,
        }
    }

    /// A datagram arriving at `now`: `None` if it is lost, else when it leaves.
    pub fn datagram(&mut self, now: Instant) -> Option<Instant> {
        let lost = self.draw_loss();
        let departure = self.departure(now, Duration::ZERO, Duration::ZERO);
        if lost {
            None
        } else {
            self.last = Some(departure);
            Some(departure)
        }
    }

    /// A chunk of `len` bytes of a TCP stream read at `now`: when it may be written on.
    ///
    /// The chunk is `len / MSS` segments (a small write is one segment of its own, as with
    /// `TCP_NODELAY`), each lost with the link's probability. The stream loses nothing, but a
    /// lost segment holds everything behind it until it is retransmitted, as the receiving
    /// TCP delivers in order: for one round trip when at least three segments follow it in the
    /// chunk (the duplicate acknowledgements they cause make the sender retransmit at once:
    /// fast retransmit), else for a retransmission timeout, `max(200 ms, 2 × round trip)` (a
    /// lost tail segment, typical of small interactive writes, has nothing behind it to cause
    /// duplicate acknowledgements). Several losses in one chunk are one recovery: the longest
    /// hold counts.
    ///
    /// The sender's answer to loss, a smaller congestion window, is modelled by its
    /// steady-state rate (Mathis et al., 1997): at most `MSS / round trip × 1.22 / √p` bytes a
    /// second leave, as through a bottleneck of that rate.
    pub fn chunk(&mut self, len: usize, now: Instant) -> ChunkFate {
        let segments = len.div_ceil(MSS).max(1);
        let mut lost_segments = 0;
        let mut held = Duration::ZERO;
        for i in 0..segments {
            if self.draw_loss() {
                lost_segments += 1;
                let behind = segments - i - 1;
                let hold = if behind >= DUP_ACK_THRESHOLD {
                    self.round_trip
                } else {
                    self.rto()
                };
                held = held.max(hold);
            }
        }
        let serialisation = match self.loss_limited_rate() {
            Some(bytes_per_sec) => Duration::from_secs_f64(len as f64 / bytes_per_sec),
            None => Duration::ZERO,
        };
        let departure = self.departure(now, held, serialisation);
        self.last = Some(departure);
        ChunkFate {
            departure,
            lost_segments,
            held,
        }
    }

    /// The most a Reno-like TCP sender gets through this link's loss, in bytes a second
    /// (`None` without loss, or without a round trip to pace by).
    pub fn loss_limited_rate(&self) -> Option<f64> {
        let p = self.impairment.loss_percent / 100.0;
        let rtt = self.round_trip.as_secs_f64();
        (p > 0.0 && rtt > 0.0).then(|| MSS as f64 / rtt * MATHIS_C / p.sqrt())
    }

    /// The retransmission timeout of the TCP model.
    pub fn rto(&self) -> Duration {
        MIN_RTO.max(self.round_trip * 2)
    }

    fn draw_loss(&mut self) -> bool {
        self.impairment.loss_percent > 0.0
            && self.loss.gen::<f64>() * 100.0 < self.impairment.loss_percent
    }

    /// `now` plus the delay, plus or minus up to the jitter, plus `extra`, and no earlier than
    /// `gap` after the one before: jitter as a queue makes it, without reordering.
    /// (Reordering, which netem's jitter causes, makes both QUIC and TCP declare losses that
    /// did not happen.)
    fn departure(&mut self, now: Instant, extra: Duration, gap: Duration) -> Instant {
        let jitter = self.impairment.jitter;
        let mut at = now + self.impairment.delay + extra;
        if !jitter.is_zero() {
            let j = self.jitter.gen_range(-1.0..=1.0) * jitter.as_secs_f64();
            at = if j >= 0.0 {
                at + Duration::from_secs_f64(j)
            } else {
                at.checked_sub(Duration::from_secs_f64(-j)).unwrap_or(now)
            };
        }
        at = at.max(now);
        match self.last {
            Some(last) => at.max(last + gap),
            None => at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lossy(percent: f64) -> Impairment {
        Impairment {
            loss_percent: percent,
            delay: Duration::from_millis(10),
            jitter: Duration::from_millis(4),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_decisions_and_another_seed_others() {
        let now = Instant::now();
        let run = |seed| {
            let mut link = Link::new(lossy(5.0), Duration::from_millis(20), seed);
            (0..2_000u64)
                .map(|i| link.datagram(now + Duration::from_millis(i * 50)))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn datagram_loss_and_delay_are_within_tolerance() {
        let now = Instant::now();
        let mut link = Link::new(lossy(3.0), Duration::from_millis(20), 1);
        let n = 100_000u64;
        let mut lost = 0;
        let mut delays = Duration::ZERO;
        for i in 0..n {
            // Far enough apart that the queue never holds one back.
            let sent = now + Duration::from_millis(i * 20);
            match link.datagram(sent) {
                None => lost += 1,
                Some(at) => {
                    let d = at - sent;
                    assert!(
                        d >= Duration::from_millis(6) && d <= Duration::from_millis(14),
                        "{d:?}"
                    );
                    delays += d;
                }
            }
        }
        let percent = lost as f64 * 100.0 / n as f64;
        assert!((percent - 3.0).abs() < 0.2, "{percent}% lost");
        let mean = delays / (n - lost) as u32;
        assert!(
            mean.abs_diff(Duration::from_millis(10)) < Duration::from_micros(100),
            "{mean:?}"
        );
    }

    #[test]
    fn nothing_overtakes_the_one_before() {
        let now = Instant::now();
        let mut link = Link::new(lossy(0.0), Duration::from_millis(20), 3);
        let mut last = now;
        for i in 0..10_000u64 {
            let at = link.datagram(now + Duration::from_micros(i * 100)).unwrap();
            assert!(at >= last);
            last = at;
        }
    }

    #[test]
    fn a_stream_loses_its_share_of_segments_and_small_writes_are_segments_of_their_own() {
        let now = Instant::now();
        let mut link = Link::new(lossy(2.0), Duration::from_millis(20), 11);
        let big: u32 = (0..1_000)
            .map(|_| link.chunk(MSS * 10, now).lost_segments)
            .sum();
        // 2 % of 10,000 segments, within a few standard deviations (sd = 14).
        assert!((150..=250).contains(&big), "{big}");
        let small: u32 = (0..10_000).map(|_| link.chunk(64, now).lost_segments).sum();
        assert!((150..=250).contains(&small), "{small}");
    }

    #[test]
    fn a_lossy_stream_leaves_no_faster_than_tcp_gets_through_such_loss() {
        let now = Instant::now();
        let rtt = Duration::from_millis(15);
        let mut link = Link::new(lossy(2.0), rtt, 4);
        // 1448 / 0.015 × 1.22 / √0.02: about 833 kB/s.
        let rate = link.loss_limited_rate().unwrap();
        assert!((rate - 832_900.0).abs() < 1_000.0, "{rate}");
        let total = 100 * TCP_CHUNK_FOR_TEST;
        let last = (0..100)
            .map(|_| link.chunk(TCP_CHUNK_FOR_TEST, now).departure)
            .last()
            .unwrap();
        let secs = (last - now).as_secs_f64();
        assert!(secs >= total as f64 / rate * 0.99, "{secs} s");
        assert!(Link::new(lossy(0.0), rtt, 4).loss_limited_rate().is_none());
    }

    const TCP_CHUNK_FOR_TEST: usize = 64 * 1024;

    #[test]
    fn a_lost_tail_waits_a_timeout_and_a_lost_segment_with_followers_a_round_trip() {
        let now = Instant::now();
        let rtt = Duration::from_millis(30);
        let mut link = Link::new(
            Impairment {
                loss_percent: 100.0,
                delay: Duration::from_millis(15),
                jitter: Duration::ZERO,
            },
            rtt,
            5,
        );
        // A 64-byte write: a lone segment, lost with nothing after it.
        let small = link.chunk(64, now);
        assert_eq!(small.held, MIN_RTO);
        assert_eq!(small.departure, now + Duration::from_millis(15) + MIN_RTO);
        // A big chunk: its first segments have followers; its last three do not.
        let big = link.chunk(MSS * 20, now);
        assert_eq!(big.lost_segments, 20);
        assert_eq!(big.held, MIN_RTO);
        let mut slow = Link::new(
            Impairment {
                loss_percent: 100.0,
                delay: Duration::ZERO,
                jitter: Duration::ZERO,
            },
            Duration::from_millis(150),
            5,
        );
        assert_eq!(slow.rto(), Duration::from_millis(300));
        assert_eq!(slow.chunk(1, now).held, Duration::from_millis(300));
    }

    #[test]
    fn one_loss_with_followers_holds_a_round_trip() {
        let now = Instant::now();
        let rtt = Duration::from_millis(30);
        // Find a seed whose stream loses its first segment and none of the next four.
        let seed = (0..10_000u64)
            .find(|&s| {
                let mut l = Link::new(lossy(20.0), rtt, s);
                (0..5).map(|_| l.draw_loss()).collect::<Vec<_>>()
                    == [true, false, false, false, false]
            })
            .unwrap();
        let mut link = Link::new(lossy(20.0), rtt, seed);
        let fate = link.chunk(MSS * 5, now);
        assert_eq!(fate.lost_segments, 1);
        assert_eq!(fate.held, rtt);
    }
}
