//! Keeps the caches' weights honest: a counting global allocator (this test binary only)
//! measures what cached entries really hold, and the tests compare it with the weight each
//! cache charges for them (`cache_meter`). Counted as `malloc` chunks, per measurement window,
//! so that other tests running at the same time do not blur the figure.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::time::Duration;

use crate::cache_meter::heap_chunk;

#[global_allocator]
static COUNTING: Counting = Counting;

/// Tags each block with the measurement window open on the thread that allocated it (in a
/// word just before the block), and keeps per window the bytes of its blocks still alive,
/// whichever thread frees them: a cache may free on another thread (moka's hash table did,
/// through crossbeam's epochs; a spawned exchange's task may), so a per-thread count would see
/// other tests' frees and miss its own.
struct Counting;

/// Live bytes (as `malloc` chunks) of the blocks allocated in each window; window 0 is "not
/// measuring".
static WINDOWS: [AtomicIsize; 64] = [const { AtomicIsize::new(0) }; 64];
static NEXT_WINDOW: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static WINDOW: Cell<usize> = const { Cell::new(0) };
}

/// The header before each block: a multiple of the alignment that holds the tag.
fn header(layout: Layout) -> usize {
    layout.align().max(size_of::<usize>() * 2)
}

fn outer(layout: Layout) -> Option<Layout> {
    Layout::from_size_align(layout.size().checked_add(header(layout))?, header(layout)).ok()
}

// SAFETY: each block is `System`'s, `header` bytes longer and as aligned as asked (the header
// is a multiple of the alignment); the pointer handed out is inside it, and is turned back into
// `System`'s pointer with the same layout arithmetic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(outer) = outer(layout) else {
            return std::ptr::null_mut();
        };
        // SAFETY: `outer` has a non-zero size.
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        // `try_with`: an allocation while the thread is torn down is simply not counted.
        let window = WINDOW.try_with(Cell::get).unwrap_or(0);
        // SAFETY: the block is `header` bytes longer than asked, and the header at least two
        // words: the tag goes in the word just before the returned pointer.
        unsafe {
            let ptr = base.add(header(layout));
            ptr.cast::<usize>().sub(1).write(window);
            if window != 0 {
                WINDOWS[window].fetch_add(heap_chunk(layout.size()) as isize, Ordering::Relaxed);
            }
            ptr
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout: the tag is just before it and the
        // block starts `header` bytes before it.
        unsafe {
            let window = ptr.cast::<usize>().sub(1).read();
            if window != 0 {
                WINDOWS[window].fetch_sub(heap_chunk(layout.size()) as isize, Ordering::Relaxed);
            }
            if let Some(outer) = outer(layout) {
                System.dealloc(ptr.sub(header(layout)), outer);
            }
        }
    }
}

/// Opens a measurement window on this thread: what the thread allocates from now on is
/// counted in it until [`close`].
fn open() -> usize {
    let window = NEXT_WINDOW.fetch_add(1, Ordering::Relaxed);
    assert!(window < WINDOWS.len(), "more windows than slots");
    WINDOW.with(|w| w.set(window));
    window
}

/// Closes this thread's window and returns the bytes of what was allocated in it that are
/// still alive.
fn close(window: usize) -> isize {
    WINDOW.with(|w| w.set(0));
    WINDOWS[window].load(Ordering::Relaxed)
}

/// Entries per measurement: enough that the caches' tables, sized as they grow (by doubling),
/// are amortised as in a flood.
const N: usize = 20_000;

/// An Entra v2 access token's payload (~1 KB), distinct per user.
fn entra_payload(i: usize) -> String {
    serde_json::json!({
        "aud": "api://11111111-2222-3333-4444-555555555555",
        "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
        "iat": 1_900_000_000u64, "nbf": 1_900_000_000u64, "exp": 4_000_000_000u64,
        "aio": "AWQAm/8TAAAAyKi3TAadjEMBv8SqhKfS0zR/oT3Ldcl2ZR0o7HqbdSrkc8UGKlSw1yzeLM5a4HLB1jEXAMPLE",
        "azp": "cccccccc-3333-4444-5555-dddddddddddd", "azpacr": "0",
        "name": format!("User {i}"),
        "oid": format!("{i:08}-8888-7777-6666-555555555555"),
        "preferred_username": format!("user{i}@contoso.example"),
        "rh": "0.AQEAqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqAAA.",
        "roles": ["Reports.Read"],
        "scp": "access_as_user User.Read",
        "sub": format!("AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy{i:08}"),
        "tid": "11111111-2222-3333-4444-555555555555",
        "uti": "AbCdEfGhIjKlMnOpQrStUv", "ver": "2.0",
    })
    .to_string()
}

#[test]
fn a_validated_tokens_weight_is_what_it_holds() {
    let validator =
        crate::validate::Validator::with_memory(offline_provider(), N as u64 * 2, 1 << 30);
    let payloads: Vec<String> = (0..N).map(entra_payload).collect();
    let payload_bytes: usize = payloads.iter().map(String::len).sum();
    let window = open();
    cache_payloads(&validator, &payloads);
    let measured = close(window) as f64 / N as f64;
    let weighed = validator.cached_bytes() as f64 / N as f64;
    assert_eq!(validator.cache_len(), N as u64, "nothing evicted");
    let payload = payload_bytes as f64 / N as f64;
    println!(
        "validated token: payload {payload:.0} B, measured {measured:.0} B (payload + {:.0}), weighed {weighed:.0} B",
        measured - payload
    );
    assert!(
        (weighed / measured - 1.0).abs() < 0.05,
        "weight {weighed:.0} B against {measured:.0} B measured"
    );
    // Issue #18's target: a cached validated token holds at most its payload + 256 bytes.
    assert!(
        measured - payload <= 256.0,
        "payload + {:.0} B",
        measured - payload
    );
    drop(payloads);
}

#[tokio::test(flavor = "current_thread")]
async fn an_exchanged_tokens_weight_is_what_it_holds() {
    use crate::exchange::TokenCache;

    let cache = TokenCache::with_memory(N as u64 * 2, 1 << 30, Duration::from_secs(120));
    let tokens = entra_sized_tokens();
    let token_bytes = tokens.iter().map(String::len).sum::<usize>() as f64 / N as f64;
    let window = open();
    for (i, t) in tokens.iter().enumerate() {
        cache_token(&cache, i, t.clone()).await;
    }
    let measured = close(window) as f64 / N as f64;
    let weighed = cache.bytes() as f64 / N as f64;
    println!(
        "exchanged token: token {token_bytes:.0} B, measured {measured:.0} B (token + {:.0}), weighed {weighed:.0} B",
        measured - token_bytes
    );
    assert!(
        (weighed / measured - 1.0).abs() < 0.05,
        "weight {weighed:.0} B against {measured:.0} B measured"
    );
}

/// Claims as the validator makes them, for the eviction tests.
fn claims(i: usize) -> crate::Claims {
    crate::Claims::from_json("entra_id", entra_payload(i).into()).expect("an object")
}

/// Caches the claims of each payload in `validator` (the `i`th under the `i`th key), as the
/// validator does, and builds their identity headers, as the proxy's first request with a
/// token does.
fn cache_payloads(validator: &crate::validate::Validator, payloads: &[String]) {
    let mut headers = http::HeaderMap::new();
    // The validator keeps the payload text it decoded (an exact-size copy, as here), shares its
    // provider's name, and stamps the claims with the token's digest before caching a clone.
    let provider_name = std::sync::Arc::new("entra_id".into());
    for (i, text) in payloads.iter().enumerate() {
        let digest = crate::util::sha256(&i.to_le_bytes());
        let claims = crate::Claims::from_json_of(&provider_name, text.as_str().into(), digest)
            .expect("an object");
        validator.cache_insert(digest, claims.clone(), 0);
        crate::identity_headers::add(&mut headers, &claims, crate::config::IdentityHeaders::XAuth);
        headers.clear();
    }
}

/// `N` exchanged tokens of an Entra access token's size (they are 1.2-2 KB: 1.6 KB), distinct
/// per user.
fn entra_sized_tokens() -> Vec<String> {
    (0..N)
        .map(|i| {
            format!(
                "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.{i:020}{}",
                "A".repeat(1543)
            )
        })
        .collect()
}

fn offline_provider() -> std::sync::Arc<crate::provider::Provider> {
    crate::provider::Provider::new(crate::config::ProviderConfig {
        client_id: "app".into(),
        issuer: Some("https://login.example/v2.0".into()),
        jwks_uri: Some("https://login.example/keys".parse().expect("a URL")),
        ..Default::default()
    })
    .expect("a provider")
}

#[test]
fn a_full_cache_evicts_by_size_and_counts_why() {
    let recorder = crate::test_metrics::TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&recorder);
    let budget = 64 << 10;
    let validator = crate::validate::Validator::with_memory(offline_provider(), 100_000, budget);
    for i in 0..200usize {
        validator.cache_insert(crate::util::sha256(&i.to_le_bytes()), claims(i), 0);
    }
    // The same key again: the old entry is replaced, not added to.
    let key = crate::util::sha256(&0usize.to_le_bytes());
    validator.cache_insert(key, claims(0), 0);
    validator.cache_insert(key, claims(0), 0);
    let held = validator.cached_bytes();
    let entries = validator.cache_len();
    assert!(held <= budget, "{held} bytes held in a {budget}-byte cache");
    assert!(entries > 20, "the budget holds ~36 entries, not {entries}");
    let counts = recorder.counts();
    let count = |cause: &str| {
        counts
            .get(&format!(
                "tollgate_cache_evictions_total{{cache=validation,cause={cause}}}"
            ))
            .copied()
            .unwrap_or(0)
    };
    // Every insert is either still there, or was evicted (or refused) for size, or replaced.
    assert_eq!(
        count("size") + count("replaced") + entries,
        202,
        "{counts:?}"
    );
    assert!(count("replaced") >= 1, "{counts:?}");
    // What the meter says is held is what the entries weigh.
    assert_eq!(
        held as usize,
        entries as usize * crate::validate::entry_bytes(&claims(0)),
        "all test entries are the same size"
    );
}

#[test]
fn an_expired_or_outdated_entry_is_dropped_when_read_not_served() {
    let recorder = crate::test_metrics::TestRecorder::default();
    let _local = metrics::set_default_local_recorder(&recorder);
    let validator = crate::validate::Validator::with_memory(offline_provider(), 100, 1 << 20);
    let expired = crate::Claims::from_json(
        "entra_id",
        format!(r#"{{"sub":"s","exp":{}}}"#, crate::util::now() - 1).into(),
    )
    .expect("an object");
    let (old, fresh) = (crate::util::sha256(b"old"), crate::util::sha256(b"fresh"));
    validator.cache_insert(old, expired, 0);
    validator.cache_insert(fresh, claims(1), 0);
    assert_eq!(validator.cache_len(), 2);
    assert!(validator.cached(&old, 0).is_none(), "served past exp");
    assert!(validator.cached(&fresh, 0).is_some());
    // A key was withdrawn since: the entry checked under epoch 0 is not served under 1.
    assert!(
        validator.cached(&fresh, 1).is_none(),
        "served across a key epoch"
    );
    assert_eq!(validator.cache_len(), 0, "both dropped");
    assert_eq!(validator.cached_bytes(), 0);
    let counts = recorder.counts();
    for cause in ["expired", "explicit"] {
        let name = format!("tollgate_cache_evictions_total{{cache=validation,cause={cause}}}");
        assert_eq!(counts.get(&name).copied(), Some(1), "{cause}: {counts:?}");
    }
}

#[test]
fn another_tokens_entry_under_the_same_key_is_not_served() {
    // The cache keys by a part of the digest: a token whose digest shares it finds another
    // token's claims there, and must not get them.
    let validator = crate::validate::Validator::with_memory(offline_provider(), 100, 1 << 20);
    let digest = crate::util::sha256(b"cached");
    let mut other = digest;
    other[31] ^= 1;
    validator.cache_insert(digest, claims(1), 0);
    assert!(
        validator.cached(&other, 0).is_none(),
        "served another token's claims"
    );
    assert!(
        validator.cached(&digest, 0).is_some(),
        "the cached token's entry stays"
    );
    // The other token, once validated, takes the key over.
    validator.cache_insert(other, claims(2), 0);
    assert_eq!(validator.cache_len(), 1);
    let got = validator.cached(&other, 0).expect("cached");
    assert_eq!(got.token_digest(), Some(&other));
    assert!(validator.cached(&digest, 0).is_none());
}

#[test]
fn a_full_validation_cache_holds_what_it_weighs() {
    // Room for about a quarter of the tokens: the cache evicts (and keeps ghost keys) most of
    // the time, as under a flood.
    let payloads: Vec<String> = (0..N).map(entra_payload).collect();
    let validator =
        crate::validate::Validator::with_memory(offline_provider(), N as u64, N as u64 * 300);
    let window = open();
    cache_payloads(&validator, &payloads);
    let held = close(window);
    holds_what_it_weighs(
        "validation",
        held,
        validator.cached_bytes(),
        validator.cache_len(),
    );
}

#[test]
fn the_entry_count_stays_an_upper_limit() {
    let validator = crate::validate::Validator::with_memory(offline_provider(), 10, 1 << 30);
    for i in 0..100usize {
        validator.cache_insert(crate::util::sha256(&i.to_le_bytes()), claims(i), 0);
    }
    assert!(validator.cache_len() <= 10, "{}", validator.cache_len());
}

#[tokio::test(flavor = "current_thread")]
async fn the_exchange_cache_stays_within_its_bytes() {
    use crate::exchange::TokenCache;

    let budget = 64 << 10;
    let cache = TokenCache::with_memory(100_000, budget, Duration::from_secs(120));
    for i in 0..200usize {
        cache_token(&cache, i, format!("eyJ0.{i:020}{}", "A".repeat(1500))).await;
    }
    assert!(cache.bytes() <= budget, "{} bytes held", cache.bytes());
    assert!(cache.entry_count() > 10, "{} entries", cache.entry_count());
}

#[tokio::test(flavor = "current_thread")]
async fn a_full_exchange_cache_holds_what_it_weighs() {
    use crate::exchange::TokenCache;

    // Room for about a quarter of the tokens, as under a flood.
    let cache = TokenCache::with_memory(N as u64, N as u64 * 500, Duration::from_secs(120));
    let tokens = entra_sized_tokens();
    let window = open();
    for (i, t) in tokens.iter().enumerate() {
        cache_token(&cache, i, t.clone()).await;
    }
    let held = close(window);
    holds_what_it_weighs("exchange", held, cache.bytes(), cache.entry_count());
}

/// A cache filled with `N` entries, evicting (it holds between an eighth and a half of them),
/// weighs what the allocator counted it holding (`held` bytes), within 5%.
fn holds_what_it_weighs(cache: &str, held: isize, weighed: u64, entries: u64) {
    let (held, weighed) = (held as f64, weighed as f64);
    println!(
        "full {cache} cache: {entries} entries, measured {:.0} B each, weighed {:.0} B",
        held / entries as f64,
        weighed / entries as f64
    );
    assert!(
        entries > N as u64 / 8 && entries < N as u64 / 2,
        "{entries}"
    );
    assert!(
        (weighed / held - 1.0).abs() < 0.05,
        "weight {weighed:.0} B against {held:.0} B measured"
    );
}

/// Puts `access_token` (valid for an hour) into `cache` under the `i`th key, as an exchange would.
async fn cache_token(cache: &crate::exchange::TokenCache, i: usize, access_token: String) {
    use crate::exchange::ExchangedToken;
    use crate::exchange::grants::TokenResponse;
    let response = TokenResponse {
        access_token,
        expires_in: 3600,
        refresh_token: None,
        scope: None,
        id_token: None,
    };
    let token = ExchangedToken::from_response(response, None).expect("a header-safe token");
    let (got, _) = cache
        .get_or_fetch(crate::util::sha256(&i.to_le_bytes()), false, move || {
            std::future::ready(Ok(token))
        })
        .await;
    got.expect("an answer");
}
