//! Redis backend, for several replicas sharing users. Each record expires with its refresh token.
//!
//! Keys (the provider is length-prefixed so that no provider/oid pair collides with another):
//! - `tollgate:tok:<len>:<provider>:<oid>`: hash `{v: sealed blob, u: hex of the (tenant, UPN)
//!   index key the record holds, if it holds one}`
//! - `tollgate:upn:<len>:<provider>:<hex of the (tenant, UPN) index key>`: the oid holding it
//!
//! Browser sessions and their `sid` / `sub` indexes are records like the users' (hash `{v}`),
//! under the provider keys `<provider>#session`, `#sid` and `#sub` (see `sessions.rs`); a session
//! key expires at the session's end, an index key with its latest listed session.
//!
//! `rediss://` URLs connect over TLS (rustls; the server's certificate is checked against the
//! system's trust store, which `SSL_CERT_FILE` / `SSL_CERT_DIR` replace for a private CA).
//!
//! Opening the store does not wait for Redis: a server that is down when tollgate starts only
//! makes the store calls fail until it is up (the delegated API answers `503`; the proxy and
//! exchange paths do not use the store). Every call is bounded by the configured timeout, so an
//! outage turns into [`StoreError::Unavailable`] instead of a hang; the connection manager
//! reconnects by itself once Redis is back.

use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{ErrorKind, RedisError, RedisResult, Script};

use super::sealed::{
    Backend, NewRecord, Opener, Rotated, Rotation, SealedStore, StrayIndex, delegate_token_store,
    now_unix,
};
use super::{Sealer, StoreError, hex};

/// A [`TokenStore`](super::TokenStore) in Redis (standalone server; not Redis Cluster).
///
/// ```no_run
/// # async fn demo() -> Result<(), tollgate::store::StoreError> {
/// use std::time::Duration;
/// use tollgate::store::{RedisStore, Sealer, TokenStore};
///
/// let sealer = Sealer::from_key_file("keys".as_ref())?;
/// let store = RedisStore::connect("redis://127.0.0.1:6379", sealer, Duration::from_secs(2)).await?;
/// store.ping().await?;
/// # Ok(()) }
/// ```
pub struct RedisStore(SealedStore<RedisBackend>);

delegate_token_store!(RedisStore);

/// Records as hashes, the UPN index as plain keys, both expiring with the refresh token.
pub(crate) struct RedisBackend {
    client: ::redis::Client,
    config: ConnectionManagerConfig,
    conn: Mutex<Connection>,
    timeout: Duration,
    put_script: Script,
    reindex_script: Script,
    delete_script: Script,
    reseal_script: Script,
    swap_script: Script,
}

/// The connection manager in use, and when it was made.
struct Connection {
    manager: ConnectionManager,
    made: Instant,
}

/// A connection manager that failed to authenticate never tries again by itself (it reconnects
/// only after I/O errors): a new one is made, at most this often.
const RENEW_AFTER: Duration = Duration::from_secs(1);

impl RedisStore {
    /// Sets up the store for `url` (`redis://[user:password@]host[:port][/db]`, or `rediss://`
    /// for TLS) without waiting for Redis: a malformed URL fails here ([`StoreError::Config`]),
    /// an unreachable server does not. The first connection is attempted in the background right away; until Redis answers,
    /// each call fails with [`StoreError::Unavailable`] within `timeout` (which bounds every
    /// call), and once Redis is up the store connects (again) by itself. Use
    /// [`TokenStore::ping`](super::TokenStore::ping) to check that Redis answers.
    pub async fn connect(url: &str, sealer: Sealer, timeout: Duration) -> Result<Self, StoreError> {
        check_url(url).map_err(|why| StoreError::Config(format!("invalid redis `url`: {why}")))?;
        let client = ::redis::Client::open(url)
            .map_err(|err| StoreError::Config(format!("invalid redis `url`: {err}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Few, short retries: while Redis is down callers should get an error now, and the
            // next call starts another reconnect anyway.
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        // Lazy: nothing is sent until the first command.
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|err| StoreError::Config(format!("redis connection settings: {err}")))?;
        // Warm the connection up so that the first request does not pay for it, and say early
        // when Redis is not there. Failing here is no error: the store keeps trying.
        let mut warm = manager.clone();
        tokio::spawn(async move {
            let ping = ::redis::cmd("PING");
            let answer = tokio::time::timeout(timeout, ping.query_async::<String>(&mut warm)).await;
            let why = match answer {
                Ok(Ok(_)) => return,
                Ok(Err(err)) => redis_error(&err),
                Err(_) => no_answer(timeout),
            };
            tracing::warn!(
                error = %why,
                "redis token store not reachable yet: delegated tokens are unavailable until it is"
            );
        });
        let backend = RedisBackend {
            client,
            config,
            conn: Mutex::new(Connection {
                manager,
                made: Instant::now(),
            }),
            timeout,
            put_script: Script::new(PUT_SCRIPT),
            reindex_script: Script::new(REINDEX_SCRIPT),
            delete_script: Script::new(DELETE_SCRIPT),
            reseal_script: Script::new(RESEAL_SCRIPT),
            swap_script: Script::new(SWAP_SCRIPT),
        };
        Ok(Self(SealedStore::new(backend, sealer)))
    }
}

impl Backend for RedisBackend {
    const KIND: &'static str = "redis";
    // The index and the record are separate keys: only an outside writer can make them
    // disagree, and then the record is not this user's.
    const STRAY_INDEX: StrayIndex = StrayIndex::NotFound;

    async fn get(&self, provider: &str, oid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.fetch_blob(provider, oid).await
    }

    async fn find_by_index(
        &self,
        provider: &str,
        keys: &[[u8; 32]],
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let index_prefix = upn_key_prefix(provider);
        let mut mget = ::redis::cmd("MGET");
        for key in keys {
            mget.arg(format!("{index_prefix}{}", hex(key)));
        }
        let mut conn = self.conn();
        let oids: Vec<Option<String>> = self.timed(mget.query_async(&mut conn)).await?;
        let Some(oid) = oids.into_iter().flatten().next() else {
            return Ok(None);
        };
        Ok(self
            .fetch_blob(provider, &oid)
            .await?
            .map(|blob| (oid, blob)))
    }

    /// [`PUT_SCRIPT`]. Another user's entry is theirs while their record names it; Redis drops
    /// expired records by itself, so the opener is not needed.
    async fn put(
        &self,
        provider: &str,
        record: NewRecord,
        _opener: &Opener,
    ) -> Result<Option<String>, StoreError> {
        let keys: Vec<String> = record.index_keys.iter().map(|k| hex(k)).collect();
        let index_prefix = upn_key_prefix(provider);
        let mut invocation = self.put_script.key(record_key(provider, &record.oid));
        for key in &keys {
            invocation.key(format!("{index_prefix}{key}"));
        }
        invocation
            .arg(&record.blob)
            .arg(&record.oid)
            .arg(record.expires_at)
            .arg(record_key(provider, ""))
            .arg(&index_prefix);
        for key in &keys {
            invocation.arg(key);
        }
        let mut conn = self.conn();
        self.timed(invocation.invoke_async(&mut conn)).await
    }

    async fn replace_if_unchanged(
        &self,
        provider: &str,
        oid: &str,
        old: &[u8],
        new: Vec<u8>,
    ) -> Result<bool, StoreError> {
        self.reseal(&record_key(provider, oid), old, &new).await
    }

    async fn delete(&self, provider: &str, oid: &str) -> Result<bool, StoreError> {
        self.delete_record(provider, oid).await
    }

    /// Nothing to do: Redis drops the record at its TTL. (This host's clock may run a little
    /// ahead of Redis's; the read already answered "absent".)
    async fn delete_if_unchanged(
        &self,
        _provider: &str,
        _oid: &str,
        _old: &[u8],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    /// [`SWAP_SCRIPT`]: one script, so replicas sharing the server cannot interleave.
    async fn swap(
        &self,
        provider: &str,
        oid: &str,
        old: Option<&[u8]>,
        new: Option<(Vec<u8>, u64)>,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.swap_script.key(record_key(provider, oid));
        match old {
            Some(old) => invocation.arg(1).arg(old),
            None => invocation.arg(0).arg(""),
        };
        match &new {
            Some((blob, expires_at)) => invocation.arg(1).arg(blob).arg(*expires_at),
            None => invocation.arg(0).arg("").arg(0),
        };
        let mut conn = self.conn();
        let swapped: i64 = self.timed(invocation.invoke_async(&mut conn)).await?;
        Ok(swapped == 1)
    }

    /// SCAN over the record keys, each change a script: other replicas keep working meanwhile.
    async fn rotate(&self, opener: &Opener) -> Result<Rotated, StoreError> {
        let mut conn = self.conn();
        let pattern = format!("{RECORD_PREFIX}*");
        let mut cursor = 0u64;
        let mut rotated = Rotated::default();
        let now = now_unix();
        loop {
            let (next, keys): (u64, Vec<String>) = self
                .timed(
                    ::redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(&pattern)
                        .arg("COUNT")
                        .arg(500)
                        .query_async(&mut conn),
                )
                .await?;
            for key in keys {
                let Some((provider, oid)) = parse_record_key(&key) else {
                    rotated.unreadable += 1;
                    continue;
                };
                let Some(blob) = self.fetch_blob(provider, oid).await? else {
                    continue;
                };
                match opener.rotation(provider, oid, &blob, now) {
                    // Redis drops it at its TTL; nothing worth re-sealing.
                    Rotation::Expired => {}
                    Rotation::Live {
                        resealed,
                        index_key,
                        expires_at,
                    } => {
                        if let Some(first) = index_key {
                            self.reindex(provider, &key, oid, &first, expires_at)
                                .await?;
                        }
                        if let Some(new_blob) = resealed
                            && self.reseal(&key, &blob, &new_blob).await?
                        {
                            rotated.resealed += 1;
                        }
                    }
                    Rotation::Unreadable => rotated.unreadable += 1,
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(rotated)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let pong: String = self
            .timed(::redis::cmd("PING").query_async(&mut conn))
            .await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Unavailable("unexpected answer to PING".into()))
        }
    }
}

const RECORD_PREFIX: &str = "tollgate:tok:";
const UPN_PREFIX: &str = "tollgate:upn:";

/// Writes a record and claims its (tenant, UPN) index entry unless another user holds it; in
/// one script, so two replicas storing two users of one UPN cannot both claim it.
///
/// KEYS[1]: the record; KEYS[2..]: the index keys of the user's (tenant, UPN), the one to claim
/// first (none without a UPN). ARGV: sealed blob, oid, expiry (unix seconds), the provider's
/// record key prefix, its index key prefix, then the hex index keys of KEYS[2..] (what `u`
/// holds). An entry is another user's only while that user's record names it in `u`; any other
/// entry (a record gone or renamed) is stale and may be taken. The user's own entries under other
/// keys, and the one of an earlier UPN, are dropped. Returns the holder's oid, or nil.
const PUT_SCRIPT: &str = r"
local oid = ARGV[2]
local previous = redis.call('HGET', KEYS[1], 'u')
if previous then
  local idx = ARGV[5] .. previous
  if redis.call('GET', idx) == oid then redis.call('DEL', idx) end
end
local holder = false
for i = 2, #KEYS do
  local o = redis.call('GET', KEYS[i])
  if o == oid then
    redis.call('DEL', KEYS[i])
  elseif o and not holder and redis.call('HGET', ARGV[4] .. o, 'u') == ARGV[i + 4] then
    holder = o
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1])
if #KEYS > 1 and not holder then
  redis.call('HSET', KEYS[1], 'u', ARGV[6])
  redis.call('SET', KEYS[2], oid, 'EXAT', ARGV[3])
end
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return holder
";

/// Moves a record's index entry to the key it has under the first encryption key (`rotate_keys`),
/// unless the record's `u` changed meanwhile or another user holds that key. KEYS[1]: the
/// record, KEYS[2]: the new index key. ARGV: the `u` read before, the new `u`, oid, the index key
/// prefix, expiry (unix seconds).
const REINDEX_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'u') ~= ARGV[1] then return 0 end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[3] then return 0 end
local old = ARGV[4] .. ARGV[1]
if redis.call('GET', old) == ARGV[3] then redis.call('DEL', old) end
redis.call('SET', KEYS[2], ARGV[3], 'EXAT', ARGV[5])
redis.call('HSET', KEYS[1], 'u', ARGV[2])
return 1
";

/// Deletes the record and, only while it still points at this oid, its UPN index entry.
/// ARGV: index key prefix, oid.
const DELETE_SCRIPT: &str = r"
local u = redis.call('HGET', KEYS[1], 'u')
local n = redis.call('DEL', KEYS[1])
if u then
  local idx = ARGV[1] .. u
  if redis.call('GET', idx) == ARGV[2] then redis.call('DEL', idx) end
end
return n
";

/// Compare-and-swap of the blob, so a re-seal never overwrites a record written meanwhile. HSET
/// keeps the key's TTL. ARGV: old blob, new blob.
const RESEAL_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'v') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'v', ARGV[2])
  return 1
end
return 0
";

/// Compare-and-swap of a whole record without a UPN entry (the session indexes). ARGV: 1 and
/// the blob expected, or 0 and "" for "no record"; then 1, the new blob and its expiry (unix
/// seconds, the key's TTL), or 0 to delete. Returns 1 if done.
const SWAP_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], 'v')
if ARGV[1] == '1' then
  if current ~= ARGV[2] then return 0 end
elseif current then
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'v', ARGV[4])
  redis.call('EXPIREAT', KEYS[1], ARGV[5])
end
return 1
";

impl RedisBackend {
    /// The connection manager to send a command on (a cheap handle on a shared connection).
    fn conn(&self) -> ConnectionManager {
        self.conn
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .manager
            .clone()
    }

    async fn timed<T>(&self, call: impl Future<Output = RedisResult<T>>) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => {
                if err.kind() == ErrorKind::AuthenticationFailed {
                    self.renew_connection();
                }
                Err(redis_error(&err))
            }
            Err(_) => Err(no_answer(self.timeout)),
        }
    }

    /// Replaces the connection manager by a new (lazy) one, unless it is younger than
    /// [`RENEW_AFTER`]: Redis may accept the credentials by now (its ACLs or `requirepass`
    /// loaded after it started listening).
    fn renew_connection(&self) {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if conn.made.elapsed() < RENEW_AFTER {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(manager) => {
                tracing::warn!("redis refused tollgate's credentials; trying a new connection");
                *conn = Connection {
                    manager,
                    made: Instant::now(),
                };
            }
            Err(err) => tracing::warn!(error = %err, "redis: cannot make a new connection"),
        }
    }

    async fn fetch_blob(&self, provider: &str, oid: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let mut conn = self.conn();
        self.timed(
            ::redis::cmd("HGET")
                .arg(record_key(provider, oid))
                .arg("v")
                .query_async(&mut conn),
        )
        .await
    }

    async fn reseal(&self, key: &str, old: &[u8], new: &[u8]) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let swapped: i64 = self
            .timed(
                self.reseal_script
                    .key(key)
                    .arg(old)
                    .arg(new)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(swapped == 1)
    }

    /// [`REINDEX_SCRIPT`] for a record whose index entry is under an older key (or, written by
    /// a tollgate before issue 19, an unkeyed hash); `first` is its index key under the first
    /// key.
    async fn reindex(
        &self,
        provider: &str,
        record: &str,
        oid: &str,
        first: &[u8; 32],
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let first = hex(first);
        let mut conn = self.conn();
        let current: Option<String> = self
            .timed(
                ::redis::cmd("HGET")
                    .arg(record)
                    .arg("u")
                    .query_async(&mut conn),
            )
            .await?;
        let Some(current) = current.filter(|u| *u != first) else {
            return Ok(());
        };
        let index_prefix = upn_key_prefix(provider);
        let _: i64 = self
            .timed(
                self.reindex_script
                    .key(record)
                    .key(format!("{index_prefix}{first}"))
                    .arg(&current)
                    .arg(&first)
                    .arg(oid)
                    .arg(&index_prefix)
                    .arg(expires_at)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    async fn delete_record(&self, provider: &str, oid: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let removed: i64 = self
            .timed(
                self.delete_script
                    .key(record_key(provider, oid))
                    .arg(upn_key_prefix(provider))
                    .arg(oid)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(removed > 0)
    }
}

/// Why `url` cannot work, found without connecting (also what `tollgate check` says about
/// `store.url`).
///
/// `rediss://` is TLS by rustls, with the server's certificate checked against the system's
/// trust store (`SSL_CERT_FILE` / `SSL_CERT_DIR` point it at a private CA instead). redis-rs's
/// `#insecure` fragment would turn that check off: it is refused rather than honoured, since a
/// store connection without it hands sealed tokens and the Redis password to whoever answers.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    const EXPECTED: &str = "expected redis://host:port, or rediss://host:port for TLS";
    let parsed = url::Url::parse(url).map_err(|_| format!("not a URL: {EXPECTED}"))?;
    let scheme = parsed.scheme();
    if !matches!(
        scheme,
        "redis" | "rediss" | "valkey" | "valkeys" | "redis+unix" | "valkey+unix" | "unix"
    ) {
        return Err(format!("unsupported URL scheme {scheme:?}: {EXPECTED}"));
    }
    if parsed.fragment() == Some("insecure") {
        return Err(
            "`#insecure` (no TLS certificate check) is not supported: trust the server's CA \
             through SSL_CERT_FILE instead"
                .into(),
        );
    }
    ::redis::Client::open(url)
        .map(drop)
        .map_err(|err| err.to_string())
}

fn no_answer(timeout: Duration) -> StoreError {
    StoreError::Unavailable(format!(
        "redis did not answer within {}",
        humantime::format_duration(timeout)
    ))
}

fn record_key(provider: &str, oid: &str) -> String {
    format!("{RECORD_PREFIX}{}:{provider}:{oid}", provider.len())
}

fn upn_key_prefix(provider: &str) -> String {
    format!("{UPN_PREFIX}{}:{provider}:", provider.len())
}

/// `(provider, oid)` of a record key, `None` for keys tollgate did not write.
fn parse_record_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(RECORD_PREFIX)?;
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let provider = rest.get(..len)?;
    let oid = rest.get(len..)?.strip_prefix(':')?;
    Some((provider, oid))
}

/// Everything that goes wrong talking to Redis makes the store unusable for now (`503`), except
/// values of the wrong shape, which only an outside writer can cause. Type errors may quote the
/// value, so their text is not passed on.
fn redis_error(err: &RedisError) -> StoreError {
    match err.kind() {
        ErrorKind::UnexpectedReturnType | ErrorKind::Parse => {
            StoreError::Corrupt("redis holds a value tollgate did not write".into())
        }
        _ => StoreError::Unavailable(format!("redis: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_keys_round_trip_and_do_not_collide() {
        let key = record_key("entra_id", "oid:with:colons");
        assert_eq!(
            parse_record_key(&key),
            Some(("entra_id", "oid:with:colons"))
        );
        assert_ne!(record_key("a:b", "c"), record_key("a", "b:c"));
        assert_eq!(
            parse_record_key(&record_key("a:b", "c")),
            Some(("a:b", "c"))
        );
        assert_eq!(parse_record_key("tollgate:tok:99:short:x"), None);
        assert_eq!(parse_record_key("tollgate:tok:x:p:o"), None);
        assert_eq!(parse_record_key("other:tok:1:p:o"), None);
    }
}
