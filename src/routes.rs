//! The public listener's route table: longest path prefix wins.

use std::sync::{Arc, OnceLock};

use http::{HeaderName, StatusCode};
use metrics::{Counter, SharedString};

use crate::config::{AuthMode, Config, IdentityHeaders, RouteConfig};
use crate::exchange::Exchanger;
use crate::path::prefix_matches;
use crate::validate::Validator;

/// One configured route, resolved against its provider.
pub(crate) struct Route {
    pub(crate) config: RouteConfig,
    /// `None` only for `auth = "none"` routes.
    pub(crate) validator: Option<Validator>,
    /// The provider's exchanger, for a route that exchanges (`obo`, `obo_headers`) whose
    /// provider can: found once here, not by name at each request. (The server refuses to
    /// start a route that exchanges through a provider that cannot.)
    pub(crate) exchanger: Option<Exchanger>,
    /// The identity headers the app gets: the route's `identity_headers`, else `[upstream]`'s.
    pub(crate) identity_headers: IdentityHeaders,
    /// Metric label: the configured path prefix (bounded cardinality).
    pub(crate) label: Arc<str>,
    /// `obo_headers`, names parsed once: header name -> target.
    pub(crate) obo_headers: Vec<(HeaderName, String)>,
    /// The `obo_headers` names, which a client's `Connection` must not strip once tollgate has
    /// set them (shared with each such request as an extension; `None` without `obo_headers`).
    pub(crate) added_headers: Option<crate::proxy::AddedHeaders>,
    /// `tollgate_requests_total{route, status}` handles by status (100-599), registered on first
    /// use: counting a request is then an atomic add, not a registry lookup with new labels.
    requests: Box<[OnceLock<Counter>]>,
}

impl Route {
    /// Resolves route config `r` (named `at` in errors) against its provider's validator and
    /// exchanger.
    fn new(
        config: &Config,
        r: &RouteConfig,
        at: &str,
        provider_for: &impl Fn(&str) -> Option<(Validator, Option<Exchanger>)>,
    ) -> Result<Self, String> {
        let (validator, exchanger) = match r.auth {
            AuthMode::None => (None, None),
            _ => {
                let provider = config
                    .route_provider(r)
                    .map_err(|e| format!("{at}.provider: {e}"))?;
                let (validator, exchanger) = provider_for(&provider.name).ok_or_else(|| {
                    format!(
                        "{at}.provider: no provider named {:?} is running",
                        provider.name
                    )
                })?;
                (Some(validator), exchanger.filter(|_| r.exchanges()))
            }
        };
        let obo_headers = r
            .obo_headers
            .iter()
            .map(|(name, target)| {
                HeaderName::from_bytes(name.as_bytes())
                    .map(|h| (h, target.clone()))
                    .map_err(|_| format!("{at}.obo_headers: {name:?} is not a header name"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let added_headers = (!obo_headers.is_empty()).then(|| {
            crate::proxy::AddedHeaders(obo_headers.iter().map(|(h, _)| h.clone()).collect())
        });
        Ok(Route {
            config: r.clone(),
            validator,
            exchanger,
            identity_headers: r
                .identity_headers
                .unwrap_or(config.upstream.identity_headers),
            label: Arc::from(r.path.as_str()),
            obo_headers,
            added_headers,
            requests: (100..600).map(|_| OnceLock::new()).collect(),
        })
    }

    /// Whether the route exchanges the inbound token (`obo` or `obo_headers`).
    pub(crate) fn exchanges(&self) -> bool {
        self.config.exchanges()
    }

    /// Counts one answered request with `status` on this route.
    pub(crate) fn count(&self, status: StatusCode) {
        let register = || metrics::counter!("tollgate_requests_total", "route" => SharedString::from(self.label.clone()), "status" => status.as_str().to_owned());
        match self
            .requests
            .get(usize::from(status.as_u16()).wrapping_sub(100))
        {
            Some(slot) => slot.get_or_init(register).increment(1),
            None => register().increment(1),
        }
    }
}

/// Routes sorted longest prefix first.
pub(crate) struct RouteTable {
    routes: Vec<Route>,
    /// See [`RouteTable::forward_auth_default`].
    forward_auth: Option<Route>,
}

impl RouteTable {
    /// Resolves each route's provider: its validator, and its exchanger where it can exchange.
    /// A route that must authenticate but whose provider is unknown is an error, never a
    /// route that lets everything through.
    pub(crate) fn new(
        config: &Config,
        provider_for: impl Fn(&str) -> Option<(Validator, Option<Exchanger>)>,
    ) -> Result<Self, String> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, r) in config.routes.iter().enumerate() {
            routes.push(Route::new(
                config,
                r,
                &format!("routes[{i}]"),
                &provider_for,
            )?);
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.config.path.len()));
        // Forward-auth for a path no route covers: the session's user (or a bearer token of the
        // session's provider), with the identity headers an ingress passes on.
        let forward_auth = match &config.session {
            s if s.enabled => {
                let identity_headers = match config.upstream.identity_headers {
                    IdentityHeaders::None => IdentityHeaders::XAuth,
                    other => other,
                };
                let r = RouteConfig {
                    path: "/".into(),
                    provider: s.provider.clone(),
                    auth: AuthMode::Session,
                    identity_headers: Some(identity_headers),
                    ..RouteConfig::default()
                };
                Some(Route::new(config, &r, "session", &provider_for)?)
            }
            _ => None,
        };
        Ok(Self {
            routes,
            forward_auth,
        })
    }

    /// What `/oauth2/auth` applies to a path no route covers (with `[session]` on).
    pub(crate) fn forward_auth_default(&self) -> Option<&Route> {
        self.forward_auth.as_ref()
    }

    /// The route for `path` (already normalised, see [`crate::path`]): the longest prefix that
    /// matches on a segment boundary, ignoring ASCII case (`/api` matches `/api`, `/API/x`, not
    /// `/apix`; `/api/` matches `/api/x`).
    pub(crate) fn find(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.config.path, path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let cfg = Config {
            routes: ["/", "/api", "/api/admin/"]
                .iter()
                .map(|p| RouteConfig {
                    path: (*p).into(),
                    auth: AuthMode::None,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let t = RouteTable::new(&cfg, |_| None).unwrap();
        let hit = |p: &str| t.find(p).map(|r| r.config.path.clone());
        assert_eq!(hit("/api/admin/users").as_deref(), Some("/api/admin/"));
        // A directory route covers the directory itself: `/api/admin` is not left to `/api`.
        assert_eq!(hit("/api/admin").as_deref(), Some("/api/admin/"));
        assert_eq!(hit("/api/adminx").as_deref(), Some("/api"));
        assert_eq!(hit("/api").as_deref(), Some("/api"));
        assert_eq!(hit("/apix").as_deref(), Some("/"));
        assert_eq!(hit("/other").as_deref(), Some("/"));
        let t = RouteTable::new(
            &Config {
                routes: vec![],
                ..Default::default()
            },
            |_| None,
        )
        .unwrap();
        assert!(t.find("/").is_none());
        assert_eq!(hit("/API/Admin/x").as_deref(), Some("/api/admin/"));
    }

    #[test]
    fn a_route_that_must_authenticate_without_a_provider_is_an_error() {
        let cfg = Config {
            routes: vec![RouteConfig {
                path: "/api".into(),
                provider: Some("nope".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let err = RouteTable::new(&cfg, |_| None).err().unwrap();
        assert!(err.starts_with("routes[0].provider"), "{err}");
    }
}
