//! Every refusal tollgate answers itself: the JSON error shapes of the proxy and of the token
//! API, `405`, and the mappings of a failed exchange or validation to HTTP.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::response::{IntoResponse, Json};
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;

use crate::exchange::ExchangeError;
use crate::validate::ValidationError;

// Cloning a static value is a pointer copy; it is never parsed or allocated again.
pub(crate) static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
pub(crate) static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");

/// JSON error response `{"error": code, "error_description": description}` with `status`, not
/// to be cached: the proxy's and the login proxy's refusals.
///
/// Callers add headers such as `WWW-Authenticate` through `headers_mut()`. The description is
/// sent to the client as is: it must not contain tokens or header values.
pub(crate) fn json_error(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    #[derive(serde::Serialize)]
    struct ErrorBody<'a> {
        error: &'a str,
        error_description: &'a str,
    }
    // Serialising two strings cannot fail; an empty body would still carry the status.
    let body = serde_json::to_vec(&ErrorBody {
        error: code,
        error_description: description,
    })
    .unwrap_or_default();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, APPLICATION_JSON.clone());
    headers.insert(header::CACHE_CONTROL, NO_STORE.clone());
    response
}

/// `302 Found` to `location` (RFC 9110 §15.4.3), never cached: where the login proxy and the
/// browser sessions send a browser next.
pub(crate) fn found(location: &str) -> Response<Body> {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, NO_STORE.clone());
    resp
}

/// A token API error response `{error, error_description}` (RFC 6749 §5.2).
///
/// Same body as [`json_error`], but without `Cache-Control`: the API has always answered its
/// errors so, and its responses stay byte-identical for the apps that call it.
pub(crate) fn api_error(status: StatusCode, code: &str, description: &str) -> Response<Body> {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

/// The headers of an answer holding a token or a user's claims: JSON, never cached.
pub(crate) fn uncacheable_json() -> [(HeaderName, HeaderValue); 2] {
    [
        (header::CONTENT_TYPE, APPLICATION_JSON.clone()),
        (header::CACHE_CONTROL, NO_STORE.clone()),
    ]
}

/// `405` for a known path asked with a method it does not serve, in the same JSON shape as
/// every other refusal; axum adds the `Allow` header (RFC 9110 §15.5.6).
pub(crate) async fn method_not_allowed(method: http::Method) -> Response<Body> {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request",
        &format!("{method} is not allowed on this path"),
    )
}

/// The RFC 6750 §3 answer for a refused request: status, `WWW-Authenticate`, JSON body.
pub(crate) fn auth_error(e: &ValidationError) -> Response<Body> {
    e.to_response()
}

/// A failed exchange on the token API: the exchange's own status and RFC 6749 §5.2 body (the
/// IdP's error passed on), as Texas answers it. The app asked for the token, so it gets the
/// IdP's reason; compare [`obo_error`], which answers a public client.
pub(crate) fn exchange_error(e: &ExchangeError) -> Response<Body> {
    (e.status(), Json(e.to_json())).into_response()
}

/// An OBO failure on the proxy path. A Conditional Access / MFA challenge goes back to the
/// client as `401` with `error="insufficient_claims"`, the base64 `claims` and, when known, the
/// IdP's `authorization_uri`, so it can step up (Microsoft identity platform, "Claims challenges,
/// claims requests and client capabilities"); a token that cannot be exchanged (app-only) is the
/// client's `401`; IdP failures are `502`/`504`.
pub(crate) fn obo_error(e: &ExchangeError, authorization_uri: Option<&str>) -> Response<Body> {
    match e {
        ExchangeError::Idp(idp) if idp.claims.is_some() => crate::validate::claims_challenge(
            idp.claims.as_deref().unwrap_or_default(),
            authorization_uri,
            "the identity provider requires additional claims (step-up authentication)",
        ),
        // The IdP refused tollgate itself (its credential, its registration, the route's
        // target): the client can do nothing about it, so it is a gateway failure, logged.
        ExchangeError::Idp(idp)
            if matches!(
                idp.error.as_str(),
                "invalid_client"
                    | "unauthorized_client"
                    | "invalid_scope"
                    | "invalid_resource"
                    | "invalid_request"
                    | "unsupported_grant_type"
            ) =>
        {
            static REFUSED: Throttle = Throttle::new();
            if let Some(left_out) = REFUSED.admit() {
                tracing::error!(
                    error = %idp.error,
                    error_codes = ?idp.error_codes,
                    left_out,
                    "On-Behalf-Of: the identity provider refused tollgate's request (configuration)"
                );
            }
            json_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                &format!(
                    "the identity provider refused tollgate's On-Behalf-Of request ({})",
                    idp.error
                ),
            )
        }
        // The IdP no longer takes the user's token itself as the assertion: its signing key was
        // retired since tollgate validated it (AADSTS50013), or it expired in between
        // (AADSTS500133). A new token is what the client needs, as for a token tollgate refuses
        // itself (RFC 6750 §3.1 `invalid_token`), not a refusal of access.
        ExchangeError::Idp(idp)
            if idp.error == "invalid_grant"
                && idp.error_codes.iter().any(|c| matches!(c, 50013 | 500133)) =>
        {
            auth_error(&ValidationError::InvalidToken(
                "the identity provider no longer accepts this token for the exchange; get a new one"
                    .into(),
            ))
        }
        // The user's grant does not allow the exchange (consent, a revoked session, ...).
        ExchangeError::Idp(idp) => {
            let reason = match &idp.suberror {
                Some(sub) => format!("{}, {sub}", idp.error),
                None => idp.error.clone(),
            };
            json_error(
                StatusCode::FORBIDDEN,
                "access_denied",
                &format!("the identity provider refused the On-Behalf-Of exchange ({reason})"),
            )
        }
        ExchangeError::InvalidSubject(v) => auth_error(v),
        ExchangeError::Upstream { timeout: true, .. } => json_error(
            StatusCode::GATEWAY_TIMEOUT,
            "gateway_timeout",
            "the identity provider timed out",
        ),
        ExchangeError::ClientAuth(c) if !c.is_unavailable() => {
            static UNUSABLE: Throttle = Throttle::new();
            if let Some(left_out) = UNUSABLE.admit() {
                tracing::error!(error = %c, left_out, "On-Behalf-Of: tollgate's client credential is unusable");
            }
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "tollgate's client credential is misconfigured",
            )
        }
        other => {
            // The detail (addresses, OS errors) is for the operator, not the public client.
            static FAILED: Throttle = Throttle::new();
            if let Some(left_out) = FAILED.admit() {
                tracing::warn!(error = %other, left_out, "On-Behalf-Of failed");
            }
            json_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the identity provider could not be reached or answered badly",
            )
        }
    }
}

/// At most one log line per [`Throttle::INTERVAL`] for a failure that repeats on every request
/// while it lasts (the IdP down, a revoked credential): one line per request would bury the rest
/// of the log. The next line says how many were left out; the metrics count every one.
struct Throttle {
    /// When the last line was let through, unix seconds.
    last: AtomicU64,
    left_out: AtomicU64,
}

impl Throttle {
    const INTERVAL: u64 = 10;

    const fn new() -> Self {
        Self {
            last: AtomicU64::new(0),
            left_out: AtomicU64::new(0),
        }
    }

    /// `Some(lines left out since the last one)` when this occurrence is to be logged.
    fn admit(&self) -> Option<u64> {
        self.admit_at(crate::util::now())
    }

    fn admit_at(&self, now: u64) -> Option<u64> {
        let last = self.last.load(Ordering::Relaxed);
        // One caller wins the turn; the others count as left out.
        if now >= last.saturating_add(Self::INTERVAL)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.left_out.swap(0, Ordering::Relaxed))
        } else {
            self.left_out.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    #[test]
    fn a_repeated_failure_is_logged_once_per_interval_with_the_count_left_out() {
        let throttle = Throttle::new();
        assert_eq!(throttle.admit_at(1_000), Some(0));
        assert_eq!(throttle.admit_at(1_001), None);
        assert_eq!(throttle.admit_at(1_009), None);
        assert_eq!(throttle.admit_at(1_010), Some(2));
        assert_eq!(throttle.admit_at(1_015), None);
        assert_eq!(throttle.admit_at(2_000), Some(1));
    }

    async fn parts(r: Response<Body>) -> (StatusCode, Vec<(String, String)>, Vec<u8>) {
        let status = r.status();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = r.into_body().collect().await.unwrap().to_bytes().to_vec();
        (status, headers, body)
    }

    #[tokio::test]
    async fn the_two_error_shapes_differ_only_in_cache_control() {
        let description = "the \"aud\" claim does not match: caf\u{e9} \u{1}";
        let (status, headers, body) = parts(json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            description,
        ))
        .await;
        let (api_status, api_headers, api_body) = parts(api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            description,
        ))
        .await;
        assert_eq!((status, &body), (api_status, &api_body));
        assert_eq!(
            body,
            serde_json::to_vec(
                &json!({"error": "invalid_request", "error_description": description})
            )
            .unwrap()
        );
        assert_eq!(
            headers,
            [
                ("content-type".to_owned(), "application/json".to_owned()),
                ("cache-control".to_owned(), "no-store".to_owned())
            ]
        );
        assert_eq!(
            api_headers,
            [("content-type".to_owned(), "application/json".to_owned())]
        );
    }

    #[tokio::test]
    async fn method_not_allowed_names_the_method() {
        let (status, _, body) = parts(method_not_allowed(http::Method::PATCH).await).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            json!({"error": "invalid_request", "error_description": "PATCH is not allowed on this path"})
        );
    }
}
