//! The interactive-login proxy (an "Entra ID proxy"): the app's OIDC client uses
//! tollgate as its IdP. tollgate serves the provider's discovery document with the
//! authorization, token and end-session endpoints pointing at itself (issuer and `jwks_uri`
//! untouched, so the app still validates ID tokens against the real IdP), widens the scope on
//! authorize, forwards the token call unchanged and keeps each user's tokens, sealed, so the app
//! can later ask the local API for a delegated token by object id or UPN.
//!
//! Routes on the public listener: `GET /.well-known/openid-configuration` (also under
//! `/{tenant}/v2.0/...` for MSAL's one-segment authorities), `GET /oauth2/authorize`,
//! `POST /oauth2/token`, `GET /oauth2/logout`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode, header};
use serde_json::Value;
use url::Url;

use crate::delegation::{self, LoginGrant, lock_user};
use crate::response::{found, json_error};
use crate::state::AppState;
use crate::store::{StoreError, UserTokens};
use crate::util::now;
use crate::validate::{Claims, Validator};

/// Adds the login routes when `[login]` is enabled.
pub(crate) fn routes(router: Router<Arc<AppState>>, state: &AppState) -> Router<Arc<AppState>> {
    if !state.config.login.enabled {
        return router;
    }
    router
        .route("/.well-known/openid-configuration", get(discovery))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/oauth2/authorize", get(authorize))
        .route("/oauth2/token", post(token))
        .route("/oauth2/logout", get(logout))
}

fn login_validator(state: &AppState) -> Option<&Validator> {
    let name = match &state.config.login.provider {
        Some(n) => n.clone(),
        None => state.config.providers.first()?.name.clone(),
    };
    state.provider(&name).map(|(_, v)| v)
}

fn public_url(state: &AppState, path: &str) -> String {
    let base = state
        .config
        .login
        .public_url
        .as_ref()
        .map(Url::as_str)
        .unwrap_or("")
        .trim_end_matches('/');
    format!("{base}{path}")
}

fn unavailable() -> Response {
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the identity provider's metadata is not loaded yet",
    )
}

async fn discovery(State(state): State<Arc<AppState>>) -> Response {
    let Some(metadata) = login_validator(&state).and_then(|v| v.provider().metadata()) else {
        return unavailable();
    };
    let mut doc = metadata.document.clone();
    let Some(obj) = doc.as_object_mut() else {
        return unavailable();
    };
    obj.insert(
        "authorization_endpoint".into(),
        Value::String(public_url(&state, "/oauth2/authorize")),
    );
    obj.insert(
        "token_endpoint".into(),
        Value::String(public_url(&state, "/oauth2/token")),
    );
    obj.insert(
        "end_session_endpoint".into(),
        Value::String(public_url(&state, "/oauth2/logout")),
    );
    ([(header::CACHE_CONTROL, "max-age=3600")], axum::Json(doc)).into_response()
}

/// RFC 6749 §4.1.1 / OIDC Core §3.1.2.1, with RFC 9700 §2.1 exact redirect URI matching: an
/// unregistered `redirect_uri` gets a `400` and no redirect (an open redirector otherwise);
/// other errors go back to the (now trusted) redirect URI per RFC 6749 §4.1.2.1.
async fn authorize(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let login = &state.config.login;
    let params = match authorize_params(query.as_deref(), &login.redirect_uris) {
        Ok(p) => p,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, "invalid_request", why),
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(redirect_uri) = get("redirect_uri") else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "redirect_uri is required",
        );
    };
    let Some(metadata) = login_validator(&state).and_then(|v| v.provider().metadata()) else {
        return unavailable();
    };
    let Some(endpoint) = metadata.authorization_endpoint.clone() else {
        return unavailable();
    };
    if login.require_pkce
        && (get("code_challenge").is_none_or(str::is_empty)
            || get("code_challenge_method") != Some("S256"))
    {
        return redirect_error(
            redirect_uri,
            get("state"),
            "invalid_request",
            "PKCE with code_challenge_method=S256 is required",
        );
    }
    if get("client_id").is_none_or(str::is_empty) {
        return redirect_error(
            redirect_uri,
            get("state"),
            "invalid_request",
            "client_id is required",
        );
    }
    let mut scopes: Vec<String> = get("scope")
        .unwrap_or("openid")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for extra in login
        .extra_scopes
        .iter()
        .map(String::as_str)
        .chain(["offline_access"])
    {
        if !scopes.iter().any(|s| s == extra) {
            scopes.push(extra.to_owned());
        }
    }
    let mut target = endpoint;
    {
        let mut q = target.query_pairs_mut();
        for (k, v) in &params {
            if k != "scope" {
                q.append_pair(k, v);
            }
        }
        q.append_pair("scope", &scopes.join(" "));
    }
    found(target.as_str())
}

/// A query string's pairs, decoded.
fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The authorize request's parameters, decoded, when none is repeated and `redirect_uri` is
/// one of `registered` (exact string comparison, RFC 9700 §2.1); else why the request gets a
/// `400` and no redirect.
pub(crate) fn authorize_params(
    query: Option<&str>,
    registered: &[String],
) -> Result<Vec<(String, String)>, &'static str> {
    let params = query_pairs(query);
    // RFC 6749 §3.1: no parameter twice. tollgate checks the first value and forwards them all,
    // so a second `redirect_uri` or `code_challenge_method=plain` could be what the IdP uses.
    if params
        .iter()
        .enumerate()
        .any(|(i, (k, _))| params[..i].iter().any(|(n, _)| n == k))
    {
        return Err("a parameter is repeated");
    }
    let Some((_, redirect_uri)) = params.iter().find(|(n, _)| n == "redirect_uri") else {
        return Err("redirect_uri is required");
    };
    if !registered.iter().any(|allowed| allowed == redirect_uri) {
        return Err("redirect_uri is not registered with tollgate");
    }
    Ok(params)
}

/// Forwards the token request as sent (the app's own client authentication included) and, on
/// success, keeps the user's tokens. The response goes back to the app unchanged.
async fn token(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(validator) = login_validator(&state) else {
        return unavailable();
    };
    let provider = validator.provider().clone();
    let Some(endpoint) = provider.metadata().and_then(|m| m.token_endpoint.clone()) else {
        return unavailable();
    };
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    // Only the app's own sign-in is relayed: anything else would make tollgate an open relay to
    // the IdP from the organisation's egress address (password spraying through `password`,
    // other clients' grants). Refused here, without a call to the IdP.
    if let Err((code, why)) = relayable(&state, validator, &form, &headers) {
        return json_error(StatusCode::BAD_REQUEST, code, &why);
    }
    let mut req = provider.http().post(endpoint.as_str()).body(body.clone());
    for name in [header::CONTENT_TYPE, header::AUTHORIZATION, header::ACCEPT] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let resp = match crate::provider::send(req, "POST", &endpoint, "token endpoint").await {
        Ok(r) => r,
        Err(e) => {
            let timeout = e.is_timeout();
            let (status, code) = if timeout {
                (StatusCode::GATEWAY_TIMEOUT, "gateway_timeout")
            } else {
                (StatusCode::BAD_GATEWAY, "bad_gateway")
            };
            return json_error(
                status,
                code,
                "the identity provider's token endpoint could not be reached",
            );
        }
    };
    let status = resp.status();
    let mut out_headers = HeaderMap::new();
    for name in [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::PRAGMA,
        header::EXPIRES,
        header::WWW_AUTHENTICATE,
        header::RETRY_AFTER,
    ] {
        if let Some(v) = resp.headers().get(&name) {
            out_headers.insert(name, v.clone());
        }
    }
    let bytes = match crate::provider::read_capped(resp, "token endpoint").await {
        Ok(b) => b,
        Err(_) => {
            return json_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the identity provider's token response could not be read",
            );
        }
    };
    if status.is_success()
        && matches!(
            field("grant_type").as_deref(),
            Some("authorization_code" | "refresh_token")
        )
    {
        let client_id = field("client_id").or_else(|| basic_client_id(&headers));
        let code_grant = field("grant_type").as_deref() == Some("authorization_code");
        if let Err(why) = capture(&state, validator, client_id.as_deref(), code_grant, &bytes).await
        {
            // The app still gets its tokens; only the delegated-token feature misses this user.
            tracing::warn!(reason = %why, "login: tokens not stored");
        }
    }
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = out_headers;
    response
}

/// Whether a token request is one the login proxy relays (RFC 6749 §4.1.3, §6): an
/// `authorization_code` grant with a registered `redirect_uri`, or a `refresh_token` grant, from
/// the login provider's own client. Each parameter appears at most once (RFC 6749 §3.2), so the
/// IdP cannot read another value than the one checked here. The error is an RFC 6749 §5.2 code
/// and a description.
fn relayable(
    state: &AppState,
    validator: &Validator,
    form: &[(String, String)],
    headers: &HeaderMap,
) -> Result<(), (&'static str, String)> {
    for (i, (name, _)) in form.iter().enumerate() {
        if form[..i].iter().any(|(n, _)| n == name) {
            return Err((
                "invalid_request",
                format!("the parameter {name} is repeated"),
            ));
        }
    }
    let field = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    match field("grant_type") {
        Some("refresh_token") => {}
        Some("authorization_code") => {
            let Some(redirect_uri) = field("redirect_uri") else {
                return Err(("invalid_request", "redirect_uri is required".into()));
            };
            if !state
                .config
                .login
                .redirect_uris
                .iter()
                .any(|allowed| allowed == redirect_uri)
            {
                return Err((
                    "invalid_grant",
                    "redirect_uri is not registered with tollgate".into(),
                ));
            }
        }
        Some(_) => {
            return Err((
                "unsupported_grant_type",
                "the login proxy relays only the authorization_code and refresh_token grants"
                    .into(),
            ));
        }
        None => return Err(("invalid_request", "grant_type is required".into())),
    }
    let basic = basic_client_id(headers);
    let client_id = match (field("client_id"), basic.as_deref()) {
        (Some(form), Some(basic)) if form != basic => {
            return Err((
                "invalid_request",
                "the client_id differs from the HTTP Basic client".into(),
            ));
        }
        (Some(id), _) | (None, Some(id)) => Some(id.to_owned()),
        // private_key_jwt without client_id (RFC 7523 §3): the assertion names the client.
        (None, None) => field("client_assertion").and_then(assertion_subject),
    };
    let own = validator.provider().config().client_id.as_str();
    match client_id {
        Some(id) if id.eq_ignore_ascii_case(own) => Ok(()),
        Some(_) => Err((
            "unauthorized_client",
            "the login proxy relays token requests of its own client only".into(),
        )),
        None => Err((
            "invalid_request",
            "the token request names no client".into(),
        )),
    }
}

/// The `sub` of a client assertion, read without checking the signature: only to pick the
/// client; the IdP verifies the assertion itself.
fn assertion_subject(assertion: &str) -> Option<String> {
    use base64::Engine;
    let payload = assertion.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// Validates the ID token of a successful token response and stores the user's tokens.
async fn capture(
    state: &AppState,
    validator: &Validator,
    client_id: Option<&str>,
    code_grant: bool,
    body: &[u8],
) -> Result<(), String> {
    let Some(store) = &state.store else {
        return Err("no token store".into());
    };
    let doc: Value =
        serde_json::from_slice(body).map_err(|_| "the token response is not JSON".to_owned())?;
    let s = |k: &str| doc.get(k).and_then(Value::as_str);
    let (Some(id_token), Some(access_token), Some(refresh_token)) =
        (s("id_token"), s("access_token"), s("refresh_token"))
    else {
        return Err("the token response lacks id_token, access_token or refresh_token".into());
    };
    let client_id = client_id.ok_or("the token request names no client_id")?;
    let own_client_id = validator.provider().config().client_id.as_str();
    // Entra takes a client id in any case; the configured one is normalised to the lower case
    // tokens carry (config.rs `normalize`).
    if !client_id.eq_ignore_ascii_case(own_client_id) {
        // Refresh tokens are bound to the client they were issued to: tollgate, redeeming with
        // its own credentials, could never use them.
        return Err(format!(
            "the app's client_id {client_id} is not the login provider's client_id {own_client_id}"
        ));
    }
    let claims = validator
        .validate_id_token(id_token, own_client_id, false)
        .await
        .map_err(|e| e.to_string())?;
    // OIDC Core §3.1.3.7: the code flow's ID token echoes the authorize nonce; a refresh grant's
    // ID token has none (§12.2), and tollgate stores the rotated tokens all the same.
    if code_grant && claims.get("nonce").is_none() {
        return Err("the ID token of the code grant has no nonce".into());
    }
    let grant = LoginGrant {
        access_token,
        refresh_token,
        scope: s("scope"),
        expires_in: doc
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(0),
        refresh_token_expires_in: doc.get("refresh_token_expires_in").and_then(Value::as_u64),
    };
    let record = delegation::login_record(&grant, &claims)?;
    delegation::store_login(store, validator.provider().name(), &record, !code_grant)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(oid = %record.oid, "login: stored the user's tokens");
    Ok(())
}

/// OIDC RP-Initiated Logout §2: forgets the user named by `id_token_hint`, then redirects to the
/// IdP's end-session endpoint with `post_logout_redirect_uri` only when it is allowed.
///
/// The logout is a GET any page can make a browser send, so the hint is what authorises the
/// deletion: its signature and audience are checked (its expiry not: OIDC lets an app send the
/// login's ID token), its `iat` must be within `login.logout_hint_max_age`, and its `sid` must be
/// the session the stored tokens came from, when they came with one. A hint that fails these
/// deletes nothing; the browser still goes on to the IdP.
async fn logout(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let Some(validator) = login_validator(&state) else {
        return unavailable();
    };
    let params = match logout_params(
        query.as_deref(),
        &state.config.login.post_logout_redirect_uris,
    ) {
        Ok(p) => p,
        Err(why) => return json_error(StatusCode::BAD_REQUEST, "invalid_request", why),
    };
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let (Some(hint), Some(store)) = (get("id_token_hint"), &state.store) {
        // Only an ID token issued to the login client names a user whose tokens tollgate keeps
        // (capture refuses other clients); one from another app of the tenant deletes nothing.
        let client_id = validator.provider().config().client_id.as_str();
        let provider = validator.provider().name();
        if let Ok(claims) = validator.validate_id_token(hint, client_id, true).await
            && let Some(oid) = claims.oid()
        {
            let max_age = state.config.login.logout_hint_max_age.as_secs();
            let leeway = validator.provider().config().leeway.as_secs();
            let _guard = lock_user(store, provider, oid).await;
            let refused = match hint_problem(&claims, max_age, leeway) {
                Some(why) => Some(why),
                None => match store.get_by_oid(provider, oid).await {
                    Ok(Some(stored)) => session_problem(&stored, &claims),
                    // Nothing to keep; an unreadable record goes with the sign-out too.
                    Ok(None) | Err(StoreError::Corrupt(_)) => None,
                    Err(e) => return store_unavailable(&e),
                },
            };
            if let Some(why) = refused {
                tracing::warn!(oid = %oid, reason = why, "logout: the id_token_hint does not authorise forgetting the user; their tokens are kept");
            } else if let Err(e) = store.delete(provider, oid).await {
                return store_unavailable(&e);
            }
        }
    }
    let Some(mut end) = validator
        .provider()
        .metadata()
        .and_then(|m| m.end_session_endpoint.clone())
    else {
        return (StatusCode::OK, "signed out\n").into_response();
    };
    let forwarded: Vec<(&str, &str)> = [
        "post_logout_redirect_uri",
        "id_token_hint",
        "logout_hint",
        "state",
        "client_id",
    ]
    .into_iter()
    .filter_map(|k| get(k).map(|v| (k, v)))
    .collect();
    // `query_pairs_mut` leaves a bare `?` behind when nothing is appended.
    if !forwarded.is_empty() {
        end.query_pairs_mut().extend_pairs(forwarded);
    }
    found(end.as_str())
}

fn store_unavailable(e: &StoreError) -> Response {
    tracing::warn!(error = %e, "logout: could not delete the user's tokens");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the token store is unavailable",
    )
}

/// Why an `id_token_hint` is too old (or too new) to sign its user out: its `iat` must be within
/// `max_age` before now, and not ahead of the clock by more than `leeway`.
fn hint_problem(claims: &Claims, max_age: u64, leeway: u64) -> Option<&'static str> {
    let iat = claims.get("iat").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    });
    let Some(iat) = iat else {
        return Some("the hint has no iat");
    };
    let now = now();
    if iat > now + leeway {
        Some("the hint is issued in the future")
    } else if now.saturating_sub(iat) > max_age {
        Some("the hint is older than login.logout_hint_max_age")
    } else {
        None
    }
}

/// Why a hint is not of the session the stored tokens came from (`None` when the stored tokens
/// name no session, as those stored before tollgate kept it).
fn session_problem(stored: &UserTokens, hint: &Claims) -> Option<&'static str> {
    let stored_sid = stored.sid.as_deref()?;
    match hint.get("sid").and_then(Value::as_str) {
        Some(sid) if sid == stored_sid => None,
        Some(_) => Some("the hint is of another session than the stored tokens"),
        None => Some("the hint names no session (sid) and the stored tokens do"),
    }
}

/// The logout request's parameters, decoded, when its `post_logout_redirect_uri` (the first,
/// which is the one forwarded) is absent or one of `registered`; else why the request gets a
/// `400`.
pub(crate) fn logout_params(
    query: Option<&str>,
    registered: &[String],
) -> Result<Vec<(String, String)>, &'static str> {
    let params = query_pairs(query);
    if let Some((_, post_logout)) = params.iter().find(|(n, _)| n == "post_logout_redirect_uri")
        && !registered.iter().any(|a| a == post_logout)
    {
        return Err("post_logout_redirect_uri is not registered with tollgate");
    }
    Ok(params)
}

/// RFC 6749 §2.3.1: the client id is the form-decoded user part of HTTP Basic.
fn basic_client_id(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let id = text.split(':').next()?;
    url::form_urlencoded::parse(format!("x={id}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

pub(crate) fn redirect_error(
    redirect_uri: &str,
    state: Option<&str>,
    code: &str,
    description: &str,
) -> Response {
    let Ok(mut url) = Url::parse(redirect_uri) else {
        return json_error(StatusCode::BAD_REQUEST, code, description);
    };
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("error", code)
            .append_pair("error_description", description);
        if let Some(s) = state {
            q.append_pair("state", s);
        }
    }
    found(url.as_str())
}
