//! The admin listener: `/healthz` (the process is up), `/readyz` (signing keys loaded for every
//! provider, not shutting down) and `/metrics` (Prometheus text format).
//!
//! `/readyz` does not look at the token store: the proxy and exchange paths work without it, so a
//! store outage (Redis down) must not take the pod out of service. It shows as `503` on the
//! delegated-token API alone.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use http::{StatusCode, header};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    if !state.accepting.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    let mut waiting: Vec<&str> = state
        .providers
        .values()
        .filter(|(p, _)| !p.is_ready())
        .map(|(p, _)| p.name())
        .collect();
    waiting.sort_unstable();
    if !waiting.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("signing keys not loaded: {}\n", waiting.join(", ")),
        );
    }
    (StatusCode::OK, "ready\n".into())
}

async fn metrics() -> impl axum::response::IntoResponse {
    let body = PROMETHEUS.get().map(|h| {
        h.run_upkeep();
        h.render()
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body.unwrap_or_default(),
    )
}

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once; later servers in the same process (tests)
/// share it. When the embedding application installed its own recorder, ours stays unused.
pub(crate) fn install_metrics() {
    PROMETHEUS.get_or_init(|| {
        const LATENCY: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::debug!("a metrics recorder is already installed; /metrics shows tollgate's own only if it is this one");
        } else {
            spawn_upkeep(handle.clone());
        }
        handle
    });
}

/// `tollgate_config_generation`: which configuration is in force (1 at start, one more per
/// reload that took).
pub(crate) fn config_generation(number: u64) {
    metrics::gauge!("tollgate_config_generation").set(number as f64);
}

/// How often histogram samples are folded into their buckets without a scrape.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A recorder from `build_recorder` keeps every histogram sample until upkeep drains it (the
/// crate's own `install` would spawn this task): without it, a sidecar nobody scrapes grows by
/// each proxied request's latency sample, forever (`scripts/soak` measured ~10 MB a minute).
/// A thread, not a task: the recorder is process-wide and outlives any one runtime.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("tollgate-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms are drained only by scrapes of /metrics");
    }
}
