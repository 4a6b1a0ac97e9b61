//! `tollgate demo`: the dev IdP, an echo app and the sidecar on loopback, with commands to paste.
//!
//! The echo app answers every request with the method, path and headers it received, so the
//! identity headers and the On-Behalf-Of token tollgate injects are visible. It also plays the
//! app's OIDC client for the login flow: its `/callback` redeems the code through tollgate's
//! `/oauth2/token`, which stores the user's tokens for the delegated-token API.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tollgate_devidp as devidp;
use tollgate_devidp::{DevIdp, DevIdpConfig};

use crate::config::{
    AuthMode, ClientAuthMethod, Config, LoginConfig, ProviderConfig, ProviderGrant, RouteConfig,
    Secret, SessionConfig, StoreConfig, StoreKind,
};
use crate::server::Server;

/// The PKCE verifier the demo's login URL is made for (RFC 7636 §4.1: 43+ unreserved chars).
const DEMO_VERIFIER: &str = "tollgate-demo-verifier-0123456789-abcdefghijklmnop";

/// Errors starting the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The dev IdP failed.
    #[error("dev IdP: {0}")]
    DevIdp(#[from] devidp::DevIdpError),
    /// The sidecar failed.
    #[error("sidecar: {0}")]
    Server(#[from] crate::server::ServerError),
    /// The echo app failed.
    #[error("echo app: {0}")]
    Echo(std::io::Error),
}

/// Runs the demo until `shutdown` resolves. `port` is the sidecar's public port (0: any free).
pub async fn run(
    port: u16,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DemoError> {
    let idp = DevIdp::start(DevIdpConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Default::default()
    })
    .await?;
    let tenant = devidp::DEFAULT_TENANT_ID;
    let public = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(DemoError::Echo)?;
    let public_addr = public.local_addr().map_err(DemoError::Echo)?;
    // The sidecar binds its own listener; release the reserved one just before.
    drop(public);
    let public_url = format!("http://{public_addr}");
    let callback = format!("{public_url}/callback");

    let echo_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(DemoError::Echo)?;
    let echo_addr = echo_listener.local_addr().map_err(DemoError::Echo)?;
    let echo = EchoApp {
        tollgate: public_url.clone(),
        callback: callback.clone(),
        http: reqwest::Client::new(),
    };
    let echo_app = Router::new()
        .route("/callback", get(callback_page))
        .fallback(echo_request)
        .with_state(echo);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(echo_listener, echo_app).await {
            tracing::error!(error = %e, "demo echo app stopped");
        }
    });

    // With the login proxy on, the token API needs a key (issue 19): a fresh one per run, shown
    // in the commands below.
    let api_key = format!("demo-{}", uuid::Uuid::new_v4().simple());
    // TokenX and Maskinporten sign with the app's own key: an EC one, registered at the IdP.
    let (public_jwk, private_jwk) = demo_client_key()?;
    idp.register_client_key(devidp::TOLLGATE_CLIENT_ID, public_jwk)?;
    let mut config = demo_config(&idp, public_addr, echo_addr, &public_url, &callback);
    add_key_providers(&mut config, &idp, &private_jwk);
    config.api.key = Some(Secret::new(&api_key));
    let server = Server::bind(config).await?;
    let api = server
        .api_addr()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7164)));
    let admin = server
        .admin_addr()
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 9090)));
    println!(
        "{}",
        instructions(
            &idp.base_url(),
            tenant,
            public_addr,
            api,
            admin,
            &callback,
            &api_key
        )
    );
    let result = server.run(shutdown).await;
    idp.shutdown().await;
    result.map_err(DemoError::from)
}

fn demo_config(
    idp: &devidp::DevIdpHandle,
    public: SocketAddr,
    echo: SocketAddr,
    public_url: &str,
    callback: &str,
) -> Config {
    let tenant = devidp::DEFAULT_TENANT_ID;
    let mut cfg = Config::default();
    cfg.listen.public = public;
    cfg.listen.api = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.listen.admin = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.listen.shutdown_grace = std::time::Duration::from_secs(2);
    // The demo shows each request it answers (never a query, so never a code or state), with
    // the X-Request-Id the app sees too.
    cfg.log.access = true;
    cfg.log.request_id = true;
    cfg.upstream.url =
        url::Url::parse(&format!("http://{echo}")).unwrap_or_else(|_| cfg.upstream.url.clone());
    cfg.providers = vec![ProviderConfig {
        name: "entra_id".into(),
        well_known_url: url::Url::parse(&idp.well_known_url(tenant)).ok(),
        client_id: devidp::TOLLGATE_CLIENT_ID.into(),
        client_secret: Some(Secret::new(devidp::TOLLGATE_CLIENT_SECRET)),
        jwks_refresh: std::time::Duration::from_secs(60),
        ..Default::default()
    }];
    let route = |path: &str, auth: AuthMode| RouteConfig {
        path: path.into(),
        auth,
        ..Default::default()
    };
    cfg.routes = vec![
        RouteConfig {
            scopes: vec!["access_as_user".into()],
            ..route("/api", AuthMode::Required)
        },
        RouteConfig {
            roles: vec!["Writer".into()],
            ..route("/admin", AuthMode::Required)
        },
        RouteConfig {
            obo: Some(format!("{}/.default", devidp::DOWNSTREAM_APP_ID_URI)),
            ..route("/obo", AuthMode::Required)
        },
        // A browser app with no OIDC code: tollgate signs the user in and keeps the session.
        RouteConfig {
            obo: Some(format!("{}/.default", devidp::DOWNSTREAM_APP_ID_URI)),
            ..route("/app", AuthMode::Session)
        },
        route("/", AuthMode::None),
    ];
    cfg.session = SessionConfig {
        enabled: true,
        public_url: url::Url::parse(public_url).ok(),
        ..SessionConfig::default()
    };
    cfg.login = LoginConfig {
        enabled: true,
        provider: None,
        public_url: url::Url::parse(public_url).ok(),
        extra_scopes: vec![format!("{}/User.Read", devidp::GRAPH_APP_ID_URI)],
        redirect_uris: vec![callback.to_owned()],
        post_logout_redirect_uris: vec![public_url.to_owned() + "/"],
        require_pkce: true,
        ..LoginConfig::default()
    };
    cfg.store = StoreConfig {
        kind: StoreKind::Memory,
        ..StoreConfig::default()
    };
    cfg
}

/// A fresh EC P-256 key as (public JWK for the dev IdP, private JWK for tollgate).
fn demo_client_key() -> Result<(Value, String), DemoError> {
    use aws_lc_rs::encoding::AsBigEndian as _;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let failed = || DemoError::DevIdp(devidp::DevIdpError::KeyGeneration);
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|_| failed())?;
    let point = pair.public_key().as_ref();
    let d = pair.private_key().as_be_bytes().map_err(|_| failed())?;
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    };
    // An uncompressed point: 0x04 || x || y, both of the curve's size.
    let coordinates = point.get(1..).unwrap_or_default();
    let (x, y) = coordinates.split_at(coordinates.len() / 2);
    let public = json!({"kty": "EC", "crv": "P-256", "kid": "demo-ec", "x": b64(x), "y": b64(y)});
    let mut private = public.clone();
    private["d"] = Value::String(b64(d.as_ref()));
    Ok((public, private.to_string()))
}

/// `tokenx` (RFC 8693) and `maskinporten` (jwt-bearer grant) beside `entra_id`, as Texas's
/// `TOKEN_X_*` and `MASKINPORTEN_*` families would make them; the routes and the login keep
/// to `entra_id`.
fn add_key_providers(cfg: &mut Config, idp: &devidp::DevIdpHandle, private_jwk: &str) {
    let key_provider = |name: &str, grant| ProviderConfig {
        name: name.into(),
        grant,
        well_known_url: url::Url::parse(&idp.well_known_url(devidp::DEFAULT_TENANT_ID)).ok(),
        client_id: devidp::TOLLGATE_CLIENT_ID.into(),
        client_auth: ClientAuthMethod::PrivateKeyJwt,
        client_jwk: Some(Secret::new(private_jwk)),
        ..Default::default()
    };
    cfg.providers
        .push(key_provider("tokenx", ProviderGrant::TokenExchange));
    cfg.providers
        .push(key_provider("maskinporten", ProviderGrant::JwtBearer));
    for route in &mut cfg.routes {
        if route.auth != AuthMode::None {
            route.provider = Some("entra_id".into());
        }
    }
    cfg.login.provider = Some("entra_id".into());
    cfg.session.provider = Some("entra_id".into());
}

fn instructions(
    idp: &str,
    tenant: &str,
    public: SocketAddr,
    api: SocketAddr,
    admin: SocketAddr,
    callback: &str,
    api_key: &str,
) -> String {
    let token_url = format!("{idp}/{tenant}/oauth2/v2.0/token");
    let client = devidp::TOLLGATE_CLIENT_ID;
    let frontend = devidp::FRONTEND_CLIENT_ID;
    let extract = r#"sed -E 's/.*"access_token":"([^"]+)".*/\1/'"#;
    let challenge = pkce_challenge(DEMO_VERIFIER);
    let login = format!(
        "http://{public}/oauth2/authorize?client_id={client}&response_type=code&redirect_uri={}&scope=openid%20profile%20api%3A%2F%2F{client}%2Faccess_as_user&state=demo-state&nonce=demo-nonce&code_challenge={challenge}&code_challenge_method=S256",
        urlencode(callback)
    );
    format!(
        r#"
tollgate demo is running (Ctrl-C stops everything)
  sidecar public  http://{public}      (routes: /api needs scope access_as_user, /admin needs role Writer,
                                          /obo swaps the token for one for the downstream API,
                                          /app signs browsers in (a session), / is open)
  local token API http://{api}/api/v1/...
  admin           http://{admin}/readyz  /metrics
  dev IdP         {idp}   (users alice, bob, carol; password "dev")
  each request it answers is logged below as a tollgate::access line, with its X-Request-Id
TOLLGATE_DEMO public={public} api={api} admin={admin} idp={idp} tenant={tenant} api_key={api_key}

# 1. Get a user token for alice from the dev IdP:
TOKEN=$(curl -s {token_url} -d grant_type=password -d client_id={frontend} -d username=alice -d password=dev -d scope=api://{client}/access_as_user | {extract})

# 2. Call the app through tollgate: 200, and the app sees X-Auth-* identity headers
curl -i -H "Authorization: Bearer $TOKEN" http://{public}/api/hello

# 3. Without a token: 401 with WWW-Authenticate: Bearer realm="tollgate"
curl -i http://{public}/api/hello

# 4. A token without the access_as_user scope: 403 insufficient_scope
READ=$(curl -s {token_url} -d grant_type=password -d client_id={frontend} -d username=alice -d password=dev -d scope=api://{client}/read | {extract})
curl -i -H "Authorization: Bearer $READ" http://{public}/api/hello

# 5. On-Behalf-Of: the app receives a token for the downstream API instead of alice's
curl -s -H "Authorization: Bearer $TOKEN" http://{public}/obo/hello

# 6. Texas-compatible local token API: client credentials, OBO exchange, introspection.
#    With the login proxy on, the API needs its key (without it: 401):
API_KEY={api_key}
curl -s http://{api}/api/v1/token -H "Authorization: Bearer $API_KEY" -d identity_provider=entra_id -d target=api://eeeeeeee-6666-7777-8888-ffffffffffff/.default
curl -s http://{api}/api/v1/token/exchange -H "Authorization: Bearer $API_KEY" -H 'Content-Type: application/json' -d "{{\"identity_provider\":\"azuread\",\"target\":\"api://eeeeeeee-6666-7777-8888-ffffffffffff/.default\",\"user_token\":\"$TOKEN\"}}"
curl -s http://{api}/api/v1/introspect -H "Authorization: Bearer $API_KEY" -d identity_provider=entra_id -d token=$TOKEN

# 7. Interactive login through tollgate: open this URL in a browser and log in as alice
{login}

# 8. Then fetch a delegated token for alice by UPN or by object id
curl -s http://{api}/api/v1/token/delegated -H "Authorization: Bearer $API_KEY" -d identity_provider=entra_id -d target=https://graph.microsoft.com/User.Read -d user_upn=alice@contoso.example
curl -s http://{api}/api/v1/token/delegated -H "Authorization: Bearer $API_KEY" -d identity_provider=entra_id -d target=api://{client}/access_as_user -d user_oid={oid}

# 9. TokenX (RFC 8693) and Maskinporten (jwt-bearer grant with authorization_details), signed with an EC key
curl -s http://{api}/api/v1/token/exchange -H "Authorization: Bearer $API_KEY" -d identity_provider=tokenx -d target=dev-gcp:team:downstream -d user_token=$TOKEN
curl -s http://{api}/api/v1/token -H "Authorization: Bearer $API_KEY" -d identity_provider=maskinporten -d target=nav:test/api --data-urlencode 'authorization_details=[{{"type":"urn:altinn:systemuser"}}]'

# 10. A browser session for an app with no OIDC code: a navigation without one is sent to sign in
curl -i -H 'Accept: text/html' http://{public}/app/
#    Open http://{public}/app/ in a browser and log in as alice: the echo app shows your X-Auth-*
#    headers and a token for the downstream API. Who is signed in, and signing out:
#    http://{public}/oauth2/userinfo   http://{public}/oauth2/sign_out
"#,
        oid = devidp::ALICE_OID,
    )
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn pkce_challenge(verifier: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crate::util::sha256(verifier.as_bytes()))
}

#[derive(Clone)]
struct EchoApp {
    tollgate: String,
    callback: String,
    http: reqwest::Client,
}

async fn echo_request(req: Request) -> Json<Value> {
    let headers: serde_json::Map<String, Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    Json(
        json!({"method": req.method().as_str(), "path": req.uri().to_string(), "headers": headers}),
    )
}

/// The demo app's OIDC redirect URI: redeems the code through tollgate (which stores the
/// user's tokens) and shows who logged in, never the tokens themselves.
async fn callback_page(
    State(app): State<EchoApp>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(err) = q.get("error") {
        return Html(format!("<h1>Login failed</h1><p>{}</p>", html_escape(err))).into_response();
    }
    let Some(code) = q.get("code") else {
        return Html("<h1>No code</h1>".to_owned()).into_response();
    };
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", app.callback.as_str()),
        ("client_id", devidp::TOLLGATE_CLIENT_ID),
        ("client_secret", devidp::TOLLGATE_CLIENT_SECRET),
        ("code_verifier", DEMO_VERIFIER),
    ];
    let resp = match app
        .http
        .post(format!("{}/oauth2/token", app.tollgate))
        .form(&form)
        .send()
        .await
    {
        Ok(r) => r,
        Err(_) => {
            return Html("<h1>tollgate's token endpoint is unreachable</h1>".to_owned())
                .into_response();
        }
    };
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let claims = body.get("id_token").and_then(Value::as_str).and_then(|t| {
        use base64::Engine;
        let payload = t.split('.').nth(1)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        serde_json::from_slice::<Value>(&bytes).ok()
    });
    match claims {
        Some(c) => Html(format!(
            "<h1>Logged in</h1><p id=\"user\">{}</p><p id=\"oid\">{}</p><p>tollgate stored the tokens: fetch a delegated token with the printed curl command.</p>",
            html_escape(c.get("preferred_username").and_then(Value::as_str).unwrap_or("")),
            html_escape(c.get("oid").and_then(Value::as_str).unwrap_or(""))
        ))
        .into_response(),
        None => Html(format!("<h1>Token request failed</h1><p>{}</p>", html_escape(body.get("error").and_then(Value::as_str).unwrap_or("unknown")))).into_response(),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}
