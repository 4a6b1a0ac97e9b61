//! Per-user token store: each signed-in user's access and refresh tokens, kept so the app can
//! later ask for a delegated token by object id or UPN.
//!
//! Three backends behind [`TokenStore`]: [`MemoryStore`] (tests, demo), [`SqliteStore`] (default,
//! one file, survives `kill -9`) and [`RedisStore`] (shared by several replicas, entries expire
//! with the refresh token). The backends only keep blobs; sealing, expiry, re-seal on read, key
//! rotation, the UPN index rules and the per-user locks are implemented once, over all three
//! (`sealed.rs`).
//!
//! The store also keeps browser sessions ([`SessionRecord`] under a [`SessionKey`],
//! [`TokenStore::put_session`] and the methods after it), as records of their own kind in the
//! same backends, with `sid` / `sub` indexes for back-channel logout (`sessions.rs`).
//!
//! Every record is one AES-256-GCM blob ([`Sealer`]) holding the tokens, scopes and expiries,
//! bound to `provider|oid` so a blob copied onto another user's row does not open. The UPN index
//! keys on an HMAC-SHA256 of the user's tenant (`tid`) and lower-cased UPN, under a key derived
//! from the encryption key ([`Sealer`]), so nothing at rest reads as a token or a UPN, and a dump
//! cannot be searched for a name by hashing it. After a key rotation lookups also try the older
//! keys' index keys; `rotate_keys` moves the entries to the first key along with the records. A record that does not open is reported as [`StoreError::Corrupt`], never used
//! and never silently dropped. A record whose refresh token has expired reads as absent in every
//! backend.
//!
//! A UPN (`preferred_username`) is a name, not an identity: another account can carry the same
//! one, in another tenant or, once renamed, in the same one. So the index is per tenant, and an
//! entry belongs to the first user (oid) who claimed it until that user is deleted or their record
//! expires. A later account with the same tenant and UPN is stored and found by oid, but never
//! takes the UPN over: the store logs a warning (oids and tenant, not the UPN) instead.
//!
//! ```no_run
//! # async fn demo() -> Result<(), tollgate::store::StoreError> {
//! use tollgate::store::{StoreConfig, StoreKind, UserTokens};
//!
//! let cfg = StoreConfig {
//!     kind: StoreKind::Sqlite,
//!     encryption_keys_file: Some("keys".into()),
//!     ..StoreConfig::default()
//! };
//! let store = tollgate::store::open(&cfg).await?;
//! let tokens = UserTokens {
//!     oid: "00000000-0000-0000-0000-000000000001".into(),
//!     tid: "11111111-2222-3333-4444-555555555555".into(),
//!     upn: Some("Ada@Example.com".into()),
//!     access_token: "eyJ...".into(),
//!     access_token_expires_at: 1_900_000_000,
//!     scopes: vec!["User.Read".into()],
//!     refresh_token: "0.AX...".into(),
//!     refresh_token_expires_at: 1_907_776_000,
//!     sid: None,
//! };
//! store.put("entra_id", &tokens).await?;
//! let tenant = "11111111-2222-3333-4444-555555555555";
//! assert_eq!(store.get_by_upn("entra_id", tenant, "ada@example.com").await?, Some(tokens));
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod lock;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod seal;
mod sealed;
mod session_store;
mod sessions;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use self::lock::UserLock;
pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use self::seal::{Sealer, keygen};
pub use self::sessions::{SessionKey, SessionRecord};
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteStore;

/// The boxed future returned by [`TokenStore`] methods (keeps the trait object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One user's tokens at one provider.
///
/// `Debug` redacts both tokens.
#[derive(Clone, PartialEq, Eq)]
pub struct UserTokens {
    /// The user's object id (`oid` claim): the record's key.
    pub oid: String,
    /// The user's tenant (`tid` claim); empty for providers without tenants.
    pub tid: String,
    /// The user's UPN (`upn`/`preferred_username`): with the tenant, the second lookup key
    /// (case-insensitive).
    pub upn: Option<String>,
    /// The delegated access token.
    pub access_token: String,
    /// When the access token expires, unix seconds.
    pub access_token_expires_at: u64,
    /// The scopes the access token covers.
    pub scopes: Vec<String>,
    /// The refresh token.
    pub refresh_token: String,
    /// When the refresh token stops working, unix seconds. The record is gone after this instant
    /// (Redis TTL; other backends treat it as absent), so the caller must set a real lifetime
    /// (Entra usually returns none: use its 90-day default).
    pub refresh_token_expires_at: u64,
    /// The IdP session the tokens came from (the ID token's `sid`), when it named one: a logout
    /// only forgets the user for an `id_token_hint` of that session.
    pub sid: Option<String>,
}

impl fmt::Debug for UserTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserTokens")
            .field("oid", &self.oid)
            .field("tid", &self.tid)
            .field("upn", &self.upn)
            .field("access_token", &"<redacted>")
            .field("access_token_expires_at", &self.access_token_expires_at)
            .field("scopes", &self.scopes)
            .field("refresh_token", &"<redacted>")
            .field("refresh_token_expires_at", &self.refresh_token_expires_at)
            .field("sid", &self.sid.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// Where users' tokens are kept. Every method is keyed by the provider's configured name, so two
/// providers never see each other's users.
pub trait TokenStore: Send + Sync + 'static {
    /// Inserts or replaces the user's record; the oid record and the UPN index change together.
    /// A record whose refresh token has already expired is removed instead.
    ///
    /// The (tenant, UPN) index entry is only claimed while no other user holds it: when another
    /// oid's live record does, the record is stored without it (found by oid only) and a warning
    /// is logged. The entry is never moved to another oid.
    fn put<'a>(
        &'a self,
        provider: &'a str,
        tokens: &'a UserTokens,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// The user's record by object id.
    fn get_by_oid<'a>(
        &'a self,
        provider: &'a str,
        oid: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserTokens>, StoreError>>;

    /// The record of the user holding the UPN in tenant `tid` (both compared case-insensitively).
    fn get_by_upn<'a>(
        &'a self,
        provider: &'a str,
        tid: &'a str,
        upn: &'a str,
    ) -> BoxFuture<'a, Result<Option<UserTokens>, StoreError>>;

    /// Forgets the user (record and UPN index entry, which another user may claim afterwards).
    /// `true` if there was a record.
    fn delete<'a>(
        &'a self,
        provider: &'a str,
        oid: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Re-seals every record still sealed under an older key with the first key, and returns
    /// how many were re-sealed. Records that fail to open are left alone and reported as
    /// [`StoreError::Corrupt`] after the others are done.
    fn rotate_keys(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Checks that the store answers now. (`/readyz` does not call it: the proxy works without
    /// the store.)
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// `"memory"`, `"sqlite"` or `"redis"`.
    fn kind(&self) -> &'static str;

    /// Writes (inserts or replaces) a browser session and adds its key to the indexes of its
    /// `sid` and `sub` (for [`TokenStore::end_sessions`]). Writing it again with a later
    /// `idle_expires_at` slides its idle end. A record already past its end is removed instead.
    /// Redis drops the session at its end ([`SessionRecord::ends_at`]) by itself.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use tollgate::store::{MemoryStore, SessionKey, SessionRecord, TokenStore};
    ///
    /// let store = MemoryStore::new()?;
    /// let key = SessionKey::from_cookie_id("q2n5Yk3x0wVb8r1LzPfA7g");
    /// let record = SessionRecord {
    ///     oid: "oid-1".into(),
    ///     sub: "sub-1".into(),
    ///     sid: Some("sid-1".into()),
    ///     claims: serde_json::Map::new(),
    ///     scopes: vec!["openid".into()],
    ///     id_token: "eyJ...".into(),
    ///     created_at: 1_900_000_000,
    ///     expires_at: 4_000_000_000,
    ///     idle_expires_at: 4_000_000_000,
    ///     access_expires_at: 1_900_003_600,
    /// };
    /// store.put_session("entra_id", &key, &record).await?;
    /// assert_eq!(store.get_session("entra_id", &key).await?, Some(record));
    /// assert_eq!(store.end_sessions("entra_id", Some("sid-1"), None).await?, 1);
    /// assert_eq!(store.get_session("entra_id", &key).await?, None);
    /// assert!(!store.delete_session("entra_id", &key).await?);
    /// # Ok::<(), tollgate::store::StoreError>(()) }).unwrap();
    /// ```
    fn put_session<'a>(
        &'a self,
        provider: &'a str,
        key: &'a SessionKey,
        record: &'a SessionRecord,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Replaces a session only while it is still stored, and says whether it was: the write for
    /// a session already in use (sliding its idle end, a refreshed `access_expires_at`), so that a
    /// logout that ended it between the caller's read and this write is not undone, as
    /// [`TokenStore::put_session`] would. A record already past its end removes the session.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # use tollgate::store::{MemoryStore, SessionKey, SessionRecord, TokenStore};
    /// # let store = MemoryStore::new()?;
    /// # let key = SessionKey::from_cookie_id("q2n5Yk3x0wVb8r1LzPfA7g");
    /// # let record = SessionRecord {
    /// #     oid: "oid-1".into(), sub: "sub-1".into(), sid: Some("sid-1".into()),
    /// #     claims: Default::default(), scopes: vec![], id_token: "eyJ...".into(),
    /// #     created_at: 1_900_000_000, expires_at: 4_000_000_000,
    /// #     idle_expires_at: 3_900_000_000, access_expires_at: 1_900_003_600,
    /// # };
    /// store.put_session("entra_id", &key, &record).await?;
    /// let slid = SessionRecord { idle_expires_at: 3_900_003_600, ..record };
    /// assert!(store.update_session("entra_id", &key, &slid).await?);
    /// // A back-channel logout ends it; a request still holding it cannot bring it back.
    /// store.end_sessions("entra_id", Some("sid-1"), None).await?;
    /// assert!(!store.update_session("entra_id", &key, &slid).await?);
    /// assert_eq!(store.get_session("entra_id", &key).await?, None);
    /// # Ok::<(), tollgate::store::StoreError>(()) }).unwrap();
    /// ```
    fn update_session<'a>(
        &'a self,
        provider: &'a str,
        key: &'a SessionKey,
        record: &'a SessionRecord,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// The session, or `None` when absent, past `expires_at` or past `idle_expires_at` (an
    /// ended one is deleted, like expired user records). A session that does not open is
    /// [`StoreError::Corrupt`]. See [`TokenStore::put_session`] for an example.
    fn get_session<'a>(
        &'a self,
        provider: &'a str,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<SessionRecord>, StoreError>>;

    /// Removes one session (and its index entries). `true` if there was one. See
    /// [`TokenStore::put_session`] for an example.
    fn delete_session<'a>(
        &'a self,
        provider: &'a str,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Back-channel logout: ends every session indexed under `sid` when given, else under
    /// `sub`, and returns how many live sessions were deleted. When both are given, a session
    /// of that `sid` ends only if its `sub` matches too (OpenID Connect Back-Channel Logout 1.0
    /// §2.6: a logout token with both names the session of that subject). With neither, nothing
    /// ends. A listed session that does not open is deleted as well (it cannot be checked, and
    /// must not come back usable), without being counted. See [`TokenStore::put_session`] for
    /// an example.
    fn end_sessions<'a>(
        &'a self,
        provider: &'a str,
        sid: Option<&'a str>,
        sub: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Takes the lock that serialises every write of one user's record in this store (refresh,
    /// login, logout, deletion): hold the guard across the read-modify-write. Users of another
    /// store never wait on it. Entries go once nobody holds or waits for them.
    ///
    /// The crate's stores keep a lock map each; this default serves any other implementation
    /// from one process-wide map, keyed by the store's address as well.
    fn lock_user<'a>(&'a self, provider: &'a str, oid: &'a str) -> BoxFuture<'a, UserLock> {
        let instance = std::ptr::from_ref(self).cast::<()>().addr();
        Box::pin(self::lock::process_wide().lock(instance, provider, oid))
    }
}

/// Why a store call failed. Messages never contain tokens, keys or user ids.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or did not answer in time (map to `503`).
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    /// A stored record failed to open: altered, moved to another user, or sealed under a key that
    /// is not configured.
    #[error("token store record unreadable: {0}")]
    Corrupt(String),
    /// The store cannot start with this configuration.
    #[error("token store configuration: {0}")]
    Config(String),
    /// A local I/O or database error.
    #[error("token store I/O error: {0}")]
    Io(String),
}

/// The `[store]` configuration section.
#[derive(Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Which backend.
    pub kind: StoreKind,
    /// The SQLite database file.
    pub path: PathBuf,
    /// The Redis URL (`redis://[:password@]host:port[/db]`; `rediss://` for TLS, the server's
    /// certificate checked against the system's trust store or `SSL_CERT_FILE`). Serialized
    /// (`tollgate check`) with its password masked.
    #[serde(serialize_with = "serialize_redacted_url")]
    pub url: Option<String>,
    /// The key file (`kid:base64(32 bytes)` per line, first seals); required for sqlite and redis.
    pub encryption_keys_file: Option<PathBuf>,
    /// Upper bound of each Redis call, so an outage fails fast instead of hanging callers.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Sqlite,
            path: PathBuf::from("tollgate.db"),
            url: None,
            encryption_keys_file: None,
            timeout: Duration::from_secs(2),
        }
    }
}

/// The URL may carry a Redis password: `Debug` masks it.
impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("url", &self.url.as_deref().map(redact_url))
            .field("encryption_keys_file", &self.encryption_keys_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why the Redis `url` cannot work, checked without connecting: `tollgate check` refuses it
/// under `store.url`.
#[cfg(feature = "redis")]
pub(crate) fn redis_url_problem(url: &str) -> Option<String> {
    self::redis::check_url(url).err()
}

/// The store backend.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In process; lost on exit.
    Memory,
    /// One SQLite file (default).
    #[default]
    Sqlite,
    /// A Redis server shared by replicas.
    Redis,
}

/// Opens the configured store.
///
/// SQLite and Redis refuse to open without `encryption_keys_file`; memory uses the keys when
/// given and a random per-process key otherwise. Redis opens without waiting for the server (see
/// [`RedisStore::connect`]): only a URL that cannot work is refused here.
pub async fn open(cfg: &StoreConfig) -> Result<Arc<dyn TokenStore>, StoreError> {
    match cfg.kind {
        StoreKind::Memory => {
            let sealer = match &cfg.encryption_keys_file {
                Some(path) => Sealer::from_key_file(path)?,
                None => Sealer::ephemeral()?,
            };
            Ok(Arc::new(MemoryStore::with_sealer(sealer)))
        }
        StoreKind::Sqlite => open_sqlite(cfg).await,
        StoreKind::Redis => open_redis(cfg).await,
    }
}

#[cfg(feature = "sqlite")]
async fn open_sqlite(cfg: &StoreConfig) -> Result<Arc<dyn TokenStore>, StoreError> {
    let sealer = required_sealer(cfg)?;
    let path = cfg.path.clone();
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path, sealer))
        .await
        .map_err(|err| StoreError::Io(format!("opening the database: {err}")))??;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
async fn open_sqlite(_cfg: &StoreConfig) -> Result<Arc<dyn TokenStore>, StoreError> {
    Err(StoreError::Config(
        "store kind \"sqlite\" needs tollgate built with the \"sqlite\" feature".into(),
    ))
}

#[cfg(feature = "redis")]
async fn open_redis(cfg: &StoreConfig) -> Result<Arc<dyn TokenStore>, StoreError> {
    let sealer = required_sealer(cfg)?;
    let url = cfg.url.as_deref().ok_or_else(|| {
        StoreError::Config("store kind \"redis\" needs `url` (redis://host:port)".into())
    })?;
    if cfg.timeout.is_zero() {
        return Err(StoreError::Config(
            "`timeout` must be greater than zero".into(),
        ));
    }
    Ok(Arc::new(
        RedisStore::connect(url, sealer, cfg.timeout).await?,
    ))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_cfg: &StoreConfig) -> Result<Arc<dyn TokenStore>, StoreError> {
    Err(StoreError::Config(
        "store kind \"redis\" needs tollgate built with the \"redis\" feature".into(),
    ))
}

/// Persistent stores keep refresh tokens beyond the process: refuse to write them unsealed.
#[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
fn required_sealer(cfg: &StoreConfig) -> Result<Sealer, StoreError> {
    let kind = match cfg.kind {
        StoreKind::Memory => "memory",
        StoreKind::Sqlite => "sqlite",
        StoreKind::Redis => "redis",
    };
    match &cfg.encryption_keys_file {
        Some(path) => Sealer::from_key_file(path),
        None => Err(StoreError::Config(format!(
            "the {kind} store keeps refresh tokens beyond this process and needs an encryption key: \
             run `tollgate keygen > keys; chmod 600 keys` and set `encryption_keys_file = \"keys\"` \
             in [store]"
        ))),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The URL with its password replaced by `REDACTED`: the userinfo one
/// (`redis://user:password@host`) and the `pass` query parameter of `redis+unix:///path?pass=`.
/// A URL without a password is returned as written; one that does not parse is not shown.
fn redact_url(url: &str) -> String {
    const MASK: &str = "REDACTED";
    let Ok(mut parsed) = url::Url::parse(url) else {
        return "<unparsable url>".to_owned();
    };
    let in_userinfo = parsed.password().is_some();
    let in_query = parsed.query_pairs().any(|(k, _)| k == "pass");
    if !in_userinfo && !in_query {
        return url.to_owned();
    }
    if in_userinfo {
        // set_password only fails for URLs that cannot carry credentials at all.
        let _ = parsed.set_password(Some(MASK));
    }
    if in_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "pass" {
                    MASK.into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

pub(crate) fn serialize_redacted_url<S: serde::Serializer>(
    url: &Option<String>,
    ser: S,
) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => ser.serialize_some(&redact_url(url)),
        None => ser.serialize_none(),
    }
}

mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(de)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }

    pub(super) fn serialize<S: Serializer>(value: &Duration, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&humantime::format_duration(*value).to_string())
    }
}

/// One user's record as the store tests use it: tokens whose values must never show.
#[cfg(test)]
fn sample_tokens() -> UserTokens {
    UserTokens {
        oid: "oid-1".into(),
        tid: "tid-1".into(),
        upn: Some("Ada@Example.com".into()),
        access_token: "AT-SECRET-VALUE".into(),
        access_token_expires_at: 10,
        scopes: vec!["User.Read".into()],
        refresh_token: "RT-SECRET-VALUE".into(),
        refresh_token_expires_at: 20,
        sid: Some("sid-1".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> UserTokens {
        sample_tokens()
    }

    #[test]
    fn user_tokens_debug_redacts_tokens() {
        let debug = format!("{:?}", tokens());
        assert!(!debug.contains("AT-SECRET-VALUE"), "{debug}");
        assert!(!debug.contains("RT-SECRET-VALUE"), "{debug}");
        assert!(debug.contains("oid-1"));
    }

    #[test]
    fn config_defaults_and_humantime() {
        let cfg: StoreConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, StoreConfig::default());
        assert_eq!(cfg.kind, StoreKind::Sqlite);
        assert_eq!(cfg.path, PathBuf::from("tollgate.db"));
        assert_eq!(cfg.timeout, Duration::from_secs(2));
        let cfg: StoreConfig =
            serde_json::from_str(r#"{"kind":"redis","url":"redis://h","timeout":"250ms"}"#)
                .unwrap();
        assert_eq!(cfg.kind, StoreKind::Redis);
        assert_eq!(cfg.timeout, Duration::from_millis(250));
        let back: StoreConfig =
            serde_json::from_value(serde_json::to_value(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        assert!(serde_json::from_str::<StoreConfig>(r#"{"kindd":"redis"}"#).is_err());
        assert!(serde_json::from_str::<StoreConfig>(r#"{"timeout":"soon"}"#).is_err());
        assert!(serde_json::from_str::<StoreConfig>(r#"{"kind":"postgres"}"#).is_err());
    }

    #[test]
    fn config_debug_masks_redis_password() {
        let cfg = StoreConfig {
            url: Some("redis://:hunter2@cache:6379/0".into()),
            ..StoreConfig::default()
        };
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("cache:6379"), "{debug}");
    }

    #[test]
    fn config_serialization_masks_redis_password() {
        let cases = [
            (
                "redis://:hunter2@cache:6379/0",
                "redis://:REDACTED@cache:6379/0",
            ),
            (
                "rediss://tollgate:hunter2@cache.example:6380/2",
                "rediss://tollgate:REDACTED@cache.example:6380/2",
            ),
            (
                "redis+unix:///run/redis.sock?db=1&pass=hunter2&user=tollgate",
                "redis+unix:///run/redis.sock?db=1&pass=REDACTED&user=tollgate",
            ),
            // Nothing to hide: shown as written.
            ("redis://cache:6379/0", "redis://cache:6379/0"),
            ("redis://tollgate@cache", "redis://tollgate@cache"),
        ];
        for (url, shown) in cases {
            let cfg = StoreConfig {
                kind: StoreKind::Redis,
                url: Some(url.into()),
                ..StoreConfig::default()
            };
            let value = serde_json::to_value(&cfg).unwrap();
            assert_eq!(value["url"], shown, "{url}");
            assert_eq!(value["kind"], "redis");
        }
        let unparsable = StoreConfig {
            url: Some("redis://:hunter2@cache:port".into()),
            ..StoreConfig::default()
        };
        let value = serde_json::to_value(&unparsable).unwrap();
        assert!(!value.to_string().contains("hunter2"), "{value}");
        let none = serde_json::to_value(StoreConfig::default()).unwrap();
        assert!(
            none.get("url").is_none_or(serde_json::Value::is_null),
            "{none}"
        );

        // What `tollgate check` prints.
        let config = crate::config::Config {
            store: StoreConfig {
                kind: StoreKind::Redis,
                url: Some("redis://:hunter2@cache:6379/0".into()),
                ..StoreConfig::default()
            },
            ..crate::config::Config::default()
        };
        let printed = config.to_redacted_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(
            printed.contains("redis://[redacted]@cache:6379/0"),
            "{printed}"
        );
    }
}
