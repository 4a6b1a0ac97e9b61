//! `GET /oauth2/auth`: forward-auth for an ingress that proxies the app itself (nginx
//! `auth_request`, Traefik `ForwardAuth`, Envoy `ext_authz` in HTTP mode). The same checks as
//! the gate, without forwarding: `200` with the identity headers (and, where the matched route
//! has `obo`, `Authorization: Bearer <exchanged token>` for `auth_request_set`), or the
//! `401`/`403` the proxy would answer.
//!
//! The original request is read from `X-Forwarded-Uri` (Traefik) or `X-Original-URI` (the
//! usual nginx snippet), or from the path after `/oauth2/auth` (Envoy's `path_prefix`) and `X-Forwarded-Method`/`X-Original-Method`; its path picks the route,
//! and a path no route covers gets the session's rules (`auth = "session"` with the session's
//! provider). `?scope=` and `?role=` (repeatable) add checks: any one listed is enough, as for a
//! route's lists. With `?redirect=true` (Traefik, whose ForwardAuth passes any answer to the
//! browser) a browser without a session gets the `302` to sign in; nginx turns a `302` from
//! `auth_request` into a `500`, so there the `401` is answered and an `error_page 401` sends the
//! browser to `/oauth2/start`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::routing::get;
use http::{HeaderMap, Method, Request, Response, StatusCode};

use super::gate::{Refused, authenticate, exchange_for_route};
use crate::response::{auth_error, json_error};
use crate::state::AppState;
use crate::validate::ValidationError;

/// Adds `/oauth2/auth` when `[session]` is enabled.
pub(super) fn routes(router: Router<Arc<AppState>>, state: &AppState) -> Router<Arc<AppState>> {
    if state.sessions.is_none() {
        return router;
    }
    router
        .route("/oauth2/auth", get(forward_auth))
        .route("/oauth2/auth/{*original}", get(forward_auth_by_path))
}

/// What the ingress asked besides the route's rules.
#[derive(Default)]
struct Asked {
    scopes: Vec<String>,
    roles: Vec<String>,
    redirect: bool,
}

/// `/oauth2/auth` with the original request in headers; the query says what to check.
async fn forward_auth(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response<Body> {
    let original = original_uri(&headers);
    check(&state, asked(query.as_deref()), original, &headers).await
}

/// `/oauth2/auth/<original path>?<original query>`: Envoy's HTTP `ext_authz` appends the
/// original request target to its `path_prefix` (`/oauth2/auth`) instead of sending a header.
async fn forward_auth_by_path(
    State(state): State<Arc<AppState>>,
    req: Request<Body>,
) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .strip_prefix("/oauth2/auth")
        .unwrap_or("/");
    let Ok(original) = target.parse::<http::Uri>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request target is not valid",
        );
    };
    check(&state, Asked::default(), original, req.headers()).await
}

async fn check(
    state: &AppState,
    asked: Asked,
    original: http::Uri,
    headers: &HeaderMap,
) -> Response<Body> {
    let path = match crate::path::normalize(original.path()) {
        Ok(p) => p.into_owned(),
        Err(e) => return json_error(StatusCode::BAD_REQUEST, "invalid_request", &e.to_string()),
    };
    let Some(route) = state
        .routes
        .find(&path)
        .or_else(|| state.routes.forward_auth_default())
    else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route is configured for this path",
        );
    };
    let method = original_method(headers);
    let user = match authenticate(state, route, &method, &original, headers, None).await {
        Ok(user) => user,
        Err(Refused::Token(ValidationError::Missing))
            if asked.redirect
                && let Some(sessions) = &state.sessions
                && crate::session::is_navigation(&method, headers) =>
        {
            return crate::response::found(&sessions.sign_in_url(&browser_url(headers)));
        }
        Err(Refused::Token(e)) => return auth_error(&e),
        Err(Refused::Answer { response, .. }) => return response,
    };
    let mut resp = Response::new(Body::empty());
    if let Some(user) = &user {
        if let Err(e) = user.claims.check(&asked.scopes, &asked.roles) {
            return auth_error(&e);
        }
        crate::identity_headers::add(resp.headers_mut(), &user.claims, route.identity_headers);
    } else if !asked.scopes.is_empty() || !asked.roles.is_empty() {
        // An anonymous request cannot hold what the ingress asks for.
        return auth_error(&ValidationError::Missing);
    }
    if let Err(refused) = exchange_for_route(state, route, user, resp.headers_mut()).await {
        return refused;
    }
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        crate::response::NO_STORE.clone(),
    );
    resp
}

fn asked(query: Option<&str>) -> Asked {
    let mut asked = Asked::default();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "scope" => asked.scopes.extend(v.split_whitespace().map(str::to_owned)),
            "role" => asked.roles.push(v.into_owned()),
            "redirect" => asked.redirect = v == "true" || v == "1",
            _ => {}
        }
    }
    asked
}

/// The request the ingress is asking about: its path and query.
fn original_uri(headers: &HeaderMap) -> http::Uri {
    ["x-forwarded-uri", "x-original-uri"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<http::Uri>().ok())
        .filter(|u| u.path().starts_with('/'))
        .unwrap_or_else(|| http::Uri::from_static("/"))
}

fn original_method(headers: &HeaderMap) -> Method {
    ["x-forwarded-method", "x-original-method"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
        .unwrap_or(Method::GET)
}

/// Where the browser was going, for `rd`: absolute from `X-Forwarded-Proto`/`-Host`/`-Uri`
/// when the ingress sends them (the app may be on another host than tollgate), else the path.
/// `/oauth2/start` checks it like any `rd`.
fn browser_url(headers: &HeaderMap) -> String {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let uri = original_uri(headers);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    match (get("x-forwarded-proto"), get("x-forwarded-host")) {
        (Some(proto), Some(host)) if matches!(proto, "http" | "https") => {
            format!("{proto}://{host}{path}")
        }
        _ => path.to_owned(),
    }
}
