//! Validation cost: first sight (full RS256 verification and claim checks) and cached (a hash and
//! a lookup), against a plain `jsonwebtoken::decode` of the same token, and one bare RS256
//! signature verification (`rs256_verify`: aws-lc-rs alone, no parsing), the unit of issue
//! #18's first-sight target that `PIN=1 scripts/loadtest.sh` runs on the proxy's CPU, and the
//! floor of first sight: what first sight costs over it is tollgate's own work.
//!
//! `cargo bench --bench validate` prints criterion's figures and, at the end, the ratios.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{self, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use tollgate::config::ProviderConfig;
use tollgate::{Provider, Validator};

const CLIENT_ID: &str = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb";

struct Fixture {
    rt: tokio::runtime::Runtime,
    validator: Validator,
    token: String,
    decoding_key: jsonwebtoken::DecodingKey,
    issuer: String,
    /// The RSAPublicKey DER, the signed input and the signature, for the bare verification.
    public_der: Vec<u8>,
    signed: Vec<u8>,
    signature: Vec<u8>,
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pair = KeyPair::generate(KeySize::Rsa2048).unwrap();
    let public = pair.public_key();
    let (n, e) = (
        B64.encode(public.modulus().big_endian_without_leading_zero()),
        B64.encode(public.exponent().big_endian_without_leading_zero()),
    );
    let jwks = json!({"keys": [{"kty": "RSA", "use": "sig", "kid": "bench", "n": n, "e": e}]});
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/keys",
        axum::routing::get(move || async move { axum::Json(jwks.clone()) }),
    );
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    let issuer = format!("http://{addr}/tenant/v2.0");
    let cfg = ProviderConfig {
        client_id: CLIENT_ID.into(),
        issuer: Some(issuer.clone()),
        jwks_uri: Some(format!("http://{addr}/keys").parse().unwrap()),
        ..Default::default()
    };
    let provider: Arc<Provider> = Provider::new(cfg).unwrap();
    rt.block_on(provider.refresh()).unwrap();
    let validator = Validator::new(provider, 100_000);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({"aud": CLIENT_ID, "iss": issuer, "iat": now, "nbf": now, "exp": now + 3600, "azp": "client",
        "oid": "99999999-8888-7777-6666-555555555555", "sub": "s", "tid": "tenant", "scp": "access_as_user", "ver": "2.0", "name": "Alice"});
    let input = format!(
        "{}.{}",
        B64.encode(json!({"typ": "JWT", "alg": "RS256", "kid": "bench"}).to_string()),
        B64.encode(claims.to_string())
    );
    let mut sig = vec![0; pair.public_modulus_len()];
    pair.sign(
        &signature::RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    let token = format!("{input}.{}", B64.encode(&sig));
    let public_der = public.as_ref().to_vec();
    let decoding_key = jsonwebtoken::DecodingKey::from_rsa_components(&n, &e).unwrap();
    Fixture {
        rt,
        validator,
        token,
        decoding_key,
        issuer,
        public_der,
        signed: input.into_bytes(),
        signature: sig,
    }
}

fn plain_decode(f: &Fixture) -> Value {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&[CLIENT_ID]);
    v.set_issuer(&[&f.issuer]);
    jsonwebtoken::decode::<Value>(&f.token, &f.decoding_key, &v)
        .unwrap()
        .claims
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    let mut g = c.benchmark_group("validate");
    g.bench_function("rs256_verify", |b| {
        let key = signature::UnparsedPublicKey::new(
            &signature::RSA_PKCS1_2048_8192_SHA256,
            &f.public_der,
        );
        b.iter(|| key.verify(&f.signed, &f.signature).unwrap())
    });
    g.bench_function("jsonwebtoken_decode", |b| b.iter(|| plain_decode(&f)));
    g.bench_function("tollgate_first_sight", |b| {
        b.iter(|| {
            f.rt.block_on(f.validator.validate_uncached(&f.token))
                .unwrap()
        })
    });
    f.rt.block_on(f.validator.validate(&f.token)).unwrap();
    g.bench_function("tollgate_cached", |b| {
        b.iter(|| f.rt.block_on(f.validator.validate(&f.token)).unwrap())
    });
    g.finish();

    // The ratios, measured in this run with the same token (criterion's own figures are above):
    // the kinds take turns for ROUNDS rounds and each keeps its best round, so that on a
    // shared machine every ratio compares figures taken under the same conditions.
    let time = |n: u32, work: &dyn Fn()| {
        let start = Instant::now();
        for _ in 0..n {
            work();
        }
        start.elapsed() / n
    };
    let key =
        signature::UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &f.public_der);
    // The floor of first sight: the verification with the key parsed once, as tollgate does.
    let parsed =
        signature::ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, &f.public_der)
            .unwrap();
    let n = 500;
    let kinds: [(u32, &dyn Fn()); 5] = [
        (n, &|| {
            plain_decode(&f);
        }),
        (n, &|| {
            f.rt.block_on(f.validator.validate_uncached(&f.token))
                .unwrap();
        }),
        (n * 10, &|| {
            f.rt.block_on(f.validator.validate(&f.token)).unwrap();
        }),
        (n, &|| key.verify(&f.signed, &f.signature).unwrap()),
        (n, &|| parsed.verify_sig(&f.signed, &f.signature).unwrap()),
    ];
    let mut best = [Duration::MAX; 5];
    for _ in 0..ROUNDS {
        for (best, (n, work)) in best.iter_mut().zip(&kinds) {
            *best = (*best).min(time(*n, *work));
        }
    }
    let [plain, first, cached, verify, verify_parsed] = best;
    println!(
        "\nratios (best of {ROUNDS} rounds): first-sight / jsonwebtoken = {:.2} ({:?} vs {:?}); \
         first-sight / rs256_verify = {:.2} ({:?}); first sight over a verification with the key \
         parsed once ({:?}) = {:?}; cached = {:?} ({:.1}x faster than first sight)\n",
        first.as_secs_f64() / plain.as_secs_f64(),
        first,
        plain,
        first.as_secs_f64() / verify.as_secs_f64(),
        verify,
        verify_parsed,
        first.saturating_sub(verify_parsed),
        cached,
        first.as_secs_f64() / cached.as_secs_f64().max(1e-12)
    );
}

/// Rounds of the ratio measurement.
const ROUNDS: usize = 8;

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
