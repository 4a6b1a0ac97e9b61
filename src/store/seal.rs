//! AES-256-GCM sealing of store records under named keys.
//!
//! A sealed blob is self-describing so that any configured key can open it:
//!
//! ```text
//! [format = 1][kid length n][kid: n bytes][nonce: 12 bytes][ciphertext || tag: 16 bytes]
//! ```
//!
//! The header (format, kid) is authenticated together with the caller's AAD, so changing the kid
//! or the format byte makes the blob fail to open instead of being read under another key.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{StoreError, hex};

/// Holds the store's encryption keys: the first one seals, every one opens.
///
/// Cloning is cheap (the keys are shared). `Debug` shows the key ids only, never key material.
///
/// ```
/// use tollgate::store::{Sealer, keygen};
///
/// let old = keygen();
/// let new = keygen();
/// let sealer = Sealer::parse(&format!("# newest first\n{new}\n{old}\n"))?;
/// let blob = sealer.seal(b"secret", b"entra_id|oid")?;
/// let (plain, under_old_key) = sealer.open(&blob, b"entra_id|oid")?;
/// assert_eq!(plain, b"secret");
/// assert!(!under_old_key);
/// # Ok::<(), tollgate::store::StoreError>(())
/// ```
#[derive(Clone)]
pub struct Sealer {
    /// Never empty: every constructor refuses to build a sealer without a key.
    keys: Arc<[NamedKey]>,
}

/// Makes a new key line for an encryption key file: `k<yyyymmdd>-<random>:<base64 of 32 random bytes>`.
///
/// The date tells operators how old a key is; the random suffix keeps two keys made on the same
/// day distinct. Panics only if the system random generator fails, which leaves nothing safe to do.
///
/// ```
/// let line = tollgate::store::keygen();
/// assert!(tollgate::store::Sealer::parse(&line).is_ok());
/// ```
pub fn keygen() -> String {
    let mut key = [0u8; KEY_LEN];
    let mut suffix = [0u8; 3];
    aws_lc_rs::rand::fill(&mut key).expect("system random generator failed");
    aws_lc_rs::rand::fill(&mut suffix).expect("system random generator failed");
    let (year, month, day) = civil_date(unix_days());
    format!(
        "k{year:04}{month:02}{day:02}-{}:{}",
        hex(&suffix),
        BASE64.encode(key)
    )
}

impl Sealer {
    /// Reads a key file: one `kid:base64(32 bytes)` per line, `#` comments and blank lines
    /// ignored, the first key seals.
    pub fn from_key_file(path: &Path) -> Result<Self, StoreError> {
        let text = std::fs::read_to_string(path).map_err(|err| {
            StoreError::Config(format!(
                "cannot read encryption_keys_file {}: {err}",
                path.display()
            ))
        })?;
        warn_if_shared(path);
        Self::parse(&text).map_err(|err| match err {
            StoreError::Config(msg) => StoreError::Config(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Parses the text of a key file (see [`Sealer::from_key_file`]).
    ///
    /// Refuses keys that are not exactly 32 bytes, malformed key ids, duplicate key ids and a
    /// text without any key. Error messages name the line, never the key material.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        let mut keys: Vec<NamedKey> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let lineno = index + 1;
            let bad =
                |why: String| StoreError::Config(format!("encryption key line {lineno}: {why}"));
            let Some((kid, encoded)) = line.split_once(':') else {
                return Err(bad("expected `kid:base64(32 bytes)`".into()));
            };
            let kid = kid.trim();
            validate_kid(kid).map_err(bad)?;
            if keys.iter().any(|k| k.kid == kid) {
                return Err(bad(format!("duplicate key id {kid:?}")));
            }
            let bytes = BASE64
                .decode(encoded.trim())
                .map_err(|_| bad("key is not valid base64".into()))?;
            if bytes.len() != KEY_LEN {
                return Err(bad(format!(
                    "key must be exactly {KEY_LEN} bytes, got {}",
                    bytes.len()
                )));
            }
            keys.push(NamedKey::new(kid, &bytes)?);
        }
        if keys.is_empty() {
            return Err(StoreError::Config(
                "no encryption key found; make one with `tollgate keygen > keys; chmod 600 keys`"
                    .into(),
            ));
        }
        Ok(Self { keys: keys.into() })
    }

    /// A sealer with one fresh random key that lives as long as the process: for stores whose
    /// contents die with the process anyway (memory).
    pub fn ephemeral() -> Result<Self, StoreError> {
        let mut key = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut key)
            .map_err(|_| StoreError::Io("system random generator failed".into()))?;
        Ok(Self {
            keys: vec![NamedKey::new("ephemeral", &key)?].into(),
        })
    }

    /// Seals `plaintext` under the first key, binding it to `aad`: the blob opens only with the
    /// same `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, StoreError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| StoreError::Io("system random generator failed".into()))?;
        let header_len = 2 + key.kid.len();
        let mut blob =
            Vec::with_capacity(header_len + NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        blob.push(FORMAT_V1);
        // validate_kid caps kids at MAX_KID_LEN (< 256), so the length fits in one byte.
        blob.push(key.kid.len() as u8);
        blob.extend_from_slice(key.kid.as_bytes());
        let full_aad = [&blob[..header_len], aad].concat();
        blob.extend_from_slice(&nonce);
        let mut in_out = plaintext.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(full_aad),
                &mut in_out,
            )
            .map_err(|_| StoreError::Io("sealing failed".into()))?;
        blob.extend_from_slice(&in_out);
        Ok(blob)
    }

    /// Opens a blob made by [`Sealer::seal`] with the key its header names.
    ///
    /// Returns the plaintext and whether it was sealed under a key other than the first (so the
    /// caller may re-seal it). A blob that was altered, belongs to another `aad`, or names a key
    /// that is not configured is [`StoreError::Corrupt`].
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<(Vec<u8>, bool), StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt(why.to_owned());
        let (&format, rest) = sealed
            .split_first()
            .ok_or_else(|| corrupt("empty record"))?;
        if format != FORMAT_V1 {
            return Err(corrupt("unknown record format"));
        }
        let (&kid_len, rest) = rest
            .split_first()
            .ok_or_else(|| corrupt("truncated record"))?;
        let kid_len = usize::from(kid_len);
        if rest.len() < kid_len + NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(corrupt("truncated record"));
        }
        let (kid, rest) = rest.split_at(kid_len);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let Some(position) = self.keys.iter().position(|k| k.kid.as_bytes() == kid) else {
            return Err(StoreError::Corrupt(format!(
                "record sealed under unknown key id {:?}; add that key to encryption_keys_file",
                String::from_utf8_lossy(kid)
            )));
        };
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt("truncated record"))?;
        let full_aad = [&sealed[..2 + kid_len], aad].concat();
        let mut in_out = ciphertext.to_vec();
        let plain_len = self.keys[position]
            .aead
            .open_in_place(nonce, Aad::from(full_aad), &mut in_out)
            .map_err(|_| {
                corrupt("record failed authentication (altered, or moved from another user)")
            })?
            .len();
        in_out.truncate(plain_len);
        Ok((in_out, position != 0))
    }

    /// The id of the key that seals.
    pub fn sealing_kid(&self) -> &str {
        &self.keys[0].kid
    }

    /// HMAC-SHA256 of `input` under each key's index key, the sealing key's first: what the UPN
    /// index is keyed by. Each index key is derived from its encryption key with HKDF-SHA256
    /// (RFC 5869; no salt, info [`INDEX_KEY_LABEL`]), so the index needs no secret of its own,
    /// and a dump of the store cannot be searched by hashing a list of names. Older keys'
    /// results let lookups find entries written before a rotation until `rotate_keys` moves
    /// them.
    pub(crate) fn index_keys(&self, input: &[u8]) -> Vec<[u8; 32]> {
        self.keys
            .iter()
            .map(|k| {
                let mut out = [0u8; 32];
                out.copy_from_slice(hmac::sign(&k.index, input).as_ref());
                out
            })
            .collect()
    }
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

const KEY_LEN: usize = 32;
const FORMAT_V1: u8 = 1;
const MAX_KID_LEN: usize = 64;
/// The HKDF `info` of the UPN index key: another label would give an unrelated key, so the
/// index and the sealing never share key material.
const INDEX_KEY_LABEL: &[u8] = b"tollgate upn index v1";

struct NamedKey {
    kid: String,
    aead: LessSafeKey,
    /// The UPN index key derived from this key ([`Sealer::index_keys`]).
    index: hmac::Key,
}

impl NamedKey {
    fn new(kid: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let unbound = UnboundKey::new(&AES_256_GCM, bytes)
            .map_err(|_| StoreError::Config("invalid AES-256 key".into()))?;
        let index = hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
            .extract(bytes)
            .expand(&[INDEX_KEY_LABEL], hmac::HMAC_SHA256)
            .map(hmac::Key::from)
            .map_err(|_| StoreError::Config("cannot derive the UPN index key".into()))?;
        Ok(Self {
            kid: kid.to_owned(),
            aead: LessSafeKey::new(unbound),
            index,
        })
    }
}

fn validate_kid(kid: &str) -> Result<(), String> {
    if kid.is_empty() {
        return Err("empty key id".into());
    }
    if kid.len() > MAX_KID_LEN {
        return Err(format!("key id longer than {MAX_KID_LEN} characters"));
    }
    if !kid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("key id may only contain letters, digits, '-', '_' and '.'".into());
    }
    Ok(())
}

/// A key file others can read defeats the encryption at rest; say so without refusing, since
/// some secret mounts cannot be made 0600.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "encryption key file is readable by group or others; chmod 600 it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn unix_days() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    i64::try_from(secs / 86_400).unwrap_or(0)
}

/// Gregorian date of a day count since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The associated data (AAD, RFC 5116) every record is sealed with: it binds the blob to its
/// provider and user. The provider is length-prefixed so that `("a|b", "c")` and `("a", "b|c")`
/// never share an AAD.
pub(super) fn record_aad(provider: &str, oid: &str) -> Vec<u8> {
    format!("tollgate-record|{}:{provider}|{oid}", provider.len()).into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kid: &str, byte: u8) -> String {
        format!("{kid}:{}", BASE64.encode([byte; KEY_LEN]))
    }

    fn config_message(result: Result<Sealer, StoreError>) -> String {
        match result {
            Err(StoreError::Config(msg)) => msg,
            other => panic!("expected a Config error, got {other:?}"),
        }
    }

    #[test]
    fn comments_and_blank_lines_are_ignored_and_first_key_seals() {
        let text = format!(
            "# rotated 2025\n\n  {}  \n# old\n{}\n",
            line("new", 1),
            line("old", 2)
        );
        let sealer = Sealer::parse(&text).unwrap();
        assert_eq!(sealer.sealing_kid(), "new");
        let blob = sealer.seal(b"x", b"aad").unwrap();
        assert_eq!(&blob[2..5], b"new");
    }

    #[test]
    fn round_trip_and_old_key_flag() {
        let old = Sealer::parse(&line("old", 2)).unwrap();
        let both = Sealer::parse(&format!("{}\n{}", line("new", 1), line("old", 2))).unwrap();
        let by_old = old.seal(b"payload", b"p|o").unwrap();
        assert_eq!(
            both.open(&by_old, b"p|o").unwrap(),
            (b"payload".to_vec(), true)
        );
        let by_new = both.seal(b"payload", b"p|o").unwrap();
        assert_eq!(
            both.open(&by_new, b"p|o").unwrap(),
            (b"payload".to_vec(), false)
        );
    }

    #[test]
    fn nonces_differ_between_seals() {
        let sealer = Sealer::parse(&line("a", 1)).unwrap();
        assert_ne!(
            sealer.seal(b"same", b"aad").unwrap(),
            sealer.seal(b"same", b"aad").unwrap()
        );
    }

    #[test]
    fn wrong_aad_tampering_and_unknown_kid_are_corrupt() {
        let sealer = Sealer::parse(&line("a", 1)).unwrap();
        let blob = sealer.seal(b"payload", b"p|alice").unwrap();
        assert!(matches!(
            sealer.open(&blob, b"p|bob"),
            Err(StoreError::Corrupt(_))
        ));
        for i in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[i] ^= 0x01;
            assert!(
                matches!(
                    sealer.open(&tampered, b"p|alice"),
                    Err(StoreError::Corrupt(_))
                ),
                "flipping byte {i} went unnoticed"
            );
        }
        assert!(matches!(
            sealer.open(&blob[..blob.len() - 1], b"p|alice"),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            sealer.open(&[], b"p|alice"),
            Err(StoreError::Corrupt(_))
        ));
        let other = Sealer::parse(&line("b", 1)).unwrap();
        match other.open(&blob, b"p|alice") {
            Err(StoreError::Corrupt(msg)) => assert!(msg.contains("unknown key id"), "{msg}"),
            res => panic!("expected Corrupt, got {res:?}"),
        }
    }

    #[test]
    fn same_kid_with_another_key_does_not_open() {
        let blob = Sealer::parse(&line("a", 1))
            .unwrap()
            .seal(b"x", b"aad")
            .unwrap();
        let impostor = Sealer::parse(&line("a", 9)).unwrap();
        assert!(matches!(
            impostor.open(&blob, b"aad"),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn refuses_bad_key_files() {
        let short = format!("a:{}", BASE64.encode([1u8; 16]));
        assert!(config_message(Sealer::parse(&short)).contains("exactly 32 bytes"));
        let long = format!("a:{}", BASE64.encode([1u8; 33]));
        assert!(config_message(Sealer::parse(&long)).contains("exactly 32 bytes"));
        let dup = format!("{}\n{}", line("a", 1), line("a", 2));
        assert!(config_message(Sealer::parse(&dup)).contains("duplicate key id"));
        assert!(config_message(Sealer::parse("")).contains("tollgate keygen"));
        assert!(config_message(Sealer::parse("# only a comment\n\n")).contains("tollgate keygen"));
        assert!(config_message(Sealer::parse("a:not base64!!")).contains("base64"));
        assert!(config_message(Sealer::parse("no-colon-here")).contains("kid:base64"));
        let bad_kid = format!("a b:{}", BASE64.encode([1u8; KEY_LEN]));
        assert!(config_message(Sealer::parse(&bad_kid)).contains("key id"));
        let empty_kid = format!(":{}", BASE64.encode([1u8; KEY_LEN]));
        assert!(config_message(Sealer::parse(&empty_kid)).contains("empty key id"));
    }

    #[test]
    fn errors_and_debug_never_show_key_material() {
        let secret = BASE64.encode([7u8; 16]);
        let msg = config_message(Sealer::parse(&format!("a:{secret}")));
        assert!(!msg.contains(&secret), "{msg}");
        let good = line("visible-kid", 7);
        let debug = format!("{:?}", Sealer::parse(&good).unwrap());
        assert!(debug.contains("visible-kid"));
        assert!(!debug.contains(good.split_once(':').unwrap().1), "{debug}");
    }

    #[test]
    fn key_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# nothing\n").unwrap();
        let msg = config_message(Sealer::from_key_file(&path));
        assert!(
            msg.contains("keys") && msg.contains("tollgate keygen"),
            "{msg}"
        );
        let missing = config_message(Sealer::from_key_file(&dir.path().join("absent")));
        assert!(missing.contains("encryption_keys_file"), "{missing}");
        std::fs::write(&path, format!("{}\n", keygen())).unwrap();
        assert!(Sealer::from_key_file(&path).is_ok());
    }

    #[test]
    fn keygen_lines_parse_and_differ() {
        let a = keygen();
        let b = keygen();
        assert_ne!(a, b);
        let (kid_a, _) = a.split_once(':').unwrap();
        let (kid_b, _) = b.split_once(':').unwrap();
        assert_ne!(
            kid_a, kid_b,
            "two keys made the same day must not share a kid"
        );
        let (year, month, day) = civil_date(unix_days());
        assert!(
            kid_a.starts_with(&format!("k{year:04}{month:02}{day:02}-")),
            "{kid_a}"
        );
        let sealer = Sealer::parse(&format!("{a}\n{b}")).unwrap();
        assert_eq!(sealer.sealing_kid(), kid_a);
    }

    #[test]
    fn civil_date_known_days() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(civil_date(20_454), (2026, 1, 1));
    }

    #[test]
    fn index_keys_are_keyed_per_key_and_follow_the_key_order() {
        let (a, b) = (line("a", 1), line("b", 2));
        let only_a = Sealer::parse(&a).unwrap().index_keys(b"ada");
        let b_then_a = Sealer::parse(&format!("{b}\n{a}"))
            .unwrap()
            .index_keys(b"ada");
        assert_eq!(only_a.len(), 1);
        assert_eq!(b_then_a.len(), 2);
        assert_eq!(
            b_then_a[1], only_a[0],
            "an older key still finds its entries"
        );
        assert_ne!(b_then_a[0], only_a[0]);
        // Not a plain hash: without the key, a dictionary of names finds nothing.
        assert_ne!(
            only_a[0].as_slice(),
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"ada").as_ref()
        );
        // RFC 5869 HKDF-SHA256 with an empty salt, then HMAC-SHA256: the documented derivation.
        let prk = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &[0u8; 32]),
            &[1u8; KEY_LEN],
        );
        let okm = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, prk.as_ref()),
            &[INDEX_KEY_LABEL, &[1u8]].concat(),
        );
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, okm.as_ref()), b"ada");
        assert_eq!(only_a[0].as_slice(), expected.as_ref());
    }

    #[test]
    fn ephemeral_sealer_round_trips() {
        let sealer = Sealer::ephemeral().unwrap();
        let blob = sealer.seal(b"x", b"aad").unwrap();
        assert_eq!(sealer.open(&blob, b"aad").unwrap(), (b"x".to_vec(), false));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn sealer() -> Sealer {
            Sealer::parse(&format!("{}\n{}", line("new", 7), line("old", 8))).unwrap()
        }

        proptest! {
            #[test]
            fn seal_then_open_round_trips(
                plain in prop::collection::vec(any::<u8>(), 0..512),
                aad in prop::collection::vec(any::<u8>(), 0..64),
            ) {
                let s = sealer();
                let blob = s.seal(&plain, &aad).unwrap();
                prop_assert_eq!(s.open(&blob, &aad).unwrap(), (plain, false));
            }

            #[test]
            fn any_flipped_bit_of_the_blob_fails_to_open(
                plain in prop::collection::vec(any::<u8>(), 0..256),
                aad in prop::collection::vec(any::<u8>(), 0..64),
                bit in any::<prop::sample::Index>(),
            ) {
                let s = sealer();
                let mut blob = s.seal(&plain, &aad).unwrap();
                let bit = bit.index(blob.len() * 8);
                blob[bit / 8] ^= 1 << (bit % 8);
                let opened = s.open(&blob, &aad);
                prop_assert!(matches!(opened, Err(StoreError::Corrupt(_))), "bit {} opened", bit);
            }

            #[test]
            fn any_flipped_bit_of_the_associated_data_fails_to_open(
                plain in prop::collection::vec(any::<u8>(), 0..256),
                aad in prop::collection::vec(any::<u8>(), 1..64),
                bit in any::<prop::sample::Index>(),
            ) {
                let s = sealer();
                let blob = s.seal(&plain, &aad).unwrap();
                let mut other = aad.clone();
                let bit = bit.index(other.len() * 8);
                other[bit / 8] ^= 1 << (bit % 8);
                prop_assert!(matches!(s.open(&blob, &other), Err(StoreError::Corrupt(_))));
            }

            #[test]
            fn a_truncated_blob_fails_to_open(
                plain in prop::collection::vec(any::<u8>(), 0..256),
                cut in any::<prop::sample::Index>(),
            ) {
                let s = sealer();
                let blob = s.seal(&plain, b"aad").unwrap();
                let cut = cut.index(blob.len());
                prop_assert!(matches!(s.open(&blob[..cut], b"aad"), Err(StoreError::Corrupt(_))));
            }
        }
    }
}
