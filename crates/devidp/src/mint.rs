//! What every grant issues with: the token response, signing, Entra's pairwise `sub` and
//! `uti`, and the checks on a user assertion (On-Behalf-Of and RFC 8693 token exchange share
//! them).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Map, Value};

use super::aad_error::AadError;
use super::client_auth::Client;
use super::jwt::UnverifiedJwt;
use super::state::{Shared, TenantPath, UserSession, now_secs};

/// A successful token response, members in Entra's order.
#[derive(Debug, Serialize)]
pub(crate) struct TokenResponse {
    pub(crate) token_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<String>,
    pub(crate) expires_in: u64,
    pub(crate) ext_expires_in: u64,
    pub(crate) access_token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) client_info: Option<String>,
    /// RFC 8693 §2.2.1, token exchange answers only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) issued_token_type: Option<&'static str>,
}

/// The user behind a verified OBO (or token exchange) assertion.
pub(crate) struct AssertionSubject {
    pub(crate) oid: String,
    /// The assertion's `sub` (pairwise per app), kept by a token exchange.
    pub(crate) sub: String,
    /// The assertion's issuer.
    pub(crate) issuer: String,
    pub(crate) session: UserSession,
}

/// OBO assertion checks: signed by this IdP, issued by the tenant it names, not expired,
/// addressed to the calling client, and a delegated (user) token.
pub(crate) fn verify_user_assertion(
    shared: &Shared,
    tenant: &TenantPath,
    client: &Client,
    assertion: &str,
) -> Result<AssertionSubject, AadError> {
    let jwt = UnverifiedJwt::parse(assertion)
        .map_err(|_| AadError::invalid_request(50027, "JWT token is invalid or malformed."))?;
    let signature_failed = || {
        AadError::invalid_grant(
            50013,
            "Assertion failed signature validation. [Reason - The key was not found or the provided signature value did not match the expected signature value.]",
        )
    };
    if jwt.header_str("alg") != Some("RS256") {
        return Err(signature_failed());
    }
    let key = jwt
        .header_str("kid")
        .and_then(|kid| shared.find_key(kid))
        .ok_or_else(signature_failed)?;
    if !key.verify_rs256(jwt.signing_input.as_bytes(), &jwt.signature) {
        return Err(signature_failed());
    }
    let tid = jwt
        .claim_str("tid")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let issuer_ok = matches!(shared.tenant(&tid), Some(TenantPath::Tenant(_)))
        && jwt.claim_str("iss") == Some(shared.issuer(&tid).as_str());
    if !issuer_ok {
        return Err(AadError::invalid_grant(
            50013,
            "Assertion contains an invalid issuer.",
        ));
    }
    if let TenantPath::Tenant(path_tid) = tenant
        && *path_tid != tid
    {
        return Err(AadError::invalid_grant(
            50013,
            format!(
                "Assertion was issued by tenant '{tid}', but the request was sent to tenant '{path_tid}'."
            ),
        ));
    }
    let now = now_secs();
    if jwt.claim_time("exp").is_none_or(|exp| now >= exp)
        || jwt.claim_time("nbf").is_some_and(|nbf| nbf > now)
    {
        return Err(AadError::invalid_grant(
            500133,
            "Assertion is not within its valid time range. Ensure that the access token is not expired before using it for user assertion, or request a new token.",
        ));
    }
    let aud = jwt.claim_str("aud").unwrap_or_default();
    let audience_ok = aud.eq_ignore_ascii_case(&client.app.client_id)
        || client.app.app_id_uri.as_deref() == Some(aud);
    if !audience_ok {
        return Err(AadError::invalid_grant(
            500131,
            format!(
                "Assertion audience does not match the Client app presenting the assertion. The audience in the assertion was '{aud}' and the expected audience is '{id}' or one of the Application Uris of this application with App ID '{id}'({name}). The downstream client must request a token for the expected audience (the application that made the OBO request) and this application should use that token as the assertion.",
                id = client.app.client_id,
                name = client.app.name
            ),
        ));
    }
    let is_user_token = jwt.claim_str("scp").is_some_and(|s| !s.trim().is_empty())
        && jwt.claim_str("idtyp") != Some("app");
    let oid = jwt.claim_str("oid").unwrap_or_default().to_owned();
    if !is_user_token || oid.is_empty() {
        return Err(AadError::invalid_grant(
            50013,
            "Assertion is not a delegated user token: On-Behalf-Of only works for user principals (the assertion has no 'scp').",
        ));
    }
    // What the user did at sign-in stays with the exchanged token.
    let strings = |name: &str| -> Vec<String> {
        jwt.claims
            .get(name)
            .and_then(Value::as_array)
            .map(|items| {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    let amr = strings("amr");
    let acrs = strings("acrs");
    let sid = jwt
        .claim_str("sid")
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let username = shared
        .lock()
        .find_user_by_oid(&oid)
        .map(|u| u.username.clone())
        .unwrap_or_default();
    Ok(AssertionSubject {
        oid,
        sub: jwt.claim_str("sub").unwrap_or_default().to_owned(),
        issuer: jwt.claim_str("iss").unwrap_or_default().to_owned(),
        session: UserSession {
            username,
            tid,
            amr,
            acrs,
            sid,
        },
    })
}

pub(crate) fn sign(shared: &Shared, claims: Map<String, Value>) -> Result<String, AadError> {
    shared.sign(&Value::Object(claims)).map_err(|_| {
        AadError::new(
            "server_error",
            90000,
            "The dev IdP failed to sign the token.",
        )
    })
}

/// Entra's pairwise `sub`: stable per (user, app), 43 base64url characters.
pub(crate) fn pairwise_subject(oid: &str, app: &str) -> String {
    let input = format!("{}\0{}", oid.to_ascii_lowercase(), app.to_ascii_lowercase());
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        input.as_bytes(),
    ))
}

/// Entra's `uti`: an opaque 22-character per-token id.
pub(crate) fn uti() -> String {
    URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}
