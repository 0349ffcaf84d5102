//! Simulated agents for a cluster of relay nodes: each says hello with its machine key as
//! [`crate::agents`]' idle agents do, and then behaves as the real agent's control loop
//! (`agent/src/control.rs`) does towards the nodes: it follows `MoveTo` to the node named
//! (at most 4 in a row), notes a node it cannot reach, whose connection broke, or that sent it
//! away while it was online, and names it in its next hellos' `unreachable` list (the agent's
//! own [`AvoidedNodes`]), and reconnects after the agent's own [`Backoff`].
//!
//! "The relay's address" of a real deployment (a DNS name listing every node, or a load
//! balancer) is here the list of nodes: agent `i` enters through node `i mod n`, or the next
//! one it does not avoid, as a health-checking load balancer would send it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use telework_agent::avoided_nodes::AvoidedNodes;
use telework_agent::backoff::Backoff;
use telework_net::framed::Framed;
use telework_net::transport::TransportChoice;
use telework_protocol::messages::{AgentToRelay, NodeAddr, RelayToAgent};
use telework_protocol::proof::MachineKey;
use telework_protocol::{ComputerId, ErrorCode};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use crate::agents::{hello, AgentDialer, AgentStream, KEEPALIVE};

/// Redirects followed in a row before backing off (the agent's `MAX_REDIRECTS`).
const MAX_REDIRECTS: u32 = 4;

/// How long dialling a node a relay named may take (the agent's `REDIRECT_DIAL`).
const REDIRECT_DIAL: Duration = Duration::from_secs(5);

/// QUIC agents per endpoint (UDP socket) of this process: one socket and one endpoint
/// driver for all of them drops datagrams (the socket's receive buffer overflows) under a
/// reconnect storm, which real agents, each with its own socket, do not share.
const AGENTS_PER_ENDPOINT: usize = 100;

/// Deadline for dialling the entry node and hearing its answer.
const ENTRY_DIAL: Duration = Duration::from_secs(30);

/// A node as the agents know it.
#[derive(Clone)]
pub(crate) struct NodeEntry {
    /// Its `--node-name`.
    pub(crate) name: String,
    /// Its address, listening and public.
    pub(crate) addr: SocketAddr,
}

/// An agent of the fleet: its computer ID and machine key, registered beforehand.
pub(crate) struct Member {
    pub(crate) id: ComputerId,
    pub(crate) key: Arc<MachineKey>,
}

/// What the agents share: where to go, and where each one is.
struct Shared {
    dialer: AgentDialer,
    nodes: Vec<NodeEntry>,
    /// Per agent: 1 + the index of the node it is online at, or 0 while it is not.
    at: Vec<AtomicUsize>,
    /// Per agent: when it was last welcomed, in microseconds since `epoch`.
    welcomed: Vec<AtomicU64>,
    epoch: Instant,
    /// `MoveTo`s followed, on hello or while online.
    moves: AtomicUsize,
    /// Failed attempts (dial, handshake, refusals), by error.
    errors: Mutex<BTreeMap<String, usize>>,
    /// Per agent: failed attempts since it was last welcomed.
    failing: Vec<AtomicUsize>,
}

impl Shared {
    fn error(&self, i: usize, e: impl std::fmt::Display) {
        self.failing[i].fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        *errors.entry(e.to_string()).or_default() += 1;
    }

    /// Where agent `i` enters: node `i mod n`, or the next one it does not avoid.
    fn entry(&self, i: usize, avoided: &[String]) -> SocketAddr {
        let n = self.nodes.len();
        (0..n)
            .map(|k| &self.nodes[(i + k) % n])
            .find(|node| !avoided.contains(&node.name))
            .unwrap_or(&self.nodes[i % n])
            .addr
    }
}

/// Agents online at the nodes of a cluster, each as its own task, until dropped.
pub(crate) struct Fleet {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Fleet {
    /// Starts one agent per member over `transport`, `parallel` of them handshaking at once
    /// until each is first online; returns at once (see [`Fleet::wait_online`]).
    pub(crate) fn start(
        nodes: Vec<NodeEntry>,
        fingerprint: &str,
        transport: TransportChoice,
        members: &[Member],
        parallel: usize,
    ) -> anyhow::Result<Self> {
        let n = members.len();
        let shared = Arc::new(Shared {
            dialer: AgentDialer::with_endpoints_of(
                nodes[0].addr,
                fingerprint,
                transport,
                n,
                AGENTS_PER_ENDPOINT,
            )?,
            nodes,
            at: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            welcomed: (0..n).map(|_| AtomicU64::new(0)).collect(),
            epoch: Instant::now(),
            moves: AtomicUsize::new(0),
            errors: Mutex::new(BTreeMap::new()),
            failing: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        });
        let limit = Arc::new(tokio::sync::Semaphore::new(parallel));
        let tasks = members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (shared, limit) = (shared.clone(), limit.clone());
                let (id, key) = (m.id.clone(), m.key.clone());
                tokio::spawn(async move {
                    let Ok(permit) = limit.acquire_owned().await else {
                        return;
                    };
                    roam(&shared, i, &id, &key, Some(permit)).await;
                })
            })
            .collect();
        Ok(Self { shared, tasks })
    }

    /// How many agents.
    pub(crate) fn len(&self) -> usize {
        self.shared.at.len()
    }

    /// The index of the node agent `i` is online at.
    pub(crate) fn node_of(&self, i: usize) -> Option<usize> {
        self.shared.at[i].load(Ordering::Relaxed).checked_sub(1)
    }

    /// How many agents are online at each node.
    pub(crate) fn per_node(&self) -> Vec<usize> {
        let mut counts = vec![0; self.shared.nodes.len()];
        for i in 0..self.len() {
            if let Some(node) = self.node_of(i) {
                counts[node] += 1;
            }
        }
        counts
    }

    /// When agent `i` was last welcomed.
    pub(crate) fn welcomed_at(&self, i: usize) -> Instant {
        self.shared.epoch + Duration::from_micros(self.shared.welcomed[i].load(Ordering::Relaxed))
    }

    /// `MoveTo`s followed so far.
    pub(crate) fn moves(&self) -> usize {
        self.shared.moves.load(Ordering::Relaxed)
    }

    /// Failed attempts so far, by error, the most frequent first.
    pub(crate) fn errors(&self) -> Vec<(String, usize)> {
        let errors = self.shared.errors.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<(String, usize)> = errors.iter().map(|(e, &n)| (e.clone(), n)).collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// Failed attempts of agent `i` since it was last welcomed.
    pub(crate) fn failing(&self, i: usize) -> usize {
        self.shared.failing[i].load(Ordering::Relaxed)
    }

    /// Waits until every agent is online at a node other than `not` (if given), at most
    /// `within`; returns whether they all are.
    pub(crate) async fn wait_online(&self, not: Option<usize>, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let done = (0..self.len()).all(|i| match self.node_of(i) {
                Some(node) => Some(node) != not,
                None => false,
            });
            if done {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// One agent, for ever: comes online, follows the relay's `MoveTo`s, comes back after losing
/// its node. `permit` is held until it is first online.
async fn roam(
    shared: &Shared,
    i: usize,
    id: &ComputerId,
    key: &MachineKey,
    mut permit: Option<OwnedSemaphorePermit>,
) {
    let mut avoided = AvoidedNodes::default();
    let mut backoff = Backoff::default();
    let mut sent_to: Option<NodeAddr> = None;
    let mut redirects = 0;
    // The connection being left after a `MoveTo` while online: dropped once the next node
    // has answered (its tunnels would carry on until then).
    let mut previous = None;
    loop {
        let unreachable = avoided.current(Instant::now());
        let (to, named, limit) = match sent_to.take() {
            Some(NodeAddr { node, address }) => match address.parse() {
                Ok(addr) => (addr, Some(node), REDIRECT_DIAL),
                Err(e) => {
                    shared.error(i, format!("bad node address {address}: {e}"));
                    (shared.entry(i, &unreachable), None, ENTRY_DIAL)
                }
            },
            None => (shared.entry(i, &unreachable), None, ENTRY_DIAL),
        };
        let answer =
            tokio::time::timeout(limit, hello(&shared.dialer, i, to, key, id, unreachable)).await;
        drop(previous.take());
        match answer {
            Ok(Ok((held, mut framed, RelayToAgent::Welcome { node }))) => {
                let Some(index) = shared.nodes.iter().position(|n| n.name == node) else {
                    shared.error(i, format!("welcomed by an unknown node {node}"));
                    return;
                };
                let now = shared.epoch.elapsed().as_micros() as u64;
                shared.welcomed[i].store(now, Ordering::Relaxed);
                shared.at[i].store(index + 1, Ordering::Relaxed);
                shared.failing[i].store(0, Ordering::Relaxed);
                drop(permit.take());
                backoff.reset();
                // Spread the keepalives over the interval, as independent agents would.
                let first = KEEPALIVE.mul_f64((i % 1000) as f64 / 1000.0);
                match stay(&mut framed, first).await {
                    Ok(to) => {
                        // Tunnels open here would carry on; new ones go there. The node
                        // sending it away is not where a node with an older view should send
                        // it back.
                        avoided.note(node, Instant::now());
                        shared.moves.fetch_add(1, Ordering::Relaxed);
                        previous = Some((held, framed));
                        redirects = 1;
                        sent_to = Some(to);
                        continue;
                    }
                    Err(_) => {
                        shared.at[i].store(0, Ordering::Relaxed);
                        avoided.note(node, Instant::now());
                    }
                }
            }
            Ok(Ok((_, _, RelayToAgent::MoveTo(to)))) => {
                shared.moves.fetch_add(1, Ordering::Relaxed);
                redirects += 1;
                if redirects <= MAX_REDIRECTS {
                    sent_to = Some(to);
                    continue;
                }
                shared.error(i, "too many redirects in a row");
            }
            Ok(Ok((_, _, RelayToAgent::Error(code)))) => {
                shared.error(i, format!("hello refused: {code:?}"));
                if matches!(
                    code,
                    ErrorCode::UnknownId | ErrorCode::BadProof | ErrorCode::VersionTooOld
                ) {
                    return;
                }
            }
            Ok(Ok((_, _, other))) => shared.error(i, format!("unexpected answer {other:?}")),
            failed => {
                if let Some(node) = named {
                    // Cannot reach the node named: ask through the entry again at once.
                    avoided.note(node, Instant::now());
                    continue;
                }
                match failed {
                    Ok(Err(e)) => shared.error(i, format!("{e:#}")),
                    _ => shared.error(i, "no answer in time"),
                }
            }
        }
        redirects = 0;
        tokio::time::sleep(backoff.next_delay(rand::random::<f64>())).await;
    }
}

/// Stays online, pinging, until the relay sends the agent elsewhere (`Ok`) or the connection
/// breaks (`Err`).
async fn stay(framed: &mut Framed<AgentStream>, first: Duration) -> anyhow::Result<NodeAddr> {
    let start = tokio::time::Instant::now() + first;
    let mut ping = tokio::time::interval_at(start, KEEPALIVE);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = ping.tick() => {
                n += 1;
                tokio::time::timeout(KEEPALIVE, framed.write(&AgentToRelay::Ping(n))).await??;
            }
            message = framed.read::<RelayToAgent>() => match message? {
                RelayToAgent::MoveTo(to) => return Ok(to),
                RelayToAgent::Error(code) => anyhow::bail!("the relay closed the connection: {code:?}"),
                _ => {}
            },
        }
    }
}
