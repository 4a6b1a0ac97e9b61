//! In-process store for tests and the demo. Records are sealed anyway, so the memory backend
//! exercises the same open/re-seal paths as the persistent ones.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::{
    BoxFuture, Sealer, StoreError, TokenStore, UserTokens, is_expired, now_unix, open_found,
    open_record, record_upn_keys, rotation_result, seal_record, upn_keys, warn_upn_taken,
};

/// A [`TokenStore`] in process memory; everything is lost when the process exits.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tollgate::store::{MemoryStore, TokenStore};
///
/// let store = MemoryStore::new()?;
/// assert_eq!(store.get_by_oid("entra_id", "nobody").await?, None);
/// # Ok::<(), tollgate::store::StoreError>(()) }).unwrap();
/// ```
pub struct MemoryStore {
    sealer: Sealer,
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store sealing with a random per-process key.
    pub fn new() -> Result<Self, StoreError> {
        Ok(Self::with_sealer(Sealer::ephemeral()?))
    }

    /// An empty store sealing with the given keys.
    pub fn with_sealer(sealer: Sealer) -> Self {
        Self {
            sealer,
            inner: Mutex::new(Inner::default()),
        }
    }
}

impl TokenStore for MemoryStore {
    fn put<'a>(
        &'a self,
        provider: &'a str,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            if is_expired(tokens, now_unix()) {
                self.lock()?.remove(provider, &tokens.oid);
                return Ok(());
            }
            let blob = seal_record(&self.sealer, provider, tokens)?;
            let keys = record_upn_keys(&self.sealer, tokens);
            let holder = {
                let mut inner = self.lock()?;
                let holder = inner.holder(&self.sealer, provider, &tokens.oid, &keys);
                let claim = if holder.is_none() {
                    keys.first().copied()
                } else {
                    None
                };
                inner.insert(provider, &tokens.oid, claim, blob);
                holder
            };
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
            let blob = self
                .lock()?
                .records
                .get(&key(provider, oid))
                .map(|e| e.blob.clone());
            match blob {
                Some(blob) => self.read(provider, oid, blob, None),
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
            let found = {
                let inner = self.lock()?;
                upn_keys(&self.sealer, tid, upn)
                    .into_iter()
                    .find_map(|hash| {
                        let oid = inner.upn_index.get(&(provider.to_owned(), hash))?;
                        let entry = inner.records.get(&key(provider, oid))?;
                        Some((oid.clone(), entry.blob.clone()))
                    })
            };
            match found {
                Some((oid, blob)) => self.read(provider, &oid, blob, Some((tid, upn))),
                None => Ok(None),
            }
        })
    }

    fn delete<'a>(
        &'a self,
        provider: &'a str,
        oid: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move { Ok(self.lock()?.remove(provider, oid)) })
    }

    fn rotate_keys(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            type Snapshot = Vec<((String, String), Vec<u8>, Option<[u8; 32]>)>;
            let snapshot: Snapshot = self
                .lock()?
                .records
                .iter()
                .map(|(k, e)| (k.clone(), e.blob.clone(), e.upn))
                .collect();
            let now = now_unix();
            let (mut resealed, mut unreadable) = (0u64, 0u64);
            for ((provider, oid), blob, upn) in snapshot {
                match open_record(&self.sealer, &provider, &oid, &blob) {
                    Ok(opened) if is_expired(&opened.tokens, now) => {
                        self.lock()?.remove_if_unchanged(&provider, &oid, &blob);
                    }
                    Ok(opened) => {
                        // An entry under an older key moves to the first one.
                        let first = record_upn_keys(&self.sealer, &opened.tokens)
                            .first()
                            .copied();
                        if let (Some(old), Some(new)) = (upn, first)
                            && old != new
                        {
                            self.lock()?.reindex(&provider, &oid, old, new);
                        }
                        if let Some(new_blob) = opened.resealed
                            && self
                                .lock()?
                                .replace_if_unchanged(&provider, &oid, &blob, new_blob)
                        {
                            resealed += 1;
                        }
                    }
                    Err(_) => unreadable += 1,
                }
            }
            rotation_result(resealed, unreadable)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move { self.lock().map(drop) })
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}

type Key = (String, String);

fn key(provider: &str, oid: &str) -> Key {
    (provider.to_owned(), oid.to_owned())
}

struct Entry {
    upn: Option<[u8; 32]>,
    blob: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    records: HashMap<Key, Entry>,
    upn_index: HashMap<(String, [u8; 32]), String>,
}

impl Inner {
    /// The other user holding one of `keys` (a (tenant, UPN)'s index keys), if any. Entries of
    /// records that expired are dropped on the way; a record that does not open still holds its
    /// entry, since nothing shows it has lost it.
    fn holder(
        &mut self,
        sealer: &Sealer,
        provider: &str,
        oid: &str,
        keys: &[[u8; 32]],
    ) -> Option<String> {
        for hash in keys {
            let Some(other) = self.upn_index.get(&(provider.to_owned(), *hash)).cloned() else {
                continue;
            };
            if other == oid {
                continue;
            }
            let Some(entry) = self.records.get(&key(provider, &other)) else {
                self.upn_index.remove(&(provider.to_owned(), *hash));
                continue;
            };
            let expired = open_record(sealer, provider, &other, &entry.blob)
                .is_ok_and(|opened| is_expired(&opened.tokens, now_unix()));
            if expired {
                self.remove(provider, &other);
            } else {
                return Some(other);
            }
        }
        None
    }

    /// `upn`: the index key this record claims, free (see [`Inner::holder`]) or its own.
    fn insert(&mut self, provider: &str, oid: &str, upn: Option<[u8; 32]>, blob: Vec<u8>) {
        let old_upn = self.records.get(&key(provider, oid)).and_then(|e| e.upn);
        if let Some(old) = old_upn
            && Some(old) != upn
        {
            self.unindex(provider, oid, old);
        }
        if let Some(hash) = upn {
            self.upn_index
                .insert((provider.to_owned(), hash), oid.to_owned());
        }
        self.records.insert(key(provider, oid), Entry { upn, blob });
    }

    fn remove(&mut self, provider: &str, oid: &str) -> bool {
        match self.records.remove(&key(provider, oid)) {
            Some(entry) => {
                if let Some(hash) = entry.upn {
                    self.unindex(provider, oid, hash);
                }
                true
            }
            None => false,
        }
    }

    /// Removes the index entry only while it still points at `oid`.
    fn unindex(&mut self, provider: &str, oid: &str, hash: [u8; 32]) {
        let index_key = (provider.to_owned(), hash);
        if self.upn_index.get(&index_key).is_some_and(|o| o == oid) {
            self.upn_index.remove(&index_key);
        }
    }

    /// Moves the record's index entry from key `old` to `new`, unless the record no longer holds
    /// `old` (written meanwhile) or another user holds `new`.
    fn reindex(&mut self, provider: &str, oid: &str, old: [u8; 32], new: [u8; 32]) {
        let new_key = (provider.to_owned(), new);
        let holds_old = self
            .records
            .get(&key(provider, oid))
            .is_some_and(|e| e.upn == Some(old));
        if !holds_old || self.upn_index.get(&new_key).is_some_and(|o| o != oid) {
            return;
        }
        self.unindex(provider, oid, old);
        self.upn_index.insert(new_key, oid.to_owned());
        if let Some(entry) = self.records.get_mut(&key(provider, oid)) {
            entry.upn = Some(new);
        }
    }

    /// Compare-and-swap, so a re-seal never overwrites a record written meanwhile.
    fn replace_if_unchanged(
        &mut self,
        provider: &str,
        oid: &str,
        old: &[u8],
        new: Vec<u8>,
    ) -> bool {
        match self.records.get_mut(&key(provider, oid)) {
            Some(entry) if entry.blob == old => {
                entry.blob = new;
                true
            }
            _ => false,
        }
    }

    fn remove_if_unchanged(&mut self, provider: &str, oid: &str, old: &[u8]) {
        if self
            .records
            .get(&key(provider, oid))
            .is_some_and(|e| e.blob == old)
        {
            self.remove(provider, oid);
        }
    }
}

impl MemoryStore {
    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Io("memory store lock poisoned".into()))
    }

    fn read(
        &self,
        provider: &str,
        oid: &str,
        blob: Vec<u8>,
        upn: Option<(&str, &str)>,
    ) -> Result<Option<UserTokens>, StoreError> {
        let opened = open_found(&self.sealer, provider, oid, &blob, upn)?;
        if is_expired(&opened.tokens, now_unix()) {
            self.lock()?.remove_if_unchanged(provider, oid, &blob);
            return Ok(None);
        }
        if let Some(new_blob) = opened.resealed {
            self.lock()?
                .replace_if_unchanged(provider, oid, &blob, new_blob);
        }
        Ok(Some(opened.tokens))
    }
}
