//! The browser session's endpoints, under oauth2-proxy's names so that ingress snippets written
//! for it keep working: `/oauth2/start`, `/oauth2/callback`, `/oauth2/sign_out` and
//! `/oauth2/userinfo` in [`signin`]; `/oauth2/backchannel_logout` and
//! `/oauth2/frontchannel_logout` in [`logout`]. The sessions they start and end are
//! `crate::session`'s; `/oauth2/auth` (forward-auth) lives with the gate it shares its checks
//! with.

mod logout;
mod signin;

pub(crate) use self::signin::routes;
