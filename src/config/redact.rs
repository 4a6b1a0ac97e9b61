//! Keeping secrets out of what configuration prints: the redacted TOML of `tollgate check`,
//! figment's parse errors, and the refusal of secrets written inline in the file.

use super::{Config, ConfigError};

/// The configuration as TOML (see [`Config::to_redacted_toml`]).
pub(super) fn toml_string(cfg: &Config) -> String {
    // figment can serialize back through its Value; TOML needs tables after plain values, which
    // figment's Dict ordering does not guarantee, so print JSON-shaped TOML via serde_json.
    let mut value = serde_json::to_value(cfg).unwrap_or(serde_json::Value::Null);
    redact_url_credentials(&mut value);
    let mut out = String::new();
    write_toml(&mut out, "", &value);
    out
}

/// Secrets belong in files or the environment, never only in the config file.
pub(super) fn refuse_inline_secrets(text: &str) -> Result<(), ConfigError> {
    let Ok(table) = text.parse::<toml::Table>() else {
        // Syntax errors are reported by figment with their position.
        return Ok(());
    };
    if let Some(toml::Value::Array(providers)) = table.get("providers") {
        for (i, p) in providers.iter().enumerate() {
            for key in ["client_secret", "client_jwk"] {
                if p.get(key).is_some() {
                    return Err(ConfigError::invalid(
                        format!("providers[{i}].{key}"),
                        format!(
                            "inline secrets are refused in the config file; use {key}_file or the environment"
                        ),
                    ));
                }
            }
        }
    }
    if let Some(api) = table.get("api")
        && api.get("key").is_some()
    {
        return Err(ConfigError::invalid(
            "api.key",
            "inline secrets are refused in the config file; use key_file or TOLLGATE_API__KEY",
        ));
    }
    Ok(())
}

/// figment errors quote the offending value; a value may be a secret, so keep only the
/// description and the key path.
pub(super) fn redact_figment(e: &figment::Error) -> String {
    let mut parts = Vec::new();
    for err in e.clone() {
        let key = if err.path.is_empty() {
            String::from("config")
        } else {
            err.path.join(".")
        };
        let kind = match &err.kind {
            figment::error::Kind::InvalidType(_, expected) => {
                format!("invalid type: expected {expected}")
            }
            figment::error::Kind::InvalidValue(_, expected) => {
                format!("invalid value: expected {expected}")
            }
            other => other.to_string(),
        };
        parts.push(format!("{key}: {kind}"));
    }
    parts.join("; ")
}

/// Replaces the userinfo of every URL in `value` (`redis://:password@host`,
/// `http://user:password@app`) by `[redacted]`: `tollgate check` prints the configuration.
fn redact_url_credentials(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::String(s) => {
            if let Some(redacted) = without_userinfo(s) {
                *s = redacted;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_url_credentials),
        Value::Object(map) => map.values_mut().for_each(redact_url_credentials),
        _ => {}
    }
}

/// `scheme://[redacted]@rest` for a URL with userinfo, else `None`.
fn without_userinfo(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(format!("{scheme}://[redacted]@{}", &rest[at + 1..]))
}

fn write_toml(out: &mut String, prefix: &str, value: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(map) = value else { return };
    for (k, v) in map {
        if !matches!(v, Value::Object(_)) && !is_table_array(v) && !v.is_null() {
            out.push_str(&format!("{} = {}\n", toml_key(k), toml_value(v)));
        }
    }
    for (k, v) in map {
        let path = if prefix.is_empty() {
            toml_key(k)
        } else {
            format!("{prefix}.{}", toml_key(k))
        };
        match v {
            Value::Object(_) => {
                out.push_str(&format!("\n[{path}]\n"));
                write_toml(out, &path, v);
            }
            Value::Array(items) if is_table_array(v) => {
                for item in items {
                    out.push_str(&format!("\n[[{path}]]\n"));
                    write_toml(out, &path, item);
                }
            }
            _ => {}
        }
    }
}

fn is_table_array(v: &serde_json::Value) -> bool {
    matches!(v, serde_json::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_object()))
}

fn toml_value(v: &serde_json::Value) -> String {
    use serde_json::Value;
    match v {
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(toml_value).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{ {} }}",
            map.iter()
                .map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::String(s) => toml_basic_string(s),
        other => other.to_string(),
    }
}

/// A key as TOML writes it: bare when it may be (TOML 1.0 §Keys: `A-Za-z0-9_-`), else quoted.
/// Map keys come from the file (`obo_headers` names may hold `.`, `!` or `#`), so a bare key
/// could nest, comment out or break what follows.
fn toml_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        toml_basic_string(k)
    }
}

/// A TOML basic string (TOML 1.0 §String): `"` and `\` escaped, and every control character
/// but tab, which JSON's escaping leaves raw for U+007F.
fn toml_basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push('\t'),
            c if c.is_control() && u32::from(c) < 0x80 => {
                out.push_str(&format!("\\u{:04X}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
