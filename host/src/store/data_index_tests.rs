//! The Data API's indexes: `indexed_on` grows strictly within a domain and
//! moves with a case; listings page, narrow and count as `data_index` says;
//! a store written before the indexes gets them when it is opened
//! (`migration_tests`).

use super::tests::{memory_store, submission};
use super::*;

fn all_forms(store: &RedbStore, range: &ListingRange) -> Listed<ListedForm> {
    store
        .list_forms("demo", &FormScope::All, range, (0, 1000), None)
        .unwrap()
}

/// demo's cases in `scope`, as (ids, total_count).
fn cases_in(store: &RedbStore, scope: CaseScope) -> (Vec<String>, u64) {
    let listed = store
        .list_cases("demo", &scope, &ListingRange::default(), (0, 10), None)
        .unwrap();
    let ids = listed
        .objects
        .iter()
        .map(|(case, _)| case.case_id.clone())
        .collect();
    (ids, listed.total_count)
}

/// `store` after forms f1..=fn, each creating case c1, c2, ….
async fn with_forms(store: RedbStore, n: usize) -> RedbStore {
    for n in 1..=n {
        let form = submission(&format!("f{n}"), &format!("c{n}"), "new");
        store.commit_submission(form).await.unwrap();
    }
    store
}

fn form_ids(listed: &Listed<ListedForm>) -> Vec<String> {
    listed
        .objects
        .iter()
        .map(|f| f.form.form_id.clone())
        .collect()
}

#[tokio::test]
async fn indexed_on_grows_strictly_even_when_the_clock_stands_still() {
    // Every form of these tests has the same received_on, and commits within
    // the same microsecond are likely: the order still holds.
    let store = with_forms(memory_store(), 5).await;
    let listed = all_forms(&store, &ListingRange::default());
    assert_eq!(form_ids(&listed), ["f1", "f2", "f3", "f4", "f5"]);
    assert_eq!(listed.total_count, 5);
    let times: Vec<i64> = listed.objects.iter().map(|f| f.indexed_on).collect();
    assert!(times.windows(2).all(|pair| pair[0] < pair[1]), "{times:?}");
    for form in &listed.objects {
        assert_eq!(
            store.form_indexed_on("demo", &form.form.form_id).unwrap(),
            Some(form.indexed_on)
        );
    }
    // The cases came after their forms.
    let c5 = store.case_indexed_on("demo", "c5").unwrap().unwrap();
    assert!(c5 > times[4]);
}

#[tokio::test]
async fn a_changed_case_moves_to_the_end_of_the_listing_and_between_types() {
    let store = memory_store();
    for (form_id, case_id) in [("f1", "c1"), ("f2", "c2")] {
        let form = submission(form_id, case_id, "new");
        store.commit_submission(form).await.unwrap();
    }
    let before = store.case_indexed_on("demo", "c1").unwrap().unwrap();
    let mut update = submission("f3", "c1", "seen");
    update.case_blocks[0] = crate::submission::tests::create_block("c1", "visited");
    store.commit_submission(update).await.unwrap();
    let after = store.case_indexed_on("demo", "c1").unwrap().unwrap();
    assert!(after > before);
    assert_eq!(
        cases_in(&store, CaseScope::All),
        (vec!["c2".to_owned(), "c1".to_owned()], 2)
    );
    let of_type = |case_type: &str| cases_in(&store, CaseScope::Type(case_type.into()));
    assert_eq!(of_type("patient"), (vec!["c2".to_owned()], 1));
    assert_eq!(of_type("visited"), (vec!["c1".to_owned()], 1));
}

#[tokio::test]
async fn listings_page_by_offset_and_by_range_and_count_what_matches() {
    let store = with_forms(memory_store(), 6).await;
    let everything = all_forms(&store, &ListingRange::default());
    let third = everything.objects[2].indexed_on;
    let page = store
        .list_forms(
            "demo",
            &FormScope::All,
            &ListingRange::default(),
            (2, 2),
            None,
        )
        .unwrap();
    assert_eq!(form_ids(&page), ["f3", "f4"]);
    assert_eq!(page.total_count, 6);
    let from_third = ListingRange {
        start: Some(third),
        ..ListingRange::default()
    };
    let page = store
        .list_forms("demo", &FormScope::All, &from_third, (0, 2), None)
        .unwrap();
    assert_eq!(form_ids(&page), ["f3", "f4"]);
    assert_eq!(page.total_count, 4);
    let newest_first = ListingRange {
        end: Some(third),
        descending: true,
        ..ListingRange::default()
    };
    let page = all_forms(&store, &newest_first);
    assert_eq!(form_ids(&page), ["f2", "f1"]);
    let odd = |form: &StoredForm, _: i64| form.form_id.ends_with(['1', '3', '5']);
    let page = store
        .list_forms(
            "demo",
            &FormScope::All,
            &ListingRange::default(),
            (1, 1),
            Some(&odd),
        )
        .unwrap();
    assert_eq!(form_ids(&page), ["f3"]);
    assert_eq!(page.total_count, 3);
    let other_xmlns = store
        .list_forms(
            "demo",
            &FormScope::Xmlns("http://example.org/other".into()),
            &ListingRange::default(),
            (0, 10),
            None,
        )
        .unwrap();
    assert_eq!(other_xmlns.total_count, 0);
    let other_domain = store
        .list_forms(
            "elsewhere",
            &FormScope::All,
            &ListingRange::default(),
            (0, 10),
            None,
        )
        .unwrap();
    assert!(other_domain.objects.is_empty());
}

#[tokio::test]
async fn a_form_that_gains_a_later_parts_attachments_moves_to_the_end_of_the_listing() {
    let store = with_forms(memory_store(), 2).await;
    let before = store.form_indexed_on("demo", "f1").unwrap().unwrap();
    let mut later = submission("f1", "c1", "new");
    later.form.attachments = vec![crate::model::Attachment {
        name: "b.jpg".into(),
        content_type: "image/jpeg".into(),
        size: 20,
    }];
    let result = store.commit_submission(later).await.unwrap();
    assert_eq!(result, IngestResult::AttachmentsAdded { n_added: 1 });

    let after = store.form_indexed_on("demo", "f1").unwrap().unwrap();
    assert!(after > before, "{before} then {after}");
    let listed = all_forms(&store, &ListingRange::default());
    assert_eq!(form_ids(&listed), ["f2", "f1"], "listed once, last");
    assert_eq!(listed.total_count, 2, "counted once");
}
