//! The API's request body extractor: JSON or form, size-limited, with specific errors.

use axum::extract::{FromRequest, Request};
use axum::response::Response;
use http::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::error;

/// Largest request body accepted; a token request is well under a few KiB.
const MAX_BODY: usize = 64 * 1024;

/// A request body parsed from `application/json` or `application/x-www-form-urlencoded`.
pub(crate) struct ApiBody<T>(pub(crate) T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, _: &S) -> Result<Self, Response> {
        let ctype = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            });
        let json = match ctype.as_deref() {
            Some("application/json") => true,
            Some("application/x-www-form-urlencoded") => false,
            other => {
                let got = other.unwrap_or("none");
                return Err(error(
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
                    error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "invalid_request",
                        &format!("request body larger than {MAX_BODY} bytes"),
                    )
                } else {
                    error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request",
                        "the request body could not be read",
                    )
                }
            })?;
        let parsed = if json {
            serde_json::from_slice::<T>(&bytes).map_err(|e| describe(e.to_string()))
        } else {
            serde_urlencoded::from_bytes::<T>(&bytes).map_err(|e| describe(e.to_string()))
        };
        parsed
            .map(ApiBody)
            .map_err(|d| error(StatusCode::BAD_REQUEST, "invalid_request", &d))
    }
}

/// Whether reading failed on the size limit rather than on the connection.
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

/// serde messages name the field but never quote its value beyond the type; trim the position
/// suffix so the description stays stable across JSON and form.
fn describe(message: String) -> String {
    let m = message
        .split(" at line ")
        .next()
        .unwrap_or(&message)
        .to_owned();
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
