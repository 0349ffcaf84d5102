//! A stream that speaks typed frames, with a deadline on every read a peer could stall.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use telework_protocol::frame::{decode_frame, encode_frame, DecodeError, EncodeError};

/// Bytes asked of the socket per read while waiting for a frame.
const READ_CHUNK: usize = 512;

/// Why a framed read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a valid message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// We could not encode a message (a bug).
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The peer closed the connection.
    #[error("the connection was closed")]
    Closed,
    /// The peer did not send a whole message in time.
    #[error("timed out waiting for the peer")]
    Timeout,
}

/// A byte stream plus the read buffer that frames are cut from.
pub struct Framed<S> {
    io: S,
    buf: BytesMut,
}

impl<S> Framed<S> {
    /// Wraps a stream.
    pub fn new(io: S) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Wraps a stream whose first bytes were already read into `buf`.
    pub fn with_buffer(io: S, buf: BytesMut) -> Self {
        Self { io, buf }
    }

    /// The stream inside.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// Gives back the stream and any bytes read past the last frame.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.io, self.buf)
    }
}

impl<S: AsyncRead + Unpin> Framed<S> {
    /// Reads the next message. Cancel-safe: a partly read frame stays in the buffer.
    ///
    /// # Errors
    /// [`FrameError::Closed`] at end of stream, [`FrameError::Decode`] for bad bytes.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        loop {
            if let Some(msg) = decode_frame(&mut self.buf)? {
                return Ok(msg);
            }
            // Small reads: control messages are tiny, and an idle connection should not hold a
            // large buffer. `decode_frame` reserves the whole frame once its length is known.
            self.buf.reserve(READ_CHUNK);
            if self.io.read_buf(&mut self.buf).await? == 0 {
                return Err(FrameError::Closed);
            }
        }
    }

    /// Reads the next message, failing with [`FrameError::Timeout`] after `limit`.
    ///
    /// # Errors
    /// As [`Framed::read`], plus [`FrameError::Timeout`].
    pub async fn read_within<T: DeserializeOwned>(
        &mut self,
        limit: Duration,
    ) -> Result<T, FrameError> {
        tokio::time::timeout(limit, self.read())
            .await
            .map_err(|_| FrameError::Timeout)?
    }
}

impl<S: AsyncWrite + Unpin> Framed<S> {
    /// Writes one message and flushes it.
    ///
    /// # Errors
    /// [`FrameError::Io`] if the socket fails.
    pub async fn write<T: Serialize>(&mut self, msg: &T) -> Result<(), FrameError> {
        let mut out = BytesMut::new();
        encode_frame(msg, &mut out)?;
        self.io.write_all(&out).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Ends our side of the stream (the peer reads end of stream; it may still write).
    ///
    /// # Errors
    /// [`FrameError::Io`] if the socket fails.
    pub async fn shutdown(&mut self) -> Result<(), FrameError> {
        self.io.shutdown().await?;
        Ok(())
    }
}
