//! The small helpers every layer shares: one clock and one digest for the whole crate, so no
//! module imports a higher one for them.

use std::time::{SystemTime, UNIX_EPOCH};

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SHA-256 over `parts`, each preceded by its length (u64, big-endian), so that no two
/// different lists run together (`["ab", "c"]` and `["a", "bc"]` differ). The buffer is wiped
/// after: the parts may be secrets (a refresh token, a client secret).
pub(crate) fn sha256_of_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
        buf.extend_from_slice(part);
    }
    let out = sha256(&buf);
    zeroize::Zeroize::zeroize(&mut buf);
    out
}
