//! The exchanged-token cache (moka): per-entry expiry at `min(token exp, subject exp) - margin`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{ExchangeError, Grant, grants::TokenResponse};
use crate::validate::{now, sha256};

/// An access token obtained from the IdP (or the cache).
#[derive(Clone)]
pub struct ExchangedToken {
    access_token: Arc<str>,
    expires_at: u64,
    /// Latest moment (Unix s) the cache may hand this token out; set by the cache.
    usable_until: u64,
    subject_exp: Option<u64>,
}

impl std::fmt::Debug for ExchangedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangedToken")
            .field("access_token", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl ExchangedToken {
    pub(super) fn from_response(r: TokenResponse, subject_exp: Option<u64>) -> Self {
        let expires_at = now() + r.expires_in;
        Self {
            access_token: Arc::from(r.access_token),
            expires_at,
            usable_until: expires_at,
            subject_exp,
        }
    }

    /// The access token.
    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// Seconds left before the token expires (what `expires_in` reports for a cached token).
    pub fn expires_in(&self) -> u64 {
        self.expires_at.saturating_sub(now())
    }

    /// `exp` of the token, Unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }
}

pub(super) struct TokenCache {
    cache: moka::future::Cache<[u8; 32], ExchangedToken>,
    margin: u64,
}

struct UntilUsable;

impl moka::Expiry<[u8; 32], ExchangedToken> for UntilUsable {
    fn expire_after_create(
        &self,
        _: &[u8; 32],
        v: &ExchangedToken,
        _: Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(v.usable_until.saturating_sub(now())))
    }

    fn expire_after_update(
        &self,
        _: &[u8; 32],
        v: &ExchangedToken,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_secs(v.usable_until.saturating_sub(now())))
    }
}

/// `sha256(len(provider) provider len(client) client grant len(target) target len(subject) subject)`:
/// lengths make the encoding unambiguous, so `("ab","c")` and `("a","bc")` never share a key.
pub(super) fn key(
    provider: &str,
    client_id: &str,
    grant: Grant,
    target: &str,
    subject: &str,
) -> [u8; 32] {
    let grant = match grant {
        Grant::OnBehalfOf => "obo",
        Grant::ClientCredentials => "cc",
    };
    let mut buf =
        Vec::with_capacity(provider.len() + client_id.len() + target.len() + subject.len() + 48);
    for part in [provider, client_id, grant, target, subject] {
        buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
        buf.extend_from_slice(part.as_bytes());
    }
    sha256(&buf)
}

impl TokenCache {
    pub(super) fn new(capacity: u64, margin: Duration) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity)
            .expire_after(UntilUsable)
            .build();
        Self {
            cache,
            margin: margin.as_secs(),
        }
    }

    pub(super) fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The cached token for `key`, or the result of one shared `fetch`. Returns whether the
    /// answer came from the cache (or from another caller's fetch).
    pub(super) async fn get_or_fetch<F, Fut>(
        &self,
        key: [u8; 32],
        skip_cache: bool,
        fetch: F,
    ) -> (Result<ExchangedToken, ExchangeError>, bool)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<ExchangedToken, ExchangeError>> + Send + 'static,
    {
        let margin = self.margin;
        let limit = move |mut t: ExchangedToken| {
            t.usable_until = t
                .expires_at
                .min(t.subject_exp.unwrap_or(u64::MAX))
                .saturating_sub(margin);
            t
        };
        if skip_cache {
            let result = fetch().await.map(limit);
            if let Ok(t) = &result {
                self.cache.insert(key, t.clone()).await;
            }
            return (result, false);
        }
        if let Some(t) = self.cache.get(&key).await
            && t.usable_until > now()
        {
            return (Ok(t), true);
        }
        // The fetch runs in its own task: if this caller is cancelled, the callers coalesced on
        // the same key still get their answer.
        let cache = self.cache.clone();
        let task = tokio::spawn(async move {
            let entry = cache
                .entry(key)
                .or_try_insert_with(async move { fetch().await.map(limit) })
                .await;
            entry.map(|e| (e.is_fresh(), e.into_value()))
        });
        match task.await {
            Ok(Ok((fresh, t))) => (Ok(t), !fresh),
            Ok(Err(e)) => (Err(Arc::unwrap_or_clone(e)), false),
            Err(e) => (
                Err(ExchangeError::Upstream {
                    message: format!("exchange task failed: {e}"),
                    timeout: false,
                }),
                false,
            ),
        }
    }
}
