//! Configuration loading and `tollgate check`: every bad option is named in the error.

use std::process::Command;

use tollgate::config::{ClientAuthMethod, Config, IdentityHeaders, MapEnv, ProviderGrant};

const PROVIDER: &str = r#"
[[providers]]
name = "entra_id"
well_known_url = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration"
client_id = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
"#;

fn err(toml: &str) -> String {
    match Config::from_toml_str(toml, &MapEnv::default()) {
        Ok(_) => panic!("expected an error for:\n{toml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn defaults_are_the_documented_ones() {
    let cfg = Config::from_toml_str(PROVIDER, &MapEnv::default()).unwrap();
    assert_eq!(cfg.listen.public.to_string(), "0.0.0.0:8080");
    assert_eq!(cfg.listen.api.unwrap().to_string(), "127.0.0.1:7164");
    assert_eq!(cfg.listen.admin.unwrap().to_string(), "127.0.0.1:9090");
    assert_eq!(cfg.listen.max_connections, 10_000);
    assert_eq!(cfg.listen.header_timeout.as_secs(), 30);
    assert_eq!(cfg.listen.idle_timeout.as_secs(), 60);
    assert_eq!(cfg.listen.body_timeout.as_secs(), 60);
    assert_eq!(cfg.listen.h2_keep_alive_interval.as_secs(), 20);
    let p = &cfg.providers[0];
    assert_eq!(p.leeway.as_secs(), 60);
    assert_eq!(p.jwks_refresh.as_secs(), 600);
    assert_eq!(p.jwks_unknown_kid_min_interval.as_secs(), 30);
    assert_eq!(
        p.effective_audiences(),
        vec![
            "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
            "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
        ]
    );
    assert_eq!(cfg.cache.expiry_margin.as_secs(), 120);
}

#[test]
fn every_bad_option_is_named() {
    let cases = [
        (format!("{PROVIDER}\n[listen]\nbogus = 1\n"), "bogus"),
        (
            format!("{PROVIDER}client_capabilities = [\"cp 1\"]\n"),
            "providers[0].client_capabilities",
        ),
        (
            format!("{PROVIDER}\n[upstream]\nurl = \"not a url\"\n"),
            "upstream.url",
        ),
        (
            format!("{PROVIDER}\n[upstream]\ntimeout = \"ten seconds\"\n"),
            "upstream.timeout",
        ),
        (
            PROVIDER.replace("client_id = \"aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb\"", ""),
            "providers[0].client_id",
        ),
        (
            PROVIDER.replace("https://login", "http://login"),
            "providers[0].well_known_url",
        ),
        (
            format!("{PROVIDER}{}", PROVIDER.replace("entra_id", "other"))
                + "\n[[routes]]\npath = \"/\"\n",
            "routes[0].provider",
        ),
        (
            format!("{PROVIDER}\n[[routes]]\npath = \"/\"\nprovider = \"nope\"\n"),
            "routes[0].provider",
        ),
        (
            format!("{PROVIDER}\n[[routes]]\npath = \"api\"\n"),
            "routes[0].path",
        ),
        (
            format!("{PROVIDER}client_secret = \"hunter2\"\n"),
            "providers[0].client_secret",
        ),
        (
            format!("{PROVIDER}algorithms = [\"HS256\"]\n"),
            "providers[0].algorithms",
        ),
        (
            format!("{PROVIDER}allowed_client_ids = [\" \"]\n"),
            "providers[0].allowed_client_ids",
        ),
        (
            format!("{PROVIDER}\n[[routes]]\npath = \"/\"\nallowed_client_ids = [\"\"]\n"),
            "routes[0].allowed_client_ids",
        ),
        (
            format!(
                "{PROVIDER}\n[[routes]]\npath = \"/\"\nauth = \"none\"\nallow_unscoped_tokens = true\n"
            ),
            "routes[0].auth",
        ),
        (
            format!(
                "{PROVIDER}\n[[routes]]\npath = \"/\"\nauth = \"none\"\nallowed_client_ids = [\"x\"]\n"
            ),
            "routes[0].auth",
        ),
        (
            format!("{PROVIDER}issuer = \"https://login.microsoftonline.com/{{tenantid}}/v2.0\"\n"),
            "providers[0].allowed_tenants",
        ),
        (
            format!("{PROVIDER}client_auth = \"private_key_jwt\"\n"),
            "providers[0].client_key_file",
        ),
        (
            format!("{PROVIDER}\n[listen]\napi = \"0.0.0.0:7164\"\n"),
            "listen.api",
        ),
        (
            format!("{PROVIDER}client_credentials_tenant = \"contoso.onmicrosoft.com\"\n"),
            "providers[0].client_credentials_tenant",
        ),
        (
            format!("{PROVIDER}\n[log]\nlevel = \"tollgate=verbose\"\n"),
            "log.level",
        ),
        (
            format!("{PROVIDER}\n[[routes]]\npath = \"/\"\nauth_context = \"c 1\"\n"),
            "routes[0].auth_context",
        ),
        (
            format!(
                "{PROVIDER}\n[[routes]]\npath = \"/\"\nauth = \"none\"\nauth_context = \"c1\"\n"
            ),
            "routes[0].auth",
        ),
        (
            format!(
                "{PROVIDER}\n[[routes]]\npath = \"/\"\nauth = \"none\"\ntoken_in_query = true\n"
            ),
            "routes[0].auth",
        ),
        (
            format!("{PROVIDER}\n[login]\nenabled = true\n"),
            "login.public_url",
        ),
        (
            format!("{PROVIDER}\n[listen]\nmax_connections = 0\n"),
            "listen.max_connections",
        ),
        (
            format!("{PROVIDER}\n[listen]\nheader_timeout = \"0s\"\n"),
            "listen.header_timeout",
        ),
        (
            format!("{PROVIDER}\n[listen]\nidle_timeout = \"0s\"\n"),
            "listen.idle_timeout",
        ),
        (
            format!("{PROVIDER}\n[listen]\nbody_timeout = \"25h\"\n"),
            "listen.body_timeout",
        ),
        (
            format!("{PROVIDER}\n[listen]\nh2_keep_alive_interval = \"0s\"\n"),
            "listen.h2_keep_alive_interval",
        ),
        (
            format!("{PROVIDER}\n[listen]\nidle_timeout = \"soon\"\n"),
            "listen.idle_timeout",
        ),
    ];
    for (toml, option) in cases {
        let e = err(&toml);
        assert!(e.contains(option), "error {e:?} should name {option}");
        assert!(
            !e.contains("hunter2"),
            "secrets never appear in errors: {e}"
        );
    }
}

/// Issue 15: `identity_headers` takes `true`, `false`, `"x-auth"` or `"easyauth"`, on a route or
/// in `[upstream]` (the default of routes without one); anything else is named with the
/// accepted values, and the values print back as they were written.
#[test]
fn identity_headers_take_a_bool_or_a_mode() {
    let cfg = Config::from_toml_str(PROVIDER, &MapEnv::default()).unwrap();
    assert_eq!(cfg.upstream.identity_headers, IdentityHeaders::XAuth);
    let toml = format!(
        "{PROVIDER}\n[upstream]\nidentity_headers = \"easyauth\"\n\
         [[routes]]\npath = \"/a\"\nidentity_headers = true\n\
         [[routes]]\npath = \"/b\"\nidentity_headers = false\n\
         [[routes]]\npath = \"/c\"\nidentity_headers = \"x-auth\"\n\
         [[routes]]\npath = \"/d\"\nidentity_headers = \"easyauth\"\n\
         [[routes]]\npath = \"/e\"\n"
    );
    let cfg = Config::from_toml_str(&toml, &MapEnv::default()).unwrap();
    assert_eq!(cfg.upstream.identity_headers, IdentityHeaders::EasyAuth);
    let modes: Vec<_> = cfg.routes.iter().map(|r| r.identity_headers).collect();
    assert_eq!(
        modes,
        [
            Some(IdentityHeaders::XAuth),
            Some(IdentityHeaders::None),
            Some(IdentityHeaders::XAuth),
            Some(IdentityHeaders::EasyAuth),
            None,
        ]
    );
    let printed = cfg.to_redacted_toml();
    let again = Config::from_toml_str(&printed, &MapEnv::default()).unwrap();
    assert_eq!(again.upstream.identity_headers, IdentityHeaders::EasyAuth);
    let modes_again: Vec<_> = again.routes.iter().map(|r| r.identity_headers).collect();
    assert_eq!(modes_again, modes, "{printed}");

    let env = MapEnv::from([("TOLLGATE_UPSTREAM__IDENTITY_HEADERS", "easyauth")]);
    let cfg = Config::from_toml_str(PROVIDER, &env).unwrap();
    assert_eq!(cfg.upstream.identity_headers, IdentityHeaders::EasyAuth);
    let env = MapEnv::from([("TOLLGATE_UPSTREAM__IDENTITY_HEADERS", "false")]);
    let cfg = Config::from_toml_str(PROVIDER, &env).unwrap();
    assert_eq!(cfg.upstream.identity_headers, IdentityHeaders::None);

    let accepted = "must be true, false, \"x-auth\" or \"easyauth\"";
    for bad in ["\"EasyAuth\"", "\"xauth\"", "\"none\"", "1", "[\"x-auth\"]"] {
        let e = err(&format!(
            "{PROVIDER}\n[[routes]]\npath = \"/\"\n\n[[routes]]\npath = \"/x\"\nidentity_headers = {bad}\n"
        ));
        assert_eq!(
            e,
            format!("routes[1].identity_headers: {accepted}"),
            "{bad}"
        );
        let e = err(&format!(
            "{PROVIDER}\n[upstream]\nidentity_headers = {bad}\n"
        ));
        assert_eq!(e, format!("upstream.identity_headers: {accepted}"), "{bad}");
    }
    let env = MapEnv::from([("TOLLGATE_UPSTREAM__IDENTITY_HEADERS", "yes")]);
    let e = Config::from_toml_str(PROVIDER, &env)
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("upstream.identity_headers: {accepted}"));
}

/// Issue 19: the delegated-token API hands out signed-in users' tokens, so with `[login]` on the
/// token API needs a key, unless the risk is accepted explicitly.
#[test]
fn login_needs_an_api_key_or_an_explicit_opt_out() {
    let login = format!(
        "{PROVIDER}\n[login]\nenabled = true\npublic_url = \"https://app.example\"\nredirect_uris = [\"https://app.example/callback\"]\n"
    );
    let e = err(&login);
    assert!(e.starts_with("api.key_file"), "{e}");
    assert!(
        e.contains("TOLLGATE_API__KEY") && e.contains("allow_unauthenticated_delegated"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("api_key");
    std::fs::write(&key_file, "k3y\n").unwrap();
    let with_file = format!(
        "{login}\n[api]\nkey_file = {}\n",
        serde_json::Value::String(key_file.display().to_string())
    );
    Config::from_toml_str(&with_file, &MapEnv::default()).unwrap();
    Config::from_toml_str(&login, &MapEnv::from([("TOLLGATE_API__KEY", "k3y")])).unwrap();
    let opted_out = format!("{login}\n[api]\nallow_unauthenticated_delegated = true\n");
    let mut cfg = Config::from_toml_str(&opted_out, &MapEnv::default()).unwrap();
    assert!(cfg.api.allow_unauthenticated_delegated);
    // Without a token API listener there is nothing to protect.
    cfg.api.allow_unauthenticated_delegated = false;
    assert!(cfg.validate().is_err());
    cfg.listen.api = None;
    cfg.validate().unwrap();
    let keyed = MapEnv::from([("TOLLGATE_API__KEY", "k3y")]);
    let zero_age = login.replace(
        "enabled = true",
        "enabled = true\nlogout_hint_max_age = \"0s\"",
    );
    let e = Config::from_toml_str(&zero_age, &keyed)
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("login.logout_hint_max_age"), "{e}");
    let cfg = Config::from_toml_str(&login, &keyed).unwrap();
    assert_eq!(cfg.login.logout_hint_max_age.as_secs(), 12 * 3600);
    // Without [login] nothing changes.
    Config::from_toml_str(PROVIDER, &MapEnv::default()).unwrap();
}

#[test]
fn environment_overrides_and_nais_names() {
    let env = MapEnv::from([
        ("TOLLGATE_UPSTREAM__URL", "http://127.0.0.1:4000"),
        ("TOLLGATE_UPSTREAM__TIMEOUT", "7s"),
        ("TOLLGATE_CACHE__OBO_CAPACITY", "42"),
        ("AZURE_APP_CLIENT_ID", "12345"),
        ("AZURE_APP_CLIENT_SECRET", "0123456789"),
        (
            "AZURE_APP_WELL_KNOWN_URL",
            "http://127.0.0.1:9400/t/v2.0/.well-known/openid-configuration",
        ),
        ("AZURE_OPENID_CONFIG_ISSUER", "http://127.0.0.1:9400/t/v2.0"),
        (
            "AZURE_OPENID_CONFIG_JWKS_URI",
            "http://127.0.0.1:9400/t/discovery/v2.0/keys",
        ),
        (
            "AZURE_OPENID_CONFIG_TOKEN_ENDPOINT",
            "http://127.0.0.1:9400/t/oauth2/v2.0/token",
        ),
        ("BIND_ADDRESS", "127.0.0.1:3001"),
    ]);
    let cfg = Config::from_toml_str("", &env).unwrap();
    assert_eq!(cfg.upstream.url.as_str(), "http://127.0.0.1:4000/");
    assert_eq!(cfg.upstream.timeout.as_secs(), 7);
    assert_eq!(cfg.cache.obo_capacity, 42);
    assert_eq!(cfg.listen.api.unwrap().to_string(), "127.0.0.1:3001");
    let p = &cfg.providers[0];
    assert_eq!(p.name, "entra_id");
    assert_eq!(p.client_id, "12345", "numeric-looking ids stay strings");
    assert_eq!(
        p.client_secret.as_ref().unwrap().expose(),
        "0123456789",
        "numeric-looking secrets stay strings"
    );
    assert_eq!(p.issuer.as_deref(), Some("http://127.0.0.1:9400/t/v2.0"));
    assert_eq!(
        p.token_endpoint.as_ref().unwrap().as_str(),
        "http://127.0.0.1:9400/t/oauth2/v2.0/token"
    );
    assert!(
        cfg.provider_named("azuread").is_some(),
        "azuread is an alias of entra_id"
    );
    assert!(!cfg.to_redacted_toml().contains("0123456789"));

    let env = MapEnv::from([("AZURE_APP_JWK", "{\"kty\":\"RSA\"}")]);
    let cfg = Config::from_toml_str(PROVIDER, &env).unwrap();
    assert_eq!(
        cfg.providers[0].client_auth,
        ClientAuthMethod::PrivateKeyJwt
    );
}

#[test]
fn guid_client_ids_are_kept_in_the_lower_case_tokens_carry() {
    let upper = PROVIDER.replace(
        "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
        " AAAAAAAA-0000-1111-2222-BBBBBBBBBBBB ",
    );
    let cfg = Config::from_toml_str(&upper, &MapEnv::default()).unwrap();
    let p = &cfg.providers[0];
    assert_eq!(p.client_id, "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb");
    assert_eq!(
        p.effective_audiences(),
        [
            "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
            "api://aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
        ]
    );
    let env = MapEnv::from([(
        "AZURE_APP_CLIENT_ID",
        "AAAAAAAA-0000-1111-2222-BBBBBBBBBBBB",
    )]);
    let cfg = Config::from_toml_str(PROVIDER, &env).unwrap();
    assert_eq!(
        cfg.providers[0].client_id,
        "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
    );
    // Not a GUID (another IdP's client id): kept exactly as written.
    let other = PROVIDER.replace("aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb", "My-App");
    let cfg = Config::from_toml_str(&other, &MapEnv::default()).unwrap();
    assert_eq!(cfg.providers[0].client_id, "My-App");
}

#[test]
fn check_command_prints_redacted_config_and_fails_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, format!("{PROVIDER}\n[[routes]]\npath = \"/\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(&good)
        .env("AZURE_APP_CLIENT_SECRET", "s3cr3t-value")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("client_secret = \"[redacted]\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("[[routes]]") && stdout.contains("[[providers]]"),
        "{stdout}"
    );
    assert!(!stdout.contains("s3cr3t-value"));

    // Credentials in URLs are redacted too (an upstream behind basic auth, a Redis password).
    let with_userinfo = dir.path().join("userinfo.toml");
    std::fs::write(
        &with_userinfo,
        format!(
            "{PROVIDER}\n[upstream]\nurl = \"http://app:pa55word@127.0.0.1:3000/base\"\n\n[[routes]]\npath = \"/\"\n"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(&with_userinfo)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("pa55word"), "{stdout}");
    assert!(
        stdout.contains("url = \"http://[redacted]@127.0.0.1:3000/base\""),
        "{stdout}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!("{PROVIDER}\n[upstream]\nconnect_timeout = \"soon\"\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("upstream.connect_timeout"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn kubernetes_service_link_variables_do_not_stop_the_start() {
    // What Kubernetes puts in every pod of a namespace with a Service named `tollgate`.
    let links = [
        ("TOLLGATE_SERVICE_HOST", "10.96.0.12"),
        ("TOLLGATE_SERVICE_PORT", "8080"),
        ("TOLLGATE_SERVICE_PORT_HTTP", "8080"),
        ("TOLLGATE_PORT", "tcp://10.96.0.12:8080"),
        ("TOLLGATE_PORT_8080_TCP", "tcp://10.96.0.12:8080"),
        ("TOLLGATE_PORT_8080_TCP_PROTO", "tcp"),
        ("TOLLGATE_PORT_8080_TCP_PORT", "8080"),
        ("TOLLGATE_PORT_8080_TCP_ADDR", "10.96.0.12"),
    ];
    let mut vars = links.to_vec();
    vars.push(("TOLLGATE_LOG__LEVEL", "debug"));
    let env = MapEnv::from_iter(vars.iter().copied());
    let cfg = Config::from_toml_str(PROVIDER, &env).unwrap();
    assert_eq!(cfg.log.level, "debug", "SECTION__KEY names still configure");
    let mut ignored: Vec<&str> = links.iter().map(|(n, _)| *n).collect();
    ignored.sort_unstable();
    assert_eq!(tollgate::config::ignored_env_names(&env), ignored);
    // A misspelt key inside a section is still an error naming it.
    let env = MapEnv::from([("TOLLGATE_LOG__LEVLE", "debug")]);
    let e = Config::from_toml_str(PROVIDER, &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("levle"), "{e}");
    // And the binary starts its checks with them set.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tollgate.toml");
    std::fs::write(&file, format!("{PROVIDER}\n[[routes]]\npath = \"/\"\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(&file)
        .envs(links)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// config.example.toml is a working file whose every value is the built-in default (apart from
/// the placeholders a user must fill in): the documentation cannot drift from the code.
#[test]
fn config_example_parses_and_states_the_defaults() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut example = Config::from_toml_str(&text, &MapEnv::default()).unwrap();
    let defaults = Config::from_toml_str(PROVIDER, &MapEnv::default()).unwrap();
    let (ex, def) = (&mut example.providers[0], &defaults.providers[0]);
    assert_eq!(ex.client_id, "<client-id>");
    ex.client_id = def.client_id.clone();
    ex.well_known_url = def.well_known_url.clone();
    assert_eq!(example.routes.len(), 1);
    assert_eq!(example.routes[0].path, "/");
    example.routes.clear();
    assert_eq!(example.to_redacted_toml(), defaults.to_redacted_toml());
}

/// A route's exchange targets and injected header names are checked at load (and so by
/// `tollgate check`), not refused on every request once the sidecar runs.
#[test]
fn route_exchange_targets_and_header_names_are_checked() {
    let route = |body: &str| format!("{PROVIDER}\n[[routes]]\npath = \"/api/\"\n{body}\n");
    let cases = [
        (r#"obo = "  ""#, "routes[0].obo", "must not be empty"),
        (
            r#"obo = "api://x/.default\n""#,
            "routes[0].obo",
            "control characters",
        ),
        (
            r#"obo_headers = { "X-Graph-Token" = "https://graph.microsoft.com/.default\u0000" }"#,
            "routes[0].obo_headers",
            "control characters",
        ),
        (
            r#"obo_headers = { "X-Graph-Token" = "" }"#,
            "routes[0].obo_headers",
            "must not be empty",
        ),
        (
            r#"obo_headers = { "Upgrade" = "api://x/.default" }"#,
            "routes[0].obo_headers",
            "hop-by-hop",
        ),
        (
            r#"obo_headers = { "Authorization" = "api://x/.default" }"#,
            "routes[0].obo_headers",
            "use `obo`",
        ),
        (
            r#"obo_headers = { "X-Auth-Token" = "api://x/.default" }"#,
            "routes[0].obo_headers",
            "identity headers",
        ),
        (
            r#"obo_headers = { "X-MS-CLIENT-PRINCIPAL-ID" = "api://x/.default" }"#,
            "routes[0].obo_headers",
            "identity headers",
        ),
        (
            r#"obo_headers = { "Host" = "api://x/.default" }"#,
            "routes[0].obo_headers",
            "frames the request",
        ),
        (
            "auth = \"none\"\nobo_headers = { \"X-Graph-Token\" = \"api://x/.default\" }",
            "routes[0].auth",
            "need auth = \"required\"",
        ),
    ];
    for (body, option, why) in cases {
        let e = err(&route(body));
        assert!(
            e.contains(option) && e.contains(why),
            "{body}: error {e:?} should name {option} and say {why:?}"
        );
    }
    let ok = route(
        "obo = \"api://downstream/.default\"\nobo_headers = { \"X-Graph-Token\" = \"https://graph.microsoft.com/.default\" }",
    );
    let cfg = Config::from_toml_str(&ok, &MapEnv::default()).unwrap();
    assert_eq!(
        cfg.routes[0].obo_headers["X-Graph-Token"],
        "https://graph.microsoft.com/.default"
    );
}

/// Found by the `config` fuzz target: an `obo_headers` name is any HTTP token (`.`, `!`, `#`
/// allowed), and `tollgate check` printed it as a bare TOML key, so its output either nested the
/// key, commented out the line or did not parse; a DEL in a string value was printed raw, which
/// TOML refuses too.
#[test]
fn the_redacted_config_is_toml_whatever_the_keys_and_values() {
    let text = format!(
        "{PROVIDER}\n[[routes]]\npath = \"/api\"\nscopes = [\"a\\u007Fb\", \"q\\\"uote\\\\\"]\n\
         [routes.obo_headers]\n\"x-a.b!c#d\" = \"api://x/.default\"\n\"x-plain\" = \"api://y/.default\"\n"
    );
    let cfg = Config::from_toml_str(&text, &MapEnv::default()).unwrap();
    let printed = cfg.to_redacted_toml();
    let table: toml::Table = printed
        .parse()
        .unwrap_or_else(|e| panic!("not TOML: {e}\n{printed}"));
    let route = &table["routes"].as_array().unwrap()[0];
    let headers = route["obo_headers"].as_table().unwrap();
    assert_eq!(headers["x-a.b!c#d"].as_str(), Some("api://x/.default"));
    assert_eq!(headers["x-plain"].as_str(), Some("api://y/.default"));
    let scopes: Vec<_> = route["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(scopes, ["a\u{7f}b", "q\"uote\\"]);
    // And it reads back as the same configuration.
    let again = Config::from_toml_str(&printed, &MapEnv::default()).unwrap();
    assert_eq!(again.to_redacted_toml(), printed);
}

#[test]
fn api_and_admin_listeners_can_be_turned_off() {
    // TOML has no null, so "off" is the only way to say "no listener" in a file or a variable.
    let toml = "[listen]\napi = \"off\"\nadmin = \"OFF\"\n";
    let cfg = Config::from_toml_str(toml, &MapEnv::default()).unwrap();
    assert_eq!((cfg.listen.api, cfg.listen.admin), (None, None));
    // What `tollgate check` prints loads back to the same listeners.
    let printed = cfg.to_redacted_toml();
    assert!(printed.contains("api = \"off\""), "{printed}");
    let again = Config::from_toml_str(&printed, &MapEnv::default()).unwrap();
    assert_eq!((again.listen.api, again.listen.admin), (None, None));

    let env = MapEnv::from([("TOLLGATE_LISTEN__ADMIN", "off")]);
    let cfg = Config::from_toml_str("", &env).unwrap();
    assert_eq!(cfg.listen.admin, None);
    assert_eq!(cfg.listen.api, Some("127.0.0.1:7164".parse().unwrap()));

    let bad = err("[listen]\napi = \"nowhere\"\n");
    assert!(
        bad.contains("listen.api") || bad.contains("nowhere"),
        "{bad}"
    );
    assert!(bad.contains("\"off\""), "{bad}");
}

#[test]
fn azure_workload_identity_variables_give_entra_id_a_federated_credential() {
    const TENANT: &str = "11111111-2222-3333-4444-555555555555";
    let webhook = [
        (
            "AZURE_FEDERATED_TOKEN_FILE",
            "/var/run/secrets/azure/tokens/azure-identity-token",
        ),
        ("AZURE_CLIENT_ID", "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"),
        ("AZURE_TENANT_ID", TENANT),
    ];
    // The webhook's variables alone make the provider, on the public cloud's authority.
    let cfg = Config::from_toml_str("", &MapEnv::from(webhook)).unwrap();
    let p = &cfg.providers[0];
    assert_eq!(p.name, "entra_id");
    assert_eq!(p.client_auth, ClientAuthMethod::Federated);
    assert_eq!(
        p.client_assertion_file.as_deref(),
        Some(std::path::Path::new(webhook[0].1))
    );
    assert_eq!(p.client_id, webhook[1].1);
    assert_eq!(
        p.well_known_url.as_ref().unwrap().as_str(),
        format!("https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration")
    );
    // Another cloud's authority host, with or without the trailing slash.
    let mut sovereign = webhook.to_vec();
    sovereign.push(("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.us/"));
    let cfg = Config::from_toml_str("", &sovereign.iter().copied().collect::<MapEnv>()).unwrap();
    assert!(
        cfg.providers[0]
            .well_known_url
            .as_ref()
            .unwrap()
            .as_str()
            .starts_with(&format!("https://login.microsoftonline.us/{TENANT}/v2.0/"))
    );
    // A credential of the provider's own wins over the webhook's.
    let mut with_secret = webhook.to_vec();
    with_secret.push(("AZURE_APP_CLIENT_SECRET", "s3cr3t"));
    let cfg =
        Config::from_toml_str(PROVIDER, &with_secret.iter().copied().collect::<MapEnv>()).unwrap();
    assert_eq!(
        cfg.providers[0].client_auth,
        ClientAuthMethod::ClientSecretPost
    );
    assert_eq!(cfg.providers[0].client_assertion_file, None);
    // A configured provider keeps its own well-known URL and client id.
    let cfg = Config::from_toml_str(PROVIDER, &MapEnv::from(webhook)).unwrap();
    let p = &cfg.providers[0];
    assert_eq!(p.client_auth, ClientAuthMethod::Federated);
    assert!(
        p.well_known_url
            .as_ref()
            .unwrap()
            .as_str()
            .contains("11111111-2222")
    );
    // Without the ids and without an entra_id provider there is nothing to apply it to.
    let cfg = Config::from_toml_str("", &MapEnv::from([webhook[0]])).unwrap();
    assert!(cfg.providers.is_empty());

    // `tollgate check` says which credential the provider will use.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .current_dir(empty.path())
        .env_remove("TOLLGATE_CONFIG")
        .envs(webhook)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "credential federated assertion from file /var/run/secrets/azure/tokens/azure-identity-token"
        ),
        "{stderr}"
    );
}

#[test]
fn texas_provider_families_are_switched_by_their_enabled_variables() {
    let azure = [
        (
            "AZURE_APP_CLIENT_ID",
            "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
        ),
        (
            "AZURE_APP_WELL_KNOWN_URL",
            "https://login.microsoftonline.com/organizations/v2.0/.well-known/openid-configuration",
        ),
    ];
    let idporten = [
        ("IDPORTEN_ENABLED", "true"),
        ("IDPORTEN_AUDIENCE", "https://my-app.example"),
        (
            "IDPORTEN_WELL_KNOWN_URL",
            "https://idporten.no/.well-known/openid-configuration",
        ),
    ];
    let env: MapEnv = azure.iter().chain(&idporten).copied().collect();
    let cfg = Config::from_toml_str("", &env).unwrap();
    let names: Vec<_> = cfg.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["entra_id", "idporten"]);
    let p = &cfg.providers[1];
    assert_eq!(p.grant, ProviderGrant::IntrospectOnly);
    assert_eq!(p.audiences, ["https://my-app.example"]);
    assert!(p.client_id.is_empty());

    // AZURE_ENABLED=false switches the Azure family off; IDPORTEN_ENABLED other than true too.
    let mut off: Vec<_> = azure.to_vec();
    off.push(("AZURE_ENABLED", "false"));
    off.extend([("IDPORTEN_ENABLED", "false"), idporten[1], idporten[2]]);
    let cfg = Config::from_toml_str("", &off.iter().copied().collect::<MapEnv>()).unwrap();
    assert!(cfg.providers.is_empty());

    // Without a client id, an introspect-only provider needs the audience to check.
    let cfg = Config::from_toml_str("", &MapEnv::from([idporten[0], idporten[2]]));
    let e = cfg.unwrap_err().to_string();
    assert!(e.contains("providers[0].audiences"), "{e}");
    assert!(e.contains("IDPORTEN_AUDIENCE"), "{e}");
    // Any other grant still needs the client id.
    assert!(err("[[providers]]\nwell_known_url = \"https://idp.example/.well-known/openid-configuration\"\naudiences = [\"x\"]\n").contains("providers[0].client_id"));
}

#[tokio::test]
async fn a_server_refuses_a_configuration_built_in_code_that_check_would_refuse() {
    let mut cfg = Config::default();
    cfg.listen.public = "127.0.0.1:0".parse().unwrap();
    cfg.listen.api = None;
    cfg.listen.admin = None;
    cfg.cache.obo_capacity = 0;
    let e = match tollgate::server::Server::bind(cfg).await {
        Ok(_) => panic!("a server started on cache.obo_capacity = 0"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("cache: capacities must be greater than 0"),
        "{e}"
    );
}

#[test]
fn session_options_are_checked_and_named() {
    let session = |extra: &str| {
        format!(
            "{PROVIDER}\n[session]\nenabled = true\npublic_url = \"https://app.example\"\n{extra}"
        )
    };
    let ok = Config::from_toml_str(&session(""), &MapEnv::default()).unwrap();
    assert_eq!(ok.session.cookie_name(), "__Host-tollgate");
    assert_eq!(ok.session.idle_timeout.as_secs(), 3600);
    assert_eq!(ok.session.refresh_margin.as_secs(), 300);
    assert_eq!(
        ok.session.scopes,
        ["openid", "profile", "offline_access"].map(str::to_owned)
    );
    let http =
        format!("{PROVIDER}\n[session]\nenabled = true\npublic_url = \"http://127.0.0.1:8080\"\n");
    let cfg = Config::from_toml_str(&http, &MapEnv::default()).unwrap();
    assert_eq!(cfg.session.cookie_name(), "tollgate");
    for (toml, expected) in [
        (
            format!("{PROVIDER}\n[session]\nenabled = true\n"),
            "session.public_url: required when sessions are enabled",
        ),
        (
            session("").replace("https://app.example", "http://app.example"),
            "session.public_url: must be https (http only on a loopback host): the session cookie is Secure",
        ),
        (
            session("").replace("https://app.example", "https://app.example/sub"),
            "session.public_url: must be an origin (scheme, host and port) without a path",
        ),
        (
            session("scopes = [\"openid\", \"profile\"]"),
            "session.scopes: must include \"openid\" (the sign-in needs an ID token) and \"offline_access\" (the session keeps the user's tokens fresh)",
        ),
        (
            session("cookie_name = \"bad name\""),
            "session.cookie_name: must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        ),
        (
            http.replace(
                "enabled = true",
                "enabled = true\ncookie_name = \"__Host-x\"",
            ),
            "session.cookie_name: a __Host- cookie needs an https public_url",
        ),
        (
            session("refresh_margin = \"11h\""),
            "session.refresh_margin: must be shorter than the lifetime",
        ),
        (
            session("allowed_redirect_hosts = [\"https://docs.example\"]"),
            "session.allowed_redirect_hosts[0]: must be a bare host name (no scheme, port, path or wildcard)",
        ),
        (
            session("provider = \"idporten\""),
            "session.provider: no provider named \"idporten\"",
        ),
        (
            format!("{PROVIDER}\n[[routes]]\npath = \"/\"\nauth = \"session\"\n"),
            "routes[0].auth: \"session\" needs [session] enabled = true",
        ),
    ] {
        assert_eq!(err(&toml), expected, "{toml}");
    }
    // `tollgate check` says sessions are on, where, and with which cookie and store.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("session.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[store]\nkind = \"memory\"\n\n[[routes]]\npath = \"/\"\nauth = \"session\"\n",
            session("")
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("  route /: auth session, provider entra_id"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  sessions at https://app.example/: provider entra_id, cookie __Host-tollgate, lifetime 36000s, idle 3600s, store memory"),
        "{stderr}"
    );
}

#[test]
fn token_x_and_maskinporten_families_make_key_providers_from_the_environment_alone() {
    let jwk = r#"{"kty":"EC","crv":"P-256","kid":"k","x":"x","y":"y","d":"d"}"#;
    let token_x = [
        ("TOKEN_X_ENABLED", "true"),
        ("TOKEN_X_CLIENT_ID", "dev-gcp:team:app"),
        ("TOKEN_X_PRIVATE_JWK", jwk),
        (
            "TOKEN_X_WELL_KNOWN_URL",
            "https://tokenx.dev-gcp.nav.cloud.nais.io/.well-known/oauth-authorization-server",
        ),
        ("TOKEN_X_ISSUER", "https://tokenx.dev-gcp.nav.cloud.nais.io"),
        (
            "TOKEN_X_JWKS_URI",
            "https://tokenx.dev-gcp.nav.cloud.nais.io/jwks",
        ),
        (
            "TOKEN_X_TOKEN_ENDPOINT",
            "https://tokenx.dev-gcp.nav.cloud.nais.io/token",
        ),
    ];
    let maskinporten = [
        ("MASKINPORTEN_ENABLED", "true"),
        ("MASKINPORTEN_CLIENT_ID", "0d4b3c1e-maskinporten-client"),
        ("MASKINPORTEN_CLIENT_JWK", jwk),
        (
            "MASKINPORTEN_WELL_KNOWN_URL",
            "https://test.maskinporten.no/.well-known/oauth-authorization-server",
        ),
        ("MASKINPORTEN_ISSUER", "https://test.maskinporten.no/"),
        ("MASKINPORTEN_JWKS_URI", "https://test.maskinporten.no/jwk"),
        (
            "MASKINPORTEN_TOKEN_ENDPOINT",
            "https://test.maskinporten.no/token",
        ),
    ];
    let env: MapEnv = token_x.iter().chain(&maskinporten).copied().collect();
    let cfg = Config::from_toml_str("", &env).unwrap();
    let names: Vec<_> = cfg.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["tokenx", "maskinporten"]);
    for (p, grant, vars) in [
        (&cfg.providers[0], ProviderGrant::TokenExchange, &token_x),
        (&cfg.providers[1], ProviderGrant::JwtBearer, &maskinporten),
    ] {
        assert_eq!(p.grant, grant);
        assert_eq!(p.client_id, vars[1].1);
        assert_eq!(p.client_auth, ClientAuthMethod::PrivateKeyJwt);
        assert_eq!(p.client_jwk.as_ref().unwrap().expose(), jwk);
        assert_eq!(p.well_known_url.as_ref().unwrap().as_str(), vars[3].1);
        assert_eq!(p.issuer.as_deref(), Some(vars[4].1));
        assert_eq!(p.jwks_uri.as_ref().unwrap().as_str(), vars[5].1);
        assert_eq!(p.token_endpoint.as_ref().unwrap().as_str(), vars[6].1);
        assert!(cfg.provider_named(&p.name).is_some());
    }
    // The private keys never reach the printed configuration.
    assert!(!cfg.to_redacted_toml().contains("\"d\""));

    // Absent or anything but true, a family configures nothing, whatever else is set.
    for enabled in [None, Some("false"), Some("1")] {
        let mut vars: Vec<_> = token_x[1..]
            .iter()
            .chain(&maskinporten[1..])
            .copied()
            .collect();
        if let Some(v) = enabled {
            vars.extend([("TOKEN_X_ENABLED", v), ("MASKINPORTEN_ENABLED", v)]);
        }
        let cfg = Config::from_toml_str("", &vars.into_iter().collect::<MapEnv>()).unwrap();
        assert!(cfg.providers.is_empty(), "{enabled:?}");
    }
    // Enabled without a key: the family names what is missing.
    let e = Config::from_toml_str("", &MapEnv::from([token_x[0], token_x[1], token_x[3]]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("providers[0].client_key_file") && e.contains("TOKEN_X_PRIVATE_JWK"),
        "{e}"
    );
    let e = Config::from_toml_str(
        "",
        &MapEnv::from([maskinporten[0], maskinporten[2], maskinporten[3]]),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("providers[0].client_id") && e.contains("MASKINPORTEN_CLIENT_ID"),
        "{e}"
    );
}

#[test]
fn key_grants_need_private_key_jwt_and_give_only_their_kind_of_token() {
    let provider = |grant: &str, auth: &str| {
        format!(
            "[[providers]]\nname = \"p\"\ngrant = \"{grant}\"\nwell_known_url = \"https://idp.example/.well-known/openid-configuration\"\nclient_id = \"app\"\n{auth}\n"
        )
    };
    for grant in ["token_exchange", "jwt_bearer"] {
        let e = err(&provider(grant, ""));
        assert!(e.contains("providers[0].client_auth"), "{e}");
        assert!(
            e.contains(&format!(
                "grant = \"{grant}\" needs client_auth = \"private_key_jwt\""
            )),
            "{e}"
        );
        let e = err(&provider(grant, "client_auth = \"private_key_jwt\""));
        assert!(e.contains("providers[0].client_key_file"), "{e}");
        let ok = provider(
            grant,
            "client_auth = \"private_key_jwt\"\nclient_jwk_file = \"/run/secrets/jwk.json\"",
        );
        assert!(
            Config::from_toml_str(&ok, &MapEnv::default()).is_ok(),
            "{grant}"
        );
    }
    // A Maskinporten provider gives app tokens: a route cannot exchange user tokens through it.
    let jwt_bearer = provider(
        "jwt_bearer",
        "client_auth = \"private_key_jwt\"\nclient_jwk_file = \"/run/secrets/jwk.json\"",
    );
    for option in [
        "obo = \"nav:test/api\"",
        "obo_headers = { \"X-Token\" = \"nav:test/api\" }",
    ] {
        let e = err(&format!(
            "{jwt_bearer}\n[[routes]]\npath = \"/\"\nauth = \"required\"\n{option}\n"
        ));
        assert!(
            e.contains("routes[0].obo") && e.contains("jwt_bearer"),
            "{e}"
        );
    }
    // A token_exchange provider can: the route's obo is an RFC 8693 exchange.
    let token_exchange = provider(
        "token_exchange",
        "client_auth = \"private_key_jwt\"\nclient_jwk_file = \"/run/secrets/jwk.json\"",
    );
    let route = "[[routes]]\npath = \"/\"\nauth = \"required\"\nobo = \"dev-gcp:team:api\"\n";
    assert!(
        Config::from_toml_str(&format!("{token_exchange}\n{route}"), &MapEnv::default()).is_ok()
    );
}

#[test]
fn cache_max_memory_reads_sizes_and_refuses_what_holds_no_token() {
    let read = |toml: &str, env: &[(&str, &str)]| {
        let env: MapEnv = env.iter().copied().collect();
        Config::from_toml_str(&format!("{PROVIDER}{toml}"), &env)
            .map(|c| c.cache.max_memory.bytes())
    };
    assert_eq!(read("", &[]).unwrap(), 64 << 20, "the default");
    assert_eq!(
        read("[cache]\nmax_memory = \"8MiB\"\n", &[]).unwrap(),
        8 << 20
    );
    assert_eq!(
        read("[cache]\nmax_memory = \"512KiB\"\n", &[]).unwrap(),
        512 << 10
    );
    assert_eq!(
        read("[cache]\nmax_memory = \"1GiB\"\n", &[]).unwrap(),
        1 << 30
    );
    assert_eq!(
        read("[cache]\nmax_memory = 1048576\n", &[]).unwrap(),
        1 << 20
    );
    assert_eq!(
        read("", &[("TOLLGATE_CACHE__MAX_MEMORY", "16MiB")]).unwrap(),
        16 << 20
    );
    let bad = read("[cache]\nmax_memory = \"lots\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(bad.contains("max_memory") && bad.contains("64MiB"), "{bad}");
    let small = read("[cache]\nmax_memory = \"1KiB\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        small.contains("cache") && small.contains("too small"),
        "{small}"
    );
    let negative = read("[cache]\nmax_memory = -1\n", &[])
        .unwrap_err()
        .to_string();
    assert!(negative.contains("max_memory"), "{negative}");
}
