//! The HTTP client for one IdP: reqwest with rustls (platform verifier), pooled, with a timeout on
//! every request, and a size cap on the documents read back. Every request goes through [`send`]:
//! one span per IdP call, its trace context sent along.

use std::time::Duration;

use super::ProviderError;

/// Largest discovery/JWKS/token response read; an IdP never needs more.
pub(crate) const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

pub(super) fn client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        // Token responses must not be followed elsewhere; discovery never needs redirects either.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .map_err(|e| ProviderError::Config(format!("HTTP client: {e}")))
}

/// GETs a JSON document, mapping transport, status and size problems to [`ProviderError`].
pub(super) async fn get_json(
    http: &reqwest::Client,
    url: &url::Url,
    what: &'static str,
) -> Result<serde_json::Value, ProviderError> {
    let req = http
        .get(url.as_str())
        .header(reqwest::header::ACCEPT, "application/json");
    let resp = send(req, "GET", url, what)
        .await
        .map_err(|e| transport(what, &e))?;
    if !resp.status().is_success() {
        return Err(ProviderError::Status {
            what,
            status: resp.status().as_u16(),
        });
    }
    let body = read_capped(resp, what).await?;
    serde_json::from_slice(&body).map_err(|e| ProviderError::Invalid {
        what,
        message: format!("not JSON: {e}"),
    })
}

/// Sends a request to the IdP (`method` to `url`, for `what`: "token endpoint", "JWKS", ...)
/// inside an `idp_request` span, with that span's `traceparent` on it. The span records the
/// host and the path, never the query, form or headers.
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    method: &'static str,
    url: &url::Url,
    what: &'static str,
) -> reqwest::Result<reqwest::Response> {
    use tracing::Instrument as _;
    let span = crate::telemetry::span!(
        "idp_request",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        idp.call = what,
        http.request.method = method,
        server.address = url.host_str().unwrap_or(""),
        url.path = url.path(),
        http.response.status_code = tracing::field::Empty,
    );
    let req = if span.is_none() {
        req
    } else {
        let mut headers = reqwest::header::HeaderMap::new();
        crate::telemetry::inject(&span, &mut headers);
        req.headers(headers)
    };
    let result = req.send().instrument(span.clone()).await;
    let status = result.as_ref().ok().map(|r| r.status().as_u16());
    crate::telemetry::note_status(&span, status);
    result
}

/// Reads a response body, refusing more than [`MAX_DOCUMENT_BYTES`].
pub(crate) async fn read_capped(
    mut resp: reqwest::Response,
    what: &'static str,
) -> Result<Vec<u8>, ProviderError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport(what, &e))? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(ProviderError::Invalid {
                what,
                message: "response larger than 1 MiB".into(),
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A transport error described without the URL (whose query could carry secrets elsewhere).
pub(crate) fn transport(what: &'static str, e: &reqwest::Error) -> ProviderError {
    let mut message = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connect() {
        "connection failed".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    ProviderError::Unreachable {
        what,
        message,
        timeout: e.is_timeout(),
    }
}
