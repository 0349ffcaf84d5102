//! OPAQUE message parsing on both sides, the stored password record, and the identity keys
//! a login's hello carries (the client's challenge, the pinned agent key).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use telework_protocol::e2e::identity::IdentityChallenge;
use telework_protocol::e2e::pake::{AgentLogin, ClientLogin, PasswordRecord};
use telework_protocol::e2e::stretch::StretchParams;
use telework_protocol::ComputerId;

fn record() -> &'static PasswordRecord {
    static RECORD: OnceLock<PasswordRecord> = OnceLock::new();
    RECORD.get_or_init(|| PasswordRecord::create(b"fuzz password").expect("record"))
}

fn challenge() -> &'static IdentityChallenge {
    static CHALLENGE: OnceLock<IdentityChallenge> = OnceLock::new();
    CHALLENGE.get_or_init(IdentityChallenge::generate)
}

fuzz_target!(|data: &[u8]| {
    let id: ComputerId = "fuzz-pc".parse().expect("id");
    let _ = AgentLogin::start(record(), data, &id);
    let _ = PasswordRecord::from_bytes(data);
    let _ = record().identity_key(data);
    let _ = challenge().key(data);
    if let Ok((client, _)) = ClientLogin::start(b"fuzz password") {
        let _ = client.finish(b"fuzz password", data, StretchParams::CURRENT, &id);
    }
});
