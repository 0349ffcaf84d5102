//! The office PC's identity proof, and the login transcript it covers.
//!
//! A client that pinned an office PC's identity key (its OPAQUE static key) must know it is
//! talking to that PC before it does anything that depends on the password. Otherwise a relay
//! could build its own OPAQUE record from a guessed password, answer the client itself, and
//! learn from the client's reaction whether the guess was right, a guess no lockout counts.
//!
//! So every login opens with a fresh ephemeral ristretto255 key `X = x·G` from the client.
//! The agent answers with MACs keyed by HKDF of `s·X`, where `s` is its static private key:
//! only a holder of `s` (or of `x`) can compute them, and `x` never leaves the client. A pinned
//! client checks them with `x·S` for its pinned `S`:
//!
//! - [`Step::Hello`] over the nonces: the PC is the pinned one; checked before the client sends
//!   even its blinded OPAQUE request;
//! - [`Step::Challenge`] over the OPAQUE answer and its stretching parameters: a relay cannot
//!   swap in an answer from a record of its own;
//! - [`Step::Refusal`] over a refusal: the client asks for the password again only when the
//!   real office PC says it was wrong.
//!
//! A client with no pin yet checks the same MACs once OPAQUE has revealed `S`, so a login
//! that succeeds was answered by one PC throughout.

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::ristretto::CompressedRistretto;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use rand::rngs::OsRng;
use rand::RngCore;
use ring::{digest, hmac};
use zeroize::Zeroizing;

use super::keys::{expand, extract};
use super::stretch::StretchParams;
use crate::ids::ComputerId;

/// Bytes of a nonce, an ephemeral key, a transcript hash and a proof.
pub const LEN: usize = 32;

/// A proof did not verify, or a key was not a valid ristretto255 point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The MAC did not match: the answer did not come from the holder of the key.
    #[error("the office PC's identity proof did not verify")]
    BadProof,
    /// A public key that is not a canonical, non-identity ristretto255 point.
    #[error("not a valid identity key")]
    BadKey,
}

/// What a MAC covers; each step has its own label so one can never stand in for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The agent's hello: both nonces and the client's ephemeral key.
    Hello,
    /// The agent's OPAQUE answer and its stretching parameters.
    Challenge,
    /// A refusal, whose encoded bytes are added to the MAC.
    Refusal,
}

impl Step {
    fn label(self) -> &'static [u8] {
        match self {
            Self::Hello => b"telework/1 identity hello\0",
            Self::Challenge => b"telework/1 identity challenge\0",
            Self::Refusal => b"telework/1 identity refusal\0",
        }
    }
}

/// A running SHA-256 of everything both sides said in a login, each part labelled and
/// length-prefixed, so that the two ends agree on it only if they saw the same messages.
#[derive(Clone)]
pub struct Transcript {
    context: digest::Context,
}

impl Transcript {
    /// Starts the transcript of a login to computer `id`.
    pub fn new(id: &ComputerId) -> Self {
        let mut t = Self {
            context: digest::Context::new(&digest::SHA256),
        };
        t.add(b"telework/1 login transcript", id.as_str().as_bytes());
        t
    }

    /// Adds the client's hello.
    pub fn client_hello(&mut self, nonce: &[u8; LEN], identity_challenge: &[u8; LEN]) {
        self.add(b"client nonce", nonce);
        self.add(b"identity challenge", identity_challenge);
    }

    /// Adds the agent's hello.
    pub fn agent_hello(&mut self, nonce: &[u8; LEN]) {
        self.add(b"agent nonce", nonce);
    }

    /// Adds the device key and the OPAQUE request of the password step.
    pub fn login(&mut self, device_key: &[u8], request: &[u8]) {
        self.add(b"device key", device_key);
        self.add(b"login request", request);
    }

    /// Adds the agent's OPAQUE answer and its stretching parameters.
    pub fn challenge(&mut self, response: &[u8], stretch: &StretchParams) {
        self.add(b"login response", response);
        let mut params = [0u8; 12];
        for (chunk, n) in
            params
                .chunks_exact_mut(4)
                .zip([stretch.memory_kib, stretch.passes, stretch.lanes])
        {
            chunk.copy_from_slice(&n.to_be_bytes());
        }
        self.add(b"stretch", &params);
    }

    /// Adds one labelled part.
    pub fn add(&mut self, label: &[u8], bytes: &[u8]) {
        for part in [label, bytes] {
            self.context.update(&(part.len() as u64).to_be_bytes());
            self.context.update(part);
        }
    }

    /// The hash of everything added so far.
    pub fn hash(&self) -> [u8; LEN] {
        let mut out = [0; LEN];
        out.copy_from_slice(self.context.clone().finish().as_ref());
        out
    }
}

/// The bytes a device key signs to prove itself before the password step: a label and the
/// transcript hash up to and including the OPAQUE request, so the proof is good for this
/// login only and cannot be moved onto another request.
pub fn device_login_message(transcript: &Transcript) -> Vec<u8> {
    let mut m = b"telework/1 device login\0".to_vec();
    m.extend_from_slice(&transcript.hash());
    m
}

/// The client's side: a fresh ephemeral key for one login.
pub struct IdentityChallenge {
    secret: Zeroizing<Scalar>,
    public: [u8; LEN],
}

impl IdentityChallenge {
    /// A fresh ephemeral key from the system random source.
    pub fn generate() -> Self {
        Self::from_rng(&mut OsRng)
    }

    /// A fresh ephemeral key from `rng` (the sans-IO handshake passes its randomness in).
    pub fn from_rng(rng: &mut (impl RngCore + rand::CryptoRng)) -> Self {
        let mut wide = Zeroizing::new([0u8; 64]);
        rng.fill_bytes(&mut wide[..]);
        let secret = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide));
        let public = (RISTRETTO_BASEPOINT_POINT * *secret).compress().to_bytes();
        Self { secret, public }
    }

    /// The ephemeral public key, sent in the client's hello.
    pub fn public(&self) -> [u8; LEN] {
        self.public
    }

    /// The MAC key shared with the holder of `agent_public_key`'s private half.
    ///
    /// # Errors
    /// [`IdentityError::BadKey`] if the key is not a valid ristretto255 point.
    pub fn key(&self, agent_public_key: &[u8]) -> Result<IdentityKey, IdentityError> {
        let point = decode_point(agent_public_key)?;
        let shared = Zeroizing::new((point * *self.secret).compress().to_bytes());
        Ok(IdentityKey::derive(&shared, agent_public_key, &self.public))
    }
}

/// The agent's side: the MAC key for a client's ephemeral key, from the static private key.
///
/// # Errors
/// [`IdentityError::BadKey`] if `challenge` or the static key is not valid.
pub fn agent_key(
    static_secret: &[u8; LEN],
    static_public: &[u8],
    challenge: &[u8],
) -> Result<IdentityKey, IdentityError> {
    let point = decode_point(challenge)?;
    let secret = Zeroizing::new(
        Option::<Scalar>::from(Scalar::from_canonical_bytes(*static_secret))
            .ok_or(IdentityError::BadKey)?,
    );
    let shared = Zeroizing::new((point * *secret).compress().to_bytes());
    Ok(IdentityKey::derive(&shared, static_public, challenge))
}

/// Whether `bytes` is a canonical, non-identity ristretto255 point (a usable ephemeral or
/// identity key).
pub fn is_valid_key(bytes: &[u8]) -> bool {
    decode_point(bytes).is_ok()
}

fn decode_point(bytes: &[u8]) -> Result<curve25519_dalek::RistrettoPoint, IdentityError> {
    let compressed = CompressedRistretto::from_slice(bytes).map_err(|_| IdentityError::BadKey)?;
    let point = compressed.decompress().ok_or(IdentityError::BadKey)?;
    if point.is_identity() {
        return Err(IdentityError::BadKey);
    }
    Ok(point)
}

/// The MAC key both ends of one login derive; proves the agent's answers.
pub struct IdentityKey {
    key: hmac::Key,
}

impl IdentityKey {
    fn derive(shared: &[u8; LEN], agent_public: &[u8], challenge: &[u8]) -> Self {
        let prk = extract(b"telework/1 identity", shared);
        let mut info = b"telework/1 identity mac key".to_vec();
        info.extend_from_slice(agent_public);
        info.extend_from_slice(challenge);
        let bytes = expand::<LEN>(&prk, &info);
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes[..]),
        }
    }

    fn message(step: Step, transcript: &Transcript, extra: &[u8]) -> Vec<u8> {
        let mut m = step.label().to_vec();
        m.extend_from_slice(&transcript.hash());
        m.extend_from_slice(extra);
        m
    }

    /// The proof for `step` over the transcript so far (and `extra`, the refusal's bytes).
    pub fn prove(&self, step: Step, transcript: &Transcript, extra: &[u8]) -> [u8; LEN] {
        let tag = hmac::sign(&self.key, &Self::message(step, transcript, extra));
        let mut out = [0; LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Checks a proof (in constant time).
    ///
    /// # Errors
    /// [`IdentityError::BadProof`] if it does not match.
    pub fn verify(
        &self,
        step: Step,
        transcript: &Transcript,
        extra: &[u8],
        proof: &[u8; LEN],
    ) -> Result<(), IdentityError> {
        hmac::verify(&self.key, &Self::message(step, transcript, extra), proof)
            .map_err(|_| IdentityError::BadProof)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2e::pake::PasswordRecord;

    fn id() -> ComputerId {
        "pc-identity".parse().unwrap()
    }

    #[test]
    fn the_record_holder_proves_and_nobody_else_can() {
        let record = PasswordRecord::create(b"correct horse").unwrap();
        let other = PasswordRecord::create(b"correct horse").unwrap();
        let pinned = record.agent_public_key().unwrap();
        let challenge = IdentityChallenge::generate();
        let mut t = Transcript::new(&id());
        t.add(b"nonce", &[7; 32]);

        let agent = record.identity_key(&challenge.public()).unwrap();
        let proof = agent.prove(Step::Hello, &t, b"");
        let client = challenge.key(&pinned).unwrap();
        client.verify(Step::Hello, &t, b"", &proof).unwrap();

        // Another record (a relay's own, say) cannot make a proof for the pinned key.
        let forged = other
            .identity_key(&challenge.public())
            .unwrap()
            .prove(Step::Hello, &t, b"");
        assert_eq!(
            client.verify(Step::Hello, &t, b"", &forged),
            Err(IdentityError::BadProof)
        );
        // A proof for one step or transcript is not one for another.
        assert!(client.verify(Step::Challenge, &t, b"", &proof).is_err());
        let mut t2 = t.clone();
        t2.add(b"more", b"x");
        assert!(client.verify(Step::Hello, &t2, b"", &proof).is_err());
        assert!(client.verify(Step::Hello, &t, b"x", &proof).is_err());
    }

    #[test]
    fn a_proof_for_one_challenge_does_not_fit_another() {
        let record = PasswordRecord::create(b"correct horse").unwrap();
        let pinned = record.agent_public_key().unwrap();
        let t = Transcript::new(&id());
        let old = IdentityChallenge::generate();
        let replayed = record
            .identity_key(&old.public())
            .unwrap()
            .prove(Step::Hello, &t, b"");
        let fresh = IdentityChallenge::generate();
        assert!(fresh
            .key(&pinned)
            .unwrap()
            .verify(Step::Hello, &t, b"", &replayed)
            .is_err());
    }

    #[test]
    fn junk_points_are_refused() {
        let record = PasswordRecord::create(b"correct horse").unwrap();
        for junk in [&[0u8; 32][..], &[0xff; 32], &[1; 31], &[]] {
            assert!(record.identity_key(junk).is_err(), "{junk:?}");
            assert!(IdentityChallenge::generate().key(junk).is_err());
        }
    }

    #[test]
    fn transcripts_are_unambiguous() {
        let mut a = Transcript::new(&id());
        a.add(b"ab", b"c");
        let mut b = Transcript::new(&id());
        b.add(b"a", b"bc");
        assert_ne!(a.hash(), b.hash());
        assert_ne!(
            Transcript::new(&id()).hash(),
            Transcript::new(&"pc-other".parse().unwrap()).hash()
        );
    }
}
