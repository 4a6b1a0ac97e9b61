//! Bearer token -> [`Claims`], and every refusal as an RFC 6750 §3 challenge.
//!
//! The checks follow RFC 8725 (JWT BCP) and Microsoft's multi-tenant issuer rules
//! (<https://learn.microsoft.com/entra/identity-platform/howto-convert-app-to-be-multi-tenant>):
//! the algorithm comes from configuration only (§3.1), the key is chosen by `kid` from the
//! provider's JWKS and must be of the algorithm's type, `exp`/`iss`/`aud` are required, `nbf` is
//! honoured with the configured leeway, a `{tenantid}` issuer template is filled with the token's
//! `tid` and the tenant checked against `allowed_tenants`, and ID tokens are refused as access
//! tokens (§3.12). A validated token is cached by `sha256(token)` until its `exp`, so a repeat
//! costs a hash and a lookup instead of an RSA verification; when the IdP withdraws a key from
//! its JWKS, every cached token is checked again on its next use.
//!
//! ```no_run
//! # async fn f(provider: std::sync::Arc<tollgate::provider::Provider>, token: &str) {
//! use tollgate::validate::Validator;
//! let validator = Validator::new(provider, 100_000);
//! match validator.validate(token).await {
//!     Ok(claims) => println!("hello {}", claims.subject()),
//!     Err(e) => println!("{} {}", e.status(), e.www_authenticate()),
//! }
//! # }
//! ```

mod claims;
#[cfg(feature = "server")]
mod last_token;
mod parsed_keys;
mod refusal;
mod sent_token;
mod validator;

pub use claims::Claims;
#[cfg_attr(not(feature = "server"), allow(unused_imports))]
pub(crate) use claims::Hot;
#[cfg(feature = "server")]
pub(crate) use last_token::{LastToken, validate_on};
#[cfg(feature = "server")]
pub(crate) use refusal::claims_challenge;
pub use refusal::{REALM, ValidationError};
pub(crate) use refusal::{auth_context_challenge, has_auth_context};
pub use sent_token::bearer_token;
pub(crate) use sent_token::sent_token;
#[cfg(feature = "server")]
pub(crate) use sent_token::{QUERY_TOKEN, SentToken, token_of, usual_bearer};
#[cfg(test)]
pub(crate) use validator::entry_bytes;
pub use validator::{MAX_TOKEN_BYTES, Validator, token_algorithm, token_kid};
