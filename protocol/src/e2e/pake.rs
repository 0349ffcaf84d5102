//! OPAQUE over the connection password, wrapped in three small types.
//!
//! - [`PasswordRecord`]: made once on the office PC by `set-password`; it is all the agent
//!   keeps. It does not contain the password, and it only permits an offline guess with the
//!   Argon2id cost per try to someone who steals the agent's data dir.
//! - [`ClientLogin`]: the employee's side.
//! - [`AgentLogin`]: the office PC's side.
//!
//! The computer ID is bound into the OPAQUE transcript (its `context`), so a relay cannot
//! splice a login meant for one machine onto another.

use opaque_ke::{
    ClientLoginFinishParameters, ClientRegistrationFinishParameters, CredentialFinalization,
    CredentialRequest, CredentialResponse, ServerLoginParameters, ServerRegistration, ServerSetup,
};
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::identity::{self, IdentityKey};
use super::stretch::{Stretch, StretchParams};
use crate::ids::ComputerId;

/// The OPAQUE cipher suite: ristretto255 for the OPRF and 3DH, SHA-512, Argon2id as the
/// key-stretching function (the `argon2` crate's default, OWASP's minimum: 19 MiB, 2 passes;
/// see [`super::stretch`]).
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = super::stretch::Stretch;
}

/// The first bytes of a record that names its stretching parameters.
const RECORD_TAG: [u8; 2] = [0xff, 0x02];

/// The OPAQUE credential identifier; one password per machine, so a constant.
const CREDENTIAL_ID: &[u8] = b"telework-connection-password";

/// The shared secret a successful login yields (64 bytes).
pub type SessionKey = Zeroizing<Vec<u8>>;

/// Why the password step failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PakeError {
    /// The password did not match (client side: the response did not open; agent side: the
    /// finalization did not verify).
    #[error("wrong password")]
    WrongPassword,
    /// A message was not valid OPAQUE.
    #[error("malformed login message")]
    Malformed,
    /// A stored record could not be read.
    #[error("the stored password record is damaged")]
    BadRecord,
    /// The agent named password-stretching parameters a client does not accept.
    #[error(transparent)]
    Stretch(#[from] super::stretch::StretchParamsError),
}

fn context(id: &ComputerId) -> Vec<u8> {
    let mut c = b"telework/1 login ".to_vec();
    c.extend_from_slice(id.as_str().as_bytes());
    c
}

/// What the agent stores instead of the password: its OPAQUE server setup (OPRF seed and
/// static key pair) and the registration record.
pub struct PasswordRecord {
    bytes: Zeroizing<Vec<u8>>,
}

impl PasswordRecord {
    /// Runs OPAQUE registration locally for `password`.
    ///
    /// # Errors
    /// Only on an internal OPAQUE failure.
    pub fn create(password: &[u8]) -> Result<Self, PakeError> {
        Self::create_with(
            ServerSetup::<Suite>::new(&mut OsRng),
            password,
            StretchParams::CURRENT,
        )
    }

    /// Replaces the password but keeps the agent's identity (its OPAQUE static key and OPRF
    /// seed), so clients that pinned the key keep trusting the office PC.
    ///
    /// # Errors
    /// [`PakeError::BadRecord`] if the old record is damaged.
    pub fn change_password(&self, password: &[u8]) -> Result<Self, PakeError> {
        let (setup, _) = self.parts()?;
        Self::create_with(setup, password, StretchParams::CURRENT)
    }

    fn create_with(
        setup: ServerSetup<Suite>,
        password: &[u8],
        stretch_params: StretchParams,
    ) -> Result<Self, PakeError> {
        let stretch = Stretch::new(stretch_params).map_err(|_| PakeError::Malformed)?;
        let mut rng = OsRng;
        let start = opaque_ke::ClientRegistration::<Suite>::start(&mut rng, password)
            .map_err(|_| PakeError::Malformed)?;
        let response = ServerRegistration::<Suite>::start(&setup, start.message, CREDENTIAL_ID)
            .map_err(|_| PakeError::Malformed)?;
        let finish = start
            .state
            .finish(
                &mut rng,
                password,
                response.message,
                ClientRegistrationFinishParameters::new(Default::default(), Some(&stretch)),
            )
            .map_err(|_| PakeError::Malformed)?;
        let file = ServerRegistration::<Suite>::finish(finish.message);
        let setup_bytes = setup.serialize();
        let mut bytes = Vec::with_capacity(RECORD_TAG.len() + 12 + 2 + setup_bytes.len() + 200);
        bytes.extend_from_slice(&RECORD_TAG);
        for n in [
            stretch_params.memory_kib,
            stretch_params.passes,
            stretch_params.lanes,
        ] {
            bytes.extend_from_slice(&n.to_be_bytes());
        }
        bytes.extend_from_slice(&(setup_bytes.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&setup_bytes);
        bytes.extend_from_slice(&file.serialize());
        Ok(Self {
            bytes: Zeroizing::new(bytes),
        })
    }

    /// Reads a record saved with [`PasswordRecord::to_bytes`].
    ///
    /// # Errors
    /// [`PakeError::BadRecord`] if the bytes are not a record.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PakeError> {
        let record = Self {
            bytes: Zeroizing::new(bytes.to_vec()),
        };
        record.parts()?;
        Ok(record)
    }

    /// The bytes to store (owner-only).
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The agent's static OPAQUE public key, which a client sees after a successful login.
    pub fn agent_public_key(&self) -> Result<Vec<u8>, PakeError> {
        let (setup, _) = self.parts()?;
        Ok(setup.keypair().public().serialize().to_vec())
    }

    /// The MAC key that proves this record's holder to a client's ephemeral key
    /// (see [`super::identity`]): the agent's answer to a login's hello.
    ///
    /// # Errors
    /// [`PakeError::BadRecord`] if the record is damaged, [`PakeError::Malformed`] if the
    /// client's key is not a valid point.
    pub fn identity_key(&self, challenge: &[u8]) -> Result<IdentityKey, PakeError> {
        // Junk is refused before the record is parsed.
        if !identity::is_valid_key(challenge) {
            return Err(PakeError::Malformed);
        }
        let (setup, _) = self.parts()?;
        let secret = Zeroizing::new(
            <[u8; identity::LEN]>::try_from(&setup.keypair().private().serialize()[..])
                .map_err(|_| PakeError::BadRecord)?,
        );
        let public = setup.keypair().public().serialize();
        identity::agent_key(&secret, &public, challenge).map_err(|_| PakeError::Malformed)
    }

    /// The Argon2id parameters this record's password was stretched with; the agent tells
    /// the client.
    ///
    /// # Errors
    /// [`PakeError::BadRecord`] if the record is damaged.
    pub fn stretch_params(&self) -> Result<StretchParams, PakeError> {
        Ok(self.layout()?.0)
    }

    fn parts(&self) -> Result<(ServerSetup<Suite>, ServerRegistration<Suite>), PakeError> {
        let (_, setup_bytes, file_bytes) = self.layout()?;
        let setup =
            ServerSetup::<Suite>::deserialize(setup_bytes).map_err(|_| PakeError::BadRecord)?;
        let file = ServerRegistration::<Suite>::deserialize(file_bytes)
            .map_err(|_| PakeError::BadRecord)?;
        Ok((setup, file))
    }

    /// Splits the bytes into stretching parameters, server setup and registration file.
    ///
    /// Current records: `RECORD_TAG`, memory KiB, passes, lanes (u32 each, big-endian), then
    /// as before. Records from before the tag were `u16` setup length, setup, file, stretched
    /// with [`StretchParams::LEGACY`]; the setup is far shorter than 0xff00 bytes, so a
    /// legacy record never starts with the tag.
    fn layout(&self) -> Result<(StretchParams, &[u8], &[u8]), PakeError> {
        let b = &self.bytes[..];
        let (params, b) = match b.strip_prefix(&RECORD_TAG[..]) {
            Some(rest) => {
                let n = |i: usize| -> Result<u32, PakeError> {
                    let bytes = rest.get(4 * i..4 * i + 4).ok_or(PakeError::BadRecord)?;
                    Ok(u32::from_be_bytes(
                        bytes.try_into().map_err(|_| PakeError::BadRecord)?,
                    ))
                };
                let params = StretchParams {
                    memory_kib: n(0)?,
                    passes: n(1)?,
                    lanes: n(2)?,
                };
                let params = params.check().map_err(|_| PakeError::BadRecord)?;
                (params, rest.get(12..).ok_or(PakeError::BadRecord)?)
            }
            None => (StretchParams::LEGACY, b),
        };
        let len = u16::from_be_bytes([
            *b.first().ok_or(PakeError::BadRecord)?,
            *b.get(1).ok_or(PakeError::BadRecord)?,
        ]) as usize;
        let setup_bytes = b.get(2..2 + len).ok_or(PakeError::BadRecord)?;
        let file_bytes = b.get(2 + len..).ok_or(PakeError::BadRecord)?;
        Ok((params, setup_bytes, file_bytes))
    }
}

/// The client's half of a login, between sending the request and reading the response.
pub struct ClientLogin {
    state: opaque_ke::ClientLogin<Suite>,
}

/// A successful client login.
pub struct ClientLoginDone {
    /// Send this to the agent as [`super::messages::ClientHandshake::LoginFinish`].
    pub finalization: Vec<u8>,
    /// The shared session key.
    pub session_key: SessionKey,
    /// The agent's static public key (what a client pins).
    pub agent_public_key: Vec<u8>,
}

impl ClientLogin {
    /// Starts a login; returns the state and the request to send.
    ///
    /// # Errors
    /// Only on an internal OPAQUE failure.
    pub fn start(password: &[u8]) -> Result<(Self, Vec<u8>), PakeError> {
        Self::start_with(&mut OsRng, password)
    }

    /// As [`ClientLogin::start`], with the randomness passed in.
    ///
    /// # Errors
    /// Only on an internal OPAQUE failure.
    pub fn start_with(
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        password: &[u8],
    ) -> Result<(Self, Vec<u8>), PakeError> {
        let start = opaque_ke::ClientLogin::<Suite>::start(rng, password)
            .map_err(|_| PakeError::Malformed)?;
        Ok((
            Self { state: start.state },
            start.message.serialize().to_vec(),
        ))
    }

    /// Opens the agent's response with the password, stretched with the parameters the
    /// agent named.
    ///
    /// # Errors
    /// [`PakeError::WrongPassword`] when the password does not match (or the response or
    /// parameters were tampered with); [`PakeError::Malformed`] for bytes that are not a
    /// response; [`PakeError::Stretch`] for parameters outside what a client accepts.
    pub fn finish(
        self,
        password: &[u8],
        response: &[u8],
        stretch: StretchParams,
        id: &ComputerId,
    ) -> Result<ClientLoginDone, PakeError> {
        self.finish_with(&mut OsRng, password, response, stretch, id)
    }

    /// As [`ClientLogin::finish`], with the randomness passed in.
    ///
    /// # Errors
    /// As [`ClientLogin::finish`].
    pub fn finish_with(
        self,
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        password: &[u8],
        response: &[u8],
        stretch: StretchParams,
        id: &ComputerId,
    ) -> Result<ClientLoginDone, PakeError> {
        let stretch = Stretch::new(stretch.check().map_err(PakeError::Stretch)?)
            .map_err(|_| PakeError::Malformed)?;
        let response =
            CredentialResponse::<Suite>::deserialize(response).map_err(|_| PakeError::Malformed)?;
        let ctx = context(id);
        let params =
            ClientLoginFinishParameters::new(Some(&ctx), Default::default(), Some(&stretch));
        let done = self
            .state
            .finish(rng, password, response, params)
            .map_err(|_| PakeError::WrongPassword)?;
        Ok(ClientLoginDone {
            finalization: done.message.serialize().to_vec(),
            session_key: Zeroizing::new(done.session_key.to_vec()),
            agent_public_key: done.server_s_pk.serialize().to_vec(),
        })
    }
}

/// The agent's half of a login, between sending the response and reading the finalization.
pub struct AgentLogin {
    state: opaque_ke::ServerLogin<Suite>,
    ctx: Vec<u8>,
}

impl AgentLogin {
    /// Answers a client's request; returns the state, the response to send and the
    /// stretching parameters to send with it.
    ///
    /// # Errors
    /// [`PakeError::Malformed`] for a request that is not OPAQUE; [`PakeError::BadRecord`]
    /// if the stored record is damaged.
    pub fn start(
        record: &PasswordRecord,
        request: &[u8],
        id: &ComputerId,
    ) -> Result<(Self, Vec<u8>, StretchParams), PakeError> {
        Self::start_with(&mut OsRng, record, request, id)
    }

    /// As [`AgentLogin::start`], with the randomness passed in.
    ///
    /// # Errors
    /// As [`AgentLogin::start`].
    pub fn start_with(
        rng: &mut (impl rand::RngCore + rand::CryptoRng),
        record: &PasswordRecord,
        request: &[u8],
        id: &ComputerId,
    ) -> Result<(Self, Vec<u8>, StretchParams), PakeError> {
        let (setup, file) = record.parts()?;
        let stretch = record.stretch_params()?;
        let request =
            CredentialRequest::<Suite>::deserialize(request).map_err(|_| PakeError::Malformed)?;
        let ctx = context(id);
        let params = ServerLoginParameters {
            context: Some(&ctx),
            ..Default::default()
        };
        let start =
            opaque_ke::ServerLogin::start(rng, &setup, Some(file), request, CREDENTIAL_ID, params)
                .map_err(|_| PakeError::Malformed)?;
        let response = start.message.serialize().to_vec();
        Ok((
            Self {
                state: start.state,
                ctx,
            },
            response,
            stretch,
        ))
    }

    /// Verifies the client's finalization.
    ///
    /// # Errors
    /// [`PakeError::WrongPassword`] when it does not verify.
    pub fn finish(self, finalization: &[u8]) -> Result<SessionKey, PakeError> {
        let fin = CredentialFinalization::<Suite>::deserialize(finalization)
            .map_err(|_| PakeError::Malformed)?;
        let params = ServerLoginParameters {
            context: Some(&self.ctx),
            ..Default::default()
        };
        let done = self
            .state
            .finish(fin, params)
            .map_err(|_| PakeError::WrongPassword)?;
        Ok(Zeroizing::new(done.session_key.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::stretch::StretchParamsError;

    fn id() -> ComputerId {
        "pc-1".parse().unwrap()
    }

    #[test]
    fn right_password_agrees_on_a_key_and_reveals_the_agent_key() {
        let record = PasswordRecord::create(b"correct horse").unwrap();
        let record = PasswordRecord::from_bytes(record.to_bytes()).unwrap();
        let (client, request) = ClientLogin::start(b"correct horse").unwrap();
        let (agent, response, _) = AgentLogin::start(&record, &request, &id()).unwrap();
        let done = client
            .finish(b"correct horse", &response, StretchParams::CURRENT, &id())
            .unwrap();
        let agent_key = agent.finish(&done.finalization).unwrap();
        assert_eq!(done.session_key, agent_key);
        assert_eq!(done.agent_public_key, record.agent_public_key().unwrap());
        assert!(!record.to_bytes().windows(13).any(|w| w == b"correct horse"));
    }

    #[test]
    fn changing_the_password_keeps_the_agent_key() {
        let first = PasswordRecord::create(b"old password").unwrap();
        let second = first.change_password(b"new password").unwrap();
        assert_eq!(
            first.agent_public_key().unwrap(),
            second.agent_public_key().unwrap()
        );
        let (client, request) = ClientLogin::start(b"new password").unwrap();
        let (agent, response, _) = AgentLogin::start(&second, &request, &id()).unwrap();
        let done = client
            .finish(b"new password", &response, StretchParams::CURRENT, &id())
            .unwrap();
        agent.finish(&done.finalization).unwrap();
        let (client, request) = ClientLogin::start(b"old password").unwrap();
        let (_, response, _) = AgentLogin::start(&second, &request, &id()).unwrap();
        assert!(client
            .finish(b"old password", &response, StretchParams::CURRENT, &id())
            .is_err());
    }

    #[test]
    fn wrong_password_fails_on_the_client() {
        let record = PasswordRecord::create(b"right").unwrap();
        let (client, request) = ClientLogin::start(b"wrong").unwrap();
        let (_agent, response, _) = AgentLogin::start(&record, &request, &id()).unwrap();
        assert!(matches!(
            client.finish(b"wrong", &response, StretchParams::CURRENT, &id()),
            Err(PakeError::WrongPassword)
        ));
    }

    #[test]
    fn login_for_another_computer_id_fails() {
        let record = PasswordRecord::create(b"pw").unwrap();
        let (client, request) = ClientLogin::start(b"pw").unwrap();
        let other: ComputerId = "pc-2".parse().unwrap();
        let (agent, response, _) = AgentLogin::start(&record, &request, &other).unwrap();
        // The client thinks it talks to pc-1; the agent to pc-2: contexts differ.
        match client.finish(b"pw", &response, StretchParams::CURRENT, &id()) {
            Err(_) => {}
            Ok(done) => assert!(agent.finish(&done.finalization).is_err()),
        }
    }

    #[test]
    fn junk_is_malformed_not_a_panic() {
        let record = PasswordRecord::create(b"pw").unwrap();
        assert!(AgentLogin::start(&record, b"junk", &id()).is_err());
        assert!(PasswordRecord::from_bytes(b"").is_err());
        assert!(PasswordRecord::from_bytes(&[0, 200, 1]).is_err());
        let (client, _) = ClientLogin::start(b"pw").unwrap();
        assert!(client
            .finish(b"pw", &[0; 10], StretchParams::CURRENT, &id())
            .is_err());
    }

    /// A record made before records named their parameters: the old layout, stretched with
    /// the legacy parameters.
    fn legacy_record(password: &[u8]) -> PasswordRecord {
        let current = PasswordRecord::create_with(
            ServerSetup::<Suite>::new(&mut OsRng),
            password,
            StretchParams::LEGACY,
        )
        .unwrap();
        PasswordRecord::from_bytes(&current.to_bytes()[RECORD_TAG.len() + 12..]).unwrap()
    }

    #[test]
    fn records_name_their_stretching_and_old_records_still_open() {
        let record = PasswordRecord::create(b"pw").unwrap();
        assert_eq!(record.stretch_params(), Ok(StretchParams::CURRENT));
        let old = legacy_record(b"pw");
        assert_eq!(old.stretch_params(), Ok(StretchParams::LEGACY));
        let (client, request) = ClientLogin::start(b"pw").unwrap();
        let (agent, response, _) = AgentLogin::start(&old, &request, &id()).unwrap();
        let done = client
            .finish(b"pw", &response, StretchParams::LEGACY, &id())
            .unwrap();
        agent.finish(&done.finalization).unwrap();
        // Changing the password moves the record to the current parameters.
        let upgraded = old.change_password(b"pw2").unwrap();
        assert_eq!(upgraded.stretch_params(), Ok(StretchParams::CURRENT));
        assert_eq!(
            upgraded.agent_public_key().unwrap(),
            old.agent_public_key().unwrap()
        );
    }

    #[test]
    fn altered_or_weak_parameters_never_log_in() {
        let record = PasswordRecord::create(b"pw").unwrap();
        // A relay that swaps the parameters only makes the login fail.
        let (client, request) = ClientLogin::start(b"pw").unwrap();
        let (_, response, _) = AgentLogin::start(&record, &request, &id()).unwrap();
        assert!(matches!(
            client.finish(b"pw", &response, StretchParams::LEGACY, &id()),
            Err(PakeError::WrongPassword)
        ));
        // Weak parameters are refused before any stretching.
        let (client, request) = ClientLogin::start(b"pw").unwrap();
        let (_, response, _) = AgentLogin::start(&record, &request, &id()).unwrap();
        let weak = StretchParams {
            memory_kib: 1024,
            passes: 1,
            lanes: 1,
        };
        assert!(matches!(
            client.finish(b"pw", &response, weak, &id()),
            Err(PakeError::Stretch(StretchParamsError::TooWeak))
        ));
        // A record naming weak parameters is damaged, not obeyed.
        let mut bytes = record.to_bytes().to_vec();
        bytes[RECORD_TAG.len()..RECORD_TAG.len() + 4].copy_from_slice(&1024u32.to_be_bytes());
        assert!(PasswordRecord::from_bytes(&bytes).is_err());
    }
}
