//! `tollgate demo` as a newcomer runs it: start the process, do what the printed commands do,
//! check every answer, stop it with SIGINT.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::browser::hidden_inputs;
use support::jwt_claims as claims;

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
        let done = line.contains("/oauth2/sign_out");
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

/// The commands the banner prints under each `# N.` heading, in order.
fn printed_steps(lines: &[String]) -> std::collections::BTreeMap<u32, Vec<String>> {
    let mut steps = std::collections::BTreeMap::new();
    let mut current = None;
    for line in lines {
        if let Some(rest) = line.strip_prefix('#') {
            // `# N. ...` starts step N; another comment line continues the current one.
            if let Some(n) = rest
                .trim_start()
                .split_once('.')
                .and_then(|(n, _)| n.parse::<u32>().ok())
            {
                current = Some(n);
            }
        } else if line.trim().is_empty() {
            current = None;
        } else if let Some(n) = current {
            steps.entry(n).or_insert_with(Vec::new).push(line.clone());
        }
    }
    steps
}

/// Runs one printed line with bash, as a user pasting it would, with `vars` set.
fn shell(line: &str, vars: &[(&str, &str)]) -> String {
    let out = Command::new("bash")
        .args(["-c", line])
        .envs(vars.iter().copied())
        .output()
        .expect("bash runs (and curl is installed: scripts/test installs it)");
    assert!(out.status.success(), "{line}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a printed `VAR=$(...)` line and returns what it put in `var`.
fn shell_var(line: &str, var: &str, vars: &[(&str, &str)]) -> String {
    assert!(line.starts_with(&format!("{var}=")), "{line}");
    let value = shell(&format!("{line}\nprintf '%s' \"${var}\""), vars);
    assert!(!value.is_empty() && !value.contains('{'), "{line}: {value}");
    value
}

/// Runs a printed `curl` line; `curl -i` output gives the status and headers, `curl -s` only
/// the body (status 200 when it is JSON without an `error`).
fn curl(line: &str, vars: &[(&str, &str)]) -> (u16, String, Value) {
    assert!(line.starts_with("curl "), "{line}");
    let out = shell(line, vars);
    if let Some(rest) = out.strip_prefix("HTTP/1.1 ") {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        let status = head[..3].parse().unwrap();
        return (
            status,
            head.to_owned(),
            serde_json::from_str(body).unwrap_or(Value::Null),
        );
    }
    let body: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{line}: {out}"));
    let status = if body.get("error").is_some() {
        400
    } else {
        200
    };
    (status, String::new(), body)
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

#[tokio::test]
async fn demo_commands_work_as_printed() {
    let demo = start_demo();
    let v = |k: &str| demo.vars[k].clone();
    let (public, api, admin, idp, tenant) =
        (v("public"), v("api"), v("admin"), v("idp"), v("tenant"));
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
    let steps = printed_steps(&demo.lines);
    let step = |n: u32| -> &[String] {
        steps
            .get(&n)
            .unwrap_or_else(|| panic!("step {n} printed: {:?}", demo.lines))
    };
    // 1: the printed command gets a user token from the dev IdP.
    let token = shell_var(&step(1)[0], "TOKEN", &[]);
    assert_eq!(claims(&token)["oid"], tollgate_devidp::ALICE_OID);
    let with_token = [("TOKEN", token.as_str())];
    // 2: through tollgate: 200, and the app sees identity headers.
    let (status, headers, echo) = curl(&step(2)[0], &with_token);
    assert_eq!(status, 200, "{headers}");
    assert_eq!(echo["headers"]["x-auth-oid"], tollgate_devidp::ALICE_OID);
    assert_eq!(echo["headers"]["x-auth-scopes"], "access_as_user");
    // The demo gives each request an X-Request-Id: a new UUID, the same for app and client.
    let returned_id = header(&headers, "x-request-id").expect("an X-Request-Id");
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
    // 3: no token: 401 with the bare challenge.
    let (status, headers, _) = curl(&step(3)[0], &[]);
    assert_eq!(status, 401);
    assert_eq!(
        header(&headers, "www-authenticate").as_deref(),
        Some("Bearer realm=\"tollgate\"")
    );
    // 4: a token without the scope: 403 insufficient_scope.
    let read = shell_var(&step(4)[0], "READ", &[]);
    let (status, headers, _) = curl(&step(4)[1], &[("READ", read.as_str())]);
    assert_eq!(status, 403);
    assert!(
        header(&headers, "www-authenticate").is_some_and(|c| c.contains("insufficient_scope")),
        "{headers}"
    );
    // 5: On-Behalf-Of route: the app gets a downstream token, not alice's.
    let (_, _, echo) = curl(&step(5)[0], &with_token);
    let forwarded = echo["headers"]["authorization"]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    assert_ne!(forwarded, token);
    assert_eq!(
        claims(&forwarded)["aud"],
        tollgate_devidp::DOWNSTREAM_CLIENT_ID
    );
    assert_eq!(claims(&forwarded)["oid"], tollgate_devidp::ALICE_OID);
    // 6: the Texas API, which with the login proxy on answers only with its key: the banner
    // prints the key, then client credentials, exchange and introspection, each as printed.
    let api_key = shell_var(&step(6)[0], "API_KEY", &[]);
    assert_eq!(api_key, v("api_key"));
    let with_key = [("TOKEN", token.as_str()), ("API_KEY", api_key.as_str())];
    let r = http
        .post(format!("http://{api}/api/v1/introspect"))
        .form(&[("identity_provider", "entra_id"), ("token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the token API wants its key");
    let [app, exchanged, introspected] = [1, 2, 3].map(|i| curl(&step(6)[i], &with_key));
    assert_eq!(app.0, 200, "{}", app.2);
    assert_eq!(
        claims(app.2["access_token"].as_str().unwrap())["idtyp"],
        "app"
    );
    assert_eq!(exchanged.0, 200, "{}", exchanged.2);
    assert_eq!(exchanged.2["token_type"], "Bearer");
    assert_eq!(
        claims(exchanged.2["access_token"].as_str().unwrap())["oid"],
        tollgate_devidp::ALICE_OID
    );
    assert_eq!(introspected.0, 200);
    assert_eq!(introspected.2["active"], true);
    assert_eq!(introspected.2["oid"], tollgate_devidp::ALICE_OID);
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
    let page = support::get_text(&http, &at_idp).await;
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
    let page = support::get_text(&http, &callback).await;
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
    // 8: delegated tokens by UPN and by oid, each command as printed.
    let delegated = step(8);
    assert_eq!(delegated.len(), 2, "{delegated:?}");
    for command in delegated {
        let (status, _, body) = curl(command, &with_key);
        assert_eq!(status, 200, "{command}: {body}");
        let access_token = body["access_token"].as_str().expect("a delegated token");
        assert_eq!(claims(access_token)["oid"], tollgate_devidp::ALICE_OID);
        secrets.push(access_token.to_owned());
    }
    // 9: TokenX and Maskinporten through the dev IdP, signed with the demo's EC key.
    let [tokenx, maskinporten] = [0, 1].map(|i| curl(&step(9)[i], &with_key));
    assert_eq!(tokenx.0, 200, "{}", tokenx.2);
    let tokenx = claims(tokenx.2["access_token"].as_str().unwrap());
    assert_eq!(tokenx["aud"], "dev-gcp:team:downstream");
    assert_eq!(tokenx["oid"], tollgate_devidp::ALICE_OID);
    assert_eq!(maskinporten.0, 200, "{}", maskinporten.2);
    let maskinporten_token = maskinporten.2["access_token"].as_str().unwrap();
    assert_eq!(claims(maskinporten_token)["scope"], "nav:test/api");
    assert_eq!(
        claims(maskinporten_token)["authorization_details"],
        serde_json::json!([{"type": "urn:altinn:systemuser"}])
    );
    secrets.push(maskinporten_token.to_owned());
    // 10: a session route sends a browser navigation to sign in, back to where it was going.
    let (status, headers, _) = curl(&step(10)[0], &[]);
    assert_eq!(status, 302, "{headers}");
    assert!(headers.contains("/oauth2/start?rd=%2Fapp%2F"), "{headers}");
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
    assert!(!log.contains(tollgate_devidp::TOLLGATE_CLIENT_SECRET));
    // The demo's access log: one line per answered request, with who and why, never a query.
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tollgate::access"))
        .collect();
    let logged = |parts: &[&str]| access.iter().any(|l| parts.iter().all(|p| l.contains(p)));
    let alice = format!("user=\"{}\"", tollgate_devidp::ALICE_OID);
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
