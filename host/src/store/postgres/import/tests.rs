//! The import against a real PostgreSQL (`REPEATD_TEST_PG_URL`): a redb
//! store filled through its own write operations, copied, and every row
//! compared with what redb holds, value bytes included.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use redb::ReadableTable;

use super::{ImportCounts, ImportError};
use crate::clock::Clock;
use crate::record::{Outcome, RecordState};
use crate::store::postgres::PgStore;
use crate::store::postgres::tests::fresh_url;
use crate::store::tables::*;
use crate::store::tests::{answered_200, attempt_result, memory_store, submission};
use crate::store::{ObjectChange, RecordFilter, RedbStore as Store};

async fn connect(url: &str) -> PgStore {
    PgStore::connect(url, Duration::from_secs(30), Clock::system())
        .await
        .expect("connecting")
}

/// A redb store with two forms and their cases (one case changed by a third
/// form), records in several states with attempts, objects, a
/// notification state and repeater ids handed out.
async fn filled_store() -> Store {
    let store = memory_store();
    for (form_id, case_id, status) in [
        ("f1", "c1", "new"),
        ("f2", "c2", "new"),
        ("f3", "c1", "seen"),
    ] {
        store
            .commit_submission(submission(form_id, case_id, status))
            .await
            .expect("commit_submission");
    }
    let records = store
        .list_records("demo", &RecordFilter::default(), 100, None)
        .expect("list_records")
        .records;
    assert_eq!(records.len(), 6);
    let at = records[0].registered_at + 5;
    let outcomes = [
        Outcome::Success { status: 200 },
        Outcome::Retryable {
            status: Some(503),
            retry_after: None,
            error: "remote answered 503".into(),
        },
        Outcome::Rejected {
            status: Some(400),
            error: "remote answered 400".into(),
        },
    ];
    for (record, outcome) in records.iter().zip(outcomes) {
        let attempt = answered_200(at);
        store
            .commit_attempt(attempt_result(record.seq, outcome, Some(&attempt)))
            .await
            .expect("commit_attempt");
    }
    let object = |kind: &'static str, name: &str, value: &[u8]| ObjectChange {
        kind,
        domain: "demo".into(),
        name: name.into(),
        value: Some(value.to_vec()),
    };
    store
        .put_objects(vec![
            object("connection", "remote", b"sealed \x00\xff bytes"),
            object("repeater", "forms", b"{\"id\":1}"),
        ])
        .await
        .expect("put_objects");
    store
        .put_notifications(vec![("demo".into(), "remote".into(), Some(vec![7u32, 8]))])
        .await
        .expect("put_notifications");
    for _ in 0..3 {
        store
            .allocate_repeater_id()
            .await
            .expect("allocate_repeater_id");
    }
    store
}

/// Every value of a redb table, by its key shown as text.
fn redb_values<K: redb::Key + 'static>(
    store: &Store,
    table: redb::TableDefinition<K, &'static [u8]>,
    key: impl Fn(K::SelfType<'_>) -> String,
) -> BTreeMap<String, Vec<u8>> {
    let txn = store.db.begin_read().expect("begin_read");
    let table = txn.open_table(table).expect("open_table");
    table
        .iter()
        .expect("iter")
        .map(|entry| {
            let (k, v) = entry.expect("entry");
            (key(k.value()), v.value().to_vec())
        })
        .collect()
}

/// Every value of a PostgreSQL table, by its key columns joined with `/`.
async fn pg_values(pg: &PgStore, query: &str) -> BTreeMap<String, Vec<u8>> {
    let client = pg.client().await.expect("client");
    client
        .query(query, &[])
        .await
        .expect(query)
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, Vec<u8>>(1)))
        .collect()
}

async fn count_rows(pg: &PgStore) -> Vec<i64> {
    let client = pg.client().await.expect("client");
    let mut counts = Vec::new();
    for table in [
        "forms",
        "cases",
        "records",
        "attempts",
        "objects",
        "notifications",
    ] {
        let row = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .expect("count");
        counts.push(row.get(0));
    }
    counts
}

#[tokio::test]
async fn an_import_copies_every_row_byte_for_byte_with_counters_and_nonce() {
    let redb = filled_store().await;
    let url = fresh_url().await;
    let mut export = redb.export().expect("export");
    let counts = connect(&url)
        .await
        .import(&mut export)
        .await
        .expect("import");
    assert_eq!(
        counts,
        ImportCounts {
            forms: 3,
            cases: 2,
            records: 6,
            attempts: 3,
            objects: 2,
            notifications: 1,
        }
    );
    let pg = connect(&url).await;

    // Values, byte for byte.
    let forms = redb_values(&redb, FORMS, |(d, f)| format!("{d}/{f}"));
    let pg_forms = pg_values(&pg, "SELECT domain || '/' || form_id, value FROM forms").await;
    assert_eq!(pg_forms, forms);
    let cases = redb_values(&redb, CASES, |(d, c)| format!("{d}/{c}"));
    let pg_cases = pg_values(&pg, "SELECT domain || '/' || case_id, value FROM cases").await;
    assert_eq!(pg_cases, cases);
    let records = redb_values(&redb, RECORDS, |seq| seq.to_string());
    let pg_records = pg_values(&pg, "SELECT seq::text, value FROM records").await;
    assert_eq!(pg_records, records);
    let attempts = redb_values(&redb, ATTEMPTS, |(seq, n)| format!("{seq}/{n}"));
    let pg_attempts = pg_values(
        &pg,
        "SELECT seq::text || '/' || number::text, value FROM attempts",
    )
    .await;
    assert_eq!(pg_attempts, attempts);
    let objects = redb_values(&redb, OBJECTS, |(k, d, n)| format!("{k}/{d}/{n}"));
    let pg_objects = pg_values(
        &pg,
        "SELECT kind || '/' || domain || '/' || name, value FROM objects",
    )
    .await;
    assert_eq!(pg_objects, objects);
    assert_eq!(
        objects.get("connection/demo/remote").map(Vec::as_slice),
        Some(b"sealed \x00\xff bytes".as_slice())
    );
    let notifications = redb_values(&redb, NOTIFICATIONS, |(d, c)| format!("{d}/{c}"));
    let pg_notifications = pg_values(
        &pg,
        "SELECT domain || '/' || connection, value FROM notifications",
    )
    .await;
    assert_eq!(pg_notifications, notifications);

    let client = pg.client().await.expect("client");
    // The derived columns agree with the values.
    for row in client
        .query(
            "SELECT domain, form_id, indexed_on, received_key, xmlns, app_id, xml_bytes FROM forms",
            &[],
        )
        .await
        .expect("forms")
    {
        let (domain, form_id): (String, String) = (row.get(0), row.get(1));
        let form = redb.form(&domain, &form_id).unwrap().expect("the form");
        let xml = redb.form_xml(&domain, &form_id).unwrap().expect("its XML");
        let indexed_on = redb.form_indexed_on(&domain, &form_id).unwrap();
        assert_eq!(Some(row.get::<_, i64>(2)), indexed_on, "{form_id}");
        let received = crate::time::parse_timestamp(&form.received_on).expect("received_on");
        assert_eq!(row.get::<_, i64>(3), received, "{form_id}");
        assert_eq!(row.get::<_, String>(4), form.xmlns);
        assert_eq!(row.get::<_, Option<String>>(5), form.app_id);
        assert_eq!(row.get::<_, i64>(6), xml.len() as i64);
    }
    for row in client
        .query(
            "SELECT domain, case_id, indexed_on, case_type, modified_key FROM cases",
            &[],
        )
        .await
        .expect("cases")
    {
        let (domain, case_id): (String, String) = (row.get(0), row.get(1));
        let case = redb.case(&domain, &case_id).unwrap().expect("the case");
        let indexed_on = redb.case_indexed_on(&domain, &case_id).unwrap();
        assert_eq!(Some(row.get::<_, i64>(2)), indexed_on, "{case_id}");
        assert_eq!(row.get::<_, String>(3), case.case_type);
        let modified = crate::time::parse_timestamp(&case.server_date_modified).unwrap();
        assert_eq!(row.get::<_, i64>(4), modified, "{case_id}");
    }
    let final_since: HashSet<u64> = {
        let txn = redb.db.begin_read().unwrap();
        let table = txn.open_table(FINAL_SINCE).unwrap();
        table
            .iter()
            .unwrap()
            .map(|e| e.unwrap().0.value())
            .collect()
    };
    let mut states = Vec::new();
    for row in client
        .query(
            "SELECT seq, domain, repeater, repeater_id, payload_id, state, due, final_since,
                    leased_until, leased_by
             FROM records ORDER BY seq",
            &[],
        )
        .await
        .expect("records")
    {
        let seq = row.get::<_, i64>(0) as u64;
        let record = redb.record(seq).unwrap().expect("the record");
        assert_eq!(row.get::<_, String>(1), record.domain);
        assert_eq!(row.get::<_, String>(2), record.repeater);
        assert_eq!(row.get::<_, i64>(3) as u64, record.repeater_id);
        assert_eq!(row.get::<_, String>(4), record.payload.payload_id());
        assert_eq!(row.get::<_, String>(5), record.state.as_str());
        let queued = record.state.is_queued();
        assert_eq!(
            row.get::<_, Option<i64>>(6),
            record.next_attempt_at.filter(|_| queued),
            "record {seq} ({:?})",
            record.state
        );
        assert_eq!(
            row.get::<_, Option<i64>>(7).is_some(),
            !queued,
            "record {seq}"
        );
        assert_eq!(final_since.contains(&seq), !queued, "record {seq}");
        assert_eq!(row.get::<_, Option<i64>>(8), None);
        assert_eq!(row.get::<_, Option<String>>(9), None);
        states.push(record.state);
    }
    for state in [
        RecordState::Succeeded,
        RecordState::Pending,
        RecordState::Rejected,
    ] {
        assert!(states.contains(&state), "a {state:?} record: {states:?}");
    }

    // Counters: the nonce (so record ids are the same), the sequences and
    // each domain's last indexed_on.
    let last_seq = {
        let txn = redb.db.begin_read().unwrap();
        let table = txn.open_table(RECORDS).unwrap();
        table.last().unwrap().expect("records").0.value()
    };
    for seq in 1..=last_seq {
        let id = redb.record_id(seq);
        assert_eq!(pg.record_id(seq), id);
        assert_eq!(pg.parse_record_id(&id), Some(seq));
    }
    let sequence = |name: &str| {
        let client = &client;
        let query = format!("SELECT last_value, is_called FROM {name}");
        async move {
            let row = client.query_one(&query, &[]).await.expect("sequence");
            (row.get::<_, i64>(0), row.get::<_, bool>(1))
        }
    };
    assert_eq!(sequence("record_seq").await, (last_seq as i64, true));
    // Three ids handed out: the next one is 4, in both stores.
    assert_eq!(sequence("repeater_id_seq").await, (3, true));
    assert_eq!(pg.allocate_repeater_id().await.unwrap(), 4);
    assert_eq!(redb.allocate_repeater_id().await.unwrap(), 4);
    let row = client
        .query_one(
            "SELECT last_indexed_on FROM domain_counters WHERE domain = 'demo'",
            &[],
        )
        .await
        .expect("domain_counters");
    let redb_last = {
        let txn = redb.db.begin_read().unwrap();
        let table = txn.open_table(LAST_INDEXED_ON).unwrap();
        table.get("demo").unwrap().expect("demo's counter").value()
    };
    assert_eq!(row.get::<_, i64>(0) as u64, redb_last);
}

#[tokio::test]
async fn an_import_into_a_database_with_rows_is_refused_and_changes_nothing() {
    let url = fresh_url().await;
    let first = connect(&url).await;
    let nonce_id = first.record_id(1);
    first
        .put_objects(vec![ObjectChange {
            kind: "repeater",
            domain: "other".into(),
            name: "kept".into(),
            value: Some(b"x".to_vec()),
        }])
        .await
        .expect("put_objects");
    let before = count_rows(&first).await;

    let redb = filled_store().await;
    let mut export = redb.export().expect("export");
    let error = connect(&url)
        .await
        .import(&mut export)
        .await
        .expect_err("the database has an object");
    assert!(matches!(error, ImportError::NotEmpty { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains("is not empty"), "{message}");
    assert!(!message.contains(":repeatd@"), "no password: {message}");

    let after = connect(&url).await;
    assert_eq!(count_rows(&after).await, before);
    assert_eq!(
        after.record_id(1),
        nonce_id,
        "the nonce is the database's own"
    );
    assert_eq!(
        after.objects("repeater").await.unwrap(),
        [("other".to_owned(), "kept".to_owned(), b"x".to_vec())]
    );
}

#[tokio::test]
async fn a_second_import_of_the_same_store_is_refused() {
    let redb = filled_store().await;
    let url = fresh_url().await;
    let mut export = redb.export().expect("export");
    connect(&url)
        .await
        .import(&mut export)
        .await
        .expect("import");
    let before = count_rows(&connect(&url).await).await;
    let mut again = redb.export().expect("export");
    let error = connect(&url).await.import(&mut again).await.unwrap_err();
    assert!(matches!(error, ImportError::NotEmpty { .. }), "{error}");
    assert_eq!(count_rows(&connect(&url).await).await, before);
}

#[tokio::test]
async fn migrate_refuses_a_directory_without_a_store() {
    let dir = crate::store::tests::TempDir::new("migrate-empty");
    std::fs::create_dir_all(&dir.0).unwrap();
    // No database is reached: the directory is checked first.
    let error = super::migrate(&dir.0, "postgres://u:p@127.0.0.1:1/db")
        .await
        .unwrap_err();
    assert!(matches!(error, ImportError::NoStore(_)), "{error}");
    assert!(
        error.to_string().contains("holds no repeatd.redb"),
        "{error}"
    );
}

#[tokio::test]
async fn migrate_copies_a_closed_store_and_refuses_an_open_one() {
    let dir = crate::store::tests::TempDir::new("migrate");
    let url = fresh_url().await;
    let store = Store::open(&dir.0).expect("open");
    store
        .commit_submission(submission("f1", "c1", "new"))
        .await
        .expect("commit_submission");
    let id = store.record_id(1);
    let error = super::migrate(&dir.0, &url).await.unwrap_err();
    assert!(matches!(error, ImportError::StoreInUse(_)), "{error}");
    assert!(error.to_string().contains("stop the gateway"), "{error}");
    drop(store);

    let counts = super::migrate(&dir.0, &url).await.expect("migrate");
    assert_eq!((counts.forms, counts.cases, counts.records), (1, 1, 2));
    let pg = connect(&url).await;
    assert_eq!(pg.parse_record_id(&id), Some(1));
}

#[tokio::test]
async fn a_store_of_many_batches_is_copied_whole() {
    let redb = memory_store();
    let n_objects = 2_345;
    let changes = (0..n_objects)
        .map(|n| ObjectChange {
            kind: "connection",
            domain: "demo".into(),
            name: format!("c{n:05}"),
            value: Some(vec![(n % 251) as u8; 5_000]),
        })
        .collect();
    redb.put_objects(changes).await.expect("put_objects");
    let url = fresh_url().await;
    let mut export = redb.export().expect("export");
    let counts = connect(&url)
        .await
        .import(&mut export)
        .await
        .expect("import");
    assert_eq!(counts.objects, n_objects);
    let pg = connect(&url).await;
    let objects = redb_values(&redb, OBJECTS, |(k, d, n)| format!("{k}/{d}/{n}"));
    let pg_objects = pg_values(
        &pg,
        "SELECT kind || '/' || domain || '/' || name, value FROM objects",
    )
    .await;
    assert_eq!(pg_objects.len() as u64, n_objects);
    assert!(pg_objects == objects, "every object, byte for byte");
}

#[tokio::test]
async fn an_import_that_fails_part_way_leaves_the_database_empty() {
    let redb = filled_store().await;
    // An attempt of a record that is not there: PostgreSQL's foreign key
    // refuses it, after every other table has been copied.
    redb.write(|tables| {
        tables.attempts.insert((999, 1), [2u8, 0].as_slice())?;
        Ok(())
    })
    .await
    .expect("an orphan attempt");
    let url = fresh_url().await;
    let nonce_id = connect(&url).await.record_id(1);
    let mut export = redb.export().expect("export");
    let error = connect(&url)
        .await
        .import(&mut export)
        .await
        .expect_err("the orphan attempt is refused");
    assert!(error.to_string().contains("attempts"), "{error}");
    let after = connect(&url).await;
    assert!(
        after.is_empty().await.unwrap(),
        "nothing of the import stays"
    );
    assert_eq!(count_rows(&after).await, [0; 6]);
    assert_eq!(after.record_id(1), nonce_id, "the database keeps its nonce");
    assert_eq!(after.allocate_repeater_id().await.unwrap(), 1);
}
