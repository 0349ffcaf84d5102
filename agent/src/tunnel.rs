//! One tunnel, from the agent's side: attach to the relay with the ticket, then run the
//! end-to-end handshake (password login or resumption) and, only after it succeeds, connect
//! to the desktop service and pump.

use std::sync::Arc;
use std::time::{Duration, Instant};

use telework_protocol::e2e::keys::{after_login, Role};
use telework_protocol::e2e::messages::{
    AgentHandshake, AgentNotice, ClientHandshake, EndReason, Refusal,
};
use telework_protocol::e2e::pake::AgentLogin;
use telework_protocol::e2e::resume::AgentResume;
use telework_protocol::messages::{RelayToTunnel, TunnelToRelay, PROTOCOL_VERSION};
use telework_protocol::net::connect::connect;
use telework_protocol::net::framed::{FrameError, Framed};
use telework_protocol::net::pump::{SecureTunnel, TunnelError};
use telework_protocol::net::HANDSHAKE_TIMEOUT;
use telework_protocol::{SessionId, Ticket};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::{debug, info, warn};

use crate::lockout::Refused;
use crate::{Agent, AgentError};

/// How long a client may take over each step of the end-to-end handshake. Generous because
/// the client's side of a login includes Argon2id.
pub const E2E_STEP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the desktop service may take to accept a connection.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Tunnel = Framed<TlsStream<TcpStream>>;

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
        Ok(ClientHandshake::Login { request }) => login(agent, framed, request).await,
        Ok(ClientHandshake::Resume { session, nonce }) => {
            resume(agent, framed, session, nonce).await
        }
        Ok(_) | Err(FrameError::Decode(_)) => refuse(&mut framed, Refusal::ProtocolViolation).await,
        Err(e) => Err(e.into()),
    }
}

async fn refuse(framed: &mut Tunnel, why: Refusal) -> Result<(), AgentError> {
    debug!(?why, "handshake refused");
    let _ = framed.write(&AgentHandshake::Refused(why)).await;
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

async fn login(agent: Arc<Agent>, mut framed: Tunnel, request: Vec<u8>) -> Result<(), AgentError> {
    let record = match agent.data.password() {
        Ok(Some(r)) => r,
        Ok(None) => return refuse(&mut framed, Refusal::NoPassword).await,
        Err(e) => {
            warn!(%e, "cannot read the password record");
            return refuse(&mut framed, Refusal::NoPassword).await;
        }
    };
    let allowed = agent.lockout().begin(Instant::now());
    if let Err(r) = allowed {
        return refuse(&mut framed, lockout_refusal(r)).await;
    }
    let (state, response) = match AgentLogin::start(&record, &request, &agent.id) {
        Ok(s) => s,
        Err(_) => {
            agent.lockout().abandon();
            return refuse(&mut framed, Refusal::ProtocolViolation).await;
        }
    };
    let outcome = async {
        framed
            .write(&AgentHandshake::LoginChallenge { response })
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
        let failed = agent.lockout().fail(Instant::now());
        let why = match failed {
            Ok(tries_left) => Refusal::WrongPassword { tries_left },
            Err(lock) => Refusal::LockedOut {
                retry_after_secs: lock.as_secs(),
            },
        };
        warn!(?why, "login failed");
        return refuse(&mut framed, why).await;
    };
    agent.lockout().succeed();
    let (keys, resumption) = after_login(&session_key, Role::Agent);
    let (session_id, session) = agent.sessions.start(resumption);
    info!(session = %session_id, "session started");
    let (stream, leftover) = framed.into_parts();
    let mut tunnel = SecureTunnel::new(stream, leftover, keys);
    tunnel
        .send_notice(&AgentNotice::SessionReady {
            session: session_id,
        })
        .await?;
    // This first tunnel stays open for the session's life and carries no desktop bytes: its
    // close ends the session, and it is how the agent tells the client why a session ended.
    let end = tokio::select! {
        r = tunnel.recv() => match r {
            Err(TunnelError::Truncated) | Ok(_) => "client closed the session".to_owned(),
            Err(e) => format!("session tunnel failed: {e}"),
        },
        _ = agent.shutdown.cancelled() => {
            let _ = tunnel.send_notice(&AgentNotice::SessionEnded(EndReason::AgentShutdown)).await;
            let _ = tunnel.finish().await;
            "agent shutting down".to_owned()
        }
        _ = session.ended.cancelled() => "session ended".to_owned(),
    };
    agent.sessions.end(&session_id);
    info!(session = %session_id, %end, "session ended");
    Ok(())
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
