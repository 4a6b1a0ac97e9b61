//! RSA test keys that sign JWS by hand (so hostile headers can be crafted freely), and the
//! Entra-shaped user claims they sign.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Value, json};

use super::{CLIENT_ID, TENANT, now};

pub fn b64(data: &[u8]) -> String {
    B64.encode(data)
}

/// The payload of a JWT, unverified (only its claims are of interest).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap()
}

/// An RSA key that signs JWS by hand.
pub struct TestKey {
    pub kid: String,
    pair: KeyPair,
}

impl TestKey {
    pub fn new(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            pair: KeyPair::generate(KeySize::Rsa2048).unwrap(),
        }
    }

    pub fn public_jwk(&self) -> Value {
        let p = self.pair.public_key();
        json!({"kty": "RSA", "use": "sig", "kid": self.kid,
               "n": b64(p.modulus().big_endian_without_leading_zero()),
               "e": b64(p.exponent().big_endian_without_leading_zero())})
    }

    /// The public key's modulus bytes, as an attacker would use them for HS256.
    pub fn public_n(&self) -> Vec<u8> {
        self.pair
            .public_key()
            .modulus()
            .big_endian_without_leading_zero()
            .to_vec()
    }

    /// RS256 JWS over the given header and claims, exactly as given.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &signature::RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut sig,
            )
            .unwrap();
        format!("{input}.{}", b64(&sig))
    }

    /// A v2 Entra-shaped user access token for `CLIENT_ID`, with `extra` merged over the claims.
    pub fn token(&self, issuer: &str, extra: Value) -> String {
        let mut claims = user_claims(issuer);
        merge(&mut claims, extra);
        self.sign(
            &json!({"typ": "JWT", "alg": "RS256", "kid": self.kid}),
            &claims,
        )
    }
}

pub fn user_claims(issuer: &str) -> Value {
    let t = now();
    json!({
        "aud": CLIENT_ID, "iss": issuer, "iat": t, "nbf": t, "exp": t + 3600,
        "azp": "cccccccc-3333-4444-5555-dddddddddddd", "azpacr": "0", "name": "Alice Example",
        "oid": "99999999-8888-7777-6666-555555555555", "preferred_username": "alice@contoso.example",
        "roles": ["Reader"], "scp": "access_as_user", "sub": "alice-sub", "tid": TENANT, "ver": "2.0"
    })
}

/// Merges `extra` into `base`; a `null` in `extra` removes the claim.
pub fn merge(base: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (base, extra) {
        for (k, v) in e {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
}
