//! Error e-mails (SPEC section 7). When a send to a connection fails with a
//! server error, an auth error (401, 403), a timeout or a network failure,
//! the connection's `notify` addresses are told over SMTP what failed and
//! where, why they get the e-mail and how to stop it.
//!
//! The scheduler reports every committed attempt to [`Notifier::observe`],
//! which never waits: it hands the facts to one notifier task over a
//! channel. That task keeps a [`Digest`] per connection so that a remote that
//! stays down does not flood inboxes: the first failure is e-mailed at once,
//! then at most one e-mail per connection per `[smtp] quiet_period`, each one
//! summarising what happened since the previous one (how many failures, which
//! records, still failing or recovered). A connection whose contacts were told
//! it fails gets a short "recovered" e-mail once a send succeeds again.
//!
//! Digests are persisted through the store whenever they change, so what is
//! owed survives a restart and is sent afterwards (at least once: an e-mail
//! under way when the process stops is sent again). E-mails go out from tasks
//! of their own: an SMTP server that is down or slow is logged and tried
//! again with growing waits, never holding up delivery. Recipients are read
//! from the catalog when an e-mail goes out, so an address removed from the
//! connection gets nothing more. Each address gets a message of its own; one
//! the server refuses for good (a 5xx answer) is logged and skipped, the
//! others are tried again. (A crash between an attempt's commit and the next
//! save of the digests, a few milliseconds, loses that attempt's mention.)
//! Only this module speaks SMTP.
//!
//! On a cluster (several nodes on one PostgreSQL database) one node at a time
//! owns the e-mails: the one holding the cluster lock [`OWNER_LOCK`]. Only it
//! keeps digests and sends, so quiet periods hold for the cluster. Every
//! other node queues what it observes in the store
//! (`Store::push_email_observations`) and the owner takes it from there every
//! [`CLUSTER_POLL`]. A node that becomes the owner (its predecessor died, or
//! it is the first) loads the digests the store kept, as a restart does, and
//! sends what is owed; one whose lock connection broke saves its digests and
//! forgets them. A node not owning the e-mails forwards the successes of the
//! connections that have a stored digest or that it saw fail lately, so that
//! the owner hears of recoveries. On redb the one process is always the owner.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{Catalog, Snapshot};
use crate::clock::{Clock, micros};
use crate::connection::ConnectionSpec;
use crate::metrics::EmailCounts;
use crate::record::{Outcome, PayloadRef, RepeatRecord};
use crate::store::Store;
use crate::time::format_utc;
use crate::units::format_duration;

mod smtp_config;
pub use smtp_config::{SmtpConfig, SmtpTls};

/// Records listed one by one in an e-mail; failures of others are counted.
pub const RECORDS_LISTED: usize = 20;
/// The wait after the SMTP server could not take an e-mail; doubled after
/// each further failure, up to `MAX_RETRY_WAIT`.
const FIRST_RETRY_WAIT: Duration = Duration::from_secs(1);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);
/// How long one SMTP exchange step (connect, a command) may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the task waits before trying again to persist digests the store
/// refused.
const STORE_RETRY_WAIT: Duration = Duration::from_secs(1);
/// The longest the task sleeps without looking again.
const LONGEST_SLEEP: Duration = Duration::from_secs(3_600);
/// The cluster lock whose holder owns the error e-mails.
pub const OWNER_LOCK: &str = "email";
/// How often a node of a cluster asks whether it owns the e-mails, and the
/// owner takes the observations other nodes queued.
pub const CLUSTER_POLL: Duration = Duration::from_millis(500);
/// How long asking for the lock may take before this node counts as not
/// owning the e-mails.
const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// Queued observations taken at a time.
const TAKE_BATCH: usize = 500;
/// How long a node not owning the e-mails forwards the successes of a
/// connection it saw fail, before the owner's stored digest says it must.
const RECENT_FAILURE: Duration = Duration::from_secs(10);

/// (domain, connection name).
type ConnectionKey = (String, String);

// ---- what the e-mails tell (pure) -------------------------------------------

/// What kind of id a record's payload has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadIdKind {
    Form,
    Case,
    App,
}

impl PayloadIdKind {
    fn of(payload: &PayloadRef) -> PayloadIdKind {
        match payload {
            PayloadRef::Form { .. } => PayloadIdKind::Form,
            PayloadRef::Case { .. } => PayloadIdKind::Case,
            PayloadRef::App { .. } => PayloadIdKind::App,
        }
    }

    fn word(self) -> &'static str {
        match self {
            PayloadIdKind::Form => "form",
            PayloadIdKind::Case => "case",
            PayloadIdKind::App => "app",
        }
    }
}

/// One attempt, as an e-mail tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptNote {
    /// When it was made (micros).
    pub at: i64,
    pub repeater: String,
    pub record_id: String,
    pub payload_kind: PayloadIdKind,
    /// The form, case or app id.
    pub payload_id: String,
    pub url: String,
    /// The error as the remote gave it (status and the start of the body) or
    /// the network or timeout error; empty for a success.
    pub error: String,
}

/// A record among the failures of a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedRecord {
    pub record_id: String,
    pub repeater: String,
    pub payload_kind: PayloadIdKind,
    pub payload_id: String,
    pub n_failures: u64,
    pub last_at: i64,
}

/// Failed attempts not yet e-mailed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Failures {
    pub n_failures: u64,
    pub first_at: Option<i64>,
    pub latest: Option<AttemptNote>,
    /// The records that failed, first failed first, at most `RECORDS_LISTED`.
    pub records: Vec<FailedRecord>,
    /// Failures of records beyond the listed ones.
    pub n_unlisted_failures: u64,
}

impl Failures {
    pub fn add(&mut self, note: AttemptNote) {
        self.n_failures += 1;
        self.first_at = Some(self.first_at.map_or(note.at, |first| first.min(note.at)));
        self.list(FailedRecord {
            record_id: note.record_id.clone(),
            repeater: note.repeater.clone(),
            payload_kind: note.payload_kind,
            payload_id: note.payload_id.clone(),
            n_failures: 1,
            last_at: note.at,
        });
        if self
            .latest
            .as_ref()
            .is_none_or(|latest| latest.at <= note.at)
        {
            self.latest = Some(note);
        }
    }

    fn list(&mut self, failed: FailedRecord) {
        if let Some(known) = self
            .records
            .iter_mut()
            .find(|known| known.record_id == failed.record_id)
        {
            known.n_failures += failed.n_failures;
            known.last_at = known.last_at.max(failed.last_at);
        } else if self.records.len() < RECORDS_LISTED {
            self.records.push(failed);
        } else {
            self.n_unlisted_failures += failed.n_failures;
        }
    }

    /// `older` and `newer` as one.
    pub fn merge(older: Failures, newer: Failures) -> Failures {
        let mut merged = older;
        merged.n_failures += newer.n_failures;
        merged.first_at = match (merged.first_at, newer.first_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if newer.latest.is_some() {
            merged.latest = newer.latest;
        }
        for failed in newer.records {
            merged.list(failed);
        }
        merged.n_unlisted_failures += newer.n_unlisted_failures;
        merged
    }

    pub fn is_empty(&self) -> bool {
        self.n_failures == 0
    }
}

/// What one connection's contacts have been told and are still owed. This is
/// what the store keeps per connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// Failures not yet e-mailed.
    pub failures: Failures,
    /// Failures in the e-mail under way: owed again if it does not get out.
    pub sending: Option<Failures>,
    /// Whether the connection's latest attempt failed.
    pub failing: bool,
    /// The success that ended the latest run of failures.
    pub recovery: Option<AttemptNote>,
    /// Whether the last e-mail said the connection was failing.
    pub told_failing: bool,
    pub last_email_at: Option<i64>,
}

/// The content of one e-mail, taken from a digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub failures: Failures,
    pub failing: bool,
    pub recovery: Option<AttemptNote>,
    /// Whether the previous e-mail said the connection was failing.
    pub told_failing: bool,
    pub previous_email_at: Option<i64>,
}

impl Digest {
    pub fn failed(&mut self, note: AttemptNote) {
        self.failures.add(note);
        self.failing = true;
        self.recovery = None;
    }

    pub fn succeeded(&mut self, note: AttemptNote) {
        if self.failing {
            self.failing = false;
            self.recovery = Some(note);
        }
    }

    /// Whether there is something to e-mail: failures, or the recovery of a
    /// connection the contacts were told fails.
    pub fn owes(&self) -> bool {
        !self.failures.is_empty() || (self.told_failing && !self.failing)
    }

    /// When the next e-mail may go out, if one is owed: at once after a quiet
    /// period without e-mails, else when it ends.
    pub fn due_at(&self, quiet_period: Duration) -> Option<i64> {
        self.owes().then(|| {
            self.last_email_at
                .map_or(i64::MIN, |at| at.saturating_add(micros(quiet_period)))
        })
    }

    /// Whether the digest holds nothing worth keeping at `now`: nothing owed,
    /// nothing under way, nobody left believing it fails, and the quiet
    /// period of the last e-mail over.
    pub fn is_spent(&self, now: i64, quiet_period: Duration) -> bool {
        !self.owes()
            && self.sending.is_none()
            && !self.told_failing
            && self
                .last_email_at
                .is_none_or(|at| at.saturating_add(micros(quiet_period)) <= now)
    }

    /// Starts an e-mail: the failures it tells move to `sending`.
    pub fn begin(&mut self) -> Report {
        let failures = std::mem::take(&mut self.failures);
        self.sending = Some(failures.clone());
        Report {
            failures,
            failing: self.failing,
            recovery: self.recovery.clone(),
            told_failing: self.told_failing,
            previous_email_at: self.last_email_at,
        }
    }

    /// The e-mail of `report` went out at `at`.
    pub fn sent(&mut self, report: &Report, at: i64) {
        self.sending = None;
        self.told_failing = report.failing;
        self.last_email_at = Some(at);
    }

    /// The e-mail under way did not go out: its failures are owed again.
    pub fn unsent(&mut self) {
        if let Some(sending) = self.sending.take() {
            self.failures = Failures::merge(sending, std::mem::take(&mut self.failures));
        }
    }
}

/// A plain-text e-mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub subject: String,
    pub body: String,
}

/// Writes the e-mail of `report` about connection `connection` of project
/// space `domain`.
pub fn compose(domain: &str, connection: &str, report: &Report, quiet_period: Duration) -> Email {
    let failures = &report.failures;
    let subject_head = format!("[repeatd] project space \"{domain}\": connection \"{connection}\"");
    let subject = match (failures.n_failures, report.failing) {
        (0, _) => format!("{subject_head} has recovered"),
        (1, true) if !report.told_failing => format!("{subject_head} is failing"),
        (n, true) if !report.told_failing => {
            format!("{subject_head} is failing ({n} failed attempts)")
        }
        (n, true) => {
            format!("{subject_head} is still failing ({n} failed attempts since the last e-mail)")
        }
        (1, false) => format!("{subject_head} failed once, then recovered"),
        (n, false) => format!("{subject_head} failed {n} times, then recovered"),
    };

    let mut body = String::new();
    let mut line = |text: &str| {
        body.push_str(text);
        body.push('\n');
    };
    let since = report.previous_email_at.map_or_else(String::new, |at| {
        format!(" since the last e-mail ({})", format_utc(at))
    });
    match &failures.latest {
        None => {
            line(&format!(
                "Forwarding from project space \"{domain}\" to connection \"{connection}\" works again."
            ));
            line(&format!("There were no further failures{since}."));
        }
        Some(latest) => {
            if failures.n_failures == 1 {
                line(&format!(
                    "repeatd could not forward data from project space \"{domain}\" to connection \"{connection}\"."
                ));
            } else {
                line(&format!(
                    "repeatd could not forward data from project space \"{domain}\" to connection \"{connection}\": {} failed attempts{since}, from {} to {}. The latest:",
                    failures.n_failures,
                    format_utc(failures.first_at.unwrap_or(latest.at)),
                    format_utc(latest.at),
                ));
            }
            line("");
            line("Error (as the remote gave it):");
            for error_line in latest.error.lines() {
                line(&format!("    {error_line}"));
            }
            line("");
            attempt_block(&mut line, domain, connection, latest);
            if failures.n_failures > 1 {
                line("");
                if failures.n_unlisted_failures > 0 {
                    line(&format!(
                        "Records that failed (the first {}):",
                        failures.records.len()
                    ));
                } else {
                    line(&format!(
                        "Records that failed ({}):",
                        failures.records.len()
                    ));
                }
                for failed in &failures.records {
                    let times = if failed.n_failures == 1 {
                        "1 failed attempt".to_owned()
                    } else {
                        format!("{} failed attempts", failed.n_failures)
                    };
                    line(&format!(
                        "  - record {} ({} {}, repeater \"{}\"): {times}, the last at {}",
                        failed.record_id,
                        failed.payload_kind.word(),
                        failed.payload_id,
                        failed.repeater,
                        format_utc(failed.last_at),
                    ));
                }
                if failures.n_unlisted_failures > 0 {
                    line(&format!(
                        "  - and {} more failed attempts of other records",
                        failures.n_unlisted_failures
                    ));
                }
            }
        }
    }
    line("");
    match (&report.recovery, report.failing) {
        (Some(recovery), false) => {
            line(&format!(
                "Status: recovered. A send succeeded at {}:",
                format_utc(recovery.at)
            ));
            line(&format!(
                "record {} ({} {}, repeater \"{}\") to {}.",
                recovery.record_id,
                recovery.payload_kind.word(),
                recovery.payload_id,
                recovery.repeater,
                recovery.url
            ));
        }
        (None, false) => line("Status: recovered."),
        (_, true) => {
            let last = failures.latest.as_ref().map_or_else(String::new, |latest| {
                format!(" (the last failure at {})", format_utc(latest.at))
            });
            line(&format!("Status: still failing{last}."));
            line(&format!(
                "Failed records are tried again with growing waits until the remote accepts them or their attempts run out; they are listed at GET /api/v1/domains/{domain}/records?state=failed and can be resent from there."
            ));
        }
    }
    line("");
    line(&format!(
        "Why you get this: you are listed in notify of connection \"{connection}\" of project space \"{domain}\"."
    ));
    line(&format!(
        "How to stop: remove your address from the notify list of connection \"{connection}\", with the admin API (PUT /api/v1/domains/{domain}/connections/{connection}) or in its [[connections]] entry of the repeatd config file."
    ));
    line(&format!(
        "You get at most one e-mail about this connection every {}; the next one summarises what happened in between.",
        format_duration(quiet_period)
    ));
    Email { subject, body }
}

fn attempt_block(line: &mut impl FnMut(&str), domain: &str, connection: &str, note: &AttemptNote) {
    let id_label = match note.payload_kind {
        PayloadIdKind::Form => "Form id:",
        PayloadIdKind::Case => "Case id:",
        PayloadIdKind::App => "App id:",
    };
    line(&format!("Project space: {domain}"));
    line(&format!("Connection:    {connection}"));
    line(&format!("URL:           {}", note.url));
    line(&format!("{id_label:<15}{}", note.payload_id));
    line(&format!("Record id:     {}", note.record_id));
    line(&format!("Repeater:      {}", note.repeater));
    line(&format!("When:          {}", format_utc(note.at)));
}

/// Whether an outcome is a failure the contacts hear about: a server error,
/// an auth error, a timeout or a network failure (every retryable outcome,
/// and the remote refusing the credentials). Other rejections are about one
/// payload, not the connection.
pub fn is_reported_failure(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Retryable { .. } => true,
        Outcome::Rejected { status, .. } => matches!(status, Some(401 | 403)),
        Outcome::Success { .. } | Outcome::Empty => false,
    }
}

// ---- the notifier -------------------------------------------------------------

/// The scheduler's handle on error e-mails; does nothing without `[smtp]`.
#[derive(Clone, Default)]
pub struct Notifier {
    handle: Option<Arc<Handle>>,
    /// E-mails sent and failed, for `/metrics` (0 without `[smtp]`).
    counts: Arc<EmailCounts>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("enabled", &self.handle.is_some())
            .finish()
    }
}

struct Handle {
    events: mpsc::UnboundedSender<Event>,
    /// Connections with a digest: only their successes matter.
    watched: Arc<Mutex<HashSet<ConnectionKey>>>,
    store: Store,
    clock: Clock,
}

enum Event {
    Observed(Observation),
    /// Finish (up to the grace period), save, answer, end.
    Stop(Duration, oneshot::Sender<()>),
}

/// A committed attempt the e-mails may tell; queued between nodes as JSON.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Observation {
    Failed(ConnectionKey, AttemptNote),
    Succeeded(ConnectionKey, AttemptNote),
}

impl Notifier {
    /// A notifier that sends nothing (no `[smtp]` section).
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Loads the digests the store kept and starts the notifier task.
    pub async fn start(
        smtp: Option<&SmtpConfig>,
        store: Store,
        catalog: Arc<Catalog>,
        clock: Clock,
    ) -> anyhow::Result<Notifier> {
        let Some(smtp) = smtp else {
            tracing::info!("no [smtp] section: error e-mails are off");
            return Ok(Notifier::disabled());
        };
        let counts = Arc::new(EmailCounts::default());
        let mailer = Mailer::new(smtp, counts.clone())?;
        let clustered = store.is_clustered();
        // A node of a cluster loads the digests once it owns the e-mails.
        let (entries, dirty) = if clustered {
            (HashMap::new(), HashSet::new())
        } else {
            let stored = store
                .notifications::<Digest>()
                .await
                .context("reading pending error e-mails")?;
            load_digests(stored, &catalog.snapshot())
        };
        let watched = Arc::new(Mutex::new(entries.keys().cloned().collect::<HashSet<_>>()));
        let (events, received) = mpsc::unbounded_channel();
        let (tried_tx, tried) = mpsc::unbounded_channel();
        let worker = Worker {
            store: store.clone(),
            catalog,
            mailer: Arc::new(mailer),
            quiet_period: smtp.quiet_period,
            clock,
            entries,
            watched: watched.clone(),
            dirty,
            tried_tx,
            running: 0,
            clustered,
            owner: !clustered,
            next_poll: clock.instant(),
            outbox: Vec::new(),
            recent_failures: HashMap::new(),
        };
        tokio::spawn(worker.run(received, tried));
        Ok(Notifier {
            handle: Some(Arc::new(Handle {
                events,
                watched,
                store,
                clock,
            })),
            counts,
        })
    }

    /// The e-mails sent and failed so far.
    pub fn email_counts(&self) -> &EmailCounts {
        &self.counts
    }

    /// Reports one committed attempt of `record`, sent over `connection` of
    /// `domain` to `url`. Never waits.
    pub fn observe(
        &self,
        domain: &str,
        connection: &ConnectionSpec,
        record: &RepeatRecord,
        outcome: &Outcome,
        url: Option<&str>,
    ) {
        let Some(handle) = &self.handle else { return };
        if connection.notify.is_empty() {
            return;
        }
        let key = (domain.to_owned(), connection.name.clone());
        let failed = is_reported_failure(outcome);
        if !failed {
            let watched = handle.watched.lock().expect("watched lock").contains(&key);
            if !(watched && matches!(outcome, Outcome::Success { .. })) {
                return;
            }
        }
        let error = match outcome {
            Outcome::Retryable { error, .. } | Outcome::Rejected { error, .. } => error.clone(),
            Outcome::Success { .. } | Outcome::Empty => String::new(),
        };
        let note = AttemptNote {
            at: record
                .last_attempt_at
                .unwrap_or_else(|| handle.clock.now_micros()),
            repeater: record.repeater.clone(),
            record_id: handle.store.record_id(record.seq),
            payload_kind: PayloadIdKind::of(&record.payload),
            payload_id: record.payload.payload_id().to_owned(),
            url: url.map_or_else(|| redacted(&connection.url), str::to_owned),
            error,
        };
        let event = if failed {
            handle
                .watched
                .lock()
                .expect("watched lock")
                .insert(key.clone());
            Event::Observed(Observation::Failed(key, note))
        } else {
            Event::Observed(Observation::Succeeded(key, note))
        };
        // The task is gone only after shutdown; then there is nobody to tell.
        let _ = handle.events.send(event);
    }

    /// Lets e-mails under way finish (up to `grace`), saves what is still
    /// owed and stops the task.
    pub async fn shutdown(&self, grace: Duration) {
        let Some(handle) = &self.handle else { return };
        let (reply, stopped) = oneshot::channel();
        if handle.events.send(Event::Stop(grace, reply)).is_ok() {
            let _ = stopped.await;
        }
    }
}

/// The digests the store kept, ready to go on: an e-mail that was under way
/// is owed again. Also the connections whose stored digest is to be removed
/// (unreadable, or nobody left to tell).
fn load_digests(
    stored: Vec<crate::store::StoredNotification<Digest>>,
    snapshot: &Snapshot,
) -> (HashMap<ConnectionKey, Entry>, HashSet<ConnectionKey>) {
    let mut entries = HashMap::new();
    let mut dirty = HashSet::new();
    for (domain, connection, decoded) in stored {
        let key = (domain, connection);
        match decoded {
            Ok(mut digest) => {
                digest.unsent();
                if recipients(snapshot, &key).is_empty() {
                    dirty.insert(key);
                } else {
                    entries.insert(key, Entry { digest, job: None });
                }
            }
            Err(error) => {
                tracing::error!(%error, "dropping an unreadable pending error e-mail");
                dirty.insert(key);
            }
        }
    }
    let owed = entries.values().filter(|entry| entry.digest.owes()).count();
    if owed > 0 {
        tracing::info!(
            connections = owed,
            "error e-mails owed from before will be sent"
        );
    }
    (entries, dirty)
}

/// A URL without its password.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) => crate::delivery::redact_url(&parsed),
        Err(_) => "(not a valid URL)".to_owned(),
    }
}

/// The connection's current `notify` list, each address once.
fn recipients(snapshot: &Snapshot, key: &ConnectionKey) -> Vec<String> {
    let mut seen = HashSet::new();
    snapshot
        .domain(&key.0)
        .and_then(|domain| domain.connections.get(&key.1))
        .map(|connection| {
            connection
                .spec
                .notify
                .iter()
                .filter(|address| seen.insert(address.to_ascii_lowercase()))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The SMTP side.
struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The server's URL without credentials, for logs.
    url: String,
    counts: Arc<EmailCounts>,
}

impl Mailer {
    fn new(smtp: &SmtpConfig, counts: Arc<EmailCounts>) -> anyhow::Result<Mailer> {
        let from: Mailbox = smtp.from.parse().map_err(|error| {
            anyhow::anyhow!(
                "smtp.from: \"{}\" is not a usable sender: {error}",
                smtp.from
            )
        })?;
        let tls = |host: &str| {
            TlsParameters::new(host.to_owned())
                .map_err(|error| anyhow::anyhow!("smtp.url: cannot set up TLS for {host}: {error}"))
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
                .port(smtp.port)
                .timeout(Some(SMTP_TIMEOUT));
        builder = match smtp.tls {
            SmtpTls::None => builder.tls(Tls::None),
            SmtpTls::StartTls => builder.tls(Tls::Required(tls(&smtp.host)?)),
            SmtpTls::Implicit => builder.tls(Tls::Wrapper(tls(&smtp.host)?)),
        };
        if let Some(username) = &smtp.username {
            let password = smtp.password.as_ref().map_or("", |secret| secret.expose());
            builder = builder.credentials(Credentials::new(username.clone(), password.to_owned()));
        }
        Ok(Mailer {
            transport: builder.build(),
            from,
            url: smtp.url.clone(),
            counts,
        })
    }

    fn message(&self, email: &Email, to: Mailbox) -> Result<Message, String> {
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .message_id(None)
            // RFC 3834: no auto-replies to this.
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("Auto-Submitted"),
                "auto-generated".to_owned(),
            ))
            .header(ContentType::TEXT_PLAIN)
            .body(email.body.clone())
            .map_err(|error| error.to_string())
    }
}

/// One round of sending an e-mail to the recipients it has left.
struct Tried {
    key: ConnectionKey,
    delivered: Vec<String>,
    /// Recipients still to do, and why the last try failed.
    remaining: Vec<String>,
    transient_error: Option<String>,
}

async fn try_send(
    mailer: Arc<Mailer>,
    key: ConnectionKey,
    email: Email,
    recipients: Vec<String>,
) -> Tried {
    let mut tried = Tried {
        key,
        delivered: Vec::new(),
        remaining: Vec::new(),
        transient_error: None,
    };
    let mut pending = recipients.into_iter();
    for address in pending.by_ref() {
        let mailbox: Mailbox = match address.parse() {
            Ok(mailbox) => mailbox,
            Err(error) => {
                tracing::error!(address = %address, domain = %tried.key.0, connection = %tried.key.1, %error,
                    "skipping a notify address that is not an e-mail address");
                continue;
            }
        };
        let message = match mailer.message(&email, mailbox) {
            Ok(message) => message,
            Err(error) => {
                tracing::error!(address = %address, %error, "cannot build an error e-mail");
                continue;
            }
        };
        let sent = mailer.transport.send(message).await;
        let counter = if sent.is_ok() {
            &mailer.counts.sent
        } else {
            &mailer.counts.failed
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match sent {
            Ok(_) => tried.delivered.push(address),
            Err(error) if error.is_permanent() => {
                // The server's final word for this address (or sender):
                // trying again would get the same answer.
                tracing::error!(server = %mailer.url, address = %address, domain = %tried.key.0,
                    connection = %tried.key.1, %error, "the SMTP server refused an error e-mail; not trying again");
            }
            Err(error) => {
                tried.remaining.push(address);
                tried.transient_error = Some(error.to_string());
                if !error.is_response() {
                    // The server is unreachable or broke off: the others
                    // would fare no better now.
                    break;
                }
            }
        }
    }
    tried.remaining.extend(pending);
    tried
}

/// Takes the next e-mail out of `digest`, for the connection's current
/// recipients; `None` when it has none.
fn begin(
    key: &ConnectionKey,
    digest: &mut Digest,
    snapshot: &Snapshot,
    quiet_period: Duration,
) -> Option<Job> {
    let recipients = recipients(snapshot, key);
    if recipients.is_empty() {
        return None;
    }
    let report = digest.begin();
    let email = compose(&key.0, &key.1, &report, quiet_period);
    Some(Job {
        report,
        email,
        remaining: recipients,
        delivered_any: false,
        n_failed_tries: 0,
        retry_at: None,
    })
}

/// A connection's digest and the e-mail under way, if any.
struct Entry {
    digest: Digest,
    job: Option<Job>,
}

struct Job {
    report: Report,
    email: Email,
    remaining: Vec<String>,
    delivered_any: bool,
    n_failed_tries: u32,
    /// `None` while a try runs; else when to try again.
    retry_at: Option<i64>,
}

struct Worker {
    store: Store,
    catalog: Arc<Catalog>,
    mailer: Arc<Mailer>,
    quiet_period: Duration,
    clock: Clock,
    entries: HashMap<ConnectionKey, Entry>,
    watched: Arc<Mutex<HashSet<ConnectionKey>>>,
    /// Connections whose stored digest is out of date.
    dirty: HashSet<ConnectionKey>,
    tried_tx: mpsc::UnboundedSender<Tried>,
    /// Tries under way.
    running: usize,
    /// Whether other nodes share the store (and so the e-mails).
    clustered: bool,
    /// Whether this node keeps the digests and sends: always on redb; on a
    /// cluster while it holds `OWNER_LOCK` and has loaded the digests.
    owner: bool,
    /// When a node of a cluster next asks for the lock and takes queued
    /// observations.
    next_poll: tokio::time::Instant,
    /// Observations to queue for the owner (while this node is not it).
    outbox: Vec<Observation>,
    /// Connections this node saw fail while not the owner, and when.
    recent_failures: HashMap<ConnectionKey, tokio::time::Instant>,
}

impl Worker {
    async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut tried: mpsc::UnboundedReceiver<Tried>,
    ) {
        let mut stopping: Option<(tokio::time::Instant, oneshot::Sender<()>)> = None;
        loop {
            let clock = self.clock;
            if self.clustered && stopping.is_none() && clock.instant() >= self.next_poll {
                self.poll_cluster().await;
                self.next_poll = clock.instant() + CLUSTER_POLL;
            }
            let now = clock.now_micros();
            if stopping.is_none() {
                self.start_due(now);
            }
            self.forget_spent(now);
            let store_failed = !self.flush().await;
            if let Some((deadline, _)) = &stopping
                && (self.running == 0 || clock.instant() >= *deadline)
            {
                if self.running > 0 {
                    tracing::warn!(
                        under_way = self.running,
                        "error e-mails still under way at shutdown; they will be sent again after restart"
                    );
                }
                break;
            }
            let mut sleep = match &stopping {
                // Only the tries under way matter now.
                Some((deadline, _)) => deadline.saturating_duration_since(clock.instant()),
                None => self
                    .next_wake()
                    .map_or(LONGEST_SLEEP, |at| clock.until(at).min(LONGEST_SLEEP)),
            };
            if store_failed {
                sleep = sleep.min(STORE_RETRY_WAIT);
            }
            if self.clustered && stopping.is_none() {
                sleep = sleep.min(self.next_poll.saturating_duration_since(clock.instant()));
            }
            tokio::select! {
                event = events.recv() => match event {
                    Some(Event::Stop(grace, reply)) => {
                        stopping = Some((clock.instant() + grace, reply));
                    }
                    Some(Event::Observed(observation)) => {
                        self.apply(observation);
                        while let Ok(event) = events.try_recv() {
                            match event {
                                Event::Observed(observation) => self.apply(observation),
                                Event::Stop(grace, reply) => {
                                    stopping = Some((clock.instant() + grace, reply));
                                }
                            }
                        }
                    }
                    None => break,
                },
                Some(done) = tried.recv() => self.finish_try(done),
                _ = clock.sleep(sleep) => {}
            }
        }
        // Whatever came in meanwhile is kept for the next start.
        while let Ok(event) = events.try_recv() {
            match event {
                Event::Observed(observation) => self.apply(observation),
                Event::Stop(_, reply) => {
                    let _ = reply.send(());
                }
            }
        }
        if !self.flush().await {
            tracing::error!("could not save pending error e-mails at shutdown");
        }
        // Let go of the store before saying so: a restart in this process
        // must be able to open it again.
        drop(self);
        if let Some((_, reply)) = stopping {
            let _ = reply.send(());
        }
    }

    fn apply(&mut self, observation: Observation) {
        if !self.owner {
            if let Observation::Failed(key, _) = &observation {
                self.recent_failures
                    .insert(key.clone(), self.clock.instant());
                self.watched
                    .lock()
                    .expect("watched lock")
                    .insert(key.clone());
            }
            self.outbox.push(observation);
            return;
        }
        match observation {
            Observation::Failed(key, note) => {
                self.watched
                    .lock()
                    .expect("watched lock")
                    .insert(key.clone());
                let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
                    digest: Digest::default(),
                    job: None,
                });
                entry.digest.failed(note);
                self.dirty.insert(key);
            }
            Observation::Succeeded(key, note) => {
                if let Some(entry) = self.entries.get_mut(&key)
                    && entry.digest.failing
                {
                    entry.digest.succeeded(note);
                    self.dirty.insert(key);
                }
            }
        }
    }

    /// Starts the e-mails that are due, and the tries again that are.
    fn start_due(&mut self, now: i64) {
        let Worker {
            catalog,
            mailer,
            quiet_period,
            entries,
            dirty,
            tried_tx,
            running,
            ..
        } = self;
        let snapshot = catalog.snapshot();
        let mut gone = Vec::new();
        for (key, entry) in entries.iter_mut() {
            let retry_due = entry
                .job
                .as_ref()
                .is_some_and(|job| job.retry_at.is_some_and(|at| at <= now));
            match entry.job.as_mut() {
                Some(job) if retry_due && job.delivered_any => job.retry_at = None,
                Some(job) if retry_due => {
                    // Nobody has it yet: send what is owed by now instead.
                    let n_failed_tries = job.n_failed_tries;
                    entry.digest.unsent();
                    entry.job =
                        begin(key, &mut entry.digest, &snapshot, *quiet_period).map(|mut job| {
                            job.n_failed_tries = n_failed_tries;
                            job
                        });
                }
                Some(_) => continue,
                None if entry
                    .digest
                    .due_at(*quiet_period)
                    .is_some_and(|at| at <= now) =>
                {
                    entry.job = begin(key, &mut entry.digest, &snapshot, *quiet_period);
                }
                None => continue,
            }
            let Some(job) = &entry.job else {
                gone.push(key.clone());
                continue;
            };
            *running += 1;
            dirty.insert(key.clone());
            let mailer = mailer.clone();
            let key = key.clone();
            let email = job.email.clone();
            let recipients = job.remaining.clone();
            let tried_tx = tried_tx.clone();
            tokio::spawn(async move {
                let tried = try_send(mailer, key, email, recipients).await;
                let _ = tried_tx.send(tried);
            });
        }
        for key in gone {
            tracing::info!(domain = %key.0, connection = %key.1,
                "the connection is gone or has no notify addresses; dropping its pending error e-mail");
            self.entries.remove(&key);
            self.watched.lock().expect("watched lock").remove(&key);
            self.dirty.insert(key);
        }
    }

    fn finish_try(&mut self, tried: Tried) {
        self.running = self.running.saturating_sub(1);
        let Some(entry) = self.entries.get_mut(&tried.key) else {
            return;
        };
        let Some(job) = &mut entry.job else { return };
        let (domain, connection) = (&tried.key.0, &tried.key.1);
        if !tried.delivered.is_empty() {
            job.delivered_any = true;
            tracing::info!(%domain, %connection, to = ?tried.delivered, subject = %job.email.subject, "sent an error e-mail");
        }
        job.remaining = tried.remaining;
        if job.remaining.is_empty() {
            let report = job.report.clone();
            entry.job = None;
            entry.digest.sent(&report, self.clock.now_micros());
            self.dirty.insert(tried.key);
            return;
        }
        job.n_failed_tries += 1;
        let wait = FIRST_RETRY_WAIT
            .saturating_mul(1 << job.n_failed_tries.saturating_sub(1).min(16))
            .min(MAX_RETRY_WAIT);
        job.retry_at = Some(self.clock.after(wait));
        tracing::warn!(
            server = %self.mailer.url,
            %domain,
            %connection,
            error = tried.transient_error.as_deref().unwrap_or("unknown"),
            retry_in = %format_duration(wait),
            "could not send an error e-mail; trying again later"
        );
    }

    /// Drops digests that hold nothing worth keeping.
    fn forget_spent(&mut self, now: i64) {
        let quiet_period = self.quiet_period;
        let spent: Vec<ConnectionKey> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.job.is_none() && entry.digest.is_spent(now, quiet_period))
            .map(|(key, _)| key.clone())
            .collect();
        if spent.is_empty() {
            return;
        }
        let mut watched = self.watched.lock().expect("watched lock");
        for key in spent {
            self.entries.remove(&key);
            watched.remove(&key);
            self.dirty.insert(key);
        }
    }

    /// When something next becomes due.
    fn next_wake(&self) -> Option<i64> {
        self.entries
            .values()
            .filter_map(|entry| match &entry.job {
                Some(job) => job.retry_at,
                None => entry.digest.due_at(self.quiet_period).or_else(|| {
                    // A spent digest is forgotten when its quiet period ends.
                    entry
                        .digest
                        .last_email_at
                        .filter(|_| !entry.digest.told_failing)
                        .map(|at| at.saturating_add(micros(self.quiet_period)))
                }),
            })
            .min()
    }

    // ---- one owner for a cluster ------------------------------------------

    /// Asks whether this node owns the e-mails and acts on the answer: takes
    /// them over, takes what other nodes queued, or hands them back.
    async fn poll_cluster(&mut self) {
        let holds = match tokio::time::timeout(LOCK_TIMEOUT, self.store.hold_lock(OWNER_LOCK)).await
        {
            Ok(Ok(holds)) => holds,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot tell whether this node sends the error e-mails; it does not meanwhile");
                false
            }
            Err(_) => {
                tracing::warn!(
                    "no answer whether this node sends the error e-mails; it does not meanwhile"
                );
                false
            }
        };
        match (self.owner, holds) {
            (false, true) => self.take_ownership().await,
            (true, true) => self.take_queued().await,
            (true, false) => {
                self.give_up_ownership().await;
                self.refresh_watched().await;
            }
            (false, false) => self.refresh_watched().await,
        }
    }

    /// This node holds the lock: loads the digests the store kept, then
    /// applies what other nodes queued and what it had yet to queue itself.
    async fn take_ownership(&mut self) {
        let stored = match self.store.notifications::<Digest>().await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(%error, "could not read pending error e-mails; trying again");
                return;
            }
        };
        let (entries, dirty) = load_digests(stored, &self.catalog.snapshot());
        *self.watched.lock().expect("watched lock") = entries.keys().cloned().collect();
        self.entries = entries;
        self.dirty = dirty;
        self.owner = true;
        self.recent_failures.clear();
        tracing::info!("this node now sends the cluster's error e-mails");
        self.take_queued().await;
        // Not queued yet, so newer than what was.
        for observation in std::mem::take(&mut self.outbox) {
            self.apply(observation);
        }
    }

    /// Applies the observations other nodes queued.
    async fn take_queued(&mut self) {
        loop {
            let taken = match self
                .store
                .take_email_observations::<Observation>(TAKE_BATCH)
                .await
            {
                Ok(taken) => taken,
                Err(error) => {
                    tracing::error!(%error, "could not take the error-e-mail observations of other nodes; trying again");
                    return;
                }
            };
            let n_taken = taken.len();
            for observation in taken {
                match observation {
                    Ok(observation) => self.apply(observation),
                    Err(error) => {
                        tracing::error!(%error, "dropping an unreadable error-e-mail observation");
                    }
                }
            }
            if n_taken < TAKE_BATCH {
                return;
            }
        }
    }

    /// This node lost the lock (its connection broke; another node may hold
    /// it now): saves the digests and forgets them. An e-mail under way goes
    /// out all the same, and is sent again by the next owner.
    async fn give_up_ownership(&mut self) {
        tracing::warn!(
            "this node no longer holds the cluster's error e-mails; another node takes them over"
        );
        if !self.persist().await {
            tracing::error!("could not save pending error e-mails before handing them over");
        }
        self.entries.clear();
        self.dirty.clear();
        self.watched.lock().expect("watched lock").clear();
        self.owner = false;
    }

    /// While not the owner: the connections whose successes the owner must
    /// hear of are those with a stored digest, and those this node saw fail
    /// lately (the owner may not have stored their digest yet).
    async fn refresh_watched(&mut self) {
        let stored = match self.store.notifications::<serde::de::IgnoredAny>().await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, "could not read which connections have pending error e-mails");
                return;
            }
        };
        let now = self.clock.instant();
        self.recent_failures
            .retain(|_, at| now.saturating_duration_since(*at) < RECENT_FAILURE);
        let watched = stored
            .into_iter()
            .map(|(domain, connection, _)| (domain, connection))
            .chain(self.recent_failures.keys().cloned())
            .collect();
        *self.watched.lock().expect("watched lock") = watched;
    }

    /// Saves the digests that changed and queues the observations for the
    /// owner; false when the store refused either.
    async fn flush(&mut self) -> bool {
        let saved = self.persist().await;
        let queued = self.push_outbox().await;
        saved && queued
    }

    /// Queues the observations waiting for the owner; false when the store
    /// refused.
    async fn push_outbox(&mut self) -> bool {
        if self.outbox.is_empty() {
            return true;
        }
        match self.store.push_email_observations(&self.outbox).await {
            Ok(()) => {
                self.outbox.clear();
                true
            }
            Err(error) => {
                tracing::error!(%error, "could not hand error-e-mail observations to the node that sends the e-mails; trying again");
                false
            }
        }
    }

    /// Saves the digests that changed; false when the store refused.
    async fn persist(&mut self) -> bool {
        if self.dirty.is_empty() {
            return true;
        }
        let changes: Vec<(String, String, Option<Digest>)> = self
            .dirty
            .iter()
            .map(|key| {
                let digest = self.entries.get(key).map(|entry| entry.digest.clone());
                (key.0.clone(), key.1.clone(), digest)
            })
            .collect();
        match self.store.put_notifications(changes).await {
            Ok(()) => {
                self.dirty.clear();
                true
            }
            Err(error) => {
                tracing::error!(%error, "could not save pending error e-mails; trying again");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_secs(900);
    const SECOND: i64 = 1_000_000;

    fn note(record: &str, at: i64, error: &str) -> AttemptNote {
        AttemptNote {
            at,
            repeater: "forms".into(),
            record_id: record.into(),
            payload_kind: PayloadIdKind::Form,
            payload_id: format!("form-{record}"),
            url: "https://remote.example/in?app_id=a1".into(),
            error: error.into(),
        }
    }

    /// A digest whose first e-mail, about one failure at 1 s, was sent at 2 s.
    fn digest_after_one_email() -> Digest {
        let mut digest = Digest::default();
        digest.failed(note("a", SECOND, "timeout"));
        let first = digest.begin();
        digest.sent(&first, 2 * SECOND);
        digest
    }

    fn assert_body_has(email: &Email, text: &str) {
        assert!(
            email.body.contains(text),
            "missing {text:?} in:\n{}",
            email.body
        );
    }

    #[test]
    fn the_first_failure_is_due_at_once_and_the_next_after_the_quiet_period() {
        let mut digest = Digest::default();
        assert_eq!(digest.due_at(QUIET), None, "nothing happened, nothing owed");
        digest.failed(note("r1", 10 * SECOND, "remote answered 503"));
        assert_eq!(digest.due_at(QUIET), Some(i64::MIN));
        let report = digest.begin();
        assert_eq!(report.failures.n_failures, 1);
        assert!(!digest.owes());
        digest.sent(&report, 11 * SECOND);
        for n in 0..49 {
            digest.failed(note("r1", (12 + n) * SECOND, "remote answered 503"));
        }
        assert_eq!(digest.due_at(QUIET), Some(11 * SECOND + 900 * SECOND));
        let summary = digest.begin();
        assert_eq!(summary.failures.n_failures, 49);
        assert!(summary.failing && summary.told_failing);
    }

    #[test]
    fn an_email_that_did_not_go_out_is_owed_again_with_what_came_since() {
        let mut digest = Digest::default();
        digest.failed(note("r1", SECOND, "timeout"));
        let report = digest.begin();
        digest.failed(note("r2", 2 * SECOND, "connection refused"));
        assert_eq!(digest.sending.as_ref().map(|s| s.n_failures), Some(1));
        digest.unsent();
        assert_eq!(digest.sending, None);
        assert_eq!(digest.failures.n_failures, 2);
        assert_eq!(digest.failures.first_at, Some(SECOND));
        assert_eq!(digest.failures.latest.as_ref().unwrap().record_id, "r2");
        assert_eq!(digest.failures.records.len(), 2);
        assert_eq!(
            digest.due_at(QUIET),
            Some(i64::MIN),
            "never e-mailed, so due at once"
        );
        let _ = report;
    }

    #[test]
    fn recovery_is_owed_only_to_contacts_told_of_the_failure() {
        let mut digest = Digest::default();
        digest.failed(note("r1", SECOND, "remote answered 500"));
        digest.succeeded(note("r2", 2 * SECOND, ""));
        // Failed and recovered before any e-mail: one e-mail tells both.
        let report = digest.begin();
        assert!(!report.failing && report.recovery.is_some());
        digest.sent(&report, 3 * SECOND);
        assert!(!digest.owes(), "nobody believes it fails");

        digest.failed(note("r3", 4 * SECOND, "remote answered 500"));
        let report = digest.begin();
        digest.sent(&report, 5 * SECOND);
        assert!(!digest.owes());
        digest.succeeded(note("r4", 6 * SECOND, ""));
        assert!(digest.owes(), "they were told it fails");
        assert_eq!(digest.due_at(QUIET), Some(5 * SECOND + 900 * SECOND));
        let recovered = digest.begin();
        assert!(recovered.failures.is_empty());
        digest.sent(&recovered, 905 * SECOND);
        assert!(!digest.owes() && !digest.told_failing);
        assert!(
            !digest.is_spent(906 * SECOND, QUIET),
            "the quiet period still holds"
        );
        assert!(digest.is_spent(1_805 * SECOND, QUIET));
    }

    #[test]
    fn a_success_while_not_failing_changes_nothing() {
        let mut digest = Digest::default();
        digest.succeeded(note("r1", SECOND, ""));
        assert_eq!(digest, Digest::default());
    }

    #[test]
    fn records_are_listed_up_to_a_cap_and_the_rest_counted() {
        let mut failures = Failures::default();
        for n in 0..30 {
            failures.add(note(&format!("r{n}"), n, "x"));
        }
        failures.add(note("r0", 100, "x"));
        failures.add(note("r29", 101, "x"));
        assert_eq!(failures.n_failures, 32);
        assert_eq!(failures.records.len(), RECORDS_LISTED);
        assert_eq!(failures.records[0].n_failures, 2);
        assert_eq!(failures.records[0].last_at, 100);
        assert_eq!(failures.n_unlisted_failures, 11);
        let merged = Failures::merge(failures.clone(), failures.clone());
        assert_eq!(merged.n_failures, 64);
        assert_eq!(merged.records.len(), RECORDS_LISTED);
        assert_eq!(merged.records[0].n_failures, 4);
        assert_eq!(merged.n_unlisted_failures, 22);
    }

    #[test]
    fn the_first_email_has_every_required_line() {
        let mut digest = Digest::default();
        digest.failed(note(
            "0001",
            1_700_000_000 * SECOND,
            "remote answered 503: upstream down",
        ));
        let email = compose("demo", "receiver", &digest.begin(), QUIET);
        assert_eq!(
            email.subject,
            "[repeatd] project space \"demo\": connection \"receiver\" is failing"
        );
        for expected in [
            "    remote answered 503: upstream down",
            "Project space: demo",
            "Connection:    receiver",
            "URL:           https://remote.example/in?app_id=a1",
            "Form id:       form-0001",
            "Record id:     0001",
            "Repeater:      forms",
            "When:          2023-11-14T22:13:20.000000Z",
            "Status: still failing (the last failure at 2023-11-14T22:13:20.000000Z).",
            "Why you get this: you are listed in notify of connection \"receiver\" of project space \"demo\".",
            "How to stop: remove your address from the notify list of connection \"receiver\", with the admin API (PUT /api/v1/domains/demo/connections/receiver) or in its [[connections]] entry of the repeatd config file.",
            "You get at most one e-mail about this connection every 15m; the next one summarises what happened in between.",
        ] {
            assert!(
                email.body.lines().any(|line| line == expected),
                "missing {expected:?} in:\n{}",
                email.body
            );
        }
        assert!(
            !email.body.contains("Records that failed"),
            "{}",
            email.body
        );
    }

    #[test]
    fn a_summary_counts_the_failures_and_says_how_it_ended() {
        let mut digest = digest_after_one_email();
        digest.failed(note("a", 3 * SECOND, "timeout"));
        digest.failed(note("b", 4 * SECOND, "remote answered 502"));
        let still = compose("demo", "receiver", &digest.clone().begin(), QUIET);
        assert_eq!(
            still.subject,
            "[repeatd] project space \"demo\": connection \"receiver\" is still failing (2 failed attempts since the last e-mail)"
        );
        assert_body_has(
            &still,
            "2 failed attempts since the last e-mail (1970-01-01T00:00:02.000000Z)",
        );
        assert_body_has(
            &still,
            "  - record a (form form-a, repeater \"forms\"): 1 failed attempt",
        );
        assert_body_has(
            &still,
            "  - record b (form form-b, repeater \"forms\"): 1 failed attempt",
        );
        assert!(
            still.body.contains("    remote answered 502"),
            "the latest error is shown: {}",
            still.body
        );

        digest.succeeded(note("c", 5 * SECOND, ""));
        let recovered = compose("demo", "receiver", &digest.begin(), QUIET);
        assert_eq!(
            recovered.subject,
            "[repeatd] project space \"demo\": connection \"receiver\" failed 2 times, then recovered"
        );
        assert_body_has(
            &recovered,
            "Status: recovered. A send succeeded at 1970-01-01T00:00:05.000000Z:",
        );
    }

    #[test]
    fn a_recovery_alone_gets_a_short_email() {
        let mut digest = digest_after_one_email();
        digest.succeeded(note("b", 3 * SECOND, ""));
        let email = compose("demo", "receiver", &digest.begin(), QUIET);
        assert_eq!(
            email.subject,
            "[repeatd] project space \"demo\": connection \"receiver\" has recovered"
        );
        assert!(email.body.starts_with(
            "Forwarding from project space \"demo\" to connection \"receiver\" works again.\n"
        ));
        assert!(!email.body.contains("Error"), "{}", email.body);
    }

    #[test]
    fn only_server_auth_timeout_and_network_failures_are_reported() {
        let retryable = Outcome::Retryable {
            status: None,
            retry_after: None,
            error: "connection refused".into(),
        };
        assert!(is_reported_failure(&retryable));
        for status in [401, 403] {
            assert!(is_reported_failure(&Outcome::Rejected {
                status: Some(status),
                error: String::new()
            }));
        }
        for status in [Some(400), Some(404), Some(422), None] {
            assert!(!is_reported_failure(&Outcome::Rejected {
                status,
                error: String::new()
            }));
        }
        assert!(!is_reported_failure(&Outcome::Success { status: 200 }));
        assert!(!is_reported_failure(&Outcome::Empty));
    }
}
