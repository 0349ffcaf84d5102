//! Passing bytes between a paired client and agent. The relay cannot read them: they are the
//! end-to-end handshake and AEAD records. Chunks go from one transport's receive buffer to the
//! other's send queue as they are, uncopied.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use telework_net::transport::Stream;

/// An observer of every byte the relay forwards, for tests that play a curious relay
/// operator. `None` in production.
pub type SpliceTap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A paired client and agent, handed to a [`SpliceHook`].
pub struct SplicePair {
    /// The computer ID the client asked for.
    pub id: telework_protocol::ComputerId,
    /// The client's stream.
    pub client: Stream,
    /// Bytes already read from the client.
    pub client_left: BytesMut,
    /// The agent's stream.
    pub agent: Stream,
    /// Bytes already read from the agent.
    pub agent_left: BytesMut,
}

/// Replaces the relay's byte copy. Tests use it to play a malicious relay (tamper, replay,
/// reorder, truncate, swap); production never sets it.
pub trait SpliceHook: Send + Sync {
    /// Takes over a paired client and agent until the hook is done with them.
    fn splice(
        &self,
        pair: SplicePair,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

/// Bytes forwarded each way, counted as they go (for the console's live sessions and the
/// metrics), not only when a tunnel ends.
#[derive(Debug, Default)]
pub struct ByteCounts {
    /// Client to agent.
    pub up: AtomicU64,
    /// Agent to client.
    pub down: AtomicU64,
}

impl ByteCounts {
    fn add(&self, up: u64, down: u64) {
        if up > 0 {
            self.up.fetch_add(up, Ordering::Relaxed);
        }
        if down > 0 {
            self.down.fetch_add(down, Ordering::Relaxed);
        }
    }
}

/// Where a splice counts: its session's bytes and the relay's totals (the metrics'); or
/// nowhere, for the benchmark's baseline.
#[derive(Clone, Default)]
pub struct Meters {
    /// Whether to count at all.
    pub off: bool,
    /// The session's.
    pub session: Arc<ByteCounts>,
    /// The relay's, client to agent.
    pub up: Counter,
    /// The relay's, agent to client.
    pub down: Counter,
}

impl Meters {
    fn add(&self, up: u64, down: u64) {
        if self.off {
            return;
        }
        self.session.add(up, down);
        if up > 0 {
            self.up.inc_by(up);
        }
        if down > 0 {
            self.down.inc_by(down);
        }
    }
}

/// Splices two streams until both directions have ended, passing half-closes through and
/// counting every byte in `meters`. Returns bytes copied client→agent and agent→client.
///
/// # Errors
/// The first socket error on either side.
pub async fn splice(
    mut client: Stream,
    client_left: BytesMut,
    mut agent: Stream,
    agent_left: BytesMut,
    tap: Option<SpliceTap>,
    meters: Meters,
) -> io::Result<(u64, u64)> {
    if let Some(t) = &tap {
        t(&client_left);
        t(&agent_left);
    }
    agent.write_all(&client_left).await?;
    agent.flush().await?;
    client.write_all(&agent_left).await?;
    client.flush().await?;
    meters.add(client_left.len() as u64, agent_left.len() as u64);
    match tap {
        None => copy_both_ways(client, agent, meters).await,
        Some(tap) => {
            let client = Tapped {
                inner: client,
                tap: tap.clone(),
            };
            let agent = Tapped { inner: agent, tap };
            copy_both_ways(client, agent, meters).await
        }
    }
}

/// Most bytes taken at once per direction. Bounded: a slow reader slows the writer through
/// the transport's flow control.
pub const SPLICE_CHUNK: usize = 64 * 1024;

/// A byte pipe the splice can pass chunks through without copying them.
pub trait ChunkIo: Unpin {
    /// Up to `max` bytes from the peer; `None` at its end of stream.
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>>;
    /// Sends a prefix of `chunk` (at least one byte) and advances `chunk` past it.
    fn poll_write_chunk(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes)
        -> Poll<io::Result<()>>;
    /// Sends what was accepted but held.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ends our side: the peer reads end of stream after our last byte.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl ChunkIo for Stream {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        Stream::poll_read_chunk(self, cx, max)
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        Stream::poll_write_chunk(self, cx, chunk)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_shutdown(cx)
    }
}

/// Copies `a`→`b` and `b`→`a` until both directions end; an end of stream on one side shuts
/// down the other side's writing half. Both directions run in one future, with no lock
/// between them.
async fn copy_both_ways<A: ChunkIo, B: ChunkIo>(
    mut a: A,
    mut b: B,
    meters: Meters,
) -> io::Result<(u64, u64)> {
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    std::future::poll_fn(|cx| {
        let forward = a_to_b.poll(cx, &mut a, &mut b, |n| meters.add(n, 0))?;
        let back = b_to_a.poll(cx, &mut b, &mut a, |n| meters.add(0, n))?;
        match (forward, back) {
            (Poll::Ready(forward), Poll::Ready(back)) => Poll::Ready(Ok((forward, back))),
            _ => Poll::Pending,
        }
    })
    .await
}

/// One direction of a splice.
#[derive(Default)]
struct Direction {
    /// Taken from the source and not yet sent on: the transport's own buffer, passed along
    /// uncopied. An idle direction holds none.
    pending: Bytes,
    /// Bytes written since the last flush. A writer may accept bytes it could not send yet;
    /// they must be flushed before waiting for more input, or they would wait with us.
    unflushed: bool,
    state: DirectionState,
    total: u64,
}

#[derive(Default, PartialEq, Eq)]
enum DirectionState {
    #[default]
    Copying,
    ShuttingDown,
    Done,
}

impl Direction {
    fn poll<R: ChunkIo, W: ChunkIo>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        count: impl Fn(u64),
    ) -> Poll<io::Result<u64>> {
        loop {
            match self.state {
                DirectionState::Copying => {
                    if self.pending.is_empty() {
                        match from.poll_read_chunk(cx, SPLICE_CHUNK) {
                            Poll::Ready(Ok(None)) => {
                                self.state = DirectionState::ShuttingDown;
                                continue;
                            }
                            Poll::Ready(Ok(Some(chunk))) => self.pending = chunk,
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => {
                                if self.unflushed {
                                    ready!(to.poll_flush(cx))?;
                                    self.unflushed = false;
                                }
                                return Poll::Pending;
                            }
                        }
                    }
                    let before = self.pending.len();
                    ready!(to.poll_write_chunk(cx, &mut self.pending))?;
                    self.unflushed = true;
                    let sent = (before - self.pending.len()) as u64;
                    self.total += sent;
                    count(sent);
                }
                DirectionState::ShuttingDown => {
                    ready!(to.poll_shutdown(cx))?;
                    self.state = DirectionState::Done;
                }
                DirectionState::Done => return Poll::Ready(Ok(self.total)),
            }
        }
    }
}

/// Shows the tap every byte written, which is every byte the splice forwards, once.
struct Tapped<S> {
    inner: S,
    tap: SpliceTap,
}

impl<S: ChunkIo> ChunkIo for Tapped<S> {
    fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        self.inner.poll_read_chunk(cx, max)
    }

    fn poll_write_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<()>> {
        let whole = chunk.clone();
        ready!(self.inner.poll_write_chunk(cx, chunk))?;
        (self.tap)(&whole[..whole.len() - chunk.len()]);
        Poll::Ready(Ok(()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_flush(cx)
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Buf;
    use telework_net::holds_until_flush::HoldsUntilFlush;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, DuplexStream};

    /// A byte stream as a [`ChunkIo`], copying.
    struct Copying<S>(S);

    impl<S: AsyncRead + AsyncWrite + Unpin> ChunkIo for Copying<S> {
        fn poll_read_chunk(
            &mut self,
            cx: &mut Context<'_>,
            max: usize,
        ) -> Poll<io::Result<Option<Bytes>>> {
            let mut buf = BytesMut::with_capacity(max);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.0),
                cx,
                &mut buf
            ))?;
            Poll::Ready(Ok((n > 0).then(|| buf.freeze())))
        }

        fn poll_write_chunk(
            &mut self,
            cx: &mut Context<'_>,
            chunk: &mut Bytes,
        ) -> Poll<io::Result<()>> {
            let n = ready!(Pin::new(&mut self.0).poll_write(cx, chunk))?;
            chunk.advance(n);
            Poll::Ready(Ok(()))
        }

        fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    /// One side of the splice, whose writes are held until flushed, and its peer.
    fn side() -> (Copying<HoldsUntilFlush<DuplexStream>>, DuplexStream) {
        let (ours, peer) = tokio::io::duplex(1 << 16);
        (Copying(HoldsUntilFlush::new(ours)), peer)
    }

    #[tokio::test]
    async fn bytes_a_writer_held_are_flushed_while_the_sender_stays_open() {
        let (a, mut a_peer) = side();
        let (b, mut b_peer) = side();
        let meters = Meters::default();
        let splice = tokio::spawn(copy_both_ways(a, b, meters.clone()));
        a_peer.write_all(b"to b").await.unwrap();
        b_peer.write_all(b"to a").await.unwrap();
        // Neither sender closes: the bytes must arrive all the same.
        let mut got = [0u8; 4];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            b_peer.read_exact(&mut got),
        )
        .await
        .expect("bytes held in the writer")
        .unwrap();
        assert_eq!(&got, b"to b");
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            a_peer.read_exact(&mut got),
        )
        .await
        .expect("bytes held in the writer")
        .unwrap();
        assert_eq!(&got, b"to a");
        // End of stream passes on as a half-close, and the totals add up.
        a_peer.shutdown().await.unwrap();
        b_peer.shutdown().await.unwrap();
        let (forward, back) = splice.await.unwrap().unwrap();
        assert_eq!((forward, back), (4, 4));
        assert_eq!(meters.session.up.load(Ordering::Relaxed), 4);
        assert_eq!(meters.down.get(), 4);
        let mut rest = Vec::new();
        b_peer.read_to_end(&mut rest).await.unwrap();
        a_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
