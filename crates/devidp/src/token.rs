//! `POST /{tenant}/oauth2/v2.0/token`: the grants, and the tokens they mint.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::aad_error::{AadError, json_response};
use super::client_auth::{self, AuthMethod, Client};
use super::config::{DevUser, stable_guid};
use super::grants;
use super::mint::{TokenResponse, pairwise_subject, sign, uti, verify_user_assertion};
use super::params::Params;
use super::scopes::{self, OidcScopes, ParsedScope, ResourceScopes};
use super::state::{
    JWT_BEARER, RefreshGrant, Shared, TOKEN_EXCHANGE, TenantPath, UserSession, now_secs,
    opaque_token, secret_key,
};

pub(crate) async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = Params::parse(&body);
    let grant_type = params
        .as_ref()
        .ok()
        .and_then(|p| p.get("grant_type"))
        .map(str::to_owned);
    shared.count_token_request(grant_type.as_deref());
    let result = params.and_then(|params| {
        let client_id = params.get("client_id").unwrap_or("-").to_owned();
        handle(&shared, &tenant, &headers, &params).inspect_err(|e| {
            tracing::info!(
                grant_type = grant_type.as_deref().unwrap_or("-"),
                client_id = %client_id,
                error = e.error,
                code = e.code,
                "dev IdP: token request refused"
            );
        })
    });
    match result {
        Ok(response) => json_response(StatusCode::OK, &response),
        Err(e) => e.to_json_response(&headers),
    }
}

fn handle(
    shared: &Shared,
    segment: &str,
    headers: &HeaderMap,
    params: &Params,
) -> Result<TokenResponse, AadError> {
    let tenant = shared
        .tenant(segment)
        .ok_or_else(|| AadError::unknown_tenant(segment))?;
    let grant_type = params.require("grant_type")?;
    let known = [
        "authorization_code",
        "refresh_token",
        "client_credentials",
        "password",
        JWT_BEARER,
        TOKEN_EXCHANGE,
    ];
    if !known.contains(&grant_type) {
        return Err(AadError::new(
            "unsupported_grant_type",
            70003,
            format!("The app requested an unsupported grant type '{grant_type}'."),
        ));
    }
    if grant_type == "client_credentials" && matches!(tenant, TenantPath::Alias(_)) {
        return Err(AadError::invalid_request(
            50059,
            "No tenant-identifying information found in either the request or implied by any provided credentials.",
        ));
    }
    // Maskinporten's grant carries no client authentication: the signed assertion is it.
    if grant_type == JWT_BEARER && grants::is_maskinporten_grant(params) {
        return grants::jwt_bearer_grant(shared, &tenant, params);
    }
    let client = client_auth::authenticate(shared, &tenant, headers, params)?;
    let mut response = match grant_type {
        TOKEN_EXCHANGE => grants::token_exchange(shared, &tenant, &client, params)?,
        "authorization_code" => authorization_code(shared, &client, params)?,
        "refresh_token" => refresh_token(shared, &client, params)?,
        "client_credentials" => client_credentials(shared, &tenant, &client, params)?,
        "password" => password(shared, &tenant, &client, params)?,
        _ => on_behalf_of(shared, &tenant, &client, params)?,
    };
    if grant_type == "client_credentials" || params.get("client_info") != Some("1") {
        response.client_info = None;
    }
    Ok(response)
}

fn authorization_code(
    shared: &Shared,
    client: &Client,
    params: &Params,
) -> Result<TokenResponse, AadError> {
    let code = params.require("code")?;
    let redirect_uri = params.require("redirect_uri")?;
    let verifier = params.get("code_verifier");
    let now = now_secs();
    let (grant, family, user, lifetimes) = {
        let mut inner = shared.lock();
        let key = secret_key(code);
        let Some(grant) = inner.codes.get(&key).cloned() else {
            return Err(AadError::invalid_grant(
                70000,
                "Provided grant is invalid or malformed: unknown authorization code.",
            ));
        };
        if let Some(family) = &grant.redeemed_family {
            // RFC 6749 §4.1.2: a replayed code revokes what it produced.
            let family = family.clone();
            inner.revoked_families.insert(family);
            return Err(AadError::invalid_grant(
                54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            ));
        }
        if now >= grant.expires_at {
            return Err(AadError::invalid_grant(
                70008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            ));
        }
        if !grant.client_id.eq_ignore_ascii_case(&client.app.client_id) {
            return Err(AadError::invalid_grant(
                70000,
                "Provided grant is invalid or malformed: the code was issued to another client.",
            ));
        }
        if grant.redirect_uri != redirect_uri {
            return Err(AadError::invalid_grant(
                50011,
                format!(
                    "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URI used to obtain the authorization code."
                ),
            ));
        }
        check_pkce(grant.code_challenge.as_deref(), verifier)?;
        let user = inner
            .find_user(&grant.session.username)
            .cloned()
            .ok_or_else(|| {
                AadError::invalid_grant(50034, "The user account does not exist in the directory.")
            })?;
        let family = uuid::Uuid::new_v4().to_string();
        if let Some(stored) = inner.codes.get_mut(&key) {
            stored.redeemed_family = Some(family.clone());
        }
        (grant, family, user, inner.lifetimes)
    };
    let all_apps = apps(shared);
    let resource = match (params.get("scope"), grant.scope.resources.first()) {
        // Microsoft extension: the code may be redeemed for any one resource.
        (Some(scope), _) => {
            ParsedScope::parse(scope, &all_apps)?.single_resource(scope, &all_apps, true)?
        }
        (None, Some(first)) => first.clone(),
        (None, None) => grant.scope.single_resource("openid", &all_apps, true)?,
    };
    let mut minted = mint_user_tokens(
        shared,
        client,
        &user,
        &grant.session,
        &resource,
        grant.scope.oidc,
        grant.nonce.as_deref(),
    )?;
    if minted.id_token.is_some() {
        shared.record_id_token(&grant.session, &user.oid, &client.app.client_id);
    }
    if grant.scope.oidc.offline_access {
        minted.refresh_token = Some(store_refresh(
            shared,
            family,
            client,
            &grant.session,
            &grant.scope,
            lifetimes.refresh.as_secs(),
        ));
    }
    Ok(minted)
}

fn refresh_token(
    shared: &Shared,
    client: &Client,
    params: &Params,
) -> Result<TokenResponse, AadError> {
    let token = params.require("refresh_token")?;
    let now = now_secs();
    let key = secret_key(token);
    let (grant, user) = {
        let mut inner = shared.lock();
        let Some(grant) = inner.refresh_tokens.get(&key).cloned() else {
            return Err(AadError::invalid_grant(
                70000,
                "Provided grant is invalid or malformed: unknown or revoked refresh token.",
            ));
        };
        if inner.revoked_families.contains(&grant.family) {
            return Err(AadError::invalid_grant(
                50173,
                "The provided grant has expired due to it being revoked.",
            ));
        }
        if grant.used {
            // RFC 9700 §4.14.2: reuse of a rotated refresh token revokes the whole family.
            inner.revoked_families.insert(grant.family.clone());
            return Err(AadError::invalid_grant(
                70008,
                "The refresh token was already redeemed. The dev IdP rotates refresh tokens; the grant has been revoked.",
            ));
        }
        if now >= grant.expires_at {
            return Err(AadError::invalid_grant(
                700082,
                "The refresh token has expired due to inactivity.",
            ));
        }
        if !grant.client_id.eq_ignore_ascii_case(&client.app.client_id) {
            return Err(AadError::invalid_grant(
                70000,
                "Provided grant is invalid or malformed: the refresh token was issued to another client.",
            ));
        }
        let user = inner
            .find_user(&grant.session.username)
            .cloned()
            .ok_or_else(|| {
                AadError::invalid_grant(50034, "The user account does not exist in the directory.")
            })?;
        (grant, user)
    };
    let all_apps = apps(shared);
    let (requested, scope_text) = match params.get("scope") {
        Some(scope) => (ParsedScope::parse(scope, &all_apps)?, scope.to_owned()),
        None => (grant.scope.clone(), String::new()),
    };
    let resource = match (params.get("scope"), grant.scope.resources.first()) {
        (None, Some(first)) => first.clone(),
        _ => requested.single_resource(&scope_text, &all_apps, true)?,
    };
    check_mfa(shared, &user, &grant.session.amr, &resource)?;
    let oidc = OidcScopes {
        openid: requested.oidc.openid || grant.scope.oidc.openid,
        profile: requested.oidc.profile || grant.scope.oidc.profile,
        email: requested.oidc.email || grant.scope.oidc.email,
        offline_access: true,
    };
    {
        let mut inner = shared.lock();
        let revoked = inner.revoked_families.contains(&grant.family);
        match inner.refresh_tokens.get_mut(&key) {
            // Checked again under the lock: two concurrent redemptions must not both succeed.
            Some(stored) if !stored.used && !revoked => stored.used = true,
            _ => {
                return Err(AadError::invalid_grant(
                    70008,
                    "The refresh token was already redeemed.",
                ));
            }
        }
    }
    let mut minted =
        mint_user_tokens(shared, client, &user, &grant.session, &resource, oidc, None)?;
    if minted.id_token.is_some() {
        shared.record_id_token(&grant.session, &user.oid, &client.app.client_id);
    }
    let lifetime = shared.lock().lifetimes.refresh.as_secs();
    minted.refresh_token = Some(store_refresh(
        shared,
        grant.family.clone(),
        client,
        &grant.session,
        &grant.scope,
        lifetime,
    ));
    Ok(minted)
}

fn password(
    shared: &Shared,
    tenant: &TenantPath,
    client: &Client,
    params: &Params,
) -> Result<TokenResponse, AadError> {
    let username = params.require("username")?;
    let password = params.require("password")?;
    let scope = params.require("scope")?;
    let user = {
        let inner = shared.lock();
        let user = inner.find_user(username).filter(|u| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                u.password.as_bytes(),
                password.as_bytes(),
            )
            .is_ok()
        });
        user.cloned().ok_or_else(|| {
            AadError::invalid_grant(
                50126,
                "Error validating credentials due to invalid username or password.",
            )
        })?
    };
    if let TenantPath::Tenant(tid) = tenant
        && !user.tenant_id.eq_ignore_ascii_case(tid)
    {
        return Err(AadError::invalid_grant(
            50034,
            format!(
                "The user account {} does not exist in the {tid} directory. To sign into this application, the account must be added to the directory.",
                user.upn
            ),
        ));
    }
    let all_apps = apps(shared);
    let parsed = ParsedScope::parse(scope, &all_apps)?;
    let resource = parsed.single_resource(scope, &all_apps, true)?;
    let session = UserSession {
        username: user.username.clone(),
        tid: user.tenant_id.clone(),
        amr: vec!["pwd".into()],
        acrs: super::state::requested_acrs(params.get("claims")),
        sid: uuid::Uuid::new_v4().to_string(),
    };
    let mut minted = mint_user_tokens(
        shared,
        client,
        &user,
        &session,
        &resource,
        parsed.oidc,
        None,
    )?;
    if parsed.oidc.offline_access {
        let lifetime = shared.lock().lifetimes.refresh.as_secs();
        let family = uuid::Uuid::new_v4().to_string();
        minted.refresh_token = Some(store_refresh(
            shared, family, client, &session, &parsed, lifetime,
        ));
    }
    Ok(minted)
}

fn client_credentials(
    shared: &Shared,
    tenant: &TenantPath,
    client: &Client,
    params: &Params,
) -> Result<TokenResponse, AadError> {
    if client.method == AuthMethod::Public {
        return Err(public_client_refused());
    }
    let TenantPath::Tenant(tid) = tenant else {
        return Err(AadError::invalid_request(
            50059,
            "No tenant-identifying information found.",
        ));
    };
    let scope = params.require("scope")?;
    let (resource_id, roles, lifetime) = {
        let inner = shared.lock();
        let resource = scopes::parse_app_scope(scope, &inner.apps)?;
        (
            resource.client_id.clone(),
            resource.app_roles.clone(),
            inner.lifetimes.access.as_secs(),
        )
    };
    let now = now_secs();
    let service_principal = stable_guid("service-principal", &client.app.client_id);
    let mut claims = Map::new();
    claims.insert("aud".into(), json!(resource_id));
    claims.insert("iss".into(), json!(shared.issuer(tid)));
    claims.insert("iat".into(), json!(now));
    claims.insert("nbf".into(), json!(now));
    claims.insert("exp".into(), json!(now + lifetime));
    claims.insert("azp".into(), json!(client.app.client_id));
    claims.insert("azpacr".into(), json!(client.method.azpacr()));
    claims.insert("idtyp".into(), json!("app"));
    claims.insert("oid".into(), json!(service_principal));
    if !roles.is_empty() {
        claims.insert("roles".into(), json!(roles));
    }
    claims.insert("sub".into(), json!(service_principal));
    claims.insert("tid".into(), json!(tid));
    claims.insert("uti".into(), json!(uti()));
    claims.insert("ver".into(), json!("2.0"));
    Ok(TokenResponse {
        token_type: "Bearer",
        scope: None,
        expires_in: lifetime,
        ext_expires_in: lifetime,
        access_token: sign(shared, claims)?,
        refresh_token: None,
        id_token: None,
        client_info: None,
        issued_token_type: None,
    })
}

fn on_behalf_of(
    shared: &Shared,
    tenant: &TenantPath,
    client: &Client,
    params: &Params,
) -> Result<TokenResponse, AadError> {
    match params.require("requested_token_use")? {
        "on_behalf_of" => {}
        other => {
            return Err(AadError::invalid_request(
                9002313,
                format!(
                    "Invalid request. 'requested_token_use' must be 'on_behalf_of', not '{other}'."
                ),
            ));
        }
    }
    if client.method == AuthMethod::Public {
        return Err(public_client_refused());
    }
    let assertion = params.require("assertion")?;
    let scope = params.require("scope")?;
    let subject = verify_user_assertion(shared, tenant, client, assertion)?;
    let user = shared
        .lock()
        .find_user_by_oid(&subject.oid)
        .cloned()
        .ok_or_else(|| {
            AadError::invalid_grant(
                50034,
                "The user account of the assertion does not exist in the directory.",
            )
        })?;
    let all_apps = apps(shared);
    let parsed = ParsedScope::parse(scope, &all_apps)?;
    let resource = parsed.single_resource(scope, &all_apps, false)?;
    check_mfa(shared, &user, &subject.session.amr, &resource)?;
    let mut minted = mint_user_tokens(
        shared,
        client,
        &user,
        &subject.session,
        &resource,
        parsed.oidc,
        None,
    )?;
    // OBO answers carry no ID token, whatever the scope.
    minted.id_token = None;
    minted.scope = Some(scopes::response_scope(
        &resource,
        OidcScopes {
            openid: false,
            profile: false,
            email: false,
            ..parsed.oidc
        },
    ));
    if parsed.oidc.offline_access {
        let lifetime = shared.lock().lifetimes.refresh.as_secs();
        let family = uuid::Uuid::new_v4().to_string();
        minted.refresh_token = Some(store_refresh(
            shared,
            family,
            client,
            &subject.session,
            &parsed,
            lifetime,
        ));
    }
    Ok(minted)
}

fn check_mfa(
    shared: &Shared,
    user: &DevUser,
    amr: &[String],
    resource: &ResourceScopes,
) -> Result<(), AadError> {
    if shared.lock().mfa_required(&user.username) && !amr.iter().any(|m| m == "mfa") {
        return Err(AadError::mfa_required(&resource.client_id));
    }
    Ok(())
}

/// PKCE S256 (RFC 7636 §4.6). Without a challenge a verifier is refused too, so a PKCE
/// downgrade is visible (RFC 9700 §4.8.2).
fn check_pkce(challenge: Option<&str>, verifier: Option<&str>) -> Result<(), AadError> {
    let mismatch = || {
        AadError::invalid_grant(
            501481,
            "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
        )
    };
    match (challenge, verifier) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(AadError::invalid_grant(
            501481,
            "A code_verifier was sent, but the authorization request had no code_challenge.",
        )),
        (Some(_), None) => Err(AadError::invalid_grant(
            501481,
            "The request must contain the 'code_verifier' parameter.",
        )),
        (Some(challenge), Some(verifier)) => {
            let well_formed = (43..=128).contains(&verifier.len())
                && verifier
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
            if !well_formed {
                return Err(mismatch());
            }
            let computed = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                verifier.as_bytes(),
            ));
            aws_lc_rs::constant_time::verify_slices_are_equal(
                computed.as_bytes(),
                challenge.as_bytes(),
            )
            .map_err(|_| mismatch())
        }
    }
}

/// Access token (and ID token when `openid`) for a signed-in user.
fn mint_user_tokens(
    shared: &Shared,
    client: &Client,
    user: &DevUser,
    session: &UserSession,
    resource: &ResourceScopes,
    oidc: OidcScopes,
    nonce: Option<&str>,
) -> Result<TokenResponse, AadError> {
    let (resource_roles, client_roles, lifetime) = {
        let inner = shared.lock();
        let roles_of = |id: &str| {
            scopes::find_app(&inner.apps, id)
                .map(|a| a.app_roles.clone())
                .unwrap_or_default()
        };
        (
            roles_of(&resource.client_id),
            roles_of(&client.app.client_id),
            inner.lifetimes.access.as_secs(),
        )
    };
    let now = now_secs();
    let common = |claims: &mut Map<String, Value>, aud: &str| {
        claims.insert("aud".into(), json!(aud));
        claims.insert("iss".into(), json!(shared.issuer(&session.tid)));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now + lifetime));
        claims.insert("name".into(), json!(user.name));
        claims.insert("oid".into(), json!(user.oid));
        claims.insert("preferred_username".into(), json!(user.upn));
        claims.insert("sid".into(), json!(session.sid));
        claims.insert("sub".into(), json!(pairwise_subject(&user.oid, aud)));
        claims.insert("tid".into(), json!(session.tid));
        claims.insert("uti".into(), json!(uti()));
        claims.insert("ver".into(), json!("2.0"));
    };

    let mut access = Map::new();
    common(&mut access, &resource.client_id);
    access.insert("azp".into(), json!(client.app.client_id));
    access.insert("azpacr".into(), json!(client.method.azpacr()));
    access.insert("scp".into(), json!(resource.scp()));
    access.insert("upn".into(), json!(user.upn));
    // v2 Entra tokens omit amr; the dev IdP keeps it so OBO can see whether MFA was done.
    access.insert("amr".into(), json!(session.amr));
    if !session.acrs.is_empty() {
        access.insert("acrs".into(), json!(session.acrs));
    }
    insert_roles(&mut access, &user.roles, &resource_roles);
    add_custom_claims(&mut access, user);

    let id_token = if oidc.openid {
        let mut id = Map::new();
        common(&mut id, &client.app.client_id);
        if let Some(nonce) = nonce {
            id.insert("nonce".into(), json!(nonce));
        }
        if oidc.email
            && let Some(email) = &user.email
        {
            id.insert("email".into(), json!(email));
        }
        insert_roles(&mut id, &user.roles, &client_roles);
        add_custom_claims(&mut id, user);
        Some(sign(shared, id)?)
    } else {
        None
    };
    let client_info =
        URL_SAFE_NO_PAD.encode(json!({"uid": user.oid, "utid": session.tid}).to_string());
    Ok(TokenResponse {
        token_type: "Bearer",
        scope: Some(scopes::response_scope(resource, oidc)),
        expires_in: lifetime,
        ext_expires_in: lifetime,
        access_token: sign(shared, access)?,
        refresh_token: None,
        id_token,
        client_info: Some(client_info),
        issued_token_type: None,
    })
}

fn store_refresh(
    shared: &Shared,
    family: String,
    client: &Client,
    session: &UserSession,
    scope: &ParsedScope,
    lifetime: u64,
) -> String {
    let token = opaque_token("1.A", 6);
    let now = now_secs();
    let mut inner = shared.lock();
    inner.purge_expired(now);
    inner.refresh_tokens.insert(
        secret_key(&token),
        RefreshGrant {
            family,
            client_id: client.app.client_id.clone(),
            session: session.clone(),
            scope: scope.clone(),
            expires_at: now + lifetime,
            used: false,
        },
    );
    token
}

/// The user's roles that the audience app defines; omitted when none.
fn insert_roles(claims: &mut Map<String, Value>, user_roles: &[String], app_roles: &[String]) {
    let roles: Vec<&String> = user_roles
        .iter()
        .filter(|r| app_roles.contains(r))
        .collect();
    if !roles.is_empty() {
        claims.insert("roles".into(), json!(roles));
    }
}

fn add_custom_claims(claims: &mut Map<String, Value>, user: &DevUser) {
    for (name, value) in &user.claims {
        claims.entry(name.clone()).or_insert_with(|| value.clone());
    }
}

fn apps(shared: &Shared) -> Vec<super::config::DevApp> {
    shared.lock().apps.clone()
}

fn public_client_refused() -> AadError {
    AadError::invalid_client(
        7000218,
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_rules() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(check_pkce(Some(challenge), Some(verifier)).is_ok());
        assert!(check_pkce(None, None).is_ok());
        assert!(check_pkce(Some(challenge), None).is_err());
        assert!(check_pkce(None, Some(verifier)).is_err());
        assert!(check_pkce(Some(challenge), Some(&verifier.replace('d', "e"))).is_err());
        // The challenge itself used as verifier (what `plain` would do) does not pass.
        assert!(check_pkce(Some(challenge), Some(challenge)).is_err());
        assert!(check_pkce(Some(challenge), Some("short")).is_err());
    }

    #[test]
    fn pairwise_subjects_differ_per_app_and_have_entra_length() {
        let a = pairwise_subject("oid", "app-a");
        assert_eq!(a.len(), 43);
        assert_ne!(a, pairwise_subject("oid", "app-b"));
        assert_eq!(a, pairwise_subject("OID", "APP-A"));
        assert_eq!(uti().len(), 22);
    }

    #[test]
    fn obo_assertion_audience_may_be_the_app_id_uri_of_the_caller() {
        use crate::keys::SigningKey;
        use crate::{
            ALICE_OID, DEFAULT_TENANT_ID, DOWNSTREAM_APP_ID_URI, DevIdpConfig, TOLLGATE_APP_ID_URI,
            TOLLGATE_CLIENT_ID,
        };
        let cfg = DevIdpConfig::default();
        let shared = Shared::new(
            "http://127.0.0.1:9".into(),
            &cfg,
            SigningKey::generate().unwrap(),
        )
        .unwrap();
        let app = cfg
            .apps
            .iter()
            .find(|a| a.client_id == TOLLGATE_CLIENT_ID)
            .unwrap()
            .clone();
        let client = Client {
            app,
            method: AuthMethod::Secret,
        };
        let tenant = TenantPath::Tenant(DEFAULT_TENANT_ID.into());
        let assertion = |aud: &str| {
            let now = now_secs();
            let claims = json!({
                "aud": aud, "iss": shared.issuer(DEFAULT_TENANT_ID), "tid": DEFAULT_TENANT_ID,
                "oid": ALICE_OID, "scp": "access_as_user", "iat": now, "exp": now + 60,
            });
            shared.sign(&claims).unwrap()
        };
        match verify_user_assertion(&shared, &tenant, &client, &assertion(TOLLGATE_APP_ID_URI)) {
            Ok(subject) => assert_eq!(subject.oid, ALICE_OID),
            Err(e) => panic!("App ID URI audience refused: {e:?}"),
        }
        let now = now_secs();
        let base = json!({
            "aud": TOLLGATE_CLIENT_ID, "iss": shared.issuer(DEFAULT_TENANT_ID), "tid": DEFAULT_TENANT_ID,
            "oid": ALICE_OID, "scp": "access_as_user", "iat": now, "exp": now + 60,
        });
        let with = |name: &str, value: Value| {
            let mut claims = base.clone();
            claims[name] = value;
            shared.sign(&claims).unwrap()
        };
        let other_tenant = "12345678-aaaa-bbbb-cccc-123456789012";
        for (what, token, code) in [
            (
                "issuer of another host",
                with("iss", json!("https://login.microsoftonline.com/x/v2.0")),
                50013,
            ),
            ("unknown tenant", with("tid", json!(other_tenant)), 50013),
            ("not yet valid", with("nbf", json!(now + 600)), 500133),
            (
                "no exp",
                {
                    let mut c = base.clone();
                    c.as_object_mut().unwrap().remove("exp");
                    shared.sign(&c).unwrap()
                },
                500133,
            ),
            ("idtyp app", with("idtyp", json!("app")), 50013),
            (
                "no oid",
                {
                    let mut c = base.clone();
                    c.as_object_mut().unwrap().remove("oid");
                    shared.sign(&c).unwrap()
                },
                50013,
            ),
        ] {
            let code_got = verify_user_assertion(&shared, &tenant, &client, &token)
                .err()
                .map(|e| e.code);
            assert_eq!(code_got, Some(code), "{what}");
        }
        assert!(
            verify_user_assertion(&shared, &tenant, &client, &shared.sign(&base).unwrap()).is_ok()
        );
        for wrong in [DOWNSTREAM_APP_ID_URI, &TOLLGATE_APP_ID_URI.to_uppercase()] {
            let code = verify_user_assertion(&shared, &tenant, &client, &assertion(wrong))
                .err()
                .map(|e| e.code);
            assert_eq!(code, Some(500131), "{wrong}");
        }
    }
}
