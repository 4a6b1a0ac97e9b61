//! The traffic driver of `scripts/soak`: a bounded soak test of a running tollgate sidecar,
//! loopback only.
//!
//! `scripts/soak` writes tollgate's configuration, starts `tollgate serve` and then this driver
//! with the sidecar's PID. The driver reads the same configuration file for every address and the
//! cache sizes, and runs in its own process:
//!
//! - the dev IdP (in process, so it can be stopped and restarted on the same port with the same
//!   key file), and the echo app tollgate proxies to;
//! - 16 workers (`--concurrency`) sending mixed traffic until the time is up: a valid bearer
//!   token on an `auth = "required"` route, invalid tokens (bad signature, not a JWT, `alg:
//!   none`, none at all), an expired token, an OBO route, and the local token API's
//!   client-credentials token, exchange, introspection and delegated token (for users who
//!   signed in through tollgate's login proxy, over plain HTTP, without a browser);
//! - a timeline over the run: at 10% the IdP's signing key rotates (the old one stays
//!   published), at 30% the IdP goes away for a fifth of the run (at most one minute) and comes
//!   back on the same port with the key file's key (keys rotated in between are gone, as after a
//!   real rotation), and at 75% the key rotates again dropping every previous key.
//!
//! Every answer is checked against what its class must get. While the IdP is down, 502/503/504
//! from the classes that may need it (OBO route, exchange, client credentials, delegated) count as
//! "outage", not as failures; everything else, cached paths included, must keep its status. A
//! token signed by a key the IdP has retired may get 401 (or any 4xx, or `active: false`) from the
//! moment the key is retired: whether tollgate has noticed yet is a race it may win either way.
//!
//! Prints one line per minute (requests and failures by class, p99 latency, tollgate's RSS and
//! open file descriptors), the start and end RSS and descriptor counts (each taken with no client
//! connection open, after a short warm-up so the sidecar's own connection pools are filled), and
//! `N passed, M failed`. Failed: any wrong answer, a 5xx outside the outage, RSS growth beyond
//! what the configured caches may hold plus a fixed slack, or more than 16 new descriptors. Exits
//! non-zero when M > 0.
//!
//! `cargo run --release --example soak -- --config tollgate.toml --tollgate-pid PID --minutes 5 --state-dir DIR`

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use clap::Parser;
use http::StatusCode;
use serde_json::{Value, json};
use tollgate_devidp::{
    ALICE, ALICE_OID, ALICE_UPN, BOB, BOB_OID, BOB_UPN, DEFAULT_TENANT_ID, DEV_PASSWORD,
    DOWNSTREAM_APP_ID_URI, DOWNSTREAM_CLIENT_ID, DevIdp, DevIdpConfig, DevIdpHandle,
    FRONTEND_CLIENT_ID, GRAPH_APP_ID_URI, TOLLGATE_APP_ID_URI, TOLLGATE_CLIENT_ID,
    TOLLGATE_CLIENT_SECRET,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a cache entry may cost in RSS: the measured cost of a cached exchange is about 2.2 KB
/// (README, `examples/obo_cache_rss.rs`); a validated token's claims are of the same order.
const ENTRY_BYTES: u64 = 4096;
/// Allocator arenas, connection buffers, runtime: what RSS may grow by besides the caches.
const RUNTIME_SLACK_BYTES: u64 = 16 << 20;
/// New open descriptors allowed between the start and the end of the run.
const FD_SLACK: i64 = 16;
/// Most user tokens in the pool the workers draw from (the oldest is replaced).
const POOL_MAX: usize = 1500;
/// Tokens minted before the run starts.
const POOL_INITIAL: usize = 200;
/// At most this many distinct failure descriptions are printed.
const SAMPLES_MAX: usize = 25;

#[derive(Parser)]
#[command(about = "Soak test driver for scripts/soak")]
struct Args {
    /// tollgate's configuration file (the one the sidecar runs with).
    #[arg(long)]
    config: PathBuf,
    /// PID of the running `tollgate serve`.
    #[arg(long)]
    tollgate_pid: u32,
    /// Length of the run.
    #[arg(long, default_value_t = 5)]
    minutes: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Directory for the dev IdP's key file.
    #[arg(long)]
    state_dir: PathBuf,
}

/// What the driver takes from tollgate's configuration.
struct Setup {
    public: String,
    api: String,
    admin: String,
    idp: SocketAddr,
    echo: SocketAddr,
    callback: String,
    validation_capacity: u64,
    obo_capacity: u64,
}

fn read_setup(path: &Path) -> Result<Setup, BoxError> {
    let text = std::fs::read_to_string(path)?;
    let doc: toml::Table = text.parse()?;
    let get = |section: &str, key: &str| -> Result<&toml::Value, BoxError> {
        doc.get(section)
            .and_then(|s| s.get(key))
            .ok_or_else(|| format!("{}: no {section}.{key}", path.display()).into())
    };
    let text_of = |section: &str, key: &str| -> Result<String, BoxError> {
        get(section, key)?
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("{section}.{key} is not a string").into())
    };
    let int_of = |section: &str, key: &str| -> Result<u64, BoxError> {
        get(section, key)?
            .as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| format!("{section}.{key} is not a count").into())
    };
    let addr_of_url = |u: &str| -> Result<SocketAddr, BoxError> {
        let url = url::Url::parse(u)?;
        let host = url.host_str().ok_or("URL without host")?;
        let port = url.port_or_known_default().ok_or("URL without port")?;
        Ok(format!("{host}:{port}").parse()?)
    };
    let well_known = doc
        .get("providers")
        .and_then(|p| p.as_array())
        .and_then(|p| p.first())
        .and_then(|p| p.get("well_known_url"))
        .and_then(toml::Value::as_str)
        .ok_or("no providers[0].well_known_url")?;
    let callback = get("login", "redirect_uris")?
        .as_array()
        .and_then(|a| a.first())
        .and_then(toml::Value::as_str)
        .ok_or("no login.redirect_uris[0]")?
        .to_owned();
    let setup = Setup {
        public: format!("http://{}", text_of("listen", "public")?),
        api: format!("http://{}", text_of("listen", "api")?),
        admin: format!("http://{}", text_of("listen", "admin")?),
        idp: addr_of_url(well_known)?,
        echo: addr_of_url(&text_of("upstream", "url")?)?,
        callback,
        validation_capacity: int_of("cache", "validation_capacity")?,
        obo_capacity: int_of("cache", "obo_capacity")?,
    };
    for addr in [setup.idp, setup.echo] {
        if !addr.ip().is_loopback() {
            return Err(
                format!("{addr} is not a loopback address: the soak stays on 127.0.0.1").into(),
            );
        }
    }
    Ok(setup)
}

// ---------------------------------------------------------------------------------------------
// Traffic classes and their bookkeeping

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Valid,
    Invalid,
    Expired,
    Obo,
    Token,
    Exchange,
    Introspect,
    Delegated,
}

/// Each class with its name and its share of the traffic.
const CLASSES: [(Class, &str, u64); 8] = [
    (Class::Valid, "valid", 28),
    (Class::Invalid, "invalid", 10),
    (Class::Expired, "expired", 6),
    (Class::Obo, "obo", 14),
    (Class::Token, "token", 8),
    (Class::Exchange, "exchange", 12),
    (Class::Introspect, "introspect", 12),
    (Class::Delegated, "delegated", 10),
];

impl Class {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        CLASSES[self.index()].1
    }

    /// Classes whose answer may need the IdP (an uncached exchange or client credentials, a
    /// refresh): only these may answer 502/503/504 while it is down.
    fn may_need_idp(self) -> bool {
        matches!(
            self,
            Class::Obo | Class::Token | Class::Exchange | Class::Delegated
        )
    }
}

enum Outcome {
    Pass,
    Outage,
    /// Refused after the token's signing key was retired: allowed.
    Retired,
    Fail(String),
}

#[derive(Clone, Copy, Default)]
struct ClassStats {
    requests: u64,
    failed: u64,
    outage: u64,
    retired: u64,
}

#[derive(Default)]
struct Minute {
    classes: [ClassStats; 8],
    latencies_us: Vec<u32>,
}

#[derive(Default)]
struct Stats {
    minutes: Vec<Minute>,
    /// Distinct failures: (class, what went wrong), when first seen, how many times.
    samples: Vec<(String, Duration, u64)>,
    more_samples: u64,
    /// Failures of the driver's own steps (login, key rotation, IdP restart).
    control_failures: u64,
}

impl Stats {
    fn sample(&mut self, what: String, at: Duration) {
        if let Some(seen) = self.samples.iter_mut().find(|s| s.0 == what) {
            seen.2 += 1;
        } else if self.samples.len() < SAMPLES_MAX {
            self.samples.push((what, at, 1));
        } else {
            self.more_samples += 1;
        }
    }
}

/// A user token in the pool.
struct Tok {
    token: String,
    kid: String,
    oid: &'static str,
}

/// Tokens that must be refused, made once.
struct Fixed {
    expired: String,
    bad_signature: String,
    alg_none: String,
}

struct Soak {
    setup: Setup,
    /// The dev IdP's signing key (PKCS#8 PEM): it survives the restart.
    key_file: PathBuf,
    /// For the driver's own steps (minting, login, JWKS); not the workers' client.
    http: reqwest::Client,
    pool: Mutex<(Vec<Arc<Tok>>, usize)>,
    retired: RwLock<HashSet<String>>,
    /// When the IdP went away, and when it was back.
    outages: Mutex<Vec<(Instant, Option<Instant>)>>,
    idp_up: AtomicBool,
    fixed: OnceLock<Fixed>,
    /// The kid of the key file's key, the one the IdP comes back with.
    key_file_kid: OnceLock<String>,
    stats: Mutex<Stats>,
    t0: OnceLock<Instant>,
    done: AtomicBool,
    minted: AtomicU64,
}

fn client(concurrency: usize) -> Result<reqwest::Client, BoxError> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(concurrency)
        .build()?)
}

fn elapsed_label(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}", s / 60, s % 60)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn jwt_part(token: &str, index: usize) -> Option<Value> {
    let part = token.split('.').nth(index)?;
    serde_json::from_slice(&B64.decode(part).ok()?).ok()
}

fn tollgate_scope() -> String {
    format!("{TOLLGATE_APP_ID_URI}/access_as_user")
}

/// xorshift64: the workers' choices need no more than this.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

impl Soak {
    /// When the measured run started (set once the warm-up is over).
    fn t0(&self) -> Instant {
        self.t0.get().copied().unwrap_or_else(Instant::now)
    }

    fn say(&self, what: &str) {
        println!("[{}] {what}", elapsed_label(self.t0().elapsed()));
    }

    fn is_retired(&self, kid: &str) -> bool {
        self.retired
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(kid)
    }

    /// Whether a request that was in flight from `started` until now overlapped an outage.
    fn in_outage(&self, started: Instant) -> bool {
        let now = Instant::now();
        lock(&self.outages)
            .iter()
            .any(|(from, to)| now >= *from && to.is_none_or(|to| started <= to))
    }

    fn pick(&self, rng: &mut Rng) -> Option<Arc<Tok>> {
        let pool = lock(&self.pool);
        if pool.0.is_empty() {
            return None;
        }
        Some(Arc::clone(&pool.0[rng.below(pool.0.len() as u64) as usize]))
    }

    fn add_to_pool(&self, tok: Tok) {
        self.add_arc(Arc::new(tok));
    }

    fn add_arc(&self, tok: Arc<Tok>) {
        if self.is_retired(&tok.kid) {
            return;
        }
        let mut pool = lock(&self.pool);
        if pool.0.len() < POOL_MAX {
            pool.0.push(tok);
        } else {
            let at = pool.1 % POOL_MAX;
            pool.0[at] = tok;
            pool.1 = at + 1;
        }
    }

    fn record(&self, class: Class, done_at: Instant, latency: Duration, outcome: Outcome) {
        let t0 = self.t0();
        let mut stats = lock(&self.stats);
        let last = stats.minutes.len().saturating_sub(1);
        // Requests still in flight when the time is up count in the last minute.
        let minute = ((done_at.saturating_duration_since(t0).as_secs() / 60) as usize).min(last);
        let Some(m) = stats.minutes.get_mut(minute) else {
            return;
        };
        m.latencies_us
            .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        let c = &mut m.classes[class.index()];
        c.requests += 1;
        match outcome {
            Outcome::Pass => {}
            Outcome::Outage => c.outage += 1,
            Outcome::Retired => c.retired += 1,
            Outcome::Fail(why) => {
                c.failed += 1;
                let what = format!("{}: {why}", class.name());
                stats.sample(what, done_at.saturating_duration_since(t0));
            }
        }
    }

    fn control_failure(&self, what: String) {
        self.say(&format!("FAILED: {what}"));
        let at = self.t0().elapsed();
        let mut stats = lock(&self.stats);
        stats.control_failures += 1;
        stats.sample(format!("control: {what}"), at);
    }

    // -----------------------------------------------------------------------------------------
    // The dev IdP side

    fn idp_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.setup.idp)
    }

    async fn start_idp(&self) -> Result<DevIdpHandle, BoxError> {
        let cfg = DevIdpConfig {
            listen: self.setup.idp,
            key_file: Some(self.key_file.clone()),
            ..DevIdpConfig::default()
        };
        // The port was ours a moment ago; give the kernel a little time if it still holds it.
        let mut last = None;
        for _ in 0..50 {
            match DevIdp::start(cfg.clone()).await {
                Ok(handle) => return Ok(handle),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.map_or_else(|| "dev IdP did not start".into(), Into::into))
    }

    async fn published_kids(&self) -> Result<HashSet<String>, BoxError> {
        let jwks: Value = self
            .http
            .get(self.idp_url(&format!("/{DEFAULT_TENANT_ID}/discovery/v2.0/keys")))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(jwks["keys"]
            .as_array()
            .ok_or("JWKS without keys")?
            .iter()
            .filter_map(|k| k["kid"].as_str().map(str::to_owned))
            .collect())
    }

    async fn rotate(&self, drop_previous: bool) -> Result<String, BoxError> {
        let answer: Value = self
            .http
            .post(self.idp_url("/_dev/rotate-keys"))
            .json(&json!({ "drop_previous": drop_previous }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(answer["kid"].as_str().ok_or("no kid")?.to_owned())
    }

    /// A user token from the dev IdP (ROPC with the public frontend client).
    async fn mint(&self, n: u64) -> Result<Tok, BoxError> {
        let (user, oid) = if n.is_multiple_of(2) {
            (ALICE, ALICE_OID)
        } else {
            (BOB, BOB_OID)
        };
        let scope = tollgate_scope();
        let form = [
            ("grant_type", "password"),
            ("client_id", FRONTEND_CLIENT_ID),
            ("username", user),
            ("password", DEV_PASSWORD),
            ("scope", scope.as_str()),
        ];
        let body: Value = self
            .http
            .post(self.idp_url(&format!("/{DEFAULT_TENANT_ID}/oauth2/v2.0/token")))
            .form(&form)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let token = body["access_token"]
            .as_str()
            .ok_or("no access_token")?
            .to_owned();
        let kid = jwt_part(&token, 0)
            .and_then(|h| h["kid"].as_str().map(str::to_owned))
            .ok_or("token without kid")?;
        self.minted.fetch_add(1, Ordering::Relaxed);
        Ok(Tok { token, kid, oid })
    }

    async fn mint_batch(&self, n: usize) -> Result<Vec<Arc<Tok>>, BoxError> {
        let mut batch = Vec::with_capacity(n);
        for _ in 0..n {
            let i = self.minted.load(Ordering::Relaxed);
            batch.push(Arc::new(self.mint(i).await?));
        }
        Ok(batch)
    }

    /// Signs in through tollgate's login proxy as a browser would, hop by hop: tollgate's
    /// authorize, the dev IdP's login form, tollgate's token endpoint with the code (PKCE S256,
    /// state and nonce). tollgate stores the user's tokens for the delegated API.
    async fn login(&self, user: &str) -> Result<(), BoxError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
        let verifier = format!("soak-pkce-verifier-{user}-{nanos:040}");
        let challenge = B64.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        let scope = format!("openid profile {}", tollgate_scope());
        let callback = &self.setup.callback;
        let mut authorize = url::Url::parse(&format!("{}/oauth2/authorize", self.setup.public))?;
        authorize.query_pairs_mut().extend_pairs([
            ("client_id", TOLLGATE_CLIENT_ID),
            ("response_type", "code"),
            ("redirect_uri", callback.as_str()),
            ("scope", scope.as_str()),
            ("state", "soak-state"),
            ("nonce", "soak-nonce"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]);
        let location = |r: &reqwest::Response| -> Result<String, BoxError> {
            if r.status() != StatusCode::FOUND {
                return Err(format!("expected a 302, got {}", r.status()).into());
            }
            Ok(r.headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or("302 without Location")?
                .to_owned())
        };
        let to_idp = location(&self.http.get(authorize).send().await?)?;
        let mut form: Vec<(String, String)> = url::Url::parse(&to_idp)?
            .query_pairs()
            .into_owned()
            .collect();
        form.push(("login".into(), user.into()));
        form.push(("password".into(), DEV_PASSWORD.into()));
        let action = to_idp.split('?').next().unwrap_or(&to_idp).to_owned();
        let to_app = location(&self.http.post(action).form(&form).send().await?)?;
        if !to_app.starts_with(callback.as_str()) {
            return Err("the IdP did not redirect to the callback".into());
        }
        let code = url::Url::parse(&to_app)?
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .ok_or("the callback carries no code")?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", callback.as_str()),
            ("client_id", TOLLGATE_CLIENT_ID),
            ("client_secret", TOLLGATE_CLIENT_SECRET),
            ("code_verifier", verifier.as_str()),
        ];
        let r = self
            .http
            .post(format!("{}/oauth2/token", self.setup.public))
            .form(&form)
            .send()
            .await?;
        if r.status() != StatusCode::OK {
            return Err(format!("tollgate's token endpoint answered {}", r.status()).into());
        }
        Ok(())
    }

    async fn login_all(&self) {
        for user in [ALICE, BOB] {
            if let Err(e) = self.login(user).await {
                self.control_failure(format!("login of {user} through tollgate: {e}"));
            }
        }
    }

    /// Makes the refused tokens from a real one: every one is signed (or claims to be) by a key
    /// tollgate knows, so none makes it refetch the JWKS.
    fn make_fixed(&self, sample: &Tok) -> Result<Fixed, BoxError> {
        let mut claims = jwt_part(&sample.token, 1).ok_or("unreadable token")?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        // Expired two hours ago: far beyond any leeway.
        claims["iat"] = json!(now - 3 * 3600);
        claims["nbf"] = json!(now - 3 * 3600);
        claims["exp"] = json!(now - 2 * 3600);
        let pem = std::fs::read(&self.key_file)?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(sample.kid.clone());
        let expired = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_rsa_pem(&pem)?,
        )?;
        let (input, sig) = sample.token.rsplit_once('.').ok_or("no signature")?;
        let mut sig: Vec<char> = sig.chars().collect();
        let mid = sig.len() / 2;
        sig[mid] = if sig[mid] == 'A' { 'B' } else { 'A' };
        let bad_signature = format!("{input}.{}", sig.into_iter().collect::<String>());
        let payload = sample.token.split('.').nth(1).ok_or("no payload")?;
        let alg_none = format!(
            "{}.{payload}.",
            B64.encode(json!({"alg": "none", "typ": "JWT"}).to_string())
        );
        Ok(Fixed {
            expired,
            bad_signature,
            alg_none,
        })
    }

    // -----------------------------------------------------------------------------------------
    // One request of a class, judged

    async fn request(&self, http: &reqwest::Client, class: Class, rng: &mut Rng) -> Outcome {
        match self.attempt(http, class, rng, Instant::now()).await {
            Ok(outcome) => outcome,
            Err(e) => Outcome::Fail(format!("no answer: {e}")),
        }
    }

    async fn attempt(
        &self,
        http: &reqwest::Client,
        class: Class,
        rng: &mut Rng,
        started: Instant,
    ) -> Result<Outcome, BoxError> {
        let fixed = self.fixed.get().ok_or("not set up")?;
        let s = &self.setup;
        let tok = self.pick(rng).ok_or("empty token pool")?;
        let proxied = |path: &str| http.get(format!("{}{path}", s.public));
        // What introspection must say of the token it is given (None: either).
        let mut active = None;
        let request = match class {
            Class::Valid => proxied("/api/soak").bearer_auth(&tok.token),
            Class::Invalid => match rng.below(4) {
                0 => proxied("/api/soak").bearer_auth(&fixed.bad_signature),
                1 => proxied("/api/soak").bearer_auth("soak-not-a-jwt"),
                2 => proxied("/api/soak").bearer_auth(&fixed.alg_none),
                _ => proxied("/api/soak"),
            },
            Class::Expired => proxied("/api/soak").bearer_auth(&fixed.expired),
            Class::Obo => proxied("/obo/soak").bearer_auth(&tok.token),
            Class::Token => {
                let app = if rng.below(2) == 0 {
                    DOWNSTREAM_APP_ID_URI
                } else {
                    GRAPH_APP_ID_URI
                };
                let target = format!("{app}/.default");
                http.post(format!("{}/api/v1/token", s.api))
                    .form(&[("identity_provider", "entra_id"), ("target", &target)])
            }
            Class::Exchange => {
                let target = format!("{DOWNSTREAM_APP_ID_URI}/.default");
                http.post(format!("{}/api/v1/token/exchange", s.api))
                    .form(&[
                        ("identity_provider", "entra_id"),
                        ("target", target.as_str()),
                        ("user_token", tok.token.as_str()),
                    ])
            }
            Class::Introspect => {
                let token = match rng.below(4) {
                    0 => {
                        active = Some(false);
                        fixed.expired.as_str()
                    }
                    1 => {
                        active = Some(false);
                        fixed.bad_signature.as_str()
                    }
                    _ => {
                        active = Some(true);
                        tok.token.as_str()
                    }
                };
                http.post(format!("{}/api/v1/introspect", s.api))
                    .form(&[("identity_provider", "entra_id"), ("token", token)])
            }
            Class::Delegated => {
                let mut body = json!({"identity_provider": "entra_id", "target": tollgate_scope()});
                let alice = rng.below(2) == 0;
                if rng.below(2) == 0 {
                    body["user_upn"] = json!(if alice { ALICE_UPN } else { BOB_UPN });
                } else {
                    body["user_oid"] = json!(if alice { ALICE_OID } else { BOB_OID });
                }
                http.post(format!("{}/api/v1/token/delegated", s.api))
                    .json(&body)
            }
        };
        let response = request.send().await?;
        let status = response.status();
        let challenge = response
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body: Value = serde_json::from_slice(&response.bytes().await?).unwrap_or(Value::Null);
        // A retired key's tokens may be refused from the moment it was retired (checked after
        // the answer: the set only grows, so this covers the request's whole flight).
        let retired = matches!(
            class,
            Class::Valid | Class::Obo | Class::Exchange | Class::Introspect
        ) && self.is_retired(&tok.kid);
        if status.is_server_error() && class.may_need_idp() && self.in_outage(started) {
            return Ok(if matches!(status.as_u16(), 502..=504) {
                Outcome::Outage
            } else {
                Outcome::Fail(format!(
                    "status {status} during the outage: {}",
                    error_of(&body)
                ))
            });
        }
        // Refused as a bad token: 401 from the proxy (also from the OBO route when the IdP
        // refuses the assertion while tollgate has not noticed the retirement yet), or 400
        // invalid_grant from the exchange.
        let refused_as_bad_token = status == StatusCode::UNAUTHORIZED
            || (class == Class::Exchange && status == StatusCode::BAD_REQUEST);
        if retired && refused_as_bad_token {
            return Ok(Outcome::Retired);
        }
        let wrong = |what: &str| Ok(Outcome::Fail(format!("status {status}: {what}")));
        match class {
            Class::Valid | Class::Obo => {
                if status != StatusCode::OK {
                    return wrong(&error_of(&body));
                }
                if body["oid"] != tok.oid {
                    return wrong("the app saw another user");
                }
                if class == Class::Obo && body["aud"] != DOWNSTREAM_CLIENT_ID {
                    return wrong("the app did not get a token for the downstream API");
                }
                Ok(Outcome::Pass)
            }
            Class::Invalid | Class::Expired => {
                if status != StatusCode::UNAUTHORIZED || !challenge.starts_with("Bearer ") {
                    return wrong(&format!(
                        "expected 401 with a Bearer challenge, got {challenge:?}"
                    ));
                }
                if class == Class::Expired && !challenge.contains("error=\"invalid_token\"") {
                    return wrong(&format!("expected invalid_token, got {challenge:?}"));
                }
                Ok(Outcome::Pass)
            }
            Class::Token | Class::Exchange | Class::Delegated => {
                if status != StatusCode::OK || !body["access_token"].is_string() {
                    return wrong(&error_of(&body));
                }
                Ok(Outcome::Pass)
            }
            Class::Introspect => {
                let got = body["active"].as_bool();
                if status != StatusCode::OK {
                    return wrong(&error_of(&body));
                }
                // A retired key's token (active = true expected) may be found inactive.
                let retired_own = retired && active == Some(true);
                if got == active {
                    Ok(Outcome::Pass)
                } else if retired_own && got == Some(false) {
                    Ok(Outcome::Retired)
                } else {
                    wrong(&format!("active = {got:?}, expected {active:?}"))
                }
            }
        }
    }
}

/// The OAuth error of an answer (never a token: error bodies carry none).
fn error_of(body: &Value) -> String {
    match (body["error"].as_str(), body["error_description"].as_str()) {
        (Some(e), Some(d)) => format!("{e}: {d}"),
        (Some(e), None) => e.to_owned(),
        _ => "no OAuth error in the body".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// The echo app

/// Answers with what the app would act on: the user tollgate vouched for (`X-Auth-Oid`) and the
/// audience of the bearer token it passed on.
async fn echo(req: axum::extract::Request) -> axum::Json<Value> {
    let headers = req.headers();
    let aud = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| jwt_part(t, 1))
        .map(|c| c["aud"].clone());
    let oid = headers
        .get("x-auth-oid")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    axum::Json(json!({ "aud": aud, "oid": oid }))
}

// ---------------------------------------------------------------------------------------------
// Measuring the sidecar

#[derive(Clone, Copy)]
struct Resources {
    rss_kb: u64,
    fds: i64,
}

fn resources(pid: u32) -> Option<Resources> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as i64;
    Some(Resources { rss_kb, fds })
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn p99_ms(latencies: &mut [u32]) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    let at = (latencies.len() * 99).div_ceil(100).saturating_sub(1);
    f64::from(latencies[at]) / 1000.0
}

fn print_minute(soak: &Soak, index: usize, total: usize, pid: u32) {
    let (classes, p99, outage_total, failed_total, requests_total) = {
        let mut stats = lock(&soak.stats);
        let m = &mut stats.minutes[index];
        let classes = m.classes;
        let p99 = p99_ms(&mut m.latencies_us);
        let sum = |f: fn(&ClassStats) -> u64| classes.iter().map(f).sum::<u64>();
        (
            classes,
            p99,
            sum(|c| c.outage),
            sum(|c| c.failed),
            sum(|c| c.requests),
        )
    };
    let res = resources(pid).map_or_else(
        || "tollgate gone".to_owned(),
        |r| format!("rss {}, fds {}", mib(r.rss_kb), r.fds),
    );
    let mut line = format!(
        "minute {}/{total}: {requests_total} requests, {failed_total} failed, {outage_total} outage, p99 {p99:.1} ms, {res} |",
        index + 1
    );
    for (class, name, _) in CLASSES {
        let c = classes[class.index()];
        line.push_str(&format!(" {name} {}/{}", c.requests, c.failed));
        if c.outage > 0 {
            line.push_str(&format!("+{}o", c.outage));
        }
        if c.retired > 0 {
            line.push_str(&format!("+{}r", c.retired));
        }
    }
    println!("{line}");
}

// ---------------------------------------------------------------------------------------------

async fn workers(
    soak: &Arc<Soak>,
    http: &reqwest::Client,
    concurrency: usize,
    until: Instant,
    record: bool,
) {
    let mut tasks = Vec::new();
    let total_weight: u64 = CLASSES.iter().map(|c| c.2).sum();
    for id in 0..concurrency {
        let soak = Arc::clone(soak);
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((id as u64 + 1) * 0x1000_0001));
            while Instant::now() < until {
                let mut pick = rng.below(total_weight);
                let class = CLASSES
                    .iter()
                    .find(|(_, _, w)| {
                        if pick < *w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .map_or(Class::Valid, |c| c.0);
                let started = Instant::now();
                let outcome = soak.request(&http, class, &mut rng).await;
                if record {
                    soak.record(class, Instant::now(), started.elapsed(), outcome);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Mints a user token every 100 ms while the IdP is up, so tollgate keeps meeting new tokens
/// and its caches fill and evict.
async fn minter(soak: Arc<Soak>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !soak.done.load(Ordering::Relaxed) {
        tick.tick().await;
        if !soak.idp_up.load(Ordering::Relaxed) {
            continue;
        }
        let n = soak.minted.load(Ordering::Relaxed);
        if let Ok(tok) = soak.mint(n).await {
            soak.add_to_pool(tok);
        }
    }
}

/// Runs the key rotations and the outage; returns the IdP, still up, for the end of the run.
async fn timeline(
    soak: Arc<Soak>,
    mut idp: Option<DevIdpHandle>,
    run: Duration,
) -> Option<DevIdpHandle> {
    let at = |f: f64| soak.t0() + run.mul_f64(f);
    let outage = run.mul_f64(0.2).min(Duration::from_secs(60));
    let sleep_until = |t: Instant| tokio::time::sleep_until(t.into());

    sleep_until(at(0.10)).await;
    match soak.rotate(false).await {
        Ok(kid) => soak.say(&format!(
            "dev IdP: signing key rotated, new kid {kid}; the previous key stays published"
        )),
        Err(e) => soak.control_failure(format!("key rotation: {e}")),
    }

    sleep_until(at(0.30)).await;
    let before = soak.published_kids().await.unwrap_or_default();
    lock(&soak.outages).push((Instant::now(), None));
    soak.idp_up.store(false, Ordering::Relaxed);
    if let Some(handle) = idp.take()
        && tokio::time::timeout(Duration::from_secs(10), handle.shutdown())
            .await
            .is_err()
    {
        soak.control_failure("the dev IdP did not stop within 10 s".into());
    }
    soak.say(&format!(
        "dev IdP stopped: outage for {} s",
        outage.as_secs()
    ));

    sleep_until(at(0.30) + outage).await;
    // The restarted IdP publishes the key file's key alone: the others are retired from the
    // moment it answers, and their tokens are no longer sent once it is back.
    let kept = soak.key_file_kid.get().cloned().unwrap_or_default();
    let gone: HashSet<String> = before.iter().filter(|k| **k != kept).cloned().collect();
    soak.retired
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .extend(gone.iter().cloned());
    lock(&soak.pool).0.retain(|t| !gone.contains(&t.kid));
    match soak.start_idp().await {
        Ok(handle) => idp = Some(handle),
        Err(e) => {
            soak.control_failure(format!("restarting the dev IdP: {e}"));
            return None;
        }
    }
    match soak.published_kids().await {
        Ok(after) if after.len() == 1 && after.contains(&kept) => {}
        Ok(after) => soak.control_failure(format!(
            "after the restart the IdP publishes {after:?}, not the key file's {kept}"
        )),
        Err(e) => soak.control_failure(format!("JWKS after the restart: {e}")),
    }
    let gone: Vec<String> = gone.into_iter().collect();
    if let Some(o) = lock(&soak.outages).last_mut() {
        o.1 = Some(Instant::now());
    }
    soak.idp_up.store(true, Ordering::Relaxed);
    soak.say(&format!(
        "dev IdP back on {} with the key file's key; retired by the restart: {}",
        soak.setup.idp,
        if gone.is_empty() {
            "none".into()
        } else {
            gone.join(", ")
        }
    ));
    if lock(&soak.pool).0.len() < 50 {
        match soak.mint_batch(50).await {
            Ok(batch) => batch.into_iter().for_each(|t| soak.add_arc(t)),
            Err(e) => soak.control_failure(format!("minting after the restart: {e}")),
        }
    }
    // The IdP forgot its refresh tokens: sign in again, as users would.
    soak.login_all().await;

    sleep_until(at(0.75)).await;
    let before = soak.published_kids().await.unwrap_or_default();
    // Retired before the rotation is asked for: tollgate cannot notice earlier than that.
    soak.retired
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .extend(before.iter().cloned());
    match soak.rotate(true).await {
        Ok(kid) => {
            // Only the new key's tokens from now on; the old ones are used (and may be refused)
            // until the first batch is there.
            match soak.mint_batch(50).await {
                Ok(batch) => *lock(&soak.pool) = (batch, 0),
                Err(e) => soak.control_failure(format!("minting after the second rotation: {e}")),
            }
            soak.say(&format!(
                "dev IdP: signing key rotated, new kid {kid}; previous keys dropped from the JWKS"
            ));
        }
        Err(e) => soak.control_failure(format!("key rotation: {e}")),
    }
    idp
}

async fn wait_ready(http: &reqwest::Client, admin: &str) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(format!("{admin}/readyz")).send().await
            && r.status() == StatusCode::OK
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("tollgate did not become ready within 60 s".into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if args.minutes == 0 || args.concurrency == 0 {
        return Err("--minutes and --concurrency must be at least 1".into());
    }
    let setup = read_setup(&args.config)?;
    let pid = args.tollgate_pid;
    let run = Duration::from_secs(args.minutes * 60);
    let soak = Arc::new(Soak {
        http: client(4)?,
        setup,
        key_file: args.state_dir.join("dev-idp-key.pem"),
        pool: Mutex::new((Vec::new(), 0)),
        retired: RwLock::new(HashSet::new()),
        outages: Mutex::new(Vec::new()),
        idp_up: AtomicBool::new(true),
        fixed: OnceLock::new(),
        key_file_kid: OnceLock::new(),
        stats: Mutex::new(Stats::default()),
        t0: OnceLock::new(),
        done: AtomicBool::new(false),
        minted: AtomicU64::new(0),
    });

    let echo_listener = tokio::net::TcpListener::bind(soak.setup.echo).await?;
    let echo_app = axum::Router::new().fallback(echo);
    tokio::spawn(async move { axum::serve(echo_listener, echo_app).await });
    let idp = soak.start_idp().await?;
    wait_ready(&soak.http, &soak.setup.admin).await?;
    let initial = soak.mint_batch(POOL_INITIAL).await?;
    let first = initial.first().cloned().ok_or("no token minted")?;
    let _ = soak.key_file_kid.set(first.kid.clone());
    initial.into_iter().for_each(|t| soak.add_arc(t));
    let fixed = soak.make_fixed(&first)?;
    let _ = soak.fixed.set(fixed);
    soak.login_all().await;

    println!(
        "soak: {} min, {} requests in flight, tollgate pid {pid}; public {}, api {}, dev IdP {}, echo app {}",
        args.minutes,
        args.concurrency,
        soak.setup.public,
        soak.setup.api,
        soak.setup.idp,
        soak.setup.echo
    );
    // Warm-up: tollgate's own connection pools (to the app and the IdP) reach their working size,
    // so the start figures are the idle sidecar's, not a cold one's.
    let warm = client(args.concurrency)?;
    workers(
        &soak,
        &warm,
        args.concurrency,
        Instant::now() + Duration::from_secs(3),
        false,
    )
    .await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = resources(pid).ok_or("cannot read tollgate's /proc entry")?;
    println!(
        "tollgate at start: rss {} ({} kB), {} open fds (after a 3 s warm-up, no client connection open)",
        mib(start.rss_kb),
        start.rss_kb,
        start.fds
    );

    lock(&soak.stats).minutes = (0..args.minutes).map(|_| Minute::default()).collect();
    let t0 = Instant::now();
    let _ = soak.t0.set(t0);
    let timeline_task = tokio::spawn(timeline(Arc::clone(&soak), Some(idp), run));
    let minter_task = tokio::spawn(minter(Arc::clone(&soak)));
    let printer = {
        let soak = Arc::clone(&soak);
        let minutes = args.minutes as usize;
        tokio::spawn(async move {
            // The last minute is printed once its requests have all come back.
            for m in 0..minutes.saturating_sub(1) {
                tokio::time::sleep_until((t0 + Duration::from_secs(60 * (m as u64 + 1))).into())
                    .await;
                print_minute(&soak, m, minutes, pid);
            }
        })
    };
    println!(
        "per minute, by class: requests/failed, +No allowed outage answers, +Nr allowed refusals of a retired key's tokens"
    );
    let http = client(args.concurrency)?;
    workers(&soak, &http, args.concurrency, t0 + run, true).await;
    soak.done.store(true, Ordering::Relaxed);
    let _ = printer.await;
    print_minute(&soak, args.minutes as usize - 1, args.minutes as usize, pid);
    let _ = minter_task.await;
    // The IdP stays up until the end figures are taken: its connections were there at the start.
    let idp = timeline_task.await.ok().flatten();
    drop(http);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let healthy = match soak
        .http
        .get(format!("{}/healthz", soak.setup.admin))
        .send()
        .await
    {
        Ok(r) => r.status() == StatusCode::OK,
        Err(_) => false,
    };
    let end = resources(pid);
    let stats = lock(&soak.stats);
    let all: Vec<ClassStats> = stats.minutes.iter().flat_map(|m| m.classes).collect();
    let requests: u64 = all.iter().map(|c| c.requests).sum();
    let wrong: u64 = all.iter().map(|c| c.failed).sum();
    let outage: u64 = all.iter().map(|c| c.outage).sum();
    let retired: u64 = all.iter().map(|c| c.retired).sum();
    let mut passed = requests - wrong;
    let mut failed = wrong + stats.control_failures;
    println!(
        "requests: {requests}, as expected {}, outage (IdP down, allowed) {outage}, refused after their key was retired (allowed) {retired}, wrong {wrong}; tokens minted {}",
        requests - wrong - outage - retired,
        soak.minted.load(Ordering::Relaxed)
    );
    for (what, first, count) in &stats.samples {
        println!("  {count} x {what} (first at {})", elapsed_label(*first));
    }
    if stats.more_samples > 0 {
        println!("  ... and {} failures of other kinds", stats.more_samples);
    }
    let allowance_kb = ((soak.setup.validation_capacity + soak.setup.obo_capacity) * ENTRY_BYTES
        + RUNTIME_SLACK_BYTES)
        / 1024;
    match end {
        Some(end) if healthy => {
            println!(
                "tollgate at end:   rss {} ({} kB), {} open fds",
                mib(end.rss_kb),
                end.rss_kb,
                end.fds
            );
            let growth = end.rss_kb as i64 - start.rss_kb as i64;
            let rss_ok = growth <= allowance_kb as i64;
            println!(
                "rss growth {growth} kB, allowed {allowance_kb} kB = (validation_capacity {} + obo_capacity {}) x {} KiB per entry + {} MiB runtime slack: {}",
                soak.setup.validation_capacity,
                soak.setup.obo_capacity,
                ENTRY_BYTES / 1024,
                RUNTIME_SLACK_BYTES >> 20,
                if rss_ok { "ok" } else { "FAILED" }
            );
            let fd_growth = end.fds - start.fds;
            let fds_ok = fd_growth <= FD_SLACK;
            println!(
                "fd growth {fd_growth:+}, allowed +{FD_SLACK}: {}",
                if fds_ok { "ok" } else { "FAILED" }
            );
            for ok in [rss_ok, fds_ok] {
                if ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        _ => {
            println!("tollgate is gone or not healthy at the end of the run: FAILED");
            failed += 1;
        }
    }
    println!("{passed} passed, {failed} failed");
    drop(stats);
    drop(idp);
    std::process::exit(if failed > 0 { 1 } else { 0 });
}
