//! Test set-up shared by the built-in plugins' native unit tests: the
//! project's seed form (`tests/fixtures/seed_form.xml`) and the case it creates as the gateway hands them to
//! a plugin, app events, settings, and unwrapping a payload into the request
//! it sends.
//!
//! Each plugin crate generates its own bindings of `wit/plugin.wit`, so the
//! types are the crate's own and a dev-dependency crate could not build them;
//! each crate includes this file instead, from its `lib.rs`:
//! `#[cfg(test)] #[path = "../../test_support.rs"] mod test_support;`.

// Every crate includes all of it and uses the part its format needs.
#![allow(dead_code)]

use crate::repeatd::plugin::types::{
    AppChange, AppEvent, Case, Event, Form, Pair, Payload, Request,
};

/// The project space every test event belongs to.
pub const DOMAIN: &str = "demo";
/// The app the seed form was submitted for.
pub const SEED_APP_ID: &str = "db9f874f0219444ee7848ddd023e292e";
/// A build of that app.
pub const SEED_BUILD_ID: &str = "193b28e58f335f165cb3e2bbe02b3ed8";
pub const SEED_FORM_ID: &str = "e4b1f7a2-3c58-4d0e-9f61-7a2b8c4d5e90";
/// The case the seed form creates.
pub const SEED_CASE_ID: &str = "5d0c2a7e-81f4-4b39-a6d2-9e3c70b1f4a8";
/// When the gateway received the seed form.
pub const SEED_RECEIVED_ON: &str = "2015-04-17T20:04:57.123456Z";
/// The seed form's user (and the seed case's owner).
pub const SEED_USER_ID: &str = "3a9f1c07e2b84d65a0c7f2e91b4d8c36";

pub fn pair(name: &str, value: &str) -> Pair {
    Pair {
        name: name.to_string(),
        value: value.to_string(),
    }
}

/// Pairs as `(name, value)`, to compare with a literal.
pub fn pairs(pairs: &[Pair]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|pair| (pair.name.as_str(), pair.value.as_str()))
        .collect()
}

/// The project's seed form as the gateway reads it, submitted for
/// [`SEED_APP_ID`], with `xml` as its body.
pub fn seed_form(xml: &[u8]) -> Form {
    Form {
        domain: DOMAIN.to_string(),
        form_id: SEED_FORM_ID.to_string(),
        xmlns: "http://repeatd.example/forms/seed/tree-planting".to_string(),
        app_id: Some(SEED_APP_ID.to_string()),
        received_on: SEED_RECEIVED_ON.to_string(),
        user_id: Some(SEED_USER_ID.to_string()),
        username: Some("danny".to_string()),
        device_id: Some("358240051111110".to_string()),
        time_start: Some("2015-04-17T20:04:42.383000Z".to_string()),
        time_end: Some("2015-04-17T20:04:54.950000Z".to_string()),
        app_version: None,
        case_ids: vec![SEED_CASE_ID.to_string()],
        attachments: Vec::new(),
        xml: xml.to_vec(),
    }
}

/// The case the seed form creates.
pub fn seed_case() -> Case {
    Case {
        domain: DOMAIN.to_string(),
        case_id: SEED_CASE_ID.to_string(),
        case_type: "mscase".to_string(),
        case_name: "Baobab".to_string(),
        owner_id: SEED_USER_ID.to_string(),
        user_id: SEED_USER_ID.to_string(),
        external_id: None,
        date_opened: "2015-04-17T20:04:54.950000Z".to_string(),
        date_modified: "2015-04-17T20:04:54.950000Z".to_string(),
        server_date_opened: SEED_RECEIVED_ON.to_string(),
        server_date_modified: SEED_RECEIVED_ON.to_string(),
        closed: false,
        date_closed: None,
        properties: Vec::new(),
        indices: Vec::new(),
        xform_ids: vec![SEED_FORM_ID.to_string()],
        attachments: Vec::new(),
    }
}

/// An app change of [`SEED_APP_ID`].
pub fn app_event(change: AppChange, build_id: Option<&str>) -> Event {
    Event::App(AppEvent {
        domain: DOMAIN.to_string(),
        app_id: SEED_APP_ID.to_string(),
        change,
        build_id: build_id.map(str::to_string),
    })
}

/// The request a payload sends; panics naming `plugin` when it sends nothing.
pub fn sent_request(plugin: &str, payload: Payload) -> Request {
    match payload {
        Payload::Send(request) => request,
        Payload::Nothing => panic!("{plugin} sent nothing"),
    }
}
