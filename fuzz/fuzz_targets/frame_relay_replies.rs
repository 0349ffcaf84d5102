//! The decoders for what the relay sends (a hostile relay is in the threat model).
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use telework_protocol::frame::decode_frame;
use telework_protocol::messages::{RelayToAgent, RelayToClient, RelayOpens};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_frame::<RelayToAgent>(&mut buf) {}
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_frame::<RelayToClient>(&mut buf) {}
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_frame::<RelayOpens>(&mut buf) {}
});
