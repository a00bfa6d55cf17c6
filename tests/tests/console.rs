//! The operator console in a real browser (headless Chromium over
//! WebDriver), against the real gateway and a real remote on loopback, used
//! as an operator would: sign in, read the counts, follow a failed record to
//! the remote's answer, resend it, bulk-requeue after confirming, pause and
//! resume, test a connection, sign out. Plus the refusals: another project
//! space's pages are 404 like one that does not exist, a POST without the
//! anti-forgery token changes nothing, and what remotes and submitters wrote
//! is shown as text with no script run.
//!
//! The run leaves PNG screenshots of Data Forwarding, Repeat Records and a
//! record's page in `target/console-screenshots/` (the README shows copies
//! kept in `docs/console/`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use repeatd_tests::browser::Browser;
use repeatd_tests::remote::{Remote, Reply};
use repeatd_tests::{ADMIN_TOKEN, Gateway, demo_config, eventually, repeater};

/// What the failing remote answers: markup that would run if a page let it.
const HOSTILE: &str = "<img src=x onerror=alert(1)><script>document.title='pwned'</script>";
/// A value a submitter typed that is markup too.
const HTML_VALUE: &str = "<b>bold</b><script>document.title='pwned-form'</script>";
const WAIT: Duration = Duration::from_secs(20);

fn screenshot_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/console-screenshots")
        .join(name)
}

/// A form creating one case whose name is `HTML_VALUE` (escaped as XML).
fn form_with_html(form_id: &str, case_id: &str) -> Vec<u8> {
    let escaped = HTML_VALUE
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        r#"<?xml version='1.0' ?>
<data xmlns="http://openrosa.org/formdesigner/console" name="Visit">
  <note>{escaped}</note>
  <n0:case case_id="{case_id}" date_modified="2024-01-01T10:00:00.000000Z" user_id="u1" xmlns:n0="http://commcarehq.org/case/transaction/v2"><n0:create><n0:case_name>{escaped}</n0:case_name><n0:owner_id>u1</n0:owner_id><n0:case_type>patient</n0:case_type></n0:create></n0:case>
  <n1:meta xmlns:n1="http://openrosa.org/jr/xforms"><n1:userID>u1</n1:userID><n1:username>danny</n1:username><n1:instanceID>{form_id}</n1:instanceID></n1:meta>
</data>"#
    )
    .into_bytes()
}

/// A remote that fails with `HOSTILE` until it is told to be healthy, and
/// answers a connection test's GET.
async fn flaky_remote() -> (Remote, Arc<AtomicBool>) {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let remote = Remote::start(move |request| {
        if request.method == "GET" {
            Reply::status(200).body("remote is up")
        } else if flag.load(Ordering::SeqCst) {
            Reply::ok()
        } else {
            Reply::status(500)
                .header("content-type", "text/html")
                .body(HOSTILE)
        }
    })
    .await;
    (remote, healthy)
}

fn config(remote: &Remote) -> String {
    // Retries an hour apart: a failed record stays failed until an operator acts.
    let retry = "retry = { max_attempts = 5, min_wait = \"1h\", factor = 2.0, max_wait = \"2h\" }";
    let url = format!("http://{}/receiver", remote.addr);
    demo_config(
        &[("remote", &url)],
        &format!(
            "{}{}",
            repeater("forms", "form", "remote", "form-xml", retry),
            repeater("cases", "case", "remote", "case-json", retry)
        ),
    )
}

async fn sign_in(browser: &Browser, base: &str, token: &str) {
    browser.open(&format!("{base}/console/")).await;
    assert!(
        browser.url().await.ends_with("/console/sign-in"),
        "{}",
        browser.url().await
    );
    browser
        .find("input#token")
        .await
        .send_keys(token)
        .await
        .unwrap();
    browser.click("button.primary").await;
    eventually("the console after sign-in", WAIT, || async {
        let url = browser.url().await;
        if url.ends_with("/sign-in") {
            Err(url)
        } else {
            Ok(())
        }
    })
    .await;
}

/// Reloads the page until the text at `css` is `wanted`.
async fn wait_text(browser: &Browser, css: &str, wanted: &str) {
    eventually(&format!("{css} to read {wanted:?}"), WAIT, || async {
        browser.client.refresh().await.expect("reload");
        let text = browser.text(css).await;
        if text == wanted { Ok(()) } else { Err(text) }
    })
    .await;
}

/// An HTTP client that shows redirects instead of following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

/// `GET url` with the session cookie `cookie`.
async fn get_as(http: &reqwest::Client, url: &str, cookie: &str) -> reqwest::Response {
    http.get(url).header("cookie", cookie).send().await.unwrap()
}

/// Waits until the page's notice (what the last change did) contains
/// `wanted`: a click answers before the page it leads to has loaded.
async fn notice_reads(browser: &Browser, wanted: &str) {
    eventually(&format!("a notice with {wanted:?}"), WAIT, || async {
        let notices = browser
            .client
            .find_all(fantoccini::Locator::Css("p.notice"))
            .await
            .map_err(|e| e.to_string())?;
        let mut seen = String::new();
        for notice in notices {
            seen = notice.text().await.unwrap_or_default();
            if seen.contains(wanted) {
                return Ok(());
            }
        }
        Err(seen)
    })
    .await;
}

/// No script of a page ran: the title is the console's and no alert opened.
async fn assert_no_script_ran(browser: &Browser) {
    let (title, alert) = browser.title_and_alert().await;
    assert!(title.ends_with("· repeatd"), "the title changed: {title:?}");
    assert_eq!(alert, None, "an alert opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_follows_failed_records_to_their_fix() {
    let (remote, healthy) = flaky_remote().await;
    let gateway = Gateway::start(&config(&remote)).await;
    let base = format!("http://{}", gateway.addr);
    for n in 1..=3 {
        let (status, answer) = gateway
            .submit(
                "demo",
                &form_with_html(&format!("form-{n}"), &format!("case-{n}")),
                None,
            )
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    let browser = Browser::start().await;
    sign_in(&browser, &base, ADMIN_TOKEN).await;
    browser.click("ul.spaces-list a").await;
    assert!(browser.url().await.ends_with("/console/d/demo/forwarding"));

    // The counts: every record failed once.
    wait_text(&browser, "a[aria-label='forms failed']", "3").await;
    wait_text(&browser, "a[aria-label='cases failed']", "3").await;
    assert_eq!(browser.text("a[aria-label='forms succeeded']").await, "0");
    browser
        .screenshot(&screenshot_path("data-forwarding.png"))
        .await;

    // A count opens the records behind it.
    browser.click("a[aria-label='forms failed']").await;
    let url = browser.url().await;
    assert!(
        url.contains("repeater=forms") && url.contains("state=failed"),
        "{url}"
    );
    let rows = browser
        .client
        .find_all(fantoccini::Locator::Css("table.records tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let text = row.text().await.unwrap();
        assert!(text.contains("failed") && text.contains("forms"), "{text}");
    }
    let last_error = browser.text("table.records td.error-text").await;
    assert!(
        last_error.contains("<script>document.title='pwned'</script>"),
        "the remote's answer shows as text: {last_error}"
    );
    assert_no_script_ran(&browser).await;

    // A failed record's page shows the remote's answer as it came, as text.
    browser
        .click("table.records tbody tr:last-child td.mono a")
        .await;
    assert_eq!(browser.text("section.attempt pre.body").await, HOSTILE);
    assert!(
        browser
            .text("section.attempt h3")
            .await
            .contains("HTTP 500")
    );
    let preview = browser.text("main > pre.body").await;
    assert!(
        preview.contains("<n1:instanceID>form-1</n1:instanceID>"),
        "the payload as it would be sent: {preview}"
    );
    assert_no_script_ran(&browser).await;
    let record_page = browser.url().await;

    // Resend after the remote is fixed: it succeeds.
    healthy.store(true, Ordering::SeqCst);
    browser.click("form.actions button[value$=' resend']").await;
    notice_reads(&browser, "resent").await;
    browser.open(&record_page).await;
    wait_text(&browser, "dl.facts .state", "succeeded").await;
    let attempts = browser
        .client
        .find_all(fantoccini::Locator::Css("section.attempt"))
        .await
        .unwrap();
    assert_eq!(attempts.len(), 2, "both attempts are kept");
    assert!(
        browser
            .text("section.attempt h3")
            .await
            .contains("HTTP 200"),
        "the newest first"
    );
    browser.screenshot(&screenshot_path("record.png")).await;
    browser
        .open(&format!("{base}/console/d/demo/records"))
        .await;
    browser
        .screenshot(&screenshot_path("repeat-records.png"))
        .await;

    // A case record's payload is JSON, pretty-printed; the submitter's markup is text.
    browser
        .open(&format!("{base}/console/d/demo/records?repeater=cases"))
        .await;
    browser.click("table.records tbody tr td.mono a").await;
    let preview = browser.text("main > pre.body").await;
    assert!(
        preview.contains(&format!("\"case_name\": \"{HTML_VALUE}\"")),
        "{preview}"
    );
    assert_no_script_ran(&browser).await;

    // Bulk requeue of every failed record, after a confirmation with the count.
    browser
        .open(&format!("{base}/console/d/demo/records?state=failed"))
        .await;
    browser.click(".bulk a[href$='action=requeue']").await;
    assert_eq!(browser.text("strong.count").await, "5 record(s)");
    browser.click("form button.primary").await;
    notice_reads(&browser, "Requeue 5 record(s)").await;
    browser
        .open(&format!("{base}/console/d/demo/forwarding"))
        .await;
    wait_text(&browser, "a[aria-label='cases succeeded']", "3").await;
    wait_text(&browser, "a[aria-label='forms succeeded']", "3").await;
    assert_eq!(browser.text("a[aria-label='forms failed']").await, "0");
    assert_eq!(remote.requests("/receiver").len(), 6 + 1 + 5);

    // Pause and resume.
    browser
        .click("form[action$='/repeaters/forms/pause'] button")
        .await;
    notice_reads(&browser, "forms paused").await;
    assert_eq!(
        gateway.get("/api/v1/domains/demo/repeaters/forms").await.1["paused"],
        true
    );
    browser.find("span.badge.paused").await;
    browser
        .click("form[action$='/repeaters/forms/resume'] button")
        .await;
    notice_reads(&browser, "forms resumed").await;
    assert_eq!(
        gateway.get("/api/v1/domains/demo/repeaters/forms").await.1["paused"],
        false
    );
    assert!(
        browser
            .client
            .find(fantoccini::Locator::Css("span.badge.paused"))
            .await
            .is_err()
    );

    // Test connection: one request, its status and the start of the answer.
    browser
        .open(&format!("{base}/console/d/demo/connections"))
        .await;
    assert!(
        browser
            .text("table.connections tbody tr")
            .await
            .contains("cases, forms")
    );
    browser
        .click("form[action$='/connections/remote/test'] button")
        .await;
    assert!(browser.text("p.test-result").await.contains("HTTP 200"));
    assert_eq!(browser.text("main pre.body").await, "remote is up");

    // Sign out: the old session is over on the server.
    let cookie = browser
        .client
        .get_named_cookie("repeatd_console")
        .await
        .unwrap();
    let old_session = format!("repeatd_console={}", cookie.value());
    browser.click("form.sign-out button").await;
    assert!(browser.url().await.ends_with("/console/sign-in"));
    let http = no_redirects();
    let answer = get_as(
        &http,
        &format!("{base}/console/d/demo/forwarding"),
        &old_session,
    )
    .await;
    assert_eq!(answer.status(), 303);
    assert_eq!(answer.headers()["location"], "/console/sign-in");
    browser.close().await;
    gateway.stop().await;
}

/// Replaces the editor's JSON with `json` and saves it.
async fn save_in_editor(browser: &Browser, json: &str) {
    let editor = browser.find("form.editor textarea").await;
    editor.clear().await.unwrap();
    editor.send_keys(json).await.unwrap();
    browser.click("form.editor button.primary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_edits_connections_and_repeaters_and_reads_the_overview() {
    let (remote, healthy) = flaky_remote().await;
    healthy.store(true, Ordering::SeqCst);
    let gateway = Gateway::start(&config(&remote)).await;
    let base = format!("http://{}", gateway.addr);
    let browser = Browser::start().await;
    sign_in(&browser, &base, ADMIN_TOKEN).await;

    // A new connection with a password.
    browser
        .open(&format!("{base}/console/d/demo/connections"))
        .await;
    browser.click("a.button-link.primary").await;
    let url = format!("http://{}/vault", remote.addr);
    save_in_editor(
        &browser,
        &format!(r#"{{"name": "vault", "url": "{url}", "auth": {{"type": "basic", "username": "ann", "password": "s3cret"}}}}"#),
    )
    .await;
    notice_reads(&browser, "Saved the connection.").await;
    let row = browser.text("table.connections tbody tr:last-child").await;
    assert!(
        row.contains("vault") && row.contains("basic") && row.contains("no repeater"),
        "{row}"
    );

    // Its editor masks the password; saving it unchanged keeps it.
    browser
        .click("a[href$='edit/connections?name=vault']")
        .await;
    let shown = browser
        .find("form.editor textarea")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap();
    assert!(
        shown.contains("********") && !shown.contains("s3cret"),
        "{shown}"
    );
    save_in_editor(&browser, &shown.replace("/vault", "/vault2")).await;
    browser
        .click("form[action$='/connections/vault/test'] button")
        .await;
    assert!(browser.text("p.test-result").await.contains("HTTP 200"));
    let test = remote.requests("/vault2");
    assert_eq!(test.len(), 1, "one request");
    let expected = format!("Basic {}", base64_of("ann:s3cret"));
    assert_eq!(
        test[0].header("authorization"),
        Some(expected.as_str()),
        "the stored password was kept"
    );

    // A repeater with filters, refused first for a format that is not loaded.
    browser
        .open(&format!("{base}/console/d/demo/forwarding"))
        .await;
    browser.click("a.button-link.primary").await;
    let audit = r#"{"name": "audit", "kind": "case", "connection": "vault", "format": "nope", "case_types": ["patient"], "case_events": "create", "max_workers": 2}"#;
    save_in_editor(&browser, audit).await;
    assert_eq!(
        browser.text("p.error").await,
        "format: no payload format plugin \"nope\" is loaded"
    );
    save_in_editor(&browser, &audit.replace("\"nope\"", "\"case-json\"")).await;
    notice_reads(&browser, "Saved the repeater.").await;
    let (_, saved) = gateway.get("/api/v1/domains/demo/repeaters/audit").await;
    assert_eq!(saved["case_types"], serde_json::json!(["patient"]));
    assert_eq!(saved["case_events"], "create");
    assert_eq!(saved["max_workers"], 2);

    // A connection in use is not deleted; once its repeater is gone, it is.
    browser
        .open(&format!("{base}/console/d/demo/delete/connections/vault"))
        .await;
    browser.click("form button.danger").await;
    notice_reads(&browser, "Not deleted: connection \"vault\" is used by repeater \"audit\"; change those repeaters first.").await;
    browser
        .open(&format!("{base}/console/d/demo/forwarding"))
        .await;
    browser.click("a[href$='delete/repeaters/audit']").await;
    browser.click("form button.danger").await;
    notice_reads(&browser, "Deleted audit; 0 queued record(s) cancelled.").await;
    browser
        .open(&format!("{base}/console/d/demo/delete/connections/vault"))
        .await;
    browser.click("form button.danger").await;
    notice_reads(&browser, "Deleted vault.").await;

    // The Overview counts this hour's deliveries: one form, two repeaters.
    let (status, answer) = gateway
        .submit("demo", &form_with_html("form-o", "case-o"), None)
        .await;
    assert_eq!(status, 201, "{answer}");
    browser.open(&format!("{base}/console/d/demo/")).await;
    wait_text(&browser, "figure.chart-deliveries strong.figure", "2").await;
    assert_eq!(
        browser.text("figure.chart-failures strong.figure").await,
        "0"
    );
    assert_eq!(
        browser
            .client
            .find_all(fantoccini::Locator::Css("figure.chart svg"))
            .await
            .unwrap()
            .len(),
        3
    );
    browser.close().await;
    gateway.stop().await;
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

const DEMO_TOKEN: &str = "demo-token-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_token_sees_only_its_own_project_space() {
    let (remote, _) = flaky_remote().await;
    let text = format!(
        "{}\n[[domains]]\nname = \"other\"\n\n[[api_tokens]]\ndomain = \"demo\"\ntoken = \"{DEMO_TOKEN}\"\n",
        config(&remote)
    );
    let gateway = Gateway::start(&text).await;
    let base = format!("http://{}", gateway.addr);
    let browser = Browser::start().await;
    sign_in(&browser, &base, DEMO_TOKEN).await;
    assert!(
        browser.url().await.ends_with("/console/d/demo/forwarding"),
        "{}",
        browser.url().await
    );
    assert!(browser.text("table.forwarding").await.contains("forms"));
    for (domain, page) in [
        ("other", "forwarding"),
        ("other", "records"),
        ("nowhere", "forwarding"),
    ] {
        browser
            .open(&format!("{base}/console/d/{domain}/{page}"))
            .await;
        assert_eq!(
            browser.text("p.error").await,
            format!("no project space \"{domain}\"")
        );
        assert_eq!(browser.client.title().await.unwrap(), "404 · repeatd");
    }
    browser.open(&format!("{base}/console/plugins")).await;
    assert_eq!(browser.client.title().await.unwrap(), "404 · repeatd");
    browser.close().await;

    // The admin sees both, and the plugins.
    let browser = Browser::start().await;
    sign_in(&browser, &base, ADMIN_TOKEN).await;
    assert_eq!(
        browser
            .client
            .find_all(fantoccini::Locator::Css("ul.spaces-list a"))
            .await
            .unwrap()
            .len(),
        2
    );
    browser.open(&format!("{base}/console/plugins")).await;
    assert!(browser.text("table.plugins").await.contains("form-xml"));
    browser.close().await;
    gateway.stop().await;
}

/// Signs in over plain HTTP; returns the session cookie and the page's
/// anti-forgery token.
async fn http_session(http: &reqwest::Client, base: &str, token: &str) -> (String, String) {
    let answer = http
        .post(format!("{base}/console/sign-in"))
        .form(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303);
    let set_cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/console", "Max-Age="] {
        assert!(set_cookie.contains(part), "{set_cookie} lacks {part}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_owned();
    let page = get_as(http, &format!("{base}/console/d/demo/forwarding"), &cookie).await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let marker = "name=\"csrf\" value=\"";
    let start = html
        .find(marker)
        .expect("a form with the anti-forgery token")
        + marker.len();
    let csrf = html[start..].split('"').next().unwrap().to_owned();
    (cookie, csrf)
}

#[tokio::test]
async fn a_post_without_the_anti_forgery_token_changes_nothing() {
    let (remote, _) = flaky_remote().await;
    let gateway = Gateway::start(&config(&remote)).await;
    let base = format!("http://{}", gateway.addr);
    let http = no_redirects();
    let (cookie, csrf) = http_session(&http, &base, ADMIN_TOKEN).await;
    let pause = format!("{base}/console/d/demo/repeaters/forms/pause");
    for form in [vec![], vec![("csrf", "0123456789abcdef")]] {
        let answer = http
            .post(&pause)
            .header("cookie", &cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 403);
        assert!(answer.text().await.unwrap().contains("nothing was changed"));
        assert_eq!(
            gateway.get("/api/v1/domains/demo/repeaters/forms").await.1["paused"],
            false
        );
    }
    let answer = http
        .post(&pause)
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 303, "the session's own token is taken");
    assert_eq!(
        gateway.get("/api/v1/domains/demo/repeaters/forms").await.1["paused"],
        true
    );

    // Every page says: no inline script, no framing, no sniffing.
    for path in [
        "/console/sign-in",
        "/console/d/demo/forwarding",
        "/console/d/demo/records",
    ] {
        let answer = get_as(&http, &format!("{base}{path}"), &cookie).await;
        let headers = answer.headers();
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(
            !policy.contains("unsafe-inline") && policy.contains("default-src 'none'"),
            "{policy}"
        );
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }

    // A wrong token is refused with the sign-in page again.
    let answer = http
        .post(format!("{base}/console/sign-in"))
        .form(&[("token", "guess")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    assert!(answer.headers().get("set-cookie").is_none());
    gateway.stop().await;
}

/// The page-speed benchmark of BENCHMARKS.md ("Console pages with 1,000,000
/// queued records"): fills a store through the real ingest path (250,000
/// forms, four paused repeaters: four records each), then times each page
/// over loopback, the median of 21 loads. Prints the figures; asserts only
/// that every page answered 200.
///
/// `cargo test -p repeatd-tests --test console -- --ignored --nocapture console_pages_with_a_million_queued_records`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes of filling; run by hand for BENCHMARKS.md"]
async fn console_pages_with_a_million_queued_records() {
    const FORMS: usize = 250_000;
    const IN_FLIGHT: usize = 32;
    let repeaters: String = (0..4)
        .map(|n| {
            repeater(
                &format!("r{n}"),
                "form",
                "remote",
                "form-xml",
                "paused = true",
            )
        })
        .collect();
    let gateway = Gateway::start(&demo_config(
        &[("remote", "http://127.0.0.1:9/")],
        &repeaters,
    ))
    .await;
    let base = format!("http://{}", gateway.addr);
    // A few of the oldest records fail (r0 tries each once, against a port
    // that refuses, and waits before trying again), so that `failed` is a
    // state only old records are in.
    for n in 0..3 {
        let xml = repeatd_tests::generated_form(
            &format!("early-form-{n}"),
            &format!("early-case-{n}"),
            "patient",
        );
        let (status, answer) = gateway.submit("demo", &xml, None).await;
        assert_eq!(status, 201, "{answer}");
    }
    let resume = "/api/v1/domains/demo/repeaters/r0/resume";
    let (status, answer) = gateway.api("POST", resume, None).await;
    assert_eq!(status, 200, "{answer}");
    let failed = gateway
        .wait_records("demo", "repeater=r0", 3, "failed", WAIT)
        .await;
    assert_eq!(failed.len(), 3, "r0's first records fail: {failed:?}");
    let pause = "/api/v1/domains/demo/repeaters/r0/pause";
    let (status, answer) = gateway.api("POST", pause, None).await;
    assert_eq!(status, 200, "{answer}");
    let started = std::time::Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let client = repeatd_tests::Client::new(gateway.addr);
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= FORMS {
                    return;
                }
                let xml = repeatd_tests::generated_form(
                    &format!("bench-form-{n}"),
                    &format!("bench-case-{n}"),
                    "patient",
                );
                let (status, answer) = client.submit("demo", &xml, None).await;
                assert_eq!(status, 201, "{answer}");
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!(
        "filled {} records in {:.1} s",
        FORMS * 4,
        started.elapsed().as_secs_f64()
    );
    let http = no_redirects();
    let (cookie, _) = http_session(&http, &base, ADMIN_TOKEN).await;
    let (_, first) = gateway.get("/api/v1/domains/demo/records?limit=1").await;
    let record_id = first["records"][0]["id"].as_str().unwrap().to_owned();
    let pages = [
        (
            "Data Forwarding (counts)",
            "/console/d/demo/forwarding".to_owned(),
        ),
        (
            "Repeat Records, first page",
            "/console/d/demo/records".to_owned(),
        ),
        (
            "Repeat Records, state=pending",
            "/console/d/demo/records?state=pending".to_owned(),
        ),
        (
            "Repeat Records, repeater+state",
            "/console/d/demo/records?repeater=r2&state=pending".to_owned(),
        ),
        (
            "Repeat Records, payload id",
            "/console/d/demo/records?payload_id=bench-form-1234".to_owned(),
        ),
        (
            "bulk confirmation (count)",
            "/console/d/demo/records/bulk?action=requeue&state=pending".to_owned(),
        ),
        (
            "a record's page",
            format!("/console/d/demo/records/{record_id}"),
        ),
        ("Overview", "/console/d/demo/".to_owned()),
        (
            "Repeat Records, state=cancelled (none)",
            "/console/d/demo/records?state=cancelled".to_owned(),
        ),
        (
            "Repeat Records, state=failed (3 old records)",
            "/console/d/demo/records?state=failed".to_owned(),
        ),
        (
            "Repeat Records, repeater+state=failed (3 old records)",
            "/console/d/demo/records?repeater=r0&state=failed".to_owned(),
        ),
    ];
    for (label, path) in pages {
        let mut times = Vec::new();
        for _ in 0..21 {
            let at = std::time::Instant::now();
            let answer = get_as(&http, &format!("{base}{path}"), &cookie).await;
            assert_eq!(answer.status(), 200, "{path}");
            answer.bytes().await.unwrap();
            times.push(at.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{label}: median {:.2} ms (min {:.2}, max {:.2})",
            times[10], times[0], times[20]
        );
    }
    gateway.stop().await;
}
