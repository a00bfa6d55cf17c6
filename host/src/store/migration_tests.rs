//! A store written by repeatd before schema 2 (JSON values, each form's XML
//! and `indexed_on` in tables of their own) opens and reads as it did:
//! `migration` rewrites its forms and cases, its records are read as they
//! are, and what an even older store lacked (the Data API's indexes, the
//! state index) is backfilled in the same start.

use std::collections::BTreeMap;
use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::encoding::encode_json;
use super::migration::{CASE_INDEXED_ON_1, DOMAIN_RECORDS_1, FORM_INDEXED_ON_1, FORM_XML_1};
use super::tests::{TempDir, submission};
use super::*;

/// What an earlier repeatd's files hold besides forms, cases and records.
#[derive(Clone, Copy, PartialEq)]
enum Before {
    /// Before the Data API and the state index: neither they nor their
    /// markers are there.
    TheIndexes,
    /// Schema 1 with `indexed_on` of forms and cases (from 1,000 on), as
    /// the last repeatd of schema 1 wrote it.
    Schema2,
}

/// Writes forms f1..=fn (each creating case cn, c1 updated by every form
/// too) as a schema-1 repeatd did: plans as `writes` does, JSON values.
fn write_schema_1_store(dir: &Path, n: usize, before: Before) {
    std::fs::create_dir_all(dir).unwrap();
    let db = Database::create(dir.join("repeatd.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut meta = txn.open_table(META).unwrap();
        meta.insert("schema_version", 1).unwrap();
        meta.insert("nonce", 7).unwrap();
        if before == Before::Schema2 {
            meta.insert("data_api_indexed", 1).unwrap();
            meta.insert("state_records_indexed", 1).unwrap();
        }
        let mut forms = txn.open_table(FORMS).unwrap();
        let mut xml = txn.open_table(FORM_XML_1).unwrap();
        let mut cases = txn.open_table(CASES).unwrap();
        let mut records = txn.open_table(RECORDS).unwrap();
        let mut due = txn.open_table(DUE).unwrap();
        let mut domain_records = txn.open_table(DOMAIN_RECORDS_1).unwrap();
        let mut payload_records = txn.open_table(PAYLOAD_RECORDS).unwrap();
        let mut state_counts = txn.open_table(STATE_COUNTS).unwrap();
        let mut state_records = txn.open_table(STATE_RECORDS).unwrap();
        let mut form_indexed_on = txn.open_table(FORM_INDEXED_ON_1).unwrap();
        let mut case_indexed_on = txn.open_table(CASE_INDEXED_ON_1).unwrap();
        let mut stored_cases: BTreeMap<String, Case> = BTreeMap::new();
        let mut seq = 0;
        for i in 1..=n {
            let mut form = submission(&format!("f{i}"), &format!("c{i}"), "new");
            form.form.received_on = format!("2026-01-02T03:04:{:02}.000000Z", i);
            form.case_blocks
                .push(crate::submission::tests::update_block(
                    "c1",
                    "visits",
                    &i.to_string(),
                ));
            let existing = stored_cases
                .iter()
                .filter(|(id, _)| form.case_blocks.iter().any(|b| b.case_id == **id))
                .map(|(id, case)| (id.clone(), case.clone()))
                .collect();
            let plan =
                crate::submission::plan(form.form, &form.case_blocks, existing, &form.repeaters);
            let key = ("demo", plan.form.form_id.as_str());
            forms
                .insert(key, encode_json(&plan.form).as_slice())
                .unwrap();
            xml.insert(key, form.xml.as_slice()).unwrap();
            if before == Before::Schema2 {
                form_indexed_on.insert(key, 1_000 + i as u64).unwrap();
            }
            for case in &plan.cases {
                let key = ("demo", case.case_id.as_str());
                cases.insert(key, encode_json(case).as_slice()).unwrap();
                if before == Before::Schema2 {
                    case_indexed_on.insert(key, 2_000 + i as u64).unwrap();
                }
                stored_cases.insert(case.case_id.clone(), case.clone());
            }
            for planned in &plan.records {
                seq += 1;
                let record = RepeatRecord::new(
                    seq,
                    planned.domain,
                    planned.repeater,
                    planned.repeater_id,
                    planned.kind,
                    planned.payload.clone(),
                    1_767_323_045_000_000,
                );
                records
                    .insert(seq, encode_json(&record).as_slice())
                    .unwrap();
                due.insert((record.repeater_id, 1_767_323_045_000_000, seq), ())
                    .unwrap();
                domain_records.insert(("demo", seq), ()).unwrap();
                payload_records
                    .insert(("demo", record.payload.payload_id(), seq), ())
                    .unwrap();
                let state_key = (record.repeater_id, "pending");
                let count = state_counts
                    .get(state_key)
                    .unwrap()
                    .map_or(0, |v| v.value());
                state_counts.insert(state_key, count + 1).unwrap();
                if before == Before::Schema2 {
                    state_records
                        .insert(("demo", "pending", record.repeater.as_str(), seq), ())
                        .unwrap();
                }
            }
        }
    }
    txn.commit().unwrap();
}

#[tokio::test]
async fn a_store_from_before_the_indexes_opens_migrated_and_indexed() {
    let dir = TempDir::new("schema-1-oldest");
    write_schema_1_store(&dir.0, 3, Before::TheIndexes);
    let store = RedbStore::open(&dir.0).unwrap();

    let form = store.form("demo", "f2").unwrap().unwrap();
    assert_eq!(form.case_ids, ["c2", "c1"]);
    assert_eq!(
        store.form_xml("demo", "f2").unwrap().unwrap(),
        b"<data id=\"f2\"/>"
    );
    let c1 = store.case("demo", "c1").unwrap().unwrap();
    assert_eq!(c1.xform_ids, ["f1", "f2", "f3"]);
    // Forms by received_on, then cases by server_date_modified: the order
    // they were stored in.
    let listed = store
        .list_forms(
            "demo",
            &FormScope::All,
            &ListingRange::default(),
            (0, 10),
            None,
        )
        .unwrap();
    let ids: Vec<&str> = listed
        .objects
        .iter()
        .map(|f| f.form.form_id.as_str())
        .collect();
    assert_eq!(ids, ["f1", "f2", "f3"]);
    assert_eq!(listed.total_count, 3);
    assert_eq!(listed.objects[1].xml, b"<data id=\"f2\"/>");
    assert!(listed.objects[0].indexed_on < listed.objects[1].indexed_on);
    let cases = store
        .list_cases(
            "demo",
            &CaseScope::All,
            &ListingRange::default(),
            (0, 10),
            None,
        )
        .unwrap();
    assert_eq!(cases.total_count, 3);

    // Records written as JSON read as they were, and are indexed by state.
    let pending = RecordFilter {
        state: Some(RecordState::Pending),
        ..RecordFilter::default()
    };
    let page = store.list_records("demo", &pending, 50, None).unwrap();
    assert_eq!(
        page.records.len(),
        3 + 5,
        "a form record each, a case record per case touched"
    );
    let form_record = page
        .records
        .iter()
        .find(|r| r.payload.payload_id() == "f2")
        .unwrap();
    let Some((
        _,
        SendSource::Form {
            xml, indexed_on, ..
        },
    )) = store.load_for_send(form_record.seq).unwrap()
    else {
        panic!("f2's record sends f2");
    };
    assert_eq!(xml, b"<data id=\"f2\"/>");
    assert_eq!(
        Some(indexed_on),
        store.form_indexed_on("demo", "f2").unwrap()
    );
    assert_eq!(store.state_counts().unwrap()[&(2, RecordState::Pending)], 5);
    // The domain's figures are counted in the same start, the XML's bytes
    // from the migrated forms' values (as submitted, not as compressed).
    let stats = store.domain_stats("demo").unwrap();
    assert_eq!(stats.records[&RecordState::Pending], 8);
    assert_eq!(stats.records[&RecordState::Succeeded], 0);
    assert_eq!((stats.forms, stats.cases), (3, 3));
    assert_eq!(stats.form_xml_bytes, 3 * b"<data id=\"f1\"/>".len() as u64);
    {
        let txn = store.db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert!(meta.get("final_records_indexed").unwrap().is_some());
        assert!(meta.get("domain_counts_counted").unwrap().is_some());
    }

    // The old tables are gone; new forms come after the old ones and change
    // the migrated cases as before.
    {
        let txn = store.db.begin_read().unwrap();
        assert!(txn.open_table(FORM_XML_1).is_err());
        assert!(txn.open_table(FORM_INDEXED_ON_1).is_err());
        assert!(txn.open_table(CASE_INDEXED_ON_1).is_err());
        assert!(txn.open_table(DOMAIN_RECORDS_1).is_err());
    }
    let every = store
        .list_records("demo", &RecordFilter::default(), 50, None)
        .unwrap();
    assert_eq!(every.records.len(), 8, "listed from the state index");
    let mut later = submission("f4", "c1", "seen");
    later.case_blocks.truncate(1);
    later.case_blocks[0] = crate::submission::tests::update_block("c1", "status", "seen");
    store.commit_submission(later).await.unwrap();
    let c1 = store.case("demo", "c1").unwrap().unwrap();
    assert_eq!(c1.xform_ids, ["f1", "f2", "f3", "f4"]);
    assert_eq!(
        store.case_indexed_on("demo", "c1").unwrap(),
        store
            .form_indexed_on("demo", "f4")
            .unwrap()
            .map(|at| at + 1)
    );
    let seqs: Vec<u64> = store
        .list_records("demo", &pending, 50, None)
        .unwrap()
        .records
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs[..2], [10, 9], "new records follow the old ones");
    drop(store);

    // Opened again, it is a schema-2 store like any other.
    let store = RedbStore::open(&dir.0).unwrap();
    assert_eq!(store.form("demo", "f4").unwrap().unwrap().case_ids, ["c1"]);
    assert_eq!(
        store.form_xml("demo", "f1").unwrap().unwrap(),
        b"<data id=\"f1\"/>"
    );
}

#[tokio::test]
async fn a_schema_1_store_keeps_the_indexed_on_of_its_forms_and_cases() {
    let dir = TempDir::new("schema-1");
    write_schema_1_store(&dir.0, 2, Before::Schema2);
    let store = RedbStore::open(&dir.0).unwrap();
    assert_eq!(store.form_indexed_on("demo", "f1").unwrap(), Some(1_001));
    assert_eq!(store.form_indexed_on("demo", "f2").unwrap(), Some(1_002));
    assert_eq!(store.case_indexed_on("demo", "c2").unwrap(), Some(2_002));
    assert_eq!(store.case_indexed_on("demo", "c1").unwrap(), Some(2_002));
    assert_eq!(
        store.form_xml("demo", "f2").unwrap().unwrap(),
        b"<data id=\"f2\"/>"
    );
    let record = store.record(1).unwrap().unwrap();
    assert_eq!(record.payload.payload_id(), "f1");
    assert_eq!(
        store.domain_stats("demo").unwrap().form_xml_bytes,
        2 * b"<data id=\"f1\"/>".len() as u64
    );
}

#[test]
fn a_form_without_its_xml_is_named_when_a_schema_1_store_opens() {
    let dir = TempDir::new("schema-1-no-xml");
    write_schema_1_store(&dir.0, 1, Before::Schema2);
    {
        let db = Database::open(dir.0.join("repeatd.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(FORM_XML_1)
            .unwrap()
            .remove(("demo", "f1"))
            .unwrap();
        txn.commit().unwrap();
    }
    let error = RedbStore::open(&dir.0).unwrap_err();
    assert_eq!(
        error.to_string(),
        "store: form f1 is not readable: its XML is not in the store"
    );
    // Nothing was changed: the file is still schema 1.
    let db = Database::open(dir.0.join("repeatd.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let version = txn
        .open_table(META)
        .unwrap()
        .get("schema_version")
        .unwrap()
        .map(|v| v.value());
    assert_eq!(version, Some(1));
}
