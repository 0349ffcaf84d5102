//! TLS 1.3 configuration for every hop, and how a program decides to trust a relay.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::transport::alpn;
use telework_protocol::fingerprint::CertFingerprint;

/// How a client or agent decides the relay is the real one.
#[derive(Debug, Clone)]
pub enum RelayTrust {
    /// The certificate chains to the operating system's trusted roots (real deployments).
    SystemRoots,
    /// The relay's certificate has exactly this SHA-256 fingerprint (a self-signed relay).
    Fingerprint(CertFingerprint),
    /// The certificate chains to one of these CA certificates (a private CA).
    Ca(Vec<CertificateDer<'static>>),
}

/// A TLS configuration problem, reported before any connection is made.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// A certificate or key file could not be read or parsed.
    #[error("cannot use {what} {path}: {detail}")]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// rustls refused the configuration (for example a key that does not match).
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// No trusted roots could be found.
    #[error(
        "no trusted root certificates found on this system; pass --relay-fingerprint or --relay-ca"
    )]
    NoRoots,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl RelayTrust {
    /// Loads a PEM file of CA certificates for [`RelayTrust::Ca`].
    ///
    /// # Errors
    /// [`TlsConfigError::File`] if the file cannot be read or holds no certificate.
    pub fn ca_file(path: &Path) -> Result<Self, TlsConfigError> {
        let certs = load_certs(path, "CA file")?;
        Ok(Self::Ca(certs))
    }

    /// A TLS 1.3-only client configuration offering `alpn`.
    ///
    /// # Errors
    /// [`TlsConfigError`] if the trust anchors cannot be loaded.
    pub fn client_config(
        &self,
        alpn_id: &[u8],
    ) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let mut config = match self {
            Self::Fingerprint(fp) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                    pin: *fp,
                    provider: provider(),
                }))
                .with_no_client_auth(),
            Self::Ca(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs {
                    roots.add(c.clone())?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Self::SystemRoots => {
                let mut roots = rustls::RootCertStore::empty();
                let found = rustls_native_certs::load_native_certs();
                for c in found.certs {
                    let _ = roots.add(c);
                }
                if roots.is_empty() {
                    return Err(TlsConfigError::NoRoots);
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![alpn_id.to_vec()];
        Ok(Arc::new(config))
    }
}

/// The relay's TLS 1.3-only server configuration, offering every role's ALPN.
///
/// # Errors
/// [`TlsConfigError::Rustls`] if the key does not match the certificate.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = alpn::ALL.iter().map(|p| p.to_vec()).collect();
    // Stateless TLS 1.3 resumption: agents and clients that reconnect (every new tunnel is a
    // new connection) skip the certificate signature, and the relay keeps no per-session
    // cache. One ticket is enough: a client uses each ticket once.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 1;
    Ok(Arc::new(config))
}

/// Reads every certificate in a PEM file.
///
/// # Errors
/// [`TlsConfigError::File`] if the file cannot be read or holds no certificate.
pub fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let file_err = |detail: String| TlsConfigError::File {
        what,
        path: path.display().to_string(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
///
/// # Errors
/// [`TlsConfigError::File`] if the file cannot be read or holds no key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsConfigError::File {
        what: "key file",
        path: path.display().to_string(),
        detail: e.to_string(),
    })
}

/// Accepts exactly one certificate, by fingerprint; signatures are still verified so the peer
/// must hold the certificate's key.
#[derive(Debug)]
struct PinnedCertificate {
    pin: CertFingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if CertFingerprint::of_der(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
