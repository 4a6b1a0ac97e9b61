//! The Tower layer and the axum extractors through real servers on 127.0.0.1:0, with tokens from
//! the dev IdP: validation outcomes and their RFC 6750 answers, optional auth, extractors without
//! the layer, `route_layer`, On-Behalf-Of from a handler, a plain hyper service, the builder's
//! configuration checks, and the `axum_app` example exercised over HTTP.
#![cfg(all(feature = "axum", feature = "dev-idp"))]

#[path = "../examples/axum_app.rs"]
mod example;
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::config::{CacheConfig, ProviderConfig};
use tollgate::layer::AuthError;
use tollgate::{Auth, BearerToken, Claims};
use tollgate_devidp::*;
use tower::ServiceExt;

const TOLLGATE_SCOPE: &str = "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/access_as_user";
const TOLLGATE_READ_SCOPE: &str = "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/read";
const DOWNSTREAM_READ_SCOPE: &str = "api://eeeeeeee-6666-7777-8888-ffffffffffff/Data.Read";
const DOWNSTREAM_DEFAULT: &str = "api://eeeeeeee-6666-7777-8888-ffffffffffff/.default";
const REALM_ONLY: &str = "Bearer realm=\"tollgate\"";

// ---------------------------------------------------------------------------------------------
// Validation outcomes through the layer

#[tokio::test]
async fn valid_token_reaches_the_handler_with_claims_and_bearer_token() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    let router = Router::new()
        .route(
            "/me",
            get(
                |claims: Claims, bearer: BearerToken, headers: HeaderMap| async move {
                    let sent = headers["authorization"].to_str().unwrap_or_default();
                    axum::Json(json!({
                        "oid": claims.oid(),
                        "username": claims.username(),
                        "aud": claims.get("aud"),
                        "scopes": claims.scopes(),
                        "roles": claims.roles(),
                        "bearer_is_the_sent_token": sent == format!("Bearer {}", bearer.0),
                    }))
                },
            ),
        )
        .layer(auth.layer());
    let server = serve(router).await;
    let token = token(&idp, ALICE, TOLLGATE_SCOPE).await;

    let (status, _, body) = get_json(&server.url("/me"), Some(&token)).await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["oid"], ALICE_OID);
    assert_eq!(body["username"], ALICE_UPN);
    assert_eq!(body["aud"], TOLLGATE_CLIENT_ID);
    assert_eq!(body["scopes"], json!(["access_as_user"]));
    assert_eq!(body["roles"], json!(["Reader"]));
    assert_eq!(body["bearer_is_the_sent_token"], true);
    server.stop().await;
}

#[tokio::test]
async fn missing_token_is_401_with_the_bare_realm_challenge() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    let (router, calls) = counting_router();
    let server = serve(router.layer(auth.layer())).await;

    let (status, headers, body) = get_json(&server.url("/"), None).await;

    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], REALM_ONLY);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(
        body,
        json!({"error": "unauthorized", "error_description": "no bearer token"})
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler must not run");
    server.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_401_invalid_token_and_malformed_credentials_400() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    let (router, calls) = counting_router();
    let server = serve(router.layer(auth.layer())).await;
    let good = token(&idp, ALICE, TOLLGATE_SCOPE).await;
    let for_another_api = token(&idp, ALICE, DOWNSTREAM_READ_SCOPE).await;

    for (what, bad) in [
        ("tampered signature", tamper_signature(&good)),
        ("not a JWT", "abc.def.ghi".to_owned()),
        ("another audience", for_another_api),
    ] {
        let (status, headers, body) = get_json(&server.url("/"), Some(&bad)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.starts_with("Bearer realm=\"tollgate\", error=\"invalid_token\""),
            "{what}: {challenge}"
        );
        assert_eq!(body["error"], "invalid_token", "{what}");
    }

    // Another scheme is no bearer credential: a challenge without an error (RFC 6750 §3.1).
    let response = http()
        .get(server.url("/"))
        .header("authorization", "Basic YWxpY2U6ZGV2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], REALM_ONLY);
    // A Bearer credential without its token is malformed.
    let response = http()
        .get(server.url("/"))
        .header("authorization", "Bearer")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_request\"")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler must not run");

    // The same server still lets a good token through: the refusals were about the tokens.
    let (status, _, _) = get_json(&server.url("/"), Some(&good)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_header_with_critical_extensions_is_refused_though_signed_by_the_real_key() {
    // RFC 7515 §4.1.11: tollgate understands no JWS extension, so any `crit` is a refusal.
    let key = support::TestKey::new("k1");
    let (idp, auth) = static_idp_auth(&key).await;
    let (router, calls) = counting_router();
    let server = serve(router.layer(auth.layer())).await;
    let claims = support::user_claims(&idp.issuer());
    for crit in [json!(["exp"]), json!(["urn:example:ext"]), json!([])] {
        let header =
            json!({"typ": "JWT", "alg": "RS256", "kid": "k1", "crit": crit, "urn:example:ext": 1});
        let token = key.sign(&header, &claims);
        let (status, headers, body) = get_json(&server.url("/"), Some(&token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "crit {crit}");
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\""),
            "crit {crit}"
        );
        assert_eq!(body["error"], "invalid_token", "crit {crit}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler must not run");
    // The same claims under a plain header pass: the refusal was the header's.
    let good = key.sign(&json!({"typ": "JWT", "alg": "RS256", "kid": "k1"}), &claims);
    let (status, _, _) = get_json(&server.url("/"), Some(&good)).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn tokens_without_scopes_or_roles_need_the_layer_to_allow_them() {
    let key = support::TestKey::new("k1");
    let (idp, auth) = static_idp_auth(&key).await;
    let mut claims = support::user_claims(&idp.issuer());
    support::merge(&mut claims, json!({"scp": null, "roles": null}));
    let unscoped = key.sign(&json!({"typ": "JWT", "alg": "RS256", "kid": "k1"}), &claims);
    let (router, calls) = counting_router();
    let strict = serve(router.clone().layer(auth.layer())).await;
    let (status, headers, body) = get_json(&strict.url("/"), Some(&unscoped)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"], "insufficient_scope");
    assert!(
        !headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("scope=\"")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    let lenient = serve(router.layer(auth.layer().allow_unscoped_tokens())).await;
    let (status, _, _) = get_json(&lenient.url("/"), Some(&unscoped)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    strict.stop().await;
    lenient.stop().await;
}

#[tokio::test]
async fn missing_scope_or_role_is_403_naming_what_would_do() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    // Each route_layer wraps every route above it, so the two requirements live in two routers.
    let router = Router::new()
        .route("/read", get(|| async { "read" }))
        .route_layer(auth.layer().require_scopes(["read"]))
        .merge(
            Router::new()
                .route("/write", get(|| async { "write" }))
                .route_layer(auth.layer().require_roles(["Writer"])),
        );
    let server = serve(router).await;
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;
    let alice_read = token(&idp, ALICE, TOLLGATE_READ_SCOPE).await;
    let bob = token(&idp, BOB, TOLLGATE_SCOPE).await;

    let (status, headers, body) = get_json(&server.url("/read"), Some(&alice)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(challenge.ends_with("scope=\"read\""), "{challenge}");
    assert_eq!(body["error"], "insufficient_scope");
    let (status, _, _) = get_json(&server.url("/read"), Some(&alice_read)).await;
    assert_eq!(status, StatusCode::OK);

    // alice is a Reader, bob a Writer.
    let (status, headers, _) = get_json(&server.url("/write"), Some(&alice)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .ends_with("scope=\"Writer\"")
    );
    let (status, _, _) = get_json(&server.url("/write"), Some(&bob)).await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn a_required_auth_context_is_a_claims_challenge_until_the_user_steps_up() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    let (router, calls) = counting_router();
    let server = serve(router.route_layer(auth.layer().require_auth_context("c1"))).await;
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;
    let (status, headers, body) = get_json(&server.url("/"), Some(&alice)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "insufficient_claims");
    let challenge = headers["www-authenticate"].to_str().unwrap();
    let authorize = format!(
        "authorization_uri=\"{}/{DEFAULT_TENANT_ID}/oauth2/v2.0/authorize\"",
        idp.base_url()
    );
    assert!(challenge.contains(&authorize), "{challenge}");
    let claims = challenge
        .split("claims=\"")
        .nth(1)
        .unwrap()
        .trim_end_matches('"');
    let request: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        request,
        json!({"access_token": {"acrs": {"essential": true, "value": "c1"}}})
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The stepped-up token (a claims request for c1 at the IdP) reaches the handler.
    let stepped_up = idp
        .password_token_with_claims(
            ALICE,
            FRONTEND_CLIENT_ID,
            TOLLGATE_SCOPE,
            &request.to_string(),
        )
        .await
        .unwrap();
    let (status, _, _) = get_json(&server.url("/"), Some(&stepped_up)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_query_token_is_taken_only_where_allowed_and_only_alone() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    let router = Router::new()
        .route("/hub", get(|b: BearerToken| async move { b.0 }))
        .route_layer(auth.layer().allow_query_token())
        .merge(
            Router::new()
                .route("/plain", get(|| async { "plain" }))
                .route_layer(auth.layer()),
        );
    let server = serve(router).await;
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;
    // SignalR's WebSocket handshake carries the token in the query; the handler gets it.
    assert_eq!(
        get_text(
            &server.url(&format!("/hub?id=1&access_token={alice}")),
            None
        )
        .await,
        (200, alice.clone())
    );
    // The header still works where the query is allowed.
    assert_eq!(
        get_text(&server.url("/hub"), Some(&alice)).await,
        (200, alice.clone())
    );
    let with_query = server.url(&format!("/hub?access_token={alice}"));
    let (status, _, body) = get_json(&with_query, Some(&alice)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "both methods at once");
    assert_eq!(body["error"], "invalid_request");
    let (status, _, body) = get_json(&server.url("/hub?access_token=a%20b"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "invalid_token");
    // Where it is not allowed, a query token is no token.
    let (status, headers, _) =
        get_json(&server.url(&format!("/plain?access_token={alice}")), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], REALM_ONLY);
    server.stop().await;
}

#[tokio::test]
async fn optional_layer_passes_anonymous_requests_and_still_refuses_bad_tokens() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    let router = Router::new()
        .route(
            "/",
            get(|claims: Option<Claims>| async move {
                claims
                    .and_then(|c| c.username().map(str::to_owned))
                    .unwrap_or_else(|| "anonymous".into())
            }),
        )
        .layer(auth.layer().optional());
    let server = serve(router).await;
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;

    assert_eq!(
        get_text(&server.url("/"), None).await,
        (200, "anonymous".into())
    );
    assert_eq!(
        get_text(&server.url("/"), Some(&alice)).await,
        (200, ALICE_UPN.into())
    );
    let (status, headers, _) = get_json(&server.url("/"), Some(&tamper_signature(&alice))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("error=\"invalid_token\"")
    );
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Extractors and routing

#[tokio::test]
async fn extractors_without_the_layer_answer_like_the_layer() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    let bare = Router::new()
        .route(
            "/claims",
            get(|c: Claims| async move { c.subject().to_owned() }),
        )
        .route("/bearer", get(|b: BearerToken| async move { b.0 }))
        .route(
            "/optional",
            get(|c: Option<Claims>| async move { if c.is_some() { "claims" } else { "none" } }),
        );
    let layered = Router::new()
        .route(
            "/claims",
            get(|c: Claims| async move { c.subject().to_owned() }),
        )
        .layer(auth.layer());
    let bare = serve(bare).await;
    let layered = serve(layered).await;
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;

    let from_extractor = get_json(&bare.url("/claims"), None).await;
    let from_layer = get_json(&layered.url("/claims"), None).await;
    assert_eq!(from_extractor.0, StatusCode::UNAUTHORIZED);
    assert_eq!(from_extractor.1["www-authenticate"], REALM_ONLY);
    assert_eq!(
        from_extractor.1["content-type"],
        from_layer.1["content-type"]
    );
    assert_eq!(from_extractor.2, from_layer.2);
    // Without the layer nothing validates, so even a good token yields no Claims.
    let (status, _, _) = get_json(&bare.url("/claims"), Some(&alice)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        get_text(&bare.url("/optional"), Some(&alice)).await,
        (200, "none".into())
    );

    // BearerToken parses the header by itself.
    let (status, headers, body) = get_json(&bare.url("/bearer"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], REALM_ONLY);
    assert_eq!(body["error"], "unauthorized");
    let response = http()
        .get(bare.url("/bearer"))
        .header("authorization", "Basic YWxpY2U6ZGV2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], REALM_ONLY);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error"],
        "unauthorized"
    );
    assert_eq!(
        get_text(&bare.url("/bearer"), Some("abc.def")).await,
        (200, "abc.def".into())
    );
    bare.stop().await;
    layered.stop().await;
}

#[tokio::test]
async fn route_layer_protects_only_the_routes_above_it() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    let router = Router::new()
        .route(
            "/private",
            get(|c: Claims| async move { c.subject().to_owned() }),
        )
        .route_layer(auth.layer())
        .route("/public", get(|| async { "public" }));
    let server = serve(router).await;
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;

    assert_eq!(
        get_text(&server.url("/public"), None).await,
        (200, "public".into())
    );
    let (status, headers, _) = get_json(&server.url("/private"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], REALM_ONLY);
    let (status, _) = get_text(&server.url("/private"), Some(&alice)).await;
    assert_eq!(status, 200);
    // route_layer leaves unmatched paths alone: 404, not a challenge.
    let (status, _) = get_text(&server.url("/elsewhere"), None).await;
    assert_eq!(status, 404);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Exchange from a handler

#[tokio::test]
async fn handler_exchanges_the_callers_token_on_behalf_of_through_the_shared_cache() {
    let idp = start_idp().await;
    let auth = Auth::builder()
        .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
        .client_id(TOLLGATE_CLIENT_ID)
        .client_secret(TOLLGATE_CLIENT_SECRET)
        .build()
        .await
        .unwrap();
    let router = Router::new()
        .route("/obo", get(obo_audience))
        .layer(auth.layer())
        .with_state(auth.clone());
    let server = serve(router).await;
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;

    let first = get_json(&server.url("/obo"), Some(&alice)).await;
    let second = get_json(&server.url("/obo"), Some(&alice)).await;

    assert_eq!(first.0, StatusCode::OK, "{}", first.2);
    assert_eq!(first.2["aud"], DOWNSTREAM_CLIENT_ID);
    assert_eq!(first.2["oid"], ALICE_OID, "acting as the user, not the app");
    assert_eq!(second.2, first.2);
    assert_eq!(
        idp.token_requests("jwt-bearer"),
        1,
        "the second call is served from the exchanger's cache"
    );
    server.stop().await;
}

async fn obo_audience(
    State(auth): State<Auth>,
    bearer: BearerToken,
) -> Result<axum::Json<Value>, (StatusCode, String)> {
    let exchanged = auth
        .exchanger()
        .unwrap()
        .on_behalf_of(&bearer.0, DOWNSTREAM_DEFAULT, false)
        .await
        .map_err(|e| (e.status(), e.to_string()))?;
    let claims = payload(exchanged.access_token());
    Ok(axum::Json(
        json!({"aud": claims["aud"], "oid": claims["oid"]}),
    ))
}

#[tokio::test]
async fn exchanger_is_absent_without_a_client_credential() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    assert!(auth.exchanger().is_none());
}

// ---------------------------------------------------------------------------------------------
// Any tower stack: a plain hyper server, no axum

#[tokio::test]
async fn plain_hyper_service_behind_the_layer() {
    let idp = start_idp().await;
    let auth = auth_for(&idp, TOLLGATE_CLIENT_ID).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let service = tower::ServiceBuilder::new()
        .layer(auth.layer().require_scopes(["access_as_user"]))
        .service(tower::service_fn(move |req: http::Request<Incoming>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                let who = req
                    .extensions()
                    .get::<Claims>()
                    .and_then(|c| c.username().map(str::to_owned))
                    .unwrap_or_default();
                // The layer hands the validated token on for On-Behalf-Of calls.
                let sent = req.headers()["authorization"].to_str().unwrap_or_default();
                let bearer = req.extensions().get::<BearerToken>();
                let kept = bearer.is_some_and(|b| sent == format!("Bearer {}", b.0));
                let body = format!("{who} bearer_kept={kept}");
                Ok::<_, Infallible>(http::Response::new(Full::<Bytes>::from(body)))
            }
        }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, mut stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                accepted = listener.accept() => accepted.unwrap(),
                _ = &mut stopped => return,
            };
            let service = service.clone();
            tokio::spawn(async move {
                let hyper_service =
                    hyper::service::service_fn(move |req| service.clone().oneshot(req));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), hyper_service)
                    .await;
            });
        }
    });
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;

    assert_eq!(
        get_text(&format!("{base}/"), Some(&alice)).await,
        (200, format!("{ALICE_UPN} bearer_kept=true"))
    );
    let (status, headers, body) = get_json(&format!("{base}/"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], REALM_ONLY);
    assert_eq!(body["error"], "unauthorized");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the valid request got through"
    );

    let _ = stop.send(());
    task.await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Building an Auth

#[tokio::test]
async fn builder_refuses_bad_settings_before_any_network_call() {
    let dev = "http://127.0.0.1:9/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration";
    let cases: [(&str, tollgate::layer::AuthBuilder, &str); 5] = [
        (
            "malformed URL",
            Auth::builder()
                .well_known_url("not a url")
                .client_id(TOLLGATE_CLIENT_ID),
            "well_known_url",
        ),
        (
            "plain http to a remote host",
            Auth::builder()
                .well_known_url("http://login.example.com/t/v2.0/.well-known/openid-configuration")
                .client_id(TOLLGATE_CLIENT_ID),
            "must be https",
        ),
        (
            "no client id",
            Auth::builder().well_known_url(dev),
            "client_id",
        ),
        (
            "no discovery and no issuer",
            Auth::builder().client_id(TOLLGATE_CLIENT_ID),
            "well_known_url",
        ),
        (
            "shared-secret algorithm",
            Auth::builder()
                .well_known_url(dev)
                .client_id(TOLLGATE_CLIENT_ID)
                .algorithms(&[jsonwebtoken::Algorithm::HS256]),
            "shared-secret",
        ),
    ];
    for (what, builder, expected) in cases {
        match builder.build().await {
            Err(AuthError::Config(e)) => {
                assert!(e.to_string().contains(expected), "{what}: {e}")
            }
            other => panic!("{what}: expected a configuration error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn unreachable_idp_and_unusable_credential_are_errors() {
    // A port that was just free: connection refused.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let result = Auth::builder()
        .well_known_url(&format!(
            "http://{addr}/{DEFAULT_TENANT_ID}/v2.0/.well-known/openid-configuration"
        ))
        .client_id(TOLLGATE_CLIENT_ID)
        .build()
        .await;
    assert!(matches!(result, Err(AuthError::Provider(_))), "{result:?}");

    let idp = start_idp().await;
    let dir = tempfile::tempdir().unwrap();
    let provider = ProviderConfig {
        client_id: TOLLGATE_CLIENT_ID.into(),
        well_known_url: Some(idp.well_known_url(DEFAULT_TENANT_ID).parse().unwrap()),
        client_secret_file: Some(dir.path().join("missing-secret")),
        ..ProviderConfig::default()
    };
    let result = Auth::from_config(&provider, &CacheConfig::default()).await;
    assert!(
        matches!(result, Err(AuthError::Credential(_))),
        "{result:?}"
    );

    std::fs::write(dir.path().join("secret"), TOLLGATE_CLIENT_SECRET).unwrap();
    let provider = ProviderConfig {
        client_secret_file: Some(dir.path().join("secret")),
        ..provider
    };
    let auth = Auth::from_config(&provider, &CacheConfig::default())
        .await
        .unwrap();
    assert!(auth.exchanger().is_some());
}

// ---------------------------------------------------------------------------------------------
// The example app

#[tokio::test]
async fn example_app_greets_shows_claims_and_calls_the_downstream_api_on_behalf_of_the_user() {
    let idp = start_idp().await;
    let app_auth = Auth::builder()
        .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
        .client_id(TOLLGATE_CLIENT_ID)
        .client_secret(TOLLGATE_CLIENT_SECRET)
        .build()
        .await
        .unwrap();
    let downstream_auth = auth_for(&idp, DOWNSTREAM_CLIENT_ID).await;
    let downstream = serve(example::downstream_api(downstream_auth)).await;
    let app = serve(example::app(
        app_auth,
        example::Downstream {
            url: downstream.url(""),
            scope: DOWNSTREAM_DEFAULT.into(),
        },
    ))
    .await;
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;

    assert_eq!(
        get_text(&app.url("/"), None).await,
        (200, "hello, anonymous\n".into())
    );
    assert_eq!(
        get_text(&app.url("/"), Some(&alice)).await,
        (200, "hello, Alice Example\n".into())
    );

    let (status, headers, _) = get_json(&app.url("/me"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["www-authenticate"], REALM_ONLY);
    let (status, _, me) = get_json(&app.url("/me"), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{me}");
    assert_eq!(me["oid"], ALICE_OID);
    assert_eq!(me["username"], ALICE_UPN);

    let (status, _, body) = get_json(&app.url("/downstream"), Some(&alice)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = &body["downstream"];
    assert_eq!(seen["aud"], DOWNSTREAM_CLIENT_ID);
    assert_eq!(seen["azp"], TOLLGATE_CLIENT_ID, "the app is the OBO client");
    assert_eq!(seen["username"], ALICE_UPN, "on behalf of alice");
    assert!(body["token_expires_in"].as_u64().unwrap() > 0);

    // The downstream API is itself protected: alice's own token is not for it.
    let (status, _, _) = get_json(&downstream.url("/whoami"), Some(&alice)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    app.stop().await;
    downstream.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn start_idp() -> DevIdpHandle {
    DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Validation only (no client credential).
async fn auth_for(idp: &DevIdpHandle, client_id: &str) -> Auth {
    Auth::builder()
        .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
        .client_id(client_id)
        .build()
        .await
        .unwrap()
}

async fn token(idp: &DevIdpHandle, user: &str, scope: &str) -> String {
    idp.password_token(user, FRONTEND_CLIENT_ID, scope)
        .await
        .unwrap()
}

/// A router whose only handler counts its calls.
/// A static IdP serving `key`, and an `Auth` for it: for tokens with headers and claims made by
/// hand, which the dev IdP never issues.
async fn static_idp_auth(key: &support::TestKey) -> (support::StaticIdp, Auth) {
    let idp = support::StaticIdp::start(&[key]).await;
    let auth = Auth::builder()
        .well_known_url(&idp.well_known())
        .client_id(support::CLIENT_ID)
        .build()
        .await
        .unwrap();
    (idp, auth)
}

fn counting_router() -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let router = Router::new().route(
        "/",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { "ok" }
        }),
    );
    (router, calls)
}

/// Changes one character in the middle of the signature, keeping the token well-formed.
fn tamper_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut sig: Vec<char> = signature.chars().collect();
    let i = sig.len() / 2;
    sig[i] = if sig[i] == 'A' { 'B' } else { 'A' };
    format!("{signed}.{}", sig.into_iter().collect::<String>())
}

fn payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

struct Server {
    base: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

async fn serve(router: Router) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Server { base, stop, task }
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

async fn send(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = http().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn get_json(url: &str, token: Option<&str>) -> (StatusCode, HeaderMap, Value) {
    let response = send(url, token).await;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

async fn get_text(url: &str, token: Option<&str>) -> (u16, String) {
    let response = send(url, token).await;
    (response.status().as_u16(), response.text().await.unwrap())
}

// ---------------------------------------------------------------------------------------------
// Code-first setup without discovery, and key refresh independent of the `Auth` value

#[tokio::test]
async fn explicit_issuer_jwks_and_token_endpoint_validate_and_exchange_client_credentials() {
    let idp = start_idp().await;
    let auth = Auth::builder()
        .issuer(
            &idp.issuer(DEFAULT_TENANT_ID),
            &idp.jwks_uri(DEFAULT_TENANT_ID),
        )
        .token_endpoint(&idp.token_endpoint(DEFAULT_TENANT_ID))
        .client_id(TOLLGATE_CLIENT_ID)
        .client_secret(TOLLGATE_CLIENT_SECRET)
        .build()
        .await
        .unwrap();
    let alice = token(&idp, ALICE, TOLLGATE_SCOPE).await;
    let claims = auth.validator().validate(&alice).await.unwrap();
    assert_eq!(claims.oid(), Some(ALICE_OID));
    let exchanger = auth.exchanger().expect("a client secret is configured");
    let first = exchanger
        .client_credentials(DOWNSTREAM_DEFAULT, false)
        .await
        .unwrap();
    let second = exchanger
        .clone()
        .client_credentials(DOWNSTREAM_DEFAULT, false)
        .await
        .unwrap();
    let app = payload(first.access_token());
    assert_eq!(app["aud"], DOWNSTREAM_CLIENT_ID);
    assert_eq!(app["idtyp"], "app", "an app-only token");
    assert_eq!(
        second.access_token(),
        first.access_token(),
        "served from the cache"
    );
    assert_eq!(idp.token_requests("client_credentials"), 1);
}

#[tokio::test]
async fn keys_keep_refreshing_after_the_auth_value_is_dropped() {
    let idp = start_idp().await;
    let provider = ProviderConfig {
        well_known_url: Some(idp.well_known_url(DEFAULT_TENANT_ID).parse().unwrap()),
        client_id: TOLLGATE_CLIENT_ID.into(),
        jwks_refresh: std::time::Duration::from_millis(200),
        ..Default::default()
    };
    let auth = Auth::from_config(&provider, &CacheConfig::default())
        .await
        .unwrap();
    let layer = auth.layer();
    let validator = auth.validator().clone();
    drop(auth);
    // The IdP rotates and drops the old key: only a refresh can learn the new kid.
    let new_kid = idp.rotate_keys(true);
    let mut learned = false;
    for _ in 0..50 {
        if validator.provider().key_set().get(&new_kid).is_some() {
            learned = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(learned, "the background refresh kept running for the layer");
    drop(layer);
}
