//! Retention's store operations: exactly the records due go, with every
//! table entry that names them; forms go only when no open record needs
//! them; the domain's figures follow.

use redb::ReadableTable;

use super::tests::{TempDir, answered_200, attempt_result, memory_store, submission};
use super::*;

/// Far enough ahead that everything final is past it.
const LATER: i64 = i64::MAX / 2;

/// Every seq any record table or index holds.
fn seqs_named(store: &RedbStore) -> Vec<(&'static str, u64)> {
    let txn = store.db.begin_read().unwrap();
    let mut named = Vec::new();
    for entry in txn.open_table(RECORDS).unwrap().iter().unwrap() {
        named.push(("records", entry.unwrap().0.value()));
    }
    for entry in txn.open_table(ATTEMPTS).unwrap().iter().unwrap() {
        named.push(("attempts", entry.unwrap().0.value().0));
    }
    for entry in txn.open_table(DUE).unwrap().iter().unwrap() {
        named.push(("due", entry.unwrap().0.value().2));
    }
    for entry in txn.open_table(PAYLOAD_RECORDS).unwrap().iter().unwrap() {
        named.push(("payload_records", entry.unwrap().0.value().2));
    }
    for entry in txn.open_table(STATE_RECORDS).unwrap().iter().unwrap() {
        named.push(("state_records", entry.unwrap().0.value().3));
    }
    for entry in txn.open_table(FINAL_RECORDS).unwrap().iter().unwrap() {
        named.push(("final_records", entry.unwrap().0.value().2));
    }
    for entry in txn.open_table(FINAL_SINCE).unwrap().iter().unwrap() {
        named.push(("final_since", entry.unwrap().0.value()));
    }
    named
}

fn the_record(store: &RedbStore, payload_id: &str, repeater_id: u64) -> RepeatRecord {
    store
        .list_records(
            "demo",
            &RecordFilter {
                payload_id: Some(payload_id.into()),
                ..RecordFilter::default()
            },
            10,
            None,
        )
        .unwrap()
        .records
        .into_iter()
        .find(|record| record.repeater_id == repeater_id)
        .expect("the record")
}

async fn succeed(store: &RedbStore, seq: u64) {
    let at = store.clock.now_micros();
    store
        .commit_attempt(attempt_result(
            seq,
            Outcome::Success { status: 200 },
            Some(&answered_200(at)),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn only_records_final_before_the_cutoff_go_with_everything_naming_them() {
    let store = memory_store();
    for n in 1..=3 {
        store
            .commit_submission(submission(&format!("f{n}"), &format!("c{n}"), "new"))
            .await
            .unwrap();
    }
    // f1's form record succeeds; f2's is cancelled; the rest stay pending.
    let f1 = the_record(&store, "f1", 1);
    succeed(&store, f1.seq).await;
    let f2 = the_record(&store, "f2", 1);
    store
        .operator_action(f2.seq, OperatorAction::Cancel)
        .await
        .unwrap();
    let before = store.domain_stats("demo").unwrap();
    assert_eq!(before.records[&RecordState::Pending], 4);
    assert_eq!(before.records[&RecordState::Succeeded], 1);
    assert_eq!(before.records[&RecordState::Cancelled], 1);

    // A cutoff before they became final deletes nothing.
    assert_eq!(
        store
            .retain_records(RecordState::Succeeded, 0, 100)
            .await
            .unwrap(),
        0
    );
    // Pending records have no cutoff: nothing of theirs goes.
    assert_eq!(
        store
            .retain_records(RecordState::Pending, LATER, 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .retain_records(RecordState::Succeeded, LATER, 100)
            .await
            .unwrap(),
        1
    );
    assert!(store.record(f1.seq).unwrap().is_none());
    assert!(store.attempts(f1.seq).unwrap().is_empty());
    assert!(
        !seqs_named(&store).iter().any(|(_, seq)| *seq == f1.seq),
        "{:?}",
        seqs_named(&store)
    );
    // The cancelled one is still there until its own state's turn.
    assert!(store.record(f2.seq).unwrap().is_some());
    assert_eq!(
        store
            .retain_records(RecordState::Cancelled, LATER, 100)
            .await
            .unwrap(),
        1
    );
    assert!(!seqs_named(&store).iter().any(|(_, seq)| *seq == f2.seq));

    let after = store.domain_stats("demo").unwrap();
    assert_eq!(after.records[&RecordState::Pending], 4);
    assert_eq!(after.records[&RecordState::Succeeded], 0);
    assert_eq!(after.records[&RecordState::Cancelled], 0);
    assert_eq!(
        count_by_state(&store, RecordState::Succeeded),
        0,
        "the state counts follow"
    );
    assert_eq!(after.forms, 3);
    assert_eq!(after.cases, 3);
}

fn count_by_state(store: &RedbStore, state: RecordState) -> u64 {
    store
        .state_counts()
        .unwrap()
        .iter()
        .filter(|((_, found), _)| *found == state)
        .map(|(_, n)| n)
        .sum()
}

#[tokio::test]
async fn batches_are_bounded_and_oldest_first() {
    let store = memory_store();
    let mut seqs = Vec::new();
    for n in 1..=5 {
        store
            .commit_submission(submission(&format!("f{n}"), &format!("c{n}"), "new"))
            .await
            .unwrap();
        let record = the_record(&store, &format!("f{n}"), 1);
        succeed(&store, record.seq).await;
        seqs.push(record.seq);
    }
    assert_eq!(
        store
            .retain_records(RecordState::Succeeded, LATER, 2)
            .await
            .unwrap(),
        2
    );
    assert!(store.record(seqs[0]).unwrap().is_none());
    assert!(store.record(seqs[1]).unwrap().is_none());
    assert!(store.record(seqs[2]).unwrap().is_some());
    let oldest = store.oldest_kept().unwrap();
    let (_, succeeded_since) = oldest
        .records
        .iter()
        .find(|(state, _)| *state == RecordState::Succeeded)
        .unwrap();
    assert!(succeeded_since.is_some());
}

#[tokio::test]
async fn a_record_sent_again_leaves_retention_until_it_is_final_again() {
    let store = memory_store();
    store
        .commit_submission(submission("f1", "c1", "new"))
        .await
        .unwrap();
    let record = the_record(&store, "f1", 1);
    succeed(&store, record.seq).await;
    store
        .operator_action(record.seq, OperatorAction::Resend)
        .await
        .unwrap();
    assert_eq!(
        store
            .retain_records(RecordState::Succeeded, LATER, 100)
            .await
            .unwrap(),
        0,
        "a pending record is never deleted"
    );
    succeed(&store, record.seq).await;
    assert_eq!(
        store
            .retain_records(RecordState::Succeeded, LATER, 100)
            .await
            .unwrap(),
        1
    );
    assert!(store.record(record.seq).unwrap().is_none());
}

#[tokio::test]
async fn a_form_goes_with_its_xml_only_once_no_open_record_needs_it() {
    let store = memory_store();
    for n in 1..=2 {
        store
            .commit_submission(submission(&format!("f{n}"), &format!("c{n}"), "new"))
            .await
            .unwrap();
    }
    let f1 = the_record(&store, "f1", 1);
    succeed(&store, f1.seq).await;
    let xml_of_f2 = store.form_xml("demo", "f2").unwrap().unwrap().len() as u64;

    // A cutoff before they were stored keeps both.
    let kept = store.retain_forms("demo", 0, 0, 100).await.unwrap();
    assert_eq!(kept.deleted, 0);
    let retained = store.retain_forms("demo", LATER, 0, 100).await.unwrap();
    assert_eq!(
        retained,
        RetainedForms {
            deleted: 1,
            resume_at: None
        }
    );
    assert!(store.form("demo", "f1").unwrap().is_none());
    assert!(store.form_xml("demo", "f1").unwrap().is_none());
    assert!(store.form_indexed_on("demo", "f1").unwrap().is_none());
    // f2's form record is pending: its form stays, and so do the cases.
    assert!(store.form("demo", "f2").unwrap().is_some());
    assert!(store.case("demo", "c1").unwrap().is_some());
    let listed = store
        .list_forms(
            "demo",
            &FormScope::All,
            &ListingRange::default(),
            (0, 10),
            None,
        )
        .unwrap();
    assert_eq!(listed.total_count, 1);
    assert_eq!(listed.objects[0].form.form_id, "f2");
    let stats = store.domain_stats("demo").unwrap();
    assert_eq!(stats.forms, 1);
    assert_eq!(stats.cases, 2);
    assert_eq!(stats.form_xml_bytes, xml_of_f2);
    // The succeeded record of the deleted form is still listed.
    assert!(store.record(f1.seq).unwrap().is_some());
}

#[tokio::test]
async fn a_batch_of_needed_forms_says_where_to_resume() {
    let store = memory_store();
    for n in 1..=3 {
        store
            .commit_submission(submission(&format!("f{n}"), &format!("c{n}"), "new"))
            .await
            .unwrap();
    }
    let first = store.retain_forms("demo", LATER, 0, 2).await.unwrap();
    assert_eq!(first.deleted, 0, "every form is needed by a pending record");
    let resume_at = first.resume_at.expect("more to look at");
    let second = store
        .retain_forms("demo", LATER, resume_at, 2)
        .await
        .unwrap();
    assert_eq!(second.resume_at, None);
    assert_eq!(store.form_domains().unwrap(), ["demo"]);
}

#[tokio::test]
async fn a_store_from_before_retention_is_indexed_and_counted_when_opened() {
    let dir = TempDir::new("before-retention");
    let store = RedbStore::open(&dir.0).unwrap();
    store
        .commit_submission(submission("f1", "c1", "new"))
        .await
        .unwrap();
    let record = the_record(&store, "f1", 1);
    succeed(&store, record.seq).await;
    let expected = store.domain_stats("demo").unwrap();
    // Forget the new tables, as a store written before them has none.
    {
        let txn = store.db.with_database(|db| Ok(db.begin_write()?)).unwrap();
        txn.delete_table(FINAL_RECORDS).unwrap();
        txn.delete_table(FINAL_SINCE).unwrap();
        txn.delete_table(DOMAIN_COUNTS).unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.remove("final_records_indexed").unwrap();
            meta.remove("domain_counts_counted").unwrap();
        }
        txn.commit().unwrap();
    }
    drop(store);
    let store = RedbStore::open(&dir.0).unwrap();
    assert_eq!(store.domain_stats("demo").unwrap(), expected);
    assert_eq!(
        store
            .retain_records(RecordState::Succeeded, LATER, 100)
            .await
            .unwrap(),
        1
    );
}
