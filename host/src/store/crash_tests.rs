//! Crash consistency, in the manner of redb's `tests/crash_consistency.rs`:
//! the store runs on a storage backend that loses power, or starts failing,
//! after its N-th write, for every N the workload reaches. The file left
//! behind is opened again and must hold each operation wholly or not at all
//! (a form with its case changes, records, state counts, state index and
//! due index; an attempt with its record's new state; a later part's
//! attachments), must hold every operation that was answered before the cut,
//! and must take new submissions.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use redb::backends::InMemoryBackend;
use redb::{ReadableTableMetadata, StorageBackend};

use super::state_index_tests::assert_state_index_agrees;
use super::tests::{answered_200, attempt_result, submission};
use super::*;

/// How the simulated disk stops after `cut_after` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The power goes: the process carries on, the disk keeps nothing more.
    PowerLoss,
    /// Every write, resize and sync from then on reports an I/O error.
    IoError,
}

#[derive(Debug, Default)]
struct DiskState {
    /// What the running process reads back: every write.
    live: Vec<u8>,
    /// What reached the disk, in order, before the cut.
    written: Vec<u8>,
    /// What the last sync before the cut made durable.
    synced: Vec<u8>,
    writes: u64,
    cut: Option<(u64, Cut)>,
}

impl DiskState {
    fn is_cut(&self) -> bool {
        self.cut.is_some_and(|(after, _)| self.writes >= after)
    }

    fn io_error(&self) -> bool {
        self.is_cut() && self.cut.is_some_and(|(_, how)| how == Cut::IoError)
    }
}

#[derive(Debug, Clone, Default)]
struct CrashBackend {
    state: Arc<Mutex<DiskState>>,
}

fn failed() -> std::io::Error {
    std::io::Error::other("simulated disk failure")
}

impl CrashBackend {
    fn cut_after(writes: u64, how: Cut) -> CrashBackend {
        let backend = CrashBackend::default();
        backend.disk().cut = Some((writes, how));
        backend
    }

    fn disk(&self) -> std::sync::MutexGuard<'_, DiskState> {
        self.state.lock().expect("disk lock")
    }

    fn writes(&self) -> u64 {
        self.disk().writes
    }

    /// The two files a crash may leave: everything written before the cut,
    /// and only what was synced before it.
    fn images(&self) -> [Vec<u8>; 2] {
        let disk = self.disk();
        [disk.written.clone(), disk.synced.clone()]
    }
}

impl StorageBackend for CrashBackend {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.disk().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let disk = self.disk();
        let start = usize::try_from(offset).expect("offset fits");
        let bytes = disk
            .live
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut disk = self.disk();
        if disk.io_error() {
            return Err(failed());
        }
        let len = usize::try_from(len).expect("length fits");
        disk.live.resize(len, 0);
        if !disk.is_cut() {
            disk.written.resize(len, 0);
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut disk = self.disk();
        if disk.io_error() {
            return Err(failed());
        }
        if !disk.is_cut() {
            disk.synced = disk.written.clone();
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut disk = self.disk();
        if disk.io_error() {
            return Err(failed());
        }
        let start = usize::try_from(offset).expect("offset fits");
        let end = start + data.len();
        if disk.live.len() < end {
            disk.live.resize(end, 0);
        }
        disk.live[start..end].copy_from_slice(data);
        if !disk.is_cut() {
            if disk.written.len() < end {
                disk.written.resize(end, 0);
            }
            disk.written[start..end].copy_from_slice(data);
        }
        disk.writes += 1;
        Ok(())
    }
}

/// What the workload got done, as write counts: an operation whose count is
/// at most the cut was answered before the disk stopped.
#[derive(Debug, Default)]
struct Answered {
    /// The store opened and made its tables.
    opened: Option<u64>,
    /// Form f1 (case c1, two records).
    first: Option<u64>,
    /// Form f2: creates c2, updates c1.
    second: Option<u64>,
    /// A successful attempt on f1's form record.
    attempt: Option<u64>,
    /// A later part of f1 (it awaited parts) adds an attachment.
    later_part: Option<u64>,
}

/// Runs the workload until it ends or an operation fails; returns what it
/// got done. Operations may fail (the disk did); they must not panic.
async fn workload(backend: &CrashBackend) -> Answered {
    let mut answered = Answered::default();
    let Ok(store) = RedbStore::open_on(backend.clone(), "crash") else {
        return answered;
    };
    answered.opened = Some(backend.writes());
    let mut first = submission("f1", "c1", "new");
    first.form.awaiting_parts = true;
    if store.commit_submission(first).await.is_err() {
        return answered;
    }
    answered.first = Some(backend.writes());
    let second = Submission {
        case_blocks: vec![
            crate::submission::tests::create_block("c2", "patient"),
            crate::submission::tests::update_block("c1", "status", "seen"),
        ],
        ..submission("f2", "c2", "unused")
    };
    if store.commit_submission(second).await.is_err() {
        return answered;
    }
    answered.second = Some(backend.writes());
    let due = store.due_records(1, i64::MAX, 1, &HashSet::new());
    let Some(seq) = due.ok().and_then(|seqs| seqs.first().copied()) else {
        return answered;
    };
    let Ok(Some(record)) = store.record(seq) else {
        return answered;
    };
    let attempt = answered_200(record.registered_at + 1);
    let result = attempt_result(seq, Outcome::Success { status: 200 }, Some(&attempt));
    if store.commit_attempt(result).await.is_err() {
        return answered;
    }
    answered.attempt = Some(backend.writes());
    let mut later_part = submission("f1", "c1", "unused");
    later_part.form.attachments = vec![photo()];
    if store.commit_submission(later_part).await.is_ok() {
        answered.later_part = Some(backend.writes());
    }
    answered
}

/// The attachment f1's later part brings.
fn photo() -> crate::model::Attachment {
    crate::model::Attachment {
        name: "photo.jpg".into(),
        content_type: "image/jpeg".into(),
        size: 2_048,
    }
}

/// Whether `answered_at` happened before a cut right after the `cut`-th
/// write: an operation's last step is a sync after its last write, so one
/// answered after exactly `cut` writes was answered after the cut.
fn before_cut(answered_at: Option<u64>, cut: u64) -> bool {
    answered_at.is_some_and(|writes| writes < cut)
}

/// Every record's due entry and state count agree with the record, and every
/// record's payload is stored.
fn assert_indexes_agree(store: &RedbStore, context: &str) {
    let txn = store.db.begin_read().unwrap();
    let records = txn.open_table(RECORDS).unwrap();
    let mut expected_due = HashSet::new();
    let mut expected_counts: BTreeMap<(u64, RecordState), u64> = BTreeMap::new();
    let mut expected_finals = HashSet::new();
    let mut expected_domain_counts: BTreeMap<RecordState, u64> = RecordState::ALL
        .into_iter()
        .map(|state| (state, 0))
        .collect();
    for entry in records.iter().unwrap() {
        let (key, value) = entry.unwrap();
        let record = decode_record(key.value(), value.value()).unwrap();
        if !record.state.is_queued() {
            expected_finals.insert((record.state.as_str().to_owned(), record.seq));
        }
        *expected_domain_counts.entry(record.state).or_default() += 1;
        if let Some(at) = record.next_attempt_at {
            expected_due.insert((record.repeater_id, at as u64, record.seq));
        }
        *expected_counts
            .entry((record.repeater_id, record.state))
            .or_default() += 1;
        let source = store.load_for_send(record.seq).unwrap();
        assert!(
            !matches!(source, Some((_, SendSource::Missing(_)))),
            "{context}: record {} has no payload",
            record.seq
        );
    }
    let due: HashSet<(u64, u64, u64)> = txn
        .open_table(DUE)
        .unwrap()
        .iter()
        .unwrap()
        .map(|entry| entry.unwrap().0.value())
        .collect();
    assert_eq!(due, expected_due, "{context}: the due index");
    let mut counts = store.state_counts().unwrap();
    counts.retain(|_, n| *n > 0);
    assert_eq!(counts, expected_counts, "{context}: the state counts");
    let finals: HashSet<(String, u64)> = txn
        .open_table(FINAL_RECORDS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|entry| {
            let (key, _) = entry.unwrap();
            let (state, _, seq) = key.value();
            (state.to_owned(), seq)
        })
        .collect();
    assert_eq!(finals, expected_finals, "{context}: retention's index");
    let n_since = txn.open_table(FINAL_SINCE).unwrap().len().unwrap();
    assert_eq!(
        n_since,
        expected_finals.len() as u64,
        "{context}: final_since"
    );
    assert_eq!(
        store.domain_stats("demo").unwrap().records,
        expected_domain_counts,
        "{context}: the domain's counts"
    );
    assert_state_index_agrees(store, context);
}

/// What of the workload a reopened store holds, checked to be whole.
#[derive(Debug, PartialEq, Eq)]
struct Found {
    first: bool,
    second: bool,
    attempt: bool,
    later_part: bool,
}

fn found(store: &RedbStore, context: &str) -> Found {
    let records = store
        .list_records("demo", &RecordFilter::default(), 100, None)
        .unwrap()
        .records;
    let records_of = |payload: &str| {
        records
            .iter()
            .filter(|r| r.payload.payload_id() == payload)
            .count()
    };
    let first = store.form("demo", "f1").unwrap().is_some();
    assert_eq!(
        [
            store.form_xml("demo", "f1").unwrap().is_some(),
            store.case("demo", "c1").unwrap().is_some(),
            records_of("f1") == 1,
            records_of("c1") >= 1,
        ],
        [first; 4],
        "{context}: form f1 is there wholly or not at all"
    );
    let second = store.form("demo", "f2").unwrap().is_some();
    let c1_seen = store
        .case("demo", "c1")
        .unwrap()
        .is_some_and(|case| case.xform_ids.contains(&"f2".to_owned()));
    assert_eq!(
        [
            store.form_xml("demo", "f2").unwrap().is_some(),
            store.case("demo", "c2").unwrap().is_some(),
            c1_seen,
            records_of("f2") == 1,
            records_of("c2") == 1,
            records_of("c1") == 2,
        ],
        [second; 6],
        "{context}: form f2 is there wholly or not at all"
    );
    let form_record = records.iter().find(|r| r.payload.payload_id() == "f1");
    let attempt = form_record.is_some_and(|r| r.state == RecordState::Succeeded);
    let attempts = form_record.map_or(0, |r| store.attempts(r.seq).unwrap().len());
    assert_eq!(
        attempts,
        usize::from(attempt),
        "{context}: an attempt is there with its outcome or not at all"
    );
    let f1 = store.form("demo", "f1").unwrap();
    let later_part = f1
        .as_ref()
        .is_some_and(|form| form.attachments == [photo()]);
    assert!(
        f1.is_none_or(|form| form.awaiting_parts != later_part && form.n_duplicates == 0),
        "{context}: f1 awaits its part or has it, never half"
    );
    assert_indexes_agree(store, context);
    Found {
        first,
        second,
        attempt,
        later_part,
    }
}

/// Opens `image` as the file a crash left and checks it.
async fn check_image(image: &[u8], cut: u64, answered: &Answered, context: &str) {
    let backend = InMemoryBackend::new();
    backend.set_len(image.len() as u64).unwrap();
    backend.write(0, image).unwrap();
    let store = match RedbStore::open_on(backend, "recovered") {
        Ok(store) => store,
        // Nothing of the store's first transaction reached the disk.
        Err(_) if !before_cut(answered.opened, cut) => return,
        Err(error) => panic!("{context}: the store does not open again: {error}"),
    };
    let held = found(&store, context);
    assert!(
        held.first || !held.second,
        "{context}: f2 without f1 before it"
    );
    for (what, answered_at, is_held) in [
        ("f1", answered.first, held.first),
        ("f2", answered.second, held.second),
        ("the attempt", answered.attempt, held.attempt),
        ("f1's later part", answered.later_part, held.later_part),
    ] {
        if before_cut(answered_at, cut) {
            assert!(is_held, "{context}: {what} was answered but is lost");
        }
    }
    // The recovered store takes new work, under fresh record numbers.
    let before = store
        .list_records("demo", &RecordFilter::default(), 100, None)
        .unwrap()
        .records
        .len();
    store
        .commit_submission(submission("f3", "c3", "new"))
        .await
        .unwrap_or_else(|error| panic!("{context}: no new submission: {error}"));
    let after = store
        .list_records("demo", &RecordFilter::default(), 100, None)
        .unwrap()
        .records
        .len();
    assert_eq!(after, before + 2, "{context}: f3's records are new ones");
    assert_indexes_agree(&store, context);
}

async fn crash_at_every_write(how: Cut) {
    let probe = CrashBackend::default();
    let complete = workload(&probe).await;
    let total = complete.later_part.expect("the workload runs to the end");
    // Two cuts past the end: the last operation's sync, then nothing lost.
    for cut in 0..=total + 2 {
        let backend = CrashBackend::cut_after(cut, how);
        let answered = workload(&backend).await;
        if how == Cut::IoError && cut <= total {
            assert!(
                answered.later_part.is_none(),
                "cut after {cut} writes: a failing disk is reported"
            );
        }
        let [written, synced] = backend.images();
        let context = format!("{how:?} after {cut} of {total} writes");
        check_image(&written, cut, &answered, &format!("{context}, written")).await;
        check_image(&synced, cut, &answered, &format!("{context}, synced")).await;
    }
}

#[tokio::test]
async fn a_power_loss_at_any_write_leaves_whole_operations() {
    crash_at_every_write(Cut::PowerLoss).await;
}

#[tokio::test]
async fn a_failing_disk_at_any_write_leaves_whole_operations() {
    crash_at_every_write(Cut::IoError).await;
}
