//! Tests of `PgStore` against a real PostgreSQL (`REPEATD_TEST_PG_URL`); each
//! test makes its own database, so they run in parallel.

use std::time::Duration;

use super::PgStore;
use crate::clock::Clock;
use crate::store::ObjectChange;

/// A fresh database on the test cluster; fails when the URL is not given.
pub(super) async fn fresh_url() -> String {
    let base = std::env::var("REPEATD_TEST_PG_URL")
        .expect("REPEATD_TEST_PG_URL must name a PostgreSQL the tests may CREATE DATABASE on");
    let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("connecting to REPEATD_TEST_PG_URL");
    tokio::spawn(connection);
    let name = format!(
        "repeatd_t_{:016x}",
        super::random_u64().expect("randomness")
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("creating a test database");
    let (prefix, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{prefix}/{name}")
}

async fn connect(url: &str) -> PgStore {
    PgStore::connect(url, Duration::from_secs(30), Clock::system())
        .await
        .expect("connecting")
}

#[tokio::test]
async fn two_nodes_share_schema_nonce_and_objects() {
    let url = fresh_url().await;
    let (a, b) = tokio::join!(connect(&url), connect(&url));
    let id = a.record_id(42);
    assert_eq!(b.parse_record_id(&id), Some(42));
    assert!(a.is_empty().await.expect("is_empty"));
    a.put_objects(vec![ObjectChange {
        kind: "repeater",
        domain: "d".into(),
        name: "r".into(),
        value: Some(b"x".to_vec()),
    }])
    .await
    .expect("put_objects");
    assert_eq!(
        b.objects("repeater").await.expect("objects"),
        vec![("d".to_owned(), "r".to_owned(), b"x".to_vec())]
    );
    assert!(!b.is_empty().await.expect("is_empty"));
    let first = a.allocate_repeater_id().await.expect("id");
    let second = b.allocate_repeater_id().await.expect("id");
    assert!(second > first);
}

#[tokio::test]
async fn hold_lock_is_held_by_one_node_and_passes_on() {
    let url = fresh_url().await;
    let a = connect(&url).await;
    let b = connect(&url).await;
    assert!(a.hold_lock("digest").await.expect("lock"));
    assert!(a.hold_lock("digest").await.expect("lock"));
    assert!(!b.hold_lock("digest").await.expect("lock"));
    drop(a);
    let mut taken = false;
    for _ in 0..50 {
        if b.hold_lock("digest").await.expect("lock") {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(taken, "the lock passes on when its holder is dropped");
}

#[tokio::test]
async fn health_is_shared() {
    let url = fresh_url().await;
    let a = connect(&url).await;
    let b = connect(&url).await;
    a.put_health(3, 2, Some(99)).await.expect("put_health");
    let health = b.cluster_health().await.expect("cluster_health");
    assert_eq!(health.get(&3).map(|h| (h.0, h.1)), Some((2, Some(99))));
}

#[tokio::test]
async fn unreachable_database_is_named_without_password() {
    let result = PgStore::connect(
        "postgres://u:secret@127.0.0.1:1/db",
        Duration::from_secs(30),
        Clock::system(),
    )
    .await;
    let error = result.expect_err("nothing listens on port 1").to_string();
    assert!(error.contains("127.0.0.1:1"), "{error}");
    assert!(!error.contains("secret"), "{error}");
}

// ---- the same operations on both backends ------------------------------------

use std::collections::HashSet;

use crate::model::Case;
use crate::record::{OperatorAction, Outcome, RecordState, RepeatRecord, Verdict};
use crate::store::tests::{answered_200, attempt_result, memory_store, repeaters, submission};
use crate::store::{CaseScope, FormScope, IngestResult, ListingRange, RecordFilter, RedbStore};

/// A record without the times each backend stamps on its own.
fn timeless(mut record: RepeatRecord) -> RepeatRecord {
    record.registered_at = 0;
    record.next_attempt_at = record.next_attempt_at.map(|_| 0);
    record.last_attempt_at = record.last_attempt_at.map(|_| 0);
    record
}

fn timeless_case(mut case: Case) -> Case {
    case.server_date_modified = String::new();
    case
}

async fn pg_records(store: &PgStore) -> Vec<RepeatRecord> {
    store
        .list_records("demo", &RecordFilter::default(), 10_000, None)
        .await
        .expect("list_records")
        .records
        .into_iter()
        .map(timeless)
        .collect()
}

fn redb_records(store: &RedbStore) -> Vec<RepeatRecord> {
    store
        .list_records("demo", &RecordFilter::default(), 10_000, None)
        .expect("list_records")
        .records
        .into_iter()
        .map(timeless)
        .collect()
}

/// Submissions, duplicates, later forms, attempts, operator actions and
/// deletions, done to a redb store and to a PgStore, leave the same records,
/// forms, cases and listings in both.
#[tokio::test]
async fn both_backends_keep_the_same_records_forms_and_cases() {
    let url = fresh_url().await;
    let pg = connect(&url).await;
    let redb = memory_store();
    let subs = || {
        vec![
            submission("f1", "c1", "new"),
            submission("f2", "c2", "new"),
            submission("f1", "c1", "new"),
            submission("f3", "c1", "seen"),
        ]
    };
    for (a, b) in subs().into_iter().zip(subs()) {
        let from_redb = redb.commit_submission(a).await.expect("redb commit");
        let from_pg = pg.commit_submission(b).await.expect("pg commit");
        match (&from_redb, &from_pg) {
            (
                IngestResult::Accepted { registered: r },
                IngestResult::Accepted { registered: p },
            ) => assert_eq!(
                r.iter().map(|x| x.0).collect::<Vec<_>>(),
                p.iter().map(|x| x.0).collect::<Vec<_>>()
            ),
            (r, p) => assert_eq!(r, p),
        }
    }
    assert_eq!(redb_records(&redb), pg_records(&pg).await);
    assert_eq!(redb_records(&redb).len(), 6, "3 forms × 2 repeaters");

    // Claim and send repeater 1's records: one succeeds, one fails.
    let now = crate::clock::Clock::system().now_micros() + 1;
    let claimed = pg
        .due_records(1, now, 10, 10, &HashSet::new())
        .await
        .expect("claim");
    let due = redb.due_records(1, now, 10, &HashSet::new()).expect("due");
    assert_eq!(claimed, due);
    assert_eq!(claimed.len(), 3);
    // A second node sees nothing to claim while they are leased.
    let other = connect(&url).await;
    assert!(
        other
            .due_records(1, now, 10, 10, &HashSet::new())
            .await
            .expect("claim")
            .is_empty()
    );
    let at = now + 5;
    let retry = Outcome::Retryable {
        status: Some(503),
        error: "503".into(),
        retry_after: None,
    };
    for (seq, outcome) in [
        (claimed[0], Outcome::Success { status: 200 }),
        (claimed[1], retry.clone()),
    ] {
        let result = attempt_result(seq, outcome, Some(&answered_200(at)));
        let (r, rv) = redb.commit_attempt(result.clone()).await.expect("redb");
        let (p, pv) = pg.commit_attempt(result).await.expect("pg");
        assert_eq!(timeless(r), timeless(p));
        assert!(
            matches!(
                (rv, pv),
                (Verdict::Final(a), Verdict::Final(b)) if a == b
            ) || matches!((rv, pv), (Verdict::RetryAt(_), Verdict::RetryAt(_)))
        );
        assert_eq!(
            redb.attempts(seq).expect("attempts"),
            pg.attempts(seq).await.expect("attempts")
        );
    }
    // The committed outcomes ended their leases; the third is still held.
    let live: i64 = {
        let client = pg.client().await.expect("client");
        client
            .query_one(
                "SELECT count(*) FROM records WHERE leased_until IS NOT NULL",
                &[],
            )
            .await
            .expect("count")
            .get(0)
    };
    assert_eq!(live, 1);
    pg.release_leases(&claimed[2..]).await.expect("release");

    // Operator actions.
    let resent_r = redb
        .operator_action(claimed[0], OperatorAction::Resend)
        .await
        .expect("redb");
    let resent_p = pg
        .operator_action(claimed[0], OperatorAction::Resend)
        .await
        .expect("pg");
    assert_eq!(timeless(resent_r), timeless(resent_p));
    let filter = RecordFilter {
        repeater: Some("cases".into()),
        ..RecordFilter::default()
    };
    let cancelled_r = redb
        .bulk_action("demo".into(), filter.clone(), OperatorAction::Cancel)
        .await
        .expect("redb");
    let cancelled_p = pg
        .bulk_action("demo".into(), filter, OperatorAction::Cancel)
        .await
        .expect("pg");
    assert_eq!(
        cancelled_r.into_iter().map(timeless).collect::<Vec<_>>(),
        cancelled_p.into_iter().map(timeless).collect::<Vec<_>>()
    );
    assert_eq!(
        redb.cancel_repeater_records(1).await.expect("redb"),
        pg.cancel_repeater_records(1).await.expect("pg")
    );
    assert_eq!(redb_records(&redb), pg_records(&pg).await);
    let mut counts = redb.state_counts().expect("counts");
    // redb keeps the counts that fell to 0.
    counts.retain(|_, n| *n > 0);
    assert_eq!(counts, pg.state_counts().await.expect("counts"));
    let (r, p) = (
        redb.domain_stats("demo").expect("stats"),
        pg.domain_stats("demo").await.expect("stats"),
    );
    assert_eq!(r, p);
    for state in [RecordState::Pending, RecordState::Cancelled] {
        let filter = RecordFilter {
            state: Some(state),
            ..RecordFilter::default()
        };
        let page_r = redb.list_records("demo", &filter, 2, None).expect("redb");
        let page_p = pg.list_records("demo", &filter, 2, None).await.expect("pg");
        assert_eq!(
            page_r.records.into_iter().map(timeless).collect::<Vec<_>>(),
            page_p.records.into_iter().map(timeless).collect::<Vec<_>>()
        );
        assert_eq!(page_r.next_cursor, page_p.next_cursor);
    }

    // Forms and cases, one by one and listed.
    for form_id in ["f1", "f2", "f3"] {
        assert_eq!(
            redb.form("demo", form_id).expect("redb"),
            pg.form("demo", form_id).await.expect("pg")
        );
        assert_eq!(
            redb.form_xml("demo", form_id).expect("redb"),
            pg.form_xml("demo", form_id).await.expect("pg")
        );
    }
    for case_id in ["c1", "c2"] {
        assert_eq!(
            redb.case("demo", case_id).expect("redb").map(timeless_case),
            pg.case("demo", case_id)
                .await
                .expect("pg")
                .map(timeless_case)
        );
    }
    for descending in [false, true] {
        let range = ListingRange {
            descending,
            ..ListingRange::default()
        };
        let forms_r = redb
            .list_forms("demo", &FormScope::All, &range, (1, 10), None)
            .expect("redb");
        let forms_p = pg
            .list_forms("demo", &FormScope::All, &range, (1, 10), None)
            .await
            .expect("pg");
        assert_eq!(forms_r.total_count, forms_p.total_count);
        assert_eq!(
            forms_r.objects.iter().map(|f| &f.form).collect::<Vec<_>>(),
            forms_p.objects.iter().map(|f| &f.form).collect::<Vec<_>>()
        );
        let only_c1 = |case: &Case, _: i64| case.case_id == "c1";
        let cases_r = redb
            .list_cases("demo", &CaseScope::All, &range, (0, 10), Some(&only_c1))
            .expect("redb");
        let cases_p = pg
            .list_cases("demo", &CaseScope::All, &range, (0, 10), Some(&only_c1))
            .await
            .expect("pg");
        assert_eq!(cases_r.total_count, 1);
        assert_eq!(cases_p.total_count, 1);
        assert_eq!(cases_p.objects[0].0.case_id, "c1");
    }
    // indexed_on strictly increases within the domain, forms and cases.
    let mut seen = Vec::new();
    for form_id in ["f1", "f2", "f3"] {
        seen.push(pg.form_indexed_on("demo", form_id).await.unwrap().unwrap());
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert_eq!(pg.form_domains().await.expect("domains"), vec!["demo"]);
    let _ = repeaters();
}

/// A repeater with `max_workers = 1` has one record leased in the whole
/// cluster at a time, the oldest due; a lease that runs out is claimed by
/// another node.
#[tokio::test]
async fn claims_honour_max_workers_across_nodes_and_leases_run_out() {
    let url = fresh_url().await;
    let a = PgStore::connect(&url, Duration::from_millis(300), Clock::system())
        .await
        .expect("a");
    let b = PgStore::connect(&url, Duration::from_millis(300), Clock::system())
        .await
        .expect("b");
    for n in 1..=3 {
        a.commit_submission(submission(&format!("f{n}"), &format!("c{n}"), "new"))
            .await
            .expect("commit");
    }
    let now = || Clock::system().now_micros();
    let none = HashSet::new();
    let first = a.due_records(1, now(), 5, 1, &none).await.expect("claim");
    assert_eq!(first.len(), 1);
    assert!(
        b.due_records(1, now(), 5, 1, &none)
            .await
            .expect("claim")
            .is_empty()
    );
    // b still sees records due (past max_workers, the scheduler polls).
    assert!(b.earliest_due(1, &none).await.expect("earliest").is_some());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let taken_over = b.due_records(1, now(), 5, 1, &none).await.expect("claim");
    assert_eq!(taken_over, first, "the oldest record again, now b's");
    // a's late outcome does not end b's lease.
    a.commit_attempt(attempt_result(
        first[0],
        Outcome::Success { status: 200 },
        Some(&answered_200(now())),
    ))
    .await
    .expect("commit");
    assert!(
        a.due_records(1, now(), 5, 1, &none)
            .await
            .expect("claim")
            .is_empty()
    );
}

#[tokio::test]
async fn email_observations_are_taken_in_order_and_each_once() {
    let url = fresh_url().await;
    let (a, b) = tokio::join!(connect(&url), connect(&url));
    a.push_email_observations(vec![b"first".to_vec(), b"second".to_vec()])
        .await
        .expect("push");
    b.push_email_observations(vec![b"third".to_vec()])
        .await
        .expect("push");
    a.push_email_observations(Vec::new())
        .await
        .expect("pushing nothing");
    assert_eq!(
        b.take_email_observations(2).await.expect("take"),
        vec![b"first".to_vec(), b"second".to_vec()]
    );
    assert_eq!(
        a.take_email_observations(10).await.expect("take"),
        vec![b"third".to_vec()]
    );
    assert!(
        a.take_email_observations(10)
            .await
            .expect("take")
            .is_empty()
    );

    // Two takers at once, each in small batches: every value comes out
    // once, and each taker sees its values in the order they were pushed.
    let pushed: Vec<Vec<u8>> = (0..2_000u32).map(|n| n.to_be_bytes().to_vec()).collect();
    for chunk in pushed.chunks(100) {
        a.push_email_observations(chunk.to_vec())
            .await
            .expect("push");
    }
    async fn drain(store: &PgStore) -> Vec<u32> {
        let mut taken = Vec::new();
        loop {
            let batch = store.take_email_observations(7).await.expect("take");
            if batch.is_empty() {
                return taken;
            }
            taken.extend(
                batch
                    .iter()
                    .map(|value| u32::from_be_bytes(value[..].try_into().expect("4 bytes"))),
            );
        }
    }
    let (by_a, by_b) = tokio::join!(drain(&a), drain(&b));
    assert!(by_a.is_sorted() && by_b.is_sorted(), "each taker in order");
    let mut all: Vec<u32> = by_a.iter().chain(&by_b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..2_000).collect::<Vec<_>>(), "each taken once");
}

/// Nodes adding the same repeater at once agree on its id; once it is
/// deleted, its name gets a fresh one.
#[tokio::test]
async fn nodes_agree_on_a_new_repeaters_id() {
    let url = fresh_url().await;
    let (a, b) = tokio::join!(connect(&url), connect(&url));
    let (from_a, from_b) = tokio::join!(
        a.repeater_id_for("demo", "forms"),
        b.repeater_id_for("demo", "forms")
    );
    let id = from_a.expect("a");
    assert_eq!(id, from_b.expect("b"));
    assert_ne!(a.repeater_id_for("demo", "cases").await.expect("a"), id);
    b.forget_repeater_id("demo", "forms").await.expect("forget");
    assert_ne!(a.repeater_id_for("demo", "forms").await.expect("a"), id);
}
