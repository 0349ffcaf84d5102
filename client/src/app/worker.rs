//! The connection behind the window: the library's [`connection::log_in`] and
//! [`connection::open_desktop`], run on a tokio runtime in a thread of their own so the window
//! never waits on the network. Every step comes back to the window as an [`Event`].

use std::io::Write;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use telework_protocol::ComputerId;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use super::job::Job;
use crate::connection::{self, Progress, ProgressSink};
use crate::error::ClientError;
use crate::session::TotpSource;
use crate::wake;

/// How long the window waits for the employee to type a one-time code (the office PC's own
/// step deadline, `LoginOptions::totp_wait`, is longer, so this one speaks first).
pub const CODE_WAIT: Duration = Duration::from_secs(120);

/// How long to wait for a woken office PC to come online (as `telework connect --wake`).
pub const WAKE_WAIT: Duration = Duration::from_secs(120);

/// How long closing the window waits for the session to end cleanly.
const CLOSE_WAIT: Duration = Duration::from_secs(3);

/// What the connection tells the window. (No `Debug`: one variant holds the password.)
pub enum Event {
    /// A step of the connection.
    Step(Progress),
    /// The office PC asks for a one-time code: send it here (dropping the sender means none).
    CodeWanted(mpsc::SyncSender<String>),
    /// The connection failed; the text is the command's one-line error.
    Failed {
        /// What went wrong, in plain words.
        error: String,
        /// Whether the office PC confirmed a wrong password (asking again may help).
        wrong_password: bool,
    },
    /// The relay says the office PC is offline: waking it may help. The password comes back
    /// so that "Wake it and connect" does not ask for it again.
    Offline {
        /// The one-line error.
        error: String,
        /// The password that was not used.
        password: Zeroizing<String>,
    },
    /// The session is over, without an error (Disconnect, or the RDP client closed).
    Closed(String),
}

/// A running connection: its events, and the means to end it.
pub struct Connecting {
    events: mpsc::Receiver<Event>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl Connecting {
    /// Starts `job` in a thread of its own; `wake` is called after every event so the window
    /// draws it at once.
    ///
    /// # Errors
    /// If the thread cannot be started.
    pub fn start(mut job: Job, wake: Arc<dyn Fn() + Send + Sync>) -> std::io::Result<Self> {
        let (events_tx, events) = mpsc::channel();
        let stop = CancellationToken::new();
        let send: Arc<dyn Fn(Event) + Send + Sync> = {
            // The std Sender is Sync, so one can be shared by the progress sink and the code
            // source, which run on different threads.
            let events_tx = events_tx.clone();
            Arc::new(move |event: Event| {
                // The window may already be gone; then nobody needs the event.
                let _ = events_tx.send(event);
                wake();
            })
        };
        let progress: ProgressSink = {
            let send = send.clone();
            Arc::new(move |step: &Progress| send(Event::Step(step.clone())))
        };
        job.login.progress = progress.clone();
        job.login.totp = Some(code_source(send.clone(), stop.clone()));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("telework-connection".into())
            .spawn(move || {
                let last = run(job, progress, thread_stop);
                send(last);
            })?;
        drop(events_tx);
        Ok(Self {
            events,
            stop,
            thread: Some(thread),
        })
    }

    /// The events that arrived since the last call.
    pub fn events(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Ends the connection (Disconnect): a login in progress is abandoned, a session is closed.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Ends the connection and waits a little for it to close cleanly, so the office PC
    /// learns at once that the session is over (the window is closing).
    pub fn finish(mut self) {
        self.stop.cancel();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = Instant::now() + CLOSE_WAIT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

impl Drop for Connecting {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The one-time code comes from the window: ask it, then wait (on the login's blocking thread)
/// for what the employee types, giving up after [`CODE_WAIT`] or on Disconnect.
fn code_source(send: Arc<dyn Fn(Event) + Send + Sync>, stop: CancellationToken) -> TotpSource {
    Arc::new(move || {
        let (reply_tx, reply) = mpsc::sync_channel(1);
        send(Event::CodeWanted(reply_tx));
        let deadline = Instant::now() + CODE_WAIT;
        // Short waits in a loop so that Disconnect is noticed while the code box is open.
        while Instant::now() < deadline && !stop.is_cancelled() {
            match reply.recv_timeout(Duration::from_millis(200)) {
                Ok(code) => return Some(code.trim().to_owned()),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            }
        }
        None
    })
}

/// The connection itself, as `telework connect` runs it; returns the event that ends it.
fn run(job: Job, progress: ProgressSink, stop: CancellationToken) -> Event {
    // One thread, as in `telework connect`: one person's session, fewer cross-thread wake-ups.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return failed(&format!("cannot start the connection: {e}"), false),
    };
    let id: ComputerId = job.target.id.clone();
    runtime.block_on(async move {
        if job.wake {
            tokio::select! {
                woken = wake::wake_up(&job.target, &job.login, WAKE_WAIT) => {
                    if let Err(e) = woken {
                        return failed(&e.to_string(), false);
                    }
                }
                () = stop.cancelled() => return Event::Closed("not connected: stopped".into()),
            }
        }
        let login = connection::log_in(&job.target, job.password.as_bytes(), &job.login);
        let session = tokio::select! {
            result = login => result,
            () = stop.cancelled() => return Event::Closed("not connected: stopped".into()),
        };
        let session = match session {
            Ok(session) => session,
            Err(e) if e.is_offline() && !job.wake => {
                return Event::Offline {
                    error: e.to_string(),
                    password: job.password,
                }
            }
            Err(e) => return failed(&e.to_string(), e.is_wrong_password()),
        };
        drop(job.password);
        let ended =
            connection::open_desktop(session, &id, &job.desktop, stop.cancelled(), &progress).await;
        match ended {
            Ok(_) => Event::Closed("session closed".into()),
            Err(e @ ClientError::Ended(_)) => Event::Closed(e.to_string()),
            Err(e) => failed(&e.to_string(), false),
        }
    })
}

fn failed(error: &str, wrong_password: bool) -> Event {
    Event::Failed {
        error: error.to_owned(),
        wrong_password,
    }
}

impl Event {
    /// The event as one line of text, as the status line shows it.
    pub fn line(&self) -> String {
        match self {
            Self::Step(step) => step.to_string(),
            Self::CodeWanted(_) => "waiting for the one-time code".to_owned(),
            Self::Failed { error, .. } | Self::Offline { error, .. } => format!("error: {error}"),
            Self::Closed(text) => text.clone(),
        }
    }
}

/// A line on standard output, for logs and scripts; a closed stdout is not a reason to stop.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
