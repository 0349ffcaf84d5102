//! One tunnel, from the agent's side: a stream the relay opened, on which the agent runs the
//! end-to-end handshake (password login or resumption) and, only after it succeeds, connect
//! to the desktop service and pump.

use std::sync::Arc;
use std::time::Duration;

use telework_net::framed::{FrameError, Framed};
use telework_net::pump::{SecureTunnel, TunnelError};
use telework_net::transport::Stream;
use telework_net::HANDSHAKE_TIMEOUT;
use telework_protocol::e2e::identity::{device_login_message, IdentityKey, Step, Transcript};
use telework_protocol::e2e::keys::{after_login, Role};
use telework_protocol::e2e::messages::{
    AgentHandshake, AgentNotice, ClientHandshake, ClientNotice, DeviceProof, EndReason, Refusal,
};
use telework_protocol::e2e::pake::AgentLogin;
use telework_protocol::e2e::resume::AgentResume;
use telework_protocol::messages::RelayOpens;
use telework_protocol::proof::{key_fingerprint, verify_signature};
use telework_protocol::{SessionId, Ticket};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::access::digest_of;
use crate::devices::DeviceStatus;
use crate::lockout::{Attempt, Outcome};
use crate::policy::Policy;
use crate::sessions::Grant;
use crate::state::StateError;
use crate::{Agent, AgentError};

/// How long a client may take over each step of the end-to-end handshake. Generous because
/// the client's side of a login includes Argon2id.
pub const E2E_STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an employee may take to type the one-time code.
pub const TOTP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the desktop service may take to accept a connection.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Tunnel = Framed<Stream>;

/// Serves one tunnel stream the relay opened to its end.
pub async fn serve(agent: Arc<Agent>, stream: Stream) -> Result<(), AgentError> {
    let mut framed = Framed::new(stream);
    let ticket = match framed.read_within::<RelayOpens>(HANDSHAKE_TIMEOUT).await? {
        RelayOpens::Tunnel { tunnel } => tunnel,
        RelayOpens::Control { .. } => return Err(AgentError::Unexpected),
    };
    let first = framed
        .read_within::<ClientHandshake>(E2E_STEP_TIMEOUT)
        .await;
    match first {
        Ok(ClientHandshake::Hello {
            nonce,
            identity_challenge,
        }) => login(agent, framed, ticket, nonce, identity_challenge).await,
        Ok(ClientHandshake::Resume { session, nonce }) => {
            resume(agent, framed, session, nonce).await
        }
        Ok(_) | Err(FrameError::Decode(_)) => refuse(&mut framed, Refusal::ProtocolViolation).await,
        Err(e) => Err(e.into()),
    }
}

async fn refuse(framed: &mut Tunnel, why: Refusal) -> Result<(), AgentError> {
    debug!(?why, "handshake refused");
    let _ = framed.write(&AgentHandshake::Refused(why.clone())).await;
    Err(AgentError::HandshakeRefused(why))
}

/// How long the client may stay silent on the session's first tunnel (it pings every 15 s)
/// before the agent ends the session: a laptop that sleeps or loses its network sends no
/// close, and its session must not live on.
pub const CLIENT_SILENCE: Duration = Duration::from_secs(45);

/// A login in progress: the transcript and the identity key that prove our answers.
struct LoginProof {
    transcript: Transcript,
    identity: IdentityKey,
}

impl LoginProof {
    /// Sends a refusal the client can check came from this office PC.
    async fn refuse(&self, framed: &mut Tunnel, why: Refusal) -> Result<(), AgentError> {
        debug!(?why, "login refused");
        let proof = self
            .identity
            .prove(Step::Refusal, &self.transcript, &why.proof_bytes());
        let _ = framed
            .write(&AgentHandshake::LoginRefused {
                why: why.clone(),
                proof,
            })
            .await;
        Err(AgentError::HandshakeRefused(why))
    }
}

/// What a failed attempt tells the client: the tries left, or the lockout it started.
fn failure_refusal(if_failed: Outcome, totp: bool) -> Refusal {
    match if_failed {
        Outcome::TriesLeft(tries_left) if totp => Refusal::WrongTotp { tries_left },
        Outcome::TriesLeft(tries_left) => Refusal::WrongPassword { tries_left },
        Outcome::LockedOut(lock) => Refusal::LockedOut {
            retry_after_secs: lock.as_secs().max(1),
        },
    }
}

/// A password login, from the client's hello to the end of the session it opens.
///
/// The order is what the security promises rest on:
/// 1. prove this office PC's identity key over the client's fresh challenge, so a pinned
///    client knows it is talking to us before it sends anything that depends on the password;
/// 2. check the device's proof, then count the attempt as failed **on disk** under the
///    device's own budget (if it logged in before) or the shared one;
/// 3. only then answer the OPAQUE request. The attempt is given back only on success, so one
///    that ends any other way (relay error, timeout, shutdown, a killed process) stays counted.
async fn login(
    agent: Arc<Agent>,
    mut framed: Tunnel,
    ticket: Ticket,
    client_nonce: [u8; 32],
    challenge: [u8; 32],
) -> Result<(), AgentError> {
    let record = match agent.data.password() {
        Ok(Some(r)) => r,
        Ok(None) => return refuse(&mut framed, Refusal::NoPassword).await,
        Err(e) => {
            warn!(%e, "cannot read the password record: run 'telework-agent set-password' again");
            return refuse(&mut framed, Refusal::Misconfigured).await;
        }
    };
    let Ok(identity) = record.identity_key(&challenge) else {
        return refuse(&mut framed, Refusal::ProtocolViolation).await;
    };
    let mut transcript = Transcript::new(&agent.id);
    transcript.client_hello(&client_nonce, &challenge);
    let agent_nonce: [u8; 32] = rand::random();
    transcript.agent_hello(&agent_nonce);
    let proof = identity.prove(Step::Hello, &transcript, b"");
    let mut login = LoginProof {
        transcript,
        identity,
    };
    framed
        .write(&AgentHandshake::Hello {
            nonce: agent_nonce,
            proof,
        })
        .await?;
    let (request, device) = match framed
        .read_within::<ClientHandshake>(E2E_STEP_TIMEOUT)
        .await
    {
        Ok(ClientHandshake::Login { request, device }) => (request, device),
        Ok(_) | Err(FrameError::Decode(_)) => {
            return login.refuse(&mut framed, Refusal::ProtocolViolation).await
        }
        Err(e) => return Err(e.into()),
    };
    login.transcript.login(&device.public_key, &request);
    if !verify_signature(
        &device.public_key,
        &device_login_message(&login.transcript),
        &device.signature,
    ) {
        return login.refuse(&mut framed, Refusal::ProtocolViolation).await;
    }
    // A revoked device gets no password step at all (and so no budget of its own to guess
    // with).
    match agent.device_status(&device.public_key).await {
        Ok(Some(DeviceStatus::Revoked)) => {
            return login.refuse(&mut framed, Refusal::DeviceRevoked).await
        }
        Ok(_) => {}
        Err(StateError::Busy(_)) => return login.refuse(&mut framed, Refusal::Busy).await,
        Err(e) => {
            warn!(%e, "cannot read the device list; refusing logins until it is fixed");
            return login.refuse(&mut framed, Refusal::Misconfigured).await;
        }
    }
    let (state, response, stretch) = match AgentLogin::start(&record, &request, &agent.id) {
        Ok(s) => s,
        Err(_) => return login.refuse(&mut framed, Refusal::ProtocolViolation).await,
    };
    let attempt = match agent.attempt_begin(&device.public_key).await {
        Ok(a) => a,
        Err(why) => return login.refuse(&mut framed, why).await,
    };
    login.transcript.challenge(&response, &stretch);
    let proof = login
        .identity
        .prove(Step::Challenge, &login.transcript, b"");
    let outcome = async {
        framed
            .write(&AgentHandshake::LoginChallenge {
                response,
                stretch,
                proof,
            })
            .await
            .ok()?;
        match framed
            .read_within::<ClientHandshake>(E2E_STEP_TIMEOUT)
            .await
            .ok()?
        {
            ClientHandshake::LoginFinish { finalization } => state.finish(&finalization).ok(),
            _ => None,
        }
    }
    .await;
    let Some(session_key) = outcome else {
        // Already counted. Report it to the relay (which charges the client's address) and
        // tell the client, with a proof it can check.
        agent.report_failed_pairing(ticket);
        let why = failure_refusal(attempt.if_failed, false);
        warn!(?why, "login failed");
        return login.refuse(&mut framed, why).await;
    };
    let (keys, resumption) = after_login(&session_key, Role::Agent);
    let (stream, leftover) = framed.into_parts();
    let mut tunnel = SecureTunnel::new(stream, leftover, keys);

    // Inside the end-to-end channel now: the one-time code, then the device list.
    let password = digest_of(record.to_bytes());
    let (grant, policy) =
        match second_steps(&agent, &mut tunnel, ticket, &attempt, &device, &password).await {
            Ok(grant) => grant,
            Err(why) => {
                warn!(?why, "login refused after the password step");
                // A wrong or missing code stays counted; a refusal for any other reason came
                // after every secret proved right.
                if !matches!(
                    why,
                    Refusal::WrongTotp { .. }
                        | Refusal::TotpMissing
                        | Refusal::LockedOut { .. }
                        | Refusal::ProtocolViolation
                ) {
                    agent.attempt_given_back(attempt).await;
                }
                let _ = tunnel.send_notice(&AgentNotice::Refused(why.clone())).await;
                let _ = tunnel.finish().await;
                return Err(AgentError::HandshakeRefused(why));
            }
        };
    let (session_id, session) = agent.sessions.start(resumption, grant);
    info!(session = %session_id, "session started");
    let ready = tunnel
        .send_notice(&AgentNotice::SessionReady {
            session: session_id,
        })
        .await;
    // Given back once the client has its answer: a process that dies before this write
    // leaves the attempt counted, which errs on the safe side.
    agent.attempt_succeeded(attempt, &device.public_key).await;
    let end = match ready {
        Ok(()) => hold_session(&agent, &mut tunnel, &session, &policy).await,
        Err(e) => format!("could not confirm the session: {e}"),
    };
    agent.sessions.end(&session_id);
    info!(session = %session_id, %end, "session ended");
    Ok(())
}

/// Keeps a session's first tunnel open for the session's life, once the client has been told
/// it is ready. It carries no desktop bytes,
/// only the client's pings one way and the reason a session ends the other. Returns why the
/// session ended.
async fn hold_session(
    agent: &Agent,
    tunnel: &mut SecureTunnel<Stream>,
    session: &crate::sessions::Session,
    policy: &Policy,
) -> String {
    let max_session = tokio::time::sleep(policy.max_session());
    let idle = async {
        match policy.idle_timeout() {
            Some(limit) => loop {
                let idle_for = session.activity.idle_for();
                if idle_for >= limit {
                    break;
                }
                tokio::time::sleep(limit - idle_for).await;
            },
            None => std::future::pending().await,
        }
    };
    tokio::pin!(max_session, idle);
    loop {
        let reason = tokio::select! {
            r = tokio::time::timeout(agent.client_silence, tunnel.recv_control::<ClientNotice>()) => match r {
                Ok(Ok(ClientNotice::Ping)) => continue,
                Ok(Ok(_)) | Ok(Err(TunnelError::Truncated)) => return "client closed the session".to_owned(),
                Ok(Err(e)) => return format!("session tunnel failed: {e}"),
                Err(_) => return format!("the client went silent (no ping for {} s)", agent.client_silence.as_secs()),
            },
            _ = agent.shutdown.cancelled() => EndReason::AgentShutdown,
            () = &mut max_session => EndReason::MaxDuration,
            () = &mut idle => EndReason::Idle,
            _ = session.ended.cancelled() => match session.end_reason() {
                Some(reason) => reason,
                None => return "session ended".to_owned(),
            },
        };
        let _ = tunnel.send_notice(&AgentNotice::SessionEnded(reason)).await;
        let _ = tunnel.finish().await;
        return reason.to_string();
    }
}

/// The checks after a right password: the one-time code (when enabled), then the device list
/// (a device revoked meanwhile is refused; a new one waits for approval when IT staff require
/// it). A device is recorded only once every other check has passed. Settings that cannot be
/// read refuse the login: a damaged file must never switch a check off. Returns what the
/// session logs in under (the device, the digest of the password record this login was
/// checked against, `password`, and of the one-time-code secret it was checked against, so a
/// change made while the login was under way still ends the session) and the policy whose
/// limits it keeps.
async fn second_steps(
    agent: &Agent,
    tunnel: &mut SecureTunnel<Stream>,
    ticket: Ticket,
    attempt: &Attempt,
    device: &DeviceProof,
    password: &[u8; 32],
) -> Result<(Grant, Policy), Refusal> {
    let misconfigured = |what: &str, e: &dyn std::fmt::Display| {
        warn!(%e, "cannot read the {what}; refusing logins until it is fixed");
        Refusal::Misconfigured
    };
    let busy_or_misconfigured = |e: StateError| match e {
        StateError::Busy(_) => {
            warn!(%e, "refusing a login for now");
            Refusal::Busy
        }
        e => misconfigured("device list", &e),
    };
    // The device's name travels inside the end-to-end channel: the relay sees only its key.
    let name =
        match tokio::time::timeout(E2E_STEP_TIMEOUT, tunnel.recv_control::<ClientNotice>()).await {
            Ok(Ok(ClientNotice::DeviceName { name })) => name,
            _ => return Err(Refusal::ProtocolViolation),
        };
    let totp = agent
        .data
        .totp()
        .map_err(|e| misconfigured("one-time-code secret", &e))?;
    let totp_digest = totp.as_ref().map(|t| digest_of(t.as_bytes()));
    if let Some(secret) = totp {
        if tunnel
            .send_notice(&AgentNotice::TotpRequired)
            .await
            .is_err()
        {
            return Err(Refusal::ProtocolViolation);
        }
        let answer =
            tokio::time::timeout(TOTP_TIMEOUT, tunnel.recv_control::<ClientNotice>()).await;
        let code = match answer {
            Ok(Ok(ClientNotice::Totp { code })) => code,
            _ => {
                agent.report_failed_pairing(ticket);
                return Err(failure_refusal(attempt.if_failed, true));
            }
        };
        let accepted = agent
            .check_totp(&secret, &code)
            .await
            .map_err(|e| misconfigured("one-time-code record", &e))?;
        if !accepted {
            agent.report_failed_pairing(ticket);
            return Err(failure_refusal(attempt.if_failed, true));
        }
    }
    // The settings as on disk now, from the cache every tunnel uses (no file read on the
    // runtime thread unless a file changed).
    let policy = agent
        .access()
        .await
        .map_err(|e| misconfigured("access settings", &e))?
        .policy()
        .clone();
    let status = agent
        .admit_device(&device.public_key, &name, policy.require_approved_devices)
        .await
        .map_err(busy_or_misconfigured)?;
    match status {
        DeviceStatus::Approved => {}
        DeviceStatus::Pending => {
            return Err(Refusal::DeviceNotApproved {
                device: key_fingerprint(&device.public_key),
            })
        }
        DeviceStatus::Revoked => return Err(Refusal::DeviceRevoked),
    }
    let grant = Grant {
        device_key: device.public_key.clone(),
        password: *password,
        totp: totp_digest,
    };
    Ok((grant, policy))
}

async fn resume(
    agent: Arc<Agent>,
    mut framed: Tunnel,
    session_id: SessionId,
    nonce: [u8; 32],
) -> Result<(), AgentError> {
    let Some(session) = agent.sessions.get(&session_id) else {
        return refuse(&mut framed, Refusal::SessionInvalid).await;
    };
    let handshake = AgentResume::respond(session_id, &session.secret, &nonce);
    let (agent_nonce, mac) = handshake.challenge();
    framed
        .write(&AgentHandshake::ResumeChallenge {
            nonce: agent_nonce,
            mac,
        })
        .await?;
    let ClientHandshake::ResumeFinish { mac } = framed
        .read_within::<ClientHandshake>(E2E_STEP_TIMEOUT)
        .await?
    else {
        return refuse(&mut framed, Refusal::ProtocolViolation).await;
    };
    let Ok(keys) = handshake.finish(&mac) else {
        warn!(session = %session_id, "resumption proof failed");
        return refuse(&mut framed, Refusal::SessionInvalid).await;
    };
    let (stream, leftover) = framed.into_parts();
    let mut tunnel = SecureTunnel::new(stream, leftover, keys);
    // The device, password and one-time-code policy the session logged in under must still
    // hold; a change ends the whole session, with its reason.
    let verdict = match agent.access().await {
        Ok(access) => access.check(&session.grant),
        Err(e) => {
            warn!(%e, "cannot read the access settings; ending the session");
            Err(EndReason::PolicyChanged)
        }
    };
    if let Err(reason) = verdict {
        info!(session = %session_id, %reason, "ending a session");
        agent.sessions.end_for(&session_id, reason);
        tunnel
            .send_notice(&AgentNotice::SessionEnded(reason))
            .await?;
        let _ = tunnel.finish().await;
        return Ok(());
    }
    // Only now, with the client proven, do we touch the desktop service.
    let target =
        match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, TcpStream::connect(&agent.target)).await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                warn!(target = %agent.target, %e, "desktop service refused the connection");
                tunnel.send_notice(&AgentNotice::TargetRefused).await?;
                let _ = tunnel.finish().await;
                return Ok(());
            }
            Err(_) => {
                warn!(target = %agent.target, "desktop service did not answer");
                tunnel.send_notice(&AgentNotice::TargetRefused).await?;
                let _ = tunnel.finish().await;
                return Ok(());
            }
        };
    let _ = target.set_nodelay(true);
    let target = crate::activity::Tracked::new(target, session.activity.clone());
    session.activity.touch();
    tunnel.send_notice(&AgentNotice::TargetConnected).await?;
    debug!(session = %session_id, "forwarding to the desktop service");
    tokio::select! {
        r = tunnel.pump(target) => match r {
            Ok(stats) => debug!(sent = stats.sent, received = stats.received, "tunnel closed"),
            Err(e) => debug!(%e, "tunnel ended"),
        },
        _ = session.ended.cancelled() => debug!("session ended; tunnel closed"),
        _ = agent.shutdown.cancelled() => debug!("agent shutting down; tunnel closed"),
    }
    Ok(())
}
