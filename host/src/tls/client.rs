//! A connection's TLS settings (`ca_file`, `client_cert`, `client_key`,
//! `skip_cert_verify`) and the rustls client configuration they make. A
//! connection that sets none of them needs no configuration of its own: it
//! uses the shared client and the built-in roots.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{key_mismatch, provider, read_certificates, read_private_key};
use crate::field::FieldError;

/// How one connection speaks TLS. Field names are the connection's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ClientTls {
    /// Trusted instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Presented when the remote asks for a client certificate.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    /// Accept any certificate the remote shows.
    pub skip_cert_verify: bool,
}

impl ClientTls {
    /// Whether the connection sets nothing (and so uses the shared client).
    pub fn is_default(&self) -> bool {
        *self == ClientTls::default()
    }

    /// The files it names, for telling when one has changed.
    pub fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.ca_file, &self.client_cert, &self.client_key]
            .into_iter()
            .flatten()
    }

    /// Field names are the connection's keys.
    pub fn validate(&self) -> Result<(), FieldError> {
        self.rustls_config().map(drop)
    }

    /// Reads the files and builds the configuration: `ca_file`'s certificates
    /// (or the built-in roots) as trust anchors unless `skip_cert_verify`,
    /// and the client certificate chain with its key when both are given.
    pub fn rustls_config(&self) -> Result<rustls::ClientConfig, FieldError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions");
        let roots = self.roots()?;
        let builder = if self.skip_cert_verify {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider())))
        } else {
            builder.with_root_certificates(roots)
        };
        let mut config = match (&self.client_cert, &self.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(FieldError::new(
                    "client_key",
                    "missing: client_cert needs the key that goes with it",
                ));
            }
            (None, Some(_)) => {
                return Err(FieldError::new(
                    "client_cert",
                    "missing: client_key needs the certificate that goes with it",
                ));
            }
            (Some(certificate_file), Some(key_file)) => {
                let chain = read_certificates(certificate_file)
                    .map_err(|problem| FieldError::new("client_cert", problem))?;
                let key = read_private_key(key_file)
                    .map_err(|problem| FieldError::new("client_key", problem))?;
                builder.with_client_auth_cert(chain, key).map_err(|error| {
                    FieldError::new("client_key", key_mismatch(certificate_file, error))
                })?
            }
        };
        // What reqwest offers on its own clients (it speaks both).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }

    /// `ca_file`'s certificates, each one a valid trust anchor; the built-in
    /// roots without it. Read even under `skip_cert_verify`, so a wrong
    /// file is refused whatever the flag says.
    fn roots(&self) -> Result<rustls::RootCertStore, FieldError> {
        let Some(ca_file) = &self.ca_file else {
            return Ok(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
        };
        let certificates =
            read_certificates(ca_file).map_err(|problem| FieldError::new("ca_file", problem))?;
        let mut roots = rustls::RootCertStore::empty();
        for (index, certificate) in certificates.into_iter().enumerate() {
            roots.add(certificate).map_err(|error| {
                FieldError::new(
                    "ca_file",
                    format!(
                        "certificate {} of {} is not a usable CA certificate: {error}",
                        index + 1,
                        ca_file.display()
                    ),
                )
            })?;
        }
        Ok(roots)
    }
}

/// `skip_cert_verify`: any certificate is taken, for any name. Handshake
/// signatures are still checked (they prove nothing without a trusted
/// certificate, but a broken handshake still fails as one).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            certificate,
            signature,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
