//! The office PC's side of a password login, in the order the security promises rest on:
//!
//! 1. prove this office PC's identity key over the client's fresh challenge, so a pinned
//!    client knows it talks to us before it sends anything that depends on the password;
//! 2. check the device's proof and that it is not revoked, then have the driver count the
//!    attempt as failed **on disk** ([`AgentEvent::CountAttempt`]);
//! 3. only then answer the OPAQUE request. The attempt is given back only on success (or a
//!    refusal after every secret proved right), so one that ends any other way stays counted;
//! 4. inside the end-to-end channel: the device's name, the one-time code when required, the
//!    device list, the session.

use std::time::Duration;

use super::agent::{AgentEvent, AgentMachine, AgentOutcome, State};
use super::{DeviceStanding, IfFailed, STEP_TIMEOUT};
use crate::e2e::identity::{device_login_message, IdentityKey, Step, Transcript};
use crate::e2e::keys::{after_login, ResumptionSecret, Role};
use crate::e2e::messages::{AgentHandshake, AgentNotice, ClientHandshake, ClientNotice, Refusal};
use crate::e2e::pake::{AgentLogin, PasswordRecord};
use crate::e2e::stretch::StretchParams;
use crate::ids::SessionId;
use crate::proof::{key_fingerprint, verify_signature};

/// A login before the password step is through: what proves the agent's answers.
pub(crate) struct Login {
    transcript: Transcript,
    identity: IdentityKey,
    record: PasswordRecord,
    request: Vec<u8>,
    device_key: Vec<u8>,
    pake: Option<AgentLogin>,
    answer: Option<(Vec<u8>, StretchParams)>,
    if_failed: IfFailed,
}

impl Login {
    /// Sends a refusal the client can check came from this office PC.
    pub(super) fn refuse(&self, m: &mut AgentMachine, why: Refusal) {
        let proof = self
            .identity
            .prove(Step::Refusal, &self.transcript, &why.proof_bytes());
        m.wire.send_frame(&AgentHandshake::LoginRefused {
            why: why.clone(),
            proof,
        });
        m.finish(AgentOutcome::Refused(why));
    }
}

/// A login after a right password, inside the end-to-end channel.
pub(crate) struct After {
    device_key: Vec<u8>,
    if_failed: IfFailed,
    secret: ResumptionSecret,
    name: String,
}

impl After {
    /// What a failed attempt tells the client: the tries left, or the lockout it started.
    pub(super) fn failure(&self, totp: bool) -> Refusal {
        failure_refusal(self.if_failed, totp)
    }
}

fn failure_refusal(if_failed: IfFailed, totp: bool) -> Refusal {
    match if_failed {
        IfFailed::TriesLeft(tries_left) if totp => Refusal::WrongTotp { tries_left },
        IfFailed::TriesLeft(tries_left) => Refusal::WrongPassword { tries_left },
        IfFailed::LockedOut(lock) => Refusal::LockedOut {
            retry_after_secs: lock.as_secs().max(1),
        },
    }
}

impl AgentMachine {
    pub(super) fn hello(
        &mut self,
        record: PasswordRecord,
        client_nonce: [u8; 32],
        challenge: [u8; 32],
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        now: Duration,
    ) {
        let Ok(identity) = record.identity_key(&challenge) else {
            return self.refuse_plain(Refusal::ProtocolViolation);
        };
        let mut transcript = Transcript::new(&self.id);
        transcript.client_hello(&client_nonce, &challenge);
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        transcript.agent_hello(&nonce);
        let proof = identity.prove(Step::Hello, &transcript, b"");
        self.wire
            .send_frame(&AgentHandshake::Hello { nonce, proof });
        self.state = State::AwaitLogin(Box::new(Login {
            transcript,
            identity,
            record,
            request: Vec::new(),
            device_key: Vec::new(),
            pake: None,
            answer: None,
            if_failed: IfFailed::TriesLeft(0),
        }));
        self.deadline = Some(now + STEP_TIMEOUT);
        self.process(now);
    }

    pub(super) fn on_login(&mut self, mut login: Box<Login>) -> bool {
        let (request, device) = match self.wire.frame::<ClientHandshake>() {
            Ok(None) => {
                self.state = State::AwaitLogin(login);
                return false;
            }
            Ok(Some(ClientHandshake::Login { request, device })) => (request, device),
            Ok(Some(_)) | Err(_) => {
                login.refuse(self, Refusal::ProtocolViolation);
                return false;
            }
        };
        self.deadline = None;
        login.transcript.login(&device.public_key, &request);
        if !verify_signature(
            &device.public_key,
            &device_login_message(&login.transcript),
            &device.signature,
        ) {
            login.refuse(self, Refusal::ProtocolViolation);
            return false;
        }
        login.request = request;
        login.device_key = device.public_key;
        self.events.push_back(AgentEvent::CheckDevice {
            device_key: login.device_key.clone(),
        });
        self.state = State::NeedDeviceStanding(login);
        false
    }

    /// The answer to [`AgentEvent::CheckDevice`]: where the device stands, or the refusal to
    /// send (`Busy`, `Misconfigured`). A revoked device gets no password step.
    pub fn device_checked(
        &mut self,
        standing: Result<DeviceStanding, Refusal>,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
    ) {
        let State::NeedDeviceStanding(mut login) = std::mem::replace(&mut self.state, State::Done)
        else {
            return self.misuse();
        };
        match standing {
            Ok(DeviceStanding::Revoked) => return login.refuse(self, Refusal::DeviceRevoked),
            Ok(_) => {}
            Err(why) => return login.refuse(self, why),
        }
        match AgentLogin::start_with(rng, &login.record, &login.request, &self.id) {
            Ok((pake, response, stretch)) => {
                // Nothing of the answer goes out before the attempt is counted.
                login.pake = Some(pake);
                login.answer = Some((response, stretch));
                self.events.push_back(AgentEvent::CountAttempt {
                    device_key: login.device_key.clone(),
                });
                self.state = State::NeedCount(login);
            }
            Err(_) => login.refuse(self, Refusal::ProtocolViolation),
        }
    }

    /// The answer to [`AgentEvent::CountAttempt`]: the attempt is on disk, and what its failure
    /// would tell the client; or the refusal to send (locked out; `Busy` or `Misconfigured`
    /// when it could not be recorded: an attempt that cannot be counted is not answered).
    pub fn attempt_counted(&mut self, counted: Result<IfFailed, Refusal>, now: Duration) {
        let State::NeedCount(mut login) = std::mem::replace(&mut self.state, State::Done) else {
            return self.misuse();
        };
        let if_failed = match counted {
            Ok(if_failed) => if_failed,
            Err(why) => return login.refuse(self, why),
        };
        let Some((response, stretch)) = login.answer.take() else {
            return self.misuse();
        };
        login.if_failed = if_failed;
        login.transcript.challenge(&response, &stretch);
        let proof = login
            .identity
            .prove(Step::Challenge, &login.transcript, b"");
        self.wire.send_frame(&AgentHandshake::LoginChallenge {
            response,
            stretch,
            proof,
        });
        self.state = State::AwaitFinish(login);
        self.deadline = Some(now + STEP_TIMEOUT);
        self.process(now);
    }

    pub(super) fn on_finish(&mut self, mut login: Box<Login>, now: Duration) -> bool {
        let finalization = match self.wire.frame::<ClientHandshake>() {
            Ok(None) => {
                self.state = State::AwaitFinish(login);
                return false;
            }
            Ok(Some(ClientHandshake::LoginFinish { finalization })) => Some(finalization),
            Ok(Some(_)) | Err(_) => None,
        };
        self.deadline = None;
        let session_key = match (finalization, login.pake.take()) {
            (Some(fin), Some(pake)) => pake.finish(&fin).ok(),
            _ => None,
        };
        let Some(session_key) = session_key else {
            self.finish_failed(&login);
            return false;
        };
        let (keys, secret) = after_login(&session_key, Role::Agent);
        self.wire.start_records(keys);
        let after = After {
            device_key: std::mem::take(&mut login.device_key),
            if_failed: login.if_failed,
            secret,
            name: String::new(),
        };
        self.state = State::AwaitDeviceName(Box::new(after));
        self.deadline = Some(now + STEP_TIMEOUT);
        true
    }

    /// The password step failed (wrong password, a `LoginFailed`, anything else, silence): it
    /// is already counted. The relay is told (it charges the client's address) and the client
    /// gets a refusal it can check.
    pub(super) fn finish_failed(&mut self, login: &Login) {
        self.events.push_back(AgentEvent::ReportFailure);
        login.refuse(self, failure_refusal(login.if_failed, false));
    }

    pub(super) fn on_device_name(&mut self, mut after: Box<After>) -> bool {
        match self.wire.control::<ClientNotice>() {
            Ok(None) => {
                self.state = State::AwaitDeviceName(after);
                false
            }
            Ok(Some(ClientNotice::DeviceName { name })) => {
                self.deadline = None;
                after.name = name;
                self.state = State::NeedTotpPolicy(after);
                self.events.push_back(AgentEvent::LoadTotpPolicy);
                false
            }
            Ok(Some(_)) | Err(_) => {
                self.refuse_after(&after, Refusal::ProtocolViolation);
                false
            }
        }
    }

    /// The answer to [`AgentEvent::LoadTotpPolicy`]: whether a one-time code is required, or
    /// the refusal to send (`Misconfigured`: a damaged setting never switches a check off).
    pub fn totp_required(&mut self, required: Result<bool, Refusal>, now: Duration) {
        let State::NeedTotpPolicy(after) = std::mem::replace(&mut self.state, State::Done) else {
            return self.misuse();
        };
        match required {
            Ok(true) => {
                self.wire.send_control(&AgentNotice::TotpRequired);
                self.state = State::AwaitTotp(after);
                self.deadline = Some(now + self.totp_timeout);
                self.process(now);
            }
            Ok(false) => self.admit(after),
            Err(why) => self.refuse_after(&after, why),
        }
    }

    pub(super) fn on_totp(&mut self, after: Box<After>, now: Duration) -> bool {
        match self.wire.control::<ClientNotice>() {
            Ok(None) => {
                self.state = State::AwaitTotp(after);
                false
            }
            Ok(Some(ClientNotice::Totp { code })) => {
                self.deadline = None;
                self.events.push_back(AgentEvent::CheckTotp {
                    code,
                    now_unix: now.as_secs(),
                });
                self.state = State::NeedTotpCheck(after);
                false
            }
            Ok(Some(_)) | Err(_) => {
                self.events.push_back(AgentEvent::ReportFailure);
                let why = after.failure(true);
                self.refuse_after(&after, why);
                false
            }
        }
    }

    /// The answer to [`AgentEvent::CheckTotp`]: whether the code was right (and its step is
    /// recorded), or the refusal to send (`Misconfigured` when the step cannot be saved).
    pub fn totp_checked(&mut self, accepted: Result<bool, Refusal>) {
        let State::NeedTotpCheck(after) = std::mem::replace(&mut self.state, State::Done) else {
            return self.misuse();
        };
        match accepted {
            Ok(true) => self.admit(after),
            Ok(false) => {
                self.events.push_back(AgentEvent::ReportFailure);
                let why = after.failure(true);
                self.refuse_after(&after, why);
            }
            Err(why) => self.refuse_after(&after, why),
        }
    }

    fn admit(&mut self, after: Box<After>) {
        self.events.push_back(AgentEvent::AdmitDevice {
            device_key: after.device_key.clone(),
            name: after.name.clone(),
        });
        self.state = State::NeedAdmission(after);
    }

    /// The answer to [`AgentEvent::AdmitDevice`]: where the device stands once recorded, or the
    /// refusal to send (`Busy`, `Misconfigured`).
    pub fn device_admitted(&mut self, standing: Result<DeviceStanding, Refusal>) {
        let State::NeedAdmission(after) = std::mem::replace(&mut self.state, State::Done) else {
            return self.misuse();
        };
        match standing {
            Ok(DeviceStanding::Approved) => {
                self.events.push_back(AgentEvent::RegisterSession {
                    device_key: after.device_key.clone(),
                    secret: after.secret.clone(),
                });
                self.state = State::NeedSession(after);
            }
            Ok(DeviceStanding::Pending | DeviceStanding::Unknown) => {
                let device = key_fingerprint(&after.device_key);
                self.refuse_after(&after, Refusal::DeviceNotApproved { device });
            }
            Ok(DeviceStanding::Revoked) => self.refuse_after(&after, Refusal::DeviceRevoked),
            Err(why) => self.refuse_after(&after, why),
        }
    }

    /// The answer to [`AgentEvent::RegisterSession`]: the new session's id. `SessionReady` is
    /// queued, then the attempt is given back ([`AgentEvent::AttemptSucceeded`]).
    pub fn session_registered(&mut self, session: SessionId) {
        let State::NeedSession(after) = std::mem::replace(&mut self.state, State::Done) else {
            return self.misuse();
        };
        self.wire
            .send_control(&AgentNotice::SessionReady { session });
        self.events.push_back(AgentEvent::AttemptSucceeded {
            device_key: after.device_key.clone(),
        });
        self.finish(AgentOutcome::SessionStarted(session));
    }

    /// A refusal after the password step, inside the end-to-end channel. A wrong or missing
    /// code stays counted; a refusal for any other reason came after every secret proved
    /// right, and the attempt is given back.
    pub(super) fn refuse_after(&mut self, _after: &After, why: Refusal) {
        if !matches!(
            why,
            Refusal::WrongTotp { .. }
                | Refusal::TotpMissing
                | Refusal::LockedOut { .. }
                | Refusal::ProtocolViolation
        ) {
            self.events.push_back(AgentEvent::AttemptGivenBack);
        }
        self.wire.send_control(&AgentNotice::Refused(why.clone()));
        self.wire.send_eof();
        self.finish(AgentOutcome::Refused(why));
    }
}
