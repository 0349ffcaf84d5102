//! The employee's side of a resumption: a further tunnel of a session, with no password, or
//! the session's control tunnel again after its connection broke.
//!
//! ```text
//! AwaitChallenge ─▶ AwaitTarget ─▶ ready (TargetConnected, or ControlReattached)
//! ```

use std::time::Duration;

use bytes::BytesMut;

use super::client_error::plaintext_refusal;
use super::wire::Wire;
use super::{HandshakeError, STEP_TIMEOUT};
use crate::e2e::keys::{ResumptionSecret, TunnelKeys};
use crate::e2e::messages::{AgentHandshake, AgentNotice, ClientHandshake};
use crate::e2e::resume::{ClientResume, ResumePurpose};
use crate::ids::SessionId;

enum State {
    AwaitChallenge(ClientResume),
    AwaitTarget,
    Done,
}

/// The employee's side of one resumed tunnel. It has no events: when
/// [`ClientResumeMachine::result`] gives `Ok`, the office PC has connected the tunnel to its
/// desktop service.
pub struct ClientResumeMachine {
    purpose: ResumePurpose,
    wire: Wire,
    state: State,
    deadline: Option<Duration>,
    target_wait: Duration,
    result: Option<Result<(), HandshakeError>>,
}

impl ClientResumeMachine {
    /// Starts resuming `session`: queues the `Resume` message with a fresh nonce from `rng`.
    /// `target_wait` is how long the office PC may take to connect its desktop service once
    /// the resumption is proven.
    pub fn new(
        session: SessionId,
        secret: &ResumptionSecret,
        target_wait: Duration,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        now: Duration,
    ) -> Self {
        Self::start(
            ResumePurpose::Desktop,
            session,
            secret,
            target_wait,
            rng,
            now,
        )
    }

    /// Starts making this tunnel the control tunnel of `session` again (queues
    /// `ReattachControl`). When [`ClientResumeMachine::result`] gives `Ok`, the office PC
    /// holds the session on it.
    pub fn reattach_control(
        session: SessionId,
        secret: &ResumptionSecret,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        now: Duration,
    ) -> Self {
        Self::start(
            ResumePurpose::Control,
            session,
            secret,
            STEP_TIMEOUT,
            rng,
            now,
        )
    }

    fn start(
        purpose: ResumePurpose,
        session: SessionId,
        secret: &ResumptionSecret,
        target_wait: Duration,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        now: Duration,
    ) -> Self {
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let resume = ClientResume::with_nonce(purpose, session, secret, nonce);
        let mut wire = Wire::default();
        wire.send_frame(&match purpose {
            ResumePurpose::Desktop => ClientHandshake::Resume { session, nonce },
            ResumePurpose::Control => ClientHandshake::ReattachControl { session, nonce },
        });
        Self {
            purpose,
            wire,
            state: State::AwaitChallenge(resume),
            deadline: Some(now + STEP_TIMEOUT),
            target_wait,
            result: None,
        }
    }

    /// Feeds bytes from the office PC, in any fragments.
    pub fn receive(&mut self, bytes: &[u8], now: Duration) {
        if self.result.is_some() {
            return;
        }
        if let Err(e) = self.wire.push(bytes) {
            return self.finish(Err(e.into()));
        }
        while self.step(now) {}
    }

    /// Bytes to send, if any.
    pub fn take_output(&mut self) -> Option<BytesMut> {
        self.wire.take_output()
    }

    /// Until when the machine waits for the office PC.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Time passed: at or after [`ClientResumeMachine::deadline`], the wait ends.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.finish(Err(HandshakeError::Timeout));
        }
    }

    /// How the resumption ended, once it did.
    pub fn result(&self) -> Option<&Result<(), HandshakeError>> {
        self.result.as_ref()
    }

    /// The record keys and the bytes already read past the handshake.
    pub fn into_tunnel(self) -> Option<(TunnelKeys, BytesMut)> {
        self.wire.into_tunnel()
    }

    fn step(&mut self, now: Duration) -> bool {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitChallenge(resume) => {
                let (nonce, mac) = match self.wire.frame::<AgentHandshake>() {
                    Ok(None) => {
                        self.state = State::AwaitChallenge(resume);
                        return false;
                    }
                    Ok(Some(AgentHandshake::ResumeChallenge { nonce, mac })) => (nonce, mac),
                    Ok(Some(AgentHandshake::Refused(why))) => {
                        self.finish(Err(plaintext_refusal(why)));
                        return false;
                    }
                    Ok(Some(_)) | Err(_) => {
                        self.finish(Err(HandshakeError::BadProof));
                        return false;
                    }
                };
                let Ok((mac, keys)) = resume.finish(&nonce, &mac) else {
                    self.finish(Err(HandshakeError::BadProof));
                    return false;
                };
                self.wire.send_frame(&ClientHandshake::ResumeFinish { mac });
                self.wire.start_records(keys);
                self.state = State::AwaitTarget;
                self.deadline = Some(now + self.target_wait);
                true
            }
            State::AwaitTarget => {
                let result = match self.wire.control::<AgentNotice>() {
                    Ok(None) => {
                        self.state = State::AwaitTarget;
                        return false;
                    }
                    Ok(Some(AgentNotice::TargetConnected))
                        if self.purpose == ResumePurpose::Desktop =>
                    {
                        Ok(())
                    }
                    Ok(Some(AgentNotice::ControlReattached))
                        if self.purpose == ResumePurpose::Control =>
                    {
                        Ok(())
                    }
                    Ok(Some(AgentNotice::TargetRefused)) => Err(HandshakeError::TargetRefused),
                    Ok(Some(AgentNotice::SessionEnded(r))) => Err(HandshakeError::Ended(r)),
                    Ok(Some(AgentNotice::Refused(why))) => Err(HandshakeError::Refused(why)),
                    Ok(Some(_)) => Err(HandshakeError::BadProof),
                    Err(e) => Err(e.into()),
                };
                self.finish(result);
                false
            }
            State::Done => false,
        }
    }

    fn finish(&mut self, result: Result<(), HandshakeError>) {
        self.state = State::Done;
        self.deadline = None;
        if self.result.is_none() {
            self.result = Some(result);
        }
    }
}
