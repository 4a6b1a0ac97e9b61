//! The public request pipeline, top to bottom: normalise the path, find the route, strip what
//! only tollgate may set, authenticate and authorise, check the authentication context, add the
//! identity headers, exchange tokens, forward.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::access_log::AccessNote;
use crate::config::AuthMode;
use crate::exchange::ExchangeError;
use crate::response::{auth_error, json_error, obo_error};
use crate::routes::Route;
use crate::validate::{Claims, LastToken, QUERY_TOKEN, SentToken, ValidationError};

use crate::state::AppState;

/// Every proxied request that reaches the public router's fallback (the listener also serves
/// login or session routes, or layers wrap it): [`public_request`].
pub(super) async fn routed_public_request(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    last_token: Option<axum::Extension<Arc<LastToken>>>,
    req: Request<Body>,
) -> Response<Body> {
    let last_token = last_token.map(|axum::Extension(last)| last);
    public_request(state, peer, last_token, req).await
}

/// Every proxied request: route, authenticate, authorise, decorate, forward. `last_token` is
/// the connection's, where the listener keeps one (see `validate::LastToken`).
pub(super) async fn public_request(
    state: Arc<AppState>,
    peer: SocketAddr,
    last_token: Option<Arc<LastToken>>,
    mut req: Request<Body>,
) -> Response<Body> {
    // Route on, and forward, the normalised path: what was authorised is what the upstream gets.
    if let Err(why) = normalize_path(&mut req) {
        return json_error(StatusCode::BAD_REQUEST, "invalid_request", &why);
    }
    let Some(route) = state.routes.find(req.uri().path()) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no route is configured for this path",
        );
    };
    crate::telemetry::note_route(req.method(), &route.label);
    // Identity headers are ours alone: whatever a client sent under X-Auth-* or Easy Auth's
    // X-MS-* names is dropped first, on every route, so an upstream can trust them.
    crate::identity_headers::remove_client_copies(req.headers_mut());
    // The same for the route's `obo_headers`: only tollgate sets them, and a preflight (which
    // is not exchanged) must not carry a client's values under those names either.
    if let Some(added) = &route.added_headers {
        for name in added.0.iter() {
            req.headers_mut().remove(name);
        }
        req.extensions_mut().insert(added.clone());
    }
    if route.config.skip_auth_preflight && is_cors_preflight(&req) {
        if route.config.token_in_query {
            // A preflight's URL is the real request's: a token in it goes no further.
            move_query_token(&mut req, route, None);
        }
        let response = state.forwarder.forward(req, peer).await;
        route.count(response.status());
        return response;
    }
    let access = state.config.log.access;
    let mut note = AccessNote {
        route: access.then(|| route.label.clone()),
        ..AccessNote::default()
    };
    // A route without a provider (`auth = "none"`) has no one to authenticate: its request
    // skips building the authentication's future.
    let authenticated = match route.validator {
        None => Ok(None),
        Some(_) => {
            let last_token = last_token.as_deref();
            let (method, uri, headers) = (req.method(), req.uri(), req.headers());
            authenticate(&state, route, method, uri, headers, last_token).await
        }
    };
    let mut response = match authenticated {
        Ok(Some(user))
            if let Some(challenge) = missing_auth_context(&state, route, &user.claims) =>
        {
            note.error = Some("insufficient_claims");
            challenge
        }
        Ok(user) => {
            let oid = user
                .as_ref()
                .map(|u| u.claims.oid().unwrap_or(u.claims.subject()));
            crate::telemetry::note_user(&state.config.telemetry, oid);
            if access && let Some(user) = &user {
                let c = &user.claims;
                note.user = Some(Arc::from(c.oid().unwrap_or(c.subject())));
            }
            forward_authorised(&state, route, user, req, peer).await
        }
        // A browser with no session is sent to sign in, to come back where it was going.
        Err(Refused::Token(ValidationError::Missing))
            if route.config.auth == AuthMode::Session
                && let Some(sessions) = &state.sessions
                && crate::session::is_navigation(req.method(), req.headers()) =>
        {
            note.error = Some("sign_in");
            let rd = req.uri().path_and_query().map_or("/", |p| p.as_str());
            crate::response::found(&sessions.sign_in_url(rd))
        }
        Err(Refused::Token(e)) => {
            note.error = Some(e.code());
            auth_error(&e)
        }
        Err(Refused::Answer { response, code }) => {
            note.error = Some(code);
            response
        }
    };
    route.count(response.status());
    if access {
        response.extensions_mut().insert(note);
    }
    response
}

/// A request the route lets through (`user` is `None` where none is needed): the query token
/// moved to `Authorization`, identity headers added, tokens exchanged, then forwarded.
async fn forward_authorised(
    state: &AppState,
    route: &Route,
    user: Option<Authenticated>,
    mut req: Request<Body>,
    peer: SocketAddr,
) -> Response<Body> {
    if let Some(user) = &user {
        if user.from_query {
            move_query_token(
                &mut req,
                route,
                user.token.as_ref().and_then(Inbound::token),
            );
        }
        crate::identity_headers::add(req.headers_mut(), &user.claims, route.identity_headers);
        // A tunnel is authorised once, at its handshake: it lives no longer than the token.
        if state.config.upstream.close_tunnels_at_expiry
            && req.headers().contains_key(http::header::UPGRADE)
        {
            req.extensions_mut()
                .insert(crate::proxy::TunnelDeadline(user.claims.expires_at()));
        }
    }
    // Kept (a reference count) to forget the exchanged tokens if the upstream refuses them.
    let exchanged_for = user
        .as_ref()
        .filter(|u| u.token.is_some() && route.exchanges())
        .map(|u| u.claims.clone());
    // The exchange's future is large (the IdP request, the shared cache): boxed, and only for
    // a route that exchanges and a token this replica has not exchanged yet, so every other
    // request does not carry (and move) its space.
    if route.exchanges()
        && !exchange_from_cache(route, user.as_ref(), req.headers_mut())
        && let Err(resp) = Box::pin(exchange_for_route(state, route, user, req.headers_mut())).await
    {
        return resp;
    }
    let resp = state.forwarder.forward(req, peer).await;
    if let Some(claims) = exchanged_for
        && is_claims_challenge(&resp)
    {
        forget_exchanged(route, &claims).await;
    }
    resp
}

/// The upstream's `401` claims challenge (`WWW-Authenticate: Bearer ...
/// error="insufficient_claims", claims="..."`): Continuous Access Evaluation revoked the token
/// tollgate exchanged, or the upstream needs a claim it lacks. The challenge goes back to the
/// client unchanged, so it can step up (Microsoft identity platform, "Claims challenges, claims
/// requests and client capabilities").
fn is_claims_challenge(resp: &Response<Body>) -> bool {
    resp.status() == StatusCode::UNAUTHORIZED
        && resp
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .any(|v| memchr::memmem::find(v.as_bytes(), b"insufficient_claims").is_some())
}

/// Drops this user's cached On-Behalf-Of tokens for the route's targets, so the request after
/// the step-up gets a fresh exchange instead of the refused token.
async fn forget_exchanged(route: &Route, claims: &Claims) {
    let Some(exchanger) = &route.exchanger else {
        return;
    };
    let targets = route
        .config
        .obo
        .iter()
        .chain(route.obo_headers.iter().map(|(_, t)| t));
    for target in targets {
        exchanger.forget_on_behalf_of(claims, target).await;
    }
    tracing::debug!(route = %route.config.path, "upstream sent a claims challenge: exchanged tokens forgotten");
}

/// A CORS preflight as a browser sends it (Fetch standard, "CORS-preflight request"):
/// `OPTIONS` with `Origin` and `Access-Control-Request-Method`. A browser never puts
/// credentials on one, so a request with `Authorization` is treated as an ordinary request.
fn is_cors_preflight(req: &Request<Body>) -> bool {
    let headers = req.headers();
    req.method() == http::Method::OPTIONS
        && headers.contains_key(http::header::ORIGIN)
        && headers.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
        && !headers.contains_key(http::header::AUTHORIZATION)
}

/// Replaces the request's path by its normal form ([`crate::path`]); the error says why the
/// path is refused (`400`).
fn normalize_path(req: &mut Request<Body>) -> Result<(), String> {
    let normal = match crate::path::normalize(req.uri().path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => return Ok(()),
        Ok(std::borrow::Cow::Owned(p)) => p,
        Err(e) => return Err(e.to_string()),
    };
    let path_and_query = match req.uri().query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    set_path_and_query(req, &path_and_query)
        .map_err(|()| "the request target is not valid".to_owned())
}

/// Replaces the request target's path and query, keeping its scheme and authority.
fn set_path_and_query(req: &mut Request<Body>, path_and_query: &str) -> Result<(), ()> {
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().map_err(|_| ())?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| ())?;
    Ok(())
}

/// Validates the bearer token as the route demands, or, on a session route without one, the
/// session cookie: `Ok(None)` when the request goes on unauthenticated (`auth = none`, or
/// `optional` without a token).
pub(super) async fn authenticate(
    state: &AppState,
    route: &Route,
    method: &Method,
    uri: &http::Uri,
    headers: &HeaderMap,
    last_token: Option<&LastToken>,
) -> Result<Option<Authenticated>, Refused> {
    let Some(validator) = &route.validator else {
        return Ok(None);
    };
    // The connection's last token, recognised by its bytes before they are read again.
    let recalled = match last_token {
        Some(last) if !route.config.token_in_query => recall(last, validator, headers, route),
        _ => None,
    };
    let (claims, token, from_query) = match recalled {
        Some((claims, token)) => (claims, token, false),
        None => {
            let sent = crate::validate::sent_token(headers, uri, route.config.token_in_query)?;
            let token = match sent {
                Some(t) => t,
                None if route.config.auth == AuthMode::Optional => return Ok(None),
                None if route.config.auth == AuthMode::Session => {
                    // Boxed: the session's future (store, refresh) is large and bearer
                    // requests do not need its space.
                    return Box::pin(session_user(state, route, method, headers))
                        .await
                        .map(Some);
                }
                None => return Err(ValidationError::Missing.into()),
            };
            let from_query = matches!(token, SentToken::Query(_));
            let claims =
                crate::validate::validate_on(last_token, validator, token.as_str()).await?;
            // Kept only where the route exchanges it (the headers change before the
            // exchange: the header's value is kept, a reference count) or moves it to a header.
            let token = match token {
                SentToken::Query(text) => Some(Inbound::Query(text)),
                SentToken::Header(_) if route.exchanges() => headers
                    .get(http::header::AUTHORIZATION)
                    .cloned()
                    .map(Inbound::Header),
                SentToken::Header(_) => None,
            };
            (claims, token, from_query)
        }
    };
    claims.check(&route.config.scopes, &route.config.roles)?;
    let provider = validator.provider().config();
    claims.check_access(
        route
            .config
            .allow_unscoped_tokens
            .unwrap_or(provider.allow_unscoped_tokens),
        [
            &provider.allowed_client_ids,
            &route.config.allowed_client_ids,
        ],
    )?;
    Ok(Some(Authenticated {
        claims,
        token,
        from_query,
        session: None,
    }))
}

/// The claims of the request's token when it is `last`'s (its bytes compared as sent, in the
/// request's only `Authorization: Bearer` header), and the header where the route exchanges
/// the token. Those bytes were read and checked when `last` took them.
fn recall(
    last: &LastToken,
    validator: &crate::validate::Validator,
    headers: &HeaderMap,
    route: &Route,
) -> Option<(Claims, Option<Inbound>)> {
    let (value, sent) = crate::validate::usual_bearer(headers)?;
    let claims = last.recall(validator, sent)?;
    let token = route.exchanges().then(|| Inbound::Header(value.clone()));
    Some((claims, token))
}

/// The signed-in user of a session route's request without a token. A state-changing method
/// must come from the session's own origin (CSRF); the route's scopes and roles apply to the
/// session's.
async fn session_user(
    state: &AppState,
    route: &Route,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Authenticated, Refused> {
    let Some(sessions) = &state.sessions else {
        return Err(ValidationError::Missing.into());
    };
    let user = match sessions.current(headers).await {
        Ok(Some(user)) => user,
        Ok(None) => return Err(ValidationError::Missing.into()),
        Err(e) => {
            return Err(Refused::Answer {
                response: crate::session::store_unavailable(&e),
                code: "temporarily_unavailable",
            });
        }
    };
    if !crate::session::is_same_origin_write(method, headers, &sessions.origin) {
        return Err(Refused::Answer {
            response: json_error(
                StatusCode::FORBIDDEN,
                "access_denied",
                "a cross-site request cannot use the session cookie",
            ),
            code: "cross_site",
        });
    }
    user.claims
        .check(&route.config.scopes, &route.config.roles)?;
    Ok(Authenticated {
        claims: user.claims.clone(),
        token: None,
        from_query: false,
        session: Some(user),
    })
}

/// Why [`authenticate`] let a request no further.
pub(super) enum Refused {
    /// The token (or its absence) is refused: the RFC 6750 answer.
    Token(ValidationError),
    /// An answer of its own (a cross-site write, the store failing), with its log code.
    Answer {
        response: Response<Body>,
        code: &'static str,
    },
}

impl From<ValidationError> for Refused {
    fn from(e: ValidationError) -> Self {
        Self::Token(e)
    }
}

/// A request that passed [`authenticate`].
pub(super) struct Authenticated {
    pub(super) claims: Claims,
    /// The inbound token, for routes that exchange it or when it came in the query.
    token: Option<Inbound>,
    /// The token was the `access_token` query parameter (`token_in_query`).
    from_query: bool,
    /// The session, when the user came with a session cookie instead of a token.
    session: Option<crate::session::SessionUser>,
}

/// Where the inbound token came in: kept for an exchange, or to move a query token to
/// `Authorization`.
pub(super) enum Inbound {
    /// The request's `Authorization` value, `Bearer <token68>` (checked), shared with the
    /// request rather than copied: the exchange reads the token only when its cache misses.
    Header(HeaderValue),
    /// The `access_token` query parameter, decoded.
    Query(String),
}

impl Inbound {
    /// The token itself.
    fn token(&self) -> Option<&str> {
        match self {
            Inbound::Header(value) => crate::validate::token_of(value),
            Inbound::Query(token) => Some(token),
        }
    }
}

/// For a token that came in the query: the forwarded URL loses it (URLs end up in access logs,
/// RFC 6750 §5.3), and the app gets `Authorization: Bearer` as from a header client, unless
/// the route's `obo` puts the exchanged token there.
fn move_query_token(req: &mut Request<Body>, route: &Route, token: Option<&str>) {
    if let Some(path_and_query) = req.uri().path_and_query() {
        let path = path_and_query.path();
        let kept: Vec<&str> = path_and_query
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| {
                url::form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .is_none_or(|(name, _)| name != QUERY_TOKEN)
            })
            .collect();
        let rebuilt = if kept.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", kept.join("&"))
        };
        // Removing pairs from a valid target leaves a valid target: this cannot fail.
        let _ = set_path_and_query(req, &rebuilt);
    }
    if route.config.obo.is_none()
        && let Some(value) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok())
    {
        req.headers_mut().insert(http::header::AUTHORIZATION, value);
    }
}

/// [`exchange_for_route`] for a token whose every target this replica has cached: `true` once
/// the headers are set. Anything else (a miss, a session, a refusal) is `false`, with the
/// headers untouched, for `exchange_for_route` to answer.
fn exchange_from_cache(
    route: &Route,
    user: Option<&Authenticated>,
    headers: &mut HeaderMap,
) -> bool {
    let (
        Some(exchanger),
        Some(Authenticated {
            claims,
            token: Some(_),
            session: None,
            ..
        }),
    ) = (&route.exchanger, user)
    else {
        return false;
    };
    let authorization = match &route.config.obo {
        Some(target) => match exchanger.cached_for_subject(claims, target) {
            Some(token) => Some(token.authorization()),
            None => return false,
        },
        None => None,
    };
    let mut added = Vec::with_capacity(route.obo_headers.len());
    for (name, target) in &route.obo_headers {
        let cached = exchanger.cached_for_subject(claims, target);
        let Some(value) = cached.and_then(|t| t.access_token_value()) else {
            return false;
        };
        added.push((name.clone(), value));
    }
    if let Some(value) = authorization {
        headers.insert(http::header::AUTHORIZATION, value);
    }
    for (name, value) in added {
        headers.insert(name, value);
    }
    true
}

/// For routes with `obo`: replaces `Authorization` with an On-Behalf-Of token for the upstream
/// (the inbound token never reaches it) and fills `obo_headers`; a session's user gets the
/// same targets from their refresh token. Any failure stops the request: it is never forwarded
/// without its token.
pub(super) async fn exchange_for_route(
    state: &AppState,
    route: &Route,
    user: Option<Authenticated>,
    headers: &mut HeaderMap,
) -> Result<(), Response<Body>> {
    let cfg = &route.config;
    // Whatever the client sent under an injected header's name is never passed on as ours.
    for (name, _) in &route.obo_headers {
        headers.remove(name);
    }
    if !route.exchanges() {
        return Ok(());
    }
    if let Some(Authenticated {
        session: Some(session),
        ..
    }) = &user
    {
        return exchange_for_session(state, route, session, headers).await;
    }
    let Some(Authenticated {
        claims,
        token: Some(inbound),
        ..
    }) = &user
    else {
        return Ok(());
    };
    let Some(exchanger) = &route.exchanger else {
        return Err(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the route's provider cannot exchange tokens",
        ));
    };
    // Read and checked when the request was authenticated: this cannot fail, and if it did,
    // the request must not go on with the user's own token.
    let Some(inbound) = inbound.token() else {
        return Err(json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the inbound token cannot be read again",
        ));
    };
    let fail = |e: ExchangeError| {
        let authorize = exchanger.provider().authorization_endpoint();
        obo_error(&e, authorize.as_ref().map(url::Url::as_str))
    };
    if let Some(target) = &cfg.obo {
        let token = exchanger
            .on_behalf_of_subject(claims, inbound, target, false)
            .await
            .map_err(fail)?;
        headers.insert(http::header::AUTHORIZATION, token.authorization());
    }
    for (name, target) in &route.obo_headers {
        let token = exchanger
            .on_behalf_of_subject(claims, inbound, target, false)
            .await
            .map_err(fail)?;
        let Some(value) = token.access_token_value() else {
            return Err(json_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the identity provider returned an unusable token",
            ));
        };
        headers.insert(name.clone(), value);
    }
    Ok(())
}

/// [`exchange_for_route`] for a session's user: each target redeemed from their refresh token.
async fn exchange_for_session(
    state: &AppState,
    route: &Route,
    user: &crate::session::SessionUser,
    headers: &mut HeaderMap,
) -> Result<(), Response<Body>> {
    let Some(sessions) = &state.sessions else {
        return Ok(());
    };
    let targets = route
        .config
        .obo
        .iter()
        .map(|t| (http::header::AUTHORIZATION, t, true))
        .chain(route.obo_headers.iter().map(|(h, t)| (h.clone(), t, false)));
    for (name, target, bearer) in targets {
        let token = sessions
            .token_for(user, target)
            .await
            .map_err(|e| session_failure(state, &sessions.provider, &e))?;
        let value = if bearer {
            HeaderValue::from_str(&format!("Bearer {}", token.access_token))
        } else {
            HeaderValue::from_str(&token.access_token)
        };
        let Ok(value) = value else {
            return Err(json_error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the identity provider returned an unusable token",
            ));
        };
        headers.insert(name, value);
    }
    Ok(())
}

/// The answer when a session's user cannot get a route's token.
fn session_failure(
    state: &AppState,
    provider: &str,
    e: &crate::session::SessionError,
) -> Response<Body> {
    use crate::session::SessionError;
    match e {
        SessionError::Store(e) => crate::session::store_unavailable(e),
        SessionError::Ended => auth_error(&ValidationError::InvalidToken(
            "the session has ended; sign in again".into(),
        )),
        SessionError::Exchange(e) => {
            let authorize = state
                .provider(provider)
                .and_then(|(p, _)| p.authorization_endpoint());
            obo_error(e, authorize.as_ref().map(url::Url::as_str))
        }
    }
}

/// For a route with `auth_context`: the claims challenge for a token whose `acrs` lacks it.
fn missing_auth_context(
    state: &AppState,
    route: &Route,
    claims: &Claims,
) -> Option<Response<Body>> {
    let wanted = route.config.auth_context.as_deref()?;
    if crate::validate::has_auth_context(claims, wanted) {
        return None;
    }
    let authorize = state
        .provider(claims.provider())
        .and_then(|(p, _)| p.authorization_endpoint());
    Some(crate::validate::auth_context_challenge(
        wanted,
        authorize.as_ref().map(url::Url::as_str),
    ))
}
