//! What the cryptography of one 64-byte round trip costs, measured in one process with no
//! sockets, so that the latency rows can be split into cryptography and everything else.
//!
//! A round trip through our chain carries the 64 bytes each way as one end-to-end record inside
//! a TLS record on each of the two hops. Each way, the client seals the end-to-end record and
//! encrypts a TLS record, the relay decrypts it and encrypts another, and the agent decrypts
//! that and opens the end-to-end record: per round trip, two end-to-end seal-and-open pairs and
//! four TLS encrypt-and-decrypt pairs.

use std::io::{Read, Write};

use anyhow::{bail, ensure, Context};
use bytes::BytesMut;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, ConnectionCommon, ServerConnection};
use telework_net::tls::{server_config, RelayTrust};
use telework_net::transport::alpn;
use telework_protocol::e2e::record::{Opener, Sealer};
use telework_protocol::fingerprint::CertFingerprint;

use crate::procs::thread_cpu_ns;

/// The message size of the latency scenario.
const MESSAGE: usize = 64;

/// Operations timed per figure: tens of milliseconds, far above the scheduler clock's grain.
const ROUNDS: u32 = 100_000;

/// CPU microseconds of one round trip's cryptography, and its parts. Timed in a hot loop, so
/// a lower bound: in the chain each operation runs once per wake-up, after a process switch.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RoundTripCrypto {
    /// Sealing and opening one 64-byte end-to-end record.
    pub e2e_pair_us: f64,
    /// Encrypting and decrypting that record in one TLS record, with the TLS configurations
    /// the programs use.
    pub tls_pair_us: f64,
    /// Two end-to-end pairs and four TLS pairs.
    pub round_trip_us: f64,
}

/// Measures one [`RoundTripCrypto`].
///
/// # Errors
/// If the in-memory TLS handshake or a record fails: a bug, not a measurement.
pub fn round_trip_crypto() -> anyhow::Result<RoundTripCrypto> {
    let (mut client, mut server) = connected_pair()?;
    let mut sealer = Sealer::new(&[7; 32]);
    let mut opener = Opener::new(&[7; 32]);
    let message = [0x5au8; MESSAGE];

    let mut record = BytesMut::new();
    let started = thread_cpu_ns()?;
    for _ in 0..ROUNDS {
        record.clear();
        sealer.seal_data(&message, &mut record)?;
        let opened = opener.open(&mut record)?.context("a whole record")?;
        ensure!(opened.payload.len() == MESSAGE, "the record opened short");
    }
    let e2e_pair_us = per_round_us(started)?;

    record.clear();
    sealer.seal_data(&message, &mut record)?;
    let mut wire = Vec::with_capacity(4096);
    let mut plain = [0u8; 4096];
    let started = thread_cpu_ns()?;
    for _ in 0..ROUNDS {
        client.writer().write_all(&record)?;
        deliver(&mut client, &mut server, &mut wire)?;
        let n = server.reader().read(&mut plain)?;
        ensure!(n == record.len(), "the TLS record decrypted short");
    }
    let tls_pair_us = per_round_us(started)?;

    Ok(RoundTripCrypto {
        e2e_pair_us,
        tls_pair_us,
        round_trip_us: 2.0 * e2e_pair_us + 4.0 * tls_pair_us,
    })
}

/// CPU µs per round since `started` (this thread's [`thread_cpu_ns`]).
fn per_round_us(started: u64) -> anyhow::Result<f64> {
    let spent = thread_cpu_ns()?.saturating_sub(started);
    Ok(spent as f64 / 1e3 / f64::from(ROUNDS))
}

/// A client and a relay-side TLS connection with the programs' own configurations (TLS 1.3
/// only, pinned certificate), handshaken in memory.
fn connected_pair() -> anyhow::Result<(ClientConnection, ServerConnection)> {
    let generated = rcgen::generate_simple_self_signed(vec!["relay.bench".to_owned()])?;
    let cert = CertificateDer::from(generated.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der()));
    let trust = RelayTrust::Fingerprint(CertFingerprint::of_der(&cert));
    let mut client = ClientConnection::new(
        trust.client_config(alpn::CLIENT)?,
        ServerName::try_from("relay.bench")?,
    )?;
    let mut server = ServerConnection::new(server_config(vec![cert], key)?)?;
    // A TLS 1.3 handshake is two flights each way plus the session ticket; a few exchanges
    // finish it, and more mean something is wrong.
    for _ in 0..8 {
        exchange(&mut client, &mut server)?;
        if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
            return Ok((client, server));
        }
    }
    bail!("the in-memory TLS handshake did not finish")
}

/// Moves what each side has to send to the other.
fn exchange(client: &mut ClientConnection, server: &mut ServerConnection) -> anyhow::Result<()> {
    let mut wire = Vec::new();
    deliver(client, server, &mut wire)?;
    deliver(server, client, &mut wire)
}

/// Hands everything `from` has to send to `to`, through `wire`, and has `to` process it.
fn deliver<A, B>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
    wire: &mut Vec<u8>,
) -> anyhow::Result<()> {
    wire.clear();
    while from.wants_write() {
        from.write_tls(wire)?;
    }
    let mut incoming = &wire[..];
    while !incoming.is_empty() {
        to.read_tls(&mut incoming)?;
    }
    to.process_new_packets()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_crypto_is_the_sum_of_its_parts() {
        let c = round_trip_crypto().unwrap();
        assert!(c.e2e_pair_us > 0.0 && c.tls_pair_us > 0.0, "{c:?}");
        let sum = 2.0 * c.e2e_pair_us + 4.0 * c.tls_pair_us;
        assert!((c.round_trip_us - sum).abs() < 1e-9, "{c:?}");
    }
}
