//! A payload format built against repeatd:plugin@2.0.0, a version of the WIT
//! package the host was not built with. Sends the body `next-major`.

wit_bindgen::generate!({ world: "payload-format", path: "../wit-2.0" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Event, FormatInfo, Pair, Payload, PayloadKind, Request};

struct NextVersion;

impl Guest for NextVersion {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "built against repeatd:plugin@2.0.0".to_string(),
            kinds: vec![PayloadKind::Form],
        }
    }

    fn build(_kind: PayloadKind, _event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
        Ok(Payload::Send(Request {
            body: b"next-major".to_vec(),
            content_type: "text/plain".to_string(),
            headers: Vec::new(),
            query: Vec::new(),
        }))
    }
}

export!(NextVersion);
