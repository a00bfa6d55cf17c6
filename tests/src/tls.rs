//! TLS for the end-to-end tests: a private certificate authority made with
//! rcgen for each test ([`TestPki`]: a CA, a server certificate for
//! `127.0.0.1` and `localhost`, a client certificate, all written as PEM
//! files), and a real HTTPS remote on loopback ([`TlsRemote`]) that serves
//! with such a certificate, may require a client certificate signed by the
//! CA, and keeps, for every request, the client certificate it verified.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::wait::wait_for;
use crate::{Received, TempDir};

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct PemPair {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The certificate, DER-encoded (what a TLS peer sees).
    pub der: Vec<u8>,
}

/// A private CA and the certificates it signed, in a directory of their own.
pub struct TestPki {
    pub dir: TempDir,
    /// `ca.pem`: the CA certificate, the `ca_file` that trusts the others.
    pub ca_file: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// For `127.0.0.1` and `localhost`.
    pub server: PemPair,
    /// Subject `CN=repeatd test client`.
    pub client: PemPair,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl TestPki {
    /// A new CA named `label`, with a server and a client certificate.
    pub fn new(label: &str) -> TestPki {
        let dir = TempDir::new(&format!("pki-{label}"));
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("repeatd test CA {label}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("a CA key"))
            .expect("the CA certificate");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("writing ca.pem");
        let mut pki = TestPki {
            ca_file,
            ca,
            server: PemPair {
                cert_file: PathBuf::new(),
                key_file: PathBuf::new(),
                der: Vec::new(),
            },
            client: PemPair {
                cert_file: PathBuf::new(),
                key_file: PathBuf::new(),
                der: Vec::new(),
            },
            dir,
        };
        pki.server = pki.issue(
            "server",
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki.client = pki.issue("client", &[], ExtendedKeyUsagePurpose::ClientAuth);
        pki
    }

    /// A certificate signed by this CA, written as `{name}.pem` and `{name}-key.pem`.
    pub fn issue(&self, name: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> PemPair {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("repeatd test {name}"));
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().expect("a key");
        let certificate = params.signed_by(&key, &self.ca).expect("signing");
        let cert_file = self.dir.path().join(format!("{name}.pem"));
        let key_file = self.dir.path().join(format!("{name}-key.pem"));
        std::fs::write(&cert_file, certificate.pem()).expect("writing the certificate");
        std::fs::write(&key_file, key.serialize_pem()).expect("writing the key");
        PemPair {
            cert_file,
            key_file,
            der: certificate.der().to_vec(),
        }
    }

    /// The CA certificate, DER-encoded.
    pub fn ca_der(&self) -> Vec<u8> {
        self.ca.der().to_vec()
    }

    /// A reqwest client that trusts this CA only.
    pub fn client_trusting(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_der(&self.ca_der()).expect("the CA certificate"),
            )
            .build()
            .expect("a client trusting the test CA")
    }
}

/// Whether the remote asks for a client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    /// A certificate signed by the CA is required; others are refused.
    Required,
}

/// One request to the TLS remote, with the client certificate (DER) its
/// connection presented and the remote verified.
#[derive(Debug, Clone)]
pub struct TlsReceived {
    pub request: Received,
    pub client_certificate: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Seen {
    /// TCP connections accepted.
    connections: usize,
    requests: Vec<TlsReceived>,
    /// Why handshakes failed, in rustls' words.
    handshake_failures: Vec<String>,
}

/// An HTTPS server on loopback answering every request `200 ok`.
#[derive(Clone)]
pub struct TlsRemote {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Seen>>,
}

impl TlsRemote {
    /// Serves with `pki`'s server certificate.
    pub async fn start(pki: &TestPki, client_auth: ClientAuth) -> TlsRemote {
        TlsRemote::start_with(pki, &pki.server, client_auth).await
    }

    /// Serves with `server` (a certificate of `pki` or of another CA); client
    /// certificates are checked against `pki`'s CA.
    pub async fn start_with(pki: &TestPki, server: &PemPair, client_auth: ClientAuth) -> TlsRemote {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("protocol versions");
        let builder = match client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Required => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from(pki.ca_der()))
                    .expect("the CA as a root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("a client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let key = std::fs::read(&server.key_file).expect("reading the server key");
        let key = rustls::pki_types::pem::PemObject::from_pem_slice(&key)
            .map(|key: PrivateKeyDer<'static>| key)
            .expect("the server key");
        let config = builder
            .with_single_cert(vec![CertificateDer::from(server.der.clone())], key)
            .expect("the server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the TLS remote");
        let remote = TlsRemote {
            addr: listener.local_addr().expect("TLS remote address"),
            seen: Arc::new(Mutex::new(Seen::default())),
        };
        let serving = remote.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let remote = serving.clone();
                tokio::spawn(async move { remote.serve_connection(acceptor, stream).await });
            }
        });
        remote
    }

    async fn serve_connection(
        &self,
        acceptor: tokio_rustls::TlsAcceptor,
        stream: tokio::net::TcpStream,
    ) {
        self.seen.lock().unwrap().connections += 1;
        let tls = match acceptor.accept(stream).await {
            Ok(tls) => tls,
            Err(error) => {
                self.seen
                    .lock()
                    .unwrap()
                    .handshake_failures
                    .push(error.to_string());
                return;
            }
        };
        let client_certificate = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|certificate| certificate.to_vec());
        let remote = self.clone();
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let remote = remote.clone();
            let client_certificate = client_certificate.clone();
            async move {
                let request = Received::read(request).await;
                remote.seen.lock().unwrap().requests.push(TlsReceived {
                    request,
                    client_certificate,
                });
                Ok::<_, std::io::Error>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tls), service)
            .await;
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// `https://localhost:PORT{path}`.
    pub fn named_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn requests(&self, path: &str) -> Vec<TlsReceived> {
        self.seen
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|seen| seen.request.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests; returns them.
    /// (those that came when `timeout` passes first).
    pub async fn wait(&self, path: &str, n: usize, timeout: Duration) -> Vec<TlsReceived> {
        let arrived = wait_for(timeout, || async {
            let got = self.requests(path);
            if got.len() >= n { Ok(got) } else { Err(got) }
        })
        .await;
        arrived.unwrap_or_else(|so_far| so_far)
    }

    /// How many TCP connections it accepted.
    pub fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }

    /// Why handshakes failed, in rustls' words, oldest first.
    pub fn handshake_failures(&self) -> Vec<String> {
        self.seen.lock().unwrap().handshake_failures.clone()
    }
}
