//! A client's connection: look up the computer ID, ask its agent for a tunnel, wait for the
//! ticket to be redeemed, then splice.

use std::sync::Arc;
use std::time::Instant;

use telework_net::framed::Framed;
use telework_protocol::messages::{
    ClientToRelay, RelayToClient, RelayToTunnel, MIN_PROTOCOL_VERSION,
};
use telework_protocol::ErrorCode;
use tracing::{debug, info, Instrument};

use crate::conn::{remaining, Accepted};
use crate::hub::{RequestError, TICKET_TTL};
use crate::splice::splice;
use crate::Relay;

/// Serves one client connection.
pub async fn serve(relay: Arc<Relay>, mut conn: Accepted) {
    let request = conn
        .framed
        .read_within::<ClientToRelay>(remaining(conn.hello_deadline))
        .await;
    let ClientToRelay::Connect { version, id } = match request {
        Ok(m) => m,
        Err(e) => {
            debug!(%e, "no valid client hello");
            let _ = conn
                .framed
                .write(&RelayToClient::Error(ErrorCode::ProtocolViolation))
                .await;
            return;
        }
    };
    drop(conn.unauthenticated);
    let span = tracing::info_span!("session", %id, peer = %conn.peer);
    async move {
        let refuse = |code: ErrorCode| RelayToClient::Error(code);
        let ip = conn.peer.ip();
        let now = Instant::now();
        if !relay.limiters.failures.has_token(ip, now) || !relay.limiters.lookups.take(ip, now) {
            info!("rate limited");
            let _ = conn.framed.write(&refuse(ErrorCode::RateLimited)).await;
            return;
        }
        let failed = || {
            relay.limiters.failures.take(ip, Instant::now());
        };
        if version < MIN_PROTOCOL_VERSION {
            let _ = conn.framed.write(&refuse(ErrorCode::VersionTooOld)).await;
            return;
        }
        match relay.registry.machine(&id) {
            Ok(Some(_)) => {}
            Ok(None) => {
                failed();
                let _ = conn.framed.write(&refuse(ErrorCode::UnknownId)).await;
                return;
            }
            Err(e) => {
                tracing::warn!(%e, "registry lookup failed");
                let _ = conn.framed.write(&refuse(ErrorCode::Internal)).await;
                return;
            }
        }
        let started = Instant::now();
        let (ticket, waiting) = match relay.hub.request_tunnel(&id, ip, started) {
            Ok(t) => t,
            Err(RequestError::Offline) => {
                failed();
                let _ = conn.framed.write(&refuse(ErrorCode::Offline)).await;
                return;
            }
            Err(RequestError::Busy) => {
                let _ = conn.framed.write(&refuse(ErrorCode::Busy)).await;
                return;
            }
        };
        let agent = match tokio::time::timeout(TICKET_TTL, waiting).await {
            Ok(Ok(agent)) => agent,
            _ => {
                relay.hub.cancel(&ticket);
                info!("agent did not attach in time");
                failed();
                let _ = conn.framed.write(&refuse(ErrorCode::AgentTimeout)).await;
                return;
            }
        };
        let mut agent_framed = Framed::with_buffer(agent.stream, agent.leftover);
        if agent_framed.write(&RelayToTunnel::Attached).await.is_err()
            || conn.framed.write(&RelayToClient::Paired).await.is_err()
        {
            return;
        }
        info!(setup_ms = started.elapsed().as_millis() as u64, "paired");
        let (client_stream, client_left) = conn.framed.into_parts();
        let (agent_stream, agent_left) = agent_framed.into_parts();
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
        // The splice gets a small task of its own; this (larger) set-up task ends here.
        let stop = relay.hard_stop.clone();
        let tap = relay.options.splice_tap.clone();
        let agent_permit = agent._connection;
        let client_permit = conn.connection;
        crate::conn::spawn(&relay, async move {
            let result = tokio::select! {
                r = splice(client_stream, client_left, agent_stream, agent_left, tap) => r,
                _ = stop.cancelled() => Err(std::io::Error::other("relay stopped")),
            };
            match result {
                Ok((up, down)) => info!(
                    up,
                    down,
                    secs = started.elapsed().as_secs(),
                    "session ended"
                ),
                Err(e) => info!(%e, secs = started.elapsed().as_secs(), "session ended with error"),
            }
            drop((agent_permit, client_permit));
        });
    }
    .instrument(span)
    .await;
}
