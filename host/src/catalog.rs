//! The configured objects of every project space (domains, submitters, API
//! tokens, connections, repeaters): persisted in the store, declared by the
//! config file at start-up or changed through the admin API, and served from
//! an immutable in-memory snapshot that is swapped whole on every change.
//!
//! Connections are sealed with the secret key before they reach the store;
//! submitter passwords are kept as argon2 hashes and API tokens as SHA-256
//! digests, so the data directory holds no secret in clear.
//!
//! A password that matched its argon2 hash is remembered (a salted digest,
//! in memory only) for as long as that submitter's stored hash stays the same,
//! across catalog changes: argon2 costs tens of milliseconds and ~19 MiB per
//! check, and pausing a repeater must not make every device pay it again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::{Deserialize, Serialize};

use crate::config::{Config, SubmitterConfig};
use crate::connection::ConnectionSpec;
use crate::repeater::RepeaterSpec;
use crate::secrets::{self, SecretKey};
use crate::store::{ObjectChange, RepeaterRef, Store, StoreError};

const DOMAIN: &str = "domain";
const SUBMITTER: &str = "submitter";
const TOKEN: &str = "token";
const CONNECTION: &str = "connection";
const REPEATER: &str = "repeater";

/// Who created a connection: the operator's config file may point anywhere;
/// the API is subject to the delivery network policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Config,
    Admin,
    Domain,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredConnection {
    pub spec: ConnectionSpec,
    pub origin: Origin,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRepeater {
    id: u64,
    spec: RepeaterSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSubmitter {
    password_hash: String,
}

/// One project space's objects.
#[derive(Debug, Default)]
pub struct DomainObjects {
    pub name: String,
    /// username → argon2 PHC string.
    pub submitters: HashMap<String, String>,
    pub token_digests: Vec<[u8; 32]>,
    pub connections: BTreeMap<String, Arc<StoredConnection>>,
    pub repeaters: BTreeMap<String, RepeaterRef>,
    /// The repeaters again, as ingest hands them to the store.
    pub repeater_list: Arc<Vec<RepeaterRef>>,
}

/// Every domain's objects at one moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub domains: BTreeMap<String, Arc<DomainObjects>>,
}

impl Snapshot {
    pub fn domain(&self, name: &str) -> Option<&Arc<DomainObjects>> {
        self.domains.get(name)
    }

    /// Every repeater of every domain.
    pub fn repeaters(&self) -> impl Iterator<Item = &RepeaterRef> {
        self.domains
            .values()
            .flat_map(|domain| domain.repeaters.values())
    }

    /// The domain a token reaches, if it is a domain token.
    pub fn domain_of_token(&self, token: &str) -> Option<&str> {
        let digest = secrets::token_digest(token);
        let mut found = None;
        for domain in self.domains.values() {
            for known in &domain.token_digests {
                // Constant time per comparison; every token is compared.
                if secrets::digests_equal(known, &digest) {
                    found = Some(domain.name.as_str());
                }
            }
        }
        found
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Secret(#[from] secrets::SecretError),
    #[error("no domain \"{0}\"")]
    NoDomain(String),
    #[error("no {kind} \"{name}\" in domain \"{domain}\"")]
    NotFound {
        kind: &'static str,
        domain: String,
        name: String,
    },
    #[error("{kind} \"{name}\" already exists in domain \"{domain}\"")]
    Exists {
        kind: &'static str,
        domain: String,
        name: String,
    },
    /// A field of the object is wrong.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// The change would break another object.
    #[error("{0}")]
    Conflict(String),
    #[error("stored object {what} is not readable: {problem}")]
    Corrupt { what: String, problem: String },
}

/// The catalog: the store's objects plus the current snapshot.
pub struct Catalog {
    store: Store,
    key: Arc<SecretKey>,
    current: RwLock<Arc<Snapshot>>,
    changes: tokio::sync::watch::Sender<Arc<Snapshot>>,
    /// Passwords already verified against their argon2 hash: argon2 is
    /// deliberately slow (and takes ~19 MiB a check), submissions are not.
    verified: Mutex<VerifiedCredentials>,
    verify_salt: [u8; 16],
    /// One lock per password being checked, so that a burst of submissions
    /// with the same new credentials runs argon2 once, not once per request.
    checks_in_flight: Mutex<HashMap<[u8; 32], Arc<Mutex<()>>>>,
    /// Argon2 checks run since the catalog was loaded.
    password_checks: AtomicU64,
    /// Serialises changes so that read-modify-write of the snapshot is safe.
    change_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

fn corrupt(what: String, problem: impl ToString) -> CatalogError {
    CatalogError::Corrupt {
        what,
        problem: problem.to_string(),
    }
}

fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("the operating system's randomness");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes make a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashes any password")
        .to_string()
}

fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

impl Catalog {
    /// Reads every object from the store.
    pub async fn load(store: Store, key: Arc<SecretKey>) -> Result<Catalog, CatalogError> {
        let mut verify_salt = [0u8; 16];
        getrandom::fill(&mut verify_salt).expect("the operating system's randomness");
        let snapshot = Arc::new(Self::read_snapshot(&store, &key).await?);
        let (changes, _) = tokio::sync::watch::channel(snapshot.clone());
        Ok(Catalog {
            store,
            key,
            current: RwLock::new(snapshot),
            changes,
            verified: Mutex::new(VerifiedCredentials::default()),
            verify_salt,
            checks_in_flight: Mutex::new(HashMap::new()),
            password_checks: AtomicU64::new(0),
            change_lock: tokio::sync::Mutex::new(()),
        })
    }

    async fn read_snapshot(store: &Store, key: &SecretKey) -> Result<Snapshot, CatalogError> {
        let mut domains: BTreeMap<String, DomainObjects> = BTreeMap::new();
        for (domain, _, _) in store.objects(DOMAIN).await? {
            domains.insert(
                domain.clone(),
                DomainObjects {
                    name: domain,
                    ..DomainObjects::default()
                },
            );
        }
        fn domain_of<'a>(
            domains: &'a mut BTreeMap<String, DomainObjects>,
            domain: &str,
            what: &str,
        ) -> Result<&'a mut DomainObjects, CatalogError> {
            domains.get_mut(domain).ok_or_else(|| {
                corrupt(
                    what.to_owned(),
                    format!("its domain \"{domain}\" is not stored"),
                )
            })
        }
        for (domain, username, bytes) in store.objects(SUBMITTER).await? {
            let what = format!("submitter {domain}/{username}");
            let stored: StoredSubmitter =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(what.clone(), e))?;
            domain_of(&mut domains, &domain, &what)?
                .submitters
                .insert(username, stored.password_hash);
        }
        for (domain, digest_hex, _) in store.objects(TOKEN).await? {
            let what = format!("token of {domain}");
            let digest =
                decode_hex32(&digest_hex).ok_or_else(|| corrupt(what.clone(), "bad digest"))?;
            domain_of(&mut domains, &domain, &what)?
                .token_digests
                .push(digest);
        }
        for (domain, name, bytes) in store.objects(CONNECTION).await? {
            let what = format!("connection {domain}/{name}");
            let plain = key.open(&bytes)?;
            let stored: StoredConnection =
                serde_json::from_slice(&plain).map_err(|e| corrupt(what.clone(), e))?;
            domain_of(&mut domains, &domain, &what)?
                .connections
                .insert(name, Arc::new(stored));
        }
        for (domain, name, bytes) in store.objects(REPEATER).await? {
            let what = format!("repeater {domain}/{name}");
            let stored: StoredRepeater =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(what.clone(), e))?;
            domain_of(&mut domains, &domain, &what)?.repeaters.insert(
                name,
                RepeaterRef {
                    id: stored.id,
                    domain: domain.clone(),
                    spec: Arc::new(stored.spec),
                },
            );
        }
        Ok(Snapshot {
            domains: domains
                .into_iter()
                .map(|(name, mut objects)| {
                    objects.repeater_list = Arc::new(objects.repeaters.values().cloned().collect());
                    (name, Arc::new(objects))
                })
                .collect(),
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().expect("catalog lock").clone()
    }

    /// A receiver that sees every new snapshot.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<Snapshot>> {
        self.changes.subscribe()
    }

    /// Reads every object from the store again: another node of the
    /// cluster changed some.
    pub async fn reload_from_store(&self) -> Result<(), CatalogError> {
        let _changing = self.change_lock.lock().await;
        self.reload().await
    }

    async fn reload(&self) -> Result<(), CatalogError> {
        let snapshot = Arc::new(Self::read_snapshot(&self.store, &self.key).await?);
        *self.current.write().expect("catalog lock") = snapshot.clone();
        self.verified
            .lock()
            .expect("verified lock")
            .retain_current(&snapshot);
        self.changes.send_replace(snapshot);
        Ok(())
    }

    /// Creates or updates everything the config file declares. Objects made
    /// through the API and not named in the file are left as they are.
    pub async fn apply_config(&self, config: &Config) -> Result<(), CatalogError> {
        let before = self.snapshot();
        let mut changes = Vec::new();
        for domain in &config.domains {
            if before.domain(&domain.name).is_none() {
                changes.push(ObjectChange {
                    kind: DOMAIN,
                    domain: domain.name.clone(),
                    name: String::new(),
                    value: Some(b"{}".to_vec()),
                });
            }
        }
        // argon2 (checking and hashing each password) is slow: off the runtime.
        let submitters = {
            let before = before.clone();
            let submitters = config.submitters.clone();
            tokio::task::spawn_blocking(move || submitter_changes(&before, &submitters))
                .await
                .unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()))
        };
        changes.extend(submitters);
        for token in &config.api_tokens {
            let digest = secrets::token_digest(token.token.expose());
            changes.push(ObjectChange {
                kind: TOKEN,
                domain: token.domain.clone(),
                name: encode_hex(&digest),
                value: Some(Vec::new()),
            });
        }
        for declared in &config.connections {
            let stored = StoredConnection {
                spec: declared.spec.clone(),
                origin: Origin::Config,
            };
            changes.push(ObjectChange {
                kind: CONNECTION,
                domain: declared.domain.clone(),
                name: declared.spec.name.clone(),
                value: Some(
                    self.key
                        .seal(&serde_json::to_vec(&stored).expect("serializes")),
                ),
            });
        }
        for declared in &config.repeaters {
            let existing = before
                .domain(&declared.domain)
                .and_then(|d| d.repeaters.get(&declared.spec.name))
                .map(|r| r.id);
            let id = match existing {
                Some(id) => id,
                None => {
                    self.store
                        .repeater_id_for(&declared.domain, &declared.spec.name)
                        .await?
                }
            };
            let stored = StoredRepeater {
                id,
                spec: declared.spec.clone(),
            };
            changes.push(ObjectChange {
                kind: REPEATER,
                domain: declared.domain.clone(),
                name: declared.spec.name.clone(),
                value: Some(serde_json::to_vec(&stored).expect("serializes")),
            });
        }
        self.store.put_objects(changes).await?;
        self.reload().await
    }

    fn verification_key(&self, domain: &str, username: &str, password: &str) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(self.verify_salt);
        for part in [domain, username, password] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.finalize().into()
    }

    /// Whether these credentials were verified before (no argon2 work)
    /// against the submitter's password as the current snapshot has it.
    pub fn submitter_known_good(&self, domain: &str, username: &str, password: &str) -> bool {
        let snapshot = self.snapshot();
        let Some(hash) = snapshot
            .domain(domain)
            .and_then(|d| d.submitters.get(username))
        else {
            return false;
        };
        let password_key = self.verification_key(domain, username, password);
        self.verified
            .lock()
            .expect("verified lock")
            .contains(domain, username, hash, &password_key)
    }

    /// Checks a submitter's password (HTTP Basic on the receiver). Slow on
    /// first sight of a password (argon2): call it off the async runtime.
    /// Concurrent checks of the same credentials wait for the first one.
    pub fn verify_submitter(&self, domain: &str, username: &str, password: &str) -> bool {
        let snapshot = self.snapshot();
        let Some(hash) = snapshot
            .domain(domain)
            .and_then(|d| d.submitters.get(username))
        else {
            return false;
        };
        let password_key = self.verification_key(domain, username, password);
        let known = || {
            self.verified.lock().expect("verified lock").contains(
                domain,
                username,
                hash,
                &password_key,
            )
        };
        if known() {
            return true;
        }
        let in_flight = self
            .checks_in_flight
            .lock()
            .expect("checks lock")
            .entry(password_key)
            .or_default()
            .clone();
        let matches = {
            let _turn = in_flight.lock().expect("check lock");
            if known() {
                true
            } else {
                self.password_checks.fetch_add(1, Ordering::Relaxed);
                let matches = password_matches(password, hash);
                if matches {
                    self.verified.lock().expect("verified lock").insert(
                        domain,
                        username,
                        hash,
                        password_key,
                    );
                }
                matches
            }
        };
        let mut checks = self.checks_in_flight.lock().expect("checks lock");
        // Clones are taken under this lock: two left (the map's and ours)
        // means nobody else waits on this check.
        if Arc::strong_count(&in_flight) == 2 {
            checks.remove(&password_key);
        }
        matches
    }

    /// How many argon2 checks ran since the catalog was loaded.
    pub fn password_checks(&self) -> u64 {
        self.password_checks.load(Ordering::Relaxed)
    }

    // ---- changes through the API --------------------------------------------

    /// Writes (or, for `None`, deletes) one object.
    async fn put_object(
        &self,
        kind: &'static str,
        domain: &str,
        name: &str,
        value: Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let change = ObjectChange {
            kind,
            domain: domain.to_owned(),
            name: name.to_owned(),
            value,
        };
        self.store.put_objects(vec![change]).await
    }

    fn require_domain<'a>(
        snapshot: &'a Snapshot,
        domain: &str,
    ) -> Result<&'a Arc<DomainObjects>, CatalogError> {
        snapshot
            .domain(domain)
            .ok_or_else(|| CatalogError::NoDomain(domain.to_owned()))
    }

    /// Creates (`replace = false`) or replaces a connection. A secret left as
    /// the placeholder keeps the stored value.
    pub async fn put_connection(
        &self,
        domain: &str,
        mut spec: ConnectionSpec,
        origin: Origin,
        replace: bool,
    ) -> Result<(), CatalogError> {
        let _guard = self.change_lock.lock().await;
        let snapshot = self.snapshot();
        let objects = Self::require_domain(&snapshot, domain)?;
        let existing = objects.connections.get(&spec.name);
        if let Some(existing) = presence(existing, replace, CONNECTION, domain, &spec.name)? {
            spec.auth.keep_placeholders_from(&existing.spec.auth);
        }
        if let Some(field) = spec.auth.placeholder_field() {
            return Err(CatalogError::Invalid {
                field: format!("auth.{field}"),
                problem: "is the placeholder \"********\" but no secret is stored to keep".into(),
            });
        }
        let stored = StoredConnection { spec, origin };
        let sealed = self
            .key
            .seal(&serde_json::to_vec(&stored).expect("serializes"));
        self.put_object(CONNECTION, domain, &stored.spec.name, Some(sealed))
            .await?;
        self.reload().await
    }

    pub async fn delete_connection(&self, domain: &str, name: &str) -> Result<(), CatalogError> {
        let _guard = self.change_lock.lock().await;
        let snapshot = self.snapshot();
        let objects = Self::require_domain(&snapshot, domain)?;
        if !objects.connections.contains_key(name) {
            return Err(CatalogError::not_found(CONNECTION, domain, name));
        }
        let users: Vec<&str> = objects
            .repeaters
            .values()
            .filter(|r| r.spec.connection == name)
            .map(|r| r.spec.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(CatalogError::Conflict(format!(
                "connection \"{name}\" is used by repeater{} {}",
                if users.len() == 1 { "" } else { "s" },
                users
                    .iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.put_object(CONNECTION, domain, name, None).await?;
        self.reload().await
    }

    /// Creates or replaces a repeater; returns its id.
    pub async fn put_repeater(
        &self,
        domain: &str,
        spec: RepeaterSpec,
        replace: bool,
    ) -> Result<u64, CatalogError> {
        let _guard = self.change_lock.lock().await;
        let snapshot = self.snapshot();
        let objects = Self::require_domain(&snapshot, domain)?;
        if !objects.connections.contains_key(&spec.connection) {
            return Err(CatalogError::Invalid {
                field: "connection".into(),
                problem: format!(
                    "no connection \"{}\" in domain \"{domain}\"",
                    spec.connection
                ),
            });
        }
        let existing = objects.repeaters.get(&spec.name);
        let id = match presence(existing, replace, REPEATER, domain, &spec.name)? {
            Some(existing) => existing.id,
            None => self.store.repeater_id_for(domain, &spec.name).await?,
        };
        let stored = StoredRepeater { id, spec };
        let value = serde_json::to_vec(&stored).expect("serializes");
        self.put_object(REPEATER, domain, &stored.spec.name, Some(value))
            .await?;
        self.reload().await?;
        Ok(id)
    }

    /// Deletes a repeater; returns its id so that its records can be cancelled.
    pub async fn delete_repeater(&self, domain: &str, name: &str) -> Result<u64, CatalogError> {
        let _guard = self.change_lock.lock().await;
        let snapshot = self.snapshot();
        let objects = Self::require_domain(&snapshot, domain)?;
        let Some(repeater) = objects.repeaters.get(name) else {
            return Err(CatalogError::not_found(REPEATER, domain, name));
        };
        let id = repeater.id;
        self.put_object(REPEATER, domain, name, None).await?;
        self.store.forget_repeater_id(domain, name).await?;
        self.reload().await?;
        Ok(id)
    }

    /// Pauses or resumes a repeater.
    pub async fn set_paused(
        &self,
        domain: &str,
        name: &str,
        paused: bool,
    ) -> Result<(), CatalogError> {
        let spec = {
            let snapshot = self.snapshot();
            let objects = Self::require_domain(&snapshot, domain)?;
            let repeater = objects
                .repeaters
                .get(name)
                .ok_or_else(|| CatalogError::not_found(REPEATER, domain, name))?;
            let mut spec = (*repeater.spec).clone();
            spec.paused = paused;
            spec
        };
        self.put_repeater(domain, spec, true).await.map(|_| ())
    }
}

/// The changes that store `submitters` as the file declares them: those
/// whose password the stored hash does not match, hashed anew.
fn submitter_changes(before: &Snapshot, submitters: &[SubmitterConfig]) -> Vec<ObjectChange> {
    let mut changes = Vec::new();
    for submitter in submitters {
        let existing = before
            .domain(&submitter.domain)
            .and_then(|d| d.submitters.get(&submitter.username));
        if existing.is_some_and(|hash| password_matches(submitter.password.expose(), hash)) {
            continue;
        }
        let stored = StoredSubmitter {
            password_hash: hash_password(submitter.password.expose()),
        };
        changes.push(ObjectChange {
            kind: SUBMITTER,
            domain: submitter.domain.clone(),
            name: submitter.username.clone(),
            value: Some(serde_json::to_vec(&stored).expect("serializes")),
        });
    }
    changes
}

/// Submitters' passwords verified against their argon2 hash, per (domain,
/// username) with the hash they were verified against. A catalog change keeps
/// them (pausing a repeater must not cost every device an argon2 check, ~19
/// MiB each) unless it changed or removed that submitter's password: then the
/// entry no longer matches the snapshot's hash and is dropped.
#[derive(Debug, Default)]
struct VerifiedCredentials {
    /// domain → username → what was verified.
    by_domain: HashMap<String, HashMap<String, VerifiedSubmitter>>,
}

#[derive(Debug)]
struct VerifiedSubmitter {
    /// The argon2 PHC string the passwords were checked against.
    password_hash: String,
    /// Keyed digests (`Catalog::verification_key`) of the passwords that matched.
    passwords: HashSet<[u8; 32]>,
}

impl VerifiedCredentials {
    fn contains(&self, domain: &str, username: &str, hash: &str, password: &[u8; 32]) -> bool {
        self.by_domain
            .get(domain)
            .and_then(|users| users.get(username))
            .is_some_and(|verified| {
                verified.password_hash == hash && verified.passwords.contains(password)
            })
    }

    fn insert(&mut self, domain: &str, username: &str, hash: &str, password: [u8; 32]) {
        let users = self.by_domain.entry(domain.to_owned()).or_default();
        let verified = users
            .entry(username.to_owned())
            .or_insert_with(|| VerifiedSubmitter {
                password_hash: hash.to_owned(),
                passwords: HashSet::new(),
            });
        if verified.password_hash != hash {
            verified.password_hash = hash.to_owned();
            verified.passwords.clear();
        }
        verified.passwords.insert(password);
    }

    /// Drops what `snapshot` no longer vouches for: submitters removed or
    /// whose password hash changed.
    fn retain_current(&mut self, snapshot: &Snapshot) {
        self.by_domain.retain(|domain, users| {
            let Some(objects) = snapshot.domain(domain) else {
                return false;
            };
            users.retain(|username, verified| {
                objects.submitters.get(username) == Some(&verified.password_hash)
            });
            !users.is_empty()
        });
    }
}

impl CatalogError {
    fn not_found(kind: &'static str, domain: &str, name: &str) -> CatalogError {
        CatalogError::NotFound {
            kind,
            domain: domain.to_owned(),
            name: name.to_owned(),
        }
    }
}

/// A create (`replace` false) needs the object absent, a replace needs it
/// present; returns the existing one.
fn presence<T>(
    existing: Option<T>,
    replace: bool,
    kind: &'static str,
    domain: &str,
    name: &str,
) -> Result<Option<T>, CatalogError> {
    match (existing, replace) {
        (Some(_), false) => Err(CatalogError::Exists {
            kind,
            domain: domain.to_owned(),
            name: name.to_owned(),
        }),
        (None, true) => Err(CatalogError::not_found(kind, domain, name)),
        (existing, _) => Ok(existing),
    }
}

fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A catalog over a real redb file in a temporary directory, with the
    /// objects of `config_text`.
    struct Fixture {
        catalog: Catalog,
        dir: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn config(password: &str) -> Config {
        let text = format!(
            r#"
[[domains]]
name = "demo"

[[submitters]]
domain = "demo"
username = "danny"
password = "{password}"

[[connections]]
domain = "demo"
name = "to-remote"
url = "http://127.0.0.1:9/in"

[[repeaters]]
domain = "demo"
name = "forms"
connection = "to-remote"
kind = "form"
format = "form-xml"
"#
        );
        crate::config::parse(&text, "repeatd.toml").expect("the test config is valid")
    }

    async fn fixture(password: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "repeatd-catalog-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let store = Store::open(&dir).expect("the store opens");
        let catalog = Catalog::load(store, Arc::new(SecretKey::from_bytes(&[3; 32])))
            .await
            .expect("the catalog loads");
        catalog
            .apply_config(&config(password))
            .await
            .expect("the config applies");
        Fixture { catalog, dir }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn verified_credentials_survive_a_change_that_does_not_touch_them() {
        let fixture = fixture("pw").await;
        let catalog = &fixture.catalog;
        assert!(!catalog.submitter_known_good("demo", "danny", "pw"));
        assert!(catalog.verify_submitter("demo", "danny", "pw"));
        assert_eq!(catalog.password_checks(), 1);
        assert!(catalog.submitter_known_good("demo", "danny", "pw"));

        catalog.set_paused("demo", "forms", true).await.unwrap();
        catalog.set_paused("demo", "forms", false).await.unwrap();
        catalog.apply_config(&config("pw")).await.unwrap();

        assert!(
            catalog.submitter_known_good("demo", "danny", "pw"),
            "pausing a repeater and re-applying the same file keep the credential"
        );
        assert!(catalog.verify_submitter("demo", "danny", "pw"));
        // apply_config compared the file's password with the stored hash
        // itself; the submitter's own checks did not run argon2 again.
        assert_eq!(catalog.password_checks(), 1);
        assert!(!catalog.submitter_known_good("demo", "danny", "wrong"));
        assert!(!catalog.verify_submitter("demo", "danny", "wrong"));
        assert_eq!(catalog.password_checks(), 2, "a wrong password is checked");
        assert!(!catalog.verify_submitter("demo", "danny", "wrong"));
        assert_eq!(catalog.password_checks(), 3, "and never remembered");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_changed_password_drops_the_verified_credential() {
        let fixture = fixture("old-pw").await;
        let catalog = &fixture.catalog;
        assert!(catalog.verify_submitter("demo", "danny", "old-pw"));
        assert!(catalog.submitter_known_good("demo", "danny", "old-pw"));

        catalog.apply_config(&config("new-pw")).await.unwrap();

        assert!(
            !catalog.submitter_known_good("demo", "danny", "old-pw"),
            "the old password is no longer known good"
        );
        assert!(!catalog.verify_submitter("demo", "danny", "old-pw"));
        assert!(catalog.verify_submitter("demo", "danny", "new-pw"));
        assert!(catalog.submitter_known_good("demo", "danny", "new-pw"));
        assert!(
            !catalog.submitter_known_good("demo", "someone", "new-pw"),
            "another username with the same password is another credential"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_removed_submitter_drops_the_verified_credential() {
        let fixture = fixture("pw").await;
        let catalog = &fixture.catalog;
        assert!(catalog.verify_submitter("demo", "danny", "pw"));

        catalog
            .put_object(SUBMITTER, "demo", "danny", None)
            .await
            .unwrap();
        catalog.reload().await.unwrap();

        assert!(!catalog.submitter_known_good("demo", "danny", "pw"));
        assert!(!catalog.verify_submitter("demo", "danny", "pw"));
        assert!(
            catalog.verified.lock().unwrap().by_domain.is_empty(),
            "nothing is kept for a submitter who is gone"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_first_checks_of_one_credential_run_argon2_once() {
        let fixture = fixture("pw").await;
        let catalog = &fixture.catalog;
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| assert!(catalog.verify_submitter("demo", "danny", "pw")));
            }
        });
        assert_eq!(catalog.password_checks(), 1);
        assert!(catalog.checks_in_flight.lock().unwrap().is_empty());
    }
}
