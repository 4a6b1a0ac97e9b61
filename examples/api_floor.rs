//! The I/O floor for the token API in `scripts/loadtest.sh`: an axum server on one current-thread
//! runtime (like tollgate with `TOKIO_WORKER_THREADS=1`) with a `/healthz` that answers `ok`, and
//! a `POST /post` that reads the whole request body and answers a Texas-shaped token response of
//! a given size, doing nothing else. `/post` against `/healthz` is the throughput ratio that the
//! bytes alone allow (a ~1.4 KB form in, a ~1.7 KB JSON answer out), before any validation,
//! cache lookup or form parsing.
//!
//! `cargo run --release --example api_floor -- 127.0.0.1:18086 1700`

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18086".into());
    let size: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1700);
    // The answer's shape, padded with a token-like string to `size` bytes.
    let shell = r#"{"access_token":"","token_type":"Bearer","expires_in":3599}"#;
    let token = "A".repeat(size.saturating_sub(shell.len()));
    let answer = Bytes::from(format!(
        r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":3599}}"#
    ));
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/post",
            post(move |body: Bytes| {
                let answer = answer.clone();
                async move {
                    // Touch the body so reading it cannot be optimised away.
                    let _ = std::hint::black_box(body.len());
                    ([(http::header::CONTENT_TYPE, "application/json")], answer)
                }
            }),
        );
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            println!("api floor on {listen}");
            axum::serve(listener, app).await
        })?;
    Ok(())
}
