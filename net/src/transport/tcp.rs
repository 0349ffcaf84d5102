//! The TLS/TCP transport: TLS 1.3 over TCP, then HTTP/2 streams inside it ([`super::h2`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use telework_protocol::proof::{EXPORTER_LABEL, EXPORTER_LEN};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{h2, ChannelBinding, Connection, Role};
use crate::connect::{client_exporter, connect, connect_via, ConnectError, RelayAddr};
use crate::proxy::ProxyUrl;

/// Dials the relay over TCP, completes TLS with `tls` (which offers `role`'s ALPN) and starts
/// HTTP/2 in the role's direction: a client opens streams, an agent accepts them (at most
/// `max_incoming_streams` open at once). With `proxy`, TCP goes through its `CONNECT` tunnel.
///
/// # Errors
/// [`ConnectError`].
pub async fn dial(
    addr: &RelayAddr,
    tls: Arc<rustls::ClientConfig>,
    role: Role,
    max_incoming_streams: u32,
    proxy: Option<&ProxyUrl>,
) -> Result<Connection, ConnectError> {
    let stream = match proxy {
        Some(proxy) => connect_via(proxy, addr, tls).await?,
        None => connect(addr, tls).await?,
    };
    let tls_err = |error: io::Error| ConnectError::Tls {
        addr: addr.clone(),
        error,
    };
    let binding = client_exporter(&stream).map_err(|e| tls_err(io::Error::other(e)))?;
    let peer = stream.get_ref().0.get_ref().peer_addr().map_err(tls_err)?;
    let local = stream
        .get_ref()
        .0
        .get_ref()
        .local_addr()
        .ok()
        .map(|a| a.ip());
    let mux = match role {
        Role::Client => h2::opener(stream).await,
        Role::Agent => h2::acceptor_with_max_streams(stream, max_incoming_streams).await,
    }
    .map_err(tls_err)?;
    Ok(Connection::tcp(mux, binding, peer, local))
}

/// Completes the relay's side of an accepted TCP connection: TLS, the role from ALPN, the
/// channel binding, and HTTP/2 in the role's direction (the relay opens streams to agents and
/// accepts them from clients). The caller bounds it with its handshake deadline.
///
/// # Errors
/// The TLS or HTTP/2 handshake failed, or the peer named no telework role.
pub async fn accept(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> io::Result<(Role, Connection)> {
    let tls = acceptor.accept(tcp).await?;
    let (_, session) = tls.get_ref();
    let role = session
        .alpn_protocol()
        .and_then(Role::from_alpn)
        .ok_or_else(|| io::Error::other("no telework ALPN role"))?;
    let mut binding: ChannelBinding = [0; EXPORTER_LEN];
    session
        .export_keying_material(&mut binding, EXPORTER_LABEL, None)
        .map_err(io::Error::other)?;
    let mux = match role {
        Role::Agent => h2::opener(tls).await?,
        Role::Client => h2::acceptor(tls).await?,
    };
    Ok((role, Connection::tcp(mux, binding, peer, None)))
}
