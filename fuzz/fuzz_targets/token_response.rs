//! Token endpoint answers (RFC 6749 §5.1/§5.2 plus Entra's members) as an On-Behalf-Of or
//! client credentials grant reads them (`exchange/grants.rs`, `exchange/cache.rs`).
//!
//! Input: two bytes of HTTP status (taken modulo 600), then the body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::exchange::ExchangeError;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let status = u16::from_be_bytes([data[0], data[1]]) % 600;
    let body = &data[2..];
    let subject_exp = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|d| d.get("subject_exp").and_then(|e| e.as_u64()));
    match tollgate::fuzzing::token_response(status, body, subject_exp) {
        Ok(token) => {
            assert!((200..300).contains(&status));
            // What the proxy and the token API send on must be a valid header and JSON.
            let auth = token.authorization();
            assert!(auth.to_str().is_ok_and(|a| a.starts_with("Bearer ")));
            let _ = (token.expires_in(), token.expires_at(), token.access_token());
        }
        Err(ExchangeError::Idp(e)) => {
            assert!(
                !(200..300).contains(&status) && status < 500,
                "an IdP error from HTTP {status}"
            );
            assert_eq!(e.status, status);
        }
        Err(e) => {
            let _ = (e.status(), e.code(), e.to_json(), e.description());
        }
    }
});
