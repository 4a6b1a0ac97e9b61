//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, off by default): thin
//! wrappers that reach the crate-private parsers, so that libFuzzer drives the code the server
//! runs. Not an API: nothing here is stable, and no behaviour lives here.

use std::borrow::Cow;

use axum::extract::FromRequest;
use http::{HeaderMap, Uri};
use serde_json::Value;

use crate::config::{Config, ConfigError, MapEnv, ProviderConfig};
use crate::exchange::{ExchangeError, ExchangedToken};
use crate::provider::{Metadata, Provider, ProviderError};
use crate::validate::{ValidationError, Validator};

/// The bearer token of a request to a route that accepts `?access_token=` (RFC 6750 §2.1, §2.3).
pub fn sent_token(headers: &HeaderMap, uri: &Uri) -> Result<Option<String>, ValidationError> {
    crate::validate::sent_token(headers, uri, true).map(|t| t.map(|t| t.into_string()))
}

/// A validator whose provider holds the keys of the JWK Set `jwks`, as if just fetched; the
/// provider's `jwks_uri` should point at a closed local port so an unknown `kid` costs one
/// refused connection.
pub fn validator_with_keys(config: ProviderConfig, jwks: &Value) -> Result<Validator, String> {
    let provider = Provider::new(config).map_err(|e| e.to_string())?;
    let keys = crate::provider::jwks::key_set(jwks, &provider.config().algorithms)?;
    provider.replace_keys(keys);
    Ok(Validator::new(provider, 16))
}

/// A JWK Set document -> its usable verification keys (`provider/jwks.rs`).
pub fn jwks(doc: &Value, config: &ProviderConfig) -> Result<Vec<String>, String> {
    crate::provider::jwks::parse(doc, &config.algorithms).map(|keys| keys.into_keys().collect())
}

/// An OpenID discovery document -> the provider metadata (`provider/discovery.rs`).
pub fn discovery(document: Value, config: &ProviderConfig) -> Result<Metadata, ProviderError> {
    crate::provider::discovery::from_document(document, config)
}

/// A token endpoint's answer -> the exchanged token, as an On-Behalf-Of or client credentials
/// grant reads it (`exchange/grants.rs`, `exchange/cache.rs`).
pub fn token_response(
    status: u16,
    body: &[u8],
    subject_exp: Option<u64>,
) -> Result<ExchangedToken, ExchangeError> {
    let response = crate::exchange::grants::parse_token_response(status, body)?;
    ExchangedToken::from_response(response, subject_exp)
}

/// An API request body with `content_type`, read by the token API's extractor into each of its
/// request types: per type `Ok(())` or the refusal's status and JSON body (`api/body.rs`).
pub async fn api_body(content_type: Option<&[u8]>, body: &[u8]) -> Vec<Result<(), (u16, Vec<u8>)>> {
    use crate::api::body::ApiBody;
    use crate::api::delegated::DelegatedRequest;
    use crate::api::{ExchangeRequest, IntrospectRequest, TokenRequest};
    async fn one<T: serde::de::DeserializeOwned>(
        content_type: Option<&[u8]>,
        body: &[u8],
    ) -> Result<(), (u16, Vec<u8>)> {
        let mut req = axum::extract::Request::new(axum::body::Body::from(body.to_vec()));
        if let Some(v) = content_type.and_then(|c| http::HeaderValue::from_bytes(c).ok()) {
            req.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        match ApiBody::<T>::from_request(req, &()).await {
            Ok(_) => Ok(()),
            Err(resp) => {
                let status = resp.status().as_u16();
                let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
                    .await
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                Err((status, bytes))
            }
        }
    }
    vec![
        one::<TokenRequest>(content_type, body).await,
        one::<ExchangeRequest>(content_type, body).await,
        one::<IntrospectRequest>(content_type, body).await,
        one::<DelegatedRequest>(content_type, body).await,
    ]
}

/// A form body as name/value pairs, by the API's in-place form parser (`api/body.rs`).
pub fn form_pairs(body: &[u8]) -> Result<Vec<(String, String)>, String> {
    crate::api::body::from_form(body)
}

/// The normal form of a request path (`path.rs`).
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, String> {
    crate::path::normalize(path).map_err(|e| e.to_string())
}

/// Whether a route's `prefix` matches a (normalised) path (`path.rs`).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    crate::path::prefix_matches(prefix, path)
}

/// The login proxy's `/oauth2/authorize` parameters when its `redirect_uri` is registered.
pub fn authorize_params(
    query: Option<&str>,
    registered: &[String],
) -> Result<Vec<(String, String)>, &'static str> {
    crate::login::authorize_params(query, registered)
}

/// The login proxy's `/oauth2/logout` parameters when its `post_logout_redirect_uri` is
/// registered or absent.
pub fn logout_params(
    query: Option<&str>,
    registered: &[String],
) -> Result<Vec<(String, String)>, &'static str> {
    crate::login::logout_params(query, registered)
}

/// Where the login proxy sends an authorize error back to (`Location`, when it redirects).
pub fn redirect_error_location(redirect_uri: &str, state: Option<&str>) -> Option<String> {
    let resp = crate::login::redirect_error(redirect_uri, state, "invalid_request", "refused");
    let location = resp.headers().get(http::header::LOCATION)?;
    location.to_str().ok().map(str::to_owned)
}

/// A configuration file as `tollgate check` reads it (no environment), then the route table the
/// server would build from it; the redacted TOML `tollgate check` prints when both succeed.
pub fn config(text: &str) -> Result<String, ConfigError> {
    let cfg = Config::from_toml_str(text, &MapEnv::default())?;
    // Routes that authenticate need a running provider; building must still refuse, not panic.
    let _ = crate::routes::RouteTable::new(&cfg, |_| None);
    Ok(cfg.to_redacted_toml())
}

/// Where a session's sign-in or sign-out may send the browser (`rd`), for a session on
/// `origin` with `allowed_hosts` (`session/redirect.rs`); `None` when `rd` is refused.
pub fn session_redirect(rd: &str, origin: &url::Url, allowed_hosts: &[String]) -> Option<String> {
    crate::session::redirect::safe_redirect(rd, origin, allowed_hosts)
}
