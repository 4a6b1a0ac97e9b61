//! Browser sessions end to end: tollgate signs users in at the dev IdP itself (`[session]`),
//! proxies `auth = "session"` routes to an echo app with the identity headers and exchanged
//! tokens, answers forward-auth for an ingress, and ends sessions by sign-out, back-channel
//! logout and a dead refresh token. The HTTP client follows no redirects, so each hop is
//! checked; one test drives a real Chromium through the whole sign-in.

mod support;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::time::Duration;

use reqwest::header::{ACCEPT, COOKIE, LOCATION, SET_COOKIE};
use serde_json::Value;
use support::Echo;
use support::browser::{BROWSER_WAIT, Browser, submit_login_form};
use support::redis::RedisServer;
use tollgate::config::{Config, MapEnv};
use tollgate::server::{Listeners, RunningServer, Server};
use tollgate_devidp::*;
use url::Url;

const TENANT: &str = DEFAULT_TENANT_ID;
const HTML: &str = "text/html,application/xhtml+xml";

fn downstream_default() -> String {
    format!("{DOWNSTREAM_APP_ID_URI}/.default")
}

// ---------------------------------------------------------------------------------------------
// Sign-in, session routes, userinfo, sign-out

#[tokio::test]
async fn a_browser_signs_in_and_its_session_reaches_the_app_with_identity_and_exchanged_tokens() {
    let stack = Stack::start(Options::default()).await;

    // An API call without a session is refused; a navigation is sent to sign in, to come back.
    let api = stack.get("/app/data", None, "application/json").await;
    assert_eq!(api.status(), 401);
    assert!(api.headers().contains_key("www-authenticate"));
    let nav = stack.get("/app/page?x=1", None, HTML).await;
    assert_eq!(nav.status(), 302);
    let start = location(&nav);
    assert_eq!(
        start,
        format!("{}/oauth2/start?rd=%2Fapp%2Fpage%3Fx%3D1", stack.public_url)
    );
    assert_eq!(stack.echo.hits(), 0, "nothing reached the app");

    let signed_in_before = stack.sessions_metric("sign_in").await;
    let cookie = stack.sign_in_from(&start, ALICE).await;
    // Other tests of this binary sign in meanwhile: at least this one is counted.
    assert!(stack.sessions_metric("sign_in").await - signed_in_before >= 1.0);
    assert_eq!(
        cookie.landed, "/app/page?x=1",
        "back where the browser was going"
    );
    assert!(
        cookie.set_cookie.contains("HttpOnly")
            && cookie.set_cookie.contains("SameSite=Lax")
            && cookie.set_cookie.contains("Path=/"),
        "{}",
        cookie.set_cookie
    );
    assert!(
        !cookie.set_cookie.contains("Secure"),
        "http loopback: no Secure"
    );
    let session = cookie.pair.clone();

    // The app gets the user's identity headers; nothing of the cookie or the session id.
    let seen = stack.echo_of("/app/page", &session).await;
    assert_eq!(seen["headers"]["x-auth-oid"], ALICE_OID);
    assert_eq!(seen["headers"]["x-auth-name"], "Alice Example");
    assert_eq!(seen["headers"]["x-auth-tid"], TENANT);
    assert!(seen["headers"].get("authorization").is_none());

    // A session route with `obo` gets a downstream token from the session's refresh token.
    let seen = stack.echo_of("/obo/x", &session).await;
    let bearer = seen["headers"]["authorization"]
        .as_str()
        .unwrap()
        .to_owned();
    let claims = support::jwt_claims(bearer.strip_prefix("Bearer ").unwrap());
    assert_eq!(claims["aud"], DOWNSTREAM_CLIENT_ID);
    assert_eq!(claims["oid"], ALICE_OID);
    // Cached in the store: a second request does not ask the IdP again.
    let refreshes = stack.idp.token_requests("refresh_token");
    stack.echo_of("/obo/x", &session).await;
    assert_eq!(stack.idp.token_requests("refresh_token"), refreshes);

    // Easy Auth's headers for an app leaving App Service, from the session's user.
    let seen = stack.echo_of("/easy/me", &session).await;
    assert_eq!(seen["headers"]["x-ms-client-principal-id"], ALICE_OID);
    assert_eq!(seen["headers"]["x-ms-client-principal-name"], ALICE_UPN);
    let principal = seen["headers"]["x-ms-client-principal"].as_str().unwrap();
    let principal: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, principal).unwrap(),
    )
    .unwrap();
    assert!(
        principal["claims"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["val"] == ALICE_OID),
        "{principal}"
    );
    // A role the user lacks: 403, as for a token.
    let admin = stack.get("/admin", Some(&session), HTML).await;
    assert_eq!(admin.status(), 403);

    // A bearer token is accepted on a session route too, and a bad one is refused (no redirect).
    let token = stack.user_token().await;
    let r = stack
        .http
        .get(stack.public("/app/api"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = stack
        .http
        .get(stack.public("/app/page"))
        .header(ACCEPT, HTML)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // userinfo
    let info: Value = stack
        .http
        .get(stack.public("/oauth2/userinfo"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["oid"], ALICE_OID);
    assert_eq!(info["preferred_username"], ALICE_UPN);
    assert_eq!(info["tid"], TENANT);
    assert!(info["session_expires_at"].as_u64().unwrap() > support::now() + 9 * 3600);
    let anonymous = stack.fetch("/oauth2/userinfo").await;
    assert_eq!(anonymous.status(), 401);

    // The delegated API serves the session's user too.
    let delegated = stack.delegated(ALICE_OID).await;
    assert_eq!(delegated.0, 200, "{}", delegated.1);

    // Sign-out: the session and the user's tokens go, the cookie is cleared, the browser goes to
    // the IdP's end-session endpoint with the hint and the validated rd.
    let out = stack
        .http
        .get(stack.public("/oauth2/sign_out?rd=/bye"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 302);
    let cleared = set_cookies(&out);
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("tollgate=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    let to = Url::parse(&location(&out)).unwrap();
    assert!(to.as_str().starts_with(&stack.idp.base_url()), "{to}");
    let q: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(q["post_logout_redirect_uri"], stack.public("/bye"));
    assert_eq!(support::jwt_claims(&q["id_token_hint"])["oid"], ALICE_OID);
    assert_eq!(
        stack.get("/app/page", Some(&session), HTML).await.status(),
        302
    );
    assert_eq!(
        stack.delegated(ALICE_OID).await.0,
        400,
        "the user's tokens are gone"
    );

    stack.stop().await;
}

#[tokio::test]
async fn each_sign_in_issues_a_new_session_id_and_ends_the_browsers_old_one() {
    let stack = Stack::start(Options::default()).await;
    let first = stack.sign_in(ALICE).await.pair;
    assert_eq!(
        stack.get("/app/page", Some(&first), HTML).await.status(),
        200
    );
    // Signing in again from the same browser (it still sends the old cookie).
    let second = stack.sign_in_with(ALICE, Some(&first)).await.pair;
    assert_ne!(first, second);
    assert_eq!(
        stack.get("/app/page", Some(&first), HTML).await.status(),
        302
    );
    assert_eq!(
        stack.get("/app/page", Some(&second), HTML).await.status(),
        200
    );
    // A cookie the server never issued is no session.
    let forged = format!("tollgate={}", "A".repeat(43));
    assert_eq!(
        stack.get("/app/page", Some(&forged), HTML).await.status(),
        302
    );
    stack.stop().await;
}

#[tokio::test]
async fn cross_site_writes_with_the_session_cookie_are_refused() {
    let stack = Stack::start(Options::default()).await;
    let session = stack.sign_in(ALICE).await.pair;
    let post = |site: Option<&'static str>, origin: Option<String>| {
        let mut req = stack
            .http
            .post(stack.public("/app/form"))
            .header(COOKIE, &session)
            .body("x=1");
        if let Some(site) = site {
            req = req.header("sec-fetch-site", site);
        }
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(post(Some("cross-site"), None).await, 403);
    assert_eq!(post(Some("same-site"), None).await, 403);
    assert_eq!(post(None, Some("http://evil.example".into())).await, 403);
    assert_eq!(post(None, None).await, 403, "a write that proves no origin");
    assert_eq!(post(Some("same-origin"), None).await, 200);
    assert_eq!(post(None, Some(stack.public_url.clone())).await, 200);
    // A bearer-authenticated write is not the cookie's business.
    let token = stack.user_token().await;
    let r = stack
        .http
        .post(stack.public("/app/form"))
        .bearer_auth(token)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    stack.stop().await;
}

#[tokio::test]
async fn the_callback_refuses_a_forged_or_foreign_state_and_start_refuses_open_redirects() {
    let stack = Stack::start(Options::default()).await;
    for rd in [
        "//evil.example",
        "/\\evil.example",
        "https:evil.example",
        "\\/\\/evil.example",
        "/%2F%2Fevil.example",
        "HTTPS://evil.example/",
        "https://127.0.0.1@evil.example/",
        "https://evil.example/",
    ] {
        let mut url = Url::parse(&stack.public("/oauth2/start")).unwrap();
        url.query_pairs_mut().append_pair("rd", rd);
        let r = stack.http.get(url).send().await.unwrap();
        assert_eq!(r.status(), 400, "rd {rd:?}");
        let r = stack
            .http
            .get(format!(
                "{}?rd={}",
                stack.public("/oauth2/sign_out"),
                urlencode(rd)
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "sign_out rd {rd:?}");
    }
    // An allowed host passes.
    let r = stack.fetch("/oauth2/start?rd=https://docs.example/x").await;
    assert_eq!(r.status(), 302);

    // A callback without this browser's sign-in cookie, or with another state.
    let r = stack.fetch("/oauth2/callback?code=x&state=y").await;
    assert_eq!(r.status(), 400);
    let start = stack.fetch("/oauth2/start?rd=/app").await;
    let sign_in_cookie = cookie_pair(&set_cookies(&start)[0]);
    let authorize = Url::parse(&location(&start)).unwrap();
    let q: std::collections::HashMap<_, _> = authorize.query_pairs().into_owned().collect();
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], stack.public("/oauth2/callback"));
    assert!(q["scope"].split(' ').any(|s| s == "offline_access"));
    assert!(!q["nonce"].is_empty() && !q["state"].is_empty());
    let redirect = stack.idp_sign_in(authorize.as_str(), ALICE).await;
    let code_url = Url::parse(&redirect).unwrap();
    let code = code_url
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let wrong_state = stack
        .http
        .get(stack.public(&format!("/oauth2/callback?code={code}&state=forged")))
        .header(COOKIE, &sign_in_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_state.status(), 400);
    assert_eq!(
        stack.idp.token_requests("authorization_code"),
        0,
        "the code was never redeemed"
    );
    // An IdP error comes back as the IdP's refusal, and the sign-in cookie is cleared.
    let denied = stack
        .http
        .get(stack.public(&format!(
            "/oauth2/callback?error=access_denied&error_description=the+user+declined&state={}",
            q["state"]
        )))
        .header(COOKIE, &sign_in_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert!(set_cookies(&denied)[0].contains("Max-Age=0"));
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Refresh and logout channels

#[tokio::test]
async fn tokens_are_refreshed_within_the_margin_and_a_dead_refresh_token_ends_the_session() {
    let stack = Stack::start(Options::default()).await;
    // Access tokens that live less than the refresh margin: every use refreshes them.
    stack
        .idp
        .set_access_token_lifetime(Duration::from_secs(120));
    let session = stack.sign_in(ALICE).await.pair;
    let before = stack.idp.token_requests("refresh_token");
    assert_eq!(
        stack.get("/app/page", Some(&session), HTML).await.status(),
        200
    );
    assert!(
        stack.idp.token_requests("refresh_token") > before,
        "refreshed"
    );
    // The refresh token dies: the next navigation is sent to sign in again.
    stack.idp.set_refresh_token_lifetime(Duration::from_secs(1));
    let session = stack.sign_in(ALICE).await.pair;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        stack.get("/app/page", Some(&session), HTML).await.status(),
        302
    );
    assert_eq!(
        stack
            .get("/app/data", Some(&session), "application/json")
            .await
            .status(),
        401
    );
    stack.stop().await;
}

#[tokio::test]
async fn an_unused_session_ends_after_the_idle_timeout_and_any_at_its_lifetime() {
    let stack = Stack::start(Options {
        session_extra: "idle_timeout = \"2s\"\nlifetime = \"4s\"\nrefresh_margin = \"1s\"".into(),
        ..Options::default()
    })
    .await;
    let idle = stack.sign_in(ALICE).await.pair;
    let busy = stack.sign_in(BOB).await.pair;
    // Bob's session is used every 800 ms, Alice's not: after 2.4 s only Bob's is alive.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(
            stack.get("/app/page", Some(&busy), HTML).await.status(),
            200
        );
    }
    assert_eq!(
        stack.get("/app/page", Some(&idle), HTML).await.status(),
        302
    );
    // However busy, a session ends at its lifetime (4 s after sign-in).
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        let status = stack.get("/app/page", Some(&busy), HTML).await.status();
        if status == 302 {
            break;
        }
    }
    assert_eq!(
        stack.get("/app/page", Some(&busy), HTML).await.status(),
        302
    );
    stack.stop().await;
}

#[tokio::test]
async fn back_channel_logout_ends_the_users_sessions_and_refuses_what_is_not_a_logout_token() {
    let stack = Stack::start(Options::default()).await;
    let alice = stack.sign_in(ALICE).await.pair;
    let bob = stack.sign_in(BOB).await.pair;
    let ended_before = stack.sessions_metric("backchannel_logout").await;
    let deliveries = stack.idp.sign_out(ALICE).await;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    // Other tests of this binary may end sessions meanwhile: at least this one is counted.
    assert!(
        stack.sessions_metric("backchannel_logout").await - ended_before >= 1.0,
        "tollgate_sessions_total counts the ended session"
    );
    assert!(deliveries[0].acknowledged(), "{deliveries:?}");
    assert_eq!(
        stack.get("/app/page", Some(&alice), HTML).await.status(),
        302
    );
    assert_eq!(stack.get("/app/page", Some(&bob), HTML).await.status(), 200);

    // Not a logout token: refused with 400 and an OAuth error.
    let token = stack.user_token().await;
    for body in [
        format!("logout_token={token}"),
        "logout_token=x.y.z".into(),
        String::new(),
    ] {
        let r = stack
            .http
            .post(stack.public("/oauth2/backchannel_logout"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let err: Value = r.json().await.unwrap();
        assert_eq!(err["error"], "invalid_request");
    }
    assert_eq!(stack.get("/app/page", Some(&bob), HTML).await.status(), 200);
    stack.stop().await;
}

#[tokio::test]
async fn a_logout_token_is_acted_on_once() {
    // The IdP delivers to a recorder instead, which hands the token to the test.
    let (recorder, tokens) = LogoutRecorder::start().await;
    let stack = Stack::start(Options {
        backchannel_logout_uri: Some(recorder),
        ..Options::default()
    })
    .await;
    let alice = stack.sign_in(ALICE).await.pair;
    stack.idp.sign_out(ALICE).await;
    let body = tokens
        .lock()
        .unwrap()
        .pop()
        .expect("a logout token was delivered");
    let post = || {
        stack
            .http
            .post(stack.public("/oauth2/backchannel_logout"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
    };
    let first = post().await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["cache-control"], "no-store");
    assert_eq!(
        stack.get("/app/page", Some(&alice), HTML).await.status(),
        302
    );
    let replay = post().await.unwrap();
    assert_eq!(replay.status(), 400, "a replayed jti is refused");
    stack.stop().await;
}

/// An app's back-channel logout endpoint that keeps what it is sent.
struct LogoutRecorder;

impl LogoutRecorder {
    async fn start() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = seen.clone();
        let app = axum::Router::new().route(
            "/logout",
            axum::routing::post(move |body: String| {
                let keep = keep.clone();
                async move {
                    keep.lock().unwrap().push(body);
                    ""
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/logout", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (url, seen)
    }
}

#[tokio::test]
async fn front_channel_logout_ends_the_sessions_of_the_sid() {
    let stack = Stack::start(Options::default()).await;
    let signed = stack.sign_in(ALICE).await;
    let iss = stack.idp.issuer(TENANT);
    let wrong = stack
        .fetch("/oauth2/frontchannel_logout?iss=https://evil.example&sid=x")
        .await;
    assert_eq!(wrong.status(), 400);
    let r = stack
        .http
        .get(format!(
            "{}?iss={}&sid={}",
            stack.public("/oauth2/frontchannel_logout"),
            urlencode(&iss),
            urlencode(&signed.sid)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(
        stack
            .get("/app/page", Some(&signed.pair), HTML)
            .await
            .status(),
        302
    );
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Forward-auth

#[tokio::test]
async fn forward_auth_answers_an_ingress_with_identity_and_the_routes_exchanged_token() {
    let stack = Stack::start(Options::default()).await;
    let session = stack.sign_in(ALICE).await.pair;
    let auth = |uri: &str, cookie: Option<&str>, query: &str| {
        let mut req = stack
            .http
            .get(stack.public(&format!("/oauth2/auth{query}")))
            .header("x-original-uri", uri);
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        req.send()
    };
    let ok = auth("/app/page", Some(&session), "").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["x-auth-oid"], ALICE_OID);
    assert!(!ok.headers().contains_key("authorization"));
    // A path of a route with `obo`: the exchanged token for auth_request_set.
    let obo = auth("/obo/y", Some(&session), "").await.unwrap();
    assert_eq!(obo.status(), 200);
    let bearer = obo.headers()["authorization"].to_str().unwrap();
    let claims = support::jwt_claims(bearer.strip_prefix("Bearer ").unwrap());
    assert_eq!(claims["aud"], DOWNSTREAM_CLIENT_ID);
    // Envoy's ext_authz appends the original path to /oauth2/auth.
    let envoy = stack
        .http
        .get(stack.public("/oauth2/auth/obo/y?z=1"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(envoy.status(), 200);
    assert!(
        envoy.headers()["authorization"]
            .to_str()
            .unwrap()
            .starts_with("Bearer ")
    );
    let envoy = stack
        .http
        .get(stack.public("/oauth2/auth/admin"))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(envoy.status(), 403, "the /admin route's role applies");
    // A path no route covers gets the session rules.
    let unrouted = auth("/elsewhere", Some(&session), "").await.unwrap();
    assert_eq!(unrouted.status(), 200);
    // Asked scopes and roles: any one listed is enough.
    let r = auth("/app", Some(&session), "?role=Nope&role=Other")
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // No session: 401 for nginx; with redirect=true a browser is sent to sign in.
    let r = auth("/app/page", None, "").await.unwrap();
    assert_eq!(r.status(), 401);
    let r = stack
        .http
        .get(stack.public("/oauth2/auth?redirect=true"))
        .header(ACCEPT, HTML)
        .header("x-forwarded-proto", "http")
        .header("x-forwarded-host", stack.public_addr.to_string())
        .header("x-forwarded-uri", "/app/page")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let to = location(&r);
    assert!(to.starts_with(&stack.public("/oauth2/start?rd=")), "{to}");
    // A bearer token works for forward-auth too.
    let token = stack.user_token().await;
    let r = stack
        .http
        .get(stack.public("/oauth2/auth"))
        .header("x-forwarded-uri", "/app/x")
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-auth-oid"], ALICE_OID);
    stack.stop().await;
}

#[tokio::test]
async fn nginx_auth_request_signs_in_through_tollgate_and_passes_identity_and_token_on() {
    if !support::require(NGINX) {
        return;
    }
    let port = support::free_port();
    let stack = Stack::start(Options {
        public_url: Some(format!("http://127.0.0.1:{port}")),
        ..Options::default()
    })
    .await;
    let nginx = Nginx::start(port, stack.public_addr, stack.echo.addr);

    // No session: auth_request gets 401, and nginx's error_page sends the browser to sign in.
    let r = stack.get("/obo/page", None, HTML).await;
    assert_eq!(r.status(), 302);
    assert_eq!(location(&r), stack.public("/oauth2/start?rd=/obo/page"));
    assert_eq!(stack.echo.hits(), 0);
    // The forward-auth endpoint itself is internal to nginx.
    assert_eq!(stack.get("/oauth2/auth", None, HTML).await.status(), 404);

    // Sign-in goes through nginx (tollgate's public URL is nginx's origin).
    let signed = stack
        .sign_in_from(&stack.public("/oauth2/start?rd=/obo/page"), ALICE)
        .await;
    assert_eq!(signed.landed, "/obo/page");
    let seen = stack.echo_of("/obo/page", &signed.pair).await;
    assert_eq!(seen["headers"]["x-user-oid"], ALICE_OID);
    let bearer = seen["headers"]["authorization"].as_str().unwrap();
    let claims = support::jwt_claims(bearer.strip_prefix("Bearer ").unwrap());
    assert_eq!(
        claims["aud"], DOWNSTREAM_CLIENT_ID,
        "auth_request_set passed the exchanged token"
    );
    // A role the session lacks: nginx passes auth_request's 403 on.
    assert_eq!(
        stack.get("/admin", Some(&signed.pair), HTML).await.status(),
        403
    );
    drop(nginx);
    stack.stop().await;
}

const NGINX: &str = "/usr/sbin/nginx";

/// nginx in the foreground, one process, with the `auth_request` snippet an ingress uses in
/// front of tollgate's forward-auth; killed on drop.
struct Nginx {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(port: u16, tollgate: SocketAddr, app: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            r#"
daemon off;
master_process off;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{}}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen 127.0.0.1:{port};
    location = /oauth2/auth {{
      internal;
      proxy_pass http://{tollgate};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-URI $request_uri;
    }}
    location /oauth2/ {{
      proxy_pass http://{tollgate};
    }}
    location / {{
      auth_request /oauth2/auth;
      auth_request_set $auth_oid $upstream_http_x_auth_oid;
      auth_request_set $auth_token $upstream_http_authorization;
      proxy_set_header X-User-Oid $auth_oid;
      proxy_set_header Authorization $auth_token;
      error_page 401 = @sign_in;
      proxy_pass http://{app};
    }}
    location @sign_in {{
      return 302 /oauth2/start?rd=$request_uri;
    }}
  }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = std::process::Command::new(NGINX)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // nginx listens within moments; bounded wait.
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Self { child, _dir: dir };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx never listened on {port}: {log}");
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Replicas and a real browser

#[tokio::test]
async fn two_replicas_on_one_redis_share_sessions_and_logouts() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), tollgate::store::keygen()).unwrap();
    let store = format!(
        "kind = \"redis\"\nurl = \"{}\"\nencryption_keys_file = {}",
        redis.url(),
        support::config::toml_str(keys.path())
    );
    let stack = Stack::start(Options {
        store: store.clone(),
        replica: true,
        ..Options::default()
    })
    .await;
    let replica = stack.replica.as_ref().unwrap();
    // Signed in through one replica's callback, used on the other (same public origin behind a
    // load balancer: here, the same cookie sent to the second one).
    let session = stack.sign_in(ALICE).await.pair;
    let on_replica = stack
        .http
        .get(format!("http://{}/app/page", replica.1))
        .header(COOKIE, &session)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(on_replica.status(), 200);
    // A back-channel logout delivered to the first ends it on the second.
    let deliveries = stack.idp.sign_out(ALICE).await;
    assert!(
        deliveries.iter().all(|d| d.acknowledged()),
        "{deliveries:?}"
    );
    let after = stack
        .http
        .get(format!("http://{}/app/page", replica.1))
        .header(COOKIE, &session)
        .header(ACCEPT, HTML)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 302);
    stack.stop().await;
    drop(redis);
}

#[tokio::test]
async fn chromium_signs_in_through_the_session_and_reaches_the_app() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let stack = Stack::start(Options::default()).await;
    let c = &browser.client;
    c.goto(&stack.public("/app/welcome")).await.unwrap();
    browser.submit_dev_idp_login(ALICE).await;
    // The echo app's JSON, as Chromium shows it: the page is the app's, with Alice's headers.
    let deadline = tokio::time::Instant::now() + BROWSER_WAIT;
    let body = loop {
        let source = c.source().await.unwrap();
        if source.contains(ALICE_OID) || tokio::time::Instant::now() > deadline {
            break source;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(body.contains(ALICE_OID), "the app saw Alice: {body}");
    assert!(body.contains("/app/welcome"));
    let at = c.current_url().await.unwrap();
    assert_eq!(at.as_str(), stack.public("/app/welcome"));
    // The same browser session on a route with `obo`: the app gets a downstream token.
    c.goto(&stack.public("/obo/report")).await.unwrap();
    let source = c.source().await.unwrap();
    assert!(source.contains("\"authorization\":\"Bearer "), "{source}");
    assert!(source.contains("/obo/report"));
    browser.close().await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The stack: dev IdP, echo app, tollgate with [session]

struct Options {
    store: String,
    /// Start a second tollgate on the same store.
    replica: bool,
    /// Where the IdP sends tollgate's logout tokens (default: tollgate).
    backchannel_logout_uri: Option<String>,
    /// The origin browsers use, when a proxy stands in front of tollgate (default: tollgate's
    /// own public listener).
    public_url: Option<String>,
    /// More keys of tollgate's `[session]` table.
    session_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            store: "kind = \"memory\"".into(),
            replica: false,
            backchannel_logout_uri: None,
            public_url: None,
            session_extra: String::new(),
        }
    }
}

struct Stack {
    idp: DevIdpHandle,
    echo: Echo,
    tollgate: RunningServer,
    /// A second server on the same store, and its public address.
    replica: Option<(RunningServer, SocketAddr)>,
    public_addr: SocketAddr,
    public_url: String,
    api_url: String,
    http: reqwest::Client,
}

/// What a finished sign-in left in the browser.
struct SignedIn {
    /// `tollgate=<id>`, as a `Cookie` header sends it.
    pair: String,
    /// The `Set-Cookie` that carried it.
    set_cookie: String,
    /// Where the callback sent the browser.
    landed: String,
    /// The IdP session of the sign-in (`sid` of the ID token).
    sid: String,
}

const API_KEY: &str = "session-test-api-key";

impl Stack {
    async fn start(options: Options) -> Self {
        let public = StdListener::bind("127.0.0.1:0").unwrap();
        let public_addr = public.local_addr().unwrap();
        let public_url = options
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{public_addr}"));
        let mut idp_config = DevIdpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..DevIdpConfig::default()
        };
        for app in &mut idp_config.apps {
            if app.client_id == TOLLGATE_CLIENT_ID {
                app.backchannel_logout_uri = Some(
                    options
                        .backchannel_logout_uri
                        .clone()
                        .unwrap_or_else(|| format!("{public_url}/oauth2/backchannel_logout")),
                );
            }
        }
        let idp = DevIdp::start(idp_config).await.unwrap();
        let echo = Echo::start().await;
        let config = format!(
            r#"
[upstream]
url = "{echo}"

[[providers]]
name = "entra_id"
well_known_url = "{well_known}"
client_id = "{TOLLGATE_CLIENT_ID}"

[session]
enabled = true
public_url = "{public_url}"
allowed_redirect_hosts = ["docs.example"]
{session_extra}

[store]
{store}

[[routes]]
path = "/app"
auth = "session"

[[routes]]
path = "/obo"
auth = "session"
obo = "{obo}"

[[routes]]
path = "/admin"
auth = "session"
roles = ["Admin"]

[[routes]]
path = "/easy"
auth = "session"
identity_headers = "easyauth"
"#,
            echo = echo.url(),
            well_known = idp.well_known_url(TENANT),
            store = options.store,
            obo = downstream_default(),
            session_extra = options.session_extra,
        );
        let env = MapEnv::from([
            ("AZURE_APP_CLIENT_SECRET", TOLLGATE_CLIENT_SECRET),
            ("TOLLGATE_API__KEY", API_KEY),
        ]);
        let start = |listener: StdListener| {
            let cfg =
                Config::from_toml_str(&format!("{}{config}", support::config::listen("2s")), &env)
                    .unwrap();
            async move {
                let loopback = || Some(StdListener::bind("127.0.0.1:0").unwrap());
                let listeners = Listeners {
                    public: listener,
                    api: loopback(),
                    admin: loopback(),
                };
                Server::from_listeners(cfg, listeners)
                    .await
                    .unwrap()
                    .spawn()
            }
        };
        let tollgate = start(public).await;
        let replica = if options.replica {
            let listener = StdListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            Some((start(listener).await, addr))
        } else {
            None
        };
        let stack = Stack {
            api_url: format!("http://{}", tollgate.api.unwrap()),
            idp,
            echo,
            tollgate,
            replica,
            public_addr,
            public_url,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        };
        stack.wait_until_ready().await;
        stack
    }

    /// The provider's metadata loads in the background: `/oauth2/start` answers 503 until then.
    async fn wait_until_ready(&self) {
        let start = format!("http://{}/oauth2/start", self.public_addr);
        for _ in 0..500 {
            let r = self.http.get(&start).send().await;
            if r.is_ok_and(|r| r.status() == 302) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tollgate never became ready to sign users in");
    }

    async fn stop(self) {
        if let Some((replica, _)) = self.replica {
            replica.shutdown().await.unwrap();
        }
        self.tollgate.shutdown().await.unwrap();
        self.idp.shutdown().await;
    }

    fn public(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }

    /// `GET` of `path` on the public origin, headers left to the client, redirects not followed.
    async fn fetch(&self, path: &str) -> reqwest::Response {
        self.http.get(self.public(path)).send().await.unwrap()
    }

    async fn get(&self, path: &str, cookie: Option<&str>, accept: &str) -> reqwest::Response {
        let mut req = self.http.get(self.public(path)).header(ACCEPT, accept);
        if let Some(c) = cookie {
            req = req.header(COOKIE, c);
        }
        req.send().await.unwrap()
    }

    /// What the echo app received for a session request to `path`.
    async fn echo_of(&self, path: &str, cookie: &str) -> Value {
        let r = self.get(path, Some(cookie), HTML).await;
        assert_eq!(r.status(), 200, "{path}");
        r.json().await.unwrap()
    }

    async fn sign_in(&self, user: &str) -> SignedIn {
        self.sign_in_with(user, None).await
    }

    async fn sign_in_with(&self, user: &str, old_cookie: Option<&str>) -> SignedIn {
        self.sign_in_from_with(&self.public("/oauth2/start?rd=/app/home"), user, old_cookie)
            .await
    }

    async fn sign_in_from(&self, start: &str, user: &str) -> SignedIn {
        self.sign_in_from_with(start, user, None).await
    }

    /// What a browser does from `/oauth2/start`: to the IdP, sign in, back to the callback.
    async fn sign_in_from_with(&self, start: &str, user: &str, old: Option<&str>) -> SignedIn {
        let started = self.http.get(start).send().await.unwrap();
        assert_eq!(started.status(), 302);
        let sign_in_cookie = cookie_pair(&set_cookies(&started)[0]);
        let callback = self.idp_sign_in(&location(&started), user).await;
        assert!(
            callback.starts_with(&self.public("/oauth2/callback?")),
            "{callback}"
        );
        let cookies = match old {
            Some(old) => format!("{sign_in_cookie}; {old}"),
            None => sign_in_cookie,
        };
        let back = self
            .http
            .get(&callback)
            .header(COOKIE, cookies)
            .send()
            .await
            .unwrap();
        assert_eq!(back.status(), 302, "{:?}", back.text().await);
        let set = set_cookies(&back);
        let session = set
            .iter()
            .find(|c| c.starts_with("tollgate="))
            .expect("a session cookie")
            .clone();
        assert!(
            set.iter().any(|c| c.starts_with("tollgate-signin=;")),
            "the sign-in cookie is cleared: {set:?}"
        );
        let pair = cookie_pair(&session);
        // The newest IdP session of the user is this sign-in's.
        let sid = self.idp.session_ids(user).pop().unwrap_or_default();
        SignedIn {
            landed: location(&back),
            set_cookie: session,
            pair,
            sid,
        }
    }

    /// The login page of the IdP, filled in and submitted; the redirect it answers with.
    async fn idp_sign_in(&self, authorize: &str, user: &str) -> String {
        let page = self.http.get(authorize).send().await.unwrap();
        assert_eq!(page.status(), 200, "the IdP's login page");
        let html = page.text().await.unwrap();
        let r = submit_login_form(
            &self.http,
            &self.idp.base_url(),
            &html,
            user,
            DEV_PASSWORD,
            &[],
        )
        .await;
        assert_eq!(r.status(), 302);
        location(&r)
    }

    /// `tollgate_sessions_total{event}` on the admin listener (the recorder is shared by the
    /// tests of this binary: compare before and after).
    async fn sessions_metric(&self, event: &str) -> f64 {
        let url = format!("http://{}/metrics", self.tollgate.admin.unwrap());
        let text = support::get_text(&self.http, url).await;
        support::metric_value(&text, "tollgate_sessions_total", &[("event", event)])
    }

    /// An access token for tollgate's API, as a client app would send it.
    async fn user_token(&self) -> String {
        self.idp
            .password_token(
                ALICE,
                FRONTEND_CLIENT_ID,
                &format!("{TOLLGATE_APP_ID_URI}/access_as_user"),
            )
            .await
            .unwrap()
    }

    /// `/api/v1/token/delegated` for `oid` and the downstream target: (status, body).
    async fn delegated(&self, oid: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/token/delegated", self.api_url))
            .bearer_auth(API_KEY)
            .json(&serde_json::json!({"identity_provider": "entra_id", "user_oid": oid, "target": downstream_default()}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

fn location(r: &reqwest::Response) -> String {
    r.headers()[LOCATION].to_str().unwrap().to_owned()
}

fn set_cookies(r: &reqwest::Response) -> Vec<String> {
    r.headers()
        .get_all(SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// `name=value` of a `Set-Cookie`.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
