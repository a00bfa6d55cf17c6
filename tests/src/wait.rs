//! Waiting on conditions instead of the wall clock: [`eventually`] polls a
//! check until it holds and, when it never does, fails with what was awaited
//! and what was last seen; [`wait_for`] is the same without the panic, for
//! callers that report a timeout themselves (the load tool, and helpers whose
//! callers assert on what they got).
//!
//! A check answers `Ok(value)` when the condition holds and `Err(seen)` with
//! a description of the state it saw when it does not yet. Polls start 5 ms
//! apart and slow down to 50 ms, so a condition that holds soon is noticed at
//! once and a long wait costs little CPU on a loaded machine.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

/// The first pause between two checks.
const FIRST_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause between two checks.
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// Checks until `check` answers `Ok`, at most for `timeout`; on timeout,
/// returns what the last check saw. The check runs at least once, and once
/// more at the deadline.
pub async fn wait_for<T, Seen, Check, Checking>(
    timeout: Duration,
    mut check: Check,
) -> Result<T, Seen>
where
    Check: FnMut() -> Checking,
    Checking: Future<Output = Result<T, Seen>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = FIRST_PAUSE;
    loop {
        let seen = match check().await {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(seen);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Checks until `check` answers `Ok` and returns its value; panics after
/// `timeout` with `what` was awaited and what the last check saw.
pub async fn eventually<T, Seen, Check, Checking>(what: &str, timeout: Duration, check: Check) -> T
where
    Seen: Display,
    Check: FnMut() -> Checking,
    Checking: Future<Output = Result<T, Seen>>,
{
    match wait_for(timeout, check).await {
        Ok(value) => value,
        Err(seen) => panic!("waited {timeout:?} for {what}; last seen: {seen}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test]
    async fn a_condition_that_comes_true_returns_its_value() {
        let checks = Cell::new(0);
        let value = eventually("the third check", Duration::from_secs(5), || {
            checks.set(checks.get() + 1);
            let n = checks.get();
            async move { if n == 3 { Ok(n * 10) } else { Err(n) } }
        })
        .await;
        assert_eq!(value, 30);
        assert_eq!(checks.get(), 3);
    }

    #[tokio::test]
    async fn a_condition_that_never_holds_reports_the_last_state_seen() {
        let checks = Cell::new(0);
        let outcome: Result<(), String> = wait_for(Duration::from_millis(60), || {
            checks.set(checks.get() + 1);
            let n = checks.get();
            async move { Err(format!("check {n}")) }
        })
        .await;
        assert_eq!(outcome, Err(format!("check {}", checks.get())));
        assert!(checks.get() >= 2, "checked again before giving up");
    }

    #[tokio::test]
    #[should_panic(expected = "for the impossible; last seen: still false")]
    async fn eventually_names_what_it_waited_for() {
        eventually("the impossible", Duration::from_millis(20), || async {
            Err::<(), _>("still false")
        })
        .await;
    }
}
