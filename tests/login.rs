//! The login proxy end to end. A small OIDC relying party (the "test RP") uses tollgate as its
//! identity provider: discovery from tollgate, authorization code + PKCE + state + nonce, the code
//! redeemed at tollgate's token endpoint with the RP's client secret, the ID token validated
//! against the dev IdP's keys. A real headless Chromium (chromedriver driven by fantoccini) does
//! the main login; the other tests walk the same redirects with an HTTP client that fills in the
//! dev IdP's login form, so they also run where no browser is installed.
//!
//! Then the delegated-token API: stored token by oid and by upn, refresh for other targets,
//! expiry, rotation, one refresh for concurrent requests, MFA challenges, dead refresh tokens,
//! deletion and logout, with the memory, SQLite and Redis stores.
//!
//! Chromium and chromedriver come from Debian (`chromium`, `chromium-driver`); without them the
//! browser test prints `skipped <test>: <tool> is not installed`, or fails when `CI` is set. The
//! same holds for `redis-server` and the Redis variant.
#![cfg(feature = "dev-idp")]

mod support;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fantoccini::Locator;
use http::StatusCode;
use serde_json::{Value, json};
use support::browser::{BROWSER_WAIT, Browser};
use support::config::toml_str;
#[cfg(feature = "redis")]
use support::redis::RedisServer;
use support::{Echo, jwt_claims, now};
use tokio::sync::oneshot;
use tollgate::config::{Config, MapEnv};
use tollgate::server::{Listeners, RunningServer, Server};
use tollgate_devidp::*;
use url::Url;

const TENANT: &str = DEFAULT_TENANT_ID;
/// tollgate's API key in these tests.
const API_KEY: &str = "login-test-api-key";
/// Where the token endpoint's success members come in the order Entra sends them.
const TOKEN_MEMBERS: [&str; 8] = [
    "token_type",
    "scope",
    "expires_in",
    "ext_expires_in",
    "access_token",
    "refresh_token",
    "id_token",
    "client_info",
];

fn tollgate_scope() -> String {
    format!("{TOLLGATE_APP_ID_URI}/access_as_user")
}

fn graph_scope() -> String {
    format!("{GRAPH_APP_ID_URI}/User.Read")
}

fn downstream_default() -> String {
    format!("{DOWNSTREAM_APP_ID_URI}/.default")
}

// ---------------------------------------------------------------------------------------------
// The full flow in a real browser

#[tokio::test]
async fn browser_login_through_tollgate_then_delegated_tokens() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let stack = Stack::start(Options::default()).await;
    let rp = stack.rp();

    let page = browser.login(&stack, ALICE, "login_hint=alice").await;
    assert!(
        page.scope_shown.contains(&graph_scope()) && page.scope_shown.contains("offline_access"),
        "the dev IdP's consent line shows the widened scope: {}",
        page.scope_shown
    );
    assert_eq!(page.upn_shown, ALICE_UPN, "the RP shows who logged in");
    assert!(
        page.final_url
            .starts_with(&format!("{}/callback?", rp.url())),
        "{}",
        page.final_url
    );
    assert!(rp.errors().is_empty(), "{:?}", rp.errors());
    let login = rp.last_login();
    // state, nonce and the PKCE verifier went through tollgate both ways: the RP checked state and
    // nonce, and the dev IdP would not have redeemed the code without the right verifier.
    assert_eq!(login.claims["oid"], ALICE_OID);
    assert_eq!(login.claims["aud"], TOLLGATE_CLIENT_ID);
    assert_token_response_unchanged(&login);
    assert_eq!(stack.idp.token_requests("authorization_code"), 1);

    // The stored token, by oid and by upn, as JSON and as a form, for every spelling of a
    // target it covers; no refresh needed.
    let by_oid = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(by_oid.0, 200, "{}", by_oid.1);
    assert_eq!(by_oid.1["access_token"], login.access_token);
    assert_eq!(by_oid.1["token_type"], "Bearer");
    let expires_in = by_oid.1["expires_in"].as_u64().unwrap();
    assert!(expires_in > 3000 && expires_in <= 3600, "{expires_in}");
    let by_upn = stack
        .delegated_form(&[
            ("user_upn", ALICE_UPN),
            ("target", &format!("{TOLLGATE_APP_ID_URI}/.default")),
        ])
        .await;
    assert_eq!(by_upn.0, 200, "{}", by_upn.1);
    assert_eq!(by_upn.1["access_token"], login.access_token);
    assert_eq!(stack.idp.token_requests("refresh_token"), 0);

    // Another target: the refresh token is redeemed once, then the new token is the stored one.
    let graph = stack
        .delegated(json!({"user_upn": ALICE_UPN, "target": graph_scope()}))
        .await;
    assert_eq!(graph.0, 200, "{}", graph.1);
    let graph_token = graph.1["access_token"].as_str().unwrap().to_owned();
    let claims = jwt_claims(&graph_token);
    assert_eq!(claims["aud"], GRAPH_CLIENT_ID);
    assert_eq!(claims["oid"], ALICE_OID);
    assert_eq!(claims["scp"], "User.Read");
    assert_eq!(stack.idp.token_requests("refresh_token"), 1);
    let again = stack
        .delegated_form(&[("user_oid", ALICE_OID), ("target", &graph_scope())])
        .await;
    assert_eq!(again.0, 200, "{}", again.1);
    assert_eq!(again.1["access_token"], graph_token.as_str());
    assert_eq!(stack.idp.token_requests("refresh_token"), 1);

    // Logout in the browser: tollgate forgets alice, the dev IdP sends the browser back to the RP.
    let landed = browser
        .visit_until(
            &stack.logout_url(&login.id_token, &rp.logged_out_url()),
            "logged-out",
        )
        .await;
    assert!(
        landed.starts_with(&rp.logged_out_url()),
        "the browser ends at the RP's post-logout page: {landed}"
    );
    let gone = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(gone.0, 400);
    assert_eq!(gone.1["error"], "unknown_user");

    browser.close().await;
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Discovery and authorize

#[tokio::test]
async fn discovery_points_the_app_at_tollgate() {
    let stack = Stack::start(Options::default()).await;
    let original: Value = stack
        .http
        .get(stack.idp.well_known_url(TENANT))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/.well-known/openid-configuration".to_owned(),
        format!("/{TENANT}/v2.0/.well-known/openid-configuration"),
    ] {
        let r = stack.http.get(stack.public(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let doc: Value = r.json().await.unwrap();
        assert_eq!(
            doc["authorization_endpoint"],
            stack.public("/oauth2/authorize")
        );
        assert_eq!(doc["token_endpoint"], stack.public("/oauth2/token"));
        assert_eq!(doc["end_session_endpoint"], stack.public("/oauth2/logout"));
        // The app keeps validating ID tokens against the real IdP.
        assert_eq!(doc["issuer"], stack.idp.issuer(TENANT));
        assert_eq!(doc["jwks_uri"], stack.idp.jwks_uri(TENANT));
        let mut rest = doc.as_object().unwrap().clone();
        let mut expected = original.as_object().unwrap().clone();
        for k in [
            "authorization_endpoint",
            "token_endpoint",
            "end_session_endpoint",
        ] {
            rest.remove(k);
            expected.remove(k);
        }
        assert_eq!(rest, expected, "{path}: every other member is untouched");
    }
    // The login paths answer a wrong method with 405, `Allow` and a JSON error.
    for (method, path, allow) in [
        (
            reqwest::Method::POST,
            "/.well-known/openid-configuration",
            "GET,HEAD",
        ),
        (reqwest::Method::DELETE, "/oauth2/token", "POST"),
    ] {
        let r = stack
            .http
            .request(method.clone(), stack.public(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
        assert_eq!(r.headers()["allow"], allow, "{method} {path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{body}");
    }
    stack.stop().await;
}

#[tokio::test]
async fn authorize_widens_the_scope_and_passes_the_rest_through() {
    let stack = Stack::start(Options::default()).await;
    let redirect_uri = stack.rp().callback_url();
    let challenge = pkce_challenge("a-verifier-that-is-long-enough-for-rfc-7636-section-4-1");
    let sent = [
        ("client_id", TOLLGATE_CLIENT_ID),
        ("response_type", "code"),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", "openid profile offline_access"),
        ("state", "st-1 with space&amp"),
        ("nonce", "n-0S6_WzA2Mj"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("prompt", "select_account"),
        ("login_hint", ALICE_UPN),
        ("domain_hint", "contoso.example"),
        ("response_mode", "query"),
    ];
    let location = stack.authorize(&sent).await.expect_redirect();
    let idp_authorize = format!("{}/{TENANT}/oauth2/v2.0/authorize", stack.idp.base_url());
    assert_eq!(
        location.split('?').next().unwrap(),
        idp_authorize,
        "{location}"
    );
    let got = query_map(&location);
    for (k, v) in sent {
        if k != "scope" {
            assert_eq!(
                got.get(k).map(String::as_str),
                Some(v),
                "{k} passes through"
            );
        }
    }
    assert_eq!(
        got.len(),
        sent.len(),
        "nothing added but the scope: {got:?}"
    );
    let scopes: Vec<&str> = got["scope"].split(' ').collect();
    assert_eq!(
        scopes,
        ["openid", "profile", "offline_access", &graph_scope()],
        "extra_scopes appended, offline_access not repeated"
    );

    let without_offline = stack
        .authorize(&authorize_params(&redirect_uri, "openid", &challenge))
        .await
        .expect_redirect();
    let scopes = query_map(&without_offline)["scope"].clone();
    assert_eq!(scopes, format!("openid {} offline_access", graph_scope()));
    stack.stop().await;
}

#[tokio::test]
async fn require_pkce_is_the_default_and_refuses_authorize_without_s256() {
    let stack = Stack::start(Options::default()).await;
    let redirect_uri = stack.rp().callback_url();
    let challenge = pkce_challenge("another-verifier-that-is-long-enough-for-rfc-7636-4-1");
    let base = authorize_params(&redirect_uri, "openid", &challenge);
    let without = |drop: &[&str]| -> Vec<(&str, &str)> {
        base.iter()
            .filter(|(k, _)| !drop.contains(k))
            .copied()
            .collect()
    };
    let mut plain = without(&["code_challenge_method"]);
    plain.push(("code_challenge_method", "plain"));
    let cases: [(&str, Vec<(&str, &str)>); 3] = [
        (
            "no challenge at all",
            without(&["code_challenge", "code_challenge_method"]),
        ),
        (
            "challenge without method (plain)",
            without(&["code_challenge_method"]),
        ),
        ("plain method", plain),
    ];
    for (why, params) in cases {
        // The redirect URI is registered, so the error goes back to it (RFC 6749 §4.1.2.1).
        let location = stack.authorize(&params).await.expect_redirect();
        assert!(
            location.starts_with(&format!("{redirect_uri}?")),
            "{why}: {location}"
        );
        let q = query_map(&location);
        assert_eq!(q["error"], "invalid_request", "{why}");
        assert_eq!(q["state"], "xyz", "{why}");
        assert!(!q.contains_key("code"), "{why}");
    }
    // A second method could be the one the IdP reads: refused outright, no redirect.
    let mut twice = base.clone();
    twice.push(("code_challenge_method", "plain"));
    stack
        .authorize(&twice)
        .await
        .expect_refused("repeated method");

    let ok = stack.authorize(&base).await.expect_redirect();
    assert!(ok.starts_with(&stack.idp.base_url()), "{ok}");
    stack.stop().await;

    let lenient = Stack::start(Options {
        require_pkce: Some(false),
        ..Options::default()
    })
    .await;
    let redirect_uri = lenient.rp().callback_url();
    let no_pkce: Vec<(&str, &str)> = authorize_params(&redirect_uri, "openid", &challenge)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("code_challenge"))
        .collect();
    let location = lenient.authorize(&no_pkce).await.expect_redirect();
    assert!(
        location.starts_with(&lenient.idp.base_url()),
        "require_pkce = false lets it through: {location}"
    );
    lenient.stop().await;
}

#[tokio::test]
async fn redirect_uri_attacks_are_refused_without_a_redirect() {
    let stack = Stack::start(Options::default()).await;
    let registered = stack.rp().callback_url();
    let port = stack.rp().addr.port();
    let other_port = port.wrapping_add(1).max(1);
    let challenge = pkce_challenge("yet-another-verifier-that-is-long-enough-for-rfc-7636");
    let attacks = [
        format!("http://127.0.0.1:{port}/callbac"),
        format!("http://127.0.0.1:{port}/callbackx"),
        format!("http://127.0.0.1:{port}/callback.evil.example"),
        format!("http://127.0.0.1:{port}/callback/"),
        format!("http://127.0.0.1:{port}/callback/evil"),
        format!("http://127.0.0.1:{port}/callback/../evil"),
        format!("http://127.0.0.1:{port}/evil/../callback"),
        format!("http://evil@127.0.0.1:{port}/callback"),
        format!("http://127.0.0.1:{port}@evil.example/callback"),
        format!("http://127.0.0.1:{port}/%63allback"),
        format!("http://127.0.0.1:{port}/callback%2F..%2Fevil"),
        format!("http%3A%2F%2F127.0.0.1%3A{port}%2Fcallback"),
        format!("http://127.0.0.1:{port}/callback%00"),
        format!("http://127.0.0.1:{port}/callback "),
        format!("http://127.0.0.1:{other_port}/callback"),
        "http://127.0.0.1/callback".to_owned(),
        format!("http://localhost:{port}/callback"),
        format!("http://[::1]:{port}/callback"),
        format!("https://127.0.0.1:{port}/callback"),
        format!("HTTP://127.0.0.1:{port}/callback"),
        format!("{registered}?next=https://evil.example"),
        format!("{registered}#fragment"),
        "https://evil.example/callback".to_owned(),
        String::new(),
    ];
    for attack in &attacks {
        stack
            .authorize(&authorize_params(attack, "openid", &challenge))
            .await
            .expect_refused(attack);
    }
    // Missing, or registered once and repeated with a foreign one in either order.
    let mut missing = authorize_params(&registered, "openid", &challenge);
    missing.retain(|(k, _)| *k != "redirect_uri");
    stack.authorize(&missing).await.expect_refused("missing");
    for order in [
        [registered.as_str(), "https://evil.example/cb"],
        ["https://evil.example/cb", registered.as_str()],
    ] {
        let mut twice = authorize_params(order[0], "openid", &challenge);
        twice.push(("redirect_uri", order[1]));
        stack.authorize(&twice).await.expect_refused("repeated");
    }
    // And the registered one, byte for byte, goes through.
    let ok = stack
        .authorize(&authorize_params(&registered, "openid", &challenge))
        .await
        .expect_redirect();
    assert!(ok.starts_with(&stack.idp.base_url()), "{ok}");
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The token endpoint

#[tokio::test]
async fn token_endpoint_routes_on_the_path_and_accepts_basic_client_auth() {
    // MSAL's way: `?client-request-id=` on the token URL, `client_info=1`; here also HTTP Basic,
    // so tollgate must find the client id in the Authorization header to store the tokens.
    let stack = Stack::start(Options {
        rps: vec![RpOptions {
            basic_auth: true,
            client_request_id: true,
            ..RpOptions::default()
        }],
        ..Options::default()
    })
    .await;
    let login = stack.scripted_login(0, ALICE, false, "").await;
    assert!(login.token_url.contains("?client-request-id="));
    assert_token_response_unchanged(&login);
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], login.access_token);
    stack.stop().await;
}

#[tokio::test]
async fn a_client_id_in_upper_case_still_stores_the_login() {
    // Entra takes an application id in any case, and the portal's copy button gives lower case,
    // but ids also arrive in upper case (PowerShell, `az ad app list -o tsv | tr`). Tokens carry
    // the lower-case form whatever was sent.
    const UPPER: &str = "AAAAAAAA-0000-1111-2222-BBBBBBBBBBBB";
    assert_eq!(UPPER.to_ascii_lowercase(), TOLLGATE_CLIENT_ID);
    let stack = Stack::start(Options {
        client_id: UPPER,
        rps: vec![RpOptions {
            client_id: UPPER,
            ..RpOptions::default()
        }],
        ..Options::default()
    })
    .await;
    let login = stack.scripted_login(0, ALICE, false, "").await;
    assert_eq!(login.claims["aud"], TOLLGATE_CLIENT_ID);
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 200, "the login was not stored: {body}");
    assert_eq!(body["access_token"], login.access_token);
    stack.stop().await;
}

#[tokio::test]
async fn token_errors_reach_the_app_unchanged() {
    let stack = Stack::start(Options::default()).await;
    let redirect_uri = stack.rps[0].callback_url();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "0.A-not-a-code"),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", TOLLGATE_CLIENT_ID),
        ("client_secret", TOLLGATE_CLIENT_SECRET),
    ];
    let via = stack
        .http
        .post(stack.public("/oauth2/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let direct = stack
        .http
        .post(stack.idp.token_endpoint(TENANT))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(via.status(), direct.status());
    for h in ["content-type", "cache-control", "pragma"] {
        assert_eq!(via.headers().get(h), direct.headers().get(h), "{h}");
    }
    let via = via.text().await.unwrap();
    let direct = direct.text().await.unwrap();
    assert_eq!(member_names(&via), member_names(&direct), "{via}");
    let (v, d): (Value, Value) = (
        serde_json::from_str(&via).unwrap(),
        serde_json::from_str(&direct).unwrap(),
    );
    assert_eq!(v["error"], "invalid_grant");
    assert_eq!(v["error_codes"], d["error_codes"]);
    stack.stop().await;
}

/// tollgate keeps a user's tokens only when the ID token of the response passes its own checks
/// (issue 6: signature, iss, aud = client id, nonce present). A code grant whose authorization
/// request had no nonce gets an ID token without one from the dev IdP (as from Entra): the app
/// still gets the response as the IdP wrote it, and tollgate stores nothing. The same login
/// with a nonce, through a second RP of the same client, is stored: only the nonce differs.
#[tokio::test]
async fn a_code_grant_id_token_without_nonce_is_passed_on_but_not_stored() {
    let stack = Stack::start(Options {
        rps: vec![
            RpOptions {
                nonce: false,
                ..RpOptions::default()
            },
            RpOptions::default(),
        ],
        ..Options::default()
    })
    .await;
    let login = stack.scripted_login(0, ALICE, false, "").await;
    assert!(login.claims.get("nonce").is_none(), "{}", login.claims);
    assert_eq!(login.claims["aud"], TOLLGATE_CLIENT_ID);
    assert!(!login.refresh_token.is_empty());
    assert_token_response_unchanged(&login);
    assert_eq!(stack.idp.token_requests("authorization_code"), 1);
    for by in [
        json!({"user_oid": ALICE_OID, "target": tollgate_scope()}),
        json!({"user_upn": ALICE_UPN, "target": tollgate_scope()}),
    ] {
        let (status, body) = stack.delegated(by).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "unknown_user", "{body}");
    }
    assert_eq!(stack.idp.token_requests("refresh_token"), 0);

    let with_nonce = stack.scripted_login(1, ALICE, false, "").await;
    assert!(with_nonce.claims["nonce"].is_string());
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], with_nonce.access_token);
    stack.stop().await;
}

/// An ID token that is not from tollgate's provider (its `iss` is not the configured issuer) is
/// not trusted to name a user: nothing is stored, and the app (which trusts the discovered
/// issuer) still gets the response unchanged.
#[tokio::test]
async fn an_id_token_from_another_issuer_is_passed_on_but_not_stored() {
    let stack = Stack::start(Options {
        provider_extra: "issuer = \"https://login.example/another-tenant/v2.0\"".into(),
        ..Options::default()
    })
    .await;
    let login = stack.scripted_login(0, ALICE, false, "").await;
    assert_eq!(login.claims["iss"], stack.idp.issuer(TENANT));
    assert!(login.claims["nonce"].is_string());
    assert_token_response_unchanged(&login);
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unknown_user", "{body}");
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Delegated tokens

#[tokio::test]
async fn an_expired_stored_token_is_refreshed() {
    let stack = Stack::start(Options::default()).await;
    // Shorter than tollgate's 120 s expiry margin: every token is too close to its end to hand
    // out, so each delegated call must redeem the (rotated) refresh token again.
    stack.idp.set_access_token_lifetime(Duration::from_secs(60));
    let login = stack.scripted_login(0, ALICE, false, "").await;
    let mut seen = vec![login.access_token.clone()];
    for round in 1..=2 {
        let (status, body) = stack
            .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
            .await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap().to_owned();
        assert!(!seen.contains(&token), "round {round}: a fresh token");
        assert!(body["expires_in"].as_u64().unwrap() <= 60);
        assert_eq!(jwt_claims(&token)["aud"], TOLLGATE_CLIENT_ID);
        assert_eq!(stack.idp.token_requests("refresh_token"), round);
        seen.push(token);
    }
    stack.stop().await;
}

#[tokio::test]
async fn rotated_refresh_tokens_are_stored() {
    let stack = Stack::start(Options::default()).await;
    let login = stack.scripted_login(0, ALICE, false, "").await;
    // Each redemption rotates the refresh token, and the dev IdP revokes the whole grant when a
    // rotated one comes back: the second refresh works only if the first one's was stored.
    for (round, target) in [graph_scope(), downstream_default()].iter().enumerate() {
        let (status, body) = stack
            .delegated(json!({"user_oid": ALICE_OID, "target": target}))
            .await;
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(stack.idp.token_requests("refresh_token"), round as u64 + 1);
    }
    // The refresh token the app got at login is the rotated-away one: the IdP refuses it.
    let replay = stack
        .http
        .post(stack.idp.token_endpoint(TENANT))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", login.refresh_token.as_str()),
            ("client_id", TOLLGATE_CLIENT_ID),
            ("client_secret", TOLLGATE_CLIENT_SECRET),
            ("scope", &graph_scope()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 400);
    let replay: Value = replay.json().await.unwrap();
    assert_eq!(replay["error"], "invalid_grant");
    // That replay made the dev IdP revoke the grant (RFC 9700 §4.14.2): the next refresh is
    // refused, tollgate asks for a new login and forgets the user.
    let (status, body) = stack
        .delegated(
            json!({"user_oid": ALICE_OID, "target": format!("{GRAPH_APP_ID_URI}/Mail.Read")}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "interaction_required");
    let (_, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(body["error"], "unknown_user");
    stack.stop().await;
}

#[tokio::test]
async fn concurrent_requests_for_one_target_make_one_refresh() {
    let stack = Stack::start(Options::default()).await;
    stack.scripted_login(0, ALICE, false, "").await;
    let calls = (0..8).map(|i| {
        let body = if i % 2 == 0 {
            json!({"user_oid": ALICE_OID, "target": graph_scope()})
        } else {
            json!({"user_upn": ALICE_UPN, "target": graph_scope()})
        };
        stack.delegated(body)
    });
    let answers = futures_util::future::join_all(calls).await;
    let first = answers[0].1["access_token"].clone();
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["access_token"], first);
    }
    assert_eq!(stack.idp.token_requests("refresh_token"), 1);
    stack.stop().await;
}

#[tokio::test]
async fn concurrent_refreshes_for_several_targets_keep_the_grant_alive() {
    let stack = Stack::start(Options::default()).await;
    stack.scripted_login(0, ALICE, false, "").await;
    // Four targets at once, each needing a refresh: were they redeemed in parallel, the dev IdP
    // would see one refresh token three times too many and revoke the grant.
    let targets = [
        graph_scope(),
        format!("{GRAPH_APP_ID_URI}/Mail.Read"),
        downstream_default(),
        format!("{TOLLGATE_APP_ID_URI}/read"),
    ];
    let answers = futures_util::future::join_all(
        targets
            .iter()
            .map(|t| stack.delegated(json!({"user_oid": ALICE_OID, "target": t}))),
    )
    .await;
    for ((status, body), target) in answers.iter().zip(&targets) {
        assert_eq!(*status, 200, "{target}: {body}");
    }
    assert_eq!(stack.idp.token_requests("refresh_token"), 4);
    let (status, body) = stack
        .delegated(
            json!({"user_oid": ALICE_OID, "target": format!("{DOWNSTREAM_APP_ID_URI}/Data.Write")}),
        )
        .await;
    assert_eq!(status, 200, "the grant survived: {body}");
    stack.stop().await;
}

#[tokio::test]
async fn an_mfa_challenge_is_passed_back_and_the_user_kept() {
    let stack = Stack::start(Options::default()).await;
    let login = stack.scripted_login(0, ALICE, false, "").await;
    stack.idp.set_require_mfa(ALICE, true);
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": graph_scope()}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["suberror"], "basic_action");
    let claims: Value = serde_json::from_str(body["claims"].as_str().unwrap()).unwrap();
    assert_eq!(
        claims["access_token"]["capolids"]["values"][0],
        MFA_POLICY_ID
    );
    // The grant is alive: the stored token is still served, and an MFA login fixes the rest.
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], login.access_token);
    stack.scripted_login(0, ALICE, true, "").await;
    let (status, body) = stack
        .delegated(json!({"user_upn": ALICE_UPN, "target": graph_scope()}))
        .await;
    assert_eq!(status, 200, "after MFA: {body}");
    stack.stop().await;
}

#[tokio::test]
async fn a_dead_refresh_token_asks_for_login_and_forgets_the_user() {
    let stack = Stack::start(Options::default()).await;
    // A refresh token that is already past its lifetime when issued: the IdP answers
    // invalid_grant (AADSTS700082) to its first use.
    stack.idp.set_refresh_token_lifetime(Duration::from_secs(0));
    let login = stack.scripted_login(0, ALICE, false, "").await;
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(
        status, 200,
        "the stored access token needs no refresh: {body}"
    );
    assert_eq!(body["access_token"], login.access_token);
    let (status, body) = stack
        .delegated(json!({"user_upn": ALICE_UPN, "target": graph_scope()}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "interaction_required");
    assert!(!body.to_string().contains(&login.refresh_token));
    for by in [
        json!({"user_oid": ALICE_OID, "target": tollgate_scope()}),
        json!({"user_upn": ALICE_UPN, "target": tollgate_scope()}),
    ] {
        let (status, body) = stack.delegated(by).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "unknown_user", "the entry is gone");
    }
    stack.stop().await;
}

#[tokio::test]
async fn unknown_users_and_deleting_a_user() {
    let stack = Stack::start(Options::default()).await;
    // Issue 19: with [login] on, the token API serves nobody without its key.
    for key in [None, Some("wrong-key")] {
        let mut req = stack.http.post(stack.api("/api/v1/token/delegated"));
        if let Some(key) = key {
            req = req.bearer_auth(key);
        }
        let r = req
            .json(&json!({"identity_provider": "entra_id", "user_oid": ALICE_OID, "target": tollgate_scope()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{key:?}");
        assert!(r.headers().contains_key("www-authenticate"));
    }
    for by in [
        json!({"user_oid": ALICE_OID, "target": tollgate_scope()}),
        json!({"user_upn": ALICE_UPN, "target": tollgate_scope()}),
    ] {
        let (status, body) = stack.delegated(by).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "unknown_user");
    }
    let (status, body) = stack.delegated(json!({"target": tollgate_scope()})).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_request");

    stack.scripted_login(0, ALICE, false, "").await;
    stack.scripted_login(0, BOB, false, "").await;
    let r = stack
        .api_http
        .delete(stack.api(&format!("/api/v1/users/{ALICE_OID}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    for by in [
        json!({"user_oid": ALICE_OID, "target": tollgate_scope()}),
        json!({"user_upn": ALICE_UPN, "target": tollgate_scope()}),
    ] {
        let (status, body) = stack.delegated(by).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "unknown_user");
    }
    let (status, body) = stack
        .delegated(json!({"user_oid": BOB_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 200, "only alice was deleted: {body}");
    assert_eq!(
        jwt_claims(body["access_token"].as_str().unwrap())["oid"],
        BOB_OID
    );
    stack.stop().await;
}

/// A dev IdP user `username` in `tenant` whose tokens name alice's UPN: `upn` is the claim
/// tollgate takes the UPN from before `preferred_username`, and the dev IdP gives no two users
/// one `preferred_username`.
fn impostor(username: &str, tenant: &str) -> DevUser {
    serde_json::from_value(json!({
        "username": username,
        "tenant_id": tenant,
        "claims": {"upn": ALICE_UPN},
    }))
    .unwrap()
}

/// Issue 19: another account with alice's UPN (in alice's tenant, logging in after her) does not
/// get alice's tokens by `user_upn`: the UPN keeps naming alice until she is deleted.
#[tokio::test]
async fn a_second_account_with_the_same_upn_does_not_take_it_over() {
    let stack = Stack::start(Options {
        idp_users: vec![impostor("mallory", TENANT)],
        ..Options::default()
    })
    .await;
    let alice = stack.scripted_login(0, ALICE, false, "").await;
    let mallory = stack.scripted_login(0, "mallory", false, "").await;
    let mallory_oid = mallory.claims["oid"].as_str().unwrap().to_owned();
    assert_ne!(mallory_oid, ALICE_OID);
    assert_eq!(mallory.claims["upn"], ALICE_UPN);
    let by_upn = async |extra: Value| {
        let mut body = json!({"user_upn": ALICE_UPN, "target": tollgate_scope()});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        stack.delegated(body).await
    };

    let (status, body) = by_upn(json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["access_token"], alice.access_token,
        "alice keeps her UPN"
    );
    // Mallory's login was kept all the same: she is found by her oid.
    let (status, body) = stack
        .delegated(json!({"user_oid": mallory_oid, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], mallory.access_token);
    // Refreshing mallory's tokens (tollgate redeeming her refresh token) does not move the
    // UPN either.
    let (status, body) = stack
        .delegated(json!({"user_oid": mallory_oid, "target": graph_scope()}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = by_upn(json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], alice.access_token);

    // The provider's own tenant may be named; another one is refused, not searched.
    let (status, body) = by_upn(json!({"user_tid": TENANT.to_uppercase()})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], alice.access_token);
    let (status, body) = by_upn(json!({"user_tid": SECOND_TENANT_ID})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("user_tid"),
        "{body}"
    );

    // Deleting alice frees her UPN; mallory gets it only by logging in again.
    let r = stack
        .api_http
        .delete(stack.api(&format!("/api/v1/users/{ALICE_OID}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, body) = by_upn(json!({})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unknown_user");
    let mallory = stack.scripted_login(0, "mallory", false, "").await;
    let (status, body) = by_upn(json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], mallory.access_token);
    stack.stop().await;
}

/// Issue 19, across tenants: with a multi-tenant provider a UPN alone names nobody, so a lookup
/// by `user_upn` needs `user_tid`, and finds only that tenant's user.
#[tokio::test]
async fn a_multi_tenant_lookup_by_upn_needs_the_tenant() {
    let stack = Stack::start(Options {
        tenant: "organizations",
        provider_extra: format!("allowed_tenants = [\"{TENANT}\", \"{SECOND_TENANT_ID}\"]"),
        idp_users: vec![impostor("mallory", SECOND_TENANT_ID)],
        ..Options::default()
    })
    .await;
    let mallory = stack.scripted_login(0, "mallory", false, "").await;
    assert_eq!(mallory.claims["tid"], SECOND_TENANT_ID);
    let alice = stack.scripted_login(0, ALICE, false, "").await;
    assert_eq!(alice.claims["tid"], TENANT);
    let by_upn = async |tid: Option<&str>| {
        let mut body = json!({"user_upn": ALICE_UPN, "target": tollgate_scope()});
        if let Some(tid) = tid {
            body["user_tid"] = json!(tid);
        }
        stack.delegated(body).await
    };

    let (status, body) = by_upn(None).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    let why = body["error_description"].as_str().unwrap();
    assert!(
        why.contains("user_tid") && why.contains("several tenants"),
        "{why}"
    );
    for (tid, expected) in [
        (TENANT, &alice),
        (SECOND_TENANT_ID, &mallory),
        (&*SECOND_TENANT_ID.to_uppercase(), &mallory),
    ] {
        let (status, body) = by_upn(Some(tid)).await;
        assert_eq!(status, 200, "{tid}: {body}");
        assert_eq!(body["access_token"], expected.access_token, "{tid}");
    }
    // A tenant the provider does not accept is refused, not searched.
    let (status, body) = by_upn(Some("01234567-89ab-cdef-0123-456789abcdef")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_request");
    // With user_oid, user_tid is a check.
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "user_tid": SECOND_TENANT_ID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "unknown_user");
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "user_tid": TENANT, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], alice.access_token);
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Logout

#[tokio::test]
async fn logout_forgets_the_user_and_redirects_only_where_allowed() {
    let stack = Stack::start(Options::default()).await;
    let rp = stack.rp();
    let login = stack.scripted_login(0, ALICE, false, "").await;
    let known = || async {
        stack
            .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
            .await
            .0
            == 200
    };

    for foreign in [
        "https://evil.example/logged-out".to_owned(),
        format!("{}x", rp.logged_out_url()),
        rp.callback_url(),
    ] {
        let r = stack
            .http
            .get(stack.logout_url(&login.id_token, &foreign))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{foreign}");
        assert!(r.headers().get("location").is_none(), "{foreign}");
        assert!(known().await, "{foreign}: nothing deleted");
    }

    let r = stack
        .http
        .get(format!(
            "{}&state=s-42",
            stack.logout_url(&login.id_token, &rp.logged_out_url())
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let end_session = format!("{}/{TENANT}/oauth2/v2.0/logout", stack.idp.base_url());
    assert_eq!(location.split('?').next().unwrap(), end_session);
    let q = query_map(&location);
    assert_eq!(q["post_logout_redirect_uri"], rp.logged_out_url());
    assert_eq!(q["state"], "s-42");
    assert!(!known().await, "alice's tokens are deleted");

    // Without a post-logout URI the user still goes to the IdP's end-session page.
    let r = stack
        .http
        .get(stack.public("/oauth2/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(r.headers()["location"], end_session.as_str());
    stack.stop().await;
}

/// Issue 19: a logout (a GET any page can make a browser send) forgets the user only for a hint
/// of the session the stored tokens came from: an ID token of an earlier login deletes nothing.
#[tokio::test]
async fn logout_needs_a_hint_of_the_stored_session() {
    let stack = Stack::start(Options::default()).await;
    let rp = stack.rp();
    let known = || async {
        stack
            .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
            .await
            .0
            == 200
    };
    let earlier = stack.scripted_login(0, ALICE, false, "").await;
    let current = stack.scripted_login(0, ALICE, false, "").await;
    assert_ne!(earlier.claims["sid"], current.claims["sid"]);
    let end_session = format!("{}/{TENANT}/oauth2/v2.0/logout", stack.idp.base_url());
    for (hint, deleted) in [(&earlier, false), (&current, true)] {
        let r = stack
            .http
            .get(stack.logout_url(&hint.id_token, &rp.logged_out_url()))
            .send()
            .await
            .unwrap();
        // Either way the browser goes on to the IdP's end-session endpoint.
        assert_eq!(r.status(), 302);
        let location = r.headers()["location"].to_str().unwrap();
        assert!(location.starts_with(&end_session), "{location}");
        assert_eq!(known().await, !deleted, "sid {}", hint.claims["sid"]);
    }
    stack.stop().await;
}

/// Issue 19: an `id_token_hint` older than `logout_hint_max_age` deletes nothing.
#[tokio::test]
async fn logout_ignores_a_hint_older_than_its_max_age() {
    let stack = Stack::start(Options {
        login_extra: "logout_hint_max_age = \"1s\"".into(),
        ..Options::default()
    })
    .await;
    let login = stack.scripted_login(0, ALICE, false, "").await;
    // Wait on the clock (bounded by it) until the hint is older than a second.
    let iat = login.claims["iat"].as_u64().unwrap();
    while now() <= iat + 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = stack
        .http
        .get(stack.logout_url(&login.id_token, &stack.rp().logged_out_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302, "the browser still goes on to the IdP");
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 200, "alice's tokens are kept: {body}");
    stack.stop().await;
}

#[tokio::test]
async fn another_clients_token_requests_are_not_relayed_and_its_id_token_cannot_log_users_out() {
    // A second app with its own registration points its OIDC client at the same tollgate: its
    // code redemption is refused before the IdP sees it (tollgate relays only its own client's
    // sign-in), and that app's ID token is no id_token_hint for tollgate's users.
    let stack = Stack::start(Options {
        rps: vec![
            RpOptions::default(),
            RpOptions {
                client_id: DOWNSTREAM_CLIENT_ID,
                client_secret: DOWNSTREAM_CLIENT_SECRET,
                ..RpOptions::default()
            },
        ],
        ..Options::default()
    })
    .await;
    stack.scripted_login(0, ALICE, false, "").await;
    let codes_redeemed = stack.idp.token_requests("authorization_code");
    let refused = stack.scripted_callback(1, BOB, false, "").await;
    assert_ne!(refused.status(), 200);
    let errors = stack.rps[1].errors().join("\n");
    assert!(
        errors.contains("400") && errors.contains("unauthorized_client"),
        "{errors}"
    );
    assert_eq!(
        stack.idp.token_requests("authorization_code"),
        codes_redeemed,
        "the other client's code never reached the IdP"
    );
    let (status, body) = stack
        .delegated(json!({"user_oid": BOB_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "unknown_user");

    // Alice's ID token issued to the other app, straight from the IdP.
    let direct: Value = stack
        .http
        .post(stack.idp.token_endpoint(TENANT))
        .form(&[
            ("grant_type", "password"),
            ("client_id", DOWNSTREAM_CLIENT_ID),
            ("client_secret", DOWNSTREAM_CLIENT_SECRET),
            ("username", ALICE),
            ("password", DEV_PASSWORD),
            ("scope", "openid profile"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alice_hint = direct["id_token"].as_str().expect("an ID token").to_owned();
    let r = stack
        .http
        .get(stack.logout_url(&alice_hint, &stack.rps[1].logged_out_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 302);
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
        .await;
    assert_eq!(status, 200, "alice is still stored: {body}");
    stack.stop().await;
}

#[tokio::test]
async fn the_token_endpoint_relays_only_the_apps_own_sign_in() {
    // Anything but the app's own code and refresh grants would turn tollgate into a relay to the
    // IdP from the organisation's address: password spraying, other clients' grants.
    let stack = Stack::start(Options::default()).await;
    let callback = stack.rps[0].callback_url();
    let own = [
        ("client_id", TOLLGATE_CLIENT_ID),
        ("client_secret", TOLLGATE_CLIENT_SECRET),
    ];
    let other = [
        ("client_id", DOWNSTREAM_CLIENT_ID),
        ("client_secret", DOWNSTREAM_CLIENT_SECRET),
    ];
    let password = [
        ("grant_type", "password"),
        ("username", ALICE),
        ("password", DEV_PASSWORD),
        ("scope", "openid"),
    ];
    fn code(redirect: &str) -> Vec<(&str, &str)> {
        vec![
            ("grant_type", "authorization_code"),
            ("code", "0.A-a-code"),
            ("redirect_uri", redirect),
        ]
    }
    let callback = callback.as_str();
    // (what, the form sent, the error expected)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "password, own client",
            [&password[..], &own].concat(),
            "unsupported_grant_type",
        ),
        (
            "password, other client",
            [&password[..], &other].concat(),
            "unsupported_grant_type",
        ),
        (
            "client credentials",
            [
                &[("grant_type", "client_credentials"), ("scope", ".default")][..],
                &own,
            ]
            .concat(),
            "unsupported_grant_type",
        ),
        (
            "device code",
            [
                &[
                    ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                    ("device_code", "x"),
                ][..],
                &own,
            ]
            .concat(),
            "unsupported_grant_type",
        ),
        ("no grant_type", own.to_vec(), "invalid_request"),
        (
            "code, other client",
            [&code(callback)[..], &other].concat(),
            "unauthorized_client",
        ),
        (
            "code, unregistered redirect_uri",
            [&code("https://evil.example/cb")[..], &own].concat(),
            "invalid_grant",
        ),
        (
            "code, no redirect_uri",
            [&code(callback)[..2], &own].concat(),
            "invalid_request",
        ),
        ("code, no client", code(callback), "invalid_request"),
        (
            "refresh, other client",
            [
                &[("grant_type", "refresh_token"), ("refresh_token", "0.A-rt")][..],
                &other,
            ]
            .concat(),
            "unauthorized_client",
        ),
        (
            "repeated grant_type",
            [
                &[
                    ("grant_type", "refresh_token"),
                    ("grant_type", "password"),
                    ("refresh_token", "x"),
                ][..],
                &own,
            ]
            .concat(),
            "invalid_request",
        ),
        (
            "repeated client_id",
            [
                &code(callback)[..],
                &own,
                &[("client_id", DOWNSTREAM_CLIENT_ID)],
            ]
            .concat(),
            "invalid_request",
        ),
    ];
    let before: u64 = [
        "password",
        "authorization_code",
        "refresh_token",
        "client_credentials",
    ]
    .iter()
    .map(|g| stack.idp.token_requests(g))
    .sum();
    for (what, form, error) in cases {
        let r = stack
            .http
            .post(stack.public("/oauth2/token"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], error, "{what}: {body}");
        assert!(
            !body.to_string().contains(DEV_PASSWORD),
            "{what}: nothing sent is echoed"
        );
    }
    // HTTP Basic naming another client than the form.
    let r = stack
        .http
        .post(stack.public("/oauth2/token"))
        .basic_auth(DOWNSTREAM_CLIENT_ID, Some(DOWNSTREAM_CLIENT_SECRET))
        .form(&[&code(callback)[..], &[("client_id", TOLLGATE_CLIENT_ID)]].concat())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let after: u64 = [
        "password",
        "authorization_code",
        "refresh_token",
        "client_credentials",
    ]
    .iter()
    .map(|g| stack.idp.token_requests(g))
    .sum();
    assert_eq!(after, before, "no refused request reached the IdP");
    // The app's own sign-in still goes through.
    let login = stack.scripted_login(0, ALICE, false, "").await;
    assert!(!login.refresh_token.is_empty());
    stack.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Persistent stores

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_store_serves_delegated_tokens_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, tollgate::store::keygen() + "\n").unwrap();
    let db = dir.path().join("tollgate.db");
    let store = format!(
        "kind = \"sqlite\"\npath = {}\nencryption_keys_file = {}",
        toml_str(&db),
        toml_str(&keys)
    );
    let mut stack = Stack::start(Options {
        store: store.clone(),
        ..Options::default()
    })
    .await;
    let login = stack.scripted_login(0, ALICE, false, "").await;
    let graph = delegated_check(&stack, &login).await;
    let mut at_rest = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        at_rest.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    for secret in [&login.access_token, &login.refresh_token, &graph] {
        assert!(
            !contains(&at_rest, secret.as_bytes()),
            "a token is readable in the SQLite files"
        );
    }

    stack.restart_tollgate().await;
    let (status, body) = stack
        .delegated(json!({"user_upn": ALICE_UPN, "target": graph_scope()}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["access_token"],
        graph.as_str(),
        "read back from SQLite"
    );
    assert_eq!(stack.idp.token_requests("refresh_token"), 1);
    stack.stop().await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_serves_delegated_tokens_across_restarts() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, tollgate::store::keygen() + "\n").unwrap();
    let store = format!(
        "kind = \"redis\"\nurl = \"{}\"\nencryption_keys_file = {}",
        redis.url(),
        toml_str(&keys)
    );
    let mut stack = Stack::start(Options {
        store,
        ..Options::default()
    })
    .await;
    let login = stack.scripted_login(0, ALICE, false, "").await;
    let graph = delegated_check(&stack, &login).await;
    stack.restart_tollgate().await;
    let (status, body) = stack
        .delegated(json!({"user_oid": ALICE_OID, "target": graph_scope()}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["access_token"], graph.as_str(), "read back from Redis");
    assert_eq!(stack.idp.token_requests("refresh_token"), 1);
    stack.stop().await;
    drop(redis);
}

/// Issue 6: "a Redis outage makes the delegated API answer 503 while the proxy and exchange paths
/// keep working". Redis is down before tollgate starts: tollgate starts anyway, the delegated API
/// (and user deletion) answer 503 with an OAuth-style JSON error and quickly, readiness stays up,
/// proxied requests and token exchanges succeed; once Redis is back the delegated API works
/// again without a restart.
#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_outage_fails_only_the_delegated_api() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    redis.stop();
    let upstream = Echo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, tollgate::store::keygen() + "\n").unwrap();
    let store = format!(
        "kind = \"redis\"\nurl = \"{}\"\ntimeout = \"300ms\"\nencryption_keys_file = {}",
        redis.url(),
        toml_str(&keys)
    );
    let extra = format!(
        "[upstream]\nurl = \"{}\"\n\n[[routes]]\npath = \"/app\"\nscopes = [\"access_as_user\"]\n",
        upstream.url()
    );
    // Server::bind opens the store: it must not need Redis.
    let stack = Stack::start(Options {
        store,
        extra,
        ..Options::default()
    })
    .await;
    let admin = stack.tollgate.as_ref().unwrap().admin.unwrap();
    let readyz = stack
        .http
        .get(format!("http://{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        readyz.status(),
        200,
        "readiness does not depend on the store"
    );

    // The app's login works: it gets the IdP's answer as is; tollgate cannot keep the tokens.
    let login = stack.scripted_login(0, ALICE, false, "").await;
    assert_token_response_unchanged(&login);

    let started = std::time::Instant::now();
    let r = stack
        .api_http
        .post(stack.api("/api/v1/token/delegated"))
        .json(&json!({"identity_provider": "entra_id", "user_oid": ALICE_OID, "target": tollgate_scope()}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{:?}",
        r.headers()
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("store")),
        "{body}"
    );
    let (status, body) = stack
        .delegated_form(&[("user_upn", ALICE_UPN), ("target", &graph_scope())])
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
    let r = stack
        .api_http
        .delete(stack.api(&format!("/api/v1/users/{ALICE_OID}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // Three store calls of at most 300 ms each, plus margin for a loaded machine: no hang.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the store outage took {:?} to report",
        started.elapsed()
    );

    // The proxy validates and forwards without the store.
    let user_token = stack
        .idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, &tollgate_scope())
        .await
        .unwrap();
    let r = stack
        .http
        .get(stack.public("/app/hello"))
        .bearer_auth(&user_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Value = r.json().await.unwrap();
    assert_eq!(seen["path"], "/app/hello");
    assert_eq!(seen["headers"]["x-auth-oid"], ALICE_OID, "{seen}");
    let r = stack
        .http
        .get(stack.public("/app/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the proxy still refuses requests without a token"
    );
    assert_eq!(upstream.hits(), 1);

    // So does the token exchange (On-Behalf-Of).
    let r = stack
        .api_http
        .post(stack.api("/api/v1/token/exchange"))
        .json(&json!({"identity_provider": "entra_id", "target": downstream_default(), "user_token": user_token}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let exchanged: Value = r.json().await.unwrap();
    let claims = jwt_claims(exchanged["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], DOWNSTREAM_CLIENT_ID);
    assert_eq!(claims["oid"], ALICE_OID);

    // Redis is back: the same tollgate reconnects. The login made during the outage was not kept.
    redis.restart();
    let mut answer = (StatusCode::SERVICE_UNAVAILABLE, Value::Null);
    for _ in 0..300 {
        answer = stack
            .delegated(json!({"user_oid": ALICE_OID, "target": tollgate_scope()}))
            .await;
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(answer.0, 400, "{}", answer.1);
    assert_eq!(answer.1["error"], "unknown_user");
    let login = stack.scripted_login(0, ALICE, false, "").await;
    for by in [
        json!({"user_oid": ALICE_OID, "target": tollgate_scope()}),
        json!({"user_upn": ALICE_UPN, "target": tollgate_scope()}),
    ] {
        let (status, body) = stack.delegated(by).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], login.access_token);
    }
    stack.stop().await;
    drop(redis);
}

/// The main delegated check: stored token by oid and upn, one refresh for Graph. Returns the
/// Graph token.
async fn delegated_check(stack: &Stack, login: &Login) -> String {
    for by in [
        json!({"user_oid": ALICE_OID, "target": tollgate_scope()}),
        json!({"user_upn": ALICE_UPN, "target": tollgate_scope()}),
    ] {
        let (status, body) = stack.delegated(by).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["access_token"], login.access_token);
    }
    assert_eq!(stack.idp.token_requests("refresh_token"), 0);
    let (status, body) = stack
        .delegated_form(&[("user_oid", ALICE_OID), ("target", &graph_scope())])
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.idp.token_requests("refresh_token"), 1);
    let graph = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(jwt_claims(&graph)["aud"], GRAPH_CLIENT_ID);
    graph
}

// ---------------------------------------------------------------------------------------------
// The stack: dev IdP, tollgate, test RPs

struct Options {
    /// The body of tollgate's `[store]` table.
    store: String,
    require_pkce: Option<bool>,
    rps: Vec<RpOptions>,
    /// More tables (`[upstream]`, `[[routes]]`) appended to tollgate's configuration.
    extra: String,
    /// More keys of tollgate's `[[providers]]` entry.
    provider_extra: String,
    /// tollgate's `client_id`.
    client_id: &'static str,
    /// The tenant whose discovery document tollgate's provider reads (`organizations` for a
    /// multi-tenant app).
    tenant: &'static str,
    /// More users of the dev IdP.
    idp_users: Vec<DevUser>,
    /// More keys of tollgate's `[login]` table.
    login_extra: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            store: "kind = \"memory\"".into(),
            require_pkce: None,
            rps: vec![RpOptions::default()],
            extra: String::new(),
            provider_extra: String::new(),
            client_id: TOLLGATE_CLIENT_ID,
            tenant: TENANT,
            idp_users: Vec::new(),
            login_extra: String::new(),
        }
    }
}

struct Stack {
    idp: DevIdpHandle,
    tollgate: Option<RunningServer>,
    /// The public listener bound before the first start; restarts bind its address again.
    public_listener: Option<StdListener>,
    config: String,
    public_url: String,
    api_url: String,
    rps: Vec<Rp>,
    /// Follows no redirects, so every hop can be checked.
    http: reqwest::Client,
    /// For tollgate's token API: sends its API key.
    api_http: reqwest::Client,
}

impl Stack {
    async fn start(options: Options) -> Self {
        let mut idp_config = DevIdpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..DevIdpConfig::default()
        };
        idp_config.users.extend(options.idp_users);
        for app in &mut idp_config.apps {
            if options
                .rps
                .iter()
                .any(|rp| rp.client_id.eq_ignore_ascii_case(&app.client_id))
            {
                app.loopback_redirects = true;
            }
        }
        let idp = DevIdp::start(idp_config).await.unwrap();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut rps = Vec::new();
        for rp in options.rps {
            rps.push(Rp::start(rp, http.clone()).await);
        }
        // tollgate must know its public URL before it starts: bind its public listener first.
        let public = StdListener::bind("127.0.0.1:0").unwrap();
        let public_addr = public.local_addr().unwrap();
        let public_url = format!("http://{public_addr}");
        let list = |urls: Vec<String>| {
            urls.iter()
                .map(|u| format!("\"{u}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let pkce = options
            .require_pkce
            .map(|p| format!("require_pkce = {p}"))
            .unwrap_or_default();
        let config = format!(
            r#"
{listen}
[[providers]]
name = "entra_id"
well_known_url = "{well_known}"
client_id = "{client_id}"
{provider_extra}

[login]
enabled = true
public_url = "{public_url}"
extra_scopes = ["{graph}"]
redirect_uris = [{redirects}]
post_logout_redirect_uris = [{post_logout}]
{pkce}
{login_extra}

[store]
{store}

{extra}
"#,
            listen = support::config::listen_public(public_addr, "2s"),
            well_known = idp.well_known_url(options.tenant),
            graph = graph_scope(),
            redirects = list(rps.iter().map(Rp::callback_url).collect()),
            post_logout = list(rps.iter().map(Rp::logged_out_url).collect()),
            store = options.store,
            extra = options.extra,
            provider_extra = options.provider_extra,
            login_extra = options.login_extra,
            client_id = options.client_id,
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {API_KEY}").parse().unwrap(),
        );
        let api_http = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
        let mut stack = Stack {
            idp,
            tollgate: None,
            public_listener: Some(public),
            config,
            public_url,
            api_url: String::new(),
            rps,
            http,
            api_http,
        };
        stack.start_tollgate().await;
        for rp in &stack.rps {
            rp.discover(&stack.public_url).await;
        }
        stack
    }

    async fn start_tollgate(&mut self) {
        // Issue 19: with [login] on, the token API needs a key.
        let env = MapEnv::from([
            ("AZURE_APP_CLIENT_SECRET", TOLLGATE_CLIENT_SECRET),
            ("TOLLGATE_API__KEY", API_KEY),
        ]);
        let cfg = Config::from_toml_str(&self.config, &env).unwrap();
        let server = match self.public_listener.take() {
            Some(public) => {
                let loopback = || Some(StdListener::bind("127.0.0.1:0").unwrap());
                let listeners = Listeners {
                    public,
                    api: loopback(),
                    admin: loopback(),
                };
                Server::from_listeners(cfg, listeners).await.unwrap()
            }
            // A restart must come back on the same public port (the RPs and the IdP know the
            // URL), so it binds the configured address again: the port was just released by
            // the previous server, not reserved by a guess.
            None => Server::bind(cfg).await.unwrap(),
        }
        .spawn();
        self.api_url = format!("http://{}", server.api.unwrap());
        self.tollgate = Some(server);
        // The provider's metadata loads in the background; discovery answers 503 until then.
        let discovery = self.public("/.well-known/openid-configuration");
        for _ in 0..500 {
            let r = self.http.get(&discovery).send().await;
            if r.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tollgate never served its discovery document");
    }

    /// Stops tollgate and starts it again with the same configuration (and public port).
    async fn restart_tollgate(&mut self) {
        if let Some(server) = self.tollgate.take() {
            server.shutdown().await.unwrap();
        }
        self.start_tollgate().await;
    }

    async fn stop(mut self) {
        if let Some(server) = self.tollgate.take() {
            server.shutdown().await.unwrap();
        }
        for rp in self.rps.drain(..) {
            rp.stop().await;
        }
        self.idp.shutdown().await;
    }

    fn rp(&self) -> &Rp {
        &self.rps[0]
    }

    fn public(&self, path: &str) -> String {
        format!("{}{path}", self.public_url)
    }

    fn api(&self, path: &str) -> String {
        format!("{}{path}", self.api_url)
    }

    fn logout_url(&self, id_token_hint: &str, post_logout: &str) -> String {
        let mut url = Url::parse(&self.public("/oauth2/logout")).unwrap();
        url.query_pairs_mut()
            .append_pair("id_token_hint", id_token_hint)
            .append_pair("post_logout_redirect_uri", post_logout);
        url.into()
    }

    async fn authorize(&self, params: &[(&str, &str)]) -> Answer {
        let mut url = Url::parse(&self.public("/oauth2/authorize")).unwrap();
        url.query_pairs_mut().extend_pairs(params);
        Answer(self.http.get(url).send().await.unwrap())
    }

    async fn delegated(&self, mut body: Value) -> (StatusCode, Value) {
        body["identity_provider"] = json!("entra_id");
        let r = self
            .api_http
            .post(self.api("/api/v1/token/delegated"))
            .json(&body)
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            // RFC 6749 §5.1: an answer holding a token is never cached.
            assert_eq!(r.headers()["cache-control"], "no-store");
        }
        (r.status(), r.json().await.unwrap())
    }

    async fn delegated_form(&self, fields: &[(&str, &str)]) -> (StatusCode, Value) {
        let mut form = vec![("identity_provider", "azuread")];
        form.extend_from_slice(fields);
        let r = self
            .api_http
            .post(self.api("/api/v1/token/delegated"))
            .form(&form)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }

    /// The login the browser does, hop by hop over HTTP: the RP's `/start`, tollgate's
    /// authorize, the dev IdP's login page and its form post, the RP's callback.
    /// Signs `user` in at the dev IdP through tollgate for RP `rp` and returns the RP's answer
    /// to the callback (after its code redemption).
    async fn scripted_callback(
        &self,
        rp: usize,
        user: &str,
        mfa: bool,
        query: &str,
    ) -> reqwest::Response {
        let rp = &self.rps[rp];
        let to_tollgate = self
            .expect_redirect(&format!("{}/start?{query}", rp.url()))
            .await;
        assert!(
            to_tollgate.starts_with(&self.public("/oauth2/authorize?")),
            "{to_tollgate}"
        );
        let to_idp = self.expect_redirect(&to_tollgate).await;
        let page = self.http.get(&to_idp).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(page.text().await.unwrap().contains("name=\"login\""));
        let mut form: Vec<(String, String)> = Url::parse(&to_idp)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect();
        form.push(("login".into(), user.into()));
        form.push(("password".into(), DEV_PASSWORD.into()));
        if mfa {
            form.push(("mfa".into(), "on".into()));
        }
        let submit = self
            .http
            .post(to_idp.split('?').next().unwrap())
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(submit.status(), 302, "{}", submit.text().await.unwrap());
        let callback = submit.headers()["location"].to_str().unwrap().to_owned();
        assert!(callback.starts_with(&rp.callback_url()), "{callback}");
        self.http.get(&callback).send().await.unwrap()
    }

    async fn scripted_login(&self, rp: usize, user: &str, mfa: bool, query: &str) -> Login {
        let before = self.rps[rp].logins.lock().unwrap().len();
        let done = self.scripted_callback(rp, user, mfa, query).await;
        let rp = &self.rps[rp];
        let status = done.status();
        let html = done.text().await.unwrap();
        assert_eq!(status, 200, "{html} {:?}", rp.errors());
        let logins = rp.logins.lock().unwrap();
        assert_eq!(logins.len(), before + 1);
        let login = logins.last().unwrap().clone();
        assert!(html.contains(login.claims["preferred_username"].as_str().unwrap()));
        login
    }

    async fn expect_redirect(&self, url: &str) -> String {
        Answer(self.http.get(url).send().await.unwrap()).expect_redirect()
    }
}

/// An answer to a request that must redirect, or be refused without one.
struct Answer(reqwest::Response);

impl Answer {
    fn expect_redirect(self) -> String {
        assert_eq!(self.0.status(), 302, "{}", self.0.url());
        self.0.headers()["location"].to_str().unwrap().to_owned()
    }

    fn expect_refused(self, why: &str) {
        assert_eq!(self.0.status(), 400, "{why}");
        assert!(
            self.0.headers().get("location").is_none(),
            "{why}: never a redirect"
        );
    }
}

fn authorize_params<'a>(
    redirect_uri: &'a str,
    scope: &'a str,
    challenge: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("client_id", TOLLGATE_CLIENT_ID),
        ("response_type", "code"),
        ("redirect_uri", redirect_uri),
        ("scope", scope),
        ("state", "xyz"),
        ("nonce", "n-1"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
    ]
}

// ---------------------------------------------------------------------------------------------
// The test RP

#[derive(Clone)]
struct RpOptions {
    client_id: &'static str,
    client_secret: &'static str,
    /// `client_secret_basic` instead of `client_secret_post`.
    basic_auth: bool,
    /// Append MSAL's `?client-request-id=` to the token endpoint.
    client_request_id: bool,
    /// Send a `nonce` with the authorization request (and expect it back in the ID token).
    nonce: bool,
}

impl Default for RpOptions {
    fn default() -> Self {
        Self {
            client_id: TOLLGATE_CLIENT_ID,
            client_secret: TOLLGATE_CLIENT_SECRET,
            basic_auth: false,
            client_request_id: false,
            nonce: true,
        }
    }
}

/// One completed login as the RP saw it.
#[derive(Clone, Debug)]
struct Login {
    /// The token endpoint URL the RP posted to.
    token_url: String,
    /// The token response body, byte for byte.
    raw: String,
    cache_control: String,
    /// The validated ID token's claims.
    claims: Value,
    access_token: String,
    refresh_token: String,
    id_token: String,
}

struct Discovered {
    authorization_endpoint: String,
    token_endpoint: String,
    issuer: String,
    jwks_uri: String,
}

struct Pending {
    nonce: Option<String>,
    verifier: String,
}

struct RpShared {
    options: RpOptions,
    base: String,
    http: reqwest::Client,
    discovered: OnceLock<Discovered>,
    pending: Mutex<HashMap<String, Pending>>,
    logins: Mutex<Vec<Login>>,
    errors: Mutex<Vec<String>>,
}

struct Rp {
    addr: SocketAddr,
    shared: Arc<RpShared>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for Rp {
    type Target = RpShared;
    fn deref(&self) -> &RpShared {
        &self.shared
    }
}

impl Rp {
    async fn start(options: RpOptions, http: reqwest::Client) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(RpShared {
            options,
            base: format!("http://{addr}"),
            http,
            discovered: OnceLock::new(),
            pending: Mutex::default(),
            logins: Mutex::default(),
            errors: Mutex::default(),
        });
        let app = Router::new()
            .route("/start", get(rp_start))
            .route("/callback", get(rp_callback))
            .route(
                "/logged-out",
                get(|| async { Html("<p id=\"logged-out\">signed out</p>") }),
            )
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Rp {
            addr,
            shared,
            stop,
            task,
        }
    }

    /// Reads tollgate's discovery document, as an OIDC client library would.
    async fn discover(&self, issuer_url: &str) {
        let doc: Value = self
            .http
            .get(format!("{issuer_url}/.well-known/openid-configuration"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let s = |k: &str| doc[k].as_str().unwrap().to_owned();
        let _ = self.discovered.set(Discovered {
            authorization_endpoint: s("authorization_endpoint"),
            token_endpoint: s("token_endpoint"),
            issuer: s("issuer"),
            jwks_uri: s("jwks_uri"),
        });
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }

    fn url(&self) -> String {
        self.base.clone()
    }

    fn callback_url(&self) -> String {
        format!("{}/callback", self.base)
    }

    fn logged_out_url(&self) -> String {
        format!("{}/logged-out", self.base)
    }

    fn last_login(&self) -> Login {
        self.logins
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("no login yet")
    }

    fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }
}

/// Starts a login: fresh state, nonce and PKCE verifier; extra query parameters (login_hint,
/// prompt...) are passed on to the authorization request.
async fn rp_start(
    State(rp): State<Arc<RpShared>>,
    Query(extra): Query<Vec<(String, String)>>,
) -> Response {
    let Some(d) = rp.discovered.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "not discovered yet").into_response();
    };
    let state = uuid::Uuid::new_v4().simple().to_string();
    let nonce = rp.options.nonce.then(|| uuid::Uuid::new_v4().to_string());
    let verifier = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let challenge = pkce_challenge(&verifier);
    let mut url = Url::parse(&d.authorization_endpoint).unwrap();
    url.query_pairs_mut()
        .append_pair("client_id", rp.options.client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", &format!("{}/callback", rp.base))
        .append_pair("scope", &format!("openid profile {}", tollgate_scope()))
        .append_pair("state", &state)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .extend_pairs(extra);
    if let Some(nonce) = &nonce {
        url.query_pairs_mut().append_pair("nonce", nonce);
    }
    rp.pending
        .lock()
        .unwrap()
        .insert(state, Pending { nonce, verifier });
    (
        StatusCode::FOUND,
        [(http::header::LOCATION, url.to_string())],
    )
        .into_response()
}

async fn rp_callback(
    State(rp): State<Arc<RpShared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match redeem(&rp, &q).await {
        Ok(login) => {
            let upn = login.claims["preferred_username"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            rp.logins.lock().unwrap().push(login);
            Html(format!("<h1>Signed in</h1><p id=\"upn\">{upn}</p>")).into_response()
        }
        Err(e) => {
            rp.errors.lock().unwrap().push(e.clone());
            (
                StatusCode::BAD_REQUEST,
                Html(format!("<p id=\"error\">{e}</p>")),
            )
                .into_response()
        }
    }
}

/// Checks state, redeems the code at the discovered token endpoint and validates the ID token
/// (signature with the provider's keys, issuer, audience, nonce).
async fn redeem(rp: &RpShared, q: &HashMap<String, String>) -> Result<Login, String> {
    if let Some(e) = q.get("error") {
        return Err(format!("authorization error {e}"));
    }
    let state = q.get("state").ok_or("no state")?;
    let pending = rp
        .pending
        .lock()
        .unwrap()
        .remove(state)
        .ok_or("unknown state")?;
    let code = q.get("code").ok_or("no code")?;
    let d = rp.discovered.get().ok_or("not discovered")?;
    let token_url = if rp.options.client_request_id {
        format!(
            "{}?client-request-id={}",
            d.token_endpoint,
            uuid::Uuid::new_v4()
        )
    } else {
        d.token_endpoint.clone()
    };
    let redirect_uri = format!("{}/callback", rp.base);
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("code_verifier", pending.verifier.as_str()),
        ("client_info", "1"),
    ];
    let mut req = rp.http.post(&token_url);
    if rp.options.basic_auth {
        req = req.basic_auth(rp.options.client_id, Some(rp.options.client_secret));
    } else {
        form.push(("client_id", rp.options.client_id));
        form.push(("client_secret", rp.options.client_secret));
    }
    let r = req.form(&form).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let cache_control = r
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let raw = r.text().await.map_err(|e| e.to_string())?;
    if status != 200 {
        return Err(format!("token endpoint answered {status}: {raw}"));
    }
    let body: Value = serde_json::from_str(&raw).map_err(|e| e.to_string())?;
    let s = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
    let id_token = s("id_token");
    let claims = validate_id_token(rp, d, &id_token).await?;
    // Without a nonce in the request, OIDC Core §3.1.2.1 lets the ID token have none.
    if claims.get("nonce").and_then(Value::as_str) != pending.nonce.as_deref() {
        return Err("nonce mismatch".into());
    }
    Ok(Login {
        token_url,
        raw,
        cache_control,
        claims,
        access_token: s("access_token"),
        refresh_token: s("refresh_token"),
        id_token,
    })
}

async fn validate_id_token(rp: &RpShared, d: &Discovered, token: &str) -> Result<Value, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let jwks: Value = rp
        .http
        .get(&d.jwks_uri)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let jwk = jwks["keys"]
        .as_array()
        .and_then(|keys| {
            keys.iter()
                .find(|k| k["kid"].as_str() == header.kid.as_deref())
        })
        .ok_or("unknown kid")?;
    let key = jsonwebtoken::DecodingKey::from_rsa_components(
        jwk["n"].as_str().unwrap_or_default(),
        jwk["e"].as_str().unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // A multi-tenant authority's issuer is a template the token's own tenant fills
    // (Microsoft's multi-tenant issuer rule).
    let tid = jwt_claims(token)["tid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    validation.set_issuer(&[d.issuer.replace("{tenantid}", &tid)]);
    // Entra writes the client id in lower case whatever case the app registered it in.
    validation.set_audience(&[rp.options.client_id.to_ascii_lowercase()]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|data| data.claims)
        .map_err(|e| format!("ID token refused: {e}"))
}

// ---------------------------------------------------------------------------------------------
// The browser

/// What the browser saw during a login.
struct BrowserLogin {
    scope_shown: String,
    upn_shown: String,
    final_url: String,
}

// Launching Chromium is shared (`support::browser`); the login walk is this file's own.
impl Browser {
    /// Logs `user` in at the dev IdP, starting at the RP.
    async fn login(&self, stack: &Stack, user: &str, start_query: &str) -> BrowserLogin {
        let c = &self.client;
        c.goto(&format!("{}/start?{start_query}", stack.rp().url()))
            .await
            .unwrap();
        c.wait()
            .at_most(BROWSER_WAIT)
            .for_element(Locator::Id("login"))
            .await
            .unwrap();
        let at = c.current_url().await.unwrap();
        assert!(
            at.as_str().starts_with(&stack.idp.base_url()),
            "the login page is the dev IdP's: {at}"
        );
        let scope_shown = c
            .find(Locator::Css("p code"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        self.submit_dev_idp_login(user).await;
        let upn = c
            .wait()
            .at_most(BROWSER_WAIT)
            .for_element(Locator::Id("upn"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the RP never showed the user ({e}): {:?}",
                    stack.rp().errors()
                )
            });
        BrowserLogin {
            scope_shown,
            upn_shown: upn.text().await.unwrap(),
            final_url: c.current_url().await.unwrap().into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// The token response arrived as the dev IdP wrote it: Entra's members in Entra's order,
/// `client_info` (asked for with `client_info=1`) included, and its no-store header.
fn assert_token_response_unchanged(login: &Login) {
    assert_eq!(member_names(&login.raw), TOKEN_MEMBERS, "{}", login.raw);
    let body: Value = serde_json::from_str(&login.raw).unwrap();
    assert_eq!(body["token_type"], "Bearer");
    let scope = body["scope"].as_str().unwrap();
    assert!(
        scope.split(' ').any(|s| s == "offline_access"),
        "tollgate asked for offline_access: {scope}"
    );
    let info: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(body["client_info"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(info["uid"], login.claims["oid"]);
    assert_eq!(info["utid"], TENANT);
    assert_eq!(login.cache_control, "no-store, no-cache");
}

/// Top-level member names of a JSON object in the order they appear in the text.
fn member_names(json_text: &str) -> Vec<String> {
    let Value::Object(map) = serde_json::from_str::<Value>(json_text).unwrap() else {
        panic!("not an object: {json_text}");
    };
    let mut names: Vec<(usize, String)> = map
        .keys()
        .map(|k| {
            let at = json_text
                .find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k} not found"));
            (at, k.clone())
        })
        .collect();
    names.sort();
    names.into_iter().map(|(_, k)| k).collect()
}

fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        verifier.as_bytes(),
    ))
}

fn query_map(url: &str) -> HashMap<String, String> {
    Url::parse(url)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
