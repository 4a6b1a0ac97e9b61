//! Durations as human strings (`"90s"`, `"10m"`) in serde.
//!
//! ```
//! use std::time::Duration;
//! #[derive(serde::Deserialize, serde::Serialize)]
//! struct Retry {
//!     #[serde(with = "tollgate::config::duration_str")]
//!     every: Duration,
//! }
//! let retry: Retry = toml::from_str("every = \"90s\"").unwrap();
//! assert_eq!(retry.every, Duration::from_secs(90));
//! assert_eq!(toml::to_string(&retry).unwrap().trim(), "every = \"1m 30s\"");
//! ```

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a humantime string.
///
/// ```
/// # use std::time::Duration;
/// use tollgate::config::duration_str;
/// let d = duration_str::deserialize(serde_json::json!("10m"))?;
/// assert_eq!(d, Duration::from_secs(600));
/// assert!(duration_str::deserialize(serde_json::json!("soon")).is_err());
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "bad duration {s:?}: {e} (use e.g. \"90s\", \"10m\")"
        ))
    })
}

/// Prints a humantime string.
///
/// ```
/// # use std::time::Duration;
/// use tollgate::config::duration_str;
/// let v = duration_str::serialize(&Duration::from_secs(3600), serde_json::value::Serializer)?;
/// assert_eq!(v, "1h");
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*v).to_string())
}
