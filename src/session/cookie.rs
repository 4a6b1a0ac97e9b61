//! The two cookies of a browser session: the session cookie (a random id, nothing else) and the
//! short-lived sign-in cookie that binds an authorization response to the browser that asked
//! for it (its `state`, `nonce` and PKCE verifier, sealed).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, header};
use serde::{Deserialize, Serialize};

use crate::config::SessionConfig;
use crate::store::Sealer;
use crate::util::now;

/// How long a started sign-in may take before its callback is refused.
pub(crate) const SIGN_IN_LIFETIME: u64 = 600;

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4), the first one
/// when a browser sends several of that name.
pub(crate) fn read<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// A new random cookie value of 256 bits, base64url: a session id or a sign-in secret.
pub(crate) fn random_id() -> String {
    let mut bytes = [0u8; 32];
    // The system generator failing is not a state to serve requests in.
    aws_lc_rs::rand::fill(&mut bytes).expect("system random generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `value` could be a cookie value [`random_id`] made, so that arbitrary input is never
/// hashed and looked up.
pub(crate) fn is_random_id(value: &str) -> bool {
    value.len() == 43
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `Set-Cookie` for the session: `HttpOnly`, `SameSite=Lax`, `Path=/`, `Secure` except on http
/// loopback, living as long as the session may (RFC 6265bis §4.1).
pub(crate) fn session(config: &SessionConfig, id: &str) -> HeaderValue {
    build(config, config.cookie_name(), id, config.lifetime.as_secs())
}

/// `Set-Cookie` that removes the session cookie.
pub(crate) fn clear_session(config: &SessionConfig) -> HeaderValue {
    build(config, config.cookie_name(), "", 0)
}

/// The sign-in cookie's name: the session cookie's with `-signin` (a `__Host-` prefix is kept).
pub(crate) fn sign_in_name(config: &SessionConfig) -> String {
    format!("{}-signin", config.cookie_name())
}

/// `Set-Cookie` that removes the sign-in cookie.
pub(crate) fn clear_sign_in(config: &SessionConfig) -> HeaderValue {
    build(config, &sign_in_name(config), "", 0)
}

fn build(config: &SessionConfig, name: &str, value: &str, max_age: u64) -> HeaderValue {
    let secure = if config.is_https() { "; Secure" } else { "" };
    let cookie =
        format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}");
    // Names are checked at config time and values are base64url: always a valid header.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What a started sign-in remembers until its callback, sealed into the sign-in cookie.
#[derive(Serialize, Deserialize)]
pub(crate) struct SignIn {
    /// `state` sent to the IdP (RFC 6749 §10.12).
    pub(crate) state: String,
    /// `nonce` the ID token must carry (OpenID Connect Core §3.1.2.1).
    pub(crate) nonce: String,
    /// The PKCE code verifier (RFC 7636 §4.1).
    pub(crate) verifier: String,
    /// Where the browser goes once signed in (already validated).
    pub(crate) rd: String,
    /// Unix seconds after which the callback is refused.
    pub(crate) expires_at: u64,
}

/// AAD of the sign-in cookie: a blob sealed for another purpose does not open as one.
const SIGN_IN_AAD: &[u8] = b"tollgate-session-sign-in";

impl SignIn {
    /// A new sign-in going to `rd`.
    pub(crate) fn new(rd: String) -> Self {
        Self {
            state: random_id(),
            nonce: random_id(),
            verifier: random_id(),
            rd,
            expires_at: now() + SIGN_IN_LIFETIME,
        }
    }

    /// `Set-Cookie` carrying this sign-in, sealed.
    pub(crate) fn to_cookie(
        &self,
        config: &SessionConfig,
        sealer: &Sealer,
    ) -> Result<HeaderValue, crate::store::StoreError> {
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(self).unwrap_or_default());
        let sealed = sealer.seal(&plain, SIGN_IN_AAD)?;
        Ok(build(
            config,
            &sign_in_name(config),
            &URL_SAFE_NO_PAD.encode(sealed),
            SIGN_IN_LIFETIME,
        ))
    }

    /// The sign-in this browser started, if its cookie opens and has not expired.
    pub(crate) fn from_request(
        headers: &HeaderMap,
        config: &SessionConfig,
        sealer: &Sealer,
    ) -> Option<Self> {
        let value = read(headers, &sign_in_name(config))?;
        let sealed = URL_SAFE_NO_PAD.decode(value).ok()?;
        let (plain, _) = sealer.open(&sealed, SIGN_IN_AAD).ok()?;
        let plain = zeroize::Zeroizing::new(plain);
        let sign_in: Self = serde_json::from_slice(&plain).ok()?;
        (sign_in.expires_at > now()).then_some(sign_in)
    }

    /// The PKCE `code_challenge` (S256) of the verifier.
    pub(crate) fn code_challenge(&self) -> String {
        URL_SAFE_NO_PAD.encode(crate::util::sha256(self.verifier.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> SessionConfig {
        SessionConfig {
            enabled: true,
            public_url: Some(url.parse().unwrap()),
            ..SessionConfig::default()
        }
    }

    #[test]
    fn reads_the_first_cookie_of_a_name_across_headers() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; tollgate=x"));
        headers.append(header::COOKIE, HeaderValue::from_static("tollgate=y"));
        assert_eq!(read(&headers, "tollgate"), Some("x"));
        assert_eq!(read(&headers, "a"), Some("1"));
        assert_eq!(read(&headers, "toll"), None);
    }

    #[test]
    fn session_cookie_attributes_follow_the_public_url() {
        let https = session(&config("https://app.example"), "id");
        assert_eq!(
            https,
            "__Host-tollgate=id; Path=/; Max-Age=36000; HttpOnly; SameSite=Lax; Secure"
        );
        let http = session(&config("http://127.0.0.1:8080"), "id");
        assert_eq!(
            http,
            "tollgate=id; Path=/; Max-Age=36000; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            clear_sign_in(&config("https://app.example")),
            "__Host-tollgate-signin=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax; Secure"
        );
    }

    #[test]
    fn random_ids_are_256_bits_and_recognised() {
        let a = random_id();
        assert!(is_random_id(&a));
        assert_ne!(a, random_id());
        assert!(!is_random_id("short"));
        assert!(!is_random_id(&format!("{}=", &a[..42])));
    }

    #[test]
    fn a_sign_in_round_trips_only_through_its_own_sealer() {
        let cfg = config("https://app.example");
        let sealer = Sealer::ephemeral().unwrap();
        let sign_in = SignIn::new("/after".into());
        let set = sign_in.to_cookie(&cfg, &sealer).unwrap();
        let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        let back = SignIn::from_request(&headers, &cfg, &sealer).unwrap();
        assert_eq!((back.state, back.rd), (sign_in.state, "/after".to_owned()));
        // The sealed value shows neither the verifier nor the nonce.
        assert!(!pair.contains(&sign_in.verifier) && !pair.contains(&sign_in.nonce));
        let other = Sealer::ephemeral().unwrap();
        assert!(SignIn::from_request(&headers, &cfg, &other).is_none());
    }
}
