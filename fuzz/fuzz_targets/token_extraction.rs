//! Bearer token extraction (RFC 6750 §2.1 `Authorization`, §2.3 `access_token` query).
//!
//! Input: `<Authorization value>\n<query>`. A value starting with NUL means no header; a 0x01
//! inside it splits it into two `Authorization` headers.
#![no_main]

use http::{HeaderMap, HeaderValue, Uri, header::AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use tollgate::validate::{ValidationError, bearer_token};

fn is_token68(t: &str) -> bool {
    t.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let (auth, query) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut headers = HeaderMap::new();
    if auth.first() != Some(&0) {
        for part in auth.split(|b| *b == 1) {
            let Ok(v) = HeaderValue::from_bytes(part) else {
                return;
            };
            headers.append(AUTHORIZATION, v);
        }
    }
    let header_token = bearer_token(&headers);
    match &header_token {
        Ok(Some(t)) => {
            assert!(!t.is_empty() && is_token68(t), "accepted a malformed token");
            let value = headers[AUTHORIZATION].to_str().unwrap();
            assert!(
                value[..7].eq_ignore_ascii_case("bearer "),
                "not a Bearer credential"
            );
            assert_eq!(value[7..].trim(), *t);
            assert_eq!(headers.get_all(AUTHORIZATION).iter().count(), 1);
        }
        Ok(None) => {}
        Err(e) => assert!(matches!(
            e,
            ValidationError::InvalidRequest(_) | ValidationError::InvalidToken(_)
        )),
    }
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let Ok(uri) = format!("/x?{query}").parse::<Uri>() else {
        return;
    };
    match tollgate::fuzzing::sent_token(&headers, &uri) {
        Ok(Some(t)) => {
            assert!(
                !t.is_empty() && is_token68(&t),
                "accepted a malformed token"
            );
            // RFC 6750 §2: never both methods at once.
            let in_query = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .any(|(n, _)| n == "access_token");
            let in_header = matches!(header_token, Ok(Some(_)));
            assert!(
                in_query != in_header,
                "token taken from both or neither place"
            );
        }
        Ok(None) => assert!(!matches!(header_token, Ok(Some(_)))),
        Err(e) => assert!(matches!(
            e,
            ValidationError::InvalidRequest(_) | ValidationError::InvalidToken(_)
        )),
    }
});
