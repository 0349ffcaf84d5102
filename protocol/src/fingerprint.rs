//! Certificate fingerprints: how a client or agent pins a self-signed relay.

use std::fmt;
use std::str::FromStr;

/// SHA-256 of a DER certificate, written `sha256:` followed by 64 hex digits.
///
/// ```
/// use telework_protocol::CertFingerprint;
/// let fp = CertFingerprint::of_der(b"cert");
/// let text = fp.to_string();
/// assert!(text.starts_with("sha256:"));
/// assert_eq!(text.parse::<CertFingerprint>().unwrap(), fp);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0; 32];
        out.copy_from_slice(digest.as_ref());
        Self(out)
    }
}

/// Text that is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a fingerprint looks like sha256:<64 hex digits> (colons allowed)")]
pub struct BadFingerprint;

impl FromStr for CertFingerprint {
    type Err = BadFingerprint;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let hex_part = s
            .strip_prefix("sha256:")
            .or_else(|| s.strip_prefix("SHA256:"))
            .unwrap_or(s);
        let digits: String = hex_part.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(digits).map_err(|_| BadFingerprint)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| BadFingerprint)?;
        Ok(Self(arr))
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_colon_forms() {
        let fp = CertFingerprint([0xab; 32]);
        let colons = std::iter::repeat_n("AB", 32).collect::<Vec<_>>().join(":");
        assert_eq!(colons.parse::<CertFingerprint>().unwrap(), fp);
        assert_eq!(
            format!("sha256:{}", "ab".repeat(32))
                .parse::<CertFingerprint>()
                .unwrap(),
            fp
        );
        assert!("sha256:abcd".parse::<CertFingerprint>().is_err());
        assert!("sha256:zz".parse::<CertFingerprint>().is_err());
    }
}
