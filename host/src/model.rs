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
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub device_id: Option<String>,
    pub time_start: Option<String>,
    pub time_end: Option<String>,
    pub app_version: Option<String>,
    /// Cases the form touched, in document order, each once.
    pub case_ids: Vec<String>,
    pub attachments: Vec<Attachment>,
    /// A device log: stored, never forwarded.
    pub is_device_report: bool,
    /// How often the same form id was submitted again (answered 201, not processed).
    pub n_duplicates: u32,
    pub last_duplicate_on: Option<String>,
}
