//! Identifiers that cross the wire: computer IDs, tunnel tickets and session ids.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest computer ID, in bytes.
pub const COMPUTER_ID_MAX_LEN: usize = 31;

/// The name an office PC is reached by: 1–31 of `[a-z0-9_-]`, stored lower-case.
///
/// Parsing is case-insensitive, so `PC-Tanaka-01` and `pc-tanaka-01` are the same machine.
///
/// ```
/// use telework_protocol::ComputerId;
/// let id: ComputerId = "PC-Tanaka-01".parse().unwrap();
/// assert_eq!(id.as_str(), "pc-tanaka-01");
/// assert!("no spaces".parse::<ComputerId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ComputerId(String);

/// Why a string is not a valid computer ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputerIdError {
    /// The ID was empty.
    #[error("a computer ID cannot be empty")]
    Empty,
    /// The ID was longer than [`COMPUTER_ID_MAX_LEN`].
    #[error("a computer ID has at most {COMPUTER_ID_MAX_LEN} characters")]
    TooLong,
    /// The ID held a character outside `[a-z0-9_-]`.
    #[error("a computer ID may only contain letters a-z, digits, '-' and '_' (found {0:?})")]
    BadChar(char),
}

impl ComputerId {
    /// The canonical (lower-case) text of the ID.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Suggests an ID from a host name: lower-cased, invalid characters replaced by `-`,
    /// cut to the maximum length. Returns `None` when nothing usable is left.
    pub fn suggest_from_hostname(host: &str) -> Option<Self> {
        let cleaned: String = host
            .split('.')
            .next()
            .unwrap_or_default()
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if is_id_char(c) { c } else { '-' })
            .take(COMPUTER_ID_MAX_LEN)
            .collect();
        let trimmed = cleaned.trim_matches('-');
        trimmed.parse().ok()
    }
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
}

impl FromStr for ComputerId {
    type Err = ComputerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(ComputerIdError::Empty);
        }
        if s.len() > COMPUTER_ID_MAX_LEN {
            return Err(ComputerIdError::TooLong);
        }
        let lower = s.to_ascii_lowercase();
        if let Some(bad) = lower.chars().find(|c| !is_id_char(*c)) {
            return Err(ComputerIdError::BadChar(bad));
        }
        Ok(Self(lower))
    }
}

impl<'de> Deserialize<'de> for ComputerId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for ComputerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ComputerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ComputerId({})", self.0)
    }
}

/// A one-time tunnel ticket: 128 random bits the relay hands to an agent so that the agent's
/// tunnel connection can be paired with the waiting client.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ticket(pub [u8; 16]);

impl Ticket {
    /// A fresh random ticket.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Debug for Ticket {
    // Tickets are bearer secrets while they live: never print them whole.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ticket({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// Names one authenticated end-to-end session between a client and an agent.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// A fresh random session id.
    pub fn random() -> Self {
        Self(rand::random())
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0[..6]))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_case_insensitive_and_bounded() {
        assert_eq!("ABC".parse::<ComputerId>().unwrap().as_str(), "abc");
        assert_eq!("".parse::<ComputerId>(), Err(ComputerIdError::Empty));
        assert_eq!(
            "a".repeat(32).parse::<ComputerId>(),
            Err(ComputerIdError::TooLong)
        );
        assert!("a".repeat(31).parse::<ComputerId>().is_ok());
        assert_eq!(
            "a.b".parse::<ComputerId>(),
            Err(ComputerIdError::BadChar('.'))
        );
        assert_eq!(
            "é".parse::<ComputerId>(),
            Err(ComputerIdError::BadChar('é'))
        );
    }

    #[test]
    fn suggestion_from_hostname() {
        let id = ComputerId::suggest_from_hostname("PC Tanaka.corp.example").unwrap();
        assert_eq!(id.as_str(), "pc-tanaka");
        assert!(ComputerId::suggest_from_hostname("...").is_none());
    }

    #[test]
    fn deserialize_rejects_invalid_ids() {
        let bytes = postcard::to_allocvec(&"bad id").unwrap();
        assert!(postcard::from_bytes::<ComputerId>(&bytes).is_err());
        let bytes = postcard::to_allocvec(&"Good-ID").unwrap();
        assert_eq!(
            postcard::from_bytes::<ComputerId>(&bytes).unwrap().as_str(),
            "good-id"
        );
    }
}
