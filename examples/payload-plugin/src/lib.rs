//! `flat-json`: an example payload format for repeatd.
//!
//! It forwards a form as JSON: the metadata the gateway read from it, and the
//! form's own fields flattened to `group/question` → value, the shape a
//! spreadsheet or a database table wants. Case blocks (v2 and v1) and the
//! `meta` block are left out of `fields` (their content is in the metadata). A question that
//! occurs more than once (inside a repeat group) becomes a list of its values
//! in document order. A form with no fields at all is not sent: the record
//! becomes `empty`.
//!
//! ```json
//! {"form_id": "…", "xmlns": "…", "domain": "demo", "app_id": "…",
//!  "received_on": "2015-04-17T20:04:57.123456Z", "user_id": "…", "username": "danny",
//!  "device_id": "…", "time_start": "…", "time_end": "…", "app_version": "…",
//!  "case_ids": ["…"], "attachments": [{"name": "photo.jpg", "content_type": "image/jpeg", "size": 1234}],
//!  "fields": {"question1": "Trees", "household/member/name": ["Ann", "Bo"]}}
//! ```
//!
//! Repeater settings: `separator` joins the element names of a path (default
//! `/`).

// Generates the Rust side of the `payload-format` world: the types of
// `repeatd:plugin/types` and the `Guest` trait to implement.
wit_bindgen::generate!({ world: "payload-format", path: "../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Event, Form, FormatInfo, Pair, Payload, PayloadKind, Request};
use serde_json::{Map, Value, json};

/// The namespace of CommCare case blocks.
const CASE_NAMESPACE: &str = "http://commcarehq.org/case/transaction/v2";

struct FlatJson;

impl Guest for FlatJson {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "A form's metadata and its fields flattened to group/question, as JSON"
                .to_string(),
            kinds: vec![PayloadKind::Form],
        }
    }

    fn build(kind: PayloadKind, event: Event, settings: Vec<Pair>) -> Result<Payload, String> {
        let form = match (kind, event) {
            (PayloadKind::Form, Event::Form(form)) => form,
            _ => return Err("flat-json only formats forms (use it on a form repeater)".to_string()),
        };
        let separator = setting(&settings, "separator").unwrap_or("/");
        let fields = flatten_fields(&form.xml, separator)?;
        if fields.is_empty() {
            return Ok(Payload::Nothing);
        }
        let body = form_json(&form, fields);
        Ok(Payload::Send(Request {
            body: serde_json::to_vec(&body).map_err(|error| error.to_string())?,
            content_type: "application/json".to_string(),
            headers: vec![Pair {
                name: "Received-On".to_string(),
                value: form.received_on.clone(),
            }],
            query: Vec::new(),
        }))
    }
}

export!(FlatJson);

/// The value of the repeater setting `name`, if set.
fn setting<'a>(settings: &'a [Pair], name: &str) -> Option<&'a str> {
    settings
        .iter()
        .find(|pair| pair.name == name)
        .map(|pair| pair.value.as_str())
}

/// The body: the form's metadata, then its fields.
fn form_json(form: &Form, fields: Map<String, Value>) -> Value {
    let attachments: Vec<Value> = form
        .attachments
        .iter()
        .map(|attachment| {
            json!({
                "name": attachment.name,
                "content_type": attachment.content_type,
                "size": attachment.size,
            })
        })
        .collect();
    json!({
        "form_id": form.form_id,
        "xmlns": form.xmlns,
        "domain": form.domain,
        "app_id": form.app_id,
        "received_on": form.received_on,
        "user_id": form.user_id,
        "username": form.username,
        "device_id": form.device_id,
        "time_start": form.time_start,
        "time_end": form.time_end,
        "app_version": form.app_version,
        "case_ids": form.case_ids,
        "attachments": attachments,
        "fields": fields,
    })
}

/// Reads the form XML and returns its fields, path → value, in document order.
fn flatten_fields(xml: &[u8], separator: &str) -> Result<Map<String, Value>, String> {
    let text = std::str::from_utf8(xml).map_err(|_| "the form XML is not UTF-8".to_string())?;
    let document = roxmltree::Document::parse(text)
        .map_err(|error| format!("the form XML does not parse: {error}"))?;
    let mut fields = Map::new();
    for child in document
        .root_element()
        .children()
        .filter(|node| node.is_element())
    {
        collect(child, "", separator, &mut fields);
    }
    Ok(fields)
}

/// Adds the fields under `element` (whose parent's path is `parent_path`).
fn collect(
    element: roxmltree::Node<'_, '_>,
    parent_path: &str,
    separator: &str,
    fields: &mut Map<String, Value>,
) {
    let name = element.tag_name();
    let namespace = name.namespace().unwrap_or_default();
    // The form's `meta` block (in the `http://openrosa.org/jr/xforms`
    // namespace or the form's own) sits right under the root. Case blocks are
    // in the case namespace (v2) or are a `case` with a `case_id` child (v1).
    let is_meta = parent_path.is_empty() && name.name() == "meta";
    let is_case_block = namespace == CASE_NAMESPACE
        || (name.name() == "case"
            && element
                .children()
                .any(|child| child.is_element() && child.tag_name().name() == "case_id"));
    if is_meta || is_case_block {
        return;
    }
    let path = if parent_path.is_empty() {
        name.name().to_string()
    } else {
        format!("{parent_path}{separator}{}", name.name())
    };
    let mut children = element
        .children()
        .filter(|node| node.is_element())
        .peekable();
    if children.peek().is_some() {
        for child in children {
            collect(child, &path, separator, fields);
        }
        return;
    }
    let value = Value::String(element.text().unwrap_or_default().to_string());
    match fields.get_mut(&path) {
        None => {
            fields.insert(path, value);
        }
        Some(Value::Array(values)) => values.push(value),
        Some(first) => {
            let first_value = first.take();
            *first = Value::Array(vec![first_value, value]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(xml: &str) -> Form {
        Form {
            domain: "demo".to_string(),
            form_id: "f-1".to_string(),
            xmlns: "http://example.org/household".to_string(),
            app_id: Some("app-1".to_string()),
            received_on: "2024-05-01T10:00:00.000000Z".to_string(),
            user_id: Some("u-1".to_string()),
            username: Some("danny".to_string()),
            device_id: None,
            time_start: None,
            time_end: None,
            app_version: None,
            case_ids: vec!["c-1".to_string()],
            attachments: Vec::new(),
            xml: xml.as_bytes().to_vec(),
        }
    }

    fn body(payload: Payload) -> Value {
        match payload {
            Payload::Send(request) => serde_json::from_slice(&request.body).unwrap(),
            Payload::Nothing => panic!("nothing was sent"),
        }
    }

    const HOUSEHOLD: &str = r#"<?xml version="1.0"?>
<data xmlns="http://example.org/household">
  <village>Kisumu &amp; Co</village>
  <household>
    <member><name>Ann</name><age>34</age></member>
    <member><name>Bo</name><age>9</age></member>
  </household>
  <n0:case case_id="c-1" xmlns:n0="http://commcarehq.org/case/transaction/v2"><n0:create><n0:case_name>x</n0:case_name></n0:create></n0:case>
  <visit><case><case_id>c-2</case_id><update><weight>3</weight></update></case><weight>3</weight></visit>
  <n1:meta xmlns:n1="http://openrosa.org/jr/xforms"><n1:instanceID>f-1</n1:instanceID></n1:meta>
</data>"#;

    #[test]
    fn fields_are_flattened_and_repeats_become_lists() {
        let payload =
            FlatJson::build(PayloadKind::Form, Event::Form(form(HOUSEHOLD)), Vec::new()).unwrap();
        let body = body(payload);
        assert_eq!(
            body["fields"],
            json!({
                "village": "Kisumu & Co",
                "household/member/name": ["Ann", "Bo"],
                "household/member/age": ["34", "9"],
                "visit/weight": "3",
            })
        );
        assert_eq!(body["form_id"], "f-1");
        assert_eq!(body["app_id"], "app-1");
        assert_eq!(body["case_ids"], json!(["c-1"]));
    }

    #[test]
    fn the_separator_setting_joins_paths() {
        let settings = vec![Pair {
            name: "separator".to_string(),
            value: ".".to_string(),
        }];
        let payload =
            FlatJson::build(PayloadKind::Form, Event::Form(form(HOUSEHOLD)), settings).unwrap();
        assert_eq!(
            body(payload)["fields"]["household.member.name"],
            json!(["Ann", "Bo"])
        );
    }

    #[test]
    fn a_form_without_fields_is_not_sent() {
        let xml = r#"<data xmlns="x"><meta><instanceID>f-1</instanceID></meta></data>"#;
        let payload =
            FlatJson::build(PayloadKind::Form, Event::Form(form(xml)), Vec::new()).unwrap();
        assert!(matches!(payload, Payload::Nothing));
    }

    #[test]
    fn broken_xml_and_other_kinds_are_errors() {
        let error = FlatJson::build(PayloadKind::Form, Event::Form(form("<data>")), Vec::new())
            .unwrap_err();
        assert!(error.starts_with("the form XML does not parse"), "{error}");
        let error = FlatJson::build(PayloadKind::Case, Event::Form(form(HOUSEHOLD)), Vec::new())
            .unwrap_err();
        assert_eq!(
            error,
            "flat-json only formats forms (use it on a form repeater)"
        );
    }
}
