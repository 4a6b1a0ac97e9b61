//! Request path normalisation before routing, so that the path tollgate authorises is the path
//! the upstream serves.
//!
//! Routes are matched on path prefixes; an upstream that resolves `/public/../api`, decodes
//! `%61pi` or folds `//api` into `/api` would otherwise serve a protected resource through a
//! route that matched something else (the class of bypass Envoy's `normalize_path` and
//! `merge_slashes` exist for). The normalised path replaces the request's path, query untouched.
//!
//! What is done, in order (RFC 3986 §6.2.2):
//! - percent-encoded unreserved characters (`ALPHA / DIGIT / - . _ ~`, §2.3) are decoded and
//!   other escapes get upper-case hex (§6.2.2.1-2);
//! - encoded `/` (`%2F`), `\` (`%5C`) and NUL (`%00`), and a raw `\`, are refused: what they mean
//!   depends on the upstream's decoder, so no single route decision can be right;
//! - a `;` in the path, raw or as `%3B`, is refused: Tomcat, Jetty and Spring read `;...` as
//!   matrix parameters and drop it per segment, so `/admin;x/users` is `/admin/users` to them
//!   and `/public/..;/admin` climbs out of `/public`, while a prefix match sees neither;
//! - runs of `/` become one (what most servers do on their own);
//! - `.` and `..` segments are removed (§5.2.4; `..` never climbs above the root).

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    /// An escape for `/`, `\` or NUL, or a raw `\`.
    #[error("the request path contains an encoded '/', '\\' or NUL, or a '\\'")]
    AmbiguousSeparator,
    /// A `;` (or `%3B`): a path parameter some upstreams strip before routing.
    #[error("the request path contains a ';' (path parameters are refused)")]
    Semicolon,
    /// A `%` not followed by two hex digits.
    #[error("the request path contains a malformed percent-escape")]
    BadEscape,
}

/// The normalised form of `path` (an origin-form path, no query); borrowed when already normal,
/// which is the common case and costs one scan.
pub(crate) fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    Ok(Cow::Owned(remove_dot_segments(&decoded)))
}

/// Case-insensitive ASCII prefix test on a segment boundary: `/api` matches `/api`, `/API/x` and
/// `/api?q`, not `/apix`; a prefix ending in `/` matches anything below it, and the directory
/// itself without its slash (`/secret/` covers `/secret`, which most upstreams serve as the
/// same resource or redirect to it: leaving it to a shorter, laxer route would open it).
///
/// Case-insensitive because common upstreams (ASP.NET Core, IIS, many file servers) route
/// case-insensitively: a case-sensitive match would let `/API/x` slip past an `/api` route.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    let (p, s) = (prefix.as_bytes(), path.as_bytes());
    if s.len() < p.len() || !s[..p.len()].eq_ignore_ascii_case(p) {
        if let Some(bare) = p.strip_suffix(b"/").filter(|b| !b.is_empty()) {
            return s.len() >= bare.len()
                && s[..bare.len()].eq_ignore_ascii_case(bare)
                && matches!(s.get(bare.len()), None | Some(b'?'));
        }
        return false;
    }
    let rest = &s[p.len()..];
    p.ends_with(b"/") || rest.is_empty() || rest[0] == b'/' || rest[0] == b'?'
}

/// True when no step of [`normalize`] would change or refuse `path`.
fn is_normal(path: &str) -> bool {
    let b = path.as_bytes();
    if b.iter().any(|c| matches!(c, b'%' | b'\\' | b';')) {
        return false;
    }
    // Look for "//", "/./", "/../" and a trailing "/." or "/..".
    let mut i = 0;
    while let Some(off) = memchr_slash(&b[i..]) {
        let at = i + off;
        let rest = &b[at + 1..];
        let dot_segment = |n: usize| rest.len() >= n && rest[..n].iter().all(|c| *c == b'.');
        if rest.first() == Some(&b'/')
            || (dot_segment(1) && matches!(rest.get(1), None | Some(b'/')))
            || (dot_segment(2) && matches!(rest.get(2), None | Some(b'/')))
        {
            return false;
        }
        i = at + 1;
    }
    true
}

fn memchr_slash(b: &[u8]) -> Option<usize> {
    b.iter().position(|c| *c == b'/')
}

fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let byte = h << 4 | l;
                match byte {
                    b'/' | b'\\' | 0 => return Err(PathError::AmbiguousSeparator),
                    b';' => return Err(PathError::Semicolon),
                    c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') => {
                        out.push(char::from(c));
                    }
                    c => {
                        out.push('%');
                        out.push(char::from(HEX_UPPER[usize::from(c >> 4)]));
                        out.push(char::from(HEX_UPPER[usize::from(c & 0xf)]));
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::AmbiguousSeparator),
            b';' => return Err(PathError::Semicolon),
            _ => {
                // `path` is a &str and we copy whole runs between escapes: valid UTF-8 stays so.
                let end = b[i..]
                    .iter()
                    .position(|c| matches!(c, b'%' | b'\\' | b';'))
                    .map_or(b.len(), |n| i + n);
                out.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    Ok(out)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 §5.2.4 on an absolute path, with empty segments (from `//`) dropped as well. A
/// trailing `/`, `/.` or `/..` leaves a trailing `/`, as the RFC's algorithm does.
fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        normalize(p).map(Cow::into_owned)
    }

    #[test]
    fn normal_paths_are_borrowed_unchanged() {
        for p in ["/", "/api", "/api/x", "/api/x/", "/a.b/c..d/.e/..f", "/x?y"] {
            assert!(
                matches!(normalize(p), Ok(Cow::Borrowed(s)) if s == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_and_repeated_slashes_are_resolved() {
        assert_eq!(norm("/public/../api/x").unwrap(), "/api/x");
        assert_eq!(norm("/public/./../api").unwrap(), "/api");
        assert_eq!(norm("/../../api").unwrap(), "/api");
        assert_eq!(norm("//api//x").unwrap(), "/api/x");
        assert_eq!(norm("/api/x/.").unwrap(), "/api/x/");
        assert_eq!(norm("/api/x/..").unwrap(), "/api/");
        assert_eq!(norm("/..").unwrap(), "/");
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_kept_upper_case() {
        assert_eq!(norm("/%61pi/x").unwrap(), "/api/x");
        assert_eq!(norm("/public/%2e%2E/api").unwrap(), "/api");
        assert_eq!(norm("/a%20b%c3%a9").unwrap(), "/a%20b%C3%A9");
        assert_eq!(norm("/caf\u{e9}/%7e").unwrap(), "/caf\u{e9}/~");
    }

    #[test]
    fn ambiguous_separators_and_bad_escapes_are_refused() {
        for p in ["/public%2F..%2Fapi", "/a%2fb", "/a%5Cb", "/a\\b", "/a%00"] {
            assert_eq!(norm(p), Err(PathError::AmbiguousSeparator), "{p}");
        }
        for p in ["/a%", "/a%4", "/a%zz"] {
            assert_eq!(norm(p), Err(PathError::BadEscape), "{p}");
        }
        for p in [
            "/admin;x/users",
            "/public/..;/admin/x",
            "/public/.;/admin",
            "/admin;",
            "/admin%3Bx/users",
            "/public/..%3b/admin",
            "/a/b;jsessionid=1",
        ] {
            assert_eq!(norm(p), Err(PathError::Semicolon), "{p}");
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries_ignoring_ascii_case() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/API/x"));
        assert!(prefix_matches("/api", "/Api?x"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(prefix_matches("/", "/anything"));
        assert!(!prefix_matches("/api", "/apix"));
        assert!(!prefix_matches("/api", "/ap"));
        assert!(prefix_matches("/api/", "/api"));
        assert!(prefix_matches("/api/", "/API?x"));
        assert!(!prefix_matches("/api/", "/apix"));
        assert!(!prefix_matches("/api/", "/ap"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Path pieces that exercise every step: dot segments plain and escaped, repeated
        /// slashes, escapes of unreserved and other bytes (either hex case), bad escapes and
        /// refused separators, non-ASCII. `;` is left to the path parameter tests.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("/".to_owned()),
                Just("//".to_owned()),
                Just(".".to_owned()),
                Just("..".to_owned()),
                Just("%2e".to_owned()),
                Just("%2E%2e".to_owned()),
                Just("%2F".to_owned()),
                Just("%5c".to_owned()),
                Just("\\".to_owned()),
                Just("%".to_owned()),
                Just("%4".to_owned()),
                Just("%zz".to_owned()),
                Just("\u{e9}".to_owned()),
                "[a-zA-Z0-9._~-]{1,4}",
                (
                    any::<u8>().prop_filter("no NUL", |b| *b != 0),
                    any::<bool>()
                )
                    .prop_map(|(b, upper)| {
                        if upper {
                            format!("%{b:02X}")
                        } else {
                            format!("%{b:02x}")
                        }
                    }),
            ]
        }

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(piece(), 0..12).prop_map(|p| format!("/{}", p.concat()))
        }

        /// A route prefix: a few plain segments, maybe with a trailing slash.
        fn prefix() -> impl Strategy<Value = String> {
            (
                prop::collection::vec("[a-zA-Z0-9._~-]{1,3}", 0..3),
                any::<bool>(),
            )
                .prop_map(|(segments, trailing)| {
                    let mut p = String::new();
                    for s in segments
                        .iter()
                        .filter(|s| !matches!(s.as_str(), "." | ".."))
                    {
                        p.push('/');
                        p.push_str(s);
                    }
                    if trailing || p.is_empty() {
                        p.push('/');
                    }
                    p
                })
        }

        fn decode_all(s: &str) -> Vec<u8> {
            let b = s.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                match (
                    b[i],
                    b.get(i + 1).and_then(|c| hex(*c)),
                    b.get(i + 2).and_then(|c| hex(*c)),
                ) {
                    (b'%', Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 3;
                    }
                    (c, _, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            out
        }

        /// What an upstream that decodes every escape, then resolves dot segments (RFC 3986
        /// §5.2.4) and merges slashes, routes on: the segments, ASCII case folded.
        fn upstream_segments(path: &str) -> Vec<Vec<u8>> {
            let mut out: Vec<Vec<u8>> = Vec::new();
            for s in decode_all(path).split(|c| *c == b'/').skip(1) {
                match s {
                    b"" | b"." => {}
                    b".." => {
                        out.pop();
                    }
                    s => out.push(s.to_ascii_lowercase()),
                }
            }
            out
        }

        proptest! {
            #[test]
            fn normalising_is_idempotent(p in path()) {
                if let Ok(n) = normalize(&p) {
                    // Equal, not necessarily borrowed: any `%` sends a path down the slow path.
                    let again = normalize(&n);
                    prop_assert_eq!(again.as_deref(), Ok(&*n), "{:?}", p);
                }
            }

            #[test]
            fn no_dot_or_empty_segment_survives(p in path()) {
                if let Ok(n) = normalize(&p) {
                    prop_assert!(n.starts_with('/'));
                    let decoded = decode_all(&n);
                    let segments: Vec<&[u8]> = decoded.split(|c| *c == b'/').skip(1).collect();
                    for (i, s) in segments.iter().enumerate() {
                        prop_assert!(*s != b"." && *s != b"..", "{:?} -> {:?}", p, n);
                        prop_assert!(!s.is_empty() || i + 1 == segments.len(), "{:?} -> {:?}", p, n);
                        prop_assert!(!s.contains(&b'/') && !s.contains(&b'\\') && !s.contains(&0));
                    }
                }
            }

            /// Normalising never changes which route a path belongs to: a path written under
            /// prefix P is routed under P exactly when an upstream resolving it serves it under
            /// P, or it is refused.
            #[test]
            fn a_path_under_a_prefix_stays_there_or_is_refused(
                prefix in prefix(),
                rest in path(),
                below in any::<bool>(),
            ) {
                let p = if below { format!("{}{}", prefix.trim_end_matches('/'), rest) } else { rest };
                let Ok(n) = normalize(&p) else { return Ok(()) };
                let ours = upstream_segments(&n);
                let theirs = upstream_segments(&p);
                prop_assert_eq!(&ours, &theirs, "{:?} -> {:?}", p, n);
                let want: Vec<Vec<u8>> = upstream_segments(&prefix);
                let trailing = prefix.len() > 1 && prefix.ends_with('/');
                let under = theirs.len() >= want.len() + usize::from(trailing)
                    && theirs[..want.len()] == want[..];
                if prefix_matches(&prefix, &n) {
                    prop_assert!(theirs.len() >= want.len() && theirs[..want.len()] == want[..],
                        "{:?} -> {:?} matched {:?}", p, n, prefix);
                } else {
                    prop_assert!(!under, "{:?} -> {:?} missed {:?}", p, n, prefix);
                }
            }
        }
    }
}
