//! Token store: one behaviour suite over memory, SQLite and Redis, plus what is at rest,
//! tampering, key rotation, `kill -9` durability and Redis outages.
//!
//! Redis tests start their own `redis-server` on a free loopback port. Without `redis-server` on
//! PATH they print `skipped` and pass, unless `CI` is set, where they fail.

mod support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "redis")]
use support::redis::RedisServer;
use support::{now, require};
use tollgate::store::{
    MemoryStore, Sealer, SessionKey, SessionRecord, StoreConfig, StoreError, StoreKind, TokenStore,
    UserTokens, keygen,
};

const PROVIDER: &str = "entra_id";
/// The tenant of the test users.
const TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// Another tenant.
const OTHER_TID: &str = "66666666-7777-8888-9999-000000000000";
/// Far enough ahead that no record in these tests expires while they run.
const FAR_FUTURE: u64 = 4_000_000_000;

// ---------------------------------------------------------------------------------------------
// The behaviour suite, run against every backend.

async fn suite(store: Arc<dyn TokenStore>, kind: &str) {
    assert_eq!(store.kind(), kind);
    store.ping().await.unwrap();

    // Unknown users.
    assert_eq!(store.get_by_oid(PROVIDER, "nobody").await.unwrap(), None);
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "nobody@example.com")
            .await
            .unwrap(),
        None
    );
    assert!(!store.delete(PROVIDER, "nobody").await.unwrap());

    // Put, then both lookups; the UPN lookup ignores case.
    let ada = user("ada", Some("Ada.Lovelace@Example.com"));
    store.put(PROVIDER, &ada).await.unwrap();
    assert_eq!(
        store.get_by_oid(PROVIDER, "ada").await.unwrap(),
        Some(ada.clone())
    );
    for upn in [
        "Ada.Lovelace@Example.com",
        "ada.lovelace@example.com",
        "ADA.LOVELACE@EXAMPLE.COM",
    ] {
        assert_eq!(
            store.get_by_upn(PROVIDER, TID, upn).await.unwrap(),
            Some(ada.clone()),
            "lookup by {upn}"
        );
    }

    // Overwrite: a rotated refresh token and new access token replace the old ones.
    let ada2 = UserTokens {
        access_token: unique("AT"),
        access_token_expires_at: 1_900_000_100,
        scopes: vec!["Mail.Read".into(), "User.Read".into()],
        refresh_token: unique("RT"),
        refresh_token_expires_at: FAR_FUTURE + 1,
        ..ada.clone()
    };
    store.put(PROVIDER, &ada2).await.unwrap();
    assert_eq!(
        store.get_by_oid(PROVIDER, "ada").await.unwrap(),
        Some(ada2.clone())
    );
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "ada.lovelace@example.com")
            .await
            .unwrap(),
        Some(ada2.clone())
    );

    // Providers are separate namespaces, even for the same oid and UPN.
    assert_eq!(store.get_by_oid("other", "ada").await.unwrap(), None);
    assert_eq!(
        store
            .get_by_upn("other", TID, "ada.lovelace@example.com")
            .await
            .unwrap(),
        None
    );
    let other_ada = user("ada", Some("ada.lovelace@example.com"));
    store.put("other", &other_ada).await.unwrap();
    assert_eq!(
        store.get_by_oid("other", "ada").await.unwrap(),
        Some(other_ada.clone())
    );
    assert_eq!(
        store.get_by_oid(PROVIDER, "ada").await.unwrap(),
        Some(ada2.clone())
    );
    assert!(store.delete("other", "ada").await.unwrap());
    assert_eq!(store.get_by_oid("other", "ada").await.unwrap(), None);
    assert_eq!(
        store.get_by_oid(PROVIDER, "ada").await.unwrap(),
        Some(ada2.clone())
    );
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "ada.lovelace@example.com")
            .await
            .unwrap(),
        Some(ada2.clone())
    );

    // A UPN change: the old UPN no longer finds the user.
    let ada3 = UserTokens {
        upn: Some("ada@example.org".into()),
        ..ada2.clone()
    };
    store.put(PROVIDER, &ada3).await.unwrap();
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "ada.lovelace@example.com")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "ADA@example.org")
            .await
            .unwrap(),
        Some(ada3.clone())
    );

    // Issue 19: a second account (another oid) with the same tenant and UPN does not take the
    // UPN over, not at its login and not at a refresh of its tokens: the first user keeps it,
    // the second is found by oid only.
    let first = user("first", Some("shared@example.com"));
    let second = user("second", Some("Shared@Example.com"));
    store.put(PROVIDER, &first).await.unwrap();
    store.put(PROVIDER, &second).await.unwrap();
    let by_shared_upn = async |tid: &str| {
        store
            .get_by_upn(PROVIDER, tid, "shared@example.com")
            .await
            .unwrap()
    };
    assert_eq!(by_shared_upn(TID).await, Some(first.clone()));
    assert_eq!(
        store.get_by_oid(PROVIDER, "second").await.unwrap(),
        Some(second.clone())
    );
    let second = UserTokens {
        access_token: unique("AT"),
        ..second
    };
    store.put(PROVIDER, &second).await.unwrap();
    assert_eq!(by_shared_upn(TID).await, Some(first.clone()));
    assert_eq!(
        store.get_by_oid(PROVIDER, "second").await.unwrap(),
        Some(second.clone())
    );

    // The same UPN in another tenant is another user, with an entry of its own; tenant ids
    // compare without case.
    let elsewhere = UserTokens {
        tid: OTHER_TID.into(),
        ..user("elsewhere", Some("shared@example.com"))
    };
    store.put(PROVIDER, &elsewhere).await.unwrap();
    assert_eq!(by_shared_upn(OTHER_TID).await, Some(elsewhere.clone()));
    assert_eq!(
        by_shared_upn(&OTHER_TID.to_uppercase()).await,
        Some(elsewhere.clone())
    );
    assert_eq!(by_shared_upn(TID).await, Some(first.clone()));
    assert_eq!(by_shared_upn("another-tenant").await, None);

    // Deleting the first user frees the entry; the second claims it at its next put, and
    // deleting the first again (gone) takes nothing from the second.
    assert!(store.delete(PROVIDER, "first").await.unwrap());
    assert_eq!(by_shared_upn(TID).await, None);
    store.put(PROVIDER, &second).await.unwrap();
    assert_eq!(by_shared_upn(TID).await, Some(second.clone()));
    assert!(!store.delete(PROVIDER, "first").await.unwrap());
    assert_eq!(by_shared_upn(TID).await, Some(second.clone()));
    assert!(store.delete(PROVIDER, "elsewhere").await.unwrap());
    assert_eq!(by_shared_upn(OTHER_TID).await, None);

    // A user without a UPN is found by oid only.
    let no_upn = user("no-upn", None);
    store.put(PROVIDER, &no_upn).await.unwrap();
    assert_eq!(
        store.get_by_oid(PROVIDER, "no-upn").await.unwrap(),
        Some(no_upn)
    );

    // Delete removes both lookups, once.
    assert!(store.delete(PROVIDER, "ada").await.unwrap());
    assert_eq!(store.get_by_oid(PROVIDER, "ada").await.unwrap(), None);
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "ada@example.org")
            .await
            .unwrap(),
        None
    );
    assert!(!store.delete(PROVIDER, "ada").await.unwrap());

    // A record whose refresh token has expired is gone, whether stored expired or overwritten
    // with an expired one.
    let expired = UserTokens {
        refresh_token_expires_at: now() - 10,
        ..user("expired", Some("expired@example.com"))
    };
    store.put(PROVIDER, &expired).await.unwrap();
    assert_eq!(store.get_by_oid(PROVIDER, "expired").await.unwrap(), None);
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "expired@example.com")
            .await
            .unwrap(),
        None
    );
    store.put(PROVIDER, &second).await.unwrap();
    let second_expired = UserTokens {
        refresh_token_expires_at: now() - 10,
        ..second.clone()
    };
    store.put(PROVIDER, &second_expired).await.unwrap();
    assert_eq!(store.get_by_oid(PROVIDER, "second").await.unwrap(), None);
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "shared@example.com")
            .await
            .unwrap(),
        None
    );

    // Nothing is sealed under an old key, so there is nothing to rotate.
    assert_eq!(store.rotate_keys().await.unwrap(), 0);
}

#[tokio::test]
async fn memory_suite() {
    let cfg = StoreConfig {
        kind: StoreKind::Memory,
        ..StoreConfig::default()
    };
    suite(tollgate::store::open(&cfg).await.unwrap(), "memory").await;
    suite(Arc::new(MemoryStore::new().unwrap()), "memory").await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_suite_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_config(dir.path(), &write_keys(dir.path(), "keys", &[&keygen()]));
    suite(tollgate::store::open(&cfg).await.unwrap(), "sqlite").await;

    let kept = user("kept", Some("kept@example.com"));
    tollgate::store::open(&cfg)
        .await
        .unwrap()
        .put(PROVIDER, &kept)
        .await
        .unwrap();
    let reopened = tollgate::store::open(&cfg).await.unwrap();
    assert_eq!(
        reopened.get_by_oid(PROVIDER, "kept").await.unwrap(),
        Some(kept.clone())
    );
    assert_eq!(
        reopened
            .get_by_upn(PROVIDER, TID, "KEPT@example.com")
            .await
            .unwrap(),
        Some(kept)
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_suite() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = redis_config(&server, &write_keys(dir.path(), "keys", &[&keygen()]));
    suite(tollgate::store::open(&cfg).await.unwrap(), "redis").await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_entries_expire_with_the_refresh_token() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (store, _dir) = redis_store(&server, Duration::from_secs(2)).await;
    let ada = user("ada", Some("Ada@Example.com"));
    store.put(PROVIDER, &ada).await.unwrap();

    let mut raw = server.raw().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "record and UPN index: {keys:?}");
    for key in keys {
        let expires: i64 = redis::cmd("EXPIRETIME")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(expires, ada.refresh_token_expires_at as i64, "{key}");
    }
}

// ---------------------------------------------------------------------------------------------
// Browser sessions (issue 15), run against every backend.

async fn session_suite(store: Arc<dyn TokenStore>) {
    let key = |id: &str| SessionKey::from_cookie_id(id);
    assert_eq!(
        store.get_session(PROVIDER, &key("none")).await.unwrap(),
        None
    );
    assert!(!store.delete_session(PROVIDER, &key("none")).await.unwrap());
    assert_eq!(
        store
            .end_sessions(PROVIDER, Some("no-sid"), None)
            .await
            .unwrap(),
        0
    );

    // Round trip, claims and all; providers are separate namespaces.
    let t0 = now();
    let a1 = session("ada", Some("sid-a"), t0);
    store.put_session(PROVIDER, &key("a1"), &a1).await.unwrap();
    assert_eq!(
        store.get_session(PROVIDER, &key("a1")).await.unwrap(),
        Some(a1.clone())
    );
    assert_eq!(store.get_session("other", &key("a1")).await.unwrap(), None);
    // Sessions and users do not see each other.
    assert_eq!(store.get_by_oid(PROVIDER, "ada").await.unwrap(), None);

    // Timeouts: one at its idle end, one at its absolute end, one whose idle end is slid by
    // writing it again.
    let idle = SessionRecord {
        idle_expires_at: t0 + 2,
        ..session("ada", None, t0)
    };
    let absolute = SessionRecord {
        expires_at: t0 + 2,
        ..session("ada", None, t0)
    };
    let slid = SessionRecord {
        idle_expires_at: t0 + 2,
        ..session("ada", None, t0)
    };
    for (id, record) in [("idle", &idle), ("absolute", &absolute), ("slid", &slid)] {
        store.put_session(PROVIDER, &key(id), record).await.unwrap();
        assert_eq!(
            store
                .get_session(PROVIDER, &key(id))
                .await
                .unwrap()
                .as_ref(),
            Some(record)
        );
    }
    let slid = SessionRecord {
        idle_expires_at: t0 + 3600,
        ..slid
    };
    store
        .put_session(PROVIDER, &key("slid"), &slid)
        .await
        .unwrap();
    while now() < t0 + 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.get_session(PROVIDER, &key("idle")).await.unwrap(),
        None,
        "idle end"
    );
    assert_eq!(
        store.get_session(PROVIDER, &key("absolute")).await.unwrap(),
        None,
        "lifetime"
    );
    assert_eq!(
        store.get_session(PROVIDER, &key("slid")).await.unwrap(),
        Some(slid)
    );
    // An ended session is gone, not only hidden.
    assert!(!store.delete_session(PROVIDER, &key("idle")).await.unwrap());
    // Writing an ended session removes it.
    let ended = SessionRecord {
        idle_expires_at: t0 - 1,
        ..a1.clone()
    };
    store
        .put_session(PROVIDER, &key("slid"), &ended)
        .await
        .unwrap();
    assert_eq!(
        store.get_session(PROVIDER, &key("slid")).await.unwrap(),
        None
    );

    // Back-channel logout by sid: both sessions of sid-a end, ada's other sid and bob stay.
    let a2 = session("ada", Some("sid-a"), t0);
    let a3 = session("ada", Some("sid-b"), t0);
    let b1 = session("bob", Some("sid-c"), t0);
    for (id, record) in [("a2", &a2), ("a3", &a3), ("b1", &b1)] {
        store.put_session(PROVIDER, &key(id), record).await.unwrap();
    }
    assert_eq!(
        store
            .end_sessions(PROVIDER, Some("sid-a"), None)
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.get_session(PROVIDER, &key("a1")).await.unwrap(), None);
    assert_eq!(store.get_session(PROVIDER, &key("a2")).await.unwrap(), None);
    assert_eq!(
        store.get_session(PROVIDER, &key("a3")).await.unwrap(),
        Some(a3.clone())
    );
    assert_eq!(
        store.get_session(PROVIDER, &key("b1")).await.unwrap(),
        Some(b1.clone())
    );
    assert_eq!(
        store
            .end_sessions(PROVIDER, Some("sid-a"), None)
            .await
            .unwrap(),
        0
    );
    // Another provider's sid of the same name is another session.
    store
        .put_session("other", &key("o1"), &session("ada", Some("sid-b"), t0))
        .await
        .unwrap();

    // sid and sub together: only that subject's session of the sid ends.
    let x_ada = session("ada", Some("sid-x"), t0);
    let x_eve = session("eve", Some("sid-x"), t0);
    store
        .put_session(PROVIDER, &key("x-ada"), &x_ada)
        .await
        .unwrap();
    store
        .put_session(PROVIDER, &key("x-eve"), &x_eve)
        .await
        .unwrap();
    assert_eq!(
        store
            .end_sessions(PROVIDER, Some("sid-x"), Some("sub-ada"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.get_session(PROVIDER, &key("x-ada")).await.unwrap(),
        None
    );
    assert_eq!(
        store.get_session(PROVIDER, &key("x-eve")).await.unwrap(),
        Some(x_eve.clone())
    );

    // By sub alone: every session of that subject ends, with or without a sid.
    let a4 = session("ada", None, t0);
    store.put_session(PROVIDER, &key("a4"), &a4).await.unwrap();
    assert_eq!(
        store
            .end_sessions(PROVIDER, None, Some("sub-ada"))
            .await
            .unwrap(),
        2,
        "a3, a4"
    );
    assert_eq!(store.get_session(PROVIDER, &key("a3")).await.unwrap(), None);
    assert_eq!(store.get_session(PROVIDER, &key("a4")).await.unwrap(), None);
    assert_eq!(
        store.get_session(PROVIDER, &key("b1")).await.unwrap(),
        Some(b1)
    );
    assert_eq!(
        store.get_session(PROVIDER, &key("x-eve")).await.unwrap(),
        Some(x_eve)
    );
    assert!(
        store
            .get_session("other", &key("o1"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.end_sessions(PROVIDER, None, None).await.unwrap(), 0);

    // A write of a session in use does not bring back one a logout ended.
    let u1 = session("ursula", Some("sid-u"), t0);
    store.put_session(PROVIDER, &key("u1"), &u1).await.unwrap();
    let slid_u1 = SessionRecord {
        idle_expires_at: t0 + 7_200,
        ..u1.clone()
    };
    assert!(
        store
            .update_session(PROVIDER, &key("u1"), &slid_u1)
            .await
            .unwrap()
    );
    assert_eq!(
        store.get_session(PROVIDER, &key("u1")).await.unwrap(),
        Some(slid_u1.clone())
    );
    assert_eq!(
        store
            .end_sessions(PROVIDER, Some("sid-u"), None)
            .await
            .unwrap(),
        1
    );
    assert!(
        !store
            .update_session(PROVIDER, &key("u1"), &slid_u1)
            .await
            .unwrap()
    );
    assert_eq!(store.get_session(PROVIDER, &key("u1")).await.unwrap(), None);
    assert!(
        !store
            .update_session(PROVIDER, &key("never"), &u1)
            .await
            .unwrap()
    );

    // Deleting one session; it is then no longer counted by a logout.
    assert!(store.delete_session(PROVIDER, &key("b1")).await.unwrap());
    assert!(!store.delete_session(PROVIDER, &key("b1")).await.unwrap());
    assert_eq!(
        store
            .end_sessions(PROVIDER, Some("sid-c"), None)
            .await
            .unwrap(),
        0
    );

    // Sessions do not disturb the users' records, nor a rotation with one key.
    store
        .put(PROVIDER, &user("ada", Some("ada@example.com")))
        .await
        .unwrap();
    assert!(store.get_by_oid(PROVIDER, "ada").await.unwrap().is_some());
    assert_eq!(store.rotate_keys().await.unwrap(), 0);
}

#[tokio::test]
async fn memory_sessions() {
    session_suite(Arc::new(MemoryStore::new().unwrap())).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_config(dir.path(), &write_keys(dir.path(), "keys", &[&keygen()]));
    session_suite(tollgate::store::open(&cfg).await.unwrap()).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_sessions() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = redis_config(&server, &write_keys(dir.path(), "keys", &[&keygen()]));
    session_suite(tollgate::store::open(&cfg).await.unwrap()).await;
}

/// Two replicas on one Redis share sessions: one sees the other's, a logout through one ends
/// the other's view, and sessions of one subject added at once through both are all indexed
/// (the index is changed by compare-and-swap, so no replica's append is lost).
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replicas_share_sessions_and_logouts() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cfg = redis_config(&server, &write_keys(dir.path(), "keys", &[&keygen()]));
    let one = tollgate::store::open(&cfg).await.unwrap();
    let two = tollgate::store::open(&cfg).await.unwrap();
    let t0 = now();
    let key = SessionKey::from_cookie_id("shared-cookie-id");
    let record = session("ada", Some("sid-shared"), t0);
    one.put_session(PROVIDER, &key, &record).await.unwrap();
    assert_eq!(
        two.get_session(PROVIDER, &key).await.unwrap(),
        Some(record.clone())
    );

    let mut writers = Vec::new();
    for i in 0..48 {
        let store = Arc::clone(if i % 2 == 0 { &one } else { &two });
        writers.push(tokio::spawn(async move {
            let key = SessionKey::from_cookie_id(&format!("many-{i}"));
            let record = session("many", None, t0);
            store.put_session(PROVIDER, &key, &record).await.unwrap();
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    assert_eq!(
        one.end_sessions(PROVIDER, None, Some("sub-many"))
            .await
            .unwrap(),
        48,
        "every concurrent append was kept"
    );

    assert_eq!(
        two.end_sessions(PROVIDER, Some("sid-shared"), None)
            .await
            .unwrap(),
        1
    );
    assert_eq!(one.get_session(PROVIDER, &key).await.unwrap(), None);
    assert_eq!(two.get_session(PROVIDER, &key).await.unwrap(), None);
}

/// Redis drops a session at its end (the earlier of idle and absolute) and an index record with
/// its latest listed session.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_session_keys_expire() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (store, _dir) = redis_store(&server, Duration::from_secs(2)).await;
    let t0 = now();
    let early = session("ada", Some("sid-ttl"), t0);
    let late = SessionRecord {
        expires_at: t0 + 50_000,
        idle_expires_at: t0 + 60_000,
        ..session("ada", Some("sid-ttl"), t0)
    };
    let early_key = SessionKey::from_cookie_id("ttl-early");
    store
        .put_session(PROVIDER, &early_key, &early)
        .await
        .unwrap();
    store
        .put_session(PROVIDER, &SessionKey::from_cookie_id("ttl-late"), &late)
        .await
        .unwrap();

    let mut raw = server.raw().await;
    let expiry = async |raw: &mut redis::aio::MultiplexedConnection, key: &str| -> i64 {
        redis::cmd("EXPIRETIME")
            .arg(key)
            .query_async(raw)
            .await
            .unwrap()
    };
    let session_key = format!(
        "tollgate:tok:{}:{PROVIDER}#session:{}",
        PROVIDER.len() + 8,
        hex(early_key.as_bytes())
    );
    assert_eq!(
        expiry(&mut raw, &session_key).await,
        early.idle_expires_at as i64,
        "the idle end comes first"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tollgate:tok:*#s[iu][db]:*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "the sid and the sub index: {keys:?}");
    for key in keys {
        assert_eq!(
            expiry(&mut raw, &key).await,
            late.expires_at as i64,
            "{key}"
        );
    }
}

/// A session blob copied onto another session's key does not open there: the sealing binds it
/// to its key, so the read is `Corrupt` (reported, like a moved user record), never the other
/// session.
async fn copied_session_does_not_open(store: &dyn TokenStore, copy: impl AsyncFn(&str, &str)) {
    let t0 = now();
    let (mine, theirs) = (
        SessionKey::from_cookie_id("mine"),
        SessionKey::from_cookie_id("theirs"),
    );
    store
        .put_session(PROVIDER, &mine, &session("mallory", None, t0))
        .await
        .unwrap();
    store
        .put_session(PROVIDER, &theirs, &session("ada", None, t0))
        .await
        .unwrap();
    copy(&hex(mine.as_bytes()), &hex(theirs.as_bytes())).await;
    expect_corrupt(store.get_session(PROVIDER, &theirs).await, "copied session");
    assert!(store.delete_session(PROVIDER, &theirs).await.unwrap());
    assert_eq!(store.get_session(PROVIDER, &theirs).await.unwrap(), None);
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_copied_session_does_not_open() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_config(dir.path(), &write_keys(dir.path(), "keys", &[&keygen()]));
    let store = tollgate::store::open(&cfg).await.unwrap();
    let db = cfg.path.clone();
    let copy = async |from: &str, to: &str| {
        let conn = rusqlite::Connection::open(&db).unwrap();
        let rows = conn
            .execute(
                "UPDATE tokens SET record = (SELECT record FROM tokens WHERE oid = ?1) \
                 WHERE oid = ?2",
                [from, to],
            )
            .unwrap();
        assert_eq!(rows, 1);
    };
    copied_session_does_not_open(store.as_ref(), copy).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_copied_session_does_not_open() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (store, _dir) = redis_store(&server, Duration::from_secs(2)).await;
    let copy = async |from: &str, to: &str| {
        let mut raw = server.raw().await;
        let prefix = format!("tollgate:tok:{}:{PROVIDER}#session:", PROVIDER.len() + 8);
        let blob: Vec<u8> = redis::cmd("HGET")
            .arg(format!("{prefix}{from}"))
            .arg("v")
            .query_async(&mut raw)
            .await
            .unwrap();
        let _: i64 = redis::cmd("HSET")
            .arg(format!("{prefix}{to}"))
            .arg("v")
            .arg(blob)
            .query_async(&mut raw)
            .await
            .unwrap();
    };
    copied_session_does_not_open(&store, copy).await;
}

/// `rotate_keys` re-seals sessions and their indexes and moves the indexes to the first key's
/// names: after the old key is retired, sessions open and a logout still finds them.
async fn session_key_rotation(open: impl AsyncFn(&Path) -> Arc<dyn TokenStore>, dir: &Path) {
    let (a, b) = (keygen(), keygen());
    let only_a = write_keys(dir, "sa.keys", &[&a]);
    let only_b = write_keys(dir, "sb.keys", &[&b]);
    let b_then_a = write_keys(dir, "sba.keys", &[&b, &a]);
    let t0 = now();
    let key = |i: usize| SessionKey::from_cookie_id(&format!("rotated-{i}"));
    let records: Vec<SessionRecord> = (0..3)
        .map(|i| session(&format!("user{i}"), Some("sid-rot"), t0))
        .collect();

    let store = open(&only_a).await;
    store.put(PROVIDER, &user("user0", None)).await.unwrap();
    for (i, record) in records.iter().enumerate() {
        store.put_session(PROVIDER, &key(i), record).await.unwrap();
    }
    drop(store);

    let store = open(&b_then_a).await;
    // A session added under B joins the sid's sessions indexed under A.
    let later = session("user3", Some("sid-rot"), t0);
    store.put_session(PROVIDER, &key(3), &later).await.unwrap();
    // 1 user + 3 sessions + the sid index and 3 sub indexes written under A; the sid index
    // under B is new.
    assert_eq!(store.rotate_keys().await.unwrap(), 8);
    assert_eq!(store.rotate_keys().await.unwrap(), 0);
    drop(store);

    let store = open(&only_b).await;
    for (i, record) in records.iter().enumerate() {
        assert_eq!(
            store.get_session(PROVIDER, &key(i)).await.unwrap().as_ref(),
            Some(record)
        );
    }
    assert_eq!(
        store
            .end_sessions(PROVIDER, None, Some("sub-user1"))
            .await
            .unwrap(),
        1,
        "the sub index moved to B"
    );
    assert_eq!(
        store
            .end_sessions(PROVIDER, Some("sid-rot"), None)
            .await
            .unwrap(),
        3,
        "the sid index under A merged into B's"
    );
    assert_eq!(store.get_session(PROVIDER, &key(3)).await.unwrap(), None);
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_session_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tollgate.db");
    let open = async |keys: &Path| {
        let cfg = StoreConfig {
            path: db.clone(),
            ..sqlite_config(dir.path(), keys)
        };
        tollgate::store::open(&cfg).await.unwrap()
    };
    session_key_rotation(open, dir.path()).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_session_key_rotation() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let open = async |keys: &Path| {
        tollgate::store::open(&redis_config(&server, keys))
            .await
            .unwrap()
    };
    session_key_rotation(open, dir.path()).await;
}

// ---------------------------------------------------------------------------------------------
// Nothing at rest reads as a token or a UPN.

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_file_holds_no_token_or_upn() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_config(dir.path(), &write_keys(dir.path(), "keys", &[&keygen()]));
    let store = tollgate::store::open(&cfg).await.unwrap();
    let users = write_secrets(store.as_ref()).await;

    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", cfg.path.display()));
        if let Ok(content) = std::fs::read(&path) {
            bytes.extend(content);
        }
    }
    // The oid is stored in clear (it is the key): finding it proves the bytes hold the records.
    assert!(
        contains(&bytes, users[0].oid.as_bytes()),
        "records not found in the database files"
    );
    assert_no_secrets(&bytes, &users, "sqlite files");
}

/// `#` namespaces the session records (`{provider}#session`): no provider may be named with it.
#[test]
fn a_provider_name_with_a_hash_is_refused() {
    use tollgate::config::{Config, MapEnv};

    let toml = "[[providers]]\nname = \"entra_id#session\"\nclient_id = \"x\"\n\
                well_known_url = \"https://idp.example/.well-known/openid-configuration\"\n";
    let err = Config::from_toml_str(toml, &MapEnv::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("providers[0].name"), "{err}");
    assert!(err.contains("must not contain '#'"), "{err}");
    let fine = toml.replace("entra_id#session", "entra_id-session");
    Config::from_toml_str(&fine, &MapEnv::default()).unwrap();
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_file_holds_no_session_secret() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_config(dir.path(), &write_keys(dir.path(), "keys", &[&keygen()]));
    let store = tollgate::store::open(&cfg).await.unwrap();
    let sessions = write_sessions(store.as_ref()).await;
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let path = PathBuf::from(format!("{}{suffix}", cfg.path.display()));
        if let Ok(content) = std::fs::read(&path) {
            bytes.extend(content);
        }
    }
    assert_no_session_secrets(&bytes, &sessions, "sqlite files");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_holds_no_session_secret() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (store, _dir) = redis_store(&server, Duration::from_secs(2)).await;
    let sessions = write_sessions(&store).await;
    let mut raw = server.raw().await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    let mut bytes = Vec::new();
    for key in keys {
        // Sessions and their indexes are all hashes, like user records.
        let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        for (field, value) in fields {
            bytes.extend(field);
            bytes.extend(value);
        }
        bytes.extend(key);
    }
    assert_no_session_secrets(&bytes, &sessions, "redis keys and values");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_values_hold_no_token_or_upn() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (store, _dir) = redis_store(&server, Duration::from_secs(2)).await;
    let users = write_secrets(&store).await;

    let mut raw = server.raw().await;
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let mut bytes = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut raw)
            .await
            .unwrap();
        match kind.as_str() {
            "string" => {
                let value: Vec<u8> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                bytes.extend(value);
            }
            "hash" => {
                let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut raw)
                    .await
                    .unwrap();
                for (field, value) in fields {
                    bytes.extend(field);
                    bytes.extend(value);
                }
            }
            other => panic!("unexpected redis type {other}"),
        }
        bytes.extend(key);
    }
    assert!(
        contains(&bytes, users[0].oid.as_bytes()),
        "records not found in redis"
    );
    assert_no_secrets(&bytes, &users, "redis keys and values");
}

// ---------------------------------------------------------------------------------------------
// Tampered or moved records are reported, never used, never dropped.

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_tampered_or_moved_records_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = sqlite_config(dir.path(), &write_keys(dir.path(), "keys", &[&keygen()]));
    let store = tollgate::store::open(&cfg).await.unwrap();
    for (oid, upn) in [
        ("victim", "victim@example.com"),
        ("victim2", "victim2@example.com"),
        ("attacker", "attacker@example.com"),
    ] {
        store.put(PROVIDER, &user(oid, Some(upn))).await.unwrap();
    }
    let db = rusqlite::Connection::open(&cfg.path).unwrap();
    let record = |oid: &str| -> Vec<u8> {
        db.query_row("SELECT record FROM tokens WHERE oid = ?1", [oid], |r| {
            r.get(0)
        })
        .unwrap()
    };

    // One flipped byte.
    let mut flipped = record("victim");
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    db.execute(
        "UPDATE tokens SET record = ?1 WHERE oid = 'victim'",
        rusqlite::params![flipped],
    )
    .unwrap();
    expect_corrupt(store.get_by_oid(PROVIDER, "victim").await, "flipped byte");
    expect_corrupt(
        store.get_by_upn(PROVIDER, TID, "victim@example.com").await,
        "flipped byte by upn",
    );
    // Still there, still reported: not silently dropped.
    expect_corrupt(
        store.get_by_oid(PROVIDER, "victim").await,
        "flipped byte, second read",
    );
    let rows: i64 = db
        .query_row(
            "SELECT count(*) FROM tokens WHERE oid = 'victim'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(rows, 1);

    // The attacker's valid blob copied onto another user's row.
    db.execute(
        "UPDATE tokens SET record = ?1 WHERE oid = 'victim2'",
        rusqlite::params![record("attacker")],
    )
    .unwrap();
    expect_corrupt(store.get_by_oid(PROVIDER, "victim2").await, "moved blob");
    expect_corrupt(
        store.get_by_upn(PROVIDER, TID, "victim2@example.com").await,
        "moved blob by upn",
    );

    // The attacker's row copied under another provider.
    db.execute(
        "INSERT INTO tokens (provider, oid, upn_hash, record)
         SELECT 'other', oid, NULL, record FROM tokens WHERE oid = 'attacker'",
        [],
    )
    .unwrap();
    expect_corrupt(
        store.get_by_oid("other", "attacker").await,
        "moved provider",
    );

    // The UPN index of the attacker's row pointed at a victim's UPN.
    let victim_upn: Vec<u8> = db
        .query_row(
            "SELECT upn_hash FROM tokens WHERE oid = 'victim2'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE tokens SET upn_hash = NULL WHERE oid = 'victim2'",
        [],
    )
    .unwrap();
    db.execute(
        "UPDATE tokens SET upn_hash = ?1 WHERE provider = ?2 AND oid = 'attacker'",
        rusqlite::params![victim_upn, PROVIDER],
    )
    .unwrap();
    expect_corrupt(
        store.get_by_upn(PROVIDER, TID, "victim2@example.com").await,
        "re-pointed index",
    );

    // Corrupt records can still be deleted.
    assert!(store.delete(PROVIDER, "victim").await.unwrap());
    assert_eq!(store.get_by_oid(PROVIDER, "victim").await.unwrap(), None);
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_tampered_or_moved_records_are_corrupt() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (store, dir) = redis_store(&server, Duration::from_secs(2)).await;
    let key_line = std::fs::read_to_string(dir.path().join("keys")).unwrap();
    for (oid, upn) in [
        ("victim", "victim@example.com"),
        ("victim2", "victim2@example.com"),
        ("attacker", "attacker@example.com"),
    ] {
        store.put(PROVIDER, &user(oid, Some(upn))).await.unwrap();
    }
    let mut raw = server.raw().await;
    let record_key = |oid: &str| format!("tollgate:tok:{}:{PROVIDER}:{oid}", PROVIDER.len());

    let mut flipped: Vec<u8> = redis::cmd("HGET")
        .arg(record_key("victim"))
        .arg("v")
        .query_async(&mut raw)
        .await
        .unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    let _: () = redis::cmd("HSET")
        .arg(record_key("victim"))
        .arg("v")
        .arg(flipped)
        .query_async(&mut raw)
        .await
        .unwrap();
    expect_corrupt(store.get_by_oid(PROVIDER, "victim").await, "flipped byte");
    expect_corrupt(
        store.get_by_upn(PROVIDER, TID, "victim@example.com").await,
        "flipped byte by upn",
    );
    expect_corrupt(
        store.get_by_oid(PROVIDER, "victim").await,
        "flipped byte, second read",
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg(record_key("victim"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 1, "a corrupt record must not be dropped silently");

    let attacker: Vec<u8> = redis::cmd("HGET")
        .arg(record_key("attacker"))
        .arg("v")
        .query_async(&mut raw)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(record_key("victim2"))
        .arg("v")
        .arg(&attacker)
        .query_async(&mut raw)
        .await
        .unwrap();
    expect_corrupt(store.get_by_oid(PROVIDER, "victim2").await, "moved blob");
    expect_corrupt(
        store.get_by_upn(PROVIDER, TID, "victim2@example.com").await,
        "moved blob by upn",
    );

    // An index re-pointed at the attacker never hands out the attacker's tokens for the victim.
    let index = format!(
        "tollgate:upn:{}:{PROVIDER}:{}",
        PROVIDER.len(),
        index_hex(&key_line, TID, "attacker2@example.com")
    );
    store
        .put(PROVIDER, &user("attacker2", Some("attacker2@example.com")))
        .await
        .unwrap();
    let victim_index = format!(
        "tollgate:upn:{}:{PROVIDER}:{}",
        PROVIDER.len(),
        index_hex(&key_line, TID, "victim3@example.com")
    );
    let _: () = redis::cmd("SET")
        .arg(&victim_index)
        .arg("attacker2")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "victim3@example.com")
            .await
            .unwrap(),
        None
    );
    let own: Option<String> = redis::cmd("GET")
        .arg(&index)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(own.as_deref(), Some("attacker2"));

    assert!(store.delete(PROVIDER, "victim").await.unwrap());
    assert_eq!(store.get_by_oid(PROVIDER, "victim").await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Key rotation: old keys open, the first seals, rotate_keys re-seals everything.

async fn key_rotation(open: impl AsyncFn(&Path) -> Arc<dyn TokenStore>, dir: &Path) {
    let (a, b) = (keygen(), keygen());
    let only_a = write_keys(dir, "a.keys", &[&a]);
    let only_b = write_keys(dir, "b.keys", &[&b]);
    let b_then_a = write_keys(dir, "ba.keys", &[&b, &a]);
    let users: Vec<UserTokens> = (0..3)
        .map(|i| user(&format!("user{i}"), Some(&format!("User{i}@example.com"))))
        .collect();

    let store = open(&only_a).await;
    for u in &users {
        store.put(PROVIDER, u).await.unwrap();
    }
    drop(store);

    // Without A, nothing sealed under A opens.
    let store = open(&only_b).await;
    match store.get_by_oid(PROVIDER, "user0").await {
        Err(StoreError::Corrupt(msg)) => assert!(msg.contains("unknown key id"), "{msg}"),
        other => panic!("expected Corrupt (unknown kid), got {other:?}"),
    }
    // The UPN index is keyed by A too: without A, it finds nothing.
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "user1@example.com")
            .await
            .unwrap(),
        None
    );
    drop(store);

    // With [B, A]: reads work, and a read re-seals under B.
    let store = open(&b_then_a).await;
    assert_eq!(
        store.get_by_oid(PROVIDER, "user0").await.unwrap(),
        Some(users[0].clone())
    );
    // The index written under A is found with B first, and still counts as taken: another
    // account with that UPN, sealed under B, does not take it over.
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "user2@example.com")
            .await
            .unwrap(),
        Some(users[2].clone())
    );
    store
        .put(PROVIDER, &user("intruder", Some("User2@example.com")))
        .await
        .unwrap();
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "user2@example.com")
            .await
            .unwrap(),
        Some(users[2].clone())
    );
    assert!(store.delete(PROVIDER, "intruder").await.unwrap());
    drop(store);
    let store = open(&only_b).await;
    assert_eq!(
        store.get_by_oid(PROVIDER, "user0").await.unwrap(),
        Some(users[0].clone())
    );
    expect_corrupt(store.get_by_oid(PROVIDER, "user1").await, "not yet rotated");
    drop(store);

    // rotate_keys re-seals the rest (the reads above re-sealed user0 and user2), once, and moves
    // every UPN index entry to B.
    let store = open(&b_then_a).await;
    assert_eq!(store.rotate_keys().await.unwrap(), 1);
    assert_eq!(store.rotate_keys().await.unwrap(), 0);
    drop(store);

    let store = open(&only_b).await;
    for u in &users {
        assert_eq!(
            store.get_by_oid(PROVIDER, &u.oid).await.unwrap(),
            Some(u.clone())
        );
        let upn = u.upn.as_deref().unwrap().to_lowercase();
        assert_eq!(
            store.get_by_upn(PROVIDER, TID, &upn).await.unwrap(),
            Some(u.clone())
        );
    }
    drop(store);

    // A record no configured key opens makes rotate_keys fail loudly, after doing the rest.
    let c = keygen();
    let store = open(&write_keys(dir, "c.keys", &[&c])).await;
    store
        .put(PROVIDER, &user("sealed-under-c", None))
        .await
        .unwrap();
    drop(store);
    let store = open(&write_keys(dir, "a-b.keys", &[&a, &b])).await;
    expect_corrupt(
        store.rotate_keys().await,
        "rotation with an unreadable record",
    );
    drop(store);
    let store = open(&only_a).await;
    for u in &users {
        assert_eq!(
            store.get_by_oid(PROVIDER, &u.oid).await.unwrap(),
            Some(u.clone())
        );
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_key_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tollgate.db");
    let open = async |keys: &Path| {
        let cfg = StoreConfig {
            path: db.clone(),
            ..sqlite_config(dir.path(), keys)
        };
        tollgate::store::open(&cfg).await.unwrap()
    };
    key_rotation(open, dir.path()).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_key_rotation() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let open = async |keys: &Path| {
        tollgate::store::open(&redis_config(&server, keys))
            .await
            .unwrap()
    };
    key_rotation(open, dir.path()).await;
}

#[tokio::test]
async fn persistent_store_without_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [StoreKind::Sqlite, StoreKind::Redis] {
        let cfg = StoreConfig {
            kind,
            path: dir.path().join("tollgate.db"),
            url: Some("redis://127.0.0.1:1".into()),
            encryption_keys_file: None,
            ..StoreConfig::default()
        };
        match tollgate::store::open(&cfg).await {
            Err(StoreError::Config(msg)) => {
                assert!(msg.contains("tollgate keygen"), "{kind:?}: {msg}");
                assert!(msg.contains("encryption_keys_file"), "{kind:?}: {msg}");
            }
            Err(other) => panic!("{kind:?}: expected a Config error, got {other:?}"),
            Ok(_) => panic!("{kind:?}: opened without an encryption key"),
        }
    }
    assert!(
        !dir.path().join("tollgate.db").exists(),
        "nothing is created before the key check"
    );

    // A key file without keys is no better than none.
    let empty = write_keys(dir.path(), "empty.keys", &["# no keys yet"]);
    let cfg = sqlite_config(dir.path(), &empty);
    match tollgate::store::open(&cfg).await {
        Err(StoreError::Config(msg)) => assert!(msg.contains("tollgate keygen"), "{msg}"),
        Err(other) => panic!("expected a Config error, got {other:?}"),
        Ok(_) => panic!("opened with an empty key file"),
    }
}

// ---------------------------------------------------------------------------------------------
// The `tollgate keygen` and `tollgate store rotate` commands.

/// The `tollgate` binary with a clean environment (no TOLLGATE_* or AZURE_* from the caller).
#[cfg(all(feature = "server", feature = "dev-idp"))]
fn tollgate_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[cfg(all(feature = "server", feature = "dev-idp"))]
#[test]
fn cli_keygen_prints_one_fresh_key_line() {
    use base64::Engine as _;

    let mut lines = Vec::new();
    for _ in 0..2 {
        let out = tollgate_cli(&["keygen"]);
        assert!(out.status.success(), "{out:?}");
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(stdout.ends_with('\n'), "{stdout:?}");
        let line = stdout.trim_end_matches('\n');
        assert!(!line.contains('\n'), "one line: {stdout:?}");
        let (kid, key) = line.split_once(':').expect("kid:base64");
        assert!(
            !kid.is_empty()
                && kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{kid:?}"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(key)
            .expect("the key is standard base64");
        assert_eq!(key.len(), 32);
        // What the key file takes.
        Sealer::parse(line).unwrap();
        lines.push((kid.to_owned(), key));
    }
    assert_ne!(lines[0].1, lines[1].1, "two runs give two keys");
    assert_ne!(lines[0].0, lines[1].0, "and two key ids");
}

#[cfg(all(feature = "server", feature = "dev-idp", feature = "sqlite"))]
#[tokio::test]
async fn cli_store_rotate_reseals_a_sqlite_store_under_the_first_key() {
    let dir = tempfile::tempdir().unwrap();
    let old = keygen();
    let out = tollgate_cli(&["keygen"]);
    assert!(out.status.success(), "{out:?}");
    let new = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let only_old = write_keys(dir.path(), "old.keys", &[&old]);
    let only_new = write_keys(dir.path(), "new.keys", &[&new]);
    let new_then_old = write_keys(dir.path(), "rotation.keys", &[&new, &old]);
    let db = dir.path().join("tollgate.db");
    let open = async |keys: &Path| {
        tollgate::store::open(&StoreConfig {
            path: db.clone(),
            ..sqlite_config(dir.path(), keys)
        })
        .await
        .unwrap()
    };
    let config = |name: &str, keys: &Path| {
        let path = dir.path().join(name);
        let toml = format!(
            "[store]\nkind = \"sqlite\"\npath = {}\nencryption_keys_file = {}\n",
            serde_json::Value::String(db.display().to_string()),
            serde_json::Value::String(keys.display().to_string()),
        );
        std::fs::write(&path, toml).unwrap();
        path.display().to_string()
    };

    let users: Vec<UserTokens> = (0..3)
        .map(|i| {
            user(
                &format!("cli-user{i}"),
                Some(&format!("Cli{i}@example.com")),
            )
        })
        .collect();
    let store = open(&only_old).await;
    for u in &users {
        store.put(PROVIDER, u).await.unwrap();
    }
    drop(store);

    let rotation = config("rotation.toml", &new_then_old);
    let out = tollgate_cli(&["store", "rotate", "--config", &rotation]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("re-sealed 3 entries"), "{stdout}");

    // Every record now opens with the new key alone, and no longer with the old one.
    let store = open(&only_new).await;
    for u in &users {
        assert_eq!(
            store.get_by_oid(PROVIDER, &u.oid).await.unwrap(),
            Some(u.clone())
        );
        let upn = u.upn.as_deref().unwrap().to_lowercase();
        assert_eq!(
            store.get_by_upn(PROVIDER, TID, &upn).await.unwrap(),
            Some(u.clone())
        );
    }
    drop(store);
    let store = open(&only_old).await;
    expect_corrupt(
        store.get_by_oid(PROVIDER, "cli-user0").await,
        "old key after rotation",
    );
    drop(store);

    // Nothing left to do the second time.
    let out = tollgate_cli(&["store", "rotate", "--config", &rotation]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-sealed 0 entries"),
        "{out:?}"
    );

    // Records no configured key opens make the command fail, so the operator keeps the key.
    let stranger = write_keys(dir.path(), "stranger.keys", &[&keygen()]);
    let out = tollgate_cli(&[
        "store",
        "rotate",
        "--config",
        &config("stranger.toml", &stranger),
    ]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be opened"), "{stderr}");
    let store = open(&only_new).await;
    assert_eq!(
        store.get_by_oid(PROVIDER, "cli-user1").await.unwrap(),
        Some(users[1].clone()),
        "a failed rotation changes nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Durability: every acknowledged put survives SIGKILL.

const KILL9_CHILD_ENV: &str = "TOLLGATE_STORE_KILL9_DIR";

#[cfg(all(feature = "sqlite", unix))]
#[test]
fn sqlite_acknowledged_writes_survive_kill_9() {
    use std::os::unix::process::ExitStatusExt as _;

    let dir = tempfile::tempdir().unwrap();
    write_keys(dir.path(), "keys", &[&keygen()]);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "kill9_child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL9_CHILD_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());

    let mut acked = Vec::new();
    let mut line = String::new();
    while acked.len() < 200 {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 {
            panic!("writer exited after {} acknowledgements", acked.len());
        }
        acked.extend(parse_ack(&line));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "the writer must die by SIGKILL, not finish"
    );
    // Lines already in the pipe were acknowledged before the kill too.
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    acked.extend(rest.lines().filter_map(parse_ack));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = tollgate::store::open(&sqlite_config(dir.path(), &dir.path().join("keys")))
            .await
            .unwrap();
        for i in &acked {
            assert_eq!(
                store
                    .get_by_oid(PROVIDER, &format!("oid-{i}"))
                    .await
                    .unwrap(),
                Some(kill9_tokens(*i)),
                "acknowledged record {i} lost"
            );
        }
    });
}

/// Helper process of `sqlite_acknowledged_writes_survive_kill_9`: writes records and prints each
/// acknowledged one until it is killed. Does nothing unless started by that test.
#[cfg(feature = "sqlite")]
#[test]
#[ignore = "helper process, started by sqlite_acknowledged_writes_survive_kill_9"]
fn kill9_child_writer() {
    let Some(dir) = std::env::var_os(KILL9_CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = tollgate::store::open(&sqlite_config(&dir, &dir.join("keys")))
            .await
            .unwrap();
        let mut out = std::io::stdout();
        // Bounded so an orphaned writer ends on its own.
        for i in 0..100_000u64 {
            store.put(PROVIDER, &kill9_tokens(i)).await.unwrap();
            if writeln!(out, "ACK {i}").and_then(|()| out.flush()).is_err() {
                return;
            }
        }
    });
}

fn kill9_tokens(i: u64) -> UserTokens {
    UserTokens {
        oid: format!("oid-{i}"),
        tid: "tid".into(),
        upn: Some(format!("user{i}@example.com")),
        access_token: format!("access-{i}"),
        access_token_expires_at: 1_900_000_000 + i,
        scopes: vec!["User.Read".into()],
        refresh_token: format!("refresh-{i}"),
        refresh_token_expires_at: FAR_FUTURE,
        sid: None,
    }
}

/// The test harness may print its own text on the same line before the first acknowledgement.
fn parse_ack(line: &str) -> Option<u64> {
    let start = line.find("ACK ")?;
    line[start + 4..].trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Redis outages fail fast and heal.

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_outage_fails_fast_and_reconnects() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let (store, _dir) = redis_store(&server, Duration::from_millis(300)).await;
    let ada = user("ada", Some("ada@example.com"));
    store.put(PROVIDER, &ada).await.unwrap();

    // A frozen server accepts bytes and never answers: only the timeout saves the caller.
    server.signal("STOP");
    expect_unavailable(not_hung(store.ping()).await, "ping, frozen server");
    expect_unavailable(
        not_hung(store.get_by_oid(PROVIDER, "ada")).await,
        "get, frozen server",
    );
    expect_unavailable(
        not_hung(store.put(PROVIDER, &ada)).await,
        "put, frozen server",
    );
    server.signal("CONT");
    not_hung(until_ok(|| store.ping())).await;
    assert_eq!(
        store.get_by_oid(PROVIDER, "ada").await.unwrap(),
        Some(ada.clone())
    );

    // A dead server: refused connections.
    server.stop();
    expect_unavailable(not_hung(store.ping()).await, "ping, server down");
    expect_unavailable(
        not_hung(store.get_by_upn(PROVIDER, TID, "ada@example.com")).await,
        "get, server down",
    );
    expect_unavailable(
        not_hung(store.put(PROVIDER, &ada)).await,
        "put, server down",
    );
    expect_unavailable(
        not_hung(store.delete(PROVIDER, "ada")).await,
        "delete, server down",
    );

    // Back on the same port (empty: persistence is off): the same store reconnects.
    server.restart();
    not_hung(until_ok(|| store.ping())).await;
    store.put(PROVIDER, &ada).await.unwrap();
    assert_eq!(store.get_by_oid(PROVIDER, "ada").await.unwrap(), Some(ada));
}

/// tollgate must start while Redis is down (the proxy and exchange paths do not need it): the
/// store opens, answers Unavailable quickly, and works once Redis is up.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_down_at_open_is_unavailable_then_connects() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    server.stop();
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        timeout: Duration::from_millis(300),
        ..redis_config(&server, &write_keys(dir.path(), "keys", &[&keygen()]))
    };
    let store = not_hung(tollgate::store::open(&cfg))
        .await
        .expect("the Redis store opens while Redis is down");
    let ada = user("ada", Some("ada@example.com"));
    for round in 0..3 {
        expect_unavailable(fast(store.ping()).await, &format!("ping {round}"));
        expect_unavailable(
            fast(store.get_by_oid(PROVIDER, "ada")).await,
            &format!("get by oid {round}"),
        );
        expect_unavailable(
            fast(store.get_by_upn(PROVIDER, TID, "ada@example.com")).await,
            &format!("get by upn {round}"),
        );
        expect_unavailable(
            fast(store.put(PROVIDER, &ada)).await,
            &format!("put {round}"),
        );
        expect_unavailable(
            fast(store.delete(PROVIDER, "ada")).await,
            &format!("delete {round}"),
        );
        expect_unavailable(fast(store.rotate_keys()).await, &format!("rotate {round}"));
    }

    server.restart();
    not_hung(until_ok(|| store.ping())).await;
    store.put(PROVIDER, &ada).await.unwrap();
    assert_eq!(
        store
            .get_by_upn(PROVIDER, TID, "ada@example.com")
            .await
            .unwrap(),
        Some(ada)
    );
}

/// Only a URL that cannot work is refused when the store opens; nothing is asked of Redis.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_bad_url_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(dir.path(), "keys", &[&keygen()]);
    for url in [
        "http://127.0.0.1:6379",
        "redis://",
        "redis://127.0.0.1:6379/not-a-db",
        "not a url",
    ] {
        let cfg = StoreConfig {
            kind: StoreKind::Redis,
            url: Some(url.into()),
            encryption_keys_file: Some(keys.clone()),
            ..StoreConfig::default()
        };
        match not_hung(tollgate::store::open(&cfg)).await {
            Err(StoreError::Config(_)) => {}
            Err(other) => panic!("{url}: expected a Config error, got {other:?}"),
            Ok(_) => panic!("{url}: opened"),
        }
    }
    let cfg = StoreConfig {
        kind: StoreKind::Redis,
        url: None,
        encryption_keys_file: Some(keys),
        ..StoreConfig::default()
    };
    assert!(matches!(
        tollgate::store::open(&cfg).await,
        Err(StoreError::Config(_))
    ));
}

/// `rediss://` (TLS) URLs pass `tollgate check` and open a store; `#insecure`, which would turn
/// off the certificate check, is refused by both.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_tls_urls_are_accepted_and_insecure_is_refused() {
    use tollgate::config::{Config, MapEnv};

    let dir = tempfile::tempdir().unwrap();
    let keys = write_keys(dir.path(), "keys", &[&keygen()]);
    let config = |url: &str| {
        Config::from_toml_str(
            &format!("[store]\nkind = \"redis\"\nurl = \"{url}\"\n"),
            &MapEnv::default(),
        )
    };
    for url in [
        "rediss://127.0.0.1:1",
        "rediss://tollgate:hunter2@cache.example:6380/2",
    ] {
        config(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        let cfg = StoreConfig {
            kind: StoreKind::Redis,
            url: Some(url.into()),
            encryption_keys_file: Some(keys.clone()),
            ..StoreConfig::default()
        };
        not_hung(tollgate::store::open(&cfg))
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
    }
    for (url, why) in [
        ("rediss://127.0.0.1:6380/#insecure", "#insecure"),
        ("http://127.0.0.1:6379", "URL scheme"),
        ("redis://:hunter2@cache:port", "URL"),
    ] {
        let e = config(url).unwrap_err().to_string();
        assert!(e.starts_with("store.url"), "{url}: {e}");
        assert!(e.contains(why), "{url}: {e}");
        assert!(!e.contains("hunter2"), "{url}: {e}");
        let cfg = StoreConfig {
            kind: StoreKind::Redis,
            url: Some(url.into()),
            encryption_keys_file: Some(keys.clone()),
            ..StoreConfig::default()
        };
        match tollgate::store::open(&cfg).await {
            Err(StoreError::Config(msg)) => assert!(!msg.contains("hunter2"), "{msg}"),
            Err(other) => panic!("{url}: expected a Config error, got {other:?}"),
            Ok(_) => panic!("{url}: opened"),
        }
    }
}

/// A real TLS round trip: redis-server with a certificate from a CA made here, tollgate's
/// `store rotate` re-sealing a record over `rediss://`. Without the CA in `SSL_CERT_FILE` the
/// same command fails: the server's certificate is checked.
#[cfg(all(feature = "redis", feature = "server", feature = "dev-idp"))]
#[tokio::test]
async fn redis_tls_round_trip_checks_the_certificate() {
    let pki = tempfile::tempdir().unwrap();
    if !make_test_pki(pki.path()) {
        return;
    }
    let Some(server) = RedisServer::start_tls(pki.path()) else {
        return;
    };
    let tls_port = server.tls_port.expect("a TLS port");
    let file = |name: &str| pki.path().join(name).display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (keygen(), keygen());
    let only_old = write_keys(dir.path(), "old.keys", &[&old]);
    let only_new = write_keys(dir.path(), "new.keys", &[&new]);
    let rotation = write_keys(dir.path(), "rotation.keys", &[&new, &old]);
    let ada = user("ada", Some("ada@example.com"));
    // Written over the plain port, under the old key.
    tollgate::store::open(&redis_config(&server, &only_old))
        .await
        .unwrap()
        .put(PROVIDER, &ada)
        .await
        .unwrap();

    let config = dir.path().join("tls.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nkind = \"redis\"\nurl = \"rediss://127.0.0.1:{tls_port}\"\ntimeout = \"1s\"\nencryption_keys_file = {}\n",
            serde_json::Value::String(rotation.display().to_string())
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let rotate = |ca: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(["store", "rotate", "--config", &config])
            .env_clear()
            .stdin(Stdio::null());
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        cmd.output().unwrap()
    };

    let untrusted = rotate(None);
    assert!(
        !untrusted.status.success(),
        "an unknown CA must fail the TLS handshake: {untrusted:?}"
    );
    let out = rotate(Some(&file("ca.pem")));
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("re-sealed 1 entries"),
        "{out:?}"
    );
    // The record went through TLS and back: it now opens with the new key alone.
    let store = tollgate::store::open(&redis_config(&server, &only_new))
        .await
        .unwrap();
    assert_eq!(store.get_by_oid(PROVIDER, "ada").await.unwrap(), Some(ada));
}

/// A CA and a server certificate for 127.0.0.1 signed by it (`ca.pem`, `server.pem`,
/// `server.key`), made with the openssl command. `false` (after [`require`]'s notice) without it.
#[cfg(all(feature = "redis", feature = "server", feature = "dev-idp"))]
fn make_test_pki(dir: &Path) -> bool {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    if !require("openssl") {
        return false;
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName = IP:127.0.0.1\nbasicConstraints = CA:FALSE\nextendedKeyUsage = serverAuth\n",
    )
    .unwrap();
    for args in [
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=tollgate test CA",
        ][..],
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    ] {
        let out = openssl(args).unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    true
}

/// A connection Redis refused to authenticate is not given up for good: once Redis accepts the
/// configured password (its ACLs loaded late, say), the store works without a restart.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_refused_credentials_are_tried_again() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut admin = server.raw().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("not-yet")
        .query_async(&mut admin)
        .await
        .unwrap();
    let url = format!("redis://:s3cret@127.0.0.1:{}", server.port);
    let sealer = Sealer::parse(&keygen()).unwrap();
    let store = tollgate::store::RedisStore::connect(&url, sealer, Duration::from_millis(300))
        .await
        .unwrap();
    for round in 0..3 {
        expect_unavailable(fast(store.ping()).await, &format!("wrong password {round}"));
    }
    // The admin connection is authenticated already and stays so.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("s3cret")
        .query_async(&mut admin)
        .await
        .unwrap();
    not_hung(until_ok(|| store.ping())).await;
    let ada = user("ada", None);
    store.put(PROVIDER, &ada).await.unwrap();
    assert_eq!(store.get_by_oid(PROVIDER, "ada").await.unwrap(), Some(ada));
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn user(oid: &str, upn: Option<&str>) -> UserTokens {
    UserTokens {
        oid: oid.into(),
        tid: TID.into(),
        upn: upn.map(Into::into),
        access_token: unique("AT"),
        access_token_expires_at: 1_900_000_000,
        scopes: vec!["User.Read".into()],
        refresh_token: unique("RT"),
        refresh_token_expires_at: FAR_FUTURE,
        sid: Some(unique("sid")),
    }
}

/// A session of `who` (oid `who`, sub `sub-{who}`) that lasts, begun at `t0`.
fn session(who: &str, sid: Option<&str>, t0: u64) -> SessionRecord {
    let mut claims = serde_json::Map::new();
    claims.insert("name".into(), who.into());
    claims.insert("roles".into(), serde_json::json!(["reader"]));
    SessionRecord {
        oid: who.into(),
        sub: format!("sub-{who}"),
        sid: sid.map(Into::into),
        claims,
        scopes: vec!["openid".into(), "offline_access".into()],
        id_token: unique("IDT"),
        created_at: t0,
        expires_at: t0 + 36_000,
        idle_expires_at: t0 + 3_600,
        access_expires_at: t0 + 3_600,
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn write_keys(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn sqlite_config(dir: &Path, keys: &Path) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::Sqlite,
        path: dir.join("tollgate.db"),
        encryption_keys_file: Some(keys.to_owned()),
        ..StoreConfig::default()
    }
}

/// Several users, overwritten once (so older blobs may linger in free pages) and one deleted.
async fn write_secrets(store: &dyn TokenStore) -> Vec<UserTokens> {
    let mut users = Vec::new();
    for i in 0..5 {
        let mut u = user(
            &format!("oid-{i}"),
            Some(&format!("Person.{i}@Contoso.example")),
        );
        u.scopes = vec![format!("api://secret-scope-{i}/Read")];
        store.put(PROVIDER, &u).await.unwrap();
        users.push(u.clone());
        u.access_token = unique("AT");
        u.refresh_token = unique("RT");
        store.put(PROVIDER, &u).await.unwrap();
        users.push(u);
    }
    assert!(store.delete(PROVIDER, "oid-4").await.unwrap());
    users
}

fn assert_no_secrets(bytes: &[u8], users: &[UserTokens], what: &str) {
    for u in users {
        let upn = u.upn.clone().unwrap();
        let needles = [
            ("access token", u.access_token.clone()),
            ("refresh token", u.refresh_token.clone()),
            ("UPN", upn.clone()),
            ("lower-cased UPN", upn.to_lowercase()),
            ("scope", u.scopes[0].clone()),
        ];
        for (name, needle) in needles {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "{what} contain a {name} in clear"
            );
        }
        // Issue 19: nor a hash of the UPN that a dictionary of names could be matched against.
        for hash in unkeyed_hashes(&u.tid, &upn) {
            assert!(
                !contains(bytes, &hash) && !contains(bytes, hex(&hash).as_bytes()),
                "{what} contain an unkeyed hash of a UPN"
            );
        }
    }
}

/// Sessions (cookie id, record) written, one replaced and one deleted, so older blobs may
/// linger in free pages.
async fn write_sessions(store: &dyn TokenStore) -> Vec<(String, SessionRecord)> {
    let t0 = now();
    let mut sessions = Vec::new();
    for i in 0..4 {
        let cookie = unique("cookie");
        let mut record = session(&format!("person{i}"), Some(&unique("sid")), t0);
        record.sub = unique("sub");
        record
            .claims
            .insert("email".into(), format!("person.{i}@contoso.example").into());
        let key = SessionKey::from_cookie_id(&cookie);
        store.put_session(PROVIDER, &key, &record).await.unwrap();
        sessions.push((cookie.clone(), record.clone()));
        record.id_token = unique("IDT");
        record.idle_expires_at += 60;
        store.put_session(PROVIDER, &key, &record).await.unwrap();
        sessions.push((cookie, record));
    }
    let deleted = SessionKey::from_cookie_id(&sessions[6].0);
    assert!(store.delete_session(PROVIDER, &deleted).await.unwrap());
    sessions
}

fn assert_no_session_secrets(bytes: &[u8], sessions: &[(String, SessionRecord)], what: &str) {
    // The session keys are stored in clear (they are the row keys): finding one proves the
    // bytes hold the records.
    let stored_key = hex(SessionKey::from_cookie_id(&sessions[0].0).as_bytes());
    assert!(
        contains(bytes, stored_key.as_bytes()),
        "sessions not found in the {what}"
    );
    for (cookie, record) in sessions {
        let email = record.claims["email"].as_str().unwrap();
        let needles = [
            ("cookie id", cookie.as_str()),
            ("ID token", record.id_token.as_str()),
            ("sub", record.sub.as_str()),
            ("sid", record.sid.as_deref().unwrap()),
            ("email claim", email),
        ];
        for (name, needle) in needles {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "{what} contain a session's {name} in clear"
            );
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The hex UPN index key of (tenant, UPN) under the key of `key_line` (`kid:base64`), derived
/// as documented: HMAC-SHA256 of the length-prefixed tenant and the UPN, keyed by HKDF-SHA256 of
/// the encryption key (no salt, info "tollgate upn index v1").
fn index_hex(key_line: &str, tid: &str, upn: &str) -> String {
    use aws_lc_rs::{hkdf, hmac};
    use base64::Engine as _;

    let (_, encoded) = key_line.trim().split_once(':').unwrap();
    let secret = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let index_key: hmac::Key = hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
        .extract(&secret)
        .expand(&[b"tollgate upn index v1"], hmac::HMAC_SHA256)
        .unwrap()
        .into();
    let tid = tid.to_lowercase();
    let mut input = (tid.len() as u64).to_be_bytes().to_vec();
    input.extend_from_slice(tid.as_bytes());
    input.extend_from_slice(upn.to_lowercase().as_bytes());
    hex(hmac::sign(&index_key, &input).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What an unkeyed hash of the UPN would be: anyone with a list of names could compute it.
fn unkeyed_hashes(tid: &str, upn: &str) -> Vec<Vec<u8>> {
    let sha256 = |b: &[u8]| {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b)
            .as_ref()
            .to_vec()
    };
    let upn = upn.to_lowercase();
    let mut with_tenant = (tid.len() as u64).to_be_bytes().to_vec();
    with_tenant.extend_from_slice(tid.as_bytes());
    with_tenant.extend_from_slice(upn.as_bytes());
    vec![
        sha256(upn.as_bytes()),
        sha256(&with_tenant),
        sha256(format!("{tid}{upn}").as_bytes()),
    ]
}

fn expect_corrupt<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Corrupt(msg)) => {
            // Descriptions must not name the user.
            for oid in ["victim", "attacker", "user0", "user1", "sealed-under-c"] {
                assert!(!msg.contains(oid), "{what}: message names a user: {msg}");
            }
        }
        other => panic!("{what}: expected Corrupt, got {other:?}"),
    }
}

fn expect_unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// A hang detector, not a latency assertion: far above any configured store timeout.
async fn not_hung<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("store call hung instead of failing fast")
}

/// A store call that fails must fail fast: well within ten times the 300 ms store timeout the
/// tests configure, even on a loaded machine.
async fn fast<T>(call: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .expect("store call took far longer than its timeout")
}

async fn until_ok<F, Fut>(mut call: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    while call().await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(feature = "redis")]
fn redis_config(server: &RedisServer, keys: &Path) -> StoreConfig {
    StoreConfig {
        kind: StoreKind::Redis,
        url: Some(server.url()),
        encryption_keys_file: Some(keys.to_owned()),
        ..StoreConfig::default()
    }
}

#[cfg(feature = "redis")]
async fn redis_store(
    server: &RedisServer,
    timeout: Duration,
) -> (tollgate::store::RedisStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let sealer = Sealer::from_key_file(&write_keys(dir.path(), "keys", &[&keygen()])).unwrap();
    let store = tollgate::store::RedisStore::connect(&server.url(), sealer, timeout)
        .await
        .unwrap();
    (store, dir)
}
