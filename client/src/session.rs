//! An authenticated session with one office PC: the password login, then a resumed tunnel
//! for every local connection the RDP client opens.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use telework_protocol::e2e::keys::{
    after_login, device_binding, device_proof_message, ResumptionSecret, Role,
};
use telework_protocol::e2e::messages::{
    AgentHandshake, AgentNotice, ClientHandshake, ClientNotice, Refusal,
};
use telework_protocol::e2e::pake::{ClientLogin, PakeError};
use telework_protocol::e2e::resume::ClientResume;
use telework_protocol::messages::{alpn, ClientToRelay, RelayToClient, PROTOCOL_VERSION};
use telework_protocol::net::connect::{connect, RelayAddr, RelayConnection};
use telework_protocol::net::framed::Framed;
use telework_protocol::net::pump::{SecureTunnel, TunnelError};
use telework_protocol::net::tls::RelayTrust;
use telework_protocol::net::HANDSHAKE_TIMEOUT;
use telework_protocol::{ComputerId, SessionId};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::error::ClientError;
use crate::local_peer::LocalAccess;
use crate::profile::{PinCheck, Profile};
use telework_protocol::proof::{key_fingerprint, MachineKey};

/// How long the relay may take to pair us (its ticket TTL plus the handshake).
const PAIRING_TIMEOUT: Duration = Duration::from_secs(25);
/// How long the office PC may take per handshake step.
const E2E_STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// A tunnel to the office PC, already authenticated and connected to its desktop service.
pub type Tunnel = SecureTunnel<RelayConnection>;

/// Where and what to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The relay.
    pub relay: RelayAddr,
    /// How to trust it.
    pub trust: RelayTrust,
    /// The office PC.
    pub id: ComputerId,
}

/// How often the client tells the office PC it is still there (the agent ends a session
/// after 45 s of silence).
pub const SESSION_PING: Duration = Duration::from_secs(15);

/// A refusal that arrived in plaintext, before the end-to-end channel: only the kinds the
/// agent sends at that stage are believed; anything else was forged on the way.
fn plaintext_refusal(why: Refusal) -> ClientError {
    if why.allowed_before_authentication() {
        ClientError::Refused(why)
    } else {
        ClientError::BadProof
    }
}

/// A refusal from inside the end-to-end channel. The device fingerprint shown to the
/// employee (to read out to IT staff) is computed here from our own key, never taken from
/// the message.
fn authenticated_refusal(why: Refusal, device: &MachineKey) -> ClientError {
    match why {
        Refusal::DeviceNotApproved { .. } => ClientError::Refused(Refusal::DeviceNotApproved {
            device: key_fingerprint(&device.public_key()),
        }),
        other => ClientError::Refused(other),
    }
}

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
    relay: RelayAddr,
    tls: Arc<rustls::ClientConfig>,
    id: ComputerId,
    session: SessionId,
    secret: ResumptionSecret,
    control: Tunnel,
    agent_key: Vec<u8>,
    ping_every: Duration,
}

async fn pair(
    relay: &RelayAddr,
    tls: &Arc<rustls::ClientConfig>,
    id: &ComputerId,
) -> Result<Framed<RelayConnection>, ClientError> {
    let stream = connect(relay, tls.clone()).await?;
    let mut framed = Framed::new(stream);
    framed
        .write(&ClientToRelay::Connect {
            version: PROTOCOL_VERSION,
            id: id.clone(),
        })
        .await?;
    match framed.read_within::<RelayToClient>(PAIRING_TIMEOUT).await? {
        RelayToClient::Paired => Ok(framed),
        RelayToClient::Error(code) => Err(ClientError::Relay(code)),
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
    /// # Errors
    /// As [`Session::login`], plus [`ClientError::AgentKeyChanged`] when the office PC's key
    /// differs from the pinned one.
    pub async fn login_with(
        target: &Target,
        password: &[u8],
        options: &LoginOptions,
    ) -> Result<Self, ClientError> {
        let tls = target.trust.client_config(alpn::CLIENT)?;
        let mut framed = pair(&target.relay, &tls, &target.id).await?;
        let (state, request) = ClientLogin::start(password).map_err(|_| ClientError::BadProof)?;
        framed.write(&ClientHandshake::Login { request }).await?;
        let (response, stretch) = match framed
            .read_within::<AgentHandshake>(E2E_STEP_TIMEOUT)
            .await?
        {
            AgentHandshake::LoginChallenge { response, stretch } => (response, stretch),
            AgentHandshake::Refused(why) => return Err(plaintext_refusal(why)),
            AgentHandshake::ResumeChallenge { .. } => return Err(ClientError::BadProof),
        };
        // Argon2id takes tens of milliseconds: keep it off the async workers.
        let password_owned = zeroize::Zeroizing::new(password.to_vec());
        let id = target.id.clone();
        let finished = tokio::task::spawn_blocking(move || {
            state.finish(&password_owned, &response, stretch, &id)
        })
        .await
        .map_err(|_| ClientError::BadProof)?;
        let done = match finished {
            Ok(done) => done,
            Err(PakeError::WrongPassword) => {
                framed.write(&ClientHandshake::LoginFailed).await?;
                return match framed.read_within::<AgentHandshake>(E2E_STEP_TIMEOUT).await {
                    Ok(AgentHandshake::Refused(why)) => Err(plaintext_refusal(why)),
                    _ => Err(ClientError::WrongPasswordUnconfirmed),
                };
            }
            Err(PakeError::Stretch(why)) => return Err(ClientError::Stretch(why)),
            Err(_) => return Err(ClientError::BadProof),
        };
        // The agent's static key is authenticated by OPAQUE (it came out of the envelope the
        // password opened, and the 3DH step proved the agent holds its private half). Compare it
        // with the pin before finishing: a changed key gets no finalization.
        let pin = match &options.profile {
            Some(profile) => profile
                .check_pin(&target.id, &done.agent_public_key)
                .map_err(ClientError::Profile)?,
            None => PinCheck::Matches,
        };
        if let PinCheck::Changed { pinned, presented } = pin {
            return Err(ClientError::AgentKeyChanged {
                id: target.id.clone(),
                pinned,
                presented,
            });
        }
        framed
            .write(&ClientHandshake::LoginFinish {
                finalization: done.finalization.clone(),
            })
            .await?;
        let (keys, secret) = after_login(&done.session_key, Role::Client);
        let binding = device_binding(&done.session_key);
        let (stream, leftover) = framed.into_parts();
        let mut control = SecureTunnel::new(stream, leftover, keys);
        control
            .send_control(&ClientNotice::Device {
                public_key: options.device.public_key(),
                name: options.device_name.clone(),
                proof: options.device.sign(&device_proof_message(&binding)),
            })
            .await?;
        let session = loop {
            match tokio::time::timeout(options.totp_wait, control.recv_notice()).await {
                Ok(Ok(AgentNotice::SessionReady { session })) => break session,
                Ok(Ok(AgentNotice::Refused(why))) => {
                    return Err(authenticated_refusal(why, &options.device))
                }
                Ok(Ok(AgentNotice::TotpRequired)) => {
                    let Some(source) = options.totp.clone() else {
                        return Err(ClientError::Refused(Refusal::TotpMissing));
                    };
                    let code = tokio::task::spawn_blocking(move || source())
                        .await
                        .ok()
                        .flatten()
                        .ok_or(ClientError::Refused(Refusal::TotpMissing))?;
                    control.send_control(&ClientNotice::Totp { code }).await?;
                }
                Ok(Ok(_)) => return Err(ClientError::BadProof),
                Err(_) => return Err(ClientError::Timeout),
                Ok(Err(e)) => return Err(ClientError::Tunnel(e)),
            }
        };
        if pin == PinCheck::FirstUse {
            if let Some(profile) = &options.profile {
                profile
                    .pin(&target.id, &done.agent_public_key)
                    .map_err(ClientError::Profile)?;
                info!(id = %target.id, key = %key_fingerprint(&done.agent_public_key), "pinned the office PC's key");
            }
        }
        info!(%session, "logged in");
        Ok(Self {
            relay: target.relay.clone(),
            tls,
            id: target.id.clone(),
            session,
            secret,
            control,
            agent_key: done.agent_public_key,
            ping_every: options.ping_every,
        })
    }

    /// The office PC's static public key, as proven by the login.
    pub fn agent_public_key(&self) -> &[u8] {
        &self.agent_key
    }

    /// A handle that opens further tunnels of this session.
    pub fn opener(&self) -> TunnelOpener {
        TunnelOpener {
            relay: self.relay.clone(),
            tls: self.tls.clone(),
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
        let result = loop {
            tokio::select! {
                () = &mut shutdown => {
                    let _ = self.control.finish().await;
                    break Ok(Ended::Stopped);
                }
                _ = ping.tick() => {
                    // Receiving is cancel-safe, so leaving the select to send loses nothing.
                    if let Err(e) = self.control.send_control(&ClientNotice::Ping).await {
                        break Err(ClientError::Tunnel(e));
                    }
                }
                notice = self.control.recv_notice() => break match notice {
                    Ok(AgentNotice::SessionEnded(reason)) => Err(ClientError::Ended(reason)),
                    Ok(_) => Err(ClientError::Tunnel(TunnelError::Unexpected)),
                    Err(e) => Err(ClientError::Tunnel(e)),
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
                        if let Err(refused) = access.admit(&local).await {
                            // Dropping `local` closes it: no tunnel, no desktop bytes.
                            warn!(%refused, "local connection refused");
                            eprintln!("telework: {refused}");
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
                                eprintln!("telework: {e}");
                            }
                        }
                    }.instrument(tracing::info_span!("local", %peer)));
                }
            }
        };
        tasks.close();
        // Local connections end with the session: the office PC closes their tunnels.
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
        result
    }
}

/// Opens tunnels in an authenticated session (cheap to clone).
#[derive(Clone)]
pub struct TunnelOpener {
    relay: RelayAddr,
    tls: Arc<rustls::ClientConfig>,
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
        let mut framed = pair(&self.relay, &self.tls, &self.id).await?;
        let resume = ClientResume::start(self.session, &self.secret);
        framed
            .write(&ClientHandshake::Resume {
                session: self.session,
                nonce: resume.nonce(),
            })
            .await?;
        let (nonce, mac) = match framed
            .read_within::<AgentHandshake>(E2E_STEP_TIMEOUT)
            .await?
        {
            AgentHandshake::ResumeChallenge { nonce, mac } => (nonce, mac),
            AgentHandshake::Refused(why) => return Err(plaintext_refusal(why)),
            AgentHandshake::LoginChallenge { .. } => return Err(ClientError::BadProof),
        };
        let (client_mac, keys) = resume
            .finish(&nonce, &mac)
            .map_err(|_| ClientError::BadProof)?;
        framed
            .write(&ClientHandshake::ResumeFinish { mac: client_mac })
            .await?;
        let (stream, leftover) = framed.into_parts();
        let mut tunnel = SecureTunnel::new(stream, leftover, keys);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tunnel.recv_notice()).await {
            Ok(Ok(AgentNotice::TargetConnected)) => Ok(tunnel),
            Ok(Ok(AgentNotice::TargetRefused)) => Err(ClientError::TargetRefused),
            Ok(Ok(AgentNotice::SessionEnded(r))) => Err(ClientError::Ended(r)),
            Ok(Ok(AgentNotice::SessionReady { .. } | AgentNotice::TotpRequired)) => {
                Err(ClientError::BadProof)
            }
            Ok(Ok(AgentNotice::Refused(why))) => Err(ClientError::Refused(why)),
            Ok(Err(e)) => Err(ClientError::Tunnel(e)),
            Err(_) => Err(ClientError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_refusals_that_only_the_agent_can_send_are_not_believed() {
        let forged = Refusal::DeviceNotApproved {
            device: "attacker-device'; rm -rf /".into(),
        };
        assert!(matches!(plaintext_refusal(forged), ClientError::BadProof));
        assert!(matches!(
            plaintext_refusal(Refusal::DeviceRevoked),
            ClientError::BadProof
        ));
        assert!(matches!(
            plaintext_refusal(Refusal::TotpMissing),
            ClientError::BadProof
        ));
        assert!(matches!(
            plaintext_refusal(Refusal::WrongPassword { tries_left: 3 }),
            ClientError::Refused(Refusal::WrongPassword { tries_left: 3 })
        ));
    }

    #[test]
    fn the_device_fingerprint_shown_is_our_own() {
        let device = MachineKey::generate().unwrap();
        let err = authenticated_refusal(
            Refusal::DeviceNotApproved {
                device: "spoofed".into(),
            },
            &device,
        );
        let ClientError::Refused(Refusal::DeviceNotApproved { device: shown }) = err else {
            panic!("{err:?}");
        };
        assert_eq!(shown, key_fingerprint(&device.public_key()));
    }
}
