//! Resumption: a further tunnel in an authenticated session, with no password.
//!
//! The client sends its session id and a fresh nonce; the agent answers with its own fresh
//! nonce and a MAC; the client checks it and answers with its MAC. Both MACs and the tunnel's
//! record keys come from the resumption secret and both nonces, so a relay that replays an
//! old resumption meets a new agent nonce and cannot finish it.

use ring::hmac;

use super::keys::{expand, extract, tunnel_keys, ResumptionSecret, Role, TunnelKeys};
use crate::ids::SessionId;

/// A resumption MAC did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the resumption proof did not verify")]
pub struct ResumeError;

/// What a resumption opens. Each has its own label in the transcript, so a relay cannot turn
/// one into the other: the MACs would not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumePurpose {
    /// A tunnel to the desktop service.
    Desktop,
    /// The session's control tunnel again, after the connection that carried it broke.
    Control,
}

impl ResumePurpose {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Desktop => b"telework/1 resume",
            Self::Control => b"telework/1 reattach control",
        }
    }
}

struct Schedule {
    prk: ring::hkdf::Prk,
    transcript: Vec<u8>,
}

impl Schedule {
    fn new(
        purpose: ResumePurpose,
        secret: &[u8; 32],
        session: SessionId,
        client_nonce: &[u8; 32],
        agent_nonce: &[u8; 32],
    ) -> Self {
        let mut transcript = Vec::with_capacity(32 + 16 + 64);
        transcript.extend_from_slice(purpose.label());
        transcript.extend_from_slice(&session.0);
        transcript.extend_from_slice(client_nonce);
        transcript.extend_from_slice(agent_nonce);
        let prk = extract(&transcript, secret);
        Self { prk, transcript }
    }

    fn mac(&self, who: &[u8]) -> [u8; 32] {
        let key_bytes = expand::<32>(&self.prk, who);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes[..]);
        let tag = hmac::sign(&key, &self.transcript);
        let mut out = [0; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn verify(&self, who: &[u8], mac: &[u8; 32]) -> Result<(), ResumeError> {
        let key_bytes = expand::<32>(&self.prk, who);
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes[..]);
        hmac::verify(&key, &self.transcript, mac).map_err(|_| ResumeError)
    }
}

const AGENT_CONFIRM: &[u8] = b"telework/1 agent confirm";
const CLIENT_CONFIRM: &[u8] = b"telework/1 client confirm";

/// The client's side of a resumption.
pub struct ClientResume {
    purpose: ResumePurpose,
    session: SessionId,
    secret: ResumptionSecret,
    nonce: [u8; 32],
}

impl ClientResume {
    /// Starts a resumption; send `(session, nonce)` as the `Resume` message.
    pub fn start(session: SessionId, secret: &ResumptionSecret) -> Self {
        Self::with_nonce(ResumePurpose::Desktop, session, secret, rand::random())
    }

    /// As [`ClientResume::start`], with the fresh nonce passed in.
    pub fn with_nonce(
        purpose: ResumePurpose,
        session: SessionId,
        secret: &ResumptionSecret,
        nonce: [u8; 32],
    ) -> Self {
        Self {
            purpose,
            session,
            secret: secret.clone(),
            nonce,
        }
    }

    /// The nonce to send.
    pub fn nonce(&self) -> [u8; 32] {
        self.nonce
    }

    /// Checks the agent's answer; returns the client MAC to send and the tunnel keys.
    ///
    /// # Errors
    /// [`ResumeError`] if the agent's MAC is wrong.
    pub fn finish(
        self,
        agent_nonce: &[u8; 32],
        agent_mac: &[u8; 32],
    ) -> Result<([u8; 32], TunnelKeys), ResumeError> {
        let s = Schedule::new(
            self.purpose,
            &self.secret,
            self.session,
            &self.nonce,
            agent_nonce,
        );
        s.verify(AGENT_CONFIRM, agent_mac)?;
        Ok((s.mac(CLIENT_CONFIRM), tunnel_keys(&s.prk, Role::Client)))
    }
}

/// The agent's side of a resumption, between its challenge and the client's MAC.
pub struct AgentResume {
    schedule: Schedule,
    nonce: [u8; 32],
}

impl AgentResume {
    /// Answers a client's `Resume` for a session whose secret is `secret`.
    pub fn respond(session: SessionId, secret: &ResumptionSecret, client_nonce: &[u8; 32]) -> Self {
        Self::respond_with_nonce(
            ResumePurpose::Desktop,
            session,
            secret,
            client_nonce,
            rand::random(),
        )
    }

    /// As [`AgentResume::respond`], with the agent's fresh nonce passed in.
    pub fn respond_with_nonce(
        purpose: ResumePurpose,
        session: SessionId,
        secret: &ResumptionSecret,
        client_nonce: &[u8; 32],
        nonce: [u8; 32],
    ) -> Self {
        Self {
            schedule: Schedule::new(purpose, secret, session, client_nonce, &nonce),
            nonce,
        }
    }

    /// The agent's nonce and MAC to send.
    pub fn challenge(&self) -> ([u8; 32], [u8; 32]) {
        (self.nonce, self.schedule.mac(AGENT_CONFIRM))
    }

    /// Checks the client's MAC; returns the tunnel keys.
    ///
    /// # Errors
    /// [`ResumeError`] if the MAC is wrong.
    pub fn finish(self, client_mac: &[u8; 32]) -> Result<TunnelKeys, ResumeError> {
        self.schedule.verify(CLIENT_CONFIRM, client_mac)?;
        Ok(tunnel_keys(&self.schedule.prk, Role::Agent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use zeroize::Zeroizing;

    #[test]
    fn resumption_agrees_on_keys() {
        let secret = Zeroizing::new([9u8; 32]);
        let session = SessionId([1; 16]);
        let client = ClientResume::start(session, &secret);
        let agent = AgentResume::respond(session, &secret, &client.nonce());
        let (nonce, mac) = agent.challenge();
        let (client_mac, mut ck) = client.finish(&nonce, &mac).unwrap();
        let mut ak = agent.finish(&client_mac).unwrap();
        let mut wire = BytesMut::new();
        ck.sealer.seal_data(b"x", &mut wire).unwrap();
        assert_eq!(
            &ak.opener.open(&mut wire).unwrap().unwrap().payload[..],
            b"x"
        );
    }

    #[test]
    fn a_desktop_resumption_cannot_be_taken_for_a_control_one() {
        let secret = Zeroizing::new([9u8; 32]);
        let session = SessionId([1; 16]);
        let client = ClientResume::with_nonce(ResumePurpose::Desktop, session, &secret, [3; 32]);
        let agent = AgentResume::respond_with_nonce(
            ResumePurpose::Control,
            session,
            &secret,
            &client.nonce(),
            [4; 32],
        );
        let (nonce, mac) = agent.challenge();
        assert!(client.finish(&nonce, &mac).is_err());
    }

    #[test]
    fn wrong_secret_fails_both_ways() {
        let session = SessionId([1; 16]);
        let client = ClientResume::start(session, &Zeroizing::new([1u8; 32]));
        let agent = AgentResume::respond(session, &Zeroizing::new([2u8; 32]), &client.nonce());
        let (nonce, mac) = agent.challenge();
        assert!(client.finish(&nonce, &mac).is_err());
        assert!(agent.finish(&[0; 32]).is_err());
    }

    #[test]
    fn replayed_client_mac_fails_against_a_fresh_agent_nonce() {
        let secret = Zeroizing::new([9u8; 32]);
        let session = SessionId([1; 16]);
        let client = ClientResume::start(session, &secret);
        let client_nonce = client.nonce();
        let first = AgentResume::respond(session, &secret, &client_nonce);
        let (n, m) = first.challenge();
        let (client_mac, _) = client.finish(&n, &m).unwrap();
        // An attacker replays the same Resume and ResumeFinish on a new tunnel.
        let second = AgentResume::respond(session, &secret, &client_nonce);
        assert!(second.finish(&client_mac).is_err());
    }
}
