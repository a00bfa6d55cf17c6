//! The state index: it holds exactly the records' (domain, state, repeater,
//! seq) after registration, attempt outcomes and operator actions; listings
//! filtered by state page through it newest first, never reading a record of
//! another state; a store written before it gets it when opened.

use std::collections::BTreeSet;

use redb::{Database, ReadableDatabase};

use super::tests::{TempDir, answered_200, attempt_result, memory_store, submission};
use super::*;

type Entry = (String, String, String, u64);

/// Checks that the state index holds exactly one entry per record, of its
/// domain, state, repeater and seq.
pub(super) fn assert_state_index_agrees(store: &RedbStore, context: &str) {
    let txn = store.db.begin_read().unwrap();
    let mut expected = BTreeSet::new();
    for entry in txn.open_table(RECORDS).unwrap().iter().unwrap() {
        let (key, value) = entry.unwrap();
        let record = decode_record(key.value(), value.value()).unwrap();
        expected.insert((
            record.domain,
            record.state.as_str().to_owned(),
            record.repeater,
            record.seq,
        ));
    }
    let found: BTreeSet<Entry> = txn
        .open_table(STATE_RECORDS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|entry| {
            let (key, _) = entry.unwrap();
            let (domain, state, repeater, seq) = key.value();
            (domain.into(), state.into(), repeater.into(), seq)
        })
        .collect();
    assert_eq!(found, expected, "{context}: the state index");
}

async fn store_with_forms(n: usize) -> RedbStore {
    let store = memory_store();
    for n in 1..=n {
        let form = submission(&format!("f{n}"), &format!("c{n}"), "new");
        store.commit_submission(form).await.unwrap();
    }
    store
}

fn every_record(store: &RedbStore) -> Vec<RepeatRecord> {
    store
        .list_records("demo", &RecordFilter::default(), 10_000, None)
        .unwrap()
        .records
}

fn retryable() -> Outcome {
    Outcome::Retryable {
        status: Some(503),
        retry_after: None,
        error: "busy".into(),
    }
}

async fn fail(store: &RedbStore, seq: u64) {
    let (record, _) = store
        .commit_attempt(attempt_result(seq, retryable(), None))
        .await
        .unwrap();
    assert_eq!(record.state, RecordState::Failed);
}

async fn succeed(store: &RedbStore, seq: u64) {
    let attempt = answered_200(1_000);
    let success = Outcome::Success { status: 200 };
    store
        .commit_attempt(attempt_result(seq, success, Some(&attempt)))
        .await
        .unwrap();
}

/// Every page of `filter`, `limit` records a page, following `next_cursor`.
fn pages(store: &RedbStore, filter: &RecordFilter, limit: usize) -> Vec<Vec<u64>> {
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let page = store.list_records("demo", filter, limit, cursor).unwrap();
        pages.push(page.records.iter().map(|r| r.seq).collect());
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
        assert!(pages.len() < 100, "the pages end");
    }
}

#[tokio::test]
async fn the_index_follows_registration_outcomes_and_operator_actions() {
    let store = store_with_forms(4).await;
    assert_state_index_agrees(&store, "registered");
    let seqs: Vec<u64> = every_record(&store).iter().map(|r| r.seq).collect();
    succeed(&store, seqs[0]).await;
    fail(&store, seqs[1]).await;
    let rejected = Outcome::Rejected {
        status: Some(400),
        error: "bad payload".into(),
    };
    store
        .commit_attempt(attempt_result(seqs[2], rejected, None))
        .await
        .unwrap();
    store
        .commit_attempt(attempt_result(seqs[3], Outcome::Empty, None))
        .await
        .unwrap();
    assert_state_index_agrees(&store, "after outcomes");
    store
        .operator_action(seqs[4], OperatorAction::Cancel)
        .await
        .unwrap();
    store
        .operator_action(seqs[1], OperatorAction::Requeue)
        .await
        .unwrap();
    store
        .operator_action(seqs[0], OperatorAction::Resend)
        .await
        .unwrap();
    assert_state_index_agrees(&store, "after operator actions");
    let pending = RecordFilter {
        state: Some(RecordState::Pending),
        ..RecordFilter::default()
    };
    store
        .bulk_action("demo".into(), pending, OperatorAction::Cancel)
        .await
        .unwrap();
    store.cancel_repeater_records(2).await.unwrap();
    assert_state_index_agrees(&store, "after bulk actions");
}

#[tokio::test]
async fn listings_by_state_page_through_exactly_the_matching_records() {
    let store = store_with_forms(12).await;
    let all = every_record(&store);
    for (i, record) in all.iter().enumerate() {
        match i % 3 {
            0 => fail(&store, record.seq).await,
            1 => succeed(&store, record.seq).await,
            _ => {}
        }
    }
    let all = every_record(&store);
    for state in [
        RecordState::Failed,
        RecordState::Succeeded,
        RecordState::Pending,
        RecordState::Cancelled,
    ] {
        for repeater in [None, Some("forms"), Some("cases"), Some("gone")] {
            let filter = RecordFilter {
                state: Some(state),
                repeater: repeater.map(str::to_owned),
                payload_id: None,
            };
            let expected: Vec<u64> = all
                .iter()
                .filter(|r| filter.matches(r))
                .map(|r| r.seq)
                .collect();
            for limit in [1, 3, 5, 100] {
                let pages = pages(&store, &filter, limit);
                let context = format!("{state:?} of {repeater:?}, {limit} a page");
                assert!(
                    pages.iter().all(|page| page.len() <= limit),
                    "{context}: {pages:?}"
                );
                assert!(
                    pages[..pages.len() - 1]
                        .iter()
                        .all(|page| page.len() == limit),
                    "{context}: only the last page is short: {pages:?}"
                );
                assert_eq!(pages.concat(), expected, "{context}");
            }
        }
    }
}

#[tokio::test]
async fn a_state_only_old_records_are_in_is_found_without_reading_the_others() {
    let store = store_with_forms(2).await;
    let old: Vec<u64> = every_record(&store).iter().map(|r| r.seq).collect();
    fail(&store, old[3]).await;
    fail(&store, old[0]).await;
    for n in 3..=300 {
        let form = submission(&format!("f{n}"), &format!("c{n}"), "new");
        store.commit_submission(form).await.unwrap();
    }
    // Make every record not failed unreadable: a listing that read one
    // would fail.
    {
        let txn = store.db.with_database(|db| Ok(db.begin_write()?)).unwrap();
        {
            let mut records = txn.open_table(RECORDS).unwrap();
            let others: Vec<u64> = records
                .iter()
                .unwrap()
                .map(|entry| entry.unwrap().0.value())
                .filter(|seq| *seq != old[0] && *seq != old[3])
                .collect();
            for seq in others {
                records.insert(seq, &b"not a record"[..]).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let failed = RecordFilter {
        state: Some(RecordState::Failed),
        ..RecordFilter::default()
    };
    let page = store.list_records("demo", &failed, 50, None).unwrap();
    let seqs: Vec<u64> = page.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [old[0], old[3]]);
    assert_eq!(page.next_cursor, None);
    let of_cases = RecordFilter {
        repeater: Some("cases".into()),
        ..failed
    };
    let page = store.list_records("demo", &of_cases, 50, None).unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0].repeater, "cases");
    assert!(
        store
            .list_records("demo", &RecordFilter::default(), 50, None)
            .is_err(),
        "the others are indeed unreadable"
    );
}

#[tokio::test]
async fn a_store_written_before_the_state_index_gets_it_when_opened() {
    let dir = TempDir::new("state-backfill");
    {
        let store = RedbStore::open(&dir.0).unwrap();
        for n in 1..=3 {
            let form = submission(&format!("f{n}"), &format!("c{n}"), "new");
            store.commit_submission(form).await.unwrap();
        }
        let seq = every_record(&store)[0].seq;
        fail(&store, seq).await;
    }
    // Make it the file an earlier repeatd wrote: no state index, no marker.
    {
        let db = Database::open(dir.0.join("repeatd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(STATE_RECORDS).unwrap();
        txn.open_table(META)
            .unwrap()
            .remove("state_records_indexed")
            .unwrap();
        txn.commit().unwrap();
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(STATE_RECORDS).is_err(), "the index is gone");
    }
    let store = RedbStore::open(&dir.0).unwrap();
    assert_state_index_agrees(&store, "backfilled");
    let failed = RecordFilter {
        state: Some(RecordState::Failed),
        ..RecordFilter::default()
    };
    let page = store.list_records("demo", &failed, 50, None).unwrap();
    assert_eq!(page.records.len(), 1);
    // Later changes move the backfilled entries.
    let seq = page.records[0].seq;
    store
        .operator_action(seq, OperatorAction::Cancel)
        .await
        .unwrap();
    assert_state_index_agrees(&store, "after a change");
    assert!(
        store
            .list_records("demo", &failed, 50, None)
            .unwrap()
            .records
            .is_empty()
    );
}
