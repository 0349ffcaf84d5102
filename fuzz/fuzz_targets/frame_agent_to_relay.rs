//! Every byte string fed to the agent → relay control decoder, whole and split.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use telework_protocol::frame::decode_frame;
use telework_protocol::messages::AgentToRelay;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_frame::<AgentToRelay>(&mut buf) {}
});
