//! OpenID Connect Discovery 1.0 §3/§4: the provider's metadata document.

use serde_json::Value;
use url::Url;

use super::{ProviderError, http};
use crate::config::ProviderConfig;

/// The parts of the provider metadata tollgate uses, plus the whole document (the login proxy
/// serves it rewritten).
///
/// ```
/// use tollgate::{config::ProviderConfig, provider::Provider};
/// let provider = Provider::new(ProviderConfig {
///     client_id: "app".into(),
///     issuer: Some("https://login.example/v2.0".into()),
///     jwks_uri: Some("https://login.example/keys".parse()?),
///     ..Default::default()
/// })?;
/// let metadata = provider.metadata().expect("configured explicitly, no discovery needed");
/// assert_eq!(metadata.jwks_uri.as_str(), "https://login.example/keys");
/// assert!(metadata.document.as_object().is_some_and(|d| d.is_empty()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Metadata {
    /// `issuer`; may be an Entra `{tenantid}` template.
    pub issuer: String,
    /// `jwks_uri`.
    pub jwks_uri: Url,
    /// `token_endpoint`.
    pub token_endpoint: Option<Url>,
    /// `authorization_endpoint`.
    pub authorization_endpoint: Option<Url>,
    /// `end_session_endpoint`.
    pub end_session_endpoint: Option<Url>,
    /// The document as served (empty object when configured explicitly).
    pub document: Value,
}

/// Metadata from explicit configuration alone, when no discovery URL is set.
pub(super) fn from_config(cfg: &ProviderConfig) -> Option<Metadata> {
    if cfg.well_known_url.is_some() {
        return None;
    }
    Some(Metadata {
        issuer: cfg.issuer.clone()?,
        jwks_uri: cfg.jwks_uri.clone()?,
        token_endpoint: cfg.token_endpoint.clone(),
        authorization_endpoint: None,
        end_session_endpoint: None,
        document: Value::Object(Default::default()),
    })
}

/// Fetches the discovery document; explicitly configured values override fetched ones.
pub(super) async fn fetch(
    client: &reqwest::Client,
    url: &Url,
    cfg: &ProviderConfig,
) -> Result<Metadata, ProviderError> {
    let document = http::get_json(client, url, WHAT).await?;
    from_document(document, cfg)
}

const WHAT: &str = "discovery document";

/// The metadata in a fetched discovery `document`; explicitly configured values override it.
pub(crate) fn from_document(
    document: Value,
    cfg: &ProviderConfig,
) -> Result<Metadata, ProviderError> {
    let field = |name: &str| {
        document
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let url_field = |name: &str| -> Result<Option<Url>, ProviderError> {
        field(name)
            .map(|s| {
                Url::parse(&s).map_err(|e| ProviderError::Invalid {
                    what: WHAT,
                    message: format!("{name}: {e}"),
                })
            })
            .transpose()
    };
    let issuer = match (&cfg.issuer, field("issuer")) {
        (Some(i), _) => i.clone(),
        (None, Some(i)) => i,
        (None, None) => {
            return Err(ProviderError::Invalid {
                what: WHAT,
                message: "no issuer".into(),
            });
        }
    };
    let jwks_uri = match (&cfg.jwks_uri, url_field("jwks_uri")?) {
        (Some(u), _) => u.clone(),
        (None, Some(u)) => u,
        (None, None) => {
            return Err(ProviderError::Invalid {
                what: WHAT,
                message: "no jwks_uri".into(),
            });
        }
    };
    let token_endpoint = match &cfg.token_endpoint {
        Some(u) => Some(u.clone()),
        None => url_field("token_endpoint")?,
    };
    Ok(Metadata {
        issuer,
        jwks_uri,
        token_endpoint,
        authorization_endpoint: url_field("authorization_endpoint")?,
        end_session_endpoint: url_field("end_session_endpoint")?,
        document,
    })
}
