//! The provider's signing keys (RFC 7517 §5 JWK Set), filtered to what may verify an access token.
//!
//! Dropped on load: symmetric keys (`kty: oct` — a public JWKS must never make an HMAC secret of
//! itself, the HS256-with-public-key attack), encryption keys (`use: enc`), keys without `kid`
//! (tokens select keys by kid only), and keys whose type matches no configured algorithm.
//! Entra's keys carry no `alg` (optional in RFC 7517 §4.4): the family is inferred from `kty` and the
//! algorithm always comes from configuration, never from the token alone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_json::Value;
use url::Url;

use super::{ProviderError, http};

/// One verification key from the JWKS.
///
/// ```
/// use jsonwebtoken::{AlgorithmFamily, DecodingKey};
/// use tollgate::provider::VerifyingKey;
/// let key = VerifyingKey {
///     kid: "ed-1".into(),
///     key: DecodingKey::from_ed_components("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")?,
///     family: AlgorithmFamily::Ed,
///     alg: None,
///     issuer: None,
/// };
/// assert_eq!(format!("{key:?}"), r#"VerifyingKey { kid: "ed-1", family: Ed, alg: None }"#);
/// # Ok::<(), jsonwebtoken::errors::Error>(())
/// ```
pub struct VerifyingKey {
    /// The key id.
    pub kid: String,
    /// The key material.
    pub key: DecodingKey,
    /// The key's algorithm family, from `kty`.
    pub family: AlgorithmFamily,
    /// The JWK's own `alg`, when it names one: the token's algorithm must then equal it.
    pub alg: Option<Algorithm>,
    /// Entra's per-key `issuer` (may be a `{tenantid}` template): the token's `iss` must match it.
    pub issuer: Option<String>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .finish()
    }
}

impl VerifyingKey {
    /// Whether this key may verify a signature made with `alg`.
    ///
    /// ```
    /// # use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
    /// # use tollgate::provider::VerifyingKey;
    /// # let n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
    /// let key = VerifyingKey {
    ///     kid: "rsa-1".into(),
    ///     key: DecodingKey::from_rsa_components(n, "AQAB")?,
    ///     family: AlgorithmFamily::Rsa,
    ///     alg: Some(Algorithm::PS256), // the JWK's own `alg` pins the algorithm
    ///     issuer: None,
    /// };
    /// assert!(key.allows(Algorithm::PS256));
    /// assert!(!key.allows(Algorithm::RS256) && !key.allows(Algorithm::ES256));
    /// # Ok::<(), jsonwebtoken::errors::Error>(())
    /// ```
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.family == alg_family(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// The keys loaded from one JWKS fetch.
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
/// let keys = provider.key_set();
/// for kid in keys.kids() {
///     assert_eq!(keys.get(&kid).unwrap().family, jsonwebtoken::AlgorithmFamily::Rsa);
/// }
/// # idp.shutdown().await;
/// # Ok(()) }
/// # #[cfg(not(feature = "dev-idp"))]
/// # fn main() {}
/// ```
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<VerifyingKey>>,
    fetched_at: Option<Instant>,
}

impl KeySet {
    pub(super) fn empty() -> Self {
        Self::default()
    }

    /// The key with this kid.
    ///
    /// ```
    /// use tollgate::provider::KeySet;
    /// assert!(KeySet::default().get("some-kid").is_none());
    /// ```
    pub fn get(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        self.keys.get(kid).cloned()
    }

    /// Number of usable keys.
    ///
    /// ```
    /// use tollgate::provider::KeySet;
    /// assert_eq!(KeySet::default().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no usable key is loaded.
    ///
    /// ```
    /// use tollgate::provider::KeySet;
    /// assert!(KeySet::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, for diagnostics.
    ///
    /// ```
    /// use tollgate::provider::KeySet;
    /// assert!(KeySet::default().kids().is_empty());
    /// ```
    pub fn kids(&self) -> Vec<String> {
        self.keys.keys().cloned().collect()
    }

    /// Whether replacing `self` by `next` takes away a key id, so that what it signed must no
    /// longer be trusted from any cache.
    pub(super) fn retired_by(&self, next: &KeySet) -> bool {
        self.keys.keys().any(|kid| !next.keys.contains_key(kid))
    }

    pub(super) fn is_stale(&self, max: Duration) -> bool {
        self.fetched_at.is_some_and(|t| t.elapsed() > max)
    }
}

pub(super) async fn fetch(
    client: &reqwest::Client,
    url: &Url,
    algorithms: &[Algorithm],
) -> Result<KeySet, ProviderError> {
    use tracing::Instrument as _;
    const WHAT: &str = "JWKS";
    let span = crate::telemetry::span!(
        "jwks_fetch",
        otel.status_code = tracing::field::Empty,
        server.address = url.host_str().unwrap_or(""),
        jwks.keys = tracing::field::Empty,
    );
    let doc = http::get_json(client, url, WHAT)
        .instrument(span.clone())
        .await;
    let result = doc.and_then(|doc| {
        key_set(&doc, algorithms).map_err(|message| ProviderError::Invalid {
            what: WHAT,
            message,
        })
    });
    match &result {
        Ok(keys) => span.record("jwks.keys", keys.keys.len()),
        Err(_) => span.record("otel.status_code", "ERROR"),
    };
    result
}

/// The key set of a JWK Set document just fetched.
pub(crate) fn key_set(doc: &Value, algorithms: &[Algorithm]) -> Result<KeySet, String> {
    Ok(KeySet {
        keys: parse(doc, algorithms)?,
        fetched_at: Some(Instant::now()),
    })
}

/// Parses a JWK Set, keeping only verification keys usable with `algorithms`.
pub(crate) fn parse(
    doc: &Value,
    algorithms: &[Algorithm],
) -> Result<HashMap<String, Arc<VerifyingKey>>, String> {
    let Some(list) = doc.get("keys").and_then(Value::as_array) else {
        return Err("no \"keys\" array".into());
    };
    let mut keys = HashMap::new();
    for jwk in list {
        if let Some(k) = parse_key(jwk, algorithms) {
            keys.insert(k.kid.clone(), Arc::new(k));
        }
    }
    Ok(keys)
}

fn parse_key(jwk: &Value, algorithms: &[Algorithm]) -> Option<VerifyingKey> {
    let s = |name: &str| jwk.get(name).and_then(Value::as_str);
    let kid = s("kid").filter(|k| !k.is_empty())?;
    if s("use").is_some_and(|u| u != "sig") {
        return None;
    }
    if let Some(ops) = jwk.get("key_ops").and_then(Value::as_array)
        && !ops.iter().any(|o| o.as_str() == Some("verify"))
    {
        return None;
    }
    let alg = match s("alg") {
        Some(a) => Some(a.parse::<Algorithm>().ok()?),
        None => None,
    };
    let (family, key) = match s("kty")? {
        "RSA" => (
            AlgorithmFamily::Rsa,
            DecodingKey::from_rsa_components(s("n")?, s("e")?).ok()?,
        ),
        "EC" => (
            AlgorithmFamily::Ec,
            DecodingKey::from_ec_components(s("x")?, s("y")?).ok()?,
        ),
        "OKP" if s("crv") == Some("Ed25519") => (
            AlgorithmFamily::Ed,
            DecodingKey::from_ed_components(s("x")?).ok()?,
        ),
        // "oct" and anything unknown: never a verification key here.
        _ => return None,
    };
    if alg.is_some_and(|a| alg_family(a) != family) {
        return None;
    }
    let usable = algorithms
        .iter()
        .any(|a| alg_family(*a) == family && alg.is_none_or(|k| k == *a));
    if !usable {
        return None;
    }
    Some(VerifyingKey {
        kid: kid.to_owned(),
        key,
        family,
        alg,
        issuer: s("issuer").map(str::to_owned),
    })
}

/// The family an algorithm belongs to.
pub(crate) fn alg_family(alg: Algorithm) -> AlgorithmFamily {
    alg.family()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_oct_enc_kidless_and_wrong_family_keys() {
        let n = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "good", "use": "sig", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": "AQAB"},
            {"kty": "RSA", "n": n, "e": "AQAB"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "hs-alg", "alg": "HS256", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": n, "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        let keys = parse(&doc, &[Algorithm::RS256]).unwrap();
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, vec!["good"]);
        assert!(keys["good"].allows(Algorithm::RS256));
        assert!(!keys["good"].allows(Algorithm::HS256));
        let keys = parse(
            &doc,
            &[Algorithm::RS256, Algorithm::PS256, Algorithm::ES256],
        )
        .unwrap();
        assert!(keys["ps"].allows(Algorithm::PS256) && !keys["ps"].allows(Algorithm::RS256));
        assert!(keys.contains_key("ec"));
    }
}
