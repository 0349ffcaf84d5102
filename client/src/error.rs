//! Everything that can stop a connection, each with the sentence an employee reads.

use telework_protocol::e2e::messages::{EndReason, Refusal};
use telework_protocol::net::connect::ConnectError;
use telework_protocol::net::framed::FrameError;
use telework_protocol::net::pump::TunnelError;
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
    /// The password did not open the office PC's answer, and the office PC did not say how many
    /// tries are left.
    #[error("wrong password (the office PC did not confirm how many tries are left)")]
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
    /// The end-to-end tunnel failed its integrity checks or broke.
    #[error("the connection to the office PC broke: {0}")]
    Tunnel(#[from] TunnelError),
    /// Something on the way sent bytes that break the protocol.
    #[error("the connection to the office PC broke: {0}")]
    Frame(#[from] FrameError),
    /// The office PC's identity proof did not verify: someone in the middle is tampering.
    #[error("the office PC could not prove the session; the connection may be tampered with")]
    BadProof,
    /// The office PC asked for password stretching outside what this client accepts.
    #[error("cannot log in: {0} (update telework on this computer and the office PC)")]
    Stretch(telework_protocol::e2e::stretch::StretchParamsError),
    /// The office PC's identity key is not the one pinned at the first connection.
    #[error(
        "WARNING: the office PC {id} presented a different identity key ({presented}, pinned {pinned}). \
         Someone may be impersonating it, or its telework agent was reinstalled. Nothing was sent. \
         If IT staff confirm a reinstall, run 'telework forget {id}' and connect again."
    )]
    AgentKeyChanged {
        /// The computer ID.
        id: telework_protocol::ComputerId,
        /// Fingerprint of the pinned key.
        pinned: String,
        /// Fingerprint of the presented key.
        presented: String,
    },
    /// The user's profile (device key, pins) could not be read or written.
    #[error("cannot use the telework profile: {0}")]
    Profile(std::io::Error),
    /// TLS could not be configured (for example an unreadable CA file).
    #[error(transparent)]
    Tls(#[from] telework_protocol::net::tls::TlsConfigError),
}

impl ClientError {
    /// Whether asking for the password again could help.
    pub fn is_wrong_password(&self) -> bool {
        matches!(
            self,
            Self::Refused(Refusal::WrongPassword { .. }) | Self::WrongPasswordUnconfirmed
        )
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
    }
}
