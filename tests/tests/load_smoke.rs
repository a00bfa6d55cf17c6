//! The load harness (`repeatd-load`, BENCHMARKS.md) in its smoke mode against
//! the built gateway binary: a few hundred forms through every scenario, so
//! that the harness cannot rot. Only what a user would call broken fails it:
//! a form not accepted, a payload not delivered, a queue that does not hold
//! what it should after a restart. Timing is measured but never asserted.

use repeatd_tests::load::{self, Options, Scenario, StoreChoice};
use repeatd_tests::repeatd_binary;

#[test]
fn every_scenario_accepts_every_form_and_delivers_every_payload() {
    let options = Options::smoke(repeatd_binary());
    let report = load::run(&options).expect("the load harness runs");

    assert!(
        report.failures.is_empty(),
        "functional failures:\n{}",
        report.failures.join("\n")
    );
    assert!(
        report.forms_submitted >= 500,
        "a few hundred forms at least: {}",
        report.forms_submitted
    );
    assert_eq!(
        report.forms_accepted, report.forms_submitted,
        "every form is answered 201"
    );
    assert!(
        report.payloads_expected > report.forms_submitted,
        "forms fan out to several payloads"
    );
    assert_eq!(
        report.payloads_delivered, report.payloads_expected,
        "every payload arrives"
    );

    // Every scenario reported its figures, and the table has a row for each.
    let table = report.markdown();
    for scenario in Scenario::ALL {
        assert!(
            report
                .figures
                .iter()
                .any(|figure| figure.scenario == scenario.name()),
            "no figures for {}:\n{table}",
            scenario.name()
        );
    }
    for expected in [
        "| steady | accepted forms/s, delivering at once |",
        "| steady | delivered payloads/s, draining a backlog |",
        "| fanout | delivered payloads/s, submitting at once |",
        "| dead-remote | records queued for the dead remote | 150 records |",
        "| restart | start to /healthz 200 with 400 queued |",
        "| restart | resume to first delivery |",
        "| plugin | case-json: time per payload |",
        "| mixed | sustained: forms/s submitted while every repeater delivers |",
        "| mixed | sustained: submission-to-arrival p99 |",
        "| mixed | sustained: payloads delivered, of those due | 100 % |",
        "| restart | data on disk per form (data dir, allocated) |",
        "| restart | redb file per form, apparent size |",
    ] {
        assert!(table.contains(expected), "missing row {expected}:\n{table}");
    }
    // Every row of issue 14's target table is measured, peak memory in
    // every scenario that runs the gateway.
    let targets: Vec<(&str, String)> = report
        .summaries()
        .into_iter()
        .filter(|summary| summary.target.is_some())
        .map(|summary| (summary.scenario, summary.name))
        .collect();
    for (scenario, figure) in [
        ("steady", "accepted forms/s, delivery paused"),
        ("steady", "gateway CPU per 1,000 forms, ingest only"),
        ("steady", "delivered payloads/s, draining a backlog"),
        ("steady", "gateway CPU per 1,000 payloads, delivery only"),
        ("steady", "submission-to-arrival p50 at 200 forms/s"),
        (
            "mixed",
            "sustained: forms/s submitted while every repeater delivers",
        ),
        ("fanout", "accepted forms/s, delivery paused"),
        ("restart", "data on disk per form (data dir, allocated)"),
        ("restart", "start to /healthz 200 with 400 queued"),
        ("steady", "gateway peak RSS"),
        ("mixed", "gateway peak RSS"),
        ("fanout", "gateway peak RSS"),
        ("dead-remote", "gateway peak RSS"),
        ("restart", "peak RSS while filling to 400 queued"),
        ("restart", "peak RSS after restart"),
    ] {
        assert!(
            targets.contains(&(scenario, figure.to_owned())),
            "no target row for {scenario} / {figure}:\n{}",
            report.targets_markdown()
        );
    }
    let duplicates: f64 = report
        .figures
        .iter()
        .filter(|figure| figure.name == "payloads delivered twice")
        .map(|figure| figure.value)
        .sum();
    assert_eq!(duplicates, 0.0, "a healthy receiver gets each payload once");
}

/// The harness's PostgreSQL paths in smoke mode, on the test cluster
/// (`REPEATD_TEST_PG_URL`, which test.sh starts): steady on PostgreSQL with
/// the database's figures, and scaleout's one node and two nodes on one
/// database, each payload arriving once. Ignored: on PostgreSQL the steady
/// scenario's delivery is slow enough today (tens of payloads/s) that it
/// would add far more than the smoke run's budget of 10 s; run it with
/// `--run-ignored all`.
#[test]
#[ignore = "slower than the smoke run's budget while delivery on PostgreSQL is slow"]
fn steady_and_scaleout_on_postgres_deliver_every_payload_once() {
    let url = std::env::var("REPEATD_TEST_PG_URL")
        .expect("REPEATD_TEST_PG_URL must name a PostgreSQL the tests may CREATE DATABASE on");
    let mut options = Options::smoke(repeatd_binary());
    options.scenarios = vec![Scenario::Steady, Scenario::Scaleout];
    options.store = StoreChoice::Postgres;
    options.pg_url = Some(url);
    let report = load::run(&options).expect("the load harness runs");

    assert!(
        report.failures.is_empty(),
        "functional failures:\n{}",
        report.failures.join("\n")
    );
    assert_eq!(report.forms_accepted, report.forms_submitted);
    assert_eq!(report.payloads_delivered, report.payloads_expected);
    let table = report.markdown();
    for expected in [
        "| steady on postgres | accepted forms/s, delivery paused |",
        "| steady on postgres | delivered payloads/s, draining a backlog |",
        "| steady on postgres | database commits per 1,000 forms, ingest only |",
        "| steady on postgres | database write transactions per 1,000 payloads, delivery only |",
        "| steady on postgres | WAL fsyncs per 1,000 forms, ingest only |",
        "| scaleout | delivered payloads/s, 1 node |",
        "| scaleout | delivered payloads/s, 2 nodes |",
        "| scaleout | delivered payloads/s, 2 nodes / 1 node |",
        "| scaleout | records sent twice (Idempotency-Key), 2 nodes | 0 |",
    ] {
        assert!(table.contains(expected), "missing row {expected}:\n{table}");
    }
    assert!(
        report.notes.iter().any(|note| note.contains("not counted")),
        "a server given by URL: its CPU is not counted, and the report says so"
    );
}
