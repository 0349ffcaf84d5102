//! The live tables (machines with their presence, sessions on every node, nodes) and the
//! server-sent events that tell open pages to refresh them: a task compares snapshots every
//! second and bumps a counter when they differ; `/events` sends `changed` on every bump.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use telework_protocol::ComputerId;

use super::Console;
use crate::registry::Presence;
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
    /// Whether its agent is connected now, to this node or another.
    pub online: bool,
    /// The relay node its agent is connected to, when online.
    pub node: Option<String>,
    /// `QUIC` or `TLS/TCP`, when online.
    pub transport: Option<String>,
    /// Unix seconds it came online, when online.
    pub online_since: Option<i64>,
    /// Its agent's address, when online.
    pub address: Option<String>,
    /// The software its agent says it runs, when online at this node.
    pub agent_version: Option<String>,
    /// Unix seconds of registration.
    pub registered: i64,
    /// Unix seconds it was last online, if ever.
    pub last_seen: Option<i64>,
    /// Whether an operator disabled it.
    pub disabled: bool,
}

/// The machines table: every registered machine with its presence, here (from the hub) or
/// at another live node (from its presence row), by ID.
///
/// # Errors
/// A registry error.
pub async fn machines(relay: &Relay) -> Result<Vec<MachineRow>, crate::registry::RegistryError> {
    let online = relay.hub.online();
    let live: Vec<String> = relay.cluster.others().into_iter().map(|n| n.name).collect();
    // Alone, this node knows every online agent already.
    let elsewhere: HashMap<ComputerId, Presence> = if live.is_empty() {
        HashMap::new()
    } else {
        relay
            .registry
            .presence()
            .await?
            .into_iter()
            .filter(|p| live.contains(&p.node))
            .map(|p| (p.id.clone(), p))
            .collect()
    };
    let node = relay.cluster.name();
    Ok(relay
        .registry
        .machines()
        .await?
        .into_iter()
        .map(|m| {
            let row = MachineRow {
                id: m.id.as_str().to_owned(),
                online: false,
                node: None,
                transport: None,
                online_since: None,
                address: None,
                agent_version: None,
                registered: m.created,
                last_seen: m.last_seen,
                disabled: m.disabled,
            };
            if let Some(a) = online.iter().find(|a| a.id == m.id) {
                MachineRow {
                    online: true,
                    node: Some(node.to_owned()),
                    transport: Some(a.transport.to_owned()),
                    online_since: Some(unix(a.since)),
                    address: Some(a.address.to_string()),
                    agent_version: Some(a.agent_version.clone()).filter(|v| !v.is_empty()),
                    ..row
                }
            } else if let Some(p) = elsewhere.get(&m.id) {
                MachineRow {
                    online: true,
                    node: Some(p.node.clone()),
                    transport: Some(p.transport.clone()),
                    online_since: Some(p.since),
                    address: Some(p.address.clone()),
                    ..row
                }
            } else {
                row
            }
        })
        .collect())
}

/// One row of the sessions table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct SessionRow {
    /// The relay node holding the client's connection.
    pub node: String,
    /// Whether that is the node answering (which has the byte counts).
    pub here: bool,
    /// The session's id on its node.
    pub id: u64,
    /// The office PC.
    pub computer_id: String,
    /// The client's address.
    pub client: String,
    /// The fingerprint of the device key the client proved.
    pub device: String,
    /// `QUIC` or `TLS/TCP`.
    pub transport: String,
    /// Unix seconds it started.
    pub started: i64,
    /// Bytes from the client to the office PC (this node's sessions only: other nodes do
    /// not publish counts that change with every chunk).
    pub bytes_up: Option<u64>,
    /// Bytes from the office PC to the client (this node's sessions only).
    pub bytes_down: Option<u64>,
    /// Tunnels open now (this node's sessions only).
    pub tunnels: Option<usize>,
}

/// This node's sessions, oldest first.
pub fn sessions(relay: &Relay) -> Vec<SessionRow> {
    let node = relay.cluster.name();
    let mut rows: Vec<SessionRow> = relay
        .sessions
        .list()
        .into_iter()
        .map(|s| SessionRow {
            node: node.to_owned(),
            here: true,
            id: s.id,
            computer_id: s.computer_id.as_str().to_owned(),
            client: s.client.to_string(),
            device: s.device,
            transport: s.transport.to_owned(),
            started: unix(s.started),
            bytes_up: Some(s.bytes_up),
            bytes_down: Some(s.bytes_down),
            tunnels: Some(s.tunnels),
        })
        .collect();
    rows.sort_by_key(|s| (s.started, s.id));
    rows
}

/// The sessions of the other live nodes, as they recorded them in the registry, by node and
/// then oldest first. No query when this node is alone.
///
/// # Errors
/// A registry error.
pub async fn sessions_elsewhere(
    relay: &Relay,
) -> Result<Vec<SessionRow>, crate::registry::RegistryError> {
    let live: Vec<String> = relay.cluster.others().into_iter().map(|n| n.name).collect();
    if live.is_empty() {
        return Ok(Vec::new());
    }
    Ok(relay
        .registry
        .sessions_elsewhere(relay.cluster.name())
        .await?
        .into_iter()
        .filter(|s| live.contains(&s.node))
        .map(|s| SessionRow {
            node: s.node,
            here: false,
            id: s.id,
            computer_id: s.computer_id,
            client: s.client,
            device: s.device,
            transport: s.transport,
            started: s.started,
            bytes_up: None,
            bytes_down: None,
            tunnels: None,
        })
        .collect())
}

/// A hash of the tables, without byte counts (which change all the time during a session;
/// the page shows them as of its last refresh) and heartbeat times.
async fn snapshot(relay: &Relay) -> u64 {
    let mut hasher = DefaultHasher::new();
    if let Ok(rows) = machines(relay).await {
        rows.hash(&mut hasher);
    }
    for s in sessions(relay) {
        (s.id, s.computer_id, s.client, s.tunnels).hash(&mut hasher);
    }
    if let Ok(rows) = sessions_elsewhere(relay).await {
        for s in rows {
            (s.node, s.id).hash(&mut hasher);
        }
    }
    for n in relay.cluster.status(relay) {
        (n.name, n.up, n.draining, n.agents, n.sessions).hash(&mut hasher);
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

/// `GET /events`: a `changed` event whenever the machines, sessions or nodes tables change.
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
