//! The retry policy: how many attempts a record gets and how long it waits
//! between them, as `[retry]` sets it for every repeater and a repeater's own
//! `retry = { … }` overrides it. Plain values and their rules; the arithmetic
//! that uses them is in [`super`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::field::FieldError;
use crate::units::{self, format_duration};

/// When and how often a failed record is retried. Keys left out of `[retry]`
/// keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all; after the last one fails the record is cancelled.
    pub max_attempts: u32,
    /// The wait after the first failure.
    #[serde(with = "units::duration")]
    pub min_wait: Duration,
    /// No wait is longer than this.
    #[serde(with = "units::duration")]
    pub max_wait: Duration,
    /// Each wait is `factor` times the previous one.
    pub factor: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            min_wait: Duration::from_secs(60),
            max_wait: Duration::from_secs(7 * 86_400),
            factor: 3.0,
        }
    }
}

impl RetryPolicy {
    /// Checks the policy on its own; field names are relative to the policy.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.max_attempts < 1 {
            return Err(FieldError::new("max_attempts", "must be at least 1"));
        }
        check_factor(self.factor).map_err(|problem| FieldError::new("factor", problem))?;
        check_wait_order(self.min_wait, self.max_wait)
    }
}

/// A repeater's own retry settings; what it leaves out comes from `[retry]`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOverride {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::optional_duration"
    )]
    pub min_wait: Option<Duration>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "units::optional_duration"
    )]
    pub max_wait: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
}

impl RetryOverride {
    /// The policy this repeater runs on: its own values over `defaults`.
    pub fn resolve(&self, defaults: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            min_wait: self.min_wait.unwrap_or(defaults.min_wait),
            max_wait: self.max_wait.unwrap_or(defaults.max_wait),
            factor: self.factor.unwrap_or(defaults.factor),
        }
    }

    /// Checks the values given; the resolved policy is checked by the caller,
    /// who knows the defaults (see [`RetryPolicy::validate`]).
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.max_attempts == Some(0) {
            return Err(FieldError::new("max_attempts", "must be at least 1"));
        }
        if let Some(factor) = self.factor {
            check_factor(factor).map_err(|problem| FieldError::new("factor", problem))?;
        }
        if let (Some(min_wait), Some(max_wait)) = (self.min_wait, self.max_wait) {
            check_wait_order(min_wait, max_wait)?;
        }
        Ok(())
    }
}

fn check_factor(factor: f64) -> Result<(), String> {
    if factor.is_finite() && factor >= 1.0 {
        Ok(())
    } else {
        Err(format!("must be a number of at least 1.0, found {factor}"))
    }
}

fn check_wait_order(min_wait: Duration, max_wait: Duration) -> Result<(), FieldError> {
    if min_wait > max_wait {
        return Err(FieldError::new(
            "min_wait",
            format!(
                "must not be longer than max_wait ({} > {})",
                format_duration(min_wait),
                format_duration(max_wait)
            ),
        ));
    }
    Ok(())
}
