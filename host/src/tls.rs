//! TLS both ways, over rustls with ring: the PEM files an operator names
//! (a connection's `ca_file`, `client_cert` and `client_key`; `[tls]`
//! `cert_file` and `key_file`) read and checked in one place, the rustls
//! client configuration a connection's HTTP client is built from
//! ([`client`]), and HTTPS on `listen` ([`listener`]). Checking a setting
//! and using it are the same code: validation loads the files and throws
//! the result away, so a file that passes the check is one that works.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

use crate::field::FieldError;

mod client;
mod listener;
pub use client::ClientTls;
pub use listener::HttpsListener;

/// The one crypto provider of the gateway's TLS (ring, as reqwest and lettre use).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `[tls]`: serve HTTPS on `listen` with this certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeTls {
    /// PEM: the server's certificate first, then any intermediates.
    pub cert_file: PathBuf,
    /// PEM: the private key of the first certificate.
    pub key_file: PathBuf,
}

impl ServeTls {
    /// Field names are relative to `[tls]`.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.acceptor().map(drop)
    }

    /// The TLS side of the listener: reads both files and checks that the key
    /// belongs to the certificate.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, FieldError> {
        let certificates = read_certificates(&self.cert_file)
            .map_err(|problem| FieldError::new("cert_file", problem))?;
        let key = read_private_key(&self.key_file)
            .map_err(|problem| FieldError::new("key_file", problem))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .map_err(|error| FieldError::new("key_file", key_mismatch(&self.cert_file, error)))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }
}

/// Every certificate of a PEM file, in file order (at least one).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = read_pem_file(path)?;
    let certificates = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| not_valid_pem(path, error))?;
    if certificates.is_empty() {
        return Err(format!(
            "{} holds no certificate (no \"-----BEGIN CERTIFICATE-----\" block)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let text = read_pem_file(path)?;
    match PrivateKeyDer::from_pem_slice(&text) {
        Ok(key) => Ok(key),
        Err(pem::Error::NoItemsFound) => Err(format!(
            "{} holds no private key (no \"-----BEGIN PRIVATE KEY-----\", RSA PRIVATE KEY or EC PRIVATE KEY block)",
            path.display()
        )),
        Err(error) => Err(not_valid_pem(path, error)),
    }
}

/// The bytes of a file that must be PEM: readable, and with at least one
/// `-----BEGIN` line (a DER file or a stray file is refused as such).
fn read_pem_file(path: &Path) -> Result<Vec<u8>, String> {
    let text =
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    if !text.windows(11).any(|window| window == b"-----BEGIN ") {
        return Err(format!(
            "{} is not a PEM file (no \"-----BEGIN\" line)",
            path.display()
        ));
    }
    Ok(text)
}

fn not_valid_pem(path: &Path, error: pem::Error) -> String {
    format!("{} is not valid PEM: {error}", path.display())
}

/// rustls' refusal of a certificate and key pair, in our words.
fn key_mismatch(certificate_file: &Path, error: rustls::Error) -> String {
    match error {
        rustls::Error::InconsistentKeys(_) => format!(
            "the key does not belong to the first certificate of {}",
            certificate_file.display()
        ),
        other => format!("the key cannot be used: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_dir() -> PathBuf {
        std::env::temp_dir().join(format!("repeatd-tls-unit-{}", std::process::id()))
    }

    fn temp_file(name: &str, contents: &[u8]) -> PathBuf {
        let dir = unit_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn files_that_are_not_pem_are_refused_by_name() {
        let missing = Path::new("/nonexistent/repeatd/ca.pem");
        let problem = read_certificates(missing).unwrap_err();
        assert!(
            problem.starts_with("cannot read /nonexistent/repeatd/ca.pem: "),
            "{problem}"
        );

        let der = temp_file("der.crt", &[0x30, 0x82, 0x01, 0x0a, 0x02]);
        assert_eq!(
            read_certificates(&der).unwrap_err(),
            format!(
                "{} is not a PEM file (no \"-----BEGIN\" line)",
                der.display()
            )
        );

        let key_only = temp_file(
            "key-only.pem",
            b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n",
        );
        assert_eq!(
            read_certificates(&key_only).unwrap_err(),
            format!(
                "{} holds no certificate (no \"-----BEGIN CERTIFICATE-----\" block)",
                key_only.display()
            )
        );
        assert!(read_private_key(&key_only).is_ok());

        let broken = temp_file(
            "broken.pem",
            b"-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
        );
        let problem = read_certificates(&broken).unwrap_err();
        assert!(
            problem.starts_with(&format!("{} is not valid PEM: ", broken.display())),
            "{problem}"
        );
        assert!(
            read_private_key(&broken)
                .unwrap_err()
                .contains("is not valid PEM: "),
            "broken PEM is refused whatever is looked for in it"
        );
        let _ = std::fs::remove_dir_all(unit_dir());
    }

    #[test]
    fn serving_needs_both_files_and_names_the_key_that_is_wrong() {
        let tls = ServeTls {
            cert_file: "/nonexistent/repeatd/cert.pem".into(),
            key_file: "/nonexistent/repeatd/key.pem".into(),
        };
        let error = tls.validate().unwrap_err();
        assert_eq!(error.field, "cert_file");
        assert!(error.problem.contains("cannot read"), "{error}");
    }
}
