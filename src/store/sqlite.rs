//! SQLite backend: one file, WAL, `synchronous=FULL` so an acknowledged `put` survives `kill -9`
//! (and power loss). The schema is versioned with `PRAGMA user_version`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension as _, TransactionBehavior, params};

use super::sealed::{
    Backend, NewRecord, Opener, Rotated, Rotation, SealedStore, StrayIndex, delegate_token_store,
    now_unix,
};
use super::{Sealer, StoreError};

/// A [`TokenStore`](super::TokenStore) in one SQLite file.
///
/// Table `tokens(provider, oid, upn_hash, record)`: `record` is the sealed blob, `upn_hash` the
/// (tenant, UPN) index key the row holds, if it holds one. Browser sessions and their `sid` /
/// `sub` indexes are rows too, under the providers `<provider>#session`, `#sid` and `#sub`, with
/// no UPN. Calls run on the blocking thread pool over one connection.
///
/// ```no_run
/// # async fn demo() -> Result<(), tollgate::store::StoreError> {
/// use tollgate::store::{Sealer, SqliteStore, TokenStore};
///
/// let sealer = Sealer::from_key_file("keys".as_ref())?;
/// let store = tokio::task::spawn_blocking(move || SqliteStore::open("tollgate.db", sealer))
///     .await
///     .expect("open task")?;
/// store.ping().await?;
/// # Ok(()) }
/// ```
pub struct SqliteStore(SealedStore<SqliteBackend>);

impl SqliteStore {
    /// Opens (creating if needed, mode 0600) and migrates the database. Blocking: in async code,
    /// call it inside `spawn_blocking` (as [`super::open`] does).
    pub fn open(path: impl AsRef<Path>, sealer: Sealer) -> Result<Self, StoreError> {
        let path = path.as_ref();
        create_private(path)?;
        let conn = Connection::open(path).map_err(|err| {
            StoreError::Io(format!("cannot open database {}: {err}", path.display()))
        })?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_error)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(db_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Config(format!(
                "database {} cannot use WAL journaling (got {mode:?}); put it on a local filesystem",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_error)?;
        // Deleted and re-sealed blobs are zeroed, so a retired key cannot open leftovers.
        conn.pragma_update(None, "secure_delete", "ON")
            .map_err(db_error)?;
        let store = SealedStore::new(
            SqliteBackend {
                conn: Arc::new(Mutex::new(conn)),
            },
            sealer,
        );
        store.backend().migrate(store.opener())?;
        Ok(Self(store))
    }
}

delegate_token_store!(SqliteStore);

/// The `tokens` table over one connection.
pub(crate) struct SqliteBackend {
    conn: Arc<Mutex<Connection>>,
}

impl Backend for SqliteBackend {
    const KIND: &'static str = "sqlite";
    // UPN and record live in one row, so only an edit of the file can make them disagree.
    const STRAY_INDEX: StrayIndex = StrayIndex::Corrupt;

    async fn get(&self, provider: &str, oid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let (p, o) = (provider.to_owned(), oid.to_owned());
        self.run(move |conn| {
            conn.query_row(
                "SELECT record FROM tokens WHERE provider = ?1 AND oid = ?2",
                params![p, o],
                |row| row.get::<_, Vec<u8>>(0),
            )
            .optional()
            .map_err(db_error)
        })
        .await
    }

    async fn find_by_index(
        &self,
        provider: &str,
        keys: &[[u8; 32]],
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let (p, keys) = (provider.to_owned(), keys.to_vec());
        self.run(move |conn| {
            for hash in &keys {
                let row = conn
                    .query_row(
                        "SELECT oid, record FROM tokens WHERE provider = ?1 AND upn_hash = ?2",
                        params![p, &hash[..]],
                        |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?)),
                    )
                    .optional()
                    .map_err(db_error)?;
                if row.is_some() {
                    return Ok(row);
                }
            }
            Ok(None)
        })
        .await
    }

    async fn put(
        &self,
        provider: &str,
        record: NewRecord,
        opener: &Opener,
    ) -> Result<Option<String>, StoreError> {
        let (p, opener) = (provider.to_owned(), opener.clone());
        self.run(move |conn| {
            let NewRecord {
                oid,
                blob,
                index_keys: keys,
                ..
            } = record;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_error)?;
            let holder = upn_holder(&tx, &opener, &p, &oid, &keys)?;
            let claim = keys.first().filter(|_| holder.is_none());
            tx.execute(
                "INSERT INTO tokens (provider, oid, upn_hash, record) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (provider, oid)
                 DO UPDATE SET upn_hash = excluded.upn_hash, record = excluded.record",
                params![p, oid, claim.map(|h| &h[..]), blob],
            )
            .map_err(db_error)?;
            tx.commit().map_err(db_error)?;
            Ok(holder)
        })
        .await
    }

    async fn replace_if_unchanged(
        &self,
        provider: &str,
        oid: &str,
        old: &[u8],
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let (p, o, old) = (provider.to_owned(), oid.to_owned(), old.to_vec());
        self.run(move |conn| {
            conn.execute(
                "UPDATE tokens SET record = ?4
                 WHERE provider = ?1 AND oid = ?2 AND record = ?3",
                params![p, o, old, new],
            )
            .map(|n| n > 0)
            .map_err(db_error)
        })
        .await
    }

    async fn delete(&self, provider: &str, oid: &str) -> Result<bool, StoreError> {
        let (p, o) = (provider.to_owned(), oid.to_owned());
        self.run(move |conn| delete_row(conn, &p, &o)).await
    }

    async fn delete_if_unchanged(
        &self,
        provider: &str,
        oid: &str,
        old: &[u8],
    ) -> Result<(), StoreError> {
        let (p, o, old) = (provider.to_owned(), oid.to_owned(), old.to_vec());
        self.run(move |conn| {
            conn.execute(
                "DELETE FROM tokens WHERE provider = ?1 AND oid = ?2 AND record = ?3",
                params![p, o, old],
            )
            .map(drop)
            .map_err(db_error)
        })
        .await
    }

    async fn swap(
        &self,
        provider: &str,
        oid: &str,
        old: Option<&[u8]>,
        new: Option<(Vec<u8>, u64)>,
    ) -> Result<bool, StoreError> {
        let (p, o, old) = (provider.to_owned(), oid.to_owned(), old.map(<[u8]>::to_vec));
        self.run(move |conn| {
            // Immediate: the read and the write are one step for other connections too.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(db_error)?;
            let current: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT record FROM tokens WHERE provider = ?1 AND oid = ?2",
                    params![p, o],
                    |row| row.get(0),
                )
                .optional()
                .map_err(db_error)?;
            if current != old {
                return Ok(false);
            }
            match new {
                Some((blob, _)) => tx.execute(
                    "INSERT INTO tokens (provider, oid, upn_hash, record) VALUES (?1, ?2, NULL, ?3)
                     ON CONFLICT (provider, oid) DO UPDATE SET upn_hash = NULL, record = excluded.record",
                    params![p, o, blob],
                ),
                None => tx.execute(
                    "DELETE FROM tokens WHERE provider = ?1 AND oid = ?2",
                    params![p, o],
                ),
            }
            .map_err(db_error)?;
            tx.commit().map_err(db_error)?;
            Ok(true)
        })
        .await
    }

    async fn rotate(&self, opener: &Opener) -> Result<Rotated, StoreError> {
        let opener = opener.clone();
        self.run(move |conn| rotate(conn, &opener)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(|conn| {
            conn.query_row("SELECT count(*) FROM tokens", [], |row| {
                row.get::<_, i64>(0)
            })
            .map(drop)
            .map_err(db_error)
        })
        .await
    }
}

/// Each entry moves the schema one version up; `user_version` counts the entries applied.
/// Never edit an entry once released: append a new one.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(
        "CREATE TABLE tokens (
        provider TEXT NOT NULL,
        oid TEXT NOT NULL,
        upn_hash BLOB,
        record BLOB NOT NULL,
        PRIMARY KEY (provider, oid)
    );
    CREATE UNIQUE INDEX tokens_upn ON tokens (provider, upn_hash) WHERE upn_hash IS NOT NULL;",
    ),
    // Version 1 keyed the index by the UPN alone (a sha256); it is keyed by tenant and UPN now.
    Migration::Reindex,
];

/// One step of [`MIGRATIONS`].
enum Migration {
    /// A schema change.
    Sql(&'static str),
    /// Every row that holds a UPN index entry gets it again, recomputed from its sealed record
    /// (which names the tenant and UPN). A row that does not open loses its entry: its user is
    /// found by oid until the next login.
    Reindex,
}

/// Another process (e.g. `tollgate store rotate` next to `serve`) may hold the write lock briefly.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl SqliteBackend {
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Io("database connection lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|err| StoreError::Io(format!("database task failed: {err}")))?
    }

    /// Brings the schema to the latest version. Blocking (run at open, before any call).
    fn migrate(&self, opener: &Opener) -> Result<(), StoreError> {
        let mut conn = self
            .conn
            .lock()
            .map_err(|_| StoreError::Io("database connection lock poisoned".into()))?;
        migrate(&mut conn, opener)
    }
}

fn migrate(conn: &mut Connection, opener: &Opener) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    let current: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(db_error)?;
    let latest = MIGRATIONS.len() as i64;
    if !(0..=latest).contains(&current) {
        return Err(StoreError::Config(format!(
            "database schema version {current} is newer than this tollgate understands \
             ({latest}); upgrade tollgate or use another `path`"
        )));
    }
    for (version, step) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let failed = |err: String| {
            StoreError::Io(format!(
                "migrating the database to version {}: {err}",
                version + 1
            ))
        };
        match step {
            Migration::Sql(sql) => tx
                .execute_batch(sql)
                .map_err(|err| failed(err.to_string()))?,
            Migration::Reindex => reindex(&tx, opener).map_err(|err| failed(err.to_string()))?,
        }
    }
    tx.pragma_update(None, "user_version", latest)
        .map_err(db_error)?;
    tx.commit().map_err(db_error)
}

/// The other user whose row holds one of `keys` (a (tenant, UPN)'s index keys), if any. Rows
/// whose refresh token expired are deleted on the way (they read as absent anyway); a row that
/// does not open keeps its entry, since nothing shows it has lost it.
fn upn_holder(
    conn: &Connection,
    opener: &Opener,
    provider: &str,
    oid: &str,
    keys: &[[u8; 32]],
) -> Result<Option<String>, StoreError> {
    for hash in keys {
        let row = conn
            .query_row(
                "SELECT oid, record FROM tokens
                 WHERE provider = ?1 AND upn_hash = ?2 AND oid <> ?3",
                params![provider, &hash[..], oid],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?)),
            )
            .optional()
            .map_err(db_error)?;
        let Some((other, blob)) = row else { continue };
        if !opener.has_expired(provider, &other, &blob) {
            return Ok(Some(other));
        }
        conn.execute(
            "DELETE FROM tokens WHERE provider = ?1 AND oid = ?2",
            params![provider, other],
        )
        .map_err(db_error)?;
    }
    Ok(None)
}

/// [`Migration::Reindex`].
fn reindex(conn: &Connection, opener: &Opener) -> Result<(), StoreError> {
    let rows: Vec<(String, String, Vec<u8>)> = {
        let mut stmt = conn
            .prepare("SELECT provider, oid, record FROM tokens WHERE upn_hash IS NOT NULL")
            .map_err(db_error)?;
        stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(db_error)?
            .collect::<Result<_, _>>()
            .map_err(db_error)?
    };
    for (provider, oid, blob) in rows {
        // The old index allowed one row per UPN, so the new keys are unique too.
        let key = opener.index_key(&provider, &oid, &blob);
        conn.execute(
            "UPDATE tokens SET upn_hash = ?3 WHERE provider = ?1 AND oid = ?2",
            params![provider, oid, key.as_ref().map(|h| &h[..])],
        )
        .map_err(db_error)?;
    }
    Ok(())
}

fn delete_row(conn: &mut Connection, provider: &str, oid: &str) -> Result<bool, StoreError> {
    conn.execute(
        "DELETE FROM tokens WHERE provider = ?1 AND oid = ?2",
        params![provider, oid],
    )
    .map(|n| n > 0)
    .map_err(db_error)
}

/// One transaction: other calls wait, and a crash leaves either all or none re-sealed.
fn rotate(conn: &mut Connection, opener: &Opener) -> Result<Rotated, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db_error)?;
    type Row = (String, String, Vec<u8>, Option<Vec<u8>>);
    let rows: Vec<Row> = {
        let mut stmt = tx
            .prepare("SELECT provider, oid, record, upn_hash FROM tokens")
            .map_err(db_error)?;
        stmt.query_map([], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })
        .map_err(db_error)?
        .collect::<Result<_, _>>()
        .map_err(db_error)?
    };
    let now = now_unix();
    let mut rotated = Rotated::default();
    for (provider, oid, blob, upn_hash) in rows {
        match opener.rotation(&provider, &oid, &blob, now) {
            Rotation::Expired => {
                tx.execute(
                    "DELETE FROM tokens WHERE provider = ?1 AND oid = ?2",
                    params![provider, oid],
                )
                .map_err(db_error)?;
            }
            Rotation::Live {
                resealed,
                index_key,
                ..
            } => {
                // An entry under an older key moves to the first one (left where it is in the
                // impossible case that another row holds that already).
                if let (Some(old), Some(new)) = (&upn_hash, index_key)
                    && old[..] != new[..]
                {
                    tx.execute(
                        "UPDATE OR IGNORE tokens SET upn_hash = ?3 WHERE provider = ?1 AND oid = ?2",
                        params![provider, oid, &new[..]],
                    )
                    .map_err(db_error)?;
                }
                if let Some(new_blob) = resealed {
                    tx.execute(
                        "UPDATE tokens SET record = ?3 WHERE provider = ?1 AND oid = ?2",
                        params![provider, oid, new_blob],
                    )
                    .map_err(db_error)?;
                    rotated.resealed += 1;
                }
            }
            Rotation::Unreadable => rotated.unreadable += 1,
        }
    }
    tx.commit().map_err(db_error)?;
    Ok(rotated)
}

/// The file holds only sealed blobs, but its user id list is still nobody else's business.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(StoreError::Io(format!(
            "cannot create database {}: {err}",
            path.display()
        ))),
    }
}

/// SQLite messages name tables and constraints, never bound values, so they are safe to pass on.
fn db_error(err: rusqlite::Error) -> StoreError {
    match err.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(format!("database busy: {err}"))
        }
        _ => StoreError::Io(format!("database: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::sealed::seal_record;
    use super::super::{TokenStore as _, UserTokens};
    use super::*;

    fn sealer() -> Sealer {
        Sealer::parse(&super::super::keygen()).unwrap()
    }

    #[test]
    fn new_database_is_at_latest_schema_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        drop(SqliteStore::open(&path, sealer()).unwrap());
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "database file mode {mode:o}");
        }
        // Reopening an up-to-date database must not re-run migrations (CREATE TABLE would fail).
        drop(SqliteStore::open(&path, sealer()).unwrap());
    }

    /// A version 1 database indexed UPNs by an unsalted sha256 of the UPN alone: opening it
    /// re-indexes every row from its sealed record, and a row that does not open loses its entry
    /// (found by oid until the next login) rather than keeping the old hash.
    #[tokio::test]
    async fn a_version_1_database_is_reindexed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let (sealer, stranger) = (sealer(), self::sealer());
        let tokens = |oid: &str, upn: &str| UserTokens {
            oid: oid.into(),
            tid: "tid-1".into(),
            upn: Some(upn.into()),
            access_token: "AT".into(),
            access_token_expires_at: 10,
            scopes: vec![],
            refresh_token: "RT".into(),
            refresh_token_expires_at: 4_000_000_000,
            sid: None,
        };
        let (ada, bob) = (
            tokens("ada", "Ada@Example.com"),
            tokens("bob", "bob@example.com"),
        );
        let old_hash = |upn: &str| {
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, upn.to_lowercase().as_bytes())
                .as_ref()
                .to_vec()
        };
        {
            let conn = Connection::open(&path).unwrap();
            let Migration::Sql(v1) = &MIGRATIONS[0] else {
                panic!("version 1 is a schema")
            };
            conn.execute_batch(v1).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            for (t, sealed_by) in [(&ada, &sealer), (&bob, &stranger)] {
                conn.execute(
                    "INSERT INTO tokens (provider, oid, upn_hash, record) VALUES ('p', ?1, ?2, ?3)",
                    params![
                        t.oid,
                        old_hash(t.upn.as_deref().unwrap()),
                        seal_record(sealed_by, "p", t).unwrap()
                    ],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path, sealer.clone()).unwrap();
        assert_eq!(
            store
                .get_by_upn("p", "TID-1", "ada@example.com")
                .await
                .unwrap(),
            Some(ada)
        );
        drop(store);
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let hashes: Vec<Option<Vec<u8>>> = conn
            .prepare("SELECT upn_hash FROM tokens ORDER BY oid")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(hashes[0].is_some() && hashes[0] != Some(old_hash("ada@example.com")));
        assert_eq!(hashes[1], None, "bob's record does not open: no entry");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        match SqliteStore::open(&path, sealer()) {
            Err(StoreError::Config(msg)) => assert!(msg.contains("99"), "{msg}"),
            Err(other) => panic!("expected Config error, got {other:?}"),
            Ok(_) => panic!("opened a database from the future"),
        }
    }
}
