//! The exchange cache shared by replicas (`[cache] shared = "redis"`): what a miss in the
//! process's own cache does before it asks the IdP.
//!
//! Lookup order, for every grant that goes through [`super::Exchanger`]'s cache (On-Behalf-Of,
//! RFC 8693 token exchange, client credentials, the jwt-bearer grant; not refresh): the
//! in-process cache (with its single flight) -> Redis -> the IdP. A Redis hit fills the
//! in-process cache; a token fetched from the IdP is written to Redis.
//!
//! - Key: `tollgate:xc:<hex of the in-process cache key>`; the value is the token and its `exp`,
//!   sealed with the store's [`Sealer`] and bound (AAD) to the key, so a dump of Redis shows no
//!   token and a value copied under another key does not open. It expires at the moment the
//!   in-process cache would stop handing it out (`min(token exp, subject exp) - expiry_margin`),
//!   and a reader checks that moment again with its own clock.
//! - Single flight across replicas: on a miss, `SET tollgate:xl:<hex> <random> NX PX 5000`; the
//!   replica that takes the lock asks the IdP, writes the entry, then releases the lock. The
//!   others poll for the entry (every `POLL_EVERY`, at most `WAIT_AT_MOST`) and, when the
//!   lock goes without an entry (the IdP refused) or the wait runs out, ask the IdP themselves.
//! - Redis down or slow never fails a request: every call is bounded by `[cache] redis_timeout`;
//!   on a failure the exchange goes to the IdP, and Redis is left alone for `RETRY_AFTER` so an
//!   outage costs one timeout per interval, not one per request. A warning is logged at most once
//!   per `WARN_EVERY`; `tollgate_shared_cache_total{result="hit|miss|error"}` counts lookups
//!   and `tollgate_shared_cache_errors_total` every failed Redis call.
//!
//! Without the `redis` feature, [`SharedCache`] has no value and the lookup is the IdP's alone.

use std::future::Future;

use super::{ExchangeError, ExchangedToken};

/// Looks `key` up in the shared cache (when there is one) before calling `idp`, and shares
/// what `idp` returns. With `skip_cache`, Redis is not read, only written.
pub(super) async fn through<F, Fut>(
    shared: Option<SharedCache>,
    key: [u8; 32],
    skip_cache: bool,
    subject_exp: Option<u64>,
    idp: F,
) -> Result<ExchangedToken, ExchangeError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<ExchangedToken, ExchangeError>>,
{
    match shared {
        Some(shared) => shared.through(key, skip_cache, subject_exp, idp).await,
        None => idp().await,
    }
}

#[cfg(feature = "redis")]
pub(crate) use self::redis_cache::SharedCache;

/// No shared cache can be built without Redis support: the type has no value.
#[cfg(not(feature = "redis"))]
#[derive(Clone)]
pub(crate) enum SharedCache {}

#[cfg(not(feature = "redis"))]
impl SharedCache {
    /// Refuses `[cache] shared` (config `check()` already has).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn open(cfg: &crate::config::Config) -> Result<Option<Self>, String> {
        match cfg.cache.shared {
            crate::config::SharedCache::None => Ok(None),
            crate::config::SharedCache::Redis => {
                Err("cache.shared = \"redis\" needs the \"redis\" feature".into())
            }
        }
    }

    async fn through<F, Fut>(
        self,
        _: [u8; 32],
        _: bool,
        _: Option<u64>,
        _: F,
    ) -> Result<ExchangedToken, ExchangeError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ExchangedToken, ExchangeError>>,
    {
        match self {}
    }

    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) async fn forget(&self, _: &[u8; 32]) {
        match *self {}
    }
}

#[cfg(feature = "redis")]
mod redis_cache {
    use std::future::Future;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use ::redis::{RedisResult, Script};
    use serde::{Deserialize, Serialize};

    use super::super::{ExchangeError, ExchangedToken};
    use crate::store::Sealer;
    use crate::util::now;

    /// How long the replica that took a key's lock may take to fetch the token before another
    /// replica may take it.
    const LOCK_FOR: Duration = Duration::from_secs(5);
    /// How often a replica waiting on another's fetch looks for the entry.
    const POLL_EVERY: Duration = Duration::from_millis(10);
    /// How long a replica waits on another's fetch before asking the IdP itself.
    const WAIT_AT_MOST: Duration = Duration::from_secs(2);
    /// How long Redis is left alone after a failed call.
    const RETRY_AFTER: Duration = Duration::from_secs(1);
    /// At most one warning about the shared cache this often.
    const WARN_EVERY: Duration = Duration::from_secs(10);

    const ENTRY_PREFIX: &str = "tollgate:xc:";
    const LOCK_PREFIX: &str = "tollgate:xl:";

    /// Deletes the lock only while it is still the caller's (it may have expired and been taken
    /// by another replica meanwhile).
    const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

    /// The shared exchange cache: a Redis connection, the sealer and the expiry margin. Cheap to
    /// clone; clones share the connection.
    #[derive(Clone)]
    pub(crate) struct SharedCache {
        inner: Arc<Inner>,
    }

    struct Inner {
        /// The connection in use; replaced when Redis refused the credentials (a connection
        /// manager does not retry that by itself).
        conn: Mutex<ConnectionManager>,
        client: ::redis::Client,
        config: ConnectionManagerConfig,
        sealer: Sealer,
        timeout: Duration,
        /// Seconds before `exp` an entry stops being handed out (`[cache] expiry_margin`).
        margin: u64,
        /// Until when (Unix ms) Redis is left alone after a failure.
        resting_until: AtomicU64,
        /// When (Unix ms) the last warning was logged, and how many were left out since.
        warned_at: AtomicU64,
        left_out: AtomicU64,
        unlock: Script,
    }

    /// What Redis holds (sealed) for one key.
    #[derive(Serialize, Deserialize)]
    struct Entry {
        /// The access token.
        t: String,
        /// Its `exp`, Unix seconds.
        e: u64,
    }

    /// Why a shared-cache call failed. Only for the warning and the fallback: never a request's
    /// error, and never a token (the Redis error text names commands and kinds, not values).
    #[derive(Debug, thiserror::Error)]
    enum SharedError {
        #[error("redis did not answer within {0:?}")]
        Timeout(Duration),
        #[error("redis: {0}")]
        Redis(#[from] ::redis::RedisError),
        #[error("an entry does not open (sealed under keys this replica does not have?): {0}")]
        Unreadable(String),
    }

    /// How one lookup ended, the `result` label of `tollgate_shared_cache_total`.
    #[derive(Clone, Copy)]
    enum Outcome {
        Hit,
        Miss,
        Error,
    }

    impl SharedCache {
        /// The shared cache `cfg` asks for: `None` unless `[cache] shared = "redis"`. Does not
        /// wait for Redis (a server down only makes lookups fall through to the IdP); a key file
        /// that cannot be read or a URL that cannot work is an error.
        #[cfg_attr(not(feature = "server"), allow(dead_code))]
        pub(crate) fn open(cfg: &crate::config::Config) -> Result<Option<Self>, String> {
            let Some(url) = cfg.cache.shared_redis_url(&cfg.store) else {
                return match cfg.cache.shared {
                    crate::config::SharedCache::None => Ok(None),
                    crate::config::SharedCache::Redis => {
                        Err("cache.shared = \"redis\" needs cache.redis_url or store.url".into())
                    }
                };
            };
            let keys = cfg.store.encryption_keys_file.as_ref().ok_or(
                "cache.shared = \"redis\" needs store.encryption_keys_file to seal its entries",
            )?;
            let sealer = Sealer::from_key_file(keys).map_err(|e| format!("cache.shared: {e}"))?;
            let timeout = cfg.cache.redis_timeout;
            let client = ::redis::Client::open(url)
                .map_err(|e| format!("cache.redis_url: invalid redis URL: {e}"))?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                // No retries inside a call: a failed call falls through to the IdP at once, and
                // the next call after RETRY_AFTER connects again.
                .set_number_of_retries(1)
                .set_min_delay(Duration::from_millis(20))
                .set_max_delay(Duration::from_millis(100));
            let conn = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                .map_err(|e| format!("cache.redis_url: redis connection settings: {e}"))?;
            Ok(Some(Self {
                inner: Arc::new(Inner {
                    conn: Mutex::new(conn),
                    client,
                    config,
                    sealer,
                    timeout,
                    margin: cfg.cache.expiry_margin.as_secs(),
                    resting_until: AtomicU64::new(0),
                    warned_at: AtomicU64::new(0),
                    left_out: AtomicU64::new(0),
                    unlock: Script::new(UNLOCK_SCRIPT),
                }),
            }))
        }

        /// See [`super::through`].
        pub(super) async fn through<F, Fut>(
            self,
            key: [u8; 32],
            skip_cache: bool,
            subject_exp: Option<u64>,
            idp: F,
        ) -> Result<ExchangedToken, ExchangeError>
        where
            F: FnOnce() -> Fut,
            Fut: Future<Output = Result<ExchangedToken, ExchangeError>>,
        {
            let name = hex(&key);
            let entry_key = format!("{ENTRY_PREFIX}{name}");
            if self.resting() {
                count(Outcome::Error);
                return idp().await;
            }
            let mut lock = None;
            if !skip_cache {
                match self.lookup(&entry_key, &name, subject_exp).await {
                    Ok(Lookup::Found(token)) => {
                        count(Outcome::Hit);
                        return Ok(token);
                    }
                    Ok(Lookup::Locked(token)) => lock = Some(token),
                    Ok(Lookup::Missing) => {}
                    Err(e) => {
                        self.failed(&e);
                        count(Outcome::Error);
                        return idp().await;
                    }
                }
            }
            count(Outcome::Miss);
            let result = idp().await;
            if let Ok(token) = &result
                && let Err(e) = self.write(&entry_key, token, subject_exp).await
            {
                self.failed(&e);
            }
            if let Some(token) = lock {
                let lock_key = format!("{LOCK_PREFIX}{name}");
                let mut conn = self.conn();
                let mut unlock = self.inner.unlock.key(&lock_key);
                unlock.arg(token);
                let done: Result<i64, SharedError> =
                    self.timed(unlock.invoke_async(&mut conn)).await;
                if let Err(e) = done {
                    // The lock expires by itself after LOCK_FOR.
                    self.failed(&e);
                }
            }
            result
        }

        /// Drops the entry for `key` (the upstream refused the token), so no replica serves it
        /// again. Best effort.
        #[cfg_attr(not(feature = "server"), allow(dead_code))]
        pub(crate) async fn forget(&self, key: &[u8; 32]) {
            if self.resting() {
                return;
            }
            let entry_key = format!("{ENTRY_PREFIX}{}", hex(key));
            let done: Result<i64, _> = self.run(::redis::cmd("DEL").arg(entry_key)).await;
            if let Err(e) = done {
                self.failed(&e);
            }
        }

        /// The entry, or this replica's lock to fetch it, or (another replica fetched while
        /// this one waited, and failed or took too long) neither.
        async fn lookup(
            &self,
            entry_key: &str,
            name: &str,
            subject_exp: Option<u64>,
        ) -> Result<Lookup, SharedError> {
            if let Some(token) = self.read(entry_key, subject_exp).await? {
                return Ok(Lookup::Found(token));
            }
            let lock_key = format!("{LOCK_PREFIX}{name}");
            let token = uuid::Uuid::new_v4().simple().to_string();
            let taken: Option<String> = self
                .run(
                    ::redis::cmd("SET")
                        .arg(&lock_key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(LOCK_FOR.as_millis() as u64),
                )
                .await?;
            if taken.is_some() {
                return Ok(Lookup::Locked(token));
            }
            // Another replica is fetching: wait for its entry, a bounded while.
            let deadline = tokio::time::Instant::now() + WAIT_AT_MOST;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL_EVERY).await;
                let (blob, locked): (Option<Vec<u8>>, Option<String>) = self
                    .run(::redis::cmd("MGET").arg(entry_key).arg(&lock_key))
                    .await?;
                if let Some(blob) = blob
                    && let Some(token) = self.unseal(entry_key, &blob, subject_exp)
                {
                    return Ok(Lookup::Found(token));
                }
                if locked.is_none() {
                    break;
                }
            }
            Ok(Lookup::Missing)
        }

        async fn read(
            &self,
            entry_key: &str,
            subject_exp: Option<u64>,
        ) -> Result<Option<ExchangedToken>, SharedError> {
            let blob: Option<Vec<u8>> = self.run(::redis::cmd("GET").arg(entry_key)).await?;
            match blob {
                Some(blob) => Ok(self.unseal(entry_key, &blob, subject_exp)),
                None => Ok(None),
            }
        }

        /// The token of a sealed entry, `None` when it is too close to its (or the subject's)
        /// expiry by this replica's clock, or does not open (then it is a miss, and the token
        /// fetched next replaces it).
        fn unseal(
            &self,
            entry_key: &str,
            blob: &[u8],
            subject_exp: Option<u64>,
        ) -> Option<ExchangedToken> {
            match self.try_unseal(entry_key, blob, subject_exp) {
                Ok(token) => token,
                Err(e) => {
                    self.failed(&e);
                    None
                }
            }
        }

        fn try_unseal(
            &self,
            entry_key: &str,
            blob: &[u8],
            subject_exp: Option<u64>,
        ) -> Result<Option<ExchangedToken>, SharedError> {
            let unreadable = |why: String| SharedError::Unreadable(why);
            let (plain, _) = self
                .inner
                .sealer
                .open(blob, entry_key.as_bytes())
                .map_err(|e| unreadable(e.to_string()))?;
            let plain = zeroize::Zeroizing::new(plain);
            let entry: Entry = serde_json::from_slice(&plain)
                .map_err(|_| unreadable("not an exchange cache entry".into()))?;
            if self.usable_until(entry.e, subject_exp) <= now() {
                return Ok(None);
            }
            ExchangedToken::restored(entry.t, entry.e, subject_exp)
                .map(Some)
                .map_err(|_| unreadable("the entry holds no usable token".into()))
        }

        /// Seals `token` under `entry_key`, to expire when the in-process cache would stop
        /// handing it out; nothing is written for a token with no time left.
        async fn write(
            &self,
            entry_key: &str,
            token: &ExchangedToken,
            subject_exp: Option<u64>,
        ) -> Result<(), SharedError> {
            let until = self.usable_until(token.expires_at(), subject_exp);
            let ttl_ms = (UNIX_EPOCH + Duration::from_secs(until))
                .duration_since(SystemTime::now())
                .map_or(0, |d| d.as_millis() as u64);
            if ttl_ms == 0 {
                return Ok(());
            }
            let entry = Entry {
                t: token.access_token().to_owned(),
                e: token.expires_at(),
            };
            let plain = zeroize::Zeroizing::new(
                serde_json::to_vec(&entry).map_err(|e| SharedError::Unreadable(e.to_string()))?,
            );
            drop(entry);
            let blob = self
                .inner
                .sealer
                .seal(&plain, entry_key.as_bytes())
                .map_err(|e| SharedError::Unreadable(e.to_string()))?;
            self.run(
                ::redis::cmd("SET")
                    .arg(entry_key)
                    .arg(blob)
                    .arg("PX")
                    .arg(ttl_ms),
            )
            .await
        }

        /// The rule of the in-process cache: `min(exp, subject exp) - expiry_margin`.
        fn usable_until(&self, expires_at: u64, subject_exp: Option<u64>) -> u64 {
            expires_at
                .min(subject_exp.unwrap_or(u64::MAX))
                .saturating_sub(self.inner.margin)
        }

        /// One command on the shared connection, bounded by the timeout.
        async fn run<T: ::redis::FromRedisValue>(
            &self,
            cmd: &::redis::Cmd,
        ) -> Result<T, SharedError> {
            let mut conn = self.conn();
            self.timed(cmd.query_async(&mut conn)).await
        }

        /// A handle on the connection in use.
        fn conn(&self) -> ConnectionManager {
            self.inner
                .conn
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        }

        async fn timed<T>(
            &self,
            call: impl Future<Output = RedisResult<T>>,
        ) -> Result<T, SharedError> {
            match tokio::time::timeout(self.inner.timeout, call).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => {
                    if e.kind() == ::redis::ErrorKind::AuthenticationFailed {
                        // Redis may accept them by the next try (its ACLs loaded after it began
                        // listening); failures rest Redis for RETRY_AFTER, so this is rare.
                        self.renew_connection();
                    }
                    Err(e.into())
                }
                Err(_) => Err(SharedError::Timeout(self.inner.timeout)),
            }
        }

        fn renew_connection(&self) {
            match ConnectionManager::new_lazy_with_config(
                self.inner.client.clone(),
                self.inner.config.clone(),
            ) {
                Ok(fresh) => {
                    *self
                        .inner
                        .conn
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = fresh;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shared exchange cache: cannot make a new redis connection")
                }
            }
        }

        /// Whether Redis is being left alone after a failure.
        fn resting(&self) -> bool {
            self.inner.resting_until.load(Ordering::Relaxed) > unix_ms()
        }

        /// Counts a failed call, rests Redis when it is unreachable, and warns at most once per
        /// [`WARN_EVERY`] (with how many warnings were left out).
        fn failed(&self, e: &SharedError) {
            metrics::counter!("tollgate_shared_cache_errors_total").increment(1);
            let now_ms = unix_ms();
            if !matches!(e, SharedError::Unreadable(_)) {
                self.inner
                    .resting_until
                    .store(now_ms + RETRY_AFTER.as_millis() as u64, Ordering::Relaxed);
            }
            let last = self.inner.warned_at.load(Ordering::Relaxed);
            let due = last == 0 || now_ms >= last + WARN_EVERY.as_millis() as u64;
            if due
                && self
                    .inner
                    .warned_at
                    .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let left_out = self.inner.left_out.swap(0, Ordering::Relaxed);
                tracing::warn!(
                    error = %e,
                    left_out,
                    "shared exchange cache unavailable: exchanging with the identity provider directly"
                );
            } else {
                self.inner.left_out.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What a lookup found.
    enum Lookup {
        Found(ExchangedToken),
        /// This replica holds the key's lock (its random value): it fetches and writes.
        Locked(String),
        Missing,
    }

    fn count(outcome: Outcome) {
        let result = match outcome {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Error => "error",
        };
        metrics::counter!("tollgate_shared_cache_total", "result" => result).increment(1);
    }

    fn unix_ms() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    fn hex(bytes: &[u8]) -> String {
        use std::fmt::Write as _;
        bytes.iter().fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn cache(margin: u64) -> SharedCache {
            // A lazy connection to nowhere: these tests never send a command.
            let client = ::redis::Client::open("redis://127.0.0.1:1").unwrap();
            let config = ConnectionManagerConfig::new();
            let conn =
                ConnectionManager::new_lazy_with_config(client.clone(), config.clone()).unwrap();
            SharedCache {
                inner: Arc::new(Inner {
                    conn: Mutex::new(conn),
                    client,
                    config,
                    sealer: Sealer::ephemeral().unwrap(),
                    timeout: Duration::from_millis(200),
                    margin,
                    resting_until: AtomicU64::new(0),
                    warned_at: AtomicU64::new(0),
                    left_out: AtomicU64::new(0),
                    unlock: Script::new(UNLOCK_SCRIPT),
                }),
            }
        }

        fn sealed(c: &SharedCache, key: &str, token: &str, exp: u64) -> Vec<u8> {
            let plain = serde_json::to_vec(&Entry {
                t: token.into(),
                e: exp,
            })
            .unwrap();
            c.inner.sealer.seal(&plain, key.as_bytes()).unwrap()
        }

        // The lazy connection manager is made on a runtime, though it never connects here.
        #[tokio::test]
        async fn an_entry_opens_under_its_own_key_only_and_shows_no_token() {
            let c = cache(10);
            let key = format!("{ENTRY_PREFIX}{}", hex(&[7; 32]));
            let blob = sealed(&c, &key, "eyJ.secret-token.sig", now() + 3600);
            assert!(!blob.windows(6).any(|w| w == b"secret"));
            let token = c.unseal(&key, &blob, None).expect("usable");
            assert_eq!(token.access_token(), "eyJ.secret-token.sig");
            let other = format!("{ENTRY_PREFIX}{}", hex(&[8; 32]));
            let err = c
                .try_unseal(&other, &blob, None)
                .expect_err("bound to its key");
            assert!(!err.to_string().contains("secret"), "{err}");
            // (`unseal` takes it for a miss, with a warning: not called here, so the warning test
            // below is alone at that call site. tracing caches a call site's interest globally,
            // and a hit from a thread without a subscriber races with that test's own.)
        }

        #[tokio::test]
        async fn an_entry_past_the_margin_of_its_or_the_subjects_expiry_is_not_served() {
            let c = cache(60);
            let key = format!("{ENTRY_PREFIX}{}", hex(&[9; 32]));
            let start = now();
            let soon = sealed(&c, &key, "t", start + 30);
            assert!(c.unseal(&key, &soon, None).is_none());
            let later = sealed(&c, &key, "t", start + 3600);
            assert!(c.unseal(&key, &later, Some(start + 30)).is_none());
            let token = c.unseal(&key, &later, Some(start + 600)).expect("usable");
            // The IdP's exp, not one derived again from a lifetime.
            assert_eq!(token.expires_at(), start + 3600);
        }

        /// Collects what the fmt subscriber writes.
        #[cfg(feature = "server")]
        #[derive(Clone, Default)]
        struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

        #[cfg(feature = "server")]
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }

        // Single-threaded: the local recorder and subscriber see every call.
        #[cfg(feature = "server")]
        #[tokio::test(flavor = "current_thread")]
        async fn with_redis_unreachable_every_exchange_goes_to_the_idp_with_one_warning() {
            let recorder = crate::test_metrics::TestRecorder::default();
            let _metrics = metrics::set_default_local_recorder(&recorder);
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish();
            let _log = tracing::subscriber::set_default(subscriber);
            // Port 1: nothing listens, so every Redis call fails (or times out).
            let c = cache(10);
            let calls = std::sync::atomic::AtomicUsize::new(0);
            for round in 0..3 {
                if round == 2 {
                    // As if RETRY_AFTER had passed: Redis is tried again, and fails again.
                    c.inner.resting_until.store(0, Ordering::Relaxed);
                }
                let idp = || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let response = crate::exchange::grants::TokenResponse {
                        access_token: "eyJ.idp-token.sig".into(),
                        expires_in: 3600,
                        refresh_token: None,
                        scope: None,
                        id_token: None,
                    };
                    ExchangedToken::from_response(response, None)
                };
                let token = c.clone().through([1; 32], false, None, idp).await;
                assert_eq!(token.unwrap().access_token(), "eyJ.idp-token.sig");
            }
            assert_eq!(calls.load(Ordering::SeqCst), 3);
            let counts = recorder.counts();
            let count = |name: &str| counts.get(name).copied().unwrap_or(0);
            assert_eq!(
                count("tollgate_shared_cache_total{result=error}"),
                3,
                "{counts:?}"
            );
            // Round 1 left Redis alone.
            let errors: u64 = counts
                .iter()
                .filter(|(k, _)| k.starts_with("tollgate_shared_cache_errors_total"))
                .map(|(_, v)| v)
                .sum();
            assert_eq!(errors, 2, "{counts:?}");
            let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            assert_eq!(
                log.matches("shared exchange cache unavailable").count(),
                1,
                "{log}"
            );
            assert!(!log.contains("idp-token"), "{log}");
        }

        #[test]
        fn keys_are_lowercase_hex_of_the_cache_key() {
            assert_eq!(hex(&[0x0a, 0xff]), "0aff");
            assert_eq!(hex(&[0; 32]).len(), 64);
        }
    }
}
