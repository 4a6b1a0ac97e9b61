//! Where the environment comes from ([`EnvSource`]), which `TOLLGATE_*` names are options, and
//! the Texas/NAIS names (`AZURE_*`, `BIND_ADDRESS`) applied to the `entra_id` provider,
//! `IDPORTEN_*` to `idporten`, `TOKEN_X_*` to `tokenx` and `MASKINPORTEN_*` to `maskinporten`.

use std::collections::HashMap;

use figment::Figment;
use url::Url;

use super::{ClientAuthMethod, Config, ConfigError, ProviderConfig, Secret};

/// Where environment variables come from: the process, or a map in tests.
///
/// ```
/// use tollgate::config::{Config, EnvSource};
/// struct Fixed;
/// impl EnvSource for Fixed {
///     fn vars(&self) -> Vec<(String, String)> {
///         vec![("TOLLGATE_LOG__LEVEL".into(), "debug".into())]
///     }
/// }
/// assert_eq!(Config::from_toml_str("", &Fixed)?.log.level, "debug");
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
pub trait EnvSource {
    /// All variables (name, value).
    ///
    /// ```
    /// use tollgate::config::{EnvSource, MapEnv};
    /// assert_eq!(MapEnv::from([("BIND_ADDRESS", "127.0.0.1:7164")]).vars().len(), 1);
    /// ```
    fn vars(&self) -> Vec<(String, String)>;
}

/// The process environment.
///
/// Variables whose name or value is not UTF-8 are skipped.
///
/// ```
/// use tollgate::config::{EnvSource, ProcessEnv};
/// assert!(ProcessEnv.vars().len() <= std::env::vars_os().count());
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect()
    }
}

/// A fixed set of variables, for tests and embedding.
///
/// ```
/// use tollgate::config::{Config, MapEnv};
/// let env = MapEnv::from([("TOLLGATE_UPSTREAM__URL", "http://127.0.0.1:8000")]);
/// let cfg = Config::from_toml_str("[upstream]\nurl = \"http://127.0.0.1:3000\"\n", &env)?;
/// assert_eq!(cfg.upstream.url.port(), Some(8000)); // the environment wins
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct MapEnv(HashMap<String, String>);

impl<const N: usize> From<[(&str, &str); N]> for MapEnv {
    fn from(vars: [(&str, &str); N]) -> Self {
        Self(
            vars.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for MapEnv {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(vars: I) -> Self {
        Self(
            vars.into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }
}

impl EnvSource for MapEnv {
    fn vars(&self) -> Vec<(String, String)> {
        self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// The `TOLLGATE_*` variables in `env` that are not configuration and were left alone
/// (Kubernetes service links such as `TOLLGATE_SERVICE_HOST`), for a debug line at start.
///
/// ```
/// use tollgate::config::{Config, MapEnv, ignored_env_names};
/// let env = MapEnv::from([
///     ("TOLLGATE_SERVICE_HOST", "10.0.0.7"),
///     ("TOLLGATE_PORT_8080_TCP", "tcp://10.0.0.7:8080"),
///     ("TOLLGATE_LOG__LEVEL", "debug"),
/// ]);
/// assert_eq!(Config::from_toml_str("", &env)?.log.level, "debug");
/// assert_eq!(ignored_env_names(&env), ["TOLLGATE_PORT_8080_TCP", "TOLLGATE_SERVICE_HOST"]);
/// # Ok::<(), tollgate::config::ConfigError>(())
/// ```
pub fn ignored_env_names(env: &dyn EnvSource) -> Vec<String> {
    let mut names: Vec<String> = env
        .vars()
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| {
            name.starts_with("TOLLGATE_") && name != "TOLLGATE_CONFIG" && env_option(name).is_none()
        })
        .collect();
    names.sort();
    names
}

/// `figment` with every `TOLLGATE_<SECTION>__<KEY>` variable of `vars` merged over it.
pub(super) fn merge_tollgate_vars(mut figment: Figment, vars: &[(String, String)]) -> Figment {
    for (name, value) in vars {
        let Some(rest) = env_option(name) else {
            continue;
        };
        let key = rest.to_ascii_lowercase().replace("__", ".");
        let last = key.rsplit('.').next().unwrap_or(&key);
        let parsed = if STRING_KEYS.contains(&last) {
            figment::value::Value::from(value.clone())
        } else {
            value
                .parse::<figment::value::Value>()
                .unwrap_or_else(|never| match never {})
        };
        figment = figment.merge((key, parsed));
    }
    figment
}

/// Applies the Texas/NAIS names: `BIND_ADDRESS` to `listen.api`, the `AZURE_*` ones to the
/// provider named `entra_id` (created when absent and `AZURE_APP_CLIENT_ID` is set).
pub(super) fn apply_nais_env(
    cfg: &mut Config,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    let get = |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if let Some(addr) = get("BIND_ADDRESS") {
        let addr = addr.parse().map_err(|_| {
            ConfigError::invalid("BIND_ADDRESS", "not a socket address (host:port)")
        })?;
        cfg.listen.api = Some(addr);
    }
    // Texas switches each provider family on with `<FAMILY>_ENABLED`; an Azure family switched
    // off explicitly configures nothing, whatever else its variables say.
    if get("AZURE_ENABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("false")) {
        return Ok(());
    }
    let client_id = get("AZURE_APP_CLIENT_ID");
    let created = client_id.is_some().then(ProviderConfig::default);
    let Some(p) = provider_slot(cfg, "entra_id", created) else {
        return Ok(());
    };
    if let Some(id) = client_id {
        p.client_id = id;
    }
    if let Some(secret) = get("AZURE_APP_CLIENT_SECRET") {
        p.client_secret = Some(Secret::new(secret));
    }
    if let Some(jwk) = get("AZURE_APP_JWK") {
        p.client_jwk = Some(Secret::new(jwk));
        if p.client_secret.is_none() && p.client_secret_file.is_none() {
            p.client_auth = ClientAuthMethod::PrivateKeyJwt;
        }
    }
    let url = |n: &str| url_var(n, get(n));
    if let Some(u) = url("AZURE_APP_WELL_KNOWN_URL")? {
        p.well_known_url = Some(u);
    }
    if let Some(u) = url("AZURE_OPENID_CONFIG_JWKS_URI")? {
        p.jwks_uri = Some(u);
    }
    if let Some(u) = url("AZURE_OPENID_CONFIG_TOKEN_ENDPOINT")? {
        p.token_endpoint = Some(u);
    }
    if let Some(iss) = get("AZURE_OPENID_CONFIG_ISSUER") {
        p.issuer = Some(iss);
    }
    Ok(())
}

/// Applies Texas's ID-porten family: with `IDPORTEN_ENABLED=true`, a provider named `idporten`
/// (created when absent) validates ID-porten tokens for `IDPORTEN_AUDIENCE` and exchanges
/// nothing (`grant = "introspect_only"`), from `IDPORTEN_WELL_KNOWN_URL`, `IDPORTEN_ISSUER` and
/// `IDPORTEN_JWKS_URI`.
pub(super) fn apply_idporten_env(
    cfg: &mut Config,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    let get = |n: &str| set_var(vars, n);
    if !get("IDPORTEN_ENABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(());
    }
    let created = ProviderConfig {
        name: "idporten".into(),
        grant: super::ProviderGrant::IntrospectOnly,
        ..ProviderConfig::default()
    };
    let Some(p) = provider_slot(cfg, "idporten", Some(created)) else {
        return Ok(());
    };
    let url = |n: &str| url_var(n, get(n));
    if let Some(audience) = get("IDPORTEN_AUDIENCE") {
        p.audiences = vec![audience];
    }
    if let Some(u) = url("IDPORTEN_WELL_KNOWN_URL")? {
        p.well_known_url = Some(u);
    }
    if let Some(u) = url("IDPORTEN_JWKS_URI")? {
        p.jwks_uri = Some(u);
    }
    if let Some(iss) = get("IDPORTEN_ISSUER") {
        p.issuer = Some(iss);
    }
    Ok(())
}

/// Applies Texas's TokenX family: with `TOKEN_X_ENABLED=true`, a provider named `tokenx`
/// (created when absent) exchanges user tokens by RFC 8693 (`grant = "token_exchange"`) as
/// `TOKEN_X_CLIENT_ID`, authenticating with `TOKEN_X_PRIVATE_JWK`, from
/// `TOKEN_X_WELL_KNOWN_URL`, `TOKEN_X_ISSUER`, `TOKEN_X_JWKS_URI` and `TOKEN_X_TOKEN_ENDPOINT`.
pub(super) fn apply_token_x_env(
    cfg: &mut Config,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    apply_key_family(cfg, vars, &TOKEN_X)
}

/// Applies Texas's Maskinporten family: with `MASKINPORTEN_ENABLED=true`, a provider named
/// `maskinporten` (created when absent) gets app tokens by the RFC 7523 JWT bearer grant
/// (`grant = "jwt_bearer"`) as `MASKINPORTEN_CLIENT_ID`, signed with `MASKINPORTEN_CLIENT_JWK`,
/// from `MASKINPORTEN_WELL_KNOWN_URL`, `MASKINPORTEN_ISSUER`, `MASKINPORTEN_JWKS_URI` and
/// `MASKINPORTEN_TOKEN_ENDPOINT`.
pub(super) fn apply_maskinporten_env(
    cfg: &mut Config,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    apply_key_family(cfg, vars, &MASKINPORTEN)
}

/// The variable names of a Texas provider family whose client authenticates with a private JWK.
struct KeyFamily {
    provider: &'static str,
    grant: super::ProviderGrant,
    enabled: &'static str,
    client_id: &'static str,
    jwk: &'static str,
    well_known_url: &'static str,
    issuer: &'static str,
    jwks_uri: &'static str,
    token_endpoint: &'static str,
}

const TOKEN_X: KeyFamily = KeyFamily {
    provider: "tokenx",
    grant: super::ProviderGrant::TokenExchange,
    enabled: "TOKEN_X_ENABLED",
    client_id: "TOKEN_X_CLIENT_ID",
    jwk: "TOKEN_X_PRIVATE_JWK",
    well_known_url: "TOKEN_X_WELL_KNOWN_URL",
    issuer: "TOKEN_X_ISSUER",
    jwks_uri: "TOKEN_X_JWKS_URI",
    token_endpoint: "TOKEN_X_TOKEN_ENDPOINT",
};

const MASKINPORTEN: KeyFamily = KeyFamily {
    provider: "maskinporten",
    grant: super::ProviderGrant::JwtBearer,
    enabled: "MASKINPORTEN_ENABLED",
    client_id: "MASKINPORTEN_CLIENT_ID",
    jwk: "MASKINPORTEN_CLIENT_JWK",
    well_known_url: "MASKINPORTEN_WELL_KNOWN_URL",
    issuer: "MASKINPORTEN_ISSUER",
    jwks_uri: "MASKINPORTEN_JWKS_URI",
    token_endpoint: "MASKINPORTEN_TOKEN_ENDPOINT",
};

/// Texas turns a family on only with `<FAMILY>_ENABLED=true` (as `IDPORTEN_*`); a provider of
/// the family's name in the file is completed by the variables, which win, as `AZURE_*` do.
fn apply_key_family(
    cfg: &mut Config,
    vars: &[(String, String)],
    family: &KeyFamily,
) -> Result<(), ConfigError> {
    let get = |n: &str| set_var(vars, n);
    if !get(family.enabled).is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(());
    }
    let created = ProviderConfig {
        name: family.provider.into(),
        grant: family.grant,
        client_auth: ClientAuthMethod::PrivateKeyJwt,
        ..ProviderConfig::default()
    };
    let Some(p) = provider_slot(cfg, family.provider, Some(created)) else {
        return Ok(());
    };
    if let Some(id) = get(family.client_id) {
        p.client_id = id;
    }
    if let Some(jwk) = get(family.jwk) {
        p.client_jwk = Some(Secret::new(jwk));
        p.client_auth = ClientAuthMethod::PrivateKeyJwt;
    }
    let url = |n: &str| url_var(n, get(n));
    if let Some(u) = url(family.well_known_url)? {
        p.well_known_url = Some(u);
    }
    if let Some(u) = url(family.jwks_uri)? {
        p.jwks_uri = Some(u);
    }
    if let Some(u) = url(family.token_endpoint)? {
        p.token_endpoint = Some(u);
    }
    if let Some(iss) = get(family.issuer) {
        p.issuer = Some(iss);
    }
    Ok(())
}

/// Applies Azure Workload Identity: the webhook mounts a projected service-account token and sets
/// `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID` and `AZURE_AUTHORITY_HOST`
/// (<https://azure.github.io/azure-workload-identity/docs/topics/service-account-labels-and-annotations.html>).
/// The `entra_id` provider (created when absent and both ids are set) then authenticates with
/// that file as its client assertion, re-read before each use, unless it already has a secret or
/// key of its own: an explicit credential always wins.
pub(super) fn apply_workload_identity(
    cfg: &mut Config,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    let get = |n: &str| set_var(vars, n);
    let Some(token_file) = get("AZURE_FEDERATED_TOKEN_FILE") else {
        return Ok(());
    };
    let (client_id, tenant) = (get("AZURE_CLIENT_ID"), get("AZURE_TENANT_ID"));
    let created = (client_id.is_some() && tenant.is_some()).then(ProviderConfig::default);
    let Some(p) = provider_slot(cfg, "entra_id", created) else {
        return Ok(());
    };
    if has_credential(p) {
        return Ok(());
    }
    p.client_auth = ClientAuthMethod::Federated;
    p.client_assertion_file = Some(token_file.into());
    if p.client_id.is_empty()
        && let Some(id) = client_id
    {
        p.client_id = id;
    }
    if p.well_known_url.is_none()
        && let Some(tenant) = tenant
    {
        // The webhook sets the authority of the cloud the cluster runs in (public, US Gov,
        // China); the public cloud's is the default, as in the Azure SDKs.
        let host = get("AZURE_AUTHORITY_HOST")
            .unwrap_or_else(|| "https://login.microsoftonline.com/".to_owned());
        let url = format!(
            "{}/{tenant}/v2.0/.well-known/openid-configuration",
            host.trim_end_matches('/')
        );
        p.well_known_url = Some(Url::parse(&url).map_err(|e| {
            ConfigError::invalid("AZURE_AUTHORITY_HOST", format!("not a URL: {e}"))
        })?);
    }
    Ok(())
}

/// The provider named `name`, or `created` added under that name when there is none.
fn provider_slot<'a>(
    cfg: &'a mut Config,
    name: &str,
    created: Option<ProviderConfig>,
) -> Option<&'a mut ProviderConfig> {
    let i = match cfg.providers.iter().position(|p| p.name == name) {
        Some(i) => i,
        None => {
            cfg.providers.push(created?);
            cfg.providers.len() - 1
        }
    };
    cfg.providers.get_mut(i)
}

/// A variable that is set to something: trimmed, and absent when empty (a pod spec's
/// `value: ""` configures nothing).
fn set_var(vars: &[(String, String)], name: &str) -> Option<String> {
    vars.iter()
        .find(|(k, v)| k == name && !v.trim().is_empty())
        .map(|(_, v)| v.trim().to_owned())
}

/// `value` parsed as a URL; the error names the variable.
fn url_var(name: &str, value: Option<String>) -> Result<Option<Url>, ConfigError> {
    value
        .map(|v| Url::parse(&v).map_err(|e| ConfigError::invalid(name, e.to_string())))
        .transpose()
}

/// Whether the provider was given a credential of its own (file, environment or method).
fn has_credential(p: &ProviderConfig) -> bool {
    p.client_auth != ProviderConfig::default().client_auth
        || p.client_secret.is_some()
        || p.client_secret_file.is_some()
        || p.client_jwk.is_some()
        || p.client_jwk_file.is_some()
        || p.client_key_file.is_some()
        || p.client_assertion_file.is_some()
}

/// Option names whose values stay strings even when they look like numbers or booleans.
const STRING_KEYS: &[&str] = &[
    "client_secret",
    "client_id",
    "key",
    "client_jwk",
    "name",
    "level",
    "service_name",
];

/// The `<SECTION>__<KEY>` part of a `TOLLGATE_*` variable that is configuration.
///
/// Only names with a `__` level separator are: Kubernetes puts `TOLLGATE_PORT`,
/// `TOLLGATE_SERVICE_HOST`, `TOLLGATE_PORT_8080_TCP_ADDR` ... into every pod of a namespace that
/// has a Service named `tollgate` (service links), and those must not stop the start. A
/// misspelt key inside a section (`TOLLGATE_LOG__LEVLE`) still has the `__` and stays an error.
/// `TOLLGATE_CONFIG` names the file (read by the CLI); it is not an option.
fn env_option(name: &str) -> Option<&str> {
    name.strip_prefix("TOLLGATE_")
        .filter(|rest| rest.contains("__") && name != "TOLLGATE_CONFIG")
}
