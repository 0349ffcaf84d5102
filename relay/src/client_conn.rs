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
use telework_protocol::messages::{ClientToRelay, RelayOpens, RelayToClient, MIN_PROTOCOL_VERSION};
use telework_protocol::{ComputerId, ErrorCode};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info, Instrument};

use crate::audit::Refusal;
use crate::conn::Accepted;
use crate::hub::{RequestError, PAIRING_TIMEOUT};
use crate::limits::{ConnectionRate, TUNNELS_PER_CONNECTION};
use crate::splice::splice;
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
    });
    let connection = conn.connection;
    // The first request must come within the handshake deadline; later, a connection may
    // rest between tunnels, but not for ever.
    let mut idle_deadline = conn.hello_deadline;
    loop {
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
                    break;
                }
            },
            () = idle => {
                if state.open.load(Ordering::Relaxed) == 0 {
                    debug!("client connection idle; closing");
                    connection.close(ErrorCode::ProtocolViolation);
                    break;
                }
                idle_deadline = Instant::now() + IDLE_CONNECTION;
            }
            _ = relay.hard_stop.cancelled() => {
                connection.close(ErrorCode::ShuttingDown);
                break;
            }
        }
    }
    drop(conn.permit);
}

fn refusal(code: ErrorCode) -> RelayToClient {
    RelayToClient::Error(code)
}

/// Serves one stream: its request, the pairing, then the splice.
async fn serve_stream(relay: &Arc<Relay>, state: &ClientState, stream: Stream) {
    let mut framed = Framed::new(stream);
    let request = framed.read_within::<ClientToRelay>(REQUEST_TIMEOUT).await;
    let ClientToRelay::Connect { version, id } = match request {
        Ok(m) => m,
        Err(e) => {
            debug!(%e, "no valid client request");
            let _ = framed.write(&refusal(ErrorCode::ProtocolViolation)).await;
            return;
        }
    };
    let span = tracing::info_span!("session", %id, peer = %state.peer);
    async move {
        if version < MIN_PROTOCOL_VERSION {
            let _ = framed.write(&refusal(ErrorCode::VersionTooOld)).await;
            return;
        }
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
            let _ = framed.write(&refusal(ErrorCode::RateLimited)).await;
            return;
        }
        let failed = || relay.limiters.failures.take(ip, Instant::now());
        let (ticket, agent_conn) = match relay.hub.request_tunnel(&id, ip, now) {
            Ok(t) => t,
            Err(RequestError::Offline) => {
                let code = match relay.registry.machine(&id) {
                    Ok(Some(_)) => ErrorCode::Offline,
                    Ok(None) => ErrorCode::UnknownId,
                    Err(e) => {
                        tracing::warn!(%e, "registry lookup failed");
                        let _ = framed.write(&refusal(ErrorCode::Internal)).await;
                        return;
                    }
                };
                failed();
                let why = match code {
                    ErrorCode::Offline => Refusal::Offline,
                    _ => Refusal::UnknownId,
                };
                relay.audit.lookup_refused(ip, why);
                let _ = framed.write(&refusal(code)).await;
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
                let _ = framed.write(&refusal(ErrorCode::Offline)).await;
                return;
            }
            Err(_) => {
                info!("the agent's stream did not open in time");
                let _ = framed.write(&refusal(ErrorCode::AgentTimeout)).await;
                return;
            }
        };
        if framed.write(&RelayToClient::Paired).await.is_err() {
            return;
        }
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
        let result = tokio::select! {
            r = splice(client_stream, client_left, agent_stream, agent_left, tap) => r,
            _ = stop.cancelled() => Err(std::io::Error::other("relay stopped")),
        };
        match result {
            Ok((up, down)) => debug!(up, down, secs = now.elapsed().as_secs(), "tunnel ended"),
            Err(e) => debug!(%e, secs = now.elapsed().as_secs(), "tunnel ended with error"),
        }
    }
    .instrument(span)
    .await;
}
