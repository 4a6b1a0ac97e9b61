//! [`ByteSize`]: a size in bytes as the configuration writes it (`64MiB`, `512KiB`, `1GiB`,
//! `8388608`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A size in bytes, read from a whole number of bytes or a number with a binary unit (`B`,
/// `KiB`, `MiB`, `GiB`, `TiB`; `KB`/`MB`/`GB` and `K`/`M`/`G` are read as the binary units
/// too, as Kubernetes memory limits are usually meant). Written back with the largest unit that
/// divides it.
///
/// ```
/// use tollgate::config::ByteSize;
/// assert_eq!("64MiB".parse::<ByteSize>()?.bytes(), 64 << 20);
/// assert_eq!("512 KiB".parse::<ByteSize>()?.bytes(), 512 << 10);
/// assert_eq!("8388608".parse::<ByteSize>()?.bytes(), 8 << 20);
/// assert_eq!(ByteSize::new(1 << 30).to_string(), "1GiB");
/// assert!("64 parsecs".parse::<ByteSize>().is_err());
/// # Ok::<(), tollgate::config::ByteSizeError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(u64);

/// A size that is not a number of bytes with a known unit.
///
/// ```
/// let err = "12 furlongs".parse::<tollgate::config::ByteSize>().unwrap_err();
/// assert!(err.to_string().contains("12 furlongs"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a size: write bytes, or a number with KiB, MiB or GiB (e.g. 64MiB)")]
pub struct ByteSizeError(String);

const UNITS: [(&str, u32); 5] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10), ("B", 0)];

impl ByteSize {
    /// `bytes` bytes.
    ///
    /// ```
    /// assert_eq!(tollgate::config::ByteSize::new(1024).to_string(), "1KiB");
    /// ```
    pub const fn new(bytes: u64) -> Self {
        Self(bytes)
    }

    /// The size in bytes.
    ///
    /// ```
    /// assert_eq!(tollgate::config::ByteSize::new(1024).bytes(), 1024);
    /// ```
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ByteSizeError(s.to_owned());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let number: u64 = digits.parse().map_err(|_| err())?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kb" | "kib" => 10,
            "m" | "mb" | "mib" => 20,
            "g" | "gb" | "gib" => 30,
            "t" | "tb" | "tib" => 40,
            _ => return Err(err()),
        };
        number.checked_mul(1 << shift).map(Self).ok_or_else(err)
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (unit, shift) = UNITS
            .iter()
            .find(|(_, shift)| self.0 != 0 && self.0.is_multiple_of(1u64 << shift))
            .copied()
            .unwrap_or(("B", 0));
        write!(f, "{}{unit}", self.0 >> shift)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// A number of bytes (a TOML integer, or an environment variable read as one) or a
        /// string with a unit; a visitor rather than an untagged enum, so that a bad string
        /// says what is wrong with it.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 64MiB, or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(ByteSizeError(v.to_string())))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}
