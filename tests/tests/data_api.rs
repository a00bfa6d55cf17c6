//! The CommCare HQ compatible Data API (SPEC section 11) as its users meet it:
//! commcare-export itself exporting forms and cases page by page, the
//! tastypie envelope and its links, every filter and ordering, the limits,
//! the credentials and tenant isolation, objects checked key by key against
//! CommCare's own examples (`tests/fixtures/commcare-api/`), and paging while
//! forms keep arriving.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use repeatd_tests::{ADMIN_TOKEN, Gateway, Receiver, TempDir, demo_config, read_fixture, repeater};
use serde_json::Value;

const VISIT: &str = "http://example.org/forms/visit";
const REGISTRATION: &str = "http://example.org/forms/registration";

/// Two domains with a token each; danny submits to demo, olga to other.
fn config() -> String {
    let mut text = demo_config(&[], "");
    text.push_str(
        r#"
[[domains]]
name = "other"

[[api_tokens]]
domain = "demo"
token = "demo-token"

[[api_tokens]]
domain = "other"
token = "other-token"

[[submitters]]
domain = "other"
username = "olga"
password = "pw"
"#,
    );
    text
}

/// A form of `xmlns` that creates or updates one case.
struct Form<'a> {
    id: &'a str,
    xmlns: &'a str,
    case_id: &'a str,
    case_type: &'a str,
    owner_id: &'a str,
    user_id: &'a str,
    close: bool,
}

impl Form<'_> {
    fn xml(&self) -> Vec<u8> {
        let Form {
            id,
            xmlns,
            case_id,
            case_type,
            owner_id,
            user_id,
            close,
        } = self;
        let (close_block, day) = if *close { ("<n0:close/>", 3) } else { ("", 1) };
        format!(
            r#"<?xml version='1.0' ?>
<data xmlns="{xmlns}" name="Visit" uiVersion="1" version="7">
  <answer>yes</answer>
  <n0:case case_id="{case_id}" date_modified="2024-01-0{day}T10:00:00.000000Z" user_id="{user_id}" xmlns:n0="http://commcarehq.org/case/transaction/v2"><n0:create><n0:case_name>case {case_id}</n0:case_name><n0:owner_id>{owner_id}</n0:owner_id><n0:case_type>{case_type}</n0:case_type></n0:create><n0:update><n0:visit>{id}</n0:visit></n0:update>{close_block}</n0:case>
  <n1:meta xmlns:n1="http://openrosa.org/jr/xforms"><n1:deviceID>tab-1</n1:deviceID><n1:timeStart>2024-01-01T09:58:00.000Z</n1:timeStart><n1:timeEnd>2024-01-01T10:00:00.000Z</n1:timeEnd><n1:userID>{user_id}</n1:userID><n1:username>danny</n1:username><n1:instanceID>{id}</n1:instanceID><n1:appVersion>CommCare Android, version "2.53.0"(464694). App v12. CommCare Version 2.53.0. Build 464694</n1:appVersion></n1:meta>
</data>"#,
        )
        .into_bytes()
    }
}

fn visit<'a>(id: &'a str, case_id: &'a str) -> Form<'a> {
    Form {
        id,
        xmlns: VISIT,
        case_id,
        case_type: "patient",
        owner_id: "clinic-1",
        user_id: "u1",
        close: false,
    }
}

async fn submit(gateway: &Gateway, form: &Form<'_>, app_id: Option<&str>) {
    let (status, body) = gateway.submit("demo", &form.xml(), app_id).await;
    assert_eq!(status, 201, "{body}");
}

/// GETs a Data API path with `Authorization: {authorization}`.
async fn get_as(gateway: &Gateway, authorization: &str, path: &str) -> (u16, Value) {
    let response = gateway
        .http()
        .get(gateway.url(path))
        .header("authorization", authorization)
        .send()
        .await
        .expect("calling the Data API");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// GETs a Data API path as commcare-export does, with demo's token.
async fn get(gateway: &Gateway, path: &str) -> Value {
    let (status, body) = get_as(gateway, "ApiKey danny:demo-token", path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

fn ids(list: &Value) -> Vec<String> {
    list["objects"]
        .as_array()
        .expect("objects")
        .iter()
        .map(|object| object["id"].as_str().expect("an id").to_owned())
        .collect()
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect()
}

fn fixture_object(name: &str) -> Value {
    let list: Value = serde_json::from_slice(&read_fixture(name)).unwrap();
    list["objects"][0].clone()
}

/// Runs commcare-export on `query` against `gateway` as demo's danny, pages of
/// `batch_size`, and answers what it exported: table name → its rows, the
/// headings first. commcare-export exits 0 even when it failed, so what it
/// wrote is what counts.
async fn commcare_export(
    gateway: &Gateway,
    query: &std::path::Path,
    dir: &std::path::Path,
    batch_size: usize,
) -> Value {
    let output = dir.join("export.zip");
    let export = tokio::process::Command::new("commcare-export")
        .current_dir(dir)
        .args(["--commcare-hq", &gateway.url("")])
        .args(["--project", "demo", "--api-version", "0.5"])
        .args([
            "--auth-mode",
            "apikey",
            "--username",
            "danny",
            "--password",
            "demo-token",
        ])
        .arg("--query")
        .arg(query)
        .args(["--batch-size", &batch_size.to_string(), "--no-logfile"])
        .arg("--output-format")
        .arg("csv")
        .arg("--output")
        .arg(&output)
        .output()
        .await
        .expect("running commcare-export");
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&export.stdout),
        String::from_utf8_lossy(&export.stderr)
    );
    // One CSV file per table, in a zip.
    let read = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import csv, io, json, sys, zipfile\n\
             book = zipfile.ZipFile(sys.argv[1])\n\
             print(json.dumps({name.removesuffix('.csv'): list(csv.reader(io.TextIOWrapper(book.open(name), 'utf-8'))) for name in book.namelist()}))",
        )
        .arg(&output)
        .output()
        .await
        .expect("running python3");
    assert!(
        read.status.success(),
        "commcare-export wrote no export ({}): {log}",
        String::from_utf8_lossy(&read.stderr)
    );
    serde_json::from_slice(&read.stdout).unwrap()
}

#[tokio::test]
async fn the_readmes_commcare_export_query_exports_the_seed_form_and_its_case() {
    let gateway = Gateway::start(&config()).await;
    let (status, body) = gateway.submit("demo", repeatd_tests::SEED_FORM, None).await;
    assert_eq!(status, 201, "{body}");
    let dir = TempDir::new("readme-export");
    let query = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/commcare-export/query.json");
    let tables = commcare_export(&gateway, &query, dir.path(), 100).await;
    let received_on =
        get(&gateway, "/a/demo/api/v0.5/form/").await["objects"][0]["received_on"].clone();
    assert_eq!(
        tables["tree_planting"],
        serde_json::json!([
            ["form_id", "received_on", "species", "user"],
            [repeatd_tests::SEED_FORM_ID, received_on, "Baobab", "danny"],
        ])
    );
    assert_eq!(
        tables["trees"],
        serde_json::json!([
            ["case_id", "name", "owner", "closed"],
            [
                repeatd_tests::SEED_CASE_ID,
                "Baobab",
                "3a9f1c07e2b84d65a0c7f2e91b4d8c36",
                "False"
            ],
        ])
    );
    gateway.stop().await;
}

#[tokio::test]
async fn commcare_export_exports_forms_by_xmlns_and_cases_by_type_over_many_pages() {
    let gateway = Gateway::start(&config()).await;
    let mut visit_ids = BTreeSet::new();
    let mut patient_ids = BTreeSet::new();
    for n in 0..23 {
        let (form_id, case_id) = (format!("visit-{n:02}"), format!("patient-{n:02}"));
        submit(&gateway, &visit(&form_id, &case_id), None).await;
        visit_ids.insert(form_id);
        patient_ids.insert(case_id);
    }
    for n in 0..6 {
        let (form_id, case_id) = (format!("reg-{n}"), format!("household-{n}"));
        let form = Form {
            xmlns: REGISTRATION,
            case_type: "household",
            ..visit(&form_id, &case_id)
        };
        submit(&gateway, &form, None).await;
    }
    let dir = TempDir::new("commcare-export");
    let query = dir.path().join("query.xlsx");
    // The Excel query a CommCare user writes, made with openpyxl (a
    // dependency of commcare-export).
    let script = format!(
        r#"
import openpyxl
book = openpyxl.Workbook()
forms = book.active
forms.title = "visits"
for row in [["Data Source", "Filter Name", "Filter Value", "Field", "Source Field"],
            ["form", "xmlns", "{VISIT}", "form_id", "id"],
            [None, None, None, "case_id", "form.case.@case_id"],
            [None, None, None, "user", "form.meta.userID"]]:
    forms.append(row)
cases = book.create_sheet("patients")
for row in [["Data Source", "Filter Name", "Filter Value", "Field", "Source Field"],
            ["case", "type", "patient", "case_id", "id"],
            [None, None, None, "name", "properties.case_name"],
            [None, None, None, "owner", "properties.owner_id"]]:
    cases.append(row)
book.save(r"{}")
"#,
        query.display()
    );
    let made = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .await
        .expect("running python3");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let tables = commcare_export(&gateway, &query, dir.path(), 4).await;
    // (headings, rows, the first column of the rows)
    let table = |name: &str| -> (Value, Vec<Value>, BTreeSet<String>) {
        let rows = tables[name]
            .as_array()
            .unwrap_or_else(|| panic!("no table {name}: {tables}"))
            .clone();
        let first_column = rows[1..]
            .iter()
            .map(|row| row[0].as_str().unwrap().to_owned())
            .collect();
        (rows[0].clone(), rows[1..].to_vec(), first_column)
    };
    let (headings, rows, exported) = table("visits");
    assert_eq!(headings, serde_json::json!(["form_id", "case_id", "user"]));
    assert_eq!(rows.len(), 23, "each visit exactly once: {rows:?}");
    assert_eq!(exported, visit_ids);
    for row in &rows {
        let form_id = row[0].as_str().unwrap();
        assert_eq!(row[1], form_id.replace("visit", "patient"));
        assert_eq!(row[2], "u1");
    }
    let (headings, rows, exported) = table("patients");
    assert_eq!(headings, serde_json::json!(["case_id", "name", "owner"]));
    assert_eq!(rows.len(), 23, "each patient exactly once: {rows:?}");
    assert_eq!(exported, patient_ids);
    for row in &rows {
        assert_eq!(row[1], format!("case {}", row[0].as_str().unwrap()));
        assert_eq!(row[2], "clinic-1");
    }
    gateway.stop().await;
}

#[tokio::test]
async fn forms_and_cases_have_the_shape_of_commcares_examples_key_by_key() {
    let gateway = Gateway::start(&config()).await;
    let (status, body) = gateway
        .submit(
            "demo",
            &read_fixture("commcare-api/form_case_update.xml"),
            Some("effb341b"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    submit(&gateway, &visit("v1", "b6996b7b-6b3f-476a-9006"), None).await;

    let list = get(&gateway, "/a/demo/api/v0.5/form/?order_by=indexed_on").await;
    let envelope_fixture: Value =
        serde_json::from_slice(&read_fixture("commcare-api/form_list_response.json")).unwrap();
    assert_eq!(keys(&list), keys(&envelope_fixture));
    assert_eq!(keys(&list["meta"]), keys(&envelope_fixture["meta"]));
    assert_eq!(ids(&list), ["f959449c-8776-42ac-b776-3f564fafc331", "v1"]);
    let expected = fixture_object("commcare-api/form_list_response.json");
    let object = &list["objects"][0];
    assert_eq!(keys(object), keys(&expected));
    assert_eq!(keys(&object["metadata"]), keys(&expected["metadata"]));
    assert_eq!(keys(&object["form"]), keys(&expected["form"]));
    assert_eq!(
        keys(&object["form"]["meta"]),
        keys(&expected["form"]["meta"])
    );
    assert_eq!(object["form"]["case"], expected["form"]["case"]);
    for key in [
        "#type",
        "@name",
        "@uiVersion",
        "@version",
        "@xmlns",
        "question3",
        "old_data_node",
    ] {
        assert_eq!(object["form"][key], expected["form"][key], "form {key}");
    }
    for key in ["app_id", "archived", "id", "type", "uiversion", "version"] {
        assert_eq!(object[key], expected[key], "{key}");
    }
    for key in [
        "appVersion",
        "app_build_version",
        "commcare_version",
        "deviceID",
        "doc_type",
        "instanceID",
        "timeEnd",
        "timeStart",
        "userID",
    ] {
        assert_eq!(
            object["metadata"][key], expected["metadata"][key],
            "metadata {key}"
        );
    }
    let form_xml = read_fixture("commcare-api/form_case_update.xml");
    assert_eq!(object["attachments"]["form.xml"]["length"], form_xml.len());
    assert_eq!(object["domain"], "demo");
    for time in ["received_on", "indexed_on", "server_modified_on"] {
        assert!(
            repeatd_tests::is_timestamp(object[time].as_str().unwrap()),
            "{time}: {object}"
        );
    }
    let resource_uri = object["resource_uri"].as_str().unwrap();
    assert_eq!(
        resource_uri,
        "/a/demo/api/v0.5/form/f959449c-8776-42ac-b776-3f564fafc331/"
    );
    // The object's own URI answers the same object; its form.xml, the XML.
    assert_eq!(&get(&gateway, resource_uri).await, object);
    let url = object["attachments"]["form.xml"]["url"].as_str().unwrap();
    let response = gateway
        .http()
        .get(gateway.url(url))
        .header("authorization", "ApiKey danny:demo-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        form_xml.as_slice()
    );

    let cases = get(&gateway, "/a/demo/api/v0.5/case/").await;
    let expected = fixture_object("commcare-api/case_list_response.json");
    let case = &cases["objects"][0];
    assert_eq!(keys(case), keys(&expected));
    assert_eq!(case["id"], "b6996b7b-6b3f-476a-9006");
    assert_eq!(case["case_id"], case["id"]);
    assert_eq!(
        case["xform_ids"],
        serde_json::json!(["f959449c-8776-42ac-b776-3f564fafc331", "v1"])
    );
    assert_eq!(case["properties"]["case_type"], "patient");
    assert_eq!(case["properties"]["visit"], "v1");
    assert_eq!(case["properties"]["intval"], "5");
    assert_eq!(
        case["resource_uri"],
        "/a/demo/api/v0.5/case/b6996b7b-6b3f-476a-9006/"
    );
    assert_eq!(
        &get(&gateway, "/a/demo/api/v0.5/case/b6996b7b-6b3f-476a-9006").await,
        case
    );
    // The case changed after its first form: it is indexed after both forms.
    assert!(case["indexed_on"].as_str() > list["objects"][1]["indexed_on"].as_str());
    gateway.stop().await;
}

#[tokio::test]
async fn every_filter_and_ordering_narrows_and_orders_as_asked() {
    let gateway = Gateway::start(&config()).await;
    submit(&gateway, &visit("f1", "c1"), Some("app-a")).await;
    submit(
        &gateway,
        &Form {
            xmlns: REGISTRATION,
            case_type: "household",
            owner_id: "clinic-2",
            ..visit("f2", "c2")
        },
        Some("app-b"),
    )
    .await;
    submit(
        &gateway,
        &Form {
            user_id: "u2",
            ..visit("f3", "c3")
        },
        Some("app-a"),
    )
    .await;
    submit(
        &gateway,
        &Form {
            close: true,
            ..visit("f4", "c1")
        },
        None,
    )
    .await;
    let all = get(&gateway, "/a/demo/api/v0.5/form/").await;
    assert_eq!(ids(&all), ["f1", "f2", "f3", "f4"]);
    let at = |n: usize, key: &str| all["objects"][n][key].as_str().unwrap().to_owned();
    let forms = |query: String| {
        let gateway = &gateway;
        async move { ids(&get(gateway, &format!("/a/demo/api/v0.5/form/?{query}")).await) }
    };
    let encode = |text: &str| text.replace(':', "%3A").replace('/', "%2F");
    assert_eq!(
        forms(format!("xmlns={}", encode(VISIT))).await,
        ["f1", "f3", "f4"]
    );
    assert_eq!(
        forms(format!("xmlns={}", encode(REGISTRATION))).await,
        ["f2"]
    );
    assert_eq!(forms("app_id=app-a".into()).await, ["f1", "f3"]);
    assert_eq!(
        forms(format!("app_id=app-a&xmlns={}", encode(VISIT))).await,
        ["f1", "f3"]
    );
    assert_eq!(forms("case_id=c1".into()).await, ["f1", "f4"]);
    assert_eq!(
        forms("case_id=c1&order_by=-indexed_on".into()).await,
        ["f4", "f1"]
    );
    assert!(forms("case_id=nobody".into()).await.is_empty());
    assert_eq!(
        forms(format!("indexed_on_start={}", at(1, "indexed_on"))).await,
        ["f2", "f3", "f4"]
    );
    assert_eq!(
        forms(format!(
            "indexed_on_start={}&indexed_on_end={}",
            at(1, "indexed_on"),
            at(3, "indexed_on")
        ))
        .await,
        ["f2", "f3"]
    );
    assert_eq!(
        forms(format!("received_on_start={}", at(2, "received_on"))).await,
        ["f3", "f4"]
    );
    assert_eq!(
        forms(format!(
            "received_on_end={}&order_by=received_on",
            at(2, "received_on")
        ))
        .await,
        ["f1", "f2"]
    );
    assert_eq!(
        forms("order_by=-indexed_on".into()).await,
        ["f4", "f3", "f2", "f1"]
    );
    assert_eq!(
        forms("order_by=-received_on".into()).await,
        ["f4", "f3", "f2", "f1"]
    );
    assert_eq!(
        forms("order_by=server_modified_on".into()).await,
        ["f1", "f2", "f3", "f4"]
    );
    assert!(forms("received_on_end=2000-01-01".into()).await.is_empty());
    assert_eq!(forms("received_on_start=2000-01-01".into()).await.len(), 4);

    let cases = |query: &str| {
        let gateway = &gateway;
        let path = format!("/a/demo/api/v0.5/case/?{query}");
        async move { ids(&get(gateway, &path).await) }
    };
    // c1 changed last (closed by f4).
    assert_eq!(cases("").await, ["c2", "c3", "c1"]);
    assert_eq!(cases("type=patient").await, ["c3", "c1"]);
    assert_eq!(cases("type=household").await, ["c2"]);
    assert_eq!(cases("owner_id=clinic-2").await, ["c2"]);
    assert_eq!(cases("user_id=u2").await, ["c3"]);
    assert_eq!(cases("closed=true").await, ["c1"]);
    assert_eq!(cases("closed=false&type=patient").await, ["c3"]);
    assert_eq!(cases("date_modified_start=2024-01-02").await, ["c1"]);
    assert_eq!(cases("date_modified_end=2024-01-02").await, ["c2", "c3"]);
    assert_eq!(cases("order_by=-indexed_on").await, ["c1", "c3", "c2"]);
    assert_eq!(
        cases("order_by=server_date_modified").await,
        ["c2", "c3", "c1"]
    );
    assert_eq!(
        cases("order_by=-server_date_modified&type=patient").await,
        ["c1", "c3"]
    );
    let listed = get(&gateway, "/a/demo/api/v0.5/case/").await;
    let c3 = &listed["objects"][1];
    let c1 = &listed["objects"][2];
    assert_eq!(
        cases(&format!(
            "indexed_on_start={}",
            c3["indexed_on"].as_str().unwrap()
        ))
        .await,
        ["c3", "c1"]
    );
    assert_eq!(
        cases(&format!(
            "server_date_modified_start={}",
            c1["server_date_modified"].as_str().unwrap()
        ))
        .await,
        ["c1"]
    );
    assert_eq!(
        cases(&format!(
            "server_date_modified_end={}",
            c1["server_date_modified"].as_str().unwrap()
        ))
        .await,
        ["c2", "c3"]
    );
    assert_eq!(c1["xform_ids"], serde_json::json!(["f1", "f4"]));
    assert_eq!(c1["closed"], true);
    gateway.stop().await;
}

#[tokio::test]
async fn pages_link_to_their_neighbours_and_limits_are_enforced() {
    let gateway = Gateway::start(&config()).await;
    for n in 0..7 {
        submit(&gateway, &visit(&format!("f{n}"), &format!("c{n}")), None).await;
    }
    let first = get(
        &gateway,
        "/a/demo/api/v0.5/form/?limit=3&order_by=indexed_on",
    )
    .await;
    assert_eq!(
        first["meta"],
        serde_json::json!({
            "limit": 3,
            "next": "/a/demo/api/v0.5/form/?order_by=indexed_on&limit=3&offset=3",
            "offset": 0,
            "previous": null,
            "total_count": 7,
        })
    );
    assert_eq!(ids(&first), ["f0", "f1", "f2"]);
    let second = get(&gateway, first["meta"]["next"].as_str().unwrap()).await;
    assert_eq!(ids(&second), ["f3", "f4", "f5"]);
    assert_eq!(
        second["meta"]["previous"],
        "/a/demo/api/v0.5/form/?order_by=indexed_on&limit=3&offset=0"
    );
    let last = get(&gateway, second["meta"]["next"].as_str().unwrap()).await;
    assert_eq!(ids(&last), ["f6"]);
    assert_eq!(last["meta"]["next"], Value::Null);
    assert_eq!(last["meta"]["offset"], 6);
    // The defaults.
    let default = get(&gateway, "/a/demo/api/v0.5/case").await;
    assert_eq!(default["meta"]["limit"], 20);
    assert_eq!(default["meta"]["offset"], 0);
    assert_eq!(default["meta"]["next"], Value::Null);
    assert_eq!(default["meta"]["total_count"], 7);
    assert_eq!(
        get(&gateway, "/a/demo/api/v0.5/form/?limit=1000").await["meta"]["limit"],
        1000
    );
    assert_eq!(
        get(&gateway, "/a/demo/api/v0.5/case/?limit=5000").await["meta"]["limit"],
        5000
    );
    for (path, field) in [
        ("/a/demo/api/v0.5/form/?limit=1001", "limit"),
        ("/a/demo/api/v0.5/case/?limit=5001", "limit"),
        ("/a/demo/api/v0.5/form/?limit=many", "limit"),
        ("/a/demo/api/v0.5/form/?offset=-1", "offset"),
        (
            "/a/demo/api/v0.5/form/?indexed_on_start=last-week",
            "indexed_on_start",
        ),
        (
            "/a/demo/api/v0.5/case/?server_date_modified_end=2024-13-01",
            "server_date_modified_end",
        ),
        ("/a/demo/api/v0.5/case/?order_by=case_name", "order_by"),
        ("/a/demo/api/v0.5/case/?closed=perhaps", "closed"),
    ] {
        let (status, body) = get_as(&gateway, "ApiKey danny:demo-token", path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["field"], field, "{path}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with(field),
            "{path}: {body}"
        );
    }
    gateway.stop().await;
}

#[tokio::test]
async fn credentials_are_api_keys_or_bearer_tokens_and_domains_stay_apart() {
    let gateway = Gateway::start(&config()).await;
    submit(&gateway, &visit("f1", "c1"), None).await;
    let path = "/a/demo/api/v0.5/form/";
    for authorization in [
        "ApiKey danny:demo-token",
        "apikey danny:demo-token",
        "APIKEY someone@example.org:demo-token",
        "Bearer demo-token",
        &format!("ApiKey admin:{ADMIN_TOKEN}"),
        &format!("bearer {ADMIN_TOKEN}"),
    ] {
        let (status, body) = get_as(&gateway, authorization, path).await;
        assert_eq!(status, 200, "{authorization}: {body}");
        assert_eq!(ids(&body), ["f1"], "{authorization}");
    }
    for authorization in [
        "",
        "ApiKey danny:wrong",
        "ApiKey demo-token",
        "Basic ZGFubnk6cHc=",
        "Bearer other",
    ] {
        let (status, body) = get_as(&gateway, authorization, path).await;
        assert_eq!(status, 401, "{authorization:?}: {body}");
    }
    // Another domain's token sees nothing of demo: 404, as for no domain at all.
    for path in [
        "/a/demo/api/v0.5/form/",
        "/a/demo/api/v0.5/form/f1/",
        "/a/demo/api/v0.5/case/",
        "/a/demo/api/v0.5/case/c1",
        "/a/nowhere/api/v0.5/form/",
    ] {
        let (status, body) = get_as(&gateway, "ApiKey olga:other-token", path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, body) = get_as(
        &gateway,
        "ApiKey olga:other-token",
        "/a/other/api/v0.5/form/",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["meta"]["total_count"], 0);
    let (status, _) = get_as(
        &gateway,
        &format!("Bearer {ADMIN_TOKEN}"),
        "/a/nowhere/api/v0.5/form/",
    )
    .await;
    assert_eq!(status, 404);
    // Every version and both spellings of each route.
    for version in ["v0.4", "v0.5", "v0.6"] {
        for path in [
            format!("/a/demo/api/{version}/form/"),
            format!("/a/demo/api/{version}/form"),
            format!("/a/demo/api/{version}/case/"),
            format!("/a/demo/api/{version}/case"),
        ] {
            assert_eq!(
                get(&gateway, &path).await["meta"]["total_count"],
                1,
                "{path}"
            );
        }
        let form = get(&gateway, &format!("/a/demo/api/{version}/form/f1")).await;
        assert_eq!(
            form["resource_uri"],
            format!("/a/demo/api/{version}/form/f1/")
        );
        let case = get(&gateway, &format!("/a/demo/api/{version}/case/c1/")).await;
        assert_eq!(case["id"], "c1");
    }
    let (status, body) = get_as(
        &gateway,
        "ApiKey danny:demo-token",
        "/a/demo/api/v0.3/form/",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = get_as(
        &gateway,
        "ApiKey danny:demo-token",
        "/a/demo/api/v0.5/form/nope/",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no form \"nope\" in domain \"demo\"");
    gateway.stop().await;
}

#[tokio::test]
async fn paging_by_indexed_on_while_500_forms_arrive_misses_none() {
    let gateway = Gateway::start(&config()).await;
    let submitting = {
        let client = (*gateway).clone();
        tokio::spawn(async move {
            // Four devices at once, so that forms share group commits.
            let devices = (0..4).map(|device| {
                let client = client.clone();
                tokio::spawn(async move {
                    for n in 0..125 {
                        let (form_id, case_id) =
                            (format!("d{device}-f{n}"), format!("d{device}-c{n}"));
                        let (status, body) = client
                            .submit("demo", &visit(&form_id, &case_id).xml(), None)
                            .await;
                        assert_eq!(status, 201, "{body}");
                    }
                })
            });
            for device in devices.collect::<Vec<_>>() {
                device.await.unwrap();
            }
        })
    };
    // Page as commcare-export does: from the last object's indexed_on, inclusive.
    let mut seen = HashSet::new();
    let mut n_pages = 0;
    let mut n_pages_while_submitting = 0;
    let mut since: Option<String> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done = submitting.is_finished();
        let path = match &since {
            Some(since) => format!(
                "/a/demo/api/v0.5/form/?order_by=indexed_on&limit=25&indexed_on_start={since}"
            ),
            None => "/a/demo/api/v0.5/form/?order_by=indexed_on&limit=25".to_owned(),
        };
        let page = get(&gateway, &path).await;
        n_pages += 1;
        if !done {
            n_pages_while_submitting += 1;
        }
        let page_ids = ids(&page);
        let new = page_ids
            .iter()
            .filter(|id| seen.insert((*id).clone()))
            .count();
        if let Some(last) = page["objects"].as_array().unwrap().last() {
            since = Some(last["indexed_on"].as_str().unwrap().to_owned());
        }
        // Caught up with a batch that was complete before this page was read.
        if done && new == 0 && page["meta"]["next"].is_null() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "paging did not finish: {} seen",
            seen.len()
        );
    }
    submitting.await.unwrap();
    assert_eq!(seen.len(), 500, "after {n_pages} pages");
    assert!(
        n_pages_while_submitting > 0,
        "no page was read while forms arrived ({n_pages} pages)"
    );
    let total = get(&gateway, "/a/demo/api/v0.5/form/?limit=1").await;
    assert_eq!(total["meta"]["total_count"], 500);
    gateway.stop().await;
}

#[tokio::test]
async fn a_form_json_repeater_sends_the_apis_form_object() {
    let receiver = Receiver::start().await;
    let mut text = config();
    text = text.replacen(
        "[[domains]]\nname = \"other\"",
        &format!(
            "[[connections]]\ndomain = \"demo\"\nname = \"remote\"\nurl = \"{}\"\nauth = {{ type = \"none\" }}\n\n[[domains]]\nname = \"other\"",
            receiver.url("/forms")
        ),
        1,
    );
    text.push_str(&repeater("json-forms", "form", "remote", "form-json", ""));
    let gateway = Gateway::start(&text).await;
    let (status, body) = gateway
        .submit(
            "demo",
            &read_fixture("commcare-api/form_case_update.xml"),
            Some("effb341b"),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let arrived = receiver.wait("/forms", 1, Duration::from_secs(30)).await;
    let sent = &arrived[0];
    assert_eq!(sent.header("content-type"), Some("application/json"));
    let object = get(
        &gateway,
        "/a/demo/api/v0.5/form/f959449c-8776-42ac-b776-3f564fafc331/",
    )
    .await;
    assert_eq!(sent.header("received-on"), object["received_on"].as_str());
    // The same object as the API answers, key by key.
    assert_eq!(sent.json(), object);
    assert_eq!(
        keys(&sent.json()),
        keys(&fixture_object("commcare-api/form_list_response.json"))
    );
    gateway.stop().await;
}
