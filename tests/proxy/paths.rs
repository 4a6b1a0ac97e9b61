//! The path tollgate authorises is the path the upstream gets: dot segments, escapes, repeated
//! slashes and letter case cannot move a request from a protected route onto an open one.
//! Requests are written by hand: HTTP clients normalise such paths before sending them.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `GET <target>` as written and returns the status and body.
async fn raw_get(h: &Harness, target: &str, token: Option<&str>) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(h.server.public)
        .await
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {target} HTTP/1.1\r\nHost: app\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let status = text[9..12].parse().unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // One chunk is enough for these small JSON answers.
        body.split_once("\r\n")
            .map_or("", |(_, rest)| rest)
            .rsplit_once("\r\n0\r\n")
            .map_or("", |(b, _)| b)
            .to_owned()
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn dot_segments_escapes_and_case_cannot_reach_a_protected_route_unauthenticated() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let before = h.echo.hits();
    for target in [
        "/public/../needs-role/x",
        "/public/./../needs-role",
        "/public/%2e%2E/needs-role/x",
        "/public//..//needs-role",
        "/%70ublic/%2e%2e/needs-role",
        "//public/../../needs-role",
    ] {
        let (status, body) = raw_get(&h, target, None).await;
        assert_eq!(
            status, 401,
            "{target}: resolves to a route that requires a token"
        );
        assert_eq!(
            body["error"], "unauthorized",
            "{target}: the missing-token answer"
        );
    }
    let token = key.token(&h.idp.issuer(), json!({}));
    for target in ["/NEEDS-ROLE/x", "/Needs-Role", "/public/../Needs-Role/x"] {
        let (status, body) = raw_get(&h, target, Some(&token)).await;
        assert_eq!(
            status, 403,
            "{target}: the role route applies whatever the case"
        );
        assert_eq!(body["error"], "insufficient_scope", "{target}");
    }
    for target in [
        "/public%2F..%2Fneeds-role",
        "/public/a%5c..%5cneeds-role",
        "/public/%zz",
    ] {
        let (status, body) = raw_get(&h, target, None).await;
        assert_eq!(status, 400, "{target}: ambiguous or malformed path refused");
        assert_eq!(body["error"], "invalid_request", "{target}");
    }
    assert_eq!(
        h.echo.hits(),
        before,
        "no refused request reached the upstream"
    );
}

#[tokio::test]
async fn path_parameters_are_refused_before_routing() {
    // Tomcat, Jetty and Spring drop `;params` per segment: each of these is `/needs-role/...` to
    // them, while a prefix match would see `/needs-role;x`, `/public/..;` and so on.
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    let before = h.echo.hits();
    let token = key.token(&h.idp.issuer(), json!({}));
    for target in [
        "/needs-role;x/users",
        "/needs-role;/x",
        "/public/..;/needs-role/x",
        "/public/.;/needs-role",
        "/public;jsessionid=1/x",
        "/needs-role%3Bx/users",
        "/public/..%3b/needs-role/x",
        "/public/%2e%2e;/needs-role",
    ] {
        for sent in [None, Some(token.as_str())] {
            let (status, body) = raw_get(&h, target, sent).await;
            assert_eq!(status, 400, "{target}: a path parameter is refused");
            assert_eq!(body["error"], "invalid_request", "{target}");
            assert!(
                body["error_description"]
                    .as_str()
                    .is_some_and(|d| d.contains(';')),
                "{target}: {body}"
            );
        }
    }
    // A `;` in the query is the query's business.
    let (status, _) = raw_get(&h, "/public/x?a=1;b=2", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        h.echo.hits(),
        before + 1,
        "only the last request was forwarded"
    );
}

#[tokio::test]
async fn the_normalised_path_is_what_the_upstream_receives() {
    let key = TestKey::new("k1");
    let h = harness(&[&key]).await;
    h.wait_ready().await;
    for (target, forwarded) in [
        ("/public/./y?q=%2e.", "/public/y?q=%2e."),
        ("/%70ublic/%7euser/a%c3%a9", "/public/~user/a%C3%A9"),
        ("/needs-role/../public//z", "/public/z"),
        ("/public/y", "/public/y"),
    ] {
        let (status, echo) = raw_get(&h, target, None).await;
        assert_eq!(status, 200, "{target}");
        assert_eq!(echo["path"], forwarded, "{target}");
    }
}
