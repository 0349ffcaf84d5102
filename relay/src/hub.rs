//! Presence and pairing: which agents are online, and which clients wait for which tunnel.
//!
//! The hub holds no sockets itself. An online agent is a sender into its control task; a
//! waiting client is a one-shot sender that the matching tunnel connection is handed through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use telework_protocol::messages::RelayToAgent;
use telework_protocol::{ComputerId, ErrorCode, Ticket};
use tokio::sync::{mpsc, oneshot};

use crate::conn::RelayStream;

/// How long a client waits for the agent's tunnel, and so how long a ticket lives.
pub const TICKET_TTL: Duration = Duration::from_secs(10);

/// Depth of an agent's outgoing control queue; a full queue means the agent is not reading.
pub const AGENT_QUEUE: usize = 64;

/// An agent tunnel handed to the client task that waits for it: the stream and any bytes
/// read past the attach message.
pub struct AgentTunnel {
    /// The agent's tunnel connection.
    pub stream: RelayStream,
    /// Bytes already read from it.
    pub leftover: BytesMut,
    /// Counts the tunnel among the relay's open connections for as long as it lives.
    pub _connection: tokio::sync::OwnedSemaphorePermit,
}

struct OnlineAgent {
    conn_id: u64,
    tx: mpsc::Sender<RelayToAgent>,
}

struct Pending<T> {
    id: ComputerId,
    client: IpAddr,
    expires: Instant,
    deliver: oneshot::Sender<T>,
}

/// A redeemed ticket, remembered for a while so its agent can report a failed login and the
/// relay can charge the client's address.
struct Paired {
    id: ComputerId,
    client: IpAddr,
    at: Instant,
}

/// How long a paired ticket can still be reported as a failed login.
pub const FAILURE_REPORT_WINDOW: Duration = Duration::from_secs(120);

/// Most paired tickets remembered at once.
const MAX_PAIRED: usize = 100_000;

/// Why a tunnel could not be requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// The agent is not online.
    Offline,
    /// The agent's control queue is full.
    Busy,
}

struct Inner<T> {
    agents: HashMap<ComputerId, OnlineAgent>,
    pending: HashMap<Ticket, Pending<T>>,
    paired: HashMap<Ticket, Paired>,
}

/// Shared presence and ticket state. `T` is what a redeemed ticket hands over: an
/// [`AgentTunnel`] in the relay, something simpler in unit tests.
pub struct Hub<T = AgentTunnel> {
    inner: Mutex<Inner<T>>,
}

impl<T> Default for Hub<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                agents: HashMap::new(),
                pending: HashMap::new(),
                paired: HashMap::new(),
            }),
        }
    }
}

impl<T> Hub<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `id` online through control connection `conn_id`. Returns the sender of the
    /// connection it replaces, if any, so the caller can tell it why it is being dropped.
    pub fn agent_online(
        &self,
        id: ComputerId,
        conn_id: u64,
        tx: mpsc::Sender<RelayToAgent>,
    ) -> Option<mpsc::Sender<RelayToAgent>> {
        self.lock()
            .agents
            .insert(id, OnlineAgent { conn_id, tx })
            .map(|old| old.tx)
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

    /// Takes `id` offline now and tells its control connection to close with `code`.
    /// Returns whether it was online.
    pub fn disconnect(&self, id: &ComputerId, code: ErrorCode) -> bool {
        let Some(agent) = self.lock().agents.remove(id) else {
            return false;
        };
        // If its queue is full, dropping the only sender still ends the connection's task.
        let _ = agent.tx.try_send(RelayToAgent::Error(code));
        true
    }

    /// Asks the agent `id` to open a tunnel: makes a ticket, records who waits for it, and
    /// queues the request on the agent's control connection.
    ///
    /// # Errors
    /// [`RequestError`] when the agent is offline or not keeping up.
    pub fn request_tunnel(
        &self,
        id: &ComputerId,
        client: IpAddr,
        now: Instant,
    ) -> Result<(Ticket, oneshot::Receiver<T>), RequestError> {
        let mut inner = self.lock();
        inner
            .pending
            .retain(|_, p| p.expires > now && !p.deliver.is_closed());
        let agent = inner.agents.get(id).ok_or(RequestError::Offline)?;
        let ticket = Ticket::random();
        agent
            .tx
            .try_send(RelayToAgent::OpenTunnel(ticket))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RequestError::Busy,
                mpsc::error::TrySendError::Closed(_) => RequestError::Offline,
            })?;
        let (deliver, rx) = oneshot::channel();
        inner.pending.insert(
            ticket,
            Pending {
                id: id.clone(),
                client,
                expires: now + TICKET_TTL,
                deliver,
            },
        );
        Ok((ticket, rx))
    }

    /// Forgets a ticket whose client gave up.
    pub fn cancel(&self, ticket: &Ticket) {
        self.lock().pending.remove(ticket);
    }

    /// Redeems a ticket: single use, fails closed when unknown, expired, or its client left.
    /// On success the tunnel is handed to the waiting client and its computer ID returned;
    /// on failure the tunnel comes back so the caller can refuse it.
    pub fn redeem(&self, ticket: &Ticket, tunnel: T, now: Instant) -> Result<ComputerId, T> {
        let mut inner = self.lock();
        let Some(pending) = inner.pending.remove(ticket) else {
            return Err(tunnel);
        };
        if pending.expires <= now {
            return Err(tunnel);
        }
        let id = pending.id;
        pending.deliver.send(tunnel)?;
        if inner.paired.len() >= MAX_PAIRED {
            inner
                .paired
                .retain(|_, p| now.saturating_duration_since(p.at) < FAILURE_REPORT_WINDOW);
            if inner.paired.len() >= MAX_PAIRED {
                inner.paired.clear();
            }
        }
        inner.paired.insert(
            *ticket,
            Paired {
                id: id.clone(),
                client: pending.client,
                at: now,
            },
        );
        Ok(id)
    }

    /// The client address behind a recently paired `ticket`, if `id` is the agent it was
    /// paired with (an agent can only report its own tunnels). Each ticket is reported once.
    pub fn failed_pairing(&self, ticket: &Ticket, id: &ComputerId, now: Instant) -> Option<IpAddr> {
        let mut inner = self.lock();
        let paired = inner.paired.remove(ticket)?;
        (paired.id == *id && now.saturating_duration_since(paired.at) < FAILURE_REPORT_WINDOW)
            .then_some(paired.client)
    }

    /// Number of tickets waiting.
    pub fn pending_tickets(&self) -> usize {
        self.lock().pending.len()
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

    #[test]
    fn failed_pairings_are_traced_to_the_client_once_and_only_by_their_agent() {
        let hub = Hub::<u32>::default();
        let id: ComputerId = "pc".parse().unwrap();
        let other: ComputerId = "pc-other".parse().unwrap();
        let _rx = online(&hub, &id, 1);
        let now = Instant::now();
        let (ticket, _waiting) = hub.request_tunnel(&id, ip(), now).unwrap();
        hub.redeem(&ticket, 1, now).unwrap();
        assert_eq!(
            hub.failed_pairing(&ticket, &other, now),
            None,
            "another agent cannot report it"
        );
        let (ticket, _waiting) = hub.request_tunnel(&id, ip(), now).unwrap();
        hub.redeem(&ticket, 1, now).unwrap();
        assert_eq!(hub.failed_pairing(&ticket, &id, now), Some(ip()));
        assert_eq!(hub.failed_pairing(&ticket, &id, now), None, "reported once");
        let (ticket, _waiting) = hub.request_tunnel(&id, ip(), now).unwrap();
        hub.redeem(&ticket, 1, now).unwrap();
        assert_eq!(
            hub.failed_pairing(&ticket, &id, now + FAILURE_REPORT_WINDOW),
            None,
            "too late"
        );
    }

    fn online(hub: &Hub<u32>, id: &ComputerId, conn: u64) -> mpsc::Receiver<RelayToAgent> {
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        hub.agent_online(id.clone(), conn, tx);
        rx
    }

    #[test]
    fn ticket_is_single_use_and_reaches_the_waiting_client() {
        let hub = Hub::<u32>::default();
        let id: ComputerId = "pc".parse().unwrap();
        let mut agent_rx = online(&hub, &id, 1);
        let now = Instant::now();
        let (ticket, mut rx) = hub.request_tunnel(&id, ip(), now).unwrap();
        assert_eq!(
            agent_rx.try_recv().unwrap(),
            RelayToAgent::OpenTunnel(ticket)
        );
        assert_eq!(hub.redeem(&ticket, 7, now), Ok(id.clone()));
        assert_eq!(rx.try_recv().unwrap(), 7);
        assert_eq!(hub.redeem(&ticket, 8, now), Err(8), "second use");
        assert_eq!(
            hub.redeem(&Ticket([0; 16]), 9, now),
            Err(9),
            "unknown ticket"
        );
    }

    #[test]
    fn expired_or_abandoned_tickets_fail_closed() {
        let hub = Hub::<u32>::default();
        let id: ComputerId = "pc".parse().unwrap();
        let _agent_rx = online(&hub, &id, 1);
        let now = Instant::now();
        let (ticket, _rx) = hub.request_tunnel(&id, ip(), now).unwrap();
        assert_eq!(hub.redeem(&ticket, 1, now + TICKET_TTL), Err(1));
        let (ticket, rx) = hub.request_tunnel(&id, ip(), now).unwrap();
        drop(rx);
        assert_eq!(hub.redeem(&ticket, 2, now), Err(2));
        assert_eq!(hub.pending_tickets(), 0);
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

    #[test]
    fn agent_that_stops_reading_makes_requests_busy() {
        let hub = Hub::<u32>::default();
        let id: ComputerId = "pc".parse().unwrap();
        let _rx = online(&hub, &id, 1);
        for _ in 0..AGENT_QUEUE {
            hub.request_tunnel(&id, ip(), Instant::now()).unwrap();
        }
        assert_eq!(
            hub.request_tunnel(&id, ip(), Instant::now()).err(),
            Some(RequestError::Busy)
        );
    }
}
