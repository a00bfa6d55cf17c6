//! Error e-mails (SPEC section 7) through a real SMTP server on loopback
//! (aiosmtpd, run by `tests/smtp_sink.py`): who gets them, what they say, how
//! often, and that they are neither lost while the SMTP server is down nor
//! across a restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use repeatd_tests::smtp::{Mail, SmtpSink, free_port};
use repeatd_tests::*;

const WAIT: Duration = Duration::from_secs(20);
const FROM: &str = "repeatd <repeatd@localhost>";

// ---- configs ------------------------------------------------------------------------

fn smtp_section(port: u16, quiet_period: &str) -> String {
    format!(
        "\n[smtp]\nurl = \"smtp://127.0.0.1:{port}\"\nfrom = \"{FROM}\"\nquiet_period = \"{quiet_period}\"\n"
    )
}

fn connection(name: &str, url: &str, notify: &[&str]) -> String {
    let notify: Vec<String> = notify
        .iter()
        .map(|address| format!("\"{address}\""))
        .collect();
    format!(
        "\n[[connections]]\ndomain = \"demo\"\nname = \"{name}\"\nurl = \"{url}\"\nnotify = [{}]\nauth = {{ type = \"none\" }}\n",
        notify.join(", ")
    )
}

/// `[smtp]`, domain "demo" with submitter danny:pw, the connections and the
/// repeaters.
fn config(smtp: &str, connections: &[String], repeaters: &str) -> String {
    format!(
        "{smtp}\n[[domains]]\nname = \"demo\"\n\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n{}\n{repeaters}",
        connections.concat()
    )
}

/// Checks that exactly one e-mail came, to ops@example.org, saying that
/// connection "receiver" is failing.
fn assert_one_failing_mail(mails: &[Mail]) {
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(mails[0].rcpt_tos, ["ops@example.org"]);
    assert_eq!(
        mails[0].subject,
        "[repeatd] project space \"demo\": connection \"receiver\" is failing"
    );
}

/// Forms to `receiver/in` (connection "receiver", which notifies
/// ops@example.org) with one attempt each; SMTP on `smtp_port`, 15 minutes
/// quiet.
fn one_attempt_to(receiver: &Receiver, smtp_port: u16) -> String {
    config(
        &smtp_section(smtp_port, "15m"),
        &[connection(
            "receiver",
            &receiver.url("/in"),
            &["ops@example.org"],
        )],
        &repeater("forms", "form", "receiver", "form-xml", &fast_retry(1)),
    )
}

/// Retries fast; `max_attempts` attempts in all.
fn fast_retry(max_attempts: u32) -> String {
    format!(
        "retry = {{ max_attempts = {max_attempts}, min_wait = \"10ms\", factor = 1.0, max_wait = \"10ms\" }}"
    )
}

fn why_line(connection: &str) -> String {
    format!(
        "Why you get this: you are listed in notify of connection \"{connection}\" of project space \"demo\"."
    )
}

fn stop_line(connection: &str) -> String {
    format!(
        "How to stop: remove your address from the notify list of connection \"{connection}\", with the admin API (PUT /api/v1/domains/demo/connections/{connection}) or in its [[connections]] entry of the repeatd config file."
    )
}

/// How many failed attempts an e-mail reports, from its subject.
fn failures_in(mail: &Mail) -> u64 {
    if mail.subject.ends_with(" is failing") {
        return 1;
    }
    let count = mail
        .subject
        .rsplit_once('(')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok());
    count.unwrap_or_else(|| panic!("no failure count in subject {:?}", mail.subject))
}

// ---- the tests ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_emails_each_contact_with_every_required_line() {
    let smtp = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Status(503)]);
    let unreachable = format!("http://127.0.0.1:{}/cases", free_port());
    let repeaters = format!(
        "{}{}",
        repeater("forms", "form", "receiver", "form-xml", &fast_retry(1)),
        repeater("cases", "case", "case-remote", "case-json", &fast_retry(1)),
    );
    let gateway = Gateway::start(&config(
        &smtp_section(smtp.port, "15m"),
        &[
            connection(
                "receiver",
                &receiver.url("/in"),
                &["ops@example.org", "dev@example.org"],
            ),
            connection("case-remote", &unreachable, &["cases@example.org"]),
        ],
        &repeaters,
    ))
    .await;
    let (status, body) = gateway.submit("demo", SEED_FORM, Some(SEED_APP_ID)).await;
    assert_eq!(status, 201, "{body}");

    let mails = smtp.wait_mails(3, WAIT).await;
    assert_eq!(mails.len(), 3, "one e-mail per address: {mails:#?}");
    let to = |address: &str| {
        mails
            .iter()
            .find(|mail| mail.rcpt_tos == [address])
            .unwrap_or_else(|| panic!("no e-mail to {address}: {mails:#?}"))
    };

    // The form's remote answered 503.
    let forms = gateway
        .wait_records("demo", "repeater=forms", 1, "cancelled", WAIT)
        .await;
    let form_record_id = forms[0]["id"].as_str().unwrap().to_owned();
    let attempt = &gateway.record("demo", &form_record_id).await["attempts"][0];
    for address in ["ops@example.org", "dev@example.org"] {
        let mail = to(address);
        assert_eq!(mail.mail_from, "repeatd@localhost");
        assert_eq!(mail.header("From"), Some(FROM));
        assert_eq!(
            mail.header("To"),
            Some(address),
            "each contact gets an e-mail of their own"
        );
        assert_eq!(mail.header("Auto-Submitted"), Some("auto-generated"));
        assert!(
            mail.header("Message-ID").is_some() && mail.header("Date").is_some(),
            "{:?}",
            mail.headers
        );
        assert_eq!(mail.content_type, "text/plain");
        assert_eq!(
            mail.subject,
            "[repeatd] project space \"demo\": connection \"receiver\" is failing"
        );
        assert_eq!(
            mail.lines()[0],
            "repeatd could not forward data from project space \"demo\" to connection \"receiver\"."
        );
        mail.assert_line("Error (as the remote gave it):");
        mail.assert_line("    remote answered 503: remote says no: error 503");
        mail.assert_line("Project space: demo");
        mail.assert_line("Connection:    receiver");
        mail.assert_line(&format!(
            "URL:           {}?app_id={SEED_APP_ID}",
            receiver.url("/in")
        ));
        mail.assert_line(&format!("Form id:       {SEED_FORM_ID}"));
        mail.assert_line(&format!("Record id:     {form_record_id}"));
        mail.assert_line("Repeater:      forms");
        mail.assert_line(&format!(
            "When:          {}",
            attempt["at"].as_str().unwrap()
        ));
        mail.assert_line(&why_line("receiver"));
        mail.assert_line(&stop_line("receiver"));
        mail.assert_line(
            "You get at most one e-mail about this connection every 15m; the next one summarises what happened in between.",
        );
    }

    // The case's remote refused the connection: the network error, the case id.
    let cases = gateway
        .wait_records("demo", "repeater=cases", 1, "cancelled", WAIT)
        .await;
    let case_record_id = cases[0]["id"].as_str().unwrap();
    let case_attempt = &gateway.record("demo", case_record_id).await["attempts"][0];
    let mail = to("cases@example.org");
    assert_eq!(
        mail.subject,
        "[repeatd] project space \"demo\": connection \"case-remote\" is failing"
    );
    let error = mail.lines()[mail
        .lines()
        .iter()
        .position(|l| *l == "Error (as the remote gave it):")
        .unwrap()
        + 1]
    .trim();
    assert_eq!(
        error,
        case_attempt["error"].as_str().unwrap(),
        "the network error as the attempt recorded it"
    );
    assert!(!error.is_empty());
    mail.assert_line(&format!("URL:           {unreachable}"));
    mail.assert_line(&format!("Case id:       {SEED_CASE_ID}"));
    mail.assert_line(&format!("Record id:     {case_record_id}"));
    mail.assert_line("Repeater:      cases");
    mail.assert_line(&why_line("case-remote"));
    mail.assert_line(&stop_line("case-remote"));
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_50_failures_yields_one_email_then_one_summary() {
    const FORMS: usize = 10;
    const ATTEMPTS: u64 = 5;
    const QUIET: f64 = 4.0;
    let smtp = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Status(500)]);
    let gateway = Gateway::start(&config(
        &smtp_section(smtp.port, "4s"),
        &[connection(
            "receiver",
            &receiver.url("/in"),
            &["ops@example.org"],
        )],
        &repeater(
            "forms",
            "form",
            "receiver",
            "form-xml",
            &fast_retry(ATTEMPTS as u32),
        ),
    ))
    .await;
    let started = Instant::now();
    for n in 0..FORMS {
        let xml = generated_form(&format!("outage-{n}"), &format!("case-{n}"), "visit");
        assert_eq!(gateway.submit("demo", &xml, None).await.0, 201);
    }
    let records = gateway
        .wait_records("demo", "", FORMS, "cancelled", WAIT)
        .await;
    assert!(
        records
            .iter()
            .all(|r| r["state"] == "cancelled" && r["n_attempts"] == ATTEMPTS),
        "{records:#?}"
    );
    assert_eq!(receiver.requests("/in").len(), FORMS * ATTEMPTS as usize);
    let outage = started.elapsed();
    assert!(
        outage.as_secs_f64() < QUIET - 0.5,
        "the 50 failures must fall within one quiet period for this test to mean anything ({outage:?})"
    );

    let mails = smtp.wait_mails(2, WAIT).await;
    assert_eq!(mails.len(), 2, "{mails:#?}");
    let (first, summary) = (&mails[0], &mails[1]);
    assert!(
        first
            .subject
            .starts_with("[repeatd] project space \"demo\": connection \"receiver\" is failing"),
        "{}",
        first.subject
    );
    // That the summary waits for the quiet period (and no longer) is checked
    // in virtual time by the_summary_waits_exactly_one_quiet_period_….
    let n_first = failures_in(first);
    let n_summary = failures_in(summary);
    assert_eq!(
        n_first + n_summary,
        FORMS as u64 * ATTEMPTS,
        "every failure is told once"
    );
    assert_eq!(
        summary.subject,
        format!(
            "[repeatd] project space \"demo\": connection \"receiver\" is still failing ({n_summary} failed attempts since the last e-mail)"
        )
    );
    assert!(
        summary.lines()[0].contains(&format!(
            "{n_summary} failed attempts since the last e-mail"
        )),
        "{}",
        summary.body
    );
    // Which records: each cancelled record that failed after the first e-mail.
    let listed: Vec<&str> = summary
        .lines()
        .into_iter()
        .filter_map(|line| line.strip_prefix("  - record "))
        .collect();
    assert!(
        listed.len() >= FORMS - 1 && listed.len() <= FORMS,
        "{}",
        summary.body
    );
    for line in &listed {
        let id = line.split_whitespace().next().unwrap();
        let record = records
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("unknown record {id}"));
        assert!(
            line.contains(&format!(
                "(form {}, repeater \"forms\")",
                record["payload_id"].as_str().unwrap()
            )),
            "{line}"
        );
    }
    let attempts_listed: u64 = listed
        .iter()
        .map(|line| {
            let count = line
                .split("): ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap();
            count.parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!(attempts_listed, n_summary, "{}", summary.body);
    summary.assert_line("    remote answered 500: remote says no: error 500");
    assert!(
        summary
            .lines()
            .iter()
            .any(|line| line.starts_with("Status: still failing")),
        "{}",
        summary.body
    );
    summary.assert_line(&why_line("receiver"));
    summary.assert_line(&stop_line("receiver"));

    // That nothing more is sent after it is checked in virtual time by
    // the_summary_waits_exactly_one_quiet_period_and_nothing_follows_it.
    gateway.stop().await;
}

/// A gateway on a clock in frozen virtual time (see
/// `repeatd_tests::virtual_time`), e-mailing to `smtp` with the default
/// quiet period of 15 minutes about connection "receiver", whose remote
/// answers `answers` in turn; repeater "forms" retries with `retry`.
async fn gateway_in_virtual_time(
    smtp: &SmtpSink,
    answers: Vec<Answer>,
    retry: &str,
) -> (
    repeatd_tests::virtual_time::FrozenTime,
    repeatd::clock::Clock,
    Receiver,
    Gateway,
) {
    tokio::time::pause();
    let frozen = repeatd_tests::virtual_time::freeze_time();
    let clock = repeatd::clock::Clock::starting_at(repeatd_tests::virtual_time::START);
    let receiver = Receiver::start().await;
    receiver.plan("/in", answers);
    let gateway = Gateway::start_with_clock(
        &config(
            &smtp_section(smtp.port, "15m"),
            &[connection(
                "receiver",
                &receiver.url("/in"),
                &["ops@example.org"],
            )],
            &repeater("forms", "form", "receiver", "form-xml", retry),
        ),
        clock,
    )
    .await;
    (frozen, clock, receiver, gateway)
}

/// When the gateway recorded its e-mail about connection "receiver" as sent
/// (where the quiet period starts), waiting until it has: the SMTP server
/// has the e-mail a moment before the gateway hears back, and time must not
/// move in between.
async fn last_email_at(gateway: &Gateway) -> i64 {
    repeatd_tests::virtual_time::until("the e-mail recorded as sent", || async {
        let stored = gateway
            .state
            .store
            .notifications::<repeatd::email::Digest>()
            .await
            .expect("reading the stored digests");
        stored.into_iter().find_map(|(domain, connection, digest)| {
            let digest = digest.ok()?;
            let ours = domain == "demo" && connection == "receiver";
            digest
                .last_email_at
                .filter(|_| ours && digest.sending.is_none())
        })
    })
    .await
}

/// The quiet period in virtual time: the gateway's clock follows tokio's
/// paused time, which only this test moves, so "no e-mail before the quiet
/// period ends, the summary as soon as it does, nothing after" is checked to
/// the millisecond with the default 15 minutes, in a few real seconds.
#[tokio::test]
async fn the_summary_waits_exactly_one_quiet_period_and_nothing_follows_it() {
    use repeatd_tests::virtual_time::*;
    const FORMS: usize = 10;
    const ATTEMPTS: usize = 5;
    // Started before time is paused: its start-up wait is real.
    let smtp = SmtpSink::start().await;
    let (_frozen, clock, receiver, gateway) = gateway_in_virtual_time(
        &smtp,
        vec![Answer::Status(500)],
        "retry = { max_attempts = 5, min_wait = \"10s\", factor = 1.0, max_wait = \"10s\" }",
    )
    .await;
    for n in 0..FORMS {
        let xml = generated_form(&format!("quiet-{n}"), &format!("case-{n}"), "visit");
        assert_eq!(gateway.submit("demo", &xml, None).await.0, 201);
    }
    // The first failure is e-mailed at once; time has not moved.
    until("the first e-mail", || async {
        (smtp.mails().len() == 1).then_some(())
    })
    .await;
    let first_email_at = last_email_at(&gateway).await;

    // The outage goes on: every retry fails (the repeater backs off and
    // probes one record at a time) until every record is cancelled.
    loop {
        let sent = receiver.requests("/in").len();
        if sent == FORMS * ATTEMPTS {
            break;
        }
        until("every attempt committed", || async {
            let records = gateway.records("demo", "").await;
            let committed: u64 = records
                .iter()
                .map(|r| r["n_attempts"].as_u64().unwrap_or(0))
                .sum();
            (committed == sent as u64).then_some(())
        })
        .await;
        sends_settled(&gateway, "forms").await;
        tokio::time::advance(Duration::from_secs(13)).await;
        until("the next attempt", || async {
            (receiver.requests("/in").len() > sent).then_some(())
        })
        .await;
    }
    let records = until("every record cancelled", || async {
        let records = gateway.records("demo", "").await;
        records
            .iter()
            .all(|r| r["state"] == "cancelled")
            .then_some(records)
    })
    .await;
    assert_eq!(records.len(), FORMS);
    assert_eq!(receiver.requests("/in").len(), FORMS * ATTEMPTS);
    assert!(
        clock.now_micros() - first_email_at < 15 * 60 * SECOND,
        "the outage must fall within one quiet period for this test to mean anything"
    );

    let quiet_period_ends = first_email_at + 15 * 60 * SECOND;
    advance_to(&clock, quiet_period_ends - MILLISECOND).await;
    real_sleep(REAL_QUIET).await;
    assert_eq!(
        smtp.mails().len(),
        1,
        "no second e-mail within the quiet period"
    );
    tokio::time::advance(Duration::from_millis(2)).await;
    let mails = until("the summary", || async {
        let mails = smtp.mails();
        (mails.len() == 2).then_some(mails)
    })
    .await;
    let (first, summary) = (&mails[0], &mails[1]);
    assert_eq!(
        failures_in(first) + failures_in(summary),
        (FORMS * ATTEMPTS) as u64,
        "every failure is told once"
    );
    assert!(
        summary.lines()[0].contains(&format!(
            "failed attempts since the last e-mail ({})",
            repeatd::time::format_utc(first_email_at)
        )),
        "{}",
        summary.body
    );

    // Nothing more happened, so nothing more is sent, however long one waits.
    tokio::time::advance(Duration::from_secs(3 * 15 * 60)).await;
    real_sleep(REAL_QUIET).await;
    assert_eq!(smtp.mails().len(), 2, "{:#?}", smtp.mails());
    gateway.stop().await;
}

#[tokio::test]
async fn a_recovery_is_emailed_when_the_quiet_period_ends_not_before() {
    use repeatd_tests::virtual_time::*;
    let smtp = SmtpSink::start().await;
    let (_frozen, clock, _receiver, gateway) = gateway_in_virtual_time(
        &smtp,
        vec![Answer::Status(502), Answer::Status(200)],
        "retry = { max_attempts = 3, min_wait = \"10s\", factor = 1.0, max_wait = \"10s\" }",
    )
    .await;
    assert_eq!(gateway.submit("demo", SEED_FORM, None).await.0, 201);
    until("the failure e-mail", || async {
        (smtp.mails().len() == 1).then_some(())
    })
    .await;
    let first_email_at = last_email_at(&gateway).await;
    sends_settled(&gateway, "forms").await;
    tokio::time::advance(Duration::from_secs(13)).await;
    until("the retry succeeds", || async {
        let records = gateway.records("demo", "").await;
        (records.len() == 1 && records[0]["state"] == "succeeded").then_some(())
    })
    .await;

    advance_to(&clock, first_email_at + 15 * 60 * SECOND - MILLISECOND).await;
    real_sleep(REAL_QUIET).await;
    assert_eq!(smtp.mails().len(), 1, "no e-mail within the quiet period");
    tokio::time::advance(Duration::from_millis(2)).await;
    let mails = until("the recovered e-mail", || async {
        let mails = smtp.mails();
        (mails.len() == 2).then_some(mails)
    })
    .await;
    assert_eq!(
        mails[1].subject,
        "[repeatd] project space \"demo\": connection \"receiver\" has recovered"
    );
    assert!(
        mails[1].lines()[1].starts_with(&format!(
            "There were no further failures since the last e-mail ({})",
            repeatd::time::format_utc(first_email_at)
        )),
        "{}",
        mails[1].body
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_addresses_sends_nothing_and_rejected_payloads_are_not_emailed() {
    let smtp = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    for path in ["/quiet", "/loud"] {
        receiver.plan(path, vec![Answer::Status(503)]);
    }
    receiver.plan("/picky", vec![Answer::Status(400)]);
    receiver.plan("/locked", vec![Answer::Status(401)]);
    let repeaters = format!(
        "{}{}{}{}",
        repeater("silent", "form", "nobody", "form-xml", &fast_retry(1)),
        repeater("picky", "form", "picky", "form-xml", &fast_retry(1)),
        repeater("locked", "form", "locked", "form-xml", &fast_retry(1)),
        repeater("loud", "form-stub", "loud", "form-stub", &fast_retry(1)),
    );
    let gateway = Gateway::start(&config(
        &smtp_section(smtp.port, "15m"),
        &[
            connection("nobody", &receiver.url("/quiet"), &[]),
            connection("picky", &receiver.url("/picky"), &["picky@example.org"]),
            connection("locked", &receiver.url("/locked"), &["locked@example.org"]),
            connection("loud", &receiver.url("/loud"), &["ops@example.org"]),
        ],
        &repeaters,
    ))
    .await;
    assert_eq!(gateway.submit("demo", SEED_FORM, None).await.0, 201);
    let settled = wait_for(WAIT, || async {
        let records = gateway.records("demo", "").await;
        let states: Vec<(String, String)> = records
            .iter()
            .map(|r| {
                (
                    r["repeater"].as_str().unwrap().to_owned(),
                    r["state"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let done = states.len() == 4
            && states
                .iter()
                .all(|(_, state)| state != "pending" && state != "failed");
        if done { Ok(states) } else { Err(states) }
    })
    .await;
    let states = settled.unwrap_or_else(|last_seen| last_seen);
    let state_of = |name: &str| {
        states
            .iter()
            .find(|(repeater, _)| repeater == name)
            .map(|(_, s)| s.as_str())
    };
    assert_eq!(
        state_of("silent"),
        Some("cancelled"),
        "the remote without contacts failed: {states:?}"
    );
    assert_eq!(state_of("picky"), Some("rejected"), "{states:?}");
    assert_eq!(state_of("locked"), Some("rejected"), "{states:?}");
    assert_eq!(state_of("loud"), Some("cancelled"), "{states:?}");

    let mails = smtp.wait_mails(2, WAIT).await;
    // Every failure is known by now; what else was coming would come at once.
    // This sleep is the test that nothing else comes.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mails_after = smtp.mails();
    assert_eq!(mails_after.len(), 2, "{mails_after:#?}");
    let mut recipients: Vec<&str> = mails.iter().map(|mail| mail.rcpt_tos[0].as_str()).collect();
    recipients.sort();
    assert_eq!(
        recipients,
        ["locked@example.org", "ops@example.org"],
        "no e-mail for a 400 nor for a connection without addresses"
    );
    let locked = mails
        .iter()
        .find(|mail| mail.rcpt_tos == ["locked@example.org"])
        .unwrap();
    assert_eq!(
        locked.subject,
        "[repeatd] project space \"demo\": connection \"locked\" is failing"
    );
    locked.assert_line("    remote answered 401: remote says no: error 401");
    let loud = mails
        .iter()
        .find(|mail| mail.rcpt_tos == ["ops@example.org"])
        .unwrap();
    loud.assert_line(&format!("Form id:       {SEED_FORM_ID}"));
    loud.assert_line("Repeater:      loud");
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_succeeds_again_gets_a_short_recovered_email() {
    let smtp = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Status(502), Answer::Status(200)]);
    let gateway = Gateway::start(&config(
        &smtp_section(smtp.port, "2s"),
        &[connection("receiver", &receiver.url("/in"), &["ops@example.org"])],
        &repeater(
            "forms",
            "form",
            "receiver",
            "form-xml",
            "retry = { max_attempts = 3, min_wait = \"300ms\", factor = 1.0, max_wait = \"300ms\" }",
        ),
    ))
    .await;
    assert_eq!(gateway.submit("demo", SEED_FORM, None).await.0, 201);
    let records = gateway.wait_records("demo", "", 1, "succeeded", WAIT).await;
    assert_eq!(records[0]["state"], "succeeded");
    assert_eq!(records[0]["n_attempts"], 2);
    let record_id = records[0]["id"].as_str().unwrap();
    let succeeded_at = gateway.record("demo", record_id).await["attempts"][1]["at"]
        .as_str()
        .unwrap()
        .to_owned();

    let mails = smtp.wait_mails(2, WAIT).await;
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert_eq!(
        mails[0].subject,
        "[repeatd] project space \"demo\": connection \"receiver\" is failing"
    );
    mails[0].assert_line("    remote answered 502: remote says no: error 502");
    // That it waits for the quiet period is checked in virtual time by
    // a_recovery_is_emailed_when_the_quiet_period_ends_not_before.
    let recovered = &mails[1];
    assert_eq!(recovered.rcpt_tos, ["ops@example.org"]);
    assert_eq!(
        recovered.subject,
        "[repeatd] project space \"demo\": connection \"receiver\" has recovered"
    );
    recovered.assert_line(
        "Forwarding from project space \"demo\" to connection \"receiver\" works again.",
    );
    assert!(
        recovered.lines()[1].starts_with("There were no further failures since the last e-mail ("),
        "{}",
        recovered.body
    );
    recovered.assert_line(&format!(
        "Status: recovered. A send succeeded at {succeeded_at}:"
    ));
    recovered.assert_line(&format!(
        "record {record_id} (form {SEED_FORM_ID}, repeater \"forms\") to {}.",
        receiver.url("/in")
    ));
    recovered.assert_line(&why_line("receiver"));
    recovered.assert_line(&stop_line("receiver"));
    assert!(
        !recovered.body.contains("Error (as the remote gave it)"),
        "{}",
        recovered.body
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_down_at_first_up_later_the_email_still_arrives() {
    let smtp_port = free_port();
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Status(503)]);
    // The binary, so that its log shows when the notifier has failed.
    let dir = TempDir::new("smtp-down");
    let gateway = Daemon::start_in(&dir, &one_attempt_to(&receiver, smtp_port)).await;
    assert_eq!(gateway.submit("demo", SEED_FORM, None).await.0, 201);
    // Delivery does not wait for e-mail: the record is done while SMTP is down.
    let records = gateway.wait_records("demo", "", 1, "cancelled", WAIT).await;
    assert_eq!(records[0]["state"], "cancelled");
    // The notifier has failed against the closed port.
    gateway
        .wait_log("could not send an error e-mail", WAIT)
        .await;

    let smtp = SmtpSink::start_on(smtp_port).await;
    let mails = smtp.wait_mails(1, WAIT).await;
    assert_one_failing_mail(&mails);
    mails[0].assert_line(&format!(
        "Record id:     {}",
        records[0]["id"].as_str().unwrap()
    ));
    mails[0].assert_line(&format!("Form id:       {SEED_FORM_ID}"));
    // No second copy may come: this sleep is the test of that absence.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(smtp.mails().len(), 1, "sent once");

    // The gateway kept delivering meanwhile, and still does.
    receiver.plan("/in", vec![Answer::Status(200)]);
    let xml = generated_form("after-smtp", "case-after", "visit");
    assert_eq!(gateway.submit("demo", &xml, None).await.0, 201);
    assert_eq!(receiver.wait("/in", 2, WAIT).await.len(), 2);
    gateway.stop().await.expect("stopping repeatd");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_owed_when_the_process_is_killed_is_sent_after_the_restart() {
    let smtp_port = free_port();
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Status(503)]);
    let dir = Arc::new(TempDir::new("email-restart"));
    let body = one_attempt_to(&receiver, smtp_port);
    let daemon = Daemon::start_in(&dir, &body).await;
    assert_eq!(daemon.submit("demo", SEED_FORM, None).await.0, 201);
    assert_eq!(receiver.wait("/in", 1, WAIT).await.len(), 1);
    // The SMTP server is down: the e-mail is owed, and kept in the store.
    daemon
        .wait_log("could not send an error e-mail", WAIT)
        .await;
    let log = daemon.log();
    assert!(
        log.contains(&format!("127.0.0.1:{smtp_port}")),
        "the log names the SMTP server:\n{log}"
    );
    drop(daemon); // SIGKILL: no shutdown, nothing saved at exit

    let smtp = SmtpSink::start_on(smtp_port).await;
    let gateway = Gateway::start_in(dir.clone(), &body).await;
    let records = gateway.records("demo", "").await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0]["state"], "cancelled",
        "nothing is sent again after the restart"
    );
    let mails = smtp.wait_mails(1, WAIT).await;
    assert_one_failing_mail(&mails);
    mails[0].assert_line("    remote answered 503: remote says no: error 503");
    mails[0].assert_line(&format!(
        "Record id:     {}",
        records[0]["id"].as_str().unwrap()
    ));
    mails[0].assert_line(&format!("Form id:       {SEED_FORM_ID}"));
    assert_eq!(
        receiver.requests("/in").len(),
        1,
        "the e-mail came from the stored digest, not a new failure"
    );

    // Sent means done: a graceful restart sends it no second time.
    gateway.stop().await;
    let gateway = Gateway::start_in(dir.clone(), &body).await;
    // No second copy may come: this sleep is the test of that absence.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(smtp.mails().len(), 1, "{:#?}", smtp.mails());
    gateway.stop().await;
}
