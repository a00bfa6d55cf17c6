//! `form-xml`: forwards a form as the XML that was submitted, byte for byte,
//! as CommCare HQ's form repeater does.
//!
//! The request carries a `Received-On` header with the time the gateway
//! received the form and, when the form was submitted for an app, the query
//! parameter `app_id=<app id>`. The repeater setting
//! `include_app_id_param = false` leaves the query parameter out.

wit_bindgen::generate!({ world: "payload-format", path: "../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Event, Form, FormatInfo, Pair, Payload, PayloadKind, Request};

/// The name errors use for this plugin.
const PLUGIN_NAME: &str = "form-xml";

/// The repeater setting that turns the `app_id` query parameter off.
const INCLUDE_APP_ID_SETTING: &str = "include_app_id_param";

struct FormXml;

impl Guest for FormXml {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "The submitted form XML, byte for byte, with a Received-On header"
                .to_string(),
            kinds: vec![PayloadKind::Form],
        }
    }

    fn build(kind: PayloadKind, event: Event, settings: Vec<Pair>) -> Result<Payload, String> {
        match (kind, event) {
            (PayloadKind::Form, Event::Form(form)) => {
                let include_app_id = include_app_id_param(&settings)?;
                Ok(Payload::Send(form_request(form, include_app_id)))
            }
            (PayloadKind::Form, other_event) => Err(format!(
                "{PLUGIN_NAME} cannot build a form payload from {}",
                describe_event(&other_event)
            )),
            (other_kind, _) => Err(format!(
                "{PLUGIN_NAME} cannot build {}",
                describe_kind(other_kind)
            )),
        }
    }
}

export!(FormXml);

/// Reads `include_app_id_param` from the repeater's settings (default true).
fn include_app_id_param(settings: &[Pair]) -> Result<bool, String> {
    let Some(setting) = settings
        .iter()
        .find(|pair| pair.name == INCLUDE_APP_ID_SETTING)
    else {
        return Ok(true);
    };
    match setting.value.as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "{PLUGIN_NAME} setting {INCLUDE_APP_ID_SETTING} must be true or false, not {other:?}"
        )),
    }
}

/// The request for one form: its XML unchanged, `Received-On`, and the app id
/// in the query when the form has one and `include_app_id` allows it.
fn form_request(form: Form, include_app_id: bool) -> Request {
    let query = match form.app_id {
        Some(app_id) if include_app_id && !app_id.is_empty() => vec![Pair {
            name: "app_id".to_string(),
            value: app_id,
        }],
        _ => Vec::new(),
    };
    Request {
        body: form.xml,
        content_type: "text/xml".to_string(),
        headers: vec![Pair {
            name: "Received-On".to_string(),
            value: form.received_on,
        }],
        query,
    }
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
    use crate::test_support::{
        self, SEED_APP_ID, app_event, pair as setting, pairs,
    };
    use repeatd::plugin::types::AppChange;

    /// The project's seed form (`tests/fixtures/seed_form.xml`).
    const SEED_FORM_XML: &[u8] = include_bytes!("../../../tests/fixtures/seed_form.xml");

    fn seed_form(app_id: Option<&str>) -> Form {
        Form {
            app_id: app_id.map(str::to_string),
            ..test_support::seed_form(SEED_FORM_XML)
        }
    }

    fn sent_request(payload: Payload) -> Request {
        test_support::sent_request("form-xml", payload)
    }

    #[test]
    fn seed_form_is_sent_byte_for_byte_with_received_on_and_app_id() {
        let payload = FormXml::build(
            PayloadKind::Form,
            Event::Form(seed_form(Some(SEED_APP_ID))),
            Vec::new(),
        );
        let request = sent_request(payload.unwrap());
        assert_eq!(request.body, SEED_FORM_XML);
        assert_eq!(request.content_type, "text/xml");
        assert_eq!(
            pairs(&request.headers),
            [("Received-On", "2015-04-17T20:04:57.123456Z")]
        );
        assert_eq!(pairs(&request.query), [("app_id", SEED_APP_ID)]);
    }

    #[test]
    fn form_without_app_id_has_no_query() {
        let request = sent_request(
            FormXml::build(PayloadKind::Form, Event::Form(seed_form(None)), Vec::new()).unwrap(),
        );
        assert!(request.query.is_empty());
    }

    #[test]
    fn include_app_id_param_false_drops_the_query() {
        let settings = vec![setting(INCLUDE_APP_ID_SETTING, "false")];
        let payload = FormXml::build(
            PayloadKind::Form,
            Event::Form(seed_form(Some(SEED_APP_ID))),
            settings,
        );
        assert!(sent_request(payload.unwrap()).query.is_empty());

        let settings = vec![setting(INCLUDE_APP_ID_SETTING, "true")];
        let payload = FormXml::build(
            PayloadKind::Form,
            Event::Form(seed_form(Some(SEED_APP_ID))),
            settings,
        );
        assert_eq!(
            pairs(&sent_request(payload.unwrap()).query),
            [("app_id", SEED_APP_ID)]
        );
    }

    #[test]
    fn include_app_id_param_must_be_a_boolean() {
        let settings = vec![setting(INCLUDE_APP_ID_SETTING, "yes")];
        let error = FormXml::build(
            PayloadKind::Form,
            Event::Form(seed_form(Some(SEED_APP_ID))),
            settings,
        )
        .unwrap_err();
        assert_eq!(
            error,
            r#"form-xml setting include_app_id_param must be true or false, not "yes""#
        );
    }

    #[test]
    fn other_kinds_and_events_are_refused() {
        let error = FormXml::build(PayloadKind::Case, Event::Form(seed_form(None)), Vec::new())
            .unwrap_err();
        assert_eq!(error, "form-xml cannot build a case payload");

        let app_event = app_event(AppChange::Saved, None);
        let error = FormXml::build(PayloadKind::Form, app_event, Vec::new()).unwrap_err();
        assert_eq!(
            error,
            "form-xml cannot build a form payload from an app event"
        );
    }

    #[test]
    fn info_names_the_form_kind() {
        assert_eq!(FormXml::info().kinds, [PayloadKind::Form]);
    }
}
