//! Token API request bodies, JSON and form (`api/body.rs`), read into each request type of the
//! API by the same extractor the handlers use.
//!
//! Input: a byte choosing the `Content-Type`, then the body.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
});

const TYPES: &[Option<&[u8]>] = &[
    Some(b"application/json"),
    Some(b"application/x-www-form-urlencoded"),
    Some(b"Application/JSON; charset=utf-8"),
    Some(b"application/x-www-form-urlencoded;charset=UTF-8"),
    Some(b"text/plain"),
    None,
];

/// Values of the token-carrying fields, which must never be echoed in an error.
fn secrets(json: bool, body: &[u8]) -> Vec<String> {
    let fields = ["user_token", "token"];
    let mut out = Vec::new();
    if json {
        if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(body) {
            for f in fields {
                if let Some(v) = m.get(f).and_then(|v| v.as_str()) {
                    out.push(v.to_owned());
                }
            }
        }
    } else {
        for (k, v) in url::form_urlencoded::parse(body) {
            if fields.contains(&k.as_ref()) {
                out.push(v.into_owned());
            }
        }
    }
    // Only what looks like a JWT counts: a shorter or wordy value can be part of the fixed text
    // of a message ("duplicate field `target`") without having been echoed.
    out.retain(|s| looks_like_jwt(s));
    out
}

fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    s.len() >= 20
        && parts.len() == 3
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    let content_type = TYPES[usize::from(mode) % TYPES.len()];
    let json =
        content_type.is_some_and(|c| c.to_ascii_lowercase().starts_with(b"application/json"));
    let results = RT.block_on(tollgate::fuzzing::api_body(content_type, body));
    let secrets = secrets(json, body);
    for r in results {
        let Err((status, bytes)) = r else { continue };
        assert!(matches!(status, 400 | 413 | 415), "status {status}");
        let doc: serde_json::Value = serde_json::from_slice(&bytes).expect("a JSON error body");
        assert_eq!(doc["error"], "invalid_request");
        let description = doc["error_description"].as_str().expect("a description");
        for s in &secrets {
            assert!(
                !description.contains(s.as_str()),
                "a token in an error: {description}"
            );
        }
    }
    // The in-place form parser reads the same pairs as serde_urlencoded. Raw bytes that are
    // not UTF-8 are left out: the in-place parser refuses them where serde_urlencoded decodes
    // them lossily (a known difference, see the property tests in src/api/body.rs).
    if !json && std::str::from_utf8(body).is_ok() {
        let fast = tollgate::fuzzing::form_pairs(body);
        let reference = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body);
        match (&fast, &reference) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => panic!("form parsers disagree: {fast:?} vs {reference:?}"),
        }
    }
});
