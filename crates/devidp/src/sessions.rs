//! The dev IdP's sign-in sessions (`sid`): who signed in and which apps got an ID token in each,
//! what OpenID Connect Back-Channel Logout 1.0 needs to tell those apps when a session ends
//! (the telling itself is `backchannel.rs`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Sessions remembered at most; beyond it the oldest is forgotten (its apps then get no
/// back-channel logout), so a long-running dev IdP does not grow without bound.
const MAX_SESSIONS: usize = 10_000;
/// How long one delivery may take. Logout waits for the deliveries (so an app's session is gone
/// by the time the browser is redirected back to it): an app that does not answer must not hold
/// the user's logout for long.
pub(crate) const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Sign-in sessions by `sid`, oldest first out once [`MAX_SESSIONS`] are held.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    pub(crate) by_sid: HashMap<String, Session>,
    /// `sid`s by creation sequence number, for evicting the oldest.
    order: BTreeMap<u64, String>,
    next: u64,
}

#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub(crate) seq: u64,
    /// The user's object id, lower case.
    pub(crate) oid: String,
    pub(crate) tid: String,
    /// Lower-case client ids that received an ID token in this session, in that order.
    pub(crate) clients: Vec<String>,
}

impl Sessions {
    /// Notes that `client_id` received an ID token in session `sid` of user `oid`.
    pub(crate) fn record(&mut self, sid: &str, oid: &str, tid: &str, client_id: &str) {
        let client = client_id.to_ascii_lowercase();
        if let Some(session) = self.by_sid.get_mut(sid) {
            if !session.clients.contains(&client) {
                session.clients.push(client);
            }
            return;
        }
        while self.by_sid.len() >= MAX_SESSIONS {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.by_sid.remove(&oldest);
        }
        let seq = self.next;
        self.next += 1;
        self.order.insert(seq, sid.to_owned());
        self.by_sid.insert(
            sid.to_owned(),
            Session {
                seq,
                oid: oid.to_ascii_lowercase(),
                tid: tid.to_ascii_lowercase(),
                clients: vec![client],
            },
        );
    }

    pub(crate) fn remove(&mut self, sid: &str) -> Option<Session> {
        let session = self.by_sid.remove(sid)?;
        self.order.remove(&session.seq);
        Some(session)
    }

    /// The `sid`s of a user's sessions, oldest first.
    pub(crate) fn sids_of(&self, oid: &str) -> Vec<String> {
        self.order
            .values()
            .filter(|sid| {
                self.by_sid
                    .get(*sid)
                    .is_some_and(|s| s.oid.eq_ignore_ascii_case(oid))
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_collect_clients_and_forget_the_oldest_beyond_the_cap() {
        let mut sessions = Sessions::default();
        sessions.record("s1", "OID-A", "T", "Client-1");
        sessions.record("s1", "oid-a", "t", "client-1");
        sessions.record("s1", "oid-a", "t", "client-2");
        sessions.record("s2", "oid-b", "t", "client-1");
        assert_eq!(sessions.by_sid["s1"].clients, ["client-1", "client-2"]);
        assert_eq!(sessions.sids_of("oid-a"), ["s1"]);
        assert!(sessions.remove("s1").is_some());
        assert!(sessions.remove("s1").is_none());
        assert_eq!(sessions.order.len(), 1);
        for i in 0..MAX_SESSIONS {
            sessions.record(&format!("x{i}"), "oid-c", "t", "client-1");
        }
        assert_eq!(sessions.by_sid.len(), MAX_SESSIONS);
        assert_eq!(sessions.order.len(), MAX_SESSIONS);
        assert!(!sessions.by_sid.contains_key("s2"), "the oldest went first");
        assert!(sessions.by_sid.contains_key("x0"));
    }
}
