//! Delegated tokens of users who signed in through the login proxy: building their stored record
//! from a login, serving its access token while usable, and refreshing it once per target.
//!
//! Refreshes of one user are serialised and re-read the record first: refresh tokens rotate, and
//! an IdP that follows RFC 9700 §4.14.2 revokes the whole grant when a rotated token is replayed,
//! so two redemptions of one refresh token (for two targets, or racing a logout) must not happen.

use std::borrow::Cow;
use std::sync::Arc;

use crate::exchange::{ExchangeError, Exchanger, IdpError};
use crate::store::{StoreError, TokenStore, UserLock, UserTokens};
use crate::util::now;
use crate::validate::Claims;

/// Refresh tokens without a stated lifetime get Entra's default sliding window (90 days).
pub(crate) const DEFAULT_REFRESH_LIFETIME: u64 = 90 * 24 * 3600;

/// Refreshes in flight, by [`flight_key`]: requests that saw the same stored refresh token for
/// the same target wait on one redemption and share its outcome.
pub(crate) type RefreshFlights = moka::future::Cache<[u8; 32], (String, u64)>;

/// A delegated access token and when it expires (unix seconds).
#[derive(Debug)]
pub(crate) struct DelegatedToken {
    pub(crate) access_token: String,
    pub(crate) expires_at: u64,
}

/// Why no delegated token could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DelegationError {
    /// The refresh token is dead (revoked, expired): the user must sign in again.
    #[error("the stored refresh token is no longer valid")]
    InteractionRequired,
    /// No tokens are stored for the user (never signed in, signed out, or forgotten).
    #[error("no tokens are stored for this user")]
    UnknownUser,
    #[error(transparent)]
    Exchange(ExchangeError),
    #[error(transparent)]
    Store(StoreError),
    /// The refresh task ended without an outcome (it panicked).
    #[error("the token refresh failed unexpectedly")]
    Aborted,
}

/// The user's delegated token for `target`: the stored access token while it has more than
/// `margin` seconds left and covers `target`, else one redemption of the stored refresh token
/// whose rotated tokens replace the stored ones.
///
/// The error is shared: every request waiting on the same refresh gets the same failure.
pub(crate) async fn token_for(
    flights: &RefreshFlights,
    store: Arc<dyn TokenStore>,
    exchanger: Exchanger,
    record: UserTokens,
    target: String,
    margin: u64,
) -> Result<DelegatedToken, Arc<DelegationError>> {
    if usable(&record, &target, margin) {
        return Ok(DelegatedToken {
            access_token: record.access_token,
            expires_at: record.access_token_expires_at,
        });
    }
    let provider = exchanger.provider().name().to_owned();
    let key = flight_key(&provider, &record.oid, &target, &record.refresh_token);
    let job = Refresh {
        store,
        exchanger,
        provider,
        oid: record.oid,
        target,
        margin,
    };
    let flight = flights.try_get_with(key, async move {
        // Spawned: a client that hangs up must not cancel a redemption after the IdP rotated the
        // refresh token but before the new one is stored.
        tokio::spawn(job.run())
            .await
            .unwrap_or(Err(DelegationError::Aborted))
    });
    let (access_token, expires_at) = flight.await?;
    Ok(DelegatedToken {
        access_token,
        expires_at,
    })
}

/// What a successful login's token response (RFC 6749 §5.1) gives the stored record.
pub(crate) struct LoginGrant<'a> {
    pub(crate) access_token: &'a str,
    pub(crate) refresh_token: &'a str,
    /// `scope`, space separated.
    pub(crate) scope: Option<&'a str>,
    pub(crate) expires_in: u64,
    /// `refresh_token_expires_in`, which Entra mostly leaves out.
    pub(crate) refresh_token_expires_in: Option<u64>,
}

/// The record to store for a user whose login gave `grant`, `id_token` being the validated ID
/// token of the same response; the error says why there is none.
pub(crate) fn login_record(
    grant: &LoginGrant<'_>,
    id_token: &Claims,
) -> Result<UserTokens, &'static str> {
    let oid = id_token.oid().ok_or("the ID token has no oid")?.to_owned();
    let refresh_lifetime = grant
        .refresh_token_expires_in
        .unwrap_or(DEFAULT_REFRESH_LIFETIME);
    Ok(UserTokens {
        oid,
        tid: id_token.tid().unwrap_or_default().to_owned(),
        upn: id_token.username().map(str::to_owned),
        access_token: grant.access_token.to_owned(),
        access_token_expires_at: now() + grant.expires_in,
        scopes: grant
            .scope
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        refresh_token: grant.refresh_token.to_owned(),
        refresh_token_expires_at: now() + refresh_lifetime,
        sid: id_token
            .get("sid")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned),
    })
}

/// Stores a login's record, replacing the user's, under the user's lock. `refreshed`: the
/// record comes from the app's refresh grant, which continues the session its code grant began;
/// an ID token there need not name the session again (OIDC Core §12.2), so a stored `sid` is
/// kept rather than cleared (a logout hint must still name that session).
pub(crate) async fn store_login(
    store: &Arc<dyn TokenStore>,
    provider: &str,
    record: &UserTokens,
    refreshed: bool,
) -> Result<(), StoreError> {
    let _guard = lock_user(store, provider, &record.oid).await;
    if refreshed
        && record.sid.is_none()
        && let Some(stored) = store.get_by_oid(provider, &record.oid).await?
        && stored.sid.is_some()
    {
        let record = UserTokens {
            sid: stored.sid,
            ..record.clone()
        };
        return store.put(provider, &record).await;
    }
    store.put(provider, record).await
}

/// Takes the lock that serialises every write of one user's record in `store` (refresh, login,
/// logout, deletion). Hold the guard across the read-modify-write.
pub(crate) async fn lock_user(store: &Arc<dyn TokenStore>, provider: &str, oid: &str) -> UserLock {
    store.lock_user(provider, oid).await
}

/// Whether the granted scopes cover `target`: the exact scope, or for `<resource>/.default` any
/// scope of that resource. Graph scopes compare in their qualified form, since Entra may grant
/// them short (`User.Read`) or name Graph by its client id.
pub(crate) fn covers(scopes: &[String], target: &str) -> bool {
    let granted: Vec<Cow<'_, str>> = scopes.iter().map(|s| qualify(s)).collect();
    target.split_whitespace().map(qualify).all(|t| {
        granted.contains(&t)
            || t.strip_suffix("/.default").is_some_and(|resource| {
                granted.iter().any(|s| {
                    s.strip_prefix(resource)
                        .is_some_and(|rest| rest.starts_with('/'))
                })
            })
    })
}

/// One redemption of a user's refresh token for a target.
struct Refresh {
    store: Arc<dyn TokenStore>,
    exchanger: Exchanger,
    provider: String,
    oid: String,
    target: String,
    margin: u64,
}

impl Refresh {
    async fn run(self) -> Result<(String, u64), DelegationError> {
        let _guard = lock_user(&self.store, &self.provider, &self.oid).await;
        // Read again under the lock: a refresh for another target may have rotated the refresh
        // token meanwhile, or a logout removed the user.
        let record = match self.store.get_by_oid(&self.provider, &self.oid).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(DelegationError::UnknownUser),
            Err(e) => return Err(DelegationError::Store(e)),
        };
        if usable(&record, &self.target, self.margin) {
            return Ok((record.access_token, record.access_token_expires_at));
        }
        let refreshed = self
            .exchanger
            .refresh(&record.refresh_token, &self.target, Some(&record.tid))
            .await;
        let t = match refreshed {
            Ok(t) => t,
            Err(ExchangeError::Idp(e)) if grant_is_dead(&e) => {
                // Revoked, expired, password changed: forget it so the app sends the user
                // through login again.
                if let Err(e) = self.store.delete(&self.provider, &self.oid).await {
                    tracing::warn!(error = %e, "delegated: could not delete a dead refresh token");
                }
                return Err(DelegationError::InteractionRequired);
            }
            Err(e) => return Err(DelegationError::Exchange(e)),
        };
        let scopes = match &t.scope {
            Some(s) => s.split_whitespace().map(str::to_owned).collect(),
            None => vec![self.target.clone()],
        };
        let rotated = t.refresh_token.is_some();
        let updated = UserTokens {
            access_token: t.access_token,
            access_token_expires_at: now() + t.expires_in,
            scopes,
            refresh_token: t.refresh_token.unwrap_or(record.refresh_token),
            refresh_token_expires_at: if rotated {
                now() + DEFAULT_REFRESH_LIFETIME
            } else {
                record.refresh_token_expires_at
            },
            ..record
        };
        if let Err(e) = self.store.put(&self.provider, &updated).await {
            // The IdP has rotated the refresh token and the new one is lost: say so loudly.
            tracing::error!(error = %e, oid = %updated.oid, "delegated: the rotated refresh token could not be stored");
            return Err(DelegationError::Store(e));
        }
        Ok((updated.access_token, updated.access_token_expires_at))
    }
}

/// `invalid_grant` means a dead refresh token only without a challenge: with `claims` or an
/// interactive `suberror` (MFA, consent, Conditional Access) the grant is alive and the user
/// only has to step up for this target (Microsoft identity platform, "Handle errors and
/// exceptions in MSAL": `invalid_grant` suberrors; "Claims challenges").
fn grant_is_dead(e: &IdpError) -> bool {
    e.error == "invalid_grant"
        && e.claims.is_none()
        && e.suberror.as_deref().is_none_or(|s| {
            matches!(
                s,
                "bad_token" | "token_expired" | "client_mismatch" | "user_password_expired"
            )
        })
}

/// The stored access token still has more than `margin` seconds and covers `target`.
fn usable(record: &UserTokens, target: &str, margin: u64) -> bool {
    record.access_token_expires_at > now() + margin && covers(&record.scopes, target)
}

const GRAPH_APP_ID_URI: &str = "https://graph.microsoft.com";
const GRAPH_CLIENT_ID: &str = "00000003-0000-0000-c000-000000000000";
const OIDC_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];

/// A scope in its qualified form: a bare name (other than the OIDC scopes) is Microsoft Graph's,
/// as is one prefixed with Graph's client id.
fn qualify(scope: &str) -> Cow<'_, str> {
    if OIDC_SCOPES.contains(&scope) {
        return Cow::Borrowed(scope);
    }
    match scope.rsplit_once('/') {
        None => Cow::Owned(format!("{GRAPH_APP_ID_URI}/{scope}")),
        Some((resource, name)) if resource.eq_ignore_ascii_case(GRAPH_CLIENT_ID) => {
            Cow::Owned(format!("{GRAPH_APP_ID_URI}/{name}"))
        }
        Some(_) => Cow::Borrowed(scope),
    }
}

fn flight_key(provider: &str, oid: &str, target: &str, refresh_token: &str) -> [u8; 32] {
    crate::util::sha256_of_parts(&[
        provider.as_bytes(),
        oid.as_bytes(),
        target.as_bytes(),
        refresh_token.as_bytes(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_refresh_grant_without_sid_keeps_the_session_a_code_grant_clears_it() {
        let store: Arc<dyn TokenStore> = Arc::new(crate::store::MemoryStore::new().unwrap());
        let record = |sid: Option<&str>, refresh: &str| UserTokens {
            oid: "oid-1".into(),
            tid: "tid-1".into(),
            upn: None,
            access_token: "at".into(),
            access_token_expires_at: now() + 3600,
            scopes: strings(&["openid"]),
            refresh_token: refresh.into(),
            refresh_token_expires_at: now() + 7200,
            sid: sid.map(str::to_owned),
        };
        let stored = || async { store.get_by_oid("p", "oid-1").await.unwrap().unwrap() };
        store_login(&store, "p", &record(Some("s1"), "rt1"), false)
            .await
            .unwrap();
        store_login(&store, "p", &record(None, "rt2"), true)
            .await
            .unwrap();
        let kept = stored().await;
        assert_eq!(
            (kept.sid.as_deref(), kept.refresh_token.as_str()),
            (Some("s1"), "rt2")
        );
        // A refresh that names a session names the current one.
        store_login(&store, "p", &record(Some("s2"), "rt3"), true)
            .await
            .unwrap();
        assert_eq!(stored().await.sid.as_deref(), Some("s2"));
        // A new sign-in is a new session: what it says, even nothing, replaces the old one.
        store_login(&store, "p", &record(None, "rt4"), false)
            .await
            .unwrap();
        assert_eq!(stored().await.sid, None);
    }

    #[test]
    fn scope_coverage() {
        let s = strings(&["api://a/access_as_user", "openid"]);
        assert!(covers(&s, "api://a/access_as_user"));
        assert!(covers(&s, "api://a/.default"));
        assert!(!covers(&s, "api://ab/.default"));
        assert!(!covers(&s, "api://b/.default"));
        assert!(!covers(&s, "api://a/write"));
        assert!(!covers(&s, "api://a/access_as_user api://a/write"));
    }

    #[test]
    fn graph_scopes_cover_in_any_spelling() {
        // Entra grants Graph scopes short; the target may name Graph by URI or client id.
        let short = strings(&["User.Read", "openid", "profile", "offline_access"]);
        assert!(covers(&short, "https://graph.microsoft.com/User.Read"));
        assert!(covers(&short, "https://graph.microsoft.com/.default"));
        assert!(covers(
            &short,
            "00000003-0000-0000-c000-000000000000/User.Read"
        ));
        assert!(covers(&short, "User.Read"));
        assert!(!covers(&short, "https://graph.microsoft.com/Mail.Read"));
        assert!(!covers(&short, "api://a/.default"));
        let long = strings(&["https://graph.microsoft.com/User.Read"]);
        assert!(covers(&long, "User.Read"));
        assert!(!covers(&long, "openid"));
    }

    fn idp(error: &str, suberror: Option<&str>, claims: Option<&str>) -> IdpError {
        IdpError {
            status: 400,
            error: error.into(),
            description: None,
            suberror: suberror.map(str::to_owned),
            claims: claims.map(str::to_owned),
            error_codes: vec![],
        }
    }

    #[test]
    fn only_a_dead_grant_forgets_the_user() {
        assert!(grant_is_dead(&idp("invalid_grant", None, None)));
        assert!(grant_is_dead(&idp(
            "invalid_grant",
            Some("bad_token"),
            None
        )));
        assert!(grant_is_dead(&idp(
            "invalid_grant",
            Some("token_expired"),
            None
        )));
        // Step-up and consent: the refresh token still works for other targets.
        assert!(!grant_is_dead(&idp(
            "invalid_grant",
            Some("basic_action"),
            Some("{}")
        )));
        assert!(!grant_is_dead(&idp("invalid_grant", None, Some("{}"))));
        assert!(!grant_is_dead(&idp(
            "invalid_grant",
            Some("consent_required"),
            None
        )));
        assert!(!grant_is_dead(&idp("interaction_required", None, None)));
        assert!(!grant_is_dead(&idp("invalid_scope", None, None)));
    }
}
