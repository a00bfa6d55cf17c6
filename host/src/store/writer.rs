//! The group-commit writer: one thread that takes every job waiting, runs
//! them in one write transaction (its tables opened once for all of them,
//! `WriteTables`), commits it with `Durability::Immediate` and only then
//! answers each job. Only the store's own named operations hand it
//! jobs (`Store::write`, `Store::write_blocking` are private to `store`).

use std::sync::{Arc, Weak, mpsc};

use redb::{Database, Durability};

use super::write_tables::WriteTables;
use super::{Store, StoreError};

/// How many jobs one group commit takes at most.
const MAX_JOBS_PER_COMMIT: usize = 2_048;

type Completion = Box<dyn FnOnce(Result<(), Arc<String>>) + Send>;
/// A job returns its completion and whether it may have left partial writes
/// behind (a storage error part-way): then the whole batch is abandoned.
pub(super) type Job = Box<dyn FnOnce(&mut WriteTables<'_>) -> (Completion, bool) + Send>;

/// Starts the writer thread for `db`. It holds the database only weakly: the
/// file must close when the last `Store` is dropped, not whenever the thread
/// gets round to exiting (a restart in the same process opens it again at
/// once). It ends when every sender is gone.
pub(super) fn start(db: &Arc<Database>) -> Result<mpsc::Sender<Job>, StoreError> {
    let (writer, jobs) = mpsc::channel::<Job>();
    let writer_db = Arc::downgrade(db);
    std::thread::Builder::new()
        .name("store-writer".into())
        .spawn(move || run(&writer_db, &jobs))
        .map_err(|error| StoreError::Storage(format!("starting the writer thread: {error}")))?;
    Ok(writer)
}

impl Store {
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
fn run(db: &Weak<Database>, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        // Whoever sent a job holds a `Store` until it is answered.
        let Some(db) = db.upgrade() else { break };
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut completions: Vec<Completion> = Vec::with_capacity(batch.len());
        let committed = commit_group(&db, batch, &mut completions).map_err(|error| {
            tracing::error!(%error, "group commit failed; its jobs are refused");
            Arc::new(error.to_string())
        });
        drop(db);
        // Jobs that never ran (the transaction could not begin) are dropped:
        // their callers see `WriterGone`.
        for done in completions {
            done(committed.clone());
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
