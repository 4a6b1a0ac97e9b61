//! [`Secret`]: a configured secret that never reaches a log, a debug print or a serialization.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A secret value: never printed, logged or serialized in clear.
///
/// ```
/// use tollgate::config::Secret;
/// let secret = Secret::new("s3cret");
/// assert_eq!(format!("{secret:?}"), "[redacted]");
/// assert_eq!(serde_json::to_string(&secret).unwrap(), "\"[redacted]\"");
/// ```
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    ///
    /// ```
    /// # use tollgate::config::Secret;
    /// let secret = Secret::new(String::from("s3cret"));
    /// assert_eq!(secret, Secret::new("s3cret"));
    /// ```
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is sent to its destination.
    ///
    /// ```
    /// # use tollgate::config::Secret;
    /// assert_eq!(Secret::new("s3cret").expose(), "s3cret");
    /// ```
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The secret's bytes are overwritten when it is dropped, so a freed buffer (a core dump, a later
/// allocation) does not still hold it.
impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}
