//! [`Claims`]: what a validated token says, and the route checks made on it.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use serde_json::{Map, Value};

use super::ValidationError;

/// The validated claims of an access token. Cheap to clone.
///
/// ```
/// use tollgate::Claims;
/// let map = serde_json::from_value(serde_json::json!({
///     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
///     "oid": "99999999-8888-7777-6666-555555555555",
///     "tid": "11111111-2222-3333-4444-555555555555",
///     "name": "Alice",
///     "scp": "access_as_user User.Read",
///     "exp": 1900000000,
/// }))?;
/// let claims = Claims::from_map("entra_id", map);
/// assert_eq!(claims.oid(), Some("99999999-8888-7777-6666-555555555555"));
/// assert_eq!(claims.name(), Some("Alice"));
/// assert_eq!(claims.scopes(), ["access_as_user", "User.Read"]);
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Claims(Arc<ClaimsInner>);

#[derive(Debug)]
struct ClaimsInner {
    map: Map<String, Value>,
    scopes: Vec<String>,
    roles: Vec<String>,
    exp: u64,
    provider: String,
    /// `sha256(token)`, set by the validator that produced these claims.
    token_digest: std::sync::OnceLock<[u8; 32]>,
    /// What callers derive from these claims (the proxy's identity headers, the API's
    /// introspection answer), built at the first request that needs it.
    memo: Memo,
}

impl Claims {
    /// Builds claims from a decoded JSON object (used by the validator and by tests).
    ///
    /// ```
    /// use serde_json::{Map, json};
    /// use tollgate::Claims;
    /// let mut map = Map::new();
    /// map.insert("sub".into(), json!("user-1"));
    /// map.insert("roles".into(), json!("Reports.Read")); // a single role as a string is accepted
    /// let claims = Claims::from_map("idporten", map);
    /// assert_eq!((claims.subject(), claims.provider()), ("user-1", "idporten"));
    /// assert_eq!(claims.roles(), ["Reports.Read"]);
    /// ```
    pub fn from_map(provider: &str, map: Map<String, Value>) -> Self {
        let scopes = match map.get("scp").or_else(|| map.get("scope")) {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => Vec::new(),
        };
        let roles = match map.get("roles") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        let exp = map.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Self(Arc::new(ClaimsInner {
            map,
            scopes,
            roles,
            exp,
            provider: provider.to_owned(),
            token_digest: std::sync::OnceLock::new(),
            memo: Memo::default(),
        }))
    }

    /// `sha256` of the token these claims were validated from, when a [`Validator`] made them.
    /// Records `sha256(token)`; only the validator that produced these claims calls it.
    pub(super) fn set_token_digest(&self, digest: [u8; 32]) {
        let _ = self.0.token_digest.set(digest);
    }

    pub(crate) fn token_digest(&self) -> Option<&[u8; 32]> {
        self.0.token_digest.get()
    }

    /// The caller's value of type `T` for these claims, built by `init` once and kept with them:
    /// a token validated from the cache then costs no formatting per request. Each caller keys
    /// its value by a type of its own.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn memo<T: Any + Send + Sync>(&self, init: impl FnOnce(&Claims) -> T) -> &T {
        self.0.memo.get_or_init(|| init(self))
    }

    /// `sub`.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.subject(), "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ");
    /// ```
    pub fn subject(&self) -> &str {
        self.str("sub").unwrap_or("")
    }

    /// `oid` (Entra object id), when present.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.oid(), Some("99999999-8888-7777-6666-555555555555"));
    /// ```
    pub fn oid(&self) -> Option<&str> {
        self.str("oid")
    }

    /// `tid` (Entra tenant id), when present.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.tid(), Some("11111111-2222-3333-4444-555555555555"));
    /// ```
    pub fn tid(&self) -> Option<&str> {
        self.str("tid")
    }

    /// `name`, when present.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.name(), Some("Alice"));
    /// ```
    pub fn name(&self) -> Option<&str> {
        self.str("name")
    }

    /// `upn`, else `preferred_username`.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.username(), Some("alice@contoso.example")); // no `upn` in this token
    /// ```
    pub fn username(&self) -> Option<&str> {
        self.str("upn").or_else(|| self.str("preferred_username"))
    }

    /// `iss`.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert!(claims.issuer().starts_with("https://login.microsoftonline.com/"));
    /// ```
    pub fn issuer(&self) -> &str {
        self.str("iss").unwrap_or("")
    }

    /// Delegated scopes (`scp`, space separated; or `scope`).
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.scopes(), ["access_as_user", "User.Read"]);
    /// ```
    pub fn scopes(&self) -> &[String] {
        &self.0.scopes
    }

    /// App roles (`roles`).
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.roles(), ["Reports.Read"]);
    /// ```
    pub fn roles(&self) -> &[String] {
        &self.0.roles
    }

    /// `exp`, seconds since the epoch.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.expires_at(), 1900000000);
    /// ```
    pub fn expires_at(&self) -> u64 {
        self.0.exp
    }

    /// The name of the provider that issued the token.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.provider(), "entra_id");
    /// ```
    pub fn provider(&self) -> &str {
        &self.0.provider
    }

    /// Any claim.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert_eq!(claims.get("ver").and_then(|v| v.as_str()), Some("2.0"));
    /// assert!(claims.get("groups").is_none());
    /// ```
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.map.get(name)
    }

    /// All claims, as in the token.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert!(claims.as_map().contains_key("scp"));
    /// let json = serde_json::to_string(claims.as_map()).unwrap();
    /// assert!(json.contains(r#""name":"Alice""#));
    /// ```
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0.map
    }

    /// True for an app-only (client credentials) token: `idtyp: app`, or no `scp` with `sub == oid`.
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// assert!(!claims.is_app_only()); // a user's delegated token
    /// let map = serde_json::from_value(serde_json::json!({"sub": "app-oid", "oid": "app-oid", "roles": ["Jobs.Run"]})).unwrap();
    /// assert!(tollgate::Claims::from_map("entra_id", map).is_app_only());
    /// ```
    pub fn is_app_only(&self) -> bool {
        self.str("idtyp") == Some("app")
            || (self.0.scopes.is_empty()
                && self.str("sub").is_some()
                && self.str("sub") == self.str("oid"))
    }

    /// Checks route requirements: any one of `scopes` (when non-empty) and any one of `roles`
    /// (when non-empty).
    ///
    /// ```
    /// # let claims = tollgate::Claims::from_map("entra_id", serde_json::from_value(serde_json::json!({
    /// #     "sub": "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", "oid": "99999999-8888-7777-6666-555555555555",
    /// #     "tid": "11111111-2222-3333-4444-555555555555", "name": "Alice", "preferred_username": "alice@contoso.example",
    /// #     "iss": "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0",
    /// #     "scp": "access_as_user User.Read", "roles": ["Reports.Read"], "exp": 1900000000, "ver": "2.0",
    /// # })).unwrap());
    /// let any_of = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    /// assert!(claims.check(&any_of(&["Files.Read", "access_as_user"]), &[]).is_ok());
    /// let err = claims.check(&[], &any_of(&["Reports.Admin"])).unwrap_err();
    /// assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
    /// ```
    pub fn check(&self, scopes: &[String], roles: &[String]) -> Result<(), ValidationError> {
        if !scopes.is_empty() && !scopes.iter().any(|s| self.0.scopes.contains(s)) {
            return Err(ValidationError::InsufficientScope {
                scope: scopes.join(" "),
            });
        }
        if !roles.is_empty() && !roles.iter().any(|r| self.0.roles.contains(r)) {
            return Err(ValidationError::InsufficientScope {
                scope: roles.join(" "),
            });
        }
        Ok(())
    }

    /// The client the token was issued to: `azp` (v2 tokens) or `appid` (v1).
    ///
    /// ```
    /// let map = serde_json::from_value(serde_json::json!({"sub": "s", "appid": "cccccccc-3333-4444-5555-dddddddddddd"})).unwrap();
    /// let claims = tollgate::Claims::from_map("entra_id", map);
    /// assert_eq!(claims.client_id(), Some("cccccccc-3333-4444-5555-dddddddddddd"));
    /// ```
    pub fn client_id(&self) -> Option<&str> {
        self.str("azp").or_else(|| self.str("appid"))
    }

    /// The checks that come with a provider's and a route's (or layer's) access settings, after
    /// [`check`](Self::check): a token with neither `scp` nor `roles` is refused unless
    /// `allow_unscoped` (Microsoft.Identity.Web's IDW10201), and the token's client must be in
    /// each non-empty allow-list.
    pub(crate) fn check_access(
        &self,
        allow_unscoped: bool,
        client_lists: [&[String]; 2],
    ) -> Result<(), ValidationError> {
        if !allow_unscoped && self.0.scopes.is_empty() && self.0.roles.is_empty() {
            return Err(ValidationError::InsufficientScope {
                scope: String::new(),
            });
        }
        for allowed in client_lists {
            if !allowed.is_empty()
                && !self
                    .client_id()
                    .is_some_and(|id| allowed.iter().any(|a| a == id))
            {
                return Err(ValidationError::InvalidToken(
                    "the token was issued to a client that is not allowed here".into(),
                ));
            }
        }
        Ok(())
    }

    fn str(&self, name: &str) -> Option<&str> {
        self.0.map.get(name).and_then(Value::as_str)
    }
}

/// A tiny map from type to value, filled once per type and never emptied: an append-only list of
/// entries, each in a `OnceLock`, so a lookup takes no lock and allocates nothing. It holds a
/// couple of entries at most, so the walk is shorter than hashing would be.
#[derive(Default)]
struct Memo(OnceLock<Box<dyn MemoEntry>>);

/// One value of a [`Memo`] and the rest of the list.
struct Entry<T> {
    value: T,
    next: Memo,
}

trait MemoEntry: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn next(&self) -> &Memo;
}

impl<T: Any + Send + Sync> MemoEntry for Entry<T> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn next(&self) -> &Memo {
        &self.next
    }
}

impl Memo {
    fn get_or_init<T: Any + Send + Sync>(&self, init: impl FnOnce() -> T) -> &T {
        let mut slot = self;
        while let Some(filled) = slot.0.get() {
            if let Some(e) = filled.as_any().downcast_ref::<Entry<T>>() {
                return &e.value;
            }
            slot = filled.next();
        }
        // Built outside the `OnceLock`, so that when another thread fills this slot first (with
        // its own type, or with `T` too, as `OnceLock::get_or_init` would keep only one) the
        // entry can go on to the next empty slot.
        let mut pending: Option<Box<dyn MemoEntry>> = Some(Box::new(Entry {
            value: init(),
            next: Memo::default(),
        }));
        loop {
            if let Some(filled) = slot.0.get() {
                if let Some(e) = filled.as_any().downcast_ref::<Entry<T>>() {
                    return &e.value;
                }
                slot = filled.next();
            } else if let Some(entry) = pending.take()
                && let Err(lost) = slot.0.set(entry)
            {
                pending = Some(lost);
            }
            // A slot once set stays set: the next turn finds it filled, by this call or another.
        }
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memo_keeps_one_value_per_type() {
        struct Headers(String);
        struct Answer(u32);
        let claims = Claims::from_map("p", Map::new());
        let first: *const Headers = claims.memo(|_| Headers("built".into()));
        assert_eq!(claims.memo(|_| Answer(7)).0, 7);
        // Built once: later calls get the same value and never run their `init`.
        let again = claims.memo(|_| Headers("rebuilt".into()));
        assert!(std::ptr::eq(first, again));
        assert_eq!(again.0, "built");
        assert_eq!(claims.memo(|_| Answer(8)).0, 7);
        // Clones share the claims, so they share the values too.
        assert_eq!(claims.clone().memo(|_| Headers("clone".into())).0, "built");
    }

    #[test]
    fn memo_entries_of_racing_threads_all_land() {
        struct A(u8);
        struct B(u8);
        struct C(u8);
        let claims = Claims::from_map("p", Map::new());
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    assert_eq!(claims.memo(|_| A(1)).0, 1);
                    assert_eq!(claims.memo(|_| B(2)).0, 2);
                    assert_eq!(claims.memo(|_| C(3)).0, 3);
                });
            }
        });
        assert_eq!(
            (
                claims.memo(|_| A(0)).0,
                claims.memo(|_| B(0)).0,
                claims.memo(|_| C(0)).0
            ),
            (1, 2, 3)
        );
    }
}
