//! Token exchange end to end against the dev IdP: the Texas-compatible local API (client
//! credentials, On-Behalf-Of, introspection), the cache, every client authentication method,
//! multi-tenant OBO, the proxy's OBO routes and the exchange metrics. Real servers on
//! 127.0.0.1:0, driven by reqwest.

#[path = "support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, KeyPair as _};
use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Echo, TestKey};
use tollgate::config::{ClientAuthMethod, Config, MapEnv, ProviderConfig, Secret};
use tollgate::server::{RunningServer, Server};
use tollgate::{Exchanger, Provider, Validator};
use tollgate_devidp::{
    ALICE, ALICE_OID, BOB, BOB_OID, CAROL, CAROL_OID, DEFAULT_TENANT_ID, DOWNSTREAM_APP_ID_URI,
    DOWNSTREAM_CLIENT_ID, DOWNSTREAM_CLIENT_SECRET, DevIdp, DevIdpConfig, DevIdpHandle,
    FRONTEND_CLIENT_ID, GRAPH_APP_ID_URI, GRAPH_CLIENT_ID, MFA_POLICY_ID, SECOND_TENANT_ID,
    TOLLGATE_APP_ID_URI, TOLLGATE_CLIENT_ID, TOLLGATE_CLIENT_SECRET,
};

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const GRAPH_DEFAULT: &str = "https://graph.microsoft.com/.default";

fn downstream() -> String {
    format!("{DOWNSTREAM_APP_ID_URI}/.default")
}

fn tollgate_scope() -> String {
    format!("{TOLLGATE_APP_ID_URI}/access_as_user")
}

/// Routes of the standard stack: an OBO route with a second injected token, a plain route.
fn obo_routes() -> String {
    format!(
        r#"
[[routes]]
path = "/obo/"
auth = "required"
obo = "{0}"
obo_headers = {{ "X-Graph-Token" = "{GRAPH_DEFAULT}" }}
skip_auth_preflight = true

[[routes]]
path = "/hub/"
auth = "required"
obo = "{0}"
token_in_query = true

[[routes]]
path = "/sensitive/"
auth = "required"
auth_context = "c1"

[[routes]]
path = "/"
auth = "required"
"#,
        downstream()
    )
}

async fn dev_idp() -> DevIdpHandle {
    DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A dev IdP, an echo upstream and tollgate in front of them.
struct Stack {
    idp: Option<DevIdpHandle>,
    echo: Echo,
    server: RunningServer,
    http: reqwest::Client,
}

/// The `[listen]`/`[upstream]` part, then `body` (providers, routes, cache...).
fn config_text(echo: &Echo, body: &str) -> String {
    format!(
        r#"
{listen_block}
[upstream]
url = "{}"
timeout = "5s"
{body}
"#,
        echo.url(),
        listen_block = support::config::listen("2s"),
    )
}

/// One `entra_id` provider as the tollgate app at the dev IdP's default tenant.
fn entra_provider(idp: &DevIdpHandle, extra: &str) -> String {
    format!(
        r#"
[[providers]]
name = "entra_id"
well_known_url = "{}"
client_id = "{TOLLGATE_CLIENT_ID}"
{extra}
"#,
        idp.well_known_url(DEFAULT_TENANT_ID)
    )
}

fn secret_env() -> MapEnv {
    MapEnv::from([("AZURE_APP_CLIENT_SECRET", TOLLGATE_CLIENT_SECRET)])
}

impl Stack {
    /// The usual stack: secret auth, OBO routes, `extra` appended to the provider.
    async fn standard(extra_provider: &str) -> Self {
        let idp = dev_idp().await;
        let body = format!("{}{}", entra_provider(&idp, extra_provider), obo_routes());
        Self::start(idp, &body, &secret_env()).await
    }

    async fn start(idp: DevIdpHandle, body: &str, env: &MapEnv) -> Self {
        let echo = Echo::start().await;
        let cfg = Config::from_toml_str(&config_text(&echo, body), env).unwrap();
        let server = Server::bind(cfg).await.unwrap().spawn();
        let stack = Stack {
            idp: Some(idp),
            echo,
            server,
            http: reqwest::Client::new(),
        };
        stack.wait_ready().await;
        stack
    }

    fn idp(&self) -> &DevIdpHandle {
        self.idp.as_ref().expect("the dev IdP was stopped")
    }

    async fn wait_ready(&self) {
        let url = format!("http://{}/readyz", self.server.admin.unwrap());
        for _ in 0..400 {
            if self.http.get(&url).send().await.unwrap().status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("tollgate never became ready");
    }

    fn api(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.api.unwrap())
    }

    fn public(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.public)
    }

    async fn user_token(&self, user: &str) -> String {
        self.idp()
            .password_token(user, FRONTEND_CLIENT_ID, &tollgate_scope())
            .await
            .unwrap()
    }

    fn idp_calls(&self, grant: &str) -> u64 {
        self.idp().token_requests(grant)
    }

    async fn post_json(&self, path: &str, body: Value) -> (StatusCode, Value) {
        read(
            self.http
                .post(self.api(path))
                .json(&body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, Value) {
        read(
            self.http
                .post(self.api(path))
                .form(form)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// `POST /api/v1/token/exchange` in JSON.
    async fn exchange(&self, user_token: &str, target: &str, skip: bool) -> (StatusCode, Value) {
        self.post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "entra_id", "target": target, "user_token": user_token, "skip_cache": skip}),
        )
        .await
    }

    /// `POST /api/v1/token` in JSON.
    async fn client_token(&self, provider: &str, target: &str) -> (StatusCode, Value) {
        self.post_json(
            "/api/v1/token",
            json!({"identity_provider": provider, "target": target}),
        )
        .await
    }

    async fn get_public(
        &self,
        path: &str,
        token: &str,
        extra: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut req = self.http.get(self.public(path)).bearer_auth(token);
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.server.admin.unwrap());
        support::get_text(&self.http, url).await
    }

    /// Stops tollgate first (so no connection to the IdP stays open), then the dev IdP.
    async fn stop(self) {
        drop(self.http);
        self.server.shutdown().await.unwrap();
        if let Some(idp) = self.idp {
            idp.shutdown().await;
        }
    }
}

async fn read(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// The payload of a JWT, unverified (the dev IdP signed it; here only its claims matter).
fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

/// A Texas token response: exactly `access_token`, `token_type: "Bearer"`, `expires_in`.
fn access_token(status: StatusCode, body: &Value) -> String {
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        keys(body),
        BTreeSet::from([
            "access_token".into(),
            "expires_in".into(),
            "token_type".into()
        ]),
        "{body}"
    );
    assert_eq!(body["token_type"], "Bearer");
    let expires_in = body["expires_in"].as_u64().expect("integer expires_in");
    assert!(expires_in > 0 && expires_in <= 3600, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// An API error: the status and exactly `{error, error_description}`.
fn assert_api_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(
        keys(body),
        BTreeSet::from(["error".into(), "error_description".into()]),
        "{body}"
    );
    assert_eq!(body["error"], code, "{body}");
    assert!(!body["error_description"].as_str().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The local API: success paths in Texas's shapes
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn client_credentials_in_json_and_form_with_texas_field_names() {
    let s = Stack::standard("").await;
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    let first = access_token(status, &body);
    let claims = payload(&first);
    assert_eq!(claims["aud"], DOWNSTREAM_CLIENT_ID);
    assert_eq!(claims["azp"], TOLLGATE_CLIENT_ID);
    assert_eq!(claims["idtyp"], "app");

    // The same request as a form, through Texas's alias: served from the cache.
    let (status, body) = s
        .post_form(
            "/api/v1/token",
            &[("identity_provider", "azuread"), ("target", &downstream())],
        )
        .await;
    assert_eq!(access_token(status, &body), first);
    assert_eq!(s.idp_calls("client_credentials"), 1);

    // skip_cache as a form string.
    let (status, body) = s
        .post_form(
            "/api/v1/token",
            &[
                ("identity_provider", "entra_id"),
                ("target", &downstream()),
                ("skip_cache", "true"),
            ],
        )
        .await;
    assert_ne!(access_token(status, &body), first);
    assert_eq!(s.idp_calls("client_credentials"), 2);
    // And as a JSON bool; Texas's `resource` field is accepted too.
    let (status, body) = s
        .post_json(
            "/api/v1/token",
            json!({"identity_provider": "entra_id", "target": downstream(), "resource": "ignored", "skip_cache": true}),
        )
        .await;
    access_token(status, &body);
    assert_eq!(s.idp_calls("client_credentials"), 3);

    // Media type names are case-insensitive, and parameters are ignored (RFC 9110 §8.3.1).
    let body = json!({"identity_provider": "entra_id", "target": downstream()}).to_string();
    let resp = s
        .http
        .post(s.api("/api/v1/token"))
        .header("content-type", "Application/JSON; charset=UTF-8")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, body) = read(resp).await;
    access_token(status, &body);

    // RFC 6749 §5.1: every answer holding a token (or a user's claims) is never cached.
    let user = s.user_token(ALICE).await;
    for (path, form) in [
        ("/api/v1/token", vec![("target", downstream())]),
        (
            "/api/v1/token/exchange",
            vec![("target", downstream()), ("user_token", user.clone())],
        ),
        ("/api/v1/introspect", vec![("token", user.clone())]),
    ] {
        let mut form = form;
        form.push(("identity_provider", "entra_id".to_owned()));
        let resp = s.http.post(s.api(path)).form(&form).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(resp.headers()["cache-control"], "no-store", "{path}");
    }
    s.stop().await;
}

#[tokio::test]
async fn on_behalf_of_in_json_and_form_with_texas_field_names() {
    let s = Stack::standard("").await;
    let user = s.user_token(ALICE).await;
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "entra_id", "target": downstream(), "user_token": user}),
        )
        .await;
    let token = access_token(status, &body);
    let claims = payload(&token);
    assert_eq!(claims["aud"], DOWNSTREAM_CLIENT_ID);
    assert_eq!(claims["oid"], ALICE_OID);
    assert_eq!(claims["azp"], TOLLGATE_CLIENT_ID);
    assert_ne!(token, user);

    let (status, body) = s
        .post_form(
            "/api/v1/token/exchange",
            &[
                ("identity_provider", "azuread"),
                ("target", &downstream()),
                ("user_token", &user),
                ("skip_cache", "false"),
            ],
        )
        .await;
    assert_eq!(access_token(status, &body), token, "cached");
    assert_eq!(s.idp_calls(JWT_BEARER), 1);
    s.stop().await;
}

#[tokio::test]
async fn introspect_is_200_active_or_not_and_400_for_a_provider_not_enabled() {
    let s = Stack::standard("").await;
    let user = s.user_token(ALICE).await;
    let (status, body) = s
        .post_json(
            "/api/v1/introspect",
            json!({"identity_provider": "entra_id", "token": user}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["active"], true);
    // Every claim is copied verbatim next to `active`.
    let claims = payload(&user);
    for (k, v) in claims.as_object().unwrap() {
        assert_eq!(&body[k], v, "claim {k}");
    }
    assert_eq!(keys(&body).len(), claims.as_object().unwrap().len() + 1);

    let (status, body) = s
        .post_form(
            "/api/v1/introspect",
            &[("identity_provider", "azuread"), ("token", &user)],
        )
        .await;
    assert_eq!((status, &body["oid"]), (StatusCode::OK, &json!(ALICE_OID)));

    // A token for another audience (the downstream API) is not active here.
    let (_, exchanged) = s.exchange(&user, &downstream(), false).await;
    let inactive = [
        ("entra_id", "not-a-token".to_owned()),
        (
            "entra_id",
            exchanged["access_token"].as_str().unwrap().to_owned(),
        ),
    ];
    for (provider, token) in inactive {
        let (status, body) = s
            .post_json(
                "/api/v1/introspect",
                json!({"identity_provider": provider, "token": token}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            keys(&body),
            BTreeSet::from(["active".into(), "error".into()]),
            "{body}"
        );
        assert_eq!(body["active"], false);
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    // A provider that is not configured is the caller's error, as on the other endpoints.
    let (status, body) = s
        .post_json(
            "/api/v1/introspect",
            json!({"identity_provider": "tokenx", "token": user}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert_eq!(
        body["error_description"],
        "identity provider 'tokenx' is not enabled"
    );
    s.stop().await;
}

#[tokio::test]
async fn the_api_connections_last_token_vouches_for_its_own_bytes_only() {
    // The stack's client keeps its connection: the API remembers the connection's last token.
    // The same signature over other claims must be refused by introspection and exchange alike.
    let s = Stack::standard("").await;
    let user = s.user_token(ALICE).await;
    let mut claims = payload(&user);
    claims["oid"] = json!(BOB_OID);
    let mut parts: Vec<String> = user.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let forged = parts.join(".");
    let introspect = |token: &str| {
        s.post_json(
            "/api/v1/introspect",
            json!({"identity_provider": "entra_id", "token": token}),
        )
    };
    for (token, active) in [
        (&user, true),
        (&forged, false),
        (&user, true),
        (&user, true),
    ] {
        let (status, body) = introspect(token).await;
        assert_eq!((status, &body["active"]), (StatusCode::OK, &json!(active)));
    }
    let (status, _) = s.exchange(&user, &downstream(), false).await;
    assert_eq!(status, 200);
    let (status, body) = s.exchange(&forged, &downstream(), false).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = s.exchange(&user, &downstream(), false).await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test]
async fn idporten_from_texas_variables_is_introspected_and_never_exchanged() {
    const AUDIENCE: &str = "https://my-app.example";
    let key = TestKey::new("idporten-key");
    let idporten = support::StaticIdp::start(&[&key]).await;
    let idp = dev_idp().await;
    let body = entra_provider(&idp, "");
    let well_known = idporten.well_known();
    // Texas's ID-porten family next to the Entra secret, no [[providers]] for it.
    let env = MapEnv::from([
        ("AZURE_APP_CLIENT_SECRET", TOLLGATE_CLIENT_SECRET),
        ("IDPORTEN_ENABLED", "true"),
        ("IDPORTEN_AUDIENCE", AUDIENCE),
        ("IDPORTEN_WELL_KNOWN_URL", well_known.as_str()),
    ]);
    let s = Stack::start(idp, &body, &env).await;
    let citizen = key.token(
        &idporten.issuer(),
        json!({"aud": AUDIENCE, "scp": null, "roles": null, "scope": "openid profile",
               "pid": "12345678901", "acr": "idporten-loa-high"}),
    );
    let (status, body) = s
        .post_json(
            "/api/v1/introspect",
            json!({"identity_provider": "idporten", "token": citizen}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], true, "{body}");
    assert_eq!(body["pid"], "12345678901");
    // Another audience is not this app's token.
    let other = key.token(&idporten.issuer(), json!({"aud": "https://other.example"}));
    let (status, body) = s
        .post_json(
            "/api/v1/introspect",
            json!({"identity_provider": "idporten", "token": other}),
        )
        .await;
    assert_eq!((status, &body["active"]), (StatusCode::OK, &json!(false)));
    // ID-porten tokens are never exchanged: the caller is told so.
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "idporten", "target": downstream(), "user_token": citizen}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("only validates tokens"),
        "{body}"
    );
    // Entra goes on as before beside it.
    let alice = s.user_token(ALICE).await;
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    assert_eq!(payload(&access_token(status, &body))["oid"], ALICE_OID);
    s.stop().await;
}

#[tokio::test]
async fn openapi_document_is_served() {
    let s = Stack::standard("").await;
    let resp = s
        .http
        .get(s.api("/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/v1/token",
        "/api/v1/token/exchange",
        "/api/v1/introspect",
    ] {
        assert!(doc["paths"][path]["post"].is_object(), "{path}");
    }
    // Every status the exchange routes can answer is documented.
    for path in ["/api/v1/token", "/api/v1/token/exchange"] {
        let responses = &doc["paths"][path]["post"]["responses"];
        for status in ["200", "400", "401", "413", "415", "500", "502", "504"] {
            assert!(responses[status].is_object(), "{path} {status}");
        }
    }
    let required = &doc["components"]["schemas"]["TokenResponse"]["required"];
    assert_eq!(
        required,
        &json!(["access_token", "token_type", "expires_in"])
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The local API: refusals
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_requests_get_specific_errors() {
    let s = Stack::standard("").await;
    let user = s.user_token(ALICE).await;

    let (status, body) = s.client_token("tokenx", &downstream()).await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("tokenx")
    );

    let (status, body) = s
        .post_json("/api/v1/token", json!({"identity_provider": "entra_id"}))
        .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("target"),
        "{body}"
    );

    let (status, body) = s
        .post_form(
            "/api/v1/token/exchange",
            &[("identity_provider", "entra_id"), ("target", &downstream())],
        )
        .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("user_token"),
        "{body}"
    );

    let (status, body) = s
        .post_json(
            "/api/v1/token",
            json!({"identity_provider": "entra_id", "target": downstream(), "skip_cache": "maybe"}),
        )
        .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    let (status, body) = s
        .post_json(
            "/api/v1/token",
            json!({"identity_provider": "entra_id", "target": " "}),
        )
        .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    let resp = s
        .http
        .post(s.api("/api/v1/token"))
        .header("content-type", "application/json")
        .body("{\"identity_provider\": ")
        .send()
        .await
        .unwrap();
    let (status, body) = read(resp).await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");

    for ctype in [Some("text/plain"), Some("application/jwt"), None] {
        for path in [
            "/api/v1/token",
            "/api/v1/token/exchange",
            "/api/v1/introspect",
        ] {
            let mut req = s
                .http
                .post(s.api(path))
                .body(format!("identity_provider=entra_id&target=x&token={user}"));
            if let Some(c) = ctype {
                req = req.header("content-type", c);
            }
            let (status, body) = read(req.send().await.unwrap()).await;
            assert_api_error(
                status,
                &body,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
            );
        }
    }

    let huge = "x".repeat(100 * 1024);
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "entra_id", "target": downstream(), "user_token": huge}),
        )
        .await;
    assert_api_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "invalid_request",
    );

    let (status, body) = s.post_json("/api/v1/nothing", json!({})).await;
    assert_api_error(status, &body, StatusCode::NOT_FOUND, "invalid_request");

    // A known path with the wrong method: 405 with `Allow` and the same JSON shape.
    for (method, path, allow) in [
        (reqwest::Method::GET, "/api/v1/token", "POST"),
        (reqwest::Method::PUT, "/api/v1/token/exchange", "POST"),
        (reqwest::Method::GET, "/api/v1/users/someone", "DELETE"),
    ] {
        let resp = s
            .http
            .request(method.clone(), s.api(path))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.headers()["allow"], allow, "{method} {path}");
        let (status, body) = read(resp).await;
        assert_api_error(
            status,
            &body,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
        );
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains(method.as_str()),
            "{body}"
        );
    }

    assert_eq!(s.idp_calls("client_credentials"), 0);
    assert_eq!(s.idp_calls(JWT_BEARER), 0);
    s.stop().await;
}

/// An app-only token for tollgate: client credentials of the downstream app, asked directly.
async fn app_only_token_for_tollgate(idp: &DevIdpHandle) -> String {
    let resp = reqwest::Client::new()
        .post(idp.token_endpoint(DEFAULT_TENANT_ID))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", DOWNSTREAM_CLIENT_ID),
            ("client_secret", DOWNSTREAM_CLIENT_SECRET),
            ("scope", &format!("{TOLLGATE_APP_ID_URI}/.default")),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn invalid_user_tokens_are_refused_without_calling_the_idp() {
    let s = Stack::standard("").await;
    let alice = s.user_token(ALICE).await;
    let (_, downstream_token) = s.exchange(&alice, &downstream(), false).await;
    let calls = s.idp_calls(JWT_BEARER);
    assert_eq!(calls, 1);

    let stranger = TestKey::new("unknown-kid").token(
        &s.idp().issuer(DEFAULT_TENANT_ID),
        json!({"aud": TOLLGATE_CLIENT_ID}),
    );
    let app_only = app_only_token_for_tollgate(s.idp()).await;
    assert_eq!(payload(&app_only)["aud"], TOLLGATE_CLIENT_ID);
    let refused = [
        ("garbage", "not-a-jwt".to_owned()),
        ("foreign key", stranger),
        (
            "other audience",
            downstream_token["access_token"]
                .as_str()
                .unwrap()
                .to_owned(),
        ),
        ("app-only", app_only),
    ];
    for (why, token) in refused {
        let (status, body) = s.exchange(&token, &downstream(), false).await;
        assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_grant");
        assert_eq!(s.idp_calls(JWT_BEARER), calls, "{why}: the IdP was called");
        let description = body["error_description"].as_str().unwrap();
        assert!(
            !description.contains(&token[..20.min(token.len())]),
            "{why}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn mfa_challenge_reaches_api_and_proxy_clients() {
    let s = Stack::standard("").await;
    s.idp().set_require_mfa(BOB, true);
    let bob = s.user_token(BOB).await;

    let (status, body) = s.exchange(&bob, &downstream(), false).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["suberror"], "basic_action");
    let claims_text = body["claims"].as_str().expect("claims is a JSON string");
    let claims: Value = serde_json::from_str(claims_text).unwrap();
    assert_eq!(
        claims["access_token"]["capolids"]["values"],
        json!([MFA_POLICY_ID])
    );
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("AADSTS50076")
    );
    // Errors are not cached: the next attempt asks again.
    let (status, _) = s.exchange(&bob, &downstream(), false).await;
    assert_eq!(status, 400);
    assert_eq!(s.idp_calls(JWT_BEARER), 2);

    // On the proxy the same challenge is a 401 the client can step up with.
    let resp = s.get_public("/obo/data", &bob, &[]).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains("error=\"insufficient_claims\""),
        "{challenge}"
    );
    let authorize = format!(
        "{}/{DEFAULT_TENANT_ID}/oauth2/v2.0/authorize",
        s.idp().base_url()
    );
    assert!(
        challenge.contains(&format!("authorization_uri=\"{authorize}\"")),
        "{challenge}"
    );
    let b64 = challenge
        .split("claims=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a claims parameter");
    assert_eq!(STANDARD.decode(b64).unwrap(), claims_text.as_bytes());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_claims");
    assert_eq!(
        s.echo.hits(),
        0,
        "the upstream saw a request without its token"
    );

    // Alice, without the policy, goes through on the same stack.
    let alice = s.user_token(ALICE).await;
    assert_eq!(s.get_public("/obo/data", &alice, &[]).await.status(), 200);
    s.stop().await;
}

#[tokio::test]
async fn idp_down_gives_502_and_nothing_is_forwarded() {
    let mut s = Stack::standard("").await;
    let alice = s.user_token(ALICE).await;
    s.idp.take().unwrap().shutdown().await;

    let (status, body) = s.client_token("entra_id", &downstream()).await;
    assert_api_error(status, &body, StatusCode::BAD_GATEWAY, "server_error");
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    assert_api_error(status, &body, StatusCode::BAD_GATEWAY, "server_error");

    let resp = s.get_public("/obo/data", &alice, &[]).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(s.echo.hits(), 0);

    // Validation needs no IdP round trip: introspection still works from the cached keys.
    let (status, body) = s
        .post_json(
            "/api/v1/introspect",
            json!({"identity_provider": "entra_id", "token": alice}),
        )
        .await;
    assert_eq!((status, &body["active"]), (StatusCode::OK, &json!(true)));
    s.stop().await;
}

/// A TCP listener that accepts connections and never answers.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn idp_timeout_gives_504() {
    let (hole, hole_task) = black_hole().await;
    every_path_times_out_at(hole).await;
    hole_task.abort();
}

/// With the token endpoint at `addr` never finishing its answer, client credentials, the
/// exchange API and an OBO route each give 504 before `timeout`, and nothing is forwarded.
async fn every_path_times_out_at(addr: SocketAddr) {
    let s = Stack::standard(&format!(
        "token_endpoint = \"http://{addr}/{DEFAULT_TENANT_ID}/oauth2/v2.0/token\"\ntimeout = \"300ms\""
    ))
    .await;
    let alice = s.user_token(ALICE).await;
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    assert_api_error(status, &body, StatusCode::GATEWAY_TIMEOUT, "server_error");
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    assert_api_error(status, &body, StatusCode::GATEWAY_TIMEOUT, "server_error");
    let resp = s.get_public("/obo/data", &alice, &[]).await;
    proxy_error(resp, StatusCode::GATEWAY_TIMEOUT).await;
    assert_eq!(s.echo.hits(), 0);
    s.stop().await;
}

/// A token endpoint that answers every request with one fixed status, content type and body,
/// counting the requests.
struct FakeTokenEndpoint {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeTokenEndpoint {
    async fn start(status: u16, content_type: &'static str, body: &'static str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let status = axum::http::StatusCode::from_u16(status).unwrap();
        let counter = hits.clone();
        let app = Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                (status, [("content-type", content_type)], body)
            }
        });
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, hits, task }
    }

    /// The provider option pointing exchanges here.
    fn token_endpoint_option(&self) -> String {
        format!(
            "token_endpoint = \"http://{}/{DEFAULT_TENANT_ID}/oauth2/v2.0/token\"",
            self.addr
        )
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for FakeTokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A proxy answer with exactly `{error, error_description}` as its JSON body.
async fn proxy_error(resp: reqwest::Response, want: StatusCode) -> Value {
    assert_eq!(resp.status(), want);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let (_, body) = read(resp).await;
    assert_eq!(
        keys(&body),
        BTreeSet::from(["error".into(), "error_description".into()]),
        "{body}"
    );
    body
}

#[tokio::test]
async fn idp_5xx_gives_502_and_nothing_is_forwarded() {
    let answers: [(u16, &str, &str); 3] = [
        (
            503,
            "text/html",
            "<html><body>Service Unavailable</body></html>",
        ),
        (
            500,
            "application/json",
            r#"{"error":"server_error","error_description":"AADSTS90033: A transient error has occurred.","error_codes":[90033]}"#,
        ),
        (
            503,
            "application/json",
            r#"{"error":"temporarily_unavailable","error_description":"AADSTS90027: try again later."}"#,
        ),
    ];
    for (status, content_type, body) in answers {
        let fake = FakeTokenEndpoint::start(status, content_type, body).await;
        let s = Stack::standard(&fake.token_endpoint_option()).await;
        let alice = s.user_token(ALICE).await;
        let case = format!("HTTP {status} {content_type}");

        let (status, body) = s.client_token("entra_id", &downstream()).await;
        assert_api_error(status, &body, StatusCode::BAD_GATEWAY, "server_error");
        let (status, body) = s.exchange(&alice, &downstream(), false).await;
        assert_api_error(status, &body, StatusCode::BAD_GATEWAY, "server_error");
        let description = body["error_description"].as_str().unwrap();
        assert!(!description.contains(&alice), "{case}");

        let resp = s.get_public("/obo/data", &alice, &[]).await;
        let body = proxy_error(resp, StatusCode::BAD_GATEWAY).await;
        assert!(!body.to_string().contains(&alice), "{case}");
        assert_eq!(s.echo.hits(), 0, "{case}: forwarded without its token");
        // The IdP was reached each time (this is not connection refused), and nothing was cached.
        assert_eq!(fake.hits(), 3, "{case}");
        s.stop().await;
    }
}

/// A token endpoint that sends its status line and headers, a part of the body, then stalls.
async fn stalled_body() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = listener.accept().await {
            // Read the request head and its form body before answering.
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text[..end]
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4096\r\n\r\n{\"access_token\":\"";
            let _ = socket.write_all(head.as_bytes()).await;
            held.push(socket);
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_token_response_stalling_mid_body_gives_504() {
    let (addr, task) = stalled_body().await;
    every_path_times_out_at(addr).await;
    task.abort();
}

#[tokio::test]
async fn an_obo_refusal_without_a_claims_challenge_reaches_the_client_without_forwarding() {
    // Entra's answer when the user's grant was revoked: invalid_grant, no claims, no suberror.
    let fake = FakeTokenEndpoint::start(
        400,
        "application/json",
        r#"{"error":"invalid_grant","error_description":"AADSTS50173: The provided grant has expired due to it being revoked.","error_codes":[50173]}"#,
    )
    .await;
    let s = Stack::standard(&fake.token_endpoint_option()).await;
    let alice = s.user_token(ALICE).await;

    // The API passes the IdP's error on as is.
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body,
        json!({"error": "invalid_grant",
               "error_description": "AADSTS50173: The provided grant has expired due to it being revoked.",
               "error_codes": [50173]})
    );

    // The proxy: 403 access_denied naming the IdP's code; no step-up challenge, nothing forwarded.
    let resp = s.get_public("/obo/data", &alice, &[]).await;
    let challenge = resp.headers().get("www-authenticate").cloned();
    let body = proxy_error(resp, StatusCode::FORBIDDEN).await;
    assert_eq!(body["error"], "access_denied");
    let description = body["error_description"].as_str().unwrap();
    assert!(description.contains("invalid_grant"), "{description}");
    assert!(!description.contains(&alice));
    assert!(
        challenge
            .as_ref()
            .is_none_or(|c| !c.to_str().unwrap().contains("insufficient_claims")),
        "{challenge:?}"
    );
    assert_eq!(s.echo.hits(), 0);
    assert_eq!(fake.hits(), 2);

    // An app-only token is refused before the IdP: the client's own 401 invalid_token.
    let app_only = app_only_token_for_tollgate(s.idp()).await;
    let resp = s.get_public("/obo/data", &app_only, &[]).await;
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer realm="), "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    let body = proxy_error(resp, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("app-only"),
        "{body}"
    );
    assert_eq!(fake.hits(), 2, "an app-only token reached the IdP");
    assert_eq!(s.echo.hits(), 0);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// API key and bind rules
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn api_key_is_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api_key");
    std::fs::write(&key_file, "s3cret-api-key\n").unwrap();
    let idp = dev_idp().await;
    let body = format!(
        "[api]\nkey_file = \"{}\"\n{}",
        key_file.display(),
        entra_provider(&idp, "")
    );
    let s = Stack::start(idp, &body, &secret_env()).await;
    let request = json!({"identity_provider": "entra_id", "target": downstream()});

    for key in [None, Some("wrong"), Some("s3cret-api-key-but-longer")] {
        let mut req = s.http.post(s.api("/api/v1/token")).json(&request);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "key {key:?}");
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer realm="), "{challenge}");
        let (_, body) = read(resp).await;
        assert_eq!(keys(&body).len(), 2);
        assert_eq!(body["error"], "invalid_client");
    }
    assert_eq!(s.idp_calls("client_credentials"), 0);

    let resp = s
        .http
        .post(s.api("/api/v1/token"))
        .bearer_auth("s3cret-api-key")
        .json(&request)
        .send()
        .await
        .unwrap();
    let (status, body) = read(resp).await;
    access_token(status, &body);
    s.stop().await;
}

#[test]
fn a_non_loopback_api_listener_needs_a_key() {
    let idp_url = "http://127.0.0.1:9/t/v2.0/.well-known/openid-configuration";
    let text = |api: &str, extra: &str| {
        format!(
            "[listen]\napi = \"{api}\"\n{extra}\n[[providers]]\nname = \"entra_id\"\nwell_known_url = \"{idp_url}\"\nclient_id = \"{TOLLGATE_CLIENT_ID}\"\n"
        )
    };
    let refused = Config::from_toml_str(&text("0.0.0.0:7164", ""), &secret_env()).unwrap_err();
    assert!(refused.to_string().starts_with("listen.api"), "{refused}");
    // Via Texas's BIND_ADDRESS too.
    let env = MapEnv::from([
        ("AZURE_APP_CLIENT_SECRET", TOLLGATE_CLIENT_SECRET),
        ("BIND_ADDRESS", "0.0.0.0:3000"),
    ]);
    assert!(Config::from_toml_str(&text("127.0.0.1:7164", ""), &env).is_err());

    Config::from_toml_str(&text("127.0.0.1:7164", ""), &secret_env()).unwrap();
    Config::from_toml_str(
        &text("0.0.0.0:7164", "[api]\nallow_insecure_api = true"),
        &secret_env(),
    )
    .unwrap();
    Config::from_toml_str(
        &text("0.0.0.0:7164", "[api]\nkey_file = \"/run/secrets/api_key\""),
        &secret_env(),
    )
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// The cache
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn fifty_concurrent_identical_exchanges_make_one_idp_call() {
    let s = Arc::new(Stack::standard("").await);
    let alice = s.user_token(ALICE).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (s, alice) = (s.clone(), alice.clone());
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                s.exchange(&alice, &downstream(), false).await
            } else {
                s.post_form(
                    "/api/v1/token/exchange",
                    &[
                        ("identity_provider", "entra_id"),
                        ("target", &downstream()),
                        ("user_token", &alice),
                    ],
                )
                .await
            }
        }));
    }
    let mut tokens = BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        tokens.insert(access_token(status, &body));
    }
    assert_eq!(tokens.len(), 1, "callers got different tokens");
    assert_eq!(s.idp_calls(JWT_BEARER), 1);

    let mut tasks = Vec::new();
    for _ in 0..50 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.client_token("entra_id", GRAPH_DEFAULT).await
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        access_token(status, &body);
    }
    assert_eq!(s.idp_calls("client_credentials"), 1);
    Arc::into_inner(s).unwrap().stop().await;
}

/// How a token request forwarded to the dev IdP authenticated tollgate (never the secret).
#[derive(Debug, Clone, PartialEq, Eq)]
struct SeenRequest {
    /// The `Authorization` scheme, when there was one.
    scheme: Option<String>,
    /// The client id of Basic credentials.
    basic_client_id: Option<String>,
    /// The names of the form fields.
    fields: BTreeSet<String>,
    /// The `claims` field, when there was one.
    claims: Option<String>,
}

/// An HTTP forwarder to the dev IdP that records request paths (and how each request
/// authenticated) and holds every request until its gate opens.
#[derive(Clone)]
struct Forwarder {
    addr: SocketAddr,
    target: String,
    paths: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    arrivals: Arc<AtomicUsize>,
    arrived: Arc<tokio::sync::Notify>,
    gate: tokio::sync::watch::Receiver<bool>,
}

impl Forwarder {
    async fn start(target: String, open: bool) -> (Self, tokio::sync::watch::Sender<bool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (gate_tx, gate) = tokio::sync::watch::channel(open);
        let fwd = Forwarder {
            addr: listener.local_addr().unwrap(),
            target,
            paths: Arc::default(),
            seen: Arc::default(),
            arrivals: Arc::default(),
            arrived: Arc::default(),
            gate,
        };
        let app = Router::new().fallback(forward).with_state(fwd.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fwd, gate_tx)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn forward(State(fwd): State<Forwarder>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    fwd.paths.lock().unwrap().push(path.clone());
    fwd.arrivals.fetch_add(1, Ordering::SeqCst);
    fwd.arrived.notify_one();
    let mut gate = fwd.gate.clone();
    gate.wait_for(|open| *open).await.unwrap();
    let headers = req.headers().clone();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '));
    let basic_client_id = authorization
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, credentials)| STANDARD.decode(credentials).ok())
        .and_then(|pair| {
            let pair = String::from_utf8(pair).ok()?;
            let (id, _secret) = pair.split_once(':')?;
            Some(id.to_owned())
        });
    fwd.seen.lock().unwrap().push(SeenRequest {
        scheme: authorization.map(|(scheme, _)| scheme.to_owned()),
        basic_client_id,
        fields: url::form_urlencoded::parse(&body)
            .map(|(k, _)| k.into_owned())
            .collect(),
        claims: url::form_urlencoded::parse(&body)
            .find(|(k, _)| k == "claims")
            .map(|(_, v)| v.into_owned()),
    });
    let mut out = reqwest::Client::new()
        .post(format!("{}{path}", fwd.target))
        .body(body);
    for name in ["content-type", "authorization"] {
        if let Some(v) = headers.get(name) {
            out = out.header(name, v.as_bytes());
        }
    }
    let resp = out.send().await.unwrap();
    let status = axum::http::StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let body = resp.bytes().await.unwrap();
    (status, [("content-type", "application/json")], body).into_response()
}

#[tokio::test]
async fn a_cancelled_first_caller_does_not_cancel_the_exchange() {
    let idp = dev_idp().await;
    let (fwd, gate) = Forwarder::start(idp.base_url(), false).await;
    let provider = Provider::new(ProviderConfig {
        client_id: TOLLGATE_CLIENT_ID.into(),
        client_secret: Some(Secret::new(TOLLGATE_CLIENT_SECRET)),
        well_known_url: Some(idp.well_known_url(DEFAULT_TENANT_ID).parse().unwrap()),
        token_endpoint: Some(
            fwd.url(&format!("/{DEFAULT_TENANT_ID}/oauth2/v2.0/token"))
                .parse()
                .unwrap(),
        ),
        ..Default::default()
    })
    .unwrap();
    provider.refresh().await.unwrap();
    let exchanger = Exchanger::new(
        Validator::new(provider, 1000),
        1000,
        Duration::from_secs(60),
    )
    .unwrap();
    let alice = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, &tollgate_scope())
        .await
        .unwrap();
    let call = |x: &Exchanger| {
        let (x, alice) = (x.clone(), alice.clone());
        tokio::spawn(async move { x.on_behalf_of(&alice, &downstream(), false).await })
    };

    let first = call(&exchanger);
    // The first caller's request has reached the IdP side; now it goes away.
    fwd.arrived.notified().await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());

    let others: Vec<_> = (0..10).map(|_| call(&exchanger)).collect();
    gate.send(true).unwrap();
    let mut tokens = BTreeSet::new();
    for t in others {
        let token = t
            .await
            .unwrap()
            .expect("the exchange completed for the others");
        assert_eq!(payload(token.access_token())["oid"], ALICE_OID);
        tokens.insert(token.access_token().to_owned());
    }
    assert_eq!(tokens.len(), 1);
    assert_eq!(
        fwd.arrivals.load(Ordering::SeqCst),
        1,
        "the exchange was restarted"
    );
    assert_eq!(idp.token_requests(JWT_BEARER), 1);
    idp.shutdown().await;
}

#[tokio::test]
async fn expiry_margin_is_honoured_in_real_time() {
    const LIFETIME: u64 = 5;
    let idp = dev_idp().await;
    let body = format!(
        "{}\n[cache]\nexpiry_margin = \"3s\"\n",
        entra_provider(&idp, "")
    );
    let s = Stack::start(idp, &body, &secret_env()).await;
    let short = Duration::from_secs(LIFETIME);
    // A user token that outlives the test, and one that expires in 5 s.
    let long_user = s.user_token(ALICE).await;
    s.idp().set_access_token_lifetime(short);
    let short_user = s.user_token(BOB).await;
    let short_claims = payload(&short_user);
    assert_eq!(
        short_claims["exp"].as_u64().unwrap() - short_claims["iat"].as_u64().unwrap(),
        LIFETIME
    );
    // Bob's downstream token lives an hour: his own token's exp bounds the entry.
    s.idp().set_access_token_lifetime(Duration::from_secs(3600));
    let (status, body) = s.exchange(&short_user, &downstream(), false).await;
    let bob_first = access_token(status, &body);
    // Alice's downstream token lives 5 s: its own exp bounds the entry.
    s.idp().set_access_token_lifetime(short);
    let (status, body) = s.exchange(&long_user, &downstream(), false).await;
    let alice_first = access_token(status, &body);
    assert!(body["expires_in"].as_u64().unwrap() <= LIFETIME);
    assert_eq!(s.idp_calls(JWT_BEARER), 2);

    // Before exp - margin (more than a second away): both come from the cache.
    let (status, body) = s.exchange(&long_user, &downstream(), false).await;
    assert_eq!(access_token(status, &body), alice_first);
    assert!(body["expires_in"].as_u64().unwrap() <= LIFETIME);
    let (status, body) = s.exchange(&short_user, &downstream(), false).await;
    assert_eq!(access_token(status, &body), bob_first);
    assert_eq!(s.idp_calls(JWT_BEARER), 2);

    // Within the margin of both exps (yet before Bob's token expires): new exchanges.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = s.exchange(&long_user, &downstream(), false).await;
    assert_ne!(access_token(status, &body), alice_first);
    let (status, body) = s.exchange(&short_user, &downstream(), false).await;
    assert_ne!(access_token(status, &body), bob_first);
    assert_eq!(s.idp_calls(JWT_BEARER), 4);
    s.stop().await;
}

#[tokio::test]
async fn skip_cache_refetches_and_replaces_the_entry() {
    let s = Stack::standard("").await;
    let alice = s.user_token(ALICE).await;
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    let first = access_token(status, &body);
    let (status, body) = s.exchange(&alice, &downstream(), true).await;
    let second = access_token(status, &body);
    assert_ne!(first, second);
    assert_eq!(s.idp_calls(JWT_BEARER), 2);
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    assert_eq!(
        access_token(status, &body),
        second,
        "the entry was not replaced"
    );
    assert_eq!(s.idp_calls(JWT_BEARER), 2);
    s.stop().await;
}

#[tokio::test]
async fn the_cache_key_separates_targets_clients_and_user_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("downstream_secret");
    std::fs::write(&secret_file, DOWNSTREAM_CLIENT_SECRET).unwrap();
    let idp = dev_idp().await;
    // Two providers at the same IdP acting as two different clients.
    let body = format!(
        "{}\n[[providers]]\nname = \"other_app\"\nwell_known_url = \"{}\"\nclient_id = \"{DOWNSTREAM_CLIENT_ID}\"\nclient_secret_file = \"{}\"\n",
        entra_provider(&idp, ""),
        idp.well_known_url(DEFAULT_TENANT_ID),
        secret_file.display()
    );
    // And one that only validates: it has no credential to exchange with.
    let body = format!(
        "{body}\n[[providers]]\nname = \"validate_only\"\nwell_known_url = \"{}\"\nclient_id = \"{TOLLGATE_CLIENT_ID}\"\n",
        idp.well_known_url(DEFAULT_TENANT_ID)
    );
    let s = Stack::start(idp, &body, &secret_env()).await;
    let alice = s.user_token(ALICE).await;
    let bob = s.user_token(BOB).await;

    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    let alice_downstream = access_token(status, &body);
    let (status, body) = s.exchange(&alice, GRAPH_DEFAULT, false).await;
    let alice_graph = access_token(status, &body);
    let (status, body) = s.exchange(&bob, &downstream(), false).await;
    let bob_downstream = access_token(status, &body);
    assert_eq!(s.idp_calls(JWT_BEARER), 3);
    assert_eq!(payload(&alice_downstream)["aud"], DOWNSTREAM_CLIENT_ID);
    assert!(
        [GRAPH_CLIENT_ID, GRAPH_APP_ID_URI]
            .contains(&payload(&alice_graph)["aud"].as_str().unwrap()),
        "{}",
        payload(&alice_graph)
    );
    assert_eq!(payload(&bob_downstream)["oid"], BOB_OID);
    assert_eq!(payload(&alice_downstream)["oid"], ALICE_OID);
    // Each is cached under its own key.
    for (user, target, want) in [
        (&alice, downstream(), &alice_downstream),
        (&alice, GRAPH_DEFAULT.to_owned(), &alice_graph),
        (&bob, downstream(), &bob_downstream),
    ] {
        let (status, body) = s.exchange(user, &target, false).await;
        assert_eq!(&access_token(status, &body), want);
    }
    assert_eq!(s.idp_calls(JWT_BEARER), 3);

    let (status, body) = s.client_token("entra_id", GRAPH_DEFAULT).await;
    let as_tollgate = access_token(status, &body);
    let (status, body) = s.client_token("other_app", GRAPH_DEFAULT).await;
    let as_other = access_token(status, &body);
    assert_eq!(s.idp_calls("client_credentials"), 2);
    assert_eq!(payload(&as_tollgate)["azp"], TOLLGATE_CLIENT_ID);
    assert_eq!(payload(&as_other)["azp"], DOWNSTREAM_CLIENT_ID);

    let (status, body) = s.client_token("validate_only", GRAPH_DEFAULT).await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("cannot exchange tokens"),
        "{body}"
    );
    let (status, body) = s
        .post_json(
            "/api/v1/introspect",
            json!({"identity_provider": "validate_only", "token": alice}),
        )
        .await;
    assert_eq!((status, &body["active"]), (StatusCode::OK, &json!(true)));
    assert_eq!(s.idp_calls("client_credentials"), 2);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Client authentication
// ---------------------------------------------------------------------------------------------

/// A DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_seq(parts: &[Vec<u8>]) -> Vec<u8> {
    der(0x30, &parts.concat())
}

/// Splits one TLV off `data`: (tag, content, rest).
fn der_next(data: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = data[0];
    let (len, start) = if data[1] < 0x80 {
        (usize::from(data[1]), 2)
    } else {
        let n = usize::from(data[1] & 0x7f);
        let len = data[2..2 + n]
            .iter()
            .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
        (len, 2 + n)
    };
    (tag, &data[start..start + len], &data[start + len..])
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// A client key pair, as an app registration's certificate credential would hold it.
struct ClientKey {
    pair: KeyPair,
    kid: String,
}

impl ClientKey {
    fn new(kid: &str) -> Self {
        Self {
            pair: KeyPair::generate(KeySize::Rsa2048).unwrap(),
            kid: kid.into(),
        }
    }

    fn pkcs8_pem(&self) -> String {
        pem("PRIVATE KEY", self.pair.as_der().unwrap().as_ref())
    }

    /// A self-signed X.509 v3 certificate (sha256WithRSAEncryption) for the key.
    fn certificate(&self) -> Vec<u8> {
        let sha256_rsa = der_seq(&[
            der(
                0x06,
                &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
            ),
            vec![0x05, 0x00],
        ]);
        let cn = der_seq(&[
            der(0x06, &[0x55, 0x04, 0x03]),
            der(0x0c, b"tollgate test client"),
        ]);
        let name = der_seq(&[der(0x31, &cn)]);
        let validity = der_seq(&[der(0x17, b"250101000000Z"), der(0x17, b"450101000000Z")]);
        let spki = self.pair.public_key().as_der().unwrap().as_ref().to_vec();
        let tbs = der_seq(&[
            der(0xa0, &der(0x02, &[2])),
            der(0x02, &[0x01, 0x23]),
            sha256_rsa.clone(),
            name.clone(),
            validity,
            name,
            spki,
        ]);
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                &tbs,
                &mut sig,
            )
            .unwrap();
        let mut bits = vec![0];
        bits.extend(sig);
        der_seq(&[tbs, sha256_rsa, der(0x03, &bits)])
    }

    fn public_jwk(&self) -> Value {
        let p = self.pair.public_key();
        json!({"kty": "RSA", "kid": self.kid,
               "n": URL_SAFE_NO_PAD.encode(p.modulus().big_endian_without_leading_zero()),
               "e": URL_SAFE_NO_PAD.encode(p.exponent().big_endian_without_leading_zero())})
    }

    /// The private JWK (RFC 7518 §6.3), read out of the PKCS#8 RSAPrivateKey.
    fn private_jwk(&self, alg: Option<&str>) -> Value {
        let pkcs8 = self.pair.as_der().unwrap();
        let (_, info, _) = der_next(pkcs8.as_ref());
        let (_, _version, rest) = der_next(info);
        let (_, _algorithm, rest) = der_next(rest);
        let (_, octets, _) = der_next(rest);
        let (_, mut ints, _) = der_next(octets);
        let mut jwk = json!({"kty": "RSA", "kid": self.kid});
        for (i, name) in ["version", "n", "e", "d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .enumerate()
        {
            let (tag, value, rest) = der_next(ints);
            assert_eq!(tag, 0x02);
            ints = rest;
            if i > 0 {
                let start = value.iter().position(|b| *b != 0).unwrap_or(0);
                jwk[*name] = json!(URL_SAFE_NO_PAD.encode(&value[start..]));
            }
        }
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg);
        }
        jwk
    }
}

#[tokio::test]
async fn private_key_jwt_from_certificate_and_jwk_files_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let idp = dev_idp().await;
    let cert_key = ClientKey::new("cert-credential");
    let cert = cert_key.certificate();
    // Registered by certificate only: the IdP must find it by thumbprint.
    let mut registered = cert_key.public_jwk();
    registered.as_object_mut().unwrap().remove("kid");
    registered["x5c"] = json!([STANDARD.encode(&cert)]);
    idp.register_client_key(TOLLGATE_CLIENT_ID, registered)
        .unwrap();
    let jwk_key = ClientKey::new("jwk-credential");
    idp.register_client_key(TOLLGATE_CLIENT_ID, jwk_key.public_jwk())
        .unwrap();
    let unregistered = ClientKey::new("never-registered");

    let provider = |name: &str, auth: &str| {
        format!(
            "\n[[providers]]\nname = \"{name}\"\nwell_known_url = \"{}\"\nclient_id = \"{TOLLGATE_CLIENT_ID}\"\nclient_auth = \"private_key_jwt\"\n{auth}\n",
            idp.well_known_url(DEFAULT_TENANT_ID)
        )
    };
    let body = [
        provider(
            "with_cert",
            &format!(
                "client_key_file = \"{}\"\nclient_cert_file = \"{}\"",
                write("key.pem", &cert_key.pkcs8_pem()),
                write("cert.pem", &pem("CERTIFICATE", &cert))
            ),
        ),
        provider(
            "with_jwk",
            &format!(
                "client_jwk_file = \"{}\"",
                write("jwk.json", &jwk_key.private_jwk(None).to_string())
            ),
        ),
        provider(
            "unregistered",
            &format!(
                "client_jwk_file = \"{}\"",
                write("other.json", &unregistered.private_jwk(None).to_string())
            ),
        ),
    ]
    .concat();
    let s = Stack::start(idp, &body, &MapEnv::default()).await;
    let alice = s.user_token(ALICE).await;

    for provider in ["with_cert", "with_jwk"] {
        let (status, body) = s.client_token(provider, &downstream()).await;
        let token = access_token(status, &body);
        // azpacr 2: the IdP authenticated tollgate by a certificate/key assertion.
        assert_eq!(payload(&token)["azpacr"], "2", "{provider}");
        let (status, body) = s
            .post_json(
                "/api/v1/token/exchange",
                json!({"identity_provider": provider, "target": downstream(), "user_token": alice}),
            )
            .await;
        let token = access_token(status, &body);
        assert_eq!(payload(&token)["oid"], ALICE_OID, "{provider}");
        assert_eq!(payload(&token)["azpacr"], "2", "{provider}");
    }
    let (status, body) = s.client_token("unregistered", &downstream()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_client");
    s.stop().await;
}

#[tokio::test]
async fn azure_app_jwk_from_the_environment_signs_ps256_assertions() {
    let idp = dev_idp().await;
    let key = ClientKey::new("nais-jwk");
    idp.register_client_key(TOLLGATE_CLIENT_ID, key.public_jwk())
        .unwrap();
    let jwk = key.private_jwk(Some("PS256")).to_string();
    let well_known = idp.well_known_url(DEFAULT_TENANT_ID);
    // No [[providers]] at all: Texas's environment alone makes the entra_id provider.
    let env = MapEnv::from([
        ("AZURE_APP_CLIENT_ID", TOLLGATE_CLIENT_ID),
        ("AZURE_APP_WELL_KNOWN_URL", well_known.as_str()),
        ("AZURE_APP_JWK", jwk.as_str()),
    ]);
    let s = Stack::start(idp, "", &env).await;
    let (status, body) = s.client_token("azuread", &downstream()).await;
    assert_eq!(payload(&access_token(status, &body))["azpacr"], "2");
    let alice = s.user_token(ALICE).await;
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    assert_eq!(payload(&access_token(status, &body))["oid"], ALICE_OID);
    s.stop().await;
}

/// A Kubernetes cluster trusted by tollgate's app registration (a federated credential for
/// `SUBJECT`), and its signing key: what Azure Workload Identity sets up.
struct Cluster {
    key: TestKey,
}

impl Cluster {
    const ISSUER: &str = "https://oidc.cluster.example/issuer";
    const SUBJECT: &str = "system:serviceaccount:team:app";

    fn trusted_by(idp: &DevIdpHandle) -> Self {
        let key = TestKey::new("cluster-key");
        idp.register_federated_credential(
            TOLLGATE_CLIENT_ID,
            Self::ISSUER,
            Self::SUBJECT,
            json!({"keys": [key.public_jwk()]}),
        )
        .unwrap();
        Self { key }
    }

    /// The projected service-account token the kubelet writes for `subject`.
    fn assertion(&self, subject: &str) -> String {
        let now = support::now();
        self.key.sign(
            &json!({"alg": "RS256", "typ": "JWT", "kid": self.key.kid}),
            &json!({"iss": Self::ISSUER, "sub": subject, "aud": ["api://AzureADTokenExchange"],
                    "iat": now, "nbf": now, "exp": now + 600, "jti": uuid::Uuid::new_v4().to_string()}),
        )
    }
}

#[tokio::test]
async fn federated_assertion_file_is_read_on_each_use() {
    const SUBJECT: &str = Cluster::SUBJECT;
    let idp = dev_idp().await;
    let cluster = Cluster::trusted_by(&idp);
    let assertion = |subject: &str| cluster.assertion(subject);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    std::fs::write(&file, assertion("system:serviceaccount:team:someone-else")).unwrap();
    let body = entra_provider(
        &idp,
        &format!(
            "client_auth = \"federated\"\nclient_assertion_file = \"{}\"",
            file.display()
        ),
    );
    let s = Stack::start(idp, &body, &MapEnv::default()).await;

    // The file holds an assertion for another subject: refused by the IdP.
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    // The platform rotates the file: the next request uses the new content.
    std::fs::write(&file, assertion(SUBJECT)).unwrap();
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    assert_eq!(payload(&access_token(status, &body))["azpacr"], "2");
    let alice = s.user_token(ALICE).await;
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    assert_eq!(payload(&access_token(status, &body))["oid"], ALICE_OID);
    // And once more, to a bad one, bypassing the cache.
    std::fs::write(&file, assertion("system:serviceaccount:team:someone-else")).unwrap();
    let (status, _) = s
        .post_json(
            "/api/v1/token",
            json!({"identity_provider": "entra_id", "target": downstream(), "skip_cache": true}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(s.idp_calls("client_credentials"), 3);
    s.stop().await;
}

#[tokio::test]
async fn azure_workload_identity_variables_alone_make_a_federated_provider() {
    let idp = dev_idp().await;
    let assertion = Cluster::trusted_by(&idp).assertion(Cluster::SUBJECT);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("azure-identity-token");
    let authority = idp.base_url().to_string();
    // Exactly what the Azure Workload Identity webhook injects; no [[providers]] at all.
    let env = MapEnv::from([
        ("AZURE_FEDERATED_TOKEN_FILE", file.to_str().unwrap()),
        ("AZURE_CLIENT_ID", TOLLGATE_CLIENT_ID),
        ("AZURE_TENANT_ID", DEFAULT_TENANT_ID),
        ("AZURE_AUTHORITY_HOST", authority.as_str()),
    ]);
    let cfg = Config::from_toml_str("", &env).unwrap();
    let p = &cfg.providers[0];
    assert_eq!(
        (p.name.as_str(), p.client_auth),
        ("entra_id", ClientAuthMethod::Federated)
    );
    assert_eq!(p.client_assertion_file.as_deref(), Some(file.as_path()));
    let s = Stack::start(idp, "", &env).await;

    // The projected token is not there yet: a clear gateway error, nothing cached.
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "server_error");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains("unavailable for now: client_assertion_file"),
        "{body}"
    );
    // Once the kubelet has written it, the next request authenticates with it.
    std::fs::write(&file, &assertion).unwrap();
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    assert_eq!(payload(&access_token(status, &body))["azpacr"], "2");
    let alice = s.user_token(ALICE).await;
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    assert_eq!(payload(&access_token(status, &body))["oid"], ALICE_OID);
    s.stop().await;
}

#[tokio::test]
async fn client_capabilities_are_declared_and_an_upstream_claims_challenge_forgets_the_exchange() {
    let idp = dev_idp().await;
    let (recorder, _gate) = Forwarder::start(idp.base_url(), true).await;
    let extra = format!(
        "client_capabilities = [\"cp1\"]\ntoken_endpoint = \"{}\"",
        recorder.url(&format!("/{DEFAULT_TENANT_ID}/oauth2/v2.0/token"))
    );
    let body = format!("{}{}", entra_provider(&idp, &extra), obo_routes());
    let s = Stack::start(idp, &body, &secret_env()).await;
    let alice = s.user_token(ALICE).await;

    // Every grant declares the capability (Entra then issues CAE tokens).
    assert_eq!(s.get_public("/obo/data", &alice, &[]).await.status(), 200);
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    assert_eq!(status, 200, "{body}");
    let declared = r#"{"access_token":{"xms_cc":{"values":["cp1"]}}}"#;
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3,
        "two OBO (obo and obo_headers), one client credentials"
    );
    for request in &seen {
        assert_eq!(request.claims.as_deref(), Some(declared), "{request:?}");
    }
    // A cached exchange answers the next request.
    assert_eq!(s.get_public("/obo/data", &alice, &[]).await.status(), 200);
    assert_eq!(s.idp_calls(JWT_BEARER), 2);

    // The upstream revokes the exchanged token with a claims challenge: the client gets the
    // challenge unchanged, and the next request is exchanged afresh.
    let resp = s.get_public("/obo/cae-challenge", &alice, &[]).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(challenge, support::CAE_CHALLENGE);
    assert_eq!(
        s.idp_calls(JWT_BEARER),
        2,
        "the challenge itself costs no exchange"
    );
    assert_eq!(s.get_public("/obo/data", &alice, &[]).await.status(), 200);
    assert_eq!(
        s.idp_calls(JWT_BEARER),
        4,
        "both targets of the route are exchanged again"
    );
    // A plain 401 from the upstream is the app's business: the cache stays.
    assert_eq!(
        s.get_public("/obo/plain-401", &alice, &[]).await.status(),
        401
    );
    assert_eq!(s.get_public("/obo/data", &alice, &[]).await.status(), 200);
    assert_eq!(s.idp_calls(JWT_BEARER), 4);
    s.stop().await;
}

#[tokio::test]
async fn a_reload_reads_a_rotated_secret_file_and_keeps_the_exchanged_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, TOLLGATE_CLIENT_SECRET).unwrap();
    let idp = dev_idp().await;
    let body = entra_provider(
        &idp,
        &format!(
            "client_secret_file = {}",
            support::config::toml_str(&secret_file)
        ),
    );
    let s = Stack::start(idp, &body, &MapEnv::default()).await;
    let config =
        || Config::from_toml_str(&config_text(&s.echo, &body), &MapEnv::default()).unwrap();
    let (status, first) = s.client_token("entra_id", &downstream()).await;
    assert_eq!(status, 200, "{first}");
    let fresh = || {
        s.post_json(
            "/api/v1/token",
            json!({"identity_provider": "entra_id", "target": downstream(), "skip_cache": true}),
        )
    };

    // The secret file is rotated (here: to one the IdP does not know) and the same
    // configuration reloaded: the file is read again.
    std::fs::write(&secret_file, "a-rotated-secret-the-idp-refuses").unwrap();
    assert_eq!(s.server.reload(config()).await.unwrap(), 2);
    let (status, body) = fresh().await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("invalid_client")),
        "{body}"
    );
    // The token exchanged before stays cached: the provider's settings did not change.
    let (status, again) = s.client_token("entra_id", &downstream()).await;
    assert_eq!(
        (status, &again["access_token"]),
        (StatusCode::OK, &first["access_token"])
    );
    // An unchanged file keeps the credential as it is; the right one works again.
    std::fs::write(&secret_file, TOLLGATE_CLIENT_SECRET).unwrap();
    assert_eq!(s.server.reload(config()).await.unwrap(), 3);
    assert_eq!(s.server.reload(config()).await.unwrap(), 4);
    let (status, body) = fresh().await;
    assert_eq!(status, 200, "{body}");
    s.stop().await;
}

#[tokio::test]
async fn client_secret_basic_is_sent_as_http_basic_and_checked_by_the_idp() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let idp = dev_idp().await;
    // The recorder in front of the IdP shows what tollgate sent.
    let (recorder, _gate) = Forwarder::start(idp.base_url(), true).await;
    let provider = |name: &str, secret_file: &str| {
        format!(
            "\n[[providers]]\nname = \"{name}\"\nwell_known_url = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{TOLLGATE_CLIENT_ID}\"\nclient_auth = \"client_secret_basic\"\nclient_secret_file = \"{secret_file}\"\n",
            idp.well_known_url(DEFAULT_TENANT_ID),
            recorder.url(&format!("/{DEFAULT_TENANT_ID}/oauth2/v2.0/token")),
        )
    };
    let wrong_secret = "not-the-tollgate-secret";
    let body = [
        provider("basic", &write("secret", TOLLGATE_CLIENT_SECRET)),
        provider("basic_wrong", &write("wrong", wrong_secret)),
    ]
    .concat();
    let s = Stack::start(idp, &body, &MapEnv::default()).await;
    let alice = s.user_token(ALICE).await;

    let (status, body) = s.client_token("basic", &downstream()).await;
    let token = payload(&access_token(status, &body));
    // azpacr 1: the IdP authenticated tollgate by its secret.
    assert_eq!(
        (&token["azp"], &token["azpacr"]),
        (&json!(TOLLGATE_CLIENT_ID), &json!("1"))
    );
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "basic", "target": downstream(), "user_token": alice}),
        )
        .await;
    let token = payload(&access_token(status, &body));
    assert_eq!(token["oid"], ALICE_OID);
    assert_eq!(token["azpacr"], "1");

    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        assert_eq!(request.scheme.as_deref(), Some("Basic"), "{request:?}");
        assert_eq!(request.basic_client_id.as_deref(), Some(TOLLGATE_CLIENT_ID));
        // The secret travels in the header only (the IdP refuses two methods at once).
        for field in ["client_secret", "client_assertion"] {
            assert!(!request.fields.contains(field), "{request:?}");
        }
        assert!(request.fields.contains("grant_type"));
    }

    // A wrong secret sent the same way is refused by the IdP: the API maps its invalid_client.
    let (status, body) = s.client_token("basic_wrong", &downstream()).await;
    let refusals = [
        (status, body),
        s.post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "basic_wrong", "target": downstream(), "user_token": alice}),
        )
        .await,
    ];
    for (status, body) in refusals {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_client", "{body}");
        let text = body.to_string();
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| d.contains("AADSTS7000215"))
        );
        assert!(!text.contains(wrong_secret) && !text.contains(TOLLGATE_CLIENT_SECRET));
    }
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|r| r.scheme.as_deref() == Some("Basic")));
    assert_eq!(s.idp_calls("client_credentials"), 2);
    assert_eq!(s.idp_calls(JWT_BEARER), 2);
    s.stop().await;
}

/// A ROPC token for alice that went through a `claims` request (the step-up a client makes
/// after a challenge).
async fn token_with_claims(s: &Stack, claims: &str) -> String {
    s.idp()
        .password_token_with_claims(ALICE, FRONTEND_CLIENT_ID, &tollgate_scope(), claims)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_route_with_an_auth_context_challenges_tokens_without_it() {
    let s = Stack::standard("").await;
    let alice = s.user_token(ALICE).await;
    let hits = s.echo.hits();
    let resp = s.get_public("/sensitive/report", &alice, &[]).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_claims");
    assert_eq!(s.echo.hits(), hits, "the upstream never sees it");
    assert!(
        challenge.contains("error=\"insufficient_claims\""),
        "{challenge}"
    );
    let authorize = format!(
        "authorization_uri=\"{}/{DEFAULT_TENANT_ID}/oauth2/v2.0/authorize\"",
        s.idp().base_url()
    );
    assert!(challenge.contains(&authorize), "{challenge}");
    let claims = challenge
        .split("claims=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a claims parameter");
    let request = STANDARD.decode(claims).unwrap();
    let request: Value = serde_json::from_slice(&request).unwrap();
    assert_eq!(
        request,
        json!({"access_token": {"acrs": {"essential": true, "value": "c1"}}})
    );

    // The client steps up with exactly that claims request: the new token passes.
    let stepped_up = token_with_claims(&s, &request.to_string()).await;
    assert_eq!(payload(&stepped_up)["acrs"], json!(["c1"]));
    let resp = s.get_public("/sensitive/report", &stepped_up, &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(s.echo.hits(), hits + 1);
    // Another context does not do.
    let other = token_with_claims(
        &s,
        r#"{"access_token":{"acrs":{"essential":true,"value":"c2"}}}"#,
    )
    .await;
    let resp = s.get_public("/sensitive/report", &other, &[]).await;
    assert_eq!(resp.status(), 401);
    // Routes without auth_context take either.
    assert_eq!(s.get_public("/plain", &alice, &[]).await.status(), 200);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Multi-tenant
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_organizations_authority_exchanges_at_the_users_tenant() {
    let idp = dev_idp().await;
    let (recorder, _gate) = Forwarder::start(idp.base_url(), true).await;
    // The discovery document is the real /organizations/ one; the token endpoint goes through a
    // recorder so the tenant each exchange is sent to is visible.
    let body = format!(
        "\n[[providers]]\nname = \"entra_id\"\nwell_known_url = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{TOLLGATE_CLIENT_ID}\"\nallowed_tenants = [\"*\"]\n",
        idp.well_known_url("organizations"),
        recorder.url("/organizations/oauth2/v2.0/token"),
    );
    let s = Stack::start(idp, &body, &secret_env()).await;
    let carol = s.user_token(CAROL).await;
    assert_eq!(payload(&carol)["tid"], SECOND_TENANT_ID);
    let alice = s.user_token(ALICE).await;

    let (status, body) = s.exchange(&carol, &downstream(), false).await;
    let token = payload(&access_token(status, &body));
    assert_eq!(token["oid"], CAROL_OID);
    assert_eq!(token["tid"], SECOND_TENANT_ID);
    let (status, body) = s.exchange(&alice, &downstream(), false).await;
    assert_eq!(
        payload(&access_token(status, &body))["tid"],
        DEFAULT_TENANT_ID
    );
    // An app token has no user tenant to go to: refused with the fix, the IdP never asked.
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.contains("/organizations/") && description.contains("tenant-specific"),
        "{description}"
    );
    assert_eq!(
        *recorder.paths.lock().unwrap(),
        vec![
            format!("/{SECOND_TENANT_ID}/oauth2/v2.0/token"),
            format!("/{DEFAULT_TENANT_ID}/oauth2/v2.0/token"),
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn client_credentials_at_a_multi_tenant_authority_go_to_the_configured_tenant() {
    let idp = dev_idp().await;
    let (recorder, _gate) = Forwarder::start(idp.base_url(), true).await;
    let body = format!(
        "\n[[providers]]\nname = \"entra_id\"\nwell_known_url = \"{}\"\ntoken_endpoint = \"{}\"\nclient_id = \"{TOLLGATE_CLIENT_ID}\"\nallowed_tenants = [\"*\"]\nclient_credentials_tenant = \"{DEFAULT_TENANT_ID}\"\n",
        idp.well_known_url("common"),
        recorder.url("/common/oauth2/v2.0/token"),
    );
    let s = Stack::start(idp, &body, &secret_env()).await;
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    let token = payload(&access_token(status, &body));
    assert_eq!(token["tid"], DEFAULT_TENANT_ID);
    assert_eq!(token["idtyp"], "app");
    // A user's exchange still goes to the user's tenant, not the configured one.
    let carol = s.user_token(CAROL).await;
    let (status, body) = s.exchange(&carol, &downstream(), false).await;
    assert_eq!(
        payload(&access_token(status, &body))["tid"],
        SECOND_TENANT_ID
    );
    assert_eq!(
        *recorder.paths.lock().unwrap(),
        vec![
            format!("/{DEFAULT_TENANT_ID}/oauth2/v2.0/token"),
            format!("/{SECOND_TENANT_ID}/oauth2/v2.0/token"),
        ]
    );
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_token_the_idp_no_longer_accepts_as_assertion_is_the_clients_401() {
    let s = Stack::standard("").await;
    let alice = s.user_token(ALICE).await;
    // Validated (and kept as valid) on a route without an exchange.
    assert_eq!(s.get_public("/plain", &alice, &[]).await.status(), 200);
    // The IdP retires the key that signed it; tollgate's cached keys still vouch for it.
    s.idp().rotate_keys(true);
    let resp = s.get_public("/obo/data", &alice, &[]).await;
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"tollgate\", error=\"invalid_token\""),
        "{challenge}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(s.idp_calls(JWT_BEARER), 1, "the IdP was asked and refused");
    s.stop().await;
}

#[tokio::test]
async fn obo_routes_inject_downstream_tokens_and_never_forward_the_inbound_one() {
    let s = Stack::standard("").await;
    let alice = s.user_token(ALICE).await;
    let resp = s
        .get_public(
            "/obo/orders",
            &alice,
            &[("X-Graph-Token", "client-supplied")],
        )
        .await;
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    let headers = seen["headers"].as_object().unwrap();
    let auth = headers["authorization"].as_str().unwrap();
    let downstream_token = auth.strip_prefix("Bearer ").expect("a bearer token");
    let claims = payload(downstream_token);
    assert_eq!(claims["aud"], DOWNSTREAM_CLIENT_ID);
    assert_eq!(claims["oid"], ALICE_OID);
    let graph = headers["x-graph-token"].as_str().unwrap();
    assert_ne!(graph, "client-supplied");
    let graph_claims = payload(graph);
    assert!(
        [GRAPH_CLIENT_ID, GRAPH_APP_ID_URI].contains(&graph_claims["aud"].as_str().unwrap()),
        "{graph_claims}"
    );
    assert_eq!(graph_claims["oid"], ALICE_OID);
    assert!(
        !seen.to_string().contains(&alice),
        "the inbound token reached the upstream"
    );
    assert_eq!(s.idp_calls(JWT_BEARER), 2);

    // A second request is served from the cache.
    let resp = s.get_public("/obo/orders", &alice, &[]).await;
    let again: Value = resp.json().await.unwrap();
    assert_eq!(again["headers"]["authorization"], auth);
    assert_eq!(s.idp_calls(JWT_BEARER), 2);

    // A client naming the headers tollgate sets in `Connection` (RFC 9110 §7.6.1 hop-by-hop)
    // does not get them stripped after they were set.
    let resp = s
        .get_public(
            "/obo/orders",
            &alice,
            &[("Connection", "X-Graph-Token, x-request-id, authorization")],
        )
        .await;
    let named: Value = resp.json().await.unwrap();
    assert_eq!(named["headers"]["authorization"], auth);
    assert_eq!(named["headers"]["x-graph-token"], graph);

    // A CORS preflight goes on untokened, and without a client's value under an obo_headers name.
    let resp = s
        .http
        .request(reqwest::Method::OPTIONS, s.public("/obo/orders"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "GET")
        .header("X-Graph-Token", "client-supplied")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let preflight: Value = resp.json().await.unwrap();
    assert_eq!(preflight["method"], "OPTIONS");
    assert!(
        preflight["headers"].get("x-graph-token").is_none(),
        "{preflight}"
    );
    assert_eq!(s.idp_calls(JWT_BEARER), 2);

    // Outside the OBO route the header is the client's own and nothing is exchanged.
    let resp = s
        .get_public("/plain", &alice, &[("X-Graph-Token", "client-supplied")])
        .await;
    let plain: Value = resp.json().await.unwrap();
    assert_eq!(plain["headers"]["x-graph-token"], "client-supplied");
    assert_eq!(plain["headers"]["authorization"], format!("Bearer {alice}"));

    // A token in the query (token_in_query, SignalR) is exchanged the same way, and neither the
    // URL nor any header the upstream sees holds it.
    let resp = s
        .http
        .get(s.public(&format!(
            "/hub/negotiate?access_token={alice}&negotiateVersion=1"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let hub: Value = resp.json().await.unwrap();
    assert_eq!(hub["path"], "/hub/negotiate?negotiateVersion=1");
    assert_eq!(
        hub["headers"]["authorization"], auth,
        "the cached OBO token"
    );
    assert!(
        !hub.to_string().contains(&alice),
        "the inbound token reached the upstream"
    );
    assert_eq!(s.idp_calls(JWT_BEARER), 2);

    // An app-only token cannot be exchanged on a user's behalf: the client's 401, upstream untouched.
    let hits = s.echo.hits();
    let app_only = app_only_token_for_tollgate(s.idp()).await;
    let resp = s.get_public("/obo/orders", &app_only, &[]).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(s.echo.hits(), hits);
    assert_eq!(s.idp_calls(JWT_BEARER), 2);
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

/// The value of the first sample of `name` (with `{`) whose labels include all of `labels`.
fn metric_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{'))
                && labels.iter().all(|lab| l.contains(lab))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn exchange_metrics_are_exported() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("downstream_secret");
    std::fs::write(&secret_file, DOWNSTREAM_CLIENT_SECRET).unwrap();
    let idp = dev_idp().await;
    // A second provider, named only here (the recorder is shared by the tests of this binary).
    let body = format!(
        "{}\n[[providers]]\nname = \"metrics_probe\"\nwell_known_url = \"{}\"\nclient_id = \"{DOWNSTREAM_CLIENT_ID}\"\nclient_secret_file = \"{}\"\n",
        entra_provider(&idp, ""),
        idp.well_known_url(DEFAULT_TENANT_ID),
        secret_file.display(),
    );
    let s = Stack::start(idp, &body, &secret_env()).await;
    let refused = |text: &str| {
        metric_value(
            text,
            "tollgate_exchanges_total",
            &["grant=\"on_behalf_of\"", "result=\"refused\""],
        )
        .unwrap_or(0.0)
    };
    let refused_before = refused(&s.metrics().await);
    let alice = s.user_token(ALICE).await;
    for _ in 0..2 {
        let (status, body) = s.exchange(&alice, &downstream(), false).await;
        access_token(status, &body);
    }
    let (status, body) = s.client_token("entra_id", &downstream()).await;
    access_token(status, &body);
    let (status, body) = s.client_token("metrics_probe", GRAPH_DEFAULT).await;
    access_token(status, &body);
    // An exchange the IdP refuses (an MFA challenge).
    s.idp().set_require_mfa(BOB, true);
    let bob = s.user_token(BOB).await;
    let (status, _) = s.exchange(&bob, &downstream(), false).await;
    assert_eq!(status, 400);
    let text = s.metrics().await;
    let line_with = |name: &str, labels: &[&str]| {
        text.lines()
            .any(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
    };
    assert!(refused(&text) > refused_before, "{text}");
    // One cache-size gauge per provider, none without the label.
    for provider in ["entra_id", "metrics_probe"] {
        let entries = metric_value(
            &text,
            "tollgate_exchange_cache_entries",
            &[&format!("provider=\"{provider}\"")],
        );
        assert!(entries.is_some_and(|n| n >= 0.0), "{provider}: {text}");
    }
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("tollgate_exchange_cache_entries ")),
        "{text}"
    );
    assert!(
        line_with(
            "tollgate_exchanges_total{",
            &["grant=\"on_behalf_of\"", "result=\"ok\""]
        ),
        "{text}"
    );
    assert!(line_with(
        "tollgate_exchanges_total{",
        &["grant=\"client_credentials\"", "result=\"ok\""]
    ));
    for result in ["hit", "miss"] {
        assert!(line_with(
            "tollgate_exchange_cache_total{",
            &["grant=\"on_behalf_of\"", &format!("result=\"{result}\"")]
        ));
    }
    assert!(line_with(
        "tollgate_idp_duration_seconds_count{",
        &["grant=\"on_behalf_of\""]
    ));
    assert!(line_with("tollgate_idp_duration_seconds_bucket{", &["le="]));
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Texas's other providers: TokenX (RFC 8693) and Maskinporten (RFC 7523 jwt-bearer grant)
// ---------------------------------------------------------------------------------------------

/// What TokenX calls a target: `cluster:namespace:app`.
const TOKENX_AUDIENCE: &str = "dev-gcp:team:downstream";
/// A Maskinporten scope.
const MASKINPORTEN_SCOPE: &str = "nav:test/api";

/// An EC client key (P-256 or P-384) with its private JWK for tollgate and public JWK for the IdP.
struct EcClientKey {
    kid: String,
    crv: &'static str,
    pair: aws_lc_rs::signature::EcdsaKeyPair,
}

impl EcClientKey {
    fn p256(kid: &str) -> Self {
        Self::new(kid, "P-256", &signature::ECDSA_P256_SHA256_FIXED_SIGNING)
    }

    fn p384(kid: &str) -> Self {
        Self::new(kid, "P-384", &signature::ECDSA_P384_SHA384_FIXED_SIGNING)
    }

    fn new(kid: &str, crv: &'static str, alg: &'static signature::EcdsaSigningAlgorithm) -> Self {
        Self {
            kid: kid.into(),
            crv,
            pair: aws_lc_rs::signature::EcdsaKeyPair::generate(alg).unwrap(),
        }
    }

    fn public_jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        let size = (point.len() - 1) / 2;
        json!({"kty": "EC", "crv": self.crv, "kid": self.kid,
               "x": URL_SAFE_NO_PAD.encode(&point[1..=size]),
               "y": URL_SAFE_NO_PAD.encode(&point[1 + size..])})
    }

    fn private_jwk(&self) -> String {
        use aws_lc_rs::encoding::AsBigEndian as _;
        let mut jwk = self.public_jwk();
        let d = self.pair.private_key().as_be_bytes().unwrap();
        jwk["d"] = json!(URL_SAFE_NO_PAD.encode(d.as_ref()));
        jwk.to_string()
    }

    /// A JWS over `claims` signed by this key, with its `kid`.
    fn sign(&self, claims: &Value) -> String {
        let alg = if self.crv == "P-256" {
            "ES256"
        } else {
            "ES384"
        };
        let header = json!({"alg": alg, "typ": "JWT", "kid": self.kid});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }
}

/// The TokenX family's variables for tollgate's app at the dev IdP, with `jwk`.
/// The dev IdP with `key` registered for tollgate's client: the IdP, its discovery URL, and the
/// private JWK tollgate signs its assertions with.
async fn idp_with_ec_key(key: EcClientKey) -> (DevIdpHandle, String, String) {
    let idp = dev_idp().await;
    idp.register_client_key(TOLLGATE_CLIENT_ID, key.public_jwk())
        .unwrap();
    let well_known = idp.well_known_url(DEFAULT_TENANT_ID);
    (idp, well_known, key.private_jwk())
}

fn token_x_env<'a>(well_known: &'a str, jwk: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("TOKEN_X_ENABLED", "true"),
        ("TOKEN_X_CLIENT_ID", TOLLGATE_CLIENT_ID),
        ("TOKEN_X_PRIVATE_JWK", jwk),
        ("TOKEN_X_WELL_KNOWN_URL", well_known),
    ]
}

#[tokio::test]
async fn tokenx_exchanges_user_tokens_by_rfc_8693_with_an_ec_or_an_rsa_key() {
    let dir = tempfile::tempdir().unwrap();
    let idp = dev_idp().await;
    let ec = EcClientKey::p256("tokenx-ec");
    let rsa = ClientKey::new("tokenx-rsa");
    idp.register_client_key(TOLLGATE_CLIENT_ID, ec.public_jwk())
        .unwrap();
    idp.register_client_key(TOLLGATE_CLIENT_ID, rsa.public_jwk())
        .unwrap();
    let rsa_file = dir.path().join("rsa.json");
    std::fs::write(&rsa_file, rsa.private_jwk(None).to_string()).unwrap();
    let well_known = idp.well_known_url(DEFAULT_TENANT_ID);
    // `tokenx` from Texas's variables alone (EC key); a second one from the file (RSA key).
    let body = format!(
        "[[providers]]\nname = \"tokenx_rsa\"\ngrant = \"token_exchange\"\nwell_known_url = \"{well_known}\"\nclient_id = \"{TOLLGATE_CLIENT_ID}\"\nclient_auth = \"private_key_jwt\"\nclient_jwk_file = {}\n",
        support::config::toml_str(&rsa_file)
    );
    let jwk = ec.private_jwk();
    let env: MapEnv = token_x_env(&well_known, &jwk).into_iter().collect();
    let s = Stack::start(idp, &body, &env).await;
    let alice = s.user_token(ALICE).await;
    let alice_claims = payload(&alice);

    let mut exchanged = Vec::new();
    for (provider, form) in [("tokenx", false), ("tokenx_rsa", true)] {
        let fields = [
            ("identity_provider", provider),
            ("target", TOKENX_AUDIENCE),
            ("user_token", alice.as_str()),
        ];
        let (status, body) = if form {
            s.post_form("/api/v1/token/exchange", &fields).await
        } else {
            let body: serde_json::Map<String, Value> = fields
                .iter()
                .map(|(k, v)| ((*k).into(), json!(v)))
                .collect();
            s.post_json("/api/v1/token/exchange", Value::Object(body))
                .await
        };
        let token = access_token(status, &body);
        let claims = payload(&token);
        // The token is for the audience asked for, of the same user, and names the client.
        assert_eq!(claims["aud"], TOKENX_AUDIENCE, "{provider}");
        assert_eq!(claims["oid"], ALICE_OID, "{provider}");
        assert_eq!(claims["sub"], alice_claims["sub"], "{provider}");
        assert_eq!(claims["client_id"], TOLLGATE_CLIENT_ID, "{provider}");
        assert!(claims.get("act").is_none() && claims.get("scp").is_none());
        exchanged.push(token);
    }
    assert_eq!(s.idp_calls("token-exchange"), 2);
    assert_eq!(s.idp_calls("jwt-bearer"), 0, "never On-Behalf-Of");
    // Cached like an On-Behalf-Of token: same user, same audience, no second IdP call.
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "tokenx", "target": TOKENX_AUDIENCE, "user_token": alice}),
        )
        .await;
    assert_eq!(access_token(status, &body), exchanged[0]);
    assert_eq!(s.idp_calls("token-exchange"), 2);
    // A token that does not validate is refused here, never sent.
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "tokenx", "target": TOKENX_AUDIENCE, "user_token": "not-a-jwt"}),
        )
        .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_grant");
    // TokenX makes no app tokens: said before anything is sent.
    let (status, body) = s.client_token("tokenx", TOKENX_AUDIENCE).await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("/api/v1/token/exchange"),
        "{body}"
    );
    assert_eq!(s.idp_calls("token-exchange"), 2);
    assert_eq!(s.idp_calls("client_credentials"), 0);
    s.stop().await;
}

#[tokio::test]
async fn an_idp_refusal_of_a_token_exchange_reaches_the_client_as_its_oauth_error() {
    let idp = dev_idp().await;
    // A key the IdP does not know: its refusal is passed on (RFC 6749 §5.2).
    let unregistered = EcClientKey::p256("never-registered");
    let well_known = idp.well_known_url(DEFAULT_TENANT_ID);
    let jwk = unregistered.private_jwk();
    let env: MapEnv = token_x_env(&well_known, &jwk).into_iter().collect();
    let s = Stack::start(idp, "", &env).await;
    let alice = s.user_token(ALICE).await;
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "tokenx", "target": TOKENX_AUDIENCE, "user_token": alice}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_client", "{body}");
    assert_eq!(s.idp_calls("token-exchange"), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_proxy_route_exchanges_through_a_token_exchange_provider() {
    let (idp, well_known, jwk) = idp_with_ec_key(EcClientKey::p384("tokenx-p384")).await;
    let env: MapEnv = token_x_env(&well_known, &jwk).into_iter().collect();
    let body = format!(
        "[[routes]]\npath = \"/tx/\"\nauth = \"required\"\nprovider = \"tokenx\"\nobo = \"{TOKENX_AUDIENCE}\"\n"
    );
    let s = Stack::start(idp, &body, &env).await;
    let alice = s.user_token(ALICE).await;
    let mut forwarded = Vec::new();
    for _ in 0..2 {
        let resp = s.get_public("/tx/data", &alice, &[]).await;
        assert_eq!(resp.status(), 200);
        let echoed: Value = resp.json().await.unwrap();
        let auth = echoed["headers"]["authorization"].as_str().unwrap();
        let token = auth.strip_prefix("Bearer ").unwrap().to_owned();
        assert_ne!(token, alice, "the user's own token is never forwarded");
        let claims = payload(&token);
        assert_eq!(
            (&claims["aud"], &claims["oid"]),
            (&json!(TOKENX_AUDIENCE), &json!(ALICE_OID))
        );
        forwarded.push(token);
    }
    // One exchange for both requests: the route shares the API's cache keying.
    assert_eq!(forwarded[0], forwarded[1]);
    assert_eq!(s.idp_calls("token-exchange"), 1);
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "tokenx", "target": TOKENX_AUDIENCE, "user_token": alice}),
        )
        .await;
    assert_eq!(access_token(status, &body), forwarded[0]);
    assert_eq!(s.idp_calls("token-exchange"), 1);
    s.stop().await;
}

/// The Maskinporten family's variables for tollgate's app at the dev IdP, with `jwk`.
fn maskinporten_env<'a>(well_known: &'a str, jwk: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("MASKINPORTEN_ENABLED", "true"),
        ("MASKINPORTEN_CLIENT_ID", TOLLGATE_CLIENT_ID),
        ("MASKINPORTEN_CLIENT_JWK", jwk),
        ("MASKINPORTEN_WELL_KNOWN_URL", well_known),
    ]
}

#[tokio::test]
async fn maskinporten_tokens_echo_authorization_details_from_json_and_form_bodies() {
    let (idp, well_known, jwk) = idp_with_ec_key(EcClientKey::p256("maskinporten-ec")).await;
    let env: MapEnv = maskinporten_env(&well_known, &jwk).into_iter().collect();
    let s = Stack::start(idp, "", &env).await;
    let details = json!([{"type": "urn:altinn:systemuser", "systemuser_org": {"authority": "iso6523-actorid-upis", "ID": "0192:310000000"}}]);

    let (status, body) = s
        .post_json(
            "/api/v1/token",
            json!({"identity_provider": "maskinporten", "target": MASKINPORTEN_SCOPE,
                   "resource": "https://api.example.no", "authorization_details": details}),
        )
        .await;
    let from_json = access_token(status, &body);
    let claims = payload(&from_json);
    assert_eq!(claims["scope"], MASKINPORTEN_SCOPE);
    assert_eq!(claims["authorization_details"], details);
    assert_eq!(claims["aud"], "https://api.example.no");
    assert_eq!(claims["client_id"], TOLLGATE_CLIENT_ID);
    assert_eq!(claims["consumer"]["authority"], "iso6523-actorid-upis");
    assert_eq!(s.idp_calls("jwt-bearer"), 1);

    // A form carries the array as JSON text; the same request hits the cache.
    let text = details.to_string();
    let form = [
        ("identity_provider", "maskinporten"),
        ("target", MASKINPORTEN_SCOPE),
        ("resource", "https://api.example.no"),
        ("authorization_details", text.as_str()),
    ];
    let (status, body) = s.post_form("/api/v1/token", &form).await;
    assert_eq!(access_token(status, &body), from_json);
    assert_eq!(s.idp_calls("jwt-bearer"), 1);

    // Other details, or none, are another token: the cache key has them.
    let other =
        json!([{"type": "urn:altinn:systemuser", "systemuser_org": {"ID": "0192:320000000"}}]);
    let text = other.to_string();
    let form = [
        ("identity_provider", "maskinporten"),
        ("target", MASKINPORTEN_SCOPE),
        ("authorization_details", text.as_str()),
    ];
    let (status, body) = s.post_form("/api/v1/token", &form).await;
    let claims = payload(&access_token(status, &body));
    assert_eq!(claims["authorization_details"], other);
    assert!(claims.get("aud").is_none(), "no resource was asked for");
    let (status, body) = s.client_token("maskinporten", MASKINPORTEN_SCOPE).await;
    let claims = payload(&access_token(status, &body));
    assert!(claims.get("authorization_details").is_none(), "{claims}");
    assert_eq!(s.idp_calls("jwt-bearer"), 3);
    assert_eq!(s.idp_calls("client_credentials"), 0);

    // Details that are not an array of objects are refused before anything is signed.
    for bad in ["not json", "{\"type\":\"x\"}", "[1]", "\"[]\""] {
        let form = [
            ("identity_provider", "maskinporten"),
            ("target", MASKINPORTEN_SCOPE),
            ("authorization_details", bad),
        ];
        let (status, body) = s.post_form("/api/v1/token", &form).await;
        assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.contains("authorization_details must be a JSON array"),
            "{bad}: {body}"
        );
    }
    let (status, body) = s
        .post_json(
            "/api/v1/token",
            json!({"identity_provider": "maskinporten", "target": MASKINPORTEN_SCOPE, "authorization_details": {"type": "x"}}),
        )
        .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(s.idp_calls("jwt-bearer"), 3);

    // Maskinporten gives app tokens only: a user token exchange is refused before sending.
    let alice = s.user_token(ALICE).await;
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "maskinporten", "target": MASKINPORTEN_SCOPE, "user_token": alice}),
        )
        .await;
    assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
    assert_eq!(s.idp_calls("jwt-bearer"), 3);
    s.stop().await;
}

#[tokio::test]
async fn the_dev_idp_checks_a_jwt_bearer_grant_assertion_like_maskinporten() {
    let idp = dev_idp().await;
    let key = EcClientKey::p256("grant-key");
    idp.register_client_key(TOLLGATE_CLIENT_ID, key.public_jwk())
        .unwrap();
    let stranger = EcClientKey::p256("grant-key"); // same kid, another key
    let http = reqwest::Client::new();
    let endpoint = idp.token_endpoint(DEFAULT_TENANT_ID);
    let issuer = idp.issuer(DEFAULT_TENANT_ID);
    let grant = |assertion: String| {
        let req = http.post(&endpoint).form(&[
            ("grant_type", JWT_BEARER),
            ("assertion", assertion.as_str()),
        ]);
        async move { read(req.send().await.unwrap()).await }
    };
    let claims = |extra: Value| {
        let now = support::now();
        let mut c = json!({"iss": TOLLGATE_CLIENT_ID, "aud": issuer, "scope": MASKINPORTEN_SCOPE,
                           "iat": now, "exp": now + 60, "jti": uuid::Uuid::new_v4().to_string()});
        support::merge(&mut c, extra);
        c
    };
    let good = key.sign(&claims(json!({})));
    let (status, body) = grant(good.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        payload(body["access_token"].as_str().unwrap())["scope"],
        MASKINPORTEN_SCOPE
    );
    // Each refusal is an RFC 6749 §5.2 error.
    let now = support::now();
    for (case, assertion, error) in [
        ("replayed jti", good, "invalid_grant"),
        (
            "another key",
            stranger.sign(&claims(json!({}))),
            "invalid_grant",
        ),
        (
            "another audience",
            key.sign(&claims(json!({"aud": "https://elsewhere.example"}))),
            "invalid_grant",
        ),
        (
            "expired",
            key.sign(&claims(json!({"iat": now - 100, "exp": now - 10}))),
            "invalid_grant",
        ),
        (
            "over 120 s",
            key.sign(&claims(json!({"exp": now + 600}))),
            "invalid_grant",
        ),
        (
            "no jti",
            key.sign(&claims(json!({"jti": null}))),
            "invalid_grant",
        ),
        (
            "no scope",
            key.sign(&claims(json!({"scope": null}))),
            "invalid_scope",
        ),
        (
            "unknown client",
            key.sign(&claims(json!({"iss": "no-such-client"}))),
            "invalid_client",
        ),
    ] {
        let (status, body) = grant(assertion).await;
        // RFC 6749 §5.2: 400, or 401 for a client that could not be authenticated.
        let want = if error == "invalid_client" { 401 } else { 400 };
        assert_eq!(
            (status.as_u16(), body["error"].as_str()),
            (want, Some(error)),
            "{case}: {body}"
        );
        assert!(
            body["error_description"]
                .as_str()
                .is_some_and(|d| !d.is_empty()),
            "{case}"
        );
    }
    idp.shutdown().await;
}

#[tokio::test]
async fn texas_provider_names_are_accepted_and_an_unknown_one_is_400_on_every_endpoint() {
    let (idp, well_known, jwk) = idp_with_ec_key(EcClientKey::p256("tokenx-ec")).await;
    let mut vars = token_x_env(&well_known, &jwk);
    vars.extend(maskinporten_env(&well_known, &jwk));
    vars.extend([
        ("AZURE_APP_CLIENT_ID", TOLLGATE_CLIENT_ID),
        ("AZURE_APP_CLIENT_SECRET", TOLLGATE_CLIENT_SECRET),
        ("AZURE_APP_WELL_KNOWN_URL", well_known.as_str()),
    ]);
    let env: MapEnv = vars.into_iter().collect();
    let s = Stack::start(idp, "", &env).await;
    let alice = s.user_token(ALICE).await;
    // Each of Texas's names reaches its provider, on the endpoint that fits it.
    for name in ["azuread", "entra_id"] {
        let (status, body) = s.client_token(name, &downstream()).await;
        assert_eq!(
            payload(&access_token(status, &body))["aud"],
            DOWNSTREAM_CLIENT_ID
        );
        let (status, body) = s
            .post_json(
                "/api/v1/introspect",
                json!({"identity_provider": name, "token": alice}),
            )
            .await;
        assert_eq!(
            (status, &body["active"]),
            (StatusCode::OK, &json!(true)),
            "{name}"
        );
    }
    let (status, body) = s
        .post_json(
            "/api/v1/token/exchange",
            json!({"identity_provider": "tokenx", "target": TOKENX_AUDIENCE, "user_token": alice}),
        )
        .await;
    assert_eq!(
        payload(&access_token(status, &body))["aud"],
        TOKENX_AUDIENCE
    );
    let (status, body) = s.client_token("maskinporten", MASKINPORTEN_SCOPE).await;
    assert_eq!(
        payload(&access_token(status, &body))["scope"],
        MASKINPORTEN_SCOPE
    );

    // Not configured here (ID-porten), or no such provider at all: 400 invalid_request everywhere.
    for name in ["idporten", "no_such_provider"] {
        let requests = [
            (
                "/api/v1/token",
                json!({"identity_provider": name, "target": "x"}),
            ),
            (
                "/api/v1/token/exchange",
                json!({"identity_provider": name, "target": "x", "user_token": alice}),
            ),
            (
                "/api/v1/introspect",
                json!({"identity_provider": name, "token": alice}),
            ),
            (
                "/api/v1/token/delegated",
                json!({"identity_provider": name, "target": "x", "user_oid": ALICE_OID}),
            ),
        ];
        for (path, body) in requests {
            let (status, body) = s.post_json(path, body).await;
            assert_api_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request");
            assert_eq!(
                body["error_description"],
                format!("identity provider '{name}' is not enabled"),
                "{path}"
            );
        }
    }
    s.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The exchange cache shared by replicas through Redis (`[cache] shared = "redis"`)
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "redis")]
mod shared_cache {
    use std::time::Instant;

    use super::support::redis::RedisServer;
    use super::*;

    /// Replicas of one app: one dev IdP, one Redis, one upstream, and tollgate servers that
    /// share their exchanges through that Redis. Replica 0 takes the Redis of its `[store]`,
    /// replica 1 names it in `[cache] redis_url` (its store is in memory): both ways are in use.
    struct Replicas {
        idp: DevIdpHandle,
        redis: RedisServer,
        servers: Vec<RunningServer>,
        /// Each replica's configuration file, for reloads.
        configs: Vec<String>,
        http: reqwest::Client,
        _echo: Echo,
        _keys: tempfile::TempDir,
    }

    impl Replicas {
        /// `None` when redis-server is not installed (the test is skipped, said on stderr).
        async fn start(cache: &str) -> Option<Self> {
            let redis = RedisServer::start()?;
            let idp = dev_idp().await;
            let echo = Echo::start().await;
            let keys = tempfile::tempdir().unwrap();
            let key_file = keys.path().join("keys");
            std::fs::write(&key_file, tollgate::store::keygen()).unwrap();
            let key_file = support::config::toml_str(&key_file);
            let routes = format!(
                "[[routes]]\npath = \"/obo/\"\nauth = \"required\"\nobo = \"{}\"\n\n[[routes]]\npath = \"/\"\nauth = \"required\"\n",
                downstream()
            );
            let stores = [
                format!(
                    "[store]\nkind = \"redis\"\nurl = \"{}\"\nencryption_keys_file = {key_file}\n\n[cache]\nshared = \"redis\"\n{cache}\n",
                    redis.url()
                ),
                format!(
                    "[store]\nkind = \"memory\"\nencryption_keys_file = {key_file}\n\n[cache]\nshared = \"redis\"\nredis_url = \"{}\"\n{cache}\n",
                    redis.url()
                ),
            ];
            let mut servers = Vec::new();
            let mut configs = Vec::new();
            for store in stores {
                let body = format!("{}{routes}{store}", entra_provider(&idp, ""));
                let text = config_text(&echo, &body);
                let cfg = Config::from_toml_str(&text, &secret_env()).unwrap();
                servers.push(Server::bind(cfg).await.unwrap().spawn());
                configs.push(text);
            }
            let replicas = Self {
                idp,
                redis,
                servers,
                configs,
                http: reqwest::Client::new(),
                _echo: echo,
                _keys: keys,
            };
            for i in 0..replicas.servers.len() {
                replicas.wait_ready(i).await;
            }
            Some(replicas)
        }

        async fn wait_ready(&self, i: usize) {
            let url = format!("http://{}/readyz", self.servers[i].admin.unwrap());
            for _ in 0..400 {
                if self.http.get(&url).send().await.unwrap().status() == 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("replica {i} never became ready");
        }

        async fn user_token(&self, user: &str) -> String {
            self.idp
                .password_token(user, FRONTEND_CLIENT_ID, &tollgate_scope())
                .await
                .unwrap()
        }

        /// `POST /api/v1/token/exchange` to replica `i`: the token, after checking the answer.
        async fn exchange(&self, i: usize, user_token: &str) -> String {
            let url = format!(
                "http://{}/api/v1/token/exchange",
                self.servers[i].api.unwrap()
            );
            let body = json!({"identity_provider": "entra_id", "target": downstream(), "user_token": user_token});
            let (status, body) = read(self.http.post(url).json(&body).send().await.unwrap()).await;
            access_token(status, &body)
        }

        /// `POST /api/v1/token` (client credentials) to replica `i`.
        async fn client_token(&self, i: usize) -> String {
            let url = format!("http://{}/api/v1/token", self.servers[i].api.unwrap());
            let body = json!({"identity_provider": "entra_id", "target": downstream()});
            let (status, body) = read(self.http.post(url).json(&body).send().await.unwrap()).await;
            access_token(status, &body)
        }

        /// A request through replica `i`'s `obo` route: the token the upstream got.
        async fn proxied(&self, i: usize, user_token: &str) -> String {
            let url = format!("http://{}/obo/orders", self.servers[i].public);
            let resp = self
                .http
                .get(url)
                .bearer_auth(user_token)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let seen: Value = resp.json().await.unwrap();
            let auth = seen["headers"]["authorization"].as_str().unwrap();
            auth.strip_prefix("Bearer ")
                .expect("a bearer token")
                .to_owned()
        }

        async fn metrics(&self) -> String {
            let url = format!("http://{}/metrics", self.servers[0].admin.unwrap());
            support::get_text(&self.http, url).await
        }

        /// The shared cache's entries in Redis: key -> raw value.
        async fn entries(&self) -> Vec<(String, Vec<u8>)> {
            let mut conn = self.redis.raw().await;
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg("tollgate:xc:*")
                .query_async(&mut conn)
                .await
                .unwrap();
            let mut entries = Vec::new();
            for key in keys {
                let value: Option<Vec<u8>> = ::redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                entries.extend(value.map(|v| (key, v)));
            }
            entries
        }

        async fn stop(self) {
            for server in self.servers {
                server.shutdown().await.unwrap();
            }
            self.idp.shutdown().await;
        }
    }

    fn counter(text: &str, name: &str, labels: &[&str]) -> f64 {
        if labels.is_empty() {
            return text
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0);
        }
        metric_value(text, name, labels).unwrap_or(0.0)
    }

    #[tokio::test]
    async fn replicas_on_one_redis_exchange_each_token_once_and_redis_holds_no_token() {
        let Some(r) = Replicas::start("").await else {
            return;
        };
        let before = r.metrics().await;
        let hits = |text: &str| counter(text, "tollgate_shared_cache_total", &["result=\"hit\""]);
        // Alice: the API on replica 0, then the API and the proxy's obo route on replica 1.
        let alice = r.user_token(ALICE).await;
        let first = r.exchange(0, &alice).await;
        assert_eq!(r.idp.token_requests(JWT_BEARER), 1);
        assert_eq!(r.exchange(1, &alice).await, first);
        assert_eq!(r.proxied(1, &alice).await, first);
        assert_eq!(
            r.idp.token_requests(JWT_BEARER),
            1,
            "replica 1 asked the IdP again"
        );
        // Bob: the proxy on replica 1 first, then the API on replica 0.
        let bob = r.user_token(BOB).await;
        let bobs = r.proxied(1, &bob).await;
        assert_eq!(r.exchange(0, &bob).await, bobs);
        assert_eq!(payload(&bobs)["oid"], BOB_OID);
        assert_eq!(r.idp.token_requests(JWT_BEARER), 2);
        // Client credentials are shared too.
        let app = r.client_token(1).await;
        assert_eq!(r.client_token(0).await, app);
        assert_eq!(r.idp.token_requests("client_credentials"), 1);
        assert!(hits(&r.metrics().await) >= hits(&before) + 3.0);

        // Three entries, sealed: no token, not even a JWT's first bytes, in Redis.
        let entries = r.entries().await;
        assert_eq!(
            entries.len(),
            3,
            "{:?}",
            entries.iter().map(|e| &e.0).collect::<Vec<_>>()
        );
        for (key, value) in &entries {
            assert_eq!(key.len(), "tollgate:xc:".len() + 64, "{key}");
            for token in [&first, &bobs, &app, &alice, &bob] {
                let needle = &token.as_bytes()[..40];
                assert!(
                    !value.windows(needle.len()).any(|w| w == needle),
                    "{key} holds a token"
                );
            }
            assert!(!value.windows(3).any(|w| w == b"eyJ"), "{key} holds a JWT");
        }
        // Each expires with its token (less the expiry margin), and no lock is left behind.
        let mut conn = r.redis.raw().await;
        for (key, _) in &entries {
            let ttl: i64 = ::redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(ttl > 0 && ttl <= (3600 - 120) * 1000, "{key}: {ttl} ms");
        }
        let locks: Vec<String> = ::redis::cmd("KEYS")
            .arg("tollgate:xl:*")
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(locks.is_empty(), "{locks:?}");
        r.stop().await;
    }

    #[tokio::test]
    async fn an_upstream_claims_challenge_removes_the_token_from_redis_too() {
        let Some(r) = Replicas::start("").await else {
            return;
        };
        let alice = r.user_token(ALICE).await;
        let first = r.proxied(0, &alice).await;
        assert_eq!(r.entries().await.len(), 1);
        // The upstream refuses the token (Continuous Access Evaluation): no replica may hand it
        // out again.
        let url = format!("http://{}/obo/cae-challenge", r.servers[0].public);
        let resp = r.http.get(url).bearer_auth(&alice).send().await.unwrap();
        assert_eq!(resp.status(), 401);
        assert!(
            r.entries().await.is_empty(),
            "the refused token stayed in Redis"
        );
        let second = r.exchange(1, &alice).await;
        assert_ne!(second, first);
        assert_eq!(r.idp.token_requests(JWT_BEARER), 2);
        r.stop().await;
    }

    #[tokio::test]
    async fn the_shared_cache_stays_across_reloads_and_cannot_be_turned_off_by_one() {
        let Some(r) = Replicas::start("").await else {
            return;
        };
        let reload = |text: String| {
            let cfg = Config::from_toml_str(&text, &secret_env()).unwrap();
            r.servers[1].reload(cfg)
        };
        let off = r.configs[1].replace("shared = \"redis\"", "shared = \"none\"");
        let err = reload(off).await.unwrap_err().to_string();
        assert!(err.contains("cache cannot change on reload"), "{err}");
        // Another change takes; the new generation still shares.
        let more = format!(
            "{}\n[[routes]]\npath = \"/more/\"\nauth = \"required\"\n",
            r.configs[1]
        );
        reload(more).await.unwrap();
        let alice = r.user_token(ALICE).await;
        let first = r.exchange(0, &alice).await;
        assert_eq!(r.exchange(1, &alice).await, first);
        assert_eq!(r.idp.token_requests(JWT_BEARER), 1);
        r.stop().await;
    }

    #[tokio::test]
    async fn concurrent_misses_across_replicas_make_one_idp_call() {
        let Some(r) = Replicas::start("").await else {
            return;
        };
        let r = Arc::new(r);
        let alice = r.user_token(ALICE).await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (r, alice) = (r.clone(), alice.clone());
            tasks.push(tokio::spawn(async move { r.exchange(i % 2, &alice).await }));
        }
        let mut tokens = BTreeSet::new();
        for t in tasks {
            tokens.insert(t.await.unwrap());
        }
        assert_eq!(tokens.len(), 1, "callers got different tokens");
        // Each replica makes one fetch (its in-process single flight); of the two, the one that
        // loses the Redis lock waits for the other's entry (up to 2 s, far above a dev IdP
        // answer), so the IdP sees exactly one request.
        assert_eq!(r.idp.token_requests(JWT_BEARER), 1);
        Arc::into_inner(r).unwrap().stop().await;
    }

    #[tokio::test]
    async fn a_shared_entry_is_not_served_past_its_expiry() {
        let Some(r) = Replicas::start("expiry_margin = \"1s\"").await else {
            return;
        };
        let alice = r.user_token(ALICE).await;
        // Exchanged tokens live 3 s: usable (and kept in Redis) 2 s.
        r.idp.set_access_token_lifetime(Duration::from_secs(3));
        let first = r.exchange(0, &alice).await;
        let exp = payload(&first)["exp"].as_u64().unwrap();
        let entries = r.entries().await;
        assert_eq!(entries.len(), 1);
        let mut conn = r.redis.raw().await;
        let ttl: i64 = ::redis::cmd("PTTL")
            .arg(&entries[0].0)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            ttl > 0 && ttl <= 2000,
            "{ttl} ms: the entry outlives exp - margin"
        );
        assert_eq!(r.exchange(1, &alice).await, first);
        assert_eq!(r.idp.token_requests(JWT_BEARER), 1);
        // Past exp - margin, neither Redis nor a replica hands it out.
        while support::now() < exp - 1 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let second = r.exchange(1, &alice).await;
        assert_ne!(second, first);
        assert_eq!(r.idp.token_requests(JWT_BEARER), 2);
        r.stop().await;
    }

    #[tokio::test]
    async fn redis_paused_or_killed_mid_run_fails_no_request() {
        let Some(r) = Replicas::start("redis_timeout = \"200ms\"").await else {
            return;
        };
        let errors = |text: &str| counter(text, "tollgate_shared_cache_errors_total", &[]);
        let error_lookups =
            |text: &str| counter(text, "tollgate_shared_cache_total", &["result=\"error\""]);
        let before = r.metrics().await;
        let alice = r.user_token(ALICE).await;
        let first = r.exchange(0, &alice).await;

        // Paused: no answer at all, so every call runs into the timeout, and the exchange goes
        // to the IdP directly.
        r.redis.signal("STOP");
        let bob = r.user_token(BOB).await;
        let started = Instant::now();
        r.exchange(1, &bob).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        r.redis.signal("CONT");

        // Killed while requests run: each is answered all the same. Fresh user tokens, so
        // every request misses the in-process cache and goes through Redis.
        let mut user_tokens = Vec::new();
        for i in 0..20 {
            user_tokens.push(r.user_token([ALICE, BOB][i % 2]).await);
        }
        let requests =
            futures_util::future::join_all(user_tokens.iter().enumerate().map(|(i, token)| {
                let r = &r;
                async move {
                    tokio::time::sleep(Duration::from_millis(5 * i as u64)).await;
                    r.exchange(i % 2, token).await
                }
            }));
        let kill = async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            r.redis.signal("KILL");
        };
        let (answers, ()) = tokio::join!(requests, kill);
        assert_eq!(answers.len(), 20);
        // Down for good: still answered.
        for i in 0..4 {
            let bob = r.user_token(BOB).await;
            r.exchange(i % 2, &bob).await;
        }
        // The in-process cache still answers what it holds.
        assert_eq!(r.exchange(0, &alice).await, first);
        let after = r.metrics().await;
        assert!(errors(&after) > errors(&before), "{after}");
        assert!(error_lookups(&after) > error_lookups(&before), "{after}");
        r.stop().await;
    }
}
