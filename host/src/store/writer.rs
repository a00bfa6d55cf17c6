//! The group-commit writer: one thread that takes every job waiting, runs
//! them in one write transaction (its tables opened once for all of them,
//! `WriteTables`), commits it with `Durability::Immediate` and only then
//! answers each job. Only the store's own named operations hand it jobs
//! (`RedbStore::write`, `RedbStore::write_blocking` are private to `store`).
//! When a commit fails, `database` re-opens the file and the writer probes
//! it until a write succeeds (`recover`).

use std::sync::{Arc, Weak, mpsc};

use redb::{Database, Durability, ReadableTable};

use super::database::{PROBE_INTERVAL, SharedDatabase};
use super::tables::META;
use super::write_tables::WriteTables;
use super::{RedbStore, StoreError};

/// How many jobs one group commit takes at most.
const MAX_JOBS_PER_COMMIT: usize = 2_048;

type Completion = Box<dyn FnOnce(Result<(), Arc<String>>) + Send>;
/// A job returns its completion and whether it may have left partial writes
/// behind (a storage error part-way): then the whole batch is abandoned.
pub(super) type Job = Box<dyn FnOnce(&mut WriteTables<'_>) -> (Completion, bool) + Send>;

/// Starts the writer thread for `db`. It holds the database only weakly: the
/// file must close when the last `RedbStore` is dropped, not whenever the
/// thread gets round to exiting (a restart in the same process opens it again
/// at once). It ends when every sender is gone.
pub(super) fn start(db: &Arc<SharedDatabase>) -> Result<mpsc::Sender<Job>, StoreError> {
    let (writer, jobs) = mpsc::channel::<Job>();
    let writer_db = Arc::downgrade(db);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(&writer_db, &jobs))
        .map_err(|error| StoreError::Storage(format!("starting the writer thread: {error}")))?;
    Ok(writer)
}

impl RedbStore {
    /// Runs `job` inside the next group commit and returns its result once
    /// that commit is durable. A job that returns `Err` must not have written.
    pub(super) async fn write<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteTables<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.enqueue(job, move |result| {
            let _ = reply.send(result);
        })?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Like `write`, for threads outside the async runtime.
    pub(super) fn write_blocking<R, F>(&self, job: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteTables<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        self.enqueue(job, move |result| {
            let _ = reply.send(result);
        })?;
        answer.recv().map_err(|_| StoreError::WriterGone)?
    }

    fn enqueue<R, F>(
        &self,
        job: F,
        reply: impl FnOnce(Result<R, StoreError>) + Send + 'static,
    ) -> Result<(), StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut WriteTables<'_>) -> Result<R, StoreError> + Send + 'static,
    {
        let boxed: Job = Box::new(move |tables| {
            let result = job(tables);
            // Logical refusals (no such record) are returned before any write;
            // a storage or decoding error may strike after some.
            let poisoned = matches!(
                result,
                Err(StoreError::Storage(_) | StoreError::Corrupt { .. })
            );
            let completion: Completion = Box::new(move |commit: Result<(), Arc<String>>| {
                let result = match (result, commit) {
                    (Ok(value), Ok(())) => Ok(value),
                    (Err(error), _) => Err(error),
                    (Ok(_), Err(commit_error)) => {
                        Err(StoreError::Storage(commit_error.to_string()))
                    }
                };
                reply(result);
            });
            (completion, poisoned)
        });
        self.writer.send(boxed).map_err(|_| StoreError::WriterGone)
    }
}

/// The writer thread: takes every job that is waiting, runs them in one
/// transaction, commits durably, then answers each.
fn run(shared: &Weak<SharedDatabase>, jobs: &mpsc::Receiver<Job>) {
    while let Some(first) = next_job(shared, jobs) {
        // Whoever sent a job holds a `RedbStore` until it is answered.
        let Some(shared) = shared.upgrade() else {
            break;
        };
        if shared.is_closed() {
            shared.reopen();
        }
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        let committed = shared.with_database(|db| commit_group(db, batch, &mut completions));
        let committed = after_commit(&shared, committed);
        drop(shared);
        // Jobs that never ran (the transaction could not begin) are dropped:
        // their callers see `WriterGone`.
        for done in completions {
            done(committed.clone());
        }
    }
}

/// The next job: waits for one; while the store cannot write, tries a probe
/// write every `PROBE_INTERVAL` meanwhile. `None` when every sender is gone.
fn next_job(shared: &Weak<SharedDatabase>, jobs: &mpsc::Receiver<Job>) -> Option<Job> {
    loop {
        let failing = shared.upgrade()?.is_failing();
        if !failing {
            return jobs.recv().ok();
        }
        match jobs.recv_timeout(PROBE_INTERVAL) {
            Ok(job) => return Some(job),
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let shared = shared.upgrade()?;
                recover(&shared);
            }
        }
    }
}

/// One try at writing again: opens the file if it is closed, then commits a
/// small durable write.
fn recover(shared: &SharedDatabase) {
    if shared.is_closed() {
        shared.reopen();
    }
    let probed = shared.with_database(|db| {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut meta = txn.open_table(META)?;
            let n = meta.get("write_probes")?.map_or(0, |v| v.value());
            meta.insert("write_probes", n + 1)?;
        }
        txn.commit()?;
        Ok(())
    });
    let _ = after_commit(shared, probed);
}

/// Notes what a commit did to the store's ability to write; the result for
/// the jobs. A failed commit (whatever failed: beginning, a job's storage
/// error, the commit itself) re-opens the file, logged once by `database`.
fn after_commit(
    shared: &SharedDatabase,
    committed: Result<(), StoreError>,
) -> Result<(), Arc<String>> {
    match committed {
        Ok(()) => {
            shared.write_succeeded();
            Ok(())
        }
        Err(error) => {
            let reason = error.to_string();
            if !shared.is_failing() {
                tracing::debug!(%error, "group commit failed; its jobs are refused");
            }
            shared.write_failed(&reason);
            Err(Arc::new(reason))
        }
    }
}

/// Runs `batch` in one durable transaction, collecting each job's completion.
fn commit_group(
    db: &Database,
    batch: Vec<Job>,
    completions: &mut Vec<Completion>,
) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut tables = WriteTables::open(&txn)?;
    let mut poisoned = false;
    for job in batch {
        let (completion, job_poisoned) = job(&mut tables);
        completions.push(completion);
        poisoned |= job_poisoned;
    }
    if poisoned {
        // Dropping the transaction discards every write of the batch, so a
        // half-applied job never becomes durable.
        drop(tables);
        txn.abort()?;
        return Err(StoreError::Storage(
            "a job of this group commit failed part-way; the whole group was rolled back".into(),
        ));
    }
    tables.finish()?;
    txn.commit()?;
    Ok(())
}
