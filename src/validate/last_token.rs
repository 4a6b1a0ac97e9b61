//! The last token a connection sent, kept with its claims: the connection's next request with
//! the same token is recognised by comparing bytes, without hashing it for the validated-token
//! cache.
//!
//! A client keeps sending one token until it expires, usually over one keep-alive connection,
//! so most requests find their token here. SHA-256 of an Entra access token (1.2-2 KB) is the
//! dearest step of a cached validation (about 0.7 µs with the CPU's SHA extensions); a
//! comparison of the same bytes costs a few dozen nanoseconds, and a token from another user
//! differs within its first hundred or so bytes. What a hit skips is only the lookup: the
//! claims are served under the cache's own rules (the same validator, the same key epoch, not
//! past `exp`), and each request's scopes, roles and client checks still run.
//!
//! Kept per connection (never shared between connections, so one client's token is never
//! compared with another's) and at most one token each: a connection holds one copy of its
//! token's bytes (at most [`MAX_TOKEN_BYTES`](super::MAX_TOKEN_BYTES)) and one reference to its
//! claims.

use std::sync::{Mutex, PoisonError};

use super::{Claims, ValidationError, Validator};

/// One connection's last validated token and its claims.
#[derive(Default)]
pub(crate) struct LastToken(Mutex<Option<Remembered>>);

struct Remembered {
    /// [`Validator::id`]: claims remembered for one validator are never served by another (a
    /// reload may change the audience, the issuer, the algorithm).
    validator: u64,
    /// The provider's key epoch read before validating: a key withdrawn since ends it.
    epoch: u64,
    token: Vec<u8>,
    claims: Claims,
}

impl LastToken {
    /// [`Validator::validate`], answered from this connection's last token when `token` is it.
    pub(crate) async fn validate(
        &self,
        validator: &Validator,
        token: &str,
    ) -> Result<Claims, ValidationError> {
        let epoch = validator.key_epoch();
        if let Some(claims) = self.recall(validator, token.as_bytes()) {
            return Ok(claims);
        }
        let claims = validator.validate(token).await?;
        self.remember(validator.id(), epoch, token.as_bytes(), &claims);
        Ok(claims)
    }

    /// The claims of `token` (as sent, not yet read) when it is this connection's last token,
    /// still usable by `validator`.
    pub(crate) fn recall(&self, validator: &Validator, token: &[u8]) -> Option<Claims> {
        let claims = self.recall_for(validator.id(), validator.key_epoch(), token)?;
        answered_from_memory(validator);
        Some(claims)
    }

    fn recall_for(&self, validator: u64, epoch: u64, token: &[u8]) -> Option<Claims> {
        let last = self.lock();
        let last = last.as_ref()?;
        let usable = last.validator == validator
            && last.epoch == epoch
            && last.token == token
            && last.claims.expires_at() > crate::util::now();
        usable.then(|| last.claims.clone())
    }

    fn remember(&self, validator: u64, epoch: u64, token: &[u8], claims: &Claims) {
        let mut last = self.lock();
        match &mut *last {
            // The buffer is reused: a connection's tokens are all about the same size.
            Some(last) => {
                last.token.clear();
                last.token.extend_from_slice(token);
                (last.validator, last.epoch) = (validator, epoch);
                last.claims = claims.clone();
            }
            None => {
                *last = Some(Remembered {
                    validator,
                    epoch,
                    token: token.to_vec(),
                    claims: claims.clone(),
                });
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Remembered>> {
        // Every write leaves a whole entry: a panic elsewhere leaves it usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `token` validated by `validator`, through `last` where the connection keeps one.
pub(crate) async fn validate_on(
    last: Option<&LastToken>,
    validator: &Validator,
    token: &str,
) -> Result<Claims, ValidationError> {
    match last {
        Some(last) => last.validate(validator, token).await,
        None => validator.validate(token).await,
    }
}

/// Counts and traces a validation answered here as the cache's hit it stands for: the metric
/// and the `validate_token` span (with telemetry on) read as they would without this memo.
fn answered_from_memory(validator: &Validator) {
    validator.count_cached_hit();
    // Closed at once (a disabled span when telemetry is off): it records that the request's
    // token was checked, and how.
    let _span = crate::telemetry::span!(
        "validate_token",
        provider = validator.provider().name(),
        cache = "hit",
    );
}

// No `Debug` that shows the token: tokens never reach a log.
impl std::fmt::Debug for LastToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LastToken")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderConfig;
    use crate::provider::Provider;

    /// A validator whose provider has no keys: it can validate nothing, so whatever `validate`
    /// accepts came from the connection's last token.
    fn keyless_validator() -> Validator {
        let provider = Provider::new(ProviderConfig {
            client_id: "app".into(),
            issuer: Some("https://login.example/v2.0".into()),
            // A closed port: looking for a key fails at once.
            jwks_uri: Some("http://127.0.0.1:9/keys".parse().unwrap()),
            ..ProviderConfig::default()
        })
        .unwrap();
        Validator::new(provider, 16)
    }

    fn claims(exp: u64) -> Claims {
        Claims::from_json("p", format!(r#"{{"sub":"alice","exp":{exp}}}"#).into()).unwrap()
    }

    const TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl";

    #[tokio::test]
    async fn the_same_bytes_are_answered_and_nothing_else_is() {
        let validator = keyless_validator();
        let last = LastToken::default();
        let epoch = validator.key_epoch();
        last.remember(validator.id(), epoch, TOKEN.as_bytes(), &claims(now() + 60));
        let claims = last.validate(&validator, TOKEN).await.unwrap();
        assert_eq!(claims.subject(), "alice");
        // One byte off anywhere, a prefix, a longer token: each goes to the validator, which
        // refuses it.
        let mut changed = TOKEN.as_bytes().to_vec();
        changed[25] ^= 1;
        let changed = String::from_utf8(changed).unwrap();
        let longer = format!("{TOKEN}A");
        for other in [changed.as_str(), &TOKEN[..TOKEN.len() - 1], longer.as_str()] {
            assert!(last.validate(&validator, other).await.is_err(), "{other}");
        }
        // A refused token does not replace the remembered one.
        assert!(last.validate(&validator, TOKEN).await.is_ok());
    }

    #[tokio::test]
    async fn another_validator_an_older_key_epoch_or_exp_passed_ends_it() {
        let validator = keyless_validator();
        let last = LastToken::default();
        let epoch = validator.key_epoch();
        // Made by another validator (a reload): its claims are not this one's to serve.
        let other = keyless_validator();
        last.remember(other.id(), epoch, TOKEN.as_bytes(), &claims(now() + 60));
        assert!(last.validate(&validator, TOKEN).await.is_err());
        assert!(last.validate(&other, TOKEN).await.is_ok());
        // Checked under an earlier key epoch (a key was withdrawn since).
        last.remember(validator.id(), epoch, TOKEN.as_bytes(), &claims(now() + 60));
        let token = TOKEN.as_bytes();
        assert!(last.recall_for(validator.id(), epoch, token).is_some());
        assert!(last.recall_for(validator.id(), epoch + 1, token).is_none());
        // Past its `exp`.
        last.remember(validator.id(), epoch, TOKEN.as_bytes(), &claims(now()));
        assert!(last.validate(&validator, TOKEN).await.is_err());
    }

    #[test]
    fn its_debug_shows_no_token() {
        let last = LastToken::default();
        last.remember(1, 0, TOKEN.as_bytes(), &claims(now() + 60));
        assert_eq!(format!("{last:?}"), "LastToken");
    }

    fn now() -> u64 {
        crate::util::now()
    }
}
