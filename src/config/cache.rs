//! `[cache]`: sizes and the expiry margin of the token caches, and the exchange cache shared by
//! replicas through Redis (`shared = "redis"`).
//!
//! `max_memory` bounds the validated-token and exchanged-token caches together by the bytes
//! their entries hold; each cache is bounded on its own, so every cache gets an equal share
//! ([`CacheConfig::max_memory_per_cache`]). The entry counts stay as upper limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ByteSize, ConfigError, duration_str};
use crate::store::{StoreConfig, StoreKind};

/// `[cache]`.
///
/// ```
/// use std::time::Duration;
/// use tollgate::config::{CacheConfig, SharedCache};
/// let cache = CacheConfig::default();
/// assert_eq!(cache.obo_capacity, 100_000);
/// assert_eq!(cache.expiry_margin, Duration::from_secs(120));
/// assert_eq!(cache.shared, SharedCache::None);
/// assert_eq!(cache.redis_timeout, Duration::from_millis(200));
/// assert_eq!(cache.max_memory.bytes(), 64 << 20);
/// let small: CacheConfig = toml::from_str(r#"max_memory = "8MiB""#)?;
/// assert_eq!(small.max_memory.bytes(), 8 << 20);
/// # Ok::<(), toml::de::Error>(())
/// ```
#[derive(Clone, PartialEq, Deserialize, Serialize)]
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
    /// Where exchanged tokens are shared with other replicas: nowhere (default), or Redis.
    pub shared: SharedCache,
    /// The Redis of the shared cache; without it, `[store] url` when the store is Redis.
    /// Serialized (`tollgate check`) with its password masked.
    #[serde(serialize_with = "crate::store::serialize_redacted_url")]
    pub redis_url: Option<String>,
    /// Upper bound of each shared-cache Redis call: past it the exchange goes to the IdP.
    #[serde(with = "duration_str")]
    pub redis_timeout: Duration,
}

/// `[cache] shared`: where exchanged tokens are shared between replicas.
///
/// ```
/// use tollgate::config::{Config, MapEnv, SharedCache};
/// let text = "[cache]\nshared = \"redis\"\nredis_url = \"redis://cache:6379\"\n\
///             [store]\nencryption_keys_file = \"keys\"\n";
/// let cfg = Config::from_toml_str(text, &MapEnv::default())?;
/// assert_eq!(cfg.cache.shared, SharedCache::Redis);
/// assert_eq!(cfg.cache.shared_redis_url(&cfg.store), Some("redis://cache:6379"));
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SharedCache {
    /// Each replica keeps its own cache (default).
    #[default]
    None,
    /// A miss in the process's cache looks in Redis before asking the IdP.
    Redis,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            obo_capacity: 100_000,
            validation_capacity: 100_000,
            expiry_margin: Duration::from_secs(120),
            max_memory: ByteSize::new(DEFAULT_MAX_MEMORY),
            shared: SharedCache::None,
            redis_url: None,
            redis_timeout: Duration::from_millis(200),
        }
    }
}

/// The URL may carry a Redis password: `Debug` shows only whether it is set.
impl std::fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheConfig")
            .field("obo_capacity", &self.obo_capacity)
            .field("validation_capacity", &self.validation_capacity)
            .field("expiry_margin", &self.expiry_margin)
            .field("max_memory", &self.max_memory)
            .field("shared", &self.shared)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "[set]"))
            .field("redis_timeout", &self.redis_timeout)
            .finish()
    }
}

/// `max_memory`'s default: 64 MiB.
pub(crate) const DEFAULT_MAX_MEMORY: u64 = 64 << 20;

/// The least `max_memory`: below this a share could not hold one Entra-sized token.
const MIN_MAX_MEMORY: u64 = 64 << 10;

impl CacheConfig {
    /// The bytes each token cache may hold when `providers` providers are configured: every
    /// provider has a validation cache and an exchange cache, and each gets an equal share of
    /// `max_memory`, so together they never hold more (a cache cannot share one bound with
    /// another; a share idle in one cache is not lent to another).
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

    /// The Redis URL the shared cache uses: `redis_url`, else the store's when the store is
    /// Redis. `None` when the cache is not shared or no URL is configured.
    ///
    /// ```
    /// use tollgate::config::{CacheConfig, SharedCache, StoreConfig, StoreKind};
    /// let cache = CacheConfig { shared: SharedCache::Redis, ..Default::default() };
    /// let store = StoreConfig { kind: StoreKind::Redis, url: Some("redis://store:6379".into()), ..Default::default() };
    /// assert_eq!(cache.shared_redis_url(&store), Some("redis://store:6379"));
    /// assert_eq!(CacheConfig::default().shared_redis_url(&store), None); // not shared
    /// ```
    pub fn shared_redis_url<'a>(&'a self, store: &'a StoreConfig) -> Option<&'a str> {
        if self.shared != SharedCache::Redis {
            return None;
        }
        self.redis_url.as_deref().or(match store.kind {
            StoreKind::Redis => store.url.as_deref(),
            _ => None,
        })
    }

    /// Refuses a capacity of 0, which would cache nothing, a `max_memory` too small to hold a
    /// token, and a shared cache without a Redis URL or without the store's keys to seal its
    /// entries.
    pub(super) fn check(&self, store: &StoreConfig) -> Result<(), ConfigError> {
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
        if self.shared == SharedCache::None {
            return Ok(());
        }
        if !cfg!(feature = "redis") {
            return Err(ConfigError::invalid(
                "cache.shared",
                "\"redis\" needs tollgate built with the \"redis\" feature",
            ));
        }
        let Some(url) = self.shared_redis_url(store) else {
            return Err(ConfigError::invalid(
                "cache.redis_url",
                "shared = \"redis\" needs a Redis: set cache.redis_url, or store.url with \
                 [store] kind = \"redis\"",
            ));
        };
        #[cfg(feature = "redis")]
        if let Some(why) = crate::store::redis_url_problem(url) {
            let option = if self.redis_url.is_some() {
                "cache.redis_url"
            } else {
                "store.url"
            };
            return Err(ConfigError::invalid(option, why));
        }
        #[cfg(not(feature = "redis"))]
        let _ = url;
        if store.encryption_keys_file.is_none() {
            return Err(ConfigError::invalid(
                "store.encryption_keys_file",
                "the shared exchange cache seals its entries with the store's keys: run \
                 `tollgate keygen > keys; chmod 600 keys` and set encryption_keys_file in [store]",
            ));
        }
        if self.redis_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "cache.redis_timeout",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MapEnv};

    fn problem(text: &str) -> Option<(String, String)> {
        match Config::from_toml_str(text, &MapEnv::default()) {
            Ok(_) => None,
            Err(ConfigError::Invalid { option, message }) => Some((option, message)),
            Err(other) => Some(("?".into(), other.to_string())),
        }
    }

    const KEYS: &str = "[store]\nencryption_keys_file = \"keys\"\n";

    #[test]
    fn a_shared_cache_needs_a_redis_url_from_the_cache_or_a_redis_store() {
        let (option, message) = problem(&format!("[cache]\nshared = \"redis\"\n{KEYS}")).unwrap();
        assert_eq!(option, "cache.redis_url");
        assert!(message.contains("store.url"), "{message}");
        // A Redis store lends its URL.
        let store = "[store]\nkind = \"redis\"\nurl = \"redis://store:6379\"\nencryption_keys_file = \"keys\"\n";
        assert_eq!(
            problem(&format!("[cache]\nshared = \"redis\"\n{store}")),
            None
        );
        // A SQLite store's (absent) URL is no fallback.
        let sqlite = "[store]\nkind = \"sqlite\"\nurl = \"redis://store:6379\"\nencryption_keys_file = \"keys\"\n";
        assert_eq!(
            problem(&format!("[cache]\nshared = \"redis\"\n{sqlite}")).map(|p| p.0),
            Some("cache.redis_url".into())
        );
        let bad = problem(&format!(
            "[cache]\nshared = \"redis\"\nredis_url = \"http://cache\"\n{KEYS}"
        ))
        .unwrap();
        assert_eq!(bad.0, "cache.redis_url");
    }

    #[test]
    fn a_shared_cache_needs_the_store_keys_and_a_timeout() {
        let (option, message) =
            problem("[cache]\nshared = \"redis\"\nredis_url = \"redis://cache\"\n").unwrap();
        assert_eq!(option, "store.encryption_keys_file");
        assert!(message.contains("keygen"), "{message}");
        let zero = problem(&format!(
            "[cache]\nshared = \"redis\"\nredis_url = \"redis://cache\"\nredis_timeout = \"0s\"\n{KEYS}"
        ));
        assert_eq!(zero.map(|p| p.0), Some("cache.redis_timeout".into()));
        // Off by default, and "none" says so explicitly: nothing else is needed.
        assert_eq!(problem("[cache]\nshared = \"none\"\n"), None);
        assert!(problem("[cache]\nshared = \"memcached\"\n").is_some());
    }

    #[test]
    fn the_redis_password_is_masked_in_debug_and_in_check_output() {
        let text = format!(
            "[cache]\nshared = \"redis\"\nredis_url = \"redis://:hunter2@cache:6379\"\n{KEYS}"
        );
        let cfg = Config::from_toml_str(&text, &MapEnv::default()).unwrap();
        assert!(!format!("{:?}", cfg.cache).contains("hunter2"));
        let printed = cfg.to_redacted_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(printed.contains("shared = \"redis\""), "{printed}");
    }
}
