//! [`Sessions`]: the session's user for the gate and forward-auth (cookie -> store -> claims),
//! kept alive and refreshed, and the tokens a session route's `obo` needs. It takes what it
//! works with when built, so it depends on no server state.

use std::sync::Arc;

use http::{HeaderMap, Method, header};
use serde_json::{Map, Value};
use url::Url;

use super::cookie;
use crate::config::SessionConfig;
use crate::delegation::RefreshFlights;
use crate::delegation::{self, DelegatedToken, DelegationError};
use crate::exchange::Exchanger;
use crate::store::{Sealer, SessionKey, SessionRecord, StoreError, TokenStore};
use crate::util::now;
use crate::validate::Claims;

/// What the session endpoints and the gate share: the settings, the provider users sign in
/// with, and the key sealing sign-in cookies.
pub(crate) struct Sessions {
    pub(crate) config: SessionConfig,
    /// The provider's configured name.
    pub(crate) provider: String,
    /// `public_url`, the origin sessions live on.
    pub(crate) origin: Url,
    /// Seals the sign-in cookie: the store's key, so a callback reaching another replica opens
    /// it too.
    sealer: Sealer,
    /// `jti`s of logout tokens acted on, kept until the token expires (OpenID Connect
    /// Back-Channel Logout 1.0 §2.6 asks receivers to refuse a replay).
    seen_logout_tokens: moka::sync::Cache<String, u64>,
    /// Where sessions and the users' tokens are kept.
    store: Arc<dyn TokenStore>,
    /// The provider's exchanger, `None` when it has no client credential (then no sign-in).
    exchanger: Option<Exchanger>,
    /// Shared with the delegated API: one refresh at a time per user and target.
    flights: RefreshFlights,
}

/// What [`Sessions`] works with, from the server's state of the same generation.
pub(crate) struct SessionParts {
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) exchanger: Option<Exchanger>,
    pub(crate) flights: RefreshFlights,
}

/// A request's signed-in user, from its session cookie.
pub(crate) struct SessionUser {
    pub(crate) key: SessionKey,
    pub(crate) record: SessionRecord,
    /// The session's claims, shaped as a token's so route checks and identity headers apply.
    pub(crate) claims: Claims,
}

/// Why the session could not be used for a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The store did not answer: the request cannot be judged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The user's grant is dead or gone: the session has been ended.
    #[error("the session has ended; sign in again")]
    Ended,
    /// A token for the route could not be had from the identity provider.
    #[error(transparent)]
    Exchange(crate::exchange::ExchangeError),
}

impl Sessions {
    /// The sessions of `config` (enabled), with `sealer` for sign-in cookies.
    pub(crate) fn new(
        config: &SessionConfig,
        provider: String,
        sealer: Sealer,
        parts: SessionParts,
    ) -> Option<Self> {
        Some(Self {
            origin: config.public_url.clone()?,
            config: config.clone(),
            provider,
            sealer,
            seen_logout_tokens: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .expire_after(UntilExpiry)
                .build(),
            store: parts.store,
            exchanger: parts.exchanger,
            flights: parts.flights,
        })
    }

    /// The same sessions, remembering the logout tokens `old` (the previous configuration's)
    /// acted on.
    pub(crate) fn keeping_seen_logouts_of(self, old: &Sessions) -> Self {
        Self {
            seen_logout_tokens: old.seen_logout_tokens.clone(),
            ..self
        }
    }

    /// Where sessions and the users' tokens are kept.
    pub(crate) fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }

    /// The provider's exchanger (`None`: no client credential).
    pub(crate) fn exchanger(&self) -> Option<&Exchanger> {
        self.exchanger.as_ref()
    }

    /// Records a logout token's `jti`; false when it was seen before (a replay).
    pub(crate) fn first_sight(&self, jti: &str, exp: u64) -> bool {
        self.seen_logout_tokens
            .entry(jti.to_owned())
            .or_insert(exp)
            .is_fresh()
    }

    /// The key sealing sign-in cookies (kept across reloads).
    pub(crate) fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// The signed-in user of this request, if its session cookie names a live session. Slides
    /// the idle timeout, and refreshes the user's tokens once they are within `refresh_margin`
    /// of expiry: a refresh the IdP refuses for good ends the session.
    pub(crate) async fn current(
        &self,
        headers: &HeaderMap,
    ) -> Result<Option<SessionUser>, StoreError> {
        let Some(id) = cookie::read(headers, self.config.cookie_name()) else {
            return Ok(None);
        };
        if !cookie::is_random_id(id) {
            return Ok(None);
        }
        let store = &self.store;
        let key = SessionKey::from_cookie_id(id);
        let Some(mut record) = store.get_session(&self.provider, &key).await? else {
            return Ok(None);
        };
        let now = now();
        let mut changed = false;
        if record.access_expires_at <= now + self.config.refresh_margin.as_secs() {
            match self.keep_alive(&record).await {
                Ok(expires_at) => {
                    record.access_expires_at = expires_at;
                    changed = true;
                }
                Err(SessionError::Ended) => {
                    store.delete_session(&self.provider, &key).await?;
                    count("grant_ended", 1);
                    return Ok(None);
                }
                Err(SessionError::Store(e)) => return Err(e),
                // The IdP is down or slow: the session stays valid until it says otherwise.
                Err(SessionError::Exchange(e)) => {
                    tracing::warn!(error = %e, "session: could not refresh the user's tokens; the session stays");
                }
            }
        }
        // The idle deadline moves forward at most every tenth of the timeout: a store write per
        // request would cost more than the precision is worth.
        let idle = self.config.idle_timeout.as_secs();
        let slid = (now + idle).min(record.expires_at);
        if changed || slid > record.idle_expires_at + idle / 10 {
            record.idle_expires_at = slid;
            // Only while it still exists: a logout that ended it meanwhile stays done.
            if !store.update_session(&self.provider, &key, &record).await? {
                return Ok(None);
            }
        }
        let claims = session_claims(&self.provider, &record);
        Ok(Some(SessionUser {
            key,
            record,
            claims,
        }))
    }

    /// A delegated token for `target` from the session user's refresh token (a route's `obo`
    /// or `obo_headers`); a dead grant ends the session.
    pub(crate) async fn token_for(
        &self,
        user: &SessionUser,
        target: &str,
    ) -> Result<DelegatedToken, SessionError> {
        let result = self.delegated(&user.record.oid, target).await;
        if matches!(result, Err(SessionError::Ended)) {
            self.store.delete_session(&self.provider, &user.key).await?;
            count("grant_ended", 1);
        }
        result
    }

    /// Ends the session in the store and forgets the user's tokens.
    pub(crate) async fn end(&self, key: &SessionKey, oid: &str) -> Result<(), StoreError> {
        let store = &self.store;
        store.delete_session(&self.provider, key).await?;
        let _guard = delegation::lock_user(store, &self.provider, oid).await;
        store.delete(&self.provider, oid).await?;
        Ok(())
    }

    /// Where a browser without a session goes: `/oauth2/start` with `rd` = where it was going.
    pub(crate) fn sign_in_url(&self, rd: &str) -> String {
        let mut url = self
            .origin
            .join("/oauth2/start")
            .unwrap_or_else(|_| self.origin.clone());
        url.query_pairs_mut().append_pair("rd", rd);
        url.into()
    }

    /// The callback URL registered at the IdP.
    pub(crate) fn callback_url(&self) -> String {
        self.origin
            .join("/oauth2/callback")
            .map(String::from)
            .unwrap_or_default()
    }

    /// Keeps the user's tokens fresh: their access token is used as long as it has more than
    /// the margin left, else redeemed once from the refresh token. The new expiry.
    async fn keep_alive(&self, record: &SessionRecord) -> Result<u64, SessionError> {
        let target = if record.scopes.is_empty() {
            self.config.scopes.join(" ")
        } else {
            record.scopes.join(" ")
        };
        let token = self.delegated(&record.oid, &target).await?;
        Ok(token.expires_at)
    }

    async fn delegated(&self, oid: &str, target: &str) -> Result<DelegatedToken, SessionError> {
        let store = &self.store;
        let Some(exchanger) = &self.exchanger else {
            return Err(SessionError::Exchange(
                crate::exchange::ExchangeError::NoTokenEndpoint,
            ));
        };
        let Some(tokens) = store.get_by_oid(&self.provider, oid).await? else {
            return Err(SessionError::Ended);
        };
        let margin = self.config.refresh_margin.as_secs();
        delegation::token_for(
            &self.flights,
            store.clone(),
            exchanger.clone(),
            tokens,
            target.to_owned(),
            margin,
        )
        .await
        .map_err(|e| match &*e {
            DelegationError::InteractionRequired | DelegationError::UnknownUser => {
                SessionError::Ended
            }
            DelegationError::Store(e) => {
                SessionError::Store(StoreError::Unavailable(e.to_string()))
            }
            DelegationError::Exchange(e) => SessionError::Exchange(e.clone()),
            DelegationError::Aborted => {
                SessionError::Exchange(crate::exchange::ExchangeError::Upstream {
                    message: "the token refresh failed unexpectedly".into(),
                    timeout: false,
                })
            }
        })
    }
}

/// Whether a request is a browser's top-level navigation (`GET`/`HEAD` asking for HTML), the
/// one kind of request a redirect to sign in helps; an API call gets `401` instead.
pub(crate) fn is_navigation(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD)
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .any(|v| memchr::memmem::find(v.as_bytes(), b"text/html").is_some())
}

/// CSRF defence for a session-authenticated request: a method that changes state must come
/// from this origin. Browsers say so in `Sec-Fetch-Site` (Fetch Metadata, `same-origin`, or
/// `none` for a user's own navigation) or, where older, in `Origin` (RFC 6454 §7).
pub(crate) fn is_same_origin_write(method: &Method, headers: &HeaderMap, origin: &Url) -> bool {
    if matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        return true;
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    let own = origin.origin().ascii_serialization();
    headers
        .get(header::ORIGIN)
        .is_some_and(|o| o.as_bytes() == own.as_bytes())
}

/// The claims of a session, shaped like a token's: the ID token's user claims, `scp` from the
/// scopes granted at sign-in and `exp` the session's end.
fn session_claims(provider: &str, record: &SessionRecord) -> Claims {
    let mut map: Map<String, Value> = record.claims.clone();
    map.insert("scp".into(), Value::String(record.scopes.join(" ")));
    map.insert("exp".into(), Value::from(record.expires_at));
    Claims::from_map(provider, map)
}

/// The ID token claims a session keeps: who the user is, not the token's own bookkeeping.
pub(crate) fn user_claims(id_token: &Claims) -> Map<String, Value> {
    const TOKEN_ONLY: [&str; 8] = [
        "nonce", "at_hash", "c_hash", "exp", "iat", "nbf", "aud", "uti",
    ];
    id_token
        .as_map()
        .iter()
        .filter(|(k, _)| !TOKEN_ONLY.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The store failed: nothing was decided, the browser may try again.
pub(crate) fn store_unavailable(e: &StoreError) -> http::Response<axum::body::Body> {
    tracing::error!(error = %e, "session: token store failed");
    crate::response::json_error(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the session store is unavailable",
    )
}

/// Keeps a seen `jti` until its token expires (and at least a minute, for clock skew).
struct UntilExpiry;

impl moka::Expiry<String, u64> for UntilExpiry {
    fn expire_after_create(
        &self,
        _: &String,
        exp: &u64,
        _: std::time::Instant,
    ) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_secs(
            exp.saturating_sub(now()).max(60),
        ))
    }
}

/// Counts session events for `tollgate_sessions_total{event}`: `sign_in`, `sign_out`,
/// `backchannel_logout` and `frontchannel_logout` (sessions ended), `grant_ended` (a refresh
/// refused for good ended it).
pub(crate) fn count(event: &'static str, n: u64) {
    metrics::counter!("tollgate_sessions_total", "event" => event).increment(n);
}
