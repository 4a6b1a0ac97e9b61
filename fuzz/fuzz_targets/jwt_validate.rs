//! The JWS/JWT checks of `Validator::validate_uncached` against a provider holding a static
//! key set (an RSA key nobody has the private half of, and an Ed25519 key made at start).
//!
//! Input: a mode byte, then
//! - mode even: a whole token, as sent (every stage before and at the signature check);
//! - mode odd: `<header JSON>\n<claims JSON>`, signed here with the Ed25519 key, so that the
//!   header and claim checks after the signature see arbitrary JSON too.
#![no_main]

use std::sync::LazyLock;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use tollgate::config::ProviderConfig;
use tollgate::validate::Validator;

const RSA_N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";
const CLIENT_ID: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";
const TENANT: &str = "11111111-2222-3333-4444-555555555555";

struct Fixture {
    rt: tokio::runtime::Runtime,
    validator: Validator,
    key: Ed25519KeyPair,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = B64.encode(key.public_key().as_ref());
    let jwks = serde_json::json!({"keys": [
        {"kty": "RSA", "kid": "rsa", "use": "sig", "n": RSA_N, "e": "AQAB",
         "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": x,
         "issuer": "https://login.microsoftonline.com/{tenantid}/v2.0"},
    ]});
    let config = ProviderConfig {
        client_id: CLIENT_ID.into(),
        issuer: Some("https://login.microsoftonline.com/{tenantid}/v2.0".into()),
        // A closed port: an unknown kid costs one refused connection, then the refetch
        // interval keeps it from trying again.
        jwks_uri: Some("http://127.0.0.1:9/keys".parse().unwrap()),
        algorithms: vec![Algorithm::RS256, Algorithm::EdDSA],
        allowed_tenants: vec![TENANT.into()],
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let validator =
        rt.block_on(async { tollgate::fuzzing::validator_with_keys(config, &jwks).unwrap() });
    Fixture { rt, validator, key }
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = &*FIXTURE;
    let signed = mode % 2 == 1;
    let token = if signed {
        let (header, claims) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &[][..]),
        };
        let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
        let sig = f.key.sign(input.as_bytes());
        format!("{input}.{}", B64.encode(sig.as_ref()))
    } else {
        let Ok(t) = std::str::from_utf8(rest) else {
            return;
        };
        t.to_owned()
    };
    let result = f.rt.block_on(f.validator.validate_uncached(&token));
    match result {
        Ok(claims) => {
            // Nothing but the Ed25519 key's holder (this target) can make an acceptable token.
            assert!(signed, "an unsigned or forged token was accepted");
            let map = claims.as_map();
            let aud_ok = |a: &serde_json::Value| {
                a.as_str()
                    .is_some_and(|a| a == CLIENT_ID || a == format!("api://{CLIENT_ID}"))
            };
            assert!(
                map.get("aud").is_some_and(
                    |a| aud_ok(a) || a.as_array().is_some_and(|l| l.iter().any(aud_ok))
                ),
                "accepted a token for another audience"
            );
            let tid = map.get("tid").and_then(|t| t.as_str()).unwrap_or("");
            assert!(tid.eq_ignore_ascii_case(TENANT), "accepted another tenant");
            let iss = map.get("iss").and_then(|i| i.as_str()).unwrap_or("");
            assert!(
                iss == format!("https://login.microsoftonline.com/{tid}/v2.0")
                    || iss == format!("https://sts.windows.net/{tid}/"),
                "accepted an untrusted issuer"
            );
            assert!(map.get("exp").is_some_and(|e| e.is_number()));
        }
        Err(e) => {
            // Refusals never echo the token, nor its signature (the part that makes it a
            // credential). A short or wordy "signature" can be part of a message's own text
            // (the fuzzer made one of " not a well-formed JWT"): only one that could be a
            // signature, 16 or more base64url characters, is looked for; no refusal's own text
            // has a run that long.
            let message = e.to_string();
            if let Some((_, sig)) = token.rsplit_once('.')
                && sig.len() >= 16
                && sig
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                assert!(
                    !message.contains(sig),
                    "the token's signature in {message:?}"
                );
            }
        }
    }
});
