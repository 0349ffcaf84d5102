//! Dialling the relay: TCP, then TLS 1.3 with the role's ALPN, with errors a person can act on.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::proxy::{tunnel, ProxyError, ProxyUrl};
use super::read_ahead::ReadAhead;
use super::HANDSHAKE_TIMEOUT;
use telework_protocol::proof::{EXPORTER_LABEL, EXPORTER_LEN};

/// A TLS connection to the relay, as [`connect`] returns it.
pub type RelayConnection = TlsStream<ReadAhead>;

/// A relay address: `host:port`, where host is a name, an IPv4 address or `[IPv6]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddr {
    host: String,
    port: u16,
}

/// Text that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a relay address looks like host:port, for example relay.example.com:443 or 127.0.0.1:4433"
)]
pub struct BadRelayAddr;

impl FromStr for RelayAddr {
    type Err = BadRelayAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s.rsplit_once(':').ok_or(BadRelayAddr)?;
        let port: u16 = port.parse().map_err(|_| BadRelayAddr)?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() || port == 0 {
            return Err(BadRelayAddr);
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl RelayAddr {
    /// The host name or address, without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for RelayAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why the relay could not be reached. Each variant's sentence tells the person what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The host name did not resolve.
    #[error("cannot find the relay host {addr}: {error}")]
    Resolve {
        /// The relay.
        addr: RelayAddr,
        /// The resolver's error.
        error: io::Error,
    },
    /// TCP failed (refused, unreachable).
    #[error("cannot reach the relay at {addr}: {error}")]
    Unreachable {
        /// The relay.
        addr: RelayAddr,
        /// The socket error.
        error: io::Error,
    },
    /// The connection or TLS handshake took longer than the handshake deadline.
    #[error("the relay at {addr} did not answer within {} seconds", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout {
        /// The relay.
        addr: RelayAddr,
    },
    /// The relay's certificate is not the pinned one or is not trusted.
    #[error(
        "the relay at {addr} presented a certificate we do not trust ({detail}); if the relay was \
         reinstalled, get its new fingerprint from the operator (telework-relay fingerprint)"
    )]
    CertificateRejected {
        /// The relay.
        addr: RelayAddr,
        /// rustls's reason.
        detail: String,
    },
    /// The relay does not speak our protocol version (no common ALPN).
    #[error("the relay at {addr} does not speak this telework protocol version; update telework or the relay")]
    VersionMismatch {
        /// The relay.
        addr: RelayAddr,
    },
    /// The proxy could not be reached or would not open the tunnel.
    #[error(transparent)]
    Proxy(#[from] ProxyError),
    /// A relay node sent us to an address that is not `host:port`.
    #[error("the relay sent this program to {address:?}, which is not an address")]
    BadRedirect {
        /// What it sent.
        address: String,
    },
    /// Another TLS failure.
    #[error("TLS with the relay at {addr} failed: {error}")]
    Tls {
        /// The relay.
        addr: RelayAddr,
        /// The error.
        error: io::Error,
    },
}

/// Connects to the relay and completes TLS with `config` (which carries the role's ALPN).
///
/// # Errors
/// [`ConnectError`], classified so the caller can print a plain sentence.
pub async fn connect(
    addr: &RelayAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<ReadAhead>, ConnectError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, connect_inner(addr, config)).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { addr: addr.clone() }),
    }
}

async fn connect_inner(
    addr: &RelayAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<ReadAhead>, ConnectError> {
    let mut resolved = tokio::net::lookup_host((addr.host.as_str(), addr.port))
        .await
        .map_err(|error| ConnectError::Resolve {
            addr: addr.clone(),
            error,
        })?
        .peekable();
    if resolved.peek().is_none() {
        return Err(ConnectError::Resolve {
            addr: addr.clone(),
            error: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
        });
    }
    let mut last_err = None;
    let mut tcp = None;
    for sa in resolved {
        match TcpStream::connect(sa).await {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let tcp = tcp.ok_or_else(|| ConnectError::Unreachable {
        addr: addr.clone(),
        error: last_err.unwrap_or_else(|| io::Error::other("no address worked")),
    })?;
    let _ = tcp.set_nodelay(true);
    super::enable_keepalive(&tcp);
    tls_over(addr, ReadAhead::new(tcp), config).await
}

/// Connects to the relay through an HTTP proxy's `CONNECT` tunnel, then completes TLS with
/// the relay exactly as [`connect`] does (the proxy sees only ciphertext).
///
/// # Errors
/// [`ConnectError::Proxy`] naming the proxy when the tunnel does not open; otherwise as
/// [`connect`].
pub async fn connect_via(
    proxy: &ProxyUrl,
    addr: &RelayAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<ReadAhead>, ConnectError> {
    let (tcp, already_read) = tunnel::open(proxy, addr).await?;
    let tls = tls_over(addr, ReadAhead::with_buffered(tcp, already_read), config);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout { addr: addr.clone() }),
    }
}

async fn tls_over(
    addr: &RelayAddr,
    tcp: ReadAhead,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream<ReadAhead>, ConnectError> {
    let name = ServerName::try_from(addr.host.clone()).map_err(|e| ConnectError::Tls {
        addr: addr.clone(),
        error: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|error| classify_tls_error(addr, error))
}

fn classify_tls_error(addr: &RelayAddr, error: io::Error) -> ConnectError {
    let addr = addr.clone();
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(reason)) => ConnectError::CertificateRejected {
            addr,
            detail: format!("{reason:?}"),
        },
        Some(rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol))
        | Some(rustls::Error::NoApplicationProtocol) => ConnectError::VersionMismatch { addr },
        _ => ConnectError::Tls { addr, error },
    }
}

/// The exporter value of a client-side TLS stream.
///
/// # Errors
/// Only if the handshake is unfinished.
pub fn client_exporter(tls: &TlsStream<ReadAhead>) -> Result<[u8; EXPORTER_LEN], rustls::Error> {
    let mut out = [0u8; EXPORTER_LEN];
    tls.get_ref()
        .1
        .export_keying_material(&mut out, EXPORTER_LABEL, None)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses_parse() {
        let a: RelayAddr = "relay.example.com:443".parse().unwrap();
        assert_eq!(a.to_string(), "relay.example.com:443");
        let v6: RelayAddr = "[::1]:4433".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:4433");
        assert!("nohost".parse::<RelayAddr>().is_err());
        assert!(":443".parse::<RelayAddr>().is_err());
        assert!("h:0".parse::<RelayAddr>().is_err());
        assert!("h:99999".parse::<RelayAddr>().is_err());
    }
}
