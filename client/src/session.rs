//! An authenticated session with one office PC: the password login, then a resumed tunnel
//! for every local connection the RDP client opens.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use telework_net::connect::RelayAddr;
use telework_net::framed::Framed;
use telework_net::proxy::ProxyUrl;
use telework_net::pump::{SecureTunnel, TunnelError};
use telework_net::tls::RelayTrust;
use telework_net::transport::dial::Dialer;
use telework_net::transport::network_watch::{NetworkChange, NetworkWatch};
use telework_net::transport::{Stream, TransportChoice};
use telework_net::HANDSHAKE_TIMEOUT;
use telework_protocol::e2e::keys::ResumptionSecret;
use telework_protocol::e2e::messages::{AgentNotice, ClientNotice};
use telework_protocol::messages::{NodeAddr, RelayToClient};
use telework_protocol::{ComputerId, ErrorCode, SessionId};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::connection::{Progress, ProgressSink};
use crate::error::ClientError;
use crate::link::Link;
use crate::local_peer::LocalAccess;
use crate::login_driver;
use crate::profile::Profile;
use telework_protocol::proof::MachineKey;

/// How long the relay may take to pair us (its own pairing deadline plus a margin).
const PAIRING_TIMEOUT: Duration = Duration::from_secs(15);

/// A tunnel to the office PC, already authenticated and connected to its desktop service.
pub type Tunnel = SecureTunnel<Stream>;

/// Where and what to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The relay.
    pub relay: RelayAddr,
    /// How to trust it.
    pub trust: RelayTrust,
    /// Which transports to reach it on.
    pub transport: TransportChoice,
    /// The office PC.
    pub id: ComputerId,
}

/// How often the client tells the office PC it is still there (the agent ends a session
/// after 45 s of silence).
pub const SESSION_PING: Duration = Duration::from_secs(15);

/// Supplies a one-time code when the office PC asks (called on a blocking thread, so it may
/// prompt on the terminal). `None` means "no code".
pub type TotpSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Who is logging in, beyond the password.
#[derive(Clone)]
pub struct LoginOptions {
    /// This device's key (proves which device connects when IT staff require approval).
    pub device: Arc<MachineKey>,
    /// A name IT staff see for this device.
    pub device_name: String,
    /// Where office PCs' keys are pinned; `None` skips pinning (tests and one-off tools).
    pub profile: Option<Profile>,
    /// Where one-time codes come from, if the office PC asks for one.
    pub totp: Option<TotpSource>,
    /// How long to wait for each step after the password (includes typing a code).
    pub totp_wait: Duration,
    /// How often to tell the office PC the session is still wanted.
    pub ping_every: Duration,
    /// How often to try QUIC again while on TLS/TCP with `auto`.
    pub quic_reprobe: Duration,
    /// The HTTP proxy to reach the relay through (TLS/TCP only), if any.
    pub proxy: Option<ProxyUrl>,
    /// Where the login's steps are reported.
    pub progress: ProgressSink,
}

impl Default for LoginOptions {
    /// A throwaway device key, no pinning, no one-time codes.
    fn default() -> Self {
        #[allow(clippy::expect_used)]
        let device = MachineKey::generate().expect("system random source");
        Self {
            device: Arc::new(device),
            device_name: "telework-client".into(),
            profile: None,
            totp: None,
            totp_wait: Duration::from_secs(150),
            ping_every: SESSION_PING,
            quic_reprobe: telework_net::transport::dial::QUIC_REPROBE,
            proxy: None,
            progress: crate::connection::no_progress(),
        }
    }
}

/// How a session ended when it was not an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// We were asked to stop (Ctrl-C).
    Stopped,
}

/// A logged-in session.
pub struct Session {
    link: Link,
    id: ComputerId,
    session: SessionId,
    secret: ResumptionSecret,
    control: Tunnel,
    agent_key: Vec<u8>,
    pinned_now: Option<String>,
    ping_every: Duration,
}

/// A link to `target`'s relay as `options` say (proxy, device, QUIC re-probe); dials on
/// first use.
pub(crate) fn link_for(target: &Target, options: &LoginOptions) -> Result<Link, ClientError> {
    Ok(Link::new(
        Dialer::new(
            target.relay.clone(),
            &target.trust,
            telework_net::transport::Role::Client,
            target.transport,
        )?
        .with_proxy(options.proxy.clone())?
        .with_quic_reprobe(options.quic_reprobe),
        options.device.clone(),
    ))
}

/// Most times one request follows a relay node's word that the office PC is at another.
const MAX_REDIRECTS: usize = 3;

/// Opens a stream on the session's connection and asks the relay to pair it with the office
/// PC `id`, following the relay to the node where the PC is online. A connection that has
/// broken is dialled again once.
async fn pair(link: &Link, id: &ComputerId) -> Result<Framed<Stream>, ClientError> {
    for _ in 0..MAX_REDIRECTS {
        match pair_here(link, id).await? {
            Ok(framed) => return Ok(framed),
            Err(to) => link.redirect(&to).await?,
        }
    }
    Err(ClientError::Relay(ErrorCode::Offline))
}

/// One request on the current connection: the paired stream, or the node the relay sends us
/// to.
async fn pair_here(
    link: &Link,
    id: &ComputerId,
) -> Result<Result<Framed<Stream>, NodeAddr>, ClientError> {
    let mut connection = link.connection().await?;
    let stream = match connection.open().await {
        Ok(stream) => stream,
        Err(_) if connection.is_closed() => {
            connection = link.connection().await?;
            connection
                .open()
                .await
                .map_err(|e| ClientError::Frame(e.into()))?
        }
        Err(e) => return Err(ClientError::Frame(e.into())),
    };
    let request = link.connect_request(&connection, id);
    let mut framed = Framed::new(stream);
    framed.write(&request).await?;
    match framed.read_within::<RelayToClient>(PAIRING_TIMEOUT).await? {
        RelayToClient::Paired => Ok(Ok(framed)),
        RelayToClient::MoveTo(to) => Ok(Err(to)),
        RelayToClient::Error(code) => Err(ClientError::Relay(code)),
        RelayToClient::Wake(_) | RelayToClient::Online => {
            Err(ClientError::Relay(ErrorCode::ProtocolViolation))
        }
    }
}

impl Session {
    /// Logs in to the office PC with the connection password.
    ///
    /// # Errors
    /// [`ClientError`]: relay unreachable or untrusted, office PC offline or unknown, wrong
    /// password, locked out, …
    pub async fn login(target: &Target, password: &[u8]) -> Result<Self, ClientError> {
        Self::login_with(target, password, &LoginOptions::default()).await
    }

    /// Logs in with a device identity, key pinning and a one-time-code source.
    ///
    /// For an office PC pinned on this relay, the PC must prove its pinned identity key over
    /// this login before anything that depends on the password is sent, and must prove its
    /// OPAQUE answer and its refusals with the same key: a relay that pretends to be the PC
    /// is refused before any guess is tested, and every later failure looks the same on the
    /// wire (`LoginFailed` after a full Argon2id).
    ///
    /// # Errors
    /// As [`Session::login`], plus [`ClientError::AgentKeyChanged`] when the office PC cannot
    /// prove the pinned key.
    pub async fn login_with(
        target: &Target,
        password: &[u8],
        options: &LoginOptions,
    ) -> Result<Self, ClientError> {
        let link = link_for(target, options)?;
        let relay = target.relay.to_string();
        (options.progress)(&Progress::Connecting {
            id: target.id.clone(),
            relay: relay.clone(),
            proxy: options.proxy.as_ref().map(ToString::to_string),
        });
        let framed = pair(&link, &target.id).await?;
        (options.progress)(&Progress::LoggingIn {
            id: target.id.clone(),
        });
        let (stream, leftover) = framed.into_parts();
        let done =
            login_driver::login(stream, leftover, &relay, &target.id, password, options).await?;
        let session = done.logged_in.session;
        info!(%session, "logged in");
        Ok(Self {
            link,
            id: target.id.clone(),
            session,
            secret: done.logged_in.secret,
            control: done.control,
            agent_key: done.logged_in.agent_key,
            pinned_now: done.pinned_now,
            ping_every: options.ping_every,
        })
    }

    /// The office PC's identity key fingerprint, if this login pinned it (the first
    /// successful connection to this PC through this relay). The employee should be told
    /// once.
    pub fn pinned_now(&self) -> Option<&str> {
        self.pinned_now.as_deref()
    }

    /// The transport the session reaches the relay on, as a person reads it: `QUIC`,
    /// `TLS/TCP`, or `TLS/TCP (UDP to the relay seems blocked)`.
    pub fn transport(&self) -> String {
        self.link.transport()
    }

    /// The office PC's static public key, as proven by the login.
    pub fn agent_public_key(&self) -> &[u8] {
        &self.agent_key
    }

    /// A handle that opens further tunnels of this session.
    pub fn opener(&self) -> TunnelOpener {
        TunnelOpener {
            link: self.link.clone(),
            id: self.id.clone(),
            session: self.session,
            secret: self.secret.clone(),
        }
    }

    /// Serves local connections from `listener`, each through its own tunnel, until
    /// `shutdown` completes or the office PC ends the session. Only connections opened by our
    /// own OS user are served ([`LocalAccess::SameUser`]).
    ///
    /// # Errors
    /// [`ClientError::Ended`] with the office PC's reason, or the tunnel failure that ended
    /// the session.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Ended, ClientError> {
        self.serve_with(listener, shutdown, LocalAccess::SameUser)
            .await
    }

    /// As [`Session::serve`], with `access` saying who may use the local port. A refused
    /// connection is closed at once, before any tunnel is opened for it.
    ///
    /// # Errors
    /// As [`Session::serve`].
    pub async fn serve_with(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
        access: LocalAccess,
    ) -> Result<Ended, ClientError> {
        let opener = self.opener();
        let tasks = TaskTracker::new();
        tokio::pin!(shutdown);
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + self.ping_every,
            self.ping_every,
        );
        let mut look = tokio::time::interval(NETWORK_CHECK);
        let mut watch = self
            .link
            .current()
            .await
            .map(|c| (NetworkWatch::new(&c), c));
        let result = loop {
            let broken = tokio::select! {
                () = &mut shutdown => {
                    let _ = self.control.finish().await;
                    break Ok(Ended::Stopped);
                }
                _ = ping.tick() => {
                    // Receiving is cancel-safe, so leaving the select to send loses nothing.
                    match self.control.send_control(&ClientNotice::Ping).await {
                        Ok(()) => continue,
                        Err(e) => e,
                    }
                }
                _ = look.tick() => {
                    match watch.as_mut().map(|(w, c)| (w.check(), c.clone())) {
                        Some((NetworkChange::Moved, _)) => {
                            info!("the network changed; QUIC followed it");
                            telework_net::say!("network changed, still connected");
                        }
                        Some((NetworkChange::Lost, connection)) => {
                            info!("the address this connection left from is gone");
                            self.link.drop_broken(&connection).await;
                        }
                        _ => {}
                    }
                    continue;
                }
                notice = self.control.recv_notice() => match notice {
                    Ok(AgentNotice::SessionEnded(reason)) => break Err(ClientError::Ended(reason)),
                    Ok(_) => break Err(ClientError::Tunnel(TunnelError::Unexpected)),
                    Err(e) => e,
                },
                accepted = listener.accept() => {
                    let (local, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            warn!(%e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let opener = opener.clone();
                    tasks.spawn(async move {
                        if let Err(refused) = access.admit(&local) {
                            // Dropping `local` closes it: no tunnel, no desktop bytes.
                            warn!(%refused, "local connection refused");
                            telework_net::say!("telework: {refused}");
                            return;
                        }
                        let _ = local.set_nodelay(true);
                        match opener.open().await {
                            Ok(tunnel) => match tunnel.pump(local).await {
                                Ok(s) => debug!(sent = s.sent, received = s.received, "connection closed"),
                                Err(e) => debug!(%e, "connection ended"),
                            },
                            Err(e) => {
                                warn!(%e, "could not open a tunnel for a local connection");
                                telework_net::say!("telework: {e}");
                            }
                        }
                    }.instrument(tracing::info_span!("local", %peer)));
                    continue;
                }
            };
            // The control tunnel broke: a relay restart or a network change, unless someone
            // tampered with it.
            if matches!(broken, TunnelError::Record(_)) {
                break Err(ClientError::Tunnel(broken));
            }
            if let Some(code) = self.link.closed_by_relay().await {
                info!(
                    ?code,
                    "the relay closed the session's connection on purpose"
                );
                break Err(ClientError::Relay(code));
            }
            info!(%broken, "the session's connection broke; reconnecting");
            match self.reattach().await {
                Ok(()) => {
                    telework_net::say!(
                        "reconnected to the relay (the desktop reconnects by itself)"
                    );
                    watch = self
                        .link
                        .current()
                        .await
                        .map(|c| (NetworkWatch::new(&c), c));
                }
                Err(e) => break Err(e),
            }
        };
        tasks.close();
        // Local connections end with the session: the office PC closes their tunnels.
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
        result
    }
}

impl Session {
    /// Gets a new control tunnel for the session after the old one's connection broke: dials
    /// the relay again and proves the session, retrying for up to [`REATTACH_WINDOW`] (the
    /// office PC keeps the session that long without a control tunnel). No password.
    async fn reattach(&mut self) -> Result<(), ClientError> {
        if let Some(old) = self.link.current().await {
            self.link.drop_broken(&old).await;
        }
        let give_up = tokio::time::Instant::now() + REATTACH_WINDOW;
        let mut wait = Duration::from_millis(250);
        loop {
            let attempt = async {
                let framed = pair(&self.link, &self.id).await?;
                let (stream, leftover) = framed.into_parts();
                login_driver::reattach_control(
                    stream,
                    leftover,
                    &self.id,
                    self.session,
                    &self.secret,
                )
                .await
            };
            match tokio::time::timeout_at(give_up, attempt).await {
                Ok(Ok(control)) => {
                    self.control = control;
                    return Ok(());
                }
                // The office PC itself says the session is over: no retry helps.
                Ok(Err(e @ (ClientError::Refused(_) | ClientError::Ended(_)))) => return Err(e),
                Ok(Err(e)) if tokio::time::Instant::now() + wait < give_up => {
                    debug!(%e, "not reconnected yet");
                    if let Some(c) = self.link.current().await {
                        if c.is_closed() {
                            self.link.drop_broken(&c).await;
                        }
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Ok(Err(e)) => {
                    debug!(%e, "could not reconnect");
                    return Err(ClientError::Lost);
                }
                Err(_) => return Err(ClientError::Lost),
            }
        }
    }
}

/// How long the client tries to get its session back after the connection broke: inside the
/// office PC's patience for a silent client ([`SESSION_PING`] is a third of it).
pub const REATTACH_WINDOW: Duration = Duration::from_secs(40);

/// How often the client looks whether its network changed.
const NETWORK_CHECK: Duration = Duration::from_secs(1);

/// Opens tunnels in an authenticated session (cheap to clone).
#[derive(Clone)]
pub struct TunnelOpener {
    link: Link,
    id: ComputerId,
    session: SessionId,
    secret: ResumptionSecret,
}

impl TunnelOpener {
    /// Opens one tunnel by resumption (no password) and waits until the office PC has
    /// connected it to its desktop service.
    ///
    /// # Errors
    /// [`ClientError::TargetRefused`] when the desktop service is down; others as for login.
    pub async fn open(&self) -> Result<Tunnel, ClientError> {
        let framed = pair(&self.link, &self.id).await?;
        let (stream, leftover) = framed.into_parts();
        login_driver::resume(
            stream,
            leftover,
            &self.id,
            self.session,
            &self.secret,
            HANDSHAKE_TIMEOUT,
        )
        .await
    }
}
