//! Copying bytes between a paired client and agent. The relay cannot read them: they are the
//! end-to-end handshake and AEAD records.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

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
        None => {
            tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut agent,
                SPLICE_BUFFER,
                SPLICE_BUFFER,
            )
            .await
        }
        Some(tap) => {
            let mut client = Tapped {
                inner: client,
                tap: tap.clone(),
            };
            let mut agent = Tapped { inner: agent, tap };
            tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut agent,
                SPLICE_BUFFER,
                SPLICE_BUFFER,
            )
            .await
        }
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
