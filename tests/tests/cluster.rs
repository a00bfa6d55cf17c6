//! Several `repeatd serve` processes on one PostgreSQL database (SPEC
//! section 12): each takes submissions and API calls, a due record is sent
//! by one node at a time, a node that dies leaves its records to the others
//! within `lease`, and pause, `max_workers`, objects and e-mail quiet periods
//! hold for the cluster. Every node is the real binary; the database is a
//! fresh one on the test cluster (`REPEATD_TEST_PG_URL`, started by
//! `test.sh`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use repeatd_tests::daemon::{Daemon, Launch};
use repeatd_tests::remote::{Remote, Reply};
use repeatd_tests::smtp::SmtpSink;
use repeatd_tests::*;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
/// The secret key every node of a cluster shares.
const SECRET_KEY: &str = "8f2b6c1d4e5a79308f2b6c1d4e5a79308f2b6c1d4e5a79308f2b6c1d4e5a7930";

/// The `[store]` table of a cluster on `url`.
fn store_section(url: &str, lease: &str) -> String {
    format!("\n[store]\nbackend = \"postgres\"\nurl = \"{url}\"\nlease = \"{lease}\"\n")
}

fn domain(connections: &[(&str, String)], repeaters: &str) -> String {
    let mut text = String::from(
        "[[domains]]\nname = \"demo\"\n\n[[submitters]]\ndomain = \"demo\"\nusername = \"danny\"\npassword = \"pw\"\n",
    );
    for (name, url) in connections {
        text.push_str(&format!(
            "\n[[connections]]\ndomain = \"demo\"\nname = \"{name}\"\nurl = \"{url}\"\nauth = {{ type = \"none\" }}\nnotify = [\"ops@example.org\"]\n"
        ));
    }
    text.push('\n');
    text.push_str(repeaters);
    text
}

/// Two nodes on one fresh database, each with its own data directory, the
/// same config body and the same secret key.
struct Cluster {
    nodes: Vec<Daemon>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    async fn start(body: &str, lease: &str) -> Cluster {
        let url = pg::fresh_database_url().await;
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for n in 0..2 {
            let dir = TempDir::new(&format!("node{n}"));
            let launch = Launch::in_dir(&dir, &format!("{body}{}", store_section(&url, lease)))
                .env("REPEATD_SECRET_KEY", SECRET_KEY);
            nodes.push(launch.start().await.expect("a node starts"));
            dirs.push(dir);
        }
        Cluster { nodes, _dirs: dirs }
    }

    fn a(&self) -> &Daemon {
        &self.nodes[0]
    }

    fn b(&self) -> &Daemon {
        &self.nodes[1]
    }
}

fn form(tag: &str, n: usize) -> Vec<u8> {
    generated_form(
        &format!("{tag}-form-{n:04}"),
        &format!("{tag}-case-{n:04}"),
        "visit",
    )
}

fn idempotency_key(received: &Received) -> String {
    received
        .header("idempotency-key")
        .expect("every request carries Idempotency-Key")
        .to_owned()
}

/// How many times each record arrived.
fn arrivals(receiver: &Receiver, path: &str) -> HashMap<String, usize> {
    let mut per_key = HashMap::new();
    for arrival in receiver.requests(path) {
        *per_key.entry(idempotency_key(&arrival)).or_default() += 1;
    }
    per_key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_submitted_to_both_nodes_are_each_delivered_once() {
    const FORMS: usize = 60;
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Slow(Duration::from_millis(20), 200)]);
    let body = domain(
        &[("forms", receiver.url("/in"))],
        &repeater("forms", "form", "forms", "form-xml", "max_workers = 8"),
    );
    let cluster = Cluster::start(&body, "30s").await;
    for n in 0..FORMS {
        let node = if n % 2 == 0 { cluster.a() } else { cluster.b() };
        let (status, body) = node.submit("demo", &form("both", n), None).await;
        assert_eq!(status, 201, "form {n}: {body}");
    }
    let records = cluster
        .b()
        .wait_records("demo", "", FORMS, "succeeded", WAIT)
        .await;
    assert_eq!(records.len(), FORMS);
    receiver.wait("/in", FORMS, WAIT).await;
    // Let any second send land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_key = arrivals(&receiver, "/in");
    assert_eq!(per_key.len(), FORMS, "every record arrived");
    assert!(
        per_key.values().all(|n| *n == 1),
        "each record arrived once: {per_key:?}"
    );
    // Both nodes answer for every record.
    let id = records[0]["id"].as_str().unwrap();
    assert_eq!(cluster.a().record("demo", id).await["state"], "succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_through_one_node_stops_the_other_within_two_seconds() {
    let receiver = Receiver::start().await;
    let body = domain(
        &[("forms", receiver.url("/in"))],
        &repeater("forms", "form", "forms", "form-xml", ""),
    );
    let cluster = Cluster::start(&body, "30s").await;
    let (status, paused) = cluster
        .a()
        .api("POST", "/api/v1/domains/demo/repeaters/forms/pause", None)
        .await;
    assert_eq!(status, 200, "{paused}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..5 {
        let (status, _) = cluster.b().submit("demo", &form("paused", n), None).await;
        assert_eq!(status, 201);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        receiver.requests("/in").is_empty(),
        "node B sent for a repeater paused through node A"
    );
    let (_, shown) = cluster
        .b()
        .get("/api/v1/domains/demo/repeaters/forms")
        .await;
    assert_eq!(shown["paused"], true, "{shown}");
    let (status, _) = cluster
        .a()
        .api("POST", "/api/v1/domains/demo/repeaters/forms/resume", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(receiver.wait("/in", 5, WAIT).await.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_created_through_one_node_is_used_by_the_other() {
    let receiver = Receiver::start().await;
    let cluster = Cluster::start(&domain(&[], ""), "30s").await;
    let (status, body) = cluster
        .a()
        .api(
            "POST",
            "/api/v1/domains/demo/connections",
            Some(json!({"name": "made-on-a", "url": receiver.url("/made")})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = cluster
        .a()
        .api(
            "POST",
            "/api/v1/domains/demo/repeaters",
            Some(json!({"name": "to-made", "kind": "form", "connection": "made-on-a", "format": "form-xml"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, shown) = cluster
        .b()
        .get("/api/v1/domains/demo/connections/made-on-a")
        .await;
    assert_eq!(status, 200, "node B knows the connection: {shown}");
    let (status, _) = cluster.b().submit("demo", &form("made", 0), None).await;
    assert_eq!(status, 201);
    let arrived = receiver.wait("/made", 1, WAIT).await;
    assert_eq!(arrived.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_sending_leaves_its_records_to_the_other() {
    const FORMS: usize = 30;
    const WORKERS: usize = 4;
    const LEASE: Duration = Duration::from_secs(3);
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Slow(Duration::from_millis(300), 200)]);
    let paused = domain(
        &[("forms", receiver.url("/in"))],
        &repeater(
            "forms",
            "form",
            "forms",
            "form-xml",
            &format!("max_workers = {WORKERS}\npaused = true"),
        ),
    );
    let url = pg::fresh_database_url().await;
    let dir_a = TempDir::new("node-a");
    let dir_b = TempDir::new("node-b");
    let config = format!("{paused}{}", store_section(&url, "3s"));
    let mut a = Launch::in_dir(&dir_a, &config)
        .env("REPEATD_SECRET_KEY", SECRET_KEY)
        .start()
        .await
        .expect("node A starts");
    for n in 0..FORMS {
        let (status, _) = a.submit("demo", &form("kill", n), None).await;
        assert_eq!(status, 201, "form {n}");
    }
    let (_, resumed) = a
        .api("POST", "/api/v1/domains/demo/repeaters/forms/resume", None)
        .await;
    assert_eq!(resumed["paused"], false, "{resumed}");
    assert!(receiver.wait("/in", 6, WAIT).await.len() >= 6);
    a.kill();
    let killed_at = Instant::now();
    drop(a);
    let before = receiver.requests("/in").len();
    assert!(before < FORMS, "killed while sending ({before} sent)");

    // Node B starts after the kill (its config, too, says paused = true;
    // the cluster's state, resumed through A, is what holds).
    let b = Launch::in_dir(&dir_b, &config.replace("\npaused = true", ""))
        .env("REPEATD_SECRET_KEY", SECRET_KEY)
        .start()
        .await
        .expect("node B starts");
    let records = b.wait_records("demo", "", FORMS, "succeeded", WAIT).await;
    assert_eq!(records.len(), FORMS, "every form answered 201 is delivered");
    let took = killed_at.elapsed();
    // Lease + a few seconds, plus B's start and the sends themselves
    // (FORMS × 300 ms / WORKERS).
    assert!(
        took < LEASE + Duration::from_secs(15),
        "B took {took:?} to deliver what A left"
    );
    let per_key = arrivals(&receiver, "/in");
    for record in &records {
        assert!(per_key.contains_key(record["id"].as_str().unwrap()));
    }
    let duplicated: Vec<_> = per_key.iter().filter(|(_, n)| **n > 1).collect();
    // What A had in flight: its sends under way and those answered whose
    // outcome was not yet committed (see the single-node kill test).
    assert!(
        duplicated.len() <= 2 * WORKERS && duplicated.iter().all(|(_, n)| **n == 2),
        "only what node A had in flight may arrive twice: {duplicated:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_workers_1_keeps_registration_order_across_nodes() {
    const FORMS: usize = 24;
    // Each answer takes 30 ms: with one send at a time in the cluster, no
    // request arrives sooner than that after the one before.
    let remote = Remote::start(|_| Reply::ok().delayed(Duration::from_millis(30))).await;
    let paused = domain(
        &[("forms", remote.url("/in"))],
        &repeater(
            "forms",
            "form",
            "forms",
            "form-xml",
            "max_workers = 1\npaused = true",
        ),
    );
    let cluster = Cluster::start(&paused, "30s").await;
    let mut registered = Vec::new();
    for n in 0..FORMS {
        let node = if n % 2 == 0 { cluster.a() } else { cluster.b() };
        let (status, _) = node.submit("demo", &form("order", n), None).await;
        assert_eq!(status, 201);
        registered.push(format!("order-form-{n:04}"));
    }
    let (status, _) = cluster
        .b()
        .api("POST", "/api/v1/domains/demo/repeaters/forms/resume", None)
        .await;
    assert_eq!(status, 200);
    let records = cluster
        .a()
        .wait_records("demo", "", FORMS, "succeeded", WAIT)
        .await;
    assert_eq!(records.len(), FORMS);
    let arrived: Vec<String> = remote
        .requests("/in")
        .iter()
        .map(|request| {
            let body = String::from_utf8_lossy(&request.body).into_owned();
            let start = body
                .find("order-form-")
                .expect("the form id in the payload");
            body[start..start + "order-form-0000".len()].to_owned()
        })
        .collect();
    assert_eq!(arrived, registered, "sent in registration order");
    let requests = remote.requests("/in");
    for pair in requests.windows(2) {
        assert!(
            pair[1].at.duration_since(pair[0].at) >= Duration::from_millis(30),
            "one send at a time in the cluster"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_sends_one_email_per_quiet_period() {
    let smtp = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Status(503)]);
    let body = format!(
        "\n[smtp]\nurl = \"smtp://127.0.0.1:{}\"\nfrom = \"repeatd@example.org\"\nquiet_period = \"15m\"\n{}",
        smtp.port,
        domain(
            &[("forms", receiver.url("/in"))],
            &repeater(
                "forms",
                "form",
                "forms",
                "form-xml",
                "retry = { max_attempts = 1, min_wait = \"10ms\", factor = 1.0, max_wait = \"10ms\" }",
            ),
        )
    );
    let cluster = Cluster::start(&body, "30s").await;
    for n in 0..10 {
        let node = if n % 2 == 0 { cluster.a() } else { cluster.b() };
        let (status, _) = node.submit("demo", &form("mail", n), None).await;
        assert_eq!(status, 201);
    }
    cluster
        .a()
        .wait_records("demo", "", 10, "cancelled", WAIT)
        .await;
    let mails = smtp.wait_mails(1, WAIT).await;
    // Give a second e-mail, were there one, time to arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mails_now = smtp.mails();
    assert_eq!(
        mails_now.len(),
        1,
        "one e-mail for the cluster within the quiet period: {mails:#?} then {mails_now:#?}"
    );
}

/// The owner of the e-mails is frozen (SIGSTOP) while the other node fails
/// to send: nothing is e-mailed meanwhile, and once the owner runs again one
/// e-mail tells every failure the other node saw. Then the owner dies: the
/// other node takes the e-mails over with their stored digest, so its
/// summary waits out the quiet period of the dead node's e-mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_owns_the_emails_and_hears_of_every_failure() {
    const OWNER_LOG: &str = "this node now sends the cluster's error e-mails";
    const QUIET: Duration = Duration::from_secs(4);
    let smtp = SmtpSink::start().await;
    let receiver = Receiver::start().await;
    receiver.plan("/in", vec![Answer::Status(503)]);
    let body = format!(
        "\n[smtp]\nurl = \"smtp://127.0.0.1:{}\"\nfrom = \"repeatd@example.org\"\nquiet_period = \"4s\"\n{}",
        smtp.port,
        domain(
            &[("forms", receiver.url("/in"))],
            &repeater(
                "forms",
                "form",
                "forms",
                "form-xml",
                "retry = { max_attempts = 1, min_wait = \"10ms\", factor = 1.0, max_wait = \"10ms\" }",
            ),
        )
    );
    let url = pg::fresh_database_url().await;
    let config = format!("{body}{}", store_section(&url, "30s"));
    let dir_a = TempDir::new("node-a");
    let dir_b = TempDir::new("node-b");
    let mut a = Launch::in_dir(&dir_a, &config)
        .env("REPEATD_SECRET_KEY", SECRET_KEY)
        .start()
        .await
        .expect("node A starts");
    a.wait_log(OWNER_LOG, WAIT).await;
    let b = Launch::in_dir(&dir_b, &config)
        .env("REPEATD_SECRET_KEY", SECRET_KEY)
        .start()
        .await
        .expect("node B starts");

    a.signal("STOP").expect("freezing node A");
    for n in 0..5 {
        let (status, _) = b.submit("demo", &form("frozen", n), None).await;
        assert_eq!(status, 201);
    }
    let records = b.wait_records("demo", "", 5, "cancelled", WAIT).await;
    assert_eq!(records.len(), 5);
    assert!(
        records.iter().all(|record| record["state"] == "cancelled"),
        "node B sent them all: {records:#?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(smtp.mails().is_empty(), "node B does not e-mail");
    assert!(!b.log().contains(OWNER_LOG), "{}", b.log());

    a.signal("CONT").expect("thawing node A");
    let mails = smtp.wait_mails(1, WAIT).await;
    let first_at = Instant::now();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert_eq!(
        mails[0].subject,
        "[repeatd] project space \"demo\": connection \"forms\" is failing (5 failed attempts)",
        "{}",
        mails[0].body
    );

    // The owner saves that it sent the e-mail a moment after the SMTP
    // server took it; killed before, it would be owed again (at least once).
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.kill();
    drop(a);
    b.wait_log(OWNER_LOG, WAIT).await;
    let (status, _) = b.submit("demo", &form("after", 0), None).await;
    assert_eq!(status, 201);
    let mails = smtp.wait_mails(2, WAIT).await;
    assert_eq!(mails.len(), 2, "{mails:#?}");
    assert!(
        first_at.elapsed() >= QUIET - Duration::from_millis(500),
        "the summary waits out the quiet period of the first e-mail ({:?})",
        first_at.elapsed()
    );
    assert_eq!(
        mails[1].subject,
        "[repeatd] project space \"demo\": connection \"forms\" is still failing (1 failed attempts since the last e-mail)",
        "{}",
        mails[1].body
    );
}
