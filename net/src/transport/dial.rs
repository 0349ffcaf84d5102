//! Reaching the relay on the transport the settings allow, racing QUIC against TLS/TCP.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use super::{quic, tcp, Connection, Role, TransportChoice, TransportKind};
use crate::connect::{ConnectError, RelayAddr};
use crate::proxy::{tunnel::PROXY_TIMEOUT, ProxyConfigError, ProxyUrl};
use crate::tls::{RelayTrust, TlsConfigError};
use crate::HANDSHAKE_TIMEOUT;

/// How long QUIC has to itself before TLS/TCP joins the race.
pub const QUIC_HEAD_START: Duration = Duration::from_millis(200);

/// How often a program on TLS/TCP tries QUIC again, so that it moves back when UDP works.
pub const QUIC_REPROBE: Duration = Duration::from_secs(300);

/// Everything needed to dial the relay in one role.
#[derive(Clone)]
pub struct Dialer {
    addr: RelayAddr,
    role: Role,
    choice: TransportChoice,
    quic_tls: Arc<rustls::ClientConfig>,
    tcp_tls: Arc<rustls::ClientConfig>,
    max_incoming_streams: u32,
    quic_reprobe: Duration,
    /// The HTTP proxy TLS/TCP goes through, if any (then QUIC is never tried).
    proxy: Option<Arc<ProxyUrl>>,
}

/// A connection and how it was chosen.
pub struct Dialed {
    /// The connection.
    pub connection: Connection,
    /// Why QUIC was not used, when `auto` ended on TLS/TCP.
    pub quic_failed: Option<String>,
    /// The proxy the connection goes through (`host:port`), if any.
    pub proxy: Option<String>,
}

impl Dialed {
    /// How to name the transport to a person: `QUIC`, `TLS/TCP`, `TLS/TCP (UDP to the
    /// relay seems blocked)` or `TLS/TCP through the proxy proxy.example:3128`.
    pub fn describe(&self) -> String {
        if let Some(proxy) = &self.proxy {
            return format!("{} through the proxy {proxy}", self.connection.kind());
        }
        match (self.connection.kind(), &self.quic_failed) {
            (TransportKind::Tcp, Some(_)) => "TLS/TCP (UDP to the relay seems blocked)".into(),
            (kind, _) => kind.to_string(),
        }
    }
}

impl Dialer {
    /// A dialler for `role` at `addr`, trusting the relay as `trust` says.
    ///
    /// # Errors
    /// [`TlsConfigError`] if the trust anchors cannot be loaded.
    pub fn new(
        addr: RelayAddr,
        trust: &RelayTrust,
        role: Role,
        choice: TransportChoice,
    ) -> Result<Self, TlsConfigError> {
        Ok(Self {
            addr,
            role,
            choice,
            quic_tls: trust.client_config(role.alpn())?,
            tcp_tls: trust.client_config(role.alpn())?,
            max_incoming_streams: quic::MAX_STREAMS,
            quic_reprobe: QUIC_REPROBE,
            proxy: None,
        })
    }

    /// Goes through `proxy` (when `Some`): TLS/TCP only, so `auto` dials TLS/TCP at once and
    /// never re-probes QUIC.
    ///
    /// # Errors
    /// [`ProxyConfigError::QuicThroughProxy`] when only QUIC is allowed.
    pub fn with_proxy(mut self, proxy: Option<ProxyUrl>) -> Result<Self, ProxyConfigError> {
        if let Some(proxy) = &proxy {
            if self.choice == TransportChoice::Quic {
                return Err(ProxyConfigError::QuicThroughProxy(proxy.to_string()));
            }
            self.choice = TransportChoice::Tcp;
        }
        self.proxy = proxy.map(Arc::new);
        Ok(self)
    }

    /// The proxy TLS/TCP goes through, if any.
    pub fn proxy(&self) -> Option<&ProxyUrl> {
        self.proxy.as_deref()
    }

    /// How many streams the relay may open towards us at once (an agent's tunnel cap).
    #[must_use]
    pub fn with_max_incoming_streams(mut self, n: u32) -> Self {
        self.max_incoming_streams = n;
        self
    }

    /// How often to try QUIC again while on TLS/TCP with `auto` (tests shorten it).
    #[must_use]
    pub fn with_quic_reprobe(mut self, every: Duration) -> Self {
        self.quic_reprobe = every;
        self
    }

    /// See [`Dialer::with_quic_reprobe`].
    pub fn quic_reprobe(&self) -> Duration {
        self.quic_reprobe
    }

    /// The same dialler aimed at `addr`: another node of the relay's cluster, trusted as
    /// this one is (same pin or CA), through the same proxy.
    #[must_use]
    pub fn to(&self, addr: RelayAddr) -> Self {
        Self {
            addr,
            ..self.clone()
        }
    }

    /// The relay's address.
    pub fn addr(&self) -> &RelayAddr {
        &self.addr
    }

    /// The transports allowed (TLS/TCP only when going through a proxy).
    pub fn choice(&self) -> TransportChoice {
        self.choice
    }

    /// Dials with the configured choice. With `auto`, QUIC starts first and TLS/TCP joins
    /// after [`QUIC_HEAD_START`] (or at once if QUIC fails sooner); the first to finish wins
    /// and the other is dropped. Both are TLS 1.3 with the same certificate checks.
    ///
    /// # Errors
    /// [`ConnectError`]: with `auto`, the TLS/TCP error when both fail, unless QUIC reached a
    /// relay that refused our certificate check or version, which no fallback can fix.
    pub async fn dial(&self) -> Result<Dialed, ConnectError> {
        match self.choice {
            TransportChoice::Quic => self.dial_quic().await.map(|connection| Dialed {
                connection,
                quic_failed: None,
                proxy: None,
            }),
            TransportChoice::Tcp => self.dial_tcp().await.map(|connection| Dialed {
                connection,
                quic_failed: None,
                proxy: self.proxy.as_ref().map(|p| p.to_string()),
            }),
            TransportChoice::Auto => self.race().await,
        }
    }

    /// Dials QUIC only, within the handshake deadline.
    ///
    /// # Errors
    /// [`ConnectError`].
    pub async fn dial_quic(&self) -> Result<Connection, ConnectError> {
        let attempt = async {
            let peer = resolve(&self.addr).await?;
            quic::dial(
                &self.addr,
                peer,
                self.quic_tls.clone(),
                self.max_incoming_streams,
            )
            .await
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(ConnectError::Timeout {
                    addr: self.addr.clone(),
                })
            })
    }

    async fn dial_tcp(&self) -> Result<Connection, ConnectError> {
        let attempt = tcp::dial(
            &self.addr,
            self.tcp_tls.clone(),
            self.role,
            self.max_incoming_streams,
            self.proxy.as_deref(),
        );
        // Through a proxy, reaching it has its own deadline before the relay's.
        let deadline = match self.proxy {
            Some(_) => HANDSHAKE_TIMEOUT + PROXY_TIMEOUT,
            None => HANDSHAKE_TIMEOUT,
        };
        tokio::time::timeout(deadline, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(ConnectError::Timeout {
                    addr: self.addr.clone(),
                })
            })
    }

    async fn race(&self) -> Result<Dialed, ConnectError> {
        let quic = self.dial_quic();
        let head_start = tokio::time::sleep(QUIC_HEAD_START);
        tokio::pin!(quic, head_start);
        // QUIC alone for the head start.
        let quic_error = tokio::select! {
            r = &mut quic => match r {
                Ok(connection) => return Ok(Dialed { connection, quic_failed: None, proxy: None }),
                Err(e) if final_error(&e) => return Err(e),
                Err(e) => Some(e),
            },
            () = &mut head_start => None,
        };
        let tcp = self.dial_tcp();
        tokio::pin!(tcp);
        let quic_error = match quic_error {
            Some(e) => e,
            None => tokio::select! {
                r = &mut quic => match r {
                    Ok(connection) => return Ok(Dialed { connection, quic_failed: None, proxy: None }),
                    Err(e) if final_error(&e) => return Err(e),
                    Err(e) => e,
                },
                r = &mut tcp => match r {
                    Ok(connection) => return Ok(Dialed {
                        connection,
                        quic_failed: Some("QUIC had not answered".into()),
                        proxy: None,
                    }),
                    // TCP failed first: QUIC may still make it.
                    Err(tcp_error) => {
                        return match quic.await {
                            Ok(connection) => Ok(Dialed { connection, quic_failed: None, proxy: None }),
                            Err(_) => Err(tcp_error),
                        }
                    }
                },
            },
        };
        let connection = tcp.await?;
        Ok(Dialed {
            connection,
            quic_failed: Some(quic_error.to_string()),
            proxy: None,
        })
    }
}

/// Errors that mean the relay was reached and refused us: trying the other transport would
/// only hide them.
fn final_error(e: &ConnectError) -> bool {
    matches!(
        e,
        ConnectError::CertificateRejected { .. } | ConnectError::VersionMismatch { .. }
    )
}

async fn resolve(addr: &RelayAddr) -> Result<std::net::SocketAddr, ConnectError> {
    let mut found = tokio::net::lookup_host((addr.host(), addr.port()))
        .await
        .map_err(|error| ConnectError::Resolve {
            addr: addr.clone(),
            error,
        })?;
    found.next().ok_or_else(|| ConnectError::Resolve {
        addr: addr.clone(),
        error: io::Error::new(io::ErrorKind::NotFound, "no addresses"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use telework_protocol::CertFingerprint;

    fn dialer(choice: TransportChoice) -> Dialer {
        let trust = RelayTrust::Fingerprint(CertFingerprint([7; 32]));
        Dialer::new(
            "relay.example:443".parse().unwrap(),
            &trust,
            Role::Agent,
            choice,
        )
        .unwrap()
    }

    #[test]
    fn a_proxy_means_tls_tcp_only() {
        let proxy: ProxyUrl = "http://proxy.example:3128".parse().unwrap();
        // `auto` through a proxy dials TLS/TCP at once and never re-probes QUIC (the
        // re-probe loops run only while the choice is `auto`).
        let auto = dialer(TransportChoice::Auto)
            .with_proxy(Some(proxy.clone()))
            .unwrap();
        assert_eq!(auto.choice(), TransportChoice::Tcp);
        assert_eq!(auto.proxy(), Some(&proxy));
        assert_eq!(
            dialer(TransportChoice::Quic)
                .with_proxy(Some(proxy))
                .err()
                .unwrap()
                .to_string(),
            "--transport quic cannot go through the proxy at proxy.example:3128, which carries \
             TCP only: use --transport auto or tcp, or --proxy none"
        );
        let direct = dialer(TransportChoice::Auto).with_proxy(None).unwrap();
        assert_eq!(direct.choice(), TransportChoice::Auto);
    }
}
