//! [`Validator`]: a token's signature, header and claims checked against one provider (RFC 8725),
//! with the validated claims cached until `exp`.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::value::RawValue;

use super::claims::{Hot, Numeric, Parsed, ProviderName, Registered};
use super::{Claims, ValidationError};
use crate::cache_meter::{
    BoundedCache, Budget, CacheKind, CacheValue, Cause, Meter, QUICK_SYNC_ENTRY_BYTES,
    bounded_cache,
};
use crate::config::is_guid;
use crate::provider::Provider;
use crate::util::{now, sha256};

/// Longest token accepted; Entra tokens are a few KiB, this leaves room for big group lists.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
/// # let provider = Provider::new(ProviderConfig {
/// #     client_id: "app".into(),
/// #     issuer: Some("https://login.example/v2.0".into()),
/// #     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
/// #     ..Default::default()
/// # }).unwrap();
/// # let validator = Validator::new(provider, 100);
/// use tollgate::validate::MAX_TOKEN_BYTES;
/// let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
/// let err = validator.validate(&huge).await.unwrap_err(); // refused before any parsing
/// assert_eq!(err.to_string(), "the token is too large");
/// # }
/// ```
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Header parameters that would let a token pick its own key (RFC 8725 §3.10 / RFC 7515
/// §4.1.2-4.1.5): never honoured, and a token carrying them is refused outright.
const FORBIDDEN_HEADER_PARAMS: &[&str] = &["jku", "jwk", "x5u", "x5c", "crit"];

/// Validates access tokens issued by one provider.
///
/// ```
/// # #[cfg(feature = "dev-idp")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
/// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
/// # use tollgate_devidp::{ALICE, ALICE_UPN, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
/// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
/// use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
/// let provider = Provider::new(ProviderConfig {
///     client_id: TOLLGATE_CLIENT_ID.into(),
///     well_known_url: Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?),
///     ..Default::default()
/// })?;
/// provider.refresh().await?;
/// let validator = Validator::new(provider, 100_000);
/// let claims = validator.validate(&token).await?;
/// assert_eq!(claims.username(), Some(ALICE_UPN));
/// # idp.shutdown().await;
/// # Ok(()) }
/// # #[cfg(not(feature = "dev-idp"))]
/// # fn main() {}
/// ```
#[derive(Clone)]
pub struct Validator {
    provider: Arc<Provider>,
    audiences: Arc<Vec<String>>,
    /// Validated tokens by the first 4 bytes of `sha256(token)` ([`cache_key`]); the claims
    /// keep the whole digest and the provider's key epoch the token was checked under: an
    /// entry from before a key was withdrawn is validated again. quick_cache rather than moka:
    /// a third of the bookkeeping per entry (`cache_meter`); expiry is checked on read instead
    /// of by a timer wheel.
    cache: Arc<BoundedCache<u32, Claims>>,
    /// The bytes the cache holds (`tollgate_cache_bytes{cache="validation"}`).
    meter: Arc<Meter>,
    budget: Budget,
    /// The provider's name, shared by every `Claims` this validator makes.
    provider_name: ProviderName,
    /// `tollgate_validations_total{result="cached"}`, registered at the first hit (after the
    /// recorder is installed) so the hot path skips the registry's label lookup.
    cached_hits: Arc<std::sync::OnceLock<metrics::Counter>>,
    /// The other results (`valid`, `keys_unavailable`, `invalid`), registered at the first
    /// miss: a flood of invalid tokens pays no label allocation and registry lookup each.
    miss_results: Arc<std::sync::OnceLock<[metrics::Counter; 3]>>,
    /// Unique to this validator and its clones (`LastToken` serves claims only to the validator
    /// that made them).
    id: u64,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("provider", &self.provider.name())
            .finish()
    }
}

impl Validator {
    /// A validator for `provider`'s tokens caching up to `cache_capacity` validated tokens.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tollgate::{config::ProviderConfig, provider::Provider, validate::{ValidationError, Validator}};
    /// let provider = Provider::new(ProviderConfig {
    ///     client_id: "app".into(),
    ///     issuer: Some("https://login.example/v2.0".into()),
    ///     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
    ///     ..Default::default()
    /// }).unwrap();
    /// let validator = Validator::new(provider, 10_000);
    /// let err = validator.validate("not-a-jwt").await.unwrap_err(); // no key needed to refuse this
    /// assert_eq!(err, ValidationError::InvalidToken("the token is not a well-formed JWT".into()));
    /// # }
    /// ```
    pub fn new(provider: Arc<Provider>, cache_capacity: u64) -> Self {
        Self::with_memory(
            provider,
            cache_capacity,
            crate::config::CacheConfig::default().max_memory_per_cache(1),
        )
    }

    /// A validator caching up to `cache_capacity` validated tokens that hold at most
    /// `max_bytes` together (each entry weighed by its heap footprint: the payload, the parsed
    /// claims and the cache's own bookkeeping). [`Validator::new`] gives the cache half of
    /// `[cache] max_memory`'s default.
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
    /// #     ..Default::default()
    /// # }).unwrap();
    /// let validator = Validator::with_memory(provider, 100_000, 8 << 20);
    /// assert_eq!((validator.max_cache_bytes(), validator.cached_bytes()), (8 << 20, 0));
    /// ```
    pub fn with_memory(provider: Arc<Provider>, cache_capacity: u64, max_bytes: u64) -> Self {
        let audiences = Arc::new(provider.config().effective_audiences());
        let budget = Budget::new(max_bytes, cache_capacity);
        let meter = Meter::new(CacheKind::Validation);
        // An Entra token's entry is over a kilobyte.
        let cache = Arc::new(bounded_cache(budget, cache_capacity, 1024, &meter));
        let provider_name = Arc::new(provider.name().into());
        Self {
            provider,
            audiences,
            cache,
            meter,
            budget,
            provider_name,
            cached_hits: Arc::default(),
            miss_results: Arc::default(),
            id: NEXT_VALIDATOR_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Which validator this is: the same for its clones, never the same for another one.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The provider's key epoch now (see [`Provider::key_epoch`]).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn key_epoch(&self) -> u64 {
        self.provider.key_epoch()
    }

    /// Counts a validation answered without a check (`tollgate_validations_total{result="cached"}`).
    pub(crate) fn count_cached_hit(&self) {
        self.cached_hits
            .get_or_init(|| metrics::counter!("tollgate_validations_total", "provider" => self.provider.name().to_owned(), "result" => "cached"))
            .increment(1);
    }

    /// The bytes the validated-token cache holds now (its entries' weights).
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
    /// #     ..Default::default()
    /// # }).unwrap();
    /// let validator = Validator::new(provider, 100);
    /// assert_eq!(validator.cached_bytes(), 0);
    /// ```
    pub fn cached_bytes(&self) -> u64 {
        self.meter.bytes()
    }

    /// The most bytes the validated-token cache may hold.
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
    /// #     ..Default::default()
    /// # }).unwrap();
    /// let validator = Validator::new(provider, 100);
    /// assert_eq!(validator.max_cache_bytes(), 32 << 20); // half of max_memory's 64MiB
    /// ```
    pub fn max_cache_bytes(&self) -> u64 {
        self.budget.max_bytes
    }

    /// Caches `claims` for `digest` (validated under key `epoch`), stamping them with both
    /// unless they are stamped already. Claims that are neither (shared before they were
    /// stamped: no validator's) could never be served from the cache, and are not put in.
    pub(crate) fn cache_insert(&self, digest: [u8; 32], mut claims: Claims, epoch: u64) {
        if claims.stamped_epoch(&digest) != Some(epoch) && !claims.stamp(digest, epoch) {
            return;
        }
        crate::cache_meter::insert(&self.cache, &self.meter, cache_key(&digest), claims);
    }

    /// The cached claims for `digest`, unless past `exp` or checked under a key epoch other
    /// than `epoch`: such an entry is dropped, never served. An entry under the same key for
    /// another token (its digest differs past the key's 4 bytes) is not served either.
    pub(crate) fn cached(&self, digest: &[u8; 32], epoch: u64) -> Option<Claims> {
        let claims = self.cache.get(&cache_key(digest))?;
        let checked_under = claims.stamped_epoch(digest);
        if checked_under == Some(epoch) && claims.expires_at() > now() {
            return Some(claims);
        }
        if checked_under.is_some() {
            self.remove_unusable(digest, epoch);
        }
        None
    }

    /// Drops the entry for `digest` when it is past `exp` or was checked under a key epoch
    /// before `epoch`: found on read, it must not be served, and it would otherwise sit there
    /// until pushed out by size. An entry a concurrent check put in meanwhile is kept.
    fn remove_unusable(&self, digest: &[u8; 32], epoch: u64) {
        let unusable = |claims: &Claims| {
            claims.expires_at() <= now()
                || claims
                    .stamped_epoch(digest)
                    .is_some_and(|checked_under| checked_under < epoch)
        };
        if let Some((_, claims)) = self.cache.remove_if(&cache_key(digest), unusable) {
            let cause = if claims.expires_at() <= now() {
                Cause::Expired
            } else {
                Cause::Explicit
            };
            self.meter.removed(entry_bytes(&claims), cause);
        }
    }

    /// Entries in the cache, for measurements.
    #[cfg(test)]
    pub(crate) fn cache_len(&self) -> u64 {
        self.cache.len() as u64
    }

    /// The provider this validator trusts.
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
    /// #     ..Default::default()
    /// # }).unwrap();
    /// # let validator = Validator::new(provider, 100);
    /// assert_eq!(validator.provider().config().client_id, "app");
    /// ```
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Validates `token`, from the cache when it was validated before and has not expired.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let well_known_url = Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?);
    /// # let provider = Provider::new(ProviderConfig { client_id: TOLLGATE_CLIENT_ID.into(), well_known_url, ..Default::default() })?;
    /// # provider.refresh().await?;
    /// # let validator = Validator::new(provider, 100);
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// let claims = validator.validate(&token).await?;
    /// assert!(claims.scopes().iter().any(|s| s == "access_as_user"));
    /// let again = validator.validate(&token).await?; // a hash and a lookup, no RSA
    /// assert_eq!(again.subject(), claims.subject());
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn validate(&self, token: &str) -> Result<Claims, ValidationError> {
        use tracing::Instrument as _;
        let span = crate::telemetry::span!(
            "validate_token",
            otel.status_code = tracing::field::Empty,
            provider = self.provider.name(),
            cache = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let result = self
            .validate_traced(token, &span)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result
            && !span.is_none()
        {
            span.record("error.type", e.code());
            span.record("otel.status_code", "ERROR");
        }
        result
    }

    /// [`Validator::validate`] inside its span, which learns whether the cache answered.
    async fn validate_traced(
        &self,
        token: &str,
        span: &tracing::Span,
    ) -> Result<Claims, ValidationError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(self.refuse("oversized", "the token is too large"));
        }
        let digest = sha256(token.as_bytes());
        // Read before validating: a key withdrawn while this token is checked leaves the new
        // entry under the older epoch, so the next request checks it again.
        let epoch = self.provider.key_epoch();
        if let Some(claims) = self.cached(&digest, epoch) {
            self.count_cached_hit();
            span.record("cache", "hit");
            return Ok(claims);
        }
        span.record("cache", "miss");
        // Boxed: the first sight's future (the key lookup, which may fetch the JWKS) is large,
        // and a cache hit, the usual request, would otherwise carry and move its space.
        let result = Box::pin(self.validate_uncached(token)).await;
        let index = match &result {
            Ok(_) => 0,
            Err(ValidationError::KeysUnavailable) => 1,
            Err(_) => 2,
        };
        self.miss_results.get_or_init(|| {
            ["valid", "keys_unavailable", "invalid"].map(|label| {
                metrics::counter!("tollgate_validations_total", "provider" => self.provider.name().to_owned(), "result" => label)
            })
        })[index]
            .increment(1);
        let mut claims = result?;
        // Stamped while these are the only claims: `cache_insert` gets a clone.
        claims.stamp(digest, epoch);
        self.cache_insert(digest, claims.clone(), epoch);
        Ok(claims)
    }

    /// Validates without reading or filling the cache (benchmarks, first sight).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "app".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse().unwrap()),
    /// #     ..Default::default()
    /// # }).unwrap();
    /// # let validator = Validator::new(provider, 100);
    /// // The algorithm comes from the configuration (RS256), never from the token.
    /// let hs256 = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln";
    /// let err = validator.validate_uncached(hs256).await.unwrap_err();
    /// assert_eq!(err.to_string(), "algorithm HS256 is not accepted");
    /// # }
    /// ```
    pub async fn validate_uncached(&self, token: &str) -> Result<Claims, ValidationError> {
        let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the token is too large"));
        }
        // One pass (RFC 7515 §5.2): the header is decoded once, the signature checked over the
        // parts as sent, and only then the payload decoded and parsed once, its registered
        // claims checked from that same parse. The refusals, and which one wins when several
        // apply, are those `jsonwebtoken::decode` gave: signature first, then the claims.
        let jws = Compact::split(token)?;
        let header = &jws.header;
        let config = self.provider.config();
        if !config.algorithms.contains(&header.alg) {
            return Err(ValidationError::InvalidToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("the token header has no kid"))?;
        let Some(key) = self.provider.key(kid).await else {
            if self.provider.key_set().is_empty() {
                return Err(ValidationError::KeysUnavailable);
            }
            return Err(invalid("the token is signed by an unknown key"));
        };
        // Keys older than `jwks_max_stale` (the IdP unreachable that long) no longer vouch for
        // anything, even before the next refresh attempt drops them.
        if !self.provider.is_ready() {
            return Err(ValidationError::KeysUnavailable);
        }
        if !key.allows(header.alg) {
            return Err(invalid(
                "the signing key does not match the token's algorithm",
            ));
        }
        // The algorithm is the token's, but only once the configuration accepts it and the
        // key's type and own `alg` allow it (RFC 8725 §3.1): never one the token alone picked.
        jws.verify(&key.key, header.alg)?;
        let (claims, registered) = jws
            .claims(&self.audiences)
            .ok_or_else(|| invalid("the token is not a well-formed JWT"))?;
        check_registered(&registered, config.leeway.as_secs(), now())?;
        self.check_issuer(&claims, key.issuer.as_deref())?;
        refuse_id_tokens(header.typ.as_deref(), &claims)?;
        Ok(Claims::from_parsed(self.provider_name.clone(), claims))
    }

    /// Validates an ID token from this provider for `client_id` (OIDC Core §3.1.3.7): signature,
    /// issuer, `aud` = `client_id`; `exp` is skipped when `allow_expired` (an `id_token_hint` at
    /// logout may be old — it only names the user). The caller checks `nonce` where the flow has
    /// one: ID tokens from a refresh grant carry none (OIDC Core §12.2).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # use tollgate::{config::ProviderConfig, provider::Provider, validate::Validator};
    /// # let well_known_url = Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?);
    /// # let provider = Provider::new(ProviderConfig { client_id: TOLLGATE_CLIENT_ID.into(), well_known_url, ..Default::default() })?;
    /// # provider.refresh().await?;
    /// # let validator = Validator::new(provider, 100);
    /// # use tollgate_devidp::{ALICE_OID, ALICE_UPN, DEV_PASSWORD, TOLLGATE_CLIENT_SECRET};
    /// # let form = [("grant_type", "password"), ("client_id", TOLLGATE_CLIENT_ID), ("client_secret", TOLLGATE_CLIENT_SECRET),
    /// #     ("username", ALICE_UPN), ("password", DEV_PASSWORD), ("scope", "openid profile")];
    /// # let response = reqwest::Client::new().post(idp.token_endpoint(DEFAULT_TENANT_ID)).form(&form).send().await?;
    /// # let body: serde_json::Value = response.json().await?;
    /// # let id_token = body["id_token"].as_str().ok_or("no id_token")?.to_owned();
    /// let claims = validator.validate_id_token(&id_token, TOLLGATE_CLIENT_ID, false).await?;
    /// assert_eq!(claims.oid(), Some(ALICE_OID));
    /// assert!(validator.validate_id_token(&id_token, "another-client", false).await.is_err());
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn validate_id_token(
        &self,
        token: &str,
        client_id: &str,
        allow_expired: bool,
    ) -> Result<Claims, ValidationError> {
        let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the ID token is too large"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the ID token is not a well-formed JWT"))?;
        check_header(&header)?;
        let config = self.provider.config();
        if !config.algorithms.contains(&header.alg) {
            return Err(invalid("the ID token algorithm is not accepted"));
        }
        let kid = header
            .kid
            .as_deref()
            .ok_or_else(|| invalid("the ID token header has no kid"))?;
        let key = match self.provider.key(kid).await {
            Some(k) if k.allows(header.alg) => k,
            Some(_) => {
                return Err(invalid(
                    "the signing key does not match the ID token's algorithm",
                ));
            }
            None if self.provider.key_set().is_empty() => {
                return Err(ValidationError::KeysUnavailable);
            }
            None => return Err(invalid("the ID token is signed by an unknown key")),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = !allow_expired;
        validation.validate_nbf = !allow_expired;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_audience(&[client_id]);
        let data =
            jsonwebtoken::decode::<Box<RawValue>>(token, &key.key, &validation).map_err(|e| {
                ValidationError::InvalidToken(format!(
                    "the ID token is not valid: {}",
                    e.kind_description()
                ))
            })?;
        let claims = Parsed::of(data.claims.into())
            .map_err(|_| invalid("the ID token is not valid: malformed"))?;
        self.check_issuer(&claims, key.issuer.as_deref())?;
        Ok(Claims::from_parsed(self.provider_name.clone(), claims))
    }

    /// `iss` must equal the provider's issuer, or a `{tenantid}` template filled with the token's
    /// own `tid` (Microsoft's multi-tenant issuer rule); for Entra, v1 and v2 issuer forms of the same
    /// tenant (`https://sts.windows.net/{tid}/`, `https://login.microsoftonline.com/{tid}/v2.0`) are
    /// both accepted.
    fn check_issuer(
        &self,
        claims: &Parsed,
        key_issuer: Option<&str>,
    ) -> Result<(), ValidationError> {
        let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
        let iss = claims
            .hot(Hot::Iss)
            .ok_or_else(|| invalid("the token has no iss claim"))?;
        let tid = claims.hot(Hot::Tid);
        let metadata = self
            .provider
            .metadata()
            .ok_or(ValidationError::KeysUnavailable)?;
        let config = self.provider.config();
        // The issuer, the additional issuers, then each one's Entra v1 form: the first that
        // matches decides whether a `{tenantid}` template did. Compared in place, without
        // building the candidates (first sight pays for every allocation).
        let direct = || {
            std::iter::once(metadata.issuer.as_str())
                .chain(config.additional_issuers.iter().map(String::as_str))
        };
        let guid_tid = tid.filter(|t| is_guid(t));
        let mut templated_match = false;
        let mut try_candidate = |templated: bool, matches: &dyn Fn(&str) -> bool| {
            if templated {
                let ok = guid_tid.is_some_and(matches);
                templated_match |= ok;
                ok
            } else {
                matches("")
            }
        };
        let matched = direct()
            .any(|c| try_candidate(c.contains(TENANT_ID), &|t| filled_is(c, t, iss)))
            || direct().any(|c| {
                entra_v2_tenant(c).is_some_and(|tenant| {
                    try_candidate(tenant.contains(TENANT_ID), &|t| {
                        entra_v1_tenant(iss).is_some_and(|i| filled_is(tenant, t, i))
                    })
                })
            });
        if !matched {
            return Err(invalid("the token was issued by an untrusted issuer"));
        }
        if let Some(key_iss) = key_issuer {
            let is = |t: &str| {
                filled_is(key_iss, t, iss)
                    || entra_v2_tenant(key_iss).is_some_and(|tenant| {
                        entra_v1_tenant(iss).is_some_and(|i| filled_is(tenant, t, i))
                    })
            };
            let ok = if key_iss.contains(TENANT_ID) {
                tid.is_some_and(is)
            } else {
                is("")
            };
            if !ok {
                return Err(invalid("the signing key belongs to another issuer"));
            }
        }
        let allowed = &config.allowed_tenants;
        let any_tenant = allowed.iter().any(|t| t == "*");
        if (templated_match || !allowed.is_empty()) && !any_tenant {
            let t = tid.ok_or_else(|| invalid("the token has no tid claim"))?;
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(t)) {
                return Err(invalid("the token's tenant is not allowed"));
            }
        }
        Ok(())
    }

    fn refuse(&self, result: &'static str, message: &str) -> ValidationError {
        metrics::counter!("tollgate_validations_total", "provider" => self.provider.name().to_owned(), "result" => result).increment(1);
        ValidationError::InvalidToken(message.to_owned())
    }
}

/// Refuses a header that would pick its own key (RFC 8725 §3.10, RFC 7515 §4.1.2-4.1.6) or that
/// lists critical extensions: RFC 7515 §4.1.11 says a recipient must reject a JWS whose `crit`
/// names an extension it does not understand, and tollgate understands none. jsonwebtoken parses
/// `crit` into its own field, so the extras map never holds it: both places are read.
fn check_header(header: &jsonwebtoken::Header) -> Result<(), ValidationError> {
    let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
    if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() || header.x5c.is_some()
    {
        return Err(invalid(
            "the token header carries its own key (jku, jwk, x5u or x5c)",
        ));
    }
    if header.crit.is_some()
        || FORBIDDEN_HEADER_PARAMS
            .iter()
            .any(|p| header.extras.inner().contains_key(*p))
    {
        return Err(invalid("the token header has critical extensions"));
    }
    Ok(())
}

/// A compact JWS (RFC 7515 §7.1) split once: the header decoded, parsed and checked, the
/// payload and signature still as sent. Split as `jsonwebtoken` splits (at the last two dots),
/// so a token with more parts fails where it failed before: at the header's base64.
struct Compact<'t> {
    header: JwsHeader,
    /// `BASE64URL(header) '.' BASE64URL(payload)`: what the signature covers.
    signing_input: &'t str,
    payload: &'t str,
    signature: &'t str,
}

impl<'t> Compact<'t> {
    fn split(token: &'t str) -> Result<Self, ValidationError> {
        let malformed =
            || ValidationError::InvalidToken("the token is not a well-formed JWT".into());
        let (signing_input, signature) = token.rsplit_once('.').ok_or_else(malformed)?;
        let (header, payload) = signing_input.rsplit_once('.').ok_or_else(malformed)?;
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| malformed())?;
        let header = JwsHeader::parse(&header)?;
        Ok(Self {
            header,
            signing_input,
            payload,
            signature,
        })
    }

    /// Checks the signature with `key` for `alg` (for RSA, over the key parsed once:
    /// `parsed_keys`), in the steps and with the refusals of `jsonwebtoken::crypto::verify`: the
    /// verifier for the key first, then the signature's base64url, then the signature itself.
    fn verify(
        &self,
        key: &jsonwebtoken::DecodingKey,
        alg: Algorithm,
    ) -> Result<(), ValidationError> {
        let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
        let verifier = super::parsed_keys::new_verifier(&alg, key)
            .map_err(|_| invalid("the token could not be verified"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(self.signature)
            .map_err(|_| invalid("the token is not a well-formed JWT"))?;
        verifier
            .verify(self.signing_input.as_bytes(), &signature)
            .map_err(|_| invalid("the token signature is invalid"))
    }

    /// The payload decoded and parsed once: the claims, and the registered claims to check.
    /// `None` when it is not base64url, not UTF-8, not a JSON object, or would not have parsed
    /// as `jsonwebtoken`'s claims (see [`Registered::malformed`]).
    fn claims(&self, audiences: &[String]) -> Option<(Parsed, Registered)> {
        let text = base64url_text(self.payload)?;
        let (parsed, registered) = Parsed::checked(text, audiences).ok()?;
        (!registered.malformed).then_some((parsed, registered))
    }
}

/// What validation reads of a JWS header (RFC 7515 §4.1), once [`check_header`] passed it.
struct JwsHeader {
    alg: Algorithm,
    kid: Option<String>,
    typ: Option<String>,
}

impl JwsHeader {
    /// Parses a decoded header. The usual one (`alg`, `kid`, `typ`, `x5t`, ...: see
    /// [`PlainHeader`]) is read directly; anything else, `jsonwebtoken::Header` reads and
    /// [`check_header`] checks as before. Its `#[serde(flatten)]` extras make it buffer the whole
    /// header first, which cost more than the rest of the header's handling together.
    fn parse(json: &[u8]) -> Result<Self, ValidationError> {
        if let Ok(PlainHeader { alg, kid, typ, .. }) = serde_json::from_slice(json) {
            return Ok(Self { alg, kid, typ });
        }
        let header: jsonwebtoken::Header = serde_json::from_slice(json).map_err(|_| {
            ValidationError::InvalidToken(
                "the token header names an unsupported algorithm or is not valid JSON".into(),
            )
        })?;
        check_header(&header)?;
        Ok(Self {
            alg: header.alg,
            kid: header.kid,
            typ: header.typ,
        })
    }
}

/// A header of only the parameters an IdP's access token carries, each at most once and of
/// the type `jsonwebtoken::Header` gives it: whatever this accepts, that reads the same way,
/// with no key of its own and no `crit` (so [`check_header`] has nothing to refuse). Anything
/// else fails here and is read by `jsonwebtoken::Header`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // `cty` and the thumbprints are only checked to be strings
struct PlainHeader<'a> {
    alg: Algorithm,
    kid: Option<String>,
    typ: Option<String>,
    #[serde(borrow)]
    cty: Option<&'a str>,
    #[serde(borrow)]
    x5t: Option<&'a str>,
    #[serde(borrow, rename = "x5t#S256")]
    x5t_s256: Option<&'a str>,
}

/// Base64url without padding (RFC 7515 §2) decoded into a buffer of exactly the decoded size,
/// which the claims then keep as it is (no copy, no shrinking reallocation), if it is UTF-8.
fn base64url_text(encoded: &str) -> Option<String> {
    // Each 4 characters are 3 bytes, a tail of 2 or 3 characters 1 or 2 bytes; a tail of 1
    // character is no base64, and the decoder refuses it.
    let exact = encoded.len() / 4 * 3 + [0, 0, 1, 2][encoded.len() % 4];
    let mut bytes = vec![0; exact];
    let written = URL_SAFE_NO_PAD.decode_slice(encoded, &mut bytes).ok()?;
    bytes.truncate(written);
    String::from_utf8(bytes).ok()
}

/// The registered-claim checks `jsonwebtoken::decode` made (RFC 7519 §4.1.3-4.1.5), in its
/// order and with its readings: `exp`, `iss` and `aud` required, `nbf` readable if present,
/// `exp` and `nbf` against `now` give or take `leeway` seconds, then `aud`.
fn check_registered(claims: &Registered, leeway: u64, now: u64) -> Result<(), ValidationError> {
    let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
    let Numeric::At(exp) = claims.exp else {
        return Err(invalid("the token has no exp claim"));
    };
    if !claims.iss {
        return Err(invalid("the token has no iss claim"));
    }
    let Some(audience_accepted) = claims.aud else {
        return Err(invalid("the token has no aud claim"));
    };
    if claims.nbf == Numeric::Invalid {
        return Err(invalid("the token could not be verified"));
    }
    if exp < now.saturating_sub(leeway) {
        return Err(invalid("the token has expired"));
    }
    if let Numeric::At(nbf) = claims.nbf
        && nbf > now.saturating_add(leeway)
    {
        return Err(invalid("the token is not valid yet (nbf)"));
    }
    if !audience_accepted {
        return Err(invalid("the token is not meant for this audience"));
    }
    Ok(())
}

/// RFC 8725 §3.11-3.12: an ID token (or another JWT of the IdP's) must not pass as an access
/// token. Entra's access and ID tokens are both `typ: JWT`, so they are told apart by content:
/// - an explicit type that is not an access token's: a header `typ` other than `JWT` or RFC 9068's
///   `at+jwt`, or a payload `typ` of Keycloak's `ID`, `Refresh`, `Offline` or `Logout`;
/// - claims only ID tokens carry: `nonce`, `at_hash`, `c_hash` (OIDC Core §2, §3.3.2.11), and
///   `events` (a logout token, OpenID Back-Channel Logout §2.4);
/// - an Entra (`ver`) access token always names its client in `azp` (v2) or `appid` (v1); an
///   Entra ID token (a refresh grant's has no `nonce`) names neither.
fn refuse_id_tokens(header_typ: Option<&str>, claims: &Parsed) -> Result<(), ValidationError> {
    let not_access = || {
        Err(ValidationError::InvalidToken(
            "an ID token is not an access token".into(),
        ))
    };
    if let Some(typ) = header_typ {
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        if !(typ.eq_ignore_ascii_case("jwt") || typ.eq_ignore_ascii_case("at+jwt")) {
            return Err(ValidationError::InvalidToken(
                "the token's type (typ) is not an access token's".into(),
            ));
        }
    }
    if let Some(typ) = claims.typ()
        && ["id", "refresh", "offline", "logout"]
            .iter()
            .any(|t| typ.eq_ignore_ascii_case(t))
    {
        return not_access();
    }
    if claims.has_id_token_marker() {
        return not_access();
    }
    if claims.has_ver() && !claims.has_key(Hot::Azp) && !claims.has_key(Hot::Appid) {
        return not_access();
    }
    Ok(())
}

/// The heap bytes a validated-token cache entry holds: the claims, what quick_cache keeps per
/// entry (the key and value inline in its slab), and what the proxy's `X-Auth-*` headers add
/// to the claims at the first request ([`Claims::headers_bytes`]).
pub(crate) fn entry_bytes(claims: &Claims) -> usize {
    claims.heap_bytes() + QUICK_SYNC_ENTRY_BYTES + claims.headers_bytes()
}

impl CacheValue for Claims {
    fn entry_bytes(&self) -> usize {
        entry_bytes(self)
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at() <= now
    }

    fn same_as(&self, other: &Self) -> bool {
        Claims::same_as(self, other)
    }
}

/// The next [`Validator::id`].
static NEXT_VALIDATOR_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The validation cache's key for a token of `sha256` `digest`: its first 4 bytes. Enough to
/// find the entry: the claims keep the whole digest, and are served only for that very digest
/// (`Claims::stamped_epoch`), so a token whose digest shares the 4 bytes with a cached one
/// costs a validation (and takes the other's place), never the other token's claims. That
/// happens to about one new token in 43,000 in a cache of 100,000 tokens, and cannot be aimed at a
/// user but by having billions of tokens signed. 4 bytes rather than 32 make each entry's slot
/// in quick_cache 24 bytes rather than 64 (and its ghost after an eviction too).
fn cache_key(digest: &[u8; 32]) -> u32 {
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The placeholder of a multi-tenant issuer template.
const TENANT_ID: &str = "{tenantid}";

/// Whether `template` with every `{tenantid}` replaced by `tid` is `iss`, without building it.
fn filled_is(template: &str, tid: &str, iss: &str) -> bool {
    let mut rest = iss;
    for (i, piece) in template.split(TENANT_ID).enumerate() {
        if i > 0 {
            let Some(after) = rest.strip_prefix(tid) else {
                return false;
            };
            rest = after;
        }
        let Some(after) = rest.strip_prefix(piece) else {
            return false;
        };
        rest = after;
    }
    rest.is_empty()
}

/// `https://login.microsoftonline.com/X/v2.0` -> `X`: an Entra v2 issuer's tenant, whose v1
/// issuer is `https://sts.windows.net/X/`.
fn entra_v2_tenant(issuer: &str) -> Option<&str> {
    issuer
        .strip_prefix("https://login.microsoftonline.com/")?
        .strip_suffix("/v2.0")
}

/// `https://sts.windows.net/X/` -> `X`.
fn entra_v1_tenant(issuer: &str) -> Option<&str> {
    issuer
        .strip_prefix("https://sts.windows.net/")?
        .strip_suffix('/')
}

trait KindDescription {
    fn kind_description(&self) -> &'static str;
}

impl KindDescription for jsonwebtoken::errors::Error {
    fn kind_description(&self) -> &'static str {
        use jsonwebtoken::errors::ErrorKind as K;
        match self.kind() {
            K::ExpiredSignature => "expired",
            K::ImmatureSignature => "not valid yet",
            K::InvalidAudience => "wrong audience",
            K::InvalidSignature => "bad signature",
            K::MissingRequiredClaim(_) => "a required claim is missing",
            _ => "malformed",
        }
    }
}

/// The `kid` of a token's header, unverified (for diagnostics and tests).
///
/// ```
/// use tollgate::validate::token_kid;
/// // header {"alg":"RS256","kid":"key-1","typ":"JWT"}
/// assert_eq!(token_kid("eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIiwidHlwIjoiSldUIn0.e30.c2ln").as_deref(), Some("key-1"));
/// assert_eq!(token_kid("not-a-jwt"), None);
/// ```
pub fn token_kid(token: &str) -> Option<String> {
    jsonwebtoken::decode_header(token).ok()?.kid
}

/// The algorithm a validator would check a token with (for diagnostics).
///
/// ```
/// use jsonwebtoken::Algorithm;
/// use tollgate::validate::token_algorithm;
/// assert_eq!(token_algorithm("eyJhbGciOiJSUzI1NiIsImtpZCI6ImtleS0xIiwidHlwIjoiSldUIn0.e30.c2ln"), Some(Algorithm::RS256));
/// assert_eq!(token_algorithm("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln"), Some(Algorithm::HS256));
/// ```
pub fn token_algorithm(token: &str) -> Option<Algorithm> {
    jsonwebtoken::decode_header(token).ok().map(|h| h.alg)
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::{KeyPair, KeySize};
    use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
    use serde_json::{Value, json};

    use super::*;
    use crate::config::ProviderConfig;
    use std::time::Duration;

    const CLIENT: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
    const ISSUER: &str = "https://login.example/tenant/v2.0";
    /// `{"typ":"JWT","alg":"RS256","kid":"k1"}`
    const HEADER: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0";

    /// A validator whose provider holds one RSA key (kid `k1`) as if just fetched, and that key.
    struct Fixture {
        validator: Validator,
        pair: KeyPair,
    }

    fn fixture(leeway: u64) -> Fixture {
        let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
        let public = pair.public_key();
        let jwks = json!({"keys": [{"kty": "RSA", "use": "sig", "kid": "k1",
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())}]});
        let provider = Provider::new(crate::config::ProviderConfig {
            client_id: CLIENT.into(),
            issuer: Some(ISSUER.into()),
            // A closed port: an unknown kid costs one refused connection.
            jwks_uri: Some("http://127.0.0.1:9/keys".parse().unwrap()),
            leeway: Duration::from_secs(leeway),
            ..ProviderConfig::default()
        })
        .unwrap();
        let keys = crate::provider::jwks::key_set(&jwks, &provider.config().algorithms).unwrap();
        provider.replace_keys(keys);
        Fixture {
            validator: Validator::new(provider, 16),
            pair,
        }
    }

    impl Fixture {
        /// RS256 over `header_b64.payload_b64`, exactly as given.
        fn sign_raw(&self, header_b64: &str, payload_b64: &str) -> String {
            let input = format!("{header_b64}.{payload_b64}");
            let mut sig = vec![0; self.pair.public_modulus_len()];
            self.pair
                .sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input.as_bytes(),
                    &mut sig,
                )
                .unwrap();
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
        }

        /// A token over the payload text `payload`, with the usual header.
        fn sign_text(&self, payload: &str) -> String {
            self.sign_raw(HEADER, &URL_SAFE_NO_PAD.encode(payload))
        }

        /// A token of the usual claims with `extra` merged over them (`null` removes one).
        fn token(&self, extra: Value) -> String {
            self.sign_text(&claims(extra).to_string())
        }

        /// `valid`, or the refusal's message.
        fn refusal(&self, token: &str) -> String {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(self.validator.validate_uncached(token))
                .map(|_| "valid".to_owned())
                .unwrap_or_else(|e| e.to_string())
        }
    }

    fn claims(extra: Value) -> Value {
        let t = now();
        let mut base = json!({"aud": CLIENT, "iss": ISSUER, "iat": t, "nbf": t, "exp": t + 3600,
            "azp": "client", "sub": "s", "oid": "o", "scp": "access_as_user", "ver": "2.0"});
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    b.insert(k, v);
                }
            }
        }
        base
    }

    #[test]
    fn registered_claims_refusals_name_the_claim() {
        let f = fixture(60);
        let t = now();
        for (extra, expected) in [
            (json!({}), "valid"),
            (json!({"exp": t - 3600}), "the token has expired"),
            (json!({"exp": t - 30}), "valid"), // within the leeway
            (json!({"exp": (t + 3600) as f64 + 0.4}), "valid"), // a float NumericDate
            (json!({"nbf": t + 3600}), "the token is not valid yet (nbf)"),
            (json!({"nbf": t + 30}), "valid"), // within the leeway
            (json!({"nbf": "soon"}), "the token could not be verified"),
            (json!({"nbf": -1}), "the token could not be verified"),
            (
                json!({"aud": "api://someone-else"}),
                "the token is not meant for this audience",
            ),
            (
                json!({"aud": []}),
                "the token is not meant for this audience",
            ),
            (
                json!({"aud": ["x", "y"]}),
                "the token is not meant for this audience",
            ),
            (json!({"aud": ["x", CLIENT]}), "valid"),
            (json!({"aud": format!("api://{CLIENT}")}), "valid"),
            (json!({"exp": null}), "the token has no exp claim"), // (null: left out)
            (json!({"exp": "soon"}), "the token has no exp claim"),
            (json!({"exp": -5}), "the token has no exp claim"),
            (json!({"exp": []}), "the token has no exp claim"),
            (json!({"iss": null}), "the token has no iss claim"),
            (json!({"iss": 7}), "the token has no iss claim"),
            // A list of issuers counts as present, then is no issuer string.
            (json!({"iss": [ISSUER]}), "the token has no iss claim"),
            (json!({"aud": null}), "the token has no aud claim"),
            (json!({"aud": 7}), "the token has no aud claim"),
            (json!({"aud": [CLIENT, 7]}), "the token has no aud claim"),
            // Required claims first, then expiry, then not-before, then audience.
            (
                json!({"exp": t - 3600, "aud": "x"}),
                "the token has expired",
            ),
            (
                json!({"aud": null, "exp": t - 3600}),
                "the token has no aud claim",
            ),
            (
                json!({"nbf": t + 3600, "aud": "x"}),
                "the token is not valid yet (nbf)",
            ),
            (
                json!({"iss": [ISSUER], "exp": t - 3600}),
                "the token has expired",
            ),
        ] {
            assert_eq!(f.refusal(&f.token(extra.clone())), expected, "{extra}");
        }
    }

    #[test]
    fn leeway_comes_from_the_configuration() {
        let f = fixture(0);
        let t = now();
        assert_eq!(
            f.refusal(&f.token(json!({"nbf": t + 30}))),
            "the token is not valid yet (nbf)"
        );
        assert_eq!(
            f.refusal(&f.token(json!({"exp": t - 30}))),
            "the token has expired"
        );
        assert_eq!(
            f.refusal(&f.token(json!({"nbf": t, "exp": t + 30}))),
            "valid"
        );
    }

    #[test]
    fn malformed_parts_are_refused_as_before() {
        let f = fixture(60);
        let malformed = "the token is not a well-formed JWT";
        let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
        // Validly signed, but the payload is no base64url, no UTF-8, no JSON object, or would
        // not parse as the registered claims.
        for (signed, why) in [
            (f.sign_raw(HEADER, "eyJub3QtYmFzZTY0!!!"), "base64"),
            (f.sign_raw(HEADER, &format!("{payload}=")), "padding"),
            (f.sign_raw(HEADER, "e"), "one character"),
            (
                f.sign_raw(HEADER, &URL_SAFE_NO_PAD.encode([0x7b, 0xff, 0x7d])),
                "UTF-8",
            ),
            (f.sign_text("{"), "truncated JSON"),
            (f.sign_text(r#"{"a":1} x"#), "trailing characters"),
            (f.sign_text("[1]"), "a list"),
            (f.sign_text("1"), "a number"),
        ] {
            assert_eq!(f.refusal(&signed), malformed, "{why}");
        }
        let t = now();
        for repeated in ["exp", "nbf", "sub", "iss", "aud"] {
            let text = claims(json!({})).to_string();
            let text = format!(
                r#"{{"{repeated}":{},{}"#,
                claims(json!({}))[repeated],
                &text[1..]
            );
            assert_eq!(
                f.refusal(&f.sign_text(&text)),
                malformed,
                "repeated {repeated}"
            );
        }
        for (extra, why) in [
            (json!({"exp": [t + 3600]}), "exp a list"),
            (json!({"nbf": {"at": t}}), "nbf an object"),
            (json!({"sub": []}), "sub a list"),
            (json!({"sub": {}}), "sub an object"),
        ] {
            assert_eq!(f.refusal(&f.token(extra)), malformed, "{why}");
        }
        // Not three parts, or a header that is no base64url JSON.
        let not_json = "the token header names an unsupported algorithm or is not valid JSON";
        for (token, expected) in [
            ("not-a-jwt".to_owned(), malformed),
            (format!("{HEADER}.{payload}"), malformed),
            (format!("x.{HEADER}.{payload}.c2ln"), malformed),
            (format!("e30!.{payload}.c2ln"), malformed),
            (
                format!("{}.{payload}.c2ln", URL_SAFE_NO_PAD.encode("{")),
                not_json,
            ),
            (
                format!(
                    "{}.{payload}.c2ln",
                    URL_SAFE_NO_PAD.encode(r#"{"alg":"XX256"}"#)
                ),
                not_json,
            ),
        ] {
            assert_eq!(f.refusal(&token), expected, "{token}");
        }
        // The signature itself not base64url.
        let good = f.token(json!({}));
        let (input, _) = good.rsplit_once('.').unwrap();
        assert_eq!(f.refusal(&format!("{input}.c2ln!")), malformed);
    }

    #[test]
    fn the_signature_is_checked_before_anything_it_covers() {
        let f = fixture(60);
        let good = f.token(json!({}));
        let mut parts = good.split('.');
        let (_, payload, signature) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let invalid = "the token signature is invalid";
        // The good signature over another payload, or under another header of the same key.
        let other_payload = URL_SAFE_NO_PAD.encode(claims(json!({"sub": "mallory"})).to_string());
        assert_eq!(
            f.refusal(&format!("{HEADER}.{other_payload}.{signature}")),
            invalid
        );
        let other_header = URL_SAFE_NO_PAD.encode(r#"{"typ":"at+jwt","alg":"RS256","kid":"k1"}"#);
        assert_eq!(
            f.refusal(&format!("{other_header}.{payload}.{signature}")),
            invalid
        );
        // What the signature covers is never looked at when it does not match: an expired,
        // audience-less or undecodable payload under a bad signature is a bad signature.
        let t = now();
        for payload in [
            URL_SAFE_NO_PAD.encode(claims(json!({"exp": t - 3600})).to_string()),
            URL_SAFE_NO_PAD.encode(claims(json!({"aud": null})).to_string()),
            "eyJub3QtYmFzZTY0!!!".to_owned(),
            URL_SAFE_NO_PAD.encode("[1]"),
        ] {
            assert_eq!(
                f.refusal(&format!("{HEADER}.{payload}.{signature}")),
                invalid,
                "{payload}"
            );
        }
        // Another key's signature under this kid.
        let mallory = fixture(60);
        assert_eq!(f.refusal(&mallory.token(json!({}))), invalid);
    }

    #[test]
    fn the_algorithm_must_be_the_configurations() {
        let f = fixture(60);
        let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
        for (header, expected) in [
            (
                r#"{"alg":"PS256","kid":"k1"}"#,
                "algorithm PS256 is not accepted",
            ),
            (
                r#"{"alg":"HS256","kid":"k1"}"#,
                "algorithm HS256 is not accepted",
            ),
            (
                r#"{"alg":"none","kid":"k1"}"#,
                "the token header names an unsupported algorithm or is not valid JSON",
            ),
            (r#"{"alg":"RS256"}"#, "the token header has no kid"),
            (
                r#"{"alg":"RS256","kid":"k1","jku":"http://x/"}"#,
                "the token header carries its own key (jku, jwk, x5u or x5c)",
            ),
        ] {
            let token = f.sign_raw(&URL_SAFE_NO_PAD.encode(header), &payload);
            assert_eq!(f.refusal(&token), expected, "{header}");
        }
    }

    #[test]
    fn the_plain_header_reads_as_jsonwebtoken_header_did() {
        let reference = |json: &str| -> Result<String, ValidationError> {
            let header: jsonwebtoken::Header = serde_json::from_str(json).map_err(|_| {
                ValidationError::InvalidToken(
                    "the token header names an unsupported algorithm or is not valid JSON".into(),
                )
            })?;
            check_header(&header)?;
            Ok(format!(
                "{:?} {:?} {:?}",
                header.alg, header.kid, header.typ
            ))
        };
        for json in [
            r#"{"typ":"JWT","alg":"RS256","kid":"k1"}"#,
            r#"{"typ":"JWT","alg":"RS256","x5t":"abc","kid":"k1"}"#,
            r#"{"alg":"RS256","kid":"k1","x5t#S256":"abc","cty":"JWT"}"#,
            r#"{"alg":"RS256","kid":null,"typ":null,"x5t":null}"#,
            r#"{"alg":"RS256","kid":"k\u0031","typ":"J\/T"}"#,
            r#"{"alg":"RS256","kid":"k1","x5t":"a\/b"}"#,
            r#"{"alg":"RS256","kid":"k1","kid":"k2"}"#,
            r#"{"alg":"RS256","kid":"k1","foo":"bar"}"#,
            r#"{"alg":"RS256","kid":"k1","jku":"http://x/"}"#,
            r#"{"alg":"RS256","kid":"k1","x5c":["MII"]}"#,
            r#"{"alg":"RS256","kid":"k1","crit":[]}"#,
            r#"{"alg":"RS256","kid":"k1","crit":null}"#,
            r#"{"alg":"RS256","kid":"k1","jwk":null}"#,
            r#"{"alg":"RS256","kid":5}"#,
            r#"{"alg":"RS256","kid":"k1","x5t":5}"#,
            r#"{"alg":"RS256","kid":"k1","nonce":"n"}"#,
            r#"{"kid":"k1"}"#,
            r#"{"alg":"none","kid":"k1"}"#,
            r#"{"alg":"rs256","kid":"k1"}"#,
            r#"{"alg":"RS256","kid":"k1"} "#,
            r#"{"alg":"RS256","kid":"k1"}x"#,
            r#"["RS256","k1"]"#,
            r#"{"alg":"RS256","\u006bid":"k1"}"#,
        ] {
            let ours = JwsHeader::parse(json.as_bytes())
                .map(|h| format!("{:?} {:?} {:?}", h.alg, h.kid, h.typ));
            assert_eq!(ours, reference(json), "{json}");
        }
    }

    #[test]
    fn exact_base64url_buffers_decode_every_length() {
        for len in 0..64u8 {
            let data: Vec<u8> = (0..len).map(|i| b'a' + i % 26).collect();
            let text = base64url_text(&URL_SAFE_NO_PAD.encode(&data)).unwrap();
            assert_eq!(text.as_bytes(), data);
            // No spare capacity: the claims keep this buffer as it is.
            assert_eq!(text.capacity(), text.len());
        }
        assert_eq!(base64url_text("abcde"), None);
        assert_eq!(base64url_text("ab=="), None);
    }

    /// The validation as `jsonwebtoken::decode` made it before the one-pass decode, kept to
    /// compare against: the same outcome for every payload, above all where the two could differ.
    fn reference(f: &Fixture, token: &str) -> String {
        let v = &f.validator;
        let invalid = |m: &str| ValidationError::InvalidToken(m.to_owned());
        let result = (|| {
            let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("header"))?;
            let key = v.provider.key_set().get("k1").ok_or(invalid("key"))?;
            let mut validation = Validation::new(header.alg);
            validation.leeway = v.provider.config().leeway.as_secs();
            validation.validate_nbf = true;
            validation.set_required_spec_claims(&["exp", "iss", "aud"]);
            validation.set_audience(&v.audiences);
            let data = jsonwebtoken::decode::<Box<RawValue>>(token, &key.key, &validation)
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind as K;
                    match e.kind() {
                        K::ExpiredSignature => invalid("the token has expired"),
                        K::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
                        K::InvalidAudience => invalid("the token is not meant for this audience"),
                        K::MissingRequiredClaim(c) => {
                            ValidationError::InvalidToken(format!("the token has no {c} claim"))
                        }
                        K::InvalidSignature => invalid("the token signature is invalid"),
                        K::Base64(_) | K::Json(_) | K::Utf8(_) => {
                            invalid("the token is not a well-formed JWT")
                        }
                        _ => invalid("the token could not be verified"),
                    }
                })?;
            let claims = Parsed::of(data.claims.into())
                .map_err(|_| invalid("the token is not a well-formed JWT"))?;
            v.check_issuer(&claims, key.issuer.as_deref())?;
            refuse_id_tokens(header.typ.as_deref(), &claims)
        })();
        result
            .map(|()| "valid".to_owned())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn one_pass_refuses_as_jsonwebtoken_did() {
        let f = fixture(60);
        let t = now();
        // At most one required claim missing in each: with several, jsonwebtoken named one of
        // them in a hash set's (random) order.
        let mut payloads: Vec<String> = [
            json!({}),
            json!({"exp": t - 61}),
            json!({"exp": t - 59}),
            json!({"exp": 1e30}),
            json!({"exp": (t + 100) as f64 + 0.5}),
            json!({"exp": true}),
            json!({"exp": {}}),
            json!({"nbf": t + 61}),
            json!({"nbf": t + 59}),
            json!({"nbf": 1.5}),
            json!({"nbf": -1.5}),
            json!({"nbf": []}),
            json!({"nbf": [1]}),
            json!({"nbf": {}}),
            json!({"nbf": {"a": 1}}),
            json!({"nbf": null}),
            json!({"sub": 5}),
            json!({"sub": null}),
            json!({"sub": []}),
            json!({"sub": ["a"]}),
            json!({"sub": {"a": "b"}}),
            json!({"iss": []}),
            json!({"iss": ["a", 1]}),
            json!({"iss": {"a": 1}}),
            json!({"aud": [CLIENT, CLIENT]}),
            json!({"aud": [[CLIENT]]}),
            json!({"aud": {"a": CLIENT}}),
            json!({"aud": true}),
            json!({"aud": ""}),
            json!({"iss": "https://evil.example/v2.0"}),
            json!({"nonce": "n"}),
            json!({"azp": null}),
            json!({"typ": "Refresh"}),
            json!({"exp": t - 3600, "nbf": t + 3600}),
            json!({"nbf": "x", "exp": t - 3600}),
            json!({"nbf": t + 3600, "aud": "x"}),
            json!({"exp": t - 3600, "iss": "https://evil.example/v2.0"}),
        ]
        .into_iter()
        .map(|extra| claims(extra).to_string())
        .collect();
        payloads.extend(
            [
                r#"{"exp":1,"exp":2}"#,
                r#"{"exp":99999999999,"iss":"https://login.example/tenant/v2.0","aud":"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","azp":"c","nbf":null}"#,
                r#"{"exp":null,"iss":"https://login.example/tenant/v2.0","aud":"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","azp":"c"}"#,
                r#"{"exp":99999999999,"iss":null,"aud":"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","azp":"c"}"#,
                r#"{"exp":99999999999,"iss":"https://login.example/tenant/v2.0","aud":null,"azp":"c"}"#,
                r#"{"exp":99999999999,"iss":"https://login.example/tenant/v2.0","aud":"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","azp":"c","sub":null}"#,
                r#"{"\u0065xp":99999999999,"iss":"https://login.example/tenant/v2.0","aud":"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","azp":"c","ver":"2"}"#,
                r#"{"aud":"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","iss":"https:\/\/login.example\/tenant\/v2.0","exp":99999999999,"azp":"c"}"#,
                r#"{"aud":"api:\/\/aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","iss":"https://login.example/tenant/v2.0","exp":99999999999,"azp":"c"}"#,
                r#"{"exp":99999999999,"iss":"https://login.example/tenant/v2.0","aud":"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","x":[1,{"y":[null]}]}"#,
                // A number out of range is malformed; jsonwebtoken named a failing registered
                // claim first, if there was one (not here): the one order that changed.
                r#"{"exp":99999999999,"iss":"https://login.example/tenant/v2.0","aud":"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","azp":"c","sub":1e400}"#,
                "[]",
                "null",
                r#"{"exp":99999999999,"iss":"https://login.example/tenant/v2.0","aud":"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb","azp":"c","a":"\ud800","sub":"\ud800"}"#,
            ]
            .map(str::to_owned),
        );
        for payload in payloads {
            let token = f.sign_text(&payload);
            assert_eq!(f.refusal(&token), reference(&f, &token), "{payload}");
        }
    }

    #[test]
    fn entra_issuers() {
        assert_eq!(
            entra_v2_tenant("https://login.microsoftonline.com/{tenantid}/v2.0"),
            Some("{tenantid}")
        );
        assert_eq!(entra_v1_tenant("https://sts.windows.net/t-1/"), Some("t-1"));
        assert_eq!(entra_v1_tenant("https://sts.windows.net/t-1"), None);
        // As `template.replace("{tenantid}", tid) == iss`, every occurrence filled.
        for (template, tid, iss) in [
            ("https://i/{tenantid}/v2.0", "t", "https://i/t/v2.0"),
            ("https://i/{tenantid}/v2.0", "t", "https://i/u/v2.0"),
            ("https://i/{tenantid}/{tenantid}", "t", "https://i/t/t"),
            ("https://i/{tenantid}/{tenantid}", "t", "https://i/t/"),
            ("{tenantid}", "", ""),
            ("https://i/", "t", "https://i/"),
            ("https://i/", "t", "https://i/x"),
            ("https://i/{tenantid}", "t", "https://i/tt"),
        ] {
            assert_eq!(
                filled_is(template, tid, iss),
                template.replace("{tenantid}", tid) == iss,
                "{template} {tid} {iss}"
            );
        }
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("11111111-2222-3333-4444-55555555555/"));
    }
}
