//! Browser sessions in the token store: [`SessionRecord`]s under their [`SessionKey`], and the
//! `sid` / `sub` indexes that let an OpenID Connect Back-Channel Logout end them on every replica.
//!
//! No backend knows about sessions. They are records of the same blob backends, kept apart by a
//! namespace in the provider key:
//!
//! | provider key | oid | sealed blob |
//! | --- | --- | --- |
//! | `{provider}#session` | hex of the [`SessionKey`] | the [`SessionRecord`] (JSON) |
//! | `{provider}#sid` | hex of an index key of the `sid` | [`IndexList`]: the session keys with their expiry |
//! | `{provider}#sub` | hex of an index key of the `sub` | the same, for the `sub` |
//!
//! Provider names cannot contain `#` (the configuration refuses them), so no provider's users
//! share a key with these. Every blob is sealed with the store's [`Sealer`] and its associated
//! data names the namespaced provider and the oid, so a blob copied onto another key does not
//! open. The index keys are HMACs under a key derived from the encryption key
//! ([`Sealer::index_keys`]), as for the UPN index: a dump cannot be searched by hashing a known
//! `sub`. Writes name an index record under the first encryption key; reads try every
//! configured key, and `rotate_keys` moves index records written under an older key to the
//! first key's name (the sealed list carries the `sid` / `sub` itself for that).
//!
//! An index list is changed by a compare-and-swap ([`Backend::swap`]) in a retry loop, under the
//! store's in-process lock of that index record: two replicas adding sessions of one `sub` at
//! once never lose one another's entry, in every backend. Entries are pruned when their session's
//! absolute end has passed, and the record itself expires (Redis TTL) with its latest entry.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::seal::record_aad;
use super::{Sealer, StoreError, hex};

/// One browser session as the store keeps it (sealed). `Debug` redacts `id_token` and shows
/// only the names of the claims.
///
/// ```
/// use tollgate::store::SessionRecord;
///
/// let record = SessionRecord {
///     oid: "00000000-0000-0000-0000-000000000001".into(),
///     sub: "s-1".into(),
///     sid: Some("idp-session-1".into()),
///     claims: serde_json::Map::new(),
///     scopes: vec!["openid".into()],
///     id_token: "eyJ...".into(),
///     created_at: 1_900_000_000,
///     expires_at: 1_900_036_000,
///     idle_expires_at: 1_900_003_600,
///     access_expires_at: 1_900_003_600,
/// };
/// assert!(!format!("{record:?}").contains("eyJ"));
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The user: the key of their [`UserTokens`](super::UserTokens) record.
    pub oid: String,
    /// The ID token's `sub`.
    pub sub: String,
    /// The IdP session (the ID token's `sid`), when it named one.
    pub sid: Option<String>,
    /// The ID token's user claims kept for identity headers and userinfo.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// The scopes granted at sign-in.
    pub scopes: Vec<String>,
    /// The ID token, for `id_token_hint` at sign-out.
    pub id_token: String,
    /// When the session began, unix seconds.
    pub created_at: u64,
    /// The absolute end of the session (its lifetime), unix seconds.
    pub expires_at: u64,
    /// The idle end, unix seconds: writing the record again with a later one slides it.
    pub idle_expires_at: u64,
    /// When the user's stored access token expires, unix seconds.
    pub access_expires_at: u64,
}

impl SessionRecord {
    /// When the session stops being valid: the earlier of its absolute and idle ends.
    ///
    /// ```
    /// # let record = tollgate::store::SessionRecord {
    /// #     oid: "o".into(), sub: "s".into(), sid: None, claims: Default::default(),
    /// #     scopes: vec![], id_token: String::new(), created_at: 0, expires_at: 100,
    /// #     idle_expires_at: 40, access_expires_at: 0,
    /// # };
    /// assert_eq!(record.ends_at(), 40);
    /// ```
    pub fn ends_at(&self) -> u64 {
        self.expires_at.min(self.idle_expires_at)
    }
}

impl fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRecord")
            .field("oid", &self.oid)
            .field("sub", &self.sub)
            .field("sid", &self.sid.as_ref().map(|_| "<set>"))
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .field("scopes", &self.scopes)
            .field("id_token", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .field("idle_expires_at", &self.idle_expires_at)
            .field("access_expires_at", &self.access_expires_at)
            .finish()
    }
}

/// The store key of a session: SHA-256 of the cookie's random id, so the store never holds the
/// cookie value (a dump of the store cannot be replayed as cookies). `Debug` prints a short hex
/// prefix only.
///
/// ```
/// use tollgate::store::SessionKey;
///
/// let key = SessionKey::from_cookie_id("q2n5Yk3x0wVb8r1LzPfA7g");
/// assert_eq!(key, SessionKey::from_cookie_id("q2n5Yk3x0wVb8r1LzPfA7g"));
/// assert_eq!(key.as_bytes().len(), 32);
/// assert!(format!("{key:?}").len() < 30);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey([u8; 32]);

impl SessionKey {
    /// The key of the session whose cookie carries `id`.
    pub fn from_cookie_id(id: &str) -> Self {
        Self(crate::util::sha256(id.as_bytes()))
    }

    /// The 32 key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionKey({}…)", hex(&self.0[..4]))
    }
}

/// What a namespaced provider key holds ([`kind_of`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    /// A user's tokens (no namespace).
    User,
    /// A [`SessionRecord`].
    Session,
    /// The sessions of one `sid` or `sub`.
    Index(IndexKind),
}

/// Which claim an index record is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum IndexKind {
    Sid,
    Sub,
}

impl IndexKind {
    pub(super) fn suffix(self) -> &'static str {
        match self {
            Self::Sid => "sid",
            Self::Sub => "sub",
        }
    }
}

/// The kind of record stored under `provider`, from its namespace suffix.
pub(super) fn kind_of(provider: &str) -> Kind {
    match provider.rsplit_once('#').map(|(_, suffix)| suffix) {
        Some("session") => Kind::Session,
        Some("sid") => Kind::Index(IndexKind::Sid),
        Some("sub") => Kind::Index(IndexKind::Sub),
        _ => Kind::User,
    }
}

// What the `Opener` asks about records that are not users' (see `sealed.rs`). Each returns None
// for a user record, which `sealed.rs` judges itself.

/// Whether the record opens and has expired; `None` for a user record.
pub(super) fn has_expired(sealer: &Sealer, provider: &str, oid: &str, blob: &[u8]) -> Option<bool> {
    let now = crate::util::now();
    match kind_of(provider) {
        Kind::User => None,
        Kind::Session => {
            Some(open_session(sealer, provider, oid, blob).is_ok_and(|(r, _)| r.ends_at() <= now))
        }
        Kind::Index(_) => {
            Some(open_index(sealer, provider, oid, blob).is_ok_and(|(l, _)| l.latest() <= now))
        }
    }
}

/// The sealed content of a `sid` / `sub` index record.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(super) struct IndexList {
    /// The `sid` or `sub` itself, so that a key rotation can name the record under the first key.
    pub(super) n: String,
    /// Each session key (hex) with its session's absolute end, unix seconds.
    pub(super) s: BTreeMap<String, u64>,
}

impl IndexList {
    pub(super) fn new(value: &str) -> Self {
        Self {
            n: value.to_owned(),
            s: BTreeMap::new(),
        }
    }

    /// Drops the entries whose session has ended by `now`.
    pub(super) fn prune(&mut self, now: u64) {
        self.s.retain(|_, expires_at| *expires_at > now);
    }

    /// Lists (or re-lists with its new end) one session.
    pub(super) fn add(&mut self, session: &str, expires_at: u64) {
        self.s.insert(session.to_owned(), expires_at);
    }

    /// The `sid` or `sub` the list is of.
    pub(super) fn value(&self) -> &str {
        &self.n
    }

    /// When the last listed session ends (0 for none): the record's own expiry.
    pub(super) fn latest(&self) -> u64 {
        self.s.values().copied().max().unwrap_or(0)
    }
}

pub(super) fn namespaced(provider: &str, suffix: &str) -> String {
    format!("{provider}#{suffix}")
}

/// The names (hex index keys) of the index record of `value`, one per configured key, the one
/// to write first. The input is labelled so it never equals another index's input.
pub(super) fn index_names(sealer: &Sealer, kind: IndexKind, value: &str) -> Vec<String> {
    let input = format!("tollgate-session-{}|{value}", kind.suffix());
    sealer
        .index_keys(input.as_bytes())
        .iter()
        .map(|k| hex(k))
        .collect()
}

pub(super) fn reseal(
    old_key: bool,
    seal: impl FnOnce() -> Result<Vec<u8>, StoreError>,
) -> Option<Vec<u8>> {
    // A failed re-seal leaves the record readable under its old key; the next read tries again.
    if old_key { seal().ok() } else { None }
}

pub(super) fn seal_session(
    sealer: &Sealer,
    ns: &str,
    name: &str,
    record: &SessionRecord,
) -> Result<Vec<u8>, StoreError> {
    // The plaintext holds the ID token: wiped once sealed.
    let plain = zeroize::Zeroizing::new(
        serde_json::to_vec(record)
            .map_err(|err| StoreError::Io(format!("encoding a session: {err}")))?,
    );
    sealer.seal(&plain, &record_aad(ns, name))
}

/// Opens a session blob; the flag says it was sealed under an older key.
pub(super) fn open_session(
    sealer: &Sealer,
    ns: &str,
    name: &str,
    blob: &[u8],
) -> Result<(SessionRecord, bool), StoreError> {
    let (plain, old_key) = sealer.open(blob, &record_aad(ns, name))?;
    let plain = zeroize::Zeroizing::new(plain);
    let record = serde_json::from_slice(&plain)
        .map_err(|_| StoreError::Corrupt("record content is not a session".into()))?;
    Ok((record, old_key))
}

pub(super) fn seal_index(
    sealer: &Sealer,
    ns: &str,
    name: &str,
    list: &IndexList,
) -> Result<Vec<u8>, StoreError> {
    let plain = serde_json::to_vec(list)
        .map_err(|err| StoreError::Io(format!("encoding a session index: {err}")))?;
    sealer.seal(&plain, &record_aad(ns, name))
}

pub(super) fn open_index(
    sealer: &Sealer,
    ns: &str,
    name: &str,
    blob: &[u8],
) -> Result<(IndexList, bool), StoreError> {
    let (plain, old_key) = sealer.open(blob, &record_aad(ns, name))?;
    let list = serde_json::from_slice(&plain)
        .map_err(|_| StoreError::Corrupt("record content is not a session index".into()))?;
    Ok((list, old_key))
}
