//! `[telemetry]`: OpenTelemetry tracing, exported over OTLP/HTTP (protobuf) when an endpoint is
//! set; and the standard `OTEL_*` variables, applied where the file leaves a key unset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use url::Url;

use super::ConfigError;

/// `[telemetry]`: OpenTelemetry traces of the requests tollgate handles (feature `otel`).
///
/// Off until `otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) names a collector. Spans go to
/// `<otlp_endpoint>/v1/traces` as OTLP/HTTP protobuf, the same rule as for the standard
/// variable (OpenTelemetry specification, "OTLP Exporter Configuration"). `OTEL_SERVICE_NAME`
/// and `OTEL_RESOURCE_ATTRIBUTES` apply when the file (or a `TOLLGATE_TELEMETRY__*` variable)
/// does not set `service_name` or `resource_attributes`. A change is refused on reload:
/// restart to change it.
///
/// ```
/// # #[cfg(feature = "otel")]
/// # fn main() -> Result<(), tollgate::config::ConfigError> {
/// use tollgate::config::{Config, MapEnv};
/// let toml = "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 0.25\n";
/// let cfg = Config::from_toml_str(toml, &MapEnv::default())?;
/// assert_eq!(cfg.telemetry.traces_url().unwrap().as_str(), "http://127.0.0.1:4318/v1/traces");
/// assert_eq!(cfg.telemetry.service_name, "tollgate");
/// assert!(!cfg.telemetry.user_attribute);
///
/// let env = MapEnv::from([("OTEL_SERVICE_NAME", "checkout-sidecar")]);
/// assert_eq!(Config::from_toml_str(toml, &env)?.telemetry.service_name, "checkout-sidecar");
/// # Ok(()) }
/// # #[cfg(not(feature = "otel"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The collector's OTLP/HTTP base URL (`http://otel-collector:4318`); none: tracing is off.
    pub otlp_endpoint: Option<Url>,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The share of new traces recorded, 0.0 to 1.0. Parent-based: a request whose
    /// `traceparent` says sampled (or not) is recorded (or not) whatever the ratio.
    pub sample_ratio: f64,
    /// Put the user's object id (`oid`, else `sub`) on the request span as `user.id`.
    pub user_attribute: bool,
    /// More resource attributes (`deployment.environment.name = "prod"`).
    pub resource_attributes: BTreeMap<String, String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "tollgate".into(),
            sample_ratio: 1.0,
            user_attribute: false,
            resource_attributes: BTreeMap::new(),
        }
    }
}

impl TelemetryConfig {
    /// Where spans are posted: `<otlp_endpoint>/v1/traces`; `None` when tracing is off.
    ///
    /// ```
    /// use tollgate::config::TelemetryConfig;
    /// let mut t = TelemetryConfig::default();
    /// assert!(t.traces_url().is_none());
    /// t.otlp_endpoint = Some("https://collector.example/otlp/".parse().unwrap());
    /// assert_eq!(t.traces_url().unwrap().as_str(), "https://collector.example/otlp/v1/traces");
    /// ```
    pub fn traces_url(&self) -> Option<Url> {
        let mut url = self.otlp_endpoint.clone()?;
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
        Some(url)
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        if let Some(u) = &self.otlp_endpoint {
            if !matches!(u.scheme(), "http" | "https") {
                return Err(ConfigError::invalid(
                    "telemetry.otlp_endpoint",
                    "must be an http or https URL (OTLP/HTTP)",
                ));
            }
            if u.query().is_some() || u.fragment().is_some() {
                return Err(ConfigError::invalid(
                    "telemetry.otlp_endpoint",
                    "must have no query or fragment (/v1/traces is appended to its path)",
                ));
            }
            #[cfg(not(feature = "otel"))]
            return Err(ConfigError::invalid(
                "telemetry.otlp_endpoint",
                "this build has no OpenTelemetry support (cargo feature `otel`)",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid(
                "telemetry.sample_ratio",
                "must be between 0.0 and 1.0",
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(ConfigError::invalid(
                "telemetry.service_name",
                "must not be empty",
            ));
        }
        if self.resource_attributes.keys().any(|k| k.trim().is_empty()) {
            return Err(ConfigError::invalid(
                "telemetry.resource_attributes",
                "a key is empty",
            ));
        }
        Ok(())
    }
}

/// Applies `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`
/// to the keys `set_in_file` says the file (or a `TOLLGATE_*` variable) left unset. A
/// `service.name` among the resource attributes names the service when `OTEL_SERVICE_NAME`
/// does not, as the specification orders them.
#[cfg(feature = "otel")]
pub(super) fn apply_otel_env(
    t: &mut TelemetryConfig,
    vars: &[(String, String)],
    set_in_file: impl Fn(&str) -> bool,
) -> Result<(), ConfigError> {
    let get = |n: &str| {
        vars.iter()
            .find(|(k, v)| k == n && !v.trim().is_empty())
            .map(|(_, v)| v.trim().to_owned())
    };
    if !set_in_file("telemetry.otlp_endpoint")
        && let Some(v) = get("OTEL_EXPORTER_OTLP_ENDPOINT")
    {
        let url = Url::parse(&v).map_err(|e| {
            ConfigError::invalid("OTEL_EXPORTER_OTLP_ENDPOINT", format!("not a URL: {e}"))
        })?;
        t.otlp_endpoint = Some(url);
    }
    let mut from_attributes = None;
    if let Some(v) = get("OTEL_RESOURCE_ATTRIBUTES") {
        let attributes = parse_resource_attributes(&v)?;
        from_attributes = attributes.get("service.name").cloned();
        if !set_in_file("telemetry.resource_attributes") {
            t.resource_attributes = attributes;
        }
    }
    if !set_in_file("telemetry.service_name")
        && let Some(name) = get("OTEL_SERVICE_NAME").or(from_attributes)
    {
        t.service_name = name;
    }
    Ok(())
}

/// `key1=value1,key2=value2`, each part percent-encoded (W3C Baggage's form, which the
/// OpenTelemetry specification uses for `OTEL_RESOURCE_ATTRIBUTES`).
#[cfg(feature = "otel")]
fn parse_resource_attributes(v: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let bad = |why: &str| ConfigError::invalid("OTEL_RESOURCE_ATTRIBUTES", why.to_owned());
    let mut out = BTreeMap::new();
    for pair in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, val) = pair
            .split_once('=')
            .ok_or_else(|| bad("each entry must be key=value"))?;
        let decode = |s: &str| {
            percent_decode(s.trim()).ok_or_else(|| bad("an entry is not valid percent-encoding"))
        };
        let key = decode(k)?;
        if key.is_empty() {
            return Err(bad("an entry has an empty key"));
        }
        out.insert(key, decode(val)?);
    }
    Ok(out)
}

/// Percent-decodes `s` into UTF-8; `None` when an escape is broken or the bytes are not UTF-8.
#[cfg(feature = "otel")]
fn percent_decode(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' {
            let hex = tail.get(..2)?;
            let hex = std::str::from_utf8(hex).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            rest = tail.get(2..)?;
        } else {
            bytes.push(b);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(all(test, feature = "otel"))]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn resource_attributes_are_percent_decoded_and_malformed_ones_refused() {
        let parsed = parse_resource_attributes("a=1, team=id%20ent ,k8s.pod.name=x%2Cy").unwrap();
        assert_eq!(parsed["team"], "id ent");
        assert_eq!(parsed["k8s.pod.name"], "x,y");
        assert_eq!(parsed["a"], "1");
        for bad in ["novalue", "=v", "a=%zz", "a=%4"] {
            let err = parse_resource_attributes(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("OTEL_RESOURCE_ATTRIBUTES: "),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_file_wins_over_the_standard_variables() {
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ]);
        let mut t = TelemetryConfig {
            service_name: "from-file".into(),
            ..TelemetryConfig::default()
        };
        apply_otel_env(&mut t, &vars, |k| k == "telemetry.service_name").unwrap();
        assert_eq!(t.service_name, "from-file");
        assert_eq!(t.otlp_endpoint.unwrap().as_str(), "http://env:4318/");
    }

    #[test]
    fn service_name_falls_back_to_the_resource_attribute() {
        let vars = env(&[("OTEL_RESOURCE_ATTRIBUTES", "service.name=attr,x=1")]);
        let mut t = TelemetryConfig::default();
        apply_otel_env(&mut t, &vars, |_| false).unwrap();
        assert_eq!(t.service_name, "attr");
        assert_eq!(t.resource_attributes.len(), 2);
    }
}
