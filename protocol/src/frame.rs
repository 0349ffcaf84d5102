//! Length-prefixed frames: the envelope of every control and handshake message.
//!
//! A frame is a 4-byte big-endian payload length followed by the payload, which is the
//! [postcard](https://docs.rs/postcard) encoding of one typed message. The length is checked
//! against a cap before anything is buffered, so a peer cannot make us allocate more than
//! [`MAX_FRAME_LEN`] for one message.

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

/// Largest payload a control or handshake frame may carry (64 KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// Why bytes from a peer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length prefix announced more than [`MAX_FRAME_LEN`] bytes.
    #[error("frame of {0} bytes is over the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The payload was not a valid message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The payload decoded but left bytes unread.
    #[error("malformed message: {0} trailing bytes")]
    Trailing(usize),
}

/// Appends `msg` as one frame to `dst`.
///
/// # Errors
/// Fails only if the encoded message would exceed [`MAX_FRAME_LEN`], which is a bug in the
/// caller (all our messages are bounded well below it).
pub fn encode_frame<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let payload = postcard::to_allocvec(msg).map_err(|e| EncodeError(e.to_string()))?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(EncodeError(format!(
            "{} bytes is over the frame limit",
            payload.len()
        )));
    }
    dst.reserve(FRAME_HEADER_LEN + payload.len());
    dst.put_u32(payload.len() as u32);
    dst.put_slice(&payload);
    Ok(())
}

/// A message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot encode message: {0}")]
pub struct EncodeError(String);

/// Takes one frame off the front of `src` and decodes it.
///
/// Returns `Ok(None)` when `src` does not yet hold a whole frame: read more and call again.
/// On success the frame's bytes are removed from `src`; on `Ok(None)` nothing is consumed.
///
/// # Errors
/// [`DecodeError`] for an oversize length or a malformed payload. The connection should then
/// be closed: framing is lost.
pub fn decode_frame<T: DeserializeOwned>(src: &mut BytesMut) -> Result<Option<T>, DecodeError> {
    let Some(len) = peek_len(src)? else {
        return Ok(None);
    };
    if src.len() < FRAME_HEADER_LEN + len {
        // Reserve now so the next read can fill the frame without regrowing repeatedly.
        src.reserve(FRAME_HEADER_LEN + len - src.len());
        return Ok(None);
    }
    src.advance(FRAME_HEADER_LEN);
    let payload = src.split_to(len);
    decode_payload(&payload).map(Some)
}

/// Reads the length prefix, if it has arrived, and checks it against the cap.
fn peek_len(src: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(header) = src.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge(len));
    }
    Ok(Some(len))
}

/// Decodes one whole payload, rejecting trailing bytes.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    let (msg, rest) =
        postcard::take_from_bytes(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Ping(u64),
        Text(String),
    }

    #[test]
    fn byte_by_byte_decoding_yields_the_message_once() {
        let mut wire = BytesMut::new();
        encode_frame(&Msg::Text("hello".into()), &mut wire).unwrap();
        encode_frame(&Msg::Ping(7), &mut wire).unwrap();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.put_u8(*b);
            while let Some(m) = decode_frame::<Msg>(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![Msg::Text("hello".into()), Msg::Ping(7)]);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_length_is_rejected_before_buffering() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            decode_frame::<Msg>(&mut buf),
            Err(DecodeError::TooLarge(0xffff_ffff))
        );
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        assert!(matches!(
            decode_frame::<Msg>(&mut buf),
            Err(DecodeError::TooLarge(_))
        ));
    }

    #[test]
    fn junk_and_trailing_bytes_are_errors() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[9, 9, 9]);
        assert!(matches!(
            decode_frame::<Msg>(&mut buf),
            Err(DecodeError::Malformed(_))
        ));
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0, 1, 0]);
        assert_eq!(decode_frame::<Msg>(&mut buf), Err(DecodeError::Trailing(1)));
    }

    #[test]
    fn incomplete_frame_consumes_nothing() {
        let mut wire = BytesMut::new();
        encode_frame(&Msg::Ping(1), &mut wire).unwrap();
        let mut partial = BytesMut::from(&wire[..wire.len() - 1]);
        let before = partial.len();
        assert_eq!(decode_frame::<Msg>(&mut partial), Ok(None));
        assert_eq!(partial.len(), before);
    }
}
