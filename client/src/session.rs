//! An authenticated session with one office PC: the password login, then a resumed tunnel
//! for every local connection the RDP client opens.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use telework_net::connect::RelayAddr;
use telework_net::framed::Framed;
use telework_net::pump::{SecureTunnel, TunnelError};
use telework_net::tls::RelayTrust;
use telework_net::transport::dial::Dialer;
use telework_net::transport::{Stream, TransportChoice};
use telework_net::HANDSHAKE_TIMEOUT;
use telework_protocol::e2e::identity::{
    device_login_message, IdentityChallenge, IdentityKey, Step, Transcript,
};
use telework_protocol::e2e::keys::{after_login, ResumptionSecret, Role};
use telework_protocol::e2e::messages::{
    AgentHandshake, AgentNotice, ClientHandshake, ClientNotice, DeviceProof, Refusal,
};
use telework_protocol::e2e::pake::{ClientLogin, PakeError};
use telework_protocol::e2e::resume::ClientResume;
use telework_protocol::messages::{ClientToRelay, RelayToClient, PROTOCOL_VERSION};
use telework_protocol::{ComputerId, SessionId};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::error::ClientError;
use crate::link::Link;
use crate::local_peer::LocalAccess;
use crate::profile::Profile;
use telework_protocol::proof::{key_fingerprint, MachineKey};

/// How long the relay may take to pair us (its own pairing deadline plus a margin).
const PAIRING_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the office PC may take per handshake step.
const E2E_STEP_TIMEOUT: Duration = Duration::from_secs(15);

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

/// A refusal that arrived in plaintext, before the end-to-end channel: only the kinds the
/// agent sends at that stage are believed; anything else was forged on the way.
fn plaintext_refusal(why: Refusal) -> ClientError {
    if matches!(why, Refusal::WrongPassword { .. }) {
        return ClientError::WrongPasswordUnconfirmed;
    }
    if why.allowed_before_authentication() {
        ClientError::Refused(why)
    } else {
        ClientError::BadProof
    }
}

/// A refusal of a login after the hello. With the office PC's identity checked, its proof
/// says the PC itself sent it (a forged one is tampering); without (the first connection to
/// this PC), it is believed only as far as a plaintext refusal is, and a wrong password is
/// unconfirmed, so the client does not ask again.
fn login_refusal(
    why: Refusal,
    proof: &[u8; 32],
    identity: Option<&IdentityKey>,
    transcript: &Transcript,
) -> ClientError {
    match identity {
        Some(identity) => {
            match identity.verify(Step::Refusal, transcript, &why.proof_bytes(), proof) {
                Ok(()) => ClientError::Refused(why),
                Err(_) => ClientError::BadProof,
            }
        }
        None => match why {
            Refusal::WrongPassword { .. } => ClientError::WrongPasswordUnconfirmed,
            why => plaintext_refusal(why),
        },
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
    /// How often to try QUIC again while on TLS/TCP with `auto`.
    pub quic_reprobe: Duration,
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

/// Opens a stream on the session's connection and asks the relay to pair it with the office
/// PC `id`. A connection that has broken is dialled again once.
async fn pair(link: &Link, id: &ComputerId) -> Result<Framed<Stream>, ClientError> {
    let connection = link.connection().await?;
    let stream = match connection.open().await {
        Ok(stream) => stream,
        Err(_) if connection.is_closed() => link
            .connection()
            .await?
            .open()
            .await
            .map_err(|e| ClientError::Frame(e.into()))?,
        Err(e) => return Err(ClientError::Frame(e.into())),
    };
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
        let link = Link::new(
            Dialer::new(
                target.relay.clone(),
                &target.trust,
                telework_net::transport::Role::Client,
                target.transport,
            )?
            .with_quic_reprobe(options.quic_reprobe),
        );
        let relay = target.relay.to_string();
        let pinned = match &options.profile {
            Some(profile) => profile
                .pinned(&relay, &target.id)
                .map_err(ClientError::Profile)?,
            None => None,
        };
        let mut framed = pair(&link, &target.id).await?;

        // 1. The office PC proves its identity key (when pinned) before the password step.
        let challenge = IdentityChallenge::generate();
        let nonce: [u8; 32] = rand::random();
        let mut transcript = Transcript::new(&target.id);
        transcript.client_hello(&nonce, &challenge.public());
        framed
            .write(&ClientHandshake::Hello {
                nonce,
                identity_challenge: challenge.public(),
            })
            .await?;
        let (agent_nonce, hello_proof) = match framed
            .read_within::<AgentHandshake>(E2E_STEP_TIMEOUT)
            .await?
        {
            AgentHandshake::Hello { nonce, proof } => (nonce, proof),
            AgentHandshake::Refused(why) if pinned.is_none() => return Err(plaintext_refusal(why)),
            _ => return Err(ClientError::BadProof),
        };
        transcript.agent_hello(&agent_nonce);
        let hello_transcript = transcript.clone();
        let identity = match &pinned {
            Some(key) => {
                let identity = challenge.key(key).map_err(|_| ClientError::BadProof)?;
                if identity
                    .verify(Step::Hello, &transcript, b"", &hello_proof)
                    .is_err()
                {
                    return Err(ClientError::AgentKeyChanged {
                        id: target.id.clone(),
                        pinned: key_fingerprint(key),
                    });
                }
                Some(identity)
            }
            None => None,
        };

        // 2. The password step, with this device's proof.
        let (state, request) = ClientLogin::start(password).map_err(|_| ClientError::BadProof)?;
        let device_key = options.device.public_key();
        transcript.login(&device_key, &request);
        let signature = options.device.sign(&device_login_message(&transcript));
        framed
            .write(&ClientHandshake::Login {
                request,
                device: DeviceProof {
                    public_key: device_key,
                    signature,
                },
            })
            .await?;
        let (response, stretch, challenge_proof) = match framed
            .read_within::<AgentHandshake>(E2E_STEP_TIMEOUT)
            .await?
        {
            AgentHandshake::LoginChallenge {
                response,
                stretch,
                proof,
            } => (response, stretch, proof),
            AgentHandshake::LoginRefused { why, proof } => {
                return Err(login_refusal(why, &proof, identity.as_ref(), &transcript))
            }
            _ => return Err(ClientError::BadProof),
        };
        transcript.challenge(&response, &stretch);
        if let Some(identity) = &identity {
            identity
                .verify(Step::Challenge, &transcript, b"", &challenge_proof)
                .map_err(|_| ClientError::BadProof)?;
        }
        // Argon2id takes tens of milliseconds: keep it off the async workers.
        let password_owned = zeroize::Zeroizing::new(password.to_vec());
        let id = target.id.clone();
        let finished = tokio::task::spawn_blocking(move || {
            state.finish(&password_owned, &response, stretch, &id)
        })
        .await
        .map_err(|_| ClientError::BadProof)?;
        let done = match finished {
            Ok(done) => {
                // Whoever answered must hold the key OPAQUE just authenticated, throughout.
                let proven = match &pinned {
                    Some(key) => *key == done.agent_public_key,
                    None => challenge.key(&done.agent_public_key).is_ok_and(|k| {
                        k.verify(Step::Hello, &hello_transcript, b"", &hello_proof)
                            .is_ok()
                            && k.verify(Step::Challenge, &transcript, b"", &challenge_proof)
                                .is_ok()
                    }),
                };
                proven.then_some(done)
            }
            Err(PakeError::Stretch(why)) => return Err(ClientError::Stretch(why)),
            Err(_) => None,
        };
        let Some(done) = done else {
            // Every failure looks the same: the office PC counted it before answering, and its
            // proven reply is the only one that may make us ask for the password again.
            framed.write(&ClientHandshake::LoginFailed).await?;
            return match framed.read_within::<AgentHandshake>(E2E_STEP_TIMEOUT).await {
                Ok(AgentHandshake::LoginRefused { why, proof }) => {
                    Err(login_refusal(why, &proof, identity.as_ref(), &transcript))
                }
                _ => Err(ClientError::WrongPasswordUnconfirmed),
            };
        };
        framed
            .write(&ClientHandshake::LoginFinish {
                finalization: done.finalization.clone(),
            })
            .await?;
        let (keys, secret) = after_login(&done.session_key, Role::Client);
        let (stream, leftover) = framed.into_parts();
        let mut control = SecureTunnel::new(stream, leftover, keys);

        // 3. Inside the end-to-end channel: the device's name, then a one-time code if asked.
        control
            .send_control(&ClientNotice::DeviceName {
                name: options.device_name.clone(),
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
        let mut pinned_now = None;
        if pinned.is_none() {
            if let Some(profile) = &options.profile {
                profile
                    .pin(&relay, &target.id, &done.agent_public_key)
                    .map_err(ClientError::Profile)?;
                let fingerprint = key_fingerprint(&done.agent_public_key);
                info!(id = %target.id, key = %fingerprint, "pinned the office PC's key");
                pinned_now = Some(fingerprint);
            }
        }
        info!(%session, "logged in");
        Ok(Self {
            link,
            id: target.id.clone(),
            session,
            secret,
            control,
            agent_key: done.agent_public_key,
            pinned_now,
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
                        if let Err(refused) = access.admit(&local) {
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
        let mut framed = pair(&self.link, &self.id).await?;
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
            _ => return Err(ClientError::BadProof),
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
            plaintext_refusal(Refusal::WrongTotp { tries_left: 1 }),
            ClientError::BadProof
        ));
        assert!(matches!(
            plaintext_refusal(Refusal::TotpMissing),
            ClientError::BadProof
        ));
        // An unproven wrong password is never one the client asks again after.
        let unproven = plaintext_refusal(Refusal::WrongPassword { tries_left: 3 });
        assert!(matches!(unproven, ClientError::WrongPasswordUnconfirmed));
        assert!(!unproven.is_wrong_password());
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
