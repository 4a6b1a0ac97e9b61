//! The dev IdP's in-memory state: keys, users, apps, issued codes and refresh-token families,
//! sign-in sessions, settings and statistics. Held in one mutex that is never kept across an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use super::config::{DevApp, DevIdpConfig, DevUser, FederatedCredential};
use super::keys::{self, PublicJwk, SignError, SigningKey};
use super::scopes::{self, ParsedScope};
use super::sessions::{DELIVERY_TIMEOUT, Sessions};
use super::{DEFAULT_TENANT_ID, DEV_PASSWORD, DevIdpError, SECOND_TENANT_ID};

/// The jwt-bearer grant type; counted in statistics as `jwt-bearer`.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Grant types counted under their own name; anything else counts as `unsupported`, so a
/// client cannot grow the statistics map without bound.
pub(crate) const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const COUNTED_GRANTS: [&str; 6] = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "jwt-bearer",
    "token-exchange",
];

/// State shared by the HTTP handlers and the [`super::DevIdpHandle`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) base_url: String,
    inner: Mutex<Inner>,
    http: reqwest::Client,
    /// For back-channel logout: bounded, and following no redirects (a POST must not turn into
    /// a GET elsewhere).
    pub(crate) backchannel_http: reqwest::Client,
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// Published keys, oldest first; the last one signs.
    keys: Vec<Arc<SigningKey>>,
    pub(crate) users: Vec<DevUser>,
    pub(crate) apps: Vec<DevApp>,
    /// Keys for `private_key_jwt`, by lower-case client id.
    pub(crate) client_keys: HashMap<String, Vec<PublicJwk>>,
    /// Federated credentials, by lower-case client id.
    pub(crate) federated: HashMap<String, Vec<Federated>>,
    /// Lower-case usernames that must have completed MFA for OBO and refresh.
    mfa_required: HashSet<String>,
    pub(crate) lifetimes: Lifetimes,
    /// Authorization codes by hash of the code.
    pub(crate) codes: HashMap<String, CodeGrant>,
    /// Refresh tokens by hash of the token.
    pub(crate) refresh_tokens: HashMap<String, RefreshGrant>,
    /// Families revoked because a code or refresh token was replayed.
    pub(crate) revoked_families: HashSet<String>,
    /// `jti`s of jwt_bearer grant assertions already used, with their `exp`: each is good once.
    pub(crate) grant_jtis: HashMap<String, u64>,
    /// Sign-in sessions and the apps that received an ID token in them.
    pub(crate) sessions: Sessions,
    stats: BTreeMap<String, u64>,
    tenants: Vec<String>,
}

/// Token lifetimes, adjustable at run time.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub(crate) struct Lifetimes {
    #[serde(rename = "access_token_lifetime_secs", serialize_with = "secs")]
    pub(crate) access: Duration,
    #[serde(rename = "refresh_token_lifetime_secs", serialize_with = "secs")]
    pub(crate) refresh: Duration,
    #[serde(rename = "code_lifetime_secs", serialize_with = "secs")]
    pub(crate) code: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

#[derive(Clone, Debug)]
pub(crate) struct Federated {
    pub(crate) issuer: String,
    pub(crate) subject: String,
    pub(crate) keys: Vec<PublicJwk>,
}

/// Who signed in, how, and in which session.
#[derive(Clone, Debug)]
pub(crate) struct UserSession {
    pub(crate) username: String,
    pub(crate) tid: String,
    pub(crate) amr: Vec<String>,
    /// Conditional Access authentication contexts satisfied at sign-in (`acrs`), from a
    /// `claims` request for them.
    pub(crate) acrs: Vec<String>,
    pub(crate) sid: String,
}

/// The authentication contexts a `claims` request asks for (OpenID Connect Core §5.5 with
/// Entra's `acrs` claim):
/// `{"access_token":{"acrs":{"essential":true,"value":"c1"}}}`, or `values` with several. The
/// dev IdP satisfies every one it is asked for.
pub(crate) fn requested_acrs(claims: Option<&str>) -> Vec<String> {
    let Some(request) = claims.and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok())
    else {
        return Vec::new();
    };
    let acrs = &request["access_token"]["acrs"];
    let mut ids: Vec<String> = acrs["value"]
        .as_str()
        .map(str::to_owned)
        .into_iter()
        .collect();
    if let Some(values) = acrs["values"].as_array() {
        ids.extend(values.iter().filter_map(|v| v.as_str()).map(str::to_owned));
    }
    ids
}

#[derive(Clone, Debug)]
pub(crate) struct CodeGrant {
    pub(crate) client_id: String,
    pub(crate) redirect_uri: String,
    pub(crate) scope: ParsedScope,
    pub(crate) nonce: Option<String>,
    /// S256 challenge, when PKCE was used.
    pub(crate) code_challenge: Option<String>,
    pub(crate) session: UserSession,
    pub(crate) expires_at: u64,
    /// Set when the code is redeemed; a replay revokes this family.
    pub(crate) redeemed_family: Option<String>,
}

#[derive(Clone, Debug)]
pub(crate) struct RefreshGrant {
    pub(crate) family: String,
    pub(crate) client_id: String,
    pub(crate) session: UserSession,
    /// The scope originally granted: its first resource is the default for redemption.
    pub(crate) scope: ParsedScope,
    pub(crate) expires_at: u64,
    pub(crate) used: bool,
}

/// The tenant segment of a request path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TenantPath {
    Tenant(String),
    Alias(&'static str),
}

impl TenantPath {
    pub(crate) fn segment(&self) -> &str {
        match self {
            TenantPath::Tenant(t) => t,
            TenantPath::Alias(a) => a,
        }
    }
}

impl Shared {
    pub(crate) fn new(
        base_url: String,
        cfg: &DevIdpConfig,
        key: SigningKey,
    ) -> Result<Self, DevIdpError> {
        let mut client_keys = HashMap::new();
        let mut federated = HashMap::new();
        for app in &cfg.apps {
            let id = app.client_id.to_ascii_lowercase();
            let parsed = app
                .keys
                .iter()
                .map(PublicJwk::parse)
                .collect::<Result<Vec<_>, _>>()
                .map_err(DevIdpError::InvalidConfig)?;
            client_keys.insert(id.clone(), parsed);
            let creds = app
                .federated_credentials
                .iter()
                .map(parse_federated)
                .collect::<Result<Vec<_>, _>>()
                .map_err(DevIdpError::InvalidConfig)?;
            federated.insert(id, creds);
        }
        let mut tenants = vec![DEFAULT_TENANT_ID.to_owned(), SECOND_TENANT_ID.to_owned()];
        for user in &cfg.users {
            let tid = user.tenant_id.to_ascii_lowercase();
            if !tenants.contains(&tid) {
                tenants.push(tid);
            }
        }
        let http = reqwest::Client::builder().no_proxy().build()?;
        let backchannel_http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(DELIVERY_TIMEOUT)
            .build()?;
        let inner = Inner {
            keys: vec![Arc::new(key)],
            users: cfg.users.clone(),
            apps: cfg.apps.clone(),
            client_keys,
            federated,
            mfa_required: cfg
                .users
                .iter()
                .filter(|u| u.mfa_required)
                .map(|u| u.username.to_ascii_lowercase())
                .collect(),
            lifetimes: Lifetimes {
                access: cfg.access_token_lifetime,
                refresh: cfg.refresh_token_lifetime,
                code: cfg.code_lifetime,
            },
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            revoked_families: HashSet::new(),
            grant_jtis: HashMap::new(),
            sessions: Sessions::default(),
            stats: BTreeMap::new(),
            tenants,
        };
        Ok(Self {
            base_url,
            inner: Mutex::new(inner),
            http,
            backchannel_http,
        })
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent, so a panic elsewhere does not
        // make the state unusable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn issuer(&self, tid: &str) -> String {
        format!("{}/{tid}/v2.0", self.base_url)
    }

    pub(crate) fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.base_url)
    }

    pub(crate) fn tenant(&self, segment: &str) -> Option<TenantPath> {
        match segment.to_ascii_lowercase().as_str() {
            "common" => Some(TenantPath::Alias("common")),
            "organizations" => Some(TenantPath::Alias("organizations")),
            tid => self
                .lock()
                .tenants
                .iter()
                .any(|t| t == tid)
                .then(|| TenantPath::Tenant(tid.to_owned())),
        }
    }

    pub(crate) fn current_key(&self) -> Arc<SigningKey> {
        let inner = self.lock();
        // `keys` is never empty: it starts with one key and rotation always adds one.
        Arc::clone(&inner.keys[inner.keys.len() - 1])
    }

    pub(crate) fn published_keys(&self) -> Vec<Arc<SigningKey>> {
        self.lock().keys.clone()
    }

    pub(crate) fn find_key(&self, kid: &str) -> Option<Arc<SigningKey>> {
        self.lock().keys.iter().find(|k| k.kid == kid).cloned()
    }

    pub(crate) fn sign(&self, claims: &Value) -> Result<String, SignError> {
        self.current_key().sign_jwt(claims)
    }

    pub(crate) fn install_key(&self, key: SigningKey, drop_previous: bool) -> String {
        let kid = key.kid.clone();
        let mut inner = self.lock();
        if drop_previous {
            inner.keys.clear();
        }
        inner.keys.push(Arc::new(key));
        tracing::info!(kid = %kid, drop_previous, "dev IdP: signing key rotated");
        kid
    }

    pub(crate) fn set_require_mfa(&self, user: &str, required: bool) -> bool {
        let mut inner = self.lock();
        let Some(username) = inner
            .find_user(user)
            .map(|u| u.username.to_ascii_lowercase())
        else {
            return false;
        };
        if required {
            inner.mfa_required.insert(username);
        } else {
            inner.mfa_required.remove(&username);
        }
        true
    }

    pub(crate) fn update_lifetimes(&self, f: impl FnOnce(&mut Lifetimes)) -> Lifetimes {
        let mut inner = self.lock();
        f(&mut inner.lifetimes);
        inner.lifetimes
    }

    pub(crate) fn count_token_request(&self, grant_type: Option<&str>) {
        let name = stats_name(grant_type.unwrap_or(""));
        *self.lock().stats.entry(name.to_owned()).or_default() += 1;
    }

    pub(crate) fn token_requests(&self, grant_type: &str) -> u64 {
        self.lock()
            .stats
            .get(stats_name(grant_type))
            .copied()
            .unwrap_or(0)
    }

    pub(crate) fn stats(&self) -> BTreeMap<String, u64> {
        self.lock().stats.clone()
    }

    pub(crate) fn register_client_key(
        &self,
        client_id: &str,
        jwk: &Value,
    ) -> Result<(), DevIdpError> {
        let key = PublicJwk::parse(jwk).map_err(DevIdpError::InvalidJwk)?;
        let mut inner = self.lock();
        let id = inner.known_app_id(client_id)?;
        inner.client_keys.entry(id).or_default().push(key);
        Ok(())
    }

    pub(crate) fn register_federated(
        &self,
        client_id: &str,
        credential: &FederatedCredential,
    ) -> Result<(), DevIdpError> {
        let federated = parse_federated(credential).map_err(DevIdpError::InvalidJwk)?;
        let mut inner = self.lock();
        let id = inner.known_app_id(client_id)?;
        inner.federated.entry(id).or_default().push(federated);
        Ok(())
    }

    pub(crate) async fn password_token(
        &self,
        user: &str,
        client_id: &str,
        scope: &str,
        claims: Option<&str>,
    ) -> Result<String, DevIdpError> {
        let (tid, username, password, secret) = {
            let inner = self.lock();
            let app = scopes::find_app(&inner.apps, client_id)
                .ok_or_else(|| DevIdpError::UnknownApp(client_id.to_owned()))?;
            let secret = app.secret.clone();
            // An unknown user still goes through the real request, so the caller sees the
            // dev IdP's own refusal.
            match inner.find_user(user) {
                Some(u) => (
                    u.tenant_id.clone(),
                    u.username.clone(),
                    u.password.clone(),
                    secret,
                ),
                None => (
                    DEFAULT_TENANT_ID.to_owned(),
                    user.to_owned(),
                    DEV_PASSWORD.to_owned(),
                    secret,
                ),
            }
        };
        let mut form = vec![
            ("grant_type", "password"),
            ("client_id", client_id),
            ("username", username.as_str()),
            ("password", password.as_str()),
            ("scope", scope),
        ];
        if let Some(secret) = &secret {
            form.push(("client_secret", secret.as_str()));
        }
        if let Some(claims) = claims {
            form.push(("claims", claims));
        }
        let response = self
            .http
            .post(self.token_endpoint(&tid))
            .form(&form)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
        match (status.is_success(), text("access_token")) {
            (true, Some(token)) => Ok(token),
            _ => Err(DevIdpError::TokenRequest {
                status: status.as_u16(),
                error: text("error").unwrap_or_else(|| "unknown".into()),
                description: text("error_description").unwrap_or_default(),
            }),
        }
    }
}

impl Inner {
    /// A user by username or upn, case-insensitively.
    pub(crate) fn find_user(&self, login: &str) -> Option<&DevUser> {
        self.users
            .iter()
            .find(|u| u.username.eq_ignore_ascii_case(login) || u.upn.eq_ignore_ascii_case(login))
    }

    pub(crate) fn find_user_by_oid(&self, oid: &str) -> Option<&DevUser> {
        self.users.iter().find(|u| u.oid.eq_ignore_ascii_case(oid))
    }

    pub(crate) fn mfa_required(&self, username: &str) -> bool {
        self.mfa_required.contains(&username.to_ascii_lowercase())
    }

    fn known_app_id(&self, client_id: &str) -> Result<String, DevIdpError> {
        scopes::find_app(&self.apps, client_id)
            .map(|a| a.client_id.to_ascii_lowercase())
            .ok_or_else(|| DevIdpError::UnknownApp(client_id.to_owned()))
    }

    /// Drops expired codes and refresh tokens, so a long-running dev IdP does not grow forever.
    pub(crate) fn purge_expired(&mut self, now: u64) {
        self.codes.retain(|_, c| c.expires_at > now);
        self.refresh_tokens.retain(|_, r| r.expires_at > now);
    }
}

fn parse_federated(credential: &FederatedCredential) -> Result<Federated, String> {
    if credential.issuer.is_empty() || credential.subject.is_empty() {
        return Err("a federated credential needs an issuer and a subject".into());
    }
    Ok(Federated {
        issuer: credential.issuer.clone(),
        subject: credential.subject.clone(),
        keys: keys::parse_jwks(&credential.jwks)?,
    })
}

fn stats_name(grant_type: &str) -> &str {
    let name = match grant_type {
        JWT_BEARER => "jwt-bearer",
        TOKEN_EXCHANGE => "token-exchange",
        other => other,
    };
    COUNTED_GRANTS
        .iter()
        .copied()
        .find(|g| *g == name)
        .unwrap_or("unsupported")
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An unguessable opaque value (codes, refresh tokens) with a recognisable prefix: `blocks`
/// random v4 UUIDs (122 random bits each), base64url-encoded.
pub(crate) fn opaque_token(prefix: &str, blocks: usize) -> String {
    let bytes: Vec<u8> = (0..blocks)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect();
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Storage key for a secret value: its SHA-256, so the maps never hold usable tokens.
pub(crate) fn secret_key(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        value.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_names_normalise_jwt_bearer_and_bound_unknown_grants() {
        assert_eq!(stats_name(JWT_BEARER), "jwt-bearer");
        assert_eq!(stats_name("jwt-bearer"), "jwt-bearer");
        assert_eq!(stats_name("password"), "password");
        assert_eq!(stats_name("urn:something:else"), "unsupported");
        assert_eq!(stats_name(""), "unsupported");
    }

    #[test]
    fn opaque_tokens_are_distinct() {
        let a = opaque_token("1.", 3);
        assert!(a.starts_with("1."));
        assert_ne!(a, opaque_token("1.", 3));
        assert_ne!(secret_key(&a), a);
    }
}
