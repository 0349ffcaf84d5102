//! In-memory harness for the handshake machines: an office PC whose disk and session table
//! are plain fields, an employee, and a loop that carries bytes between the two machines in
//! fragments of any size. Time is an input the tests step.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rand::rngs::OsRng;

use super::{
    AgentEvent, AgentMachine, AgentOutcome, ClientLoginConfig, ClientLoginEvent,
    ClientLoginMachine, ClientResumeMachine, DeviceStanding, HandshakeError, IfFailed, LoggedIn,
    SessionFacts, TOTP_TIMEOUT,
};
use crate::e2e::keys::ResumptionSecret;
use crate::e2e::messages::{EndReason, Refusal};
use crate::e2e::pake::PasswordRecord;
use crate::ids::{ComputerId, SessionId};
use crate::proof::MachineKey;

pub const PASSWORD: &[u8] = b"correct horse battery";
pub const START: Duration = Duration::from_secs(1_800_000_000);

pub fn id() -> ComputerId {
    "pc-tanaka-01".parse().unwrap()
}

/// One record for every test: making it costs an Argon2id.
pub fn record() -> PasswordRecord {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    let bytes = BYTES.get_or_init(|| {
        PasswordRecord::create(PASSWORD)
            .unwrap()
            .to_bytes()
            .to_vec()
    });
    PasswordRecord::from_bytes(bytes).unwrap()
}

pub fn agent_key() -> Vec<u8> {
    record().agent_public_key().unwrap()
}

/// The office PC's disk and tables.
pub struct Office {
    pub has_password: bool,
    pub tries_left: u32,
    pub locked: bool,
    pub counted: u32,
    pub given_back: u32,
    pub succeeded: u32,
    pub reports: u32,
    pub devices: HashMap<Vec<u8>, DeviceStanding>,
    pub require_approval: bool,
    /// The code that is right now, if codes are required.
    pub totp: Option<String>,
    pub totp_used: Vec<String>,
    pub sessions: HashMap<SessionId, (ResumptionSecret, Option<Duration>)>,
    pub max_session: Option<Duration>,
    pub access: Result<(), EndReason>,
    pub target_up: bool,
    pub events: Vec<String>,
}

impl Default for Office {
    fn default() -> Self {
        Self {
            has_password: true,
            tries_left: 5,
            locked: false,
            counted: 0,
            given_back: 0,
            succeeded: 0,
            reports: 0,
            devices: HashMap::new(),
            require_approval: false,
            totp: None,
            totp_used: Vec::new(),
            sessions: HashMap::new(),
            max_session: None,
            access: Ok(()),
            target_up: true,
            events: Vec::new(),
        }
    }
}

impl Office {
    /// Does what an event asks and feeds the result back; the outcome once finished.
    pub fn handle(
        &mut self,
        m: &mut AgentMachine,
        event: AgentEvent,
        now: Duration,
    ) -> Option<AgentOutcome> {
        self.events.push(format!("{event:?}"));
        match event {
            AgentEvent::LoadPasswordRecord => {
                let r = if self.has_password {
                    Ok(record())
                } else {
                    Err(Refusal::NoPassword)
                };
                m.password_record(r, &mut OsRng, now);
            }
            AgentEvent::CheckDevice { device_key } => {
                let s = self
                    .devices
                    .get(&device_key)
                    .copied()
                    .unwrap_or(DeviceStanding::Unknown);
                m.device_checked(Ok(s), &mut OsRng);
            }
            AgentEvent::CountAttempt { .. } => {
                if self.locked {
                    m.attempt_counted(
                        Err(Refusal::LockedOut {
                            retry_after_secs: 60,
                        }),
                        now,
                    );
                } else {
                    self.counted += 1;
                    self.tries_left = self.tries_left.saturating_sub(1);
                    let if_failed = if self.tries_left == 0 {
                        IfFailed::LockedOut(Duration::from_secs(60))
                    } else {
                        IfFailed::TriesLeft(self.tries_left)
                    };
                    m.attempt_counted(Ok(if_failed), now);
                }
            }
            AgentEvent::ReportFailure => self.reports += 1,
            AgentEvent::LoadTotpPolicy => m.totp_required(Ok(self.totp.is_some()), now),
            AgentEvent::CheckTotp { code, now_unix } => {
                assert_eq!(now_unix, now.as_secs());
                let ok =
                    self.totp.as_deref() == Some(code.as_str()) && !self.totp_used.contains(&code);
                if ok {
                    self.totp_used.push(code);
                }
                m.totp_checked(Ok(ok));
            }
            AgentEvent::AdmitDevice { device_key, .. } => {
                let standing = self
                    .devices
                    .entry(device_key)
                    .or_insert(if self.require_approval {
                        DeviceStanding::Pending
                    } else {
                        DeviceStanding::Approved
                    });
                m.device_admitted(Ok(*standing));
            }
            AgentEvent::RegisterSession { secret, .. } => {
                let id = SessionId([self.sessions.len() as u8 + 1; 16]);
                self.sessions
                    .insert(id, (secret, self.max_session.map(|d| now + d)));
                m.session_registered(id);
            }
            AgentEvent::AttemptSucceeded { .. } => {
                self.succeeded += 1;
                self.tries_left += 1;
            }
            AgentEvent::AttemptGivenBack => {
                self.given_back += 1;
                self.tries_left += 1;
            }
            AgentEvent::LookupSession { session } => {
                let facts = self
                    .sessions
                    .get(&session)
                    .map(|(secret, expires_at)| SessionFacts {
                        secret: secret.clone(),
                        expires_at: *expires_at,
                    });
                m.session_looked_up(facts, &mut OsRng, now);
            }
            AgentEvent::CheckAccess { .. } => m.access_checked(self.access),
            AgentEvent::ConnectTarget => m.target_connected(self.target_up),
            AgentEvent::Finished(outcome) => return Some(outcome),
        }
        None
    }
}

/// The employee's side: what is pinned and what code they type.
pub struct Employee {
    pub device: Arc<MachineKey>,
    pub pinned: Option<Vec<u8>>,
    pub totp: Option<String>,
    pub password: Vec<u8>,
}

impl Default for Employee {
    fn default() -> Self {
        Self {
            device: Arc::new(MachineKey::generate().unwrap()),
            pinned: Some(agent_key()),
            totp: None,
            password: PASSWORD.to_vec(),
        }
    }
}

impl Employee {
    pub fn machine(&self) -> ClientLoginMachine {
        let config = ClientLoginConfig {
            id: id(),
            device: self.device.clone(),
            device_name: "home-laptop".into(),
            notice_wait: Duration::from_secs(150),
        };
        ClientLoginMachine::new(config, &self.password)
    }

    pub fn handle(
        &self,
        m: &mut ClientLoginMachine,
        event: ClientLoginEvent,
        now: Duration,
    ) -> Option<Result<LoggedIn, HandshakeError>> {
        match event {
            ClientLoginEvent::LookupPin => m.pinned_key(self.pinned.clone(), &mut OsRng, now),
            ClientLoginEvent::OpenAnswer(work) => m.password_opened(work.run(&mut OsRng), now),
            ClientLoginEvent::TotpNeeded => m.totp_code(self.totp.clone(), now),
            ClientLoginEvent::Finished(result) => return Some(result),
        }
        None
    }
}

/// Feeds `bytes` in pieces of `chunk` bytes.
pub fn feed(bytes: &[u8], chunk: usize, mut f: impl FnMut(&[u8])) {
    for piece in bytes.chunks(chunk.max(1)) {
        f(piece);
    }
}

/// What a whole login came to on both sides.
pub struct Login {
    pub client: Option<Result<LoggedIn, HandshakeError>>,
    pub agent: Option<AgentOutcome>,
    pub client_machine: ClientLoginMachine,
    pub agent_machine: AgentMachine,
}

/// Runs a login between the two machines, carrying bytes in `chunk`-byte pieces.
pub fn login(office: &mut Office, employee: &Employee, chunk: usize, now: Duration) -> Login {
    let mut c = employee.machine();
    let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, now);
    let (mut client, mut agent) = (None, None);
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(ev) = c.poll_event() {
            moved = true;
            if let Some(r) = employee.handle(&mut c, ev, now) {
                client = Some(r);
            }
        }
        if let Some(out) = c.take_output() {
            moved = true;
            feed(&out, chunk, |p| a.receive(p, now));
        }
        while let Some(ev) = a.poll_event() {
            moved = true;
            if let Some(o) = office.handle(&mut a, ev, now) {
                agent = Some(o);
            }
        }
        if let Some(out) = a.take_output() {
            moved = true;
            feed(&out, chunk, |p| c.receive(p, now));
        }
        if !moved {
            break;
        }
    }
    Login {
        client,
        agent,
        client_machine: c,
        agent_machine: a,
    }
}

/// What a whole resumption came to on both sides.
pub struct Resume {
    pub client: Option<Result<(), HandshakeError>>,
    pub agent: Option<AgentOutcome>,
}

/// Runs a resumption of `session` with `secret`.
pub fn resume(
    office: &mut Office,
    session: SessionId,
    secret: &ResumptionSecret,
    chunk: usize,
    now: Duration,
) -> Resume {
    let c = ClientResumeMachine::new(session, secret, Duration::from_secs(10), &mut OsRng, now);
    run_resume(office, c, chunk, now)
}

/// Runs a re-attachment of `session`'s control tunnel with `secret`.
pub fn reattach(
    office: &mut Office,
    session: SessionId,
    secret: &ResumptionSecret,
    chunk: usize,
    now: Duration,
) -> Resume {
    let c = ClientResumeMachine::reattach_control(session, secret, &mut OsRng, now);
    run_resume(office, c, chunk, now)
}

/// Runs the client machine `c` against a fresh agent machine of `office`.
pub fn run_resume(
    office: &mut Office,
    mut c: ClientResumeMachine,
    chunk: usize,
    now: Duration,
) -> Resume {
    let mut a = AgentMachine::new(id(), TOTP_TIMEOUT, now);
    let mut agent = None;
    for _ in 0..1000 {
        let mut moved = false;
        if let Some(out) = c.take_output() {
            moved = true;
            feed(&out, chunk, |p| a.receive(p, now));
        }
        while let Some(ev) = a.poll_event() {
            moved = true;
            if let Some(o) = office.handle(&mut a, ev, now) {
                agent = Some(o);
            }
        }
        if let Some(out) = a.take_output() {
            moved = true;
            feed(&out, chunk, |p| c.receive(p, now));
        }
        if !moved {
            break;
        }
    }
    Resume {
        client: c.result().cloned(),
        agent,
    }
}
