//! Issue 3, "Form submission and the case store", end to end: every CommCare
//! fixture submitted raw and as OpenRosa multipart builds the case states
//! CommCare HQ builds; duplicates and bad input leave no trace; device logs are
//! kept but not forwarded; acknowledged forms survive a `kill -9` of the real
//! binary and are delivered after the restart; group commit holds under load.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use repeatd_tests::*;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const OPENROSA_SUCCESS: &str = "<OpenRosaResponse xmlns=\"http://openrosa.org/http/response\"><message nature=\"submit_success\">";
const OPENROSA_ERROR: &str = "<OpenRosaResponse xmlns=\"http://openrosa.org/http/response\"><message nature=\"submit_error\">";

// ---- helpers ----------------------------------------------------------------------

/// What the receiver endpoint answered.
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Posts a body to `url` as `danny:pw`.
async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>, content_type: &str) -> Reply {
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
fn multipart(parts: &[(&str, &str, &str, &[u8])]) -> (Vec<u8>, String) {
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
fn photo(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

/// How a form is submitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The XML as the body, `text/xml`.
    Raw,
    /// OpenRosa multipart: `xml_submission_file` plus one photo part.
    Multipart,
}

/// One domain with a form-xml repeater ("forms") and a case-json repeater
/// ("cases"), each with its own receiver path, and submitter danny:pw.
fn project(domain: &str, receiver: &Receiver, repeater_extra: &str) -> String {
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

async fn get_case(gateway: &Gateway, domain: &str, case_id: &str) -> (u16, Value) {
    gateway
        .api(
            "GET",
            &format!("/api/v1/domains/{domain}/cases/{case_id}"),
            None,
        )
        .await
}

async fn get_form(gateway: &Gateway, domain: &str, form_id: &str) -> (u16, Value) {
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
fn assert_fields(what: &str, actual: &Value, expected: &Value) {
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

// ---- the case states CommCare builds -----------------------------------------------------

/// A case as the fixtures should leave it. Server dates come from the
/// `received_on` of the first and last form in `xform_ids`.
#[derive(Debug, Clone, Default)]
struct Want {
    case_id: &'static str,
    case_type: &'static str,
    case_name: &'static str,
    owner_id: &'static str,
    user_id: &'static str,
    date_opened: &'static str,
    date_modified: &'static str,
    external_id: Option<&'static str>,
    properties: Vec<(&'static str, &'static str)>,
    /// (identifier, case_type, case_id, relationship)
    indices: Vec<(&'static str, &'static str, &'static str, &'static str)>,
    date_closed: Option<&'static str>,
    xform_ids: Vec<String>,
}

const MOTHER: &str = "9dbce942-0163-438b-b3e5-67b473d2f719";
const FIRST_CHILD: &str = "17e36de1-b9de-423c-a6a6-605d291ec976";
const SECOND_CHILD: &str = "7b58fd8f-1bb8-4978-99a6-7b5d9826c1f9";
const SHEEL: &str = "67bffa913b38e7901851d863ededa475";
const REG1: &str = "8c4a4668-6be0-4f32-a1fd-e4d4e3ba2019";
const REG2: &str = "91d014c5-02d9-4bfe-bd4c-c72f8624f6d2";
const CF: &str = "d66482bf-874e-42d9-b2b7-620ba6e4b3b3";
const CLOSE: &str = "b45aeae8-ba55-4541-ae2e-0ead6b5e1f31";

/// Drives one domain through the fixtures and checks every step.
struct Session<'a> {
    gateway: &'a Gateway,
    receiver: &'a Receiver,
    client: reqwest::Client,
    domain: String,
    mode: Mode,
    /// Form ids in submission order.
    form_ids: Vec<String>,
    received_on: HashMap<String, String>,
    /// Case id → how many case records it should have.
    case_records: BTreeMap<String, usize>,
}

impl<'a> Session<'a> {
    fn new(gateway: &'a Gateway, receiver: &'a Receiver, domain: &str, mode: Mode) -> Session<'a> {
        Session {
            gateway,
            receiver,
            client: reqwest::Client::new(),
            domain: domain.to_owned(),
            mode,
            form_ids: Vec::new(),
            received_on: HashMap::new(),
            case_records: BTreeMap::new(),
        }
    }

    fn attachment_size(&self) -> usize {
        1_000 + 37 * self.form_ids.len()
    }

    /// Submits a fixture; checks the OpenRosa answer, the stored form, the
    /// records registered (one form record, one record per touched case), that
    /// they are delivered, that the form-xml repeater forwarded exactly the XML
    /// and the case-json repeater each case's latest state. Returns the form id.
    async fn submit(
        &mut self,
        fixture_name: &str,
        expected_form_id: Option<&str>,
        touched: &[&str],
    ) -> String {
        let step = format!("{} ({:?}, {fixture_name})", self.domain, self.mode);
        let xml = read_fixture(fixture_name);
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

    /// Checks a case field by field through `GET /cases/{id}`.
    async fn expect(&self, want: &Want) {
        let what = format!("{} ({:?}) case {}", self.domain, self.mode, want.case_id);
        let (status, actual) = get_case(self.gateway, &self.domain, want.case_id).await;
        assert_eq!(status, 200, "{what}: {actual}");
        let first_form = want.xform_ids.first().expect("a case has a form");
        let last_form = want.xform_ids.last().expect("a case has a form");
        let mut properties = serde_json::Map::new();
        properties.insert("case_type".into(), json!(want.case_type));
        properties.insert("case_name".into(), json!(want.case_name));
        properties.insert("owner_id".into(), json!(want.owner_id));
        properties.insert("date_opened".into(), json!(want.date_opened));
        properties.insert("external_id".into(), json!(want.external_id));
        for (name, value) in &want.properties {
            properties.insert((*name).into(), json!(value));
        }
        let indices: serde_json::Map<String, Value> = want
            .indices
            .iter()
            .map(|(identifier, case_type, case_id, relationship)| {
                (
                    (*identifier).to_owned(),
                    json!({"case_type": case_type, "case_id": case_id, "relationship": relationship}),
                )
            })
            .collect();
        let expected = json!({
            "case_id": want.case_id,
            "domain": self.domain,
            "version": "2.0",
            "closed": want.date_closed.is_some(),
            "date_closed": want.date_closed,
            "date_modified": want.date_modified,
            "user_id": want.user_id,
            "server_date_opened": self.received_on[first_form],
            "server_date_modified": self.received_on[last_form],
            "properties": properties,
            "indices": indices,
            "xform_ids": want.xform_ids,
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
        .chain(want.date_closed.map(|_| &actual["date_closed"]))
        {
            assert!(
                is_timestamp(time.as_str().unwrap_or_default()),
                "{what}: {time} is not a UTC timestamp"
            );
        }
    }

    /// The id of the `n`th form submitted (0-based).
    fn form(&self, n: usize) -> String {
        self.form_ids[n].clone()
    }
}

fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| (*id).to_owned()).collect()
}

fn mother_properties_reg1() -> Vec<(&'static str, &'static str)> {
    vec![
        ("last_visit_type", "new"),
        ("date_last_visit", "2012-05-25"),
        ("date_next_reg", "2012-05-25"),
        ("mother_alive", "yes"),
        ("mother_name", "Ad"),
        ("husband_name", ""),
        ("hh_number", ""),
        ("family_number", "2"),
        ("mother_dob", "1990-05-25"),
    ]
}

fn with(
    mut base: Vec<(&'static str, &'static str)>,
    changes: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    for (name, value) in changes {
        match base.iter_mut().find(|(known, _)| known == name) {
            Some(entry) => entry.1 = value,
            None => base.push((name, value)),
        }
    }
    base
}

async fn pregnancy_life_cycle(session: &mut Session<'_>) {
    let mother = Want {
        case_id: MOTHER,
        case_type: "cc_bihar_pregnancy",
        case_name: "Ad",
        owner_id: "main_user",
        user_id: SHEEL,
        date_opened: "2012-05-25T09:57:38.490000Z",
        date_modified: "2012-05-25T09:57:38.490000Z",
        properties: mother_properties_reg1(),
        xform_ids: ids(&[REG1]),
        ..Want::default()
    };

    session.submit("reg1.xml", Some(REG1), &[MOTHER]).await;
    session.expect(&mother).await;
    for child in [FIRST_CHILD, SECOND_CHILD] {
        let (status, _) = get_case(session.gateway, &session.domain, child).await;
        assert_eq!(status, 404, "the children do not exist before reg2");
    }

    session
        .submit("reg2.xml", Some(REG2), &[MOTHER, FIRST_CHILD, SECOND_CHILD])
        .await;
    let mother_properties_reg2 = with(
        mother_properties_reg1(),
        &[
            ("mobile_number", "358623242"),
            ("mother_dob", "1990-05-25"),
            ("num_boys", "0"),
            ("add", "2011-11-25"),
            ("last_visit_type", "reg"),
            ("date_last_visit", "2012-05-25"),
            ("family_planning_type", "no_fp_adopted_at_delivery"),
            ("edd", ""),
            ("age", "22"),
            ("lmp", ""),
            ("birth_place", "transit"),
            ("how_many_children", "2"),
            ("eats_meat", "no"),
            ("date_next_cf", "2012-05-26"),
        ],
    );
    let mother = Want {
        date_modified: "2012-05-25T10:00:31.704000Z",
        properties: mother_properties_reg2.clone(),
        xform_ids: ids(&[REG1, REG2]),
        ..mother
    };
    session.expect(&mother).await;
    let child = |case_id: &'static str, case_name: &'static str| Want {
        case_id,
        case_type: "cc_bihar_newborn",
        case_name,
        owner_id: "main_user",
        user_id: SHEEL,
        date_opened: "2012-05-25T10:00:31.704000Z",
        date_modified: "2012-05-25T10:00:31.704000Z",
        properties: vec![("gender", "female"), ("dob", "2011-11-25")],
        indices: vec![("mother_id", "cc_bihar_pregnancy", MOTHER, "child")],
        xform_ids: ids(&[REG2]),
        ..Want::default()
    };
    let children = [child(FIRST_CHILD, "C1"), child(SECOND_CHILD, "C2")];
    for want in &children {
        session.expect(want).await;
    }

    // cf updates the second child before the first.
    session
        .submit("cf.xml", Some(CF), &[MOTHER, SECOND_CHILD, FIRST_CHILD])
        .await;
    let mother = Want {
        date_modified: "2012-05-25T10:01:38.109000Z",
        properties: with(
            mother_properties_reg2,
            &[
                ("last_visit_type", "cf"),
                ("date_last_visit", "2012-05-25"),
                ("date_cf_1", "2012-05-25"),
                ("date_next_cf", "2012-06-24"),
            ],
        ),
        xform_ids: ids(&[REG1, REG2, CF]),
        ..mother
    };
    session.expect(&mother).await;
    let children = children.map(|want| Want {
        date_modified: "2012-05-25T10:01:38.109000Z",
        properties: with(want.properties.clone(), &[("baby_measles", "")]),
        xform_ids: ids(&[REG2, CF]),
        ..want
    });
    for want in &children {
        session.expect(want).await;
    }

    // close: an empty update and a close on each; indices and properties stay.
    session
        .submit(
            "close.xml",
            Some(CLOSE),
            &[MOTHER, FIRST_CHILD, SECOND_CHILD],
        )
        .await;
    let closed_at = "2012-05-26T03:11:37.259000Z";
    let mother = Want {
        date_modified: closed_at,
        date_closed: Some(closed_at),
        xform_ids: ids(&[REG1, REG2, CF, CLOSE]),
        ..mother
    };
    session.expect(&mother).await;
    for want in children {
        session
            .expect(&Want {
                date_modified: closed_at,
                date_closed: Some(closed_at),
                xform_ids: ids(&[REG2, CF, CLOSE]),
                ..want
            })
            .await;
    }
}

async fn lots_of_subcases(session: &mut Session<'_>) {
    const FORM: &str = "e9d6bb33-783d-4978-a2e0-762b42e87b9d";
    const PARENT: &str = "f8b34e0c744f8f45dfa12e28617e5716";
    const NEWBORN: &str = "7554c7f4-fc96-4b1d-aec8-8890e96ffc54";
    const OWNER: &str = "3c5a80e4db53049dfc110c368a0d282b";
    const USER: &str = "67bffa913b38e7901851d863eded2ba3";
    const TASKS: [(&str, &str, &str); 9] = [
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c1", "DPT 1", "dpt_1"),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c2", "BCG", "bcg"),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c3", "OPV 0", "opv_0"),
        (
            "763ca815-df9c-4037-9f0e-6edd2af8ba6c4",
            "HEP B 0",
            "hep_b_0",
        ),
        (
            "763ca815-df9c-4037-9f0e-6edd2af8ba6c5",
            "Measles",
            "measles",
        ),
        (
            "763ca815-df9c-4037-9f0e-6edd2af8ba6c6",
            "VIT A 1",
            "vit_a_1",
        ),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c7", "JE", "je"),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c8", "TT 1", "tt_1"),
        ("763ca815-df9c-4037-9f0e-6edd2af8ba6c9", "ANC 1", "anc_1"),
    ];
    let mut touched = vec![PARENT, NEWBORN];
    touched.extend(TASKS.iter().map(|(id, _, _)| *id));
    assert_eq!(touched.len(), 11);
    session
        .submit("lots_of_subcases.xml", Some(FORM), &touched)
        .await;

    session
        .expect(&Want {
            case_id: PARENT,
            case_type: "cc_bihar_pregnancy",
            case_name: "Ashish",
            owner_id: OWNER,
            user_id: USER,
            // A device date without a time is its midnight UTC, as in HQ.
            date_opened: "2012-04-19T00:00:00.000000Z",
            date_modified: "2012-04-19T00:00:00.000000Z",
            properties: vec![
                ("add", "2012-01-30"),
                ("age", "25"),
                ("date_last_visit", "2012-04-12"),
                ("date_next_bp", "2012-04-19"),
                ("date_next_cf", "2012-04-19"),
                ("date_next_reg", "2012-04-19"),
                ("edd", ""),
                ("family_number", "2"),
                ("family_planning_type", "ppiud_at_delivery"),
                ("hh_number", "5"),
                ("husband_name", "MOHAN"),
                ("last_preg_tt", "no"),
                ("last_visit_type", "reg"),
                ("lmp", ""),
                ("mobile_number", "258411"),
                ("mother_alive", "yes"),
                ("mother_dob", "1986-10-10"),
                ("mother_name", "Ashish"),
                ("num_boys", "1"),
                ("tt_1_date", "2012-04-30"),
            ],
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
    session
        .expect(&Want {
            case_id: NEWBORN,
            case_type: "cc_bihar_newborn",
            case_name: "jayant",
            owner_id: OWNER,
            user_id: USER,
            date_opened: "2012-04-12T00:00:00.000000Z",
            date_modified: "2012-04-12T00:00:00.000000Z",
            properties: vec![
                ("bcg_date", "2012-05-01"),
                ("dob", "2011-09-19"),
                ("gender", "male"),
                ("opv_1_date", "2012-04-10"),
            ],
            indices: vec![("mother_id", "cc_bihar_pregnancy", PARENT, "child")],
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
    for (n, (case_id, case_name, task_id)) in TASKS.into_iter().enumerate() {
        // The last two tasks hang off the mother, the others off the newborn.
        let person = if n < 7 {
            ("person_id", "cc_bihar_newborn", NEWBORN, "child")
        } else {
            ("person_id", "cc_bihar_pregnancy", PARENT, "child")
        };
        session
            .expect(&Want {
                case_id,
                case_type: "task",
                case_name,
                owner_id: OWNER,
                user_id: USER,
                date_opened: "2012-05-28T00:00:00.000000Z",
                date_modified: "2012-05-28T00:00:00.000000Z",
                properties: vec![
                    ("date_eligible", "2012-05-28"),
                    ("date_expires", "2013-09-19"),
                    ("task_id", task_id),
                ],
                indices: vec![person],
                xform_ids: ids(&[FORM]),
                ..Want::default()
            })
            .await;
    }
}

async fn multiple_case_blocks(session: &mut Session<'_>) {
    const FORM: &str = "50cd023e-652c-4e8b-82a9-e0e13a9c0ce8";
    const CASE: &str = "MCLPZ69ON942EKNIBR5WF1G2L";
    const USER: &str = "de7abbf6d898ae2d7dcd2bdc79f2785c";
    // Two blocks, no create: one case, one record, the form listed once.
    session
        .submit("multiple_case_blocks.xml", Some(FORM), &[CASE])
        .await;
    session
        .expect(&Want {
            case_id: CASE,
            case_type: "",
            case_name: "",
            owner_id: USER,
            user_id: USER,
            date_opened: "2012-05-31T07:06:31.379000Z",
            date_modified: "2012-05-31T07:06:31.379000Z",
            properties: vec![
                ("community_code", "1630005"),
                ("district_name", "SantaMariaCahabon"),
                ("community_name", "TAMERLO"),
            ],
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
}

async fn form_with_case(session: &mut Session<'_>) {
    const FORM: &str = "ad38211be256653bceac8e2156475666";
    const CASE: &str = "ad38211be256653bceac8e2156475667";
    const USER: &str = "ad38211be256653bceac8e2156475665";
    session
        .submit("form_with_case.xml", Some(FORM), &[CASE])
        .await;
    session
        .expect(&Want {
            case_id: CASE,
            case_type: "test_case_type",
            case_name: "test case name",
            owner_id: USER,
            user_id: USER,
            // A device time without an offset is UTC, as in HQ.
            date_opened: "2010-06-29T13:42:50.000000Z",
            date_modified: "2010-06-29T13:42:50.000000Z",
            external_id: Some("someexternal"),
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
    let (_, form) = get_form(session.gateway, &session.domain, FORM).await;
    assert_eq!(form["xmlns"], "http://commcarehq.org/test/submit");
    assert_eq!(form["username"], "someuser");
    assert_eq!(form["user_id"], USER);
    assert_eq!(form["device_id"], "Chalimbana");
    assert_eq!(form["time_end"], "2010-06-29T13:55:50.137");
}

async fn case_ledger_form(session: &mut Session<'_>) {
    // No instanceID: the legacy `uid` is the form id.
    const FORM: &str = "ad38211be256653bceac8e2156475664";
    const CLOSED: &str = "fbb69a88-1eca-463a-883e-1148b96fb03b";
    const OPEN: &str = "fbb69a88-1eca-463a-883e-1148b96fb03c";
    session
        .submit("case_ledger_form.xml", Some(FORM), &[CLOSED, OPEN])
        .await;
    let invoice = |case_id| Want {
        case_id,
        case_type: "invoice",
        case_name: "school-program",
        // The update's owner_id replaces the create's "-".
        owner_id: "91cadfa4cb957cf021c76dfe31d206a6",
        user_id: "e499e67838e9efb6fe210c147045b1dc",
        // 10:21:48.715+01 in UTC.
        date_opened: "2016-03-02T09:21:48.715000Z",
        date_modified: "2016-03-02T09:21:48.715000Z",
        properties: vec![
            ("amount-owed-to-entrepreneur", "119600"),
            ("entrepreneur", "joe"),
            ("month", "2"),
            ("year", "2016"),
        ],
        xform_ids: ids(&[FORM]),
        ..Want::default()
    };
    session
        .expect(&Want {
            date_closed: Some("2016-03-02T09:21:48.715000Z"),
            ..invoice(CLOSED)
        })
        .await;
    session.expect(&invoice(OPEN)).await;
    let (_, form) = get_form(session.gateway, &session.domain, FORM).await;
    assert_eq!(
        form["device_id"], "myphone",
        "meta fields match ignoring case"
    );
}

async fn basic_create_update_close_and_index_update(session: &mut Session<'_>) {
    const CASE: &str = "foo-case-id";
    const USER: &str = "bar-user-id";
    let n = session.form_ids.len();
    // These fixtures have no meta: each gets a generated form id.
    session.submit("basic_create.xml", None, &[CASE]).await;
    let created = Want {
        case_id: CASE,
        case_type: "v2_case_type",
        case_name: "test case name",
        owner_id: USER,
        user_id: USER,
        date_opened: "2011-12-06T13:42:50.000000Z",
        date_modified: "2011-12-06T13:42:50.000000Z",
        xform_ids: vec![session.form(n)],
        ..Want::default()
    };
    session.expect(&created).await;

    session.submit("basic_update.xml", None, &[CASE]).await;
    let updated = Want {
        case_type: "updated_v2_case_type",
        case_name: "updated case name",
        date_modified: "2011-12-07T13:42:50.000000Z",
        properties: vec![("dynamic", "something dynamic")],
        xform_ids: vec![session.form(n), session.form(n + 1)],
        ..created
    };
    session.expect(&updated).await;

    // The close carries an older device time: date_modified does not go back.
    session.submit("basic_close.xml", None, &[CASE]).await;
    let closed = Want {
        date_closed: Some("2011-12-06T13:42:50.000000Z"),
        xform_ids: vec![session.form(n), session.form(n + 1), session.form(n + 2)],
        ..updated
    };
    session.expect(&closed).await;

    session.submit("index_update.xml", None, &[CASE]).await;
    session
        .expect(&Want {
            indices: vec![
                ("foo_ref", "bar", "some_referenced_id", "child"),
                ("baz_ref", "bop", "some_other_referenced_id", "child"),
            ],
            xform_ids: (n..n + 4).map(|i| session.form(i)).collect(),
            ..closed
        })
        .await;
}

async fn case_in_repeats(session: &mut Session<'_>) {
    const FORM: &str = "JLP8BS71HFU3VGMIWW610W80T";
    const FIRST: &str = "32337c03-2b73-497f-ab18-2b587f8c21df";
    const SECOND: &str = "581b0506-7c94-4af5-ac67-f934566d5418";
    const MOM: &str = "CMYOSI95QCED3ZWIP9ZK1QNQ6";
    const USER: &str = "2XC1EINEJV1NZ7QXHVUMHUQQV";
    session
        .submit("case_in_repeats.xml", Some(FORM), &[FIRST, SECOND, MOM])
        .await;
    let child = |case_id, sex| Want {
        case_id,
        case_type: "newborn_hiv_child",
        case_name: "ADG",
        owner_id: USER,
        user_id: USER,
        date_opened: "2011-09-19T22:29:48.096000Z",
        date_modified: "2011-09-19T22:29:48.096000Z",
        external_id: Some(case_id),
        properties: vec![
            ("sex", sex),
            ("breastfeeding", "2"),
            ("taluka", "athani"),
            ("age", "23"),
            ("address", "DAG"),
            ("number", "234234234"),
            ("result1", ""),
            ("result2", ""),
            ("unique_id", "234"),
        ],
        xform_ids: ids(&[FORM]),
        ..Want::default()
    };
    session.expect(&child(FIRST, "1")).await;
    session.expect(&child(SECOND, "2")).await;
    session
        .expect(&Want {
            case_id: MOM,
            case_type: "mother",
            case_name: "mom",
            owner_id: USER,
            user_id: USER,
            date_opened: "2011-09-19T22:31:48.902000Z",
            date_modified: "2011-09-19T22:31:48.902000Z",
            date_closed: Some("2011-09-19T22:31:48.902000Z"),
            properties: vec![
                ("delivery_type", "1"),
                ("delivery_form_complete", "OK"),
                ("nevirapine", "1"),
                ("place", "1"),
                ("birth_type", "other"),
                ("delivery_date", "2011-09-19"),
            ],
            xform_ids: ids(&[FORM]),
            ..Want::default()
        })
        .await;
}

/// Every fixture, in an order that builds on earlier ones.
const FIXTURES_SUBMITTED: [&str; 13] = [
    "reg1.xml",
    "reg2.xml",
    "cf.xml",
    "close.xml",
    "lots_of_subcases.xml",
    "multiple_case_blocks.xml",
    "form_with_case.xml",
    "case_ledger_form.xml",
    "basic_create.xml",
    "basic_update.xml",
    "basic_close.xml",
    "index_update.xml",
    "case_in_repeats.xml",
];

async fn every_fixture(session: &mut Session<'_>) {
    pregnancy_life_cycle(session).await;
    lots_of_subcases(session).await;
    multiple_case_blocks(session).await;
    form_with_case(session).await;
    case_ledger_form(session).await;
    basic_create_update_close_and_index_update(session).await;
    case_in_repeats(session).await;
    assert_eq!(session.form_ids.len(), FIXTURES_SUBMITTED.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_raw_and_multipart_builds_commcare_case_states() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(fixture(""))
        .expect("the fixtures directory")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".xml"))
        .collect();
    let submitted: BTreeSet<String> = FIXTURES_SUBMITTED
        .iter()
        .map(|name| (*name).to_owned())
        .collect();
    assert_eq!(on_disk, submitted, "every fixture is submitted");

    let receiver = Receiver::start().await;
    let config = format!(
        "{}{}",
        project("raw", &receiver, ""),
        project("multi", &receiver, "")
    );
    let gateway = Gateway::start(&config).await;
    let mut raw = Session::new(&gateway, &receiver, "raw", Mode::Raw);
    let mut multi = Session::new(&gateway, &receiver, "multi", Mode::Multipart);
    every_fixture(&mut raw).await;
    every_fixture(&mut multi).await;
    gateway.stop().await;
}

// ---- duplicates ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_form_id_is_answered_201_and_not_processed_again() {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&project("demo", &receiver, "")).await;
    let mut session = Session::new(&gateway, &receiver, "demo", Mode::Raw);
    session.submit("reg1.xml", Some(REG1), &[MOTHER]).await;
    session
        .submit("reg2.xml", Some(REG2), &[MOTHER, FIRST_CHILD, SECOND_CHILD])
        .await;
    let records_before = gateway.records("demo", "").await;
    let mut cases_before = Vec::new();
    for case_id in [MOTHER, FIRST_CHILD, SECOND_CHILD] {
        cases_before.push(get_case(&gateway, "demo", case_id).await.1);
    }
    let (_, form_before) = get_form(&gateway, "demo", REG1).await;

    // The same instanceID again: raw, as multipart, and with different content
    // (a changed update and a new case) — none of it is applied.
    let reg1 = String::from_utf8(read_fixture("reg1.xml")).unwrap();
    let altered = reg1
        .replace("<n1:last_visit_type>new</n1:last_visit_type>", "<n1:last_visit_type>changed</n1:last_visit_type>")
        .replace(
            "<full_name>Ad</full_name>",
            "<n9:case xmlns:n9=\"http://commcarehq.org/case/transaction/v2\" case_id=\"sneaked-in\"><n9:create><n9:case_type>x</n9:case_type></n9:create></n9:case><full_name>Ad</full_name>",
        );
    assert_ne!(altered, reg1);
    let (multipart_body, multipart_type) = multipart(&[
        (
            "xml_submission_file",
            "xform.xml",
            "text/xml",
            reg1.as_bytes(),
        ),
        ("a.jpg", "a.jpg", "image/jpeg", &photo(10)),
    ]);
    let client = reqwest::Client::new();
    let url = gateway.url("/a/demo/receiver");
    let attempts = [
        (reg1.clone().into_bytes(), "text/xml".to_owned()),
        (multipart_body, multipart_type),
        (altered.into_bytes(), "application/xml".to_owned()),
    ];
    for (n, (body, content_type)) in attempts.into_iter().enumerate() {
        let reply = post(&client, &url, body, &content_type).await;
        assert_eq!(reply.status, 201, "duplicate {n}: {}", reply.body);
        assert!(reply.body.starts_with(OPENROSA_SUCCESS), "{}", reply.body);
        assert!(
            reply.body.contains("already received"),
            "the answer says it is a duplicate: {}",
            reply.body
        );
        let (status, form) = get_form(&gateway, "demo", REG1).await;
        assert_eq!(status, 200);
        assert_eq!(form["n_duplicates"], n + 1, "{form}");
        assert!(
            is_timestamp(form["last_duplicate_on"].as_str().unwrap_or_default()),
            "{form}"
        );
    }

    let (_, form_after) = get_form(&gateway, "demo", REG1).await;
    for field in ["received_on", "case_ids", "attachments", "xmlns", "user_id"] {
        assert_eq!(
            form_after[field], form_before[field],
            "the original form's {field} is kept"
        );
    }
    assert_eq!(
        gateway.records("demo", "").await,
        records_before,
        "no new records"
    );
    for (case_id, before) in [MOTHER, FIRST_CHILD, SECOND_CHILD]
        .iter()
        .zip(&cases_before)
    {
        let (_, after) = get_case(&gateway, "demo", case_id).await;
        assert_eq!(&after, before, "case {case_id} is unchanged");
    }
    assert_eq!(get_case(&gateway, "demo", "sneaked-in").await.0, 404);
    // Nothing more reaches the remote: the records are all settled, and the
    // receiver saw exactly the two original forms.
    assert_eq!(receiver.requests("/demo/forms").len(), 2);
    gateway.stop().await;
}

// ---- bad input -------------------------------------------------------------------

const MAX_BODY_BYTES: usize = 4_000;

/// A well-formed form with an instance id that updates `existing` and creates `new-{form_id}`.
fn form_touching_cases(form_id: &str, extra: &str) -> String {
    format!(
        r#"<?xml version='1.0' ?>
<data xmlns="http://openrosa.org/formdesigner/bad-input">
  <n0:case xmlns:n0="http://commcarehq.org/case/transaction/v2" case_id="existing" date_modified="2024-02-01T10:00:00.000000Z" user_id="u2"><n0:update><n0:visit>{form_id}</n0:visit></n0:update></n0:case>
  <n0:case xmlns:n0="http://commcarehq.org/case/transaction/v2" case_id="new-{form_id}" date_modified="2024-02-01T10:00:00.000000Z" user_id="u2"><n0:create><n0:case_type>t</n0:case_type><n0:case_name>n</n0:case_name></n0:create></n0:case>
  {extra}
  <n1:meta xmlns:n1="http://openrosa.org/jr/xforms"><n1:userID>u2</n1:userID><n1:instanceID>{form_id}</n1:instanceID></n1:meta>
</data>"#
    )
}

/// One refused submission: where it goes, what it is, what the answer must say.
struct BadSubmission {
    what: &'static str,
    target: String,
    body: Vec<u8>,
    content_type: String,
    status: u16,
    /// Phrases the message must contain.
    phrases: Vec<&'static str>,
    /// The form id it carries ("" for none): it must not be stored.
    form_id: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_naming_the_problem_and_leaves_no_trace() {
    let receiver = Receiver::start().await;
    let config = format!(
        "[ingest]\nmax_body_bytes = {MAX_BODY_BYTES}\n{}",
        project("demo", &receiver, "")
    );
    let gateway = Gateway::start(&config).await;
    let client = reqwest::Client::new();
    let url = gateway.url("/a/demo/receiver");

    // HEAD: what OpenRosa clients ask before submitting.
    for path in ["/a/demo/receiver", "/a/demo/receiver/some-app"] {
        let response = client.head(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 204, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("x-openrosa-version").as_deref(),
            Some("1.0"),
            "{path}"
        );
        assert_eq!(
            header("x-openrosa-accept-content-length"),
            Some(MAX_BODY_BYTES.to_string()),
            "{path}"
        );
    }

    // One good form first: the case that bad forms would change, and the records.
    let good = form_touching_cases("good", "");
    let reply = post(&client, &url, good.clone().into_bytes(), "text/xml").await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let existing_before = get_case(&gateway, "demo", "existing").await.1;
    assert_eq!(existing_before["properties"]["visit"], "good");
    let records_before = gateway.wait_records("demo", "", 3, "succeeded", WAIT).await;
    assert_eq!(
        records_before.len(),
        3,
        "one form and two case records: {records_before:?}"
    );

    let padded = form_touching_cases(
        "bad-too-big",
        &format!("<notes>{}</notes>", "x".repeat(MAX_BODY_BYTES)),
    );
    assert!(padded.len() > MAX_BODY_BYTES);
    let just_fits = form_touching_cases(
        "fits",
        &format!(
            "<notes>{}</notes>",
            "x".repeat(MAX_BODY_BYTES - form_touching_cases("fits", "<notes></notes>").len())
        ),
    );
    assert_eq!(just_fits.len(), MAX_BODY_BYTES);
    let (no_xml_part, no_xml_part_type) = multipart(&[
        (
            "xml_file",
            "xform.xml",
            "text/xml",
            form_touching_cases("bad-no-xml-part", "").as_bytes(),
        ),
        ("a.jpg", "a.jpg", "image/jpeg", &photo(100)),
    ]);
    let (broken_xml_part, broken_xml_part_type) = multipart(&[(
        "xml_submission_file",
        "xform.xml",
        "text/xml",
        form_touching_cases("bad-broken-part", "<open>").as_bytes(),
    )]);
    let not_well_formed = "<?xml version='1.0' ?>\n<data xmlns=\"urn:bad\">\n  <meta><instanceID>bad-not-well-formed</instanceID></meta>\n  <item>open\n</data>\n";
    let no_case_id = form_touching_cases(
        "bad-no-case-id",
        r#"<n0:case xmlns:n0="http://commcarehq.org/case/transaction/v2" date_modified="2024-02-01T10:00:00.000000Z" user_id="u2"><n0:close/></n0:case>"#,
    );

    let cases = vec![
        BadSubmission {
            what: "not XML",
            target: url.clone(),
            body: b"name=Ad&instanceID=bad-not-xml".to_vec(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["not well-formed", "line 1, column 1"],
            form_id: "bad-not-xml",
        },
        BadSubmission {
            what: "not well-formed",
            target: url.clone(),
            body: not_well_formed.as_bytes().to_vec(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["not well-formed XML at line 5, column 1", "</data>"],
            form_id: "bad-not-well-formed",
        },
        BadSubmission {
            what: "empty body",
            target: url.clone(),
            body: Vec::new(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["empty body"],
            form_id: "",
        },
        BadSubmission {
            what: "whitespace only",
            target: url.clone(),
            body: b"  \r\n\t ".to_vec(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["empty body"],
            form_id: "",
        },
        BadSubmission {
            what: "no root",
            target: url.clone(),
            body: b"<?xml version='1.0' ?>\n<!-- bad-no-root -->\n".to_vec(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["no root element"],
            form_id: "",
        },
        BadSubmission {
            what: "case block without case_id",
            target: url.clone(),
            body: no_case_id.into_bytes(),
            content_type: "text/xml".into(),
            status: 400,
            phrases: vec!["case block 3 has no case_id"],
            form_id: "bad-no-case-id",
        },
        BadSubmission {
            what: "body over the size limit",
            target: url.clone(),
            body: padded.into_bytes(),
            content_type: "text/xml".into(),
            status: 413,
            phrases: vec!["larger than the limit of 4000 bytes"],
            form_id: "bad-too-big",
        },
        BadSubmission {
            what: "form-encoded",
            target: url.clone(),
            body: form_touching_cases("bad-form-encoded", "").into_bytes(),
            content_type: "application/x-www-form-urlencoded".into(),
            status: 415,
            phrases: vec![
                "application/x-www-form-urlencoded",
                "text/xml",
                "multipart/form-data",
            ],
            form_id: "bad-form-encoded",
        },
        BadSubmission {
            what: "multipart without xml_submission_file",
            target: url.clone(),
            body: no_xml_part,
            content_type: no_xml_part_type,
            status: 400,
            phrases: vec!["no part named xml_submission_file"],
            form_id: "bad-no-xml-part",
        },
        BadSubmission {
            what: "multipart whose XML is not well-formed",
            target: url.clone(),
            body: broken_xml_part,
            content_type: broken_xml_part_type,
            status: 400,
            phrases: vec!["not well-formed XML at line 7"],
            form_id: "bad-broken-part",
        },
        BadSubmission {
            what: "multipart without a boundary",
            target: url.clone(),
            body: form_touching_cases("bad-no-boundary", "").into_bytes(),
            content_type: "multipart/form-data".into(),
            status: 400,
            phrases: vec!["boundary"],
            form_id: "bad-no-boundary",
        },
        BadSubmission {
            what: "unknown domain",
            target: gateway.url("/a/nowhere/receiver"),
            body: form_touching_cases("bad-unknown-domain", "").into_bytes(),
            content_type: "text/xml".into(),
            status: 404,
            phrases: vec!["no project space \"nowhere\""],
            form_id: "bad-unknown-domain",
        },
    ];

    for BadSubmission {
        what,
        target,
        body,
        content_type,
        status,
        phrases,
        form_id,
    } in cases
    {
        let reply = post(&client, &target, body, &content_type).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.body);
        assert!(
            reply.body.starts_with(OPENROSA_ERROR),
            "{what}: an OpenRosa error: {}",
            reply.body
        );
        for phrase in phrases {
            let phrase = phrase
                .replace('"', "&quot;")
                .replace('<', "&lt;")
                .replace('>', "&gt;");
            assert!(
                reply.body.contains(&phrase),
                "{what}: the message names the problem ({phrase}): {}",
                reply.body
            );
        }
        if !form_id.is_empty() {
            let (status, body) = get_form(&gateway, "demo", form_id).await;
            assert_eq!(status, 404, "{what}: no form {form_id}: {body}");
            let (status, body) = get_case(&gateway, "demo", &format!("new-{form_id}")).await;
            assert_eq!(status, 404, "{what}: no new case: {body}");
        }
        assert_eq!(
            get_case(&gateway, "demo", "existing").await.1,
            existing_before,
            "{what}: no case change"
        );
        assert_eq!(
            gateway.records("demo", "").await,
            records_before,
            "{what}: nothing queued"
        );
    }

    // The limit is the limit: a body of exactly max_body_bytes is accepted.
    let reply = post(&client, &url, just_fits.into_bytes(), "text/xml").await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    assert_eq!(
        get_case(&gateway, "demo", "existing").await.1["properties"]["visit"],
        "fits"
    );
    assert_eq!(gateway.records("demo", "").await.len(), 6);
    gateway.stop().await;
}

// ---- device reports ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_reports_are_stored_but_never_forwarded() {
    let receiver = Receiver::start().await;
    let stubs = "\n[[repeaters]]\ndomain = \"demo\"\nname = \"stubs\"\nkind = \"form-stub\"\nconnection = \"forms-rx\"\nformat = \"form-stub\"\n";
    let gateway = Gateway::start(&format!("{}{stubs}", project("demo", &receiver, ""))).await;
    let client = reqwest::Client::new();
    // A device log, with a case block HQ would never look for.
    let report = r#"<?xml version='1.0' ?>
<device_report xmlns="http://code.javarosa.org/devicereport">
  <device_id>354957031935664</device_id>
  <report_date>2024-01-01T10:00:00.000Z</report_date>
  <log_subreport><log date="2024-01-01T09:59:00.000Z"><type>login</type><msg>danny logged in</msg></log></log_subreport>
  <case xmlns="http://commcarehq.org/case/transaction/v2" case_id="from-a-device-log" user_id="u1"><create><case_type>t</case_type></create></case>
  <meta xmlns="http://openrosa.org/jr/xforms"><instanceID>device-log-1</instanceID><userID>u1</userID></meta>
</device_report>"#;
    for (n, mode) in [Mode::Raw, Mode::Multipart].into_iter().enumerate() {
        let xml = report.replace("device-log-1", &format!("device-log-{n}"));
        let (body, content_type) = match mode {
            Mode::Raw => (xml.into_bytes(), "text/xml".to_owned()),
            Mode::Multipart => {
                multipart(&[("xml_submission_file", "log.xml", "text/xml", xml.as_bytes())])
            }
        };
        let reply = post(
            &client,
            &gateway.url("/a/demo/receiver"),
            body,
            &content_type,
        )
        .await;
        assert_eq!(reply.status, 201, "{mode:?}: {}", reply.body);
        assert!(reply.body.starts_with(OPENROSA_SUCCESS), "{}", reply.body);
        let (status, form) = get_form(&gateway, "demo", &format!("device-log-{n}")).await;
        assert_eq!(status, 200, "{mode:?}: the device log is stored: {form}");
        assert_eq!(form["is_device_report"], true);
        assert_eq!(form["xmlns"], "http://code.javarosa.org/devicereport");
        assert_eq!(form["case_ids"], json!([]));
    }
    assert_eq!(
        get_case(&gateway, "demo", "from-a-device-log").await.0,
        404,
        "no case from a device log"
    );
    assert!(
        gateway.records("demo", "").await.is_empty(),
        "no record for a device log"
    );

    // An ordinary form right after is forwarded: the repeaters were live.
    let (status, body) = gateway
        .submit("demo", &read_fixture("form_with_case.xml"), None)
        .await;
    assert_eq!(status, 201, "{body}");
    let records = gateway.wait_records("demo", "", 3, "succeeded", WAIT).await;
    assert_eq!(records.len(), 3, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| !r["payload_id"].as_str().unwrap().starts_with("device-log"))
    );
    assert_eq!(
        receiver.requests("/demo/forms").len(),
        2,
        "the form and its stub, no device log"
    );
    gateway.stop().await;
}

// ---- concurrency ---------------------------------------------------------------------

/// Submits `forms` (form id, body) from `n_clients` concurrent clients;
/// returns the ids answered 201 and every other answer.
async fn submit_concurrently(
    url: String,
    forms: Vec<(String, Vec<u8>)>,
    n_clients: usize,
    on_accept: Arc<dyn Fn(usize) + Send + Sync>,
) -> (Vec<String>, Vec<String>) {
    let forms = Arc::new(forms);
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..n_clients {
        let (forms, next, accepted, refused, url, on_accept) = (
            forms.clone(),
            next.clone(),
            accepted.clone(),
            refused.clone(),
            url.clone(),
            on_accept.clone(),
        );
        workers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let Some((form_id, body)) = forms.get(n) else {
                    break;
                };
                let answer = client
                    .post(&url)
                    .basic_auth("danny", Some("pw"))
                    .header("content-type", "text/xml")
                    .body(body.clone())
                    .send()
                    .await;
                match answer {
                    Ok(response) if response.status().as_u16() == 201 => {
                        let n_accepted = {
                            let mut accepted = accepted.lock().unwrap();
                            accepted.push(form_id.clone());
                            accepted.len()
                        };
                        on_accept(n_accepted);
                    }
                    Ok(response) => {
                        let status = response.status();
                        let text = response.text().await.unwrap_or_default();
                        refused
                            .lock()
                            .unwrap()
                            .push(format!("{form_id}: {status} {text}"));
                    }
                    Err(error) => refused.lock().unwrap().push(format!("{form_id}: {error}")),
                }
            }
        }));
    }
    for worker in workers {
        worker.await.expect("a submitting client");
    }
    let accepted = accepted.lock().unwrap().clone();
    let refused = refused.lock().unwrap().clone();
    (accepted, refused)
}

fn generated_forms(label: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let form_id = format!("{label}-form-{i:04}");
            let body = generated_form(&form_id, &format!("{label}-case-{i:04}"), "load");
            (form_id, body)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_forms_from_32_clients_are_all_stored() {
    const N: usize = 500;
    let receiver = Receiver::start().await;
    // Paused repeaters: the records stay pending and the test measures ingest.
    let gateway = Gateway::start(&project("demo", &receiver, "paused = true")).await;
    let started = Instant::now();
    let (accepted, refused) = submit_concurrently(
        gateway.url("/a/demo/receiver"),
        generated_forms("load", N),
        32,
        Arc::new(|_| {}),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(refused.is_empty(), "every form gets 201: {refused:?}");
    assert_eq!(accepted.len(), N);
    eprintln!("{N} forms from 32 clients in {elapsed:?}");

    let records = gateway.records("demo", "").await;
    assert_eq!(
        records.len(),
        2 * N,
        "one form and one case record per form"
    );
    assert!(
        records.iter().all(|r| r["state"] == "pending"),
        "paused repeaters send nothing"
    );
    let form_payloads: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["repeater"] == "forms")
        .map(|r| r["payload_id"].as_str().unwrap())
        .collect();
    let case_payloads: BTreeSet<&str> = records
        .iter()
        .filter(|r| r["repeater"] == "cases")
        .map(|r| r["payload_id"].as_str().unwrap())
        .collect();
    assert_eq!(form_payloads.len(), N);
    assert_eq!(case_payloads.len(), N);
    for (form_id, _) in generated_forms("load", N) {
        assert!(form_payloads.contains(form_id.as_str()), "{form_id}");
        let case_id = form_id.replace("-form-", "-case-");
        assert!(case_payloads.contains(case_id.as_str()), "{case_id}");
        let (status, form) = get_form(&gateway, "demo", &form_id).await;
        assert_eq!(status, 200, "{form_id}: {form}");
        let (status, case) = get_case(&gateway, "demo", &case_id).await;
        assert_eq!(status, 200, "{case_id}: {case}");
        assert_eq!(case["xform_ids"], json!([form_id]));
    }
    assert!(receiver.requests("/demo/forms").is_empty());
    gateway.stop().await;
}

// ---- crash safety: kill -9 of the real binary ----------------------------------------

fn instance_id(xml: &str) -> Option<&str> {
    let start = xml.find("<n1:instanceID>")? + "<n1:instanceID>".len();
    let end = xml[start..].find("</n1:instanceID>")? + start;
    Some(&xml[start..end])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_forms_survive_kill_9_and_are_delivered_after_restart() {
    const N: usize = 200;
    const SUBMITTED: usize = 260;
    let dir = TempDir::new("crash");
    let receiver = Receiver::start().await;
    // Until the crash the remote fails every request; nothing can succeed.
    receiver.plan("/demo/forms", vec![Answer::Status(503)]);
    receiver.plan("/demo/cases", vec![Answer::Status(503)]);
    let config_path = dir.path().join("repeatd.toml");
    let config = format!(
        "{}\n[delivery]\nallowed_networks = [\"127.0.0.0/8\"]\n{}",
        config_head(dir.path()),
        project(
            "demo",
            &receiver,
            "retry = { max_attempts = 1000, min_wait = \"100ms\", factor = 2.0, max_wait = \"1s\" }"
        )
    );
    std::fs::write(&config_path, config).unwrap();
    let launch = Launch::new(&config_path).log_level("warn");
    let mut process = launch.start().await.expect("starting repeatd");

    // Submit from 16 clients; kill -9 as soon as N forms are acknowledged,
    // with more submissions still under way.
    let forms = generated_forms("crash", SUBMITTED);
    let bodies: HashMap<String, Vec<u8>> = forms.iter().cloned().collect();
    let (enough_tx, enough_rx) = tokio::sync::oneshot::channel::<()>();
    let enough_tx = Mutex::new(Some(enough_tx));
    let on_accept: Arc<dyn Fn(usize) + Send + Sync> = Arc::new(move |n_accepted| {
        if n_accepted >= N
            && let Some(tx) = enough_tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    });
    let submitting = tokio::spawn(submit_concurrently(
        process.url("/a/demo/receiver"),
        forms,
        16,
        on_accept,
    ));
    let _ = enough_rx.await;
    process.kill();
    let (acknowledged, refused) = submitting.await.unwrap();
    eprintln!(
        "{} forms acknowledged before kill -9, {} not",
        acknowledged.len(),
        refused.len()
    );
    assert!(acknowledged.len() >= N, "{refused:?}");
    assert!(
        receiver.requests("/demo/forms").len() + receiver.requests("/demo/cases").len() > 0,
        "the gateway was trying to send before the crash"
    );

    // The remote recovers; the gateway restarts over the same data.
    let seen_before_restart = (
        receiver.requests("/demo/forms").len(),
        receiver.requests("/demo/cases").len(),
    );
    receiver.plan("/demo/forms", vec![Answer::Status(200)]);
    receiver.plan("/demo/cases", vec![Answer::Status(200)]);
    let process = launch.start().await.expect("starting repeatd again");

    // Every acknowledged form is stored with its case and both records; a form
    // that was under way at the kill is either all there or not at all.
    let records = process.records("demo", "").await;
    let mut per_payload: HashMap<String, usize> = HashMap::new();
    for record in &records {
        *per_payload
            .entry(record["payload_id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    let mut stored = Vec::new();
    for (form_id, _) in generated_forms("crash", SUBMITTED) {
        let case_id = form_id.replace("-form-", "-case-");
        let (form_status, _) = process
            .api(
                "GET",
                &format!("/api/v1/domains/demo/forms/{form_id}"),
                None,
            )
            .await;
        let (case_status, case) = process
            .api(
                "GET",
                &format!("/api/v1/domains/demo/cases/{case_id}"),
                None,
            )
            .await;
        let n_records = per_payload.get(&form_id).copied().unwrap_or(0)
            + per_payload.get(&case_id).copied().unwrap_or(0);
        if acknowledged.contains(&form_id) {
            assert_eq!(form_status, 200, "acknowledged form {form_id} is stored");
            assert_eq!(
                case_status, 200,
                "the case of acknowledged form {form_id} is stored"
            );
            assert_eq!(case["xform_ids"], json!([form_id]));
            assert_eq!(
                n_records, 2,
                "both records of acknowledged form {form_id} are kept"
            );
            stored.push(form_id);
        } else if form_status == 200 {
            assert_eq!(
                (case_status, n_records),
                (200, 2),
                "form {form_id} is stored whole"
            );
            stored.push(form_id);
        } else {
            assert_eq!(
                (case_status, n_records),
                (404, 0),
                "form {form_id} left no trace"
            );
        }
    }
    assert_eq!(records.len(), 2 * stored.len(), "no stray records");
    eprintln!(
        "after the restart: {} forms stored, {} of them committed but not acknowledged",
        stored.len(),
        stored.len() - acknowledged.len()
    );

    // Everything stored is delivered.
    let delivered = wait_for(Duration::from_secs(120), || async {
        let records = process.records("demo", "").await;
        if records.iter().all(|r| r["state"] == "succeeded") {
            Ok(records)
        } else {
            Err(records)
        }
    })
    .await;
    let records = delivered.unwrap_or_else(|last_seen| last_seen);
    let unfinished: Vec<&Value> = records
        .iter()
        .filter(|r| r["state"] != "succeeded")
        .collect();
    assert!(
        unfinished.is_empty(),
        "{} records not delivered, e.g. {:?}",
        unfinished.len(),
        unfinished.first()
    );
    let delivered_forms: BTreeSet<String> = receiver.requests("/demo/forms")
        [seen_before_restart.0..]
        .iter()
        .map(|request| {
            let text = request.text();
            let form_id = instance_id(&text)
                .unwrap_or_else(|| panic!("a form without an id: {text}"))
                .to_owned();
            assert!(
                bodies[&form_id] == request.body,
                "form {form_id} is forwarded byte for byte"
            );
            form_id
        })
        .collect();
    let delivered_cases: BTreeSet<String> = receiver.requests("/demo/cases")
        [seen_before_restart.1..]
        .iter()
        .map(|request| request.json()["case_id"].as_str().unwrap().to_owned())
        .collect();
    for form_id in &stored {
        assert!(delivered_forms.contains(form_id), "form {form_id} arrived");
        assert!(
            delivered_cases.contains(&form_id.replace("-form-", "-case-")),
            "the case of {form_id} arrived"
        );
    }
    drop(process);
}
