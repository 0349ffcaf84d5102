//! Writes changes to the shared registry in batches, off the connection tasks: presence
//! (agent online here, agent gone) and live sessions (started, ended here). A hello or a
//! client's request never waits for the database, and a thousand agents coming back after a
//! restart cost a few transactions, not two thousand.
//!
//! While the database is unreachable the changes wait (at most [`MAX_PENDING`]) and are
//! written when it is back; agents and sessions already here keep being served meanwhile.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use crate::registry::{PresenceChange, Registry, RegistryError, SessionChange};

/// Changes queued at most before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

/// Most changes in one transaction.
const MAX_BATCH: usize = 2_048;

/// Changes held at most while the database is down; the oldest go first.
const MAX_PENDING: usize = 200_000;

/// How long to wait before trying a failed write again.
const RETRY: Duration = Duration::from_secs(1);

/// A change the registry takes in batches.
pub trait Change: Clone + Send + Sync + 'static {
    /// What the log calls them.
    const WHAT: &'static str;

    /// Applies `batch` in one transaction, oldest first.
    fn write(
        registry: &Registry,
        batch: Vec<Self>,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send;
}

impl Change for PresenceChange {
    const WHAT: &'static str = "presence changes";

    fn write(
        registry: &Registry,
        batch: Vec<Self>,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send {
        registry.record_presence(batch)
    }
}

impl Change for SessionChange {
    const WHAT: &'static str = "session changes";

    fn write(
        registry: &Registry,
        batch: Vec<Self>,
    ) -> impl Future<Output = Result<(), RegistryError>> + Send {
        registry.record_sessions(batch)
    }
}

/// Presence changes on their way to the registry.
pub type PresenceWriter = BatchWriter<PresenceChange>;

/// Session starts and ends on their way to the registry.
pub type SessionWriter = BatchWriter<SessionChange>;

/// The sending side, shared by every connection task.
pub struct BatchWriter<C> {
    tx: mpsc::Sender<C>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<C>>>,
    dropped: AtomicU64,
}

impl<C: Change> Default for BatchWriter<C> {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }
}

impl<C: Change> BatchWriter<C> {
    /// Queues a change without waiting; a full queue drops it (counted).
    pub fn record(&self, change: C) {
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
        let mut pending: Vec<C> = Vec::new();
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
                warn!(lost, "{} dropped: the registry is too slow", C::WHAT);
            }
            while !pending.is_empty() {
                let take = pending.len().min(MAX_BATCH);
                let batch: Vec<C> = pending[..take].to_vec();
                match C::write(&registry, batch).await {
                    Ok(()) => {
                        pending.drain(..take);
                    }
                    Err(e) => {
                        warn!(%e, waiting = pending.len(), "writing {} failed; retrying", C::WHAT);
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
