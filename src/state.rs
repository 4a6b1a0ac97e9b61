//! [`AppState`]: what every listener's handlers share. The token API, the login proxy, the
//! session endpoints and the admin routes import it from here, not from the server that builds
//! it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::Config;
use crate::exchange::Exchanger;
use crate::provider::Provider;
use crate::proxy::Forwarder;
use crate::routes::RouteTable;
use crate::store::TokenStore;
use crate::validate::Validator;

/// Everything a request handler needs, shared by all listeners.
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) providers: HashMap<String, (Arc<Provider>, Validator)>,
    pub(crate) routes: RouteTable,
    pub(crate) forwarder: Forwarder,
    /// Per provider: the exchanger, or why it could not be built (no client credential).
    pub(crate) exchangers: HashMap<String, Result<Exchanger, String>>,
    /// The exchange cache shared by replicas (`[cache] shared`), kept across reloads.
    pub(crate) shared_cache: Option<crate::exchange::SharedCache>,
    /// Browser sessions (only with `[session]`).
    pub(crate) sessions: Option<crate::session::sessions::Sessions>,
    /// The per-user token store (only with `[login]` or `[session]`).
    pub(crate) store: Option<Arc<dyn TokenStore>>,
    /// One refresh at a time per (provider, user, target) for delegated tokens.
    pub(crate) refresh_flights: moka::future::Cache<[u8; 32], (String, u64)>,
    /// The local API key, when configured.
    pub(crate) api_key: Option<String>,
    /// False once shutdown has begun, so `/readyz` turns away new traffic first. Shared by every
    /// generation of the configuration.
    pub(crate) accepting: Arc<AtomicBool>,
}

impl AppState {
    /// The provider (and its validator) answering to `name`, aliases included.
    pub(crate) fn provider(&self, name: &str) -> Option<&(Arc<Provider>, Validator)> {
        let canonical = self.config.provider_named(name)?;
        self.providers.get(&canonical.name)
    }

    /// The exchanger for provider `name`: `None` when no such provider is configured.
    pub(crate) fn exchanger(&self, name: &str) -> Option<Result<&Exchanger, &str>> {
        let canonical = self.config.provider_named(name)?;
        self.exchangers
            .get(&canonical.name)
            .map(|r| r.as_ref().map_err(String::as_str))
    }
}
