//! The headers that tell the app who called, and the removal of every client-sent copy of them:
//! tollgate's `X-Auth-*`, or Azure App Service authentication's ("Easy Auth")
//! `X-MS-CLIENT-PRINCIPAL*` for apps moving off App Service.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::Value;

use crate::config::IdentityHeaders;
use crate::validate::{Claims, Hot};

/// Adds the identity headers `mode` asks for, built from a validated token's claims.
pub(crate) fn add(headers: &mut HeaderMap, claims: &Claims, mode: IdentityHeaders) {
    match mode {
        IdentityHeaders::None => {}
        IdentityHeaders::XAuth => {
            // Slices of the claims' payload (a reference-count increment each), checked as
            // header values when built: a list of them kept with every cached token would
            // cost more than the token's own positions (see `x_auth_values`). The thread keeps
            // the last token's (see `LAST_X_AUTH`).
            crate::util::thread_memo(
                &LAST_X_AUTH,
                |kept| kept.same_as(claims),
                || claims.clone(),
                || x_auth_values(claims),
                |values| {
                    for (name, value) in X_AUTH_NAMES.iter().zip(values) {
                        if let Some(value) = value {
                            headers.insert(name.clone(), value.clone());
                        }
                    }
                },
            );
        }
        IdentityHeaders::EasyAuth => {
            for (name, value) in &claims.memo(EasyAuthHeaders::of).0 {
                headers.insert(name.clone(), value.clone());
            }
        }
    }
}

/// Drops what a client sent under our identity names, and forwarding headers spelt with `_`.
///
/// CGI, WSGI and Rack map every `-` in a header name to `_` (`HTTP_X_AUTH_OID`), so to an app
/// behind them `X_Auth_Oid` and `X-Auth-Oid` are the same header (the class of Puma's
/// CVE-2024-45614). Names are therefore compared with `_` read as `-`: any spelling of
/// `X-Auth-*`, `X-MS-CLIENT-PRINCIPAL*` or `X-MS-TOKEN-*` goes (whatever the route's
/// `identity_headers`: an app that trusts them must never get a client's), and so does an
/// underscore spelling of `X-Forwarded-*`, `Forwarded`, `X-Real-IP` or `True-Client-IP` (the
/// dashed ones are the forwarder's business, which replaces or keeps them by
/// `trust_forwarded_headers`).
pub(crate) fn remove_client_copies(headers: &mut HeaderMap) {
    // Most requests carry none: one scan over the names, no allocation unless one is found.
    if !headers.keys().any(|k| is_spoofable(k.as_str().as_bytes())) {
        return;
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_spoofable(k.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// True for a name (lower case, as `HeaderName` keeps it) that is ours to set: `x-auth-*`,
/// `x-ms-client-principal*` and `x-ms-token-*` (App Service's token store headers) in any
/// `-`/`_` spelling, or a forwarding header spelt with `_`.
fn is_spoofable(name: &[u8]) -> bool {
    if dashed_starts_with(name, b"x-auth-")
        || dashed_starts_with(name, b"x-ms-client-principal")
        || dashed_starts_with(name, b"x-ms-token-")
    {
        return true;
    }
    name.contains(&b'_')
        && (dashed_starts_with(name, b"x-forwarded-")
            || dashed_eq(name, b"forwarded")
            || dashed_eq(name, b"x-real-ip")
            || dashed_eq(name, b"true-client-ip"))
}

/// `name` starts with `prefix` where each `-` of the prefix may be `_` in the name.
fn dashed_starts_with(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len()
        && name
            .iter()
            .zip(prefix)
            .all(|(n, p)| n == p || (*p == b'-' && *n == b'_'))
}

fn dashed_eq(name: &[u8], other: &[u8]) -> bool {
    name.len() == other.len() && dashed_starts_with(name, other)
}

const X_AUTH_SUBJECT: HeaderName = HeaderName::from_static("x-auth-subject");
const X_AUTH_OID: HeaderName = HeaderName::from_static("x-auth-oid");
const X_AUTH_TID: HeaderName = HeaderName::from_static("x-auth-tid");
const X_AUTH_NAME: HeaderName = HeaderName::from_static("x-auth-name");
const X_AUTH_SCOPES: HeaderName = HeaderName::from_static("x-auth-scopes");
const X_AUTH_ROLES: HeaderName = HeaderName::from_static("x-auth-roles");

/// A `static`, not a `const`: a `const` array is built (and dropped) anew at every use.
static X_AUTH_NAMES: [HeaderName; 6] = [
    X_AUTH_SUBJECT,
    X_AUTH_OID,
    X_AUTH_TID,
    X_AUTH_NAME,
    X_AUTH_SCOPES,
    X_AUTH_ROLES,
];

thread_local! {
    /// The `X-Auth-*` values this thread built last, with the claims they are of: held, so
    /// that no other claims can be at their address while they are kept. A connection sends
    /// the same token again and again; building its values (slices, the header-value check,
    /// the scope text's check) costs about 2,000 instructions, inserting kept ones' clones a
    /// tenth of that. One token's claims per thread, whatever the cache has evicted since.
    static LAST_X_AUTH: std::cell::RefCell<Option<(Claims, [Option<HeaderValue>; 6])>> =
        const { std::cell::RefCell::new(None) };
}

/// The `X-Auth-*` values of one validated token (by [`X_AUTH_NAMES`]), empty claims left out.
/// Each value is a slice of the claims' payload, not a copy; only a scope list written other
/// than space-separated, or several roles, are joined, once, and kept with the claims. Nothing
/// else is kept: a list of six `HeaderValue`s per cached token cost 304 bytes, the check of
/// ~150 bytes per request far less than a request (`Claims::headers_bytes` is what the
/// cache's weight allows for them).
fn x_auth_values(claims: &Claims) -> [Option<HeaderValue>; 6] {
    let shared = |v: Option<&str>| value(v.map(|v| claims.share(v)).unwrap_or_default());
    [
        shared(Some(claims.subject())),
        shared(claims.oid()),
        shared(claims.tid()),
        shared(claims.name()),
        value(claims.scopes_text()),
        value(claims.roles_text()),
    ]
}

/// `bytes` as a header value, unless empty or not a valid header value (as [`put`]).
fn value(bytes: bytes::Bytes) -> Option<HeaderValue> {
    if bytes.is_empty() {
        return None;
    }
    HeaderValue::from_maybe_shared(bytes).ok()
}

const X_MS_CLIENT_PRINCIPAL: HeaderName = HeaderName::from_static("x-ms-client-principal");
const X_MS_CLIENT_PRINCIPAL_ID: HeaderName = HeaderName::from_static("x-ms-client-principal-id");
const X_MS_CLIENT_PRINCIPAL_NAME: HeaderName =
    HeaderName::from_static("x-ms-client-principal-name");
const X_MS_CLIENT_PRINCIPAL_IDP: HeaderName = HeaderName::from_static("x-ms-client-principal-idp");

/// App Service's identity provider name for Microsoft Entra ID (`auth_typ`, `-IDP`).
const EASY_AUTH_IDP: &str = "aad";
/// The claims the app's user name and roles are read from (`name_typ`, `role_typ`):
/// Microsoft.Identity.Web's `AppServicesAuthenticationInformation` builds its `ClaimsIdentity`
/// with these two, so they must be claim names that occur in `claims` as written.
const NAME_TYP: &str = "name";
const ROLE_TYP: &str = "roles";

/// The Easy Auth headers of one validated token, kept with its claims.
///
/// Their shape is App Service's ("Work with user identities in Azure App Service
/// authentication", <https://learn.microsoft.com/azure/app-service/configure-authentication-user-identities>):
/// `X-MS-CLIENT-PRINCIPAL` is standard base64 of `{"auth_typ", "claims": [{"typ", "val"}],
/// "name_typ", "role_typ"}`; `-ID`, `-NAME` and `-IDP` carry the caller's object id, user name
/// and identity provider.
struct EasyAuthHeaders(Vec<(HeaderName, HeaderValue)>);

impl EasyAuthHeaders {
    fn of(claims: &Claims) -> Self {
        let mut out = Vec::with_capacity(4);
        put(&mut out, X_MS_CLIENT_PRINCIPAL, &principal(claims));
        put(
            &mut out,
            X_MS_CLIENT_PRINCIPAL_ID,
            claims.oid().unwrap_or(claims.subject()),
        );
        let name = claims
            .hot(Hot::PreferredUsername)
            .or_else(|| claims.hot(Hot::Upn))
            .or_else(|| claims.name());
        put(&mut out, X_MS_CLIENT_PRINCIPAL_NAME, name.unwrap_or(""));
        put(&mut out, X_MS_CLIENT_PRINCIPAL_IDP, EASY_AUTH_IDP);
        Self(out)
    }
}

/// `X-MS-CLIENT-PRINCIPAL`'s JSON, fields in App Service's order.
#[derive(Serialize)]
struct Principal<'a> {
    auth_typ: &'static str,
    claims: Vec<PrincipalClaim<'a>>,
    name_typ: &'static str,
    role_typ: &'static str,
}

#[derive(Serialize)]
struct PrincipalClaim<'a> {
    typ: &'a str,
    val: Cow<'a, str>,
}

/// `X-MS-CLIENT-PRINCIPAL`'s value: standard, padded base64 of the principal JSON listing every
/// claim of the token. App Service gives each value as a string and an array claim (`roles`,
/// `groups`) as one entry per element; objects (`_claim_sources`) and nulls are left out.
fn principal(claims: &Claims) -> String {
    // A map parsed for this and dropped: the claims keep only their payload's text.
    let map = claims.parse_map();
    let list = map
        .iter()
        .flat_map(|(typ, value)| {
            let values = match value {
                Value::Array(items) => items.as_slice(),
                other => std::slice::from_ref(other),
            };
            values
                .iter()
                .filter_map(move |v| claim_text(v).map(|val| PrincipalClaim { typ, val }))
        })
        .collect();
    let doc = Principal {
        auth_typ: EASY_AUTH_IDP,
        claims: list,
        name_typ: NAME_TYP,
        role_typ: ROLE_TYP,
    };
    // Serializing borrowed strings into a Vec cannot fail; an empty header would be left out.
    STANDARD.encode(serde_json::to_vec(&doc).unwrap_or_default())
}

/// A claim value as App Service writes it: strings as they are, numbers and booleans as their
/// JSON text.
fn claim_text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        _ => None,
    }
}

/// Appends `name: value` unless the value is empty or not a valid header value: claims are
/// UTF-8, and `HeaderValue` takes visible ASCII and obs-text but no controls, so a claim with a
/// control character is left out rather than forwarded mangled.
fn put(out: &mut Vec<(HeaderName, HeaderValue)>, name: HeaderName, value: &str) {
    if !value.is_empty()
        && let Ok(v) = HeaderValue::from_bytes(value.as_bytes())
    {
        out.push((name, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_in_every_spelling_and_nothing_else() {
        for name in [
            "x-auth-oid",
            "x_auth_custom",
            "x-ms-client-principal",
            "x_ms_client_principal_id",
            "x-ms-client-principal_name",
            "x-ms-token-aad-access-token",
            "x_ms_token_aad_refresh_token",
            "x_forwarded_for",
            "true_client_ip",
        ] {
            assert!(is_spoofable(name.as_bytes()), "{name}");
        }
        for name in [
            "x-ms-request-id",
            "x-ms-tokens",
            "x-forwarded-for",
            "x-authorization",
            "x_custom_header",
        ] {
            assert!(!is_spoofable(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn each_token_gets_its_own_values_through_the_kept_ones() {
        let claims =
            |v: serde_json::Value| Claims::from_map("entra_id", serde_json::from_value(v).unwrap());
        let alice = claims(serde_json::json!({
            "sub": "s-a", "oid": "o-a", "name": "Alice", "scp": "a b", "roles": ["R1", "R2"],
        }));
        let bob = claims(serde_json::json!({"sub": "s-b", "scp": "c"}));
        let headers_of = |claims: &Claims| {
            let mut headers = HeaderMap::new();
            add(&mut headers, claims, IdentityHeaders::XAuth);
            let mut seen: Vec<_> = headers
                .iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
                .collect();
            seen.sort();
            seen
        };
        let alices = [
            "x-auth-name=Alice",
            "x-auth-oid=o-a",
            "x-auth-roles=R1,R2",
            "x-auth-scopes=a b",
            "x-auth-subject=s-a",
        ];
        // Alice's kept, then Bob's built (none of Alice's left over), then Alice's again, and
        // twice in a row (the kept ones).
        assert_eq!(headers_of(&alice), alices);
        assert_eq!(headers_of(&bob), ["x-auth-scopes=c", "x-auth-subject=s-b"]);
        assert_eq!(headers_of(&alice), alices);
        assert_eq!(headers_of(&alice), alices);
        assert_eq!(headers_of(&bob), ["x-auth-scopes=c", "x-auth-subject=s-b"]);
    }

    #[test]
    fn the_principal_lists_every_claim_value_as_text() {
        let claims = Claims::from_map(
            "entra_id",
            serde_json::from_value(serde_json::json!({
                "sub": "s", "name": "Alice", "roles": ["A", "B", {"x": 1}, null], "exp": 1900000000,
                "flag": false, "nothing": null, "obj": {"a": "b"},
            }))
            .unwrap(),
        );
        let json = STANDARD.decode(principal(&claims)).unwrap();
        assert_eq!(
            String::from_utf8(json).unwrap(),
            concat!(
                r#"{"auth_typ":"aad","claims":[{"typ":"exp","val":"1900000000"},"#,
                r#"{"typ":"flag","val":"false"},{"typ":"name","val":"Alice"},"#,
                r#"{"typ":"roles","val":"A"},{"typ":"roles","val":"B"},{"typ":"sub","val":"s"}],"#,
                r#""name_typ":"name","role_typ":"roles"}"#
            )
        );
        // No `oid`: `-ID` is `sub`; no user name claim but `name`.
        let headers = EasyAuthHeaders::of(&claims).0;
        let get = |n: &HeaderName| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
        assert_eq!(get(&X_MS_CLIENT_PRINCIPAL_ID).unwrap(), "s");
        assert_eq!(get(&X_MS_CLIENT_PRINCIPAL_NAME).unwrap(), "Alice");
        assert_eq!(get(&X_MS_CLIENT_PRINCIPAL_IDP).unwrap(), "aad");
    }
}
