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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::sealed::{Backend, NewRecord, Opener, Rotation, SealedStore, now_unix, record_aad};
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
    fn suffix(self) -> &'static str {
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
    let now = now_unix();
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

/// What `rotate_keys` does with a session or index record; `None` for a user record. An index
/// record named under an older key is also listed in `moves`, for
/// [`SealedStore::move_index`] once the backend's pass is done.
pub(super) fn rotation(
    opener: &Opener,
    provider: &str,
    oid: &str,
    blob: &[u8],
    now: u64,
) -> Option<Rotation> {
    let sealer = opener.sealer();
    let rotation = match kind_of(provider) {
        Kind::User => return None,
        Kind::Session => match open_session(sealer, provider, oid, blob) {
            Err(_) => Rotation::Unreadable,
            Ok((record, _)) if record.ends_at() <= now => Rotation::Expired,
            Ok((record, old_key)) => Rotation::Live {
                resealed: reseal(old_key, || seal_session(sealer, provider, oid, &record)),
                index_key: None,
                expires_at: record.ends_at(),
            },
        },
        Kind::Index(kind) => match open_index(sealer, provider, oid, blob) {
            Err(_) => Rotation::Unreadable,
            Ok((list, _)) if list.latest() <= now => Rotation::Expired,
            Ok((list, old_key)) => {
                if index_names(sealer, kind, &list.n).first() != Some(&oid.to_owned()) {
                    opener.note_move(provider, oid);
                }
                Rotation::Live {
                    resealed: reseal(old_key, || seal_index(sealer, provider, oid, &list)),
                    index_key: None,
                    expires_at: list.latest(),
                }
            }
        },
    };
    Some(rotation)
}

/// How many times an index change is tried against concurrent writers before giving up.
const SWAP_ATTEMPTS: usize = 16;

impl<B: Backend> SealedStore<B> {
    pub(super) async fn put_session(
        &self,
        provider: &str,
        key: &SessionKey,
        record: &SessionRecord,
    ) -> Result<(), StoreError> {
        let ns = namespaced(provider, "session");
        let name = hex(key.as_bytes());
        if record.ends_at() <= now_unix() {
            self.backend().delete(&ns, &name).await?;
            return Ok(());
        }
        // The indexes first: a session that exists must be found by a logout, while an index
        // entry without its session (the write below failed) is only skipped.
        if let Some(sid) = &record.sid {
            self.index_add(provider, IndexKind::Sid, sid, &name, record.expires_at)
                .await?;
        }
        self.index_add(
            provider,
            IndexKind::Sub,
            &record.sub,
            &name,
            record.expires_at,
        )
        .await?;
        let sealer = self.opener().sealer();
        let new = NewRecord {
            blob: seal_session(sealer, &ns, &name, record)?,
            oid: name,
            index_keys: Vec::new(),
            expires_at: record.ends_at(),
        };
        self.backend().put(&ns, new, self.opener()).await?;
        Ok(())
    }

    pub(super) async fn update_session(
        &self,
        provider: &str,
        key: &SessionKey,
        record: &SessionRecord,
    ) -> Result<bool, StoreError> {
        let ns = namespaced(provider, "session");
        let name = hex(key.as_bytes());
        let sealer = self.opener().sealer();
        for _ in 0..SWAP_ATTEMPTS {
            let Some(old) = self.backend().get(&ns, &name).await? else {
                return Ok(false);
            };
            if record.ends_at() <= now_unix() {
                return self.backend().swap(&ns, &name, Some(&old), None).await;
            }
            // Indexed before written, as in `put_session` (a no-op when the entries are there).
            if let Some(sid) = &record.sid {
                self.index_add(provider, IndexKind::Sid, sid, &name, record.expires_at)
                    .await?;
            }
            self.index_add(
                provider,
                IndexKind::Sub,
                &record.sub,
                &name,
                record.expires_at,
            )
            .await?;
            let new = seal_session(sealer, &ns, &name, record)?;
            if self
                .backend()
                .swap(&ns, &name, Some(&old), Some((new, record.ends_at())))
                .await?
            {
                return Ok(true);
            }
            // Written or deleted meanwhile: read again.
        }
        Err(contention())
    }

    pub(super) async fn get_session(
        &self,
        provider: &str,
        key: &SessionKey,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let ns = namespaced(provider, "session");
        let name = hex(key.as_bytes());
        let Some(blob) = self.backend().get(&ns, &name).await? else {
            return Ok(None);
        };
        let sealer = self.opener().sealer();
        let (record, old_key) = open_session(sealer, &ns, &name, &blob)?;
        if record.ends_at() <= now_unix() {
            self.backend()
                .delete_if_unchanged(&ns, &name, &blob)
                .await?;
            return Ok(None);
        }
        if let Some(new) = reseal(old_key, || seal_session(sealer, &ns, &name, &record))
            && let Err(err) = self
                .backend()
                .replace_if_unchanged(&ns, &name, &blob, new)
                .await
        {
            tracing::warn!(error = %err, "could not re-seal a session under the current key");
        }
        Ok(Some(record))
    }

    pub(super) async fn delete_session(
        &self,
        provider: &str,
        key: &SessionKey,
    ) -> Result<bool, StoreError> {
        let ns = namespaced(provider, "session");
        let name = hex(key.as_bytes());
        let Some(blob) = self.backend().get(&ns, &name).await? else {
            return Ok(false);
        };
        let record = open_session(self.opener().sealer(), &ns, &name, &blob).ok();
        let removed = self.backend().delete(&ns, &name).await?;
        if let Some((record, _)) = record {
            self.unindex_all(provider, &record, &name, None).await;
        }
        Ok(removed)
    }

    pub(super) async fn end_sessions(
        &self,
        provider: &str,
        sid: Option<&str>,
        sub: Option<&str>,
    ) -> Result<u64, StoreError> {
        let (kind, value) = match (sid, sub) {
            (Some(sid), _) => (IndexKind::Sid, sid),
            (None, Some(sub)) => (IndexKind::Sub, sub),
            (None, None) => return Ok(0),
        };
        let sealer = self.opener().sealer();
        let ns_index = namespaced(provider, kind.suffix());
        let ns = namespaced(provider, "session");
        let names = index_names(sealer, kind, value);
        let mut listed = BTreeSet::new();
        for name in &names {
            let Some(blob) = self.backend().get(&ns_index, name).await? else {
                continue;
            };
            match open_index(sealer, &ns_index, name, &blob) {
                Ok((list, _)) => listed.extend(list.s.into_keys()),
                Err(err) => tracing::warn!(
                    error = %err,
                    "a session index record does not open: the sessions it lists are not ended"
                ),
            }
        }
        let now = now_unix();
        let (mut ended, mut gone) = (0, Vec::new());
        for key in listed {
            let Some(blob) = self.backend().get(&ns, &key).await? else {
                // Left listed: it may be a sign-in of this sid being written right now (indexed
                // before it is stored), which a later logout must still find. An entry of a
                // session that is really gone is pruned at its end.
                continue;
            };
            let record = match open_session(sealer, &ns, &key, &blob) {
                Ok((record, _)) => Some(record),
                // Whose it is cannot be checked, but an authenticated index lists it under this
                // sid or sub: it goes, so that it never comes back usable (a key restored later).
                Err(_) => None,
            };
            if let Some(record) = &record {
                let (listed_under, subject_matches) = match kind {
                    IndexKind::Sid => (
                        record.sid.as_deref() == Some(value),
                        sub.is_none_or(|sub| record.sub == sub),
                    ),
                    IndexKind::Sub => (record.sub == value, true),
                };
                if !listed_under {
                    // A stale entry: the key now holds a session of another sid or sub.
                    gone.push(key);
                    continue;
                }
                if !subject_matches {
                    continue;
                }
            }
            if self.backend().delete(&ns, &key).await?
                && record.as_ref().is_none_or(|r| r.ends_at() > now)
            {
                ended += 1;
            }
            if let Some(record) = &record {
                self.unindex_all(provider, record, &key, Some(kind)).await;
            }
            gone.push(key);
        }
        for name in &names {
            self.update_index(&ns_index, kind, name, value, |list| {
                for key in &gone {
                    list.s.remove(key);
                }
            })
            .await?;
        }
        Ok(ended)
    }

    /// Moves the index record `name` (named under an older encryption key) to its name under
    /// the first key, merging it with what is there ([`rotation`] listed it).
    pub(super) async fn move_index(&self, ns_index: &str, name: &str) -> Result<(), StoreError> {
        let Kind::Index(kind) = kind_of(ns_index) else {
            return Ok(());
        };
        let sealer = self.opener().sealer();
        for _ in 0..SWAP_ATTEMPTS {
            let Some(blob) = self.backend().get(ns_index, name).await? else {
                return Ok(());
            };
            let (moved, _) = open_index(sealer, ns_index, name, &blob)?;
            let Some(first) = index_names(sealer, kind, &moved.n).into_iter().next() else {
                return Ok(());
            };
            if first == name {
                return Ok(());
            }
            self.update_index(ns_index, kind, &first, &moved.n, |list| {
                for (key, expires_at) in &moved.s {
                    list.add(
                        key,
                        (*expires_at).max(list.s.get(key).copied().unwrap_or(0)),
                    );
                }
            })
            .await?;
            if self
                .backend()
                .swap(ns_index, name, Some(&blob), None)
                .await?
            {
                return Ok(());
            }
        }
        Err(contention())
    }

    async fn index_add(
        &self,
        provider: &str,
        kind: IndexKind,
        value: &str,
        session: &str,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let ns_index = namespaced(provider, kind.suffix());
        let names = index_names(self.opener().sealer(), kind, value);
        let Some(first) = names.first() else {
            return Ok(());
        };
        self.update_index(&ns_index, kind, first, value, |list| {
            list.add(session, expires_at);
        })
        .await
    }

    /// Takes a session key out of the indexes of its record (but the one `skip`, which the
    /// caller prunes itself). Best effort: an entry left behind only names a session that is
    /// gone, and goes at its expiry.
    async fn unindex_all(
        &self,
        provider: &str,
        record: &SessionRecord,
        session: &str,
        skip: Option<IndexKind>,
    ) {
        let indexes = [
            (IndexKind::Sid, record.sid.as_deref()),
            (IndexKind::Sub, Some(record.sub.as_str())),
        ];
        for (kind, value) in indexes {
            let Some(value) = value.filter(|_| skip != Some(kind)) else {
                continue;
            };
            let ns_index = namespaced(provider, kind.suffix());
            for name in index_names(self.opener().sealer(), kind, value) {
                let removed = self
                    .update_index(&ns_index, kind, &name, value, |list| {
                        list.s.remove(session);
                    })
                    .await;
                if let Err(err) = removed {
                    tracing::warn!(error = %err, "could not take an ended session out of its index");
                }
            }
        }
    }

    /// Reads, changes and writes back one index record by compare-and-swap, retrying when
    /// another writer changed it meanwhile. Expired entries are pruned on the way; a list left
    /// empty removes the record, and a change that changes nothing writes nothing.
    async fn update_index(
        &self,
        ns_index: &str,
        kind: IndexKind,
        name: &str,
        value: &str,
        change: impl Fn(&mut IndexList),
    ) -> Result<(), StoreError> {
        let _lock = self.locks().lock(0, ns_index, name).await;
        let sealer = self.opener().sealer();
        for _ in 0..SWAP_ATTEMPTS {
            let old = self.backend().get(ns_index, name).await?;
            let (mut list, old_key) = match &old {
                None => (IndexList::new(value), false),
                Some(blob) => match open_index(sealer, ns_index, name, blob) {
                    Ok(opened) => opened,
                    Err(err) => {
                        // Its sessions cannot be found through it either way; starting over
                        // lets new sessions of this sid/sub be found again.
                        tracing::warn!(
                            error = %err,
                            kind = kind.suffix(),
                            "a session index record does not open and is replaced"
                        );
                        (IndexList::new(value), true)
                    }
                },
            };
            let before = list.clone();
            list.prune(now_unix());
            change(&mut list);
            if list == before && !old_key {
                return Ok(());
            }
            let new = if list.s.is_empty() {
                None
            } else {
                Some((seal_index(sealer, ns_index, name, &list)?, list.latest()))
            };
            if old.is_none() && new.is_none() {
                return Ok(());
            }
            if self
                .backend()
                .swap(ns_index, name, old.as_deref(), new)
                .await?
            {
                return Ok(());
            }
        }
        Err(contention())
    }
}

/// The sealed content of a `sid` / `sub` index record.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub(super) struct IndexList {
    /// The `sid` or `sub` itself, so that a key rotation can name the record under the first key.
    n: String,
    /// Each session key (hex) with its session's absolute end, unix seconds.
    s: BTreeMap<String, u64>,
}

impl IndexList {
    fn new(value: &str) -> Self {
        Self {
            n: value.to_owned(),
            s: BTreeMap::new(),
        }
    }

    /// Drops the entries whose session has ended by `now`.
    fn prune(&mut self, now: u64) {
        self.s.retain(|_, expires_at| *expires_at > now);
    }

    /// Lists (or re-lists with its new end) one session.
    fn add(&mut self, session: &str, expires_at: u64) {
        self.s.insert(session.to_owned(), expires_at);
    }

    /// When the last listed session ends (0 for none): the record's own expiry.
    fn latest(&self) -> u64 {
        self.s.values().copied().max().unwrap_or(0)
    }
}

fn namespaced(provider: &str, suffix: &str) -> String {
    format!("{provider}#{suffix}")
}

/// The names (hex index keys) of the index record of `value`, one per configured key, the one
/// to write first. The input is labelled so it never equals another index's input.
fn index_names(sealer: &Sealer, kind: IndexKind, value: &str) -> Vec<String> {
    let input = format!("tollgate-session-{}|{value}", kind.suffix());
    sealer
        .index_keys(input.as_bytes())
        .iter()
        .map(|k| hex(k))
        .collect()
}

fn contention() -> StoreError {
    StoreError::Unavailable("a session index kept changing under concurrent writers".into())
}

fn reseal(old_key: bool, seal: impl FnOnce() -> Result<Vec<u8>, StoreError>) -> Option<Vec<u8>> {
    // A failed re-seal leaves the record readable under its old key; the next read tries again.
    if old_key { seal().ok() } else { None }
}

fn seal_session(
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
fn open_session(
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

fn seal_index(
    sealer: &Sealer,
    ns: &str,
    name: &str,
    list: &IndexList,
) -> Result<Vec<u8>, StoreError> {
    let plain = serde_json::to_vec(list)
        .map_err(|err| StoreError::Io(format!("encoding a session index: {err}")))?;
    sealer.seal(&plain, &record_aad(ns, name))
}

fn open_index(
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

#[cfg(test)]
mod tests {
    use super::super::TokenStore as _;
    use super::super::keygen;
    use super::super::memory::MemoryBackend;
    use super::*;

    const P: &str = "entra_id";

    fn keys(lines: &[&str]) -> Sealer {
        Sealer::parse(&lines.join("\n")).unwrap()
    }

    fn record(sub: &str, sid: Option<&str>, expires_at: u64) -> SessionRecord {
        SessionRecord {
            oid: "oid-1".into(),
            sub: sub.into(),
            sid: sid.map(Into::into),
            claims: serde_json::Map::new(),
            scopes: vec![],
            id_token: "IDT-SECRET".into(),
            created_at: 1,
            expires_at,
            idle_expires_at: expires_at,
            access_expires_at: 1,
        }
    }

    /// The stored list of an index record, opened.
    async fn stored_list(
        store: &SealedStore<MemoryBackend>,
        kind: IndexKind,
        value: &str,
    ) -> Option<IndexList> {
        let ns = namespaced(P, kind.suffix());
        let name = index_names(store.opener().sealer(), kind, value).remove(0);
        let blob = store.backend().get(&ns, &name).await.unwrap()?;
        Some(
            open_index(store.opener().sealer(), &ns, &name, &blob)
                .unwrap()
                .0,
        )
    }

    /// A write prunes the entries whose session has ended, and a list left empty goes.
    #[tokio::test]
    async fn index_writes_prune_ended_sessions() {
        let store = SealedStore::new(MemoryBackend::default(), Sealer::ephemeral().unwrap());
        let (ns, kind) = (namespaced(P, "sub"), IndexKind::Sub);
        let name = index_names(store.opener().sealer(), kind, "s").remove(0);
        // An entry that has ended (written as if before it did).
        store
            .update_index(&ns, kind, &name, "s", |l| l.add("ended", 1))
            .await
            .unwrap();
        assert_eq!(stored_list(&store, kind, "s").await.unwrap().s.len(), 1);
        let live = now_unix() + 100;
        store
            .update_index(&ns, kind, &name, "s", |l| l.add("live", live))
            .await
            .unwrap();
        let list = stored_list(&store, kind, "s").await.unwrap();
        assert_eq!(list.s.keys().collect::<Vec<_>>(), ["live"]);
        assert_eq!(list.latest(), live);
        store
            .update_index(&ns, kind, &name, "s", |l| {
                l.s.remove("live");
            })
            .await
            .unwrap();
        assert_eq!(
            stored_list(&store, kind, "s").await,
            None,
            "empty list removed"
        );
    }

    /// With the memory backend too: a rotation re-seals sessions and index records and moves the
    /// indexes to the first key's names, so everything works once the old key is gone.
    #[tokio::test]
    async fn rotation_moves_session_indexes_to_the_first_key() {
        let (a, b) = (keygen(), keygen());
        let far = now_unix() + 10_000;
        let key = SessionKey::from_cookie_id("c1");
        let old = SealedStore::new(MemoryBackend::default(), keys(&[&a]));
        old.put_session(P, &key, &record("sub-1", Some("sid-1"), far))
            .await
            .unwrap();
        let both = SealedStore::new(old.into_backend(), keys(&[&b, &a]));
        // session, sid index, sub index
        assert_eq!(both.rotate_keys().await.unwrap(), 3);
        assert_eq!(both.rotate_keys().await.unwrap(), 0);
        let only_b = SealedStore::new(both.into_backend(), keys(&[&b]));
        assert!(only_b.get_session(P, &key).await.unwrap().is_some());
        assert!(
            stored_list(&only_b, IndexKind::Sid, "sid-1")
                .await
                .is_some()
        );
        assert_eq!(
            only_b.end_sessions(P, Some("sid-1"), None).await.unwrap(),
            1
        );
        assert_eq!(stored_list(&only_b, IndexKind::Sid, "sid-1").await, None);
        // The ended session was taken out of its sub index as well.
        assert_eq!(stored_list(&only_b, IndexKind::Sub, "sub-1").await, None);
    }

    fn list(entries: &[(&str, u64)]) -> IndexList {
        let mut list = IndexList::new("sid-1");
        for (key, exp) in entries {
            list.add(key, *exp);
        }
        list
    }

    #[test]
    fn pruning_drops_ended_sessions_only() {
        let mut l = list(&[("a", 10), ("b", 20), ("c", 30)]);
        l.prune(20);
        assert_eq!(l, list(&[("c", 30)]));
        assert_eq!(l.latest(), 30);
        l.prune(30);
        assert!(l.s.is_empty());
        assert_eq!(l.latest(), 0, "an empty list has expired");
    }

    #[test]
    fn re_adding_a_session_takes_its_new_end() {
        let mut l = list(&[("a", 10), ("b", 20)]);
        l.add("a", 50);
        assert_eq!(l, list(&[("a", 50), ("b", 20)]));
        assert_eq!(l.latest(), 50, "the record expires with its latest entry");
        l.add("a", 15);
        assert_eq!(l.latest(), 20);
    }

    #[test]
    fn kinds_follow_the_namespace_suffix() {
        assert_eq!(kind_of("entra_id"), Kind::User);
        assert_eq!(kind_of("entra_id#session"), Kind::Session);
        assert_eq!(kind_of("entra_id#sid"), Kind::Index(IndexKind::Sid));
        assert_eq!(kind_of("entra_id#sub"), Kind::Index(IndexKind::Sub));
        assert_eq!(kind_of("entra_id#other"), Kind::User);
    }

    #[test]
    fn index_names_are_keyed_and_per_kind() {
        let sealer = Sealer::ephemeral().unwrap();
        let sid = index_names(&sealer, IndexKind::Sid, "x");
        assert_eq!(sid.len(), 1);
        assert_eq!(sid[0].len(), 64);
        assert_ne!(sid, index_names(&sealer, IndexKind::Sub, "x"));
        assert_ne!(sid, index_names(&sealer, IndexKind::Sid, "y"));
        let other = Sealer::ephemeral().unwrap();
        assert_ne!(sid, index_names(&other, IndexKind::Sid, "x"));
        // Not a plain hash of the value: a dump cannot be searched by hashing a known sub.
        assert_ne!(sid[0], hex(&crate::util::sha256(b"x")));
    }

    #[test]
    fn blobs_are_bound_to_their_namespace_and_key() {
        let sealer = Sealer::ephemeral().unwrap();
        let l = list(&[("a", 10)]);
        let blob = seal_index(&sealer, "p#sid", "n1", &l).unwrap();
        assert_eq!(open_index(&sealer, "p#sid", "n1", &blob).unwrap().0, l);
        assert!(open_index(&sealer, "p#sid", "n2", &blob).is_err());
        assert!(open_index(&sealer, "p#sub", "n1", &blob).is_err());
        // An index blob is not a session, even where the AAD matches.
        assert!(matches!(
            open_session(&sealer, "p#sid", "n1", &blob),
            Err(StoreError::Corrupt(_))
        ));
    }
}
