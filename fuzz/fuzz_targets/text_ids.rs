//! Parsers for what people type: computer IDs and certificate fingerprints.
#![no_main]
use libfuzzer_sys::fuzz_target;
use telework_protocol::{CertFingerprint, ComputerId};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<ComputerId>();
        let _ = s.parse::<CertFingerprint>();
        let _ = ComputerId::suggest_from_hostname(s);
    }
});
