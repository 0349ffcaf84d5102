//! Why the tunnel through a proxy did not open, each with a sentence that names the proxy
//! and says what to do.

use std::io;

use telework_protocol::http_connect::{RequestError, ResponseError};

use crate::connect::RelayAddr;

use super::tunnel::PROXY_TIMEOUT;

/// A failure between us and the proxy, or the proxy's refusal to reach the relay.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The proxy's host name did not resolve.
    #[error("cannot find the proxy host {proxy}: {error}")]
    Resolve {
        /// The proxy, `host:port`.
        proxy: String,
        /// The resolver's error.
        error: io::Error,
    },
    /// TCP to the proxy failed (refused, unreachable).
    #[error("cannot reach the proxy at {proxy}: {error}")]
    Unreachable {
        /// The proxy.
        proxy: String,
        /// The socket error.
        error: io::Error,
    },
    /// The proxy did not answer CONNECT in time.
    #[error("the proxy at {proxy} did not answer within {} seconds", PROXY_TIMEOUT.as_secs())]
    Timeout {
        /// The proxy.
        proxy: String,
    },
    /// 407 (or 401) and no credentials were given.
    #[error(
        "the proxy at {proxy} wants a user name and password: give them as \
         --proxy http://USER:PASSWORD@{proxy}"
    )]
    CredentialsNeeded {
        /// The proxy.
        proxy: String,
    },
    /// 407 (or 401) although credentials were given.
    #[error(
        "the proxy at {proxy} wants a user name and password and refused the ones given; check \
         them (in --proxy, the settings file or HTTPS_PROXY)"
    )]
    CredentialsRefused {
        /// The proxy.
        proxy: String,
    },
    /// 407 with only sign-in schemes telework cannot do (Negotiate, NTLM).
    #[error(
        "the proxy at {proxy} wants a sign-in telework cannot do ({schemes}); ask the network \
         administrators for a proxy that takes a user name and password (Basic)"
    )]
    UnsupportedAuth {
        /// The proxy.
        proxy: String,
        /// The schemes it offered.
        schemes: String,
    },
    /// 403: the proxy will not connect to the relay.
    #[error(
        "the proxy at {proxy} refuses connections to {relay}; ask the network administrators \
         to allow it"
    )]
    Forbidden {
        /// The proxy.
        proxy: String,
        /// The relay.
        relay: RelayAddr,
    },
    /// Any other non-2xx answer.
    #[error("the proxy at {proxy} could not connect to {relay}: it answered {status}{reason}")]
    Status {
        /// The proxy.
        proxy: String,
        /// The relay.
        relay: RelayAddr,
        /// The status code.
        status: u16,
        /// The reason phrase with a leading space, or empty.
        reason: String,
    },
    /// Bytes that are not an HTTP/1 answer.
    #[error("the proxy at {proxy} did not answer as an HTTP proxy: {error}")]
    BadAnswer {
        /// The proxy.
        proxy: String,
        /// What was wrong.
        error: ResponseError,
    },
    /// The proxy closed before the end of its answer.
    #[error("the proxy at {proxy} closed the connection without answering")]
    Closed {
        /// The proxy.
        proxy: String,
    },
    /// Reading from or writing to the proxy failed.
    #[error("the connection to the proxy at {proxy} failed: {error}")]
    Io {
        /// The proxy.
        proxy: String,
        /// The socket error.
        error: io::Error,
    },
    /// The request could not be made.
    #[error("cannot ask the proxy at {proxy} for {relay}: {error}")]
    Request {
        /// The proxy.
        proxy: String,
        /// The relay.
        relay: RelayAddr,
        /// What was wrong.
        error: RequestError,
    },
}
