//! One accepted connection, on either transport: the handshake (inside the connection's own
//! task, under a deadline), then the handler for the role its ALPN names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use telework_net::transport::{quic, tcp, Connection, Role};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, Instrument};

use crate::{agent_conn, client_conn, Relay};

/// What a role handler gets: the connection, when its first request must have arrived, and
/// the permits that count it.
pub struct Accepted {
    /// The connection.
    pub connection: Connection,
    /// The peer's address when it connected.
    pub peer: SocketAddr,
    /// Deadline for the first message.
    pub hello_deadline: Instant,
    /// Held until the peer has said what it is (an agent's verified proof, a client's first
    /// valid request).
    pub unauthenticated: OwnedSemaphorePermit,
    /// Held for the whole life of the connection.
    pub permit: OwnedSemaphorePermit,
}

/// Permits an accepted connection holds.
pub struct Permits {
    /// Counts it among open connections.
    pub connection: OwnedSemaphorePermit,
    /// Counts it among connections that have not shown who they are.
    pub unauthenticated: OwnedSemaphorePermit,
}

/// Runs one TCP connection: TLS, HTTP/2, then its role.
pub async fn handle_tcp(relay: Arc<Relay>, tcp: TcpStream, peer: SocketAddr, permits: Permits) {
    let started = Instant::now();
    let deadline = started + relay.options.handshake_timeout;
    let _ = tcp.set_nodelay(true);
    telework_net::enable_keepalive(&tcp);
    let accepted =
        tokio::time::timeout_at(deadline.into(), tcp::accept(&relay.acceptor, tcp, peer)).await;
    match accepted {
        Ok(Ok((role, connection))) => dispatch(&relay, role, connection, peer, deadline, permits),
        Ok(Err(e)) => debug!(%e, "TLS handshake failed"),
        Err(_) => debug!("TLS handshake timed out"),
    }
}

/// Runs one QUIC connection: the handshake, then its role.
pub async fn handle_quic(relay: Arc<Relay>, incoming: quinn::Incoming, permits: Permits) {
    let peer = incoming.remote_address();
    let deadline = Instant::now() + relay.options.handshake_timeout;
    match tokio::time::timeout_at(deadline.into(), quic::accept(incoming)).await {
        Ok(Ok((role, connection))) => dispatch(&relay, role, connection, peer, deadline, permits),
        Ok(Err(e)) => debug!(%e, "QUIC handshake failed"),
        Err(_) => debug!("QUIC handshake timed out"),
    }
}

fn dispatch(
    relay: &Arc<Relay>,
    role: Role,
    connection: Connection,
    peer: SocketAddr,
    hello_deadline: Instant,
    permits: Permits,
) {
    debug!(transport = %connection.kind(), ?role, "connected");
    let accepted = Accepted {
        connection,
        peer,
        hello_deadline,
        unauthenticated: permits.unauthenticated,
        permit: permits.connection,
    };
    // Each role runs in a task of its own: the handshake's large future is freed now instead
    // of living as long as the connection.
    match role {
        Role::Agent => spawn(relay, agent_conn::serve(relay.clone(), accepted)),
        Role::Client => spawn(relay, client_conn::serve(relay.clone(), accepted)),
    }
}

/// Runs `fut` as a tracked task in the current span.
pub fn spawn(relay: &Relay, fut: impl std::future::Future<Output = ()> + Send + 'static) {
    relay.tasks.spawn(fut.instrument(tracing::Span::current()));
}

/// Time left until `deadline`, for a read that must finish by then.
pub fn remaining(deadline: Instant) -> std::time::Duration {
    deadline.saturating_duration_since(Instant::now())
}
