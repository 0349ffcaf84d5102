//! The employee's side of a password login.
//!
//! ```text
//! NeedPin ─▶ AwaitHello ─▶ AwaitChallenge ─▶ NeedOpen ─┬▶ AwaitNotice ⇄ NeedTotp ─▶ logged in
//!                                                      └▶ AwaitRefusal (LoginFailed sent)
//! ```
//!
//! For an office PC pinned on this relay, the PC must prove the pinned identity key over this
//! login before anything that depends on the password is sent, and must prove its OPAQUE
//! answer and refusals with the same key. Every failure of the password step looks the same on
//! the wire (`LoginFailed` after a full Argon2id).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use zeroize::Zeroizing;

use super::client_error::{authenticated_refusal, login_refusal, plaintext_refusal};
use super::wire::Wire;
use super::{HandshakeError, STEP_TIMEOUT};
use crate::e2e::identity::{
    device_login_message, IdentityChallenge, IdentityKey, Step, Transcript,
};
use crate::e2e::keys::{after_login, ResumptionSecret, Role, TunnelKeys};
use crate::e2e::messages::{
    AgentHandshake, AgentNotice, ClientHandshake, ClientNotice, DeviceProof, Refusal,
};
use crate::e2e::pake::{self, ClientLoginDone, PakeError};
use crate::e2e::stretch::StretchParams;
use crate::ids::{ComputerId, SessionId};
use crate::proof::MachineKey;

/// Who logs in, beyond the password.
#[derive(Clone)]
pub struct ClientLoginConfig {
    /// The office PC.
    pub id: ComputerId,
    /// This device's key.
    pub device: Arc<MachineKey>,
    /// A name IT staff see for this device.
    pub device_name: String,
    /// How long to wait for each notice after the password step (includes the agent's wait
    /// for a one-time code).
    pub notice_wait: Duration,
}

/// What the client's machine asks its driver to do, or tells it.
pub enum ClientLoginEvent {
    /// Look up the key pinned for this office PC on this relay; answer with
    /// [`ClientLoginMachine::pinned_key`].
    LookupPin,
    /// Open the office PC's answer with the password. This is Argon2id: run
    /// [`PasswordWork::run`] off the async workers and answer with
    /// [`ClientLoginMachine::password_opened`].
    OpenAnswer(Box<PasswordWork>),
    /// The office PC asks for a one-time code; answer with [`ClientLoginMachine::totp_code`].
    TotpNeeded,
    /// The login is over; write what is queued first.
    Finished(Result<LoggedIn, HandshakeError>),
}

/// A successful login.
pub struct LoggedIn {
    /// The session further tunnels resume.
    pub session: SessionId,
    /// Its resumption secret.
    pub secret: ResumptionSecret,
    /// The office PC's identity key, as OPAQUE proved it.
    pub agent_key: Vec<u8>,
    /// Nothing was pinned: the driver pins `agent_key` now (trust on first use).
    pub first_use: bool,
}

/// The costly part of a login: opening the office PC's OPAQUE answer with the password.
pub struct PasswordWork {
    state: pake::ClientLogin,
    password: Zeroizing<Vec<u8>>,
    response: Vec<u8>,
    stretch: StretchParams,
    id: ComputerId,
}

/// What [`PasswordWork::run`] found.
pub struct PasswordWorkDone(Result<ClientLoginDone, PakeError>);

impl PasswordWork {
    /// Stretches the password and opens the answer.
    pub fn run(self, rng: &mut (impl rand::RngCore + rand::CryptoRng)) -> PasswordWorkDone {
        PasswordWorkDone(self.state.finish_with(
            rng,
            &self.password,
            &self.response,
            self.stretch,
            &self.id,
        ))
    }
}

/// What the client knows once the office PC answered the hello.
struct Proven {
    challenge: IdentityChallenge,
    transcript: Transcript,
    hello_transcript: Transcript,
    hello_proof: [u8; 32],
    challenge_proof: [u8; 32],
    pinned: Option<Vec<u8>>,
    identity: Option<IdentityKey>,
}

/// What the client holds while it waits for the office PC's hello.
struct Hello {
    challenge: IdentityChallenge,
    transcript: Transcript,
    pinned: Option<Vec<u8>>,
    pake: pake::ClientLogin,
    request: Vec<u8>,
}

enum State {
    NeedPin,
    AwaitHello(Box<Hello>),
    AwaitChallenge(Box<Proven>, Box<pake::ClientLogin>),
    NeedOpen(Box<Proven>),
    AwaitRefusal(Box<Proven>),
    AwaitNotice(Box<LoggedIn>),
    NeedTotp(Box<LoggedIn>),
    Done,
}

/// The employee's side of a password login.
pub struct ClientLoginMachine {
    config: ClientLoginConfig,
    password: Zeroizing<Vec<u8>>,
    wire: Wire,
    state: State,
    events: VecDeque<ClientLoginEvent>,
    deadline: Option<Duration>,
    finished: bool,
}

impl ClientLoginMachine {
    /// A login with `password`; it starts by asking for the pinned key
    /// ([`ClientLoginEvent::LookupPin`]).
    pub fn new(config: ClientLoginConfig, password: &[u8]) -> Self {
        Self {
            config,
            password: Zeroizing::new(password.to_vec()),
            wire: Wire::default(),
            state: State::NeedPin,
            events: VecDeque::from([ClientLoginEvent::LookupPin]),
            deadline: None,
            finished: false,
        }
    }

    /// Feeds bytes from the office PC, in any fragments.
    pub fn receive(&mut self, bytes: &[u8], now: Duration) {
        if self.finished {
            return;
        }
        if let Err(e) = self.wire.push(bytes) {
            return self.fail(e.into());
        }
        while self.step(now) {}
    }

    /// Bytes to send, if any.
    pub fn take_output(&mut self) -> Option<BytesMut> {
        self.wire.take_output()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<ClientLoginEvent> {
        self.events.pop_front()
    }

    /// Until when the machine waits for the office PC.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Time passed: at or after [`ClientLoginMachine::deadline`], the wait ends.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.deadline.is_some_and(|d| now >= d) {
            let unconfirmed = matches!(self.state, State::AwaitRefusal(_));
            self.fail(if unconfirmed {
                HandshakeError::WrongPasswordUnconfirmed
            } else {
                HandshakeError::Timeout
            });
        }
    }

    /// The record keys and the bytes already read past the handshake, once logged in: the
    /// session's first tunnel.
    pub fn into_tunnel(self) -> Option<(TunnelKeys, BytesMut)> {
        self.wire.into_tunnel()
    }

    /// The answer to [`ClientLoginEvent::LookupPin`]: the pinned key, if any. Sends the hello.
    pub fn pinned_key(
        &mut self,
        pinned: Option<Vec<u8>>,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        now: Duration,
    ) {
        if !matches!(self.state, State::NeedPin) {
            return self.fail(HandshakeError::BadProof);
        }
        let challenge = IdentityChallenge::from_rng(rng);
        let mut nonce = [0u8; 32];
        rng.fill_bytes(&mut nonce);
        // The blinded request is made now but sent only after the hello's proof checks out.
        let Ok((pake, request)) = pake::ClientLogin::start_with(rng, &self.password) else {
            return self.fail(HandshakeError::BadProof);
        };
        let mut transcript = Transcript::new(&self.config.id);
        transcript.client_hello(&nonce, &challenge.public());
        self.wire.send_frame(&ClientHandshake::Hello {
            nonce,
            identity_challenge: challenge.public(),
        });
        self.state = State::AwaitHello(Box::new(Hello {
            challenge,
            transcript,
            pinned,
            pake,
            request,
        }));
        self.deadline = Some(now + STEP_TIMEOUT);
        while self.step(now) {}
    }

    /// Reads one message if the state waits for one; whether to try again.
    fn step(&mut self, now: Duration) -> bool {
        match std::mem::replace(&mut self.state, State::Done) {
            State::AwaitHello(hello) => match self.wire.frame::<AgentHandshake>() {
                Ok(None) => {
                    self.state = State::AwaitHello(hello);
                    false
                }
                Ok(Some(AgentHandshake::Hello { nonce, proof })) => {
                    self.on_hello(*hello, (nonce, proof), now)
                }
                Ok(Some(AgentHandshake::Refused(why))) if hello.pinned.is_none() => {
                    self.fail(plaintext_refusal(why));
                    false
                }
                Ok(Some(_)) | Err(_) => {
                    self.fail(HandshakeError::BadProof);
                    false
                }
            },
            State::AwaitChallenge(proven, pake) => self.on_challenge(proven, pake),
            State::AwaitRefusal(proven) => match self.wire.frame::<AgentHandshake>() {
                Ok(None) => {
                    self.state = State::AwaitRefusal(proven);
                    false
                }
                Ok(Some(AgentHandshake::LoginRefused { why, proof })) => {
                    let identity = proven.identity.as_ref();
                    self.fail(login_refusal(why, &proof, identity, &proven.transcript));
                    false
                }
                Ok(Some(_)) | Err(_) => {
                    self.fail(HandshakeError::WrongPasswordUnconfirmed);
                    false
                }
            },
            State::AwaitNotice(done) => self.on_notice(done),
            other => {
                self.state = other;
                false
            }
        }
    }

    fn on_hello(
        &mut self,
        hello: Hello,
        (nonce, hello_proof): ([u8; 32], [u8; 32]),
        now: Duration,
    ) -> bool {
        let Hello {
            challenge,
            mut transcript,
            pinned,
            pake,
            request,
        } = hello;
        transcript.agent_hello(&nonce);
        let hello_transcript = transcript.clone();
        let identity = match &pinned {
            Some(key) => {
                let Ok(identity) = challenge.key(key) else {
                    self.fail(HandshakeError::BadProof);
                    return false;
                };
                if identity
                    .verify(Step::Hello, &transcript, b"", &hello_proof)
                    .is_err()
                {
                    self.fail(HandshakeError::AgentKeyChanged {
                        pinned: key.clone(),
                    });
                    return false;
                }
                Some(identity)
            }
            None => None,
        };
        let device_key = self.config.device.public_key();
        transcript.login(&device_key, &request);
        let signature = self.config.device.sign(&device_login_message(&transcript));
        self.wire.send_frame(&ClientHandshake::Login {
            request,
            device: DeviceProof {
                public_key: device_key,
                signature,
            },
        });
        let proven = Proven {
            challenge,
            transcript,
            hello_transcript,
            hello_proof,
            challenge_proof: [0; 32],
            pinned,
            identity,
        };
        self.state = State::AwaitChallenge(Box::new(proven), Box::new(pake));
        self.deadline = Some(now + STEP_TIMEOUT);
        true
    }

    fn on_challenge(&mut self, mut proven: Box<Proven>, pake: Box<pake::ClientLogin>) -> bool {
        let (response, stretch, proof) = match self.wire.frame::<AgentHandshake>() {
            Ok(None) => {
                self.state = State::AwaitChallenge(proven, pake);
                return false;
            }
            Ok(Some(AgentHandshake::LoginChallenge {
                response,
                stretch,
                proof,
            })) => (response, stretch, proof),
            Ok(Some(AgentHandshake::LoginRefused { why, proof })) => {
                let identity = proven.identity.as_ref();
                self.fail(login_refusal(why, &proof, identity, &proven.transcript));
                return false;
            }
            Ok(Some(_)) | Err(_) => {
                self.fail(HandshakeError::BadProof);
                return false;
            }
        };
        proven.transcript.challenge(&response, &stretch);
        if let Some(identity) = &proven.identity {
            if identity
                .verify(Step::Challenge, &proven.transcript, b"", &proof)
                .is_err()
            {
                self.fail(HandshakeError::BadProof);
                return false;
            }
        }
        proven.challenge_proof = proof;
        self.deadline = None;
        self.events
            .push_back(ClientLoginEvent::OpenAnswer(Box::new(PasswordWork {
                state: *pake,
                password: self.password.clone(),
                response,
                stretch,
                id: self.config.id.clone(),
            })));
        self.state = State::NeedOpen(proven);
        false
    }

    /// The answer to [`ClientLoginEvent::OpenAnswer`].
    pub fn password_opened(&mut self, done: PasswordWorkDone, now: Duration) {
        let State::NeedOpen(proven) = std::mem::replace(&mut self.state, State::Done) else {
            return self.fail(HandshakeError::BadProof);
        };
        let done = match done.0 {
            // Whoever answered must hold the key OPAQUE just authenticated, throughout.
            Ok(done) if proves(&proven, &done.agent_public_key) => Some(done),
            Ok(_) => None,
            Err(PakeError::Stretch(why)) => return self.fail(HandshakeError::Stretch(why)),
            Err(_) => None,
        };
        let Some(done) = done else {
            // Every failure looks the same: the office PC counted it before answering, and
            // its proven reply is the only one that may make us ask for the password again.
            self.wire.send_frame(&ClientHandshake::LoginFailed);
            self.state = State::AwaitRefusal(proven);
            self.deadline = Some(now + STEP_TIMEOUT);
            while self.step(now) {}
            return;
        };
        self.wire.send_frame(&ClientHandshake::LoginFinish {
            finalization: done.finalization.clone(),
        });
        let (keys, secret) = after_login(&done.session_key, Role::Client);
        self.wire.start_records(keys);
        self.wire.send_control(&ClientNotice::DeviceName {
            name: self.config.device_name.clone(),
        });
        self.state = State::AwaitNotice(Box::new(LoggedIn {
            session: SessionId([0; 16]),
            secret,
            agent_key: done.agent_public_key,
            first_use: proven.pinned.is_none(),
        }));
        self.deadline = Some(now + self.config.notice_wait);
        while self.step(now) {}
    }

    fn on_notice(&mut self, mut done: Box<LoggedIn>) -> bool {
        match self.wire.control::<AgentNotice>() {
            Ok(None) => {
                self.state = State::AwaitNotice(done);
                false
            }
            Ok(Some(AgentNotice::SessionReady { session })) => {
                done.session = session;
                self.finish(Ok(*done));
                false
            }
            Ok(Some(AgentNotice::Refused(why))) => {
                let device_key = self.config.device.public_key();
                self.fail(authenticated_refusal(why, &device_key));
                false
            }
            Ok(Some(AgentNotice::TotpRequired)) => {
                self.deadline = None;
                self.events.push_back(ClientLoginEvent::TotpNeeded);
                self.state = State::NeedTotp(done);
                false
            }
            Ok(Some(_)) => {
                self.fail(HandshakeError::BadProof);
                false
            }
            Err(e) => {
                self.fail(e.into());
                false
            }
        }
    }

    /// The answer to [`ClientLoginEvent::TotpNeeded`]: the code, or `None` for none.
    pub fn totp_code(&mut self, code: Option<String>, now: Duration) {
        let State::NeedTotp(done) = std::mem::replace(&mut self.state, State::Done) else {
            return self.fail(HandshakeError::BadProof);
        };
        let Some(code) = code else {
            return self.fail(HandshakeError::Refused(Refusal::TotpMissing));
        };
        self.wire.send_control(&ClientNotice::Totp { code });
        self.state = State::AwaitNotice(done);
        self.deadline = Some(now + self.config.notice_wait);
        while self.step(now) {}
    }

    fn fail(&mut self, why: HandshakeError) {
        self.finish(Err(why));
    }

    fn finish(&mut self, result: Result<LoggedIn, HandshakeError>) {
        self.state = State::Done;
        self.deadline = None;
        if !self.finished {
            self.finished = true;
            self.events.push_back(ClientLoginEvent::Finished(result));
        }
    }
}

/// Whether the office PC proved `agent_key` throughout: the pinned key, or (on a first
/// connection) the key whose identity proofs of the hello and the answer check out.
fn proves(proven: &Proven, agent_key: &[u8]) -> bool {
    match &proven.pinned {
        Some(key) => key == agent_key,
        None => proven.challenge.key(agent_key).is_ok_and(|k| {
            k.verify(
                Step::Hello,
                &proven.hello_transcript,
                b"",
                &proven.hello_proof,
            )
            .is_ok()
                && k.verify(
                    Step::Challenge,
                    &proven.transcript,
                    b"",
                    &proven.challenge_proof,
                )
                .is_ok()
        }),
    }
}
