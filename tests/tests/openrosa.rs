//! Issue 12, OpenRosa as ODK Collect speaks it, end to end against the
//! in-process gateway and a real remote on loopback: every receiver answer
//! carries the OpenRosa headers; `HEAD` checks credentials exactly as `POST`
//! does; a submission Collect splits over several POSTs keeps every
//! attachment and is forwarded once; forms in any declared encoding are
//! parsed as text and forwarded byte for byte.

use repeatd_tests::fixture_session::*;
use repeatd_tests::*;
use serde_json::{Value, json};

/// The body size limit every test here configures (Collect reads it from the
/// `X-OpenRosa-Accept-Content-Length` of the `HEAD` answer).
const MAX_BODY_BYTES: usize = 64_000;

fn config(receiver: &Receiver) -> String {
    format!(
        "[ingest]\nmax_body_bytes = {MAX_BODY_BYTES}\n{}",
        project("demo", receiver, "")
    )
}

/// The two OpenRosa headers, as `what` got them.
fn assert_openrosa_headers(what: &str, headers: &reqwest::header::HeaderMap) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("x-openrosa-version"), Some("1.0"), "{what}");
    assert_eq!(
        header("x-openrosa-accept-content-length"),
        Some(MAX_BODY_BYTES.to_string().as_str()),
        "{what}"
    );
}

/// Who a request says it is.
#[derive(Debug, Clone, Copy)]
enum Credentials {
    None,
    Wrong,
    Submitter,
}

async fn request(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    credentials: Credentials,
) -> reqwest::Response {
    let mut request = client
        .request(method, url)
        .header("content-type", "text/xml");
    request = match credentials {
        Credentials::None => request,
        Credentials::Wrong => request.basic_auth("danny", Some("not-the-password")),
        Credentials::Submitter => request.basic_auth("danny", Some("pw")),
    };
    request.body(SEED_FORM.to_vec()).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_checks_credentials_like_post_and_every_answer_carries_the_openrosa_headers() {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&config(&receiver)).await;
    let client = reqwest::Client::new();

    for path in ["/a/demo/receiver", "/a/demo/receiver/some-app"] {
        let url = gateway.url(path);
        let refused = [(Credentials::None, 401), (Credentials::Wrong, 401)];
        for (credentials, status) in refused {
            let what = format!("HEAD {path} with {credentials:?} credentials");
            let head = request(&client, reqwest::Method::HEAD, &url, credentials).await;
            assert_eq!(head.status().as_u16(), status, "{what}");
            assert_eq!(
                head.headers()["www-authenticate"],
                "Basic realm=\"repeatd demo\", charset=\"UTF-8\"",
                "{what}"
            );
            assert_openrosa_headers(&what, head.headers());
            let post = request(&client, reqwest::Method::POST, &url, credentials).await;
            assert_eq!(post.status().as_u16(), status, "POST {path} likewise");
            assert_openrosa_headers(&format!("POST {path}"), post.headers());
            assert!(
                post.text().await.unwrap().starts_with(OPENROSA_ERROR),
                "POST {path}"
            );
        }
        let head = request(&client, reqwest::Method::HEAD, &url, Credentials::Submitter).await;
        assert_eq!(head.status().as_u16(), 204, "HEAD {path} as a submitter");
        assert_openrosa_headers(&format!("HEAD {path}"), head.headers());
    }
    assert_eq!(
        gateway.records("demo", "").await,
        Vec::<Value>::new(),
        "no refused POST was taken"
    );

    // An unknown project space is 404 for HEAD as for POST, whoever asks.
    for credentials in [Credentials::None, Credentials::Submitter] {
        let url = gateway.url("/a/nowhere/receiver");
        let head = request(&client, reqwest::Method::HEAD, &url, credentials).await;
        assert_eq!(head.status().as_u16(), 404, "HEAD, {credentials:?}");
        assert_openrosa_headers("HEAD of an unknown domain", head.headers());
        let post = request(&client, reqwest::Method::POST, &url, credentials).await;
        assert_eq!(post.status().as_u16(), 404, "POST, {credentials:?}");
        assert_openrosa_headers("POST to an unknown domain", post.headers());
    }

    // Success, a refused body and a method the receiver does not take.
    let url = gateway.url("/a/demo/receiver");
    let accepted = request(&client, reqwest::Method::POST, &url, Credentials::Submitter).await;
    assert_eq!(accepted.status().as_u16(), 201);
    assert_openrosa_headers("a 201", accepted.headers());
    let not_xml = post(&client, &url, b"not xml".to_vec(), "text/xml").await;
    assert_eq!(not_xml.status, 400, "{}", not_xml.body);
    assert_openrosa_headers("a 400", &not_xml.headers);
    let get = request(&client, reqwest::Method::GET, &url, Credentials::Submitter).await;
    assert_eq!(get.status().as_u16(), 405);
    assert_openrosa_headers("a 405", get.headers());
    gateway.stop().await;
}

// ---- a submission split over several POSTs ---------------------------------------

const COLLECT_BOUNDARY: &str = "collect-boundary-5e1d2c";

/// One part of a multipart body as Collect's OkHttp writes it: a file (with
/// a file name and a content type), or a plain field.
enum Part<'a> {
    File {
        name: &'a str,
        content_type: &'a str,
        content: &'a [u8],
    },
    Field {
        name: &'a str,
        value: &'a str,
    },
}

fn collect_body(parts: &[Part]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{COLLECT_BOUNDARY}\r\n").as_bytes());
        match part {
            Part::File {
                name,
                content_type,
                content,
            } => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: {content_type}\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(content);
            }
            Part::Field { name, value } => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}")
                        .as_bytes(),
                );
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{COLLECT_BOUNDARY}--\r\n").as_bytes());
    body
}

/// The POST bodies Collect sends for a form and its attachments: each one
/// the XML (as `xml_submission_file`) and the attachments that still fit
/// under `limit`, every one but the last marked `*isIncomplete*` = `yes`
/// (Collect's `InstanceServerUploader`).
fn collect_posts(xml: &[u8], attachments: &[(&str, &str, Vec<u8>)], limit: usize) -> Vec<Vec<u8>> {
    let mut posts = Vec::new();
    let mut next = 0;
    loop {
        let mut parts = vec![Part::File {
            name: "xml_submission_file",
            content_type: "text/xml",
            content: xml,
        }];
        let mut length = xml.len();
        let mut more_follow = false;
        while let Some((name, content_type, content)) = attachments.get(next) {
            if length + content.len() > limit && parts.len() > 1 {
                more_follow = true;
                break;
            }
            length += content.len();
            parts.push(Part::File {
                name,
                content_type,
                content,
            });
            next += 1;
        }
        if more_follow {
            parts.push(Part::Field {
                name: "*isIncomplete*",
                value: "yes",
            });
        }
        posts.push(collect_body(&parts));
        if !more_follow {
            return posts;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_collect_splits_over_two_posts_keeps_all_its_attachments_and_is_forwarded_once()
 {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&config(&receiver)).await;
    let client = reqwest::Client::new();
    let url = gateway.url("/a/demo/receiver");

    // Collect asks first, and learns how much one POST may carry.
    let head = request(&client, reqwest::Method::HEAD, &url, Credentials::Submitter).await;
    assert_eq!(head.status().as_u16(), 204);
    let limit: usize = head.headers()["x-openrosa-accept-content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(limit, MAX_BODY_BYTES);

    let attachments = [
        ("photo-1.jpg", "image/jpeg", photo(25_000)),
        ("photo-2.jpg", "image/jpeg", photo(20_000)),
        ("voice.amr", "audio/amr", photo(30_000)),
    ];
    let posts = collect_posts(SEED_FORM, &attachments, limit);
    assert_eq!(
        posts.len(),
        2,
        "the third attachment does not fit the first POST"
    );
    let content_type = format!("multipart/form-data; boundary={COLLECT_BOUNDARY}");
    let mut posts = posts.into_iter();

    let first = post(&client, &url, posts.next().unwrap(), &content_type).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(
        first.body,
        format!("{OPENROSA_SUCCESS}   √   </message></OpenRosaResponse>")
    );
    let settled = gateway.wait_records("demo", "", 2, "succeeded", WAIT).await;
    assert_eq!(
        settled.len(),
        2,
        "the form and its case were forwarded: {settled:?}"
    );
    let (_, case_before) = get_case(&gateway, "demo", SEED_CASE_ID).await;

    let second = post(&client, &url, posts.next().unwrap(), &content_type).await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert!(
        second.body.starts_with(OPENROSA_SUCCESS)
            && second
                .body
                .contains("1 attachment added to the form received before"),
        "{}",
        second.body
    );

    let (status, form) = get_form(&gateway, "demo", SEED_FORM_ID).await;
    assert_eq!(status, 200, "{form}");
    assert_eq!(
        form["attachments"],
        json!([
            {"name": "photo-1.jpg", "content_type": "image/jpeg", "size": 25_000},
            {"name": "photo-2.jpg", "content_type": "image/jpeg", "size": 20_000},
            {"name": "voice.amr", "content_type": "audio/amr", "size": 30_000},
        ]),
        "{form}"
    );
    assert_eq!(form["n_duplicates"], 0, "a later part is not a duplicate");
    assert_eq!(form["case_ids"], json!([SEED_CASE_ID]));

    // The last part sent again (Collect retrying it) is a duplicate.
    let last_part = collect_posts(SEED_FORM, &attachments, limit).pop().unwrap();
    let again = post(&client, &url, last_part, &content_type).await;
    assert_eq!(again.status, 201);
    assert!(again.body.contains("already received"), "{}", again.body);
    let (_, form) = get_form(&gateway, "demo", SEED_FORM_ID).await;
    assert_eq!(form["attachments"].as_array().map(Vec::len), Some(3));
    assert_eq!(form["n_duplicates"], 1);

    // Processed and forwarded once: no new records, no case change, one form
    // and one case at the remote.
    assert_eq!(gateway.records("demo", "").await, settled, "no new records");
    assert_eq!(
        get_case(&gateway, "demo", SEED_CASE_ID).await.1,
        case_before
    );
    let forms = receiver.requests("/demo/forms");
    assert_eq!(forms.len(), 1, "the form reached the remote once");
    assert_eq!(forms[0].body, SEED_FORM, "as submitted, byte for byte");
    assert_eq!(receiver.requests("/demo/cases").len(), 1);
    gateway.stop().await;
}

// ---- any encoding ----------------------------------------------------------------------

/// How one test form is written down.
struct Encoded {
    label: &'static str,
    bytes: Vec<u8>,
    /// What the case's `village` property holds.
    village: &'static str,
}

const NAME: &str = "José Müller";

/// A visit form creating case `case-{label}` named [`NAME`], whose `village`
/// is `village`, after `declaration`.
fn visit_form(declaration: &str, label: &str, village: &str) -> String {
    format!(
        r#"{declaration}<data xmlns="http://example.org/encodings">
  <n0:case xmlns:n0="http://commcarehq.org/case/transaction/v2" case_id="case-{label}" date_modified="2024-03-01T10:00:00.000000Z" user_id="u1"><n0:create><n0:case_type>patient</n0:case_type><n0:case_name>{NAME}</n0:case_name><n0:owner_id>u1</n0:owner_id></n0:create><n0:update><n0:village>{village}</n0:village></n0:update></n0:case>
  <n1:meta xmlns:n1="http://openrosa.org/jr/xforms"><n1:userID>u1</n1:userID><n1:instanceID>form-{label}</n1:instanceID></n1:meta>
</data>
"#
    )
}

/// Windows-1252 bytes of `text` (Latin-1, plus the few characters 1252 puts
/// in 0x80–0x9F that these forms use).
fn windows_1252(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            '€' => 0x80,
            '“' => 0x93,
            '”' => 0x94,
            '–' => 0x96,
            other => u8::try_from(u32::from(other)).expect("a Latin-1 character"),
        })
        .collect()
}

fn utf16(text: &str, little_endian: bool) -> Vec<u8> {
    std::iter::once(0xFEFF)
        .chain(text.encode_utf16())
        .flat_map(|unit| match little_endian {
            true => unit.to_le_bytes(),
            false => unit.to_be_bytes(),
        })
        .collect()
}

fn encoded_forms() -> Vec<Encoded> {
    const LATIN: &str = "Ça et là, Ærøskøbing";
    const WINDOWS: &str = "“Saint-Étienne” – 5 €";
    const WIDE: &str = "中文 ✓ Ærø";
    let declared = |encoding: &str| format!("<?xml version=\"1.0\" encoding=\"{encoding}\"?>\n");
    vec![
        Encoded {
            label: "utf-8",
            bytes: visit_form(&declared("UTF-8"), "utf-8", WIDE).into_bytes(),
            village: WIDE,
        },
        Encoded {
            label: "utf-8-bom",
            bytes: ["\u{FEFF}", &visit_form("", "utf-8-bom", WIDE)]
                .concat()
                .into_bytes(),
            village: WIDE,
        },
        Encoded {
            label: "utf-16le",
            bytes: utf16(&visit_form(&declared("UTF-16"), "utf-16le", WIDE), true),
            village: WIDE,
        },
        Encoded {
            label: "utf-16be",
            bytes: utf16(&visit_form(&declared("UTF-16"), "utf-16be", WIDE), false),
            village: WIDE,
        },
        Encoded {
            label: "iso-8859-1",
            bytes: windows_1252(&visit_form(&declared("ISO-8859-1"), "iso-8859-1", LATIN)),
            village: LATIN,
        },
        Encoded {
            label: "windows-1252",
            bytes: windows_1252(&visit_form(
                &declared("windows-1252"),
                "windows-1252",
                WINDOWS,
            )),
            village: WINDOWS,
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_in_any_declared_encoding_build_their_cases_and_reach_the_remote_byte_for_byte() {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&config(&receiver)).await;
    let forms = encoded_forms();
    for (n, form) in forms.iter().enumerate() {
        let label = form.label;
        // Raw, and (every other one) as OpenRosa multipart.
        let (status, body) = if n % 2 == 0 {
            gateway.submit("demo", &form.bytes, None).await
        } else {
            let (body, content_type) =
                multipart(&[("xml_submission_file", "xform.xml", "text/xml", &form.bytes)]);
            gateway
                .submit_as("demo", &body, None, ("danny", "pw"), &content_type)
                .await
        };
        assert_eq!(status, 201, "{label}: {body}");
        let (status, case) = get_case(&gateway, "demo", &format!("case-{label}")).await;
        assert_eq!(status, 200, "{label}: {case}");
        assert_eq!(case["properties"]["case_name"], NAME, "{label}");
        assert_eq!(case["properties"]["village"], form.village, "{label}");
        let (_, stored) = get_form(&gateway, "demo", &format!("form-{label}")).await;
        assert_eq!(stored["xmlns"], "http://example.org/encodings", "{label}");
    }

    let records = gateway
        .wait_records("demo", "", 2 * forms.len(), "succeeded", WAIT)
        .await;
    assert_eq!(records.len(), 2 * forms.len(), "{records:?}");
    let forwarded_forms = receiver.requests("/demo/forms");
    let forwarded_cases = receiver.requests("/demo/cases");
    for form in &forms {
        let label = form.label;
        let sent: Vec<_> = forwarded_forms
            .iter()
            .filter(|request| request.body == form.bytes)
            .collect();
        assert_eq!(
            sent.len(),
            1,
            "{label}: the remote got the exact bytes once"
        );
        assert_eq!(sent[0].header("content-type"), Some("text/xml"));
        let case = forwarded_cases
            .iter()
            .map(Received::json)
            .find(|case| case["case_id"] == format!("case-{label}"))
            .unwrap_or_else(|| panic!("{label}: the case reached the remote"));
        assert_eq!(case["properties"]["case_name"], NAME, "{label}");
        assert_eq!(case["properties"]["village"], form.village, "{label}");
    }
    assert_eq!(forwarded_forms.len(), forms.len());
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_in_an_unknown_encoding_is_refused_by_name_and_leaves_no_trace() {
    let receiver = Receiver::start().await;
    let gateway = Gateway::start(&config(&receiver)).await;
    let klingon = visit_form(
        "<?xml version=\"1.0\" encoding=\"klingon\"?>\n",
        "klingon",
        "Qo'noS",
    );
    let (status, body) = gateway.submit("demo", klingon.as_bytes(), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with(OPENROSA_ERROR), "{body}");
    assert!(
        body.contains("unknown XML encoding &quot;klingon&quot;"),
        "the message names the encoding: {body}"
    );
    assert_eq!(get_form(&gateway, "demo", "form-klingon").await.0, 404);
    assert_eq!(get_case(&gateway, "demo", "case-klingon").await.0, 404);
    assert_eq!(gateway.records("demo", "").await, Vec::<Value>::new());
    gateway.stop().await;
}
