//! TLS 1.3 over TCP with HTTP/2 streams as the multiplexer (the `h2` crate).
//!
//! One stream is one HTTP/2 request: `POST` with a streaming body, answered by `200` with a
//! streaming body. The request body carries the opener's bytes and the response body the
//! acceptor's, so a stream is a bidirectional byte pipe, and each direction's end of stream is
//! a half-close. To a TLS-inspecting proxy this is an ordinary long-running HTTPS upload and
//! download, as cloudflared's HTTP/2 fallback is.
//!
//! - [`opener`] starts the HTTP/2 client over an established TLS stream, [`acceptor`] (or
//!   [`acceptor_with_max_streams`]) the server. Each spawns a task that drives the connection.
//! - [`H2Connection`] opens ([`H2Connection::open`], opener only) or accepts
//!   ([`H2Connection::accept`], acceptor only) streams, and closes the connection.
//! - [`H2Stream`] is the byte pipe, `AsyncRead + AsyncWrite`; shutting it down half-closes.
//!
//! Every buffer is bounded. A writer gets only the flow-control capacity the peer's window and
//! [`MAX_SEND_BUFFER`] allow, so a slow reader holds the writer back; a reader releases window
//! only for bytes its caller has taken. Streams the peer opens wait in a queue of at most
//! [`ACCEPT_BACKLOG`] for [`H2Connection::accept`], and at most the acceptor's stream limit
//! are open at once: beyond it, the opener's [`H2Connection::open`] waits.
//!
//! Dropping a stream ends its write side as a shutdown does (as dropping a quinn stream does),
//! and tells the peer we read no more. The connection lives while any handle or stream does.

use std::fmt;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::client::{ResponseFuture, SendRequest};
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::quic;

/// Most bytes one stream may have in flight towards us: the same bound as on QUIC, about a
/// bandwidth-delay product for a desktop stream (1 MiB covers 80 Mbit/s at 100 ms).
pub const STREAM_WINDOW: u32 = quic::STREAM_WINDOW;

/// Most bytes all streams of one connection may have in flight towards us, as on QUIC.
pub const CONNECTION_WINDOW: u32 = quic::CONNECTION_WINDOW;

/// Largest HTTP/2 frame we accept, so the peer's DATA frames are at most this. 64 KiB matches
/// the pump's writes and halves the per-frame work against the protocol's 16 KiB default.
pub const MAX_FRAME_SIZE: u32 = 64 * 1024;

/// Most bytes one stream may have queued inside HTTP/2 but not yet written to TLS. Enough to
/// keep the socket busy between two wake-ups of the writer (four 64 KiB writes); the peer's
/// windows bound what is in flight beyond it.
pub const MAX_SEND_BUFFER: usize = 256 * 1024;

/// Most streams a peer may have open towards an acceptor at once, by default (the same as on
/// QUIC). An agent accepts one stream per tunnel, so it passes its own tunnel cap to
/// [`acceptor_with_max_streams`].
pub const MAX_STREAMS: u32 = quic::MAX_STREAMS;

/// Largest header block we accept. Our requests carry four pseudo-headers, nothing else; this
/// leaves room for what a proxy adds and keeps a peer from making us buffer megabytes.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Streams we reset and still remember, to ignore the frames already on their way. Our streams
/// end by end-of-stream, not reset, so few are ever reset; this bounds the memory if a peer
/// makes us reset many.
pub const MAX_RESET_STREAMS: usize = 16;

/// Streams the peer may open and reset before we accept them, before the connection is closed
/// as abusive (the HTTP/2 "rapid reset" attack).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 16;

/// Streams the acceptor's driver has taken from HTTP/2 that [`H2Connection::accept`] has not
/// yet taken. When full, the driver stops taking them, so they count against the stream limit
/// and the opener waits.
pub const ACCEPT_BACKLOG: usize = 64;

/// How long a closing connection may take to send its GOAWAY before the socket is dropped.
pub const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// How long a dropped opener's stream may wait for the peer to end its side, so that the bytes
/// it queued are sent (see [`H2Stream`]'s drop). Long enough for queued bytes to leave; short,
/// because meanwhile the peer's bytes are read and dropped.
pub const LINGER: Duration = Duration::from_secs(1);

/// The request every stream is: the host is never resolved (`.invalid`), only shown to a
/// proxy that looks.
const REQUEST_URI: &str = "https://telework.invalid/stream";

/// HTTP/2 client (the end that opens streams) over an established TLS stream. The handshake
/// only sends the preface; the caller bounds it with its handshake deadline all the same.
///
/// # Errors
/// The HTTP/2 handshake failed.
pub async fn opener<T>(io: T) -> io::Result<H2Connection>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_reset_streams(MAX_RESET_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| connection_error(e, "HTTP/2 handshake failed"))?;
    let shared = Arc::new(Shared::default());
    let driver = shared.clone();
    tokio::spawn(
        async move {
            tokio::select! {
                biased;
                () = driver.shutdown.cancelled() => {}
                ended = conn => {
                    if let Err(error) = ended {
                        tracing::debug!(%error, "HTTP/2 connection ended");
                    }
                }
            }
            // Dropping the connection drops the TLS stream and closes the socket.
            driver.done.cancel();
        }
        .in_current_span(),
    );
    Ok(H2Connection::new(
        shared,
        Role::Opener(Arc::new(Mutex::new(send))),
    ))
}

/// HTTP/2 server (the end that accepts streams) over an established TLS stream, allowing the
/// peer [`MAX_STREAMS`] open streams.
///
/// # Errors
/// The HTTP/2 handshake failed (the caller bounds it with its handshake deadline: it waits for
/// the peer's preface).
pub async fn acceptor<T>(io: T) -> io::Result<H2Connection>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    acceptor_with_max_streams(io, MAX_STREAMS).await
}

/// [`acceptor`] allowing the peer `max_streams` open streams at once (an agent: its tunnel
/// cap). A stream counts from its request until both ends have ended it, accepted or not.
///
/// # Errors
/// The HTTP/2 handshake failed.
pub async fn acceptor_with_max_streams<T>(io: T, max_streams: u32) -> io::Result<H2Connection>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(max_streams)
        .max_concurrent_reset_streams(MAX_RESET_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| connection_error(e, "HTTP/2 handshake failed"))?;
    let shared = Arc::new(Shared::default());
    let (tx, rx) = mpsc::channel(ACCEPT_BACKLOG);
    let handle = H2Connection::new(shared.clone(), Role::Acceptor(Arc::new(Mutex::new(rx))));
    let alive = Arc::downgrade(&handle.alive);
    tokio::spawn(serve(conn, tx, alive, shared).in_current_span());
    Ok(handle)
}

/// The acceptor's driver: answers each request with `200` and queues it as a stream, until the
/// connection ends or is closed.
async fn serve<T>(
    mut conn: h2::server::Connection<T, Bytes>,
    tx: mpsc::Sender<H2Stream>,
    alive: Weak<Alive>,
    shared: Arc<Shared>,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    // A stream the backlog had no room for. While it waits, the connection is still driven
    // (open streams keep flowing) but no further stream is taken.
    let mut waiting: Option<H2Stream> = None;
    let ended = loop {
        if let Some(stream) = waiting.take() {
            tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => break None,
                permit = tx.reserve() => match permit {
                    Ok(permit) => permit.send(stream),
                    Err(_) => break None,
                },
                ended = poll_fn(|cx| conn.poll_closed(cx)) => break Some(ended),
            }
            continue;
        }
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break None,
            next = conn.accept() => match next {
                None => break Some(Ok(())),
                Some(Err(error)) => break Some(Err(error)),
                Some(Ok((request, respond))) => {
                    let Some(stream) = answer(request, respond, &alive) else {
                        continue;
                    };
                    match tx.try_send(stream) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(stream)) => waiting = Some(stream),
                        Err(mpsc::error::TrySendError::Closed(_)) => break None,
                    }
                }
            },
        }
    };
    drop(waiting);
    match ended {
        Some(Ok(())) => {}
        Some(Err(error)) => tracing::debug!(%error, "HTTP/2 connection ended"),
        None => {
            // Closed by us (or every handle dropped): GOAWAY with the reason, then a bounded
            // wait for it to be written.
            let code = shared.code.load(Ordering::Relaxed);
            conn.abrupt_shutdown(Reason::from(code));
            let _ = tokio::time::timeout(CLOSE_FLUSH, poll_fn(|cx| conn.poll_closed(cx))).await;
        }
    }
    drop(conn);
    shared.done.cancel();
}

/// Turns a request into a stream by answering `200`; anything but `POST` is refused.
fn answer(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    alive: &Weak<Alive>,
) -> Option<H2Stream> {
    if request.method() != Method::POST {
        let mut refusal = Response::new(());
        *refusal.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        let _ = respond.send_response(refusal, true);
        return None;
    }
    let alive = alive.upgrade()?;
    let send = respond.send_response(Response::new(()), false).ok()?;
    Some(H2Stream::new(send, Recv::Body(request.into_body()), alive))
}

/// What both ends of the connection's handles and its driver share.
#[derive(Default)]
struct Shared {
    /// Asks the driver to stop (close, or every handle dropped).
    shutdown: CancellationToken,
    /// The driver has stopped: the connection is closed.
    done: CancellationToken,
    /// The code for the GOAWAY, set before `shutdown`.
    code: AtomicU32,
}

/// Held by every connection handle and stream: when the last goes, the connection closes.
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.shutdown.cancel();
    }
}

/// One HTTP/2 connection over TLS, in either role. Clones share the connection.
#[derive(Clone)]
pub struct H2Connection {
    shared: Arc<Shared>,
    alive: Arc<Alive>,
    role: Role,
}

#[derive(Clone)]
enum Role {
    Opener(Arc<Mutex<SendRequest<Bytes>>>),
    Acceptor(Arc<Mutex<mpsc::Receiver<H2Stream>>>),
}

impl fmt::Debug for H2Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let role = match self.role {
            Role::Opener(_) => "opener",
            Role::Acceptor(_) => "acceptor",
        };
        write!(f, "H2Connection({role}, closed: {})", self.is_closed())
    }
}

impl H2Connection {
    fn new(shared: Arc<Shared>, role: Role) -> Self {
        Self {
            alive: Arc::new(Alive(shared.clone())),
            shared,
            role,
        }
    }

    /// Opens a stream (opener only). It returns once the request is on its way, without
    /// waiting for the peer's answer (which the first read awaits), so opening costs no round
    /// trip. While the peer's stream limit is reached, it waits for a stream to end.
    ///
    /// # Errors
    /// Closed, or this end is the acceptor.
    pub async fn open(&self) -> io::Result<H2Stream> {
        let Role::Opener(send) = &self.role else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only the peer opens streams on this connection",
            ));
        };
        if self.is_closed() {
            return Err(closed());
        }
        // One opener at a time, on one shared handle: h2 keeps at most one request queued
        // beyond the peer's stream limit per handle, and we wait for it here (below), so
        // that queue stays at one.
        let mut send = send.lock().await;
        ready(&mut send, &self.shared.shutdown).await?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::from_static(REQUEST_URI);
        let (response, stream) = send
            .send_request(request, false)
            .map_err(|e| connection_error(e, "cannot open a stream"))?;
        // If this request took the peer's last free stream, or is queued beyond the limit,
        // wait until it is on its way: at once in the first case, when a stream ends in the
        // second. Waiting here, before the stream is handed out, matters: h2 wakes one task
        // per stream, and a writer on it would steal this wake-up.
        ready(&mut send, &self.shared.shutdown).await?;
        Ok(H2Stream::new(
            stream,
            Recv::Response(response),
            self.alive.clone(),
        ))
    }

    /// Waits for the peer's next stream (acceptor only).
    ///
    /// # Errors
    /// Closed, or this end is the opener.
    pub async fn accept(&self) -> io::Result<H2Stream> {
        let Role::Acceptor(incoming) = &self.role else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only this end opens streams on this connection",
            ));
        };
        if self.is_closed() {
            return Err(closed());
        }
        incoming.lock().await.recv().await.ok_or_else(closed)
    }

    /// Closes the connection and every stream in it. The acceptor sends a GOAWAY carrying
    /// `code`; the opener (an HTTP/2 client has no GOAWAY with a code in `h2`) drops the
    /// connection, which closes the socket.
    pub fn close(&self, code: u32) {
        if !self.shared.shutdown.is_cancelled() {
            self.shared.code.store(code, Ordering::Relaxed);
            self.shared.shutdown.cancel();
        }
    }

    /// Completes when the connection has closed: by either end, or by a failure.
    pub async fn closed(&self) {
        self.shared.done.cancelled().await;
    }

    /// Whether the connection has closed, or is closing at our request.
    pub fn is_closed(&self) -> bool {
        self.shared.shutdown.is_cancelled() || self.shared.done.is_cancelled()
    }
}

/// Waits until `send` may send a request: its previous one, if queued behind the peer's
/// stream limit, is on its way.
async fn ready(send: &mut SendRequest<Bytes>, shutdown: &CancellationToken) -> io::Result<()> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(closed()),
        ready = poll_fn(|cx| send.poll_ready(cx)) => {
            ready.map_err(|e| connection_error(e, "cannot open a stream"))
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")
}

/// An error of the whole connection, as an `io::Error` that keeps the cause.
fn connection_error(e: h2::Error, what: &str) -> io::Error {
    if e.is_io() {
        if let Some(io) = e.into_io() {
            return io::Error::new(io.kind(), format!("{what}: {io}"));
        }
        return io::Error::other(what.to_owned());
    }
    io::Error::new(io::ErrorKind::ConnectionReset, format!("{what}: {e}"))
}

/// An error of one stream: `kind` (reset or broken pipe, by direction) with the cause.
fn stream_error(e: h2::Error, kind: io::ErrorKind) -> io::Error {
    io::Error::new(kind, e)
}

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

enum Recv {
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
    fn new(send: SendStream<Bytes>, recv: Recv, alive: Arc<Alive>) -> Self {
        Self {
            opener: matches!(recv, Recv::Response(_)),
            send,
            recv,
            chunk: Bytes::new(),
            write_closed: false,
            _alive: alive,
        }
    }

    fn fail_read(&mut self, error: io::Error) -> Poll<io::Result<()>> {
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

impl AsyncRead for H2Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            match &mut this.recv {
                Recv::Response(response) => match ready!(Pin::new(response).poll(cx)) {
                    Ok(answer) if answer.status() == StatusCode::OK => {
                        this.recv = Recv::Body(answer.into_body());
                    }
                    Ok(answer) => {
                        let status = answer.status();
                        return this.fail_read(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("the peer refused the stream: HTTP {status}"),
                        ));
                    }
                    Err(e) => {
                        return this.fail_read(stream_error(e, io::ErrorKind::ConnectionReset))
                    }
                },
                Recv::Body(body) => {
                    if this.chunk.is_empty() {
                        match ready!(body.poll_data(cx)) {
                            Some(Ok(data)) => this.chunk = data,
                            Some(Err(e)) => {
                                return this
                                    .fail_read(stream_error(e, io::ErrorKind::ConnectionReset))
                            }
                            None => this.recv = Recv::Done,
                        }
                        continue;
                    }
                    let n = this.chunk.len().min(buf.remaining());
                    buf.put_slice(&this.chunk[..n]);
                    this.chunk.advance(n);
                    // Only now may the peer send these bytes again. A failure means the
                    // stream is gone, which the next read reports.
                    let _ = body.flow_control().release_capacity(n);
                    return Poll::Ready(Ok(()));
                }
                Recv::Done => return Poll::Ready(Ok(())),
                Recv::Failed(kind) => {
                    return Poll::Ready(Err(io::Error::new(*kind, "the stream failed")))
                }
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            // Capacity is what both windows and our send buffer allow: never more is queued.
            let capacity = this.send.capacity();
            if capacity > 0 {
                let n = capacity.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(|e| stream_error(e, io::ErrorKind::BrokenPipe))?;
                return Poll::Ready(Ok(n));
            }
            this.send.reserve_capacity(buf.len());
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Poll::Ready(Err(stream_error(e, io::ErrorKind::BrokenPipe)))
                }
                None => return Poll::Ready(Err(this.send_stopped(cx))),
            }
        }
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
            // The receiving half alone keeps h2 from resetting the stream.
            runtime.spawn(async move {
                let _ = tokio::time::timeout(LINGER, discard(recv)).await;
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
