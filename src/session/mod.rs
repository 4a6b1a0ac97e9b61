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
//! This module is the sessions themselves (the cookies, the records, the user a request
//! carries, where sign-in and sign-out may send the browser), below the server's state that
//! holds them; the `/oauth2/*` endpoints that start and end them are in the `oauth2` module, and
//! `/oauth2/auth` (forward-auth) lives with the gate it shares its checks with.

pub(crate) mod cookie;
pub(crate) mod redirect;
pub(crate) mod sessions;

pub(crate) use self::sessions::{
    SessionError, SessionUser, Sessions, is_navigation, is_same_origin_write, store_unavailable,
};
