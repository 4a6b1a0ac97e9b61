//! Scope parsing the way Entra resolves it: OIDC scopes, resource-qualified scopes
//! (`api://.../name`, `{client id}/name`, `https://graph.microsoft.com/name`), bare names meaning
//! Microsoft Graph, and `{resource}/.default`.

use super::aad_error::AadError;
use super::config::DevApp;
use super::{GRAPH_APP_ID_URI, GRAPH_CLIENT_ID};

/// The OIDC scopes of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OidcScopes {
    pub(crate) openid: bool,
    pub(crate) profile: bool,
    pub(crate) email: bool,
    pub(crate) offline_access: bool,
}

impl OidcScopes {
    fn names(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.openid, "openid"),
            (self.profile, "profile"),
            (self.email, "email"),
            (self.offline_access, "offline_access"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
    }
}

/// Delegated scopes granted on one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResourceScopes {
    /// Client id of the resource app: the `aud` of its tokens.
    pub(crate) client_id: String,
    /// The prefix used in fully qualified scope strings (App ID URI, else client id).
    qualifier: String,
    /// Short scope names (the `scp` claim), `.default` already expanded.
    pub(crate) names: Vec<String>,
}

impl ResourceScopes {
    /// The `scp` claim.
    pub(crate) fn scp(&self) -> String {
        self.names.join(" ")
    }

    /// The default resource when a request names OIDC scopes only: Microsoft Graph `User.Read`.
    pub(crate) fn graph_default(apps: &[DevApp]) -> Option<Self> {
        let graph = find_app(apps, GRAPH_CLIENT_ID)?;
        graph.scopes.iter().any(|s| s == "User.Read").then(|| Self {
            client_id: graph.client_id.clone(),
            qualifier: qualifier(graph),
            names: vec!["User.Read".into()],
        })
    }
}

/// A parsed delegated `scope` parameter.
#[derive(Clone, Debug, Default)]
pub(crate) struct ParsedScope {
    pub(crate) oidc: OidcScopes,
    /// Resources in the order the request first named them.
    pub(crate) resources: Vec<ResourceScopes>,
}

impl ParsedScope {
    /// Parses a delegated scope request. Several resources are allowed (authorize consents to
    /// all of them); grants that issue one token check `single_resource`.
    pub(crate) fn parse(scope: &str, apps: &[DevApp]) -> Result<Self, AadError> {
        let mut parsed = ParsedScope::default();
        let mut defaults: Vec<String> = Vec::new();
        for item in scope.split_whitespace() {
            match item {
                "openid" => parsed.oidc.openid = true,
                "profile" => parsed.oidc.profile = true,
                "email" => parsed.oidc.email = true,
                "offline_access" => parsed.oidc.offline_access = true,
                _ => {
                    let (resource, name) = match item.rsplit_once('/') {
                        Some((resource, name)) if !resource.is_empty() && !name.is_empty() => {
                            (resource, name)
                        }
                        Some(_) => return Err(invalid_scope(scope)),
                        None => (GRAPH_APP_ID_URI, item),
                    };
                    let app =
                        find_resource(apps, resource).ok_or_else(|| unknown_resource(resource))?;
                    let position = match parsed
                        .resources
                        .iter()
                        .position(|r| r.client_id == app.client_id)
                    {
                        Some(position) => position,
                        None => {
                            parsed.resources.push(ResourceScopes {
                                client_id: app.client_id.clone(),
                                qualifier: qualifier(app),
                                names: Vec::new(),
                            });
                            parsed.resources.len() - 1
                        }
                    };
                    let entry = &mut parsed.resources[position];
                    let is_default = defaults.contains(&app.client_id);
                    if name == ".default" {
                        // `.default` cannot be combined with other scopes of the same resource.
                        if is_default || !entry.names.is_empty() || app.scopes.is_empty() {
                            return Err(invalid_scope(scope));
                        }
                        defaults.push(app.client_id.clone());
                        entry.names = app.scopes.clone();
                    } else {
                        let known = app.scopes.iter().find(|s| s.eq_ignore_ascii_case(name));
                        let Some(known) = known else {
                            return Err(invalid_scope(scope));
                        };
                        if is_default {
                            return Err(invalid_scope(scope));
                        }
                        if !entry.names.contains(known) {
                            entry.names.push(known.clone());
                        }
                    }
                }
            }
        }
        Ok(parsed)
    }

    /// The one resource a token is issued for: the first named, else Graph `User.Read` when
    /// `allow_graph_default`. More than one resource is `invalid_scope`.
    pub(crate) fn single_resource(
        &self,
        scope: &str,
        apps: &[DevApp],
        allow_graph_default: bool,
    ) -> Result<ResourceScopes, AadError> {
        match self.resources.as_slice() {
            [one] => Ok(one.clone()),
            [] if allow_graph_default => {
                ResourceScopes::graph_default(apps).ok_or_else(|| invalid_scope(scope))
            }
            _ => Err(invalid_scope(scope)),
        }
    }
}

/// The `scope` member of a token response: resource scopes fully qualified, then the OIDC
/// scopes of the request.
pub(crate) fn response_scope(resource: &ResourceScopes, oidc: OidcScopes) -> String {
    resource
        .names
        .iter()
        .map(|name| format!("{}/{name}", resource.qualifier))
        .chain(oidc.names().map(str::to_owned))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resolves a client-credentials scope: exactly one `{resource}/.default`.
pub(crate) fn parse_app_scope<'a>(scope: &str, apps: &'a [DevApp]) -> Result<&'a DevApp, AadError> {
    let items: Vec<&str> = scope.split_whitespace().collect();
    let [item] = items.as_slice() else {
        return Err(default_required(scope));
    };
    let Some(resource) = item.strip_suffix("/.default").filter(|r| !r.is_empty()) else {
        return Err(default_required(scope));
    };
    find_resource(apps, resource).ok_or_else(|| unknown_resource(resource))
}

/// Finds a resource by client id or App ID URI (GUIDs case-insensitively, URIs exactly as
/// Entra does in practice).
pub(crate) fn find_resource<'a>(apps: &'a [DevApp], resource: &str) -> Option<&'a DevApp> {
    apps.iter().find(|a| {
        a.client_id.eq_ignore_ascii_case(resource) || a.app_id_uri.as_deref() == Some(resource)
    })
}

pub(crate) fn find_app<'a>(apps: &'a [DevApp], client_id: &str) -> Option<&'a DevApp> {
    apps.iter()
        .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
}

fn qualifier(app: &DevApp) -> String {
    app.app_id_uri
        .clone()
        .unwrap_or_else(|| app.client_id.clone())
}

fn invalid_scope(scope: &str) -> AadError {
    AadError::invalid_scope(
        70011,
        format!(
            "The provided value for the input parameter 'scope' is not valid. The scope '{scope}' is not valid."
        ),
    )
}

fn default_required(scope: &str) -> AadError {
    AadError::invalid_scope(
        1002012,
        format!(
            "The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
        ),
    )
}

fn unknown_resource(resource: &str) -> AadError {
    AadError::new(
        "invalid_resource",
        500011,
        format!(
            "The resource principal named {resource} was not found in the tenant. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        DOWNSTREAM_APP_ID_URI, DOWNSTREAM_CLIENT_ID, DevIdpConfig, TOLLGATE_APP_ID_URI,
        TOLLGATE_CLIENT_ID,
    };

    fn apps() -> Vec<DevApp> {
        DevIdpConfig::default().apps
    }

    #[test]
    fn resolves_qualified_bare_and_default_scopes() {
        let apps = apps();
        let p = ParsedScope::parse(
            &format!("openid offline_access {TOLLGATE_APP_ID_URI}/access_as_user User.Read"),
            &apps,
        )
        .unwrap();
        assert!(p.oidc.openid && p.oidc.offline_access && !p.oidc.profile);
        assert_eq!(p.resources.len(), 2);
        assert_eq!(p.resources[0].client_id, TOLLGATE_CLIENT_ID);
        assert_eq!(p.resources[0].scp(), "access_as_user");
        assert_eq!(p.resources[1].client_id, GRAPH_CLIENT_ID);

        let d = ParsedScope::parse(&format!("{DOWNSTREAM_CLIENT_ID}/.default"), &apps).unwrap();
        assert_eq!(d.resources[0].scp(), "Data.Read Data.Write");
        assert_eq!(
            response_scope(
                &d.resources[0],
                OidcScopes {
                    openid: true,
                    ..Default::default()
                }
            ),
            format!("{DOWNSTREAM_APP_ID_URI}/Data.Read {DOWNSTREAM_APP_ID_URI}/Data.Write openid")
        );
    }

    #[test]
    fn refuses_unknown_scopes_and_default_mixing() {
        let apps = apps();
        for scope in [
            format!("{TOLLGATE_APP_ID_URI}/nope"),
            format!("{TOLLGATE_APP_ID_URI}/.default {TOLLGATE_APP_ID_URI}/read"),
            format!("{TOLLGATE_APP_ID_URI}/read {TOLLGATE_APP_ID_URI}/.default"),
            "/read".to_owned(),
        ] {
            assert_eq!(
                ParsedScope::parse(&scope, &apps).unwrap_err().error,
                "invalid_scope",
                "{scope}"
            );
        }
        let err = ParsedScope::parse("api://unknown/x", &apps).unwrap_err();
        assert_eq!((err.error, err.code), ("invalid_resource", 500011));
    }

    #[test]
    fn single_resource_rules() {
        let apps = apps();
        let two =
            ParsedScope::parse(&format!("{TOLLGATE_APP_ID_URI}/read User.Read"), &apps).unwrap();
        assert!(two.single_resource("s", &apps, true).is_err());
        let none = ParsedScope::parse("openid profile", &apps).unwrap();
        assert_eq!(
            none.single_resource("s", &apps, true).unwrap().client_id,
            GRAPH_CLIENT_ID
        );
        assert!(none.single_resource("s", &apps, false).is_err());
    }

    #[test]
    fn client_credentials_scope_must_be_one_default() {
        let apps = apps();
        assert_eq!(
            parse_app_scope(&format!("{DOWNSTREAM_APP_ID_URI}/.default"), &apps)
                .unwrap()
                .client_id,
            DOWNSTREAM_CLIENT_ID
        );
        assert_eq!(
            parse_app_scope(&format!("{DOWNSTREAM_CLIENT_ID}/.default"), &apps)
                .unwrap()
                .client_id,
            DOWNSTREAM_CLIENT_ID
        );
        assert_eq!(
            parse_app_scope(&format!("{DOWNSTREAM_APP_ID_URI}/Data.Read"), &apps)
                .unwrap_err()
                .error,
            "invalid_scope"
        );
        assert_eq!(
            parse_app_scope("", &apps).unwrap_err().error,
            "invalid_scope"
        );
        assert_eq!(
            parse_app_scope("api://nope/.default", &apps)
                .unwrap_err()
                .error,
            "invalid_resource"
        );
    }
}
