//! The audit log: typed events, and a handle the relay's tasks record them with without
//! waiting for SQLite.
//!
//! [`Audit::record`] puts the event on a bounded queue and returns at once; one writer thread
//! stores what is queued in batches (one transaction each). When the queue is full the event
//! is counted instead, and the writer stores a row saying how many were dropped
//! ([`AuditEvent::Dropped`]). Refused lookups go to [`Audit::lookup_refused`], which counts
//! them per address per minute ([`refusals`]); the writer stores one row per address when the
//! minute is over. [`retain`] prunes rows older than the retention period.
//!
//! The rows live in the registry's `audit` table ([`crate::registry::audit`]); `telework-relay
//! audit` prints them.

pub mod refusals;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;
use telework_protocol::ComputerId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::{AuditRow, Registry};
pub use refusals::{Refusal, RefusalCounts};

/// Events waiting for the writer; beyond this, events are counted as dropped.
pub const AUDIT_QUEUE: usize = 4096;

/// Most rows the writer stores in one transaction.
const MAX_BATCH: usize = 512;

/// How often the writer looks for minutes of refused lookups that have ended.
const SUMMARY_TICK: Duration = Duration::from_secs(5);

/// How often the relay deletes rows older than the retention period.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Default retention, in days (`audit_days`).
pub const DEFAULT_AUDIT_DAYS: u32 = 90;

/// Who removed a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// `telework-relay machines remove` on the relay's host.
    Cli,
    /// An operator, by account name (the web console or the API).
    Operator(String),
}

impl Actor {
    /// The `actor` column: `cli`, or the operator's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Cli => "cli",
            Self::Operator(name) => name,
        }
    }
}

/// Something for the audit log. Each variant is one row; its kind (the `kind` column and
/// `telework-relay audit --kind`) is in [`AuditEvent::kind`].
#[derive(Debug, Clone, PartialEq)]
pub enum AuditEvent {
    /// `enrolled`: a machine registered (or registered again with the same key) through the
    /// relay; `with_token` when an enrolment token was spent on it.
    Enrolled {
        /// The computer ID.
        id: ComputerId,
        /// The agent's address.
        address: SocketAddr,
        /// Whether an enrolment token was used up.
        with_token: bool,
    },
    /// `removed`: a machine's registration was removed. The actor column says who (`cli`, or
    /// the operator's name with `"via": "console"` in the detail).
    Removed {
        /// The computer ID.
        id: ComputerId,
        /// Who removed it.
        by: Actor,
    },
    /// `agent_online`: an agent proved its machine key and is reachable.
    AgentOnline {
        /// The computer ID.
        id: ComputerId,
        /// The agent's address.
        address: SocketAddr,
        /// `QUIC` or `TLS/TCP`.
        transport: String,
    },
    /// `agent_offline`: an agent's connection ended.
    AgentOffline {
        /// The computer ID.
        id: ComputerId,
        /// The agent's address.
        address: SocketAddr,
        /// `QUIC` or `TLS/TCP`.
        transport: String,
        /// How long it was online.
        online_secs: u64,
        /// Why: `no keepalive`, `registration removed`, `relay shutting down`, ...
        reason: String,
    },
    /// `session_started`: a client's tunnel to an agent was paired.
    SessionStarted {
        /// The computer ID.
        id: ComputerId,
        /// The client's address.
        client: SocketAddr,
        /// The client device key's fingerprint.
        device: String,
        /// `QUIC` or `TLS/TCP`.
        transport: String,
    },
    /// `session_ended`: a session ended.
    SessionEnded {
        /// The computer ID.
        id: ComputerId,
        /// The client's address.
        client: SocketAddr,
        /// The client device key's fingerprint.
        device: String,
        /// `QUIC` or `TLS/TCP`.
        transport: String,
        /// How long it lasted.
        secs: u64,
        /// Bytes from client to agent.
        bytes_up: u64,
        /// Bytes from agent to client.
        bytes_down: u64,
        /// Why it ended.
        reason: String,
    },
    /// `admin_action`: an operator did something through the console or the API.
    AdminAction {
        /// The operator's account name.
        operator: String,
        /// What, e.g. `token_create`, `machine_remove`, `session_end`.
        action: String,
        /// The machine concerned, if any.
        computer_id: Option<ComputerId>,
        /// Anything else the action was on (a token's id, a session), if any.
        target: Option<String>,
    },
    /// `lookups_refused`: lookups from one address in one minute that were refused. With no
    /// address: refusals from addresses beyond [`refusals::MAX_ADDRESSES`] that minute.
    LookupsRefused {
        /// The client's IP address, or `None` for the overflow.
        address: Option<IpAddr>,
        /// Unix seconds when the minute began.
        minute_start: i64,
        /// How many, in all.
        count: u64,
        /// How many, by why.
        kinds: RefusalCounts,
    },
    /// `wake_requested`: a client asked for a Wake-on-LAN of an offline office PC.
    WakeRequested {
        /// The PC to wake.
        id: ComputerId,
        /// The asking client's address.
        client: SocketAddr,
        /// The agents asked to send the magic packet (or that would have been), or
        /// `node:NAME` for other nodes asked to pass it to theirs.
        wakers: Vec<String>,
        /// `sent`, `rate-limited` (inside the PC's window) or `no waker online`.
        result: String,
    },
    /// `audit_dropped`: events that found the queue full and were not stored.
    Dropped {
        /// How many.
        count: u64,
    },
}

/// Every kind of row, for `--kind` and the console's filter.
pub const KINDS: &[&str] = &[
    "enrolled",
    "removed",
    "agent_online",
    "agent_offline",
    "session_started",
    "session_ended",
    "admin_action",
    "lookups_refused",
    "wake_requested",
    "audit_dropped",
];

impl AuditEvent {
    /// Its kind, one of [`KINDS`].
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Enrolled { .. } => "enrolled",
            Self::Removed { .. } => "removed",
            Self::AgentOnline { .. } => "agent_online",
            Self::AgentOffline { .. } => "agent_offline",
            Self::SessionStarted { .. } => "session_started",
            Self::SessionEnded { .. } => "session_ended",
            Self::AdminAction { .. } => "admin_action",
            Self::LookupsRefused { .. } => "lookups_refused",
            Self::WakeRequested { .. } => "wake_requested",
            Self::Dropped { .. } => "audit_dropped",
        }
    }

    /// The row for it, happening at `at` (Unix seconds; summaries use their minute's start).
    pub fn row(&self, at: i64) -> AuditRow {
        let id_of = |id: &ComputerId| Some(id.as_str().to_owned());
        let (at, computer_id, address, actor, detail) = match self {
            Self::Enrolled {
                id,
                address,
                with_token,
            } => (
                at,
                id_of(id),
                Some(address.to_string()),
                None,
                json!({ "with_token": with_token }),
            ),
            Self::Removed { id, by } => (
                at,
                id_of(id),
                None,
                Some(by.name().to_owned()),
                match by {
                    Actor::Cli => json!({}),
                    Actor::Operator(_) => json!({ "via": "console" }),
                },
            ),
            Self::AgentOnline {
                id,
                address,
                transport,
            } => (
                at,
                id_of(id),
                Some(address.to_string()),
                None,
                json!({ "transport": transport }),
            ),
            Self::AgentOffline {
                id,
                address,
                transport,
                online_secs,
                reason,
            } => (
                at,
                id_of(id),
                Some(address.to_string()),
                None,
                json!({ "transport": transport, "online_secs": online_secs, "reason": reason }),
            ),
            Self::SessionStarted {
                id,
                client,
                device,
                transport,
            } => (
                at,
                id_of(id),
                Some(client.to_string()),
                None,
                json!({ "device": device, "transport": transport }),
            ),
            Self::SessionEnded {
                id,
                client,
                device,
                transport,
                secs,
                bytes_up,
                bytes_down,
                reason,
            } => (
                at,
                id_of(id),
                Some(client.to_string()),
                None,
                json!({
                    "device": device, "transport": transport, "secs": secs,
                    "bytes_up": bytes_up, "bytes_down": bytes_down, "reason": reason,
                }),
            ),
            Self::AdminAction {
                operator,
                action,
                computer_id,
                target,
            } => (
                at,
                computer_id.as_ref().and_then(id_of),
                None,
                Some(operator.clone()),
                json!({ "action": action, "target": target }),
            ),
            Self::LookupsRefused {
                address,
                minute_start,
                count,
                kinds,
            } => (
                *minute_start,
                None,
                address.map(|a| a.to_string()),
                None,
                json!({ "minute_start": minute_start, "count": count, "kinds": kinds,
                        "other_addresses": address.is_none() }),
            ),
            Self::WakeRequested {
                id,
                client,
                wakers,
                result,
            } => (
                at,
                id_of(id),
                Some(client.to_string()),
                None,
                json!({
                    "wakers": wakers,
                    "result": result,
                }),
            ),
            Self::Dropped { count } => (at, None, None, None, json!({ "count": count })),
        };
        AuditRow {
            id: 0,
            at,
            kind: self.kind().to_owned(),
            computer_id,
            address,
            actor,
            detail,
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

enum Msg {
    Event(i64, AuditEvent),
    /// Store everything waiting, every minute of refusals included, then answer.
    Flush(SyncSender<()>),
}

/// The relay's handle on the audit log; cheap to clone, never blocks its caller.
#[derive(Clone)]
pub struct Audit {
    queue: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
    refusals: Arc<Mutex<refusals::RefusalSummary>>,
}

impl Audit {
    /// Starts the writer thread, which stores rows in `registry` until every handle is gone.
    pub fn new(registry: Arc<Registry>) -> Self {
        let (audit, rx) = Self::unstarted(AUDIT_QUEUE);
        let (dropped, refusals) = (audit.dropped.clone(), audit.refusals.clone());
        let started = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(&registry, &rx, &dropped, &refusals));
        if let Err(e) = started {
            // Then every record is counted as dropped; the relay itself keeps working.
            warn!(%e, "cannot start the audit writer; audit rows will not be stored");
        }
        audit
    }

    fn unstarted(capacity: usize) -> (Self, mpsc::Receiver<Msg>) {
        let (queue, rx) = mpsc::sync_channel(capacity);
        let audit = Self {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            refusals: Arc::default(),
        };
        (audit, rx)
    }

    /// Queues `event`, stamped with the time now. If the queue is full, counts it instead.
    pub fn record(&self, event: AuditEvent) {
        match self.queue.try_send(Msg::Event(unix_now(), event)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a refused lookup from `ip`, for this minute's summary row.
    pub fn lookup_refused(&self, ip: IpAddr, why: Refusal) {
        self.refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(ip, why, unix_now());
    }

    /// Stores everything queued and counted so far (this minute's refusals too), waiting at
    /// most `timeout`; returns whether it finished. Blocks: call it from a blocking context.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = mpsc::sync_channel(1);
        // A blocking send: a flush must not be dropped like an event.
        if self.queue.send(Msg::Flush(tx)).is_err() {
            return false;
        }
        rx.recv_timeout(timeout).is_ok()
    }
}

fn write_loop(
    registry: &Registry,
    rx: &mpsc::Receiver<Msg>,
    dropped: &AtomicU64,
    refusals: &Mutex<refusals::RefusalSummary>,
) {
    let mut batch: Vec<AuditRow> = Vec::new();
    loop {
        let mut flushed = Vec::new();
        let mut closed = false;
        let mut take = |msg: Msg, batch: &mut Vec<AuditRow>| match msg {
            Msg::Event(at, event) => batch.push(event.row(at)),
            Msg::Flush(reply) => flushed.push(reply),
        };
        match rx.recv_timeout(SUMMARY_TICK) {
            Ok(msg) => take(msg, &mut batch),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => closed = true,
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(msg) => take(msg, &mut batch),
                Err(_) => break,
            }
        }
        let all = !flushed.is_empty() || closed;
        let now = unix_now();
        let summaries = refusals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take_ended(if all { i64::MAX } else { now });
        batch.extend(summaries.iter().map(|e| e.row(now)));
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            warn!(count = lost, "the audit queue was full; events dropped");
            batch.push(AuditEvent::Dropped { count: lost }.row(now));
        }
        if !batch.is_empty() {
            if let Err(e) = registry.record_audit_blocking(&batch) {
                warn!(%e, rows = batch.len(), "storing audit rows failed");
            }
            batch.clear();
        }
        for reply in flushed {
            let _ = reply.try_send(());
        }
        if closed {
            return;
        }
    }
}

/// How long rows are kept: `days` days, at least one.
pub fn retention(days: u32) -> Duration {
    Duration::from_secs(u64::from(days.max(1)) * 86_400)
}

/// Deletes rows older than `keep` now and then every [`PRUNE_EVERY`], until `stop`.
pub async fn retain(registry: Arc<Registry>, keep: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let cutoff = unix_now().saturating_sub(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX));
        match registry.prune_audit(cutoff).await {
            Ok(0) => {}
            Ok(n) => info!(
                rows = n,
                days = keep.as_secs() / 86_400,
                "pruned old audit rows"
            ),
            Err(e) => warn!(%e, "pruning audit rows failed"),
        }
    }
}

/// Parses an age like `90m`, `24h` or `7d` (also `s` and `w`).
///
/// # Errors
/// A sentence saying what was expected.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not an age like 90m, 24h or 7d");
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_at);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long ago"))
}

#[cfg(test)]
mod tests;
