//! The public telework relay.
//!
//! Office agents dial in and stay connected; home clients ask for a computer ID; the relay
//! hands the agent a one-time ticket, pairs the agent's tunnel connection with the waiting
//! client, and copies bytes it cannot read.
//!
//! # Layout
//! - [`config`]: settings from the command line and a TOML file, validated once.
//! - [`identity`]: the TLS certificate (operator's files, or self-signed on first start).
//! - [`registry`]: SQLite registry of machines and enrolment tokens.
//! - [`hub`]: presence and one-time tickets.
//! - [`registrations`]: drops connected agents whose registration was removed.
//! - [`limits`]: per-address rate limits on connections, lookups and failures.
//! - [`conn`]: accepting a connection and dispatching on its ALPN role to [`control`],
//!   [`client_conn`] or [`tunnel`].
//! - [`splice`]: the byte copy between a paired client and agent.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client_conn;
pub mod config;
pub mod conn;
pub mod control;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod registrations;
pub mod registry;
pub mod splice;
pub mod tunnel;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use telework_net::tls::{server_config, TlsConfigError};
use telework_protocol::messages::RelayToAgent;
use telework_protocol::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::hub::Hub;
use crate::identity::TlsIdentity;
use crate::registry::Registry;
use crate::splice::SpliceTap;

pub use registrations::REGISTRATION_CHECK;

/// Who may register a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone who reaches the relay (local demos and trials).
    Open,
    /// Only holders of an enrolment token (`telework-relay token create`).
    Token,
}

/// Run-time limits and policies.
#[derive(Clone)]
pub struct RelayOptions {
    /// Who may register.
    pub registration: Registration,
    /// Most connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// Most connections that have not yet said who they are.
    pub max_unauthenticated: usize,
    /// How long a new connection has for TLS and its first message.
    pub handshake_timeout: Duration,
    /// How long sessions may go on after shutdown starts.
    pub shutdown_grace: Duration,
    /// Per-source-address rate limits.
    pub limits: limits::Limits,
    /// Test hook: sees every spliced byte.
    pub splice_tap: Option<SpliceTap>,
    /// Test hook: takes over splicing entirely (a malicious relay).
    pub splice_hook: Option<Arc<dyn splice::SpliceHook>>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            registration: Registration::Open,
            max_connections: 20_000,
            max_unauthenticated: 1_000,
            handshake_timeout: telework_net::HANDSHAKE_TIMEOUT,
            shutdown_grace: Duration::from_secs(10),
            limits: limits::Limits::default(),
            splice_tap: None,
            splice_hook: None,
        }
    }
}

/// A relay: registry, presence and TLS, shared by every connection task.
pub struct Relay {
    /// Machines and tokens.
    pub registry: Registry,
    /// Presence and tickets.
    pub hub: Hub,
    /// Rate limits per source address.
    pub limiters: limits::Limiters,
    acceptor: TlsAcceptor,
    options: RelayOptions,
    next_conn_id: AtomicU64,
    /// Cancelled when shutdown starts: stop accepting, tell agents.
    shutdown: CancellationToken,
    /// Cancelled when the grace period is over: cut remaining sessions.
    hard_stop: CancellationToken,
    /// Every connection's tasks, so shutdown can wait for them.
    tasks: TaskTracker,
}

impl Relay {
    /// Builds a relay from its registry, TLS identity and options.
    ///
    /// # Errors
    /// [`TlsConfigError`] if the certificate and key do not form a valid configuration.
    pub fn new(
        registry: Registry,
        identity: &TlsIdentity,
        options: RelayOptions,
    ) -> Result<Arc<Self>, TlsConfigError> {
        let tls = server_config(identity.chain.clone(), identity.key.clone_key())?;
        Ok(Arc::new(Self {
            registry,
            hub: Hub::default(),
            limiters: limits::Limiters::new(options.limits),
            acceptor: TlsAcceptor::from(tls),
            options,
            next_conn_id: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }))
    }

    /// Accepts connections on `listener` until `shutdown` completes, then shuts down in three
    /// steps: stop accepting and tell agents to go; let sessions finish for the grace period;
    /// cut what is left.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let tracker = self.tasks.clone();
        let connections = Arc::new(Semaphore::new(self.options.max_connections));
        let unauthenticated = Arc::new(Semaphore::new(self.options.max_unauthenticated));
        tokio::pin!(shutdown);
        tracker.spawn(registrations::watch(self.clone()));
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        warn!(%e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            if !self
                .limiters
                .connections
                .take(peer.ip(), std::time::Instant::now())
            {
                tracing::debug!(%peer, "connection rate limit; closing");
                continue;
            }
            let Ok(conn_permit) = connections.clone().try_acquire_owned() else {
                warn!(%peer, "connection limit reached; closing");
                continue;
            };
            let Ok(unauth_permit) = unauthenticated.clone().try_acquire_owned() else {
                warn!(%peer, "too many connections still handshaking; closing");
                continue;
            };
            let span = tracing::info_span!("conn", %peer);
            tracker.spawn(
                conn::handle(self.clone(), tcp, peer, conn_permit, unauth_permit).instrument(span),
            );
        }
        drop(listener);
        info!(
            agents = self.hub.agents_online(),
            "shutting down: no new connections"
        );
        self.shutdown.cancel();
        self.hub
            .broadcast(RelayToAgent::Error(ErrorCode::ShuttingDown));
        tracker.close();
        if tokio::time::timeout(self.options.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(grace = ?self.options.shutdown_grace, "sessions still open after the grace period; closing them");
            self.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
        }
        info!("relay stopped");
    }
}
