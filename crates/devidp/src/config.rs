//! Configuration of the dev IdP: built-in tenants, apps and users, and the TOML file that adds
//! to them.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{
    ALICE, ALICE_OID, ALICE_UPN, BOB, BOB_OID, BOB_UPN, CAROL, CAROL_OID, CAROL_UPN,
    DEFAULT_LISTEN, DEFAULT_TENANT_ID, DEV_PASSWORD, DOWNSTREAM_APP_ID_URI, DOWNSTREAM_CLIENT_ID,
    DOWNSTREAM_CLIENT_SECRET, DevIdpError, FRONTEND_CLIENT_ID, GRAPH_APP_ID_URI, GRAPH_CLIENT_ID,
    SECOND_TENANT_ID, TOLLGATE_APP_ID_URI, TOLLGATE_CLIENT_ID, TOLLGATE_CLIENT_SECRET, keys,
};

/// Configuration of the dev IdP. `Default` is the built-in set of users and apps.
///
/// In TOML, durations are human strings (`"1h"`, `"90s"`) or integer seconds.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevIdpConfig {
    /// Listen address; port 0 picks a free port. Default `127.0.0.1:9400`.
    pub listen: SocketAddr,
    /// PKCS#8 PEM file holding the signing key; created on first start when missing. Without
    /// it, the key is generated at every start.
    pub key_file: Option<PathBuf>,
    /// Users who can sign in.
    pub users: Vec<DevUser>,
    /// Registered applications (clients and resources), usable from every tenant.
    pub apps: Vec<DevApp>,
    /// Lifetime of access and ID tokens (default 1 hour).
    #[serde(deserialize_with = "de_duration")]
    pub access_token_lifetime: Duration,
    /// Lifetime of refresh tokens (default 90 days, sliding: each redemption starts a new one).
    #[serde(deserialize_with = "de_duration")]
    pub refresh_token_lifetime: Duration,
    /// Lifetime of authorization codes (default 10 minutes).
    #[serde(deserialize_with = "de_duration")]
    pub code_lifetime: Duration,
}

impl Default for DevIdpConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            key_file: None,
            users: builtin_users(),
            apps: builtin_apps(),
            access_token_lifetime: Duration::from_secs(3600),
            refresh_token_lifetime: Duration::from_secs(90 * 24 * 3600),
            code_lifetime: Duration::from_secs(600),
        }
    }
}

impl DevIdpConfig {
    /// Reads a TOML file. Users and apps it lists are added to the built-ins; one with the
    /// username or client id of a built-in replaces it.
    ///
    /// ```no_run
    /// # fn f() -> Result<(), tollgate_devidp::DevIdpError> {
    /// let cfg = tollgate_devidp::DevIdpConfig::from_toml_file(std::path::Path::new("dev-idp.toml"))?;
    /// # Ok(()) }
    /// ```
    pub fn from_toml_file(path: &Path) -> Result<Self, DevIdpError> {
        let file_error = |message: String| DevIdpError::ConfigFile {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let parsed: DevIdpConfig = Figment::from(Toml::string(&text))
            .extract()
            .map_err(|e| file_error(e.to_string()))?;
        let mut merged = DevIdpConfig {
            users: builtin_users(),
            apps: builtin_apps(),
            ..parsed.clone()
        };
        for user in parsed.users {
            match merged
                .users
                .iter_mut()
                .find(|u| u.username.eq_ignore_ascii_case(&user.username))
            {
                Some(existing) => *existing = user,
                None => merged.users.push(user),
            }
        }
        for app in parsed.apps {
            match merged
                .apps
                .iter_mut()
                .find(|a| a.client_id.eq_ignore_ascii_case(&app.client_id))
            {
                Some(existing) => *existing = app,
                None => merged.apps.push(app),
            }
        }
        merged.validate()?;
        Ok(merged)
    }

    /// Checks what serde cannot: GUID shapes, unique ids, usable keys.
    pub(crate) fn validate(&self) -> Result<(), DevIdpError> {
        let invalid = |m: String| Err(DevIdpError::InvalidConfig(m));
        let mut names = HashSet::new();
        let mut oids = HashSet::new();
        for user in &self.users {
            if user.username.is_empty() || user.username.contains(char::is_whitespace) {
                return invalid(format!(
                    "user name '{}' must be non-empty without spaces",
                    user.username
                ));
            }
            let name = user.username.to_ascii_lowercase();
            let upn = user.upn.to_ascii_lowercase();
            if !names.insert(name.clone()) || (upn != name && !names.insert(upn)) {
                return invalid(format!(
                    "user '{}': username or upn used twice",
                    user.username
                ));
            }
            if !is_guid(&user.oid) || !oids.insert(user.oid.to_ascii_lowercase()) {
                return invalid(format!(
                    "user '{}': oid must be a unique GUID",
                    user.username
                ));
            }
            if !is_guid(&user.tenant_id) {
                return invalid(format!(
                    "user '{}': tenant_id must be a GUID",
                    user.username
                ));
            }
        }
        let mut ids = HashSet::new();
        let mut uris = HashSet::new();
        for app in &self.apps {
            if !is_guid(&app.client_id) || !ids.insert(app.client_id.to_ascii_lowercase()) {
                return invalid(format!(
                    "app '{}': client_id must be a unique GUID",
                    app.name
                ));
            }
            if let Some(uri) = &app.app_id_uri
                && (uri.ends_with('/') || !uris.insert(uri.to_ascii_lowercase()))
            {
                return invalid(format!(
                    "app '{}': app_id_uri must be unique and not end with '/'",
                    app.name
                ));
            }
            if app.public_client && app.secret.is_some() {
                return invalid(format!("app '{}': a public client has no secret", app.name));
            }
            for jwk in &app.keys {
                keys::PublicJwk::parse(jwk).map_err(|e| {
                    DevIdpError::InvalidConfig(format!("app '{}' key: {e}", app.name))
                })?;
            }
            for fed in &app.federated_credentials {
                keys::parse_jwks(&fed.jwks).map_err(|e| {
                    DevIdpError::InvalidConfig(format!(
                        "app '{}' federated credential: {e}",
                        app.name
                    ))
                })?;
            }
            for uri in &app.redirect_uris {
                if url::Url::parse(uri).is_err() {
                    return invalid(format!(
                        "app '{}': redirect URI '{uri}' is not an absolute URL",
                        app.name
                    ));
                }
            }
            if let Some(uri) = &app.backchannel_logout_uri
                && !is_backchannel_uri(uri)
            {
                return invalid(format!(
                    "app '{}': backchannel_logout_uri '{uri}' must be an absolute http or https URL without fragment",
                    app.name
                ));
            }
        }
        Ok(())
    }
}

/// A user who can sign in (login page, ROPC). Unset fields get defaults derived from
/// `username`: password `dev`, a stable oid, upn `{username}@contoso.example`, the default tenant.
#[derive(Clone, Deserialize)]
#[serde(from = "RawUser")]
pub struct DevUser {
    /// Login name (the user may also type the upn).
    pub username: String,
    /// Password.
    pub password: String,
    /// Object id (GUID).
    pub oid: String,
    /// `upn` and `preferred_username`.
    pub upn: String,
    /// Display name (`name`).
    pub name: String,
    /// Home tenant (`tid`).
    pub tenant_id: String,
    /// App roles assigned to the user; a token carries those the token's audience app defines.
    pub roles: Vec<String>,
    /// `email` claim in ID tokens when the `email` scope was requested.
    pub email: Option<String>,
    /// Start with MFA required (see `DevIdpHandle::set_require_mfa`).
    pub mfa_required: bool,
    /// Extra claims added to the user's access and ID tokens (never replacing standard ones).
    pub claims: Map<String, Value>,
}

impl fmt::Debug for DevUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevUser")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("oid", &self.oid)
            .field("upn", &self.upn)
            .field("name", &self.name)
            .field("tenant_id", &self.tenant_id)
            .field("roles", &self.roles)
            .field("email", &self.email)
            .field("mfa_required", &self.mfa_required)
            .field("claims", &self.claims.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    username: String,
    password: Option<String>,
    oid: Option<String>,
    upn: Option<String>,
    name: Option<String>,
    tenant_id: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    email: Option<String>,
    #[serde(default)]
    mfa_required: bool,
    #[serde(default)]
    claims: Map<String, Value>,
}

impl From<RawUser> for DevUser {
    fn from(raw: RawUser) -> Self {
        let oid = raw
            .oid
            .unwrap_or_else(|| stable_guid("user", &raw.username));
        let upn = raw
            .upn
            .unwrap_or_else(|| format!("{}@contoso.example", raw.username));
        Self {
            password: raw.password.unwrap_or_else(|| DEV_PASSWORD.to_owned()),
            name: raw.name.unwrap_or_else(|| raw.username.clone()),
            tenant_id: raw
                .tenant_id
                .unwrap_or_else(|| DEFAULT_TENANT_ID.to_owned())
                .to_ascii_lowercase(),
            oid: oid.to_ascii_lowercase(),
            upn,
            username: raw.username,
            roles: raw.roles,
            email: raw.email,
            mfa_required: raw.mfa_required,
            claims: raw.claims,
        }
    }
}

/// A registered application: a client, a resource (API), or both.
#[derive(Clone, Deserialize)]
#[serde(from = "RawApp")]
pub struct DevApp {
    /// Application (client) id, a GUID.
    pub client_id: String,
    /// Display name.
    pub name: String,
    /// Client secret (`client_secret_basic` / `client_secret_post`).
    pub secret: Option<String>,
    /// Public client (no credentials; PKCE required). Defaults to "has no secret, keys or
    /// federated credentials".
    pub public_client: bool,
    /// App ID URI (`api://...`); tokens for the app have `aud` = client id either way.
    pub app_id_uri: Option<String>,
    /// Delegated scopes the app exposes as a resource (`access_as_user`, ...).
    pub scopes: Vec<String>,
    /// App roles the app defines as a resource.
    pub app_roles: Vec<String>,
    /// Exactly matching redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Also accept any `http://127.0.0.1:*/*` and `http://localhost:*/*` redirect URI (default
    /// true; dev convenience).
    pub loopback_redirects: bool,
    /// Public RSA JWKs for `private_key_jwt` client assertions.
    pub keys: Vec<Value>,
    /// Federated identity credentials.
    pub federated_credentials: Vec<FederatedCredential>,
    /// Where the dev IdP POSTs a `logout_token` when a session in which this app received an ID
    /// token ends (OpenID Connect Back-Channel Logout 1.0 §2.2): an absolute `http(s)` URL
    /// without fragment. Default none: the app is not told.
    pub backchannel_logout_uri: Option<String>,
}

impl fmt::Debug for DevApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevApp")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("public_client", &self.public_client)
            .field("app_id_uri", &self.app_id_uri)
            .field("scopes", &self.scopes)
            .field("app_roles", &self.app_roles)
            .field("redirect_uris", &self.redirect_uris)
            .field("loopback_redirects", &self.loopback_redirects)
            .field("keys", &self.keys.len())
            .field("federated_credentials", &self.federated_credentials)
            .field("backchannel_logout_uri", &self.backchannel_logout_uri)
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    client_id: String,
    name: Option<String>,
    secret: Option<String>,
    public_client: Option<bool>,
    app_id_uri: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    app_roles: Vec<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    loopback_redirects: Option<bool>,
    #[serde(default)]
    keys: Vec<Value>,
    #[serde(default)]
    federated_credentials: Vec<FederatedCredential>,
    backchannel_logout_uri: Option<String>,
}

impl From<RawApp> for DevApp {
    fn from(raw: RawApp) -> Self {
        let public_client = raw.public_client.unwrap_or(
            raw.secret.is_none() && raw.keys.is_empty() && raw.federated_credentials.is_empty(),
        );
        Self {
            name: raw.name.unwrap_or_else(|| raw.client_id.clone()),
            client_id: raw.client_id.to_ascii_lowercase(),
            secret: raw.secret,
            public_client,
            app_id_uri: raw.app_id_uri,
            scopes: raw.scopes,
            app_roles: raw.app_roles,
            redirect_uris: raw.redirect_uris,
            loopback_redirects: raw.loopback_redirects.unwrap_or(true),
            keys: raw.keys,
            federated_credentials: raw.federated_credentials,
            backchannel_logout_uri: raw.backchannel_logout_uri,
        }
    }
}

/// A federated identity credential: assertions issued by `issuer` for `subject`, with audience
/// `api://AzureADTokenExchange`, signed by one of `jwks`, authenticate the app.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedCredential {
    /// Exact `iss` of the external token.
    pub issuer: String,
    /// Exact `sub` of the external token.
    pub subject: String,
    /// The external issuer's public keys, `{"keys":[...]}`.
    pub jwks: Value,
}

fn builtin_users() -> Vec<DevUser> {
    let user =
        |username: &str, oid: &str, upn: &str, name: &str, tid: &str, roles: &[&str]| DevUser {
            username: username.to_owned(),
            password: DEV_PASSWORD.to_owned(),
            oid: oid.to_owned(),
            upn: upn.to_owned(),
            name: name.to_owned(),
            tenant_id: tid.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            email: Some(upn.to_owned()),
            mfa_required: false,
            claims: Map::new(),
        };
    vec![
        user(
            ALICE,
            ALICE_OID,
            ALICE_UPN,
            "Alice Example",
            DEFAULT_TENANT_ID,
            &["Reader"],
        ),
        user(
            BOB,
            BOB_OID,
            BOB_UPN,
            "Bob Example",
            DEFAULT_TENANT_ID,
            &["Writer"],
        ),
        user(
            CAROL,
            CAROL_OID,
            CAROL_UPN,
            "Carol Example",
            SECOND_TENANT_ID,
            &[],
        ),
    ]
}

fn builtin_apps() -> Vec<DevApp> {
    let strings = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let app = |client_id: &str, name: &str| DevApp {
        client_id: client_id.to_owned(),
        name: name.to_owned(),
        secret: None,
        public_client: false,
        app_id_uri: None,
        scopes: Vec::new(),
        app_roles: Vec::new(),
        redirect_uris: Vec::new(),
        loopback_redirects: false,
        keys: Vec::new(),
        federated_credentials: Vec::new(),
        backchannel_logout_uri: None,
    };
    vec![
        DevApp {
            secret: Some(TOLLGATE_CLIENT_SECRET.to_owned()),
            app_id_uri: Some(TOLLGATE_APP_ID_URI.to_owned()),
            scopes: strings(&["access_as_user", "read"]),
            app_roles: strings(&["Reader", "Writer"]),
            loopback_redirects: true,
            ..app(TOLLGATE_CLIENT_ID, "tollgate")
        },
        DevApp {
            public_client: true,
            loopback_redirects: true,
            ..app(FRONTEND_CLIENT_ID, "frontend")
        },
        DevApp {
            secret: Some(DOWNSTREAM_CLIENT_SECRET.to_owned()),
            app_id_uri: Some(DOWNSTREAM_APP_ID_URI.to_owned()),
            scopes: strings(&["Data.Read", "Data.Write"]),
            app_roles: strings(&["Data.Read.All"]),
            ..app(DOWNSTREAM_CLIENT_ID, "downstream")
        },
        DevApp {
            app_id_uri: Some(GRAPH_APP_ID_URI.to_owned()),
            scopes: strings(&["User.Read", "Mail.Read"]),
            ..app(GRAPH_CLIENT_ID, "Microsoft Graph")
        },
    ]
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(u64),
    }
    match Raw::deserialize(d)? {
        Raw::Text(text) => humantime::parse_duration(&text).map_err(serde::de::Error::custom),
        Raw::Seconds(secs) => Ok(Duration::from_secs(secs)),
    }
}

/// A GUID that is the same on every start for the same input, so configured users and service
/// principals keep their object ids.
pub(crate) fn stable_guid(kind: &str, name: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{kind}\0{name}").as_bytes(),
    );
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Back-Channel Logout 1.0 §2.2: an absolute URI, which MUST NOT include a fragment; the dev
/// IdP can only POST to http(s).
fn is_backchannel_uri(uri: &str) -> bool {
    url::Url::parse(uri).is_ok_and(|url| {
        matches!(url.scheme(), "http" | "https") && url.has_host() && url.fragment().is_none()
    })
}

/// A GUID in its 36-character hyphenated form (the form Entra uses for object, tenant and client
/// ids). The same rule as tollgate's own configuration check; copied so this crate stays
/// independent of the product it tests.
fn is_guid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn toml_adds_and_replaces_users_and_apps() {
        let file = write(
            r#"
            listen = "127.0.0.1:0"
            access_token_lifetime = "5m"
            refresh_token_lifetime = 120
            [[users]]
            username = "dave"
            roles = ["Reader"]
            claims = { NAVident = "X123456" }
            [[users]]
            username = "alice"
            name = "Alice Replaced"
            [[apps]]
            client_id = "12345678-1234-1234-1234-123456789abc"
            secret = "s3cret"
            redirect_uris = ["https://app.example/callback"]
            backchannel_logout_uri = "https://app.example/backchannel-logout"
            "#,
        );
        let cfg = DevIdpConfig::from_toml_file(file.path()).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(cfg.access_token_lifetime, Duration::from_secs(300));
        assert_eq!(cfg.refresh_token_lifetime, Duration::from_secs(120));
        assert_eq!(cfg.code_lifetime, Duration::from_secs(600));
        assert_eq!(cfg.users.len(), 4);
        let alice = cfg.users.iter().find(|u| u.username == "alice").unwrap();
        assert_eq!(alice.name, "Alice Replaced");
        // Replaced, not merged field by field: a replacement user gets derived defaults.
        assert_ne!(alice.oid, ALICE_OID);
        let dave = cfg.users.iter().find(|u| u.username == "dave").unwrap();
        assert_eq!(dave.upn, "dave@contoso.example");
        assert_eq!(dave.password, DEV_PASSWORD);
        assert_eq!(dave.tenant_id, DEFAULT_TENANT_ID);
        assert_eq!(dave.oid, stable_guid("user", "dave"));
        assert_eq!(dave.claims["NAVident"], "X123456");
        assert_eq!(cfg.apps.len(), 5);
        let app = cfg
            .apps
            .iter()
            .find(|a| a.client_id.starts_with("12345678"))
            .unwrap();
        assert!(!app.public_client);
        assert!(app.loopback_redirects);
        assert_eq!(
            app.backchannel_logout_uri.as_deref(),
            Some("https://app.example/backchannel-logout")
        );
        assert!(cfg.apps.iter().any(|a| a.client_id == TOLLGATE_CLIENT_ID));
        assert!(
            cfg.apps
                .iter()
                .all(|a| a.client_id.starts_with("12345678") || a.backchannel_logout_uri.is_none())
        );
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let unknown = write("listen = \"127.0.0.1:0\"\nlisten_port = 3\n");
        let err = DevIdpConfig::from_toml_file(unknown.path()).unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");

        let bad_user_field = write("[[users]]\nusername = \"x\"\npasword = \"typo\"\n");
        assert!(DevIdpConfig::from_toml_file(bad_user_field.path()).is_err());

        let bad_duration = write("code_lifetime = \"ten minutes\"\n");
        assert!(DevIdpConfig::from_toml_file(bad_duration.path()).is_err());

        let bad_tenant = write("[[users]]\nusername = \"x\"\ntenant_id = \"contoso\"\n");
        let err = DevIdpConfig::from_toml_file(bad_tenant.path()).unwrap_err();
        assert!(err.to_string().contains("tenant_id"), "{err}");

        let duplicate_upn = write("[[users]]\nusername = \"x\"\nupn = \"alice@contoso.example\"\n");
        assert!(DevIdpConfig::from_toml_file(duplicate_upn.path()).is_err());

        let bad_key = write(
            "[[apps]]\nclient_id = \"12345678-1234-1234-1234-123456789abc\"\nkeys = [{ kty = \"oct\", k = \"abc\" }]\n",
        );
        assert!(DevIdpConfig::from_toml_file(bad_key.path()).is_err());

        const APP: &str = "[[apps]]\nclient_id = \"12345678-1234-1234-1234-123456789abc\"\n";
        for (extra, what) in [
            (
                "public_client = true\nsecret = \"x\"\n",
                "public client with a secret",
            ),
            ("app_id_uri = \"api://x/\"\n", "App ID URI ending in /"),
            (
                "app_id_uri = \"api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb\"\n",
                "App ID URI of a built-in",
            ),
            ("redirect_uris = [\"/callback\"]\n", "relative redirect URI"),
            (
                "backchannel_logout_uri = \"/logout\"\n",
                "relative back-channel logout URI",
            ),
            (
                "backchannel_logout_uri = \"https://app.example/logout#x\"\n",
                "back-channel logout URI with a fragment",
            ),
            (
                "backchannel_logout_uri = \"ftp://app.example/logout\"\n",
                "back-channel logout URI that is not http(s)",
            ),
        ] {
            let file = write(&format!("{APP}{extra}"));
            assert!(
                matches!(
                    DevIdpConfig::from_toml_file(file.path()),
                    Err(DevIdpError::InvalidConfig(_))
                ),
                "{what}"
            );
        }
        let bad_client_id = write("[[apps]]\nclient_id = \"frontend\"\n");
        assert!(DevIdpConfig::from_toml_file(bad_client_id.path()).is_err());
        let bad_oid =
            write("[[users]]\nusername = \"x\"\noid = \"99999999-8888-7777-6666-555555555555\"\n");
        assert!(
            DevIdpConfig::from_toml_file(bad_oid.path()).is_err(),
            "oid of alice used twice"
        );

        let missing = Path::new("/nonexistent/dev-idp.toml");
        assert!(matches!(
            DevIdpConfig::from_toml_file(missing),
            Err(DevIdpError::ConfigFile { .. })
        ));
    }

    #[test]
    fn user_debug_output_hides_the_password() {
        let user = builtin_users().remove(0);
        let text = format!("{user:?}");
        assert!(!text.contains(&format!("\"{DEV_PASSWORD}\"")), "{text}");
        let app = builtin_apps().remove(0);
        assert!(!format!("{app:?}").contains(TOLLGATE_CLIENT_SECRET));
    }

    #[test]
    fn stable_guids_are_guids_and_stable() {
        let a = stable_guid("user", "dave");
        assert!(is_guid(&a));
        assert_eq!(a, stable_guid("user", "dave"));
        assert_ne!(a, stable_guid("user", "erin"));
    }
}
