//! The relay's TLS identity: an operator's certificate files, or a self-signed certificate
//! made on first start and kept in the data dir.

use std::path::Path;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use telework_net::tls::{load_certs, load_key};
use telework_protocol::private_file::write_private;
use telework_protocol::CertFingerprint;

/// A certificate chain, its key, and the leaf's fingerprint.
pub struct TlsIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the leaf, for clients that pin it.
    pub fingerprint: CertFingerprint,
    /// Whether it was generated just now.
    pub created: bool,
}

/// File names inside the data dir.
pub const CERT_FILE: &str = "relay-cert.pem";
/// See [`CERT_FILE`].
pub const KEY_FILE: &str = "relay-key.pem";

/// Why the identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file was unreadable or malformed.
    #[error(transparent)]
    Tls(#[from] telework_net::tls::TlsConfigError),
    /// Generation failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing failed.
    #[error("cannot save the self-signed certificate: {0}")]
    Io(#[from] std::io::Error),
    /// No self-signed certificate was made yet.
    #[error("no certificate in {0}: start the relay once first")]
    Missing(String),
    /// The data dir is not owner-only.
    #[error(transparent)]
    UnsafeDir(std::io::Error),
}

/// The fingerprint of the operator's certificate `cert`, else of the self-signed one in
/// `data_dir` (never making one: a command that only reads must not create the identity).
///
/// # Errors
/// An unreadable certificate, a data dir without one, or one others can write to.
pub fn existing_fingerprint(
    data_dir: &Path,
    cert: Option<&Path>,
) -> Result<CertFingerprint, IdentityError> {
    if let Some(cert) = cert {
        let chain = load_certs(cert, "certificate file")?;
        return Ok(CertFingerprint::of_der(&chain[0]));
    }
    if !data_dir.join(CERT_FILE).exists() {
        return Err(IdentityError::Missing(data_dir.display().to_string()));
    }
    telework_protocol::private_file::check_private_dir(data_dir)
        .map_err(IdentityError::UnsafeDir)?;
    Ok(self_signed(data_dir, &[])?.fingerprint)
}

/// Loads an operator's certificate chain and key.
///
/// # Errors
/// [`IdentityError::Tls`] naming the file that is wrong.
pub fn from_files(cert: &Path, key: &Path) -> Result<TlsIdentity, IdentityError> {
    let chain = load_certs(cert, "certificate file")?;
    let key = load_key(key)?;
    let fingerprint = CertFingerprint::of_der(&chain[0]);
    Ok(TlsIdentity {
        chain,
        key,
        fingerprint,
        created: false,
    })
}

/// Loads the self-signed certificate in `data_dir`, creating it for `hostnames` (plus
/// `localhost`, 127.0.0.1 and ::1) on first use.
///
/// # Errors
/// [`IdentityError`] if the files cannot be read, made or saved.
pub fn self_signed(data_dir: &Path, hostnames: &[String]) -> Result<TlsIdentity, IdentityError> {
    let cert_path = data_dir.join(CERT_FILE);
    let key_path = data_dir.join(KEY_FILE);
    if cert_path.exists() && key_path.exists() {
        return from_files(&cert_path, &key_path);
    }
    let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    names.extend(hostnames.iter().cloned());
    let certified = rcgen::generate_simple_self_signed(names)?;
    write_private(&key_path, certified.key_pair.serialize_pem().as_bytes())?;
    write_private(&cert_path, certified.cert.pem().as_bytes())?;
    let der = certified.cert.der().clone();
    let fingerprint = CertFingerprint::of_der(&der);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    Ok(TlsIdentity {
        chain: vec![der],
        key,
        fingerprint,
        created: true,
    })
}

/// The key that signs the relay's QUIC stateless resets, derived from its TLS key: secret,
/// and the same after a restart (and on every node that serves the same certificate), so
/// that a restarted relay's resets are believed.
pub fn quic_reset_key(tls_key: &PrivateKeyDer<'_>) -> [u8; 32] {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    context.update(b"telework/1 QUIC stateless reset key");
    context.update(tls_key.secret_der());
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_is_made_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed(dir.path(), &[]).unwrap();
        assert!(first.created);
        let again = self_signed(dir.path(), &[]).unwrap();
        assert!(!again.created);
        assert_eq!(first.fingerprint, again.fingerprint);
    }

    #[test]
    fn bad_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let err = from_files(&junk, &junk).err().unwrap().to_string();
        assert!(err.contains("junk.pem"), "{err}");
        let err = from_files(&dir.path().join("missing.pem"), &junk)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
