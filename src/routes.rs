//! The public listener's route table: longest path prefix wins.

use std::sync::Arc;

use crate::config::{AuthMode, Config, RouteConfig};
use crate::validate::Validator;

/// One configured route, resolved against its provider.
pub(crate) struct Route {
    pub(crate) config: RouteConfig,
    /// `None` only for `auth = "none"` routes.
    pub(crate) validator: Option<Validator>,
    /// Metric label: the configured path prefix (bounded cardinality).
    pub(crate) label: Arc<str>,
}

/// Routes sorted longest prefix first.
pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    pub(crate) fn new(config: &Config, validator_for: impl Fn(&str) -> Option<Validator>) -> Self {
        let mut routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| {
                let validator = match r.auth {
                    AuthMode::None => None,
                    _ => config
                        .route_provider(r)
                        .ok()
                        .and_then(|p| validator_for(&p.name)),
                };
                Route {
                    config: r.clone(),
                    validator,
                    label: Arc::from(r.path.as_str()),
                }
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.config.path.len()));
        Self { routes }
    }

    /// The route for `path`: the longest prefix that matches on a segment boundary
    /// (`/api` matches `/api` and `/api/x`, not `/apix`; `/api/` matches `/api/x`).
    pub(crate) fn find(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| prefix_matches(&r.config.path, path))
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => {
            prefix.ends_with('/')
                || rest.is_empty()
                || rest.starts_with('/')
                || rest.starts_with('?')
        }
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
        let t = RouteTable::new(&cfg, |_| None);
        let hit = |p: &str| t.find(p).map(|r| r.config.path.clone());
        assert_eq!(hit("/api/admin/users").as_deref(), Some("/api/admin/"));
        assert_eq!(hit("/api/admin").as_deref(), Some("/api"));
        assert_eq!(hit("/api").as_deref(), Some("/api"));
        assert_eq!(hit("/apix").as_deref(), Some("/"));
        assert_eq!(hit("/other").as_deref(), Some("/"));
        let t = RouteTable::new(
            &Config {
                routes: vec![],
                ..Default::default()
            },
            |_| None,
        );
        assert!(t.find("/").is_none());
    }
}
