//! [`Claims`]: what a validated token says, and the route checks made on it.

use std::any::Any;
use std::sync::Arc;

use bytes::Bytes;
use once_cell::race::OnceBox;
use serde_json::{Map, Value};

use super::ValidationError;
pub(super) use parse::{Numeric, Parsed, Registered};

/// The validated claims of an access token. Cheap to clone.
///
/// The decoded payload is kept once, as its JSON text; the claims read on every request (`sub`,
/// `oid`, `tid`, `exp`, `scp`, `roles`, `azp`/`appid`, `iss`, ...) are parsed out as positions
/// in that text, and anything else ([`as_map`](Self::as_map), [`get`](Self::get)) is built
/// from the text the first time it is asked for. A cached token then costs about its payload.
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

/// What a cached token keeps besides its buffer: 120 bytes, with the `Arc`'s counts a 144-byte
/// `malloc` chunk. Every field is paid once per cached token, and 8 more bytes would make the
/// chunk 160 (`memory_tests` holds a cached token to its payload + 256 bytes).
struct ClaimsInner {
    /// The payload's JSON text as decoded from the token (its first `json_len` bytes), then the
    /// claim values that had JSON escapes, unescaped (rare: most claims have none, and then
    /// they are slices of the JSON), then the items of a scope or role list of several
    /// ([`At`]s, 6 ASCII bytes each). One allocation: an identity header is a slice of it
    /// ([`Claims::share`]). Text throughout, so a claim is read by slicing it, with no UTF-8
    /// check at each read (the proxy reads half a dozen a request).
    buf: Box<str>,
    /// Positions of the claims read on every request, by [`Kept`].
    hot: [At; KEPT],
    scopes: At,
    roles: At,
    exp: u64,
    /// The payload's length, [`At::WIDE`] for a buffer of 64 KiB or more (its [`Wide`] has it).
    json_len: u16,
    /// [`EMPTY`], [`HAS_ACTIVE`], the kinds of `scopes` and `roles` ([`ListKind`]),
    /// [`IDTYP_APP`], [`CLIENT_IS_APPID`].
    flags: u8,
    /// Shared by every `Claims` a validator makes; a thin pointer.
    provider: ProviderName,
    /// The token these claims were validated from, set by the validator that caches them.
    stamp: Stamp,
    /// What callers derive from these claims (the proxy's identity headers, the claims as a
    /// map), built at the first request that needs it.
    memo: Memo,
}

/// What the validation cache knows of the token behind cached claims.
struct Stamp {
    /// `sha256(token)`: the cache finds an entry by a part of it and checks the whole, and
    /// the On-Behalf-Of cache keys by it.
    digest: [u8; 32],
    /// The provider's key epoch the token was checked under; [`Stamp::NONE`] for claims no
    /// validator cached, and for an epoch past `u32::MAX - 1` (such claims are never served
    /// from the cache: 4 billion key withdrawals never happen, and if they did the cost would
    /// be a validation per request, not a stale answer).
    epoch: u32,
}

impl Stamp {
    const NONE: u32 = u32::MAX;
}

impl std::fmt::Debug for ClaimsInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("provider", &self.provider)
            .field("payload", &self.json())
            .finish_non_exhaustive()
    }
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
        // A map serialises to an object, which always parses back.
        let text = serde_json::to_string(&map).unwrap_or_else(|_| "{}".to_owned());
        match Self::from_json(provider, text.into()) {
            Ok(claims) => claims,
            Err(_) => Self::from_parsed(Arc::new(provider.into()), Parsed::empty()),
        }
    }

    /// Builds claims from a token payload's JSON text, kept as it is. Fails when the text is
    /// not a JSON object.
    ///
    /// ```
    /// use tollgate::Claims;
    /// let claims = Claims::from_json("entra_id", r#"{"sub":"s","name":"Zo\u00eb","scp":"a b","exp":1900000000}"#.into())?;
    /// assert_eq!(claims.name(), Some("Zoë"));
    /// assert_eq!((claims.scopes(), claims.expires_at()), (&["a".to_owned(), "b".to_owned()][..], 1900000000));
    /// assert!(Claims::from_json("entra_id", "[1]".into()).is_err());
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn from_json(provider: &str, payload: Box<str>) -> Result<Self, serde_json::Error> {
        Ok(Self::from_parsed(
            Arc::new(provider.into()),
            Parsed::of(payload)?,
        ))
    }

    /// [`Claims::from_json`] with the provider's name shared and stamped with `digest` under
    /// key epoch 0, as a validator makes them: for the measurements of what a cached token
    /// holds.
    #[cfg(test)]
    pub(crate) fn from_json_of(
        provider: &ProviderName,
        payload: Box<str>,
        digest: [u8; 32],
    ) -> Result<Self, serde_json::Error> {
        let mut claims = Self::from_parsed(provider.clone(), Parsed::of(payload)?);
        claims.stamp(digest, 0);
        Ok(claims)
    }

    /// Claims from a payload parsed by [`Parsed::of`], for the validator (which shares its
    /// provider's name rather than copying it per token).
    pub(super) fn from_parsed(provider: ProviderName, parsed: Parsed) -> Self {
        let (inner, wide) = ClaimsInner::of(provider, parsed);
        let claims = Self(Arc::new(inner));
        if let Some(wide) = wide {
            // Before anyone else can see these claims: every later read finds it.
            claims.memo(|_| wide);
        }
        claims
    }

    /// The heap bytes these claims hold when they are cached: the shared allocation and the
    /// buffer (payload, unescaped values, list items), each as a `malloc` chunk. What is
    /// memoised later is not included: the validation cache adds an allowance for the proxy's
    /// `X-Auth-*` values; the views a library user may ask for ([`scopes`](Self::scopes),
    /// [`roles`](Self::roles), [`as_map`](Self::as_map)) and Easy Auth's principal are not
    /// counted, nor the positions of a payload too large for 16-bit ones (no validator makes
    /// one: see `ClaimsInner::of`).
    pub(crate) fn heap_bytes(&self) -> usize {
        use crate::cache_meter::heap_chunk;
        // `Arc`'s two counts, then the inner value.
        heap_chunk(2 * size_of::<usize>() + size_of::<ClaimsInner>()) + heap_chunk(self.0.buf.len())
    }

    /// Records what the validation cache keeps them under: `sha256(token)` and the key epoch
    /// the token was checked under. Only the validator that produced these claims calls it,
    /// before anyone else holds them: claims already shared (cloned) are left as they are, and
    /// it says so by returning false. Set once, with no lock or flag for every read after.
    pub(super) fn stamp(&mut self, digest: [u8; 32], epoch: u64) -> bool {
        let Some(inner) = Arc::get_mut(&mut self.0) else {
            return false;
        };
        let epoch = u32::try_from(epoch)
            .ok()
            .filter(|e| *e != Stamp::NONE)
            .unwrap_or(Stamp::NONE);
        inner.stamp = Stamp { digest, epoch };
        true
    }

    /// The key epoch these claims were stamped under with `digest` (`None` when they were
    /// stamped with another digest, or never).
    pub(super) fn stamped_epoch(&self, digest: &[u8; 32]) -> Option<u64> {
        let stamp = &self.0.stamp;
        (stamp.epoch != Stamp::NONE && stamp.digest == *digest).then_some(u64::from(stamp.epoch))
    }

    /// `sha256` of the token these claims were validated from, when a validator cached them.
    pub(crate) fn token_digest(&self) -> Option<&[u8; 32]> {
        let stamp = &self.0.stamp;
        (stamp.epoch != Stamp::NONE).then_some(&stamp.digest)
    }

    /// Whether `other` is a clone of these claims (the same allocation), not merely equal.
    pub(crate) fn same_as(&self, other: &Claims) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
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
        self.hot(Hot::Sub).unwrap_or("")
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
        self.hot(Hot::Oid)
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
        self.hot(Hot::Tid)
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
        self.hot(Hot::Name)
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
        self.hot(Hot::Upn)
            .or_else(|| self.hot(Hot::PreferredUsername))
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
        self.hot(Hot::Iss).unwrap_or("")
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
        // Built at the first call only: the route checks read the payload's text directly.
        &self
            .memo(|c| Scopes(c.list(List::Scopes).map(str::to_owned).collect()))
            .0
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
        &self
            .memo(|c| Roles(c.list(List::Roles).map(str::to_owned).collect()))
            .0
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
        self.as_map().get(name)
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
        // Parsed from the payload at the first call and kept: only the login and logout
        // paths (ID tokens, never cached) and library users ask for it.
        &self.memo(|c| AsMap(c.parse_map())).0
    }

    /// The payload parsed into a fresh map, not kept: for answers derived from every claim
    /// that are built once and memoised themselves (Easy Auth's principal).
    pub(crate) fn parse_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.0.json()).unwrap_or_default()
    }

    /// The payload's JSON text, as in the token.
    ///
    /// ```
    /// let map = serde_json::from_value(serde_json::json!({"sub": "s", "exp": 1900000000})).unwrap();
    /// let claims = tollgate::Claims::from_map("entra_id", map);
    /// assert_eq!(claims.payload_json(), r#"{"exp":1900000000,"sub":"s"}"#);
    /// ```
    pub fn payload_json(&self) -> &str {
        self.0.json()
    }

    /// `{"active":true, ...claims}` (RFC 7662's answer, as Texas gives it), from the payload's
    /// text: a claim named `active` is left out.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn introspection_json(&self) -> Vec<u8> {
        const ACTIVE: &[u8] = br#"{"active":true"#;
        let payload = self.0.json();
        if self.0.flags & HAS_ACTIVE != 0 {
            let map = self.parse_map();
            let rest = map.iter().filter(|(k, _)| *k != "active");
            let mut out = ACTIVE.to_vec();
            for (k, v) in rest {
                out.push(b',');
                // Serialising a string and a JSON value into a Vec cannot fail.
                let _ = serde_json::to_writer(&mut out, k);
                out.push(b':');
                let _ = serde_json::to_writer(&mut out, v);
            }
            out.push(b'}');
            return out;
        }
        if self.0.flags & EMPTY != 0 || payload.len() < 2 {
            return [ACTIVE, b"}"].concat();
        }
        // The payload is an object with at least one claim: `{` + claims, after `active`.
        let mut out = Vec::with_capacity(ACTIVE.len() + payload.len());
        out.extend_from_slice(ACTIVE);
        out.push(b',');
        out.extend_from_slice(&payload.as_bytes()[1..]);
        out
    }

    /// `value` (a claim read from these claims) as shared bytes: a slice of the claims' buffer
    /// when it is in it, so an identity header costs no copy of it.
    ///
    /// The slices hang off a `Bytes` that owns a clone of these claims, made at the first
    /// value a thread shares from them and kept by the thread until it shares from other
    /// claims: the proxy asks for the half-dozen values of one token in a row, so a request
    /// costs one small allocation at most (none while the same token comes back), and a
    /// cached token keeps no `Bytes` of its own (a handle and a shared count, 64 bytes, a
    /// quarter of what it holds besides its payload). A slice holds its claims: one must never
    /// be kept in their own memo (a cycle, never freed).
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    #[inline]
    pub(crate) fn share(&self, value: &str) -> Bytes {
        let range = self.0.buf.as_bytes().as_ptr_range();
        let inside = range.start <= value.as_ptr()
            && value.as_ptr().wrapping_add(value.len()) <= range.end
            && !value.is_empty();
        if !inside {
            return Bytes::copy_from_slice(value.as_bytes());
        }
        let id = Arc::as_ptr(&self.0) as usize;
        let shared = LAST_SHARED.try_with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                // The same allocation, not one at a recycled address: the kept `Bytes` holds a
                // clone of the claims it was made for, so they cannot have been freed.
                Some((at, bytes)) if *at == id => bytes.slice_ref(value.as_bytes()),
                _ => self.share_anew(&mut last, value),
            }
        });
        // A thread being torn down has no slot left: a `Bytes` of its own then.
        shared.unwrap_or_else(|_| self.owned().slice_ref(value.as_bytes()))
    }

    /// [`share`](Self::share) from claims other than the thread's last: their own `Bytes`,
    /// kept in `last` in place of the one before. Once per token and thread, out of line.
    #[cold]
    fn share_anew(&self, last: &mut Option<(usize, Bytes)>, value: &str) -> Bytes {
        let bytes = self.owned();
        let slice = bytes.slice_ref(value.as_bytes());
        // The claims shared before may be dropped here, outside any other borrow.
        *last = Some((Arc::as_ptr(&self.0) as usize, bytes));
        slice
    }

    /// A `Bytes` of the buffer that holds a clone of these claims.
    fn owned(&self) -> Bytes {
        Bytes::from_owner(Buffer(self.clone()))
    }

    /// The scopes as one space-separated text (the `X-Auth-Scopes` value): the token's own
    /// `scp` when it is written that way already, else joined once and kept with the claims.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn scopes_text(&self) -> Bytes {
        match self.scopes_as_written() {
            Some(text) => self.share(text),
            None if self.list(List::Scopes).next().is_none() => Bytes::new(),
            None => self.joined().scopes.clone(),
        }
    }

    /// The roles joined by `,` (the `X-Auth-Roles` value): one role is shared, not copied;
    /// several are joined once and kept with the claims.
    #[cfg_attr(not(feature = "server"), allow(dead_code))]
    pub(crate) fn roles_text(&self) -> Bytes {
        match self.roles_as_written() {
            Some(text) => self.share(text),
            None if self.list(List::Roles).next().is_none() => Bytes::new(),
            None => self.joined().roles.clone(),
        }
    }

    /// `scp` when its text is the `X-Auth-Scopes` value as it is: words split by single spaces.
    fn scopes_as_written(&self) -> Option<&str> {
        if self.0.kind(List::Scopes) != ListKind::Words {
            return None;
        }
        let text = self.resolve(self.0.scopes);
        single_spaced(text).then_some(text)
    }

    /// The one role, when there is exactly one: the `X-Auth-Roles` value as it is.
    fn roles_as_written(&self) -> Option<&str> {
        // A one-item list is kept as one item (see `ClaimsInner::of`).
        (self.0.kind(List::Roles) == ListKind::One).then(|| self.resolve(self.0.roles))
    }

    /// The scope and role texts that had to be joined, built at the first request that asks.
    fn joined(&self) -> &Joined {
        self.memo(|c| Joined {
            scopes: c.join_unless(c.scopes_as_written().is_some(), List::Scopes, " "),
            roles: c.join_unless(c.roles_as_written().is_some(), List::Roles, ","),
        })
    }

    fn join_unless(&self, as_written: bool, list: List, sep: &str) -> Bytes {
        if as_written {
            Bytes::new()
        } else {
            self.join(list, sep)
        }
    }

    /// The heap bytes the proxy's `X-Auth-*` values add to these claims once built: when a
    /// scope or role list has to be joined, the joined texts (each with its own count) and
    /// their memo entry. The values that are slices of the buffer add nothing that stays (see
    /// [`share`](Self::share)). Counted without building anything: the caches weigh an entry
    /// before the proxy asks for its headers, and again when it leaves.
    pub(crate) fn headers_bytes(&self) -> usize {
        use crate::cache_meter::heap_chunk;
        let mut bytes = 0;
        let joined = |as_written: bool, list: List, sep: usize| {
            let len: usize = if as_written {
                0
            } else {
                self.list(list).map(|s| s.len() + sep).sum::<usize>()
            };
            // `sep` was counted once too many: a list of n items has n - 1 separators.
            let len = len.saturating_sub(sep);
            if len == 0 {
                0
            } else {
                heap_chunk(len) + heap_chunk(SHARED_BYTES)
            }
        };
        let lists = joined(self.scopes_as_written().is_some(), List::Scopes, 1)
            + joined(self.roles_as_written().is_some(), List::Roles, 1);
        if lists > 0 {
            bytes += lists + Memo::entry_bytes::<Joined>();
        }
        bytes
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
        self.0.flags & IDTYP_APP != 0
            || (self.0.kind(List::Scopes) == ListKind::Empty
                && self.hot(Hot::Sub).is_some()
                && self.hot(Hot::Sub) == self.hot(Hot::Oid))
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
        if !scopes.is_empty() && !self.has_any(List::Scopes, scopes) {
            return Err(ValidationError::InsufficientScope {
                scope: scopes.join(" "),
            });
        }
        if !roles.is_empty() && !self.has_any(List::Roles, roles) {
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
        // `azp`, else `appid`: chosen once, when the claims were made.
        let at = self.0.hot[Kept::Client as usize];
        (at != At::ABSENT).then(|| self.resolve(at))
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
        if !allow_unscoped
            && self.0.kind(List::Scopes) == ListKind::Empty
            && self.0.kind(List::Roles) == ListKind::Empty
        {
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

    /// A hot claim's value, when the token has it as a string. `azp` and `appid` are kept as
    /// one (the client, [`client_id`](Self::client_id)): `appid` is `None` here when the token
    /// has an `azp` too. `idtyp` is kept only as whether it is `app`
    /// ([`is_app_only`](Self::is_app_only)): `None` here.
    #[inline]
    pub(crate) fn hot(&self, which: Hot) -> Option<&str> {
        let appid = self.0.flags & CLIENT_IS_APPID != 0;
        let kept = match which {
            Hot::Sub => Kept::Sub,
            Hot::Oid => Kept::Oid,
            Hot::Tid => Kept::Tid,
            Hot::Name => Kept::Name,
            Hot::Iss => Kept::Iss,
            Hot::Upn => Kept::Upn,
            Hot::PreferredUsername => Kept::PreferredUsername,
            Hot::Azp if !appid => Kept::Client,
            Hot::Appid if appid => Kept::Client,
            Hot::Azp | Hot::Appid | Hot::Idtyp => return None,
        };
        let at = self.0.hot[kept as usize];
        (at != At::ABSENT).then(|| self.resolve(at))
    }

    /// The text at `at`: in the payload, or among the unescaped values.
    #[inline]
    fn resolve(&self, at: At) -> &str {
        if at.len == At::WIDE {
            let wide = self.wide().strs.get(usize::from(at.start)).copied();
            let (start, len) = wide.unwrap_or_default();
            return self.text(start, len);
        }
        self.text(usize::from(at.start), usize::from(at.len))
    }

    #[inline]
    fn text(&self, start: usize, len: usize) -> &str {
        // A range off the characters' boundaries (never made) reads as empty.
        self.0
            .buf
            .get(start..start.saturating_add(len))
            .unwrap_or("")
    }

    /// The positions of a payload too large for 16-bit ones (kept in the memo).
    #[cold]
    fn wide(&self) -> &Wide {
        self.memo(|_| Wide::default())
    }

    /// The items of a scope or role list.
    fn list(&self, list: List) -> impl Iterator<Item = &str> {
        let inner = &*self.0;
        let at = inner.list_at(list);
        let (mut words, mut one, mut table, mut wide) = (None, None, &[][..], &[][..]);
        match inner.kind(list) {
            ListKind::Empty => {}
            ListKind::Words => words = Some(self.resolve(at)),
            ListKind::One => one = Some(at),
            ListKind::Several if at.len == At::WIDE => {
                wide = self.wide().lists[usize::from(at.start) & 1].as_ref();
            }
            ListKind::Several => {
                let start = usize::from(at.start);
                table = inner
                    .buf
                    .as_bytes()
                    .get(start..start + usize::from(at.len) * At::BYTES)
                    .unwrap_or(&[]);
            }
        }
        words
            .into_iter()
            .flat_map(str::split_whitespace)
            .chain(one.map(|at| self.resolve(at)))
            .chain(
                table
                    .chunks_exact(At::BYTES)
                    .map(|item| self.resolve(At::read(item))),
            )
            .chain(wide.iter().map(|&(start, len)| self.text(start, len)))
    }

    /// Whether one of `wanted` is in `list`. An ASCII `scp` (every one Entra issues) is split
    /// byte by byte, on what `str::split_whitespace` splits ASCII text on (U+0009 to U+000D
    /// and the space), rather than character by character: a route checks it at every request.
    fn has_any(&self, list: List, wanted: &[String]) -> bool {
        if self.0.kind(list) == ListKind::Words {
            let text = self.resolve(self.0.list_at(list));
            if text.is_ascii() {
                return text
                    .as_bytes()
                    .split(|b| matches!(b, b'\t'..=b'\r' | b' '))
                    .any(|w| !w.is_empty() && wanted.iter().any(|x| x.as_bytes() == w));
            }
        }
        self.list(list).any(|s| wanted.iter().any(|w| w == s))
    }

    fn join(&self, list: List, sep: &str) -> Bytes {
        let mut out = String::new();
        for (i, item) in self.list(list).enumerate() {
            if i > 0 {
                out.push_str(sep);
            }
            out.push_str(item);
        }
        // Exactly its length, so that `headers_bytes` can count it.
        Bytes::from(out.into_boxed_str().into_boxed_bytes())
    }
}

impl ClaimsInner {
    /// The payload's JSON text.
    fn json(&self) -> &str {
        let len = if self.json_len == At::WIDE {
            self.memo.get_or_init(Wide::default).json_len
        } else {
            usize::from(self.json_len)
        };
        self.buf.get(..len).unwrap_or("")
    }

    fn kind(&self, list: List) -> ListKind {
        ListKind::of(self.flags >> list.shift())
    }

    fn list_at(&self, list: List) -> At {
        match list {
            List::Scopes => self.scopes,
            List::Roles => self.roles,
        }
    }
}

/// The owner of the `Bytes` that [`Claims::share`] slices: claims, read as their buffer.
struct Buffer(Claims);

impl AsRef<[u8]> for Buffer {
    fn as_ref(&self) -> &[u8] {
        self.0.0.buf.as_bytes()
    }
}

thread_local! {
    /// The claims this thread last shared a value of (by address), and their `Bytes`.
    static LAST_SHARED: std::cell::RefCell<Option<(usize, Bytes)>> =
        const { std::cell::RefCell::new(None) };
}

/// The provider's name as claims keep it: shared, behind a thin pointer.
pub(crate) type ProviderName = Arc<Box<str>>;

/// The claims kept parsed, as positions in the payload: those the proxy and the checks read on
/// every request.
#[derive(Clone, Copy)]
pub(crate) enum Hot {
    Sub,
    Oid,
    Tid,
    Name,
    Iss,
    Azp,
    Appid,
    Idtyp,
    Upn,
    PreferredUsername,
}

const HOT: usize = 10;

/// The hot claims [`Claims`] keep a position of: `azp` and `appid` as one (`Client`: `azp`,
/// else `appid`), and `idtyp` as a flag ([`IDTYP_APP`]), as that is how they are read.
#[derive(Clone, Copy)]
enum Kept {
    Sub,
    Oid,
    Tid,
    Name,
    Iss,
    Upn,
    PreferredUsername,
    Client,
}

const KEPT: usize = 8;

/// Where a claim's text is in the claims' buffer: `(start, len)`, 16 bits each, as a buffer
/// made by a validator is under 64 KiB ([`super::MAX_TOKEN_BYTES`] is 16 KiB). A larger one
/// (only [`Claims::from_json`] and [`Claims::from_map`] take any size) keeps its positions in
/// a [`Wide`] list, and `len` [`At::WIDE`] says `start` is an index into it. For a list of
/// several items, `(start, len)` is where its items' `At`s are in the buffer, and how many.
#[derive(Clone, Copy, PartialEq, Eq)]
struct At {
    start: u16,
    len: u16,
}

impl At {
    const ABSENT: At = At {
        start: u16::MAX,
        len: 0,
    };
    /// No narrow position has this length: the buffer is shorter.
    const WIDE: u16 = u16::MAX;
    /// An item `At` in the buffer: `start`, then `len`, each as three ASCII bytes of 7, 7
    /// and 2 bits, least significant first: ASCII keeps the buffer text.
    const BYTES: usize = 6;

    fn read(item: &[u8]) -> At {
        let word = |i: usize| {
            u16::from(item[i]) | u16::from(item[i + 1]) << 7 | u16::from(item[i + 2]) << 14
        };
        At {
            start: word(0),
            len: word(3),
        }
    }

    fn write(self, buf: &mut String) {
        for word in [self.start, self.len] {
            for shift in [0, 7, 14] {
                // Below 0x80: one ASCII character.
                buf.push(char::from((word >> shift) as u8 & 0x7f));
            }
        }
    }
}

/// Which of the two lists.
#[derive(Clone, Copy)]
enum List {
    Scopes,
    Roles,
}

impl List {
    /// Where its [`ListKind`] is in [`ClaimsInner::flags`].
    fn shift(self) -> u8 {
        match self {
            List::Scopes => 2,
            List::Roles => 4,
        }
    }
}

/// A scope or role claim's shape, as kept: absent (or neither a string nor a list with a
/// string), a space-separated string (`scp`), one string (a single role, or a list of one),
/// or a list of several strings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ListKind {
    Empty = 0,
    Words = 1,
    One = 2,
    Several = 3,
}

impl ListKind {
    fn of(bits: u8) -> Self {
        match bits & 3 {
            0 => ListKind::Empty,
            1 => ListKind::Words,
            2 => ListKind::One,
            _ => ListKind::Several,
        }
    }
}

/// The positions of a buffer of 64 KiB or more, as `(start, len)` in bytes: the strings by
/// [`At::start`], and the two lists' items.
#[derive(Default)]
struct Wide {
    json_len: usize,
    strs: Vec<(usize, usize)>,
    lists: [Vec<(usize, usize)>; 2],
}

impl ClaimsInner {
    /// The buffer (the payload, its unescaped values, the items of a list of several) and the
    /// positions in it; a buffer of 64 KiB or more keeps its positions in the [`Wide`] list
    /// returned too.
    fn of(provider: ProviderName, parsed: Parsed) -> (Self, Option<Wide>) {
        let json_len = parsed.payload.len();
        // Read while the payload is still text.
        let idtyp_app = if parsed.hot(Hot::Idtyp) == Some("app") {
            parsed.flags | IDTYP_APP
        } else {
            parsed.flags
        };
        let lists = [parsed.scopes.compact(), parsed.roles.compact()];
        let items: usize = lists
            .iter()
            .map(|l| match l {
                Strs::List(items) => items.len(),
                _ => 0,
            })
            .sum();
        let mut buf = parsed.payload;
        if !parsed.unescaped.is_empty() || items > 0 {
            buf.reserve_exact(parsed.unescaped.len() + items * At::BYTES);
            buf.push_str(&parsed.unescaped);
        }
        // Below `At::WIDE`, so no position is mistaken for the marker.
        let mut wide = (buf.len() + items * At::BYTES >= usize::from(At::WIDE)).then(|| Wide {
            json_len,
            ..Wide::default()
        });
        let mut flags = idtyp_app;
        let (azp, appid) = (
            parsed.hot[Hot::Azp as usize],
            parsed.hot[Hot::Appid as usize],
        );
        let client = if azp != Str::ABSENT {
            azp
        } else {
            if appid != Str::ABSENT {
                flags |= CLIENT_IS_APPID;
            }
            appid
        };
        let mut hot = [At::ABSENT; KEPT];
        for (kept, s) in [
            (Kept::Sub, parsed.hot[Hot::Sub as usize]),
            (Kept::Oid, parsed.hot[Hot::Oid as usize]),
            (Kept::Tid, parsed.hot[Hot::Tid as usize]),
            (Kept::Name, parsed.hot[Hot::Name as usize]),
            (Kept::Iss, parsed.hot[Hot::Iss as usize]),
            (Kept::Upn, parsed.hot[Hot::Upn as usize]),
            (
                Kept::PreferredUsername,
                parsed.hot[Hot::PreferredUsername as usize],
            ),
            (Kept::Client, client),
        ] {
            hot[kept as usize] = At::of(s, json_len, &mut wide);
        }
        let mut list_ats = [At::ABSENT; 2];
        for ((list, which), list_at) in lists
            .into_iter()
            .zip([List::Scopes, List::Roles])
            .zip(&mut list_ats)
        {
            let (kind, at) = match list {
                Strs::Empty => (ListKind::Empty, At::ABSENT),
                Strs::Words(s) => (ListKind::Words, At::of(s, json_len, &mut wide)),
                Strs::One(s) => (ListKind::One, At::of(s, json_len, &mut wide)),
                Strs::List(items) if items.is_empty() => (ListKind::Empty, At::ABSENT),
                Strs::List(items) => match &mut wide {
                    None => {
                        let start = buf.len();
                        for s in items.iter() {
                            At::of(*s, json_len, &mut None).write(&mut buf);
                        }
                        let at = At {
                            start: u16::try_from(start).unwrap_or(u16::MAX),
                            len: u16::try_from(items.len()).unwrap_or(0),
                        };
                        (ListKind::Several, at)
                    }
                    Some(wide) => {
                        wide.lists[which as usize] =
                            items.iter().filter_map(|s| place(*s, json_len)).collect();
                        let at = At {
                            start: which as u16,
                            len: At::WIDE,
                        };
                        (ListKind::Several, at)
                    }
                },
            };
            flags |= (kind as u8) << which.shift();
            *list_at = at;
        }
        let [scopes, roles] = list_ats;
        let inner = ClaimsInner {
            buf: buf.into_boxed_str(),
            hot,
            scopes,
            roles,
            exp: parsed.exp,
            // Below `At::WIDE` when narrow; a wide buffer's is in its `Wide`.
            json_len: match wide {
                None => u16::try_from(json_len).unwrap_or(At::WIDE),
                Some(_) => At::WIDE,
            },
            flags,
            provider,
            stamp: Stamp {
                digest: [0; 32],
                epoch: Stamp::NONE,
            },
            memo: Memo::default(),
        };
        (inner, wide)
    }
}

impl At {
    /// Where `s` is kept: its 16-bit position, or (for a buffer of 64 KiB or more, which has
    /// `wide`) its place in `wide`.
    fn of(s: Str, json_len: usize, wide: &mut Option<Wide>) -> At {
        let Some((start, len)) = place(s, json_len) else {
            return At::ABSENT;
        };
        let Some(wide) = wide else {
            // A narrow buffer: both are below `At::WIDE`.
            return match (u16::try_from(start), u16::try_from(len)) {
                (Ok(start), Ok(len)) => At { start, len },
                _ => At::ABSENT,
            };
        };
        wide.strs.push((start, len));
        At {
            start: u16::try_from(wide.strs.len() - 1).unwrap_or(u16::MAX),
            len: At::WIDE,
        }
    }
}

/// Where a parsed position lands in the buffer: unescaped values follow the payload.
fn place(s: Str, json_len: usize) -> Option<(usize, usize)> {
    if s == Str::ABSENT {
        return None;
    }
    let (start, len) = (s.start as usize, s.len as usize);
    if start & ESCAPED != 0 {
        return Some((json_len + (start & !ESCAPED), len));
    }
    Some((start, len))
}

/// `(start, len)` of a claim's text, as the parser finds it: in the payload, or (with
/// [`ESCAPED`] set in `start`) in the unescaped values. `u32`: a token is at most
/// [`super::MAX_TOKEN_BYTES`].
#[derive(Clone, Copy, PartialEq, Eq)]
struct Str {
    start: u32,
    len: u32,
}

impl Str {
    const ABSENT: Str = Str {
        start: u32::MAX,
        len: 0,
    };
}

const ESCAPED: usize = 1 << 31;

/// A scope or role claim: absent (or neither a string nor a list), a space-separated string
/// (`scp`), one string (a single role), or a list of strings.
enum Strs {
    Empty,
    Words(Str),
    One(Str),
    List(Box<[Str]>),
}

impl Strs {
    /// A one-item list as [`Strs::One`]: read the same way everywhere, and a cached token
    /// with a single role (an Entra `roles` array often has one) keeps no list on the heap.
    fn compact(self) -> Self {
        match self {
            Strs::List(items) if items.len() == 1 => Strs::One(items[0]),
            other => other,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Strs::Empty => true,
            Strs::Words(_) | Strs::One(_) => false,
            Strs::List(items) => items.is_empty(),
        }
    }
}

/// [`ClaimsInner::flags`]: the payload has no claims; it has a claim named `active` (the
/// introspection answer then cannot be the payload with `active` put in front). Bits 2 to 5
/// are the lists' kinds.
const EMPTY: u8 = 1;
const HAS_ACTIVE: u8 = 2;
/// `idtyp` is `app`.
const IDTYP_APP: u8 = 1 << 6;
/// The client position is `appid`'s (the token has no `azp` string).
const CLIENT_IS_APPID: u8 = 1 << 7;

/// Whether `text` is its words joined by single spaces: no leading, trailing or doubled space,
/// no other whitespace. One pass, as the proxy asks it for every request.
fn single_spaced(text: &str) -> bool {
    // A space first is as bad as a second space in a row.
    let mut after_space = true;
    for c in text.chars() {
        if c == ' ' {
            if after_space {
                return false;
            }
            after_space = true;
        } else if c.is_whitespace() {
            return false;
        } else {
            after_space = false;
        }
    }
    !after_space || text.is_empty()
}

/// What `bytes` allocates the first time a `Bytes` made from a box is sliced or cloned: its
/// shared reference count (a pointer, a capacity and the count).
const SHARED_BYTES: usize = 3 * size_of::<usize>();

/// The `X-Auth-Scopes` and `X-Auth-Roles` texts that had to be joined (a scope list not
/// written as single-spaced words, several roles); empty where the token's own text is used.
struct Joined {
    scopes: Bytes,
    roles: Bytes,
}

/// Memo types of the claims' own lazily built views.
struct Scopes(Vec<String>);
struct Roles(Vec<String>);
struct AsMap(Map<String, Value>);

/// A tiny map from type to value, filled once per type and never emptied: an append-only list of
/// entries, each in a `OnceBox`, so a lookup takes no lock and allocates nothing. It holds a
/// couple of entries at most, so the walk is shorter than hashing would be. A thin pointer
/// (`OnceBox` is one word), as every cached token carries one and most never fill it; the
/// price is a second, small allocation per entry.
#[derive(Default)]
struct Memo(OnceBox<Box<dyn MemoEntry>>);

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
        // Built outside the `OnceBox`, so that when another thread fills this slot first (with
        // its own type, or with `T` too, as `OnceBox::get_or_init` would keep only one) the
        // entry can go on to the next empty slot.
        let mut pending: Option<Box<Box<dyn MemoEntry>>> = Some(Box::new(Box::new(Entry {
            value: init(),
            next: Memo::default(),
        })));
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

    /// The heap bytes an entry of type `T` takes: the entry, and the box that points to it.
    fn entry_bytes<T>() -> usize {
        use crate::cache_meter::heap_chunk;
        heap_chunk(size_of::<Box<dyn MemoEntry>>()) + heap_chunk(size_of::<Entry<T>>())
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

/// The one pass over a payload's JSON text that finds the hot claims, and what the validator
/// checks besides (ID-token markers, the registered claims `exp`, `nbf`, `iss`, `aud`), without
/// building a map.
mod parse {
    use std::fmt;

    use serde::Deserializer as _;
    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::{EMPTY, ESCAPED, HAS_ACTIVE, HOT, Hot, Str, Strs};

    /// The registered claims (RFC 7519 §4.1) the validator checks, read the way `jsonwebtoken`
    /// 11 read them when it checked them (its `ClaimsForValidation`), so that each refusal keeps
    /// the message it had: a claim of the wrong type counts as absent, except where noted.
    #[derive(Default)]
    pub(in crate::validate) struct Registered {
        /// `exp`: absent, or not a number (either is "no exp claim", as it is required).
        pub(in crate::validate) exp: Numeric,
        /// `nbf`: absent (no check), not a number (a refusal of its own), or when.
        pub(in crate::validate) nbf: Numeric,
        /// `iss` is a string or a list of strings: what counts as present.
        pub(in crate::validate) iss: bool,
        /// `aud` is a string or a list of strings, and whether one of them is an accepted
        /// audience; `None` when absent or of another type.
        pub(in crate::validate) aud: Option<bool>,
        /// The payload did not parse as `jsonwebtoken`'s claims: one of `exp`, `nbf`, `sub`,
        /// `iss`, `aud` given twice (serde's duplicate field), `exp` or `nbf` a non-empty list or
        /// object, `sub` a list or an object (its parser stopped there, mid-value).
        pub(in crate::validate) malformed: bool,
    }

    /// A NumericDate (RFC 7519 §2) as `jsonwebtoken` reads it: a non-negative integer, or a
    /// finite non-negative float below `u64::MAX`, rounded.
    #[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
    pub(in crate::validate) enum Numeric {
        #[default]
        Absent,
        Invalid,
        At(u64),
    }

    /// A parsed payload: its text, and where the claims are in it.
    pub(in crate::validate) struct Parsed {
        pub(super) payload: String,
        pub(super) unescaped: String,
        pub(super) hot: [Str; HOT],
        pub(super) scopes: Strs,
        pub(super) roles: Strs,
        pub(super) exp: u64,
        pub(super) flags: u8,
        /// The payload's `typ` (Keycloak's token types), for the validator.
        typ: Str,
        /// The claims that mark a token as something else than an access token, for the
        /// validator: `nonce`, `at_hash`, `c_hash`, `events`, and whether `ver` is there.
        id_token_marker: bool,
        has_ver: bool,
        /// Which hot claims are there, whatever their type (bit `Hot as u16`).
        present: u16,
    }

    impl Parsed {
        /// Parses `payload`, which must be a JSON object. Repeated names: the last one counts,
        /// as in a parsed map.
        pub(in crate::validate) fn of(payload: Box<str>) -> Result<Self, serde_json::Error> {
            Self::checked(String::from(payload), &[]).map(|(parsed, _)| parsed)
        }

        /// [`Parsed::of`], and in the same pass the registered claims the validator checks,
        /// `aud` against `audiences`.
        pub(in crate::validate) fn checked(
            payload: String,
            audiences: &[String],
        ) -> Result<(Self, Registered), serde_json::Error> {
            let mut found = Found::default();
            let mut de = serde_json::Deserializer::from_str(&payload);
            de.deserialize_map(PayloadVisitor {
                base: payload.as_ptr() as usize,
                len: payload.len(),
                audiences,
                found: &mut found,
            })?;
            de.end()?;
            let Found {
                unescaped,
                hot,
                scp,
                scope,
                roles,
                exp,
                typ,
                id_token_marker,
                has_ver,
                keys,
                active,
                present,
                registered,
                seen: _,
            } = found;
            let mut flags = 0;
            if keys == 0 {
                flags |= EMPTY;
            }
            if active {
                flags |= HAS_ACTIVE;
            }
            let mut parsed = Self {
                payload,
                unescaped,
                hot,
                // `scp`, else `scope`: a `scp` that is not a list of scopes still hides `scope`.
                scopes: scp.or(scope).unwrap_or(Strs::Empty),
                roles: roles.unwrap_or(Strs::Empty),
                exp: exp.unwrap_or(0),
                flags,
                typ,
                id_token_marker,
                has_ver,
                present,
            };
            parsed.normalise();
            Ok((parsed, registered))
        }

        pub(super) fn empty() -> Self {
            Self {
                payload: "{}".into(),
                unescaped: String::new(),
                hot: [Str::ABSENT; HOT],
                scopes: Strs::Empty,
                roles: Strs::Empty,
                exp: 0,
                flags: EMPTY,
                typ: Str::ABSENT,
                id_token_marker: false,
                has_ver: false,
                present: 0,
            }
        }

        /// A hot claim, when it is a string.
        pub(in crate::validate) fn hot(&self, which: Hot) -> Option<&str> {
            self.text(self.hot[which as usize])
        }

        /// The payload's `typ`, when it is a string.
        pub(in crate::validate) fn typ(&self) -> Option<&str> {
            self.text(self.typ)
        }

        /// Whether `nonce`, `at_hash`, `c_hash` or `events` is there.
        pub(in crate::validate) fn has_id_token_marker(&self) -> bool {
            self.id_token_marker
        }

        /// Whether the hot claim is there, whatever its type.
        pub(in crate::validate) fn has_key(&self, which: Hot) -> bool {
            self.present & (1 << which as u16) != 0
        }

        /// Whether `ver` is there.
        pub(in crate::validate) fn has_ver(&self) -> bool {
            self.has_ver
        }

        fn text(&self, at: Str) -> Option<&str> {
            if at == Str::ABSENT {
                return None;
            }
            let (start, len) = (at.start as usize, at.len as usize);
            let (text, start) = if start & super::ESCAPED != 0 {
                (&*self.unescaped, start & !super::ESCAPED)
            } else {
                (&*self.payload, start)
            };
            text.get(start..start + len)
        }

        /// A `scp` with no scope in it (`""`, spaces) is no scope, as split words would say.
        fn normalise(&mut self) {
            if let Strs::Words(w) = self.scopes
                && self
                    .text(w)
                    .is_none_or(|t| t.split_whitespace().next().is_none())
            {
                self.scopes = Strs::Empty;
            }
            for list in [&mut self.scopes, &mut self.roles] {
                if list.is_empty() {
                    *list = Strs::Empty;
                }
            }
        }
    }

    #[derive(Default)]
    struct Found {
        unescaped: String,
        hot: [Str; HOT],
        scp: Option<Strs>,
        scope: Option<Strs>,
        roles: Option<Strs>,
        exp: Option<u64>,
        typ: Str,
        id_token_marker: bool,
        has_ver: bool,
        keys: usize,
        active: bool,
        present: u16,
        registered: Registered,
        /// Which of `exp`, `nbf`, `sub`, `iss`, `aud` were seen (bit [`Spec`]), for repeats.
        seen: u8,
    }

    impl Found {
        /// Notes a registered claim; a repeated one makes the payload malformed.
        fn see(&mut self, which: Spec) {
            let bit = 1 << which as u8;
            if self.seen & bit != 0 {
                self.registered.malformed = true;
            }
            self.seen |= bit;
        }
    }

    /// The registered claims `jsonwebtoken` parsed into fields of its own, so refused twice.
    #[derive(Clone, Copy)]
    enum Spec {
        Exp,
        Nbf,
        Sub,
        Iss,
        Aud,
    }

    impl Default for Str {
        fn default() -> Self {
            Str::ABSENT
        }
    }

    /// Where a string value lands: a slice of the payload when serde_json can lend it (no
    /// escapes), else appended to `unescaped`.
    struct Place<'f> {
        /// The payload's address and length: a lent string is a slice of it.
        base: usize,
        len: usize,
        unescaped: &'f mut String,
        /// The JSON type of the last value read through [`OneStr`].
        kind: Kind,
    }

    /// A claim value's JSON type, as far as the registered claims' checks tell them apart.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        Null,
        Str,
        /// A list of strings (or an empty list).
        Strs,
        /// A list holding something else than strings.
        List,
        Map,
        Other,
    }

    impl Place<'_> {
        fn borrowed(&mut self, v: &str) -> Str {
            let start = (v.as_ptr() as usize).wrapping_sub(self.base);
            match (u32::try_from(start), u32::try_from(v.len())) {
                (Ok(s), Ok(l)) if start.saturating_add(v.len()) <= self.len && start < ESCAPED => {
                    Str { start: s, len: l }
                }
                // Not inside the payload after all (serde_json lends only from its input, so
                // this is a safety net, not a path): kept as a copy.
                _ => self.copied(v),
            }
        }

        fn copied(&mut self, v: &str) -> Str {
            let start = self.unescaped.len();
            self.unescaped.push_str(v);
            match (u32::try_from(start | ESCAPED), u32::try_from(v.len())) {
                (Ok(s), Ok(l)) if start < ESCAPED => Str { start: s, len: l },
                // Beyond 2 GiB of escaped claims (no token comes near): not kept.
                _ => Str::ABSENT,
            }
        }
    }

    struct PayloadVisitor<'f, 'a> {
        base: usize,
        len: usize,
        audiences: &'a [String],
        found: &'f mut Found,
    }

    impl<'de> Visitor<'de> for PayloadVisitor<'_, '_> {
        type Value = ();

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let found = self.found;
            while let Some(name) = map.next_key::<Name>()? {
                found.keys += 1;
                let mut place = Place {
                    base: self.base,
                    len: self.len,
                    unescaped: &mut found.unescaped,
                    kind: Kind::Other,
                };
                let hot = |h: Hot| h as usize;
                match name {
                    Name::Hot(h) => {
                        found.present |= 1 << h as u16;
                        found.hot[hot(h)] = map.next_value_seed(OneStr(&mut place))?;
                        let kind = place.kind;
                        match h {
                            Hot::Sub => {
                                found.see(Spec::Sub);
                                if matches!(kind, Kind::Strs | Kind::List | Kind::Map) {
                                    found.registered.malformed = true;
                                }
                            }
                            Hot::Iss => {
                                found.see(Spec::Iss);
                                found.registered.iss = matches!(kind, Kind::Str | Kind::Strs);
                            }
                            _ => {}
                        }
                    }
                    Name::Aud => {
                        found.see(Spec::Aud);
                        found.registered.aud = map.next_value_seed(Aud(self.audiences, false))?;
                    }
                    Name::Nbf => {
                        found.see(Spec::Nbf);
                        let nbf = map.next_value::<Number>()?;
                        found.registered.nbf = nbf.jwt;
                        found.registered.malformed |= nbf.broken;
                    }
                    Name::Typ => found.typ = map.next_value_seed(OneStr(&mut place))?,
                    Name::Scp => found.scp = Some(map.next_value_seed(List(&mut place, true))?),
                    Name::Scope => {
                        found.scope = Some(map.next_value_seed(List(&mut place, true))?);
                    }
                    Name::Roles => {
                        found.roles = Some(map.next_value_seed(List(&mut place, false))?);
                    }
                    Name::Exp => {
                        found.see(Spec::Exp);
                        let exp = map.next_value::<Number>()?;
                        found.exp = exp.as_u64;
                        found.registered.exp = exp.jwt;
                        found.registered.malformed |= exp.broken;
                    }
                    Name::Marker => {
                        map.next_value::<IgnoredAny>()?;
                        found.id_token_marker = true;
                    }
                    Name::Ver => {
                        map.next_value::<IgnoredAny>()?;
                        found.has_ver = true;
                    }
                    Name::Active => {
                        map.next_value::<IgnoredAny>()?;
                        found.active = true;
                    }
                    Name::Other => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
            Ok(())
        }
    }

    /// A claim name, told apart without allocating.
    enum Name {
        Hot(Hot),
        Typ,
        Scp,
        Scope,
        Roles,
        Exp,
        Nbf,
        Aud,
        Marker,
        Ver,
        Active,
        Other,
    }

    impl<'de> de::Deserialize<'de> for Name {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Name;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a claim name")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Name, E> {
                    Ok(match v {
                        "sub" => Name::Hot(Hot::Sub),
                        "oid" => Name::Hot(Hot::Oid),
                        "tid" => Name::Hot(Hot::Tid),
                        "name" => Name::Hot(Hot::Name),
                        "iss" => Name::Hot(Hot::Iss),
                        "azp" => Name::Hot(Hot::Azp),
                        "appid" => Name::Hot(Hot::Appid),
                        "idtyp" => Name::Hot(Hot::Idtyp),
                        "upn" => Name::Hot(Hot::Upn),
                        "preferred_username" => Name::Hot(Hot::PreferredUsername),
                        "typ" => Name::Typ,
                        "scp" => Name::Scp,
                        "scope" => Name::Scope,
                        "roles" => Name::Roles,
                        "exp" => Name::Exp,
                        "nbf" => Name::Nbf,
                        "aud" => Name::Aud,
                        "nonce" | "at_hash" | "c_hash" | "events" => Name::Marker,
                        "ver" => Name::Ver,
                        "active" => Name::Active,
                        _ => Name::Other,
                    })
                }
            }
            d.deserialize_str(V)
        }
    }

    /// `exp` or `nbf`, read twice from the one value: as `Value::as_u64` reads it (what the
    /// claims keep), and as `jsonwebtoken` read a NumericDate (what the checks use).
    struct Number {
        as_u64: Option<u64>,
        jwt: Numeric,
        /// A non-empty list or object: `jsonwebtoken`'s parser refused it without reading it
        /// through, and failed at the next claim.
        broken: bool,
    }

    impl Number {
        const INVALID: Number = Number {
            as_u64: None,
            jwt: Numeric::Invalid,
            broken: false,
        };
    }

    impl<'de> de::Deserialize<'de> for Number {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Number;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
                    Ok(Number {
                        as_u64: Some(v),
                        jwt: Numeric::At(v),
                        broken: false,
                    })
                }
                fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
                    // serde_json gives only negative integers as i64; jsonwebtoken refused them.
                    Ok(Number {
                        as_u64: u64::try_from(v).ok(),
                        ..Number::INVALID
                    })
                }
                fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
                    let jwt = if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                        // In range, so the cast neither saturates nor truncates.
                        Numeric::At(v.round() as u64)
                    } else {
                        Numeric::Invalid
                    };
                    Ok(Number {
                        jwt,
                        ..Number::INVALID
                    })
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<Number, E> {
                    Ok(Number::INVALID)
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Number, E> {
                    Ok(Number::INVALID)
                }
                fn visit_unit<E: de::Error>(self) -> Result<Number, E> {
                    Ok(Number::INVALID)
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Number, A::Error> {
                    let mut broken = false;
                    while seq.next_element::<IgnoredAny>()?.is_some() {
                        broken = true;
                    }
                    Ok(Number {
                        broken,
                        ..Number::INVALID
                    })
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Number, A::Error> {
                    let mut broken = false;
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                        broken = true;
                    }
                    Ok(Number {
                        broken,
                        ..Number::INVALID
                    })
                }
            }
            d.deserialize_any(V)
        }
    }

    /// `aud`: whether it names one of the accepted audiences, when it is a string or a list of
    /// strings (`None` otherwise: `jsonwebtoken` read anything else as absent). The flag: this
    /// is an item of the list, where a list is no string either.
    struct Aud<'a>(&'a [String], bool);

    impl<'de> DeserializeSeed<'de> for Aud<'_> {
        type Value = Option<bool>;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<bool>, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Aud<'_> {
        type Value = Option<bool>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<bool>, E> {
            Ok(Some(self.0.iter().any(|a| a == v)))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<bool>, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<bool>, A::Error> {
            if self.1 {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            // Every item a string, any of them accepted; an empty list names no audience.
            let (mut strings, mut matched) = (true, false);
            while let Some(item) = seq.next_element_seed(Aud(self.0, true))? {
                match item {
                    Some(m) => matched |= m,
                    None => strings = false,
                }
            }
            Ok(strings.then_some(matched))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<bool>, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(None)
        }
    }

    /// Whether a list item is a string (read through, whatever it is).
    struct IsStr(bool);

    impl<'de> de::Deserialize<'de> for IsStr {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = IsStr;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<IsStr, E> {
                    Ok(IsStr(true))
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<IsStr, E> {
                    Ok(IsStr(false))
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<IsStr, E> {
                    Ok(IsStr(false))
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<IsStr, E> {
                    Ok(IsStr(false))
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<IsStr, E> {
                    Ok(IsStr(false))
                }
                fn visit_unit<E: de::Error>(self) -> Result<IsStr, E> {
                    Ok(IsStr(false))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<IsStr, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(IsStr(false))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<IsStr, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(IsStr(false))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// One claim value: its place when it is a string, [`Str::ABSENT`] otherwise.
    struct OneStr<'p, 'f>(&'p mut Place<'f>);

    impl<'de> DeserializeSeed<'de> for OneStr<'_, '_> {
        type Value = Str;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Str, D::Error> {
            d.deserialize_any(StrVisitor(self.0))
        }
    }

    struct StrVisitor<'p, 'f>(&'p mut Place<'f>);

    impl<'de> Visitor<'de> for StrVisitor<'_, '_> {
        type Value = Str;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str, E> {
            self.0.kind = Kind::Str;
            Ok(self.0.borrowed(v))
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Str, E> {
            self.0.kind = Kind::Str;
            Ok(self.0.copied(v))
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Str, E> {
            Ok(self.other(Kind::Other))
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Str, E> {
            Ok(self.other(Kind::Other))
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Str, E> {
            Ok(self.other(Kind::Other))
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Str, E> {
            Ok(self.other(Kind::Other))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Str, E> {
            Ok(self.other(Kind::Null))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Str, A::Error> {
            let mut strings = true;
            while let Some(item) = seq.next_element::<IsStr>()? {
                strings &= item.0;
            }
            Ok(self.other(if strings { Kind::Strs } else { Kind::List }))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Str, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(self.other(Kind::Map))
        }
    }

    impl StrVisitor<'_, '_> {
        /// A value that is not a string, of type `kind`.
        fn other(self, kind: Kind) -> Str {
            self.0.kind = kind;
            Str::ABSENT
        }
    }

    /// A scope or role claim: a string (split into words for scopes, one role for roles), or a
    /// list whose string items count (others are skipped).
    struct List<'p, 'f>(&'p mut Place<'f>, bool);

    impl<'de> DeserializeSeed<'de> for List<'_, '_> {
        type Value = Strs;

        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Strs, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for List<'_, '_> {
        type Value = Strs;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Strs, E> {
            let at = self.0.borrowed(v);
            Ok(if self.1 {
                Strs::Words(at)
            } else {
                Strs::One(at)
            })
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Strs, E> {
            let at = self.0.copied(v);
            Ok(if self.1 {
                Strs::Words(at)
            } else {
                Strs::One(at)
            })
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Strs, E> {
            Ok(Strs::Empty)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Strs, E> {
            Ok(Strs::Empty)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Strs, E> {
            Ok(Strs::Empty)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Strs, E> {
            Ok(Strs::Empty)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Strs, E> {
            Ok(Strs::Empty)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strs, A::Error> {
            let mut items = Vec::new();
            while let Some(at) = seq.next_element_seed(OneStr(&mut *self.0))? {
                if at != Str::ABSENT {
                    items.push(at);
                }
            }
            Ok(Strs::List(items.into_boxed_slice()))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strs, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Strs::Empty)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `Claims` answered when it kept a parsed map: the reference the compact form must
    /// match, claim by claim.
    fn from_map_reference(map: &Map<String, Value>) -> (Vec<String>, Vec<String>, u64) {
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
        (
            scopes,
            roles,
            map.get("exp").and_then(Value::as_u64).unwrap_or(0),
        )
    }

    #[test]
    fn the_compact_claims_answer_as_the_map_did() {
        let payloads = [
            r#"{"sub":"s","oid":"o","tid":"t","name":"Alice","scp":"a  b\tc ","roles":["R1",2,"R2",null],"exp":1900000000,"azp":"c"}"#,
            r#"{"sub":"Zo\u00eb \"q\"","name":"caf\u00e9","scope":["x y","z"],"roles":"One Role","exp":-5,"appid":"app"}"#,
            r#"{"sub":1,"oid":{"a":[1,2]},"scp":42,"scope":"hidden","exp":1.5e9,"upn":"u@x","preferred_username":"p@x"}"#,
            r#"{"sub":"first","sub":"second","scp":"","roles":[],"exp":"soon","idtyp":"app"}"#,
            r#"{"scp":[],"roles":{"x":1},"iss":"https://i/","ver":"2.0","active":false}"#,
            r#"{}"#,
            r#"{ "sub" : "spaced" , "exp" : 1 }"#,
        ];
        for text in payloads {
            let map: Map<String, Value> = serde_json::from_str(text).unwrap();
            let claims = Claims::from_json("p", text.into()).unwrap();
            let (scopes, roles, exp) = from_map_reference(&map);
            let s = |k: &str| map.get(k).and_then(Value::as_str);
            assert_eq!(claims.scopes(), scopes, "{text}");
            assert_eq!(claims.roles(), roles, "{text}");
            assert_eq!(claims.expires_at(), exp, "{text}");
            assert_eq!(claims.subject(), s("sub").unwrap_or(""), "{text}");
            assert_eq!(claims.oid(), s("oid"), "{text}");
            assert_eq!(claims.tid(), s("tid"), "{text}");
            assert_eq!(claims.name(), s("name"), "{text}");
            assert_eq!(claims.issuer(), s("iss").unwrap_or(""), "{text}");
            assert_eq!(
                claims.username(),
                s("upn").or(s("preferred_username")),
                "{text}"
            );
            assert_eq!(claims.client_id(), s("azp").or(s("appid")), "{text}");
            assert_eq!(claims.as_map(), &map, "{text}");
            assert_eq!(claims.get("sub"), map.get("sub"), "{text}");
            let unscoped = scopes.is_empty() && roles.is_empty();
            assert_eq!(
                claims.check_access(false, [&[], &[]]).is_err(),
                unscoped,
                "{text}"
            );
            let any = |v: &[String]| v.first().cloned().into_iter().collect::<Vec<_>>();
            assert!(claims.check(&any(&scopes), &any(&roles)).is_ok(), "{text}");
            let app_only = s("idtyp") == Some("app")
                || (scopes.is_empty() && s("sub").is_some() && s("sub") == s("oid"));
            assert_eq!(claims.is_app_only(), app_only, "{text}");
            // The introspection answer: every claim, `active` first and true.
            let answer: Map<String, Value> =
                serde_json::from_slice(&claims.introspection_json()).unwrap();
            let mut expected = map.clone();
            expected.insert("active".into(), Value::Bool(true));
            assert_eq!(answer, expected, "{text}");
            // The identity header texts.
            assert_eq!(
                &claims.scopes_text()[..],
                scopes.join(" ").as_bytes(),
                "{text}"
            );
            assert_eq!(
                &claims.roles_text()[..],
                roles.join(",").as_bytes(),
                "{text}"
            );
        }
        assert!(Claims::from_json("p", "[]".into()).is_err());
        assert!(Claims::from_json("p", r#"{"a":1} x"#.into()).is_err());
    }

    #[test]
    fn header_values_share_the_payload() {
        let claims =
            Claims::from_json("p", r#"{"sub":"s-1","scp":"a b","roles":["R"]}"#.into()).unwrap();
        let sub = claims.share(claims.subject());
        assert_eq!(&sub[..], b"s-1");
        assert!(
            claims
                .payload_json()
                .as_bytes()
                .as_ptr_range()
                .contains(&sub.as_ptr())
        );
        let scopes = claims.scopes_text();
        assert!(
            claims
                .payload_json()
                .as_bytes()
                .as_ptr_range()
                .contains(&scopes.as_ptr())
        );
        // A value from elsewhere is copied.
        assert_eq!(&claims.share("other")[..], b"other");
        // One role is the payload's own text, and is kept as a position, not a list.
        let role = claims.roles_text();
        assert_eq!(&role[..], b"R");
        assert!(
            claims
                .payload_json()
                .as_bytes()
                .as_ptr_range()
                .contains(&role.as_ptr())
        );
        let two = Claims::from_json("p", r#"{"sub":"s-1","scp":"a b","roles":["R","S"]}"#.into())
            .unwrap();
        assert_eq!(&two.roles_text()[..], b"R,S");
        assert_eq!(two.roles(), ["R", "S"]);
        // The list's two items follow the payload in the buffer; one role keeps nothing.
        let chunk = crate::cache_meter::heap_chunk;
        assert_eq!(
            claims.heap_bytes() - chunk(claims.payload_json().len()),
            two.heap_bytes() - chunk(two.payload_json().len() + 2 * At::BYTES),
            "only the two-role token keeps a list"
        );
    }

    #[test]
    fn a_scope_is_found_as_split_whitespace_finds_it() {
        let scps = [
            "a b",
            "  a\tb\n",
            "a\u{b}b",
            "a\u{c}b\rc",
            "ab",
            "a\u{3000}b",
            "a\u{a0}b c",
            "\u{e9}t\u{e9} a",
            "",
            " ",
        ];
        let wanted = ["a", "b", "c", "ab", "\u{e9}t\u{e9}", "a\u{a0}b", ""];
        for scp in scps {
            let claims = Claims::from_map(
                "p",
                serde_json::from_value(serde_json::json!({"sub": "s", "scp": scp})).unwrap(),
            );
            for w in wanted {
                let expected = scp.split_whitespace().any(|s| s == w);
                let found = claims.check(&[w.to_owned()], &[]).is_ok();
                assert_eq!(found, expected, "{scp:?} has {w:?}");
            }
        }
    }

    #[test]
    fn single_spaced_is_what_splitting_and_joining_keeps() {
        for text in [
            "",
            "a",
            "a b",
            " a",
            "a ",
            "a  b",
            "a\tb",
            "a\u{3000}b",
            "  ",
            " ",
            "ab cd ef",
        ] {
            let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
            assert_eq!(single_spaced(text), joined == text, "{text:?}");
        }
    }

    #[test]
    fn the_header_allowance_is_what_the_headers_build() {
        // Joined lists are built once and kept: their bytes are in the allowance. Slices of
        // the buffer keep nothing with the claims.
        let plain =
            Claims::from_json("p", r#"{"sub":"s","scp":"a b","roles":["R"]}"#.into()).unwrap();
        let joined =
            Claims::from_json("p", r#"{"sub":"s","scp":"a  b","roles":["R","S"]}"#.into()).unwrap();
        let chunk = crate::cache_meter::heap_chunk;
        assert_eq!(plain.headers_bytes(), 0);
        assert_eq!(
            joined.headers_bytes(),
            chunk(3)
                + chunk(SHARED_BYTES)
                + chunk(3)
                + chunk(SHARED_BYTES)
                + chunk(size_of::<Box<dyn MemoEntry>>())
                + chunk(size_of::<Entry<Joined>>())
        );
        assert_eq!(&joined.scopes_text()[..], b"a b");
        assert_eq!(&joined.roles_text()[..], b"R,S");
    }

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

    #[test]
    fn a_payload_past_64_kib_answers_as_a_small_one() {
        // Only `from_json` and `from_map` take a payload this large (a validator refuses a
        // token past 16 KiB): its positions do not fit 16 bits and are kept aside. The one of
        // 20 KiB keeps 16-bit positions, past 32 KiB: their top bits are in the list's table.
        for (filler, wide) in [(20 << 10, false), (48 << 10, true)] {
            a_large_payload_answers_as_a_small_one(filler, wide);
        }
    }

    fn a_large_payload_answers_as_a_small_one(filler: usize, wide: bool) {
        let filler = "x".repeat(filler);
        let roles: Vec<String> = (0..2000).map(|i| format!("Role.{i}")).collect();
        let map: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "filler": filler,
            "sub": "s-1", "oid": "o-1", "tid": "t-1", "name": "Zo\u{eb} \"q\"",
            "azp": "client", "iss": "https://i/", "preferred_username": "u@x",
            "scp": "a  b c", "roles": roles, "exp": 1_900_000_000u64,
        }))
        .unwrap();
        let text = serde_json::to_string(&map).unwrap();
        // Escaped so that the name is among the unescaped values, past the payload.
        let text = text.replace("Zoë", "Zo\\u00eb");
        assert_eq!(text.len() > 64 << 10, wide);
        assert!(
            text.find(r#""sub""#).unwrap() > 32 << 10,
            "hot claims past 32 KiB"
        );
        for claims in [
            Claims::from_json("p", text.as_str().into()).unwrap(),
            Claims::from_map("p", map.clone()),
        ] {
            assert_eq!(claims.0.json_len == At::WIDE, wide);
            let (scopes, roles, exp) = from_map_reference(&map);
            assert_eq!(claims.scopes(), scopes);
            assert_eq!(claims.roles(), roles);
            assert_eq!(claims.expires_at(), exp);
            assert_eq!(claims.subject(), "s-1");
            assert_eq!(claims.oid(), Some("o-1"));
            assert_eq!(claims.tid(), Some("t-1"));
            assert_eq!(claims.name(), Some("Zoë \"q\""));
            assert_eq!(claims.client_id(), Some("client"));
            assert_eq!(claims.issuer(), "https://i/");
            assert_eq!(claims.username(), Some("u@x"));
            assert!(claims.check(&[], &["Role.1999".to_owned()]).is_ok());
            assert!(claims.check(&["c".to_owned()], &[]).is_ok());
            assert!(claims.check(&[], &["Role.2000".to_owned()]).is_err());
            assert_eq!(&claims.scopes_text()[..], b"a b c");
            assert_eq!(claims.roles_text(), roles.join(","));
            assert_eq!(claims.as_map(), &map);
            // A value of the buffer is shared, not copied, however far in it is.
            let sub = claims.share(claims.subject());
            assert_eq!(&sub[..], b"s-1");
            assert!(
                claims
                    .0
                    .buf
                    .as_bytes()
                    .as_ptr_range()
                    .contains(&sub.as_ptr())
            );
        }
    }

    #[test]
    fn a_thread_keeps_the_last_shared_claims_only() {
        let a = Claims::from_json("p", r#"{"sub":"a-1","oid":"o"}"#.into()).unwrap();
        let b = Claims::from_json("p", r#"{"sub":"b-1","oid":"o"}"#.into()).unwrap();
        let (from_a, also_a) = (a.share(a.subject()), a.share(a.oid().unwrap()));
        // The thread holds one clone of `a` for both slices.
        assert_eq!(Arc::strong_count(&a.0), 2);
        let from_b = b.share(b.subject());
        assert_eq!((Arc::strong_count(&a.0), Arc::strong_count(&b.0)), (2, 2));
        drop((from_a, also_a));
        assert_eq!(Arc::strong_count(&a.0), 1, "a let go once b was shared");
        // Each slice is of its own claims' buffer, and outlives them.
        let again = a.share(a.subject());
        assert!(a.0.buf.as_bytes().as_ptr_range().contains(&again.as_ptr()));
        drop((a, b));
        assert_eq!((&again[..], &from_b[..]), (&b"a-1"[..], &b"b-1"[..]));
    }
}
