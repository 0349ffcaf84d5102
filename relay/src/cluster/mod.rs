//! Several relay nodes sharing one registry.
//!
//! Each node beats every [`HEARTBEAT`]: it writes its row (name, public address, draining,
//! counts) with an expiry [`NODE_TTL`] ahead, and reads everyone's. The unexpired rows are the
//! live nodes. An agent's home is chosen among the live nodes that are not draining by
//! [`placement`]; a node sends an agent whose home is elsewhere there ([`Cluster::agent_home`]),
//! when it says hello and whenever the set of nodes changes. Presence rows say which node
//! holds which agent, so a client that asks the wrong node is sent on. No node forwards
//! another's bytes.
//!
//! Each node also records its live sessions ([`SessionWriter`]), so that any node's console
//! lists every session and can ask the node holding one to end it (a `node_requests` row the
//! holder acts on at its next beat).
//!
//! With the embedded SQLite registry there is one node, and all of this comes down to one row
//! and the presence and sessions tables.

pub mod batch;
pub mod placement;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use telework_protocol::messages::{NodeAddr, RelayToAgent};
use telework_protocol::{ComputerId, ErrorCode};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::registry::{NodeRow, SessionChange, SessionRecord};
use crate::sessions::SessionHandle;
use crate::Relay;

pub use batch::{PresenceWriter, SessionWriter};

/// How often a node writes its heartbeat row and reads the others'.
pub const HEARTBEAT: Duration = Duration::from_secs(2);

/// How long a heartbeat row keeps a node live: three missed beats.
pub const NODE_TTL: Duration = Duration::from_secs(6);

/// Longest node name.
pub const MAX_NODE_NAME_LEN: usize = 64;

/// The default node name: the host name (a single node needs no other), or `relay`.
pub fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| check_node_name(h).is_ok())
        .unwrap_or_else(|| "relay".to_owned())
}

/// A node name is 1 to [`MAX_NODE_NAME_LEN`] letters, digits, dots, dashes and underscores:
/// operators read it in listings, and it is stored in every presence row.
///
/// # Errors
/// What is wrong with it.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NODE_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NODE_NAME_LEN} characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "{name:?} may only have letters, digits, '.', '-' and '_'"
        ));
    }
    Ok(())
}

/// This node's view of the cluster.
pub struct Cluster {
    /// Unique in the cluster (`--node-name`).
    name: String,
    /// `host:port` agents and clients can reach (`--public-addr`; by default the address the
    /// relay listens on, set when it binds).
    public_addr: OnceLock<String>,
    started: i64,
    draining: AtomicBool,
    /// The other live nodes as of the last beat.
    others: Mutex<Vec<NodeRow>>,
    /// The nodes whose rows had expired at the last beat: killed, or cut off from the
    /// database (a clean stop removes its row).
    gone: Mutex<Vec<NodeRow>>,
    /// Presence changes on their way to the registry.
    pub presence: PresenceWriter,
    /// This node's session starts and ends on their way to the registry.
    pub sessions: SessionWriter,
}

/// A node as the console and the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NodeStatus {
    /// Its name.
    pub name: String,
    /// Where agents and clients reach it.
    pub public_addr: String,
    /// Whether it is the node answering.
    pub here: bool,
    /// Whether its heartbeat is current.
    pub up: bool,
    /// Whether it is shutting down.
    pub draining: bool,
    /// Agents online on it (at its last beat, for another node).
    pub agents: i64,
    /// Live sessions on it (at its last beat, for another node).
    pub sessions: i64,
    /// Unix seconds it started.
    pub started: i64,
    /// Unix seconds of its last heartbeat (now, for this node).
    pub last_beat: i64,
}

impl NodeStatus {
    fn of(row: NodeRow, here: bool, up: bool) -> Self {
        let ttl = i64::try_from(NODE_TTL.as_millis()).unwrap_or(i64::MAX);
        Self {
            last_beat: row.expires_ms.saturating_sub(ttl) / 1000,
            name: row.name,
            public_addr: row.public_addr,
            here,
            up,
            draining: row.draining,
            agents: row.agents,
            sessions: row.sessions,
            started: row.started,
        }
    }
}

/// Unix seconds of `t`.
fn unix_secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Cluster {
    /// A node called `name`, reached at `public_addr` (when given), alone until its first
    /// beat.
    pub fn new(name: String, public_addr: Option<String>) -> Self {
        let reached = OnceLock::new();
        if let Some(addr) = public_addr {
            let _ = reached.set(addr);
        }
        Self {
            name,
            public_addr: reached,
            started: now_ms() / 1000,
            draining: AtomicBool::new(false),
            others: Mutex::new(Vec::new()),
            gone: Mutex::new(Vec::new()),
            presence: PresenceWriter::default(),
            sessions: SessionWriter::default(),
        }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where this node is reached; `default` (the bound address) unless one was given.
    pub fn public_addr_or(&self, default: impl FnOnce() -> String) -> &str {
        self.public_addr.get_or_init(default)
    }

    /// Whether this node is shutting down (it takes no new agents).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The other live nodes, by name.
    pub fn others(&self) -> Vec<NodeRow> {
        lock(&self.others).clone()
    }

    /// Every node: this one with its counts now, the other live ones and the gone ones as of
    /// the last beat, by name.
    pub fn status(&self, relay: &Relay) -> Vec<NodeStatus> {
        let mut all = vec![NodeStatus::of(self.row(relay), true, true)];
        all.extend(
            self.others()
                .into_iter()
                .map(|n| NodeStatus::of(n, false, true)),
        );
        all.extend(
            lock(&self.gone)
                .clone()
                .into_iter()
                .map(|n| NodeStatus::of(n, false, false)),
        );
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Records that `session` started here, for the other nodes' consoles.
    pub fn session_started(&self, session: &SessionHandle) {
        self.sessions.record(SessionChange::Started(SessionRecord {
            node: self.name.clone(),
            id: session.id,
            computer_id: session.computer_id.as_str().to_owned(),
            client: session.client.to_string(),
            device: session.device.clone(),
            transport: session.transport.to_owned(),
            started: unix_secs(session.since),
        }));
    }

    /// Records that session `id` here ended.
    pub fn session_ended(&self, id: u64) {
        self.sessions.record(SessionChange::Ended {
            node: self.name.clone(),
            id,
        });
    }

    /// Names of the nodes that take agents: the live ones not draining, this one included
    /// unless it is draining.
    fn takers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .others()
            .into_iter()
            .filter(|n| !n.draining)
            .map(|n| n.name)
            .collect();
        if !self.draining() {
            names.push(self.name.clone());
        }
        names
    }

    /// The live node `name` other than this one, as an address to send someone to.
    pub fn node(&self, name: &str) -> Option<NodeAddr> {
        self.others()
            .into_iter()
            .find(|n| n.name == name)
            .map(|n| NodeAddr {
                node: n.name,
                address: n.public_addr,
            })
    }

    /// Where agent `id`, which could not reach `unreachable`, belongs: `None` when that is
    /// here (or nowhere else will do).
    pub fn agent_home(&self, id: &ComputerId, unreachable: &[String]) -> Option<NodeAddr> {
        let takers = self.takers();
        let home = placement::home(id, takers.iter().map(String::as_str), unreachable)?;
        if home == self.name {
            return None;
        }
        self.node(home)
    }

    /// The home `id` would have if it could reach every node, when that is not here: what
    /// presence records as the node it is away from.
    pub fn away_from(&self, id: &ComputerId) -> Option<String> {
        let takers = self.takers();
        placement::home(id, takers.iter().map(String::as_str), &[])
            .filter(|home| *home != self.name)
            .map(str::to_owned)
    }

    /// What to tell an online agent when this node starts draining: its next node, or to go
    /// (and come back through its configured address) when there is none.
    pub fn leaving(&self, id: &ComputerId, unreachable: &[String]) -> RelayToAgent {
        match self.agent_home(id, unreachable) {
            Some(next) => RelayToAgent::MoveTo(next),
            None => RelayToAgent::Error(ErrorCode::ShuttingDown),
        }
    }

    fn row(&self, relay: &Relay) -> NodeRow {
        NodeRow {
            name: self.name.clone(),
            public_addr: self.public_addr.get().cloned().unwrap_or_default(),
            started: self.started,
            expires_ms: now_ms() + i64::try_from(NODE_TTL.as_millis()).unwrap_or(i64::MAX),
            draining: self.draining(),
            agents: i64::try_from(relay.hub.agents_online()).unwrap_or(i64::MAX),
            sessions: i64::try_from(relay.sessions.count()).unwrap_or(i64::MAX),
        }
    }

    /// Marks this node draining and says so in its row at once, so that other nodes stop
    /// sending agents here before this one tells its own to go.
    pub async fn start_draining(&self, relay: &Relay) {
        self.draining.store(true, Ordering::Relaxed);
        if let Err(e) = relay.registry.heartbeat(&self.row(relay)).await {
            warn!(%e, "could not mark this node draining in the registry");
        }
    }

    /// One beat: write this node's row, read the others', act on requests left for this
    /// node. Returns whether the set of nodes that take agents changed.
    async fn beat(&self, relay: &Relay) -> Result<bool, crate::registry::RegistryError> {
        let before: BTreeSet<String> = self.takers().into_iter().collect();
        relay.registry.heartbeat(&self.row(relay)).await?;
        let now = now_ms();
        let (others, gone): (Vec<NodeRow>, Vec<NodeRow>) = relay
            .registry
            .nodes()
            .await?
            .into_iter()
            .filter(|n| n.name != self.name)
            .partition(|n| n.live(now));
        *lock(&self.others) = others;
        *lock(&self.gone) = gone;
        for request in relay.registry.take_node_requests(&self.name).await? {
            match (request.kind.as_str(), request.target.parse::<u64>()) {
                ("end-session", Ok(session)) => {
                    let ended = relay.end_session(session);
                    info!(session, ended, "session end asked for by another node");
                }
                (crate::wake::NODE_REQUEST, _) => match request.target.parse() {
                    Ok(id) => {
                        crate::wake::from_other_node(relay, &id);
                    }
                    Err(_) => {
                        warn!("a wake request from another node names no computer ID; ignored")
                    }
                },
                _ => warn!(kind = %request.kind, "unknown request from another node; ignored"),
            }
        }
        let after: BTreeSet<String> = self.takers().into_iter().collect();
        if before != after {
            info!(nodes = ?after, "the nodes taking agents changed");
        }
        Ok(before != after)
    }

    /// Sends every agent online here whose home is now another node there.
    fn rebalance(&self, relay: &Relay) {
        let moved = relay.hub.tell_each(|id, unreachable| {
            self.agent_home(id, unreachable).map(RelayToAgent::MoveTo)
        });
        if moved > 0 {
            info!(
                moved,
                "the cluster changed: agents sent to their home nodes"
            );
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes this node's presence and session changes in batches until `stop`. [`join`] has
/// cleared the rows a killed run left before this run takes its first connection, so it
/// never removes rows of this run.
pub async fn write_changes(relay: Arc<Relay>, stop: CancellationToken) {
    let cluster = &relay.cluster;
    tokio::join!(
        cluster.presence.run(relay.registry.clone(), stop.clone()),
        cluster.sessions.run(relay.registry.clone(), stop),
    );
}

/// Clears what this node left behind if it was killed (presence and session rows), and
/// beats once, so that it knows the
/// other nodes before it takes its first connection. Bounded: a database that does not
/// answer delays the start by [`FIRST_BEAT_WAIT`] at most.
pub async fn join(relay: &Relay) {
    let cluster = &relay.cluster;
    let first = async {
        relay.registry.forget_node(&cluster.name, false).await?;
        cluster.beat(relay).await
    };
    match tokio::time::timeout(FIRST_BEAT_WAIT, first).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            warn!(%e, "could not join the cluster yet; serving alone until the registry answers")
        }
        Err(_) => warn!("the registry is slow; serving alone until it answers"),
    }
}

/// See [`join`].
const FIRST_BEAT_WAIT: Duration = Duration::from_secs(5);

/// Beats every [`HEARTBEAT`] (after [`join`]'s first beat) until `stop`; then removes this
/// node's row and its presence and session rows.
pub async fn run(relay: Arc<Relay>, stop: CancellationToken) {
    let cluster = &relay.cluster;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        match cluster.beat(&relay).await {
            Ok(changed) => {
                if failing {
                    info!("the registry answers again");
                    failing = false;
                }
                if changed && !cluster.draining() {
                    cluster.rebalance(&relay);
                }
            }
            Err(e) if !failing => {
                warn!(%e, "heartbeat failed; serving the agents online here meanwhile");
                failing = true;
            }
            Err(_) => {}
        }
    }
    if let Err(e) = relay.registry.forget_node(&cluster.name, true).await {
        warn!(%e, "could not remove this node from the registry");
    }
}
