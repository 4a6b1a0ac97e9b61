//! Where a request carries its bearer token: the `Authorization` header (RFC 6750 §2.1) or, on
//! routes that allow it, the `access_token` query parameter (§2.3), never both (§2).

use super::ValidationError;

/// Extracts the token from an `Authorization` header value (RFC 6750 §2.1: scheme
/// case-insensitive, one space, token68).
///
/// Another scheme (`Basic`, `Negotiate`) is no bearer credential at all, `Ok(None)`: RFC 6750
/// §3.1 answers a request "attempted using an unsupported authentication method" like one
/// without credentials, with a challenge and no error code. A `Bearer` credential without a
/// token, or two `Authorization` headers, is malformed (`invalid_request`).
///
/// ```
/// use http::HeaderMap;
/// use tollgate::validate::{ValidationError, bearer_token};
/// let mut headers = HeaderMap::new();
/// assert_eq!(bearer_token(&headers), Ok(None));
/// headers.insert("authorization", "bearer eyJ0eXAi.eyJhdWQi.c2ln".parse().unwrap());
/// assert_eq!(bearer_token(&headers), Ok(Some("eyJ0eXAi.eyJhdWQi.c2ln")));
/// headers.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
/// assert_eq!(bearer_token(&headers), Ok(None));
/// headers.insert("authorization", "Bearer".parse().unwrap());
/// assert!(matches!(bearer_token(&headers), Err(ValidationError::InvalidRequest(_))));
/// ```
pub fn bearer_token(headers: &http::HeaderMap) -> Result<Option<&str>, ValidationError> {
    let Some(value) = lone_authorization(headers)? else {
        return Ok(None);
    };
    match plain_bearer(value.as_bytes()) {
        Some(token) => Ok(Some(token)),
        None => read_credential(value),
    }
}

/// The request's `Authorization` header, if any; two are `invalid_request`.
fn lone_authorization(
    headers: &http::HeaderMap,
) -> Result<Option<&http::HeaderValue>, ValidationError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next();
    if values.next().is_some() {
        return Err(ValidationError::InvalidRequest(
            "more than one Authorization header",
        ));
    }
    Ok(value)
}

/// An `Authorization` value read step by step: ASCII, then the scheme, then the token.
fn read_credential(value: &http::HeaderValue) -> Result<Option<&str>, ValidationError> {
    let value = value
        .to_str()
        .map_err(|_| ValidationError::InvalidRequest("Authorization header is not ASCII"))?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(ValidationError::InvalidRequest(
            "the Bearer credential has no token",
        ));
    }
    if !is_token68(token.as_bytes()) {
        return Err(ValidationError::InvalidToken(
            "the token is not a well-formed bearer token".into(),
        ));
    }
    Ok(Some(token))
}

/// The token of the usual `Authorization: Bearer <token68>`, read in one pass over the bytes;
/// `None` for anything else, which [`bearer_token`] then reads step by step for its answer.
/// Where this finds a token, every byte is visible ASCII, so the steps would find the same one.
fn plain_bearer(value: &[u8]) -> Option<&str> {
    let token = bearer_bytes(value)?;
    if token.is_empty() || !is_token68(token) {
        return None;
    }
    std::str::from_utf8(token).ok()
}

/// What follows `Bearer ` in `value`, trimmed, not checked.
fn bearer_bytes(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(b"bearer".len())?;
    let rest = rest.strip_prefix(b" ")?;
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// A request's only `Authorization` header when it reads `Bearer <token>`, and the token's
/// bytes in it, not checked: for comparing with a token that was (`validate::LastToken`).
#[cfg(feature = "server")]
pub(crate) fn usual_bearer(headers: &http::HeaderMap) -> Option<(&http::HeaderValue, &[u8])> {
    let value = lone_authorization(headers).ok()??;
    Some((value, bearer_bytes(value.as_bytes())?))
}

/// The token of an `Authorization` value [`bearer_token`] has already read (kept to be read
/// again later, as the proxy keeps it for an exchange).
#[cfg(feature = "server")]
pub(crate) fn token_of(value: &http::HeaderValue) -> Option<&str> {
    std::str::from_utf8(bearer_bytes(value.as_bytes())?).ok()
}

/// A bearer token sent in the request.
pub(crate) enum SentToken<'a> {
    /// In `Authorization` (RFC 6750 §2.1).
    Header(&'a str),
    /// As the `access_token` query parameter (RFC 6750 §2.3), decoded.
    Query(String),
}

impl SentToken<'_> {
    #[cfg(feature = "server")]
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Header(t) => t,
            Self::Query(t) => t,
        }
    }

    /// The token as an owned string; a query token is already one.
    pub(crate) fn into_string(self) -> String {
        match self {
            Self::Header(t) => t.to_owned(),
            Self::Query(t) => t,
        }
    }
}

/// The request's bearer token: from `Authorization`, or where `query_allowed` also from the
/// query. RFC 6750 §2: a client MUST NOT use more than one method, so both is `invalid_request`.
pub(crate) fn sent_token<'a>(
    headers: &'a http::HeaderMap,
    uri: &http::Uri,
    query_allowed: bool,
) -> Result<Option<SentToken<'a>>, ValidationError> {
    let header = bearer_token(headers)?;
    if !query_allowed {
        return Ok(header.map(SentToken::Header));
    }
    match (header, query_token(uri)?) {
        (Some(_), Some(_)) => Err(ValidationError::InvalidRequest(
            "the token is both in the Authorization header and in the query",
        )),
        (Some(t), None) => Ok(Some(SentToken::Header(t))),
        (None, t) => Ok(t.map(SentToken::Query)),
    }
}

/// The `access_token` query parameter (RFC 6750 §2.3), decoded: `None` when there is none.
fn query_token(uri: &http::Uri) -> Result<Option<String>, ValidationError> {
    let Some(query) = uri.query() else {
        return Ok(None);
    };
    let mut found = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if name == QUERY_TOKEN {
            if found.is_some() {
                return Err(ValidationError::InvalidRequest(
                    "more than one access_token query parameter",
                ));
            }
            found = Some(value.into_owned());
        }
    }
    match found {
        Some(t) if t.is_empty() => Err(ValidationError::InvalidRequest(
            "the access_token query parameter is empty",
        )),
        Some(t) if !is_token68(t.as_bytes()) => Err(ValidationError::InvalidToken(
            "the token is not a well-formed bearer token".into(),
        )),
        found => Ok(found),
    }
}

/// The query parameter RFC 6750 §2.3 names for a bearer token.
pub(crate) const QUERY_TOKEN: &str = "access_token";

/// True when every byte is a token68 character (RFC 7235 §2.1): ALPHA / DIGIT / "-" / "." /
/// "_" / "~" / "+" / "/" / "=". This runs over every byte of every token on every request, so it
/// is written without early exits or table lookups, which lets the compiler vectorise it.
pub(crate) fn is_token68(bytes: &[u8]) -> bool {
    // Sixteen bytes at a time (one SSE2 register): a fixed count the compiler unrolls into
    // vector compares, with one branch per chunk.
    let (chunks, rest) = bytes.as_chunks::<16>();
    chunks
        .iter()
        .all(|chunk| chunk.iter().fold(true, |ok, &b| ok & is_token68_byte(b)))
        && rest.iter().fold(true, |ok, &b| ok & is_token68_byte(b))
}

/// One token68 byte, in six tests: `-./0-9` are one range, letters another once case is folded.
fn is_token68_byte(b: u8) -> bool {
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let dash_to_nine = b.wrapping_sub(b'-') < 13;
    letter | dash_to_nine | (b == b'_') | (b == b'~') | (b == b'+') | (b == b'=')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token68_is_exactly_the_rfc_7235_alphabet() {
        for b in 0..=255u8 {
            let expected = b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b);
            assert_eq!(is_token68(&[b]), expected, "byte {b:#04x}");
        }
        assert!(is_token68(b"eyJhbGciOi.eyJzdWIi-_~+/=="));
        assert!(!is_token68(b"eyJhbGciOi eyJzdWIi"));
    }

    #[test]
    fn the_one_pass_read_agrees_with_the_steps() {
        let values: [&[u8]; 16] = [
            b"Bearer abc.def.ghi",
            b"bEaReR abc.def.ghi",
            b"Bearer  abc \t",
            b"Bearer \tabc",
            b"Bearer a b",
            b"Bearer ",
            b"Bearer",
            b"Bearerx abc",
            b"Basic abc",
            b"Bearer abc\xa0",
            b"Bearer \xc3\xa9",
            b"B\xe9arer abc",
            b"Bearer abc==",
            b"Bearer abc=def",
            b"Bearer -._~+/09AZaz",
            b"Bearer abc,def",
        ];
        let mut some = 0;
        for raw in values {
            let value = http::HeaderValue::from_bytes(raw).unwrap();
            if let Some(token) = plain_bearer(raw) {
                assert_eq!(read_credential(&value), Ok(Some(token)), "{raw:?}");
                #[cfg(feature = "server")]
                assert_eq!(token_of(&value), Some(token), "{raw:?}");
                some += 1;
            }
        }
        assert_eq!(some, 7, "the usual values take the one pass");
    }

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer_token(&h), Ok(None));
        h.insert("authorization", "bEaReR abc.def.ghi".parse().unwrap());
        assert_eq!(bearer_token(&h), Ok(Some("abc.def.ghi")));
        // Another scheme is no bearer credential (RFC 6750 §3.1): answered like none at all.
        for other in ["Basic abc", "Negotiate", "Bearerx abc"] {
            h.insert("authorization", other.parse().unwrap());
            assert_eq!(bearer_token(&h), Ok(None), "{other}");
        }
        for empty in ["Bearer", "Bearer ", "bearer   "] {
            h.insert("authorization", empty.parse().unwrap());
            assert_eq!(
                bearer_token(&h),
                Err(ValidationError::InvalidRequest(
                    "the Bearer credential has no token"
                )),
                "{empty:?}"
            );
        }
        h.insert("authorization", "Bearer a b".parse().unwrap());
        assert!(matches!(
            bearer_token(&h),
            Err(ValidationError::InvalidToken(_))
        ));
        h.insert("authorization", "Bearer x".parse().unwrap());
        h.append("authorization", "Bearer y".parse().unwrap());
        assert!(matches!(
            bearer_token(&h),
            Err(ValidationError::InvalidRequest(_))
        ));
    }
}
