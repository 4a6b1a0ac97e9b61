//! OpenID Connect discovery documents (`provider/discovery.rs`), with and without explicitly
//! configured endpoints overriding them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::config::ProviderConfig;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(rest) else {
        return;
    };
    let mut config = ProviderConfig {
        well_known_url: Some(
            "https://idp.example/.well-known/openid-configuration"
                .parse()
                .unwrap(),
        ),
        ..Default::default()
    };
    if mode & 1 == 1 {
        config.issuer = Some("https://idp.example/configured".into());
    }
    if mode & 2 == 2 {
        config.jwks_uri = Some("https://idp.example/configured-keys".parse().unwrap());
    }
    if mode & 4 == 4 {
        config.token_endpoint = Some("https://idp.example/configured-token".parse().unwrap());
    }
    match tollgate::fuzzing::discovery(doc.clone(), &config) {
        Ok(m) => {
            // Configuration wins over the document, the document is kept whole.
            if let Some(i) = &config.issuer {
                assert_eq!(&m.issuer, i);
            } else {
                assert_eq!(
                    doc.get("issuer").and_then(|v| v.as_str()),
                    Some(m.issuer.as_str())
                );
            }
            if let Some(u) = &config.jwks_uri {
                assert_eq!(&m.jwks_uri, u);
            }
            if let Some(u) = &config.token_endpoint {
                assert_eq!(m.token_endpoint.as_ref(), Some(u));
            }
            assert_eq!(m.document, doc);
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
