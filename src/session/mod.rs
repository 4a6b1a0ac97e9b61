//! Browser sessions (`[session]`): tollgate signs users in itself (authorization code + PKCE),
//! keeps the session server-side in the token store, and hands routes with `auth = "session"`
//! and the forward-auth endpoint the signed-in user, with the same scopes, roles, identity
//! headers and exchanged tokens a bearer token would get.
//!
//! The cookie holds a random 256-bit id and nothing else; the store keys the session by its
//! SHA-256, so neither a store dump nor a log can be replayed as a cookie. The user's tokens are
//! the same record the login proxy keeps ([`crate::delegation`]): a session route's `obo`
//! targets are redeemed from the session's refresh token, and the delegated API serves the user
//! too.
//!
//! Endpoints (oauth2-proxy's names, so ingress snippets written for it keep working):
//! `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out`, `/oauth2/userinfo` in
//! [`signin`]; `/oauth2/backchannel_logout` and `/oauth2/frontchannel_logout` in [`logout`];
//! `/oauth2/auth` (forward-auth) lives with the gate it shares its checks with.

pub(crate) mod cookie;
mod logout;
pub(crate) mod redirect;
pub(crate) mod sessions;
mod signin;

pub(crate) use self::sessions::{
    SessionError, SessionUser, Sessions, is_navigation, is_same_origin_write, store_unavailable,
};
pub(crate) use self::signin::routes;
