//! Logouts the IdP starts: OpenID Connect Back-Channel Logout 1.0 (a signed `logout_token`
//! POSTed server to server, which ends every session of its `sid`, or of its `sub`, on every
//! replica sharing the store) and Front-Channel Logout 1.0 (the IdP's logout page loads
//! `/oauth2/frontchannel_logout?iss=&sid=` in an iframe).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;

use crate::response::NO_STORE;
use crate::response::json_error;
use crate::session::{cookie, store_unavailable};
use crate::state::AppState;
use crate::store::SessionKey;

/// The `events` member a logout token must carry (§2.4).
const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// `POST /oauth2/backchannel_logout`: validates the `logout_token` (signature, `iss`, `aud`,
/// `exp`, `iat`, the logout event, no `nonce`, a `jti` not seen before; §2.6) and ends the
/// sessions it names. `200` when done, `400` with an OAuth error body when refused (§2.8).
pub(super) async fn backchannel(State(state): State<Arc<AppState>>, body: Bytes) -> Response<Body> {
    let Some(sessions) = &state.sessions else {
        return refuse("sessions are not enabled");
    };
    let Some(token) = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "logout_token")
        .map(|(_, v)| v.into_owned())
    else {
        return refuse("the request has no logout_token");
    };
    let Some((provider, validator)) = state.provider(&sessions.provider) else {
        return refuse("sessions are not enabled");
    };
    let store = sessions.store();
    let claims = match validator
        .validate_id_token(&token, &provider.config().client_id, false)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "back-channel logout: logout token refused");
            return refuse("the logout token is not valid");
        }
    };
    let logout = match LogoutClaims::of(&claims) {
        Ok(l) => l,
        Err(why) => {
            tracing::warn!(reason = why, "back-channel logout: logout token refused");
            return refuse(why);
        }
    };
    if !sessions.first_sight(logout.jti, logout.exp) {
        tracing::warn!("back-channel logout: a logout token was replayed");
        return refuse("the logout token was already used");
    }
    match store
        .end_sessions(&sessions.provider, logout.sid, logout.sub)
        .await
    {
        Ok(ended) => {
            tracing::info!(ended, "back-channel logout: sessions ended");
            crate::session::sessions::count("backchannel_logout", ended);
            let mut resp = Response::new(Body::empty());
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, NO_STORE.clone());
            resp
        }
        Err(e) => store_unavailable(&e),
    }
}

#[derive(Deserialize)]
pub(super) struct FrontChannelQuery {
    iss: Option<String>,
    sid: Option<String>,
}

/// `GET /oauth2/frontchannel_logout?iss=&sid=`: ends every session of `sid` when `iss` is the
/// provider's issuer (§2: both are sent together), and this browser's own session if its
/// cookie came along. Answers an empty page that must not be cached (§2).
pub(super) async fn frontchannel(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(q): Query<FrontChannelQuery>,
) -> Response<Body> {
    let Some(sessions) = &state.sessions else {
        return refuse("sessions are not enabled");
    };
    let store = sessions.store();
    match (&q.iss, &q.sid) {
        (Some(iss), Some(sid)) => {
            let issuer = state
                .provider(&sessions.provider)
                .and_then(|(p, _)| p.metadata())
                .map(|m| m.issuer.clone());
            if !issuer.is_some_and(|i| issuer_matches(&i, iss)) {
                return refuse("iss is not this provider's issuer");
            }
            match store
                .end_sessions(&sessions.provider, Some(sid), None)
                .await
            {
                Ok(ended) => crate::session::sessions::count("frontchannel_logout", ended),
                Err(e) => return store_unavailable(&e),
            }
        }
        (None, None) => {}
        _ => return refuse("iss and sid come together"),
    }
    if let Some(id) = cookie::read(&headers, sessions.config.cookie_name())
        && cookie::is_random_id(id)
        && let Err(e) = store
            .delete_session(&sessions.provider, &SessionKey::from_cookie_id(id))
            .await
    {
        return store_unavailable(&e);
    }
    let mut resp = Response::new(Body::empty());
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, NO_STORE.clone());
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.append(header::SET_COOKIE, cookie::clear_session(&sessions.config));
    resp
}

/// What a validated logout token says, once §2.6's checks beyond the signature passed.
struct LogoutClaims<'a> {
    sid: Option<&'a str>,
    sub: Option<&'a str>,
    jti: &'a str,
    exp: u64,
}

impl<'a> LogoutClaims<'a> {
    fn of(claims: &'a crate::validate::Claims) -> Result<Self, &'static str> {
        let s = |name: &str| claims.get(name).and_then(Value::as_str);
        if claims.get("iat").and_then(Value::as_u64).is_none() {
            return Err("the logout token has no iat");
        }
        let event = claims
            .get("events")
            .and_then(Value::as_object)
            .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT));
        if !event.is_some_and(Value::is_object) {
            return Err("the logout token does not declare the back-channel logout event");
        }
        if claims.get("nonce").is_some() {
            return Err("a logout token must not carry a nonce");
        }
        let (sid, sub) = (s("sid"), s("sub"));
        if sid.is_none() && sub.is_none() {
            return Err("the logout token names neither a sid nor a sub");
        }
        let jti = s("jti").ok_or("the logout token has no jti")?;
        Ok(Self {
            sid,
            sub,
            jti,
            exp: claims.expires_at(),
        })
    }
}

/// `iss` against the provider's issuer, which may be an Entra `{tenantid}` template.
fn issuer_matches(issuer: &str, iss: &str) -> bool {
    match issuer.split_once("{tenantid}") {
        None => issuer == iss,
        Some((before, after)) => iss
            .strip_prefix(before)
            .and_then(|rest| rest.strip_suffix(after))
            .is_some_and(crate::config::is_guid),
    }
}

fn refuse(why: &str) -> Response<Body> {
    json_error(StatusCode::BAD_REQUEST, "invalid_request", why)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::validate::Claims;

    fn claims(v: Value) -> Claims {
        Claims::from_map("entra_id", v.as_object().unwrap().clone())
    }

    fn logout_token() -> Value {
        json!({
            "iss": "https://idp.example", "aud": "app", "iat": 1_900_000_000u64,
            "exp": 1_900_000_120u64, "jti": "j1", "sid": "s1", "sub": "u1",
            "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        })
    }

    #[test]
    fn a_logout_token_needs_its_event_iat_jti_and_a_subject_and_no_nonce() {
        let ok = claims(logout_token());
        let l = LogoutClaims::of(&ok).unwrap();
        assert_eq!((l.sid, l.sub, l.jti), (Some("s1"), Some("u1"), "j1"));
        let without = |name: &str| {
            let mut t = logout_token();
            t.as_object_mut().unwrap().remove(name);
            t
        };
        for (token, why) in [
            (
                without("events"),
                "the logout token does not declare the back-channel logout event",
            ),
            (without("iat"), "the logout token has no iat"),
            (without("jti"), "the logout token has no jti"),
            (
                {
                    let mut t = without("sid");
                    t.as_object_mut().unwrap().remove("sub");
                    t
                },
                "the logout token names neither a sid nor a sub",
            ),
            (
                {
                    let mut t = logout_token();
                    t["nonce"] = json!("n");
                    t
                },
                "a logout token must not carry a nonce",
            ),
            (
                {
                    let mut t = logout_token();
                    t["events"] = json!({"http://schemas.openid.net/event/other": {}});
                    t
                },
                "the logout token does not declare the back-channel logout event",
            ),
        ] {
            assert_eq!(LogoutClaims::of(&claims(token)).err(), Some(why));
        }
    }

    #[test]
    fn issuer_templates_match_one_tenant_segment() {
        let t = "https://login.microsoftonline.com/{tenantid}/v2.0";
        assert!(issuer_matches(
            t,
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
        ));
        assert!(!issuer_matches(
            t,
            "https://login.microsoftonline.com/evil/v2.0"
        ));
        assert!(issuer_matches("https://idp.example", "https://idp.example"));
        assert!(!issuer_matches(
            "https://idp.example",
            "https://idp.example/"
        ));
    }
}
