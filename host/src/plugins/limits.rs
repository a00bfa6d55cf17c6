//! The limits on every plugin call, as `[plugins]` sets them.

use std::time::Duration;

use serde::Deserialize;

use crate::field::FieldError;
use crate::units;

/// The smallest plugin memory limit: one WebAssembly page.
const MIN_PLUGIN_MEMORY: u64 = 64 * 1024;

/// Limits on every plugin call. Keys left out of `[plugins]` keep their defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginLimits {
    /// CPU time per call.
    #[serde(with = "units::duration")]
    pub timeout: Duration,
    /// Linear memory per instance, in bytes (`"64MiB"` or a number).
    #[serde(deserialize_with = "units::size")]
    pub memory: u64,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_millis(100),
            memory: 64 * 1024 * 1024,
        }
    }
}

impl PluginLimits {
    /// Field names are relative to `[plugins]`.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.timeout.is_zero() {
            return Err(FieldError::new("timeout", "must be longer than zero"));
        }
        if self.memory < MIN_PLUGIN_MEMORY {
            return Err(FieldError::new(
                "memory",
                format!("must be at least 64KiB, found {} bytes", self.memory),
            ));
        }
        Ok(())
    }
}
