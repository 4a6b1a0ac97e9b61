//! [`AuthBuilder`]: an [`Auth`] from code instead of a `[[providers]]` entry.

use std::time::Duration;

use super::{Auth, AuthError};
use crate::config::{CacheConfig, ClientAuthMethod, ConfigError, ProviderConfig, Secret};

/// Builds an [`Auth`] from code; see [`Auth::builder`]. Errors (a malformed URL, a missing client
/// id...) are reported by [`AuthBuilder::build`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use tollgate::Auth;
/// let err = Auth::builder().well_known_url("https://login.example/.well-known/openid-configuration").build().await.unwrap_err();
/// assert!(err.to_string().starts_with("providers[0].client_id: missing"));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct AuthBuilder {
    provider: ProviderConfig,
    cache: CacheConfig,
    error: Option<(&'static str, String)>,
}

impl AuthBuilder {
    pub(super) fn new() -> Self {
        Self {
            provider: ProviderConfig::default(),
            cache: CacheConfig::default(),
            error: None,
        }
    }

    /// The OpenID discovery URL (`https`, or `http` on a loopback host).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tollgate::Auth;
    /// let plain_http = "http://login.example/v2.0/.well-known/openid-configuration";
    /// let err = Auth::builder().well_known_url(plain_http).client_id("app").build().await.unwrap_err();
    /// assert!(err.to_string().starts_with("providers[0].well_known_url: must be https"));
    /// # }
    /// ```
    pub fn well_known_url(mut self, url: &str) -> Self {
        self.provider.well_known_url = self.parse_url("well_known_url", url);
        self
    }

    /// Explicit issuer and JWKS URL instead of discovery. The issuer may contain `{tenantid}`
    /// (then list the accepted [`tenants`](Self::tenants)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tollgate::Auth;
    /// let err = Auth::builder()
    ///     .issuer("https://login.microsoftonline.com/{tenantid}/v2.0", "https://login.microsoftonline.com/common/discovery/v2.0/keys")
    ///     .client_id("app")
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("providers[0].allowed_tenants: required"));
    /// # }
    /// ```
    pub fn issuer(mut self, issuer: &str, jwks_uri: &str) -> Self {
        self.provider.issuer = Some(issuer.to_owned());
        self.provider.jwks_uri = self.parse_url("jwks_uri", jwks_uri);
        self
    }

    /// The token endpoint, for exchanges when the provider is set up with
    /// [`issuer`](Self::issuer) rather than discovery (discovery supplies it otherwise).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use tollgate::Auth;
    /// let err = Auth::builder()
    ///     .issuer("https://login.example/v2.0", "https://login.example/keys")
    ///     .token_endpoint("not a url")
    ///     .client_id("app")
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("token_endpoint"), "{err}");
    /// # }
    /// ```
    pub fn token_endpoint(mut self, url: &str) -> Self {
        self.provider.token_endpoint = self.parse_url("token_endpoint", url);
        self
    }

    /// This app's client id (also the default audience).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// let auth = tollgate::Auth::builder()
    ///     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .build()
    ///     .await?;
    /// assert_eq!(auth.validator().provider().config().client_id, TOLLGATE_CLIENT_ID);
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn client_id(mut self, id: &str) -> Self {
        self.provider.client_id = id.to_owned();
        self
    }

    /// A client secret, enabling the exchanger (On-Behalf-Of, client credentials).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate_devidp::TOLLGATE_CLIENT_SECRET;
    /// let auth = tollgate::Auth::builder()
    ///     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .client_secret(TOLLGATE_CLIENT_SECRET)
    ///     .build()
    ///     .await?;
    /// assert!(auth.exchanger().is_some());
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn client_secret(mut self, secret: &str) -> Self {
        self.provider.client_secret = Some(Secret::new(secret));
        self.provider.client_auth = ClientAuthMethod::ClientSecretPost;
        self
    }

    /// Accepted audiences (default: client id and `api://<client id>`).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// let auth = tollgate::Auth::builder()
    ///     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .audiences(["api://another-app"])
    ///     .build()
    ///     .await?;
    /// let err = auth.validator().validate(&token).await.unwrap_err(); // `aud` is this app
    /// assert_eq!(err.to_string(), "the token is not meant for this audience");
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn audiences<I: IntoIterator<Item = S>, S: Into<String>>(mut self, audiences: I) -> Self {
        self.provider.audiences = audiences.into_iter().map(Into::into).collect();
        self
    }

    /// Accepted algorithms (default RS256); shared-secret (HS*) algorithms are refused.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use jsonwebtoken::Algorithm;
    /// let err = tollgate::Auth::builder()
    ///     .well_known_url("https://login.example/.well-known/openid-configuration")
    ///     .client_id("app")
    ///     .algorithms(&[Algorithm::RS256, Algorithm::HS256])
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().contains("HS256 is a shared-secret algorithm"));
    /// # }
    /// ```
    pub fn algorithms(mut self, algorithms: &[jsonwebtoken::Algorithm]) -> Self {
        self.provider.algorithms = algorithms.to_vec();
        self
    }

    /// Tenants accepted with a `{tenantid}` issuer; `["*"]` accepts any.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate_devidp::{ALICE, FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI};
    /// # let token = idp.password_token(ALICE, FRONTEND_CLIENT_ID, &format!("{TOLLGATE_APP_ID_URI}/access_as_user")).await?;
    /// # use tollgate_devidp::SECOND_TENANT_ID;
    /// let auth = tollgate::Auth::builder()
    ///     .issuer(&idp.issuer("{tenantid}"), &idp.jwks_uri("common"))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .tenants([SECOND_TENANT_ID]) // Alice's token is from DEFAULT_TENANT_ID
    ///     .build()
    ///     .await?;
    /// let err = auth.validator().validate(&token).await.unwrap_err();
    /// assert_eq!(err.to_string(), "the token's tenant is not allowed");
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn tenants<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tenants: I) -> Self {
        self.provider.allowed_tenants = tenants.into_iter().map(Into::into).collect();
        self
    }

    /// The tenant id app tokens ([`Exchanger::client_credentials`](crate::Exchanger::client_credentials)) are asked for when the
    /// discovered token endpoint is a multi-tenant `common`/`organizations` one. Users'
    /// On-Behalf-Of exchanges still go to each user's own tenant.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = tollgate::Auth::builder()
    ///     .well_known_url("https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration")
    ///     .client_id("aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb")
    ///     .client_credentials_tenant("contoso.onmicrosoft.com") // a domain, not a tenant id
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(err.to_string().starts_with("providers[0].client_credentials_tenant: must be a tenant id"));
    /// # }
    /// ```
    pub fn client_credentials_tenant(mut self, tenant_id: &str) -> Self {
        self.provider.client_credentials_tenant = Some(tenant_id.to_owned());
        self
    }

    /// Never hand out a cached exchanged token closer than this to its expiry (default 120 s).
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # use tollgate_devidp::{DOWNSTREAM_APP_ID_URI, TOLLGATE_CLIENT_SECRET};
    /// let auth = tollgate::Auth::builder()
    ///     .well_known_url(&idp.well_known_url(DEFAULT_TENANT_ID))
    ///     .client_id(TOLLGATE_CLIENT_ID)
    ///     .client_secret(TOLLGATE_CLIENT_SECRET)
    ///     .expiry_margin(std::time::Duration::from_secs(24 * 3600)) // longer than any token lives
    ///     .build()
    ///     .await?;
    /// let exchanger = auth.exchanger().unwrap();
    /// let target = format!("{DOWNSTREAM_APP_ID_URI}/.default");
    /// exchanger.client_credentials(&target, false).await?;
    /// exchanger.client_credentials(&target, false).await?;
    /// assert_eq!(idp.token_requests("client_credentials"), 2); // nothing could be reused
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.cache.expiry_margin = margin;
        self
    }

    /// Checks the settings, loads the keys and builds.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tollgate::layer::AuthError;
    /// let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(); // closed again
    /// let err = tollgate::Auth::builder()
    ///     .well_known_url(&format!("http://127.0.0.1:{port}/v2.0/.well-known/openid-configuration"))
    ///     .client_id("app")
    ///     .build()
    ///     .await
    ///     .unwrap_err();
    /// assert!(matches!(err, AuthError::Provider(_))); // the IdP is down: retry later
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Auth, AuthError> {
        if let Some((option, message)) = self.error {
            return Err(ConfigError::Invalid {
                option: option.to_owned(),
                message,
            }
            .into());
        }
        Auth::from_config(&self.provider, &self.cache).await
    }

    fn parse_url(&mut self, option: &'static str, url: &str) -> Option<url::Url> {
        match url::Url::parse(url) {
            Ok(u) => Some(u),
            Err(e) => {
                self.error
                    .get_or_insert((option, format!("not a valid URL: {e}")));
                None
            }
        }
    }
}
