//! The form object of the Data API (SPEC section 11), which the `form-json`
//! payload format sends too: the one conversion of a stored form and its XML
//! into CommCare HQ's JSON. Pure: no I/O, unit-tested against the shape of
//! CommCare's own example (`tests/fixtures/commcare-api/form_list_response.json`).
//!
//! The XML becomes JSON as HQ's `xml2json` does it: the root element's name is
//! `#type`; an element's attributes are `@name`; an element whose namespace
//! differs from its parent's (and the root, when it has one) gets `@xmlns`;
//! an element with neither attributes nor children is its text (`""` when
//! empty); the text of one with attributes or children is `#text` (when not
//! blank); siblings of one name become a list, in document order. Prefixes
//! are dropped: `<n0:meta xmlns:n0="…">` is `"meta": {"@xmlns": "…", …}`.

use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::reader::NsReader;
use serde_json::{Map, Value, json};

use crate::model::StoredForm;

/// Why a stored form's XML could not be turned into JSON (it was accepted
/// as well-formed, so this means the store holds something unexpected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("form {form_id}: its XML cannot be read as JSON: {problem}")]
pub struct FormObjectError {
    pub form_id: String,
    pub problem: String,
}

/// An element being read: its namespace, its JSON so far, its text.
struct OpenElement {
    name: String,
    namespace: String,
    object: Map<String, Value>,
    has_children: bool,
    text: String,
}

/// The XML of a form as JSON, in HQ's shape (with `#type`).
pub fn xml_to_json(xml: &[u8]) -> Result<Map<String, Value>, String> {
    let text = std::str::from_utf8(xml).map_err(|error| format!("not UTF-8: {error}"))?;
    let mut reader = NsReader::from_str(text.trim_start_matches('\u{feff}'));
    reader.config_mut().trim_text(false);
    let mut stack: Vec<OpenElement> = Vec::new();
    loop {
        let (resolution, event) = reader
            .read_resolved_event()
            .map_err(|error| error.to_string())?;
        let namespace = match resolution {
            ResolveResult::Bound(namespace) => String::from_utf8_lossy(namespace.0).into_owned(),
            _ => String::new(),
        };
        match event {
            Event::Start(element) => stack.push(open(&element, namespace, stack.last())?),
            Event::Empty(element) => {
                let element = open(&element, namespace, stack.last())?;
                if let Some(done) = close(element, &mut stack) {
                    return Ok(done);
                }
            }
            Event::End(_) => {
                let element = stack.pop().ok_or("an end tag without a start")?;
                if let Some(done) = close(element, &mut stack) {
                    return Ok(done);
                }
            }
            Event::Text(content) => {
                if let Some(top) = stack.last_mut() {
                    top.text
                        .push_str(&content.xml_content().map_err(|error| error.to_string())?);
                }
            }
            Event::CData(content) => {
                if let Some(top) = stack.last_mut() {
                    top.text
                        .push_str(&content.xml_content().map_err(|error| error.to_string())?);
                }
            }
            Event::GeneralRef(reference) => {
                let Some(top) = stack.last_mut() else {
                    continue;
                };
                match reference
                    .resolve_char_ref()
                    .map_err(|error| error.to_string())?
                {
                    Some(character) => top.text.push(character),
                    None => {
                        let name = String::from_utf8_lossy(&reference).into_owned();
                        let replacement = quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("undefined entity `&{name};`"))?;
                        top.text.push_str(replacement);
                    }
                }
            }
            Event::Eof => return Err("no root element".into()),
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) | Event::DocType(_) => {}
        }
    }
}

fn open(
    element: &BytesStart<'_>,
    namespace: String,
    parent: Option<&OpenElement>,
) -> Result<OpenElement, String> {
    let mut object = Map::new();
    for attribute in element.attributes() {
        let attribute = attribute.map_err(|error| error.to_string())?;
        if attribute.key.as_namespace_binding().is_some() {
            continue; // `xmlns` and `xmlns:p`: the element's `@xmlns` says it.
        }
        let value = attribute
            .unescape_value()
            .map_err(|error| error.to_string())?;
        let name = String::from_utf8_lossy(attribute.key.local_name().as_ref()).into_owned();
        object.insert(format!("@{name}"), Value::String(value.into_owned()));
    }
    let inherited = parent.map_or("", |parent| parent.namespace.as_str());
    if !namespace.is_empty() && namespace != inherited {
        object.insert("@xmlns".into(), Value::String(namespace.clone()));
    }
    Ok(OpenElement {
        name: String::from_utf8_lossy(element.local_name().as_ref()).into_owned(),
        namespace,
        object,
        has_children: false,
        text: String::new(),
    })
}

/// Ends an element: adds it to its parent, or returns the root's JSON.
fn close(element: OpenElement, stack: &mut [OpenElement]) -> Option<Map<String, Value>> {
    let OpenElement {
        name,
        mut object,
        has_children,
        text,
        ..
    } = element;
    let value = if object.is_empty() && !has_children {
        Value::String(text)
    } else {
        if !text.trim().is_empty() {
            object.insert("#text".into(), Value::String(text));
        }
        Value::Object(object)
    };
    let Some(parent) = stack.last_mut() else {
        let mut root = match value {
            Value::Object(object) => object,
            _ => Map::new(),
        };
        root.insert("#type".into(), Value::String(name));
        return Some(root);
    };
    parent.has_children = true;
    match parent.object.get_mut(&name) {
        Some(Value::Array(siblings)) => siblings.push(value),
        Some(first) => {
            let first = first.take();
            parent.object.insert(name, Value::Array(vec![first, value]));
        }
        None => {
            parent.object.insert(name, value);
        }
    }
    None
}

/// What a form object needs besides the form and its XML.
#[derive(Debug, Clone, Copy)]
pub struct ObjectContext<'a> {
    /// Unix micros.
    pub indexed_on: i64,
    /// The API version in `resource_uri` (`v0.5`).
    pub api_version: &'a str,
}

/// The form object of SPEC section 11 (CommCare's `form_json`).
pub fn form_object(
    form: &StoredForm,
    xml: &[u8],
    context: ObjectContext<'_>,
) -> Result<Value, FormObjectError> {
    let body = xml_to_json(xml).map_err(|problem| FormObjectError {
        form_id: form.form_id.clone(),
        problem,
    })?;
    let domain = &form.domain;
    let form_id = &form.form_id;
    let root_attribute = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
    let meta = body.get("meta").and_then(Value::as_object);
    let mut attachments = Map::new();
    attachments.insert(
        "form.xml".into(),
        json!({
            "content_type": "text/xml",
            "length": xml.len(),
            "url": format!("/a/{domain}/api/form/attachment/{form_id}/form.xml"),
        }),
    );
    for attachment in &form.attachments {
        attachments.insert(
            attachment.name.clone(),
            // Only names and sizes are kept (SPEC section 4): no content to link to.
            json!({ "content_type": attachment.content_type, "length": attachment.size, "url": null }),
        );
    }
    let indexed_on = crate::time::format_utc(context.indexed_on);
    let type_name = body.get("#type").cloned().unwrap_or(Value::Null);
    Ok(json!({
        "app_id": form.app_id,
        "archived": false,
        "attachments": attachments,
        "build_id": null,
        "domain": domain,
        "edited_by_user_id": null,
        "edited_on": null,
        "id": form_id,
        "indexed_on": indexed_on,
        "initial_processing_complete": true,
        "is_phone_submission": form.meta.device_id.is_some(),
        "metadata": metadata(form, meta),
        "problem": null,
        "received_on": form.received_on,
        "resource_uri": format!("/a/{domain}/api/{}/form/{form_id}/", context.api_version),
        "server_modified_on": indexed_on,
        "submit_ip": null,
        "type": type_name,
        "uiversion": root_attribute("@uiVersion"),
        "version": root_attribute("@version"),
        "form": body,
    }))
}

/// The API version whose `resource_uri` the `form-json` payload carries.
const PAYLOAD_API_VERSION: &str = "v0.5";

/// The form object as JSON text, as the `form-json` payload sends it (handed
/// to plugins through WIT's `event-context`).
pub fn form_object_json(
    form: &StoredForm,
    xml: &[u8],
    indexed_on: i64,
) -> Result<String, FormObjectError> {
    let context = ObjectContext {
        indexed_on,
        api_version: PAYLOAD_API_VERSION,
    };
    Ok(form_object(form, xml, context)?.to_string())
}

/// `metadata`: the `meta` block in HQ's `Metadata` shape, device times
/// without a zone (as HQ gives them), the version numbers read from
/// `appVersion` (`… App v18 …`, `… version "2.31.0" …`).
fn metadata(form: &StoredForm, meta: Option<&Map<String, Value>>) -> Value {
    let text = |name: &str| {
        meta.and_then(|meta| meta.get(name))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let device_time = |name: &str| {
        text(name).map(|raw| {
            let normalized = crate::time::normalize_device_time(&raw);
            normalized
                .strip_suffix('Z')
                .map_or(normalized.clone(), str::to_owned)
        })
    };
    let app_version = text("appVersion").or_else(|| form.meta.app_version.clone());
    let location = text("location");
    json!({
        "appVersion": app_version,
        "app_build_version": app_version.as_deref().and_then(app_build_version),
        "commcare_version": app_version.as_deref().and_then(commcare_version),
        "deprecatedID": text("deprecatedID"),
        "deviceID": text("deviceID").or_else(|| form.meta.device_id.clone()),
        "doc_type": "Metadata",
        "geo_point": location,
        "instanceID": text("instanceID").unwrap_or_else(|| form.form_id.clone()),
        "location": location,
        "timeEnd": device_time("timeEnd"),
        "timeStart": device_time("timeStart"),
        "userID": text("userID").or_else(|| form.meta.user_id.clone()),
        "username": text("username").or_else(|| form.meta.username.clone()),
    })
}

/// The number after `App v` in CommCare's `appVersion`.
fn app_build_version(app_version: &str) -> Option<u64> {
    let (_, after) = app_version.split_once("App v")?;
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The quoted version after `version "` in CommCare's `appVersion`.
fn commcare_version(app_version: &str) -> Option<String> {
    let (_, after) = app_version.split_once("version \"")?;
    let (version, _) = after.split_once('"')?;
    Some(version.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CommCare's example form object (see tests/fixtures/commcare-api/README.md).
    const FIXTURE: &str =
        include_str!("../../../tests/fixtures/commcare-api/form_list_response.json");
    /// The XML behind the fixture's object, rebuilt from its `form`.
    const FIXTURE_XML: &str =
        include_str!("../../../tests/fixtures/commcare-api/form_case_update.xml");

    fn fixture_object() -> Value {
        let list: Value = serde_json::from_str(FIXTURE).unwrap();
        list["objects"][0].clone()
    }

    /// The form behind the fixture, as the store keeps it (read from its
    /// stored JSON, so that fields added later take their defaults).
    fn stored_form() -> StoredForm {
        serde_json::from_value(json!({
            "domain": "corpora",
            "form_id": "f959449c-8776-42ac-b776-3f564fafc331",
            "xmlns": "http://openrosa.org/formdesigner/4281EB62-46E6-49AD-A08C",
            "app_id": "effb341b",
            "received_on": "2016-11-29T14:50:42.530616Z",
            "user_id": "e7ad965c70802884a7a67add763939e8",
            "username": "testuser",
            "device_id": "358001070684648",
            "time_start": null,
            "time_end": null,
            "app_version": null,
            "case_ids": ["b6996b7b-6b3f-476a-9006"],
            "attachments": [{"name": "photo.jpg", "content_type": "image/jpeg", "size": 1234}],
            "is_device_report": false,
            "n_duplicates": 0,
            "last_duplicate_on": null,
        }))
        .expect("a stored form")
    }

    fn object() -> Value {
        let context = ObjectContext {
            indexed_on: crate::time::parse_timestamp("2016-11-29T14:50:43.100000Z").unwrap(),
            api_version: "v0.5",
        };
        form_object(&stored_form(), FIXTURE_XML.as_bytes(), context).unwrap()
    }

    fn keys(value: &Value) -> Vec<String> {
        let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }

    #[test]
    fn the_object_has_every_key_of_commcares_example() {
        let expected = fixture_object();
        let object = object();
        assert_eq!(keys(&object), keys(&expected));
        assert_eq!(keys(&object["metadata"]), keys(&expected["metadata"]));
        for key in [
            "id",
            "domain",
            "app_id",
            "received_on",
            "indexed_on",
            "type",
            "uiversion",
            "version",
            "archived",
        ] {
            assert_eq!(object[key], expected[key], "{key}");
        }
        assert_eq!(
            object["resource_uri"],
            "/a/corpora/api/v0.5/form/f959449c-8776-42ac-b776-3f564fafc331/"
        );
        assert_eq!(object["server_modified_on"], "2016-11-29T14:50:43.100000Z");
    }

    #[test]
    fn the_xml_becomes_the_json_of_commcares_example() {
        let expected = fixture_object();
        let form = &object()["form"];
        assert_eq!(keys(form), keys(&expected["form"]));
        assert_eq!(form["case"], expected["form"]["case"]);
        for key in [
            "#type",
            "@name",
            "@uiVersion",
            "@version",
            "@xmlns",
            "question1",
            "old_data_node",
        ] {
            assert_eq!(form[key], expected["form"][key], "{key}");
        }
        assert_eq!(keys(&form["meta"]), keys(&expected["form"]["meta"]));
        for key in [
            "@xmlns",
            "appVersion",
            "deviceID",
            "instanceID",
            "timeEnd",
            "timeStart",
            "userID",
        ] {
            assert_eq!(
                form["meta"][key], expected["form"]["meta"][key],
                "meta {key}"
            );
        }
    }

    #[test]
    fn metadata_is_read_from_meta_as_commcare_does() {
        let expected = fixture_object();
        let metadata = &object()["metadata"];
        for key in [
            "appVersion",
            "app_build_version",
            "commcare_version",
            "deprecatedID",
            "deviceID",
            "doc_type",
            "instanceID",
            "timeEnd",
            "timeStart",
            "userID",
            "location",
        ] {
            assert_eq!(metadata[key], expected["metadata"][key], "metadata {key}");
        }
    }

    #[test]
    fn attachments_have_name_type_and_length() {
        let object = object();
        let attachments = &object["attachments"];
        assert_eq!(attachments["form.xml"]["content_type"], "text/xml");
        assert_eq!(attachments["form.xml"]["length"], FIXTURE_XML.len());
        assert_eq!(
            attachments["form.xml"]["url"],
            "/a/corpora/api/form/attachment/f959449c-8776-42ac-b776-3f564fafc331/form.xml"
        );
        assert_eq!(
            attachments["photo.jpg"],
            json!({"content_type": "image/jpeg", "length": 1234, "url": null})
        );
    }

    #[test]
    fn repeats_become_lists_and_attributes_keep_their_text() {
        let xml = br#"<?xml version="1.0"?>
<data xmlns="http://example.org/f" xmlns:jrm="http://dev.commcarehq.org/jr/xforms">
  <child><name>a</name></child>
  <child><name>b &amp; c</name></child>
  <child><name>d</name></child>
  <mother_id case_type="mother">m1</mother_id>
  <empty/>
  <n0:case xmlns:n0="http://commcarehq.org/case/transaction/v2" case_id="c1"><n0:update><n0:x>1</n0:x></n0:update></n0:case>
</data>"#;
        let json = Value::Object(xml_to_json(xml).unwrap());
        assert_eq!(
            json,
            json!({
                "#type": "data",
                "@xmlns": "http://example.org/f",
                "child": [{"name": "a"}, {"name": "b & c"}, {"name": "d"}],
                "mother_id": {"@case_type": "mother", "#text": "m1"},
                "empty": "",
                "case": {
                    "@case_id": "c1",
                    "@xmlns": "http://commcarehq.org/case/transaction/v2",
                    "update": {"x": "1"}
                }
            })
        );
    }

    #[test]
    fn unreadable_xml_names_the_form() {
        let context = ObjectContext {
            indexed_on: 0,
            api_version: "v0.5",
        };
        let error = form_object(&stored_form(), b"\xff\xfe<", context).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("form f959449c-8776-42ac-b776-3f564fafc331: its XML cannot be read as JSON: not UTF-8"),
            "{error}"
        );
    }
}
