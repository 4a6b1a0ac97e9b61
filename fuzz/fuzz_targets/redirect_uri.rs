//! The login proxy's `redirect_uri` and `post_logout_redirect_uri` checks (`login/mod.rs`):
//! only a registered URI, compared exactly (RFC 9700 §2.1), is ever redirected to, and an
//! error sent back there stays at that URI.
//!
//! Input: `<registered URI>\n<query>`; the registered URI must parse, as config validation
//! requires.
#![no_main]

use libfuzzer_sys::fuzz_target;
use url::Url;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (registered, query) = s.split_once('\n').unwrap_or((s, ""));
    let Ok(registered_url) = Url::parse(registered) else {
        return;
    };
    let registered = vec![
        registered.to_owned(),
        "https://app.example/callback".to_owned(),
    ];
    if let Ok(params) = tollgate::fuzzing::authorize_params(Some(query), &registered) {
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let redirect_uri = get("redirect_uri").expect("a redirect_uri");
        assert!(
            registered.iter().any(|r| r == redirect_uri),
            "unregistered {redirect_uri:?}"
        );
        for (i, (k, _)) in params.iter().enumerate() {
            assert!(!params[..i].iter().any(|(n, _)| n == k), "repeated {k:?}");
        }
        let state = get("state");
        let location = tollgate::fuzzing::redirect_error_location(redirect_uri, state)
            .expect("a registered URI gets its error redirect");
        let sent = Url::parse(&location).expect("Location is a URL");
        let target = if redirect_uri == registered[0] {
            registered_url.clone()
        } else {
            Url::parse(redirect_uri).unwrap()
        };
        assert_eq!(
            (
                sent.scheme(),
                sent.host_str(),
                sent.port(),
                sent.path(),
                sent.fragment()
            ),
            (
                target.scheme(),
                target.host_str(),
                target.port(),
                target.path(),
                target.fragment()
            ),
            "the error redirect left the registered URI"
        );
        let pairs: Vec<(String, String)> = sent.query_pairs().into_owned().collect();
        let mut tail = vec![
            ("error".to_owned(), "invalid_request".to_owned()),
            ("error_description".to_owned(), "refused".to_owned()),
        ];
        if let Some(st) = state {
            tail.push(("state".to_owned(), st.to_owned()));
        }
        assert!(pairs.ends_with(&tail), "{pairs:?}");
    }
    match tollgate::fuzzing::logout_params(Some(query), &registered) {
        Ok(params) => {
            if let Some((_, uri)) = params.iter().find(|(n, _)| n == "post_logout_redirect_uri") {
                assert!(registered.iter().any(|r| r == uri), "unregistered {uri:?}");
            }
        }
        Err(why) => assert!(why.contains("post_logout_redirect_uri")),
    }
});
