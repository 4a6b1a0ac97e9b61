//! One OpenID Connect identity provider: its metadata (discovery), its signing keys (a cached
//! JWKS) and the HTTP client tollgate talks to it with.
//!
//! A [`Provider`] starts even when the IdP is down: [`Provider::spawn_refresh`] keeps trying with
//! backoff and [`Provider::is_ready`] says whether keys are loaded (what `/readyz` reports).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate::config::ProviderConfig;
//! use tollgate::provider::Provider;
//! let cfg = ProviderConfig {
//!     client_id: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb".into(),
//!     well_known_url: Some("http://127.0.0.1:9400/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration".parse()?),
//!     ..Default::default()
//! };
//! let provider = Provider::new(cfg)?;
//! provider.refresh().await?;
//! assert!(provider.is_ready());
//! # Ok(()) }
//! ```

pub mod client_auth;
pub(crate) mod discovery;
mod http;
pub(crate) mod jwks;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use discovery::Metadata;
pub(crate) use http::{read_capped, send, transport};
pub use jwks::{KeySet, VerifyingKey};

use crate::config::ProviderConfig;

/// An error talking to an identity provider. Messages never carry tokens or secrets.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tollgate::{config::ProviderConfig, provider::{Provider, ProviderError}};
/// let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(); // closed again
/// let url = format!("http://127.0.0.1:{port}/v2.0/.well-known/openid-configuration");
/// let provider = Provider::new(ProviderConfig { client_id: "app".into(), well_known_url: Some(url.parse()?), ..Default::default() })?;
/// let err = provider.refresh().await.unwrap_err();
/// assert!(matches!(err, ProviderError::Unreachable { what: "discovery document", timeout: false, .. }));
/// # Ok(()) }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The IdP could not be reached or did not answer in time.
    #[error("{what}: {message}")]
    Unreachable {
        /// Which document or endpoint.
        what: &'static str,
        /// The transport error.
        message: String,
        /// True when the request timed out.
        timeout: bool,
    },
    /// The IdP answered with an unexpected status.
    #[error("{what}: the identity provider answered HTTP {status}")]
    Status {
        /// Which document or endpoint.
        what: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// The IdP's document could not be understood.
    #[error("{what}: {message}")]
    Invalid {
        /// Which document.
        what: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The configuration could not be turned into a client.
    #[error("provider configuration: {0}")]
    Config(String),
}

/// An identity provider with cached metadata and keys.
///
/// ```
/// # #[cfg(feature = "dev-idp")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
/// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
/// use tollgate::{config::ProviderConfig, provider::Provider};
/// let provider = Provider::new(ProviderConfig {
///     client_id: TOLLGATE_CLIENT_ID.into(),
///     well_known_url: Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?),
///     ..Default::default()
/// })?;
/// assert!(!provider.is_ready()); // nothing fetched yet
/// provider.refresh().await?;
/// assert!(provider.is_ready());
/// assert_eq!(provider.metadata().unwrap().issuer, idp.issuer(DEFAULT_TENANT_ID));
/// # idp.shutdown().await;
/// # Ok(()) }
/// # #[cfg(not(feature = "dev-idp"))]
/// # fn main() {}
/// ```
#[derive(Debug)]
pub struct Provider {
    config: ProviderConfig,
    http: reqwest::Client,
    metadata: RwLock<Option<Arc<Metadata>>>,
    keys: RwLock<Arc<KeySet>>,
    /// Serialises JWKS fetches so concurrent unknown-kid lookups cause one request.
    fetch_lock: tokio::sync::Mutex<()>,
    /// Bumped by every completed JWKS fetch attempt; waiters compare it to skip a second fetch.
    fetch_generation: AtomicU64,
    /// When the last fetch forced by an unknown kid started.
    last_forced: RwLock<Option<Instant>>,
    /// Bumped whenever a key id leaves the key set (rotated out by the IdP, or dropped as
    /// stale): validations cached under an older epoch are checked again (see [`Self::key_epoch`]).
    key_epoch: AtomicU64,
}

impl Provider {
    /// Builds the provider; no network I/O happens here.
    ///
    /// ```
    /// use tollgate::{config::ProviderConfig, provider::Provider};
    /// let provider = Provider::new(ProviderConfig {
    ///     client_id: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb".into(),
    ///     well_known_url: Some("https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration".parse()?),
    ///     ..Default::default()
    /// })?;
    /// assert!(provider.metadata().is_none() && provider.key_set().is_empty()); // nothing fetched yet
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(config: ProviderConfig) -> Result<Arc<Self>, ProviderError> {
        let http = http::client(config.timeout)?;
        let metadata = discovery::from_config(&config).map(Arc::new);
        Ok(Arc::new(Self {
            config,
            http,
            metadata: RwLock::new(metadata),
            keys: RwLock::new(Arc::new(KeySet::empty())),
            fetch_lock: tokio::sync::Mutex::new(()),
            fetch_generation: AtomicU64::new(0),
            last_forced: RwLock::new(None),
            key_epoch: AtomicU64::new(0),
        }))
    }

    /// The provider's configuration.
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb".into(),
    /// #     issuer: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0".into()),
    /// #     jwks_uri: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys".parse()?),
    /// #     ..Default::default()
    /// # })?;
    /// assert_eq!(provider.config().client_id, "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The provider's name.
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb".into(),
    /// #     issuer: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0".into()),
    /// #     jwks_uri: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys".parse()?),
    /// #     ..Default::default()
    /// # })?;
    /// assert_eq!(provider.name(), "entra_id"); // the default name
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The HTTP client used for this IdP (rustls, pooled, with the provider's timeout).
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb".into(),
    /// #     issuer: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0".into()),
    /// #     jwks_uri: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys".parse()?),
    /// #     ..Default::default()
    /// # })?;
    /// let request = provider.http().get("https://graph.microsoft.com/v1.0/me").build()?;
    /// assert_eq!(request.method(), "GET");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The current metadata, when discovery has succeeded (or was configured explicitly).
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb".into(),
    /// #     issuer: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0".into()),
    /// #     jwks_uri: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys".parse()?),
    /// #     ..Default::default()
    /// # })?;
    /// let metadata = provider.metadata().expect("issuer and jwks_uri are configured");
    /// assert!(metadata.issuer.ends_with("/v2.0") && metadata.token_endpoint.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn metadata(&self) -> Option<Arc<Metadata>> {
        read(&self.metadata).clone()
    }

    /// Where a client sends the user to step up: the `authorization_uri` of a claims challenge.
    pub(crate) fn authorization_endpoint(&self) -> Option<url::Url> {
        read(&self.metadata)
            .as_ref()
            .and_then(|m| m.authorization_endpoint.clone())
    }

    /// True when signing keys are loaded and not older than `jwks_max_stale`.
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb".into(),
    /// #     issuer: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0".into()),
    /// #     jwks_uri: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys".parse()?),
    /// #     ..Default::default()
    /// # })?;
    /// assert!(!provider.is_ready()); // keys are fetched by `refresh` or `spawn_refresh`
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_ready(&self) -> bool {
        let keys = self.key_set();
        !keys.is_empty() && !keys.is_stale(self.config.jwks_max_stale)
    }

    /// The current key set.
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb".into(),
    /// #     issuer: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0".into()),
    /// #     jwks_uri: Some("https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys".parse()?),
    /// #     ..Default::default()
    /// # })?;
    /// assert_eq!(provider.key_set().len(), 0); // nothing fetched yet
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key_set(&self) -> Arc<KeySet> {
        read(&self.keys).clone()
    }

    /// A counter bumped each time a key id leaves the key set. A cache of validated tokens keeps
    /// the epoch it validated under and re-checks a token whose epoch is older: a key the IdP
    /// withdrew (an emergency rollover) stops vouching for tokens at once, not at their `exp`.
    ///
    /// ```
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let provider = Provider::new(ProviderConfig {
    /// #     client_id: "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb".into(),
    /// #     issuer: Some("https://login.example/v2.0".into()),
    /// #     jwks_uri: Some("https://login.example/keys".parse()?),
    /// #     ..Default::default()
    /// # })?;
    /// assert_eq!(provider.key_epoch(), 0); // no key has been withdrawn yet
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn key_epoch(&self) -> u64 {
        self.key_epoch.load(Ordering::Acquire)
    }

    /// Installs a new key set, bumping the key epoch when it withdraws a key id.
    pub(crate) fn replace_keys(&self, next: KeySet) {
        let mut keys = write(&self.keys);
        if keys.retired_by(&next) {
            self.key_epoch.fetch_add(1, Ordering::AcqRel);
        }
        *keys = Arc::new(next);
    }

    /// Fetches discovery (when needed) and the JWKS now.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let well_known_url = Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?);
    /// # let provider = Provider::new(ProviderConfig { client_id: TOLLGATE_CLIENT_ID.into(), well_known_url, ..Default::default() })?;
    /// provider.refresh().await?;
    /// assert!(provider.is_ready() && !provider.key_set().is_empty());
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn refresh(&self) -> Result<(), ProviderError> {
        let _guard = self.fetch_lock.lock().await;
        self.fetch_locked().await
    }

    /// The key for `kid`. An unknown kid triggers at most one JWKS refetch per
    /// `jwks_unknown_kid_min_interval`, shared by every concurrent caller; no lock is held by a
    /// caller that finds its key in the cache.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let well_known_url = Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?);
    /// # let provider = Provider::new(ProviderConfig { client_id: TOLLGATE_CLIENT_ID.into(), well_known_url, ..Default::default() })?;
    /// provider.refresh().await?;
    /// let kid = provider.key_set().kids().remove(0);
    /// assert_eq!(provider.key(&kid).await.unwrap().kid, kid);
    /// assert!(provider.key("no-such-kid").await.is_none()); // after one refetch
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub async fn key(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        if let Some(k) = self.key_set().get(kid) {
            return Some(k);
        }
        let seen = self.fetch_generation.load(Ordering::Acquire);
        let _guard = self.fetch_lock.lock().await;
        // Another caller fetched while we waited: use its result instead of fetching again.
        if self.fetch_generation.load(Ordering::Acquire) != seen {
            return self.key_set().get(kid);
        }
        let min = self.config.jwks_unknown_kid_min_interval;
        let recently = read(&self.last_forced).is_some_and(|t| t.elapsed() < min);
        if recently {
            return None;
        }
        *write(&self.last_forced) = Some(Instant::now());
        if let Err(e) = self.fetch_locked().await {
            tracing::warn!(provider = %self.config.name, error = %e, "JWKS refetch for an unknown kid failed");
        }
        self.key_set().get(kid)
    }

    /// Keeps metadata and keys fresh in the background until the returned handle is aborted
    /// (or the provider dropped): retries with backoff while nothing is loaded, then refreshes every
    /// `jwks_refresh`.
    ///
    /// ```
    /// # #[cfg(feature = "dev-idp")]
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use tollgate_devidp::{DevIdp, DevIdpConfig, DEFAULT_TENANT_ID, TOLLGATE_CLIENT_ID};
    /// # use tollgate::{config::ProviderConfig, provider::Provider};
    /// # let idp = DevIdp::start(DevIdpConfig { listen: "127.0.0.1:0".parse()?, ..Default::default() }).await?;
    /// # let well_known_url = Some(idp.well_known_url(DEFAULT_TENANT_ID).parse()?);
    /// # let provider = Provider::new(ProviderConfig { client_id: TOLLGATE_CLIENT_ID.into(), well_known_url, ..Default::default() })?;
    /// let task = provider.spawn_refresh();
    /// tokio::time::timeout(std::time::Duration::from_secs(10), async {
    ///     while !provider.is_ready() {
    ///         tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    ///     }
    /// })
    /// .await?;
    /// task.abort();
    /// # idp.shutdown().await;
    /// # Ok(()) }
    /// # #[cfg(not(feature = "dev-idp"))]
    /// # fn main() {}
    /// ```
    pub fn spawn_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                let Some(this) = weak.upgrade() else { return };
                let ok = this.refresh().await.is_ok();
                let every = this.config.jwks_refresh;
                let loaded = !this.key_set().is_empty();
                drop(this);
                let wait = if ok && loaded {
                    backoff = Duration::from_millis(250);
                    every
                } else {
                    let w = backoff.min(every);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    w
                };
                tokio::time::sleep(wait).await;
            }
        })
    }

    async fn fetch_locked(&self) -> Result<(), ProviderError> {
        let result = self.fetch_inner().await;
        self.fetch_generation.fetch_add(1, Ordering::AcqRel);
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!("tollgate_jwks_fetches_total", "provider" => self.config.name.clone(), "result" => outcome)
            .increment(1);
        if let Err(e) = &result {
            tracing::warn!(provider = %self.config.name, error = %e, "identity provider refresh failed");
            // Keep serving the last good keys until they are older than jwks_max_stale.
            let keys = self.key_set();
            if keys.is_stale(self.config.jwks_max_stale) && !keys.is_empty() {
                tracing::error!(provider = %self.config.name, "dropping signing keys older than jwks_max_stale");
                self.replace_keys(KeySet::empty());
            }
        }
        result
    }

    async fn fetch_inner(&self) -> Result<(), ProviderError> {
        let metadata = match (&self.config.well_known_url, self.metadata()) {
            (Some(url), _) => {
                let fetched = discovery::fetch(&self.http, url, &self.config).await?;
                let fetched = Arc::new(fetched);
                *write(&self.metadata) = Some(fetched.clone());
                fetched
            }
            (None, Some(m)) => m,
            (None, None) => {
                return Err(ProviderError::Config(
                    "no well_known_url and no issuer/jwks_uri".into(),
                ));
            }
        };
        let set = jwks::fetch(&self.http, &metadata.jwks_uri, &self.config.algorithms).await?;
        tracing::debug!(provider = %self.config.name, keys = set.len(), "JWKS loaded");
        self.replace_keys(set);
        Ok(())
    }
}

/// Poison-tolerant lock access: the guarded values are replaced whole, never left half-written.
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
