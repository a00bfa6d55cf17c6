//! `form-json`: forwards a form as CommCare HQ's JSON form forwarding does,
//! as the Data API's form object (SPEC sections 5 and 11): `application/json`
//! with a `Received-On` header.
//!
//! The object is not made here: the host makes it, once, for the API and for
//! every plugin, and hands it over through WIT 1.1's `event-context`
//! (`form-object`). This plugin only sends it, so the remote gets exactly what
//! `GET /a/{domain}/api/v0.5/form/{id}/` answers.

wit_bindgen::generate!({ world: "payload-format", path: "../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Event, Form, FormatInfo, Pair, Payload, PayloadKind, Request};

/// The name errors use for this plugin.
const PLUGIN_NAME: &str = "form-json";

struct FormJson;

impl Guest for FormJson {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "A form as the Data API's JSON form object".to_string(),
            kinds: vec![PayloadKind::Form],
        }
    }

    fn build(kind: PayloadKind, event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
        match (kind, event) {
            (PayloadKind::Form, Event::Form(form)) => {
                let object = repeatd::plugin::event_context::form_object();
                form_request(&form, object).map(Payload::Send)
            }
            (PayloadKind::Form, Event::Case(_)) => Err(format!(
                "{PLUGIN_NAME} cannot build a form payload from a case event"
            )),
            (PayloadKind::Form, Event::App(_)) => Err(format!(
                "{PLUGIN_NAME} cannot build a form payload from an app event"
            )),
            (PayloadKind::Case, _) => Err(format!("{PLUGIN_NAME} cannot build a case payload")),
            (PayloadKind::FormStub, _) => {
                Err(format!("{PLUGIN_NAME} cannot build a form-stub payload"))
            }
            (PayloadKind::AppSchema, _) => {
                Err(format!("{PLUGIN_NAME} cannot build an app-schema payload"))
            }
        }
    }
}

export!(FormJson);

/// The request for one form, given the host's form object.
fn form_request(form: &Form, form_object: Option<String>) -> Result<Request, String> {
    let object = form_object.ok_or_else(|| {
        format!(
            "{PLUGIN_NAME}: the host handed over no form object for form {}",
            form.form_id
        )
    })?;
    Ok(Request {
        body: object.into_bytes(),
        content_type: "application/json".to_string(),
        headers: vec![Pair {
            name: "Received-On".to_string(),
            value: form.received_on.clone(),
        }],
        query: Vec::new(),
    })
}

#[cfg(test)]
#[path = "../../test_support.rs"]
mod test_support;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{self, SEED_FORM_ID, SEED_RECEIVED_ON, app_event, seed_case};
    use repeatd::plugin::types::AppChange;

    fn seed_form() -> Form {
        test_support::seed_form(include_bytes!("../../../tests/fixtures/seed_form.xml"))
    }

    #[test]
    fn the_hosts_form_object_is_sent_as_json_with_received_on() {
        let object = r##"{"id":"e4b1f7a2-3c58-4d0e-9f61-7a2b8c4d5e90","form":{"#type":"data"}}"##;
        let request = form_request(&seed_form(), Some(object.to_string())).unwrap();
        assert_eq!(String::from_utf8(request.body).unwrap(), object);
        assert_eq!(request.content_type, "application/json");
        assert_eq!(
            test_support::pairs(&request.headers),
            [("Received-On", SEED_RECEIVED_ON)]
        );
        assert!(request.query.is_empty());
    }

    #[test]
    fn without_a_form_object_the_record_is_refused_by_name() {
        let error = form_request(&seed_form(), None).unwrap_err();
        assert_eq!(
            error,
            format!("form-json: the host handed over no form object for form {SEED_FORM_ID}")
        );
    }

    #[test]
    fn other_kinds_and_events_are_refused() {
        let case = FormJson::build(PayloadKind::Form, Event::Case(seed_case()), Vec::new());
        assert_eq!(
            case.unwrap_err(),
            "form-json cannot build a form payload from a case event"
        );
        let app = FormJson::build(
            PayloadKind::Form,
            app_event(AppChange::Saved, None),
            Vec::new(),
        );
        assert_eq!(
            app.unwrap_err(),
            "form-json cannot build a form payload from an app event"
        );
        let stub = FormJson::build(PayloadKind::FormStub, Event::Form(seed_form()), Vec::new());
        assert_eq!(
            stub.unwrap_err(),
            "form-json cannot build a form-stub payload"
        );
        assert_eq!(FormJson::info().kinds.len(), 1);
    }
}
