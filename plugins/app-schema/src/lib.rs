//! `app-schema`: forwards a notice that an app changed, as CommCare HQ's app
//! structure repeater does.
//!
//! The body is the app id when the app was saved and the build id when a
//! build was made, as plain text with no trailing newline. The content type is
//! `text/xml`, as CommCare sends it.

wit_bindgen::generate!({ world: "payload-format", path: "../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{
    AppChange, AppEvent, Event, FormatInfo, Pair, Payload, PayloadKind, Request,
};

/// The name errors use for this plugin.
const PLUGIN_NAME: &str = "app-schema";

struct AppSchema;

impl Guest for AppSchema {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "The app id (app saved) or the build id (build made) as plain text"
                .to_string(),
            kinds: vec![PayloadKind::AppSchema],
        }
    }

    fn build(kind: PayloadKind, event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
        match (kind, event) {
            (PayloadKind::AppSchema, Event::App(app_event)) => {
                app_request(app_event).map(Payload::Send)
            }
            (PayloadKind::AppSchema, other_event) => Err(format!(
                "{PLUGIN_NAME} cannot build an app-schema payload from {}",
                describe_event(&other_event)
            )),
            (other_kind, _) => Err(format!(
                "{PLUGIN_NAME} cannot build {}",
                describe_kind(other_kind)
            )),
        }
    }
}

export!(AppSchema);

/// The request for one app change: the app id or the build id.
fn app_request(app_event: AppEvent) -> Result<Request, String> {
    let body = match app_event.change {
        AppChange::Saved => app_event.app_id,
        AppChange::Built => match app_event.build_id {
            Some(build_id) if !build_id.is_empty() => build_id,
            _ => {
                return Err(format!(
                    "{PLUGIN_NAME} got a built event for app {} without a build id",
                    app_event.app_id
                ));
            }
        },
    };
    Ok(Request {
        body: body.into_bytes(),
        content_type: "text/xml".to_string(),
        headers: Vec::new(),
        query: Vec::new(),
    })
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
mod tests {
    use super::*;
    use repeatd::plugin::types::Form;

    const APP_ID: &str = "db9f874f0219444ee7848ddd023e292e";
    const BUILD_ID: &str = "193b28e58f335f165cb3e2bbe02b3ed8";

    fn app_event(change: AppChange, build_id: Option<&str>) -> Event {
        Event::App(AppEvent {
            domain: "demo".to_string(),
            app_id: APP_ID.to_string(),
            change,
            build_id: build_id.map(str::to_string),
        })
    }

    fn sent_request(payload: Payload) -> Request {
        match payload {
            Payload::Send(request) => request,
            Payload::Nothing => panic!("app-schema sent nothing"),
        }
    }

    #[test]
    fn saved_app_sends_the_app_id() {
        let payload = AppSchema::build(
            PayloadKind::AppSchema,
            app_event(AppChange::Saved, None),
            Vec::new(),
        );
        let request = sent_request(payload.unwrap());
        assert_eq!(request.body, APP_ID.as_bytes());
        assert_eq!(request.content_type, "text/xml");
        assert!(request.headers.is_empty());
        assert!(request.query.is_empty());
    }

    #[test]
    fn built_app_sends_the_build_id() {
        let payload = AppSchema::build(
            PayloadKind::AppSchema,
            app_event(AppChange::Built, Some(BUILD_ID)),
            Vec::new(),
        );
        let request = sent_request(payload.unwrap());
        assert_eq!(request.body, BUILD_ID.as_bytes());
        assert_eq!(request.content_type, "text/xml");
    }

    #[test]
    fn built_event_without_build_id_is_refused() {
        let error = AppSchema::build(
            PayloadKind::AppSchema,
            app_event(AppChange::Built, None),
            Vec::new(),
        )
        .unwrap_err();
        assert_eq!(
            error,
            "app-schema got a built event for app db9f874f0219444ee7848ddd023e292e without a build id"
        );
    }

    #[test]
    fn other_kinds_and_events_are_refused() {
        let error = AppSchema::build(
            PayloadKind::Case,
            app_event(AppChange::Saved, None),
            Vec::new(),
        )
        .unwrap_err();
        assert_eq!(error, "app-schema cannot build a case payload");

        let form_event = Event::Form(Form {
            domain: "demo".to_string(),
            form_id: "e4b1f7a2-3c58-4d0e-9f61-7a2b8c4d5e90".to_string(),
            xmlns: "http://repeatd.example/forms/seed/tree-planting".to_string(),
            app_id: Some(APP_ID.to_string()),
            received_on: "2015-04-17T20:04:57.123456Z".to_string(),
            user_id: None,
            username: None,
            device_id: None,
            time_start: None,
            time_end: None,
            app_version: None,
            case_ids: Vec::new(),
            attachments: Vec::new(),
            xml: b"<data/>".to_vec(),
        });
        let error = AppSchema::build(PayloadKind::AppSchema, form_event, Vec::new()).unwrap_err();
        assert_eq!(
            error,
            "app-schema cannot build an app-schema payload from a form event"
        );
    }

    #[test]
    fn info_names_the_app_schema_kind() {
        assert_eq!(AppSchema::info().kinds, [PayloadKind::AppSchema]);
    }
}
