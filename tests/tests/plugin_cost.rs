//! What producing one payload through a plugin costs: each built-in format on
//! the seed form (its case for the case formats), on the path delivery takes
//! (a live instance from the plugin's async pool, called on the sending task),
//! on a live instance called directly, and on a fresh instance. A
//! measurement, not an assertion: run it in release and read the table
//! (BENCHMARKS.md, "Plugin cost per payload"):
//!
//! ```sh
//! cargo test --release -p repeatd-tests --test plugin_cost -- --ignored --nocapture
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use repeatd::plugins::PluginLimits;
use repeatd::plugins::{self, Event, Instance, Payload, PluginHost};
use repeatd::repeater::PayloadKind;
use repeatd_tests::{SEED_APP_ID, SEED_FORM};

/// Calls per timed batch, and batches per figure (the median is reported).
const CALLS_PER_BATCH: u32 = 2_000;
const BATCHES: usize = 15;

fn seed_event(kind: PayloadKind) -> Event {
    if kind == PayloadKind::AppSchema {
        let event = format!(r#"{{"app_id": "{SEED_APP_ID}", "event": "saved"}}"#);
        return repeatd::sample::events(event.as_bytes(), kind, "demo")
            .unwrap()
            .remove(0);
    }
    let mut event = repeatd::sample::events(SEED_FORM, kind, "demo")
        .unwrap()
        .remove(0);
    if let Event::Form(form) = &mut event {
        form.app_id = Some(SEED_APP_ID.to_owned());
    }
    event
}

/// The median over `BATCHES` of the mean time per call in a batch.
fn per_call(mut call: impl FnMut()) -> Duration {
    for _ in 0..CALLS_PER_BATCH {
        call();
    }
    let mut batches: Vec<Duration> = (0..BATCHES)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..CALLS_PER_BATCH {
                call();
            }
            started.elapsed() / CALLS_PER_BATCH
        })
        .collect();
    batches.sort();
    batches[BATCHES / 2]
}

fn micros(duration: Duration) -> String {
    format!("{:.1} µs", duration.as_secs_f64() * 1e6)
}

#[test]
#[ignore = "a measurement: run it in release with --ignored --nocapture"]
fn plugin_cost_per_payload() {
    let host = PluginHost::new(PluginLimits::default()).expect("plugin host");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "| format | event | delivery's path (pooled, on the task) | pooled instance | fresh instance |\n|---|---|---|---|---|"
    );
    for (format, kind, event_name) in [
        ("form-xml", PayloadKind::Form, "seed form"),
        ("case-xml", PayloadKind::Case, "seed case"),
        ("case-json", PayloadKind::Case, "seed case"),
        ("form-stub", PayloadKind::FormStub, "seed form"),
        ("app-schema", PayloadKind::AppSchema, "app saved"),
    ] {
        let plugin = host.get(format).expect("built-in loaded");
        let event = seed_event(kind);
        let settings = if kind == PayloadKind::Form {
            plugins::pairs([("include_app_id_param", "true")])
        } else {
            Vec::new()
        };
        let check = move |payload: Payload| match payload {
            Payload::Send(request) => {
                assert!(!request.body.is_empty(), "{format} sent an empty body")
            }
            Payload::Nothing => panic!("{format} sent nothing"),
        };
        let pooled = per_call(|| {
            check(
                host.build_payload(&plugin, kind, &event, None, &settings)
                    .unwrap(),
            )
        });
        let fresh = per_call(|| {
            check(
                host.build_payload_on(&plugin, kind, &event, None, &settings, Instance::Fresh)
                    .unwrap(),
            )
        });
        // Delivery calls from a task on a runtime worker, and the call runs
        // on that task (on the plugin's async instances).
        let delivery_path = runtime.block_on({
            let host = Arc::clone(&host);
            let plugin = plugin.clone();
            let event = event.clone();
            let settings = settings.clone();
            async move {
                tokio::spawn(async move {
                    let mut timings = Vec::new();
                    for batch in 0..=BATCHES {
                        let started = Instant::now();
                        for _ in 0..CALLS_PER_BATCH {
                            let payload = host
                                .build_payload_async(&plugin, kind, &event, None, &settings)
                                .await
                                .unwrap();
                            check(payload);
                        }
                        if batch > 0 {
                            timings.push(started.elapsed() / CALLS_PER_BATCH);
                        }
                    }
                    timings.sort();
                    timings[BATCHES / 2]
                })
                .await
                .unwrap()
            }
        });

        println!(
            "| `{format}` | {event_name} | {} | {} | {} |",
            micros(delivery_path),
            micros(pooled),
            micros(fresh)
        );
    }
}
