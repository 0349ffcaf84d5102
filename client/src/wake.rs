//! Waking an office PC that is asleep, and waiting for it: the library half of
//! `telework connect --wake`, shared with the desktop window.
//!
//! The client asks the relay ([`ClientToRelay::Wake`]); the relay asks an always-on PC of
//! the same office (its *waker*, set up by IT staff) to send the Wake-on-LAN magic packet,
//! answers, and tells the client on the same stream when the PC is online. The client then
//! logs in as usual. The relay limits how often a PC is woken; the answer never says which
//! PC was asked (a stranger would learn another computer ID).

use std::time::Duration;

use telework_net::framed::{FrameError, Framed};
use telework_protocol::messages::{
    ClientToRelay, RelayToClient, WakeAnswer, MAX_WAKE_WAIT_SECS, PROTOCOL_VERSION,
};
use telework_protocol::{ComputerId, ErrorCode};
use tracing::debug;

use crate::error::ClientError;
use crate::session::{link_for, LoginOptions, Target};

/// How long to wait for the PC to come online by default (a PC's firmware, boot and the
/// agent's first connection take most of a minute on ordinary office hardware).
pub const DEFAULT_WAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a waiting client reports progress.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How long the relay may take to answer a wake request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// What happens while waking, for the employee to read (see [`WakeProgress::sentence`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeProgress {
    /// A PC in the office was asked to wake it.
    Asked,
    /// It was asked to wake lately (by this employee or another); not asked again, waiting.
    AlreadyAsked {
        /// When the relay would ask again.
        retry_secs: u16,
    },
    /// Still waiting, this long since the request.
    Waiting {
        /// Time since the request.
        waited: Duration,
    },
    /// It is online (or was already): log in now.
    Online,
}

impl WakeProgress {
    /// The line an employee reads for this step, about the PC `id`.
    pub fn sentence(&self, id: &ComputerId) -> String {
        match self {
            Self::Asked => format!("{id} is offline: asked a PC in its office to wake it"),
            Self::AlreadyAsked { retry_secs } => format!(
                "{id} is offline: it was asked to wake moments ago, so it is not asked again \
                 (another request is possible in {retry_secs} s); waiting for it"
            ),
            Self::Waiting { waited } => {
                format!("waiting for {id} to come online … {} s", waited.as_secs())
            }
            Self::Online => format!("{id} is online"),
        }
    }
}

/// Why a wake did not end with the PC online.
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    /// No PC that can wake it is online (or the ID is not one the relay knows).
    #[error("{0} is offline and no PC in its office can wake it")]
    NoWaker(ComputerId),
    /// It did not come online in time.
    #[error(
        "{id} did not come online within {secs} s; it may not support Wake-on-LAN (IT staff \
         can check its firmware and network card settings)"
    )]
    TimedOut {
        /// The PC.
        id: ComputerId,
        /// How long we waited.
        secs: u64,
    },
    /// The relay runs a version without Wake-on-LAN.
    #[error("the relay cannot wake office PCs (it runs an older telework version)")]
    RelayTooOld,
    /// Reaching the relay, or its refusal (too many requests from this address, …).
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Asks the relay to wake `target.id` and waits up to `wait` (at most the relay's own
/// [`MAX_WAKE_WAIT_SECS`]) for it to come online, reporting each step to `progress` (every
/// [`PROGRESS_EVERY`] while waiting). Returns once the PC is online; then log in as usual.
///
/// # Errors
/// [`WakeError`]: nobody can wake it, it did not come online in time, or the relay refused.
pub async fn wake_and_wait(
    target: &Target,
    options: &LoginOptions,
    wait: Duration,
    mut progress: impl FnMut(WakeProgress),
) -> Result<(), WakeError> {
    let wait = wait.min(Duration::from_secs(MAX_WAKE_WAIT_SECS));
    let link = link_for(target, options)?;
    let connection = link.connection().await.map_err(ClientError::from)?;
    let stream = connection
        .open()
        .await
        .map_err(|e| ClientError::Frame(e.into()))?;
    let mut framed = Framed::new(stream);
    framed
        .write(&ClientToRelay::Wake {
            version: PROTOCOL_VERSION,
            id: target.id.clone(),
        })
        .await
        .map_err(ClientError::from)?;
    let started = tokio::time::Instant::now();
    let answer = framed
        .read_within::<RelayToClient>(ANSWER_TIMEOUT)
        .await
        .map_err(ClientError::from)?;
    debug!(?answer, "wake answer");
    match answer {
        RelayToClient::Wake(WakeAnswer::Sent) => progress(WakeProgress::Asked),
        RelayToClient::Wake(WakeAnswer::AlreadyAsked { retry_secs }) => {
            progress(WakeProgress::AlreadyAsked { retry_secs });
        }
        RelayToClient::Wake(WakeAnswer::AlreadyOnline) | RelayToClient::Online => {
            progress(WakeProgress::Online);
            return Ok(());
        }
        RelayToClient::Wake(WakeAnswer::NoWaker) => {
            return Err(WakeError::NoWaker(target.id.clone()))
        }
        // A relay before version 8 cannot read the request.
        RelayToClient::Error(ErrorCode::ProtocolViolation | ErrorCode::VersionTooOld) => {
            return Err(WakeError::RelayTooOld)
        }
        RelayToClient::Error(code) => return Err(ClientError::Relay(code).into()),
        RelayToClient::Paired | RelayToClient::MoveTo(_) => {
            return Err(ClientError::Relay(ErrorCode::ProtocolViolation).into())
        }
    }
    let deadline = started + wait;
    let mut tick = tokio::time::interval_at(started + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => progress(WakeProgress::Waiting { waited: started.elapsed() }),
            () = tokio::time::sleep_until(deadline) => {
                return Err(WakeError::TimedOut { id: target.id.clone(), secs: wait.as_secs() });
            }
            msg = framed.read::<RelayToClient>() => match msg {
                Ok(RelayToClient::Online) => {
                    progress(WakeProgress::Online);
                    return Ok(());
                }
                Ok(other) => {
                    debug!(?other, "unexpected message while waiting for the PC");
                    return Err(ClientError::Relay(ErrorCode::ProtocolViolation).into());
                }
                // The relay stopped waiting (restarted, or its own limit): so do we.
                Err(FrameError::Closed) => {
                    return Err(WakeError::TimedOut {
                        id: target.id.clone(),
                        secs: started.elapsed().as_secs(),
                    });
                }
                Err(e) => return Err(ClientError::from(e).into()),
            },
        }
    }
}

/// [`wake_and_wait`], each step reported to `options.progress` as
/// [`Progress::Wake`](crate::connection::Progress::Wake) (the command's terminal lines, the
/// window's status).
///
/// # Errors
/// As [`wake_and_wait`].
pub async fn wake_up(
    target: &Target,
    options: &LoginOptions,
    wait: Duration,
) -> Result<(), WakeError> {
    let progress = options.progress.clone();
    wake_and_wait(target, options, wait, |step| {
        progress(&crate::connection::Progress::Wake {
            id: target.id.clone(),
            step,
        });
    })
    .await
}

/// Whether to wake an office PC found offline, as the command line decides it: `--wake`
/// says yes; otherwise, on a terminal, the employee is asked (y/N); without a terminal
/// nobody can answer, so no (and nothing waits for an answer).
///
/// # Errors
/// If the terminal cannot be read.
pub fn ask_on_terminal(wake_flag: bool, id: &ComputerId) -> std::io::Result<bool> {
    use std::io::{BufRead, IsTerminal, Read, Write};
    if wake_flag {
        return Ok(true);
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(false);
    }
    let mut err = std::io::stderr();
    write!(
        err,
        "{id} is offline. Ask a PC in its office to wake it? [y/N] "
    )?;
    err.flush()?;
    let mut line = String::new();
    // At most a short line: a terminal answer, not a stream.
    stdin.lock().take(64).read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "Yes" | "YES"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_name_the_pc_but_never_the_waker() {
        let id: ComputerId = "pc-tanaka-01".parse().unwrap();
        assert_eq!(
            WakeProgress::Waiting {
                waited: Duration::from_millis(20_400)
            }
            .sentence(&id),
            "waiting for pc-tanaka-01 to come online … 20 s"
        );
        assert_eq!(
            WakeError::NoWaker(id.clone()).to_string(),
            "pc-tanaka-01 is offline and no PC in its office can wake it"
        );
        assert!(WakeProgress::AlreadyAsked { retry_secs: 12 }
            .sentence(&id)
            .contains("12 s"));
        assert!(WakeProgress::Asked
            .sentence(&id)
            .starts_with("pc-tanaka-01 is offline"));
    }
}
