//! Signing in and out: `/oauth2/start` sends the browser to the IdP (authorization code, PKCE
//! S256, `state`, `nonce`; OpenID Connect Core §3.1.2), `/oauth2/callback` redeems the code,
//! validates the ID token and starts a session, `/oauth2/sign_out` ends it (OpenID Connect
//! RP-Initiated Logout 1.0), `/oauth2/userinfo` says who is signed in.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use crate::delegation::{self, LoginGrant};
use crate::response::{NO_STORE, found};
use crate::response::{auth_error, exchange_error, json_error};
use crate::session::cookie::{self, SignIn};
use crate::session::redirect::safe_redirect;
use crate::session::sessions::user_claims;
use crate::session::{Sessions, store_unavailable};
use crate::state::AppState;
use crate::store::{SessionKey, SessionRecord};
use crate::util::now;
use crate::validate::ValidationError;

/// Adds the session routes when `[session]` is enabled.
pub(crate) fn routes(router: Router<Arc<AppState>>, state: &AppState) -> Router<Arc<AppState>> {
    if state.sessions.is_none() {
        return router;
    }
    router
        .route("/oauth2/start", get(start))
        .route("/oauth2/callback", get(callback))
        .route("/oauth2/sign_out", get(sign_out).post(sign_out))
        .route("/oauth2/userinfo", get(userinfo))
        .route(
            "/oauth2/backchannel_logout",
            post(super::logout::backchannel),
        )
        .route(
            "/oauth2/frontchannel_logout",
            get(super::logout::frontchannel),
        )
}

#[derive(Deserialize)]
struct RdQuery {
    rd: Option<String>,
}

/// `GET /oauth2/start?rd=`: remembers the sign-in in a sealed cookie and sends the browser to
/// the IdP's authorization endpoint.
async fn start(State(state): State<Arc<AppState>>, Query(q): Query<RdQuery>) -> Response<Body> {
    let Some(sessions) = &state.sessions else {
        return not_enabled();
    };
    let Some(rd) = validated_rd(sessions, q.rd.as_deref()) else {
        return bad_rd();
    };
    let Some((provider, _)) = state.provider(&sessions.provider) else {
        return not_enabled();
    };
    let Some(authorize) = provider.authorization_endpoint() else {
        return unavailable("the identity provider's metadata is not loaded yet");
    };
    let sign_in = SignIn::new(rd);
    let set_cookie = match sign_in.to_cookie(&sessions.config, sessions.sealer()) {
        Ok(c) => c,
        Err(e) => return store_unavailable(&e),
    };
    let mut url = authorize;
    url.query_pairs_mut()
        .append_pair("client_id", &provider.config().client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &sessions.callback_url())
        .append_pair("scope", &sessions.config.scopes.join(" "))
        .append_pair("state", &sign_in.state)
        .append_pair("nonce", &sign_in.nonce)
        .append_pair("code_challenge", &sign_in.code_challenge())
        .append_pair("code_challenge_method", "S256")
        .append_pair("response_mode", "query");
    let mut resp = found(url.as_str());
    resp.headers_mut().append(header::SET_COOKIE, set_cookie);
    resp
}

#[derive(Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// `GET /oauth2/callback`: the IdP's answer. The `state` must be the one this browser's
/// sign-in cookie holds; the code is redeemed with the PKCE verifier; the ID token must
/// validate and carry the sign-in's `nonce`. A new session id is issued (and any old session of
/// this browser ended), then the browser goes where it was going.
async fn callback(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response<Body> {
    let Some(sessions) = &state.sessions else {
        return not_enabled();
    };
    let sign_in = SignIn::from_request(&headers, &sessions.config, sessions.sealer());
    let mut resp = match sign_in {
        None => json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "no sign-in is in progress in this browser (it expired, or began elsewhere): start again",
        ),
        Some(sign_in) => finish_sign_in(&state, sessions, &headers, q, sign_in).await,
    };
    resp.headers_mut()
        .append(header::SET_COOKIE, cookie::clear_sign_in(&sessions.config));
    resp
}

async fn finish_sign_in(
    state: &AppState,
    sessions: &Sessions,
    headers: &HeaderMap,
    q: CallbackQuery,
    sign_in: SignIn,
) -> Response<Body> {
    let state_matches = q.state.as_deref().is_some_and(|s| {
        aws_lc_rs::constant_time::verify_slices_are_equal(s.as_bytes(), sign_in.state.as_bytes())
            .is_ok()
    });
    if !state_matches {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the state does not match this browser's sign-in: start again",
        );
    }
    if let Some(error) = q.error {
        // The IdP's own refusal (the user cancelled, consent was denied): passed on as it came.
        let description = q.error_description.unwrap_or_default();
        return json_error(StatusCode::FORBIDDEN, &error, &description);
    }
    let Some(code) = q.code else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the callback has neither a code nor an error",
        );
    };
    let store = sessions.store();
    let (Some(exchanger), Some((provider, validator))) =
        (sessions.exchanger(), state.provider(&sessions.provider))
    else {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the session provider cannot redeem authorization codes (no client credential)",
        );
    };
    let tokens = match exchanger
        .redeem_code(&code, &sessions.callback_url(), &sign_in.verifier)
        .await
    {
        Ok(t) => t,
        Err(e) => return exchange_error(&e),
    };
    let Some(id_token) = tokens.id_token.as_deref() else {
        return bad_gateway("the identity provider answered the code without an ID token");
    };
    let claims = match validator
        .validate_id_token(id_token, &provider.config().client_id, false)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "session: the ID token of a sign-in did not validate");
            return bad_gateway("the identity provider's ID token did not validate");
        }
    };
    let nonce_matches = claims
        .get("nonce")
        .and_then(serde_json::Value::as_str)
        .is_some_and(|n| n == sign_in.nonce);
    if !nonce_matches {
        return bad_gateway("the ID token does not carry this sign-in's nonce");
    }
    let Some(refresh_token) = tokens.refresh_token.as_deref() else {
        return bad_gateway(
            "the identity provider returned no refresh token (does [session] scopes include offline_access?)",
        );
    };
    let grant = LoginGrant {
        access_token: &tokens.access_token,
        refresh_token,
        scope: tokens.scope.as_deref(),
        expires_in: tokens.expires_in,
        refresh_token_expires_in: None,
    };
    let user = match delegation::login_record(&grant, &claims) {
        Ok(u) => u,
        Err(why) => return bad_gateway(why),
    };
    if let Err(e) = delegation::store_login(store, &sessions.provider, &user, false).await {
        return store_unavailable(&e);
    }
    // A new id at every sign-in (session fixation, OWASP): the browser's old session, if any,
    // ends here.
    if let Some(old) = cookie::read(headers, sessions.config.cookie_name())
        && cookie::is_random_id(old)
        && let Err(e) = store
            .delete_session(&sessions.provider, &SessionKey::from_cookie_id(old))
            .await
    {
        return store_unavailable(&e);
    }
    let now = now();
    let cfg = &sessions.config;
    let expires_at = now + cfg.lifetime.as_secs();
    let record = SessionRecord {
        oid: user.oid.clone(),
        sub: claims.subject().to_owned(),
        sid: user.sid.clone(),
        claims: user_claims(&claims),
        scopes: user.scopes.clone(),
        id_token: id_token.to_owned(),
        created_at: now,
        expires_at,
        idle_expires_at: (now + cfg.idle_timeout.as_secs()).min(expires_at),
        access_expires_at: user.access_token_expires_at,
    };
    let id = cookie::random_id();
    if let Err(e) = store
        .put_session(
            &sessions.provider,
            &SessionKey::from_cookie_id(&id),
            &record,
        )
        .await
    {
        return store_unavailable(&e);
    }
    tracing::info!(oid = %user.oid, "session: signed in");
    crate::session::sessions::count("sign_in", 1);
    let mut resp = found(&sign_in.rd);
    resp.headers_mut()
        .append(header::SET_COOKIE, cookie::session(cfg, &id));
    resp
}

/// `GET|POST /oauth2/sign_out?rd=`: ends the session and forgets the user's tokens, then sends
/// the browser to the IdP's end-session endpoint (with `id_token_hint` and `rd` as
/// `post_logout_redirect_uri`), or straight to `rd` when the IdP has none.
async fn sign_out(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<RdQuery>,
) -> Response<Body> {
    let Some(sessions) = &state.sessions else {
        return not_enabled();
    };
    let Some(rd) = validated_rd(sessions, q.rd.as_deref()) else {
        return bad_rd();
    };
    let mut hint = None;
    if let Some(id) = cookie::read(&headers, sessions.config.cookie_name())
        && cookie::is_random_id(id)
    {
        let key = SessionKey::from_cookie_id(id);
        match sessions.store().get_session(&sessions.provider, &key).await {
            Ok(Some(record)) => {
                if let Err(e) = sessions.end(&key, &record.oid).await {
                    return store_unavailable(&e);
                }
                tracing::info!(oid = %record.oid, "session: signed out");
                crate::session::sessions::count("sign_out", 1);
                hint = Some(record.id_token);
            }
            Ok(None) => {}
            Err(e) => return store_unavailable(&e),
        }
    }
    let end_session = state
        .provider(&sessions.provider)
        .and_then(|(p, _)| p.metadata())
        .and_then(|m| m.end_session_endpoint.clone());
    let location = match (end_session, hint) {
        (Some(mut url), Some(hint)) => {
            let back = sessions
                .origin
                .join(&rd)
                .map(String::from)
                .unwrap_or_else(|_| rd.clone());
            url.query_pairs_mut()
                .append_pair("id_token_hint", &hint)
                .append_pair("post_logout_redirect_uri", &back);
            url.into()
        }
        _ => rd,
    };
    let mut resp = found(&location);
    resp.headers_mut()
        .append(header::SET_COOKIE, cookie::clear_session(&sessions.config));
    resp
}

/// `GET /oauth2/userinfo`: the signed-in user, as JSON, or `401`.
async fn userinfo(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response<Body> {
    let Some(sessions) = &state.sessions else {
        return not_enabled();
    };
    let user = match sessions.current(&headers).await {
        Ok(Some(u)) => u,
        Ok(None) => return auth_error(&ValidationError::Missing),
        Err(e) => return store_unavailable(&e),
    };
    let c = &user.claims;
    let r = &user.record;
    let body = json!({
        "oid": c.oid(),
        "sub": c.subject(),
        "name": c.name(),
        "preferred_username": c.username(),
        "email": c.get("email"),
        "tid": c.tid(),
        "roles": c.roles(),
        "groups": c.get("groups").cloned().unwrap_or_else(|| json!([])),
        "session_expires_at": r.expires_at,
        "session_idle_expires_at": r.idle_expires_at,
    });
    let mut resp = Response::new(Body::from(body.to_string()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, NO_STORE.clone());
    resp
}

/// `rd` validated (`/` when absent); `None` when it must be refused ([`bad_rd`]).
fn validated_rd(sessions: &Sessions, rd: Option<&str>) -> Option<String> {
    match rd.filter(|r| !r.is_empty()) {
        None => Some("/".to_owned()),
        Some(rd) => safe_redirect(
            rd,
            &sessions.origin,
            &sessions.config.allowed_redirect_hosts,
        ),
    }
}

fn bad_rd() -> Response<Body> {
    json_error(
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "rd must be a path on this site or a URL on an allowed host",
    )
}

fn not_enabled() -> Response<Body> {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "sessions are not enabled",
    )
}

fn unavailable(why: &str) -> Response<Body> {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        why,
    )
}

fn bad_gateway(why: &str) -> Response<Body> {
    json_error(StatusCode::BAD_GATEWAY, "bad_gateway", why)
}
