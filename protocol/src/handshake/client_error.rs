//! How a client ends a handshake that did not succeed, and which refusals it believes.
//!
//! A relay can write plaintext frames, so a refusal is believed only as far as its path
//! allows: a plaintext one only for the kinds an agent sends before any proof; one with the
//! office PC's identity proof when the client pinned that PC; one inside the end-to-end
//! channel always. Only a proven wrong password may make the client ask again.

use super::wire::WireError;
use crate::e2e::identity::{IdentityKey, Step, Transcript};
use crate::e2e::messages::{EndReason, Refusal};
use crate::e2e::stretch::StretchParamsError;
use crate::proof::key_fingerprint;

/// Why a client's handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The office PC refused, and the client believes it said so.
    #[error("{0}")]
    Refused(Refusal),
    /// A wrong password that the office PC did not prove (a first connection, or an answer
    /// that did not come): reported, never asked again.
    #[error("the password was not accepted (unconfirmed)")]
    WrongPasswordUnconfirmed,
    /// Something failed a proof or came out of order: the tunnel may be tampered with.
    #[error("the office PC could not prove the session")]
    BadProof,
    /// The office PC could not prove the pinned identity key.
    #[error("the office PC's identity key changed")]
    AgentKeyChanged {
        /// The pinned key.
        pinned: Vec<u8>,
    },
    /// The agent named password-stretching parameters a client does not accept.
    #[error("cannot log in: {0}")]
    Stretch(StretchParamsError),
    /// The office PC did not answer in time.
    #[error("the office PC did not answer in time")]
    Timeout,
    /// The desktop service refused a resumed tunnel.
    #[error("the office PC's desktop service refused the connection")]
    TargetRefused,
    /// The office PC ended the session.
    #[error("the session ended: {0}")]
    Ended(EndReason),
    /// The bytes from the office PC were not readable (tampered records, a flood).
    #[error(transparent)]
    Wire(#[from] WireError),
}

/// A refusal that arrived in plaintext, before the end-to-end channel: only the kinds the
/// agent sends at that stage are believed; anything else was forged on the way.
pub fn plaintext_refusal(why: Refusal) -> HandshakeError {
    if matches!(why, Refusal::WrongPassword { .. }) {
        return HandshakeError::WrongPasswordUnconfirmed;
    }
    if why.allowed_before_authentication() {
        HandshakeError::Refused(why)
    } else {
        HandshakeError::BadProof
    }
}

/// A refusal of a login after the hello. With the office PC's identity checked, its proof
/// says the PC itself sent it (a forged one is tampering); without (the first connection),
/// it is believed only as far as a plaintext refusal is.
pub fn login_refusal(
    why: Refusal,
    proof: &[u8; 32],
    identity: Option<&IdentityKey>,
    transcript: &Transcript,
) -> HandshakeError {
    match identity {
        Some(identity) => {
            match identity.verify(Step::Refusal, transcript, &why.proof_bytes(), proof) {
                Ok(()) => HandshakeError::Refused(why),
                Err(_) => HandshakeError::BadProof,
            }
        }
        None => plaintext_refusal(why),
    }
}

/// A refusal from inside the end-to-end channel. The device fingerprint shown to the
/// employee (to read out to IT staff) is computed from our own key, never taken from the
/// message.
pub fn authenticated_refusal(why: Refusal, device_key: &[u8]) -> HandshakeError {
    match why {
        Refusal::DeviceNotApproved { .. } => HandshakeError::Refused(Refusal::DeviceNotApproved {
            device: key_fingerprint(device_key),
        }),
        other => HandshakeError::Refused(other),
    }
}
