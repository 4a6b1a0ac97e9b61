//! `[cache]`: sizes and the expiry margin of the token caches.
//!
//! `max_memory` bounds the validated-token and exchanged-token caches together by the bytes
//! their entries hold; moka bounds each cache on its own, so every cache gets an equal share
//! ([`CacheConfig::max_memory_per_cache`]). The entry counts stay as upper limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, ConfigError, duration_str};

/// `[cache]`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::CacheConfig;
/// let cache = CacheConfig::default();
/// assert_eq!(cache.obo_capacity, 100_000);
/// assert_eq!(cache.expiry_margin, Duration::from_secs(120));
/// assert_eq!(cache.max_memory.bytes(), 64 << 20);
/// let small: CacheConfig = toml::from_str(r#"max_memory = "8MiB""#)?;
/// assert_eq!(small.max_memory.bytes(), 8 << 20);
/// # Ok::<(), toml::de::Error>(())
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
    /// The bytes all validated-token and exchanged-token caches may hold together (`64MiB`,
    /// `512KiB`, `1GiB` or plain bytes). Each cache gets an equal share of it.
    pub max_memory: ByteSize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            obo_capacity: 100_000,
            validation_capacity: 100_000,
            expiry_margin: Duration::from_secs(120),
            max_memory: ByteSize::new(DEFAULT_MAX_MEMORY),
        }
    }
}

/// `max_memory`'s default: 64 MiB.
pub(crate) const DEFAULT_MAX_MEMORY: u64 = 64 << 20;

/// The least `max_memory`: below this a share could not hold one Entra-sized token.
const MIN_MAX_MEMORY: u64 = 64 << 10;

impl CacheConfig {
    /// Refuses a capacity of 0, which would cache nothing, and a `max_memory` too small to
    /// hold a token.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if self.obo_capacity == 0 || self.validation_capacity == 0 {
            return Err(ConfigError::invalid(
                "cache",
                "capacities must be greater than 0",
            ));
        }
        if self.max_memory.bytes() < MIN_MAX_MEMORY {
            return Err(ConfigError::invalid(
                "cache",
                format!(
                    "max_memory = \"{}\" is too small: at least {} (a cache holds whole tokens)",
                    self.max_memory,
                    ByteSize::new(MIN_MAX_MEMORY)
                ),
            ));
        }
        Ok(())
    }

    /// The bytes each token cache may hold when `providers` providers are configured: every
    /// provider has a validation cache and an exchange cache, and each gets an equal share of
    /// `max_memory`, so together they never hold more (moka cannot share one bound among
    /// caches; a share idle in one cache is not lent to another).
    ///
    /// ```
    /// let cache = tollgate::config::CacheConfig::default(); // 64MiB
    /// assert_eq!(cache.max_memory_per_cache(1), 32 << 20);
    /// assert_eq!(cache.max_memory_per_cache(4), 8 << 20);
    /// ```
    pub fn max_memory_per_cache(&self, providers: usize) -> u64 {
        let caches = 2 * u64::try_from(providers.max(1)).unwrap_or(u64::MAX / 2);
        self.max_memory.bytes() / caches
    }
}
