//! How values are written into the store's tables. Every value starts with
//! one version byte that says how the rest is to be read:
//!
//! - `1`: JSON of the model type (serde_json). Every value of a store
//!   before schema 2 is this; records, attempts and notification states
//!   written then are still read as they are (forms and cases are rewritten
//!   once when such a store is opened: `migration`).
//! - `2`: compact binary (postcard, varints and length-prefixed strings) of
//!   the layouts below. A form or a case carries its `indexed_on` as the
//!   eight little-endian bytes right after the version byte, so the writer
//!   can stamp a value encoded before its transaction
//!   ([`stamp_indexed_on`]); a form carries its XML too, compressed with
//!   LZ4, so one key holds all a send or a listing needs.
//!
//! Keys are not repeated in values: a record's seq, a form's domain and id
//! are the key the value is stored under, and decoding is given them. A value
//! whose version byte this build does not know is reported as corrupt, naming
//! what it was, rather than misread.
//!
//! Why layouts of their own rather than postcard of the model types: those
//! are also the JSON the API answers with (a form's meta flattened, a
//! payload reference tagged by `type`), shapes a binary format without field
//! names cannot read back; and a layout here changes only with
//! `ENCODING_VERSION`, never because an API shape did.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::model::{Attachment, Case, FormMeta, StoredForm};
use crate::record::{AppChange, PayloadRef, RecordState, RepeatRecord};
use crate::repeater::PayloadKind;

/// JSON, what every value of a store before schema 2 is.
const JSON_VERSION: u8 = 1;
/// The binary layouts of this module.
const ENCODING_VERSION: u8 = 2;
/// Version byte and `indexed_on` before a form's or a case's layout.
const STAMPED_HEADER: usize = 9;

/// Encodes a value whose serde shape a binary format can read back (plain
/// structs and enums: `Attempt`); see the layouts below for the others.
pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![ENCODING_VERSION];
    postcard_into(&mut bytes, value);
    bytes
}

/// Encodes a value as JSON (notification states: their type is the
/// notifier's, and may use serde's self-describing features).
pub(super) fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![JSON_VERSION];
    serde_json::to_writer(&mut bytes, value).expect("store values serialize");
    bytes
}

fn postcard_into<T: Serialize + ?Sized>(bytes: &mut Vec<u8>, value: &T) {
    // `Vec` as the flavor: appending never fails.
    let encoded = postcard::to_extend(value, std::mem::take(bytes)).expect("store values encode");
    *bytes = encoded;
}

/// Decodes a value written by [`encode`] or [`encode_json`] (or by a
/// repeatd before schema 2); `what` names it ("attempt of record 7") for
/// the error.
pub(super) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    let result = match bytes.split_first() {
        Some((&JSON_VERSION, json)) => serde_json::from_slice(json).map_err(|e| e.to_string()),
        Some((&ENCODING_VERSION, binary)) => from_postcard(binary),
        Some((version, _)) => Err(format!("unknown encoding version {version}")),
        None => Err("empty value".into()),
    };
    result.map_err(|problem| corrupt(what, problem))
}

fn from_postcard<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, String> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} bytes after the value", rest.len())),
        Err(error) => Err(error.to_string()),
    }
}

fn corrupt(what: impl FnOnce() -> String, problem: String) -> StoreError {
    StoreError::Corrupt {
        what: what(),
        problem,
    }
}

// ---- records ----------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct RecordLayout<'a> {
    #[serde(borrow)]
    domain: Cow<'a, str>,
    #[serde(borrow)]
    repeater: Cow<'a, str>,
    repeater_id: u64,
    /// Index in `PayloadKind::ALL`.
    kind: u8,
    #[serde(borrow)]
    payload: PayloadLayout<'a>,
    state: RecordState,
    n_attempts: u32,
    budget_start: u32,
    registered_at: i64,
    next_attempt_at: Option<i64>,
    last_attempt_at: Option<i64>,
    #[serde(borrow)]
    last_error: Option<Cow<'a, str>>,
}

#[derive(Serialize, Deserialize)]
enum PayloadLayout<'a> {
    Form(#[serde(borrow)] Cow<'a, str>),
    Case(#[serde(borrow)] Cow<'a, str>),
    App {
        #[serde(borrow)]
        app_id: Cow<'a, str>,
        change: AppChange,
        #[serde(borrow)]
        build_id: Option<Cow<'a, str>>,
    },
}

/// A record's value; its seq is the key.
pub(super) fn encode_record(record: &RepeatRecord) -> Vec<u8> {
    let payload = match &record.payload {
        PayloadRef::Form { form_id } => PayloadLayout::Form(Cow::Borrowed(form_id)),
        PayloadRef::Case { case_id } => PayloadLayout::Case(Cow::Borrowed(case_id)),
        PayloadRef::App {
            app_id,
            change,
            build_id,
        } => PayloadLayout::App {
            app_id: Cow::Borrowed(app_id),
            change: *change,
            build_id: build_id.as_deref().map(Cow::Borrowed),
        },
    };
    let kind = PayloadKind::ALL
        .iter()
        .position(|kind| *kind == record.kind)
        .expect("every kind is in ALL") as u8;
    let layout = RecordLayout {
        domain: Cow::Borrowed(&record.domain),
        repeater: Cow::Borrowed(&record.repeater),
        repeater_id: record.repeater_id,
        kind,
        payload,
        state: record.state,
        n_attempts: record.n_attempts,
        budget_start: record.budget_start,
        registered_at: record.registered_at,
        next_attempt_at: record.next_attempt_at,
        last_attempt_at: record.last_attempt_at,
        last_error: record.last_error.as_deref().map(Cow::Borrowed),
    };
    let mut bytes = Vec::with_capacity(64);
    bytes.push(ENCODING_VERSION);
    postcard_into(&mut bytes, &layout);
    bytes
}

/// The record stored under `seq`.
pub(super) fn decode_record(seq: u64, bytes: &[u8]) -> Result<RepeatRecord, StoreError> {
    let what = || format!("record {seq}");
    let binary = match bytes.split_first() {
        Some((&ENCODING_VERSION, binary)) => binary,
        _ => return decode(bytes, what),
    };
    let layout: RecordLayout = from_postcard(binary).map_err(|problem| corrupt(what, problem))?;
    let kind = *PayloadKind::ALL
        .get(usize::from(layout.kind))
        .ok_or_else(|| corrupt(what, format!("unknown payload kind {}", layout.kind)))?;
    let payload = match layout.payload {
        PayloadLayout::Form(form_id) => PayloadRef::Form {
            form_id: form_id.into_owned(),
        },
        PayloadLayout::Case(case_id) => PayloadRef::Case {
            case_id: case_id.into_owned(),
        },
        PayloadLayout::App {
            app_id,
            change,
            build_id,
        } => PayloadRef::App {
            app_id: app_id.into_owned(),
            change,
            build_id: build_id.map(Cow::into_owned),
        },
    };
    Ok(RepeatRecord {
        seq,
        domain: layout.domain.into_owned(),
        repeater: layout.repeater.into_owned(),
        repeater_id: layout.repeater_id,
        kind,
        payload,
        state: layout.state,
        n_attempts: layout.n_attempts,
        budget_start: layout.budget_start,
        registered_at: layout.registered_at,
        next_attempt_at: layout.next_attempt_at,
        last_attempt_at: layout.last_attempt_at,
        last_error: layout.last_error.map(Cow::into_owned),
    })
}

// ---- forms and cases: stamped with their indexed_on ---------------------------

#[derive(Serialize, Deserialize)]
struct FormLayout<'a> {
    #[serde(borrow)]
    xmlns: Cow<'a, str>,
    #[serde(borrow)]
    app_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    received_on: Cow<'a, str>,
    meta: Cow<'a, FormMeta>,
    case_ids: Cow<'a, [String]>,
    attachments: Cow<'a, [Attachment]>,
    awaiting_parts: bool,
    is_device_report: bool,
    n_duplicates: u32,
    #[serde(borrow)]
    last_duplicate_on: Option<Cow<'a, str>>,
    /// The submitted XML, LZ4-compressed with its length in front. (serde
    /// writes a slice as a sequence and reads `&[u8]` as bytes; in postcard
    /// both are a length and the bytes, so it is read back borrowed.)
    #[serde(borrow)]
    xml: &'a [u8],
}

/// A form's XML as its value holds it: LZ4-compressed, its length in front.
/// The costly part of encoding a form, so done before a job reaches the
/// writer (on the request's task).
pub(super) fn compress_xml(xml: &[u8]) -> Vec<u8> {
    lz4_flex::compress_prepend_size(xml)
}

/// A form's value, its XML given compressed ([`compress_xml`]), before its
/// `indexed_on` is known (zero until [`stamp_indexed_on`]).
pub(super) fn encode_form(form: &StoredForm, compressed_xml: &[u8]) -> Vec<u8> {
    let layout = FormLayout {
        xmlns: Cow::Borrowed(&form.xmlns),
        app_id: form.app_id.as_deref().map(Cow::Borrowed),
        received_on: Cow::Borrowed(&form.received_on),
        meta: Cow::Borrowed(&form.meta),
        case_ids: Cow::Borrowed(&form.case_ids),
        attachments: Cow::Borrowed(&form.attachments),
        awaiting_parts: form.awaiting_parts,
        is_device_report: form.is_device_report,
        n_duplicates: form.n_duplicates,
        last_duplicate_on: form.last_duplicate_on.as_deref().map(Cow::Borrowed),
        xml: compressed_xml,
    };
    let mut bytes = Vec::with_capacity(STAMPED_HEADER + 256 + compressed_xml.len());
    bytes.push(ENCODING_VERSION);
    bytes.extend_from_slice(&0u64.to_le_bytes());
    postcard_into(&mut bytes, &layout);
    bytes
}

/// A case's value, before its `indexed_on` is known.
pub(super) fn encode_case(case: &Case) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(STAMPED_HEADER + 256);
    bytes.push(ENCODING_VERSION);
    bytes.extend_from_slice(&0u64.to_le_bytes());
    postcard_into(&mut bytes, case);
    bytes
}

/// Puts `indexed_on` into a form's or a case's encoded value.
pub(super) fn stamp_indexed_on(value: &mut [u8], indexed_on: u64) {
    value[1..STAMPED_HEADER].copy_from_slice(&indexed_on.to_le_bytes());
}

/// The `indexed_on` a form's or a case's value carries.
pub(super) fn indexed_on_of(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<u64, StoreError> {
    let (_, stamp) = stamped(bytes, what)?;
    Ok(stamp)
}

fn stamped(bytes: &[u8], what: impl FnOnce() -> String) -> Result<(&[u8], u64), StoreError> {
    match bytes.first() {
        Some(&ENCODING_VERSION) if bytes.len() >= STAMPED_HEADER => {
            let stamp = u64::from_le_bytes(bytes[1..STAMPED_HEADER].try_into().expect("8 bytes"));
            Ok((&bytes[STAMPED_HEADER..], stamp))
        }
        Some(&ENCODING_VERSION) => Err(corrupt(what, "value is cut short".into())),
        Some(version) => Err(corrupt(what, format!("unknown encoding version {version}"))),
        None => Err(corrupt(what, "empty value".into())),
    }
}

/// A form read from its value: the form, its `indexed_on`, and its XML as
/// stored (decompressed only when asked for).
pub(super) struct FormValue<'a> {
    pub form: StoredForm,
    pub indexed_on: u64,
    compressed_xml: &'a [u8],
}

impl FormValue<'_> {
    /// The form's XML, byte for byte as submitted.
    pub fn xml(&self) -> Result<Vec<u8>, StoreError> {
        decompress_xml(self.compressed_xml, &self.form.form_id)
    }

    /// How long the form's XML is as submitted, from the length the
    /// compressed XML carries in front (nothing is decompressed).
    pub fn xml_len(&self) -> Result<u64, StoreError> {
        match claimed_xml_len(self.compressed_xml) {
            Some(size) => Ok(size as u64),
            None => Err(corrupt(
                || format!("XML of form {}", self.form.form_id),
                "value is cut short".into(),
            )),
        }
    }

    /// The value again, with `form` changed (a later part's attachments, a
    /// duplicate counted) and the XML kept as it is.
    pub fn reencode(&self) -> Vec<u8> {
        let mut bytes = encode_form(&self.form, self.compressed_xml);
        stamp_indexed_on(&mut bytes, self.indexed_on);
        bytes
    }
}

/// The form stored under (`domain`, `form_id`).
pub(super) fn decode_form<'a>(
    domain: &str,
    form_id: &str,
    bytes: &'a [u8],
) -> Result<FormValue<'a>, StoreError> {
    let what = || format!("form {form_id}");
    let (binary, indexed_on) = stamped(bytes, what)?;
    let layout: FormLayout<'a> = from_postcard(binary).map_err(|problem| corrupt(what, problem))?;
    let compressed_xml = layout.xml;
    let form = StoredForm {
        domain: domain.to_owned(),
        form_id: form_id.to_owned(),
        xmlns: layout.xmlns.into_owned(),
        app_id: layout.app_id.map(Cow::into_owned),
        received_on: layout.received_on.into_owned(),
        meta: layout.meta.into_owned(),
        case_ids: layout.case_ids.into_owned(),
        attachments: layout.attachments.into_owned(),
        awaiting_parts: layout.awaiting_parts,
        is_device_report: layout.is_device_report,
        n_duplicates: layout.n_duplicates,
        last_duplicate_on: layout.last_duplicate_on.map(Cow::into_owned),
    };
    Ok(FormValue {
        form,
        indexed_on,
        compressed_xml,
    })
}

/// The largest XML a form's value may claim to expand to; a larger claim is
/// a damaged value, not a form (the receiver's body limit is far below).
const MAX_XML_BYTES: usize = 1 << 30;

/// The length a compressed XML ([`compress_xml`]) says it expands to.
fn claimed_xml_len(compressed: &[u8]) -> Option<usize> {
    compressed
        .get(..4)
        .map(|size| u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize)
}

fn decompress_xml(compressed: &[u8], form_id: &str) -> Result<Vec<u8>, StoreError> {
    let what = || format!("XML of form {form_id}");
    match claimed_xml_len(compressed) {
        Some(size) if size <= MAX_XML_BYTES => lz4_flex::decompress_size_prepended(compressed)
            .map_err(|error| corrupt(what, error.to_string())),
        Some(size) => Err(corrupt(what, format!("claims {size} bytes"))),
        None => Err(corrupt(what, "value is cut short".into())),
    }
}

/// The case stored under its key, and its `indexed_on`.
pub(super) fn decode_case(bytes: &[u8], case_id: &str) -> Result<(Case, u64), StoreError> {
    let what = || format!("case {case_id}");
    let (binary, indexed_on) = stamped(bytes, what)?;
    let case = from_postcard(binary).map_err(|problem| corrupt(what, problem))?;
    Ok((case, indexed_on))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Attempt;

    #[test]
    fn a_value_reads_back_as_written() {
        let attempt = Attempt {
            number: 2,
            at: 1_700_000_000_000_000,
            duration_ms: 12,
            url: "http://127.0.0.1:9/x".into(),
            status: Some(503),
            response: Some("busy".into()),
            error: None,
        };
        let bytes = encode(&attempt);
        assert_eq!(bytes[0], ENCODING_VERSION);
        let back: Attempt = decode(&bytes, || "attempt".into()).unwrap();
        assert_eq!(back, attempt);
        let json = encode_json(&vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(json[0], JSON_VERSION);
        let back: Vec<String> = decode(&json, || "list".into()).unwrap();
        assert_eq!(back, ["a", "b"]);
    }

    #[test]
    fn unreadable_values_name_what_they_were() {
        let unknown = decode::<u32>(&[9, b'1'], || "record 7".into()).unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "store: record 7 is not readable: unknown encoding version 9"
        );
        let empty = decode::<u32>(&[], || "case c1".into()).unwrap_err();
        assert_eq!(
            empty.to_string(),
            "store: case c1 is not readable: empty value"
        );
        let garbled = decode::<u32>(&[JSON_VERSION, b'x'], || "form f1".into()).unwrap_err();
        assert!(
            garbled
                .to_string()
                .starts_with("store: form f1 is not readable: "),
            "{garbled}"
        );
        let trailing = decode::<u32>(&[ENCODING_VERSION, 1, 2], || "attempt".into()).unwrap_err();
        assert_eq!(
            trailing.to_string(),
            "store: attempt is not readable: 1 bytes after the value"
        );
        let short = decode_case(&[ENCODING_VERSION, 1, 2], "c1").unwrap_err();
        assert_eq!(
            short.to_string(),
            "store: case c1 is not readable: value is cut short"
        );
        let record = decode_record(7, &[ENCODING_VERSION, 0xff]).unwrap_err();
        assert!(
            record
                .to_string()
                .starts_with("store: record 7 is not readable: "),
            "{record}"
        );
    }

    fn record(payload: PayloadRef) -> RepeatRecord {
        let mut record = RepeatRecord::new(
            41,
            "demo",
            "cases",
            3,
            PayloadKind::Case,
            payload,
            1_700_000_000_000_000,
        );
        record.state = RecordState::Failed;
        record.n_attempts = 2;
        record.last_attempt_at = Some(1_700_000_000_500_000);
        record.last_error = Some("remote answered 503".into());
        record
    }

    #[test]
    fn a_record_reads_back_as_written_and_small() {
        for payload in [
            PayloadRef::Case {
                case_id: "c1".into(),
            },
            PayloadRef::Form {
                form_id: "f1".into(),
            },
            PayloadRef::App {
                app_id: "app".into(),
                change: AppChange::Built,
                build_id: Some("b7".into()),
            },
        ] {
            let record = record(payload);
            let bytes = encode_record(&record);
            assert_eq!(decode_record(41, &bytes).unwrap(), record);
            let json = encode_json(&record);
            assert!(
                bytes.len() * 4 < json.len(),
                "{} vs {}",
                bytes.len(),
                json.len()
            );
        }
    }

    #[test]
    fn a_record_written_as_json_before_schema_2_still_reads() {
        let record = record(PayloadRef::Case {
            case_id: "c1".into(),
        });
        let json = encode_json(&record);
        assert_eq!(decode_record(41, &json).unwrap(), record);
    }

    fn form() -> StoredForm {
        StoredForm {
            domain: "demo".into(),
            form_id: "f1".into(),
            xmlns: "http://example.org/visit".into(),
            app_id: Some("app".into()),
            received_on: "2026-01-02T03:04:05.000000Z".into(),
            meta: FormMeta {
                user_id: Some("nurse".into()),
                username: None,
                device_id: Some("tab-1".into()),
                time_start: None,
                time_end: Some("2026-01-02T03:04:00Z".into()),
                app_version: None,
            },
            case_ids: vec!["c1".into(), "c2".into()],
            attachments: vec![Attachment {
                name: "a.jpg".into(),
                content_type: "image/jpeg".into(),
                size: 10,
            }],
            awaiting_parts: true,
            is_device_report: false,
            n_duplicates: 1,
            last_duplicate_on: Some("2026-01-02T03:05:00.000000Z".into()),
        }
    }

    #[test]
    fn a_form_reads_back_with_its_xml_and_stamp() {
        let xml = "<data xmlns=\"http://example.org/visit\"><a>1</a><a>1</a><a>1</a></data>"
            .repeat(20)
            .into_bytes();
        let mut bytes = encode_form(&form(), &compress_xml(&xml));
        assert!(bytes.len() < xml.len(), "the XML is compressed");
        stamp_indexed_on(&mut bytes, 77);
        let value = decode_form("demo", "f1", &bytes).unwrap();
        assert_eq!(value.form, form());
        assert_eq!(value.indexed_on, 77);
        assert_eq!(value.xml().unwrap(), xml);
        assert_eq!(indexed_on_of(&bytes, || "form f1".into()).unwrap(), 77);

        let mut changed = value;
        changed.form.n_duplicates = 2;
        let again = changed.reencode();
        let back = decode_form("demo", "f1", &again).unwrap();
        assert_eq!(back.form.n_duplicates, 2);
        assert_eq!(back.indexed_on, 77);
        assert_eq!(back.xml().unwrap(), xml);
    }

    #[test]
    fn a_form_whose_xml_claims_too_much_is_corrupt() {
        let mut form_value = encode_form(&form(), &compress_xml(b"<data/>"));
        // The XML's length prefix is the last bytes' start: corrupt it.
        let at = form_value.len() - b"<data/>".len() - 1 - 4;
        form_value[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let error = decode_form("demo", "f1", &form_value)
            .unwrap()
            .xml()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "store: XML of form f1 is not readable: claims {} bytes",
                u32::MAX
            )
        );
    }

    #[test]
    fn a_case_reads_back_with_its_stamp() {
        let case = Case {
            domain: "demo".into(),
            case_id: "c1".into(),
            case_type: "household".into(),
            case_name: "Asha".into(),
            owner_id: "o1".into(),
            user_id: "u1".into(),
            opened_by: "u1".into(),
            external_id: None,
            date_opened: "2026-01-02T03:04:05.000000Z".into(),
            date_modified: "2026-01-02T03:04:05.000000Z".into(),
            server_date_opened: "2026-01-02T03:04:05.000000Z".into(),
            server_date_modified: "2026-01-02T03:04:05.000000Z".into(),
            closed: false,
            date_closed: None,
            closed_by: None,
            properties: vec![("village".into(), "Kisumu".into())],
            indices: Vec::new(),
            xform_ids: vec!["f1".into()],
            attachments: Vec::new(),
        };
        let mut bytes = encode_case(&case);
        stamp_indexed_on(&mut bytes, 5);
        assert_eq!(decode_case(&bytes, "c1").unwrap(), (case, 5));
    }
}
