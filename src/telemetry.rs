//! OpenTelemetry tracing: the OTLP exporter and its provider ([`Telemetry`], feature `otel`),
//! W3C Trace Context (`traceparent`/`tracestate`, <https://www.w3.org/TR/trace-context/>) in
//! and out, and the spans tollgate opens around a request's steps.
//!
//! Spans are ordinary `tracing` spans of target `tollgate::telemetry`, exported by the layer
//! [`Telemetry::layer`] gives. They are opened only once [`Telemetry::start`] has run: before
//! that (and in a build without `otel`) `span!` yields `Span::none()`, so a request pays one
//! atomic load per step and allocates nothing for spans nobody records.
//!
//! What goes into a span is chosen here and at each `span!`: method, route, path without the
//! query, status, host, grant, cache hit or miss, and the user's object id only with
//! `[telemetry] user_attribute = true`. Never a token, code, secret, query string or cookie.
//!
//! ```
//! # #[cfg(feature = "otel")]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tollgate::config::TelemetryConfig;
//! use tollgate::telemetry::Telemetry;
//! // Off until an endpoint is configured.
//! assert!(Telemetry::start(&TelemetryConfig::default())?.is_none());
//! # Ok(()) }
//! # #[cfg(not(feature = "otel"))]
//! # fn main() {}
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

/// The `tracing` target of tollgate's spans: the exporter's layer takes these and nothing else.
pub const TARGET: &str = "tollgate::telemetry";

/// Whether spans are being recorded: set once by [`Telemetry::start`].
static ON: AtomicBool = AtomicBool::new(false);

/// Whether tollgate opens spans (telemetry started in this process).
#[inline]
pub(crate) fn on() -> bool {
    cfg!(feature = "otel") && ON.load(Ordering::Relaxed)
}

/// An `info` span of target [`TARGET`] while telemetry runs, else `Span::none()` (nothing
/// formatted or allocated). Takes `tracing::info_span!`'s arguments after the target.
macro_rules! span {
    ($($args:tt)+) => {
        if $crate::telemetry::on() {
            ::tracing::info_span!(target: "tollgate::telemetry", $($args)+)
        } else {
            ::tracing::Span::none()
        }
    };
}
pub(crate) use span;

/// Puts `span`'s trace context into `headers` as `traceparent` (and `tracestate` when it has
/// one), so the next hop continues the trace; whatever the client sent under those names is
/// replaced. Does nothing for a disabled span (telemetry off), so the client's headers pass
/// through as before.
pub(crate) fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if span.is_none() {
        return;
    }
    #[cfg(feature = "otel")]
    otel::inject(span, headers);
    #[cfg(not(feature = "otel"))]
    let _ = headers;
}

/// A request's path without its query (which may carry a token or a code).
#[cfg(feature = "otel")]
pub(crate) fn path_only(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or_default()
}

#[cfg(feature = "server")]
/// Records the route that answered on the request's span (`http.route`, and the span's name
/// `METHOD route`, as the HTTP semantic conventions name server spans).
pub(crate) fn note_route(method: &http::Method, route: &str) {
    if !on() {
        return;
    }
    let span = tracing::Span::current();
    span.record("http.route", route);
    #[cfg(feature = "otel")]
    otel::rename(&span, format!("{method} {route}"));
    #[cfg(not(feature = "otel"))]
    let _ = method;
}

#[cfg(feature = "server")]
/// Records the user on the request's span as `user.id` when `[telemetry] user_attribute` asks
/// for it.
pub(crate) fn note_user(cfg: &crate::config::TelemetryConfig, user: Option<&str>) {
    if !on() || !cfg.user_attribute {
        return;
    }
    if let Some(user) = user {
        tracing::Span::current().record("user.id", user);
    }
}

/// Records an outbound HTTP call's status on its span, an error status for a 5xx or no answer.
pub(crate) fn note_status(span: &tracing::Span, status: Option<u16>) {
    if span.is_none() {
        return;
    }
    match status {
        Some(s) => {
            span.record("http.response.status_code", s);
            if s >= 500 {
                span.record("otel.status_code", "ERROR");
            }
        }
        None => {
            span.record("otel.status_code", "ERROR");
        }
    }
}

#[cfg(feature = "otel")]
pub(crate) use otel::inbound_span;
#[cfg(feature = "otel")]
pub use otel::{Telemetry, TelemetryError};

#[cfg(feature = "otel")]
mod otel {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use opentelemetry::KeyValue;
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::error::OTelSdkResult;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    use tracing_subscriber::Layer;
    use tracing_subscriber::registry::LookupSpan;

    use crate::config::TelemetryConfig;

    /// The running OpenTelemetry pipeline: a tracer provider exporting batches over
    /// OTLP/HTTP. Keep it for the process's life; [`Telemetry::shutdown`] at the end sends what
    /// is still queued.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tollgate::config::{Config, MapEnv};
    /// use tollgate::telemetry::Telemetry;
    /// use tracing_subscriber::layer::SubscriberExt as _;
    ///
    /// let toml = "[telemetry]\notlp_endpoint = \"http://127.0.0.1:9\"\n";
    /// let cfg = Config::from_toml_str(toml, &MapEnv::default())?;
    /// let telemetry = Telemetry::start(&cfg.telemetry)?.expect("an endpoint is configured");
    /// let subscriber = tracing_subscriber::registry().with(telemetry.layer());
    /// tracing::subscriber::with_default(subscriber, || {
    ///     let _span = tracing::info_span!(target: "tollgate::telemetry", "work").entered();
    /// });
    /// telemetry.shutdown()?; // no collector listens there: the batch is dropped
    /// # Ok(()) }
    /// ```
    pub struct Telemetry {
        provider: SdkTracerProvider,
    }

    /// The exporter could not be built, or a flush or shutdown failed.
    #[derive(Debug, thiserror::Error)]
    pub enum TelemetryError {
        /// The OTLP exporter could not be built from `[telemetry]`.
        #[error("telemetry: cannot build the OTLP exporter: {0}")]
        Exporter(String),
        /// Flushing or shutting the provider down failed (the collector did not take the spans).
        #[error("telemetry: {0}")]
        Provider(String),
    }

    impl Telemetry {
        /// Builds the exporter and provider `cfg` describes; `None` when no endpoint is set.
        /// From then on tollgate opens its spans. Must run inside a Tokio runtime or outside
        /// any: the exporter's client lives on a thread of its own.
        pub fn start(cfg: &TelemetryConfig) -> Result<Option<Self>, TelemetryError> {
            let Some(url) = cfg.traces_url() else {
                return Ok(None);
            };
            let exporter = warn_once_exporter(url.as_str())?;
            let mut attributes: Vec<KeyValue> = cfg
                .resource_attributes
                .iter()
                .filter(|(k, _)| k.as_str() != "service.name")
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone()))
                .collect();
            attributes.push(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
            let resource = Resource::builder_empty()
                .with_service_name(cfg.service_name.clone())
                .with_attributes(attributes)
                .build();
            let sampler =
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio)));
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(sampler)
                .with_resource(resource)
                .build();
            super::ON.store(true, Ordering::Relaxed);
            Ok(Some(Self { provider }))
        }

        /// The `tracing` layer exporting tollgate's spans (target [`super::TARGET`]) through
        /// this provider; other spans and all events are left to the other layers.
        pub fn layer<S>(&self) -> Box<dyn Layer<S> + Send + Sync + 'static>
        where
            S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
        {
            let tracer = self.provider.tracer("tollgate");
            // Source locations, threads, targets and busy/idle times would be noise on every
            // span (and work on every enter and exit): the attributes are the ones set here.
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_level(false)
                .with_tracked_inactivity(false)
                .with_filter(tracing_subscriber::filter::filter_fn(|m| {
                    m.is_span() && m.target() == super::TARGET
                }))
                .boxed()
        }

        /// Sends the spans ended so far and waits for the collector's answer. Blocks: from
        /// async code, call it in `tokio::task::spawn_blocking`.
        pub fn flush(&self) -> Result<(), TelemetryError> {
            self.provider
                .force_flush()
                .map_err(|e| TelemetryError::Provider(e.to_string()))
        }

        /// Sends what is queued and stops the exporter (graceful stop). Blocks like
        /// [`Telemetry::flush`].
        pub fn shutdown(&self) -> Result<(), TelemetryError> {
            self.provider
                .shutdown()
                .map_err(|e| TelemetryError::Provider(e.to_string()))
        }
    }

    /// The OTLP/HTTP protobuf exporter posting to `url`, warning once while it cannot.
    pub(super) fn warn_once_exporter(
        url: &str,
    ) -> Result<WarnOnce<opentelemetry_otlp::SpanExporter>, TelemetryError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let collector = url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(WarnOnce::new(exporter, &collector))
    }

    /// How long one export may take before its batch is dropped.
    const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

    /// The inbound request's span (a server span), its parent the trace context the client
    /// sent, if any: `path` is the path alone, never the query.
    pub(crate) fn inbound_span(
        method: &http::Method,
        path: &str,
        headers: &http::HeaderMap,
    ) -> tracing::Span {
        let span = crate::telemetry::span!(
            "request",
            otel.name = method.as_str(),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = method.as_str(),
            url.path = super::path_only(path),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            user.id = tracing::field::Empty,
        );
        if !span.is_none() {
            let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
            // Set before the span starts; a span nobody exports has no OpenTelemetry data.
            let _ = span.set_parent(parent);
        }
        span
    }

    /// Renames a started span (`otel.name` recorded late would be ignored once it started).
    #[cfg(feature = "server")]
    pub(super) fn rename(span: &tracing::Span, name: String) {
        use opentelemetry::trace::TraceContextExt as _;
        span.context().span().update_name(name);
    }

    pub(super) fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
        headers.remove("traceparent");
        headers.remove("tracestate");
        TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
    }

    struct HeaderExtractor<'a>(&'a http::HeaderMap);

    impl Extractor for HeaderExtractor<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|v| v.to_str().ok())
        }

        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(http::HeaderName::as_str).collect()
        }
    }

    struct HeaderInjector<'a>(&'a mut http::HeaderMap);

    impl Injector for HeaderInjector<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(key.as_bytes()),
                http::HeaderValue::from_str(&value),
            ) {
                self.0.insert(name, value);
            }
        }
    }

    /// The OTLP exporter, saying once that the collector cannot be reached (and once when it
    /// can again) instead of nothing, or a line per batch: spans are dropped meanwhile, requests
    /// are not affected.
    #[derive(Debug)]
    pub(super) struct WarnOnce<E> {
        inner: E,
        collector: String,
        failing: AtomicBool,
    }

    impl<E> WarnOnce<E> {
        fn new(inner: E, collector: &str) -> Self {
            Self {
                inner,
                collector: collector.to_owned(),
                failing: AtomicBool::new(false),
            }
        }
    }

    impl<E: SpanExporter> SpanExporter for WarnOnce<E> {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let result = self.inner.export(batch).await;
            match &result {
                Err(e) if !self.failing.swap(true, Ordering::Relaxed) => tracing::warn!(
                    collector = %self.collector,
                    error = %e,
                    "telemetry: spans not exported (dropped until the collector answers again)"
                ),
                Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                    tracing::info!(collector = %self.collector, "telemetry: spans exported again");
                }
                _ => {}
            }
            result
        }

        fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
            self.inner.shutdown_with_timeout(timeout)
        }

        fn force_flush(&self) -> OTelSdkResult {
            self.inner.force_flush()
        }

        fn set_resource(&mut self, resource: &Resource) {
            self.inner.set_resource(resource);
        }
    }
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry_sdk::trace::SpanExporter as _;

    use super::otel::warn_once_exporter;

    /// A writer the test reads back: the log lines written while it was the default.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` on this thread as the SDK's batch thread does (no Tokio runtime: the blocking
    /// client refuses to run inside one).
    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_missing_collector_is_one_warning_not_one_per_batch() {
        // A port nobody listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let exporter = warn_once_exporter(&format!("http://127.0.0.1:{port}/v1/traces")).unwrap();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                let result = block_on(exporter.export(Vec::new()));
                assert!(result.is_err());
            }
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("spans not exported").count(), 1, "{text}");
        assert!(
            text.contains("WARN") && text.contains("127.0.0.1"),
            "{text}"
        );
    }
}
