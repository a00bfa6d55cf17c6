//! Outbound delivery settings shared by every repeater, as `[delivery]` sets them.

use std::time::Duration;

use serde::Deserialize;

use crate::egress::IpNet;
use crate::field::FieldError;
use crate::units;

/// Outbound delivery settings shared by every repeater. Keys left out of
/// `[delivery]` keep their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Sends under way at once, over all repeaters.
    pub max_in_flight: usize,
    /// Request timeout for connections that set none.
    #[serde(with = "units::duration")]
    pub default_timeout: Duration,
    /// Private networks connections may reach; empty means public addresses only.
    pub allowed_networks: Vec<IpNet>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 256,
            default_timeout: Duration::from_secs(30),
            allowed_networks: Vec::new(),
        }
    }
}

impl DeliveryConfig {
    /// Field names are relative to `[delivery]`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.max_in_flight < 1 {
            return Err(FieldError::new("max_in_flight", "must be at least 1"));
        }
        if self.default_timeout.is_zero() {
            return Err(FieldError::new(
                "default_timeout",
                "must be longer than zero",
            ));
        }
        Ok(())
    }
}
