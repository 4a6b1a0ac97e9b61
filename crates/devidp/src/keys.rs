//! Keys: the dev IdP's own RSA signing keys (aws-lc-rs) and the public JWKs (RSA, or EC P-256
//! and P-384) it verifies client, grant and federated assertions with.

use std::fmt;
use std::path::Path;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, KeyPair as _, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::DevIdpError;

/// `typ` of ID and access tokens.
const JWT_TYP: &str = "JWT";

/// A signing key of the dev IdP. The `kid` is derived from the public key, so a key loaded
/// from a file keeps its `kid` across restarts.
pub(crate) struct SigningKey {
    pub(crate) kid: String,
    pair: KeyPair,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    pub(crate) fn generate() -> Result<Self, DevIdpError> {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| DevIdpError::KeyGeneration)?;
        Self::from_pair(pair).ok_or(DevIdpError::KeyGeneration)
    }

    fn from_pair(pair: KeyPair) -> Option<Self> {
        let public = pair.public_key();
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        let spki = public.as_der().ok()?;
        let thumbprint = digest::digest(&digest::SHA256, spki.as_ref());
        // 27 characters, the length of Entra's SHA-1-thumbprint kids.
        let kid = URL_SAFE_NO_PAD.encode(&thumbprint.as_ref()[..20]);
        Some(Self { kid, pair, n, e })
    }

    fn from_pem(text: &str) -> Result<Self, String> {
        let (label, der) = pem_decode(text)?;
        let pair = match label.as_str() {
            "PRIVATE KEY" => {
                KeyPair::from_pkcs8(&der).map_err(|e| format!("not an RSA PKCS#8 key: {e}"))?
            }
            "RSA PRIVATE KEY" => {
                KeyPair::from_der(&der).map_err(|e| format!("not an RSA PKCS#1 key: {e}"))?
            }
            other => {
                return Err(format!(
                    "unexpected PEM block '{other}', expected 'PRIVATE KEY'"
                ));
            }
        };
        if pair.public_modulus_len() < 256 {
            return Err("RSA keys must have at least 2048 bits".into());
        }
        Self::from_pair(pair).ok_or_else(|| "cannot encode the public key".into())
    }

    fn to_pem(&self) -> Result<String, DevIdpError> {
        let der = self.pair.as_der().map_err(|_| DevIdpError::KeyGeneration)?;
        Ok(pem_encode("PRIVATE KEY", der.as_ref()))
    }

    /// The public JWK as Entra publishes it: no `alg`, `use: sig`, and the key's issuer template.
    pub(crate) fn public_jwk(&self, issuer_template: &str) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&self.n),
            "e": URL_SAFE_NO_PAD.encode(&self.e),
            "issuer": issuer_template,
        })
    }

    /// A compact RS256 JWS with the v2 Entra header `{"typ":"JWT","alg":"RS256","kid":...}`.
    pub(crate) fn sign_jwt(&self, claims: &Value) -> Result<String, SignError> {
        self.sign_typed(JWT_TYP, claims)
    }

    /// A compact RS256 JWS with header `{"typ":typ,"alg":"RS256","kid":...}`; explicit types
    /// such as `logout+jwt` keep one kind of token from being accepted as another (RFC 8725 §3.11).
    pub(crate) fn sign_typed(&self, typ: &str, claims: &Value) -> Result<String, SignError> {
        #[derive(serde::Serialize)]
        struct Header<'a> {
            typ: &'a str,
            alg: &'static str,
            kid: &'a str,
        }
        let header = serde_json::to_vec(&Header {
            typ,
            alg: "RS256",
            kid: &self.kid,
        })
        .map_err(|_| SignError)?;
        let payload = serde_json::to_vec(claims).map_err(|_| SignError)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signing_input.as_bytes(),
                &mut sig,
            )
            .map_err(|_| SignError)?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
    }

    /// Verifies an RS256 signature made by this key.
    pub(crate) fn verify_rs256(&self, signing_input: &[u8], sig: &[u8]) -> bool {
        RsaPublicKeyComponents {
            n: self.n.as_slice(),
            e: self.e.as_slice(),
        }
        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signing_input, sig)
        .is_ok()
    }
}

/// Signing failed inside aws-lc; carries nothing because there is nothing a caller can use.
#[derive(Debug)]
pub(crate) struct SignError;

/// Generates a key off the async runtime (RSA generation takes a noticeable fraction of a second).
pub(crate) async fn generate() -> Result<SigningKey, DevIdpError> {
    tokio::task::spawn_blocking(SigningKey::generate)
        .await
        .map_err(|_| DevIdpError::KeyGeneration)?
}

/// Loads the PKCS#8 PEM key at `path`, or generates one and writes it there (mode 0600).
pub(crate) async fn load_or_create(path: &Path) -> Result<SigningKey, DevIdpError> {
    let key_error = |message: String| DevIdpError::KeyFile {
        path: path.to_owned(),
        message,
    };
    match tokio::fs::read_to_string(path).await {
        Ok(text) => SigningKey::from_pem(&text).map_err(key_error),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate().await?;
            let pem = key.to_pem()?;
            write_private(path, pem.as_bytes())
                .await
                .map_err(|e| key_error(e.to_string()))?;
            tracing::info!(path = %path.display(), kid = %key.kid, "dev IdP: generated a new signing key file");
            Ok(key)
        }
        Err(e) => Err(key_error(e.to_string())),
    }
}

async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await?;
    tokio::io::AsyncWriteExt::write_all(&mut file, bytes).await?;
    tokio::io::AsyncWriteExt::flush(&mut file).await
}

/// A public key registered for client, grant or federated assertions.
#[derive(Clone, Debug)]
pub(crate) struct PublicJwk {
    pub(crate) kid: Option<String>,
    /// base64url SHA-1 thumbprint of the certificate (`x5t`), given or computed from `x5c`.
    pub(crate) x5t: Option<String>,
    /// base64url SHA-256 thumbprint of the certificate (`x5t#S256`), given or computed from `x5c`.
    pub(crate) x5t_s256: Option<String>,
    material: Material,
}

/// The public key itself.
#[derive(Clone, Debug)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An uncompressed SEC 1 point (`0x04 || x || y`) on the curve of `alg`.
    Ec {
        alg: AssertionAlg,
        point: Vec<u8>,
    },
}

impl PublicJwk {
    pub(crate) fn parse(jwk: &Value) -> Result<Self, String> {
        let obj = jwk.as_object().ok_or("a JWK must be a JSON object")?;
        let text = |name: &str| obj.get(name).and_then(Value::as_str);
        if let Some(usage) = text("use")
            && usage != "sig"
        {
            return Err(format!("key use '{usage}' is not 'sig'"));
        }
        if ["d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .any(|m| obj.contains_key(*m))
        {
            return Err(
                "the JWK contains private key material; register the public key only".into(),
            );
        }
        let decode = |name: &str| -> Result<Vec<u8>, String> {
            let value = text(name).ok_or_else(|| format!("missing '{name}'"))?;
            URL_SAFE_NO_PAD
                .decode(value)
                .map_err(|_| format!("'{name}' is not base64url"))
        };
        let material = match text("kty") {
            Some("RSA") => {
                let n = strip_leading_zeros(decode("n")?);
                let e = strip_leading_zeros(decode("e")?);
                if n.len() < 256 {
                    return Err("RSA keys must have at least 2048 bits".into());
                }
                Material::Rsa { n, e }
            }
            Some("EC") => {
                let (alg, size) = match text("crv") {
                    Some("P-256") => (AssertionAlg::Es256, 32),
                    Some("P-384") => (AssertionAlg::Es384, 48),
                    other => {
                        return Err(format!(
                            "unsupported curve {other:?}: P-256 and P-384 are supported"
                        ));
                    }
                };
                let (x, y) = (decode("x")?, decode("y")?);
                if x.len() != size || y.len() != size {
                    return Err(format!("'x' and 'y' must be {size} bytes each"));
                }
                Material::Ec {
                    alg,
                    point: [&[0x04][..], &x, &y].concat(),
                }
            }
            _ => return Err("only RSA and EC keys (kty \"RSA\" or \"EC\") are supported".into()),
        };
        let cert = match obj
            .get("x5c")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
        {
            Some(first) => {
                let b64 = first.as_str().ok_or("x5c entries must be strings")?;
                Some(
                    STANDARD
                        .decode(b64)
                        .map_err(|_| "x5c entries must be standard base64")?,
                )
            }
            None => None,
        };
        let thumb = |alg: &'static digest::Algorithm| {
            cert.as_ref()
                .map(|der| URL_SAFE_NO_PAD.encode(digest::digest(alg, der)))
        };
        Ok(Self {
            kid: text("kid").map(str::to_owned),
            x5t: text("x5t")
                .map(str::to_owned)
                .or_else(|| thumb(&digest::SHA1_FOR_LEGACY_USE_ONLY)),
            x5t_s256: text("x5t#S256")
                .map(str::to_owned)
                .or_else(|| thumb(&digest::SHA256)),
            material,
        })
    }

    /// Whether `sig` over `signing_input` verifies with this key under `alg`; a key of another
    /// type or curve than `alg` needs never verifies (RFC 8725 §3.1: the key decides the alg).
    pub(crate) fn verify(&self, alg: AssertionAlg, signing_input: &[u8], sig: &[u8]) -> bool {
        match &self.material {
            Material::Rsa { n, e } => {
                let params = match alg {
                    AssertionAlg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    AssertionAlg::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    AssertionAlg::Es256 | AssertionAlg::Es384 => return false,
                };
                RsaPublicKeyComponents {
                    n: n.as_slice(),
                    e: e.as_slice(),
                }
                .verify(params, signing_input, sig)
                .is_ok()
            }
            Material::Ec { alg: curve, point } => {
                if *curve != alg {
                    return false;
                }
                // JWS ECDSA signatures are the fixed-width r || s (RFC 7518 §3.4).
                let params: &'static signature::EcdsaVerificationAlgorithm = match alg {
                    AssertionAlg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
                    _ => &signature::ECDSA_P384_SHA384_FIXED,
                };
                signature::UnparsedPublicKey::new(params, point)
                    .verify(signing_input, sig)
                    .is_ok()
            }
        }
    }
}

/// Algorithms accepted on client, grant and federated assertions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AssertionAlg {
    Rs256,
    Ps256,
    Es256,
    Es384,
}

impl AssertionAlg {
    /// The algorithm a JWS header's `alg` names, when it is one of these.
    pub(crate) fn from_header(alg: Option<&str>) -> Option<Self> {
        match alg? {
            "RS256" => Some(Self::Rs256),
            "PS256" => Some(Self::Ps256),
            "ES256" => Some(Self::Es256),
            "ES384" => Some(Self::Es384),
            _ => None,
        }
    }
}

/// Parses `{"keys":[...]}` into public keys; every key must be usable.
pub(crate) fn parse_jwks(jwks: &Value) -> Result<Vec<PublicJwk>, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("a JWK set needs a 'keys' array")?;
    if keys.is_empty() {
        return Err("the JWK set has no keys".into());
    }
    keys.iter().map(PublicJwk::parse).collect()
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn pem_decode(text: &str) -> Result<(String, Vec<u8>), String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "));
    let begin = lines.next().ok_or("no PEM block found")?;
    let label = begin
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .ok_or("malformed PEM header")?
        .to_owned();
    let end = format!("-----END {label}-----");
    let mut b64 = String::new();
    for line in lines.by_ref() {
        if line == end {
            let der = STANDARD
                .decode(&b64)
                .map_err(|_| "PEM body is not base64")?;
            return Ok((label, der));
        }
        b64.push_str(line);
    }
    Err("PEM block is not terminated".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_keeps_the_kid() {
        let key = SigningKey::generate().unwrap();
        let pem = key.to_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(again.kid, key.kid);
        assert_eq!(key.kid.len(), 27);
    }

    #[test]
    fn pkcs1_pem_is_accepted_too() {
        let key = SigningKey::generate().unwrap();
        let (_, pkcs8) = pem_decode(&key.to_pem().unwrap()).unwrap();
        // For RSA-2048 the PKCS#8 wrapper is a fixed 26-byte prefix around the PKCS#1 key.
        assert_eq!(&pkcs8[4..7], &[0x02, 0x01, 0x00]);
        let pkcs1 = pem_encode("RSA PRIVATE KEY", &pkcs8[26..]);
        assert_eq!(SigningKey::from_pem(&pkcs1).unwrap().kid, key.kid);
    }

    #[test]
    fn certificate_thumbprints_come_from_x5c_or_the_jwk() {
        let key = SigningKey::generate().unwrap();
        let cert = b"not really a certificate, but thumbprints are over these bytes";
        let mut jwk = key.public_jwk("x");
        jwk["x5c"] = json!([STANDARD.encode(cert)]);
        let parsed = PublicJwk::parse(&jwk).unwrap();
        let sha1 = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, cert));
        let sha256 = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, cert));
        assert_eq!(parsed.x5t.as_deref(), Some(sha1.as_str()));
        assert_eq!(parsed.x5t_s256.as_deref(), Some(sha256.as_str()));
        jwk["x5t#S256"] = json!("given");
        assert_eq!(
            PublicJwk::parse(&jwk).unwrap().x5t_s256.as_deref(),
            Some("given")
        );
        jwk["x5c"] = json!(["***"]);
        assert!(PublicJwk::parse(&jwk).is_err());
    }

    #[test]
    fn malformed_pem_is_refused() {
        assert!(SigningKey::from_pem("hello").is_err());
        assert!(SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n").is_err());
        assert!(
            SigningKey::from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .is_err()
        );
    }

    #[test]
    fn signed_jwt_verifies_with_the_published_components() {
        let key = SigningKey::generate().unwrap();
        let token = key.sign_jwt(&json!({"a": 1})).unwrap();
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        assert!(key.verify_rs256(input.as_bytes(), &sig));
        assert!(!key.verify_rs256(b"other", &sig));
        let jwk = PublicJwk::parse(&key.public_jwk("x")).unwrap();
        assert!(jwk.verify(AssertionAlg::Rs256, input.as_bytes(), &sig));
        assert!(!jwk.verify(AssertionAlg::Ps256, input.as_bytes(), &sig));
    }

    #[test]
    fn jwk_parsing_refuses_unusable_keys() {
        let key = SigningKey::generate().unwrap();
        let good = key.public_jwk("x");
        assert!(PublicJwk::parse(&good).is_ok());
        let mut private = good.clone();
        private["d"] = json!("AQAB");
        assert!(PublicJwk::parse(&private).is_err());
        let mut enc = good.clone();
        enc["use"] = json!("enc");
        assert!(PublicJwk::parse(&enc).is_err());
        assert!(PublicJwk::parse(&json!({"kty": "oct", "k": "AAAA"})).is_err());
        assert!(PublicJwk::parse(&json!({"kty": "RSA", "n": "AQAB", "e": "AQAB"})).is_err());
        assert!(parse_jwks(&json!({"keys": []})).is_err());
        assert!(parse_jwks(&json!({"keys": [good]})).is_ok());
    }

    #[test]
    fn ec_keys_verify_es256_and_es384_on_their_own_curve_only() {
        use aws_lc_rs::signature::{
            ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
        };
        for (crv, alg, signing) in [
            (
                "P-256",
                AssertionAlg::Es256,
                &ECDSA_P256_SHA256_FIXED_SIGNING,
            ),
            (
                "P-384",
                AssertionAlg::Es384,
                &ECDSA_P384_SHA384_FIXED_SIGNING,
            ),
        ] {
            let pair = EcdsaKeyPair::generate(signing).unwrap();
            let point = pair.public_key().as_ref();
            let size = (point.len() - 1) / 2;
            let jwk = json!({"kty": "EC", "crv": crv, "kid": "ec",
                "x": URL_SAFE_NO_PAD.encode(&point[1..=size]),
                "y": URL_SAFE_NO_PAD.encode(&point[1 + size..])});
            let key = PublicJwk::parse(&jwk).unwrap();
            let sig = pair.sign(&SystemRandom::new(), b"input").unwrap();
            assert!(key.verify(alg, b"input", sig.as_ref()), "{crv}");
            assert!(!key.verify(alg, b"other", sig.as_ref()), "{crv}");
            for other in [AssertionAlg::Rs256, AssertionAlg::Ps256] {
                assert!(!key.verify(other, b"input", sig.as_ref()));
            }
            let other_curve = if alg == AssertionAlg::Es256 {
                AssertionAlg::Es384
            } else {
                AssertionAlg::Es256
            };
            assert!(!key.verify(other_curve, b"input", sig.as_ref()));
            let mut private = jwk.clone();
            private["d"] = json!("AQAB");
            assert!(PublicJwk::parse(&private).is_err());
            let mut short = jwk.clone();
            short["x"] = json!("AQAB");
            assert!(PublicJwk::parse(&short).is_err());
        }
        let p521 = json!({"kty": "EC", "crv": "P-521", "x": "AQAB", "y": "AQAB"});
        assert!(PublicJwk::parse(&p521).unwrap_err().contains("P-521"));
        // An RSA key never verifies an ECDSA signature, whatever the bytes.
        let rsa = PublicJwk::parse(&SigningKey::generate().unwrap().public_jwk("x")).unwrap();
        assert!(!rsa.verify(AssertionAlg::Es256, b"input", &[0; 64]));
    }
}
