//! Per-user locks ([`UserLock`]): they serialise the read-modify-write of one user's record
//! (refresh, login, logout, deletion) within one process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError, Weak};

use tokio::sync::OwnedMutexGuard;

/// Held while one user's record is read, changed and written back
/// ([`TokenStore::lock_user`](super::TokenStore::lock_user)); dropping it lets the next writer of
/// that user in.
pub struct UserLock {
    _guard: OwnedMutexGuard<()>,
}

impl fmt::Debug for UserLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserLock").finish_non_exhaustive()
    }
}

/// The locks of the users someone holds (or waits for) right now, by (store instance, provider,
/// oid). Entries are weak, so the map only keeps users whose lock is alive.
#[derive(Default)]
pub(crate) struct UserLocks {
    map: Mutex<HashMap<LockKey, Weak<tokio::sync::Mutex<()>>>>,
}

/// The first part tells store instances apart when one map serves several (the process-wide
/// map behind the trait's default method); a store's own map uses 0.
type LockKey = (usize, String, String);

impl UserLocks {
    /// Waits for and takes the lock of (`instance`, `provider`, `oid`).
    pub(crate) async fn lock(&self, instance: usize, provider: &str, oid: &str) -> UserLock {
        let lock = {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            map.retain(|_, l| l.strong_count() > 0);
            let key = (instance, provider.to_owned(), oid.to_owned());
            match map.get(&key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&l));
                    l
                }
            }
        };
        UserLock {
            _guard: lock.lock_owned().await,
        }
    }

    /// How many users the map holds an entry for.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The map of [`TokenStore`](super::TokenStore) implementations that keep none of their own.
pub(crate) fn process_wide() -> &'static UserLocks {
    static LOCKS: LazyLock<UserLocks> = LazyLock::new(UserLocks::default);
    &LOCKS
}
