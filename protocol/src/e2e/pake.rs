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

use crate::ids::ComputerId;

/// The OPAQUE cipher suite: ristretto255 for the OPRF and 3DH, SHA-512, Argon2id as the
/// key-stretching function (RFC 9106 second recommended parameters, the `argon2` crate's
/// default: 19 MiB, 2 passes).
pub struct Suite;

impl opaque_ke::CipherSuite for Suite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2::Sha512>;
    type Ksf = argon2::Argon2<'static>;
}

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
        Self::create_with(ServerSetup::<Suite>::new(&mut OsRng), password)
    }

    /// Replaces the password but keeps the agent's identity (its OPAQUE static key and OPRF
    /// seed), so clients that pinned the key keep trusting the office PC.
    ///
    /// # Errors
    /// [`PakeError::BadRecord`] if the old record is damaged.
    pub fn change_password(&self, password: &[u8]) -> Result<Self, PakeError> {
        let (setup, _) = self.parts()?;
        Self::create_with(setup, password)
    }

    fn create_with(setup: ServerSetup<Suite>, password: &[u8]) -> Result<Self, PakeError> {
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
                ClientRegistrationFinishParameters::default(),
            )
            .map_err(|_| PakeError::Malformed)?;
        let file = ServerRegistration::<Suite>::finish(finish.message);
        let setup_bytes = setup.serialize();
        let mut bytes = Vec::with_capacity(2 + setup_bytes.len() + 200);
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

    fn parts(&self) -> Result<(ServerSetup<Suite>, ServerRegistration<Suite>), PakeError> {
        let b = &self.bytes[..];
        let len = u16::from_be_bytes([
            *b.first().ok_or(PakeError::BadRecord)?,
            *b.get(1).ok_or(PakeError::BadRecord)?,
        ]) as usize;
        let setup_bytes = b.get(2..2 + len).ok_or(PakeError::BadRecord)?;
        let file_bytes = b.get(2 + len..).ok_or(PakeError::BadRecord)?;
        let setup =
            ServerSetup::<Suite>::deserialize(setup_bytes).map_err(|_| PakeError::BadRecord)?;
        let file = ServerRegistration::<Suite>::deserialize(file_bytes)
            .map_err(|_| PakeError::BadRecord)?;
        Ok((setup, file))
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
        let start = opaque_ke::ClientLogin::<Suite>::start(&mut OsRng, password)
            .map_err(|_| PakeError::Malformed)?;
        Ok((
            Self { state: start.state },
            start.message.serialize().to_vec(),
        ))
    }

    /// Opens the agent's response with the password.
    ///
    /// # Errors
    /// [`PakeError::WrongPassword`] when the password does not match (or the response was
    /// tampered with); [`PakeError::Malformed`] for bytes that are not a response.
    pub fn finish(
        self,
        password: &[u8],
        response: &[u8],
        id: &ComputerId,
    ) -> Result<ClientLoginDone, PakeError> {
        let response =
            CredentialResponse::<Suite>::deserialize(response).map_err(|_| PakeError::Malformed)?;
        let ctx = context(id);
        let params = ClientLoginFinishParameters::new(Some(&ctx), Default::default(), None);
        let done = self
            .state
            .finish(&mut OsRng, password, response, params)
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
    /// Answers a client's request; returns the state and the response to send.
    ///
    /// # Errors
    /// [`PakeError::Malformed`] for a request that is not OPAQUE; [`PakeError::BadRecord`]
    /// if the stored record is damaged.
    pub fn start(
        record: &PasswordRecord,
        request: &[u8],
        id: &ComputerId,
    ) -> Result<(Self, Vec<u8>), PakeError> {
        let (setup, file) = record.parts()?;
        let request =
            CredentialRequest::<Suite>::deserialize(request).map_err(|_| PakeError::Malformed)?;
        let ctx = context(id);
        let params = ServerLoginParameters {
            context: Some(&ctx),
            ..Default::default()
        };
        let start = opaque_ke::ServerLogin::start(
            &mut OsRng,
            &setup,
            Some(file),
            request,
            CREDENTIAL_ID,
            params,
        )
        .map_err(|_| PakeError::Malformed)?;
        let response = start.message.serialize().to_vec();
        Ok((
            Self {
                state: start.state,
                ctx,
            },
            response,
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

    fn id() -> ComputerId {
        "pc-1".parse().unwrap()
    }

    #[test]
    fn right_password_agrees_on_a_key_and_reveals_the_agent_key() {
        let record = PasswordRecord::create(b"correct horse").unwrap();
        let record = PasswordRecord::from_bytes(record.to_bytes()).unwrap();
        let (client, request) = ClientLogin::start(b"correct horse").unwrap();
        let (agent, response) = AgentLogin::start(&record, &request, &id()).unwrap();
        let done = client.finish(b"correct horse", &response, &id()).unwrap();
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
        let (agent, response) = AgentLogin::start(&second, &request, &id()).unwrap();
        let done = client.finish(b"new password", &response, &id()).unwrap();
        agent.finish(&done.finalization).unwrap();
        let (client, request) = ClientLogin::start(b"old password").unwrap();
        let (_, response) = AgentLogin::start(&second, &request, &id()).unwrap();
        assert!(client.finish(b"old password", &response, &id()).is_err());
    }

    #[test]
    fn wrong_password_fails_on_the_client() {
        let record = PasswordRecord::create(b"right").unwrap();
        let (client, request) = ClientLogin::start(b"wrong").unwrap();
        let (_agent, response) = AgentLogin::start(&record, &request, &id()).unwrap();
        assert!(matches!(
            client.finish(b"wrong", &response, &id()),
            Err(PakeError::WrongPassword)
        ));
    }

    #[test]
    fn login_for_another_computer_id_fails() {
        let record = PasswordRecord::create(b"pw").unwrap();
        let (client, request) = ClientLogin::start(b"pw").unwrap();
        let other: ComputerId = "pc-2".parse().unwrap();
        let (agent, response) = AgentLogin::start(&record, &request, &other).unwrap();
        // The client thinks it talks to pc-1; the agent to pc-2: contexts differ.
        match client.finish(b"pw", &response, &id()) {
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
        assert!(client.finish(b"pw", &[0; 10], &id()).is_err());
    }
}
