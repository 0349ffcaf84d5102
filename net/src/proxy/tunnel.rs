//! Opening a tunnel to the relay through an HTTP proxy: TCP to the proxy, `CONNECT`, and a
//! bounded read of its answer. TLS to the relay then runs inside the tunnel, with the same
//! certificate checks as a direct connection, so the proxy sees only ciphertext.

use std::time::Duration;

use telework_protocol::http_connect::{connect_request, ConnectResponse, ResponseParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::ProxyError;
use super::url::ProxyUrl;
use crate::connect::RelayAddr;

/// Deadline for reaching the proxy and reading its answer to `CONNECT`.
pub const PROXY_TIMEOUT: Duration = crate::HANDSHAKE_TIMEOUT;

/// Bytes asked of the socket per read of the proxy's answer.
const READ_CHUNK: usize = 2048;

/// Connects to `proxy`, asks it for a tunnel to `relay`, and returns the tunnel with any
/// bytes the proxy sent after its answer (they belong to the relay's side of the tunnel).
///
/// # Errors
/// [`ProxyError`], naming the proxy: it cannot be reached, it refused (403, 407, …), it did
/// not answer as an HTTP proxy, or it took longer than [`PROXY_TIMEOUT`].
pub async fn open(proxy: &ProxyUrl, relay: &RelayAddr) -> Result<(TcpStream, Vec<u8>), ProxyError> {
    tokio::time::timeout(PROXY_TIMEOUT, open_inner(proxy, relay))
        .await
        .unwrap_or_else(|_| {
            Err(ProxyError::Timeout {
                proxy: proxy.to_string(),
            })
        })
}

async fn open_inner(
    proxy: &ProxyUrl,
    relay: &RelayAddr,
) -> Result<(TcpStream, Vec<u8>), ProxyError> {
    let name = proxy.to_string();
    let request = connect_request(&relay.to_string(), proxy.credentials()).map_err(|error| {
        ProxyError::Request {
            proxy: name.clone(),
            relay: relay.clone(),
            error,
        }
    })?;
    let mut tcp = dial(proxy).await?;
    let io_err = |error| ProxyError::Io {
        proxy: name.clone(),
        error,
    };
    tcp.write_all(&request).await.map_err(io_err)?;
    let mut parser = ResponseParser::new();
    let mut chunk = [0u8; READ_CHUNK];
    // Each pass reads at least one byte and the parser refuses a header over its cap, so
    // this ends within that many reads (and the deadline above bounds the time).
    let answer = loop {
        let n = tcp.read(&mut chunk).await.map_err(io_err)?;
        if n == 0 {
            return Err(ProxyError::Closed { proxy: name });
        }
        match parser.feed(&chunk[..n]) {
            Ok(Some(answer)) => break answer,
            Ok(None) => {}
            Err(error) => return Err(ProxyError::BadAnswer { proxy: name, error }),
        }
    };
    check(answer, proxy, relay).map(|rest| (tcp, rest))
}

async fn dial(proxy: &ProxyUrl) -> Result<TcpStream, ProxyError> {
    let name = proxy.to_string();
    let addrs = tokio::net::lookup_host((proxy.host(), proxy.port()))
        .await
        .map_err(|error| ProxyError::Resolve {
            proxy: name.clone(),
            error,
        })?;
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                crate::enable_keepalive(&tcp);
                return Ok(tcp);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(error) => ProxyError::Unreachable { proxy: name, error },
        None => ProxyError::Resolve {
            proxy: name,
            error: std::io::Error::new(std::io::ErrorKind::NotFound, "no addresses"),
        },
    })
}

/// The bytes after the answer when the tunnel is open, else the proxy's refusal.
fn check(
    answer: ConnectResponse,
    proxy: &ProxyUrl,
    relay: &RelayAddr,
) -> Result<Vec<u8>, ProxyError> {
    let name = proxy.to_string();
    // 407 is the standard answer; some proxies (tinyproxy among them) answer wrong
    // credentials with 401, which from a proxy to CONNECT can only mean the same.
    match answer.status {
        200..=299 => Ok(answer.rest),
        401 | 407 if !answer.offers_basic() => Err(ProxyError::UnsupportedAuth {
            proxy: name,
            schemes: answer.auth_schemes.join(", "),
        }),
        401 | 407 if proxy.credentials().is_some() => {
            Err(ProxyError::CredentialsRefused { proxy: name })
        }
        401 | 407 => Err(ProxyError::CredentialsNeeded { proxy: name }),
        403 => Err(ProxyError::Forbidden {
            proxy: name,
            relay: relay.clone(),
        }),
        status => Err(ProxyError::Status {
            proxy: name,
            relay: relay.clone(),
            status,
            reason: if answer.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", answer.reason)
            },
        }),
    }
}
