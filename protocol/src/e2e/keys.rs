//! The key schedule: from a login's session key (or a resumption) to record keys.

use ring::hkdf;
use zeroize::Zeroizing;

use super::record::{Opener, Sealer};

/// A 32-byte secret that outlives one tunnel: resumes further tunnels of the session.
pub type ResumptionSecret = Zeroizing<[u8; 32]>;

/// Which end of the tunnel we are: decides which directional key seals and which opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The employee's side.
    Client,
    /// The office PC's side.
    Agent,
}

/// Record keys for both directions of one tunnel, already assigned to seal or open.
pub struct TunnelKeys {
    /// Seals what we send.
    pub sealer: Sealer,
    /// Opens what we receive.
    pub opener: Opener,
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand of `prk` with `info` into `N` bytes.
pub(crate) fn expand<const N: usize>(prk: &hkdf::Prk, info: &[u8]) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    let infos = [info];
    // Expansion fails only when asking for more than 255 hash lengths; N is at most 32 here.
    if let Ok(okm) = prk.expand(&infos, Len(N)) {
        let _ = okm.fill(&mut out[..]);
    }
    out
}

/// HKDF-Extract with SHA-256.
pub(crate) fn extract(salt: &[u8], ikm: &[u8]) -> hkdf::Prk {
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(ikm)
}

/// Directional keys from a tunnel's pseudo-random key.
pub(crate) fn tunnel_keys(prk: &hkdf::Prk, role: Role) -> TunnelKeys {
    let c2a = expand::<32>(prk, b"telework/1 key client-to-agent");
    let a2c = expand::<32>(prk, b"telework/1 key agent-to-client");
    let (seal, open) = match role {
        Role::Client => (c2a, a2c),
        Role::Agent => (a2c, c2a),
    };
    TunnelKeys {
        sealer: Sealer::new(&seal),
        opener: Opener::new(&open),
    }
}

/// Keys after a password login: the first tunnel's record keys and the session's resumption
/// secret.
pub fn after_login(session_key: &[u8], role: Role) -> (TunnelKeys, ResumptionSecret) {
    let prk = extract(b"telework/1 login", session_key);
    let resumption = expand::<32>(&prk, b"telework/1 resumption");
    (tunnel_keys(&prk, role), resumption)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn both_roles_derive_matching_keys() {
        let (mut client, rc) = after_login(&[5; 64], Role::Client);
        let (mut agent, ra) = after_login(&[5; 64], Role::Agent);
        assert_eq!(*rc, *ra);
        let mut wire = BytesMut::new();
        client.sealer.seal_data(b"hi", &mut wire).unwrap();
        let rec = agent.opener.open(&mut wire).unwrap().unwrap();
        assert_eq!(&rec.payload[..], b"hi");
        agent.sealer.seal_data(b"yo", &mut wire).unwrap();
        assert_eq!(
            &client.opener.open(&mut wire).unwrap().unwrap().payload[..],
            b"yo"
        );
    }

    #[test]
    fn different_session_keys_do_not_interoperate() {
        let (mut client, _) = after_login(&[5; 64], Role::Client);
        let (mut agent, _) = after_login(&[6; 64], Role::Agent);
        let mut wire = BytesMut::new();
        client.sealer.seal_data(b"hi", &mut wire).unwrap();
        assert!(agent.opener.open(&mut wire).is_err());
    }
}
