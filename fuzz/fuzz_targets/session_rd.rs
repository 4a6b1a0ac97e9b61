//! The session's `rd` check (`session/redirect.rs`): whatever the input, an accepted `rd`,
//! resolved by a browser against the public origin, lands on that origin or an allowed host,
//! over http(s), without userinfo (OAuth 2.0 Security BCP, RFC 9700 §4.11).
//!
//! Input: the `rd` value, as the query decoded it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|data: &[u8]| {
    let Ok(rd) = std::str::from_utf8(data) else {
        return;
    };
    let origin = Url::parse("https://app.example").expect("a URL");
    let allowed = ["docs.example".to_owned()];
    let Some(location) = tollgate::fuzzing::session_redirect(rd, &origin, &allowed) else {
        return;
    };
    assert!(
        !location.chars().any(|c| c.is_control() || c == '\\'),
        "{location:?} carries a character browsers rewrite"
    );
    // What a browser does with `Location`: resolve it against the page's URL.
    let landed = origin
        .join(&location)
        .unwrap_or_else(|e| panic!("{location:?} does not resolve: {e}"));
    assert!(matches!(landed.scheme(), "http" | "https"), "{landed}");
    assert!(landed.username().is_empty() && landed.password().is_none(), "{landed}");
    let host = landed.host_str().expect("a host");
    assert!(
        landed.origin() == origin.origin() || allowed.iter().any(|h| h == host),
        "{rd:?} sends the browser to {landed}"
    );
});
