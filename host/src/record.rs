//! Repeat records and their life cycle: the states of SPEC section 6, the
//! classification of a delivery attempt's outcome (from the HTTP status, or
//! from the typed [`DeliveryError`] when there was none), the retry
//! arithmetic (saturating, `Retry-After` honoured up to `max_wait`) and the
//! operator actions. Everything here is a plain function over plain
//! types; the store persists the result of each transition in one write
//! transaction, the scheduler decides when to call them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::repeater::PayloadKind;

mod retry_policy;
pub use retry_policy::{RetryOverride, RetryPolicy};

/// Where a record stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// Registered, not yet attempted (or handed back by an operator).
    Pending,
    /// The remote accepted it.
    Succeeded,
    /// The last attempt failed; it will be retried at `next_attempt_at`.
    Failed,
    /// Given up after `max_attempts`, or cancelled by an operator.
    Cancelled,
    /// The format plugin decided there was nothing to send.
    Empty,
    /// The remote refused the payload as invalid, or the plugin failed on it.
    Rejected,
}

impl RecordState {
    pub const ALL: [RecordState; 6] = [
        RecordState::Pending,
        RecordState::Succeeded,
        RecordState::Failed,
        RecordState::Cancelled,
        RecordState::Empty,
        RecordState::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordState::Pending => "pending",
            RecordState::Succeeded => "succeeded",
            RecordState::Failed => "failed",
            RecordState::Cancelled => "cancelled",
            RecordState::Empty => "empty",
            RecordState::Rejected => "rejected",
        }
    }

    /// Whether the scheduler still has work to do for a record in this state.
    pub fn is_queued(self) -> bool {
        matches!(self, RecordState::Pending | RecordState::Failed)
    }
}

impl std::str::FromStr for RecordState {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RecordState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown state \"{text}\" (one of pending, succeeded, failed, cancelled, empty, rejected)"
                )
            })
    }
}

/// What kind of app change an `app-schema` record carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppChange {
    Saved,
    Built,
}

/// What a record forwards: a reference, resolved at send time so that a case
/// record carries the case's latest state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PayloadRef {
    Form {
        form_id: String,
    },
    Case {
        case_id: String,
    },
    App {
        app_id: String,
        change: AppChange,
        build_id: Option<String>,
    },
}

impl PayloadRef {
    /// The id an operator searches by: the form, case or app id.
    pub fn payload_id(&self) -> &str {
        match self {
            PayloadRef::Form { form_id } => form_id,
            PayloadRef::Case { case_id } => case_id,
            PayloadRef::App { app_id, .. } => app_id,
        }
    }
}

/// One payload for one repeater.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepeatRecord {
    /// The store's key; the public id is derived from it (see `store`).
    pub seq: u64,
    pub domain: String,
    pub repeater: String,
    /// The repeater's numeric key in the store's due index.
    pub repeater_id: u64,
    pub kind: PayloadKind,
    pub payload: PayloadRef,
    pub state: RecordState,
    /// Every attempt ever made, across requeues.
    pub n_attempts: u32,
    /// `n_attempts` when the record was last registered or requeued: the
    /// attempt budget counts from here.
    pub budget_start: u32,
    pub registered_at: i64,
    /// When the scheduler will next try it (micros); `None` when final.
    pub next_attempt_at: Option<i64>,
    pub last_attempt_at: Option<i64>,
    /// The last failure's reason, for listings.
    pub last_error: Option<String>,
}

impl RepeatRecord {
    pub fn new(
        seq: u64,
        domain: &str,
        repeater: &str,
        repeater_id: u64,
        kind: PayloadKind,
        payload: PayloadRef,
        now: i64,
    ) -> Self {
        RepeatRecord {
            seq,
            domain: domain.to_owned(),
            repeater: repeater.to_owned(),
            repeater_id,
            kind,
            payload,
            state: RecordState::Pending,
            n_attempts: 0,
            budget_start: 0,
            registered_at: now,
            next_attempt_at: Some(now),
            last_attempt_at: None,
            last_error: None,
        }
    }

    /// Failed attempts that count against the current budget.
    pub fn attempts_in_budget(&self) -> u32 {
        self.n_attempts - self.budget_start
    }
}

/// One delivery attempt, as the records API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub number: u32,
    pub at: i64,
    pub duration_ms: u64,
    pub url: String,
    pub status: Option<u16>,
    /// The first 64 KiB of the response body.
    pub response: Option<String>,
    pub error: Option<String>,
}

/// How one attempt ended, classified once from the HTTP exchange (or the
/// plugin call) and never from strings.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// 2xx.
    Success { status: u16 },
    /// Worth trying again later: connection error, timeout, 5xx, 408, 409,
    /// 423, 425, 429 and the repeater's extra codes. `retry_after` is the
    /// remote's `Retry-After`, when it sent one.
    Retryable {
        status: Option<u16>,
        retry_after: Option<Duration>,
        error: String,
    },
    /// The remote refused the payload (other 4xx) or the plugin failed on it:
    /// not retried until an operator requeues it.
    Rejected { status: Option<u16>, error: String },
    /// The format plugin had nothing to send.
    Empty,
}

impl Outcome {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Success { .. } => "success",
            Outcome::Retryable { .. } => "retryable",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Empty => "empty",
        }
    }
}

/// The status codes retried by default, besides every 5xx.
pub const DEFAULT_RETRY_CODES: [u16; 5] = [408, 409, 423, 425, 429];

/// Classifies an HTTP status. `retry_codes_add`/`retry_codes_remove` are the
/// repeater's adjustments; a removed 5xx becomes a rejection, an added 4xx a
/// retry.
pub fn classify_status(
    status: u16,
    body_excerpt: &str,
    retry_after: Option<Duration>,
    retry_codes_add: &[u16],
    retry_codes_remove: &[u16],
) -> Outcome {
    if (200..300).contains(&status) {
        return Outcome::Success { status };
    }
    let retryable_by_default = status >= 500 || DEFAULT_RETRY_CODES.contains(&status);
    let retryable = (retryable_by_default || retry_codes_add.contains(&status))
        && !retry_codes_remove.contains(&status);
    let error = if body_excerpt.is_empty() {
        format!("remote answered {status}")
    } else {
        format!("remote answered {status}: {body_excerpt}")
    };
    if retryable {
        Outcome::Retryable {
            status: Some(status),
            retry_after,
            error,
        }
    } else {
        Outcome::Rejected {
            status: Some(status),
            error,
        }
    }
}

/// Why an attempt got no usable answer from the remote (or never reached
/// it). `Display` is the text the attempt keeps and operators read;
/// [`classify_failure`] decides, from the variant alone, what it means for
/// the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The remote did not answer within the connection's timeout.
    #[error("timed out after {} ms", .after.as_millis())]
    Timeout { after: Duration },
    /// The egress policy refused the address (its own words).
    #[error("{reason}")]
    EgressRefused { reason: String },
    /// No connection could be made; `causes` is `": cause: cause…"`.
    #[error("connection failed{causes}")]
    Connect { causes: String },
    /// The TLS handshake failed (certificate, protocol); said like `Connect`.
    #[error("connection failed{causes}")]
    Tls { causes: String },
    /// The request broke off after the connection was made.
    #[error("request failed{causes}")]
    Request { causes: String },
    /// The remote sent a status, then its answer broke off (closed or
    /// garbled before the body's end).
    #[error("remote answered {status}, then the answer broke off{causes}")]
    AnswerBrokeOff { status: u16, causes: String },
    /// An auth scheme could not make its headers (a digest challenge that
    /// cannot be answered, an auth plugin that is missing or failed, a header
    /// it made that HTTP cannot carry).
    #[error("{reason}")]
    AuthSchemeFailed { reason: String },
    /// The OAuth2 token endpoint answered with an error status.
    #[error("oauth2 token request to {url} failed: answered {status}: {excerpt}")]
    TokenEndpointAnswered {
        url: String,
        status: u16,
        excerpt: String,
    },
    /// The OAuth2 token endpoint was not reached, or its answer was unusable.
    #[error("oauth2 token request to {url} failed: {problem}")]
    TokenEndpointFailed { url: String, problem: String },
    /// The format plugin failed on this payload (or the store no longer has
    /// what it needs): nothing was sent.
    #[error("{reason}")]
    PluginFailed { reason: String },
    /// What the plugin built cannot be sent (a bad URL or header).
    #[error("{reason}")]
    RequestInvalid { reason: String },
}

/// What a failure means for the record: the remote (or the way to it) may
/// work later, so network, timeout and auth failures are retried; a payload
/// that cannot be built or sent is rejected until an operator requeues it.
pub fn classify_failure(error: &DeliveryError) -> Outcome {
    let text = error.to_string();
    match error {
        DeliveryError::Timeout { .. }
        | DeliveryError::EgressRefused { .. }
        | DeliveryError::Connect { .. }
        | DeliveryError::Tls { .. }
        | DeliveryError::Request { .. }
        | DeliveryError::AnswerBrokeOff { .. }
        | DeliveryError::AuthSchemeFailed { .. }
        | DeliveryError::TokenEndpointAnswered { .. }
        | DeliveryError::TokenEndpointFailed { .. } => Outcome::Retryable {
            status: None,
            retry_after: None,
            error: text,
        },
        DeliveryError::PluginFailed { .. } | DeliveryError::RequestInvalid { .. } => {
            Outcome::Rejected {
                status: None,
                error: text,
            }
        }
    }
}

/// The wait after the `failures`-th failed attempt (1-based): `min_wait`,
/// then `factor` times longer each time, capped at `max_wait`, then varied by
/// `jitter_unit` in [-1, 1] scaled to ±20%.
pub fn retry_wait(policy: &RetryPolicy, failures: u32, jitter_unit: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(1_000) as i32;
    let base = policy.min_wait.as_secs_f64() * policy.factor.powi(exponent);
    let capped = base.min(policy.max_wait.as_secs_f64());
    let jittered = capped * (1.0 + 0.2 * jitter_unit.clamp(-1.0, 1.0));
    // Too long for a `Duration` (a `max_wait` near its end) saturates.
    Duration::try_from_secs_f64(jittered.max(0.0)).unwrap_or(Duration::MAX)
}

/// The wait when the remote sent `Retry-After: asked`: as long as it asks,
/// up to the policy's `max_wait` (SPEC section 6), and never shorter than
/// `at_least` (the policy's own wait).
pub fn honoured_wait(policy: &RetryPolicy, asked: Duration, at_least: Duration) -> Duration {
    asked.min(policy.max_wait).max(at_least)
}

/// What `after_attempt` decided, for the caller's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Final(RecordState),
    RetryAt(i64),
}

/// Applies one attempt's outcome to the record: the state machine's only
/// transition out of `pending`/`failed` other than an operator's.
pub fn after_attempt(
    record: &mut RepeatRecord,
    outcome: &Outcome,
    policy: &RetryPolicy,
    now: i64,
    jitter_unit: f64,
) -> Verdict {
    record.last_attempt_at = Some(now);
    if !matches!(outcome, Outcome::Empty) {
        record.n_attempts += 1;
    }
    let verdict = match outcome {
        Outcome::Success { .. } => {
            record.last_error = None;
            Verdict::Final(RecordState::Succeeded)
        }
        Outcome::Empty => Verdict::Final(RecordState::Empty),
        Outcome::Rejected { error, .. } => {
            record.last_error = Some(error.clone());
            Verdict::Final(RecordState::Rejected)
        }
        Outcome::Retryable {
            retry_after, error, ..
        } => {
            record.last_error = Some(error.clone());
            let failures = record.attempts_in_budget();
            if failures >= policy.max_attempts {
                Verdict::Final(RecordState::Cancelled)
            } else {
                let computed = retry_wait(policy, failures, jitter_unit);
                let wait =
                    retry_after.map_or(computed, |asked| honoured_wait(policy, asked, computed));
                Verdict::RetryAt(crate::clock::add(now, wait))
            }
        }
    };
    match verdict {
        Verdict::Final(state) => {
            record.state = state;
            record.next_attempt_at = None;
        }
        Verdict::RetryAt(at) => {
            record.state = RecordState::Failed;
            record.next_attempt_at = Some(at);
        }
    }
    verdict
}

/// What an operator can do to a record (SPEC section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperatorAction {
    /// Send again now, whatever the state; the attempt budget is unchanged.
    Resend,
    /// Give up on it.
    Cancel,
    /// Back to `pending` with a fresh attempt budget.
    Requeue,
}

impl std::str::FromStr for OperatorAction {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "resend" => Ok(OperatorAction::Resend),
            "cancel" => Ok(OperatorAction::Cancel),
            "requeue" => Ok(OperatorAction::Requeue),
            other => Err(format!(
                "unknown action \"{other}\" (one of resend, cancel, requeue)"
            )),
        }
    }
}

/// Applies an operator's action. Returns false when it changes nothing
/// (cancelling a record that is already final).
pub fn apply_operator(record: &mut RepeatRecord, action: OperatorAction, now: i64) -> bool {
    match action {
        OperatorAction::Resend => {
            record.state = RecordState::Pending;
            record.next_attempt_at = Some(now);
            true
        }
        OperatorAction::Requeue => {
            record.state = RecordState::Pending;
            record.budget_start = record.n_attempts;
            record.next_attempt_at = Some(now);
            true
        }
        OperatorAction::Cancel => {
            if record.state.is_queued() {
                record.state = RecordState::Cancelled;
                record.next_attempt_at = None;
                true
            } else {
                false
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `Retry-After` waits past `max_wait`: just past it, and the longest a
    /// header can ask for.
    pub(crate) fn retry_afters_past(max_wait: Duration) -> [Duration; 3] {
        [
            max_wait + Duration::from_secs(1),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
        ]
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            min_wait: Duration::from_secs(60),
            max_wait: Duration::from_secs(600),
            factor: 3.0,
        }
    }

    fn record() -> RepeatRecord {
        RepeatRecord::new(
            1,
            "demo",
            "cases",
            7,
            PayloadKind::Case,
            PayloadRef::Case {
                case_id: "c1".into(),
            },
            1_000,
        )
    }

    fn retryable() -> Outcome {
        Outcome::Retryable {
            status: Some(500),
            retry_after: None,
            error: "remote answered 500".into(),
        }
    }

    #[test]
    fn new_record_is_pending_and_due_at_once() {
        let r = record();
        assert_eq!(r.state, RecordState::Pending);
        assert_eq!(r.next_attempt_at, Some(1_000));
        assert_eq!(r.n_attempts, 0);
    }

    #[test]
    fn success_is_final() {
        let mut r = record();
        let v = after_attempt(
            &mut r,
            &Outcome::Success { status: 201 },
            &policy(),
            2_000,
            0.0,
        );
        assert_eq!(v, Verdict::Final(RecordState::Succeeded));
        assert_eq!(r.state, RecordState::Succeeded);
        assert_eq!(r.n_attempts, 1);
        assert_eq!(r.next_attempt_at, None);
    }

    #[test]
    fn empty_is_final_and_not_an_attempt() {
        let mut r = record();
        after_attempt(&mut r, &Outcome::Empty, &policy(), 2_000, 0.0);
        assert_eq!(r.state, RecordState::Empty);
        assert_eq!(r.n_attempts, 0);
    }

    #[test]
    fn rejection_is_final_with_reason() {
        let mut r = record();
        let outcome = Outcome::Rejected {
            status: Some(400),
            error: "remote answered 400: bad".into(),
        };
        after_attempt(&mut r, &outcome, &policy(), 2_000, 0.0);
        assert_eq!(r.state, RecordState::Rejected);
        assert_eq!(r.last_error.as_deref(), Some("remote answered 400: bad"));
    }

    #[test]
    fn failures_back_off_by_factor_then_cancel() {
        let mut r = record();
        let v1 = after_attempt(&mut r, &retryable(), &policy(), 0, 0.0);
        assert_eq!(v1, Verdict::RetryAt(60_000_000));
        assert_eq!(r.state, RecordState::Failed);
        let v2 = after_attempt(&mut r, &retryable(), &policy(), 0, 0.0);
        assert_eq!(v2, Verdict::RetryAt(180_000_000));
        let v3 = after_attempt(&mut r, &retryable(), &policy(), 0, 0.0);
        assert_eq!(v3, Verdict::Final(RecordState::Cancelled));
        assert_eq!(r.n_attempts, 3);
        assert_eq!(r.next_attempt_at, None);
    }

    #[test]
    fn waits_are_capped_and_jittered_within_twenty_percent() {
        let p = RetryPolicy {
            max_attempts: 100,
            ..policy()
        };
        assert_eq!(retry_wait(&p, 10, 0.0), Duration::from_secs(600));
        assert_eq!(retry_wait(&p, 1, 1.0), Duration::from_secs(72));
        assert_eq!(retry_wait(&p, 1, -1.0), Duration::from_secs(48));
        assert_eq!(retry_wait(&p, 1, 5.0), Duration::from_secs(72));
    }

    #[test]
    fn retry_after_is_honoured() {
        let mut r = record();
        let outcome = Outcome::Retryable {
            status: Some(429),
            retry_after: Some(Duration::from_secs(120)),
            error: "remote answered 429".into(),
        };
        let v = after_attempt(&mut r, &outcome, &policy(), 0, 0.0);
        assert_eq!(v, Verdict::RetryAt(120_000_000));
        // A short Retry-After never makes the wait shorter than the policy's.
        let mut r = record();
        let outcome = Outcome::Retryable {
            status: Some(429),
            retry_after: Some(Duration::from_secs(1)),
            error: "remote answered 429".into(),
        };
        assert_eq!(
            after_attempt(&mut r, &outcome, &policy(), 0, 0.0),
            Verdict::RetryAt(60_000_000)
        );
    }

    #[test]
    fn retry_after_is_capped_at_max_wait() {
        for asked in retry_afters_past(policy().max_wait) {
            let mut r = record();
            let outcome = Outcome::Retryable {
                status: Some(503),
                retry_after: Some(asked),
                error: "remote answered 503".into(),
            };
            assert_eq!(
                after_attempt(&mut r, &outcome, &policy(), 0, 0.0),
                Verdict::RetryAt(600_000_000),
                "{asked:?}"
            );
        }
    }

    #[test]
    fn retry_arithmetic_saturates_at_the_end_of_time() {
        let endless = RetryPolicy {
            max_attempts: 10,
            min_wait: Duration::MAX,
            max_wait: Duration::MAX,
            factor: 3.0,
        };
        assert_eq!(retry_wait(&endless, 5, 1.0), Duration::MAX);
        let mut r = record();
        let outcome = Outcome::Retryable {
            status: Some(429),
            retry_after: Some(Duration::MAX),
            error: "remote answered 429".into(),
        };
        assert_eq!(
            after_attempt(&mut r, &outcome, &endless, i64::MAX - 5, 1.0),
            Verdict::RetryAt(i64::MAX)
        );
    }

    #[test]
    fn network_and_auth_failures_are_retried_and_payload_failures_rejected() {
        let retried = [
            DeliveryError::Timeout {
                after: Duration::from_millis(1_500),
            },
            DeliveryError::EgressRefused {
                reason: "address 10.0.0.1 is private".into(),
            },
            DeliveryError::Connect {
                causes: ": tcp connect error: Connection refused".into(),
            },
            DeliveryError::Tls {
                causes: ": invalid peer certificate: UnknownIssuer".into(),
            },
            DeliveryError::Request {
                causes: ": connection closed before message completed".into(),
            },
            DeliveryError::AuthSchemeFailed {
                reason: "auth plugin \"hmac\" is not loaded".into(),
            },
            DeliveryError::TokenEndpointAnswered {
                url: "https://idp.example/token".into(),
                status: 500,
                excerpt: "down".into(),
            },
            DeliveryError::TokenEndpointFailed {
                url: "https://idp.example/token".into(),
                problem: "answer has no access_token".into(),
            },
        ];
        for error in retried {
            let expected = Outcome::Retryable {
                status: None,
                retry_after: None,
                error: error.to_string(),
            };
            assert_eq!(classify_failure(&error), expected);
        }
        for error in [
            DeliveryError::PluginFailed {
                reason: "plugin \"case-json\" failed: no case".into(),
            },
            DeliveryError::RequestInvalid {
                reason: "header \"x y\" is not a valid HTTP header".into(),
            },
        ] {
            assert!(
                matches!(
                    classify_failure(&error),
                    Outcome::Rejected { status: None, .. }
                ),
                "{error}"
            );
        }
    }

    #[test]
    fn failures_read_as_they_always_did() {
        let cases = [
            (
                DeliveryError::Timeout {
                    after: Duration::from_millis(1_500),
                },
                "timed out after 1500 ms",
            ),
            (
                DeliveryError::Connect {
                    causes: ": tcp connect error".into(),
                },
                "connection failed: tcp connect error",
            ),
            (
                DeliveryError::Tls {
                    causes: ": invalid peer certificate".into(),
                },
                "connection failed: invalid peer certificate",
            ),
            (
                DeliveryError::TokenEndpointAnswered {
                    url: "https://idp.example/token".into(),
                    status: 401,
                    excerpt: "{\"error\":\"invalid_client\"}".into(),
                },
                "oauth2 token request to https://idp.example/token failed: answered 401: {\"error\":\"invalid_client\"}",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
    }

    #[test]
    fn status_classification_follows_spec() {
        for status in [200, 201, 204, 299] {
            assert!(matches!(
                classify_status(status, "", None, &[], &[]),
                Outcome::Success { .. }
            ));
        }
        for status in [408, 409, 423, 425, 429, 500, 502, 503, 599] {
            assert!(
                matches!(
                    classify_status(status, "", None, &[], &[]),
                    Outcome::Retryable { .. }
                ),
                "{status}"
            );
        }
        for status in [300, 400, 401, 403, 404, 410, 422] {
            assert!(
                matches!(
                    classify_status(status, "", None, &[], &[]),
                    Outcome::Rejected { .. }
                ),
                "{status}"
            );
        }
        assert!(matches!(
            classify_status(404, "", None, &[404], &[]),
            Outcome::Retryable { .. }
        ));
        assert!(matches!(
            classify_status(409, "", None, &[], &[409]),
            Outcome::Rejected { .. }
        ));
        let Outcome::Rejected { error, .. } = classify_status(400, "no such form", None, &[], &[])
        else {
            panic!("400 is a rejection")
        };
        assert_eq!(error, "remote answered 400: no such form");
    }

    #[test]
    fn requeue_gives_a_fresh_budget() {
        let mut r = record();
        for _ in 0..3 {
            after_attempt(&mut r, &retryable(), &policy(), 0, 0.0);
        }
        assert_eq!(r.state, RecordState::Cancelled);
        assert!(apply_operator(&mut r, OperatorAction::Requeue, 5));
        assert_eq!(r.state, RecordState::Pending);
        assert_eq!(r.next_attempt_at, Some(5));
        assert_eq!(r.attempts_in_budget(), 0);
        let v = after_attempt(&mut r, &retryable(), &policy(), 10, 0.0);
        assert_eq!(v, Verdict::RetryAt(10 + 60_000_000));
        assert_eq!(r.n_attempts, 4);
    }

    #[test]
    fn resend_sends_now_whatever_the_state() {
        let mut r = record();
        after_attempt(&mut r, &Outcome::Success { status: 200 }, &policy(), 0, 0.0);
        assert!(apply_operator(&mut r, OperatorAction::Resend, 42));
        assert_eq!(r.state, RecordState::Pending);
        assert_eq!(r.next_attempt_at, Some(42));
    }

    #[test]
    fn cancel_stops_queued_records_only() {
        let mut r = record();
        assert!(apply_operator(&mut r, OperatorAction::Cancel, 1));
        assert_eq!(r.state, RecordState::Cancelled);
        assert_eq!(r.next_attempt_at, None);
        assert!(!apply_operator(&mut r, OperatorAction::Cancel, 2));
        let mut done = record();
        after_attempt(
            &mut done,
            &Outcome::Success { status: 200 },
            &policy(),
            0,
            0.0,
        );
        assert!(!apply_operator(&mut done, OperatorAction::Cancel, 1));
        assert_eq!(done.state, RecordState::Succeeded);
    }

    #[test]
    fn states_parse_from_their_names() {
        for state in RecordState::ALL {
            assert_eq!(state.as_str().parse::<RecordState>(), Ok(state));
        }
        assert!("done".parse::<RecordState>().is_err());
    }
}
