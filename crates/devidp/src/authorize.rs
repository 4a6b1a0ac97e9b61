//! `/{tenant}/oauth2/v2.0/authorize` (login page, authorization code with PKCE) and
//! `/{tenant}/oauth2/v2.0/logout`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use url::{Host, Url};

use super::aad_error::{AadError, html_escape, html_response};
use super::config::DevApp;
use super::scopes::{self, ParsedScope};
use super::state::{
    CodeGrant, Shared, TenantPath, UserSession, now_secs, opaque_token, secret_key,
};

/// Authorize parameters carried through the login form.
const CARRIED: [&str; 12] = [
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "login_hint",
    "prompt",
    "claims",
];

type Params = HashMap<String, String>;

pub(crate) async fn authorize_get(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    authorize(&shared, &tenant, &headers, &params)
}

/// A form POST either is an authorization request sent as a form, or the login form's submit
/// (it has `login`).
pub(crate) async fn authorize_post(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(params): Form<Params>,
) -> Response {
    authorize(&shared, &tenant, &headers, &params)
}

fn authorize(shared: &Shared, segment: &str, headers: &HeaderMap, params: &Params) -> Response {
    let request = match AuthorizeRequest::validate(shared, segment, params) {
        Ok(request) => request,
        Err(Refusal::Page(error)) => {
            tracing::info!(
                code = error.code,
                "dev IdP: authorize request refused on the error page"
            );
            return error.to_page(headers);
        }
        Err(Refusal::Redirect(request, error)) => {
            tracing::info!(code = error.code, client_id = %request.app.client_id, "dev IdP: authorize request refused by redirect");
            let at = error.occurrence(headers);
            let description = error.description(&at);
            let uri = error.error_uri();
            let mut pairs = vec![
                ("error", error.error),
                ("error_description", description.as_str()),
                ("error_uri", uri.as_str()),
            ];
            if let Some(state) = &request.state {
                pairs.push(("state", state));
            }
            return request.deliver(&pairs);
        }
    };
    match params
        .get("login")
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
    {
        None => login_page(shared, &request, params, None),
        Some(login) => sign_in(shared, &request, params, login),
    }
}

fn sign_in(shared: &Shared, request: &AuthorizeRequest, params: &Params, login: &str) -> Response {
    let password = params
        .get("password")
        .map(String::as_str)
        .unwrap_or_default();
    let mfa = params.get("mfa").is_some_and(|v| !v.is_empty());
    let user = {
        let inner = shared.lock();
        inner
            .find_user(login)
            .filter(|u| {
                aws_lc_rs::constant_time::verify_slices_are_equal(
                    u.password.as_bytes(),
                    password.as_bytes(),
                )
                .is_ok()
            })
            .cloned()
    };
    let Some(user) = user else {
        let message =
            "AADSTS50126: Error validating credentials due to invalid username or password.";
        return login_page(shared, request, params, Some(message));
    };
    if let TenantPath::Tenant(tid) = &request.tenant
        && !user.tenant_id.eq_ignore_ascii_case(tid)
    {
        let message = format!(
            "AADSTS50020: User account '{}' from identity provider does not exist in tenant '{tid}'. Sign in at tenant '{}' or 'organizations'.",
            user.upn, user.tenant_id
        );
        return login_page(shared, request, params, Some(&message));
    }
    let amr = if mfa {
        vec!["pwd".to_owned(), "mfa".to_owned()]
    } else {
        vec!["pwd".to_owned()]
    };
    let code = opaque_token("0.A", 4);
    let now = now_secs();
    {
        let mut inner = shared.lock();
        inner.purge_expired(now);
        let expires_at = now + inner.lifetimes.code.as_secs();
        inner.codes.insert(
            secret_key(&code),
            CodeGrant {
                client_id: request.app.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                scope: request.scope.clone(),
                nonce: request.nonce.clone(),
                code_challenge: request.code_challenge.clone(),
                session: UserSession {
                    username: user.username.clone(),
                    tid: user.tenant_id.clone(),
                    amr,
                    acrs: super::state::requested_acrs(params.get("claims").map(String::as_str)),
                    sid: uuid::Uuid::new_v4().to_string(),
                },
                expires_at,
                redeemed_family: None,
            },
        );
    }
    tracing::info!(client_id = %request.app.client_id, user = %user.username, mfa, "dev IdP: user signed in, code issued");
    let mut pairs = vec![("code", code.as_str())];
    if let Some(state) = &request.state {
        pairs.push(("state", state));
    }
    request.deliver(&pairs)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ResponseMode {
    Query,
    Fragment,
    FormPost,
}

/// A validated authorization request.
struct AuthorizeRequest {
    segment: String,
    tenant: TenantPath,
    app: DevApp,
    redirect_uri: String,
    mode: ResponseMode,
    state: Option<String>,
    nonce: Option<String>,
    scope: ParsedScope,
    code_challenge: Option<String>,
}

enum Refusal {
    /// Cannot be returned to the client safely: rendered on the IdP's own page.
    Page(AadError),
    /// Returned to the (validated) redirect URI.
    Redirect(Box<AuthorizeRequest>, AadError),
}

impl AuthorizeRequest {
    fn validate(shared: &Shared, segment: &str, params: &Params) -> Result<Self, Refusal> {
        let get = |name: &str| {
            params
                .get(name)
                .map(String::as_str)
                .filter(|v| !v.is_empty())
        };
        let tenant = shared
            .tenant(segment)
            .ok_or_else(|| Refusal::Page(AadError::unknown_tenant(segment)))?;
        let client_id = get("client_id")
            .ok_or_else(|| Refusal::Page(AadError::missing_parameter("client_id")))?;
        let (app, apps) = {
            let inner = shared.lock();
            (
                scopes::find_app(&inner.apps, client_id).cloned(),
                inner.apps.clone(),
            )
        };
        let app = app.ok_or_else(|| {
            Refusal::Page(AadError::new(
                "unauthorized_client",
                700016,
                format!("Application with identifier '{client_id}' was not found in the directory '{segment}'."),
            ))
        })?;
        let redirect_uri = get("redirect_uri")
            .ok_or_else(|| Refusal::Page(AadError::missing_parameter("redirect_uri")))?;
        if !redirect_allowed(&app, redirect_uri) {
            return Err(Refusal::Page(AadError::invalid_request(
                50011,
                format!(
                    "The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{}'.",
                    app.client_id
                ),
            )));
        }
        let mode = match get("response_mode") {
            None | Some("query") => ResponseMode::Query,
            Some("fragment") => ResponseMode::Fragment,
            Some("form_post") => ResponseMode::FormPost,
            Some(_) => ResponseMode::Query,
        };
        let mut request = AuthorizeRequest {
            segment: segment.to_owned(),
            tenant,
            app,
            redirect_uri: redirect_uri.to_owned(),
            mode,
            state: get("state").map(str::to_owned),
            nonce: get("nonce").map(str::to_owned),
            scope: ParsedScope::default(),
            code_challenge: None,
        };
        match request.check_parameters(&apps, &get) {
            Ok(()) => Ok(request),
            Err(error) => Err(Refusal::Redirect(Box::new(request), error)),
        }
    }

    /// Checks that can be reported to the client, by redirect.
    fn check_parameters<'a>(
        &mut self,
        apps: &[DevApp],
        get: &impl Fn(&str) -> Option<&'a str>,
    ) -> Result<(), AadError> {
        if let Some(mode) = get("response_mode")
            && !["query", "fragment", "form_post"].contains(&mode)
        {
            return Err(AadError::invalid_request(
                900144,
                format!("The response_mode '{mode}' is not supported."),
            ));
        }
        match get("response_type") {
            None => return Err(AadError::missing_parameter("response_type")),
            Some("code") => {}
            Some(other) => {
                return Err(AadError::new(
                    "unsupported_response_type",
                    700051,
                    format!(
                        "response_type '{other}' is not enabled for the application. The dev IdP issues authorization codes only."
                    ),
                ));
            }
        }
        match (get("code_challenge"), get("code_challenge_method")) {
            (None, Some(_)) => return Err(AadError::missing_parameter("code_challenge")),
            (None, None) if self.app.public_client => {
                return Err(AadError::invalid_request(
                    9002325,
                    "Proof Key for Code Exchange is required for public clients: send code_challenge with code_challenge_method=S256.",
                ));
            }
            (None, None) => {}
            (Some(challenge), method) => {
                // A missing method means `plain` (RFC 7636 §4.3), which the dev IdP refuses.
                if method != Some("S256") {
                    return Err(AadError::invalid_request(
                        9002313,
                        format!(
                            "Invalid request. code_challenge_method '{}' is not supported: use S256.",
                            method.unwrap_or("plain")
                        ),
                    ));
                }
                let well_formed = challenge.len() == 43
                    && challenge
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if !well_formed {
                    return Err(AadError::invalid_request(
                        501491,
                        "Invalid size of Code_Challenge parameter: an S256 challenge is 43 base64url characters.",
                    ));
                }
                self.code_challenge = Some(challenge.to_owned());
            }
        }
        let scope = get("scope").ok_or_else(|| AadError::missing_parameter("scope"))?;
        self.scope = ParsedScope::parse(scope, apps)?;
        Ok(())
    }

    /// Sends `pairs` to the redirect URI in the requested response mode.
    fn deliver(&self, pairs: &[(&str, &str)]) -> Response {
        let Ok(mut url) = Url::parse(&self.redirect_uri) else {
            return AadError::invalid_request(50011, "The redirect URI is not a valid URL.")
                .to_page(&HeaderMap::new());
        };
        match self.mode {
            ResponseMode::Query => {
                url.query_pairs_mut().extend_pairs(pairs);
                found(url.as_str())
            }
            ResponseMode::Fragment => {
                let fragment = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs)
                    .finish();
                url.set_fragment(Some(&fragment));
                found(url.as_str())
            }
            ResponseMode::FormPost => {
                let inputs: String = pairs
                    .iter()
                    .map(|(n, v)| {
                        format!(
                            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
                            html_escape(n),
                            html_escape(v)
                        )
                    })
                    .collect();
                html_response(
                    StatusCode::OK,
                    format!(
                        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Working...</title></head>\
                         <body onload=\"document.forms[0].submit()\"><form method=\"post\" action=\"{}\">{inputs}\
                         <noscript><button type=\"submit\">Continue</button></noscript></form></body></html>",
                        html_escape(url.as_str())
                    ),
                )
            }
        }
    }
}

fn found(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = StatusCode::FOUND.into_response();
            response.headers_mut().insert(header::LOCATION, value);
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(_) => AadError::invalid_request(
            50011,
            "The redirect URI cannot be used in a Location header.",
        )
        .to_page(&HeaderMap::new()),
    }
}

fn login_page(
    shared: &Shared,
    request: &AuthorizeRequest,
    params: &Params,
    error: Option<&str>,
) -> Response {
    let users: Vec<(String, String, String)> = {
        let inner = shared.lock();
        inner
            .users
            .iter()
            .filter(|u| match &request.tenant {
                TenantPath::Tenant(tid) => u.tenant_id.eq_ignore_ascii_case(tid),
                TenantPath::Alias(_) => true,
            })
            .map(|u| (u.username.clone(), u.upn.clone(), u.name.clone()))
            .collect()
    };
    let hidden: String = CARRIED
        .iter()
        .filter_map(|name| params.get(*name).map(|value| (name, value)))
        .map(|(name, value)| {
            format!(
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                html_escape(value)
            )
        })
        .collect();
    let options: String = users
        .iter()
        .map(|(username, upn, name)| {
            format!(
                "<option value=\"{}\">{} ({})</option>",
                html_escape(username),
                html_escape(name),
                html_escape(upn)
            )
        })
        .collect();
    let rows: String = users
        .iter()
        .map(|(username, upn, name)| {
            format!(
                "<li><code>{}</code>: {} &lt;{}&gt;</li>",
                html_escape(username),
                html_escape(name),
                html_escape(upn)
            )
        })
        .collect();
    let error_html = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", html_escape(e)))
        .unwrap_or_default();
    let login_hint = params
        .get("login_hint")
        .map(|h| html_escape(h))
        .unwrap_or_default();
    let scope = params
        .get("scope")
        .map(|s| html_escape(s))
        .unwrap_or_default();
    let body = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in to {app} (tollgate dev IdP)</title>
<style>body{{font-family:sans-serif;max-width:32em;margin:3em auto}} .error{{color:#a00}} label{{display:block;margin:.6em 0}}</style>
</head><body>
<h1>Sign in</h1>
<p><strong>{app}</strong> asks for: <code>{scope}</code></p>
<p><small>tollgate dev IdP, tenant <code>{tenant}</code>. Development only. Built-in users' password: <code>dev</code>.</small></p>
{error_html}
<form method="post" action="/{segment}/oauth2/v2.0/authorize">
{hidden}
<label>User <input name="login" id="login" list="users" value="{login_hint}" autocomplete="username" required autofocus></label>
<datalist id="users">{options}</datalist>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<label><input name="mfa" type="checkbox" value="on"> Complete MFA (token gets amr ["pwd","mfa"])</label>
<button type="submit">Sign in</button>
</form>
<h2>Users</h2><ul>{rows}</ul>
</body></html>"#,
        app = html_escape(&request.app.name),
        tenant = html_escape(request.tenant.segment()),
        segment = html_escape(&request.segment),
    );
    html_response(StatusCode::OK, body)
}

/// Ends the session an `id_token_hint` names, telling its apps by back-channel logout before
/// answering (so they have forgotten it when the browser comes back), then signs the browser
/// out: a redirect to a registered `post_logout_redirect_uri`, or the signed-out page. Without a
/// valid hint no session ends (the dev IdP has no session cookie to go by); the answer is the
/// same either way.
pub(crate) async fn logout(
    State(shared): State<Arc<Shared>>,
    Path(segment): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    if let Some(hint) = params.get("id_token_hint").filter(|h| !h.is_empty()) {
        let sid = shared
            .tenant(&segment)
            .ok_or("unknown tenant")
            .and_then(|tenant| shared.hinted_session(&tenant, hint));
        match sid {
            Ok(sid) => {
                shared.end_sessions(&[sid]).await;
            }
            Err(reason) => tracing::info!(
                reason,
                "dev IdP: logout id_token_hint not accepted, no session ended"
            ),
        }
    }
    let target = params
        .get("post_logout_redirect_uri")
        .filter(|u| !u.is_empty());
    if let Some(uri) = target {
        let registered = shared
            .lock()
            .apps
            .iter()
            .any(|app| redirect_allowed(app, uri));
        if registered && let Ok(mut url) = Url::parse(uri) {
            if let Some(state) = params.get("state").filter(|s| !s.is_empty()) {
                url.query_pairs_mut().append_pair("state", state);
            }
            return found(url.as_str());
        }
    }
    let note = match target {
        Some(uri) => format!(
            "<p>The post_logout_redirect_uri <code>{}</code> is not registered for any application, so you stay here.</p>",
            html_escape(uri)
        ),
        None => String::new(),
    };
    html_response(
        StatusCode::OK,
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Signed out</title></head><body>\
             <h1>You signed out of your account</h1>{note}<p>It's a good idea to close all browser windows.</p>\
             <p><small>tollgate dev IdP</small></p></body></html>"
        ),
    )
}

/// Exact match with a registered redirect URI, or (when the app allows it) any plain-http
/// loopback URI, whatever its port and path.
pub(crate) fn redirect_allowed(app: &DevApp, uri: &str) -> bool {
    if app.redirect_uris.iter().any(|r| r == uri) {
        return true;
    }
    app.loopback_redirects && is_loopback_http(uri)
}

fn is_loopback_http(uri: &str) -> bool {
    let Ok(url) = Url::parse(uri) else {
        return false;
    };
    let loopback = match url.host() {
        Some(Host::Domain(domain)) => domain == "localhost",
        Some(Host::Ipv4(ip)) => ip == Ipv4Addr::LOCALHOST,
        Some(Host::Ipv6(ip)) => ip == Ipv6Addr::LOCALHOST,
        None => false,
    };
    url.scheme() == "http"
        && loopback
        && url.fragment().is_none()
        && url.username().is_empty()
        && url.password().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DOWNSTREAM_CLIENT_ID, DevIdpConfig, TOLLGATE_CLIENT_ID};

    fn app(id: &str) -> DevApp {
        DevIdpConfig::default()
            .apps
            .into_iter()
            .find(|a| a.client_id == id)
            .unwrap()
    }

    #[test]
    fn loopback_redirects_match_any_port_and_path() {
        let tollgate = app(TOLLGATE_CLIENT_ID);
        for ok in [
            "http://127.0.0.1:1234/cb",
            "http://localhost:8080/a/b?x=1",
            "http://[::1]:9/x",
            "http://127.0.0.1/",
        ] {
            assert!(redirect_allowed(&tollgate, ok), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:1234/cb",
            "http://127.0.0.2:1234/cb",
            "http://localhost.evil.example/cb",
            "http://evil.example/cb",
            "http://127.0.0.1:1/cb#frag",
            "http://user@127.0.0.1:1/cb",
            "not a url",
        ] {
            assert!(!redirect_allowed(&tollgate, bad), "{bad}");
        }
        assert!(!redirect_allowed(
            &app(DOWNSTREAM_CLIENT_ID),
            "http://127.0.0.1:1234/cb"
        ));
    }

    #[test]
    fn registered_redirects_match_exactly() {
        let mut a = app(DOWNSTREAM_CLIENT_ID);
        a.redirect_uris.push("https://app.example/cb".into());
        assert!(redirect_allowed(&a, "https://app.example/cb"));
        assert!(!redirect_allowed(&a, "https://app.example/cb/"));
        assert!(!redirect_allowed(&a, "https://app.example/cb?x=1"));
    }
}
