//! An employee's whole connection, for the command and the window alike: log in, give the
//! desktop a local address, start the RDP client, and serve until the session ends. Each
//! step is reported as a [`Progress`] whose text is the line a person reads.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use telework_protocol::ComputerId;
use tracing::warn;

use crate::error::ClientError;
use crate::launch::{self, LaunchChoice, Os};
use crate::local_peer::LocalAccess;
use crate::session::{Ended, LoginOptions, Session, Target};

/// A step of a connection, as the employee is told about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Dialling the relay and asking for the office PC.
    Connecting {
        /// The office PC.
        id: ComputerId,
        /// The relay, `host:port`.
        relay: String,
        /// The proxy on the way, if any (never with its password).
        proxy: Option<String>,
    },
    /// The office PC answered; the password login is running.
    LoggingIn {
        /// The office PC.
        id: ComputerId,
    },
    /// This first login pinned the office PC's identity key.
    Pinned {
        /// The office PC.
        id: ComputerId,
        /// The relay.
        relay: String,
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// Logged in; the desktop is served on `local`.
    Connected {
        /// The office PC.
        id: ComputerId,
        /// How the relay is reached (`QUIC`, `TLS/TCP`, …).
        transport: String,
        /// The local address for the RDP client.
        local: SocketAddr,
    },
    /// The RDP client was started.
    ClientStarted {
        /// The program.
        program: PathBuf,
        /// Whether closing it ends the session.
        ends_session: bool,
    },
    /// No RDP client could be started (the employee can start one by hand).
    ClientNotStarted(String),
    /// Waking the office PC (see [`crate::wake`]).
    Wake {
        /// The office PC.
        id: ComputerId,
        /// The step.
        step: crate::wake::WakeProgress,
    },
    /// The RDP client the session depends on exited.
    ClientExited {
        /// The program.
        program: PathBuf,
        /// Its exit status, as text.
        how: String,
    },
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connecting {
                id,
                relay,
                proxy: Some(proxy),
            } => write!(
                f,
                "connecting to {id} through {relay} (via the proxy {proxy}) …"
            ),
            Self::Connecting { id, relay, .. } => write!(f, "connecting to {id} through {relay} …"),
            Self::LoggingIn { id } => write!(f, "logging in to {id} …"),
            Self::Pinned {
                id,
                relay,
                fingerprint,
            } => write!(
                f,
                "first connection to {id} through {relay}: pinned its identity key {fingerprint}. \
                 From now on telework refuses anyone pretending to be this office PC before your \
                 password is used. On this first connection only, a relay pretending to be it \
                 could have tested your password once; if IT staff gave you the key's \
                 fingerprint, check that it matches."
            ),
            Self::Connected {
                id,
                transport,
                local,
            } => write!(
                f,
                "connected to {id} over {transport}: point your RDP client at {local}"
            ),
            Self::ClientStarted {
                program,
                ends_session: true,
            } => write!(
                f,
                "opening the desktop in {}: close it to end the session",
                program.display()
            ),
            Self::ClientStarted { program, .. } => {
                write!(f, "opening the desktop with {}", program.display())
            }
            Self::ClientNotStarted(why) => write!(f, "{why}"),
            Self::Wake { id, step } => f.write_str(&step.sentence(id)),
            Self::ClientExited { program, how } => write!(
                f,
                "{} exited ({how}): ending the session",
                program.display()
            ),
        }
    }
}

/// Where progress goes: a line on the terminal, or the window's status.
pub type ProgressSink = Arc<dyn Fn(&Progress) + Send + Sync>;

/// A sink that drops every step.
pub fn no_progress() -> ProgressSink {
    Arc::new(|_| {})
}

/// How the desktop is offered once logged in.
#[derive(Debug, Clone)]
pub struct DesktopOptions {
    /// The local address to listen on.
    pub listen: SocketAddr,
    /// Who may use it.
    pub access: LocalAccess,
    /// Which RDP client to start.
    pub launch: LaunchChoice,
    /// Keep the session after the started RDP client exits.
    pub keep_open: bool,
}

/// Logs in, remembering the computer ID among the recent ones once it worked.
///
/// # Errors
/// As [`Session::login_with`].
pub async fn log_in(
    target: &Target,
    password: &[u8],
    options: &LoginOptions,
) -> Result<Session, ClientError> {
    let session = Session::login_with(target, password, options).await?;
    if let Some(profile) = &options.profile {
        if let Err(e) = profile.remember(&target.id) {
            warn!(
                "cannot remember {} among the recent computer IDs: {e}",
                target.id
            );
        }
    }
    if let Some(fingerprint) = session.pinned_now() {
        (options.progress)(&Progress::Pinned {
            id: target.id.clone(),
            relay: target.relay.to_string(),
            fingerprint: fingerprint.to_owned(),
        });
    }
    Ok(session)
}

/// Serves the desktop of a logged-in session: listens locally, starts the RDP client, and
/// runs until `stop` completes, the started RDP client exits, or the office PC ends the
/// session.
///
/// # Errors
/// [`ClientError::Listen`] if the local address cannot be used, else as
/// [`Session::serve_with`].
pub async fn open_desktop(
    session: Session,
    id: &ComputerId,
    how: &DesktopOptions,
    stop: impl Future<Output = ()>,
    progress: &ProgressSink,
) -> Result<Ended, ClientError> {
    let listener = tokio::net::TcpListener::bind(how.listen)
        .await
        .map_err(|error| ClientError::Listen {
            addr: how.listen,
            error,
        })?;
    let local = listener.local_addr().map_err(|error| ClientError::Listen {
        addr: how.listen,
        error,
    })?;
    progress(&Progress::Connected {
        id: id.clone(),
        transport: session.transport(),
        local,
    });
    // Held until the session ends, then removed with the .rdp file in it.
    let rdp_dir = launch::private_dir().map_err(ClientError::Profile)?;
    let mut rdp_client = None;
    match launch::plan(
        how.launch,
        Os::current(),
        local,
        id.as_str(),
        rdp_dir.path(),
        launch::find_on_path,
    ) {
        Ok(Some(plan)) => match launch::launch(&plan) {
            Ok(child) => {
                let ends_session = plan.ends_session_on_exit(how.keep_open);
                progress(&Progress::ClientStarted {
                    program: plan.program.clone(),
                    ends_session,
                });
                if ends_session {
                    rdp_client = Some((child, plan.program));
                }
            }
            Err(e) => progress(&Progress::ClientNotStarted(format!(
                "could not start {}: {e}",
                plan.program.display()
            ))),
        },
        Ok(None) => {}
        Err(e) => progress(&Progress::ClientNotStarted(e.to_string())),
    }
    let stop = async move {
        let Some((mut child, program)) = rdp_client else {
            return stop.await;
        };
        tokio::select! {
            () = stop => {}
            status = child.wait() => {
                let how = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                progress(&Progress::ClientExited { program, how });
            }
        }
    };
    session.serve_with(listener, stop, how.access).await
}
