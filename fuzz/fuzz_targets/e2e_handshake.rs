//! The end-to-end handshake decoders (client ↔ agent, through the relay) and the control
//! payload decoders carried inside records (agent notices, client device and code messages).
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use telework_protocol::e2e::messages::{AgentHandshake, AgentNotice, ClientHandshake, ClientNotice};
use telework_protocol::frame::{decode_frame, decode_payload};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_frame::<ClientHandshake>(&mut buf) {}
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_frame::<AgentHandshake>(&mut buf) {}
    let _ = decode_payload::<AgentNotice>(data);
    let _ = decode_payload::<ClientNotice>(data);
});
