//! The record layer: AES-256-GCM records carrying desktop bytes between client and agent.
//!
//! Wire form: a 2-byte big-endian length, then the ciphertext of `payload || kind` with its
//! 16-byte tag. The length header is the additional data, the nonce is a per-direction
//! counter, and every tunnel has fresh keys, so a nonce never repeats under a key. Reordered,
//! replayed, dropped, truncated or flipped records fail to open. End of stream is a record of
//! its own ([`RecordKind::Eof`]), so a relay that cuts the connection early is detected.

use bytes::{Buf, BufMut, BytesMut};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

/// Largest plaintext in one record (16 KiB).
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;

/// Bytes of the record header.
pub const RECORD_HEADER_LEN: usize = 2;

const TAG_LEN: usize = 16;

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
    /// 2^64 records were sent under one key.
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

/// Seals records in one direction.
pub struct Sealer {
    key: LessSafeKey,
    counter: u64,
}

impl Sealer {
    /// A sealer for a 32-byte key.
    pub fn new(k: &[u8; 32]) -> Self {
        Self {
            key: key(k),
            counter: 0,
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
        let counter = self.counter;
        self.counter = counter
            .checked_add(1)
            .ok_or(RecordError::CounterExhausted)?;
        let ct_len = payload.len() + 1 + TAG_LEN;
        let header = (ct_len as u16).to_be_bytes();
        dst.reserve(RECORD_HEADER_LEN + ct_len);
        dst.put_slice(&header);
        let start = dst.len();
        dst.put_slice(payload);
        dst.put_u8(kind as u8);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::from(header), &mut dst[start..])
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
    key: LessSafeKey,
    counter: u64,
}

impl Opener {
    /// An opener for a 32-byte key.
    pub fn new(k: &[u8; 32]) -> Self {
        Self {
            key: key(k),
            counter: 0,
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
        let counter = self.counter;
        self.counter = counter
            .checked_add(1)
            .ok_or(RecordError::CounterExhausted)?;
        let plain_len = self
            .key
            .open_in_place(nonce(counter), Aad::from(header), &mut body)
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
