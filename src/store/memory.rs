//! In-process store for tests and the demo. Records are sealed anyway, so the memory backend
//! exercises the same open/re-seal paths as the persistent ones.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use super::sealed::{
    Backend, NewRecord, Opener, Rotated, Rotation, SealedStore, StrayIndex, delegate_token_store,
    now_unix,
};
use super::{Sealer, StoreError};

/// A [`TokenStore`](super::TokenStore) in process memory; everything is lost when the process
/// exits.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use tollgate::store::{MemoryStore, TokenStore};
///
/// let store = MemoryStore::new()?;
/// assert_eq!(store.get_by_oid("entra_id", "nobody").await?, None);
/// # Ok::<(), tollgate::store::StoreError>(()) }).unwrap();
/// ```
pub struct MemoryStore(SealedStore<MemoryBackend>);

impl MemoryStore {
    /// An empty store sealing with a random per-process key.
    pub fn new() -> Result<Self, StoreError> {
        Ok(Self::with_sealer(Sealer::ephemeral()?))
    }

    /// An empty store sealing with the given keys.
    pub fn with_sealer(sealer: Sealer) -> Self {
        Self(SealedStore::new(MemoryBackend::default(), sealer))
    }
}

delegate_token_store!(MemoryStore);

/// The blobs and the UPN index in two maps behind one mutex.
#[derive(Default)]
pub(crate) struct MemoryBackend {
    inner: Mutex<Inner>,
}

impl Backend for MemoryBackend {
    const KIND: &'static str = "memory";
    // The index entry and the record change together under one lock.
    const STRAY_INDEX: StrayIndex = StrayIndex::Corrupt;

    async fn get(&self, provider: &str, oid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()?
            .records
            .get(&key(provider, oid))
            .map(|e| e.blob.clone()))
    }

    async fn find_by_index(
        &self,
        provider: &str,
        keys: &[[u8; 32]],
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let inner = self.lock()?;
        Ok(keys.iter().find_map(|hash| {
            let oid = inner.upn_index.get(&(provider.to_owned(), *hash))?;
            let entry = inner.records.get(&key(provider, oid))?;
            Some((oid.clone(), entry.blob.clone()))
        }))
    }

    async fn put(
        &self,
        provider: &str,
        record: NewRecord,
        opener: &Opener,
    ) -> Result<Option<String>, StoreError> {
        let mut inner = self.lock()?;
        let holder = inner.holder(opener, provider, &record.oid, &record.index_keys);
        let claim = if holder.is_none() {
            record.index_keys.first().copied()
        } else {
            None
        };
        inner.insert(provider, &record.oid, claim, record.blob);
        Ok(holder)
    }

    async fn replace_if_unchanged(
        &self,
        provider: &str,
        oid: &str,
        old: &[u8],
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        Ok(self.lock()?.replace_if_unchanged(provider, oid, old, new))
    }

    async fn delete(&self, provider: &str, oid: &str) -> Result<bool, StoreError> {
        Ok(self.lock()?.remove(provider, oid))
    }

    async fn delete_if_unchanged(
        &self,
        provider: &str,
        oid: &str,
        old: &[u8],
    ) -> Result<(), StoreError> {
        self.lock()?.remove_if_unchanged(provider, oid, old);
        Ok(())
    }

    async fn swap(
        &self,
        provider: &str,
        oid: &str,
        old: Option<&[u8]>,
        new: Option<(Vec<u8>, u64)>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock()?;
        let current = inner.records.get(&key(provider, oid)).map(|e| &e.blob[..]);
        if current != old {
            return Ok(false);
        }
        match new {
            Some((blob, _)) => inner.insert(provider, oid, None, blob),
            None => {
                inner.remove(provider, oid);
            }
        }
        Ok(true)
    }

    /// Over a snapshot, each change a compare-and-swap: callers are not held up meanwhile.
    async fn rotate(&self, opener: &Opener) -> Result<Rotated, StoreError> {
        type Snapshot = Vec<((String, String), Vec<u8>, Option<[u8; 32]>)>;
        let snapshot: Snapshot = self
            .lock()?
            .records
            .iter()
            .map(|(k, e)| (k.clone(), e.blob.clone(), e.upn))
            .collect();
        let now = now_unix();
        let mut rotated = Rotated::default();
        for ((provider, oid), blob, upn) in snapshot {
            match opener.rotation(&provider, &oid, &blob, now) {
                Rotation::Expired => {
                    self.lock()?.remove_if_unchanged(&provider, &oid, &blob);
                }
                Rotation::Live {
                    resealed,
                    index_key,
                    ..
                } => {
                    // An entry under an older key moves to the first one.
                    if let (Some(old), Some(new)) = (upn, index_key)
                        && old != new
                    {
                        self.lock()?.reindex(&provider, &oid, old, new);
                    }
                    if let Some(new_blob) = resealed
                        && self
                            .lock()?
                            .replace_if_unchanged(&provider, &oid, &blob, new_blob)
                    {
                        rotated.resealed += 1;
                    }
                }
                Rotation::Unreadable => rotated.unreadable += 1,
            }
        }
        Ok(rotated)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(drop)
    }
}

impl MemoryBackend {
    fn lock(&self) -> Result<MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError::Io("memory store lock poisoned".into()))
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
        opener: &Opener,
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
            if opener.has_expired(provider, &other, &entry.blob) {
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
