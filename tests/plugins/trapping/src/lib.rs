//! A payload format that panics on every form: a trap the host must contain.

wit_bindgen::generate!({ world: "payload-format", path: "../../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Event, FormatInfo, Pair, Payload, PayloadKind};

struct Trapping;

impl Guest for Trapping {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "panics on every form".to_string(),
            kinds: vec![PayloadKind::Form],
        }
    }

    fn build(_kind: PayloadKind, event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
        let form_id = match event {
            Event::Form(form) => form.form_id,
            _ => String::new(),
        };
        panic!("the trapping plugin panics on form {form_id}");
    }
}

export!(Trapping);
