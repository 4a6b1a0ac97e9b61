//! Routing, discovery, JWKS and the `/_dev/` hooks.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use super::aad_error::{AadError, json_response};
use super::authorize;
use super::config::FederatedCredential;
use super::keys;
use super::state::{Shared, TenantPath};
use super::token;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route(
            "/{tenant}/oauth2/v2.0/authorize",
            get(authorize::authorize_get).post(authorize::authorize_post),
        )
        .route("/{tenant}/oauth2/v2.0/token", post(token::token))
        .route("/{tenant}/oauth2/v2.0/logout", get(authorize::logout))
        .route("/_dev/rotate-keys", post(rotate_keys))
        .route("/_dev/users/{username}/mfa", put(set_mfa))
        .route("/_dev/settings", put(put_settings))
        .route("/_dev/stats", get(stats))
        .route("/_dev/apps/{client_id}/keys", post(add_client_key))
        .route("/_dev/apps/{client_id}/federated", post(add_federated))
        .route("/_dev/sign-out/{sid_or_user}", post(sign_out))
        .with_state(shared)
}

async fn discovery(
    State(shared): State<Arc<Shared>>,
    Path(segment): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(tenant) = shared.tenant(&segment) else {
        return AadError::unknown_tenant(&segment).to_json_response(&headers);
    };
    let base = &shared.base_url;
    let path = tenant.segment();
    let (issuer, region) = match &tenant {
        TenantPath::Tenant(tid) => (shared.issuer(tid), json!("WW")),
        // Multi-tenant aliases publish Entra's issuer template, braces included.
        TenantPath::Alias(_) => (format!("{base}/{{tenantid}}/v2.0"), Value::Null),
    };
    let doc = json!({
        "token_endpoint": format!("{base}/{path}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{base}/{path}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": issuer,
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{base}/{path}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{base}/{path}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "end_session_endpoint": format!("{base}/{path}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
                             "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username",
                             "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{base}/{path}/kerberos"),
        "tenant_region_scope": region,
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    });
    public_json(doc, Some("max-age=86400, private"))
}

async fn jwks(
    State(shared): State<Arc<Shared>>,
    Path(segment): Path<String>,
    headers: HeaderMap,
) -> Response {
    if shared.tenant(&segment).is_none() {
        return AadError::unknown_tenant(&segment).to_json_response(&headers);
    }
    let template = format!("{}/{{tenantid}}/v2.0", shared.base_url);
    let keys: Vec<Value> = shared
        .published_keys()
        .iter()
        .map(|k| k.public_jwk(&template))
        .collect();
    // No long cache lifetime: keys rotate on demand here, and clients should see it.
    public_json(json!({ "keys": keys }), None)
}

fn public_json(body: Value, cache_control: Option<&'static str>) -> Response {
    let mut response = (StatusCode::OK, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, OPTIONS"),
    );
    if let Some(value) = cache_control {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
    }
    response
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    #[serde(default)]
    drop_previous: bool,
}

async fn rotate_keys(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(e) => return hook_error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    };
    match keys::generate().await {
        Ok(key) => {
            let kid = shared.install_key(key, request.drop_previous);
            Json(json!({ "kid": kid })).into_response()
        }
        Err(e) => hook_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MfaRequest {
    required: bool,
}

async fn set_mfa(
    State(shared): State<Arc<Shared>>,
    Path(username): Path<String>,
    body: Bytes,
) -> Response {
    let request: MfaRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return hook_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    if shared.set_require_mfa(&username, request.required) {
        Json(json!({ "user": username, "mfa_required": request.required })).into_response()
    } else {
        hook_error(StatusCode::NOT_FOUND, &format!("unknown user '{username}'"))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsRequest {
    access_token_lifetime_secs: Option<u64>,
    refresh_token_lifetime_secs: Option<u64>,
    code_lifetime_secs: Option<u64>,
}

async fn put_settings(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let request: SettingsRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => return hook_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    let lifetimes = shared.update_lifetimes(|l| {
        let secs = std::time::Duration::from_secs;
        if let Some(s) = request.access_token_lifetime_secs {
            l.access = secs(s);
        }
        if let Some(s) = request.refresh_token_lifetime_secs {
            l.refresh = secs(s);
        }
        if let Some(s) = request.code_lifetime_secs {
            l.code = secs(s);
        }
    });
    Json(lifetimes).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(json!({ "token_requests": shared.stats() })).into_response()
}

/// Ends sessions as a sign-out at the IdP would, without a browser; answers what each app
/// with a `backchannel_logout_uri` said.
async fn sign_out(State(shared): State<Arc<Shared>>, Path(sid_or_user): Path<String>) -> Response {
    let sids = shared.sessions_of(&sid_or_user);
    let deliveries: Vec<Value> = shared
        .end_sessions(&sids)
        .await
        .into_iter()
        .map(|d| {
            json!({
                "client_id": d.client_id,
                "uri": d.uri,
                "sid": d.sid,
                "status": d.status,
                "error": d.error,
            })
        })
        .collect();
    Json(json!({ "sessions_ended": sids.len(), "deliveries": deliveries })).into_response()
}

async fn add_client_key(
    State(shared): State<Arc<Shared>>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    let jwk: Value = match serde_json::from_slice(&body) {
        Ok(jwk) => jwk,
        Err(e) => return hook_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    hook_result(shared.register_client_key(&client_id, &jwk))
}

async fn add_federated(
    State(shared): State<Arc<Shared>>,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Response {
    let credential: FederatedCredential = match serde_json::from_slice(&body) {
        Ok(credential) => credential,
        Err(e) => return hook_error(StatusCode::BAD_REQUEST, &e.to_string()),
    };
    hook_result(shared.register_federated(&client_id, &credential))
}

fn hook_result(result: Result<(), super::DevIdpError>) -> Response {
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e @ super::DevIdpError::UnknownApp(_)) => {
            hook_error(StatusCode::NOT_FOUND, &e.to_string())
        }
        Err(e) => hook_error(StatusCode::BAD_REQUEST, &e.to_string()),
    }
}

fn hook_error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "error": message }))
}
