//! `[cache]`: sizes and the expiry margin of the token caches.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration_str};

/// `[cache]`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::CacheConfig;
/// let cache = CacheConfig::default();
/// assert_eq!(cache.obo_capacity, 100_000);
/// assert_eq!(cache.expiry_margin, Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Most cached exchanged tokens.
    pub obo_capacity: u64,
    /// Most cached validated inbound tokens.
    pub validation_capacity: u64,
    /// A cached token is never handed out closer than this to its `exp`.
    #[serde(with = "duration_str")]
    pub expiry_margin: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            obo_capacity: 100_000,
            validation_capacity: 100_000,
            expiry_margin: Duration::from_secs(120),
        }
    }
}

impl CacheConfig {
    /// Refuses a capacity of 0, which would cache nothing.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.obo_capacity == 0 || self.validation_capacity == 0 {
            return Err(ConfigError::invalid(
                "cache",
                "capacities must be greater than 0",
            ));
        }
        Ok(())
    }
}
