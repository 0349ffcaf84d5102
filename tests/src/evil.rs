//! A malicious relay: a [`SpliceHook`] that records, flips, duplicates, reorders, truncates or
//! cross-wires the bytes it should only copy. The end-to-end layer must turn every one of
//! these into a refused or closed session, never into plaintext or an unauthenticated
//! connection to the desktop.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use telework_net::transport::Stream;
use telework_relay::splice::{SpliceHook, SplicePair};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to agent.
    ToAgent,
    /// Agent to client.
    ToClient,
}

/// Client-to-agent bytes of each splice, in the order splices began.
pub type Recording = Arc<Mutex<Vec<Vec<u8>>>>;

/// What the relay does to one splice (counted from 0 in the order sessions pair up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Copy faithfully (and record).
    None,
    /// Flip one bit of the byte at `offset`.
    FlipBit {
        /// Which way.
        direction: Direction,
        /// Byte position in that direction's stream.
        offset: usize,
    },
    /// Send the chunk that contains `offset` twice.
    Duplicate {
        /// Which way.
        direction: Direction,
        /// Byte position in that direction's stream.
        offset: usize,
    },
    /// Hold back the chunk that contains `offset` and send it after the next one.
    Reorder {
        /// Which way.
        direction: Direction,
        /// Byte position in that direction's stream.
        offset: usize,
    },
    /// Forward `offset` bytes, then close both connections.
    Truncate {
        /// Which way.
        direction: Direction,
        /// Bytes forwarded before the cut.
        offset: usize,
    },
}

/// The malicious relay's hook.
pub struct EvilRelay {
    /// Attack per splice index; splices past the end are copied faithfully.
    plan: Vec<Attack>,
    /// Cross-wire splices in pairs from this splice index on (client of one with the agent
    /// of the next).
    swap_from: Option<usize>,
    next: AtomicUsize,
    waiting: Mutex<Option<SplicePair>>,
    /// Client-to-agent bytes of each splice, in order.
    pub recorded: Recording,
    /// Set once an attack actually touched a byte.
    pub applied: Arc<AtomicBool>,
}

impl EvilRelay {
    /// A relay that applies `plan[i]` to the i-th splice.
    pub fn new(plan: Vec<Attack>) -> Arc<Self> {
        Arc::new(Self {
            plan,
            swap_from: None,
            next: AtomicUsize::new(0),
            waiting: Mutex::new(None),
            recorded: Arc::default(),
            applied: Arc::default(),
        })
    }

    /// A relay that copies the first `from` splices faithfully, then connects each client to
    /// the agent of the *other* splice of each following pair.
    pub fn swapping(from: usize) -> Arc<Self> {
        Arc::new(Self {
            plan: vec![],
            swap_from: Some(from),
            next: AtomicUsize::new(0),
            waiting: Mutex::new(None),
            recorded: Arc::default(),
            applied: Arc::default(),
        })
    }
}

impl SpliceHook for EvilRelay {
    fn splice(&self, pair: SplicePair) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let index = self.next.fetch_add(1, Ordering::SeqCst);
        let recorded = self.recorded.clone();
        let applied = self.applied.clone();
        if self.swap_from.is_some_and(|from| index >= from) {
            let partner = self.waiting.lock().unwrap().take();
            let Some(first) = partner else {
                *self.waiting.lock().unwrap() = Some(pair);
                return Box::pin(async {});
            };
            applied.store(true, Ordering::SeqCst);
            let a = SplicePair {
                id: first.id.clone(),
                client: first.client,
                client_left: first.client_left,
                agent: pair.agent,
                agent_left: pair.agent_left,
            };
            let b = SplicePair {
                id: pair.id,
                client: pair.client,
                client_left: pair.client_left,
                agent: first.agent,
                agent_left: first.agent_left,
            };
            let (r1, r2) = (recorded.clone(), recorded);
            let (p1, p2) = (applied.clone(), applied);
            return Box::pin(async move {
                tokio::join!(run(a, Attack::None, r1, p1), run(b, Attack::None, r2, p2));
            });
        }
        let attack = self.plan.get(index).copied().unwrap_or(Attack::None);
        Box::pin(run(pair, attack, recorded, applied))
    }
}

async fn run(pair: SplicePair, attack: Attack, recorded: Recording, applied: Arc<AtomicBool>) {
    let slot = {
        let mut r = recorded.lock().unwrap();
        r.push(pair.client_left.to_vec());
        r.len() - 1
    };
    let (cr, cw) = tokio::io::split(pair.client);
    let (ar, aw) = tokio::io::split(pair.agent);
    let mut aw = aw;
    let mut cw = cw;
    let _ = aw.write_all(&pair.client_left).await;
    let _ = cw.write_all(&pair.agent_left).await;
    let up = copy(
        cr,
        aw,
        Direction::ToAgent,
        attack,
        Some((recorded, slot)),
        applied.clone(),
    );
    let down = copy(ar, cw, Direction::ToClient, attack, None, applied);
    let _ = tokio::join!(up, down);
}

async fn copy(
    mut from: ReadHalf<Stream>,
    mut to: WriteHalf<Stream>,
    direction: Direction,
    attack: Attack,
    record: Option<(Recording, usize)>,
    applied: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pos = 0usize;
    let mut held: Option<Vec<u8>> = None;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut chunk = buf[..n].to_vec();
        if let Some((rec, slot)) = &record {
            rec.lock().unwrap()[*slot].extend_from_slice(&chunk);
        }
        let start = pos;
        pos += n;
        let hit = |d: Direction, offset: usize| d == direction && (start..pos).contains(&offset);
        let mut out: Vec<Vec<u8>> = Vec::new();
        match attack {
            Attack::FlipBit {
                direction: d,
                offset,
            } if hit(d, offset) => {
                chunk[offset - start] ^= 0x01;
                applied.store(true, Ordering::SeqCst);
                out.push(chunk);
            }
            Attack::Duplicate {
                direction: d,
                offset,
            } if hit(d, offset) => {
                applied.store(true, Ordering::SeqCst);
                out.push(chunk.clone());
                out.push(chunk);
            }
            Attack::Reorder {
                direction: d,
                offset,
            } if hit(d, offset) => {
                held = Some(chunk);
            }
            Attack::Truncate {
                direction: d,
                offset,
            } if hit(d, offset) => {
                applied.store(true, Ordering::SeqCst);
                out.push(chunk[..offset - start].to_vec());
                for c in out {
                    let _ = to.write_all(&c).await;
                }
                // Cut: close without passing on anything more.
                let _ = to.shutdown().await;
                return;
            }
            _ => {
                out.push(chunk);
                if let Some(h) = held.take() {
                    applied.store(true, Ordering::SeqCst);
                    out.push(h);
                }
            }
        }
        for c in out {
            if to.write_all(&c).await.is_err() {
                return;
            }
        }
    }
    if let Some(h) = held.take() {
        let _ = to.write_all(&h).await;
    }
    let _ = to.shutdown().await;
}
