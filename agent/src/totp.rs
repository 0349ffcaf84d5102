//! One-time codes (TOTP, RFC 6238) as an optional second factor, checked by the agent inside
//! the end-to-end channel so the relay never sees them. Pure: the time is passed in.

use ring::hmac;

/// Seconds per code.
pub const STEP_SECS: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Codes one step either side of now are accepted, for clock drift.
pub const SKEW_STEPS: u64 = 1;

/// A TOTP secret.
#[derive(Clone)]
pub struct TotpSecret(zeroize::Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(MASKED)")
    }
}

impl TotpSecret {
    /// A fresh 160-bit secret (RFC 4226's recommended length).
    pub fn generate() -> Self {
        Self(zeroize::Zeroizing::new(rand::random::<[u8; 20]>().to_vec()))
    }

    /// From raw bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(zeroize::Zeroizing::new(bytes.to_vec()))
    }

    /// Parses the base32 text authenticator apps use.
    ///
    /// # Errors
    /// If the text is not base32 (spaces and lower case are accepted).
    pub fn from_base32(text: &str) -> Result<Self, data_encoding::DecodeError> {
        let clean: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '=')
            .collect::<String>()
            .to_ascii_uppercase();
        data_encoding::BASE32_NOPAD
            .decode(clean.as_bytes())
            .map(|b| Self::from_bytes(&b))
    }

    /// The secret's bytes (for comparing it with the one a session logged in under).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The base32 text for an authenticator app.
    pub fn to_base32(&self) -> String {
        data_encoding::BASE32_NOPAD.encode(&self.0)
    }

    /// The `otpauth://` URI that authenticator apps read from a QR code.
    pub fn otpauth_uri(&self, account: &str) -> String {
        format!(
            "otpauth://totp/telework:{account}?secret={}&issuer=telework&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            self.to_base32()
        )
    }

    /// The code for time step `step` with `digits` digits (HOTP, RFC 4226, with SHA-1).
    pub fn code_at_step(&self, step: u64, digits: u32) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let mac = hmac::sign(&key, &step.to_be_bytes());
        let mac = mac.as_ref();
        let offset = (mac[mac.len() - 1] & 0x0f) as usize;
        let bin = u32::from_be_bytes([
            mac[offset] & 0x7f,
            mac[offset + 1],
            mac[offset + 2],
            mac[offset + 3],
        ]);
        let modulus = 10u32.pow(digits);
        format!("{:0width$}", bin % modulus, width = digits as usize)
    }

    /// The current code at Unix time `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> String {
        self.code_at_step(unix_secs / STEP_SECS, DIGITS)
    }

    /// Checks `code` at Unix time `unix_secs`, allowing [`SKEW_STEPS`] of drift and refusing
    /// any step at or before `last_used` (a code works once). Returns the step it matched.
    pub fn verify(&self, code: &str, unix_secs: u64, last_used: Option<u64>) -> Option<u64> {
        let code = code.trim();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now = unix_secs / STEP_SECS;
        let mut matched = None;
        for step in now.saturating_sub(SKEW_STEPS)..=now + SKEW_STEPS {
            // Compare every candidate in constant time and do not stop early.
            let candidate = self.code_at_step(step, DIGITS);
            let diff = candidate
                .bytes()
                .zip(code.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                matched = Some(step);
            }
        }
        matched.filter(|step| last_used.is_none_or(|last| *step > last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows: secret "12345678901234567890", 8 digits.
    #[test]
    fn rfc6238_sha1_test_vectors() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890");
        let vectors = [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        for (t, code) in vectors {
            assert_eq!(secret.code_at_step(t / STEP_SECS, 8), code, "T={t}");
        }
    }

    #[test]
    fn verify_allows_one_step_of_drift_and_each_code_once() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890");
        let t = 1_234_567_890;
        let code = secret.code_at(t);
        assert_eq!(secret.verify(&code, t, None), Some(t / STEP_SECS));
        assert!(
            secret.verify(&code, t + STEP_SECS, None).is_some(),
            "one step late"
        );
        assert!(
            secret.verify(&code, t + 3 * STEP_SECS, None).is_none(),
            "too late"
        );
        assert!(
            secret.verify(&code, t, Some(t / STEP_SECS)).is_none(),
            "replayed"
        );
        assert!(secret.verify("12345", t, None).is_none());
        assert!(secret.verify("abcdef", t, None).is_none());
    }

    #[test]
    fn base32_and_uri() {
        let secret = TotpSecret::from_bytes(b"12345678901234567890");
        assert_eq!(secret.to_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let again = TotpSecret::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap();
        assert_eq!(again.code_at(59), secret.code_at(59));
        assert!(secret
            .otpauth_uri("pc-1")
            .starts_with("otpauth://totp/telework:pc-1?secret=GEZDG"));
    }
}
