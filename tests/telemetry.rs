//! OpenTelemetry tracing end to end: an OTLP/HTTP receiver inside the test decodes what
//! tollgate exports (protobuf), tollgate runs in-process in front of an echo upstream with the
//! dev IdP behind an On-Behalf-Of route, and requests carry a known W3C `traceparent`. Plus the
//! `[telemetry]` configuration: the `OTEL_*` variables and the refused values.
//!
//! One exporter and one receiver serve the whole binary (the tracing subscriber is global);
//! each test finds its own spans by the trace id it sent.
#![cfg(feature = "otel")]

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::Value;
use support::Echo;
use tollgate::config::{Config, MapEnv};
use tollgate::server::{RunningServer, Server};
use tollgate::telemetry::Telemetry;
use tollgate_devidp::{
    ALICE, ALICE_OID, DEFAULT_TENANT_ID, DOWNSTREAM_APP_ID_URI, DevIdp, DevIdpConfig, DevIdpHandle,
    FRONTEND_CLIENT_ID, TOLLGATE_APP_ID_URI, TOLLGATE_CLIENT_ID, TOLLGATE_CLIENT_SECRET,
};

/// A span as the receiver decoded it.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    service_name: Option<String>,
}

/// The receiver's address and every span it has been sent.
struct Collector {
    addr: SocketAddr,
    spans: Mutex<Vec<Received>>,
    telemetry: Telemetry,
}

/// The binary's one receiver and exporter, started at first use: the receiver on a thread and
/// runtime of its own (it outlives each test's runtime), the exporter pointed at it and its
/// layer installed as the global subscriber.
fn collector() -> &'static Collector {
    static COLLECTOR: OnceLock<&'static Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = Config::from_toml_str(&telemetry_toml(addr, false), &MapEnv::default()).unwrap();
        let telemetry = Telemetry::start(&cfg.telemetry).unwrap().unwrap();
        let collector: &'static Collector = Box::leak(Box::new(Collector {
            addr,
            spans: Mutex::new(Vec::new()),
            telemetry,
        }));
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(collector.telemetry.layer());
        tracing::subscriber::set_global_default(subscriber).unwrap();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new().route(
                    "/v1/traces",
                    axum::routing::post(move |body: axum::body::Bytes| async move {
                        receive(collector, &body);
                        (
                            [("content-type", "application/x-protobuf")],
                            ExportTraceServiceResponse::default().encode_to_vec(),
                        )
                    }),
                );
                axum::serve(listener, app).await.unwrap();
            });
        });
        collector
    })
}

fn receive(collector: &Collector, body: &[u8]) {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf request");
    let mut spans = collector.spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| text(kv.value.as_ref()?.value.as_ref()?))
        });
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let attributes = span
                    .attributes
                    .iter()
                    .filter_map(|kv| {
                        Some((kv.key.clone(), text(kv.value.as_ref()?.value.as_ref()?)?))
                    })
                    .collect();
                spans.push(Received {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes,
                    service_name: service_name.clone(),
                });
            }
        }
    }
}

fn text(v: &AnyValue) -> Option<String> {
    Some(match v {
        AnyValue::StringValue(s) => s.clone(),
        AnyValue::IntValue(i) => i.to_string(),
        AnyValue::BoolValue(b) => b.to_string(),
        AnyValue::DoubleValue(d) => d.to_string(),
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Collector {
    /// Exports what has ended (the batch exporter's flush, off the runtime: it blocks), then the
    /// spans of `trace_id`.
    async fn trace(&'static self, trace_id: &str) -> Vec<Received> {
        tokio::task::spawn_blocking(move || self.telemetry.flush())
            .await
            .unwrap()
            .unwrap();
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

fn telemetry_toml(collector: SocketAddr, user_attribute: bool) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"http://{collector}\"\nservice_name = \"tollgate-under-test\"\nuser_attribute = {user_attribute}\n"
    )
}

/// A relay in front of the dev IdP's token endpoint that keeps the `traceparent` of each
/// request it passes on: what the IdP was sent.
#[derive(Clone)]
struct TokenRelay {
    url: String,
    traceparents: Arc<Mutex<Vec<String>>>,
}

impl TokenRelay {
    async fn start(token_endpoint: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = TokenRelay {
            url: format!("http://{}/token", listener.local_addr().unwrap()),
            traceparents: Arc::default(),
        };
        let kept = relay.traceparents.clone();
        let http = reqwest::Client::new();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (kept, http, token_endpoint) =
                        (kept.clone(), http.clone(), token_endpoint.clone());
                    async move {
                        if let Some(tp) = headers.get("traceparent") {
                            kept.lock().unwrap().push(tp.to_str().unwrap().to_owned());
                        }
                        let mut req = http.post(&token_endpoint).body(body);
                        for name in ["content-type", "authorization"] {
                            if let Some(v) = headers.get(name) {
                                req = req.header(name, v);
                            }
                        }
                        let resp = req.send().await.unwrap();
                        let status = resp.status().as_u16();
                        let body = resp.bytes().await.unwrap();
                        (
                            axum::http::StatusCode::from_u16(status).unwrap(),
                            [("content-type", "application/json")],
                            body,
                        )
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        relay
    }

    fn traceparents(&self) -> Vec<String> {
        self.traceparents.lock().unwrap().clone()
    }
}

/// A dev IdP (its token endpoint behind a [`TokenRelay`]), an echo upstream and tollgate in
/// front with an On-Behalf-Of route.
struct Stack {
    _idp: DevIdpHandle,
    idp_addr: String,
    relay: TokenRelay,
    _echo: Echo,
    server: RunningServer,
    http: reqwest::Client,
    config: String,
}

impl Stack {
    async fn start(user_attribute: bool) -> Self {
        let collector = collector();
        let idp = DevIdp::start(DevIdpConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
        let echo = Echo::start().await;
        let relay = TokenRelay::start(idp.token_endpoint(DEFAULT_TENANT_ID)).await;
        let config = format!(
            r#"
{listen}
[upstream]
url = "{upstream}"

[[providers]]
name = "entra_id"
well_known_url = "{well_known}"
client_id = "{TOLLGATE_CLIENT_ID}"
token_endpoint = "{token_endpoint}"

[[routes]]
path = "/obo/"
auth = "required"
obo = "{DOWNSTREAM_APP_ID_URI}/.default"

[[routes]]
path = "/"
auth = "required"

{telemetry}
"#,
            listen = support::config::listen("2s"),
            upstream = echo.url(),
            well_known = idp.well_known_url(DEFAULT_TENANT_ID),
            token_endpoint = relay.url,
            telemetry = telemetry_toml(collector.addr, user_attribute),
        );
        let env = MapEnv::from([("AZURE_APP_CLIENT_SECRET", TOLLGATE_CLIENT_SECRET)]);
        let cfg = Config::from_toml_str(&config, &env).unwrap();
        let server = Server::bind(cfg).await.unwrap().spawn();
        let http = reqwest::Client::new();
        let ready = format!("http://{}/readyz", server.admin.unwrap());
        for _ in 0..400 {
            if http.get(&ready).send().await.unwrap().status() == 200 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let idp_addr = idp
            .well_known_url(DEFAULT_TENANT_ID)
            .trim_start_matches("http://")
            .split(['/', ':'])
            .next()
            .unwrap()
            .to_owned();
        Stack {
            _idp: idp,
            idp_addr,
            relay,
            _echo: echo,
            server,
            http,
            config,
        }
    }

    async fn user_token(&self) -> String {
        self._idp
            .password_token(
                ALICE,
                FRONTEND_CLIENT_ID,
                &format!("{TOLLGATE_APP_ID_URI}/access_as_user"),
            )
            .await
            .unwrap()
    }

    /// GETs `path` with `token` and `traceparent`; the echo's view of the request.
    async fn get(&self, path: &str, token: &str, traceparent: &str) -> Value {
        let resp = self
            .http
            .get(format!("http://{}{path}", self.server.public))
            .bearer_auth(token)
            .header("traceparent", traceparent)
            .header("tracestate", "vendor=opaque")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }
}

/// A random 16-byte trace id and 8-byte span id as lower-case hex.
fn ids() -> (String, String) {
    let u = uuid::Uuid::new_v4();
    let trace = u.simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace, span)
}

fn named<'a>(spans: &'a [Received], name: &str) -> Vec<&'a Received> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn one<'a>(spans: &'a [Received], name: &str) -> &'a Received {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "one {name} span expected in {spans:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxied_obo_request_is_one_trace_from_the_client_through_the_idp_to_the_upstream() {
    let stack = Stack::start(true).await;
    let token = stack.user_token().await;
    let (trace_id, client_span) = ids();
    let traceparent = format!("00-{trace_id}-{client_span}-01");
    let seen = stack
        .get("/obo/orders?page=2&code=c0de-s3cret", &token, &traceparent)
        .await;
    let exchanged = seen["headers"]["authorization"]
        .as_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned();
    assert_ne!(exchanged, token, "the upstream got the exchanged token");

    // The upstream continues the same trace, from tollgate's upstream span.
    let sent_on = seen["headers"]["traceparent"].as_str().unwrap();
    let parts: Vec<&str> = sent_on.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent_on}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace_id.as_str(), "01")
    );
    assert_ne!(
        parts[2], client_span,
        "tollgate's own span is the upstream's parent"
    );
    assert_eq!(seen["headers"]["tracestate"], "vendor=opaque");

    let spans = collector().trace(&trace_id).await;
    let request = one(&spans, "GET /obo/");
    assert_eq!(
        request.parent_span_id, client_span,
        "the client's span is the parent"
    );
    assert_eq!(request.attributes["http.route"], "/obo/");
    assert_eq!(request.attributes["http.request.method"], "GET");
    assert_eq!(request.attributes["url.path"], "/obo/orders");
    assert_eq!(request.attributes["http.response.status_code"], "200");
    assert_eq!(request.attributes["user.id"], ALICE_OID);
    assert_eq!(request.service_name.as_deref(), Some("tollgate-under-test"));

    let validate = one(&spans, "validate_token");
    assert_eq!(validate.parent_span_id, request.span_id);
    assert_eq!(validate.attributes["cache"], "miss");

    let exchange = one(&spans, "exchange");
    assert_eq!(exchange.parent_span_id, request.span_id);
    assert_eq!(exchange.attributes["grant"], "on_behalf_of");
    assert_eq!(exchange.attributes["cache"], "miss");

    let idp_call = one(&spans, "idp_request");
    assert_eq!(idp_call.parent_span_id, exchange.span_id);
    assert_eq!(idp_call.attributes["idp.call"], "token endpoint");
    assert_eq!(idp_call.attributes["http.request.method"], "POST");
    assert_eq!(idp_call.attributes["server.address"], "127.0.0.1");
    assert_eq!(idp_call.attributes["url.path"], "/token");
    assert_eq!(idp_call.attributes["http.response.status_code"], "200");
    // The IdP was sent the trace too, from the IdP call's span.
    assert_eq!(
        stack.relay.traceparents(),
        [format!("00-{trace_id}-{}-01", idp_call.span_id)]
    );

    let upstream = one(&spans, "upstream_request");
    assert_eq!(upstream.parent_span_id, request.span_id);
    assert_eq!(
        upstream.span_id, parts[2],
        "the upstream's parent is this span"
    );
    assert_eq!(upstream.attributes["http.response.status_code"], "200");

    // A second request: both caches answer, and no IdP call is made.
    let (trace_id, client_span) = ids();
    stack
        .get(
            "/obo/orders",
            &token,
            &format!("00-{trace_id}-{client_span}-01"),
        )
        .await;
    let spans = collector().trace(&trace_id).await;
    assert_eq!(one(&spans, "validate_token").attributes["cache"], "hit");
    assert_eq!(one(&spans, "exchange").attributes["cache"], "hit");
    assert!(named(&spans, "idp_request").is_empty(), "{spans:#?}");

    // Keys were fetched at start, in a trace of their own: the JWKS fetch and its IdP call.
    let all = collector().all();
    let jwks = all
        .iter()
        .find(|s| {
            s.name == "jwks_fetch" && s.attributes.get("server.address") == Some(&stack.idp_addr)
        })
        .expect("a jwks_fetch span");
    assert!(
        all.iter()
            .any(|s| s.name == "idp_request" && s.parent_span_id == jwks.span_id),
        "{all:#?}"
    );

    // Nothing secret in any attribute: not the user's token, the exchanged one, the query.
    for span in &all {
        for (key, value) in &span.attributes {
            for secret in [token.as_str(), exchanged.as_str(), "c0de-s3cret", "page=2"] {
                assert!(!value.contains(secret), "{} has {key} = {value}", span.name);
            }
        }
    }
    stack.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_parent_is_honoured_and_the_user_is_left_out_by_default() {
    let stack = Stack::start(false).await;
    let token = stack.user_token().await;

    // The caller decided not to record this trace: tollgate records nothing of it either, but
    // still passes the decision on.
    let (trace_id, client_span) = ids();
    let seen = stack
        .get("/plain", &token, &format!("00-{trace_id}-{client_span}-00"))
        .await;
    let sent_on = seen["headers"]["traceparent"].as_str().unwrap();
    assert!(sent_on.starts_with(&format!("00-{trace_id}-")) && sent_on.ends_with("-00"));
    assert!(collector().trace(&trace_id).await.is_empty());

    // Sampled: recorded, without `user.id` (`user_attribute` is off).
    let (trace_id, client_span) = ids();
    stack
        .get("/plain", &token, &format!("00-{trace_id}-{client_span}-01"))
        .await;
    let spans = collector().trace(&trace_id).await;
    let request = one(&spans, "GET /");
    assert_eq!(request.attributes["http.route"], "/");
    assert!(!request.attributes.contains_key("user.id"), "{request:#?}");
    assert!(named(&spans, "exchange").is_empty());
    assert_eq!(
        one(&spans, "upstream_request").parent_span_id,
        request.span_id
    );

    // A request without a `traceparent` starts a trace of its own.
    let before = collector().all().len();
    let resp = stack
        .http
        .get(format!("http://{}/fresh", stack.server.public))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen: Value = resp.json().await.unwrap();
    let trace_id = seen["headers"]["traceparent"].as_str().unwrap()[3..35].to_owned();
    let spans = collector().trace(&trace_id).await;
    assert!(collector().all().len() > before);
    assert_eq!(one(&spans, "GET /").parent_span_id, "");

    // `[telemetry]` cannot change while serving: the reload says so, the old one stays.
    let changed = stack.config.replace("tollgate-under-test", "another-name");
    let env = MapEnv::from([("AZURE_APP_CLIENT_SECRET", TOLLGATE_CLIENT_SECRET)]);
    let err = stack
        .server
        .reload(Config::from_toml_str(&changed, &env).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "reload refused: telemetry cannot change on reload; restart tollgate to change it"
    );
    stack.server.shutdown().await.unwrap();
}

#[test]
fn the_standard_variables_apply_where_the_file_is_silent() {
    let env = MapEnv::from([
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector.monitoring:4318",
        ),
        ("OTEL_SERVICE_NAME", "checkout"),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment.name=prod,team=id%20platform",
        ),
    ]);
    let cfg = Config::from_toml_str("", &env).unwrap();
    let t = &cfg.telemetry;
    assert_eq!(
        t.traces_url().unwrap().as_str(),
        "http://collector.monitoring:4318/v1/traces"
    );
    assert_eq!(t.service_name, "checkout");
    assert_eq!(t.resource_attributes["team"], "id platform");
    assert_eq!(t.resource_attributes["deployment.environment.name"], "prod");
    assert_eq!(t.sample_ratio, 1.0);

    // The file (or a TOLLGATE_* variable) wins over them.
    let toml =
        "[telemetry]\notlp_endpoint = \"https://otel.example\"\nservice_name = \"sidecar\"\n";
    let cfg = Config::from_toml_str(toml, &env).unwrap();
    assert_eq!(
        cfg.telemetry.otlp_endpoint.unwrap().as_str(),
        "https://otel.example/"
    );
    assert_eq!(cfg.telemetry.service_name, "sidecar");
    let env_too = MapEnv::from([
        ("OTEL_SERVICE_NAME", "checkout"),
        ("TOLLGATE_TELEMETRY__SERVICE_NAME", "42"),
    ]);
    assert_eq!(
        Config::from_toml_str("", &env_too)
            .unwrap()
            .telemetry
            .service_name,
        "42"
    );

    // `service.name` among the resource attributes names the service when nothing else does.
    let env = MapEnv::from([("OTEL_RESOURCE_ATTRIBUTES", "service.name=billing")]);
    assert_eq!(
        Config::from_toml_str("", &env)
            .unwrap()
            .telemetry
            .service_name,
        "billing"
    );

    // Off by default.
    assert!(
        Config::from_toml_str("", &MapEnv::default())
            .unwrap()
            .telemetry
            .traces_url()
            .is_none()
    );
}

#[test]
fn bad_values_are_refused_naming_the_option() {
    let refused = |toml: &str, env: &[(&str, &str)]| {
        let env: MapEnv = env.iter().copied().collect();
        Config::from_toml_str(toml, &env).unwrap_err().to_string()
    };
    let t = |body: &str| format!("[telemetry]\n{body}\n");
    assert_eq!(
        refused(&t("sample_ratio = 1.5"), &[]),
        "telemetry.sample_ratio: must be between 0.0 and 1.0"
    );
    assert_eq!(
        refused(&t("sample_ratio = -0.1"), &[]),
        "telemetry.sample_ratio: must be between 0.0 and 1.0"
    );
    assert_eq!(
        refused(&t("otlp_endpoint = \"grpc://collector:4317\""), &[]),
        "telemetry.otlp_endpoint: must be an http or https URL (OTLP/HTTP)"
    );
    assert_eq!(
        refused(&t("otlp_endpoint = \"http://collector:4318/?k=v\""), &[]),
        "telemetry.otlp_endpoint: must have no query or fragment (/v1/traces is appended to its path)"
    );
    assert_eq!(
        refused(&t("service_name = \" \""), &[]),
        "telemetry.service_name: must not be empty"
    );
    assert!(refused(&t("otlp_endpoint = \"not a url\""), &[]).contains("telemetry.otlp_endpoint"));
    assert!(refused(&t("sampling = 1"), &[]).contains("unknown field"));
    assert_eq!(
        refused("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")]),
        "telemetry.otlp_endpoint: must be an http or https URL (OTLP/HTTP)"
    );
    assert_eq!(
        refused("", &[("OTEL_EXPORTER_OTLP_ENDPOINT", "::nope")]),
        "OTEL_EXPORTER_OTLP_ENDPOINT: not a URL: relative URL without a base"
    );
    assert_eq!(
        refused("", &[("OTEL_RESOURCE_ATTRIBUTES", "team")]),
        "OTEL_RESOURCE_ATTRIBUTES: each entry must be key=value"
    );
    assert_eq!(
        refused("", &[("OTEL_RESOURCE_ATTRIBUTES", "team=%zz")]),
        "OTEL_RESOURCE_ATTRIBUTES: an entry is not valid percent-encoding"
    );
}
