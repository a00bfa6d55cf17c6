//! `case-xml`: forwards a case's current state as a CommCare case block
//! (`http://commcarehq.org/case/transaction/v2`), as CommCare HQ's case
//! repeater does in its XML format.
//!
//! An open case is written as
//!
//! ```xml
//! <case case_id=".." date_modified=".." user_id=".." xmlns="http://commcarehq.org/case/transaction/v2">
//!   <create><case_type/><case_name/><owner_id/></create>
//!   <update><external_id/><date_opened/>..every other property..</update>
//!   <index><IDENTIFIER case_type="..">case id</IDENTIFIER></index>
//! </case>
//! ```
//!
//! (without the whitespace). `external_id` appears only when the case has one
//! and `date_opened` carries the date alone, as CommCare writes them; indices
//! are sorted by identifier and carry a `relationship` attribute unless they
//! are plain `child` links. A closed case is written as the root element with
//! a lone `<close/>`. The request carries `Server-Modified-On`.

mod xml;

wit_bindgen::generate!({ world: "payload-format", path: "../../wit" });

use exports::repeatd::plugin::format::Guest;
use repeatd::plugin::types::{Case, Event, FormatInfo, Pair, Payload, PayloadKind, Request};

/// The name errors use for this plugin.
const PLUGIN_NAME: &str = "case-xml";

/// The namespace of CommCare's case transactions, version 2.
const CASE_TRANSACTION_V2_NAMESPACE: &str = "http://commcarehq.org/case/transaction/v2";

struct CaseXml;

impl Guest for CaseXml {
    fn info() -> FormatInfo {
        FormatInfo {
            description: "The case's current state as a CommCare case block (transaction v2 XML)"
                .to_string(),
            kinds: vec![PayloadKind::Case],
        }
    }

    fn build(kind: PayloadKind, event: Event, _settings: Vec<Pair>) -> Result<Payload, String> {
        match (kind, event) {
            (PayloadKind::Case, Event::Case(case)) => case_request(&case).map(Payload::Send),
            (PayloadKind::Case, other_event) => Err(format!(
                "{PLUGIN_NAME} cannot build a case payload from {}",
                describe_event(&other_event)
            )),
            (other_kind, _) => Err(format!(
                "{PLUGIN_NAME} cannot build {}",
                describe_kind(other_kind)
            )),
        }
    }
}

export!(CaseXml);

/// The request for one case: its case block and `Server-Modified-On`.
fn case_request(case: &Case) -> Result<Request, String> {
    Ok(Request {
        body: case_block(case)?.into_bytes(),
        content_type: "text/xml".to_string(),
        headers: vec![Pair {
            name: "Server-Modified-On".to_string(),
            value: case.server_date_modified.clone(),
        }],
        query: Vec::new(),
    })
}

/// Writes `case` as a v2 case block, or says which of its values XML cannot
/// carry.
fn case_block(case: &Case) -> Result<String, String> {
    check_writable(case)?;
    let mut out = String::with_capacity(512);
    out.push_str("<case");
    xml::push_attribute(&mut out, "case_id", &case.case_id);
    xml::push_attribute(&mut out, "date_modified", &case.date_modified);
    xml::push_attribute(&mut out, "user_id", &case.user_id);
    xml::push_attribute(&mut out, "xmlns", CASE_TRANSACTION_V2_NAMESPACE);
    out.push('>');
    if case.closed {
        out.push_str("<close/>");
    } else {
        push_create_block(&mut out, case);
        push_update_block(&mut out, case);
        push_index_block(&mut out, case);
    }
    out.push_str("</case>");
    Ok(out)
}

fn push_create_block(out: &mut String, case: &Case) {
    out.push_str("<create>");
    xml::push_text_element(out, "case_type", &case.case_type);
    xml::push_text_element(out, "case_name", &case.case_name);
    xml::push_text_element(out, "owner_id", &case.owner_id);
    out.push_str("</create>");
}

/// The `update` block: `external_id` when the case has one, the date it was
/// opened, then every other property in the order it was first set. Left out
/// when there is nothing to put in it.
fn push_update_block(out: &mut String, case: &Case) {
    let external_id = case
        .external_id
        .as_deref()
        .filter(|external_id| !external_id.is_empty());
    if external_id.is_none() && case.date_opened.is_empty() && case.properties.is_empty() {
        return;
    }
    out.push_str("<update>");
    if let Some(external_id) = external_id {
        xml::push_text_element(out, "external_id", external_id);
    }
    if !case.date_opened.is_empty() {
        xml::push_text_element(out, "date_opened", calendar_date(&case.date_opened));
    }
    for property in &case.properties {
        xml::push_text_element(out, &property.name, &property.value);
    }
    out.push_str("</update>");
}

/// The `index` block, its entries sorted by identifier; left out when the
/// case has no indices.
fn push_index_block(out: &mut String, case: &Case) {
    if case.indices.is_empty() {
        return;
    }
    let mut indices: Vec<_> = case.indices.iter().collect();
    indices.sort_by(|left, right| left.identifier.cmp(&right.identifier));
    out.push_str("<index>");
    for index in indices {
        out.push('<');
        out.push_str(&index.identifier);
        xml::push_attribute(out, "case_type", &index.case_type);
        if !index.relationship.is_empty() && index.relationship != "child" {
            xml::push_attribute(out, "relationship", &index.relationship);
        }
        out.push('>');
        xml::push_text(out, &index.case_id);
        out.push_str("</");
        out.push_str(&index.identifier);
        out.push('>');
    }
    out.push_str("</index>");
}

/// The `YYYY-MM-DD` a timestamp starts with (CommCare writes `date_opened`
/// as a date); anything else is passed through as given.
fn calendar_date(timestamp: &str) -> &str {
    let is_date = |date: &[u8]| {
        date.len() == 10
            && date
                .iter()
                .enumerate()
                .all(|(position, &byte)| match position {
                    4 | 7 => byte == b'-',
                    _ => byte.is_ascii_digit(),
                })
    };
    match timestamp.get(..10) {
        Some(date) if is_date(date.as_bytes()) => date,
        _ => timestamp,
    }
}

/// Checks that every value the block will hold can be written as XML:
/// property names and index identifiers must be element names, and no text
/// may hold a character XML 1.0 cannot carry.
fn check_writable(case: &Case) -> Result<(), String> {
    let case_id = &case.case_id;
    let check_text = |what: &str, value: &str| match xml::first_unrepresentable_char(value) {
        Some(character) => Err(format!(
            "{PLUGIN_NAME} cannot write case {case_id:?}: its {what} holds U+{:04X}, which XML cannot carry",
            u32::from(character)
        )),
        None => Ok(()),
    };
    let check_name = |what: &str, name: &str| {
        if xml::is_element_name(name) {
            Ok(())
        } else {
            Err(format!(
                "{PLUGIN_NAME} cannot write case {case_id:?}: {what} {name:?} is not an XML element name"
            ))
        }
    };

    check_text("case_id", &case.case_id)?;
    check_text("date_modified", &case.date_modified)?;
    check_text("user_id", &case.user_id)?;
    if case.closed {
        return Ok(());
    }
    check_text("case_type", &case.case_type)?;
    check_text("case_name", &case.case_name)?;
    check_text("owner_id", &case.owner_id)?;
    check_text("date_opened", &case.date_opened)?;
    if let Some(external_id) = &case.external_id {
        check_text("external_id", external_id)?;
    }
    for property in &case.properties {
        check_name("property name", &property.name)?;
        check_text(&format!("property {}", property.name), &property.value)?;
    }
    for index in &case.indices {
        check_name("index identifier", &index.identifier)?;
        check_text(
            &format!("index {} case_type", index.identifier),
            &index.case_type,
        )?;
        check_text(
            &format!("index {} case id", index.identifier),
            &index.case_id,
        )?;
        check_text(
            &format!("index {} relationship", index.identifier),
            &index.relationship,
        )?;
    }
    Ok(())
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
    use crate::test_support::{self, app_event, pair, seed_case};
    use repeatd::plugin::types::{AppChange, CaseIndex};

    const MOTHER_CASE_ID: &str = "9dbce942-0163-438b-b3e5-67b473d2f719";
    const SHEEL_USER_ID: &str = "67bffa913b38e7901851d863ededa475";

    /// The first child case of fixtures `reg2.xml` (created with an index to
    /// its mother), given a second, extension index to show both kinds.
    fn reg2_child_case() -> Case {
        Case {
            domain: "demo".to_string(),
            case_id: "17e36de1-b9de-423c-a6a6-605d291ec976".to_string(),
            case_type: "cc_bihar_newborn".to_string(),
            case_name: "C1".to_string(),
            owner_id: "main_user".to_string(),
            user_id: SHEEL_USER_ID.to_string(),
            external_id: Some("C1 <first> & \"only\"".to_string()),
            date_opened: "2012-05-25T15:30:31.704+05:30".to_string(),
            date_modified: "2012-05-25T10:00:31.704000Z".to_string(),
            server_date_opened: "2012-05-25T10:01:02.000001Z".to_string(),
            server_date_modified: "2012-05-25T10:01:02.000001Z".to_string(),
            closed: false,
            date_closed: None,
            properties: vec![
                pair("gender", "female"),
                pair("dob", "2011-11-25"),
                pair("edd", ""),
            ],
            indices: vec![
                CaseIndex {
                    identifier: "mother_id".to_string(),
                    case_type: "cc_bihar_pregnancy".to_string(),
                    case_id: MOTHER_CASE_ID.to_string(),
                    relationship: "child".to_string(),
                },
                CaseIndex {
                    identifier: "host".to_string(),
                    case_type: "cc_bihar_household".to_string(),
                    case_id: "household-1".to_string(),
                    relationship: "extension".to_string(),
                },
            ],
            xform_ids: vec!["91d014c5-02d9-4bfe-bd4c-c72f8624f6d2".to_string()],
            attachments: Vec::new(),
        }
    }

    /// The mother case after CommCare's `reg1.xml`, `reg2.xml` and `close.xml` test forms.
    fn closed_mother_case() -> Case {
        Case {
            domain: "demo".to_string(),
            case_id: MOTHER_CASE_ID.to_string(),
            case_type: "cc_bihar_pregnancy".to_string(),
            case_name: "Ad".to_string(),
            owner_id: "main_user".to_string(),
            user_id: SHEEL_USER_ID.to_string(),
            external_id: None,
            date_opened: "2012-05-25T09:57:38.490000Z".to_string(),
            date_modified: "2012-05-26T03:11:37.259000Z".to_string(),
            server_date_opened: "2012-05-25T10:00:00.000000Z".to_string(),
            server_date_modified: "2012-05-26T03:12:00.000000Z".to_string(),
            closed: true,
            date_closed: Some("2012-05-26T03:11:37.259000Z".to_string()),
            properties: vec![pair("mother_name", "Ad"), pair("age", "22")],
            indices: Vec::new(),
            xform_ids: vec![
                "8c4a4668-6be0-4f32-a1fd-e4d4e3ba2019".to_string(),
                "91d014c5-02d9-4bfe-bd4c-c72f8624f6d2".to_string(),
                "b45aeae8-ba55-4541-ae2e-0ead6b5e1f31".to_string(),
            ],
            attachments: Vec::new(),
        }
    }

    fn sent_request(payload: Payload) -> Request {
        test_support::sent_request("case-xml", payload)
    }

    #[test]
    fn seed_case_is_a_create_and_update_block() {
        let request = sent_request(
            CaseXml::build(PayloadKind::Case, Event::Case(seed_case()), Vec::new()).unwrap(),
        );
        assert_eq!(
            String::from_utf8(request.body).unwrap(),
            concat!(
                r#"<case case_id="5d0c2a7e-81f4-4b39-a6d2-9e3c70b1f4a8" date_modified="2015-04-17T20:04:54.950000Z""#,
                r#" user_id="3a9f1c07e2b84d65a0c7f2e91b4d8c36" xmlns="http://commcarehq.org/case/transaction/v2">"#,
                "<create><case_type>mscase</case_type><case_name>Baobab</case_name>",
                "<owner_id>3a9f1c07e2b84d65a0c7f2e91b4d8c36</owner_id></create>",
                "<update><date_opened>2015-04-17</date_opened></update>",
                "</case>",
            )
        );
        assert_eq!(request.content_type, "text/xml");
        assert_eq!(request.headers.len(), 1);
        assert_eq!(request.headers[0].name, "Server-Modified-On");
        assert_eq!(request.headers[0].value, "2015-04-17T20:04:57.123456Z");
        assert!(request.query.is_empty());
    }

    #[test]
    fn indexed_case_has_sorted_indices_escaped_values_and_all_properties() {
        assert_eq!(
            case_block(&reg2_child_case()).unwrap(),
            concat!(
                r#"<case case_id="17e36de1-b9de-423c-a6a6-605d291ec976" date_modified="2012-05-25T10:00:31.704000Z""#,
                r#" user_id="67bffa913b38e7901851d863ededa475" xmlns="http://commcarehq.org/case/transaction/v2">"#,
                "<create><case_type>cc_bihar_newborn</case_type><case_name>C1</case_name><owner_id>main_user</owner_id></create>",
                "<update><external_id>C1 &lt;first&gt; &amp; \"only\"</external_id><date_opened>2012-05-25</date_opened>",
                "<gender>female</gender><dob>2011-11-25</dob><edd/></update>",
                r#"<index><host case_type="cc_bihar_household" relationship="extension">household-1</host>"#,
                r#"<mother_id case_type="cc_bihar_pregnancy">9dbce942-0163-438b-b3e5-67b473d2f719</mother_id></index>"#,
                "</case>",
            )
        );
    }

    #[test]
    fn closed_case_gets_only_a_close_block() {
        let request = sent_request(
            CaseXml::build(
                PayloadKind::Case,
                Event::Case(closed_mother_case()),
                Vec::new(),
            )
            .unwrap(),
        );
        assert_eq!(
            String::from_utf8(request.body).unwrap(),
            concat!(
                r#"<case case_id="9dbce942-0163-438b-b3e5-67b473d2f719" date_modified="2012-05-26T03:11:37.259000Z""#,
                r#" user_id="67bffa913b38e7901851d863ededa475" xmlns="http://commcarehq.org/case/transaction/v2">"#,
                "<close/></case>",
            )
        );
        assert_eq!(request.headers[0].value, "2012-05-26T03:12:00.000000Z");
    }

    #[test]
    fn attributes_are_escaped() {
        let mut case = seed_case();
        case.user_id = "a\"b&c".to_string();
        assert!(
            case_block(&case)
                .unwrap()
                .contains(r#" user_id="a&quot;b&amp;c" "#)
        );
    }

    #[test]
    fn unwritable_names_and_characters_are_reported() {
        let mut case = seed_case();
        case.properties.push(pair("1st visit", "yes"));
        assert_eq!(
            case_block(&case).unwrap_err(),
            r#"case-xml cannot write case "5d0c2a7e-81f4-4b39-a6d2-9e3c70b1f4a8": property name "1st visit" is not an XML element name"#
        );

        let mut case = seed_case();
        case.properties.push(pair("note", "ring\u{7}"));
        assert_eq!(
            case_block(&case).unwrap_err(),
            r#"case-xml cannot write case "5d0c2a7e-81f4-4b39-a6d2-9e3c70b1f4a8": its property note holds U+0007, which XML cannot carry"#
        );
    }

    #[test]
    fn calendar_date_keeps_only_a_leading_date() {
        assert_eq!(calendar_date("2012-05-25T15:30:31.704+05:30"), "2012-05-25");
        assert_eq!(calendar_date("2012-05-25"), "2012-05-25");
        assert_eq!(calendar_date("yesterday"), "yesterday");
        assert_eq!(calendar_date("2012/05/25 10:00"), "2012/05/25 10:00");
    }

    #[test]
    fn other_kinds_and_events_are_refused() {
        let error =
            CaseXml::build(PayloadKind::Form, Event::Case(seed_case()), Vec::new()).unwrap_err();
        assert_eq!(error, "case-xml cannot build a form payload");

        let app_event = app_event(AppChange::Saved, None);
        let error = CaseXml::build(PayloadKind::Case, app_event, Vec::new()).unwrap_err();
        assert_eq!(
            error,
            "case-xml cannot build a case payload from an app event"
        );
    }

    #[test]
    fn info_names_the_case_kind() {
        assert_eq!(CaseXml::info().kinds, [PayloadKind::Case]);
    }
}
