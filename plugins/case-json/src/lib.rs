//! `case-json`: forwards a case's current state as CommCare HQ's case JSON
//! (the shape its case repeater's JSON format and case API share).
//!
//! The body is one compact JSON object with its keys in alphabetical order:
//!
//! ```json
//! {"case_id": .., "closed": false, "date_closed": null, "date_modified": ..,
//!  "domain": .., "indices": {"IDENTIFIER": {"case_id", "case_type", "relationship"}},
//!  "properties": {"case_name", "case_type", "date_opened", "external_id", "owner_id", ..},
//!  "server_date_modified": .., "server_date_opened": .., "user_id": ..,
//!  "version": "2.0", "xform_ids": [..]}
//! ```
//!
//! `date_closed` is null while the case is open and `external_id` is null
//! when the case has none. The request carries `Server-Modified-On`.

wit_bindgen::generate!({ world: "payload-format", path: "../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Case, Event, FormatInfo, Pair, Payload, PayloadKind, Request};
use serde_json::{Map, Value};

/// The name errors use for this plugin.
const PLUGIN_NAME: &str = "case-json";

/// The case JSON version CommCare stamps on every case.
const CASE_JSON_VERSION: &str = "2.0";

struct CaseJson;

impl Guest for CaseJson {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "The case's current state as CommCare case JSON".to_string(),
            kinds: vec![PayloadKind::Case],
        }
    }

    fn build(kind: PayloadKind, event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
        match (kind, event) {
            (PayloadKind::Case, Event::Case(case)) => Ok(Payload::Send(case_request(case))),
            (PayloadKind::Case, other_event) => Err(format!(
                "{PLUGIN_NAME} cannot build a case payload from {}",
                describe_event(&other_event)
            )),
            (other_kind, _) => Err(format!(
                "{PLUGIN_NAME} cannot build {}",
                describe_kind(other_kind)
            )),
        }
    }
}

export!(CaseJson);

/// The request for one case: its JSON and `Server-Modified-On`.
fn case_request(case: Case) -> Request {
    let server_date_modified = case.server_date_modified.clone();
    Request {
        body: case_json(case).to_string().into_bytes(),
        content_type: "application/json".to_string(),
        headers: vec![Pair {
            name: "Server-Modified-On".to_string(),
            value: server_date_modified,
        }],
        query: Vec::new(),
    }
}

/// The case as CommCare case JSON. `serde_json`'s map keeps keys sorted, so
/// the output is the same for the same case, whatever order its dynamic
/// properties were set in.
fn case_json(case: Case) -> Value {
    let mut properties: Map<String, Value> = case
        .properties
        .into_iter()
        .map(|property| (property.name, Value::String(property.value)))
        .collect();
    // The case's own fields win over a dynamic property of the same name.
    properties.insert("case_name".to_string(), case.case_name.into());
    properties.insert("case_type".to_string(), case.case_type.into());
    properties.insert("date_opened".to_string(), case.date_opened.into());
    properties.insert("external_id".to_string(), case.external_id.into());
    properties.insert("owner_id".to_string(), case.owner_id.into());

    let indices: Map<String, Value> = case
        .indices
        .into_iter()
        .map(|index| {
            let mut link = Map::new();
            link.insert("case_id".to_string(), index.case_id.into());
            link.insert("case_type".to_string(), index.case_type.into());
            link.insert("relationship".to_string(), index.relationship.into());
            (index.identifier, Value::Object(link))
        })
        .collect();

    let mut object = Map::new();
    object.insert("case_id".to_string(), case.case_id.into());
    object.insert("closed".to_string(), case.closed.into());
    object.insert("date_closed".to_string(), case.date_closed.into());
    object.insert("date_modified".to_string(), case.date_modified.into());
    object.insert("domain".to_string(), case.domain.into());
    object.insert("indices".to_string(), Value::Object(indices));
    object.insert("properties".to_string(), Value::Object(properties));
    object.insert(
        "server_date_modified".to_string(),
        case.server_date_modified.into(),
    );
    object.insert(
        "server_date_opened".to_string(),
        case.server_date_opened.into(),
    );
    object.insert("user_id".to_string(), case.user_id.into());
    object.insert("version".to_string(), CASE_JSON_VERSION.into());
    object.insert("xform_ids".to_string(), case.xform_ids.into());
    Value::Object(object)
}

fn describe_kind(kind: PayloadKind) -> &'static str {
    match kind {
        PayloadKind::Form => "a form payload",
        PayloadKind::Case => "a case payload",
        PayloadKind::FormStub => "a form-stub payload",
        PayloadKind::AppSchema => "an app-schema payload",
    }
}

fn describe_event(event: &Event) -> &'static str {
    match event {
        Event::Form(_) => "a form event",
        Event::Case(_) => "a case event",
        Event::App(_) => "an app event",
    }
}

#[cfg(test)]
#[path = "../../test_support.rs"]
mod test_support;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{self, SEED_BUILD_ID, app_event, pair, seed_case};
    use repeatd::plugin::types::{AppChange, CaseIndex};

    const MOTHER_CASE_ID: &str = "9dbce942-0163-438b-b3e5-67b473d2f719";
    const SHEEL_USER_ID: &str = "67bffa913b38e7901851d863ededa475";

    /// The first child case of fixtures `reg2.xml`, closed by `close.xml`,
    /// given a second, extension index to show both kinds.
    fn closed_reg2_child_case() -> Case {
        Case {
            domain: "demo".to_string(),
            case_id: "17e36de1-b9de-423c-a6a6-605d291ec976".to_string(),
            case_type: "cc_bihar_newborn".to_string(),
            case_name: "C1".to_string(),
            owner_id: "main_user".to_string(),
            user_id: SHEEL_USER_ID.to_string(),
            external_id: Some("C1-ext".to_string()),
            date_opened: "2012-05-25T10:00:31.704000Z".to_string(),
            date_modified: "2012-05-26T03:11:37.259000Z".to_string(),
            server_date_opened: "2012-05-25T10:01:02.000001Z".to_string(),
            server_date_modified: "2012-05-26T03:12:00.000000Z".to_string(),
            closed: true,
            date_closed: Some("2012-05-26T03:11:37.259000Z".to_string()),
            properties: vec![
                pair("gender", "female"),
                pair("dob", "2011-11-25"),
                pair("case_name", "not me"),
            ],
            indices: vec![
                CaseIndex {
                    identifier: "mother_id".to_string(),
                    case_type: "cc_bihar_pregnancy".to_string(),
                    case_id: MOTHER_CASE_ID.to_string(),
                    relationship: "child".to_string(),
                },
                CaseIndex {
                    identifier: "host".to_string(),
                    case_type: "cc_bihar_household".to_string(),
                    case_id: "household-1".to_string(),
                    relationship: "extension".to_string(),
                },
            ],
            xform_ids: vec![
                "91d014c5-02d9-4bfe-bd4c-c72f8624f6d2".to_string(),
                "b45aeae8-ba55-4541-ae2e-0ead6b5e1f31".to_string(),
            ],
            attachments: Vec::new(),
        }
    }

    fn sent_request(payload: Payload) -> Request {
        test_support::sent_request("case-json", payload)
    }

    #[test]
    fn seed_case_json_is_exact() {
        let request = sent_request(
            CaseJson::build(PayloadKind::Case, Event::Case(seed_case()), Vec::new()).unwrap(),
        );
        assert_eq!(
            String::from_utf8(request.body).unwrap(),
            concat!(
                r#"{"case_id":"5d0c2a7e-81f4-4b39-a6d2-9e3c70b1f4a8","closed":false,"date_closed":null,"#,
                r#""date_modified":"2015-04-17T20:04:54.950000Z","domain":"demo","indices":{},"#,
                r#""properties":{"case_name":"Baobab","case_type":"mscase","date_opened":"2015-04-17T20:04:54.950000Z","#,
                r#""external_id":null,"owner_id":"3a9f1c07e2b84d65a0c7f2e91b4d8c36"},"#,
                r#""server_date_modified":"2015-04-17T20:04:57.123456Z","server_date_opened":"2015-04-17T20:04:57.123456Z","#,
                r#""user_id":"3a9f1c07e2b84d65a0c7f2e91b4d8c36","version":"2.0","#,
                r#""xform_ids":["e4b1f7a2-3c58-4d0e-9f61-7a2b8c4d5e90"]}"#,
            )
        );
        assert_eq!(request.content_type, "application/json");
        assert_eq!(request.headers.len(), 1);
        assert_eq!(request.headers[0].name, "Server-Modified-On");
        assert_eq!(request.headers[0].value, "2015-04-17T20:04:57.123456Z");
        assert!(request.query.is_empty());
    }

    #[test]
    fn closed_indexed_case_json_is_exact() {
        let expected: Value = serde_json::from_str(
            r#"{
                "case_id": "17e36de1-b9de-423c-a6a6-605d291ec976",
                "closed": true,
                "date_closed": "2012-05-26T03:11:37.259000Z",
                "date_modified": "2012-05-26T03:11:37.259000Z",
                "domain": "demo",
                "indices": {
                    "host": {"case_id": "household-1", "case_type": "cc_bihar_household", "relationship": "extension"},
                    "mother_id": {"case_id": "9dbce942-0163-438b-b3e5-67b473d2f719", "case_type": "cc_bihar_pregnancy", "relationship": "child"}
                },
                "properties": {
                    "case_name": "C1",
                    "case_type": "cc_bihar_newborn",
                    "date_opened": "2012-05-25T10:00:31.704000Z",
                    "dob": "2011-11-25",
                    "external_id": "C1-ext",
                    "gender": "female",
                    "owner_id": "main_user"
                },
                "server_date_modified": "2012-05-26T03:12:00.000000Z",
                "server_date_opened": "2012-05-25T10:01:02.000001Z",
                "user_id": "67bffa913b38e7901851d863ededa475",
                "version": "2.0",
                "xform_ids": ["91d014c5-02d9-4bfe-bd4c-c72f8624f6d2", "b45aeae8-ba55-4541-ae2e-0ead6b5e1f31"]
            }"#,
        )
        .unwrap();
        let request = sent_request(
            CaseJson::build(
                PayloadKind::Case,
                Event::Case(closed_reg2_child_case()),
                Vec::new(),
            )
            .unwrap(),
        );
        // Byte equality with the re-serialised expectation pins key order
        // and compactness as well as the values.
        assert_eq!(
            String::from_utf8(request.body).unwrap(),
            expected.to_string()
        );
    }

    #[test]
    /// `tests/fixtures/case_list.json` has the shape of CommCare's Case API list
    /// answer (`tests/tests/commcare_fixtures.rs` checks it against CommCare's own).
    fn keys_match_the_case_api_list_example() {
        let fixture: Value =
            serde_json::from_str(include_str!("../../../tests/fixtures/case_list.json")).unwrap();
        let example = &fixture["objects"][0];
        let ours = case_json(seed_case());
        let case_api_only = ["closed_by", "id", "indexed_on", "opened_by", "resource_uri"];
        let mut expected_keys: Vec<String> = example
            .as_object()
            .unwrap()
            .keys()
            .filter(|key| !case_api_only.contains(&key.as_str()))
            .cloned()
            .collect();
        expected_keys.push("version".to_string());
        expected_keys.sort();
        let our_keys: Vec<String> = ours.as_object().unwrap().keys().cloned().collect();
        assert_eq!(our_keys, expected_keys);

        let fixed_property_keys = [
            "case_name",
            "case_type",
            "date_opened",
            "external_id",
            "owner_id",
        ];
        for key in fixed_property_keys {
            assert!(
                example["properties"].get(key).is_some(),
                "the example has properties.{key}"
            );
            assert!(
                ours["properties"].get(key).is_some(),
                "case-json has properties.{key}"
            );
        }
    }

    #[test]
    fn other_kinds_and_events_are_refused() {
        let error = CaseJson::build(PayloadKind::AppSchema, Event::Case(seed_case()), Vec::new())
            .unwrap_err();
        assert_eq!(error, "case-json cannot build an app-schema payload");

        let app_event = app_event(AppChange::Built, Some(SEED_BUILD_ID));
        let error = CaseJson::build(PayloadKind::Case, app_event, Vec::new()).unwrap_err();
        assert_eq!(
            error,
            "case-json cannot build a case payload from an app event"
        );
    }

    #[test]
    fn info_names_the_case_kind() {
        assert_eq!(CaseJson::info().kinds, [PayloadKind::Case]);
    }
}
