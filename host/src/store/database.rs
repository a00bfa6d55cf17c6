//! The open redb database, shared by the readers and the writer thread, and
//! what happens when writing fails.
//!
//! After one I/O error (a full disk, a quota, a failing device) redb answers
//! every later operation with "Previous I/O error occurred. Please close and
//! re-open the database". So when a group commit fails, the writer marks the
//! store as unable to write (logged once, with the reason; `write_failure`
//! tells ingest to answer 503, delivery to wait and `/healthz` to say why),
//! closes the database (readers take it only for the instant of
//! `begin_read`, so nothing else holds it) and opens the file again: redb's
//! recovery brings back the last durable commit, so nothing answered before
//! is lost and the file is readable again. While the store cannot write,
//! the writer tries a small write every `PROBE_INTERVAL`; the first write
//! that succeeds (the probe or any job) makes it writable again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use redb::{Database, ReadTransaction, ReadableDatabase};

use super::{CACHE_BYTES, StoreError};
use crate::clock::Clock;

/// How often a store that cannot write tries again.
pub(super) const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Why the store cannot write now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFailure {
    /// The storage error of the last write that failed.
    pub reason: String,
}

/// How long after saying the store cannot write the log stays quiet about
/// it: a disk that is nearly full may take a small write and refuse the
/// next, and that is one story, not one line per flip.
const LOG_QUIET: Duration = Duration::from_secs(60);

pub(super) struct SharedDatabase {
    /// `None` while the file could not be opened again.
    database: RwLock<Option<Database>>,
    /// Where to open it again; `None` for a test backend, which is kept.
    path: Option<PathBuf>,
    failing: AtomicBool,
    failure: Mutex<Failure>,
}

#[derive(Default)]
struct Failure {
    now: Option<WriteFailure>,
    /// When the log last said the store cannot write.
    logged_at: Option<tokio::time::Instant>,
    /// Whether the log owes a "writes again".
    recovery_owed: bool,
}

impl SharedDatabase {
    pub(super) fn new(database: Database, path: Option<PathBuf>) -> SharedDatabase {
        SharedDatabase {
            database: RwLock::new(Some(database)),
            path,
            failing: AtomicBool::new(false),
            failure: Mutex::new(Failure::default()),
        }
    }

    pub(super) fn begin_read(&self) -> Result<ReadTransaction, StoreError> {
        let database = self.database.read().expect("database lock");
        match database.as_ref() {
            Some(database) => Ok(database.begin_read()?),
            None => Err(self.unavailable()),
        }
    }

    /// Runs `write` on the database (the writer thread only).
    pub(super) fn with_database<R>(
        &self,
        write: impl FnOnce(&Database) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let database = self.database.read().expect("database lock");
        match database.as_ref() {
            Some(database) => write(database),
            None => Err(self.unavailable()),
        }
    }

    fn unavailable(&self) -> StoreError {
        let reason = self
            .write_failure()
            .map_or_else(|| "it is being re-opened".to_owned(), |f| f.reason);
        StoreError::Storage(format!("the store cannot be read or written: {reason}"))
    }

    pub(super) fn write_failure(&self) -> Option<WriteFailure> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.failure.lock().expect("failure lock").now.clone()
    }

    pub(super) fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    /// A write failed with `reason`: says so (once, until writing works
    /// again) and opens the file again.
    pub(super) fn write_failed(&self, reason: &str) {
        let mut failure = self.failure.lock().expect("failure lock");
        let now = Clock::system().instant();
        let quiet = failure
            .logged_at
            .is_some_and(|logged| now.duration_since(logged) < LOG_QUIET);
        if failure.now.is_none() && !quiet {
            tracing::error!(
                reason,
                "the store cannot write: submissions are refused with 503 and delivery waits until a write succeeds"
            );
            failure.logged_at = Some(now);
            failure.recovery_owed = true;
        }
        failure.now = Some(WriteFailure {
            reason: reason.to_owned(),
        });
        self.failing.store(true, Ordering::Release);
        drop(failure);
        self.reopen();
    }

    /// A write succeeded.
    pub(super) fn write_succeeded(&self) {
        if !self.failing.load(Ordering::Acquire) {
            return;
        }
        let mut failure = self.failure.lock().expect("failure lock");
        failure.now = None;
        if std::mem::take(&mut failure.recovery_owed) {
            tracing::info!("the store writes again: submissions and delivery resume");
        }
        self.failing.store(false, Ordering::Release);
    }

    /// Closes the database and opens its file again (or, when it is closed
    /// already, tries to open it). A file that cannot be opened now stays
    /// closed until the next try.
    pub(super) fn reopen(&self) {
        let Some(path) = &self.path else {
            return;
        };
        // Every handle goes before the file is opened again: redb refuses a
        // second open of the same file. The lock is held only to take the
        // database out and to put the new one in, so a reader meanwhile is
        // answered at once (the store is unavailable) instead of waiting for
        // redb's recovery of the file.
        let old = self.database.write().expect("database lock").take();
        if let Some(old) = old
            && let Err(error) = old.close()
        {
            tracing::debug!(%error, "closing the store after a failed write");
        }
        match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
            Ok(opened) => *self.database.write().expect("database lock") = Some(opened),
            Err(error) => {
                tracing::debug!(%error, path = %path.display(), "the store could not be opened again yet");
            }
        }
    }

    /// Whether the file is closed (it could not be opened again yet).
    pub(super) fn is_closed(&self) -> bool {
        self.database.read().expect("database lock").is_none()
    }
}
