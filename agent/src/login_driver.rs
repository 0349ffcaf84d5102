//! Drives the agent's handshake machine ([`AgentMachine`]) over any stream: reads with the
//! machine's deadlines, feeds it the bytes, writes what it queues, and does the disk and
//! session-table work its events ask for.

use std::sync::Arc;

use bytes::BytesMut;
use telework_net::framed::FrameError;
use telework_net::pump::SecureTunnel;
use telework_net::Stream;
use telework_protocol::e2e::keys::TunnelKeys;
use telework_protocol::e2e::messages::{EndReason, Refusal};
use telework_protocol::handshake::{
    AgentEvent, AgentMachine, AgentOutcome, DeviceStanding, IfFailed, SessionFacts, TOTP_TIMEOUT,
};
use telework_protocol::{SessionId, Ticket};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::access::digest_of;
use crate::devices::DeviceStatus;
use crate::lockout::{Attempt, Outcome};
use crate::policy::Policy;
use crate::sessions::{Grant, Session};
use crate::state::StateError;
use crate::totp::TotpSecret;
use crate::tunnel::TARGET_CONNECT_TIMEOUT;
use crate::{Agent, AgentError};

use telework_net::handshake_io::{receive, send, Input, MachineClock as Clock};

/// Bytes asked of the stream per read during a handshake.
const READ_CHUNK: usize = 4096;

/// How a handshake that did not fail ended.
pub(crate) enum Handshake<S> {
    /// A login: the session's first tunnel, which holds it.
    Session {
        tunnel: SecureTunnel<S>,
        id: SessionId,
        session: Arc<Session>,
        policy: Policy,
    },
    /// The session's control tunnel again, after the connection that carried it broke.
    Control {
        tunnel: SecureTunnel<S>,
        id: SessionId,
        session: Arc<Session>,
    },
    /// A resumption, connected to the desktop service.
    Tunnel {
        tunnel: SecureTunnel<S>,
        id: SessionId,
        session: Arc<Session>,
        target: TcpStream,
    },
    /// Answered and closed (the session ended, or the desktop service refused).
    Over,
}

/// What the driver keeps between events.
#[derive(Default)]
struct Work {
    attempt: Option<Attempt>,
    password: [u8; 32],
    totp: Option<TotpSecret>,
    policy: Option<Policy>,
    session: Option<(SessionId, Arc<Session>)>,
    target: Option<TcpStream>,
}

/// Runs a client's handshake on `io`, whose first bytes (`leftover`) may already be read.
pub(crate) async fn handshake<S: Stream>(
    agent: &Arc<Agent>,
    mut io: S,
    leftover: BytesMut,
    ticket: Ticket,
) -> Result<Handshake<S>, AgentError> {
    let clock = Clock::start();
    let mut machine = AgentMachine::new(agent.id.clone(), TOTP_TIMEOUT, clock.now());
    let mut work = Work::default();
    if !leftover.is_empty() {
        machine.receive(&leftover, clock.now());
    }
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        // Every queued byte goes out before the events queued with it are handled.
        if let Some(out) = machine.take_output() {
            send(&mut io, &out).await?;
        }
        if let Some(event) = machine.poll_event() {
            if let AgentEvent::Finished(outcome) = event {
                return finished(agent, io, machine, work, outcome).await;
            }
            handle(agent, &mut machine, &mut work, event, ticket, &clock).await;
            continue;
        }
        let Some(deadline) = machine.deadline() else {
            return Err(FrameError::Closed.into());
        };
        match receive(&mut io, &mut chunk, clock.instant(deadline)).await? {
            Input::Deadline => machine.handle_timeout(clock.now()),
            Input::Bytes(n) => machine.receive(&chunk[..n], clock.now()),
        }
    }
}

async fn handle(
    agent: &Arc<Agent>,
    machine: &mut AgentMachine,
    work: &mut Work,
    event: AgentEvent,
    ticket: Ticket,
    clock: &Clock,
) {
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
    match event {
        AgentEvent::LoadPasswordRecord => {
            let record = match agent.data.password() {
                Ok(Some(record)) => {
                    work.password = digest_of(record.to_bytes());
                    Ok(record)
                }
                Ok(None) => Err(Refusal::NoPassword),
                Err(e) => {
                    warn!(%e, "cannot read the password record: run 'telework-agent set-password' again");
                    Err(Refusal::Misconfigured)
                }
            };
            machine.password_record(record, &mut rand::rngs::OsRng, clock.now());
        }
        AgentEvent::CheckDevice { device_key } => {
            let standing = agent
                .device_status(&device_key)
                .await
                .map(standing)
                .map_err(busy_or_misconfigured);
            machine.device_checked(standing, &mut rand::rngs::OsRng);
        }
        AgentEvent::CountAttempt { device_key } => {
            let counted = agent.attempt_begin(&device_key).await.map(|attempt| {
                let if_failed = match attempt.if_failed {
                    Outcome::TriesLeft(n) => IfFailed::TriesLeft(n),
                    Outcome::LockedOut(d) => IfFailed::LockedOut(d),
                };
                work.attempt = Some(attempt);
                if_failed
            });
            machine.attempt_counted(counted, clock.now());
        }
        AgentEvent::ReportFailure => {
            warn!("login failed");
            agent.report_failed_pairing(ticket);
        }
        AgentEvent::LoadTotpPolicy => {
            let required = match agent.data.totp() {
                Ok(secret) => {
                    work.totp = secret;
                    Ok(work.totp.is_some())
                }
                Err(e) => Err(misconfigured("one-time-code secret", &e)),
            };
            machine.totp_required(required, clock.now());
        }
        AgentEvent::CheckTotp { code, now_unix } => {
            let accepted = match &work.totp {
                Some(secret) => agent
                    .check_totp(secret, &code, now_unix)
                    .await
                    .map_err(|e| misconfigured("one-time-code record", &e)),
                None => Err(Refusal::Misconfigured),
            };
            machine.totp_checked(accepted);
        }
        AgentEvent::AdmitDevice { device_key, name } => {
            let admitted = async {
                // The settings as on disk now, from the cache every tunnel uses.
                let policy = agent
                    .access()
                    .await
                    .map_err(|e| misconfigured("access settings", &e))?
                    .policy()
                    .clone();
                let status = agent
                    .admit_device(&device_key, &name, policy.require_approved_devices)
                    .await
                    .map_err(busy_or_misconfigured)?;
                work.policy = Some(policy);
                Ok(standing(Some(status)))
            }
            .await;
            machine.device_admitted(admitted);
        }
        AgentEvent::RegisterSession { device_key, secret } => {
            let grant = Grant {
                device_key,
                password: work.password,
                totp: work.totp.as_ref().map(|t| digest_of(t.as_bytes())),
            };
            let (id, session) = agent.sessions.start(secret, grant);
            work.session = Some((id, session));
            machine.session_registered(id);
        }
        AgentEvent::AttemptSucceeded { device_key } => {
            // Given back once the client has its answer: a process that dies before that
            // write leaves the attempt counted, which errs on the safe side.
            if let Some(attempt) = work.attempt.take() {
                agent.attempt_succeeded(attempt, &device_key).await;
            }
        }
        AgentEvent::AttemptGivenBack => {
            if let Some(attempt) = work.attempt.take() {
                agent.attempt_given_back(attempt).await;
            }
        }
        AgentEvent::LookupSession { session: id } => {
            let found = agent.sessions.get(&id);
            let facts = found.as_ref().map(|s| SessionFacts {
                secret: s.secret.clone(),
                expires_at: None,
            });
            work.session = found.map(|s| (id, s));
            machine.session_looked_up(facts, &mut rand::rngs::OsRng, clock.now());
        }
        AgentEvent::CheckAccess { session: _ } => {
            // The device, password and one-time-code policy the session logged in under must
            // still hold; a change ends the whole session, with its reason.
            let verdict = match (&work.session, agent.access().await) {
                (Some((_, session)), Ok(access)) => access.check(&session.grant),
                (None, _) => Err(EndReason::PolicyChanged),
                (_, Err(e)) => {
                    warn!(%e, "cannot read the access settings; ending the session");
                    Err(EndReason::PolicyChanged)
                }
            };
            machine.access_checked(verdict);
        }
        AgentEvent::ConnectTarget => {
            // Only now, with the client proven, do we touch the desktop service.
            let connect = TcpStream::connect(&agent.target);
            work.target = match tokio::time::timeout(TARGET_CONNECT_TIMEOUT, connect).await {
                Ok(Ok(target)) => Some(target),
                Ok(Err(e)) => {
                    warn!(target = %agent.target, %e, "desktop service refused the connection");
                    None
                }
                Err(_) => {
                    warn!(target = %agent.target, "desktop service did not answer");
                    None
                }
            };
            machine.target_connected(work.target.is_some());
        }
        AgentEvent::Finished(_) => {}
    }
}

async fn finished<S: Stream>(
    agent: &Arc<Agent>,
    mut io: S,
    machine: AgentMachine,
    work: Work,
    outcome: AgentOutcome,
) -> Result<Handshake<S>, AgentError> {
    let tunnel = |io: S, machine: AgentMachine| {
        machine
            .into_tunnel()
            .map(|(keys, leftover): (TunnelKeys, BytesMut)| SecureTunnel::new(io, leftover, keys))
    };
    match (outcome, work.session) {
        (AgentOutcome::SessionStarted(_), Some((id, session))) => {
            let tunnel = tunnel(io, machine).ok_or(AgentError::Unexpected)?;
            let policy = work.policy.unwrap_or_default();
            Ok(Handshake::Session {
                tunnel,
                id,
                session,
                policy,
            })
        }
        (AgentOutcome::TunnelReady(_), Some((id, session))) => {
            let target = work.target.ok_or(AgentError::Unexpected)?;
            let tunnel = tunnel(io, machine).ok_or(AgentError::Unexpected)?;
            Ok(Handshake::Tunnel {
                tunnel,
                id,
                session,
                target,
            })
        }
        (AgentOutcome::ControlReattached(_), Some((id, session))) => {
            let tunnel = tunnel(io, machine).ok_or(AgentError::Unexpected)?;
            Ok(Handshake::Control {
                tunnel,
                id,
                session,
            })
        }
        (AgentOutcome::SessionEnded { session, reason }, _) => {
            tracing::info!(session = %session, %reason, "ending a session");
            agent.sessions.end_for(&session, reason);
            let _ = io.shutdown().await;
            Ok(Handshake::Over)
        }
        (AgentOutcome::TargetRefused, _) => {
            let _ = io.shutdown().await;
            Ok(Handshake::Over)
        }
        (AgentOutcome::Refused(why), _) => {
            debug!(?why, "handshake refused");
            let _ = io.shutdown().await;
            Err(AgentError::HandshakeRefused(why))
        }
        (AgentOutcome::TimedOut, _) => Err(FrameError::Timeout.into()),
        (
            AgentOutcome::SessionStarted(_)
            | AgentOutcome::TunnelReady(_)
            | AgentOutcome::ControlReattached(_),
            None,
        ) => Err(AgentError::Unexpected),
    }
}

fn standing(status: Option<DeviceStatus>) -> DeviceStanding {
    match status {
        None => DeviceStanding::Unknown,
        Some(DeviceStatus::Pending) => DeviceStanding::Pending,
        Some(DeviceStatus::Approved) => DeviceStanding::Approved,
        Some(DeviceStatus::Revoked) => DeviceStanding::Revoked,
    }
}
