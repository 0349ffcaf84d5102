//! The client → relay hello decoder.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use telework_protocol::frame::decode_frame;
use telework_protocol::messages::ClientToRelay;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = decode_frame::<ClientToRelay>(&mut buf) {}
});
