//! tollgate: an identity sidecar for apps behind Microsoft Entra ID or any OIDC provider.
#![deny(missing_docs, unreachable_pub)]

pub mod config;
pub mod exchange;
pub mod layer;
pub mod provider;
pub mod store;
pub mod validate;

#[cfg(feature = "server")]
mod admin;
#[cfg(feature = "server")]
mod api;
#[cfg(feature = "dev-idp")]
pub mod demo;
#[cfg(feature = "dev-idp")]
pub mod devidp;
#[cfg(feature = "server")]
mod http_server;
#[cfg(feature = "server")]
mod login;
#[cfg(feature = "server")]
mod proxy;
#[cfg(feature = "server")]
mod routes;
#[cfg(feature = "server")]
pub mod server;

pub use config::Config;
pub use exchange::Exchanger;
pub use layer::{Auth, AuthLayer, AuthService, BearerToken};
pub use provider::Provider;
pub use validate::{Claims, Validator};
