//! How tollgate authenticates itself at the token endpoint: RFC 6749 §2.3.1 (secret in the body
//! or HTTP Basic with form-encoded id and secret), RFC 7523 §2.2 / OIDC Core §9 `private_key_jwt`
//! (RS256 or PS256 with an RSA key, ES256 or ES384 with an EC P-256 or P-384 JWK; the key is
//! named by the certificate thumbprints `x5t` and `x5t#S256`, or by the `kid` of a JWK such as
//! Texas's `AZURE_APP_JWK` or `TOKEN_X_PRIVATE_JWK`), and federated credentials (a
//! workload-identity JWT read from a file on each use, because the platform rotates it).

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::config::{ClientAuthMethod, ProviderConfig, Secret};

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A client credential loaded once at start (files other than the federated assertion are read
/// here, so a missing key file fails start-up, not the first request).
///
/// ```
/// use tollgate::config::{ClientAuthMethod, ProviderConfig, Secret};
/// use tollgate::provider::client_auth::ClientAuth;
/// let auth = ClientAuth::from_config(&ProviderConfig {
///     client_id: "app".into(),
///     client_auth: ClientAuthMethod::ClientSecretBasic,
///     client_secret: Some(Secret::new("s3cret")),
///     ..Default::default()
/// })?;
/// assert_eq!(format!("{auth:?}"), r#"ClientAuth { client_id: "app", kind: "client_secret_basic" }"#);
/// # Ok::<(), tollgate::provider::client_auth::ClientAuthError>(())
/// ```
#[derive(Clone)]
pub struct ClientAuth {
    client_id: String,
    kind: Kind,
    /// SHA-256 of the credential as read (secret, key and certificate, JWK, assertion file
    /// path): a reload keeps this credential only if what it reads again is the same.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    fingerprint: [u8; 32],
}

#[derive(Clone)]
enum Kind {
    Post(Secret),
    Basic(Secret),
    Jwt {
        key: std::sync::Arc<EncodingKey>,
        alg: Algorithm,
        kid: Option<String>,
        thumbprints: Thumbprints,
    },
    Federated(PathBuf),
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Post(_) => "client_secret_post",
            Kind::Basic(_) => "client_secret_basic",
            Kind::Jwt { .. } => "private_key_jwt",
            Kind::Federated(_) => "federated",
        };
        f.debug_struct("ClientAuth")
            .field("client_id", &self.client_id)
            .field("kind", &kind)
            .finish()
    }
}

/// A credential problem; names the option, never the secret.
///
/// ```
/// use tollgate::{config::ProviderConfig, provider::client_auth::ClientAuth};
/// let err = ClientAuth::from_config(&ProviderConfig { client_id: "app".into(), ..Default::default() }).unwrap_err();
/// assert_eq!(err.option, "client_secret_file");
/// assert!(err.to_string().starts_with("client_secret_file: a client secret is needed"));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{option}: {message}")]
pub struct ClientAuthError {
    /// The option at fault.
    pub option: &'static str,
    /// What is wrong.
    pub message: String,
    /// The credential comes from the platform and is not there yet or not readable right now
    /// (a projected federated token file): the next use tries again.
    unavailable: bool,
}

impl ClientAuthError {
    /// Whether the credential is missing for now rather than wrong: a federated token file the
    /// platform has not written yet or that cannot be read. The IdP is then as unreachable as
    /// when it is down (`502`), and the next use reads the file again.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }
}

fn err(option: &'static str, message: impl Into<String>) -> ClientAuthError {
    ClientAuthError {
        option,
        message: message.into(),
        unavailable: false,
    }
}

/// A credential the platform provides that cannot be had right now (see
/// [`ClientAuthError::is_unavailable`]).
fn unavailable(option: &'static str, message: impl Into<String>) -> ClientAuthError {
    ClientAuthError {
        unavailable: true,
        ..err(option, message)
    }
}

impl ClientAuth {
    /// Loads the credential the provider's configuration names.
    ///
    /// ```
    /// use tollgate::{config::ProviderConfig, provider::client_auth::ClientAuth};
    /// let dir = tempfile::tempdir()?;
    /// let secret_file = dir.path().join("client_secret");
    /// std::fs::write(&secret_file, "s3cret\n")?; // read now, trimmed
    /// let cfg = ProviderConfig { client_id: "app".into(), client_secret_file: Some(secret_file), ..Default::default() };
    /// assert_eq!(ClientAuth::from_config(&cfg)?.client_id(), "app");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_config(cfg: &ProviderConfig) -> Result<Self, ClientAuthError> {
        let (kind, fingerprint) = match cfg.client_auth {
            ClientAuthMethod::ClientSecretPost | ClientAuthMethod::ClientSecretBasic => {
                let secret = match (&cfg.client_secret, &cfg.client_secret_file) {
                    (Some(s), _) => s.clone(),
                    (None, Some(path)) => Secret::new(read_trimmed(path, "client_secret_file")?),
                    (None, None) => {
                        return Err(err(
                            "client_secret_file",
                            "a client secret is needed (client_secret_file or AZURE_APP_CLIENT_SECRET)",
                        ));
                    }
                };
                let fingerprint =
                    crate::util::sha256_of_parts(&[b"secret", secret.expose().as_bytes()]);
                if cfg.client_auth == ClientAuthMethod::ClientSecretBasic {
                    (Kind::Basic(secret), fingerprint)
                } else {
                    (Kind::Post(secret), fingerprint)
                }
            }
            ClientAuthMethod::PrivateKeyJwt => load_jwt_key(cfg)?,
            ClientAuthMethod::Federated => {
                let path = cfg
                    .client_assertion_file
                    .clone()
                    .ok_or_else(|| err("client_assertion_file", "missing"))?;
                // The file is read at each use: only where it is matters.
                let fingerprint = crate::util::sha256_of_parts(&[
                    b"federated",
                    path.as_os_str().as_encoded_bytes(),
                ]);
                (Kind::Federated(path), fingerprint)
            }
        };
        Ok(Self {
            client_id: cfg.client_id.clone(),
            kind,
            fingerprint,
        })
    }

    /// Whether `other` authenticates as the same client with the same credential (a reload that
    /// read the same secret or key again).
    #[cfg(feature = "server")]
    pub(crate) fn same_as(&self, other: &ClientAuth) -> bool {
        self.client_id == other.client_id && self.fingerprint == other.fingerprint
    }

    /// The client id.
    ///
    /// ```
    /// # use tollgate::config::{ProviderConfig, Secret};
    /// # use tollgate::provider::client_auth::ClientAuth;
    /// let cfg = ProviderConfig { client_id: "app".into(), client_secret: Some(Secret::new("s3cret")), ..Default::default() };
    /// assert_eq!(ClientAuth::from_config(&cfg)?.client_id(), "app");
    /// # Ok::<(), tollgate::provider::client_auth::ClientAuthError>(())
    /// ```
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Adds the credential to a token request: form fields and, for Basic, the header.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), tollgate::provider::client_auth::ClientAuthError> {
    /// use tollgate::config::{ProviderConfig, Secret};
    /// use tollgate::provider::client_auth::ClientAuth;
    /// let cfg = ProviderConfig { client_id: "app".into(), client_secret: Some(Secret::new("s3cret")), ..Default::default() };
    /// let mut form = vec![("grant_type", "client_credentials".to_owned())];
    /// let header = ClientAuth::from_config(&cfg)?.apply("https://login.example/token", &mut form).await?;
    /// assert_eq!(header, None); // client_secret_post: all in the body
    /// assert_eq!(form[1..], [("client_id", "app".to_owned()), ("client_secret", "s3cret".to_owned())]);
    /// # Ok(()) }
    /// ```
    pub async fn apply(
        &self,
        token_endpoint: &str,
        form: &mut Vec<(&'static str, String)>,
    ) -> Result<Option<String>, ClientAuthError> {
        match &self.kind {
            Kind::Post(secret) => {
                form.push(("client_id", self.client_id.clone()));
                form.push(("client_secret", secret.expose().to_owned()));
                Ok(None)
            }
            Kind::Basic(secret) => {
                // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                let pair = format!("{}:{}", enc(&self.client_id), enc(secret.expose()));
                Ok(Some(format!("Basic {}", STANDARD.encode(pair))))
            }
            Kind::Jwt {
                key,
                alg,
                kid,
                thumbprints,
            } => {
                let mut header = Header::new(*alg);
                header.typ = Some("JWT".into());
                header.kid = kid.clone();
                // Entra documents both: `x5t` (SHA-1, long-standing) and `x5t#S256` (current).
                header.x5t = thumbprints.sha1.clone();
                header.x5t_s256 = thumbprints.sha256.clone();
                let now = crate::util::now();
                let claims = json!({
                    "iss": self.client_id, "sub": self.client_id, "aud": token_endpoint,
                    "jti": uuid::Uuid::new_v4().to_string(), "iat": now, "nbf": now, "exp": now + 300,
                });
                let jwt = jsonwebtoken::encode(&header, &claims, key).map_err(|e| {
                    err(
                        "client_key_file",
                        format!("cannot sign the client assertion: {e}"),
                    )
                })?;
                form.push(("client_id", self.client_id.clone()));
                form.push(("client_assertion_type", ASSERTION_TYPE.into()));
                form.push(("client_assertion", jwt));
                Ok(None)
            }
            Kind::Federated(path) => {
                // Re-read every time: the platform rotates the projected token file.
                let assertion = tokio::fs::read_to_string(path).await.map_err(|e| {
                    unavailable(
                        "client_assertion_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let assertion = assertion.trim();
                if assertion.is_empty() {
                    return Err(unavailable(
                        "client_assertion_file",
                        format!("{} is empty", path.display()),
                    ));
                }
                form.push(("client_id", self.client_id.clone()));
                form.push(("client_assertion_type", ASSERTION_TYPE.into()));
                form.push(("client_assertion", assertion.to_owned()));
                Ok(None)
            }
        }
    }
}

impl ClientAuth {
    /// Signs `claims` with this credential's private key: the assertion of an RFC 7523 §2.1
    /// authorization grant (Maskinporten's `jwt_bearer`), named by the key's `kid` (or
    /// certificate thumbprints) like a client assertion. Only a key credential can sign one.
    pub(crate) fn sign_grant_assertion(&self, claims: &Value) -> Result<String, ClientAuthError> {
        let Kind::Jwt {
            key,
            alg,
            kid,
            thumbprints,
        } = &self.kind
        else {
            return Err(err(
                "client_jwk_file",
                "a jwt_bearer grant is signed with the client's private key: set client_auth = \"private_key_jwt\" with client_jwk_file (or MASKINPORTEN_CLIENT_JWK)",
            ));
        };
        let mut header = Header::new(*alg);
        header.typ = Some("JWT".into());
        header.kid = kid.clone();
        header.x5t = thumbprints.sha1.clone();
        header.x5t_s256 = thumbprints.sha256.clone();
        jsonwebtoken::encode(&header, claims, key).map_err(|e| {
            err(
                "client_jwk_file",
                format!("cannot sign the grant assertion: {e}"),
            )
        })
    }
}

fn read_trimmed(path: &PathBuf, option: &'static str) -> Result<String, ClientAuthError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| err(option, format!("cannot read {}: {e}", path.display())))?;
    let text = text.trim().to_owned();
    if text.is_empty() {
        return Err(err(option, format!("{} is empty", path.display())));
    }
    Ok(text)
}

fn load_jwt_key(cfg: &ProviderConfig) -> Result<(Kind, [u8; 32]), ClientAuthError> {
    let jwk_text = match (&cfg.client_jwk, &cfg.client_jwk_file) {
        (Some(s), _) => Some(s.expose().to_owned()),
        (None, Some(p)) => Some(read_trimmed(p, "client_jwk_file")?),
        (None, None) => None,
    };
    if let Some(text) = jwk_text {
        let jwk: Value =
            serde_json::from_str(&text).map_err(|_| err("client_jwk_file", "not a JSON JWK"))?;
        let (key, alg) = private_jwk_key(&jwk).map_err(|m| err("client_jwk_file", m))?;
        let thumbprints = jwk_thumbprints(&jwk).map_err(|m| err("client_jwk_file", m))?;
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_owned);
        let fingerprint = crate::util::sha256_of_parts(&[b"jwk", text.as_bytes()]);
        return Ok((
            Kind::Jwt {
                key: std::sync::Arc::new(key),
                alg,
                kid,
                thumbprints,
            },
            fingerprint,
        ));
    }
    let key_path = cfg
        .client_key_file
        .as_ref()
        .ok_or_else(|| err("client_key_file", "missing"))?;
    let pem = std::fs::read(key_path).map_err(|e| {
        err(
            "client_key_file",
            format!("cannot read {}: {e}", key_path.display()),
        )
    })?;
    let key = EncodingKey::from_rsa_pem(&pem)
        .map_err(|_| err("client_key_file", "not an RSA private key in PEM"))?;
    // A bare key names nothing the IdP could look it up by: Entra finds the registered
    // credential by the certificate thumbprint, so without a certificate every request would fail.
    let cert_path = cfg.client_cert_file.as_ref().ok_or_else(|| {
        err(
            "client_cert_file",
            "required with client_key_file: the IdP identifies the key by the certificate's thumbprint (or use client_jwk_file with a kid)",
        )
    })?;
    let text = std::fs::read_to_string(cert_path).map_err(|e| {
        err(
            "client_cert_file",
            format!("cannot read {}: {e}", cert_path.display()),
        )
    })?;
    let der = cert_der(&text).map_err(|m| err("client_cert_file", m))?;
    let fingerprint = crate::util::sha256_of_parts(&[b"pem", &pem, text.as_bytes()]);
    Ok((
        Kind::Jwt {
            key: std::sync::Arc::new(key),
            alg: Algorithm::RS256,
            kid: None,
            thumbprints: Thumbprints::of_certificate(&der),
        },
        fingerprint,
    ))
}

/// The signing key and algorithm of a private JWK (RFC 7517, RFC 7518 §6): RSA signs with
/// RS256 (or PS256 when the JWK's `alg` says so), EC with the curve's own algorithm (P-256 ->
/// ES256, P-384 -> ES384, RFC 7518 §3.4). The JWK's `alg` is honoured when present and refused
/// when it does not fit the key; a `kid` is required because it is what names the key at the IdP.
fn private_jwk_key(jwk: &Value) -> Result<(EncodingKey, Algorithm), String> {
    let alg = jwk.get("alg").and_then(Value::as_str);
    match jwk.get("kty").and_then(Value::as_str) {
        Some("RSA") => {
            let alg = match alg {
                None | Some("RS256") => Algorithm::RS256,
                Some("PS256") => Algorithm::PS256,
                Some(other) => {
                    return Err(format!(
                        "unsupported alg {other:?} for an RSA key (RS256 or PS256)"
                    ));
                }
            };
            require_kid(jwk)?;
            let der = rsa_private_jwk_to_pkcs1(jwk)?;
            Ok((EncodingKey::from_rsa_der(&der), alg))
        }
        Some("EC") => {
            let (curve_alg, signing, size) = match jwk.get("crv").and_then(Value::as_str) {
                Some("P-256") => (
                    Algorithm::ES256,
                    &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    32,
                ),
                Some("P-384") => (
                    Algorithm::ES384,
                    &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    48,
                ),
                Some(other) => {
                    return Err(format!("unsupported curve {other:?} (P-256 or P-384)"));
                }
                None => return Err("the EC JWK has no \"crv\"".into()),
            };
            if let Some(a) = alg
                && a != format!("{curve_alg:?}")
            {
                return Err(format!(
                    "unsupported alg {a:?} for this EC key (its curve signs with {curve_alg:?})"
                ));
            }
            require_kid(jwk)?;
            let [d, x, y] = ["d", "x", "y"].map(|name| jwk_member(jwk, name, size));
            let (d, x, y) = (d?, x?, y?);
            // SEC 1 §2.3.3 uncompressed point: 0x04 || x || y.
            let public = [&[0x04][..], &x, &y].concat();
            let pair = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_and_public_key(
                signing, &d, &public,
            )
            .map_err(|_| {
                "the EC JWK's \"d\", \"x\" and \"y\" are not one key of its curve".to_owned()
            })?;
            // jsonwebtoken takes EC keys as PKCS#8 DER; aws-lc-rs writes it from the checked pair.
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|_| "the EC key cannot be encoded".to_owned())?;
            Ok((EncodingKey::from_ec_der(pkcs8.as_ref()), curve_alg))
        }
        Some(other) => Err(format!("unsupported key type {other:?} (RSA or EC)")),
        None => Err("the JWK has no \"kty\"".into()),
    }
}

fn require_kid(jwk: &Value) -> Result<(), String> {
    match jwk.get("kid").and_then(Value::as_str) {
        Some(k) if !k.is_empty() => Ok(()),
        _ => Err("the JWK has no kid".into()),
    }
}

/// An EC JWK coordinate or private scalar: base64url, `size` bytes (RFC 7518 §6.2.1.2, §6.2.2.1;
/// a shorter value is left-padded, as some encoders drop leading zeros).
fn jwk_member(jwk: &Value, name: &str, size: usize) -> Result<Vec<u8>, String> {
    let b64 = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("the JWK has no {name:?}: a private key is needed"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|_| format!("JWK member {name:?} is not base64url"))?;
    if bytes.len() > size {
        return Err(format!(
            "JWK member {name:?} is longer than the curve's {size} bytes"
        ));
    }
    let mut out = vec![0; size - bytes.len()];
    out.extend(bytes);
    Ok(out)
}

/// RFC 7515 §4.1.7 `x5t` and §4.1.8 `x5t#S256` of the client certificate.
#[derive(Clone, Default)]
struct Thumbprints {
    sha1: Option<String>,
    sha256: Option<String>,
}

impl Thumbprints {
    fn of_certificate(der: &[u8]) -> Self {
        use aws_lc_rs::digest::{SHA1_FOR_LEGACY_USE_ONLY, digest};
        Self {
            sha1: Some(URL_SAFE_NO_PAD.encode(digest(&SHA1_FOR_LEGACY_USE_ONLY, der))),
            sha256: Some(URL_SAFE_NO_PAD.encode(crate::util::sha256(der))),
        }
    }
}

/// The thumbprints a JWK carries (`x5t`, `x5t#S256`) or that its certificate chain (`x5c`,
/// RFC 7517 §4.7, standard base64) gives; none is fine when the JWK has a `kid`.
fn jwk_thumbprints(jwk: &Value) -> Result<Thumbprints, String> {
    let given = |name: &str| jwk.get(name).and_then(Value::as_str).map(str::to_owned);
    let mut out = match jwk
        .get("x5c")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    {
        Some(first) => {
            let der = first
                .as_str()
                .and_then(|b64| STANDARD.decode(b64).ok())
                .ok_or("JWK member \"x5c\" must hold standard base64 certificates")?;
            Thumbprints::of_certificate(&der)
        }
        None => Thumbprints::default(),
    };
    if let Some(t) = given("x5t") {
        out.sha1 = Some(t);
    }
    if let Some(t) = given("x5t#S256") {
        out.sha256 = Some(t);
    }
    Ok(out)
}

/// The DER of the first certificate of a PEM file.
fn cert_der(pem: &str) -> Result<Vec<u8>, String> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect();
    if body.is_empty() {
        return Err("no PEM certificate found".into());
    }
    STANDARD
        .decode(body.trim())
        .map_err(|_| "the certificate is not valid base64".to_owned())
}

/// RFC 8017 A.1.2 RSAPrivateKey (PKCS#1) DER from an RFC 7518 §6.3 private JWK.
fn rsa_private_jwk_to_pkcs1(jwk: &Value) -> Result<Vec<u8>, String> {
    if jwk.get("kty").and_then(Value::as_str) != Some("RSA") {
        return Err("the JWK is not an RSA key".into());
    }
    let mut body = der_integer(&[0]);
    for name in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
        let b64 = jwk
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("the JWK has no {name:?}: a private key is needed"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| format!("JWK member {name:?} is not base64url"))?;
        body.extend(der_integer(&bytes));
    }
    let mut out = vec![0x30];
    out.extend(der_len(body.len()));
    out.extend(body);
    Ok(out)
}

fn der_integer(unsigned_be: &[u8]) -> Vec<u8> {
    let trimmed: &[u8] = {
        let start = unsigned_be
            .iter()
            .position(|b| *b != 0)
            .unwrap_or(unsigned_be.len().saturating_sub(1));
        &unsigned_be[start.min(unsigned_be.len())..]
    };
    let mut value = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.is_empty() {
        value.push(0);
    } else {
        if trimmed[0] & 0x80 != 0 {
            value.push(0);
        }
        value.extend_from_slice(trimmed);
    }
    let mut out = vec![0x02];
    out.extend(der_len(value.len()));
    out.extend(value);
    out
}

fn der_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        return vec![len as u8];
    }
    let bytes: Vec<u8> = len
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|b| *b == 0)
        .collect();
    let mut out = vec![0x80 | bytes.len() as u8];
    out.extend(bytes);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integers_are_minimal_and_positive() {
        assert_eq!(der_integer(&[0]), vec![0x02, 0x01, 0x00]);
        assert_eq!(der_integer(&[0x00, 0x7f]), vec![0x02, 0x01, 0x7f]);
        assert_eq!(der_integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(der_len(0x1234), vec![0x82, 0x12, 0x34]);
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let b64 = STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    fn rsa_pkcs8() -> Vec<u8> {
        use aws_lc_rs::encoding::AsDer;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        pair.as_der().unwrap().as_ref().to_vec()
    }

    fn decode_part(jwt: &str, i: usize) -> Value {
        let part = jwt.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    /// Splits one DER TLV off `data`: (tag, content, rest).
    fn der_next(data: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, start) = if data[1] < 0x80 {
            (usize::from(data[1]), 2)
        } else {
            let n = usize::from(data[1] & 0x7f);
            let len = data[2..2 + n]
                .iter()
                .fold(0usize, |acc, b| acc << 8 | usize::from(*b));
            (len, 2 + n)
        };
        (data[0], &data[start..start + len], &data[start + len..])
    }

    /// The private JWK (RFC 7518 §6.3) of a PKCS#8 RSA key, as Texas's `AZURE_APP_JWK` holds it.
    fn private_jwk(pkcs8: &[u8], kid: &str, alg: Option<&str>) -> Value {
        let (_, info, _) = der_next(pkcs8);
        let (_, _version, rest) = der_next(info);
        let (_, _algorithm, rest) = der_next(rest);
        let (_, octets, _) = der_next(rest);
        let (_, mut ints, _) = der_next(octets);
        let mut jwk = json!({"kty": "RSA", "kid": kid});
        for (i, name) in ["version", "n", "e", "d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .enumerate()
        {
            let (tag, value, rest) = der_next(ints);
            assert_eq!(tag, 0x02);
            ints = rest;
            if i > 0 {
                let start = value.iter().position(|b| *b != 0).unwrap_or(0);
                jwk[*name] = json!(URL_SAFE_NO_PAD.encode(&value[start..]));
            }
        }
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg);
        }
        jwk
    }

    /// Whether the JWT's signature verifies with the public half of `pkcs8` under `params`
    /// (checked by aws-lc-rs directly, whatever the header claims).
    fn verifies(jwt: &str, pkcs8: &[u8], params: &aws_lc_rs::signature::RsaParameters) -> bool {
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8).unwrap();
        let public = pair.public_key();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        aws_lc_rs::signature::RsaPublicKeyComponents {
            n: public.modulus().big_endian_without_leading_zero(),
            e: public.exponent().big_endian_without_leading_zero(),
        }
        .verify(
            params,
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(sig).unwrap(),
        )
        .is_ok()
    }

    async fn assertion_of(auth: &ClientAuth, endpoint: &str) -> String {
        let mut form = Vec::new();
        assert!(auth.apply(endpoint, &mut form).await.unwrap().is_none());
        assert!(form.contains(&("client_assertion_type", ASSERTION_TYPE.to_owned())));
        assert!(form.contains(&("client_id", "client-1".to_owned())));
        form.into_iter()
            .find(|(k, _)| *k == "client_assertion")
            .map(|(_, v)| v)
            .unwrap()
    }

    #[tokio::test]
    async fn private_key_jwt_names_the_certificate_by_both_thumbprints() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let pkcs8 = rsa_pkcs8();
        std::fs::write(&key, pem("PRIVATE KEY", &pkcs8)).unwrap();
        let cert_der = b"stand-in certificate DER".to_vec();
        std::fs::write(&cert, pem("CERTIFICATE", &cert_der)).unwrap();
        let mut cfg = ProviderConfig {
            client_id: "client-1".into(),
            client_auth: ClientAuthMethod::PrivateKeyJwt,
            client_key_file: Some(key),
            ..Default::default()
        };
        let refused = ClientAuth::from_config(&cfg).unwrap_err();
        assert_eq!(refused.option, "client_cert_file");

        cfg.client_cert_file = Some(cert);
        let auth = ClientAuth::from_config(&cfg).unwrap();
        let jwt = assertion_of(&auth, "https://idp/t/oauth2/v2.0/token").await;
        let header = decode_part(&jwt, 0);
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        let sha1 =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert_der);
        assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(sha1));
        assert_eq!(
            header["x5t#S256"],
            URL_SAFE_NO_PAD.encode(crate::util::sha256(&cert_der))
        );
        assert!(header.get("kid").is_none(), "{header}");
        assert!(verifies(
            &jwt,
            &pkcs8,
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256
        ));
        let claims = decode_part(&jwt, 1);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], "https://idp/t/oauth2/v2.0/token");
        assert!(claims["exp"].as_u64().unwrap() > claims["nbf"].as_u64().unwrap());
        let again = assertion_of(&auth, "https://idp/t/oauth2/v2.0/token").await;
        assert_ne!(
            decode_part(&again, 1)["jti"],
            claims["jti"],
            "jti must be unique"
        );
    }

    #[test]
    fn a_jwk_thumbprint_comes_from_its_certificate_or_is_given() {
        let cert = b"stand-in certificate DER";
        let jwk = json!({"kty": "RSA", "x5c": [STANDARD.encode(cert)]});
        let t = jwk_thumbprints(&jwk).unwrap();
        assert_eq!(
            t.sha256.as_deref(),
            Some(URL_SAFE_NO_PAD.encode(crate::util::sha256(cert)).as_str())
        );
        assert_eq!(t.sha1.as_deref().map(str::len), Some(27));
        let given = json!({"kty": "RSA", "x5c": [STANDARD.encode(cert)], "x5t#S256": "given"});
        assert_eq!(
            jwk_thumbprints(&given).unwrap().sha256.as_deref(),
            Some("given")
        );
        let none = jwk_thumbprints(&json!({"kty": "RSA"})).unwrap();
        assert!(none.sha1.is_none() && none.sha256.is_none());
        assert!(jwk_thumbprints(&json!({"x5c": ["***"]})).is_err());
    }

    #[test]
    fn a_jwk_credential_must_be_private_and_have_a_kid() {
        let jwk = json!({"kty": "RSA", "kid": "k-1", "alg": "PS256", "n": "AQAB", "e": "AQAB"});
        let cfg = ProviderConfig {
            client_id: "client-1".into(),
            client_auth: ClientAuthMethod::PrivateKeyJwt,
            client_jwk: Some(Secret::new(jwk.to_string())),
            ..Default::default()
        };
        // A public JWK is not a credential.
        let refused = ClientAuth::from_config(&cfg).unwrap_err();
        assert_eq!(refused.option, "client_jwk_file");
        assert!(refused.message.contains("private key"), "{refused}");
        let no_kid = ProviderConfig {
            client_jwk: Some(Secret::new(json!({"kty": "RSA"}).to_string())),
            ..cfg.clone()
        };
        assert!(
            ClientAuth::from_config(&no_kid)
                .unwrap_err()
                .message
                .contains("kid")
        );
    }

    #[tokio::test]
    async fn federated_assertions_are_read_at_each_use() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let cfg = ProviderConfig {
            client_id: "client-1".into(),
            client_auth: ClientAuthMethod::Federated,
            client_assertion_file: Some(file.clone()),
            ..Default::default()
        };
        // Missing at start is fine: the platform may write it later.
        let auth = ClientAuth::from_config(&cfg).unwrap();
        let mut form = Vec::new();
        assert_eq!(
            auth.apply("https://idp/token", &mut form)
                .await
                .unwrap_err()
                .option,
            "client_assertion_file"
        );
        std::fs::write(&file, "  \n").unwrap();
        assert!(
            auth.apply("https://idp/token", &mut Vec::new())
                .await
                .unwrap_err()
                .message
                .contains("empty")
        );
        std::fs::write(&file, "first.jwt.value\n").unwrap();
        assert_eq!(
            assertion_of(&auth, "https://idp/token").await,
            "first.jwt.value"
        );
        std::fs::write(&file, "second.jwt.value").unwrap();
        assert_eq!(
            assertion_of(&auth, "https://idp/token").await,
            "second.jwt.value"
        );
    }

    #[tokio::test]
    async fn basic_auth_form_encodes_before_base64() {
        let cfg = ProviderConfig {
            client_id: "id:1".into(),
            client_auth: ClientAuthMethod::ClientSecretBasic,
            client_secret: Some(Secret::new("p@ss word")),
            ..Default::default()
        };
        let auth = ClientAuth::from_config(&cfg).unwrap();
        let mut form = Vec::new();
        let header = auth
            .apply("https://idp/token", &mut form)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            header,
            format!("Basic {}", STANDARD.encode("id%3A1:p%40ss+word"))
        );
        assert!(form.is_empty());
    }

    fn jwk_config(jwk: &Value) -> ProviderConfig {
        ProviderConfig {
            client_id: "client-1".into(),
            client_auth: ClientAuthMethod::PrivateKeyJwt,
            client_jwk: Some(Secret::new(jwk.to_string())),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_jwk_assertion_uses_the_jwks_alg_rs256_by_default_and_verifies() {
        use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256};
        let pkcs8 = rsa_pkcs8();
        let endpoint = "https://idp/t/oauth2/v2.0/token";
        let public = {
            use aws_lc_rs::signature::KeyPair as _;
            let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8).unwrap();
            let p = pair.public_key();
            jsonwebtoken::DecodingKey::from_rsa_raw_components(
                p.modulus().big_endian_without_leading_zero(),
                p.exponent().big_endian_without_leading_zero(),
            )
        };
        let cases = [
            (Some("PS256"), "PS256", Algorithm::PS256),
            (Some("RS256"), "RS256", Algorithm::RS256),
            (None, "RS256", Algorithm::RS256),
        ];
        for (jwk_alg, want, alg) in cases {
            let auth =
                ClientAuth::from_config(&jwk_config(&private_jwk(&pkcs8, "k-1", jwk_alg))).unwrap();
            let jwt = assertion_of(&auth, endpoint).await;
            let header = decode_part(&jwt, 0);
            assert_eq!(header["alg"], want, "{jwk_alg:?}");
            assert_eq!(header["kid"], "k-1");
            assert_eq!(header["typ"], "JWT");
            // Without a certificate in the JWK the kid alone names the key.
            assert!(header.get("x5t").is_none() && header.get("x5t#S256").is_none());
            // The padding really is the one the header names.
            let (pss, pkcs1) = (
                verifies(&jwt, &pkcs8, &RSA_PSS_2048_8192_SHA256),
                verifies(&jwt, &pkcs8, &RSA_PKCS1_2048_8192_SHA256),
            );
            assert_eq!(
                (pss, pkcs1),
                (want == "PS256", want == "RS256"),
                "{jwk_alg:?}"
            );
            // And a standard verifier accepts it as a client assertion for this endpoint.
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.set_audience(&[endpoint]);
            validation.set_issuer(&["client-1"]);
            validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
            let claims = jsonwebtoken::decode::<Value>(&jwt, &public, &validation)
                .unwrap()
                .claims;
            assert_eq!(claims["sub"], "client-1");
            assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
        }
        let refused =
            ClientAuth::from_config(&jwk_config(&private_jwk(&pkcs8, "k-1", Some("ES256"))))
                .unwrap_err();
        assert_eq!(refused.option, "client_jwk_file");
        assert!(refused.message.contains("unsupported alg"), "{refused}");
    }

    #[tokio::test]
    async fn a_jwk_with_a_certificate_chain_names_it_by_x5t_s256() {
        let pkcs8 = rsa_pkcs8();
        let cert = b"stand-in certificate DER";
        let mut jwk = private_jwk(&pkcs8, "k-2", Some("PS256"));
        jwk["x5c"] = json!([STANDARD.encode(cert)]);
        let auth = ClientAuth::from_config(&jwk_config(&jwk)).unwrap();
        let jwt = assertion_of(&auth, "https://idp/token").await;
        let header = decode_part(&jwt, 0);
        assert_eq!(header["alg"], "PS256");
        assert_eq!(header["kid"], "k-2");
        assert_eq!(
            header["x5t#S256"],
            URL_SAFE_NO_PAD.encode(crate::util::sha256(cert))
        );
        assert!(header["x5t"].as_str().is_some());
        assert!(verifies(
            &jwt,
            &pkcs8,
            &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256
        ));
    }

    /// A private EC JWK (RFC 7518 §6.2.2) of a new key on `signing`'s curve, and its public point.
    pub(super) fn ec_private_jwk(
        signing: &'static aws_lc_rs::signature::EcdsaSigningAlgorithm,
        crv: &str,
        kid: &str,
    ) -> (Value, Vec<u8>) {
        use aws_lc_rs::encoding::AsBigEndian as _;
        use aws_lc_rs::signature::KeyPair as _;
        let pair = aws_lc_rs::signature::EcdsaKeyPair::generate(signing).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        let size = (point.len() - 1) / 2;
        let d = pair.private_key().as_be_bytes().unwrap();
        let jwk = json!({
            "kty": "EC", "crv": crv, "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..=size]),
            "y": URL_SAFE_NO_PAD.encode(&point[1 + size..]),
            "d": URL_SAFE_NO_PAD.encode(d.as_ref()),
        });
        (jwk, point)
    }

    #[tokio::test]
    async fn an_ec_jwk_signs_es256_or_es384_by_its_curve_and_verifies() {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED,
            ECDSA_P384_SHA384_FIXED_SIGNING, UnparsedPublicKey,
        };
        let cases = [
            (
                "P-256",
                "ES256",
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &ECDSA_P256_SHA256_FIXED,
            ),
            (
                "P-384",
                "ES384",
                &ECDSA_P384_SHA384_FIXED_SIGNING,
                &ECDSA_P384_SHA384_FIXED,
            ),
        ];
        for (crv, alg, signing, verifying) in cases {
            let (jwk, point) = ec_private_jwk(signing, crv, "ec-1");
            for with_alg in [false, true] {
                let mut jwk = jwk.clone();
                if with_alg {
                    jwk["alg"] = json!(alg);
                }
                let auth = ClientAuth::from_config(&jwk_config(&jwk)).unwrap();
                let jwt = assertion_of(&auth, "https://idp/token").await;
                let header = decode_part(&jwt, 0);
                assert_eq!(
                    (header["alg"].as_str(), header["kid"].as_str()),
                    (Some(alg), Some("ec-1"))
                );
                let (input, sig) = jwt.rsplit_once('.').unwrap();
                let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
                // JWS ECDSA: the fixed-width r || s, checked against the public point alone.
                assert!(
                    UnparsedPublicKey::new(verifying, &point)
                        .verify(input.as_bytes(), &sig)
                        .is_ok(),
                    "{crv}"
                );
                assert_eq!(decode_part(&jwt, 1)["aud"], "https://idp/token");
                // A grant assertion is signed the same way, with the claims given.
                let grant = auth
                    .sign_grant_assertion(&json!({"scope": "nav:test/api"}))
                    .unwrap();
                let (input, sig) = grant.rsplit_once('.').unwrap();
                let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
                assert!(
                    UnparsedPublicKey::new(verifying, &point)
                        .verify(input.as_bytes(), &sig)
                        .is_ok()
                );
                assert_eq!(decode_part(&grant, 1)["scope"], "nav:test/api");
            }
        }
    }

    #[test]
    fn an_unusable_ec_jwk_is_refused_by_name() {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
        };
        let (p256, _) = ec_private_jwk(&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", "ec-1");
        let (p384, _) = ec_private_jwk(&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", "ec-2");
        let refused = |jwk: &Value| ClientAuth::from_config(&jwk_config(jwk)).unwrap_err();
        let with = |base: &Value, k: &str, v: Value| {
            let mut j = base.clone();
            if v.is_null() {
                j.as_object_mut().unwrap().remove(k);
            } else {
                j[k] = v;
            }
            j
        };
        for (jwk, want) in [
            // A public key is not a credential.
            (with(&p256, "d", Value::Null), "private key"),
            (with(&p256, "alg", json!("ES384")), "unsupported alg"),
            (with(&p256, "alg", json!("RS256")), "unsupported alg"),
            (with(&p256, "crv", json!("P-521")), "unsupported curve"),
            (with(&p256, "crv", json!("secp256k1")), "unsupported curve"),
            (with(&p256, "kid", Value::Null), "kid"),
            (with(&p256, "kty", json!("OKP")), "unsupported key type"),
            // The private scalar of one key with the public point of another.
            (with(&p256, "x", p384["x"].clone()), "longer than"),
            (
                with(&p256, "d", json!(URL_SAFE_NO_PAD.encode([7u8; 32]))),
                "not one key",
            ),
        ] {
            let e = refused(&jwk);
            assert_eq!(e.option, "client_jwk_file");
            assert!(e.message.contains(want), "{want}: {e}");
            // The message never carries the key material.
            assert!(!e.message.contains(p256["d"].as_str().unwrap()), "{e}");
        }
    }

    #[tokio::test]
    async fn only_a_key_credential_signs_a_grant_assertion() {
        let cfg = ProviderConfig {
            client_id: "client-1".into(),
            client_secret: Some(Secret::new("s3cret")),
            ..Default::default()
        };
        let e = ClientAuth::from_config(&cfg)
            .unwrap()
            .sign_grant_assertion(&json!({}))
            .unwrap_err();
        assert!(e.message.contains("private_key_jwt"), "{e}");
    }
}
