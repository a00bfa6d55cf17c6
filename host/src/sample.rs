//! Sample events for `repeatd plugin run` and the plugin benchmark: a form
//! file becomes the events a gateway would hand a plugin for it (the form,
//! or each case it creates), and small JSON files stand for app changes and
//! cases.

use std::collections::BTreeMap;

use crate::model::{Case, CaseIndex};
use crate::plugins::{self, Event};
use crate::record::AppChange;
use crate::repeater::PayloadKind;
use crate::submission::{self, SubmissionPlan};

/// The events `bytes` stands for, for a repeater of `kind` in `domain`.
pub fn events(bytes: &[u8], kind: PayloadKind, domain: &str) -> Result<Vec<Event>, String> {
    let text_start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != 0xEF && *b != 0xBB && *b != 0xBF)
        .map(|i| bytes[i]);
    match text_start {
        Some(b'<') => form_events(bytes, kind, domain),
        Some(b'{') => json_events(bytes, kind, domain),
        _ => Err("is neither a form (XML) nor an event (JSON)".into()),
    }
}

/// The form as the gateway would store it, received now, and the cases it
/// would leave behind in a domain that has none yet.
fn planned(bytes: &[u8], domain: &str) -> Result<SubmissionPlan<'static>, String> {
    let parsed = crate::xform::parse_form(bytes).map_err(|e| e.to_string())?;
    let received_on = crate::time::format_utc(crate::clock::Clock::system().now_micros());
    let (form, blocks) =
        submission::new_form(parsed, domain, || "sample-form".to_owned(), received_on);
    Ok(submission::plan(form, &blocks, BTreeMap::new(), &[]))
}

/// The Data API's form object for a form event made from the form file
/// `bytes` (its id, domain, app and received-on time as the event has them),
/// as `form-json` and other plugins that ask for it get it; `None` for other
/// events.
pub fn form_object(bytes: &[u8], event: &Event) -> Result<Option<String>, String> {
    let Event::Form(event_form) = event else {
        return Ok(None);
    };
    let parsed = crate::xform::parse_form(bytes).map_err(|e| e.to_string())?;
    let (mut form, _) = submission::new_form(
        parsed,
        &event_form.domain,
        || event_form.form_id.clone(),
        event_form.received_on.clone(),
    );
    form.app_id = event_form.app_id.clone();
    let indexed_on = crate::time::parse_timestamp(&form.received_on).unwrap_or_default();
    crate::data_api::form_object::form_object_json(&form, bytes, indexed_on)
        .map(Some)
        .map_err(|error| error.to_string())
}

fn form_events(bytes: &[u8], kind: PayloadKind, domain: &str) -> Result<Vec<Event>, String> {
    let planned = planned(bytes, domain)?;
    match kind {
        PayloadKind::Form | PayloadKind::FormStub => Ok(vec![plugins::form_event(&planned.form, bytes.to_vec())]),
        PayloadKind::Case => {
            if planned.cases.is_empty() {
                return Err("the form has no case block, so a case repeater would send nothing".into());
            }
            Ok(planned.cases.iter().map(plugins::case_event).collect())
        }
        PayloadKind::AppSchema => Err("an app-schema plugin takes an app event ({\"app_id\": .., \"event\": \"saved\"}), not a form".into()),
    }
}

fn json_events(bytes: &[u8], kind: PayloadKind, domain: &str) -> Result<Vec<Event>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    if value.get("event").is_some() {
        let app_id = text("app_id").ok_or("an app event needs \"app_id\"")?;
        let change = match text("event").as_deref() {
            Some("saved") => AppChange::Saved,
            Some("built") => AppChange::Built,
            other => {
                return Err(format!(
                    "\"event\" is {other:?}; want \"saved\" or \"built\""
                ));
            }
        };
        let build_id = text("build_id");
        if change == AppChange::Built && build_id.is_none() {
            return Err("a \"built\" event needs \"build_id\"".into());
        }
        if kind != PayloadKind::AppSchema {
            return Err(format!(
                "an app event goes to app-schema repeaters, not {kind}"
            ));
        }
        return Ok(vec![plugins::app_event(
            domain,
            &app_id,
            change,
            build_id.as_deref(),
        )]);
    }
    if value.get("case_id").is_some() {
        if kind != PayloadKind::Case {
            return Err(format!("a case goes to case repeaters, not {kind}"));
        }
        return Ok(vec![plugins::case_event(&case_from_json(&value, domain)?)]);
    }
    Err("JSON with neither \"event\" (an app event) nor \"case_id\" (a case)".into())
}

/// A case from the case-json shape (SPEC section 5).
fn case_from_json(value: &serde_json::Value, domain: &str) -> Result<Case, String> {
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    let properties = value
        .get("properties")
        .and_then(|p| p.as_object())
        .cloned()
        .unwrap_or_default();
    let property = |key: &str| text(properties.get(key));
    let now = crate::time::format_utc(crate::clock::Clock::system().now_micros());
    let standard = [
        "case_name",
        "case_type",
        "date_opened",
        "owner_id",
        "external_id",
    ];
    let indices = value
        .get("indices")
        .and_then(|i| i.as_object())
        .map(|indices| {
            indices
                .iter()
                .map(|(identifier, index)| CaseIndex {
                    identifier: identifier.clone(),
                    case_type: text(index.get("case_type")).unwrap_or_default(),
                    case_id: text(index.get("case_id")).unwrap_or_default(),
                    relationship: text(index.get("relationship")).unwrap_or_else(|| "child".into()),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Case {
        domain: text(value.get("domain")).unwrap_or_else(|| domain.to_owned()),
        case_id: text(value.get("case_id")).ok_or("\"case_id\" must be a string")?,
        case_type: property("case_type").unwrap_or_default(),
        case_name: property("case_name").unwrap_or_default(),
        owner_id: property("owner_id").unwrap_or_default(),
        user_id: text(value.get("user_id")).unwrap_or_default(),
        opened_by: text(value.get("opened_by")).unwrap_or_default(),
        external_id: property("external_id"),
        date_opened: property("date_opened").unwrap_or_else(|| now.clone()),
        date_modified: text(value.get("date_modified")).unwrap_or_else(|| now.clone()),
        server_date_opened: text(value.get("server_date_opened")).unwrap_or_else(|| now.clone()),
        server_date_modified: text(value.get("server_date_modified"))
            .unwrap_or_else(|| now.clone()),
        closed: value
            .get("closed")
            .and_then(|c| c.as_bool())
            .unwrap_or(false),
        date_closed: text(value.get("date_closed")),
        closed_by: text(value.get("closed_by")),
        properties: properties
            .iter()
            .filter(|(key, _)| !standard.contains(&key.as_str()))
            .map(|(key, v)| {
                (
                    key.clone(),
                    v.as_str().map_or_else(|| v.to_string(), str::to_owned),
                )
            })
            .collect(),
        indices,
        xform_ids: value
            .get("xform_ids")
            .and_then(|x| x.as_array())
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        attachments: Vec::new(),
    })
}
