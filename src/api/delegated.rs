//! `POST /api/v1/token/delegated` and `DELETE /api/v1/users/{oid}`: the HTTP side of
//! [`crate::delegation`] (finding the user's record, answering in the API's shapes).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;

use super::body::ApiBody;
use super::exchanger;
use crate::config::{ProviderConfig, is_guid};
use crate::delegation::{self, DelegationError, lock_user};
use crate::provider::Provider;
use crate::response::{api_error, exchange_error};
use crate::state::AppState;
use crate::store::{StoreError, TokenStore};
use crate::util::now;

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
    // The provider first: an unknown one is named as such on every endpoint.
    let x = match exchanger(&state, &req.identity_provider) {
        Ok(x) => x.clone(),
        Err(r) => return r,
    };
    let store = match store(&state) {
        Ok(s) => s,
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
            return api_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "user_oid or user_upn is required",
            );
        }
    };
    let record = match found {
        Ok(Some(r)) => r,
        Ok(None) => return delegation_error(&DelegationError::UnknownUser),
        Err(e) => return store_error(&e),
    };
    let margin = state.config.cache.expiry_margin.as_secs();
    match delegation::token_for(&state.refresh_flights, store, x, record, req.target, margin).await
    {
        Ok(t) => token(&t.access_token, t.expires_at),
        Err(e) => delegation_error(&e),
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
                return api_error(
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

/// The tenant a lookup by UPN searches: a UPN names a user only within one tenant, so a
/// provider that accepts several tenants needs `user_tid`, and a `user_tid` the provider does not
/// accept is refused rather than searched.
fn upn_tenant(provider: &Provider, requested: Option<&str>) -> Result<String, Response> {
    let name = provider.name();
    let Some(metadata) = provider.metadata() else {
        return Err(api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the identity provider's metadata is not loaded yet",
        ));
    };
    let tenants = provider_tenants(provider.config(), &metadata.issuer);
    let refused = || {
        api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!("user_tid is not a tenant identity provider '{name}' accepts"),
        )
    };
    match (tenants, requested) {
        (Tenants::One(own), None) => Ok(own),
        (Tenants::One(own), Some(t)) if own.eq_ignore_ascii_case(t) => Ok(own),
        (Tenants::One(_), Some(_)) => Err(refused()),
        (Tenants::Several(_), None) => Err(api_error(
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
        api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "delegated tokens need the login proxy: enable [login] and a [store]",
        )
    })
}

/// A failed delegation in the API's shape.
fn delegation_error(e: &DelegationError) -> Response {
    match e {
        DelegationError::InteractionRequired => api_error(
            StatusCode::BAD_REQUEST,
            "interaction_required",
            "the stored refresh token is no longer valid: the user must log in again",
        ),
        DelegationError::UnknownUser => api_error(
            StatusCode::BAD_REQUEST,
            "unknown_user",
            "no tokens are stored for this user: the user must log in through tollgate first",
        ),
        DelegationError::Exchange(e) => exchange_error(e),
        DelegationError::Store(e) => store_error(e),
        DelegationError::Aborted => api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "the token refresh failed unexpectedly",
        ),
    }
}

fn store_error(e: &StoreError) -> Response {
    match e {
        StoreError::Unavailable(_) => api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "the token store is unavailable",
        ),
        _ => {
            tracing::error!(error = %e, "token store failure");
            api_error(
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
}
