//! An axum app protected by tollgate's Tower layer, calling a downstream API On-Behalf-Of the
//! signed-in user. No sidecar: validation and exchange run in process, with
//! `tollgate = { default-features = false, features = ["axum"] }`.
//!
//! Routes of the app (default `127.0.0.1:3000`):
//!
//! - `GET /`: anyone; greets the caller by name when a valid token is sent (`Option<Claims>`).
//! - `GET /me`: scope `access_as_user` required; the caller's claims as JSON.
//! - `GET /downstream`: scope `access_as_user` required; exchanges the caller's token for one
//!   for the downstream API (On-Behalf-Of) and returns what that API answered.
//!
//! Unless `DOWNSTREAM_URL` points at a real API, the example also serves a small downstream API
//! itself (default `127.0.0.1:3001`, `GET /whoami`, scope `Data.Read` required), validating
//! tokens issued for its own client id, so the whole chain runs with nothing but an IdP.
//!
//! Against the dev IdP (three terminals, from the repository root):
//!
//! ```sh
//! # 1. the local OpenID provider on 127.0.0.1:9400
//! cargo run -- dev-idp
//! # 2. this example (its defaults point at the dev IdP)
//! cargo run --example axum_app --no-default-features --features axum
//! # 3. a token for alice from the public "frontend" client, then the routes
//! TOKEN=$(curl -s http://127.0.0.1:9400/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token \
//!   -d grant_type=password -d client_id=cccccccc-3333-4444-5555-dddddddddddd \
//!   -d username=alice -d password=dev \
//!   -d scope=api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/access_as_user | jq -r .access_token)
//! curl -s http://127.0.0.1:3000/                                      # hello, anonymous
//! curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/     # hello, Alice Example
//! curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/me
//! curl -s -H "Authorization: Bearer $TOKEN" http://127.0.0.1:3000/downstream
//! curl -si http://127.0.0.1:3000/me                                   # 401, Bearer realm="tollgate"
//! ```
//!
//! Environment (defaults in brackets are the dev IdP's built-in apps):
//!
//! | variable | meaning |
//! | --- | --- |
//! | `AZURE_APP_WELL_KNOWN_URL` | discovery URL [`http://127.0.0.1:9400/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration`] |
//! | `AZURE_APP_CLIENT_ID` | this app's client id [`aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb`] |
//! | `AZURE_APP_CLIENT_SECRET` | this app's client secret, for On-Behalf-Of [`dev-secret-tollgate`] |
//! | `APP_LISTEN` | the app's address [`127.0.0.1:3000`] |
//! | `DOWNSTREAM_SCOPE` | what to exchange for [`api://eeeeeeee-6666-7777-8888-ffffffffffff/.default`] |
//! | `DOWNSTREAM_URL` | a real downstream API's base URL (it must serve `GET /whoami`); unset: serve the built-in one |
//! | `DOWNSTREAM_CLIENT_ID` | client id of the built-in downstream API [`eeeeeeee-6666-7777-8888-ffffffffffff`] |
//! | `DOWNSTREAM_LISTEN` | address of the built-in downstream API [`127.0.0.1:3001`] |

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tollgate::{Auth, BearerToken, Claims};

/// Where the app's `/downstream` route sends the user's identity.
#[derive(Clone, Debug)]
pub struct Downstream {
    /// Base URL of the downstream API (`http://127.0.0.1:3001`).
    pub url: String,
    /// The On-Behalf-Of target (`api://<downstream>/.default`).
    pub scope: String,
}

/// The app: `/` for anyone, `/me` and `/downstream` with scope `access_as_user`.
pub fn app(auth: Auth, downstream: Downstream) -> Router {
    let state = AppState {
        auth: auth.clone(),
        downstream: Arc::new(downstream),
        http: reqwest::Client::new(),
    };
    let protected = Router::new()
        .route("/me", get(me))
        .route("/downstream", get(call_downstream))
        .route_layer(auth.layer().require_scopes(["access_as_user"]));
    let public = Router::new()
        .route("/", get(hello))
        .route_layer(auth.layer().optional());
    protected.merge(public).with_state(state)
}

/// The downstream API: `GET /whoami` with scope `Data.Read`, validated for its own client id.
pub fn downstream_api(auth: Auth) -> Router {
    Router::new()
        .route("/whoami", get(whoami))
        .route_layer(auth.layer().require_scopes(["Data.Read"]))
}

#[allow(dead_code)] // The integration test reuses `app` and `downstream_api`, not `main`.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const DEV_WELL_KNOWN: &str = "http://127.0.0.1:9400/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration";
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());

    let well_known = env("AZURE_APP_WELL_KNOWN_URL", DEV_WELL_KNOWN);
    let auth = Auth::builder()
        .well_known_url(&well_known)
        .client_id(&env(
            "AZURE_APP_CLIENT_ID",
            "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
        ))
        .client_secret(&env("AZURE_APP_CLIENT_SECRET", "dev-secret-tollgate"))
        .build()
        .await?;

    let downstream_url = match std::env::var("DOWNSTREAM_URL") {
        Ok(url) => url,
        Err(_) => {
            let downstream_auth = Auth::builder()
                .well_known_url(&well_known)
                .client_id(&env(
                    "DOWNSTREAM_CLIENT_ID",
                    "eeeeeeee-6666-7777-8888-ffffffffffff",
                ))
                .build()
                .await?;
            let addr: SocketAddr = env("DOWNSTREAM_LISTEN", "127.0.0.1:3001").parse()?;
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let url = format!("http://{}", listener.local_addr()?);
            println!("downstream API on {url}");
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, downstream_api(downstream_auth)).await {
                    eprintln!("downstream API stopped: {e}");
                }
            });
            url
        }
    };
    let downstream = Downstream {
        url: downstream_url,
        scope: env(
            "DOWNSTREAM_SCOPE",
            "api://eeeeeeee-6666-7777-8888-ffffffffffff/.default",
        ),
    };

    let addr: SocketAddr = env("APP_LISTEN", "127.0.0.1:3000").parse()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("app on http://{}", listener.local_addr()?);
    axum::serve(listener, app(auth, downstream))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

#[derive(Clone)]
struct AppState {
    auth: Auth,
    downstream: Arc<Downstream>,
    http: reqwest::Client,
}

async fn hello(claims: Option<Claims>) -> String {
    let name = claims
        .as_ref()
        .and_then(|c| c.name().or(c.username()))
        .unwrap_or("anonymous");
    format!("hello, {name}\n")
}

async fn me(claims: Claims) -> Json<Value> {
    Json(json!({
        "sub": claims.subject(),
        "oid": claims.oid(),
        "tid": claims.tid(),
        "username": claims.username(),
        "name": claims.name(),
        "scopes": claims.scopes(),
        "roles": claims.roles(),
    }))
}

async fn call_downstream(
    State(state): State<AppState>,
    bearer: BearerToken,
) -> Result<Json<Value>, Response> {
    let exchanger = state.auth.exchanger().ok_or_else(|| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "no client credential is configured for On-Behalf-Of",
        )
    })?;
    // The exchanger caches per user token and target: repeated calls reuse the downstream token
    // until shortly before it expires. An IdP refusal (MFA required, consent missing...) is passed
    // through with its `claims` challenge so the client can step up.
    let token = exchanger
        .on_behalf_of(&bearer.0, &state.downstream.scope, false)
        .await
        .map_err(|e| (e.status(), Json(e.to_json())).into_response())?;
    let url = format!("{}/whoami", state.downstream.url.trim_end_matches('/'));
    let response = state
        .http
        .get(url)
        .bearer_auth(token.access_token())
        .send()
        .await
        .map_err(|_| {
            error(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the downstream API is unreachable",
            )
        })?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|_| {
        error(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the downstream API answered something other than JSON",
        )
    })?;
    if !status.is_success() {
        return Err((
            StatusCode::BAD_GATEWAY,
            Json(json!({"downstream_status": status.as_u16(), "downstream": body})),
        )
            .into_response());
    }
    Ok(Json(json!({
        "downstream": body,
        "token_expires_in": token.expires_in(),
    })))
}

async fn whoami(claims: Claims) -> Json<Value> {
    Json(json!({
        "aud": claims.get("aud"),
        "azp": claims.get("azp"),
        "oid": claims.oid(),
        "username": claims.username(),
        "scopes": claims.scopes(),
    }))
}

fn error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}
