//! [`Validator`]: a token's signature, header and claims checked against one provider (RFC 8725),
//! with the validated claims cached until `exp`.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::value::RawValue;

use super::claims::{Hot, Parsed};
use super::{Claims, ValidationError};
use crate::cache_meter::{Budget, CacheKind, Cause, Meter, QUICK_SYNC_ENTRY_BYTES};
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
    /// Validated tokens by `sha256(token)`, each with the provider's key epoch it was checked
    /// under: an entry from before a key was withdrawn is validated again. quick_cache rather
    /// than moka: a third of the bookkeeping per entry (`cache_meter`); expiry is checked on
    /// read instead of by a timer wheel.
    cache: Arc<Entries>,
    /// The bytes the cache holds (`tollgate_cache_bytes{cache="validation"}`).
    meter: Arc<Meter>,
    budget: Budget,
    /// The provider's name, shared by every `Claims` this validator makes.
    provider_name: Arc<str>,
    /// `tollgate_validations_total{result="cached"}`, registered at the first hit (after the
    /// recorder is installed) so the hot path skips the registry's label lookup.
    cached_hits: Arc<std::sync::OnceLock<metrics::Counter>>,
    /// The other results (`valid`, `keys_unavailable`, `invalid`), registered at the first
    /// miss: a flood of invalid tokens pays no label allocation and registry lookup each.
    miss_results: Arc<std::sync::OnceLock<[metrics::Counter; 3]>>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("provider", &self.provider.name())
            .finish()
    }
}

/// The validated-token cache: weighed by [`entry_bytes`], its evictions counted by [`Evicted`].
type Entries = quick_cache::sync::Cache<
    [u8; 32],
    (Claims, u64),
    Weigh,
    quick_cache::DefaultHashBuilder,
    Evicted,
>;

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
        // First sight: each RSA key is parsed once, not at every verification.
        super::parsed_keys::install();
        let audiences = Arc::new(provider.config().effective_audiences());
        let budget = Budget::new(max_bytes, cache_capacity);
        let meter = Meter::new(CacheKind::Validation);
        let cache = Arc::new(Entries::with_options(
            cache_options(budget, cache_capacity),
            Weigh(budget),
            quick_cache::DefaultHashBuilder::default(),
            Evicted(meter.clone()),
        ));
        let provider_name = Arc::from(provider.name());
        Self {
            provider,
            audiences,
            cache,
            meter,
            budget,
            provider_name,
            cached_hits: Arc::default(),
            miss_results: Arc::default(),
        }
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

    /// Caches `claims` for `digest` (validated under key `epoch`).
    pub(crate) fn cache_insert(&self, digest: [u8; 32], claims: Claims, epoch: u64) {
        claims.set_token_digest(digest);
        // Counted in before the insert, which may push it (or others) out again.
        self.meter.inserted(entry_bytes(&claims));
        let mut inserting = Some(Inserting {
            key: digest,
            claims: claims.clone(),
        });
        self.cache
            .insert_with_lifecycle(digest, (claims, epoch), &mut inserting);
    }

    /// The cached claims for `digest`, unless past `exp` or checked under a key epoch other
    /// than `epoch`: such an entry is dropped, never served.
    pub(crate) fn cached(&self, digest: &[u8; 32], epoch: u64) -> Option<Claims> {
        let (claims, checked_under) = self.cache.get(digest)?;
        if checked_under == epoch && claims.expires_at() > now() {
            return Some(claims);
        }
        self.remove_unusable(digest, epoch);
        None
    }

    /// Drops the entry for `digest` when it is past `exp` or was checked under a key epoch
    /// before `epoch`: found on read, it must not be served, and it would otherwise sit there
    /// until pushed out by size. An entry a concurrent check put in meanwhile is kept.
    fn remove_unusable(&self, digest: &[u8; 32], epoch: u64) {
        let unusable = |(claims, checked_under): &(Claims, u64)| {
            claims.expires_at() <= now() || *checked_under < epoch
        };
        if let Some((_, (claims, _))) = self.cache.remove_if(digest, unusable) {
            let cause = if claims.expires_at() <= now() {
                Cause::Expired
            } else {
                Cause::Explicit
            };
            self.meter.removed(entry_bytes(&claims), cause);
        }
    }

    /// Settles the cache's pending work, for measurements: quick_cache evicts as it inserts,
    /// so there is none; kept so the tests read the same whichever cache is underneath.
    #[cfg(test)]
    pub(crate) fn cache_settle(&self) {}

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
            self.cached_hits
                .get_or_init(|| metrics::counter!("tollgate_validations_total", "provider" => self.provider.name().to_owned(), "result" => "cached"))
                .increment(1);
            span.record("cache", "hit");
            return Ok(claims);
        }
        span.record("cache", "miss");
        let result = self.validate_uncached(token).await;
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
        let claims = result?;
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
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::Json(_) => {
                invalid("the token header names an unsupported algorithm or is not valid JSON")
            }
            _ => invalid("the token is not a well-formed JWT"),
        })?;
        check_header(&header)?;
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
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_audience(&self.audiences);
        // The payload's text, kept as it is: the claims are parsed out of it in one pass.
        let data =
            jsonwebtoken::decode::<Box<RawValue>>(token, &key.key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => invalid("the token has expired"),
                    K::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
                    K::InvalidAudience => invalid("the token is not meant for this audience"),
                    K::MissingRequiredClaim(c) => {
                        ValidationError::InvalidToken(format!("the token has no {c} claim"))
                    }
                    K::InvalidSignature => invalid("the token signature is invalid"),
                    K::InvalidAlgorithm => invalid("the token algorithm does not match the key"),
                    K::Base64(_) | K::Json(_) | K::Utf8(_) => {
                        invalid("the token is not a well-formed JWT")
                    }
                    _ => invalid("the token could not be verified"),
                }
            })?;
        let claims = Parsed::of(data.claims.into())
            .map_err(|_| invalid("the token is not a well-formed JWT"))?;
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
        let mut candidates: Vec<String> = vec![metadata.issuer.clone()];
        candidates.extend(config.additional_issuers.iter().cloned());
        candidates.extend(
            candidates
                .clone()
                .iter()
                .filter_map(|i| entra_v1_counterpart(i)),
        );
        let mut templated_match = false;
        let matched = candidates.iter().any(|c| {
            if c.contains("{tenantid}") {
                let ok = tid.is_some_and(|t| is_guid(t) && c.replace("{tenantid}", t) == iss);
                templated_match |= ok;
                ok
            } else {
                c == iss
            }
        });
        if !matched {
            return Err(invalid("the token was issued by an untrusted issuer"));
        }
        if let Some(key_iss) = key_issuer {
            let ok = if key_iss.contains("{tenantid}") {
                tid.is_some_and(|t| {
                    key_iss.replace("{tenantid}", t) == iss
                        || entra_v1_counterpart(key_iss)
                            .is_some_and(|v1| v1.replace("{tenantid}", t) == iss)
                })
            } else {
                key_iss == iss || entra_v1_counterpart(key_iss).is_some_and(|v1| v1 == iss)
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

/// quick_cache's sizing for a validation cache of `budget` and at most `max_entries`: the
/// shards and the ghost keys it keeps follow the entries it expects, which the bytes bound
/// well before the entry count in practice (an Entra token's entry is over a kilobyte).
fn cache_options(budget: Budget, max_entries: u64) -> quick_cache::Options {
    let expected = (budget.max_bytes / 1024).clamp(1, max_entries.max(1));
    let mut options = quick_cache::OptionsBuilder::new();
    options
        .estimated_items_capacity(usize::try_from(expected).unwrap_or(usize::MAX))
        .weight_capacity(budget.max_bytes);
    // Both are set just above, the only errors `build` has.
    options
        .build()
        .unwrap_or_else(|_| unreachable!("capacities are set"))
}

/// Weighs a validation-cache entry: its bytes ([`entry_bytes`]), at least the budget's floor.
#[derive(Clone)]
struct Weigh(Budget);

impl quick_cache::Weighter<[u8; 32], (Claims, u64)> for Weigh {
    fn weight(&self, _: &[u8; 32], (claims, _): &(Claims, u64)) -> u64 {
        u64::from(self.0.weight(entry_bytes(claims)))
    }
}

/// The insert under way, so that [`Evicted`] tells a replaced entry (same key, other claims)
/// from one pushed out, or refused, for size.
struct Inserting {
    key: [u8; 32],
    claims: Claims,
}

/// Takes what quick_cache evicts out of the meter and counts it by cause.
#[derive(Clone)]
struct Evicted(Arc<Meter>);

impl quick_cache::Lifecycle<[u8; 32], (Claims, u64)> for Evicted {
    type RequestState = Option<Inserting>;

    fn on_evict(
        &self,
        inserting: &mut Self::RequestState,
        key: [u8; 32],
        (claims, _): (Claims, u64),
    ) {
        let replaced = inserting
            .as_ref()
            .is_some_and(|i| i.key == key && !i.claims.same_as(&claims));
        let cause = if replaced {
            Cause::Replaced
        } else if claims.expires_at() <= now() {
            Cause::Expired
        } else {
            Cause::Size
        };
        self.0.removed(entry_bytes(&claims), cause);
    }
}

/// `https://login.microsoftonline.com/X/v2.0` -> `https://sts.windows.net/X/`.
fn entra_v1_counterpart(issuer: &str) -> Option<String> {
    let tenant = issuer
        .strip_prefix("https://login.microsoftonline.com/")?
        .strip_suffix("/v2.0")?;
    Some(format!("https://sts.windows.net/{tenant}/"))
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
    use super::*;

    #[test]
    fn entra_issuers() {
        assert_eq!(
            entra_v1_counterpart("https://login.microsoftonline.com/{tenantid}/v2.0").as_deref(),
            Some("https://sts.windows.net/{tenantid}/")
        );
        assert!(is_guid("11111111-2222-3333-4444-555555555555"));
        assert!(!is_guid("11111111-2222-3333-4444-55555555555/"));
    }
}
