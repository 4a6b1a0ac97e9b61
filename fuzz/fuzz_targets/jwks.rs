//! JWK Set documents (RFC 7517 §5) as the provider loads them (`provider/jwks.rs`).
#![no_main]

use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use tollgate::config::ProviderConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let config = ProviderConfig {
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ],
        ..Default::default()
    };
    if let Ok(kids) = tollgate::fuzzing::jwks(&doc, &config) {
        // Keys are chosen by kid only: a kept key always has one, and it is in the document.
        for kid in kids {
            assert!(!kid.is_empty());
            // Never a symmetric key (the HS256-with-the-public-key attack): some key of the
            // document with this kid is asymmetric (duplicates are allowed; one wins).
            let keys = doc["keys"].as_array().unwrap();
            assert!(
                keys.iter().any(|k| k["kid"] == kid.as_str()
                    && matches!(k["kty"].as_str(), Some("RSA" | "EC" | "OKP"))),
                "kept {kid:?}"
            );
        }
    }
});
