//! `form-stub`: forwards a short notice that a form arrived, as CommCare HQ's
//! "short form" repeater does, instead of the form itself.
//!
//! The body is `{"received_on": .., "form_id": .., "case_ids": [..]}` (compact
//! JSON, keys in that order) and the request carries a `Received-On` header
//! equal to the body's `received_on`.

wit_bindgen::generate!({ world: "payload-format", path: "../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Event, Form, FormatInfo, Pair, Payload, PayloadKind, Request};
use serde_json::Value;

/// The name errors use for this plugin.
const PLUGIN_NAME: &str = "form-stub";

struct FormStub;

impl Guest for FormStub {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "A form's id, received-on time and case ids as JSON".to_string(),
            kinds: vec![PayloadKind::FormStub],
        }
    }

    fn build(kind: PayloadKind, event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
        match (kind, event) {
            (PayloadKind::FormStub, Event::Form(form)) => Ok(Payload::Send(stub_request(form))),
            (PayloadKind::FormStub, other_event) => Err(format!(
                "{PLUGIN_NAME} cannot build a form-stub payload from {}",
                describe_event(&other_event)
            )),
            (other_kind, _) => Err(format!(
                "{PLUGIN_NAME} cannot build {}",
                describe_kind(other_kind)
            )),
        }
    }
}

export!(FormStub);

/// The request for one form: the stub JSON and `Received-On`.
fn stub_request(form: Form) -> Request {
    let body = stub_json(&form);
    Request {
        body: body.into_bytes(),
        content_type: "application/json".to_string(),
        headers: vec![Pair {
            name: "Received-On".to_string(),
            value: form.received_on,
        }],
        query: Vec::new(),
    }
}

/// `{"received_on":..,"form_id":..,"case_ids":[..]}`. Written by hand rather
/// than through a `serde_json::Map`, which would sort the keys.
fn stub_json(form: &Form) -> String {
    let received_on = Value::from(form.received_on.as_str());
    let form_id = Value::from(form.form_id.as_str());
    let case_ids = Value::from(form.case_ids.clone());
    format!(r#"{{"received_on":{received_on},"form_id":{form_id},"case_ids":{case_ids}}}"#)
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
    use crate::test_support::{self, app_event};
    use repeatd::plugin::types::AppChange;

    /// The project's seed form (`tests/fixtures/seed_form.xml`), as the gateway reads it.
    fn seed_form() -> Form {
        test_support::seed_form(
            include_bytes!("../../../tests/fixtures/seed_form.xml"),
        )
    }

    fn sent_request(payload: Payload) -> Request {
        test_support::sent_request("form-stub", payload)
    }

    #[test]
    fn seed_form_stub_is_exact() {
        let request = sent_request(
            FormStub::build(PayloadKind::FormStub, Event::Form(seed_form()), Vec::new()).unwrap(),
        );
        assert_eq!(
            String::from_utf8(request.body).unwrap(),
            concat!(
                r#"{"received_on":"2015-04-17T20:04:57.123456Z","form_id":"e4b1f7a2-3c58-4d0e-9f61-7a2b8c4d5e90","#,
                r#""case_ids":["5d0c2a7e-81f4-4b39-a6d2-9e3c70b1f4a8"]}"#,
            )
        );
        assert_eq!(request.content_type, "application/json");
        assert_eq!(request.headers.len(), 1);
        assert_eq!(request.headers[0].name, "Received-On");
        assert_eq!(request.headers[0].value, "2015-04-17T20:04:57.123456Z");
        assert!(request.query.is_empty());
    }

    #[test]
    fn stub_of_form_with_several_cases_lists_them_in_order() {
        // As in CommCare's `reg2.xml` test form: the mother case, then two children.
        let mut form = seed_form();
        form.form_id = "91d014c5-02d9-4bfe-bd4c-c72f8624f6d2".to_string();
        form.case_ids = vec![
            "9dbce942-0163-438b-b3e5-67b473d2f719".to_string(),
            "17e36de1-b9de-423c-a6a6-605d291ec976".to_string(),
            "7b58fd8f-1bb8-4978-99a6-7b5d9826c1f9".to_string(),
        ];
        assert_eq!(
            stub_json(&form),
            concat!(
                r#"{"received_on":"2015-04-17T20:04:57.123456Z","form_id":"91d014c5-02d9-4bfe-bd4c-c72f8624f6d2","#,
                r#""case_ids":["9dbce942-0163-438b-b3e5-67b473d2f719","17e36de1-b9de-423c-a6a6-605d291ec976","#,
                r#""7b58fd8f-1bb8-4978-99a6-7b5d9826c1f9"]}"#,
            )
        );
    }

    #[test]
    fn stub_of_form_without_cases_and_with_odd_id_is_valid_json() {
        let mut form = seed_form();
        form.form_id = "quote \" backslash \\ newline \n".to_string();
        form.case_ids = Vec::new();
        assert_eq!(
            stub_json(&form),
            r#"{"received_on":"2015-04-17T20:04:57.123456Z","form_id":"quote \" backslash \\ newline \n","case_ids":[]}"#
        );
    }

    #[test]
    fn other_kinds_and_events_are_refused() {
        let error =
            FormStub::build(PayloadKind::Form, Event::Form(seed_form()), Vec::new()).unwrap_err();
        assert_eq!(error, "form-stub cannot build a form payload");

        let app_event = app_event(AppChange::Saved, None);
        let error = FormStub::build(PayloadKind::FormStub, app_event, Vec::new()).unwrap_err();
        assert_eq!(
            error,
            "form-stub cannot build a form-stub payload from an app event"
        );
    }

    #[test]
    fn info_names_the_form_stub_kind() {
        assert_eq!(FormStub::info().kinds, [PayloadKind::FormStub]);
    }
}
