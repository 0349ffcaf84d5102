//! The record layer: AES-256-GCM records carrying desktop bytes between client and agent.
//!
//! Wire form: a 2-byte big-endian length, then the ciphertext of `payload || kind` with its
//! 16-byte tag. The length header is the additional data, the nonce is a per-direction
//! counter, and every tunnel has fresh keys, so a nonce never repeats under a key. Reordered,
//! replayed, dropped, truncated or flipped records fail to open. End of stream is a record of
//! its own ([`RecordKind::Eof`]), so a relay that cuts the connection early is detected.
//!
//! # Rekeying
//!
//! AES-GCM with counter nonces stays within its safe bounds for about 2^24.5 full records
//! under one key (the TLS 1.3 limit). So each direction moves to a new key every
//! [`REKEY_INTERVAL`] records: both ends derive `next = HKDF-Expand(current, "telework/1
//! rekey", 32)` when the counter reaches a multiple of the interval, and forget (zeroize) the
//! current key. The change is implied by the record count, so no message announces it and the
//! relay, which only copies records in order, has nothing to interfere with. The nonce counter
//! runs on across key changes and is never reset, so it never repeats under any key; at 2^64
//! records sealing and opening fail rather than wrap.

use bytes::{Buf, BufMut, BytesMut};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use zeroize::Zeroizing;

use super::keys::expand;

/// Largest plaintext in one record (16 KiB).
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// Bytes of the record header.
pub const RECORD_HEADER_LEN: usize = 2;

const TAG_LEN: usize = 16;

/// Records sealed (or opened) under one key in one direction before both ends move to the
/// next key (2^24).
pub const REKEY_INTERVAL: u64 = 1 << 24;

/// The HKDF info for the key ratchet.
const REKEY_INFO: &[u8] = b"telework/1 rekey";

/// Largest ciphertext a record may announce.
pub const MAX_RECORD_CIPHERTEXT: usize = MAX_RECORD_PLAINTEXT + 1 + TAG_LEN;

/// Plaintext per record when sealing bulk data: a sealed record is then exactly 16 KiB, the
/// plaintext of one full TLS record, so that four of them (what the pump seals from one local
/// read) fill four TLS records instead of four and a runt. TLS layers may still cut records
/// elsewhere (a part-full send buffer, the relay's own reads); this only removes the usual
/// case. Receivers accept anything up to [`MAX_RECORD_PLAINTEXT`].
pub const BULK_RECORD_PLAINTEXT: usize = 16 * 1024 - RECORD_HEADER_LEN - 1 - TAG_LEN;

/// What a record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// Desktop bytes.
    Data = 0,
    /// The sender will send no more data (authenticated half-close).
    Eof = 1,
    /// A postcard-encoded control message ([`super::messages::AgentNotice`] from the agent,
    /// [`super::messages::ClientNotice`] from the client).
    Control = 2,
}

impl RecordKind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(Self::Data),
            1 => Some(Self::Eof),
            2 => Some(Self::Control),
            _ => None,
        }
    }
}

/// One opened record.
#[derive(Debug)]
pub struct Record {
    /// What the record carries.
    pub kind: RecordKind,
    /// The plaintext (without the kind byte).
    pub payload: BytesMut,
}

/// Why a record could not be sealed or opened. Any of these ends the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The header announced more than [`MAX_RECORD_CIPHERTEXT`] bytes, or too few for a tag.
    #[error("record length {0} is out of bounds")]
    BadLength(usize),
    /// Authentication failed: the record was forged, altered, reordered or replayed.
    #[error("record failed authentication (tampered, reordered or replayed)")]
    Forged,
    /// The record's kind byte is unknown.
    #[error("record of unknown kind {0}")]
    UnknownKind(u8),
    /// The plaintext handed to seal was larger than one record.
    #[error("plaintext of {0} bytes is over the record limit")]
    TooLarge(usize),
    /// 2^64 records went one way through one tunnel: the counter would wrap.
    #[error("record counter exhausted")]
    CounterExhausted,
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; aead::NONCE_LEN];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn key(bytes: &[u8; 32]) -> LessSafeKey {
    // A 32-byte slice is always a valid AES-256 key.
    #[allow(clippy::expect_used)]
    LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, bytes).expect("32-byte AES-256 key"))
}

/// One direction's key and record counter, moving to the next key every `interval` records.
struct DirectionKey {
    /// The current key's bytes, kept to derive the next one; zeroized when replaced.
    secret: Zeroizing<[u8; 32]>,
    aead: LessSafeKey,
    /// The next record's number, which is also its nonce. Never reset.
    counter: u64,
    /// The record number at which the next key takes over.
    next_rekey: u64,
    interval: u64,
}

impl DirectionKey {
    fn new(k: &[u8; 32], interval: u64) -> Self {
        let interval = interval.max(1);
        Self {
            secret: Zeroizing::new(*k),
            aead: key(k),
            counter: 0,
            next_rekey: interval,
            interval,
        }
    }

    /// Takes the next record number for its nonce, first moving to the next key if this
    /// record starts a new interval. The hot path is one addition and one comparison.
    fn next_nonce(&mut self) -> Result<Nonce, RecordError> {
        let counter = self.counter;
        self.counter = counter
            .checked_add(1)
            .ok_or(RecordError::CounterExhausted)?;
        if counter == self.next_rekey {
            self.ratchet();
        }
        Ok(nonce(counter))
    }

    /// Replaces the key with `HKDF-Expand(key, "telework/1 rekey")`; the old bytes are zeroized
    /// as they are dropped.
    #[cold]
    fn ratchet(&mut self) {
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &self.secret[..]);
        let next = expand::<32>(&prk, REKEY_INFO);
        self.aead = key(&next);
        self.secret = next;
        self.next_rekey = self.next_rekey.saturating_add(self.interval);
    }
}

/// Seals records in one direction.
pub struct Sealer {
    key: DirectionKey,
}

impl Sealer {
    /// A sealer for a 32-byte key, moving to the next key every [`REKEY_INTERVAL`] records.
    pub fn new(k: &[u8; 32]) -> Self {
        Self::with_rekey_interval(k, REKEY_INTERVAL)
    }

    /// A sealer that rekeys every `interval` records: for tests that cross key changes
    /// quickly. Both ends must agree on it.
    pub(crate) fn with_rekey_interval(k: &[u8; 32], interval: u64) -> Self {
        Self {
            key: DirectionKey::new(k, interval),
        }
    }

    /// Appends one record of `kind` holding `payload` to `dst`.
    ///
    /// # Errors
    /// [`RecordError::TooLarge`] if `payload` is over [`MAX_RECORD_PLAINTEXT`].
    pub fn seal(
        &mut self,
        kind: RecordKind,
        payload: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), RecordError> {
        if payload.len() > MAX_RECORD_PLAINTEXT {
            return Err(RecordError::TooLarge(payload.len()));
        }
        let nonce = self.key.next_nonce()?;
        let ct_len = payload.len() + 1 + TAG_LEN;
        let header = (ct_len as u16).to_be_bytes();
        dst.reserve(RECORD_HEADER_LEN + ct_len);
        dst.put_slice(&header);
        let start = dst.len();
        dst.put_slice(payload);
        dst.put_u8(kind as u8);
        let tag = self
            .key
            .aead
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut dst[start..])
            .map_err(|_| RecordError::CounterExhausted)?;
        dst.put_slice(tag.as_ref());
        Ok(())
    }

    /// Seals desktop bytes of any length, split into as many records as needed, each of at
    /// most [`BULK_RECORD_PLAINTEXT`] bytes.
    ///
    /// # Errors
    /// Only [`RecordError::CounterExhausted`].
    pub fn seal_data(&mut self, data: &[u8], dst: &mut BytesMut) -> Result<(), RecordError> {
        for chunk in data.chunks(BULK_RECORD_PLAINTEXT) {
            self.seal(RecordKind::Data, chunk, dst)?;
        }
        Ok(())
    }
}

/// Opens records in one direction.
pub struct Opener {
    key: DirectionKey,
}

impl Opener {
    /// An opener for a 32-byte key, moving to the next key every [`REKEY_INTERVAL`] records.
    pub fn new(k: &[u8; 32]) -> Self {
        Self::with_rekey_interval(k, REKEY_INTERVAL)
    }

    /// An opener that rekeys every `interval` records: for tests that cross key changes
    /// quickly. Both ends must agree on it.
    pub(crate) fn with_rekey_interval(k: &[u8; 32], interval: u64) -> Self {
        Self {
            key: DirectionKey::new(k, interval),
        }
    }

    /// Takes one record off the front of `src` and opens it.
    ///
    /// Returns `Ok(None)` when `src` does not yet hold a whole record; nothing is consumed.
    ///
    /// # Errors
    /// Any [`RecordError`]: the tunnel must then be closed.
    pub fn open(&mut self, src: &mut BytesMut) -> Result<Option<Record>, RecordError> {
        let Some(header) = src.get(..RECORD_HEADER_LEN) else {
            return Ok(None);
        };
        let header = [header[0], header[1]];
        let ct_len = u16::from_be_bytes(header) as usize;
        if !(TAG_LEN + 1..=MAX_RECORD_CIPHERTEXT).contains(&ct_len) {
            return Err(RecordError::BadLength(ct_len));
        }
        if src.len() < RECORD_HEADER_LEN + ct_len {
            return Ok(None);
        }
        src.advance(RECORD_HEADER_LEN);
        let mut body = src.split_to(ct_len);
        let nonce = self.key.next_nonce()?;
        let plain_len = self
            .key
            .aead
            .open_in_place(nonce, Aad::from(header), &mut body)
            .map_err(|_| RecordError::Forged)?
            .len();
        body.truncate(plain_len);
        let kind_byte = body[plain_len - 1];
        body.truncate(plain_len - 1);
        let kind = RecordKind::from_byte(kind_byte).ok_or(RecordError::UnknownKind(kind_byte))?;
        Ok(Some(Record {
            kind,
            payload: body,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Sealer, Opener) {
        (Sealer::new(&[1; 32]), Opener::new(&[1; 32]))
    }

    #[test]
    fn records_round_trip_byte_by_byte() {
        let (mut s, mut o) = pair();
        let mut wire = BytesMut::new();
        s.seal_data(&vec![7u8; 40_000], &mut wire).unwrap();
        s.seal(RecordKind::Eof, &[], &mut wire).unwrap();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        let mut eof = false;
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(r) = o.open(&mut buf).unwrap() {
                match r.kind {
                    RecordKind::Data => data.extend_from_slice(&r.payload),
                    RecordKind::Eof => eof = true,
                    RecordKind::Control => panic!("no control record sent"),
                }
            }
        }
        assert_eq!(data, vec![7u8; 40_000]);
        assert!(eof);
    }

    #[test]
    fn bulk_records_are_one_full_tls_record_each() {
        let (mut s, mut o) = pair();
        let mut wire = BytesMut::new();
        s.seal_data(&vec![7u8; 4 * BULK_RECORD_PLAINTEXT], &mut wire)
            .unwrap();
        assert_eq!(wire.len(), 4 * 16 * 1024);
        for _ in 0..4 {
            let r = o.open(&mut wire).unwrap().unwrap();
            assert_eq!(r.payload.len(), BULK_RECORD_PLAINTEXT);
        }
        assert!(wire.is_empty());
    }

    #[test]
    fn records_up_to_the_full_limit_are_accepted() {
        let (mut s, mut o) = pair();
        let mut wire = BytesMut::new();
        s.seal(
            RecordKind::Data,
            &vec![1u8; MAX_RECORD_PLAINTEXT],
            &mut wire,
        )
        .unwrap();
        let r = o.open(&mut wire).unwrap().unwrap();
        assert_eq!(r.payload.len(), MAX_RECORD_PLAINTEXT);
    }

    #[test]
    fn flipped_bit_is_forged() {
        let (mut s, mut o) = pair();
        let mut wire = BytesMut::new();
        s.seal_data(b"desktop", &mut wire).unwrap();
        wire[5] ^= 1;
        assert_eq!(o.open(&mut wire).unwrap_err(), RecordError::Forged);
    }

    #[test]
    fn replayed_and_reordered_records_are_forged() {
        let (mut s, mut o) = pair();
        let mut first = BytesMut::new();
        s.seal_data(b"one", &mut first).unwrap();
        let mut second = BytesMut::new();
        s.seal_data(b"two", &mut second).unwrap();
        // Reordered: second before first.
        assert_eq!(
            o.open(&mut second.clone()).unwrap_err(),
            RecordError::Forged
        );
        let (_, mut o) = pair();
        o.open(&mut first.clone()).unwrap().unwrap();
        // Replayed: first again.
        assert_eq!(o.open(&mut first).unwrap_err(), RecordError::Forged);
    }

    /// A small rekey interval, so tests cross several key changes quickly.
    const SMALL: u64 = 4;

    fn small_pair() -> (Sealer, Opener) {
        (
            Sealer::with_rekey_interval(&[1; 32], SMALL),
            Opener::with_rekey_interval(&[1; 32], SMALL),
        )
    }

    fn sealed(s: &mut Sealer, text: &[u8]) -> BytesMut {
        let mut wire = BytesMut::new();
        s.seal(RecordKind::Data, text, &mut wire).unwrap();
        wire
    }

    #[test]
    fn data_flows_across_several_rekeys() {
        let (mut s, mut o) = small_pair();
        let mut wire = BytesMut::new();
        let records = SMALL * 5 + 2;
        for i in 0..records {
            s.seal(RecordKind::Data, &i.to_be_bytes(), &mut wire)
                .unwrap();
        }
        for i in 0..records {
            let r = o.open(&mut wire).unwrap().unwrap();
            assert_eq!(&r.payload[..], &i.to_be_bytes()[..], "record {i}");
        }
        assert!(wire.is_empty());
        assert_eq!(s.key.counter, records);
        assert_ne!(*s.key.secret, [1; 32], "the key changed");
        assert_eq!(*s.key.secret, *o.key.secret, "both ends moved alike");
    }

    #[test]
    fn the_default_interval_is_two_to_the_24() {
        assert_eq!(REKEY_INTERVAL, 16_777_216);
        let (s, o) = pair();
        assert_eq!(s.key.next_rekey, REKEY_INTERVAL);
        assert_eq!(o.key.next_rekey, REKEY_INTERVAL);
    }

    #[test]
    fn a_record_from_before_a_rekey_is_refused_after_it() {
        let (mut s, mut o) = small_pair();
        let first = sealed(&mut s, b"old key");
        o.open(&mut first.clone()).unwrap().unwrap();
        for _ in 1..SMALL {
            o.open(&mut sealed(&mut s, b"x")).unwrap().unwrap();
        }
        // The opener is now at the first record of the second key.
        assert_eq!(o.open(&mut first.clone()).unwrap_err(), RecordError::Forged);
    }

    #[test]
    fn after_the_interval_the_old_key_no_longer_opens() {
        // One sealer that never rekeys, one that does, from the same key.
        let mut stale = Sealer::with_rekey_interval(&[1; 32], u64::MAX);
        let (mut fresh, _) = small_pair();
        let (_, mut o) = small_pair();
        for _ in 0..SMALL {
            let a = sealed(&mut stale, b"same");
            let b = sealed(&mut fresh, b"same");
            assert_eq!(a, b, "the same key before the interval");
            o.open(&mut a.clone()).unwrap().unwrap();
        }
        // Record number SMALL under the old key, with the right nonce: refused.
        let old = sealed(&mut stale, b"next");
        let new = sealed(&mut fresh, b"next");
        assert_ne!(old, new);
        assert_eq!(o.open(&mut old.clone()).unwrap_err(), RecordError::Forged);
        // And the rekeyed one opens on an opener at the same place.
        let (_, mut o2) = small_pair();
        let mut again = Sealer::with_rekey_interval(&[1; 32], SMALL);
        for _ in 0..SMALL {
            o2.open(&mut sealed(&mut again, b"same")).unwrap().unwrap();
        }
        assert_eq!(
            &o2.open(&mut new.clone()).unwrap().unwrap().payload[..],
            b"next"
        );
    }

    #[test]
    fn the_ratchet_is_hkdf_expand_of_the_current_key() {
        let (mut s, _) = small_pair();
        for _ in 0..=SMALL {
            sealed(&mut s, b"");
        }
        let prk = hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &[1; 32]);
        assert_eq!(*s.key.secret, *expand::<32>(&prk, b"telework/1 rekey"));
    }

    #[test]
    fn the_counter_never_wraps() {
        let (mut s, mut o) = pair();
        s.key.counter = u64::MAX - 1;
        o.key.counter = u64::MAX - 1;
        let mut last = sealed(&mut s, b"last");
        assert_eq!(&o.open(&mut last).unwrap().unwrap().payload[..], b"last");
        for _ in 0..2 {
            assert_eq!(
                s.seal(RecordKind::Data, b"one more", &mut BytesMut::new()),
                Err(RecordError::CounterExhausted)
            );
        }
        let mut wire = BytesMut::new();
        Sealer::new(&[1; 32])
            .seal(RecordKind::Data, b"x", &mut wire)
            .unwrap();
        assert!(matches!(
            o.open(&mut wire),
            Err(RecordError::CounterExhausted)
        ));
    }

    #[test]
    fn bad_lengths_are_rejected() {
        let (_, mut o) = pair();
        let mut tiny = BytesMut::from(&[0u8, 3, 1, 2, 3][..]);
        assert!(matches!(o.open(&mut tiny), Err(RecordError::BadLength(3))));
        let mut huge = BytesMut::from(&[0xffu8, 0xff][..]);
        assert!(matches!(o.open(&mut huge), Err(RecordError::BadLength(_))));
        let (mut s, _) = pair();
        assert!(s
            .seal(
                RecordKind::Data,
                &vec![0; MAX_RECORD_PLAINTEXT + 1],
                &mut BytesMut::new()
            )
            .is_err());
    }
}
