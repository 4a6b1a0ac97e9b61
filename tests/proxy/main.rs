//! The reverse proxy end to end: a static JWKS IdP and keys made in the test, an echo upstream,
//! tollgate on 127.0.0.1:0, driven by reqwest.

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
}

fn config_toml(well_known: &str, upstream: &str, extra_provider: &str) -> String {
    format!(
        r#"
[listen]
public = "127.0.0.1:0"
api = "127.0.0.1:0"
admin = "127.0.0.1:0"
shutdown_grace = "5s"

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
path = "/public"
auth = "none"
"#
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
async fn missing_token_gets_a_challenge_without_error() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let r = h.get("/x", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    assert_eq!(r.headers()["content-type"], "application/json");
    let r = h
        .http
        .get(h.url("/x"))
        .header("authorization", "Basic dXNlcjpwdw==")
        .send()
        .await
        .unwrap();
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
            json!({"azp": null, "scp": null}),
            "ID token without azp/appid",
        ),
    ] {
        assert_invalid(&h, &key.token(&iss, extra), why).await;
    }
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
    let r = h
        .http
        .get(h.url("/public/y"))
        .header("x-auth-subject", "spoofed")
        .send()
        .await
        .unwrap();
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
    let key = TestKey::new("k1");
    let h = harness_with(&[&key], "jwks_refresh = \"200ms\"").await;
    h.wait_ready().await;
    *h.idp.fail.lock().unwrap() = Some(reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let before = h.idp.fetches();
    // Wait until at least one background refresh has failed.
    for _ in 0..50 {
        if h.idp.fetches() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(h.idp.fetches() > before || before > 0);
    let token = key.token(&h.idp.issuer(), json!({"jti": "fresh"}));
    assert_eq!(
        h.get("/x", Some(&token)).await.status(),
        200,
        "stale keys still verify"
    );
    assert_eq!(
        h.http
            .get(h.admin("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
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
    let text = h
        .http
        .get(h.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
    use tollgate::devidp::{self, DevIdp, DevIdpConfig};
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
