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
use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::quic;

mod keepalive;
mod stream;

pub use stream::H2Stream;
use stream::Recv;

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
    let (send, mut conn) = h2::client::Builder::new()
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
    if let Some(ping_pong) = conn.ping_pong() {
        tokio::spawn(keepalive::keep_alive(ping_pong, shared.clone()).in_current_span());
    }
    let driver = shared.clone();
    tokio::spawn(
        async move {
            tokio::select! {
                biased;
                () = driver.shutdown.cancelled() => {}
                ended = conn => {
                    if let Err(error) = ended {
                        tracing::debug!(%error, "HTTP/2 connection ended");
                        if error.is_go_away() && error.is_remote() {
                            if let Some(reason) = error.reason() {
                                driver.peer_code.store(u32::from(reason), Ordering::Relaxed);
                            }
                        }
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
    let mut conn = h2::server::Builder::new()
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
    if let Some(ping_pong) = conn.ping_pong() {
        tokio::spawn(keepalive::keep_alive(ping_pong, shared.clone()).in_current_span());
    }
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
    /// The code of the peer's GOAWAY, if it closed the connection with one (0: none).
    peer_code: AtomicU32,
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

    /// The code the peer closed the connection with, if it sent one (only an acceptor's
    /// GOAWAY carries a code).
    pub fn peer_close_code(&self) -> Option<u32> {
        match self.shared.peer_code.load(Ordering::Relaxed) {
            0 => None,
            code => Some(code),
        }
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
