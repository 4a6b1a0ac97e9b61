//! The dev IdP driven over real HTTP: discovery, JWKS, the browser login with PKCE, every grant,
//! client authentication, OBO rules, Entra error shapes, MFA challenges, back-channel logout and
//! the dev hooks.
#![cfg(feature = "dev-idp")]

mod support;

use std::collections::HashMap;
use std::time::Duration;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Value, json};
use support::browser::{hidden_inputs, submit_login_form};
use support::{http, jwt_claims as unverified_claims, now};
use tollgate_devidp::*;

const TOLLGATE_SCOPE: &str = "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/access_as_user";
const DOWNSTREAM_SCOPE: &str = "api://eeeeeeee-6666-7777-8888-ffffffffffff/Data.Read";
const DOWNSTREAM_DEFAULT: &str = "api://eeeeeeee-6666-7777-8888-ffffffffffff/.default";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const CALLBACK: &str = "http://127.0.0.1:8123/callback";

// ---------------------------------------------------------------------------------------------
// Discovery and JWKS

#[tokio::test]
async fn discovery_document_has_entra_fields_and_points_at_this_server() {
    let idp = start().await;
    let http = http();
    let response = http
        .get(idp.well_known_url(DEFAULT_TENANT_ID))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    assert_eq!(
        response.headers()["cache-control"],
        "max-age=86400, private"
    );
    let doc: Value = response.json().await.unwrap();
    let base = idp.base_url();
    let t = DEFAULT_TENANT_ID;
    assert_eq!(doc["issuer"], format!("{base}/{t}/v2.0"));
    assert_eq!(doc["issuer"], idp.issuer(t));
    assert_eq!(doc["token_endpoint"], idp.token_endpoint(t));
    assert_eq!(doc["jwks_uri"], idp.jwks_uri(t));
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{base}/{t}/oauth2/v2.0/authorize")
    );
    assert_eq!(
        doc["end_session_endpoint"],
        format!("{base}/{t}/oauth2/v2.0/logout")
    );
    assert_eq!(
        doc["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic"
        ])
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256"])
    );
    assert_eq!(doc["subject_types_supported"], json!(["pairwise"]));
    assert_eq!(
        doc["scopes_supported"],
        json!(["openid", "profile", "email", "offline_access"])
    );
    assert_eq!(
        doc["response_modes_supported"],
        json!(["query", "fragment", "form_post"])
    );
    assert_eq!(doc["request_uri_parameter_supported"], json!(false));
    assert_eq!(doc["http_logout_supported"], json!(true));
    assert!(doc["tenant_region_scope"].is_string());
    // Entra does not publish these; a faithful imitation must not either.
    for absent in [
        "code_challenge_methods_supported",
        "grant_types_supported",
        "revocation_endpoint",
        "introspection_endpoint",
    ] {
        assert!(doc.get(absent).is_none(), "{absent} must be absent");
    }
    // Both tenants are served.
    let second: Value = http
        .get(idp.well_known_url(SECOND_TENANT_ID))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["issuer"], idp.issuer(SECOND_TENANT_ID));
    idp.shutdown().await;
}

#[tokio::test]
async fn discovery_for_common_and_organizations_uses_the_issuer_template() {
    let idp = start().await;
    let http = http();
    for alias in ["common", "organizations"] {
        let doc: Value = http
            .get(idp.well_known_url(alias))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            doc["issuer"],
            format!("{}/{{tenantid}}/v2.0", idp.base_url())
        );
        assert_eq!(
            doc["token_endpoint"],
            format!("{}/{alias}/oauth2/v2.0/token", idp.base_url())
        );
        assert_eq!(
            doc["jwks_uri"],
            format!("{}/{alias}/discovery/v2.0/keys", idp.base_url())
        );
        assert_eq!(doc["tenant_region_scope"], Value::Null);
    }
    // The alias key set is the same key set as the tenant's.
    let common = fetch_jwks(&idp, "common").await;
    assert_eq!(common, fetch_jwks(&idp, DEFAULT_TENANT_ID).await);
    idp.shutdown().await;
}

#[tokio::test]
async fn unknown_tenant_is_refused_with_aadsts90002() {
    let idp = start().await;
    let http = http();
    let tid = "12345678-aaaa-bbbb-cccc-123456789012";
    let response = http.get(idp.well_known_url(tid)).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error_codes"], json!([90002]));
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(tid),
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error_codes"], json!([90002]));
    idp.shutdown().await;
}

#[tokio::test]
async fn jwks_publishes_rsa_signing_keys_without_alg() {
    let idp = start().await;
    let jwks = fetch_jwks(&idp, DEFAULT_TENANT_ID).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert!(key.get("alg").is_none(), "Entra keys carry no alg");
    assert_eq!(key["e"], "AQAB");
    let n = URL_SAFE_NO_PAD.decode(key["n"].as_str().unwrap()).unwrap();
    assert_eq!(n.len(), 256, "2048-bit modulus");
    assert!(!key["kid"].as_str().unwrap().is_empty());
    assert_eq!(
        key["issuer"],
        format!("{}/{{tenantid}}/v2.0", idp.base_url())
    );
    idp.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Authorization code + PKCE

#[tokio::test]
async fn code_flow_with_pkce_issues_tokens_that_verify_against_the_jwks() {
    let idp = start().await;
    let http = http();
    let pkce = Pkce::new();
    let scope = format!("openid profile email offline_access {TOLLGATE_SCOPE}");
    let query = authorize_query(
        FRONTEND_CLIENT_ID,
        CALLBACK,
        &scope,
        Some(&pkce.challenge),
        "st-123",
        Some("n-0S6_WzA2Mj"),
    );
    let response = browser_sign_in(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &query,
        ALICE_UPN,
        DEV_PASSWORD,
        false,
    )
    .await;
    assert_eq!(response.status(), 302);
    let (location, params) = location(&response);
    assert!(location.starts_with(CALLBACK), "{location}");
    assert_eq!(params["state"], "st-123");
    let code = &params["code"];

    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", FRONTEND_CLIENT_ID),
            ("code", code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", &pkce.verifier),
            ("client_info", "1"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["ext_expires_in"], 3600);
    assert_eq!(
        body["scope"],
        format!("{TOLLGATE_SCOPE} openid profile email offline_access")
    );
    assert!(
        body["refresh_token"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    let client_info: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(body["client_info"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        client_info,
        json!({"uid": ALICE_OID, "utid": DEFAULT_TENANT_ID})
    );

    let jwks = fetch_jwks(&idp, DEFAULT_TENANT_ID).await;
    let issuer = idp.issuer(DEFAULT_TENANT_ID);
    let access = verify(
        body["access_token"].as_str().unwrap(),
        &jwks,
        TOLLGATE_CLIENT_ID,
        &issuer,
    );
    assert_eq!(access["scp"], "access_as_user");
    assert_eq!(access["azp"], FRONTEND_CLIENT_ID);
    assert_eq!(access["azpacr"], "0");
    assert_eq!(access["oid"], ALICE_OID);
    assert_eq!(access["tid"], DEFAULT_TENANT_ID);
    assert_eq!(access["upn"], ALICE_UPN);
    assert_eq!(access["preferred_username"], ALICE_UPN);
    assert_eq!(access["name"], "Alice Example");
    assert_eq!(access["roles"], json!(["Reader"]));
    assert_eq!(access["ver"], "2.0");
    assert_eq!(access["amr"], json!(["pwd"]));
    assert_eq!(access["uti"].as_str().unwrap().len(), 22);
    assert_eq!(access["sub"].as_str().unwrap().len(), 43);
    assert_eq!(access["iat"], access["nbf"]);
    assert_eq!(
        access["exp"].as_u64().unwrap() - access["iat"].as_u64().unwrap(),
        3600
    );
    assert!(access.get("nonce").is_none());
    assert!(access.get("idtyp").is_none());
    let header = jsonwebtoken::decode_header(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    assert!(header.x5t.is_none(), "v2 tokens carry kid only");

    let id = verify(
        body["id_token"].as_str().unwrap(),
        &jwks,
        FRONTEND_CLIENT_ID,
        &issuer,
    );
    assert_eq!(id["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(id["oid"], ALICE_OID);
    assert_eq!(id["email"], ALICE_UPN);
    assert_eq!(id["sid"], access["sid"]);
    assert_ne!(id["sub"], access["sub"], "sub is pairwise per app");
    for absent in ["scp", "azp", "azpacr", "amr"] {
        assert!(id.get(absent).is_none(), "ID token must not carry {absent}");
    }
    idp.shutdown().await;
}

#[tokio::test]
async fn confidential_client_may_redeem_a_code_without_pkce_using_basic_auth() {
    let idp = start().await;
    let http = http();
    let query = authorize_query(
        TOLLGATE_CLIENT_ID,
        CALLBACK,
        "openid User.Read",
        None,
        "s",
        None,
    );
    let code = sign_in_for_code(&http, &idp, DEFAULT_TENANT_ID, &query, BOB, false).await;
    let response = http
        .post(idp.token_endpoint(DEFAULT_TENANT_ID))
        .basic_auth(TOLLGATE_CLIENT_ID, Some(TOLLGATE_CLIENT_SECRET))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CALLBACK),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(
        body.get("refresh_token").is_none(),
        "no offline_access, no refresh token"
    );
    assert!(
        body.get("client_info").is_none(),
        "client_info only when asked for"
    );
    assert_eq!(
        body["scope"],
        "https://graph.microsoft.com/User.Read openid"
    );
    let claims = unverified_claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], GRAPH_CLIENT_ID);
    assert_eq!(claims["azpacr"], "1");
    assert!(
        claims.get("roles").is_none(),
        "Bob's Writer role is not a Graph role"
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn wrong_or_missing_code_verifier_is_refused() {
    let idp = start().await;
    let http = http();
    let pkce = Pkce::new();
    let query = authorize_query(
        FRONTEND_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        Some(&pkce.challenge),
        "s",
        None,
    );
    let code = sign_in_for_code(&http, &idp, DEFAULT_TENANT_ID, &query, ALICE, false).await;
    let url = idp.token_endpoint(DEFAULT_TENANT_ID);
    let other = Pkce::new();
    let base = [
        ("grant_type", "authorization_code"),
        ("client_id", FRONTEND_CLIENT_ID),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
    ];
    let (status, body) = post_token(
        &http,
        &url,
        &[&base[..], &[("code_verifier", other.verifier.as_str())]].concat(),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([501481]));
    let (status, body) = post_token(&http, &url, &base).await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (400, json!([501481]))
    );
    // Sending the challenge itself (what `plain` would accept) fails too.
    let (status, _) = post_token(
        &http,
        &url,
        &[&base[..], &[("code_verifier", pkce.challenge.as_str())]].concat(),
    )
    .await;
    assert_eq!(status, 400);
    // The right verifier still works: failed attempts do not burn the code.
    let (status, body) = post_token(
        &http,
        &url,
        &[&base[..], &[("code_verifier", pkce.verifier.as_str())]].concat(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    idp.shutdown().await;
}

#[tokio::test]
async fn a_code_verifier_without_a_challenge_is_refused() {
    let idp = start().await;
    let http = http();
    let query = authorize_query(
        TOLLGATE_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        None,
        "s",
        None,
    );
    let code = sign_in_for_code(&http, &idp, DEFAULT_TENANT_ID, &query, ALICE, false).await;
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", TOLLGATE_CLIENT_ID),
            ("client_secret", TOLLGATE_CLIENT_SECRET),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", &Pkce::new().verifier),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn plain_pkce_method_is_refused_at_authorize() {
    let idp = start().await;
    let http = http();
    let verifier = Pkce::new().verifier;
    for method in [Some("plain"), None] {
        let mut query = authorize_query(
            FRONTEND_CLIENT_ID,
            CALLBACK,
            TOLLGATE_SCOPE,
            None,
            "st",
            None,
        );
        query.push(("code_challenge".into(), verifier.clone()));
        if let Some(method) = method {
            query.push(("code_challenge_method".into(), method.into()));
        }
        let response = http
            .get(authorize_url(&idp, DEFAULT_TENANT_ID, &query))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302, "method {method:?}");
        let (location, params) = location(&response);
        assert!(location.starts_with(CALLBACK));
        assert_eq!(params["error"], "invalid_request");
        assert_eq!(params["state"], "st");
        assert!(!params.contains_key("code"));
    }
    idp.shutdown().await;
}

#[tokio::test]
async fn public_client_without_pkce_is_refused_at_authorize() {
    let idp = start().await;
    let http = http();
    let query = authorize_query(
        FRONTEND_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        None,
        "st",
        None,
    );
    let response = http
        .get(authorize_url(&idp, DEFAULT_TENANT_ID, &query))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    let (_, params) = location(&response);
    assert_eq!(params["error"], "invalid_request");
    assert!(params["error_description"].starts_with("AADSTS9002325: "));
    // The same request from the confidential client shows the login page.
    let query = authorize_query(
        TOLLGATE_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        None,
        "st",
        None,
    );
    let response = http
        .get(authorize_url(&idp, DEFAULT_TENANT_ID, &query))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    idp.shutdown().await;
}

#[tokio::test]
async fn reused_code_is_refused_and_revokes_what_it_issued() {
    let idp = start().await;
    let http = http();
    let pkce = Pkce::new();
    let query = authorize_query(
        FRONTEND_CLIENT_ID,
        CALLBACK,
        &format!("offline_access {TOLLGATE_SCOPE}"),
        Some(&pkce.challenge),
        "s",
        None,
    );
    let code = sign_in_for_code(&http, &idp, DEFAULT_TENANT_ID, &query, ALICE, false).await;
    let url = idp.token_endpoint(DEFAULT_TENANT_ID);
    let form = [
        ("grant_type", "authorization_code"),
        ("client_id", FRONTEND_CLIENT_ID),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    let (status, first) = post_token(&http, &url, &form).await;
    assert_eq!(status, 200);
    let (status, second) = post_token(&http, &url, &form).await;
    assert_eq!(status, 400);
    assert_eq!(second["error"], "invalid_grant");
    assert_eq!(second["error_codes"], json!([54005]));
    let (status, body) = refresh(
        &http,
        &idp,
        FRONTEND_CLIENT_ID,
        None,
        first["refresh_token"].as_str().unwrap(),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn code_redeemed_with_another_redirect_uri_is_refused() {
    let idp = start().await;
    let http = http();
    let pkce = Pkce::new();
    let query = authorize_query(
        FRONTEND_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        Some(&pkce.challenge),
        "s",
        None,
    );
    let code = sign_in_for_code(&http, &idp, DEFAULT_TENANT_ID, &query, ALICE, false).await;
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", FRONTEND_CLIENT_ID),
            ("code", &code),
            ("redirect_uri", "http://127.0.0.1:8123/other"),
            ("code_verifier", &pkce.verifier),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([50011]));
    idp.shutdown().await;
}

#[tokio::test]
async fn code_for_another_client_is_refused() {
    let idp = start().await;
    let http = http();
    let query = authorize_query(
        TOLLGATE_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        None,
        "s",
        None,
    );
    let code = sign_in_for_code(&http, &idp, DEFAULT_TENANT_ID, &query, ALICE, false).await;
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", DOWNSTREAM_CLIENT_ID),
            ("client_secret", DOWNSTREAM_CLIENT_SECRET),
            ("code", &code),
            ("redirect_uri", CALLBACK),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn expired_code_is_refused() {
    let idp = start().await;
    idp.set_code_lifetime(Duration::ZERO);
    let http = http();
    let pkce = Pkce::new();
    let query = authorize_query(
        FRONTEND_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        Some(&pkce.challenge),
        "s",
        None,
    );
    let code = sign_in_for_code(&http, &idp, DEFAULT_TENANT_ID, &query, ALICE, false).await;
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", FRONTEND_CLIENT_ID),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", &pkce.verifier),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([70008]));
    idp.shutdown().await;
}

#[tokio::test]
async fn authorize_errors_that_cannot_be_redirected_render_a_page() {
    let idp = start().await;
    let http = http();
    let challenge = Pkce::new().challenge;
    let cases = [
        (
            authorize_query(
                "12345678-0000-0000-0000-000000000000",
                CALLBACK,
                TOLLGATE_SCOPE,
                Some(&challenge),
                "s",
                None,
            ),
            "AADSTS700016",
        ),
        (
            authorize_query(
                FRONTEND_CLIENT_ID,
                "https://evil.example/cb",
                TOLLGATE_SCOPE,
                Some(&challenge),
                "s",
                None,
            ),
            "AADSTS50011",
        ),
        (
            authorize_query(
                DOWNSTREAM_CLIENT_ID,
                CALLBACK,
                TOLLGATE_SCOPE,
                Some(&challenge),
                "s",
                None,
            ),
            "AADSTS50011",
        ),
    ];
    for (query, code) in cases {
        let response = http
            .get(authorize_url(&idp, DEFAULT_TENANT_ID, &query))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        assert!(response.headers().get("location").is_none());
        let html = response.text().await.unwrap();
        assert!(html.contains(code), "{code} in {html}");
        assert!(
            !html.contains("evil.example/cb\""),
            "the bad URI is never a link or form target"
        );
    }
    idp.shutdown().await;
}

#[tokio::test]
async fn redirectable_authorize_errors_carry_entra_parameters() {
    let idp = start().await;
    let http = http();
    let challenge = Pkce::new().challenge;
    let cases = [
        (
            "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/not_a_scope",
            "code",
            "invalid_scope",
            "AADSTS70011: ",
        ),
        (
            "api://unknown-api/read",
            "code",
            "invalid_resource",
            "AADSTS500011: ",
        ),
        (
            TOLLGATE_SCOPE,
            "token",
            "unsupported_response_type",
            "AADSTS700051: ",
        ),
    ];
    for (scope, response_type, error, prefix) in cases {
        let mut query = authorize_query(
            FRONTEND_CLIENT_ID,
            CALLBACK,
            scope,
            Some(&challenge),
            "the-state",
            None,
        );
        query.retain(|(k, _)| k != "response_type");
        query.push(("response_type".into(), response_type.into()));
        let response = http
            .get(authorize_url(&idp, DEFAULT_TENANT_ID, &query))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302);
        let (_, params) = location(&response);
        assert_eq!(params["error"], error);
        assert!(
            params["error_description"].starts_with(prefix),
            "{}",
            params["error_description"]
        );
        assert!(params["error_description"].contains("\r\nTrace ID: "));
        assert!(params["error_uri"].starts_with("https://login.microsoftonline.com/error?code="));
        assert_eq!(params["state"], "the-state");
    }
    // Parameters the dev IdP cannot honour, still reported to the client.
    let odd = [
        ("response_mode", "web_message"),
        ("code_challenge", "too-short"),
        ("code_challenge_method", "S512"),
    ];
    for (name, value) in odd {
        let mut query = authorize_query(
            FRONTEND_CLIENT_ID,
            CALLBACK,
            TOLLGATE_SCOPE,
            Some(&challenge),
            "st",
            None,
        );
        query.retain(|(k, _)| k != name);
        query.push((name.into(), value.into()));
        let response = http
            .get(authorize_url(&idp, DEFAULT_TENANT_ID, &query))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 302, "{name}");
        let (_, params) = location(&response);
        assert_eq!(params["error"], "invalid_request", "{name}");
        assert!(!params.contains_key("code"));
    }
    idp.shutdown().await;
}

#[tokio::test]
async fn wrong_password_and_wrong_tenant_show_the_login_page_again() {
    let idp = start().await;
    let http = http();
    let challenge = Pkce::new().challenge;
    let query = authorize_query(
        FRONTEND_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        Some(&challenge),
        "s",
        None,
    );
    let page = http
        .get(authorize_url(&idp, DEFAULT_TENANT_ID, &query))
        .send()
        .await
        .unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains(ALICE_UPN) && page.contains(BOB_UPN));
    assert!(
        !page.contains(CAROL_UPN),
        "the login page offers the tenant's users only"
    );
    let response = browser_sign_in(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &query,
        ALICE,
        "wrong",
        false,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("AADSTS50126"));
    let response = browser_sign_in(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &query,
        "nobody",
        DEV_PASSWORD,
        false,
    )
    .await;
    assert!(response.text().await.unwrap().contains("AADSTS50126"));
    // Carol lives in the second tenant: not at the default tenant, but via organizations.
    let response = browser_sign_in(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &query,
        CAROL,
        DEV_PASSWORD,
        false,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("AADSTS50020"));
    let response = browser_sign_in(
        &http,
        &idp,
        "organizations",
        &query,
        CAROL,
        DEV_PASSWORD,
        false,
    )
    .await;
    assert_eq!(response.status(), 302);
    idp.shutdown().await;
}

#[tokio::test]
async fn fragment_and_form_post_response_modes_deliver_the_code() {
    let idp = start().await;
    let http = http();
    let challenge = Pkce::new().challenge;
    let mut query = authorize_query(
        FRONTEND_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        Some(&challenge),
        "s&t",
        None,
    );
    query.push(("response_mode".into(), "fragment".into()));
    let response = browser_sign_in(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &query,
        ALICE,
        DEV_PASSWORD,
        false,
    )
    .await;
    assert_eq!(response.status(), 302);
    let loc = response.headers()["location"].to_str().unwrap().to_owned();
    let url = url::Url::parse(&loc).unwrap();
    assert!(url.query().is_none());
    let fragment: HashMap<String, String> =
        url::form_urlencoded::parse(url.fragment().unwrap().as_bytes())
            .into_owned()
            .collect();
    assert_eq!(fragment["state"], "s&t");
    assert!(!fragment["code"].is_empty());

    query.retain(|(k, _)| k != "response_mode");
    query.push(("response_mode".into(), "form_post".into()));
    let response = browser_sign_in(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &query,
        ALICE,
        DEV_PASSWORD,
        false,
    )
    .await;
    assert_eq!(response.status(), 200);
    let html = response.text().await.unwrap();
    assert!(html.contains(&format!("action=\"{CALLBACK}\"")), "{html}");
    let fields: HashMap<String, String> = hidden_inputs(&html).into_iter().collect();
    assert_eq!(fields["state"], "s&t");
    assert!(!fields["code"].is_empty());
    idp.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Refresh tokens

#[tokio::test]
async fn refresh_tokens_rotate_and_a_used_one_is_refused() {
    let idp = start().await;
    let http = http();
    let first = ropc(
        &http,
        &idp,
        ALICE,
        TOLLGATE_CLIENT_ID,
        &format!("openid offline_access {TOLLGATE_SCOPE}"),
    )
    .await;
    let rt1 = first["refresh_token"].as_str().unwrap();
    let (status, second) = refresh(
        &http,
        &idp,
        TOLLGATE_CLIENT_ID,
        Some(TOLLGATE_CLIENT_SECRET),
        rt1,
        None,
    )
    .await;
    assert_eq!(status, 200, "{second}");
    let rt2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(rt1, rt2);
    assert!(
        second["id_token"].is_string(),
        "openid was in the original scope"
    );
    assert_eq!(
        unverified_claims(second["access_token"].as_str().unwrap())["aud"],
        TOLLGATE_CLIENT_ID
    );

    let (status, reused) = refresh(
        &http,
        &idp,
        TOLLGATE_CLIENT_ID,
        Some(TOLLGATE_CLIENT_SECRET),
        rt1,
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(reused["error"], "invalid_grant");
    // Reuse of a rotated token revokes the family: the newest token is dead too.
    let (status, body) = refresh(
        &http,
        &idp,
        TOLLGATE_CLIENT_ID,
        Some(TOLLGATE_CLIENT_SECRET),
        rt2,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn refresh_token_is_bound_to_its_client_and_redeemable_for_another_resource() {
    let idp = start().await;
    let http = http();
    let first = ropc(
        &http,
        &idp,
        BOB,
        TOLLGATE_CLIENT_ID,
        &format!("offline_access {TOLLGATE_SCOPE}"),
    )
    .await;
    let rt = first["refresh_token"].as_str().unwrap();
    let (status, body) = refresh(
        &http,
        &idp,
        DOWNSTREAM_CLIENT_ID,
        Some(DOWNSTREAM_CLIENT_SECRET),
        rt,
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, body) = refresh(&http, &idp, TOLLGATE_CLIENT_ID, Some("wrong"), rt, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = refresh(
        &http,
        &idp,
        TOLLGATE_CLIENT_ID,
        Some(TOLLGATE_CLIENT_SECRET),
        rt,
        Some(DOWNSTREAM_SCOPE),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], format!("{DOWNSTREAM_SCOPE} offline_access"));
    let claims = unverified_claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["aud"], DOWNSTREAM_CLIENT_ID);
    assert_eq!(claims["scp"], "Data.Read");
    assert!(body.get("id_token").is_none());
    idp.shutdown().await;
}

#[tokio::test]
async fn expired_refresh_token_is_refused() {
    let idp = start().await;
    idp.set_refresh_token_lifetime(Duration::ZERO);
    let http = http();
    let first = ropc(
        &http,
        &idp,
        ALICE,
        TOLLGATE_CLIENT_ID,
        &format!("offline_access {TOLLGATE_SCOPE}"),
    )
    .await;
    let (status, body) = refresh(
        &http,
        &idp,
        TOLLGATE_CLIENT_ID,
        Some(TOLLGATE_CLIENT_SECRET),
        first["refresh_token"].as_str().unwrap(),
        None,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    idp.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Client credentials and client authentication

#[tokio::test]
async fn client_credentials_with_secret_basic_and_post() {
    let idp = start().await;
    let http = http();
    let url = idp.token_endpoint(DEFAULT_TENANT_ID);
    let basic = http
        .post(&url)
        .basic_auth(TOLLGATE_CLIENT_ID, Some(TOLLGATE_CLIENT_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", DOWNSTREAM_DEFAULT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 200);
    assert_eq!(
        basic.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert!(
        basic.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    let basic: Value = basic.json().await.unwrap();
    let (status, post) = post_token(
        &http,
        &url,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", TOLLGATE_CLIENT_ID),
            ("client_secret", TOLLGATE_CLIENT_SECRET),
            ("scope", &format!("{DOWNSTREAM_CLIENT_ID}/.default")),
        ],
    )
    .await;
    assert_eq!(status, 200, "{post}");
    let jwks = fetch_jwks(&idp, DEFAULT_TENANT_ID).await;
    for body in [&basic, &post] {
        let members: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(
            members.len(),
            4,
            "token_type, expires_in, ext_expires_in, access_token only: {members:?}"
        );
        let claims = verify(
            body["access_token"].as_str().unwrap(),
            &jwks,
            DOWNSTREAM_CLIENT_ID,
            &idp.issuer(DEFAULT_TENANT_ID),
        );
        assert_eq!(claims["roles"], json!(["Data.Read.All"]));
        assert_eq!(claims["idtyp"], "app");
        assert_eq!(claims["azp"], TOLLGATE_CLIENT_ID);
        assert_eq!(claims["azpacr"], "1");
        assert_eq!(claims["sub"], claims["oid"]);
        assert!(claims.get("scp").is_none());
        assert!(claims.get("upn").is_none());
    }
    // The service principal's object id is stable per calling client.
    assert_eq!(
        unverified_claims(basic["access_token"].as_str().unwrap())["oid"],
        unverified_claims(post["access_token"].as_str().unwrap())["oid"]
    );
    // Apps are usable from every tenant; the token names the tenant of the request.
    let (status, other) = post_token(
        &http,
        &idp.token_endpoint(SECOND_TENANT_ID),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", TOLLGATE_CLIENT_ID),
            ("client_secret", TOLLGATE_CLIENT_SECRET),
            ("scope", DOWNSTREAM_DEFAULT),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let claims = unverified_claims(other["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], SECOND_TENANT_ID);
    assert_eq!(claims["iss"], idp.issuer(SECOND_TENANT_ID));
    idp.shutdown().await;
}

#[tokio::test]
async fn wrong_client_secret_is_401_invalid_client_with_the_entra_body() {
    let idp = start().await;
    let http = http();
    let correlation = "5a6b7c8d-0000-1111-2222-333344445555";
    let response = http
        .post(idp.token_endpoint(DEFAULT_TENANT_ID))
        .header("client-request-id", correlation)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", TOLLGATE_CLIENT_ID),
            ("client_secret", "not-the-secret"),
            ("scope", DOWNSTREAM_DEFAULT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let raw = response.text().await.unwrap();
    assert_member_order(
        &raw,
        &[
            "error",
            "error_description",
            "error_codes",
            "timestamp",
            "trace_id",
            "correlation_id",
            "error_uri",
        ],
    );
    let body: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(body.as_object().unwrap().len(), 7);
    assert_eq!(body["error"], "invalid_client");
    assert_eq!(body["error_codes"], json!([7000215]));
    assert_eq!(body["correlation_id"], correlation);
    assert_eq!(
        body["error_uri"],
        "https://login.microsoftonline.com/error?code=7000215"
    );
    assert_entra_description(&body, 7000215);
    assert!(
        !raw.contains("not-the-secret"),
        "secrets never appear in error bodies"
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn client_credentials_needs_a_default_scope_a_tenant_and_a_credential() {
    let idp = start().await;
    let http = http();
    let creds = [
        ("grant_type", "client_credentials"),
        ("client_id", TOLLGATE_CLIENT_ID),
        ("client_secret", TOLLGATE_CLIENT_SECRET),
    ];
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[&creds[..], &[("scope", DOWNSTREAM_SCOPE)]].concat(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[&creds[..], &[("scope", "api://nope/.default")]].concat(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_resource"))
    );
    for alias in ["common", "organizations"] {
        let (status, body) = post_token(
            &http,
            &idp.token_endpoint(alias),
            &[&creds[..], &[("scope", DOWNSTREAM_DEFAULT)]].concat(),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["error_codes"], json!([50059]));
    }
    // A public client has no credential to prove itself with.
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", FRONTEND_CLIENT_ID),
            ("scope", DOWNSTREAM_DEFAULT),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    // A public client must not present one either.
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", FRONTEND_CLIENT_ID),
            ("client_secret", "anything"),
            ("scope", DOWNSTREAM_DEFAULT),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (401, json!([700025]))
    );
    // A confidential client without a credential.
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", TOLLGATE_CLIENT_ID),
            ("scope", DOWNSTREAM_DEFAULT),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (401, json!([7000218]))
    );
    // Two credentials at once.
    let response = http
        .post(idp.token_endpoint(DEFAULT_TENANT_ID))
        .basic_auth(TOLLGATE_CLIENT_ID, Some(TOLLGATE_CLIENT_SECRET))
        .form(&[&creds[..], &[("scope", DOWNSTREAM_DEFAULT)]].concat())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Basic and body naming different clients.
    let response = http
        .post(idp.token_endpoint(DEFAULT_TENANT_ID))
        .basic_auth(TOLLGATE_CLIENT_ID, Some(TOLLGATE_CLIENT_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", DOWNSTREAM_CLIENT_ID),
            ("scope", DOWNSTREAM_DEFAULT),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    // Unknown client.
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "12345678-0000-0000-0000-000000000000"),
            ("client_secret", "x"),
            ("scope", DOWNSTREAM_DEFAULT),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    // Unknown grant type.
    let (status, body) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[("grant_type", "urn:example:unknown")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn basic_auth_credentials_are_form_decoded() {
    let secret = "p@ss: w+rd/%&=ünï";
    let client_id = "12345678-1234-1234-1234-123456789abc";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dev-idp.toml");
    std::fs::write(
        &path,
        format!("listen = \"127.0.0.1:0\"\n[[apps]]\nclient_id = \"{client_id}\"\nname = \"odd\"\nsecret = {}\n", json!(secret)),
    )
    .unwrap();
    let idp = DevIdp::start(DevIdpConfig::from_toml_file(&path).unwrap())
        .await
        .unwrap();
    let http = http();
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let form_encoded = STANDARD.encode(format!("{}:{}", encode(client_id), encode(secret)));
    let send = |credentials: String| {
        http.post(idp.token_endpoint(DEFAULT_TENANT_ID))
            .header("authorization", format!("Basic {credentials}"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", DOWNSTREAM_DEFAULT),
            ])
            .send()
    };
    assert_eq!(send(form_encoded).await.unwrap().status(), 200);
    // Without the form-encoding step, `+` and `%` mean something else: refused.
    let raw = STANDARD.encode(format!("{client_id}:{secret}"));
    assert_ne!(send(raw).await.unwrap().status(), 200);
    idp.shutdown().await;
}

#[tokio::test]
async fn private_key_jwt_is_accepted_by_kid_with_rs256_and_by_x5t_s256_with_ps256() {
    let idp = start().await;
    let http = http();
    let rs = TestKey::new(Some("kid-rs"));
    let ps = TestKey::new(None);
    let mut ps_jwk = ps.jwk.clone();
    ps_jwk["x5t#S256"] = json!(ps.thumbprint);
    // One key through the library API, one through the HTTP hook.
    idp.register_client_key(TOLLGATE_CLIENT_ID, rs.jwk.clone())
        .unwrap();
    let response = http
        .post(format!(
            "{}/_dev/apps/{TOLLGATE_CLIENT_ID}/keys",
            idp.base_url()
        ))
        .json(&ps_jwk)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);

    let token_url = idp.token_endpoint(DEFAULT_TENANT_ID);
    let issuer = idp.issuer(DEFAULT_TENANT_ID);
    let rs_assertion =
        rs.client_assertion(Algorithm::RS256, TOLLGATE_CLIENT_ID, json!(token_url), 300);
    let mut header = Header::new(Algorithm::PS256);
    header.x5t_s256 = Some(ps.thumbprint.clone());
    let ps_assertion = ps.sign(
        &header,
        &assertion_claims(TOLLGATE_CLIENT_ID, json!(issuer), 300),
    );
    for assertion in [rs_assertion, ps_assertion] {
        let (status, body) = post_token(
            &http,
            &token_url,
            &assertion_form(TOLLGATE_CLIENT_ID, &assertion, DOWNSTREAM_DEFAULT),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            unverified_claims(body["access_token"].as_str().unwrap())["azpacr"],
            "2"
        );
    }
    idp.shutdown().await;
}

#[tokio::test]
async fn private_key_jwt_refusals() {
    let idp = start().await;
    let http = http();
    let registered = TestKey::new(Some("registered"));
    idp.register_client_key(TOLLGATE_CLIENT_ID, registered.jwk.clone())
        .unwrap();
    let token_url = idp.token_endpoint(DEFAULT_TENANT_ID);
    // A different key claiming the registered kid.
    let impostor = TestKey::new(Some("registered"));
    let cases = [
        (
            "wrong key",
            impostor.client_assertion(Algorithm::RS256, TOLLGATE_CLIENT_ID, json!(token_url), 300),
            401,
            700027,
        ),
        (
            "unknown kid",
            TestKey::new(Some("other")).client_assertion(
                Algorithm::RS256,
                TOLLGATE_CLIENT_ID,
                json!(token_url),
                300,
            ),
            401,
            700027,
        ),
        (
            "array aud",
            registered.client_assertion(
                Algorithm::RS256,
                TOLLGATE_CLIENT_ID,
                json!([token_url]),
                300,
            ),
            400,
            50027,
        ),
        (
            "other aud",
            registered.client_assertion(
                Algorithm::RS256,
                TOLLGATE_CLIENT_ID,
                json!("https://elsewhere.example/token"),
                300,
            ),
            401,
            700023,
        ),
        (
            "expired",
            registered.client_assertion(
                Algorithm::RS256,
                TOLLGATE_CLIENT_ID,
                json!(token_url),
                -10,
            ),
            401,
            700024,
        ),
        ("not a jwt", "not-a-jwt".to_owned(), 400, 50027),
    ];
    for (name, assertion, status, code) in cases {
        let (got, body) = post_token(
            &http,
            &token_url,
            &assertion_form(TOLLGATE_CLIENT_ID, &assertion, DOWNSTREAM_DEFAULT),
        )
        .await;
        assert_eq!(
            (got, body["error_codes"].clone()),
            (status, json!([code])),
            "{name}: {body}"
        );
    }
    // Claims a well-formed assertion must have, and a validity window that has begun.
    let mut no_jti = assertion_claims(TOLLGATE_CLIENT_ID, json!(token_url), 300);
    no_jti.as_object_mut().unwrap().remove("jti");
    let mut not_yet = assertion_claims(TOLLGATE_CLIENT_ID, json!(token_url), 900);
    not_yet["nbf"] = json!(now() + 600);
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &assertion_claims(TOLLGATE_CLIENT_ID, json!(token_url), 300),
        &EncodingKey::from_secret(TOLLGATE_CLIENT_SECRET.as_bytes()),
    )
    .unwrap();
    let header = registered.header(Algorithm::RS256);
    let more = [
        ("no jti", registered.sign(&header, &no_jti), 400, 50027),
        (
            "nbf in the future",
            registered.sign(&header, &not_yet),
            401,
            700024,
        ),
        ("HS256 with the secret", hs256, 400, 5002730),
    ];
    for (name, assertion, status, code) in more {
        let (got, body) = post_token(
            &http,
            &token_url,
            &assertion_form(TOLLGATE_CLIENT_ID, &assertion, DOWNSTREAM_DEFAULT),
        )
        .await;
        assert_eq!(
            (got, body["error_codes"].clone()),
            (status, json!([code])),
            "{name}: {body}"
        );
    }
    // The assertion type must be the RFC 7523 one.
    let good =
        registered.client_assertion(Algorithm::RS256, TOLLGATE_CLIENT_ID, json!(token_url), 300);
    let mut form = assertion_form(TOLLGATE_CLIENT_ID, &good, DOWNSTREAM_DEFAULT);
    form[2].1 = "urn:example:other";
    let (status, body) = post_token(&http, &token_url, &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    // sub must equal iss.
    let mut claims = assertion_claims(TOLLGATE_CLIENT_ID, json!(token_url), 300);
    claims["sub"] = json!(DOWNSTREAM_CLIENT_ID);
    let assertion = registered.sign(&registered.header(Algorithm::RS256), &claims);
    let (status, body) = post_token(
        &http,
        &token_url,
        &assertion_form(TOLLGATE_CLIENT_ID, &assertion, DOWNSTREAM_DEFAULT),
    )
    .await;
    assert_eq!((status, body["error_codes"].clone()), (400, json!([50048])));
    // The key is registered for tollgate only.
    let assertion = registered.client_assertion(
        Algorithm::RS256,
        DOWNSTREAM_CLIENT_ID,
        json!(token_url),
        300,
    );
    let (status, _) = post_token(
        &http,
        &token_url,
        &assertion_form(DOWNSTREAM_CLIENT_ID, &assertion, DOWNSTREAM_DEFAULT),
    )
    .await;
    assert_ne!(status, 200);
    // Registering a private key or a non-RSA key is refused.
    let mut private = registered.jwk.clone();
    private["d"] = json!("AQAB");
    assert!(
        idp.register_client_key(TOLLGATE_CLIENT_ID, private)
            .is_err()
    );
    assert!(matches!(
        idp.register_client_key(
            "12345678-0000-0000-0000-000000000000",
            registered.jwk.clone()
        ),
        Err(DevIdpError::UnknownApp(_))
    ));
    let response = http
        .post(format!(
            "{}/_dev/apps/{TOLLGATE_CLIENT_ID}/keys",
            idp.base_url()
        ))
        .json(&json!({"kty": "oct", "k": "AA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    idp.shutdown().await;
}

#[tokio::test]
async fn federated_credential_assertions_authenticate_the_app() {
    let idp = start().await;
    let http = http();
    let external = TestKey::new(Some("k8s-key"));
    let issuer = "https://oidc.k8s.example/cluster-1";
    let subject = "system:serviceaccount:team:app";
    let response = http
        .post(format!(
            "{}/_dev/apps/{DOWNSTREAM_CLIENT_ID}/federated",
            idp.base_url()
        ))
        .json(&json!({"issuer": issuer, "subject": subject, "jwks": {"keys": [external.jwk]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let other_key = TestKey::new(None);
    idp.register_federated_credential(
        DOWNSTREAM_CLIENT_ID,
        "https://other.example",
        "sa",
        json!({"keys": [other_key.jwk]}),
    )
    .unwrap();

    let federated = |key: &TestKey, iss: &str, sub: &str, aud: Value, lifetime: i64| {
        // i64: `lifetime` is negative for an expired assertion.
        let now = now() as i64;
        key.sign(
            &key.header(Algorithm::RS256),
            &json!({"iss": iss, "sub": sub, "aud": aud, "iat": now, "exp": now + lifetime}),
        )
    };
    let url = idp.token_endpoint(DEFAULT_TENANT_ID);
    let good = federated(&external, issuer, subject, json!([FEDERATED_AUDIENCE]), 600);
    let (status, body) = post_token(
        &http,
        &url,
        &assertion_form(
            DOWNSTREAM_CLIENT_ID,
            &good,
            &format!("{TOLLGATE_APP_ID_URI}/.default"),
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let claims = unverified_claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        (
            claims["aud"].as_str(),
            claims["azp"].as_str(),
            claims["azpacr"].as_str()
        ),
        (
            Some(TOLLGATE_CLIENT_ID),
            Some(DOWNSTREAM_CLIENT_ID),
            Some("2")
        )
    );
    assert_eq!(claims["roles"], json!(["Reader", "Writer"]));

    let cases = [
        (
            "unknown issuer",
            federated(
                &external,
                "https://nope.example",
                subject,
                json!(FEDERATED_AUDIENCE),
                600,
            ),
            700211,
        ),
        (
            "wrong subject",
            federated(
                &external,
                issuer,
                "system:serviceaccount:team:other",
                json!(FEDERATED_AUDIENCE),
                600,
            ),
            700213,
        ),
        (
            "wrong key",
            federated(
                &TestKey::new(Some("k8s-key")),
                issuer,
                subject,
                json!(FEDERATED_AUDIENCE),
                600,
            ),
            700027,
        ),
        (
            "wrong audience",
            federated(&external, issuer, subject, json!("api://other"), 600),
            700212,
        ),
        (
            "wrong audiences",
            federated(&external, issuer, subject, json!(["api://other", "x"]), 600),
            700212,
        ),
        (
            "expired",
            federated(&external, issuer, subject, json!(FEDERATED_AUDIENCE), -5),
            700024,
        ),
        (
            "other issuer's key",
            federated(&other_key, issuer, subject, json!(FEDERATED_AUDIENCE), 600),
            700027,
        ),
    ];
    for (name, assertion, code) in cases {
        let (status, body) = post_token(
            &http,
            &url,
            &assertion_form(DOWNSTREAM_CLIENT_ID, &assertion, DOWNSTREAM_DEFAULT),
        )
        .await;
        assert_ne!(status, 200, "{name}");
        assert_eq!(body["error_codes"], json!([code]), "{name}: {body}");
    }
    idp.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// On-Behalf-Of

#[tokio::test]
async fn obo_exchanges_a_user_token_for_the_downstream_api() {
    let idp = start().await;
    let http = http();
    let user_token = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, TOLLGATE_SCOPE)
        .await
        .unwrap();
    let (status, body) = obo(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &user_token,
        DOWNSTREAM_SCOPE,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut members: Vec<&String> = body.as_object().unwrap().keys().collect();
    members.sort();
    assert_eq!(
        members,
        [
            "access_token",
            "expires_in",
            "ext_expires_in",
            "scope",
            "token_type"
        ]
    );
    assert_eq!(body["scope"], DOWNSTREAM_SCOPE);
    let jwks = fetch_jwks(&idp, DEFAULT_TENANT_ID).await;
    let claims = verify(
        body["access_token"].as_str().unwrap(),
        &jwks,
        DOWNSTREAM_CLIENT_ID,
        &idp.issuer(DEFAULT_TENANT_ID),
    );
    let original = unverified_claims(&user_token);
    assert_eq!(claims["scp"], "Data.Read");
    assert_eq!(claims["azp"], TOLLGATE_CLIENT_ID);
    assert_eq!(claims["azpacr"], "1");
    for same in ["oid", "tid", "upn", "preferred_username", "name"] {
        assert_eq!(claims[same], original[same], "{same}");
    }
    assert!(
        claims.get("roles").is_none(),
        "Alice has no role on the downstream API"
    );

    // `.default` gives all the downstream scopes; offline_access adds a refresh token.
    let (status, body) = obo(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &user_token,
        &format!("{DOWNSTREAM_DEFAULT} offline_access"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        unverified_claims(body["access_token"].as_str().unwrap())["scp"],
        "Data.Read Data.Write"
    );
    assert!(body["refresh_token"].is_string());
    // Graph by App ID URI: the token's audience is Graph's client id.
    let (status, body) = obo(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &user_token,
        "https://graph.microsoft.com/User.Read",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        unverified_claims(body["access_token"].as_str().unwrap())["aud"],
        GRAPH_CLIENT_ID
    );
    // Scopes of two resources in one request.
    let (status, body) = obo(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &user_token,
        &format!("{DOWNSTREAM_SCOPE} User.Read"),
    )
    .await;
    assert_eq!((status, body["error_codes"].clone()), (400, json!([70011])));
    assert_eq!(idp.token_requests("jwt-bearer"), 4);
    idp.shutdown().await;
}

#[tokio::test]
async fn obo_uses_the_assertion_tenant_under_common_and_serves_any_middle_tier() {
    let idp = start().await;
    let http = http();
    // Carol's token from the second tenant, exchanged through /common.
    let carol = idp
        .password_token(CAROL, FRONTEND_CLIENT_ID, TOLLGATE_SCOPE)
        .await
        .unwrap();
    let (status, body) = obo(&http, &idp, "common", &carol, DOWNSTREAM_SCOPE).await;
    assert_eq!(status, 200, "{body}");
    let claims = unverified_claims(body["access_token"].as_str().unwrap());
    assert_eq!(claims["tid"], SECOND_TENANT_ID);
    assert_eq!(claims["iss"], idp.issuer(SECOND_TENANT_ID));
    // Sent to another tenant's endpoint: refused.
    let (status, body) = obo(&http, &idp, DEFAULT_TENANT_ID, &carol, DOWNSTREAM_SCOPE).await;
    assert_eq!((status, body["error_codes"].clone()), (400, json!([50013])));

    // Any confidential app can be a middle tier: the downstream API exchanges its own token.
    let alice_for_downstream = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, DOWNSTREAM_SCOPE)
        .await
        .unwrap();
    assert_eq!(
        unverified_claims(&alice_for_downstream)["aud"],
        DOWNSTREAM_CLIENT_ID
    );
    let (status, _) = obo_as(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        DOWNSTREAM_CLIENT_ID,
        DOWNSTREAM_CLIENT_SECRET,
        &alice_for_downstream,
        "User.Read",
    )
    .await;
    assert_eq!(status, 200);
    idp.shutdown().await;
}

#[tokio::test]
async fn obo_refuses_an_expired_assertion() {
    let idp = start().await;
    idp.set_access_token_lifetime(Duration::ZERO);
    let http = http();
    let user_token = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, TOLLGATE_SCOPE)
        .await
        .unwrap();
    idp.set_access_token_lifetime(Duration::from_secs(3600));
    let (status, body) = obo(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &user_token,
        DOWNSTREAM_SCOPE,
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([500133]));
    idp.shutdown().await;
}

#[tokio::test]
async fn obo_refuses_an_assertion_for_another_audience() {
    let idp = start().await;
    let http = http();
    let for_downstream = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, DOWNSTREAM_SCOPE)
        .await
        .unwrap();
    let (status, body) = obo(&http, &idp, DEFAULT_TENANT_ID, &for_downstream, "User.Read").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([500131]));
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains(DOWNSTREAM_CLIENT_ID)
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn obo_refuses_app_only_and_id_token_assertions() {
    let idp = start().await;
    let http = http();
    // An app-only token whose audience is the middle tier.
    let (status, app_only) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", DOWNSTREAM_CLIENT_ID),
            ("client_secret", DOWNSTREAM_CLIENT_SECRET),
            ("scope", &format!("{TOLLGATE_APP_ID_URI}/.default")),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let app_only = app_only["access_token"].as_str().unwrap();
    assert_eq!(unverified_claims(app_only)["aud"], TOLLGATE_CLIENT_ID);
    let (status, body) = obo(&http, &idp, DEFAULT_TENANT_ID, app_only, DOWNSTREAM_SCOPE).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([50013]));

    // An ID token issued to the middle tier (aud = its client id, but no scp).
    let id_token = ropc(&http, &idp, ALICE, TOLLGATE_CLIENT_ID, "openid profile").await["id_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(unverified_claims(&id_token)["aud"], TOLLGATE_CLIENT_ID);
    let (status, body) = obo(&http, &idp, DEFAULT_TENANT_ID, &id_token, DOWNSTREAM_SCOPE).await;
    assert_eq!((status, body["error_codes"].clone()), (400, json!([50013])));

    // A tampered assertion (claims changed, signature kept).
    let user_token = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, TOLLGATE_SCOPE)
        .await
        .unwrap();
    let mut parts: Vec<String> = user_token.split('.').map(str::to_owned).collect();
    let mut claims = unverified_claims(&user_token);
    claims["oid"] = json!(BOB_OID);
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    let (status, body) = obo(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        &parts.join("."),
        DOWNSTREAM_SCOPE,
    )
    .await;
    assert_eq!((status, body["error_codes"].clone()), (400, json!([50013])));

    // The jwt-bearer grant is only OBO here.
    let mut form = obo_form(
        TOLLGATE_CLIENT_ID,
        TOLLGATE_CLIENT_SECRET,
        &user_token,
        DOWNSTREAM_SCOPE,
    );
    form[5].1 = "something_else";
    let (status, body) = post_token(&http, &idp.token_endpoint(DEFAULT_TENANT_ID), &form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    form.remove(5);
    let (status, body) = post_token(&http, &idp.token_endpoint(DEFAULT_TENANT_ID), &form).await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (400, json!([900144]))
    );

    // A public client cannot do OBO.
    let response = http
        .post(idp.token_endpoint(DEFAULT_TENANT_ID))
        .form(&[
            ("grant_type", JWT_BEARER),
            ("client_id", FRONTEND_CLIENT_ID),
            ("assertion", &user_token),
            ("scope", DOWNSTREAM_SCOPE),
            ("requested_token_use", "on_behalf_of"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    idp.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// MFA challenges

#[tokio::test]
async fn mfa_challenge_on_obo_has_the_entra_shape_and_mfa_sign_in_satisfies_it() {
    let idp = start().await;
    let http = http();
    let without_mfa = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, TOLLGATE_SCOPE)
        .await
        .unwrap();
    // Through the HTTP hook.
    let response = http
        .put(format!("{}/_dev/users/{ALICE}/mfa", idp.base_url()))
        .json(&json!({"required": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let response = http
        .post(idp.token_endpoint(DEFAULT_TENANT_ID))
        .form(&obo_form(
            TOLLGATE_CLIENT_ID,
            TOLLGATE_CLIENT_SECRET,
            &without_mfa,
            DOWNSTREAM_SCOPE,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let raw = response.text().await.unwrap();
    assert_member_order(
        &raw,
        &[
            "error",
            "error_description",
            "error_codes",
            "timestamp",
            "trace_id",
            "correlation_id",
            "error_uri",
            "suberror",
            "claims",
        ],
    );
    let body: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(body.as_object().unwrap().len(), 9);
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([50076]));
    assert_eq!(body["suberror"], "basic_action");
    assert_eq!(
        body["error_uri"],
        "https://login.microsoftonline.com/error?code=50076"
    );
    assert_entra_description(&body, 50076);
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains(&format!("to access '{DOWNSTREAM_CLIENT_ID}'"))
    );
    let claims: Value =
        serde_json::from_str(body["claims"].as_str().expect("claims is a JSON string")).unwrap();
    assert_eq!(
        claims,
        json!({"access_token": {"capolids": {"essential": true, "values": [MFA_POLICY_ID]}}})
    );

    // Bob is not affected.
    let bob = idp
        .password_token(BOB, FRONTEND_CLIENT_ID, TOLLGATE_SCOPE)
        .await
        .unwrap();
    assert_eq!(
        obo(&http, &idp, DEFAULT_TENANT_ID, &bob, DOWNSTREAM_SCOPE)
            .await
            .0,
        200
    );

    // Back to the login page, this time completing MFA: the new assertion passes.
    let pkce = Pkce::new();
    let query = authorize_query(
        FRONTEND_CLIENT_ID,
        CALLBACK,
        TOLLGATE_SCOPE,
        Some(&pkce.challenge),
        "s",
        None,
    );
    let code = sign_in_for_code(&http, &idp, DEFAULT_TENANT_ID, &query, ALICE, true).await;
    let (status, tokens) = post_token(
        &http,
        &idp.token_endpoint(DEFAULT_TENANT_ID),
        &[
            ("grant_type", "authorization_code"),
            ("client_id", FRONTEND_CLIENT_ID),
            ("code", &code),
            ("redirect_uri", CALLBACK),
            ("code_verifier", &pkce.verifier),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let with_mfa = tokens["access_token"].as_str().unwrap();
    assert_eq!(unverified_claims(with_mfa)["amr"], json!(["pwd", "mfa"]));
    let (status, body) = obo(&http, &idp, DEFAULT_TENANT_ID, with_mfa, DOWNSTREAM_SCOPE).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        unverified_claims(body["access_token"].as_str().unwrap())["amr"],
        json!(["pwd", "mfa"])
    );

    // Lifting the requirement through the library API lets the old token through again.
    idp.set_require_mfa(ALICE_UPN, false);
    assert_eq!(
        obo(
            &http,
            &idp,
            DEFAULT_TENANT_ID,
            &without_mfa,
            DOWNSTREAM_SCOPE
        )
        .await
        .0,
        200
    );
    let response = http
        .put(format!("{}/_dev/users/nobody/mfa", idp.base_url()))
        .json(&json!({"required": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    idp.shutdown().await;
}

#[tokio::test]
async fn mfa_challenge_on_refresh_and_the_refresh_token_survives_it() {
    let idp = start().await;
    let http = http();
    let first = ropc(
        &http,
        &idp,
        BOB,
        TOLLGATE_CLIENT_ID,
        &format!("offline_access {TOLLGATE_SCOPE}"),
    )
    .await;
    let rt = first["refresh_token"].as_str().unwrap();
    idp.set_require_mfa(BOB, true);
    let response = http
        .post(idp.token_endpoint(DEFAULT_TENANT_ID))
        .form(&[
            ("grant_type", "refresh_token"),
            ("client_id", TOLLGATE_CLIENT_ID),
            ("client_secret", TOLLGATE_CLIENT_SECRET),
            ("refresh_token", rt),
            ("scope", DOWNSTREAM_SCOPE),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let raw = response.text().await.unwrap();
    assert_member_order(
        &raw,
        &[
            "error",
            "error_description",
            "error_codes",
            "timestamp",
            "trace_id",
            "correlation_id",
            "error_uri",
            "suberror",
            "claims",
        ],
    );
    let body: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(body["error_codes"], json!([50076]));
    assert_eq!(body["suberror"], "basic_action");
    assert!(serde_json::from_str::<Value>(body["claims"].as_str().unwrap()).unwrap()["access_token"]["capolids"].is_object());
    idp.set_require_mfa(BOB, false);
    let (status, _) = refresh(
        &http,
        &idp,
        TOLLGATE_CLIENT_ID,
        Some(TOLLGATE_CLIENT_SECRET),
        rt,
        None,
    )
    .await;
    assert_eq!(status, 200, "a challenged refresh token is not consumed");
    idp.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Keys, hooks, ROPC, logout, lifecycle

#[tokio::test]
async fn key_rotation_publishes_both_keys_until_the_previous_is_dropped() {
    let idp = start().await;
    let http = http();
    let old_kid = fetch_jwks(&idp, DEFAULT_TENANT_ID).await["keys"][0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let old_token = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, TOLLGATE_SCOPE)
        .await
        .unwrap();

    let new_kid = idp.rotate_keys(false);
    assert_ne!(new_kid, old_kid);
    let jwks = fetch_jwks(&idp, DEFAULT_TENANT_ID).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [old_kid.as_str(), new_kid.as_str()]);
    let new_token = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, TOLLGATE_SCOPE)
        .await
        .unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new_token)
            .unwrap()
            .kid
            .as_deref(),
        Some(new_kid.as_str())
    );
    verify(
        &new_token,
        &jwks,
        TOLLGATE_CLIENT_ID,
        &idp.issuer(DEFAULT_TENANT_ID),
    );
    verify(
        &old_token,
        &jwks,
        TOLLGATE_CLIENT_ID,
        &idp.issuer(DEFAULT_TENANT_ID),
    );
    assert_eq!(
        obo(&http, &idp, DEFAULT_TENANT_ID, &old_token, DOWNSTREAM_SCOPE)
            .await
            .0,
        200
    );

    // Through the HTTP hook, dropping the previous keys.
    let response = http
        .post(format!("{}/_dev/rotate-keys", idp.base_url()))
        .json(&json!({"drop_previous": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let newest = response.json::<Value>().await.unwrap()["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let jwks = fetch_jwks(&idp, DEFAULT_TENANT_ID).await;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids, [newest.as_str()]);
    let (status, body) = obo(&http, &idp, DEFAULT_TENANT_ID, &old_token, DOWNSTREAM_SCOPE).await;
    assert_eq!(
        (status, body["error_codes"].clone()),
        (400, json!([50013])),
        "a dropped key no longer verifies"
    );
    // An empty body rotates too, keeping the previous key.
    let response = http
        .post(format!("{}/_dev/rotate-keys", idp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        fetch_jwks(&idp, DEFAULT_TENANT_ID).await["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn stats_count_every_token_request_per_grant_type() {
    let idp = start().await;
    let http = http();
    let url = idp.token_endpoint(DEFAULT_TENANT_ID);
    let good = [
        ("grant_type", "client_credentials"),
        ("client_id", TOLLGATE_CLIENT_ID),
        ("client_secret", TOLLGATE_CLIENT_SECRET),
        ("scope", DOWNSTREAM_DEFAULT),
    ];
    let bad = [
        ("grant_type", "client_credentials"),
        ("client_id", TOLLGATE_CLIENT_ID),
        ("client_secret", "wrong"),
        ("scope", DOWNSTREAM_DEFAULT),
    ];
    assert_eq!(post_token(&http, &url, &good).await.0, 200);
    assert_eq!(post_token(&http, &url, &bad).await.0, 401);
    assert_eq!(
        post_token(&http, &url, &[("grant_type", JWT_BEARER)])
            .await
            .0,
        400
    );
    assert_eq!(
        post_token(&http, &url, &[("grant_type", "made-up")])
            .await
            .0,
        400
    );
    let _ = idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, TOLLGATE_SCOPE)
        .await
        .unwrap();
    assert_eq!(idp.token_requests("client_credentials"), 2);
    assert_eq!(idp.token_requests("jwt-bearer"), 1);
    assert_eq!(idp.token_requests(JWT_BEARER), 1);
    assert_eq!(idp.token_requests("password"), 1);
    assert_eq!(idp.token_requests("refresh_token"), 0);
    let stats: Value = http
        .get(format!("{}/_dev/stats", idp.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats,
        json!({"token_requests": {"client_credentials": 2, "jwt-bearer": 1, "password": 1, "unsupported": 1}})
    );
    idp.shutdown().await;
}

#[tokio::test]
async fn settings_hook_changes_token_lifetimes() {
    let idp = start().await;
    let http = http();
    let response = http
        .put(format!("{}/_dev/settings", idp.base_url()))
        .json(&json!({"access_token_lifetime_secs": 120}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let settings: Value = response.json().await.unwrap();
    assert_eq!(
        settings,
        json!({"access_token_lifetime_secs": 120, "refresh_token_lifetime_secs": 7776000, "code_lifetime_secs": 600})
    );
    let body = ropc(&http, &idp, ALICE, TOLLGATE_CLIENT_ID, TOLLGATE_SCOPE).await;
    assert_eq!(body["expires_in"], 120);
    let claims = unverified_claims(body["access_token"].as_str().unwrap());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        120
    );
    let response = http
        .put(format!("{}/_dev/settings", idp.base_url()))
        .json(&json!({"access_token_lifetime": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "unknown settings are refused");
    idp.shutdown().await;
}

#[tokio::test]
async fn password_grant_checks_credentials_and_tenant() {
    let idp = start().await;
    let http = http();
    let body = ropc(
        &http,
        &idp,
        ALICE_UPN,
        FRONTEND_CLIENT_ID,
        &format!("openid {TOLLGATE_SCOPE}"),
    )
    .await;
    assert_eq!(
        unverified_claims(body["access_token"].as_str().unwrap())["oid"],
        ALICE_OID
    );
    assert!(body["id_token"].is_string());
    let url = idp.token_endpoint(DEFAULT_TENANT_ID);
    let form = |user: &'static str, password: &'static str| {
        [
            ("grant_type", "password"),
            ("client_id", FRONTEND_CLIENT_ID),
            ("username", user),
            ("password", password),
            ("scope", TOLLGATE_SCOPE),
        ]
    };
    let (status, body) = post_token(&http, &url, &form(ALICE, "wrong")).await;
    assert_eq!(
        (status, body["error"].as_str(), body["error_codes"].clone()),
        (400, Some("invalid_grant"), json!([50126]))
    );
    let (status, body) = post_token(&http, &url, &form(CAROL, DEV_PASSWORD)).await;
    assert_eq!((status, body["error_codes"].clone()), (400, json!([50034])));
    match idp
        .password_token(ALICE, FRONTEND_CLIENT_ID, "api://nope/x")
        .await
    {
        Err(DevIdpError::TokenRequest {
            status,
            error,
            description,
        }) => {
            assert_eq!((status, error.as_str()), (400, "invalid_resource"));
            assert!(description.starts_with("AADSTS500011: "));
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    idp.shutdown().await;
}

#[tokio::test]
async fn logout_redirects_only_to_registered_uris() {
    let idp = start().await;
    let http = http();
    let logout = |target: &str| {
        let mut url = url::Url::parse(&format!(
            "{}/{DEFAULT_TENANT_ID}/oauth2/v2.0/logout",
            idp.base_url()
        ))
        .unwrap();
        url.query_pairs_mut()
            .append_pair("post_logout_redirect_uri", target)
            .append_pair("state", "bye");
        http.get(url.as_str()).send()
    };
    let response = logout("http://localhost:3000/signed-out").await.unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "http://localhost:3000/signed-out?state=bye"
    );
    let response = logout("https://evil.example/phish").await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("location").is_none());
    assert!(response.text().await.unwrap().contains("not registered"));
    let response = http
        .get(format!("{}/common/oauth2/v2.0/logout", idp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    idp.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Back-channel logout (OpenID Connect Back-Channel Logout 1.0)

const OTHER_APP: &str = "12345678-1234-1234-1234-123456789abc";
const OTHER_SECRET: &str = "dev-secret-other";
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

#[tokio::test]
async fn logout_with_an_id_token_hint_posts_a_signed_logout_token_to_the_apps_of_that_session() {
    let receiver = LogoutReceiver::start().await;
    let mut cfg = backchannel_config();
    for app in &mut cfg.apps {
        if app.client_id == FRONTEND_CLIENT_ID {
            app.backchannel_logout_uri = Some(receiver.url("frontend"));
        }
    }
    cfg.apps.push(other_app(Some(receiver.url("other"))));
    let idp = DevIdp::start(cfg).await.unwrap();
    let http = http();
    let doc: Value = http
        .get(idp.well_known_url(DEFAULT_TENANT_ID))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["backchannel_logout_supported"], json!(true));
    assert_eq!(doc["backchannel_logout_session_supported"], json!(true));
    assert_eq!(doc["frontchannel_logout_supported"], json!(true));

    // Session A: alice signs in to the frontend; the middle tier (no back-channel URI) gets an ID
    // token in the same session through OBO and refresh.
    let a = sign_in_tokens(
        &http,
        &idp,
        FRONTEND_CLIENT_ID,
        None,
        ALICE_UPN,
        Some("n-a"),
    )
    .await;
    let id_a = unverified_claims(a["id_token"].as_str().unwrap());
    let (status, obo_body) = obo(
        &http,
        &idp,
        DEFAULT_TENANT_ID,
        a["access_token"].as_str().unwrap(),
        &format!("openid offline_access {DOWNSTREAM_SCOPE}"),
    )
    .await;
    assert_eq!(status, 200, "{obo_body}");
    let (status, refreshed) = refresh(
        &http,
        &idp,
        TOLLGATE_CLIENT_ID,
        Some(TOLLGATE_CLIENT_SECRET),
        obo_body["refresh_token"].as_str().unwrap(),
        None,
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let tollgate_id = unverified_claims(refreshed["id_token"].as_str().unwrap());
    assert_eq!(tollgate_id["sid"], id_a["sid"], "same session");
    // Session B: bob signs in to another app that has a back-channel URI.
    let b = sign_in_tokens(&http, &idp, OTHER_APP, Some(OTHER_SECRET), BOB_UPN, None).await;
    let id_b = unverified_claims(b["id_token"].as_str().unwrap());
    assert_ne!(id_a["sid"], id_b["sid"]);

    let response = logout(
        &http,
        &idp,
        a["id_token"].as_str().unwrap(),
        "http://localhost:3000/signed-out",
    )
    .await;
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "http://localhost:3000/signed-out?state=bye"
    );
    let received = receiver.take();
    assert_eq!(received.len(), 1, "{received:?}");
    let post = &received[0];
    assert_eq!(post.path, "/frontend");
    assert_eq!(post.content_type, "application/x-www-form-urlencoded");
    assert_eq!(post.form.len(), 1, "only logout_token: {:?}", post.form);
    let token = &post.form["logout_token"];
    let jwks = fetch_jwks(&idp, DEFAULT_TENANT_ID).await;
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
    let claims = verify_logout_token(
        token,
        &jwks,
        FRONTEND_CLIENT_ID,
        &idp.issuer(DEFAULT_TENANT_ID),
    );
    assert_eq!(claims["sid"], id_a["sid"]);
    assert_eq!(claims["sub"], id_a["sub"]);
    assert_eq!(claims["oid"], ALICE_OID);
    assert_eq!(claims["tid"], DEFAULT_TENANT_ID);
    assert_eq!(claims["events"], json!({ BACKCHANNEL_EVENT: {} }));
    assert!(uuid::Uuid::parse_str(claims["jti"].as_str().unwrap()).is_ok());
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        120
    );
    assert!(claims.get("nonce").is_none(), "a logout token has no nonce");
    assert_eq!(id_a["nonce"], "n-a");

    // The session is over: the same hint again ends nothing.
    let response = logout(&http, &idp, a["id_token"].as_str().unwrap(), "").await;
    assert_eq!(response.status(), 200);
    assert!(receiver.take().is_empty());

    // A tampered hint ends nothing, and the page still answers.
    let tampered = tamper(b["id_token"].as_str().unwrap());
    let response = logout(&http, &idp, &tampered, "").await;
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains("You signed out"));
    let response = logout(&http, &idp, "not a jwt", "").await;
    assert_eq!(response.status(), 200);
    assert!(receiver.take().is_empty(), "session B is untouched");

    // Without a browser: session B by its sid.
    let deliveries = idp.sign_out(id_b["sid"].as_str().unwrap()).await;
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert!(deliveries[0].acknowledged());
    assert_eq!(deliveries[0].client_id, OTHER_APP);
    assert_eq!(deliveries[0].status, Some(200));
    let received = receiver.take();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/other");
    let claims = verify_logout_token(
        &received[0].form["logout_token"],
        &jwks,
        OTHER_APP,
        &idp.issuer(DEFAULT_TENANT_ID),
    );
    assert_eq!(claims["sid"], id_b["sid"]);
    assert_eq!(claims["sub"], id_b["sub"]);
    assert_eq!(claims["oid"], BOB_OID);
    assert!(idp.sign_out(BOB).await.is_empty(), "no session left");
    assert!(idp.sign_out(ALICE).await.is_empty(), "no session left");
    idp.shutdown().await;
}

#[tokio::test]
async fn logout_accepts_an_expired_hint_and_survives_a_receiver_that_is_down() {
    let receiver = LogoutReceiver::start().await;
    let down = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/backchannel", listener.local_addr().unwrap())
    };
    let mut cfg = backchannel_config();
    for app in &mut cfg.apps {
        if app.client_id == FRONTEND_CLIENT_ID {
            app.backchannel_logout_uri = Some(receiver.url("frontend"));
        }
    }
    cfg.apps.push(other_app(Some(down)));
    // ID tokens expire at once (exp = iat): logout still takes them as hints.
    cfg.access_token_lifetime = Duration::ZERO;
    let idp = DevIdp::start(cfg).await.unwrap();
    let http = http();
    let a = sign_in_tokens(&http, &idp, FRONTEND_CLIENT_ID, None, ALICE_UPN, None).await;
    let c1 = sign_in_tokens(&http, &idp, OTHER_APP, Some(OTHER_SECRET), BOB_UPN, None).await;
    let c2 = sign_in_tokens(&http, &idp, OTHER_APP, Some(OTHER_SECRET), BOB_UPN, None).await;

    let response = logout(&http, &idp, a["id_token"].as_str().unwrap(), "").await;
    assert_eq!(response.status(), 200);
    let received = receiver.take();
    assert_eq!(received.len(), 1, "an expired hint is accepted");
    let claims = unverified_claims(&received[0].form["logout_token"]);
    let id_a = unverified_claims(a["id_token"].as_str().unwrap());
    assert_eq!(claims["sid"], id_a["sid"]);
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        120,
        "the logout token's lifetime is its own"
    );

    let c1_sid = unverified_claims(c1["id_token"].as_str().unwrap())["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    let deliveries = idp.sign_out(&c1_sid).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].sid, c1_sid);
    assert_eq!(deliveries[0].status, None);
    assert!(deliveries[0].error.is_some());
    assert!(!deliveries[0].acknowledged());

    let response = logout(
        &http,
        &idp,
        c2["id_token"].as_str().unwrap(),
        "http://localhost:3000/signed-out",
    )
    .await;
    assert_eq!(
        response.status(),
        302,
        "a failed delivery does not fail the logout"
    );
    assert!(
        idp.sign_out(BOB).await.is_empty(),
        "the session ended anyway"
    );
    assert!(receiver.take().is_empty());
    idp.shutdown().await;
}

#[tokio::test]
async fn dev_sign_out_hook_ends_every_session_of_a_user() {
    let receiver = LogoutReceiver::start().await;
    let mut cfg = backchannel_config();
    cfg.apps.push(other_app(Some(receiver.url("other"))));
    let idp = DevIdp::start(cfg).await.unwrap();
    let http = http();
    for _ in 0..2 {
        sign_in_tokens(&http, &idp, OTHER_APP, Some(OTHER_SECRET), ALICE_UPN, None).await;
    }
    let b = sign_in_tokens(&http, &idp, OTHER_APP, Some(OTHER_SECRET), BOB_UPN, None).await;
    let response = http
        .post(format!("{}/_dev/sign-out/{ALICE}", idp.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["sessions_ended"], 2);
    assert_eq!(body["deliveries"].as_array().unwrap().len(), 2);
    assert_eq!(body["deliveries"][0]["status"], 200);
    assert_eq!(body["deliveries"][0]["client_id"], OTHER_APP);
    let received = receiver.take();
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .all(|r| unverified_claims(&r.form["logout_token"])["oid"] == ALICE_OID)
    );
    // Bob's session is still there, and can be ended by his object id.
    let id_b = unverified_claims(b["id_token"].as_str().unwrap());
    let deliveries = idp.sign_out(BOB_OID).await;
    assert_eq!(deliveries.len(), 1);
    assert_eq!(deliveries[0].sid, id_b["sid"].as_str().unwrap());
    idp.shutdown().await;
}

#[tokio::test]
async fn key_file_keeps_the_signing_key_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("dev-idp-key.pem");
    let cfg = DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        key_file: Some(key_file.clone()),
        ..DevIdpConfig::default()
    };
    let first = DevIdp::start(cfg.clone()).await.unwrap();
    let kid = fetch_jwks(&first, DEFAULT_TENANT_ID).await["keys"][0]["kid"].clone();
    first.shutdown().await;
    assert!(
        std::fs::read_to_string(&key_file)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let second = DevIdp::start(cfg).await.unwrap();
    assert_eq!(
        fetch_jwks(&second, DEFAULT_TENANT_ID).await["keys"][0]["kid"],
        kid
    );
    second.shutdown().await;
    // Without a key file, every start has a fresh key.
    let a = start().await;
    let b = start().await;
    assert_ne!(
        fetch_jwks(&a, DEFAULT_TENANT_ID).await["keys"][0]["kid"],
        fetch_jwks(&b, DEFAULT_TENANT_ID).await["keys"][0]["kid"]
    );
    // A corrupt key file is an error, not silently replaced.
    std::fs::write(&key_file, "garbage").unwrap();
    let cfg = DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        key_file: Some(key_file),
        ..DevIdpConfig::default()
    };
    assert!(matches!(
        DevIdp::start(cfg).await,
        Err(DevIdpError::KeyFile { .. })
    ));
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let idp = start().await;
    let url = idp.well_known_url(DEFAULT_TENANT_ID);
    let http = http();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 200);
    idp.shutdown().await;
    assert!(http.get(&url).send().await.is_err());

    let idp = start().await;
    let addr = idp.addr();
    drop(idp);
    // Dropping only signals the server; binding the same port proves it let go of it.
    let mut rebound = None;
    for _ in 0..100 {
        if let Ok(listener) = tokio::net::TcpListener::bind(addr).await {
            rebound = Some(listener);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rebound.is_some(), "the dropped dev IdP still holds {addr}");
}

#[tokio::test]
async fn run_serves_until_the_shutdown_future_resolves() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let cfg = DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..DevIdpConfig::default()
    };
    let task = tokio::spawn(tollgate_devidp::run(cfg, async move {
        let _ = rx.await;
    }));
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();
}

// ---------------------------------------------------------------------------------------------
// Helpers

async fn start() -> DevIdpHandle {
    DevIdp::start(DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..DevIdpConfig::default()
    })
    .await
    .unwrap()
}

async fn fetch_jwks(idp: &DevIdpHandle, tid: &str) -> Value {
    http()
        .get(idp.jwks_uri(tid))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Verifies signature, issuer, audience and expiry with jsonwebtoken against the served JWKS.
fn verify(token: &str, jwks: &Value, aud: &str, iss: &str) -> Value {
    verify_requiring(token, jwks, aud, iss, &["exp", "iss", "aud", "nbf"])
}

/// [`verify`], with the claims that must be present.
fn verify_requiring(token: &str, jwks: &Value, aud: &str, iss: &str, required: &[&str]) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let kid = header.kid.expect("kid");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("kid published");
    let decoding =
        DecodingKey::from_rsa_components(key["n"].as_str().unwrap(), key["e"].as_str().unwrap())
            .unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[aud]);
    validation.set_issuer(&[iss]);
    validation.set_required_spec_claims(required);
    validation.leeway = 0;
    jsonwebtoken::decode::<Value>(token, &decoding, &validation)
        .unwrap()
        .claims
}

async fn post_token(http: &reqwest::Client, url: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let response = http.post(url).form(form).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn ropc(
    http: &reqwest::Client,
    idp: &DevIdpHandle,
    user: &str,
    client_id: &str,
    scope: &str,
) -> Value {
    let mut form = vec![
        ("grant_type", "password"),
        ("client_id", client_id),
        ("username", user),
        ("password", DEV_PASSWORD),
        ("scope", scope),
    ];
    if client_id == TOLLGATE_CLIENT_ID {
        form.push(("client_secret", TOLLGATE_CLIENT_SECRET));
    }
    let (status, body) = post_token(http, &idp.token_endpoint(DEFAULT_TENANT_ID), &form).await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn refresh(
    http: &reqwest::Client,
    idp: &DevIdpHandle,
    client_id: &str,
    secret: Option<&str>,
    refresh_token: &str,
    scope: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("client_id", client_id),
        ("refresh_token", refresh_token),
    ];
    if let Some(secret) = secret {
        form.push(("client_secret", secret));
    }
    if let Some(scope) = scope {
        form.push(("scope", scope));
    }
    post_token(http, &idp.token_endpoint(DEFAULT_TENANT_ID), &form).await
}

fn obo_form<'a>(
    client_id: &'a str,
    secret: &'a str,
    assertion: &'a str,
    scope: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", JWT_BEARER),
        ("client_id", client_id),
        ("client_secret", secret),
        ("assertion", assertion),
        ("scope", scope),
        ("requested_token_use", "on_behalf_of"),
    ]
}

async fn obo(
    http: &reqwest::Client,
    idp: &DevIdpHandle,
    tid: &str,
    assertion: &str,
    scope: &str,
) -> (u16, Value) {
    obo_as(
        http,
        idp,
        tid,
        TOLLGATE_CLIENT_ID,
        TOLLGATE_CLIENT_SECRET,
        assertion,
        scope,
    )
    .await
}

async fn obo_as(
    http: &reqwest::Client,
    idp: &DevIdpHandle,
    tid: &str,
    client_id: &str,
    secret: &str,
    assertion: &str,
    scope: &str,
) -> (u16, Value) {
    post_token(
        http,
        &idp.token_endpoint(tid),
        &obo_form(client_id, secret, assertion, scope),
    )
    .await
}

fn assertion_form<'a>(
    client_id: &'a str,
    assertion: &'a str,
    scope: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", "client_credentials"),
        ("client_id", client_id),
        ("client_assertion_type", CLIENT_ASSERTION_TYPE),
        ("client_assertion", assertion),
        ("scope", scope),
    ]
}

fn assertion_claims(client_id: &str, aud: Value, lifetime: i64) -> Value {
    // i64: `lifetime` is negative for an expired assertion.
    let now = now() as i64;
    json!({"iss": client_id, "sub": client_id, "aud": aud, "jti": uuid::Uuid::new_v4().to_string(), "nbf": now, "iat": now, "exp": now + lifetime})
}

/// Asserts the error_description is `AADSTS<code>: ...` followed by the body's own trace id,
/// correlation id and timestamp.
fn assert_entra_description(body: &Value, code: u32) {
    let description = body["error_description"].as_str().unwrap();
    assert!(
        description.starts_with(&format!("AADSTS{code}: ")),
        "{description}"
    );
    let tail = format!(
        "\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
        body["trace_id"].as_str().unwrap(),
        body["correlation_id"].as_str().unwrap(),
        body["timestamp"].as_str().unwrap()
    );
    assert!(description.ends_with(&tail), "{description:?}");
    let timestamp = body["timestamp"].as_str().unwrap();
    assert_eq!(timestamp.len(), 20);
    assert_eq!(&timestamp[10..11], " ");
    assert!(uuid::Uuid::parse_str(body["trace_id"].as_str().unwrap()).is_ok());
}

/// The raw JSON text has exactly these top-level members, in this order.
fn assert_member_order(raw: &str, members: &[&str]) {
    let positions: Vec<usize> = members
        .iter()
        .map(|m| {
            raw.find(&format!("\"{m}\":"))
                .unwrap_or_else(|| panic!("member {m} missing in {raw}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "member order {members:?} in {raw}"
    );
}

struct Pkce {
    verifier: String,
    challenge: String,
}

impl Pkce {
    fn new() -> Self {
        let verifier = URL_SAFE_NO_PAD.encode(
            [
                uuid::Uuid::new_v4().into_bytes(),
                uuid::Uuid::new_v4().into_bytes(),
            ]
            .concat(),
        );
        let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        Self {
            verifier,
            challenge,
        }
    }
}

fn authorize_query(
    client_id: &str,
    redirect_uri: &str,
    scope: &str,
    challenge: Option<&str>,
    state: &str,
    nonce: Option<&str>,
) -> Vec<(String, String)> {
    let mut query = vec![
        ("client_id".to_owned(), client_id.to_owned()),
        ("response_type".to_owned(), "code".to_owned()),
        ("redirect_uri".to_owned(), redirect_uri.to_owned()),
        ("scope".to_owned(), scope.to_owned()),
        ("state".to_owned(), state.to_owned()),
    ];
    if let Some(challenge) = challenge {
        query.push(("code_challenge".into(), challenge.into()));
        query.push(("code_challenge_method".into(), "S256".into()));
    }
    if let Some(nonce) = nonce {
        query.push(("nonce".into(), nonce.into()));
    }
    query
}

fn authorize_url(idp: &DevIdpHandle, tid: &str, query: &[(String, String)]) -> String {
    let mut url =
        url::Url::parse(&format!("{}/{tid}/oauth2/v2.0/authorize", idp.base_url())).unwrap();
    url.query_pairs_mut().extend_pairs(query);
    url.into()
}

/// What a browser does: load the login page, fill in the form, submit it. Returns the answer to
/// the submit (a redirect on success), without following it.
async fn browser_sign_in(
    http: &reqwest::Client,
    idp: &DevIdpHandle,
    tid: &str,
    query: &[(String, String)],
    login: &str,
    password: &str,
    mfa: bool,
) -> reqwest::Response {
    let page = http
        .get(authorize_url(idp, tid, query))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200, "login page expected");
    let html = page.text().await.unwrap();
    let extra: &[(&str, &str)] = if mfa { &[("mfa", "on")] } else { &[] };
    submit_login_form(http, &idp.base_url(), &html, login, password, extra).await
}

async fn sign_in_for_code(
    http: &reqwest::Client,
    idp: &DevIdpHandle,
    tid: &str,
    query: &[(String, String)],
    login: &str,
    mfa: bool,
) -> String {
    let response = browser_sign_in(http, idp, tid, query, login, DEV_PASSWORD, mfa).await;
    assert_eq!(response.status(), 302);
    location(&response).1["code"].clone()
}

fn location(response: &reqwest::Response) -> (String, HashMap<String, String>) {
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let url = url::Url::parse(&location).unwrap();
    let params = url.query_pairs().into_owned().collect();
    (location, params)
}

/// An RSA key generated for the test, as a client or an external issuer would hold it.
struct TestKey {
    encoding: EncodingKey,
    jwk: Value,
    kid: Option<String>,
    /// A stand-in for `x5t#S256`: SHA-256 of the public key, base64url.
    thumbprint: String,
}

impl TestKey {
    fn new(kid: Option<&str>) -> Self {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8 = pair.as_der().unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        let public = pair.public_key();
        let mut jwk = json!({
            "kty": "RSA",
            "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
        });
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        let spki = public.as_der().unwrap();
        let thumbprint = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            spki.as_ref(),
        ));
        Self {
            encoding,
            jwk,
            kid: kid.map(str::to_owned),
            thumbprint,
        }
    }

    fn header(&self, alg: Algorithm) -> Header {
        let mut header = Header::new(alg);
        header.kid = self.kid.clone();
        header
    }

    fn sign(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).unwrap()
    }

    fn client_assertion(
        &self,
        alg: Algorithm,
        client_id: &str,
        aud: Value,
        lifetime: i64,
    ) -> String {
        self.sign(
            &self.header(alg),
            &assertion_claims(client_id, aud, lifetime),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Back-channel logout helpers

fn backchannel_config() -> DevIdpConfig {
    DevIdpConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        ..DevIdpConfig::default()
    }
}

/// A confidential app, as a TOML `[[apps]]` entry would register it.
fn other_app(backchannel_logout_uri: Option<String>) -> DevApp {
    let mut toml = format!(
        "[[apps]]\nclient_id = \"{OTHER_APP}\"\nname = \"other\"\nsecret = \"{OTHER_SECRET}\"\n"
    );
    if let Some(uri) = backchannel_logout_uri {
        toml.push_str(&format!("backchannel_logout_uri = \"{uri}\"\n"));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), toml).unwrap();
    DevIdpConfig::from_toml_file(file.path())
        .unwrap()
        .apps
        .into_iter()
        .find(|a| a.client_id == OTHER_APP)
        .unwrap()
}

/// Code flow with PKCE for `openid profile offline_access` and the tollgate API; the token
/// response.
async fn sign_in_tokens(
    http: &reqwest::Client,
    idp: &DevIdpHandle,
    client_id: &str,
    secret: Option<&str>,
    login: &str,
    nonce: Option<&str>,
) -> Value {
    let pkce = Pkce::new();
    let scope = format!("openid profile offline_access {TOLLGATE_SCOPE}");
    let query = authorize_query(
        client_id,
        CALLBACK,
        &scope,
        Some(&pkce.challenge),
        "st",
        nonce,
    );
    let code = sign_in_for_code(http, idp, DEFAULT_TENANT_ID, &query, login, false).await;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("client_id", client_id),
        ("code", code.as_str()),
        ("redirect_uri", CALLBACK),
        ("code_verifier", pkce.verifier.as_str()),
    ];
    if let Some(secret) = secret {
        form.push(("client_secret", secret));
    }
    let (status, body) = post_token(http, &idp.token_endpoint(DEFAULT_TENANT_ID), &form).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["id_token"].is_string(), "{body}");
    body
}

/// `GET .../logout?id_token_hint=...&post_logout_redirect_uri=...&state=bye` (no redirect URI
/// when `target` is empty).
async fn logout(
    http: &reqwest::Client,
    idp: &DevIdpHandle,
    hint: &str,
    target: &str,
) -> reqwest::Response {
    let mut url = url::Url::parse(&format!(
        "{}/{DEFAULT_TENANT_ID}/oauth2/v2.0/logout",
        idp.base_url()
    ))
    .unwrap();
    url.query_pairs_mut().append_pair("id_token_hint", hint);
    if !target.is_empty() {
        url.query_pairs_mut()
            .append_pair("post_logout_redirect_uri", target)
            .append_pair("state", "bye");
    }
    http.get(url.as_str()).send().await.unwrap()
}

/// A JWT with its claims changed (`sub` replaced) but the original signature.
fn tamper(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut claims = unverified_claims(token);
    claims["sub"] = json!("someone-else");
    parts[1] = URL_SAFE_NO_PAD.encode(claims.to_string());
    parts.join(".")
}

/// Verifies a logout token as a relying party must (§2.6): signature against the JWKS, issuer,
/// audience, `iat` and `exp`.
fn verify_logout_token(token: &str, jwks: &Value, aud: &str, iss: &str) -> Value {
    // §2.4 lists no `nbf` among a logout token's claims, and the dev IdP sends none.
    let claims = verify_requiring(token, jwks, aud, iss, &["exp", "iss", "aud"]);
    assert!(claims["iat"].is_u64());
    claims
}

/// One POST the receiver got.
#[derive(Debug)]
struct ReceivedLogout {
    path: String,
    content_type: String,
    form: HashMap<String, String>,
}

/// A relying party's back-channel logout endpoint: records every POST and answers 200.
struct LogoutReceiver {
    addr: std::net::SocketAddr,
    received: std::sync::Arc<std::sync::Mutex<Vec<ReceivedLogout>>>,
}

impl LogoutReceiver {
    async fn start() -> Self {
        use axum::extract::{Path, State};
        use axum::http::HeaderMap;
        type Log = std::sync::Arc<std::sync::Mutex<Vec<ReceivedLogout>>>;
        async fn receive(
            State(log): State<Log>,
            Path(name): Path<String>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> &'static str {
            let content_type = headers
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let form = url::form_urlencoded::parse(&body).into_owned().collect();
            log.lock().unwrap().push(ReceivedLogout {
                path: format!("/{name}"),
                content_type,
                form,
            });
            ""
        }
        let received = Log::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/{name}", axum::routing::post(receive))
            .with_state(received.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, received }
    }

    fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// The POSTs received since the last call.
    fn take(&self) -> Vec<ReceivedLogout> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}
