//! Entra-shaped errors: the token endpoint's JSON body (member order as Entra sends it), the
//! authorize redirect parameters, and the error page for errors that cannot be redirected.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An Entra error: OAuth `error`, one AADSTS code and its message.
#[derive(Clone, Debug)]
pub(crate) struct AadError {
    pub(crate) error: &'static str,
    pub(crate) code: u32,
    pub(crate) message: String,
    pub(crate) suberror: Option<&'static str>,
    pub(crate) claims: Option<String>,
}

impl AadError {
    pub(crate) fn new(error: &'static str, code: u32, message: impl Into<String>) -> Self {
        Self {
            error,
            code,
            message: message.into(),
            suberror: None,
            claims: None,
        }
    }

    pub(crate) fn invalid_request(code: u32, message: impl Into<String>) -> Self {
        Self::new("invalid_request", code, message)
    }

    pub(crate) fn invalid_grant(code: u32, message: impl Into<String>) -> Self {
        Self::new("invalid_grant", code, message)
    }

    pub(crate) fn invalid_client(code: u32, message: impl Into<String>) -> Self {
        Self::new("invalid_client", code, message)
    }

    pub(crate) fn invalid_scope(code: u32, message: impl Into<String>) -> Self {
        Self::new("invalid_scope", code, message)
    }

    pub(crate) fn missing_parameter(name: &str) -> Self {
        Self::invalid_request(
            900144,
            format!("The request body must contain the following parameter: '{name}'."),
        )
    }

    pub(crate) fn unknown_tenant(tenant: &str) -> Self {
        Self::new(
            "invalid_tenant",
            90002,
            format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."
            ),
        )
    }

    /// Entra's Conditional Access MFA challenge (AADSTS50076) for access to `resource`.
    pub(crate) fn mfa_required(resource: &str) -> Self {
        let claims = serde_json::json!({
            "access_token": {"capolids": {"essential": true, "values": [super::MFA_POLICY_ID]}}
        });
        Self {
            suberror: Some("basic_action"),
            claims: Some(claims.to_string()),
            ..Self::invalid_grant(
                50076,
                format!(
                    "Due to a configuration change made by your administrator, or because you moved to a new location, you must use multi-factor authentication to access '{resource}'."
                ),
            )
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        if self.error == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        }
    }

    /// Trace id, correlation id and timestamp of one occurrence.
    pub(crate) fn occurrence(&self, headers: &HeaderMap) -> Occurrence {
        // Entra echoes the caller's client-request-id as correlation id.
        let correlation_id = headers
            .get("client-request-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| uuid::Uuid::try_parse(v).ok())
            .unwrap_or_else(uuid::Uuid::new_v4)
            .to_string();
        Occurrence {
            trace_id: uuid::Uuid::new_v4().to_string(),
            correlation_id,
            timestamp: entra_timestamp(),
        }
    }

    pub(crate) fn description(&self, at: &Occurrence) -> String {
        format!(
            "AADSTS{}: {}\r\nTrace ID: {}\r\nCorrelation ID: {}\r\nTimestamp: {}",
            self.code, self.message, at.trace_id, at.correlation_id, at.timestamp
        )
    }

    pub(crate) fn error_uri(&self) -> String {
        format!("https://login.microsoftonline.com/error?code={}", self.code)
    }

    /// The token endpoint's JSON error response.
    pub(crate) fn to_json_response(&self, headers: &HeaderMap) -> Response {
        // Field order is the serialization order, and it is Entra's member order.
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            error_description: String,
            error_codes: [u32; 1],
            timestamp: &'a str,
            trace_id: &'a str,
            correlation_id: &'a str,
            error_uri: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            suberror: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            claims: Option<&'a str>,
        }
        let at = self.occurrence(headers);
        let body = Body {
            error: self.error,
            error_description: self.description(&at),
            error_codes: [self.code],
            timestamp: &at.timestamp,
            trace_id: &at.trace_id,
            correlation_id: &at.correlation_id,
            error_uri: self.error_uri(),
            suberror: self.suberror,
            claims: self.claims.as_deref(),
        };
        json_response(self.status(), &body)
    }

    /// The HTML page for authorize errors that must not be redirected (unknown client,
    /// unregistered redirect URI).
    pub(crate) fn to_page(&self, headers: &HeaderMap) -> Response {
        let at = self.occurrence(headers);
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign in: error</title></head><body>\
             <h1>Sorry, but we're having trouble signing you in.</h1>\
             <p><strong>AADSTS{}</strong>: {}</p>\
             <p>Request Id: {}<br>Correlation Id: {}<br>Timestamp: {}</p>\
             <p><small>tollgate dev IdP</small></p></body></html>",
            self.code,
            html_escape(&self.message),
            at.trace_id,
            at.correlation_id,
            at.timestamp
        );
        html_response(StatusCode::BAD_REQUEST, body)
    }
}

/// Identifiers of one error occurrence, repeated inside `error_description`.
#[derive(Debug)]
pub(crate) struct Occurrence {
    pub(crate) trace_id: String,
    pub(crate) correlation_id: String,
    pub(crate) timestamp: String,
}

/// `2026-01-01 10:00:00Z`: space separator, whole seconds, as Entra writes it.
pub(crate) fn entra_timestamp() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now())
        .to_string()
        .replacen('T', " ", 1)
}

/// A JSON response with the headers Entra's token endpoint sends.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let mut response = (status, bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

pub(crate) fn html_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_has_entra_format() {
        let ts = entra_timestamp();
        assert_eq!(ts.len(), 20, "{ts}");
        assert_eq!(&ts[10..11], " ");
        assert!(ts.ends_with('Z'));
    }

    #[test]
    fn html_escape_escapes_markup() {
        assert_eq!(
            html_escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn invalid_client_is_401_and_others_400() {
        assert_eq!(
            AadError::invalid_client(7000215, "x").status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            AadError::invalid_grant(70008, "x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            AadError::mfa_required("r").status(),
            StatusCode::BAD_REQUEST
        );
    }
}
