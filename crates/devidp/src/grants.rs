//! The two grants of the NAIS platform's other token services, at the same token endpoint:
//! RFC 8693 token exchange as TokenX does it (a user token of this IdP for one addressed to
//! another app, the client authenticated by `private_key_jwt`), and the RFC 7523 §2.1 JWT bearer
//! grant as Maskinporten does it (an assertion signed with the client's registered key is the
//! whole request: no client authentication besides). Refusals are RFC 6749 §5.2 errors with
//! Entra's members, like every other grant here.

use serde_json::{Map, Value, json};

use super::aad_error::AadError;
use super::client_auth::{AuthMethod, Client, select_key};
use super::jwt::UnverifiedJwt;
use super::keys::AssertionAlg;
use super::mint::{TokenResponse, sign, uti, verify_user_assertion};
use super::params::Params;
use super::scopes;
use super::state::{Shared, TenantPath, now_secs};

/// RFC 8693 §3: what the subject token is; TokenX takes a JWT.
const JWT_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// Maskinporten refuses grant assertions living longer than this (`exp - iat`), in seconds.
const MAX_GRANT_LIFETIME: u64 = 120;
/// Clock skew allowed on a grant assertion's `iat`.
const SKEW: u64 = 10;
/// The organisation number the dev IdP's clients act for (`consumer.ID`, ISO 6523 `0192:`).
const DEV_CONSUMER: &str = "0192:999999999";

/// RFC 8693 §2.1 token exchange: `subject_token` (a user token this IdP issued to the calling
/// client) for a token with `aud` = `audience`, carrying the user's `sub` and `oid`.
pub(crate) fn token_exchange(
    shared: &Shared,
    tenant: &TenantPath,
    client: &Client,
    params: &Params,
) -> Result<TokenResponse, AadError> {
    // TokenX accepts only key-based client authentication.
    if client.method != AuthMethod::Assertion {
        return Err(AadError::invalid_client(
            7000218,
            "Token exchange requires private_key_jwt client authentication: 'client_assertion' with 'client_assertion_type' jwt-bearer.",
        ));
    }
    let subject_token = params.require("subject_token")?;
    match params.require("subject_token_type")? {
        JWT_TOKEN_TYPE | ACCESS_TOKEN_TYPE => {}
        other => {
            return Err(AadError::invalid_request(
                9002313,
                format!(
                    "Invalid request. 'subject_token_type' must be '{JWT_TOKEN_TYPE}', not '{other}'."
                ),
            ));
        }
    }
    let audience = params.require("audience")?;
    if audience.trim().is_empty() {
        return Err(AadError::missing_parameter("audience"));
    }
    let subject = verify_user_assertion(shared, tenant, client, subject_token)?;
    let now = now_secs();
    let lifetime = shared.lock().lifetimes.access.as_secs();
    let mut claims = Map::new();
    claims.insert("aud".into(), json!(audience));
    claims.insert("iss".into(), json!(shared.issuer(&subject.session.tid)));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + lifetime));
    claims.insert("sub".into(), json!(subject.sub));
    claims.insert("oid".into(), json!(subject.oid));
    claims.insert("tid".into(), json!(subject.session.tid));
    // TokenX names the app that asked and the issuer of the token it exchanged.
    claims.insert("client_id".into(), json!(client.app.client_id));
    claims.insert("idp".into(), json!(subject.issuer));
    if !subject.session.amr.is_empty() {
        claims.insert("amr".into(), json!(subject.session.amr));
    }
    claims.insert("jti".into(), json!(uti()));
    Ok(TokenResponse {
        token_type: "Bearer",
        scope: None,
        expires_in: lifetime,
        ext_expires_in: lifetime,
        access_token: sign(shared, claims)?,
        refresh_token: None,
        id_token: None,
        client_info: None,
        issued_token_type: Some(ACCESS_TOKEN_TYPE),
    })
}

/// Whether a jwt-bearer request is Maskinporten's grant rather than Entra's On-Behalf-Of: it
/// names no client and no `requested_token_use` (the assertion is the client's own).
pub(crate) fn is_maskinporten_grant(params: &Params) -> bool {
    params.get("requested_token_use").is_none() && params.get("client_id").is_none()
}

/// RFC 7523 §2.1 as Maskinporten takes it: the assertion, signed with a key registered for the
/// client it names in `iss`, is addressed to this IdP (`aud` its issuer or token endpoint),
/// lives at most 120 s, is used once (`jti`) and asks for `scope`; the token echoes the scope,
/// the client, and the `resource` (as `aud`) and `authorization_details` the assertion carried.
pub(crate) fn jwt_bearer_grant(
    shared: &Shared,
    tenant: &TenantPath,
    params: &Params,
) -> Result<TokenResponse, AadError> {
    let TenantPath::Tenant(tid) = tenant else {
        return Err(AadError::invalid_request(
            50059,
            "No tenant-identifying information found.",
        ));
    };
    let assertion = params.require("assertion")?;
    let refused = |message: &str| AadError::invalid_grant(50027, message.to_owned());
    let jwt = UnverifiedJwt::parse(assertion)
        .map_err(|_| refused("Invalid assertion: not a signed JWT."))?;
    let alg = AssertionAlg::from_header(jwt.header_str("alg"))
        .ok_or_else(|| refused("Invalid assertion: alg must be RS256, PS256, ES256 or ES384."))?;
    let iss = jwt
        .claim_str("iss")
        .ok_or_else(|| refused("Invalid assertion: no 'iss' (the client id)."))?;
    let app = {
        let inner = shared.lock();
        scopes::find_app(&inner.apps, iss).cloned()
    }
    .ok_or_else(|| {
        AadError::invalid_client(
            700016,
            format!("Invalid assertion: client '{iss}' is not registered."),
        )
    })?;
    let keys = shared
        .lock()
        .client_keys
        .get(&app.client_id.to_ascii_lowercase())
        .cloned()
        .unwrap_or_default();
    let verified = select_key(&keys, &jwt)
        .is_some_and(|k| k.verify(alg, jwt.signing_input.as_bytes(), &jwt.signature));
    if !verified {
        return Err(refused(
            "Invalid assertion: the signature does not verify with a key registered for the client (named by kid).",
        ));
    }
    let accepted = [shared.issuer(tid), shared.token_endpoint(tid)];
    if !jwt
        .claim_str("aud")
        .is_some_and(|aud| accepted.iter().any(|a| a == aud))
    {
        return Err(refused(&format!(
            "Invalid assertion: 'aud' must be the issuer '{}'.",
            accepted[0]
        )));
    }
    let now = now_secs();
    let (Some(iat), Some(exp)) = (jwt.claim_time("iat"), jwt.claim_time("exp")) else {
        return Err(refused("Invalid assertion: 'iat' and 'exp' are required."));
    };
    if now >= exp || iat > now + SKEW || exp.saturating_sub(iat) > MAX_GRANT_LIFETIME {
        return Err(refused(
            "Invalid assertion: expired, issued in the future, or living longer than 120 seconds.",
        ));
    }
    let jti = jwt
        .claim_str("jti")
        .filter(|j| !j.is_empty())
        .ok_or_else(|| refused("Invalid assertion: 'jti' is required."))?;
    let scope = jwt
        .claim_str("scope")
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| AadError::invalid_scope(70011, "Invalid assertion: 'scope' is required."))?
        .to_owned();
    let details = jwt.claims.get("authorization_details");
    if details.is_some_and(|d| !d.as_array().is_some_and(|a| a.iter().all(Value::is_object))) {
        return Err(AadError::invalid_request(
            9002313,
            "Invalid assertion: 'authorization_details' must be an array of objects.",
        ));
    }
    {
        let mut inner = shared.lock();
        inner.grant_jtis.retain(|_, until| *until > now);
        let key = format!("{}\0{jti}", app.client_id.to_ascii_lowercase());
        if inner.grant_jtis.insert(key, exp).is_some() {
            return Err(refused("Invalid assertion: this 'jti' was already used."));
        }
    }
    let lifetime = shared.lock().lifetimes.access.as_secs();
    let mut claims = Map::new();
    claims.insert("iss".into(), json!(shared.issuer(tid)));
    if let Some(resource) = jwt.claim_str("resource") {
        claims.insert("aud".into(), json!(resource));
    }
    claims.insert("scope".into(), json!(scope));
    claims.insert("client_id".into(), json!(app.client_id));
    claims.insert("client_amr".into(), json!("private_key_jwt"));
    claims.insert(
        "consumer".into(),
        json!({"authority": "iso6523-actorid-upis", "ID": DEV_CONSUMER}),
    );
    claims.insert("token_type".into(), json!("Bearer"));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now + lifetime));
    claims.insert("jti".into(), json!(uti()));
    if let Some(details) = details {
        claims.insert("authorization_details".into(), details.clone());
    }
    Ok(TokenResponse {
        token_type: "Bearer",
        scope: Some(scope),
        expires_in: lifetime,
        ext_expires_in: lifetime,
        access_token: sign(shared, claims)?,
        refresh_token: None,
        id_token: None,
        client_info: None,
        issued_token_type: None,
    })
}
