//! The API's request body extractor: JSON or form, size-limited, with specific errors.

use axum::extract::{FromRequest, Request};
use axum::response::Response;
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::response::api_error;

/// Largest request body accepted; a token request is well under a few KiB.
const MAX_BODY: usize = 64 * 1024;

/// A request body parsed from `application/json` or `application/x-www-form-urlencoded`.
pub(crate) struct ApiBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, _: &S) -> Result<Self, Response> {
        // The media type without parameters; its name is case-insensitive (RFC 9110 §8.3.1).
        let ctype = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or("").trim());
        let json = match ctype {
            Some(c) if c.eq_ignore_ascii_case("application/json") => true,
            Some(c) if c.eq_ignore_ascii_case("application/x-www-form-urlencoded") => false,
            other => {
                let got = other.unwrap_or("none");
                return Err(api_error(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_request",
                    &format!(
                        "unsupported media type: {got}: expected one of `application/json`, `application/x-www-form-urlencoded`"
                    ),
                ));
            }
        };
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
            .await
            .map_err(|e| {
                if too_large(&e) {
                    api_error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid_request",
                        &format!("request body larger than {MAX_BODY} bytes"),
                    )
                } else {
                    api_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "the request body could not be read",
                    )
                }
            })?;
        let parsed = if json {
            serde_json::from_slice::<T>(&bytes).map_err(|e| describe(e.to_string()))
        } else {
            from_form(&bytes).map_err(describe)
        };
        parsed
            .map(ApiBody)
            .map_err(|d| api_error(StatusCode::BAD_REQUEST, "invalid_request", &d))
    }
}

/// Whether reading failed on the size limit rather than on the connection.
/// `application/x-www-form-urlencoded` into `T`. Bodies without escapes (`%`, `+`), which is
/// what Texas clients send for JWTs (base64url) and URIs, are split in place and deserialised
/// from borrowed slices; anything else goes through `serde_urlencoded`'s decoder. Both yield the
/// same pairs: empty `&&` sequences skipped, a name without `=` has an empty value.
pub(crate) fn from_form<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    // memchr's SIMD search: this scan runs over every byte of every API request.
    if memchr::memchr2(b'%', b'+', bytes).is_some() {
        return serde_urlencoded::from_bytes::<T>(bytes).map_err(|e| e.to_string());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| "the form is not UTF-8".to_owned())?;
    // memchr's SIMD search for the separators too: `str::split_once` looks for a `char` a word
    // at a time, which over a token-sized value cost more than the rest of the parse.
    let mut rest = text;
    let pairs = std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let end = memchr::memchr(b'&', rest.as_bytes()).unwrap_or(rest.len());
            let pair = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
            if pair.is_empty() {
                continue;
            }
            // Both separators are ASCII, so the positions are on character boundaries.
            let (name, value) = match memchr::memchr(b'=', pair.as_bytes()) {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, ""),
            };
            return Some((name, FormValue(value)));
        }
    });
    T::deserialize(serde::de::value::MapDeserializer::<
        _,
        serde::de::value::Error,
    >::new(pairs))
    .map_err(|e| e.to_string())
}

/// One form value, deserialised as `serde_urlencoded` deserialises its values: a present value
/// is `Some` for an `Option` field (serde's plain `&str` deserializer refuses options, which made
/// every optional field fail from a form), numbers and booleans are parsed from the text, and
/// everything else sees the borrowed string.
struct FormValue<'a>(&'a str);

impl<'de> serde::de::IntoDeserializer<'de, serde::de::value::Error> for FormValue<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// `deserialize_$ty` parses the value with `FromStr` and visits the result; the error is the
/// parser's, which (unlike serde's "invalid type" message) does not quote the value.
macro_rules! parsed {
    ($($method:ident => $visit:ident,)*) => {$(
        fn $method<V: serde::de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match self.0.parse() {
                Ok(v) => visitor.$visit(v),
                Err(e) => Err(serde::de::Error::custom(e)),
            }
        }
    )*};
}

impl<'de> serde::Deserializer<'de> for FormValue<'de> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(serde::de::value::BorrowedStrDeserializer::new(self.0))
    }

    parsed! {
        deserialize_bool => visit_bool,
        deserialize_u8 => visit_u8,
        deserialize_u16 => visit_u16,
        deserialize_u32 => visit_u32,
        deserialize_u64 => visit_u64,
        deserialize_i8 => visit_i8,
        deserialize_i16 => visit_i16,
        deserialize_i32 => visit_i32,
        deserialize_i64 => visit_i64,
        deserialize_f32 => visit_f32,
        deserialize_f64 => visit_f64,
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any i128 u128
    }
}

fn too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// serde messages name the field; the position suffix is trimmed so the description stays
/// stable across JSON and form, and a quoted string value (`invalid type: string "..."`, where
/// a field wanted another type) is left out: it could be a token sent in the wrong field.
fn describe(message: String) -> String {
    let m = message.split(" at line ").next().unwrap_or(&message);
    let m = match m.split_once("string \"") {
        Some((before, rest)) => match rest.rsplit_once("\",") {
            Some((_, after)) => format!("{before}a string,{after}"),
            None => format!("{before}a string"),
        },
        None => m.to_owned(),
    };
    format!("invalid request body: {m}")
}

/// `skip_cache` arrives as a JSON bool or a form string (`true`/`false`/`1`/`0`).
pub(crate) fn flexible_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Str(String),
    }
    match B::deserialize(d)? {
        B::Bool(b) => Ok(b),
        B::Str(s) => match s.as_str() {
            "true" | "1" => Ok(true),
            "false" | "0" | "" => Ok(false),
            _ => Err(serde::de::Error::custom("skip_cache must be true or false")),
        },
    }
}

/// Texas's `authorization_details` (RFC 9396 §2): a JSON array in a JSON body, or in a form the
/// JSON text of one. Anything else is refused by name, before a grant is signed with it.
pub(crate) fn authorization_details<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    use serde_json::Value;
    const WANT: &str =
        "authorization_details must be a JSON array of objects (RFC 9396), in a form as JSON text";
    let details = match Value::deserialize(d)? {
        Value::Null => return Ok(None),
        Value::String(text) => {
            serde_json::from_str::<Value>(&text).map_err(|_| serde::de::Error::custom(WANT))?
        }
        other => other,
    };
    match &details {
        Value::Array(items) if items.iter().all(Value::is_object) => Ok(Some(details)),
        _ => Err(serde::de::Error::custom(WANT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Debug, PartialEq, Deserialize)]
    struct Req {
        identity_provider: String,
        target: String,
        #[serde(default, deserialize_with = "flexible_bool")]
        skip_cache: bool,
    }

    #[test]
    fn the_in_place_form_parser_agrees_with_serde_urlencoded() {
        for body in [
            "identity_provider=entra_id&target=api://x/.default",
            "identity_provider=entra_id&&target=api://x/.default&skip_cache=true&",
            "target=a=b&identity_provider=p&skip_cache",
            "identity_provider=entra_id&target=caf\u{e9}",
        ] {
            let fast: Req = from_form(body.as_bytes()).unwrap();
            let reference: Req = serde_urlencoded::from_str(body).unwrap();
            assert_eq!(fast, reference, "{body}");
        }
        let pairs: BTreeMap<String, String> = from_form(b"a=1&b&=c").unwrap();
        let reference: BTreeMap<String, String> = serde_urlencoded::from_str("a=1&b&=c").unwrap();
        assert_eq!(pairs, reference);
    }

    /// Every API body's optional fields, as the token, exchange and delegated requests have them.
    #[derive(Debug, PartialEq, Deserialize)]
    struct Optional {
        identity_provider: String,
        user_oid: Option<String>,
        user_upn: Option<String>,
        resource: Option<String>,
        count: Option<u32>,
        #[serde(default)]
        flag: bool,
    }

    #[test]
    fn optional_fields_parse_from_a_form_exactly_as_from_json() {
        for (form, json) in [
            (
                "identity_provider=entra_id&user_upn=alice@contoso.example",
                r#"{"identity_provider":"entra_id","user_upn":"alice@contoso.example"}"#,
            ),
            (
                "identity_provider=entra_id&user_oid=99999999-8888-7777-6666-555555555555&count=3&flag=true",
                r#"{"identity_provider":"entra_id","user_oid":"99999999-8888-7777-6666-555555555555","count":3,"flag":true}"#,
            ),
            (
                "identity_provider=entra_id&resource=",
                r#"{"identity_provider":"entra_id","resource":""}"#,
            ),
            ("identity_provider=x", r#"{"identity_provider":"x"}"#),
        ] {
            let fast: Optional = from_form(form.as_bytes()).unwrap();
            let reference: Optional = serde_urlencoded::from_str(form).unwrap();
            let from_json: Optional = serde_json::from_str(json).unwrap();
            assert_eq!(fast, reference, "{form}");
            assert_eq!(fast, from_json, "{form}");
        }
        let bad = from_form::<Optional>(b"identity_provider=x&count=many").unwrap_err();
        let reference = serde_urlencoded::from_str::<Optional>("identity_provider=x&count=many")
            .unwrap_err()
            .to_string();
        assert_eq!(bad, reference);
    }

    #[test]
    fn escaped_forms_are_decoded_and_errors_name_the_problem() {
        let r: Req = from_form(b"identity_provider=entra%5Fid&target=a+b").unwrap();
        assert_eq!(
            (r.identity_provider.as_str(), r.target.as_str()),
            ("entra_id", "a b")
        );
        let missing = from_form::<Req>(b"identity_provider=x").unwrap_err();
        assert!(missing.contains("missing field `target`"), "{missing}");
        let twice = from_form::<Req>(b"identity_provider=x&target=a&target=b").unwrap_err();
        assert!(twice.contains("duplicate field `target`"), "{twice}");
        assert!(from_form::<Req>(b"identity_provider=\xff&target=a").is_err());
    }

    #[test]
    fn a_string_in_the_wrong_field_is_not_quoted_back() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Typed {
            n: Vec<u8>,
        }
        let e = serde_json::from_str::<Typed>(r#"{"n":"eyJhbGciOi.secret.sig"}"#).unwrap_err();
        let d = describe(e.to_string());
        assert_eq!(
            d,
            "invalid request body: invalid type: a string, expected a sequence"
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Pieces of a form body: names of the API's fields, plain text, `=` and `&` (so empty
        /// names, empty values and `&&` happen), `+`, percent-escapes of any byte (invalid
        /// UTF-8 included) in either hex case, malformed escapes, non-ASCII.
        fn piece() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::sample::select(vec![
                    "identity_provider", "target", "user_token", "skip_cache", "user_oid",
                    "user_upn", "resource", "token",
                ]).prop_map(str::to_owned),
                4 => "[a-zA-Z0-9._~:/-]{0,6}",
                3 => Just("=".to_owned()),
                3 => Just("&".to_owned()),
                1 => Just("+".to_owned()),
                1 => (any::<u8>(), any::<bool>()).prop_map(|(b, upper)| {
                    if upper { format!("%{b:02X}") } else { format!("%{b:02x}") }
                }),
                1 => prop::sample::select(vec!["%", "%4", "%zz", "%FF%FE", "%C3%A9", "\u{e9}"])
                    .prop_map(str::to_owned),
            ]
        }

        /// Either pieces in any order, or `name=value` pairs of the API's fields, so that
        /// bodies a request type accepts are common too.
        fn body() -> impl Strategy<Value = String> {
            let value = prop::collection::vec(
                piece().prop_filter("one value", |p| p != "&" && p != "="),
                0..3,
            )
            .prop_map(|v| v.concat());
            let pair = (
                prop::sample::select(vec![
                    "identity_provider",
                    "target",
                    "skip_cache",
                    "user_oid",
                    "user_upn",
                ]),
                value,
                any::<bool>(),
            )
                .prop_map(|(name, value, eq)| {
                    if eq {
                        format!("{name}={value}")
                    } else {
                        name.to_owned()
                    }
                });
            prop_oneof![
                prop::collection::vec(piece(), 0..16).prop_map(|p| p.concat()),
                prop::collection::vec(pair, 0..6).prop_map(|p| p.join("&")),
            ]
        }

        /// A Texas request with every kind of field: plain, flexible bool, optional.
        #[derive(Debug, PartialEq, Deserialize)]
        struct Typed {
            identity_provider: String,
            target: String,
            #[serde(default, deserialize_with = "flexible_bool")]
            skip_cache: bool,
            #[serde(default)]
            user_oid: Option<String>,
        }

        proptest! {
            #[test]
            fn the_in_place_form_parser_reads_the_pairs_serde_urlencoded_reads(b in body()) {
                let fast = from_form::<Vec<(String, String)>>(b.as_bytes());
                let reference = serde_urlencoded::from_bytes::<Vec<(String, String)>>(b.as_bytes());
                prop_assert_eq!(fast.ok(), reference.ok(), "{:?}", b);
            }

            #[test]
            fn the_in_place_form_parser_fills_maps_as_serde_urlencoded_does(b in body()) {
                let fast = from_form::<BTreeMap<String, String>>(b.as_bytes());
                let reference = serde_urlencoded::from_bytes::<BTreeMap<String, String>>(b.as_bytes());
                prop_assert_eq!(fast.ok(), reference.ok(), "{:?}", b);
            }

            #[test]
            fn the_in_place_form_parser_fills_request_types_as_serde_urlencoded_does(b in body()) {
                let fast = from_form::<Typed>(b.as_bytes());
                let reference = serde_urlencoded::from_bytes::<Typed>(b.as_bytes());
                prop_assert_eq!(fast.is_ok(), reference.is_ok(), "{:?}: {:?} vs {:?}", b, fast, reference);
                if let (Ok(f), Ok(r)) = (fast, reference) {
                    prop_assert_eq!(f, r);
                }
            }
        }
    }
}
