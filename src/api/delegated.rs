//! Delegated tokens for users who logged in through the login proxy: the stored access token
//! while it has more than `expiry_margin` left and covers the target, else a refresh-token
//! redemption whose rotated tokens replace the stored ones.
//!
//! Refreshes of one user are serialised and re-read the record first: refresh tokens rotate, and
//! an IdP that follows RFC 9700 §4.14.2 revokes the whole grant when a rotated token is replayed,
//! so two redemptions of one refresh token (for two targets, or racing a logout) must not happen.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, PoisonError, Weak};

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::body::ApiBody;
use super::{error, exchange_error, exchanger};
use crate::config::{ProviderConfig, is_guid};
use crate::exchange::{ExchangeError, Exchanger, IdpError};
use crate::provider::Provider;
use crate::server::state::AppState;
use crate::store::{StoreError, TokenStore, UserTokens};
use crate::util::{now, sha256};

/// Refresh tokens without a stated lifetime get Entra's default sliding window (90 days).
pub(crate) const DEFAULT_REFRESH_LIFETIME: u64 = 90 * 24 * 3600;

#[derive(Deserialize)]
pub(crate) struct DelegatedRequest {
    identity_provider: String,
    target: String,
    #[serde(default)]
    user_oid: Option<String>,
    #[serde(default)]
    user_upn: Option<String>,
    /// The user's tenant: which tenant's `user_upn` is meant (needed when the provider accepts
    /// several), and with `user_oid` a check that the user is of that tenant.
    #[serde(default)]
    user_tid: Option<String>,
}

pub(super) async fn delegated(
    State(state): State<Arc<AppState>>,
    ApiBody(req): ApiBody<DelegatedRequest>,
) -> Response {
    let store = match store(&state) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let x = match exchanger(&state, &req.identity_provider) {
        Ok(x) => x.clone(),
        Err(r) => return r,
    };
    let provider = x.provider().name().to_owned();
    let found = match (&req.user_oid, &req.user_upn) {
        (Some(oid), _) => store.get_by_oid(&provider, oid).await.map(|found| {
            found.filter(|r| {
                req.user_tid
                    .as_deref()
                    .is_none_or(|t| t.eq_ignore_ascii_case(&r.tid))
            })
        }),
        (None, Some(upn)) => {
            let tid = match upn_tenant(x.provider(), req.user_tid.as_deref()) {
                Ok(t) => t,
                Err(r) => return r,
            };
            store.get_by_upn(&provider, &tid, upn).await
        }
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "user_oid or user_upn is required",
            );
        }
    };
    let record = match found {
        Ok(Some(r)) => r,
        Ok(None) => return unknown_user(),
        Err(e) => return store_error(&e),
    };
    let margin = state.config.cache.expiry_margin.as_secs();
    if usable(&record, &req.target, margin) {
        return token(&record.access_token, record.access_token_expires_at);
    }
    // Requests that saw the same stored refresh token for the same target share one redemption.
    let key = flight_key(&provider, &record.oid, &req.target, &record.refresh_token);
    let job = Refresh {
        store,
        exchanger: x,
        provider,
        oid: record.oid,
        target: req.target,
        margin,
    };
    let flight = state.refresh_flights.try_get_with(key, async move {
        // Spawned: a client that hangs up must not cancel a redemption after the IdP rotated the
        // refresh token but before the new one is stored.
        tokio::spawn(job.run())
            .await
            .unwrap_or(Err(Flight::Aborted))
    });
    match flight.await {
        Ok((access, exp)) => token(&access, exp),
        Err(e) => match &*e {
            Flight::Interaction => error(
                StatusCode::BAD_REQUEST,
                "interaction_required",
                "the stored refresh token is no longer valid: the user must log in again",
            ),
            Flight::Unknown => unknown_user(),
            Flight::Exchange(e) => exchange_error(e),
            Flight::Store(e) => store_error(e),
            Flight::Aborted => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token refresh failed unexpectedly",
            ),
        },
    }
}

#[derive(Deserialize)]
pub(super) struct ForgetQuery {
    #[serde(default)]
    identity_provider: Option<String>,
}

pub(super) async fn forget_user(
    State(state): State<Arc<AppState>>,
    Path(oid): Path<String>,
    Query(q): Query<ForgetQuery>,
) -> Response {
    let store = match store(&state) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let providers: Vec<String> = match &q.identity_provider {
        Some(name) => match state.config.provider_named(name) {
            Some(p) => vec![p.name.clone()],
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("identity provider '{name}' is not enabled"),
                );
            }
        },
        None => state
            .config
            .providers
            .iter()
            .map(|p| p.name.clone())
            .collect(),
    };
    for p in providers {
        // Under the user's lock, so a refresh in flight cannot store the user again afterwards.
        let _guard = lock_user(&store, &p, &oid).await;
        if let Err(e) = store.delete(&p, &oid).await {
            return store_error(&e);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Takes the lock that serialises every write of one user's record in `store` (refresh, login,
/// logout, deletion). Hold the guard across the read-modify-write.
pub(crate) async fn lock_user(
    store: &Arc<dyn TokenStore>,
    provider: &str,
    oid: &str,
) -> OwnedMutexGuard<()> {
    // Process-wide, keyed by store instance too: several servers in one process (tests,
    // embedding) must not wait on each other. Entries are weak, so the map only holds users whose
    // lock is alive right now.
    static LOCKS: LazyLock<std::sync::Mutex<UserLocks>> = LazyLock::new(Default::default);
    let instance = (Arc::as_ptr(store) as *const () as usize).to_string();
    let key = len_prefixed_hash(&[&instance, provider, oid]);
    let lock = {
        let mut locks = LOCKS.lock().unwrap_or_else(PoisonError::into_inner);
        locks.retain(|_, l| l.strong_count() > 0);
        match locks.get(&key).and_then(Weak::upgrade) {
            Some(l) => l,
            None => {
                let l = Arc::new(Mutex::new(()));
                locks.insert(key, Arc::downgrade(&l));
                l
            }
        }
    };
    lock.lock_owned().await
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

/// Per-user locks by hashed (store instance, provider, oid).
type UserLocks = HashMap<[u8; 32], Weak<Mutex<()>>>;

/// The outcome of a refresh shared by every request waiting on it.
pub(crate) enum Flight {
    Interaction,
    Unknown,
    Exchange(ExchangeError),
    Store(StoreError),
    Aborted,
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
    async fn run(self) -> Result<(String, u64), Flight> {
        let _guard = lock_user(&self.store, &self.provider, &self.oid).await;
        // Read again under the lock: a refresh for another target may have rotated the refresh
        // token meanwhile, or a logout removed the user.
        let record = match self.store.get_by_oid(&self.provider, &self.oid).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Flight::Unknown),
            Err(e) => return Err(Flight::Store(e)),
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
                return Err(Flight::Interaction);
            }
            Err(e) => return Err(Flight::Exchange(e)),
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
            return Err(Flight::Store(e));
        }
        Ok((updated.access_token, updated.access_token_expires_at))
    }
}

/// `invalid_grant` means a dead refresh token only without a challenge: with `claims` or an
/// interactive `suberror` (MFA, consent, Conditional Access) the grant is alive and the user
/// only has to step up for this target (entra-reference §5.4, §5.5).
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
    len_prefixed_hash(&[provider, oid, target, refresh_token])
}

fn len_prefixed_hash(parts: &[&str]) -> [u8; 32] {
    let mut buf = Vec::new();
    for part in parts {
        buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
        buf.extend_from_slice(part.as_bytes());
    }
    sha256(&buf)
}

/// The tenant a lookup by UPN searches: a UPN names a user only within one tenant, so a
/// provider that accepts several tenants needs `user_tid`, and a `user_tid` the provider does not
/// accept is refused rather than searched.
fn upn_tenant(provider: &Provider, requested: Option<&str>) -> Result<String, Response> {
    let name = provider.name();
    let Some(metadata) = provider.metadata() else {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the identity provider's metadata is not loaded yet",
        ));
    };
    let tenants = provider_tenants(provider.config(), &metadata.issuer);
    let refused = || {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("user_tid is not a tenant identity provider '{name}' accepts"),
        )
    };
    match (tenants, requested) {
        (Tenants::One(own), None) => Ok(own),
        (Tenants::One(own), Some(t)) if own.eq_ignore_ascii_case(t) => Ok(own),
        (Tenants::One(_), Some(_)) => Err(refused()),
        (Tenants::Several(_), None) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "identity provider '{name}' accepts users of several tenants, and a UPN names a \
                 user only within one: give user_tid (the user's tenant id) with user_upn, or \
                 use user_oid"
            ),
        )),
        (Tenants::Several(Some(listed)), Some(t))
            if !listed.iter().any(|l| l.eq_ignore_ascii_case(t)) =>
        {
            Err(refused())
        }
        (Tenants::Several(_), Some("")) => Err(refused()),
        (Tenants::Several(_), Some(t)) => Ok(t.to_ascii_lowercase()),
    }
}

/// Which tenants' users a provider signs in.
#[derive(Debug, PartialEq)]
enum Tenants {
    /// One: its tenant id as tokens carry it (`tid`), or empty for a provider without tenants.
    One(String),
    /// Several: those of `allowed_tenants`, or any (`None`).
    Several(Option<Vec<String>>),
}

/// One tenant when `allowed_tenants` names exactly one, or when it is empty and every accepted
/// issuer is a fixed one of the same tenant; several otherwise. A fixed issuer's tenant is the
/// GUID in its path (`https://login.microsoftonline.com/<tid>/v2.0`, `https://sts.windows.net/<tid>/`),
/// and none (`""`, as its tokens carry no `tid`) for an issuer without one.
fn provider_tenants(cfg: &ProviderConfig, issuer: &str) -> Tenants {
    let listed = &cfg.allowed_tenants;
    if listed.iter().any(|t| t == "*") {
        return Tenants::Several(None);
    }
    match listed.as_slice() {
        [one] => return Tenants::One(one.to_ascii_lowercase()),
        [] => {}
        _ => return Tenants::Several(Some(listed.clone())),
    }
    let mut seen: Option<String> = None;
    for iss in std::iter::once(issuer).chain(cfg.additional_issuers.iter().map(String::as_str)) {
        if iss.contains("{tenantid}") {
            return Tenants::Several(None);
        }
        let tenant = issuer_tenant(iss);
        match &seen {
            Some(t) if *t != tenant => return Tenants::Several(None),
            _ => seen = Some(tenant),
        }
    }
    Tenants::One(seen.unwrap_or_default())
}

fn issuer_tenant(issuer: &str) -> String {
    url::Url::parse(issuer)
        .ok()
        .and_then(|u| {
            u.path_segments()?
                .find(|s| is_guid(s))
                .map(str::to_ascii_lowercase)
        })
        .unwrap_or_default()
}

fn store(state: &AppState) -> Result<Arc<dyn TokenStore>, Response> {
    state.store.clone().ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "delegated tokens need the login proxy: enable [login] and a [store]",
        )
    })
}

fn unknown_user() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "unknown_user",
        "no tokens are stored for this user: the user must log in through tollgate first",
    )
}

fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::Unavailable(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the token store is unavailable",
        ),
        _ => {
            tracing::error!(error = %e, "token store failure");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the stored tokens could not be read",
            )
        }
    }
}

fn token(access_token: &str, expires_at: u64) -> Response {
    super::token_answer(
        access_token,
        expires_at.saturating_sub(now()),
        crate::exchange::is_json_plain(access_token),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| (*s).to_owned()).collect()
    }

    fn provider(allowed: &[&str], additional: &[&str]) -> ProviderConfig {
        ProviderConfig {
            allowed_tenants: strings(allowed),
            additional_issuers: strings(additional),
            ..ProviderConfig::default()
        }
    }

    #[test]
    fn tenants_of_a_provider() {
        const T1: &str = "11111111-2222-3333-4444-555555555555";
        const T2: &str = "66666666-7777-8888-9999-000000000000";
        let entra = |t: &str| format!("https://login.microsoftonline.com/{t}/v2.0");
        let template = entra("{tenantid}");
        // A single-tenant app: the tenant of its issuer, whichever form.
        assert_eq!(
            provider_tenants(&provider(&[], &[]), &entra(&T1.to_uppercase())),
            Tenants::One(T1.into())
        );
        assert_eq!(
            provider_tenants(
                &provider(&[], &[&format!("https://sts.windows.net/{T1}/")]),
                &entra(T1)
            ),
            Tenants::One(T1.into())
        );
        assert_eq!(
            provider_tenants(
                &provider(&[], &[]),
                "http://127.0.0.1:9400/11111111-2222-3333-4444-555555555555/v2.0"
            ),
            Tenants::One(T1.into())
        );
        // A provider without tenants (its tokens carry no tid).
        assert_eq!(
            provider_tenants(&provider(&[], &[]), "https://accounts.example"),
            Tenants::One(String::new())
        );
        // Multi-tenant: one listed tenant is one; several, any, or issuers of two tenants are several.
        assert_eq!(
            provider_tenants(&provider(&[T2], &[]), &template),
            Tenants::One(T2.into())
        );
        assert_eq!(
            provider_tenants(&provider(&[T1, T2], &[]), &template),
            Tenants::Several(Some(strings(&[T1, T2])))
        );
        assert_eq!(
            provider_tenants(&provider(&["*"], &[]), &template),
            Tenants::Several(None)
        );
        assert_eq!(
            provider_tenants(&provider(&[], &[&entra(T2)]), &entra(T1)),
            Tenants::Several(None)
        );
        assert_eq!(
            provider_tenants(&provider(&[], &[&template]), &entra(T1)),
            Tenants::Several(None)
        );
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
