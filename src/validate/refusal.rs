//! Every refusal as an RFC 6750 §3 challenge: [`ValidationError`], its status, OAuth code and
//! `WWW-Authenticate` value, and the Entra claims challenges (insufficient_claims).

use http::StatusCode;
use serde_json::Value;

use super::Claims;

/// The realm named in every `WWW-Authenticate` challenge.
///
/// ```
/// use tollgate::validate::{REALM, ValidationError};
/// assert_eq!(ValidationError::Missing.www_authenticate(), format!("Bearer realm=\"{REALM}\""));
/// ```
pub const REALM: &str = "tollgate";

/// Why a request was not authenticated or not authorised. Messages never contain the token.
///
/// ```
/// use http::StatusCode;
/// use tollgate::validate::ValidationError;
/// let expired = ValidationError::InvalidToken("the token has expired".into());
/// assert_eq!((expired.status(), expired.code()), (StatusCode::UNAUTHORIZED, "invalid_token"));
/// assert_eq!(expired.to_string(), "the token has expired");
/// assert_eq!(ValidationError::KeysUnavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// No credentials: challenge without an error code (RFC 6750 §3.1).
    #[error("no bearer token")]
    Missing,
    /// `Authorization` present but not a single well-formed `Bearer` credential.
    #[error("{0}")]
    InvalidRequest(&'static str),
    /// The token is not acceptable.
    #[error("{0}")]
    InvalidToken(String),
    /// The token is valid but lacks a required scope or role.
    #[error("the token lacks a required scope or role")]
    InsufficientScope {
        /// The scopes (or roles), any of which would do.
        scope: String,
    },
    /// Keys are not loaded (the IdP has not been reachable since start).
    #[error("signing keys are not available yet")]
    KeysUnavailable,
}

impl ValidationError {
    /// The HTTP status for this error (RFC 6750 §3.1).
    ///
    /// ```
    /// use http::StatusCode;
    /// use tollgate::validate::ValidationError;
    /// assert_eq!(ValidationError::Missing.status(), StatusCode::UNAUTHORIZED);
    /// assert_eq!(ValidationError::InvalidRequest("two Authorization headers").status(), StatusCode::BAD_REQUEST);
    /// assert_eq!(ValidationError::InsufficientScope { scope: "a".into() }.status(), StatusCode::FORBIDDEN);
    /// ```
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Missing | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::InsufficientScope { .. } => StatusCode::FORBIDDEN,
            Self::KeysUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The OAuth error code for the JSON body.
    ///
    /// ```
    /// use tollgate::validate::ValidationError;
    /// assert_eq!(ValidationError::InsufficientScope { scope: "a".into() }.code(), "insufficient_scope");
    /// assert_eq!(ValidationError::KeysUnavailable.code(), "temporarily_unavailable");
    /// ```
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "unauthorized",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidToken(_) => "invalid_token",
            Self::InsufficientScope { .. } => "insufficient_scope",
            Self::KeysUnavailable => "temporarily_unavailable",
        }
    }

    /// The `WWW-Authenticate` value (RFC 6750 §3; auth-params as quoted-strings per RFC 9110 §11.4).
    ///
    /// ```
    /// use tollgate::validate::ValidationError;
    /// let err = ValidationError::InsufficientScope { scope: "Files.Read Files.Write".into() };
    /// assert_eq!(
    ///     err.www_authenticate(),
    ///     "Bearer realm=\"tollgate\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope or role\", scope=\"Files.Read Files.Write\""
    /// );
    /// ```
    pub fn www_authenticate(&self) -> String {
        match self {
            Self::Missing | Self::KeysUnavailable => format!("Bearer realm=\"{REALM}\""),
            // A token without any scope or role: nothing to name that would do.
            Self::InsufficientScope { scope } if scope.is_empty() => format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\"",
                quote_safe(&self.to_string())
            ),
            Self::InsufficientScope { scope } => format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\", error_description=\"{}\", scope=\"{}\"",
                quote_safe(&self.to_string()),
                quote_safe(scope)
            ),
            other => format!(
                "Bearer realm=\"{REALM}\", error=\"{}\", error_description=\"{}\"",
                other.code(),
                quote_safe(&other.to_string())
            ),
        }
    }
}

impl ValidationError {
    /// The whole answer: status, `WWW-Authenticate` and a JSON body `{error, error_description}`.
    /// Used by the proxy, the Tower layer and the axum extractors alike.
    ///
    /// ```
    /// use tollgate::validate::ValidationError;
    /// let response: http::Response<String> = ValidationError::Missing.to_response();
    /// assert_eq!(response.status(), 401);
    /// assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    /// assert_eq!(response.body(), r#"{"error":"unauthorized","error_description":"no bearer token"}"#);
    /// ```
    pub fn to_response<B: From<String>>(&self) -> http::Response<B> {
        refusal(
            self.status(),
            self.code(),
            &self.to_string(),
            &self.www_authenticate(),
        )
    }
}

/// `401` with a claims challenge (Microsoft's claims challenge,
/// <https://learn.microsoft.com/entra/identity-platform/claims-challenge>): `error="insufficient_claims"`, the
/// claims request `claims_json` in standard base64 and, when known, the `authorization_uri` to
/// send the user to, so the client (MSAL) can get a token that satisfies it.
pub(crate) fn claims_challenge<B: From<String>>(
    claims_json: &str,
    authorization_uri: Option<&str>,
    description: &str,
) -> http::Response<B> {
    use base64::Engine;
    let claims = base64::engine::general_purpose::STANDARD.encode(claims_json);
    let mut challenge = format!("Bearer realm=\"{REALM}\"");
    if let Some(uri) = authorization_uri {
        challenge.push_str(&format!(", authorization_uri=\"{}\"", quote_safe(uri)));
    }
    challenge.push_str(&format!(
        ", error=\"insufficient_claims\", claims=\"{claims}\""
    ));
    let mut resp = refusal(
        StatusCode::UNAUTHORIZED,
        "insufficient_claims",
        description,
        &challenge,
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

/// A refusal: `status`, the `WWW-Authenticate` challenge and the JSON body
/// `{error, error_description}`.
fn refusal<B: From<String>>(
    status: StatusCode,
    code: &str,
    description: &str,
    challenge: &str,
) -> http::Response<B> {
    let body = serde_json::json!({"error": code, "error_description": description}).to_string();
    let mut resp = http::Response::new(B::from(body));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = http::HeaderValue::from_str(challenge) {
        headers.insert(http::header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Whether the token's `acrs` holds the Entra authentication context `wanted` (`c1`).
pub(crate) fn has_auth_context(claims: &Claims, wanted: &str) -> bool {
    claims
        .get("acrs")
        .and_then(Value::as_array)
        .is_some_and(|acrs| acrs.iter().any(|a| a.as_str() == Some(wanted)))
}

/// The claims challenge asking for exactly the authentication context `wanted`:
/// `{"access_token":{"acrs":{"essential":true,"value":"c1"}}}`.
pub(crate) fn auth_context_challenge<B: From<String>>(
    wanted: &str,
    authorization_uri: Option<&str>,
) -> http::Response<B> {
    let request =
        serde_json::json!({"access_token": {"acrs": {"essential": true, "value": wanted}}});
    claims_challenge(
        &request.to_string(),
        authorization_uri,
        "this needs a token for the authentication context it names (step-up authentication)",
    )
}

/// RFC 6750 §3: error_description and scope values exclude `"` and `\` (and controls).
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_strings_follow_rfc6750() {
        assert_eq!(
            ValidationError::Missing.www_authenticate(),
            "Bearer realm=\"tollgate\""
        );
        let e = ValidationError::InvalidToken("the token has \"expired\"".into());
        assert_eq!(
            e.www_authenticate(),
            "Bearer realm=\"tollgate\", error=\"invalid_token\", error_description=\"the token has expired\""
        );
        let e = ValidationError::InsufficientScope {
            scope: "a b".into(),
        };
        assert!(e.www_authenticate().ends_with("scope=\"a b\""));
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
    }
}
