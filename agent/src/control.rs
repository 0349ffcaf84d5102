//! The control connection: come online with a machine-key proof bound to this TLS session,
//! send keepalives, open a tunnel for every ticket, and reconnect with back-off.

use std::sync::Arc;
use std::time::Duration;

use telework_net::connect::{client_exporter, connect};
use telework_net::framed::Framed;
use telework_net::HANDSHAKE_TIMEOUT;
use telework_protocol::messages::{AgentToRelay, RelayToAgent, PROTOCOL_VERSION};
use telework_protocol::ErrorCode;
use tokio::time::Instant;
use tracing::{info, warn, Instrument};

use crate::backoff::Backoff;
use crate::{tunnel, Agent, AgentError};

/// How often the agent sends a keepalive.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Silence from the relay after which the connection is considered dead.
pub const DEAD_PEER: Duration = Duration::from_secs(45);

/// Keeps the agent online until shutdown. Returns an error only for conditions a reconnect
/// cannot fix (the relay does not know this machine, or refuses its key or version).
pub async fn run(agent: Arc<Agent>) -> Result<(), AgentError> {
    let mut backoff = Backoff::default();
    loop {
        let result = online_once(&agent, &mut backoff).await;
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
            Err(e) => warn!(%e, "control connection lost"),
            Ok(()) => info!("control connection closed"),
        }
        let delay = backoff.next_delay(rand::random::<f64>());
        info!(delay_ms = delay.as_millis() as u64, "reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = agent.shutdown.cancelled() => return Ok(()),
        }
    }
}

async fn online_once(agent: &Arc<Agent>, backoff: &mut Backoff) -> Result<(), AgentError> {
    let stream = connect(&agent.relay, agent.control_tls.clone()).await?;
    let exporter = client_exporter(&stream).map_err(|e| AgentError::Tls(e.into()))?;
    let mut framed = Framed::new(stream);
    framed
        .write(&AgentToRelay::Hello {
            version: PROTOCOL_VERSION,
            id: agent.id.clone(),
            proof: agent.key.prove(&agent.id, &exporter),
        })
        .await?;
    match framed
        .read_within::<RelayToAgent>(HANDSHAKE_TIMEOUT)
        .await?
    {
        RelayToAgent::Welcome => {}
        RelayToAgent::Error(code) => return Err(AgentError::Refused(code)),
        _ => return Err(AgentError::Unexpected),
    }
    backoff.reset();
    agent.online.send_replace(true);
    info!(relay = %agent.relay, "online");

    let mut ping = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    let mut seq = 0u64;
    let mut last_heard = Instant::now();
    let (reports_tx, mut reports) = tokio::sync::mpsc::channel::<AgentToRelay>(64);
    *agent.reports.lock().unwrap_or_else(|e| e.into_inner()) = Some(reports_tx);
    loop {
        tokio::select! {
            _ = agent.shutdown.cancelled() => return Ok(()),
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
                    RelayToAgent::Pong(_) | RelayToAgent::Welcome | RelayToAgent::Registered { .. } => {}
                    RelayToAgent::OpenTunnel(ticket) => spawn_tunnel(agent, ticket),
                    RelayToAgent::Error(code) => return Err(AgentError::Refused(code)),
                }
            }
        }
    }
}

fn spawn_tunnel(agent: &Arc<Agent>, ticket: telework_protocol::Ticket) {
    let Ok(permit) = agent.tunnel_slots.clone().try_acquire_owned() else {
        warn!("too many tunnels open; ignoring a tunnel request");
        return;
    };
    let agent2 = agent.clone();
    let span = tracing::info_span!("tunnel", ?ticket);
    agent.tasks.spawn(
        async move {
            if let Err(e) = tunnel::serve(agent2, ticket).await {
                info!(%e, "tunnel ended");
            }
            drop(permit);
        }
        .instrument(span),
    );
}
