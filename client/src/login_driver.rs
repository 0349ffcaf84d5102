//! Drives the client's handshake machines ([`ClientLoginMachine`], [`ClientResumeMachine`])
//! over any stream: reads with the machines' deadlines, feeds them the bytes, writes what they
//! queue, and does what their events ask (the pinned key, Argon2id off the async workers, the
//! one-time-code prompt).

use std::time::Duration;

use bytes::BytesMut;
use telework_net::pump::{SecureTunnel, TunnelError};
use telework_net::Stream;
use telework_protocol::e2e::keys::ResumptionSecret;
use telework_protocol::handshake::wire::WireError;
use telework_protocol::handshake::{
    ClientLoginConfig, ClientLoginEvent, ClientLoginMachine, ClientResumeMachine, HandshakeError,
    LoggedIn,
};
use telework_protocol::proof::key_fingerprint;
use telework_protocol::{ComputerId, SessionId};
use tracing::info;

use crate::error::ClientError;
use crate::session::LoginOptions;

use telework_net::handshake_io::{receive, send, Input, MachineClock as Clock};

/// Bytes asked of the stream per read during a handshake.
const READ_CHUNK: usize = 4096;

/// A login that succeeded: the session's first tunnel and what resumes further ones.
pub(crate) struct LoginDone<S> {
    pub(crate) control: SecureTunnel<S>,
    pub(crate) logged_in: LoggedIn,
    /// The office PC's key fingerprint, if this login pinned it.
    pub(crate) pinned_now: Option<String>,
}

/// Runs a password login on `io` (already paired with the office PC).
pub(crate) async fn login<S: Stream>(
    mut io: S,
    leftover: BytesMut,
    relay: &str,
    id: &ComputerId,
    password: &[u8],
    options: &LoginOptions,
) -> Result<LoginDone<S>, ClientError> {
    let clock = Clock::start();
    let config = ClientLoginConfig {
        id: id.clone(),
        device: options.device.clone(),
        device_name: options.device_name.clone(),
        notice_wait: options.totp_wait,
    };
    let mut machine = ClientLoginMachine::new(config, password);
    let mut input = Some(leftover);
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        if let Some(out) = machine.take_output() {
            send(&mut io, &out).await?;
        }
        if let Some(event) = machine.poll_event() {
            match event {
                ClientLoginEvent::LookupPin => {
                    let pinned = match &options.profile {
                        Some(profile) => profile.pinned(relay, id).map_err(ClientError::Profile)?,
                        None => None,
                    };
                    machine.pinned_key(pinned, &mut rand::rngs::OsRng, clock.now());
                    // Bytes that came with the pairing are read once the hello is out.
                    if let Some(bytes) = input.take().filter(|b| !b.is_empty()) {
                        machine.receive(&bytes, clock.now());
                    }
                }
                ClientLoginEvent::OpenAnswer(work) => {
                    // Argon2id takes tens of milliseconds: keep it off the async workers.
                    let done =
                        tokio::task::spawn_blocking(move || work.run(&mut rand::rngs::OsRng))
                            .await
                            .map_err(|_| ClientError::BadProof)?;
                    machine.password_opened(done, clock.now());
                }
                ClientLoginEvent::TotpNeeded => {
                    let code = match options.totp.clone() {
                        Some(source) => tokio::task::spawn_blocking(move || source())
                            .await
                            .ok()
                            .flatten(),
                        None => None,
                    };
                    machine.totp_code(code, clock.now());
                }
                ClientLoginEvent::Finished(result) => {
                    let logged_in = result.map_err(|e| client_error(e, id))?;
                    let (keys, leftover) = machine.into_tunnel().ok_or(ClientError::BadProof)?;
                    let control = SecureTunnel::new(io, leftover, keys);
                    let mut pinned_now = None;
                    if logged_in.first_use {
                        if let Some(profile) = &options.profile {
                            profile
                                .pin(relay, id, &logged_in.agent_key)
                                .map_err(ClientError::Profile)?;
                            let fingerprint = key_fingerprint(&logged_in.agent_key);
                            info!(%id, key = %fingerprint, "pinned the office PC's key");
                            pinned_now = Some(fingerprint);
                        }
                    }
                    return Ok(LoginDone {
                        control,
                        logged_in,
                        pinned_now,
                    });
                }
            }
            continue;
        }
        let Some(deadline) = machine.deadline() else {
            return Err(ClientError::BadProof);
        };
        match receive(&mut io, &mut chunk, clock.instant(deadline)).await? {
            Input::Deadline => machine.handle_timeout(clock.now()),
            Input::Bytes(n) => machine.receive(&chunk[..n], clock.now()),
        }
    }
}

/// Runs a resumption on `io` (already paired with the office PC); the tunnel it gives is
/// connected to the desktop service.
pub(crate) async fn resume<S: Stream>(
    io: S,
    leftover: BytesMut,
    id: &ComputerId,
    session: SessionId,
    secret: &ResumptionSecret,
    target_wait: Duration,
) -> Result<SecureTunnel<S>, ClientError> {
    let clock = Clock::start();
    let machine = ClientResumeMachine::new(
        session,
        secret,
        target_wait,
        &mut rand::rngs::OsRng,
        clock.now(),
    );
    drive_resume(io, leftover, id, machine, clock).await
}

/// Makes `io` (already paired with the office PC) the session's control tunnel again.
pub(crate) async fn reattach_control<S: Stream>(
    io: S,
    leftover: BytesMut,
    id: &ComputerId,
    session: SessionId,
    secret: &ResumptionSecret,
) -> Result<SecureTunnel<S>, ClientError> {
    let clock = Clock::start();
    let machine =
        ClientResumeMachine::reattach_control(session, secret, &mut rand::rngs::OsRng, clock.now());
    drive_resume(io, leftover, id, machine, clock).await
}

async fn drive_resume<S: Stream>(
    mut io: S,
    leftover: BytesMut,
    id: &ComputerId,
    mut machine: ClientResumeMachine,
    clock: Clock,
) -> Result<SecureTunnel<S>, ClientError> {
    if !leftover.is_empty() {
        machine.receive(&leftover, clock.now());
    }
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        if let Some(out) = machine.take_output() {
            send(&mut io, &out).await?;
        }
        if let Some(result) = machine.result() {
            result.clone().map_err(|e| client_error(e, id))?;
            let (keys, leftover) = machine.into_tunnel().ok_or(ClientError::BadProof)?;
            return Ok(SecureTunnel::new(io, leftover, keys));
        }
        let Some(deadline) = machine.deadline() else {
            return Err(ClientError::BadProof);
        };
        match receive(&mut io, &mut chunk, clock.instant(deadline)).await? {
            Input::Deadline => machine.handle_timeout(clock.now()),
            Input::Bytes(n) => machine.receive(&chunk[..n], clock.now()),
        }
    }
}

/// What the employee is told for a handshake that failed.
pub(crate) fn client_error(e: HandshakeError, id: &ComputerId) -> ClientError {
    match e {
        HandshakeError::Refused(why) => ClientError::Refused(why),
        HandshakeError::WrongPasswordUnconfirmed => ClientError::WrongPasswordUnconfirmed,
        HandshakeError::BadProof => ClientError::BadProof,
        HandshakeError::AgentKeyChanged { pinned } => ClientError::AgentKeyChanged {
            id: id.clone(),
            pinned: key_fingerprint(&pinned),
        },
        HandshakeError::Stretch(why) => ClientError::Stretch(why),
        HandshakeError::Timeout => ClientError::Timeout,
        HandshakeError::TargetRefused => ClientError::TargetRefused,
        HandshakeError::Ended(reason) => ClientError::Ended(reason),
        HandshakeError::Wire(WireError::Record(e)) => ClientError::Tunnel(TunnelError::Record(e)),
        HandshakeError::Wire(_) => ClientError::Tunnel(TunnelError::Unexpected),
    }
}
