//! Everything that can stop a connection, each with the sentence an employee reads.

use telework_net::connect::ConnectError;
use telework_net::framed::FrameError;
use telework_net::pump::TunnelError;
use telework_protocol::e2e::messages::{EndReason, Refusal};
use telework_protocol::ErrorCode;

/// Why a connection to the office PC failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The relay could not be reached or is not trusted.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The relay refused (office PC offline, unknown computer ID, …).
    #[error("{0}")]
    Relay(ErrorCode),
    /// The office PC refused the login (wrong password, locked out, …).
    #[error("{0}")]
    Refused(Refusal),
    /// The login failed and the office PC could not prove it said so: on a first connection
    /// (nothing pinned yet) a wrong password cannot be told apart from a relay pretending to
    /// be the PC, so the client does not ask again.
    #[error(
        "wrong password, or the relay is not talking to the real office PC (this is the first \
         connection to it, so telework cannot tell which); run the command again to retry"
    )]
    WrongPasswordUnconfirmed,
    /// The office PC did not answer a step of the login in time.
    #[error("the office PC did not answer in time")]
    Timeout,
    /// The office PC's desktop service did not accept the connection.
    #[error("the office PC's remote desktop service refused the connection (is Remote Desktop enabled on it?)")]
    TargetRefused,
    /// The office PC ended the session.
    #[error("the session ended: {0}")]
    Ended(EndReason),
    /// The end-to-end tunnel failed its integrity checks or broke. The details go to the
    /// log (`RUST_LOG=debug`), not to the employee.
    #[error("{}", tunnel_sentence(.0))]
    Tunnel(TunnelError),
    /// Something on the way sent bytes that break the protocol.
    #[error("the connection to the office PC broke")]
    Frame(FrameError),
    /// The session's connection broke and could not be made again in time.
    #[error(
        "lost the connection to the relay and could not get it back within {} s; run the \
         command again", crate::session::REATTACH_WINDOW.as_secs()
    )]
    Lost,
    /// The office PC's identity proof did not verify: someone in the middle is tampering.
    #[error("the office PC could not prove the session; the connection may be tampered with")]
    BadProof,
    /// The office PC asked for password stretching outside what this client accepts.
    #[error("cannot log in: {0} (update telework on this computer and the office PC)")]
    Stretch(telework_protocol::e2e::stretch::StretchParamsError),
    /// The office PC could not prove the identity key pinned at the first connection.
    #[error(
        "WARNING: the office PC {id} could not prove it holds the identity key pinned at your first \
         connection ({pinned}). Someone may be impersonating it, or IT staff reinstalled its telework \
         agent or rotated its key. Your password was not used. If IT staff confirm the change, run \
         'telework forget {id}' and connect again."
    )]
    AgentKeyChanged {
        /// The computer ID.
        id: telework_protocol::ComputerId,
        /// Fingerprint of the pinned key.
        pinned: String,
    },
    /// The user's profile (device key, pins) could not be read or written.
    #[error("cannot use the telework profile: {0}")]
    Profile(std::io::Error),
    /// TLS could not be configured (for example an unreadable CA file).
    #[error(transparent)]
    Tls(#[from] telework_net::tls::TlsConfigError),
    /// The local address for the RDP client cannot be listened on.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// The proxy setting cannot be used (for example with `--transport quic`).
    #[error(transparent)]
    Proxy(#[from] telework_net::proxy::ProxyConfigError),
}

// Written out instead of `#[from]`, which would make the cause the error's `source`, and
// `{:#}` would print its internal chain to the employee.
impl From<TunnelError> for ClientError {
    fn from(e: TunnelError) -> Self {
        Self::Tunnel(e)
    }
}

impl From<FrameError> for ClientError {
    fn from(e: FrameError) -> Self {
        Self::Frame(e)
    }
}

fn tunnel_sentence(e: &TunnelError) -> &'static str {
    match e {
        TunnelError::Record(_) => {
            "the connection to the office PC was altered on the way, so it was closed (nothing \
             altered reached the desktop)"
        }
        TunnelError::Ended(_) => "the office PC ended the session",
        _ => "the connection to the office PC broke",
    }
}

impl ClientError {
    /// Whether asking for the password again could help: only after a wrong password the
    /// office PC itself confirmed (a relay must not get extra guesses by faking failures).
    pub fn is_wrong_password(&self) -> bool {
        matches!(self, Self::Refused(Refusal::WrongPassword { .. }))
    }

    /// Whether the relay said the office PC is offline (registered, agent not connected):
    /// then waking it may help (see [`crate::wake`]).
    pub fn is_offline(&self) -> bool {
        matches!(self, Self::Relay(ErrorCode::Offline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_are_plain() {
        assert_eq!(
            ClientError::Refused(Refusal::WrongPassword { tries_left: 4 }).to_string(),
            "wrong password, 4 tries left before the office PC locks out"
        );
        assert!(ClientError::Relay(ErrorCode::Offline)
            .to_string()
            .contains("office PC is offline"));
        assert!(ClientError::Refused(Refusal::LockedOut {
            retry_after_secs: 300
        })
        .to_string()
        .contains("5 minutes"));
        let broke = ClientError::Tunnel(TunnelError::Io(std::io::Error::other(
            "peer closed connection without sending TLS close_notify: https://docs.rs/rustls",
        )));
        assert_eq!(
            format!("{:#}", anyhow::Error::new(broke)),
            "the connection to the office PC broke"
        );
    }
}
