//! The case object of the Data API (SPEC section 11), in the shape of
//! CommCare HQ's example (`tests/fixtures/commcare-api/case_list_response.json`).
//! Pure.

use serde_json::{Map, Value, json};

use crate::model::Case;

/// A case as the Data API answers it; `indexed_on` in Unix micros, the API
/// version (`v0.5`) for `resource_uri`.
pub fn case_object(case: &Case, indexed_on: i64, api_version: &str) -> Value {
    let mut properties = Map::new();
    properties.insert("case_name".into(), json!(case.case_name));
    properties.insert("case_type".into(), json!(case.case_type));
    properties.insert("date_opened".into(), json!(case.date_opened));
    properties.insert("external_id".into(), json!(case.external_id));
    properties.insert(
        "owner_id".into(),
        json!(Some(&case.owner_id).filter(|owner| !owner.is_empty())),
    );
    for (name, value) in &case.properties {
        properties.insert(name.clone(), json!(value));
    }
    let indices: Map<String, Value> = case
        .indices
        .iter()
        .map(|index| {
            (
                index.identifier.clone(),
                json!({
                    "case_id": index.case_id,
                    "case_type": index.case_type,
                    "relationship": index.relationship,
                }),
            )
        })
        .collect();
    let domain = &case.domain;
    let case_id = &case.case_id;
    json!({
        "case_id": case_id,
        "id": case_id,
        "domain": domain,
        "closed": case.closed,
        "closed_by": case.closed_by,
        "date_closed": case.date_closed,
        "date_modified": case.date_modified,
        "indexed_on": crate::time::format_utc(indexed_on),
        "indices": indices,
        "opened_by": case.opened_by,
        "properties": properties,
        "resource_uri": format!("/a/{domain}/api/{api_version}/case/{case_id}/"),
        "server_date_modified": case.server_date_modified,
        "server_date_opened": case.server_date_opened,
        "user_id": case.user_id,
        "xform_ids": case.xform_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CaseIndex;

    const FIXTURE: &str =
        include_str!("../../../tests/fixtures/commcare-api/case_list_response.json");

    fn keys(value: &Value) -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn a_case_has_the_shape_of_commcares_example() {
        let list: Value = serde_json::from_str(FIXTURE).unwrap();
        let expected = &list["objects"][0];
        let case = Case {
            domain: "demo".into(),
            case_id: "45WKYXQRFFU3AT4Y022EX7HF2".into(),
            case_type: "programmer".into(),
            case_name: "ryan".into(),
            owner_id: String::new(),
            user_id: "06414101dc45bcfdc963b8cb1a1ebdfd".into(),
            opened_by: "06414101dc45bcfdc963b8cb1a1ebdfd".into(),
            external_id: Some("45WKYXQRFFU3AT4Y022EX7HF2".into()),
            date_opened: "2012-03-13T18:21:52Z".into(),
            date_modified: "2012-03-13T18:21:52Z".into(),
            server_date_opened: "2012-04-05T23:56:41Z".into(),
            server_date_modified: "2012-04-05T23:56:41Z".into(),
            closed: false,
            date_closed: None,
            closed_by: None,
            properties: vec![
                ("gender".into(), "m".into()),
                (
                    "languages".into(),
                    "python java javascript c php erlang love".into(),
                ),
                ("role".into(), "artisan".into()),
            ],
            indices: vec![],
            xform_ids: vec!["3HQEXR2S0GIRFY2GF40HAR7ZE".into()],
            attachments: vec![],
        };
        let indexed_on = crate::time::parse_timestamp("2012-04-05T23:56:41Z").unwrap();
        let object = case_object(&case, indexed_on, "v0.5");
        assert_eq!(keys(&object), keys(expected));
        for key in keys(expected) {
            match key.as_str() {
                // Ours always carry six fraction digits (SPEC section 5).
                "indexed_on" => assert_eq!(object[&key], "2012-04-05T23:56:41.000000Z"),
                "resource_uri" => assert_eq!(
                    object[&key],
                    "/a/demo/api/v0.5/case/45WKYXQRFFU3AT4Y022EX7HF2/"
                ),
                _ => assert_eq!(object[&key], expected[&key], "{key}"),
            }
        }
    }

    #[test]
    fn indices_are_keyed_by_identifier() {
        let case = Case {
            domain: "d".into(),
            case_id: "child".into(),
            case_type: "child".into(),
            case_name: "c".into(),
            owner_id: "o".into(),
            user_id: "u".into(),
            opened_by: "u".into(),
            external_id: None,
            date_opened: String::new(),
            date_modified: String::new(),
            server_date_opened: String::new(),
            server_date_modified: String::new(),
            closed: false,
            date_closed: None,
            closed_by: None,
            properties: vec![],
            indices: vec![CaseIndex {
                identifier: "parent".into(),
                case_type: "mother".into(),
                case_id: "m1".into(),
                relationship: "child".into(),
            }],
            xform_ids: vec!["f1".into(), "f2".into()],
            attachments: vec![],
        };
        let object = case_object(&case, 0, "v0.5");
        assert_eq!(
            object["indices"],
            json!({"parent": {"case_id": "m1", "case_type": "mother", "relationship": "child"}})
        );
        assert_eq!(object["properties"]["owner_id"], "o");
        assert_eq!(object["xform_ids"], json!(["f1", "f2"]));
    }
}
