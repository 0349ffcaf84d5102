//! The telework agent: runs on the office PC, dials out to the relay, and forwards
//! authenticated tunnels to the local desktop service.
//!
//! # Layout
//! - [`state`]: the data dir (settings, machine key, password record).
//! - [`register`]: claiming a computer ID.
//! - [`control`]: the one connection to the relay: presence on its control stream,
//!   keepalives, reconnects ([`backoff`]), and a stream per tunnel.
//! - [`tunnel`]: one tunnel: end-to-end handshake, forwarding.
//! - [`sessions`] and [`lockout`]: session secrets and wrong-password throttling; `login_state`
//!   keeps what a login changes on disk without stalling the runtime thread.
//! - [`password`] and [`totp_enrol`]: setting the connection password and turning one-time
//!   codes on, shared by the commands that do it.
//! - [`policy`], [`devices`] and [`totp`]: what IT staff require of a login; [`locked_devices`]:
//!   changing the device list from the daemon and the CLI at once.
//! - [`wake`]: Wake-on-LAN for the office PCs IT staff listed on this one.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod activity;
pub mod avoided_nodes;
pub mod backoff;
pub mod control;
pub mod devices;
pub mod locked_devices;
pub mod lockout;
mod login_driver;
mod login_state;
pub mod password;
pub mod policy;
pub mod register;
pub mod sessions;
pub mod state;
pub mod totp;
pub mod totp_enrol;
pub mod tunnel;
pub mod wake;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use telework_net::connect::ConnectError;
use telework_net::framed::FrameError;
use telework_net::proxy::{ProxyConfigError, ProxyEnv, ProxySetting};
use telework_net::pump::TunnelError;
use telework_net::tls::TlsConfigError;
use telework_net::transport::dial::Dialer;
use telework_net::transport::{Role, TransportChoice, TransportKind};
use telework_protocol::e2e::messages::{EndReason, Refusal};
use telework_protocol::proof::MachineKey;
use telework_protocol::{ComputerId, ErrorCode};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sessions::Sessions;
use crate::state::{DataDir, StateError};

/// The desktop service the agent forwards to by default (Windows Remote Desktop).
pub const DEFAULT_TARGET: &str = "127.0.0.1:3389";

/// Most tunnels open at once.
pub const MAX_TUNNELS: usize = 2048;

/// How long open tunnels get to finish when the agent stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Anything that can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The data dir.
    #[error(transparent)]
    State(#[from] StateError),
    /// Reaching the relay.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// TLS configuration.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// A framed read or write.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The encrypted tunnel.
    #[error(transparent)]
    Tunnel(#[from] TunnelError),
    /// The relay refused.
    #[error("the relay refused: {0}")]
    Refused(ErrorCode),
    /// We refused a client's handshake.
    #[error("refused a client: {0}")]
    HandshakeRefused(Refusal),
    /// The relay sent something out of place.
    #[error("the relay sent an unexpected message")]
    Unexpected,
    /// The relay went silent.
    #[error("the relay stopped answering")]
    Timeout,
    /// The address the connection left from is no longer on this machine.
    #[error("this computer's network changed")]
    NetworkChanged,
    /// The proxy setting cannot be used.
    #[error(transparent)]
    Proxy(#[from] ProxyConfigError),
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How a running agent behaves, beyond its data dir.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The transport to reach the relay on, instead of the one in the settings.
    pub transport: Option<TransportChoice>,
    /// How long a session's client may stay silent before the session ends.
    pub client_silence: Duration,
    /// How often to try QUIC again while on TLS/TCP with `auto`.
    pub quic_reprobe: Duration,
    /// The `--proxy` flag, ahead of the settings file's `proxy`.
    pub proxy: Option<ProxySetting>,
    /// The proxy variables of the environment, used when neither names a proxy (empty by
    /// default, so that a library caller opts in).
    pub proxy_env: ProxyEnv,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            transport: None,
            client_silence: tunnel::CLIENT_SILENCE,
            quic_reprobe: telework_net::transport::dial::QUIC_REPROBE,
            proxy: None,
            proxy_env: ProxyEnv::default(),
        }
    }
}

/// A running agent's shared state.
pub struct Agent {
    id: ComputerId,
    dialer: Dialer,
    key: MachineKey,
    data: DataDir,
    target: String,
    client_silence: Duration,
    sessions: Sessions,
    /// The time step of the last one-time code accepted (also on disk, so a restart keeps it).
    totp_last_step: Arc<Mutex<Option<u64>>>,
    /// The access settings every new tunnel checks, read again only when they change.
    access_cache: Arc<access::AccessCache>,
    /// Held while the wrong-password state or the above is written, so that writes land in
    /// order.
    state_writes: Arc<Mutex<()>>,
    /// Messages for the relay from tunnel tasks, sent on the current control connection.
    reports: Mutex<Option<tokio::sync::mpsc::Sender<telework_protocol::messages::AgentToRelay>>>,
    online: watch::Sender<bool>,
    /// The transport of the current connection to the relay, once online.
    transport: Mutex<Option<TransportKind>>,
    /// The relay node the agent is online at (its name, from the welcome).
    node: Mutex<Option<String>>,
    /// Relay nodes to stay away from for a while.
    avoided: Mutex<avoided_nodes::AvoidedNodes>,
    /// One magic-packet burst per PC per [`wake::SELF_LIMIT`].
    wake_limit: Mutex<wake::SelfLimit>,
    tunnel_slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl Agent {
    /// Loads a registered agent from its data dir, forwarding to `target` (`host:port`).
    ///
    /// # Errors
    /// [`AgentError::State`] if the machine is not registered or a file is damaged.
    pub fn load(data: DataDir, target: String) -> Result<Arc<Self>, AgentError> {
        Self::load_with(data, target, tunnel::CLIENT_SILENCE)
    }

    /// As [`Agent::load`], with how long a session's client may stay silent before the
    /// session ends (tests shorten it).
    ///
    /// # Errors
    /// As [`Agent::load`].
    pub fn load_with(
        data: DataDir,
        target: String,
        client_silence: Duration,
    ) -> Result<Arc<Self>, AgentError> {
        Self::open(
            data,
            target,
            RunOptions {
                client_silence,
                ..RunOptions::default()
            },
        )
    }

    /// As [`Agent::load`], with [`RunOptions`].
    ///
    /// # Errors
    /// As [`Agent::load`].
    pub fn open(
        data: DataDir,
        target: String,
        options: RunOptions,
    ) -> Result<Arc<Self>, AgentError> {
        let settings = data.settings()?;
        let trust = settings.relay_trust()?;
        // A damaged wrong-password file is reported at start, not at the first login.
        data.lockout()?;
        let totp_last_step = data.totp_last_step()?;
        let relay = settings.relay_addr()?;
        let proxy = telework_net::proxy::choose(
            options.proxy.as_ref(),
            settings.proxy_setting()?.as_ref(),
            &options.proxy_env,
            relay.host(),
        )?;
        Ok(Arc::new(Self {
            id: settings.computer_id.clone(),
            dialer: Dialer::new(
                relay,
                &trust,
                Role::Agent,
                options.transport.unwrap_or(settings.transport),
            )?
            .with_proxy(proxy)?
            .with_max_incoming_streams(MAX_TUNNELS as u32)
            .with_quic_reprobe(options.quic_reprobe),
            key: data.machine_key()?,
            data,
            target,
            client_silence: options.client_silence,
            sessions: Sessions::default(),
            totp_last_step: Arc::new(Mutex::new(totp_last_step)),
            access_cache: Arc::default(),
            state_writes: Arc::new(Mutex::new(())),
            reports: Mutex::new(None),
            online: watch::channel(false).0,
            transport: Mutex::new(None),
            node: Mutex::new(None),
            avoided: Mutex::default(),
            wake_limit: Mutex::default(),
            tunnel_slots: Arc::new(Semaphore::new(MAX_TUNNELS)),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
        }))
    }

    /// The computer ID.
    pub fn id(&self) -> &ComputerId {
        &self.id
    }

    /// Watches whether the control connection is up.
    pub fn online(&self) -> watch::Receiver<bool> {
        self.online.subscribe()
    }

    /// The transport the agent is online over (`None` while offline).
    pub fn transport(&self) -> Option<TransportKind> {
        if *self.online.borrow() {
            *self.transport.lock().unwrap_or_else(|e| e.into_inner())
        } else {
            None
        }
    }

    /// Number of authenticated sessions.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Tells the relay that the client of tunnel `ticket` failed the login, so the relay
    /// can charge the client's address. Best effort: dropped if the control connection is down
    /// or backed up.
    fn report_failed_pairing(&self, ticket: telework_protocol::Ticket) {
        let sender = self
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(tx) = sender {
            let _ = tx.try_send(telework_protocol::messages::AgentToRelay::PairingFailed(
                ticket,
            ));
        }
    }

    /// Every few seconds, ends the open sessions that the settings on disk no longer allow
    /// (device revoked, password changed, one-time codes turned on). Settings that cannot be
    /// read end every session: a damaged file must never keep a revoked device in.
    async fn recheck_sessions(self: Arc<Self>) {
        let mut tick = tokio::time::interval(access::RECHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.sessions.is_empty() {
                continue;
            }
            let access = self.access().await;
            if let Err(e) = &access {
                tracing::warn!(%e, "cannot read the access settings; ending open sessions");
            }
            for (id, session) in self.sessions.all() {
                let verdict = match &access {
                    Ok(access) => access.check(&session.grant),
                    Err(_) => Err(EndReason::PolicyChanged),
                };
                if let Err(reason) = verdict {
                    tracing::info!(session = %id, %reason, "ending a session");
                    self.sessions.end_for(&id, reason);
                }
            }
        }
    }

    /// Runs until `shutdown` completes (or a permanent refusal), then ends sessions, telling
    /// clients why, and waits briefly for tunnels to close.
    ///
    /// # Errors
    /// [`AgentError::Refused`] when the relay does not know this machine or refuses its key.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        let control = control::run(self.clone());
        tokio::pin!(control);
        let ended = tokio::select! {
            r = &mut control => Some(r),
            () = shutdown => None,
            () = self.clone().recheck_sessions() => Some(Ok(())),
        };
        self.shutdown.cancel();
        self.tasks.close();
        // On shutdown the connection stays until the tunnels have said why they end.
        let result = match ended {
            Some(r) => r,
            None => tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(5), control)
                .await
                .unwrap_or(Ok(())),
        };
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.tasks.wait()).await;
        result
    }
}
