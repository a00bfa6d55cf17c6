//! A test session that drives one domain through a sequence of forms and
//! checks every step the way a user of the gateway would: the OpenRosa answer,
//! the stored form, one record per form and per touched case, what the
//! form-xml and case-json repeaters forwarded, and each case field by field
//! through the admin API. The steps and the case states they must build are
//! data, a case-states file ([`check_case_states`]):
//! `tests/fixtures/case_states.json` for the project's own forms, run by
//! `tests/tests/ingest.rs`, and `tests/fixtures/commcare_case_states.json` for
//! CommCare's, run by `tests/tests/commcare_fixtures.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Gateway, Received, Receiver, is_timestamp};

/// How long a session waits for its records to be delivered.
pub const WAIT: Duration = Duration::from_secs(30);
pub const OPENROSA_SUCCESS: &str = "<OpenRosaResponse xmlns=\"http://openrosa.org/http/response\"><message nature=\"submit_success\">";
pub const OPENROSA_ERROR: &str = "<OpenRosaResponse xmlns=\"http://openrosa.org/http/response\"><message nature=\"submit_error\">";

/// What the receiver endpoint answered.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Posts a body to `url` as `danny:pw`.
pub async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>, content_type: &str) -> Reply {
    let response = client
        .post(url)
        .basic_auth("danny", Some("pw"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("submitting");
    Reply {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap_or_default(),
    }
}

const BOUNDARY: &str = "repeatd-test-boundary-7f3a9c";

/// An OpenRosa multipart body: each part is (name, file name, content type, bytes).
pub fn multipart(parts: &[(&str, &str, &str, &[u8])]) -> (Vec<u8>, String) {
    let mut body = Vec::new();
    for (name, file_name, content_type, content) in parts {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: {content_type}\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(content);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    (body, format!("multipart/form-data; boundary={BOUNDARY}"))
}

/// Bytes that look like a photo: never contain the boundary.
pub fn photo(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// How a form is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The XML as the body, `text/xml`.
    Raw,
    /// OpenRosa multipart: `xml_submission_file` plus one photo part.
    Multipart,
}

/// One domain with a form-xml repeater ("forms") and a case-json repeater
/// ("cases"), each with its own receiver path, and submitter danny:pw.
pub fn project(domain: &str, receiver: &Receiver, repeater_extra: &str) -> String {
    format!(
        r#"
[[domains]]
name = "{domain}"

[[submitters]]
domain = "{domain}"
username = "danny"
password = "pw"

[[connections]]
domain = "{domain}"
name = "forms-rx"
url = "{forms_url}"
auth = {{ type = "none" }}

[[connections]]
domain = "{domain}"
name = "cases-rx"
url = "{cases_url}"
auth = {{ type = "none" }}

[[repeaters]]
domain = "{domain}"
name = "forms"
kind = "form"
connection = "forms-rx"
format = "form-xml"
{repeater_extra}

[[repeaters]]
domain = "{domain}"
name = "cases"
kind = "case"
connection = "cases-rx"
format = "case-json"
{repeater_extra}
"#,
        forms_url = receiver.url(&format!("/{domain}/forms")),
        cases_url = receiver.url(&format!("/{domain}/cases")),
    )
}

pub async fn get_case(gateway: &Gateway, domain: &str, case_id: &str) -> (u16, Value) {
    gateway
        .api(
            "GET",
            &format!("/api/v1/domains/{domain}/cases/{case_id}"),
            None,
        )
        .await
}

pub async fn get_form(gateway: &Gateway, domain: &str, form_id: &str) -> (u16, Value) {
    gateway
        .api(
            "GET",
            &format!("/api/v1/domains/{domain}/forms/{form_id}"),
            None,
        )
        .await
}

/// Compares two JSON objects key by key (and `properties` and `indices` key by
/// key), so a failure names the field that differs.
pub fn assert_fields(what: &str, actual: &Value, expected: &Value) {
    let (Some(actual_map), Some(expected_map)) = (actual.as_object(), expected.as_object()) else {
        panic!("{what}: not an object: {actual}");
    };
    let keys: BTreeSet<&String> = actual_map.keys().chain(expected_map.keys()).collect();
    for key in keys {
        if matches!(key.as_str(), "properties" | "indices") {
            assert_fields(&format!("{what}.{key}"), &actual[key], &expected[key]);
        } else {
            assert_eq!(
                actual.get(key),
                expected.get(key),
                "{what}: field {key}\nactual: {actual}"
            );
        }
    }
}

/// Drives one domain through a sequence of test forms and checks every step.
pub struct Session<'a> {
    pub gateway: &'a Gateway,
    pub receiver: &'a Receiver,
    pub client: reqwest::Client,
    pub domain: String,
    pub mode: Mode,
    /// Form ids in submission order.
    pub form_ids: Vec<String>,
    pub received_on: HashMap<String, String>,
    /// Case id → how many case records it should have.
    pub case_records: BTreeMap<String, usize>,
    /// Where the forms `submit` names are.
    pub forms: PathBuf,
    /// Form file name → the form id it got.
    pub form_of: HashMap<String, String>,
}

impl<'a> Session<'a> {
    /// A session on `domain` submitting in `mode` the forms found in `forms`.
    pub fn new(
        gateway: &'a Gateway,
        receiver: &'a Receiver,
        domain: &str,
        mode: Mode,
        forms: &Path,
    ) -> Session<'a> {
        Session {
            gateway,
            receiver,
            client: reqwest::Client::new(),
            domain: domain.to_owned(),
            mode,
            form_ids: Vec::new(),
            received_on: HashMap::new(),
            case_records: BTreeMap::new(),
            forms: forms.to_owned(),
            form_of: HashMap::new(),
        }
    }

    fn attachment_size(&self) -> usize {
        1_000 + 37 * self.form_ids.len()
    }

    /// Submits a fixture; checks the OpenRosa answer, the stored form, the
    /// records registered (one form record, one record per touched case), that
    /// they are delivered, that the form-xml repeater forwarded exactly the XML
    /// and the case-json repeater each case's latest state. Returns the form id.
    pub async fn submit(
        &mut self,
        fixture_name: &str,
        expected_form_id: Option<&str>,
        touched: &[&str],
    ) -> String {
        let step = format!("{} ({:?}, {fixture_name})", self.domain, self.mode);
        let path = self.forms.join(fixture_name);
        let xml = std::fs::read(&path)
            .unwrap_or_else(|error| panic!("{step}: cannot read {}: {error}", path.display()));
        let photo_name = format!("photo-{}.jpg", self.form_ids.len());
        let photo_bytes = photo(self.attachment_size());
        let (body, content_type) = match self.mode {
            Mode::Raw => (xml.clone(), "text/xml".to_owned()),
            Mode::Multipart => multipart(&[
                ("xml_submission_file", "xform.xml", "text/xml", &xml),
                (&photo_name, &photo_name, "image/jpeg", &photo_bytes),
            ]),
        };
        let reply = post(
            &self.client,
            &self.gateway.url(&format!("/a/{}/receiver", self.domain)),
            body,
            &content_type,
        )
        .await;
        assert_eq!(reply.status, 201, "{step}: {}", reply.body);
        assert!(
            reply.body.starts_with(OPENROSA_SUCCESS),
            "{step}: {}",
            reply.body
        );
        assert!(
            reply.body.ends_with("</message></OpenRosaResponse>"),
            "{step}: {}",
            reply.body
        );
        assert_eq!(reply.header("x-openrosa-version"), Some("1.0"), "{step}");
        assert!(
            reply
                .header("content-type")
                .unwrap_or("")
                .starts_with("text/xml"),
            "{step}"
        );

        // Exactly one new form record; its payload is the form id.
        let form_records = self.gateway.records(&self.domain, "repeater=forms").await;
        let new_form_ids: Vec<String> = form_records
            .iter()
            .map(|r| r["payload_id"].as_str().unwrap().to_owned())
            .filter(|id| !self.form_ids.contains(id))
            .collect();
        assert_eq!(
            new_form_ids.len(),
            1,
            "{step}: one form record per form: {form_records:?}"
        );
        assert_eq!(form_records.len(), self.form_ids.len() + 1, "{step}");
        let form_id = new_form_ids[0].clone();
        match expected_form_id {
            Some(expected) => assert_eq!(form_id, expected, "{step}: the form id"),
            None => assert!(
                form_id.len() == 32 && form_id.bytes().all(|c| c.is_ascii_hexdigit()),
                "{step}: a generated form id: {form_id}"
            ),
        }
        self.form_ids.push(form_id.clone());
        self.form_of
            .insert(fixture_name.to_owned(), form_id.clone());

        // One case record per touched case, whatever the number of blocks.
        for case_id in touched {
            *self.case_records.entry((*case_id).to_owned()).or_default() += 1;
        }
        let case_records = self.gateway.records(&self.domain, "repeater=cases").await;
        let mut per_case: BTreeMap<String, usize> = BTreeMap::new();
        for record in &case_records {
            *per_case
                .entry(record["payload_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        assert_eq!(per_case, self.case_records, "{step}: case records per case");

        // The stored form.
        let (status, form) = get_form(self.gateway, &self.domain, &form_id).await;
        assert_eq!(status, 200, "{step}: {form}");
        assert_eq!(form["form_id"], form_id.as_str(), "{step}");
        assert_eq!(form["domain"], self.domain.as_str(), "{step}");
        assert_eq!(
            form["case_ids"],
            json!(touched),
            "{step}: touched cases in document order"
        );
        assert_eq!(form["is_device_report"], false, "{step}");
        assert_eq!(form["n_duplicates"], 0, "{step}");
        let received_on = form["received_on"].as_str().unwrap_or_default().to_owned();
        assert!(is_timestamp(&received_on), "{step}: {form}");
        let expected_attachments = match self.mode {
            Mode::Raw => json!([]),
            Mode::Multipart => {
                json!([{"name": photo_name, "content_type": "image/jpeg", "size": photo_bytes.len()}])
            }
        };
        assert_eq!(
            form["attachments"], expected_attachments,
            "{step}: attachments keep name and size"
        );
        self.received_on.insert(form_id.clone(), received_on);

        // Everything is delivered once; the form-xml body is exactly the XML.
        let n_records = self.form_ids.len() + self.case_records.values().sum::<usize>();
        let records = self
            .gateway
            .wait_records(&self.domain, "", n_records, "succeeded", WAIT)
            .await;
        assert!(
            records.len() == n_records
                && records
                    .iter()
                    .all(|r| r["state"] == "succeeded" && r["n_attempts"] == 1),
            "{step}: {records:?}"
        );
        let forwarded = self.receiver.requests(&format!("/{}/forms", self.domain));
        assert_eq!(
            forwarded.len(),
            self.form_ids.len(),
            "{step}: one form request per form"
        );
        let this_form = forwarded.last().unwrap();
        assert!(
            this_form.body == xml,
            "{step}: the form-xml repeater forwards exactly the XML:\n{}",
            this_form.text()
        );
        assert_eq!(this_form.header("content-type"), Some("text/xml"), "{step}");
        let case_requests = self.receiver.requests(&format!("/{}/cases", self.domain));
        assert_eq!(
            case_requests.len(),
            self.case_records.values().sum::<usize>(),
            "{step}"
        );
        for case_id in touched {
            let latest = case_requests
                .iter()
                .rev()
                .map(Received::json)
                .find(|sent| sent["case_id"] == *case_id)
                .unwrap_or_else(|| panic!("{step}: case {case_id} was not forwarded"));
            let (status, stored) = get_case(self.gateway, &self.domain, case_id).await;
            assert_eq!(status, 200, "{step}: {stored}");
            assert_fields(
                &format!("{step}: forwarded case {case_id}"),
                &latest,
                &stored,
            );
        }
        form_id
    }

    /// Checks a case field by field through `GET /cases/{id}` against `want`,
    /// a case of a [case-states file](check_case_states).
    pub async fn expect_case(&self, want: &Value) {
        let case_id = want["case_id"].as_str().expect("a case_id");
        let what = format!("{} ({:?}) case {case_id}", self.domain, self.mode);
        known_keys(&what, want, CASE_KEYS);
        let (status, actual) = get_case(self.gateway, &self.domain, case_id).await;
        assert_eq!(status, 200, "{what}: {actual}");
        let xform_ids: Vec<&str> = want["xform_ids"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no xform_ids"))
            .iter()
            .map(|id| self.form_id(id.as_str().expect("form ids are strings")))
            .collect();
        let first_form = xform_ids.first().expect("a case has a form");
        let last_form = xform_ids.last().expect("a case has a form");
        let mut properties = want["properties"].clone();
        let fields = properties
            .as_object_mut()
            .unwrap_or_else(|| panic!("{what}: no properties"));
        fields.entry("external_id").or_insert(Value::Null);
        let date_closed = want.get("date_closed").cloned().unwrap_or(Value::Null);
        let expected = json!({
            "case_id": case_id,
            "domain": self.domain,
            "version": "2.0",
            "closed": !date_closed.is_null(),
            "date_closed": date_closed,
            "date_modified": want["date_modified"],
            "user_id": want["user_id"],
            "server_date_opened": self.received_on[*first_form],
            "server_date_modified": self.received_on[*last_form],
            "properties": properties,
            "indices": want.get("indices").cloned().unwrap_or_else(|| json!({})),
            "xform_ids": xform_ids,
        });
        assert_fields(&what, &actual, &expected);
        // SPEC 5: every timestamp of the case JSON is UTC with microseconds.
        for time in [
            &actual["date_modified"],
            &actual["properties"]["date_opened"],
            &actual["server_date_opened"],
            &actual["server_date_modified"],
        ]
        .into_iter()
        .chain((!date_closed.is_null()).then_some(&actual["date_closed"]))
        {
            assert!(
                is_timestamp(time.as_str().unwrap_or_default()),
                "{what}: {time} is not a UTC timestamp"
            );
        }
    }

    /// A form id as a case-states file writes it: `@FILE` for the id the form
    /// in FILE got (a generated one where it has no meta), else the id itself.
    fn form_id<'s>(&'s self, written: &'s str) -> &'s str {
        match written.strip_prefix('@') {
            Some(file) => self
                .form_of
                .get(file)
                .unwrap_or_else(|| panic!("{}: {file} was not submitted yet", self.domain)),
            None => written,
        }
    }

    /// Submits the form of one step of a case-states file and checks what the
    /// step says: the cases, cases that must not exist, the stored form's fields.
    pub async fn check_step(&mut self, step: &Value) {
        let file = step["form"].as_str().expect("a step names its form");
        let what = format!("{} ({:?}, {file})", self.domain, self.mode);
        known_keys(&what, step, STEP_KEYS);
        let touched: Vec<&str> = step["touched"]
            .as_array()
            .unwrap_or_else(|| panic!("{what}: no touched"))
            .iter()
            .map(|id| id.as_str().expect("case ids are strings"))
            .collect();
        let form_id = self.submit(file, step["form_id"].as_str(), &touched).await;
        for want in step["cases"].as_array().into_iter().flatten() {
            self.expect_case(want).await;
        }
        for case_id in step["absent"].as_array().into_iter().flatten() {
            let case_id = case_id.as_str().expect("case ids are strings");
            let (status, _) = get_case(self.gateway, &self.domain, case_id).await;
            assert_eq!(status, 404, "{what}: case {case_id} does not exist yet");
        }
        if let Some(fields) = step.get("form_fields").and_then(Value::as_object) {
            let (_, form) = get_form(self.gateway, &self.domain, &form_id).await;
            for (field, value) in fields {
                assert_eq!(&form[field], value, "{what}: the form's {field}");
            }
        }
    }
}

/// What a step of a case-states file may say.
const STEP_KEYS: &[&str] = &[
    "form",
    "form_id",
    "touched",
    "cases",
    "absent",
    "form_fields",
    "note",
];

/// What a case of a case-states file may say.
const CASE_KEYS: &[&str] = &[
    "case_id",
    "user_id",
    "date_modified",
    "date_closed",
    "properties",
    "indices",
    "xform_ids",
    "note",
];

/// Fails on a key of `object` outside `known`: a misspelt expectation would
/// otherwise check nothing.
fn known_keys(what: &str, object: &Value, known: &[&str]) {
    let object = object
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {object}"));
    for key in object.keys() {
        assert!(known.contains(&key.as_str()), "{what}: unknown key {key:?}");
    }
}

/// Runs a case-states file: a JSON object whose keys are folders under `root`
/// and whose values are the steps to take with the forms there, in order. Each
/// step is `{"form": FILE, "form_id": ID or null (a generated one), "touched":
/// [case ids in document order], "cases": [...], "absent": [case ids],
/// "form_fields": {field: value}, "note": why}`; each case is the case as
/// `GET /cases/{id}` answers it without what follows from the rest (`domain`,
/// `version`, `closed`, the server dates, a null `external_id`, `{}` indices):
/// `{"case_id", "user_id", "date_modified", "date_closed"?, "properties",
/// "indices"?, "xform_ids"}`. Every folder's forms are submitted raw to one
/// domain and as OpenRosa multipart to another, and every `.xml` file of a
/// folder must be a step.
pub async fn check_case_states(root: &Path, case_states: &Path) {
    let text = std::fs::read_to_string(case_states)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", case_states.display()));
    let folders: serde_json::Map<String, Value> = serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{}: {error}", case_states.display()));
    let receiver = Receiver::start().await;
    let config: String = (0..folders.len())
        .map(|n| {
            format!(
                "{}{}",
                project(&format!("raw-{n}"), &receiver, ""),
                project(&format!("multi-{n}"), &receiver, "")
            )
        })
        .collect();
    let gateway = Gateway::start(&config).await;
    for (n, (folder, steps)) in folders.iter().enumerate() {
        let dir = root.join(folder);
        let steps = steps
            .as_array()
            .unwrap_or_else(|| panic!("{folder}: the steps are not a list"));
        let submitted: BTreeSet<String> = steps
            .iter()
            .map(|step| step["form"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            xml_files_in(&dir),
            submitted,
            "every form of {folder} is a step"
        );
        for (domain, mode) in [
            (format!("raw-{n}"), Mode::Raw),
            (format!("multi-{n}"), Mode::Multipart),
        ] {
            let mut session = Session::new(&gateway, &receiver, &domain, mode, &dir);
            for step in steps {
                session.check_step(step).await;
            }
        }
    }
    gateway.stop().await;
}

/// The names of the `.xml` files in `dir`, to check that a test submits them all.
pub fn xml_files_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", dir.display()))
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".xml"))
        .collect()
}
