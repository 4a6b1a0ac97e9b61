//! Test helpers shared by the integration test binaries: RSA keys and hand-made JWS (so hostile
//! headers can be crafted freely), a static JWKS/discovery server, and an echo upstream.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, KeyPair as _};
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

pub const TENANT: &str = "11111111-2222-3333-4444-555555555555";
pub const OTHER_TENANT: &str = "66666666-7777-8888-9999-000000000000";
pub const CLIENT_ID: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

/// An RSA key that signs JWS by hand.
pub struct TestKey {
    pub kid: String,
    pair: KeyPair,
}

impl TestKey {
    pub fn new(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            pair: KeyPair::generate(KeySize::Rsa2048).unwrap(),
        }
    }

    pub fn public_jwk(&self) -> Value {
        let p = self.pair.public_key();
        json!({"kty": "RSA", "use": "sig", "kid": self.kid,
               "n": b64(p.modulus().big_endian_without_leading_zero()),
               "e": b64(p.exponent().big_endian_without_leading_zero())})
    }

    /// The public key's modulus bytes, as an attacker would use them for HS256.
    pub fn public_n(&self) -> Vec<u8> {
        self.pair
            .public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec()
    }

    /// RS256 JWS over the given header and claims, exactly as given.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", b64(&sig))
    }

    /// A v2 Entra-shaped user access token for `CLIENT_ID`, with `extra` merged over the claims.
    pub fn token(&self, issuer: &str, extra: Value) -> String {
        let mut claims = user_claims(issuer);
        merge(&mut claims, extra);
        self.sign(
            &json!({"typ": "JWT", "alg": "RS256", "kid": self.kid}),
            &claims,
        )
    }
}

pub fn user_claims(issuer: &str) -> Value {
    let t = now();
    json!({
        "aud": CLIENT_ID, "iss": issuer, "iat": t, "nbf": t, "exp": t + 3600,
        "azp": "cccccccc-3333-4444-5555-dddddddddddd", "azpacr": "0", "name": "Alice Example",
        "oid": "99999999-8888-7777-6666-555555555555", "preferred_username": "alice@contoso.example",
        "roles": ["Reader"], "scp": "access_as_user", "sub": "alice-sub", "tid": TENANT, "ver": "2.0"
    })
}

/// Merges `extra` into `base`; a `null` in `extra` removes the claim.
pub fn merge(base: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (base, extra) {
        for (k, v) in e {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
}

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

/// An upstream that answers with what it received and counts hits.
#[derive(Clone)]
pub struct Echo {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
}

impl Echo {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = Echo {
            addr,
            hits: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route(
                "/public/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
                    "slow done"
                }),
            )
            .fallback(echo_handler)
            .with_state(echo.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        echo
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo_handler(State(echo): State<Echo>, req: Request) -> Json<Value> {
    echo.hits.fetch_add(1, Ordering::SeqCst);
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.as_str().to_owned(),
            Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    Json(
        json!({"method": req.method().as_str(), "path": req.uri().to_string(), "headers": headers}),
    )
}
