//! Local OpenID provider for demo, development and tests.
//!
//! The dev IdP imitates Microsoft Entra ID (v2.0 endpoints, per-tenant paths, Entra-shaped claims
//! and error bodies) closely enough that tollgate's validation, exchange and login code can be
//! tested against it realistically. It is a second, independent implementation of the other side
//! of the protocol: it shares no code with tollgate's `validate`, `exchange` or `login` modules, so
//! a misunderstanding of the protocol in one is caught by the other instead of being agreed with.
//!
//! It serves, per tenant `{tid}` (a tenant GUID, `common` or `organizations`):
//!
//! | path | purpose |
//! | --- | --- |
//! | `GET /{tid}/v2.0/.well-known/openid-configuration` | discovery |
//! | `GET /{tid}/discovery/v2.0/keys` | JWKS (RS256, 2048-bit) |
//! | `GET/POST /{tid}/oauth2/v2.0/authorize` | login page, authorization code with PKCE S256 |
//! | `POST /{tid}/oauth2/v2.0/token` | `authorization_code`, `refresh_token`, `client_credentials`, `password`, jwt-bearer OBO; RFC 8693 token exchange (TokenX-style, `private_key_jwt` clients); the Maskinporten-style jwt-bearer grant (an assertion signed with a registered client key, no `client_id`) |
//! | `GET /{tid}/oauth2/v2.0/logout` | end session; with a valid `id_token_hint`, back-channel logout |
//!
//! plus development hooks under `/_dev/` (key rotation, MFA, lifetimes, statistics, client keys
//! and federated credentials registered at run time, `POST /_dev/sign-out/{sid_or_user}`).
//!
//! Back-channel logout (OpenID Connect Back-Channel Logout 1.0): the dev IdP remembers, per
//! session (`sid`), the apps that received an ID token in it (code redemption and refresh). When
//! the session ends, by a logout whose `id_token_hint` is an ID token it signed (expired hints
//! are accepted, as OpenID Connect RP-Initiated Logout 1.0 §2 asks) or by
//! [`DevIdpHandle::sign_out`], it POSTs a signed `logout_token` (`typ` `logout+jwt`) to each of
//! those apps that has a [`backchannel_logout_uri`](DevApp::backchannel_logout_uri), before
//! answering the logout.
//!
//! A `claims` request for authentication contexts (`{"access_token":{"acrs":{"essential":true,
//! "value":"c1"}}}`) on authorize or the password grant is satisfied at once: the user's access
//! tokens carry `acrs`, through refresh and OBO too.
//!
//! It is a development tool: it keeps everything in memory, grants every scope and role that
//! exists, and must never face real users.
//!
//! ```no_run
//! use tollgate_devidp::{DevIdp, DevIdpConfig, ALICE, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
//!
//! # async fn demo() -> Result<(), tollgate_devidp::DevIdpError> {
//! let cfg = DevIdpConfig { listen: "127.0.0.1:0".parse().unwrap(), ..DevIdpConfig::default() };
//! let idp = DevIdp::start(cfg).await?;
//! println!("issuer: {}", idp.issuer(DEFAULT_TENANT_ID));
//! let token = idp
//!     .password_token(ALICE, TOLLGATE_CLIENT_ID, "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/access_as_user")
//!     .await?;
//! assert!(!token.is_empty());
//! idp.shutdown().await;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs, unreachable_pub)]

mod aad_error;
mod authorize;
mod backchannel;
mod client_auth;
mod config;
mod grants;
mod jwt;
mod keys;
mod mint;
mod params;
mod scopes;
mod server;
mod sessions;
mod state;
mod token;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use backchannel::BackchannelDelivery;
pub use config::{DevApp, DevIdpConfig, DevUser, FederatedCredential};

use state::Shared;

/// Default listen address of `tollgate dev-idp`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9400));
/// The default tenant: built-in apps live here, and so do `alice` and `bob`.
pub const DEFAULT_TENANT_ID: &str = "11111111-2222-3333-4444-555555555555";
/// A second tenant (home of `carol`), for multi-tenant tests.
pub const SECOND_TENANT_ID: &str = "66666666-7777-8888-9999-000000000000";

/// Client id of the built-in "tollgate" app (the middle tier).
pub const TOLLGATE_CLIENT_ID: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
/// App ID URI of the built-in "tollgate" app.
pub const TOLLGATE_APP_ID_URI: &str = "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
/// Client secret of the built-in "tollgate" app.
pub const TOLLGATE_CLIENT_SECRET: &str = "dev-secret-tollgate";
/// Client id of the built-in "frontend" app, a public client (no secret).
pub const FRONTEND_CLIENT_ID: &str = "cccccccc-3333-4444-5555-dddddddddddd";
/// Client id of the built-in "downstream" API.
pub const DOWNSTREAM_CLIENT_ID: &str = "eeeeeeee-6666-7777-8888-ffffffffffff";
/// App ID URI of the built-in "downstream" API.
pub const DOWNSTREAM_APP_ID_URI: &str = "api://eeeeeeee-6666-7777-8888-ffffffffffff";
/// Client secret of the built-in "downstream" API.
pub const DOWNSTREAM_CLIENT_SECRET: &str = "dev-secret-downstream";
/// Client id of the built-in Microsoft Graph resource.
pub const GRAPH_CLIENT_ID: &str = "00000003-0000-0000-c000-000000000000";
/// App ID URI of the built-in Microsoft Graph resource.
pub const GRAPH_APP_ID_URI: &str = "https://graph.microsoft.com";

/// Password of every built-in user.
pub const DEV_PASSWORD: &str = "dev";
/// Built-in user `alice` (default tenant, role `Reader`).
pub const ALICE: &str = "alice";
/// Object id of `alice`.
pub const ALICE_OID: &str = "99999999-8888-7777-6666-555555555555";
/// UPN (and `preferred_username`) of `alice`.
pub const ALICE_UPN: &str = "alice@contoso.example";
/// Built-in user `bob` (default tenant, role `Writer`).
pub const BOB: &str = "bob";
/// Object id of `bob`.
pub const BOB_OID: &str = "99999999-8888-7777-6666-444444444444";
/// UPN (and `preferred_username`) of `bob`.
pub const BOB_UPN: &str = "bob@contoso.example";
/// Built-in user `carol` (second tenant, no roles).
pub const CAROL: &str = "carol";
/// Object id of `carol`.
pub const CAROL_OID: &str = "99999999-8888-7777-6666-333333333333";
/// UPN (and `preferred_username`) of `carol`.
pub const CAROL_UPN: &str = "carol@fabrikam.example";

/// The Conditional Access policy id named in the `claims` challenge of an MFA refusal.
pub const MFA_POLICY_ID: &str = "0d0d0d0d-1e1e-2f2f-3a3a-4b4b4b4b4b4b";
/// The audience a federated credential assertion must carry.
pub const FEDERATED_AUDIENCE: &str = "api://AzureADTokenExchange";

/// Errors of the dev IdP library API.
#[derive(Debug, thiserror::Error)]
pub enum DevIdpError {
    /// The listen address could not be bound.
    #[error("dev IdP: cannot listen on {addr}: {source}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration file could not be read or parsed.
    #[error("dev IdP configuration {}: {message}", path.display())]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The configuration is inconsistent (duplicate ids, malformed GUIDs, bad keys, ...).
    #[error("dev IdP configuration: {0}")]
    InvalidConfig(String),
    /// The signing key file could not be read, parsed or written.
    #[error("dev IdP signing key {}: {message}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// RSA key generation failed in aws-lc.
    #[error("dev IdP: RSA key generation failed")]
    KeyGeneration,
    /// No app with this client id is registered.
    #[error("dev IdP: unknown application '{0}'")]
    UnknownApp(String),
    /// A JWK or JWK set given to the dev IdP is not a usable RSA public key.
    #[error("dev IdP: invalid public key: {0}")]
    InvalidJwk(String),
    /// The HTTP request of a convenience method failed.
    #[error("dev IdP: request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// The dev IdP refused a token request made by a convenience method.
    #[error("dev IdP refused the token request: {status} {error}: {description}")]
    TokenRequest {
        /// HTTP status of the answer.
        status: u16,
        /// OAuth `error`.
        error: String,
        /// Entra-style `error_description` (`AADSTSnnnnn: ...`).
        description: String,
    },
    /// The HTTP server failed.
    #[error("dev IdP server: {0}")]
    Serve(std::io::Error),
}

/// Starts dev IdP servers.
#[derive(Debug)]
pub struct DevIdp;

impl DevIdp {
    /// Binds `cfg.listen` (port 0 picks a free port), generates or loads the signing key and
    /// serves until the returned handle is shut down or dropped.
    pub async fn start(cfg: DevIdpConfig) -> Result<DevIdpHandle, DevIdpError> {
        cfg.validate()?;
        let key = match &cfg.key_file {
            Some(path) => keys::load_or_create(path).await?,
            None => keys::generate().await?,
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| DevIdpError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| DevIdpError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let base_url = base_url_for(addr);
        let shared = Arc::new(Shared::new(base_url.clone(), &cfg, key)?);
        let router = server::router(Arc::clone(&shared));
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                // A dropped sender also resolves the receiver, so dropping the handle stops the server.
                .with_graceful_shutdown(async move {
                    let _ = stop_rx.await;
                })
                .await
        });
        tracing::warn!(
            base_url = %base_url,
            "dev IdP started: this is a development tool that signs tokens for anyone who asks; never expose it or use it in production"
        );
        Ok(DevIdpHandle {
            addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// A running dev IdP. Dropping it stops the server (gracefully, in the background).
#[derive(Debug)]
pub struct DevIdpHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl DevIdpHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The v2 issuer of a tenant: `http://127.0.0.1:PORT/{tid}/v2.0`.
    pub fn issuer(&self, tid: &str) -> String {
        self.shared.issuer(tid)
    }

    /// The discovery document URL of a tenant (or `common` / `organizations`).
    pub fn well_known_url(&self, tid: &str) -> String {
        format!(
            "{}/{tid}/v2.0/.well-known/openid-configuration",
            self.shared.base_url
        )
    }

    /// The token endpoint of a tenant (or `common` / `organizations`).
    pub fn token_endpoint(&self, tid: &str) -> String {
        self.shared.token_endpoint(tid)
    }

    /// The JWKS URL of a tenant (every tenant serves the same key set).
    pub fn jwks_uri(&self, tid: &str) -> String {
        format!("{}/{tid}/discovery/v2.0/keys", self.shared.base_url)
    }

    /// Generates a new signing key (new `kid`) and signs with it from now on. The previous keys
    /// stay published unless `drop_previous` is set. Returns the new `kid`.
    pub fn rotate_keys(&self, drop_previous: bool) -> String {
        // Generation failure means aws-lc itself is broken; nothing a caller could handle.
        let key = keys::SigningKey::generate().expect("aws-lc RSA-2048 key generation failed");
        self.shared.install_key(key, drop_previous)
    }

    /// Makes OBO and refresh for `user` (username or UPN) fail with Entra's MFA challenge
    /// (AADSTS50076) unless the user completed MFA at sign-in.
    pub fn set_require_mfa(&self, user: &str, required: bool) {
        if !self.shared.set_require_mfa(user, required) {
            tracing::warn!(user, "dev IdP: set_require_mfa for an unknown user ignored");
        }
    }

    /// Lifetime of access and ID tokens issued from now on.
    pub fn set_access_token_lifetime(&self, d: Duration) {
        self.shared.update_lifetimes(|l| l.access = d);
    }

    /// Lifetime of refresh tokens issued from now on.
    pub fn set_refresh_token_lifetime(&self, d: Duration) {
        self.shared.update_lifetimes(|l| l.refresh = d);
    }

    /// Lifetime of authorization codes issued from now on.
    pub fn set_code_lifetime(&self, d: Duration) {
        self.shared.update_lifetimes(|l| l.code = d);
    }

    /// How many `/token` requests (successful or not) had this `grant_type`. The jwt-bearer grant
    /// (On-Behalf-Of and Maskinporten-style alike) can be named `jwt-bearer` or by its full URN,
    /// token exchange `token-exchange` or by its URN; requests with a missing or unsupported grant
    /// type are counted together under `unsupported`.
    pub fn token_requests(&self, grant_type: &str) -> u64 {
        self.shared.token_requests(grant_type)
    }

    /// Registers a public JWK (RSA, or EC P-256/P-384) for `private_key_jwt` client assertions
    /// and Maskinporten-style jwt-bearer grant assertions of `client_id`.
    pub fn register_client_key(
        &self,
        client_id: &str,
        public_jwk: serde_json::Value,
    ) -> Result<(), DevIdpError> {
        self.shared.register_client_key(client_id, &public_jwk)
    }

    /// Registers a federated identity credential: assertions from `issuer` with `sub` = `subject`,
    /// audience `api://AzureADTokenExchange`, signed by a key of `jwks` (`{"keys":[...]}`).
    pub fn register_federated_credential(
        &self,
        client_id: &str,
        issuer: &str,
        subject: &str,
        jwks: serde_json::Value,
    ) -> Result<(), DevIdpError> {
        let credential = FederatedCredential {
            issuer: issuer.to_owned(),
            subject: subject.to_owned(),
            jwks,
        };
        self.shared.register_federated(client_id, &credential)
    }

    /// Gets an access token for `user` by a real ROPC (`grant_type=password`) request to this
    /// server, authenticating confidential clients with their configured secret.
    pub async fn password_token(
        &self,
        user: &str,
        client_id: &str,
        scope: &str,
    ) -> Result<String, DevIdpError> {
        self.shared
            .password_token(user, client_id, scope, None)
            .await
    }

    /// [`password_token`](Self::password_token) with a `claims` request, as a client sends it
    /// after a claims challenge: an authentication-context request
    /// (`{"access_token":{"acrs":{"essential":true,"value":"c1"}}}`) puts `acrs` in the token.
    ///
    /// ```no_run
    /// # async fn f(idp: tollgate_devidp::DevIdpHandle) -> Result<(), tollgate_devidp::DevIdpError> {
    /// use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// let scope = format!("{TOLLGATE_APP_ID_URI}/access_as_user");
    /// let claims = r#"{"access_token":{"acrs":{"essential":true,"value":"c1"}}}"#;
    /// let stepped_up = idp.password_token_with_claims(ALICE, FRONTEND_CLIENT_ID, &scope, claims).await?;
    /// # Ok(()) }
    /// ```
    pub async fn password_token_with_claims(
        &self,
        user: &str,
        client_id: &str,
        scope: &str,
        claims: &str,
    ) -> Result<String, DevIdpError> {
        self.shared
            .password_token(user, client_id, scope, Some(claims))
            .await
    }

    /// The IdP sessions (`sid`s, as ID tokens carry them) open for a user (username, UPN or
    /// object id), oldest first: what a test needs to send a front-channel logout for one.
    pub fn session_ids(&self, user: &str) -> Vec<String> {
        self.shared.sessions_of(user)
    }

    /// Signs a user out at the IdP without a browser, as a logout with an `id_token_hint` does:
    /// ends the session with this `sid`, or every session of the user with this username, UPN
    /// or object id, and POSTs a `logout_token` to each app of those sessions that has a
    /// `backchannel_logout_uri` (OpenID Connect Back-Channel Logout 1.0 §2.5). Returns what each
    /// delivery got; a failed delivery is reported, never an error. Nothing matching: empty.
    ///
    /// ```no_run
    /// # async fn f(idp: tollgate_devidp::DevIdpHandle) {
    /// for delivery in idp.sign_out(tollgate_devidp::ALICE).await {
    ///     assert!(delivery.acknowledged(), "{} did not take the logout", delivery.client_id);
    /// }
    /// # }
    /// ```
    pub async fn sign_out(&self, sid_or_user: &str) -> Vec<BackchannelDelivery> {
        let sids = self.shared.sessions_of(sid_or_user);
        self.shared.end_sessions(&sids).await
    }

    /// Stops accepting connections and waits for open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "dev IdP server ended with an error"),
                Err(e) => tracing::error!(error = %e, "dev IdP server task failed"),
            }
        }
    }
}

impl Drop for DevIdpHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Runs the dev IdP until `shutdown` resolves (the `tollgate dev-idp` command). Prints the base
/// URL, the well-known URLs and the built-in users and clients to stdout.
pub async fn run(cfg: DevIdpConfig, shutdown: impl Future<Output = ()>) -> Result<(), DevIdpError> {
    let users = cfg.users.clone();
    let apps = cfg.apps.clone();
    let mut handle = DevIdp::start(cfg).await?;
    println!("{}", banner(&handle, &users, &apps));
    let task = handle.task.take();
    shutdown.await;
    if let Some(stop) = handle.stop.take() {
        let _ = stop.send(());
    }
    match task {
        Some(task) => match task.await {
            Ok(result) => result.map_err(DevIdpError::Serve),
            Err(e) => Err(DevIdpError::Serve(std::io::Error::other(e))),
        },
        None => Ok(()),
    }
}

fn banner(handle: &DevIdpHandle, users: &[DevUser], apps: &[DevApp]) -> String {
    let mut out = String::new();
    out.push_str("tollgate dev IdP (development only: it signs tokens for anyone who asks)\n");
    out.push_str(&format!("  base URL:       {}\n", handle.base_url()));
    let mut tenants: Vec<&str> = vec![DEFAULT_TENANT_ID, SECOND_TENANT_ID];
    for user in users {
        if !tenants
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&user.tenant_id))
        {
            tenants.push(&user.tenant_id);
        }
    }
    for tid in tenants.iter().copied().chain(["common", "organizations"]) {
        out.push_str(&format!(
            "  well-known:     {}\n",
            handle.well_known_url(tid)
        ));
    }
    out.push_str(&format!(
        "  token endpoint: {}\n",
        handle.token_endpoint(DEFAULT_TENANT_ID)
    ));
    out.push_str("  users (password of built-ins: dev):\n");
    for user in users {
        out.push_str(&format!(
            "    {:<8} {:<28} oid {} tenant {}\n",
            user.username, user.upn, user.oid, user.tenant_id
        ));
    }
    out.push_str("  clients:\n");
    for app in apps {
        let kind = if app.public_client {
            "public"
        } else {
            "confidential"
        };
        let uri = app.app_id_uri.as_deref().unwrap_or("-");
        out.push_str(&format!(
            "    {:<12} {} {:<12} {}\n",
            app.name, app.client_id, kind, uri
        ));
    }
    out
}

fn base_url_for(addr: SocketAddr) -> String {
    // A wildcard bind address is not something a client can connect to; advertise loopback.
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    match ip {
        IpAddr::V4(ip) => format!("http://{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("http://[{ip}]:{}", addr.port()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_advertises_loopback_for_wildcard_binds() {
        assert_eq!(
            base_url_for("0.0.0.0:9400".parse().unwrap()),
            "http://127.0.0.1:9400"
        );
        assert_eq!(
            base_url_for("[::]:9400".parse().unwrap()),
            "http://[::1]:9400"
        );
        assert_eq!(
            base_url_for("127.0.0.1:1234".parse().unwrap()),
            "http://127.0.0.1:1234"
        );
        assert_eq!(
            base_url_for("[::1]:1234".parse().unwrap()),
            "http://[::1]:1234"
        );
    }
}
