//! A static IdP for the validator: OpenID discovery and a JWKS, with switches to fail and
//! counters of what was fetched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::{Value, json};

use super::TENANT;
use super::keys::TestKey;

/// A static IdP: discovery + JWKS, with a swappable key set, a failure switch and a fetch counter.
///
/// `fail` makes discovery and JWKS fail; `jwks_fail` makes only the JWKS endpoint fail (so a
/// refresh really reaches the key endpoint and fails there), and `jwks_errors` counts the error
/// answers the JWKS endpoint gave. `discovery_issuer` replaces the `issuer` of the discovery
/// document (e.g. an Entra `{tenantid}` template).
#[derive(Clone)]
pub struct StaticIdp {
    pub addr: SocketAddr,
    pub jwks: Arc<Mutex<Value>>,
    pub fail: Arc<Mutex<Option<StatusCode>>>,
    pub jwks_fetches: Arc<AtomicUsize>,
    pub jwks_fail: Arc<Mutex<Option<StatusCode>>>,
    pub jwks_errors: Arc<AtomicUsize>,
    pub discovery_issuer: Arc<Mutex<Option<String>>>,
    pub discovery_fetches: Arc<AtomicUsize>,
}

impl StaticIdp {
    pub async fn start(keys: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, keys).await
    }

    pub async fn start_on(listener: tokio::net::TcpListener, keys: &[&TestKey]) -> Self {
        let addr = listener.local_addr().unwrap();
        let idp = StaticIdp {
            addr,
            jwks: Arc::new(Mutex::new(
                json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()}),
            )),
            fail: Arc::new(Mutex::new(None)),
            jwks_fetches: Arc::new(AtomicUsize::new(0)),
            jwks_fail: Arc::new(Mutex::new(None)),
            jwks_errors: Arc::new(AtomicUsize::new(0)),
            discovery_issuer: Arc::new(Mutex::new(None)),
            discovery_fetches: Arc::new(AtomicUsize::new(0)),
        };
        let app = Router::new()
            .route(
                "/{tid}/v2.0/.well-known/openid-configuration",
                get(discovery),
            )
            .route("/{tid}/discovery/v2.0/keys", get(jwks))
            .with_state(idp.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        idp
    }

    pub fn issuer(&self) -> String {
        format!("http://{}/{TENANT}/v2.0", self.addr)
    }

    pub fn well_known(&self) -> String {
        format!(
            "http://{}/{TENANT}/v2.0/.well-known/openid-configuration",
            self.addr
        )
    }

    /// The discovery URL for another tenant path segment (`common`, `organizations`, a tid).
    pub fn well_known_for(&self, tenant: &str) -> String {
        format!(
            "http://{}/{tenant}/v2.0/.well-known/openid-configuration",
            self.addr
        )
    }

    /// The JWKS URL the discovery document for `TENANT` names.
    pub fn jwks_uri(&self) -> String {
        format!("http://{}/{TENANT}/discovery/v2.0/keys", self.addr)
    }

    /// Serves `issuer` as the discovery document's `issuer` from now on.
    pub fn set_discovery_issuer(&self, issuer: &str) {
        *self.discovery_issuer.lock().unwrap() = Some(issuer.to_owned());
    }

    /// Serves this raw JWK Set (for keys with extra members such as Entra's `issuer`).
    pub fn set_jwks(&self, jwks: Value) {
        *self.jwks.lock().unwrap() = jwks;
    }

    /// Makes only the JWKS endpoint answer `status` (`None`: serve keys again).
    pub fn set_jwks_fail(&self, status: Option<StatusCode>) {
        *self.jwks_fail.lock().unwrap() = status;
    }

    /// Error answers given by the JWKS endpoint so far.
    pub fn jwks_errors(&self) -> usize {
        self.jwks_errors.load(Ordering::SeqCst)
    }

    /// Discovery documents requested so far.
    pub fn discovery_fetches(&self) -> usize {
        self.discovery_fetches.load(Ordering::SeqCst)
    }

    pub fn set_keys(&self, keys: &[&TestKey]) {
        *self.jwks.lock().unwrap() =
            json!({"keys": keys.iter().map(|k| k.public_jwk()).collect::<Vec<_>>()});
    }

    pub fn fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn discovery(
    State(idp): State<StaticIdp>,
    axum::extract::Path(tid): axum::extract::Path<String>,
) -> axum::response::Response {
    idp.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if let Some(s) = *idp.fail.lock().unwrap() {
        return s.into_response();
    }
    let base = format!("http://{}", idp.addr);
    let issuer = idp
        .discovery_issuer
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| format!("{base}/{tid}/v2.0"));
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/{tid}/discovery/v2.0/keys"),
        "token_endpoint": format!("{base}/{tid}/oauth2/v2.0/token"),
        "authorization_endpoint": format!("{base}/{tid}/oauth2/v2.0/authorize"),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
    .into_response()
}

async fn jwks(State(idp): State<StaticIdp>) -> axum::response::Response {
    idp.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let fail = (*idp.fail.lock().unwrap()).or(*idp.jwks_fail.lock().unwrap());
    if let Some(s) = fail {
        idp.jwks_errors.fetch_add(1, Ordering::SeqCst);
        return s.into_response();
    }
    Json(idp.jwks.lock().unwrap().clone()).into_response()
}
