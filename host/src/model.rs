//! The product's domain types, shared by ingest, the store, the queue and the
//! plugin host: forms, cases and their parts. Plain data with serde; no I/O.

use serde::{Deserialize, Serialize};

/// One index of a case: a named link to another case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseIndex {
    pub identifier: String,
    pub case_type: String,
    pub case_id: String,
    /// `child` (the default) or `extension`.
    pub relationship: String,
}

/// A case as it stands after every form that touched it, in CommCare's terms.
/// Device times (`date_opened`, `date_modified`, `date_closed`) are normalised
/// to UTC `YYYY-MM-DDTHH:MM:SS.ffffffZ` (no offset means UTC, a date means its
/// midnight, as HQ reads them) and kept as sent only when unparseable; server
/// times are always in that format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub domain: String,
    pub case_id: String,
    pub case_type: String,
    pub case_name: String,
    pub owner_id: String,
    /// The user whose form last changed the case.
    pub user_id: String,
    /// The user whose form created the case.
    pub opened_by: String,
    pub external_id: Option<String>,
    pub date_opened: String,
    pub date_modified: String,
    pub server_date_opened: String,
    pub server_date_modified: String,
    pub closed: bool,
    pub date_closed: Option<String>,
    pub closed_by: Option<String>,
    /// Every other property, in the order it was first set.
    pub properties: Vec<(String, String)>,
    pub indices: Vec<CaseIndex>,
    /// Forms that touched the case, oldest first, each once.
    pub xform_ids: Vec<String>,
    /// Attachment names, in the order first seen.
    pub attachments: Vec<String>,
}

/// An attachment part of a multipart submission: kept as name and size only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub size: u64,
}

/// What the device said of a form in its `meta` block, besides the form's id
/// (which becomes [`StoredForm::form_id`]). Values are trimmed; empty values are
/// `None`. Device times are kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FormMeta {
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub device_id: Option<String>,
    pub time_start: Option<String>,
    pub time_end: Option<String>,
    pub app_version: Option<String>,
}

/// A stored form's metadata; its XML is kept beside it, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredForm {
    pub domain: String,
    pub form_id: String,
    /// The root element's namespace.
    pub xmlns: String,
    pub app_id: Option<String>,
    /// Server time, UTC `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub received_on: String,
    /// Flattened: stored and answered as top-level keys, as before it was a struct.
    #[serde(flatten)]
    pub meta: FormMeta,
    /// Cases the form touched, in document order, each once.
    pub case_ids: Vec<String>,
    pub attachments: Vec<Attachment>,
    /// The last POST of this form said more parts follow (OpenRosa's
    /// `*isIncomplete*`, as Collect splits a submission with large
    /// attachments). Shown, not needed: a later POST of the same XML adds
    /// its attachments either way (`submission::later_post`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_parts: bool,
    /// A device log: stored, never forwarded.
    pub is_device_report: bool,
    /// How often the same form id was submitted again (answered 201, not processed).
    pub n_duplicates: u32,
    pub last_duplicate_on: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A form as the store wrote it before `meta` was a struct of its own: the
    /// meta fields are top-level keys, and they must stay so.
    const STORED_FORM_JSON: &str = r#"{"domain":"demo","form_id":"f1","xmlns":"http://example.org/visit","app_id":null,"received_on":"2026-01-02T03:04:05.000000Z","user_id":"nurse","username":"asha","device_id":"tab-1","time_start":"2026-01-02T03:00:00Z","time_end":"2026-01-02T03:04:00Z","app_version":"3.1","case_ids":["c1"],"attachments":[],"is_device_report":false,"n_duplicates":0,"last_duplicate_on":null}"#;

    #[test]
    fn a_stored_form_keeps_its_meta_as_top_level_keys() {
        let form: StoredForm = serde_json::from_str(STORED_FORM_JSON).unwrap();
        assert_eq!(
            form.meta,
            FormMeta {
                user_id: Some("nurse".into()),
                username: Some("asha".into()),
                device_id: Some("tab-1".into()),
                time_start: Some("2026-01-02T03:00:00Z".into()),
                time_end: Some("2026-01-02T03:04:00Z".into()),
                app_version: Some("3.1".into()),
            }
        );
        assert_eq!(serde_json::to_string(&form).unwrap(), STORED_FORM_JSON);
    }
}
