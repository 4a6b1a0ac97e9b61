//! [`SealedStore`], the one implementation of the store's rules over any [`Backend`]: records
//! sealed to their provider and user, the UPN index rules, expiry, re-seal on read, key rotation
//! and the per-user locks. A backend only keeps blobs.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use super::lock::UserLocks;
use super::seal::record_aad;
use super::sessions;
use super::{
    BoxFuture, Sealer, SessionKey, SessionRecord, StoreError, TokenStore, UserLock, UserTokens,
};

/// What a backend keeps: sealed blobs by (provider, oid), and the UPN index (index key -> oid).
///
/// A backend never opens a blob itself; where it must judge another record inside its own
/// transaction or script (is the UPN holder's record expired, what does a rotation do with this
/// record), it asks the [`Opener`] it is handed.
pub(crate) trait Backend: Send + Sync + 'static {
    /// `"memory"`, `"sqlite"` or `"redis"` ([`TokenStore::kind`]).
    const KIND: &'static str;

    /// What a UPN lookup makes of an index entry that leads to a record of another (tenant, UPN).
    const STRAY_INDEX: StrayIndex;

    /// The blob stored for (provider, oid).
    fn get(
        &self,
        provider: &str,
        oid: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// The oid and blob of the record holding the first of `keys` (one (tenant, UPN)'s index
    /// keys, the current key's first) that has an entry.
    fn find_by_index(
        &self,
        provider: &str,
        keys: &[[u8; 32]],
    ) -> impl Future<Output = Result<Option<(String, Vec<u8>)>, StoreError>> + Send;

    /// Writes the record and, unless another user holds one of its index keys, claims the first
    /// one; the record's entry of an earlier UPN goes. Atomic where the backend can be, so that
    /// two writers of one UPN cannot both claim it. Returns the other holder's oid, if any.
    fn put(
        &self,
        provider: &str,
        record: NewRecord,
        opener: &Opener,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Compare-and-swap: replaces the blob only while it is still `old`, so a re-seal never
    /// overwrites a record written meanwhile. `true` if it was replaced.
    fn replace_if_unchanged(
        &self,
        provider: &str,
        oid: &str,
        old: &[u8],
        new: Vec<u8>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes the record and its index entry (while that still points at `oid`). `true` if
    /// there was a record.
    fn delete(
        &self,
        provider: &str,
        oid: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Removes an expired record found by a read, only while its blob is still `old`.
    fn delete_if_unchanged(
        &self,
        provider: &str,
        oid: &str,
        old: &[u8],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Compare-and-swap of a whole record without a UPN index entry (the session indexes):
    /// writes `new` (blob, expiry in unix seconds) or, for `None`, deletes, only while the stored
    /// blob is `old` (`None`: no record). `true` if it was done.
    fn swap(
        &self,
        provider: &str,
        oid: &str,
        old: Option<&[u8]>,
        new: Option<(Vec<u8>, u64)>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Goes over every record and applies what [`Opener::rotation`] says about it.
    fn rotate(&self, opener: &Opener) -> impl Future<Output = Result<Rotated, StoreError>> + Send;

    /// Checks that the backend answers now.
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// How a backend's index can disagree with its records.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum StrayIndex {
    /// Entry and record are one row: only an edit behind tollgate's back makes them disagree,
    /// which is reported as [`StoreError::Corrupt`].
    Corrupt,
    /// Entry and record are separate keys: a disagreeing entry is not this user's, and the
    /// lookup finds nobody.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    NotFound,
}

/// A record to write ([`Backend::put`]).
pub(crate) struct NewRecord {
    pub(crate) oid: String,
    pub(crate) blob: Vec<u8>,
    /// The record's UPN index keys, the one to claim first (none without a UPN).
    pub(crate) index_keys: Vec<[u8; 32]>,
    /// When the refresh token expires, unix seconds (backends with a TTL drop the record then).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) expires_at: u64,
}

/// Opens records for a backend that must judge them where it stands (inside its transaction or
/// lock). Cloning is cheap.
#[derive(Clone)]
pub(crate) struct Opener {
    sealer: Sealer,
    /// The session index records a rotation found named under an older key ((provider, oid)),
    /// moved once the backend's pass is done. Shared by clones (a backend may clone it into a
    /// blocking task).
    moves: Arc<Mutex<Vec<(String, String)>>>,
}

/// What a key rotation does with one record ([`Opener::rotation`]).
pub(crate) enum Rotation {
    /// The record does not open: left as it is, and counted.
    Unreadable,
    /// The refresh token expired: the record may go.
    Expired,
    /// A live record.
    Live {
        /// The blob sealed under the first key, when the stored one used an older key.
        resealed: Option<Vec<u8>>,
        /// The index key the record should hold under the first key (none without a UPN): an
        /// entry held under another key moves there, unless another user holds it.
        index_key: Option<[u8; 32]>,
        /// When the refresh token expires, unix seconds.
        #[cfg_attr(not(feature = "redis"), allow(dead_code))]
        expires_at: u64,
    },
}

/// What a backend's [`Backend::rotate`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rotated {
    pub(crate) resealed: u64,
    pub(crate) unreadable: u64,
}

/// A [`TokenStore`] over a [`Backend`]: everything but keeping the blobs.
pub(crate) struct SealedStore<B> {
    backend: B,
    opener: Opener,
    locks: UserLocks,
}

impl<B: Backend> SealedStore<B> {
    pub(crate) fn new(backend: B, sealer: Sealer) -> Self {
        Self {
            backend,
            opener: Opener {
                sealer,
                moves: Arc::default(),
            },
            locks: UserLocks::default(),
        }
    }

    pub(crate) fn backend(&self) -> &B {
        &self.backend
    }

    /// What the backend is handed to judge records (e.g. while migrating at open).
    pub(crate) fn opener(&self) -> &Opener {
        &self.opener
    }

    /// The blobs, to read them with other keys (a restart with a new key file).
    #[cfg(test)]
    pub(super) fn into_backend(self) -> B {
        self.backend
    }

    pub(super) fn locks(&self) -> &UserLocks {
        &self.locks
    }

    /// Opens a blob read from the backend. Expired records read as absent (and go where the
    /// backend has no TTL); one sealed under an older key is written back under the first key.
    async fn read(
        &self,
        provider: &str,
        oid: &str,
        blob: Vec<u8>,
        upn: Option<(&str, &str)>,
    ) -> Result<Option<UserTokens>, StoreError> {
        let opened = open_record(&self.opener.sealer, provider, oid, &blob)?;
        // A record found through the UPN index must belong to that tenant and UPN.
        let stray = upn.is_some_and(|(tid, upn)| !upn_matches(&opened.tokens, tid, upn));
        if stray && B::STRAY_INDEX == StrayIndex::Corrupt {
            return Err(StoreError::Corrupt(
                "UPN index points at another user's record".into(),
            ));
        }
        if is_expired(&opened.tokens, now_unix()) {
            self.backend
                .delete_if_unchanged(provider, oid, &blob)
                .await?;
            return Ok(None);
        }
        if let Some(new_blob) = opened.resealed
            && let Err(err) = self
                .backend
                .replace_if_unchanged(provider, oid, &blob, new_blob)
                .await
        {
            // The record stays readable under its old key; the next read or rotation tries again.
            tracing::warn!(error = %err, "could not re-seal a record under the current key");
        }
        Ok(if stray { None } else { Some(opened.tokens) })
    }
}

impl<B: Backend> TokenStore for SealedStore<B> {
    fn put<'a>(
        &'a self,
        provider: &'a str,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if is_expired(tokens, now_unix()) {
                self.backend.delete(provider, &tokens.oid).await?;
                return Ok(());
            }
            let record = NewRecord {
                oid: tokens.oid.clone(),
                blob: seal_record(&self.opener.sealer, provider, tokens)?,
                index_keys: record_upn_keys(&self.opener.sealer, tokens),
                expires_at: tokens.refresh_token_expires_at,
            };
            let holder = self.backend.put(provider, record, &self.opener).await?;
            if let Some(holder) = holder {
                warn_upn_taken(provider, tokens, &holder);
            }
            Ok(())
        })
    }

    fn get_by_oid<'a>(
        &'a self,
        provider: &'a str,
        oid: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserTokens>, StoreError>> {
        Box::pin(async move {
            match self.backend.get(provider, oid).await? {
                Some(blob) => self.read(provider, oid, blob, None).await,
                None => Ok(None),
            }
        })
    }

    fn get_by_upn<'a>(
        &'a self,
        provider: &'a str,
        tid: &'a str,
        upn: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserTokens>, StoreError>> {
        Box::pin(async move {
            let keys = upn_keys(&self.opener.sealer, tid, upn);
            match self.backend.find_by_index(provider, &keys).await? {
                Some((oid, blob)) => self.read(provider, &oid, blob, Some((tid, upn))).await,
                None => Ok(None),
            }
        })
    }

    fn delete<'a>(
        &'a self,
        provider: &'a str,
        oid: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(self.backend.delete(provider, oid))
    }

    fn rotate_keys(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            // A fresh opener, so that only this rotation's index moves are collected.
            let opener = Opener {
                sealer: self.opener.sealer.clone(),
                moves: Arc::default(),
            };
            let rotated = self.backend.rotate(&opener).await?;
            for (provider, oid) in opener.take_moves() {
                self.move_index(&provider, &oid).await?;
            }
            rotation_result(rotated.resealed, rotated.unreadable)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.backend.ping())
    }

    fn kind(&self) -> &'static str {
        B::KIND
    }

    fn put_session<'a>(
        &'a self,
        provider: &'a str,
        key: &'a SessionKey,
        record: &'a SessionRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(SealedStore::put_session(self, provider, key, record))
    }

    fn update_session<'a>(
        &'a self,
        provider: &'a str,
        key: &'a SessionKey,
        record: &'a SessionRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(SealedStore::update_session(self, provider, key, record))
    }

    fn get_session<'a>(
        &'a self,
        provider: &'a str,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>> {
        Box::pin(SealedStore::get_session(self, provider, key))
    }

    fn delete_session<'a>(
        &'a self,
        provider: &'a str,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(SealedStore::delete_session(self, provider, key))
    }

    fn end_sessions<'a>(
        &'a self,
        provider: &'a str,
        sid: Option<&'a str>,
        sub: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(SealedStore::end_sessions(self, provider, sid, sub))
    }

    fn lock_user<'a>(&'a self, provider: &'a str, oid: &'a str) -> BoxFuture<'a, UserLock> {
        // One map per store: two stores in one process never wait on each other.
        Box::pin(self.locks.lock(0, provider, oid))
    }
}

/// Implements [`TokenStore`] for a public newtype around a [`SealedStore`] (field `0`) by
/// handing every call to it.
macro_rules! delegate_token_store {
    ($store:ty) => {
        impl $crate::store::TokenStore for $store {
            fn put<'a>(
                &'a self,
                provider: &'a str,
                tokens: &'a $crate::store::UserTokens,
            ) -> $crate::store::BoxFuture<'a, Result<(), $crate::store::StoreError>> {
                self.0.put(provider, tokens)
            }

            fn get_by_oid<'a>(
                &'a self,
                provider: &'a str,
                oid: &'a str,
            ) -> $crate::store::BoxFuture<
                'a,
                Result<Option<$crate::store::UserTokens>, $crate::store::StoreError>,
            > {
                self.0.get_by_oid(provider, oid)
            }

            fn get_by_upn<'a>(
                &'a self,
                provider: &'a str,
                tid: &'a str,
                upn: &'a str,
            ) -> $crate::store::BoxFuture<
                'a,
                Result<Option<$crate::store::UserTokens>, $crate::store::StoreError>,
            > {
                self.0.get_by_upn(provider, tid, upn)
            }

            fn delete<'a>(
                &'a self,
                provider: &'a str,
                oid: &'a str,
            ) -> $crate::store::BoxFuture<'a, Result<bool, $crate::store::StoreError>> {
                self.0.delete(provider, oid)
            }

            fn rotate_keys(
                &self,
            ) -> $crate::store::BoxFuture<'_, Result<u64, $crate::store::StoreError>> {
                self.0.rotate_keys()
            }

            fn ping(&self) -> $crate::store::BoxFuture<'_, Result<(), $crate::store::StoreError>> {
                self.0.ping()
            }

            fn kind(&self) -> &'static str {
                self.0.kind()
            }

            fn put_session<'a>(
                &'a self,
                provider: &'a str,
                key: &'a $crate::store::SessionKey,
                record: &'a $crate::store::SessionRecord,
            ) -> $crate::store::BoxFuture<'a, Result<(), $crate::store::StoreError>> {
                $crate::store::TokenStore::put_session(&self.0, provider, key, record)
            }

            fn update_session<'a>(
                &'a self,
                provider: &'a str,
                key: &'a $crate::store::SessionKey,
                record: &'a $crate::store::SessionRecord,
            ) -> $crate::store::BoxFuture<'a, Result<bool, $crate::store::StoreError>> {
                $crate::store::TokenStore::update_session(&self.0, provider, key, record)
            }

            fn get_session<'a>(
                &'a self,
                provider: &'a str,
                key: &'a $crate::store::SessionKey,
            ) -> $crate::store::BoxFuture<
                'a,
                Result<Option<$crate::store::SessionRecord>, $crate::store::StoreError>,
            > {
                $crate::store::TokenStore::get_session(&self.0, provider, key)
            }

            fn delete_session<'a>(
                &'a self,
                provider: &'a str,
                key: &'a $crate::store::SessionKey,
            ) -> $crate::store::BoxFuture<'a, Result<bool, $crate::store::StoreError>> {
                $crate::store::TokenStore::delete_session(&self.0, provider, key)
            }

            fn end_sessions<'a>(
                &'a self,
                provider: &'a str,
                sid: Option<&'a str>,
                sub: Option<&'a str>,
            ) -> $crate::store::BoxFuture<'a, Result<u64, $crate::store::StoreError>> {
                $crate::store::TokenStore::end_sessions(&self.0, provider, sid, sub)
            }

            fn lock_user<'a>(
                &'a self,
                provider: &'a str,
                oid: &'a str,
            ) -> $crate::store::BoxFuture<'a, $crate::store::UserLock> {
                self.0.lock_user(provider, oid)
            }
        }
    };
}
pub(super) use delegate_token_store;

impl Opener {
    /// Whether the record opens and its refresh token has expired. A record that does not open
    /// is not expired: nothing shows it is (so it keeps, say, its UPN index entry).
    pub(crate) fn has_expired(&self, provider: &str, oid: &str, blob: &[u8]) -> bool {
        if let Some(expired) = sessions::has_expired(&self.sealer, provider, oid, blob) {
            return expired;
        }
        open_record(&self.sealer, provider, oid, blob)
            .is_ok_and(|opened| is_expired(&opened.tokens, now_unix()))
    }

    /// The index key the record holds under the first key, if it opens and has a UPN.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn index_key(&self, provider: &str, oid: &str, blob: &[u8]) -> Option<[u8; 32]> {
        // Sessions and their indexes never hold a UPN entry.
        if sessions::kind_of(provider) != sessions::Kind::User {
            return None;
        }
        let opened = open_record(&self.sealer, provider, oid, blob).ok()?;
        record_upn_keys(&self.sealer, &opened.tokens)
            .first()
            .copied()
    }

    /// What `rotate_keys` does with one stored record, judged at `now`.
    pub(crate) fn rotation(&self, provider: &str, oid: &str, blob: &[u8], now: u64) -> Rotation {
        if let Some(rotation) = session_rotation(self, provider, oid, blob, now) {
            return rotation;
        }
        match open_record(&self.sealer, provider, oid, blob) {
            Err(_) => Rotation::Unreadable,
            Ok(opened) if is_expired(&opened.tokens, now) => Rotation::Expired,
            Ok(opened) => Rotation::Live {
                index_key: record_upn_keys(&self.sealer, &opened.tokens)
                    .first()
                    .copied(),
                expires_at: opened.tokens.refresh_token_expires_at,
                resealed: opened.resealed,
            },
        }
    }
}

impl Opener {
    pub(super) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Notes an index record for [`SealedStore::move_index`] after the rotation pass.
    pub(super) fn note_move(&self, provider: &str, oid: &str) {
        self.moves
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((provider.to_owned(), oid.to_owned()));
    }

    fn take_moves(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.moves.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What is inside a sealed blob. Short names keep records small; the oid is not repeated since
/// the AAD already binds the blob to it.
#[derive(Serialize, Deserialize)]
struct SealedRecord {
    tid: String,
    upn: Option<String>,
    at: String,
    at_exp: u64,
    scp: Vec<String>,
    rt: String,
    rt_exp: u64,
    /// Absent in records written before tollgate kept it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sid: Option<String>,
}

/// A record read from a backend, opened.
struct Opened {
    tokens: UserTokens,
    /// The blob sealed under the first key, when the stored one used an older key.
    resealed: Option<Vec<u8>>,
}

/// What `rotate_keys` does with a session or index record; `None` for a user record. An index
/// record named under an older key is also listed in `moves`, for
/// `SealedStore::move_index` once the backend's pass is done.
fn session_rotation(
    opener: &Opener,
    provider: &str,
    oid: &str,
    blob: &[u8],
    now: u64,
) -> Option<Rotation> {
    let sealer = opener.sealer();
    let rotation = match sessions::kind_of(provider) {
        sessions::Kind::User => return None,
        sessions::Kind::Session => match sessions::open_session(sealer, provider, oid, blob) {
            Err(_) => Rotation::Unreadable,
            Ok((record, _)) if record.ends_at() <= now => Rotation::Expired,
            Ok((record, old_key)) => Rotation::Live {
                resealed: sessions::reseal(old_key, || {
                    sessions::seal_session(sealer, provider, oid, &record)
                }),
                index_key: None,
                expires_at: record.ends_at(),
            },
        },
        sessions::Kind::Index(kind) => match sessions::open_index(sealer, provider, oid, blob) {
            Err(_) => Rotation::Unreadable,
            Ok((list, _)) if list.latest() <= now => Rotation::Expired,
            Ok((list, old_key)) => {
                if sessions::index_names(sealer, kind, list.value()).first()
                    != Some(&oid.to_owned())
                {
                    opener.note_move(provider, oid);
                }
                Rotation::Live {
                    resealed: sessions::reseal(old_key, || {
                        sessions::seal_index(sealer, provider, oid, &list)
                    }),
                    index_key: None,
                    expires_at: list.latest(),
                }
            }
        },
    };
    Some(rotation)
}

/// The UPN index keys of (`tid`, `upn`), one per configured key ([`Sealer::index_keys`]), the
/// one to write first: lookups try each, and a put treats an entry under any of them as taken.
/// The tenant is length-prefixed so that no (tenant, UPN) pair shares a key with another.
fn upn_keys(sealer: &Sealer, tid: &str, upn: &str) -> Vec<[u8; 32]> {
    let tid = tid.to_ascii_lowercase();
    let mut input = Vec::with_capacity(8 + tid.len() + upn.len());
    input.extend_from_slice(&(tid.len() as u64).to_be_bytes());
    input.extend_from_slice(tid.as_bytes());
    input.extend_from_slice(upn.to_lowercase().as_bytes());
    sealer.index_keys(&input)
}

/// The UPN index keys of a record (none without a UPN).
fn record_upn_keys(sealer: &Sealer, tokens: &UserTokens) -> Vec<[u8; 32]> {
    tokens
        .upn
        .as_deref()
        .map(|upn| upn_keys(sealer, &tokens.tid, upn))
        .unwrap_or_default()
}

/// Said when a put finds the (tenant, UPN) entry held by another user. The UPN is personal data
/// and stays out of the log; the oids and the tenant let an operator find both accounts.
fn warn_upn_taken(provider: &str, tokens: &UserTokens, holder: &str) {
    tracing::warn!(
        provider,
        tid = %tokens.tid,
        oid = %tokens.oid,
        holder_oid = %holder,
        "token store: another user already holds this UPN in this tenant; the index keeps \
         pointing at them and this user is found by oid only"
    );
}

pub(super) fn seal_record(
    sealer: &Sealer,
    provider: &str,
    tokens: &UserTokens,
) -> Result<Vec<u8>, StoreError> {
    let mut record = SealedRecord {
        tid: tokens.tid.clone(),
        upn: tokens.upn.clone(),
        at: tokens.access_token.clone(),
        at_exp: tokens.access_token_expires_at,
        scp: tokens.scopes.clone(),
        rt: tokens.refresh_token.clone(),
        rt_exp: tokens.refresh_token_expires_at,
        sid: tokens.sid.clone(),
    };
    // The plaintext copies are overwritten once sealed, so freed memory does not keep them.
    let plain = zeroize::Zeroizing::new(
        serde_json::to_vec(&record)
            .map_err(|err| StoreError::Io(format!("encoding a record: {err}")))?,
    );
    zeroize::Zeroize::zeroize(&mut record.at);
    zeroize::Zeroize::zeroize(&mut record.rt);
    sealer.seal(&plain, &record_aad(provider, &tokens.oid))
}

/// Opens a stored blob; when it was sealed under an older key, also re-seals it under the first
/// key so the backend can write it back.
fn open_record(
    sealer: &Sealer,
    provider: &str,
    oid: &str,
    blob: &[u8],
) -> Result<Opened, StoreError> {
    let (plain, old_key) = sealer.open(blob, &record_aad(provider, oid))?;
    // The decrypted bytes are overwritten when dropped; the tokens live on in `UserTokens` only.
    let plain = zeroize::Zeroizing::new(plain);
    let record: SealedRecord = serde_json::from_slice(&plain)
        .map_err(|_| StoreError::Corrupt("record content is not a token record".into()))?;
    let tokens = UserTokens {
        oid: oid.to_owned(),
        tid: record.tid,
        upn: record.upn,
        access_token: record.at,
        access_token_expires_at: record.at_exp,
        scopes: record.scp,
        refresh_token: record.rt,
        refresh_token_expires_at: record.rt_exp,
        sid: record.sid,
    };
    let resealed = if old_key {
        Some(seal_record(sealer, provider, &tokens)?)
    } else {
        None
    };
    Ok(Opened { tokens, resealed })
}

fn upn_matches(tokens: &UserTokens, tid: &str, upn: &str) -> bool {
    tokens.tid.eq_ignore_ascii_case(tid)
        && tokens
            .upn
            .as_deref()
            .is_some_and(|stored| stored.to_lowercase() == upn.to_lowercase())
}

fn is_expired(tokens: &UserTokens, now: u64) -> bool {
    tokens.refresh_token_expires_at <= now
}

/// A rotation that met unreadable records must not look like a success, or the operator would
/// retire the old key and lose them for good.
fn rotation_result(resealed: u64, unreadable: u64) -> Result<u64, StoreError> {
    if unreadable == 0 {
        Ok(resealed)
    } else {
        Err(StoreError::Corrupt(format!(
            "{unreadable} record(s) could not be opened and were left as they are \
             ({resealed} re-sealed); keep their keys configured or delete those users"
        )))
    }
}

pub(super) fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use std::fmt;
    use std::time::Duration;

    use super::super::keygen;
    use super::super::memory::MemoryBackend;
    use super::*;

    const P: &str = "entra_id";
    const FAR_FUTURE: u64 = 4_000_000_000;

    fn tokens() -> UserTokens {
        super::super::sample_tokens()
    }

    fn user(oid: &str, upn: &str) -> UserTokens {
        UserTokens {
            oid: oid.into(),
            upn: Some(upn.into()),
            refresh_token_expires_at: FAR_FUTURE,
            ..tokens()
        }
    }

    fn expired_as(oid: &str) -> UserTokens {
        UserTokens {
            refresh_token_expires_at: 1,
            ..user(oid, "shared@x")
        }
    }

    fn store(sealer: &Sealer) -> SealedStore<MemoryBackend> {
        SealedStore::new(MemoryBackend::default(), sealer.clone())
    }

    /// The same blobs and index, read with other keys (a restart with a new key file).
    fn rekeyed(store: SealedStore<MemoryBackend>, sealer: &Sealer) -> SealedStore<MemoryBackend> {
        SealedStore::new(store.backend, sealer.clone())
    }

    fn keys(lines: &[&str]) -> Sealer {
        Sealer::parse(&lines.join("\n")).unwrap()
    }

    fn expect_corrupt<T: fmt::Debug>(result: Result<T, StoreError>, what: &str) {
        assert!(
            matches!(result, Err(StoreError::Corrupt(_))),
            "{what}: {result:?}"
        );
    }

    #[test]
    fn record_round_trips_and_is_bound_to_provider_and_oid() {
        let sealer = Sealer::ephemeral().unwrap();
        let blob = seal_record(&sealer, "entra_id", &tokens()).unwrap();
        let opened = open_record(&sealer, "entra_id", "oid-1", &blob).unwrap();
        assert_eq!(opened.tokens, tokens());
        assert!(opened.resealed.is_none());
        assert!(matches!(
            open_record(&sealer, "entra_id", "oid-2", &blob),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            open_record(&sealer, "other", "oid-1", &blob),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn records_written_before_sid_was_kept_still_open() {
        let sealer = Sealer::ephemeral().unwrap();
        let plain = br#"{"tid":"t","upn":null,"at":"a","at_exp":1,"scp":[],"rt":"r","rt_exp":2}"#;
        let blob = sealer.seal(plain, &record_aad("p", "o")).unwrap();
        let opened = open_record(&sealer, "p", "o", &blob).unwrap();
        assert_eq!(opened.tokens.sid, None);
        assert_eq!(opened.tokens.refresh_token, "r");
    }

    #[test]
    fn aad_is_unambiguous() {
        assert_ne!(record_aad("a|b", "c"), record_aad("a", "b|c"));
    }

    #[test]
    fn upn_keys_ignore_case_and_separate_tenants_and_keys() {
        let sealer = Sealer::ephemeral().unwrap();
        let keys = |tid: &str, upn: &str| upn_keys(&sealer, tid, upn);
        assert_eq!(
            keys("TID-1", "Ada@Example.COM"),
            keys("tid-1", "ada@example.com")
        );
        assert_ne!(
            keys("tid-1", "ada@example.com"),
            keys("tid-1", "bob@example.com")
        );
        assert_ne!(
            keys("tid-1", "ada@example.com"),
            keys("tid-2", "ada@example.com")
        );
        // The tenant is length-prefixed: moving characters between tenant and UPN changes the key.
        assert_ne!(keys("t", "ada@x"), keys("ta", "da@x"));
        // Another store key, another index.
        let other = Sealer::ephemeral().unwrap();
        assert_ne!(
            keys("tid-1", "ada@example.com"),
            upn_keys(&other, "tid-1", "ada@example.com")
        );
    }

    /// A valid blob written under another user's (or provider's) key does not open there, is
    /// reported rather than used, and is not dropped.
    #[tokio::test]
    async fn a_record_copied_to_another_user_does_not_open() {
        let sealer = Sealer::ephemeral().unwrap();
        let store = store(&sealer);
        let (attacker, victim) = (user("attacker", "a@x"), user("victim", "v@x"));
        store.put(P, &attacker).await.unwrap();
        store.put(P, &victim).await.unwrap();
        let blob = store.backend.get(P, "attacker").await.unwrap().unwrap();
        let copy = |oid: &str, index_keys| NewRecord {
            oid: oid.into(),
            blob: blob.clone(),
            index_keys,
            expires_at: FAR_FUTURE,
        };
        let victim_keys = record_upn_keys(&sealer, &victim);
        store
            .backend
            .put(P, copy("victim", victim_keys), &store.opener)
            .await
            .unwrap();
        expect_corrupt(store.get_by_oid(P, "victim").await, "moved blob");
        expect_corrupt(store.get_by_upn(P, "tid-1", "v@x").await, "by upn");
        expect_corrupt(store.get_by_oid(P, "victim").await, "second read");
        assert!(store.backend.get(P, "victim").await.unwrap().is_some());
        store
            .backend
            .put("other", copy("attacker", vec![]), &store.opener)
            .await
            .unwrap();
        expect_corrupt(
            store.get_by_oid("other", "attacker").await,
            "moved provider",
        );
        // A corrupt record can still be deleted.
        assert!(store.delete(P, "victim").await.unwrap());
        assert_eq!(store.get_by_oid(P, "victim").await.unwrap(), None);
    }

    /// An index entry leading to a record of another (tenant, UPN) never hands that record out.
    #[tokio::test]
    async fn a_stray_index_entry_is_corrupt() {
        let sealer = Sealer::ephemeral().unwrap();
        let store = store(&sealer);
        let attacker = user("attacker", "a@x");
        store.put(P, &attacker).await.unwrap();
        let blob = store.backend.get(P, "attacker").await.unwrap().unwrap();
        let record = NewRecord {
            oid: "attacker".into(),
            blob,
            index_keys: upn_keys(&sealer, "tid-1", "victim@x"),
            expires_at: FAR_FUTURE,
        };
        store.backend.put(P, record, &store.opener).await.unwrap();
        expect_corrupt(store.get_by_upn(P, "tid-1", "victim@x").await, "stray");
    }

    /// Records sealed under an older key open, are re-sealed under the first key when read, and
    /// are then readable without the old key.
    #[tokio::test]
    async fn reading_reseals_under_the_first_key() {
        let (a, b) = (keygen(), keygen());
        let old = store(&keys(&[&a]));
        old.put(P, &user("ada", "ada@x")).await.unwrap();
        let both = rekeyed(old, &keys(&[&b, &a]));
        assert_eq!(
            both.get_by_oid(P, "ada").await.unwrap(),
            Some(user("ada", "ada@x"))
        );
        // Already re-sealed: nothing left for a rotation.
        assert_eq!(both.rotate_keys().await.unwrap(), 0);
        let only_new = rekeyed(both, &keys(&[&b]));
        assert_eq!(
            only_new.get_by_oid(P, "ada").await.unwrap(),
            Some(user("ada", "ada@x"))
        );
    }

    /// `rotate_keys` re-seals every record under the first key and moves UPN entries to the
    /// first key's index; records that do not open are counted, left alone, and fail the call.
    #[tokio::test]
    async fn rotation_reseals_and_reindexes_everything() {
        let (a, b, c) = (keygen(), keygen(), keygen());
        let old = store(&keys(&[&a]));
        for (oid, upn) in [("ada", "ada@x"), ("bob", "bob@x")] {
            old.put(P, &user(oid, upn)).await.unwrap();
        }
        let both = rekeyed(old, &keys(&[&b, &a]));
        // Found through the old key's index entry before the rotation.
        assert_eq!(
            both.get_by_upn(P, "TID-1", "BOB@x").await.unwrap(),
            Some(user("bob", "bob@x"))
        );
        assert_eq!(
            both.rotate_keys().await.unwrap(),
            1,
            "ada (bob was re-sealed when read)"
        );
        assert_eq!(both.rotate_keys().await.unwrap(), 0);
        let only_new = rekeyed(both, &keys(&[&b]));
        for (oid, upn) in [("ada", "ada@x"), ("bob", "bob@x")] {
            assert_eq!(
                only_new.get_by_upn(P, "tid-1", upn).await.unwrap(),
                Some(user(oid, upn))
            );
        }

        // A record under a key nobody has any more.
        let stranger = store(&keys(&[&c]));
        stranger.put(P, &user("carl", "carl@x")).await.unwrap();
        let blob = stranger.backend.get(P, "carl").await.unwrap().unwrap();
        let record = NewRecord {
            oid: "carl".into(),
            blob,
            index_keys: vec![],
            expires_at: FAR_FUTURE,
        };
        only_new
            .backend
            .put(P, record, &only_new.opener)
            .await
            .unwrap();
        match only_new.rotate_keys().await {
            Err(StoreError::Corrupt(msg)) => assert!(msg.starts_with("1 record(s)"), "{msg}"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(only_new.backend.get(P, "carl").await.unwrap().is_some());
    }

    /// A record whose refresh token expired reads as absent and goes; its UPN entry is free for
    /// the next user, while a live holder keeps its entry.
    #[tokio::test]
    async fn expired_records_are_absent_and_free_their_upn() {
        let sealer = Sealer::ephemeral().unwrap();
        let store = store(&sealer);
        let expired = UserTokens {
            refresh_token_expires_at: now_unix() - 1,
            ..user("old", "shared@x")
        };
        // Written as it was before it expired, straight into the backend.
        let record = NewRecord {
            oid: "old".into(),
            blob: seal_record(&sealer, P, &expired).unwrap(),
            index_keys: record_upn_keys(&sealer, &expired),
            expires_at: expired.refresh_token_expires_at,
        };
        store.backend.put(P, record, &store.opener).await.unwrap();
        let new = user("new", "shared@x");
        store.put(P, &new).await.unwrap();
        assert_eq!(
            store.get_by_upn(P, "tid-1", "shared@x").await.unwrap(),
            Some(new.clone())
        );
        assert_eq!(store.get_by_oid(P, "old").await.unwrap(), None);
        assert_eq!(store.backend.get(P, "old").await.unwrap(), None);

        // A live holder keeps the entry.
        store.put(P, &user("later", "shared@x")).await.unwrap();
        assert_eq!(
            store.get_by_upn(P, "tid-1", "shared@x").await.unwrap(),
            Some(new)
        );

        // Putting an expired record removes the user.
        store.put(P, &expired_as("new")).await.unwrap();
        assert_eq!(store.backend.get(P, "new").await.unwrap(), None);
        assert_eq!(
            store.get_by_upn(P, "tid-1", "shared@x").await.unwrap(),
            None
        );
    }

    #[tokio::test]
    async fn lock_user_serialises_one_user_only() {
        let store = store(&Sealer::ephemeral().unwrap());
        let held = store.lock_user(P, "ada").await;
        let short = Duration::from_millis(50);
        assert!(
            tokio::time::timeout(short, store.lock_user(P, "ada"))
                .await
                .is_err(),
            "a second locker of the same user waits"
        );
        // Other users, other providers and other stores do not wait.
        let _bob = tokio::time::timeout(short, store.lock_user(P, "bob"))
            .await
            .expect("another user");
        let _other = tokio::time::timeout(short, store.lock_user("other", "ada"))
            .await
            .expect("another provider");
        let another = self::store(&Sealer::ephemeral().unwrap());
        let _elsewhere = tokio::time::timeout(short, another.lock_user(P, "ada"))
            .await
            .expect("another store");

        // The waiter gets in once the holder lets go.
        let waiter = tokio::spawn(async move {
            let _lock = store.lock_user(P, "ada").await;
            store
        });
        tokio::time::sleep(short).await;
        assert!(!waiter.is_finished());
        drop(held);
        let store = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter let in")
            .unwrap();
        drop((_bob, _other));

        // Unused entries go: the map holds only users locked right now.
        for i in 0..100 {
            drop(store.lock_user(P, &format!("user-{i}")).await);
        }
        assert!(store.locks.len() <= 1, "{}", store.locks.len());
    }

    #[test]
    fn the_lock_guard_is_send() {
        fn send<T: Send>() {}
        send::<UserLock>();
    }
}
