//! The store's own tests: each named operation persists what it was given and
//! keeps the indexes (due index, state counts, listings) in step, on an
//! in-memory backend or a file in the system's temporary directory.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redb::backends::InMemoryBackend;

use super::*;
use crate::repeater::PayloadKind;
use crate::submission::tests::{create_block, form, repeater, update_block};

pub(super) fn memory_store() -> RedbStore {
    RedbStore::open_on(InMemoryBackend::new(), "memory").expect("an in-memory store opens")
}

/// The repeaters every test submits to: forms (id 1) and cases (id 2).
pub(super) fn repeaters() -> Arc<Vec<RepeaterRef>> {
    Arc::new(vec![
        repeater(1, "forms", PayloadKind::Form),
        repeater(2, "cases", PayloadKind::Case),
    ])
}

/// A form `form_id` that creates `case_id` and sets its `status`.
pub(super) fn submission(form_id: &str, case_id: &str, status: &str) -> Submission {
    Submission {
        form: form(form_id),
        xml: format!("<data id=\"{form_id}\"/>").into_bytes(),
        case_blocks: vec![
            create_block(case_id, "patient"),
            update_block(case_id, "status", status),
        ],
        repeaters: repeaters(),
    }
}

/// A store holding forms f1, f2, … (each creating case c1, c2, …).
async fn store_with_forms(n: usize) -> RedbStore {
    let store = memory_store();
    for n in 1..=n {
        let form = submission(&format!("f{n}"), &format!("c{n}"), "new");
        store.commit_submission(form).await.unwrap();
    }
    store
}

fn first_form_record(store: &RedbStore) -> RepeatRecord {
    let records = all_records(store);
    // Newest first: the last one is f1's.
    let mut form_records = records.into_iter().filter(|r| r.repeater_id == 1);
    form_records.next_back().expect("a form record")
}

/// An attempt at `at` that the remote answered 200.
pub(super) fn answered_200(at: i64) -> Attempt {
    Attempt {
        number: 0,
        at,
        duration_ms: 12,
        url: "http://remote.example/in".into(),
        status: Some(200),
        response: Some("thanks".into()),
        error: None,
    }
}

pub(super) fn attempt_result(
    seq: u64,
    outcome: Outcome,
    attempt: Option<&Attempt>,
) -> AttemptResult {
    AttemptResult {
        seq,
        outcome,
        attempt: attempt.cloned(),
        policy: RetryPolicy {
            max_attempts: 3,
            min_wait: Duration::from_secs(60),
            max_wait: Duration::from_secs(600),
            factor: 2.0,
        },
        jitter_unit: 0.5,
    }
}

fn property<'c>(case: &'c Case, name: &str) -> Option<&'c str> {
    case.properties
        .iter()
        .find(|(known, _)| known == name)
        .map(|(_, value)| value.as_str())
}

fn all_records(store: &RedbStore) -> Vec<RepeatRecord> {
    store
        .list_records("demo", &RecordFilter::default(), 10_000, None)
        .unwrap()
        .records
}

fn count(store: &RedbStore, repeater_id: u64, state: RecordState) -> u64 {
    store
        .state_counts()
        .unwrap()
        .get(&(repeater_id, state))
        .copied()
        .unwrap_or(0)
}

fn seqs_of(records: &[RepeatRecord]) -> Vec<u64> {
    records.iter().map(|record| record.seq).collect()
}

#[tokio::test]
async fn a_submission_stores_its_form_cases_and_records_together() {
    let store = memory_store();
    let result = store
        .commit_submission(submission("f1", "c1", "new"))
        .await
        .unwrap();
    let IngestResult::Accepted { registered } = result else {
        panic!("a new form is accepted, got {result:?}");
    };
    let due_at = crate::time::parse_timestamp(&form("f1").received_on).unwrap();
    assert_eq!(registered, [(1, due_at), (2, due_at)]);

    let stored = store
        .form("demo", "f1")
        .unwrap()
        .expect("the form is stored");
    assert_eq!(stored.case_ids, ["c1"]);
    assert_eq!(
        store.form_xml("demo", "f1").unwrap().as_deref(),
        Some(b"<data id=\"f1\"/>".as_slice())
    );
    let case = store
        .case("demo", "c1")
        .unwrap()
        .expect("the case is stored");
    assert_eq!(property(&case, "status"), Some("new"));

    let records = all_records(&store);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r.state == RecordState::Pending));
    assert_eq!(count(&store, 1, RecordState::Pending), 1);
    assert_eq!(count(&store, 2, RecordState::Pending), 1);
    let form_record = records.iter().find(|r| r.repeater_id == 1).unwrap();
    assert_eq!(
        store.due_records(1, due_at, 10, &HashSet::new()).unwrap(),
        [form_record.seq]
    );
    assert!(
        store
            .due_records(1, due_at - 1, 10, &HashSet::new())
            .unwrap()
            .is_empty(),
        "not due before it was received"
    );
    match store.load_for_send(form_record.seq).unwrap() {
        Some((_, SendSource::Form { form, xml, .. })) => {
            assert_eq!(form.form_id, "f1");
            assert_eq!(xml, b"<data id=\"f1\"/>");
        }
        other => panic!("a form record sends its form, got {other:?}"),
    }
}

#[tokio::test]
async fn a_duplicate_form_is_counted_and_changes_nothing_else() {
    let store = store_with_forms(1).await;
    let mut again = submission("f1", "c1", "changed");
    again.form.received_on = "2026-01-03T00:00:00.000000Z".into();
    let result = store.commit_submission(again).await.unwrap();
    assert_eq!(result, IngestResult::Duplicate);

    let stored = store.form("demo", "f1").unwrap().unwrap();
    assert_eq!(stored.n_duplicates, 1);
    assert_eq!(
        stored.last_duplicate_on.as_deref(),
        Some("2026-01-03T00:00:00.000000Z")
    );
    let case = store.case("demo", "c1").unwrap().unwrap();
    assert_eq!(property(&case, "status"), Some("new"));
    assert_eq!(all_records(&store).len(), 2);
}

#[tokio::test]
async fn a_later_part_adds_its_attachments_to_the_stored_form_and_nothing_else() {
    let store = memory_store();
    let attachment = |name: &str| crate::model::Attachment {
        name: name.into(),
        content_type: "image/jpeg".into(),
        size: 10,
    };
    let mut first = submission("f1", "c1", "new");
    first.form.attachments = vec![attachment("a.jpg")];
    first.form.awaiting_parts = true;
    store.commit_submission(first).await.unwrap();
    let records_before = all_records(&store);
    let case_before = store.case("demo", "c1").unwrap();

    let mut last = submission("f1", "c1", "changed");
    last.form.attachments = vec![attachment("b.jpg")];
    let result = store.commit_submission(last).await.unwrap();
    assert_eq!(result, IngestResult::AttachmentsAdded { n_added: 1 });

    let stored = store.form("demo", "f1").unwrap().unwrap();
    assert_eq!(
        stored.attachments,
        [attachment("a.jpg"), attachment("b.jpg")]
    );
    assert!(!stored.awaiting_parts);
    assert_eq!(stored.n_duplicates, 0);
    assert_eq!(stored.case_ids, ["c1"], "planned once, at the first part");
    assert_eq!(store.case("demo", "c1").unwrap(), case_before);
    assert_eq!(all_records(&store), records_before, "no new records");
    assert_eq!(
        store.form_xml("demo", "f1").unwrap().as_deref(),
        Some(b"<data id=\"f1\"/>".as_slice())
    );
}

#[tokio::test]
async fn a_later_form_updates_the_stored_case() {
    let store = store_with_forms(1).await;
    let update = Submission {
        form: form("f2"),
        xml: b"<data/>".to_vec(),
        case_blocks: vec![update_block("c1", "status", "seen")],
        repeaters: repeaters(),
    };
    store.commit_submission(update).await.unwrap();
    let case = store.case("demo", "c1").unwrap().unwrap();
    assert_eq!(property(&case, "status"), Some("seen"));
    assert_eq!(case.case_type, "patient");
    assert_eq!(case.xform_ids, ["f1", "f2"]);
}

#[tokio::test]
async fn an_attempt_outcome_moves_the_record_its_attempt_and_its_indexes() {
    let store = store_with_forms(1).await;
    let record = first_form_record(&store);
    let attempt = answered_200(record.registered_at + 5);
    let result = attempt_result(record.seq, Outcome::Success { status: 200 }, Some(&attempt));
    let (committed, verdict) = store.commit_attempt(result).await.unwrap();
    assert_eq!(verdict, Verdict::Final(RecordState::Succeeded));
    assert_eq!(committed.state, RecordState::Succeeded);
    assert_eq!(committed.n_attempts, 1);
    assert_eq!(store.record(record.seq).unwrap().as_ref(), Some(&committed));
    assert_eq!(
        store.attempts(record.seq).unwrap(),
        [Attempt {
            number: 1,
            ..attempt
        }]
    );
    assert_eq!(store.earliest_due(1, &HashSet::new()).unwrap(), None);
    assert_eq!(count(&store, 1, RecordState::Pending), 0);
    assert_eq!(count(&store, 1, RecordState::Succeeded), 1);
    // The case record is untouched and still due.
    assert_eq!(
        store.earliest_due(2, &HashSet::new()).unwrap(),
        Some(record.registered_at)
    );
}

#[tokio::test]
async fn an_attempt_on_a_record_cancelled_meanwhile_keeps_the_cancellation() {
    let store = store_with_forms(1).await;
    let seq = all_records(&store)[0].seq;
    store
        .operator_action(seq, OperatorAction::Cancel)
        .await
        .unwrap();
    let rejected = Outcome::Rejected {
        status: Some(400),
        error: "bad payload".into(),
    };
    let result = attempt_result(seq, rejected, None);
    let (committed, verdict) = store.commit_attempt(result).await.unwrap();
    assert_eq!(verdict, Verdict::Final(RecordState::Cancelled));
    assert_eq!(committed.state, RecordState::Cancelled);
    assert_eq!(committed.n_attempts, 1);
    assert!(
        store.attempts(seq).unwrap().is_empty(),
        "no request was made"
    );
}

#[tokio::test]
async fn operator_actions_move_records_in_and_out_of_the_due_index() {
    let store = store_with_forms(1).await;
    let seq = first_form_record(&store).seq;
    let cancelled = store
        .operator_action(seq, OperatorAction::Cancel)
        .await
        .unwrap();
    assert_eq!(cancelled.state, RecordState::Cancelled);
    assert_eq!(store.earliest_due(1, &HashSet::new()).unwrap(), None);
    assert_eq!(count(&store, 1, RecordState::Cancelled), 1);
    assert_eq!(count(&store, 1, RecordState::Pending), 0);

    // Cancelling again changes nothing and answers the record as it stands.
    let again = store
        .operator_action(seq, OperatorAction::Cancel)
        .await
        .unwrap();
    assert_eq!(again, cancelled);
    assert_eq!(count(&store, 1, RecordState::Cancelled), 1);

    let resent = store
        .operator_action(seq, OperatorAction::Resend)
        .await
        .unwrap();
    assert_eq!(resent.state, RecordState::Pending);
    let due = resent.next_attempt_at.expect("a resent record is due");
    assert_eq!(store.earliest_due(1, &HashSet::new()).unwrap(), Some(due));
    assert_eq!(count(&store, 1, RecordState::Pending), 1);
    assert_eq!(count(&store, 1, RecordState::Cancelled), 0);

    let missing = store
        .operator_action(seq + 100, OperatorAction::Cancel)
        .await
        .unwrap_err();
    assert_eq!(missing.to_string(), format!("no record {}", seq + 100));
}

#[tokio::test]
async fn a_bulk_action_changes_only_what_its_filter_matches() {
    let store = store_with_forms(3).await;
    let filter = RecordFilter {
        repeater: Some("cases".into()),
        ..RecordFilter::default()
    };
    let changed = store
        .bulk_action("demo".into(), filter, OperatorAction::Cancel)
        .await
        .unwrap();
    assert_eq!(changed.len(), 3);
    assert!(changed.iter().all(|r| r.repeater == "cases"));
    assert_eq!(count(&store, 2, RecordState::Cancelled), 3);
    assert_eq!(count(&store, 1, RecordState::Pending), 3);
    let other_domain = store
        .bulk_action(
            "elsewhere".into(),
            RecordFilter::default(),
            OperatorAction::Cancel,
        )
        .await
        .unwrap();
    assert!(other_domain.is_empty());
}

#[tokio::test]
async fn deleting_a_repeater_cancels_every_queued_record_of_it() {
    let store = store_with_forms(3).await;
    assert_eq!(store.cancel_repeater_records(1).await.unwrap(), 3);
    assert_eq!(store.earliest_due(1, &HashSet::new()).unwrap(), None);
    assert_eq!(count(&store, 1, RecordState::Cancelled), 3);
    assert_eq!(count(&store, 2, RecordState::Pending), 3);
    assert_eq!(store.cancel_repeater_records(1).await.unwrap(), 0);
}

#[tokio::test]
async fn listings_page_newest_first_and_filter_by_payload() {
    let store = store_with_forms(3).await;
    let everything = all_records(&store);
    assert_eq!(everything.len(), 6);
    let newest_first = seqs_of(&everything);
    assert!(newest_first.windows(2).all(|pair| pair[0] > pair[1]));

    let first = store
        .list_records("demo", &RecordFilter::default(), 4, None)
        .unwrap();
    assert_eq!(seqs_of(&first.records), newest_first[..4]);
    let rest = store
        .list_records("demo", &RecordFilter::default(), 4, first.next_cursor)
        .unwrap();
    assert_eq!(seqs_of(&rest.records), newest_first[4..]);
    assert_eq!(rest.next_cursor, None);

    let by_case = RecordFilter {
        payload_id: Some("c2".into()),
        ..RecordFilter::default()
    };
    let page = store.list_records("demo", &by_case, 10, None).unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].payload.payload_id(), "c2");
    assert!(
        store
            .list_records("elsewhere", &RecordFilter::default(), 10, None)
            .unwrap()
            .records
            .is_empty()
    );
}

#[tokio::test]
async fn an_app_change_registers_records_for_app_schema_repeaters() {
    let store = memory_store();
    let repeaters = Arc::new(vec![
        repeater(1, "forms", PayloadKind::Form),
        repeater(3, "apps", PayloadKind::AppSchema),
    ]);
    let registered = store
        .register_app_change(repeaters, "app1".into(), AppChange::Saved, None)
        .await
        .unwrap();
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].0, 3);
    let records = all_records(&store);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload.payload_id(), "app1");
    assert!(matches!(
        store.load_for_send(records[0].seq).unwrap(),
        Some((_, SendSource::App))
    ));
}

#[tokio::test]
async fn objects_and_notification_states_are_written_and_deleted() {
    let store = memory_store();
    let put = |name: &str, value: Option<&str>| ObjectChange {
        kind: "connection",
        domain: "demo".into(),
        name: name.into(),
        value: value.map(|v| v.as_bytes().to_vec()),
    };
    store
        .put_objects(vec![put("a", Some("1")), put("b", Some("2"))])
        .await
        .unwrap();
    store.put_objects_blocking(vec![put("a", None)]).unwrap();
    assert_eq!(
        store.objects("connection").unwrap(),
        [("demo".to_owned(), "b".to_owned(), b"2".to_vec())]
    );
    assert!(store.objects("repeater").unwrap().is_empty());

    store
        .put_notifications(vec![("demo".into(), "remote".into(), Some(vec![7u32]))])
        .await
        .unwrap();
    let found = store.notifications::<Vec<u32>>().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].2.as_ref().unwrap(), &[7]);
    store
        .put_notifications::<Vec<u32>>(vec![("demo".into(), "remote".into(), None)])
        .await
        .unwrap();
    assert!(store.notifications::<Vec<u32>>().unwrap().is_empty());

    let first = store.allocate_repeater_id().await.unwrap();
    let second = store.allocate_repeater_id_blocking().unwrap();
    assert_eq!(second, first + 1);
}

#[test]
fn record_ids_belong_to_their_store() {
    let store = memory_store();
    let other = memory_store();
    let id = store.record_id(42);
    assert_eq!(id.len(), 32);
    assert_eq!(store.parse_record_id(&id), Some(42));
    assert_eq!(other.parse_record_id(&id), None, "another store's nonce");
    assert_eq!(store.parse_record_id("id"), None);
    assert_eq!(store.parse_record_id(&id[..31]), None);
}

/// A data directory under the system's temporary directory, removed on drop.
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "repeatd-store-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn a_reopened_store_keeps_its_records_ids_and_sequence() {
    let dir = TempDir::new("reopen");
    let (first_id, first_seqs) = {
        let store = RedbStore::open(&dir.0).unwrap();
        store
            .commit_submission(submission("f1", "c1", "new"))
            .await
            .unwrap();
        let seqs = seqs_of(&all_records(&store));
        (store.record_id(seqs[0]), seqs)
    };
    let store = RedbStore::open(&dir.0).unwrap();
    assert_eq!(store.path(), dir.0.join("repeatd.redb"));
    assert_eq!(store.parse_record_id(&first_id), Some(first_seqs[0]));
    store
        .commit_submission(submission("f2", "c2", "new"))
        .await
        .unwrap();
    let seqs = seqs_of(&all_records(&store));
    assert_eq!(seqs.len(), 4);
    assert!(
        seqs[..2].iter().all(|seq| seq > &first_seqs[0]),
        "new records follow the old ones: {seqs:?}"
    );
}

#[test]
fn a_store_of_another_schema_version_is_refused() {
    let dir = TempDir::new("schema");
    {
        let store = RedbStore::open(&dir.0).unwrap();
        let txn = store.db.with_database(|db| Ok(db.begin_write()?)).unwrap();
        txn.open_table(META)
            .unwrap()
            .insert("schema_version", SCHEMA_VERSION + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    let error = RedbStore::open(&dir.0).unwrap_err();
    let path = dir.0.join("repeatd.redb");
    assert_eq!(
        error.to_string(),
        format!(
            "store {} has schema version {}; this repeatd reads version {SCHEMA_VERSION}",
            path.display(),
            SCHEMA_VERSION + 1
        )
    );
}

#[tokio::test]
async fn outcomes_committed_together_each_move_their_record_and_a_missing_one_fails_alone() {
    let store = store_with_forms(2).await;
    let records = all_records(&store);
    let (first, second) = (&records[0], &records[1]);
    let attempt = answered_200(first.registered_at + 5);
    let failure = Outcome::Retryable {
        status: Some(503),
        retry_after: None,
        error: "remote answered 503".into(),
    };
    let missing_seq = records.iter().map(|record| record.seq).max().unwrap() + 100;
    let committed = store
        .commit_attempts(vec![
            attempt_result(first.seq, Outcome::Success { status: 200 }, Some(&attempt)),
            attempt_result(missing_seq, Outcome::Success { status: 200 }, None),
            attempt_result(second.seq, failure, None),
        ])
        .await
        .unwrap();
    assert_eq!(committed.len(), 3, "one answer per outcome, in order");
    let (succeeded, verdict) = committed[0].as_ref().unwrap();
    assert_eq!(*verdict, Verdict::Final(RecordState::Succeeded));
    assert_eq!(store.record(first.seq).unwrap().as_ref(), Some(succeeded));
    assert_eq!(store.attempts(first.seq).unwrap().len(), 1);
    assert!(
        matches!(&committed[1], Err(StoreError::NoRecord(seq)) if *seq == missing_seq.to_string()),
        "{:?}",
        committed[1]
    );
    let (retried, verdict) = committed[2].as_ref().unwrap();
    assert!(matches!(verdict, Verdict::RetryAt(_)), "{verdict:?}");
    assert_eq!(retried.n_attempts, 1);
    assert_eq!(store.record(second.seq).unwrap().as_ref(), Some(retried));
}
