//! The agent's one connection to the relay: the relay opens the control stream, on which
//! the agent comes online with a machine-key proof bound to this connection and sends
//! keepalives; every further stream the relay opens is a tunnel. Reconnects with back-off;
//! on TLS/TCP with `auto`, QUIC is tried again now and then, and the agent moves to it.

use std::sync::Arc;
use std::time::Duration;

use telework_net::connect::RelayAddr;
use telework_net::framed::Framed;
use telework_net::transport::network_watch::{NetworkChange, NetworkWatch};
use telework_net::transport::{Connection, Stream, TransportChoice, TransportKind};
use telework_net::HANDSHAKE_TIMEOUT;
use telework_protocol::messages::{
    AgentToRelay, NodeAddr, RelayOpens, RelayToAgent, PROTOCOL_VERSION, WAKE_PROTOCOL_VERSION,
};
use telework_protocol::ErrorCode;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::backoff::Backoff;
use crate::{tunnel, Agent, AgentError};

/// How often the agent sends a keepalive.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often the agent looks whether its network changed.
const NETWORK_CHECK: Duration = Duration::from_secs(1);

/// Silence from the relay after which the connection is considered dead.
pub const DEAD_PEER: Duration = Duration::from_secs(45);

/// Keeps the agent online until shutdown. Returns an error only for conditions a reconnect
/// cannot fix (the relay does not know this machine, or refuses its key or version).
pub async fn run(agent: Arc<Agent>) -> Result<(), AgentError> {
    let mut backoff = Backoff::default();
    let mut next: Option<(Connection, Option<Box<Control>>)> = None;
    let mut redirects = 0;
    loop {
        let result = online_once(&agent, &mut backoff, next.take()).await;
        let result = match result {
            Ok(Next::MoveTo(connection, previous)) => {
                // Already online elsewhere: come online on the new connection at once.
                next = Some((connection, Some(previous)));
                continue;
            }
            Ok(Next::Redirect {
                to,
                previous,
                was_online,
            }) => {
                if was_online {
                    redirects = 0;
                }
                redirects += 1;
                if redirects <= MAX_REDIRECTS {
                    next = follow(&agent, &to).await.map(|c| (c, previous));
                    continue;
                }
                Err(AgentError::Unexpected)
            }
            Ok(Next::Closed) => Ok(()),
            Err(e) => Err(e),
        };
        redirects = 0;
        if let Some(node) = lock(&agent.node).take() {
            // Come back through the relay's address, but not to this node for a while (it
            // may be the one that died).
            lock(&agent.avoided).note(node, std::time::Instant::now());
        }
        agent.online.send_replace(false);
        *agent.reports.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if agent.shutdown.is_cancelled() {
            return Ok(());
        }
        match result {
            Err(AgentError::Refused(
                code @ (ErrorCode::UnknownId | ErrorCode::BadProof | ErrorCode::VersionTooOld),
            )) => {
                // Reconnecting cannot fix these: stop instead of retrying, and say why.
                if code == ErrorCode::UnknownId {
                    tracing::error!(
                        id = %agent.id,
                        "the relay does not know this computer ID: the relay operator removed \
                         its registration ('telework-relay machines remove'), or it was never \
                         made. Stopping; register again ('telework-agent register') if this PC \
                         should be reachable"
                    );
                }
                return Err(AgentError::Refused(code));
            }
            Err(e) => warn!(%e, "connection to the relay lost"),
            Ok(()) => info!("connection to the relay closed"),
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = agent.shutdown.cancelled() => return Ok(()),
        }
    }
}

/// A control stream that is online.
pub struct Control {
    framed: Framed<Stream>,
}

/// How an online connection ended without an error.
enum Next {
    /// Shutdown.
    Closed,
    /// QUIC works again: move to this connection, then let this control stream go.
    MoveTo(Connection, Box<Control>),
    /// The relay sent the agent to another node of its cluster.
    Redirect {
        to: NodeAddr,
        /// The control stream being left, when the agent was online (its tunnels carry on).
        previous: Option<Box<Control>>,
        was_online: bool,
    },
}

/// Redirects followed in a row before backing off: nodes that disagree for a moment about
/// who is alive must not bounce an agent forever.
const MAX_REDIRECTS: u32 = 4;

/// How long dialling a node the relay named may take before the agent gives up on it.
const REDIRECT_DIAL: Duration = Duration::from_secs(5);

/// Dials the node `to`; on failure notes it as unreachable (the next hello says so) and
/// returns `None`, so that the agent comes back through the relay's address.
async fn follow(agent: &Agent, to: &NodeAddr) -> Option<Connection> {
    let dialed = match to.address.parse::<RelayAddr>() {
        Ok(addr) => tokio::time::timeout(REDIRECT_DIAL, agent.dialer.to(addr).dial())
            .await
            .map_err(|_| "timed out".to_owned())
            .and_then(|r| r.map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    match dialed {
        Ok(dialed) => {
            info!(node = %to.node, address = %to.address, "the relay sent this PC to another node");
            Some(dialed.connection)
        }
        Err(e) => {
            warn!(node = %to.node, address = %to.address, %e, "cannot reach the node the relay named; asking the relay again");
            lock(&agent.avoided).note(to.node.clone(), std::time::Instant::now());
            None
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The control stream the relay opens first on a new connection, and the relay's version.
async fn accept_control(connection: &Connection) -> Result<(Framed<Stream>, u16), AgentError> {
    let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.accept())
        .await
        .map_err(|_| AgentError::Timeout)?
        .map_err(|e| AgentError::Frame(e.into()))?;
    let mut framed = Framed::new(stream);
    match framed.read_within::<RelayOpens>(HANDSHAKE_TIMEOUT).await? {
        RelayOpens::Control { version } => Ok((framed, version)),
        RelayOpens::Tunnel { .. } => Err(AgentError::Unexpected),
    }
}

/// Tries QUIC now and then while on TLS/TCP with `auto`; never completes otherwise.
async fn reprobe(agent: &Agent, on: TransportKind) -> Connection {
    if on != TransportKind::Tcp || agent.dialer.choice() != TransportChoice::Auto {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(agent.dialer.quic_reprobe()).await;
        match agent.dialer.dial_quic().await {
            Ok(connection) => return connection,
            Err(e) => debug!(%e, "QUIC still does not work"),
        }
    }
}

async fn online_once(
    agent: &Arc<Agent>,
    backoff: &mut Backoff,
    moving: Option<(Connection, Option<Box<Control>>)>,
) -> Result<Next, AgentError> {
    let (connection, previous, how) = match moving {
        Some((connection, previous)) => {
            let how = connection.kind().to_string();
            (connection, previous, how)
        }
        None => {
            let dialed = agent.dialer.dial().await?;
            let how = dialed.describe();
            (dialed.connection, None, how)
        }
    };
    let (mut framed, relay_version) = accept_control(&connection).await?;
    let unreachable = lock(&agent.avoided).current(std::time::Instant::now());
    framed
        .write(&AgentToRelay::Hello {
            version: PROTOCOL_VERSION,
            id: agent.id.clone(),
            proof: agent.key.prove(&agent.id, connection.channel_binding()),
            unreachable,
        })
        .await?;
    let node = match framed
        .read_within::<RelayToAgent>(HANDSHAKE_TIMEOUT)
        .await?
    {
        RelayToAgent::Welcome { node } => node,
        RelayToAgent::MoveTo(to) => {
            // Not online here: a control stream left behind (from a QUIC move) goes.
            if let Some(previous) = previous {
                agent.tasks.spawn(previous.retire());
            }
            connection.close(ErrorCode::Replaced);
            return Ok(Next::Redirect {
                to,
                previous: None,
                was_online: false,
            });
        }
        RelayToAgent::Error(code) => return Err(AgentError::Refused(code)),
        _ => return Err(AgentError::Unexpected),
    };
    // What the operator's console shows as this agent's version.
    framed
        .write(&AgentToRelay::About {
            software: concat!("telework-agent ", env!("CARGO_PKG_VERSION")).to_owned(),
        })
        .await?;
    if let Some(previous) = previous {
        // The relay now sends new tunnels here; the old connection keeps its open tunnels
        // until they end. Its control stream goes once the relay has said so.
        agent.tasks.spawn(previous.retire());
    }
    backoff.reset();
    *agent.transport.lock().unwrap_or_else(|e| e.into_inner()) = Some(connection.kind());
    agent.online.send_replace(true);
    info!(relay = %agent.dialer.addr(), %node, "online over {how}");
    *lock(&agent.node) = Some(node);

    let mut ping = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut seq = 0u64;
    let mut last_heard = Instant::now();
    let (reports_tx, mut reports) = tokio::sync::mpsc::channel::<AgentToRelay>(64);
    *agent.reports.lock().unwrap_or_else(|e| e.into_inner()) = Some(reports_tx);
    let quic_again = reprobe(agent, connection.kind());
    tokio::pin!(quic_again);
    let mut network = NetworkWatch::new(&connection);
    let mut look = tokio::time::interval(NETWORK_CHECK);
    // Older relays would take the wake list for a protocol violation: they are never sent it.
    let mut wake_check = tokio::time::interval(crate::wake::LIST_CHECK);
    let mut advertised = crate::wake::serve::Advertised::default();
    loop {
        tokio::select! {
            _ = wake_check.tick(), if relay_version >= WAKE_PROTOCOL_VERSION => {
                if let Some(ids) = advertised.changed(agent) {
                    tokio::time::timeout(KEEPALIVE, framed.write(&AgentToRelay::CanWake(ids)))
                        .await
                        .map_err(|_| AgentError::Timeout)??;
                }
            }
            _ = look.tick() => match network.check() {
                NetworkChange::Moved => info!("the network changed; QUIC followed it"),
                NetworkChange::Lost => {
                    info!("the address this connection left from is gone; reconnecting");
                    connection.close(ErrorCode::Replaced);
                    return Err(AgentError::NetworkChanged);
                }
                NetworkChange::None => {}
            },
            _ = agent.shutdown.cancelled() => {
                leave(agent, framed, &connection).await;
                return Ok(Next::Closed);
            }
            Some(report) = reports.recv() => {
                tokio::time::timeout(KEEPALIVE, framed.write(&report))
                    .await
                    .map_err(|_| AgentError::Timeout)??;
            }
            _ = ping.tick() => {
                seq += 1;
                tokio::time::timeout(KEEPALIVE, framed.write(&AgentToRelay::Ping(seq)))
                    .await
                    .map_err(|_| AgentError::Timeout)??;
            }
            _ = tokio::time::sleep_until(last_heard + DEAD_PEER) => return Err(AgentError::Timeout),
            msg = framed.read::<RelayToAgent>() => {
                last_heard = Instant::now();
                match msg? {
                    RelayToAgent::Pong(_) | RelayToAgent::Welcome { .. } | RelayToAgent::Registered { .. } => {}
                    RelayToAgent::Error(code) => return Err(AgentError::Refused(code)),
                    RelayToAgent::Wake(id) => crate::wake::serve::on_request(agent, id),
                    RelayToAgent::MoveTo(to) => {
                        // Tunnels open on this connection carry on; new ones go there. The
                        // node sending us away (draining, or no longer our home) is not where
                        // another node with an older view should send us back.
                        if let Some(left) = lock(&agent.node).take() {
                            lock(&agent.avoided).note(left, std::time::Instant::now());
                        }
                        return Ok(Next::Redirect { to, previous: Some(Box::new(Control { framed })), was_online: true });
                    }
                }
            }
            stream = connection.accept() => match stream {
                Ok(stream) => spawn_tunnel(agent, stream),
                Err(e) => return Err(AgentError::Frame(e.into())),
            },
            quic = &mut quic_again => {
                info!("QUIC works again; moving new tunnels to it");
                return Ok(Next::MoveTo(quic, Box::new(Control { framed })));
            }
        }
    }
}

/// Leaves the relay at shutdown: lets the tunnels tell their clients why and end, then ends
/// the control stream and waits for the relay to close the connection once their last bytes
/// are through (closing it ourselves could drop them).
async fn leave(agent: &Agent, mut framed: Framed<Stream>, connection: &Connection) {
    let _ = tokio::time::timeout(crate::SHUTDOWN_GRACE, agent.tasks.wait()).await;
    let _ = framed.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(3), connection.closed()).await;
}

impl Control {
    /// Waits (briefly) for the relay to say this connection was replaced, then closes the
    /// control stream, so the relay does not take it for a lost agent and cut its tunnels.
    async fn retire(mut self) {
        let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            while let Ok(msg) = self.framed.read::<RelayToAgent>().await {
                if msg == RelayToAgent::Error(ErrorCode::Replaced) {
                    break;
                }
            }
        })
        .await;
        let _ = self.framed.shutdown().await;
    }
}

fn spawn_tunnel(agent: &Arc<Agent>, stream: Stream) {
    let Ok(permit) = agent.tunnel_slots.clone().try_acquire_owned() else {
        warn!("too many tunnels open; refusing a tunnel");
        return;
    };
    let agent2 = agent.clone();
    let span = tracing::info_span!("tunnel");
    agent.tasks.spawn(
        async move {
            if let Err(e) = tunnel::serve(agent2, stream).await {
                info!(%e, "tunnel ended");
            }
            drop(permit);
        }
        .instrument(span),
    );
}
