//! Where a browser may be sent after sign-in or sign-out (`rd`): a same-origin path, or an
//! absolute `http(s)` URL on one of `[session] allowed_redirect_hosts`. Anything else is
//! refused, so tollgate never becomes an open redirector (OAuth 2.0 Security BCP, RFC 9700
//! §4.11; oauth2-proxy's `validateRedirect` refuses the same tricks).

use url::Url;

/// The validated target, ready for `Location`.
///
/// `origin` is the public origin (`https://app.example`), `allowed_hosts` the extra hosts.
pub(crate) fn safe_redirect(rd: &str, origin: &Url, allowed_hosts: &[String]) -> Option<String> {
    // Browsers drop tabs and newlines inside URLs and treat `\` as `/` (WHATWG URL parsing),
    // so a value that differs from what a browser would follow is refused outright.
    if rd.is_empty()
        || rd
            .chars()
            .any(|c| c.is_control() || c == '\\' || c.is_whitespace())
    {
        return None;
    }
    if rd.starts_with('/') {
        return same_origin_path(rd);
    }
    let url = Url::parse(rd).ok()?;
    if !matches!(url.scheme(), "http" | "https")
        || !url.username().is_empty()
        || url.password().is_some()
        // `https:evil` and `https:/evil` parse to a host; only the `scheme://` spelling is
        // unambiguous in every browser.
        || !rd[url.scheme().len()..].starts_with("://")
    {
        return None;
    }
    let host = url.host_str()?;
    let same_origin = url.origin() == origin.origin();
    let allowed = allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host));
    (same_origin || allowed).then(|| url.to_string())
}

/// A path on the public origin: `/x`, never `//host` (scheme-relative) nor one that decodes to
/// it (`/%2F%2Fevil`, `/%5Cevil`).
fn same_origin_path(rd: &str) -> Option<String> {
    if rd.starts_with("//") {
        return None;
    }
    let decoded = percent_decode(rd)?;
    if decoded.starts_with("//")
        || decoded.contains('\\')
        || decoded.chars().any(|c| c.is_control())
    {
        return None;
    }
    Some(rd.to_owned())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // Decoding twice catches `%252F%252F`, which a second decoder on the way would turn into
    // `//`.
    let once = String::from_utf8(out).ok()?;
    if once.contains('%') && once != s {
        percent_decode(&once)
    } else {
        Some(once)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rd: &str) -> Option<String> {
        let origin = Url::parse("https://app.example").unwrap();
        safe_redirect(rd, &origin, &["docs.example".to_owned()])
    }

    #[test]
    fn same_origin_paths_and_allowed_hosts_pass() {
        assert_eq!(check("/").as_deref(), Some("/"));
        assert_eq!(check("/a/b?c=d#e").as_deref(), Some("/a/b?c=d#e"));
        assert_eq!(check("/%20space").as_deref(), Some("/%20space"));
        assert_eq!(
            check("https://app.example/x").as_deref(),
            Some("https://app.example/x")
        );
        assert_eq!(
            check("https://DOCS.example/y").as_deref(),
            Some("https://docs.example/y")
        );
    }

    #[test]
    fn open_redirect_tricks_are_refused() {
        for rd in [
            "//evil.example",
            "///evil.example",
            "/\\evil.example",
            "\\/\\/evil.example",
            "\\\\evil.example",
            "https:evil.example",
            "https:/evil.example",
            "HTTPS://evil.example",
            "hTtPs://evil.example/app.example",
            "/%2F%2Fevil.example",
            "/%2f%2fevil.example",
            "/%5Cevil.example",
            "/%252F%252Fevil.example",
            "%2F%2Fevil.example",
            "https://app.example@evil.example",
            "https://user:pass@app.example/",
            "https://app.example.evil.example/",
            "http://app.example/", // another origin: the scheme differs
            "https://app.example:8443/",
            "javascript:alert(1)",
            "data:text/html,x",
            "/\tevil",
            "/\r\nSet-Cookie: x=y",
            "/%0d%0aSet-Cookie:x",
            "/%09/evil.example",
            " /x",
            "evil.example",
            "",
        ] {
            assert_eq!(check(rd), None, "{rd:?} must be refused");
        }
    }
}
