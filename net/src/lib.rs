//! Tokio transports shared by the relay, the agent and the client.
//!
//! - [`tls`]: TLS 1.3-only rustls configurations and relay-certificate trust (pinned
//!   fingerprint, pinned CA, or system roots).
//! - [`transport`]: the seam (a connection of streams) on QUIC and on TLS/TCP with HTTP/2,
//!   and dialling the relay on either, racing them.
//! - [`framed`]: a stream that reads and writes typed frames with deadlines.
//! - [`handshake_io`]: time and IO for the drivers of the handshake machines.
//! - [`connect`]: TCP and TLS to the relay, with errors a person can act on.
//! - [`proxy`]: reaching the relay through an HTTP proxy (`CONNECT`, Basic authentication).
//! - [`pump`]: moving desktop bytes between a plain local socket and an encrypted tunnel.
//! - [`read_ahead`]: large socket reads under rustls's small ones.
//! - [`relay_profile`]: the `tw-relay:` line an operator hands employees.
//! - [`signal`]: waiting for Ctrl-C or SIGTERM.
//! - [`logging`]: the log subscriber, as text or JSON lines (`--log-format`).
//! - [`glibc_tuning`]: glibc's heap trim threshold, and `memcpy` off `rep movsb` on AMD Zen
//!   3+, which the programs set first thing at start.
//! - `holds_until_flush` (tests only, feature `test-util`): a transport that holds writes
//!   until flushed, to test that writers flush.
//!
//! Above the transport, everything works on any `AsyncRead + AsyncWrite` stream.

pub mod connect;
pub mod framed;
pub mod glibc_tuning;
pub mod handshake_io;
#[cfg(any(test, feature = "test-util"))]
pub mod holds_until_flush;
pub mod logging;
pub mod proxy;
pub mod pump;
pub mod read_ahead;
pub mod relay_profile;
pub mod signal;
pub mod tls;
pub mod transport;

use tokio::io::{AsyncRead, AsyncWrite};

/// Any byte stream a tunnel can run over (a QUIC or HTTP/2 stream; a local socket).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Deadline for a TCP connect plus TLS handshake plus the first hello.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// TCP keepalive probes start after this much silence.
pub const TCP_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Turns on TCP keepalive, so a peer that vanished without a close (a laptop that slept, a
/// pulled cable) is noticed by the kernel even on a connection nobody writes to.
pub fn enable_keepalive(tcp: &tokio::net::TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(std::time::Duration::from_secs(10));
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive) {
        tracing::debug!(%e, "cannot enable TCP keepalive");
    }
}
