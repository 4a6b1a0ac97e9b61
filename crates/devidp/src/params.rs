//! The parsed form parameters of a token request, shared by the grants (`token`) and client
//! authentication (`client_auth`), which both read them.

use std::collections::HashMap;

use super::aad_error::AadError;

/// Form parameters of a token request; empty values count as absent, as at Entra.
#[derive(Debug, Default)]
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub(crate) fn require(&self, name: &str) -> Result<&str, AadError> {
        self.get(name)
            .ok_or_else(|| AadError::missing_parameter(name))
    }

    pub(crate) fn parse(body: &[u8]) -> Result<Self, AadError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body).map_err(|_| {
            AadError::invalid_request(9002313, "Invalid request. Request is malformed or invalid.")
        })?;
        let mut map = HashMap::with_capacity(pairs.len());
        for (name, value) in pairs {
            // RFC 6749 §3.2: request parameters must not be included more than once.
            if map.insert(name.clone(), value).is_some() {
                return Err(AadError::invalid_request(
                    9002313,
                    format!("Invalid request. The parameter '{name}' is included more than once."),
                ));
            }
        }
        Ok(Self(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_refuse_duplicates_and_treat_empty_as_absent() {
        let p = Params::parse(b"a=1&b=&c=x+y").unwrap();
        assert_eq!(p.get("a"), Some("1"));
        assert_eq!(p.get("b"), None);
        assert_eq!(p.get("c"), Some("x y"));
        assert!(Params::parse(b"a=1&a=2").is_err());
    }
}
