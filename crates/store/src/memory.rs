//! The embedded store: maps in this process, behind one mutex held for microseconds and
//! never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use islb_core::{NodeKey, Session, Timestamp, Verdict};
use islb_gob::Node;

use crate::{Claim, Cursor, SessionClaim, Snapshot, Store, StoreError, StreamKey};

/// A node whose deadline a touch moved, with its new deadline.
pub(crate) type Moved = (NodeKey, Arc<Node>, Timestamp);

#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) nodes: HashMap<NodeKey, (Arc<Node>, Timestamp)>,
    pub(crate) sessions: HashMap<Arc<str>, Session>,
    pub(crate) drains: HashMap<NodeKey, Option<Timestamp>>,
    pub(crate) streams: BTreeMap<StreamKey, (String, std::time::Instant)>,
}

impl State {
    fn drained_past(&self, node: &str, now: Timestamp) -> bool {
        self.drains.get(node).is_some_and(|d| islb_core::sessions::drain_passed(*d, now))
    }
}

/// Nodes, sessions and drain marks in memory: the default store of a single islb.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `state` (the file store's, as loaded).
    pub(crate) fn with_state(state: State) -> Self {
        MemoryStore { state: Mutex::new(state) }
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        // Every update is a few inserts or removes that a panic cannot leave half done, so a
        // poisoned lock is still good to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn put(&self, node: Arc<Node>, deadline: Timestamp) -> (Verdict, Timestamp) {
        let key: NodeKey = node.id().into();
        let mut st = self.state();
        match st.nodes.get_mut(&key) {
            None => {
                st.nodes.insert(key, (node, deadline));
                (Verdict::Created, deadline)
            }
            Some((old, d)) => {
                *d = (*d).max(deadline);
                if **old == *node {
                    (Verdict::Unchanged, *d)
                } else {
                    *old = node;
                    (Verdict::Changed, *d)
                }
            }
        }
    }

    /// Returns the unknown keys, and the nodes whose deadline moved with their new deadline.
    pub(crate) fn touch(&self, touches: &[(NodeKey, Timestamp)]) -> (Vec<NodeKey>, Vec<Moved>) {
        let mut st = self.state();
        let mut unknown = Vec::new();
        let mut moved = Vec::new();
        for (key, deadline) in touches {
            match st.nodes.get_mut(key) {
                Some((node, d)) => {
                    if *deadline > *d {
                        *d = *deadline;
                        moved.push((key.clone(), node.clone(), *d));
                    }
                }
                None => unknown.push(key.clone()),
            }
        }
        (unknown, moved)
    }

    /// Marks sessions used; returns those whose last use moved.
    pub(crate) fn touch_sessions_now(&self, touches: &[(Arc<str>, Timestamp)]) -> Vec<Session> {
        let mut st = self.state();
        let mut moved = Vec::new();
        for (sid, t) in touches {
            if let Some(s) = st.sessions.get_mut(sid)
                && *t > s.used
            {
                s.used = *t;
                moved.push(s.clone());
            }
        }
        moved
    }

    /// Drops the stream records past their expiry and returns their keys.
    pub(crate) fn drop_expired_streams(&self) -> Vec<StreamKey> {
        let now = std::time::Instant::now();
        let mut expired = Vec::new();
        self.state().streams.retain(|k, (_, until)| {
            let keep = *until > now;
            if !keep {
                expired.push(k.clone());
            }
            keep
        });
        expired
    }

    /// The stream records of session `sid` (no expiry sweep).
    pub(crate) fn streams_for(&self, sid: &str) -> Vec<(StreamKey, String)> {
        let st = self.state();
        st.streams.iter().filter(|(k, _)| k.sid == sid).map(|(k, (v, _))| (k.clone(), v.clone())).collect()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn put_node(&self, node: Arc<Node>, deadline: Timestamp) -> Result<Verdict, StoreError> {
        Ok(self.put(node, deadline).0)
    }

    async fn touch_nodes(&self, touches: &[(NodeKey, Timestamp)]) -> Result<Vec<NodeKey>, StoreError> {
        Ok(self.touch(touches).0)
    }

    async fn delete_node(&self, key: &str) -> Result<Option<Arc<Node>>, StoreError> {
        Ok(self.state().nodes.remove(key).map(|(n, _)| n))
    }

    async fn claim_expired(&self, keys: &[NodeKey], now: Timestamp) -> Result<Vec<Claim>, StoreError> {
        let mut st = self.state();
        Ok(keys
            .iter()
            .map(|key| match st.nodes.get(key) {
                None => Claim::Gone,
                Some((_, d)) if *d > now => Claim::NotDue(*d),
                Some(_) => Claim::Expired(st.nodes.remove(key).expect("present").0),
            })
            .collect())
    }

    async fn load(&self) -> Result<Snapshot, StoreError> {
        let st = self.state();
        Ok(Snapshot {
            nodes: st.nodes.values().cloned().collect(),
            sessions: st.sessions.values().cloned().collect(),
            drains: st.drains.iter().map(|(k, d)| (k.clone(), *d)).collect(),
            cursor: Cursor::default(),
        })
    }

    async fn claim_session(&self, sid: &str, candidate: &NodeKey, now: Timestamp) -> Result<SessionClaim, StoreError> {
        let mut st = self.state();
        let current = st.sessions.get(sid).cloned();
        let from = match current {
            Some(s) if st.nodes.contains_key(&s.node) && !st.drained_past(&s.node, now) => {
                let s = st.sessions.get_mut(sid).expect("present");
                s.used = s.used.max(now);
                return Ok(SessionClaim::Existing(s.clone()));
            }
            Some(s) => Some(s),
            None => None,
        };
        if !st.nodes.contains_key(candidate) {
            return Ok(SessionClaim::CandidateGone);
        }
        let version = from.as_ref().map_or(0, |s| s.version) + 1;
        let session = Session { sid: sid.into(), node: candidate.clone(), version, used: now };
        st.sessions.insert(session.sid.clone(), session.clone());
        Ok(match from {
            None => SessionClaim::Placed(session),
            Some(old) => SessionClaim::Moved { session, from: old.node },
        })
    }

    async fn move_session(
        &self,
        sid: &str,
        version: u64,
        to: Option<&NodeKey>,
        idle_before: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Option<Session>, StoreError> {
        let mut st = self.state();
        let Some(cur) = st.sessions.get(sid) else { return Ok(None) };
        if cur.version != version || idle_before.is_some_and(|b| cur.used >= b) {
            return Ok(None);
        }
        Ok(match to {
            None => st.sessions.remove(sid),
            Some(node) => {
                let s =
                    Session { sid: cur.sid.clone(), node: node.clone(), version: version + 1, used: cur.used.max(now) };
                st.sessions.insert(s.sid.clone(), s.clone());
                Some(s)
            }
        })
    }

    async fn touch_sessions(&self, touches: &[(Arc<str>, Timestamp)]) -> Result<(), StoreError> {
        self.touch_sessions_now(touches);
        Ok(())
    }

    async fn set_drain(&self, node: &NodeKey, deadline: Option<Timestamp>) -> Result<(), StoreError> {
        self.state().drains.insert(node.clone(), deadline);
        Ok(())
    }

    async fn clear_drain(&self, node: &NodeKey) -> Result<bool, StoreError> {
        Ok(self.state().drains.remove(node).is_some())
    }

    async fn put_stream(&self, key: &StreamKey, json: &str, ttl: Duration) -> Result<(), StoreError> {
        self.state().streams.insert(key.clone(), (json.to_owned(), std::time::Instant::now() + ttl));
        Ok(())
    }

    async fn delete_stream(&self, key: &StreamKey) -> Result<bool, StoreError> {
        Ok(self.state().streams.remove(key).is_some())
    }

    async fn streams_of(&self, sid: &str) -> Result<Vec<(StreamKey, String)>, StoreError> {
        self.drop_expired_streams();
        Ok(self.streams_for(sid))
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_store_meets_the_contract() {
        crate::testsuite::run_all(|| async { super::MemoryStore::new() }).await;
    }
}
