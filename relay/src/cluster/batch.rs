//! Writes presence changes (agent online here, agent gone) to the shared registry in batches,
//! off the connection tasks: a hello never waits for the database, and a thousand agents
//! coming back after a restart cost a few transactions, not two thousand.
//!
//! While the database is unreachable the changes wait (at most [`MAX_PENDING`]) and are
//! written when it is back; agents already online keep being served meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::registry::{PresenceChange, Registry};

/// Changes queued at most before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

/// Most changes in one transaction.
const MAX_BATCH: usize = 2_048;

/// Changes held at most while the database is down; the oldest go first.
const MAX_PENDING: usize = 200_000;

/// How long to wait before trying a failed write again.
const RETRY: Duration = Duration::from_secs(1);

/// The sending side, shared by every connection task.
pub struct PresenceWriter {
    tx: mpsc::Sender<PresenceChange>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<PresenceChange>>>,
    dropped: AtomicU64,
}

impl Default for PresenceWriter {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }
}

impl PresenceWriter {
    /// Queues a change without waiting; a full queue drops it (counted).
    pub fn record(&self, change: PresenceChange) {
        if self.tx.try_send(change).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes queued changes until every sender is gone or `stop` is cancelled, then writes
    /// what is left (once). Only the first call gets the queue; later ones return at once.
    pub async fn run(&self, registry: Arc<Registry>, stop: tokio_util::sync::CancellationToken) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut pending: Vec<PresenceChange> = Vec::new();
        loop {
            let stopping = if pending.is_empty() {
                tokio::select! {
                    first = rx.recv() => match first {
                        Some(change) => { pending.push(change); false }
                        None => true,
                    },
                    () = stop.cancelled() => true,
                }
            } else {
                stop.is_cancelled()
            };
            while pending.len() < MAX_PENDING {
                match rx.try_recv() {
                    Ok(change) => pending.push(change),
                    Err(_) => break,
                }
            }
            let lost = self.dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                warn!(lost, "presence changes dropped: the registry is too slow");
            }
            while !pending.is_empty() {
                let take = pending.len().min(MAX_BATCH);
                let batch: Vec<PresenceChange> = pending[..take].to_vec();
                match registry.record_presence(batch).await {
                    Ok(()) => {
                        pending.drain(..take);
                    }
                    Err(e) => {
                        warn!(%e, waiting = pending.len(), "writing presence failed; retrying");
                        if pending.len() > MAX_PENDING {
                            let excess = pending.len() - MAX_PENDING;
                            pending.drain(..excess);
                        }
                        break;
                    }
                }
            }
            if stopping {
                return;
            }
            if !pending.is_empty() {
                tokio::select! {
                    () = tokio::time::sleep(RETRY) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
    }
}
