//! Copying bytes between a paired client and agent. The relay cannot read them: they are the
//! end-to-end handshake and AEAD records.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::task::ready;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

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

/// Splices two streams until both directions have ended, passing half-closes through.
/// Returns bytes copied client→agent and agent→client.
///
/// # Errors
/// The first socket error on either side.
pub async fn splice(
    mut client: Stream,
    client_left: BytesMut,
    mut agent: Stream,
    agent_left: BytesMut,
    tap: Option<SpliceTap>,
) -> io::Result<(u64, u64)> {
    if let Some(t) = &tap {
        t(&client_left);
        t(&agent_left);
    }
    agent.write_all(&client_left).await?;
    agent.flush().await?;
    client.write_all(&agent_left).await?;
    client.flush().await?;
    match tap {
        None => copy_both_ways(client, agent).await,
        Some(tap) => {
            let client = Tapped {
                inner: client,
                tap: tap.clone(),
            };
            let agent = Tapped { inner: agent, tap };
            copy_both_ways(client, agent).await
        }
    }
}

/// Bytes read at once per direction. Bounded: a slow reader slows the writer through TCP
/// backpressure.
pub const SPLICE_BUFFER: usize = 64 * 1024;

/// Copies `a`→`b` and `b`→`a` until both directions end; an end of stream on one side shuts
/// down the other side's writing half. Both directions run in one future, with no lock
/// between them.
async fn copy_both_ways<A, B>(mut a: A, mut b: B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    std::future::poll_fn(|cx| {
        let forward = a_to_b.poll(cx, &mut a, &mut b)?;
        let back = b_to_a.poll(cx, &mut b, &mut a)?;
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
    /// Read but not yet written. Allocated when bytes may come and never zero-filled, and
    /// given back whenever the source has nothing more for now, so an idle session holds
    /// none (an idle relay holds thousands of these). Whole records at a time: one read
    /// takes every decrypted record waiting, and one write sends them on.
    buf: BytesMut,
    /// Bytes written since the last flush. A TLS writer may accept bytes it could not send
    /// yet; they must be flushed before waiting for more input, or they would wait with us.
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
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            match self.state {
                DirectionState::Copying => {
                    if self.buf.is_empty() {
                        self.buf.reserve(SPLICE_BUFFER);
                        match tokio_util::io::poll_read_buf(Pin::new(&mut *from), cx, &mut self.buf)
                        {
                            Poll::Ready(Ok(0)) => {
                                self.state = DirectionState::ShuttingDown;
                                continue;
                            }
                            Poll::Ready(Ok(_)) => {}
                            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                            Poll::Pending => {
                                // Idle: give the buffer back, so an idle session holds no
                                // 64 KiB per direction (a burst allocates it again).
                                self.buf = BytesMut::new();
                                if self.unflushed {
                                    ready!(Pin::new(&mut *to).poll_flush(cx))?;
                                    self.unflushed = false;
                                }
                                return Poll::Pending;
                            }
                        }
                    }
                    let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.buf.advance(n);
                    self.unflushed = true;
                    self.total += n as u64;
                }
                DirectionState::ShuttingDown => {
                    ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
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

impl<S: AsyncRead + Unpin> AsyncRead for Tapped<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, data))?;
        (self.tap)(&data[..n]);
        Poll::Ready(Ok(n))
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
    use telework_net::holds_until_flush::HoldsUntilFlush;
    use tokio::io::{AsyncReadExt, DuplexStream};

    /// One side of the splice, whose writes are held until flushed, and its peer.
    fn side() -> (HoldsUntilFlush<DuplexStream>, DuplexStream) {
        let (ours, peer) = tokio::io::duplex(1 << 16);
        (HoldsUntilFlush::new(ours), peer)
    }

    #[tokio::test]
    async fn bytes_a_writer_held_are_flushed_while_the_sender_stays_open() {
        let (a, mut a_peer) = side();
        let (b, mut b_peer) = side();
        let splice = tokio::spawn(copy_both_ways(a, b));
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
        let mut rest = Vec::new();
        b_peer.read_to_end(&mut rest).await.unwrap();
        a_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
