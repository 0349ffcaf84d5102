//! Reasons the relay or an agent refuses something, and the sentence a person reads for each.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a request failed. Sent on the wire; shown to people through its `Display` sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The computer ID is registered but its agent is not connected.
    Offline,
    /// No machine is registered under that computer ID.
    UnknownId,
    /// The relay or the agent is at capacity.
    Busy,
    /// The peer speaks an older protocol version than the relay accepts.
    VersionTooOld,
    /// The machine-key proof did not verify.
    BadProof,
    /// Registration asked for an ID another machine already owns.
    IdTaken,
    /// Registration needs an enrolment token and none was given.
    TokenRequired,
    /// The enrolment token is unknown, used up or expired.
    BadToken,
    /// The tunnel ticket is unknown, used or expired.
    BadTicket,
    /// The agent did not open its tunnel in time.
    AgentTimeout,
    /// Too many requests from this address; try later.
    RateLimited,
    /// The relay is shutting down.
    ShuttingDown,
    /// Another connection came online with the same computer ID.
    Replaced,
    /// The peer sent something the protocol does not allow at this point.
    ProtocolViolation,
    /// The relay failed internally.
    Internal,
    /// The relay's operator ended this session (from the console).
    EndedByOperator,
    /// The relay's operator disabled this office PC.
    Disabled,
}

impl ErrorCode {
    /// Every code, for exhaustive tests.
    pub const ALL: [ErrorCode; 17] = [
        Self::Offline,
        Self::UnknownId,
        Self::Busy,
        Self::VersionTooOld,
        Self::BadProof,
        Self::IdTaken,
        Self::TokenRequired,
        Self::BadToken,
        Self::BadTicket,
        Self::AgentTimeout,
        Self::RateLimited,
        Self::ShuttingDown,
        Self::Replaced,
        Self::ProtocolViolation,
        Self::Internal,
        Self::EndedByOperator,
        Self::Disabled,
    ];

    /// The code a connection close carried (see [`ErrorCode::close_code`]), if it is one.
    pub fn from_close_code(code: u64) -> Option<Self> {
        let index = usize::try_from(code.checked_sub(1)?).ok()?;
        Self::ALL.get(index).copied()
    }

    /// The number a connection close carries on the wire: the code's position, offset so
    /// that 0 stays "no error".
    pub fn close_code(self) -> u32 {
        1 + self as u32
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Offline => "the office PC is offline (its telework agent is not connected)",
            Self::UnknownId => "no office PC is registered under that computer ID",
            Self::Busy => "the relay is busy; try again in a minute",
            Self::VersionTooOld => "this telework version is too old for the relay; please update",
            Self::BadProof => "the relay could not verify this machine's key",
            Self::IdTaken => "that computer ID is already registered to another machine",
            Self::TokenRequired => "the relay requires an enrolment token (--token)",
            Self::BadToken => "the enrolment token is not valid (unknown, used or expired)",
            Self::BadTicket => "the tunnel ticket is not valid (unknown, used or expired)",
            Self::AgentTimeout => "the office PC did not answer in time",
            Self::RateLimited => "too many attempts from this address; wait a minute and try again",
            Self::ShuttingDown => "the relay is restarting; try again shortly",
            Self::Replaced => "another agent came online with this computer ID",
            Self::ProtocolViolation => "the peer broke the protocol",
            Self::Internal => "the relay had an internal error",
            Self::EndedByOperator => "the relay operator ended the session",
            Self::Disabled => "the relay operator disabled this office PC",
        })
    }
}

impl std::error::Error for ErrorCode {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_sentence() {
        for code in ErrorCode::ALL {
            let s = code.to_string();
            assert!(s.len() > 10, "{code:?}");
            assert!(!s.contains("Error"), "{code:?} reads like a debug name");
            assert_eq!(
                ErrorCode::from_close_code(u64::from(code.close_code())),
                Some(code)
            );
        }
        assert_eq!(ErrorCode::from_close_code(0), None);
        assert_eq!(ErrorCode::from_close_code(1000), None);
    }
}
