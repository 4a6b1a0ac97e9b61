//! OpenID Connect Back-Channel Logout 1.0: the sign-in sessions (`sid`) and the apps that got an
//! ID token in each, and the signed `logout_token`s POSTed to those apps when a session ends.
//!
//! <https://openid.net/specs/openid-connect-backchannel-1_0.html>

use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::jwt::UnverifiedJwt;
use super::mint::pairwise_subject;
use super::scopes;
use super::state::{Shared, TenantPath, UserSession, now_secs};

/// Logout tokens are short-lived so a captured one cannot be replayed for long (§4: preferably
/// at most two minutes).
const LOGOUT_TOKEN_LIFETIME_SECS: u64 = 120;
/// The JWS `typ` of a logout token (§2.4, explicit typing per RFC 8725 §3.11).
const LOGOUT_TOKEN_TYP: &str = "logout+jwt";
/// The event a logout token declares (§2.4 `events`).
const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// The result of one back-channel logout POST of a `logout_token` to an app.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackchannelDelivery {
    /// The app told (its client id, lower case).
    pub client_id: String,
    /// The app's `backchannel_logout_uri`.
    pub uri: String,
    /// The session that ended.
    pub sid: String,
    /// The HTTP status the app answered; `None` when no answer came (connection refused,
    /// timeout) or the token could not be signed.
    pub status: Option<u16>,
    /// Why no answer came, when `status` is `None`. Never contains the token.
    pub error: Option<String>,
}

impl BackchannelDelivery {
    /// The app acknowledged the logout: 200 OK, or the 204 some frameworks answer instead (§2.8).
    pub fn acknowledged(&self) -> bool {
        matches!(self.status, Some(200 | 204))
    }
}

/// One logout token to send.
struct Pending {
    sid: String,
    oid: String,
    tid: String,
    client_id: String,
    uri: String,
}

impl Shared {
    /// Remembers that `client_id` received an ID token in `session`, so that ending the session
    /// tells the app.
    pub(crate) fn record_id_token(&self, session: &UserSession, oid: &str, client_id: &str) {
        self.lock()
            .sessions
            .record(&session.sid, oid, &session.tid, client_id);
    }

    /// The session named by a logout request's `id_token_hint`: an ID token this IdP signed (with
    /// a key it still publishes), issued by the tenant it names (and the tenant of the request
    /// path, unless that is `common` or `organizations`), for an app and user of a session still
    /// open. Expiry is not checked: an OP should accept an ID token whose `exp` has passed as
    /// a hint (OpenID Connect RP-Initiated Logout 1.0 §2).
    pub(crate) fn hinted_session(
        &self,
        tenant: &TenantPath,
        hint: &str,
    ) -> Result<String, &'static str> {
        let jwt = UnverifiedJwt::parse(hint).map_err(|_| "malformed")?;
        if jwt.header_str("alg") != Some("RS256") {
            return Err("not RS256");
        }
        let key = jwt
            .header_str("kid")
            .and_then(|kid| self.find_key(kid))
            .ok_or("unknown key")?;
        if !key.verify_rs256(jwt.signing_input.as_bytes(), &jwt.signature) {
            return Err("bad signature");
        }
        let tid = jwt
            .claim_str("tid")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let issuer_ok = matches!(self.tenant(&tid), Some(TenantPath::Tenant(_)))
            && jwt.claim_str("iss") == Some(self.issuer(&tid).as_str());
        if !issuer_ok {
            return Err("wrong issuer");
        }
        if let TenantPath::Tenant(path_tid) = tenant
            && *path_tid != tid
        {
            return Err("issued by another tenant");
        }
        let sid = jwt.claim_str("sid").ok_or("no sid")?;
        let oid = jwt.claim_str("oid").unwrap_or_default();
        let aud = jwt
            .claim_str("aud")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let inner = self.lock();
        let session = inner.sessions.by_sid.get(sid).ok_or("no such session")?;
        // An access token of the session has the resource as audience: only an ID token is a hint.
        if !session.oid.eq_ignore_ascii_case(oid) || !session.clients.contains(&aud) {
            return Err("not an ID token of the session");
        }
        Ok(sid.to_owned())
    }

    /// The sessions `sid_or_user` names: one session by its `sid`, or every session of a user
    /// given by username, UPN or object id.
    pub(crate) fn sessions_of(&self, sid_or_user: &str) -> Vec<String> {
        let inner = self.lock();
        if inner.sessions.by_sid.contains_key(sid_or_user) {
            return vec![sid_or_user.to_owned()];
        }
        let oid = inner
            .find_user(sid_or_user)
            .or_else(|| inner.find_user_by_oid(sid_or_user))
            .map(|u| u.oid.clone());
        oid.map(|oid| inner.sessions.sids_of(&oid))
            .unwrap_or_default()
    }

    /// Ends the sessions and POSTs a `logout_token` to every app of them that registered a
    /// `backchannel_logout_uri` (§2.5), all at once, each bounded by [`DELIVERY_TIMEOUT`].
    /// Failures are logged and returned, never raised: the user's logout goes on regardless.
    pub(crate) async fn end_sessions(&self, sids: &[String]) -> Vec<BackchannelDelivery> {
        let pending: Vec<Pending> = {
            let mut inner = self.lock();
            let mut pending = Vec::new();
            for sid in sids {
                let Some(session) = inner.sessions.remove(sid) else {
                    continue;
                };
                tracing::info!(sid = %sid, apps = session.clients.len(), "dev IdP: session ended");
                for client_id in session.clients {
                    let uri = scopes::find_app(&inner.apps, &client_id)
                        .and_then(|app| app.backchannel_logout_uri.clone());
                    if let Some(uri) = uri {
                        pending.push(Pending {
                            sid: sid.clone(),
                            oid: session.oid.clone(),
                            tid: session.tid.clone(),
                            client_id,
                            uri,
                        });
                    }
                }
            }
            pending
        };
        let mut deliveries = JoinSet::new();
        let mut results = Vec::with_capacity(pending.len());
        for (index, p) in pending.into_iter().enumerate() {
            let mut result = BackchannelDelivery {
                client_id: p.client_id.clone(),
                uri: p.uri.clone(),
                sid: p.sid.clone(),
                status: None,
                error: None,
            };
            match self.logout_token(&p) {
                Some(token) => {
                    let http = self.backchannel_http.clone();
                    deliveries.spawn(async move {
                        let answer = http
                            .post(&result.uri)
                            .form(&[("logout_token", token.as_str())])
                            .send()
                            .await;
                        match answer {
                            Ok(response) => result.status = Some(response.status().as_u16()),
                            // reqwest's message names the URL, never the request body.
                            Err(e) => result.error = Some(e.to_string()),
                        }
                        (index, result)
                    });
                }
                None => {
                    result.error = Some("the dev IdP failed to sign the logout token".into());
                    results.push((index, result));
                }
            }
        }
        while let Some(joined) = deliveries.join_next().await {
            match joined {
                Ok(done) => results.push(done),
                Err(e) => tracing::warn!(error = %e, "dev IdP: back-channel logout task failed"),
            }
        }
        results.sort_by_key(|(index, _)| *index);
        let results: Vec<BackchannelDelivery> = results.into_iter().map(|(_, r)| r).collect();
        for r in &results {
            if r.acknowledged() {
                tracing::info!(client_id = %r.client_id, uri = %r.uri, sid = %r.sid, "dev IdP: back-channel logout delivered");
            } else {
                tracing::warn!(
                    client_id = %r.client_id,
                    uri = %r.uri,
                    sid = %r.sid,
                    status = r.status,
                    error = r.error.as_deref().unwrap_or("-"),
                    "dev IdP: back-channel logout not acknowledged"
                );
            }
        }
        results
    }

    /// The `logout_token` of §2.4: the claims the app's ID tokens had (`iss`, `aud`, `sub`,
    /// `sid`, `tid`, `oid`), the back-channel logout event, a `jti`, and never a `nonce`.
    fn logout_token(&self, p: &Pending) -> Option<String> {
        let now = now_secs();
        let claims = json!({
            "iss": self.issuer(&p.tid),
            "aud": p.client_id,
            "iat": now,
            "exp": now + LOGOUT_TOKEN_LIFETIME_SECS,
            "jti": uuid::Uuid::new_v4().to_string(),
            "events": { BACKCHANNEL_LOGOUT_EVENT: Value::Object(Default::default()) },
            "sid": p.sid,
            "sub": pairwise_subject(&p.oid, &p.client_id),
            "tid": p.tid,
            "oid": p.oid,
        });
        self.current_key()
            .sign_typed(LOGOUT_TOKEN_TYP, &claims)
            .ok()
    }
}
