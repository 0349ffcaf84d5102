//! QUIC with quinn: the relay's UDP endpoint, dialling it, and accepting on it.
//!
//! The TLS inside is the same rustls configuration as on TCP (TLS 1.3 only, ring, the same
//! certificate checks), so nothing weaker is ever negotiated on either transport.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{HandshakeData, QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, Endpoint, IdleTimeout, TransportConfig, VarInt};
use telework_protocol::proof::EXPORTER_LABEL;

use super::{ChannelBinding, Connection, Role};
use crate::connect::{ConnectError, RelayAddr};

/// QUIC keep-alive: well inside the ~30 s after which home routers forget a UDP mapping, and
/// short enough that an idle agent learns within a few seconds that its relay was killed and
/// restarted: the restarted relay answers the next packet with a stateless reset (signed with
/// the key it had before), where TCP gets the kernel's reset at once. About 30 bytes each way
/// every 2 s per idle agent.
pub const KEEP_ALIVE: Duration = Duration::from_secs(2);

/// Most stateless resets the relay sends per this interval (quinn's default is one per 20 ms,
/// which would take 20 s to tell a thousand agents). A reset is always smaller than the
/// packet that caused it, so two endpoints cannot amplify each other; this bounds the rate.
pub const MIN_RESET_INTERVAL: Duration = Duration::from_millis(1);

/// A peer that sends nothing (keep-alives included) for this long is gone: three keep-alives
/// missed. A relay node that was killed and is not coming back answers nothing, not even
/// with a reset, so this is how soon its agents look for another node (within 10 s of the
/// kill, with the reconnect) and its clients resume their sessions there.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(6);

/// Most bytes one stream may have in flight towards us. Bounds a stream's buffer at the
/// receiver; a desktop stream needs about a bandwidth-delay product (1 MiB covers 80 Mbit/s
/// at 100 ms).
pub const STREAM_WINDOW: u32 = 1024 * 1024;

/// Most bytes all streams of one connection may have in flight towards us.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Most streams a client may have open towards the relay at once. Agents get none (only the
/// relay opens streams on their connections); an agent allows the relay its tunnel cap.
pub const MAX_STREAMS: u32 = 256;

fn transport_config(max_streams: u32) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        .receive_window(VarInt::from_u32(CONNECTION_WINDOW))
        .send_window(u64::from(CONNECTION_WINDOW))
        .max_concurrent_bidi_streams(VarInt::from_u32(max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0));
    Arc::new(t)
}

/// The relay's UDP endpoint on `addr`, with the relay's TLS configuration. `reset_key` signs
/// stateless resets: it must outlive a restart, so that a relay that was killed and came back
/// can tell agents and clients at once that their old connections are gone (with a fresh key
/// its resets are ignored, and they wait out the 45 s idle timeout).
///
/// # Errors
/// The configuration is not usable for QUIC, or the port cannot be bound.
pub fn server_endpoint(
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    reset_key: &[u8; 32],
) -> io::Result<Endpoint> {
    let crypto = QuicServerConfig::try_from(tls).map_err(io::Error::other)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    // No stream credit until the role is known: an agent may never open streams (credit
    // granted in the handshake could not be taken back), a client gets it in [`accept`].
    config.transport_config(transport_config(0));
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        // `[::]` serves IPv6 only, as the TCP listener does.
        socket.set_only_v6(true)?;
    }
    // Many agents reconnect at once after a restart (an office behind one address): with the
    // default 208 KiB a burst of QUIC Initials overflows the socket, and each lost one costs
    // its agent a retransmission timeout of a second or more. The kernel caps the size at
    // net.core.rmem_max / wmem_max.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.bind(&addr.into())?;
    let runtime =
        quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime for QUIC"))?;
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    // The connection IDs must also be recognised after a restart: the endpoint drops packets
    // whose ID fails its generator's check without answering them at all.
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&ring::hmac::sign(&reset_key, b"connection ids").as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
    endpoint_config
        .min_reset_interval(MIN_RESET_INTERVAL)
        .cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
    Endpoint::new(endpoint_config, Some(config), socket.into(), runtime)
}

/// The relay's UDP socket buffers, each way (the kernel may grant less).
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// Why an incoming QUIC connection was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The handshake failed or the peer went away.
    #[error("QUIC handshake failed: {0}")]
    Handshake(#[from] ConnectionError),
    /// The handshake finished without a telework ALPN role.
    #[error("QUIC connection without a telework role")]
    NoRole,
    /// The exporter could not be computed (an unfinished handshake).
    #[error("no channel binding")]
    NoBinding,
}

/// Completes the relay's side of an incoming connection: the handshake, the role from ALPN,
/// and the channel binding. The caller bounds it with its handshake deadline.
///
/// # Errors
/// [`AcceptError`].
pub async fn accept(incoming: quinn::Incoming) -> Result<(Role, Connection), AcceptError> {
    let conn = incoming.accept()?.await?;
    let role = conn
        .handshake_data()
        .and_then(|d| d.downcast::<HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .and_then(|p| Role::from_alpn(&p))
        .ok_or(AcceptError::NoRole)?;
    if role == Role::Client {
        // Only clients open streams towards the relay.
        conn.set_max_concurrent_bi_streams(VarInt::from_u32(MAX_STREAMS));
    }
    let binding = binding(&conn).ok_or(AcceptError::NoBinding)?;
    Ok((role, Connection::quic(conn, binding)))
}

fn binding(conn: &quinn::Connection) -> Option<ChannelBinding> {
    let mut out = ChannelBinding::default();
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .ok()?;
    Some(out)
}

/// Dials the relay at `peer` over QUIC in `role` (`tls` offers the role's ALPN), from a UDP
/// socket of its own. `max_streams` is how many streams the relay may open towards us.
///
/// # Errors
/// [`ConnectError`], classified as for TCP so the person reads the same sentences.
pub async fn dial(
    addr: &RelayAddr,
    peer: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    max_streams: u32,
) -> Result<Connection, ConnectError> {
    let local: SocketAddr = if peer.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let unreachable = |error: io::Error| ConnectError::Unreachable {
        addr: addr.clone(),
        error,
    };
    let endpoint = Endpoint::client(local).map_err(unreachable)?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| ConnectError::Tls {
        addr: addr.clone(),
        error: io::Error::other(e),
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport_config(max_streams));
    let connecting = endpoint
        .connect_with(config, peer, addr.host())
        .map_err(|e| unreachable(io::Error::other(e)))?;
    let conn = connecting.await.map_err(|e| classify(addr, e))?;
    let binding = binding(&conn).ok_or_else(|| ConnectError::Tls {
        addr: addr.clone(),
        error: io::Error::other("no channel binding"),
    })?;
    Ok(Connection::quic(conn, binding))
}

/// TLS alerts (RFC 8446 §6) that mean "the certificate is not trusted": the ones a peer
/// sends, and `access_denied`, which rustls raises locally when our own verifier refuses.
const CERTIFICATE_ALERTS: [u8; 7] = [42, 43, 44, 45, 46, 48, 49];
/// The `no_application_protocol` alert: the relay does not speak our version.
const NO_APPLICATION_PROTOCOL: u8 = 120;

fn classify(addr: &RelayAddr, e: ConnectionError) -> ConnectError {
    let addr = addr.clone();
    let alert = match &e {
        ConnectionError::TimedOut => return ConnectError::Timeout { addr },
        ConnectionError::TransportError(t) => tls_alert(t.code),
        ConnectionError::ConnectionClosed(c) => tls_alert(c.error_code),
        _ => None,
    };
    match alert {
        Some(NO_APPLICATION_PROTOCOL) => ConnectError::VersionMismatch { addr },
        Some(a) if CERTIFICATE_ALERTS.contains(&a) => ConnectError::CertificateRejected {
            addr,
            detail: e.to_string(),
        },
        _ => ConnectError::Tls {
            addr,
            error: io::Error::other(e),
        },
    }
}

/// The TLS alert a QUIC crypto error carries (codes 0x100 to 0x1ff, RFC 9001 §4.8).
fn tls_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let code = u64::from(code);
    (0x100..0x200).contains(&code).then(|| (code - 0x100) as u8)
}
