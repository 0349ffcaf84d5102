//! Machine-key proofs: an agent shows it holds its Ed25519 key by signing a value exported
//! from the very TLS session it speaks on, so a captured proof is useless on any other
//! connection.

use ring::signature::{self, Ed25519KeyPair, KeyPair};

use crate::ids::ComputerId;

/// TLS exporter label (RFC 8446 §7.5) for the machine-key proof.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-telework-machine-proof";

/// Bytes of exporter output the proof signs.
pub const EXPORTER_LEN: usize = 32;

/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;

/// The exact bytes an agent signs: a domain label, the computer ID, and the exporter value.
pub fn proof_message(id: &ComputerId, exporter: &[u8; EXPORTER_LEN]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64 + id.as_str().len());
    msg.extend_from_slice(b"telework/1 machine proof\0");
    msg.push(id.as_str().len() as u8);
    msg.extend_from_slice(id.as_str().as_bytes());
    msg.extend_from_slice(exporter);
    msg
}

/// The exact bytes a client signs to show the relay its device key on one connection: a domain
/// label of its own (so no machine proof or login signature can stand for it) and the
/// exporter value.
pub fn device_proof_message(exporter: &[u8; EXPORTER_LEN]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    msg.extend_from_slice(b"telework/1 device proof to the relay\0");
    msg.extend_from_slice(exporter);
    msg
}

/// An office PC's long-term signing key.
pub struct MachineKey {
    pair: Ed25519KeyPair,
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
}

/// A machine key file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("the machine key is not a valid Ed25519 PKCS#8 document")]
pub struct BadMachineKey;

impl MachineKey {
    /// Generates a new key.
    ///
    /// # Errors
    /// Only if the system random source fails.
    pub fn generate() -> Result<Self, BadMachineKey> {
        let rng = ring::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| BadMachineKey)?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// Loads a key from its PKCS#8 bytes.
    ///
    /// # Errors
    /// [`BadMachineKey`] if the bytes are not an Ed25519 PKCS#8 v2 document.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, BadMachineKey> {
        let pair = Ed25519KeyPair::from_pkcs8(bytes).map_err(|_| BadMachineKey)?;
        Ok(Self {
            pair,
            pkcs8: zeroize::Zeroizing::new(bytes.to_vec()),
        })
    }

    /// The PKCS#8 encoding, for storing in an owner-only file.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half, as sent at registration.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs arbitrary bytes (device proofs use the same key type).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        self.pair.sign(msg).as_ref().to_vec()
    }

    /// Signs the proof for `id` on a session with exporter value `exporter`.
    pub fn prove(&self, id: &ComputerId, exporter: &[u8; EXPORTER_LEN]) -> Vec<u8> {
        self.pair
            .sign(&proof_message(id, exporter))
            .as_ref()
            .to_vec()
    }
}

/// Checks an Ed25519 signature by `public_key` over `msg`. Keys of small order (the identity
/// among them) are refused: a signature by one can verify for any message, so anybody could
/// use such a "device" or "machine".
pub fn verify_signature(public_key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    public_key.len() == PUBLIC_KEY_LEN
        && !is_weak_key(public_key)
        && signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(msg, sig)
            .is_ok()
}

/// A stable name for a public key: the first 16 bytes (128 bits) of its SHA-256, in hex, so
/// that nobody can make another key with the same name.
pub fn key_fingerprint(public_key: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    hex::encode(&digest.as_ref()[..16])
}

/// Whether an Ed25519 public key is not a valid point or has small order.
fn is_weak_key(public_key: &[u8]) -> bool {
    let Ok(bytes) = <[u8; PUBLIC_KEY_LEN]>::try_from(public_key) else {
        return true;
    };
    curve25519_dalek::edwards::CompressedEdwardsY(bytes)
        .decompress()
        .is_none_or(|p| p.is_small_order())
}

/// Checks a proof made by [`MachineKey::prove`].
pub fn verify_proof(
    public_key: &[u8],
    id: &ComputerId,
    exporter: &[u8; EXPORTER_LEN],
    proof: &[u8],
) -> bool {
    public_key.len() == PUBLIC_KEY_LEN
        && signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(&proof_message(id, exporter), proof)
            .is_ok()
}

/// Checks a device proof: `device_key` signed [`device_proof_message`] of `exporter`.
pub fn verify_device_proof(device_key: &[u8], exporter: &[u8; EXPORTER_LEN], proof: &[u8]) -> bool {
    verify_signature(device_key, &device_proof_message(exporter), proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_proof_is_bound_to_its_connection_and_is_no_machine_proof() {
        let key = MachineKey::generate().unwrap();
        let proof = key.sign(&device_proof_message(&[7; 32]));
        assert!(verify_device_proof(&key.public_key(), &[7; 32], &proof));
        assert!(!verify_device_proof(&key.public_key(), &[8; 32], &proof));
        let other = MachineKey::generate().unwrap();
        assert!(!verify_device_proof(&other.public_key(), &[7; 32], &proof));
        let id: ComputerId = "pc-1".parse().unwrap();
        let machine_proof = key.prove(&id, &[7; 32]);
        assert!(!verify_device_proof(
            &key.public_key(),
            &[7; 32],
            &machine_proof
        ));
    }

    #[test]
    fn small_order_keys_are_refused_though_their_signatures_verify() {
        // The identity point as a key: s·B = R + k·A holds for R = B, s = 1, whatever the
        // message, so such a "signature" is good for everything.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut sig = curve25519_dalek::constants::ED25519_BASEPOINT_COMPRESSED
            .to_bytes()
            .to_vec();
        let mut s = [0u8; 32];
        s[0] = 1;
        sig.extend_from_slice(&s);
        for msg in [&b"any message"[..], b"another"] {
            assert!(
                signature::UnparsedPublicKey::new(&signature::ED25519, &identity)
                    .verify(msg, &sig)
                    .is_ok(),
                "ring alone accepts it"
            );
            assert!(!verify_signature(&identity, msg, &sig));
        }
        let key = MachineKey::generate().unwrap();
        assert!(verify_signature(&key.public_key(), b"m", &key.sign(b"m")));
    }

    #[test]
    fn proof_verifies_only_for_its_session_and_id() {
        let key = MachineKey::generate().unwrap();
        let id: ComputerId = "pc-1".parse().unwrap();
        let other: ComputerId = "pc-2".parse().unwrap();
        let proof = key.prove(&id, &[7; 32]);
        assert!(verify_proof(&key.public_key(), &id, &[7; 32], &proof));
        assert!(
            !verify_proof(&key.public_key(), &id, &[8; 32], &proof),
            "replayed on another session"
        );
        assert!(!verify_proof(&key.public_key(), &other, &[7; 32], &proof));
        let stranger = MachineKey::generate().unwrap();
        assert!(!verify_proof(&stranger.public_key(), &id, &[7; 32], &proof));
        assert!(!verify_proof(&[1, 2, 3], &id, &[7; 32], &proof));
    }

    #[test]
    fn key_survives_pkcs8_round_trip() {
        let key = MachineKey::generate().unwrap();
        let again = MachineKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert!(MachineKey::from_pkcs8(b"junk").is_err());
    }
}
