//! The exchanged-token cache (quick_cache, keyed by SHA-256): an entry is served until
//! `min(token exp, subject exp) - margin`, checked on read, and concurrent misses of one key
//! share one fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
#[cfg(test)]
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use http::HeaderValue;

use super::{ExchangeError, Grant, grants::TokenResponse};
use crate::cache_meter::{
    BoundedCache, Budget, CacheKind, CacheValue, Cause, Meter, QUICK_EXCHANGE_ENTRY_BYTES,
    bounded_cache, heap_chunk,
};
use crate::util::{now, sha256_of_parts};

/// An access token obtained from the IdP (or the cache).
///
/// ```
/// # #[cfg(feature = "dev-idp")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
/// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
/// # let auth = tollgate::Auth::builder()
/// #     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
/// #     .client_id(TOLLGATE_CLIENT_ID)
/// #     .client_secret(tollgate_devidp::TOLLGATE_CLIENT_SECRET)
/// #     .build()
/// #     .await?;
/// # use tollgate_devidp::DOWNSTREAM_APP_ID_URI;
/// let exchanger = auth.exchanger().expect("a client secret is configured");
/// let token = exchanger.client_credentials(&format!("{DOWNSTREAM_APP_ID_URI}/.default"), false).await?;
/// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
/// assert!(token.expires_in() > 0 && token.expires_at() >= now + token.expires_in());
/// assert!(!token.access_token().is_empty());
/// assert!(format!("{token:?}").contains(r#"access_token: "[redacted]""#));
/// # idp.shutdown().await;
/// # Ok(()) }
/// # #[cfg(not(feature = "dev-idp"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct ExchangedToken {
    /// `Bearer <access token>`: the token is a slice of it.
    bearer: Arc<str>,
    /// The same bytes as an `Authorization` value, checked once when the token arrives rather
    /// than copied and checked again on every request an OBO route forwards.
    authorization: HeaderValue,
    expires_at: u64,
    /// Latest moment (Unix s) the cache may hand this token out; set by the cache.
    usable_until: u64,
    subject_exp: Option<u64>,
    /// The token needs no JSON escaping (a JWT never does): checked once, not per answer of
    /// the token API.
    #[cfg(feature = "server")]
    json_plain: bool,
}

/// Whether `s` can go between JSON quotes as it is: printable ASCII without `"` or `\`.
#[cfg(feature = "server")]
pub(crate) fn is_json_plain(s: &str) -> bool {
    // Branch-free, so it vectorises.
    s.bytes().fold(true, |ok, b| {
        ok & (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\')
    })
}

impl std::fmt::Debug for ExchangedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangedToken")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl ExchangedToken {
    /// Fails (and so is never cached) when the token could not be sent in a header: an access
    /// token is visible ASCII (RFC 6750 section 2.1, `b64token`), anything else is garbage.
    pub(crate) fn from_response(
        r: TokenResponse,
        subject_exp: Option<u64>,
    ) -> Result<Self, ExchangeError> {
        let garbage = || ExchangeError::Upstream {
            message: "the identity provider returned an access token that is not a header value"
                .into(),
            timeout: false,
        };
        // A header value may also carry spaces and non-ASCII bytes (RFC 9110 §5.5 obs-text),
        // which no bearer token has: check the token itself, not only the header it makes.
        if r.access_token.is_empty() || !r.access_token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(garbage());
        }
        let expires_at = now() + r.expires_in;
        let bearer: Arc<str> = Arc::from(format!("{BEARER}{}", r.access_token));
        let authorization =
            HeaderValue::from_maybe_shared(Bytes::from_owner(SharedStr(bearer.clone())))
                .map_err(|_| garbage())?;
        #[cfg(feature = "server")]
        let json_plain = is_json_plain(&r.access_token);
        Ok(Self {
            bearer,
            authorization,
            expires_at,
            usable_until: expires_at,
            subject_exp,
            #[cfg(feature = "server")]
            json_plain,
        })
    }

    /// A token read back from the shared cache: its `exp` as the IdP gave it, not derived
    /// again from a lifetime and this replica's clock.
    #[cfg(feature = "redis")]
    pub(super) fn restored(
        access_token: String,
        expires_at: u64,
        subject_exp: Option<u64>,
    ) -> Result<Self, ExchangeError> {
        let response = TokenResponse {
            access_token,
            expires_in: 0,
            refresh_token: None,
            scope: None,
            id_token: None,
        };
        let mut token = Self::from_response(response, subject_exp)?;
        token.expires_at = expires_at;
        token.usable_until = expires_at;
        Ok(token)
    }

    /// The access token.
    ///
    /// ```
    /// use tollgate::exchange::ExchangedToken;
    /// fn authorization(token: &ExchangedToken) -> String {
    ///     format!("Bearer {}", token.access_token())
    /// }
    /// ```
    pub fn access_token(&self) -> &str {
        &self.bearer[BEARER.len()..]
    }

    /// `Bearer <access token>` as an `Authorization` value for a downstream call, built once
    /// when the token arrived: each call is a reference-count increment, not a copy.
    ///
    /// ```
    /// use tollgate::exchange::ExchangedToken;
    /// fn call_downstream(token: &ExchangedToken, req: &mut http::Request<()>) {
    ///     req.headers_mut().insert(http::header::AUTHORIZATION, token.authorization());
    /// }
    /// ```
    pub fn authorization(&self) -> HeaderValue {
        self.authorization.clone()
    }

    /// The bare access token as a header value (an `obo_headers` header), sharing the cached
    /// bytes: no copy of the token, only the header-value check.
    #[cfg(feature = "server")]
    pub(crate) fn access_token_value(&self) -> Option<HeaderValue> {
        let bytes = Bytes::from_owner(SharedStr(self.bearer.clone())).slice(BEARER.len()..);
        HeaderValue::from_maybe_shared(bytes).ok()
    }

    /// Whether the token can be written into JSON without escaping.
    #[cfg(feature = "server")]
    pub(crate) fn is_json_plain(&self) -> bool {
        self.json_plain
    }

    /// Seconds left before the token expires (what `expires_in` reports for a cached token).
    ///
    /// ```
    /// use tollgate::exchange::ExchangedToken;
    /// fn texas_response(token: &ExchangedToken) -> serde_json::Value {
    ///     serde_json::json!({"access_token": token.access_token(), "expires_in": token.expires_in(), "token_type": "Bearer"})
    /// }
    /// ```
    pub fn expires_in(&self) -> u64 {
        self.expires_at.saturating_sub(now())
    }

    /// `exp` of the token, Unix seconds.
    ///
    /// ```
    /// use tollgate::exchange::ExchangedToken;
    /// fn still_valid_in(token: &ExchangedToken, seconds: u64, now: u64) -> bool {
    ///     token.expires_at() > now + seconds
    /// }
    /// ```
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

const BEARER: &str = "Bearer ";

/// Lets the `Authorization` value borrow the token's allocation instead of copying it.
struct SharedStr(Arc<str>);

impl AsRef<[u8]> for SharedStr {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// Exchanged tokens by key ([`key`]), weighed in bytes, with the fetches under way.
#[derive(Clone)]
pub(crate) struct TokenCache {
    /// quick_cache rather than moka: less than half the bookkeeping per entry (`cache_meter`).
    /// It has no per-entry expiry: `usable_until` is checked on read, as it was already (moka's
    /// clock and the wall clock could disagree by a moment at the edge).
    cache: Arc<BoundedCache<[u8; 32], ExchangedToken>>,
    /// The fetch under way for each key that missed: later misses of the key wait for it
    /// rather than ask the IdP again, and share its error as well as its token.
    flights: Arc<Mutex<HashMap<[u8; 32], Flight>>>,
    margin: u64,
    /// The bytes the cache holds (`tollgate_cache_bytes{cache="exchange"}`).
    meter: Arc<Meter>,
    budget: Budget,
}

/// One fetch, awaited by every caller that missed the same key while it ran.
type Flight = Shared<BoxFuture<'static, Result<ExchangedToken, Arc<ExchangeError>>>>;

impl CacheValue for ExchangedToken {
    /// The heap bytes a cache entry of this token holds: the `Bearer <token>` text, the
    /// `Authorization` value's shared owner (`Bytes::from_owner`'s allocation) and what
    /// quick_cache keeps per entry (the key and this value inline in its slab).
    fn entry_bytes(&self) -> usize {
        // `Arc<str>`: two counts, then the text.
        heap_chunk(2 * size_of::<usize>() + self.bearer.len())
            + heap_chunk(OWNER_BYTES)
            + QUICK_EXCHANGE_ENTRY_BYTES
    }

    fn expired(&self, now: u64) -> bool {
        self.usable_until <= now
    }

    fn same_as(&self, other: &ExchangedToken) -> bool {
        Arc::ptr_eq(&self.bearer, &other.bearer)
    }
}

/// `Bytes::from_owner`'s allocation for a [`SharedStr`]: a reference count, a vtable pointer and
/// the owner (an `Arc<str>`), measured by `memory_tests`.
const OWNER_BYTES: usize = 40;

/// [`key`] for a user's token (On-Behalf-Of, token exchange: `subject` is the token's digest),
/// remembered on this thread with what it was computed from. A user's requests to one route
/// come one after another with the same token and target, and each would hash the same bytes
/// again (three SHA-256 blocks); the inputs are compared whole, so the memo never answers for
/// other inputs. Other grants' subjects may be secrets or large, and are not kept.
pub(super) fn user_key(
    provider: &str,
    client_id: &str,
    grant: Grant,
    target: &str,
    subject: &[u8; 32],
) -> [u8; 32] {
    LAST_USER_KEY
        .try_with(|last| {
            let last = &mut *last.borrow_mut();
            if last.grant == Some(grant)
                && last.subject == *subject
                && last.target == target
                && last.client_id == client_id
                && last.provider == provider
            {
                return last.key;
            }
            let made = key(provider, client_id, grant, target, subject);
            // The strings' buffers are reused: a thread sees few providers and targets.
            for (kept, now) in [
                (&mut last.provider, provider),
                (&mut last.client_id, client_id),
                (&mut last.target, target),
            ] {
                kept.clear();
                kept.push_str(now);
            }
            (last.grant, last.subject, last.key) = (Some(grant), *subject, made);
            made
        })
        // A thread being torn down has no memo left.
        .unwrap_or_else(|_| key(provider, client_id, grant, target, subject))
}

/// The inputs and result of this thread's last [`user_key`].
#[derive(Default)]
struct LastUserKey {
    grant: Option<Grant>,
    subject: [u8; 32],
    provider: String,
    client_id: String,
    target: String,
    key: [u8; 32],
}

thread_local! {
    static LAST_USER_KEY: std::cell::RefCell<LastUserKey> =
        std::cell::RefCell::new(LastUserKey::default());
}

/// `sha256(len(provider) provider len(client) client grant len(target) target len(subject) subject)`:
/// lengths make the encoding unambiguous, so `("ab","c")` and `("a","bc")` never share a key.
/// For On-Behalf-Of, `subject` is `sha256(user token)`, which the validator computed already:
/// the key then costs a hash over ~150 bytes rather than over the whole token again.
pub(super) fn key(
    provider: &str,
    client_id: &str,
    grant: Grant,
    target: &str,
    subject: &[u8],
) -> [u8; 32] {
    let grant = match grant {
        Grant::OnBehalfOf => "obo",
        Grant::ClientCredentials => "cc",
        Grant::TokenExchange => "tx",
        Grant::JwtBearer => "jb",
    };
    sha256_of_parts(&[
        provider.as_bytes(),
        client_id.as_bytes(),
        grant.as_bytes(),
        target.as_bytes(),
        subject,
    ])
}

impl TokenCache {
    #[cfg(test)]
    pub(crate) fn new(capacity: u64, margin: Duration) -> Self {
        Self::with_memory(capacity, u64::from(u32::MAX), margin)
    }

    /// A cache of at most `capacity` tokens holding at most `max_bytes` together.
    pub(crate) fn with_memory(capacity: u64, max_bytes: u64, margin: std::time::Duration) -> Self {
        let budget = Budget::new(max_bytes, capacity);
        let meter = Meter::new(CacheKind::Exchange);
        // An Entra token's entry is about 2 KB.
        let cache = bounded_cache(budget, capacity, 2048, &meter);
        Self {
            cache: Arc::new(cache),
            flights: Arc::default(),
            margin: margin.as_secs(),
            meter,
            budget,
        }
    }

    pub(crate) fn entry_count(&self) -> u64 {
        self.meter.entries()
    }

    /// The bytes the cache's entries hold now.
    pub(crate) fn bytes(&self) -> u64 {
        self.meter.bytes()
    }

    /// The most bytes the cache may hold.
    pub(super) fn max_bytes(&self) -> u64 {
        self.budget.max_bytes
    }

    /// Drops the entry for `key`, so the next lookup fetches afresh.
    #[cfg(feature = "server")]
    pub(super) async fn forget(&self, key: &[u8; 32]) {
        if let Some((_, t)) = self.cache.remove(key) {
            self.meter.removed(t.entry_bytes(), Cause::Explicit);
        }
    }

    /// The cached token for `key`, or the result of one shared `fetch`. Returns whether the
    /// answer came from the cache (or from another caller's fetch).
    #[cfg(test)]
    pub(crate) async fn get_or_fetch<F, Fut>(
        &self,
        key: [u8; 32],
        skip_cache: bool,
        fetch: F,
    ) -> (Result<ExchangedToken, ExchangeError>, bool)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<ExchangedToken, ExchangeError>> + Send + 'static,
    {
        self.get_or_else(key, skip_cache, || fetch).await
    }

    /// [`TokenCache::get_or_fetch`] with the fetch built by `make_fetch` only when the cache
    /// cannot answer: a hit copies nothing the fetch would own (the user token, the target).
    pub(super) async fn get_or_else<M, F, Fut>(
        &self,
        key: [u8; 32],
        skip_cache: bool,
        make_fetch: M,
    ) -> (Result<ExchangedToken, ExchangeError>, bool)
    where
        M: FnOnce() -> F,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<ExchangedToken, ExchangeError>> + Send + 'static,
    {
        let margin = self.margin;
        let limit = move |mut t: ExchangedToken| {
            t.usable_until = t
                .expires_at
                .min(t.subject_exp.unwrap_or(u64::MAX))
                .saturating_sub(margin);
            t
        };
        if skip_cache {
            let result = make_fetch()().await.map(limit);
            if let Ok(t) = &result {
                self.insert(key, t.clone());
            }
            return (result, false);
        }
        if let Some(t) = self.usable(&key) {
            return (Ok(t), true);
        }
        let (flight, fetching) = {
            let mut flights = lock(&self.flights);
            if let Some(flight) = flights.get(&key) {
                (flight.clone(), false)
            } else if let Some(t) = self.usable(&key) {
                // A fetch for this key landed between the lookup above and the lock.
                return (Ok(t), true);
            } else {
                let fetch = make_fetch();
                let this = self.clone();
                // The fetch runs in its own task: if this caller is cancelled, the callers
                // waiting on the same key still get their answer.
                let task = tokio::spawn(async move {
                    // Off the list however the task ends, a panic included: the next miss
                    // then fetches again rather than wait on a fetch that is gone.
                    let _landed = Landed(&this, key);
                    let result = fetch().await.map(limit);
                    if let Ok(t) = &result {
                        this.insert(key, t.clone());
                    }
                    result.map_err(Arc::new)
                });
                let flight = async move {
                    task.await.unwrap_or_else(|e| {
                        Err(Arc::new(ExchangeError::Upstream {
                            message: format!("exchange task failed: {e}"),
                            timeout: false,
                        }))
                    })
                }
                .boxed()
                .shared();
                flights.insert(key, flight.clone());
                (flight, true)
            }
        };
        match flight.await {
            Ok(t) => (Ok(t), !fetching),
            Err(e) => (Err(Arc::unwrap_or_clone(e)), false),
        }
    }

    /// The cached token for `key` while it is usable; one past `usable_until` is dropped.
    pub(super) fn usable(&self, key: &[u8; 32]) -> Option<ExchangedToken> {
        let t = self.cache.get(key)?;
        if t.usable_until > now() {
            return Some(t);
        }
        if let Some((_, t)) = self.cache.remove_if(key, |t| t.usable_until <= now()) {
            self.meter.removed(t.entry_bytes(), Cause::Expired);
        }
        None
    }

    fn insert(&self, key: [u8; 32], token: ExchangedToken) {
        crate::cache_meter::insert(&self.cache, &self.meter, key, token);
    }
}

/// Takes a finished fetch's key off [`TokenCache::flights`] when dropped.
struct Landed<'a>(&'a TokenCache, [u8; 32]);

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        lock(&self.0.flights).remove(&self.1);
    }
}

/// The flights' lock. Nothing panics while holding it, so a poisoned lock only means a panic
/// elsewhere in that thread: its map is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;

    fn token(name: &str, lifetime: u64, subject_exp: Option<u64>) -> ExchangedToken {
        let response = TokenResponse {
            access_token: name.to_owned(),
            expires_in: lifetime,
            refresh_token: None,
            scope: None,
            id_token: None,
        };
        ExchangedToken::from_response(response, subject_exp).expect("a header-safe token")
    }

    /// A fetch that counts its calls and answers `token(name, lifetime)`.
    fn fetch(
        calls: &Arc<AtomicUsize>,
        name: &'static str,
        lifetime: u64,
        subject_exp: Option<u64>,
    ) -> impl FnOnce() -> std::future::Ready<Result<ExchangedToken, ExchangeError>> + Send + use<>
    {
        let calls = calls.clone();
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(token(name, lifetime, subject_exp)))
        }
    }

    #[test]
    fn every_field_is_part_of_the_key_and_cannot_run_into_the_next() {
        let base = key("p", "client", Grant::OnBehalfOf, "target", b"subject");
        let variants = [
            key("q", "client", Grant::OnBehalfOf, "target", b"subject"),
            key("p", "client2", Grant::OnBehalfOf, "target", b"subject"),
            key(
                "p",
                "client",
                Grant::ClientCredentials,
                "target",
                b"subject",
            ),
            key("p", "client", Grant::OnBehalfOf, "target2", b"subject"),
            key("p", "client", Grant::OnBehalfOf, "target", b"subject2"),
            // Same concatenation, different split.
            key("p", "client", Grant::OnBehalfOf, "targets", b"ubject"),
            key("pc", "lient", Grant::OnBehalfOf, "target", b"subject"),
        ];
        for (i, v) in variants.iter().enumerate() {
            assert_ne!(&base, v, "variant {i} shares the key");
        }
        assert_eq!(
            base,
            key("p", "client", Grant::OnBehalfOf, "target", b"subject")
        );
    }

    #[test]
    fn the_remembered_user_key_is_the_key_of_exactly_its_inputs() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        let inputs: [(&str, &str, Grant, &str, &[u8; 32]); 7] = [
            ("p", "client", Grant::OnBehalfOf, "target", &a),
            ("p", "client", Grant::OnBehalfOf, "target", &a),
            ("p", "client", Grant::OnBehalfOf, "target", &b),
            ("p", "client", Grant::OnBehalfOf, "target2", &b),
            ("p", "client", Grant::TokenExchange, "target2", &b),
            ("p", "client2", Grant::TokenExchange, "target2", &b),
            ("q", "client2", Grant::TokenExchange, "target2", &b),
        ];
        // Each call after the first either repeats the last inputs (the memo answers) or
        // changes one of them (it must not): every answer is the plain key of its inputs.
        for (provider, client, grant, target, subject) in inputs {
            assert_eq!(
                user_key(provider, client, grant, target, subject),
                key(provider, client, grant, target, subject),
                "{provider} {client} {grant:?} {target} {}",
                subject[0]
            );
        }
    }

    #[tokio::test]
    async fn concurrent_misses_make_one_fetch() {
        let cache = Arc::new(TokenCache::new(100, Duration::from_secs(10)));
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (cache, calls, gate) = (cache.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                cache
                    .get_or_fetch([1; 32], false, move || async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        gate.notified().await;
                        Ok(token("t", 3600, None))
                    })
                    .await
            }));
        }
        // Every caller is either waiting on the one fetch or has not looked up yet.
        tokio::task::yield_now().await;
        gate.notify_one();
        let mut hits = 0;
        for t in tasks {
            let (r, hit) = t.await.unwrap();
            assert_eq!(r.unwrap().access_token(), "t");
            hits += usize::from(hit);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(hits, 19, "all but the fetching caller count as hits");
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache = TokenCache::new(100, Duration::from_secs(10));
        let calls = Arc::new(AtomicUsize::new(0));
        let failing = {
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err(ExchangeError::NoTokenEndpoint))
            }
        };
        assert!(cache.get_or_fetch([2; 32], false, failing).await.0.is_err());
        let (r, hit) = cache
            .get_or_fetch([2; 32], false, fetch(&calls, "ok", 3600, None))
            .await;
        assert_eq!(r.unwrap().access_token(), "ok");
        assert!(!hit);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn the_authorization_value_is_built_once_and_a_garbled_token_refused() {
        let t = token("eyJ0.e30.sig", 3600, None);
        assert_eq!(t.access_token(), "eyJ0.e30.sig");
        assert_eq!(t.authorization(), "Bearer eyJ0.e30.sig");
        #[cfg(feature = "server")]
        {
            // The obo_headers value is the bare token, sharing the cached bytes.
            let bare = t.access_token_value().expect("a header value");
            assert_eq!(bare, "eyJ0.e30.sig");
            assert_eq!(bare.as_bytes().as_ptr(), t.access_token().as_ptr());
        }
        // Found by the token_response fuzz target: a header value takes non-ASCII (obs-text)
        // and inner spaces, a bearer token does not.
        for garbled in [
            "line\nbreak",
            "nul\0",
            "del\x7f",
            "eyJh\u{293}.e30",
            "a b",
            "",
        ] {
            let response = TokenResponse {
                access_token: garbled.to_owned(),
                expires_in: 3600,
                refresh_token: None,
                scope: None,
                id_token: None,
            };
            let err = ExchangedToken::from_response(response, None).expect_err("refused");
            assert_eq!(err.status(), http::StatusCode::BAD_GATEWAY);
            assert!(
                garbled.is_empty() || !err.to_string().contains(garbled),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn a_hit_builds_no_fetch() {
        let cache = TokenCache::new(100, Duration::from_secs(10));
        let calls = Arc::new(AtomicUsize::new(0));
        let built = Arc::new(AtomicUsize::new(0));
        let make = |name: &'static str| {
            let (calls, built) = (calls.clone(), built.clone());
            move || {
                built.fetch_add(1, Ordering::SeqCst);
                fetch(&calls, name, 3600, None)
            }
        };
        let (first, hit) = cache.get_or_else([9; 32], false, make("a")).await;
        assert_eq!((first.unwrap().access_token(), hit), ("a", false));
        let (again, hit) = cache.get_or_else([9; 32], false, make("b")).await;
        assert_eq!((again.unwrap().access_token(), hit), ("a", true));
        assert_eq!(built.load(Ordering::SeqCst), 1, "the hit built a fetch");
        let (skipped, hit) = cache.get_or_else([9; 32], true, make("c")).await;
        assert_eq!((skipped.unwrap().access_token(), hit), ("c", false));
        assert_eq!(
            (built.load(Ordering::SeqCst), calls.load(Ordering::SeqCst)),
            (2, 2)
        );
    }

    #[tokio::test]
    async fn skip_cache_fetches_and_replaces() {
        let cache = TokenCache::new(100, Duration::from_secs(10));
        let calls = Arc::new(AtomicUsize::new(0));
        let k = [3; 32];
        let first = cache
            .get_or_fetch(k, false, fetch(&calls, "a", 3600, None))
            .await;
        assert_eq!(first.0.unwrap().access_token(), "a");
        let skipped = cache
            .get_or_fetch(k, true, fetch(&calls, "b", 3600, None))
            .await;
        assert_eq!(skipped.0.unwrap().access_token(), "b");
        assert!(!skipped.1);
        let cached = cache
            .get_or_fetch(k, false, fetch(&calls, "c", 3600, None))
            .await;
        assert_eq!(cached.0.unwrap().access_token(), "b");
        assert!(cached.1);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn entries_end_a_margin_before_the_token_or_the_subject_expires() {
        let cache = TokenCache::new(100, Duration::from_secs(100));
        let calls = Arc::new(AtomicUsize::new(0));
        // The token lives an hour but the user token only 100 s: nothing left after the margin.
        let subject_bound = fetch(&calls, "s", 3600, Some(now() + 100));
        let (r, _) = cache.get_or_fetch([4; 32], false, subject_bound).await;
        assert_eq!(
            r.unwrap().access_token(),
            "s",
            "a fresh token is still handed out"
        );
        let (_, hit) = cache
            .get_or_fetch([4; 32], false, fetch(&calls, "s", 3600, Some(now() + 100)))
            .await;
        assert!(!hit, "an entry bound by the subject's exp was cached");
        // Same for the token's own lifetime.
        cache
            .get_or_fetch([5; 32], false, fetch(&calls, "t", 100, None))
            .await
            .0
            .unwrap();
        let (_, hit) = cache
            .get_or_fetch([5; 32], false, fetch(&calls, "t", 100, None))
            .await;
        assert!(
            !hit,
            "a token with no time left beyond the margin was cached"
        );
        // With time to spare it is cached.
        cache
            .get_or_fetch([6; 32], false, fetch(&calls, "u", 200, Some(now() + 300)))
            .await
            .0
            .unwrap();
        let (r, hit) = cache
            .get_or_fetch([6; 32], false, fetch(&calls, "v", 200, None))
            .await;
        assert!(hit);
        assert_eq!(r.unwrap().access_token(), "u");
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn no_entry_outlives_its_usable_second() {
        // Start half-way through a wall-clock second, so `usable_until` (a whole second) falls
        // half a second after the insert while a whole-second TTL would run a second.
        let sub = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        let wait = (1500 - u64::from(sub)) % 1000;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let cache = TokenCache::new(100, Duration::from_secs(1));
        let calls = Arc::new(AtomicUsize::new(0));
        cache
            .get_or_fetch([7; 32], false, fetch(&calls, "a", 2, None))
            .await
            .0
            .unwrap();
        let usable_until = now() + 1;
        while now() < usable_until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (r, hit) = cache
            .get_or_fetch([7; 32], false, fetch(&calls, "b", 2, None))
            .await;
        assert!(!hit, "an entry past its usable_until was handed out");
        assert_eq!(r.unwrap().access_token(), "b");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
