//! One HTTP/2 stream as a bidirectional byte pipe: reads release window only for bytes taken,
//! writes take only the capacity granted, shutdown is a half-close.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::{RecvStream, SendStream};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{stream_error, Alive, LINGER};

/// One HTTP/2 stream used as a bidirectional byte pipe.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: Recv,
    /// Received bytes the reader has not taken yet; their window is released as it does.
    chunk: Bytes,
    /// Our end-of-stream has been queued.
    write_closed: bool,
    /// We opened it (the HTTP/2 client's side), so dropping it lingers.
    opener: bool,
    _alive: Arc<Alive>,
}

pub(super) enum Recv {
    /// The opener's stream before the answer arrived.
    Response(ResponseFuture),
    /// The peer's bytes.
    Body(RecvStream),
    /// The peer's end of stream has been read.
    Done,
    /// Reading failed; every later read fails the same way.
    Failed(io::ErrorKind),
}

impl fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "H2Stream({})", self.send.stream_id().as_u32())
    }
}

impl H2Stream {
    pub(super) fn new(send: SendStream<Bytes>, recv: Recv, alive: Arc<Alive>) -> Self {
        Self {
            opener: matches!(recv, Recv::Response(_)),
            send,
            recv,
            chunk: Bytes::new(),
            write_closed: false,
            _alive: alive,
        }
    }

    fn fail_read<T>(&mut self, error: io::Error) -> Poll<io::Result<T>> {
        self.recv = Recv::Failed(error.kind());
        Poll::Ready(Err(error))
    }

    /// Why a stream that can no longer send stopped.
    fn send_stopped(&mut self, cx: &mut Context<'_>) -> io::Error {
        match self.send.poll_reset(cx) {
            Poll::Ready(Ok(reason)) => io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the peer reset the stream ({reason})"),
            ),
            Poll::Ready(Err(e)) => stream_error(e, io::ErrorKind::BrokenPipe),
            Poll::Pending => io::Error::new(io::ErrorKind::BrokenPipe, "the stream has ended"),
        }
    }
}

impl H2Stream {
    /// Takes up to `max` of the peer's bytes without copying them (`None` at its end of
    /// stream), releasing their flow-control window: the caller holds them from now on.
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        loop {
            match &mut self.recv {
                Recv::Response(response) => match ready!(Pin::new(response).poll(cx)) {
                    Ok(answer) if answer.status() == StatusCode::OK => {
                        self.recv = Recv::Body(answer.into_body());
                    }
                    Ok(answer) => {
                        let status = answer.status();
                        return self.fail_read(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("the peer refused the stream: HTTP {status}"),
                        ));
                    }
                    Err(e) => {
                        return self.fail_read(stream_error(e, io::ErrorKind::ConnectionReset))
                    }
                },
                Recv::Body(body) => {
                    if self.chunk.is_empty() {
                        match ready!(body.poll_data(cx)) {
                            Some(Ok(data)) => self.chunk = data,
                            Some(Err(e)) => {
                                return self
                                    .fail_read(stream_error(e, io::ErrorKind::ConnectionReset))
                            }
                            None => self.recv = Recv::Done,
                        }
                        continue;
                    }
                    let taken = self.chunk.split_to(self.chunk.len().min(max));
                    // Only now may the peer send these bytes again. A failure means the
                    // stream is gone, which the next read reports.
                    let _ = body.flow_control().release_capacity(taken.len());
                    return Poll::Ready(Ok(Some(taken)));
                }
                Recv::Done => return Poll::Ready(Ok(None)),
                Recv::Failed(kind) => {
                    return Poll::Ready(Err(io::Error::new(*kind, "the stream failed")))
                }
            }
        }
    }

    /// Queues a prefix of `chunk` (at least one byte, as much as the windows and our send
    /// buffer allow) without copying it, and advances `chunk` past it.
    pub fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        if chunk.is_empty() {
            return Poll::Ready(Ok(()));
        }
        let n = ready!(self.poll_send_capacity(cx, chunk.len()))?;
        self.send
            .send_data(chunk.split_to(n), false)
            .map_err(|e| stream_error(e, io::ErrorKind::BrokenPipe))?;
        Poll::Ready(Ok(()))
    }

    /// Waits until at least one of `wanted` bytes may be queued; gives how many may.
    /// Capacity is what both windows and our send buffer allow: never more is queued.
    fn poll_send_capacity(
        &mut self,
        cx: &mut Context<'_>,
        wanted: usize,
    ) -> Poll<io::Result<usize>> {
        if self.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        loop {
            let capacity = self.send.capacity();
            if capacity > 0 {
                return Poll::Ready(Ok(capacity.min(wanted)));
            }
            self.send.reserve_capacity(wanted);
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Poll::Ready(Err(stream_error(e, io::ErrorKind::BrokenPipe)))
                }
                None => return Poll::Ready(Err(self.send_stopped(cx))),
            }
        }
    }
}

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(chunk) = ready!(self.get_mut().poll_read_chunk(cx, buf.remaining()))? {
            buf.put_slice(&chunk);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() && !this.write_closed {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(this.poll_send_capacity(cx, buf.len()))?;
        this.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(|e| stream_error(e, io::ErrorKind::BrokenPipe))?;
        Poll::Ready(Ok(n))
    }

    /// Written bytes are already queued for the connection's driver, which writes them out.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Queues our end of stream (an empty DATA frame ending it): the peer reads EOF after our
    /// last byte and can still write back.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            this.send
                .send_data(Bytes::new(), true)
                .map_err(|e| stream_error(e, io::ErrorKind::BrokenPipe))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for H2Stream {
    fn drop(&mut self) {
        // End our side as quinn does on drop, so the peer reads every byte we wrote and then
        // EOF.
        if !self.write_closed {
            let _ = self.send.send_data(Bytes::new(), true);
        }
        if let Recv::Body(body) = &mut self.recv {
            if !self.chunk.is_empty() {
                let _ = body.flow_control().release_capacity(self.chunk.len());
            }
        }
        // If the peer's side is still open, h2 resets the stream once we let go: we read no
        // more. An acceptor's reset (NO_ERROR) waits for our queued bytes; an opener's
        // (CANCEL) discards them, so an opener holds on until the peer ends its side or
        // [`LINGER`] passes, reading and dropping what comes.
        let unfinished = match std::mem::replace(&mut self.recv, Recv::Done) {
            Recv::Response(response) => Some(Recv::Response(response)),
            Recv::Body(body) if !body.is_end_stream() && self.opener => Some(Recv::Body(body)),
            _ => None,
        };
        if let (Some(recv), Ok(runtime)) = (unfinished, tokio::runtime::Handle::try_current()) {
            // The receiving half alone keeps h2 from resetting the stream, and `alive` the
            // connection from closing.
            let alive = self._alive.clone();
            runtime.spawn(async move {
                let _ = tokio::time::timeout(LINGER, discard(recv)).await;
                drop(alive);
            });
        }
    }
}

/// Reads and drops the peer's bytes until its end of stream or an error.
async fn discard(mut recv: Recv) {
    if let Recv::Response(response) = recv {
        match response.await {
            Ok(answer) => recv = Recv::Body(answer.into_body()),
            Err(_) => return,
        }
    }
    if let Recv::Body(mut body) = recv {
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
        }
    }
}
