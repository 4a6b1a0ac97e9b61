//! RSA public keys parsed once, not at every signature check.
//!
//! `jsonwebtoken` verifies an RSA signature by building the public key from its modulus and
//! exponent each time (aws-lc: a new `EVP_PKEY` and a new Montgomery context, about a tenth of
//! the instructions of one RS256 verification, measured with callgrind by
//! `CALLGRIND=1 scripts/loadtest.sh`). The validator takes its verifier from [`new_verifier`],
//! which keeps each RSA key it has seen parsed (`aws_lc_rs::signature::ParsedPublicKey`) and
//! hands every other algorithm, and every key aws-lc refuses to parse, to `jsonwebtoken`'s own
//! aws-lc verifiers unchanged: the same signatures pass and fail, with the same errors.
//!
//! Nothing is installed process-wide (`jsonwebtoken::crypto::CryptoProvider::install_default`
//! is the application's to call): an application's own `jsonwebtoken` calls keep the provider
//! it chose, and the validator's checks do not depend on it.

use std::sync::{Arc, OnceLock, RwLock};

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use jsonwebtoken::crypto::JwtVerifier;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind};

/// Most distinct parsed keys kept: an IdP publishes a handful at a time, and the keys come
/// only from configured JWKS and key files, never from a token.
const MAX_KEYS: usize = 256;

/// The parsed keys, each under its algorithm and the key material it was parsed from. A list:
/// finding one of a handful of keys by comparing bytes (two moduli differ in their first
/// bytes) costs less than building the DER and hashing it, which a map would need.
type Cache = RwLock<Vec<(Algorithm, DecodingKeyKind, Arc<ParsedPublicKey>)>>;

/// The verifier of `alg` signatures by `key`: over the key parsed once for RSA, else
/// `jsonwebtoken`'s aws-lc one (which refuses a key of another family, as `jsonwebtoken`'s own
/// verification does).
pub(super) fn new_verifier(
    alg: &Algorithm,
    key: &DecodingKey,
) -> jsonwebtoken::errors::Result<Box<dyn JwtVerifier>> {
    match parsed_rsa(*alg, key) {
        Some(key) => Ok(Box::new(ParsedRsa { alg: *alg, key })),
        None => (jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    }
}

/// The parsed key for an RSA algorithm and key, or `None` for anything else (and for bytes
/// aws-lc cannot parse, which `jsonwebtoken`'s own verifier then refuses as before). A key
/// outside the algorithm's sizes (2048 to 8192 bits) parses, and fails every verification.
fn parsed_rsa(alg: Algorithm, key: &DecodingKey) -> Option<Arc<ParsedPublicKey>> {
    if key.family() != AlgorithmFamily::Rsa {
        return None;
    }
    // The same algorithms (and key sizes) as jsonwebtoken's aws-lc verifiers.
    let algorithm: &'static dyn VerificationAlgorithm = match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    };
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let found = |keys: &[(Algorithm, DecodingKeyKind, Arc<ParsedPublicKey>)]| {
        keys.iter()
            .find(|(a, material, _)| *a == alg && same_material(material, key.kind()))
            .map(|(_, _, parsed)| parsed.clone())
    };
    if let Some(parsed) = found(&cache.read().ok()?) {
        return Some(parsed);
    }
    let der = match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => rsa_public_key_der(n, e),
        DecodingKeyKind::SecretOrDer(der) => der.clone(),
    };
    let parsed = Arc::new(ParsedPublicKey::new(algorithm, &der).ok()?);
    let mut cache = cache.write().ok()?;
    if found(&cache).is_none() {
        if cache.len() >= MAX_KEYS {
            cache.clear();
        }
        cache.push((alg, key.kind().clone(), parsed.clone()));
    }
    Some(parsed)
}

/// Whether two keys are the same bytes in the same form.
fn same_material(a: &DecodingKeyKind, b: &DecodingKeyKind) -> bool {
    use DecodingKeyKind::{RsaModulusExponent as Ne, SecretOrDer as Der};
    match (a, b) {
        (Ne { n, e }, Ne { n: n2, e: e2 }) => n == n2 && e == e2,
        (Der(a), Der(b)) => a == b,
        _ => false,
    }
}

/// A verifier over a parsed key.
struct ParsedRsa {
    alg: Algorithm,
    key: Arc<ParsedPublicKey>,
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for ParsedRsa {
    fn verify(
        &self,
        msg: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), jsonwebtoken::signature::Error> {
        self.key
            .verify_sig(msg, signature)
            .map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtVerifier for ParsedRsa {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017, A.1.1),
/// DER: the form aws-lc parses an RSA public key from.
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(n.len() + e.len() + 12);
    der_unsigned_integer(&mut body, n);
    der_unsigned_integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    der_length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// A non-negative INTEGER from big-endian bytes: leading zeros dropped, one zero put back
/// when the top bit is set (the value would read as negative).
fn der_unsigned_integer(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let digits = &bytes[start..];
    let pad = digits.first().is_none_or(|&b| b & 0x80 != 0);
    out.push(0x02);
    der_length(out, digits.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(digits);
}

fn der_length(out: &mut Vec<u8>, len: usize) {
    match len {
        0..0x80 => out.push(len as u8),
        0x80..0x100 => out.extend_from_slice(&[0x81, len as u8]),
        _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_of_small_and_high_bit_integers() {
        // n = 0x00 0x80 (leading zero dropped, then padded: top bit set), e = 65537.
        assert_eq!(
            rsa_public_key_der(&[0x00, 0x80], &[0x01, 0x00, 0x01]),
            [
                0x30, 0x09, 0x02, 0x02, 0x00, 0x80, 0x02, 0x03, 0x01, 0x00, 0x01
            ]
        );
    }

    #[test]
    fn der_matches_aws_lc_for_a_real_key() {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = sig::KeyPair::public_key(&pair);
        let der = rsa_public_key_der(
            public.modulus().big_endian_without_leading_zero(),
            public.exponent().big_endian_without_leading_zero(),
        );
        // aws-lc's own RSAPublicKey DER of the same key.
        assert_eq!(der, public.as_ref());
    }

    #[test]
    fn the_same_key_is_parsed_once_and_other_families_are_passed_on() {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = sig::KeyPair::public_key(&pair);
        let key = DecodingKey::from_rsa_raw_components(
            public.modulus().big_endian_without_leading_zero(),
            public.exponent().big_endian_without_leading_zero(),
        );
        let first = parsed_rsa(Algorithm::RS256, &key).unwrap();
        let again = parsed_rsa(Algorithm::RS256, &key).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        assert!(parsed_rsa(Algorithm::ES256, &key).is_none());
        assert!(parsed_rsa(Algorithm::HS256, &DecodingKey::from_secret(b"s")).is_none());
        // A 1024-bit modulus is refused at verification, as by jsonwebtoken's own verifier.
        let small = DecodingKey::from_rsa_raw_components(&[0xc5; 128], &[1, 0, 1]);
        let default = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.verifier_factory;
        let signature = vec![0x11; 128];
        assert!(
            new_verifier(&Algorithm::RS256, &small)
                .unwrap()
                .verify(b"m", &signature)
                .is_err()
        );
        assert!(
            default(&Algorithm::RS256, &small)
                .unwrap()
                .verify(b"m", &signature)
                .is_err()
        );
    }

    #[test]
    fn parsed_and_default_verifiers_agree() {
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let public = sig::KeyPair::public_key(&pair);
        let key = DecodingKey::from_rsa_raw_components(
            public.modulus().big_endian_without_leading_zero(),
            public.exponent().big_endian_without_leading_zero(),
        );
        let msg = b"header.payload";
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(
            &sig::RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            msg,
            &mut signature,
        )
        .unwrap();
        let mut bad = signature.clone();
        bad[10] ^= 1;
        let default = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.verifier_factory;
        for alg in [Algorithm::RS256, Algorithm::RS384, Algorithm::PS256] {
            let ours = new_verifier(&alg, &key).unwrap();
            let theirs = default(&alg, &key).unwrap();
            for s in [&signature, &bad] {
                assert_eq!(
                    ours.verify(msg, s).is_ok(),
                    theirs.verify(msg, s).is_ok(),
                    "{alg:?}"
                );
            }
            assert_eq!(ours.algorithm(), alg);
        }
        assert!(
            new_verifier(&Algorithm::RS256, &key)
                .unwrap()
                .verify(msg, &signature)
                .is_ok()
        );
        assert!(
            new_verifier(&Algorithm::RS256, &key)
                .unwrap()
                .verify(msg, &bad)
                .is_err()
        );
    }
}
