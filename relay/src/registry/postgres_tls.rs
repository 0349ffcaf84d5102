//! TLS to PostgreSQL: rustls (as everywhere else), verifying the server against the system's
//! roots, or against the CA file the URL names with `sslrootcert=FILE` (libpq's name for it;
//! tokio-postgres does not read it, so it is taken out of the URL here). Whether TLS is used
//! is the URL's `sslmode`: `disable`, `prefer` (the default: TLS when the server offers it)
//! or `require`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_postgres_rustls::MakeRustlsConnect;

use super::RegistryError;

/// `url` without its `sslrootcert` parameter, and that parameter's value.
pub(super) fn split_root_cert(url: &str) -> (String, Option<PathBuf>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.strip_prefix("sslrootcert=") {
            Some(path) => {
                root = Some(PathBuf::from(percent_decode(path)));
                false
            }
            None => !pair.is_empty(),
        })
        .collect();
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, root)
}

/// `%2F` and the like in a path given in a URL.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok();
        match (bytes[i], hex().and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The connector: trusting `root` only, when given, else the system's roots.
pub(super) fn connector(root: Option<&Path>) -> Result<MakeRustlsConnect, RegistryError> {
    let mut roots = rustls::RootCertStore::empty();
    match root {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                RegistryError::Postgres(format!("sslrootcert {}: {e}", path.display()))
            })?;
            let mut added = 0;
            for cert in rustls_pemfile_certs(&pem) {
                roots.add(cert).map_err(|e| {
                    RegistryError::Postgres(format!("sslrootcert {}: {e}", path.display()))
                })?;
                added += 1;
            }
            if added == 0 {
                return Err(RegistryError::Postgres(format!(
                    "sslrootcert {}: no PEM certificate in it",
                    path.display()
                )));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot parse is skipped, as browsers do.
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| RegistryError::Postgres(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The certificates in a PEM file.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_cert_parameter_is_taken_out_of_the_url() {
        let (url, root) =
            split_root_cert("postgres://r@db/t?sslmode=require&sslrootcert=%2Fetc%2Fca.pem");
        assert_eq!(url, "postgres://r@db/t?sslmode=require");
        assert_eq!(root, Some(PathBuf::from("/etc/ca.pem")));
        let (url, root) = split_root_cert("postgres://r@db/t?sslrootcert=/ca.pem");
        assert_eq!(
            (url.as_str(), root),
            ("postgres://r@db/t", Some("/ca.pem".into()))
        );
        let (url, root) = split_root_cert("postgres://r@db/t");
        assert_eq!((url.as_str(), root), ("postgres://r@db/t", None));
    }

    #[test]
    fn a_root_file_without_certificates_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate").unwrap();
        let err = connector(Some(&file)).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let err = connector(Some(&dir.path().join("missing.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
