//! The local token API, wire-compatible with NAIS Texas (<https://github.com/nais/texas>): the app asks
//! `localhost` for tokens instead of speaking OAuth.
//!
//! | route | body | answer |
//! | --- | --- | --- |
//! | `POST /api/v1/token` | `identity_provider, target, resource?, authorization_details?, skip_cache?` | `{access_token, token_type, expires_in}`: client credentials, or the `jwt_bearer` grant (Maskinporten) |
//! | `POST /api/v1/token/exchange` | `identity_provider, target, user_token, skip_cache?` | same, On-Behalf-Of or RFC 8693 (TokenX) |
//! | `POST /api/v1/introspect` | `identity_provider, token` | `{active:true, ...claims}` / `{active:false, error}` |
//! | `POST /api/v1/token/delegated` | `identity_provider, target, user_oid` or `user_upn` | same as token |
//! | `DELETE /api/v1/users/{oid}` | | `204` |
//!
//! Bodies are JSON or `application/x-www-form-urlencoded` with the same field names; anything
//! else is `415`, a body over 64 KiB is `413`, a malformed body or missing field `400`, all with
//! the RFC 6749 §5.2 shape `{error, error_description}`.

// Handlers return ready axum responses as their error values; boxing them would only add an
// allocation on the error path.
#![allow(clippy::result_large_err)]

pub(crate) mod body;
pub(crate) mod delegated;
mod openapi;

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use http::{HeaderValue, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use body::ApiBody;

use crate::exchange::{ExchangedToken, Exchanger};
use crate::response::{api_error, exchange_error, uncacheable_json};
use crate::state::AppState;
use crate::validate::LastToken;

/// Builds the API router. When an API key is configured every route needs
/// `Authorization: Bearer <key>`.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route("/api/v1/token", post(token))
        .route("/api/v1/token/exchange", post(exchange))
        .route("/api/v1/introspect", post(introspect))
        .route("/api/v1/token/delegated", post(delegated::delegated))
        .route("/api/v1/users/{oid}", delete(delegated::forget_user))
        .route("/api/v1/openapi.json", get(openapi::document))
        .method_not_allowed_fallback(crate::response::method_not_allowed)
        .fallback(|| async {
            api_error(
                StatusCode::NOT_FOUND,
                "invalid_request",
                "unknown API route",
            )
        });
    // Without a key the middleware would only pass requests on: leave it out of the stack.
    let routes = if state.api_key.is_some() {
        routes.layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ))
    } else {
        routes
    };
    routes.with_state(state)
}

fn token_response(t: &ExchangedToken) -> Response {
    token_answer(t.access_token(), t.expires_in(), t.is_json_plain())
}

/// A token answer `{access_token, token_type, expires_in}`. RFC 6749 §5.1: a response holding a
/// token carries `Cache-Control: no-store`, so no cache between the app and tollgate keeps it.
/// `json_plain`: [`crate::exchange::is_json_plain`] of the token, known beforehand.
pub(crate) fn token_answer(access_token: &str, expires_in: u64, json_plain: bool) -> Response {
    (
        uncacheable_json(),
        token_json(access_token, expires_in, json_plain),
    )
        .into_response()
}

/// `{"access_token": ..., "token_type": "Bearer", "expires_in": ...}`. A JWT needs no JSON
/// escaping (`plain`), so it is copied in directly rather than run through the escaper byte by
/// byte; anything else is serialised properly.
fn token_json(access_token: &str, expires_in: u64, plain: bool) -> Vec<u8> {
    use std::io::Write as _;
    if !plain {
        let body =
            json!({"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in});
        return body.to_string().into_bytes();
    }
    let mut out = Vec::with_capacity(access_token.len() + 64);
    out.extend_from_slice(br#"{"access_token":""#);
    out.extend_from_slice(access_token.as_bytes());
    // Writing to a Vec cannot fail.
    let _ = write!(
        out,
        r#"","token_type":"Bearer","expires_in":{expires_in}}}"#
    );
    out
}

async fn require_api_key(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(expected) = state.api_key.as_deref() else {
        return next.run(req).await;
    };
    let presented = crate::validate::bearer_token(req.headers()).ok().flatten();
    // Constant-time comparison of digests: the key's length and prefix never leak through timing.
    let ok = presented.is_some_and(|p| {
        aws_lc_rs::constant_time::verify_slices_are_equal(
            &crate::util::sha256(p.as_bytes()),
            &crate::util::sha256(expected.as_bytes()),
        )
        .is_ok()
    });
    if ok {
        return next.run(req).await;
    }
    let mut resp = api_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "a valid API key is required (Authorization: Bearer <key>)",
    );
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tollgate-api\""),
    );
    resp
}

#[derive(Deserialize)]
pub(crate) struct TokenRequest {
    identity_provider: String,
    target: String,
    #[serde(default, deserialize_with = "body::flexible_bool")]
    skip_cache: bool,
    /// RFC 8707 resource indicator: sent in a `jwt_bearer` grant (Maskinporten), accepted and
    /// unused by Entra, as in Texas.
    #[serde(default)]
    resource: Option<String>,
    /// RFC 9396 authorization details (a JSON array; in a form, its JSON text): sent in a
    /// `jwt_bearer` grant.
    #[serde(default, deserialize_with = "body::authorization_details")]
    authorization_details: Option<Value>,
}

#[derive(Deserialize)]
pub(crate) struct ExchangeRequest {
    identity_provider: String,
    target: String,
    user_token: String,
    #[serde(default, deserialize_with = "body::flexible_bool")]
    skip_cache: bool,
}

#[derive(Deserialize)]
pub(crate) struct IntrospectRequest {
    identity_provider: String,
    token: String,
}

/// The exchanger for a provider name, or the API error saying why there is none.
pub(crate) fn exchanger<'a>(state: &'a AppState, name: &str) -> Result<&'a Exchanger, Response> {
    match state.exchanger(name) {
        Some(Ok(x)) => Ok(x),
        Some(Err(why)) => Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("identity provider '{name}' cannot exchange tokens: {why}"),
        )),
        None => Err(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("identity provider '{name}' is not enabled"),
        )),
    }
}

async fn token(
    State(state): State<Arc<AppState>>,
    ApiBody(req): ApiBody<TokenRequest>,
) -> Response {
    let x = match exchanger(&state, &req.identity_provider) {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let extras = crate::exchange::AppTokenExtras {
        // An empty form field names no resource.
        resource: req.resource.filter(|r| !r.is_empty()),
        authorization_details: req.authorization_details,
    };
    match x.app_token(&req.target, &extras, req.skip_cache).await {
        Ok(t) => token_response(&t),
        Err(e) => exchange_error(&e),
    }
}

async fn exchange(
    State(state): State<Arc<AppState>>,
    last_token: Option<Extension<Arc<LastToken>>>,
    ApiBody(req): ApiBody<ExchangeRequest>,
) -> Response {
    let x = match exchanger(&state, &req.identity_provider) {
        Ok(x) => x,
        Err(resp) => return resp,
    };
    let last_token = last_token.as_ref().map(|Extension(last)| &**last);
    match x
        .on_behalf_of_on(last_token, &req.user_token, &req.target, req.skip_cache)
        .await
    {
        Ok(t) => token_response(&t),
        Err(e) => exchange_error(&e),
    }
}

/// `200` for any token (Texas): `{active:true, ...claims}` or `{active:false, error}`; `400` for
/// a provider that is not enabled. The active answer is serialised once per validated token and
/// kept with its cached claims.
async fn introspect(
    State(state): State<Arc<AppState>>,
    last_token: Option<Extension<Arc<LastToken>>>,
    ApiBody(req): ApiBody<IntrospectRequest>,
) -> Response {
    // An unknown provider is the caller's mistake, not an inactive token: `400` as on the other
    // endpoints (Texas answers the same way), so a typo is not read as "token revoked".
    let Some((_, validator)) = state.provider(&req.identity_provider) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "identity provider '{}' is not enabled",
                req.identity_provider
            ),
        );
    };
    let last_token = last_token.as_ref().map(|Extension(last)| &**last);
    match crate::validate::validate_on(last_token, validator, &req.token).await {
        Ok(claims) => {
            // Built from the payload's text per answer rather than kept: kept, it would be a
            // second copy of every cached token's claims.
            let body = claims.introspection_json();
            // The claims describe a user: no more cacheable than the token.
            (uncacheable_json(), body).into_response()
        }
        Err(e) => Json(json!({"active": false, "error": e.to_string()})).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_json_is_the_serialised_answer_for_any_token() {
        for token in [
            "eyJ0eXAi.eyJhdWQi.c2ln-_",
            "with \"quote\" and \\ and \u{1}",
            "caf\u{e9}",
        ] {
            let plain = crate::exchange::is_json_plain(token);
            assert_eq!(plain, token.starts_with("eyJ"), "{token:?}");
            let parsed: Value = serde_json::from_slice(&token_json(token, 3599, plain)).unwrap();
            assert_eq!(
                parsed,
                json!({"access_token": token, "token_type": "Bearer", "expires_in": 3599}),
                "{token:?}"
            );
        }
    }
}
