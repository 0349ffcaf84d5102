//! Handshake messages between client and agent, sent as frames before the record layer
//! starts, and the notices the agent sends inside records afterwards.

use serde::{Deserialize, Serialize};

use crate::ids::SessionId;

/// What a client sends first, and then to finish, in a tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientHandshake {
    /// Start a password login. The agent must answer with a proof of its identity key over
    /// these values before the client sends anything that depends on the password
    /// ([`crate::e2e::identity`]).
    Hello {
        /// Client's fresh random nonce.
        nonce: [u8; 32],
        /// The client's ephemeral ristretto255 key for this login's identity proof.
        identity_challenge: [u8; 32],
    },
    /// The password step: an OPAQUE `CredentialRequest`, and this device's key with its
    /// proof over the login so far, so the agent knows which failure budget to charge.
    Login {
        /// Serialized OPAQUE credential request.
        request: Vec<u8>,
        /// The device and its proof.
        device: DeviceProof,
    },
    /// Finish a login: an OPAQUE `CredentialFinalization`.
    LoginFinish {
        /// Serialized OPAQUE credential finalization.
        finalization: Vec<u8>,
    },
    /// The login cannot be finished (the password did not open the agent's answer).
    LoginFailed,
    /// Open another tunnel in an authenticated session.
    Resume {
        /// The session, from [`AgentNotice::SessionReady`].
        session: SessionId,
        /// Client's fresh random nonce.
        nonce: [u8; 32],
    },
    /// Finish a resumption: the client's confirmation MAC.
    ResumeFinish {
        /// HMAC over the transcript with the client confirm key.
        mac: [u8; 32],
    },
    /// Make this tunnel the session's control tunnel again, after the connection that carried
    /// it broke (a relay restart, a network change). Proven like a [`Self::Resume`], under its
    /// own label.
    ReattachControl {
        /// The session, from [`AgentNotice::SessionReady`].
        session: SessionId,
        /// Client's fresh random nonce.
        nonce: [u8; 32],
    },
}

/// A client device's key and its signature over the login transcript
/// ([`crate::e2e::identity::device_login_message`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceProof {
    /// Ed25519 public key of the device.
    pub public_key: Vec<u8>,
    /// The signature.
    pub signature: Vec<u8>,
}

/// What an agent answers during the handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentHandshake {
    /// The answer to a login's hello: the agent's nonce and its identity proof.
    Hello {
        /// Agent's fresh random nonce.
        nonce: [u8; 32],
        /// MAC over the transcript with the identity key
        /// ([`crate::e2e::identity::Step::Hello`]).
        proof: [u8; 32],
    },
    /// The OPAQUE `CredentialResponse` to a login.
    LoginChallenge {
        /// Serialized OPAQUE credential response.
        response: Vec<u8>,
        /// The Argon2id parameters the agent's record was made with; the client checks them
        /// (a changed value only makes the login fail).
        stretch: crate::e2e::stretch::StretchParams,
        /// MAC over the transcript, this answer included, with the identity key
        /// ([`crate::e2e::identity::Step::Challenge`]).
        proof: [u8; 32],
    },
    /// The answer to a resumption: the agent's nonce and confirmation MAC.
    ResumeChallenge {
        /// Agent's fresh random nonce.
        nonce: [u8; 32],
        /// HMAC over the transcript with the agent confirm key.
        mac: [u8; 32],
    },
    /// The handshake is refused before any identity proof (a resumption, or a login the
    /// agent cannot start); the connection closes after this.
    Refused(Refusal),
    /// A login is refused, with a MAC over the transcript and the refusal from the identity
    /// key ([`crate::e2e::identity::Step::Refusal`]): a client that checked the identity
    /// knows the office PC itself said it.
    LoginRefused {
        /// Why.
        why: Refusal,
        /// The MAC.
        proof: [u8; 32],
    },
}

/// Why an agent refuses a handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// Wrong password; `tries_left` more before a lockout.
    WrongPassword {
        /// Failures left before the lockout starts.
        tries_left: u32,
    },
    /// Too many wrong passwords: try again after this many seconds.
    LockedOut {
        /// Seconds until the next attempt is allowed.
        retry_after_secs: u64,
    },
    /// No connection password has been set on the office PC.
    NoPassword,
    /// The session is unknown or over, or its resumption proof failed.
    SessionInvalid,
    /// The agent serves too many sessions already.
    Busy,
    /// The handshake broke the protocol.
    ProtocolViolation,
    /// The one-time code was wrong or stale; `tries_left` more before a lockout.
    WrongTotp {
        /// Failures left before the lockout starts.
        tries_left: u32,
    },
    /// The office PC asks for a one-time code and none was given.
    TotpMissing,
    /// This device is not approved on the office PC yet.
    DeviceNotApproved {
        /// The device's fingerprint, for IT staff to approve.
        device: String,
    },
    /// This device was revoked on the office PC.
    DeviceRevoked,
    /// The office PC's telework settings (policy, one-time-code secret, device list or
    /// password record) are damaged; it refuses rather than guess.
    Misconfigured,
}

impl Refusal {
    /// Whether the agent may send this refusal in plaintext, before the end-to-end channel
    /// exists, or unproven on a first connection. Anything else arriving that way was forged
    /// on the way (the relay can write plaintext frames), and the client must not show it. A
    /// wrong password is never among them: only a proven one may make the client ask again.
    pub fn allowed_before_authentication(&self) -> bool {
        matches!(
            self,
            Self::LockedOut { .. }
                | Self::DeviceRevoked
                | Self::NoPassword
                | Self::SessionInvalid
                | Self::Busy
                | Self::ProtocolViolation
                | Self::Misconfigured
        )
    }
}

impl Refusal {
    /// The bytes a [`AgentHandshake::LoginRefused`] proof covers.
    pub fn proof_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::WrongPassword { tries_left } => {
                write!(f, "wrong password, {tries_left} tries left before the office PC locks out")
            }
            Self::LockedOut { retry_after_secs } => write!(
                f,
                "too many failed logins: the office PC accepts a new try in {}",
                human_seconds(*retry_after_secs)
            ),
            Self::NoPassword => f.write_str(
                "no connection password is set on the office PC (IT staff: run 'telework-agent set-password')",
            ),
            Self::SessionInvalid => f.write_str("the session has ended on the office PC"),
            Self::Busy => f.write_str("other login attempts are in progress on the office PC; try again shortly"),
            Self::ProtocolViolation => f.write_str("the office PC rejected a malformed handshake"),
            Self::WrongTotp { tries_left } => write!(
                f,
                "wrong one-time code, {tries_left} tries left before the office PC locks out"
            ),
            Self::TotpMissing => f.write_str(
                "the office PC asks for a one-time code from your authenticator app (use --totp or answer the prompt)",
            ),
            Self::DeviceNotApproved { device } => write!(
                f,
                "this device ({device}) is waiting for approval: ask IT staff to run \
                 'telework-agent devices approve {device}' on the office PC, then connect again"
            ),
            Self::DeviceRevoked => f.write_str("this device's access to the office PC was revoked by IT staff"),
            Self::Misconfigured => f.write_str(
                "the office PC's telework settings are damaged, so it refuses logins (IT staff: see the agent's log)",
            ),
        }
    }
}

fn human_seconds(secs: u64) -> String {
    if secs >= 120 {
        format!("{} minutes", secs.div_ceil(60))
    } else {
        format!("{secs} seconds")
    }
}

/// Control messages an agent sends inside the record layer (authenticated, so the relay can
/// neither forge nor read them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentNotice {
    /// Login succeeded: further tunnels may resume `session`.
    SessionReady {
        /// The session id for resumption.
        session: SessionId,
    },
    /// The desktop service accepted our connection: data follows.
    TargetConnected,
    /// The desktop service on the office PC refused or did not answer.
    TargetRefused,
    /// The session is over, with the reason.
    SessionEnded(EndReason),
    /// Send the current one-time code ([`ClientNotice::Totp`]).
    TotpRequired,
    /// The login is refused after the password step (device or one-time code).
    Refused(Refusal),
    /// This tunnel is the session's control tunnel again ([`ClientHandshake::ReattachControl`]).
    ControlReattached,
}

/// Control messages a client sends inside the record layer, after the password step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientNotice {
    /// The device's name for IT staff (the home PC's host name), sent first after the
    /// password step; the device's key was proven before it.
    DeviceName {
        /// The name.
        name: String,
    },
    /// The one-time code from the employee's authenticator app.
    Totp {
        /// Six digits.
        code: String,
    },
    /// Keepalive on the session's first tunnel: the agent ends a session whose client has
    /// been silent too long (a laptop that slept or lost its network sends no close).
    Ping,
}

/// Why an agent ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// The agent is shutting down.
    AgentShutdown,
    /// The session reached its maximum length.
    MaxDuration,
    /// Nothing happened for too long.
    Idle,
    /// IT staff revoked this device on the office PC.
    DeviceRevoked,
    /// The connection password was changed on the office PC.
    PasswordChanged,
    /// IT staff tightened the office PC's access policy (one-time codes turned on or a new
    /// secret, or approved devices required and this one is not approved).
    PolicyChanged,
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::AgentShutdown => "the telework agent on the office PC stopped",
            Self::MaxDuration => "the session reached its maximum length",
            Self::Idle => "the session was idle for too long",
            Self::DeviceRevoked => "IT staff revoked this device's access to the office PC",
            Self::PasswordChanged => {
                "the connection password was changed on the office PC; connect again with the new one"
            }
            Self::PolicyChanged => {
                "IT staff changed the office PC's access policy; connect again to log in under it"
            }
        })
    }
}
