//! The session operations of [`SealedStore`] (`put_session`, `get_session`, `update_session`,
//! `delete_session`, `end_sessions`): session records and their `sid` / `sub` index lists
//! ([`super::sessions`]) kept in the same blob backends as users' tokens.

use std::collections::BTreeSet;

use super::sealed::{Backend, NewRecord, SealedStore, now_unix};
use super::sessions::*;
use super::{StoreError, hex};

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
        self.index_session(provider, &name, record).await?;
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

    /// Lists the session `name` under its `sid` (when it has one) and its `sub`.
    async fn index_session(
        &self,
        provider: &str,
        name: &str,
        record: &SessionRecord,
    ) -> Result<(), StoreError> {
        if let Some(sid) = &record.sid {
            self.index_add(provider, IndexKind::Sid, sid, name, record.expires_at)
                .await?;
        }
        self.index_add(
            provider,
            IndexKind::Sub,
            &record.sub,
            name,
            record.expires_at,
        )
        .await
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
            self.index_session(provider, &name, record).await?;
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

fn contention() -> StoreError {
    StoreError::Unavailable("a session index kept changing under concurrent writers".into())
}

#[cfg(test)]
mod tests {

    use super::super::memory::MemoryBackend;
    use super::super::{Sealer, SessionKey, SessionRecord, TokenStore as _, keygen};
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
