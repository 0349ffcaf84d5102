//! The record decoder: arbitrary bytes must fail authentication cleanly, never panic, and
//! never buffer past one record.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use telework_protocol::e2e::record::Opener;

fuzz_target!(|data: &[u8]| {
    let mut opener = Opener::new(&[7; 32]);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = opener.open(&mut buf) {}
});
