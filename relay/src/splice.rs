//! Copying bytes between a paired client and agent. The relay cannot read them: they are the
//! end-to-end handshake and AEAD records.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::conn::RelayStream;

/// Buffer per direction. Bounded: a slow reader slows the writer through TCP backpressure.
pub const SPLICE_BUFFER: usize = 64 * 1024;

/// An observer of every byte the relay forwards, for tests that play a curious relay
/// operator. `None` in production.
pub type SpliceTap = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A paired client and agent, handed to a [`SpliceHook`].
pub struct SplicePair {
    /// The computer ID the client asked for.
    pub id: telework_protocol::ComputerId,
    /// The client's connection.
    pub client: RelayStream,
    /// Bytes already read from the client.
    pub client_left: BytesMut,
    /// The agent's tunnel connection.
    pub agent: RelayStream,
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
    mut client: RelayStream,
    client_left: BytesMut,
    mut agent: RelayStream,
    agent_left: BytesMut,
    tap: Option<SpliceTap>,
) -> io::Result<(u64, u64)> {
    if let Some(t) = &tap {
        t(&client_left);
        t(&agent_left);
    }
    agent.write_all(&client_left).await?;
    client.write_all(&agent_left).await?;
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

/// Copies `a`→`b` and `b`→`a` until both directions end; an end of stream on one side shuts
/// down the other side's writing half.
async fn copy_both_ways<A, B>(a: A, b: B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (ar, aw) = tokio::io::split(a);
    let (br, bw) = tokio::io::split(b);
    tokio::try_join!(copy_one_way(ar, bw), copy_one_way(br, aw))
}

/// One direction of a splice. The buffer is allocated on first use and never zero-filled, so
/// a session that carries little costs only the pages its bytes touched (an idle relay holds
/// thousands of these).
async fn copy_one_way<R, W>(mut from: R, mut to: W) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = BytesMut::new();
    let mut total = 0u64;
    loop {
        buf.clear();
        buf.reserve(SPLICE_BUFFER);
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        to.write_all(&buf).await?;
        total += n as u64;
    }
}

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
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &poll {
            (self.tap)(&buf.filled()[before..]);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tapped<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
