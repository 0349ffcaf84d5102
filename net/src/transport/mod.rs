//! The transport seam: one connection per endpoint, carrying many bidirectional streams.
//!
//! A [`Connection`] opens and accepts [`Stream`]s, gives a channel-binding value (the TLS
//! exporter), reports its peer's address and closes with a reason. The relay, the agent and
//! the client are written once against it. Two implementations sit behind it:
//!
//! - [`quic`]: QUIC with quinn (TLS 1.3 inside, ALPN naming the role and major version);
//! - [`h2`]: TLS 1.3 over TCP, with HTTP/2 streams (the `h2` crate) as the multiplexer, which
//!   a corporate firewall sees as ordinary HTTPS.
//!
//! Who opens streams is fixed by the role, the same on both transports: on an agent's
//! connection the relay opens every stream (the control stream first, then one per tunnel);
//! on a client's connection the client opens every stream. On TLS/TCP the opener is the
//! HTTP/2 client, so an agent is the HTTP/2 server of the connection it dialled (as
//! cloudflared is).

pub mod dial;
pub mod h2;
pub mod network_watch;
pub mod quic;
pub mod tcp;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use telework_protocol::proof::EXPORTER_LEN;
use telework_protocol::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// ALPN ids: the connection's role and the protocol's major version. A relay that does not
/// speak the version fails the handshake with `no_application_protocol`, so old software is
/// told to update instead of failing later.
pub mod alpn {
    /// An agent's connection: registration, presence, and the tunnels the relay opens on it.
    pub const AGENT: &[u8] = b"telework/2-agent";
    /// A client's connection: one stream per tunnel it asks for.
    pub const CLIENT: &[u8] = b"telework/2-client";
    /// Every role a relay serves.
    pub const ALL: [&[u8]; 2] = [AGENT, CLIENT];
}

/// Which end of a connection a program is, which decides who opens streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An office agent: the relay opens streams to it.
    Agent,
    /// A home client: it opens streams to the relay.
    Client,
}

impl Role {
    /// The ALPN id a connection in this role offers.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            Self::Agent => alpn::AGENT,
            Self::Client => alpn::CLIENT,
        }
    }

    /// The role named by a negotiated ALPN id.
    pub fn from_alpn(id: &[u8]) -> Option<Self> {
        match id {
            alpn::AGENT => Some(Self::Agent),
            alpn::CLIENT => Some(Self::Client),
            _ => None,
        }
    }
}

/// The transport a connection runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP with HTTP/2 streams.
    Tcp,
}

impl TransportKind {
    /// The name a person reads: `QUIC` or `TLS/TCP`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quic => "QUIC",
            Self::Tcp => "TLS/TCP",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which transports a program may use to reach the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    /// QUIC first; TLS/TCP joins the race after a short head start.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS/TCP only.
    Tcp,
}

/// Bytes of the channel-binding value: the TLS exporter output the machine-key proof signs.
pub type ChannelBinding = [u8; EXPORTER_LEN];

/// One connection between a program and the relay.
#[derive(Clone)]
pub struct Connection {
    inner: Inner,
    binding: ChannelBinding,
    peer: SocketAddr,
    /// Where a TCP connection was opened from (dialled side only).
    local: Option<std::net::IpAddr>,
    /// Streams of this connection not yet dropped.
    streams: Arc<AtomicUsize>,
}

#[derive(Clone)]
enum Inner {
    Quic(quinn::Connection),
    Tcp(h2::H2Connection),
}

impl Connection {
    pub(crate) fn quic(conn: quinn::Connection, binding: ChannelBinding) -> Self {
        let peer = conn.remote_address();
        Self {
            inner: Inner::Quic(conn),
            binding,
            peer,
            local: None,
            streams: Arc::default(),
        }
    }

    pub(crate) fn tcp(
        conn: h2::H2Connection,
        binding: ChannelBinding,
        peer: SocketAddr,
        local: Option<std::net::IpAddr>,
    ) -> Self {
        Self {
            inner: Inner::Tcp(conn),
            binding,
            peer,
            local,
            streams: Arc::default(),
        }
    }

    /// Whether `other` is a handle on this same connection.
    pub fn same_as(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.streams, &other.streams)
    }

    /// The local address a TCP connection was opened from; `None` on QUIC, whose packets
    /// leave from wherever the route to the peer does ([`network_watch`]).
    pub fn local_ip(&self) -> Option<std::net::IpAddr> {
        self.local
    }

    /// Opens a stream to the peer. Only the opening role may (see the module documentation).
    ///
    /// # Errors
    /// The connection is closed, or this end may not open streams.
    pub async fn open(&self) -> io::Result<Stream> {
        match &self.inner {
            Inner::Quic(c) => {
                let (send, recv) = c.open_bi().await.map_err(io::Error::from)?;
                Ok(Stream::quic(send, recv, self.count()))
            }
            Inner::Tcp(c) => Ok(Stream::tcp(c.open().await?, self.count())),
        }
    }

    /// Waits for the peer to open a stream.
    ///
    /// # Errors
    /// The connection is closed.
    pub async fn accept(&self) -> io::Result<Stream> {
        match &self.inner {
            Inner::Quic(c) => {
                let (send, recv) = c.accept_bi().await.map_err(io::Error::from)?;
                Ok(Stream::quic(send, recv, self.count()))
            }
            Inner::Tcp(c) => Ok(Stream::tcp(c.accept().await?, self.count())),
        }
    }

    fn count(&self) -> StreamCount {
        self.streams.fetch_add(1, Ordering::Relaxed);
        StreamCount(self.streams.clone())
    }

    /// How many of this connection's streams are still held at this end.
    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Waits (up to `limit`) until at most `n` streams are held at this end, so that a
    /// connection is closed only after its tunnels have finished and their last bytes are
    /// out.
    pub async fn drained_to(&self, n: usize, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, async {
            while self.open_streams() > n && !self.is_closed() {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// The TLS exporter value of this connection, the same at both ends: a proof that signs it
    /// is useless on any other connection.
    pub fn channel_binding(&self) -> &ChannelBinding {
        &self.binding
    }

    /// The peer's address (for QUIC, the latest: it may change while the connection lives).
    pub fn peer_addr(&self) -> SocketAddr {
        match &self.inner {
            Inner::Quic(c) => c.remote_address(),
            Inner::Tcp(_) => self.peer,
        }
    }

    /// The transport underneath.
    pub fn kind(&self) -> TransportKind {
        match &self.inner {
            Inner::Quic(_) => TransportKind::Quic,
            Inner::Tcp(_) => TransportKind::Tcp,
        }
    }

    /// Closes the connection and every stream in it, telling the peer `why` where the
    /// transport can carry it.
    pub fn close(&self, why: ErrorCode) {
        match &self.inner {
            Inner::Quic(c) => c.close(quinn::VarInt::from_u32(close_code(why)), b""),
            Inner::Tcp(c) => c.close(close_code(why)),
        }
    }

    /// Closes once the peer has read what we sent: waits up to `grace` for the peer to close
    /// first (it does on a refusal), then closes. A plain [`Connection::close`] may discard
    /// data still unsent, such as the refusal itself.
    pub async fn close_when_read(&self, why: ErrorCode, grace: std::time::Duration) {
        let _ = tokio::time::timeout(grace, self.closed()).await;
        self.close(why);
    }

    /// Completes when the connection has closed, from either end or by a transport failure
    /// (for QUIC, the idle timeout).
    pub async fn closed(&self) {
        match &self.inner {
            Inner::Quic(c) => {
                c.closed().await;
            }
            Inner::Tcp(c) => c.closed().await,
        }
    }

    /// Why the peer closed the connection, if it did so with one of our codes (the relay's
    /// close of a client connection carries one on both transports).
    pub fn peer_close_reason(&self) -> Option<ErrorCode> {
        let code = match &self.inner {
            Inner::Quic(c) => match c.close_reason()? {
                quinn::ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
                _ => return None,
            },
            Inner::Tcp(c) => u64::from(c.peer_close_code()?),
        };
        ErrorCode::from_close_code(code)
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        match &self.inner {
            Inner::Quic(c) => c.close_reason().is_some(),
            Inner::Tcp(c) => c.is_closed(),
        }
    }
}

fn close_code(why: ErrorCode) -> u32 {
    why.close_code()
}

/// One bidirectional stream in a [`Connection`]: a byte pipe with half-close.
pub struct Stream {
    inner: StreamInner,
    _count: StreamCount,
}

/// Counts a stream among its connection's until dropped.
struct StreamCount(Arc<AtomicUsize>);

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum StreamInner {
    Quic {
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
    Tcp(h2::H2Stream),
}

impl Stream {
    fn quic(send: quinn::SendStream, recv: quinn::RecvStream, count: StreamCount) -> Self {
        Self {
            inner: StreamInner::Quic { send, recv },
            _count: count,
        }
    }

    fn tcp(stream: h2::H2Stream, count: StreamCount) -> Self {
        Self {
            inner: StreamInner::Tcp(stream),
            _count: count,
        }
    }

    /// Takes up to `max` of the peer's bytes as they arrived, without copying them; `None`
    /// at the peer's end of stream. For code that passes bytes on unchanged (the relay).
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        match &mut self.inner {
            StreamInner::Quic { recv, .. } => {
                // `read_chunk` keeps no state between polls (quinn: cancel-safe), so a
                // fresh one per poll loses nothing.
                let read = std::pin::pin!(recv.read_chunk(max, true));
                read.poll(cx)
                    .map_ok(|chunk| chunk.map(|c| c.bytes))
                    .map_err(io::Error::from)
            }
            StreamInner::Tcp(s) => s.poll_read_chunk(cx, max),
        }
    }

    /// Sends a prefix of `chunk` (at least one byte) without copying it, and advances `chunk`
    /// past it.
    pub fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        match &mut self.inner {
            StreamInner::Quic { send, .. } => {
                if chunk.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                // `write_chunks` writes nothing unless it completes (quinn: cancel-safe).
                let write = std::pin::pin!(send.write_chunks(std::slice::from_mut(chunk)));
                write.poll(cx).map_ok(|_| ()).map_err(io::Error::from)
            }
            StreamInner::Tcp(s) => s.poll_write_chunk(cx, chunk),
        }
    }
}

impl fmt::Debug for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            StreamInner::Quic { send, .. } => write!(f, "Stream(QUIC {})", send.id()),
            StreamInner::Tcp(_) => f.write_str("Stream(TLS/TCP)"),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Quic { recv, .. } => Pin::new(recv).poll_read(cx, buf),
            StreamInner::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().inner {
            StreamInner::Quic { send, .. } => {
                Pin::new(send).poll_write(cx, buf).map_err(io::Error::from)
            }
            StreamInner::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Quic { send, .. } => Pin::new(send).poll_flush(cx),
            StreamInner::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().inner {
            StreamInner::Quic { send, .. } => Pin::new(send).poll_shutdown(cx),
            StreamInner::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
