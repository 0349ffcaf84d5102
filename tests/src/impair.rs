//! A user-space impairment forwarder (the kernel here has no netem): it listens on one loopback
//! port for TCP and UDP, as the relay does, and forwards both to a target with loss, delay and
//! jitter in each direction, deterministic under a seed.
//!
//! # The model
//!
//! - **UDP**: each datagram is lost with the given probability, else it leaves after the delay
//!   plus or minus up to the jitter, but never before the datagram ahead of it (jitter as a
//!   queue makes it; no reordering). Each client address gets its own upstream socket, as a
//!   NAT's mapping. Queues are bounded: a datagram that finds its queue full is dropped.
//! - **TCP**: bytes cannot be dropped from a stream, so a loss is modelled as what TCP does
//!   about it. Each chunk read is `len / 1448` segments (a small write is a segment of its
//!   own), each lost with the given probability, and a lost segment holds everything behind
//!   it until its retransmission arrives: one round trip of the path (fast retransmit) when
//!   three or more segments follow it in the same read, else a retransmission timeout of
//!   `max(200 ms, 2 × round trip)` (Linux's smallest RTO is 200 ms; a lone lost segment, as in
//!   interactive traffic, has nothing behind it to set off fast retransmit). The sender's
//!   smaller congestion window after losses is modelled by its steady-state rate (Mathis et
//!   al., 1997): `1448 / round trip × 1.22 / √p` bytes a second at most, as a bottleneck. Delay
//!   and jitter keep the stream's order: a chunk leaves no earlier than the one before it.
//!   The round trip is the forwarder's own (both directions' delays). QUIC, whose datagrams
//!   are really dropped, pays what its own loss recovery and congestion controller charge.
//! - **Determinism**: every direction of every flow (UDP mapping or TCP connection, numbered in
//!   the order they arrive) draws from its own generator seeded from the forwarder's seed, so
//!   the same sequence of datagrams, or of chunks read from a stream, gets the same decisions.
//! - **Bounds**: at most [`MAX_FLOWS`] mappings and connections; per TCP direction at most
//!   [`TCP_QUEUE`] chunks of [`TCP_CHUNK`] bytes in flight (then the reader waits:
//!   backpressure); per UDP direction at most [`UDP_QUEUE`] datagrams.

mod link;
mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

pub use link::{ChunkFate, Link, MIN_RTO, MSS};

/// Mappings (UDP) and connections (TCP) a forwarder holds at once; more are refused.
pub const MAX_FLOWS: usize = 1024;
/// Largest read from a TCP stream, in bytes.
pub const TCP_CHUNK: usize = 64 * 1024;
/// Chunks waiting in one direction of one TCP connection.
pub const TCP_QUEUE: usize = 32;
/// Datagrams waiting in one direction of one UDP mapping.
pub const UDP_QUEUE: usize = 1024;

/// What one direction of the path does to what crosses it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Probability of losing a datagram (UDP) or a segment (TCP), in percent.
    pub loss_percent: f64,
    /// One-way delay.
    pub delay: Duration,
    /// The most the delay varies either way (uniformly).
    pub jitter: Duration,
}

/// Both directions of a forwarder, and its seed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairments {
    /// From the clients to the target.
    pub to_target: Impairment,
    /// From the target back to the clients.
    pub from_target: Impairment,
    /// Where every decision's randomness comes from.
    pub seed: u64,
}

impl Impairments {
    /// The same loss both ways and half of `round_trip` as each way's delay, no jitter.
    pub fn symmetric(loss_percent: f64, round_trip: Duration, seed: u64) -> Self {
        let each = Impairment {
            loss_percent,
            delay: round_trip / 2,
            jitter: Duration::ZERO,
        };
        Self {
            to_target: each,
            from_target: each,
            seed,
        }
    }

    /// The same with up to `jitter` of variation on each way's delay.
    pub fn with_jitter(mut self, jitter: Duration) -> Self {
        self.to_target.jitter = jitter;
        self.from_target.jitter = jitter;
        self
    }

    /// The round trip the delays add up to.
    pub fn round_trip(&self) -> Duration {
        self.to_target.delay + self.from_target.delay
    }

    /// Whether nothing is impaired (the forwarder then copies without looking).
    fn is_none(&self) -> bool {
        self.to_target == Impairment::default() && self.from_target == Impairment::default()
    }

    /// The two links of flow number `flow`, each with a seed of its own.
    fn links(&self, flow: u64) -> (Link, Link) {
        let seed = |direction: u64| {
            // splitmix64's constants, to spread neighbouring flows far apart.
            let mut z = self
                .seed
                .wrapping_add(flow.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .wrapping_add(direction);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (
            Link::new(self.to_target, self.round_trip(), seed(1)),
            Link::new(self.from_target, self.round_trip(), seed(2)),
        )
    }
}

/// What a forwarder has done so far.
#[derive(Debug, Default)]
pub struct Counters {
    /// Datagrams forwarded, both ways.
    pub datagrams: AtomicU64,
    /// Datagrams lost on purpose.
    pub datagrams_lost: AtomicU64,
    /// Datagrams dropped because their queue was full (or the mapping table was).
    pub datagrams_dropped: AtomicU64,
    /// TCP chunks forwarded, both ways.
    pub chunks: AtomicU64,
    /// TCP segments lost (each held its stream back).
    pub segments_lost: AtomicU64,
    /// TCP connections refused because the forwarder held [`MAX_FLOWS`].
    pub connections_refused: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// What the forwarder's tasks share.
struct Shared {
    target: SocketAddr,
    impairments: Impairments,
    udp_blocked: AtomicBool,
    counters: Counters,
    /// Flows numbered so far (each one's seed follows from its number).
    flows: AtomicU64,
}

impl Shared {
    fn next_flow(&self) -> (Link, Link) {
        self.impairments
            .links(self.flows.fetch_add(1, Ordering::Relaxed))
    }
}

/// A running forwarder; stops when dropped.
pub struct Impairer {
    /// Where clients connect (TCP and UDP) instead of the target.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: JoinSet<()>,
}

impl Impairer {
    /// Starts a forwarder to `target` on a free loopback port (TCP and UDP).
    ///
    /// # Panics
    /// If no loopback port can be bound (this is test code).
    pub async fn start(target: SocketAddr, impairments: Impairments) -> Self {
        let (tcp, udp) = bind_twins().await;
        let addr = tcp.local_addr().unwrap();
        let shared = Arc::new(Shared {
            target,
            impairments,
            udp_blocked: AtomicBool::new(false),
            counters: Counters::default(),
            flows: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        tasks.spawn(tcp::serve(tcp, shared.clone()));
        tasks.spawn(udp::serve(udp, shared.clone()));
        Self {
            addr,
            shared,
            tasks,
        }
    }

    /// Drops every UDP datagram from now on (`true`), or lets them pass again: a network that
    /// blocks UDP.
    pub fn block_udp(&self, blocked: bool) {
        self.shared.udp_blocked.store(blocked, Ordering::Relaxed);
    }

    /// What it has done so far.
    pub fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    /// Stops forwarding (open connections and mappings end with it).
    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// A TCP listener and a UDP socket on the same free loopback port. Another socket may hold
/// the UDP twin of a free TCP port, so a few ports are tried.
async fn bind_twins() -> (TcpListener, UdpSocket) {
    for _ in 0..20 {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        if let Ok(udp) = udp::bind(tcp.local_addr().unwrap()) {
            return (tcp, udp);
        }
    }
    panic!("no loopback port free for both TCP and UDP in 20 tries");
}
