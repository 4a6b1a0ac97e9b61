//! The reverse proxy end to end: a static JWKS IdP and keys made in the test, an echo upstream,
//! tollgate on 127.0.0.1:0, driven by reqwest.

mod connections;
mod paths;
mod reload;
mod shutdown;
#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;
use tollgate::config::{Config, MapEnv};
use tollgate::server::{RunningServer, Server};

struct Harness {
    idp: StaticIdp,
    echo: Echo,
    server: RunningServer,
    http: reqwest::Client,
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.public)
    }

    fn admin(&self, path: &str) -> String {
        format!("http://{}{path}", self.server.admin.unwrap())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap()
    }

    /// A GET carrying one header as the client sets it.
    async fn get_with(&self, path: &str, name: &str, value: &str) -> reqwest::Response {
        let req = self.http.get(self.url(path)).header(name, value);
        req.send().await.unwrap()
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            let r = self.http.get(self.admin("/readyz")).send().await.unwrap();
            if r.status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("tollgate never became ready");
    }

    async fn ready_status(&self) -> u16 {
        self.http
            .get(self.admin("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn metrics_text(&self) -> String {
        support::get_text(&self.http, self.admin("/metrics")).await
    }

    /// `tollgate_jwks_fetches_total{provider=<provider>,result="error"}`, 0 when not yet recorded.
    async fn jwks_fetch_errors(&self, provider: &str) -> f64 {
        metric_value(
            &self.metrics_text().await,
            "tollgate_jwks_fetches_total",
            &[("provider", provider), ("result", "error")],
        )
    }
}

/// A config with one `[[providers]]` whose lines (besides `client_id`) are all given, and a
/// single `auth = "required"` route.
fn custom_config(upstream: &str, provider: &str) -> String {
    format!(
        r#"
{listen_block}
[upstream]
url = "{upstream}"
timeout = "5s"

[[providers]]
client_id = "{CLIENT_ID}"
{provider}

[[routes]]
path = "/"
auth = "required"
"#,
        listen_block = support::config::listen("5s")
    )
}

async fn harness_custom(idp: StaticIdp, provider: &str) -> Harness {
    let echo = Echo::start().await;
    let cfg =
        Config::from_toml_str(&custom_config(&echo.url(), provider), &MapEnv::default()).unwrap();
    let server = Server::bind(cfg).await.unwrap().spawn();
    Harness {
        idp,
        echo,
        server,
        http: reqwest::Client::new(),
    }
}

async fn assert_ok(h: &Harness, token: &str, why: &str) -> Value {
    let before = h.echo.hits();
    let r = h.get("/ok", Some(token)).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{why}: {body}");
    assert_eq!(h.echo.hits(), before + 1, "{why}: reached the upstream");
    body
}

fn config_toml(well_known: &str, upstream: &str, extra_provider: &str) -> String {
    format!(
        r#"
{listen_block}
[upstream]
url = "{upstream}"
timeout = "5s"

[[providers]]
name = "entra_id"
well_known_url = "{well_known}"
client_id = "{CLIENT_ID}"
jwks_unknown_kid_min_interval = "30s"
{extra_provider}

[[routes]]
path = "/"
auth = "required"

[[routes]]
path = "/scoped"
scopes = ["Data.Write", "access_as_user"]

[[routes]]
path = "/needs-scope"
scopes = ["Data.Write"]

[[routes]]
path = "/needs-role"
roles = ["Admin"]

[[routes]]
path = "/reader"
roles = ["Reader"]

[[routes]]
path = "/optional"
auth = "optional"

[[routes]]
path = "/cors"
skip_auth_preflight = true
token_in_query = true

[[routes]]
path = "/signalr"
token_in_query = true

[[routes]]
path = "/public"
auth = "none"
"#,
        listen_block = support::config::listen("5s")
    )
}

async fn harness_with(keys: &[&TestKey], extra_provider: &str) -> Harness {
    let idp = StaticIdp::start(keys).await;
    harness_on(idp, extra_provider).await
}

async fn harness_on(idp: StaticIdp, extra_provider: &str) -> Harness {
    let echo = Echo::start().await;
    let toml = config_toml(&idp.well_known(), &echo.url(), extra_provider);
    let cfg = Config::from_toml_str(&toml, &MapEnv::default()).unwrap();
    let server = Server::bind(cfg).await.unwrap().spawn();
    let http = reqwest::Client::new();
    Harness {
        idp,
        echo,
        server,
        http,
    }
}

async fn harness(keys: &[&TestKey]) -> Harness {
    harness_with(keys, "").await
}

async fn assert_invalid(h: &Harness, token: &str, why: &str) {
    let before = h.echo.hits();
    let r = h.get("/anything", Some(token)).await;
    assert_eq!(r.status(), 401, "{why}: status");
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"tollgate\", error=\"invalid_token\""),
        "{why}: {challenge}"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token", "{why}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "{why}"
    );
    assert!(
        !body.to_string().contains(token),
        "{why}: the token must not be echoed"
    );
    assert_eq!(
        h.echo.hits(),
        before,
        "{why}: the upstream must never see a rejected request"
    );
    // Introspection runs the same checks: the token is not active there either.
    let r = h
        .http
        .post(format!(
            "http://{}/api/v1/introspect",
            h.server.api.unwrap()
        ))
        .json(&json!({"identity_provider": "entra_id", "token": token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{why}: introspection status");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["active"], false, "{why}: introspection");
}

#[tokio::test]
async fn valid_token_reaches_upstream_with_identity_headers() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let token = key.token(&h.idp.issuer(), json!({}));
    let r = h
        .http
        .get(h.url("/hello?x=1"))
        .bearer_auth(&token)
        .header("X-Auth-Subject", "mallory")
        .header("x-auth-roles", "Admin")
        .header("X-Auth-Custom", "spoof")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    let hdr = &echo["headers"];
    assert_eq!(echo["path"], "/hello?x=1");
    assert_eq!(hdr["x-auth-subject"], "alice-sub");
    assert_eq!(hdr["x-auth-oid"], "99999999-8888-7777-6666-555555555555");
    assert_eq!(hdr["x-auth-tid"], TENANT);
    assert_eq!(hdr["x-auth-name"], "Alice Example");
    assert_eq!(hdr["x-auth-scopes"], "access_as_user");
    assert_eq!(hdr["x-auth-roles"], "Reader");
    assert!(
        hdr.get("x-auth-custom").is_none(),
        "client-supplied X-Auth-* headers are dropped"
    );
    assert_eq!(h.echo.hits(), 1);
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn identity_and_forwarding_headers_are_stripped_in_every_spelling() {
    // CGI/WSGI/Rack servers read `_` as `-` (HTTP_X_AUTH_OID): each of these would reach such an
    // app as one of ours.
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let token = key.token(&h.idp.issuer(), json!({}));
    let spoofed = [
        "X_Auth_Oid",
        "x_auth_subject",
        "X-Auth_Roles",
        "x_auth-tid",
        "X_AUTH_CUSTOM",
        "X_Forwarded_For",
        "x_forwarded_host",
        "X-Forwarded_Proto",
        "x_forwarded-prefix",
        "x_real_ip",
        "X-Real-IP",
        "True-Client-IP",
        "true_client_ip",
    ];
    for (path, sent) in [("/hello", Some(token.as_str())), ("/public/y", None)] {
        let mut req = h.http.get(h.url(path));
        if let Some(t) = sent {
            req = req.bearer_auth(t);
        }
        for name in spoofed {
            req = req.header(name, "203.0.113.66");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let echo: Value = r.json().await.unwrap();
        let hdr = echo["headers"].as_object().unwrap();
        for name in spoofed {
            let lower = name.to_ascii_lowercase();
            assert!(!hdr.contains_key(&lower), "{path}: {name} reached the app");
        }
        for (name, value) in hdr {
            assert!(
                !value.as_str().is_some_and(|v| v.contains("203.0.113.66")),
                "{path}: {name} carries the client's value"
            );
        }
        assert_eq!(hdr["x-forwarded-for"], "127.0.0.1", "{path}");
        if sent.is_some() {
            assert_eq!(hdr["x-auth-oid"], "99999999-8888-7777-6666-555555555555");
        }
    }
    // An underscore name that is not one of ours passes untouched.
    let r = h.get_with("/public/y", "x_custom_header", "kept").await;
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x_custom_header"], "kept");
}

/// tollgate with `[upstream] identity_headers = <global>` and routes `/` (no key), `/xauth`
/// (`true`), `/ea` (`"easyauth"`) and `/public` (`auth = "none"`).
async fn identity_headers_harness(key: &TestKey, global: &str) -> Harness {
    let idp = StaticIdp::start(&[key]).await;
    let echo = Echo::start().await;
    let toml = format!(
        r#"
{listen_block}
[upstream]
url = "{upstream}"
timeout = "5s"
identity_headers = {global}

[[providers]]
name = "entra_id"
well_known_url = "{well_known}"
client_id = "{CLIENT_ID}"

[[routes]]
path = "/"

[[routes]]
path = "/xauth"
identity_headers = true

[[routes]]
path = "/ea"
identity_headers = "easyauth"

[[routes]]
path = "/public"
auth = "none"
"#,
        listen_block = support::config::listen("5s"),
        upstream = echo.url(),
        well_known = idp.well_known(),
    );
    let cfg = Config::from_toml_str(&toml, &MapEnv::default()).unwrap();
    let server = Server::bind(cfg).await.unwrap().spawn();
    let h = Harness {
        idp,
        echo,
        server,
        http: reqwest::Client::new(),
    };
    h.wait_ready().await;
    h
}

/// The headers the echo app received for a GET of `path` with `token`.
async fn echoed_headers(h: &Harness, path: &str, token: &str) -> serde_json::Map<String, Value> {
    let r = h.get(path, Some(token)).await;
    assert_eq!(r.status(), 200, "{path}");
    let echo: Value = r.json().await.unwrap();
    echo["headers"].as_object().unwrap().clone()
}

/// The decoded `X-MS-CLIENT-PRINCIPAL` JSON.
fn client_principal(headers: &serde_json::Map<String, Value>) -> Value {
    use base64::Engine;
    let encoded = headers["x-ms-client-principal"].as_str().unwrap();
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    serde_json::from_slice(&json).unwrap()
}

/// Issue 15: `identity_headers = "easyauth"` gives the app App Service's Easy Auth headers
/// instead of X-Auth-*, so an app leaving App Service reads its caller as before.
#[tokio::test]
async fn an_easyauth_route_gets_app_service_identity_headers() {
    let key = TestKey::new("k1");
    let h = identity_headers_harness(&key, "true").await;
    let token = key.token(
        &h.idp.issuer(),
        json!({
            "roles": ["Reader", "Writer"],
            "groups": ["g1", "g2"],
            "_claim_sources": {"src1": {"endpoint": "https://graph.example"}},
            "email_verified": true,
        }),
    );
    let hdr = echoed_headers(&h, "/ea/x", &token).await;
    assert_eq!(
        hdr["x-ms-client-principal-id"],
        "99999999-8888-7777-6666-555555555555"
    );
    assert_eq!(hdr["x-ms-client-principal-name"], "alice@contoso.example");
    assert_eq!(hdr["x-ms-client-principal-idp"], "aad");
    assert!(
        !hdr.keys().any(|k| k.starts_with("x-auth-")),
        "an easyauth route gets no X-Auth-*: {hdr:?}"
    );
    let principal = client_principal(&hdr);
    assert_eq!(principal["auth_typ"], "aad");
    assert_eq!(principal["name_typ"], "name");
    assert_eq!(principal["role_typ"], "roles");
    let claims: Vec<(String, String)> = principal["claims"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let fields = c.as_object().unwrap();
            assert_eq!(fields.len(), 2, "{c}");
            (
                fields["typ"].as_str().unwrap().to_owned(),
                fields["val"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let values = |typ: &str| -> Vec<&str> {
        claims
            .iter()
            .filter(|(t, _)| t == typ)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    // The claim names are those `name_typ` and `role_typ` point at.
    assert_eq!(values("name"), ["Alice Example"]);
    assert_eq!(values("roles"), ["Reader", "Writer"]);
    assert_eq!(values("groups"), ["g1", "g2"]);
    assert_eq!(values("oid"), ["99999999-8888-7777-6666-555555555555"]);
    assert_eq!(values("scp"), ["access_as_user"]);
    assert_eq!(values("tid"), [TENANT]);
    // Numbers and booleans as their text; objects left out.
    let exp = jwt_claims(&token)["exp"].as_u64().unwrap().to_string();
    assert_eq!(values("exp"), [exp.as_str()]);
    assert_eq!(values("email_verified"), ["true"]);
    assert!(values("_claim_sources").is_empty());

    // Without `preferred_username`, `-NAME` is `upn`, else `name`; without `oid`, `-ID` is `sub`.
    let token = key.token(
        &h.idp.issuer(),
        json!({"preferred_username": null, "upn": "alice@upn.example", "oid": null}),
    );
    let hdr = echoed_headers(&h, "/ea", &token).await;
    assert_eq!(hdr["x-ms-client-principal-name"], "alice@upn.example");
    assert_eq!(hdr["x-ms-client-principal-id"], "alice-sub");
    let token = key.token(&h.idp.issuer(), json!({"preferred_username": null}));
    let hdr = echoed_headers(&h, "/ea", &token).await;
    assert_eq!(hdr["x-ms-client-principal-name"], "Alice Example");

    // The other routes keep X-Auth-* (the global default here is `true`).
    let hdr = echoed_headers(&h, "/other", &token).await;
    assert_eq!(hdr["x-auth-oid"], "99999999-8888-7777-6666-555555555555");
    assert!(!hdr.keys().any(|k| k.starts_with("x-ms-")), "{hdr:?}");
    h.server.shutdown().await.unwrap();
}

/// `[upstream] identity_headers` is the default of routes without the key; a route's own value
/// wins.
#[tokio::test]
async fn the_upstream_identity_headers_apply_to_routes_without_their_own() {
    let key = TestKey::new("k1");
    let h = identity_headers_harness(&key, "\"easyauth\"").await;
    let token = key.token(&h.idp.issuer(), json!({}));
    let hdr = echoed_headers(&h, "/anything", &token).await;
    assert_eq!(
        hdr["x-ms-client-principal-id"],
        "99999999-8888-7777-6666-555555555555"
    );
    assert_eq!(client_principal(&hdr)["auth_typ"], "aad");
    assert!(!hdr.keys().any(|k| k.starts_with("x-auth-")), "{hdr:?}");
    let hdr = echoed_headers(&h, "/xauth", &token).await;
    assert_eq!(hdr["x-auth-oid"], "99999999-8888-7777-6666-555555555555");
    assert_eq!(hdr["x-auth-name"], "Alice Example");
    assert!(!hdr.keys().any(|k| k.starts_with("x-ms-")), "{hdr:?}");
    h.server.shutdown().await.unwrap();
}

/// Client-sent Easy Auth headers never reach the app, in any spelling and whatever the route's
/// identity headers: an app that trusts them must only ever see tollgate's.
#[tokio::test]
async fn client_sent_easy_auth_headers_are_stripped_on_every_route() {
    let key = TestKey::new("k1");
    let h = identity_headers_harness(&key, "true").await;
    let token = key.token(&h.idp.issuer(), json!({}));
    let spoofed = [
        "X-MS-CLIENT-PRINCIPAL",
        "x_ms_client_principal_id",
        "X-MS-Client-Principal_Name",
        "x-ms-client-principal-idp",
        "X-MS-TOKEN-AAD-ACCESS-TOKEN",
        "x_ms_token_aad_id_token",
    ];
    for (path, sent) in [
        ("/ea/x", Some(token.as_str())),
        ("/xauth/x", Some(token.as_str())),
        ("/public/x", None),
    ] {
        let mut req = h.http.get(h.url(path));
        if let Some(t) = sent {
            req = req.bearer_auth(t);
        }
        for name in spoofed {
            req = req.header(name, "spoofed");
        }
        // Nor can a client drop tollgate's own by naming them in `Connection`.
        req = req.header(
            "Connection",
            "X-MS-CLIENT-PRINCIPAL, x-ms-client-principal-id",
        );
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let echo: Value = r.json().await.unwrap();
        let hdr = echo["headers"].as_object().unwrap();
        for name in spoofed {
            let lower = name.to_ascii_lowercase();
            assert!(
                hdr.get(&lower).is_none_or(|v| v != "spoofed"),
                "{path}: {name} reached the app"
            );
        }
        assert!(
            !hdr.values().any(|v| v == "spoofed"),
            "{path}: a client's value reached the app: {hdr:?}"
        );
        if path == "/ea/x" {
            assert_eq!(
                hdr["x-ms-client-principal-id"],
                "99999999-8888-7777-6666-555555555555"
            );
            assert_eq!(client_principal(hdr)["auth_typ"], "aad");
        } else {
            assert!(
                !hdr.keys().any(|k| k.starts_with("x-ms")),
                "{path}: {hdr:?}"
            );
        }
    }
    h.server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_without_scopes_or_roles_and_from_other_clients_are_refused() {
    // An app-only token of any app in the tenant that asked for `api://<us>/.default` without
    // being granted a role carries neither scp nor roles: refused unless a route allows it.
    const FRONTEND: &str = "cccccccc-3333-4444-5555-dddddddddddd";
    const DAEMON: &str = "dddddddd-4444-5555-6666-eeeeeeeeeeee";
    const STRANGER: &str = "eeeeeeee-5555-6666-7777-ffffffffffff";
    let key = TestKey::new("k1");
    let idp = StaticIdp::start(&[&key]).await;
    let provider = format!(
        "well_known_url = \"{}\"\nallowed_client_ids = [\"{FRONTEND}\", \"{DAEMON}\"]\n\n\
         [[routes]]\npath = \"/acl\"\nallow_unscoped_tokens = true\n\n\
         [[routes]]\npath = \"/frontend-only\"\nallowed_client_ids = [\"{}\"]\n",
        idp.well_known(),
        FRONTEND.to_ascii_uppercase()
    );
    let h = harness_custom(idp, &provider).await;
    h.wait_ready().await;
    let iss = h.idp.issuer();
    let app = |client: &str, extra: Value| {
        let mut claims = json!({"scp": null, "roles": null, "azp": client, "idtyp": "app",
                                "sub": "app-oid", "oid": "app-oid", "name": null, "preferred_username": null});
        merge(&mut claims, extra);
        key.token(&iss, claims)
    };
    let unscoped = app(DAEMON, json!({}));
    let before = h.echo.hits();
    let r = h.get("/x", Some(&unscoped)).await;
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"tollgate\", error=\"insufficient_scope\", error_description=\"the token lacks a required scope or role\""
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(h.echo.hits(), before, "never forwarded");
    // A route that authorises by client itself lets it through.
    assert_eq!(h.get("/acl/x", Some(&unscoped)).await.status(), 200);
    // With a role it is an ordinary app token; a v1 token names its client in appid.
    let with_role = app(DAEMON, json!({"roles": ["Jobs.Run"]}));
    assert_eq!(h.get("/x", Some(&with_role)).await.status(), 200);
    let v1 = app(
        DAEMON,
        json!({"roles": ["Jobs.Run"], "azp": null, "appid": DAEMON, "ver": "1.0"}),
    );
    assert_eq!(h.get("/x", Some(&v1)).await.status(), 200);
    // A client on neither list: 401 everywhere, even where unscoped tokens are allowed.
    let stranger = app(STRANGER, json!({"roles": ["Jobs.Run"]}));
    for path in ["/x", "/acl/x", "/frontend-only/x"] {
        let r = h.get(path, Some(&stranger)).await;
        assert_eq!(r.status(), 401, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token", "{path}");
    }
    // The route's list narrows the provider's (an upper-case GUID in the file still matches).
    assert_eq!(
        h.get("/frontend-only/x", Some(&with_role)).await.status(),
        401
    );
    let user = key.token(&iss, json!({}));
    assert_eq!(h.get("/frontend-only/x", Some(&user)).await.status(), 200);
    assert_eq!(h.get("/x", Some(&user)).await.status(), 200);
}

#[tokio::test]
async fn missing_token_gets_a_challenge_without_error() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let r = h.get("/x", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    assert_eq!(r.headers()["content-type"], "application/json");
    let r = h
        .get_with("/x", "authorization", "Basic dXNlcjpwdw==")
        .await;
    // Another scheme is no bearer credential (RFC 6750 §3.1): the same challenge, no error.
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    let r = h.get_with("/x", "authorization", "Bearer").await;
    assert_eq!(r.status(), 400);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_request\"")
    );
    assert_eq!(h.echo.hits(), 0);
}

#[tokio::test]
async fn hostile_tokens_are_refused_and_never_forwarded() {
    let key = TestKey::new("k1");
    let attacker = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let iss = h.idp.issuer();
    let claims = user_claims(&iss);
    let hdr = |extra: Value| {
        let mut base = json!({"typ": "JWT", "alg": "RS256", "kid": "k1"});
        merge(&mut base, extra);
        base
    };
    // alg none, no signature.
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    assert_invalid(&h, &none, "alg none").await;
    // HS256 "signed" with the RSA public key (classic key-confusion attack).
    let input = format!(
        "{}.{}",
        b64(json!({"alg": "HS256", "kid": "k1"}).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mac = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key.public_n()),
        input.as_bytes(),
    );
    assert_invalid(
        &h,
        &format!("{input}.{}", b64(mac.as_ref())),
        "HS256 with the public key",
    )
    .await;
    // The attacker's key under a kid the IdP does not know.
    let rogue = TestKey::new("rogue");
    assert_invalid(&h, &rogue.token(&iss, json!({})), "unknown kid").await;
    // The attacker's key claiming the real kid.
    assert_invalid(&h, &attacker.token(&iss, json!({})), "wrong key for kid").await;
    // Headers that try to bring their own key.
    for extra in [
        json!({"jku": "http://127.0.0.1:1/keys"}),
        json!({"x5u": "http://127.0.0.1:1/cert"}),
        json!({"jwk": attacker.public_jwk()}),
        // RFC 7515 §4.1.11: critical extensions tollgate does not understand (it understands none).
        json!({"crit": ["exp"]}),
        json!({"crit": ["urn:example:ext"], "urn:example:ext": true}),
        json!({"crit": []}),
        // RFC 8725 §3.11 explicit typing: not an access token's type.
        json!({"typ": "logout+jwt"}),
        json!({"typ": "application/id_token+jwt"}),
    ] {
        assert_invalid(
            &h,
            &attacker.sign(&hdr(extra.clone()), &claims),
            &format!("header {extra}"),
        )
        .await;
        assert_invalid(
            &h,
            &key.sign(&hdr(extra.clone()), &claims),
            &format!("real key, header {extra}"),
        )
        .await;
    }
    let t = now();
    for (extra, why) in [
        (json!({"exp": t - 3600}), "expired"),
        (json!({"nbf": t + 3600}), "nbf in the future"),
        (json!({"iss": "https://evil.example/v2.0"}), "wrong issuer"),
        (
            json!({"iss": format!("http://{}/{OTHER_TENANT}/v2.0", h.idp.addr), "tid": OTHER_TENANT}),
            "other tenant",
        ),
        (json!({"aud": "api://someone-else"}), "wrong audience"),
        (
            json!({"aud": "00000003-0000-0000-c000-000000000000"}),
            "graph audience",
        ),
        (json!({"exp": null}), "missing exp"),
        (json!({"aud": null}), "missing aud"),
        (json!({"iss": null}), "missing iss"),
        (json!({"nonce": "n-0S6"}), "ID token with nonce"),
        (
            json!({"ver": null, "at_hash": "HK6E_P6Dh8Y93mRNtsDB1Q"}),
            "Google-style ID token (at_hash, no ver)",
        ),
        (
            json!({"c_hash": "LDktKdoQak3Pk0cnXxCltA"}),
            "hybrid-flow ID token",
        ),
        (json!({"ver": null, "typ": "ID"}), "Keycloak ID token"),
        (
            json!({"ver": null, "typ": "Refresh"}),
            "Keycloak refresh token",
        ),
        (
            json!({"events": {"http://schemas.openid.net/event/backchannel-logout": {}}}),
            "logout token",
        ),
        (
            json!({"azp": null, "scp": null}),
            "ID token without azp/appid",
        ),
    ] {
        assert_invalid(&h, &key.token(&iss, extra), why).await;
    }
    // RFC 9068's access-token type is one.
    let typed = key.sign(&hdr(json!({"typ": "at+jwt"})), &claims);
    assert_eq!(h.get("/ok", Some(&typed)).await.status(), 200);
    let good = key.token(&iss, json!({}));
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[1] = "eyJub3QtYmFzZTY0!!!";
    assert_invalid(&h, &parts.join("."), "malformed base64").await;
    assert_invalid(&h, "not-a-jwt", "not a JWT").await;
    let huge = key.sign(&hdr(json!({"pad": "x".repeat(20_000)})), &claims);
    assert_invalid(&h, &huge, "oversized token").await;
    // A valid token still passes afterwards.
    assert_eq!(h.get("/ok", Some(&good)).await.status(), 200);
}

#[tokio::test]
async fn scopes_and_roles_are_enforced_with_403() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let token = key.token(&h.idp.issuer(), json!({}));
    assert_eq!(
        h.get("/scoped/x", Some(&token)).await.status(),
        200,
        "any one of the scopes is enough"
    );
    assert_eq!(h.get("/reader", Some(&token)).await.status(), 200);
    for (path, scope) in [("/needs-scope/x", "Data.Write"), ("/needs-role", "Admin")] {
        let r = h.get(path, Some(&token)).await;
        assert_eq!(r.status(), 403, "{path}");
        let c = r.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            c.contains("error=\"insufficient_scope\"") && c.contains(&format!("scope=\"{scope}\"")),
            "{c}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "insufficient_scope");
    }
    assert_eq!(h.echo.hits(), 2);
}

#[tokio::test]
async fn cors_preflights_reach_the_app_only_where_allowed() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let preflight = |path: &str| {
        h.http
            .request(reqwest::Method::OPTIONS, h.url(path))
            .header("origin", "https://spa.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
    };
    // Allowed: the app answers the preflight, and is told no identity.
    let r = preflight("/cors/x")
        .header("x-auth-subject", "spoofed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["method"], "OPTIONS");
    assert_eq!(echo["headers"]["origin"], "https://spa.example");
    assert!(echo["headers"].get("x-auth-subject").is_none());
    assert_eq!(h.echo.hits(), 1);
    // A preflight's URL is the real request's: with token_in_query, a token in it is dropped.
    let r = preflight("/cors/x?id=1&access_token=eyJ.e30.sig")
        .send()
        .await
        .unwrap();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["path"], "/cors/x?id=1");
    assert!(echo["headers"].get("authorization").is_none());
    assert_eq!(h.echo.hits(), 2);
    // Not a preflight: an OPTIONS without Access-Control-Request-Method, one carrying a
    // credential, and any other method still need a token.
    let bare_options = h
        .http
        .request(reqwest::Method::OPTIONS, h.url("/cors/x"))
        .header("origin", "https://spa.example");
    let with_credential = preflight("/cors/x").header("authorization", "Bearer garbage");
    for (what, request) in [
        (
            "OPTIONS without Access-Control-Request-Method",
            bare_options,
        ),
        ("a preflight with a credential", with_credential),
        ("a GET", h.http.get(h.url("/cors/x"))),
        (
            "a preflight where the route does not allow it",
            preflight("/ok"),
        ),
    ] {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
    }
    assert_eq!(h.echo.hits(), 2, "nothing else reached the app");
}

#[tokio::test]
async fn a_query_token_is_accepted_where_allowed_and_moved_to_authorization() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let token = key.token(&h.idp.issuer(), json!({}));
    let get = |path_and_query: String| h.http.get(h.url(&path_and_query)).send();
    // SignalR's WebSocket handshake: the token is a query parameter among others.
    let r = get(format!("/signalr/hub?id=7&access_token={token}&x=a%20b"))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(
        echo["path"], "/signalr/hub?id=7&x=a%20b",
        "the token left the URL"
    );
    assert_eq!(echo["headers"]["authorization"], format!("Bearer {token}"));
    assert_eq!(echo["headers"]["x-auth-subject"], "alice-sub");
    let r = get(format!("/signalr/hub?access_token={token}"))
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["path"], "/signalr/hub");
    assert_eq!(h.echo.hits(), 2);

    // Refused, and nothing forwarded: another route, two methods at once, two tokens, a bad one.
    let r = get(format!("/ok?access_token={token}")).await.unwrap();
    assert_eq!(r.status(), 401, "only where token_in_query is set");
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    let both = h
        .http
        .get(h.url(&format!("/signalr/hub?access_token={token}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400, "RFC 6750 §2: one method only");
    let twice = get(format!(
        "/signalr/hub?access_token={token}&access_token={token}"
    ))
    .await
    .unwrap();
    assert_eq!(twice.status(), 400);
    for bad in ["", "not%20a%20token", "eyJ.e30.sig"] {
        let r = get(format!("/signalr/hub?access_token={bad}"))
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert!(status == 400 || status == 401, "{bad:?}: {status}");
        assert!(
            !body.to_string().contains("eyJ.e30.sig"),
            "the token is not echoed: {body}"
        );
    }
    assert_eq!(h.echo.hits(), 2, "no refused request reached the app");
}

#[tokio::test]
async fn optional_and_none_routes() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let r = h.get("/optional/x", None).await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert!(echo["headers"].get("x-auth-subject").is_none());
    assert_eq!(
        h.get("/optional/x", Some("garbage")).await.status(),
        401,
        "a bad token is refused even where optional"
    );
    let token = key.token(&h.idp.issuer(), json!({}));
    let echo: Value = h
        .get("/optional/x", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(echo["headers"]["x-auth-subject"], "alice-sub");
    // Another scheme carries no bearer token: where one is optional the request goes on
    // unauthenticated, the app's own credential untouched.
    let r = h
        .get_with("/optional/x", "authorization", "Basic dXNlcjpwdw==")
        .await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["authorization"], "Basic dXNlcjpwdw==");
    assert!(echo["headers"].get("x-auth-subject").is_none());
    let r = h.get_with("/public/y", "x-auth-subject", "spoofed").await;
    assert_eq!(r.status(), 200);
    let echo: Value = r.json().await.unwrap();
    assert!(
        echo["headers"].get("x-auth-subject").is_none(),
        "spoofed identity removed on auth=none routes too"
    );
}

#[tokio::test]
async fn key_rotation_is_picked_up_with_exactly_one_refetch() {
    let old = TestKey::new("old");
    let new = TestKey::new("new");
    let h = harness(&[&old]).await;
    h.wait_ready().await;
    assert_eq!(
        h.get("/x", Some(&old.token(&h.idp.issuer(), json!({}))))
            .await
            .status(),
        200
    );
    let before = h.idp.fetches();
    h.idp.set_keys(&[&old, &new]);
    let token = new.token(&h.idp.issuer(), json!({}));
    assert_eq!(h.get("/x", Some(&token)).await.status(), 200);
    assert_eq!(h.idp.fetches(), before + 1, "one refetch for the new kid");
    assert_eq!(
        h.get("/y", Some(&new.token(&h.idp.issuer(), json!({"jti": "2"}))))
            .await
            .status(),
        200
    );
    assert_eq!(h.idp.fetches(), before + 1, "the new key is cached");
}

#[tokio::test]
async fn a_withdrawn_key_stops_vouching_for_cached_tokens() {
    // An emergency rollover: the IdP takes a key out of its JWKS. Tokens it signed were valid
    // and are cached, but must not be served from the cache until their `exp`.
    let old = TestKey::new("old");
    let new = TestKey::new("new");
    let h = refreshing_harness("withdrawn", &[&old, &new], "").await;
    let iss = h.idp.issuer();
    let signed_by_old = old.token(&iss, json!({}));
    let signed_by_new = new.token(&iss, json!({}));
    for token in [&signed_by_old, &signed_by_old, &signed_by_new] {
        assert_eq!(h.get("/x", Some(token)).await.status(), 200);
    }
    withdraw_all_but(&h, &new).await;
    let r = h.get("/x", Some(&signed_by_old)).await;
    assert_eq!(r.status(), 401, "the cached token's key is gone");
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("invalid_token")
    );
    assert_eq!(
        h.get("/x", Some(&signed_by_new)).await.status(),
        200,
        "tokens of the remaining key are checked again and pass"
    );
    assert_eq!(h.echo.hits(), 4);
}

#[tokio::test]
async fn a_connections_last_token_vouches_for_its_own_bytes_only() {
    last_token_vouches_for_its_own_bytes_only("").await;
}

#[tokio::test]
async fn through_the_router_too_the_last_token_vouches_for_its_own_bytes_only() {
    // The access log puts the public listener's requests through the router.
    last_token_vouches_for_its_own_bytes_only("[log]\naccess = true").await;
}

/// One client keeps one connection: the proxy remembers the connection's last token and
/// recognises it by its bytes. The same signature over other claims must not pass as it, and
/// the remembered token must stop passing when its key is withdrawn. `extra` is more
/// configuration.
async fn last_token_vouches_for_its_own_bytes_only(extra: &str) {
    let key = TestKey::new("k1");
    let h = refreshing_harness("last", &[&key], extra).await;
    let iss = h.idp.issuer();
    let token = key.token(&iss, json!({}));
    let mut forged_claims = user_claims(&iss);
    merge(
        &mut forged_claims,
        json!({"sub": "mallory", "roles": ["Admin"]}),
    );
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = b64(forged_claims.to_string().as_bytes());
    let forged = parts.join(".");
    let before = h.echo.hits();
    for (sent, status) in [(&token, 200), (&forged, 401), (&token, 200), (&token, 200)] {
        assert_eq!(h.get("/x", Some(sent)).await.status(), status);
    }
    assert_eq!(
        h.echo.hits(),
        before + 3,
        "the forged token never reached the app"
    );
    // The connection's last token is `token`; its key goes.
    withdraw_all_but(&h, &TestKey::new("k2")).await;
    assert_eq!(
        h.get("/x", Some(&token)).await.status(),
        401,
        "its key is gone"
    );
}

/// A ready harness whose provider `name` fetches the IdP's keys (`keys`) every 200 ms;
/// `extra` is more configuration.
async fn refreshing_harness(name: &str, keys: &[&TestKey], extra: &str) -> Harness {
    let idp = StaticIdp::start(keys).await;
    let provider = format!(
        "name = \"{name}\"\nwell_known_url = \"{}\"\njwks_refresh = \"200ms\"\n{extra}",
        idp.well_known()
    );
    let h = harness_custom(idp, &provider).await;
    h.wait_ready().await;
    h
}

/// The IdP publishes only `kept` from now on; returns once tollgate's background refresh
/// (`jwks_refresh` of 200 ms) has fetched the new set.
async fn withdraw_all_but(h: &Harness, kept: &TestKey) {
    h.idp.set_keys(&[kept]);
    let before = h.idp.fetches();
    for _ in 0..100 {
        if h.idp.fetches() >= before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.idp.fetches() >= before + 2, "the background refresh ran");
}

#[tokio::test]
async fn random_kid_flood_causes_at_most_one_fetch_per_interval() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let before = h.idp.fetches();
    let iss = h.idp.issuer();
    let claims = user_claims(&iss);
    let mut tasks = Vec::new();
    for i in 0..200 {
        let token = key.sign(
            &json!({"alg": "RS256", "typ": "JWT", "kid": format!("random-{i}")}),
            &claims,
        );
        let http = h.http.clone();
        let url = h.url("/flood");
        tasks.push(tokio::spawn(async move {
            http.get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 401);
    }
    assert!(
        h.idp.fetches() - before <= 1,
        "{} fetches for 200 unknown kids",
        h.idp.fetches() - before
    );
    assert_eq!(h.echo.hits(), 0);
}

#[tokio::test]
async fn idp_down_at_start_then_up() {
    let key = TestKey::new("k1");
    // Reserve a port, release it, start tollgate against it while nothing listens there.
    let reserved = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let echo = Echo::start().await;
    let well_known = format!("http://{addr}/{TENANT}/v2.0/.well-known/openid-configuration");
    let cfg = Config::from_toml_str(
        &config_toml(&well_known, &echo.url(), ""),
        &MapEnv::default(),
    )
    .unwrap();
    let server = Server::bind(cfg).await.unwrap().spawn();
    let http = reqwest::Client::new();
    let admin = format!("http://{}/readyz", server.admin.unwrap());
    assert_eq!(http.get(&admin).send().await.unwrap().status(), 503);
    assert_eq!(
        http.get(format!("http://{}/healthz", server.admin.unwrap()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let token_iss = format!("http://{addr}/{TENANT}/v2.0");
    let r = http
        .get(format!("http://{}/x", server.public))
        .bearer_auth(key.token(&token_iss, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        503,
        "no keys yet: temporarily unavailable, not a verdict on the token"
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let _idp = StaticIdp::start_on(listener, &[&key]).await;
    let mut ready = false;
    for _ in 0..100 {
        if http.get(&admin).send().await.unwrap().status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ready,
        "tollgate retries and becomes ready once the IdP is up"
    );
    let r = http
        .get(format!("http://{}/x", server.public))
        .bearer_auth(key.token(&token_iss, json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(echo.hits(), 1);
}

#[tokio::test]
async fn jwks_failure_after_start_keeps_cached_keys() {
    // A provider name of its own: the Prometheus recorder is shared by every test in the binary.
    const NAME: &str = "keep_stale";
    let key = TestKey::new("k1");
    let h = refreshing_harness(NAME, &[&key], "").await;
    let iss = h.idp.issuer();
    assert_eq!(
        h.get("/x", Some(&key.token(&iss, json!({}))))
            .await
            .status(),
        200
    );
    let errors_before = h.jwks_fetch_errors(NAME).await;
    let served_errors_before = h.idp.jwks_errors();
    // Discovery keeps working: the refresh reaches the JWKS endpoint and fails there.
    h.idp
        .set_jwks_fail(Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
    let mut failed = false;
    for _ in 0..100 {
        if h.idp.jwks_errors() >= served_errors_before + 2
            && h.jwks_fetch_errors(NAME).await >= errors_before + 2.0
        {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        failed,
        "background refreshes hit the failing JWKS endpoint and count as errors \
         (served {} errors, metric {} -> {})",
        h.idp.jwks_errors() - served_errors_before,
        errors_before,
        h.jwks_fetch_errors(NAME).await
    );
    for i in 0..3 {
        let token = key.token(&iss, json!({"jti": format!("fresh-{i}")}));
        assert_eq!(
            h.get("/x", Some(&token)).await.status(),
            200,
            "cached keys still verify new tokens while the IdP fails"
        );
    }
    assert_eq!(
        h.ready_status().await,
        200,
        "still ready within jwks_max_stale"
    );
    assert_eq!(h.echo.hits(), 4);
}

/// `jwks_max_stale` (1 s) is shorter than `jwks_refresh` (3 s): readiness must turn false as soon
/// as the keys are older than max_stale (before the next refresh can drop them), and the next
/// failed refresh drops them, after which tokens get 503.
#[tokio::test]
async fn jwks_keys_are_dropped_once_older_than_max_stale() {
    const NAME: &str = "drop_stale";
    const REFRESH: Duration = Duration::from_secs(3);
    let key = TestKey::new("k1");
    let idp = StaticIdp::start(&[&key]).await;
    let provider = format!(
        "name = \"{NAME}\"\nwell_known_url = \"{}\"\njwks_refresh = \"{}s\"\njwks_max_stale = \"1s\"",
        idp.well_known(),
        REFRESH.as_secs()
    );
    let h = harness_custom(idp, &provider).await;
    h.wait_ready().await;
    // The keys were fetched at most this long ago (the start-up refresh).
    let loaded_by = std::time::Instant::now();
    let iss = h.idp.issuer();
    assert_eq!(
        h.get("/x", Some(&key.token(&iss, json!({"jti": "early"}))))
            .await
            .status(),
        200
    );
    let errors_before = h.jwks_fetch_errors(NAME).await;
    h.idp
        .set_jwks_fail(Some(reqwest::StatusCode::SERVICE_UNAVAILABLE));
    // Readiness turns false once the keys are older than jwks_max_stale, before the next
    // background refresh (REFRESH after the start-up one) could drop them.
    let mut not_ready_after = None;
    while loaded_by.elapsed() < REFRESH - Duration::from_millis(700) {
        if h.ready_status().await == 503 {
            not_ready_after = Some(loaded_by.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let not_ready_after = not_ready_after.expect("readiness turns false after jwks_max_stale");
    assert!(
        not_ready_after >= Duration::from_millis(700),
        "not ready after only {not_ready_after:?}: the keys were not stale yet"
    );
    // Stale keys vouch for nothing, even before the next refresh drops them.
    let r = h
        .get("/x", Some(&key.token(&iss, json!({"jti": "stale-now"}))))
        .await;
    assert_eq!(
        r.status(),
        503,
        "keys older than jwks_max_stale verify nothing"
    );
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable");
    // The next refresh fails and drops them; tokens still get 503.
    for _ in 0..100 {
        if h.idp.jwks_errors() >= 1 && h.jwks_fetch_errors(NAME).await > errors_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        h.idp.jwks_errors() >= 1 && h.jwks_fetch_errors(NAME).await > errors_before,
        "the background refresh tried and failed"
    );
    let r = h
        .get("/x", Some(&key.token(&iss, json!({"jti": "dropped"}))))
        .await;
    assert_eq!(r.status(), 503, "dropped keys verify nothing");
    assert_eq!(h.ready_status().await, 503);
    // The IdP comes back: keys are loaded again and tokens pass.
    let hits = h.echo.hits();
    h.idp.set_jwks_fail(None);
    let mut ready = false;
    for _ in 0..100 {
        if h.ready_status().await == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "ready again once the IdP answers");
    assert_eq!(
        h.get("/x", Some(&key.token(&iss, json!({"jti": "back"}))))
            .await
            .status(),
        200
    );
    assert_eq!(h.echo.hits(), hits + 1);
}

#[tokio::test]
async fn metrics_are_exposed() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let token = key.token(&h.idp.issuer(), json!({}));
    assert_eq!(h.get("/m", Some(&token)).await.status(), 200);
    assert_eq!(h.get("/m", Some(&token)).await.status(), 200);
    assert_eq!(h.get("/m", None).await.status(), 401);
    let text = h.metrics_text().await;
    for needle in [
        "tollgate_requests_total{route=\"/\",status=\"200\"}",
        "tollgate_requests_total{route=\"/\",status=\"401\"}",
        "tollgate_validations_total{provider=\"entra_id\",result=\"cached\"}",
        "tollgate_validations_total{provider=\"entra_id\",result=\"valid\"}",
        "tollgate_jwks_fetches_total{provider=\"entra_id\",result=\"ok\"}",
        "tollgate_upstream_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains(&token));
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let url = h.url("/public/slow");
    let http = h.http.clone();
    // /public/slow is proxied to the echo's slow handler (800 ms).
    let inflight = tokio::spawn(async move { http.get(url).send().await.map(|r| r.status()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let public = h.server.public;
    h.server.shutdown().await.unwrap();
    assert_eq!(
        inflight.await.unwrap().unwrap(),
        200,
        "the in-flight request completed"
    );
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "no longer accepting"
    );
}

/// The same proxy against the real dev IdP: Entra-shaped tokens pass, ID tokens and tokens for
/// another API do not, and a rotated signing key is picked up.
#[tokio::test]
async fn dev_idp_tokens_and_key_rotation() {
    use tollgate_devidp::{self as devidp, DevIdp, DevIdpConfig};
    let idp = DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap();
    let echo = Echo::start().await;
    let toml = config_toml(
        &idp.well_known_url(devidp::DEFAULT_TENANT_ID),
        &echo.url(),
        "",
    );
    let server = Server::bind(Config::from_toml_str(&toml, &MapEnv::default()).unwrap())
        .await
        .unwrap()
        .spawn();
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http
            .get(format!("http://{}/readyz", server.admin.unwrap()))
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = format!("http://{}/hello", server.public);
    let scope = format!("{}/access_as_user", devidp::TOLLGATE_APP_ID_URI);
    let token = idp
        .password_token(devidp::ALICE, devidp::FRONTEND_CLIENT_ID, &scope)
        .await
        .unwrap();
    let r = http.get(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let echo_body: Value = r.json().await.unwrap();
    assert_eq!(echo_body["headers"]["x-auth-oid"], devidp::ALICE_OID);
    // A token for another API is refused.
    let other = idp
        .password_token(
            devidp::ALICE,
            devidp::FRONTEND_CLIENT_ID,
            &format!("{}/Data.Read", devidp::DOWNSTREAM_APP_ID_URI),
        )
        .await
        .unwrap();
    assert_eq!(
        http.get(&url)
            .bearer_auth(&other)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // Rotation: the next token carries a new kid; tollgate refetches once and accepts it.
    let kid = idp.rotate_keys(true);
    let rotated = idp
        .password_token(devidp::BOB, devidp::FRONTEND_CLIENT_ID, &scope)
        .await
        .unwrap();
    assert_eq!(
        tollgate::validate::token_kid(&rotated).as_deref(),
        Some(kid.as_str())
    );
    assert_eq!(
        http.get(&url)
            .bearer_auth(&rotated)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(echo.hits(), 2);
}

const ENTRA_V2_TEMPLATE: &str = "https://login.microsoftonline.com/{tenantid}/v2.0";

fn entra_v2(tenant: &str) -> String {
    format!("https://login.microsoftonline.com/{tenant}/v2.0")
}

fn entra_v1(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

/// A v1 access token's claims: `appid` instead of `azp`, `ver: 1.0`, the `api://` audience.
fn v1_claims(tenant: &str) -> Value {
    json!({"iss": entra_v1(tenant), "tid": tenant, "ver": "1.0", "azp": null,
           "appid": "cccccccc-3333-4444-5555-dddddddddddd", "aud": format!("api://{CLIENT_ID}")})
}

/// A multi-tenant Entra provider: the discovery document (`/common`) names the `{tenantid}`
/// issuer template, as Entra's does. `pinned` carries Entra's per-key `issuer` naming
/// `OTHER_TENANT`; `key` carries the `{tenantid}` template as its `issuer` when `key_issuer`, and
/// none otherwise (so only the provider's issuer rules can refuse its tokens: validate.rs
/// checks a key's `issuer` too, which would mask a broken provider-level check).
async fn entra_template_harness(
    key: &TestKey,
    pinned: &TestKey,
    allowed: &str,
    key_issuer: bool,
) -> Harness {
    let idp = StaticIdp::start(&[]).await;
    idp.set_discovery_issuer(ENTRA_V2_TEMPLATE);
    let mut k1 = key.public_jwk();
    if key_issuer {
        k1["issuer"] = json!(ENTRA_V2_TEMPLATE);
    }
    let mut k2 = pinned.public_jwk();
    k2["issuer"] = json!(entra_v2(OTHER_TENANT));
    idp.set_jwks(json!({"keys": [k1, k2]}));
    let provider = format!(
        "well_known_url = \"{}\"\nallowed_tenants = {allowed}",
        idp.well_known_for("common")
    );
    let h = harness_custom(idp, &provider).await;
    h.wait_ready().await;
    h
}

#[tokio::test]
async fn entra_tenant_template_is_checked_against_allowed_tenants() {
    let key = TestKey::new("k1");
    let pinned = TestKey::new("k-other-tenant");
    let h = entra_template_harness(&key, &pinned, &format!("[\"{TENANT}\"]"), false).await;

    // An allowed tenant, v2 issuer.
    let echo = assert_ok(&h, &key.token(&entra_v2(TENANT), json!({})), "T1 v2").await;
    assert_eq!(echo["headers"]["x-auth-tid"], TENANT);
    // The same tenant id in upper case names the same tenant.
    let upper = TENANT.to_uppercase();
    assert_ok(
        &h,
        &key.token(&entra_v2(&upper), json!({"tid": upper})),
        "T1 in upper case",
    )
    .await;

    // Another tenant, consistent iss and tid: refused by allowed_tenants.
    let t2 = key.token(&entra_v2(OTHER_TENANT), json!({"tid": OTHER_TENANT}));
    assert_invalid(&h, &t2, "T2 token").await;
    // iss and tid disagree, in both directions.
    assert_invalid(
        &h,
        &key.token(&entra_v2(TENANT), json!({"tid": OTHER_TENANT})),
        "iss names T1, tid says T2",
    )
    .await;
    assert_invalid(
        &h,
        &key.token(&entra_v2(OTHER_TENANT), json!({"tid": TENANT})),
        "iss names T2, tid says T1",
    )
    .await;
    // The template cannot be filled without a usable tid.
    assert_invalid(
        &h,
        &key.token(&entra_v2(TENANT), json!({"tid": null})),
        "no tid",
    )
    .await;
    for bad in [
        "contoso.onmicrosoft.com",
        "common",
        "11111111222233334444555555555555",
    ] {
        assert_invalid(
            &h,
            &key.token(&entra_v2(bad), json!({"tid": bad})),
            &format!("non-GUID tid {bad}"),
        )
        .await;
    }
    // The issuer template itself is not an issuer.
    assert_invalid(
        &h,
        &key.token(ENTRA_V2_TEMPLATE, json!({})),
        "literal template as iss",
    )
    .await;
    // A key whose Entra `issuer` is pinned to T2 cannot sign for T1.
    assert_invalid(
        &h,
        &pinned.token(&entra_v2(TENANT), json!({})),
        "key issued for another tenant",
    )
    .await;

    // validate.rs accepts the v1 form of the same template (`https://sts.windows.net/{tid}/`).
    let echo = assert_ok(
        &h,
        &key.token(&entra_v1(TENANT), v1_claims(TENANT)),
        "T1 v1",
    )
    .await;
    assert_eq!(echo["headers"]["x-auth-tid"], TENANT);
    assert_invalid(
        &h,
        &key.token(&entra_v1(OTHER_TENANT), v1_claims(OTHER_TENANT)),
        "T2 v1",
    )
    .await;
    let mut mixed = v1_claims(TENANT);
    mixed["tid"] = json!(OTHER_TENANT);
    assert_invalid(
        &h,
        &key.token(&entra_v1(TENANT), mixed),
        "v1 iss T1, tid T2",
    )
    .await;
    assert_eq!(h.echo.hits(), 3);
}

/// `allowed_tenants = ["*"]` accepts any tenant, so here nothing but the issuer/tid rules can
/// refuse: it shows the refusals above are the tenant rules' doing.
#[tokio::test]
async fn entra_tenant_wildcard_still_requires_a_guid_tid_matching_iss() {
    let key = TestKey::new("k1");
    let pinned = TestKey::new("k-other-tenant");
    // Without and with Entra's per-key `issuer` template on the signing key.
    for key_issuer in [false, true] {
        let h = entra_template_harness(&key, &pinned, "[\"*\"]", key_issuer).await;
        let why = |w: &str| format!("{w} (key issuer: {key_issuer})");
        assert_ok(&h, &key.token(&entra_v2(TENANT), json!({})), &why("T1")).await;
        assert_ok(
            &h,
            &key.token(&entra_v2(OTHER_TENANT), json!({"tid": OTHER_TENANT})),
            &why("T2 is accepted under *"),
        )
        .await;
        assert_ok(
            &h,
            &key.token(&entra_v1(OTHER_TENANT), v1_claims(OTHER_TENANT)),
            &why("T2 v1 is accepted under *"),
        )
        .await;
        assert_invalid(
            &h,
            &key.token(&entra_v2(TENANT), json!({"tid": OTHER_TENANT})),
            &why("iss names T1, tid says T2"),
        )
        .await;
        assert_invalid(
            &h,
            &key.token(&entra_v1(TENANT), json!({"tid": OTHER_TENANT})),
            &why("v1 iss names T1, tid says T2"),
        )
        .await;
        for bad in [
            "contoso.onmicrosoft.com",
            "common",
            "11111111222233334444555555555555",
        ] {
            assert_invalid(
                &h,
                &key.token(&entra_v2(bad), json!({"tid": bad})),
                &why(&format!("non-GUID tid {bad}")),
            )
            .await;
        }
        assert_invalid(
            &h,
            &key.token(&entra_v2(TENANT), json!({"tid": null})),
            &why("no tid"),
        )
        .await;
        assert_eq!(h.echo.hits(), 3);
    }
}

#[tokio::test]
async fn leeway_applies_to_exp_and_nbf() {
    let key = TestKey::new("k1");
    let t = now();
    let expired_30s = json!({"iat": t - 3600, "nbf": t - 3600, "exp": t - 30});
    let nbf_in_30s = json!({"nbf": t + 30});
    let expired_5m = json!({"iat": t - 3600, "nbf": t - 3600, "exp": t - 300});
    let nbf_in_5m = json!({"nbf": t + 300});

    let lenient = harness_with(&[&key], "leeway = \"60s\"").await;
    lenient.wait_ready().await;
    let iss = lenient.idp.issuer();
    assert_ok(
        &lenient,
        &key.token(&iss, expired_30s.clone()),
        "expired 30 s ago, leeway 60 s",
    )
    .await;
    assert_ok(
        &lenient,
        &key.token(&iss, nbf_in_30s.clone()),
        "nbf in 30 s, leeway 60 s",
    )
    .await;
    assert_invalid(
        &lenient,
        &key.token(&iss, expired_5m.clone()),
        "expired 5 min ago, leeway 60 s",
    )
    .await;
    assert_invalid(
        &lenient,
        &key.token(&iss, nbf_in_5m.clone()),
        "nbf in 5 min, leeway 60 s",
    )
    .await;

    for leeway in ["0s", "5s"] {
        let strict = harness_with(&[&key], &format!("leeway = \"{leeway}\"")).await;
        strict.wait_ready().await;
        let iss = strict.idp.issuer();
        assert_ok(&strict, &key.token(&iss, json!({})), "a current token").await;
        assert_invalid(
            &strict,
            &key.token(&iss, expired_30s.clone()),
            &format!("expired 30 s ago, leeway {leeway}"),
        )
        .await;
        assert_invalid(
            &strict,
            &key.token(&iss, nbf_in_30s.clone()),
            &format!("nbf in 30 s, leeway {leeway}"),
        )
        .await;
    }
}

#[tokio::test]
async fn explicit_issuer_and_jwks_uri_without_discovery() {
    let key = TestKey::new("k1");
    let idp = StaticIdp::start(&[&key]).await;
    let provider = format!(
        "issuer = \"{}\"\njwks_uri = \"{}\"",
        idp.issuer(),
        idp.jwks_uri()
    );
    let h = harness_custom(idp, &provider).await;
    h.wait_ready().await;
    let iss = h.idp.issuer();
    let echo = assert_ok(
        &h,
        &key.token(&iss, json!({})),
        "explicitly configured provider",
    )
    .await;
    assert_eq!(echo["headers"]["x-auth-subject"], "alice-sub");
    assert_invalid(
        &h,
        &key.token(
            &format!("http://{}/{OTHER_TENANT}/v2.0", h.idp.addr),
            json!({"tid": OTHER_TENANT}),
        ),
        "another issuer",
    )
    .await;
    assert_invalid(
        &h,
        &TestKey::new("k1").token(&iss, json!({})),
        "another key",
    )
    .await;
    assert!(
        h.idp.fetches() >= 1,
        "keys come from the configured jwks_uri"
    );
    assert_eq!(
        h.idp.discovery_fetches(),
        0,
        "no discovery without well_known_url"
    );
}

#[tokio::test]
async fn any_of_several_audiences_is_accepted() {
    let key = TestKey::new("k1");
    let h = harness_with(
        &[&key],
        "audiences = [\"api://first-api\", \"api://second-api\"]",
    )
    .await;
    h.wait_ready().await;
    let iss = h.idp.issuer();
    assert_ok(
        &h,
        &key.token(&iss, json!({"aud": "api://second-api"})),
        "second audience",
    )
    .await;
    assert_ok(
        &h,
        &key.token(&iss, json!({"aud": "api://first-api"})),
        "first audience",
    )
    .await;
    assert_ok(
        &h,
        &key.token(
            &iss,
            json!({"aud": ["api://third-api", "api://second-api"]}),
        ),
        "an aud array naming one of them",
    )
    .await;
    assert_invalid(
        &h,
        &key.token(&iss, json!({"aud": "api://third-api"})),
        "third audience",
    )
    .await;
    assert_invalid(
        &h,
        &key.token(
            &iss,
            json!({"aud": ["api://third-api", "api://fourth-api"]}),
        ),
        "an aud array naming none of them",
    )
    .await;
    // A configured list replaces the default (client id, api://client id).
    assert_invalid(
        &h,
        &key.token(&iss, json!({"aud": CLIENT_ID})),
        "client id not listed",
    )
    .await;
    assert_invalid(
        &h,
        &key.token(&iss, json!({"aud": format!("api://{CLIENT_ID}")})),
        "api://client id not listed",
    )
    .await;
}

#[tokio::test]
async fn unknown_kid_refetch_is_allowed_again_after_the_interval() {
    const INTERVAL: Duration = Duration::from_secs(2);
    let key = TestKey::new("k1");
    let new = TestKey::new("new");
    let idp = StaticIdp::start(&[&key]).await;
    let provider = format!(
        "well_known_url = \"{}\"\njwks_unknown_kid_min_interval = \"{}ms\"",
        idp.well_known(),
        INTERVAL.as_millis()
    );
    let h = harness_custom(idp, &provider).await;
    h.wait_ready().await;
    let iss = h.idp.issuer();
    let before = h.idp.fetches();
    // An unknown kid forces one refetch; the interval starts.
    assert_invalid(
        &h,
        &TestKey::new("rogue").token(&iss, json!({})),
        "unknown kid",
    )
    .await;
    let forced_at = std::time::Instant::now();
    assert_eq!(
        h.idp.fetches(),
        before + 1,
        "the first unknown kid refetches"
    );
    // The IdP rotates: within the interval the new kid is not fetched.
    h.idp.set_keys(&[&key, &new]);
    let token = new.token(&iss, json!({}));
    assert_invalid(&h, &token, "new kid within the interval").await;
    assert!(
        forced_at.elapsed() < INTERVAL,
        "the test was too slow to probe inside the interval"
    );
    assert_eq!(
        h.idp.fetches(),
        before + 1,
        "no refetch within the interval"
    );
    // Once the interval has passed, the next unknown kid may refetch again.
    tokio::time::sleep(INTERVAL + Duration::from_millis(300) - forced_at.elapsed().min(INTERVAL))
        .await;
    assert_ok(&h, &token, "new kid after the interval").await;
    assert_eq!(h.idp.fetches(), before + 2, "exactly one more refetch");
    // And the interval starts over.
    assert_invalid(
        &h,
        &TestKey::new("rogue-2").token(&iss, json!({})),
        "another unknown kid",
    )
    .await;
    assert_eq!(h.idp.fetches(), before + 2, "within the new interval");
}

/// SignalR's WebSocket transport end to end: the browser cannot set `Authorization`, so the
/// token rides in the query. tollgate validates it, and the app's WebSocket handshake arrives
/// with the token in `Authorization` and not in the URL, then frames flow both ways.
#[tokio::test]
// tungstenite's handshake callback type returns its whole error response by value.
#[allow(clippy::result_large_err)]
async fn a_websocket_with_a_query_token_is_authenticated_and_tunnelled() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    let key = TestKey::new("k1");
    let idp = StaticIdp::start(&[&key]).await;
    // The app: a WebSocket echo that records the handshake it was sent.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<(String, Option<String>)>();
    let upstream = tokio::spawn(async move {
        let mut seen = Some(seen_tx);
        // Two connections: the long-lived one, then one whose token is about to expire.
        for _ in 0..2 {
            let (stream, _) = listener.accept().await.unwrap();
            let record = |req: &Request, resp: Response| {
                let auth = req
                    .headers()
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                if let Some(tx) = seen.take() {
                    let _ = tx.send((req.uri().to_string(), auth));
                }
                Ok(resp)
            };
            let mut ws = tokio_tungstenite::accept_hdr_async(stream, record)
                .await
                .unwrap();
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() && ws.send(message).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let toml = format!(
        r#"
{listen_block}
[upstream]
url = "http://{app}"

[[providers]]
name = "entra_id"
well_known_url = "{}"
client_id = "{CLIENT_ID}"

[[routes]]
path = "/hub"
token_in_query = true
"#,
        idp.well_known(),
        listen_block = support::config::listen("5s"),
    );
    let cfg = Config::from_toml_str(&toml, &MapEnv::default()).unwrap();
    let server = Server::bind(cfg).await.unwrap().spawn();
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let ready = http
            .get(format!("http://{}/readyz", server.admin.unwrap()))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let token = key.token(&idp.issuer(), json!({}));

    // Without a token the handshake is refused before the app sees anything.
    let refused =
        tokio_tungstenite::connect_async(format!("ws://{}/hub?id=1", server.public)).await;
    assert!(refused.is_err(), "a handshake without a token is refused");

    let url = format!("ws://{}/hub?id=1&access_token={token}", server.public);
    let (mut ws, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), 101);
    let (target, authorization) = seen_rx.await.unwrap();
    assert_eq!(target, "/hub?id=1", "the token left the URL");
    assert_eq!(authorization, Some(format!("Bearer {token}")));
    ws.send(Message::text("ping")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("ping"));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}

    // The tunnel lives no longer than the token that opened it (upstream.close_tunnels_at_expiry).
    let short = key.token(&idp.issuer(), json!({"exp": support::now() + 2}));
    let url = format!("ws://{}/hub?access_token={short}", server.public);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    ws.send(Message::text("still valid")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still valid")
    );
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(
        closed.is_ok(),
        "the tunnel was closed when its token expired"
    );
    upstream.await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_validation_cache_reports_its_bytes() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let token = key.token(&h.idp.issuer(), json!({"jti": "weighed"}));
    assert_eq!(h.get("/m", Some(&token)).await.status(), 200);
    // The gauge sums every live cache of the process (other tests' servers too, each adding
    // its own entries): with this one's cached token in it, it holds at least that entry,
    // which weighs its payload and more.
    let text = h.metrics_text().await;
    let bytes = metric_value(&text, "tollgate_cache_bytes", &[("cache", "validation")]);
    assert!(bytes > 500.0, "{bytes} in\n{text}");
    assert!(!text.contains(&token));
}
