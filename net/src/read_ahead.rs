//! A TCP stream that reads ahead in large chunks.
//!
//! rustls asks its transport for at most 4 KiB per read, so a bulk transfer through TLS costs
//! one `recv` per 4 KiB. `ReadAhead` answers those small reads from a 64 KiB buffer filled by
//! one `recv`. The buffer exists only while it holds data or data keeps arriving: it is freed
//! as soon as the socket has nothing more to read, so an idle connection costs nothing extra.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket at once.
pub const READ_AHEAD: usize = 64 * 1024;

/// A [`TcpStream`] with an on-demand read-ahead buffer.
#[derive(Debug)]
pub struct ReadAhead {
    inner: TcpStream,
    /// Read-ahead bytes not yet handed out. No capacity while idle.
    buf: BytesMut,
}

impl ReadAhead {
    /// Wraps a connected socket.
    pub fn new(inner: TcpStream) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
        }
    }

    /// Wraps a connected socket whose first bytes were already read (a proxy's tunnel may
    /// carry the relay's first bytes in the same read as the proxy's answer).
    pub fn with_buffered(inner: TcpStream, already_read: Vec<u8>) -> Self {
        Self {
            inner,
            buf: BytesMut::from(&already_read[..]),
        }
    }

    /// The socket.
    pub fn get_ref(&self) -> &TcpStream {
        &self.inner
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.buf.is_empty() {
                let n = out.remaining().min(this.buf.len());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            // A caller with room for a whole chunk reads straight from the socket.
            if out.remaining() >= READ_AHEAD {
                this.buf = BytesMut::new();
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            match this.inner.poll_read_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more for now: give the memory back while we wait.
                    this.buf = BytesMut::new();
                    return Poll::Pending;
                }
            }
            // Uninitialised spare capacity: the kernel touches only the pages it fills. Reading
            // through the socket's own `poll_read` lets tokio treat a short read as "drained",
            // which saves the `recv` that would only say "would block".
            this.buf.reserve(READ_AHEAD);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf) {
                Poll::Ready(Ok(0)) => {
                    this.buf = BytesMut::new();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    this.buf = BytesMut::new();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_idle_frees_the_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let writer = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
            s.write_all(&data).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let mut r = ReadAhead::new(TcpStream::connect(addr).await.unwrap());
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = r.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got.len(), 300_000);
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 253) as u8));
        assert_eq!(r.buf.capacity(), 0, "buffer freed at end of stream");
    }
}
