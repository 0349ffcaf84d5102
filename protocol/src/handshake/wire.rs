//! The bytes of one handshake: what arrived and is not yet read, what is to be sent, and the
//! record keys once the end-to-end channel exists.
//!
//! Before the keys, messages are frames ([`crate::frame`]); after, they are AEAD records
//! ([`crate::e2e::record`]) carrying control messages. Input may arrive in any fragments; what
//! is buffered is bounded, so a peer that sends ahead cannot make a machine grow.

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};

use crate::e2e::keys::TunnelKeys;
use crate::e2e::record::{RecordError, RecordKind};
use crate::frame::{decode_frame, decode_payload, encode_frame, FRAME_HEADER_LEN, MAX_FRAME_LEN};

/// Most bytes a machine holds unread: two whole frames or records. A handshake peer never has
/// more than one message in flight ahead of an answer, and the client's first record may ride
/// behind its last frame.
pub const MAX_BUFFERED: usize = 2 * (FRAME_HEADER_LEN + MAX_FRAME_LEN);

/// Why input could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// More bytes arrived than a handshake may have in flight.
    #[error("the peer sent more than {MAX_BUFFERED} bytes ahead")]
    Flooded,
    /// A frame or a record's control message did not decode.
    #[error("malformed handshake message")]
    Malformed,
    /// A record failed to open (tampered, reordered, replayed).
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A record arrived that is not a control message (data, or an end of stream).
    #[error("unexpected record in the handshake")]
    Unexpected,
}

/// Input and output buffers, and the record keys once they exist.
#[derive(Default)]
pub struct Wire {
    input: BytesMut,
    output: BytesMut,
    keys: Option<TunnelKeys>,
}

impl Wire {
    /// Appends bytes from the peer.
    ///
    /// # Errors
    /// [`WireError::Flooded`] when more than [`MAX_BUFFERED`] bytes would be held unread.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        if self.input.len().saturating_add(bytes.len()) > MAX_BUFFERED {
            return Err(WireError::Flooded);
        }
        self.input.extend_from_slice(bytes);
        Ok(())
    }

    /// Whether any bytes are held unread.
    pub fn has_input(&self) -> bool {
        !self.input.is_empty()
    }

    /// The next whole frame, if it has arrived.
    ///
    /// # Errors
    /// [`WireError::Malformed`] for an oversize or undecodable frame.
    pub fn frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        decode_frame(&mut self.input).map_err(|_| WireError::Malformed)
    }

    /// The next control message inside a record, if a whole record has arrived.
    ///
    /// # Errors
    /// Any [`WireError`]; also [`WireError::Unexpected`] before the keys exist.
    pub fn control<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let Some(keys) = self.keys.as_mut() else {
            return Err(WireError::Unexpected);
        };
        let Some(record) = keys.opener.open(&mut self.input)? else {
            return Ok(None);
        };
        match record.kind {
            RecordKind::Control => decode_payload(&record.payload)
                .map(Some)
                .map_err(|_| WireError::Malformed),
            RecordKind::Data | RecordKind::Eof => Err(WireError::Unexpected),
        }
    }

    /// Queues one frame.
    pub fn send_frame<T: Serialize>(&mut self, msg: &T) {
        // Every handshake message is far below the frame cap; encoding cannot fail for them.
        let _ = encode_frame(msg, &mut self.output);
    }

    /// Queues a control message in a record. Does nothing before the keys exist.
    pub fn send_control<T: Serialize>(&mut self, msg: &T) {
        let Some(keys) = self.keys.as_mut() else {
            return;
        };
        if let Ok(payload) = postcard::to_allocvec(msg) {
            let _ = keys
                .sealer
                .seal(RecordKind::Control, &payload, &mut self.output);
        }
    }

    /// Queues an authenticated end of stream. Does nothing before the keys exist.
    pub fn send_eof(&mut self) {
        if let Some(keys) = self.keys.as_mut() {
            let _ = keys.sealer.seal(RecordKind::Eof, &[], &mut self.output);
        }
    }

    /// Starts the record layer: every later message is a record.
    pub fn start_records(&mut self, keys: TunnelKeys) {
        self.keys = Some(keys);
    }

    /// The bytes to send, if any.
    pub fn take_output(&mut self) -> Option<BytesMut> {
        (!self.output.is_empty()).then(|| self.output.split())
    }

    /// The record keys and the bytes read past the handshake, for the tunnel that follows.
    pub fn into_tunnel(self) -> Option<(TunnelKeys, BytesMut)> {
        self.keys.map(|keys| (keys, self.input))
    }
}
