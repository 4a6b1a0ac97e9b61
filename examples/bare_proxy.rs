//! The floor for `scripts/loadtest.sh`: a bare hyper pass-through proxy with no auth, no header
//! rewriting beyond the URI, one tokio worker like the sidecar under test.
//!
//! `cargo run --release --example bare_proxy -- 127.0.0.1:18081 http://127.0.0.1:18080`

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = BoxBody<Bytes, hyper::Error>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18081".into())
        .parse()?;
    let upstream: Uri = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:18080".into())
        .parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("bare proxy on {listen} -> {upstream}");
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let pq = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str())
                            .unwrap_or("/");
                        let uri = format!(
                            "http://{}{pq}",
                            upstream.authority().map(|a| a.as_str()).unwrap_or("")
                        );
                        *req.uri_mut() = uri.parse().unwrap_or_default();
                        let resp: Response<Body> = match client.request(req).await {
                            Ok(r) => r.map(|b| b.boxed()),
                            Err(_) => {
                                let mut r = Response::new(
                                    http_body_util::Empty::new()
                                        .map_err(|never| match never {})
                                        .boxed(),
                                );
                                *r.status_mut() = StatusCode::BAD_GATEWAY;
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}
