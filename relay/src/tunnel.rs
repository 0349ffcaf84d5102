//! An agent's tunnel connection: redeem the ticket and hand the stream to the waiting client.

use std::sync::Arc;
use std::time::Instant;

use telework_net::framed::Framed;
use telework_protocol::messages::{RelayToTunnel, TunnelToRelay, MIN_PROTOCOL_VERSION};
use telework_protocol::ErrorCode;
use tracing::{debug, info};

use crate::conn::{remaining, Accepted};
use crate::hub::AgentTunnel;
use crate::Relay;

/// Serves one tunnel connection.
pub async fn serve(relay: Arc<Relay>, mut conn: Accepted) {
    let attach = conn
        .framed
        .read_within::<TunnelToRelay>(remaining(conn.hello_deadline))
        .await;
    let TunnelToRelay::Attach { version, ticket } = match attach {
        Ok(m) => m,
        Err(e) => {
            debug!(%e, "no valid tunnel attach");
            let _ = conn
                .framed
                .write(&RelayToTunnel::Error(ErrorCode::ProtocolViolation))
                .await;
            return;
        }
    };
    if version < MIN_PROTOCOL_VERSION {
        let _ = conn
            .framed
            .write(&RelayToTunnel::Error(ErrorCode::VersionTooOld))
            .await;
        return;
    }
    drop(conn.unauthenticated);
    let (stream, leftover) = conn.framed.into_parts();
    let tunnel = AgentTunnel {
        stream,
        leftover,
        _connection: conn.connection,
    };
    match relay.hub.redeem(&ticket, tunnel, Instant::now()) {
        Ok(id) => debug!(%id, "tunnel attached"),
        Err(tunnel) => {
            info!(peer = %conn.peer, "tunnel with an invalid ticket refused");
            relay.limiters.failures.take(conn.peer.ip(), Instant::now());
            let mut framed = Framed::with_buffer(tunnel.stream, tunnel.leftover);
            let _ = framed
                .write(&RelayToTunnel::Error(ErrorCode::BadTicket))
                .await;
        }
    }
}
