//! The token endpoint requests (RFC 6749 §4.4, §6; RFC 7523 §2.1 with Entra's
//! `requested_token_use=on_behalf_of`; RFC 8693 §2.1 token exchange; RFC 7523 §2.1 with an
//! assertion signed by the client, as Maskinporten takes it) and their responses (§5.1, §5.2,
//! RFC 8693 §2.2; Entra adds `suberror`, `claims`, `error_codes`:
//! <https://learn.microsoft.com/entra/identity-platform/v2-oauth2-on-behalf-of-flow>).

use serde::Deserialize;
use serde_json::Value;

use super::ExchangeError;
use crate::provider::Provider;
use crate::provider::client_auth::ClientAuth;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: the subject token is a JWT (an access token the app received).
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Maskinporten's limit on a grant assertion's lifetime (`exp - iat`), in seconds.
const GRANT_ASSERTION_LIFETIME: u64 = 120;

/// A successful token response (the members tollgate uses).
#[derive(Clone, Deserialize)]
pub(crate) struct TokenResponse {
    pub(crate) access_token: String,
    #[serde(deserialize_with = "number_or_string")]
    pub(crate) expires_in: u64,
    #[serde(default)]
    pub(crate) refresh_token: Option<String>,
    #[serde(default)]
    pub(crate) scope: Option<String>,
    /// Only in answers to an authorization code (OpenID Connect Core §3.1.3.3); read by the
    /// server's browser sessions.
    #[serde(default)]
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) id_token: Option<String>,
}

/// Tokens from a refresh-token redemption.
///
/// ```
/// use tollgate::exchange::RefreshedTokens;
/// let tokens = RefreshedTokens {
///     access_token: "eyJ0eXAi...".into(),
///     expires_in: 3599,
///     refresh_token: Some("1.AXkA...".into()),
///     scope: Some("api://downstream/.default".into()),
/// };
/// let debug = format!("{tokens:?}"); // tokens are left out
/// assert!(debug.contains("3599") && !debug.contains("eyJ0eXAi") && !debug.contains("1.AXkA"));
/// ```
#[derive(Clone)]
pub struct RefreshedTokens {
    /// The new access token.
    pub access_token: String,
    /// Its lifetime in seconds.
    pub expires_in: u64,
    /// The rotated refresh token, when the IdP sent one.
    pub refresh_token: Option<String>,
    /// Scopes granted (space separated), when sent.
    pub scope: Option<String>,
}

impl std::fmt::Debug for RefreshedTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshedTokens")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// An OAuth error answered by the IdP (RFC 6749 §5.2 plus Entra's members).
///
/// ```
/// use http::StatusCode;
/// use tollgate::exchange::{ExchangeError, IdpError};
/// let idp_error = IdpError {
///     status: 400,
///     error: "invalid_grant".into(),
///     description: Some("AADSTS50173: the provided grant has expired".into()),
///     suberror: None,
///     claims: None,
///     error_codes: vec![50173],
/// };
/// let err = ExchangeError::Idp(Box::new(idp_error));
/// assert_eq!((err.status(), err.code()), (StatusCode::BAD_REQUEST, "invalid_grant"));
/// ```
#[derive(Debug, Clone)]
pub struct IdpError {
    /// HTTP status the IdP answered with.
    pub status: u16,
    /// `error`.
    pub error: String,
    /// `error_description`.
    pub description: Option<String>,
    /// Entra `suberror` (e.g. `basic_action`, `consent_required`).
    pub suberror: Option<String>,
    /// Entra `claims` challenge: a JSON document as a string.
    pub claims: Option<String>,
    /// Entra `error_codes` (AADSTS numbers).
    pub error_codes: Vec<u64>,
}

pub(super) async fn on_behalf_of(
    provider: &Provider,
    auth: &ClientAuth,
    endpoint: &str,
    user_token: &str,
    target: &str,
) -> Result<TokenResponse, ExchangeError> {
    let form = vec![
        ("grant_type", JWT_BEARER.to_owned()),
        ("requested_token_use", "on_behalf_of".to_owned()),
        ("assertion", user_token.to_owned()),
        ("scope", target.to_owned()),
    ];
    post(provider, Some(auth), endpoint, form).await
}

/// RFC 8693 §2.1: the user's token for one for `audience`, tollgate authenticated by its
/// client credential (private_key_jwt for TokenX, whose assertion `aud` is the token endpoint).
pub(super) async fn token_exchange(
    provider: &Provider,
    auth: &ClientAuth,
    endpoint: &str,
    subject_token: &str,
    audience: &str,
) -> Result<TokenResponse, ExchangeError> {
    let form = vec![
        ("grant_type", TOKEN_EXCHANGE.to_owned()),
        ("subject_token_type", JWT_TOKEN_TYPE.to_owned()),
        ("subject_token", subject_token.to_owned()),
        ("audience", audience.to_owned()),
    ];
    post(provider, Some(auth), endpoint, form).await
}

/// RFC 7523 §2.1 as Maskinporten takes it: the grant is an assertion signed with the client
/// key, `iss` the client id, `aud` the provider's issuer, `scope` the target; no client
/// authentication besides (the signature is it).
pub(super) async fn jwt_bearer(
    provider: &Provider,
    auth: &ClientAuth,
    endpoint: &str,
    issuer: &str,
    target: &str,
    extras: &super::AppTokenExtras,
) -> Result<TokenResponse, ExchangeError> {
    let now = crate::util::now();
    let mut claims = serde_json::json!({
        "iss": auth.client_id(), "aud": issuer, "scope": target,
        "iat": now, "exp": now + GRANT_ASSERTION_LIFETIME,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let Some(resource) = &extras.resource {
        claims["resource"] = Value::String(resource.clone());
    }
    if let Some(details) = &extras.authorization_details {
        claims["authorization_details"] = details.clone();
    }
    let assertion = auth.sign_grant_assertion(&claims)?;
    let form = vec![
        ("grant_type", JWT_BEARER.to_owned()),
        ("assertion", assertion),
    ];
    post(provider, None, endpoint, form).await
}

pub(super) async fn client_credentials(
    provider: &Provider,
    auth: &ClientAuth,
    endpoint: &str,
    target: &str,
) -> Result<TokenResponse, ExchangeError> {
    let form = vec![
        ("grant_type", "client_credentials".to_owned()),
        ("scope", target.to_owned()),
    ];
    post(provider, Some(auth), endpoint, form).await
}

pub(super) async fn refresh(
    provider: &Provider,
    auth: &ClientAuth,
    endpoint: &str,
    refresh_token: &str,
    target: &str,
) -> Result<RefreshedTokens, ExchangeError> {
    let form = vec![
        ("grant_type", "refresh_token".to_owned()),
        ("refresh_token", refresh_token.to_owned()),
        ("scope", format!("{target} offline_access")),
    ];
    let r = post(provider, Some(auth), endpoint, form).await?;
    Ok(RefreshedTokens {
        access_token: r.access_token,
        expires_in: r.expires_in,
        refresh_token: r.refresh_token,
        scope: r.scope,
    })
}

/// Redeems a browser sign-in's authorization code (RFC 6749 §4.1.3) with its PKCE verifier
/// (RFC 7636 §4.5).
#[cfg(feature = "server")]
pub(super) async fn authorization_code(
    provider: &Provider,
    auth: &ClientAuth,
    endpoint: &str,
    code: &str,
    redirect_uri: &str,
    code_verifier: &str,
) -> Result<TokenResponse, ExchangeError> {
    let form = vec![
        ("grant_type", "authorization_code".to_owned()),
        ("code", code.to_owned()),
        ("redirect_uri", redirect_uri.to_owned()),
        ("code_verifier", code_verifier.to_owned()),
    ];
    post(provider, Some(auth), endpoint, form).await
}

/// Sends `form` to the token endpoint, with the provider's client capabilities and, when
/// `auth` is given, tollgate's client authentication (a jwt_bearer grant carries its own).
async fn post(
    provider: &Provider,
    auth: Option<&ClientAuth>,
    endpoint: &str,
    mut form: Vec<(&'static str, String)>,
) -> Result<TokenResponse, ExchangeError> {
    let capabilities = &provider.config().client_capabilities;
    if !capabilities.is_empty() {
        form.push(("claims", client_capabilities_claims(capabilities)));
    }
    let basic = match auth {
        Some(auth) => auth.apply(endpoint, &mut form).await?,
        None => None,
    };
    let url = url::Url::parse(endpoint).map_err(|_| ExchangeError::NoTokenEndpoint)?;
    let mut req = provider
        .http()
        .post(url.as_str())
        .header(reqwest::header::ACCEPT, "application/json")
        .form(&form);
    if let Some(b) = basic {
        req = req.header(reqwest::header::AUTHORIZATION, b);
    }
    let resp = crate::provider::send(req, "POST", &url, "token endpoint")
        .await
        .map_err(|e| upstream(&e))?;
    let status = resp.status().as_u16();
    let body = crate::provider::read_capped(resp, "token endpoint")
        .await
        // The body can stall after the headers: that is the IdP timing out too (504).
        .map_err(from_provider)?;
    parse_token_response(status, &body)
}

/// The token endpoint's answer: the token of a 2xx (RFC 6749 §5.1), else the OAuth error it
/// carries (§5.2, with Entra's members); a 5xx or a body without `error` is the IdP failing.
pub(crate) fn parse_token_response(
    status: u16,
    body: &[u8],
) -> Result<TokenResponse, ExchangeError> {
    if (200..300).contains(&status) {
        return serde_json::from_slice::<TokenResponse>(body).map_err(|_| {
            ExchangeError::Upstream {
                message: "the token endpoint answered 2xx without a usable access_token/expires_in"
                    .into(),
                timeout: false,
            }
        });
    }
    let Ok(doc) = serde_json::from_slice::<Value>(body) else {
        return Err(ExchangeError::Upstream {
            message: format!("the token endpoint answered HTTP {status} without an OAuth error"),
            timeout: false,
        });
    };
    let s = |k: &str| doc.get(k).and_then(Value::as_str).map(str::to_owned);
    let Some(error) = s("error") else {
        return Err(ExchangeError::Upstream {
            message: format!("the token endpoint answered HTTP {status} without an OAuth error"),
            timeout: false,
        });
    };
    if status >= 500 {
        return Err(ExchangeError::Upstream {
            message: format!("the token endpoint answered HTTP {status} ({error})"),
            timeout: false,
        });
    }
    let error_codes = doc
        .get("error_codes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    Err(ExchangeError::Idp(Box::new(IdpError {
        status,
        error,
        description: s("error_description"),
        suberror: s("suberror"),
        claims: s("claims"),
        error_codes,
    })))
}

fn upstream(e: &reqwest::Error) -> ExchangeError {
    from_provider(crate::provider::transport("token endpoint", e))
}

/// A transport failure talking to the token endpoint, keeping whether it was a timeout.
fn from_provider(e: crate::provider::ProviderError) -> ExchangeError {
    match e {
        crate::provider::ProviderError::Unreachable {
            message, timeout, ..
        } => ExchangeError::Upstream { message, timeout },
        other => ExchangeError::Upstream {
            message: other.to_string(),
            timeout: false,
        },
    }
}

/// The `claims` request declaring client capabilities (OpenID Connect Core §5.5 with Entra's
/// `xms_cc`): `{"access_token":{"xms_cc":{"values":["cp1"]}}}`.
fn client_capabilities_claims(capabilities: &[String]) -> String {
    serde_json::json!({"access_token": {"xms_cc": {"values": capabilities}}}).to_string()
}

/// Entra's v1 endpoint sends `expires_in` as a string of digits (`"3599"`), not the number
/// RFC 6749 §5.1 describes.
fn number_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| serde::de::Error::custom("expires_in is not a positive integer")),
        Value::String(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom("expires_in is not a number")),
        _ => Err(serde::de::Error::custom("expires_in is missing")),
    }
}
