//! Delegated tokens for users who logged in through the login proxy: the stored access token
//! while it has more than `expiry_margin` left and covers the target, else a refresh-token
//! redemption whose rotated tokens replace the stored ones.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Json, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::body::ApiBody;
use super::{error, exchange_error, exchanger};
use crate::exchange::ExchangeError;
use crate::server::AppState;
use crate::store::{StoreError, TokenStore, UserTokens};
use crate::validate::{now, sha256};

/// Refresh tokens without a stated lifetime get Entra's default sliding window (90 days).
pub(crate) const DEFAULT_REFRESH_LIFETIME: u64 = 90 * 24 * 3600;

#[derive(Deserialize)]
pub(super) struct DelegatedRequest {
    identity_provider: String,
    target: String,
    #[serde(default)]
    user_oid: Option<String>,
    #[serde(default)]
    user_upn: Option<String>,
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
        (Some(oid), _) => store.get_by_oid(&provider, oid).await,
        (None, Some(upn)) => store.get_by_upn(&provider, upn).await,
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
        Ok(None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "unknown_user",
                "no tokens are stored for this user: the user must log in through tollgate first",
            );
        }
        Err(e) => return store_error(&e),
    };
    let margin = state.config.cache.expiry_margin.as_secs();
    if record.access_token_expires_at > now() + margin && covers(&record.scopes, &req.target) {
        return token(&record.access_token, record.access_token_expires_at);
    }
    // Concurrent requests for one user and target share one refresh (rotation makes a second,
    // parallel redemption of the same refresh token a race the IdP may punish).
    let key = flight_key(&provider, &record.oid, &req.target);
    let target = req.target.clone();
    let flights = state.refresh_flights.clone();
    let run = async move {
        let oid = record.oid.clone();
        let result = x
            .refresh(&record.refresh_token, &target, Some(&record.tid))
            .await;
        match result {
            Ok(t) => {
                let scopes = match &t.scope {
                    Some(s) => s.split_whitespace().map(str::to_owned).collect(),
                    None => vec![target.clone()],
                };
                let updated = UserTokens {
                    access_token: t.access_token.clone(),
                    access_token_expires_at: now() + t.expires_in,
                    scopes,
                    refresh_token: t
                        .refresh_token
                        .clone()
                        .unwrap_or_else(|| record.refresh_token.clone()),
                    refresh_token_expires_at: if t.refresh_token.is_some() {
                        now() + DEFAULT_REFRESH_LIFETIME
                    } else {
                        record.refresh_token_expires_at
                    },
                    ..record
                };
                store
                    .put(&provider, &updated)
                    .await
                    .map_err(Flight::Store)?;
                Ok((updated.access_token, updated.access_token_expires_at))
            }
            Err(ExchangeError::Idp(e)) if e.error == "invalid_grant" && e.claims.is_none() => {
                // The refresh token is dead (revoked, expired, password changed): forget it so
                // the app sends the user through login again.
                let _ = store.delete(&provider, &oid).await;
                Err(Flight::Interaction)
            }
            Err(e) => Err(Flight::Exchange(e)),
        }
    };
    match flights.try_get_with(key, run).await {
        Ok((access, exp)) => token(&access, exp),
        Err(e) => match &*e {
            Flight::Interaction => error(
                StatusCode::BAD_REQUEST,
                "interaction_required",
                "the stored refresh token is no longer valid: the user must log in again",
            ),
            Flight::Exchange(e) => exchange_error(e),
            Flight::Store(e) => store_error(e),
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
        if let Err(e) = store.delete(&p, &oid).await {
            return store_error(&e);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) enum Flight {
    Interaction,
    Exchange(ExchangeError),
    Store(StoreError),
}

fn flight_key(provider: &str, oid: &str, target: &str) -> [u8; 32] {
    let mut buf = Vec::new();
    for part in [provider, oid, target] {
        buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
        buf.extend_from_slice(part.as_bytes());
    }
    sha256(&buf)
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
    Json(json!({"access_token": access_token, "token_type": "Bearer", "expires_in": expires_at.saturating_sub(now())})).into_response()
}

/// Whether the granted scopes cover `target`: the exact scope, or for `<resource>/.default` any
/// scope of that resource.
pub(crate) fn covers(scopes: &[String], target: &str) -> bool {
    target.split_whitespace().all(|t| {
        scopes.iter().any(|s| s == t)
            || t.strip_suffix("/.default").is_some_and(|resource| {
                scopes.iter().any(|s| {
                    s.strip_prefix(resource)
                        .is_some_and(|rest| rest.starts_with('/'))
                })
            })
    })
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn scope_coverage() {
        let s = vec!["api://a/access_as_user".to_owned(), "openid".to_owned()];
        assert!(covers(&s, "api://a/access_as_user"));
        assert!(covers(&s, "api://a/.default"));
        assert!(!covers(&s, "api://ab/.default"));
        assert!(!covers(&s, "api://b/.default"));
        assert!(!covers(&s, "api://a/write"));
    }
}
