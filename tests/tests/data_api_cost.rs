//! What listing forms through the Data API costs, and that a deep page costs
//! what the first one does: 100,000 forms in the built binary (its own
//! process, so its CPU time is its own), listed 1,000 per page as
//! commcare-export pages (`order_by=indexed_on`, `indexed_on_start` = the
//! last object's), and by `offset` for comparison. A measurement, not an
//! assertion beyond "every form was listed once": run it in release and read
//! the table (BENCHMARKS.md, "Data API listing"):
//!
//! ```sh
//! cargo build --release -p repeatd --bin repeatd
//! cargo test --release -p repeatd-tests --test data_api_cost -- --ignored --nocapture
//! ```

use std::collections::HashSet;
use std::time::{Duration, Instant};

use repeatd_tests::{Daemon, TempDir, demo_config, generated_form};
use serde_json::Value;

const N_FORMS: usize = 100_000;
const PAGE: usize = 1_000;
const RUNS: usize = 3;
/// Submissions in flight while the store is filled.
const SUBMITTERS: usize = 32;

/// One page's cost: wall time and the gateway's CPU time (`/proc`, in clock
/// ticks of 10 ms).
#[derive(Debug, Clone, Copy)]
struct PageCost {
    wall: Duration,
    cpu: Duration,
}

async fn page(daemon: &Daemon, path: &str) -> (Value, PageCost) {
    let cpu_before = daemon.cpu_time();
    let started = Instant::now();
    let response = daemon
        .http()
        .get(daemon.url(path))
        .header("authorization", "ApiKey bench:demo-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    let cost = PageCost {
        wall: started.elapsed(),
        cpu: daemon.cpu_time() - cpu_before,
    };
    (body, cost)
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// "median (min – max)" of one figure over the runs.
fn spread(mut values: Vec<f64>, digits: usize) -> String {
    values.sort_by(f64::total_cmp);
    format!(
        "{:.digits$} ({:.digits$} – {:.digits$})",
        values[values.len() / 2],
        values[0],
        values[values.len() - 1]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run it in release with --ignored --nocapture"]
async fn listing_100000_forms_costs_the_same_on_the_first_and_the_last_page() {
    let dir = TempDir::new("data-api-cost");
    let config = format!(
        "{}\n[[api_tokens]]\ndomain = \"demo\"\ntoken = \"demo-token\"\n",
        demo_config(&[], "")
    );
    let daemon = Daemon::start_in(&dir, &config).await;
    let started = Instant::now();
    let submitters: Vec<_> = (0..SUBMITTERS)
        .map(|submitter| {
            let client = (*daemon).clone();
            tokio::spawn(async move {
                for n in (submitter..N_FORMS).step_by(SUBMITTERS) {
                    let xml = generated_form(
                        &format!("form-{n:06}"),
                        &format!("case-{n:06}"),
                        "household",
                    );
                    let (status, body) = client.submit("demo", &xml, None).await;
                    assert_eq!(status, 201, "{body}");
                }
            })
        })
        .collect();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    eprintln!("stored {N_FORMS} forms in {:.1?}", started.elapsed());

    let mut by_indexed_on: Vec<Vec<PageCost>> = Vec::new();
    let mut by_offset: Vec<(PageCost, PageCost)> = Vec::new();
    let mut walls = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let mut seen = HashSet::new();
        let mut costs = Vec::new();
        let mut since: Option<String> = None;
        loop {
            let path = match &since {
                Some(since) => format!(
                    "/a/demo/api/v0.5/form/?order_by=indexed_on&limit={PAGE}&indexed_on_start={since}"
                ),
                None => format!("/a/demo/api/v0.5/form/?order_by=indexed_on&limit={PAGE}"),
            };
            let (body, cost) = page(&daemon, &path).await;
            let objects = body["objects"].as_array().unwrap();
            let new = objects
                .iter()
                .filter(|object| seen.insert(object["id"].as_str().unwrap().to_owned()))
                .count();
            if new == 0 {
                break;
            }
            // Only full pages are compared (the final one is short).
            if objects.len() == PAGE {
                costs.push(cost);
            }
            since = objects
                .last()
                .map(|object| object["indexed_on"].as_str().unwrap().to_owned());
        }
        walls.push(started.elapsed());
        assert_eq!(seen.len(), N_FORMS, "every form listed once");
        by_indexed_on.push(costs);
        let (_, first) = page(
            &daemon,
            &format!("/a/demo/api/v0.5/form/?limit={PAGE}&offset=0"),
        )
        .await;
        let last_offset = N_FORMS - PAGE;
        let (_, last) = page(
            &daemon,
            &format!("/a/demo/api/v0.5/form/?limit={PAGE}&offset={last_offset}"),
        )
        .await;
        by_offset.push((first, last));
    }

    let objects_per_second: Vec<f64> = walls
        .iter()
        .map(|wall| N_FORMS as f64 / wall.as_secs_f64())
        .collect();
    let figure = |pick: &dyn Fn(&Vec<PageCost>) -> PageCost, what: fn(PageCost) -> Duration| {
        spread(
            by_indexed_on
                .iter()
                .map(|run| millis(what(pick(run))))
                .collect(),
            1,
        )
    };
    let first = |run: &Vec<PageCost>| run[0];
    let last = |run: &Vec<PageCost>| run[run.len() - 1];
    let median = |run: &Vec<PageCost>| {
        let mut sorted = run.clone();
        sorted.sort_by_key(|cost| cost.cpu);
        sorted[sorted.len() / 2]
    };
    println!("| figure | median of {RUNS} (min – max) |\n|---|---|");
    println!(
        "| listing {N_FORMS} forms by `indexed_on_start`, {PAGE} per page: objects/s | {} |",
        spread(objects_per_second, 0)
    );
    for (name, pick) in [
        ("first page", &first as &dyn Fn(&Vec<PageCost>) -> PageCost),
        ("median page", &median),
        ("last full page", &last),
    ] {
        println!(
            "| {name}: server CPU ms / wall ms | {} / {} |",
            figure(pick, |cost| cost.cpu),
            figure(pick, |cost| cost.wall)
        );
    }
    println!(
        "| by `offset`, offset 0: server CPU ms / wall ms | {} / {} |",
        spread(
            by_offset
                .iter()
                .map(|(first, _)| millis(first.cpu))
                .collect(),
            1
        ),
        spread(
            by_offset
                .iter()
                .map(|(first, _)| millis(first.wall))
                .collect(),
            1
        )
    );
    println!(
        "| by `offset`, offset {}: server CPU ms / wall ms | {} / {} |",
        N_FORMS - PAGE,
        spread(
            by_offset.iter().map(|(_, last)| millis(last.cpu)).collect(),
            1
        ),
        spread(
            by_offset
                .iter()
                .map(|(_, last)| millis(last.wall))
                .collect(),
            1
        )
    );
    daemon.stop().await.unwrap();
}
