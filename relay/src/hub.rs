//! Presence and pairing: which agents are online, and which tunnels were paired for whom.
//!
//! The hub holds no sockets itself. An online agent is a sender into its control task and a
//! handle on its connection, on which a client's task opens the agent's side of a tunnel.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use telework_net::transport::Connection;
use telework_protocol::messages::{RelayToAgent, MAX_SOFTWARE_LEN};
use telework_protocol::{ComputerId, ErrorCode, Ticket};
use tokio::sync::mpsc;

/// How long a client waits for the agent's side of a tunnel to open.
pub const PAIRING_TIMEOUT: Duration = Duration::from_secs(10);

/// Depth of an agent's outgoing control queue; a full queue means the agent is not reading.
pub const AGENT_QUEUE: usize = 64;

struct OnlineAgent<C> {
    conn_id: u64,
    tx: mpsc::Sender<RelayToAgent>,
    connection: C,
    arrival: Arrival,
    since: SystemTime,
    software: String,
    /// Cluster nodes this agent said it could not reach.
    unreachable: Vec<String>,
}

/// Where an agent's connection came from, as the relay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// The connection's source address.
    pub address: SocketAddr,
    /// `QUIC` or `TLS/TCP`.
    pub transport: &'static str,
}

/// One online agent, for the operator's console and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPresence {
    /// Its computer ID.
    pub id: ComputerId,
    /// Its connection's source address.
    pub address: SocketAddr,
    /// `QUIC` or `TLS/TCP`.
    pub transport: &'static str,
    /// When it came online on this connection.
    pub since: SystemTime,
    /// The software it says it runs (`telework-agent 0.1.0`); empty until it says.
    pub agent_version: String,
}

/// A paired tunnel, remembered for a while so its agent can report a failed login and the
/// relay can charge the client's address.
struct Paired {
    id: ComputerId,
    client: IpAddr,
    at: Instant,
}

/// How long a paired tunnel can still be reported as a failed login.
pub const FAILURE_REPORT_WINDOW: Duration = Duration::from_secs(120);

/// Most paired tunnels remembered at once.
const MAX_PAIRED: usize = 100_000;

/// Why a tunnel could not be requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The agent is not online.
    Offline,
}

struct Inner<C> {
    agents: HashMap<ComputerId, OnlineAgent<C>>,
    paired: HashMap<Ticket, Paired>,
}

/// Shared presence state. `C` is the handle a tunnel request gets to open the agent's
/// stream on: a [`Connection`] in the relay, something simpler in unit tests.
pub struct Hub<C = Connection> {
    inner: Mutex<Inner<C>>,
}

impl<C> Default for Hub<C> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                agents: HashMap::new(),
                paired: HashMap::new(),
            }),
        }
    }
}

impl<C: Clone> Hub<C> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<C>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `id` online through connection `conn_id`. Returns the control sender of the
    /// connection it replaces, if any, so the caller can tell it why it is being dropped.
    pub fn agent_online(
        &self,
        id: ComputerId,
        conn_id: u64,
        tx: mpsc::Sender<RelayToAgent>,
        connection: C,
        arrival: Arrival,
    ) -> Option<mpsc::Sender<RelayToAgent>> {
        self.lock()
            .agents
            .insert(
                id,
                OnlineAgent {
                    conn_id,
                    tx,
                    connection,
                    arrival,
                    since: SystemTime::now(),
                    software: String::new(),
                    unreachable: Vec::new(),
                },
            )
            .map(|old| old.tx)
    }

    /// Records what software the agent on `conn_id` says it runs: at most
    /// [`MAX_SOFTWARE_LEN`] printable characters are kept.
    pub fn set_software(&self, id: &ComputerId, conn_id: u64, software: &str) {
        let clean: String = software
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_SOFTWARE_LEN)
            .collect();
        if let Some(agent) = self.lock().agents.get_mut(id) {
            if agent.conn_id == conn_id {
                agent.software = clean;
            }
        }
    }

    /// Records the cluster nodes the agent on `conn_id` could not reach (bounded by the
    /// caller), so that moving agents around never sends it there.
    pub fn set_unreachable(&self, id: &ComputerId, conn_id: u64, nodes: Vec<String>) {
        if let Some(agent) = self.lock().agents.get_mut(id) {
            if agent.conn_id == conn_id {
                agent.unreachable = nodes;
            }
        }
    }

    /// Sends each online agent the message `pick` chooses for it (given its ID and the nodes
    /// it could not reach), if any; returns how many were sent one. An agent whose queue is
    /// full is skipped: it is not reading, and its keepalive timeout will end it.
    pub fn tell_each(
        &self,
        mut pick: impl FnMut(&ComputerId, &[String]) -> Option<RelayToAgent>,
    ) -> usize {
        let inner = self.lock();
        let mut sent = 0;
        for (id, agent) in &inner.agents {
            if let Some(msg) = pick(id, &agent.unreachable) {
                sent += usize::from(agent.tx.try_send(msg).is_ok());
            }
        }
        sent
    }

    /// Every online agent, ordered by computer ID.
    pub fn online(&self) -> Vec<AgentPresence> {
        let mut out: Vec<AgentPresence> = self
            .lock()
            .agents
            .iter()
            .map(|(id, a)| AgentPresence {
                id: id.clone(),
                address: a.arrival.address,
                transport: a.arrival.transport,
                since: a.since,
                agent_version: a.software.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        out
    }

    /// Online agents on each transport: `(QUIC, TLS/TCP)`.
    pub fn online_by_transport(&self) -> (usize, usize) {
        let inner = self.lock();
        let quic = inner
            .agents
            .values()
            .filter(|a| a.arrival.transport == "QUIC")
            .count();
        (quic, inner.agents.len() - quic)
    }

    /// Marks `id` offline, but only if `conn_id` is still the connection holding it.
    pub fn agent_offline(&self, id: &ComputerId, conn_id: u64) {
        let mut inner = self.lock();
        if inner.agents.get(id).is_some_and(|a| a.conn_id == conn_id) {
            inner.agents.remove(id);
        }
    }

    /// Whether `id` is online.
    pub fn is_online(&self, id: &ComputerId) -> bool {
        self.lock().agents.contains_key(id)
    }

    /// Number of agents online.
    pub fn agents_online(&self) -> usize {
        self.lock().agents.len()
    }

    /// The computer IDs online now.
    pub fn online_ids(&self) -> Vec<ComputerId> {
        self.lock().agents.keys().cloned().collect()
    }

    /// Takes `id` offline now and tells its control stream to close with `code`.
    /// Returns whether it was online.
    pub fn disconnect(&self, id: &ComputerId, code: ErrorCode) -> bool {
        let Some(agent) = self.lock().agents.remove(id) else {
            return false;
        };
        // If its queue is full, dropping the only sender still ends the connection's task.
        let _ = agent.tx.try_send(RelayToAgent::Error(code));
        true
    }

    /// A tunnel to the agent `id` for a client at `client`: a fresh name for it, remembered
    /// so the agent can report a failed login, and the agent's connection to open it on.
    ///
    /// # Errors
    /// [`RequestError::Offline`] when the agent is not online.
    pub fn request_tunnel(
        &self,
        id: &ComputerId,
        client: IpAddr,
        now: Instant,
    ) -> Result<(Ticket, C), RequestError> {
        let mut inner = self.lock();
        let connection = inner
            .agents
            .get(id)
            .ok_or(RequestError::Offline)?
            .connection
            .clone();
        let ticket = Ticket::random();
        if inner.paired.len() >= MAX_PAIRED {
            inner
                .paired
                .retain(|_, p| now.saturating_duration_since(p.at) < FAILURE_REPORT_WINDOW);
            if inner.paired.len() >= MAX_PAIRED {
                inner.paired.clear();
            }
        }
        inner.paired.insert(
            ticket,
            Paired {
                id: id.clone(),
                client,
                at: now,
            },
        );
        Ok((ticket, connection))
    }

    /// The client address behind a recently paired tunnel `ticket`, if `id` is the agent it
    /// was paired with (an agent can only report its own tunnels). Each is reported once.
    pub fn failed_pairing(&self, ticket: &Ticket, id: &ComputerId, now: Instant) -> Option<IpAddr> {
        let mut inner = self.lock();
        let paired = inner.paired.remove(ticket)?;
        (paired.id == *id && now.saturating_duration_since(paired.at) < FAILURE_REPORT_WINDOW)
            .then_some(paired.client)
    }

    /// Sends `msg` on the control stream of the online agent `id`; whether it was queued
    /// (not when the agent is offline or its queue is full: it is not reading).
    pub fn tell(&self, id: &ComputerId, msg: RelayToAgent) -> bool {
        self.lock()
            .agents
            .get(id)
            .is_some_and(|a| a.tx.try_send(msg).is_ok())
    }

    /// Tells every online agent that the relay is going away.
    pub fn broadcast(&self, msg: RelayToAgent) {
        for agent in self.lock().agents.values() {
            let _ = agent.tx.try_send(msg.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip() -> IpAddr {
        "192.0.2.7".parse().unwrap()
    }

    fn online(hub: &Hub<u32>, id: &ComputerId, conn: u64) -> mpsc::Receiver<RelayToAgent> {
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        let arrival = Arrival {
            address: SocketAddr::from(([127, 0, 0, 1], 9)),
            transport: "QUIC",
        };
        hub.agent_online(id.clone(), conn, tx, conn as u32, arrival);
        rx
    }

    #[test]
    fn failed_pairings_are_traced_to_the_client_once_and_only_by_their_agent() {
        let hub = Hub::<u32>::default();
        let id: ComputerId = "pc".parse().unwrap();
        let other: ComputerId = "pc-other".parse().unwrap();
        let _rx = online(&hub, &id, 1);
        let now = Instant::now();
        let (ticket, _) = hub.request_tunnel(&id, ip(), now).unwrap();
        assert_eq!(
            hub.failed_pairing(&ticket, &other, now),
            None,
            "another agent cannot report it"
        );
        let (ticket, _) = hub.request_tunnel(&id, ip(), now).unwrap();
        assert_eq!(hub.failed_pairing(&ticket, &id, now), Some(ip()));
        assert_eq!(hub.failed_pairing(&ticket, &id, now), None, "reported once");
        let (ticket, _) = hub.request_tunnel(&id, ip(), now).unwrap();
        assert_eq!(
            hub.failed_pairing(&ticket, &id, now + FAILURE_REPORT_WINDOW),
            None,
            "too late"
        );
    }

    #[test]
    fn a_tunnel_request_gets_the_current_connection_of_its_agent() {
        let hub = Hub::<u32>::default();
        let id: ComputerId = "pc".parse().unwrap();
        let _first = online(&hub, &id, 1);
        let now = Instant::now();
        let (a, conn) = hub.request_tunnel(&id, ip(), now).unwrap();
        assert_eq!(conn, 1);
        let _second = online(&hub, &id, 2);
        let (b, conn) = hub.request_tunnel(&id, ip(), now).unwrap();
        assert_eq!(conn, 2, "the replacing connection");
        assert_ne!(a, b, "every tunnel has its own name");
    }

    #[test]
    fn presence_lists_agents_with_what_they_say_they_run_cleaned_and_bounded() {
        let hub = Hub::<u32>::default();
        let id: ComputerId = "pc".parse().unwrap();
        let _rx = online(&hub, &id, 1);
        hub.set_software(&id, 2, "from another connection");
        assert_eq!(hub.online()[0].agent_version, "");
        hub.set_software(&id, 1, &format!("agent\u{1b}[31m {}", "x".repeat(500)));
        let listed = hub.online();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].transport, "QUIC");
        assert!(!listed[0].agent_version.contains('\u{1b}'));
        assert_eq!(listed[0].agent_version.chars().count(), MAX_SOFTWARE_LEN);
        assert_eq!(hub.online_by_transport(), (1, 0));
    }

    #[test]
    fn offline_and_replaced_agents() {
        let hub = Hub::<u32>::default();
        let id: ComputerId = "pc".parse().unwrap();
        assert_eq!(
            hub.request_tunnel(&id, ip(), Instant::now()).err(),
            Some(RequestError::Offline)
        );
        let _first = online(&hub, &id, 1);
        let _second = online(&hub, &id, 2);
        hub.agent_offline(&id, 1); // the replaced connection ending must not take the new one down
        assert!(hub.is_online(&id));
        hub.agent_offline(&id, 2);
        assert!(!hub.is_online(&id));
    }

    #[test]
    fn disconnect_takes_an_agent_offline_and_tells_it_why() {
        let hub = Hub::<u32>::default();
        let id: ComputerId = "pc".parse().unwrap();
        let mut rx = online(&hub, &id, 1);
        assert_eq!(hub.online_ids(), vec![id.clone()]);
        assert!(hub.disconnect(&id, ErrorCode::UnknownId));
        assert!(!hub.is_online(&id));
        assert_eq!(
            rx.try_recv().unwrap(),
            RelayToAgent::Error(ErrorCode::UnknownId)
        );
        assert!(!hub.disconnect(&id, ErrorCode::UnknownId));
    }
}
