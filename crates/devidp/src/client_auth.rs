//! Client authentication at the token endpoint: `client_secret_basic` (RFC 6749 §2.3.1),
//! `client_secret_post`, `private_key_jwt` (RFC 7523 §2.2) and federated credentials.

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::FEDERATED_AUDIENCE;
use super::aad_error::AadError;
use super::config::DevApp;
use super::jwt::UnverifiedJwt;
use super::keys::{AssertionAlg, PublicJwk};
use super::params::Params;
use super::scopes;
use super::state::{Shared, TenantPath, now_secs};

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How the client proved its identity; becomes `azpacr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AuthMethod {
    /// Public client: no credential.
    Public,
    Secret,
    Assertion,
}

impl AuthMethod {
    pub(crate) fn azpacr(self) -> &'static str {
        match self {
            AuthMethod::Public => "0",
            AuthMethod::Secret => "1",
            AuthMethod::Assertion => "2",
        }
    }
}

/// An authenticated (or public) client.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    pub(crate) app: DevApp,
    pub(crate) method: AuthMethod,
}

/// Identifies and authenticates the client of a token request.
pub(crate) fn authenticate(
    shared: &Shared,
    tenant: &TenantPath,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Client, AadError> {
    let basic = basic_credentials(headers)?;
    let body_id = params.get("client_id");
    let client_id = match (&basic, body_id) {
        (Some((id, _)), Some(body)) if !id.eq_ignore_ascii_case(body) => {
            return Err(AadError::invalid_request(
                9002313,
                "Invalid request. Request is malformed or invalid: client_id in the body differs from the Authorization header.",
            ));
        }
        (Some((id, _)), _) => id.clone(),
        (None, Some(body)) => body.to_owned(),
        (None, None) => return Err(AadError::missing_parameter("client_id")),
    };
    let app = {
        let inner = shared.lock();
        scopes::find_app(&inner.apps, &client_id).cloned()
    };
    let Some(app) = app else {
        return Err(AadError::new(
            "unauthorized_client",
            700016,
            format!(
                "Application with identifier '{client_id}' was not found in the directory '{}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant.",
                tenant.segment()
            ),
        ));
    };

    let body_secret = params.get("client_secret");
    let assertion = params.get("client_assertion");
    let presented = usize::from(basic.is_some())
        + usize::from(body_secret.is_some())
        + usize::from(assertion.is_some());
    if presented > 1 {
        return Err(AadError::invalid_request(
            9002313,
            "Invalid request. Request is malformed or invalid: more than one client authentication method was used.",
        ));
    }
    if app.public_client {
        if presented > 0 {
            return Err(AadError::invalid_client(
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            ));
        }
        return Ok(Client {
            app,
            method: AuthMethod::Public,
        });
    }

    let secret = basic.as_ref().map(|(_, s)| s.as_str()).or(body_secret);
    if let Some(secret) = secret {
        let matches = app.secret.as_deref().is_some_and(|expected| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                expected.as_bytes(),
                secret.as_bytes(),
            )
            .is_ok()
        });
        if !matches {
            return Err(AadError::invalid_client(
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                    app.client_id
                ),
            ));
        }
        return Ok(Client {
            app,
            method: AuthMethod::Secret,
        });
    }
    if let Some(assertion) = assertion {
        if params.get("client_assertion_type") != Some(CLIENT_ASSERTION_TYPE) {
            return Err(AadError::invalid_request(
                9002313,
                format!(
                    "Invalid request. 'client_assertion_type' must be '{CLIENT_ASSERTION_TYPE}'."
                ),
            ));
        }
        verify_client_assertion(shared, tenant, &app, assertion)?;
        return Ok(Client {
            app,
            method: AuthMethod::Assertion,
        });
    }
    Err(AadError::invalid_client(
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    ))
}

fn verify_client_assertion(
    shared: &Shared,
    tenant: &TenantPath,
    app: &DevApp,
    assertion: &str,
) -> Result<(), AadError> {
    let jwt = UnverifiedJwt::parse(assertion).map_err(|_| malformed())?;
    let Some(alg) = AssertionAlg::from_header(jwt.header_str("alg")) else {
        return Err(AadError::invalid_request(
            5002730,
            "Invalid JWT token. Unsupported key for the signing algorithm: client assertions must be signed with RS256, PS256, ES256 or ES384.",
        ));
    };
    let iss = jwt.claim_str("iss").ok_or_else(malformed)?;
    let client_key = app.client_id.to_ascii_lowercase();
    if iss.eq_ignore_ascii_case(&app.client_id) {
        let keys = shared
            .lock()
            .client_keys
            .get(&client_key)
            .cloned()
            .unwrap_or_default();
        let key = select_key(&keys, &jwt)
            .ok_or_else(|| signature_failed(app, "The key was not found."))?;
        if !key.verify(alg, jwt.signing_input.as_bytes(), &jwt.signature) {
            return Err(signature_failed(
                app,
                "The provided signature value did not match the expected signature value.",
            ));
        }
        if !jwt
            .claim_str("sub")
            .is_some_and(|s| s.eq_ignore_ascii_case(&app.client_id))
        {
            return Err(AadError::invalid_request(
                50048,
                "Subject must match Issuer claim in the client assertion.",
            ));
        }
        let aud = match jwt.claims.get("aud") {
            Some(Value::String(aud)) => aud.as_str(),
            // Entra refuses an array audience in client assertions.
            _ => return Err(malformed()),
        };
        let mut accepted = vec![shared.token_endpoint(tenant.segment())];
        if let TenantPath::Tenant(tid) = tenant {
            accepted.push(shared.issuer(tid));
        }
        if !accepted.iter().any(|a| a == aud) {
            return Err(AadError::invalid_client(
                700023,
                format!(
                    "Invalid audience claim. The client assertion audience '{aud}' must be the token endpoint '{}'.",
                    accepted[0]
                ),
            ));
        }
        if jwt.claim_str("jti").is_none_or(str::is_empty) {
            return Err(malformed());
        }
        check_time_range(&jwt)?;
        return Ok(());
    }

    let creds = shared
        .lock()
        .federated
        .get(&client_key)
        .cloned()
        .unwrap_or_default();
    let sub = jwt.claim_str("sub").unwrap_or_default();
    let no_record = |code: u32, what: &str| {
        AadError::invalid_request(
            code,
            format!(
                "No matching federated identity record found for presented assertion {what}. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{FEDERATED_AUDIENCE}'."
            ),
        )
    };
    if !creds.iter().any(|c| c.issuer == iss) {
        return Err(no_record(700211, "issuer"));
    }
    let Some(cred) = creds.iter().find(|c| c.issuer == iss && c.subject == sub) else {
        return Err(no_record(700213, "subject"));
    };
    let verified = match select_key(&cred.keys, &jwt) {
        Some(key) => key.verify(alg, jwt.signing_input.as_bytes(), &jwt.signature),
        // Without a key hint, any of the issuer's keys may have signed it.
        None if jwt.header_str("kid").is_none() => cred
            .keys
            .iter()
            .any(|k| k.verify(alg, jwt.signing_input.as_bytes(), &jwt.signature)),
        None => false,
    };
    if !verified {
        return Err(signature_failed(
            app,
            "The federated assertion signature did not verify with the issuer's keys.",
        ));
    }
    let audience_ok = match jwt.claims.get("aud") {
        Some(Value::String(aud)) => aud == FEDERATED_AUDIENCE,
        Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(FEDERATED_AUDIENCE)),
        _ => false,
    };
    if !audience_ok {
        return Err(no_record(700212, "audience"));
    }
    check_time_range(&jwt)
}

/// Picks the registered key named by the header: `kid`, then `x5t#S256`, then `x5t`.
pub(crate) fn select_key<'a>(keys: &'a [PublicJwk], jwt: &UnverifiedJwt) -> Option<&'a PublicJwk> {
    if let Some(kid) = jwt.header_str("kid")
        && let Some(key) = keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    {
        return Some(key);
    }
    if let Some(thumb) = jwt.header_str("x5t#S256") {
        return keys.iter().find(|k| k.x5t_s256.as_deref() == Some(thumb));
    }
    if let Some(thumb) = jwt.header_str("x5t") {
        return keys.iter().find(|k| k.x5t.as_deref() == Some(thumb));
    }
    None
}

fn check_time_range(jwt: &UnverifiedJwt) -> Result<(), AadError> {
    let now = now_secs();
    let exp = jwt.claim_time("exp").ok_or_else(malformed)?;
    let nbf_in_future = jwt.claim_time("nbf").is_some_and(|nbf| nbf > now);
    if now >= exp || nbf_in_future {
        return Err(AadError::invalid_client(
            700024,
            "Client assertion is not within its valid time range.",
        ));
    }
    Ok(())
}

fn malformed() -> AadError {
    AadError::invalid_request(50027, "JWT token is invalid or malformed.")
}

fn signature_failed(app: &DevApp, reason: &str) -> AadError {
    AadError::invalid_client(
        700027,
        format!(
            "Client assertion failed signature validation. [Reason - {reason}] Client app ID: {}.",
            app.client_id
        ),
    )
}

/// `Authorization: Basic`, with client id and secret form-decoded as RFC 6749 §2.3.1 requires.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, AadError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || {
        AadError::invalid_request(
            9002313,
            "Invalid request. The Authorization header is malformed.",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, credentials) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Ok(None);
    }
    let decoded = STANDARD
        .decode(credentials.trim())
        .map_err(|_| malformed())?;
    let text = String::from_utf8(decoded).map_err(|_| malformed())?;
    let (id, secret) = text.split_once(':').ok_or_else(malformed)?;
    let id = form_decode(id).ok_or_else(malformed)?;
    let secret = form_decode(secret).ok_or_else(malformed)?;
    Ok(Some((id, secret)))
}

/// `application/x-www-form-urlencoded` decoding of one value: `+` is a space, `%XX` a byte.
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding_follows_rfc6749_2_3_1() {
        assert_eq!(form_decode("a+b%3Ac%25%2B").as_deref(), Some("a b:c%+"));
        assert_eq!(form_decode("plain").as_deref(), Some("plain"));
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%4"), None);
        assert_eq!(form_decode("%C3%A6").as_deref(), Some("æ"));
    }

    #[test]
    fn keys_are_selected_by_kid_then_certificate_thumbprints() {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use serde_json::json;
        let jwk = |kid: &str, cert: &[u8]| {
            let key = crate::keys::SigningKey::generate().unwrap();
            let mut jwk = key.public_jwk("x");
            jwk["kid"] = json!(kid);
            jwk["x5c"] = json!([STANDARD.encode(cert)]);
            PublicJwk::parse(&jwk).unwrap()
        };
        let keys = [jwk("a", b"cert-a"), jwk("b", b"cert-b")];
        let token = |header: serde_json::Value| {
            let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
            UnverifiedJwt::parse(&format!("{}.{}.c2ln", b64(&header), b64(&json!({})))).unwrap()
        };
        let picked = |header| select_key(&keys, &token(header)).and_then(|k| k.kid.clone());
        assert_eq!(picked(json!({"kid": "b"})).as_deref(), Some("b"));
        let s256 = keys[1].x5t_s256.clone().unwrap();
        let sha1 = keys[0].x5t.clone().unwrap();
        assert_eq!(picked(json!({"x5t#S256": s256})).as_deref(), Some("b"));
        assert_eq!(picked(json!({"x5t": sha1})).as_deref(), Some("a"));
        assert_eq!(
            picked(json!({"kid": "zzz", "x5t#S256": s256})).as_deref(),
            Some("b")
        );
        assert_eq!(picked(json!({"kid": "zzz"})), None);
        assert_eq!(picked(json!({})), None);
    }

    #[test]
    fn basic_header_parsing() {
        let mut headers = HeaderMap::new();
        assert!(basic_credentials(&headers).unwrap().is_none());
        let creds = STANDARD.encode("my%20id:s%3Acret+x");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {creds}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers).unwrap(),
            Some(("my id".into(), "s:cret x".into()))
        );
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(basic_credentials(&headers).is_err());
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode("nocolon"))
                .parse()
                .unwrap(),
        );
        assert!(basic_credentials(&headers).is_err());
    }
}
