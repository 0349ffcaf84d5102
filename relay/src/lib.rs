//! The public telework relay.
//!
//! Office agents dial in and keep one connection each; home clients keep one connection per
//! session and open a stream per tunnel, asking for a computer ID; the relay opens a stream
//! on that agent's connection, pairs the two streams, and copies bytes it cannot read. It
//! serves QUIC on UDP and TLS with HTTP/2 streams on TCP, on the same port.
//!
//! # Layout
//! - [`admin`]: the admin listener: metrics, the operators' web console and its JSON API.
//! - [`config`]: settings from the command line and a TOML file, validated once.
//! - [`identity`]: the TLS certificate (operator's files, or self-signed on first start).
//! - [`registry`]: SQLite registry of machines, enrolment tokens, operators and the audit log.
//! - [`audit`]: the audit log's events, recorded without waiting for SQLite, and retention.
//! - [`hub`]: presence, and the tunnels paired for whom.
//! - [`registrations`]: drops connected agents whose registration was removed.
//! - [`limits`]: per-address rate limits on connections, lookups and failures.
//! - [`conn`]: accepting a connection on either transport and dispatching on its ALPN role
//!   to [`agent_conn`] or [`client_conn`].
//! - [`splice`]: the byte copy between a paired client stream and agent stream.
//! - [`sessions`]: the live sessions (client connections paired with an office PC).
//! - [`metrics`]: Prometheus counters and gauges.
//! - [`cluster`]: several nodes on one registry: heartbeats, placement, presence.
//! - [`wake`]: Wake-on-LAN requests passed from clients to the agents that can wake a PC.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod agent_conn;
pub mod audit;
pub mod client_conn;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod hub;
pub mod identity;
pub mod limits;
pub mod metrics;
pub mod registrations;
pub mod registry;
pub mod sessions;
pub mod splice;
pub mod wake;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use telework_net::tls::{server_config, TlsConfigError};
use telework_protocol::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::audit::Audit;
use crate::hub::Hub;
use crate::identity::TlsIdentity;
use crate::metrics::{Metrics, Online};
use crate::registry::Registry;
use crate::sessions::LiveSessions;
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
    /// Whether to serve QUIC on the UDP port beside TCP.
    pub quic: bool,
    /// How long a new connection has for TLS and its first message.
    pub handshake_timeout: Duration,
    /// How long sessions may go on after shutdown starts.
    pub shutdown_grace: Duration,
    /// Per-source-address rate limits.
    pub limits: limits::Limits,
    /// Whether splices count the bytes they forward (per session and in the metrics). Off
    /// only for the benchmark's baseline, which shows what counting costs.
    pub count_bytes: bool,
    /// Test hook: sees every spliced byte.
    pub splice_tap: Option<SpliceTap>,
    /// Test hook: takes over splicing entirely (a malicious relay).
    pub splice_hook: Option<Arc<dyn splice::SpliceHook>>,
    /// Audit rows older than this many days are deleted (at start, then hourly); at least 1.
    pub audit_days: u32,
    /// This node's name in a cluster (unique among the nodes sharing a registry).
    pub node_name: String,
    /// Where agents and clients reach this node (`host:port`); the bound address if `None`.
    pub public_addr: Option<String>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            registration: Registration::Open,
            max_connections: 20_000,
            max_unauthenticated: 1_000,
            quic: true,
            handshake_timeout: telework_net::HANDSHAKE_TIMEOUT,
            shutdown_grace: Duration::from_secs(10),
            limits: limits::Limits::default(),
            count_bytes: true,
            splice_tap: None,
            splice_hook: None,
            audit_days: audit::DEFAULT_AUDIT_DAYS,
            node_name: "relay".to_owned(),
            public_addr: None,
        }
    }
}

/// The next incoming QUIC connection; never, without QUIC. Cancel-safe: quinn queues
/// incoming connections in the endpoint.
async fn accept_quic(endpoint: Option<&quinn::Endpoint>) -> Option<quinn::Incoming> {
    match endpoint {
        Some(endpoint) => endpoint.accept().await,
        None => std::future::pending().await,
    }
}

/// A relay: registry, presence and TLS, shared by every connection task.
pub struct Relay {
    /// Machines, tokens and the audit log.
    pub registry: Arc<Registry>,
    /// Records audit events without waiting for the registry.
    pub audit: Audit,
    /// Presence and pairing.
    pub hub: Hub,
    /// Rate limits per source address.
    pub limiters: limits::Limiters,
    /// Client connections paired with an office PC.
    pub sessions: LiveSessions,
    /// Counters for Prometheus.
    pub metrics: Metrics,
    /// This node among the others sharing the registry.
    pub cluster: cluster::Cluster,
    /// Who can wake which office PC, and when each was last woken.
    pub wake: wake::WakeState,
    acceptor: TlsAcceptor,
    tls: Arc<rustls::ServerConfig>,
    options: RelayOptions,
    next_conn_id: AtomicU64,
    /// Cancelled when shutdown starts: stop accepting, tell agents.
    shutdown: CancellationToken,
    /// Cancelled when the grace period is over: cut remaining sessions.
    hard_stop: CancellationToken,
    /// Every connection's tasks, so shutdown can wait for them.
    tasks: TaskTracker,
    /// Signs QUIC stateless resets; the same after a restart.
    quic_reset_key: [u8; 32],
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
        let quic_reset_key = identity::quic_reset_key(&identity.key);
        let registry = Arc::new(registry);
        Ok(Arc::new(Self {
            quic_reset_key,
            audit: Audit::new(registry.clone()),
            registry,
            hub: Hub::default(),
            limiters: limits::Limiters::new(options.limits),
            sessions: LiveSessions::default(),
            metrics: Metrics::new(),
            cluster: cluster::Cluster::new(options.node_name.clone(), options.public_addr.clone()),
            wake: wake::WakeState::default(),
            acceptor: TlsAcceptor::from(tls.clone()),
            tls,
            options,
            next_conn_id: AtomicU64::new(1),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }))
    }

    /// The Prometheus text exposition of the relay's metrics, as of now.
    pub fn metrics_text(&self) -> String {
        let (agents_quic, agents_tcp) = self.hub.online_by_transport();
        self.metrics.encode(&Online {
            agents_quic,
            agents_tcp,
            sessions: self.sessions.count(),
            nodes: self.cluster.status(self),
        })
    }

    /// Ends a live session at an operator's request: the client's connection is closed and
    /// the client says `the relay operator ended the session`. Returns whether it was live.
    pub fn end_session(&self, id: u64) -> bool {
        self.sessions.end(id)
    }

    /// Disables (`true`) or enables an office PC. A disabled PC's agent is disconnected now
    /// and refused until enabled, and its live sessions end. Returns whether it is registered.
    ///
    /// # Errors
    /// A registry error.
    pub async fn set_disabled(
        &self,
        id: &telework_protocol::ComputerId,
        disabled: bool,
    ) -> Result<bool, registry::RegistryError> {
        let known = self.registry.set_disabled(id, disabled).await?;
        if known && disabled {
            self.hub.disconnect(id, ErrorCode::Disabled);
            self.sessions.end_all_of(id, ErrorCode::Disabled);
        }
        Ok(known)
    }

    /// Removes an office PC's registration: its agent is disconnected now and its live
    /// sessions end. Returns whether it was registered.
    ///
    /// # Errors
    /// A registry error.
    pub async fn remove_machine(
        &self,
        id: &telework_protocol::ComputerId,
    ) -> Result<bool, registry::RegistryError> {
        let known = self.registry.remove(id).await?;
        if known {
            self.hub.disconnect(id, ErrorCode::UnknownId);
            self.sessions.end_all_of(id, ErrorCode::EndedByOperator);
        }
        Ok(known)
    }

    /// The UDP endpoint for QUIC on the TCP listener's address and port, when QUIC is on.
    ///
    /// # Errors
    /// The UDP port cannot be bound (another program holds it).
    pub fn quic_endpoint(
        &self,
        listener: &TcpListener,
    ) -> std::io::Result<Option<quinn::Endpoint>> {
        if !self.options.quic {
            return Ok(None);
        }
        let addr = listener.local_addr()?;
        telework_net::transport::quic::server_endpoint(addr, self.tls.clone(), &self.quic_reset_key)
            .map(Some)
    }

    /// Binds the public address: TCP, and UDP on the same port when QUIC is on. With port 0
    /// the system picks a TCP port whose UDP twin may be taken (by any program's outgoing
    /// QUIC socket, say), so a few ports are tried.
    ///
    /// # Errors
    /// The address cannot be bound on TCP, or its UDP port cannot (another program holds it).
    pub async fn bind(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<(TcpListener, Option<quinn::Endpoint>)> {
        const TRIES_ON_ANY_PORT: usize = 16;
        let mut tries = if addr.port() == 0 {
            TRIES_ON_ANY_PORT
        } else {
            1
        };
        loop {
            let listener = TcpListener::bind(addr).await?;
            match self.quic_endpoint(&listener) {
                Ok(quic) => return Ok((listener, quic)),
                Err(e) if tries <= 1 => return Err(e),
                Err(_) => tries -= 1,
            }
        }
    }

    /// Accepts connections on `listener` (TCP) and `quic` (UDP, the same port) until
    /// `shutdown` completes, then shuts down in three steps: stop accepting and tell agents
    /// to go; let sessions finish for the grace period; cut what is left.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        quic: Option<quinn::Endpoint>,
        shutdown: impl Future<Output = ()>,
    ) {
        let tracker = self.tasks.clone();
        let connections = Arc::new(Semaphore::new(self.options.max_connections));
        let unauthenticated = Arc::new(Semaphore::new(self.options.max_unauthenticated));
        let admit = |peer: std::net::SocketAddr| -> Option<conn::Permits> {
            if !self
                .limiters
                .connections
                .take(peer.ip(), std::time::Instant::now())
            {
                tracing::debug!(%peer, "connection rate limit; closing");
                self.metrics.limit_refused(metrics::LimitKind::Connections);
                return None;
            }
            let permit = |s: &Arc<Semaphore>, what: &str| -> Option<OwnedSemaphorePermit> {
                let p = s.clone().try_acquire_owned().ok();
                if p.is_none() {
                    warn!(%peer, "{what}; closing");
                    self.metrics.limit_refused(metrics::LimitKind::Connections);
                }
                p
            };
            Some(conn::Permits {
                connection: permit(&connections, "connection limit reached")?,
                unauthenticated: permit(
                    &unauthenticated,
                    "too many connections still handshaking",
                )?,
            })
        };
        tokio::pin!(shutdown);
        if let Ok(bound) = listener.local_addr() {
            self.cluster.public_addr_or(|| bound.to_string());
        }
        // The change writers stop first, so that their last rows are written before the
        // beats' end removes this node's rows.
        let writers_stop = CancellationToken::new();
        let beats_stop = CancellationToken::new();
        let writers = tokio::spawn(cluster::write_changes(self.clone(), writers_stop.clone()));
        cluster::join(&self).await;
        let beats = tokio::spawn(cluster::run(self.clone(), beats_stop.clone()));
        tracker.spawn(registrations::watch(self.clone()));
        tracker.spawn(audit::retain(
            self.registry.clone(),
            audit::retention(self.options.audit_days),
            self.shutdown.clone(),
        ));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        if let Some(permits) = admit(peer) {
                            let span = tracing::info_span!("conn", %peer);
                            tracker.spawn(
                                conn::handle_tcp(self.clone(), tcp, peer, permits).instrument(span),
                            );
                        }
                    }
                    Err(e) => {
                        // Out of file descriptors and similar: back off instead of spinning.
                        warn!(%e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                incoming = accept_quic(quic.as_ref()) => {
                    let Some(incoming) = incoming else { continue };
                    let peer = incoming.remote_address();
                    match admit(peer) {
                        Some(permits) => {
                            let span = tracing::info_span!("conn", %peer);
                            tracker.spawn(
                                conn::handle_quic(self.clone(), incoming, permits).instrument(span),
                            );
                        }
                        None => incoming.refuse(),
                    }
                }
            };
        }
        drop(listener);
        info!(
            agents = self.hub.agents_online(),
            "shutting down: no new connections"
        );
        // Other nodes stop sending agents here before the agents here are sent on (each
        // agent's task tells it where, or to go, when it sees the shutdown).
        self.cluster.start_draining(&self).await;
        self.shutdown.cancel();
        tracker.close();
        if tokio::time::timeout(self.options.shutdown_grace, tracker.wait())
            .await
            .is_err()
        {
            warn!(grace = ?self.options.shutdown_grace, "sessions still open after the grace period; closing them");
            self.hard_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
        }
        if let Some(endpoint) = quic {
            endpoint.close(quinn::VarInt::from_u32(0), b"relay stopped");
            // The UDP port is free again only once the endpoint has finished closing.
            let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        }
        writers_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), writers).await;
        beats_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), beats).await;
        let audit = self.audit.clone();
        let flushed =
            tokio::task::spawn_blocking(move || audit.flush(Duration::from_secs(5))).await;
        if !matches!(flushed, Ok(true)) {
            warn!("the last audit rows may not have been stored");
        }
        info!("relay stopped");
    }
}
