//! The scheduler's decisions as plain functions: how a lane's health follows
//! the outcomes of its sends, and, given every lane's health, what it has in
//! flight and what is due, how many records each lane may start now and when
//! to look again. No store, no tasks, no clock: `now` is an argument, so each
//! rule of SPEC section 6 (back-off as a whole, one probe at a time, pause,
//! `max_workers`, a fair share of `max_in_flight`) is unit-tested here.

use std::time::Duration;

use crate::clock;
use crate::record::RetryPolicy;
use crate::record::{self, Outcome};

/// Consecutive retryable failures that put a lane into back-off.
pub const FAILURES_BEFORE_BACKOFF: u32 = 3;

/// What a lane knows about its remote's health.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    pub consecutive_failures: u32,
    /// How many back-offs in a row (grows the wait like a record's).
    pub backoff_level: u32,
    /// No sends before this (micros); then one probe at a time.
    pub backoff_until: Option<i64>,
}

impl Health {
    /// Applies one outcome; returns true when it changes the lane's pace.
    pub fn observe(
        &mut self,
        outcome: &Outcome,
        policy: &RetryPolicy,
        now: i64,
        jitter_unit: f64,
    ) -> bool {
        match outcome {
            Outcome::Success { .. } => {
                let was_backing_off = self.backoff_until.is_some();
                *self = Health::default();
                was_backing_off
            }
            Outcome::Retryable { retry_after, .. } => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                // Honoured as a record's wait is (up to `max_wait`), but at least 1 ms.
                let asked = retry_after
                    .map(|asked| record::honoured_wait(policy, asked, Duration::from_millis(1)));
                if let Some(until) = self.backoff_until.filter(|until| *until > now) {
                    // A send that started before this back-off began: it
                    // confirms the back-off but does not grow it (parallel
                    // sends failing together are one failure of the remote),
                    // except to honour a longer Retry-After.
                    let asked_until = asked.map(|asked| clock::add(now, asked));
                    return match asked_until {
                        Some(asked_until) if asked_until > until => {
                            self.backoff_until = Some(asked_until);
                            true
                        }
                        _ => false,
                    };
                }
                if asked.is_some() || self.consecutive_failures >= FAILURES_BEFORE_BACKOFF {
                    self.backoff_level = self.backoff_level.saturating_add(1);
                    let wait = asked.unwrap_or_else(|| {
                        record::retry_wait(policy, self.backoff_level, jitter_unit)
                    });
                    self.backoff_until = Some(clock::add(now, wait));
                    true
                } else {
                    false
                }
            }
            Outcome::Rejected { .. } | Outcome::Empty => false,
        }
    }

    pub fn is_backing_off(&self) -> bool {
        self.backoff_until.is_some()
    }
}

/// What the planner needs to know about one lane.
#[derive(Debug, Clone, PartialEq)]
pub struct LaneView {
    pub paused: bool,
    /// Its format plugin is loaded and its connection exists.
    pub ready: bool,
    pub max_workers: usize,
    /// Sends under way (building a payload or waiting for the remote); a
    /// record whose outcome is being committed no longer counts.
    pub sending: usize,
    pub health: Health,
    /// Due records already fetched from the store.
    pub buffered: usize,
    /// The earliest due time not fetched, when known (`None`: nothing more).
    pub next_due: Option<i64>,
}

impl LaneView {
    /// Whether the lane takes part in sending at all: a paused lane, or one
    /// whose plugin is missing, sends nothing and costs nothing.
    fn sends(&self) -> bool {
        !self.paused && self.ready
    }
}

/// What one lane does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LanePlan {
    /// Nothing to do and nothing to wake for.
    Idle,
    /// Nothing now; look again at this time.
    WaitUntil(i64),
    /// Start up to this many sends now (fetching due records as needed).
    Send(usize),
}

/// The whole plan: one entry per lane, in the order given, and the earliest
/// time any of them wants to be looked at again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub lanes: Vec<LanePlan>,
    pub wake_at: Option<i64>,
}

/// The most sends one lane may have at once: no lane takes more than an equal
/// share of the global slots, so a slow remote cannot hold every one while a
/// healthy one waits. Lanes that send nothing do not count.
pub fn fair_share(max_in_flight: usize, lanes: &[LaneView]) -> usize {
    let sending = lanes.iter().filter(|lane| lane.sends()).count();
    (max_in_flight / sending.max(1)).max(1)
}

/// Decides, at `now`, how many sends each lane starts, given `free_slots`
/// of the `max_in_flight` global ones (handed out in lane order).
pub fn plan(lanes: &[LaneView], max_in_flight: usize, free_slots: usize, now: i64) -> Plan {
    let share = fair_share(max_in_flight, lanes);
    let mut free_slots = free_slots;
    let mut wake_at: Option<i64> = None;
    let mut wake = |at: i64| wake_at = Some(wake_at.map_or(at, |known| known.min(at)));
    let lanes = lanes
        .iter()
        .map(|lane| {
            if !lane.sends() {
                return LanePlan::Idle;
            }
            let capacity = match lane.health.backoff_until {
                Some(until) if until > now => {
                    wake(until);
                    return LanePlan::WaitUntil(until);
                }
                // Back-off over: one probe at a time until a success.
                Some(_) => 1,
                None => lane.max_workers.max(1).min(share),
            };
            let room = capacity.saturating_sub(lane.sending);
            if room == 0 {
                // A finishing send wakes the scheduler.
                return LanePlan::Send(0);
            }
            if lane.buffered == 0 {
                match lane.next_due {
                    None => return LanePlan::Idle,
                    Some(at) if at > now => {
                        wake(at);
                        return LanePlan::WaitUntil(at);
                    }
                    Some(_) => {}
                }
            }
            let starts = room.min(free_slots);
            free_slots -= starts;
            LanePlan::Send(starts)
        })
        .collect();
    Plan { lanes, wake_at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::retry_afters_past;

    const SECOND: i64 = 1_000_000;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            min_wait: Duration::from_secs(10),
            max_wait: Duration::from_secs(100),
            factor: 2.0,
        }
    }

    fn failure() -> Outcome {
        Outcome::Retryable {
            status: Some(503),
            retry_after: None,
            error: "remote answered 503".into(),
        }
    }

    fn throttled(retry_after: Duration) -> Outcome {
        Outcome::Retryable {
            status: Some(429),
            retry_after: Some(retry_after),
            error: "remote answered 429".into(),
        }
    }

    /// A healthy lane with plenty due.
    fn lane(max_workers: usize) -> LaneView {
        LaneView {
            paused: false,
            ready: true,
            max_workers,
            sending: 0,
            health: Health::default(),
            buffered: 100,
            next_due: Some(0),
        }
    }

    fn plan_one(lane: LaneView, now: i64) -> LanePlan {
        plan(&[lane], 64, 64, now).lanes[0]
    }

    #[test]
    fn a_lane_backs_off_after_consecutive_failures_and_recovers_on_success() {
        let mut health = Health::default();
        assert!(!health.observe(&failure(), &policy(), 0, 0.0));
        assert!(!health.observe(&failure(), &policy(), 0, 0.0));
        assert!(health.observe(&failure(), &policy(), 0, 0.0));
        assert_eq!(health.backoff_until, Some(10 * SECOND));
        // The probe after the back-off fails too.
        health.observe(&failure(), &policy(), 10 * SECOND, 0.0);
        assert_eq!(
            health.backoff_until,
            Some(30 * SECOND),
            "back-off grows like a record's wait"
        );
        assert!(health.observe(&Outcome::Success { status: 200 }, &policy(), 0, 0.0));
        assert_eq!(health, Health::default());
    }

    #[test]
    fn sends_failing_together_back_off_once() {
        let mut health = Health::default();
        for _ in 0..3 {
            health.observe(&failure(), &policy(), 0, 0.0);
        }
        assert_eq!(health.backoff_until, Some(10 * SECOND));
        // Five more sends that were under way fail while it backs off.
        for at in 1..=5 {
            assert!(!health.observe(&failure(), &policy(), at, 0.0));
        }
        assert_eq!(
            health.backoff_until,
            Some(10 * SECOND),
            "not grown by sends started before it"
        );
        assert_eq!(health.backoff_level, 1);
        // One of them asks for longer: granted, without growing the level.
        assert!(health.observe(&throttled(Duration::from_secs(60)), &policy(), 6, 0.0));
        assert_eq!(health.backoff_until, Some(60 * SECOND + 6));
        assert_eq!(health.backoff_level, 1);
    }

    #[test]
    fn retry_after_backs_off_at_once_for_as_long_as_asked() {
        let mut health = Health::default();
        assert!(health.observe(&throttled(Duration::from_secs(7)), &policy(), 1, 0.0));
        assert_eq!(health.backoff_until, Some(7 * SECOND + 1));
    }

    #[test]
    fn retry_after_holds_a_lane_back_at_most_max_wait_and_never_wraps() {
        for asked in retry_afters_past(policy().max_wait) {
            let mut health = Health::default();
            assert!(health.observe(&throttled(asked), &policy(), 5, 0.0));
            assert_eq!(health.backoff_until, Some(100 * SECOND + 5), "{asked:?}");
        }
        let endless = RetryPolicy {
            max_wait: Duration::MAX,
            ..policy()
        };
        let mut health = Health::default();
        health.observe(&throttled(Duration::MAX), &endless, i64::MAX - 1, 0.0);
        assert_eq!(health.backoff_until, Some(i64::MAX));
        // A later, longer ask while backing off saturates too.
        health.backoff_until = Some(i64::MAX - 1);
        health.observe(&throttled(Duration::MAX), &endless, i64::MAX - 2, 0.0);
        assert_eq!(health.backoff_until, Some(i64::MAX));
    }

    #[test]
    fn rejections_do_not_count_as_the_remote_failing() {
        let mut health = Health::default();
        let rejected = Outcome::Rejected {
            status: Some(400),
            error: "bad".into(),
        };
        for _ in 0..10 {
            assert!(!health.observe(&rejected, &policy(), 0, 0.0));
        }
        assert_eq!(health, Health::default());
    }

    #[test]
    fn a_healthy_lane_sends_up_to_max_workers() {
        assert_eq!(plan_one(lane(4), 0), LanePlan::Send(4));
        let busy = LaneView {
            sending: 3,
            ..lane(4)
        };
        assert_eq!(plan_one(busy, 0), LanePlan::Send(1));
        let full = LaneView {
            sending: 4,
            ..lane(4)
        };
        assert_eq!(plan_one(full, 0), LanePlan::Send(0));
        let zero = lane(0);
        assert_eq!(
            plan_one(zero, 0),
            LanePlan::Send(1),
            "max_workers 0 means 1"
        );
    }

    #[test]
    fn a_backing_off_lane_waits_then_sends_one_probe_at_a_time() {
        let mut failing = lane(8);
        for _ in 0..FAILURES_BEFORE_BACKOFF {
            failing.health.observe(&failure(), &policy(), 0, 0.0);
        }
        let plan_at = |lane: &LaneView, now| plan(std::slice::from_ref(lane), 64, 64, now);
        let waiting = plan_at(&failing, 9 * SECOND);
        assert_eq!(waiting.lanes, [LanePlan::WaitUntil(10 * SECOND)]);
        assert_eq!(waiting.wake_at, Some(10 * SECOND), "woken when it ends");
        assert_eq!(plan_at(&failing, 10 * SECOND).lanes, [LanePlan::Send(1)]);
        failing.sending = 1;
        assert_eq!(
            plan_at(&failing, 11 * SECOND).lanes,
            [LanePlan::Send(0)],
            "no second probe while one is under way"
        );
        // The probe succeeds: full speed at once.
        failing.sending = 0;
        failing.health.observe(
            &Outcome::Success { status: 200 },
            &policy(),
            11 * SECOND,
            0.0,
        );
        assert_eq!(plan_at(&failing, 11 * SECOND).lanes, [LanePlan::Send(8)]);
    }

    #[test]
    fn a_throttled_lane_stops_at_once() {
        let mut throttled_lane = lane(8);
        throttled_lane
            .health
            .observe(&throttled(Duration::from_secs(3)), &policy(), 0, 0.0);
        assert_eq!(
            plan_one(throttled_lane, 2 * SECOND),
            LanePlan::WaitUntil(3 * SECOND)
        );
    }

    #[test]
    fn paused_lanes_and_lanes_without_their_plugin_send_nothing_and_cost_nothing() {
        let paused = LaneView {
            paused: true,
            ..lane(4)
        };
        let no_plugin = LaneView {
            ready: false,
            next_due: Some(5 * SECOND),
            ..lane(4)
        };
        let healthy = lane(64);
        let plan = plan(&[paused, no_plugin, healthy], 8, 8, 0);
        assert_eq!(
            plan.lanes,
            [LanePlan::Idle, LanePlan::Idle, LanePlan::Send(8)],
            "the healthy lane gets every slot: the others do not count"
        );
        assert_eq!(plan.wake_at, None, "nothing to wake for");
    }

    #[test]
    fn lanes_get_a_fair_share_of_max_in_flight() {
        let lanes = [lane(64), lane(64), lane(64), lane(2)];
        assert_eq!(fair_share(8, &lanes), 2);
        assert_eq!(
            plan(&lanes, 8, 8, 0).lanes,
            [
                LanePlan::Send(2),
                LanePlan::Send(2),
                LanePlan::Send(2),
                LanePlan::Send(2)
            ]
        );
        assert_eq!(fair_share(2, &lanes), 1, "every lane gets at least one");
    }

    #[test]
    fn free_global_slots_are_handed_out_in_order() {
        let lanes = [lane(4), lane(4), lane(4)];
        assert_eq!(
            plan(&lanes, 12, 5, 0).lanes,
            [LanePlan::Send(4), LanePlan::Send(1), LanePlan::Send(0)]
        );
    }

    #[test]
    fn a_lane_with_nothing_due_waits_for_its_next_due_record() {
        let later = LaneView {
            buffered: 0,
            next_due: Some(7 * SECOND),
            ..lane(4)
        };
        let plan_later = plan(std::slice::from_ref(&later), 8, 8, SECOND);
        assert_eq!(plan_later.lanes, [LanePlan::WaitUntil(7 * SECOND)]);
        assert_eq!(plan_later.wake_at, Some(7 * SECOND));
        let due = LaneView {
            next_due: Some(SECOND),
            ..later.clone()
        };
        assert_eq!(plan_one(due, SECOND), LanePlan::Send(4));
        let empty = LaneView {
            next_due: None,
            ..later
        };
        assert_eq!(plan_one(empty, SECOND), LanePlan::Idle);
    }
}
