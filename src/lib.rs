//! tollgate: an identity sidecar for apps behind Microsoft Entra ID or any OpenID Connect
//! provider, and the same code as a library.
//!
//! It validates bearer tokens (RFC 8725 checks against the provider's cached JWKS, Entra's
//! multi-tenant issuer rules, per-route scopes and roles, RFC 6750 refusals), exchanges them
//! (On-Behalf-Of, client credentials, refresh, with a shared cache), and keeps users' refresh
//! tokens sealed for later delegated calls.
//!
//! # Three ways to use it
//!
//! 1. **Sidecar proxy.** `tollgate serve` sits in front of the app: each route declares whether a
//!    token is required and which scopes or roles it needs; tollgate validates, optionally swaps
//!    the token for an On-Behalf-Of token for the upstream, strips spoofed `X-Auth-*` headers and
//!    adds its own identity headers. The app sees only authenticated requests. Configuration:
//!    [`Config`] (TOML plus `TOLLGATE_*` and NAIS `AZURE_APP_*` environment variables); the
//!    server itself is `server::Server` (feature `server`).
//! 2. **Local token API.** On `127.0.0.1:7164` the same process answers the app's own token
//!    needs, wire-compatible with NAIS Texas: `POST /api/v1/token` (client credentials),
//!    `/api/v1/token/exchange` (On-Behalf-Of), `/api/v1/introspect`, and
//!    `/api/v1/token/delegated` for users who signed in through the login proxy. The app speaks JSON to localhost instead of
//!    OAuth to the IdP.
//! 3. **Library layer.** No sidecar: an axum (or any tower) app adds [`Auth::layer`] and reads
//!    [`Claims`] and [`BearerToken`] in its handlers; [`Auth::exchanger`] gives the [`Exchanger`]
//!    for On-Behalf-Of calls. With `default-features = false, features = ["axum"]` no SQLite,
//!    Redis, clap or server code is compiled in.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//! use tollgate::{Auth, Claims};
//!
//! let auth = Auth::builder()
//!     .well_known_url("https://login.microsoftonline.com/<tenant>/v2.0/.well-known/openid-configuration")
//!     .client_id("aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb")
//!     .build()
//!     .await?;
//! let app: Router = Router::new()
//!     .route("/me", get(|claims: Claims| async move { claims.subject().to_owned() }))
//!     .route_layer(auth.layer().require_scopes(["access_as_user"]));
//! # Ok(()) }
//! ```
//!
//! `examples/axum_app.rs` is a complete app (optional and required auth, an On-Behalf-Of call to
//! a downstream API) runnable against the dev IdP.
//!
//! # The login proxy
//!
//! With `[login]` enabled, the sidecar is also the OpenID provider of the app's own OIDC client
//! (MSAL included): it serves a rewritten discovery document, adds the configured scopes at
//! `/oauth2/authorize`, forwards `/oauth2/token` to the real IdP and keeps each user's refresh
//! token, sealed with AES-256-GCM in a [`store`] (memory, SQLite or Redis). The local token API
//! then hands out delegated tokens for that user by object id or UPN, after the user has left.
//!
//! # Modules
//!
//! [`validate`] (token -> [`Claims`], refusals), [`exchange`] ([`Exchanger`]), [`provider`]
//! (discovery and keys), [`config`], [`layer`] (the tower layer and axum extractors), [`store`]
//! (sealed per-user tokens); with the default features also `server` (the sidecar), `devidp` (a
//! local Entra-shaped OpenID provider for development and tests: `tollgate dev-idp`) and `demo`.
//!
//! # Features
//!
//! | feature | default | enables |
//! | --- | --- | --- |
//! | `axum` | via `server` | axum extractors for [`Claims`] and [`BearerToken`] |
//! | `server` | yes | the sidecar: listeners, proxy, token API, login proxy, metrics |
//! | `sqlite` | yes | the SQLite token store |
//! | `redis` | yes | the Redis token store |
//! | `dev-idp` | yes | the dev IdP, `tollgate demo`, and the `tollgate` binary |
//! | `otel` | yes | OpenTelemetry tracing over OTLP/HTTP ([`telemetry`]), off until `[telemetry]` is configured |
#![deny(missing_docs, unreachable_pub)]

pub mod config;
pub mod exchange;
pub mod layer;
pub mod provider;
pub mod store;
pub mod telemetry;
pub mod validate;

#[cfg(feature = "server")]
mod access_log;
#[cfg(feature = "server")]
mod admin;
#[cfg(feature = "server")]
mod api;
mod cache_meter;
#[cfg(feature = "server")]
mod delegation;
#[cfg(feature = "dev-idp")]
pub mod demo;
// The dev IdP is its own crate (`tollgate-devidp`); the path stays for existing users.
#[cfg(feature = "dev-idp")]
pub use tollgate_devidp as devidp;
// Entry points for the fuzz targets in `fuzz/`; see src/fuzzing.rs.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "server")]
mod http_server;
#[cfg(feature = "server")]
mod identity_headers;
#[cfg(feature = "server")]
mod login;
#[cfg(all(test, feature = "server"))]
mod memory_tests;
#[cfg(feature = "server")]
mod oauth2;
#[cfg(feature = "server")]
mod path;
#[cfg(feature = "server")]
mod proxy;
#[cfg(feature = "server")]
mod response;
#[cfg(feature = "server")]
mod routes;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
mod session;
#[cfg(feature = "server")]
mod state;
#[cfg(test)]
mod test_metrics;
mod util;

pub use config::Config;
pub use exchange::Exchanger;
pub use layer::{Auth, AuthLayer, AuthService, BearerToken};
pub use provider::Provider;
pub use validate::{Claims, Validator};
