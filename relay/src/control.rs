//! An agent's control connection: registration, or presence with keepalives and tunnel
//! requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use telework_net::framed::Framed;
use telework_protocol::messages::{AgentToRelay, RelayToAgent, MIN_PROTOCOL_VERSION};
use telework_protocol::proof::{verify_proof, EXPORTER_LABEL, EXPORTER_LEN};
use telework_protocol::{ComputerId, ErrorCode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::conn::{remaining, Accepted, RelayStream};
use crate::hub::AGENT_QUEUE;
use crate::registry::RegistryError;
use crate::{Registration, Relay};

/// An agent that sends nothing (not even a keepalive) for this long is considered gone.
pub const DEAD_PEER: Duration = Duration::from_secs(45);

/// A write to an agent that does not finish in this time means the agent stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

fn exporter(stream: &RelayStream) -> Option<[u8; EXPORTER_LEN]> {
    let mut out = [0u8; EXPORTER_LEN];
    stream
        .get_ref()
        .1
        .export_keying_material(&mut out, EXPORTER_LABEL, None)
        .ok()?;
    Some(out)
}

async fn refuse(framed: &mut Framed<RelayStream>, code: ErrorCode) {
    let _ = tokio::time::timeout(WRITE_TIMEOUT, framed.write(&RelayToAgent::Error(code))).await;
}

/// Serves one control connection.
pub async fn serve(relay: Arc<Relay>, mut conn: Accepted) {
    let first = match conn
        .framed
        .read_within::<AgentToRelay>(remaining(conn.hello_deadline))
        .await
    {
        Ok(m) => m,
        Err(e) => {
            debug!(%e, "no valid agent hello");
            refuse(&mut conn.framed, ErrorCode::ProtocolViolation).await;
            return;
        }
    };
    let Some(exporter) = exporter(conn.framed.get_ref()) else {
        return;
    };
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
                } else if !verify_proof(&public_key, &id, &exporter, &proof) {
                    Err(ErrorCode::BadProof)
                } else {
                    register(&relay, &id, &public_key, token.as_deref())
                };
                match code {
                    Ok(()) => {
                        info!(peer = %conn.peer, "machine registered");
                        let _ = conn
                            .framed
                            .write(&RelayToAgent::Registered { id: id.clone() })
                            .await;
                    }
                    Err(code) => {
                        relay.limiters.failures.take(ip, std::time::Instant::now());
                        warn!(peer = %conn.peer, ?code, "registration refused");
                        refuse(&mut conn.framed, code).await;
                    }
                }
            }
            .instrument(span)
            .await;
        }
        AgentToRelay::Hello { version, id, proof } => {
            let span = tracing::info_span!("agent", %id);
            crate::conn::spawn(
                &relay.clone(),
                online(relay, conn, version, id, proof, exporter).instrument(span),
            );
        }
        AgentToRelay::Ping(_) | AgentToRelay::PairingFailed(_) => {
            refuse(&mut conn.framed, ErrorCode::ProtocolViolation).await
        }
    }
}

fn register(
    relay: &Relay,
    id: &ComputerId,
    public_key: &[u8],
    token: Option<&str>,
) -> Result<(), ErrorCode> {
    if relay.options.registration == Registration::Token {
        let token = token.ok_or(ErrorCode::TokenRequired)?;
        // Check the ID before spending the token, so a taken ID does not burn it.
        if let Ok(Some(m)) = relay.registry.machine(id) {
            if m.public_key != public_key {
                return Err(ErrorCode::IdTaken);
            }
            return Ok(());
        }
        relay.registry.consume_token(token).map_err(|e| match e {
            RegistryError::BadToken => ErrorCode::BadToken,
            _ => ErrorCode::Internal,
        })?;
    }
    relay
        .registry
        .register(id, public_key)
        .map_err(|e| match e {
            RegistryError::IdTaken => ErrorCode::IdTaken,
            _ => ErrorCode::Internal,
        })
}

pub(crate) async fn online(
    relay: Arc<Relay>,
    mut conn: Accepted,
    version: u16,
    id: ComputerId,
    proof: Vec<u8>,
    exporter: [u8; EXPORTER_LEN],
) {
    if version < MIN_PROTOCOL_VERSION {
        return refuse(&mut conn.framed, ErrorCode::VersionTooOld).await;
    }
    let machine = match relay.registry.machine(&id) {
        Ok(Some(m)) => m,
        Ok(None) => {
            warn!(peer = %conn.peer, "hello from an unregistered computer ID");
            relay
                .limiters
                .failures
                .take(conn.peer.ip(), std::time::Instant::now());
            return refuse(&mut conn.framed, ErrorCode::UnknownId).await;
        }
        Err(e) => {
            warn!(%e, "registry lookup failed");
            return refuse(&mut conn.framed, ErrorCode::Internal).await;
        }
    };
    if !verify_proof(&machine.public_key, &id, &exporter, &proof) {
        warn!(peer = %conn.peer, "machine-key proof failed");
        relay
            .limiters
            .failures
            .take(conn.peer.ip(), std::time::Instant::now());
        return refuse(&mut conn.framed, ErrorCode::BadProof).await;
    }
    drop(conn.unauthenticated);
    let conn_id = relay.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(AGENT_QUEUE);
    if let Some(old) = relay.hub.agent_online(id.clone(), conn_id, tx) {
        let _ = old.try_send(RelayToAgent::Error(ErrorCode::Replaced));
    }
    let _ = relay.registry.touch(&id);
    info!(peer = %conn.peer, "agent online");

    let (stream, buf) = conn.framed.into_parts();
    let (r, w) = tokio::io::split(stream);
    let mut reader = Framed::with_buffer(r, buf);
    let mut writer = Framed::new(w);
    let mut outgoing = Some(RelayToAgent::Welcome);
    let mut last_heard = Instant::now();
    let reason = loop {
        if let Some(msg) = outgoing.take() {
            let closing = matches!(msg, RelayToAgent::Error(_));
            match tokio::time::timeout(WRITE_TIMEOUT, writer.write(&msg)).await {
                Ok(Ok(())) if !closing => {}
                Ok(Ok(())) => break format!("closed: {msg:?}"),
                Ok(Err(e)) => break format!("write failed: {e}"),
                Err(_) => break "agent stopped reading".to_owned(),
            }
        }
        tokio::select! {
            _ = relay.shutdown.cancelled() => outgoing = Some(RelayToAgent::Error(ErrorCode::ShuttingDown)),
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
                Ok(other) => {
                    debug!(?other, "unexpected message on control connection");
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
    let _ = relay.registry.touch(&id);
    info!(%reason, "agent offline");
    drop(conn.connection);
}
