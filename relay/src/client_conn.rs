//! A client's connection: every stream the client opens asks for a computer ID; the relay
//! opens a stream on that agent's connection and copies bytes between the two.
//!
//! Limits by who, not by where: until a connection has paired a tunnel, its requests are
//! charged to its address (lookups and failures, which guard against probing for computer
//! IDs). Once paired, further tunnels to the same computer ID are charged to the connection
//! itself ([`TUNNELS_PER_CONNECTION`]), and how many may be open at once is the transport's
//! stream limit, so that many employees behind one address do not throttle each other.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use telework_net::framed::Framed;
use telework_net::transport::Stream;
use telework_protocol::messages::{
    ClientToRelay, NodeAddr, RelayOpens, RelayToClient, MIN_PROTOCOL_VERSION,
};
use telework_protocol::proof::{key_fingerprint, verify_device_proof, EXPORTER_LEN};
use telework_protocol::{ComputerId, ErrorCode};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, Instrument};

use crate::audit::{AuditEvent, Refusal};
use crate::conn::Accepted;
use crate::hub::{RequestError, PAIRING_TIMEOUT};
use crate::limits::{ConnectionRate, TUNNELS_PER_CONNECTION};
use crate::metrics::{LimitKind, Role};
use crate::sessions::{EndSwitch, NewSession, SessionHandle};
use crate::splice::{splice, Meters};
use crate::Relay;

/// A client connection with no open stream for this long is closed.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(60);

/// How long a new stream has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the streams of one client connection share.
struct ClientState {
    peer: std::net::SocketAddr,
    /// The computer ID this connection has paired with; its further tunnels are charged to
    /// the connection, not the address.
    paired: Mutex<Option<ComputerId>>,
    rate: Mutex<ConnectionRate>,
    /// Streams in progress.
    open: AtomicUsize,
    /// Counts the connection among those still handshaking until its first valid request,
    /// as before any connection says who it is; that cap guards the handshake, not lookups.
    unauthenticated: Mutex<Option<OwnedSemaphorePermit>>,
    /// Whether the connection's token for new connections went back to its address (once,
    /// at its first pairing).
    refunded: AtomicBool,
    /// `QUIC` or `TLS/TCP`.
    transport: &'static str,
    /// The connection's exporter value, which device proofs sign.
    binding: [u8; EXPORTER_LEN],
    /// The device key and proof this connection showed, once verified: later streams that
    /// carry the same bytes are not verified again.
    device: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
    /// The session, from the first pairing on.
    session: Mutex<Option<Arc<SessionHandle>>>,
    /// Thrown when an operator ends the session.
    end: Arc<EndSwitch>,
}

/// Serves one client connection until it closes.
pub async fn serve(relay: Arc<Relay>, conn: Accepted) {
    let state = Arc::new(ClientState {
        peer: conn.peer,
        paired: Mutex::new(None),
        rate: Mutex::new(ConnectionRate::new(TUNNELS_PER_CONNECTION, Instant::now())),
        open: AtomicUsize::new(0),
        unauthenticated: Mutex::new(Some(conn.unauthenticated)),
        refunded: AtomicBool::new(false),
        transport: conn.connection.kind().name(),
        binding: *conn.connection.channel_binding(),
        device: Mutex::new(None),
        session: Mutex::new(None),
        end: Arc::default(),
    });
    let connection = conn.connection;
    // The first request must come within the handshake deadline; later, a connection may
    // rest between tunnels, but not for ever.
    let mut idle_deadline = conn.hello_deadline;
    let reason = loop {
        let idle = tokio::time::sleep_until(idle_deadline.into());
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Ok(stream) => {
                    state.open.fetch_add(1, Ordering::Relaxed);
                    idle_deadline = Instant::now() + IDLE_CONNECTION;
                    let (relay2, state2) = (relay.clone(), state.clone());
                    crate::conn::spawn(&relay, async move {
                        serve_stream(&relay2, &state2, stream).await;
                        state2.open.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    debug!(%e, "client connection closed");
                    break "the client's connection closed";
                }
            },
            () = idle => {
                if state.open.load(Ordering::Relaxed) == 0 {
                    debug!("client connection idle; closing");
                    connection.close(ErrorCode::ProtocolViolation);
                    break "idle";
                }
                idle_deadline = Instant::now() + IDLE_CONNECTION;
            }
            _ = relay.hard_stop.cancelled() => {
                connection.close(ErrorCode::ShuttingDown);
                break "the relay shut down";
            }
            () = state.end.token.cancelled() => {
                let code = state.end.code().unwrap_or(ErrorCode::EndedByOperator);
                info!(peer = %state.peer, ?code, "session ended by the relay operator");
                connection.close(code);
                break match code {
                    ErrorCode::Disabled => "the office PC was disabled",
                    _ => "ended by the relay operator",
                };
            }
        }
    };
    let session = lock(&state.session).take();
    if let Some(session) = session {
        finish(&relay, &session, reason);
    }
    drop(conn.permit);
}

/// Takes a session off the live list and writes its end to the audit log and (in batches,
/// for other nodes' consoles) the sessions table.
fn finish(relay: &Relay, session: &SessionHandle, reason: &str) {
    if let Some(last) = relay.sessions.finish(session) {
        relay.cluster.session_ended(session.id);
        let secs = session.elapsed().as_secs();
        info!(
            session = session.id,
            up = last.bytes_up,
            down = last.bytes_down,
            secs,
            reason,
            "session ended"
        );
        relay.audit.record(AuditEvent::SessionEnded {
            id: last.computer_id,
            client: last.client,
            device: last.device,
            transport: last.transport.to_owned(),
            secs,
            bytes_up: last.bytes_up,
            bytes_down: last.bytes_down,
            reason: reason.to_owned(),
        });
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks the device proof of a request on `connection`: verified once per connection, then
/// compared. Returns the device key's fingerprint.
fn check_device(state: &ClientState, key: Vec<u8>, proof: Vec<u8>) -> Option<String> {
    let mut known = lock(&state.device);
    if let Some((k, p)) = known.as_ref() {
        if *k == key && *p == proof {
            return Some(key_fingerprint(&key));
        }
    }
    if !verify_device_proof(&key, &state.binding, &proof) {
        return None;
    }
    let fingerprint = key_fingerprint(&key);
    *known = Some((key, proof));
    Some(fingerprint)
}

/// The live node other than this one where `id` is online, if any (asked only when there
/// are other nodes).
pub(crate) async fn elsewhere(relay: &Relay, id: &ComputerId) -> Option<NodeAddr> {
    if relay.cluster.others().is_empty() {
        return None;
    }
    match relay.registry.presence_of(id).await {
        Ok(Some(p)) if p.node != relay.cluster.name() => relay.cluster.node(&p.node),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(%e, "presence lookup failed");
            None
        }
    }
}

fn refusal(code: ErrorCode) -> RelayToClient {
    RelayToClient::Error(code)
}

/// The connection's session, started at its first pairing (and again if the connection
/// pairs with another office PC).
fn session_for(
    relay: &Relay,
    state: &ClientState,
    id: &ComputerId,
    device: String,
    requested: Instant,
) -> Arc<SessionHandle> {
    let mut slot = lock(&state.session);
    if let Some(session) = slot.as_ref() {
        if session.computer_id == *id {
            return session.clone();
        }
        finish(relay, session, "the client asked for another office PC");
    }
    let session = Arc::new(relay.sessions.start(
        NewSession {
            computer_id: id.clone(),
            client: state.peer,
            device: device.clone(),
            transport: state.transport,
        },
        state.end.clone(),
    ));
    relay.metrics.session_set_up(requested.elapsed());
    relay.cluster.session_started(&session);
    info!(session = session.id, "session started");
    relay.audit.record(AuditEvent::SessionStarted {
        id: id.clone(),
        client: state.peer,
        device,
        transport: state.transport.to_owned(),
    });
    *slot = Some(session.clone());
    session
}

/// Serves one stream: its request, the pairing, then the splice.
async fn serve_stream(relay: &Arc<Relay>, state: &ClientState, stream: Stream) {
    let mut framed = Framed::new(stream);
    let request = framed.read_within::<ClientToRelay>(REQUEST_TIMEOUT).await;
    let (version, id, device) = match request {
        Ok(ClientToRelay::ConnectAs {
            version,
            id,
            device_key,
            device_proof,
        }) => (version, id, Some((device_key, device_proof))),
        // Only versions before 6 send this; they are told to update.
        Ok(ClientToRelay::Connect { version, id }) => (version, id, None),
        Ok(ClientToRelay::Wake { version, id }) => {
            // A valid request: the connection has said what it is (the wake module charges
            // its address).
            drop(lock(&state.unauthenticated).take());
            let span = tracing::info_span!("wake", %id, peer = %state.peer);
            crate::wake::serve(relay, framed, state.peer, version, id)
                .instrument(span)
                .await;
            return;
        }
        Err(e) => {
            debug!(%e, "no valid client request");
            relay
                .metrics
                .handshake(Role::Client, Err(ErrorCode::ProtocolViolation));
            let _ = framed.write(&refusal(ErrorCode::ProtocolViolation)).await;
            return;
        }
    };
    let span = tracing::info_span!("session", %id, peer = %state.peer);
    async move {
        let refuse = |code: ErrorCode| {
            relay.metrics.handshake(Role::Client, Err(code));
            refusal(code)
        };
        let device = match device {
            _ if version < MIN_PROTOCOL_VERSION => {
                let _ = framed.write(&refuse(ErrorCode::VersionTooOld)).await;
                return;
            }
            None => {
                let _ = framed.write(&refuse(ErrorCode::ProtocolViolation)).await;
                return;
            }
            Some((key, proof)) => match check_device(state, key, proof) {
                Some(fingerprint) => fingerprint,
                None => {
                    info!("device proof failed");
                    relay
                        .limiters
                        .failures
                        .take(state.peer.ip(), Instant::now());
                    let _ = framed.write(&refuse(ErrorCode::BadProof)).await;
                    return;
                }
            },
        };
        // A valid request: the connection has said what it is, as an agent's hello does.
        drop(
            state
                .unauthenticated
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let ip = state.peer.ip();
        let now = Instant::now();
        let known = state
            .paired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            == Some(&id);
        let allowed = if known {
            state
                .rate
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(now)
        } else {
            relay.limiters.failures.has_token(ip, now) && relay.limiters.lookups.take(ip, now)
        };
        if !allowed {
            info!("rate limited");
            relay.audit.lookup_refused(ip, Refusal::RateLimited);
            relay.metrics.limit_refused(if known {
                LimitKind::Tunnels
            } else {
                LimitKind::Lookups
            });
            let _ = framed.write(&refuse(ErrorCode::RateLimited)).await;
            return;
        }
        let failed = || relay.limiters.failures.take(ip, Instant::now());
        let (ticket, agent_conn) = match relay.hub.request_tunnel(&id, ip, now) {
            Ok(t) => t,
            Err(RequestError::Offline) => {
                if let Some(there) = elsewhere(relay, &id).await {
                    info!(node = %there.node, "the office PC is online at another node; client sent there");
                    let _ = framed.write(&RelayToClient::MoveTo(there)).await;
                    return;
                }
                let code = match relay.registry.machine(&id).await {
                    Ok(Some(_)) => ErrorCode::Offline,
                    Ok(None) => ErrorCode::UnknownId,
                    Err(e) => {
                        tracing::warn!(%e, "registry lookup failed");
                        let _ = framed.write(&refuse(ErrorCode::Internal)).await;
                        return;
                    }
                };
                failed();
                let why = match code {
                    ErrorCode::Offline => Refusal::Offline,
                    _ => Refusal::UnknownId,
                };
                relay.audit.lookup_refused(ip, why);
                let _ = framed.write(&refuse(code)).await;
                return;
            }
        };
        let opened = tokio::time::timeout(PAIRING_TIMEOUT, async {
            let mut agent = Framed::new(agent_conn.open().await?);
            agent.write(&RelayOpens::Tunnel { tunnel: ticket }).await?;
            Ok::<_, telework_net::framed::FrameError>(agent)
        })
        .await;
        let agent = match opened {
            Ok(Ok(agent)) => agent,
            Ok(Err(e)) => {
                info!(%e, "cannot open a stream to the agent");
                let _ = framed.write(&refuse(ErrorCode::Offline)).await;
                return;
            }
            Err(_) => {
                info!("the agent's stream did not open in time");
                let _ = framed.write(&refuse(ErrorCode::AgentTimeout)).await;
                return;
            }
        };
        if framed.write(&RelayToClient::Paired).await.is_err() {
            return;
        }
        relay.metrics.handshake(Role::Client, Ok(()));
        relay.metrics.tunnel_paired();
        let session = session_for(relay, state, &id, device, now);
        if !known {
            // A lookup that paired was legitimate work: it no longer counts against the
            // address, and the connection's further tunnels to this ID are its own.
            relay.limiters.lookups.refund(ip, Instant::now());
            *state.paired.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.clone());
            if !state.refunded.swap(true, Ordering::Relaxed) {
                relay.limiters.connections.refund(ip, Instant::now());
            }
        }
        debug!(setup_us = now.elapsed().as_micros() as u64, "paired");
        let (client_stream, client_left) = framed.into_parts();
        let (agent_stream, agent_left) = agent.into_parts();
        if let Some(hook) = relay.options.splice_hook.clone() {
            let pair = crate::splice::SplicePair {
                id: id.clone(),
                client: client_stream,
                client_left,
                agent: agent_stream,
                agent_left,
            };
            hook.splice(pair).await;
            return;
        }
        let stop = relay.hard_stop.clone();
        let tap = relay.options.splice_tap.clone();
        let meters = Meters {
            off: !relay.options.count_bytes,
            session: session.counts.clone(),
            up: relay.metrics.relayed_up.clone(),
            down: relay.metrics.relayed_down.clone(),
        };
        session.tunnels.fetch_add(1, Ordering::Relaxed);
        let result = tokio::select! {
            r = splice(client_stream, client_left, agent_stream, agent_left, tap, meters) => r,
            _ = stop.cancelled() => Err(std::io::Error::other("relay stopped")),
        };
        session.tunnels.fetch_sub(1, Ordering::Relaxed);
        match result {
            Ok((up, down)) => debug!(up, down, secs = now.elapsed().as_secs(), "tunnel ended"),
            Err(e) => debug!(%e, secs = now.elapsed().as_secs(), "tunnel ended with error"),
        }
    }
    .instrument(span)
    .await;
}
