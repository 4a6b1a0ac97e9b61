//! Request path normalisation (`path.rs`) on the paths `http::Uri` lets through.
//!
//! Checked: the result is normal (normalising again changes nothing), holds no `.`/`..`
//! segment and no empty one (even after decoding), and routes as an upstream that decodes
//! every escape and then resolves dot segments would: under a prefix exactly when that
//! upstream's path is.
#![no_main]

use libfuzzer_sys::fuzz_target;

const PREFIXES: &[&str] = &["/", "/api", "/api/", "/api/admin", "/public", "/a.b", "/~x"];

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Every escape decoded (none may decode to `/` in an accepted path).
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex(*c)),
                b.get(i + 2).and_then(|c| hex(*c)),
            )
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// RFC 3986 §5.2.4 on decoded bytes, empty segments dropped: the segments an upstream sees.
fn resolve(decoded: &[u8]) -> Vec<Vec<u8>> {
    let mut segments: Vec<Vec<u8>> = Vec::new();
    for s in decoded.split(|c| *c == b'/').skip(1) {
        match s {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s.to_ascii_lowercase()),
        }
    }
    segments
}

fn under(prefix: &[Vec<u8>], trailing: bool, path: &[Vec<u8>]) -> bool {
    path.len() >= prefix.len() + usize::from(trailing) && path[..prefix.len()] == *prefix
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pq) = s.parse::<http::uri::PathAndQuery>() else {
        return;
    };
    let path = pq.path();
    if !path.starts_with('/') {
        return;
    }
    let Ok(normal) = tollgate::fuzzing::normalize_path(path) else {
        return;
    };
    let again = tollgate::fuzzing::normalize_path(&normal).expect("a normal path is accepted");
    assert_eq!(again, normal, "not idempotent");
    assert!(normal.starts_with('/'));
    let decoded = decode(&normal);
    let segments: Vec<&[u8]> = decoded.split(|c| *c == b'/').skip(1).collect();
    for (i, seg) in segments.iter().enumerate() {
        assert!(
            *seg != b"." && *seg != b"..",
            "a dot segment remains in {normal:?}"
        );
        assert!(
            !seg.is_empty() || i + 1 == segments.len(),
            "an empty segment in {normal:?}"
        );
    }
    // Routing on the normal form agrees with an upstream resolving the original path.
    let upstream = resolve(&decode(path));
    let ours = resolve(&decoded);
    assert_eq!(ours, upstream, "{path:?} -> {normal:?}");
    for prefix in PREFIXES {
        let p = resolve(prefix.as_bytes());
        let trailing = prefix.len() > 1 && prefix.ends_with('/');
        if tollgate::fuzzing::prefix_matches(prefix, &normal) {
            // A trailing-slash prefix also matches the path that ends with it.
            assert!(under(&p, false, &upstream), "{normal:?} matched {prefix:?}");
        } else {
            assert!(
                !under(&p, trailing, &upstream),
                "{normal:?} missed {prefix:?}"
            );
        }
    }
});
