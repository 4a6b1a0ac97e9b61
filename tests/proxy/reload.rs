//! Reloading the configuration while serving: through the library under load, and through the
//! binary on `SIGHUP` and on a file change.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::*;

/// Two valid route sets that answer the same requests differently, with the same provider.
/// Set 0: `/x` needs a token, `/y` is open. Set 1: `/x` needs the role `Admin` (the test token
/// has `Reader`: 403), `/y` needs a token (none sent: 401).
fn route_set(listen: &str, well_known: &str, upstream: &str, set: u8, extra: &str) -> String {
    let routes = if set == 0 {
        "[[routes]]\npath = \"/x\"\n\n[[routes]]\npath = \"/y\"\nauth = \"none\"\n"
    } else {
        "[[routes]]\npath = \"/x\"\nroles = [\"Admin\"]\n\n[[routes]]\npath = \"/y\"\n"
    };
    format!(
        "{listen}\n{extra}\n[upstream]\nurl = \"{upstream}\"\n\n[[providers]]\nname = \"entra_id\"\nwell_known_url = \"{well_known}\"\nclient_id = \"{CLIENT_ID}\"\n\n{routes}"
    )
}

/// What each set answers: (`/x` with the token, `/y` without one).
fn expected(set: u8) -> (u16, u16) {
    if set == 0 { (200, 200) } else { (403, 401) }
}

/// Whether `/readyz` at `url` said 200 within 10 s (a process still starting refuses the
/// connection: that is "not yet").
async fn ready(http: &reqwest::Client, url: &str) -> bool {
    for _ in 0..400 {
        if http.get(url).send().await.is_ok_and(|r| r.status() == 200) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

async fn answers(http: &reqwest::Client, base: &str, token: &str) -> (u16, u16) {
    let x = http
        .get(format!("{base}/x"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let y = http.get(format!("{base}/y")).send().await.unwrap();
    (x.status().as_u16(), y.status().as_u16())
}

#[tokio::test]
async fn routes_change_twenty_times_under_load_without_a_failed_request() {
    let key = TestKey::new("k1");
    let idp = StaticIdp::start(&[&key]).await;
    let echo = Echo::start().await;
    let listen = support::config::listen("5s");
    let config = |set: u8, extra: &str| {
        let text = route_set(&listen, &idp.well_known(), &echo.url(), set, extra);
        Config::from_toml_str(&text, &MapEnv::default()).unwrap()
    };
    let server = Server::bind(config(0, "")).await.unwrap().spawn();
    let base = format!("http://{}", server.public);
    let http = reqwest::Client::new();
    let token = key.token(&idp.issuer(), json!({}));
    assert!(ready(&http, &format!("http://{}/readyz", server.admin.unwrap())).await);
    assert_eq!(answers(&http, &base, &token).await, expected(0));
    let key_fetches = idp.fetches();

    // Bounded load on /x all along: every answer must be one of the two sets' (200 or 403).
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (http, url, token) = (http.clone(), format!("{base}/x"), token.clone());
        let (stop, sent, failed) = (stop.clone(), sent.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) {
                let status = http.get(&url).bearer_auth(&token).send().await;
                sent.fetch_add(1, Ordering::SeqCst);
                if !matches!(status.map(|r| r.status().as_u16()), Ok(200 | 403)) {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }

    let mut in_force = 0;
    let mut generation = 1;
    for i in 1..=20u8 {
        if i == 10 {
            // Listener addresses cannot move on reload: refused, the set in force stays.
            let mut moved = config(1 - in_force, "");
            moved.listen.admin = None;
            let err = server.reload(moved).await.unwrap_err().to_string();
            assert!(err.contains("listen cannot change on reload"), "{err}");
            assert_eq!(answers(&http, &base, &token).await, expected(in_force));
            continue;
        }
        let set = 1 - in_force;
        generation = server.reload(config(set, "")).await.unwrap();
        in_force = set;
        // The next request after the reload returned is answered by the new set.
        assert_eq!(
            answers(&http, &base, &token).await,
            expected(set),
            "reload {i}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(generation, 20, "19 reloads took, one was refused");
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(sent > 20, "the load ran ({sent} requests)");
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed across the reloads"
    );
    // The provider never changed: its keys were kept, not fetched again.
    assert_eq!(idp.fetches(), key_fetches);
    // A changed provider is built anew, and its keys load before the new set serves.
    let mut changed = config(in_force, "");
    changed.providers[0].leeway = Duration::from_secs(30);
    server.reload(changed).await.unwrap();
    assert_eq!(idp.fetches(), key_fetches + 1);
    assert_eq!(answers(&http, &base, &token).await, expected(in_force));

    let metrics =
        support::get_text(&http, format!("http://{}/metrics", server.admin.unwrap())).await;
    assert!(metrics.contains("tollgate_config_generation"), "{metrics}");
    assert!(
        metrics.contains("tollgate_config_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_provider_count_change_resizes_the_caches_and_keeps_the_keys() {
    let key = TestKey::new("k1");
    let idp = StaticIdp::start(&[&key]).await;
    let echo = Echo::start().await;
    let listen = support::config::listen("5s");
    let one = Config::from_toml_str(
        &route_set(&listen, &idp.well_known(), &echo.url(), 0, ""),
        &MapEnv::default(),
    )
    .unwrap();
    let mut two = one.clone();
    let mut other = two.providers[0].clone();
    other.name = "other".into();
    two.providers.push(other);
    for route in &mut two.routes {
        route.provider = Some("entra_id".into());
    }
    let server = Server::bind(two).await.unwrap().spawn();
    let base = format!("http://{}", server.public);
    let http = reqwest::Client::new();
    let token = key.token(&idp.issuer(), json!({}));
    assert!(ready(&http, &format!("http://{}/readyz", server.admin.unwrap())).await);
    assert_eq!(answers(&http, &base, &token).await, expected(0));
    let fetches = idp.fetches();
    // One provider left: every cache's share of `max_memory` doubles, so entra_id's caches are
    // built anew at the new size, but its keys are kept: no fetch, no moment without them.
    server.reload(one).await.unwrap();
    assert_eq!(answers(&http, &base, &token).await, expected(0));
    assert_eq!(
        idp.fetches(),
        fetches,
        "the kept provider fetched its keys again"
    );
    server.shutdown().await.unwrap();
}

/// The binary, on a config file: `SIGHUP` reloads it, a broken file is refused and the
/// configuration in force keeps serving; with `[reload] watch` a change alone reloads it.
#[tokio::test]
async fn the_binary_reloads_on_sighup_and_on_a_watched_change() {
    let key = TestKey::new("k1");
    let idp = StaticIdp::start(&[&key]).await;
    let echo = Echo::start().await;
    let token = key.token(&idp.issuer(), json!({}));
    let http = reqwest::Client::new();
    for watch in [false, true] {
        let (public, admin) = (support::free_port(), support::free_port());
        let listen = format!(
            "[listen]\npublic = \"127.0.0.1:{public}\"\napi = \"off\"\nadmin = \"127.0.0.1:{admin}\"\n"
        );
        let extra = if watch {
            "[reload]\nwatch = true\ndebounce = \"100ms\"\n"
        } else {
            ""
        };
        let text = |set| route_set(&listen, &idp.well_known(), &echo.url(), set, extra);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tollgate.toml");
        let log = dir.path().join("stderr.log");
        std::fs::write(&file, text(0)).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(["serve", "--config"])
            .arg(&file)
            .env_remove("RUST_LOG")
            .env_remove("TOLLGATE_CONFIG")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{public}");
        let up = ready(&http, &format!("http://127.0.0.1:{admin}/readyz")).await;
        assert!(
            up,
            "tollgate did not start: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        assert_eq!(answers(&http, &base, &token).await, expected(0));

        let pid = child.id().to_string();
        let hangup = || {
            let status = std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap();
            assert!(status.success());
        };
        let wait_for = |set: u8| {
            let (http, base, token) = (http.clone(), base.clone(), token.clone());
            async move {
                for _ in 0..200 {
                    if answers(&http, &base, &token).await == expected(set) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                false
            }
        };
        std::fs::write(&file, text(1)).unwrap();
        if !watch {
            hangup();
        }
        assert!(
            wait_for(1).await,
            "set 1 never came into force (watch: {watch})"
        );
        // A broken file: refused with a logged error, the set in force keeps serving.
        std::fs::write(&file, "[[routes]\npath = \n").unwrap();
        if !watch {
            hangup();
        }
        let mut logged = false;
        for _ in 0..200 {
            if std::fs::read_to_string(&log)
                .unwrap()
                .contains("configuration not reloaded")
            {
                logged = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(logged, "{}", std::fs::read_to_string(&log).unwrap());
        assert_eq!(answers(&http, &base, &token).await, expected(1));
        assert!(child.try_wait().unwrap().is_none(), "tollgate exited");
        // And back once the file is fixed.
        std::fs::write(&file, text(0)).unwrap();
        if !watch {
            hangup();
        }
        assert!(wait_for(0).await, "set 0 never came back (watch: {watch})");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
