//! The live tables (machines with their presence, sessions) and the server-sent events that
//! tell open pages to refresh them: a task compares snapshots every second and bumps a
//! counter when they differ; `/events` sends `changed` on every bump.

use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Console;
use crate::Relay;

/// How often the tables are compared.
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

/// Unix seconds of `t`.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One row of the machines table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct MachineRow {
    /// Computer ID.
    pub id: String,
    /// Whether its agent is connected now.
    pub online: bool,
    /// `QUIC` or `TLS/TCP`, when online.
    pub transport: Option<&'static str>,
    /// Unix seconds it came online, when online.
    pub online_since: Option<i64>,
    /// Its agent's address, when online.
    pub address: Option<String>,
    /// The software its agent says it runs, when online.
    pub agent_version: Option<String>,
    /// Unix seconds of registration.
    pub registered: i64,
    /// Unix seconds it was last online, if ever.
    pub last_seen: Option<i64>,
    /// Whether an operator disabled it.
    pub disabled: bool,
}

/// The machines table: every registered machine with its presence, by ID.
///
/// # Errors
/// A registry error.
pub async fn machines(relay: &Relay) -> Result<Vec<MachineRow>, crate::registry::RegistryError> {
    let online = relay.hub.online();
    Ok(relay
        .registry
        .machines()
        .await?
        .into_iter()
        .map(|m| {
            let here = online.iter().find(|a| a.id == m.id);
            MachineRow {
                id: m.id.as_str().to_owned(),
                online: here.is_some(),
                transport: here.map(|a| a.transport),
                online_since: here.map(|a| unix(a.since)),
                address: here.map(|a| a.address.to_string()),
                agent_version: here
                    .map(|a| a.agent_version.clone())
                    .filter(|v| !v.is_empty()),
                registered: m.created,
                last_seen: m.last_seen,
                disabled: m.disabled,
            }
        })
        .collect())
}

/// One row of the sessions table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SessionRow {
    /// The session's id on this relay.
    pub id: u64,
    /// The office PC.
    pub computer_id: String,
    /// The client's address.
    pub client: String,
    /// The fingerprint of the device key the client proved.
    pub device: String,
    /// `QUIC` or `TLS/TCP`.
    pub transport: &'static str,
    /// Unix seconds it started.
    pub started: i64,
    /// Bytes from the client to the office PC.
    pub bytes_up: u64,
    /// Bytes from the office PC to the client.
    pub bytes_down: u64,
    /// Tunnels open now.
    pub tunnels: usize,
}

/// The sessions table, oldest first.
pub fn sessions(relay: &Relay) -> Vec<SessionRow> {
    let mut rows: Vec<SessionRow> = relay
        .sessions
        .list()
        .into_iter()
        .map(|s| SessionRow {
            id: s.id,
            computer_id: s.computer_id.as_str().to_owned(),
            client: s.client.to_string(),
            device: s.device,
            transport: s.transport,
            started: unix(s.started),
            bytes_up: s.bytes_up,
            bytes_down: s.bytes_down,
            tunnels: s.tunnels,
        })
        .collect();
    rows.sort_by_key(|s| (s.started, s.id));
    rows
}

/// A hash of both tables, without byte counts (which change all the time during a session;
/// the page shows them as of its last refresh).
async fn snapshot(relay: &Relay) -> u64 {
    let mut hasher = DefaultHasher::new();
    if let Ok(rows) = machines(relay).await {
        rows.hash(&mut hasher);
    }
    for s in sessions(relay) {
        (s.id, s.computer_id, s.client, s.tunnels).hash(&mut hasher);
    }
    hasher.finish()
}

/// Bumps `changed` whenever the tables change, until `stop`.
pub async fn watch_changes(
    relay: Arc<Relay>,
    changed: watch::Sender<u64>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(SNAPSHOT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = None;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = snapshot(&relay).await;
        if last.is_some_and(|l| l != now) {
            changed.send_modify(|n| *n = n.wrapping_add(1));
        }
        last = Some(now);
    }
}

/// `GET /events`: a `changed` event whenever the machines or sessions tables change.
pub async fn events(
    State(console): State<Arc<Console>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut changes = console.changes.clone();
    changes.mark_unchanged();
    let stop = console.stopping.clone();
    let stream = futures_util::stream::unfold((changes, stop), |(mut changes, stop)| async move {
        tokio::select! {
            () = stop.cancelled() => None,
            changed = changes.changed() => match changed {
                Ok(()) => Some((Ok(Event::default().event("changed").data("tables")), (changes, stop))),
                Err(_) => None,
            },
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
