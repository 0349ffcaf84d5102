//! The end-to-end handshakes as sans-IO state machines: the password login (identity proof,
//! OPAQUE, device proof, one-time code, device admission) and resumption, on both sides.
//!
//! The machines do no IO and read no clock. A driver (the agent's and the client's
//! `login_driver`) feeds them the peer's bytes as they arrive, in any fragments
//! (`receive`), writes what they queue (`take_output`), and handles their events: anything
//! that touches disk, the session table, the terminal or the desktop service is an event the
//! machine emits and then waits on, with a method to feed the result back. Randomness is passed
//! in, and time is an input: `now` is the time since the Unix epoch (as the driver's monotonic
//! clock counts it), and `deadline()` says until when the machine waits for the peer; at that
//! time the driver calls `handle_timeout(now)`.
//!
//! The driver writes every queued byte before it handles the events queued with them: the
//! agent gives back a login attempt only after the client's answer went out.
//!
//! - [`agent`]: [`AgentMachine`], the office PC's side of both handshakes
//!   ([`agent_login`] holds its login steps).
//! - [`client_error`]: [`HandshakeError`] and which refusals a client believes.
//! - [`client_login`]: [`ClientLoginMachine`], the employee's password login.
//! - [`client_resume`]: [`ClientResumeMachine`], a further tunnel of a session.
//! - [`wire`]: the bounded buffers and the switch from frames to records.

pub mod agent;
pub mod agent_login;
pub mod client_error;
pub mod client_login;
pub mod client_resume;
pub mod wire;

use std::time::Duration;

pub use agent::{AgentEvent, AgentMachine, AgentOutcome, SessionFacts};
pub use client_error::HandshakeError;
pub use client_login::{
    ClientLoginConfig, ClientLoginEvent, ClientLoginMachine, LoggedIn, PasswordWork,
    PasswordWorkDone,
};
pub use client_resume::ClientResumeMachine;

/// How long a peer may take over each step of a handshake. Generous because the client's side
/// of a login includes Argon2id.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an employee may take to type the one-time code (the agent's wait).
pub const TOTP_TIMEOUT: Duration = Duration::from_secs(120);

/// What a counted login attempt tells the client if it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfFailed {
    /// This many tries are left before a lockout.
    TriesLeft(u32),
    /// This failure starts a lockout this long.
    LockedOut(Duration),
}

/// Where a device stands on the office PC's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceStanding {
    /// Not on the list (never logged in).
    Unknown,
    /// Logged in once; waits for IT staff's approval.
    Pending,
    /// May connect.
    Approved,
    /// May not connect.
    Revoked,
}

#[cfg(test)]
mod test_util;
#[cfg(test)]
mod tests_login;
#[cfg(test)]
mod tests_refusals;
#[cfg(test)]
mod tests_resume;
