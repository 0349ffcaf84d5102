//! The one line a relay operator hands employees: `tw-relay:HOST:PORT`, with `/PIN` appended
//! for a self-signed relay (the certificate's SHA-256, base64url without padding).
//!
//! `telework-relay client-profile` prints it; `telework config import` reads it. Pure text,
//! no IO.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use telework_protocol::CertFingerprint;

use crate::connect::RelayAddr;

const PREFIX: &str = "tw-relay:";

/// Where the relay is and, for a self-signed one, which certificate to expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayProfile {
    /// The relay, `host:port`.
    pub relay: RelayAddr,
    /// The pinned certificate, or `None` for a relay whose certificate the system trusts.
    pub fingerprint: Option<CertFingerprint>,
}

/// Text that is not a relay profile; each says what is wrong, since people paste these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRelayProfile {
    /// No `tw-relay:` prefix.
    #[error("a relay profile starts with 'tw-relay:' (ask your relay operator for the line)")]
    Prefix,
    /// The address part is not `host:port`.
    #[error("the relay profile's address is not host:port")]
    Address,
    /// The pin is not 32 bytes of base64url (a truncated paste, usually).
    #[error("the relay profile's certificate pin is damaged or cut short: paste the whole line")]
    Pin,
}

impl FromStr for RelayProfile {
    type Err = BadRelayProfile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(BadRelayProfile::Prefix)?;
        let (addr, pin) = match rest.split_once('/') {
            Some((addr, pin)) => (addr, Some(pin)),
            None => (rest, None),
        };
        if addr.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(BadRelayProfile::Address);
        }
        let relay = addr.parse().map_err(|_| BadRelayProfile::Address)?;
        let fingerprint = pin
            .map(|pin| {
                let bytes = URL_SAFE_NO_PAD
                    .decode(pin)
                    .map_err(|_| BadRelayProfile::Pin)?;
                let bytes: [u8; 32] = bytes.try_into().map_err(|_| BadRelayProfile::Pin)?;
                Ok(CertFingerprint(bytes))
            })
            .transpose()?;
        Ok(Self { relay, fingerprint })
    }
}

impl fmt::Display for RelayProfile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.relay)?;
        if let Some(fp) = &self.fingerprint {
            write!(f, "/{}", URL_SAFE_NO_PAD.encode(fp.0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_a_pin() {
        for text in [
            "tw-relay:relay.example.com:443",
            "tw-relay:[::1]:4433",
            "tw-relay:127.0.0.1:4433/q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s",
        ] {
            let profile: RelayProfile = text.parse().unwrap();
            assert_eq!(profile.to_string(), text);
        }
        let pinned: RelayProfile =
            " tw-relay:relay.example.com:443/q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s\n"
                .parse()
                .unwrap();
        assert_eq!(pinned.relay.to_string(), "relay.example.com:443");
        assert_eq!(pinned.fingerprint, Some(CertFingerprint([0xab; 32])));
    }

    #[test]
    fn damaged_lines_say_what_is_wrong() {
        let bad = |s: &str| s.parse::<RelayProfile>().unwrap_err();
        assert_eq!(bad("relay.example.com:443"), BadRelayProfile::Prefix);
        assert_eq!(bad("tw-relay:relay.example.com"), BadRelayProfile::Address);
        assert_eq!(
            bad("tw-relay:relay example.com:443"),
            BadRelayProfile::Address
        );
        assert_eq!(
            bad("tw-relay:relay.example.com:443/q6urq6"),
            BadRelayProfile::Pin
        );
        assert_eq!(
            bad("tw-relay:relay.example.com:443/!!"),
            BadRelayProfile::Pin
        );
    }
}
