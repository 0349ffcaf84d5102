//! Prometheus metrics, served at `GET /metrics` on the admin listener.
//!
//! Counters the data path touches are plain atomics taken out of their families once, at
//! start: forwarding a chunk costs two relaxed additions (the session's and the relay's
//! count), not a label lookup. Gauges of what is online are read from the hub and the
//! session table when Prometheus scrapes, so nothing has to keep them in step; so are the
//! per-node gauges (`telework_node_*{node}`): this node's counts now, and every other node's
//! from its last heartbeat row.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use telework_protocol::ErrorCode;

use crate::cluster::NodeStatus;

/// A label set: pairs of static names and values.
type Labels = Vec<(&'static str, &'static str)>;

/// The `node` label: node names are only known at run time.
type NodeLabels = Vec<(&'static str, String)>;

/// Who a handshake was with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An office PC's agent (hello or registration).
    Agent,
    /// A home client's request for a computer ID.
    Client,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Client => "client",
        }
    }
}

/// Which per-address or per-connection limit refused something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Too many connections, or connections still handshaking.
    Connections,
    /// Too many computer-ID lookups from one address.
    Lookups,
    /// Too many failures (unknown IDs, bad proofs, wrong passwords) from one address.
    Failures,
    /// Too many new tunnels in one client connection.
    Tunnels,
}

impl LimitKind {
    fn label(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Lookups => "lookups",
            Self::Failures => "failures",
            Self::Tunnels => "tunnels",
        }
    }
}

/// What is online at a scrape, read by the caller from the hub, the session table and the
/// cluster.
#[derive(Debug, Clone, Default)]
pub struct Online {
    /// Agents on QUIC.
    pub agents_quic: usize,
    /// Agents on TLS/TCP.
    pub agents_tcp: usize,
    /// Client connections paired with an office PC.
    pub sessions: usize,
    /// Every node this one knows of, itself included.
    pub nodes: Vec<NodeStatus>,
}

/// The per-node gauges.
struct NodeGauges {
    up: Family<NodeLabels, Gauge>,
    draining: Family<NodeLabels, Gauge>,
    agents: Family<NodeLabels, Gauge>,
    sessions: Family<NodeLabels, Gauge>,
    /// Held from clearing the families to encoding them, so that two scrapes at once do not
    /// see each other's half-filled families.
    scrape: Mutex<()>,
}

impl NodeGauges {
    fn register(registry: &mut Registry) -> Self {
        let mut family = |name: &str, help: &str| {
            let f = Family::<NodeLabels, Gauge>::default();
            registry.register(name, help, f.clone());
            f
        };
        Self {
            up: family(
                "node_up",
                "1 for each relay node with a current heartbeat, 0 for one whose heartbeat \
                 expired (killed, or cut off from the registry)",
            ),
            draining: family(
                "node_draining",
                "1 for each relay node that is shutting down",
            ),
            agents: family(
                "node_agents",
                "Agents online on each live relay node, as of its last heartbeat",
            ),
            sessions: family(
                "node_sessions",
                "Live sessions on each live relay node, as of its last heartbeat",
            ),
            scrape: Mutex::new(()),
        }
    }

    /// Sets the families to `nodes` only: a node that left the cluster cleanly is gone from
    /// the next scrape.
    fn set(&self, nodes: &[NodeStatus]) {
        for family in [&self.up, &self.draining, &self.agents, &self.sessions] {
            family.clear();
        }
        for node in nodes {
            let labels = vec![("node", node.name.clone())];
            self.up.get_or_create(&labels).set(i64::from(node.up));
            if node.up {
                self.draining
                    .get_or_create(&labels)
                    .set(i64::from(node.draining));
                self.agents.get_or_create(&labels).set(node.agents);
                self.sessions.get_or_create(&labels).set(node.sessions);
            }
        }
    }
}

/// The relay's metrics.
pub struct Metrics {
    registry: Registry,
    agents_online: Family<Labels, Gauge>,
    sessions_active: Gauge,
    tunnels: Counter,
    /// Bytes relayed from clients to agents (the splice adds to it as it forwards).
    pub relayed_up: Counter,
    /// Bytes relayed from agents to clients.
    pub relayed_down: Counter,
    handshakes: Family<Labels, Counter>,
    session_setup: Histogram,
    limit_refusals: Family<Labels, Counter>,
    nodes: NodeGauges,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("telework");
        let agents_online = Family::<Labels, Gauge>::default();
        registry.register(
            "agents_online",
            "Office PCs' agents online now, by transport",
            agents_online.clone(),
        );
        let sessions_active = Gauge::default();
        registry.register(
            "sessions_active",
            "Client connections paired with an office PC now",
            sessions_active.clone(),
        );
        let tunnels = Counter::default();
        registry.register(
            "tunnels",
            "Tunnels paired (one per desktop connection)",
            tunnels.clone(),
        );
        let relayed = Family::<Labels, Counter>::default();
        registry.register(
            "relayed_bytes",
            "Bytes relayed, by direction (up: client to office PC)",
            relayed.clone(),
        );
        let relayed_up = relayed.get_or_create(&vec![("direction", "up")]).clone();
        let relayed_down = relayed.get_or_create(&vec![("direction", "down")]).clone();
        let handshakes = Family::<Labels, Counter>::default();
        registry.register(
            "handshakes",
            "Agent hellos and registrations, and client requests, by outcome",
            handshakes.clone(),
        );
        // 1 ms to about 16 s.
        let session_setup = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "session_setup_seconds",
            "From a session's first request to its tunnel being paired",
            session_setup.clone(),
        );
        let limit_refusals = Family::<Labels, Counter>::default();
        registry.register(
            "limit_refusals",
            "Requests refused by a rate or capacity limit, by kind",
            limit_refusals.clone(),
        );
        let nodes = NodeGauges::register(&mut registry);
        Self {
            registry,
            nodes,
            agents_online,
            sessions_active,
            tunnels,
            relayed_up,
            relayed_down,
            handshakes,
            session_setup,
            limit_refusals,
        }
    }

    /// A handshake ended with `outcome` (`Ok` when it was accepted).
    pub fn handshake(&self, role: Role, outcome: Result<(), ErrorCode>) {
        let outcome = match outcome {
            Ok(()) => "ok",
            Err(code) => code_label(code),
        };
        self.handshakes
            .get_or_create(&vec![("role", role.label()), ("outcome", outcome)])
            .inc();
    }

    /// A tunnel was paired.
    pub fn tunnel_paired(&self) {
        self.tunnels.inc();
    }

    /// A session's first tunnel was paired `took` after its request.
    pub fn session_set_up(&self, took: Duration) {
        self.session_setup.observe(took.as_secs_f64());
    }

    /// A limit refused something.
    pub fn limit_refused(&self, kind: LimitKind) {
        self.limit_refusals
            .get_or_create(&vec![("kind", kind.label())])
            .inc();
    }

    /// The Prometheus text exposition, with the gauges set from `online`.
    pub fn encode(&self, online: &Online) -> String {
        let set = |transport, n: usize| {
            self.agents_online
                .get_or_create(&vec![("transport", transport)])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("quic", online.agents_quic);
        set("tcp", online.agents_tcp);
        self.sessions_active
            .set(i64::try_from(online.sessions).unwrap_or(i64::MAX));
        let _scrape = self.nodes.scrape.lock().unwrap_or_else(|e| e.into_inner());
        self.nodes.set(&online.nodes);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// A refusal as a label value.
fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::Offline => "offline",
        ErrorCode::UnknownId => "unknown_id",
        ErrorCode::Busy => "busy",
        ErrorCode::VersionTooOld => "version_too_old",
        ErrorCode::BadProof => "bad_proof",
        ErrorCode::IdTaken => "id_taken",
        ErrorCode::TokenRequired => "token_required",
        ErrorCode::BadToken => "bad_token",
        ErrorCode::BadTicket => "bad_ticket",
        ErrorCode::AgentTimeout => "agent_timeout",
        ErrorCode::RateLimited => "rate_limited",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::Replaced => "replaced",
        ErrorCode::ProtocolViolation => "protocol_violation",
        ErrorCode::Internal => "internal",
        ErrorCode::EndedByOperator => "ended_by_operator",
        ErrorCode::Disabled => "disabled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_its_labels() {
        let m = Metrics::new();
        m.handshake(Role::Agent, Ok(()));
        m.handshake(Role::Client, Err(ErrorCode::UnknownId));
        m.tunnel_paired();
        m.relayed_up.inc_by(10);
        m.session_set_up(Duration::from_millis(20));
        m.limit_refused(LimitKind::Lookups);
        let node = |name: &str, up, draining| NodeStatus {
            name: name.into(),
            public_addr: format!("{name}:443"),
            here: name == "relay-1",
            up,
            draining,
            agents: 3,
            sessions: 1,
            started: 0,
            last_beat: 0,
        };
        let text = m.encode(&Online {
            agents_quic: 2,
            agents_tcp: 1,
            sessions: 1,
            nodes: vec![
                node("relay-1", true, false),
                node("relay-2", true, true),
                node("relay-3", false, false),
            ],
        });
        for line in [
            "telework_agents_online{transport=\"quic\"} 2",
            "telework_agents_online{transport=\"tcp\"} 1",
            "telework_sessions_active 1",
            "telework_tunnels_total 1",
            "telework_relayed_bytes_total{direction=\"up\"} 10",
            "telework_relayed_bytes_total{direction=\"down\"} 0",
            "telework_handshakes_total{role=\"agent\",outcome=\"ok\"} 1",
            "telework_handshakes_total{role=\"client\",outcome=\"unknown_id\"} 1",
            "telework_session_setup_seconds_count 1",
            "telework_limit_refusals_total{kind=\"lookups\"} 1",
            "telework_node_up{node=\"relay-1\"} 1",
            "telework_node_up{node=\"relay-3\"} 0",
            "telework_node_agents{node=\"relay-2\"} 3",
            "telework_node_sessions{node=\"relay-1\"} 1",
            "telework_node_draining{node=\"relay-2\"} 1",
            "telework_node_draining{node=\"relay-1\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(
            !text.contains("telework_node_agents{node=\"relay-3\"}"),
            "a gone node has no counts: {text}"
        );
        // A node that left is gone from the next scrape.
        let text = m.encode(&Online::default());
        assert!(!text.contains("node=\"relay-2\""), "{text}");
        for code in ErrorCode::ALL {
            assert!(!code_label(code).is_empty());
        }
    }
}
