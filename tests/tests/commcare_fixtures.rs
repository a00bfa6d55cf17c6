//! The gateway against CommCare's own test data, which the project does not
//! carry: CommCare HQ's case fixtures and the acceptance seed form, submitted
//! raw and as OpenRosa multipart, are forwarded byte for byte and build the
//! case states HQ builds, field by field; the project's case-list example has
//! the shape of HQ's Case API answer.
//!
//! Not part of `./test.sh`: `.ci/run` runs it where the project's `shared`
//! folder sits beside the repository, as
//! `REPEATD_SHARED=../shared cargo nextest run -p repeatd-tests --features commcare-fixtures --test commcare_fixtures`.
//! Without `REPEATD_SHARED` naming that folder every test here fails, saying so.

use std::path::PathBuf;

use repeatd_tests::fixture_session::*;
use repeatd_tests::*;
use serde_json::Value;

/// The `shared` folder named by `REPEATD_SHARED`; panics if it is unset or
/// is not that folder.
fn shared() -> PathBuf {
    let Some(dir) = std::env::var_os("REPEATD_SHARED") else {
        panic!(
            "REPEATD_SHARED is not set: set it to the project's shared folder \
             (the one holding fixtures/commcare and acceptance/seed_form.xml)"
        );
    };
    let dir = PathBuf::from(dir);
    let marker = dir.join("fixtures/commcare/SOURCES.md");
    assert!(
        marker.is_file(),
        "REPEATD_SHARED={} is not the shared folder: {} is missing",
        dir.display(),
        marker.display()
    );
    dir
}

// ---- the case states CommCare builds -----------------------------------------------------

/// `tests/fixtures/commcare_case_states.json` says, for each of HQ's fixtures and
/// the acceptance seed form, what every case must look like afterwards (the
/// format: `fixture_session::check_case_states`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commcare_fixture_raw_and_multipart_builds_commcare_case_states() {
    check_case_states(&shared(), &fixture("commcare_case_states.json")).await;
}

// ---- the case-list example ---------------------------------------------------------------

/// The keys of a JSON object, sorted.
fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn the_projects_case_list_example_has_the_shape_of_commcares() {
    let read = |path: PathBuf| -> Value {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()))
    };
    let commcare = read(shared().join("fixtures/commcare/case_v1/list_response.json"));
    let ours = read(fixture("case_list.json"));
    assert_eq!(keys(&ours), keys(&commcare), "the envelope");
    assert_eq!(keys(&ours["meta"]), keys(&commcare["meta"]), "meta");
    let (ours, commcare) = (&ours["objects"][0], &commcare["objects"][0]);
    assert_eq!(keys(ours), keys(commcare), "a case object");
    // Every property of our example but its one custom property ("flow") is
    // a fixed one, which CommCare's example must have too.
    for key in keys(&ours["properties"]) {
        assert!(
            key == "flow" || commcare["properties"].get(&key).is_some(),
            "CommCare's example has properties.{key} too"
        );
    }
}
