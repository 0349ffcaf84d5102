//! An agent's connection: the relay opens its control stream first, for registration or
//! presence with keepalives; tunnels are streams the client side opens on it (see
//! `client_conn`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use telework_net::framed::Framed;
use telework_net::transport::{Connection, Stream};
use telework_protocol::messages::{
    AgentToRelay, RelayOpens, RelayToAgent, MAX_UNREACHABLE, MAX_WAKE_TARGETS,
    MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use telework_protocol::proof::verify_proof;
use telework_protocol::{ComputerId, ErrorCode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::audit::AuditEvent;
use crate::conn::{remaining, Accepted};
use crate::hub::{Arrival, AGENT_QUEUE};
use crate::metrics::Role;
use crate::registry::{Presence, PresenceChange, RegistryError};
use crate::{Registration, Relay};

/// An agent that sends nothing (not even a keepalive) for this long is considered gone.
pub const DEAD_PEER: Duration = Duration::from_secs(45);

/// A write to an agent that does not finish in this time means the agent stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Refuses an agent's registration or hello with `code` (counted in the metrics), and closes
/// once it has read why.
async fn refuse(
    relay: &Relay,
    framed: &mut Framed<Stream>,
    connection: &Connection,
    code: ErrorCode,
) {
    relay.metrics.handshake(Role::Agent, Err(code));
    let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
        framed.write(&RelayToAgent::Error(code)).await?;
        framed.shutdown().await
    })
    .await;
    connection.close_when_read(code, CLOSE_GRACE).await;
}

/// How long the relay waits for an agent to read a last message and close first.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves one agent connection.
pub async fn serve(relay: Arc<Relay>, conn: Accepted) {
    let opened = tokio::time::timeout(remaining(conn.hello_deadline), async {
        let mut framed = Framed::new(conn.connection.open().await?);
        framed
            .write(&RelayOpens::Control {
                version: PROTOCOL_VERSION,
            })
            .await?;
        Ok::<_, telework_net::framed::FrameError>(framed)
    })
    .await;
    let mut framed = match opened {
        Ok(Ok(framed)) => framed,
        Ok(Err(e)) => return debug!(%e, "cannot open the control stream"),
        Err(_) => return debug!("control stream not opened in time"),
    };
    let first = match framed
        .read_within::<AgentToRelay>(remaining(conn.hello_deadline))
        .await
    {
        Ok(m) => m,
        Err(e) => {
            debug!(%e, "no valid agent hello");
            refuse(
                &relay,
                &mut framed,
                &conn.connection,
                ErrorCode::ProtocolViolation,
            )
            .await;
            return;
        }
    };
    let binding = *conn.connection.channel_binding();
    // Verify first and charge the address only on failure: offices put many PCs behind one
    // address, and one broken PC must not take the others offline.
    let ip = conn.peer.ip();
    match first {
        AgentToRelay::Register {
            version,
            id,
            public_key,
            token,
            proof,
        } => {
            let span = tracing::info_span!("register", %id);
            async {
                let code = if version < MIN_PROTOCOL_VERSION {
                    Err(ErrorCode::VersionTooOld)
                } else if !verify_proof(&public_key, &id, &binding, &proof) {
                    Err(ErrorCode::BadProof)
                } else {
                    register(&relay, &id, &public_key, token.as_deref()).await
                };
                match code {
                    Ok(with_token) => {
                        info!(peer = %conn.peer, with_token, "machine registered");
                        relay.metrics.handshake(Role::Agent, Ok(()));
                        relay.audit.record(AuditEvent::Enrolled {
                            id: id.clone(),
                            address: conn.peer,
                            with_token,
                        });
                        relay
                            .limiters
                            .connections
                            .refund(ip, std::time::Instant::now());
                        let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
                            framed
                                .write(&RelayToAgent::Registered { id: id.clone() })
                                .await?;
                            framed.shutdown().await
                        })
                        .await;
                        conn.connection
                            .close_when_read(ErrorCode::ProtocolViolation, CLOSE_GRACE)
                            .await;
                    }
                    Err(code) => {
                        relay.limiters.failures.take(ip, std::time::Instant::now());
                        warn!(peer = %conn.peer, ?code, "registration refused");
                        refuse(&relay, &mut framed, &conn.connection, code).await;
                    }
                }
            }
            .instrument(span)
            .await;
        }
        AgentToRelay::Hello {
            version,
            id,
            proof,
            unreachable,
        } => {
            let span = tracing::info_span!("agent", %id);
            let hello = Hello {
                version,
                id,
                proof,
                unreachable: bounded_node_names(unreachable),
            };
            crate::conn::spawn(
                &relay.clone(),
                online(relay, conn, framed, hello).instrument(span),
            );
        }
        AgentToRelay::Ping(_)
        | AgentToRelay::PairingFailed(_)
        | AgentToRelay::About { .. }
        | AgentToRelay::CanWake(_) => {
            refuse(
                &relay,
                &mut framed,
                &conn.connection,
                ErrorCode::ProtocolViolation,
            )
            .await
        }
    }
}

/// Registers `id` → `public_key`; returns whether an enrolment token was spent on it.
async fn register(
    relay: &Relay,
    id: &ComputerId,
    public_key: &[u8],
    token: Option<&str>,
) -> Result<bool, ErrorCode> {
    let mut with_token = false;
    if relay.options.registration == Registration::Token {
        let token = token.ok_or(ErrorCode::TokenRequired)?;
        // Check the ID before spending the token, so a taken ID does not burn it.
        if let Ok(Some(m)) = relay.registry.machine(id).await {
            if m.public_key != public_key {
                return Err(ErrorCode::IdTaken);
            }
            return Ok(false);
        }
        relay
            .registry
            .consume_token(token)
            .await
            .map_err(|e| match e {
                RegistryError::BadToken => ErrorCode::BadToken,
                _ => ErrorCode::Internal,
            })?;
        with_token = true;
    }
    relay
        .registry
        .register(id, public_key)
        .await
        .map_err(|e| match e {
            RegistryError::IdTaken => ErrorCode::IdTaken,
            _ => ErrorCode::Internal,
        })?;
    Ok(with_token)
}

/// Why an agent went offline, for the audit log, when the relay closed its connection.
fn closed_because(code: ErrorCode) -> String {
    match code {
        ErrorCode::UnknownId => "registration removed".into(),
        ErrorCode::Replaced => "replaced by a newer connection".into(),
        ErrorCode::ShuttingDown => "relay shutting down".into(),
        ErrorCode::ProtocolViolation => "protocol violation".into(),
        other => format!("closed: {other:?}"),
    }
}

/// An agent's hello, its node list bounded.
pub(crate) struct Hello {
    version: u16,
    id: ComputerId,
    proof: Vec<u8>,
    unreachable: Vec<String>,
}

/// At most [`MAX_UNREACHABLE`] names of at most [`MAX_NODE_NAME_LEN`] bytes: the rest can only
/// be noise, and the list is kept for as long as the agent is online.
fn bounded_node_names(mut names: Vec<String>) -> Vec<String> {
    names.truncate(MAX_UNREACHABLE);
    names.retain(|n| n.len() <= crate::cluster::MAX_NODE_NAME_LEN);
    names
}

pub(crate) async fn online(
    relay: Arc<Relay>,
    conn: Accepted,
    mut framed: Framed<Stream>,
    hello: Hello,
) {
    let Hello {
        version,
        id,
        proof,
        unreachable,
    } = hello;
    let connection = conn.connection.clone();
    if version < MIN_PROTOCOL_VERSION {
        return refuse(&relay, &mut framed, &connection, ErrorCode::VersionTooOld).await;
    }
    let machine = match relay.registry.machine(&id).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            warn!(peer = %conn.peer, "hello from an unregistered computer ID");
            relay
                .limiters
                .failures
                .take(conn.peer.ip(), std::time::Instant::now());
            return refuse(&relay, &mut framed, &connection, ErrorCode::UnknownId).await;
        }
        Err(e) => {
            warn!(%e, "registry lookup failed");
            return refuse(&relay, &mut framed, &connection, ErrorCode::Internal).await;
        }
    };
    if !verify_proof(
        &machine.public_key,
        &id,
        connection.channel_binding(),
        &proof,
    ) {
        warn!(peer = %conn.peer, "machine-key proof failed");
        relay
            .limiters
            .failures
            .take(conn.peer.ip(), std::time::Instant::now());
        return refuse(&relay, &mut framed, &connection, ErrorCode::BadProof).await;
    }
    // Only the machine itself learns that it is disabled.
    if machine.disabled {
        info!(peer = %conn.peer, "hello from a disabled machine");
        return refuse(&relay, &mut framed, &connection, ErrorCode::Disabled).await;
    }
    drop(conn.unauthenticated);
    relay.metrics.handshake(Role::Agent, Ok(()));
    relay
        .limiters
        .connections
        .refund(conn.peer.ip(), std::time::Instant::now());
    if let Some(home) = relay.cluster.agent_home(&id, &unreachable) {
        info!(peer = %conn.peer, node = %home.node, "agent sent to its home node");
        let _ = tokio::time::timeout(WRITE_TIMEOUT, async {
            framed.write(&RelayToAgent::MoveTo(home)).await?;
            framed.shutdown().await
        })
        .await;
        connection
            .close_when_read(ErrorCode::Replaced, CLOSE_GRACE)
            .await;
        return;
    }
    let conn_id = relay.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(AGENT_QUEUE);
    let arrival = Arrival {
        address: conn.peer,
        transport: connection.kind().name(),
    };
    if let Some(old) = relay
        .hub
        .agent_online(id.clone(), conn_id, tx, connection.clone(), arrival)
    {
        let _ = old.try_send(RelayToAgent::Error(ErrorCode::Replaced));
    }
    let transport = connection.kind().to_string();
    let online_ms = crate::cluster::now_ms();
    relay
        .cluster
        .presence
        .record(PresenceChange::Online(Presence {
            id: id.clone(),
            node: relay.cluster.name().to_owned(),
            since: online_ms / 1000,
            since_ms: online_ms,
            address: conn.peer.to_string(),
            transport: transport.clone(),
            away_from: relay.cluster.away_from(&id),
        }));
    relay.hub.set_unreachable(&id, conn_id, unreachable.clone());
    info!(peer = %conn.peer, %transport, "agent online");
    relay.audit.record(AuditEvent::AgentOnline {
        id: id.clone(),
        address: conn.peer,
        transport: transport.clone(),
    });
    let online_since = Instant::now();

    let (stream, buf) = framed.into_parts();
    let (r, w) = tokio::io::split(stream);
    let mut reader = Framed::with_buffer(r, buf);
    let mut writer = Framed::new(w);
    let mut outgoing = Some(RelayToAgent::Welcome {
        node: relay.cluster.name().to_owned(),
    });
    let mut last_heard = Instant::now();
    let mut closing_with = None;
    let reason = loop {
        if let Some(msg) = outgoing.take() {
            match msg {
                RelayToAgent::Error(code) => closing_with = Some(code),
                // Like a replaced connection: tunnels open here carry on.
                RelayToAgent::MoveTo(_) => closing_with = Some(ErrorCode::Replaced),
                _ => {}
            }
            match tokio::time::timeout(WRITE_TIMEOUT, writer.write(&msg)).await {
                Ok(Ok(())) if closing_with.is_none() => {}
                Ok(Ok(())) => break format!("closed: {msg:?}"),
                Ok(Err(e)) => break format!("write failed: {e}"),
                Err(_) => break "agent stopped reading".to_owned(),
            }
        }
        tokio::select! {
            _ = relay.shutdown.cancelled() => outgoing = Some(relay.cluster.leaving(&id, &unreachable)),
            () = connection.closed() => break "connection closed".to_owned(),
            _ = tokio::time::sleep_until(last_heard + DEAD_PEER) => break "no keepalive".to_owned(),
            msg = reader.read::<AgentToRelay>() => match msg {
                Ok(AgentToRelay::Ping(n)) => {
                    last_heard = Instant::now();
                    outgoing = Some(RelayToAgent::Pong(n));
                }
                Ok(AgentToRelay::PairingFailed(ticket)) => {
                    last_heard = Instant::now();
                    let now = std::time::Instant::now();
                    if let Some(client) = relay.hub.failed_pairing(&ticket, &id, now) {
                        info!(%client, "failed end-to-end login charged to the client's address");
                        relay.limiters.failures.take(client, now);
                    }
                }
                Ok(AgentToRelay::About { software }) => {
                    last_heard = Instant::now();
                    relay.hub.set_software(&id, conn_id, &software);
                }
                Ok(AgentToRelay::CanWake(targets)) => {
                    last_heard = Instant::now();
                    info!(pcs = targets.len().min(MAX_WAKE_TARGETS), "the agent can wake office PCs");
                    relay.wake.wakers.set(&id, conn_id, targets);
                }
                Ok(other) => {
                    debug!(?other, "unexpected message on the control stream");
                    outgoing = Some(RelayToAgent::Error(ErrorCode::ProtocolViolation));
                }
                Err(e) => break format!("{e}"),
            },
            queued = rx.recv() => match queued {
                Some(msg) => outgoing = Some(msg),
                None => break "replaced".to_owned(),
            },
        }
    };
    relay.hub.agent_offline(&id, conn_id);
    relay.wake.wakers.remove(&id, conn_id);
    relay.cluster.presence.record(PresenceChange::Offline {
        id: id.clone(),
        node: relay.cluster.name().to_owned(),
        at: crate::cluster::now_ms() / 1000,
    });
    info!(%reason, "agent offline");
    relay.audit.record(AuditEvent::AgentOffline {
        id: id.clone(),
        address: conn.peer,
        transport,
        online_secs: online_since.elapsed().as_secs(),
        reason: closing_with.map_or(reason, closed_because),
    });
    match closing_with {
        // A replaced connection keeps the tunnels already open on it: the agent moved to a
        // new connection (a QUIC re-probe, a new network) and its desktops carry on here.
        Some(ErrorCode::Replaced) => {
            let _ = writer.shutdown().await;
            tokio::select! {
                () = connection.closed() => {}
                _ = relay.hard_stop.cancelled() => connection.close(ErrorCode::ShuttingDown),
            }
        }
        Some(code) => {
            let _ = tokio::time::timeout(WRITE_TIMEOUT, writer.shutdown()).await;
            connection.close_when_read(code, CLOSE_GRACE).await;
        }
        // The agent left or went silent: its tunnels may still be sending their last bytes
        // (the reason a session ended); close once they are done.
        None => {
            tokio::select! {
                () = connection.drained_to(1, relay.options.shutdown_grace) => {}
                _ = relay.hard_stop.cancelled() => {}
            }
            connection.close(ErrorCode::ShuttingDown);
        }
    }
    drop(conn.permit);
}
