//! What the agent's and the client's handshake drivers share: time as the machines see it
//! (the Unix time when a handshake starts, advanced by a monotonic clock, so a wall-clock step
//! mid-handshake cannot move a deadline), and one step of IO each way.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::framed::FrameError;

/// A handshake's clock.
pub struct MachineClock {
    base_unix: Duration,
    base: tokio::time::Instant,
}

impl MachineClock {
    /// Starts the clock now.
    pub fn start() -> Self {
        Self {
            base_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default(),
            base: tokio::time::Instant::now(),
        }
    }

    /// Now, as the time since the Unix epoch the machines take.
    pub fn now(&self) -> Duration {
        self.base_unix + self.base.elapsed()
    }

    /// The instant a machine's deadline `at` (time since the Unix epoch) falls on.
    pub fn instant(&self, at: Duration) -> tokio::time::Instant {
        self.base + at.saturating_sub(self.base_unix)
    }
}

/// What one wait for the peer brought.
pub enum Input {
    /// This many bytes, at the start of the buffer.
    Bytes(usize),
    /// Nothing before the machine's deadline.
    Deadline,
}

/// Writes what a machine queued, and flushes it.
///
/// # Errors
/// [`FrameError::Io`].
pub async fn send<S: AsyncWrite + Unpin>(io: &mut S, out: &[u8]) -> Result<(), FrameError> {
    io.write_all(out).await?;
    io.flush().await?;
    Ok(())
}

/// Waits for the peer's next bytes into `buf` until `deadline`.
///
/// # Errors
/// [`FrameError::Closed`] at end of stream, [`FrameError::Io`].
pub async fn receive<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut [u8],
    deadline: tokio::time::Instant,
) -> Result<Input, FrameError> {
    match tokio::time::timeout_at(deadline, io.read(buf)).await {
        Err(_) => Ok(Input::Deadline),
        Ok(Ok(0)) => Err(FrameError::Closed),
        Ok(Ok(n)) => Ok(Input::Bytes(n)),
        Ok(Err(e)) => Err(FrameError::Io(e)),
    }
}
