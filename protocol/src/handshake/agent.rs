//! The office PC's side of a handshake: the client's first message decides between a password
//! login ([`super::agent_login`]) and the resumption of a session (here).
//!
//! ```text
//! AwaitFirst ─Hello──▶ login steps (agent_login.rs)
//!            ─Resume─▶ NeedSession ─▶ AwaitResumeFinish ─▶ NeedAccess ─▶ NeedTarget ─▶ done
//!            ─ReattachControl─▶ (the same, under its own label) ─▶ NeedAccess ─▶ done
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use bytes::BytesMut;

use super::agent_login::{After, Login};
use super::wire::{Wire, WireError};
use super::STEP_TIMEOUT;
use crate::e2e::keys::{ResumptionSecret, TunnelKeys};
use crate::e2e::messages::{AgentHandshake, AgentNotice, ClientHandshake, EndReason, Refusal};
use crate::e2e::pake::PasswordRecord;
use crate::e2e::resume::{AgentResume, ResumePurpose};
use crate::ids::{ComputerId, SessionId};

/// What the agent's machine asks its driver to do, or tells it. Those that say "answer with"
/// pause the machine until the driver calls that method.
pub enum AgentEvent {
    /// A client asks for a password login: read the password record; answer with
    /// [`AgentMachine::password_record`].
    LoadPasswordRecord,
    /// Look up this device, which proved its key, on the device list (a revoked device gets
    /// no password step); answer with [`AgentMachine::device_checked`].
    CheckDevice {
        /// The device's Ed25519 public key.
        device_key: Vec<u8>,
    },
    /// Count this login attempt as a failure **on disk**, under the device's own budget or the
    /// shared one, before the OPAQUE answer goes out; answer with
    /// [`AgentMachine::attempt_counted`].
    CountAttempt {
        /// The device's public key.
        device_key: Vec<u8>,
    },
    /// A login failed on a secret: tell the relay, which charges the client's address.
    ReportFailure,
    /// Read whether one-time codes are required; answer with [`AgentMachine::totp_required`].
    LoadTotpPolicy,
    /// Check a one-time code at `now_unix` and, if right, record its time step so it works
    /// once; answer with [`AgentMachine::totp_checked`].
    CheckTotp {
        /// The code as typed.
        code: String,
        /// The time to check it at (seconds since the Unix epoch).
        now_unix: u64,
    },
    /// Every other check passed: record the device under `name` and say where it stands;
    /// answer with [`AgentMachine::device_admitted`].
    AdmitDevice {
        /// The device's public key.
        device_key: Vec<u8>,
        /// The name it gave (inside the end-to-end channel).
        name: String,
    },
    /// Register the new session; answer with [`AgentMachine::session_registered`].
    RegisterSession {
        /// The device it logs in with.
        device_key: Vec<u8>,
        /// The secret further tunnels resume with.
        secret: ResumptionSecret,
    },
    /// The client has been told its login succeeded: give the attempt back and remember the
    /// device.
    AttemptSucceeded {
        /// The device's public key.
        device_key: Vec<u8>,
    },
    /// The password (and code) proved right but the login was refused for another reason:
    /// give the attempt back.
    AttemptGivenBack,
    /// A client resumes `session`; answer with [`AgentMachine::session_looked_up`].
    LookupSession {
        /// The session.
        session: SessionId,
    },
    /// The resumption proved itself: check the session's device, password and policy still
    /// hold; answer with [`AgentMachine::access_checked`].
    CheckAccess {
        /// The session.
        session: SessionId,
    },
    /// Connect to the desktop service; answer with [`AgentMachine::target_connected`].
    ConnectTarget,
    /// The handshake is over; write what is queued, then act on the outcome.
    Finished(AgentOutcome),
}

impl std::fmt::Debug for AgentEvent {
    /// Names the event, without the secrets some carry.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::LoadPasswordRecord => f.write_str("LoadPasswordRecord"),
            Self::CheckDevice { .. } => f.write_str("CheckDevice"),
            Self::CountAttempt { .. } => f.write_str("CountAttempt"),
            Self::ReportFailure => f.write_str("ReportFailure"),
            Self::LoadTotpPolicy => f.write_str("LoadTotpPolicy"),
            Self::CheckTotp { .. } => f.write_str("CheckTotp"),
            Self::AdmitDevice { .. } => f.write_str("AdmitDevice"),
            Self::RegisterSession { .. } => f.write_str("RegisterSession"),
            Self::AttemptSucceeded { .. } => f.write_str("AttemptSucceeded"),
            Self::AttemptGivenBack => f.write_str("AttemptGivenBack"),
            Self::LookupSession { session } => write!(f, "LookupSession({session})"),
            Self::CheckAccess { session } => write!(f, "CheckAccess({session})"),
            Self::ConnectTarget => f.write_str("ConnectTarget"),
            Self::Finished(outcome) => write!(f, "Finished({outcome:?})"),
        }
    }
}

/// How an agent's handshake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentOutcome {
    /// A login succeeded and `SessionReady` is queued: the tunnel ([`AgentMachine::into_tunnel`])
    /// holds the session.
    SessionStarted(SessionId),
    /// A resumption succeeded and `TargetConnected` is queued: pump the tunnel.
    TunnelReady(SessionId),
    /// A control re-attachment succeeded and `ControlReattached` is queued: the tunnel
    /// ([`AgentMachine::into_tunnel`]) holds the session from now on.
    ControlReattached(SessionId),
    /// The handshake was refused; the refusal is queued.
    Refused(Refusal),
    /// A resumed session may not go on (the notice is queued): end it for this reason.
    SessionEnded {
        /// The session.
        session: SessionId,
        /// Why.
        reason: EndReason,
    },
    /// The desktop service did not take the connection; `TargetRefused` is queued.
    TargetRefused,
    /// The client did not answer in time; nothing is queued.
    TimedOut,
}

/// What the agent knows about a session a client resumes.
pub struct SessionFacts {
    /// Its resumption secret.
    pub secret: ResumptionSecret,
    /// When it reaches its maximum length (since the Unix epoch), if it has one.
    pub expires_at: Option<Duration>,
}

pub(super) enum State {
    AwaitFirst,
    NeedRecord {
        client_nonce: [u8; 32],
        challenge: [u8; 32],
    },
    AwaitLogin(Box<Login>),
    NeedDeviceStanding(Box<Login>),
    NeedCount(Box<Login>),
    AwaitFinish(Box<Login>),
    AwaitDeviceName(Box<After>),
    NeedTotpPolicy(Box<After>),
    AwaitTotp(Box<After>),
    NeedTotpCheck(Box<After>),
    NeedAdmission(Box<After>),
    NeedSession(Box<After>),
    NeedSessionFacts {
        purpose: ResumePurpose,
        session: SessionId,
        client_nonce: [u8; 32],
    },
    AwaitResumeFinish {
        purpose: ResumePurpose,
        session: SessionId,
        resume: Box<AgentResume>,
        expires_at: Option<Duration>,
    },
    NeedAccess(SessionId, ResumePurpose),
    NeedTarget(SessionId),
    Done,
}

/// The office PC's side of one tunnel's handshake.
pub struct AgentMachine {
    pub(super) id: ComputerId,
    pub(super) totp_timeout: Duration,
    pub(super) wire: Wire,
    pub(super) state: State,
    pub(super) events: VecDeque<AgentEvent>,
    pub(super) deadline: Option<Duration>,
    pub(super) finished: bool,
}

impl AgentMachine {
    /// A machine waiting for the client's first message, which must come within
    /// [`STEP_TIMEOUT`] of `now`. `totp_timeout` is how long an employee may take to type a
    /// one-time code ([`super::TOTP_TIMEOUT`]).
    pub fn new(id: ComputerId, totp_timeout: Duration, now: Duration) -> Self {
        Self {
            id,
            totp_timeout,
            wire: Wire::default(),
            state: State::AwaitFirst,
            events: VecDeque::new(),
            deadline: Some(now + STEP_TIMEOUT),
            finished: false,
        }
    }

    /// Feeds bytes from the client, in any fragments.
    pub fn receive(&mut self, bytes: &[u8], now: Duration) {
        if self.finished {
            return;
        }
        if let Err(e) = self.wire.push(bytes) {
            self.bad_input(e);
            return;
        }
        self.process(now);
    }

    /// Bytes to send to the client, if any.
    pub fn take_output(&mut self) -> Option<BytesMut> {
        self.wire.take_output()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<AgentEvent> {
        self.events.pop_front()
    }

    /// Until when the machine waits for the client (`None` while it waits for its driver, or
    /// when it is finished).
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Time passed: at or after [`AgentMachine::deadline`], the wait for the client ends.
    pub fn handle_timeout(&mut self, now: Duration) {
        match self.deadline {
            Some(deadline) if now >= deadline => {}
            _ => return,
        }
        self.deadline = None;
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitFinish(login) => self.finish_failed(&login),
            State::AwaitDeviceName(after) => self.refuse_after(&after, Refusal::ProtocolViolation),
            State::AwaitTotp(after) => {
                self.events.push_back(AgentEvent::ReportFailure);
                let why = after.failure(true);
                self.refuse_after(&after, why);
            }
            _ => self.finish(AgentOutcome::TimedOut),
        }
    }

    /// The record keys and the bytes already read past the handshake, once it succeeded.
    pub fn into_tunnel(self) -> Option<(TunnelKeys, BytesMut)> {
        self.wire.into_tunnel()
    }

    /// Reads whole messages for as long as the current state waits for one.
    pub(super) fn process(&mut self, now: Duration) {
        loop {
            let progressed = match std::mem::replace(&mut self.state, State::Done) {
                State::AwaitFirst => self.on_first(),
                State::AwaitLogin(login) => self.on_login(login),
                State::AwaitFinish(login) => self.on_finish(login, now),
                State::AwaitDeviceName(after) => self.on_device_name(after),
                State::AwaitTotp(after) => self.on_totp(after, now),
                State::AwaitResumeFinish {
                    purpose,
                    session,
                    resume,
                    expires_at,
                } => self.on_resume_finish(purpose, session, resume, expires_at, now),
                other => {
                    self.state = other;
                    false
                }
            };
            if !progressed {
                return;
            }
        }
    }

    /// Input that cannot be read in the current state.
    fn bad_input(&mut self, _why: WireError) {
        self.deadline = None;
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitLogin(login)
            | State::NeedDeviceStanding(login)
            | State::NeedCount(login) => login.refuse(self, Refusal::ProtocolViolation),
            State::AwaitFinish(login) => self.finish_failed(&login),
            State::AwaitTotp(after) | State::NeedTotpCheck(after) => {
                self.events.push_back(AgentEvent::ReportFailure);
                let why = after.failure(true);
                self.refuse_after(&after, why);
            }
            State::AwaitDeviceName(after)
            | State::NeedTotpPolicy(after)
            | State::NeedAdmission(after)
            | State::NeedSession(after) => self.refuse_after(&after, Refusal::ProtocolViolation),
            State::Done => {}
            _ => self.refuse_plain(Refusal::ProtocolViolation),
        }
    }

    fn on_first(&mut self) -> bool {
        let first = match self.wire.frame::<ClientHandshake>() {
            Ok(Some(first)) => first,
            Ok(None) => {
                self.state = State::AwaitFirst;
                return false;
            }
            Err(_) => {
                self.refuse_plain(Refusal::ProtocolViolation);
                return false;
            }
        };
        self.deadline = None;
        match first {
            ClientHandshake::Hello {
                nonce,
                identity_challenge,
            } => {
                self.state = State::NeedRecord {
                    client_nonce: nonce,
                    challenge: identity_challenge,
                };
                self.events.push_back(AgentEvent::LoadPasswordRecord);
            }
            ClientHandshake::Resume { session, nonce } => {
                self.state = State::NeedSessionFacts {
                    purpose: ResumePurpose::Desktop,
                    session,
                    client_nonce: nonce,
                };
                self.events.push_back(AgentEvent::LookupSession { session });
            }
            ClientHandshake::ReattachControl { session, nonce } => {
                self.state = State::NeedSessionFacts {
                    purpose: ResumePurpose::Control,
                    session,
                    client_nonce: nonce,
                };
                self.events.push_back(AgentEvent::LookupSession { session });
            }
            _ => self.refuse_plain(Refusal::ProtocolViolation),
        }
        true
    }

    /// The answer to [`AgentEvent::LoadPasswordRecord`]: the record, or the refusal to send
    /// (`NoPassword`, `Misconfigured`).
    pub fn password_record(
        &mut self,
        record: Result<PasswordRecord, Refusal>,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        now: Duration,
    ) {
        let State::NeedRecord {
            client_nonce,
            challenge,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return self.misuse();
        };
        match record {
            Ok(record) => self.hello(record, client_nonce, challenge, rng, now),
            Err(why) => self.refuse_plain(why),
        }
    }

    /// The answer to [`AgentEvent::LookupSession`]: the session, if it is live.
    pub fn session_looked_up(
        &mut self,
        facts: Option<SessionFacts>,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        now: Duration,
    ) {
        let State::NeedSessionFacts {
            purpose,
            session,
            client_nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return self.misuse();
        };
        let Some(facts) = facts else {
            return self.refuse_plain(Refusal::SessionInvalid);
        };
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        let resume =
            AgentResume::respond_with_nonce(purpose, session, &facts.secret, &client_nonce, nonce);
        let (nonce, mac) = resume.challenge();
        self.wire
            .send_frame(&AgentHandshake::ResumeChallenge { nonce, mac });
        self.state = State::AwaitResumeFinish {
            purpose,
            session,
            resume: Box::new(resume),
            expires_at: facts.expires_at,
        };
        self.deadline = Some(now + STEP_TIMEOUT);
        self.process(now);
    }

    fn on_resume_finish(
        &mut self,
        purpose: ResumePurpose,
        session: SessionId,
        resume: Box<AgentResume>,
        expires_at: Option<Duration>,
        now: Duration,
    ) -> bool {
        let mac = match self.wire.frame::<ClientHandshake>() {
            Ok(None) => {
                self.state = State::AwaitResumeFinish {
                    purpose,
                    session,
                    resume,
                    expires_at,
                };
                return false;
            }
            Ok(Some(ClientHandshake::ResumeFinish { mac })) => mac,
            Ok(Some(_)) | Err(_) => {
                self.refuse_plain(Refusal::ProtocolViolation);
                return false;
            }
        };
        self.deadline = None;
        let Ok(keys) = resume.finish(&mac) else {
            self.refuse_plain(Refusal::SessionInvalid);
            return false;
        };
        self.wire.start_records(keys);
        if expires_at.is_some_and(|at| now >= at) {
            self.end_session(session, EndReason::MaxDuration);
            return false;
        }
        self.state = State::NeedAccess(session, purpose);
        self.events.push_back(AgentEvent::CheckAccess { session });
        false
    }

    /// The answer to [`AgentEvent::CheckAccess`]: `Err` with the reason the session must end.
    pub fn access_checked(&mut self, verdict: Result<(), EndReason>) {
        let State::NeedAccess(session, purpose) = std::mem::replace(&mut self.state, State::Done)
        else {
            return self.misuse();
        };
        match (verdict, purpose) {
            (Ok(()), ResumePurpose::Desktop) => {
                self.state = State::NeedTarget(session);
                self.events.push_back(AgentEvent::ConnectTarget);
            }
            (Ok(()), ResumePurpose::Control) => {
                self.wire.send_control(&AgentNotice::ControlReattached);
                self.finish(AgentOutcome::ControlReattached(session));
            }
            (Err(reason), _) => self.end_session(session, reason),
        }
    }

    /// The answer to [`AgentEvent::ConnectTarget`]: whether the desktop service took the
    /// connection.
    pub fn target_connected(&mut self, connected: bool) {
        let State::NeedTarget(session) = std::mem::replace(&mut self.state, State::Done) else {
            return self.misuse();
        };
        if connected {
            self.wire.send_control(&AgentNotice::TargetConnected);
            self.finish(AgentOutcome::TunnelReady(session));
        } else {
            self.wire.send_control(&AgentNotice::TargetRefused);
            self.wire.send_eof();
            self.finish(AgentOutcome::TargetRefused);
        }
    }

    fn end_session(&mut self, session: SessionId, reason: EndReason) {
        self.wire.send_control(&AgentNotice::SessionEnded(reason));
        self.wire.send_eof();
        self.finish(AgentOutcome::SessionEnded { session, reason });
    }

    /// A refusal in plaintext, before any identity proof.
    pub(super) fn refuse_plain(&mut self, why: Refusal) {
        self.wire.send_frame(&AgentHandshake::Refused(why.clone()));
        self.finish(AgentOutcome::Refused(why));
    }

    pub(super) fn finish(&mut self, outcome: AgentOutcome) {
        self.state = State::Done;
        self.deadline = None;
        if !self.finished {
            self.finished = true;
            self.events.push_back(AgentEvent::Finished(outcome));
        }
    }

    /// A driver answered an event the machine was not waiting for (a bug in the driver): the
    /// handshake ends, refused.
    pub(super) fn misuse(&mut self) {
        self.finish(AgentOutcome::Refused(Refusal::ProtocolViolation));
    }
}
