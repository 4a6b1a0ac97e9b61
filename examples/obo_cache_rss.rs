//! Resident memory under a flood of distinct users: `N` (default 200,000) valid user tokens,
//! each sent once through the proxy (an `obo` route: the token is validated, exchanged
//! On-Behalf-Of and the exchanged token forwarded) and once to the token API's
//! `/api/v1/token/exchange` (a cached validation and a cached exchange), against a tollgate
//! server started in this process on loopback, with a local IdP that answers Entra-sized
//! access tokens (~1.6 KB). Prints VmRSS as the flood goes, the growth per user, and RSS
//! against idle + `[cache] max_memory` + 16 MiB.
//!
//! `cargo run --release --example obo_cache_rss -- 200000 8MiB` (users, then `max_memory`;
//! a third argument sets both entry capacities, e.g. `1000000` to see the unbounded footprint
//! per user with a large `max_memory`).
//!
//! User tokens are ES256 (fast to mint here; the caches do not care how they were signed).
//! The load is bounded: 16 users in flight. Everything runs in this process (the IdP, the
//! upstream and the client too), so the RSS printed is theirs as well: the idle figure is
//! taken after a warm-up through every path, and the client and IdP hold nothing per user.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use futures_util::StreamExt;
use serde_json::json;
use tollgate::config::{ByteSize, Config, MapEnv};
use tollgate::server::Server;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Users in flight at once.
const CONCURRENCY: usize = 16;
/// The exchange target of the route and the API calls.
const TARGET: &str = "api://downstream/.default";

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let max_memory: ByteSize = args
        .next()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(ByteSize::new(64 << 20));
    let capacity: Option<u64> = args.next().map(|s| s.parse()).transpose()?;

    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| "keygen")?;
    let idp = start_idp(&key).await?;
    let upstream = start_upstream().await?;
    let issuer = format!("http://{idp}/t/v2.0");
    // Inline secrets are refused in a config file: the IdP's (any) secret goes in a file.
    let secret_file =
        std::env::temp_dir().join(format!("obo_cache_rss-{}.secret", std::process::id()));
    std::fs::write(&secret_file, "s")?;
    let secret_path = serde_json::Value::String(secret_file.display().to_string());
    let capacities = capacity
        .map(|c| format!("validation_capacity = {c}\nobo_capacity = {c}\n"))
        .unwrap_or_default();
    let toml = format!(
        r#"
[listen]
public = "127.0.0.1:0"
api = "127.0.0.1:0"
admin = "127.0.0.1:0"

[upstream]
url = "http://{upstream}"

[cache]
max_memory = "{max_memory}"
{capacities}
[[providers]]
name = "entra_id"
issuer = "{issuer}"
jwks_uri = "http://{idp}/keys"
token_endpoint = "http://{idp}/token"
client_id = "app"
client_secret_file = {secret_path}
algorithms = ["ES256"]

[[routes]]
path = "/"
auth = "required"
obo = "{TARGET}"
"#
    );
    let config = Config::from_toml_str(&toml, &MapEnv::default())?;
    let server = Server::bind(config).await?;
    let (public, api) = (server.public_addr(), server.api_addr().ok_or("no api")?);
    let admin = server.admin_addr().ok_or("no admin")?;
    let running = server.spawn();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()?;
    wait_ready(&http, &format!("http://{admin}/readyz")).await?;

    let header = B64.encode(json!({"alg": "ES256", "typ": "JWT", "kid": "k"}).to_string());
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let rng = SystemRandom::new();
    // An Entra v2 access token's claims (~750 bytes of payload), distinct per user.
    let mint = |i: usize| -> Result<String, BoxError> {
        let claims = json!({"aud": "app", "iss": issuer, "exp": now + 3600, "iat": now, "nbf": now,
            "aio": "AWQAm/8TAAAAyKi3TAadjEMBv8SqhKfS0zR/oT3Ldcl2ZR0o7HqbdSrkc8UGKlSw1yzeLM5a4HLB1jEXAMPLE",
            "azp": "cccccccc-3333-4444-5555-dddddddddddd", "azpacr": "0", "name": format!("User {i}"),
            "oid": format!("{i:08}-8888-7777-6666-555555555555"),
            "preferred_username": format!("user{i}@contoso.example"),
            "rh": "0.AQEAqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqAAA.", "roles": ["Reports.Read"],
            "scp": "access_as_user User.Read", "sub": format!("AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy{i:08}"),
            "tid": "11111111-2222-3333-4444-555555555555", "uti": "AbCdEfGhIjKlMnOpQrStUv", "ver": "2.0"});
        let input = format!("{header}.{}", B64.encode(claims.to_string()));
        let sig = key.sign(&rng, input.as_bytes()).map_err(|_| "sign")?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    };
    let user = |i: usize| {
        let (http, token) = (http.clone(), mint(i));
        async move {
            let token = token?;
            let proxied = http
                .get(format!("http://{public}/"))
                .bearer_auth(&token)
                .send()
                .await?;
            if !proxied.status().is_success() {
                return Err(format!("proxy answered {}", proxied.status()).into());
            }
            let exchanged = http
                .post(format!("http://{api}/api/v1/token/exchange"))
                .json(&json!({"identity_provider": "entra_id", "target": TARGET, "user_token": token}))
                .send()
                .await?;
            if !exchanged.status().is_success() {
                return Err(format!("the API answered {}", exchanged.status()).into());
            }
            Ok::<(), BoxError>(())
        }
    };

    // Warm every path with users of their own (few: the caches must stay near empty),
    // then take the idle figure.
    let warm = 100.min(n);
    drive(&user, usize::MAX - warm..usize::MAX).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = rss_kib();
    let limit = idle + max_memory.bytes() / 1024 + 16 * 1024;
    println!(
        "{n} users, max_memory {max_memory}{}: idle RSS {idle} KiB, limit idle + max_memory + 16 MiB = {limit} KiB",
        capacity
            .map(|c| format!(", capacities {c}"))
            .unwrap_or_default()
    );
    let started = Instant::now();
    let mut peak = idle;
    let step = (n / 10).max(1);
    let mut half = idle;
    for start in (0..n).step_by(step) {
        drive(&user, start..(start + step).min(n)).await?;
        let rss = rss_kib();
        peak = peak.max(rss);
        if start < n / 2 {
            half = rss;
        }
        println!(
            "  {:>7} users: RSS {rss} KiB (+{:.1} MiB)",
            (start + step).min(n),
            rss.saturating_sub(idle) as f64 / 1024.0
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let end = rss_kib();
    peak = peak.max(end);
    let metrics = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let sample = |prefix: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |sum, v| sum + v)
    };
    println!(
        "done in {:.0} s; RSS end {end} KiB, peak {peak} KiB: growth {:.1} MiB = {:.0} bytes per user \
         (second half {:.0} bytes per user); peak {} the limit ({limit} KiB)",
        started.elapsed().as_secs_f64(),
        end.saturating_sub(idle) as f64 / 1024.0,
        end.saturating_sub(idle) as f64 * 1024.0 / n as f64,
        end.saturating_sub(half) as f64 * 1024.0 / (n - n / 2).max(1) as f64,
        if peak <= limit { "within" } else { "OVER" },
    );
    println!(
        "caches: validation {:.1} MiB, exchange {:.1} MiB; evictions for size: validation {}, exchange {}",
        sample("tollgate_cache_bytes{cache=\"validation\"}") / 1048576.0,
        sample("tollgate_cache_bytes{cache=\"exchange\"}") / 1048576.0,
        sample("tollgate_cache_evictions_total{cache=\"validation\",cause=\"size\"}"),
        sample("tollgate_cache_evictions_total{cache=\"exchange\",cause=\"size\"}"),
    );
    running.shutdown().await?;
    let _ = std::fs::remove_file(&secret_file);
    Ok(())
}

/// Runs `user` for each index of `users`, `CONCURRENCY` at a time; the first failure stops it.
async fn drive<F, Fut>(user: &F, users: std::ops::Range<usize>) -> Result<(), BoxError>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let mut runs = futures_util::stream::iter(users)
        .map(user)
        .buffer_unordered(CONCURRENCY);
    while let Some(result) = runs.next().await {
        result?;
    }
    Ok(())
}

async fn wait_ready(http: &reqwest::Client, url: &str) -> Result<(), BoxError> {
    for _ in 0..100 {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("tollgate did not become ready".into())
}

/// The IdP: the ES256 key's JWKS and a token endpoint answering a distinct ~1.6 KB access
/// token per call.
async fn start_idp(key: &EcdsaKeyPair) -> Result<std::net::SocketAddr, BoxError> {
    let point = key.public_key().as_ref().to_vec(); // 0x04 || x || y
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "use": "sig",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])}]});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counter = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new()
        .route(
            "/keys",
            axum::routing::get(move || async move { axum::Json(jwks.clone()) }),
        )
        .route(
            "/token",
            axum::routing::post(move || {
                let i = counter.fetch_add(1, Ordering::Relaxed);
                let token = format!(
                    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{i:020}{}",
                    "A".repeat(1543)
                );
                async move {
                    axum::Json(
                        json!({"token_type": "Bearer", "expires_in": 3600, "access_token": token}),
                    )
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

/// The upstream: `200 ok` to anything.
async fn start_upstream() -> Result<std::net::SocketAddr, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
