//! `tollgate demo` as a newcomer runs it: start the process, do what the printed commands do,
//! check every answer, stop it with SIGINT.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

struct Demo {
    child: Child,
    vars: HashMap<String, String>,
    lines: Vec<String>,
    /// Everything the demo logged, at trace level for tollgate's own code.
    log: tempfile::NamedTempFile,
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_demo() -> Demo {
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["demo", "--port", "0"])
        .env("RUST_LOG", "tollgate=trace,info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log.reopen().unwrap()))
        .spawn()
        .expect("tollgate demo starts");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let mut vars = HashMap::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) {
        if let Some(rest) = line.strip_prefix("TOLLGATE_DEMO ") {
            for kv in rest.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    vars.insert(k.to_owned(), v.to_owned());
                }
            }
        }
        let done = line.starts_with("curl -s http://") && line.contains("user_oid=");
        lines.push(line);
        if done {
            break;
        }
    }
    assert!(
        vars.contains_key("public"),
        "demo printed its addresses: {lines:?}"
    );
    Demo {
        child,
        vars,
        lines,
        log,
    }
}

fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let unescape = |s: &str| {
        s.replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'")
            .replace("&amp;", "&")
    };
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|chunk| {
            let name = chunk.split("name=\"").nth(1)?.split('"').next()?;
            let value = chunk.split("value=\"").nth(1)?.split('"').next()?;
            Some((name.to_owned(), unescape(value)))
        })
        .collect()
}

fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn demo_commands_work_as_printed() {
    let demo = start_demo();
    let v = |k: &str| demo.vars[k].clone();
    let (public, api, admin, idp, tenant, api_key) = (
        v("public"),
        v("api"),
        v("admin"),
        v("idp"),
        v("tenant"),
        v("api_key"),
    );
    // The printed commands send the API key the banner names.
    let banner_key = format!("API_KEY={api_key}");
    assert!(demo.lines.contains(&banner_key), "{:?}", demo.lines);
    let api_commands: Vec<&String> = demo
        .lines
        .iter()
        .filter(|l| l.starts_with(&format!("curl -s http://{api}/")))
        .collect();
    assert_eq!(api_commands.len(), 5, "{api_commands:?}");
    for command in api_commands {
        assert!(
            command.contains("-H \"Authorization: Bearer $API_KEY\""),
            "{command}"
        );
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for _ in 0..100 {
        if http
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token_for = |scope: &str| {
        let http = http.clone();
        let url = format!("{idp}/{tenant}/oauth2/v2.0/token");
        let scope = scope.to_owned();
        async move {
            let form = [
                ("grant_type", "password"),
                ("client_id", tollgate::devidp::FRONTEND_CLIENT_ID),
                ("username", "alice"),
                ("password", "dev"),
                ("scope", scope.as_str()),
            ];
            let body: Value = http
                .post(url)
                .form(&form)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["access_token"]
                .as_str()
                .expect("the dev IdP issued a token")
                .to_owned()
        }
    };
    // 1-2: a user token passes, the app sees identity headers.
    let token = token_for("api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/access_as_user").await;
    let r = http
        .get(format!("http://{public}/api/hello"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let returned_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echo: Value = r.json().await.unwrap();
    assert_eq!(echo["headers"]["x-auth-oid"], tollgate::devidp::ALICE_OID);
    assert_eq!(echo["headers"]["x-auth-scopes"], "access_as_user");
    // The demo gives each request an X-Request-Id: a new UUID, the same for app and client.
    assert_eq!(echo["headers"]["x-request-id"], returned_id.as_str());
    assert!(uuid::Uuid::try_parse(&returned_id).is_ok(), "{returned_id}");
    // A client's own id is kept; one that is not a sane header value is replaced.
    for (sent, kept) in [("trace-7f3a", true), (&*"x".repeat(200), false)] {
        let r = http
            .get(format!("http://{public}/"))
            .header("x-request-id", sent)
            .send()
            .await
            .unwrap();
        let back = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        let echo: Value = r.json().await.unwrap();
        assert_eq!(echo["headers"]["x-request-id"], back.as_str());
        assert_eq!(back == sent, kept, "{sent}: {back}");
    }
    // 3: no token.
    let r = http
        .get(format!("http://{public}/api/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tollgate\"");
    // 4: a token without the scope.
    let read = token_for("api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/read").await;
    let r = http
        .get(format!("http://{public}/api/hello"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
    // 5: On-Behalf-Of route: the app gets a downstream token, not alice's.
    let echo: Value = http
        .get(format!("http://{public}/obo/hello"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let forwarded = echo["headers"]["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    assert_ne!(forwarded, token);
    assert_eq!(
        claims(&forwarded)["aud"],
        tollgate::devidp::DOWNSTREAM_CLIENT_ID
    );
    assert_eq!(claims(&forwarded)["oid"], tollgate::devidp::ALICE_OID);
    // 6: the Texas API, which with the login proxy on answers only with its key (issue 19).
    let r = http
        .post(format!("http://{api}/api/v1/introspect"))
        .form(&[("identity_provider", "entra_id"), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r: Value = http
        .post(format!("http://{api}/api/v1/token/exchange"))
        .bearer_auth(&api_key)
        .json(&serde_json::json!({"identity_provider": "azuread", "target": "api://eeeeeeee-6666-7777-8888-ffffffffffff/.default", "user_token": token}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["token_type"], "Bearer");
    let r: Value = http
        .post(format!("http://{api}/api/v1/introspect"))
        .bearer_auth(&api_key)
        .form(&[("identity_provider", "entra_id"), ("token", token.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["active"], true);
    // 7: the login flow, as a browser follows it.
    let login_url = demo
        .lines
        .iter()
        .find(|l| l.contains("/oauth2/authorize?"))
        .expect("login URL printed")
        .trim()
        .to_owned();
    let r = http.get(&login_url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let at_idp = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        at_idp.starts_with(&idp) && at_idp.contains("offline_access"),
        "{at_idp}"
    );
    let page = http
        .get(&at_idp)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut form = hidden_inputs(&page);
    form.push(("login".into(), "alice".into()));
    form.push(("password".into(), "dev".into()));
    let action = format!("{idp}/{tenant}/oauth2/v2.0/authorize");
    let r = http.post(action).form(&form).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let callback = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&format!("http://{public}/callback?")),
        "{callback}"
    );
    let page = http
        .get(&callback)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("alice@contoso.example"), "{page}");
    let code = url::Url::parse(&callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.into_owned())
        .expect("the callback carries a code");
    let mut secrets = vec![
        token.clone(),
        read.clone(),
        forwarded.clone(),
        code,
        api_key.clone(),
    ];
    // 8: delegated tokens by UPN and by oid.
    for (k, val, target) in [
        (
            "user_upn",
            "alice@contoso.example",
            "https://graph.microsoft.com/User.Read",
        ),
        (
            "user_oid",
            tollgate::devidp::ALICE_OID,
            "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb/access_as_user",
        ),
    ] {
        let r = http
            .post(format!("http://{api}/api/v1/token/delegated"))
            .bearer_auth(&api_key)
            .form(&[
                ("identity_provider", "entra_id"),
                ("target", target),
                (k, val),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "delegated by {k}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            claims(body["access_token"].as_str().unwrap())["oid"],
            tollgate::devidp::ALICE_OID
        );
        secrets.push(body["access_token"].as_str().unwrap().to_owned());
    }
    // Ctrl-C stops everything.
    let mut demo = demo;
    let pid = demo.child.id();
    Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    let mut stopped = false;
    for _ in 0..100 {
        if demo.child.try_wait().unwrap().is_some() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stopped, "demo stops on SIGINT");
    // Tokens and codes never reach a log, even at trace level: not whole, not their signature.
    let log = std::fs::read_to_string(demo.log.path()).unwrap();
    assert!(
        log.contains("tollgate is serving"),
        "the demo logged to stderr: {log}"
    );
    for secret in &secrets {
        let tail = &secret[secret.len().saturating_sub(24)..];
        assert!(
            !log.contains(tail),
            "a token or code (ending {tail}) appears in the log"
        );
    }
    assert!(!log.contains(tollgate::devidp::TOLLGATE_CLIENT_SECRET));
    // The demo's access log: one line per answered request, with who and why, never a query.
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tollgate::access"))
        .collect();
    let logged = |parts: &[&str]| access.iter().any(|l| parts.iter().all(|p| l.contains(p)));
    let alice = format!("user=\"{}\"", tollgate::devidp::ALICE_OID);
    let with_id = format!("request_id=\"{returned_id}\"");
    for (what, parts) in [
        (
            "the proxied call, with its user",
            vec![
                "listener=\"public\"",
                "method=GET",
                "path=\"/api/hello\"",
                "status=200",
                "route=\"/api\"",
                &alice,
                &with_id,
            ],
        ),
        (
            "the call without a token",
            vec![
                "path=\"/api/hello\"",
                "status=401",
                "error=\"unauthorized\"",
            ],
        ),
        (
            "the call without the scope",
            vec![
                "path=\"/api/hello\"",
                "status=403",
                "error=\"insufficient_scope\"",
            ],
        ),
        (
            "the login callback, without its code",
            vec!["path=\"/callback\"", "status=200"],
        ),
        (
            "the client's own request id",
            vec!["path=\"/\"", "request_id=\"trace-7f3a\""],
        ),
        (
            "the token API",
            vec![
                "listener=\"api\"",
                "method=POST",
                "path=\"/api/v1/token/delegated\"",
                "status=200",
            ],
        ),
    ] {
        assert!(logged(&parts), "{what} is in the access log: {access:#?}");
    }
    assert!(
        access.iter().all(|l| !l.contains('?')),
        "no query is logged: {access:#?}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes when stderr is a file"
    );
}
