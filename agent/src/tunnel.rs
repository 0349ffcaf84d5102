//! One tunnel, from the agent's side: a stream the relay opened, on which the agent runs the
//! end-to-end handshake (password login or resumption) and, only after it succeeds, connect
//! to the desktop service and pump.

use std::sync::Arc;
use std::time::Duration;

use telework_net::framed::Framed;
use telework_net::pump::{SecureTunnel, TunnelError};
use telework_net::transport::Stream;
use telework_net::HANDSHAKE_TIMEOUT;
use telework_protocol::e2e::messages::{AgentNotice, ClientNotice, EndReason};
use telework_protocol::messages::RelayOpens;
use telework_protocol::SessionId;
use tokio::net::TcpStream;
use tracing::{debug, info};

use crate::login_driver::{self, Handshake};
use crate::policy::Policy;
use crate::{Agent, AgentError};

/// How long a client may take over each step of the end-to-end handshake (the handshake
/// machines keep it: [`telework_protocol::handshake::STEP_TIMEOUT`]).
pub const E2E_STEP_TIMEOUT: Duration = telework_protocol::handshake::STEP_TIMEOUT;

/// How long an employee may take to type the one-time code.
pub const TOTP_TIMEOUT: Duration = telework_protocol::handshake::TOTP_TIMEOUT;

/// How long the desktop service may take to accept a connection.
pub const TARGET_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one tunnel stream the relay opened to its end.
pub async fn serve(agent: Arc<Agent>, stream: Stream) -> Result<(), AgentError> {
    let mut framed = Framed::new(stream);
    let ticket = match framed.read_within::<RelayOpens>(HANDSHAKE_TIMEOUT).await? {
        RelayOpens::Tunnel { tunnel } => tunnel,
        RelayOpens::Control { .. } => return Err(AgentError::Unexpected),
    };
    let (stream, leftover) = framed.into_parts();
    match login_driver::handshake(&agent, stream, leftover, ticket).await? {
        Handshake::Session {
            tunnel,
            id,
            session,
            policy,
        } => login(agent, tunnel, id, session, policy).await,
        Handshake::Tunnel {
            tunnel,
            id,
            session,
            target,
        } => resume(agent, tunnel, id, session, target).await,
        Handshake::Control {
            tunnel,
            id,
            session,
        } => {
            info!(session = %id, "the client is back: the session goes on");
            session.reattach(tunnel);
            Ok(())
        }
        Handshake::Over => Ok(()),
    }
}

/// How long the client may stay silent on the session's first tunnel (it pings every 15 s)
/// before the agent ends the session: a laptop that sleeps or loses its network sends no
/// close, and its session must not live on.
pub const CLIENT_SILENCE: Duration = Duration::from_secs(45);

/// A password login's session, once the handshake ([`login_driver`]) succeeded: its first
/// tunnel holds it until it ends.
async fn login(
    agent: Arc<Agent>,
    tunnel: SecureTunnel<Stream>,
    session_id: SessionId,
    session: Arc<crate::sessions::Session>,
    policy: Policy,
) -> Result<(), AgentError> {
    info!(session = %session_id, "session started");
    let end = hold_session(&agent, tunnel, &session, &policy).await;
    agent.sessions.end(&session_id);
    info!(session = %session_id, %end, "session ended");
    Ok(())
}

/// Keeps a session's control tunnel open for the session's life. It carries no desktop
/// bytes, only the client's pings one way and the reason a session ends the other. When its
/// connection breaks (a relay restart, the client's network changing), the client may
/// re-attach a new control tunnel ([`crate::sessions::Session::reattach`]) within
/// [`CLIENT_SILENCE`], and the session goes on. Returns why the session ended.
async fn hold_session(
    agent: &Agent,
    mut tunnel: SecureTunnel<Stream>,
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
    let mut reattachments = session.reattachments();
    // Whether the current control tunnel can still carry a message.
    let mut attached = true;
    loop {
        let heard = async {
            if attached {
                tunnel.recv_control::<ClientNotice>().await
            } else {
                std::future::pending().await
            }
        };
        let reason = tokio::select! {
            r = tokio::time::timeout(agent.client_silence, heard) => match r {
                Ok(Ok(ClientNotice::Ping)) => continue,
                Ok(Ok(_)) | Ok(Err(TunnelError::Finished)) => return "client closed the session".to_owned(),
                Ok(Err(e)) => {
                    // The connection broke: wait for the client to come back.
                    info!(%e, "the session's control tunnel broke; waiting for the client to re-attach");
                    attached = false;
                    continue;
                }
                Err(_) => return format!("the client went silent (no ping for {} s)", agent.client_silence.as_secs()),
            },
            Ok(()) = reattachments.changed() => {
                let new = reattachments
                    .borrow_and_update()
                    .as_ref()
                    .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take());
                if let Some(new) = new {
                    tunnel = new;
                    attached = true;
                }
                continue;
            }
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

/// A resumed tunnel, once the handshake proved it and the desktop service took the
/// connection: pumps until either side ends it.
async fn resume(
    agent: Arc<Agent>,
    tunnel: SecureTunnel<Stream>,
    session_id: SessionId,
    session: Arc<crate::sessions::Session>,
    target: TcpStream,
) -> Result<(), AgentError> {
    let _ = target.set_nodelay(true);
    let target = crate::activity::Tracked::new(target, session.activity.clone());
    session.activity.touch();
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
