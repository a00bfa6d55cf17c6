//! The HTTP clients connections send over. [`client_for`] builds the client
//! of one connection: its TLS settings ([`ClientTls`]: trusted CA, client
//! certificate, `skip_cert_verify`) and, for connections made with a domain
//! token, the [`GuardedResolver`]. [`Clients`] keeps them: connections that
//! set no TLS share one pooled client (two: guarded or not), any other is
//! built once per set of TLS settings and reused, so its connections are kept
//! alive between sends, and built again when a setting or one of its files
//! changes (a renewed certificate is picked up at the next send).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{EgressPolicy, GuardedResolver};
use crate::connection::ConnectionSpec;
use crate::field::FieldError;
use crate::tls::ClientTls;

/// The client for `spec`, built now; `guard` for connections made with a
/// domain token. Errors name the connection key that is wrong.
pub fn client_for(
    spec: &ConnectionSpec,
    guard: Option<&Arc<EgressPolicy>>,
) -> Result<reqwest::Client, FieldError> {
    build(&spec.tls(), guard)
}

fn build(
    tls: &ClientTls,
    guard: Option<&Arc<EgressPolicy>>,
) -> Result<reqwest::Client, FieldError> {
    let mut builder = reqwest::Client::builder();
    if let Some(policy) = guard {
        builder = builder
            .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
            .no_proxy();
    }
    if !tls.is_default() {
        builder = builder.use_preconfigured_tls(tls.rustls_config()?);
    }
    builder
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(15))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("repeatd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| FieldError::new("", format!("cannot build an HTTP client: {error}")))
}

/// Every connection's client, built when first needed.
pub struct Clients {
    policy: Arc<EgressPolicy>,
    shared: reqwest::Client,
    shared_guarded: reqwest::Client,
    built: Mutex<HashMap<(ClientTls, bool), Built>>,
}

/// A client and the modification times of the files it was built from.
struct Built {
    modified: Vec<Option<SystemTime>>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

impl Clients {
    pub fn new(policy: Arc<EgressPolicy>) -> Result<Clients, FieldError> {
        Ok(Clients {
            shared: build(&ClientTls::default(), None)?,
            shared_guarded: build(&ClientTls::default(), Some(&policy))?,
            policy,
            built: Mutex::new(HashMap::new()),
        })
    }

    /// The policy guarded clients follow.
    pub fn policy(&self) -> &Arc<EgressPolicy> {
        &self.policy
    }

    /// The client to send `spec`'s requests over (`guarded` for connections
    /// made with a domain token). A file that became unreadable since the
    /// connection was checked is an error naming its key.
    pub fn get(&self, spec: &ConnectionSpec, guarded: bool) -> Result<reqwest::Client, FieldError> {
        let tls = spec.tls();
        if tls.is_default() {
            return Ok(if guarded {
                self.shared_guarded.clone()
            } else {
                self.shared.clone()
            });
        }
        let modified: Vec<Option<SystemTime>> = tls
            .files()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect();
        let key = (tls, guarded);
        let mut built = self
            .built
            .lock()
            .expect("the client cache is never poisoned");
        if let Some(existing) = built.get(&key)
            && existing.modified == modified
        {
            return Ok(existing.client.clone());
        }
        let client = build(&key.0, guarded.then_some(&self.policy))?;
        built.insert(
            key,
            Built {
                modified,
                client: client.clone(),
            },
        );
        Ok(client)
    }
}
