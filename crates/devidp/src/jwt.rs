//! Compact JWS parsing for assertions the dev IdP receives. Signatures are checked by the caller
//! with the key it selects; nothing here trusts the content.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

/// A JWT split into its parts, not yet verified.
#[derive(Debug)]
pub(crate) struct UnverifiedJwt {
    pub(crate) header: Map<String, Value>,
    pub(crate) claims: Map<String, Value>,
    pub(crate) signing_input: String,
    pub(crate) signature: Vec<u8>,
}

/// The token is not a JWS with JSON header and claims.
#[derive(Debug)]
pub(crate) struct Malformed;

impl UnverifiedJwt {
    pub(crate) fn parse(token: &str) -> Result<Self, Malformed> {
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Malformed);
        };
        let object = |part: &str| -> Result<Map<String, Value>, Malformed> {
            let bytes = URL_SAFE_NO_PAD.decode(part).map_err(|_| Malformed)?;
            match serde_json::from_slice(&bytes) {
                Ok(Value::Object(map)) => Ok(map),
                _ => Err(Malformed),
            }
        };
        let header = object(h)?;
        let claims = object(c)?;
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| Malformed)?;
        if signature.is_empty() {
            return Err(Malformed);
        }
        Ok(Self {
            header,
            claims,
            signing_input: format!("{h}.{c}"),
            signature,
        })
    }

    pub(crate) fn header_str(&self, name: &str) -> Option<&str> {
        self.header.get(name).and_then(Value::as_str)
    }

    pub(crate) fn claim_str(&self, name: &str) -> Option<&str> {
        self.claims.get(name).and_then(Value::as_str)
    }

    /// A NumericDate claim; fractional values are truncated.
    pub(crate) fn claim_time(&self, name: &str) -> Option<u64> {
        let value = self.claims.get(name)?;
        value
            .as_u64()
            .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn parses_three_json_parts() {
        let token = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"exp":10.5,"iss":"x"}"#),
            b64("sig")
        );
        let jwt = UnverifiedJwt::parse(&token).unwrap();
        assert_eq!(jwt.header_str("alg"), Some("RS256"));
        assert_eq!(jwt.claim_str("iss"), Some("x"));
        assert_eq!(jwt.claim_time("exp"), Some(10));
        assert_eq!(jwt.signature, b"sig");
    }

    #[test]
    fn refuses_malformed_tokens() {
        let h = b64(r#"{"alg":"RS256"}"#);
        for token in [
            String::new(),
            "a.b".into(),
            format!("{h}.{h}.{}.x", b64("s")),
            format!("{h}.{}.{}", b64("[1]"), b64("s")),
            format!("{h}.{h}."),
            format!("{h}.not base64.{}", b64("s")),
        ] {
            assert!(UnverifiedJwt::parse(&token).is_err(), "{token}");
        }
    }
}
