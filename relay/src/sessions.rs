//! Live sessions as the relay sees them: a client connection paired with an office PC. The
//! relay knows the computer ID, where the client connects from, which device key it proved,
//! the transport, when it began and how many bytes went each way; never what they were.
//!
//! The operator's console lists them and can end one: the relay then closes the client's
//! connection with [`ErrorCode::EndedByOperator`], which the client prints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use telework_protocol::{ComputerId, ErrorCode};
use tokio_util::sync::CancellationToken;

use crate::splice::ByteCounts;

/// One live session, for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Names the session on this relay (for "end session").
    pub id: u64,
    /// The office PC.
    pub computer_id: ComputerId,
    /// The client's connection's source address.
    pub client: SocketAddr,
    /// The fingerprint of the device key the client proved.
    pub device: String,
    /// `QUIC` or `TLS/TCP`.
    pub transport: &'static str,
    /// When its first tunnel was paired.
    pub started: SystemTime,
    /// Bytes from the client to the office PC so far.
    pub bytes_up: u64,
    /// Bytes from the office PC to the client so far.
    pub bytes_down: u64,
    /// Tunnels open now.
    pub tunnels: usize,
}

/// What the relay knows of a session when it starts.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// The office PC.
    pub computer_id: ComputerId,
    /// The client's address.
    pub client: SocketAddr,
    /// The device key's fingerprint.
    pub device: String,
    /// `QUIC` or `TLS/TCP`.
    pub transport: &'static str,
}

struct Entry {
    start: NewSession,
    started: SystemTime,
    counts: Arc<ByteCounts>,
    tunnels: Arc<AtomicUsize>,
    end: Arc<EndSwitch>,
}

/// How a session is ended from outside its connection's task: the token wakes the task, the
/// code is what the client is told.
#[derive(Default)]
pub struct EndSwitch {
    /// Cancelled to end the session.
    pub token: CancellationToken,
    code: Mutex<Option<ErrorCode>>,
}

impl EndSwitch {
    /// Ends the session with `code` (the first reason given stands).
    pub fn end(&self, code: ErrorCode) {
        self.code
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(code);
        self.token.cancel();
    }

    /// Why the session was ended, if it was.
    pub fn code(&self) -> Option<ErrorCode> {
        *self.code.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The live sessions of this relay.
#[derive(Default)]
pub struct LiveSessions {
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
}

/// A started session, held by its client connection's task. Dropping it does not end the
/// session's record: [`LiveSessions::finish`] does, with the totals.
pub struct SessionHandle {
    /// The session's number.
    pub id: u64,
    /// The office PC.
    pub computer_id: ComputerId,
    /// Its byte counts, which its tunnels' splices add to.
    pub counts: Arc<ByteCounts>,
    /// Its open tunnels.
    pub tunnels: Arc<AtomicUsize>,
    /// Set when an operator ends the session (or disables its office PC).
    pub end: Arc<EndSwitch>,
    /// The client's address.
    pub client: SocketAddr,
    /// The device key's fingerprint.
    pub device: String,
    /// `QUIC` or `TLS/TCP`.
    pub transport: &'static str,
    /// When it started, as listed.
    pub since: SystemTime,
    started: Instant,
}

impl SessionHandle {
    /// How long the session has lasted.
    pub fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

impl LiveSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new session; `end` is thrown when an operator ends it.
    pub fn start(&self, start: NewSession, end: Arc<EndSwitch>) -> SessionHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let counts = Arc::new(ByteCounts::default());
        let tunnels = Arc::new(AtomicUsize::new(0));
        let since = SystemTime::now();
        let handle = SessionHandle {
            id,
            computer_id: start.computer_id.clone(),
            counts: counts.clone(),
            tunnels: tunnels.clone(),
            end: end.clone(),
            client: start.client,
            device: start.device.clone(),
            transport: start.transport,
            since,
            started: Instant::now(),
        };
        self.lock().insert(
            id,
            Entry {
                start,
                started: since,
                counts,
                tunnels,
                end,
            },
        );
        handle
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .lock()
            .iter()
            .map(|(&id, e)| SessionInfo {
                id,
                computer_id: e.start.computer_id.clone(),
                client: e.start.client,
                device: e.start.device.clone(),
                transport: e.start.transport,
                started: e.started,
                bytes_up: e.counts.up.load(Ordering::Relaxed),
                bytes_down: e.counts.down.load(Ordering::Relaxed),
                tunnels: e.tunnels.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    /// How many sessions are live.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Ends session `id` at an operator's request; returns whether it was live.
    pub fn end(&self, id: u64) -> bool {
        match self.lock().get(&id) {
            Some(e) => {
                e.end.end(ErrorCode::EndedByOperator);
                true
            }
            None => false,
        }
    }

    /// Ends every live session of the office PC `computer_id` with `code` (it was disabled
    /// or removed); returns how many.
    pub fn end_all_of(&self, computer_id: &ComputerId, code: ErrorCode) -> usize {
        let entries = self.lock();
        let mut ended = 0;
        for e in entries.values() {
            if e.start.computer_id == *computer_id {
                e.end.end(code);
                ended += 1;
            }
        }
        ended
    }

    /// Removes a session whose connection has closed and returns its last record.
    pub fn finish(&self, handle: &SessionHandle) -> Option<SessionInfo> {
        let e = self.lock().remove(&handle.id)?;
        Some(SessionInfo {
            id: handle.id,
            computer_id: e.start.computer_id,
            client: e.start.client,
            device: e.start.device,
            transport: e.start.transport,
            started: e.started,
            bytes_up: e.counts.up.load(Ordering::Relaxed),
            bytes_down: e.counts.down.load(Ordering::Relaxed),
            tunnels: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str) -> NewSession {
        NewSession {
            computer_id: id.parse().unwrap(),
            client: "127.0.0.1:5000".parse().unwrap(),
            device: "ab".repeat(16),
            transport: "QUIC",
        }
    }

    #[test]
    fn sessions_are_listed_counted_ended_and_finished() {
        let live = LiveSessions::default();
        let a = live.start(new("pc-a"), Arc::default());
        let b = live.start(new("pc-b"), Arc::default());
        a.counts.up.fetch_add(5, Ordering::Relaxed);
        a.tunnels.fetch_add(2, Ordering::Relaxed);
        let listed = live.list();
        assert_eq!(listed.len(), 2);
        assert_eq!((listed[0].bytes_up, listed[0].tunnels), (5, 2));
        assert_eq!(live.count(), 2);

        assert!(live.end(b.id));
        assert!(b.end.token.is_cancelled());
        assert_eq!(b.end.code(), Some(ErrorCode::EndedByOperator));
        assert!(!a.end.token.is_cancelled());
        assert!(!live.end(999));

        let last = live.finish(&a).unwrap();
        assert_eq!((last.computer_id.as_str(), last.bytes_up), ("pc-a", 5));
        assert!(live.finish(&a).is_none());
        assert_eq!(live.count(), 1);
        assert_eq!(
            live.end_all_of(&"pc-b".parse().unwrap(), ErrorCode::Disabled),
            1
        );
        assert_eq!(
            b.end.code(),
            Some(ErrorCode::EndedByOperator),
            "the first reason stands"
        );
    }
}
