//! The small helpers every layer shares: one clock and one digest for the whole crate, and the
//! per-thread memo of a last value, so no module imports a higher one for them.

use std::cell::RefCell;
use std::thread::LocalKey;
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

/// `with` of `make()`'s value, kept on this thread (in `last`) with the key it was made for:
/// while `is_kept` holds for that key, `with` gets the kept value, not a new one. One key and
/// value per thread, for what a connection asks again and again (its token's headers, its
/// peer's address); a thread being torn down keeps nothing. `with` borrows the value, so a
/// caller clones only what it takes of it.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) fn thread_memo<K: 'static, V: 'static, R>(
    last: &'static LocalKey<RefCell<Option<(K, V)>>>,
    is_kept: impl Fn(&K) -> bool,
    key: impl FnOnce() -> K,
    make: impl Fn() -> V,
    mut with: impl FnMut(&V) -> R,
) -> R {
    let kept = last.try_with(|last| {
        let mut last = last.borrow_mut();
        match &*last {
            Some((kept, value)) if is_kept(kept) => with(value),
            _ => {
                let (_, value) = last.insert((key(), make()));
                with(value)
            }
        }
    });
    kept.unwrap_or_else(|_| with(&make()))
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
