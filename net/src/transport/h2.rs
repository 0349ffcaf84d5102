//! TLS 1.3 over TCP with HTTP/2 streams as the multiplexer (the `h2` crate).
//!
//! Placeholder interface; the implementation lands in the next commit.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// One HTTP/2 connection over TLS, in either role.
#[derive(Clone)]
pub struct H2Connection {}

/// One HTTP/2 stream used as a bidirectional byte pipe.
pub struct H2Stream {}

fn unsupported() -> io::Error {
    io::Error::other("TLS/TCP streams are not built yet")
}

/// Starts HTTP/2 as the client (the end that opens streams) over an established TLS stream.
///
/// # Errors
/// The HTTP/2 handshake failed.
pub async fn opener<T>(_io: T) -> io::Result<H2Connection>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Err(unsupported())
}

/// Starts HTTP/2 as the server (the end that accepts streams) over an established TLS stream.
///
/// # Errors
/// The HTTP/2 handshake failed.
pub async fn acceptor<T>(_io: T) -> io::Result<H2Connection>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    Err(unsupported())
}

impl H2Connection {
    /// Opens a stream (opener only).
    ///
    /// # Errors
    /// Closed, or this end is the acceptor.
    pub async fn open(&self) -> io::Result<H2Stream> {
        Err(unsupported())
    }

    /// Waits for the peer's next stream (acceptor only).
    ///
    /// # Errors
    /// Closed, or this end is the opener.
    pub async fn accept(&self) -> io::Result<H2Stream> {
        Err(unsupported())
    }

    /// Closes the connection, with `code` in a GOAWAY where the role can send one.
    pub fn close(&self, _code: u32) {}

    /// Completes when the connection has closed.
    pub async fn closed(&self) {}

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        true
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Err(unsupported()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(unsupported()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(unsupported()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Err(unsupported()))
    }
}
