//! One tunnel, from the agent's side: attach to the relay with the ticket, then run the
//! end-to-end handshake (password login or resumption) and, only after it succeeds, connect
//! to the desktop service and pump.

use std::sync::Arc;
use std::time::Duration;

use telework_protocol::e2e::keys::{after_login, device_binding, device_proof_message, Role};
use telework_protocol::e2e::messages::{
    AgentHandshake, AgentNotice, ClientHandshake, ClientNotice, EndReason, Refusal,
};
use telework_protocol::e2e::pake::AgentLogin;
use telework_protocol::e2e::resume::AgentResume;
use telework_protocol::messages::{RelayToTunnel, TunnelToRelay, PROTOCOL_VERSION};
use telework_protocol::net::connect::{connect, RelayConnection};
use telework_protocol::net::framed::{FrameError, Framed};
use telework_protocol::net::pump::{SecureTunnel, TunnelError};
use telework_protocol::net::HANDSHAKE_TIMEOUT;
use telework_protocol::proof::{key_fingerprint, verify_signature};
use telework_protocol::{SessionId, Ticket};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::devices::DeviceStatus;
use crate::lockout::Refused;
use crate::state::StateError;
use crate::{Agent, AgentError};

/// How long a client may take over each step of the end-to-end handshake. Generous because
/// the client's side of a login includes Argon2id.
pub const E2E_STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an employee may take to type the one-time code.
pub const TOTP_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the desktop service may take to accept a connection.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Tunnel = Framed<RelayConnection>;

/// Opens the tunnel for `ticket` and serves it to its end.
pub async fn serve(agent: Arc<Agent>, ticket: Ticket) -> Result<(), AgentError> {
    let tls = agent.tunnel_tls.clone();
    let stream = connect(&agent.relay, tls).await?;
    let mut framed = Framed::new(stream);
    framed
        .write(&TunnelToRelay::Attach {
            version: PROTOCOL_VERSION,
            ticket,
        })
        .await?;
    match framed
        .read_within::<RelayToTunnel>(HANDSHAKE_TIMEOUT)
        .await?
    {
        RelayToTunnel::Attached => {}
        RelayToTunnel::Error(code) => return Err(AgentError::Refused(code)),
    }
    let first = framed
        .read_within::<ClientHandshake>(E2E_STEP_TIMEOUT)
        .await;
    match first {
        Ok(ClientHandshake::Login { request }) => login(agent, framed, ticket, request).await,
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

fn lockout_refusal(r: Refused) -> Refusal {
    match r {
        Refused::LockedOut(d) => Refusal::LockedOut {
            retry_after_secs: d.as_secs().max(1),
        },
        Refused::Busy => Refusal::Busy,
    }
}

/// Counts a failed password or code, reports it to the relay (which charges the client's
/// address), and says so to the client.
async fn failure_refusal(agent: &Agent, ticket: Ticket, totp: bool) -> Refusal {
    agent.report_failed_pairing(ticket);
    match agent.lockout_fail().await {
        Ok(tries_left) if totp => Refusal::WrongTotp { tries_left },
        Ok(tries_left) => Refusal::WrongPassword { tries_left },
        Err(lock) => Refusal::LockedOut {
            retry_after_secs: lock.as_secs(),
        },
    }
}

/// How long the client may stay silent on the session's first tunnel (it pings every 15 s)
/// before the agent ends the session: a laptop that sleeps or loses its network sends no
/// close, and its session must not live on.
pub const CLIENT_SILENCE: Duration = Duration::from_secs(45);

async fn login(
    agent: Arc<Agent>,
    mut framed: Tunnel,
    ticket: Ticket,
    request: Vec<u8>,
) -> Result<(), AgentError> {
    let record = match agent.data.password() {
        Ok(Some(r)) => r,
        Ok(None) => return refuse(&mut framed, Refusal::NoPassword).await,
        Err(e) => {
            warn!(%e, "cannot read the password record: run 'telework-agent set-password' again");
            return refuse(&mut framed, Refusal::Misconfigured).await;
        }
    };
    if let Err(r) = agent.lockout_begin() {
        return refuse(&mut framed, lockout_refusal(r)).await;
    }
    let (state, response, stretch) = match AgentLogin::start(&record, &request, &agent.id) {
        Ok(s) => s,
        Err(_) => {
            agent.lockout_abandon();
            return refuse(&mut framed, Refusal::ProtocolViolation).await;
        }
    };
    let outcome = async {
        framed
            .write(&AgentHandshake::LoginChallenge { response, stretch })
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
        // A wrong password, a forged finalization, or a client that vanished mid-login all
        // count as a failed try: otherwise disconnecting would be a free guess.
        let why = failure_refusal(&agent, ticket, false).await;
        warn!(?why, "login failed");
        return refuse(&mut framed, why).await;
    };
    let (keys, resumption) = after_login(&session_key, Role::Agent);
    let binding = device_binding(&session_key);
    let (stream, leftover) = framed.into_parts();
    let mut tunnel = SecureTunnel::new(stream, leftover, keys);

    // Inside the end-to-end channel now: the device check and the one-time code.
    let policy = match second_steps(&agent, &mut tunnel, ticket, &binding).await {
        Ok(policy) => policy,
        Err(why) => {
            warn!(?why, "login refused after the password step");
            let _ = tunnel.send_notice(&AgentNotice::Refused(why.clone())).await;
            let _ = tunnel.finish().await;
            return Err(AgentError::HandshakeRefused(why));
        }
    };
    agent.lockout_succeed().await;

    let (session_id, session) = agent.sessions.start(resumption);
    info!(session = %session_id, "session started");
    let end = hold_session(&agent, &mut tunnel, session_id, &session, &policy).await;
    agent.sessions.end(&session_id);
    info!(session = %session_id, %end, "session ended");
    Ok(())
}

/// Keeps a session's first tunnel open for the session's life. It carries no desktop bytes,
/// only the client's pings one way and the reason a session ends the other. Returns why the
/// session ended.
async fn hold_session(
    agent: &Agent,
    tunnel: &mut SecureTunnel<RelayConnection>,
    session_id: SessionId,
    session: &crate::sessions::Session,
    policy: &crate::policy::Policy,
) -> String {
    if let Err(e) = tunnel
        .send_notice(&AgentNotice::SessionReady {
            session: session_id,
        })
        .await
    {
        return format!("could not confirm the session: {e}");
    }
    let max_session = async {
        match policy.max_session() {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
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
    let ending = |reason: EndReason| AgentNotice::SessionEnded(reason);
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
            _ = session.ended.cancelled() => return "session ended".to_owned(),
        };
        let _ = tunnel.send_notice(&ending(reason)).await;
        let _ = tunnel.finish().await;
        return reason.to_string();
    }
}

/// The checks after a right password: the device (when IT staff require approved devices)
/// and the one-time code (when enabled). Every failure here is a refusal with a reason.
/// Settings that cannot be read refuse the login: a damaged file must never switch a check
/// off. Returns the policy in force for the session.
async fn second_steps(
    agent: &Agent,
    tunnel: &mut SecureTunnel<RelayConnection>,
    ticket: Ticket,
    binding: &[u8; 32],
) -> Result<crate::policy::Policy, Refusal> {
    let misconfigured = |what: &str, e: &dyn std::fmt::Display| {
        warn!(%e, "cannot read the {what}; refusing logins until it is fixed");
        agent.lockout_abandon();
        Refusal::Misconfigured
    };
    let device =
        tokio::time::timeout(E2E_STEP_TIMEOUT, tunnel.recv_control::<ClientNotice>()).await;
    let Ok(Ok(ClientNotice::Device {
        public_key,
        name,
        proof,
    })) = device
    else {
        agent.lockout_abandon();
        return Err(Refusal::ProtocolViolation);
    };
    if !verify_signature(&public_key, &device_proof_message(binding), &proof) {
        agent.lockout_abandon();
        return Err(Refusal::ProtocolViolation);
    }
    let policy = agent
        .data
        .policy()
        .map_err(|e| misconfigured("access policy", &e))?;
    if policy.require_approved_devices {
        let status = agent
            .device_status(&public_key, &name)
            .await
            .map_err(|e| match e {
                StateError::Busy(_) => {
                    warn!(%e, "refusing a login for now");
                    agent.lockout_abandon();
                    Refusal::Busy
                }
                e => misconfigured("device list", &e),
            })?;
        match status {
            DeviceStatus::Approved => {}
            DeviceStatus::Pending => {
                agent.lockout_abandon();
                return Err(Refusal::DeviceNotApproved {
                    device: key_fingerprint(&public_key),
                });
            }
            DeviceStatus::Revoked => {
                agent.lockout_abandon();
                return Err(Refusal::DeviceRevoked);
            }
        }
    }
    let totp = agent
        .data
        .totp()
        .map_err(|e| misconfigured("one-time-code secret", &e))?;
    if let Some(secret) = totp {
        if tunnel
            .send_notice(&AgentNotice::TotpRequired)
            .await
            .is_err()
        {
            agent.lockout_abandon();
            return Err(Refusal::ProtocolViolation);
        }
        let answer =
            tokio::time::timeout(TOTP_TIMEOUT, tunnel.recv_control::<ClientNotice>()).await;
        let code = match answer {
            Ok(Ok(ClientNotice::Totp { code })) => code,
            _ => return Err(failure_refusal(agent, ticket, true).await),
        };
        let accepted = agent
            .check_totp(&secret, &code)
            .await
            .map_err(|e| misconfigured("one-time-code record", &e))?;
        if !accepted {
            return Err(failure_refusal(agent, ticket, true).await);
        }
    }
    Ok(policy)
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
