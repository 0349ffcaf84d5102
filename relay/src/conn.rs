//! One accepted connection: TLS handshake (inside the connection's own task, under a
//! deadline), then dispatch on the ALPN role.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use telework_net::framed::Framed;
use telework_protocol::messages::alpn;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, Instrument};

use crate::{client_conn, control, tunnel, Relay};

/// A TLS connection accepted by the relay. (No read-ahead buffer here, unlike the programs'
/// connections: measured three times with `telework-bench`, it saved at most 3 % of relay CPU
/// per GB (0.80–0.82 against 0.83–0.85 s/GB), while its transient 64 KiB buffers raised the
/// relay's memory per idle session from 35.9 to 38.9 KiB.)
pub type RelayStream = tokio_rustls::server::TlsStream<TcpStream>;

/// What a role handler gets: the framed stream, when its hello must have arrived, and the
/// permit that counts it among unauthenticated connections until then.
pub struct Accepted {
    /// The TLS stream, framed.
    pub framed: Framed<RelayStream>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Deadline for the first message.
    pub hello_deadline: Instant,
    /// Held until the peer has said who it is.
    pub unauthenticated: OwnedSemaphorePermit,
    /// Held for the whole life of the connection.
    pub connection: OwnedSemaphorePermit,
}

/// Runs one connection to its end.
pub async fn handle(
    relay: Arc<Relay>,
    tcp: TcpStream,
    peer: SocketAddr,
    connection: OwnedSemaphorePermit,
    unauthenticated: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let deadline = started + relay.options.handshake_timeout;
    let _ = tcp.set_nodelay(true);
    telework_net::enable_keepalive(&tcp);
    let tls = match tokio::time::timeout_at(deadline.into(), relay.acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            debug!(%e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            debug!("TLS handshake timed out");
            return;
        }
    };
    let role = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    let accepted = Accepted {
        framed: Framed::new(tls),
        peer,
        hello_deadline: deadline,
        unauthenticated,
        connection,
    };
    match role.as_deref() {
        // Each role runs in a task of its own: the handshake's large future (TLS accept state)
        // is freed now instead of living as long as the connection. An idle agent then costs
        // only its small control loop.
        Some(r) if r == alpn::CONTROL => spawn(&relay, control::serve(relay.clone(), accepted)),
        Some(r) if r == alpn::CLIENT => spawn(&relay, client_conn::serve(relay.clone(), accepted)),
        Some(r) if r == alpn::TUNNEL => spawn(&relay, tunnel::serve(relay.clone(), accepted)),
        // rustls already refuses unknown ALPN ids; a peer that offered none is not ours.
        _ => debug!("connection without a telework ALPN role; closing"),
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
