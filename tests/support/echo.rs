//! An upstream app that answers with the request it received and counts hits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// An upstream that answers with what it received and counts hits.
#[derive(Clone)]
pub struct Echo {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
}

impl Echo {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = Echo {
            addr,
            hits: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route(
                "/public/slow",
                get(|| async {
                    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
                    "slow done"
                }),
            )
            .fallback(echo_handler)
            .with_state(echo.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        echo
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn echo_handler(State(echo): State<Echo>, req: Request) -> Response {
    echo.hits.fetch_add(1, Ordering::SeqCst);
    // An API protected by Continuous Access Evaluation refusing a revoked token.
    if req.uri().path().ends_with("/cae-challenge") {
        let challenge = [(axum::http::header::WWW_AUTHENTICATE, super::CAE_CHALLENGE)];
        return (StatusCode::UNAUTHORIZED, challenge).into_response();
    }
    if req.uri().path().ends_with("/plain-401") {
        let challenge = [(axum::http::header::WWW_AUTHENTICATE, "Bearer")];
        return (StatusCode::UNAUTHORIZED, challenge).into_response();
    }
    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        headers.insert(
            k.as_str().to_owned(),
            Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
    }
    Json(
        json!({"method": req.method().as_str(), "path": req.uri().to_string(), "headers": headers}),
    )
    .into_response()
}
