//! axum extractors: [`Claims`], `Option<Claims>` and [`BearerToken`].

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use super::BearerToken;
use crate::validate::{Claims, ValidationError, bearer_token};

/// The rejection of tollgate's extractors: the same RFC 6750 answer as the proxy and the
/// layer (`Claims` on a route without the layer answers `401 Bearer realm="tollgate"`).
///
/// ```
/// use axum::response::IntoResponse;
/// use tollgate::{layer::AuthRejection, validate::ValidationError};
/// let response = AuthRejection(ValidationError::Missing).into_response();
/// assert_eq!(response.status(), 401);
/// assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
/// ```
#[derive(Debug)]
pub struct AuthRejection(pub ValidationError);

impl IntoResponse for AuthRejection {
    fn into_response(self) -> Response {
        self.0.to_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Claims {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Claims>()
            .cloned()
            .ok_or(AuthRejection(ValidationError::Missing))
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Claims {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Claims>().cloned())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = AuthRejection;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(t) = parts.extensions.get::<BearerToken>() {
            return Ok(t.clone());
        }
        match bearer_token(&parts.headers) {
            Ok(Some(t)) => Ok(BearerToken(t.to_owned())),
            Ok(None) => Err(AuthRejection(ValidationError::Missing)),
            Err(e) => Err(AuthRejection(e)),
        }
    }
}
