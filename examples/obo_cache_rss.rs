//! Measures the resident memory of the exchanged-token cache: `N` (default 100,000) distinct
//! user tokens exchanged On-Behalf-Of through the public `Exchanger`, against a local token
//! endpoint that answers Entra-sized access tokens (~1.6 KB). Prints VmRSS before and after.
//!
//! `cargo run --release --example obo_cache_rss -- 100000`
//!
//! User tokens are ES256 (fast to mint here; the cache does not care how they were signed) and
//! are dropped right after their exchange, so what stays is the cache (and the bounded
//! validation cache, set small here so it does not hide the figure).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::json;
use tollgate::config::{ProviderConfig, Secret};
use tollgate::{Exchanger, Provider, Validator};

fn rss_kb() -> u64 {
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
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(100_000);
    let key = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| "keygen")?;
    let point = key.public_key().as_ref().to_vec(); // 0x04 || x || y
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "use": "sig",
        "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65])}]});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let counter = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = counter.clone();
    let app = axum::Router::new()
        .route(
            "/keys",
            axum::routing::get(move || async move { axum::Json(jwks.clone()) }),
        )
        .route(
            "/token",
            axum::routing::post(move || {
                let i = c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Entra access tokens are 1.2-2 KB; use 1.6 KB, distinct per answer.
                let token = format!(
                    "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{i:020}{}",
                    "A".repeat(1580)
                );
                async move {
                    axum::Json(
                        json!({"token_type": "Bearer", "expires_in": 3600, "access_token": token}),
                    )
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let issuer = format!("http://{addr}/t/v2.0");
    let provider = Provider::new(ProviderConfig {
        client_id: "app".into(),
        issuer: Some(issuer.clone()),
        jwks_uri: Some(format!("http://{addr}/keys").parse()?),
        token_endpoint: Some(format!("http://{addr}/token").parse()?),
        client_secret: Some(Secret::new("s")),
        algorithms: vec![jsonwebtoken::Algorithm::ES256],
        ..Default::default()
    })?;
    provider.refresh().await?;
    let exchanger = Exchanger::new(
        Validator::new(provider, 1_000),
        n as u64 + 1,
        Duration::from_secs(120),
    )?;
    let header = B64.encode(json!({"alg": "ES256", "typ": "JWT", "kid": "k"}).to_string());
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let rng = SystemRandom::new();
    let mint = |i: usize| -> Result<String, Box<dyn std::error::Error>> {
        let claims = json!({"aud": "app", "iss": issuer, "exp": now + 3600, "iat": now, "nbf": now, "azp": "front",
            "oid": format!("{i:08}-0000-0000-0000-000000000000"), "sub": i.to_string(), "tid": "t", "scp": "access_as_user", "ver": "2.0"});
        let input = format!("{header}.{}", B64.encode(claims.to_string()));
        let sig = key.sign(&rng, input.as_bytes()).map_err(|_| "sign")?;
        Ok(format!("{input}.{}", B64.encode(sig.as_ref())))
    };
    // Warm the allocator and every code path once, then take the baseline.
    let t = mint(usize::MAX)?;
    exchanger
        .on_behalf_of(&t, "api://downstream/.default", false)
        .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_kb();
    for i in 0..n {
        let t = mint(i)?;
        exchanger
            .on_behalf_of(&t, "api://downstream/.default", false)
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kb();
    println!(
        "cached exchanges: {} (IdP calls {}), RSS before {} kB, after {} kB, growth {:.1} MB = {:.0} bytes per entry",
        exchanger.cached_entries(),
        counter.load(std::sync::atomic::Ordering::Relaxed),
        before,
        after,
        (after - before) as f64 / 1024.0,
        (after - before) as f64 * 1024.0 / n as f64
    );
    Ok(())
}
