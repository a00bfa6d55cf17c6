//! Tests in virtual time: the in-process gateway on a clock that follows
//! tokio's paused time (`Gateway::start_with_clock` with
//! `Clock::starting_at`), and time that only the test moves.
//!
//! Pause time (`#[tokio::test(start_paused = true)]`, or `tokio::time::pause()`
//! on a current-thread runtime), then [`freeze_time`]: while the returned guard
//! lives, tokio does not advance paused time by itself, so the only moves are
//! the test's `tokio::time::advance` calls. Waiting for the gateway to act is
//! then real waiting on the blocking pool ([`real_sleep`], [`until`]).

use std::future::Future;
use std::time::Duration;

use repeatd::clock::Clock;
use serde_json::Value;

/// How long, in real time, the gateway may take to do what is due.
pub const REAL_WAIT: Duration = Duration::from_secs(20);
/// How long, in real time, nothing must happen for "nothing is sent".
pub const REAL_QUIET: Duration = Duration::from_millis(300);
/// 2023-11-14T22:13:20Z: where a test's clock starts.
pub const START: i64 = 1_700_000_000_000_000;
pub const SECOND: i64 = 1_000_000;
pub const MILLISECOND: i64 = 1_000;

/// Keeps tokio from moving paused time by itself while it lives.
#[derive(Debug)]
pub struct FrozenTime {
    _release: std::sync::mpsc::Sender<()>,
}

/// Stops tokio's auto-advance of paused time until the guard is dropped.
pub fn freeze_time() -> FrozenTime {
    let (release, released) = std::sync::mpsc::channel::<()>();
    // Tokio does not auto-advance paused time while a blocking task runs.
    tokio::task::spawn_blocking(move || {
        let _ = released.recv();
    });
    FrozenTime { _release: release }
}

/// Sleeps in real time, whatever tokio's clock does.
pub async fn real_sleep(duration: Duration) {
    tokio::task::spawn_blocking(move || std::thread::sleep(duration))
        .await
        .expect("sleeping");
}

/// Polls `check` in real time until it gives a value (up to [`REAL_WAIT`]);
/// panics naming `what`.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + REAL_WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        real_sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until no send of repeater `repeater` (of domain "demo") is under
/// way: its outcome is committed and the lane's health updated, so moving
/// time now cannot race the scheduler's bookkeeping.
pub async fn sends_settled(gateway: &crate::Gateway, repeater: &str) {
    let path = format!("/api/v1/domains/demo/repeaters/{repeater}");
    until(&format!("no send of {repeater} under way"), || async {
        let (status, shown) = gateway.api("GET", &path, None).await;
        assert_eq!(status, 200, "{shown}");
        (shown["status"]["in_flight"] == 0).then_some(())
    })
    .await;
}

/// Moves paused time to the gateway's timestamp `at`.
pub async fn advance_to(clock: &Clock, at: i64) {
    tokio::time::advance(clock.until(at)).await;
}

/// A timestamp of the API (`YYYY-MM-DDTHH:MM:SS.ffffffZ`) in micros.
pub fn micros(timestamp: &Value) -> i64 {
    let text = timestamp
        .as_str()
        .unwrap_or_else(|| panic!("a timestamp: {timestamp}"));
    repeatd::time::parse_timestamp(text).unwrap_or_else(|| panic!("a timestamp: {text}"))
}
