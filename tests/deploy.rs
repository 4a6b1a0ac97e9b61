//! What an operator deploys and runs: the Kubernetes manifests in `deploy/kubernetes/` (their
//! configuration loads, and their probes, Service and mounts meet the listeners and files in
//! force), the examples in `--help`, and the summary `tollgate check` prints.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_yaml_ng::Value;
use tollgate::config::{ClientAuthMethod, Config, ListenConfig, MapEnv};

/// The native-sidecar Deployment whose ConfigMap holds a tollgate.toml.
#[test]
fn sidecar_manifests_hold_a_config_that_check_accepts() {
    let m = Manifests::load("sidecar");
    let tollgate = m.tollgate();

    // The ConfigMap is generated from the file beside the manifests: these are the bytes the pod
    // gets, and the path the container is told to read must be that key in that volume.
    let (map_name, file) = m.config_map_file();
    let config_path = arg_after(tollgate, "--config").expect("tollgate is given --config");
    let volume = m.volume_mounted_at(tollgate, parent(&config_path));
    assert_eq!(
        volume["configMap"]["name"].as_str(),
        Some(map_name.as_str()),
        "{config_path} is not in the generated ConfigMap"
    );
    assert_eq!(
        file_name(&config_path),
        file,
        "the ConfigMap key is the file's name"
    );

    let text = std::fs::read_to_string(m.dir.join(&file)).unwrap();
    let env = MapEnv::from_iter(m.env_with_placeholders(tollgate).iter().map(pair));
    let cfg = Config::from_toml_str(&text, &env).unwrap();
    // The CLI accepts it too, with the same (here: no) environment.
    let out = tollgate_cmd(&["check", "--config"])
        .arg(m.dir.join(&file))
        .env_clear()
        .output()
        .unwrap();
    assert_success(&out);

    m.check_pod(&cfg);

    // The Service sends clients to the public listener: the proxy stands in front of the app.
    let target = m.service_target_port(tollgate);
    assert_eq!(target, Some(cfg.listen.public.port()));
    assert!(!cfg.listen.public.ip().is_loopback());

    // Every file the configuration names is under one of tollgate's mounts, and a file of a
    // Secret volume restricted to some keys is one of those keys.
    let mut paths: Vec<&Path> = Vec::new();
    paths.extend(cfg.api.key_file.as_deref());
    for p in &cfg.providers {
        for f in [
            &p.client_secret_file,
            &p.client_key_file,
            &p.client_cert_file,
            &p.client_jwk_file,
            &p.client_assertion_file,
        ] {
            paths.extend(f.as_deref());
        }
    }
    paths.extend(cfg.store.encryption_keys_file.as_deref());
    paths.push(&cfg.store.path);
    assert!(paths.len() >= 4, "the example names its secrets' files");
    for path in paths {
        let path = path.to_str().unwrap();
        let (volume, inside) = m.volume_holding(tollgate, path);
        if let Some(items) = volume["secret"]["items"].as_sequence() {
            assert!(
                items.iter().any(|i| i["path"] == inside),
                "{path}: not among the Secret's items"
            );
        }
        assert!(
            volume["secret"].is_mapping()
                || volume["emptyDir"].is_mapping()
                || volume["configMap"].is_mapping(),
            "{path}: mounted from {volume:?}"
        );
    }
    // The client secret comes from a Secret volume (never the ConfigMap, never the image).
    let secret_file = cfg.providers[0].client_secret_file.as_deref().unwrap();
    let (volume, _) = m.volume_holding(tollgate, secret_file.to_str().unwrap());
    assert!(volume["secret"]["secretName"].is_string(), "{volume:?}");
    // The SQLite file is on a writable volume: the root filesystem is read-only.
    let (volume, _) = m.volume_holding(tollgate, cfg.store.path.to_str().unwrap());
    assert!(volume["emptyDir"].is_mapping(), "{volume:?}");
}

/// The Texas replacement: no file, only the variables NAIS sets for Texas and a few
/// `TOLLGATE_SECTION__KEY` ones.
#[test]
fn nais_manifests_configure_tollgate_by_the_environment_alone() {
    let m = Manifests::load("nais");
    let tollgate = m.tollgate();
    assert!(
        m.kustomization["configMapGenerator"].is_null(),
        "no configuration file"
    );
    assert!(
        tollgate["volumeMounts"].is_null(),
        "nothing mounted: the environment is all"
    );

    let vars = m.env_with_placeholders(tollgate);
    const NAIS: [&str; 8] = [
        "AZURE_APP_CLIENT_ID",
        "AZURE_APP_CLIENT_SECRET",
        "AZURE_APP_JWK",
        "AZURE_APP_WELL_KNOWN_URL",
        "AZURE_OPENID_CONFIG_ISSUER",
        "AZURE_OPENID_CONFIG_JWKS_URI",
        "AZURE_OPENID_CONFIG_TOKEN_ENDPOINT",
        "BIND_ADDRESS",
    ];
    for (name, _) in &vars {
        assert!(
            NAIS.contains(&name.as_str())
                || name == "TOLLGATE_CONFIG"
                || (name.starts_with("TOLLGATE_") && name.contains("__")),
            "{name} is neither a NAIS variable nor a TOLLGATE_SECTION__KEY one"
        );
    }
    assert!(
        vars.iter()
            .all(|(k, v)| k != "TOLLGATE_CONFIG" || v == "tollgate.toml"),
        "no file: only the default name may be absent"
    );
    let env = MapEnv::from_iter(vars.iter().map(pair));
    let cfg = Config::from_toml_str("", &env).unwrap();
    let entra = &cfg.providers[0];
    assert_eq!(entra.name, "entra_id");
    assert_eq!(entra.client_auth, ClientAuthMethod::PrivateKeyJwt);
    assert!(entra.token_endpoint.is_some() && entra.jwks_uri.is_some());

    // The binary, given exactly these variables, agrees: TOLLGATE_CONFIG is the default name,
    // which may be absent (the image's working directory, like this one, has no such file).
    let dir = tempfile::tempdir().unwrap();
    let out = tollgate_cmd(&["check"])
        .current_dir(dir.path())
        .env_clear()
        .envs(vars.iter().map(pair))
        .output()
        .unwrap();
    assert_success(&out);

    m.check_pod(&cfg);

    // The API is where the app's NAIS_TOKEN_* variables point, on loopback.
    let api = cfg.listen.api.expect("the token API is on");
    assert!(api.ip().is_loopback());
    let app = m.app();
    for (name, path) in [
        ("NAIS_TOKEN_ENDPOINT", "/api/v1/token"),
        ("NAIS_TOKEN_EXCHANGE_ENDPOINT", "/api/v1/token/exchange"),
        ("NAIS_TOKEN_INTROSPECTION_ENDPOINT", "/api/v1/introspect"),
    ] {
        let value = env_value(app, name).unwrap_or_else(|| panic!("app has no {name}"));
        assert_eq!(value, format!("http://{api}{path}"), "{name}");
    }
    // Nothing is proxied: the Service goes to the app, and tollgate's public listener stays on
    // loopback, away from the app's port.
    let target = m
        .service_target_port(app)
        .expect("the Service targets the app");
    assert!(cfg.listen.public.ip().is_loopback());
    let ports = [Some(cfg.listen.public), cfg.listen.api, cfg.listen.admin];
    assert!(
        ports.iter().flatten().all(|a| a.port() != target),
        "the app's port {target} is one of tollgate's"
    );
}

/// The probe paths the manifests use are served by the admin listener (a real one, on loopback).
#[tokio::test]
async fn the_probe_paths_are_served_by_the_admin_listener() {
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    let cfg = Config {
        listen: ListenConfig {
            public: any,
            api: Some(any),
            admin: Some(any),
            ..ListenConfig::default()
        },
        ..Config::default()
    };
    let server = tollgate::server::Server::bind(cfg).await.unwrap().spawn();
    let admin = server.admin.unwrap();
    let client = reqwest::Client::new();
    let mut probed = BTreeSet::new();
    for variant in ["sidecar", "nais"] {
        let m = Manifests::load(variant);
        for (_, probe) in probes(m.tollgate()) {
            probed.insert(probe["httpGet"]["path"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        probed,
        BTreeSet::from(["/healthz".into(), "/readyz".into()])
    );
    for path in probed {
        let status = client
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 200, "{path}");
    }
    server.shutdown().await.unwrap();
}

#[test]
fn every_command_help_has_an_example() {
    let mut checked = Vec::new();
    help_examples(&mut Vec::new(), &mut checked);
    // The walk found the commands (a change in clap's layout would otherwise pass silently).
    for command in [
        "serve",
        "check",
        "demo",
        "dev-idp",
        "keygen",
        "store rotate",
    ] {
        assert!(checked.contains(&command.to_owned()), "{checked:?}");
    }
}

#[test]
fn check_says_which_listeners_providers_and_routes_are_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("client_secret");
    std::fs::write(&secret_file, "file-s3cret-value").unwrap();
    let config = dir.path().join("tollgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[listen]
api = "127.0.0.1:7164"
admin = "0.0.0.0:9090"

[[providers]]
name = "entra_id"
well_known_url = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration"
client_id = "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb"
client_secret_file = "{}"

[[providers]]
name = "idporten"
issuer = "https://idporten.example/"
jwks_uri = "https://idporten.example/jwks.json"
client_id = "my-app"

[[routes]]
path = "/api"
provider = "entra_id"
scopes = ["access_as_user"]
obo = "api://downstream/.default"

[[routes]]
path = "/admin"
provider = "entra_id"
roles = ["Admin", "Operator"]

[[routes]]
path = "/citizen"
provider = "idporten"
auth = "optional"

[[routes]]
path = "/"
auth = "none"
"#,
            secret_file.display()
        ),
    )
    .unwrap();
    let out = tollgate_cmd(&["check", "--config"])
        .arg(&config)
        .env("AZURE_APP_CLIENT_SECRET", "env-s3cret-value")
        .env("TOLLGATE_LISTEN__PUBLIC", "0.0.0.0:8081")
        .output()
        .unwrap();
    assert_success(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
    let expected = [
        "in force:".to_owned(),
        "listener public 0.0.0.0:8081".to_owned(),
        "listener api 127.0.0.1:7164".to_owned(),
        "listener admin 0.0.0.0:9090".to_owned(),
        // The environment's secret is the one the provider takes over the file.
        "provider entra_id: well-known https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration, client id aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb, credential secret from environment, grant entra_obo".to_owned(),
        "provider idporten: issuer https://idporten.example/, client id my-app, credential none, grant entra_obo".to_owned(),
        "route /api: auth required, provider entra_id, scopes access_as_user, obo api://downstream/.default".to_owned(),
        "route /admin: auth required, provider entra_id, roles Admin Operator".to_owned(),
        "route /citizen: auth optional, provider idporten".to_owned(),
        "route /: auth none".to_owned(),
        "configuration OK".to_owned(),
    ];
    assert_eq!(lines, expected, "{stderr}");
    // stdout is still the redacted TOML alone.
    assert!(
        stdout.starts_with("[listen]") || stdout.contains("\n[listen]"),
        "{stdout}"
    );
    assert!(!stdout.contains("in force"), "{stdout}");
    for secret in ["env-s3cret-value", "file-s3cret-value"] {
        assert!(!stdout.contains(secret) && !stderr.contains(secret));
    }

    // Without the variable, the file is where the secret comes from.
    let out = tollgate_cmd(&["check", "--config"])
        .arg(&config)
        .env_remove("AZURE_APP_CLIENT_SECRET")
        .output()
        .unwrap();
    assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let from_file = format!("credential secret from file {}", secret_file.display());
    assert!(stderr.contains(&from_file), "{stderr}");
    assert!(!stderr.contains("file-s3cret-value"));
}

/// One variant's manifests, as kustomize lists them.
struct Manifests {
    dir: PathBuf,
    kustomization: Value,
    deployment: Value,
    service: Value,
}

impl Manifests {
    fn load(variant: &str) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/kubernetes")
            .join(variant);
        let kustomization = yaml(&dir.join("kustomization.yaml"));
        let mut deployment = None;
        let mut service = None;
        for resource in kustomization["resources"].as_sequence().unwrap() {
            let doc = yaml(&dir.join(resource.as_str().unwrap()));
            match doc["kind"].as_str() {
                Some("Deployment") => deployment = Some(doc),
                Some("Service") => service = Some(doc),
                other => panic!("{variant}: unexpected kind {other:?}"),
            }
        }
        Self {
            dir,
            kustomization,
            deployment: deployment.expect("a Deployment"),
            service: service.expect("a Service"),
        }
    }

    fn pod(&self) -> &Value {
        &self.deployment["spec"]["template"]["spec"]
    }

    /// tollgate, which must be a native sidecar: an init container that keeps running.
    fn tollgate(&self) -> &Value {
        let pod = self.pod();
        let found = pod["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "tollgate")
            .expect("tollgate is an init container");
        assert_eq!(found["restartPolicy"], "Always", "a native sidecar");
        let regular = pod["containers"].as_sequence().unwrap();
        assert!(regular.iter().all(|c| c["name"] != "tollgate"));
        found
    }

    fn app(&self) -> &Value {
        self.pod()["containers"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "app")
            .expect("an app container")
    }

    /// The (name, file) of the ConfigMap generated from a file beside the manifests.
    fn config_map_file(&self) -> (String, String) {
        let generators = self.kustomization["configMapGenerator"]
            .as_sequence()
            .unwrap();
        let [generator] = generators.as_slice() else {
            panic!("one ConfigMap generator")
        };
        let files = generator["files"].as_sequence().unwrap();
        let [file] = files.as_slice() else {
            panic!("one file")
        };
        let file = file.as_str().unwrap();
        assert!(!file.contains('='), "the key is the file's own name");
        (
            generator["name"].as_str().unwrap().to_owned(),
            file.to_owned(),
        )
    }

    /// The pod's volume that `container` mounts at `mount_path` exactly.
    fn volume_mounted_at(&self, container: &Value, mount_path: &str) -> &Value {
        let mount = container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| m["mountPath"] == mount_path)
            .unwrap_or_else(|| panic!("nothing is mounted at {mount_path}"));
        self.volume(mount["name"].as_str().unwrap())
    }

    /// The volume holding `path` in `container` (the deepest mount above it), and the path
    /// inside that volume.
    fn volume_holding<'a, 'p>(&'a self, container: &Value, path: &'p str) -> (&'a Value, &'p str) {
        let (mount, inside) = container["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                let dir = m["mountPath"].as_str()?.trim_end_matches('/');
                let inside = path.strip_prefix(dir)?.strip_prefix('/')?;
                Some((m, inside))
            })
            .max_by_key(|(m, _)| m["mountPath"].as_str().map_or(0, str::len))
            .unwrap_or_else(|| {
                panic!("{path} is under no mount: the root filesystem is read-only")
            });
        (self.volume(mount["name"].as_str().unwrap()), inside)
    }

    fn volume(&self, name: &str) -> &Value {
        self.pod()["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume named {name}"))
    }

    /// The container port the Service sends traffic to, when it is one of `container`'s.
    fn service_target_port(&self, container: &Value) -> Option<u16> {
        let ports = self.service["spec"]["ports"].as_sequence().unwrap();
        let [port] = ports.as_slice() else {
            panic!("one Service port")
        };
        let selector = self.service["spec"]["selector"].as_mapping().unwrap();
        let labels = self.deployment["spec"]["template"]["metadata"]["labels"]
            .as_mapping()
            .unwrap();
        for (k, v) in selector {
            assert_eq!(labels.get(k), Some(v), "the Service selects the pods");
        }
        resolve_port(container, &port["targetPort"])
    }

    /// The container's environment; a value from a Secret (not in the manifest) is replaced by
    /// a placeholder of the shape the platform puts there.
    fn env_with_placeholders(&self, container: &Value) -> Vec<(String, String)> {
        container["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(|e| {
                let name = e["name"].as_str().unwrap().to_owned();
                let value = match e["value"].as_str() {
                    Some(v) => v.to_owned(),
                    None => {
                        assert!(e["valueFrom"]["secretKeyRef"].is_mapping(), "{name}");
                        placeholder(&name).to_owned()
                    }
                };
                (name, value)
            })
            .collect()
    }

    /// What both variants promise: probes on the admin listener in force, reachable from the
    /// kubelet; a non-root, read-only pod; every mount backed by a volume.
    fn check_pod(&self, cfg: &Config) {
        let tollgate = self.tollgate();
        let admin = cfg.listen.admin.expect("the admin listener is on");
        assert!(
            !admin.ip().is_loopback(),
            "the kubelet probes through the pod IP; {admin} is loopback"
        );
        let probes = probes(tollgate);
        let kinds: Vec<&str> = probes.iter().map(|(k, _)| *k).collect();
        assert!(kinds.contains(&"livenessProbe") && kinds.contains(&"readinessProbe"));
        for (kind, probe) in probes {
            let get = &probe["httpGet"];
            assert_eq!(
                resolve_port(tollgate, &get["port"]),
                Some(admin.port()),
                "{kind} is not on the admin port"
            );
            let path = get["path"].as_str().unwrap();
            let expected: &[&str] = match kind {
                "readinessProbe" => &["/readyz"],
                "livenessProbe" => &["/healthz"],
                _ => &["/healthz", "/readyz"],
            };
            assert!(expected.contains(&path), "{kind} {path}");
        }

        let pod = self.pod();
        let pod_non_root = pod["securityContext"]["runAsNonRoot"] == true;
        let containers = pod["initContainers"]
            .as_sequence()
            .into_iter()
            .chain(pod["containers"].as_sequence())
            .flatten();
        for c in containers {
            let name = c["name"].as_str().unwrap();
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert!(sc["runAsNonRoot"] == true || pod_non_root, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            for mount in c["volumeMounts"].as_sequence().into_iter().flatten() {
                self.volume(mount["name"].as_str().unwrap());
            }
        }
        assert!(pod["securityContext"]["runAsUser"].as_u64() != Some(0));
    }
}

/// The container's HTTP probes (startup, liveness, readiness).
fn probes(container: &Value) -> Vec<(&'static str, &Value)> {
    ["startupProbe", "livenessProbe", "readinessProbe"]
        .into_iter()
        .filter(|k| !container[*k].is_null())
        .map(|k| (k, &container[k]))
        .collect()
}

/// A port given by number or by the name of one of the container's ports.
fn resolve_port(container: &Value, port: &Value) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        return u16::try_from(n).ok();
    }
    let name = port.as_str()?;
    container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .and_then(|n| u16::try_from(n).ok())
}

/// The values a NAIS Entra ID Secret holds, in shape (a GUID client id, an RSA private JWK with
/// a `kid`, the tenant's v2.0 endpoints); none is a real credential.
fn placeholder(name: &str) -> &'static str {
    match name {
        "AZURE_APP_CLIENT_ID" => "aaaaaaaa-0000-1111-2222-bbbbbbbbbbbb",
        "AZURE_APP_CLIENT_SECRET" => "placeholder-client-secret",
        "AZURE_APP_JWK" => {
            r#"{"kty":"RSA","kid":"placeholder","n":"AQAB","e":"AQAB","d":"AQAB","p":"AQAB","q":"AQAB","dp":"AQAB","dq":"AQAB","qi":"AQAB"}"#
        }
        "AZURE_APP_WELL_KNOWN_URL" => {
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0/.well-known/openid-configuration"
        }
        "AZURE_OPENID_CONFIG_ISSUER" => {
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
        }
        "AZURE_OPENID_CONFIG_JWKS_URI" => {
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/discovery/v2.0/keys"
        }
        "AZURE_OPENID_CONFIG_TOKEN_ENDPOINT" => {
            "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/oauth2/v2.0/token"
        }
        other => panic!("{other} comes from a Secret: add its placeholder"),
    }
}

/// Runs `<args> --help` for the command path in `prefix`, checks its "Example" section, and
/// walks into the subcommands its help lists.
fn help_examples(prefix: &mut Vec<String>, checked: &mut Vec<String>) {
    let out = tollgate_cmd(&[])
        .args(prefix.iter())
        .arg("--help")
        .output()
        .unwrap();
    assert_success(&out);
    let help = String::from_utf8(out.stdout).unwrap();
    let shown = format!("tollgate {}", prefix.join(" "));
    let example = help
        .lines()
        .position(|l| l.starts_with("Example"))
        .unwrap_or_else(|| panic!("`{shown} --help` has no Example:\n{help}"));
    let next = help.lines().nth(example + 1).unwrap_or_default();
    assert!(
        next.contains("tollgate "),
        "`{shown} --help`: the line after Example is not a tollgate command line: {next:?}"
    );
    checked.push(prefix.join(" "));
    let subcommands: Vec<String> = help
        .lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    for sub in subcommands {
        prefix.push(sub);
        help_examples(prefix, checked);
        prefix.pop();
    }
}

fn tollgate_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.args(args);
    cmd
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value after `flag` in the container's `args`.
fn arg_after(container: &Value, flag: &str) -> Option<String> {
    let args = container["args"].as_sequence()?;
    let i = args.iter().position(|a| a == flag)?;
    args.get(i + 1)?.as_str().map(str::to_owned)
}

fn env_value(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_sequence()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
        .map(str::to_owned)
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

fn file_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, name)| name)
}

fn pair((k, v): &(String, String)) -> (&str, &str) {
    (k.as_str(), v.as_str())
}
